/* SPDX-License-Identifier: MIT */
/* The AMQP layer without a broker: settings validation, connection failures are
 * reported through the state callback, the loop is never blocked for long, and
 * objects can be freed in any state. */

#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <cmocka.h>

#include "amqp.h"

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

typedef struct State {
        unsigned n_calls;
        bool connected;
        int error;
} State;

static void state_cb(bool connected, int error, void *userdata) {
        State *s = userdata;

        s->n_calls++;
        s->connected = connected;
        s->error = error;
}

/* Runs the loop for usec; returns the longest single iteration. */
static uint64_t run_for(sd_event *e, uint64_t usec) {
        uint64_t end = now_usec() + usec, longest = 0;

        for (uint64_t t = now_usec(); t < end; t = now_usec()) {
                assert_true(sd_event_run(e, 20 * USEC_PER_MSEC) >= 0);
                longest = MAX(longest, now_usec() - t);
        }
        return longest;
}

/* A listening TCP socket on 127.0.0.1 with a kernel-chosen port. */
static int listen_socket(uint16_t *ret_port) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof a;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &a, sizeof a), 0);
        assert_int_equal(listen(fd, 16), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &a, &len), 0);
        *ret_port = ntohs(a.sin_port);
        return fd;
}

static char *url_for_port(uint16_t port) {
        char *url;
        assert_true(asprintf(&url, "amqp://guest:guest@127.0.0.1:%u", port) > 0);
        return url;
}

static void test_settings(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        AmqpPublisher *p = NULL;
        AmqpConsumer *c = NULL;
        AmqpSettings s = { .url = "http://localhost" };

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(amqp_publisher_new(&p, e, &s), -EINVAL);
        s.url = "amqps://guest:guest@localhost";
        assert_int_equal(amqp_publisher_new(&p, e, &s), -EPROTONOSUPPORT);
        assert_int_equal(amqp_consumer_new(&c, e, &s, NULL, 1, (AmqpDeliveryCallback) abort, NULL),
                         -EPROTONOSUPPORT);
        s.url = NULL;
        s.queue = "";
        assert_int_equal(amqp_publisher_new(&p, e, &s), -EINVAL);
        assert_int_equal(amqp_consumer_new(&c, e, &s, "", 1, (AmqpDeliveryCallback) abort, NULL), -EINVAL);
        assert_int_equal(amqp_consumer_new(&c, e, &s, "q", 1, NULL, NULL), -EINVAL);
        assert_null(p);
        assert_null(c);

        /* Created, never run, freed: nothing connects, nothing leaks. */
        s.queue = NULL;
        assert_int_equal(amqp_publisher_new(&p, e, &s), 0);
        assert_int_equal(amqp_consumer_new(&c, e, &s, NULL, 1, (AmqpDeliveryCallback) abort, NULL), 0);
        assert_false(amqp_publisher_is_connected(p));
        assert_false(amqp_consumer_is_connected(c));
        assert_null(amqp_publisher_free(p));
        assert_null(amqp_consumer_free(c));
        assert_null(amqp_publisher_free(NULL));
        assert_null(amqp_consumer_free(NULL));
}

static void test_connection_refused(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(amqp_publisher_freep) AmqpPublisher *p = NULL;
        _cleanup_(amqp_consumer_freep) AmqpConsumer *c = NULL;
        _cleanup_free_ char *url = NULL;
        State ps = {}, cs = {};
        uint16_t port;
        AmqpSettings s = {};

        /* A port nobody listens on: take one and close it again. */
        safe_close(listen_socket(&port));
        url = url_for_port(port);
        s.url = url;

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(amqp_publisher_new(&p, e, &s), 0);
        assert_int_equal(amqp_consumer_new(&c, e, &s, NULL, 1, (AmqpDeliveryCallback) abort, NULL), 0);
        amqp_publisher_set_state_callback(p, state_cb, &ps);
        amqp_consumer_set_state_callback(c, state_cb, &cs);

        /* _new() never connects by itself: nothing happened yet. */
        assert_int_equal(ps.n_calls, 0);
        assert_int_equal(amqp_publisher_publish(p, NULL, NULL, NULL, "x", 1, 0, NULL, NULL), -ENOTCONN);

        assert_true(run_for(e, 1500 * USEC_PER_MSEC) < 500 * USEC_PER_MSEC);
        assert_int_equal(ps.error, -ECONNREFUSED);
        assert_int_equal(cs.error, -ECONNREFUSED);
        assert_false(ps.connected);
        /* Several attempts were made (backoff from 100 ms), the same error reported once. */
        assert_int_equal(ps.n_calls, 1);
        assert_int_equal(cs.n_calls, 1);
        assert_false(amqp_publisher_is_connected(p));
        assert_int_equal(amqp_publisher_publish_task(p, "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", 0, NULL, NULL),
                         -ENOTCONN);
        assert_int_equal(amqp_consumer_ack(c, 1), -ESTALE);
        assert_int_equal(amqp_consumer_pause(c), 0); /* remembered for when it connects */
        assert_true(amqp_consumer_is_paused(c));
}

/* A server that accepts TCP connections (the kernel does, from the backlog) but never
 * speaks AMQP, like a frozen broker: the handshake gives up after handshake_timeout,
 * and it never blocks the loop while waiting. */
static void test_silent_server(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(amqp_publisher_freep) AmqpPublisher *p = NULL;
        _cleanup_free_ char *url = NULL;
        _cleanup_close_ int fd = -EBADF;
        State ps = {};
        uint16_t port;
        uint64_t longest;
        AmqpSettings s = {
                .handshake_timeout_usec = 300 * USEC_PER_MSEC,
        };

        fd = listen_socket(&port);
        url = url_for_port(port);
        s.url = url;

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(amqp_publisher_new(&p, e, &s), 0);
        amqp_publisher_set_state_callback(p, state_cb, &ps);

        longest = run_for(e, 1500 * USEC_PER_MSEC);
        print_message("longest loop iteration: %.3f s (handshake timeout 0.3 s)\n", (double) longest / USEC_PER_SEC);
        assert_true(longest < 100 * USEC_PER_MSEC);
        assert_int_equal(ps.error, -ETIMEDOUT);
        assert_false(amqp_publisher_is_connected(p));
}

/* A server that answers with something else than AMQP, then hangs up. */
static void test_garbage_server(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(amqp_publisher_freep) AmqpPublisher *p = NULL;
        _cleanup_free_ char *url = NULL;
        State ps = {};
        uint16_t port;
        pid_t pid;
        int fd, status;
        AmqpSettings s = {};

        fd = listen_socket(&port);
        url = url_for_port(port);
        s.url = url;

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                for (;;) {
                        static const char garbage[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
                        int c = accept(fd, NULL, NULL);
                        if (c < 0)
                                _exit(1);
                        (void) !write(c, garbage, sizeof garbage - 1);
                        close(c);
                }
        }
        safe_close(fd);

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(amqp_publisher_new(&p, e, &s), 0);
        amqp_publisher_set_state_callback(p, state_cb, &ps);
        assert_true(run_for(e, 1000 * USEC_PER_MSEC) < 500 * USEC_PER_MSEC);
        print_message("error: %d (%s)\n", ps.error, strerror(-ps.error));
        assert_true(ps.error < 0);
        assert_int_not_equal(ps.error, -ETIMEDOUT);
        assert_false(amqp_publisher_is_connected(p));

        kill(pid, SIGKILL);
        assert_int_equal(waitpid(pid, &status, 0), pid);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_settings),
                cmocka_unit_test(test_connection_refused),
                cmocka_unit_test(test_silent_server),
                cmocka_unit_test(test_garbage_server),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
