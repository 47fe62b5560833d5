/* SPDX-License-Identifier: MIT */
/* Test helper (not a test): binds a private, exclusive, auto-delete queue to an exchange
 * and prints every message that arrives as one JSON line on stdout, so that tests see
 * what dtask-api publishes without taking messages away from real workers.
 *
 *   test-api-amqp-listen URL EXCHANGE ROUTING_KEY SECONDS
 *
 * Prints {"ready": true} once the queue is bound, then for each message
 * {"body": "…", "delivery_mode": 2, "content_type": "…", "exchange": "…", "routing_key": "…"},
 * and exits 0 after SECONDS (or when stdin is closed). Blocking rabbitmq-c on purpose: it
 * is a test tool, not part of any daemon. */

#include <amqp_tcp_socket.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <sys/time.h>

#include "amqp.h"
#include "macro.h"
#include "time-util.h"

static int fail(const char *what, amqp_rpc_reply_t r) {
        fprintf(stderr, "test-api-amqp-listen: %s failed (reply type %d, library error %d: %s)\n", what,
                (int) r.reply_type, r.library_error, amqp_error_string2(r.library_error));
        return EXIT_FAILURE;
}

static char *bytes_dup(amqp_bytes_t b) {
        char *s = malloc(b.len + 1);

        if (!s)
                abort();
        memcpy(s, b.bytes, b.len);
        s[b.len] = '\0';
        return s;
}

int main(int argc, char *argv[]) {
        AmqpUrl url = {};
        amqp_connection_state_t conn;
        amqp_socket_t *socket;
        amqp_queue_declare_ok_t *declared;
        amqp_bytes_t queue;
        amqp_rpc_reply_t reply;
        usec_t deadline;
        int r;

        if (argc != 5) {
                fprintf(stderr, "Usage: %s URL EXCHANGE ROUTING_KEY SECONDS\n", argv[0]);
                return EXIT_FAILURE;
        }
        r = amqp_url_parse(argv[1], &url);
        if (r < 0) {
                fprintf(stderr, "test-api-amqp-listen: bad URL: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        deadline = now_usec(CLOCK_MONOTONIC) + strtoull(argv[4], NULL, 10) * USEC_PER_SEC;

        conn = amqp_new_connection();
        socket = amqp_tcp_socket_new(conn);
        if (!socket || amqp_socket_open(socket, url.host, url.port) != AMQP_STATUS_OK) {
                fprintf(stderr, "test-api-amqp-listen: cannot connect to %s:%u\n", url.host, url.port);
                return EXIT_FAILURE;
        }
        reply = amqp_login(conn, url.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, url.user, url.password);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL)
                return fail("login", reply);
        amqp_channel_open(conn, 1);
        reply = amqp_get_rpc_reply(conn);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL)
                return fail("channel.open", reply);

        declared = amqp_queue_declare(conn, 1, amqp_empty_bytes, 0, 0, /* exclusive */ 1, /* auto_delete */ 1,
                                      amqp_empty_table);
        reply = amqp_get_rpc_reply(conn);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL || !declared)
                return fail("queue.declare", reply);
        queue = amqp_bytes_malloc_dup(declared->queue);

        amqp_queue_bind(conn, 1, queue, amqp_cstring_bytes(argv[2]), amqp_cstring_bytes(argv[3]), amqp_empty_table);
        reply = amqp_get_rpc_reply(conn);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL)
                return fail("queue.bind", reply);
        amqp_basic_consume(conn, 1, queue, amqp_empty_bytes, 0, /* no_ack */ 1, 1, amqp_empty_table);
        reply = amqp_get_rpc_reply(conn);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL)
                return fail("basic.consume", reply);

        printf("{\"ready\": true}\n");
        fflush(stdout);

        for (;;) {
                usec_t now = now_usec(CLOCK_MONOTONIC);
                struct timeval tv;
                amqp_envelope_t envelope;
                struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
                json_object *o;

                if (now >= deadline)
                        break;
                /* stdin closed (the test is done): stop early */
                if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLIN))) {
                        char c;
                        if (read(STDIN_FILENO, &c, 1) <= 0)
                                break;
                }

                tv = (struct timeval) { .tv_sec = 0, .tv_usec = 200000 };
                amqp_maybe_release_buffers(conn);
                reply = amqp_consume_message(conn, &envelope, &tv, 0);
                if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                    reply.library_error == AMQP_STATUS_TIMEOUT)
                        continue;
                if (reply.reply_type != AMQP_RESPONSE_NORMAL)
                        return fail("consume", reply);

                o = json_object_new_object();
                {
                        char *body = bytes_dup(envelope.message.body), *exchange = bytes_dup(envelope.exchange),
                             *key = bytes_dup(envelope.routing_key);
                        amqp_basic_properties_t *p = &envelope.message.properties;
                        char *ct = p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG ? bytes_dup(p->content_type) : NULL;

                        json_object_object_add(o, "body", json_object_new_string(body));
                        json_object_object_add(o, "delivery_mode",
                                               json_object_new_int(p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG
                                                                           ? p->delivery_mode
                                                                           : 0));
                        json_object_object_add(o, "content_type", ct ? json_object_new_string(ct) : NULL);
                        json_object_object_add(o, "exchange", json_object_new_string(exchange));
                        json_object_object_add(o, "routing_key", json_object_new_string(key));
                        free(body);
                        free(exchange);
                        free(key);
                        free(ct);
                }
                printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                fflush(stdout);
                json_object_put(o);
                amqp_destroy_envelope(&envelope);
        }

        amqp_bytes_free(queue);
        amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(conn);
        amqp_url_done(&url);
        return EXIT_SUCCESS;
}
