#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""TTL precision, measured (suite integration; private database, queue, dtask-api, workers and a
dtask-reaper --loop=1s like dtask-reaper.timer, see test-faults-common.py):

  - Pending tasks with a TTL of 2 s and no worker: how long after expiresAt dtask-reaper marks
    them Expired (goal: ≤ 1.5 s with a pass every second);
  - running tasks (sleep forever) with a TTL of 2 s: how long after expiresAt every process of the
    run is gone and the task is Expired (goal: ≤ 0.5 s, the worker's own timer).

Prints p50/max over several tasks created at random moments (so that they fall on every phase of
the reaper's period). On this shared, noisy machine only generous bounds are asserted (twice the
goals); the goals themselves are reported, not asserted."""

import importlib.util
import os
import uuid

_spec = importlib.util.spec_from_file_location(
    "faults_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test-faults-common.py"))
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)
W, check, note, time, wait_for = F.W, F.check, F.note, F.time, F.wait_for

N = 8
PENDING_GOAL, PENDING_BOUND = 1.5, 3.0
RUNNING_GOAL, RUNNING_BOUND = 0.5, 1.0


def summary(label, values, goal):
    p50, mx = F.percentile(values, 50), max(values)
    print(f"# PRECISION {label}: n={len(values)} p50={p50:.3f} s max={mx:.3f} s (goal ≤ {goal} s: "
          f"{'met' if mx <= goal else 'MISSED'}) values: {' '.join(f'{v:.3f}' for v in sorted(values))}",
          flush=True)
    return mx


def test_pending(box, rng):
    start = F.scenario(f"{N} Pending tasks, TTL 2 s, no worker, dtask-reaper --loop=1s")
    ids = []
    for i in range(N):
        ids.append(box.create("print(1)", ttl=2, name=f"faults precision pending {i}")["id"])
        time.sleep(rng.uniform(0.1, 0.6))
    st = box.wait_all_terminal(ids, timeout=20)
    check(all(s == 4 for s, _ in st.values()), f"pending: all {N} Expired ({F.status_counts(st)})")
    rows = box.sql("SELECT extract(epoch FROM completed_at - expires_at), attempt, coalesce(error_message, '') "
                   "FROM tasks WHERE name LIKE 'faults precision pending %'")
    late = [float(r[0]) for r in rows]
    check(all(r[1] == "0" and r[2] == "Task expired due to TTL" for r in rows),
          "pending: never started (attempt 0), errorMessage \"Task expired due to TTL\"")
    check(min(late) >= 0, f"pending: none expired before its expiresAt (earliest {min(late):+.3f} s)")
    mx = summary("pending (completedAt - expiresAt)", late, PENDING_GOAL)
    check(mx <= PENDING_BOUND, f"pending: every task Expired within {PENDING_BOUND} s of expiresAt (max {mx:.3f} s)")
    F.took(start, "pending precision")


def test_running(box, rng):
    start = F.scenario(f"{N} running tasks (sleep forever), TTL 2 s, the worker's own timer")
    box.start_worker(concurrency=4)
    box.start_worker(concurrency=4)
    markers, ids = {}, []
    for i in range(N):
        marker = f"dtask-faults-prec-{uuid.uuid4().hex[:10]}"
        t = box.create(W.marker_code(marker), ttl=2, name=f"faults precision running {i}")
        markers[t["id"]] = (marker, F.parse_time(t["expiresAt"]))
        ids.append(t["id"])
        time.sleep(rng.uniform(0.05, 0.3))

    # one /proc scan per round: when did the last process of each run disappear
    gone, seen_running = {}, set()
    deadline = time.time() + 15
    rounds, scan_start = 0, time.time()
    while len(gone) < N and time.time() < deadline:
        rounds += 1
        alive = set()
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        alive.add(f.read().split(b"\0")[0].decode(errors="replace"))
                except OSError:
                    pass
        now = time.time()
        for tid, (marker, _) in markers.items():
            if marker in alive:
                seen_running.add(tid)
            elif tid in seen_running and tid not in gone:
                gone[tid] = now
        time.sleep(0.01)
    note(f"/proc polled every {(time.time() - scan_start) / max(rounds, 1) * 1000:.0f} ms on average")
    check(len(seen_running) == N, f"running: all {N} tasks ran before their TTL ended ({len(seen_running)})")
    check(len(gone) == len(seen_running), f"running: every run's processes are gone ({len(gone)}/{len(seen_running)})")

    st = box.wait_all_terminal(ids, timeout=20)
    check(all(s == 4 for s, _ in st.values()), f"running: all {N} Expired ({F.status_counts(st)})")
    rows = {r[0]: r[1:] for r in box.sql(
        "SELECT id, extract(epoch FROM completed_at - expires_at), coalesce(error_message, ''), "
        "exit_code IS NULL FROM tasks WHERE name LIKE 'faults precision running %'")}
    check(all(r[1] == "Task expired due to TTL" and r[2] == "t" for r in rows.values()),
          "running: errorMessage \"Task expired due to TTL\", exitCode null")
    killed = [gone[t] - markers[t][1] for t in gone]
    completed = [float(r[0]) for r in rows.values()]
    by_reaper = sum(box.reaper.text().count(f"Task {t} expired (it was running)") for t in ids)
    note(f"{N - by_reaper} expired by the worker's timer, {by_reaper} by dtask-reaper first")
    if killed:
        summary("running, processes gone (gone - expiresAt)", killed, RUNNING_GOAL)
        check(min(killed) > -0.05, f"running: no run killed before its expiresAt (earliest {min(killed):+.3f} s)")
    mx = summary("running (completedAt - expiresAt)", completed, RUNNING_GOAL)
    check(mx <= RUNNING_BOUND, f"running: every task Expired within {RUNNING_BOUND} s of expiresAt (max {mx:.3f} s)")
    F.took(start, "running precision")


F.remove_leftovers()
rng = F.random.Random()
box = F.Sandbox("precision", lease="3s")
try:
    box.start_reaper("1s")
    test_pending(box, rng)
    test_running(box, rng)
finally:
    box.close()
F.finish()
