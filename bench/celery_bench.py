# SPDX-License-Identifier: MIT
"""The Celery peer of the dtask benchmarks (bench/run).

Debian's python3-celery with RabbitMQ as the broker (a vhost of its own) and PostgreSQL as
the result backend (db+postgresql://, a database of its own). The one task runs the program
through subprocess inside exactly the bubblewrap command that bench/run uses as the floor,
so that Celery and dtask execute the same sandboxed interpreter.

    worker:  /usr/bin/python3 -m celery -A celery_bench worker --pool=prefork --concurrency=2 …
    clients: /usr/bin/python3 celery_bench.py throughput N CODE
             /usr/bin/python3 celery_bench.py latency N CODE
             /usr/bin/python3 celery_bench.py ping

Configuration comes from the environment: BENCH_CELERY_BROKER, BENCH_CELERY_BACKEND,
BENCH_CELERY_QUEUE, BENCH_SANDBOX_ARGV (a JSON list: the sandbox command up to the
interpreter). Output of the clients: one JSON object on stdout.
"""

import datetime
import json
import os
import subprocess
import sys
import time

from celery import Celery

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "dtask_bench")
SANDBOX = json.loads(os.environ.get("BENCH_SANDBOX_ARGV", "[]"))
# The result backend is a database: clients poll it. The latency client polls every 5 ms, as
# eager as is reasonable (each poll is a query). The throughput client waits with Celery's
# default of 0.5 s: its figure comes from the workers' date_done, not from when the client
# noticed, and polling every 5 ms there cost Celery ~12 % of its throughput on 2 cores (the
# client's queries compete with the workers), which would have flattered dtask.
POLL_INTERVAL = 0.005
THROUGHPUT_POLL_INTERVAL = 0.5

app = Celery("dtask_bench",
             broker=os.environ.get("BENCH_CELERY_BROKER"),
             backend=os.environ.get("BENCH_CELERY_BACKEND"))
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="dtask_bench.run")
def run(code):
    """The program in the sandbox: what a dtask worker does, without dtask."""
    p = subprocess.run(SANDBOX + ["/usr/bin/python3", "-I", "-c", code],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return {"stdout": p.stdout.decode(errors="replace"), "exit": p.returncode}


def _epoch(d):
    if isinstance(d, str):
        d = datetime.datetime.fromisoformat(d)
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)  # the backend stores naive UTC
    return d.timestamp()


def _check(value):
    return isinstance(value, dict) and value.get("exit") == 0 and value.get("stdout", "").strip() == "1"


def cmd_throughput(n, code):
    t0 = time.time()
    results = [run.delay(code) for _ in range(n)]
    submitted = time.time()
    ok = 0
    done = []
    for r in results:
        if _check(r.get(timeout=600, interval=THROUGHPUT_POLL_INTERVAL)):
            ok += 1
        done.append(_epoch(r.date_done))
    t_end = max(done)
    json.dump({"n": n, "ok": ok, "t0": t0, "submitted": submitted, "t_end": t_end,
               "seconds": t_end - t0, "per_second": n / (t_end - t0)}, sys.stdout)


def cmd_latency(n, code):
    lat = []
    ok = 0
    for _ in range(n):
        t = time.monotonic()
        v = run.delay(code).get(timeout=120, interval=POLL_INTERVAL)
        lat.append((time.monotonic() - t) * 1000.0)
        ok += _check(v)
    json.dump({"n": n, "ok": ok, "ms": lat}, sys.stdout)


def cmd_ping():
    replies = app.control.ping(timeout=1.0)
    json.dump({"replies": len(replies or [])}, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "throughput":
        cmd_throughput(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "latency":
        cmd_latency(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "ping":
        cmd_ping()
    else:
        sys.exit("usage: celery_bench.py throughput N CODE | latency N CODE | ping")
