#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""D-Bus org.dtask.Tasks1 of the dev dtask-api on the private system bus (busctl):
CreateTask, GetTask, ListTasks, UpdateTask, CancelTask, RetryTask, the TaskChanged
signal, the per-status count properties, and AccessDenied for unprivileged callers."""

import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
from test_api_lib import check, env, finish, http, insert_task, sql, sql_value  # noqa: E402

BUS = env("DBUS_SYSTEM_BUS_ADDRESS")
DEST, PATH, IFACE = "org.dtask.Tasks1", "/org/dtask/Tasks1", "org.dtask.Tasks1.Manager"
SYSTEM_OWNER = "00000000-0000-0000-0000-000000000000"


def busctl(*args, user=None):
    cmd = ["busctl", f"--address={BUS}", "--json=short", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    data = None
    if p.returncode == 0 and p.stdout.strip():
        try:
            data = json.loads(p.stdout)["data"]
        except ValueError:
            data = p.stdout
    return p.returncode, data, p.stderr.strip()


def call(method, signature, *args, user=None):
    return busctl("call", DEST, PATH, IFACE, method, signature, *[str(a) for a in args], user=user)


def prop(name):
    rc, data, _ = busctl("get-property", DEST, PATH, IFACE, name)
    return data if rc == 0 else None


rc, _, err = busctl("status", DEST)
if rc != 0:
    print(f"{DEST} is not on the bus ({err}); is the dev dtask-api running? skipping")
    sys.exit(77)

monitor = subprocess.Popen(["dbus-monitor", "--address", BUS,
                            f"type='signal',interface='{IFACE}',member='TaskChanged'"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
time.sleep(0.5)

# Sleeps, so that a real worker (if any runs) does not finish it before the cancel below.
rc, data, err = call("CreateTask", "sssss", "from dbus", "import time\ntime.sleep(120)", "python", "", "00:05:00")
check(rc == 0 and data and len(data) == 2, f"CreateTask returns an id and the task ({err})")
tid = data[0] if data else None
task = json.loads(data[1]) if data else {}
check(task.get("id") == tid and task.get("status") == 0 and task.get("language") == "Python" and
      task.get("ttl") == "00:05:00" and task.get("inputData") is None and task.get("userId") == SYSTEM_OWNER,
      "the D-Bus task is Pending and owned by the system owner id")

rc, data, err = call("CreateTask", "sssss", "bad", "print(1)", "python", "", "0")
check(rc != 0 and "ttl" in err and "greater than" in err, f"CreateTask validates like REST ({err})")
rc, data, err = call("CreateTask", "sssss", "", "print(1)", "cobol", "", "60")
check(rc != 0 and ("name" in err or "language" in err), f"CreateTask names the invalid field ({err})")

rc, data, err = call("GetTask", "s", tid)
check(rc == 0 and json.loads(data[0])["id"] == tid, "GetTask")
rc, data, err = call("GetTask", "s", "not-a-uuid")
check(rc != 0 and ("InvalidArgs" in err or "UUID" in err), f"GetTask with a malformed id: InvalidArgs ({err})")
rc, data, err = call("GetTask", "s", "2d7f6c9e-0000-4000-8000-000000000000")
check(rc != 0 and ("NotFound" in err or "No task" in err), f"GetTask of an unknown id: NotFound ({err})")

# Two Pending tasks older than anything else (no worker sees them: never queued), so that
# a page of one has a next page whatever else the database holds.
for n in range(2):
    old = insert_task(SYSTEM_OWNER, name=f"dbus paging {n}")
    sql(f"UPDATE tasks SET created_at = timestamptz '2000-01-01' + interval '{n} second' WHERE id = '{old}'")
rc, data, err = call("ListTasks", "sus", "Pending", 1, "")
check(rc == 0 and len(json.loads(data[0])) == 1 and data[1] != "", "ListTasks with limit 1 returns one task and a cursor")
if rc == 0:
    rc2, data2, _ = call("ListTasks", "sus", "Pending", 1, data[1])
    check(rc2 == 0 and json.loads(data2[0])[0]["id"] != json.loads(data[0])[0]["id"], "ListTasks continues after the cursor")
rc, data, err = call("ListTasks", "sus", "Nonsense", 0, "")
check(rc != 0, "ListTasks with an unknown status: error")

rc, data, err = call("UpdateTask", "ss", tid, json.dumps({"name": "renamed over dbus"}))
check(rc == 0 and json.loads(data[0])["name"] == "renamed over dbus", "UpdateTask with a JSON patch")
rc, data, err = call("UpdateTask", "ss", tid, "{not json")
check(rc != 0 and ("body" in err or "malformed" in err), f"UpdateTask with malformed JSON: InvalidArgs ({err})")

rc, data, err = call("CancelTask", "s", tid)
check(rc == 0 and json.loads(data[0])["status"] == 5, "CancelTask")
rc, data, err = call("CancelTask", "s", tid)
check(rc != 0 and ("Conflict" in err or "cannot be cancelled" in err), f"CancelTask twice: Conflict ({err})")
rc, data, err = call("RetryTask", "s", tid)
check(rc == 0 and json.loads(data[0])["status"] == 0 and json.loads(data[0])["retryCount"] == 1, "RetryTask")
r = http("GET", f"/api/tasks/{tid}")
check(r.status == 200 and r.json["retryCount"] == 1, "the REST API sees the D-Bus changes")
call("CancelTask", "s", tid)

# Signals: TaskChanged for the create (0), cancel (5), retry (0) and cancel (5).
time.sleep(1.0)
monitor.terminate()
out = monitor.communicate(timeout=5)[0]
signals = [line for line in out.splitlines() if "TaskChanged" in line]
check(len(signals) >= 4 and f'"{tid}"' in out, f"TaskChanged signals were emitted ({len(signals)} seen)")
check("int32 5" in out, "TaskChanged carries the integer status")

for name in ("PendingCount", "InProgressCount", "CompletedCount", "FailedCount", "ExpiredCount", "CancelledCount"):
    v = prop(name)
    check(v is not None and isinstance(v, int), f"property {name} is a number ({v})")


def count_matches(name, status, fresh):
    """Whether the property shows a count the database had within its freshness (other tests
    change the counts all the time): the database is sampled while the property is read."""
    seen = []  # (when, count)
    end = time.monotonic() + 3 * fresh
    while time.monotonic() < end:
        now = time.monotonic()
        seen.append((now, int(sql_value(f"SELECT count(*) FROM tasks WHERE status = {status}"))))
        v = prop(name)
        if any(c == v for t, c in seen if t >= now - fresh - 0.5):
            return True
        time.sleep(0.1)
    return False


# live counts within 1 s, finished ones within 10 s (the interface XML)
for name, status, fresh in (("PendingCount", 0, 1), ("CancelledCount", 5, 10)):
    check(count_matches(name, status, fresh), f"{name} matches the database within {fresh} s")

# Unprivileged callers: reading works, mutating is refused.
rc, data, err = call("GetTask", "s", tid, user="65534")
if rc != 0 and ("Permission denied" in err or "No such file" in err or "connect" in err.lower()):
    print(f"# the private bus is not reachable for uid 65534 ({err}); skipping the unprivileged checks")
else:
    check(rc == 0, f"GetTask as an unprivileged user works ({err})")
    rc, data, err = call("CreateTask", "sssss", "x", "print(1)", "python", "", "60", user="65534")
    check(rc != 0 and ("Access denied" in err or "AccessDenied" in err), f"CreateTask as an unprivileged user: AccessDenied ({err})")
    rc, data, err = call("CancelTask", "s", tid, user="65534")
    check(rc != 0 and ("Access denied" in err or "AccessDenied" in err), "CancelTask as an unprivileged user: AccessDenied")

finish()
