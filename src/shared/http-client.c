/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "http-client.h"
#include "log.h"

#define HTTP_CLIENT_DEFAULT_MAX_CONNECTIONS 8U
#define HTTP_CLIENT_DEFAULT_MAX_QUEUED 1024U
#define HTTP_CLIENT_DEFAULT_MAX_BODY_SIZE ((size_t) 16U * 1024U * 1024U)
#define HTTP_CLIENT_DEFAULT_MAX_HEADER_SIZE ((size_t) 64U * 1024U)
#define HTTP_CLIENT_DEFAULT_TIMEOUT_USEC (30U * USEC_PER_SEC)
#define HTTP_CLIENT_DEFAULT_IDLE_TIMEOUT_USEC (30U * USEC_PER_SEC)
#define HTTP_CLIENT_MAX_ADDRESSES 8U
#define HTTP_CLIENT_READ_CHUNK ((size_t) 16U * 1024U)
#define HTTP_CLIENT_MAX_CHUNK_LINE 1024U
#define HTTP_CLIENT_MAX_HEADERS 256U
#define HTTP_CLIENT_MAX_PATH 8192U
#define HTTP_CLIENT_TIMER_ACCURACY_USEC USEC_PER_MSEC

typedef struct Connection Connection;

typedef enum RequestState {
        REQUEST_QUEUED,
        REQUEST_ACTIVE,     /* bound to a connection (connecting, sending or receiving) */
        REQUEST_COMPLETING, /* its callback runs */
} RequestState;

struct HttpClientRequest {
        HttpClient *client;
        RequestState state;
        HttpClientRequest *queue_prev, *queue_next;
        Connection *connection;

        char *out; /* the serialized request: wiped when freed */
        size_t out_size;
        bool idempotent;
        bool head;    /* HEAD: the response has no body whatever its headers say */
        bool retried;

        sd_event_source *timer;
        HttpClientCallback callback;
        void *userdata;
        HttpResponse response;
};

typedef enum ConnectionState {
        CONNECTION_CONNECTING,
        CONNECTION_BUSY,
        CONNECTION_IDLE,
} ConnectionState;

typedef enum ParseState {
        PARSE_HEAD,
        PARSE_BODY_LENGTH,
        PARSE_CHUNK_SIZE,
        PARSE_CHUNK_DATA,
        PARSE_CHUNK_END,
        PARSE_TRAILERS,
        PARSE_BODY_EOF,
        PARSE_DONE,
} ParseState;

struct Connection {
        HttpClient *client;
        Connection *prev, *next;
        ConnectionState state;
        int fd;
        sd_event_source *io;
        size_t address;     /* index into client->addresses of the current attempt */
        size_t n_tried;     /* addresses tried, in turn from the client's preferred one */
        unsigned n_responses;
        uint64_t idle_since;

        HttpClientRequest *request;
        size_t out_offset;

        char *in;
        size_t in_pos, in_size, in_allocated;
        bool got_bytes; /* something of the current response arrived */

        ParseState parse;
        HttpResponse response;
        size_t headers_allocated;
        size_t body_allocated;
        uint64_t remaining; /* Content-Length left, or of the current chunk */
        size_t trailer_size;
        bool close_after;
};

typedef struct HttpAddress {
        struct sockaddr_storage sa;
        socklen_t len;
} HttpAddress;

struct HttpClient {
        sd_event *event;
        char *host_header;
        char *prefix; /* path prefix without trailing '/', may be "" */
        char *user_agent;
        HttpAddress addresses[HTTP_CLIENT_MAX_ADDRESSES];
        size_t n_addresses;
        size_t preferred_address;

        unsigned max_connections;
        unsigned max_queued;
        size_t max_body_size;
        size_t max_header_size;
        uint64_t default_timeout_usec;
        uint64_t idle_timeout_usec;

        HttpClientRequest *queue_head, *queue_tail;
        unsigned n_queued;
        Connection *connections;
        unsigned n_connections;
        sd_event_source *dispatch;
        bool freeing;

        HttpClientStats stats;
};

/* ------------------------------------------------------------------------------------------ */
/* small helpers */

static uint64_t now_monotonic(void) {
        struct timespec ts;
        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static bool is_tchar(char c) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
                return true;
        return c != '\0' && strchr("!#$%&'*+-.^_`|~", c);
}

static bool is_token(const char *s, size_t n) {
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!is_tchar(s[i]))
                        return false;
        return true;
}

/* Field values: visible ASCII, SP, HTAB and obs-text; no CR, LF, NUL or other controls. */
static bool is_field_value(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) s[i];
                if ((c < 0x20 && c != '\t') || c == 0x7f)
                        return false;
        }
        return true;
}

static const char *skip_ows(const char *s, const char *end) {
        while (s < end && (*s == ' ' || *s == '\t'))
                s++;
        return s;
}

static const char *trim_ows_end(const char *s, const char *end) {
        while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
        return end;
}

static void response_done(HttpResponse *r) {
        for (size_t i = 0; i < r->n_headers; i++) {
                free(r->headers[i].name);
                free(r->headers[i].value);
        }
        free(r->headers);
        if (r->body) {
                /* bodies may carry tokens (a login's jwtToken) */
                sodium_memzero(r->body, r->size);
                free(r->body);
        }
        *r = (HttpResponse) {};
}

const char *http_response_header(const HttpResponse *r, const char *name) {
        if (!r || !name)
                return NULL;
        for (size_t i = 0; i < r->n_headers; i++)
                if (strcaseeq(r->headers[i].name, name))
                        return r->headers[i].value;
        return NULL;
}

bool http_response_is_content_type(const HttpResponse *r, const char *type) {
        const char *ct;
        size_t n;

        if (!r || !type || !r->content_type)
                return false;
        ct = r->content_type;
        n = strcspn(ct, "; \t");
        return n == strlen(type) && strncasecmp(ct, type, n) == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* requests */

static void queue_remove(HttpClient *c, HttpClientRequest *r) {
        if (r->queue_prev)
                r->queue_prev->queue_next = r->queue_next;
        else
                c->queue_head = r->queue_next;
        if (r->queue_next)
                r->queue_next->queue_prev = r->queue_prev;
        else
                c->queue_tail = r->queue_prev;
        r->queue_prev = r->queue_next = NULL;
        c->n_queued--;
}

static void queue_append(HttpClient *c, HttpClientRequest *r) {
        r->queue_next = NULL;
        r->queue_prev = c->queue_tail;
        if (c->queue_tail)
                c->queue_tail->queue_next = r;
        else
                c->queue_head = r;
        c->queue_tail = r;
        c->n_queued++;
        r->state = REQUEST_QUEUED;
}

static void queue_prepend(HttpClient *c, HttpClientRequest *r) {
        r->queue_prev = NULL;
        r->queue_next = c->queue_head;
        if (c->queue_head)
                c->queue_head->queue_prev = r;
        else
                c->queue_tail = r;
        c->queue_head = r;
        c->n_queued++;
        r->state = REQUEST_QUEUED;
}

static void request_free(HttpClientRequest *r) {
        if (!r)
                return;
        sd_event_source_disable_unref(r->timer);
        if (r->out) {
                sodium_memzero(r->out, r->out_size);
                free(r->out);
        }
        response_done(&r->response);
        free(r);
}

/* Runs the callback and frees the request. Must be the last thing an event handler does:
 * the callback may free the client, with everything it owns. r must be detached already. */
static void request_complete(HttpClientRequest *r, int error) {
        HttpClient *c = r->client;

        if (r->state == REQUEST_COMPLETING)
                return;
        r->state = REQUEST_COMPLETING;
        r->timer = sd_event_source_disable_unref(r->timer);

        if (error >= 0)
                c->stats.requests++;
        else if (error != -ECANCELED)
                c->stats.errors++;

        if (error < 0)
                log_debug_errno(error, "http-client: request to %s failed: %m", c->host_header);

        r->callback(c, error, error < 0 ? NULL : &r->response, r->userdata);
        request_free(r);
}

static void client_schedule_dispatch(HttpClient *c) {
        int r;

        if (!c->queue_head || c->freeing)
                return;
        r = sd_event_source_set_enabled(c->dispatch, SD_EVENT_ONESHOT);
        if (r < 0)
                log_debug_errno(r, "http-client: failed to schedule dispatch: %m");
}

/* ------------------------------------------------------------------------------------------ */
/* connections */

static void connection_reset_parser(Connection *conn) {
        response_done(&conn->response);
        conn->headers_allocated = 0;
        conn->body_allocated = 0;
        conn->parse = PARSE_HEAD;
        conn->remaining = 0;
        conn->trailer_size = 0;
        conn->got_bytes = false;
        conn->close_after = false;
}

/* Frees a connection; the request bound to it (if any) must have been detached. */
static void connection_free(Connection *conn) {
        HttpClient *c;

        if (!conn)
                return;
        c = conn->client;

        if (conn->prev)
                conn->prev->next = conn->next;
        else if (c->connections == conn)
                c->connections = conn->next;
        if (conn->next)
                conn->next->prev = conn->prev;
        c->n_connections--;

        sd_event_source_disable_unref(conn->io);
        safe_close(conn->fd);
        response_done(&conn->response);
        if (conn->in) {
                sodium_memzero(conn->in, conn->in_allocated);
                free(conn->in);
        }
        free(conn);
}

static HttpClientRequest *connection_detach(Connection *conn) {
        HttpClientRequest *r = conn->request;

        if (r) {
                r->connection = NULL;
                conn->request = NULL;
        }
        return r;
}

static bool connection_may_retry(Connection *conn, HttpClientRequest *r, int error) {
        return error == -ECONNRESET &&
               conn->n_responses > 0 &&    /* a reused keep-alive connection… */
               !conn->got_bytes &&         /* …on which no byte of the response arrived */
               !r->retried &&              /* only once */
               (r->idempotent || conn->out_offset == 0);
}

/* The connection broke (or its exchange failed): close it, and retry or fail its request. */
static void connection_fail(Connection *conn, int error) {
        HttpClient *c = conn->client;
        HttpClientRequest *r;
        bool retry;

        r = connection_detach(conn);
        retry = r && connection_may_retry(conn, r, error);
        connection_free(conn);

        if (!r) {
                client_schedule_dispatch(c);
                return;
        }

        if (retry) {
                log_debug("http-client: reused connection to %s was closed by the server, retrying once",
                          c->host_header);
                r->retried = true;
                c->stats.retries++;
                queue_prepend(c, r);
                client_schedule_dispatch(c);
                return;
        }

        client_schedule_dispatch(c);
        request_complete(r, error);
}

static int on_connection_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static int connection_set_events(Connection *conn) {
        uint32_t events = EPOLLIN;

        if (conn->state == CONNECTION_CONNECTING)
                events = EPOLLOUT;
        else if (conn->state == CONNECTION_BUSY && conn->request && conn->out_offset < conn->request->out_size)
                events |= EPOLLOUT;

        return sd_event_source_set_io_events(conn->io, events);
}

/* Starts a non-blocking connect to the next address not tried yet (starting with the one that
 * worked last); returns the error of the last address when none could even be started. */
static int connection_connect(Connection *conn, int last_error) {
        HttpClient *c = conn->client;
        int r = last_error;

        conn->io = sd_event_source_disable_unref(conn->io);
        conn->fd = safe_close(conn->fd);

        for (; conn->n_tried < c->n_addresses; conn->n_tried++) {
                const HttpAddress *a;
                _cleanup_close_ int fd = -EBADF;
                int one = 1;

                conn->address = (c->preferred_address + conn->n_tried) % c->n_addresses;
                a = &c->addresses[conn->address];

                fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
                if (fd < 0) {
                        r = -errno;
                        continue;
                }
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

                if (connect(fd, (const struct sockaddr *) &a->sa, a->len) < 0 && errno != EINPROGRESS) {
                        r = -errno;
                        continue;
                }

                r = sd_event_add_io(c->event, &conn->io, fd, EPOLLOUT, on_connection_io, conn);
                if (r < 0)
                        return r;
                conn->fd = TAKE_FD(fd);
                conn->state = CONNECTION_CONNECTING;
                conn->n_tried++;
                return 0;
        }

        return r < 0 ? r : -ECONNREFUSED;
}

static int connection_new(HttpClient *c, HttpClientRequest *req, Connection **ret) {
        Connection *conn;
        int r;

        conn = calloc(1, sizeof(Connection));
        if (!conn)
                return -ENOMEM;
        conn->client = c;
        conn->fd = -EBADF;
        conn->next = c->connections;
        if (c->connections)
                c->connections->prev = conn;
        c->connections = conn;
        c->n_connections++;

        r = connection_connect(conn, 0);
        if (r < 0) {
                connection_free(conn);
                return r;
        }

        conn->request = req;
        req->connection = conn;
        req->state = REQUEST_ACTIVE;
        conn->out_offset = 0;
        *ret = conn;
        return 0;
}

/* Is this idle keep-alive connection still usable? The server may have closed it already. */
static bool connection_idle_usable(Connection *conn) {
        HttpClient *c = conn->client;
        char b;
        ssize_t n;

        if (now_monotonic() - conn->idle_since >= c->idle_timeout_usec)
                return false;

        n = recv(conn->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        /* EOF, stray data or an error: not usable */
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static int connection_send(Connection *conn);

/* Binds req to the idle conn and sends what the socket takes at once (an idle keep-alive
 * socket takes a request whole): the rest, and an error, once the socket is writable, in
 * on_connection_io(). So no callback runs from here. Fails only before anything was sent
 * (the request may go on another connection then). */
static int connection_start(Connection *conn, HttpClientRequest *req) {
        int r;

        conn->state = CONNECTION_BUSY;
        conn->request = req;
        conn->out_offset = 0;
        req->connection = conn;
        req->state = REQUEST_ACTIVE;
        connection_reset_parser(conn);
        r = connection_set_events(conn); /* EPOLLOUT too: nothing is sent yet */
        if (r < 0)
                return r;
        (void) connection_send(conn);
        /* all sent: EPOLLIN only. If that fails, on_connection_io() tries again. */
        (void) connection_set_events(conn);
        return 0;
}

static void connection_set_idle(Connection *conn) {
        conn->state = CONNECTION_IDLE;
        conn->idle_since = now_monotonic();
        conn->in_pos = conn->in_size = 0;
        connection_reset_parser(conn);
        if (connection_set_events(conn) < 0) {
                /* cannot watch it: do not keep it */
                connection_free(conn);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* response parsing */

static int body_append(Connection *conn, const char *p, size_t n) {
        HttpClient *c = conn->client;
        HttpResponse *resp = &conn->response;

        if (n == 0)
                return 0;
        if (n > c->max_body_size || resp->size > c->max_body_size - n)
                return -EMSGSIZE;

        if (resp->size + n + 1 > conn->body_allocated) {
                size_t a = MAX(conn->body_allocated * 2, resp->size + n + 1);
                char *b;

                a = MAX(a, (size_t) 4096);
                a = MIN(a, c->max_body_size + 1);
                b = malloc(a);
                if (!b)
                        return -ENOMEM;
                if (resp->body) {
                        memcpy(b, resp->body, resp->size);
                        sodium_memzero(resp->body, resp->size);
                        free(resp->body);
                }
                resp->body = b;
                conn->body_allocated = a;
        }

        memcpy(resp->body + resp->size, p, n);
        resp->size += n;
        resp->body[resp->size] = '\0';
        return 0;
}

static int header_add(Connection *conn, const char *name, size_t name_len, const char *value, size_t value_len) {
        HttpResponse *resp = &conn->response;
        _cleanup_free_ char *n = NULL, *v = NULL;

        if (resp->n_headers >= HTTP_CLIENT_MAX_HEADERS)
                return -EMSGSIZE;

        if (resp->n_headers >= conn->headers_allocated) {
                size_t a = MAX(conn->headers_allocated * 2, (size_t) 16);
                HttpHeader *h = reallocarray(resp->headers, a, sizeof(HttpHeader));
                if (!h)
                        return -ENOMEM;
                resp->headers = h;
                conn->headers_allocated = a;
        }

        n = strndup(name, name_len);
        v = strndup(value, value_len);
        if (!n || !v)
                return -ENOMEM;

        resp->headers[resp->n_headers++] = (HttpHeader) { .name = TAKE_PTR(n), .value = TAKE_PTR(v) };
        return 0;
}

/* "HTTP/1.x SSS[ reason]" */
static int parse_status_line(const char *p, const char *end, unsigned *ret_status, bool *ret_http10) {
        unsigned status;

        if (end - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
                return -EBADMSG;
        for (int i = 9; i < 12; i++)
                if (p[i] < '0' || p[i] > '9')
                        return -EBADMSG;
        status = (unsigned) (p[9] - '0') * 100 + (unsigned) (p[10] - '0') * 10 + (unsigned) (p[11] - '0');
        if (status < 100)
                return -EBADMSG;
        if (end - p > 12) {
                if (p[12] != ' ')
                        return -EBADMSG;
                if (!is_field_value(p + 13, (size_t) (end - p - 13)))
                        return -EBADMSG;
        }

        *ret_status = status;
        *ret_http10 = p[7] == '0';
        return 0;
}

static bool header_has_token(const char *value, const char *token) {
        size_t n = strlen(token);

        for (const char *p = value; *p;) {
                const char *e;

                p += strspn(p, " \t,");
                e = p + strcspn(p, ",");
                if (trim_ows_end(p, e) - p == (ptrdiff_t) n && strncasecmp(p, token, n) == 0)
                        return true;
                p = e;
        }
        return false;
}

/* Parses the status line and headers in [p, end) (end points behind the empty line), and
 * decides how the body is framed (RFC 9112 §6.3). Returns 1 for an informational response
 * that is to be skipped. */
static int parse_head(Connection *conn, const char *p, const char *end) {
        HttpClient *c = conn->client;
        HttpResponse *resp = &conn->response;
        bool http10 = false, have_length = false, chunked = false, have_te = false;
        uint64_t length = 0;
        bool first = true;
        int r;

        if (memchr(p, '\0', (size_t) (end - p)))
                return -EBADMSG;

        while (p < end) {
                const char *eol = memchr(p, '\n', (size_t) (end - p)), *line_end;

                if (!eol)
                        return -EBADMSG;
                line_end = eol;
                if (line_end > p && line_end[-1] == '\r')
                        line_end--;

                if (first) {
                        r = parse_status_line(p, line_end, &resp->status, &http10);
                        if (r < 0)
                                return r;
                        first = false;
                } else if (line_end == p) {
                        break; /* the empty line */
                } else {
                        const char *colon, *v, *ve;

                        if (*p == ' ' || *p == '\t')
                                return -EBADMSG; /* obs-fold */
                        colon = memchr(p, ':', (size_t) (line_end - p));
                        if (!colon || !is_token(p, (size_t) (colon - p)))
                                return -EBADMSG;
                        v = skip_ows(colon + 1, line_end);
                        ve = trim_ows_end(v, line_end);
                        if (!is_field_value(v, (size_t) (ve - v)))
                                return -EBADMSG;
                        r = header_add(conn, p, (size_t) (colon - p), v, (size_t) (ve - v));
                        if (r < 0)
                                return r;
                }
                p = eol + 1;
        }
        if (first)
                return -EBADMSG;

        if (resp->status == 101)
                return -EBADMSG; /* never asked for an upgrade */
        if (resp->status < 200) {
                /* 100 Continue and friends: forget them, the real response follows */
                connection_reset_parser(conn);
                conn->got_bytes = true;
                return 1;
        }

        for (size_t i = 0; i < resp->n_headers; i++) {
                const char *name = resp->headers[i].name, *value = resp->headers[i].value;

                if (strcaseeq(name, "Content-Length")) {
                        /* digits, possibly repeated as "N, N" (RFC 9110 §8.6) */
                        for (const char *q = value; *q;) {
                                uint64_t v = 0;
                                const char *s;

                                q = skip_ows(q, q + strlen(q));
                                s = q;
                                while (*q >= '0' && *q <= '9') {
                                        if (v > (UINT64_MAX - 9) / 10)
                                                return -EBADMSG;
                                        v = v * 10 + (uint64_t) (*q - '0');
                                        q++;
                                }
                                if (q == s)
                                        return -EBADMSG;
                                q = skip_ows(q, q + strlen(q));
                                if (*q == ',')
                                        q++;
                                else if (*q != '\0')
                                        return -EBADMSG;
                                if (have_length && v != length)
                                        return -EBADMSG;
                                length = v;
                                have_length = true;
                        }
                        if (!have_length)
                                return -EBADMSG;
                } else if (strcaseeq(name, "Transfer-Encoding")) {
                        if (have_te || !strcaseeq(value, "chunked"))
                                return -EBADMSG; /* no other codings are asked for, none accepted */
                        have_te = chunked = true;
                } else if (strcaseeq(name, "Connection")) {
                        if (header_has_token(value, "close"))
                                conn->close_after = true;
                } else if (strcaseeq(name, "Content-Type") && !resp->content_type)
                        resp->content_type = value;
                else if (strcaseeq(name, "Location") && !resp->location)
                        resp->location = value;
                else if (strcaseeq(name, "Retry-After") && !resp->retry_after)
                        resp->retry_after = value;
        }

        if (http10)
                conn->close_after = true;

        if (conn->request->head || resp->status == 204 || resp->status == 304)
                conn->parse = PARSE_DONE;
        else if (chunked) {
                if (have_length)
                        conn->close_after = true; /* both: framing is chunked, but do not trust the peer further */
                conn->parse = PARSE_CHUNK_SIZE;
        } else if (have_length) {
                if (length > c->max_body_size)
                        return -EMSGSIZE;
                conn->remaining = length;
                conn->parse = length > 0 ? PARSE_BODY_LENGTH : PARSE_DONE;
        } else {
                conn->close_after = true;
                conn->parse = PARSE_BODY_EOF;
        }

        /* Make sure the body is never NULL. */
        if (!resp->body) {
                resp->body = calloc(1, 1);
                if (!resp->body)
                        return -ENOMEM;
                conn->body_allocated = 1;
        }
        return 0;
}

/* Finds the end of the next line in the buffer; NULL if it is not complete yet. */
static const char *find_eol(Connection *conn) {
        return memchr(conn->in + conn->in_pos, '\n', conn->in_size - conn->in_pos);
}

/* Consumes buffered input. Returns 1 when the response is complete, 0 when more input is
 * needed, < 0 on error. eof: the server closed its side. */
static int connection_parse(Connection *conn, bool eof) {
        HttpClient *c = conn->client;
        int r;

        for (;;) {
                const char *p = conn->in + conn->in_pos;
                size_t avail = conn->in_size - conn->in_pos;

                switch (conn->parse) {

                case PARSE_HEAD: {
                        const char *e = NULL;

                        /* the head ends with an empty line: "\n\r\n" or "\n\n" */
                        for (const char *q = p; q < p + avail;) {
                                const char *nl = memchr(q, '\n', (size_t) (p + avail - q));
                                if (!nl)
                                        break;
                                if (nl + 1 < p + avail && nl[1] == '\n') {
                                        e = nl + 2;
                                        break;
                                }
                                if (nl + 2 < p + avail && nl[1] == '\r' && nl[2] == '\n') {
                                        e = nl + 3;
                                        break;
                                }
                                q = nl + 1;
                        }
                        if (!e) {
                                if (avail > c->max_header_size)
                                        return -EMSGSIZE;
                                if (eof)
                                        return -ECONNRESET;
                                return 0;
                        }
                        if ((size_t) (e - p) > c->max_header_size)
                                return -EMSGSIZE;

                        r = parse_head(conn, p, e);
                        if (r < 0)
                                return r;
                        conn->in_pos += (size_t) (e - p);
                        break;
                }

                case PARSE_BODY_LENGTH: {
                        size_t n = (size_t) MIN((uint64_t) avail, conn->remaining);

                        if (n == 0)
                                return eof ? -ECONNRESET : 0;
                        r = body_append(conn, p, n);
                        if (r < 0)
                                return r;
                        conn->in_pos += n;
                        conn->remaining -= n;
                        if (conn->remaining == 0)
                                conn->parse = PARSE_DONE;
                        break;
                }

                case PARSE_CHUNK_SIZE: {
                        const char *eol = find_eol(conn), *q;
                        uint64_t size = 0;
                        unsigned digits = 0;

                        if (!eol) {
                                if (avail > HTTP_CLIENT_MAX_CHUNK_LINE)
                                        return -EBADMSG;
                                return eof ? -ECONNRESET : 0;
                        }
                        if ((size_t) (eol - p) > HTTP_CLIENT_MAX_CHUNK_LINE)
                                return -EBADMSG;

                        for (q = p; q < eol && isxdigit((unsigned char) *q); q++) {
                                if (++digits > 15)
                                        return -EBADMSG;
                                size = size * 16 + (uint64_t) (isdigit((unsigned char) *q) ? *q - '0'
                                                                                           : (tolower((unsigned char) *q) - 'a' + 10));
                        }
                        if (digits == 0)
                                return -EBADMSG;
                        q = skip_ows(q, eol);
                        if (q < eol && *q == ';') {
                                /* chunk extensions: ignored, but no controls */
                                const char *le = eol > q && eol[-1] == '\r' ? eol - 1 : eol;
                                if (!is_field_value(q, (size_t) (le - q)))
                                        return -EBADMSG;
                        } else if (!(q == eol || (q + 1 == eol && *q == '\r')))
                                return -EBADMSG;

                        conn->in_pos += (size_t) (eol + 1 - p);
                        if (size == 0)
                                conn->parse = PARSE_TRAILERS;
                        else {
                                if (size > c->max_body_size || conn->response.size > c->max_body_size - size)
                                        return -EMSGSIZE;
                                conn->remaining = size;
                                conn->parse = PARSE_CHUNK_DATA;
                        }
                        break;
                }

                case PARSE_CHUNK_DATA: {
                        size_t n = (size_t) MIN((uint64_t) avail, conn->remaining);

                        if (n == 0)
                                return eof ? -ECONNRESET : 0;
                        r = body_append(conn, p, n);
                        if (r < 0)
                                return r;
                        conn->in_pos += n;
                        conn->remaining -= n;
                        if (conn->remaining == 0)
                                conn->parse = PARSE_CHUNK_END;
                        break;
                }

                case PARSE_CHUNK_END:
                        if (avail >= 1 && p[0] == '\n') {
                                conn->in_pos += 1;
                                conn->parse = PARSE_CHUNK_SIZE;
                        } else if (avail >= 2 && p[0] == '\r' && p[1] == '\n') {
                                conn->in_pos += 2;
                                conn->parse = PARSE_CHUNK_SIZE;
                        } else if (avail >= 2 || (avail == 1 && p[0] != '\r'))
                                return -EBADMSG;
                        else
                                return eof ? -ECONNRESET : 0;
                        break;

                case PARSE_TRAILERS: {
                        const char *eol = find_eol(conn);
                        size_t len;

                        if (!eol) {
                                if (conn->trailer_size + avail > c->max_header_size)
                                        return -EMSGSIZE;
                                return eof ? -ECONNRESET : 0;
                        }
                        len = (size_t) (eol + 1 - p);
                        conn->trailer_size += len;
                        if (conn->trailer_size > c->max_header_size)
                                return -EMSGSIZE;
                        if (memchr(p, '\0', len))
                                return -EBADMSG;
                        conn->in_pos += len;
                        if (len == 1 || (len == 2 && p[0] == '\r'))
                                conn->parse = PARSE_DONE; /* trailers are not kept */
                        break;
                }

                case PARSE_BODY_EOF:
                        if (avail > 0) {
                                r = body_append(conn, p, avail);
                                if (r < 0)
                                        return r;
                                conn->in_pos += avail;
                        }
                        if (!eof)
                                return 0;
                        conn->parse = PARSE_DONE;
                        break;

                case PARSE_DONE:
                        return 1;
                }
        }
}

/* ------------------------------------------------------------------------------------------ */
/* I/O */

static void connection_response_complete(Connection *conn) {
        HttpClient *c = conn->client;
        HttpClientRequest *r;
        bool reuse;

        r = connection_detach(conn);
        conn->n_responses++;
        r->response = conn->response;
        conn->response = (HttpResponse) {};
        conn->headers_allocated = conn->body_allocated = 0;

        reuse = !conn->close_after &&
                conn->out_offset == r->out_size && /* the server answered before all was sent */
                conn->in_pos == conn->in_size;     /* nothing unasked-for after the response */

        if (reuse)
                connection_set_idle(conn);
        else
                connection_free(conn);

        client_schedule_dispatch(c);
        request_complete(r, 0);
}

/* Sends what the socket takes of the request; 0 also when it takes no more for now. */
static int connection_send(Connection *conn) {
        HttpClientRequest *r = conn->request;

        while (conn->out_offset < r->out_size) {
                ssize_t n = send(conn->fd, r->out + conn->out_offset, r->out_size - conn->out_offset,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return 0;
                        if (errno == EINTR)
                                continue;
                        if (errno == EPIPE || errno == ECONNRESET)
                                return -ECONNRESET;
                        return -errno;
                }
                conn->out_offset += (size_t) n;
        }
        return 0;
}

static int connection_do_write(Connection *conn) {
        int r = connection_send(conn);
        return r < 0 ? r : connection_set_events(conn);
}

/* Returns 1 when the response is complete, 0 when more is to come, < 0 on error. */
static int connection_do_read(Connection *conn) {
        HttpClient *c = conn->client;
        bool eof = false;
        ssize_t n;

        if (conn->in_pos == conn->in_size)
                conn->in_pos = conn->in_size = 0;
        else if (conn->in_pos > 0 && conn->in_allocated - conn->in_size < HTTP_CLIENT_READ_CHUNK) {
                memmove(conn->in, conn->in + conn->in_pos, conn->in_size - conn->in_pos);
                conn->in_size -= conn->in_pos;
                conn->in_pos = 0;
        }
        if (conn->in_allocated - conn->in_size < HTTP_CLIENT_READ_CHUNK) {
                size_t a = conn->in_size + HTTP_CLIENT_READ_CHUNK;
                char *b;

                /* only the head (bounded by max_header_size) and short lines are ever buffered */
                if (a > c->max_header_size + 2 * HTTP_CLIENT_READ_CHUNK)
                        return -EMSGSIZE;
                a = MAX(a, conn->in_allocated * 2);
                b = malloc(a);
                if (!b)
                        return -ENOMEM;
                if (conn->in) {
                        memcpy(b, conn->in, conn->in_size);
                        sodium_memzero(conn->in, conn->in_allocated);
                        free(conn->in);
                }
                conn->in = b;
                conn->in_allocated = a;
        }

        n = recv(conn->fd, conn->in + conn->in_size, conn->in_allocated - conn->in_size, MSG_DONTWAIT);
        if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                        return 0;
                if (errno == ECONNRESET || errno == EPIPE)
                        return -ECONNRESET;
                return -errno;
        }
        if (n == 0)
                eof = true;
        else {
                conn->in_size += (size_t) n;
                conn->got_bytes = true;
        }

        return connection_parse(conn, eof);
}

static int connection_connected(Connection *conn) {
        HttpClient *c = conn->client;
        int error = 0, r;
        socklen_t len = sizeof(error);

        if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
                error = errno;
        if (error != 0) {
                r = connection_connect(conn, -error);
                if (r < 0)
                        return r;
                return 0; /* connecting to the next address */
        }

        c->preferred_address = conn->address;
        c->stats.connections_opened++;
        conn->state = CONNECTION_BUSY;
        connection_reset_parser(conn);
        return connection_set_events(conn);
}

static int on_connection_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Connection *conn = userdata;
        int r;

        switch (conn->state) {

        case CONNECTION_IDLE:
                /* the server closed the connection (or sent something nobody asked for) */
                connection_free(conn);
                return 0;

        case CONNECTION_CONNECTING:
                r = connection_connected(conn);
                if (r < 0)
                        connection_fail(conn, r);
                return 0;

        case CONNECTION_BUSY:
                break;
        }

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                r = connection_do_read(conn);
                if (r < 0) {
                        connection_fail(conn, r);
                        return 0;
                }
                if (r > 0) {
                        connection_response_complete(conn);
                        return 0;
                }
        }

        if ((revents & (EPOLLOUT | EPOLLERR)) && conn->out_offset < conn->request->out_size) {
                r = connection_do_write(conn);
                if (r < 0) {
                        connection_fail(conn, r);
                        return 0;
                }
        } else if (revents & EPOLLOUT) {
                /* all sent, still watched for writing: connection_start() could not drop it */
                r = connection_set_events(conn);
                if (r < 0)
                        connection_fail(conn, r);
        }

        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* dispatching */

static Connection *client_find_idle(HttpClient *c) {
        Connection *conn = c->connections, *next;

        for (; conn; conn = next) {
                next = conn->next;
                if (conn->state != CONNECTION_IDLE)
                        continue;
                if (connection_idle_usable(conn))
                        return conn;
                connection_free(conn);
        }
        return NULL;
}

static int on_dispatch(sd_event_source *s, void *userdata) {
        HttpClient *c = userdata;

        while (c->queue_head) {
                HttpClientRequest *req = c->queue_head;
                Connection *conn;
                int r;

                conn = client_find_idle(c);
                if (conn) {
                        queue_remove(c, req);
                        r = connection_start(conn, req);
                        if (r < 0) {
                                connection_fail(conn, r);
                                return 0;
                        }
                        continue;
                }

                if (c->n_connections >= c->max_connections)
                        break; /* wait for a connection to become free */

                queue_remove(c, req);
                r = connection_new(c, req, &conn);
                if (r < 0) {
                        /* nothing could be started: fail this one, continue with the rest later */
                        client_schedule_dispatch(c);
                        request_complete(req, r);
                        return 0;
                }
        }

        return 0;
}

static int on_request_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpClientRequest *req = userdata;
        HttpClient *c = req->client;

        if (req->state == REQUEST_QUEUED)
                queue_remove(c, req);
        else if (req->state == REQUEST_ACTIVE && req->connection) {
                Connection *conn = req->connection;

                connection_detach(conn);
                connection_free(conn);
                client_schedule_dispatch(c);
        }

        request_complete(req, -ETIMEDOUT);
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* public API */

static int parse_base_url(const char *url, char **ret_host, char **ret_port, char **ret_host_header,
                          char **ret_prefix) {
        _cleanup_free_ char *host = NULL, *port = NULL, *host_header = NULL, *prefix = NULL;
        const char *p, *authority_end, *h, *he, *colon = NULL;
        size_t n;

        p = strstr(url, "://");
        if (!p)
                return -EINVAL;
        if ((size_t) (p - url) != 4 || strncasecmp(url, "http", 4) != 0)
                return -EPROTONOSUPPORT; /* https:// included: no TLS in this client */
        p += 3;

        if (strpbrk(p, "?#"))
                return -EINVAL; /* no query or fragment in a base URL */
        authority_end = p + strcspn(p, "/");
        if (memchr(p, '@', (size_t) (authority_end - p)))
                return -EINVAL;

        if (*p == '[') {
                h = p + 1;
                he = memchr(h, ']', (size_t) (authority_end - h));
                if (!he || he == h)
                        return -EINVAL;
                if (he + 1 < authority_end) {
                        if (he[1] != ':')
                                return -EINVAL;
                        colon = he + 1;
                }
        } else {
                h = p;
                colon = memchr(p, ':', (size_t) (authority_end - p));
                he = colon ?: authority_end;
                if (he == h)
                        return -EINVAL;
        }
        for (const char *q = h; q < he; q++)
                if (!(isalnum((unsigned char) *q) || strchr("-._:%", *q)))
                        return -EINVAL;

        host = strndup(h, (size_t) (he - h));
        if (!host)
                return -ENOMEM;

        if (colon) {
                const char *ps = colon + 1;
                unsigned long v = 0;

                n = (size_t) (authority_end - ps);
                if (n == 0 || n > 5 || strspn(ps, "0123456789") < n)
                        return -EINVAL;
                for (size_t i = 0; i < n; i++)
                        v = v * 10 + (unsigned long) (ps[i] - '0');
                if (v == 0 || v > 65535)
                        return -EINVAL;
                if (asprintf(&port, "%lu", v) < 0)
                        return -ENOMEM;
        } else {
                port = strdup("80");
                if (!port)
                        return -ENOMEM;
        }

        host_header = strndup(p, (size_t) (authority_end - p));
        if (!host_header)
                return -ENOMEM;

        /* path prefix, trailing slashes dropped */
        n = strlen(authority_end);
        while (n > 0 && authority_end[n - 1] == '/')
                n--;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) authority_end[i] <= 0x20 || (unsigned char) authority_end[i] >= 0x7f)
                        return -EINVAL;
        prefix = strndup(authority_end, n);
        if (!prefix)
                return -ENOMEM;

        *ret_host = TAKE_PTR(host);
        *ret_port = TAKE_PTR(port);
        *ret_host_header = TAKE_PTR(host_header);
        *ret_prefix = TAKE_PTR(prefix);
        return 0;
}

static int client_resolve(HttpClient *c, const char *host, const char *port) {
        struct addrinfo hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_protocol = IPPROTO_TCP,
                .ai_flags = AI_NUMERICSERV,
        };
        struct addrinfo *res = NULL;
        int r;

        /* Numeric first: never blocks. No AI_ADDRCONFIG: it hides loopback in a namespace with only lo. */
        hints.ai_flags |= AI_NUMERICHOST;
        r = getaddrinfo(host, port, &hints, &res);
        if (r == EAI_NONAME) {
                hints.ai_flags &= ~AI_NUMERICHOST;
                r = getaddrinfo(host, port, &hints, &res);
        }
        switch (r) {
        case 0:
                break;
        case EAI_MEMORY:
                return -ENOMEM;
        case EAI_SYSTEM:
                return negative_errno();
        default:
                return -EADDRNOTAVAIL;
        }

        for (struct addrinfo *a = res; a && c->n_addresses < HTTP_CLIENT_MAX_ADDRESSES; a = a->ai_next) {
                if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) || a->ai_addrlen > sizeof(struct sockaddr_storage))
                        continue;
                memcpy(&c->addresses[c->n_addresses].sa, a->ai_addr, a->ai_addrlen);
                c->addresses[c->n_addresses].len = a->ai_addrlen;
                c->n_addresses++;
        }
        freeaddrinfo(res);

        return c->n_addresses > 0 ? 0 : -EADDRNOTAVAIL;
}

int http_client_new(HttpClient **ret, sd_event *event, const char *base_url, const HttpClientSettings *settings) {
        _cleanup_(http_client_freep) HttpClient *c = NULL;
        _cleanup_free_ char *host = NULL, *port = NULL;
        const HttpClientSettings defaults = {};
        int r;

        assert_return(ret, -EINVAL);
        assert_return(event, -EINVAL);
        assert_return(base_url, -EINVAL);

        if (!settings)
                settings = &defaults;

        c = calloc(1, sizeof(HttpClient));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);

        r = parse_base_url(base_url, &host, &port, &c->host_header, &c->prefix);
        if (r < 0)
                return r;

        c->max_connections = settings->max_connections ?: HTTP_CLIENT_DEFAULT_MAX_CONNECTIONS;
        c->max_queued = settings->max_queued ?: HTTP_CLIENT_DEFAULT_MAX_QUEUED;
        c->max_body_size = settings->max_body_size ?: HTTP_CLIENT_DEFAULT_MAX_BODY_SIZE;
        c->max_header_size = settings->max_header_size ?: HTTP_CLIENT_DEFAULT_MAX_HEADER_SIZE;
        c->default_timeout_usec = settings->default_timeout_usec ?: HTTP_CLIENT_DEFAULT_TIMEOUT_USEC;
        c->idle_timeout_usec = settings->idle_timeout_usec ?: HTTP_CLIENT_DEFAULT_IDLE_TIMEOUT_USEC;
        if (settings->user_agent) {
                if (!is_field_value(settings->user_agent, strlen(settings->user_agent)))
                        return -EINVAL;
                c->user_agent = strdup(settings->user_agent);
        } else
                c->user_agent = strdup("dtask/" PACKAGE_VERSION);
        if (!c->user_agent)
                return -ENOMEM;

        r = client_resolve(c, host, port);
        if (r < 0)
                return r;

        r = sd_event_add_defer(event, &c->dispatch, on_dispatch, c);
        if (r < 0)
                return r;
        /* A queued request goes out before the other work that is pending in the same loop
         * iteration: the caller usually waits for its answer (a worker's next claim, for one). */
        r = sd_event_source_set_priority(c->dispatch, SD_EVENT_PRIORITY_IMPORTANT);
        if (r < 0)
                return r;
        r = sd_event_source_set_enabled(c->dispatch, SD_EVENT_OFF);
        if (r < 0)
                return r;

        log_debug("http-client: %s resolved to %zu address(es)", c->host_header, c->n_addresses);
        *ret = TAKE_PTR(c);
        return 0;
}

HttpClient *http_client_free(HttpClient *c) {
        if (!c || c->freeing)
                return NULL;

        c->freeing = true;
        c->dispatch = sd_event_source_disable_unref(c->dispatch);

        /* callbacks run from here may cancel other requests: take one at a time */
        for (;;) {
                Connection *conn = c->connections;
                HttpClientRequest *req;

                if (!conn)
                        break;
                req = connection_detach(conn);
                connection_free(conn);
                if (req)
                        request_complete(req, -ECANCELED);
        }
        while (c->queue_head) {
                HttpClientRequest *req = c->queue_head;

                queue_remove(c, req);
                request_complete(req, -ECANCELED);
        }

        sd_event_unref(c->event);
        free(c->host_header);
        free(c->prefix);
        free(c->user_agent);
        free(c);
        return NULL;
}

static bool method_is_idempotent(const char *m) {
        return streq(m, "GET") || streq(m, "HEAD") || streq(m, "PUT") || streq(m, "DELETE") ||
               streq(m, "OPTIONS") || streq(m, "TRACE");
}

static bool method_has_body(const char *m) {
        return streq(m, "POST") || streq(m, "PUT") || streq(m, "PATCH");
}

typedef struct Buffer {
        char *p;
        size_t size, allocated;
} Buffer;

static void buffer_put(Buffer *b, const void *data, size_t n) {
        /* allocated was computed up front as an upper bound */
        if (b->size + n > b->allocated)
                abort();
        memcpy(b->p + b->size, data, n);
        b->size += n;
}

static void buffer_puts(Buffer *b, const char *s) {
        buffer_put(b, s, strlen(s));
}

static int validate_header_line(const char *h) {
        const char *colon = strchr(h, ':');
        static const char *const reserved[] = { "Host", "Content-Length", "Transfer-Encoding", "Connection" };
        size_t n;

        if (!colon || !is_token(h, (size_t) (colon - h)))
                return -EINVAL;
        n = (size_t) (colon - h);
        for (size_t i = 0; i < ELEMENTSOF(reserved); i++)
                if (strlen(reserved[i]) == n && strncasecmp(h, reserved[i], n) == 0)
                        return -EINVAL;
        if (!is_field_value(colon + 1, strlen(colon + 1)))
                return -EINVAL;
        return 0;
}

int http_client_request(HttpClient *c, const char *method, const char *path_and_query,
                        const char *const *headers, const char *content_type, const void *body, size_t size,
                        uint64_t timeout_usec, unsigned flags, HttpClientCallback callback, void *userdata,
                        HttpClientRequest **ret_req) {
        _cleanup_free_ HttpClientRequest *req = NULL;
        Connection *conn;
        char length[48] = "";
        Buffer b = {};
        size_t path_len;
        uint64_t now, deadline;
        int r;

        assert_return(c, -EINVAL);
        assert_return(method && is_token(method, strlen(method)) && strlen(method) <= 32, -EINVAL);
        assert_return(path_and_query && path_and_query[0] == '/', -EINVAL);
        assert_return(body || size == 0, -EINVAL);
        assert_return(callback, -EINVAL);

        if (c->freeing)
                return -ESHUTDOWN;

        path_len = strlen(path_and_query);
        if (path_len > HTTP_CLIENT_MAX_PATH)
                return -EINVAL;
        for (size_t i = 0; i < path_len; i++)
                if ((unsigned char) path_and_query[i] <= 0x20 || (unsigned char) path_and_query[i] >= 0x7f)
                        return -EINVAL;
        if (content_type && (isempty(content_type) || !is_field_value(content_type, strlen(content_type))))
                return -EINVAL;

        b.allocated = strlen(method) + strlen(c->prefix) + path_len + strlen(c->host_header) +
                      strlen(c->user_agent) + size + 256;
        for (const char *const *h = headers; h && *h; h++) {
                r = validate_header_line(*h);
                if (r < 0)
                        return r;
                b.allocated += strlen(*h) + 2;
        }
        if (content_type)
                b.allocated += strlen(content_type) + 16;

        if (c->n_queued >= c->max_queued)
                return -EAGAIN;

        req = calloc(1, sizeof(HttpClientRequest));
        if (!req)
                return -ENOMEM;
        b.p = malloc(b.allocated);
        if (!b.p)
                return -ENOMEM;

        buffer_puts(&b, method);
        buffer_puts(&b, " ");
        buffer_puts(&b, c->prefix);
        buffer_puts(&b, path_and_query);
        buffer_puts(&b, " HTTP/1.1\r\nHost: ");
        buffer_puts(&b, c->host_header);
        buffer_puts(&b, "\r\nUser-Agent: ");
        buffer_puts(&b, c->user_agent);
        buffer_puts(&b, "\r\n");
        for (const char *const *h = headers; h && *h; h++) {
                buffer_puts(&b, *h);
                buffer_puts(&b, "\r\n");
        }
        if (content_type) {
                buffer_puts(&b, "Content-Type: ");
                buffer_puts(&b, content_type);
                buffer_puts(&b, "\r\n");
        }
        if (size > 0 || method_has_body(method)) {
                (void) snprintf(length, sizeof(length), "Content-Length: %zu\r\n", size);
                buffer_puts(&b, length);
        }
        buffer_puts(&b, "\r\n");
        if (size > 0)
                buffer_put(&b, body, size);

        req->out = b.p;
        req->out_size = b.size;
        req->client = c;
        req->callback = callback;
        req->userdata = userdata;
        req->idempotent = method_is_idempotent(method) || (flags & HTTP_CLIENT_IDEMPOTENT);
        req->head = streq(method, "HEAD");

        now = now_monotonic();
        timeout_usec = timeout_usec ?: c->default_timeout_usec;
        deadline = timeout_usec >= UINT64_MAX - now ? UINT64_MAX - 1 : now + timeout_usec;
        r = sd_event_add_time(c->event, &req->timer, CLOCK_MONOTONIC, deadline, HTTP_CLIENT_TIMER_ACCURACY_USEC,
                              on_request_timeout, req);
        if (r < 0) {
                sodium_memzero(req->out, req->out_size);
                free(TAKE_PTR(req->out));
                return r;
        }

        /* Nothing queued and a connection idle: the request goes out now, not after a round of
         * the event loop and whatever else the loop has pending (a worker's claim, sent the
         * moment its program exits, would wait for the run's cleanup). */
        conn = c->queue_head || c->freeing ? NULL : client_find_idle(c);
        if (conn && connection_start(conn, req) < 0) {
                (void) connection_detach(conn);
                connection_free(conn);
                conn = NULL;
        }
        if (!conn) {
                queue_append(c, req);
                client_schedule_dispatch(c);
        }

        if (ret_req)
                *ret_req = req;
        TAKE_PTR(req);
        return 0;
}

void http_client_request_cancel(HttpClientRequest *req) {
        HttpClient *c;

        if (!req || req->state == REQUEST_COMPLETING)
                return;
        c = req->client;

        if (req->state == REQUEST_QUEUED)
                queue_remove(c, req);
        else if (req->connection) {
                Connection *conn = req->connection;

                /* the response, if it comes, could no longer be told apart from the next one */
                connection_detach(conn);
                connection_free(conn);
                client_schedule_dispatch(c);
        }

        request_free(req);
}

const HttpClientStats *http_client_get_stats(HttpClient *c) {
        return c ? &c->stats : NULL;
}

unsigned http_client_n_connections(HttpClient *c) {
        return c ? c->n_connections : 0;
}

unsigned http_client_n_queued(HttpClient *c) {
        return c ? c->n_queued : 0;
}
