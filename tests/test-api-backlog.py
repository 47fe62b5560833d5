#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-api with a backlog of Pending tasks that PostgreSQL's statistics do not know of yet.

The statistics of tasks are those of the last ANALYZE, when few tasks were live; then a burst
of work arrives. The statements on one task (claim, heartbeat, complete, release, cancel,
retry, get) must still find it by primary key and not read through an index of the live
tasks, which now holds the whole backlog. What each statement read is taken from
pg_stat_statements (tools/dev loads it): shared buffers per call, which depends on the plan
only, not on the machine's speed."""

import uuid

from test_api_lib import check, finish, http, key_id, make_key, sql, sql_value, KEY

BACKLOG = 20000
# A by-id statement reads some tens of buffers (the row, its indexes, the attempt row), and up
# to several hundred more as the first statement of a new database session (the catalogs:
# dtask-api's pool opens sessions as load comes). One that walks the backlog reads the heap
# page of every waiting task: the rows are padded to ~1.5 kB, five to a page, so ~4000.
MAX_BUFFERS_PER_CALL = 2000

ME = key_id(KEY)
NAME = f"test-api-backlog {uuid.uuid4()}"


def statements():
    """(calls, buffers per call, query) of the statements on tasks since the reset."""
    rows = sql("SELECT calls, (shared_blks_hit + shared_blks_read) / calls, "
               "left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM pg_stat_statements "
               "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND calls > 0 "
               "AND (query LIKE 'WITH upd AS (UPDATE tasks%' OR query LIKE 'WITH cur AS (SELECT % FROM tasks %' "
               "OR query LIKE 'SELECT id::text%FROM tasks WHERE id = %')")
    return [(int(c), int(b), q) for c, b, q in rows]


def main():
    try:
        sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        sql("SELECT count(*) FROM pg_stat_statements")
    except Exception as e:  # noqa: BLE001 — reported as a failure with its cause
        check(False, f"pg_stat_statements is available (tools/dev preloads it): {e}")
        finish()

    worker, _ = make_key("test-api-backlog worker", ["tasks:read", "tasks:execute"])

    # statistics from a moment with few live tasks, then the burst; not in the outbox and
    # stamped now, so that neither real workers nor the reaper take them
    sql("ANALYZE tasks")
    sql(f"""INSERT INTO tasks (id, name, code, language, owner_id, ttl, expires_at, published_at)
            SELECT gen_random_uuid(), '{NAME}', E'print(1)\\n# ' || repeat(md5(i::text), 45), 1, '{ME}',
                   interval '1 hour', now() + interval '1 hour', now() FROM generate_series(1, {BACKLOG}) i""")
    # whatever happens, the backlog goes: left behind, dtask-reaper would publish it as never
    # claimed (REPUBLISH_AFTER, 5 minutes) and the workers would run all of it
    try:
        task_statements(worker)
    finally:
        sql(f"DELETE FROM tasks WHERE name = '{NAME}'")
    finish()


def task_statements(worker):
    ids = [r[0] for r in sql(f"SELECT id FROM tasks WHERE name = '{NAME}' LIMIT 3")]
    live = int(sql_value("SELECT count(*) FROM tasks WHERE status IN (0, 1)"))
    check(live >= BACKLOG, f"a backlog of {live} live tasks")
    sql("SELECT pg_stat_statements_reset()")

    a, b, c = ids
    r = http("POST", f"/api/tasks/{a}/claim", key=worker, headers={"X-Worker": "backlog/1"})
    check(r.status == 200 and r.json["status"] == 1, f"claim: 200 ({r.status})")
    r = http("POST", f"/api/tasks/{a}/heartbeat", {"attempt": 1}, key=worker)
    check(r.status == 204, f"heartbeat: 204 ({r.status})")
    r = http("POST", f"/api/tasks/{a}/complete", {"attempt": 1, "status": 2, "result": "1"}, key=worker)
    check(r.status == 200 and r.json["status"] == 2, f"complete: 200 ({r.status})")
    r = http("POST", f"/api/tasks/{a}/retry", key=KEY)
    check(r.status == 200 and r.json["status"] == 0, f"retry: 200 ({r.status})")
    r = http("POST", f"/api/tasks/{b}/claim", key=worker)
    check(r.status == 200, f"claim of another: 200 ({r.status})")
    r = http("POST", f"/api/tasks/{b}/release", {"attempt": 1}, key=worker)
    check(r.status == 204, f"release: 204 ({r.status})")  # published again: a real worker may take it
    r = http("POST", f"/api/tasks/{c}/cancel", key=KEY)
    check(r.status == 200 and r.json["status"] == 5, f"cancel: 200 ({r.status})")
    r = http("GET", f"/api/tasks/{c}", key=KEY)
    check(r.status == 200, f"get: 200 ({r.status})")

    seen = statements()
    check(len(seen) >= 7, f"pg_stat_statements recorded the statements on one task ({len(seen)})")
    for calls, per_call, query in seen:
        check(per_call <= MAX_BUFFERS_PER_CALL,
              f"{per_call} buffers per call (at most {MAX_BUFFERS_PER_CALL} with {BACKLOG} waiting): {query}…")


main()
