/* SPDX-License-Identifier: MIT */
#pragma once

/* SQL fragments that dtask-api and dtask-reaper both write into their statements on tasks. */

/* Statements that reach a task by its id test its status as an integer: the planner then
 * cannot prove the predicate of a partial index by status (tasks_live_expiry_idx,
 * tasks_lease_idx, ...) from them and looks the row up by primary key. Otherwise it picks
 * such an index whenever the statistics still count the live tasks as the few they were at
 * the last ANALYZE, as during any burst of work, and reads the whole backlog: each claim in
 * dtask-api, each pass of dtask-reaper over the outbox. */
#define ROW_STATUS "status::integer"

/* Statements over all live tasks (Pending and InProgress) spell the test as the predicate of
 * tasks_live_expiry_idx (sql/0006), and only they can use that index. A statement on the
 * Pending tasks alone ("status = 0") then reads tasks_pending_created_idx: with "status IN
 * (0, 1)" as the predicate it could read either, and with statistics taken when no task was
 * live the planner took the smaller, walking every live task. */
#define LIVE_STATUS "(status + 0) IN (0, 1)"

/* A CTE "ob" that records, for each row of the CTE `from` matching `where`, that the message of
 * the task's current run awaits the broker's confirm (task_outbox, sql/0004). `attempted_at`:
 * NULL, or now() when the caller publishes it at once itself (other reapers leave it alone). */
#define OUTBOX_ADD(from, where, attempted_at)                                                              \
        "ob AS (INSERT INTO task_outbox (task_id, retry_count, attempted_at) SELECT id, retry_count, "       \
        attempted_at " FROM " from " WHERE " where " ON CONFLICT (task_id) DO UPDATE SET "                   \
        "retry_count = excluded.retry_count, created_at = excluded.created_at, "                             \
        "attempted_at = excluded.attempted_at)"

/* A CTE `name` that writes the attempt history (task_attempts) when an attempt ends. The running
 * attempt is the task's own attempt, worker and started_at, so a claim writes nothing here. For
 * each row of the CTE `from` matching `where`: its id, retry_count and attempt, then `cols`, the
 * expressions of worker, started_at, ended_at, status, verdict and exit_code. A row that the
 * claim of an earlier dtask-api left open is closed instead. */
#define ATTEMPT_END(name, from, cols, where)                                                          \
        name " AS (INSERT INTO task_attempts AS a (task_id, retry_count, attempt, worker, started_at, " \
        "ended_at, status, verdict, exit_code) SELECT id, retry_count, attempt, " cols " FROM " from     \
        " WHERE " where " ON CONFLICT (task_id, retry_count, attempt) DO UPDATE SET "                   \
        "ended_at = excluded.ended_at, status = excluded.status, verdict = excluded.verdict, "          \
        "exit_code = excluded.exit_code WHERE a.ended_at IS NULL)"
