/* SPDX-License-Identifier: MIT */
/* libdtask against the real dtask-api of the dev environment (tools/dev up; source .dev/env):
 * create (and Idempotency-Key replay) → get → list (finds it, cursor paging) → cancel →
 * retry; the worker protocol claim → heartbeat → complete → get shows the result; a second
 * complete of the same attempt is fenced (-ESTALE); ?wait= answered when the task finishes;
 * errors carry the server's problem detail. Needs DTASK_API_URL, DTASK_API_KEY (claims
 * tasks:read/write/execute) and DTASK_DATABASE_URL; exits 77 (skipped) without them or when
 * nothing listens at DTASK_API_URL.
 *
 * The worker-protocol part runs on tasks written straight into the database, never published
 * and marked published (as tests/test_api_lib.py does), so that real workers and the reaper
 * leave them alone while this test plays the worker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <stdio.h>
#include <time.h>

#include "dtask.h"
#include "macro.h"
#include "uuid-util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTask *, dtask_task_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTaskList *, dtask_task_list_free);

static const char *api_url, *api_key, *database_url;
static DtaskClient *client; /* blocking */

static uint64_t mono(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static const char *detail(void) {
        return strna(dtask_client_get_last_reply(client)->problem_detail);
}

#define assert_ok(expr)                                                                                  \
        do {                                                                                             \
                int _r = (expr);                                                                         \
                if (_r < 0)                                                                              \
                        fail_msg("%s failed: %s (HTTP %u: %s)", #expr, strerror(-_r),                    \
                                 dtask_client_get_last_reply(client)->http_status, detail());            \
        } while (false)

/* A Pending task nobody will dispatch: the test is its worker. */
static void insert_task(const char *owner, char ret_id[static UUID_STRING_MAX]) {
        PGconn *db;
        PGresult *res;
        const char *values[2];

        uuid_generate_v4(ret_id);
        values[0] = ret_id;
        values[1] = owner;
        db = PQconnectdb(database_url);
        if (PQstatus(db) != CONNECTION_OK)
                fail_msg("cannot connect to %s: %s", database_url, PQerrorMessage(db));
        res = PQexecParams(db,
                           "INSERT INTO tasks (id, name, code, language, input_data, owner_id, status, ttl, expires_at, "
                           "attempt) VALUES ($1::uuid, 'libdtask worker test', "
                           "'print(sum(map(int, input().split())))', 1, '1 2 3', $2::uuid, 0, interval '3600 seconds', "
                           "now() + interval '3600 seconds', 0)",
                           2, NULL, values, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
                fail_msg("cannot insert a task: %s", PQerrorMessage(db));
        PQclear(res);
        PQfinish(db);
}

static DtaskTask *create_task(const char *name, const char *idempotency_key) {
        DtaskTask *t = NULL;
        DtaskTaskSpec spec = {
                .name = name,
                .code = "import time\ntime.sleep(30)\nprint('slept')\n",
                .language = DTASK_LANGUAGE_PYTHON,
                .input_data = "1 2 3",
                .ttl = "30min",
                .idempotency_key = idempotency_key,
        };

        assert_ok(dtask_create_sync(client, &spec, &t));
        return t;
}

static void test_create_get_list_cancel_retry(void **state) {
        _cleanup_(dtask_task_freep) DtaskTask *t = NULL, *again = NULL, *got = NULL, *c = NULL, *r = NULL;
        char key[UUID_STRING_MAX], location[128];
        const DtaskReply *reply;
        bool found = false;
        int k;

        uuid_generate_v4(key);
        t = create_task("libdtask live test", key);
        reply = dtask_client_get_last_reply(client);
        assert_int_equal(reply->http_status, 201);
        assert_false(reply->replayed);
        snprintf(location, sizeof location, "/api/tasks/%s", t->id);
        assert_non_null(reply->location);
        assert_non_null(strstr(reply->location, location));
        assert_true(uuid_is_valid(t->id));
        assert_string_equal(t->name, "libdtask live test");
        assert_int_equal(t->language, DTASK_LANGUAGE_PYTHON);
        assert_string_equal(t->input_data, "1 2 3");
        assert_string_equal(t->ttl, "00:30:00");
        assert_true(t->expires_at - t->created_at == 1800 * USEC_PER_SEC);
        assert_true(t->status == DTASK_STATUS_PENDING || t->status == DTASK_STATUS_IN_PROGRESS);
        assert_int_equal(t->retry_count, 0);
        assert_true(uuid_is_valid(t->user_id));

        /* the same Idempotency-Key: the original task, nothing new */
        again = create_task("libdtask live test", key);
        assert_true(dtask_client_get_last_reply(client)->replayed);
        assert_int_equal(dtask_client_get_last_reply(client)->http_status, 200);
        assert_string_equal(again->id, t->id);

        assert_ok(dtask_get_sync(client, t->id, 0, &got));
        assert_string_equal(got->id, t->id);
        assert_string_equal(got->code, "import time\ntime.sleep(30)\nprint('slept')\n");
        assert_true(got->created_at == t->created_at);

        /* list, oldest first: page through until it shows up (it is among the newest) */
        {
                _cleanup_free_ char *cursor = NULL;

                for (unsigned page = 0; page < 1000 && !found; page++) {
                        _cleanup_(dtask_task_list_freep) DtaskTaskList *l = NULL;

                        assert_ok(dtask_list_sync(client, DTASK_STATUS_ANY, 1000, cursor, &l));
                        for (size_t i = 0; i < l->n_tasks; i++) {
                                if (i > 0)
                                        assert_true(l->tasks[i]->created_at >= l->tasks[i - 1]->created_at);
                                if (streq(l->tasks[i]->id, t->id))
                                        found = true;
                        }
                        free(cursor);
                        cursor = l->next_cursor ? strdup(l->next_cursor) : NULL;
                        if (!cursor)
                                break;
                }
                assert_true(found);
        }

        /* cursor paging: two pages of one, different tasks, in order */
        {
                _cleanup_(dtask_task_list_freep) DtaskTaskList *p1 = NULL, *p2 = NULL;

                assert_ok(dtask_list_sync(client, DTASK_STATUS_ANY, 1, NULL, &p1));
                assert_int_equal(p1->n_tasks, 1);
                assert_non_null(p1->next_cursor); /* there are at least two tasks now */
                assert_ok(dtask_list_sync(client, DTASK_STATUS_ANY, 1, p1->next_cursor, &p2));
                assert_int_equal(p2->n_tasks, 1);
                assert_string_not_equal(p1->tasks[0]->id, p2->tasks[0]->id);
                assert_true(p2->tasks[0]->created_at >= p1->tasks[0]->created_at);
        }

        /* status filter */
        {
                _cleanup_(dtask_task_list_freep) DtaskTaskList *l = NULL;

                assert_ok(dtask_list_sync(client, DTASK_STATUS_CANCELLED, 5, NULL, &l));
                for (size_t i = 0; i < l->n_tasks; i++)
                        assert_int_equal(l->tasks[i]->status, DTASK_STATUS_CANCELLED);
        }

        assert_ok(dtask_cancel_sync(client, t->id, &c));
        assert_int_equal(c->status, DTASK_STATUS_CANCELLED);
        assert_non_null(c->status_name);
        assert_string_equal(c->status_name, "Cancelled");
        assert_true(c->completed_at > 0);

        k = dtask_cancel_sync(client, t->id, NULL);
        assert_int_equal(k, -EBUSY);
        assert_int_equal(dtask_client_get_last_reply(client)->http_status, 409);

        assert_ok(dtask_retry_sync(client, t->id, &r));
        assert_true(r->status == DTASK_STATUS_PENDING || r->status == DTASK_STATUS_IN_PROGRESS);
        assert_int_equal(r->retry_count, 1);
        assert_null(r->result);
        assert_true(r->completed_at == 0);
        assert_true(r->expires_at > c->expires_at);

        k = dtask_retry_sync(client, t->id, NULL);
        assert_int_equal(k, -EBUSY);
        assert_non_null(strstr(detail(), "cannot be retried"));

        /* keep workers from sleeping on it */
        (void) dtask_cancel_sync(client, t->id, NULL);
}

static void test_worker_protocol(void **state) {
        _cleanup_(dtask_task_freep) DtaskTask *mine = NULL, *claimed = NULL, *done = NULL, *got = NULL;
        char id[UUID_STRING_MAX];
        const DtaskReply *reply;
        DtaskCompletion completion = {
                .attempt = 1,
                .status = DTASK_STATUS_COMPLETED,
                .result = "6\n",
                .error_message = "",
                .has_exit_code = true,
                .exit_code = 0,
                .verdict = "ok",
        };

        /* the owner of inserted tasks: our own key, read off a task we create */
        mine = create_task("libdtask owner probe", NULL);
        (void) dtask_cancel_sync(client, mine->id, NULL);
        insert_task(mine->user_id, id);

        assert_ok(dtask_claim_sync(client, id, "libdtask-test/1", &claimed));
        assert_int_equal(claimed->status, DTASK_STATUS_IN_PROGRESS);
        assert_int_equal(claimed->attempt, 1);
        assert_true(claimed->started_at > 0);

        assert_int_equal(dtask_claim_sync(client, id, NULL, NULL), -EBUSY);
        assert_int_equal(dtask_client_get_last_reply(client)->http_status, 409);

        assert_ok(dtask_heartbeat_sync(client, id, 1));
        assert_int_equal(dtask_client_get_last_reply(client)->http_status, 204);
        assert_int_equal(dtask_heartbeat_sync(client, id, 2), -ESTALE);

        assert_ok(dtask_complete_sync(client, id, &completion, &done));
        assert_int_equal(done->status, DTASK_STATUS_COMPLETED);
        assert_string_equal(done->result, "6\n");

        assert_ok(dtask_get_sync(client, id, 0, &got));
        assert_int_equal(got->status, DTASK_STATUS_COMPLETED);
        assert_string_equal(got->result, "6\n");
        assert_true(got->has_exit_code);
        assert_int_equal(got->exit_code, 0);
        assert_string_equal(got->verdict, "ok");
        assert_false(got->output_truncated);
        assert_true(got->completed_at >= got->started_at && got->started_at > 0);
        assert_int_equal(got->attempt, 1);

        /* the same attempt again: fenced, nothing changes */
        completion.result = "something else";
        completion.status = DTASK_STATUS_FAILED;
        assert_int_equal(dtask_complete_sync(client, id, &completion, NULL), -ESTALE);
        reply = dtask_client_get_last_reply(client);
        assert_int_equal(reply->http_status, 409);
        assert_non_null(reply->problem_detail);
        assert_int_equal(dtask_heartbeat_sync(client, id, 1), -ESTALE);
        got = dtask_task_free(got);
        assert_ok(dtask_get_sync(client, id, 0, &got));
        assert_int_equal(got->status, DTASK_STATUS_COMPLETED);
        assert_string_equal(got->result, "6\n");
}

typedef struct Waited {
        bool done;
        int error;
        DtaskStatus status;
        uint64_t at;
} Waited;

static void on_waited(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply, void *userdata) {
        Waited *w = userdata;

        w->done = true;
        w->error = error;
        w->status = task ? task->status : DTASK_STATUS_ANY;
        w->at = mono();
}

/* The asynchronous client on our own loop: a ?wait= get answered when the task finishes. */
static void test_async_wait(void **state) {
        _cleanup_(dtask_task_freep) DtaskTask *mine = NULL, *claimed = NULL;
        DtaskClient *async = NULL;
        sd_event *e = NULL;
        char id[UUID_STRING_MAX];
        Waited w = {};
        uint64_t completed_at;
        DtaskCompletion completion = {
                .attempt = 1,
                .status = DTASK_STATUS_FAILED,
                .error_message = "ZeroDivisionError\n",
                .has_exit_code = true,
                .exit_code = 1,
                .verdict = "runtime_error",
        };

        mine = create_task("libdtask owner probe", NULL);
        (void) dtask_cancel_sync(client, mine->id, NULL);
        insert_task(mine->user_id, id);
        assert_ok(dtask_claim_sync(client, id, NULL, &claimed));

        assert_true(sd_event_new(&e) >= 0);
        assert_int_equal(dtask_client_new(&async, e, api_url, api_key), 0);
        assert_int_equal(dtask_get(async, id, 20, on_waited, &w, NULL), 0);
        /* let the request reach the server and start waiting */
        for (uint64_t until = mono() + 500 * USEC_PER_MSEC; mono() < until;)
                assert_true(sd_event_run(e, 50 * USEC_PER_MSEC) >= 0);
        assert_false(w.done);

        assert_ok(dtask_complete_sync(client, id, &completion, NULL));
        completed_at = mono();
        while (!w.done) {
                assert_true(mono() - completed_at < 10 * USEC_PER_SEC);
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        }
        assert_int_equal(w.error, 0);
        assert_int_equal(w.status, DTASK_STATUS_FAILED);
        /* answered when it finished, not when the 20 s ran out */
        assert_true(w.at - completed_at < 5 * USEC_PER_SEC);

        dtask_client_free(async);
        sd_event_unref(e);
}

static void test_errors(void **state) {
        _cleanup_(dtask_task_freep) DtaskTask *t = NULL;
        DtaskClient *bad = NULL;
        char id[UUID_STRING_MAX];
        const DtaskReply *reply;
        DtaskTaskSpec spec = { .name = "n", .code = "print(1)", .language = DTASK_LANGUAGE_PYTHON, .ttl = "2d" };

        assert_int_equal(dtask_get_sync(client, uuid_generate_v4(id), 0, &t), -ENOENT);
        reply = dtask_client_get_last_reply(client);
        assert_int_equal(reply->http_status, 404);
        assert_non_null(reply->problem_detail);
        assert_null(t);

        assert_int_equal(dtask_create_sync(client, &spec, &t), -EINVAL);
        reply = dtask_client_get_last_reply(client);
        assert_int_equal(reply->http_status, 400);
        assert_non_null(reply->problem_detail);
        assert_non_null(strstr(reply->problem_detail, "ttl"));
        assert_non_null(reply->problem_errors);
        assert_non_null(strstr(reply->problem_errors, "\"ttl\""));

        assert_int_equal(dtask_client_new_blocking(&bad, api_url, "ak_00000000000000000000000000000"), 0);
        assert_int_equal(dtask_get_sync(bad, id, 0, NULL), -EKEYREJECTED);
        assert_int_equal(dtask_client_get_last_reply(bad)->http_status, 401);
        dtask_client_free(bad);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_create_get_list_cancel_retry),
                cmocka_unit_test(test_worker_protocol),
                cmocka_unit_test(test_async_wait),
                cmocka_unit_test(test_errors),
        };
        char id[UUID_STRING_MAX];
        int r;

        api_url = getenv("DTASK_API_URL");
        api_key = getenv("DTASK_API_KEY");
        database_url = getenv("DTASK_DATABASE_URL");
        if (isempty(api_url) || isempty(api_key) || isempty(database_url)) {
                fprintf(stderr, "DTASK_API_URL, DTASK_API_KEY or DTASK_DATABASE_URL not set (source .dev/env): skipped\n");
                return 77;
        }
        if (dtask_client_new_blocking(&client, api_url, api_key) < 0) {
                fprintf(stderr, "Cannot use DTASK_API_URL=%s\n", api_url);
                return EXIT_FAILURE;
        }
        r = dtask_get_sync(client, uuid_generate_v4(id), 0, NULL);
        if (r == -ECONNREFUSED || r == -EAGAIN) {
                fprintf(stderr, "dtask-api is not serving at %s (%s): skipped\n", api_url, strerror(-r));
                dtask_client_free(client);
                return 77;
        }

        r = cmocka_run_group_tests(tests, NULL, NULL);
        dtask_client_free(client);
        return r;
}
