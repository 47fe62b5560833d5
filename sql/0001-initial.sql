-- SPDX-License-Identifier: MIT
-- dtask schema, version 1: API keys, tasks, attempt history, idempotency keys.
-- Applied by pg_migrate() inside one transaction; never edit an applied migration,
-- add a new numbered file instead.

CREATE TABLE api_keys (
        id              uuid PRIMARY KEY,
        name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 250),
        -- keyed BLAKE2b-256 of the plaintext key; the plaintext is never stored
        key_hash        bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
        -- first characters of the key, for display only
        prefix          text NOT NULL CHECK (char_length(prefix) <= 16),
        claims          text[] NOT NULL DEFAULT '{}',
        is_active       boolean NOT NULL DEFAULT true,
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        expires_at      timestamptz,
        last_used_at    timestamptz
);

CREATE INDEX api_keys_created_idx ON api_keys (created_at, id);

CREATE TABLE tasks (
        id                      uuid PRIMARY KEY,
        name                    text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 250),
        code                    text NOT NULL CHECK (code <> ''),
        -- 0 CSharp, 1 Python (the integer values of the older system)
        language                smallint NOT NULL CHECK (language IN (0, 1)),
        input_data              text,
        owner_id                uuid NOT NULL,
        -- 0 Pending, 1 InProgress, 2 Completed, 3 Failed, 4 Expired, 5 Cancelled
        status                  smallint NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 5),
        result                  text,
        error_message           text,
        exit_code               integer,
        verdict                 text CHECK (verdict IN ('ok', 'runtime_error', 'compile_error', 'timeout',
                                                        'memory_limit', 'pids_limit', 'output_limit',
                                                        'cancelled', 'worker_lost', 'internal_error')),
        output_truncated        boolean NOT NULL DEFAULT false,
        ttl                     interval NOT NULL CHECK (ttl > interval '0'),
        created_at              timestamptz NOT NULL DEFAULT now(),
        updated_at              timestamptz NOT NULL DEFAULT now(),
        started_at              timestamptz,
        completed_at            timestamptz,
        expires_at              timestamptz NOT NULL,
        retry_count             integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
        -- execution attempts of the current run; the worker lease fences completions
        attempt                 integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
        max_attempts            integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
        lease_expires_at        timestamptz,
        worker                  text,
        -- dispatch state: false until RabbitMQ confirmed the message of the current run
        published               boolean NOT NULL DEFAULT false,
        published_at            timestamptz
);

-- reaper: overdue Pending/InProgress tasks
CREATE INDEX tasks_live_expiry_idx ON tasks (expires_at) WHERE status IN (0, 1);
-- reaper: lapsed worker leases
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE status = 1;
-- reaper: tasks whose message never reached the broker
CREATE INDEX tasks_unpublished_idx ON tasks (created_at) WHERE status = 0 AND NOT published;
-- listing: oldest first, per owner or for everybody, optionally by status
CREATE INDEX tasks_owner_created_idx ON tasks (owner_id, created_at, id);
CREATE INDEX tasks_created_idx ON tasks (created_at, id);
CREATE INDEX tasks_status_created_idx ON tasks (status, created_at, id);
-- retention purge of terminal tasks
CREATE INDEX tasks_completed_idx ON tasks (completed_at) WHERE status >= 2;

CREATE TABLE task_attempts (
        task_id         uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        retry_count     integer NOT NULL,
        attempt         integer NOT NULL,
        worker          text,
        started_at      timestamptz NOT NULL DEFAULT now(),
        ended_at        timestamptz,
        status          smallint CHECK (status BETWEEN 0 AND 5),
        verdict         text,
        exit_code       integer,
        PRIMARY KEY (task_id, retry_count, attempt)
);

CREATE TABLE idempotency_keys (
        owner_id        uuid NOT NULL,
        key             text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
        -- hash of the request body: the same key with another body is a client error
        request_hash    bytea NOT NULL,
        task_id         uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        created_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (owner_id, key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Every status change is announced on channel dtask_task_changed with payload
-- "<id> <status> <attempt>": long-polling readers and running workers LISTEN to it.
CREATE FUNCTION dtask_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
        IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status
           OR NEW.attempt IS DISTINCT FROM OLD.attempt THEN
                PERFORM pg_notify('dtask_task_changed',
                                  NEW.id::text || ' ' || NEW.status::text || ' ' || NEW.attempt::text);
        END IF;
        RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_changed AFTER INSERT OR UPDATE ON tasks
        FOR EACH ROW EXECUTE FUNCTION dtask_task_changed();
