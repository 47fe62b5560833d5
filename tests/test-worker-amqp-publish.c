/* SPDX-License-Identifier: MIT */
/* Helper of tests/test-worker-*.py: publishes one message with an arbitrary body (e.g. one
 * that is not a task id) to an exchange, persistent, and waits for the broker's confirm.
 *
 *   test-worker-amqp-publish AMQP_URL EXCHANGE ROUTING_KEY BODY
 *
 * Exit status 0 when the broker confirmed it, 1 otherwise. */

#include <stdio.h>
#include <systemd/sd-event.h>

#include "amqp.h"
#include "log.h"
#include "time-util.h"

typedef struct State {
        sd_event *event;
        AmqpPublisher *publisher;
        const char *exchange, *routing_key, *body;
        bool sent;
        int result;
} State;

static void on_confirm(AmqpPublisher *p, int error, void *userdata) {
        State *s = userdata;

        s->result = error;
        (void) sd_event_exit(s->event, 0);
}

static void on_state(bool connected, int error, void *userdata) {
        State *s = userdata;
        int r;

        if (!connected || s->sent)
                return;
        r = amqp_publisher_publish(s->publisher, s->exchange, s->routing_key, NULL, s->body, strlen(s->body), 0,
                                   on_confirm, s);
        if (r < 0) {
                s->result = r;
                (void) sd_event_exit(s->event, 0);
                return;
        }
        s->sent = true;
}

static int on_timeout(sd_event_source *source, uint64_t usec, void *userdata) {
        State *s = userdata;

        s->result = -ETIMEDOUT;
        return sd_event_exit(s->event, 0);
}

int main(int argc, char *argv[]) {
        State s = { .result = -EIO };
        AmqpSettings settings;
        int r;

        if (argc != 5) {
                fprintf(stderr, "Usage: %s AMQP_URL EXCHANGE ROUTING_KEY BODY\n", argv[0]);
                return 2;
        }
        s.exchange = argv[2];
        s.routing_key = argv[3];
        s.body = argv[4];

        r = sd_event_default(&s.event);
        if (r < 0)
                return 1;
        settings = (AmqpSettings) { .url = argv[1], .exchange = argv[2], .events_exchange = "" };
        r = amqp_publisher_new(&s.publisher, s.event, &settings);
        if (r < 0) {
                fprintf(stderr, "amqp_publisher_new: %s\n", strerror(-r));
                return 1;
        }
        amqp_publisher_set_state_callback(s.publisher, on_state, &s);
        if (amqp_publisher_is_connected(s.publisher))
                on_state(true, 0, &s);
        r = sd_event_add_time_relative(s.event, NULL, CLOCK_MONOTONIC, 15 * USEC_PER_SEC, 0, on_timeout, &s);
        if (r < 0)
                return 1;
        r = sd_event_loop(s.event);
        amqp_publisher_free(s.publisher);
        sd_event_unref(s.event);
        if (r < 0 || s.result < 0) {
                fprintf(stderr, "publish failed: %s\n", strerror(-(r < 0 ? r : s.result)));
                return 1;
        }
        return 0;
}
