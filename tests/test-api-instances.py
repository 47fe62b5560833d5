#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Several dtask-api processes of this build next to the dev instance:

  - two instances over the same PostgreSQL and RabbitMQ: a task created on one is read,
    waited on (?wait=, woken by PostgreSQL NOTIFY from the other) and retried through the
    other;
  - the task cache of GET /api/tasks/{id} (its entries kept for a minute here, so that only
    what invalidates them can make a read fresh): changes through the other instance, by SQL
    by hand (an edit, a DELETE, also of a task waited on, a TRUNCATE's "*"), through the
    instance itself, Cache-Control: no-cache, a LISTEN connection lost and regained,
    another key's task;
  - /metrics: the finished counts reused for 10 s, then counted again;
  - HTTPS with a self-signed certificate made here: curl --cacert succeeds;
  - dtask-keys unreachable: 503, never 401;
  - SIGTERM: clean exit with status 0."""

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
from test_api_lib import (API, KEY, Instance, check, create, deactivate_keys, finish, free_port, http,  # noqa: E402
                          insert_task, key_id, make_key, metric, sql, wait_for)

ME = key_id(KEY)


class Waiter:
    """GET /api/tasks/{tid}?wait=20 through base, in a thread: .r is the response, .t the
    time it came (time.monotonic()), .elapsed how long it took."""

    def __init__(self, tid, base):
        self.r, self.t, self.elapsed = None, None, 0.0
        self.thread = threading.Thread(target=self._run, args=(tid, base))
        self.thread.start()

    def _run(self, tid, base):
        t0 = time.monotonic()
        self.r = http("GET", f"/api/tasks/{tid}?wait=20", base=base, timeout=40)
        self.t = time.monotonic()
        self.elapsed = self.t - t0

    def join(self):
        self.thread.join(30)
        return self.r


def test_two_instances():
    b = Instance()
    try:
        # A (the dev instance) creates, B reads.
        t = create(name="made on A").json
        r = http("GET", f"/api/tasks/{t['id']}", base=b.url)
        check(r.status == 200 and r.json["id"] == t["id"] and r.json["name"] == "made on A",
              "a task created on one instance is read through the other")

        # Waited on through B while A completes it (the worker part played by this test).
        tid = insert_task(ME, name="waited on B")
        http("POST", f"/api/tasks/{tid}/claim")
        w = Waiter(tid, b.url)
        time.sleep(0.5)
        c = http("POST", f"/api/tasks/{tid}/complete", {"attempt": 1, "status": 2, "result": "from A"})
        done = time.monotonic()
        r = w.join()
        check(c.status == 200 and r is not None and r.status == 200 and r.json["status"] == 2 and r.json["result"] == "from A",
              "?wait on B is answered with the result completed through A")
        if r is not None:
            check(w.t - done <= 0.1, f"…within 100 ms ({(w.t - done) * 1000:+.1f} ms)")

        # Retried through B, seen on A.
        r = http("POST", f"/api/tasks/{tid}/retry", base=b.url)
        check(r.status == 200 and r.json["status"] == 0 and r.json["retryCount"] == 1, "retry through B")
        r = http("GET", f"/api/tasks/{tid}")
        # (a worker of the environment may have taken the new run already: no status check)
        check(r.status == 200 and r.json["retryCount"] == 1 and r.json.get("result") != "from A",
              "A sees the retry made through B")
        http("POST", f"/api/tasks/{tid}/cancel", base=b.url)
        http("POST", f"/api/tasks/{t['id']}/cancel", base=b.url)

        # And the other way round: created on B, waited on A.
        t2 = create(name="made on B", base=b.url)
        check(t2.status == 201, "create through B")
        if t2.status == 201:
            r = http("GET", f"/api/tasks/{t2.json['id']}?wait=0")
            check(r.status == 200 and r.json["id"] == t2.json["id"], "A reads the task created on B")
            http("POST", f"/api/tasks/{t2.json['id']}/cancel")
    finally:
        rc = b.stop()
        check(rc == 0, f"SIGTERM: the second instance exits with status 0 ({rc})")


def test_listener_reconnect():
    """A change announced while an instance's LISTEN connection is down is not lost: after
    reconnecting, the instance re-checks its waiters."""
    app = f"dtask-api-test-{uuid.uuid4().hex[:8]}"
    b = Instance({"PGAPPNAME": app})
    try:
        listening = wait_for(lambda: sql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' "
                                         "AND query LIKE 'LISTEN%'")[0][0] == "1", 10)
        check(listening, "the instance LISTENs on its own connection")
        tid = insert_task(ME, name="missed notification")
        http("POST", f"/api/tasks/{tid}/claim")
        w = Waiter(tid, b.url)
        time.sleep(0.5)
        # Terminate the LISTEN backend (waiting until it is gone), then finish the task while
        # nobody of that instance listens: its NOTIFY cannot reach the instance.
        sql(f"SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = '{app}' "
            f"AND query LIKE 'LISTEN%'; UPDATE tasks SET status = 2, result = 'while deaf', completed_at = now() "
            f"WHERE id = '{tid}'")
        r = w.join()
        check(r is not None and r.status == 200 and r.json["status"] == 2 and w.elapsed < 10,
              f"a waiter is answered after the LISTEN connection came back ({w.elapsed:.2f} s)")
    finally:
        b.stop()


def silently(statement):
    """SQL run with the session's triggers off: no NOTIFY, so no cache hears of it."""
    sql(f"SET session_replication_role = replica; {statement}")


def name_on(base, tid, headers=None):
    r = http("GET", f"/api/tasks/{tid}", base=base, headers=headers)
    return r.json["name"] if r.status == 200 else r.status


def test_task_cache():
    app = f"dtask-api-test-{uuid.uuid4().hex[:8]}"
    b = Instance({"PGAPPNAME": app, "TASK_CACHE_TTL": "60s"})
    listening_sql = (f"SELECT pid FROM pg_stat_activity WHERE application_name = '{app}' "
                     "AND query LIKE 'LISTEN%'")
    try:
        check(wait_for(lambda: sql(listening_sql), 10), "the instance LISTENs on its own connection")
        tid = insert_task(ME, name="cached")
        check(name_on(b.url, tid) == "cached", "B reads the task (and caches it)")

        # The cache is used: a change nobody announces is not seen, except with no-cache.
        silently(f"UPDATE tasks SET name = 'unannounced' WHERE id = '{tid}'")
        check(name_on(b.url, tid) == "cached", "a change that was not announced is not seen: B answered from its cache")
        check(name_on(b.url, tid, {"Cache-Control": "no-cache"}) == "unannounced",
              "Cache-Control: no-cache reads the database")
        check(name_on(b.url, tid, {"Cache-Control": "max-age=0"}) == "unannounced", "… and so does max-age=0")
        # ("*" is what a TRUNCATE announces; the table is shared with other tests)
        silently(f"UPDATE tasks SET name = 'before the star' WHERE id = '{tid}'")
        sql("SELECT pg_notify('dtask_task_changed', '*')")
        check(wait_for(lambda: name_on(b.url, tid) == "before the star", 5),
              "\"*\" on the channel empties the cache")

        # Edits by hand, announced by the triggers of sql/0005.
        name_on(b.url, tid)
        sql(f"UPDATE tasks SET name = 'edited by hand' WHERE id = '{tid}'")
        check(wait_for(lambda: name_on(b.url, tid) == "edited by hand", 5), "an edit of another field by SQL is seen")
        sql(f"UPDATE tasks SET result = 'r', status = 2, completed_at = now() WHERE id = '{tid}'")
        check(wait_for(lambda: http("GET", f"/api/tasks/{tid}", base=b.url).json["status"] == 2, 5),
              "a status change by SQL is seen")

        # Changes through the other instance (the dev instance, A).
        r = http("POST", f"/api/tasks/{tid}/retry")
        check(r.status == 200, "retry through A")
        check(wait_for(lambda: http("GET", f"/api/tasks/{tid}", base=b.url).json["retryCount"] == 1, 5),
              "B sees the retry made through A")

        # Through B itself: seen at once, in the answer right after.
        tid2 = insert_task(ME, name="changed through B")
        check(http("GET", f"/api/tasks/{tid2}", base=b.url).json["status"] == 0, "B caches a Pending task")
        r = http("POST", f"/api/tasks/{tid2}/cancel", base=b.url)
        g = http("GET", f"/api/tasks/{tid2}", base=b.url)
        check(r.status == 200 and g.json["status"] == 5, "a cancel through B is seen by B's next read at once")
        r = http("PATCH", f"/api/tasks/{tid2}", {"name": "patched on B"}, base=b.url)
        check(r.status == 200 and name_on(b.url, tid2) == "patched on B", "a PATCH through B too")

        # Another key does not get a task cached for its owner.
        other, _ = make_key("cache-other-owner", ["tasks:read"])
        r = http("GET", f"/api/tasks/{tid2}", key=other, base=b.url)
        check(r.status == 404, f"a cached task is still only its owner's ({r.status})")

        # Deleted by hand: 404, also for a request waiting on it.
        waiting = insert_task(ME, name="deleted while waited on")
        w = Waiter(waiting, b.url)
        time.sleep(0.5)
        sql(f"DELETE FROM tasks WHERE id IN ('{tid2}', '{waiting}')")
        check(wait_for(lambda: name_on(b.url, tid2) == 404, 5), "a task deleted by SQL is gone from the cache")
        r = w.join()
        check(r is not None and r.status == 404 and w.elapsed < 5,
              f"a ?wait= on a task deleted meanwhile is answered 404 at once ({w.elapsed:.2f} s)")

        # Deaf for a while: whatever was cached before is dropped when listening again.
        name_on(b.url, tid)
        old = sql(listening_sql)[0][0]
        sql(f"SELECT pg_terminate_backend({old}, 5000)")
        silently(f"UPDATE tasks SET name = 'while deaf' WHERE id = '{tid}'")
        back = wait_for(lambda: (sql(listening_sql) or [[old]])[0][0] != old, 15)
        check(back, "B listens again on a new connection")
        check(wait_for(lambda: name_on(b.url, tid) == "while deaf", 2),
              "after the LISTEN connection came back, B reads what changed while it was deaf")

        sql(f"UPDATE tasks SET status = 5 WHERE id = '{tid}' AND status IN (0, 1)")
    finally:
        b.stop()


def test_metrics_counts():
    """/metrics counts the finished tasks at most every 10 s (task_stats_full_interval());
    the live ones on every scrape."""
    b = Instance()
    try:
        cancelled = 'dtask_tasks{status="Cancelled"}'
        first = metric(b.url, cancelled)  # the first scrape counts everything
        check(first is not None, f"/metrics has {cancelled} ({first})")
        insert_task(ME, status=5, name="cancelled for the metrics")
        check(metric(b.url, cancelled) == first,
              "a scrape right after reuses the finished counts of the last full count")
        t0 = time.monotonic()
        changed = wait_for(lambda: metric(b.url, cancelled) != first, 15, 0.5)
        check(changed and 9 <= time.monotonic() - t0 <= 15,
              f"…and counts them again after 10 s ({time.monotonic() - t0:.1f} s)")
    finally:
        b.stop()


def test_https():
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                            "-days", "1", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], capture_output=True, text=True)
        check(p.returncode == 0, "a self-signed certificate was made")
        inst = Instance({"TLS_CERTIFICATE": cert, "TLS_KEY": key}, tls=True)
        try:
            url = f"https://127.0.0.1:{inst.port}"
            p = subprocess.run(["curl", "-sS", "--fail", "--cacert", cert, f"{url}/healthz"], capture_output=True, text=True)
            check(p.returncode == 0 and '"ok"' in p.stdout, f"curl --cacert https://…/healthz succeeds ({p.stderr.strip()})")
            hdr = os.path.join(d, "headers")
            with open(hdr, "w") as f:
                f.write(f"X-ApiKey: {KEY}\nContent-Type: application/json\n")
            p = subprocess.run(["curl", "-sS", "--fail", "--cacert", cert, "-H", f"@{hdr}", "-X", "POST",
                                "--data", '{"name": "over https", "code": "print(1)", "language": 1, "ttl": 60}',
                                f"{url}/api/tasks"], capture_output=True, text=True)
            check(p.returncode == 0 and '"statusName":"Pending"' in p.stdout, "an authenticated create over HTTPS works")
            p = subprocess.run(["curl", "-sS", "--fail", f"{url}/healthz"], capture_output=True, text=True)
            check(p.returncode != 0, "without the CA certificate curl refuses the server")
            p = subprocess.run(["curl", "-sS", "--max-time", "3", f"http://127.0.0.1:{inst.port}/healthz"],
                               capture_output=True, text=True)
            check('"ok"' not in p.stdout, "plain HTTP is not served on the HTTPS port")
        finally:
            check(inst.stop() == 0, "the HTTPS instance stops cleanly")


def test_keys_unreachable():
    inst = Instance({"KEYS_URL": f"http://127.0.0.1:{free_port()}"})
    try:
        r = http("GET", "/api/tasks", key="ak_" + uuid.uuid4().hex[:29], base=inst.url)
        check(r.status == 503 and r.header("WWW-Authenticate") is None and r.json["status"] == 503,
              f"dtask-keys unreachable: 503, not 401 ({r.status})")
        r = http("GET", "/healthz", key=None, base=inst.url)
        check(r.status == 200, "…while /healthz stays 200")
    finally:
        inst.stop()


def test_bad_config():
    p = subprocess.run([os.path.join(os.environ["DTASK_BUILD_ROOT"], "src/api/dtask-api"), "--config=/dev/null",
                        "--listen=127.0.0.1:1"], env={"PATH": "/usr/bin:/bin", "MAX_TTL": "forever",
                                                      "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
                       capture_output=True, text=True, timeout=20)
    check(p.returncode != 0 and "MAX_TTL" in p.stderr, "an invalid setting is refused at start, naming the key")
    p = subprocess.run([os.path.join(os.environ["DTASK_BUILD_ROOT"], "src/api/dtask-api"), "--version"],
                       capture_output=True, text=True, timeout=20)
    check(p.returncode == 0 and p.stdout.startswith("dtask-api "), "--version")
    p = subprocess.run([os.path.join(os.environ["DTASK_BUILD_ROOT"], "src/api/dtask-api"), "--help"],
                       capture_output=True, text=True, timeout=20)
    check(p.returncode == 0 and "--listen" in p.stdout, "--help")


print(f"# dev instance at {API}")
test_two_instances()
test_listener_reconnect()
test_task_cache()
test_metrics_counts()
test_https()
test_keys_unreachable()
test_bad_config()
deactivate_keys()
finish()
