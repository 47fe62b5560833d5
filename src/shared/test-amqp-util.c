/* SPDX-License-Identifier: MIT */
/* Unit tests of the AMQP helpers that need no broker: task/event message bodies,
 * URL parsing and redaction, error mapping. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "amqp.h"

#define ID "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99"
#define ID_UPPER "0B7F3C9E-5D1A-4C8E-9F2A-6E4D2C1B0A99"

static int body_to_id(const char *body, char **ret) {
        return amqp_body_to_task_id(body, strlen(body), ret);
}

static void test_body_from_task_id(void **state) {
        _cleanup_free_ char *a = NULL, *b = NULL;
        char *x = NULL;

        assert_int_equal(amqp_body_from_task_id(ID, &a), 0);
        assert_string_equal(a, "\"" ID "\"");
        /* lower-cased, as the .NET system's Guid serialisation */
        assert_int_equal(amqp_body_from_task_id(ID_UPPER, &b), 0);
        assert_string_equal(b, "\"" ID "\"");

        assert_int_equal(amqp_body_from_task_id(NULL, &x), -EINVAL);
        assert_int_equal(amqp_body_from_task_id("", &x), -EINVAL);
        assert_int_equal(amqp_body_from_task_id("0b7f3c9e5d1a4c8e9f2a6e4d2c1b0a99", &x), -EINVAL);
        assert_int_equal(amqp_body_from_task_id(ID "0", &x), -EINVAL);
        assert_int_equal(amqp_body_from_task_id("{" ID "}", &x), -EINVAL);
        assert_int_equal(amqp_body_from_task_id("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a9g", &x), -EINVAL);
        assert_int_equal(amqp_body_from_task_id("\"0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a\"", &x), -EINVAL);
        assert_null(x);
}

static void test_body_to_task_id_valid(void **state) {
        static const char *const valid[] = {
                "\"" ID "\"",
                "\"" ID_UPPER "\"",
                " \t\r\n\"" ID "\" \n",
                /* escapes are JSON: \u0030 is '0', \u002d is '-', \/ is not in a UUID */
                "\"\\u0030b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99\"",
                "\"0b7f3c9e\\u002d5d1a-4c8e-9f2a-6e4d2c1b0a99\"",
        };

        for (size_t i = 0; i < ELEMENTSOF(valid); i++) {
                _cleanup_free_ char *id = NULL;
                assert_int_equal(body_to_id(valid[i], &id), 0);
                assert_string_equal(id, ID);
        }
}

static void test_body_to_task_id_invalid(void **state) {
        static const char *const invalid[] = {
                "",
                " ",
                ID,                                     /* no quotes */
                "'" ID "'",                             /* not JSON */
                "\"" ID,                                /* unterminated */
                ID "\"",
                "\"hello\"",                            /* a string, not a UUID */
                "\"\"",
                "\"" ID " \"",                          /* space inside the string */
                "\"{" ID "}\"",
                "\"0b7f3c9e5d1a4c8e9f2a6e4d2c1b0a99\"",
                "\"" ID "\"x",                          /* trailing garbage */
                "\"" ID "\" \"" ID "\"",                /* two values */
                "\"" ID "\",",
                "[\"" ID "\"]",                         /* not a string */
                "{\"id\":\"" ID "\"}",
                "123",
                "null",
                "\"\\u0000b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99\"", /* escape decoding to NUL */
                "\"\\u0067b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99\"", /* 'g' */
                "\"\\x30b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99\"",   /* not a JSON escape */
        };
        char *id = NULL;

        for (size_t i = 0; i < ELEMENTSOF(invalid); i++) {
                int r = body_to_id(invalid[i], &id);
                if (r != -EBADMSG)
                        fail_msg("body #%zu <%s>: expected -EBADMSG, got %d", i, invalid[i], r);
        }

        /* NUL bytes: inside and behind the value */
        static const char with_nul[] = "\"" ID "\"\0garbage";
        assert_int_equal(amqp_body_to_task_id(with_nul, sizeof with_nul - 1, &id), -EBADMSG);
        static const char nul_inside[] = "\"0b7f3c9e\0-5d1a-4c8e-9f2a-6e4d2c1b0a99\"";
        assert_int_equal(amqp_body_to_task_id(nul_inside, sizeof nul_inside - 1, &id), -EBADMSG);
        /* size honoured: the closing quote is outside */
        assert_int_equal(amqp_body_to_task_id("\"" ID "\"", 37, &id), -EBADMSG);
        assert_int_equal(amqp_body_to_task_id(NULL, 0, &id), -EBADMSG);

        /* over the size limit, even though valid JSON */
        char big[2048];
        memset(big, ' ', sizeof big);
        memcpy(big, "\"" ID "\"", 38);
        assert_int_equal(amqp_body_to_task_id(big, sizeof big, &id), -EBADMSG);
        assert_null(id);
}

static void test_body_round_trip(void **state) {
        _cleanup_free_ char *body = NULL, *id = NULL;

        assert_int_equal(amqp_body_from_task_id(ID_UPPER, &body), 0);
        assert_int_equal(body_to_id(body, &id), 0);
        assert_string_equal(id, ID);
}

static void test_event_body(void **state) {
        _cleanup_free_ char *body = NULL, *event = NULL, *id = NULL;
        char *x = NULL, *y = NULL;

        assert_int_equal(amqp_event_body_build("cancelled", ID_UPPER, &body), 0);
        assert_string_equal(body, "{\"event\":\"cancelled\",\"taskId\":\"" ID "\"}");
        assert_int_equal(amqp_event_body_parse(body, strlen(body), &event, &id), 0);
        assert_string_equal(event, "cancelled");
        assert_string_equal(id, ID);

        assert_int_equal(amqp_event_body_build("", ID, &x), -EINVAL);
        assert_int_equal(amqp_event_body_build("Cancel", ID, &x), -EINVAL);
        assert_int_equal(amqp_event_body_build("can\"celled", ID, &x), -EINVAL);
        assert_int_equal(amqp_event_body_build("abcdefghijklmnopqrstuvwxyz0123456", ID, &x), -EINVAL);
        assert_int_equal(amqp_event_body_build("expired", "nope", &x), -EINVAL);
        assert_null(x);

        static const char *const invalid[] = {
                "",
                "\"" ID "\"",
                "{}",
                "{\"event\":\"cancelled\"}",
                "{\"taskId\":\"" ID "\"}",
                "{\"event\":1,\"taskId\":\"" ID "\"}",
                "{\"event\":\"cancelled\",\"taskId\":\"x\"}",
                "{\"event\":\"Cancelled\",\"taskId\":\"" ID "\"}",
                "{\"event\":\"cancelled\",\"taskId\":\"" ID "\"} x",
        };
        for (size_t i = 0; i < ELEMENTSOF(invalid); i++)
                if (amqp_event_body_parse(invalid[i], strlen(invalid[i]), &x, &y) != -EBADMSG)
                        fail_msg("event body #%zu <%s> accepted", i, invalid[i]);
        assert_null(x);
        assert_null(y);

        /* unknown members are ignored (room for extensions) */
        static const char ext[] = "{\"event\":\"expired\",\"attempt\":2,\"taskId\":\"" ID_UPPER "\"}";
        free(id);
        id = NULL;
        assert_int_equal(amqp_event_body_parse(ext, strlen(ext), NULL, &id), 0);
        assert_string_equal(id, ID);
}

static void test_url_parse(void **state) {
        AmqpUrl u = {};

        assert_int_equal(amqp_url_parse("amqp://guest:guest@127.0.0.1:55672", &u), 0);
        assert_string_equal(u.user, "guest");
        assert_string_equal(u.password, "guest");
        assert_string_equal(u.host, "127.0.0.1");
        assert_int_equal(u.port, 55672);
        assert_string_equal(u.vhost, "/");
        amqp_url_done(&u);
        assert_null(u.password);

        assert_int_equal(amqp_url_parse(NULL, &u), 0); /* the default */
        assert_string_equal(u.host, "localhost");
        assert_int_equal(u.port, 5672);
        amqp_url_done(&u);

        assert_int_equal(amqp_url_parse("amqp://u%40x:p%3Aw%2Fd@rabbit.example/prod", &u), 0);
        assert_string_equal(u.user, "u@x");
        assert_string_equal(u.password, "p:w/d");
        assert_string_equal(u.host, "rabbit.example");
        assert_int_equal(u.port, 5672);
        assert_string_equal(u.vhost, "prod");
        amqp_url_done(&u);

        /* trailing slash: the default vhost (like the .NET client), not vhost "" */
        assert_int_equal(amqp_url_parse("amqp://guest:guest@localhost:5672/", &u), 0);
        assert_string_equal(u.vhost, "/");
        amqp_url_done(&u);
        assert_int_equal(amqp_url_parse("amqp://localhost/%2f", &u), 0);
        assert_string_equal(u.vhost, "/");
        amqp_url_done(&u);

        assert_int_equal(amqp_url_parse("amqp://[::1]:5673", &u), 0);
        assert_string_equal(u.host, "::1");
        assert_int_equal(u.port, 5673);
        amqp_url_done(&u);

        assert_int_equal(amqp_url_parse("amqps://guest:guest@localhost", &u), -EPROTONOSUPPORT);
        assert_int_equal(amqp_url_parse("http://localhost", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("localhost:5672", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("amqp://localhost:notaport", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("amqp://localhost:65536", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("amqp://localhost:0", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("amqp://localhost/a/b", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("amqp://localhost/vh?x=1", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("amqp://[::1", &u), -EINVAL);
        assert_int_equal(amqp_url_parse("amqp://h/%zz", &u), -EINVAL);
        assert_null(u.host);
}

static void test_url_redact(void **state) {
        static const struct {
                const char *url, *redacted, *secret;
        } cases[] = {
                { "amqp://guest:s3cr3t@127.0.0.1:55672", "amqp://guest:***@127.0.0.1:55672", "s3cr3t" },
                { "amqp://guest:s3cr3t@host/vhost", "amqp://guest:***@host/vhost", "s3cr3t" },
                { "amqp://guest:@host", "amqp://guest:***@host", NULL },
                { "amqp://guest@host", "amqp://guest@host", NULL },
                { "amqp://host:5672/vh", "amqp://host:5672/vh", NULL },
                { "amqp://host", "amqp://host", NULL },
                /* unencoded '@', '/', ':' in the password are hidden too */
                { "amqp://u:p@ss/w:rd@host:5672/vh", "amqp://u:***@host:5672/vh", "ss/w" },
                { "amqp://u:s3cr3t/x@host", "amqp://u:***@host", "s3cr3t" },
                /* not a URL at all */
                { "user:s3cr3t@host", "user:***@host", "s3cr3t" },
                { "s3cr3t@host", "***@host", "s3cr3t" },
                { "garbage", "garbage", NULL },
                { "", "", NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *r = NULL;

                assert_int_equal(amqp_url_redact(cases[i].url, &r), 0);
                if (!streq(r, cases[i].redacted))
                        fail_msg("redact <%s>: got <%s>, expected <%s>", cases[i].url, r, cases[i].redacted);
                if (cases[i].secret)
                        assert_null(strstr(r, cases[i].secret));
        }
}

static void test_is_uuid(void **state) {
        assert_true(amqp_is_uuid(ID, 36));
        assert_true(amqp_is_uuid(ID_UPPER, 36));
        assert_false(amqp_is_uuid(ID, 35));
        assert_false(amqp_is_uuid(NULL, 36));
        assert_false(amqp_is_uuid("0b7f3c9e_5d1a-4c8e-9f2a-6e4d2c1b0a99", 36));
        assert_false(amqp_is_uuid("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a9 ", 36));
}

static void test_errno_mapping(void **state) {
        amqp_connection_close_t close = { .reply_code = AMQP_ACCESS_REFUSED };
        amqp_rpc_reply_t r = {};

        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_OK), 0);
        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_SOCKET_ERROR), -ECONNRESET);
        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_CONNECTION_CLOSED), -ECONNRESET);
        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_TIMEOUT), -ETIMEDOUT);
        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_HEARTBEAT_TIMEOUT), -ETIMEDOUT);
        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_NO_MEMORY), -ENOMEM);
        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_BAD_URL), -EINVAL);
        assert_int_equal(amqp_status_to_errno(AMQP_STATUS_SSL_ERROR), -EIO);
        assert_int_equal(amqp_status_to_errno(-12345), -EIO);

        assert_int_equal(amqp_reply_code_to_errno(AMQP_ACCESS_REFUSED), -EACCES);
        assert_int_equal(amqp_reply_code_to_errno(AMQP_NOT_FOUND), -ENOENT);
        assert_int_equal(amqp_reply_code_to_errno(AMQP_PRECONDITION_FAILED), -EINVAL);
        assert_int_equal(amqp_reply_code_to_errno(AMQP_CONNECTION_FORCED), -ECONNRESET);
        assert_int_equal(amqp_reply_code_to_errno(AMQP_NOT_ALLOWED), -EPERM);
        assert_int_equal(amqp_reply_code_to_errno(999), -EPROTO);

        r.reply_type = AMQP_RESPONSE_NORMAL;
        assert_int_equal(amqp_rpc_reply_to_errno(&r), 0);
        r.reply_type = AMQP_RESPONSE_LIBRARY_EXCEPTION;
        r.library_error = AMQP_STATUS_TIMEOUT;
        assert_int_equal(amqp_rpc_reply_to_errno(&r), -ETIMEDOUT);
        r.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION;
        r.reply.id = AMQP_CONNECTION_CLOSE_METHOD;
        r.reply.decoded = &close;
        assert_int_equal(amqp_rpc_reply_to_errno(&r), -EACCES);
        r.reply_type = AMQP_RESPONSE_NONE;
        assert_int_equal(amqp_rpc_reply_to_errno(&r), -EPROTO);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_body_from_task_id),
                cmocka_unit_test(test_body_to_task_id_valid),
                cmocka_unit_test(test_body_to_task_id_invalid),
                cmocka_unit_test(test_body_round_trip),
                cmocka_unit_test(test_event_body),
                cmocka_unit_test(test_url_parse),
                cmocka_unit_test(test_url_redact),
                cmocka_unit_test(test_is_uuid),
                cmocka_unit_test(test_errno_mapping),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
