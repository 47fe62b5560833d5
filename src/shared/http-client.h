/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "macro.h"

/* A small asynchronous HTTP/1.1 client on sd-event (no threads, nothing blocks after
 * http_client_new()). One HttpClient talks to one origin ("http://host:port") through a
 * bounded pool of keep-alive connections; requests beyond the pool wait in a bounded FIFO
 * queue. Used by dtask-api to validate API keys against dtask-keys, later by libdtask.
 *
 * Name resolution: the host of the base URL is resolved ONCE, in http_client_new(), with
 * getaddrinfo(). Numeric addresses ("127.0.0.1", "[::1]") never block; a name ("localhost",
 * "keys.internal") may block in that call, so create clients at start-up, before the loop
 * serves. Every address returned is kept and tried in order when connecting (e.g.
 * "localhost" → ::1, then 127.0.0.1); DNS changes are not followed until the client is
 * re-created.
 *
 * TLS is not supported: dtask-keys is reached over loopback or a private network.
 * "https://" base URLs are refused with -EPROTONOSUPPORT.
 *
 * Request bytes (which may carry API keys or bearer tokens) are wiped from memory when the
 * request is freed. The client logs at debug level only, and never headers or bodies. */

typedef struct HttpClient HttpClient;
typedef struct HttpClientRequest HttpClientRequest;

typedef struct HttpHeader {
        char *name;   /* as sent by the server */
        char *value;  /* leading/trailing whitespace removed */
} HttpHeader;

/* A complete response. Borrowed by the callback: everything is freed after it returns,
 * copy what you keep. */
typedef struct HttpResponse {
        unsigned status;            /* 100..999 (informational 1xx responses are skipped) */
        const char *content_type;   /* Content-Type header, NULL when absent */
        const char *location;       /* Location header, NULL when absent */
        const char *retry_after;    /* Retry-After header, NULL when absent */
        char *body;                 /* NUL-terminated (the NUL is not counted), never NULL */
        size_t size;
        HttpHeader *headers;        /* all headers in order; trailers of a chunked body are not kept */
        size_t n_headers;
} HttpResponse;

/* Case-insensitive header lookup: the first header of that name, NULL when absent. */
const char *http_response_header(const HttpResponse *r, const char *name);
/* true when the Content-Type's media type (parameters ignored) equals type, case-insensitively. */
bool http_response_is_content_type(const HttpResponse *r, const char *type);

/* Called exactly once per request, always from an event-loop callback (never from within
 * http_client_request()), unless the request was cancelled first. error == 0: response is
 * set, whatever its status code (a 500 is a response, not an error). error < 0 (response NULL):
 *   -ECONNREFUSED, -ENETUNREACH, -EHOSTUNREACH, …  connecting failed (the errno of the last
 *                 address tried; every address is tried before giving up)
 *   -ETIMEDOUT    the request's deadline passed (queueing, connecting, sending, receiving)
 *   -ECONNRESET   the server closed or reset the connection before the response was complete
 *   -EBADMSG      the response is not valid HTTP/1.x (status line, header, chunk framing)
 *   -EMSGSIZE     the body (Content-Length or received so far) exceeds max_body_size, or
 *                 the status line and headers exceed max_header_size
 *   -ECANCELED    the client is being freed (http_client_free()).
 * The callback may issue new requests, cancel other requests, and free the client. */
typedef void (*HttpClientCallback)(HttpClient *c, int error, const HttpResponse *response, void *userdata);

typedef struct HttpClientSettings {
        unsigned max_connections;      /* pool size, 0: 8 */
        unsigned max_queued;           /* requests waiting for a connection, 0: 1024; beyond: -EAGAIN */
        size_t max_body_size;          /* response body limit, 0: 16 MiB */
        size_t max_header_size;        /* status line + headers limit, 0: 64 KiB */
        uint64_t default_timeout_usec; /* deadline for requests that pass 0, 0: 30 s */
        uint64_t idle_timeout_usec;    /* idle keep-alive connections older than this are not reused, 0: 30 s */
        const char *user_agent;        /* NULL: "dtask/<version>"; copied */
} HttpClientSettings;

/* base_url: "http://HOST[:PORT][/PREFIX]" — HOST a name, an IPv4 address or "[IPv6]", PORT
 * defaults to 80, an optional path PREFIX (trailing slashes dropped) is put before every
 * request path. No user info, query or fragment. Errors: -EINVAL malformed URL,
 * -EPROTONOSUPPORT a scheme other than http (https included), -EADDRNOTAVAIL the name did
 * not resolve, -ENOMEM. settings may be NULL (all defaults). */
int http_client_new(HttpClient **ret, sd_event *event, const char *base_url, const HttpClientSettings *settings);
/* Fails every queued and running request with -ECANCELED (callbacks run from within this
 * call), closes all connections, frees. Accepts NULL; may be called from a callback. */
HttpClient *http_client_free(HttpClient *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(HttpClient *, http_client_free);

/* Flags for http_client_request(). */
typedef enum HttpClientRequestFlags {
        /* Allow the one automatic retry (see below) for a method that is not idempotent by
         * definition, because this request is (e.g. POST /api/apikeys/validate). */
        HTTP_CLIENT_IDEMPOTENT = 1 << 0,
} HttpClientRequestFlags;

/* Queues a request. method: a token ("GET", "POST", …); path_and_query: starts with '/',
 * already percent-encoded, no spaces or control characters. headers: NULL or a
 * NULL-terminated list of "Name: value" lines (no CR/LF; Host, Content-Length,
 * Transfer-Encoding and Connection are set by the client and refused here). content_type
 * (may be NULL) and body/size are copied; a POST/PUT/PATCH always carries Content-Length.
 * timeout_usec: the whole request's deadline, measured from this call; 0: the default.
 *
 * Retry rule: a request that went out on a REUSED keep-alive connection and failed with
 * -ECONNRESET before a single byte of the response arrived is sent once more on a new
 * connection — the server most likely closed the idle connection while the request was
 * on its way (RFC 9112 §9.3.1). Because the server may also have processed it and then
 * died, this happens only when nothing of the request was written yet, or when the method
 * is idempotent (GET, HEAD, PUT, DELETE, OPTIONS) or HTTP_CLIENT_IDEMPOTENT is set. New
 * connections are never retried. Before reusing an idle connection, the client checks
 * that the server has not closed it yet.
 *
 * Returns 0 (the callback will run later), or -EINVAL (bad arguments), -EAGAIN (queue
 * full), -ESHUTDOWN (client being freed), -ENOMEM; then the callback will never run.
 * ret_req (optional): a handle valid until the callback runs, only for cancelling. */
int http_client_request(HttpClient *c, const char *method, const char *path_and_query,
                        const char *const *headers, const char *content_type, const void *body, size_t size,
                        uint64_t timeout_usec, unsigned flags, HttpClientCallback callback, void *userdata,
                        HttpClientRequest **ret_req);

/* The callback will not be called and the request is freed. A request already being sent
 * costs its connection (it is closed: the response can no longer be matched). Accepts NULL.
 * Calling it on a request from within that request's own callback is a no-op. */
void http_client_request_cancel(HttpClientRequest *r);

/* Counters, for tests and metrics. */
typedef struct HttpClientStats {
        uint64_t connections_opened;  /* successful connects */
        uint64_t requests;            /* requests completed with a response */
        uint64_t errors;              /* requests completed with an error (not counting cancels) */
        uint64_t retries;             /* automatic retries */
} HttpClientStats;
const HttpClientStats *http_client_get_stats(HttpClient *c);
/* Connections open now (idle or busy), and requests waiting for one. */
unsigned http_client_n_connections(HttpClient *c);
unsigned http_client_n_queued(HttpClient *c);
