# SPDX-License-Identifier: MIT
"""Helpers of the dtask-worker integration tests (tests/test-worker-*.py).

Everything comes from the environment that `tools/dev test` exports (.dev/env); a test that
misses a variable exits 77 (skipped). Python standard library only.

Tests that need workers of their own (configuration, shutdown, an API that goes away) start a
private dtask-api on its own port that publishes with a private routing key, and private
dtask-worker processes consuming a private queue bound to that key: the dev workers never see
those tasks, and the dev dtask-api is never stopped."""

import http.client as httpclient
import json
import os
import socket
import subprocess
import sys
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
CONFIG = os.environ.get("DTASK_CONFIG")
ROOT = os.environ.get("DTASK_ROOT") or env("DTASK_SOURCE_ROOT")
RMQ_NODE = os.environ.get("DTASK_RABBITMQ_NODE")
PSQL = os.path.join(os.environ["DTASK_PG_BIN"], "psql") if os.environ.get("DTASK_PG_BIN") else "psql"
WORKER_BINARY = os.path.join(BUILD, "src/worker/dtask-worker")
API_BINARY = os.path.join(BUILD, "src/api/dtask-api")
PUBLISH_HELPER = os.path.join(BUILD, "tests/test-worker-amqp-publish")
SANDBOX_UID_MIN, SANDBOX_UID_MAX = 61000, 61999

if os.geteuid() != 0:
    print("the worker needs root (sandbox); skipping")
    sys.exit(77)
for exe in (WORKER_BINARY,):
    if not os.access(exe, os.X_OK):
        print(f"{exe} is not built; skipping")
        sys.exit(77)


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print(f"ok - {what}", flush=True)
    else:
        FAILED += 1
        print(f"FAIL - {what}", flush=True)
    return cond


def note(msg):
    print(f"# {msg}", flush=True)


def finish():
    print(f"{PASSED} passed, {FAILED} failed")
    sys.exit(1 if FAILED else 0)


# ---- REST ----

class Response:
    def __init__(self, status, body):
        self.status = status
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def http(method, path, body=None, base=None, key=KEY, timeout=70):
    url = urllib.parse.urlsplit(base or API)
    conn = httpclient.HTTPConnection(url.hostname, url.port, timeout=timeout)
    headers = {"X-ApiKey": key} if key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return Response(r.status, r.read())
    finally:
        conn.close()


def create(code, language="Python", input_data=None, ttl="00:05:00", base=None, name="worker test"):
    body = {"name": name, "code": code, "language": language, "ttl": ttl}
    if input_data is not None:
        body["inputData"] = input_data
    r = http("POST", "/api/tasks", body, base=base)
    if r.status == 503:  # not created (see get())
        time.sleep(2)
        r = http("POST", "/api/tasks", body, base=base)
    if r.status != 201:
        raise RuntimeError(f"POST /api/tasks: {r}")
    return r.json


def get(tid, wait=0, base=None):
    # other tests restart dtask-keys or PostgreSQL now and then: ride out a short 503
    deadline = time.monotonic() + 20
    while True:
        try:
            r = http("GET", f"/api/tasks/{tid}" + (f"?wait={wait}" if wait else ""), base=base)
            if r.status == 200:
                return r.json
            if r.status != 503 or time.monotonic() > deadline:
                raise RuntimeError(f"GET /api/tasks/{tid}: {r}")
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


TERMINAL = {2, 3, 4, 5}


def wait_terminal(tid, timeout=120, base=None):
    """The task once it is terminal (or as it is at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        t = get(tid, wait=max(1, min(30, int(left))), base=base)
        if t["status"] in TERMINAL or time.monotonic() >= deadline:
            return t
        time.sleep(0.05)


def wait_for(predicate, timeout=10, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def parse_time(s):
    """ISO-8601 UTC "…Z" (6 fraction digits) → seconds since the epoch."""
    if not s:
        return None
    s = s.rstrip("Z")
    base, _, frac = s.partition(".")
    t = time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return t + (float("0." + frac) if frac else 0.0)


def sql(query):
    out = subprocess.run([PSQL, DB, "-X", "-q", "-t", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", query],
                         capture_output=True, text=True, check=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


# ---- processes of the sandbox ----

def marker_code(marker, extra=""):
    """Python code that starts a tree of processes named `marker` (double fork, setsid, SIGTERM
    ignored) and then sleeps forever; `extra` runs first (e.g. a print)."""
    return (
        "import os, signal, sys, time\n"
        f"{extra}\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "for i in range(2):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        f"            os.execv('/usr/bin/sleep', ['{marker}', '100000'])\n"
        "        os._exit(0)\n"
        f"os.execv('/usr/bin/sleep', ['{marker}', '100000'])\n"
    )


def marker_pids(marker):
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if cmd.split(b"\0")[0] == marker.encode():
            pids.append(int(p))
    return pids


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def process_start(pid):
    """Start time of a process, in seconds since boot (like uptime())."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def sandbox_uid_pids(started_before=None):
    """Processes (not zombies) owned by a UID of the sandbox range; with started_before
    (uptime() seconds) only those started by then (runs of other tests that reuse the UID later
    do not count)."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        if SANDBOX_UID_MIN <= uid <= SANDBOX_UID_MAX and not fields.get("State", "").strip().startswith("Z"):
            try:
                if started_before is not None and process_start(p) > started_before:
                    continue
            except OSError:
                continue
            pids.append((int(p), uid))
    return pids


# ---- RabbitMQ ----

def rabbitmqctl(*args, timeout=60):
    if not RMQ_NODE:
        return None
    r = subprocess.run(["runuser", "-u", "rabbitmq", "--", "env", "HOME=/var/lib/rabbitmq",
                        "ERL_EPMD_ADDRESS=127.0.0.1", "/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", RMQ_NODE, "-q",
                        *args], capture_output=True, text=True, timeout=timeout, cwd="/var/lib/rabbitmq")
    return r.stdout if r.returncode == 0 else None


def queue_counts(queue):
    """(messages ready, unacknowledged, consumers) of a queue, None when unknown."""
    out = rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers")
    if out is None:
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == queue:
            return tuple(int(x) for x in parts[1:])
    return None


def delete_queue(queue):
    rabbitmqctl("delete_queue", queue)


def publish(routing_key, body, exchange="task_exchange"):
    r = subprocess.run([PUBLISH_HELPER, AMQP, exchange, routing_key, body], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"publish failed: {r.stderr}")


# ---- private daemons ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra):
    e = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY"):
        e.pop(k, None)
    e.update(extra)
    return e


class PrivateApi:
    """A dtask-api of this build on its own port, publishing with routing key `routing_key`
    (its publisher declares `queue` bound to that key, like the workers do)."""

    def __init__(self, queue, routing_key, port=None, extra_env=None):
        self.queue = queue
        self.routing_key = routing_key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.proc = None
        self.start()

    def start(self):
        e = clean_env({"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus", "KEYS_URL": KEYS_URL,
                       "DATABASE_URL": DB, "AMQP_URL": AMQP, "AMQP_QUEUE": self.queue,
                       "AMQP_ROUTING_KEY": self.routing_key,
                       **self.extra_env})
        if os.environ.get("DTASK_CREDENTIALS_DIRECTORY"):
            e["CREDENTIALS_DIRECTORY"] = os.environ["DTASK_CREDENTIALS_DIRECTORY"]
        args = [API_BINARY, f"--listen=127.0.0.1:{self.port}", f"--config={CONFIG}" if CONFIG else "--config=/dev/null"]
        self.log = open(os.path.join(BUILD, f"test-worker-api-{self.port}.log"), "a")
        self.proc = subprocess.Popen(args, env=e, stdout=self.log, stderr=subprocess.STDOUT, cwd="/")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if http("GET", "/readyz", base=self.url, key=None, timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"private dtask-api did not become ready (log {self.log.name})")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Worker:
    """A dtask-worker of this build. queue/routing_key: what it consumes (default: the dev
    queue); api: the base URL it reports to (default: the dev dtask-api)."""

    count = 0

    def __init__(self, queue=None, routing_key=None, api=None, extra_env=None, wait_ready=True, args=None):
        Worker.count += 1
        self.instance = f"t{os.getpid()}-{Worker.count}"
        e = {"API_URL": api or API, "API_KEY": KEY, "DTASK_WORKER_INSTANCE": self.instance, "LOG_LEVEL": "debug"}
        if queue:
            e["AMQP_QUEUE"] = queue
        if routing_key:
            e["AMQP_ROUTING_KEY"] = routing_key
        e.update(extra_env or {})
        self.env = clean_env(e)
        self.log_path = os.path.join(BUILD, f"test-worker-{self.instance}.log")
        self.log = open(self.log_path, "w")
        argv = [WORKER_BINARY] + (args if args is not None else
                                  [f"--config={CONFIG}" if CONFIG else "--config=/dev/null"])
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd="/")
        if wait_ready and not self.wait_log("Ready: worker ", 30):
            self.stop()
            raise RuntimeError(f"dtask-worker did not become ready:\n{self.text()[-3000:]}")

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, needle, timeout):
        return wait_for(lambda: needle in self.text() or self.proc.poll() is not None, timeout) and needle in self.text()

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.terminate()
            if self.wait(timeout) is None:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class NotifyListener:
    """A NOTIFY_SOCKET: collects the sd_notify() messages of a daemon."""

    def __init__(self):
        import tempfile
        import threading
        self.dir = tempfile.mkdtemp(prefix="dtask-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self.lock:
                self.messages.extend(data.decode(errors="replace").splitlines())

    def all(self):
        with self.lock:
            return list(self.messages)

    def find(self, predicate, timeout=10):
        return wait_for(lambda: [m for m in self.all() if predicate(m)], timeout)

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


def dev_workers_consuming():
    """Whether something consumes the dev queue (the dev workers of tools/dev)."""
    counts = queue_counts("task_queue")
    return counts is not None and counts[2] > 0


def private_names():
    tag = uuid.uuid4().hex[:12]
    return f"test_worker_{tag}", f"test_worker_key_{tag}"
