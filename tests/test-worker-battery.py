#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-worker end to end, the parts of the sandbox battery that need the daemon: TTL expiry of
a running task (Expired within 1 s of expiresAt, the whole process tree gone), fork bomb, memory
bomb, infinite output, and cancelling a running task (killed within 1 s, stays Cancelled).

The timings are only meaningful when a worker is free at once, so this runs through a dtask-api
and a dtask-worker of its own (private routing key and queue; the same PostgreSQL, RabbitMQ,
dtask-keys, events exchange and dtask-reaper as the dev environment)."""

import os
import re
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_worker_lib  # noqa: E402
from test_worker_lib import *  # noqa: E402,F403

for exe in (API_BINARY,):
    if not os.access(exe, os.X_OK):
        print(f"{exe} is not built; skipping")
        sys.exit(77)

queue, rkey = private_names()
api = PrivateApi(queue, rkey)
worker = Worker(queue=queue, routing_key=rkey, api=api.url, extra_env={"WORKER_CONCURRENCY": "2"})
BASE = api.url


def create(code, **kw):
    return test_worker_lib.create(code, base=BASE, **kw)


def get(tid, wait=0):
    return test_worker_lib.get(tid, wait=wait, base=BASE)


def wait_terminal(tid, timeout=120):
    return test_worker_lib.wait_terminal(tid, timeout=timeout, base=BASE)


def slot_uid(tid):
    """The sandbox UID the worker ran the task with (from its debug log)."""
    m = re.search(rf"Task {tid}, attempt \d+: running in sandbox slot (\d+)", worker.text())
    return int(m.group(1)) if m else None


def uid_processes(uid, started_before):
    return [p for p, u in sandbox_uid_pids(started_before) if u == uid]


def wait_running(tid, marker, timeout=60):
    """Waits until the task is InProgress and its marker processes exist."""
    return wait_for(lambda: get(tid)["status"] == 1 and len(marker_pids(marker)) >= 3, timeout, 0.05)


# ---- 1. a task that sleeps forever with a TTL of 3 s ----
marker = f"dtask-ttl-{uuid.uuid4().hex[:12]}"
t = create(marker_code(marker), ttl=3, name="worker battery ttl")
expires = parse_time(t["expiresAt"])
running = wait_running(t["id"], marker, timeout=3)
started = uptime()  # every process of the run exists by now
check(running, "TTL: the task runs (InProgress, its 3 processes exist) before its TTL ends")
gone_at = None
if running:
    wait_for(lambda: not marker_pids(marker), timeout=expires - time.time() + 5, interval=0.01)
    gone_at = time.time()
    check(not marker_pids(marker), "TTL: every process of the run is gone (double fork, setsid, SIGTERM ignored)")
    check(gone_at - expires <= 1.0, f"TTL: processes gone {gone_at - expires:+.3f} s after expiresAt (≤ 1 s)")
    uid = slot_uid(t["id"])
    check(uid is not None and not uid_processes(uid, started), f"TTL: no process of the run's sandbox UID {uid} is left")
t = wait_terminal(t["id"], timeout=30)
check(t["statusName"] == "Expired" and t["errorMessage"] == "Task expired due to TTL" and t["exitCode"] is None,
      'TTL: Expired, errorMessage "Task expired due to TTL", exitCode null')
completed = parse_time(t["completedAt"])
check(completed is not None and -0.05 <= completed - expires <= 1.0,
      f"TTL: completedAt {completed - expires if completed else float('nan'):+.3f} s after expiresAt (≤ 1 s)")
time.sleep(1)
check(get(t["id"])["statusName"] == "Expired", "TTL: the task stays Expired (a single final state)")

# ---- 2. limits: fork bomb, memory bomb, infinite output ----
bombs = [
    ("fork bomb", "import os\nwhile True:\n    os.fork()\n", "pids_limit"),
    ("memory bomb", "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", "memory_limit"),
    ("infinite output", "while True:\n    print('x' * 1000)\n", "output_limit"),
]
created = [(name, create(code, ttl=120, name=f"worker battery {name}"), verdict) for name, code, verdict in bombs]
for name, task, verdict in created:
    r = wait_terminal(task["id"], timeout=150)
    ok = check(r["statusName"] == "Failed" and r["verdict"] == verdict,
               f"{name}: Failed with verdict {verdict} (got {r['statusName']}/{r['verdict']})")
    if not ok:
        note(f"errorMessage: {(r['errorMessage'] or '')[:500]!r}")
    if verdict == "output_limit":
        result = r["result"] or ""
        check(r["outputTruncated"] is True and 0 < len(result.encode()) <= 1024 * 1024 and set(result) <= {"x", "\n"},
              f"{name}: outputTruncated true, the captured part kept ({len(result.encode())} bytes, at most 1 MiB)")
    else:
        check(bool((r["errorMessage"] or "").strip()), f"{name}: errorMessage says why")

# ---- 3. cancel a running task ----
marker = f"dtask-cancel-{uuid.uuid4().hex[:12]}"
t = create(marker_code(marker), ttl=300, name="worker battery cancel")
running = wait_running(t["id"], marker, timeout=60)
started = uptime()
check(running, "cancel: the task runs (InProgress, its processes exist)")
if running:
    start = time.time()
    r = http("POST", f"/api/tasks/{t['id']}/cancel", base=BASE)
    check(r.status == 200 and r.json["statusName"] == "Cancelled", "cancel: POST /cancel answers 200 Cancelled")
    wait_for(lambda: not marker_pids(marker), timeout=10, interval=0.01)
    elapsed = time.time() - start
    check(not marker_pids(marker) and elapsed <= 1.0, f"cancel: every process gone {elapsed:.3f} s after the cancel (≤ 1 s)")
    uid = slot_uid(t["id"])
    check(uid is not None and not uid_processes(uid, started), f"cancel: no process of the run's sandbox UID {uid} is left")
    time.sleep(2)
    final = get(t["id"])
    check(final["statusName"] == "Cancelled" and final["verdict"] == "cancelled",
          "cancel: the task stays Cancelled (the worker reports nothing over it)")

check(worker.stop() == 0, "the worker stops cleanly")
api.stop()
delete_queue(queue)
finish()
