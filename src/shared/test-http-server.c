/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <json-c/json.h>
#include <netinet/in.h>

#include "http-server.h"

static int handler_a(HttpRequest *req, void *userdata) {
        return 0;
}

static const HttpRoute routes[] = {
        { HTTP_GET | HTTP_POST, "/api/tasks", handler_a, 0 },
        { HTTP_GET, "/api/tasks/stats", handler_a, 0 },
        { HTTP_GET | HTTP_PATCH, "/api/tasks/{id}", handler_a, 0 },
        { HTTP_POST, "/api/tasks/{id}/retry", handler_a, 0 },
        { HTTP_DELETE, "/api/keys/{owner}/{id}", handler_a, 0 },
        { HTTP_GET, "/", handler_a, 0 },
};

static const HttpRoute *match(HttpMethod method, const char *path, HttpParams *params, unsigned *status,
                              unsigned *allowed) {
        return http_route_match(routes, ELEMENTSOF(routes), method, path, params, status, allowed);
}

static void assert_param(const HttpParams *p, size_t i, const char *name, const char *value) {
        assert_true(i < p->n);
        assert_int_equal(p->name_lengths[i], strlen(name));
        assert_memory_equal(p->names[i], name, strlen(name));
        assert_string_equal(p->values[i], value);
}

static void test_route_exact(void **state) {
        HttpParams p;
        unsigned status = 0, allowed = 0;

        assert_ptr_equal(match(HTTP_GET, "/api/tasks", &p, &status, &allowed), &routes[0]);
        assert_int_equal(status, 200);
        assert_int_equal(allowed, HTTP_GET | HTTP_HEAD | HTTP_POST);
        assert_int_equal(p.n, 0);
        http_params_done(&p);

        assert_ptr_equal(match(HTTP_POST, "/api/tasks", &p, &status, NULL), &routes[0]);
        http_params_done(&p);

        /* Literal segments win over "{id}" when listed first. */
        assert_ptr_equal(match(HTTP_GET, "/api/tasks/stats", &p, &status, NULL), &routes[1]);
        assert_int_equal(p.n, 0);
        http_params_done(&p);

        assert_ptr_equal(match(HTTP_GET, "/", &p, &status, NULL), &routes[5]);
        http_params_done(&p);

        /* Literal segments are compared whole, ignoring case (ASP.NET compat); parameters keep theirs. */
        assert_ptr_equal(match(HTTP_GET, "/API/Tasks", &p, &status, NULL), &routes[0]);
        http_params_done(&p);
        assert_null(match(HTTP_GET, "/api/task", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, "/api/tasksx", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, "/api", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, "api/tasks", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, "", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, NULL, &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(p.buffer);
}

static void test_route_params(void **state) {
        HttpParams p;
        unsigned status;

        assert_ptr_equal(match(HTTP_GET, "/api/tasks/0b7f3c9e", &p, &status, NULL), &routes[2]);
        assert_int_equal(p.n, 1);
        assert_param(&p, 0, "id", "0b7f3c9e");
        http_params_done(&p);
        assert_null(p.buffer);
        assert_int_equal(p.n, 0);

        assert_ptr_equal(match(HTTP_POST, "/api/tasks/abc/retry", &p, &status, NULL), &routes[3]);
        assert_param(&p, 0, "id", "abc");
        http_params_done(&p);

        assert_ptr_equal(match(HTTP_DELETE, "/api/keys/alice/42", &p, &status, NULL), &routes[4]);
        assert_int_equal(p.n, 2);
        assert_param(&p, 0, "owner", "alice");
        assert_param(&p, 1, "id", "42");
        http_params_done(&p);

        /* "{id}" needs a non-empty segment. */
        assert_null(match(HTTP_POST, "/api/tasks//retry", &p, &status, NULL));
        assert_int_equal(status, 404);

        /* Works without params at all (the buffer is freed inside). */
        assert_ptr_equal(http_route_match(routes, ELEMENTSOF(routes), HTTP_GET, "/api/tasks/x", NULL, &status, NULL),
                         &routes[2]);
}

static void test_route_404_405(void **state) {
        HttpParams p;
        unsigned status = 0, allowed = 0;

        assert_null(match(HTTP_DELETE, "/api/tasks/abc", &p, &status, &allowed));
        assert_int_equal(status, 405);
        assert_int_equal(allowed, HTTP_GET | HTTP_HEAD | HTTP_PATCH);
        assert_null(p.buffer);

        assert_null(match(HTTP_GET, "/api/tasks/abc/retry", &p, &status, &allowed));
        assert_int_equal(status, 405);
        assert_int_equal(allowed, HTTP_POST);

        /* An unknown method (0) is never allowed. */
        assert_null(match(0, "/api/tasks", &p, &status, &allowed));
        assert_int_equal(status, 405);
        assert_int_equal(allowed, HTTP_GET | HTTP_HEAD | HTTP_POST);

        /* Both "/api/tasks/stats" and "/api/tasks/{id}" match the path: their methods add up. */
        assert_null(match(HTTP_POST, "/api/tasks/stats", &p, &status, &allowed));
        assert_int_equal(status, 405);
        assert_int_equal(allowed, HTTP_GET | HTTP_HEAD | HTTP_PATCH);

        /* PATCH on "/api/tasks/stats" falls through to "{id}". */
        assert_ptr_equal(match(HTTP_PATCH, "/api/tasks/stats", &p, &status, &allowed), &routes[2]);
        assert_param(&p, 0, "id", "stats");
        http_params_done(&p);

        assert_null(match(HTTP_GET, "/nothing/here", &p, &status, &allowed));
        assert_int_equal(status, 404);
        assert_int_equal(allowed, 0);
}

static void test_route_head(void **state) {
        HttpParams p;
        unsigned status;

        /* HEAD is served by GET routes. */
        assert_ptr_equal(match(HTTP_HEAD, "/api/tasks/abc", &p, &status, NULL), &routes[2]);
        http_params_done(&p);
        assert_null(match(HTTP_HEAD, "/api/tasks/abc/retry", &p, &status, NULL));
        assert_int_equal(status, 405);
}

static void test_route_trailing_slash(void **state) {
        HttpParams p;
        unsigned status;

        assert_ptr_equal(match(HTTP_GET, "/api/tasks/", &p, &status, NULL), &routes[0]);
        http_params_done(&p);
        assert_ptr_equal(match(HTTP_GET, "/api/tasks/xyz/", &p, &status, NULL), &routes[2]);
        assert_param(&p, 0, "id", "xyz");
        http_params_done(&p);

        /* Only one slash is forgiven, and only at the end. */
        assert_null(match(HTTP_GET, "/api/tasks//", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, "//api/tasks", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, "/api//tasks", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_GET, "//", &p, &status, NULL));
        assert_int_equal(status, 404);
}

static void test_route_too_many_segments(void **state) {
        char path[1024] = "";
        HttpParams p;
        unsigned status;

        assert_null(match(HTTP_GET, "/api/tasks/abc/retry/more", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(match(HTTP_POST, "/api/tasks/abc/retry/x/y", &p, &status, NULL));
        assert_int_equal(status, 404);

        for (unsigned i = 0; i < 200; i++)
                strcat(path, "/a");
        assert_null(match(HTTP_GET, path, &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_null(p.buffer);
}

static void test_route_param_limit(void **state) {
        /* More "{name}" segments than HTTP_MAX_PARAMS: the route can never match. */
        static const HttpRoute many[] = {
                { HTTP_GET, "/{a}/{b}/{c}/{d}/{e}", handler_a, 0 },
                { HTTP_GET, "/{a}/{b}/{c}/{d}", handler_a, 0 },
        };
        HttpParams p;
        unsigned status;

        assert_null(http_route_match(many, ELEMENTSOF(many), HTTP_GET, "/1/2/3/4/5", &p, &status, NULL));
        assert_int_equal(status, 404);
        assert_ptr_equal(http_route_match(many, ELEMENTSOF(many), HTTP_GET, "/1/2/3/4", &p, &status, NULL), &many[1]);
        assert_int_equal(p.n, 4);
        assert_param(&p, 3, "d", "4");
        http_params_done(&p);
}

static void check_address(const char *s, int family, const char *host, uint16_t port) {
        struct sockaddr_storage sa;
        socklen_t len = 0;
        char buf[INET6_ADDRSTRLEN];

        assert_int_equal(http_parse_listen_address(s, &sa, &len), 0);
        assert_int_equal(sa.ss_family, family);
        if (family == AF_INET) {
                const struct sockaddr_in *sin = (const struct sockaddr_in *) &sa;

                assert_int_equal(len, sizeof(struct sockaddr_in));
                assert_int_equal(ntohs(sin->sin_port), port);
                assert_non_null(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf));
        } else {
                const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *) &sa;

                assert_int_equal(len, sizeof(struct sockaddr_in6));
                assert_int_equal(ntohs(sin6->sin6_port), port);
                assert_non_null(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf));
        }
        assert_string_equal(buf, host);
}

static void test_parse_listen_address(void **state) {
        struct sockaddr_storage sa;
        socklen_t len;
        static const char *const bad[] = {
                "",          "8080",         "127.0.0.1",   "127.0.0.1:",   "127.0.0.1:65536", "127.0.0.1:-1",
                "127.0.0.1:+80", "127.0.0.1:80x", "127.0.0.1: 80", "1.2.3:80", "localhost:80",   "::1:8080",
                "[::1]",     "[::1]8080",    "[::1]:",      "[127.0.0.1]:80", "[::1:80",     "[]:80",
                "::8080",    ":",            ":808080",     "256.1.1.1:80", "127.0.0.1:000080",
        };

        check_address("127.0.0.1:8080", AF_INET, "127.0.0.1", 8080);
        check_address("0.0.0.0:80", AF_INET, "0.0.0.0", 80);
        check_address("127.0.0.1:0", AF_INET, "127.0.0.1", 0);
        check_address("[::1]:8080", AF_INET6, "::1", 8080);
        check_address("[::]:5215", AF_INET6, "::", 5215);
        check_address("[fd00::1:2]:65535", AF_INET6, "fd00::1:2", 65535);
        /* ":PORT" is any address: IPv6 "::", bound dual-stack. */
        check_address(":8080", AF_INET6, "::", 8080);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                len = 0;
                if (http_parse_listen_address(bad[i], &sa, &len) != -EINVAL)
                        fail_msg("'%s' was accepted", bad[i]);
                assert_int_equal(len, 0);
        }
        assert_int_equal(http_parse_listen_address(NULL, &sa, &len), -EINVAL);
}

static void assert_json_string(json_object *o, const char *field, const char *value) {
        json_object *v;

        assert_true(json_object_object_get_ex(o, field, &v));
        assert_true(json_object_is_type(v, json_type_string));
        assert_string_equal(json_object_get_string(v), value);
}

static void test_problem(void **state) {
        json_object *p, *v, *errors, *messages;

        p = http_problem_new(404, "No such task.", NULL);
        assert_non_null(p);
        assert_int_equal(json_object_object_length(p), 4);
        assert_json_string(p, "type", "about:blank");
        assert_json_string(p, "title", "Not Found");
        assert_json_string(p, "detail", "No such task.");
        assert_true(json_object_object_get_ex(p, "status", &v));
        assert_true(json_object_is_type(v, json_type_int));
        assert_int_equal(json_object_get_int(v), 404);
        assert_string_equal(json_object_to_json_string_ext(p, JSON_C_TO_STRING_PLAIN),
                            "{\"type\":\"about:blank\",\"title\":\"Not Found\",\"status\":404,\"detail\":\"No such task.\"}");
        json_object_put(p);

        /* The SPEC's validation example. */
        errors = json_object_new_object();
        messages = json_object_new_array();
        json_object_array_add(messages, json_object_new_string("must be greater than 00:00:00 and at most 1.00:00:00"));
        json_object_object_add(errors, "ttl", messages);
        p = http_problem_new(400, "ttl: must be greater than 00:00:00 and at most 1.00:00:00", errors);
        assert_non_null(p);
        assert_int_equal(json_object_object_length(p), 5);
        assert_json_string(p, "title", "Bad Request");
        assert_true(json_object_object_get_ex(p, "errors", &v));
        assert_ptr_equal(v, errors);
        json_object_put(errors); /* not consumed: the problem holds its own reference */
        assert_true(json_object_object_get_ex(p, "errors", &v));
        assert_true(json_object_object_get_ex(v, "ttl", &v));
        assert_string_equal(json_object_get_string(json_object_array_get_idx(v, 0)),
                            "must be greater than 00:00:00 and at most 1.00:00:00");
        json_object_put(p);

        /* Without detail the member is left out. */
        p = http_problem_new(413, NULL, NULL);
        assert_int_equal(json_object_object_length(p), 3);
        assert_false(json_object_object_get_ex(p, "detail", NULL));
        assert_json_string(p, "title", "Content Too Large");
        json_object_put(p);
}

static void test_methods(void **state) {
        static const struct {
                const char *name;
                HttpMethod method;
        } table[] = {
                { "GET", HTTP_GET },     { "HEAD", HTTP_HEAD },     { "POST", HTTP_POST },       { "PUT", HTTP_PUT },
                { "PATCH", HTTP_PATCH }, { "DELETE", HTTP_DELETE }, { "OPTIONS", HTTP_OPTIONS },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                assert_int_equal(http_method_from_string(table[i].name), table[i].method);
                assert_string_equal(http_method_to_string(table[i].method), table[i].name);
        }
        assert_int_equal(http_method_from_string("get"), -EINVAL);
        assert_int_equal(http_method_from_string("TRACE"), -EINVAL);
        assert_int_equal(http_method_from_string(""), -EINVAL);
        assert_int_equal(http_method_from_string(NULL), -EINVAL);
        assert_null(http_method_to_string(0));
        assert_null(http_method_to_string(HTTP_GET | HTTP_POST));
}

static void test_status_titles(void **state) {
        assert_string_equal(http_status_title(200), "OK");
        assert_string_equal(http_status_title(201), "Created");
        assert_string_equal(http_status_title(204), "No Content");
        assert_string_equal(http_status_title(400), "Bad Request");
        assert_string_equal(http_status_title(401), "Unauthorized");
        assert_string_equal(http_status_title(403), "Forbidden");
        assert_string_equal(http_status_title(404), "Not Found");
        assert_string_equal(http_status_title(405), "Method Not Allowed");
        assert_string_equal(http_status_title(409), "Conflict");
        assert_string_equal(http_status_title(413), "Content Too Large");
        assert_string_equal(http_status_title(414), "URI Too Long");
        assert_string_equal(http_status_title(415), "Unsupported Media Type");
        assert_string_equal(http_status_title(429), "Too Many Requests");
        assert_string_equal(http_status_title(500), "Internal Server Error");
        assert_string_equal(http_status_title(503), "Service Unavailable");
        assert_string_equal(http_status_title(299), "Unknown");
        assert_string_equal(http_status_title(0), "Unknown");
}

static void test_server_settings(void **state) {
        HttpServerSettings settings = { .routes = routes, .n_routes = ELEMENTSOF(routes) };
        HttpRoute bad_route = { HTTP_GET, "no-slash", handler_a, 0 };
        _cleanup_(http_server_freep) HttpServer *s = NULL;
        sd_event *e = NULL;

        assert_int_equal(sd_event_new(&e), 0);

        assert_int_equal(http_server_new(&s, e, &settings), 0);
        assert_int_equal(http_server_n_connections(s), 0);
        s = http_server_free(s);
        assert_null(http_server_free(NULL));

        /* TLS needs both halves. */
        settings.tls_certificate = "-----BEGIN CERTIFICATE-----";
        assert_int_equal(http_server_new(&s, e, &settings), -EINVAL);
        settings.tls_certificate = NULL;
        settings.tls_key = "-----BEGIN PRIVATE KEY-----";
        assert_int_equal(http_server_new(&s, e, &settings), -EINVAL);
        settings.tls_key = NULL;

        settings.routes = &bad_route;
        settings.n_routes = 1;
        assert_int_equal(http_server_new(&s, e, &settings), -EINVAL);
        assert_null(s);

        settings.routes = routes;
        settings.n_routes = ELEMENTSOF(routes);
        assert_int_equal(http_server_new(&s, e, &settings), 0);
        assert_int_equal(http_server_listen(s, "127.0.0.1:x", NULL), -EINVAL);
        assert_int_equal(http_server_listen(s, NULL, NULL), -EINVAL);
        assert_int_equal(http_server_listen(s, NULL, "127.0.0.1:0"), 1);
        assert_int_equal(http_server_add_listener(s, -1), -EINVAL);

        s = http_server_free(s);
        sd_event_unref(e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_route_exact),
                cmocka_unit_test(test_route_params),
                cmocka_unit_test(test_route_404_405),
                cmocka_unit_test(test_route_head),
                cmocka_unit_test(test_route_trailing_slash),
                cmocka_unit_test(test_route_too_many_segments),
                cmocka_unit_test(test_route_param_limit),
                cmocka_unit_test(test_parse_listen_address),
                cmocka_unit_test(test_problem),
                cmocka_unit_test(test_methods),
                cmocka_unit_test(test_status_titles),
                cmocka_unit_test(test_server_settings),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
