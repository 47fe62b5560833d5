/* SPDX-License-Identifier: MIT */
/* Integration tests of src/shared/amqp.h against a real RabbitMQ (DTASK_AMQP_URL,
 * exported by `tools/dev test`; without it the test is skipped, exit 77).
 *
 * Every run uses its own exchanges and queue ("dtask-test-<pid>-<random>-…") and
 * deletes them at the end, so the real task_queue is never touched.
 *
 * Without arguments: the tests that leave the broker alone. With the argument
 * "reconnect": stops and restarts the broker (by default `$DTASK_ROOT/tools/dev
 * stop rabbitmq` / `start rabbitmq`; DTASK_AMQP_STOP_CMD / DTASK_AMQP_START_CMD
 * override them), so meson runs that one alone (is_parallel: false). */

#include <amqp_tcp_socket.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <cmocka.h>

#include "amqp.h"
#include "log.h"

#define N_MESSAGES 100
#define PREFETCH 10

static const char *url;
static char run_id[64];

/* ---- helpers ------------------------------------------------------------ */

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

typedef bool (*Condition)(void *userdata);

/* The longest single loop iteration seen: how long the AMQP layer blocked the loop. */
static uint64_t max_iteration_usec;

/* Runs the loop until cond holds or timeout passed; returns whether cond holds. */
static bool run_until(sd_event *e, Condition cond, void *userdata, uint64_t timeout_usec) {
        uint64_t end = now_usec() + timeout_usec;

        while (!cond(userdata)) {
                uint64_t t = now_usec();

                if (t >= end)
                        return false;
                assert_true(sd_event_run(e, 50 * USEC_PER_MSEC) >= 0);
                max_iteration_usec = MAX(max_iteration_usec, now_usec() - t);
        }
        return true;
}

static bool never(void *userdata) {
        return false;
}

static void run_for(sd_event *e, uint64_t usec) {
        (void) run_until(e, never, NULL, usec);
}

static void random_uuid(char ret[static 37]) {
        uint8_t b[16];

        assert_int_equal(getrandom(b, sizeof b, 0), (ssize_t) sizeof b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        snprintf(ret, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
                 b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

typedef struct Names {
        char exchange[128];
        char queue[128];
        char routing_key[128];
        char events[128];
} Names;

static void names_init(Names *n, const char *test) {
        snprintf(n->exchange, sizeof n->exchange, "dtask-test-%s-%s-exchange", run_id, test);
        snprintf(n->queue, sizeof n->queue, "dtask-test-%s-%s-queue", run_id, test);
        snprintf(n->routing_key, sizeof n->routing_key, "dtask-test-%s-%s-key", run_id, test);
        snprintf(n->events, sizeof n->events, "dtask-test-%s-%s-events", run_id, test);
}

static AmqpSettings settings_for(const Names *n) {
        return (AmqpSettings) {
                .url = url,
                .exchange = n->exchange,
                .queue = n->queue,
                .routing_key = n->routing_key,
                .events_exchange = n->events,
                .connection_name = "dtask test-amqp-dispatch",
        };
}

/* A plain blocking rabbitmq-c connection for checks and cleanup. */
static amqp_connection_state_t admin_connect(void) {
        AmqpUrl u = {};
        amqp_connection_state_t c;
        amqp_socket_t *s;
        amqp_rpc_reply_t r;

        assert_int_equal(amqp_url_parse(url, &u), 0);
        c = amqp_new_connection();
        assert_non_null(c);
        s = amqp_tcp_socket_new(c);
        assert_non_null(s);
        assert_int_equal(amqp_socket_open(s, u.host, u.port), AMQP_STATUS_OK);
        r = amqp_login(c, u.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, u.user, u.password);
        assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
        assert_non_null(amqp_channel_open(c, 1));
        amqp_url_done(&u);
        return c;
}

static void admin_close(amqp_connection_state_t c) {
        (void) amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        (void) amqp_destroy_connection(c);
}

/* Messages ready in the queue (passive declare), -1 when it does not exist. */
static long queue_message_count(const char *queue) {
        amqp_connection_state_t c = admin_connect();
        amqp_queue_declare_ok_t *ok;
        long n;

        ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), true, false, false, false, amqp_empty_table);
        n = ok ? (long) ok->message_count : -1;
        if (ok)
                admin_close(c);
        else
                (void) amqp_destroy_connection(c);
        return n;
}

/* Deletes what a test declared; each step on its own connection, since a failed
 * step closes the channel. */
static void names_cleanup(const Names *n) {
        const char *exchanges[] = { n->exchange, n->events };
        amqp_connection_state_t c;

        c = admin_connect();
        if (amqp_queue_delete(c, 1, amqp_cstring_bytes(n->queue), false, false))
                admin_close(c);
        else
                (void) amqp_destroy_connection(c);

        for (size_t i = 0; i < ELEMENTSOF(exchanges); i++) {
                c = admin_connect();
                if (amqp_exchange_delete(c, 1, amqp_cstring_bytes(exchanges[i]), false))
                        admin_close(c);
                else
                        (void) amqp_destroy_connection(c);
        }
}

/* ---- state shared by the callbacks --------------------------------------- */

typedef struct Ctx {
        sd_event *e;
        AmqpPublisher *p;
        AmqpConsumer *c;

        unsigned n_confirms, n_confirm_ok;
        int last_confirm_error;

        char ids[N_MESSAGES][37];
        unsigned seen[N_MESSAGES];
        bool seen_redelivered[N_MESSAGES];
        unsigned n_deliveries, n_redelivered, n_unknown;
        uint64_t tags[4 * N_MESSAGES];
        bool tag_redelivered[4 * N_MESSAGES];
        size_t n_tags;
        size_t max_unacked;

        bool publisher_up, consumer_up;
        int publisher_error, consumer_error;
        unsigned publisher_downs, consumer_downs;

        /* reject/requeue test */
        unsigned n_rejected;
        bool acked;
} Ctx;

static void confirm_cb(AmqpPublisher *p, int error, void *userdata) {
        Ctx *ctx = userdata;

        ctx->n_confirms++;
        if (error == 0)
                ctx->n_confirm_ok++;
        else
                ctx->last_confirm_error = error;
}

static int id_index(Ctx *ctx, const void *body, size_t size) {
        _cleanup_free_ char *id = NULL;

        if (amqp_body_to_task_id(body, size, &id) < 0)
                return -1;
        for (int i = 0; i < N_MESSAGES; i++)
                if (streq(ctx->ids[i], id))
                        return i;
        return -1;
}

static void record_delivery_cb(AmqpConsumer *c, uint64_t tag, const void *body, size_t size, bool redelivered,
                               void *userdata) {
        Ctx *ctx = userdata;
        int i = id_index(ctx, body, size);

        ctx->n_deliveries++;
        if (redelivered)
                ctx->n_redelivered++;
        if (i < 0)
                ctx->n_unknown++;
        else {
                ctx->seen[i]++;
                ctx->seen_redelivered[i] = redelivered;
        }
        ctx->max_unacked = MAX(ctx->max_unacked, amqp_consumer_n_unacked(c));
        assert_true(ctx->n_tags < ELEMENTSOF(ctx->tags));
        ctx->tag_redelivered[ctx->n_tags] = redelivered;
        ctx->tags[ctx->n_tags++] = tag;
}

static void state_cb_publisher(bool connected, int error, void *userdata) {
        Ctx *ctx = userdata;

        ctx->publisher_up = connected;
        ctx->publisher_error = error;
        if (!connected)
                ctx->publisher_downs++;
}

static void state_cb_consumer(bool connected, int error, void *userdata) {
        Ctx *ctx = userdata;

        ctx->consumer_up = connected;
        ctx->consumer_error = error;
        if (!connected)
                ctx->consumer_downs++;
}

static bool publisher_connected(void *userdata) {
        return amqp_publisher_is_connected(((Ctx *) userdata)->p);
}

static bool consumer_connected(void *userdata) {
        return amqp_consumer_is_connected(((Ctx *) userdata)->c);
}

static unsigned want_confirms;
static bool confirms_done(void *userdata) {
        return ((Ctx *) userdata)->n_confirms >= want_confirms;
}

static unsigned want_deliveries;
static bool deliveries_done(void *userdata) {
        return ((Ctx *) userdata)->n_deliveries >= want_deliveries;
}

static Ctx *ctx_new(void) {
        Ctx *ctx = calloc(1, sizeof *ctx);

        assert_non_null(ctx);
        assert_int_equal(sd_event_new(&ctx->e), 0);
        for (int i = 0; i < N_MESSAGES; i++)
                random_uuid(ctx->ids[i]);
        return ctx;
}

static void ctx_free(Ctx *ctx) {
        amqp_consumer_free(ctx->c);
        amqp_publisher_free(ctx->p);
        sd_event_unref(ctx->e);
        free(ctx);
}

static void publisher_start(Ctx *ctx, const AmqpSettings *s) {
        assert_int_equal(amqp_publisher_new(&ctx->p, ctx->e, s), 0);
        amqp_publisher_set_state_callback(ctx->p, state_cb_publisher, ctx);
        assert_true(run_until(ctx->e, publisher_connected, ctx, 10 * USEC_PER_SEC));
        assert_true(ctx->publisher_up);
}

static void publish_ids(Ctx *ctx, unsigned from, unsigned to) {
        for (unsigned i = from; i < to; i++)
                assert_int_equal(amqp_publisher_publish_task(ctx->p, ctx->ids[i], 0, confirm_cb, ctx), 0);
        want_confirms = to - from + ctx->n_confirms;
        assert_true(run_until(ctx->e, confirms_done, ctx, 30 * USEC_PER_SEC));
}

/* ---- 1. 100 messages: confirms, prefetch, exactly once, queue empty ------ */

static int ack_pending(sd_event_source *s, uint64_t usec, void *userdata) {
        Ctx *ctx = userdata;

        for (size_t i = 0; i < ctx->n_tags; i++)
                assert_int_equal(amqp_consumer_ack(ctx->c, ctx->tags[i]), 0);
        ctx->n_tags = 0;
        (void) sd_event_source_set_time_relative(s, 20 * USEC_PER_MSEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

static void test_publish_consume_100(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s;
        sd_event_source *acker = NULL;

        names_init(&n, "hundred");
        s = settings_for(&n);
        publisher_start(ctx, &s);

        publish_ids(ctx, 0, N_MESSAGES);
        assert_int_equal(ctx->n_confirm_ok, N_MESSAGES);
        assert_int_equal(amqp_publisher_n_unconfirmed(ctx->p), 0);
        assert_int_equal(queue_message_count(n.queue), N_MESSAGES);

        /* Acks come from a timer, 20 ms apart, so unacked deliveries pile up to the prefetch limit. */
        assert_int_equal(amqp_consumer_new(&ctx->c, ctx->e, &s, NULL, PREFETCH, record_delivery_cb, ctx), 0);
        assert_int_equal(sd_event_add_time_relative(ctx->e, &acker, CLOCK_MONOTONIC, 20 * USEC_PER_MSEC, 0,
                                                    ack_pending, ctx),
                         0);
        want_deliveries = N_MESSAGES;
        assert_true(run_until(ctx->e, deliveries_done, ctx, 30 * USEC_PER_SEC));
        run_for(ctx->e, 500 * USEC_PER_MSEC); /* any duplicate would show up now */
        sd_event_source_disable_unref(acker);
        assert_int_equal(ctx->n_tags, 0);

        assert_int_equal(ctx->n_deliveries, N_MESSAGES);
        assert_int_equal(ctx->n_unknown, 0);
        assert_int_equal(ctx->n_redelivered, 0);
        for (int i = 0; i < N_MESSAGES; i++)
                assert_int_equal(ctx->seen[i], 1);
        print_message("max unacked deliveries at once: %zu (prefetch %d)\n", ctx->max_unacked, PREFETCH);
        assert_true(ctx->max_unacked <= PREFETCH);
        assert_true(ctx->max_unacked >= 2); /* the broker did send ahead */

        /* Closing politely makes sure the broker processed every ack before we look. */
        ctx->c = amqp_consumer_free(ctx->c);
        assert_int_equal(queue_message_count(n.queue), 0);

        ctx_free(ctx);
        names_cleanup(&n);
}

/* ---- 2. reject with requeue → redelivered; ack → gone --------------------- */

static void reject_then_ack_cb(AmqpConsumer *c, uint64_t tag, const void *body, size_t size, bool redelivered,
                               void *userdata) {
        Ctx *ctx = userdata;

        ctx->n_deliveries++;
        if (ctx->n_deliveries == 1) {
                assert_false(redelivered);
                assert_int_equal(amqp_consumer_reject(c, tag, true), 0);
                /* settled: a second settle is refused locally (the broker would close the channel) */
                assert_int_equal(amqp_consumer_ack(c, tag), -ENOENT);
                ctx->n_rejected++;
                return;
        }
        assert_true(redelivered);
        assert_int_equal(id_index(ctx, body, size), 0);
        assert_int_equal(amqp_consumer_ack(c, tag), 0);
        assert_int_equal(amqp_consumer_ack(c, tag), -ENOENT);
        assert_int_equal(amqp_consumer_reject(c, tag, false), -ENOENT);
        ctx->acked = true;
}

static bool acked(void *userdata) {
        return ((Ctx *) userdata)->acked;
}

static void test_reject_requeue(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s;

        names_init(&n, "requeue");
        s = settings_for(&n);
        publisher_start(ctx, &s);
        publish_ids(ctx, 0, 1);
        assert_int_equal(ctx->n_confirm_ok, 1);

        assert_int_equal(amqp_consumer_new(&ctx->c, ctx->e, &s, n.queue, 1, reject_then_ack_cb, ctx), 0);
        assert_true(run_until(ctx->e, acked, ctx, 10 * USEC_PER_SEC));
        run_for(ctx->e, 300 * USEC_PER_MSEC);
        assert_int_equal(ctx->n_deliveries, 2);
        assert_int_equal(ctx->n_rejected, 1);
        /* a token that was never handed out on this connection */
        assert_int_equal(amqp_consumer_ack(ctx->c, 12345), -ESTALE);

        ctx->c = amqp_consumer_free(ctx->c);
        assert_int_equal(queue_message_count(n.queue), 0);

        ctx_free(ctx);
        names_cleanup(&n);
}

/* ---- 3. a consumer that goes away without acking → redelivered ----------- */

static void test_disconnect_redelivers(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s;

        names_init(&n, "redeliver");
        s = settings_for(&n);
        publisher_start(ctx, &s);
        publish_ids(ctx, 0, 5);
        assert_int_equal(ctx->n_confirm_ok, 5);

        /* First consumer takes all five and never acks. */
        assert_int_equal(amqp_consumer_new(&ctx->c, ctx->e, &s, n.queue, 10, record_delivery_cb, ctx), 0);
        want_deliveries = 5;
        assert_true(run_until(ctx->e, deliveries_done, ctx, 10 * USEC_PER_SEC));
        assert_int_equal(ctx->n_redelivered, 0);
        assert_int_equal(amqp_consumer_n_unacked(ctx->c), 5);
        assert_int_equal(queue_message_count(n.queue), 0); /* all handed out */
        ctx->c = amqp_consumer_free(ctx->c);

        /* A new consumer gets them again, marked redelivered. */
        memset(ctx->seen, 0, sizeof ctx->seen);
        ctx->n_tags = 0;
        ctx->n_deliveries = 0;
        assert_int_equal(amqp_consumer_new(&ctx->c, ctx->e, &s, n.queue, 10, record_delivery_cb, ctx), 0);
        want_deliveries = 5;
        assert_true(run_until(ctx->e, deliveries_done, ctx, 10 * USEC_PER_SEC));
        run_for(ctx->e, 200 * USEC_PER_MSEC);
        assert_int_equal(ctx->n_deliveries, 5);
        assert_int_equal(ctx->n_redelivered, 5);
        for (int i = 0; i < 5; i++)
                assert_int_equal(ctx->seen[i], 1);
        for (size_t i = 0; i < ctx->n_tags; i++)
                assert_int_equal(amqp_consumer_ack(ctx->c, ctx->tags[i]), 0);

        ctx->c = amqp_consumer_free(ctx->c);
        assert_int_equal(queue_message_count(n.queue), 0);

        ctx_free(ctx);
        names_cleanup(&n);
}

/* ---- 5. fanout events reach every event consumer -------------------------- */

typedef struct EventSink {
        AmqpConsumer *c;
        char *events[8];
        unsigned n;
        int ack_result;
} EventSink;

static void event_cb(AmqpConsumer *c, uint64_t tag, const void *body, size_t size, bool redelivered,
                     void *userdata) {
        EventSink *sink = userdata;
        _cleanup_free_ char *event = NULL, *id = NULL;

        sink->ack_result = amqp_consumer_ack(c, tag);
        assert_int_equal(amqp_event_body_parse(body, size, &event, &id), 0);
        if (sink->n < ELEMENTSOF(sink->events))
                sink->events[sink->n] = strdup(id);
        sink->n++;
}

static bool sinks_connected(void *userdata) {
        EventSink *s = userdata;
        return amqp_consumer_is_connected(s[0].c) && amqp_consumer_is_connected(s[1].c);
}

static bool sinks_have_three(void *userdata) {
        EventSink *s = userdata;
        return s[0].n >= 3 && s[1].n >= 3;
}

static void test_fanout_events(void **state) {
        Ctx *ctx = ctx_new();
        EventSink sinks[2] = {};
        Names n;
        AmqpSettings s;

        names_init(&n, "fanout");
        s = settings_for(&n);

        for (int i = 0; i < 2; i++)
                assert_int_equal(amqp_consumer_new_fanout(&sinks[i].c, ctx->e, &s, NULL, event_cb, &sinks[i]), 0);
        assert_true(run_until(ctx->e, sinks_connected, sinks, 10 * USEC_PER_SEC));
        /* exclusive, server-named queues, one each */
        assert_non_null(amqp_consumer_queue(sinks[0].c));
        assert_non_null(amqp_consumer_queue(sinks[1].c));
        assert_string_not_equal(amqp_consumer_queue(sinks[0].c), amqp_consumer_queue(sinks[1].c));

        publisher_start(ctx, &s);
        for (int i = 0; i < 3; i++) {
                _cleanup_free_ char *body = NULL;
                assert_int_equal(amqp_event_body_build("cancelled", ctx->ids[i], &body), 0);
                assert_int_equal(amqp_events_publish(ctx->p, NULL, body, 0, confirm_cb, ctx), 0);
        }
        want_confirms = 3;
        assert_true(run_until(ctx->e, confirms_done, ctx, 10 * USEC_PER_SEC));
        assert_int_equal(ctx->n_confirm_ok, 3);

        assert_true(run_until(ctx->e, sinks_have_three, sinks, 10 * USEC_PER_SEC));
        run_for(ctx->e, 200 * USEC_PER_MSEC);
        for (int k = 0; k < 2; k++) {
                assert_int_equal(sinks[k].n, 3);
                assert_int_equal(sinks[k].ack_result, -EOPNOTSUPP); /* automatic acks */
                for (int i = 0; i < 3; i++) {
                        assert_string_equal(sinks[k].events[i], ctx->ids[i]); /* in order */
                        free(sinks[k].events[i]);
                }
                sinks[k].c = amqp_consumer_free(sinks[k].c);
        }

        ctx_free(ctx);
        names_cleanup(&n);
}

/* ---- more behaviour ------------------------------------------------------- */

/* Not connected yet, too large: refused at once, no callback. */
static void test_publish_refused(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s;
        static char big[70 * 1024];

        names_init(&n, "refused");
        s = settings_for(&n);
        assert_int_equal(amqp_publisher_new(&ctx->p, ctx->e, &s), 0);
        assert_false(amqp_publisher_is_connected(ctx->p));
        assert_int_equal(amqp_publisher_publish_task(ctx->p, ctx->ids[0], 0, confirm_cb, ctx), -ENOTCONN);
        assert_int_equal(amqp_publisher_publish_task(ctx->p, "not-a-uuid", 0, confirm_cb, ctx), -EINVAL);

        assert_true(run_until(ctx->e, publisher_connected, ctx, 10 * USEC_PER_SEC));
        memset(big, 'x', sizeof big);
        assert_int_equal(amqp_publisher_publish(ctx->p, NULL, NULL, NULL, big, sizeof big, 0, confirm_cb, ctx),
                         -EMSGSIZE);
        run_for(ctx->e, 100 * USEC_PER_MSEC);
        assert_int_equal(ctx->n_confirms, 0);

        ctx_free(ctx);
        names_cleanup(&n);
}

static void test_bad_credentials(void **state) {
        Ctx *ctx = ctx_new();
        AmqpUrl u = {};
        _cleanup_free_ char *bad = NULL;
        Names n;
        AmqpSettings s;

        assert_int_equal(amqp_url_parse(url, &u), 0);
        assert_true(asprintf(&bad, "amqp://%s:wrong-password-%s@%s:%u", u.user, run_id, u.host, u.port) > 0);
        amqp_url_done(&u);

        names_init(&n, "badauth");
        s = settings_for(&n);
        s.url = bad;
        assert_int_equal(amqp_publisher_new(&ctx->p, ctx->e, &s), 0);
        amqp_publisher_set_state_callback(ctx->p, state_cb_publisher, ctx);
        run_for(ctx->e, 1500 * USEC_PER_MSEC); /* several attempts, each refused */
        assert_false(amqp_publisher_is_connected(ctx->p));
        assert_int_equal(ctx->publisher_error, -EACCES);
        assert_int_equal(ctx->publisher_downs, 1); /* the same error is reported once */

        ctx_free(ctx);
}

static void test_pause_resume(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s;

        names_init(&n, "pause");
        s = settings_for(&n);
        assert_int_equal(amqp_consumer_new(&ctx->c, ctx->e, &s, NULL, 10, record_delivery_cb, ctx), 0);
        amqp_consumer_set_state_callback(ctx->c, state_cb_consumer, ctx);
        assert_true(run_until(ctx->e, consumer_connected, ctx, 10 * USEC_PER_SEC));
        assert_true(ctx->consumer_up);

        assert_int_equal(amqp_consumer_pause(ctx->c), 0);
        assert_true(amqp_consumer_is_paused(ctx->c));
        publisher_start(ctx, &s);
        publish_ids(ctx, 0, 3);
        run_for(ctx->e, 500 * USEC_PER_MSEC);
        assert_int_equal(ctx->n_deliveries, 0);
        assert_int_equal(queue_message_count(n.queue), 3);

        assert_int_equal(amqp_consumer_resume(ctx->c), 0);
        want_deliveries = 3;
        assert_true(run_until(ctx->e, deliveries_done, ctx, 10 * USEC_PER_SEC));

        /* Paused while holding unacked deliveries: they can still be acked. */
        assert_int_equal(amqp_consumer_pause(ctx->c), 0);
        run_for(ctx->e, 100 * USEC_PER_MSEC);
        for (size_t i = 0; i < ctx->n_tags; i++)
                assert_int_equal(amqp_consumer_ack(ctx->c, ctx->tags[i]), 0);
        ctx->c = amqp_consumer_free(ctx->c);
        assert_int_equal(queue_message_count(n.queue), 0);

        ctx_free(ctx);
        names_cleanup(&n);
}

/* Not a task id / too large: the consumer sees what fits, rejects the rest for good. */
static void test_oversized_dropped(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s, small;
        static char big[4096];

        names_init(&n, "oversized");
        s = settings_for(&n);
        small = s;
        small.max_message_size = 1024;
        publisher_start(ctx, &s);

        memset(big, 'x', sizeof big);
        assert_int_equal(amqp_publisher_publish(ctx->p, NULL, NULL, NULL, big, sizeof big, 0, confirm_cb, ctx), 0);
        want_confirms = 1; /* publish_ids() counts only the confirms it waits for from here */
        assert_true(run_until(ctx->e, confirms_done, ctx, 30 * USEC_PER_SEC));
        publish_ids(ctx, 0, 1);
        assert_int_equal(ctx->n_confirm_ok, 2);

        assert_int_equal(amqp_consumer_new(&ctx->c, ctx->e, &small, NULL, 10, record_delivery_cb, ctx), 0);
        want_deliveries = 1;
        assert_true(run_until(ctx->e, deliveries_done, ctx, 10 * USEC_PER_SEC));
        run_for(ctx->e, 300 * USEC_PER_MSEC);
        assert_int_equal(ctx->n_deliveries, 1);
        assert_int_equal(ctx->seen[0], 1);
        assert_int_equal(amqp_consumer_ack(ctx->c, ctx->tags[0]), 0);
        ctx->c = amqp_consumer_free(ctx->c);
        assert_int_equal(queue_message_count(n.queue), 0);

        ctx_free(ctx);
        names_cleanup(&n);
}

/* Freeing from within callbacks: the rest of the confirms get -ECANCELED. */
static unsigned n_cancelled, n_ok_before_free;
static void free_in_confirm_cb(AmqpPublisher *p, int error, void *userdata) {
        AmqpPublisher **pp = userdata;

        if (error == -ECANCELED) {
                n_cancelled++;
                return;
        }
        assert_int_equal(error, 0);
        n_ok_before_free++;
        *pp = amqp_publisher_free(*pp);
}

static bool publisher_gone(void *userdata) {
        return *(AmqpPublisher **) userdata == NULL;
}

static bool consumer_gone(void *userdata) {
        return *(AmqpConsumer **) userdata == NULL;
}

static void free_in_delivery_cb(AmqpConsumer *c, uint64_t tag, const void *body, size_t size, bool redelivered,
                                void *userdata) {
        AmqpConsumer **cc = userdata;
        *cc = amqp_consumer_free(*cc);
}

static void test_free_in_callback(void **state) {
        Ctx *ctx = ctx_new();
        AmqpPublisher *p = NULL;
        AmqpConsumer *c = NULL;
        Names n;
        AmqpSettings s;

        names_init(&n, "freecb");
        s = settings_for(&n);
        assert_int_equal(amqp_publisher_new(&p, ctx->e, &s), 0);
        ctx->p = p;
        assert_true(run_until(ctx->e, publisher_connected, ctx, 10 * USEC_PER_SEC));
        ctx->p = NULL;
        n_cancelled = n_ok_before_free = 0;
        for (int i = 0; i < 20; i++)
                assert_int_equal(amqp_publisher_publish_task(p, ctx->ids[i], 0, free_in_confirm_cb, &p), 0);
        assert_true(run_until(ctx->e, publisher_gone, &p, 10 * USEC_PER_SEC));
        assert_int_equal(n_ok_before_free, 1);
        assert_int_equal(n_ok_before_free + n_cancelled, 20);

        assert_int_equal(amqp_consumer_new(&c, ctx->e, &s, NULL, 5, free_in_delivery_cb, &c), 0);
        assert_true(run_until(ctx->e, consumer_gone, &c, 10 * USEC_PER_SEC));
        run_for(ctx->e, 100 * USEC_PER_MSEC);

        ctx_free(ctx);
        names_cleanup(&n);
}

/* ---- 4. the broker goes away and comes back ------------------------------- */

static bool broker_stopped;
static char *stop_cmd, *start_cmd;

static int run_cmd(const char *cmd) {
        uint64_t t = now_usec();
        int r = system(cmd);
        print_message("'%s' → %d after %.1f s\n", cmd, r, (double) (now_usec() - t) / USEC_PER_SEC);
        return r;
}

typedef struct Command {
        pid_t pid;
        int status;
} Command;

static bool command_done(void *userdata) {
        Command *c = userdata;
        return waitpid(c->pid, &c->status, WNOHANG) == c->pid;
}

/* Runs cmd in the background while the event loop keeps running (so the clients
 * try to reconnect while the broker goes down or boots); returns its exit status. */
static int run_cmd_looping(sd_event *e, const char *cmd) {
        uint64_t t = now_usec();
        Command c = {};

        c.pid = fork();
        assert_true(c.pid >= 0);
        if (c.pid == 0) {
                execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
                _exit(127);
        }
        assert_true(run_until(e, command_done, &c, 120 * USEC_PER_SEC));
        print_message("'%s' → %d after %.1f s (loop running)\n", cmd, c.status,
                      (double) (now_usec() - t) / USEC_PER_SEC);
        return WIFEXITED(c.status) ? WEXITSTATUS(c.status) : 128;
}

static bool both_down(void *userdata) {
        Ctx *ctx = userdata;
        return ctx->publisher_downs > 0 && ctx->consumer_downs > 0;
}

static bool both_up(void *userdata) {
        Ctx *ctx = userdata;
        return amqp_publisher_is_connected(ctx->p) && amqp_consumer_is_connected(ctx->c);
}

static bool old_and_new_delivered(void *userdata) {
        Ctx *ctx = userdata;
        return ctx->seen[0] > 0 && ctx->seen[2] > 0;
}

static void test_reconnect(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s;
        Command stop = {};
        uint64_t stale_tag, t;
        int r, racing_result = 1;

        names_init(&n, "reconnect");
        s = settings_for(&n);
        publisher_start(ctx, &s);
        assert_int_equal(amqp_consumer_new(&ctx->c, ctx->e, &s, NULL, 5, record_delivery_cb, ctx), 0);
        amqp_consumer_set_state_callback(ctx->c, state_cb_consumer, ctx);
        assert_true(run_until(ctx->e, consumer_connected, ctx, 10 * USEC_PER_SEC));

        /* One message delivered and not acked when the broker goes down. */
        publish_ids(ctx, 0, 1);
        assert_int_equal(ctx->n_confirm_ok, 1);
        want_deliveries = 1;
        assert_true(run_until(ctx->e, deliveries_done, ctx, 10 * USEC_PER_SEC));
        stale_tag = ctx->tags[0];
        ctx->n_tags = 0;

        /* Stop the broker in the background, with the loop running, and publish while it
         * shuts down: that publish is either refused at once or its confirm is reported
         * exactly once, with whatever the broker managed (0) or an error. */
        max_iteration_usec = 0;
        broker_stopped = true;
        stop.pid = fork();
        assert_true(stop.pid >= 0);
        if (stop.pid == 0) {
                execl("/bin/sh", "sh", "-c", stop_cmd, (char *) NULL);
                _exit(127);
        }
        r = amqp_publisher_publish_task(ctx->p, ctx->ids[1], 5 * USEC_PER_SEC, confirm_cb, ctx);
        assert_true(r == 0 || r == -ENOTCONN || r == -ECONNRESET);
        assert_true(run_until(ctx->e, command_done, &stop, 120 * USEC_PER_SEC));
        assert_true(WIFEXITED(stop.status) && WEXITSTATUS(stop.status) == 0);
        assert_true(run_until(ctx->e, both_down, ctx, 30 * USEC_PER_SEC));
        if (r == 0) {
                want_confirms = 2;
                assert_true(run_until(ctx->e, confirms_done, ctx, 10 * USEC_PER_SEC));
                racing_result = ctx->n_confirm_ok == 2 ? 0 : ctx->last_confirm_error;
                assert_true(racing_result == 0 || racing_result == -ECONNRESET || racing_result == -ETIMEDOUT);
        }
        print_message("publish racing the shutdown: %d, confirm: %d; lost: publisher %d, consumer %d\n", r,
                      racing_result, ctx->publisher_error, ctx->consumer_error);
        assert_true(ctx->publisher_error < 0);
        assert_true(ctx->consumer_error < 0);

        /* Down: publishing is refused, the delivery belongs to the dead connection. */
        assert_false(amqp_publisher_is_connected(ctx->p));
        assert_int_equal(amqp_publisher_publish_task(ctx->p, ctx->ids[1], 0, confirm_cb, ctx), -ENOTCONN);
        assert_int_equal(amqp_consumer_ack(ctx->c, stale_tag), -ESTALE);
        run_for(ctx->e, 2 * USEC_PER_SEC); /* a few reconnect attempts against the stopped broker */
        assert_false(amqp_publisher_is_connected(ctx->p));

        /* Count from here: the unacked message is redelivered as soon as the consumer is back. */
        ctx->n_deliveries = ctx->n_redelivered = 0;
        ctx->n_tags = 0;
        memset(ctx->seen, 0, sizeof ctx->seen);

        assert_int_equal(run_cmd_looping(ctx->e, start_cmd), 0);
        broker_stopped = false;
        t = now_usec();
        assert_true(run_until(ctx->e, both_up, ctx, 30 * USEC_PER_SEC));
        print_message("reconnected %.1f s after the start command returned\n", (double) (now_usec() - t) / USEC_PER_SEC);
        /* Reconnect attempts ran all along: none blocked the loop for long (the TCP
         * connect is non-blocking, the handshake bounded by handshake_timeout, 2 s). */
        print_message("longest loop iteration while the broker was down/booting: %.3f s\n",
                      (double) max_iteration_usec / USEC_PER_SEC);
        assert_true(max_iteration_usec < 3 * USEC_PER_SEC);
        assert_true(ctx->publisher_up);
        assert_true(ctx->consumer_up);
        assert_int_equal(amqp_consumer_ack(ctx->c, stale_tag), -ESTALE);

        /* The new connection works: a confirmed publish; the unacked message comes back
         * (durable queue, persistent message), marked redelivered. */
        publish_ids(ctx, 2, 3);
        assert_int_equal(ctx->n_confirm_ok, racing_result == 0 ? 3 : 2);
        assert_true(run_until(ctx->e, old_and_new_delivered, ctx, 10 * USEC_PER_SEC));
        run_for(ctx->e, 300 * USEC_PER_MSEC);
        assert_int_equal(ctx->seen[0], 1);
        assert_int_equal(ctx->seen[2], 1);
        assert_true(ctx->seen[1] <= 1);
        if (racing_result == 0)
                assert_int_equal(ctx->seen[1], 1); /* confirmed means it survived the restart */
        assert_true(ctx->seen_redelivered[0]);
        assert_false(ctx->seen_redelivered[2]);
        for (size_t i = 0; i < ctx->n_tags; i++)
                assert_int_equal(amqp_consumer_ack(ctx->c, ctx->tags[i]), 0);

        ctx->c = amqp_consumer_free(ctx->c);
        assert_int_equal(queue_message_count(n.queue), 0);
        ctx_free(ctx);
        names_cleanup(&n);
}

/* ---- a frozen broker: TCP stays up, nothing arrives ----------------------- */

static pid_t broker_pid;
static bool broker_frozen;

static bool publisher_down(void *userdata) {
        return ((Ctx *) userdata)->publisher_downs > 0;
}

static void test_heartbeat_dead_peer(void **state) {
        Ctx *ctx = ctx_new();
        Names n;
        AmqpSettings s;
        uint64_t t;

        if (broker_pid <= 0) {
                print_message("broker pid unknown (DTASK_AMQP_BROKER_PID or $DTASK_ROOT/.dev/run/rabbitmq.pid)\n");
                ctx_free(ctx);
                skip();
        }

        names_init(&n, "heartbeat");
        s = settings_for(&n);
        s.heartbeat_sec = 1;
        s.handshake_timeout_usec = 500 * USEC_PER_MSEC;
        publisher_start(ctx, &s);

        max_iteration_usec = 0;
        broker_frozen = true;
        assert_int_equal(kill(broker_pid, SIGSTOP), 0);
        t = now_usec();
        assert_true(run_until(ctx->e, publisher_down, ctx, 15 * USEC_PER_SEC));
        print_message("dead peer noticed after %.1f s (heartbeat 1 s): %d\n",
                      (double) (now_usec() - t) / USEC_PER_SEC, ctx->publisher_error);
        assert_int_equal(ctx->publisher_error, -ETIMEDOUT);
        assert_true(now_usec() - t >= 1500 * USEC_PER_MSEC); /* not before 2 heartbeats of silence (−jitter of the check) */

        /* Reconnecting to the frozen broker: TCP connects, the handshake times out; the loop never waits. */
        run_for(ctx->e, 3 * USEC_PER_SEC);
        assert_false(amqp_publisher_is_connected(ctx->p));
        print_message("longest loop iteration with the broker frozen: %.3f s\n",
                      (double) max_iteration_usec / USEC_PER_SEC);
        assert_true(max_iteration_usec < 300 * USEC_PER_MSEC);

        assert_int_equal(kill(broker_pid, SIGCONT), 0);
        broker_frozen = false;
        assert_true(run_until(ctx->e, publisher_connected, ctx, 30 * USEC_PER_SEC));
        publish_ids(ctx, 0, 1);
        assert_int_equal(ctx->n_confirm_ok, 1);

        ctx_free(ctx);
        names_cleanup(&n);
}

static int reconnect_teardown(void **state) {
        if (broker_frozen) {
                (void) kill(broker_pid, SIGCONT);
                broker_frozen = false;
        }
        if (broker_stopped) {
                (void) run_cmd(start_cmd);
                broker_stopped = false;
        }
        return 0;
}

static int setup_reconnect_commands(void) {
        const char *root = getenv("DTASK_ROOT") ?: getenv("DTASK_SOURCE_ROOT");
        const char *stop = getenv("DTASK_AMQP_STOP_CMD"), *start = getenv("DTASK_AMQP_START_CMD");

        const char *pid = getenv("DTASK_AMQP_BROKER_PID");

        if (pid)
                broker_pid = (pid_t) atoi(pid);
        else if (root) {
                _cleanup_free_ char *f = NULL;
                FILE *file;

                if (asprintf(&f, "%s/.dev/run/rabbitmq.pid", root) < 0)
                        return -ENOMEM;
                file = fopen(f, "re");
                if (file) {
                        if (fscanf(file, "%d", &broker_pid) != 1)
                                broker_pid = 0;
                        fclose(file);
                }
        }

        if (stop && start) {
                stop_cmd = strdup(stop);
                start_cmd = strdup(start);
        } else {
                _cleanup_free_ char *tool = NULL;

                if (!root)
                        return -ENOENT;
                if (asprintf(&tool, "%s/tools/dev", root) < 0)
                        return -ENOMEM;
                if (access(tool, X_OK) < 0)
                        return -errno;
                if (asprintf(&stop_cmd, "'%s' stop rabbitmq", tool) < 0 ||
                    asprintf(&start_cmd, "'%s' start rabbitmq", tool) < 0)
                        return -ENOMEM;
        }
        return stop_cmd && start_cmd ? 0 : -ENOMEM;
}

int main(int argc, char *argv[]) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_publish_consume_100),
                cmocka_unit_test(test_reject_requeue),
                cmocka_unit_test(test_disconnect_redelivers),
                cmocka_unit_test(test_fanout_events),
                cmocka_unit_test(test_publish_refused),
                cmocka_unit_test(test_bad_credentials),
                cmocka_unit_test(test_pause_resume),
                cmocka_unit_test(test_oversized_dropped),
                cmocka_unit_test(test_free_in_callback),
        };
        const struct CMUnitTest reconnect_tests[] = {
                cmocka_unit_test_teardown(test_heartbeat_dead_peer, reconnect_teardown),
                cmocka_unit_test_teardown(test_reconnect, reconnect_teardown),
        };
        uint32_t rnd;
        int r;

        /* DTASK_LOG_LEVEL=debug shows what the AMQP layer does */
        (void) log_set_max_level_from_string(getenv("DTASK_LOG_LEVEL"));
        url = getenv("DTASK_AMQP_URL");
        if (isempty(url)) {
                fprintf(stderr, "DTASK_AMQP_URL is not set, skipping.\n");
                return 77;
        }
        assert_int_equal(getrandom(&rnd, sizeof rnd, 0), (ssize_t) sizeof rnd);
        snprintf(run_id, sizeof run_id, "%d-%08x", (int) getpid(), rnd);

        if (argc > 1 && streq(argv[1], "reconnect")) {
                r = setup_reconnect_commands();
                if (r < 0) {
                        fprintf(stderr, "No way to stop/start RabbitMQ (tools/dev or DTASK_AMQP_STOP_CMD/"
                                        "DTASK_AMQP_START_CMD): %s, skipping.\n", strerror(-r));
                        return 77;
                }
                r = cmocka_run_group_tests(reconnect_tests, NULL, NULL);
                free(stop_cmd);
                free(start_cmd);
                return r;
        }

        return cmocka_run_group_tests(tests, NULL, NULL);
}
