/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <stdio.h>

#include "amqp.h"
#include "log.h"
#include "pg.h"
#include "reaper.h"
#include "task-sql.h"

/* Rows handled per step and pass: a backlog is worked off over several passes. */
#define REAPER_BATCH "1000"
/* A Pending task whose publish was not confirmed is tried again after this long. */
#define REAPER_PUBLISH_GRACE_USEC (5 * USEC_PER_SEC)
/* How long a pass waits for the broker connection and for confirms. */
#define REAPER_BROKER_WAIT_USEC (3 * USEC_PER_SEC)
#define REAPER_CONFIRM_TIMEOUT_USEC (10 * USEC_PER_SEC)

/* 1. Overdue tasks become Expired; running ones get their attempt's history row. */
static const char sql_expire[] =
        "WITH overdue AS ("
        "  SELECT id, status AS old_status FROM tasks"
        "  WHERE " LIVE_STATUS " AND expires_at <= now()"
        "  ORDER BY expires_at LIMIT " REAPER_BATCH " FOR UPDATE SKIP LOCKED),"
        " expired AS ("
        "  UPDATE tasks t SET status = 4, completed_at = now(), updated_at = now(),"
        "    error_message = 'Task expired due to TTL', exit_code = NULL, lease_expires_at = NULL,"
        /* A run that was cut short has verdict timeout, as when the worker's own timer
         * fires first; a task that never started has none. */
        "    verdict = CASE WHEN overdue.old_status = 1 THEN 'timeout' END"
        "  FROM overdue WHERE t.id = overdue.id"
        "  RETURNING t.id, overdue.old_status, t.attempt, t.retry_count, t.worker, t.started_at),"
        " " ATTEMPT_END("history", "expired", "worker, COALESCE(started_at, now()), now(), 4, NULL, NULL",
                         "old_status = 1")
        " SELECT id, old_status FROM expired";

/* 2. Lapsed leases: back to Pending while attempts remain, else Failed/worker_lost. */
static const char sql_rescue[] =
        "WITH lapsed AS ("
        "  SELECT id, worker AS old_worker, started_at AS old_started FROM tasks"
        "  WHERE status = 1 AND lease_expires_at < now() AND expires_at > now()"
        "  ORDER BY lease_expires_at LIMIT " REAPER_BATCH " FOR UPDATE SKIP LOCKED),"
        " rescued AS ("
        "  UPDATE tasks t SET"
        "    status = CASE WHEN t.attempt < t.max_attempts THEN 0 ELSE 3 END,"
        "    verdict = CASE WHEN t.attempt < t.max_attempts THEN NULL ELSE 'worker_lost' END,"
        "    error_message = CASE WHEN t.attempt < t.max_attempts THEN NULL"
        "      ELSE 'Worker lost: no worker finished the task in ' || t.attempt || ' attempts' END,"
        "    completed_at = CASE WHEN t.attempt < t.max_attempts THEN NULL ELSE now() END,"
        "    started_at = CASE WHEN t.attempt < t.max_attempts THEN NULL ELSE t.started_at END,"
        "    published_at = CASE WHEN t.attempt < t.max_attempts THEN NULL ELSE t.published_at END,"
        "    lease_expires_at = NULL, worker = NULL, updated_at = now()"
        "  FROM lapsed WHERE t.id = lapsed.id"
        "  RETURNING t.id, t.status, t.attempt, t.retry_count, lapsed.old_worker, lapsed.old_started),"
        /* this pass publishes them: attempted now, so other reapers leave them alone */
        " " OUTBOX_ADD("rescued", "status = 0", "now()") ","
        " " ATTEMPT_END("history", "rescued",
                         "old_worker, COALESCE(old_started, now()), now(), NULL, 'worker_lost', NULL", "true")
        " SELECT id, status FROM rescued";

/* 3. Pending tasks to publish again: those in the outbox (sql/0004) whose publish was not
 * confirmed within the grace period ($1), and those that became Pending long ago ($2),
 * were published and never claimed. Taking them stamps the outbox row's attempted_at or
 * the task's published_at, so that concurrent reapers do not pick the same ones for a
 * while. Outbox rows of tasks that are no longer Pending in that run (dtask-api stopped
 * between a publish and its confirm) are deleted. None of it costs more with a large backlog
 * waiting for a worker, whatever the statistics say (with statistics taken before a burst the
 * planner walked every live task for each part):
 *  - the outbox drives its parts, and each of its rows looks its task up by primary key in a
 *    subquery of its own: OUTBOX_TASK's OFFSET 0 keeps the planner from turning the EXISTS
 *    into a join that reads tasks first, ROW_STATUS from taking a partial index by status;
 *  - the never-claimed ones are read from the index range of the Pending tasks created before
 *    $2 (tasks_pending_created_idx): "status = 0" cannot use tasks_live_expiry_idx
 *    (LIVE_STATUS). */
#define OUTBOX_TASK(cond)                                                                     \
        "EXISTS (SELECT 1 FROM tasks t WHERE t.id = o.task_id AND t.retry_count = o.retry_count " \
        "AND t." ROW_STATUS " = 0" cond " OFFSET 0)"
static const char sql_take_unpublished[] =
        "WITH leftover AS ("
        "  DELETE FROM task_outbox o"
        "  WHERE o.created_at < now() - $1::bigint * interval '1 microsecond'"
        "    AND NOT " OUTBOX_TASK("") "),"
        " unpublished AS ("
        "  SELECT o.task_id AS id FROM task_outbox o"
        "  WHERE " OUTBOX_TASK(" AND t.expires_at > now()")
        "    AND o.created_at < now() - $1::bigint * interval '1 microsecond'"
        "    AND (o.attempted_at IS NULL OR o.attempted_at < now() - $1::bigint * interval '1 microsecond')"
        "  ORDER BY o.created_at LIMIT " REAPER_BATCH " FOR UPDATE OF o SKIP LOCKED),"
        " attempted AS ("
        "  UPDATE task_outbox o SET attempted_at = now() FROM unpublished u WHERE o.task_id = u.id),"
        " stale AS ("
        "  SELECT id FROM tasks t"
        "  WHERE status = 0 AND expires_at > now()"
        "    AND created_at < now() - $2::bigint * interval '1 microsecond'"
        "    AND updated_at < now() - $2::bigint * interval '1 microsecond'"
        "    AND (published_at IS NULL OR published_at < now() - $2::bigint * interval '1 microsecond')"
        "    AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.task_id = t.id)"
        "  ORDER BY created_at LIMIT " REAPER_BATCH " FOR UPDATE SKIP LOCKED),"
        " stamped AS ("
        "  UPDATE tasks t SET published_at = now() FROM stale WHERE t.id = stale.id)"
        " SELECT id FROM unpublished UNION ALL SELECT id FROM stale";

/* Confirmed: out of the outbox (a stale task has no row there). */
static const char sql_mark_published[] =
        "DELETE FROM task_outbox WHERE task_id = ANY($1::uuid[])";

/* 4. Retention. */
static const char sql_purge_tasks[] =
        "WITH old AS ("
        "  SELECT id FROM tasks WHERE status >= 2 AND completed_at < now() - $1::bigint * interval '1 microsecond'"
        "  LIMIT 10000 FOR UPDATE SKIP LOCKED)"
        " DELETE FROM tasks t USING old WHERE t.id = old.id";
static const char sql_purge_idempotency[] =
        "DELETE FROM idempotency_keys WHERE created_at < now() - $1::bigint * interval '1 microsecond'";

typedef enum ReaperStep {
        STEP_IDLE,
        STEP_EXPIRE,
        STEP_RESCUE,
        STEP_TAKE,
        STEP_PUBLISH,
        STEP_MARK,
        STEP_PURGE_TASKS,
        STEP_PURGE_IDEMPOTENCY,
} ReaperStep;

struct Reaper {
        sd_event *event;
        PgPool *pool;
        AmqpPublisher *publisher;
        sd_event_source *broker_timer;

        usec_t retention;
        usec_t idempotency_retention;
        usec_t republish_after;
        uint64_t query_timeout;

        ReaperStep step;
        ReaperStats stats;
        ReaperDoneCallback done;
        void *userdata;

        char **to_publish;      /* task ids to publish in this pass */
        size_t n_to_publish;
        char **expired_running; /* tasks that were running when they expired: tell the workers */
        size_t n_expired_running;
        char **confirmed;
        size_t n_confirmed;
        size_t n_outstanding;   /* publishes and events without their confirm yet */
};

static void strv_reset(char ***l, size_t *n) {
        for (size_t i = 0; i < *n; i++)
                free((*l)[i]);
        *l = mfree(*l);
        *n = 0;
}

static int strv_push_copy(char ***l, size_t *n, const char *s) {
        char **m = reallocarray(*l, *n + 2, sizeof(char *));

        if (!m)
                return -ENOMEM;
        *l = m;
        m[*n] = strdup(s);
        if (!m[*n])
                return -ENOMEM;
        m[++*n] = NULL;
        return 0;
}

static void reaper_finish(Reaper *r, int error) {
        ReaperDoneCallback done = r->done;

        r->step = STEP_IDLE;
        r->broker_timer = sd_event_source_disable_unref(r->broker_timer);
        strv_reset(&r->to_publish, &r->n_to_publish);
        strv_reset(&r->expired_running, &r->n_expired_running);
        strv_reset(&r->confirmed, &r->n_confirmed);
        if (done)
                done(r, error, &r->stats, r->userdata);
}

static void reaper_next(Reaper *r);

static void on_query_done(PgPool *pool, const PGresult *result, int error, void *userdata) {
        Reaper *r = userdata;
        int n, k;

        if (error < 0) {
                if (error == -EBADMSG && result)
                        log_debug("Reaper step %d failed: %s", (int) r->step, PQresultErrorMessage(result));
                return reaper_finish(r, error);
        }

        n = PQntuples(result);
        switch (r->step) {
        case STEP_EXPIRE:
                r->stats.expired += (unsigned) n;
                for (int i = 0; i < n; i++) {
                        const char *id = PQgetvalue(result, i, 0);

                        log_info("Task %s expired (it was %s).", id,
                                 streq(PQgetvalue(result, i, 1), "1") ? "running" : "queued");
                        if (streq(PQgetvalue(result, i, 1), "1") &&
                            strv_push_copy(&r->expired_running, &r->n_expired_running, id) < 0)
                                return reaper_finish(r, log_oom());
                }
                break;

        case STEP_RESCUE:
                for (int i = 0; i < n; i++) {
                        const char *id = PQgetvalue(result, i, 0);

                        if (streq(PQgetvalue(result, i, 1), "0")) {
                                r->stats.rescued++;
                                log_notice("Task %s: worker lease lapsed, queued again.", id);
                                if (strv_push_copy(&r->to_publish, &r->n_to_publish, id) < 0)
                                        return reaper_finish(r, log_oom());
                        } else {
                                r->stats.lost++;
                                log_warning("Task %s: worker lease lapsed and no attempts are left, failed.", id);
                        }
                }
                break;

        case STEP_TAKE:
                for (int i = 0; i < n; i++)
                        if (strv_push_copy(&r->to_publish, &r->n_to_publish, PQgetvalue(result, i, 0)) < 0)
                                return reaper_finish(r, log_oom());
                break;

        case STEP_MARK:
                break;

        case STEP_PURGE_TASKS:
                k = atoi(PQcmdTuples((PGresult *) result));
                r->stats.purged += (unsigned) MAX(k, 0);
                break;

        default:
                break;
        }
        reaper_next(r);
}

static void reaper_query(Reaper *r, const char *sql, int n_params, const char *const *values) {
        int k = pg_pool_query(r->pool, sql, n_params, values, r->query_timeout, on_query_done, r, NULL);
        if (k < 0)
                reaper_finish(r, k);
}

typedef struct Confirm {
        Reaper *reaper;
        char *task_id; /* NULL for events */
} Confirm;

static Confirm *new0_confirm(Reaper *r, const char *task_id) {
        Confirm *c = calloc(1, sizeof(Confirm));

        if (!c)
                return NULL;
        c->reaper = r;
        if (task_id) {
                c->task_id = strdup(task_id);
                if (!c->task_id)
                        return mfree(c);
        }
        return c;
}

static void on_confirm(AmqpPublisher *p, int error, void *userdata) {
        _cleanup_free_ Confirm *c = userdata;
        _cleanup_free_ char *id = TAKE_PTR(c->task_id);
        Reaper *r = c->reaper;

        assert(r->n_outstanding > 0);
        r->n_outstanding--;

        if (id) {
                if (error < 0) {
                        r->stats.publish_failed++;
                        log_debug_errno(error, "No broker confirm for task %s: %m", id);
                } else {
                        r->stats.republished++;
                        if (strv_push_copy(&r->confirmed, &r->n_confirmed, id) < 0)
                                return reaper_finish(r, log_oom());
                }
        } else if (error < 0)
                log_debug_errno(error, "No broker confirm for an expiry event: %m");

        /* Freeing the publisher fails outstanding confirms: the pass is over then. */
        if (r->n_outstanding == 0 && error != -ECANCELED)
                reaper_next(r);
}

static void publish_all(Reaper *r) {
        _cleanup_free_ char *body = NULL;

        for (size_t i = 0; i < r->n_to_publish; i++) {
                Confirm *c = new0_confirm(r, r->to_publish[i]);
                int k;

                if (!c)
                        return reaper_finish(r, log_oom());
                k = amqp_publisher_publish_task(r->publisher, r->to_publish[i], REAPER_CONFIRM_TIMEOUT_USEC,
                                                on_confirm, c);
                if (k < 0) {
                        free(c->task_id);
                        free(c);
                        r->stats.publish_failed++;
                        log_debug_errno(k, "Publishing task %s failed: %m", r->to_publish[i]);
                        continue;
                }
                r->n_outstanding++;
        }

        for (size_t i = 0; i < r->n_expired_running; i++) {
                Confirm *c;
                int k;

                body = mfree(body);
                if (amqp_event_body_build("expired", r->expired_running[i], &body) < 0)
                        return reaper_finish(r, log_oom());
                c = new0_confirm(r, NULL);
                if (!c)
                        return reaper_finish(r, log_oom());
                k = amqp_events_publish(r->publisher, NULL, body, REAPER_CONFIRM_TIMEOUT_USEC, on_confirm, c);
                if (k < 0) {
                        free(c);
                        log_debug_errno(k, "Publishing the expiry of task %s failed: %m", r->expired_running[i]);
                        continue;
                }
                r->n_outstanding++;
        }

        if (r->n_outstanding == 0)
                reaper_next(r);
}

static int on_broker_wait_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Reaper *r = userdata;

        r->broker_timer = sd_event_source_disable_unref(r->broker_timer);
        log_warning("RabbitMQ is not reachable: %zu task(s) stay queued for publishing by a later pass.",
                    r->n_to_publish);
        r->stats.publish_failed += (unsigned) r->n_to_publish;
        strv_reset(&r->to_publish, &r->n_to_publish);
        reaper_next(r);
        return 0;
}

static void on_broker_state(bool connected, int error, void *userdata) {
        Reaper *r = userdata;

        if (connected && r->step == STEP_PUBLISH && r->broker_timer) {
                r->broker_timer = sd_event_source_disable_unref(r->broker_timer);
                publish_all(r);
        }
}

static void reaper_next(Reaper *r) {
        char a[32], b[32];
        int k;

        switch (r->step) {
        case STEP_IDLE:
                r->step = STEP_EXPIRE;
                return reaper_query(r, sql_expire, 0, NULL);

        case STEP_EXPIRE:
                r->step = STEP_RESCUE;
                return reaper_query(r, sql_rescue, 0, NULL);

        case STEP_RESCUE:
                r->step = STEP_TAKE;
                (void) snprintf(a, sizeof a, "%" PRIu64, (uint64_t) REAPER_PUBLISH_GRACE_USEC);
                (void) snprintf(b, sizeof b, "%" PRIu64, r->republish_after);
                return reaper_query(r, sql_take_unpublished, 2, (const char *const[]) { a, b });

        case STEP_TAKE:
                r->step = STEP_PUBLISH;
                if (r->n_to_publish == 0 && r->n_expired_running == 0)
                        return reaper_next(r);
                if (amqp_publisher_is_connected(r->publisher))
                        return publish_all(r);
                /* The publisher connects in the background: give it a moment. */
                k = sd_event_add_time_relative(r->event, &r->broker_timer, CLOCK_MONOTONIC,
                                               REAPER_BROKER_WAIT_USEC, 0, on_broker_wait_timeout, r);
                if (k < 0)
                        return reaper_finish(r, k);
                return;

        case STEP_PUBLISH: {
                _cleanup_free_ char *array = NULL;
                size_t len = 2;

                r->step = STEP_MARK;
                if (r->n_confirmed == 0)
                        return reaper_next(r);
                /* A PostgreSQL array literal of UUIDs, passed as one parameter. */
                array = malloc(r->n_confirmed * 37 + 3);
                if (!array)
                        return reaper_finish(r, log_oom());
                array[0] = '{';
                for (size_t i = 0; i < r->n_confirmed; i++) {
                        if (i > 0)
                                array[len - 1] = ',', len++;
                        memcpy(array + len - 1, r->confirmed[i], 36);
                        len += 36;
                }
                array[len - 1] = '}';
                array[len] = '\0';
                return reaper_query(r, sql_mark_published, 1, (const char *const[]) { array });
        }

        case STEP_MARK:
                r->step = STEP_PURGE_TASKS;
                if (r->retention == 0)
                        return reaper_next(r);
                (void) snprintf(a, sizeof a, "%" PRIu64, r->retention);
                return reaper_query(r, sql_purge_tasks, 1, (const char *const[]) { a });

        case STEP_PURGE_TASKS:
                r->step = STEP_PURGE_IDEMPOTENCY;
                (void) snprintf(a, sizeof a, "%" PRIu64, r->idempotency_retention);
                return reaper_query(r, sql_purge_idempotency, 1, (const char *const[]) { a });

        case STEP_PURGE_IDEMPOTENCY:
                return reaper_finish(r, 0);
        }
}

int reaper_run(Reaper *r, ReaperDoneCallback cb, void *userdata) {
        if (r->step != STEP_IDLE)
                return -EBUSY;
        r->stats = (ReaperStats) {};
        r->done = cb;
        r->userdata = userdata;
        reaper_next(r);
        return 0;
}

int reaper_new(Reaper **ret, sd_event *e, const Config *config) {
        _cleanup_(reaper_freep) Reaper *r = NULL;
        AmqpSettings amqp = {
                .url = config_string(config, "AMQP_URL"),
                .exchange = config_string(config, "AMQP_EXCHANGE"),
                .queue = config_string(config, "AMQP_QUEUE"),
                .routing_key = config_string(config, "AMQP_ROUTING_KEY"),
                .events_exchange = config_string(config, "AMQP_EVENTS_EXCHANGE"),
                .heartbeat_sec = (unsigned) (config_uint(config, "AMQP_HEARTBEAT") / USEC_PER_SEC),
        };
        PgPoolSettings pg = {
                .size = 1,
                .default_timeout_usec = config_uint(config, "DATABASE_TIMEOUT"),
        };
        int k;

        r = calloc(1, sizeof(Reaper));
        if (!r)
                return -ENOMEM;
        r->event = sd_event_ref(e);
        r->retention = config_uint(config, "RETENTION");
        r->idempotency_retention = config_uint(config, "IDEMPOTENCY_RETENTION");
        r->republish_after = config_uint(config, "REPUBLISH_AFTER");
        r->query_timeout = config_uint(config, "DATABASE_TIMEOUT");

        k = pg_pool_new(&r->pool, e, config_string(config, "DATABASE_URL"), &pg);
        if (k < 0)
                return k;
        k = amqp_publisher_new(&r->publisher, e, &amqp);
        if (k < 0)
                return k;
        amqp_publisher_set_state_callback(r->publisher, on_broker_state, r);

        *ret = TAKE_PTR(r);
        return 0;
}

Reaper *reaper_free(Reaper *r) {
        if (!r)
                return NULL;
        r->done = NULL;
        r->broker_timer = sd_event_source_disable_unref(r->broker_timer);
        r->publisher = amqp_publisher_free(r->publisher);
        r->pool = pg_pool_free(r->pool);
        strv_reset(&r->to_publish, &r->n_to_publish);
        strv_reset(&r->expired_running, &r->n_expired_running);
        strv_reset(&r->confirmed, &r->n_confirmed);
        sd_event_unref(r->event);
        return mfree(r);
}
