/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <stdio.h>

#include "log.h"
#include "task-cache.h"
#include "task-sql.h"
#include "task-store.h"
#include "uuid-util.h"

/* Confirmed publications wait here to be recorded, see task_store_mark_published(). */
#define MARKS_MAX 256U

/* Creates without an Idempotency-Key, see task_store_insert(): statements in flight at most,
 * rows and bytes (name, code, input) of one statement at most, creates waiting at most. */
#define CREATES_IN_FLIGHT 2U
#define CREATE_BATCH_ROWS 64U
#define CREATE_BATCH_BYTES (1024U * 1024U)
#define CREATES_WAITING_MAX 1024U

typedef struct StoreOp StoreOp;

typedef struct PublishedMark {
        char id[UUID_STRING_MAX];
        unsigned retry_count;
} PublishedMark;

struct TaskStore {
        PgPool *pool;
        uint64_t timeout_usec;
        TaskCache *cache;

        PublishedMark marks[MARKS_MAX];
        unsigned n_marks;
        unsigned marks_in_flight;

        StoreOp **creates; /* waiting for a statement, oldest first */
        size_t n_creates;
        unsigned creates_in_flight;
};

/* Times as integer microseconds since the epoch (exact: extract() is numeric). */
#define USEC(col) "(extract(epoch from " col ") * 1000000)::bigint"
#define TASK_COLUMNS                                                                                     \
        "id::text, name, code, language, input_data, owner_id::text, status, result, error_message, "   \
        "exit_code, verdict, output_truncated, " USEC("ttl") ", " USEC("created_at") ", "               \
        USEC("started_at") ", " USEC("completed_at") ", " USEC("expires_at") ", retry_count, attempt, " \
        "worker, " USEC("lease_expires_at")

enum {
        COL_ID,
        COL_NAME,
        COL_CODE,
        COL_LANGUAGE,
        COL_INPUT_DATA,
        COL_OWNER_ID,
        COL_STATUS,
        COL_RESULT,
        COL_ERROR_MESSAGE,
        COL_EXIT_CODE,
        COL_VERDICT,
        COL_OUTPUT_TRUNCATED,
        COL_TTL,
        COL_CREATED_AT,
        COL_STARTED_AT,
        COL_COMPLETED_AT,
        COL_EXPIRES_AT,
        COL_RETRY_COUNT,
        COL_ATTEMPT,
        COL_WORKER,
        COL_LEASE_EXPIRES_AT,
        _COL_MAX, /* the "applied" flag, or the request hash, follows the task columns */
};

/* "microseconds" as an interval parameter. */
#define INTERVAL_USEC(p) "(" p "::bigint * interval '1 microsecond')"
#define OWNER_FILTER "($2::uuid IS NULL OR owner_id = $2::uuid)"

/* The row after a change, or the current row when nothing changed (then "applied" is false). */
#define APPLIED_OR_CURRENT(where)                                                    \
        "SELECT " TASK_COLUMNS ", true FROM upd "                                    \
        "UNION ALL SELECT " TASK_COLUMNS ", false FROM tasks WHERE " where            \
        " AND NOT EXISTS (SELECT 1 FROM upd)"

typedef enum StoreOpKind {
        OP_TASK,       /* one row → TaskStoreCallback */
        OP_LIST,
        OP_STATS,
        OP_COMMAND,    /* no rows expected */
        OP_IDEM_LOOKUP,
        OP_IDEM_INSERT,
        OP_CREATE,     /* a create alone in its statement: as OP_TASK, counted in creates_in_flight */
} StoreOpKind;

struct StoreOp {
        TaskStore *store;
        StoreOpKind kind;
        TaskStoreCallback cb;
        TaskStoreListCallback list_cb;
        TaskStoreStatsCallback stats_cb;
        void *userdata;
        char changed[UUID_STRING_MAX]; /* a statement that may change this task: forgotten by the cache */

        /* insert: the parameters are kept for a later statement (a batch, or with
         * Idempotency-Key the second round) */
        char *params[11];
        char hash_hex[65];
        unsigned lookups;
        size_t bytes; /* of name, code and input: the size of a batch is kept under CREATE_BATCH_BYTES */
};

static StoreOp *store_op_free(StoreOp *op) {
        if (!op)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(op->params); i++)
                free(op->params[i]);
        return mfree(op);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(StoreOp *, store_op_free);

int task_store_new(TaskStore **ret, PgPool *pool, uint64_t timeout_usec, TaskCache *cache) {
        TaskStore *s;

        s = calloc(1, sizeof(TaskStore));
        if (!s)
                return -ENOMEM;
        s->pool = pool;
        s->timeout_usec = timeout_usec;
        s->cache = cache;
        *ret = s;
        return 0;
}

TaskStore *task_store_free(TaskStore *s) {
        if (!s)
                return NULL;
        /* creates that never reached the database */
        for (size_t i = 0; i < s->n_creates; i++) {
                _cleanup_(store_op_freep) StoreOp *op = s->creates[i];

                op->cb(-ECANCELED, NULL, false, op->userdata);
        }
        free(s->creates);
        return mfree(s);
}

static int strdup_or_null(const char *s, char **ret) {
        if (!s) {
                *ret = NULL;
                return 0;
        }
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

static usec_t get_usec(const PGresult *r, int row, int col) {
        if (PQgetisnull(r, row, col))
                return 0;
        return (usec_t) strtoull(PQgetvalue(r, row, col), NULL, 10);
}

static int get_string(const PGresult *r, int row, int col, char **ret) {
        return strdup_or_null(PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col), ret);
}

static bool get_bool(const PGresult *r, int row, int col) {
        return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

static int task_from_row(const PGresult *r, int row, Task **ret) {
        _cleanup_(task_freep) Task *t = NULL;
        int k;

        if (PQnfields(r) < _COL_MAX)
                return -EBADMSG;

        t = calloc(1, sizeof(Task));
        if (!t)
                return -ENOMEM;

        if (uuid_normalize(PQgetvalue(r, row, COL_ID), t->id) < 0 ||
            uuid_normalize(PQgetvalue(r, row, COL_OWNER_ID), t->owner_id) < 0)
                return -EBADMSG;
        if ((k = get_string(r, row, COL_NAME, &t->name)) < 0 || (k = get_string(r, row, COL_CODE, &t->code)) < 0 ||
            (k = get_string(r, row, COL_INPUT_DATA, &t->input_data)) < 0 ||
            (k = get_string(r, row, COL_RESULT, &t->result)) < 0 ||
            (k = get_string(r, row, COL_ERROR_MESSAGE, &t->error_message)) < 0 ||
            (k = get_string(r, row, COL_VERDICT, &t->verdict)) < 0 ||
            (k = get_string(r, row, COL_WORKER, &t->worker)) < 0)
                return k;

        t->language = (TaskLanguage) atoi(PQgetvalue(r, row, COL_LANGUAGE));
        t->status = (TaskStatus) atoi(PQgetvalue(r, row, COL_STATUS));
        if (t->language < 0 || t->language >= _TASK_LANGUAGE_MAX || t->status < 0 || t->status >= _TASK_STATUS_MAX)
                return -EBADMSG;
        t->has_exit_code = !PQgetisnull(r, row, COL_EXIT_CODE);
        if (t->has_exit_code)
                t->exit_code = atoi(PQgetvalue(r, row, COL_EXIT_CODE));
        t->output_truncated = get_bool(r, row, COL_OUTPUT_TRUNCATED);
        t->ttl = get_usec(r, row, COL_TTL);
        t->created_at = get_usec(r, row, COL_CREATED_AT);
        t->started_at = get_usec(r, row, COL_STARTED_AT);
        t->completed_at = get_usec(r, row, COL_COMPLETED_AT);
        t->expires_at = get_usec(r, row, COL_EXPIRES_AT);
        t->retry_count = (unsigned) strtoul(PQgetvalue(r, row, COL_RETRY_COUNT), NULL, 10);
        t->attempt = (unsigned) strtoul(PQgetvalue(r, row, COL_ATTEMPT), NULL, 10);
        t->lease_expires_at = get_usec(r, row, COL_LEASE_EXPIRES_AT);

        *ret = TAKE_PTR(t);
        return 0;
}

static void deliver_task(StoreOp *op, int error, const PGresult *result) {
        _cleanup_(task_freep) Task *t = NULL;
        bool applied = true;

        /* Also on failure: whether the change was committed is not known. */
        if (op->changed[0] != '\0')
                task_cache_forget(op->store->cache, op->changed);

        if (error >= 0) {
                if (!result || PQntuples(result) == 0)
                        error = -ENOENT;
                else {
                        error = task_from_row(result, 0, &t);
                        if (error >= 0 && PQnfields(result) > _COL_MAX)
                                applied = get_bool(result, 0, _COL_MAX);
                }
        }
        if (op->cb)
                op->cb(error, error < 0 ? NULL : &t, error < 0 ? false : applied, op->userdata);
}

static void deliver_list(StoreOp *op, int error, const PGresult *result) {
        Task **tasks = NULL;
        size_t n = 0;

        if (error >= 0) {
                size_t rows = (size_t) PQntuples(result);

                tasks = calloc(rows + 1, sizeof(Task *));
                if (!tasks)
                        error = -ENOMEM;
                for (; error >= 0 && n < rows; n++)
                        error = task_from_row(result, (int) n, &tasks[n]);
        }
        op->list_cb(error, error < 0 ? NULL : tasks, error < 0 ? 0 : n, op->userdata);
        for (size_t i = 0; tasks && tasks[i]; i++)
                task_free(tasks[i]);
        free(tasks);
}

static void deliver_stats(StoreOp *op, int error, const PGresult *result) {
        TaskStats stats = {};

        if (error >= 0)
                for (int i = 0; i < PQntuples(result); i++) {
                        int s = atoi(PQgetvalue(result, i, 0));

                        if (s < 0 || s >= _TASK_STATUS_MAX)
                                continue;
                        stats.counts[s] = strtoull(PQgetvalue(result, i, 1), NULL, 10);
                        if (s == TASK_PENDING) {
                                int64_t age = strtoll(PQgetvalue(result, i, 2), NULL, 10);

                                stats.oldest_pending_age = age > 0 ? (usec_t) age : 0;
                                stats.unpublished = strtoull(PQgetvalue(result, i, 3), NULL, 10);
                        }
                }
        op->stats_cb(error, error < 0 ? NULL : &stats, op->userdata);
}

static int idempotency_lookup(StoreOp *op);
static int idempotency_insert(StoreOp *op);
static void create_statement_ended(TaskStore *s, int error);

static void on_result(PgPool *pool, const PGresult *result, int error, void *userdata) {
        _cleanup_(store_op_freep) StoreOp *op = userdata;
        int r;

        switch (op->kind) {
        case OP_TASK:
                deliver_task(op, error, result);
                break;
        case OP_CREATE:
                create_statement_ended(op->store, error); /* first: the database gets the next statement sooner */
                deliver_task(op, error, result);
                break;
        case OP_LIST:
                deliver_list(op, error, result);
                break;
        case OP_STATS:
                deliver_stats(op, error, result);
                break;
        case OP_COMMAND:
                if (op->cb)
                        op->cb(error, NULL, error >= 0, op->userdata);
                break;

        case OP_IDEM_LOOKUP:
                if (error >= 0 && result && PQntuples(result) > 0) {
                        /* Seen before: the original task, if the request was the same. */
                        if (!PQgetisnull(result, 0, _COL_MAX) && streq(PQgetvalue(result, 0, _COL_MAX), op->hash_hex)) {
                                _cleanup_(task_freep) Task *t = NULL;

                                r = task_from_row(result, 0, &t);
                                op->cb(r, r < 0 ? NULL : &t, false, op->userdata);
                        } else
                                op->cb(-EILSEQ, NULL, false, op->userdata);
                        break;
                }
                if (error < 0) {
                        op->cb(error, NULL, false, op->userdata);
                        break;
                }
                r = idempotency_insert(op);
                if (r < 0) {
                        op->cb(r, NULL, false, op->userdata);
                        break;
                }
                TAKE_PTR(op);
                break;

        case OP_IDEM_INSERT:
                if (error == -EBADMSG && result && op->lookups < 2 &&
                    streq_ptr(pg_result_sqlstate(result), PG_UNIQUE_VIOLATION)) {
                        /* Another request with the same key won the race: answer with its task. */
                        r = idempotency_lookup(op);
                        if (r < 0) {
                                op->cb(r, NULL, false, op->userdata);
                                break;
                        }
                        TAKE_PTR(op);
                        break;
                }
                deliver_task(op, error, result);
                break;
        }
}

static int query(TaskStore *s, StoreOp *op, const char *sql, int n, const char *const *values) {
        return pg_pool_query(s->pool, sql, n, values, s->timeout_usec, on_result, op, NULL);
}

static StoreOp *op_new(TaskStore *s, StoreOpKind kind, TaskStoreCallback cb, void *userdata) {
        StoreOp *op = calloc(1, sizeof(StoreOp));

        if (!op)
                return NULL;
        op->store = s;
        op->kind = kind;
        op->cb = cb;
        op->userdata = userdata;
        return op;
}

/* Runs a one-row statement. changes: it may change the task of id values[0]. */
static int run_task_statement(TaskStore *s, const char *sql, int n, const char *const *values, bool changes,
                              TaskStoreCallback cb, void *userdata) {
        _cleanup_(store_op_freep) StoreOp *op = op_new(s, OP_TASK, cb, userdata);
        int r;

        if (!op)
                return -ENOMEM;
        if (changes && uuid_normalize(values[0], op->changed) < 0)
                op->changed[0] = '\0'; /* not a task id: the statement finds nothing */
        r = query(s, op, sql, n, values);
        if (r < 0)
                return r;
        TAKE_PTR(op);
        return 0;
}

static int run_task_query(TaskStore *s, const char *sql, int n, const char *const *values, TaskStoreCallback cb,
                          void *userdata) {
        return run_task_statement(s, sql, n, values, false, cb, userdata);
}

static int run_task_change(TaskStore *s, const char *sql, int n, const char *const *values, TaskStoreCallback cb,
                           void *userdata) {
        return run_task_statement(s, sql, n, values, true, cb, userdata);
}

#define FMT_USEC(buf, v) (snprintf((buf), sizeof(buf), "%" PRIu64, (uint64_t) (v)), (buf))
#define FMT_UINT(buf, v) (snprintf((buf), sizeof(buf), "%u", (unsigned) (v)), (buf))

/* insert: $1 id, $2 name, $3 code, $4 language, $5 input_data, $6 owner, $7 ttl µs, $8 max_attempts,
 * $9 idempotency key, $10 request hash (hex), $11 retention µs */
#define INSERT_TASK_COLUMNS \
        "INSERT INTO tasks (id, name, code, language, input_data, owner_id, ttl, expires_at, max_attempts) "
#define INSERT_TASK                                                                                   \
        INSERT_TASK_COLUMNS "VALUES ($1::uuid, $2, $3, $4::smallint, $5, $6::uuid, " INTERVAL_USEC("$7") \
                            ", now() + " INTERVAL_USEC("$7") ", $8::integer)"

static const char sql_insert[] =
        "WITH ins AS (" INSERT_TASK " RETURNING *), " OUTBOX_ADD("ins", "true", "NULL") " "
        "SELECT " TASK_COLUMNS " FROM ins";

/* Several creates in one statement: the parameters of sql_insert as arrays, one element per task. */
static const char sql_insert_batch[] =
        "WITH ins AS (" INSERT_TASK_COLUMNS "SELECT id, name, code, language, input_data, owner_id, "
        INTERVAL_USEC("ttl") ", now() + " INTERVAL_USEC("ttl") ", max_attempts "
        "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::uuid[], $7::bigint[], "
        "$8::integer[]) AS n(id, name, code, language, input_data, owner_id, ttl, max_attempts) RETURNING *), "
        OUTBOX_ADD("ins", "true", "NULL") " SELECT " TASK_COLUMNS " FROM ins";
#define INSERT_PARAMS 8

typedef struct CreateBatch {
        TaskStore *store;
        StoreOp *ops[CREATE_BATCH_ROWS];
        size_t n_ops;
} CreateBatch;

/* One element of an array literal in PostgreSQL's text format, quoted, or NULL. Written to out
 * unless that is NULL; returns its length either way. */
static size_t array_element(const char *v, char *out) {
        size_t n = 0;

        if (!v) {
                if (out)
                        memcpy(out, "NULL", 4);
                return 4;
        }
        if (out)
                out[n] = '"';
        n++;
        for (; *v != '\0'; v++) {
                if (*v == '"' || *v == '\\') {
                        if (out)
                                out[n] = '\\';
                        n++;
                }
                if (out)
                        out[n] = *v;
                n++;
        }
        if (out)
                out[n] = '"';
        return n + 1;
}

/* Parameter `param` of each create as one array literal: {"a","b",NULL}. */
static char *array_literal(StoreOp *const *ops, size_t n_ops, size_t param) {
        size_t size = 2, k = 0;
        char *buf;

        for (size_t i = 0; i < n_ops; i++)
                size += (i > 0) + array_element(ops[i]->params[param], NULL);
        buf = malloc(size + 1);
        if (!buf)
                return NULL;
        buf[k++] = '{';
        for (size_t i = 0; i < n_ops; i++) {
                if (i > 0)
                        buf[k++] = ',';
                k += array_element(ops[i]->params[param], buf + k);
        }
        buf[k++] = '}';
        buf[k] = '\0';
        return buf;
}

static void create_fail(StoreOp *op, int error) {
        op->cb(error, NULL, false, op->userdata);
        store_op_free(op);
}

static void on_batch_result(PgPool *pool, const PGresult *result, int error, void *userdata);

/* Sends creates: one alone with sql_insert, several as one statement. Takes the ops on success. */
static int creates_send(TaskStore *s, StoreOp *const *ops, size_t n_ops) {
        _cleanup_free_ CreateBatch *b = NULL;
        char *arrays[INSERT_PARAMS] = {};
        int r = 0;

        assert(n_ops > 0 && n_ops <= CREATE_BATCH_ROWS);
        if (n_ops == 1) {
                ops[0]->kind = OP_CREATE;
                r = query(s, ops[0], sql_insert, INSERT_PARAMS, (const char *const *) ops[0]->params);
                if (r < 0)
                        return r;
                s->creates_in_flight++;
                return 0;
        }

        b = calloc(1, sizeof(CreateBatch));
        if (!b)
                return -ENOMEM;
        for (size_t i = 0; i < INSERT_PARAMS && r >= 0; i++)
                if (!(arrays[i] = array_literal(ops, n_ops, i)))
                        r = -ENOMEM;
        if (r >= 0)
                r = pg_pool_query(s->pool, sql_insert_batch, INSERT_PARAMS, (const char *const *) arrays,
                                  s->timeout_usec, on_batch_result, b, NULL);
        for (size_t i = 0; i < INSERT_PARAMS; i++)
                free(arrays[i]);
        if (r < 0)
                return r;
        b->store = s;
        memcpy(b->ops, ops, n_ops * sizeof(StoreOp *));
        b->n_ops = n_ops;
        s->creates_in_flight++;
        TAKE_PTR(b);
        return 0;
}

/* While fewer than CREATES_IN_FLIGHT statements are in flight, the oldest waiting creates go,
 * as many as fit into one. */
static void creates_next(TaskStore *s) {
        while (s->n_creates > 0 && s->creates_in_flight < CREATES_IN_FLIGHT) {
                StoreOp *ops[CREATE_BATCH_ROWS];
                size_t n = 0, bytes = 0;
                int r;

                for (; n < s->n_creates && n < CREATE_BATCH_ROWS; n++) {
                        bytes += s->creates[n]->bytes;
                        if (n > 0 && bytes > CREATE_BATCH_BYTES)
                                break;
                        ops[n] = s->creates[n];
                }
                s->n_creates -= n;
                memmove(s->creates, s->creates + n, s->n_creates * sizeof(StoreOp *));

                r = creates_send(s, ops, n);
                if (r < 0)
                        for (size_t i = 0; i < n; i++)
                                create_fail(ops[i], r);
        }
}

/* A create statement ended: the next waiting creates may go, unless the pool is being freed
 * (-ECANCELED): then task_store_free() answers the waiting ones. */
static void create_statement_ended(TaskStore *s, int error) {
        s->creates_in_flight--;
        if (error != -ECANCELED)
                creates_next(s);
}

static void on_batch_result(PgPool *pool, const PGresult *result, int error, void *userdata) {
        _cleanup_free_ CreateBatch *b = userdata;
        TaskStore *s = b->store;
        int r;

        if (error == -EBADMSG) {
                /* The server refused the statement (a constraint or a trigger refused one row, say):
                 * the other creates must not fail with that one. */
                log_warning("The database refused a statement of %zu creates (SQLSTATE %s); sending them one "
                            "by one.", b->n_ops, strna(pg_result_sqlstate(result)));
                for (size_t i = 0; i < b->n_ops; i++) {
                        r = creates_send(s, &b->ops[i], 1);
                        if (r < 0)
                                create_fail(b->ops[i], r);
                }
                create_statement_ended(s, error); /* for the waiting ones, when none of these could be sent */
                return;
        }
        create_statement_ended(s, error);

        for (size_t i = 0; i < b->n_ops; i++) {
                _cleanup_(store_op_freep) StoreOp *op = b->ops[i];
                _cleanup_(task_freep) Task *t = NULL;

                r = error;
                if (r >= 0) {
                        r = -EBADMSG; /* unless its row is there */
                        for (int row = 0; row < PQntuples(result); row++)
                                if (streq(PQgetvalue(result, row, COL_ID), op->params[0])) {
                                        r = task_from_row(result, row, &t);
                                        break;
                                }
                }
                op->cb(r, r < 0 ? NULL : &t, r >= 0, op->userdata);
        }
}

/* A create goes at once while fewer than CREATES_IN_FLIGHT are in flight (then none waits). */
static int create_enqueue(TaskStore *s, StoreOp *op) {
        if (s->creates_in_flight < CREATES_IN_FLIGHT)
                return creates_send(s, &op, 1);
        if (s->n_creates >= CREATES_WAITING_MAX)
                return -EAGAIN;
        if (!s->creates) {
                s->creates = calloc(CREATES_WAITING_MAX, sizeof(StoreOp *));
                if (!s->creates)
                        return -ENOMEM;
        }
        s->creates[s->n_creates++] = op;
        return 0;
}

static const char sql_idem_delete_stale[] =
        "DELETE FROM idempotency_keys WHERE owner_id = $1::uuid AND key = $2 "
        "AND created_at < now() - " INTERVAL_USEC("$3");

static const char sql_idem_insert[] =
        "WITH ins AS (" INSERT_TASK " RETURNING *), " OUTBOX_ADD("ins", "true", "NULL") ", "
        "k AS (INSERT INTO idempotency_keys (owner_id, key, request_hash, task_id) "
        "      SELECT owner_id, $9, decode($10, 'hex'), id FROM ins) "
        "SELECT " TASK_COLUMNS " FROM ins";

static const char sql_idem_lookup[] =
        "SELECT " TASK_COLUMNS ", encode(request_hash, 'hex') FROM ("
        "  SELECT t.*, k.request_hash FROM idempotency_keys k JOIN tasks t ON t.id = k.task_id"
        "  WHERE k.owner_id = $1::uuid AND k.key = $2 AND k.created_at >= now() - " INTERVAL_USEC("$3") ") AS s";

static int idempotency_lookup(StoreOp *op) {
        const char *values[] = { op->params[5], op->params[8], op->params[10] };

        op->kind = OP_IDEM_LOOKUP;
        op->lookups++;
        return query(op->store, op, sql_idem_lookup, ELEMENTSOF(values), values);
}

static int idempotency_insert(StoreOp *op) {
        /* PostgreSQL wants every parameter passed to be referenced: each statement gets its own. */
        const char *const *values = (const char *const *) op->params;
        const char *delete_values[] = { op->params[5], op->params[8], op->params[10] };
        const PgStatement statements[] = {
                { sql_idem_delete_stale, ELEMENTSOF(delete_values), delete_values },
                { sql_idem_insert, 10, values },
        };

        op->kind = OP_IDEM_INSERT;
        return pg_pool_transaction(op->store->pool, statements, ELEMENTSOF(statements), op->store->timeout_usec,
                                   on_result, op, NULL);
}

int task_store_insert(TaskStore *s, const TaskInsert *in, TaskStoreCallback cb, void *userdata) {
        _cleanup_(store_op_freep) StoreOp *op = NULL;
        char id[UUID_STRING_MAX], ttl[32], max_attempts[16], retention[32];
        const TaskCreate *c = in->create;
        int r;

        op = op_new(s, OP_TASK, cb, userdata);
        if (!op)
                return -ENOMEM;

        uuid_generate_v4(id);
        const char *values[11] = {
                id,
                c->name,
                c->code,
                c->language == TASK_LANGUAGE_PYTHON ? "1" : "0",
                c->input_data,
                in->owner_id,
                FMT_USEC(ttl, c->ttl),
                FMT_UINT(max_attempts, in->max_attempts),
                in->idempotency_key,
                NULL,
                FMT_USEC(retention, in->idempotency_retention),
        };

        if (in->idempotency_key) {
                for (size_t i = 0; i < 32; i++)
                        snprintf(op->hash_hex + 2 * i, 3, "%02x", in->request_hash[i]);
                values[9] = op->hash_hex;
        }
        for (size_t i = 0; i < ELEMENTSOF(values); i++) {
                r = strdup_or_null(values[i], &op->params[i]);
                if (r < 0)
                        return r;
        }

        if (!in->idempotency_key) {
                op->bytes = strlen(c->name) + strlen(c->code) + (c->input_data ? strlen(c->input_data) : 0);
                r = create_enqueue(s, op);
                if (r < 0)
                        return r;
                TAKE_PTR(op);
                return 0;
        }

        r = idempotency_lookup(op);
        if (r < 0)
                return r;
        TAKE_PTR(op);
        return 0;
}

size_t task_store_creates_waiting(const TaskStore *s) {
        return s->n_creates;
}

int task_store_get(TaskStore *s, const char *id, const char *owner, TaskStoreCallback cb, void *userdata) {
        static const char sql[] = "SELECT " TASK_COLUMNS " FROM tasks WHERE id = $1::uuid AND " OWNER_FILTER;
        const char *values[] = { id, owner };

        return run_task_query(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

char *task_store_cursor(const Task *t) {
        char *s;

        if (asprintf(&s, "%" PRIu64 "-%s", (uint64_t) t->created_at, t->id) < 0)
                return NULL;
        return s;
}

int task_store_cursor_parse(const char *cursor, usec_t *ret_created_at, char ret_id[static UUID_STRING_MAX]) {
        size_t n = strspn(cursor, "0123456789");
        char id[UUID_STRING_MAX];

        if (n == 0 || n > 19 || cursor[n] != '-' || uuid_normalize(cursor + n + 1, id) < 0)
                return -EINVAL;
        *ret_created_at = strtoull(cursor, NULL, 10);
        memcpy(ret_id, id, UUID_STRING_MAX);
        return 0;
}

int task_store_list(TaskStore *s, const char *owner, TaskStatus status, const char *after, unsigned limit,
                    TaskStoreListCallback cb, void *userdata) {
        static const char sql[] =
                "SELECT " TASK_COLUMNS " FROM tasks WHERE ($1::uuid IS NULL OR owner_id = $1::uuid) "
                "AND ($2::smallint IS NULL OR status = $2::smallint) "
                "AND ($3::timestamptz IS NULL OR (created_at, id) > ($3::timestamptz, $4::uuid)) "
                "ORDER BY created_at, id LIMIT $5::integer";
        _cleanup_(store_op_freep) StoreOp *op = NULL;
        char status_buf[16], limit_buf[16], after_time[ISO8601_STRING_MAX], after_id[UUID_STRING_MAX];
        const char *values[5] = { owner, NULL, NULL, NULL, FMT_UINT(limit_buf, limit) };
        int r;

        if (status >= 0)
                values[1] = FMT_UINT(status_buf, status);
        if (after) {
                usec_t t;

                r = task_store_cursor_parse(after, &t, after_id);
                if (r < 0)
                        return r;
                values[2] = iso8601_format(t, after_time);
                values[3] = after_id;
        }

        op = op_new(s, OP_LIST, NULL, userdata);
        if (!op)
                return -ENOMEM;
        op->list_cb = cb;
        r = query(s, op, sql, ELEMENTSOF(values), values);
        if (r < 0)
                return r;
        TAKE_PTR(op);
        return 0;
}

int task_store_patch(TaskStore *s, const char *id, const char *owner, const TaskPatch *p, TaskStoreCallback cb,
                     void *userdata) {
        static const char sql[] =
                "WITH upd AS (UPDATE tasks SET "
                "  name = COALESCE($3, name), code = COALESCE($4, code), "
                "  language = COALESCE($5::smallint, language), input_data = COALESCE($6, input_data), "
                "  expires_at = CASE WHEN $7::bigint IS NULL THEN expires_at "
                "                    ELSE expires_at - ttl + " INTERVAL_USEC("$7") " END, "
                "  ttl = COALESCE(" INTERVAL_USEC("$7") ", ttl), "
                "  status = COALESCE($8::smallint, status), result = COALESCE($9, result), "
                "  published_at = CASE WHEN $8::smallint = 0 AND status <> 0 THEN NULL ELSE published_at END, "
                "  error_message = COALESCE($10, error_message), "
                "  started_at = COALESCE($11::timestamptz, started_at), "
                "  completed_at = COALESCE($12::timestamptz, completed_at), "
                "  owner_id = COALESCE($13::uuid, owner_id), updated_at = now() "
                "  WHERE id = $1::uuid AND " OWNER_FILTER " AND (NOT $14::boolean OR status <> 1) RETURNING *), "
                /* status set to Pending by hand: dispatched again (the caller publishes, else the
                 * reaper), also when it was Pending already: a second message is claimed in vain */
                OUTBOX_ADD("upd", "$8::smallint = 0", "NULL") " "
                APPLIED_OR_CURRENT("id = $1::uuid AND " OWNER_FILTER);
        char language[16], ttl[32], status[16], started[ISO8601_STRING_MAX], completed[ISO8601_STRING_MAX];
        unsigned f = p->fields;
        const char *values[14] = {
                id,
                owner,
                f & TASK_PATCH_NAME ? p->name : NULL,
                f & TASK_PATCH_CODE ? p->code : NULL,
                f & TASK_PATCH_LANGUAGE ? FMT_UINT(language, p->language) : NULL,
                f & TASK_PATCH_INPUT_DATA ? p->input_data : NULL,
                f & TASK_PATCH_TTL ? FMT_USEC(ttl, p->ttl) : NULL,
                f & TASK_PATCH_STATUS ? FMT_UINT(status, p->status) : NULL,
                f & TASK_PATCH_RESULT ? p->result : NULL,
                f & TASK_PATCH_ERROR_MESSAGE ? p->error_message : NULL,
                f & TASK_PATCH_STARTED_AT ? iso8601_format(p->started_at, started) : NULL,
                f & TASK_PATCH_COMPLETED_AT ? iso8601_format(p->completed_at, completed) : NULL,
                f & TASK_PATCH_USER_ID ? p->user_id : NULL,
                f & (TASK_PATCH_CODE | TASK_PATCH_LANGUAGE | TASK_PATCH_INPUT_DATA | TASK_PATCH_TTL) ? "true" : "false",
        };

        return run_task_change(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

int task_store_retry(TaskStore *s, const char *id, const char *owner, TaskStoreCallback cb, void *userdata) {
        static const char sql[] =
                "WITH upd AS (UPDATE tasks SET status = 0, result = NULL, error_message = NULL, "
                "  started_at = NULL, completed_at = NULL, exit_code = NULL, verdict = NULL, "
                "  output_truncated = false, retry_count = retry_count + 1, attempt = 0, "
                "  expires_at = now() + ttl, lease_expires_at = NULL, worker = NULL, "
                "  published_at = NULL, updated_at = now() "
                "  WHERE id = $1::uuid AND " OWNER_FILTER " AND " ROW_STATUS " >= 2 RETURNING *), "
                OUTBOX_ADD("upd", "true", "NULL") " "
                APPLIED_OR_CURRENT("id = $1::uuid AND " OWNER_FILTER);
        const char *values[] = { id, owner };

        return run_task_change(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

int task_store_cancel(TaskStore *s, const char *id, const char *owner, TaskStoreCallback cb, void *userdata) {
        static const char sql[] =
                /* locked first: whether an attempt was running is the status it had */
                "WITH cur AS (SELECT id, status AS old_status FROM tasks "
                "  WHERE id = $1::uuid AND " OWNER_FILTER " AND " ROW_STATUS " IN (0, 1) FOR UPDATE), "
                "upd AS (UPDATE tasks t SET status = 5, verdict = 'cancelled', completed_at = now(), "
                "  error_message = COALESCE(error_message, 'Task cancelled'), lease_expires_at = NULL, "
                "  updated_at = now() "
                "  FROM cur WHERE t.id = cur.id AND " ROW_STATUS " IN (0, 1) RETURNING t.*, cur.old_status), "
                ATTEMPT_END("att", "upd", "worker, COALESCE(started_at, now()), completed_at, 5, 'cancelled', NULL",
                            "old_status = 1") " "
                APPLIED_OR_CURRENT("id = $1::uuid AND " OWNER_FILTER);
        const char *values[] = { id, owner };

        return run_task_change(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

int task_store_claim(TaskStore *s, const char *id, const char *worker, usec_t lease, TaskStoreCallback cb,
                     void *userdata) {
        static const char sql[] =
                "WITH upd AS (UPDATE tasks SET status = 1, attempt = attempt + 1, started_at = now(), "
                "  lease_expires_at = now() + " INTERVAL_USEC("$2") ", worker = $3, updated_at = now() "
                "  WHERE id = $1::uuid AND " ROW_STATUS " = 0 AND expires_at > now() RETURNING *), "
                "expired AS (UPDATE tasks SET status = 4, error_message = 'Task expired due to TTL', "
                "  completed_at = now(), updated_at = now() "
                "  WHERE id = $1::uuid AND " ROW_STATUS " = 0 AND expires_at <= now() RETURNING *) "
                "SELECT " TASK_COLUMNS ", true FROM upd "
                "UNION ALL SELECT " TASK_COLUMNS ", false FROM expired "
                "UNION ALL SELECT " TASK_COLUMNS ", false FROM tasks WHERE id = $1::uuid "
                "  AND NOT EXISTS (SELECT 1 FROM upd) AND NOT EXISTS (SELECT 1 FROM expired)";
        char lease_buf[32];
        const char *values[] = { id, FMT_USEC(lease_buf, lease), worker };

        return run_task_change(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

int task_store_heartbeat(TaskStore *s, const char *id, unsigned attempt, usec_t lease, TaskStoreCallback cb,
                         void *userdata) {
        static const char sql[] =
                "WITH upd AS (UPDATE tasks SET lease_expires_at = now() + " INTERVAL_USEC("$3") ", "
                "  updated_at = now() "
                "  WHERE id = $1::uuid AND " ROW_STATUS " = 1 AND attempt = $2::integer RETURNING *) "
                APPLIED_OR_CURRENT("id = $1::uuid");
        char attempt_buf[16], lease_buf[32];
        const char *values[] = { id, FMT_UINT(attempt_buf, attempt), FMT_USEC(lease_buf, lease) };

        return run_task_query(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

int task_store_complete(TaskStore *s, const char *id, const TaskCompletion *c, TaskStoreCallback cb,
                        void *userdata) {
        static const char sql[] =
                "WITH upd AS (UPDATE tasks SET status = $3::smallint, result = $4, "
                "  error_message = CASE WHEN $3::smallint = 4 THEN COALESCE($5, 'Task expired due to TTL') "
                "                       ELSE $5 END, "
                "  exit_code = $6::integer, "
                "  verdict = COALESCE($7, CASE WHEN $3::smallint = 2 THEN 'ok' END), "
                "  output_truncated = $8::boolean, completed_at = now(), lease_expires_at = NULL, "
                "  updated_at = now() "
                "  WHERE id = $1::uuid AND " ROW_STATUS " = 1 AND attempt = $2::integer RETURNING *), "
                ATTEMPT_END("att", "upd",
                            "worker, COALESCE(started_at, now()), completed_at, status, verdict, exit_code", "true")
                " "
                APPLIED_OR_CURRENT("id = $1::uuid");
        char attempt_buf[16], status_buf[16], exit_buf[16];
        const char *values[] = {
                id,
                FMT_UINT(attempt_buf, c->attempt),
                FMT_UINT(status_buf, c->status),
                c->result,
                c->error_message,
                c->has_exit_code ? (snprintf(exit_buf, sizeof(exit_buf), "%d", c->exit_code), exit_buf) : NULL,
                c->verdict,
                c->output_truncated ? "true" : "false",
        };

        return run_task_change(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

int task_store_release(TaskStore *s, const char *id, unsigned attempt, TaskStoreCallback cb, void *userdata) {
        static const char sql[] =
                /* locked first: the update clears the attempt's worker and started_at */
                "WITH cur AS (SELECT id, worker AS old_worker, started_at AS old_started FROM tasks "
                "  WHERE id = $1::uuid AND " ROW_STATUS " = 1 AND attempt = $2::integer FOR UPDATE), "
                "upd AS (UPDATE tasks t SET status = 0, started_at = NULL, lease_expires_at = NULL, "
                "  worker = NULL, published_at = NULL, updated_at = now() "
                "  FROM cur WHERE t.id = cur.id AND " ROW_STATUS " = 1 AND attempt = $2::integer "
                "  RETURNING t.*, cur.old_worker, cur.old_started), "
                OUTBOX_ADD("upd", "true", "NULL") ", "
                ATTEMPT_END("att", "upd",
                            "old_worker, COALESCE(old_started, now()), now(), NULL, 'released', NULL", "true")
                " " APPLIED_OR_CURRENT("id = $1::uuid");
        char attempt_buf[16];
        const char *values[] = { id, FMT_UINT(attempt_buf, attempt) };

        return run_task_change(s, sql, ELEMENTSOF(values), values, cb, userdata);
}

static int marks_flush(TaskStore *s);

static void on_marks_recorded(PgPool *pool, const PGresult *result, int error, void *userdata) {
        TaskStore *s = userdata;
        int r;

        s->marks_in_flight--;
        if (error == -ECANCELED)
                return; /* shutting down: the reaper publishes what stayed unmarked */
        if (error < 0)
                log_warning_errno(error, "Failed to record that tasks were published (%m); dtask-reaper "
                                  "publishes them again.");
        if (s->n_marks > 0 && s->marks_in_flight == 0) {
                r = marks_flush(s);
                if (r < 0)
                        log_warning_errno(r, "Failed to record that tasks were published (%m); dtask-reaper "
                                          "publishes them again.");
        }
}

/* One DELETE for every mark gathered so far, as two array literals. */
static int marks_flush(TaskStore *s) {
        static const char sql[] =
                "DELETE FROM task_outbox o USING unnest($1::uuid[], $2::integer[]) AS m(id, retry_count) "
                "WHERE o.task_id = m.id AND o.retry_count = m.retry_count";
        _cleanup_free_ char *ids = NULL, *retries = NULL;
        size_t ids_len = 0, retries_len = 0;
        unsigned n = s->n_marks;
        int r;

        assert(n > 0);
        ids = malloc(2 + n * UUID_STRING_MAX);
        retries = malloc(2 + n * 11);
        if (!ids || !retries)
                return -ENOMEM;
        for (unsigned i = 0; i < n; i++) {
                const char *sep = i == 0 ? "{" : ",";

                ids_len += sprintf(ids + ids_len, "%s%s", sep, s->marks[i].id);
                retries_len += sprintf(retries + retries_len, "%s%u", sep, s->marks[i].retry_count);
        }
        strcpy(ids + ids_len, "}");
        strcpy(retries + retries_len, "}");

        r = pg_pool_query(s->pool, sql, 2, (const char *const[]) { ids, retries }, s->timeout_usec,
                          on_marks_recorded, s, NULL);
        if (r < 0)
                return r;
        s->n_marks = 0;
        s->marks_in_flight++;
        return 0;
}

int task_store_mark_published(TaskStore *s, const char *id, unsigned retry_count) {
        PublishedMark *m;
        int r;

        if (s->n_marks >= MARKS_MAX) {
                r = marks_flush(s);
                if (r < 0)
                        return r;
        }
        m = &s->marks[s->n_marks];
        r = uuid_normalize(id, m->id);
        if (r < 0)
                return r;
        m->retry_count = retry_count;
        s->n_marks++;

        /* While an UPDATE is in flight the marks gather for the next one. */
        if (s->marks_in_flight == 0 || s->n_marks >= MARKS_MAX)
                return marks_flush(s);
        return 0;
}

int task_store_stats(TaskStore *s, bool live_only, TaskStoreStatsCallback cb, void *userdata) {
#define STATS_SELECT                                                   \
        "SELECT status, count(*), " USEC("now() - min(created_at)") ", " \
        "CASE WHEN status = 0 THEN (SELECT count(*) FROM task_outbox) END FROM tasks "
        static const char sql_all[] = STATS_SELECT "GROUP BY status";
        static const char sql_live[] = STATS_SELECT "WHERE " LIVE_STATUS " GROUP BY status";
#undef STATS_SELECT
        const char *sql = live_only ? sql_live : sql_all;
        _cleanup_(store_op_freep) StoreOp *op = op_new(s, OP_STATS, NULL, userdata);
        int r;

        if (!op)
                return -ENOMEM;
        op->stats_cb = cb;
        r = query(s, op, sql, 0, NULL);
        if (r < 0)
                return r;
        TAKE_PTR(op);
        return 0;
}
