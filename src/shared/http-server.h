/* SPDX-License-Identifier: MIT */
#pragma once

#include <json-c/json_object.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>

#include "macro.h"

/* An HTTP/1.1 server on libmicrohttpd, driven from an sd-event loop through MHD's
 * epoll fd (MHD_USE_EPOLL, no threads). Requests are routed by method and path
 * pattern; a handler runs once the whole body has arrived (the size limit is
 * checked against Content-Length before anything is read, and again while
 * reading). A handler either answers at once or suspends the request and answers
 * later from another event-loop callback (e.g. when PostgreSQL replied). */

typedef struct HttpServer HttpServer;
typedef struct HttpRequest HttpRequest;

typedef enum HttpMethod {
        HTTP_GET = 1 << 0,
        HTTP_HEAD = 1 << 1,
        HTTP_POST = 1 << 2,
        HTTP_PUT = 1 << 3,
        HTTP_PATCH = 1 << 4,
        HTTP_DELETE = 1 << 5,
        HTTP_OPTIONS = 1 << 6,
} HttpMethod;

/* Called when the request is complete. Returns 0 once a reply was queued with one
 * of the http_request_reply*() calls, or after http_request_suspend(). A negative
 * errno makes the server answer 500 (or 503 for -ECONNREFUSED/-ENOTCONN/-ETIMEDOUT/
 * -ECONNRESET/-EHOSTUNREACH) unless a reply was already queued. */
typedef int (*HttpHandler)(HttpRequest *req, void *userdata);

typedef struct HttpRoute {
        unsigned methods;     /* mask of HttpMethod */
        const char *pattern;  /* "/api/tasks/{id}/retry": "{name}" matches one non-empty path segment */
        HttpHandler handler;
        size_t max_body_size; /* 0: the server's default */
} HttpRoute;

/* Called after each response was sent, for metrics: route is the matched pattern
 * (NULL when no route matched), duration measured from the first byte received. */
typedef void (*HttpCompletedHandler)(const char *route, HttpMethod method, unsigned status,
                                     uint64_t duration_usec, void *userdata);

typedef struct HttpServerSettings {
        const HttpRoute *routes;
        size_t n_routes;
        size_t max_body_size;         /* default limit for a request body, 0: 1 MiB */
        unsigned connection_limit;    /* 0: 1024 */
        unsigned connection_timeout;  /* idle seconds, 0: 60 */
        const char *tls_certificate;  /* PEM text (not a path); NULL: plain HTTP */
        const char *tls_key;          /* PEM text; secret */
        HttpCompletedHandler completed;
        void *userdata;               /* passed to handlers and completed */
} HttpServerSettings;

/* Takes ownership of nothing; settings strings must stay valid for the server's lifetime. */
int http_server_new(HttpServer **ret, sd_event *event, const HttpServerSettings *settings);
/* Stops accepting, answers suspended requests with 503, frees. Accepts NULL. */
HttpServer *http_server_free(HttpServer *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(HttpServer *, http_server_free);

/* Serves on an already listening socket (takes ownership of fd, which is closed on failure too).
 * May be called several times: one MHD daemon per socket. */
int http_server_add_listener(HttpServer *s, int fd);
/* The listening sockets for a daemon: those passed by systemd (sd_listen_fds) when there are any,
 * otherwise a new socket bound to "ADDR:PORT" ("127.0.0.1:8080", "[::1]:8080", ":8080" for any)
 * given by --listen=, otherwise to default_address. Returns the number of fds added to the server. */
int http_server_listen(HttpServer *s, const char *listen_address, const char *default_address);
/* Number of connections currently open (for shutdown and metrics). */
unsigned http_server_n_connections(HttpServer *s);

/* Parses "ADDR:PORT" into a socket address; exposed for tests. */
int http_parse_listen_address(const char *s, struct sockaddr_storage *ret, socklen_t *ret_len);

/* Routing, exposed for tests: returns the matching route or NULL with *ret_status set to
 * 404 (no pattern matches the path) or 405 (the path matches, the method does not; then
 * *ret_allowed is the mask of allowed methods). Captured "{name}" segments are stored in
 * params (pointers into a copy of path owned by the caller through params->buffer; params
 * is initialized here, release it with http_params_done()). Literal segments match ignoring case (compat with ASP.NET routing); one
 * trailing slash is ignored ("/api/tasks/" matches "/api/tasks"); the first matching
 * route wins, so list literal segments before "{name}" ones; HEAD is served by GET routes. */
#define HTTP_MAX_PARAMS 4
typedef struct HttpParams {
        size_t n;
        const char *names[HTTP_MAX_PARAMS];  /* point into the route's pattern (not NUL-terminated there) */
        size_t name_lengths[HTTP_MAX_PARAMS];
        char *values[HTTP_MAX_PARAMS];       /* point into *buffer */
        char *buffer;
} HttpParams;
const HttpRoute *http_route_match(const HttpRoute *routes, size_t n_routes, HttpMethod method,
                                  const char *path, HttpParams *params, unsigned *ret_status,
                                  unsigned *ret_allowed);
void http_params_done(HttpParams *params);
int http_method_from_string(const char *s); /* HttpMethod or -EINVAL */
const char *http_method_to_string(HttpMethod m);
const char *http_status_title(unsigned status); /* "Not Found", …; "Unknown" for others */

/* Request accessors. Strings stay valid until the reply was queued. */
HttpMethod http_request_method(HttpRequest *req);
const char *http_request_path(HttpRequest *req);
const char *http_request_route(HttpRequest *req); /* the matched pattern */
const char *http_request_param(HttpRequest *req, const char *name); /* "{name}" from the pattern */
const char *http_request_query(HttpRequest *req, const char *name); /* decoded, NULL if absent */
const char *http_request_header(HttpRequest *req, const char *name); /* case-insensitive */
const void *http_request_body(HttpRequest *req, size_t *ret_size);  /* NUL-terminated, may be empty */
const char *http_request_client_address(HttpRequest *req);  /* "1.2.3.4" / "::1" */
bool http_request_is_tls(HttpRequest *req);
void *http_request_get_userdata(HttpRequest *req);
void http_request_set_userdata(HttpRequest *req, void *userdata, void (*free_func)(void *));

/* Extra response headers; call before a reply. */
int http_request_add_header(HttpRequest *req, const char *name, const char *value);

/* Replies. The body is copied. Each may be called once per request; a second reply is -EALREADY.
 * Works both from within the handler and later on a suspended request (which is then resumed). */
int http_request_reply(HttpRequest *req, unsigned status, const char *content_type, const void *body,
                       size_t size);
int http_request_reply_json(HttpRequest *req, unsigned status, json_object *body); /* body not consumed */
int http_request_reply_empty(HttpRequest *req, unsigned status);
/* application/problem+json (RFC 9457) with type "about:blank", title from the status. */
int http_request_reply_problem(HttpRequest *req, unsigned status, const char *detail_format, ...)
        _printf_(3, 4);
/* Same with "errors": {field: [messages]} (object not consumed). */
int http_request_reply_problem_errors(HttpRequest *req, unsigned status, const char *detail,
                                      json_object *errors);

/* Builds the problem body; exposed for tests and for non-HTTP users. */
json_object *http_problem_new(unsigned status, const char *detail, json_object *errors);

/* Keeps the connection open without a reply. The handler returns 0; the request is
 * answered later with http_request_reply*(). If the server shuts down first, it
 * answers 503 itself. The abort callback (optional) tells the owner that the request is
 * going away without its reply (server shutdown, or the handler returned an error after
 * suspending), so that it drops its pointer. Only a running handler may suspend (else -EBUSY). */
int http_request_suspend(HttpRequest *req, void (*abort_callback)(HttpRequest *req, void *userdata),
                         void *userdata);
