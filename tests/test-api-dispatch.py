#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-api dispatch to RabbitMQ (SPEC §6) in the dev environment.

A private queue bound to task_exchange/task_key (tests/test-api-amqp-listen) sees what
dtask-api publishes without taking messages from real workers:
  - a created task's id arrives as a JSON string, persistent, application/json;
  - the row is marked published once the broker confirmed;
  - retry publishes again; cancel is announced on the fanout events exchange;
  - with RabbitMQ stopped, create still answers 201 and the row stays unpublished;
    /readyz says 503; after RabbitMQ is back, publishing works again.
This test stops RabbitMQ, so meson runs it alone (is_parallel: false)."""

import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
from test_api_lib import (API, ROOT, SLOW, AmqpListener, check, create, finish, http, in_outbox, row,  # noqa: E402
                          wait_for)

DEV = os.path.join(ROOT, "tools/dev")
EVENTS_EXCHANGE = os.environ.get("AMQP_EVENTS_EXCHANGE", "dtask_events")


def published(tid):
    return not in_outbox(tid)


def test_publish():
    listener = AmqpListener()
    try:
        t = create(name="dispatch me", code=SLOW).json
        msgs = listener.find(lambda m: m["body"] == f'"{t["id"]}"')
        check(len(msgs) == 1, f"the task id arrives on task_exchange/task_key as a JSON string (\"{t['id']}\")")
        if msgs:
            m = msgs[0]
            check(m["delivery_mode"] == 2 and m["content_type"] == "application/json" and
                  m["exchange"] == "task_exchange" and m["routing_key"] == "task_key",
                  "the message is persistent, application/json, exchange task_exchange, routing key task_key")
        check(wait_for(lambda: published(t["id"]), 10), "the task leaves the outbox after the broker's confirm")

        http("POST", f"/api/tasks/{t['id']}/cancel")
        r = http("POST", f"/api/tasks/{t['id']}/retry")
        check(r.status == 200 and r.json["retryCount"] == 1, "retry of the cancelled task")
        msgs = wait_for(lambda: len(listener.find(lambda m: m["body"] == f'"{t["id"]}"', 0)) >= 2, 10)
        check(msgs, "retry publishes the task id again")
        check(wait_for(lambda: published(t["id"]) and row(t["id"], "retry_count")[0] == "1", 10),
              "the retried run leaves the outbox again")
        http("POST", f"/api/tasks/{t['id']}/cancel")
        r = http("PATCH", f"/api/tasks/{t['id']}", {"status": 0})
        check(r.status == 200 and r.json["status"] == 0, "tasks:admin sets the cancelled task back to Pending by PATCH")
        check(wait_for(lambda: len(listener.find(lambda m: m["body"] == f'"{t["id"]}"', 0)) >= 3, 10)
              and wait_for(lambda: published(t["id"]), 10), "…which publishes it again")
        http("POST", f"/api/tasks/{t['id']}/cancel")
    finally:
        listener.close()


def test_cancel_event():
    events = AmqpListener(exchange=EVENTS_EXCHANGE, routing_key="")
    try:
        t = create(name="cancel event", code=SLOW).json
        http("POST", f"/api/tasks/{t['id']}/cancel")
        got = events.find(lambda m: json.loads(m["body"]).get("taskId") == t["id"])
        check(len(got) == 1 and json.loads(got[0]["body"]).get("event") == "cancelled",
              f"cancel is announced on the fanout exchange {EVENTS_EXCHANGE}")
    finally:
        events.close()


def dev(*args):
    return subprocess.run([DEV, *args], capture_output=True, text=True, timeout=180)


def test_broker_down():
    p = dev("stop", "rabbitmq")
    check(p.returncode == 0, f"tools/dev stop rabbitmq ({p.stderr.strip()[-200:]})")
    try:
        ready = wait_for(lambda: http("GET", "/readyz", key=None).status == 503, 15)
        check(ready, "/readyz is 503 while RabbitMQ is down")
        r = http("GET", "/readyz", key=None)
        check(r.json and r.json["checks"]["rabbitmq"] == "disconnected" and r.json["checks"]["postgresql"] == "ok",
              "/readyz names RabbitMQ as the problem")
        t0 = time.monotonic()
        r = create(name="created while the broker is down")
        check(r.status == 201 and time.monotonic() - t0 < 2, "create while RabbitMQ is stopped: 201, at once")
        tid = r.json["id"] if r.status == 201 else None
        time.sleep(1)
        check(tid and row(tid, "status")[0] == "0" and in_outbox(tid),
              "the row stays Pending, its message in the outbox")
        r = http("GET", f"/api/tasks/{tid}")
        check(r.status == 200 and r.json["status"] == 0, "the task can be read meanwhile")
        metrics = http("GET", "/metrics", key=None).body.decode()
        check("dtask_api_up{dependency=\"rabbitmq\"} 0" in metrics, "metrics show RabbitMQ down")
    finally:
        p = dev("start", "rabbitmq")
        check(p.returncode == 0, f"tools/dev start rabbitmq ({p.stderr.strip()[-200:]})")
    check(wait_for(lambda: http("GET", "/readyz", key=None).status == 200, 30), "/readyz is 200 again once RabbitMQ is back")
    listener = AmqpListener()
    try:
        t = create(name="after the broker came back").json
        check(len(listener.find(lambda m: m["body"] == f'"{t["id"]}"')) == 1 and wait_for(lambda: published(t["id"]), 10),
              "tasks are published again after RabbitMQ came back")
        http("POST", f"/api/tasks/{t['id']}/cancel")
    finally:
        listener.close()
    if tid:
        http("POST", f"/api/tasks/{tid}/cancel")


print(f"# dtask-api at {API}")
test_publish()
test_cancel_event()
test_broker_down()
finish()
