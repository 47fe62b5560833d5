-- SPDX-License-Identifier: MIT
-- Only changes are announced, not new tasks. pg_notify() takes a database-wide lock
-- until commit, so a NOTIFY on every INSERT serialized task creation on one WAL flush
-- at a time; nobody waits for a task to become Pending. dtask-api signals its own
-- creations on D-Bus.
CREATE OR REPLACE FUNCTION dtask_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
        IF NEW.status IS DISTINCT FROM OLD.status OR NEW.attempt IS DISTINCT FROM OLD.attempt THEN
                PERFORM pg_notify('dtask_task_changed',
                                  NEW.id::text || ' ' || NEW.status::text || ' ' || NEW.attempt::text);
        END IF;
        RETURN NULL;
END;
$$;

DROP TRIGGER tasks_changed ON tasks;
CREATE TRIGGER tasks_changed AFTER UPDATE ON tasks
        FOR EACH ROW EXECUTE FUNCTION dtask_task_changed();
