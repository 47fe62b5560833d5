/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>

#include "amqp-link.h"
#include "log.h"

/* Delivery tokens handed out: the low 40 bits are the broker's delivery tag (per
 * channel, from 1), the high 24 bits the link generation, so a token of an old
 * connection is recognised (-ESTALE) instead of acking some other message. */
#define TAG_BITS 40
#define TAG_MASK ((UINT64_C(1) << TAG_BITS) - 1)
#define GENERATION_MASK ((UINT64_C(1) << (64 - TAG_BITS)) - 1)

typedef enum RxState {
        RX_IDLE,        /* waiting for basic.deliver */
        RX_WANT_HEADER, /* got basic.deliver, waiting for the content header */
        RX_WANT_BODY,   /* collecting body frames */
} RxState;

struct AmqpConsumer {
        unsigned n_ref;
        bool freeing;
        sd_event *event;
        AmqpLink *link;
        AmqpDeliveryCallback cb;
        void *userdata;

        bool fanout;          /* server-named exclusive queue, automatic acks */
        char *exchange;
        char *routing_key;
        char *queue;          /* the configured queue; for fanout the current server-named one */
        char *consumer_tag;
        uint16_t prefetch;
        size_t max_message_size;

        bool paused;          /* wanted by the owner */
        bool consuming;       /* the broker confirmed basic.consume, no basic.cancel sent since */
        bool op_in_flight;    /* a basic.consume or basic.cancel awaits its reply */
        uint64_t generation;  /* link generation the current channel belongs to */

        RxState rx;
        uint64_t rx_tag;
        bool rx_redelivered;
        bool rx_oversized;
        uint64_t rx_size, rx_got;
        char *rx_body;

        uint64_t *unacked;    /* broker delivery tags handed out and not settled (manual acks) */
        size_t n_unacked, n_unacked_allocated;
};

static AmqpConsumer *consumer_ref(AmqpConsumer *c) {
        c->n_ref++;
        return c;
}

static void rx_reset(AmqpConsumer *c) {
        c->rx = RX_IDLE;
        c->rx_body = mfree(c->rx_body);
        c->rx_size = c->rx_got = 0;
        c->rx_oversized = false;
}

static AmqpConsumer *consumer_unref(AmqpConsumer *c) {
        if (!c)
                return NULL;
        assert(c->n_ref > 0);
        if (--c->n_ref > 0)
                return NULL;

        amqp_link_close(c->link);
        amqp_link_unref(c->link);
        sd_event_unref(c->event);
        rx_reset(c);
        free(c->unacked);
        free(c->exchange);
        free(c->routing_key);
        free(c->queue);
        free(c->consumer_tag);
        return mfree(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(AmqpConsumer *, consumer_unref);

static int reconcile(AmqpConsumer *c);

static int on_consume_ok(AmqpLink *l, const amqp_method_t *reply, void *userdata) {
        AmqpConsumer *c = userdata;

        c->op_in_flight = false;
        c->consuming = true;
        return reconcile(c);
}

static int on_cancel_ok(AmqpLink *l, const amqp_method_t *reply, void *userdata) {
        AmqpConsumer *c = userdata;

        c->op_in_flight = false;
        c->consuming = false;
        return reconcile(c);
}

/* Brings the broker's view (consuming or not) in line with what the owner wants,
 * one basic.consume/basic.cancel at a time. */
static int reconcile(AmqpConsumer *c) {
        int r;

        if (c->freeing || !amqp_link_is_up(c->link) || c->op_in_flight || !c->queue)
                return 0;

        if (!c->paused && !c->consuming) {
                amqp_basic_consume_t m = {
                        .queue = amqp_cstring_bytes(c->queue),
                        .consumer_tag = amqp_cstring_bytes(c->consumer_tag),
                        .no_ack = c->fanout,
                        .arguments = amqp_empty_table,
                };
                r = amqp_link_call(c->link, AMQP_BASIC_CONSUME_METHOD, &m, AMQP_BASIC_CONSUME_OK_METHOD,
                                   on_consume_ok);
        } else if (c->paused && c->consuming) {
                amqp_basic_cancel_t m = {
                        .consumer_tag = amqp_cstring_bytes(c->consumer_tag),
                };
                r = amqp_link_call(c->link, AMQP_BASIC_CANCEL_METHOD, &m, AMQP_BASIC_CANCEL_OK_METHOD,
                                   on_cancel_ok);
        } else
                return 0;
        if (r < 0)
                return r;

        c->op_in_flight = true;
        return 0;
}

static int unacked_add(AmqpConsumer *c, uint64_t tag) {
        if (c->n_unacked >= c->n_unacked_allocated) {
                size_t n = MAX(c->n_unacked_allocated * 2, (size_t) c->prefetch);
                uint64_t *a = reallocarray(c->unacked, n, sizeof *a);
                if (!a)
                        return -ENOMEM;
                c->unacked = a;
                c->n_unacked_allocated = n;
        }
        c->unacked[c->n_unacked++] = tag;
        return 0;
}

static int unacked_find(AmqpConsumer *c, uint64_t tag) {
        for (size_t i = 0; i < c->n_unacked; i++)
                if (c->unacked[i] == tag)
                        return (int) i;
        return -ENOENT;
}

static void unacked_remove(AmqpConsumer *c, size_t i) {
        c->unacked[i] = c->unacked[--c->n_unacked];
}

static int send_reject(AmqpConsumer *c, uint64_t tag, bool requeue) {
        amqp_basic_reject_t m = {
                .delivery_tag = tag,
                .requeue = requeue,
        };
        return amqp_link_send_method(c->link, AMQP_BASIC_REJECT_METHOD, &m);
}

static int deliver(AmqpConsumer *c) {
        _cleanup_(consumer_unrefp) AmqpConsumer *ref = NULL;
        _cleanup_free_ char *body = TAKE_PTR(c->rx_body);
        uint64_t tag = c->rx_tag, size = c->rx_size;
        bool redelivered = c->rx_redelivered, oversized = c->rx_oversized;
        int r;

        rx_reset(c);

        if (oversized) {
                log_debug("AMQP: message of %" PRIu64 " bytes on queue '%s' exceeds the limit of %zu bytes, dropped",
                          size, strna(c->queue), c->max_message_size);
                return c->fanout ? 0 : send_reject(c, tag, false);
        }
        if (c->paused) /* on the wire before our basic.cancel: back to the queue */
                return c->fanout ? 0 : send_reject(c, tag, true);

        if (!c->fanout) {
                r = unacked_add(c, tag);
                if (r < 0)
                        return r;
        }

        if (!body) { /* empty message */
                body = strdup("");
                if (!body)
                        return -ENOMEM;
        }

        ref = consumer_ref(c);
        c->cb(c, ((c->generation & GENERATION_MASK) << TAG_BITS) | (tag & TAG_MASK), body, (size_t) size,
              redelivered, c->userdata);
        return 0;
}

static int consumer_frame(AmqpLink *l, const amqp_frame_t *f, void *userdata) {
        AmqpConsumer *c = userdata;

        switch (f->frame_type) {
        case AMQP_FRAME_METHOD:
                switch (f->payload.method.id) {
                case AMQP_BASIC_DELIVER_METHOD: {
                        const amqp_basic_deliver_t *d = f->payload.method.decoded;

                        if (c->rx != RX_IDLE)
                                return -EPROTO;
                        if (d->delivery_tag > TAG_MASK)
                                return -EOVERFLOW; /* reconnect: tags start at 1 again */
                        c->rx = RX_WANT_HEADER;
                        c->rx_tag = d->delivery_tag;
                        c->rx_redelivered = d->redelivered;
                        return 0;
                }
                case AMQP_BASIC_CANCEL_METHOD:
                        /* The broker cancelled us (queue deleted, node of the queue down):
                         * reconnect, which declares the queue again. */
                        log_debug("AMQP: broker cancelled the consumer of queue '%s'", strna(c->queue));
                        return -ENOENT;
                default:
                        return 0;
                }

        case AMQP_FRAME_HEADER:
                if (c->rx != RX_WANT_HEADER)
                        return -EPROTO;
                c->rx_size = f->payload.properties.body_size;
                c->rx_got = 0;
                if (c->rx_size > c->max_message_size)
                        c->rx_oversized = true;
                else if (c->rx_size > 0) {
                        c->rx_body = malloc(c->rx_size + 1);
                        if (!c->rx_body)
                                return -ENOMEM;
                }
                if (c->rx_size == 0)
                        return deliver(c);
                c->rx = RX_WANT_BODY;
                return 0;

        case AMQP_FRAME_BODY: {
                size_t n = f->payload.body_fragment.len;

                if (c->rx != RX_WANT_BODY || n > c->rx_size - c->rx_got)
                        return -EPROTO;
                if (!c->rx_oversized)
                        memcpy(c->rx_body + c->rx_got, f->payload.body_fragment.bytes, n);
                c->rx_got += n;
                if (c->rx_got < c->rx_size)
                        return 0;
                if (c->rx_body)
                        c->rx_body[c->rx_size] = 0;
                return deliver(c);
        }

        default:
                return 0;
        }
}

static int on_queue_declared(AmqpLink *l, const amqp_method_t *reply, void *userdata) {
        AmqpConsumer *c = userdata;
        const amqp_queue_declare_ok_t *ok = reply->decoded;
        amqp_queue_bind_t qb = {
                .exchange = amqp_cstring_bytes(c->exchange),
                .routing_key = amqp_cstring_bytes(""),
                .arguments = amqp_empty_table,
        };
        char *name;
        int r;

        if (!c->fanout)
                return 0;

        if (ok->queue.len == 0 || ok->queue.len > 255)
                return -EPROTO;
        name = strndup(ok->queue.bytes, ok->queue.len);
        if (!name)
                return -ENOMEM;
        free_and_replace(c->queue, name);

        qb.queue = amqp_cstring_bytes(c->queue);
        r = amqp_link_call(l, AMQP_QUEUE_BIND_METHOD, &qb, AMQP_QUEUE_BIND_OK_METHOD, NULL);
        if (r < 0)
                return r;
        return reconcile(c);
}

static int consumer_setup(AmqpLink *l, void *userdata) {
        AmqpConsumer *c = userdata;
        amqp_exchange_declare_t ed = {
                .exchange = amqp_cstring_bytes(c->exchange),
                .type = amqp_cstring_bytes(c->fanout ? "fanout" : "direct"),
                .durable = true,
                .arguments = amqp_empty_table,
        };
        amqp_queue_declare_t qd = {
                .arguments = amqp_empty_table,
        };
        int r;

        c->generation = amqp_link_get_generation(l);
        c->consuming = c->op_in_flight = false;
        c->n_unacked = 0;
        rx_reset(c);

        r = amqp_link_call(l, AMQP_EXCHANGE_DECLARE_METHOD, &ed, AMQP_EXCHANGE_DECLARE_OK_METHOD, NULL);
        if (r < 0)
                return r;

        if (c->fanout) {
                c->queue = mfree(c->queue);
                qd.queue = amqp_empty_bytes; /* the broker names it */
                qd.exclusive = true;
                qd.auto_delete = true;
                /* Continues in on_queue_declared(): bind, consume. */
                return amqp_link_call(l, AMQP_QUEUE_DECLARE_METHOD, &qd, AMQP_QUEUE_DECLARE_OK_METHOD,
                                      on_queue_declared);
        }

        qd.queue = amqp_cstring_bytes(c->queue);
        qd.durable = true;
        r = amqp_link_call(l, AMQP_QUEUE_DECLARE_METHOD, &qd, AMQP_QUEUE_DECLARE_OK_METHOD, NULL);
        if (r < 0)
                return r;

        amqp_queue_bind_t qb = {
                .queue = amqp_cstring_bytes(c->queue),
                .exchange = amqp_cstring_bytes(c->exchange),
                .routing_key = amqp_cstring_bytes(c->routing_key),
                .arguments = amqp_empty_table,
        };
        r = amqp_link_call(l, AMQP_QUEUE_BIND_METHOD, &qb, AMQP_QUEUE_BIND_OK_METHOD, NULL);
        if (r < 0)
                return r;

        amqp_basic_qos_t qos = {
                .prefetch_count = c->prefetch,
                .global = false, /* per consumer */
        };
        r = amqp_link_call(l, AMQP_BASIC_QOS_METHOD, &qos, AMQP_BASIC_QOS_OK_METHOD, NULL);
        if (r < 0)
                return r;

        return reconcile(c);
}

static void consumer_lost(AmqpLink *l, int error, void *userdata) {
        AmqpConsumer *c = userdata;

        /* The broker requeues everything unsettled; tokens of this connection are stale now. */
        c->consuming = c->op_in_flight = false;
        c->n_unacked = 0;
        rx_reset(c);
        if (c->fanout)
                c->queue = mfree(c->queue);
}

static const AmqpLinkOps consumer_ops = {
        .setup = consumer_setup,
        .frame = consumer_frame,
        .lost = consumer_lost,
};

static int consumer_new(AmqpConsumer **ret, sd_event *e, const AmqpSettings *s, bool fanout, const char *queue,
                        const char *exchange, uint16_t prefetch, AmqpDeliveryCallback cb, void *userdata) {
        _cleanup_(consumer_unrefp) AmqpConsumer *c = NULL;
        static unsigned counter = 0;
        int r;

        assert_return(ret, -EINVAL);
        assert_return(e, -EINVAL);
        assert_return(s, -EINVAL);
        assert_return(cb, -EINVAL);

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        c->event = sd_event_ref(e);
        c->cb = cb;
        c->userdata = userdata;
        c->fanout = fanout;
        c->prefetch = prefetch ?: 1;
        c->max_message_size = s->max_message_size ?: AMQP_DEFAULT_MAX_MESSAGE_SIZE;

        c->exchange = strdup(exchange);
        c->routing_key = strdup(s->routing_key ?: AMQP_DEFAULT_ROUTING_KEY);
        if (!c->exchange || !c->routing_key)
                return -ENOMEM;
        if (!fanout) {
                c->queue = strdup(queue);
                if (!c->queue)
                        return -ENOMEM;
                if (isempty(c->queue) || strlen(c->queue) > 255)
                        return -EINVAL;
        }
        if ((fanout && isempty(c->exchange)) || strlen(c->exchange) > 255 || strlen(c->routing_key) > 255)
                return -EINVAL;
        if (asprintf(&c->consumer_tag, "%s-%d-%u", program_invocation_short_name, (int) getpid(), ++counter) < 0)
                return -ENOMEM;

        r = amqp_link_new(&c->link, e, s, &consumer_ops, c);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(c);
        return 0;
}

int amqp_consumer_new(AmqpConsumer **ret, sd_event *e, const AmqpSettings *s, const char *queue, uint16_t prefetch,
                      AmqpDeliveryCallback cb, void *userdata) {
        assert_return(s, -EINVAL);

        return consumer_new(ret, e, s, false, queue ?: s->queue ?: AMQP_DEFAULT_QUEUE,
                            s->exchange ?: AMQP_DEFAULT_EXCHANGE, prefetch, cb, userdata);
}

int amqp_consumer_new_fanout(AmqpConsumer **ret, sd_event *e, const AmqpSettings *s, const char *exchange_fanout,
                             AmqpDeliveryCallback cb, void *userdata) {
        assert_return(s, -EINVAL);

        return consumer_new(ret, e, s, true, NULL,
                            exchange_fanout ?: s->events_exchange ?: AMQP_DEFAULT_EVENTS_EXCHANGE, 0, cb,
                            userdata);
}

AmqpConsumer *amqp_consumer_free(AmqpConsumer *c) {
        if (!c || c->freeing)
                return NULL;

        c->freeing = true;
        amqp_link_close(c->link);
        consumer_unref(c);
        return NULL;
}

bool amqp_consumer_is_connected(AmqpConsumer *c) {
        return c && !c->freeing && amqp_link_is_ready(c->link);
}

void amqp_consumer_set_state_callback(AmqpConsumer *c, AmqpStateCallback cb, void *userdata) {
        if (c)
                amqp_link_set_state_callback(c->link, cb, userdata);
}

size_t amqp_consumer_n_unacked(AmqpConsumer *c) {
        return c ? c->n_unacked : 0;
}

const char *amqp_consumer_queue(AmqpConsumer *c) {
        return c ? c->queue : NULL;
}

static int settle(AmqpConsumer *c, uint64_t delivery_tag, bool ack, bool requeue) {
        uint64_t tag = delivery_tag & TAG_MASK;
        int i, r;

        assert_return(c, -EINVAL);

        if (c->fanout)
                return -EOPNOTSUPP;
        if (c->freeing || !amqp_link_is_up(c->link) ||
            (delivery_tag >> TAG_BITS) != (c->generation & GENERATION_MASK))
                return -ESTALE;

        i = unacked_find(c, tag);
        if (i < 0)
                return i;

        if (ack) {
                amqp_basic_ack_t m = {
                        .delivery_tag = tag,
                        .multiple = false,
                };
                r = amqp_link_send_method(c->link, AMQP_BASIC_ACK_METHOD, &m);
        } else
                r = send_reject(c, tag, requeue);
        if (r < 0)
                return r == -ENOTCONN ? -ESTALE : r;

        unacked_remove(c, (size_t) i);
        return 0;
}

int amqp_consumer_ack(AmqpConsumer *c, uint64_t delivery_tag) {
        return settle(c, delivery_tag, true, false);
}

int amqp_consumer_reject(AmqpConsumer *c, uint64_t delivery_tag, bool requeue) {
        return settle(c, delivery_tag, false, requeue);
}

int amqp_consumer_pause(AmqpConsumer *c) {
        assert_return(c, -EINVAL);

        c->paused = true;
        return reconcile(c);
}

int amqp_consumer_resume(AmqpConsumer *c) {
        assert_return(c, -EINVAL);

        c->paused = false;
        return reconcile(c);
}

bool amqp_consumer_is_paused(AmqpConsumer *c) {
        return c && c->paused;
}
