/* SPDX-License-Identifier: MIT */

/* This header has the same name as rabbitmq-c's <amqp.h>, and src/shared is on the
 * include path of every target, so rabbitmq-c's own headers (which say
 * "#include <amqp.h>") find this file first. Like gnulib's wrapper headers it
 * therefore pulls in the real one with #include_next before anything else. The
 * two-level guard makes that work in every include order, also when this file is
 * included as "amqp.h" from src/shared itself (then include_next starts from the
 * top of the search path, finds this file once more, and that nested copy pulls
 * in the real header). Do not replace it with #pragma once. */
#ifndef AMQP_H
#include_next <amqp.h>
#endif

#ifndef DTASK_SHARED_AMQP_H
#define DTASK_SHARED_AMQP_H

#ifndef AMQP_H
#error "rabbitmq-c's <amqp.h> was not found behind src/shared/amqp.h"
#endif

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "macro.h"

/* AMQP 0-9-1 (RabbitMQ) on sd-event, built on rabbitmq-c.
 *
 * An AmqpPublisher and an AmqpConsumer each own one connection with one channel.
 * Both connect in the background and reconnect by themselves after the connection
 * broke (exponential backoff 100 ms … 5 s with jitter); _new() never waits for the
 * broker. On every (re)connect they declare their topology (idempotent, compat
 * with the .NET system): the direct durable exchange, the durable queue
 * (non-exclusive, non-auto-delete, no arguments) and its binding; the publisher
 * also declares the fanout events exchange.
 *
 * Nothing here logs above debug level; errors are negative errno values
 * (rabbitmq-c statuses and AMQP reply codes are mapped at the boundary, see
 * amqp_status_to_errno()). The URL password never appears in a log line.
 *
 * Where the loop can block (rabbitmq-c has no non-blocking API; this layer drives
 * its frame codec from sd-event instead of calling its blocking helpers):
 *  - Host names are resolved with a blocking getaddrinfo() on each connect
 *    attempt (a numeric address or an /etc/hosts entry costs nothing).
 *  - Nothing else waits for the network: the TCP connect is non-blocking
 *    (connect_timeout_usec) and the AMQP handshake (protocol header,
 *    connection.start/tune/open) runs frame by frame from the io source with a
 *    deadline (handshake_timeout_usec), not through amqp_login(). A frozen
 *    broker that accepts TCP but never answers costs a timeout, not a stall.
 *  - Writes (publish, ack, heartbeat) go through rabbitmq-c's blocking send path.
 *    They do not block in practice: the bytes of unconfirmed publishes are
 *    limited to a quarter of the socket send buffer (SO_SNDBUF is set to 1 MiB,
 *    the kernel caps it at 2 × net.core.wmem_max), so the kernel always has room.
 *    If the peer vanishes while the buffer is full anyway, TCP_USER_TIMEOUT
 *    (= heartbeat) makes the kernel fail the socket, which ends the wait.
 *  - amqp_*_free() closes the connection politely (connection.close and its
 *    reply) and waits at most 1 s for the broker's close-ok.
 * Everything else (channel setup, declarations, consume/cancel, confirms,
 * deliveries, heartbeats) is asynchronous, driven by an io source on the socket
 * and timers. */

typedef struct AmqpSettings {
        const char *url;                 /* amqp://user:pass@host[:port][/vhost]; NULL: amqp://guest:guest@localhost:5672.
                                          * Empty vhost (trailing "/") means "/" (like the .NET client). amqps:// → -EPROTONOSUPPORT */
        const char *exchange;            /* NULL: "task_exchange" (direct, durable) */
        const char *queue;               /* NULL: "task_queue" (durable) */
        const char *routing_key;         /* NULL: "task_key" */
        const char *events_exchange;     /* NULL: "dtask_events" (fanout, durable); "": the publisher declares none */
        const char *connection_name;     /* shown by `rabbitmqctl list_connections client_properties`; NULL: program name */
        unsigned heartbeat_sec;          /* 0: 30; the broker may negotiate it lower. A peer silent for 2× is dead */
        uint64_t connect_timeout_usec;   /* non-blocking TCP connect, 0: 5 s */
        uint64_t handshake_timeout_usec; /* AMQP handshake after TCP is up (asynchronous), 0: 2 s */
        size_t max_message_size;         /* larger bodies: publish -EMSGSIZE, delivery rejected (no requeue); 0: 64 KiB */
        unsigned max_unconfirmed;        /* publisher: bound of outstanding confirms; 0: 1024, at most 65536 */
} AmqpSettings;

#define AMQP_DEFAULT_URL "amqp://guest:guest@localhost:5672"
#define AMQP_DEFAULT_EXCHANGE "task_exchange"
#define AMQP_DEFAULT_QUEUE "task_queue"
#define AMQP_DEFAULT_ROUTING_KEY "task_key"
#define AMQP_DEFAULT_EVENTS_EXCHANGE "dtask_events" /* as AMQP_EVENTS_EXCHANGE in config-keys.c */
#define AMQP_DEFAULT_HEARTBEAT_SEC 30U
#define AMQP_DEFAULT_CONNECT_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define AMQP_DEFAULT_HANDSHAKE_TIMEOUT_USEC (2 * USEC_PER_SEC)
#define AMQP_DEFAULT_MAX_MESSAGE_SIZE ((size_t) 64 * 1024)
#define AMQP_DEFAULT_MAX_UNCONFIRMED 1024U
#define AMQP_DEFAULT_CONFIRM_TIMEOUT_USEC (10 * USEC_PER_SEC)

/* Connection state changes of a publisher or consumer, for /readyz, logging and
 * re-synchronisation. connected=true, error=0: the connection is up and the
 * topology declared (for a consumer: consuming, unless paused). connected=false:
 * the connection was lost or a connect attempt failed with error (< 0, e.g.
 * -ECONNREFUSED, -EACCES bad credentials, -ETIMEDOUT). While disconnected it is
 * called again only when the error changes, so it can be logged as is. Events on
 * the fanout channel sent while a consumer was disconnected are lost: re-check
 * state on connected=true. */
typedef void (*AmqpStateCallback)(bool connected, int error, void *userdata);

/* ---- Publisher ---------------------------------------------------------- */

typedef struct AmqpPublisher AmqpPublisher;

/* The outcome of one publish, called exactly once for every publish that
 * returned 0, always from the event loop, never from within
 * amqp_publisher_publish(). error: 0 the broker confirmed (basic.ack: the
 * message is routed and, being persistent, on disk for durable queues), -EPROTO
 * nacked, -ECONNRESET the connection was lost before the confirm (the message
 * may or may not have arrived: publish again, consumers must cope with
 * duplicates), -ETIMEDOUT no confirm within timeout_usec, -ECANCELED the
 * publisher was freed (then called from within amqp_publisher_free()). */
typedef void (*AmqpConfirmCallback)(AmqpPublisher *p, int error, void *userdata);

/* Copies everything it needs from s. -EINVAL bad URL/settings, -EPROTONOSUPPORT amqps://. */
int amqp_publisher_new(AmqpPublisher **ret, sd_event *e, const AmqpSettings *s);
/* Fails outstanding confirms with -ECANCELED, closes the connection (waits ≤ 1 s).
 * Accepts NULL; may be called from within any callback of this publisher. */
AmqpPublisher *amqp_publisher_free(AmqpPublisher *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(AmqpPublisher *, amqp_publisher_free);

/* Connected, channel open, confirms enabled and topology declared. The state
 * callback reports later changes only; it runs from the event loop. */
bool amqp_publisher_is_connected(AmqpPublisher *p);
void amqp_publisher_set_state_callback(AmqpPublisher *p, AmqpStateCallback cb, void *userdata);
/* Number of publishes whose confirm has not been reported yet. */
size_t amqp_publisher_n_unconfirmed(AmqpPublisher *p);

/* Publishes a persistent message (delivery_mode 2) with publisher confirms.
 * exchange/routing_key NULL: the settings' ones; content_type NULL: application/json;
 * timeout_usec 0: 10 s; cb may be NULL (the message is still tracked).
 * Returns at once: 0 queued (cb will be called), -ENOTCONN not connected (the
 * caller keeps the message and retries later), -EAGAIN the broker blocked this
 * connection (resource alarm), -ENOBUFS the window of unconfirmed messages is
 * full (max_unconfirmed, or their bytes reach the send-buffer budget; a message
 * whose confirm timed out keeps its place until the broker confirms it or the
 * connection drops), -EMSGSIZE body larger than max_message_size, -ECONNRESET
 * the write failed (the connection is being re-established). cb is not called
 * when this fails. */
int amqp_publisher_publish(AmqpPublisher *p, const char *exchange, const char *routing_key,
                           const char *content_type, const void *body, size_t size,
                           uint64_t timeout_usec, AmqpConfirmCallback cb, void *userdata);

/* Publishes the task id as the compat message body ("\"<uuid>\"") to the settings'
 * exchange and routing key. -EINVAL when id is not a UUID; else as above. */
int amqp_publisher_publish_task(AmqpPublisher *p, const char *task_id, uint64_t timeout_usec,
                                AmqpConfirmCallback cb, void *userdata);

/* Publishes a transient (delivery_mode 1) JSON message to a fanout exchange
 * (NULL: the settings' events_exchange), routing key "", with publisher confirms.
 * Every AmqpConsumer made with amqp_consumer_new_fanout() on that exchange and
 * connected at that moment receives it. Errors as amqp_publisher_publish(). */
int amqp_events_publish(AmqpPublisher *p, const char *exchange_fanout, const char *body,
                        uint64_t timeout_usec, AmqpConfirmCallback cb, void *userdata);

/* ---- Consumer ------------------------------------------------------------ */

typedef struct AmqpConsumer AmqpConsumer;

/* One message. body (size bytes, followed by a NUL not counted in size) is
 * borrowed: valid until the callback returns. delivery_tag is an opaque token for
 * amqp_consumer_ack()/_reject(); it also identifies the connection the message
 * came on. Ack or reject every delivery exactly once, now or later (a delivery
 * that is never settled stays with this consumer until the connection drops,
 * and counts against prefetch). redelivered: the broker delivered it before (to
 * this or another consumer) without an ack. Messages larger than
 * max_message_size never reach the callback: they are rejected without requeue. */
typedef void (*AmqpDeliveryCallback)(AmqpConsumer *c, uint64_t delivery_tag, const void *body,
                                     size_t size, bool redelivered, void *userdata);

/* Consumes queue (NULL: the settings' queue), declared durable and bound to the
 * settings' exchange with the settings' routing key, with manual acks and
 * basic.qos(prefetch) (0: 1). Messages of a connection that is lost are redelivered
 * by the broker (to any consumer), with redelivered=true. */
int amqp_consumer_new(AmqpConsumer **ret, sd_event *e, const AmqpSettings *s, const char *queue,
                      uint16_t prefetch, AmqpDeliveryCallback cb, void *userdata);

/* Event consumer: declares the fanout exchange (NULL: the settings' events_exchange;
 * durable), an exclusive, auto-delete, server-named queue bound to it, and consumes
 * with automatic acks: every message published to the exchange while connected is
 * delivered once, then gone. amqp_consumer_ack()/_reject() return -EOPNOTSUPP. */
int amqp_consumer_new_fanout(AmqpConsumer **ret, sd_event *e, const AmqpSettings *s,
                             const char *exchange_fanout, AmqpDeliveryCallback cb, void *userdata);

/* Unsettled deliveries are returned to the queue by the broker when the
 * connection closes. Waits ≤ 1 s for the broker's close-ok. Accepts NULL; may
 * be called from within any callback of this consumer. */
AmqpConsumer *amqp_consumer_free(AmqpConsumer *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(AmqpConsumer *, amqp_consumer_free);

bool amqp_consumer_is_connected(AmqpConsumer *c);
void amqp_consumer_set_state_callback(AmqpConsumer *c, AmqpStateCallback cb, void *userdata);
/* Deliveries handed out on the current connection and not yet acked/rejected. */
size_t amqp_consumer_n_unacked(AmqpConsumer *c);
/* The queue consumed (for a fanout consumer the server-generated name once
 * connected, else NULL). */
const char *amqp_consumer_queue(AmqpConsumer *c);

/* Settle a delivery. 0: sent. -ESTALE: the delivery came on a connection that is
 * gone (the broker redelivers it anyway), -ENOENT: unknown or already settled,
 * -EOPNOTSUPP: fanout consumer, -ECONNRESET: the write failed (the connection is
 * being re-established; the message will be redelivered). */
int amqp_consumer_ack(AmqpConsumer *c, uint64_t delivery_tag);
int amqp_consumer_reject(AmqpConsumer *c, uint64_t delivery_tag, bool requeue);

/* Stop / restart receiving (basic.cancel / basic.consume), e.g. for a graceful
 * shutdown: pause, finish and ack what is running, free. Asynchronous and
 * idempotent; the state persists across reconnects. After pause returns the
 * callback is not called until resume: messages already on the wire are
 * requeued by the consumer itself (dropped for a fanout consumer). Unsettled
 * deliveries can still be acked/rejected while paused. */
int amqp_consumer_pause(AmqpConsumer *c);
int amqp_consumer_resume(AmqpConsumer *c);
bool amqp_consumer_is_paused(AmqpConsumer *c);

/* ---- Message bodies and helpers ------------------------------------------ */

/* Task messages (compat): the body is the task id as a JSON string, with quotes.
 * from: id must be a UUID (any case); the body holds it lower-cased. -EINVAL otherwise.
 * to: accepts exactly one JSON string (surrounding JSON whitespace allowed, escapes
 * decoded) whose value is a UUID; returns it lower-cased. -EBADMSG for anything
 * else (not JSON, not a string, not a UUID, trailing data, > 1 KiB). */
int amqp_body_from_task_id(const char *id, char **ret);
int amqp_body_to_task_id(const void *body, size_t size, char **ret);

/* Event messages on the fanout exchange: {"event":"<name>","taskId":"<uuid>"}.
 * name: 1–32 of [a-z0-9_.-] (e.g. "cancelled", "expired"). parse: -EBADMSG when the
 * body is not such an object (other members are ignored, for extensions). */
int amqp_event_body_build(const char *event, const char *task_id, char **ret);
int amqp_event_body_parse(const void *body, size_t size, char **ret_event, char **ret_task_id);

/* true for "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex, any case). */
bool amqp_is_uuid(const char *s, size_t n);
/* A copy of the first 36 characters of s, lower-cased; NULL without memory. */
char *amqp_uuid_lower(const char *s);
/* true for an event name: 1–32 of [a-z0-9_.-]. */
bool amqp_event_name_valid(const char *s, size_t n);

/* The parts of an AMQP URL (percent-decoded). */
typedef struct AmqpUrl {
        char *user;
        char *password; /* erased on amqp_url_done() */
        char *host;
        uint16_t port;
        char *vhost;
} AmqpUrl;
/* -EINVAL malformed, -EPROTONOSUPPORT amqps:// (TLS is not supported), -ENOMEM. */
int amqp_url_parse(const char *url, AmqpUrl *ret);
void amqp_url_done(AmqpUrl *u);
/* A copy of url safe to log: the password replaced by "***" (also for strings
 * that are not valid URLs: whatever could be a password is hidden). */
int amqp_url_redact(const char *url, char **ret);

/* rabbitmq-c status (AMQP_STATUS_*) → negative errno; AMQP_STATUS_OK → 0. */
int amqp_status_to_errno(int status);
/* AMQP reply code of connection.close/channel.close → negative errno (e.g. 403 → -EACCES). */
int amqp_reply_code_to_errno(unsigned code);
/* amqp_rpc_reply_t → negative errno, 0 for AMQP_RESPONSE_NORMAL. */
int amqp_rpc_reply_to_errno(const amqp_rpc_reply_t *r);

#endif /* DTASK_SHARED_AMQP_H */
