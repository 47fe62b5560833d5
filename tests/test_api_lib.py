# SPDX-License-Identifier: MIT
"""Helpers shared by the dtask-api integration tests (tests/test-api-*.py).

Everything comes from the environment that `tools/dev test` exports (.dev/env); a test
that misses a variable exits 77 (skipped). Only the Python standard library is used."""

import http.client as httpclient
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

PASSED = 0
FAILED = 0


def env(name):
    value = os.environ.get(name)
    if not value:
        print(f"{name} is not set (run through tools/dev test); skipping")
        sys.exit(77)
    return value


API = env("DTASK_API_URL")
KEY = env("DTASK_API_KEY")
KEYS_URL = env("DTASK_KEYS_URL")
DB = env("DTASK_DATABASE_URL")
AMQP = env("DTASK_AMQP_URL")
BUILD = env("DTASK_BUILD_ROOT")
ADMIN_USER = env("DTASK_ADMIN_USERNAME")
ADMIN_PASSWORD = env("DTASK_ADMIN_PASSWORD")
ROOT = os.environ.get("DTASK_ROOT") or env("DTASK_SOURCE_ROOT")
CONFIG = os.environ.get("DTASK_CONFIG")
PSQL = os.path.join(os.environ["DTASK_PG_BIN"], "psql") if os.environ.get("DTASK_PG_BIN") else "psql"
API_BINARY = os.path.join(BUILD, "src/api/dtask-api")

# Code for API-created tasks that a test cancels: real workers (if any run) keep it busy
# instead of finishing it before the cancel arrives. Cancelling kills it.
SLOW = "import time\ntime.sleep(120)"

TASK_FIELDS = ["id", "name", "code", "language", "inputData", "userId", "result", "status", "statusName",
               "createdAt", "startedAt", "completedAt", "expiresAt", "ttl", "errorMessage", "exitCode",
               "verdict", "outputTruncated", "retryCount", "attempt"]


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print(f"ok - {what}", flush=True)
    else:
        FAILED += 1
        print(f"FAIL - {what}", flush=True)
    return cond


def finish():
    # Tasks written to the database by insert_task() and left unfinished: cancel them, so that
    # the reaper never publishes them to real workers later.
    if INSERTED:
        try:
            ids = ", ".join(f"'{t}'" for t in INSERTED)
            sql(f"UPDATE tasks SET status = 5, verdict = 'cancelled', completed_at = now(), lease_expires_at = NULL "
                f"WHERE id IN ({ids}) AND status IN (0, 1)")
        except subprocess.CalledProcessError as e:
            print(f"# cleaning up failed: {e.stderr}")
    print(f"{PASSED} passed, {FAILED} failed")
    sys.exit(1 if FAILED else 0)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def http(method, path, body=None, key=KEY, headers=None, base=None, timeout=30, content_type="application/json"):
    """One request; body: dict/list (JSON), str or bytes (sent as is). key=None sends no key."""
    url = urllib.parse.urlsplit(base or API)
    conn = httpclient.HTTPConnection(url.hostname, url.port, timeout=timeout)
    h = dict(headers or {})
    if key is not None:
        h["X-ApiKey"] = key
    data = None
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        if content_type is not None:
            h.setdefault("Content-Type", content_type)
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def raw_status(data, base=None, timeout=10):
    """Sends raw bytes (as much as the server takes) and returns the status code of the answer."""
    url = urllib.parse.urlsplit(base or API)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        buf = b""
        try:
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
    m = buf.split(b" ", 2)
    return int(m[1]) if len(m) > 2 and m[1].isdigit() else None


def sql(query):
    out = subprocess.run([PSQL, DB, "-X", "-q", "-t", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", query],
                         capture_output=True, text=True, check=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def sql_value(query):
    rows = sql(query)
    return rows[0][0] if rows else None


def metric(base, name):
    """The value of an unlabelled integer series of dtask-api's /metrics, None when missing."""
    text = http("GET", "/metrics", key=None, base=base).body.decode()
    m = re.search(r"^" + re.escape(name) + r" (\d+)$", text, re.M)
    return int(m.group(1)) if m else None


def wait_for(predicate, timeout=10, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


# ---- API keys through the keys admin REST ----

_jwt = None


def _keys_request(method, path, body=None, jwt=None):
    h = {"Authorization": f"Bearer {jwt}"} if jwt else {}
    return http(method, path, body, key=None, headers=h, base=KEYS_URL)


def admin_jwt():
    global _jwt
    if not _jwt:
        r = _keys_request("POST", "/api/auth/login", {"username": ADMIN_USER, "password": ADMIN_PASSWORD})
        if r.status != 200:
            raise RuntimeError(f"admin login failed: {r}")
        _jwt = r.json["jwtToken"]
    return _jwt


CREATED_KEYS = []


def make_key(name, claims):
    """A new API key: returns (plaintext key, key id)."""
    r = _keys_request("POST", "/api/apikeys", {"name": name, "claims": claims}, jwt=admin_jwt())
    if r.status not in (200, 201):
        raise RuntimeError(f"creating key {name} failed: {r}")
    CREATED_KEYS.append(r.json["id"])
    return r.json["apiKey"], r.json["id"]


def deactivate_keys():
    for kid in CREATED_KEYS:
        try:
            _keys_request("PUT", f"/api/apikeys/{kid}", {"isActive": False}, jwt=admin_jwt())
        except OSError:
            pass


def key_id(key):
    r = http("POST", "/api/apikeys/validate", {"apiKey": key}, key=None, base=KEYS_URL)
    return r.json["apiKeyId"]


INSERTED = []

# ---- tasks straight in the database (for the worker protocol: no real worker sees them) ----

def insert_task(owner, status=0, ttl_seconds=3600, expires_in=None, attempt=0, name="sql task"):
    """A task that was never published to RabbitMQ but is not in the outbox either (as if the
    broker had confirmed it), so that neither real workers nor the reaper touch it: the test
    plays the worker."""
    tid = str(uuid.uuid4())
    INSERTED.append(tid)
    expires = ttl_seconds if expires_in is None else expires_in
    sql(f"""INSERT INTO tasks (id, name, code, language, input_data, owner_id, status, ttl, expires_at,
                               attempt)
            VALUES ('{tid}', '{name}', 'print(1)', 1, '1 2 3', '{owner}', {status},
                    interval '{ttl_seconds} seconds', now() + interval '{expires} seconds', {attempt})""")
    return tid


def in_outbox(tid):
    """Whether the message of the task's current run still waits for the broker's confirm."""
    return sql_value(f"SELECT count(*) FROM task_outbox WHERE task_id = '{tid}'") != "0"


def row(tid, columns):
    r = sql(f"SELECT {columns} FROM tasks WHERE id = '{tid}'")
    return r[0] if r else None


# ---- other dtask-api instances ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    """A dtask-api of this build on its own port, with the dev configuration."""

    def __init__(self, extra_env=None, tls=False, wait_ready=True):
        self.port = free_port()
        self.scheme = "https" if tls else "http"
        self.url = f"http://127.0.0.1:{self.port}"
        e = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
            e.pop(k, None)
        if os.environ.get("DTASK_CREDENTIALS_DIRECTORY"):
            e["CREDENTIALS_DIRECTORY"] = os.environ["DTASK_CREDENTIALS_DIRECTORY"]
        # The D-Bus name belongs to the dev instance: keep this one off the bus.
        e["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/bus"
        e.setdefault("KEYS_URL", KEYS_URL)
        e.setdefault("DATABASE_URL", DB)
        e.setdefault("AMQP_URL", AMQP)
        e.update(extra_env or {})
        args = [API_BINARY, f"--listen=127.0.0.1:{self.port}"]
        args.append(f"--config={CONFIG}" if CONFIG else "--config=/dev/null")
        self.log = open(os.path.join(BUILD, f"test-api-instance-{self.port}.log"), "w")
        self.proc = subprocess.Popen(args, env=e, stdout=self.log, stderr=subprocess.STDOUT, cwd="/")
        if wait_ready and not self.wait_healthy():
            self.stop()
            raise RuntimeError(f"dtask-api on port {self.port} did not become healthy (log: {self.log.name})")

    def wait_healthy(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.scheme == "https":
                    r = subprocess.run(["curl", "-skf", f"https://127.0.0.1:{self.port}/healthz"], capture_output=True)
                    if r.returncode == 0:
                        return True
                elif http("GET", "/healthz", key=None, base=self.url, timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# ---- what dtask-api publishes to RabbitMQ ----

class AmqpListener:
    """tests/test-api-amqp-listen: a private queue bound to an exchange; messages as dicts."""

    def __init__(self, exchange="task_exchange", routing_key="task_key", seconds=300):
        helper = os.path.join(BUILD, "tests/test-api-amqp-listen")
        self.proc = subprocess.Popen([helper, AMQP, exchange, routing_key, str(seconds)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.messages = []
        self.lock = threading.Lock()
        line = self.proc.stdout.readline()
        if '"ready"' not in line:
            raise RuntimeError(f"AMQP listener did not start: {line} {self.proc.stderr.read()}")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.messages.append(json.loads(line))

    def find(self, predicate, timeout=10):
        def look():
            with self.lock:
                return [m for m in self.messages if predicate(m)]
        return wait_for(look, timeout) or []

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def create(body=None, key=KEY, headers=None, base=None, **fields):
    b = {"name": "test task", "code": "print(1)", "language": "Python", "ttl": "00:10:00"}
    b.update(body or {})
    b.update(fields)
    return http("POST", "/api/tasks", b, key=key, headers=headers, base=base)
