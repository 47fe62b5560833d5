/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <inttypes.h>

#include "amqp-link.h"
#include "log.h"

/* Rough per-message framing overhead on the wire (method + header frames). */
#define PUBLISH_OVERHEAD 128U

/* One message published on the current channel and not confirmed yet. The ring
 * holds them in delivery-tag order: the tag of ring[head] is first_tag. */
typedef struct Unconfirmed {
        uint64_t deadline;
        size_t bytes;
        AmqpConfirmCallback cb;
        void *userdata;
        bool reported;  /* the callback ran already (timeout): later acks are ignored */
        bool confirmed; /* ack/nack arrived; the slot is freed once it reaches the head */
} Unconfirmed;

struct AmqpPublisher {
        unsigned n_ref;
        bool freeing;
        sd_event *event;
        AmqpLink *link;

        char *exchange;
        char *routing_key;
        char *queue;
        char *events_exchange;
        size_t max_message_size;

        Unconfirmed *ring;
        size_t ring_size, head, n;
        uint64_t first_tag, next_tag;
        size_t n_unreported;
        size_t unconfirmed_bytes, max_unconfirmed_bytes;

        sd_event_source *timer;
        uint64_t timer_deadline; /* USEC_INFINITY: disarmed */
};

static AmqpPublisher *publisher_ref(AmqpPublisher *p) {
        p->n_ref++;
        return p;
}

static AmqpPublisher *publisher_unref(AmqpPublisher *p) {
        if (!p)
                return NULL;
        assert(p->n_ref > 0);
        if (--p->n_ref > 0)
                return NULL;

        amqp_link_close(p->link);
        amqp_link_unref(p->link);
        sd_event_source_disable_unref(p->timer);
        sd_event_unref(p->event);
        free(p->ring);
        free(p->exchange);
        free(p->routing_key);
        free(p->queue);
        free(p->events_exchange);
        return mfree(p);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(AmqpPublisher *, publisher_unref);

static Unconfirmed *entry_at(AmqpPublisher *p, size_t i) {
        return &p->ring[(p->head + i) % p->ring_size];
}

static void pop_confirmed(AmqpPublisher *p) {
        while (p->n > 0 && entry_at(p, 0)->confirmed) {
                p->head = (p->head + 1) % p->ring_size;
                p->n--;
                p->first_tag++;
        }
        if (p->n == 0)
                p->head = 0;
}

/* Calls the callbacks of all unreported entries with error; stops early when the
 * publisher is being freed meanwhile (amqp_publisher_free() reports the rest). */
static void report_all(AmqpPublisher *p, int error) {
        for (size_t i = 0; i < p->n && !(p->freeing && error != -ECANCELED); i++) {
                Unconfirmed *u = entry_at(p, i);

                if (u->reported)
                        continue;
                u->reported = true;
                p->n_unreported--;
                if (u->cb)
                        u->cb(p, error, u->userdata);
        }
}

static void ring_reset(AmqpPublisher *p) {
        p->head = p->n = 0;
        p->first_tag = p->next_tag = 1;
        p->n_unreported = 0;
        p->unconfirmed_bytes = 0;
        p->timer_deadline = USEC_INFINITY;
        if (p->timer)
                (void) sd_event_source_set_enabled(p->timer, SD_EVENT_OFF);
}

static void timer_update(AmqpPublisher *p, uint64_t deadline) {
        if (deadline >= p->timer_deadline)
                return;
        p->timer_deadline = deadline;
        (void) sd_event_source_set_time(p->timer, deadline);
        (void) sd_event_source_set_enabled(p->timer, SD_EVENT_ONESHOT);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        _cleanup_(publisher_unrefp) AmqpPublisher *p = publisher_ref(userdata);
        uint64_t now, next = USEC_INFINITY;

        (void) sd_event_now(p->event, CLOCK_MONOTONIC, &now);
        p->timer_deadline = USEC_INFINITY;

        for (size_t i = 0; i < p->n && !p->freeing; i++) {
                Unconfirmed *u = entry_at(p, i);

                if (u->reported)
                        continue;
                if (u->deadline > now) {
                        next = MIN(next, u->deadline);
                        continue;
                }
                /* Reported, but it keeps its slot (and its bytes count against the window)
                 * until the broker confirms it or the connection goes away. */
                u->reported = true;
                p->n_unreported--;
                if (u->cb)
                        u->cb(p, -ETIMEDOUT, u->userdata);
        }

        if (!p->freeing && next != USEC_INFINITY)
                timer_update(p, next);
        return 0;
}

static void confirm(AmqpPublisher *p, uint64_t tag, bool multiple, int error) {
        _cleanup_(publisher_unrefp) AmqpPublisher *ref = publisher_ref(p);
        uint64_t from, to;

        if (multiple) {
                from = p->first_tag;
                to = tag == 0 ? p->next_tag - 1 : tag; /* tag 0 + multiple: everything so far */
        } else
                from = to = tag;
        if (from < p->first_tag)
                from = p->first_tag;
        if (to >= p->next_tag) {
                log_debug("AMQP: confirm for unknown delivery tag %" PRIu64 " ignored", to);
                to = p->next_tag - 1;
        }

        for (uint64_t t = from; t <= to && t >= p->first_tag && !p->freeing; t++) {
                Unconfirmed *u = entry_at(p, (size_t) (t - p->first_tag));

                if (u->confirmed)
                        continue;
                u->confirmed = true;
                p->unconfirmed_bytes -= u->bytes;
                if (u->reported)
                        continue;
                u->reported = true;
                p->n_unreported--;
                if (u->cb)
                        u->cb(p, error, u->userdata);
        }

        if (!p->freeing)
                pop_confirmed(p);
}

static int publisher_frame(AmqpLink *l, const amqp_frame_t *f, void *userdata) {
        AmqpPublisher *p = userdata;

        if (f->frame_type != AMQP_FRAME_METHOD)
                return 0; /* content of a basic.return (we never set mandatory) */

        switch (f->payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
                const amqp_basic_ack_t *a = f->payload.method.decoded;
                confirm(p, a->delivery_tag, a->multiple, 0);
                return 0;
        }
        case AMQP_BASIC_NACK_METHOD: {
                const amqp_basic_nack_t *a = f->payload.method.decoded;
                confirm(p, a->delivery_tag, a->multiple, -EPROTO);
                return 0;
        }
        default:
                return 0;
        }
}

static int declare_exchange(AmqpLink *l, const char *name, const char *type) {
        amqp_exchange_declare_t m = {
                .exchange = amqp_cstring_bytes(name),
                .type = amqp_cstring_bytes(type),
                .durable = true,
                .arguments = amqp_empty_table,
        };
        return amqp_link_call(l, AMQP_EXCHANGE_DECLARE_METHOD, &m, AMQP_EXCHANGE_DECLARE_OK_METHOD, NULL);
}

static int publisher_setup(AmqpLink *l, void *userdata) {
        AmqpPublisher *p = userdata;
        amqp_confirm_select_t select = {};
        amqp_queue_declare_t qd = {
                .queue = amqp_cstring_bytes(p->queue),
                .durable = true,
                .arguments = amqp_empty_table,
        };
        amqp_queue_bind_t qb = {
                .queue = amqp_cstring_bytes(p->queue),
                .exchange = amqp_cstring_bytes(p->exchange),
                .routing_key = amqp_cstring_bytes(p->routing_key),
                .arguments = amqp_empty_table,
        };
        int r;

        ring_reset(p);

        /* All pipelined; the link is READY when the last reply arrived. */
        r = amqp_link_call(l, AMQP_CONFIRM_SELECT_METHOD, &select, AMQP_CONFIRM_SELECT_OK_METHOD, NULL);
        if (r < 0)
                return r;
        r = declare_exchange(l, p->exchange, "direct");
        if (r < 0)
                return r;
        if (!isempty(p->events_exchange)) {
                r = declare_exchange(l, p->events_exchange, "fanout");
                if (r < 0)
                        return r;
        }
        r = amqp_link_call(l, AMQP_QUEUE_DECLARE_METHOD, &qd, AMQP_QUEUE_DECLARE_OK_METHOD, NULL);
        if (r < 0)
                return r;
        return amqp_link_call(l, AMQP_QUEUE_BIND_METHOD, &qb, AMQP_QUEUE_BIND_OK_METHOD, NULL);
}

static void publisher_ready(AmqpLink *l, void *userdata) {
        AmqpPublisher *p = userdata;

        /* Keep the bytes of unconfirmed messages well below the socket send buffer, so
         * that rabbitmq-c's blocking send never has to wait for the kernel. */
        p->max_unconfirmed_bytes = MAX(amqp_link_get_sndbuf(l) / 4, p->max_message_size + PUBLISH_OVERHEAD);
}

static void publisher_lost(AmqpLink *l, int error, void *userdata) {
        _cleanup_(publisher_unrefp) AmqpPublisher *p = publisher_ref(userdata);

        report_all(p, -ECONNRESET);
        if (!p->freeing)
                ring_reset(p);
}

static const AmqpLinkOps publisher_ops = {
        .setup = publisher_setup,
        .frame = publisher_frame,
        .ready = publisher_ready,
        .lost = publisher_lost,
};

int amqp_publisher_new(AmqpPublisher **ret, sd_event *e, const AmqpSettings *s) {
        _cleanup_(publisher_unrefp) AmqpPublisher *p = NULL;
        int r;

        assert_return(ret, -EINVAL);
        assert_return(e, -EINVAL);
        assert_return(s, -EINVAL);

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->n_ref = 1;
        p->event = sd_event_ref(e);
        p->exchange = strdup(s->exchange ?: AMQP_DEFAULT_EXCHANGE);
        p->routing_key = strdup(s->routing_key ?: AMQP_DEFAULT_ROUTING_KEY);
        p->queue = strdup(s->queue ?: AMQP_DEFAULT_QUEUE);
        p->events_exchange = strdup(s->events_exchange ?: AMQP_DEFAULT_EVENTS_EXCHANGE);
        if (!p->exchange || !p->routing_key || !p->queue || !p->events_exchange)
                return -ENOMEM;
        if (strlen(p->exchange) > 255 || strlen(p->routing_key) > 255 || strlen(p->queue) > 255 ||
            strlen(p->events_exchange) > 255 || isempty(p->queue))
                return -EINVAL;
        p->max_message_size = s->max_message_size ?: AMQP_DEFAULT_MAX_MESSAGE_SIZE;
        p->ring_size = MIN(s->max_unconfirmed ?: AMQP_DEFAULT_MAX_UNCONFIRMED, 65536U);
        p->ring = calloc(p->ring_size, sizeof *p->ring);
        if (!p->ring)
                return -ENOMEM;
        p->max_unconfirmed_bytes = p->max_message_size + PUBLISH_OVERHEAD;

        r = sd_event_add_time(e, &p->timer, CLOCK_MONOTONIC, 0, USEC_PER_MSEC, on_timer, p);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(p->timer, "amqp-confirm-timeout");
        ring_reset(p);

        r = amqp_link_new(&p->link, e, s, &publisher_ops, p);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(p);
        return 0;
}

AmqpPublisher *amqp_publisher_free(AmqpPublisher *p) {
        if (!p || p->freeing)
                return NULL;

        p->freeing = true;
        report_all(p, -ECANCELED);
        amqp_link_close(p->link);
        publisher_unref(p);
        return NULL;
}

bool amqp_publisher_is_connected(AmqpPublisher *p) {
        return p && !p->freeing && amqp_link_is_ready(p->link);
}

void amqp_publisher_set_state_callback(AmqpPublisher *p, AmqpStateCallback cb, void *userdata) {
        if (p)
                amqp_link_set_state_callback(p->link, cb, userdata);
}

size_t amqp_publisher_n_unconfirmed(AmqpPublisher *p) {
        return p ? p->n_unreported : 0;
}

static int publish(AmqpPublisher *p, const char *exchange, const char *routing_key, const char *content_type,
                   uint8_t delivery_mode, const void *body, size_t size, uint64_t timeout_usec,
                   AmqpConfirmCallback cb, void *userdata) {
        amqp_basic_properties_t props = {
                ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG,
                .content_type = amqp_cstring_bytes(content_type),
                .delivery_mode = delivery_mode,
        };
        size_t bytes;
        uint64_t now;
        Unconfirmed *u;
        int r;

        if (size > p->max_message_size)
                return -EMSGSIZE;
        if (strlen(exchange) > 255 || strlen(routing_key) > 255 || strlen(content_type) > 255)
                return -EINVAL;
        if (p->freeing || !amqp_link_is_ready(p->link))
                return -ENOTCONN;
        if (amqp_link_is_blocked(p->link))
                return -EAGAIN;
        if (p->n >= p->ring_size)
                return -ENOBUFS;
        bytes = size + strlen(exchange) + strlen(routing_key) + strlen(content_type) + PUBLISH_OVERHEAD;
        if (p->n > 0 && p->unconfirmed_bytes + bytes > p->max_unconfirmed_bytes)
                return -ENOBUFS;

        r = amqp_basic_publish(amqp_link_get_connection(p->link), AMQP_LINK_CHANNEL, amqp_cstring_bytes(exchange),
                               amqp_cstring_bytes(routing_key), false, false, &props,
                               (amqp_bytes_t) { .len = size, .bytes = (void *) body });
        /* On failure the connection is torn down; its lost() runs later from the loop. */
        r = amqp_link_check(p->link, r);
        if (r < 0)
                return r;

        (void) sd_event_now(p->event, CLOCK_MONOTONIC, &now);
        u = entry_at(p, p->n);
        *u = (Unconfirmed) {
                .deadline = now + (timeout_usec ?: AMQP_DEFAULT_CONFIRM_TIMEOUT_USEC),
                .bytes = bytes,
                .cb = cb,
                .userdata = userdata,
        };
        p->n++;
        p->next_tag++;
        p->n_unreported++;
        p->unconfirmed_bytes += bytes;
        timer_update(p, u->deadline);
        return 0;
}

int amqp_publisher_publish(AmqpPublisher *p, const char *exchange, const char *routing_key,
                           const char *content_type, const void *body, size_t size, uint64_t timeout_usec,
                           AmqpConfirmCallback cb, void *userdata) {
        assert_return(p, -EINVAL);
        assert_return(body || size == 0, -EINVAL);

        return publish(p, exchange ?: p->exchange, routing_key ?: p->routing_key,
                       content_type ?: "application/json", 2, body, size, timeout_usec, cb, userdata);
}

int amqp_publisher_publish_task(AmqpPublisher *p, const char *task_id, uint64_t timeout_usec,
                                AmqpConfirmCallback cb, void *userdata) {
        _cleanup_free_ char *body = NULL;
        int r;

        assert_return(p, -EINVAL);

        r = amqp_body_from_task_id(task_id, &body);
        if (r < 0)
                return r;
        return publish(p, p->exchange, p->routing_key, "application/json", 2, body, strlen(body), timeout_usec,
                       cb, userdata);
}

int amqp_events_publish(AmqpPublisher *p, const char *exchange_fanout, const char *body, uint64_t timeout_usec,
                        AmqpConfirmCallback cb, void *userdata) {
        assert_return(p, -EINVAL);
        assert_return(body, -EINVAL);

        exchange_fanout = exchange_fanout ?: p->events_exchange;
        if (isempty(exchange_fanout))
                return -EINVAL;
        return publish(p, exchange_fanout, "", "application/json", 1, body, strlen(body), timeout_usec, cb,
                       userdata);
}
