-- SPDX-License-Identifier: MIT
-- The index over every status gives way to one over the Pending tasks only.
--
-- A status change is an update of every index of tasks; the one by (status, created_at)
-- was one more insert on every claim and every completion, and it matched any statement
-- with a status condition. Listing the Pending tasks oldest first and the reaper's search
-- for those never claimed read this one; the InProgress ones are few (bounded by the
-- workers) and are read through tasks_lease_idx; the finished ones through
-- tasks_created_idx and tasks_completed_idx.
CREATE INDEX tasks_pending_created_idx ON tasks (created_at, id) WHERE status = 0;
DROP INDEX tasks_status_created_idx;
