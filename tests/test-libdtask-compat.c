/* SPDX-License-Identifier: MIT */
/* libdtask and dtask-api speak the same JSON: the bodies libdtask builds are accepted by
 * dtask-api's own request parsers (src/api/task-json.c) with every field intact, and the
 * task dtask-api writes parses back into the same DtaskTask. No network: both sides' pure
 * JSON code, linked together. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "dtask-wire.h"
#include "json-util.h"
#include "task-json.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTask *, dtask_task_free);

static const TaskLimits limits = {
        .max_code_size = 64 * 1024,
        .max_input_size = 1024 * 1024,
        .max_ttl = 24 * 3600 * USEC_PER_SEC,
        .max_output_size = 1024 * 1024,
};

/* Parses a body the way dtask-api does. */
static json_object *api_parse(const char *body) {
        json_object *o = NULL, *errors = NULL;

        if (task_json_parse_body(body, strlen(body), 1 << 24, false, &o, &errors) < 0)
                fail_msg("dtask-api refuses %s: %s", body, json_to_string(errors, NULL));
        return o;
}

static void test_create_accepted(void **state) {
        static const char code[] = "import sys\nprint(sum(map(int, sys.stdin.read().split())), end=\"\") # é ✓";
        static const struct {
                DtaskLanguage language;
                const char *input;
                const char *ttl;
                uint64_t ttl_usec;
                usec_t expect_ttl;
        } cases[] = {
                { DTASK_LANGUAGE_PYTHON, "1 2 3", "00:30:00", 0, 1800 * USEC_PER_SEC },
                { DTASK_LANGUAGE_CSHARP, NULL, "1800", 0, 1800 * USEC_PER_SEC },
                { DTASK_LANGUAGE_PYTHON, "", "1.00:00:00", 0, 24 * 3600 * USEC_PER_SEC },
                { DTASK_LANGUAGE_PYTHON, "x\n", "90min", 0, 90 * 60 * USEC_PER_SEC },
                { DTASK_LANGUAGE_CSHARP, NULL, NULL, 1500 * USEC_PER_MSEC, 1500 * USEC_PER_MSEC },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *body = NULL;
                _cleanup_json_ json_object *o = NULL, *errors = NULL;
                DtaskTaskSpec spec = {
                        .name = "sum of input",
                        .code = code,
                        .language = cases[i].language,
                        .input_data = cases[i].input,
                        .ttl = cases[i].ttl,
                        .ttl_usec = cases[i].ttl_usec,
                };
                TaskCreate c;

                assert_int_equal(wire_create_body(&spec, &body), 0);
                o = api_parse(body);
                if (task_create_from_json(o, &limits, &c, &errors) < 0)
                        fail_msg("dtask-api refuses create body %s: %s", body, json_to_string(errors, NULL));
                assert_string_equal(c.name, spec.name);
                assert_string_equal(c.code, code);
                assert_int_equal((int) c.language, (int) cases[i].language);
                if (cases[i].input)
                        assert_string_equal(c.input_data, cases[i].input);
                else
                        assert_null(c.input_data);
                assert_true(c.ttl == cases[i].expect_ttl);
        }

        /* what the API refuses, libdtask lets through for the server to explain (ttl 0, 2 days) */
        {
                _cleanup_free_ char *body = NULL;
                _cleanup_json_ json_object *o = NULL, *errors = NULL;
                DtaskTaskSpec spec = { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "2d" };
                TaskCreate c;

                assert_int_equal(wire_create_body(&spec, &body), 0);
                o = api_parse(body);
                assert_int_equal(task_create_from_json(o, &limits, &c, &errors), -EINVAL);
                assert_true(json_object_object_get_ex(errors, "ttl", NULL));
        }
}

static void test_worker_bodies_accepted(void **state) {
        _cleanup_free_ char *body = NULL;
        _cleanup_json_ json_object *o = NULL, *errors = NULL;
        DtaskCompletion d = {
                .attempt = 3,
                .status = DTASK_STATUS_FAILED,
                .result = "partial output\n",
                .error_message = "Traceback (most recent call last):\n  …\nZeroDivisionError\n",
                .has_exit_code = true,
                .exit_code = 1,
                .verdict = "runtime_error",
                .output_truncated = true,
        };
        TaskCompletion c;
        unsigned attempt = 0;
        const char *worker = NULL;

        assert_int_equal(wire_complete_body(&d, &body), 0);
        o = api_parse(body);
        if (task_completion_from_json(o, &limits, &c, &errors) < 0)
                fail_msg("dtask-api refuses complete body %s: %s", body, json_to_string(errors, NULL));
        assert_int_equal(c.attempt, 3);
        assert_int_equal(c.status, TASK_FAILED);
        assert_string_equal(c.result, d.result);
        assert_string_equal(c.error_message, d.error_message);
        assert_true(c.has_exit_code);
        assert_int_equal(c.exit_code, 1);
        assert_string_equal(c.verdict, "runtime_error");
        assert_true(c.output_truncated);
        body = mfree(body);
        o = (json_object_put(o), NULL);

        /* killed by the TTL: no exit code, nothing captured */
        d = (DtaskCompletion) { .attempt = 1, .status = DTASK_STATUS_EXPIRED, .verdict = "timeout",
                                .error_message = "Task expired due to TTL" };
        assert_int_equal(wire_complete_body(&d, &body), 0);
        o = api_parse(body);
        if (task_completion_from_json(o, &limits, &c, &errors) < 0)
                fail_msg("dtask-api refuses complete body %s: %s", body, json_to_string(errors, NULL));
        assert_int_equal(c.status, TASK_EXPIRED);
        assert_false(c.has_exit_code);
        assert_null(c.result);
        body = mfree(body);
        o = (json_object_put(o), NULL);

        assert_int_equal(wire_heartbeat_body(7, &body), 0);
        o = api_parse(body);
        assert_int_equal(task_heartbeat_from_json(o, &attempt, &errors), 0);
        assert_int_equal(attempt, 7);
        body = mfree(body);
        o = (json_object_put(o), NULL);

        assert_int_equal(wire_claim_body("host-a/2", &body), 0);
        o = api_parse(body);
        assert_int_equal(task_claim_from_json(o, &worker, &errors), 0);
        assert_string_equal(worker, "host-a/2");
}

static void test_api_task_parses(void **state) {
        _cleanup_json_ json_object *o = NULL;
        _cleanup_(dtask_task_freep) DtaskTask *d = NULL;
        char buf[TIMESPAN_STRING_MAX];
        Task t = {
                .id = "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99",
                .name = (char *) "sum of input",
                .code = (char *) "print(6)",
                .language = TASK_LANGUAGE_CSHARP,
                .input_data = (char *) "1 2 3",
                .owner_id = "5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6",
                .status = TASK_FAILED,
                .result = (char *) "out",
                .error_message = (char *) "err",
                .has_exit_code = true,
                .exit_code = 137,
                .verdict = (char *) "memory_limit",
                .output_truncated = true,
                .ttl = 7 * 24 * 3600 * USEC_PER_SEC,
                .created_at = 1795889205123456,
                .started_at = 1795889205140211,
                .completed_at = 1795889205171002,
                .expires_at = 1795889205123456 + 7 * 24 * 3600 * USEC_PER_SEC,
                .retry_count = 2,
                .attempt = 3,
        };

        assert_int_equal(task_to_json(&t, &o), 0);
        assert_int_equal(wire_task_from_json(o, &d), 0);
        assert_string_equal(d->id, t.id);
        assert_string_equal(d->name, t.name);
        assert_string_equal(d->code, t.code);
        assert_int_equal(d->language, DTASK_LANGUAGE_CSHARP);
        assert_string_equal(d->input_data, t.input_data);
        assert_string_equal(d->user_id, t.owner_id);
        assert_int_equal(d->status, DTASK_STATUS_FAILED);
        assert_string_equal(d->status_name, "Failed");
        assert_string_equal(d->result, "out");
        assert_string_equal(d->error_message, "err");
        assert_true(d->has_exit_code);
        assert_int_equal(d->exit_code, 137);
        assert_string_equal(d->verdict, "memory_limit");
        assert_true(d->output_truncated);
        assert_string_equal(d->ttl, timespan_format(t.ttl, buf));
        assert_true(d->ttl_usec == t.ttl);
        assert_true(d->created_at == t.created_at);
        assert_true(d->started_at == t.started_at);
        assert_true(d->completed_at == t.completed_at);
        assert_true(d->expires_at == t.expires_at);
        assert_int_equal(d->retry_count, 2);
        assert_int_equal(d->attempt, 3);
        d = dtask_task_free(d);
        o = (json_object_put(o), NULL);

        /* a fresh Pending task: nulls everywhere they may be */
        t = (Task) { .id = "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", .name = (char *) "n", .code = (char *) "c",
                     .language = TASK_LANGUAGE_PYTHON, .owner_id = "5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6",
                     .ttl = 60 * USEC_PER_SEC, .created_at = 1795889205123456, .expires_at = 1795889265123456 };
        assert_int_equal(task_to_json(&t, &o), 0);
        assert_int_equal(wire_task_from_json(o, &d), 0);
        assert_int_equal(d->status, DTASK_STATUS_PENDING);
        assert_null(d->input_data);
        assert_null(d->result);
        assert_false(d->has_exit_code);
        assert_true(d->started_at == 0);
        assert_true(d->completed_at == 0);
        assert_string_equal(d->ttl, "00:01:00");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_create_accepted),
                cmocka_unit_test(test_worker_bodies_accepted),
                cmocka_unit_test(test_api_task_parses),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
