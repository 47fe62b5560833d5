/* SPDX-License-Identifier: MIT */
/* The wire format of libdtask: the SPEC §8 task parses into the right DtaskTask, request
 * bodies carry exactly the members SPEC §3/§8 names, HTTP statuses map to the documented
 * errno values, Link headers yield the next cursor, paths are encoded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "dtask-wire.h"
#include "json-util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTask *, dtask_task_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTaskList *, dtask_task_list_free);

/* SPEC §8, verbatim. */
static const char spec_task[] =
        "{\n"
        "  \"id\": \"0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99\",\n"
        "  \"name\": \"sum of input\",\n"
        "  \"code\": \"import sys\\nprint(sum(map(int, sys.stdin.read().split())), end=\\\"\\\")\",\n"
        "  \"language\": \"Python\",\n"
        "  \"inputData\": \"1 2 3\",\n"
        "  \"userId\": \"5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6\",\n"
        "  \"result\": \"6\",\n"
        "  \"status\": 2,\n"
        "  \"statusName\": \"Completed\",\n"
        "  \"createdAt\": \"2026-11-28T18:06:45.123456Z\",\n"
        "  \"startedAt\": \"2026-11-28T18:06:45.140211Z\",\n"
        "  \"completedAt\": \"2026-11-28T18:06:45.171002Z\",\n"
        "  \"expiresAt\": \"2026-11-28T18:36:45.123456Z\",\n"
        "  \"ttl\": \"00:30:00\",\n"
        "  \"errorMessage\": \"\",\n"
        "  \"exitCode\": 0,\n"
        "  \"verdict\": \"ok\",\n"
        "  \"outputTruncated\": false,\n"
        "  \"retryCount\": 0,\n"
        "  \"attempt\": 1\n"
        "}\n";

static json_object *parse(const char *text) {
        json_object *o = NULL;

        if (wire_parse_body(text, strlen(text), &o) < 0)
                fail_msg("cannot parse %s", text);
        return o;
}

static int parse_task(const char *text, DtaskTask **ret) {
        _cleanup_json_ json_object *o = parse(text);
        return wire_task_from_json(o, ret);
}

static uint64_t iso(const char *s) {
        usec_t t;
        assert_int_equal(iso8601_parse(s, &t), 0);
        return t;
}

static void test_spec_example_parses(void **state) {
        _cleanup_(dtask_task_freep) DtaskTask *t = NULL, *copy = NULL;
        char buf[DTASK_TIMESTAMP_MAX];

        assert_int_equal(parse_task(spec_task, &t), 0);
        assert_string_equal(t->id, "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99");
        assert_string_equal(t->name, "sum of input");
        assert_string_equal(t->code, "import sys\nprint(sum(map(int, sys.stdin.read().split())), end=\"\")");
        assert_int_equal(t->language, DTASK_LANGUAGE_PYTHON);
        assert_string_equal(t->input_data, "1 2 3");
        assert_string_equal(t->user_id, "5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6");
        assert_string_equal(t->result, "6");
        assert_int_equal(t->status, DTASK_STATUS_COMPLETED);
        assert_string_equal(t->status_name, "Completed");
        assert_true(t->created_at == iso("2026-11-28T18:06:45.123456Z"));
        assert_true(t->started_at == iso("2026-11-28T18:06:45.140211Z"));
        assert_true(t->completed_at == iso("2026-11-28T18:06:45.171002Z"));
        assert_true(t->expires_at == iso("2026-11-28T18:36:45.123456Z"));
        assert_true(t->expires_at - t->created_at == 1800 * USEC_PER_SEC);
        assert_string_equal(t->ttl, "00:30:00");
        assert_true(t->ttl_usec == 1800 * USEC_PER_SEC);
        assert_string_equal(t->error_message, "");
        assert_true(t->has_exit_code);
        assert_int_equal(t->exit_code, 0);
        assert_string_equal(t->verdict, "ok");
        assert_false(t->output_truncated);
        assert_int_equal(t->retry_count, 0);
        assert_int_equal(t->attempt, 1);

        /* the raw object is kept, compact, and parses to the same members */
        assert_non_null(t->json);
        assert_null(strchr(t->json, '\n'));
        assert_non_null(strstr(t->json, "\"statusName\":\"Completed\""));

        assert_string_equal(dtask_timestamp_format(t->created_at, buf, sizeof(buf)), "2026-11-28T18:06:45.123456Z");
        assert_string_equal(dtask_timestamp_format(0, buf, sizeof(buf)), "");

        assert_int_equal(dtask_task_dup(t, &copy), 0);
        assert_ptr_not_equal(copy->code, t->code);
        assert_string_equal(copy->code, t->code);
        assert_string_equal(copy->json, t->json);
        assert_true(copy->expires_at == t->expires_at);
        assert_int_equal(copy->attempt, 1);
}

static void test_task_tolerant(void **state) {
        _cleanup_(dtask_task_freep) DtaskTask *t = NULL;

        /* unknown members, nulls, a pending task without times, CSharp as 0, different case */
        assert_int_equal(parse_task("{\"id\":\"0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99\",\"status\":0,"
                                    "\"Name\":\"x\",\"language\":0,\"inputData\":null,\"result\":null,"
                                    "\"exitCode\":null,\"verdict\":null,\"startedAt\":null,\"ttl\":\"7.00:00:00\","
                                    "\"future\":{\"nested\":[1,2,3]},\"workerHost\":\"a\"}",
                                    &t),
                         0);
        assert_int_equal(t->status, DTASK_STATUS_PENDING);
        assert_string_equal(t->name, "x");
        assert_int_equal(t->language, DTASK_LANGUAGE_CSHARP);
        assert_null(t->input_data);
        assert_null(t->result);
        assert_false(t->has_exit_code);
        assert_null(t->verdict);
        assert_true(t->started_at == 0);
        assert_true(t->ttl_usec == 7 * 24 * 3600 * USEC_PER_SEC);
        assert_null(t->code);
        t = dtask_task_free(t);

        /* a negative exit code, truncated output, an unknown language, a status we do not know */
        assert_int_equal(parse_task("{\"id\":\"a\",\"status\":9,\"language\":\"Go\",\"exitCode\":-9,"
                                    "\"outputTruncated\":true,\"ttl\":60}",
                                    &t),
                         0);
        assert_int_equal(t->status, 9);
        assert_null(dtask_status_to_string(t->status));
        assert_int_equal(t->language, DTASK_LANGUAGE_UNKNOWN);
        assert_true(t->has_exit_code);
        assert_int_equal(t->exit_code, -9);
        assert_true(t->output_truncated);
        assert_string_equal(t->ttl, "00:01:00");
}

static void test_task_malformed(void **state) {
        static const char *const bad[] = {
                "[]",
                "{\"status\":0}",                                  /* no id */
                "{\"id\":\"a\"}",                                  /* no status */
                "{\"id\":7,\"status\":0}",                         /* id not a string */
                "{\"id\":\"a\",\"status\":\"Sleeping\"}",          /* unknown status name */
                "{\"id\":\"a\",\"status\":-1}",
                "{\"id\":\"a\",\"status\":0,\"exitCode\":\"0\"}",  /* wrong types */
                "{\"id\":\"a\",\"status\":0,\"exitCode\":4294967296}",
                "{\"id\":\"a\",\"status\":0,\"outputTruncated\":1}",
                "{\"id\":\"a\",\"status\":0,\"createdAt\":\"yesterday\"}",
                "{\"id\":\"a\",\"status\":0,\"ttl\":\"half an hour\"}",
                "{\"id\":\"a\",\"status\":0,\"name\":[]}",
                "{\"id\":\"a\",\"status\":0,\"attempt\":-1}",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                DtaskTask *t = NULL;

                if (parse_task(bad[i], &t) != -EBADMSG)
                        fail_msg("accepted %s", bad[i]);
                assert_null(t);
        }
        {
                json_object *o = NULL;
                assert_int_equal(wire_parse_body("{\"id\":", 6, &o), -EBADMSG);
                assert_int_equal(wire_parse_body("not json", 8, &o), -EBADMSG);
                assert_null(o);
        }
}

static void test_task_list(void **state) {
        _cleanup_(dtask_task_list_freep) DtaskTaskList *l = NULL;
        _cleanup_json_ json_object *a = NULL, *b = NULL, *c = NULL;

        a = parse("[{\"id\":\"a\",\"status\":0},{\"id\":\"b\",\"status\":5}]");
        assert_int_equal(wire_task_list_from_json(a, &l), 0);
        assert_int_equal(l->n_tasks, 2);
        assert_string_equal(l->tasks[0]->id, "a");
        assert_int_equal(l->tasks[1]->status, DTASK_STATUS_CANCELLED);
        assert_null(l->next_cursor);
        l = dtask_task_list_free(l);

        b = parse("[]");
        assert_int_equal(wire_task_list_from_json(b, &l), 0);
        assert_int_equal(l->n_tasks, 0);
        l = dtask_task_list_free(l);

        c = parse("[{\"id\":\"a\",\"status\":0},{\"status\":1}]");
        assert_int_equal(wire_task_list_from_json(c, &l), -EBADMSG);
        assert_null(l);
        assert_int_equal(wire_task_list_from_json(a ? json_object_array_get_idx(a, 0) : NULL, &l), -EBADMSG);
}

/* Looks up a member and checks it is the only one of that name, with the expected type. */
static json_object *get(json_object *o, const char *name, json_type type) {
        json_object *v;

        if (!json_object_object_get_ex(o, name, &v))
                fail_msg("member %s missing in %s", name, json_to_string(o, NULL));
        if (!json_object_is_type(v, type))
                fail_msg("member %s has type %s", name, json_type_to_name(json_object_get_type(v)));
        return v;
}

static void test_create_body(void **state) {
        _cleanup_free_ char *body = NULL;
        _cleanup_json_ json_object *o = NULL;
        DtaskTaskSpec spec = {
                .name = "sum of input",
                .code = "import sys\nprint(sum(map(int, sys.stdin.read().split())), end=\"\")",
                .language = DTASK_LANGUAGE_PYTHON,
                .input_data = "1 2 3",
                .ttl = "00:30:00",
                .idempotency_key = "abc",
        };

        assert_int_equal(wire_create_body(&spec, &body), 0);
        o = parse(body);
        /* exactly SPEC §8's create request: these five members, nothing else */
        assert_int_equal(json_object_object_length(o), 5);
        assert_string_equal(json_object_get_string(get(o, "name", json_type_string)), spec.name);
        assert_string_equal(json_object_get_string(get(o, "code", json_type_string)), spec.code);
        assert_string_equal(json_object_get_string(get(o, "language", json_type_string)), "Python");
        assert_string_equal(json_object_get_string(get(o, "inputData", json_type_string)), "1 2 3");
        assert_string_equal(json_object_get_string(get(o, "ttl", json_type_string)), "00:30:00");
        /* the idempotency key is a header, not a member */
        assert_null(strstr(body, "abc"));
        body = mfree(body);
        o = (json_object_put(o), NULL);

        /* no input: the member is left out; CSharp; TTL given in seconds or with a unit, sent as TimeSpan */
        spec = (DtaskTaskSpec) { .name = "n", .code = "c", .language = DTASK_LANGUAGE_CSHARP, .ttl = "1800" };
        assert_int_equal(wire_create_body(&spec, &body), 0);
        o = parse(body);
        assert_int_equal(json_object_object_length(o), 4);
        assert_false(json_object_object_get_ex(o, "inputData", NULL));
        assert_string_equal(json_object_get_string(get(o, "language", json_type_string)), "CSharp");
        assert_string_equal(json_object_get_string(get(o, "ttl", json_type_string)), "00:30:00");
        body = mfree(body);
        o = (json_object_put(o), NULL);

        static const struct {
                const char *ttl;
                uint64_t usec;
                const char *expect;
        } ttls[] = {
                { "30min", 0, "00:30:00" },
                { " 2h ", 0, "02:00:00" },
                { "1.00:00:00", 0, "1.00:00:00" },
                { "1d", 0, "1.00:00:00" },
                { "90", 0, "00:01:30" },
                { NULL, 45 * USEC_PER_SEC, "00:00:45" },
                { NULL, 1500 * USEC_PER_MSEC, "00:00:01.5000000" },
                { "0", 0, "00:00:00" }, /* the server refuses it, with a message naming ttl */
        };
        for (size_t i = 0; i < ELEMENTSOF(ttls); i++) {
                spec = (DtaskTaskSpec) { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON,
                                         .ttl = ttls[i].ttl, .ttl_usec = ttls[i].usec };
                assert_int_equal(wire_create_body(&spec, &body), 0);
                o = parse(body);
                assert_string_equal(json_object_get_string(get(o, "ttl", json_type_string)), ttls[i].expect);
                body = mfree(body);
                o = (json_object_put(o), NULL);
        }

        /* invalid specs: nothing is built */
        static const DtaskTaskSpec bad[] = {
                { .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "60" },
                { .name = "", .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "60" },
                { .name = "n", .language = DTASK_LANGUAGE_PYTHON, .ttl = "60" },
                { .name = "n", .code = "c", .language = DTASK_LANGUAGE_UNKNOWN, .ttl = "60" },
                { .name = "n", .code = "c", .language = 7, .ttl = "60" },
                { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON },
                { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "soon" },
                { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "-5" },
                { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "60", .idempotency_key = "" },
                { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "60", .idempotency_key = "a\r\nX-Evil: 1" },
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (wire_create_body(&bad[i], &body) != -EINVAL)
                        fail_msg("spec %zu accepted: %s", i, body);
                assert_null(body);
        }
        assert_int_equal(wire_create_body(NULL, &body), -EINVAL);
}

static void test_complete_body(void **state) {
        _cleanup_free_ char *body = NULL;
        _cleanup_json_ json_object *o = NULL;
        DtaskCompletion c = {
                .attempt = 2,
                .status = DTASK_STATUS_FAILED,
                .result = "partial\n",
                .error_message = "Traceback …",
                .has_exit_code = true,
                .exit_code = 1,
                .verdict = "runtime_error",
                .output_truncated = true,
        };

        assert_int_equal(wire_complete_body(&c, &body), 0);
        assert_string_equal(body, "{\"attempt\":2,\"status\":3,\"result\":\"partial\\n\",\"errorMessage\":\"Traceback …\","
                                  "\"exitCode\":1,\"verdict\":\"runtime_error\",\"outputTruncated\":true}");
        body = mfree(body);

        /* killed: exitCode null; nothing captured: nulls */
        c = (DtaskCompletion) { .attempt = 1, .status = DTASK_STATUS_EXPIRED, .verdict = "timeout" };
        assert_int_equal(wire_complete_body(&c, &body), 0);
        o = parse(body);
        assert_int_equal(json_object_object_length(o), 7);
        assert_int_equal(json_object_get_int(get(o, "status", json_type_int)), 4);
        get(o, "exitCode", json_type_null);
        get(o, "result", json_type_null);
        get(o, "errorMessage", json_type_null);
        assert_false(json_object_get_boolean(get(o, "outputTruncated", json_type_boolean)));
        body = mfree(body);

        /* only terminal statuses a worker may report, attempts from 1 */
        c = (DtaskCompletion) { .attempt = 1, .status = DTASK_STATUS_CANCELLED };
        assert_int_equal(wire_complete_body(&c, &body), -EINVAL);
        c = (DtaskCompletion) { .attempt = 1, .status = DTASK_STATUS_IN_PROGRESS };
        assert_int_equal(wire_complete_body(&c, &body), -EINVAL);
        c = (DtaskCompletion) { .attempt = 0, .status = DTASK_STATUS_COMPLETED };
        assert_int_equal(wire_complete_body(&c, &body), -EINVAL);
        assert_int_equal(wire_complete_body(NULL, &body), -EINVAL);
        assert_null(body);

        assert_int_equal(wire_heartbeat_body(3, &body), 0);
        assert_string_equal(body, "{\"attempt\":3}");
        body = mfree(body);
        assert_int_equal(wire_heartbeat_body(0, &body), -EINVAL);

        assert_int_equal(wire_claim_body(NULL, &body), 0);
        assert_string_equal(body, "{}");
        body = mfree(body);
        assert_int_equal(wire_claim_body("host/1", &body), 0);
        assert_string_equal(body, "{\"worker\":\"host/1\"}");
        body = mfree(body);
        assert_int_equal(wire_claim_body("", &body), -EINVAL);
        assert_int_equal(wire_claim_body("a\nb", &body), -EINVAL);
}

static void test_status_mapping(void **state) {
        static const struct {
                DtaskOp op;
                unsigned status;
                int error;
        } table[] = {
                { DTASK_OP_GET, 200, 0 },
                { DTASK_OP_CREATE, 201, 0 },
                { DTASK_OP_HEARTBEAT, 204, 0 },
                { DTASK_OP_CREATE, 400, -EINVAL },
                { DTASK_OP_GET, 401, -EKEYREJECTED },
                { DTASK_OP_GET, 403, -EPERM },
                { DTASK_OP_GET, 404, -ENOENT },
                { DTASK_OP_LIST, 405, -EOPNOTSUPP },
                { DTASK_OP_RETRY, 409, -EBUSY },
                { DTASK_OP_CANCEL, 409, -EBUSY },
                { DTASK_OP_CLAIM, 409, -EBUSY },
                { DTASK_OP_HEARTBEAT, 409, -ESTALE },
                { DTASK_OP_COMPLETE, 409, -ESTALE },
                { DTASK_OP_RELEASE, 204, 0 },
                { DTASK_OP_RELEASE, 409, -ESTALE },
                { DTASK_OP_CREATE, 413, -E2BIG },
                { DTASK_OP_CREATE, 415, -EPROTO },
                { DTASK_OP_CREATE, 422, -EEXIST },
                { DTASK_OP_GET, 422, -EINVAL },
                { DTASK_OP_GET, 418, -EINVAL },
                { DTASK_OP_CREATE, 429, -EAGAIN },
                { DTASK_OP_GET, 500, -EIO },
                { DTASK_OP_GET, 502, -EIO },
                { DTASK_OP_GET, 503, -EAGAIN },
                { DTASK_OP_GET, 504, -ETIMEDOUT },
                { DTASK_OP_GET, 302, -EPROTO },
                { DTASK_OP_GET, 100, -EPROTO },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (wire_errno_from_status(table[i].op, table[i].status, true) != table[i].error)
                        fail_msg("op %d status %u → %d, expected %d", table[i].op, table[i].status,
                                 wire_errno_from_status(table[i].op, table[i].status, true), table[i].error);
        assert_int_equal(wire_errno_from_status(DTASK_OP_GET, 401, false), -ENOKEY);
}

static void test_link_header(void **state) {
        char *c = NULL;

        /* what dtask-api sends */
        const char *api[] = { "</api/tasks?limit=2&after=1764353205123456-0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99>; rel=\"next\"" };
        assert_int_equal(wire_link_next_cursor(api, 1, &c), 1);
        assert_string_equal(c, "1764353205123456-0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99");
        c = mfree(c);

        /* with a status filter after the cursor, absolute URL, token rel, several links, extra params */
        const char *several[] = {
                "<https://x.example/api/tasks?after=first>; rel=\"first\", "
                "<http://h:8080/api/tasks?limit=10&after=12-ab%2Bcd&status=Pending>;title=\"a, b\";rel=next",
        };
        assert_int_equal(wire_link_next_cursor(several, 1, &c), 1);
        assert_string_equal(c, "12-ab+cd");
        c = mfree(c);

        /* rel with several types, case-insensitive, spaces around '=' */
        const char *multi[] = { "</api/tasks?after=X1> ; REL = \"prev NEXT\"" };
        assert_int_equal(wire_link_next_cursor(multi, 1, &c), 1);
        assert_string_equal(c, "X1");
        c = mfree(c);

        /* the next link in a second Link header */
        const char *two[] = { "</api/tasks?after=P>; rel=\"prev\"", "</api/tasks?after=N>; rel=\"next\"" };
        assert_int_equal(wire_link_next_cursor(two, 2, &c), 1);
        assert_string_equal(c, "N");
        c = mfree(c);

        /* no next: none, only prev, "nextpage" is not "next", no after, malformed */
        const char *none[] = {
                "</api/tasks?after=P>; rel=\"prev\"",
                "</api/tasks?after=P>; rel=\"nextpage\"",
                "</api/tasks?limit=5>; rel=\"next\"",
                "/api/tasks?after=P; rel=\"next\"",
                "</api/tasks?after=P; rel=\"next\"",
                "</api/tasks?after=%zz>; rel=\"next\"",
                "",
        };
        for (size_t i = 0; i < ELEMENTSOF(none); i++) {
                if (wire_link_next_cursor(&none[i], 1, &c) != 0)
                        fail_msg("found a next cursor in %s: %s", none[i], c);
                assert_null(c);
        }
        assert_int_equal(wire_link_next_cursor(NULL, 0, &c), 0);
}

static void test_paths(void **state) {
        char *p = NULL;

        assert_int_equal(wire_get_path("0B7F3C9E-5D1A-4C8E-9F2A-6E4D2C1B0A99", 0, &p), 0);
        assert_string_equal(p, "/api/tasks/0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99");
        p = mfree(p);
        assert_int_equal(wire_get_path("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", 30, &p), 0);
        assert_string_equal(p, "/api/tasks/0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99?wait=30");
        p = mfree(p);
        assert_int_equal(wire_task_path("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", "/complete", &p), 0);
        assert_string_equal(p, "/api/tasks/0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99/complete");
        p = mfree(p);

        /* ids that are not UUIDs never reach a path */
        assert_int_equal(wire_get_path("../keys", 0, &p), -EINVAL);
        assert_int_equal(wire_get_path("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99?x=1", 0, &p), -EINVAL);
        assert_int_equal(wire_task_path(NULL, "/retry", &p), -EINVAL);
        assert_int_equal(wire_task_path("", "/retry", &p), -EINVAL);
        assert_null(p);

        assert_int_equal(wire_list_path(DTASK_STATUS_ANY, 0, NULL, &p), 0);
        assert_string_equal(p, "/api/tasks");
        p = mfree(p);
        assert_int_equal(wire_list_path(DTASK_STATUS_IN_PROGRESS, 0, NULL, &p), 0);
        assert_string_equal(p, "/api/tasks?status=InProgress");
        p = mfree(p);
        assert_int_equal(wire_list_path(DTASK_STATUS_ANY, 50, "12-ab+cd/ef", &p), 0);
        assert_string_equal(p, "/api/tasks?limit=50&after=12-ab%2Bcd%2Fef");
        p = mfree(p);
        assert_int_equal(wire_list_path(DTASK_STATUS_FAILED, 7, "x", &p), 0);
        assert_string_equal(p, "/api/tasks?status=Failed&limit=7&after=x");
        p = mfree(p);
        assert_int_equal(wire_list_path(17, 0, NULL, &p), -EINVAL);
        assert_int_equal(wire_list_path(DTASK_STATUS_ANY, 0, "", &p), -EINVAL);
        assert_null(p);

        p = wire_percent_encode("a b&c=d%é~");
        assert_string_equal(p, "a%20b%26c%3Dd%25%C3%A9~");
        p = mfree(p);
        assert_int_equal(wire_percent_decode("a%20b%26%c3%a9", 14, &p), 0);
        assert_string_equal(p, "a b&é");
        p = mfree(p);
        assert_int_equal(wire_percent_decode("abc%2", 5, &p), -EINVAL);
        assert_int_equal(wire_percent_decode("abc%", 4, &p), -EINVAL);
        assert_int_equal(wire_percent_decode("%00", 3, &p), -EINVAL);
        assert_null(p);
}

static void test_problem(void **state) {
        _cleanup_json_ json_object *o = NULL, *weird = NULL;
        WireProblem p;

        o = parse("{\"type\":\"about:blank\",\"title\":\"Bad Request\",\"status\":400,"
                  "\"detail\":\"ttl: must be greater than 00:00:00 and at most 1.00:00:00\","
                  "\"errors\":{\"ttl\":[\"must be greater than 00:00:00 and at most 1.00:00:00\"]}}");
        assert_int_equal(wire_problem_from_json(o, &p), 0);
        assert_string_equal(p.type, "about:blank");
        assert_string_equal(p.title, "Bad Request");
        assert_string_equal(p.detail, "ttl: must be greater than 00:00:00 and at most 1.00:00:00");
        assert_string_equal(p.errors, "{\"ttl\":[\"must be greater than 00:00:00 and at most 1.00:00:00\"]}");
        free(p.errors);

        weird = parse("{\"title\":5,\"detail\":null,\"errors\":[]}");
        assert_int_equal(wire_problem_from_json(weird, &p), 0);
        assert_null(p.title);
        assert_null(p.detail);
        assert_null(p.errors);
}

static void test_enums(void **state) {
        assert_string_equal(dtask_status_to_string(DTASK_STATUS_IN_PROGRESS), "InProgress");
        assert_string_equal(dtask_status_to_string(DTASK_STATUS_CANCELLED), "Cancelled");
        assert_null(dtask_status_to_string(DTASK_STATUS_ANY));
        assert_null(dtask_status_to_string(6));
        assert_int_equal(dtask_status_from_string("inprogress"), DTASK_STATUS_IN_PROGRESS);
        assert_int_equal(dtask_status_from_string("in_progress"), DTASK_STATUS_IN_PROGRESS);
        assert_int_equal(dtask_status_from_string("EXPIRED"), DTASK_STATUS_EXPIRED);
        assert_int_equal(dtask_status_from_string("canceled"), DTASK_STATUS_CANCELLED);
        assert_int_equal(dtask_status_from_string("3"), DTASK_STATUS_FAILED);
        assert_int_equal(dtask_status_from_string("6"), DTASK_STATUS_ANY);
        assert_int_equal(dtask_status_from_string("33"), DTASK_STATUS_ANY);
        assert_int_equal(dtask_status_from_string(""), DTASK_STATUS_ANY);
        assert_int_equal(dtask_status_from_string(NULL), DTASK_STATUS_ANY);
        assert_false(dtask_status_is_terminal(DTASK_STATUS_PENDING));
        assert_false(dtask_status_is_terminal(DTASK_STATUS_IN_PROGRESS));
        assert_true(dtask_status_is_terminal(DTASK_STATUS_COMPLETED));
        assert_true(dtask_status_is_terminal(DTASK_STATUS_CANCELLED));
        assert_false(dtask_status_is_terminal(6));

        assert_string_equal(dtask_language_to_string(DTASK_LANGUAGE_PYTHON), "Python");
        assert_string_equal(dtask_language_to_string(DTASK_LANGUAGE_CSHARP), "CSharp");
        assert_null(dtask_language_to_string(DTASK_LANGUAGE_UNKNOWN));
        assert_int_equal(dtask_language_from_string("PYTHON"), DTASK_LANGUAGE_PYTHON);
        assert_int_equal(dtask_language_from_string("c#"), DTASK_LANGUAGE_CSHARP);
        assert_int_equal(dtask_language_from_string("0"), DTASK_LANGUAGE_CSHARP);
        assert_int_equal(dtask_language_from_string("1"), DTASK_LANGUAGE_PYTHON);
        assert_int_equal(dtask_language_from_string("ruby"), DTASK_LANGUAGE_UNKNOWN);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_spec_example_parses),
                cmocka_unit_test(test_task_tolerant),
                cmocka_unit_test(test_task_malformed),
                cmocka_unit_test(test_task_list),
                cmocka_unit_test(test_create_body),
                cmocka_unit_test(test_complete_body),
                cmocka_unit_test(test_status_mapping),
                cmocka_unit_test(test_link_header),
                cmocka_unit_test(test_paths),
                cmocka_unit_test(test_problem),
                cmocka_unit_test(test_enums),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
