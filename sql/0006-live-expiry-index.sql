-- SPDX-License-Identifier: MIT
-- The index of the live tasks by expiry gets a predicate that only the statements over all
-- live tasks spell (LIVE_STATUS in src/shared/task-sql.h).
--
-- With "status IN (0, 1)" any statement on the Pending tasks ("status = 0") could use it as
-- well as tasks_pending_created_idx, and when the statistics were taken with no live task
-- (both indexes look empty) the planner took the smaller one: dtask-reaper's search for the
-- Pending tasks never claimed walked every live task on every pass instead of the range of
-- those created before REPUBLISH_AFTER.
DROP INDEX tasks_live_expiry_idx;
CREATE INDEX tasks_live_expiry_idx ON tasks (expires_at) WHERE (status + 0) IN (0, 1);
