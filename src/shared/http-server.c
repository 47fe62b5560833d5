/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <sys/epoll.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "http-server.h"
#include "log.h"

#define HTTP_DEFAULT_MAX_BODY_SIZE (1024U * 1024U)
#define HTTP_DEFAULT_CONNECTION_LIMIT 1024U
#define HTTP_DEFAULT_CONNECTION_TIMEOUT 60U
/* Per connection: request line, headers and the read buffer come out of this pool. */
#define HTTP_CONNECTION_MEMORY_LIMIT ((size_t) 32U * 1024U)
/* Longest request path served; longer ones are answered 414. */
#define HTTP_MAX_PATH 2048U
#define HTTP_MAX_SEGMENTS 32U
/* A chunked upload that outgrows its limit is answered 413 once it is complete; beyond this
 * many further bytes the connection is closed instead (MHD cannot answer mid-upload). */
#define HTTP_MAX_DISCARD ((uint64_t) 1024U * 1024U)
#define HTTP_SHUTDOWN_RUNS 4U

typedef struct HttpListener {
        HttpServer *server;
        struct MHD_Daemon *daemon;
        sd_event_source *io;
        sd_event_source *timer;
} HttpListener;

struct HttpServer {
        sd_event *event;
        HttpServerSettings settings;
        HttpListener **listeners;
        size_t n_listeners;
        sd_event_source *defer; /* runs MHD after suspended connections were resumed */
        HttpRequest *suspended; /* list of requests suspended at MHD level */
};

struct HttpRequest {
        HttpServer *server;
        struct MHD_Connection *connection;
        const HttpRoute *route;
        HttpMethod method;
        char *path;
        HttpParams params;
        uint64_t start_usec;
        char client_address[INET6_ADDRSTRLEN];

        size_t max_body_size;
        char *body;
        size_t body_size;
        size_t body_allocated;
        uint64_t discarded;

        char **headers; /* name, value, name, value, … */
        size_t n_headers;

        struct MHD_Response *response; /* built, not yet queued */
        unsigned status;
        bool replied;   /* a reply was built (it may still wait in response) */
        bool queued;    /* MHD has the response */
        bool handled;   /* the route's handler ran */
        bool in_handler;
        bool suspend_requested;
        bool suspended;

        void (*abort_callback)(HttpRequest *req, void *userdata);
        void *abort_userdata;
        void *userdata;
        void (*userdata_free)(void *userdata);

        HttpRequest *suspended_prev, *suspended_next;
};

static const struct {
        HttpMethod method;
        const char *name;
} http_methods[] = {
        { HTTP_GET, "GET" },     { HTTP_HEAD, "HEAD" },     { HTTP_POST, "POST" },       { HTTP_PUT, "PUT" },
        { HTTP_PATCH, "PATCH" }, { HTTP_DELETE, "DELETE" }, { HTTP_OPTIONS, "OPTIONS" },
};

int http_method_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        /* Methods are case-sensitive (RFC 9110 §9.1). */
        for (size_t i = 0; i < ELEMENTSOF(http_methods); i++)
                if (streq(s, http_methods[i].name))
                        return http_methods[i].method;
        return -EINVAL;
}

const char *http_method_to_string(HttpMethod m) {
        for (size_t i = 0; i < ELEMENTSOF(http_methods); i++)
                if (http_methods[i].method == m)
                        return http_methods[i].name;
        return NULL;
}

const char *http_status_title(unsigned status) {
        /* RFC 9110 reason phrases, independent of what the MHD version calls them. */
        static const struct {
                unsigned status;
                const char *title;
        } titles[] = {
                { 200, "OK" },
                { 201, "Created" },
                { 202, "Accepted" },
                { 204, "No Content" },
                { 301, "Moved Permanently" },
                { 302, "Found" },
                { 303, "See Other" },
                { 304, "Not Modified" },
                { 307, "Temporary Redirect" },
                { 308, "Permanent Redirect" },
                { 400, "Bad Request" },
                { 401, "Unauthorized" },
                { 403, "Forbidden" },
                { 404, "Not Found" },
                { 405, "Method Not Allowed" },
                { 406, "Not Acceptable" },
                { 408, "Request Timeout" },
                { 409, "Conflict" },
                { 410, "Gone" },
                { 411, "Length Required" },
                { 412, "Precondition Failed" },
                { 413, "Content Too Large" },
                { 414, "URI Too Long" },
                { 415, "Unsupported Media Type" },
                { 422, "Unprocessable Content" },
                { 428, "Precondition Required" },
                { 429, "Too Many Requests" },
                { 431, "Request Header Fields Too Large" },
                { 500, "Internal Server Error" },
                { 501, "Not Implemented" },
                { 502, "Bad Gateway" },
                { 503, "Service Unavailable" },
                { 504, "Gateway Timeout" },
        };

        for (size_t i = 0; i < ELEMENTSOF(titles); i++)
                if (titles[i].status == status)
                        return titles[i].title;
        return "Unknown";
}

static uint64_t now_monotonic_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* Routing */

void http_params_done(HttpParams *params) {
        if (!params)
                return;
        free(params->buffer);
        *params = (HttpParams) {};
}

static bool pattern_segment_is_param(const char *p, size_t len) {
        return len >= 3 && p[0] == '{' && p[len - 1] == '}';
}

/* Matches pattern against the path's segments; fills params (if given) on success only. */
static bool route_match_segments(const char *pattern, char **segments, size_t n_segments, HttpParams *params) {
        HttpParams found = {};
        const char *p;
        size_t i = 0;

        if (!pattern || pattern[0] != '/')
                return false;

        p = pattern + 1;
        if (*p == '\0')
                return n_segments == 0;

        for (;;) {
                const char *end = strchrnul(p, '/');
                size_t len = (size_t) (end - p);

                if (i >= n_segments)
                        return false;

                if (pattern_segment_is_param(p, len)) {
                        if (segments[i][0] == '\0' || found.n >= HTTP_MAX_PARAMS)
                                return false;
                        found.names[found.n] = p + 1;
                        found.name_lengths[found.n] = len - 2;
                        found.values[found.n] = segments[i];
                        found.n++;
                } else if (strlen(segments[i]) != len || strncasecmp(segments[i], p, len) != 0)
                        /* Literal segments ignore case, like ASP.NET routing: older clients
                         * call /api/Tasks and /api/ApiKeys. */
                        return false;

                i++;
                if (*end == '\0')
                        break;
                p = end + 1;
        }

        if (i != n_segments)
                return false;

        if (params) {
                params->n = found.n;
                memcpy(params->names, found.names, sizeof found.names);
                memcpy(params->name_lengths, found.name_lengths, sizeof found.name_lengths);
                memcpy(params->values, found.values, sizeof found.values);
        }
        return true;
}

static bool route_allows(const HttpRoute *route, HttpMethod method) {
        if (method == 0)
                return false;
        if (route->methods & method)
                return true;
        /* HEAD is GET without the body (MHD leaves the body out). */
        return method == HTTP_HEAD && (route->methods & HTTP_GET);
}

static unsigned allowed_mask(unsigned methods) {
        return (methods & HTTP_GET) ? methods | HTTP_HEAD : methods;
}

const HttpRoute *http_route_match(const HttpRoute *routes, size_t n_routes, HttpMethod method,
                                  const char *path, HttpParams *params, unsigned *ret_status,
                                  unsigned *ret_allowed) {
        HttpParams local = {}, *out = params ?: &local;
        char *segments[HTTP_MAX_SEGMENTS];
        const HttpRoute *match = NULL;
        size_t n_segments = 0, len;
        unsigned allowed = 0;
        char *s;

        *out = (HttpParams) {};

        if (!path || path[0] != '/' || (!routes && n_routes > 0))
                goto not_found;

        out->buffer = strdup(path + 1);
        if (!out->buffer)
                goto not_found; /* Cannot route without memory; answered like a miss. */

        /* One trailing slash is tolerated: "/api/tasks/" is "/api/tasks". */
        s = out->buffer;
        len = strlen(s);
        if (len >= 2 && s[len - 1] == '/' && s[len - 2] != '/')
                s[len - 1] = '\0';

        if (*s != '\0')
                for (;;) {
                        char *slash;

                        if (n_segments >= HTTP_MAX_SEGMENTS)
                                goto not_found;
                        segments[n_segments++] = s;
                        slash = strchr(s, '/');
                        if (!slash)
                                break;
                        *slash = '\0';
                        s = slash + 1;
                }

        for (size_t i = 0; i < n_routes; i++) {
                if (!route_match_segments(routes[i].pattern, segments, n_segments, NULL))
                        continue;
                allowed |= allowed_mask(routes[i].methods);
                if (!match && route_allows(&routes[i], method))
                        match = &routes[i];
        }

        if (ret_allowed)
                *ret_allowed = allowed;

        if (match) {
                (void) route_match_segments(match->pattern, segments, n_segments, out);
                if (ret_status)
                        *ret_status = 200;
                if (out == &local)
                        http_params_done(&local);
                return match;
        }

        http_params_done(out);
        if (ret_status)
                *ret_status = allowed != 0 ? 405 : 404;
        return NULL;

not_found:
        http_params_done(out);
        if (ret_status)
                *ret_status = 404;
        if (ret_allowed)
                *ret_allowed = 0;
        return NULL;
}

/* Listen addresses */

int http_parse_listen_address(const char *s, struct sockaddr_storage *ret, socklen_t *ret_len) {
        char host[INET6_ADDRSTRLEN] = "";
        const char *host_start, *host_end, *port_str;
        struct sockaddr_storage sa = {};
        unsigned long port;
        size_t host_len;
        char *end;
        int family;

        if (!s || !ret || !ret_len)
                return -EINVAL;

        if (s[0] == '[') {
                host_start = s + 1;
                host_end = strchr(host_start, ']');
                if (!host_end || host_end[1] != ':')
                        return -EINVAL;
                port_str = host_end + 2;
                family = AF_INET6;
        } else {
                host_start = s;
                host_end = strrchr(s, ':');
                if (!host_end || memchr(s, ':', (size_t) (host_end - s)))
                        return -EINVAL; /* no port, or an IPv6 address without brackets */
                port_str = host_end + 1;
                /* ":8080" is any address: IPv6 "::" (dual-stack when bound) */
                family = host_end == s ? AF_INET6 : AF_INET;
        }

        if (port_str[0] < '0' || port_str[0] > '9' || strlen(port_str) > 5)
                return -EINVAL;
        errno = 0;
        port = strtoul(port_str, &end, 10);
        if (errno != 0 || *end != '\0' || port > 65535)
                return -EINVAL;

        host_len = (size_t) (host_end - host_start);
        if (host_len >= sizeof host)
                return -EINVAL;
        memcpy(host, host_start, host_len);

        if (family == AF_INET6) {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &sa;

                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons((uint16_t) port);
                if (s[0] != '[')
                        sin6->sin6_addr = in6addr_any;
                else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
                        return -EINVAL;
                *ret_len = sizeof(struct sockaddr_in6);
        } else {
                struct sockaddr_in *sin = (struct sockaddr_in *) &sa;

                sin->sin_family = AF_INET;
                sin->sin_port = htons((uint16_t) port);
                if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
                        return -EINVAL;
                *ret_len = sizeof(struct sockaddr_in);
        }

        *ret = sa;
        return 0;
}

/* Problems (RFC 9457) */

/* Adds v under key, consuming v also on failure. */
static int object_add(json_object *o, const char *key, json_object *v) {
        if (!v)
                return -ENOMEM;
        if (json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

json_object *http_problem_new(unsigned status, const char *detail, json_object *errors) {
        _cleanup_json_ json_object *o = NULL;

        o = json_object_new_object();
        if (!o)
                return NULL;

        if (object_add(o, "type", json_object_new_string("about:blank")) < 0 ||
            object_add(o, "title", json_object_new_string(http_status_title(status))) < 0 ||
            object_add(o, "status", json_object_new_int((int32_t) status)) < 0)
                return NULL;
        if (detail && object_add(o, "detail", json_object_new_string(detail)) < 0)
                return NULL;
        if (errors && object_add(o, "errors", json_object_get(errors)) < 0)
                return NULL;

        return TAKE_PTR(o);
}

/* Requests */

static void request_suspended_unlink(HttpRequest *req) {
        HttpServer *s = req->server;

        if (req->suspended_prev)
                req->suspended_prev->suspended_next = req->suspended_next;
        else if (s->suspended == req)
                s->suspended = req->suspended_next;
        if (req->suspended_next)
                req->suspended_next->suspended_prev = req->suspended_prev;
        req->suspended_prev = req->suspended_next = NULL;
}

static void request_call_abort(HttpRequest *req) {
        void (*cb)(HttpRequest *, void *) = TAKE_PTR(req->abort_callback);

        if (cb)
                cb(req, req->abort_userdata);
}

static HttpRequest *request_free(HttpRequest *req) {
        if (!req)
                return NULL;

        /* The owner of a suspended request learns that it is going away unanswered. */
        request_call_abort(req);
        request_suspended_unlink(req);

        if (req->userdata_free)
                req->userdata_free(req->userdata);
        if (req->response)
                MHD_destroy_response(req->response);
        for (size_t i = 0; i < req->n_headers * 2; i++)
                free(req->headers[i]);
        free(req->headers);
        free(req->body);
        http_params_done(&req->params);
        free(req->path);
        return mfree(req);
}

static void request_resume(HttpRequest *req) {
        HttpServer *s = req->server;
        int r;

        if (!req->suspended)
                return;

        request_suspended_unlink(req);
        req->suspended = false;
        MHD_resume_connection(req->connection);

        /* MHD only notices the resumption in MHD_run(): have that happen on the next loop iteration. */
        r = sd_event_source_set_enabled(s->defer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_debug_errno(r, "Failed to schedule HTTP processing after resume: %m");
}

HttpMethod http_request_method(HttpRequest *req) {
        return req->method;
}

const char *http_request_path(HttpRequest *req) {
        return req->path;
}

const char *http_request_route(HttpRequest *req) {
        return req->route ? req->route->pattern : NULL;
}

const char *http_request_param(HttpRequest *req, const char *name) {
        size_t len;

        if (!name)
                return NULL;
        len = strlen(name);
        for (size_t i = 0; i < req->params.n; i++)
                if (req->params.name_lengths[i] == len && strneq(req->params.names[i], name, len))
                        return req->params.values[i];
        return NULL;
}

const char *http_request_query(HttpRequest *req, const char *name) {
        if (!name)
                return NULL;
        return MHD_lookup_connection_value(req->connection, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_request_header(HttpRequest *req, const char *name) {
        if (!name)
                return NULL;
        return MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, name);
}

const void *http_request_body(HttpRequest *req, size_t *ret_size) {
        if (ret_size)
                *ret_size = req->body_size;
        return req->body ?: "";
}

const char *http_request_client_address(HttpRequest *req) {
        return req->client_address;
}

bool http_request_is_tls(HttpRequest *req) {
        return !!req->server->settings.tls_certificate;
}

void *http_request_get_userdata(HttpRequest *req) {
        return req->userdata;
}

void http_request_set_userdata(HttpRequest *req, void *userdata, void (*free_func)(void *)) {
        if (req->userdata_free && req->userdata != userdata)
                req->userdata_free(req->userdata);
        req->userdata = userdata;
        req->userdata_free = free_func;
}

int http_request_add_header(HttpRequest *req, const char *name, const char *value) {
        _cleanup_free_ char *n = NULL, *v = NULL;
        char **h;

        if (!req || isempty(name) || !value)
                return -EINVAL;
        if (req->replied)
                return -EALREADY;
        /* No header injection: MHD refuses these too, but only when the reply is built. */
        if (strpbrk(name, "\r\n: \t") || strpbrk(value, "\r\n"))
                return -EINVAL;

        n = strdup(name);
        v = strdup(value);
        if (!n || !v)
                return -ENOMEM;
        h = reallocarray(req->headers, req->n_headers * 2 + 2, sizeof(char *));
        if (!h)
                return -ENOMEM;
        req->headers = h;
        h[req->n_headers * 2] = TAKE_PTR(n);
        h[req->n_headers * 2 + 1] = TAKE_PTR(v);
        req->n_headers++;
        return 0;
}

int http_request_reply(HttpRequest *req, unsigned status, const char *content_type, const void *body,
                       size_t size) {
        _cleanup_(MHD_destroy_responsep) struct MHD_Response *response = NULL;

        if (!req || status < 200 || status > 599 || (!body && size > 0))
                return -EINVAL;
        if (req->replied)
                return -EALREADY;

        response = MHD_create_response_from_buffer(size, (void *) (body ?: ""), MHD_RESPMEM_MUST_COPY);
        if (!response)
                return -ENOMEM;

        for (size_t i = 0; i < req->n_headers; i++)
                if (MHD_add_response_header(response, req->headers[i * 2], req->headers[i * 2 + 1]) != MHD_YES)
                        return -EINVAL;
        if (content_type &&
            MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES)
                return -EINVAL;

        req->response = TAKE_PTR(response);
        req->status = status;
        req->replied = true;
        req->abort_callback = NULL; /* answered: nothing to abort any more */

        /* Queued by the access handler: right after the handler returns, or once MHD called it
         * again for the resumed connection. */
        request_resume(req);
        return 0;
}

int http_request_reply_json(HttpRequest *req, unsigned status, json_object *body) {
        const char *text;
        size_t size;

        text = json_object_to_json_string_length(body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                 &size);
        if (!text)
                return -ENOMEM;
        return http_request_reply(req, status, "application/json", text, size);
}

int http_request_reply_empty(HttpRequest *req, unsigned status) {
        return http_request_reply(req, status, NULL, NULL, 0);
}

int http_request_reply_problem_errors(HttpRequest *req, unsigned status, const char *detail,
                                      json_object *errors) {
        _cleanup_json_ json_object *problem = NULL;
        const char *text;
        size_t size;

        if (!req)
                return -EINVAL;
        if (req->replied)
                return -EALREADY;

        problem = http_problem_new(status, detail, errors);
        if (!problem)
                return -ENOMEM;
        text = json_object_to_json_string_length(problem,
                                                 JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &size);
        if (!text)
                return -ENOMEM;
        return http_request_reply(req, status, "application/problem+json", text, size);
}

int http_request_reply_problem(HttpRequest *req, unsigned status, const char *detail_format, ...) {
        _cleanup_free_ char *detail = NULL;

        if (detail_format) {
                va_list ap;
                int r;

                va_start(ap, detail_format);
                r = vasprintf(&detail, detail_format, ap);
                va_end(ap);
                if (r < 0) {
                        detail = NULL;
                        return -ENOMEM;
                }
        }

        return http_request_reply_problem_errors(req, status, detail, NULL);
}

int http_request_suspend(HttpRequest *req, void (*abort_callback)(HttpRequest *req, void *userdata),
                         void *userdata) {
        if (!req)
                return -EINVAL;
        if (req->replied)
                return -EALREADY;
        if (!req->in_handler)
                return -EBUSY; /* only a running handler can hand its request over */

        /* The connection is suspended once the handler returned (unless it replied meanwhile). */
        req->suspend_requested = true;
        req->abort_callback = abort_callback;
        req->abort_userdata = userdata;
        return 0;
}

static void format_client_address(HttpRequest *req) {
        const union MHD_ConnectionInfo *info;
        const struct sockaddr *sa;

        info = MHD_get_connection_info(req->connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (!info || !info->client_addr)
                return;
        sa = info->client_addr;

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *sin = (const struct sockaddr_in *) sa;

                (void) inet_ntop(AF_INET, &sin->sin_addr, req->client_address, sizeof req->client_address);
        } else if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *) sa;

                /* Clients of a dual-stack socket show as "::ffff:1.2.3.4": report them as IPv4. */
                if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
                        (void) inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], req->client_address,
                                         sizeof req->client_address);
                else
                        (void) inet_ntop(AF_INET6, &sin6->sin6_addr, req->client_address,
                                         sizeof req->client_address);
        }
}

/* Replies the way a failed handler is answered: no internal error text leaves the server. */
static int request_reply_error(HttpRequest *req, int error) {
        switch (error) {
        case -ECONNREFUSED:
        case -ENOTCONN:
        case -ETIMEDOUT:
        case -ECONNRESET:
        case -EHOSTUNREACH:
                return http_request_reply_problem(req, 503, "A service this request depends on is unavailable.");
        default:
                return http_request_reply_problem(req, 500, "The server failed to process the request.");
        }
}

/* Route, limits and early errors, on the first call of the access handler. */
static int request_begin(HttpRequest *req) {
        const HttpServerSettings *settings = &req->server->settings;
        const char *content_length;
        unsigned status, allowed;

        if (strlen(req->path) > HTTP_MAX_PATH)
                return http_request_reply_problem(req, 414, "The request path is longer than %u bytes.",
                                                  HTTP_MAX_PATH);

        req->route = http_route_match(settings->routes, settings->n_routes, req->method, req->path, &req->params,
                                      &status, &allowed);
        if (!req->route) {
                if (status == 405) {
                        char allow[64] = "";
                        int r;

                        for (size_t i = 0; i < ELEMENTSOF(http_methods); i++)
                                if (allowed & http_methods[i].method) {
                                        if (allow[0] != '\0')
                                                strcat(allow, ", ");
                                        strcat(allow, http_methods[i].name);
                                }
                        r = http_request_add_header(req, "Allow", allow);
                        if (r < 0)
                                return r;
                        return http_request_reply_problem(req, 405, "The method is not allowed for this resource.");
                }
                return http_request_reply_problem(req, 404, "No resource at this path.");
        }

        req->max_body_size = req->route->max_body_size ?: settings->max_body_size;

        /* The limit is checked before anything of the body is read. */
        content_length = MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (content_length) {
                unsigned long long n;
                char *end;

                errno = 0;
                n = strtoull(content_length, &end, 10);
                if (errno == 0 && end != content_length && *end == '\0' && n > req->max_body_size)
                        return http_request_reply_problem(req, 413, "The request body is larger than %zu bytes.",
                                                          req->max_body_size);
        }

        return 0;
}

static bool request_has_body(HttpRequest *req) {
        const char *v;

        if (MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
                return true;
        v = MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        return v && !streq(v, "0");
}

static int request_append_body(HttpRequest *req, const char *data, size_t size) {
        size_t need;

        if (size > req->max_body_size - req->body_size)
                return -E2BIG;

        need = req->body_size + size + 1;
        if (need > req->body_allocated) {
                size_t n = MAX(need, MIN(MAX(req->body_allocated * 2, (size_t) 4096), req->max_body_size + 1));
                char *p;

                p = realloc(req->body, n);
                if (!p)
                        return -ENOMEM;
                req->body = p;
                req->body_allocated = n;
        }

        memcpy(req->body + req->body_size, data, size);
        req->body_size += size;
        req->body[req->body_size] = '\0';
        return 0;
}

static enum MHD_Result request_queue(HttpRequest *req) {
        _cleanup_(MHD_destroy_responsep) struct MHD_Response *response = TAKE_PTR(req->response);

        if (MHD_queue_response(req->connection, req->status, response) != MHD_YES) {
                log_debug("Failed to queue HTTP %u response for %s.", req->status, req->path);
                return MHD_NO;
        }
        req->queued = true;
        return MHD_YES;
}

static enum MHD_Result request_run_handler(HttpRequest *req) {
        HttpServer *s = req->server;
        int r;

        req->handled = true;
        req->in_handler = true;
        r = req->route->handler(req, s->settings.userdata);
        req->in_handler = false;

        if (!req->replied) {
                if (r >= 0 && !req->suspend_requested) {
                        log_debug("Handler for %s %s returned without a reply.", strna(http_method_to_string(req->method)),
                                  req->route->pattern);
                        r = -EPROTO;
                }
                if (r < 0) {
                        log_debug_errno(r, "Handler for %s %s failed: %m", strna(http_method_to_string(req->method)),
                                        req->route->pattern);
                        request_call_abort(req);
                        r = request_reply_error(req, r);
                        if (r < 0)
                                return MHD_NO;
                }
        }

        if (req->response)
                return request_queue(req);

        MHD_suspend_connection(req->connection);
        req->suspended = true;
        req->suspended_next = s->suspended;
        if (s->suspended)
                s->suspended->suspended_prev = req;
        s->suspended = req;
        return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *connection, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
        HttpListener *l = cls;
        HttpRequest *req = *con_cls;
        int r;

        if (!req) {
                req = calloc(1, sizeof(HttpRequest));
                if (!req)
                        return MHD_NO;
                req->server = l->server;
                req->connection = connection;
                req->start_usec = now_monotonic_usec();
                *con_cls = req; /* from now on freed by on_completed() */

                r = http_method_from_string(method);
                req->method = r < 0 ? 0 : (HttpMethod) r;
                req->path = strdup(url ?: "");
                if (!req->path)
                        return MHD_NO;
                format_client_address(req);

                if (request_begin(req) < 0)
                        return MHD_NO;

                /* Early answers go out before any body is read; the connection is closed after them.
                 * Without a body they wait for the final call, keeping the connection alive. */
                if (req->response && request_has_body(req))
                        return request_queue(req);
                return MHD_YES;
        }

        if (*upload_data_size > 0) {
                size_t size = *upload_data_size;

                *upload_data_size = 0;

                if (req->replied) {
                        req->discarded += size;
                        return req->discarded > HTTP_MAX_DISCARD ? MHD_NO : MHD_YES;
                }

                r = request_append_body(req, upload_data, size);
                if (r == -E2BIG) {
                        /* A chunked body outgrew the limit: drop what we have and discard the rest. */
                        req->body = mfree(req->body);
                        req->body_size = req->body_allocated = 0;
                        req->discarded = size;
                        r = http_request_reply_problem(req, 413, "The request body is larger than %zu bytes.",
                                                       req->max_body_size);
                }
                return r < 0 ? MHD_NO : MHD_YES;
        }

        if (req->response)
                return request_queue(req);
        if (req->handled)
                return MHD_NO; /* resumed without a reply: nothing left to say, close */

        return request_run_handler(req);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
        HttpListener *l = cls;
        HttpServer *s = l->server;
        HttpRequest *req = *con_cls;

        if (!req)
                return;
        *con_cls = NULL;

        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                log_debug("HTTP request %s %s ended early (%i).", strna(http_method_to_string(req->method)),
                          strna(req->path), (int) toe);

        if (req->queued && s->settings.completed)
                s->settings.completed(req->route ? req->route->pattern : NULL, req->method, req->status,
                                      now_monotonic_usec() - req->start_usec, s->settings.userdata);

        request_free(req);
}

_printf_(2, 0)
static void on_mhd_log(void *cls, const char *format, va_list ap) {
        char buf[512];
        size_t n;

        if (log_get_max_level() < LOG_DEBUG)
                return;

        (void) vsnprintf(buf, sizeof buf, format, ap);
        n = strlen(buf);
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = '\0';
        log_debug("microhttpd: %s", buf);
}

/* Listeners: one MHD daemon each, driven through its epoll fd. */

static HttpListener *listener_free(HttpListener *l) {
        if (!l)
                return NULL;

        sd_event_source_disable_unref(l->io);
        sd_event_source_disable_unref(l->timer);
        if (l->daemon)
                MHD_stop_daemon(l->daemon); /* closes the listening socket and all connections */
        return mfree(l);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(HttpListener *, listener_free);

static void listener_arm_timer(HttpListener *l) {
        MHD_UNSIGNED_LONG_LONG ms;
        uint64_t now, usec;
        int r;

        if (MHD_get_timeout(l->daemon, &ms) != MHD_YES) {
                r = sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
                if (r < 0)
                        log_debug_errno(r, "Failed to disable HTTP timer: %m");
                return;
        }

        /* MHD's timeout is relative milliseconds, sd-event's timers absolute microseconds. */
        r = sd_event_now(l->server->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                now = now_monotonic_usec();
        usec = ms >= (USEC_INFINITY - 1 - now) / USEC_PER_MSEC ? USEC_INFINITY - 1 : now + ms * USEC_PER_MSEC;

        r = sd_event_source_set_time(l->timer, usec);
        if (r >= 0)
                r = sd_event_source_set_enabled(l->timer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_debug_errno(r, "Failed to arm HTTP timer: %m");
}

static void listener_process(HttpListener *l) {
        if (MHD_run(l->daemon) != MHD_YES)
                log_debug("MHD_run() failed.");
        listener_arm_timer(l);
}

static int on_listener_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        listener_process(userdata);
        return 0;
}

static int on_listener_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        listener_process(userdata);
        return 0;
}

static int on_resumed(sd_event_source *source, void *userdata) {
        HttpServer *s = userdata;

        for (size_t i = 0; i < s->n_listeners; i++)
                listener_process(s->listeners[i]);
        return 0;
}

int http_server_add_listener(HttpServer *s, int fd) {
        _cleanup_(listener_freep) HttpListener *l = NULL;
        _cleanup_close_ int owned_fd = fd;
        const union MHD_DaemonInfo *info;
        const char *cert = s ? s->settings.tls_certificate : NULL;
        HttpListener **a;
        unsigned flags;
        int r;

        if (!s || fd < 0)
                return -EINVAL;

        a = reallocarray(s->listeners, s->n_listeners + 1, sizeof(HttpListener *));
        if (!a)
                return -ENOMEM;
        s->listeners = a;

        l = calloc(1, sizeof(HttpListener));
        if (!l)
                return -ENOMEM;
        l->server = s;

        flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG;
        if (cert)
                flags |= MHD_USE_TLS;

        l->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_access, l,
                                     MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                                     MHD_OPTION_LISTEN_SOCKET, (MHD_socket) fd,
                                     MHD_OPTION_NOTIFY_COMPLETED, on_completed, l,
                                     MHD_OPTION_CONNECTION_LIMIT, s->settings.connection_limit,
                                     MHD_OPTION_CONNECTION_TIMEOUT, s->settings.connection_timeout,
                                     MHD_OPTION_CONNECTION_MEMORY_LIMIT, HTTP_CONNECTION_MEMORY_LIMIT,
                                     /* TLS options last: without TLS the list ends here. */
                                     cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, cert,
                                     MHD_OPTION_HTTPS_MEM_KEY, s->settings.tls_key,
                                     MHD_OPTION_END);
        if (!l->daemon) {
                /* Some of MHD's failure paths close the socket, others do not. Nothing can have
                 * reused the number since (no threads), so ask the kernel which one it was. */
                if (fcntl(fd, F_GETFD) < 0)
                        TAKE_FD(owned_fd);
                return log_debug_errno(EIO, "Failed to start HTTP daemon%s.",
                                       cert ? " (check the TLS certificate and key)" : "");
        }
        TAKE_FD(owned_fd); /* the daemon owns the socket now */

        info = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info || info->epoll_fd < 0)
                return -EIO;

        r = sd_event_add_io(s->event, &l->io, info->epoll_fd, EPOLLIN, on_listener_io, l);
        if (r < 0)
                return r;
        r = sd_event_add_time(s->event, &l->timer, CLOCK_MONOTONIC, 0, USEC_PER_MSEC, on_listener_timer, l);
        if (r < 0)
                return r;
        r = sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
        if (r < 0)
                return r;
        listener_arm_timer(l);

        s->listeners[s->n_listeners++] = TAKE_PTR(l);
        return 0;
}

static int listen_socket_new(const char *address) {
        _cleanup_close_ int fd = -EBADF;
        struct sockaddr_storage sa;
        socklen_t sa_len;
        bool any = false;
        int r;

        r = http_parse_listen_address(address, &sa, &sa_len);
        if (r < 0)
                return log_debug_errno(r, "Invalid listen address '%s'.", address);

        if (sa.ss_family == AF_INET6)
                any = IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *) &sa)->sin6_addr);

        fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
        if (fd < 0 && any && errno == EAFNOSUPPORT) {
                /* No IPv6 on this host: "any" is then IPv4's. */
                struct sockaddr_in sin = {
                        .sin_family = AF_INET,
                        .sin_port = ((struct sockaddr_in6 *) &sa)->sin6_port,
                        .sin_addr.s_addr = htonl(INADDR_ANY),
                };

                memcpy(&sa, &sin, sizeof sin);
                sa_len = sizeof sin;
                any = false;
                fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
        }
        if (fd < 0)
                return negative_errno();

        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &(int) { 1 }, sizeof(int)) < 0)
                return negative_errno();
        if (any && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &(int) { 0 }, sizeof(int)) < 0)
                return negative_errno();
        if (bind(fd, (struct sockaddr *) &sa, sa_len) < 0)
                return log_debug_errno(negative_errno(), "Failed to bind to %s: %m", address);
        if (listen(fd, SOMAXCONN) < 0)
                return negative_errno();

        return TAKE_FD(fd);
}

int http_server_listen(HttpServer *s, const char *listen_address, const char *default_address) {
        int n, r;

        if (!s)
                return -EINVAL;

        n = sd_listen_fds(true);
        if (n < 0)
                return log_debug_errno(n, "Failed to get sockets from the service manager: %m");
        if (n > 0) {
                for (int i = 0; i < n; i++) {
                        int fd = SD_LISTEN_FDS_START + i;

                        r = sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1);
                        if (r == 0)
                                r = log_debug_errno(EINVAL,
                                                    "Socket %i from the service manager is not a listening stream socket.",
                                                    fd);
                        if (r >= 0)
                                r = http_server_add_listener(s, fd);
                        if (r < 0) {
                                /* This fd is taken care of; the ones not reached yet are ours to close. */
                                for (int j = i + 1; j < n; j++)
                                        safe_close(SD_LISTEN_FDS_START + j);
                                return r;
                        }
                }
                return n;
        }

        if (!listen_address)
                listen_address = default_address;
        if (!listen_address)
                return -EINVAL;

        r = listen_socket_new(listen_address);
        if (r < 0)
                return r;
        r = http_server_add_listener(s, r);
        if (r < 0)
                return r;
        return 1;
}

unsigned http_server_n_connections(HttpServer *s) {
        unsigned n = 0;

        if (!s)
                return 0;

        for (size_t i = 0; i < s->n_listeners; i++) {
                const union MHD_DaemonInfo *info;

                info = MHD_get_daemon_info(s->listeners[i]->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
                if (info)
                        n += info->num_connections;
        }
        return n;
}

int http_server_new(HttpServer **ret, sd_event *event, const HttpServerSettings *settings) {
        _cleanup_(http_server_freep) HttpServer *s = NULL;
        int r;

        if (!ret || !event || !settings || (settings->n_routes > 0 && !settings->routes))
                return -EINVAL;
        if (!settings->tls_certificate != !settings->tls_key)
                return -EINVAL; /* both or neither */
        if (settings->tls_certificate && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
                return -EOPNOTSUPP;

        for (size_t i = 0; i < settings->n_routes; i++)
                if (!settings->routes[i].pattern || settings->routes[i].pattern[0] != '/' ||
                    !settings->routes[i].handler)
                        return -EINVAL;

        s = calloc(1, sizeof(HttpServer));
        if (!s)
                return -ENOMEM;

        s->event = sd_event_ref(event);
        s->settings = *settings;
        if (s->settings.max_body_size == 0)
                s->settings.max_body_size = HTTP_DEFAULT_MAX_BODY_SIZE;
        if (s->settings.connection_limit == 0)
                s->settings.connection_limit = HTTP_DEFAULT_CONNECTION_LIMIT;
        if (s->settings.connection_timeout == 0)
                s->settings.connection_timeout = HTTP_DEFAULT_CONNECTION_TIMEOUT;

        r = sd_event_add_defer(event, &s->defer, on_resumed, s);
        if (r < 0)
                return r;
        r = sd_event_source_set_enabled(s->defer, SD_EVENT_OFF);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(s);
        return 0;
}

HttpServer *http_server_free(HttpServer *s) {
        if (!s)
                return NULL;

        /* MHD must not be stopped with suspended connections: tell their owners, answer 503,
         * and give MHD a few rounds to get the answers out. */
        while (s->suspended) {
                HttpRequest *req = s->suspended;

                request_call_abort(req);
                (void) http_request_reply_problem(req, 503, "The server is shutting down.");
                request_resume(req); /* in case the reply could not be built */
        }
        for (unsigned round = 0; round < HTTP_SHUTDOWN_RUNS; round++)
                for (size_t i = 0; i < s->n_listeners; i++)
                        (void) MHD_run(s->listeners[i]->daemon);

        for (size_t i = 0; i < s->n_listeners; i++)
                listener_free(s->listeners[i]);
        free(s->listeners);

        sd_event_source_disable_unref(s->defer);
        sd_event_unref(s->event);
        return mfree(s);
}
