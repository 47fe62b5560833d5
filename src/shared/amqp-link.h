/* SPDX-License-Identifier: MIT */
#pragma once

/* Internal to the AMQP module: one AMQP connection with one channel (number 1),
 * driven by sd-event, that re-establishes itself with backoff. AmqpPublisher and
 * AmqpConsumer are built on it; nothing else should use it.
 *
 * Life of a connection: DISCONNECTED (reconnect timer armed) → CONNECTING
 * (getaddrinfo, non-blocking TCP connect) → HANDSHAKE (protocol header,
 * connection.start/start-ok, tune/tune-ok, open/open-ok, driven frame by frame from
 * the io source instead of rabbitmq-c's blocking amqp_login()) → SETUP
 * (channel.open, then ops->setup() sends its declarations with amqp_link_call();
 * replies are matched in order, as AMQP answers synchronous methods on a channel
 * in order) → READY once every call was answered → on any error back to
 * DISCONNECTED. ops->lost() and the state callback are called from a defer event
 * source, never from within an amqp_link_*() call. */

#include "amqp.h"

typedef struct AmqpLink AmqpLink;

typedef enum AmqpLinkState {
        AMQP_LINK_DISCONNECTED,
        AMQP_LINK_CONNECTING,
        AMQP_LINK_HANDSHAKE,
        AMQP_LINK_SETUP,
        AMQP_LINK_READY,
        AMQP_LINK_CLOSED,
} AmqpLinkState;

#define AMQP_LINK_CHANNEL 1

/* The reply to an amqp_link_call(); reply->decoded is borrowed. < 0 fails the connection. */
typedef int (*AmqpLinkReplyHandler)(AmqpLink *l, const amqp_method_t *reply, void *userdata);

typedef struct AmqpLinkOps {
        /* Channel 1 is open: send the declarations (amqp_link_call()). */
        int (*setup)(AmqpLink *l, void *userdata);
        /* Any other frame on channel 1 (deliveries, confirms, server-sent basic.cancel …).
         * Frames of other channels and connection-level methods are handled by the link.
         * Returning < 0 fails the connection. */
        int (*frame)(AmqpLink *l, const amqp_frame_t *frame, void *userdata);
        /* Every call was answered: the connection is READY. */
        void (*ready)(AmqpLink *l, void *userdata);
        /* The connection broke, or a connect attempt failed. Owners drop per-connection state. */
        void (*lost)(AmqpLink *l, int error, void *userdata);
} AmqpLinkOps;

/* Starts connecting from the event loop (never within this call). */
int amqp_link_new(AmqpLink **ret, sd_event *e, const AmqpSettings *s, const AmqpLinkOps *ops, void *userdata);
AmqpLink *amqp_link_ref(AmqpLink *l);
AmqpLink *amqp_link_unref(AmqpLink *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(AmqpLink *, amqp_link_unref);
/* Closes politely (connection.close, waits ≤ 1 s for close-ok), stops reconnecting,
 * never calls ops or the state callback again. Idempotent. */
void amqp_link_close(AmqpLink *l);

void amqp_link_set_state_callback(AmqpLink *l, AmqpStateCallback cb, void *userdata);
AmqpLinkState amqp_link_get_state(AmqpLink *l);
static inline bool amqp_link_is_ready(AmqpLink *l) {
        return amqp_link_get_state(l) == AMQP_LINK_READY;
}
static inline bool amqp_link_is_up(AmqpLink *l) {
        AmqpLinkState s = amqp_link_get_state(l);
        return s == AMQP_LINK_SETUP || s == AMQP_LINK_READY;
}
/* Valid while the link is up (SETUP or READY). */
amqp_connection_state_t amqp_link_get_connection(AmqpLink *l);
/* Increases with every successful login. */
uint64_t amqp_link_get_generation(AmqpLink *l);
/* The broker sent connection.blocked (resource alarm) and no unblocked yet. */
bool amqp_link_is_blocked(AmqpLink *l);
/* Effective socket send buffer of the current connection (bytes). */
size_t amqp_link_get_sndbuf(AmqpLink *l);

/* Sends a synchronous method on channel 1 and queues reply (+ handler, may be NULL).
 * -ENOTCONN when the link is not up, -EBUSY when too many calls are pending;
 * a failed write fails the connection and returns its error. */
int amqp_link_call(AmqpLink *l, amqp_method_number_t method, void *decoded, amqp_method_number_t reply,
                   AmqpLinkReplyHandler handler);
/* Sends an asynchronous method (basic.ack …) on channel 1. Errors as amqp_link_call(). */
int amqp_link_send_method(AmqpLink *l, amqp_method_number_t method, void *decoded);
/* Call after any rabbitmq-c function that writes: maps a failed status to errno and
 * fails the connection; makes sure frames rabbitmq-c read while writing get processed. */
int amqp_link_check(AmqpLink *l, int status);
/* Tears the connection down (if up) and reconnects after the backoff. error < 0. */
void amqp_link_fail(AmqpLink *l, int error);
