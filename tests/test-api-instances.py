#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Several dtask-api processes of this build next to the dev instance:

  - two instances over the same PostgreSQL and RabbitMQ: a task created on one is read,
    waited on (?wait=, woken by PostgreSQL NOTIFY from the other) and retried through the
    other;
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
from test_api_lib import (API, KEY, Instance, check, create, finish, free_port, http, insert_task,  # noqa: E402
                          key_id, row, sql, wait_for)

ME = key_id(KEY)


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
        result = {}

        def wait_b():
            r = http("GET", f"/api/tasks/{tid}?wait=20", base=b.url, timeout=40)
            result.update(r=r, t=time.monotonic())

        th = threading.Thread(target=wait_b)
        th.start()
        time.sleep(0.5)
        c = http("POST", f"/api/tasks/{tid}/complete", {"attempt": 1, "status": 2, "result": "from A"})
        done = time.monotonic()
        th.join(30)
        r = result.get("r")
        check(c.status == 200 and r is not None and r.status == 200 and r.json["status"] == 2 and r.json["result"] == "from A",
              "?wait on B is answered with the result completed through A")
        if r is not None:
            check(result["t"] - done <= 0.1, f"…within 100 ms ({(result['t'] - done) * 1000:+.1f} ms)")

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
        result = {}

        def wait_b():
            t0 = time.monotonic()
            r = http("GET", f"/api/tasks/{tid}?wait=20", base=b.url, timeout=40)
            result.update(r=r, elapsed=time.monotonic() - t0)

        th = threading.Thread(target=wait_b)
        th.start()
        time.sleep(0.5)
        # Terminate the LISTEN backend (waiting until it is gone), then finish the task while
        # nobody of that instance listens: its NOTIFY cannot reach the instance.
        sql(f"SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = '{app}' "
            f"AND query LIKE 'LISTEN%'; UPDATE tasks SET status = 2, result = 'while deaf', completed_at = now() "
            f"WHERE id = '{tid}'")
        th.join(30)
        r = result.get("r")
        check(r is not None and r.status == 200 and r.json["status"] == 2 and result["elapsed"] < 10,
              f"a waiter is answered after the LISTEN connection came back ({result.get('elapsed', 0):.2f} s)")
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
test_https()
test_keys_unreachable()
test_bad_config()
finish()
