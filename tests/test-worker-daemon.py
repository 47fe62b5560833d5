#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-worker as a daemon, with private dtask-api instances and private worker processes
(own routing key and queue, so the dev workers never see these tasks):

  - configuration errors name the key; --help, --version;
  - messages that are not task ids (or ids of unknown tasks) are acked and dropped: the queue drains;
  - the heartbeat keeps a short lease alive (no rescue by dtask-reaper while the task runs);
  - concurrency 1 runs one task at a time; the message taken ahead (WORKER_LOOKAHEAD) goes back
    to the queue after 0.1 s while the worker stays busy, and an idle worker runs it;
  - a 409 on the heartbeat (the attempt was taken away) kills the run at once;
  - an "expired" event from dtask-reaper kills the run at once;
  - SIGTERM: a running task finishes within WORKER_STOP_GRACE and is reported;
  - SIGTERM: a task still running after the grace period is killed and released (Pending again,
    attempt kept) and another worker completes it;
  - dtask-api stopped while a task finishes: the worker keeps the result and delivers it once
    dtask-api is back (same attempt, a single final state)."""

import os
import signal
import subprocess
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_worker_lib import *  # noqa: E402,F403

for exe in (API_BINARY, PUBLISH_HELPER):
    if not os.access(exe, os.X_OK):
        print(f"{exe} is not built; skipping")
        sys.exit(77)

# ---- configuration ----------------------------------------------------------------------


def run_worker(args, extra_env, timeout=30):
    e = clean_env({"API_KEY": KEY, "AMQP_URL": AMQP, "API_URL": API, **extra_env})
    for k, v in list(e.items()):
        if v is None:
            del e[k]
    r = subprocess.run([WORKER_BINARY] + args, env=e, capture_output=True, text=True, timeout=timeout, cwd="/")
    return r.returncode, r.stdout + r.stderr


rc, out = run_worker(["--help"], {})
check(rc == 0 and "--config" in out and "dtask-worker@N" in out, "--help describes the options, exit 0")
rc, out = run_worker(["--version"], {})
check(rc == 0 and out.startswith("dtask-worker "), f"--version prints the version ({out.strip()!r})")
rc, out = run_worker(["--bogus"], {})
check(rc != 0, "an unknown option fails")
rc, out = run_worker(["extra"], {})
check(rc != 0 and "no arguments" in out, "positional arguments are refused")

CONFIG_ERRORS = [
    ({"API_KEY": None}, "API_KEY", "API_KEY missing"),
    ({"API_KEY": ""}, "API_KEY", "API_KEY empty"),
    ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY", "WORKER_CONCURRENCY=0"),
    ({"WORKER_CONCURRENCY": "many"}, "WORKER_CONCURRENCY", "WORKER_CONCURRENCY not a number"),
    ({"WORKER_LOOKAHEAD": "257"}, "WORKER_LOOKAHEAD", "WORKER_LOOKAHEAD out of range"),
    ({"WORKER_STOP_GRACE": "soon"}, "WORKER_STOP_GRACE", "WORKER_STOP_GRACE not a duration"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "LOG_LEVEL unknown"),
    ({"API_URL": "not a url"}, "API_URL", "API_URL not a URL"),
    ({"API_URL": "https://127.0.0.1:1"}, "API_URL", "API_URL https (unsupported)"),
    ({"AMQP_URL": "amqps://127.0.0.1"}, "AMQP_URL", "AMQP_URL amqps (unsupported)"),
    ({"SANDBOX_UID_MIN": "62000", "SANDBOX_UID_MAX": "61000"}, "SANDBOX_UID_MIN", "SANDBOX_UID_MIN above MAX"),
    ({"SANDBOX_UID_MIN": "61000", "SANDBOX_UID_MAX": "61001", "WORKER_CONCURRENCY": "3"}, "WORKER_CONCURRENCY",
     "more concurrency than sandbox UIDs"),
    ({"PYTHON_PATH": "/nonexistent/python3"}, "PYTHON_PATH", "PYTHON_PATH missing"),
]
for extra, key, what in CONFIG_ERRORS:
    rc, out = run_worker(["--config=/dev/null"], extra)
    ok = check(rc == 1 and key in out and "Ready" not in out, f"configuration error ({what}): exit 1, names {key}")
    if not ok:
        note(f"rc={rc} output: {out.strip()[:400]!r}")
    check(KEY not in out, f"configuration error ({what}): the API key is not printed")

# ---- a private API with a short lease, and a worker on a private queue --------------------

queue, rkey = private_names()
queues = [queue]
api = PrivateApi(queue, rkey, extra_env={"LEASE_DURATION": "3s"})
worker = Worker(queue=queue, routing_key=rkey, api=api.url, extra_env={"LEASE_DURATION": "3s"})
check("Ready: worker" in worker.text(), "the worker logs that it is ready once consuming")

# messages that are not task ids, and an id of no task
for body in ['"not-a-uuid"', "{}", "\x01\x02 binary", f'"{uuid.uuid4()}"']:
    publish(rkey, body)
check(worker.wait_log("which is not claimable: No task with id", 30), "a task id of no task: claimed in vain (404), dropped")
check(worker.text().count("Dropping a message that is not a task id") >= 3,
      "three messages that are not task ids are logged and dropped")
counts = wait_for(lambda: (lambda c: c if c and c[0] == 0 and c[1] == 0 else None)(queue_counts(queue)), 30, 0.5)
if counts is None and queue_counts(queue) is None:
    note("rabbitmqctl does not answer; queue depth not checked")
else:
    check(counts is not None and counts[2] == 1, f"the queue drains: nothing ready, nothing unacked ({counts})")

# the heartbeat keeps a 3 s lease alive for a 7 s run (dtask-reaper rescues lapsed leases)
t = create("import time\ntime.sleep(7)\nprint('slept', end='')", ttl=120, base=api.url, name="worker lease")
if check(wait_for(lambda: get(t["id"], base=api.url)["status"] == 1, 30), "lease: the task runs"):
    time.sleep(4.5)
    left = sql(f"SELECT extract(epoch FROM lease_expires_at - now()) FROM tasks WHERE id = '{t['id']}'")
    check(left and left[0][0] and float(left[0][0]) > 0,
          f"lease: 4.5 s into the run the 3 s lease is still ahead ({left[0][0] if left else None} s): heartbeats")
t = wait_terminal(t["id"], timeout=60, base=api.url)
check(t["statusName"] == "Completed" and t["result"] == "slept" and t["attempt"] == 1,
      f"a 7 s run under a 3 s lease completes in attempt 1 (got {t['statusName']}, attempt {t['attempt']})")

# WORKER_CONCURRENCY=1 (the default): one run at a time, although each message is acked as soon
# as its claim is durable (the consumer pauses while the worker is busy)
code = "import time\na = time.time()\ntime.sleep(1)\nprint(a, time.time(), end='')"
ts = [create(code, ttl=120, base=api.url, name=f"worker sequential {i}") for i in range(3)]
spans = []
for x in ts:
    r = wait_terminal(x["id"], timeout=60, base=api.url)
    if r["statusName"] == "Completed":
        spans.append(tuple(float(v) for v in r["result"].split()))
spans.sort()
overlap = any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))
check(len(spans) == 3 and not overlap, f"concurrency 1: three tasks ran one after the other ({len(spans)} done, overlap {overlap})")

# WORKER_LOOKAHEAD=1 (the default): while the worker runs a task, the next message waits in it
# unclaimed, and goes back to the queue after 0.1 s (the worker then takes no more until it is
# free), so that a worker that is idle runs it meanwhile
check("with prefetch 2," in worker.text(), "lookahead: the prefetch is WORKER_CONCURRENCY + WORKER_LOOKAHEAD")
slow = create("import time\ntime.sleep(8)\nprint('slow', end='')", ttl=120, base=api.url, name="worker lookahead slow")
if check(wait_for(lambda: get(slow["id"], base=api.url)["status"] == 1, 30), "lookahead: a slow task runs"):
    quick = create("print('quick', end='')", ttl=120, base=api.url, name="worker lookahead quick")
    check(worker.wait_log(f"Message for task {quick['id']}", 10), "lookahead: the busy worker takes the next message")
    check(worker.wait_log(f"Task {quick['id']}: every slot is still busy; its message goes back to the queue", 5),
          "lookahead: the message goes back to the queue, unclaimed, while the slow run goes on")
    check(get(quick["id"], base=api.url)["status"] == 0, "lookahead: the task it held is still Pending")
    other = Worker(queue=queue, routing_key=rkey, api=api.url, extra_env={"LEASE_DURATION": "3s"})
    try:
        r = wait_terminal(quick["id"], timeout=30, base=api.url)
        who = sql(f"SELECT worker FROM tasks WHERE id = '{quick['id']}'")[0][0]
        check(r["statusName"] == "Completed" and who.endswith("/" + other.instance) and
              get(slow["id"], base=api.url)["status"] == 1,
              f"lookahead: a worker started meanwhile runs it while the first is still busy ({who})")
    finally:
        other.stop()
    r = wait_terminal(slow["id"], timeout=60, base=api.url)
    check(r["statusName"] == "Completed" and r["result"] == "slow", "lookahead: the slow task completes")
    after = create("print('after', end='')", ttl=120, base=api.url, name="worker lookahead after")
    r = wait_terminal(after["id"], timeout=30, base=api.url)
    who = sql(f"SELECT worker FROM tasks WHERE id = '{after['id']}'")[0][0]
    check(r["statusName"] == "Completed" and who.endswith("/" + worker.instance),
          f"lookahead: once free, the first worker consumes again ({who})")

# a 409 on the heartbeat kills the run at once
marker = f"dtask-fenced-{uuid.uuid4().hex[:12]}"
t = create(marker_code(marker), ttl=120, base=api.url, name="worker fenced")
running = wait_for(lambda: get(t["id"], base=api.url)["status"] == 1 and len(marker_pids(marker)) >= 3, 30)
check(running, "fenced: the task runs")
if running:
    sql(f"UPDATE tasks SET attempt = attempt + 1 WHERE id = '{t['id']}'")  # as if rescued and re-claimed
    start = time.time()
    wait_for(lambda: not marker_pids(marker), 10, 0.02)
    elapsed = time.time() - start
    check(not marker_pids(marker) and elapsed < 2.5,
          f"fenced: the run is killed {elapsed:.2f} s after its attempt was taken away (next heartbeat, every 1 s)")
    check(worker.wait_log("no longer current", 5), "fenced: the worker logs why it killed the run")
    time.sleep(1.5)
    final = get(t["id"], base=api.url)
    check(final["status"] == 1 and final["result"] is None, "fenced: the worker reported nothing over the new attempt")
http("POST", f"/api/tasks/{t['id']}/cancel", base=api.url)

# an "expired" event (dtask-reaper) kills the run at once
reaper_running = subprocess.run(["pgrep", "-x", "dtask-reaper"], capture_output=True).returncode == 0
if not reaper_running:
    note("dtask-reaper is not running: the expired-event case is skipped")
else:
    marker = f"dtask-event-{uuid.uuid4().hex[:12]}"
    t = create(marker_code(marker), ttl=300, base=api.url, name="worker expired event")
    running = wait_for(lambda: get(t["id"], base=api.url)["status"] == 1 and len(marker_pids(marker)) >= 3, 30)
    check(running, "expired event: the task runs")
    if running:
        # the worker's own timer still says 5 minutes: only the reaper's event can stop it now
        sql(f"UPDATE tasks SET expires_at = now() WHERE id = '{t['id']}'")
        start = time.time()
        wait_for(lambda: not marker_pids(marker), 10, 0.02)
        elapsed = time.time() - start
        check(not marker_pids(marker) and elapsed < 3,
              f"expired event: the run is killed {elapsed:.2f} s after expiresAt was moved (reaper every 1 s)")
        check(worker.wait_log("expired elsewhere; killing the run", 5), "expired event: the worker logs the event")
        final = wait_terminal(t["id"], 20, base=api.url)
        check(final["statusName"] == "Expired" and final["errorMessage"] == "Task expired due to TTL",
              "expired event: the task is Expired, once")

# a single sandbox UID (WORKER_CONCURRENCY=1 needs no more): the next task must wait for the
# cleanup of the slot, not find it busy and be released. Each program leaves a child with
# 150 MB behind, whose teardown keeps the slot busy for a while after the program exited.
rc = worker.stop()
check(rc == 0, f"an idle worker stops on SIGTERM with exit 0 (got {rc})")
one = Worker(queue=queue, routing_key=rkey, api=api.url,
             extra_env={"LEASE_DURATION": "3s", "SANDBOX_UID_MIN": "61990", "SANDBOX_UID_MAX": "61990"})
LEAVE_CHILD = ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    b = b'x' * (150 << 20)\n"
               "    os.write(w, b'.')\n    time.sleep(60)\nos.read(r, 1)\nprint(1, end='')\n")
try:
    ts = [create(LEAVE_CHILD, ttl=120, base=api.url, name=f"worker one slot {i}") for i in range(8)]
    done = [wait_terminal(x["id"], timeout=60, base=api.url) for x in ts]
    bad = [(r["statusName"], r["attempt"]) for r in done if r["statusName"] != "Completed" or r["attempt"] != 1]
    check(not bad and "no free sandbox slot" not in one.text(),
          f"one sandbox UID: 8 tasks in a row complete in attempt 1, none released for want of a slot ({bad})")
finally:
    one.stop()
api.stop()

# ---- shutdown and API outages, with the default lease (30 s) -------------------------------

queue, rkey = private_names()
queues.append(queue)
api = PrivateApi(queue, rkey)

# POST /api/tasks/{id}/release, the endpoint a stopping worker uses (no worker consumes this
# queue yet: the task is claimed by hand)
t = create("print(1)", ttl=120, base=api.url, name="worker release endpoint")
r = http("POST", f"/api/tasks/{t['id']}/claim", {"worker": "test/1"}, base=api.url)
check(r.status == 200 and r.json["attempt"] == 1, f"release endpoint: claimed by hand, attempt 1 ({r.status})")
r = http("POST", f"/api/tasks/{t['id']}/release", {"attempt": 2}, base=api.url)
check(r.status == 409, f"release endpoint: another attempt is fenced, 409 ({r.status})")
r = http("POST", f"/api/tasks/{t['id']}/release", {}, base=api.url)
check(r.status == 400, f"release endpoint: attempt missing, 400 ({r.status})")
r = http("POST", f"/api/tasks/{uuid.uuid4()}/release", {"attempt": 1}, base=api.url)
check(r.status == 404, f"release endpoint: unknown task, 404 ({r.status})")
r = http("POST", f"/api/tasks/{t['id']}/release", {"attempt": 1}, base=api.url, key=None)
check(r.status == 401, f"release endpoint: no API key, 401 ({r.status})")
r = http("POST", f"/api/tasks/{t['id']}/release", {"attempt": 1}, base=api.url)
after = get(t["id"], base=api.url)
check(r.status == 204 and after["statusName"] == "Pending" and after["attempt"] == 1 and after["startedAt"] is None,
      f"release endpoint: 204, the task is Pending again with attempt 1 kept ({r.status}, {after['statusName']})")
rows = sql(f"SELECT verdict, ended_at IS NOT NULL FROM task_attempts WHERE task_id = '{t['id']}' AND attempt = 1")
check(rows and rows[0][0] == "released" and rows[0][1] == "t", f"release endpoint: attempt 1 closed as released ({rows})")
check(wait_for(lambda: sql(f"SELECT count(*) FROM task_outbox WHERE task_id = '{t['id']}'")[0][0] == "0", 10),
      "release endpoint: the task is published again (broker confirmed)")
r = http("POST", f"/api/tasks/{t['id']}/release", {"attempt": 1}, base=api.url)
check(r.status == 409, f"release endpoint: releasing twice is fenced, 409 ({r.status})")
r = http("POST", f"/api/tasks/{t['id']}/claim", {"worker": "test/2"}, base=api.url)
check(r.status == 200 and r.json["attempt"] == 2, f"release endpoint: claimable again, attempt 2 ({r.status})")
http("POST", f"/api/tasks/{t['id']}/cancel", base=api.url)

# SIGTERM while a task runs: it finishes within the grace period and is reported; what the
# worker tells systemd on the way (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)
notify = NotifyListener()
w = Worker(queue=queue, routing_key=rkey, api=api.url,
           extra_env={"WORKER_STOP_GRACE": "20s", "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
check(notify.find(lambda m: m == "READY=1", 5), "sd_notify: READY=1 once consuming")
check(notify.find(lambda m: m.startswith("STATUS=Idle"), 5), "sd_notify: STATUS=Idle… while nothing runs")
check(notify.find(lambda m: m.startswith("STATUS=") and m.rstrip(".").endswith("/" + w.instance), 5),
      "sd_notify: STATUS= names the worker instance")
t = create("import time\nprint('start', flush=True)\ntime.sleep(3)\nprint('done', end='')", ttl=120, base=api.url,
           name="worker grace")
check(wait_for(lambda: get(t["id"], base=api.url)["status"] == 1, 30), "grace: the task runs")
check(notify.find(lambda m: m.startswith("STATUS=Running task " + t["id"] + " (attempt 1)"), 5),
      "sd_notify: STATUS=Running task <id> (attempt 1) while it runs")
check(wait_for(lambda: notify.all().count("WATCHDOG=1") >= 2, 3), "sd_notify: WATCHDOG=1 pings (WatchdogSec=)")
start = time.time()
w.signal(signal.SIGTERM)
rc = w.wait(40)
elapsed = time.time() - start
final = get(t["id"], base=api.url)
check(final["statusName"] == "Completed" and final["result"] == "start\ndone" and final["attempt"] == 1,
      f"grace: the running task finished and was reported before exit ({final['statusName']}, {final['result']!r})")
check(rc == 0 and elapsed < 15, f"grace: the worker exited (status {rc}) {elapsed:.1f} s after SIGTERM, once done")
check(notify.find(lambda m: m == "STOPPING=1", 1), "sd_notify: STOPPING=1 on SIGTERM")
check(notify.find(lambda m: m.startswith("STATUS=Stopping: Running task " + t["id"]), 1),
      "sd_notify: STATUS=Stopping: … while the task finishes")
w.stop()
notify.close()

# SIGTERM while a task runs past the grace period: killed, released, run by another worker
w = Worker(queue=queue, routing_key=rkey, api=api.url, extra_env={"WORKER_STOP_GRACE": "1s"})
marker = f"dtask-release-{uuid.uuid4().hex[:12]}"
code = ("import os, sys, time\n"
        "if os.fork() == 0:\n"
        f"    os.execv('/usr/bin/sleep', ['{marker}', '6'])\n"
        "time.sleep(6)\n"
        "print('finished', end='')\n")
t = create(code, ttl=120, base=api.url, name="worker release")
check(wait_for(lambda: get(t["id"], base=api.url)["status"] == 1 and marker_pids(marker), 30), "release: the task runs")
start = time.time()
w.signal(signal.SIGTERM)
rc = w.wait(30)
elapsed = time.time() - start
check(rc == 0 and 0.9 <= elapsed < 10, f"release: the worker exited (status {rc}) {elapsed:.1f} s after SIGTERM (grace 1 s)")
check(not marker_pids(marker), "release: the run's processes are gone")
mid = get(t["id"], base=api.url)
check(mid["statusName"] == "Pending" and mid["attempt"] == 1 and mid["startedAt"] is None,
      f"release: the task is Pending again, attempt 1 kept ({mid['statusName']}, attempt {mid['attempt']})")
check("released, back to Pending" in w.text(), "release: the worker logs the release")
w.stop()
w2 = Worker(queue=queue, routing_key=rkey, api=api.url)
final = wait_terminal(t["id"], timeout=60, base=api.url)
check(final["statusName"] == "Completed" and final["result"] == "finished" and final["attempt"] == 2,
      f"release: another worker completes it in attempt 2 ({final['statusName']}, attempt {final['attempt']})")
w2.stop()

# dtask-api stopped while the task finishes: the result is kept and delivered when it is back
w = Worker(queue=queue, routing_key=rkey, api=api.url)
t = create("import time\ntime.sleep(3)\nprint(42, end='')", ttl=120, base=api.url, name="worker api outage")
check(wait_for(lambda: get(t["id"], base=api.url)["status"] == 1, 30), "outage: the task runs")
api.stop()
check(w.wait_log("could not report the result", 20), "outage: the worker cannot report and keeps the result")
# a message that arrives meanwhile cannot be claimed: it is requeued after a growing delay
ghost = str(uuid.uuid4())
publish(rkey, f'"{ghost}"')
time.sleep(7)
api.start()  # same port
tries = w.text().count(f"Task {ghost}: claim failed")
check(1 <= tries <= 5, f"outage: a message that cannot be claimed is requeued with backoff, not in a loop ({tries} tries in 7 s)")
check(w.wait_log(f"Dropping the message of task {ghost}", 40),
      "outage: once dtask-api is back the message is claimed (404 here) and dropped")
final = wait_terminal(t["id"], timeout=60, base=api.url)
check(final["statusName"] == "Completed" and final["result"] == "42" and final["attempt"] == 1,
      f"outage: delivered once dtask-api is back, same attempt ({final['statusName']}, attempt {final['attempt']})")
check(w.wait_log("result delivered after", 10), "outage: the worker logs the late delivery")
w.stop()
api.stop()

for q in queues:
    delete_queue(q)
finish()
