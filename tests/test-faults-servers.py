#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Fault injection on the shared servers (suite integration, runs alone: it stops and starts
the dev RabbitMQ and PostgreSQL with tools/dev). The tasks live in a private database, queue,
dtask-api, workers and dtask-reaper (see test-faults-common.py); the dev daemons ride out the
outages on their own and are checked to be healthy again at the end.

  1. RabbitMQ stopped: 20 tasks are created (all 201, at once, stored unpublished); once RabbitMQ
     is back dtask-reaper publishes them and all 20 complete, none twice (attempt 1, a single
     task_attempts row and a single terminal transition each).
  2. PostgreSQL restarted while tasks run: dtask-api answers 503 meanwhile and recovers by itself,
     the workers keep their results and retry the completions until they are accepted, queued
     tasks are claimed once the database is back; no task lost or duplicated. The lease (the
     default 30 s) spans the outage: with a lease shorter than the outage the reaper would rescue
     the tasks and they would be re-run (attempt 2), like in test-faults-workers.py (dtask-api
     outage longer than the lease)."""

import importlib.util
import os
import sys

_spec = importlib.util.spec_from_file_location(
    "faults_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test-faults-common.py"))
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)
W, check, note, time, wait_for = F.W, F.check, F.note, F.time, F.wait_for

if not W.RMQ_NODE or not os.access(F.DEV_TOOL, os.X_OK):
    print("DTASK_RABBITMQ_NODE or tools/dev missing; skipping")
    sys.exit(77)


def ready(box):
    try:
        return box.http("GET", "/readyz", key=None, timeout=5)
    except OSError as e:
        return W.Response(0, str(e).encode())


def no_duplicates(box, ids, what):
    """Every task Completed in attempt 1 with one task_attempts row and one terminal transition."""
    rows = {r[0]: r[1:] for r in box.sql("SELECT t.id, t.status, t.attempt, "
                                         "(SELECT count(*) FROM task_attempts a WHERE a.task_id = t.id) FROM tasks t")}
    term = box.terminal_transitions()
    bad = [(i, rows.get(i), term.get(i)) for i in ids if rows.get(i) != ["2", "1", "1"] or term.get(i) != 1]
    check(not bad, f"{what}: every task Completed once — attempt 1, one attempt row, one terminal transition "
                   f"({len(ids) - len(bad)}/{len(ids)}; not so: {bad[:3]})")


def dev_healthy():
    """The shared servers are back and the dev dtask-api sees both (other daemons of the dev
    environment may be restarted by others meanwhile: their state is printed, not asserted)."""
    def dev_ready():
        try:
            return W.http("GET", "/readyz", key=None, timeout=5).status == 200
        except OSError:
            return False
    ok = wait_for(dev_ready, 60, 0.5)
    status = F.dev("status").stdout
    note("tools/dev status: " + " / ".join(" ".join(x.split()) for x in status.splitlines()))
    check(ok and all(f"{n} running" in " ".join(status.split()) for n in ("postgres", "rabbitmq")),
          "the dev PostgreSQL and RabbitMQ run again and the dev dtask-api is ready")


# ---- 1. RabbitMQ down while tasks are created --------------------------------------------------

def test_rabbitmq_down():
    start = F.scenario("RabbitMQ stopped, 20 tasks created, RabbitMQ started")
    box = F.Sandbox("rabbitmq down", lease="3s")
    stopped = False
    try:
        w1, w2 = box.start_worker(), box.start_worker()
        box.start_reaper("500ms")
        t = box.create("print('before', end='')", ttl=120, name="faults rabbitmq before")
        check(box.wait_terminal(t["id"], 30)["statusName"] == "Completed", "rabbitmq: a task completes before the outage")

        t0 = time.monotonic()
        p = F.dev("stop", "rabbitmq")
        stopped = True
        check(p.returncode == 0, f"rabbitmq: tools/dev stop rabbitmq ({time.monotonic() - t0:.1f} s) "
                                 f"{p.stderr.strip()[-200:]}")
        r = wait_for(lambda: (lambda x: x if x.status == 503 else None)(ready(box)), 15, 0.2)
        check(r is not None and r.json and r.json["checks"]["rabbitmq"] == "disconnected",
              f"rabbitmq: the private dtask-api's /readyz says RabbitMQ is disconnected ({r})")

        ids, statuses, latencies = [], [], []
        for i in range(20):
            body = {"name": f"faults rabbitmq {i}", "code": f"print({i}, end='')", "language": "Python", "ttl": 300}
            c0 = time.monotonic()
            r = box.http("POST", "/api/tasks", body)
            latencies.append(time.monotonic() - c0)
            statuses.append(r.status)
            if r.status == 201:
                ids.append(r.json["id"])
        check(statuses == [201] * 20, f"rabbitmq: all 20 creates answered 201 while RabbitMQ is down "
                                      f"(slowest {max(latencies) * 1000:.0f} ms; {sorted(set(statuses))})")
        rows = box.sql("SELECT count(*) FILTER (WHERE status = 0 AND id IN (SELECT task_id FROM task_outbox)), "
                       "count(*) FROM tasks "
                       "WHERE name LIKE 'faults rabbitmq %' AND name <> 'faults rabbitmq before'")
        check(rows == [["20", "20"]], f"rabbitmq: the 20 tasks are stored Pending and unpublished ({rows})")
        time.sleep(2)

        t0 = time.monotonic()
        p = F.dev("start", "rabbitmq")
        started_at = time.monotonic()
        stopped = p.returncode != 0
        check(p.returncode == 0, f"rabbitmq: tools/dev start rabbitmq ({started_at - t0:.1f} s) "
                                 f"{p.stderr.strip()[-200:]}")
        st = box.wait_all_terminal(ids, timeout=90)
        done = time.monotonic() - started_at
        counts = F.status_counts(st)
        check(counts == {"Completed": 20}, f"rabbitmq: all 20 Completed {done:.1f} s after RabbitMQ was back ({counts})")
        results = {r[0]: r[1] for r in box.sql("SELECT name, result FROM tasks")}
        check(all(results.get(f"faults rabbitmq {i}") == str(i) for i in range(20)),
              "rabbitmq: each with its own output")
        no_duplicates(box, ids, "rabbitmq")
        republished = sum(int(x.split("=")[1]) for x in box.reaper.text().split() if x.startswith("republished="))
        note(f"dtask-reaper republished {republished} message(s); the workers dropped "
             f"{sum(w.text().count('which is not claimable') for w in (w1, w2))} stale message(s)")
        check(republished >= 20, f"rabbitmq: dtask-reaper published the 20 unpublished tasks ({republished})")
        check(all(w.wait_log("Connected to RabbitMQ again", 5) for w in (w1, w2)),
              "rabbitmq: both workers reconnected by themselves")
    finally:
        if stopped:
            F.dev("start", "rabbitmq")
        box.close()
        F.took(start, "rabbitmq scenario")


# ---- 2. PostgreSQL restarted while tasks run ---------------------------------------------------

OUTAGE = 6.0  # seconds PostgreSQL stays down


PROBES = {
    "GET a task": lambda box, i: ("GET", f"/api/tasks/{box.probe_id}", None),
    "POST a task": lambda box, i: ("POST", "/api/tasks", {"name": f"faults postgres during {i}", "code": "print(1)",
                                                          "language": "Python", "ttl": 300}),
    "GET /readyz": lambda box, i: ("GET", "/readyz", None),
}


def probe(box, kind, i, t_stop):
    """One request while PostgreSQL is down: (kind, sent at, status, latency, name of a created task)."""
    method, path, body = PROBES[kind](box, i)
    q0 = time.monotonic()
    try:
        status = box.http(method, path, body, timeout=20).status
    except OSError as e:
        status = type(e).__name__
    return (kind, q0 - t_stop, status, time.monotonic() - q0, body["name"] if body else None)


def test_postgres_restart():
    import concurrent.futures
    start = F.scenario("PostgreSQL restarted while tasks run")
    # DATABASE_TIMEOUT: how long a request waits for the database before it is answered 503 (the
    # default is 10 s; shorter here so that 503s show within the outage). The lease is the default
    # 30 s: it spans the outage, so no task is rescued and re-run.
    box = F.Sandbox("postgres restart", lease="30s", api_env={"DATABASE_TIMEOUT": "3s"})
    stopped = False
    try:
        w1, w2 = box.start_worker(concurrency=2), box.start_worker(concurrency=2)
        box.start_reaper("500ms")
        code = "import time\ntime.sleep(2.5)\nprint({i}, end='')"
        ids = [box.create(code.format(i=i), ttl=300, name=f"faults postgres {i}")["id"] for i in range(10)]
        box.probe_id = ids[0]
        # 4 run (two workers × 2), 6 wait in the queue
        running = wait_for(lambda: sum(1 for s, _ in box.statuses(ids).values() if s == 1) >= 4, 30, 0.05)
        check(running, "postgres: four tasks run, the others are queued")
        time.sleep(0.5)

        t0 = time.monotonic()
        p = F.dev("stop", "postgres")
        stopped = True
        down_at = time.monotonic()
        check(p.returncode == 0, f"postgres: tools/dev stop postgres ({down_at - t0:.1f} s) {p.stderr.strip()[-200:]}")

        # requests all through the outage, each in a thread of its own: 503, not hangs or 500s
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            futures = []
            i = 0
            while time.monotonic() < down_at + OUTAGE:
                futures += [pool.submit(probe, box, kind, i, down_at) for kind in PROBES]
                i += 1
                time.sleep(0.5)
            t0 = time.monotonic()
            p = F.dev("start", "postgres")
            back_at = time.monotonic()
            stopped = p.returncode != 0
            answers = [f.result() for f in futures]
        note(f"PostgreSQL was down {back_at - down_at:.1f} s (start took {back_at - t0:.1f} s)")
        check(p.returncode == 0, f"postgres: tools/dev start postgres {p.stderr.strip()[-200:]}")
        # The server accepts connections a moment before 'tools/dev start' returns, and requests
        # that waited for it are answered then: "during the outage" ends when it started.
        started = float(box.sql("SELECT extract(epoch FROM pg_postmaster_start_time())")[0][0])
        up_at = min(back_at, started - (time.time() - time.monotonic()))

        for kind in PROBES:
            mine = [a for a in answers if a[0] == kind]
            # answered while PostgreSQL was still down
            during = [a for a in mine if down_at + a[1] + a[3] < up_at]
            codes = sorted(set(a[2] for a in during), key=str)
            check(during and codes == [503],
                  f"postgres: {kind} while PostgreSQL is down answers 503 ({len(during)} answered during the "
                  f"outage: {codes}, slowest {max((a[3] for a in during), default=0):.2f} s)")
            later = sorted(set(a[2] for a in mine if a not in during), key=str)
            check(set(later) <= {200, 201, 503}, f"postgres: {kind} sent late in the outage and answered after it: "
                                                 f"{later} (200/201 once the database is back, or 503)")
        created = {a[4] for a in answers if a[0] == "POST a task" and a[2] == 201}
        refused = {a[4] for a in answers if a[0] == "POST a task" and a[2] != 201}
        names = [r[0] for r in box.sql("SELECT name FROM tasks WHERE name LIKE 'faults postgres during %'")]
        check(sorted(names) == sorted(created) and not refused & set(names),
              f"postgres: creates answered 503 left no task behind, those answered 201 exist once "
              f"({len(refused)} refused, {len(created)} created, {len(names)} rows)")
        check(any(w.wait_log("could not report the result", 1) for w in (w1, w2)),
              "postgres: runs that ended meanwhile could not report; the workers kept the results")

        ok = wait_for(lambda: ready(box).status == 200, 30, 0.1)
        check(ok, f"postgres: the private dtask-api is ready again by itself "
                  f"{time.monotonic() - back_at:.1f} s after PostgreSQL is back")
        r = box.http("GET", f"/api/tasks/{ids[0]}")
        check(r.status == 200, f"postgres: reads work again ({r.status})")

        st = box.wait_all_terminal(ids, timeout=90)
        counts = F.status_counts(st)
        check(counts == {"Completed": 10}, f"postgres: all 10 Completed {time.monotonic() - back_at:.1f} s after "
                                           f"PostgreSQL was back ({counts})")
        results = {r[0]: r[1] for r in box.sql("SELECT name, result FROM tasks")}
        check(all(results.get(f"faults postgres {i}") == str(i) for i in range(10)), "postgres: each with its own output")
        no_duplicates(box, ids, "postgres")
        delivered = sum(w.text().count("result delivered after") for w in (w1, w2))
        check(delivered >= 1, f"postgres: completions were retried until accepted ({delivered} delivered late)")
    finally:
        if stopped:
            F.dev("start", "postgres")
        box.close()
        F.took(start, "postgres scenario")


SCENARIOS = {"rabbitmq": test_rabbitmq_down, "postgres": test_postgres_restart}
F.remove_leftovers()
for _name in sys.argv[1:] or SCENARIOS:  # a subset by name, for working on one of them
    SCENARIOS[_name]()
dev_healthy()
F.finish()
