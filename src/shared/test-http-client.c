/* SPDX-License-Identifier: MIT */
/* Tests of the asynchronous HTTP client against a raw-socket HTTP server that runs on the
 * same sd-event loop and can misbehave on purpose (chunked framing, early close, silence,
 * malformed heads, oversized bodies, closing reused connections). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "http-client.h"

/* ------------------------------------------------------------------------------------------ */
/* the fake server */

typedef struct FakeServer FakeServer;
typedef struct FakeConn FakeConn;

struct FakeConn {
        FakeServer *server;
        FakeConn *prev, *next;
        int fd;
        sd_event_source *io;
        sd_event_source *timer;
        char *in;
        size_t in_size, in_allocated;
        char *out;
        size_t out_size, out_pos;
        unsigned n_requests;
        bool close_after;  /* close once the output is written */
        bool dribble;      /* write one byte per millisecond */
        bool busy;         /* a request is being answered */
        bool silent;       /* never answers again */
        char *delayed;     /* response to send when the timer fires */
        bool delayed_close;
};

struct FakeServer {
        sd_event *event;
        int fd;
        sd_event_source *source;
        uint16_t port;
        unsigned n_accepted;
        unsigned n_requests;
        unsigned n_open, max_open;
        FakeConn *conns;
};

static uint64_t now_mono(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static void fake_conn_close(FakeConn *c) {
        FakeServer *s = c->server;

        if (c->prev)
                c->prev->next = c->next;
        else
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        s->n_open--;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        safe_close(c->fd);
        free(c->in);
        free(c->out);
        free(c->delayed);
        free(c);
}

static void fake_conn_update_events(FakeConn *c) {
        uint32_t events = EPOLLIN;

        if (c->out && c->out_pos < c->out_size && !(c->dribble && c->timer && sd_event_source_get_enabled(c->timer, NULL) > 0))
                events |= EPOLLOUT;
        assert_int_equal(sd_event_source_set_io_events(c->io, events), 0);
}

static void fake_conn_respond(FakeConn *c, const char *data, size_t n, bool close_after) {
        free(c->out);
        c->out = malloc(n + 1);
        assert_non_null(c->out);
        memcpy(c->out, data, n);
        c->out_size = n;
        c->out_pos = 0;
        c->close_after = close_after;
        fake_conn_update_events(c);
}

static void fake_conn_respond_str(FakeConn *c, const char *data, bool close_after) {
        fake_conn_respond(c, data, strlen(data), close_after);
}

static int on_fake_timer(sd_event_source *t, uint64_t usec, void *userdata) {
        FakeConn *c = userdata;

        assert_int_equal(sd_event_source_set_enabled(t, SD_EVENT_OFF), 0);
        if (c->delayed) {
                _cleanup_free_ char *d = TAKE_PTR(c->delayed);
                fake_conn_respond_str(c, d, c->delayed_close);
                return 0;
        }
        fake_conn_update_events(c); /* dribble: next byte */
        return 0;
}

static void fake_conn_arm_timer(FakeConn *c, uint64_t delay) {
        if (!c->timer)
                assert_int_equal(sd_event_add_time_relative(c->server->event, &c->timer, CLOCK_MONOTONIC, delay, 1,
                                                            on_fake_timer, c),
                                 0);
        else {
                assert_int_equal(sd_event_source_set_time_relative(c->timer, delay), 0);
                assert_int_equal(sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT), 0);
        }
}

static void fake_conn_respond_later(FakeConn *c, uint64_t delay, const char *data, bool close_after) {
        free(c->delayed);
        c->delayed = strdup(data);
        c->delayed_close = close_after;
        fake_conn_arm_timer(c, delay);
}

static char *make_body(size_t n) {
        char *b = malloc(n + 1);
        assert_non_null(b);
        for (size_t i = 0; i < n; i++)
                b[i] = (char) ('a' + (i * 7) % 26);
        b[n] = '\0';
        return b;
}

static unsigned query_uint(const char *path, const char *name, unsigned def) {
        const char *q = strchr(path, '?');
        size_t n = strlen(name);

        for (; q; q = strchr(q + 1, '&'))
                if (strncmp(q + 1, name, n) == 0 && q[1 + n] == '=')
                        return (unsigned) strtoul(q + 2 + n, NULL, 10);
        return def;
}

/* One complete request: decides how to answer it. */
static void fake_handle(FakeConn *c, const char *method, const char *path, const char *raw, size_t raw_size) {
        char buf[512];

        c->n_requests++;
        c->server->n_requests++;
        c->busy = true;
        if (strncmp(path, "/base/", 6) == 0)
                path += 5; /* the prefix of a base URL with a path */

#define IS(p) (strcmp(path, p) == 0 || (strncmp(path, p, strlen(p)) == 0 && path[strlen(p)] == '?'))

        if (IS("/hello")) {
                if (streq(method, "HEAD"))
                        fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n", false);
                else
                        fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", false);
        } else if (IS("/echo")) {
                _cleanup_free_ char *r = NULL;
                int n = asprintf(&r, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n", raw_size);
                assert_true(n > 0);
                r = realloc(r, (size_t) n + raw_size);
                memcpy(r + n, raw, raw_size);
                fake_conn_respond(c, r, (size_t) n + raw_size, false);
        } else if (IS("/headers")) {
                fake_conn_respond_str(c,
                                      "HTTP/1.1 201 Created\r\n"
                                      "content-type:   application/problem+json; charset=utf-8  \r\n"
                                      "Location: /api/things/1\r\n"
                                      "Retry-After: 7\r\n"
                                      "X-Multi: a\r\n"
                                      "X-Multi: b\r\n"
                                      "X-Empty:\r\n"
                                      "Content-Length: 2\r\n"
                                      "\r\n{}",
                                      false);
        } else if (IS("/chunked")) {
                c->dribble = query_uint(path, "dribble", 0) > 0;
                fake_conn_respond_str(c,
                                      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      "5\r\nhello\r\n"
                                      "7;name=value\r\n, world\r\n"
                                      "A\r\n0123456789\r\n"
                                      "0\r\nX-Trailer: t\r\n\r\n",
                                      false);
        } else if (IS("/continue"))
                fake_conn_respond_str(c,
                                      "HTTP/1.1 100 Continue\r\n\r\n"
                                      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                      false);
        else if (IS("/no-content"))
                fake_conn_respond_str(c, "HTTP/1.1 204 No Content\r\n\r\n", false);
        else if (IS("/close"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye", true);
        else if (IS("/close-idle"))
                /* keep-alive by its headers, but the server closes the connection right after */
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nidle", true);
        else if (IS("/http10"))
                fake_conn_respond_str(c, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
        else if (IS("/eof"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", true);
        else if (IS("/midclose"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", true);
        else if (IS("/midclose-chunked"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", true);
        else if (IS("/head-close"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Le", true);
        else if (IS("/never"))
                c->silent = true;
        else if (IS("/slow"))
                fake_conn_respond_later(c, query_uint(path, "ms", 100) * USEC_PER_MSEC,
                                        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow", false);
        else if (IS("/malformed-status"))
                fake_conn_respond_str(c, "HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", false);
        else if (IS("/garbage"))
                fake_conn_respond_str(c, "hello world\r\n\r\n", false);
        else if (IS("/bad-header"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nThis is no header\r\nContent-Length: 0\r\n\r\n", false);
        else if (IS("/folded-header"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nX-A: a\r\n  folded\r\nContent-Length: 0\r\n\r\n", false);
        else if (IS("/bad-length"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n", false);
        else if (IS("/conflicting-length"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", false);
        else if (IS("/bad-chunk"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", false);
        else if (IS("/bad-chunk-end"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", false);
        else if (IS("/gzip"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", false);
        else if (IS("/big") || IS("/big-chunked") || IS("/big-eof")) {
                size_t n = query_uint(path, "n", 2048);
                _cleanup_free_ char *body = make_body(n), *r = NULL;
                int k;

                if (IS("/big"))
                        k = asprintf(&r, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", n, body);
                else if (IS("/big-eof"))
                        k = asprintf(&r, "HTTP/1.1 200 OK\r\n\r\n%s", body);
                else {
                        /* chunks of 1000 bytes */
                        size_t size = 0, allocated = n * 2 + 1024;
                        r = malloc(allocated);
                        size += (size_t) sprintf(r, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                        for (size_t i = 0; i < n; i += 1000) {
                                size_t m = MIN((size_t) 1000, n - i);
                                size += (size_t) sprintf(r + size, "%zx\r\n", m);
                                memcpy(r + size, body + i, m);
                                size += m;
                                size += (size_t) sprintf(r + size, "\r\n");
                        }
                        size += (size_t) sprintf(r + size, "0\r\n\r\n");
                        k = (int) size;
                }
                assert_true(k > 0);
                fake_conn_respond(c, r, (size_t) k, IS("/big-eof"));
        } else if (IS("/huge-length"))
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", false);
        else if (IS("/huge-head")) {
                size_t n = 100 * 1024;
                _cleanup_free_ char *r = malloc(n + 64);
                size_t k = (size_t) sprintf(r, "HTTP/1.1 200 OK\r\nX-Big: ");
                memset(r + k, 'x', n);
                k += n;
                k += (size_t) sprintf(r + k, "\r\n\r\n");
                fake_conn_respond(c, r, k, false);
        } else if (IS("/status")) {
                unsigned st = query_uint(path, "code", 503);
                snprintf(buf, sizeof(buf), "HTTP/1.1 %u Whatever\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", st);
                fake_conn_respond_str(c, buf, false);
        } else if (IS("/drop-second")) {
                /* answers the first request of a connection; on a reused connection it reads the
                 * request and closes without a word, like a server whose idle timer fired */
                if (c->n_requests >= 2) {
                        fake_conn_close(c);
                        return;
                }
                fake_conn_respond_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", false);
        } else
                fake_conn_respond_str(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false);
#undef IS
}

/* Parses complete requests out of the input buffer (one at a time). */
static void fake_conn_process(FakeConn *c) {
        while (!c->busy && !c->silent) {
                char *e, *cl, method[16], path[1024];
                size_t head, length = 0, total;

                if (c->in_size == 0)
                        return;
                e = memmem(c->in, c->in_size, "\r\n\r\n", 4);
                if (!e)
                        return;
                head = (size_t) (e - c->in) + 4;
                *e = '\0';
                cl = strcasestr(c->in, "\r\nContent-Length:");
                if (cl)
                        length = strtoul(cl + 17, NULL, 10);
                *e = '\r';
                total = head + length;
                if (c->in_size < total)
                        return;

                assert_int_equal(sscanf(c->in, "%15s %1023s HTTP/1.1\r\n", method, path), 2);

                {
                        _cleanup_free_ char *raw = malloc(total);
                        memcpy(raw, c->in, total);
                        memmove(c->in, c->in + total, c->in_size - total);
                        c->in_size -= total;
                        fake_handle(c, method, path, raw, total);
                        /* fake_handle may have closed c */
                        return;
                }
        }
}

static int on_fake_conn_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        FakeConn *c = userdata;

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t n;

                if (c->in_allocated - c->in_size < 65536) {
                        c->in_allocated = c->in_allocated * 2 + 65536;
                        c->in = realloc(c->in, c->in_allocated);
                        assert_non_null(c->in);
                }
                n = recv(fd, c->in + c->in_size, c->in_allocated - c->in_size, MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN)) {
                        fake_conn_close(c);
                        return 0;
                }
                if (n > 0) {
                        c->in_size += (size_t) n;
                        fake_conn_process(c);
                        return 0; /* c may be gone */
                }
        }

        if ((revents & EPOLLOUT) && c->out && c->out_pos < c->out_size) {
                size_t want = c->dribble ? 1 : c->out_size - c->out_pos;
                ssize_t n = send(fd, c->out + c->out_pos, want, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        if (errno != EAGAIN)
                                fake_conn_close(c);
                        return 0;
                }
                c->out_pos += (size_t) n;
                if (c->out_pos == c->out_size) {
                        c->out = mfree(c->out);
                        c->out_size = c->out_pos = 0;
                        c->dribble = false;
                        if (c->close_after) {
                                fake_conn_close(c);
                                return 0;
                        }
                        c->busy = false;
                        fake_conn_update_events(c);
                        fake_conn_process(c);
                        return 0;
                }
                if (c->dribble) {
                        fake_conn_arm_timer(c, USEC_PER_MSEC);
                        assert_int_equal(sd_event_source_set_io_events(c->io, EPOLLIN), 0);
                }
        }
        return 0;
}

static int on_fake_accept(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        FakeServer *s = userdata;
        FakeConn *c;
        int cfd;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
                return 0;

        c = calloc(1, sizeof(FakeConn));
        assert_non_null(c);
        c->server = s;
        c->fd = cfd;
        assert_int_equal(sd_event_add_io(s->event, &c->io, cfd, EPOLLIN, on_fake_conn_io, c), 0);
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        s->n_accepted++;
        s->n_open++;
        s->max_open = MAX(s->max_open, s->n_open);
        return 0;
}

static FakeServer *fake_server_new(sd_event *e) {
        FakeServer *s = calloc(1, sizeof(FakeServer));
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);

        assert_non_null(s);
        s->event = e;
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(s->fd >= 0);
        assert_int_equal(bind(s->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(s->fd, 128), 0);
        assert_int_equal(getsockname(s->fd, (struct sockaddr *) &sa, &len), 0);
        s->port = ntohs(sa.sin_port);
        assert_int_equal(sd_event_add_io(e, &s->source, s->fd, EPOLLIN, on_fake_accept, s), 0);
        return s;
}

static FakeServer *fake_server_new6(sd_event *e) {
        FakeServer *s = calloc(1, sizeof(FakeServer));
        struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
        socklen_t len = sizeof(sa);

        assert_non_null(s);
        s->event = e;
        s->fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(s->fd >= 0);
        if (bind(s->fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                safe_close(s->fd);
                free(s);
                return NULL; /* no IPv6 here */
        }
        assert_int_equal(listen(s->fd, 16), 0);
        assert_int_equal(getsockname(s->fd, (struct sockaddr *) &sa, &len), 0);
        s->port = ntohs(sa.sin6_port);
        assert_int_equal(sd_event_add_io(e, &s->source, s->fd, EPOLLIN, on_fake_accept, s), 0);
        return s;
}

static void fake_server_free(FakeServer *s) {
        while (s->conns)
                fake_conn_close(s->conns);
        sd_event_source_disable_unref(s->source);
        safe_close(s->fd);
        free(s);
}

/* ------------------------------------------------------------------------------------------ */
/* fixtures and helpers */

typedef struct Result {
        unsigned n_called;
        int error;
        unsigned status;
        char *body;
        size_t size;
        char *content_type;
        char *location;
        char *retry_after;
        char *multi;
        char *empty;
        bool is_problem;
        uint64_t at;
        /* optional actions from within the callback */
        HttpClient **free_client;
        HttpClientRequest **cancel;
} Result;

static void result_done(Result *r) {
        free(r->body);
        free(r->content_type);
        free(r->location);
        free(r->retry_after);
        free(r->multi);
        free(r->empty);
        *r = (Result) {};
}

static char *strdup_or_null(const char *s) {
        return s ? strdup(s) : NULL;
}

static void on_result(HttpClient *c, int error, const HttpResponse *resp, void *userdata) {
        Result *r = userdata;

        r->n_called++;
        r->error = error;
        r->at = now_mono();
        if (error >= 0) {
                assert_non_null(resp);
                assert_non_null(resp->body);
                assert_int_equal(resp->body[resp->size], '\0');
                r->status = resp->status;
                r->body = malloc(resp->size + 1);
                memcpy(r->body, resp->body, resp->size + 1);
                r->size = resp->size;
                r->content_type = strdup_or_null(resp->content_type);
                r->location = strdup_or_null(resp->location);
                r->retry_after = strdup_or_null(resp->retry_after);
                r->multi = strdup_or_null(http_response_header(resp, "x-multi"));
                r->empty = strdup_or_null(http_response_header(resp, "X-Empty"));
                r->is_problem = http_response_is_content_type(resp, "application/problem+json");
        } else
                assert_null(resp);

        if (r->cancel && *r->cancel) {
                http_client_request_cancel(*r->cancel);
                *r->cancel = NULL;
        }
        if (r->free_client)
                *r->free_client = http_client_free(*r->free_client);
}

typedef struct Fixture {
        sd_event *event;
        FakeServer *server;
        HttpClient *client;
        char url[64];
} Fixture;

static void make_client(Fixture *f, const HttpClientSettings *settings) {
        f->client = http_client_free(f->client);
        assert_int_equal(http_client_new(&f->client, f->event, f->url, settings), 0);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        assert_int_equal(sd_event_new(&f->event), 0);
        f->server = fake_server_new(f->event);
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u", f->server->port);
        make_client(f, NULL);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        http_client_free(f->client);
        fake_server_free(f->server);
        sd_event_unref(f->event);
        free(f);
        return 0;
}

/* Runs the loop until *n reaches want, failing the test after timeout. */
static void run_until(sd_event *e, const unsigned *n, unsigned want, uint64_t timeout) {
        uint64_t end = now_mono() + timeout;

        while (*n < want) {
                assert_true(now_mono() < end);
                assert_true(sd_event_run(e, 10 * USEC_PER_MSEC) >= 0);
        }
}

static void run_for(sd_event *e, uint64_t duration) {
        uint64_t end = now_mono() + duration;

        while (now_mono() < end)
                assert_true(sd_event_run(e, 5 * USEC_PER_MSEC) >= 0);
}

static void get(Fixture *f, const char *path, Result *r) {
        assert_int_equal(http_client_request(f->client, "GET", path, NULL, NULL, NULL, 0, 5 * USEC_PER_SEC, 0,
                                             on_result, r, NULL),
                         0);
        assert_int_equal(r->n_called, 0); /* never synchronous */
        run_until(f->event, &r->n_called, 1, 10 * USEC_PER_SEC);
        run_for(f->event, USEC_PER_MSEC); /* a second callback would show up here */
        assert_int_equal(r->n_called, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* tests */

static void test_url_parsing(void **state) {
        Fixture *f = *state;
        HttpClient *c = NULL;

        assert_int_equal(http_client_new(&c, f->event, "https://127.0.0.1:5215", NULL), -EPROTONOSUPPORT);
        assert_int_equal(http_client_new(&c, f->event, "HTTPS://127.0.0.1", NULL), -EPROTONOSUPPORT);
        assert_int_equal(http_client_new(&c, f->event, "ftp://127.0.0.1", NULL), -EPROTONOSUPPORT);
        assert_int_equal(http_client_new(&c, f->event, "127.0.0.1:80", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://:80", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://127.0.0.1:", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://127.0.0.1:0", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://127.0.0.1:65536", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://127.0.0.1:80x", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://user:pw@127.0.0.1", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://127.0.0.1/?q=1", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://127.0.0.1/#x", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://[::1", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://a b", NULL), -EINVAL);
        assert_int_equal(http_client_new(&c, f->event, "http://no-such-host.invalid", NULL), -EADDRNOTAVAIL);
        assert_null(c);

        assert_int_equal(http_client_new(&c, f->event, "http://127.0.0.1", NULL), 0);
        c = http_client_free(c);
        assert_int_equal(http_client_new(&c, f->event, "http://[::1]:8080/", NULL), 0);
        c = http_client_free(c);
        assert_int_equal(http_client_new(&c, f->event, "http://localhost:8080/prefix//", NULL), 0);
        c = http_client_free(c);
}

static void test_request_serialization(void **state) {
        Fixture *f = *state;
        const char *headers[] = { "Authorization: Bearer abc.def", "X-ApiKey:ak_x", NULL };
        Result r = {};
        char url[96];

        /* a base URL with a path prefix: it is put before the request path */
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/base/", f->server->port);
        f->client = http_client_free(f->client);
        assert_int_equal(http_client_new(&f->client, f->event, url, NULL), 0);

        assert_int_equal(http_client_request(f->client, "POST", "/echo?x=1", headers, "application/json",
                                             "{\"a\":1}", 7, 0, 0, on_result, &r, NULL),
                         0);
        run_until(f->event, &r.n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        {
                char expect[512];
                snprintf(expect, sizeof(expect),
                         "POST /base/echo?x=1 HTTP/1.1\r\n"
                         "Host: 127.0.0.1:%u\r\n"
                         "User-Agent: dtask/" PACKAGE_VERSION "\r\n"
                         "Authorization: Bearer abc.def\r\n"
                         "X-ApiKey:ak_x\r\n"
                         "Content-Type: application/json\r\n"
                         "Content-Length: 7\r\n"
                         "\r\n"
                         "{\"a\":1}",
                         f->server->port);
                assert_string_equal(r.body, expect);
        }
        result_done(&r);

        /* POST without a body still says Content-Length: 0; GET says nothing */
        assert_int_equal(http_client_request(f->client, "POST", "/echo", NULL, NULL, NULL, 0, 0, 0, on_result, &r, NULL), 0);
        run_until(f->event, &r.n_called, 1, 5 * USEC_PER_SEC);
        assert_non_null(strstr(r.body, "\r\nContent-Length: 0\r\n"));
        result_done(&r);
        get(f, "/echo", &r);
        assert_null(strstr(r.body, "Content-Length"));
        assert_null(strstr(r.body, "Content-Type"));
        assert_true(strncmp(r.body, "GET /base/echo HTTP/1.1\r\n", 25) == 0);
        result_done(&r);
}

static void test_invalid_arguments(void **state) {
        Fixture *f = *state;
        Result r = {};
        const char *crlf[] = { "X-A: a\r\nX-Injected: b", NULL };
        const char *host[] = { "host: evil", NULL };
        const char *cl[] = { "Content-Length: 5", NULL };
        const char *noname[] = { ": x", NULL };
        const char *nocolon[] = { "X-A", NULL };

        assert_int_equal(http_client_request(f->client, "GET", "/a b", NULL, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "/a\r\n", NULL, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "relative", NULL, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "G ET", "/", NULL, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "/", crlf, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "/", host, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "/", cl, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "/", noname, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "/", nocolon, NULL, NULL, 0, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "POST", "/", NULL, "text/plain\r\nX: y", "a", 1, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "POST", "/", NULL, NULL, NULL, 5, 0, 0, on_result, &r, NULL), -EINVAL);
        assert_int_equal(http_client_request(f->client, "GET", "/", NULL, NULL, NULL, 0, 0, 0, NULL, &r, NULL), -EINVAL);
        run_for(f->event, 20 * USEC_PER_MSEC);
        assert_int_equal(r.n_called, 0);
        assert_int_equal(f->server->n_requests, 0);
}

static void test_simple_and_headers(void **state) {
        Fixture *f = *state;
        Result r = {};

        get(f, "/hello", &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.size, 5);
        assert_string_equal(r.body, "hello");
        assert_string_equal(r.content_type, "text/plain");
        result_done(&r);

        get(f, "/headers", &r);
        assert_int_equal(r.status, 201);
        assert_string_equal(r.body, "{}");
        assert_string_equal(r.content_type, "application/problem+json; charset=utf-8");
        assert_true(r.is_problem);
        assert_string_equal(r.location, "/api/things/1");
        assert_string_equal(r.retry_after, "7");
        assert_string_equal(r.multi, "a"); /* the first of several, case-insensitive lookup */
        assert_string_equal(r.empty, "");
        result_done(&r);

        get(f, "/status?code=503", &r);
        assert_int_equal(r.error, 0); /* a 503 is a response, not an error */
        assert_int_equal(r.status, 503);
        assert_int_equal(r.size, 0);
        assert_string_equal(r.body, "");
        assert_string_equal(r.retry_after, "7");
        result_done(&r);

        get(f, "/continue", &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "ok");
        result_done(&r);

        get(f, "/no-content", &r);
        assert_int_equal(r.status, 204);
        assert_int_equal(r.size, 0);
        result_done(&r);

        /* HEAD: Content-Length but no body follows; the connection stays usable */
        assert_int_equal(http_client_request(f->client, "HEAD", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &r, NULL), 0);
        run_until(f->event, &r.n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.size, 0);
        result_done(&r);
        get(f, "/hello", &r);
        assert_string_equal(r.body, "hello");
        result_done(&r);

        /* everything above went over one keep-alive connection */
        assert_int_equal(f->server->n_accepted, 1);
        assert_int_equal(http_client_get_stats(f->client)->connections_opened, 1);
}

static void test_chunked(void **state) {
        Fixture *f = *state;
        Result r = {};

        get(f, "/chunked", &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "hello, world0123456789");
        assert_int_equal(r.size, 22);
        result_done(&r);

        /* the same, one byte per read: the parser must resume at every byte boundary */
        get(f, "/chunked?dribble=1", &r);
        assert_int_equal(r.error, 0);
        assert_string_equal(r.body, "hello, world0123456789");
        result_done(&r);

        /* and the connection is still good for the next request (trailers were consumed) */
        get(f, "/hello", &r);
        assert_string_equal(r.body, "hello");
        result_done(&r);
        assert_int_equal(f->server->n_accepted, 1);
}

static void test_large_bodies(void **state) {
        Fixture *f = *state;
        Result r = {};
        _cleanup_free_ char *expect = make_body(3 * 1024 * 1024 + 17), *big = make_body(2 * 1024 * 1024);

        get(f, "/big?n=3145745", &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.size, 3145745);
        assert_memory_equal(r.body, expect, r.size);
        result_done(&r);

        get(f, "/big-chunked?n=3145745", &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.size, 3145745);
        assert_memory_equal(r.body, expect, r.size);
        result_done(&r);

        /* a 2 MiB request body arrives intact */
        assert_int_equal(http_client_request(f->client, "PUT", "/echo", NULL, "application/octet-stream", big,
                                             2 * 1024 * 1024, 0, 0, on_result, &r, NULL),
                         0);
        run_until(f->event, &r.n_called, 1, 10 * USEC_PER_SEC);
        assert_int_equal(r.error, 0);
        assert_true(r.size > 2 * 1024 * 1024);
        assert_memory_equal(r.body + r.size - 2 * 1024 * 1024, big, 2 * 1024 * 1024);
        result_done(&r);

        get(f, "/big-eof?n=100000", &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.size, 100000);
        assert_memory_equal(r.body, expect, r.size);
        result_done(&r);
}

static void test_body_limit(void **state) {
        Fixture *f = *state;
        Result r = {};

        make_client(f, &(HttpClientSettings) { .max_body_size = 1024, .max_header_size = 4096 });

        get(f, "/big?n=1024", &r); /* exactly the limit is fine */
        assert_int_equal(r.error, 0);
        assert_int_equal(r.size, 1024);
        result_done(&r);

        get(f, "/big?n=1025", &r);
        assert_int_equal(r.error, -EMSGSIZE);
        result_done(&r);
        get(f, "/big-chunked?n=2048", &r);
        assert_int_equal(r.error, -EMSGSIZE);
        result_done(&r);
        get(f, "/big-eof?n=2048", &r);
        assert_int_equal(r.error, -EMSGSIZE);
        result_done(&r);
        get(f, "/huge-length", &r);
        assert_int_equal(r.error, -EMSGSIZE);
        result_done(&r);
        get(f, "/huge-head", &r);
        assert_int_equal(r.error, -EMSGSIZE);
        result_done(&r);

        /* the client is still healthy afterwards */
        get(f, "/hello", &r);
        assert_int_equal(r.error, 0);
        result_done(&r);
        assert_int_equal(http_client_get_stats(f->client)->errors, 5);
}

static void test_malformed(void **state) {
        Fixture *f = *state;
        static const char *const paths[] = {
                "/malformed-status", "/garbage", "/bad-header", "/folded-header", "/bad-length",
                "/conflicting-length", "/bad-chunk", "/bad-chunk-end", "/gzip",
        };

        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                Result r = {};

                get(f, paths[i], &r);
                if (r.error != -EBADMSG)
                        fail_msg("%s: expected -EBADMSG, got %d (status %u)", paths[i], r.error, r.status);
                result_done(&r);
        }
        /* a connection with a broken response is never reused */
        assert_int_equal(f->server->n_accepted, ELEMENTSOF(paths));
        assert_int_equal(http_client_n_connections(f->client), 0);
}

static void test_connection_close(void **state) {
        Fixture *f = *state;
        Result r = {};

        get(f, "/close", &r);
        assert_int_equal(r.error, 0);
        assert_string_equal(r.body, "bye");
        result_done(&r);
        assert_int_equal(http_client_n_connections(f->client), 0); /* Connection: close honoured */

        get(f, "/http10", &r);
        assert_int_equal(r.error, 0);
        assert_string_equal(r.body, "ok");
        result_done(&r);
        assert_int_equal(http_client_n_connections(f->client), 0); /* HTTP/1.0: no keep-alive */

        get(f, "/eof", &r); /* body delimited by the end of the connection */
        assert_int_equal(r.error, 0);
        assert_string_equal(r.body, "until the end");
        result_done(&r);

        get(f, "/hello", &r);
        assert_string_equal(r.body, "hello");
        result_done(&r);
        assert_int_equal(f->server->n_accepted, 4);
}

static void test_server_closes_mid_response(void **state) {
        Fixture *f = *state;
        Result r = {};

        get(f, "/midclose", &r);
        assert_int_equal(r.error, -ECONNRESET);
        result_done(&r);
        get(f, "/midclose-chunked", &r);
        assert_int_equal(r.error, -ECONNRESET);
        result_done(&r);
        get(f, "/head-close", &r);
        assert_int_equal(r.error, -ECONNRESET);
        result_done(&r);
        assert_int_equal(http_client_get_stats(f->client)->retries, 0); /* fresh connections: no retry */
        assert_int_equal(f->server->n_requests, 3);
}

static void test_timeout(void **state) {
        Fixture *f = *state;
        Result r = {}, q = {};
        uint64_t start;

        make_client(f, &(HttpClientSettings) { .max_connections = 1 });

        start = now_mono();
        assert_int_equal(http_client_request(f->client, "GET", "/never", NULL, NULL, NULL, 0, 300 * USEC_PER_MSEC, 0,
                                             on_result, &r, NULL),
                         0);
        /* waits in the queue behind /never and times out there */
        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 100 * USEC_PER_MSEC, 0,
                                             on_result, &q, NULL),
                         0);
        run_until(f->event, &q.n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(q.error, -ETIMEDOUT);
        assert_int_equal(r.n_called, 0);
        assert_true(q.at - start >= 100 * USEC_PER_MSEC);

        run_until(f->event, &r.n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ETIMEDOUT);
        assert_true(r.at - start >= 300 * USEC_PER_MSEC);
        assert_true(r.at - start < 2 * USEC_PER_SEC);
        assert_int_equal(f->server->n_requests, 1); /* /hello never went out */
        result_done(&r);
        result_done(&q);

        /* the timed-out connection was dropped; a new request works */
        get(f, "/hello", &r);
        assert_int_equal(r.error, 0);
        result_done(&r);
        assert_int_equal(f->server->n_accepted, 2);
}

static void test_keep_alive_reuse(void **state) {
        Fixture *f = *state;

        for (unsigned i = 0; i < 10; i++) {
                Result r = {};
                get(f, "/hello", &r);
                assert_int_equal(r.error, 0);
                assert_string_equal(r.body, "hello");
                result_done(&r);
        }
        assert_int_equal(f->server->n_requests, 10);
        assert_int_equal(f->server->n_accepted, 1);
        assert_int_equal(http_client_get_stats(f->client)->connections_opened, 1);
        assert_int_equal(http_client_get_stats(f->client)->requests, 10);
        assert_int_equal(http_client_n_connections(f->client), 1);

        /* with the connection idle, a request is on the wire when http_client_request()
         * returns, before the loop runs: not queued, and the server can read it (its callback
         * still comes from the loop only) */
        {
                Result r = {};
                struct pollfd p = { .events = POLLIN };

                assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0,
                                                     on_result, &r, NULL),
                                 0);
                assert_int_equal(http_client_n_queued(f->client), 0);
                assert_int_equal(f->server->n_open, 1);
                p.fd = f->server->conns->fd;
                assert_int_equal(poll(&p, 1, 1000), 1);
                assert_int_equal(r.n_called, 0);
                run_until(f->event, &r.n_called, 1, 10 * USEC_PER_SEC);
                assert_int_equal(r.error, 0);
                assert_string_equal(r.body, "hello");
                result_done(&r);
        }
        assert_int_equal(f->server->n_accepted, 1);
}

static void test_concurrency(void **state) {
        Fixture *f = *state;
        Result r[20] = {};
        unsigned done = 0;
        uint64_t start = now_mono();

        for (size_t i = 0; i < ELEMENTSOF(r); i++)
                assert_int_equal(http_client_request(f->client, "GET", "/slow?ms=100", NULL, NULL, NULL, 0, 0, 0,
                                                     on_result, &r[i], NULL),
                                 0);
        assert_int_equal(http_client_n_queued(f->client), 20);

        while (done < ELEMENTSOF(r)) {
                assert_true(now_mono() - start < 10 * USEC_PER_SEC);
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
                done = 0;
                for (size_t i = 0; i < ELEMENTSOF(r); i++)
                        done += r[i].n_called;
        }
        for (size_t i = 0; i < ELEMENTSOF(r); i++) {
                assert_int_equal(r[i].n_called, 1);
                assert_int_equal(r[i].error, 0);
                assert_string_equal(r[i].body, "slow");
                result_done(&r[i]);
        }
        /* 20 requests of 100 ms each over the pool of 8: three rounds, not twenty */
        assert_true(now_mono() - start < 1500 * USEC_PER_MSEC);
        assert_int_equal(f->server->n_accepted, 8);
        assert_int_equal(f->server->max_open, 8);
        assert_int_equal(f->server->n_requests, 20);
}

static void test_cancel(void **state) {
        Fixture *f = *state;
        Result a = {}, b = {}, c = {};
        HttpClientRequest *ra = NULL, *rb = NULL;

        make_client(f, &(HttpClientSettings) { .max_connections = 1 });

        assert_int_equal(http_client_request(f->client, "GET", "/slow?ms=50", NULL, NULL, NULL, 0, 0, 0, on_result, &a,
                                             &ra),
                         0);
        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &b, &rb),
                         0);
        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &c, NULL),
                         0);
        http_client_request_cancel(rb); /* still queued */
        assert_int_equal(http_client_n_queued(f->client), 2);

        /* let /slow go out, then cancel it while it is waiting for its answer */
        run_until(f->event, &f->server->n_requests, 1, 5 * USEC_PER_SEC);
        http_client_request_cancel(ra);

        run_until(f->event, &c.n_called, 1, 5 * USEC_PER_SEC);
        run_for(f->event, 150 * USEC_PER_MSEC); /* /slow's answer would have come by now */
        assert_int_equal(a.n_called, 0);
        assert_int_equal(b.n_called, 0);
        assert_int_equal(c.n_called, 1);
        assert_int_equal(c.error, 0);
        assert_string_equal(c.body, "hello");
        result_done(&c);
        /* the cancelled request's connection could not be reused; the cancelled queued one never went out */
        assert_int_equal(f->server->n_accepted, 2);
        assert_int_equal(f->server->n_requests, 2);
        http_client_request_cancel(NULL);
}

static void test_cancel_from_callback(void **state) {
        Fixture *f = *state;
        Result a = {}, b = {};
        HttpClientRequest *rb = NULL;

        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &a, NULL),
                         0);
        assert_int_equal(http_client_request(f->client, "GET", "/slow?ms=30", NULL, NULL, NULL, 0, 0, 0, on_result, &b,
                                             &rb),
                         0);
        a.cancel = &rb;
        run_until(f->event, &a.n_called, 1, 5 * USEC_PER_SEC);
        run_for(f->event, 100 * USEC_PER_MSEC);
        assert_int_equal(a.error, 0);
        assert_int_equal(b.n_called, 0);
        result_done(&a);
}

static void test_connection_refused(void **state) {
        Fixture *f = *state;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        _cleanup_close_ int fd = -EBADF;
        char url[64];
        Result r = {};

        /* a bound port nobody listens on */
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        snprintf(url, sizeof(url), "http://127.0.0.1:%u", ntohs(sa.sin_port));

        f->client = http_client_free(f->client);
        assert_int_equal(http_client_new(&f->client, f->event, url, NULL), 0);
        for (unsigned i = 0; i < 3; i++) {
                get(f, "/hello", &r);
                assert_int_equal(r.error, -ECONNREFUSED);
                result_done(&r);
        }
        assert_int_equal(http_client_n_connections(f->client), 0);
}

static void test_localhost(void **state) {
        Fixture *f = *state;
        char url[64];
        Result r = {};

        /* "localhost" may resolve to ::1 first: the client falls back to 127.0.0.1 */
        snprintf(url, sizeof(url), "http://localhost:%u", f->server->port);
        f->client = http_client_free(f->client);
        assert_int_equal(http_client_new(&f->client, f->event, url, NULL), 0);
        get(f, "/echo", &r);
        assert_int_equal(r.error, 0);
        {
                char host[64];
                snprintf(host, sizeof(host), "\r\nHost: localhost:%u\r\n", f->server->port);
                assert_non_null(strstr(r.body, host));
        }
        result_done(&r);
        get(f, "/hello", &r);
        assert_int_equal(r.error, 0);
        result_done(&r);
}

static void test_ipv6(void **state) {
        Fixture *f = *state;
        FakeServer *s6 = fake_server_new6(f->event);
        char url[64], host[64];
        Result r = {};

        if (!s6)
                skip();
        snprintf(url, sizeof(url), "http://[::1]:%u", s6->port);
        f->client = http_client_free(f->client);
        assert_int_equal(http_client_new(&f->client, f->event, url, NULL), 0);
        get(f, "/echo", &r);
        assert_int_equal(r.error, 0);
        snprintf(host, sizeof(host), "\r\nHost: [::1]:%u\r\n", s6->port);
        assert_non_null(strstr(r.body, host));
        result_done(&r);
        assert_int_equal(s6->n_accepted, 1);
        f->client = http_client_free(f->client);
        fake_server_free(s6);
}

static void test_retry_on_reused_connection(void **state) {
        Fixture *f = *state;
        Result r = {};

        /* GET: the server closes the reused connection after reading the request → one retry */
        get(f, "/drop-second", &r);
        assert_string_equal(r.body, "first");
        result_done(&r);
        get(f, "/drop-second", &r);
        assert_int_equal(r.error, 0);
        assert_string_equal(r.body, "first"); /* answered on a new connection */
        result_done(&r);
        assert_int_equal(f->server->n_accepted, 2);
        assert_int_equal(f->server->n_requests, 3);
        assert_int_equal(http_client_get_stats(f->client)->retries, 1);

        /* POST: not idempotent, and it was written: no retry, the error is reported */
        assert_int_equal(http_client_request(f->client, "POST", "/drop-second", NULL, "text/plain", "x", 1, 0, 0,
                                             on_result, &r, NULL),
                         0);
        run_until(f->event, &r.n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ECONNRESET);
        result_done(&r);
        assert_int_equal(http_client_get_stats(f->client)->retries, 1);
        assert_int_equal(f->server->n_requests, 4);

        /* POST marked idempotent: retried */
        get(f, "/drop-second", &r); /* a fresh connection, now kept alive */
        result_done(&r);
        assert_int_equal(http_client_request(f->client, "POST", "/drop-second", NULL, "text/plain", "x", 1, 0,
                                             HTTP_CLIENT_IDEMPOTENT, on_result, &r, NULL),
                         0);
        run_until(f->event, &r.n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, 0);
        assert_string_equal(r.body, "first");
        result_done(&r);
        assert_int_equal(http_client_get_stats(f->client)->retries, 2);

        /* only once: if the retry fails too, the error is reported */
}

static void test_server_closes_idle_connection(void **state) {
        Fixture *f = *state;
        Result r = {};

        get(f, "/close-idle", &r);
        assert_string_equal(r.body, "idle");
        result_done(&r);
        get(f, "/hello", &r); /* needs a new connection, found out without a failed request */
        assert_int_equal(r.error, 0);
        assert_string_equal(r.body, "hello");
        result_done(&r);
        assert_int_equal(f->server->n_accepted, 2);
        assert_int_equal(http_client_get_stats(f->client)->errors, 0);
}

/* Issues a POST from within the callback, before the loop could notice anything else. */
typedef struct Chain {
        Fixture *f;
        Result first, second;
} Chain;

static void on_chain_first(HttpClient *c, int error, const HttpResponse *resp, void *userdata) {
        Chain *ch = userdata;

        on_result(c, error, resp, &ch->first);
        assert_int_equal(http_client_request(c, "POST", "/echo", NULL, "text/plain", "x", 1, 0, 0, on_result,
                                             &ch->second, NULL),
                         0);
}

static void test_stale_idle_connection_not_used(void **state) {
        Fixture *f = *state;
        Chain ch = { .f = f };

        /* The server closes the connection right after the response; the client issues a
         * non-idempotent POST at once. It must not go out on the dead connection (where it
         * could not be retried): the client checks an idle connection before reusing it. */
        assert_int_equal(http_client_request(f->client, "GET", "/close-idle", NULL, NULL, NULL, 0, 0, 0, on_chain_first,
                                             &ch, NULL),
                         0);
        run_until(f->event, &ch.second.n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(ch.first.error, 0);
        assert_int_equal(ch.second.error, 0);
        assert_int_equal(ch.second.status, 200);
        assert_int_equal(http_client_get_stats(f->client)->retries, 0);
        assert_int_equal(f->server->n_accepted, 2);
        result_done(&ch.first);
        result_done(&ch.second);
}

static void test_free_with_pending(void **state) {
        Fixture *f = *state;
        Result a = {}, b = {}, c = {};

        make_client(f, &(HttpClientSettings) { .max_connections = 1 });
        assert_int_equal(http_client_request(f->client, "GET", "/never", NULL, NULL, NULL, 0, 0, 0, on_result, &a, NULL), 0);
        assert_int_equal(http_client_request(f->client, "GET", "/never", NULL, NULL, NULL, 0, 0, 0, on_result, &b, NULL), 0);
        run_until(f->event, &f->server->n_requests, 1, 5 * USEC_PER_SEC);
        assert_int_equal(a.n_called + b.n_called, 0);
        f->client = http_client_free(f->client);
        assert_int_equal(a.n_called, 1);
        assert_int_equal(a.error, -ECANCELED);
        assert_int_equal(b.n_called, 1);
        assert_int_equal(b.error, -ECANCELED);

        /* freeing the client from a callback: the other request gets -ECANCELED from within */
        make_client(f, NULL);
        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &a, NULL), 0);
        assert_int_equal(http_client_request(f->client, "GET", "/never", NULL, NULL, NULL, 0, 0, 0, on_result, &c, NULL), 0);
        a = (Result) { .free_client = &f->client };
        run_until(f->event, &a.n_called, 1, 5 * USEC_PER_SEC);
        assert_null(f->client);
        assert_int_equal(c.n_called, 1);
        assert_int_equal(c.error, -ECANCELED);
        run_for(f->event, 20 * USEC_PER_MSEC);
        assert_int_equal(a.n_called, 1);
        result_done(&a);
}

static void test_queue_limit(void **state) {
        Fixture *f = *state;
        Result r[3] = {};

        make_client(f, &(HttpClientSettings) { .max_connections = 1, .max_queued = 2 });
        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &r[0], NULL), 0);
        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &r[1], NULL), 0);
        assert_int_equal(http_client_request(f->client, "GET", "/hello", NULL, NULL, NULL, 0, 0, 0, on_result, &r[2], NULL), -EAGAIN);
        run_until(f->event, &r[1].n_called, 1, 5 * USEC_PER_SEC);
        assert_int_equal(r[0].error, 0);
        assert_int_equal(r[1].error, 0);
        assert_int_equal(r[2].n_called, 0);
        result_done(&r[0]);
        result_done(&r[1]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_url_parsing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_request_serialization, setup, teardown),
                cmocka_unit_test_setup_teardown(test_invalid_arguments, setup, teardown),
                cmocka_unit_test_setup_teardown(test_simple_and_headers, setup, teardown),
                cmocka_unit_test_setup_teardown(test_chunked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_large_bodies, setup, teardown),
                cmocka_unit_test_setup_teardown(test_body_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_close, setup, teardown),
                cmocka_unit_test_setup_teardown(test_server_closes_mid_response, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_keep_alive_reuse, setup, teardown),
                cmocka_unit_test_setup_teardown(test_concurrency, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_from_callback, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_localhost, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
                cmocka_unit_test_setup_teardown(test_retry_on_reused_connection, setup, teardown),
                cmocka_unit_test_setup_teardown(test_server_closes_idle_connection, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stale_idle_connection_not_used, setup, teardown),
                cmocka_unit_test_setup_teardown(test_free_with_pending, setup, teardown),
                cmocka_unit_test_setup_teardown(test_queue_limit, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
