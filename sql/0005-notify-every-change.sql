-- SPDX-License-Identifier: MIT
-- Every change a reader can see is announced, not only changes of status and attempt.
--
-- dtask-api answers GET /api/tasks/{id} from its task cache (TASK_CACHE_SIZE) and forgets a
-- task when PostgreSQL announces that it changed. So, beside the status changes of sql/0002
-- (payload "<id> <status> <attempt>", unchanged), these are announced now:
--   - an UPDATE of any column of the task's JSON (a PATCH, or SQL by hand), with the same
--     payload as a status change;
--   - a DELETE (dtask-reaper's retention, or by hand): "<id> deleted";
--   - a TRUNCATE: "*".
-- Columns that readers do not see (lease_expires_at and updated_at of a heartbeat,
-- published_at, worker) change without a notification, so that no heartbeat takes the
-- database-wide lock of pg_notify(). Creations stay unannounced (sql/0002).
-- The test is in the function rather than in a WHEN clause of the trigger: PostgreSQL parses
-- a WHEN clause again for every UPDATE statement, while PL/pgSQL keeps its plan per session.
CREATE OR REPLACE FUNCTION dtask_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
        IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('dtask_task_changed', '*');
        ELSIF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('dtask_task_changed', OLD.id::text || ' deleted');
        -- the status and the attempt first: they change in most updates, and end the test there
        ELSIF NEW.status IS DISTINCT FROM OLD.status OR NEW.attempt IS DISTINCT FROM OLD.attempt
              OR (NEW.name, NEW.code, NEW.language, NEW.input_data, NEW.owner_id, NEW.result,
                  NEW.error_message, NEW.exit_code, NEW.verdict, NEW.output_truncated, NEW.ttl,
                  NEW.created_at, NEW.started_at, NEW.completed_at, NEW.expires_at, NEW.retry_count)
                 IS DISTINCT FROM
                 (OLD.name, OLD.code, OLD.language, OLD.input_data, OLD.owner_id, OLD.result,
                  OLD.error_message, OLD.exit_code, OLD.verdict, OLD.output_truncated, OLD.ttl,
                  OLD.created_at, OLD.started_at, OLD.completed_at, OLD.expires_at, OLD.retry_count) THEN
                PERFORM pg_notify('dtask_task_changed',
                                  NEW.id::text || ' ' || NEW.status::text || ' ' || NEW.attempt::text);
        END IF;
        RETURN NULL;
END;
$$;

-- tasks_changed (AFTER UPDATE, sql/0002) calls the function as it is.
CREATE TRIGGER tasks_deleted AFTER DELETE ON tasks FOR EACH ROW
        EXECUTE FUNCTION dtask_task_changed();
CREATE TRIGGER tasks_truncated AFTER TRUNCATE ON tasks FOR EACH STATEMENT
        EXECUTE FUNCTION dtask_task_changed();
