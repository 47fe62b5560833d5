#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-reaper against the real PostgreSQL and RabbitMQ of the dev environment.

Tasks are written straight into the tasks table (this tests the reaper, not the
API), then dtask-reaper passes run and the rows are checked. The test works in a
database and on AMQP names of its own, so the dev reaper and workers of tools/dev
never touch its rows and its messages reach no worker."""

import os
import subprocess
import sys
import uuid

PASSED = FAILED = 0


def env(name):
    value = os.environ.get(name)
    if not value:
        print(f"{name} is not set (run through tools/dev test); skipping")
        sys.exit(77)
    return value


DEV_DB = env("DTASK_DATABASE_URL")
AMQP = env("DTASK_AMQP_URL")
BUILD = env("DTASK_BUILD_ROOT")
REAPER = os.path.join(BUILD, "src/reaper/dtask-reaper")
MIGRATE = os.path.join(BUILD, "src/migrate/dtask-migrate")
SQL_DIR = os.path.join(env("DTASK_SOURCE_ROOT"), "sql")
OWNER = str(uuid.uuid4())
SUFFIX = uuid.uuid4().hex[:12]
DB_NAME = f"test_reaper_{SUFFIX}"
DB = DEV_DB.rsplit("/", 1)[0] + "/" + DB_NAME
# test_backlog_reads: the waiting tasks' rows are padded to ~1.5 kB, five to a heap page. A pass
# reads some tens of buffers (the tasks of the outbox's rows by primary key, the empty range of
# Pending tasks created before REPUBLISH_AFTER); each part that walked the live tasks, as
# statistics from before the burst invite, read one page per five of them (~BACKLOG / 5) more.
BACKLOG = 20000
BACKLOG_MAX_BUFFERS = BACKLOG // 20
# Private topology: the reaper declares these, nothing consumes them.
AMQP_NAMES = {"AMQP_EXCHANGE": f"test_reaper_x_{SUFFIX}", "AMQP_QUEUE": f"test_reaper_q_{SUFFIX}",
              "AMQP_ROUTING_KEY": "test_reaper", "AMQP_EVENTS_EXCHANGE": f"test_reaper_events_{SUFFIX}"}


def sql(query, *params):
    """Runs one statement through psql; params are passed as psql variables (quoted literals)."""
    args = ["psql", DB, "-X", "-q", "-t", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1"]
    for i, p in enumerate(params, 1):
        args += ["-v", f"p{i}={p}"]
    out = subprocess.run(args, input=query, capture_output=True, text=True, check=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def reaper_env(**extra):
    e = dict(os.environ, DATABASE_URL=DB, AMQP_URL=AMQP, LOG_LEVEL="info", **AMQP_NAMES)
    e.pop("CREDENTIALS_DIRECTORY", None)
    e.update(extra)
    return e


def reaper(*extra, env_extra=None):
    e = dict(os.environ, DATABASE_URL=DB, AMQP_URL=AMQP, LOG_LEVEL="info", **AMQP_NAMES)
    e.pop("CREDENTIALS_DIRECTORY", None)
    e.update(env_extra or {})
    return subprocess.run([REAPER, "--config=/dev/null", *extra], capture_output=True, text=True, env=e, timeout=60)


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print(f"ok - {what}")
    else:
        FAILED += 1
        print(f"FAIL - {what}")


def insert(name, status, expires_in, **cols):
    """Inserts a task for OWNER; expires_in in seconds relative to now (negative: overdue).
    outbox_ago: its message waits in the outbox since then (None: it was confirmed).
    A running one (status 1) runs on worker 'test'; open_row: the claim of an earlier dtask-api
    also opened its attempt's history row (the current one writes it when the attempt ends)."""
    tid = str(uuid.uuid4())
    fields = {
        "attempt": 0, "max_attempts": 3, "lease_in": None, "outbox_ago": None, "updated_ago": 0,
        "published_ago": None, "created_ago": 60, "open_row": False,
    }
    fields.update(cols)
    lease = "NULL" if fields["lease_in"] is None else f"now() + interval '{fields['lease_in']} seconds'"
    published_at = "NULL" if fields["published_ago"] is None else f"now() - interval '{fields['published_ago']} seconds'"
    sql(f"""INSERT INTO tasks (id, name, code, language, owner_id, status, ttl, created_at, updated_at, expires_at,
                               attempt, max_attempts, lease_expires_at, published_at, started_at, worker)
            VALUES ('{tid}', :'p1', 'print(1)', 1, '{OWNER}', {status}, interval '1 hour',
                    now() - interval '{fields['created_ago']} seconds', now() - interval '{fields['updated_ago']} seconds',
                    now() + interval '{expires_in} seconds', {fields['attempt']}, {fields['max_attempts']},
                    {lease}, {published_at},
                    CASE WHEN {status} = 1 THEN now() - interval '3 seconds' END,
                    CASE WHEN {status} = 1 THEN 'test' END)""", name)
    if fields["outbox_ago"] is not None:
        sql(f"INSERT INTO task_outbox (task_id, retry_count, created_at) "
            f"VALUES ('{tid}', 0, now() - interval '{fields['outbox_ago']} seconds')")
    if fields["open_row"]:
        sql(f"INSERT INTO task_attempts (task_id, retry_count, attempt, worker) VALUES ('{tid}', 0, {fields['attempt']}, 'test')")
    return tid


def row(tid):
    r = sql(f"""SELECT status, coalesce(error_message, ''), completed_at IS NOT NULL, coalesce(verdict, ''),
                       attempt, NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.task_id = t.id),
                       lease_expires_at IS NULL FROM tasks t WHERE id = '{tid}'""")
    return r[0] if r else None


def test_expire_and_rescue():
    overdue_pending = insert("overdue pending", 0, -5)
    overdue_running = insert("overdue running", 1, -1, attempt=1, lease_in=20)
    live_pending = insert("live pending", 0, 3600)
    lapsed = insert("lapsed lease", 1, 3600, attempt=1, lease_in=-5, open_row=True)
    lapsed_last = insert("lapsed, last attempt", 1, 3600, attempt=3, lease_in=-5)
    done = insert("completed long ago", 2, -100)

    p = reaper()
    check(p.returncode == 0, f"reaper pass exits 0 (stderr: {p.stderr.strip()[-300:]})")
    check("expired=" in p.stderr, "reaper prints a one-line summary")

    r = row(overdue_pending)
    check(r[0] == "4" and r[1] == "Task expired due to TTL" and r[2] == "t", "overdue Pending task is Expired with the TTL message")
    check(r[3] == "", "a task that never ran has no verdict")
    r = row(overdue_running)
    check(r[0] == "4" and r[6] == "t", "overdue InProgress task is Expired and its lease cleared")
    check(r[3] == "timeout", "a run cut short by the TTL has verdict timeout, as when the worker's timer fires")
    hist = sql(f"SELECT attempt, worker, status, ended_at > started_at, started_at < now() - interval '2 seconds' "
               f"FROM task_attempts WHERE task_id = '{overdue_running}'")
    check(hist == [["1", "test", "4", "t", "t"]],
          f"the expired running task's attempt gets its history row: worker, start of the run, end, Expired ({hist})")
    check(row(live_pending)[0] == "0", "a Pending task with time left is untouched")
    r = row(lapsed)
    check(r[0] == "0" and r[4] == "1", "a lapsed lease goes back to Pending (next claim is attempt 2)")
    check(r[5] == "t", "the rescued task is re-published at once (broker confirm recorded)")
    hist = sql(f"SELECT attempt, worker, verdict, ended_at IS NOT NULL FROM task_attempts WHERE task_id = '{lapsed}'")
    check(hist == [["1", "test", "worker_lost", "t"]],
          f"the lapsed attempt's history row, opened by an earlier dtask-api's claim, is closed as worker_lost "
          f"({hist})")
    hist = sql(f"SELECT attempt, worker, verdict FROM task_attempts WHERE task_id = '{lapsed_last}'")
    check(hist == [["3", "test", "worker_lost"]], f"the last lapsed attempt gets its history row ({hist})")
    r = row(lapsed_last)
    check(r[0] == "3" and r[3] == "worker_lost" and r[2] == "t", "a lapsed lease on the last attempt fails with worker_lost")
    check(row(done)[0] == "2", "terminal tasks are never touched")


def test_republish_unpublished():
    fresh = insert("unpublished, just created", 0, 3600, outbox_ago=0)
    stale = insert("unpublished, broker was down", 0, 3600, outbox_ago=30, updated_ago=30)
    claimed = insert("claimed before its confirm was recorded", 1, 3600, attempt=1, lease_in=60, outbox_ago=30)
    p = reaper()
    check(p.returncode == 0, "reaper pass exits 0")
    check(row(stale)[5] == "t", "an unpublished Pending task is published and leaves the outbox after the broker confirmed")
    check(row(fresh)[5] == "f", "a task created a moment ago is left to the API's own publish")
    r = row(claimed)
    check(r[5] == "t" and r[0] == "1", "the outbox row of a task no longer Pending is deleted, the task left as it is")


def test_republish_never_claimed():
    # REPUBLISH_AFTER is 5 minutes by default.
    lost = insert("published 10 min ago, never claimed", 0, 3600, published_ago=600, updated_ago=600,
                  created_ago=1200)
    recent = insert("published 1 min ago", 0, 3600, published_ago=60, updated_ago=60, created_ago=1200)
    p = reaper()
    check(p.returncode == 0, "reaper pass exits 0")

    def published_ago(tid):
        return float(sql(f"SELECT extract(epoch from now() - published_at) FROM tasks WHERE id = '{tid}'")[0][0])
    check(published_ago(lost) < 60, "a Pending task published long ago and never claimed is published again")
    check(published_ago(recent) > 50, "a task published a minute ago is left alone")


def test_backlog_reads():
    """A burst of Pending tasks that PostgreSQL's statistics do not know of yet: a pass reads
    the tasks of the outbox's rows by primary key and the old Pending tasks from their own
    index range, not by walking the backlog through the index of the live tasks (ROW_STATUS
    and LIVE_STATUS in src/shared/task-sql.h). What the pass's statement read is
    taken from pg_stat_statements (tools/dev preloads it): buffers per call, which depend on
    the plan only, not on the machine's speed."""
    try:
        sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    except subprocess.CalledProcessError as e:
        check(False, f"pg_stat_statements is available (tools/dev preloads it): {e.stderr.strip()}")
        return
    # statistics from a quiet moment: finished tasks only, and messages that awaited their
    # confirm for a while; then the burst, Pending, published a moment ago and confirmed (not
    # in the outbox), so that this pass has nothing to do with them
    sql(f"""INSERT INTO tasks (id, name, code, language, owner_id, status, ttl, expires_at, completed_at)
              SELECT gen_random_uuid(), 'quiet', 'print(1)', 1, '{OWNER}', 2, interval '1 hour',
                     now() + interval '1 hour', now() FROM generate_series(1, 20);
            INSERT INTO task_outbox (task_id, retry_count, created_at)
              SELECT gen_random_uuid(), 0, now() - interval '1 hour' FROM generate_series(1, 200);
            ANALYZE tasks;
            ANALYZE task_outbox;
            DELETE FROM task_outbox;
            INSERT INTO tasks (id, name, code, language, owner_id, ttl, expires_at, published_at)
              SELECT gen_random_uuid(), 'backlog', E'print(1)\\n# ' || repeat(md5(i::text), 45), 1, '{OWNER}',
                     interval '1 hour', now() + interval '1 hour', now() FROM generate_series(1, {BACKLOG}) i""")
    unpublished = insert("unpublished, during a burst", 0, 3600, outbox_ago=30, updated_ago=30)
    claimed = insert("claimed during a burst before its confirm was recorded", 1, 3600, attempt=1, lease_in=60,
                     outbox_ago=30)
    sql("SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)")
    try:
        p = reaper()
        check(p.returncode == 0, "reaper pass with a backlog exits 0")
        check(row(unpublished)[5] == "t", "with a backlog, an unpublished Pending task is published")
        check(row(claimed)[5] == "t", "with a backlog, the outbox row of a claimed task is deleted")
        read = sql("""SELECT (shared_blks_hit + shared_blks_read) / calls FROM pg_stat_statements
                      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND calls > 0 AND query LIKE 'WITH leftover AS%'""")
        per_call = int(read[0][0]) if read else None
        check(per_call is not None and per_call <= BACKLOG_MAX_BUFFERS,
              f"the pass read {per_call} buffers with {BACKLOG} waiting (at most {BACKLOG_MAX_BUFFERS})")
    finally:
        sql("DELETE FROM tasks WHERE name IN ('quiet', 'backlog')")


def test_broker_down_keeps_tasks():
    stale = insert("unpublished, broker unreachable", 0, 3600, outbox_ago=30, updated_ago=30)
    p = reaper(env_extra={"AMQP_URL": "amqp://guest:guest@127.0.0.1:1"})
    check(p.returncode == 0, "a pass without a broker still exits 0")
    check("not reachable" in p.stderr, "and says the broker is not reachable")
    check(row(stale)[5] == "f", "the task stays in the outbox for a later pass")
    sql(f"UPDATE task_outbox SET attempted_at = NULL WHERE task_id = '{stale}'")


def test_database_down():
    p = reaper(env_extra={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/dtask?connect_timeout=2",
                          "DATABASE_TIMEOUT": "3s"})
    check(p.returncode != 0, "database unreachable: non-zero exit")
    check("database" in p.stderr.lower(), "with a message naming the database")


def test_concurrent_reapers_expire_once():
    # Record every transition into Expired of this test's rows.
    sql(f"""CREATE TABLE IF NOT EXISTS reaper_test_expirations (task_id uuid, at timestamptz DEFAULT now());
            CREATE OR REPLACE FUNCTION reaper_test_record() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.owner_id = '{OWNER}' AND NEW.status = 4 AND OLD.status <> 4 THEN
                INSERT INTO reaper_test_expirations (task_id) VALUES (NEW.id);
              END IF;
              RETURN NULL;
            END $$;
            DROP TRIGGER IF EXISTS reaper_test_record ON tasks;
            CREATE TRIGGER reaper_test_record AFTER UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION reaper_test_record();""")
    try:
        sql(f"""INSERT INTO tasks (id, name, code, language, owner_id, status, ttl, expires_at)
                SELECT gen_random_uuid(), 'bulk ' || i, 'print(1)', 1, '{OWNER}', i % 2, interval '1 second',
                       now() - interval '1 second'
                FROM generate_series(1, 300) i""")
        e = reaper_env()
        procs = [subprocess.Popen([REAPER, "--config=/dev/null"], env=e, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        codes = [p.wait(timeout=60) for p in procs]
        check(codes == [0, 0, 0], "three concurrent reapers exit 0")
        left = sql(f"SELECT count(*) FROM tasks WHERE owner_id = '{OWNER}' AND name LIKE 'bulk %' AND status <> 4")
        check(left == [["0"]], "all 300 overdue tasks are Expired")
        dup = sql("""SELECT count(*), count(DISTINCT task_id) FROM reaper_test_expirations e
                      JOIN tasks t ON t.id = e.task_id WHERE t.name LIKE 'bulk %'""")
        check(dup == [["300", "300"]], f"each task was expired exactly once (transitions, distinct: {dup})")
    finally:
        sql("""DROP TRIGGER IF EXISTS reaper_test_record ON tasks;
               DROP FUNCTION IF EXISTS reaper_test_record();
               DROP TABLE IF EXISTS reaper_test_expirations;""")


def test_loop_and_arguments():
    p = subprocess.run([REAPER, "--loop=nonsense"], capture_output=True, text=True)
    check(p.returncode != 0 and "--loop" in p.stderr, "a bad --loop interval is refused with a message")
    p = subprocess.run([REAPER, "--help"], capture_output=True, text=True)
    check(p.returncode == 0 and "--loop=INTERVAL" in p.stdout, "--help documents --loop")
    e = reaper_env(SANDBOX_PIDS_MAX="lots")
    p = subprocess.run([REAPER, "--config=/dev/null"], capture_output=True, text=True, env=e)
    check(p.returncode != 0 and "SANDBOX_PIDS_MAX" in p.stderr, "a malformed configuration value is named at start")

    tid = insert("expires while the loop runs", 0, 2)
    loop = subprocess.Popen([REAPER, "--config=/dev/null", "--loop=200ms"], env=e | {"SANDBOX_PIDS_MAX": "64"},
                            stderr=subprocess.PIPE, text=True)
    try:
        import time
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and row(tid)[0] != "4":
            time.sleep(0.2)
        check(row(tid)[0] == "4", "the --loop reaper expires a task after its TTL ran out")
    finally:
        loop.terminate()
        check(loop.wait(timeout=10) == 0, "the --loop reaper exits 0 on SIGTERM")


def setup_database():
    admin = DEV_DB.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(["psql", admin, "-X", "-q", "-c", f'CREATE DATABASE "{DB_NAME}"'], check=True)
    subprocess.run([MIGRATE, f"--database-url={DB}", f"--sql-dir={SQL_DIR}"], check=True, capture_output=True)


def teardown():
    admin = DEV_DB.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(["psql", admin, "-X", "-q", "-c", f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'],
                   capture_output=True)
    node = os.environ.get("DTASK_RABBITMQ_NODE")
    if node:
        ctl = ["runuser", "-u", "rabbitmq", "--", "env", "HOME=/var/lib/rabbitmq", "ERL_EPMD_ADDRESS=127.0.0.1",
               "/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", node, "-q"]
        # The private exchanges stay (rabbitmqctl cannot delete them); without the queue they route nowhere.
        subprocess.run(ctl + ["delete_queue", AMQP_NAMES["AMQP_QUEUE"]], capture_output=True, timeout=60)


def main():
    setup_database()
    try:
        test_backlog_reads()  # first: its statistics are those of a database without live tasks
        test_expire_and_rescue()
        test_republish_unpublished()
        test_republish_never_claimed()
        test_broker_down_keeps_tasks()
        test_database_down()
        test_concurrent_reapers_expire_once()
        test_loop_and_arguments()
    finally:
        teardown()
    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
