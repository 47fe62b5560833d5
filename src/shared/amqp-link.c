/* SPDX-License-Identifier: MIT */
#include <amqp_tcp_socket.h>
#include <assert.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "amqp-link.h"
#include "log.h"

#define BACKOFF_MIN_USEC (100 * USEC_PER_MSEC)
#define BACKOFF_MAX_USEC (5 * USEC_PER_SEC)
#define CLOSE_TIMEOUT_SEC 1
#define TIMER_ACCURACY_USEC (1 * USEC_PER_MSEC)
#define MAX_CALLS 16U
#define MAX_FRAMES_PER_DISPATCH 256U
#define SNDBUF_REQUEST (1024 * 1024)

/* rabbitmq-c reports a protocol header sent by the broker (version mismatch) as a
 * frame of this type; the constant is in its private amqp_private.h. */
#define PSEUDOFRAME_PROTOCOL_HEADER 'A'

#define IN_SET3(x, a, b, c) ((x) == (a) || (x) == (b) || (x) == (c))

typedef struct LinkCall {
        amqp_method_number_t reply;
        AmqpLinkReplyHandler handler;
} LinkCall;

struct AmqpLink {
        unsigned n_ref;
        sd_event *event;
        const AmqpLinkOps *ops;
        void *userdata;
        AmqpStateCallback state_cb;
        void *state_userdata;

        /* configuration */
        AmqpUrl url;
        char *target; /* "host:port vhost" for debug logs, no credentials */
        char *connection_name;
        unsigned heartbeat_sec;
        uint64_t connect_timeout_usec;
        uint64_t handshake_timeout_usec;

        /* current connection */
        AmqpLinkState state;
        int fd; /* the TCP socket until it is handed to rabbitmq-c */
        struct addrinfo *addresses, *next_address;
        amqp_connection_state_t conn;
        unsigned heartbeat; /* negotiated, seconds, 0: none */
        uint64_t generation;
        size_t sndbuf;
        bool blocked;
        bool channel_open;
        LinkCall calls[MAX_CALLS];
        unsigned calls_head, n_calls;
        uint64_t last_rx_usec;
        uint64_t ready_usec;

        /* reconnecting */
        uint64_t backoff_usec;
        bool pending_lost;
        int pending_error;
        bool reported, reported_connected;
        int reported_error;

        sd_event_source *io_source;       /* EPOLLOUT while connecting, then EPOLLIN */
        sd_event_source *connect_timer;
        sd_event_source *reconnect_timer;
        sd_event_source *heartbeat_timer;
        sd_event_source *notify_source;   /* defer: reports a loss outside of any API call */
        sd_event_source *drain_source;    /* defer: frames rabbitmq-c buffered without the socket being readable */
};

static void link_drain(AmqpLink *l);
static void link_connect_next(AmqpLink *l, int error);
static int link_handshake_frame(AmqpLink *l, const amqp_frame_t *f);

static uint64_t link_now(AmqpLink *l) {
        uint64_t t;

        if (sd_event_now(l->event, CLOCK_MONOTONIC, &t) < 0) {
                struct timespec ts;
                (void) clock_gettime(CLOCK_MONOTONIC, &ts);
                t = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
        }
        return t;
}

static void arm_timer(sd_event_source *s, uint64_t when) {
        (void) sd_event_source_set_time(s, when);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static void disable_source(sd_event_source *s) {
        if (s)
                (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

static int gai_error_to_errno(int r) {
        switch (r) {
        case EAI_NONAME:
        case EAI_NODATA:
        case EAI_ADDRFAMILY:
                return -EHOSTUNREACH;
        case EAI_AGAIN:
                return -EAGAIN;
        case EAI_MEMORY:
                return -ENOMEM;
        case EAI_SYSTEM:
                return negative_errno();
        default:
                return -EIO;
        }
}

/* A connection object exists: handshake, setup or ready. */
static bool link_has_connection(AmqpLink *l) {
        return l->conn &&
               IN_SET3(l->state, AMQP_LINK_HANDSHAKE, AMQP_LINK_SETUP, AMQP_LINK_READY);
}

static void link_kick(AmqpLink *l) {
        if (!link_has_connection(l))
                return;
        if (amqp_frames_enqueued(l->conn) || amqp_data_in_buffer(l->conn))
                (void) sd_event_source_set_enabled(l->drain_source, SD_EVENT_ONESHOT);
}

/* Drops the current connection (or connection attempt) without any callback. */
static void link_teardown(AmqpLink *l) {
        /* The io source goes first: its fd number must not be reused while it exists. */
        l->io_source = sd_event_source_disable_unref(l->io_source);
        disable_source(l->connect_timer);
        disable_source(l->heartbeat_timer);
        disable_source(l->drain_source);

        if (l->conn) {
                (void) amqp_destroy_connection(l->conn); /* closes the socket */
                l->conn = NULL;
        }
        l->fd = safe_close(l->fd);
        if (l->addresses) {
                freeaddrinfo(l->addresses);
                l->addresses = l->next_address = NULL;
        }
        l->calls_head = l->n_calls = 0;
        l->channel_open = false;
        l->blocked = false;
        l->heartbeat = 0;
        l->sndbuf = 0;
}

static void link_report(AmqpLink *l, bool connected, int error) {
        if (!connected && l->reported && !l->reported_connected && l->reported_error == error)
                return;

        l->reported = true;
        l->reported_connected = connected;
        l->reported_error = error;
        if (l->state_cb)
                l->state_cb(connected, error, l->state_userdata);
}

void amqp_link_fail(AmqpLink *l, int error) {
        if (!l || l->state == AMQP_LINK_DISCONNECTED || l->state == AMQP_LINK_CLOSED)
                return;
        if (error >= 0)
                error = -EIO;

        log_debug_errno(error, "AMQP %s: %s: %m", l->target,
                        l->state == AMQP_LINK_CONNECTING ? "connect failed" :
                        l->state == AMQP_LINK_HANDSHAKE  ? "login failed" :
                        l->state == AMQP_LINK_SETUP      ? "setting up the channel failed" :
                                                           "connection lost");

        link_teardown(l);
        l->state = AMQP_LINK_DISCONNECTED;
        l->pending_lost = true;
        l->pending_error = error;
        (void) sd_event_source_set_enabled(l->notify_source, SD_EVENT_ONESHOT);
}

static uint64_t jitter(uint64_t max) {
        uint32_t x = 0;

        if (max == 0 || getrandom(&x, sizeof x, GRND_NONBLOCK) != sizeof x)
                return 0;
        return (uint64_t) x % max;
}

static int on_notify(sd_event_source *s, void *userdata) {
        _cleanup_(amqp_link_unrefp) AmqpLink *l = amqp_link_ref(userdata);
        uint64_t now, delay;
        int error;

        if (!l->pending_lost || l->state == AMQP_LINK_CLOSED)
                return 0;
        l->pending_lost = false;
        error = l->pending_error;

        /* A connection that stayed up for a while starts the backoff afresh; one that
         * breaks right after being established (e.g. a channel error) does not. */
        now = link_now(l);
        if (l->ready_usec != 0 && now - l->ready_usec >= BACKOFF_MAX_USEC)
                l->backoff_usec = BACKOFF_MIN_USEC;
        l->ready_usec = 0;
        delay = l->backoff_usec;
        l->backoff_usec = MIN(l->backoff_usec * 2, BACKOFF_MAX_USEC);
        delay -= jitter(delay / 4); /* so that many clients do not come back in lockstep */
        log_debug("AMQP %s: reconnecting in %" PRIu64 " ms", l->target, delay / USEC_PER_MSEC);
        arm_timer(l->reconnect_timer, now + delay);

        if (l->ops && l->ops->lost)
                l->ops->lost(l, error, l->userdata);
        if (l->state != AMQP_LINK_CLOSED)
                link_report(l, false, error);
        return 0;
}

static void link_ready(AmqpLink *l) {
        l->state = AMQP_LINK_READY;
        l->ready_usec = link_now(l);
        log_debug("AMQP %s: connected (heartbeat %us, send buffer %zu bytes)", l->target, l->heartbeat, l->sndbuf);

        if (l->ops && l->ops->ready)
                l->ops->ready(l, l->userdata);
        if (l->state == AMQP_LINK_READY)
                link_report(l, true, 0);
}

static int link_connection_method(AmqpLink *l, const amqp_method_t *m) {
        switch (m->id) {
        case AMQP_CONNECTION_CLOSE_METHOD: {
                const amqp_connection_close_t *c = m->decoded;
                amqp_connection_close_ok_t ok = {};

                log_debug("AMQP %s: broker closed the connection: %u %.*s", l->target, c->reply_code,
                          (int) MIN(c->reply_text.len, 200U), (const char *) c->reply_text.bytes);
                (void) amqp_send_method(l->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
                return amqp_reply_code_to_errno(c->reply_code) ?: -ECONNRESET;
        }
        case AMQP_CONNECTION_BLOCKED_METHOD: {
                const amqp_connection_blocked_t *b = m->decoded;

                log_debug("AMQP %s: broker blocked the connection: %.*s", l->target,
                          (int) MIN(b->reason.len, 200U), (const char *) b->reason.bytes);
                l->blocked = true;
                return 0;
        }
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
                log_debug("AMQP %s: broker unblocked the connection", l->target);
                l->blocked = false;
                return 0;
        default:
                return 0;
        }
}

static int link_dispatch(AmqpLink *l, const amqp_frame_t *f) {
        int r;

        if (l->state == AMQP_LINK_HANDSHAKE)
                return link_handshake_frame(l, f);

        if (f->frame_type == AMQP_FRAME_METHOD && f->channel == 0)
                return link_connection_method(l, &f->payload.method);
        if (f->channel != AMQP_LINK_CHANNEL)
                return 0; /* we open no other channel */

        if (f->frame_type == AMQP_FRAME_METHOD) {
                const amqp_method_t *m = &f->payload.method;

                if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
                        const amqp_channel_close_t *c = m->decoded;
                        amqp_channel_close_ok_t ok = {};

                        log_debug("AMQP %s: broker closed the channel: %u %.*s", l->target, c->reply_code,
                                  (int) MIN(c->reply_text.len, 200U), (const char *) c->reply_text.bytes);
                        (void) amqp_send_method(l->conn, AMQP_LINK_CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
                        return amqp_reply_code_to_errno(c->reply_code) ?: -ECONNRESET;
                }

                if (l->n_calls > 0 && m->id == l->calls[l->calls_head].reply) {
                        LinkCall call = l->calls[l->calls_head];

                        l->calls_head = (l->calls_head + 1) % MAX_CALLS;
                        l->n_calls--;
                        if (call.handler) {
                                r = call.handler(l, m, l->userdata);
                                if (r < 0)
                                        return r;
                        }
                        if (l->state == AMQP_LINK_SETUP && l->channel_open && l->n_calls == 0)
                                link_ready(l);
                        return 0;
                }
        }

        if (l->ops && l->ops->frame)
                return l->ops->frame(l, f, l->userdata);
        return 0;
}

static void link_drain(AmqpLink *l) {
        _cleanup_(amqp_link_unrefp) AmqpLink *ref = amqp_link_ref(l);

        for (unsigned n = 0; link_has_connection(l); n++) {
                amqp_frame_t f;
                int r;

                if (n >= MAX_FRAMES_PER_DISPATCH) {
                        /* Let other sources run; continue from the defer source. */
                        (void) sd_event_source_set_enabled(l->drain_source, SD_EVENT_ONESHOT);
                        return;
                }

                /* {0, 0}: rabbitmq-c parses what it has buffered, tries one non-blocking
                 * recv() and returns AMQP_STATUS_TIMEOUT when no complete frame is there. */
                r = amqp_simple_wait_frame_noblock(l->conn, &f, &(struct timeval) {});
                if (r == AMQP_STATUS_TIMEOUT)
                        break;
                if (r != AMQP_STATUS_OK) {
                        amqp_link_fail(l, amqp_status_to_errno(r));
                        return;
                }

                r = link_dispatch(l, &f);
                if (r < 0) {
                        amqp_link_fail(l, r);
                        return;
                }
                if (link_has_connection(l))
                        amqp_maybe_release_buffers(l->conn);
        }
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        AmqpLink *l = userdata;

        l->last_rx_usec = link_now(l);
        link_drain(l);
        return 0;
}

static int on_drain(sd_event_source *s, void *userdata) {
        link_drain(userdata);
        return 0;
}

static int on_heartbeat(sd_event_source *s, uint64_t usec, void *userdata) {
        AmqpLink *l = userdata;
        amqp_frame_t hb = {
                .frame_type = AMQP_FRAME_HEARTBEAT,
                .channel = 0,
        };
        uint64_t now, period;

        if (!amqp_link_is_up(l) || l->heartbeat == 0)
                return 0;

        now = link_now(l);
        period = (uint64_t) l->heartbeat * USEC_PER_SEC;
        if (now > l->last_rx_usec && now - l->last_rx_usec > 2 * period) {
                log_debug("AMQP %s: nothing received for %" PRIu64 " s, the broker is gone", l->target,
                          (now - l->last_rx_usec) / USEC_PER_SEC);
                amqp_link_fail(l, -ETIMEDOUT);
                return 0;
        }

        if (amqp_link_check(l, amqp_send_frame(l->conn, &hb)) < 0)
                return 0;

        arm_timer(l->heartbeat_timer, now + period / 2);
        return 0;
}

static int on_channel_open(AmqpLink *l, const amqp_method_t *reply, void *userdata) {
        l->channel_open = true;
        if (l->ops && l->ops->setup)
                return l->ops->setup(l, l->userdata);
        return 0;
}

static amqp_table_entry_t entry_bool(const char *key, bool v) {
        return (amqp_table_entry_t) {
                .key = amqp_cstring_bytes(key),
                .value = { .kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = v },
        };
}

static amqp_table_entry_t entry_utf8(const char *key, const char *v) {
        return (amqp_table_entry_t) {
                .key = amqp_cstring_bytes(key),
                .value = { .kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(v) },
        };
}

/* Sends a connection-level method (channel 0) during the handshake. */
static int link_send_connection_method(AmqpLink *l, amqp_method_number_t method, void *decoded) {
        return amqp_link_check(l, amqp_send_method(l->conn, 0, method, decoded));
}

static bool mechanism_offered(amqp_bytes_t list, const char *name) {
        size_t n = strlen(name);
        const char *p = list.bytes, *end = p ? p + list.len : NULL;

        /* a space-separated list, e.g. "AMQPLAIN PLAIN" */
        while (p && p < end) {
                const char *e = memchr(p, ' ', (size_t) (end - p)) ?: end;
                if ((size_t) (e - p) == n && memcmp(p, name, n) == 0)
                        return true;
                p = e + 1;
        }
        return false;
}

static int handshake_start(AmqpLink *l, const amqp_connection_start_t *start) {
        amqp_table_entry_t capabilities[] = {
                entry_bool("connection.blocked", true),     /* tell us about resource alarms */
                entry_bool("consumer_cancel_notify", true), /* basic.cancel when our queue is deleted */
                entry_bool("publisher_confirms", true),
                entry_bool("basic.nack", true),
                entry_bool("authentication_failure_close", true), /* a 403 instead of a hang-up */
        };
        amqp_table_entry_t properties[] = {
                entry_utf8("connection_name", l->connection_name),
                entry_utf8("product", "dtask"),
                entry_utf8("version", PACKAGE_VERSION),
                entry_utf8("platform", "rabbitmq-c " AMQP_VERSION_STRING),
                {
                        .key = amqp_cstring_bytes("capabilities"),
                        .value = {
                                .kind = AMQP_FIELD_KIND_TABLE,
                                .value.table = { .num_entries = ELEMENTSOF(capabilities), .entries = capabilities },
                        },
                },
        };
        size_t user_len = strlen(l->url.user), password_len = strlen(l->url.password);
        size_t n = user_len + password_len + 2;
        _cleanup_free_ char *response = NULL;
        amqp_connection_start_ok_t ok;
        int r;

        if (start->version_major != AMQP_PROTOCOL_VERSION_MAJOR ||
            start->version_minor != AMQP_PROTOCOL_VERSION_MINOR)
                return -EPROTONOSUPPORT;
        if (!mechanism_offered(start->mechanisms, "PLAIN"))
                return -EPROTONOSUPPORT;

        /* SASL PLAIN: "\0user\0password" */
        response = malloc(n);
        if (!response)
                return -ENOMEM;
        response[0] = 0;
        memcpy(response + 1, l->url.user, user_len);
        response[user_len + 1] = 0;
        memcpy(response + user_len + 2, l->url.password, password_len);

        ok = (amqp_connection_start_ok_t) {
                .client_properties = { .num_entries = ELEMENTSOF(properties), .entries = properties },
                .mechanism = amqp_cstring_bytes("PLAIN"),
                .response = { .len = n, .bytes = response },
                .locale = amqp_cstring_bytes("en_US"),
        };
        r = link_send_connection_method(l, AMQP_CONNECTION_START_OK_METHOD, &ok);
        explicit_bzero(response, n);
        return r;
}

static int handshake_tune(AmqpLink *l, const amqp_connection_tune_t *tune) {
        amqp_connection_open_t open = {
                .virtual_host = amqp_cstring_bytes(l->url.vhost),
                .capabilities = amqp_empty_bytes,
        };
        amqp_connection_tune_ok_t ok;
        unsigned channel_max, frame_max, heartbeat;
        int r;

        /* As amqp_login() negotiates: the lower value where the broker has a limit. */
        channel_max = tune->channel_max == 0 ? AMQP_DEFAULT_MAX_CHANNELS
                                             : MIN((unsigned) tune->channel_max, (unsigned) AMQP_DEFAULT_MAX_CHANNELS);
        frame_max = tune->frame_max == 0 ? AMQP_DEFAULT_FRAME_SIZE : MIN(tune->frame_max, (uint32_t) AMQP_DEFAULT_FRAME_SIZE);
        heartbeat = tune->heartbeat == 0 ? l->heartbeat_sec : MIN((unsigned) tune->heartbeat, l->heartbeat_sec);
        if (frame_max < AMQP_FRAME_MIN_SIZE)
                return -EPROTO;

        /* Called right after the tune frame was parsed, when rabbitmq-c's input state is idle
         * (amqp_tune_connection() aborts otherwise). */
        r = amqp_tune_connection(l->conn, (int) channel_max, (int) frame_max, (int) heartbeat);
        if (r != AMQP_STATUS_OK)
                return amqp_status_to_errno(r);
        l->heartbeat = heartbeat;

        ok = (amqp_connection_tune_ok_t) {
                .channel_max = (uint16_t) channel_max,
                .frame_max = frame_max,
                .heartbeat = (uint16_t) heartbeat,
        };
        r = link_send_connection_method(l, AMQP_CONNECTION_TUNE_OK_METHOD, &ok);
        if (r < 0)
                return r;
        return link_send_connection_method(l, AMQP_CONNECTION_OPEN_METHOD, &open);
}

static int handshake_done(AmqpLink *l) {
        amqp_channel_open_t open = { .out_of_band = amqp_empty_bytes };
        uint64_t now = link_now(l);

        disable_source(l->connect_timer);
        l->generation++;
        l->state = AMQP_LINK_SETUP;
        l->last_rx_usec = now;
        if (l->heartbeat > 0)
                arm_timer(l->heartbeat_timer, now + (uint64_t) l->heartbeat * USEC_PER_SEC / 2);

        return amqp_link_call(l, AMQP_CHANNEL_OPEN_METHOD, &open, AMQP_CHANNEL_OPEN_OK_METHOD, on_channel_open);
}

/* The login, one frame at a time. Only connection-level frames may arrive now. */
static int link_handshake_frame(AmqpLink *l, const amqp_frame_t *f) {
        if (f->frame_type == PSEUDOFRAME_PROTOCOL_HEADER)
                return -EPROTONOSUPPORT; /* the broker wants another protocol version */
        if (f->frame_type != AMQP_FRAME_METHOD || f->channel != 0)
                return -EPROTO;

        switch (f->payload.method.id) {
        case AMQP_CONNECTION_START_METHOD:
                return handshake_start(l, f->payload.method.decoded);
        case AMQP_CONNECTION_TUNE_METHOD:
                return handshake_tune(l, f->payload.method.decoded);
        case AMQP_CONNECTION_OPEN_OK_METHOD:
                return handshake_done(l);
        case AMQP_CONNECTION_CLOSE_METHOD: /* refused: 403 bad credentials, 530 vhost … */
                return link_connection_method(l, &f->payload.method);
        default: /* connection.secure: only PLAIN is supported, which needs no challenge */
                return -EPROTO;
        }
}

static void link_tcp_connected(AmqpLink *l) {
        amqp_socket_t *sock;
        int sndbuf = 0, r;
        socklen_t len = sizeof sndbuf;

        l->io_source = sd_event_source_disable_unref(l->io_source);
        if (l->addresses) {
                freeaddrinfo(l->addresses);
                l->addresses = l->next_address = NULL;
        }
        if (getsockopt(l->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) >= 0 && sndbuf > 0)
                l->sndbuf = (size_t) sndbuf;

        l->conn = amqp_new_connection();
        if (!l->conn) {
                amqp_link_fail(l, -ENOMEM);
                return;
        }
        sock = amqp_tcp_socket_new(l->conn);
        if (!sock) {
                amqp_link_fail(l, -ENOMEM);
                return;
        }
        amqp_tcp_socket_set_sockfd(sock, TAKE_FD(l->fd)); /* rabbitmq-c closes it from now on */

        /* The handshake gets its own deadline. */
        l->state = AMQP_LINK_HANDSHAKE;
        arm_timer(l->connect_timer, link_now(l) + l->handshake_timeout_usec);

        r = sd_event_add_io(l->event, &l->io_source, amqp_get_sockfd(l->conn), EPOLLIN, on_io, l);
        if (r < 0) {
                amqp_link_fail(l, r);
                return;
        }
        (void) sd_event_source_set_description(l->io_source, "amqp-io");

        /* 8 bytes into an empty socket buffer: does not block. The broker answers with
         * connection.start, handled in link_handshake_frame(). */
        (void) amqp_link_check(l, amqp_send_header(l->conn));
}

static int on_connect_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        AmqpLink *l = userdata;
        int error = 0;
        socklen_t len = sizeof error;

        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
                error = errno;
        if (error == 0 && (revents & (EPOLLERR | EPOLLHUP)))
                error = ECONNREFUSED;

        if (error != 0) {
                log_debug_errno(error, "AMQP %s: TCP connect failed: %m", l->target);
                l->io_source = sd_event_source_disable_unref(l->io_source);
                l->fd = safe_close(l->fd);
                link_connect_next(l, -error);
                return 0;
        }

        link_tcp_connected(l);
        return 0;
}

static void socket_setup(AmqpLink *l, int fd) {
        int one = 1, sndbuf = SNDBUF_REQUEST;
        unsigned user_timeout_ms = l->heartbeat_sec * 1000U;

        /* Small frames must go out at once. */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* A fixed send buffer the publisher can budget against (see amqp.h). */
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        /* Unacknowledged data for this long kills the connection: ends a blocked write to a vanished peer. */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

static void link_connect_next(AmqpLink *l, int error) {
        int r;

        while (l->next_address) {
                struct addrinfo *a = l->next_address;
                int fd;

                l->next_address = a->ai_next;

                fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
                if (fd < 0) {
                        error = -errno;
                        continue;
                }
                socket_setup(l, fd);
                l->fd = fd;

                if (connect(fd, a->ai_addr, a->ai_addrlen) >= 0) {
                        link_tcp_connected(l);
                        return;
                }
                if (errno != EINPROGRESS) {
                        error = -errno;
                        log_debug_errno(error, "AMQP %s: TCP connect failed: %m", l->target);
                        l->fd = safe_close(l->fd);
                        continue;
                }

                r = sd_event_add_io(l->event, &l->io_source, fd, EPOLLOUT, on_connect_io, l);
                if (r < 0) {
                        amqp_link_fail(l, r);
                        return;
                }
                (void) sd_event_source_set_description(l->io_source, "amqp-connect");
                return;
        }

        amqp_link_fail(l, error < 0 ? error : -EHOSTUNREACH);
}

static int on_connect_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        amqp_link_fail(userdata, -ETIMEDOUT);
        return 0;
}

static int on_reconnect(sd_event_source *s, uint64_t usec, void *userdata) {
        AmqpLink *l = userdata;
        struct addrinfo hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_protocol = IPPROTO_TCP,
                .ai_flags = AI_NUMERICSERV,
        };
        char port[8];
        int r;

        if (l->state != AMQP_LINK_DISCONNECTED)
                return 0;

        l->state = AMQP_LINK_CONNECTING;
        arm_timer(l->connect_timer, link_now(l) + l->connect_timeout_usec);

        /* Blocking, but instant for numeric addresses and /etc/hosts. */
        (void) snprintf(port, sizeof port, "%u", l->url.port);
        r = getaddrinfo(l->url.host, port, &hints, &l->addresses);
        if (r != 0) {
                l->addresses = NULL;
                amqp_link_fail(l, gai_error_to_errno(r));
                return 0;
        }
        l->next_address = l->addresses;

        link_connect_next(l, -EHOSTUNREACH);
        return 0;
}

int amqp_link_new(AmqpLink **ret, sd_event *e, const AmqpSettings *s, const AmqpLinkOps *ops, void *userdata) {
        _cleanup_(amqp_link_unrefp) AmqpLink *l = NULL;
        int r;

        assert_return(ret, -EINVAL);
        assert_return(e, -EINVAL);
        assert_return(s, -EINVAL);
        assert_return(ops, -EINVAL);

        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        l->n_ref = 1;
        l->fd = -EBADF;
        l->event = sd_event_ref(e);
        l->ops = ops;
        l->userdata = userdata;
        l->state = AMQP_LINK_DISCONNECTED;
        l->backoff_usec = BACKOFF_MIN_USEC;

        r = amqp_url_parse(s->url, &l->url);
        if (r < 0)
                return r;

        if (asprintf(&l->target, "%s%s%s:%u vhost %s", strchr(l->url.host, ':') ? "[" : "", l->url.host,
                     strchr(l->url.host, ':') ? "]" : "", l->url.port, l->url.vhost) < 0)
                return -ENOMEM;
        l->connection_name = strdup(s->connection_name ?: program_invocation_short_name);
        if (!l->connection_name)
                return -ENOMEM;

        l->heartbeat_sec = MIN(s->heartbeat_sec ?: AMQP_DEFAULT_HEARTBEAT_SEC, 3600U);
        l->connect_timeout_usec = s->connect_timeout_usec ?: AMQP_DEFAULT_CONNECT_TIMEOUT_USEC;
        l->handshake_timeout_usec = s->handshake_timeout_usec ?: AMQP_DEFAULT_HANDSHAKE_TIMEOUT_USEC;

        /* The first attempt runs from the loop, right away. */
        r = sd_event_add_time(e, &l->reconnect_timer, CLOCK_MONOTONIC, 0, TIMER_ACCURACY_USEC, on_reconnect, l);
        if (r < 0)
                return r;
        r = sd_event_add_time(e, &l->connect_timer, CLOCK_MONOTONIC, 0, TIMER_ACCURACY_USEC,
                              on_connect_timeout, l);
        if (r < 0)
                return r;
        r = sd_event_add_time(e, &l->heartbeat_timer, CLOCK_MONOTONIC, 0, 100 * USEC_PER_MSEC, on_heartbeat, l);
        if (r < 0)
                return r;
        r = sd_event_add_defer(e, &l->notify_source, on_notify, l);
        if (r < 0)
                return r;
        r = sd_event_add_defer(e, &l->drain_source, on_drain, l);
        if (r < 0)
                return r;
        disable_source(l->connect_timer);
        disable_source(l->heartbeat_timer);
        disable_source(l->notify_source);
        disable_source(l->drain_source);
        (void) sd_event_source_set_description(l->reconnect_timer, "amqp-reconnect");
        (void) sd_event_source_set_description(l->connect_timer, "amqp-connect-timeout");
        (void) sd_event_source_set_description(l->heartbeat_timer, "amqp-heartbeat");
        (void) sd_event_source_set_description(l->notify_source, "amqp-notify");
        (void) sd_event_source_set_description(l->drain_source, "amqp-drain");

        *ret = TAKE_PTR(l);
        return 0;
}

AmqpLink *amqp_link_ref(AmqpLink *l) {
        if (l)
                l->n_ref++;
        return l;
}

void amqp_link_close(AmqpLink *l) {
        if (!l || l->state == AMQP_LINK_CLOSED)
                return;

        if (amqp_link_is_up(l)) {
                struct timeval tv = { .tv_sec = CLOSE_TIMEOUT_SEC };
                amqp_rpc_reply_t reply;

                /* Politely, so the broker does not log an unexpectedly closed connection.
                 * Blocks for one round trip, at most CLOSE_TIMEOUT_SEC. */
                (void) amqp_set_rpc_timeout(l->conn, &tv);
                reply = amqp_connection_close(l->conn, AMQP_REPLY_SUCCESS);
                log_debug_errno(amqp_rpc_reply_to_errno(&reply), "AMQP %s: closed (%m)", l->target);
        }

        link_teardown(l);
        l->state = AMQP_LINK_CLOSED;
        l->pending_lost = false;
        disable_source(l->reconnect_timer);
        disable_source(l->notify_source);
        l->ops = NULL;
        l->userdata = NULL;
        l->state_cb = NULL;
        l->state_userdata = NULL;
}

AmqpLink *amqp_link_unref(AmqpLink *l) {
        if (!l)
                return NULL;
        assert(l->n_ref > 0);
        if (--l->n_ref > 0)
                return NULL;

        amqp_link_close(l);
        sd_event_source_disable_unref(l->reconnect_timer);
        sd_event_source_disable_unref(l->connect_timer);
        sd_event_source_disable_unref(l->heartbeat_timer);
        sd_event_source_disable_unref(l->notify_source);
        sd_event_source_disable_unref(l->drain_source);
        sd_event_unref(l->event);
        amqp_url_done(&l->url);
        free(l->target);
        free(l->connection_name);
        return mfree(l);
}

void amqp_link_set_state_callback(AmqpLink *l, AmqpStateCallback cb, void *userdata) {
        if (!l || l->state == AMQP_LINK_CLOSED)
                return;
        l->state_cb = cb;
        l->state_userdata = userdata;
}

AmqpLinkState amqp_link_get_state(AmqpLink *l) {
        return l ? l->state : AMQP_LINK_CLOSED;
}

amqp_connection_state_t amqp_link_get_connection(AmqpLink *l) {
        return amqp_link_is_up(l) ? l->conn : NULL;
}

uint64_t amqp_link_get_generation(AmqpLink *l) {
        return l ? l->generation : 0;
}

bool amqp_link_is_blocked(AmqpLink *l) {
        return l && l->blocked;
}

size_t amqp_link_get_sndbuf(AmqpLink *l) {
        return l ? l->sndbuf : 0;
}

int amqp_link_check(AmqpLink *l, int status) {
        int r;

        if (status < 0) {
                r = amqp_status_to_errno(status);
                amqp_link_fail(l, r);
                return r;
        }
        link_kick(l);
        return 0;
}

int amqp_link_send_method(AmqpLink *l, amqp_method_number_t method, void *decoded) {
        assert_return(l, -EINVAL);

        if (!amqp_link_is_up(l))
                return -ENOTCONN;
        return amqp_link_check(l, amqp_send_method(l->conn, AMQP_LINK_CHANNEL, method, decoded));
}

int amqp_link_call(AmqpLink *l, amqp_method_number_t method, void *decoded, amqp_method_number_t reply,
                   AmqpLinkReplyHandler handler) {
        assert_return(l, -EINVAL);

        if (!amqp_link_is_up(l))
                return -ENOTCONN;
        if (l->n_calls >= MAX_CALLS)
                return -EBUSY;

        l->calls[(l->calls_head + l->n_calls) % MAX_CALLS] = (LinkCall) {
                .reply = reply,
                .handler = handler,
        };
        l->n_calls++;

        return amqp_link_check(l, amqp_send_method(l->conn, AMQP_LINK_CHANNEL, method, decoded));
}
