/* SPDX-License-Identifier: MIT */
/* The HTTP server on real sockets: the server runs in this process's sd-event loop, the
 * clients are curl processes (waited for with sd_event_add_child) and, where the exact
 * bytes on the wire matter, a small non-blocking client in the same loop.
 * Run with the argument "tls" for the HTTPS part (exit 77 when openssl is missing). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "http-server.h"
#include "log.h"

extern char **environ;

#define SMALL_LIMIT 16
#define SERVER_LIMIT (64 * 1024)
#define SLOW_USEC (100 * USEC_PER_MSEC)

static sd_event *event;
static HttpServer *server;
static uint16_t port;
static char tmpdir[] = "/tmp/test-http-server-XXXXXX";
static char *tls_cert, *tls_key;

static unsigned handler_calls;
static unsigned abort_calls;
/* Checks made inside event-loop callbacks are recorded here and asserted afterwards: a failing
 * assertion must not longjmp out of sd_event_run(). */
static unsigned callback_errors;
static int slow_results[3];
static unsigned connections_at_shutdown;

#define CHECK(expr)                                                                     \
        do {                                                                            \
                if (!(expr)) {                                                          \
                        print_error("%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
                        callback_errors++;                                              \
                }                                                                       \
        } while (false)
static struct {
        char route[64];
        HttpMethod method;
        unsigned status;
        unsigned n;
} completed;

static uint64_t now_usec(void) {
        struct timespec ts;

        assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

/* Handlers */

static int hello_handler(HttpRequest *req, void *userdata) {
        const char *greet = http_request_query(req, "greet") ?: "hello";
        char body[256];
        int r;

        handler_calls++;
        /* No header injection. */
        CHECK(http_request_add_header(req, "X-Bad", "a\r\nSet-Cookie: x=1") == -EINVAL);
        CHECK(http_request_add_header(req, "X-Bad: y", "a") == -EINVAL);
        r = http_request_add_header(req, "X-Test", "yes");
        if (r < 0)
                return r;
        r = http_request_add_header(req, "X-Method", http_method_to_string(http_request_method(req)));
        if (r < 0)
                return r;
        r = http_request_add_header(req, "X-Client", http_request_client_address(req));
        if (r < 0)
                return r;
        r = http_request_add_header(req, "X-TLS", http_request_is_tls(req) ? "1" : "0");
        if (r < 0)
                return r;
        r = http_request_add_header(req, "X-Agent", http_request_header(req, "user-agent") ?: "none");
        if (r < 0)
                return r;
        snprintf(body, sizeof body, "%s, %s", greet, http_request_param(req, "name"));
        return http_request_reply(req, 200, "text/plain; charset=utf-8", body, strlen(body));
}

static int echo_handler(HttpRequest *req, void *userdata) {
        const void *body;
        size_t size;

        handler_calls++;
        body = http_request_body(req, &size);
        CHECK(((const char *) body)[size] == '\0');
        return http_request_reply(req, 201, http_request_header(req, "Content-Type"), body, size);
}

static int count_handler(HttpRequest *req, void *userdata) {
        handler_calls++;
        return http_request_reply_empty(req, 204);
}

static int on_slow_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpRequest *req = userdata;

        slow_results[0] = http_request_suspend(req, NULL, NULL); /* only handlers suspend */
        slow_results[1] = http_request_reply(req, 200, "text/plain", "late", 4);
        slow_results[2] = http_request_reply(req, 200, "text/plain", "twice", 5);
        return 0;
}

static int slow_handler(HttpRequest *req, void *userdata) {
        int r;

        handler_calls++;
        r = http_request_suspend(req, NULL, NULL);
        if (r < 0)
                return r;
        return sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, SLOW_USEC, 0, on_slow_timer, req);
}

static void on_hang_abort(HttpRequest *req, void *userdata) {
        abort_calls++;
}

static int on_free_server(sd_event_source *s, void *userdata) {
        connections_at_shutdown = http_server_n_connections(server);
        server = http_server_free(server);
        return 0;
}

/* Suspends, and has the server shut down right after. */
static int hang_handler(HttpRequest *req, void *userdata) {
        int r;

        handler_calls++;
        r = http_request_suspend(req, on_hang_abort, NULL);
        if (r < 0)
                return r;
        return sd_event_add_defer(event, NULL, on_free_server, NULL);
}

static int fail_handler(HttpRequest *req, void *userdata) {
        handler_calls++;
        if (http_request_query(req, "suspend"))
                CHECK(http_request_suspend(req, on_hang_abort, NULL) == 0);
        return -atoi(http_request_param(req, "errno"));
}

static const HttpRoute routes[] = {
        { HTTP_GET, "/hello/{name}", hello_handler, 0 },
        { HTTP_POST, "/echo", echo_handler, 0 },
        { HTTP_POST, "/small", count_handler, SMALL_LIMIT },
        { HTTP_GET, "/slow", slow_handler, 0 },
        { HTTP_GET, "/hang", hang_handler, 0 },
        { HTTP_GET, "/fail/{errno}", fail_handler, 0 },
};

static void on_completed(const char *route, HttpMethod method, unsigned status, uint64_t duration_usec,
                         void *userdata) {
        snprintf(completed.route, sizeof completed.route, "%s", route ?: "(none)");
        completed.method = method;
        completed.status = status;
        completed.n++;
}

/* MHD reports a request complete when it next deals with the connection after the last byte
 * went out, which can be a loop iteration after curl got the response and exited. */
static void wait_completed(unsigned n) {
        uint64_t deadline = now_usec() + 2 * USEC_PER_SEC;

        while (completed.n < n) {
                assert_true(now_usec() < deadline);
                assert_true(sd_event_run(event, 10 * USEC_PER_MSEC) >= 0);
        }
}

/* Server fixture */

static int listen_ephemeral(uint16_t *ret_port) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sin;
        int fd;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sin, sizeof sin), 0);
        assert_int_equal(listen(fd, SOMAXCONN), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sin, &len), 0);
        *ret_port = ntohs(sin.sin_port);
        return fd;
}

static int server_start(void **state) {
        HttpServerSettings settings = {
                .routes = routes,
                .n_routes = ELEMENTSOF(routes),
                .max_body_size = SERVER_LIMIT,
                .tls_certificate = tls_cert,
                .tls_key = tls_key,
                .completed = on_completed,
        };

        handler_calls = abort_calls = callback_errors = 0;
        connections_at_shutdown = 0;
        memset(slow_results, 0xff, sizeof slow_results);
        completed = (typeof(completed)) {};
        assert_true(sd_event_default(&event) >= 0);
        assert_int_equal(http_server_new(&server, event, &settings), 0);
        assert_int_equal(http_server_add_listener(server, listen_ephemeral(&port)), 0);
        return 0;
}

static int server_stop(void **state) {
        server = http_server_free(server);
        event = sd_event_unref(event);
        assert_int_equal(callback_errors, 0);
        return 0;
}

/* curl as the client */

typedef struct CurlResult {
        int exit_status;
        unsigned status;
        char *headers;
        char *body;
        size_t body_size;
        uint64_t elapsed_usec;
} CurlResult;

static void curl_result_done(CurlResult *r) {
        free(r->headers);
        free(r->body);
        *r = (CurlResult) {};
}

/* Reads and removes a file of the temp dir; a missing file reads as empty. */
static char *read_file(const char *name, size_t *ret_size) {
        struct stat st = {};
        char path[256];
        size_t size = 0;
        char *buf;
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", tmpdir, name);
        f = fopen(path, "re");
        if (f)
                assert_int_equal(fstat(fileno(f), &st), 0);
        buf = malloc((size_t) st.st_size + 1);
        assert_non_null(buf);
        if (f) {
                size = fread(buf, 1, (size_t) st.st_size, f);
                assert_int_equal(size, (size_t) st.st_size);
                fclose(f);
                (void) unlink(path);
        }
        buf[size] = '\0';
        if (ret_size)
                *ret_size = size;
        return buf;
}

static void write_file(const char *name, const void *data, size_t size) {
        char path[256];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", tmpdir, name);
        f = fopen(path, "we");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, size, f), size);
        assert_int_equal(fclose(f), 0);
}

static int on_child_exit(sd_event_source *s, const siginfo_t *si, void *userdata) {
        int *exit_status = userdata;

        *exit_status = si->si_code == CLD_EXITED ? si->si_status : 128 + si->si_status;
        return 0;
}

/* Spawns argv with stdout to "stdout" in the temp dir; runs the loop until it exits. */
static int spawn_and_wait(char **argv) {
        char out[256];
        posix_spawn_file_actions_t actions;
        posix_spawnattr_t attr;
        sigset_t none;
        sd_event_source *child = NULL;
        int exit_status = -1;
        pid_t pid;
        int r;

        snprintf(out, sizeof out, "%s/stdout", tmpdir);
        assert_int_equal(posix_spawn_file_actions_init(&actions), 0);
        assert_int_equal(posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out, O_WRONLY | O_CREAT | O_TRUNC, 0600),
                         0);
        assert_int_equal(posix_spawnattr_init(&attr), 0);
        sigemptyset(&none);
        assert_int_equal(posix_spawnattr_setsigmask(&attr, &none), 0);
        assert_int_equal(posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK), 0);

        r = posix_spawnp(&pid, argv[0], &actions, &attr, argv, environ);
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
        if (r != 0)
                return -r;

        assert_int_equal(sd_event_add_child(event, &child, pid, WEXITED, on_child_exit, &exit_status), 0);
        while (exit_status < 0)
                assert_true(sd_event_run(event, UINT64_MAX) >= 0);
        sd_event_source_unref(child);
        return exit_status;
}

/* curl [extra args…] URL; the URL is the last argument. */
_sentinel_ static void curl(CurlResult *res, ...) {
        char body_path[256], headers_path[256];
        char *argv[64] = {
                (char *) "curl",      (char *) "-sS",          (char *) "--max-time",
                (char *) "10",        (char *) "-o",           body_path,
                (char *) "-D",        headers_path,            (char *) "-w",
                (char *) "%{http_code}", (char *) "--noproxy", (char *) "*",
        };
        size_t n = 12;
        char *status_text;
        uint64_t start;
        va_list ap;

        snprintf(body_path, sizeof body_path, "%s/body", tmpdir);
        snprintf(headers_path, sizeof headers_path, "%s/headers", tmpdir);

        va_start(ap, res);
        for (char *a; (a = va_arg(ap, char *));) {
                assert_true(n < ELEMENTSOF(argv) - 1);
                argv[n++] = a;
        }
        va_end(ap);
        argv[n] = NULL;

        *res = (CurlResult) {};
        start = now_usec();
        res->exit_status = spawn_and_wait(argv);
        res->elapsed_usec = now_usec() - start;
        assert_true(res->exit_status >= 0);

        status_text = read_file("stdout", NULL);
        res->status = (unsigned) atoi(status_text);
        free(status_text);
        res->headers = read_file("headers", NULL);
        res->body = read_file("body", &res->body_size);
}

static char *url(const char *path) {
        static char buf[4096];

        snprintf(buf, sizeof buf, "http://127.0.0.1:%u%s", port, path);
        return buf;
}

/* Value of the last header of that name (case-insensitive), or NULL. */
static const char *header(const CurlResult *r, const char *name) {
        static char value[512];
        const char *found = NULL;
        size_t len = strlen(name);

        for (const char *line = r->headers; *line;) {
                const char *eol = strchrnul(line, '\n');

                if (strncasecmp(line, name, len) == 0 && line[len] == ':') {
                        const char *v = line + len + 1;
                        size_t n;

                        v += strspn(v, " ");
                        n = strcspn(v, "\r\n");
                        snprintf(value, sizeof value, "%.*s", (int) n, v);
                        found = value;
                }
                line = *eol ? eol + 1 : eol;
        }
        return found;
}

static void assert_problem(const CurlResult *r, unsigned status, const char *title) {
        json_object *o, *v;

        assert_int_equal(r->status, status);
        assert_string_equal(header(r, "Content-Type"), "application/problem+json");
        o = json_tokener_parse(r->body);
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "type", &v));
        assert_string_equal(json_object_get_string(v), "about:blank");
        assert_true(json_object_object_get_ex(o, "title", &v));
        assert_string_equal(json_object_get_string(v), title);
        assert_true(json_object_object_get_ex(o, "status", &v));
        assert_int_equal(json_object_get_int(v), status);
        assert_true(json_object_object_get_ex(o, "detail", &v));
        assert_true(json_object_get_string_len(v) > 0);
        json_object_put(o);
}

/* A raw client in the loop, for exact bytes: sends request, reads until EOF. */

typedef struct RawClient {
        const char *request;
        size_t sent;
        char response[65536];
        size_t n;
        bool done;
} RawClient;

static int on_raw_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        RawClient *c = userdata;
        ssize_t k;

        if (c->sent < strlen(c->request)) {
                if (!(revents & EPOLLOUT))
                        return 0;
                k = send(fd, c->request + c->sent, strlen(c->request) - c->sent, MSG_NOSIGNAL);
                if (k > 0)
                        c->sent += (size_t) k;
                if (c->sent == strlen(c->request))
                        CHECK(sd_event_source_set_io_events(s, EPOLLIN) >= 0);
                return 0;
        }

        k = recv(fd, c->response + c->n, sizeof c->response - 1 - c->n, 0);
        if (k > 0) {
                c->n += (size_t) k;
                c->response[c->n] = '\0';
        } else if (k == 0 || errno != EAGAIN)
                c->done = true;
        return 0;
}

static void raw_request(RawClient *c, const char *request) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        sd_event_source *io = NULL;
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        int fd;

        *c = (RawClient) { .request = request };
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(fd >= 0);
        assert_true(connect(fd, (struct sockaddr *) &sin, sizeof sin) == 0 || errno == EINPROGRESS);
        assert_int_equal(sd_event_add_io(event, &io, fd, EPOLLIN | (*request ? EPOLLOUT : 0), on_raw_io, c), 0);
        while (!c->done) {
                assert_true(now_usec() < deadline);
                assert_true(sd_event_run(event, 100 * USEC_PER_MSEC) >= 0);
        }
        sd_event_source_disable_unref(io);
        close(fd);
}

/* Tests */

static void test_get(void **state) {
        CurlResult r;

        curl(&r, "-A", "live-test/1", url("/hello/world?greet=hi"), NULL);
        assert_int_equal(r.exit_status, 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "hi, world");
        assert_string_equal(header(&r, "Content-Type"), "text/plain; charset=utf-8");
        assert_string_equal(header(&r, "Content-Length"), "9");
        assert_string_equal(header(&r, "X-Test"), "yes");
        assert_string_equal(header(&r, "X-Method"), "GET");
        assert_string_equal(header(&r, "X-Client"), "127.0.0.1");
        assert_string_equal(header(&r, "X-TLS"), "0");
        assert_string_equal(header(&r, "X-Agent"), "live-test/1");
        assert_int_equal(handler_calls, 1);

        /* Metrics see the pattern, not the path. */
        wait_completed(1);
        assert_int_equal(completed.n, 1);
        assert_string_equal(completed.route, "/hello/{name}");
        assert_int_equal(completed.method, HTTP_GET);
        assert_int_equal(completed.status, 200);
        curl_result_done(&r);

        /* Trailing slash tolerated; segments arrive percent-decoded. */
        curl(&r, url("/hello/a%20b/"), NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "hello, a b");
        curl_result_done(&r);
}

static void test_head(void **state) {
        RawClient c;
        const char *end;

        raw_request(&c, "HEAD /hello/world HTTP/1.0\r\nHost: x\r\n\r\n");
        assert_true(strneq(c.response, "HTTP/1.0 200", 12) || strneq(c.response, "HTTP/1.1 200", 12));
        assert_non_null(strcasestr(c.response, "\r\nContent-Length: 12\r\n"));
        assert_non_null(strcasestr(c.response, "\r\nX-Method: HEAD\r\n"));
        /* The headers end the response: no body bytes follow. */
        end = strstr(c.response, "\r\n\r\n");
        assert_non_null(end);
        assert_int_equal(end + 4 - c.response, c.n);
        wait_completed(1);
        assert_int_equal(completed.method, HTTP_HEAD);
        assert_int_equal(completed.status, 200);
}

static void test_post_json(void **state) {
        _cleanup_free_ char *json = NULL;
        const size_t size = 40000; /* larger than MHD's read buffer: arrives in several pieces */
        char path[256];
        CurlResult r;
        size_t n = 0;

        json = malloc(size + 1);
        assert_non_null(json);
        n += (size_t) sprintf(json, "{\"name\":\"sum ü ✓\",\"code\":\"");
        for (; n < size - 2; n++)
                json[n] = "abcdefgh\\n"[n % 10];
        json[n++] = '"';
        json[n++] = '}';
        write_file("request.json", json, n);
        snprintf(path, sizeof path, "@%s/request.json", tmpdir);

        curl(&r, "-H", "Content-Type: application/json", "--data-binary", path, url("/echo"), NULL);
        assert_int_equal(r.exit_status, 0);
        assert_int_equal(r.status, 201);
        assert_string_equal(header(&r, "Content-Type"), "application/json");
        assert_int_equal(r.body_size, n);
        assert_memory_equal(r.body, json, n);
        assert_int_equal(handler_calls, 1);
        curl_result_done(&r);

        /* The same body, chunked. */
        curl(&r, "-H", "Content-Type: application/json", "-H", "Transfer-Encoding: chunked", "--data-binary", path,
             url("/echo"), NULL);
        assert_int_equal(r.status, 201);
        assert_int_equal(r.body_size, n);
        assert_memory_equal(r.body, json, n);
        assert_int_equal(handler_calls, 2);
        curl_result_done(&r);

        /* "Expect: 100-continue" for a body within the limit: MHD says 100, the body follows. */
        curl(&r, "-H", "Content-Type: application/json", "-H", "Expect: 100-continue", "--data-binary", path,
             url("/echo"), NULL);
        assert_int_equal(r.status, 201);
        assert_non_null(strstr(r.headers, "HTTP/1.1 100"));
        assert_int_equal(r.body_size, n);
        assert_memory_equal(r.body, json, n);
        curl_result_done(&r);

        /* An empty body is fine too. */
        curl(&r, "-X", "POST", url("/small"), NULL);
        assert_int_equal(r.status, 204);
        assert_int_equal(handler_calls, 4);
        curl_result_done(&r);
}

static void test_content_length_limit(void **state) {
        _cleanup_free_ char *big = NULL;
        char path[256];
        CurlResult r;

        write_file("small.txt", "0123456789abcdefX", SMALL_LIMIT + 1);
        snprintf(path, sizeof path, "@%s/small.txt", tmpdir);
        curl(&r, "--data-binary", path, url("/small"), NULL);
        assert_problem(&r, 413, "Content Too Large");
        assert_int_equal(handler_calls, 0);
        wait_completed(1);
        assert_string_equal(completed.route, "/small");
        assert_int_equal(completed.status, 413);
        curl_result_done(&r);

        /* Exactly at the limit is fine. */
        write_file("small.txt", "0123456789abcdef", SMALL_LIMIT);
        curl(&r, "--data-binary", path, url("/small"), NULL);
        assert_int_equal(r.status, 204);
        assert_int_equal(handler_calls, 1);
        curl_result_done(&r);

        /* 2 MiB against the server's 64 KiB: curl sends "Expect: 100-continue", the 413 comes
         * before the body is sent. */
        big = malloc(2 * 1024 * 1024);
        assert_non_null(big);
        memset(big, 'x', 2 * 1024 * 1024);
        write_file("big.txt", big, 2 * 1024 * 1024);
        snprintf(path, sizeof path, "@%s/big.txt", tmpdir);
        curl(&r, "--data-binary", path, url("/echo"), NULL);
        assert_problem(&r, 413, "Content Too Large");
        assert_int_equal(handler_calls, 1);
        assert_true(r.elapsed_usec < 900 * USEC_PER_MSEC); /* no waiting for curl's 1 s Expect timeout */
        curl_result_done(&r);
}

static void test_chunked_limit(void **state) {
        _cleanup_free_ char *big = NULL;
        char path[256];
        CurlResult r;

        write_file("small.txt", "0123456789abcdefX", SMALL_LIMIT + 1);
        snprintf(path, sizeof path, "@%s/small.txt", tmpdir);
        curl(&r, "-H", "Transfer-Encoding: chunked", "--data-binary", path, url("/small"), NULL);
        assert_problem(&r, 413, "Content Too Large");
        assert_int_equal(handler_calls, 0);
        curl_result_done(&r);

        /* A chunked body over the server limit, somewhat larger than it. */
        big = malloc(512 * 1024);
        assert_non_null(big);
        memset(big, 'y', 512 * 1024);
        write_file("big.txt", big, 512 * 1024);
        snprintf(path, sizeof path, "@%s/big.txt", tmpdir);
        curl(&r, "-H", "Transfer-Encoding: chunked", "--data-binary", path, url("/echo"), NULL);
        assert_problem(&r, 413, "Content Too Large");
        assert_int_equal(handler_calls, 0);
        curl_result_done(&r);

        /* Far beyond the limit: the server hangs up instead of reading on; never a success. */
        free(big);
        big = malloc(8 * 1024 * 1024);
        assert_non_null(big);
        memset(big, 'z', 8 * 1024 * 1024);
        write_file("big.txt", big, 8 * 1024 * 1024);
        curl(&r, "-H", "Transfer-Encoding: chunked", "--data-binary", path, url("/echo"), NULL);
        assert_int_not_equal(r.exit_status, 0);
        assert_int_not_equal(r.status, 201);
        assert_int_equal(handler_calls, 0);
        curl_result_done(&r);
}

static void test_not_found(void **state) {
        CurlResult r;

        curl(&r, url("/nope"), NULL);
        assert_problem(&r, 404, "Not Found");
        assert_null(header(&r, "Allow"));
        wait_completed(1);
        assert_string_equal(completed.route, "(none)");
        assert_int_equal(completed.status, 404);
        curl_result_done(&r);

        curl(&r, url("/hello"), NULL);
        assert_problem(&r, 404, "Not Found");
        curl_result_done(&r);

        /* A 404 with a body is answered without reading it. */
        curl(&r, "--data-binary", "{}", url("/hello/x/y"), NULL);
        assert_problem(&r, 404, "Not Found");
        curl_result_done(&r);
        assert_int_equal(handler_calls, 0);
}

static void test_method_not_allowed(void **state) {
        CurlResult r;

        curl(&r, "-X", "DELETE", url("/echo"), NULL);
        assert_problem(&r, 405, "Method Not Allowed");
        assert_string_equal(header(&r, "Allow"), "POST");
        curl_result_done(&r);

        curl(&r, "--data-binary", "x", url("/hello/x"), NULL);
        assert_problem(&r, 405, "Method Not Allowed");
        assert_string_equal(header(&r, "Allow"), "GET, HEAD");
        curl_result_done(&r);

        curl(&r, "-X", "BREW", url("/slow"), NULL);
        assert_problem(&r, 405, "Method Not Allowed");
        assert_string_equal(header(&r, "Allow"), "GET, HEAD");
        curl_result_done(&r);
        assert_int_equal(handler_calls, 0);
}

static void test_suspended(void **state) {
        CurlResult r;

        curl(&r, url("/slow"), NULL);
        assert_int_equal(r.exit_status, 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "late");
        assert_int_equal(slow_results[0], -EBUSY);
        assert_int_equal(slow_results[1], 0);
        assert_int_equal(slow_results[2], -EALREADY);
        assert_true(r.elapsed_usec >= SLOW_USEC);
        assert_true(r.elapsed_usec < SLOW_USEC + 2 * USEC_PER_SEC);
        assert_int_equal(handler_calls, 1);
        wait_completed(1);
        assert_string_equal(completed.route, "/slow");
        assert_int_equal(completed.status, 200);
        curl_result_done(&r);
}

static void test_handler_errors(void **state) {
        CurlResult r;

        curl(&r, url("/fail/111"), NULL); /* ECONNREFUSED */
        assert_problem(&r, 503, "Service Unavailable");
        curl_result_done(&r);

        curl(&r, url("/fail/110"), NULL); /* ETIMEDOUT */
        assert_problem(&r, 503, "Service Unavailable");
        curl_result_done(&r);

        curl(&r, url("/fail/5"), NULL); /* EIO: a generic 500, the error text stays inside */
        assert_problem(&r, 500, "Internal Server Error");
        assert_null(strstr(r.body, "Input/output"));
        curl_result_done(&r);

        curl(&r, url("/fail/0"), NULL); /* success without a reply is a bug: 500 */
        assert_problem(&r, 500, "Internal Server Error");
        curl_result_done(&r);

        /* Failing after suspending: the owner is told to let go, the client gets the error. */
        curl(&r, url("/fail/104?suspend=1"), NULL); /* ECONNRESET */
        assert_problem(&r, 503, "Service Unavailable");
        assert_int_equal(abort_calls, 1);
        curl_result_done(&r);
        assert_int_equal(handler_calls, 5);
}

static void test_uri_too_long(void **state) {
        char path[3000] = "/hello/";
        CurlResult r;

        memset(path + 7, 'a', sizeof path - 8);
        path[sizeof path - 1] = '\0';
        curl(&r, url(path), NULL);
        assert_problem(&r, 414, "URI Too Long");
        assert_int_equal(handler_calls, 0);
        curl_result_done(&r);

        /* 2048 bytes are still served. */
        path[2048] = '\0';
        curl(&r, url(path), NULL);
        assert_int_equal(r.status, 200);
        curl_result_done(&r);
}

static void test_shutdown_with_suspended(void **state) {
        CurlResult r;

        curl(&r, url("/hang"), NULL);
        assert_problem(&r, 503, "Service Unavailable");
        assert_int_equal(handler_calls, 1);
        assert_int_equal(abort_calls, 1);
        assert_null(server);
        assert_int_equal(connections_at_shutdown, 1);
        curl_result_done(&r);
}

static void test_listen_dual_stack(void **state) {
        char address[32];
        CurlResult r;
        int fd;

        /* A port that was free a moment ago; the server binds it on "any", dual-stack. */
        fd = listen_ephemeral(&port);
        close(fd);
        snprintf(address, sizeof address, ":%u", port);
        server = http_server_free(server);
        assert_int_equal(http_server_new(&server, event,
                                         &(HttpServerSettings) { .routes = routes, .n_routes = ELEMENTSOF(routes) }),
                         0);
        assert_int_equal(http_server_listen(server, address, "127.0.0.1:1"), 1);

        curl(&r, url("/hello/v4"), NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(header(&r, "X-Client"), "127.0.0.1"); /* not "::ffff:127.0.0.1" */
        curl_result_done(&r);

        snprintf(address, sizeof address, "http://[::1]:%u/hello/v6", port);
        curl(&r, address, NULL);
        if (r.exit_status == 7) /* no IPv6 loopback on this host */
                print_message("IPv6 loopback unavailable, skipped that part\n");
        else {
                assert_int_equal(r.status, 200);
                assert_string_equal(header(&r, "X-Client"), "::1");
        }
        curl_result_done(&r);
}

static void test_socket_activation(void **state) {
        char pid[32];
        CurlResult r;
        int fd;

        /* What systemd passes: a listening socket as fd 3 (SD_LISTEN_FDS_START), LISTEN_PID/LISTEN_FDS
         * set. main() reserved fd 3 so that nothing else holds it. */
        fd = listen_ephemeral(&port);
        assert_int_equal(dup2(fd, SD_LISTEN_FDS_START), SD_LISTEN_FDS_START);
        close(fd);
        snprintf(pid, sizeof pid, "%i", (int) getpid());
        assert_int_equal(setenv("LISTEN_PID", pid, 1), 0);
        assert_int_equal(setenv("LISTEN_FDS", "1", 1), 0);

        server = http_server_free(server);
        assert_int_equal(http_server_new(&server, event,
                                         &(HttpServerSettings) { .routes = routes, .n_routes = ELEMENTSOF(routes) }),
                         0);
        /* The address options are ignored when the service manager passed sockets. */
        assert_int_equal(http_server_listen(server, "not an address", NULL), 1);
        assert_null(getenv("LISTEN_FDS"));
        assert_true(fcntl(SD_LISTEN_FDS_START, F_GETFD) & FD_CLOEXEC);

        curl(&r, url("/hello/activated"), NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "hello, activated");
        curl_result_done(&r);

        /* Stopping the server closes the socket it was given. */
        server = http_server_free(server);
        assert_true(fcntl(SD_LISTEN_FDS_START, F_GETFD) < 0);
}

static void test_idle_timeout(void **state) {
        uint64_t start;
        RawClient c;

        server = http_server_free(server);
        assert_int_equal(http_server_new(&server, event,
                                         &(HttpServerSettings) {
                                                 .routes = routes,
                                                 .n_routes = ELEMENTSOF(routes),
                                                 .connection_timeout = 1,
                                         }),
                         0);
        assert_int_equal(http_server_add_listener(server, listen_ephemeral(&port)), 0);

        /* A client that connects and says nothing is hung up on after the timeout (MHD's timer
         * runs from sd-event): the connection ends with EOF and no bytes. */
        start = now_usec();
        raw_request(&c, "");
        assert_int_equal(c.n, 0);
        assert_true(now_usec() - start >= 900 * USEC_PER_MSEC);
        assert_true(now_usec() - start < 3 * USEC_PER_SEC);
        assert_int_equal(http_server_n_connections(server), 0);
}

/* TLS */

static void test_tls(void **state) {
        char cacert[256], resolve[64], https[128];
        CurlResult r;

        snprintf(cacert, sizeof cacert, "%s/cert.pem", tmpdir);
        snprintf(resolve, sizeof resolve, "localhost:%u:127.0.0.1", port);
        snprintf(https, sizeof https, "https://localhost:%u/hello/tls", port);

        curl(&r, "--cacert", cacert, "--resolve", resolve, https, NULL);
        assert_int_equal(r.exit_status, 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "hello, tls");
        assert_string_equal(header(&r, "X-TLS"), "1");
        curl_result_done(&r);

        snprintf(https, sizeof https, "https://localhost:%u/echo", port);
        curl(&r, "--cacert", cacert, "--resolve", resolve, "-H", "Content-Type: application/json", "--data-binary",
             "{\"a\":1}", https, NULL);
        assert_int_equal(r.status, 201);
        assert_string_equal(r.body, "{\"a\":1}");
        curl_result_done(&r);

        snprintf(https, sizeof https, "https://localhost:%u/slow", port);
        curl(&r, "--cacert", cacert, "--resolve", resolve, https, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "late");
        curl_result_done(&r);

        /* Without trusting the certificate the handshake is refused by curl: the server really
         * presented the self-signed one. */
        snprintf(https, sizeof https, "https://localhost:%u/hello/tls", port);
        curl(&r, "--resolve", resolve, https, NULL);
        assert_int_equal(r.exit_status, 60);
        curl_result_done(&r);

        /* Plain HTTP to the TLS port gets no HTTP answer. */
        curl(&r, url("/hello/plain"), NULL);
        assert_int_not_equal(r.status, 200);
        curl_result_done(&r);
        assert_int_equal(handler_calls, 3);
}

static int make_certificate(void) {
        char key[256], cert[256];
        char *argv[] = {
                (char *) "openssl", (char *) "req",    (char *) "-x509",    (char *) "-newkey", (char *) "rsa:2048",
                (char *) "-nodes",  (char *) "-subj",  (char *) "/CN=localhost", (char *) "-addext",
                (char *) "subjectAltName=DNS:localhost", (char *) "-days", (char *) "1", (char *) "-keyout", key,
                (char *) "-out", cert, NULL,
        };
        size_t size;
        int r;

        snprintf(key, sizeof key, "%s/key.pem", tmpdir);
        snprintf(cert, sizeof cert, "%s/cert.pem", tmpdir);
        assert_true(sd_event_default(&event) >= 0);
        r = spawn_and_wait(argv);
        event = sd_event_unref(event);
        if (r != 0)
                return r < 0 ? r : -EIO;

        tls_key = read_file("key.pem", &size);
        assert_true(size > 0);
        tls_cert = read_file("cert.pem", &size);
        assert_true(size > 0);
        write_file("cert.pem", tls_cert, size); /* curl --cacert reads it */
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

int main(int argc, char *argv[]) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_get, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_head, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_post_json, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_content_length_limit, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_chunked_limit, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_not_found, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_method_not_allowed, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_suspended, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_handler_errors, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_uri_too_long, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_shutdown_with_suspended, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_listen_dual_stack, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_socket_activation, server_start, server_stop),
                cmocka_unit_test_setup_teardown(test_idle_timeout, server_start, server_stop),
        };
        const struct CMUnitTest tls_tests[] = {
                cmocka_unit_test_setup_teardown(test_tls, server_start, server_stop),
        };
        bool tls = argc > 1 && streq(argv[1], "tls");
        sigset_t mask;
        int r;

        if (getenv("DTASK_LOG_LEVEL"))
                (void) log_set_max_level_from_string(getenv("DTASK_LOG_LEVEL"));

        /* sd_event_add_child() needs SIGCHLD blocked. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);

        /* Keep fd 3 (SD_LISTEN_FDS_START) for test_socket_activation. */
        if (fcntl(SD_LISTEN_FDS_START, F_GETFD) < 0 &&
            open("/dev/null", O_RDONLY | O_CLOEXEC) != SD_LISTEN_FDS_START)
                return EXIT_FAILURE;

        if (!mkdtemp(tmpdir))
                return EXIT_FAILURE;

        if (tls) {
                r = make_certificate();
                if (r == -ENOENT) {
                        fprintf(stderr, "openssl is not installed, skipping.\n");
                        (void) nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
                        return 77;
                }
                if (r != 0) {
                        fprintf(stderr, "openssl failed (%d).\n", r);
                        r = EXIT_FAILURE;
                } else
                        r = cmocka_run_group_tests_name("http-server-tls", tls_tests, NULL, NULL);
        } else
                r = cmocka_run_group_tests_name("http-server-live", tests, NULL, NULL);

        free(tls_cert);
        erase_and_free(tls_key);
        (void) nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
        return r;
}
