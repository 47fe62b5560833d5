# SPDX-License-Identifier: MIT
"""Helpers of the fault-injection tests (tests/test-faults-*.py). Loaded with importlib (the
file name has dashes); builds on test_worker_lib (HTTP, private dtask-api and dtask-worker
processes, psql, RabbitMQ queue helpers). Python standard library only.

Every scenario runs in a Sandbox of its own: a private database in the dev PostgreSQL
cluster (migrated by its own dtask-api at start), a private queue and routing key, its own
dtask-api (short LEASE_DURATION), its own dtask-worker processes and its own dtask-reaper
--loop. The dev daemons never see these tasks: the dev reaper works on the dev database only,
so it neither rescues nor re-publishes them to the dev queue. Only the servers themselves
(PostgreSQL, RabbitMQ, dtask-keys) are shared.

A trigger of the private database records every change of status or attempt of every task
(transitions()), so a test can prove that each task reached exactly one terminal state."""

import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_worker_lib as W  # noqa: E402  (exits 77 without DTASK_*, root or the worker)

REAPER_BINARY = os.path.join(W.BUILD, "src/reaper/dtask-reaper")
DEV_TOOL = os.path.join(W.ROOT, "tools/dev")
TERMINAL = {2, 3, 4, 5}
STATUS_NAMES = {0: "Pending", 1: "InProgress", 2: "Completed", 3: "Failed", 4: "Expired", 5: "Cancelled"}

for exe in (W.API_BINARY, REAPER_BINARY):
    if not os.access(exe, os.X_OK):
        print(f"{exe} is not built; skipping")
        sys.exit(77)

check = W.check
note = W.note
finish = W.finish
wait_for = W.wait_for
parse_time = W.parse_time


def dev(*args, timeout=240):
    """tools/dev (stop|start NAME, status); returns the CompletedProcess."""
    return subprocess.run([DEV_TOOL, *args], capture_output=True, text=True, timeout=timeout)


def psql(url, query):
    out = subprocess.run([W.PSQL, url, "-X", "-q", "-t", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", query],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql: {out.stderr.strip()}")
    return [line.split("|") for line in out.stdout.splitlines() if line]


def database_url(name):
    u = urllib.parse.urlsplit(W.DB)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove_leftovers():
    """Databases and queues of earlier runs of these tests whose process is gone (killed test)."""
    try:
        names = psql(W.DB, "SELECT datname FROM pg_database WHERE datname LIKE 'dtask_faults_%'")
    except (RuntimeError, OSError):
        return
    for (name,) in names:
        parts = name.split("_")
        if len(parts) >= 4 and parts[2].isdigit() and not pid_alive(int(parts[2])):
            try:
                psql(W.DB, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except RuntimeError:
                pass
    out = W.rabbitmqctl("list_queues", "name") or ""
    for line in out.split():
        parts = line.split("_")
        if line.startswith("test_faults_") and len(parts) >= 4 and parts[2].isdigit() and not pid_alive(int(parts[2])):
            W.delete_queue(line)


TRANSITIONS_SQL = """
CREATE TABLE fault_transitions (
        seq bigserial PRIMARY KEY, task_id uuid NOT NULL, old_status smallint, new_status smallint NOT NULL,
        old_attempt integer, new_attempt integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION fault_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
        IF TG_OP = 'INSERT' THEN
                INSERT INTO fault_transitions (task_id, new_status, new_attempt) VALUES (NEW.id, NEW.status, NEW.attempt);
        ELSIF NEW.status IS DISTINCT FROM OLD.status OR NEW.attempt IS DISTINCT FROM OLD.attempt THEN
                INSERT INTO fault_transitions (task_id, old_status, new_status, old_attempt, new_attempt)
                VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt);
        END IF;
        RETURN NULL;
END $$;
CREATE TRIGGER fault_record AFTER INSERT OR UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION fault_record();
"""


class Reaper:
    """dtask-reaper --loop of this build on the sandbox's database and routing key."""

    def __init__(self, box, loop="500ms"):
        self.box = box
        self.log_path = os.path.join(W.BUILD, f"test-faults-reaper-{box.tag}-{loop}.log")
        self.log = open(self.log_path, "a")
        e = W.clean_env({"DATABASE_URL": box.db_url, "AMQP_URL": W.AMQP, "AMQP_QUEUE": box.queue,
                         "AMQP_ROUTING_KEY": box.rkey, "LOG_LEVEL": "info"})
        self.proc = subprocess.Popen([REAPER_BINARY, "--config=/dev/null", f"--loop={loop}"], env=e,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd="/")

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Sandbox:
    """A private database + queue + dtask-api (+ workers, + reaper) for one scenario."""

    def __init__(self, name, lease="3s", api_env=None):
        self.tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.name = name
        self.lease = lease
        self.db_name = f"dtask_faults_{self.tag}"
        self.db_url = database_url(self.db_name)
        self.queue = f"test_faults_{self.tag}"
        self.rkey = f"test_faults_key_{self.tag}"
        self.workers = []
        self.reaper = None
        self.api = None
        psql(W.DB, f'CREATE DATABASE "{self.db_name}"')
        try:
            self.api = W.PrivateApi(self.queue, self.rkey,
                                    extra_env={"DATABASE_URL": self.db_url, "LEASE_DURATION": lease,
                                               **(api_env or {})})
            # the API migrated the schema before it answered /readyz 200
            self.sql(TRANSITIONS_SQL)
        except BaseException:
            self.close()
            raise
        self.url = self.api.url
        note(f"{name}: database {self.db_name}, queue {self.queue}, dtask-api {self.url} (lease {lease})")

    # ---- processes ----

    def start_worker(self, concurrency=1, extra_env=None):
        w = W.Worker(queue=self.queue, routing_key=self.rkey, api=self.url,
                     extra_env={"LEASE_DURATION": self.lease, "WORKER_CONCURRENCY": str(concurrency),
                                **(extra_env or {})})
        w.name = f"{os.uname().nodename}/{w.instance}"
        self.workers.append(w)
        return w

    def start_reaper(self, loop="500ms"):
        self.reaper = Reaper(self, loop)
        return self.reaper

    def worker_by_name(self, name):
        for w in self.workers:
            if w.name == name:
                return w
        return None

    def close(self):
        for w in self.workers:
            try:
                w.stop(timeout=20)
            except Exception as e:  # noqa: BLE001
                note(f"stopping worker {w.instance}: {e}")
        if self.reaper:
            self.reaper.stop()
        if self.api and self.api.proc:
            try:
                self.api.stop()
            except Exception as e:  # noqa: BLE001
                note(f"stopping dtask-api: {e}")
        W.delete_queue(self.queue)
        for _ in range(10):
            try:
                psql(W.DB, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                break
            except RuntimeError:
                time.sleep(1)  # PostgreSQL may just be coming back

    # ---- REST, through the sandbox's dtask-api ----

    def create(self, code, ttl=300, name=None, input_data=None):
        return W.create(code, ttl=ttl, base=self.url, name=name or f"faults {self.name}", input_data=input_data)

    def get(self, tid, wait=0):
        return W.get(tid, wait=wait, base=self.url)

    def wait_terminal(self, tid, timeout=60):
        return W.wait_terminal(tid, timeout=timeout, base=self.url)

    def http(self, method, path, body=None, key=W.KEY, timeout=10):
        return W.http(method, path, body, base=self.url, key=key, timeout=timeout)

    # ---- the database ----

    def sql(self, query):
        return psql(self.db_url, query)

    def row(self, tid, columns):
        r = self.sql(f"SELECT {columns} FROM tasks WHERE id = '{tid}'")
        return r[0] if r else None

    def statuses(self, ids=None):
        """{task id: (status, attempt)} of the sandbox's tasks (or of ids)."""
        if ids is not None and not ids:
            return {}
        where = "" if ids is None else "WHERE id IN (" + ",".join(f"'{i}'" for i in ids) + ")"
        return {r[0]: (int(r[1]), int(r[2])) for r in self.sql(f"SELECT id, status, attempt FROM tasks {where}")}

    def wait_all_terminal(self, ids, timeout):
        deadline = time.monotonic() + timeout
        while True:
            st = self.statuses(ids)
            if all(s in TERMINAL for s, _ in st.values()) or time.monotonic() > deadline:
                return st
            time.sleep(0.25)

    def transitions(self, tid):
        """[(old_status, new_status, old_attempt, new_attempt)] of a task, in order."""
        rows = self.sql(f"SELECT coalesce(old_status::text, ''), new_status, coalesce(old_attempt::text, ''), "
                        f"new_attempt FROM fault_transitions WHERE task_id = '{tid}' ORDER BY seq")
        return [(int(a) if a else None, int(b), int(c) if c else None, int(d)) for a, b, c, d in rows]

    def terminal_transitions(self):
        """{task id: number of transitions into a terminal state} for every task of the sandbox."""
        rows = self.sql("SELECT t.id, count(f.seq) FROM tasks t LEFT JOIN fault_transitions f "
                        "ON f.task_id = t.id AND f.new_status >= 2 AND coalesce(f.old_status, 0) < 2 GROUP BY t.id")
        return {r[0]: int(r[1]) for r in rows}

    def attempts(self, tid):
        """[(attempt, worker, status, verdict, ended)] rows of task_attempts of a task."""
        rows = self.sql(f"SELECT attempt, coalesce(worker, ''), coalesce(status::text, ''), coalesce(verdict, ''), "
                        f"ended_at IS NOT NULL FROM task_attempts WHERE task_id = '{tid}' ORDER BY retry_count, attempt")
        return [(int(a), w, int(s) if s else None, v, e == "t") for a, w, s, v, e in rows]


def status_counts(statuses):
    counts = {}
    for s, _ in statuses.values():
        counts[STATUS_NAMES[s]] = counts.get(STATUS_NAMES[s], 0) + 1
    return counts


def percentile(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def kill9(worker):
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)


def scenario(title):
    print(f"# ---- {title}", flush=True)
    return time.monotonic()


def took(start, title):
    note(f"{title}: {time.monotonic() - start:.1f} s")


__all__ = ["W", "Sandbox", "Reaper", "dev", "psql", "check", "note", "finish", "wait_for", "parse_time",
           "status_counts", "percentile", "kill9", "scenario", "took", "remove_leftovers", "TERMINAL",
           "STATUS_NAMES", "random", "time"]
