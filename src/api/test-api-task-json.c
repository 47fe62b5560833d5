/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "json-util.h"
#include "task-json.h"

static const TaskLimits limits = {
        .max_code_size = 64 * 1024,
        .max_input_size = 1024 * 1024,
        .max_ttl = 24 * 3600 * USEC_PER_SEC,
        .max_output_size = 1024 * 1024,
};

static json_object *parse(const char *text) {
        json_object *o = NULL, *errors = NULL;

        if (task_json_parse_body(text, strlen(text), 1 << 24, false, &o, &errors) < 0)
                fail_msg("cannot parse %s: %s", text, json_to_string(errors, NULL));
        return o;
}

/* errors must have exactly one member, field, whose first message contains needle. */
static void assert_error(json_object *errors, const char *field, const char *needle) {
        json_object *list, *first;

        assert_non_null(errors);
        if (!json_object_object_get_ex(errors, field, &list))
                fail_msg("no error for \"%s\" in %s", field, json_to_string(errors, NULL));
        first = json_object_array_get_idx(list, 0);
        assert_non_null(first);
        if (!strstr(json_object_get_string(first), needle))
                fail_msg("error for %s is \"%s\", expected \"%s\"", field, json_object_get_string(first), needle);
}

static void test_status_language(void **state) {
        assert_string_equal(task_status_to_string(TASK_IN_PROGRESS), "InProgress");
        assert_string_equal(task_status_to_string(TASK_CANCELLED), "Cancelled");
        assert_null(task_status_to_string(_TASK_STATUS_MAX));
        assert_null(task_status_to_string(-1));
        assert_int_equal(task_status_from_string("completed"), TASK_COMPLETED);
        assert_int_equal(task_status_from_string("InProgress"), TASK_IN_PROGRESS);
        assert_int_equal(task_status_from_string("in_progress"), TASK_IN_PROGRESS);
        assert_int_equal(task_status_from_string("3"), TASK_FAILED);
        assert_int_equal(task_status_from_string("6"), -EINVAL);
        assert_int_equal(task_status_from_string("Done"), -EINVAL);
        assert_int_equal(task_status_from_string(""), -EINVAL);
        assert_true(task_status_is_terminal(TASK_EXPIRED));
        assert_false(task_status_is_terminal(TASK_IN_PROGRESS));

        assert_string_equal(task_language_to_string(TASK_LANGUAGE_PYTHON), "Python");
        assert_string_equal(task_language_to_string(TASK_LANGUAGE_CSHARP), "CSharp");
        assert_int_equal(task_language_from_string("python"), TASK_LANGUAGE_PYTHON);
        assert_int_equal(task_language_from_string("CSHARP"), TASK_LANGUAGE_CSHARP);
        assert_int_equal(task_language_from_string("1"), TASK_LANGUAGE_PYTHON);
        assert_int_equal(task_language_from_string("0"), TASK_LANGUAGE_CSHARP);
        assert_int_equal(task_language_from_string("ruby"), -EINVAL);
        assert_int_equal(task_language_from_string("2"), -EINVAL);

        assert_true(task_verdict_is_valid("ok"));
        assert_true(task_verdict_is_valid("worker_lost"));
        assert_false(task_verdict_is_valid("OK"));
        assert_false(task_verdict_is_valid(NULL));
}

static void test_utf8(void **state) {
        size_t off = 0;

        assert_true(utf8_is_valid("", 0, NULL));
        assert_true(utf8_is_valid("héllo €𝄞", strlen("héllo €𝄞"), NULL));
        assert_false(utf8_is_valid("ab\xff", 3, &off));
        assert_int_equal(off, 2);
        assert_false(utf8_is_valid("\xc0\xaf", 2, &off)); /* overlong '/' */
        assert_int_equal(off, 0);
        assert_false(utf8_is_valid("\xe0\x80\xaf", 3, NULL)); /* overlong */
        assert_false(utf8_is_valid("\xed\xa0\x80", 3, NULL)); /* surrogate D800 */
        assert_false(utf8_is_valid("\xf4\x90\x80\x80", 4, NULL)); /* > U+10FFFF */
        assert_false(utf8_is_valid("x\xe2\x82", 3, &off)); /* truncated */
        assert_int_equal(off, 1);
}

static void test_to_json(void **state) {
        _cleanup_json_ json_object *o = NULL;
        Task t = {
                .id = "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99",
                .name = (char *) "sum of input",
                .code = (char *) "import sys\nprint(sum(map(int, sys.stdin.read().split())), end=\"\")",
                .language = TASK_LANGUAGE_PYTHON,
                .input_data = (char *) "1 2 3",
                .owner_id = "5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6",
                .result = (char *) "6",
                .status = TASK_COMPLETED,
                .created_at = 1795889205123456ULL,
                .started_at = 1795889205140211ULL,
                .completed_at = 1795889205171002ULL,
                .expires_at = 1795891005123456ULL,
                .ttl = 1800 * USEC_PER_SEC,
                .error_message = (char *) "",
                .has_exit_code = true,
                .exit_code = 0,
                .verdict = (char *) "ok",
                .attempt = 1,
        };

        assert_int_equal(task_to_json(&t, &o), 0);
        assert_string_equal(
                json_to_string(o, NULL),
                "{\"id\":\"0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99\",\"name\":\"sum of input\","
                "\"code\":\"import sys\\nprint(sum(map(int, sys.stdin.read().split())), end=\\\"\\\")\","
                "\"language\":\"Python\",\"inputData\":\"1 2 3\",\"userId\":\"5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6\","
                "\"result\":\"6\",\"status\":2,\"statusName\":\"Completed\","
                "\"createdAt\":\"2026-11-28T18:06:45.123456Z\",\"startedAt\":\"2026-11-28T18:06:45.140211Z\","
                "\"completedAt\":\"2026-11-28T18:06:45.171002Z\",\"expiresAt\":\"2026-11-28T18:36:45.123456Z\","
                "\"ttl\":\"00:30:00\",\"errorMessage\":\"\",\"exitCode\":0,\"verdict\":\"ok\","
                "\"outputTruncated\":false,\"retryCount\":0,\"attempt\":1}");

        /* A fresh Pending task: nulls where nothing happened yet, days in the TimeSpan. */
        json_object_put(TAKE_PTR(o));
        t.status = TASK_PENDING;
        t.result = t.error_message = t.verdict = t.input_data = NULL;
        t.has_exit_code = false;
        t.started_at = t.completed_at = 0;
        t.ttl = 7 * 24 * 3600 * USEC_PER_SEC;
        t.attempt = 0;
        t.retry_count = 2;
        assert_int_equal(task_to_json(&t, &o), 0);
        assert_non_null(strstr(json_to_string(o, NULL),
                               "\"inputData\":null,\"userId\":\"5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6\","
                               "\"result\":null,\"status\":0,\"statusName\":\"Pending\""));
        assert_non_null(strstr(json_to_string(o, NULL), "\"startedAt\":null,\"completedAt\":null"));
        assert_non_null(strstr(json_to_string(o, NULL),
                               "\"ttl\":\"7.00:00:00\",\"errorMessage\":null,\"exitCode\":null,\"verdict\":null,"
                               "\"outputTruncated\":false,\"retryCount\":2,\"attempt\":0}"));
}

static void test_create_ok(void **state) {
        static const struct {
                const char *json;
                TaskLanguage language;
                usec_t ttl;
                const char *input;
        } cases[] = {
                { "{\"name\": \"sum of input\", \"code\": \"print(1)\", \"language\": \"Python\", \"inputData\": \"1 2 3\", "
                  "\"ttl\": \"00:30:00\"}",
                  TASK_LANGUAGE_PYTHON, 1800 * USEC_PER_SEC, "1 2 3" },
                { "{\"name\": \"x\", \"code\": \"print(1)\", \"language\": \"python\", \"ttl\": 1800}",
                  TASK_LANGUAGE_PYTHON, 1800 * USEC_PER_SEC, NULL },
                { "{\"Name\": \"x\", \"Code\": \"class A{}\", \"Language\": 0, \"InputData\": null, \"Ttl\": \"1.00:00:00\"}",
                  TASK_LANGUAGE_CSHARP, 24 * 3600 * USEC_PER_SEC, NULL },
                { "{\"name\": \"x\", \"code\": \"c\", \"language\": 1, \"ttl\": \"60\"}",
                  TASK_LANGUAGE_PYTHON, 60 * USEC_PER_SEC, NULL },
                { "{\"name\": \"x\", \"code\": \"c\", \"language\": \"CSharp\", \"ttl\": \"00:00:00.5\", \"status\": 4, "
                  "\"id\": \"ignored\"}",
                  TASK_LANGUAGE_CSHARP, 500 * USEC_PER_MSEC, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_json_ json_object *o = parse(cases[i].json), *errors = NULL;
                TaskCreate c = {};

                if (task_create_from_json(o, &limits, &c, &errors) < 0)
                        fail_msg("case %zu: %s", i, json_to_string(errors, NULL));
                assert_null(errors);
                assert_int_equal(c.language, cases[i].language);
                assert_int_equal(c.ttl, cases[i].ttl);
                if (cases[i].input)
                        assert_string_equal(c.input_data, cases[i].input);
                else
                        assert_null(c.input_data);
        }
}

static void test_create_utf8_preserved(void **state) {
        /* Multi-byte characters and escapes come out byte for byte. */
        _cleanup_json_ json_object *o = parse(
                "{\"name\": \"naïve ☃\", \"code\": \"print('h\\u00e9llo \xf0\x9d\x84\x9e')\\r\\n\", \"language\": 1, \"ttl\": 5}");
        _cleanup_json_ json_object *errors = NULL;
        TaskCreate c = {};

        assert_int_equal(task_create_from_json(o, &limits, &c, &errors), 0);
        assert_string_equal(c.name, "naïve ☃");
        assert_string_equal(c.code, "print('h\xc3\xa9llo \xf0\x9d\x84\x9e')\r\n");
}

static void expect_create_error(const char *json, const char *field, const char *needle) {
        _cleanup_json_ json_object *o = parse(json), *errors = NULL;
        TaskCreate c = {};

        assert_int_equal(task_create_from_json(o, &limits, &c, &errors), -EINVAL);
        assert_error(errors, field, needle);
}

static void test_create_errors(void **state) {
        _cleanup_free_ char *long_name = NULL, *json = NULL, *big_code = NULL;
        _cleanup_json_ json_object *o = NULL, *errors = NULL;
        _cleanup_free_ char *summary = NULL;
        TaskCreate c = {};

        /* missing */
        expect_create_error("{\"code\": \"c\", \"language\": 1, \"ttl\": 5}", "name", "is required");
        expect_create_error("{\"name\": \"n\", \"language\": 1, \"ttl\": 5}", "code", "is required");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"ttl\": 5}", "language", "is required");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1}", "ttl", "is required");
        expect_create_error("{\"name\": null, \"code\": \"c\", \"language\": 1, \"ttl\": 5}", "name", "is required");

        /* wrong types */
        expect_create_error("{\"name\": 5, \"code\": \"c\", \"language\": 1, \"ttl\": 5}", "name", "must be a string");
        expect_create_error("{\"name\": \"n\", \"code\": [], \"language\": 1, \"ttl\": 5}", "code", "must be a string");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": true, \"ttl\": 5}", "language",
                            "must be \"Python\" or \"CSharp\"");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": 5, \"inputData\": 7}",
                            "inputData", "must be a string");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": {}}", "ttl", "must be a TimeSpan");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": 1.5}", "ttl", "must be a TimeSpan");

        /* values */
        expect_create_error("{\"name\": \"\", \"code\": \"c\", \"language\": 1, \"ttl\": 5}", "name", "must not be empty");
        expect_create_error("{\"name\": \" \\t \", \"code\": \"c\", \"language\": 1, \"ttl\": 5}", "name", "must not be blank");
        expect_create_error("{\"name\": \"n\", \"code\": \"\", \"language\": 1, \"ttl\": 5}", "code", "must not be empty");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": \"ruby\", \"ttl\": 5}", "language", "Python");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 2, \"ttl\": 5}", "language", "Python");
        expect_create_error("{\"name\": \"n\", \"code\": \"a\\u0000b\", \"language\": 1, \"ttl\": 5}", "code", "NUL");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": \"soon\"}", "ttl", "must be a TimeSpan");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": \"25:00:00\"}", "ttl", "must be a TimeSpan");

        /* ttl range: zero, negative, huge, just over the maximum */
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": 0}", "ttl",
                            "must be greater than 00:00:00 and at most 1.00:00:00");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": -5}", "ttl", "greater than 00:00:00");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": \"00:00:00\"}", "ttl", "greater than");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": \"-00:01:00\"}", "ttl", "greater than");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": 86401}", "ttl", "at most 1.00:00:00");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": \"1.00:00:01\"}", "ttl", "at most");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": 99999999999999999999999}", "ttl", "at most");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": \"99999999999999\"}", "ttl", "at most");
        expect_create_error("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": \"10675199.00:00:00\"}", "ttl", "at most");

        /* lengths: 250 characters is fine, 251 not; the limit counts characters */
        long_name = malloc(251 * 2 + 1);
        assert_non_null(long_name);
        for (size_t i = 0; i < 250; i++)
                memcpy(long_name + 2 * i, "\xc3\xa9", 2);
        long_name[500] = '\0';
        assert_true(asprintf(&json, "{\"name\": \"%s\", \"code\": \"c\", \"language\": 1, \"ttl\": 5}", long_name) > 0);
        o = parse(json);
        assert_int_equal(task_create_from_json(o, &limits, &c, &errors), 0);
        json_object_put(TAKE_PTR(o));
        free(TAKE_PTR(json));
        assert_true(asprintf(&json, "{\"name\": \"%sx\", \"code\": \"c\", \"language\": 1, \"ttl\": 5}", long_name) > 0);
        expect_create_error(json, "name", "at most 250 characters");
        free(TAKE_PTR(json));

        big_code = malloc(64 * 1024 + 2);
        assert_non_null(big_code);
        memset(big_code, 'x', 64 * 1024 + 1);
        big_code[64 * 1024 + 1] = '\0';
        assert_true(asprintf(&json, "{\"name\": \"n\", \"code\": \"%s\", \"language\": 1, \"ttl\": 5}", big_code) > 0);
        expect_create_error(json, "code", "at most 65536 bytes");
        free(TAKE_PTR(json));
        big_code[64 * 1024] = '\0'; /* exactly the limit */
        assert_true(asprintf(&json, "{\"name\": \"n\", \"code\": \"%s\", \"language\": 1, \"ttl\": 5}", big_code) > 0);
        o = parse(json);
        assert_int_equal(task_create_from_json(o, &limits, &c, &errors), 0);
        assert_int_equal(strlen(c.code), 64 * 1024);
        json_object_put(TAKE_PTR(o));
        free(TAKE_PTR(json));

        {
                TaskLimits small = limits;

                small.max_input_size = 4;
                o = parse("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": 5, \"inputData\": \"12345\"}");
                assert_int_equal(task_create_from_json(o, &small, &c, &errors), -EINVAL);
                assert_error(errors, "inputData", "at most 4 bytes");
                json_object_put(TAKE_PTR(o));
                json_object_put(TAKE_PTR(errors));
        }

        /* several errors at once: each field is named, the summary is "field: message" */
        o = parse("{\"name\": \"\", \"code\": 1, \"language\": \"x\", \"ttl\": 0}");
        assert_int_equal(task_create_from_json(o, &limits, &c, &errors), -EINVAL);
        assert_error(errors, "name", "empty");
        assert_error(errors, "code", "string");
        assert_error(errors, "language", "Python");
        assert_error(errors, "ttl", "greater than");
        json_object_put(TAKE_PTR(errors));
        json_object_put(TAKE_PTR(o));

        o = parse("{\"name\": \"n\", \"code\": \"c\", \"language\": 1, \"ttl\": 0}");
        assert_int_equal(task_create_from_json(o, &limits, &c, &errors), -EINVAL);
        summary = json_errors_summary(errors);
        assert_string_equal(summary, "ttl: must be greater than 00:00:00 and at most 1.00:00:00");
}

static void test_parse_body(void **state) {
        static const struct {
                const char *body;
                int r;
                const char *field;
                const char *needle;
        } cases[] = {
                { "{\"name\": \"n\xff\", \"code\": \"c\"}", -EBADMSG, "name", "valid UTF-8" },
                { "{\"name\": \"n\", \"Code\": \"ok\xc3\x28\"}", -EBADMSG, "code", "valid UTF-8" },
                { "{\"name\": \"n\", \"inputdata\": \"\xed\xa0\x80\"}", -EBADMSG, "inputData", "valid UTF-8" },
                { "{\"name\": {\"x\": [\"\xff\"]}}", -EBADMSG, "name", "valid UTF-8" },
                { "{\"na\xffme\": 1}", -EBADMSG, "body", "valid UTF-8" },
                { "{\"name\": \"n\",", -EBADMSG, "body", "malformed JSON" },
                { "{\"name\": 'n'}", -EBADMSG, "body", "malformed JSON" },
                { "[1, 2]", -EBADMSG, "body", "must be a JSON object" },
                { "\"x\"", -EBADMSG, "body", "must be a JSON object" },
                { "null", -EBADMSG, "body", "must be a JSON object" },
                { "", -EBADMSG, "body", "required" },
                { "  \n", -EBADMSG, "body", "required" },
                { "{\"a\": [[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]}", -EMLINK, "body", "deeper" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_json_ json_object *o = NULL, *errors = NULL;

                assert_int_equal(task_json_parse_body(cases[i].body, strlen(cases[i].body), 4096, false, &o, &errors),
                                 cases[i].r);
                assert_null(o);
                assert_error(errors, cases[i].field, cases[i].needle);
        }

        {
                _cleanup_json_ json_object *o = NULL, *errors = NULL;

                assert_int_equal(task_json_parse_body("{\"a\": \"0123456789\"}", 19, 10, false, &o, &errors), -E2BIG);
                assert_int_equal(task_json_parse_body("", 0, 10, true, &o, &errors), 0);
                assert_true(json_object_is_type(o, json_type_object));
                assert_null(errors);
        }
}

static void test_patch(void **state) {
        _cleanup_json_ json_object *o = NULL, *errors = NULL;
        TaskPatch p = {};

        o = parse("{\"id\": \"x\", \"createdAt\": \"now\", \"retryCount\": 99, \"name\": \"new\", \"code\": null, "
                  "\"ttl\": 60, \"language\": \"csharp\"}");
        assert_int_equal(task_patch_from_json(o, &limits, &p, &errors), 0);
        assert_int_equal(p.fields, TASK_PATCH_NAME | TASK_PATCH_TTL | TASK_PATCH_LANGUAGE);
        assert_string_equal(p.name, "new");
        assert_int_equal(p.ttl, 60 * USEC_PER_SEC);
        assert_int_equal(p.language, TASK_LANGUAGE_CSHARP);
        assert_int_equal(p.fields & TASK_PATCH_EXECUTION_FIELDS, 0);
        json_object_put(TAKE_PTR(o));

        o = parse("{\"status\": \"Completed\", \"result\": \"42\", \"errorMessage\": \"\", "
                  "\"startedAt\": \"2026-11-28T18:06:45.140211Z\", \"completedAt\": \"2026-11-28T19:06:45+01:00\", "
                  "\"userId\": \"5A1D2E3F-4B6C-4D7E-8F90-A1B2C3D4E5F6\"}");
        assert_int_equal(task_patch_from_json(o, &limits, &p, &errors), 0);
        assert_int_equal(p.fields, TASK_PATCH_EXECUTION_FIELDS);
        assert_int_equal(p.status, TASK_COMPLETED);
        assert_string_equal(p.result, "42");
        assert_string_equal(p.error_message, "");
        assert_int_equal(p.started_at, 1795889205140211ULL);
        assert_int_equal(p.completed_at, 1795889205000000ULL);
        assert_string_equal(p.user_id, "5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6");
        assert_string_equal(task_patch_field_name(TASK_PATCH_ERROR_MESSAGE), "errorMessage");
        json_object_put(TAKE_PTR(o));

        o = parse("{\"status\": 9, \"userId\": \"nope\", \"ttl\": 0, \"startedAt\": \"yesterday\", \"name\": \"\"}");
        assert_int_equal(task_patch_from_json(o, &limits, &p, &errors), -EINVAL);
        assert_error(errors, "status", "must be one of 0 (Pending)");
        assert_error(errors, "userId", "UUID");
        assert_error(errors, "ttl", "greater than");
        assert_error(errors, "startedAt", "ISO-8601");
        assert_error(errors, "name", "empty");
        json_object_put(TAKE_PTR(o));
        json_object_put(TAKE_PTR(errors));

        o = parse("{}");
        assert_int_equal(task_patch_from_json(o, &limits, &p, &errors), 0);
        assert_int_equal(p.fields, 0);
}

static void test_completion(void **state) {
        _cleanup_json_ json_object *o = NULL, *errors = NULL;
        TaskCompletion c = {};
        unsigned attempt = 0;
        const char *worker = NULL;

        o = parse("{\"attempt\": 2, \"status\": 3, \"result\": \"\", \"errorMessage\": \"Traceback\", \"exitCode\": 1, "
                  "\"verdict\": \"runtime_error\", \"outputTruncated\": true}");
        assert_int_equal(task_completion_from_json(o, &limits, &c, &errors), 0);
        assert_int_equal(c.attempt, 2);
        assert_int_equal(c.status, TASK_FAILED);
        assert_true(c.has_exit_code);
        assert_int_equal(c.exit_code, 1);
        assert_string_equal(c.verdict, "runtime_error");
        assert_true(c.output_truncated);
        json_object_put(TAKE_PTR(o));

        o = parse("{\"attempt\": 1, \"status\": \"Expired\", \"exitCode\": null}");
        assert_int_equal(task_completion_from_json(o, &limits, &c, &errors), 0);
        assert_int_equal(c.status, TASK_EXPIRED);
        assert_false(c.has_exit_code);
        assert_null(c.verdict);
        json_object_put(TAKE_PTR(o));

        o = parse("{\"status\": 1, \"verdict\": \"great\", \"exitCode\": \"0\", \"outputTruncated\": 1}");
        assert_int_equal(task_completion_from_json(o, &limits, &c, &errors), -EINVAL);
        assert_error(errors, "attempt", "is required");
        assert_error(errors, "status", "must be one of 2 (Completed), 3 (Failed), 4 (Expired)");
        assert_error(errors, "verdict", "must be one of ok");
        assert_error(errors, "exitCode", "integer");
        assert_error(errors, "outputTruncated", "true or false");
        json_object_put(TAKE_PTR(o));
        json_object_put(TAKE_PTR(errors));

        o = parse("{\"attempt\": 0, \"status\": 2}");
        assert_int_equal(task_completion_from_json(o, &limits, &c, &errors), -EINVAL);
        assert_error(errors, "attempt", "between 1 and");
        json_object_put(TAKE_PTR(o));
        json_object_put(TAKE_PTR(errors));

        o = parse("{\"attempt\": 3}");
        assert_int_equal(task_heartbeat_from_json(o, &attempt, &errors), 0);
        assert_int_equal(attempt, 3);
        json_object_put(TAKE_PTR(o));
        o = parse("{}");
        assert_int_equal(task_heartbeat_from_json(o, &attempt, &errors), -EINVAL);
        assert_error(errors, "attempt", "is required");
        json_object_put(TAKE_PTR(o));
        json_object_put(TAKE_PTR(errors));

        o = parse("{\"worker\": \"host-1/2\"}");
        assert_int_equal(task_claim_from_json(o, &worker, &errors), 0);
        assert_string_equal(worker, "host-1/2");
        json_object_put(TAKE_PTR(o));
        o = parse("{\"worker\": \"a\\nb\"}");
        assert_int_equal(task_claim_from_json(o, &worker, &errors), -EINVAL);
        assert_error(errors, "worker", "printable");
        assert_true(task_worker_name_is_valid("w1"));
        assert_false(task_worker_name_is_valid(""));
        assert_false(task_worker_name_is_valid("a\x7f"));
}

static void test_hash(void **state) {
        TaskCreate a = { .name = "n", .code = "c", .language = TASK_LANGUAGE_PYTHON, .ttl = 5 }, b = a;
        uint8_t ha[32], hb[32];

        task_create_hash(&a, ha);
        task_create_hash(&b, hb);
        assert_memory_equal(ha, hb, 32);

        b.input_data = "";
        task_create_hash(&b, hb);
        assert_memory_not_equal(ha, hb, 32); /* null and "" differ */

        b = a;
        b.name = "nc";
        b.code = "";
        task_create_hash(&b, hb);
        assert_memory_not_equal(ha, hb, 32); /* no ambiguity across field boundaries */

        b = a;
        b.ttl = 6;
        task_create_hash(&b, hb);
        assert_memory_not_equal(ha, hb, 32);
}

static void test_body_limits(void **state) {
        assert_int_equal(task_create_body_limit(&limits), 6 * (64 * 1024 + 1024 * 1024) + 64 * 1024);
        assert_true(task_complete_body_limit(&limits) > 2 * limits.max_output_size);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_status_language),
                cmocka_unit_test(test_utf8),
                cmocka_unit_test(test_to_json),
                cmocka_unit_test(test_create_ok),
                cmocka_unit_test(test_create_utf8_preserved),
                cmocka_unit_test(test_create_errors),
                cmocka_unit_test(test_parse_body),
                cmocka_unit_test(test_patch),
                cmocka_unit_test(test_completion),
                cmocka_unit_test(test_hash),
                cmocka_unit_test(test_body_limits),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
