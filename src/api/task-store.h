/* SPDX-License-Identifier: MIT */
#pragma once

#include "pg.h"
#include "task-json.h"

/* The SQL of dtask-api: every statement on the tasks, task_attempts and idempotency_keys
 * tables, run asynchronously on the PgPool. Each state change is one statement (data-
 * modifying CTEs), so it is atomic without explicit transactions, and guarded by the
 * status it starts from (and for workers the attempt), so concurrent API instances,
 * workers and the reaper cannot overwrite each other.
 *
 * owner: the tenant filter, a key id; NULL for callers with tasks:admin (all tasks).
 *
 * Results of the single-task operations (TaskStoreCallback):
 *   error 0, applied true:   the operation happened; task is the row afterwards
 *   error 0, applied false:  the task exists (visible to owner) but is not in a state
 *                            that allows the operation; task is its current row
 *   -ENOENT:                 no such task (or owned by somebody else)
 *   other negative errno:    database failure (see pg.h)
 * task is borrowed: it is freed after the callback returns (steal it with TAKE_PTR to keep it). */

typedef struct TaskStore TaskStore;

typedef void (*TaskStoreCallback)(int error, Task **task, bool applied, void *userdata);
typedef void (*TaskStoreListCallback)(int error, Task **tasks, size_t n_tasks, void *userdata);
typedef struct TaskStats {
        uint64_t counts[_TASK_STATUS_MAX]; /* tasks per status */
        uint64_t unpublished;              /* Pending tasks whose message the broker has not confirmed */
        usec_t oldest_pending_age;         /* queue lag: age of the oldest Pending task, 0 when none */
} TaskStats;
typedef void (*TaskStoreStatsCallback)(int error, const TaskStats *stats, void *userdata);

/* cache (may be NULL): forgets each task that a statement here changes (or may have changed). */
typedef struct TaskCache TaskCache;
int task_store_new(TaskStore **ret, PgPool *pool, uint64_t timeout_usec, TaskCache *cache);
TaskStore *task_store_free(TaskStore *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(TaskStore *, task_store_free);

/* Creates a task with a new random id. With idempotency_key (and its request hash):
 * an existing task created by the same owner with the same key within retention is
 * returned instead (applied false); when its request hash differs, error is -EILSEQ.
 *
 * Without idempotency_key, creates are written in batches: a create goes to the database at
 * once while fewer than two such statements are in flight; else it waits, and when one of
 * them ends, the waiting creates go together, up to 64 (and 1 MiB of name, code and input)
 * in one statement and one commit. Under load the database then commits a few dozen tasks
 * at a time instead of each on its own. Every task of a batch has the same createdAt (the
 * transaction's time). When the server refuses such a statement (a constraint or a trigger
 * refused one row), its creates are sent again one by one, so that only that one fails.
 * -EAGAIN when 1024 creates wait already. */
typedef struct TaskInsert {
        const TaskCreate *create;
        const char *owner_id;
        unsigned max_attempts;
        const char *idempotency_key;     /* NULL: none */
        const uint8_t *request_hash;     /* 32 bytes, with idempotency_key */
        usec_t idempotency_retention;
} TaskInsert;
int task_store_insert(TaskStore *s, const TaskInsert *insert, TaskStoreCallback cb, void *userdata);
/* Creates waiting for a statement now (for /metrics). */
size_t task_store_creates_waiting(const TaskStore *s);

int task_store_get(TaskStore *s, const char *id, const char *owner, TaskStoreCallback cb, void *userdata);

/* Oldest first. after: a cursor from task_store_cursor() or NULL; status < 0: any. */
int task_store_list(TaskStore *s, const char *owner, TaskStatus status, const char *after, unsigned limit,
                    TaskStoreListCallback cb, void *userdata);
/* The position after t, for ?after=: "<created_at µs>-<id>". */
char *task_store_cursor(const Task *t);
/* Validates a cursor (-EINVAL when malformed). */
int task_store_cursor_parse(const char *cursor, usec_t *ret_created_at, char ret_id[static UUID_STRING_MAX]);

/* Overwrites the fields given. Changing code/language/inputData/ttl is refused (applied
 * false) while the task is InProgress; name and execution fields may change any time.
 * A new ttl moves expiresAt by the difference. A status set to Pending puts the task's
 * message in the outbox: the caller dispatches it (again). */
int task_store_patch(TaskStore *s, const char *id, const char *owner, const TaskPatch *patch, TaskStoreCallback cb,
                     void *userdata);

/* From Completed/Failed/Expired/Cancelled back to Pending: execution fields cleared,
 * retry_count+1, attempt 0, expires_at = now + ttl, its message in the outbox. */
int task_store_retry(TaskStore *s, const char *id, const char *owner, TaskStoreCallback cb, void *userdata);

/* Pending/InProgress → Cancelled (verdict cancelled, completed now); a running attempt gets its
 * row in the attempt history. */
int task_store_cancel(TaskStore *s, const char *id, const char *owner, TaskStoreCallback cb, void *userdata);

/* Worker protocol; not tenant-scoped (workers run everybody's tasks).
 * claim: Pending and not expired → InProgress, attempt+1, lease = now + lease, worker and
 * started_at set. The attempt history (task_attempts) gets the attempt's row when it ends, from
 * these. A Pending task found past its expiresAt is marked Expired on the way (applied false). */
int task_store_claim(TaskStore *s, const char *id, const char *worker, usec_t lease, TaskStoreCallback cb,
                     void *userdata);
/* Extends the lease of InProgress attempt `attempt`. */
int task_store_heartbeat(TaskStore *s, const char *id, unsigned attempt, usec_t lease, TaskStoreCallback cb,
                         void *userdata);
/* Final result of InProgress attempt c->attempt (fenced); writes the attempt's history row. */
int task_store_complete(TaskStore *s, const char *id, const TaskCompletion *c, TaskStoreCallback cb, void *userdata);

/* A worker gives InProgress attempt `attempt` back without a result (it is stopping): Pending
 * again, lease and worker cleared, its message in the outbox (the caller publishes it, else
 * the reaper does); the attempt's history row has verdict 'released'. The attempt stays counted. */
int task_store_release(TaskStore *s, const char *id, unsigned attempt, TaskStoreCallback cb, void *userdata);

/* Records that the broker confirmed the message of run retry_count: its row leaves the
 * outbox. The marks are batched: while one DELETE is in flight, the next ones gather (up to 256) and are
 * recorded together when it completes, so a busy dtask-api does not commit once per
 * task for this. A mark that fails to be recorded is logged; the reaper publishes that
 * task again (workers ignore the duplicate message: claims are fenced). */
int task_store_mark_published(TaskStore *s, const char *id, unsigned retry_count);

/* Number of tasks per status, and the dispatch backlog. live_only: only Pending and
 * InProgress are counted (the other counts are 0), through the index of live tasks, so
 * that the cost does not grow with the history of finished tasks. */
int task_store_stats(TaskStore *s, bool live_only, TaskStoreStatsCallback cb, void *userdata);

/* A count of every status scans the whole history: seconds for millions of tasks. Callers
 * that repeat it (the D-Bus properties, /metrics) wait at least this long after one that
 * took `took`: 10 s, and 100 times as long as it took (at most 1 % of the time). */
#define TASK_STATS_FULL_INTERVAL_USEC (10 * USEC_PER_SEC)
#define TASK_STATS_FULL_SHARE 100U
static inline usec_t task_stats_full_interval(usec_t took) {
        return MAX(TASK_STATS_FULL_INTERVAL_USEC, TASK_STATS_FULL_SHARE * took);
}
