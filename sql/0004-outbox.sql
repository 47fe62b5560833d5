-- SPDX-License-Identifier: MIT
-- The messages that RabbitMQ has not confirmed yet get a table of their own.
--
-- The flag tasks.published was set by an UPDATE when the broker's confirm arrived, once per
-- task. It was in the predicate of tasks_unpublished_idx, so that UPDATE could not be HOT:
-- a second full row version and an insert into every index of tasks, for each task created.
-- Now the task's INSERT adds a row here in the same statement and the confirm deletes it;
-- tasks is not touched.
--
-- A row stands for the message of run retry_count of a Pending task. Rows of tasks that are
-- no longer Pending in that run are left over when dtask-api stopped between a publish and
-- its confirm; dtask-reaper deletes them. No foreign key: the rows are short-lived, and
-- checking one would cost a lookup in tasks on every create.
CREATE TABLE task_outbox (
        task_id         uuid PRIMARY KEY,
        retry_count     integer NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now(),
        -- dtask-reaper's last attempt to publish it: concurrent reapers skip it for a while
        attempted_at    timestamptz
);

INSERT INTO task_outbox (task_id, retry_count, created_at, attempted_at)
        SELECT id, retry_count, updated_at, published_at FROM tasks WHERE status = 0 AND NOT published;

DROP INDEX tasks_unpublished_idx;
ALTER TABLE tasks DROP COLUMN published;
COMMENT ON COLUMN tasks.published_at IS 'when dtask-reaper last re-published the current run, NULL if never';
