/* SPDX-License-Identifier: MIT */
#include "amqp.h"
#include "config.h"
#include "dispatch.h"
#include "log.h"
#include "metrics.h"
#include "task-store.h"
#include "uuid-util.h"

#define DISPATCH_CONFIRM_TIMEOUT_USEC (10 * USEC_PER_SEC)

struct Dispatch {
        AmqpPublisher *publisher;
        TaskStore *store;
        Metrics *metrics;
        char *events_exchange;
        bool was_connected;
        int last_error;
};

typedef struct Publish {
        Dispatch *dispatch;
        char id[UUID_STRING_MAX];
        unsigned retry_count;
} Publish;

static void on_state(bool connected, int error, void *userdata) {
        Dispatch *d = userdata;

        if (connected) {
                if (d->last_error != 0)
                        log_notice("Connected to RabbitMQ again; tasks are dispatched.");
                else
                        log_info("Connected to RabbitMQ.");
                d->was_connected = true;
                d->last_error = 0;
                return;
        }
        if (error == d->last_error)
                return;
        d->last_error = error ?: -ECONNRESET;
        log_warning_errno(d->last_error,
                          "RabbitMQ is unreachable (%m); new tasks stay Pending and unpublished until "
                          "dtask-reaper publishes them.");
}

int dispatch_new(Dispatch **ret, sd_event *event, const Config *config, TaskStore *store, Metrics *metrics) {
        _cleanup_(dispatch_freep) Dispatch *d = NULL;
        AmqpSettings settings;
        usec_t heartbeat;
        int r;

        d = calloc(1, sizeof(Dispatch));
        if (!d)
                return -ENOMEM;
        d->store = store;
        d->metrics = metrics;
        d->events_exchange = strdup(config_string(config, "AMQP_EVENTS_EXCHANGE"));
        if (!d->events_exchange)
                return -ENOMEM;

        heartbeat = config_uint(config, "AMQP_HEARTBEAT");
        settings = (AmqpSettings) {
                .url = config_string(config, "AMQP_URL"),
                .exchange = config_string(config, "AMQP_EXCHANGE"),
                .queue = config_string(config, "AMQP_QUEUE"),
                .routing_key = config_string(config, "AMQP_ROUTING_KEY"),
                .events_exchange = d->events_exchange,
                .connection_name = "dtask-api",
                .heartbeat_sec = heartbeat > 0 ? (unsigned) MAX(heartbeat / USEC_PER_SEC, 1u) : 0,
        };
        r = amqp_publisher_new(&d->publisher, event, &settings);
        if (r < 0)
                return r;
        amqp_publisher_set_state_callback(d->publisher, on_state, d);

        *ret = TAKE_PTR(d);
        return 0;
}

Dispatch *dispatch_free(Dispatch *d) {
        if (!d)
                return NULL;
        /* Outstanding confirms are called back with -ECANCELED from within this. */
        d->publisher = amqp_publisher_free(d->publisher);
        free(d->events_exchange);
        return mfree(d);
}

bool dispatch_is_connected(Dispatch *d) {
        return d && d->publisher && amqp_publisher_is_connected(d->publisher);
}

static void on_confirm(AmqpPublisher *p, int error, void *userdata) {
        _cleanup_free_ Publish *pub = userdata;
        Dispatch *d = pub->dispatch;
        int r;

        if (error == -ECANCELED)
                return; /* shutting down; the reaper publishes it */
        if (error < 0) {
                metrics_publish_failed(d->metrics);
                log_warning_errno(error, "RabbitMQ did not confirm the message of task %s (%m); it stays "
                                  "unpublished until dtask-reaper publishes it again.", pub->id);
                return;
        }

        metrics_publish_confirmed(d->metrics);
        log_debug("Task %s (run %u) published.", pub->id, pub->retry_count);
        r = task_store_mark_published(d->store, pub->id, pub->retry_count);
        if (r < 0)
                log_warning_errno(r, "Failed to record that task %s was published: %m", pub->id);
}

void dispatch_task(Dispatch *d, const char *id, unsigned retry_count) {
        _cleanup_free_ Publish *pub = NULL;
        int r;

        pub = calloc(1, sizeof(Publish));
        if (!pub) {
                metrics_publish_failed(d->metrics);
                (void) log_oom();
                return;
        }
        pub->dispatch = d;
        pub->retry_count = retry_count;
        if (uuid_normalize(id, pub->id) < 0)
                return;

        r = amqp_publisher_publish_task(d->publisher, pub->id, DISPATCH_CONFIRM_TIMEOUT_USEC, on_confirm, pub);
        if (r < 0) {
                metrics_publish_failed(d->metrics);
                /* Not connected is expected while RabbitMQ is down: on_state() said so already. */
                log_full_errno(r == -ENOTCONN ? LOG_DEBUG : LOG_WARNING, r,
                               "Task %s not published (%m); it stays unpublished until dtask-reaper publishes it.",
                               pub->id);
                return;
        }
        TAKE_PTR(pub);
}

void dispatch_event(Dispatch *d, const char *event, const char *id) {
        _cleanup_free_ char *body = NULL;
        int r;

        r = amqp_event_body_build(event, id, &body);
        if (r < 0) {
                log_debug_errno(r, "Failed to build the %s event of task %s: %m", event, id);
                return;
        }
        r = amqp_events_publish(d->publisher, d->events_exchange, body, DISPATCH_CONFIRM_TIMEOUT_USEC, NULL, NULL);
        if (r < 0)
                log_full_errno(r == -ENOTCONN ? LOG_DEBUG : LOG_WARNING, r,
                               "Failed to announce the %s event of task %s (%m); workers learn of it from "
                               "PostgreSQL instead.", event, id);
}
