/* SPDX-License-Identifier: MIT */
/* PgPool: up to N asynchronous libpq connections on sd-event, opened as the load needs
 * them, a bounded FIFO of waiting queries, a deadline per query, and reconnection in the
 * background.
 *
 * Life of a query: pg_pool_query() copies the statement, arms the deadline timer and
 * appends it to the queue; the dispatch defer source hands queued queries to idle
 * connections (PQsendQueryPrepared + PQflush); the connection's io handler reads results
 * (PQconsumeInput, PQisBusy, PQgetResult until NULL) and, for a transaction, sends the
 * next step (BEGIN, statements, COMMIT or ROLLBACK). The callback runs from the event
 * loop, as the last thing the handler does, so it may queue more queries, cancel others
 * or free the pool.
 *
 * Prepared statements: the first time a session sees a statement text it prepares it
 * (one more round trip), and runs it by name from then on, so the server parses and
 * plans it once per session instead of once per call. Each session remembers up to
 * PG_CONN_PREPARED_MAX texts; beyond that statements run unnamed as before. A session
 * forgets them when it ends. When a schema change made a prepared statement's result
 * type stale (SQLSTATE 0A000, "cached plan must not change result type"), the session is
 * replaced and the query runs once more, unprepared: the failed statement changed
 * nothing, and a transaction is rolled back by the server when its session ends. */

#include <errno.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <time.h>

#include "log.h"
#include "pg-internal.h"
#include "pg.h"

#define PG_POOL_SIZE_DEFAULT 4U
#define PG_POOL_SIZE_MAX 256U
#define PG_POOL_TIMEOUT_DEFAULT_USEC (10 * USEC_PER_SEC)
#define PG_POOL_MAX_QUEUED_DEFAULT 1024U
#define PG_CONN_PREPARED_MAX 64U
#define PG_SQLSTATE_FEATURE_NOT_SUPPORTED "0A000"

/* Run once per new session. No JIT: our statements are short, and with statistics from
 * before a burst their estimates can pass jit_above_cost all the same; compiling them then
 * took ~0.4 s (a pass of dtask-reaper, 0.66 s instead of 0.2 ms). With the second setting
 * (PostgreSQL ≥ 14, Linux) the server notices within a second that we dropped a connection
 * whose statement ran past its deadline, and stops the statement; older servers reject it,
 * which is fine (it comes last). */
#define PG_SESSION_SETUP_SQL "SET jit = off; SET client_connection_check_interval = 1000"

typedef enum QueryState {
        QUERY_QUEUED,
        QUERY_RUNNING,
        QUERY_DONE, /* the callback is running or about to */
} QueryState;

typedef enum QueryPhase {
        PHASE_BEGIN,
        PHASE_STATEMENT,
        PHASE_COMMIT,
        PHASE_ROLLBACK,
} QueryPhase;

typedef struct PgStmt {
        char *sql;
        uint64_t hash; /* of sql, to find it among the prepared statements */
        int n_params;
        char **values;
} PgStmt;

typedef struct PgPrepared {
        uint64_t hash;
        char *sql;
} PgPrepared;

typedef struct PgConn PgConn;

struct PgQuery {
        PgPool *pool;
        QueryState state;
        bool cancelled;
        bool retried;         /* runs again, unprepared, after a stale prepared statement */
        PgQuery *next, *prev; /* queue */
        PgConn *conn;         /* while running */

        PgStmt *stmts;
        size_t n_stmts;
        bool transaction;
        QueryPhase phase;
        size_t step;
        bool preparing; /* PHASE_STATEMENT: the step in flight is its PQsendPrepare() */
        bool prepared;  /* PHASE_STATEMENT: the step in flight runs a prepared statement */
        bool unnamed;   /* PHASE_STATEMENT: run this step without preparing it */

        PGresult *step_result; /* result of the step in progress */
        PGresult *last;        /* transaction: result of the last statement so far */
        PGresult *saved;       /* transaction: the failure to report after ROLLBACK */
        int saved_error;

        sd_event_source *timer;
        PgCallback callback;
        void *userdata;
};

struct PgConn {
        PgPool *pool;
        char description[32];
        PgLink link;
        PgQuery *query;
        bool started;  /* opened once; from then on it reconnects by itself */
        bool setup;    /* PG_SESSION_SETUP_SQL in flight */
        bool flushing; /* PQflush() returned 1: waiting for EPOLLOUT */

        /* statements prepared in this session; the name of prepared[i] is "dtask_<i>" */
        PgPrepared prepared[PG_CONN_PREPARED_MAX];
        unsigned n_prepared;
};

struct PgPool {
        sd_event *event;
        char *conninfo; /* normalized, contains the password */
        char *redacted;
        unsigned size;
        uint64_t default_timeout_usec;
        unsigned max_queued;

        PgConn *conns;
        PgQuery *queue_head, *queue_tail;
        unsigned n_queued;
        sd_event_source *dispatch;
        bool closing;
};

/* ---- queries ---- */

static void stmt_done(PgStmt *s) {
        free(s->sql);
        if (s->values)
                for (int i = 0; i < s->n_params; i++)
                        erase_and_free(s->values[i]); /* parameters may be secrets */
        free(s->values);
}

/* FNV-1a */
static uint64_t sql_hash(const char *sql) {
        uint64_t h = UINT64_C(14695981039346656037);

        for (const unsigned char *c = (const unsigned char *) sql; *c; c++) {
                h ^= *c;
                h *= UINT64_C(1099511628211);
        }
        return h;
}

static int stmt_copy(PgStmt *dst, const char *sql, int n_params, const char *const *values) {
        *dst = (PgStmt) { .n_params = n_params, .hash = sql_hash(sql) };

        dst->sql = strdup(sql);
        if (!dst->sql)
                return -ENOMEM;
        if (n_params > 0) {
                dst->values = calloc(n_params, sizeof(char *));
                if (!dst->values)
                        return -ENOMEM;
                for (int i = 0; i < n_params; i++)
                        if (values[i]) {
                                dst->values[i] = strdup(values[i]);
                                if (!dst->values[i])
                                        return -ENOMEM;
                        }
        }
        return 0;
}

static PgQuery *query_free(PgQuery *q) {
        if (!q)
                return NULL;
        sd_event_source_disable_unref(q->timer);
        for (size_t i = 0; i < q->n_stmts; i++)
                stmt_done(&q->stmts[i]);
        free(q->stmts);
        PQclear(q->step_result);
        PQclear(q->last);
        PQclear(q->saved);
        return mfree(q);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(PgQuery *, query_free);

/* The end of every query that was not cancelled: the callback, then the memory. The
 * query is detached from queue and connection already. */
static void query_finish(PgQuery *q, PGresult *result, int error) {
        q->state = QUERY_DONE;
        if (!q->cancelled && q->callback)
                q->callback(q->pool, result, error, q->userdata);
        PQclear(result);
        query_free(q);
}

static void queue_remove(PgPool *p, PgQuery *q) {
        if (q->prev)
                q->prev->next = q->next;
        else
                p->queue_head = q->next;
        if (q->next)
                q->next->prev = q->prev;
        else
                p->queue_tail = q->prev;
        q->next = q->prev = NULL;
        p->n_queued--;
}

static void queue_append(PgPool *p, PgQuery *q) {
        q->prev = p->queue_tail;
        q->next = NULL;
        if (p->queue_tail)
                p->queue_tail->next = q;
        else
                p->queue_head = q;
        p->queue_tail = q;
        p->n_queued++;
        q->state = QUERY_QUEUED;
}

static void queue_prepend(PgPool *p, PgQuery *q) {
        q->next = p->queue_head;
        q->prev = NULL;
        if (p->queue_head)
                p->queue_head->prev = q;
        else
                p->queue_tail = q;
        p->queue_head = q;
        p->n_queued++;
        q->state = QUERY_QUEUED;
}

static void pool_schedule_dispatch(PgPool *p) {
        if (p->queue_head && p->dispatch)
                (void) sd_event_source_set_enabled(p->dispatch, SD_EVENT_ONESHOT);
}

static int result_errno(const PGresult *r) {
        if (!r)
                return -EIO;
        switch (PQresultStatus(r)) {
        case PGRES_COMMAND_OK:
        case PGRES_TUPLES_OK:
                return 0;
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
                return -EBADMSG;
        case PGRES_EMPTY_QUERY:
                return -EINVAL;
        default:
                return -EIO;
        }
}

static void drain_notifies(PGconn *c) {
        PGnotify *n;
        while ((n = PQnotifies(c)))
                PQfreemem(n);
}

/* ---- connections ---- */

static void conn_prepared_forget(PgConn *c) {
        for (unsigned i = 0; i < c->n_prepared; i++)
                free(c->prepared[i].sql);
        c->n_prepared = 0;
}

/* Index of the statement among those prepared in this session, or -ENOENT. */
static int conn_prepared_find(const PgConn *c, const PgStmt *s) {
        for (unsigned i = 0; i < c->n_prepared; i++)
                if (c->prepared[i].hash == s->hash && streq(c->prepared[i].sql, s->sql))
                        return (int) i;
        return -ENOENT;
}

static void prepared_name(unsigned i, char buf[static 16]) {
        (void) snprintf(buf, 16, "dtask_%u", i);
}

static bool conn_is_idle(const PgConn *c) {
        return pg_link_is_up(&c->link) && !c->query && !c->setup;
}

static int conn_flush(PgConn *c) {
        int r = PQflush(c->link.conn);
        if (r < 0)
                return -ECONNRESET;
        c->flushing = r > 0;
        return pg_link_watch(&c->link, c->flushing ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

/* Sends the current step of c->query. Errors: -ECONNRESET when the connection is bad
 * (the step did not run), others when libpq refused the command. */
static int conn_send(PgConn *c) {
        PGconn *pc = c->link.conn;
        PgQuery *q = c->query;
        int ok;

        switch (q->phase) {
        case PHASE_BEGIN:
                ok = PQsendQuery(pc, "BEGIN");
                break;
        case PHASE_COMMIT:
                ok = PQsendQuery(pc, "COMMIT");
                break;
        case PHASE_ROLLBACK:
                ok = PQsendQuery(pc, "ROLLBACK");
                break;
        case PHASE_STATEMENT: {
                const PgStmt *s = &q->stmts[q->step];
                char name[16];
                bool unnamed = q->unnamed || q->retried;
                int i = unnamed ? -ENOENT : conn_prepared_find(c, s);

                q->preparing = q->prepared = false;
                if (i >= 0) {
                        prepared_name(i, name);
                        ok = PQsendQueryPrepared(pc, name, s->n_params, (const char *const *) s->values, NULL, NULL,
                                                 /* resultFormat= */ 0);
                        q->prepared = true;
                } else if (!unnamed && c->n_prepared < PG_CONN_PREPARED_MAX) {
                        prepared_name(c->n_prepared, name);
                        ok = PQsendPrepare(pc, name, s->sql, s->n_params, NULL);
                        q->preparing = true;
                } else
                        ok = PQsendQueryParams(pc, s->sql, s->n_params, NULL, (const char *const *) s->values, NULL,
                                               NULL, /* resultFormat= */ 0);
                break;
        }
        default:
                return -EINVAL;
        }
        if (!ok) {
                log_debug("%s: sending failed: %s", c->description, PQerrorMessage(pc));
                return PQstatus(pc) == CONNECTION_BAD ? -ECONNRESET : -EIO;
        }
        return conn_flush(c);
}

/* The connection cannot be used any more: fail its query, reconnect with backoff. */
static void conn_abort(PgConn *c, int error, const char *why) {
        PgQuery *q = TAKE_PTR(c->query);

        c->setup = c->flushing = false;
        pg_link_fail(&c->link, why);
        if (q) {
                q->conn = NULL;
                query_finish(q, NULL, error); /* last */
        }
}

static void conn_query_done(PgConn *c, PGresult *result, int error) {
        PgQuery *q = TAKE_PTR(c->query);
        PgPool *p = c->pool;

        q->conn = NULL;
        if (PQtransactionStatus(c->link.conn) != PQTRANS_IDLE) {
                /* A statement left a transaction open (e.g. a plain "BEGIN"): the next
                 * user of this connection must not inherit it. Start a new session. */
                log_debug("%s: session not idle after a query, reconnecting", c->description);
                c->flushing = false;
                pg_link_start(&c->link);
        } else
                pool_schedule_dispatch(p);

        query_finish(q, result, error); /* last */
}

static void conn_send_or_abort(PgConn *c) {
        int r = conn_send(c);
        if (r < 0)
                conn_abort(c, r == -ECONNRESET ? -ECONNRESET : -EIO, "send");
}

/* A prepared statement went stale (see the top of this file): start a fresh session
 * and put the query back at the front of the queue, to run once more unprepared. */
static bool conn_retry_stale(PgConn *c, const PGresult *res, int err) {
        PgQuery *q = c->query;

        if (err != -EBADMSG || !q->prepared || q->retried ||
            !streq_ptr(pg_result_sqlstate(res), PG_SQLSTATE_FEATURE_NOT_SUPPORTED))
                return false;

        log_debug("%s: prepared statement went stale (%s), running the query again on a new session",
                  c->description, PQresultErrorMessage(res));
        c->query = NULL;
        c->flushing = false;
        q->conn = NULL;
        q->retried = true;
        PQclear(TAKE_PTR(q->last));
        pg_link_start(&c->link);
        queue_prepend(c->pool, q);
        pool_schedule_dispatch(c->pool);
        return true;
}

/* PQgetResult() returned NULL: the step in progress is complete. */
static void conn_step_done(PgConn *c) {
        PgQuery *q = c->query;
        PGresult *res = TAKE_PTR(q->step_result);
        int err = result_errno(res);

        switch (q->phase) {
        case PHASE_STATEMENT:
                if (q->preparing && err >= 0) {
                        /* Prepared; now run it. Should the name not be remembered, the
                         * statement runs unnamed rather than being prepared twice. */
                        PgPrepared *pp = &c->prepared[c->n_prepared];

                        PQclear(res);
                        pp->sql = strdup(q->stmts[q->step].sql);
                        if (pp->sql) {
                                pp->hash = q->stmts[q->step].hash;
                                c->n_prepared++;
                        } else
                                q->unnamed = true;
                        return conn_send_or_abort(c);
                }
                q->unnamed = false;
                if (conn_retry_stale(c, res, err)) {
                        PQclear(res);
                        return;
                }
                if (!q->transaction)
                        return conn_query_done(c, res, err);
                if (err < 0) {
                        q->saved = res;
                        q->saved_error = err;
                        q->phase = PHASE_ROLLBACK;
                        return conn_send_or_abort(c);
                }
                PQclear(q->last);
                q->last = res;
                if (++q->step >= q->n_stmts)
                        q->phase = PHASE_COMMIT;
                return conn_send_or_abort(c);

        case PHASE_BEGIN:
                if (err < 0) {
                        q->saved = res;
                        q->saved_error = err;
                        q->phase = PHASE_ROLLBACK;
                        return conn_send_or_abort(c);
                }
                PQclear(res);
                q->phase = PHASE_STATEMENT;
                q->step = 0;
                return conn_send_or_abort(c);

        case PHASE_COMMIT:
                if (err < 0) {
                        /* The server has rolled back already. */
                        PQclear(TAKE_PTR(q->last));
                        return conn_query_done(c, res, err);
                }
                PQclear(res);
                return conn_query_done(c, TAKE_PTR(q->last), 0);

        case PHASE_ROLLBACK:
                if (err < 0)
                        log_debug("%s: ROLLBACK failed: %s", c->description, PQresultErrorMessage(res));
                PQclear(res);
                return conn_query_done(c, TAKE_PTR(q->saved), q->saved_error);
        }
}

static void conn_on_io(PgLink *l, uint32_t revents, void *userdata) {
        PgConn *c = userdata;
        PGconn *pc = l->conn;

        if (c->flushing) {
                int r = conn_flush(c);
                if (r < 0)
                        return conn_abort(c, -ECONNRESET, "flush");
        }

        if (!PQconsumeInput(pc) || PQstatus(pc) == CONNECTION_BAD)
                return conn_abort(c, -ECONNRESET, "read");
        drain_notifies(pc);

        if (!c->query && !c->setup)
                return; /* idle: notices, parameter status; EOF is caught above */

        for (;;) {
                PGresult *res;
                ExecStatusType st;

                if (PQisBusy(pc))
                        return; /* more to come */

                res = PQgetResult(pc);
                if (!res)
                        break;

                st = PQresultStatus(res);
                if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
                        /* COPY is not supported through the pool; the session is stuck in it. */
                        PQclear(res);
                        return conn_abort(c, -EIO, "COPY");
                }

                if (c->setup) {
                        if (st != PGRES_COMMAND_OK)
                                log_debug("%s: session setup failed, ignoring: %s", c->description,
                                          PQresultErrorMessage(res));
                        PQclear(res);
                        continue;
                }

                PgQuery *q = c->query;
                if (!q->step_result)
                        q->step_result = res;
                else if (PQresultStatus(q->step_result) != PGRES_FATAL_ERROR && st == PGRES_FATAL_ERROR) {
                        PQclear(q->step_result);
                        q->step_result = res;
                } else
                        PQclear(res);
        }

        if (PQstatus(pc) == CONNECTION_BAD)
                return conn_abort(c, -ECONNRESET, "lost");

        if (c->setup) {
                c->setup = false;
                return pool_schedule_dispatch(c->pool);
        }

        conn_step_done(c);
}

static void conn_on_up(PgLink *l, void *userdata) {
        PgConn *c = userdata;
        int r;

        c->flushing = false;
        c->setup = true;
        conn_prepared_forget(c);
        if (!PQsendQuery(l->conn, PG_SESSION_SETUP_SQL))
                return conn_abort(c, -ECONNRESET, "setup");
        r = conn_flush(c);
        if (r < 0)
                return conn_abort(c, -ECONNRESET, "setup");
}

/* Before sending on a connection that was idle: pick up an EOF or error the server sent
 * meanwhile (e.g. it restarted), so that we do not send into a dead session. The first
 * read may only return the server's last message, the second sees the EOF. */
static bool conn_preflight(PgConn *c) {
        for (unsigned i = 0; i < 2; i++)
                if (!PQconsumeInput(c->link.conn) || PQstatus(c->link.conn) == CONNECTION_BAD)
                        return false;
        drain_notifies(c->link.conn);
        return true;
}

static void conn_open(PgConn *c) {
        c->started = true;
        pg_link_start(&c->link);
}

/* Connections are opened when needed: one at first, another whenever queries wait while
 * the server is reachable and no new session is on its way already, up to the size. */
static void pool_grow(PgPool *p) {
        PgConn *next = NULL;

        if (!p->queue_head || !pg_pool_is_connected(p))
                return;
        for (unsigned i = 0; i < p->size; i++) {
                PgConn *c = &p->conns[i];

                if (c->started && (c->link.state == PG_LINK_CONNECTING || c->setup))
                        return;
                if (!c->started && !next)
                        next = c;
        }
        if (next)
                conn_open(next);
}

/* Binds q to the idle session c and sends its first step. On failure q is unbound again,
 * for the caller to deal with (see conn_send() for the errors). */
static int conn_start(PgConn *c, PgQuery *q) {
        int r;

        q->state = QUERY_RUNNING;
        q->conn = c;
        q->phase = q->transaction ? PHASE_BEGIN : PHASE_STATEMENT;
        q->step = 0;
        c->query = q;

        r = conn_send(c);
        if (r < 0) {
                c->query = NULL;
                q->conn = NULL;
                c->flushing = false;
        }
        return r;
}

static int pool_dispatch(sd_event_source *s, void *userdata) {
        PgPool *p = userdata;

        for (unsigned i = 0; i < p->size && p->queue_head; i++) {
                PgConn *c = &p->conns[i];
                PgQuery *q;
                int r;

                if (!conn_is_idle(c))
                        continue;

                if (!conn_preflight(c)) {
                        pg_link_fail(&c->link, "lost while idle");
                        continue;
                }

                q = p->queue_head;
                queue_remove(p, q);
                r = conn_start(c, q);
                if (r >= 0)
                        continue;

                if (r == -ECONNRESET) {
                        /* Nothing ran: the query goes back to the front of the queue. */
                        queue_prepend(p, q);
                        pg_link_fail(&c->link, "send");
                        continue;
                }

                /* libpq refused the statement itself. Start a clean session for this
                 * connection, come back for the rest of the queue, report. */
                pg_link_start(&c->link);
                (void) sd_event_source_set_enabled(p->dispatch, SD_EVENT_ONESHOT);
                query_finish(q, NULL, r); /* last */
                return 0;
        }

        pool_grow(p);
        return 0;
}

static int query_timer_handler(sd_event_source *s, uint64_t usec, void *userdata) {
        PgQuery *q = userdata;
        PgPool *p = q->pool;

        if (q->state == QUERY_QUEUED) {
                queue_remove(p, q);
                query_finish(q, NULL, pg_pool_is_connected(p) ? -ETIMEDOUT : -ENOTCONN); /* last */
        } else if (q->state == QUERY_RUNNING) {
                PgConn *c = TAKE_PTR(q->conn);

                /* PQcancel() blocks, so the session is dropped instead (the server stops
                 * the statement when it notices, see PG_SESSION_SETUP_SQL) and replaced. */
                log_debug("%s: query ran past its deadline, reconnecting", c->description);
                c->query = NULL;
                c->flushing = false;
                pg_link_close(&c->link);
                pg_link_start(&c->link);
                query_finish(q, NULL, -ETIMEDOUT); /* last */
        }
        return 0;
}

static int pool_submit(PgPool *p, const PgStatement *statements, size_t n, bool transaction, uint64_t timeout_usec,
                       PgCallback callback, void *userdata, PgQuery **ret_query) {
        _cleanup_(query_freep) PgQuery *q = NULL;
        bool started = false;
        int r;

        if (p->closing)
                return -ESHUTDOWN;
        if (p->n_queued >= p->max_queued)
                return -EAGAIN;

        q = calloc(1, sizeof(PgQuery));
        if (!q)
                return -ENOMEM;
        *q = (PgQuery) {
                .pool = p,
                .transaction = transaction,
                .callback = callback,
                .userdata = userdata,
        };

        q->stmts = calloc(n, sizeof(PgStmt));
        if (!q->stmts)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                q->n_stmts++;
                r = stmt_copy(&q->stmts[i], statements[i].sql, statements[i].n_params, statements[i].values);
                if (r < 0)
                        return r;
        }

        if (timeout_usec == 0)
                timeout_usec = p->default_timeout_usec;
        if (timeout_usec != USEC_INFINITY) {
                uint64_t now;

                r = sd_event_now(p->event, CLOCK_MONOTONIC, &now);
                if (r < 0)
                        return r;
                r = sd_event_add_time(p->event, &q->timer, CLOCK_MONOTONIC,
                                      timeout_usec >= USEC_INFINITY - now ? USEC_INFINITY - 1 : now + timeout_usec,
                                      USEC_PER_MSEC, query_timer_handler, q);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(q->timer, "pg-query-deadline");
        }

        /* Nothing queued and a session idle: the statement goes out now, not after a round of
         * the event loop and whatever else the loop has pending. No callback runs from here:
         * a session that fails its check or the send leaves the query to pool_dispatch(),
         * which deals with both. */
        for (unsigned i = 0; i < p->size && !p->queue_head; i++)
                if (conn_is_idle(&p->conns[i])) {
                        started = conn_preflight(&p->conns[i]) && conn_start(&p->conns[i], q) >= 0;
                        break;
                }
        if (!started) {
                queue_append(p, q);
                pool_schedule_dispatch(p);
        }

        if (ret_query)
                *ret_query = q;
        TAKE_PTR(q);
        return 0;
}

static bool statement_valid(const char *sql, int n_params, const char *const *values) {
        return sql && n_params >= 0 && n_params <= 65535 && (n_params == 0 || values);
}

int pg_pool_query(PgPool *p, const char *sql, int n_params, const char *const *values, uint64_t timeout_usec,
                  PgCallback callback, void *userdata, PgQuery **ret_query) {
        assert_return(p, -EINVAL);
        assert_return(statement_valid(sql, n_params, values), -EINVAL);

        const PgStatement s = { .sql = sql, .n_params = n_params, .values = values };
        return pool_submit(p, &s, 1, false, timeout_usec, callback, userdata, ret_query);
}

int pg_pool_transaction(PgPool *p, const PgStatement *statements, size_t n_statements, uint64_t timeout_usec,
                        PgCallback callback, void *userdata, PgQuery **ret_query) {
        assert_return(p, -EINVAL);
        assert_return(statements, -EINVAL);
        assert_return(n_statements > 0 && n_statements <= 1024, -EINVAL);
        for (size_t i = 0; i < n_statements; i++)
                assert_return(statement_valid(statements[i].sql, statements[i].n_params, statements[i].values),
                              -EINVAL);

        return pool_submit(p, statements, n_statements, true, timeout_usec, callback, userdata, ret_query);
}

void pg_query_cancel(PgQuery *q) {
        if (!q)
                return;

        switch (q->state) {
        case QUERY_QUEUED:
                queue_remove(q->pool, q);
                query_free(q);
                break;
        case QUERY_RUNNING:
                /* It finishes (or times out) on its connection, silently. */
                q->cancelled = true;
                break;
        case QUERY_DONE:
                q->cancelled = true;
                break;
        }
}

bool pg_pool_is_connected(PgPool *p) {
        if (!p)
                return false;
        for (unsigned i = 0; i < p->size; i++)
                if (pg_link_is_up(&p->conns[i].link))
                        return true;
        return false;
}

int pg_pool_new(PgPool **ret, sd_event *event, const char *conninfo, const PgPoolSettings *settings) {
        _cleanup_(pg_pool_freep) PgPool *p = NULL;
        uint64_t connect_timeout;
        int r;

        assert_return(ret, -EINVAL);
        assert_return(conninfo, -EINVAL);
        assert_return(!settings || settings->size <= PG_POOL_SIZE_MAX, -EINVAL);

        p = calloc(1, sizeof(PgPool));
        if (!p)
                return -ENOMEM;

        p->size = settings && settings->size > 0 ? settings->size : PG_POOL_SIZE_DEFAULT;
        p->default_timeout_usec = settings && settings->default_timeout_usec > 0 ? settings->default_timeout_usec
                                                                                 : PG_POOL_TIMEOUT_DEFAULT_USEC;
        p->max_queued = settings && settings->max_queued > 0 ? settings->max_queued : PG_POOL_MAX_QUEUED_DEFAULT;

        if (event)
                p->event = sd_event_ref(event);
        else {
                r = sd_event_default(&p->event);
                if (r < 0)
                        return r;
        }

        r = pg_conninfo_normalize(conninfo, &p->conninfo);
        if (r < 0)
                return r;
        r = pg_conninfo_redact(p->conninfo, &p->redacted);
        if (r < 0)
                return r;
        r = pg_conninfo_connect_timeout(p->conninfo, &connect_timeout);
        if (r < 0)
                return r;

        r = sd_event_add_defer(p->event, &p->dispatch, pool_dispatch, p);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(p->dispatch, SD_EVENT_OFF);
        (void) sd_event_source_set_description(p->dispatch, "pg-pool-dispatch");

        p->conns = calloc(p->size, sizeof(PgConn));
        if (!p->conns)
                return -ENOMEM;
        for (unsigned i = 0; i < p->size; i++) {
                PgConn *c = &p->conns[i];

                c->pool = p;
                snprintf(c->description, sizeof c->description, "pg-pool-%u", i);
                pg_link_init(&c->link, p->event, p->conninfo, p->redacted, connect_timeout, c->description,
                             conn_on_up, conn_on_io, c);
        }

        log_debug("PostgreSQL pool for %s: up to %u connections", p->redacted, p->size);
        conn_open(&p->conns[0]);

        *ret = TAKE_PTR(p);
        return 0;
}

PgPool *pg_pool_free(PgPool *p) {
        PgQuery *q;

        if (!p)
                return NULL;

        /* Callbacks run from here get -ECANCELED; pg_pool_query() refuses new work. */
        p->closing = true;
        p->dispatch = sd_event_source_disable_unref(p->dispatch);

        while ((q = p->queue_head)) {
                queue_remove(p, q);
                query_finish(q, NULL, -ECANCELED);
        }

        if (p->conns)
                for (unsigned i = 0; i < p->size; i++) {
                        PgConn *c = &p->conns[i];

                        q = TAKE_PTR(c->query);
                        pg_link_done(&c->link);
                        conn_prepared_forget(c);
                        if (q) {
                                q->conn = NULL;
                                query_finish(q, NULL, -ECANCELED);
                        }
                }

        free(p->conns);
        erase_and_free(p->conninfo);
        free(p->redacted);
        sd_event_unref(p->event);
        return mfree(p);
}
