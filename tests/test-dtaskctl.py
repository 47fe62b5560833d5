#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtaskctl against the dev environment's dtask-api (and dtask-keys on the dev system bus):
submit (file, stdin, --input, --input-file, --json, --idempotency-key), get, list (filters,
paging), cancel, retry, errors with the server's problem detail, submit --wait with this
test playing the worker (or a real worker, whichever claims first), and the keys verbs.

Needs DTASK_API_URL and DTASK_API_KEY (tools/dev up; source .dev/env); exits 77 without them
or when dtask-api does not answer. Usage: test-dtaskctl.py DTASKCTL"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

DTASKCTL = sys.argv[1]
API = os.environ.get("DTASK_API_URL")
KEY = os.environ.get("DTASK_API_KEY")
failures = 0


def check(cond, what, r=None):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1
        if r is not None:
            print(f"     exit {r.returncode}\n     stdout: {r.stdout[:2000]!r}\n     stderr: {r.stderr[:2000]!r}")


def ctl(*args, key=None, stdin=None, timeout=60, env=None):
    e = dict(os.environ)
    e["DTASK_API_KEY"] = key or KEY
    e.update(env or {})
    return subprocess.run([DTASKCTL, *args], env=e, input=stdin, capture_output=True, text=True, timeout=timeout)


def http(method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("X-ApiKey", KEY)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, None


UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_submit_get(d):
    code = os.path.join(d, "sum.py")
    with open(code, "w") as f:
        f.write("import time\ntime.sleep(30)\nprint(sum(map(int, input().split())))\n")

    r = ctl("submit", "--input=1 2 3", "--ttl=10min", code)
    tid = r.stdout.strip()
    check(r.returncode == 0 and UUID_RE.match(tid) is not None and r.stderr == "",
          "submit FILE prints the new task id", r)
    r = ctl("get", tid, "--json")
    t = json.loads(r.stdout) if r.returncode == 0 else {}
    check(r.returncode == 0 and t.get("id") == tid and t.get("name") == "sum.py" and t.get("language") == "Python"
          and t.get("inputData") == "1 2 3" and t.get("ttl") == "00:10:00" and isinstance(t.get("status"), int)
          and t.get("code", "").startswith("import time"),
          "get --json: the task as the API returns it (name from the file, language from .py, ttl)", r)
    r = ctl("get", tid)
    check(r.returncode == 0 and re.search(r"ID: " + tid, r.stdout) and "Name: sum.py" in r.stdout
          and "Language: Python" in r.stdout and "TTL: 00:10:00" in r.stdout, "get: human-readable fields", r)
    r = ctl("get", tid, "--json=pretty")
    check(r.returncode == 0 and r.stdout.startswith("{\n") and json.loads(r.stdout)["id"] == tid,
          "get --json=pretty", r)

    inp = os.path.join(d, "input.txt")
    with open(inp, "w") as f:
        f.write("4 5\n6\n")
    r = ctl("submit", "--language=python", "--name=from stdin", "--input-file=" + inp, "--json", "-",
            stdin="print('x')\n")
    t = json.loads(r.stdout) if r.returncode == 0 else {}
    check(r.returncode == 0 and t.get("name") == "from stdin" and t.get("code") == "print('x')\n"
          and t.get("inputData") == "4 5\n6\n" and t.get("ttl") == "00:30:00",
          "submit - --input-file --json: code from stdin, input from the file, default ttl 00:30:00", r)
    ctl("cancel", t.get("id", str(uuid.uuid4())))

    key = str(uuid.uuid4())
    r1 = ctl("submit", "--idempotency-key=" + key, "--input=1", code)
    r2 = ctl("submit", "--idempotency-key=" + key, "--input=1", code)
    check(r1.returncode == 0 and r2.returncode == 0 and r1.stdout == r2.stdout,
          "submit twice with the same --idempotency-key: the same task", r2)
    ctl("cancel", r1.stdout.strip() or str(uuid.uuid4()))

    r = ctl("submit", "--ttl=2d", code)
    check(r.returncode == 1 and "ttl" in r.stderr and "HTTP 400" in r.stderr,
          "the server's validation error is printed (ttl over the maximum: HTTP 400)", r)
    return tid


def test_list(tid):
    r = ctl("list", "--all", "--json")
    tasks = json.loads(r.stdout) if r.returncode == 0 else []
    check(r.returncode == 0 and any(t["id"] == tid for t in tasks), "list --all --json finds the task", r)
    created = [t["createdAt"] for t in tasks]
    check(created == sorted(created), "list is oldest first")

    r = ctl("list", "--all")
    check(r.returncode == 0 and r.stdout.startswith("ID ") and tid in r.stdout, "list --all: a table with the task", r)

    r = ctl("list", "--limit=1")
    lines = r.stdout.splitlines()
    m = re.search(r"More tasks: dtaskctl list --after=(\S+)", r.stderr)
    check(r.returncode == 0 and len(lines) == 2 and m is not None, "list --limit=1: one row and the next cursor", r)
    if m:
        r2 = ctl("list", "--limit=1", "--after=" + m.group(1), "--json")
        page = json.loads(r2.stdout) if r2.returncode == 0 else []
        check(r2.returncode == 0 and len(page) == 1 and page[0]["id"] not in r.stdout,
              "list --after=CURSOR: the next page", r2)
    if len(tasks) >= 3:
        r = ctl("list", "--limit=3", "--json")
        page = json.loads(r.stdout) if r.returncode == 0 else []
        check(r.returncode == 0 and [t["id"] for t in page] == [t["id"] for t in tasks[:3]],
              "list --limit=3: the three oldest", r)


def test_cancel_retry(tid):
    r = ctl("cancel", tid)
    check(r.returncode == 0 and r.stdout.strip() == f"Task {tid} is Cancelled.", "cancel", r)
    r = ctl("list", "--status=cancelled", "--all", "--json")
    tasks = json.loads(r.stdout) if r.returncode == 0 else []
    check(r.returncode == 0 and any(t["id"] == tid for t in tasks) and all(t["status"] == 5 for t in tasks),
          "list --status=cancelled has it, and only cancelled tasks", r)
    r = ctl("cancel", tid)
    check(r.returncode == 1 and "HTTP 409" in r.stderr and tid in r.stderr, "cancel again: 409 detail, exit 1", r)
    r = ctl("retry", tid, "--json")
    t = json.loads(r.stdout) if r.returncode == 0 else {}
    check(r.returncode == 0 and t.get("id") == tid and t.get("retryCount") == 1 and t.get("status") in (0, 1),
          "retry --json: Pending again, retryCount 1", r)
    r = ctl("retry", tid)
    check(r.returncode == 1 and "cannot be retried" in r.stderr, "retry while not finished: exit 1 with the detail", r)
    ctl("cancel", tid)


def test_errors():
    missing = str(uuid.uuid4())
    r = ctl("get", missing)
    check(r.returncode == 1 and "HTTP 404" in r.stderr and missing in r.stderr,
          "get an unknown id: exit 1, the server's 404 detail", r)
    r = ctl("list", key="ak_" + "0" * 29)
    check(r.returncode == 1 and "HTTP 401" in r.stderr and "0" * 29 not in r.stderr,
          "an invalid key: exit 1 with the 401 detail, key not printed", r)


def play_worker(name, code, result, error, status, exit_code, verdict):
    """Takes the task of `dtaskctl submit --wait --idempotency-key=K` and completes it, unless a
    real worker claims it first. Returns the dtaskctl result and what the task ended as."""
    key = str(uuid.uuid4())
    path = os.path.join(tempfile.gettempdir(), f"{name}-{os.getpid()}.py")
    with open(path, "w") as f:
        f.write(code)
    try:
        p = subprocess.Popen([DTASKCTL, "submit", "--wait=60", "--idempotency-key=" + key, path],
                             env=dict(os.environ, DTASK_API_KEY=KEY), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        # the same request with the same key: returns dtaskctl's task (or creates it first)
        status_code, t = http("POST", "/api/tasks",
                              {"name": os.path.basename(path), "code": code, "language": "Python",
                               "ttl": "00:30:00"}, headers={"Idempotency-Key": key})
        assert status_code in (200, 201), (status_code, t)
        tid = t["id"]
        time.sleep(0.5)  # dtaskctl is waiting now
        claimed, c = http("POST", f"/api/tasks/{tid}/claim", {"worker": "test-dtaskctl"})
        if claimed == 200:
            done, _ = http("POST", f"/api/tasks/{tid}/complete",
                           {"attempt": c["attempt"], "status": status, "result": result, "errorMessage": error,
                            "exitCode": exit_code, "verdict": verdict, "outputTruncated": False})
            assert done == 200, done
        out, err = p.communicate(timeout=120)
        _, final = http("GET", f"/api/tasks/{tid}")
        return p.returncode, out, err, final, claimed == 200
    finally:
        os.unlink(path)


def test_submit_wait():
    rc, out, err, final, mine = play_worker("ok", 'print("hello from a worker")\n', "hello from a worker\n", "",
                                            2, 0, "ok")
    check(rc == 0 and out == "hello from a worker\n" and final["status"] == 2,
          f"submit --wait: prints the program's stdout, exit 0 for Completed ({'test' if mine else 'real'} worker)")
    rc, out, err, final, mine = play_worker("fail", "import sys\nprint('partial')\nsys.exit('boom')\n", "partial\n",
                                            "boom\n", 3, 1, "runtime_error")
    check(rc == 3 and out == "partial\n" and "boom" in err and "failed" in err and final["status"] == 3,
          f"submit --wait: a Failed task exits 3, stderr has its error ({'test' if mine else 'real'} worker)")


def test_keys():
    r = ctl("keys", "list")
    if r.returncode != 0 and ("not running" in r.stderr or "system bus" in r.stderr):
        print(f"skip keys verbs: {r.stderr.strip()}")
        return
    check(r.returncode == 0, "keys list", r)

    r = ctl("keys", "create", "dtaskctl test", "--claim=tasks:read", "--expires=1d", "--json")
    k = json.loads(r.stdout) if r.returncode == 0 else {}
    check(r.returncode == 0 and UUID_RE.match(k.get("id", "")) and k.get("apiKey", "").startswith("ak_"),
          "keys create --json: id and the plaintext key", r)
    if not k:
        return
    r = ctl("list", "--limit=1", key=k["apiKey"])
    check(r.returncode == 0, "the new key (tasks:read) can list tasks", r)
    r = ctl("submit", "--language=python", "-", key=k["apiKey"], stdin="print(1)\n")
    check(r.returncode == 1 and "HTTP 403" in r.stderr, "but not submit (no tasks:write): 403 detail", r)

    r = ctl("keys", "list", "--json")
    keys = json.loads(r.stdout) if r.returncode == 0 else []
    mine = [x for x in keys if x.get("id") == k["id"]]
    check(r.returncode == 0 and len(mine) == 1 and mine[0]["claims"] == ["tasks:read"] and mine[0]["isActive"]
          and mine[0]["expiresAt"] is not None and k["apiKey"] not in r.stdout,
          "keys list --json shows it (claims, active, expiry), never the key itself", r)
    r = ctl("keys", "get", k["id"])
    check(r.returncode == 0 and "Name: dtaskctl test" in r.stdout and "Active: yes" in r.stdout, "keys get", r)

    r = ctl("keys", "deactivate", k["id"])
    check(r.returncode == 0 and "deactivated" in r.stdout, "keys deactivate", r)
    deadline = time.time() + 10
    while True:
        r = ctl("list", "--limit=1", key=k["apiKey"])
        if r.returncode != 0 or time.time() > deadline:
            break
        time.sleep(0.5)
    check(r.returncode == 1 and "HTTP 401" in r.stderr, "a deactivated key stops working (401)", r)
    r = ctl("keys", "delete", k["id"])
    check(r.returncode == 0 and "deleted" in r.stdout, "keys delete", r)
    r = ctl("keys", "get", k["id"])
    check(r.returncode == 1 and k["id"] in r.stderr, "keys get of a deleted key: exit 1", r)


def main():
    if not API or not KEY:
        print("DTASK_API_URL/DTASK_API_KEY not set (tools/dev up; source .dev/env): skipped")
        sys.exit(77)
    try:
        urllib.request.urlopen(API + "/healthz", timeout=5).read()
    except (OSError, urllib.error.URLError) as e:
        print(f"dtask-api does not answer at {API} ({e}): skipped")
        sys.exit(77)

    with tempfile.TemporaryDirectory() as d:
        tid = test_submit_get(d)
        test_list(tid)
        test_cancel_retry(tid)
    test_errors()
    test_submit_wait()
    test_keys()

    if failures:
        print(f"{failures} check(s) failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
