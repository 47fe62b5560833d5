/* SPDX-License-Identifier: MIT */
/* PgPool against a real PostgreSQL (DTASK_DATABASE_URL, exported by `tools/dev test`;
 * skipped when unset): concurrent parameterized queries, deadlines, SQL errors with
 * SQLSTATE, transactions that commit and roll back, prepared statements (also after a
 * schema change), connections opened on demand, the bounded queue, cancellation,
 * an unreachable server, freeing the pool from a callback, Npgsql connection strings. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>

#include <cmocka.h>

#include "pg.h"

#define SKIP_EXIT_CODE 77

static const char *database_url;
static sd_event *event;
static char table[64];

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* Runs the loop until *done reaches want or timeout passes; returns whether it did. */
static bool run_until(const unsigned *done, unsigned want, uint64_t timeout_usec) {
        uint64_t end = now_usec() + timeout_usec;

        while (*done < want && now_usec() < end)
                assert_true(sd_event_run(event, 100 * USEC_PER_MSEC) >= 0);
        return *done >= want;
}

static void run_for(uint64_t usec) {
        uint64_t end = now_usec() + usec;
        while (now_usec() < end)
                assert_true(sd_event_run(event, end - now_usec()) >= 0);
}

/* A result copied out of the callback (the PGresult itself is freed after it). */
typedef struct Outcome {
        unsigned calls;
        int error;
        char sqlstate[6];
        int ntuples, nfields;
        char value[128];
        uint64_t at;
} Outcome;

static void outcome_cb(PgPool *pool, const PGresult *result, int error, void *userdata) {
        Outcome *o = userdata;

        o->calls++;
        o->error = error;
        o->at = now_usec();
        o->ntuples = -1;
        o->value[0] = o->sqlstate[0] = '\0';
        if (result) {
                const char *s = pg_result_sqlstate(result);
                if (s)
                        snprintf(o->sqlstate, sizeof o->sqlstate, "%s", s);
                if (PQresultStatus(result) == PGRES_TUPLES_OK) {
                        o->ntuples = PQntuples(result);
                        o->nfields = PQnfields(result);
                        if (o->ntuples > 0 && PQnfields(result) > 0)
                                snprintf(o->value, sizeof o->value, "%s", PQgetvalue(result, 0, 0));
                }
        }
}

/* Runs one statement to completion. */
static Outcome query(PgPool *p, const char *sql, int n, const char *const *values, uint64_t timeout) {
        Outcome o = {};
        assert_int_equal(pg_pool_query(p, sql, n, values, timeout, outcome_cb, &o, NULL), 0);
        assert_true(run_until(&o.calls, 1, 60 * USEC_PER_SEC));
        return o;
}

static PgPool *pool_new(const char *conninfo, unsigned size, unsigned max_queued) {
        PgPool *p = NULL;
        PgPoolSettings s = { .size = size, .default_timeout_usec = 30 * USEC_PER_SEC, .max_queued = max_queued };

        assert_int_equal(pg_pool_new(&p, event, conninfo, &s), 0);
        return p;
}

/* ---- 50 concurrent queries on 4 connections ---- */

typedef struct Concurrent {
        unsigned done, ok, in_submit_calls;
        bool submitting;
        bool seen[50];
        int pids[50];
} Concurrent;

typedef struct Slot {
        Concurrent *c;
        int i;
} Slot;

static void concurrent_cb(PgPool *pool, const PGresult *result, int error, void *userdata) {
        Slot *s = userdata;
        Concurrent *c = s->c;
        char want_double[16], want_text[32];

        c->done++;
        if (c->submitting)
                c->in_submit_calls++;
        if (error < 0 || !result || PQntuples(result) != 1 || PQnfields(result) != 3)
                return;

        snprintf(want_double, sizeof want_double, "%d", s->i * 2);
        snprintf(want_text, sizeof want_text, "row-%d 'quoted' \"x\";--", s->i);
        if (streq(PQgetvalue(result, 0, 0), want_double) && streq(PQgetvalue(result, 0, 1), want_text)) {
                c->ok++;
                c->seen[s->i] = true;
                c->pids[s->i] = atoi(PQgetvalue(result, 0, 2));
        }
}

static void test_concurrent_queries(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 4, 0);
        Concurrent c = {};
        Slot slots[50];
        char a[50][16], b[50][32];
        int pids[4] = {};
        unsigned n_pids = 0;

        c.submitting = true;
        for (int i = 0; i < 50; i++) {
                slots[i] = (Slot) { &c, i };
                snprintf(a[i], sizeof a[i], "%d", i);
                /* Text that would break SQL built from strings. */
                snprintf(b[i], sizeof b[i], "row-%d 'quoted' \"x\";--", i);
                const char *values[] = { a[i], b[i] };
                assert_int_equal(pg_pool_query(p, "SELECT $1::int * 2, $2::text, pg_backend_pid()", 2, values, 0,
                                               concurrent_cb, &slots[i], NULL),
                                 0);
        }
        c.submitting = false;
        /* Never called from within pg_pool_query(). */
        assert_int_equal(c.done, 0);

        assert_true(run_until(&c.done, 50, 60 * USEC_PER_SEC));
        assert_int_equal(c.in_submit_calls, 0);
        assert_int_equal(c.ok, 50);
        for (int i = 0; i < 50; i++) {
                bool known = false;
                assert_true(c.seen[i]);
                for (unsigned j = 0; j < n_pids; j++)
                        known = known || pids[j] == c.pids[i];
                if (!known) {
                        assert_true(n_pids < 4); /* never more sessions than the pool size */
                        pids[n_pids++] = c.pids[i];
                }
        }
        assert_true(pg_pool_is_connected(p));
        printf("# 50 queries ran on %u session(s)\n", n_pids);
}

/* With a session idle and nothing queued, a statement is on its way to the server when
 * pg_pool_query() returns: another session sees it running before our loop has run once.
 * Its callback still comes from the loop only. */
static void test_idle_session_sends_at_once(void **state) {
        static const char SQL[] = "SELECT $1::text, pg_sleep($2::float8)";
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 1, 0);
        Outcome warm, o = {};
        PGconn *observer;
        bool seen = false;

        /* the session exists, has the statement prepared, and is idle now */
        warm = query(p, SQL, 2, (const char *[]) { "idle-session-sends-at-once", "0" }, 0);
        assert_int_equal(warm.error, 0);

        assert_int_equal(pg_pool_query(p, SQL, 2, (const char *[]) { "idle-session-sends-at-once", "0.5" }, 0,
                                       outcome_cb, &o, NULL),
                         0);
        observer = PQconnectdb(database_url);
        assert_int_equal(PQstatus(observer), CONNECTION_OK);
        for (unsigned i = 0; i < 40 && !seen; i++) {
                PGresult *r = PQexec(observer, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                               "AND query = 'SELECT $1::text, pg_sleep($2::float8)'");
                assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
                seen = streq(PQgetvalue(r, 0, 0), "1");
                PQclear(r);
                if (!seen)
                        (void) usleep(10 * 1000);
        }
        PQfinish(observer);
        assert_true(seen);
        assert_int_equal(o.calls, 0);

        assert_true(run_until(&o.calls, 1, 10 * USEC_PER_SEC));
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "idle-session-sends-at-once");
}

/* ---- deadlines ---- */

static void test_deadline(void **state) {
        /* One connection: the query after the timeout needs the replaced session. */
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 1, 0);
        Outcome o;
        uint64_t start;

        o = query(p, "SELECT pg_backend_pid()", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        char pid_before[sizeof o.value];
        snprintf(pid_before, sizeof pid_before, "%s", o.value);

        start = now_usec();
        o = query(p, "SELECT pg_sleep(2)", 0, NULL, 100 * USEC_PER_MSEC);
        assert_int_equal(o.error, -ETIMEDOUT);
        assert_true(o.at - start >= 90 * USEC_PER_MSEC);
        assert_true(o.at - start < 1500 * USEC_PER_MSEC); /* well before pg_sleep(2) ends */

        /* The pool still works, on a new session. */
        o = query(p, "SELECT 40 + 2, pg_backend_pid()", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "42");

        /* A query waiting behind a slow one times out in the queue. */
        Outcome slow = {}, queued = {};
        assert_int_equal(pg_pool_query(p, "SELECT pg_sleep(1)", 0, NULL, 10 * USEC_PER_SEC, outcome_cb, &slow, NULL), 0);
        assert_int_equal(pg_pool_query(p, "SELECT 1", 0, NULL, 200 * USEC_PER_MSEC, outcome_cb, &queued, NULL), 0);
        assert_true(run_until(&queued.calls, 1, 10 * USEC_PER_SEC));
        assert_int_equal(queued.error, -ETIMEDOUT);
        assert_int_equal(slow.calls, 0);
        assert_true(run_until(&slow.calls, 1, 10 * USEC_PER_SEC));
        assert_int_equal(slow.error, 0);
        assert_int_equal(queued.calls, 1);
}

/* A timed-out statement does not keep running on the server: the session is dropped
 * and the server notices (client_connection_check_interval) long before it would end. */
static void test_deadline_stops_statement(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 1, 0);
        char pid[sizeof(((Outcome *) NULL)->value)];
        Outcome o;

        o = query(p, "SELECT pg_backend_pid()", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        snprintf(pid, sizeof pid, "%s", o.value);

        o = query(p, "SELECT pg_sleep(60)", 0, NULL, 100 * USEC_PER_MSEC);
        assert_int_equal(o.error, -ETIMEDOUT);

        uint64_t end = now_usec() + 15 * USEC_PER_SEC;
        for (;;) {
                o = query(p, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", 1,
                          (const char *[]) { pid }, 0);
                assert_int_equal(o.error, 0);
                if (streq(o.value, "0"))
                        break;
                assert_true(now_usec() < end);
                run_for(200 * USEC_PER_MSEC);
        }
}

/* Parameters larger than the socket buffers: PQflush() returns 1 and the rest goes out
 * on EPOLLOUT; the results (also large) come back in many reads. */
static void test_large_parameters(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 2, 0);
        const size_t size = 8 * 1024 * 1024;
        _cleanup_free_ char *big = malloc(size + 1);
        Outcome o[2] = {};

        assert_non_null(big);
        for (size_t i = 0; i < size; i++)
                big[i] = (char) ('a' + i % 26);
        big[size] = '\0';

        for (unsigned i = 0; i < ELEMENTSOF(o); i++)
                assert_int_equal(pg_pool_query(p, "SELECT length($1) || ':' || (ltrim($1, 'abcdefghijklmnopqrstuvwxyz') = '')",
                                               1, (const char *[]) { big }, 0, outcome_cb, &o[i], NULL),
                                 0);
        /* The copy is the pool's: the caller's buffer may change at once. */
        memset(big, '#', size);
        for (unsigned i = 0; i < ELEMENTSOF(o); i++) {
                assert_true(run_until(&o[i].calls, 1, 60 * USEC_PER_SEC));
                assert_int_equal(o[i].error, 0);
                assert_string_equal(o[i].value, "8388608:true");
        }

        Outcome r = query(p, "SELECT repeat('z', 8 * 1024 * 1024)", 0, NULL, 0);
        assert_int_equal(r.error, 0);
        assert_int_equal(strlen(r.value), sizeof r.value - 1); /* truncated copy, but all of it arrived */
}

/* ---- what every session of the pool runs with ---- */

/* No JIT (the server's default is on where PostgreSQL was built with LLVM): a short statement
 * whose estimate passed jit_above_cost was compiled for ~0.4 s. And the dropped-connection
 * check that stops a statement past its deadline (test_deadline_stops_statement). */
static void test_session_settings(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 1, 0);

        Outcome o = query(p, "SELECT current_setting('jit')", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "off");
        o = query(p, "SELECT current_setting('client_connection_check_interval')", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "1s");
}

/* ---- SQL errors ---- */

static void test_sql_errors(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 2, 0);
        Outcome o;

        o = query(p, "SELECT * FROM no_such_table_test_pg_pool", 0, NULL, 0);
        assert_int_equal(o.error, -EBADMSG);
        assert_string_equal(o.sqlstate, "42P01");

        o = query(p, "SELECT $1::int", 1, (const char *[]) { "not a number" }, 0);
        assert_int_equal(o.error, -EBADMSG);
        assert_string_equal(o.sqlstate, "22P02");

        char sql[256];
        snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1::int, $2)", table);
        o = query(p, sql, 2, (const char *[]) { "100", "first" }, 0);
        assert_int_equal(o.error, 0);
        o = query(p, sql, 2, (const char *[]) { "100", "again" }, 0);
        assert_int_equal(o.error, -EBADMSG);
        assert_string_equal(o.sqlstate, PG_UNIQUE_VIOLATION);

        /* NULL parameters are SQL NULL. */
        o = query(p, "SELECT $1::text IS NULL", 1, (const char *[]) { NULL }, 0);
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "t");

        /* The connections are fine afterwards. */
        o = query(p, "SELECT 'still ok'", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "still ok");

        /* Invalid arguments are refused at once. */
        assert_int_equal(pg_pool_query(p, NULL, 0, NULL, 0, outcome_cb, &o, NULL), -EINVAL);
        assert_int_equal(pg_pool_query(p, "SELECT $1", 1, NULL, 0, outcome_cb, &o, NULL), -EINVAL);
        assert_int_equal(pg_pool_query(p, "SELECT 1", -1, NULL, 0, outcome_cb, &o, NULL), -EINVAL);
}

/* ---- transactions ---- */

static char *count_rows(PgPool *p, const char *where) {
        char sql[256];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE %s", table, where);
        Outcome o = query(p, sql, 0, NULL, 0);
        assert_int_equal(o.error, 0);
        return strdup(o.value);
}

static void test_transaction(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 2, 0);
        char insert[256], select[256];
        Outcome o = {};

        snprintf(insert, sizeof insert, "INSERT INTO %s (id, v) VALUES ($1::int, $2)", table);
        snprintf(select, sizeof select, "SELECT count(*) FROM %s WHERE id BETWEEN 1 AND 9", table);

        /* Commit: the callback gets the last statement's result. */
        PgStatement commit[] = {
                { insert, 2, (const char *[]) { "1", "one" } },
                { insert, 2, (const char *[]) { "2", "two" } },
                { select, 0, NULL },
        };
        assert_int_equal(pg_pool_transaction(p, commit, ELEMENTSOF(commit), 0, outcome_cb, &o, NULL), 0);
        assert_int_equal(o.calls, 0);
        assert_true(run_until(&o.calls, 1, 30 * USEC_PER_SEC));
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "2");

        _cleanup_free_ char *n1 = count_rows(p, "id BETWEEN 1 AND 9");
        assert_string_equal(n1, "2");

        /* Rollback: the third statement fails, nothing of the transaction stays. */
        Outcome r = {};
        PgStatement rollback[] = {
                { insert, 2, (const char *[]) { "3", "three" } },
                { insert, 2, (const char *[]) { "4", "four" } },
                { insert, 2, (const char *[]) { "1", "duplicate" } },
                { insert, 2, (const char *[]) { "5", "never" } },
        };
        assert_int_equal(pg_pool_transaction(p, rollback, ELEMENTSOF(rollback), 0, outcome_cb, &r, NULL), 0);
        assert_true(run_until(&r.calls, 1, 30 * USEC_PER_SEC));
        assert_int_equal(r.error, -EBADMSG);
        assert_string_equal(r.sqlstate, PG_UNIQUE_VIOLATION);

        _cleanup_free_ char *n2 = count_rows(p, "id BETWEEN 1 AND 9");
        assert_string_equal(n2, "2");
        _cleanup_free_ char *n3 = count_rows(p, "id IN (3, 4, 5)");
        assert_string_equal(n3, "0");

        /* A failed transaction leaves the sessions clean: the next ones work (on both
         * connections: more queries than connections). */
        Outcome many[4] = {};
        for (unsigned i = 0; i < ELEMENTSOF(many); i++)
                assert_int_equal(pg_pool_query(p, "SAVEPOINT probe", 0, NULL, 0, outcome_cb, &many[i], NULL), 0);
        for (unsigned i = 0; i < ELEMENTSOF(many); i++) {
                assert_true(run_until(&many[i].calls, 1, 30 * USEC_PER_SEC));
                /* SAVEPOINT outside a transaction block: 25P01 no_active_sql_transaction. */
                assert_int_equal(many[i].error, -EBADMSG);
                assert_string_equal(many[i].sqlstate, "25P01");
        }

        /* A plain query that leaves a transaction open does not leak into the next one. */
        Outcome b = query(p, "BEGIN", 0, NULL, 0);
        assert_int_equal(b.error, 0);
        for (unsigned i = 0; i < 4; i++) {
                Outcome t = query(p, "SAVEPOINT probe", 0, NULL, 0);
                assert_int_equal(t.error, -EBADMSG);
                assert_string_equal(t.sqlstate, "25P01");
        }

        /* Invalid arguments. */
        assert_int_equal(pg_pool_transaction(p, commit, 0, 0, outcome_cb, &o, NULL), -EINVAL);
        assert_int_equal(pg_pool_transaction(p, NULL, 1, 0, outcome_cb, &o, NULL), -EINVAL);
}

/* ---- connections opened on demand ---- */

static void test_grows_on_demand(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 4, 0);
        static const char count[] =
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = current_setting('application_name')";
        Outcome o[8] = {};
        unsigned done = 0;
        char pids[8][16];
        unsigned n_pids = 0;

        /* Idle, one session. */
        Outcome first = query(p, count, 0, NULL, 0);
        assert_int_equal(first.error, 0);
        assert_string_equal(first.value, "1");

        /* Queries that wait make the pool open more, never more than its size. */
        for (unsigned i = 0; i < ELEMENTSOF(o); i++)
                assert_int_equal(pg_pool_query(p, "SELECT pg_backend_pid() FROM pg_sleep(0.3)", 0, NULL, 0, outcome_cb,
                                               &o[i], NULL),
                                 0);
        while (done < ELEMENTSOF(o)) {
                assert_true(sd_event_run(event, USEC_PER_SEC) >= 0);
                done = 0;
                for (unsigned i = 0; i < ELEMENTSOF(o); i++)
                        done += o[i].calls;
        }
        for (unsigned i = 0; i < ELEMENTSOF(o); i++) {
                bool known = false;

                assert_int_equal(o[i].error, 0);
                for (unsigned j = 0; j < n_pids; j++)
                        known = known || streq(pids[j], o[i].value);
                if (!known)
                        snprintf(pids[n_pids++], sizeof pids[0], "%s", o[i].value);
        }
        assert_int_equal(n_pids, 4);
        Outcome after = query(p, count, 0, NULL, 0);
        assert_string_equal(after.value, "4");
}

/* ---- prepared statements ---- */

static void test_prepared_statements(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 1, 0);
        char t[80], sql[256], select[256], insert[256], check[] =
                "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1";
        Outcome o;

        snprintf(t, sizeof t, "%s_prepared", table);
        snprintf(sql, sizeof sql, "CREATE TABLE %s (a integer NOT NULL)", t);
        assert_int_equal(query(p, sql, 0, NULL, 0).error, 0);
        snprintf(insert, sizeof insert, "INSERT INTO %s (a) VALUES ($1::integer)", t);
        assert_int_equal(query(p, insert, 1, (const char *[]) { "1" }, 0).error, 0);

        /* The session prepares a statement the first time and keeps it. */
        snprintf(select, sizeof select, "SELECT * FROM %s WHERE a >= $1::integer ORDER BY a", t);
        for (unsigned i = 0; i < 3; i++) {
                o = query(p, select, 1, (const char *[]) { "1" }, 0);
                assert_int_equal(o.error, 0);
                assert_int_equal(o.ntuples, 1);
                assert_int_equal(o.nfields, 1);
        }
        o = query(p, check, 1, (const char *[]) { select }, 0);
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "1");

        /* A schema change makes the prepared statement's result type stale: the query
         * still succeeds, with the new column, and the stale session was replaced. */
        Outcome pid1 = query(p, "SELECT pg_backend_pid()", 0, NULL, 0);
        snprintf(sql, sizeof sql, "ALTER TABLE %s ADD COLUMN b text NOT NULL DEFAULT 'x'", t);
        assert_int_equal(query(p, sql, 0, NULL, 0).error, 0);
        o = query(p, select, 1, (const char *[]) { "1" }, 0);
        assert_int_equal(o.error, 0);
        assert_int_equal(o.ntuples, 1);
        assert_int_equal(o.nfields, 2);
        Outcome pid2 = query(p, "SELECT pg_backend_pid()", 0, NULL, 0);
        assert_string_not_equal(pid1.value, pid2.value);

        /* The same inside a transaction: it runs again as a whole, its insert once. */
        assert_int_equal(query(p, select, 1, (const char *[]) { "1" }, 0).nfields, 2);
        snprintf(sql, sizeof sql, "ALTER TABLE %s ADD COLUMN c text NOT NULL DEFAULT 'y'", t);
        assert_int_equal(query(p, sql, 0, NULL, 0).error, 0);
        o = (Outcome) {};
        PgStatement tx[] = {
                { insert, 1, (const char *[]) { "2" } },
                { select, 1, (const char *[]) { "1" } },
        };
        assert_int_equal(pg_pool_transaction(p, tx, ELEMENTSOF(tx), 0, outcome_cb, &o, NULL), 0);
        assert_true(run_until(&o.calls, 1, 30 * USEC_PER_SEC));
        assert_int_equal(o.error, 0);
        assert_int_equal(o.ntuples, 2);
        assert_int_equal(o.nfields, 3);

        /* More distinct statements than a session keeps prepared: all still run. */
        for (unsigned i = 0; i < 80; i++) {
                char many[64], want[16];

                snprintf(many, sizeof many, "SELECT $1::integer + %u", i);
                snprintf(want, sizeof want, "%u", 1000 + i);
                o = query(p, many, 1, (const char *[]) { "1000" }, 0);
                assert_int_equal(o.error, 0);
                assert_string_equal(o.value, want);
        }
        o = query(p, "SELECT count(*) FROM pg_prepared_statements", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        assert_true(atoi(o.value) <= 64);

        snprintf(sql, sizeof sql, "DROP TABLE %s", t);
        assert_int_equal(query(p, sql, 0, NULL, 0).error, 0);
}

/* ---- queue bound, cancel, free ---- */

static void test_queue_bound_cancel_free(void **state) {
        PgPool *p = pool_new(database_url, 1, 2);
        Outcome a = {}, b = {}, c = {};
        PgQuery *qa = NULL;

        /* Nothing is dispatched before the loop runs: the queue holds all of them. */
        assert_int_equal(pg_pool_query(p, "SELECT 'a'", 0, NULL, 0, outcome_cb, &a, &qa), 0);
        assert_int_equal(pg_pool_query(p, "SELECT 'b'", 0, NULL, 0, outcome_cb, &b, NULL), 0);
        assert_int_equal(pg_pool_query(p, "SELECT 'c'", 0, NULL, 0, outcome_cb, &c, NULL), -EAGAIN);
        assert_non_null(qa);

        /* A cancelled query's callback never runs. */
        pg_query_cancel(qa);
        assert_true(run_until(&b.calls, 1, 30 * USEC_PER_SEC));
        assert_int_equal(b.error, 0);
        assert_string_equal(b.value, "b");
        run_for(200 * USEC_PER_MSEC);
        assert_int_equal(a.calls, 0);

        /* Cancelling a running query: no callback, the pool goes on. */
        Outcome s = {}, after = {};
        PgQuery *qs = NULL;
        assert_int_equal(pg_pool_query(p, "SELECT pg_sleep(0.3)", 0, NULL, 0, outcome_cb, &s, &qs), 0);
        run_for(100 * USEC_PER_MSEC); /* now it runs */
        pg_query_cancel(qs);
        assert_int_equal(pg_pool_query(p, "SELECT 'after'", 0, NULL, 0, outcome_cb, &after, NULL), 0);
        assert_true(run_until(&after.calls, 1, 30 * USEC_PER_SEC));
        assert_string_equal(after.value, "after");
        assert_int_equal(s.calls, 0);

        /* Freeing the pool completes what is queued or running with -ECANCELED. */
        Outcome x = {}, y = {};
        assert_int_equal(pg_pool_query(p, "SELECT pg_sleep(5)", 0, NULL, 0, outcome_cb, &x, NULL), 0);
        run_for(100 * USEC_PER_MSEC);
        assert_int_equal(pg_pool_query(p, "SELECT 'y'", 0, NULL, 0, outcome_cb, &y, NULL), 0);
        p = pg_pool_free(p);
        assert_null(p);
        assert_int_equal(x.calls, 1);
        assert_int_equal(x.error, -ECANCELED);
        assert_int_equal(y.calls, 1);
        assert_int_equal(y.error, -ECANCELED);
        assert_null(pg_pool_free(NULL));
}

/* A callback may free the pool it was called from (and pending callbacks then run with
 * -ECANCELED from within pg_pool_free()). */
typedef struct FreeFromCallback {
        PgPool *pool;
        Outcome other;
        unsigned calls;
        int error;
} FreeFromCallback;

static void free_from_callback_cb(PgPool *pool, const PGresult *result, int error, void *userdata) {
        FreeFromCallback *f = userdata;

        f->calls++;
        f->error = error;
        assert_ptr_equal(pool, f->pool);
        f->pool = pg_pool_free(f->pool);
}

static void test_free_from_callback(void **state) {
        FreeFromCallback f = {};

        f.pool = pool_new(database_url, 1, 0);
        assert_int_equal(pg_pool_query(f.pool, "SELECT 1", 0, NULL, 0, free_from_callback_cb, &f, NULL), 0);
        assert_int_equal(pg_pool_query(f.pool, "SELECT 2", 0, NULL, 0, outcome_cb, &f.other, NULL), 0);
        assert_true(run_until(&f.calls, 1, 30 * USEC_PER_SEC));
        assert_int_equal(f.error, 0);
        assert_null(f.pool);
        assert_int_equal(f.other.calls, 1);
        assert_int_equal(f.other.error, -ECANCELED);
        run_for(200 * USEC_PER_MSEC); /* nothing left behind fires */
}

/* ---- no server ---- */

static void test_unreachable(void **state) {
        /* Port 1 on loopback: connection refused at once, again and again. */
        _cleanup_(pg_pool_freep) PgPool *p = pool_new("postgresql://postgres:SEKRIT@127.0.0.1:1/dtask", 2, 0);
        Outcome o = {};
        uint64_t start = now_usec();

        assert_int_equal(pg_pool_query(p, "SELECT 1", 0, NULL, 300 * USEC_PER_MSEC, outcome_cb, &o, NULL), 0);
        assert_true(run_until(&o.calls, 1, 10 * USEC_PER_SEC));
        assert_int_equal(o.error, -ENOTCONN);
        assert_true(o.at - start >= 250 * USEC_PER_MSEC);
        assert_false(pg_pool_is_connected(p));
}

/* ---- Npgsql connection strings ---- */

static void test_npgsql_conninfo(void **state) {
        PQconninfoOption *opts = PQconninfoParse(database_url, NULL);
        char npgsql[1024] = "";
        size_t l = 0;

        assert_non_null(opts);
        for (PQconninfoOption *o = opts; o->keyword; o++) {
                static const char *const map[][2] = {
                        { "host", "Host" },         { "port", "Port" },         { "dbname", "Database" },
                        { "user", "Username" },     { "password", "Password" },
                };
                if (isempty(o->val))
                        continue;
                for (size_t i = 0; i < ELEMENTSOF(map); i++)
                        if (streq(o->keyword, map[i][0]))
                                l += snprintf(npgsql + l, sizeof npgsql - l, "%s=\"%s\"; ", map[i][1], o->val);
        }
        PQconninfoFree(opts);
        l += snprintf(npgsql + l, sizeof npgsql - l, "Pooling=true; Maximum Pool Size=50; SSL Mode=Disable;");
        assert_true(l < sizeof npgsql);

        _cleanup_(pg_pool_freep) PgPool *p = pool_new(npgsql, 1, 0);
        Outcome o = query(p, "SELECT current_database() IS NOT NULL", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        assert_string_equal(o.value, "t");
}

/* Several hosts: the first refuses, libpq moves on to the next with a new socket
 * while PQconnectPoll() runs. */
static void test_host_failover(void **state) {
        PQconninfoOption *opts = PQconninfoParse(database_url, NULL);
        const char *host = NULL, *port = "5432", *db = NULL, *user = NULL;
        char ci[1024];

        assert_non_null(opts);
        for (PQconninfoOption *o = opts; o->keyword; o++) {
                if (isempty(o->val))
                        continue;
                if (streq(o->keyword, "host"))
                        host = o->val;
                else if (streq(o->keyword, "port"))
                        port = o->val;
                else if (streq(o->keyword, "dbname"))
                        db = o->val;
                else if (streq(o->keyword, "user"))
                        user = o->val;
        }
        if (!host || strchr(host, ',') || host[0] == '/') {
                PQconninfoFree(opts);
                skip(); /* needs a single TCP host in DTASK_DATABASE_URL */
        }
        snprintf(ci, sizeof ci, "host=%s,%s port=1,%s dbname='%s' user='%s'", host, host, port, strempty(db),
                 strempty(user));
        char want_port[16];
        snprintf(want_port, sizeof want_port, "%s", port);
        PQconninfoFree(opts);

        _cleanup_(pg_pool_freep) PgPool *p = pool_new(ci, 2, 0);
        for (int i = 0; i < 4; i++) {
                Outcome o = query(p, "SELECT inet_server_port()", 0, NULL, 0);
                assert_int_equal(o.error, 0);
                assert_string_equal(o.value, want_port);
        }
}

/* ---- fixture ---- */

static int setup(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = NULL;
        char sql[256];

        assert_int_equal(sd_event_new(&event), 0);
        snprintf(table, sizeof table, "test_pg_pool_%d", (int) getpid());

        p = pool_new(database_url, 1, 0);
        snprintf(sql, sizeof sql, "CREATE TABLE %s (id integer PRIMARY KEY, v text NOT NULL)", table);
        Outcome o = query(p, sql, 0, NULL, 0);
        if (o.error < 0) {
                fprintf(stderr, "Cannot create table %s in %s: error %d\n", table, database_url, o.error);
                return -1;
        }
        return 0;
}

static int teardown(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = pool_new(database_url, 1, 0);
        char sql[256];

        snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", table);
        (void) query(p, sql, 0, NULL, 0);
        p = pg_pool_free(p);
        event = sd_event_unref(event);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_concurrent_queries),
                cmocka_unit_test(test_idle_session_sends_at_once),
                cmocka_unit_test(test_deadline),
                cmocka_unit_test(test_deadline_stops_statement),
                cmocka_unit_test(test_large_parameters),
                cmocka_unit_test(test_session_settings),
                cmocka_unit_test(test_sql_errors),
                cmocka_unit_test(test_transaction),
                cmocka_unit_test(test_prepared_statements),
                cmocka_unit_test(test_grows_on_demand),
                cmocka_unit_test(test_queue_bound_cancel_free),
                cmocka_unit_test(test_free_from_callback),
                cmocka_unit_test(test_unreachable),
                cmocka_unit_test(test_npgsql_conninfo),
                cmocka_unit_test(test_host_failover),
        };

        database_url = getenv("DTASK_DATABASE_URL");
        if (isempty(database_url)) {
                printf("# DTASK_DATABASE_URL not set (run through tools/dev test), skipping\n");
                return SKIP_EXIT_CODE;
        }

        return cmocka_run_group_tests(tests, setup, teardown);
}
