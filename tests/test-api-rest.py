#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-api REST against the dev environment (real PostgreSQL, RabbitMQ, dtask-keys).

Covers every endpoint of SPEC §3 with its codes and bodies: service endpoints,
authentication and claims, create/get/list/patch/retry/cancel, the worker protocol
(claim, heartbeat, fenced complete), ?wait= long-polling, tenancy, Idempotency-Key and
the bad-input matrix (nothing stored, daemon keeps serving).

Tasks that the test "runs" itself (worker protocol, ?wait=) are written straight into
the database and kept out of the outbox, so that real workers never see them."""

import datetime
import json
import re
import sys
import threading
import time
import uuid

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, __import__("os").path.dirname(__file__))
from test_api_lib import (KEY, SLOW, TASK_FIELDS, check, create, deactivate_keys, finish, http, insert_task,  # noqa: E402
                          key_id, make_key, raw_status, row, sql, sql_value, wait_for)

ME = key_id(KEY)


def iso(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def problem(r, status, field=None, needle=None):
    """r is an RFC 9457 problem with this status (and an error for field containing needle)."""
    ok = r.status == status and r.header("Content-Type") == "application/problem+json" and r.json is not None \
        and r.json.get("status") == status and r.json.get("type") == "about:blank" and "title" in r.json
    if ok and field:
        errs = (r.json.get("errors") or {}).get(field) or []
        ok = bool(errs) and (needle is None or any(needle in e for e in errs)) and field in r.json.get("detail", "")
    if not ok:
        print(f"  unexpected: {r}")
    return ok


def test_service_endpoints():
    r = http("GET", "/healthz", key=None)
    check(r.status == 200, "GET /healthz is 200 without a key")
    # Tests that restart PostgreSQL or RabbitMQ may have run just before: the API's
    # connections come back within their reconnect backoff (at most 5 s).
    wait_for(lambda: http("GET", "/readyz", key=None).status == 200, timeout=30, interval=0.2)
    r = http("GET", "/readyz", key=None)
    check(r.status == 200 and r.json["checks"] == {"postgresql": "ok", "rabbitmq": "ok"},
          "GET /readyz is 200 with PostgreSQL and RabbitMQ ok")
    r = http("GET", "/openapi.json", key=None)
    doc = r.json or {}
    check(r.status == 200 and str(doc.get("openapi", "")).startswith("3.") and
          {"/api/tasks", "/api/tasks/{id}", "/api/tasks/{id}/retry", "/api/tasks/{id}/cancel",
           "/api/tasks/{id}/claim", "/api/tasks/{id}/heartbeat", "/api/tasks/{id}/complete"} <= set(doc.get("paths", {})),
          "GET /openapi.json is an OpenAPI 3 document with every task endpoint")
    check(set(TASK_FIELDS) <= set(doc.get("components", {}).get("schemas", {}).get("Task", {}).get("properties", {})),
          "the OpenAPI Task schema has every field of the wire format")
    r = http("GET", "/", key=None)
    check(r.status == 200 and r.header("Content-Type").startswith("text/html") and b"/api/tasks" in r.body
          and b"X-ApiKey" in r.body, "GET / is the HTML dashboard using the REST API with an API key")
    http("GET", "/api/tasks/" + str(uuid.uuid4()))  # a 404 to count
    r = http("GET", "/metrics", key=None)
    text = r.body.decode()
    check(r.status == 200 and r.header("Content-Type").startswith("text/plain"), "GET /metrics is Prometheus text")
    check(re.search(r'dtask_api_http_requests_total\{route="/api/tasks/\{id\}",method="GET",code="404"\} \d+', text)
          is not None, "metrics count requests by route, method and code")
    check('dtask_api_http_request_duration_seconds_bucket{route="/healthz",le="+Inf"}' in text,
          "metrics have a latency histogram per route")
    check(re.search(r'dtask_tasks\{status="Pending"\} \d+', text) is not None and
          'dtask_tasks{status="Cancelled"}' in text, "metrics have tasks by status")
    check("dtask_api_publish_failures_total" in text and "dtask_queue_lag_seconds" in text,
          "metrics have publish failures and the queue lag")


def test_auth():
    r = http("GET", "/api/tasks", key=None)
    check(problem(r, 401) and r.header("WWW-Authenticate") == "ApiKey", "no key: 401 with WWW-Authenticate: ApiKey")
    r = http("GET", "/api/tasks", key="ak_" + "x" * 29)
    check(problem(r, 401) and r.header("WWW-Authenticate") == "ApiKey", "unknown key: 401 with WWW-Authenticate: ApiKey")
    r = http("GET", "/api/tasks?limit=1&apiKey=" + KEY, key=None)
    check(r.status == 200, "compat: ?apiKey= works when the header is absent")
    reader, _ = make_key("test-api-rest reader", ["tasks:read"])
    nothing, _ = make_key("test-api-rest no claims", [])
    r = http("GET", "/api/tasks", key=nothing)
    check(problem(r, 403) and "tasks:read" in r.json["detail"], "key without tasks:read: GET is 403")
    r = create(key=reader)
    check(problem(r, 403) and "tasks:write" in r.json["detail"], "key without tasks:write: create is 403")
    tid = insert_task(ME)
    r = http("POST", f"/api/tasks/{tid}/claim", key=reader)
    check(problem(r, 403) and "tasks:execute" in r.json["detail"], "key without tasks:execute: claim is 403")


def test_create_get():
    r = create(name="sum of input", code="import sys\nprint(sum(map(int, sys.stdin.read().split())), end=\"\")",
               language="Python", inputData="1 2 3", ttl="00:30:00")
    t = r.json or {}
    check(r.status == 201, f"create: 201 ({r.status})")
    check(list(t.keys()) == TASK_FIELDS, "the task has exactly the fields of SPEC §8, in order")
    check(r.header("Location") == f"/api/tasks/{t.get('id')}", "create: Location points at the task")
    check(t.get("status") == 0 and t.get("statusName") == "Pending" and t.get("attempt") == 0 and
          t.get("retryCount") == 0 and t.get("userId") == ME and t.get("ttl") == "00:30:00" and
          t.get("language") == "Python" and t.get("inputData") == "1 2 3" and t.get("result") is None and
          t.get("errorMessage") is None and t.get("exitCode") is None and t.get("verdict") is None and
          t.get("outputTruncated") is False and t.get("startedAt") is None and t.get("completedAt") is None,
          "create: a Pending task owned by the calling key, nothing run yet")
    check((iso(t["expiresAt"]) - iso(t["createdAt"])).total_seconds() == 1800, "expiresAt = createdAt + ttl")
    check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", t["createdAt"]) is not None,
          "times are ISO-8601 UTC with microseconds")
    g = http("GET", f"/api/tasks/{t['id']}")
    same = ("id", "name", "code", "language", "inputData", "userId", "createdAt", "expiresAt", "ttl", "retryCount")
    check(g.status == 200 and list(g.json) == TASK_FIELDS and all(g.json[k] == t[k] for k in same),
          "GET returns the same task (a real worker may have started it meanwhile)")
    check(row(t["id"], "code, owner_id::text") is not None and
          row(t["id"], "code")[0].startswith("import sys"), "the task is stored")

    cases = [({"ttl": 1800, "language": "python"}, "00:30:00", "Python"),
             ({"ttl": "7.00:00:00", "language": 0}, None, "CSharp"),
             ({"ttl": "1.00:00:00", "language": 1}, "1.00:00:00", "Python"),
             ({"ttl": 90, "language": "CSHARP"}, "00:01:30", "CSharp")]
    for body, ttl, lang in cases:
        r = create(body)
        if ttl is None:
            check(problem(r, 400, "ttl", "at most 1.00:00:00"), "ttl 7 days is over MAX_TTL: 400")
            continue
        check(r.status == 201 and r.json["ttl"] == ttl and r.json["language"] == lang,
              f"create with {body}: ttl {ttl}, language {lang}")

    utf = "print('héllo wörld ☃ 𝄞')\r\n# \u0007 tab\t"
    r = create(code=utf, name="  ünïcode  ")
    check(r.status == 201 and r.json["code"] == utf and r.json["name"] == "  ünïcode  ",
          "code and name are kept byte for byte (UTF-8, control characters, CR LF)")
    check(sql_value(f"SELECT code = convert_from(decode('{utf.encode().hex()}', 'hex'), 'UTF8') "
                    f"FROM tasks WHERE id = '{r.json['id']}'") == "t", "the stored code equals the submitted bytes")

    r = http("GET", "/api/tasks/not-a-uuid")
    check(problem(r, 404), "GET with a non-UUID id: 404")
    r = http("GET", f"/api/tasks/{uuid.uuid4()}")
    check(problem(r, 404), "GET of an unknown id: 404")
    r = http("HEAD", f"/api/tasks/{t['id']}")
    check(r.status == 200 and r.body == b"", "HEAD of a task: 200 without a body")


def test_list():
    owner_key, owner = make_key("test-api-rest lister", ["tasks:read", "tasks:write"])
    ids = [create(key=owner_key, name=f"list {i}", code=SLOW).json["id"] for i in range(5)]
    r = http("GET", "/api/tasks", key=owner_key)
    check(r.status == 200 and [t["id"] for t in r.json] == ids, "list: own tasks, oldest first")
    seen, path, pages = [], "/api/tasks?limit=2", 0
    while path and pages < 10:
        r = http("GET", path, key=owner_key)
        seen += [t["id"] for t in r.json]
        link = r.header("Link")
        pages += 1
        m = re.match(r'<([^>]+)>; rel="next"', link) if link else None
        path = m.group(1) if m else None
        if pages == 1:
            check(r.status == 200 and len(r.json) == 2 and m is not None, "list ?limit=2: 2 tasks and a Link rel=next")
    check(seen == ids and pages == 3, f"following Link headers visits every task once ({pages} pages)")
    http("POST", f"/api/tasks/{ids[1]}/cancel", key=owner_key)
    r = http("GET", "/api/tasks?status=Cancelled", key=owner_key)
    check(r.status == 200 and [t["id"] for t in r.json] == [ids[1]], "list ?status=Cancelled filters")
    r = http("GET", "/api/tasks?status=5", key=owner_key)
    check(r.status == 200 and [t["id"] for t in r.json] == [ids[1]], "list ?status=5 filters by number")
    for q, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"), ("status=Done", "status"),
                     ("after=garbage", "after")):
        r = http("GET", "/api/tasks?" + q, key=owner_key)
        check(problem(r, 400, field), f"list ?{q}: 400 naming {field}")
    r = http("GET", "/api/tasks?limit=1000", key=owner_key)
    check(r.status == 200 and len(r.json) == 5, "list ?limit=1000 is allowed")
    for tid in ids:
        http("POST", f"/api/tasks/{tid}/cancel", key=owner_key)


def test_idempotency():
    k = f"idem-{uuid.uuid4()}"
    a = create(name="idempotent", headers={"Idempotency-Key": k})
    b = create(name="idempotent", headers={"Idempotency-Key": k})
    check(a.status == 201 and b.status == 200 and a.json["id"] == b.json["id"] and
          b.header("Location") == f"/api/tasks/{a.json['id']}", "same Idempotency-Key, same body: 200 with the original task")
    c = create(name="something else", headers={"Idempotency-Key": k})
    check(problem(c, 422) and "Idempotency-Key" in c.json["detail"], "same Idempotency-Key, other body: 422")
    n = sql_value(f"SELECT count(*) FROM idempotency_keys WHERE key = '{k}'")
    check(n == "1", "one idempotency record")
    other, _ = make_key("test-api-rest idem", ["tasks:read", "tasks:write"])
    d = create(name="idempotent", key=other, headers={"Idempotency-Key": k})
    check(d.status == 201 and d.json["id"] != a.json["id"], "the same Idempotency-Key of another owner is independent")
    e = create(name="idempotent", headers={"Idempotency-Key": ""})
    check(problem(e, 400, "Idempotency-Key"), "an empty Idempotency-Key: 400")
    # Concurrent requests with one key: exactly one task.
    k2 = f"idem-{uuid.uuid4()}"
    results = []
    threads = [threading.Thread(target=lambda: results.append(create(name="race", headers={"Idempotency-Key": k2})))
               for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ids = {r.json["id"] for r in results if r.status in (200, 201)}
    check(len(ids) == 1 and sorted(r.status for r in results).count(201) == 1,
          f"6 concurrent creates with one Idempotency-Key: one task, one 201 ({sorted(r.status for r in results)})")


def test_patch():
    writer, writer_id = make_key("test-api-rest writer", ["tasks:read", "tasks:write"])
    worker, _ = make_key("test-api-rest worker", ["tasks:read", "tasks:execute"])
    # Written to the database directly: no real worker may start it while it is patched.
    t = http("GET", f"/api/tasks/{insert_task(writer_id, name='patch me')}", key=writer).json
    before = row(t["id"], "status, result, error_message, started_at, completed_at, owner_id::text")
    r = http("PATCH", f"/api/tasks/{t['id']}", {"status": 2, "result": "forged", "userId": str(uuid.uuid4())}, key=writer)
    check(problem(r, 403, "status") and "result" in r.json["errors"] and "userId" in r.json["errors"],
          "PATCH by a tasks:write key cannot set status/result/userId: 403 naming the fields")
    check(row(t["id"], "status, result, error_message, started_at, completed_at, owner_id::text") == before,
          "…and nothing changed")
    r = http("PATCH", f"/api/tasks/{t['id']}", {"name": "renamed", "code": None, "ttl": "00:20:00", "id": str(uuid.uuid4()),
                                                 "createdAt": "2000-01-01T00:00:00Z", "retryCount": 42}, key=writer)
    p = r.json or {}
    check(r.status == 200 and p.get("name") == "renamed" and p.get("code") == t["code"] and p.get("id") == t["id"] and
          p.get("createdAt") == t["createdAt"] and p.get("retryCount") == 0 and p.get("ttl") == "00:20:00",
          "PATCH: non-null fields overwrite, null ones stay, id/createdAt/retryCount are ignored")
    check(abs((iso(p["expiresAt"]) - iso(t["expiresAt"])).total_seconds() + 2400) < 0.001,
          "PATCH ttl moves expiresAt by the difference (1 h → 20 min)")
    r = http("PATCH", f"/api/tasks/{t['id']}", {"language": "csharp", "inputData": "x"},
             headers={"Content-Type": "application/merge-patch+json"}, key=writer, content_type=None)
    check(r.status == 200 and r.json["language"] == "CSharp" and r.json["inputData"] == "x",
          "PATCH with application/merge-patch+json")
    r = http("PATCH", f"/api/tasks/{t['id']}", {"ttl": 0}, key=writer)
    check(problem(r, 400, "ttl"), "PATCH ttl 0: 400 naming ttl")
    r = http("PATCH", f"/api/tasks/{t['id']}", {"result": "42", "errorMessage": "", "status": "Failed"}, key=worker)
    check(problem(r, 403) and "tasks:write" in r.json["detail"], "PATCH needs tasks:write even with tasks:execute (403)")
    both, _ = make_key("test-api-rest writer+executor", ["tasks:read", "tasks:write", "tasks:execute"])
    r = http("PATCH", f"/api/tasks/{t['id']}", {"result": "42"}, key=both)
    check(problem(r, 404), "tasks:execute without tasks:admin does not reach another owner's task (404)")
    r = http("PATCH", f"/api/tasks/{t['id']}", {"result": "42", "status": 3, "completedAt": "2026-01-02T03:04:05Z"})
    check(r.status == 200 and r.json["result"] == "42" and r.json["status"] == 3 and
          r.json["completedAt"] == "2026-01-02T03:04:05.000000Z", "PATCH by tasks:admin may set execution fields")
    running = insert_task(writer_id, status=1, attempt=1)
    r = http("PATCH", f"/api/tasks/{running}", {"code": "print(2)"}, key=writer)
    check(problem(r, 409) and row(running, "code")[0] == "print(1)", "PATCH code of an InProgress task: 409, unchanged")
    r = http("PATCH", f"/api/tasks/{running}", {"name": "new name"}, key=writer)
    check(r.status == 200 and r.json["name"] == "new name", "PATCH name of an InProgress task is fine")
    r = http("PATCH", f"/api/tasks/{uuid.uuid4()}", {"name": "x"}, key=writer)
    check(problem(r, 404), "PATCH unknown task: 404")


def test_worker_protocol():
    worker, _ = make_key("test-api-rest worker protocol", ["tasks:read", "tasks:execute"])
    tid = insert_task(ME)
    r = http("POST", f"/api/tasks/{tid}/claim", key=worker, headers={"X-Worker": "test-host/1"})
    t = r.json or {}
    check(r.status == 200 and t.get("status") == 1 and t.get("attempt") == 1 and t.get("startedAt"),
          "claim: 200, InProgress, attempt 1, startedAt set")
    lease1, who = row(tid, "lease_expires_at, worker")
    check(who == "test-host/1", "claim records the worker name from X-Worker")
    check(sql(f"SELECT count(*) FROM task_attempts WHERE task_id = '{tid}'") == [["0"]],
          "claim writes no history row: the running attempt is the task's own (attempt, worker, startedAt)")
    r = http("POST", f"/api/tasks/{tid}/claim", key=worker)
    check(problem(r, 409) and "not claimable" in r.json["detail"], "second claim: 409")
    time.sleep(0.05)
    r = http("POST", f"/api/tasks/{tid}/heartbeat", {"attempt": 1}, key=worker)
    check(r.status == 204 and r.body == b"", "heartbeat of the current attempt: 204")
    check(sql_value(f"SELECT lease_expires_at > '{lease1}'::timestamptz FROM tasks WHERE id = '{tid}'") == "t",
          "heartbeat extends the lease")
    r = http("POST", f"/api/tasks/{tid}/heartbeat", {"attempt": 2}, key=worker)
    check(problem(r, 409) and "no longer current" in r.json["detail"], "heartbeat of another attempt: 409")
    r = http("POST", f"/api/tasks/{tid}/heartbeat", {}, key=worker)
    check(problem(r, 400, "attempt"), "heartbeat without attempt: 400")
    r = http("POST", f"/api/tasks/{tid}/complete", {"attempt": 2, "status": 2, "result": "late"}, key=worker)
    check(problem(r, 409) and row(tid, "status, result") == ["1", ""], "complete with a wrong attempt: 409, nothing changes")
    body = {"attempt": 1, "status": 2, "result": "6", "errorMessage": "", "exitCode": 0, "outputTruncated": False}
    r = http("POST", f"/api/tasks/{tid}/complete", body, key=worker)
    t = r.json or {}
    check(r.status == 200 and t.get("status") == 2 and t.get("statusName") == "Completed" and t.get("result") == "6" and
          t.get("errorMessage") == "" and t.get("exitCode") == 0 and t.get("verdict") == "ok" and t.get("completedAt"),
          "complete: 200, Completed with result, exitCode, verdict ok")
    hist = sql(f"SELECT a.attempt, a.worker, a.status, a.verdict, a.exit_code, a.started_at = t.started_at, "
               f"a.ended_at = t.completed_at FROM task_attempts a JOIN tasks t ON t.id = a.task_id "
               f"WHERE t.id = '{tid}'")
    check(hist == [["1", "test-host/1", "2", "ok", "0", "t", "t"]],
          f"complete writes the attempt's history row: worker, start and end as the task's, status, verdict ({hist})")
    snapshot = row(tid, "status, result, completed_at, updated_at")
    r = http("POST", f"/api/tasks/{tid}/complete", dict(body, status=3, result="dup"), key=worker)
    check(problem(r, 409) and row(tid, "status, result, completed_at, updated_at") == snapshot,
          "duplicate complete: 409 and the row is unchanged")

    failed = insert_task(ME)
    http("POST", f"/api/tasks/{failed}/claim", key=worker)
    r = http("POST", f"/api/tasks/{failed}/complete",
             {"attempt": 1, "status": "Failed", "errorMessage": "Traceback…", "exitCode": 1, "verdict": "runtime_error",
              "outputTruncated": True}, key=worker)
    check(r.status == 200 and r.json["status"] == 3 and r.json["verdict"] == "runtime_error" and
          r.json["outputTruncated"] is True and r.json["errorMessage"] == "Traceback…", "complete as Failed with a verdict")

    expired = insert_task(ME)
    http("POST", f"/api/tasks/{expired}/claim", key=worker)
    sql(f"UPDATE tasks SET status = 4, error_message = 'Task expired due to TTL', completed_at = now() WHERE id = '{expired}'")
    r = http("POST", f"/api/tasks/{expired}/complete", {"attempt": 1, "status": 2, "result": "too late"}, key=worker)
    check(problem(r, 409) and row(expired, "status, result") == ["4", ""], "a late result of an Expired task: 409, it stays Expired")

    overdue = insert_task(ME, expires_in=-1)
    r = http("POST", f"/api/tasks/{overdue}/claim", key=worker)
    check(problem(r, 409) and "expired" in r.json["detail"], "a Pending task past expiresAt is not claimable")
    check(row(overdue, "status, error_message") == ["4", "Task expired due to TTL"], "…and is marked Expired")

    r = http("POST", f"/api/tasks/{uuid.uuid4()}/claim", key=worker)
    check(problem(r, 404), "claim of an unknown task: 404")
    r = http("POST", f"/api/tasks/{tid}/complete", {"attempt": 1, "status": 1}, key=worker)
    check(problem(r, 400, "status"), "complete with status InProgress: 400 naming status")
    claimed = insert_task(ME)
    r = http("POST", f"/api/tasks/{claimed}/claim", {"worker": "body-worker"}, key=worker)
    check(r.status == 200 and row(claimed, "worker") == ["body-worker"], "claim takes the worker name from the body too")


def test_retry_cancel():
    tid = insert_task(ME)
    http("POST", f"/api/tasks/{tid}/claim")
    http("POST", f"/api/tasks/{tid}/complete", {"attempt": 1, "status": 3, "result": "out", "errorMessage": "err",
                                                "exitCode": 2, "verdict": "runtime_error", "outputTruncated": True})
    r = http("POST", f"/api/tasks/{tid}/retry")
    t = r.json or {}
    now = datetime.datetime.now(datetime.timezone.utc)
    check(r.status == 200 and t.get("status") == 0 and t.get("result") is None and t.get("errorMessage") is None and
          t.get("startedAt") is None and t.get("completedAt") is None and t.get("exitCode") is None and
          t.get("verdict") is None and t.get("outputTruncated") is False and t.get("retryCount") == 1 and
          t.get("attempt") == 0, "retry: Pending, execution fields cleared, retryCount 1, attempt 0")
    check(abs((iso(t["expiresAt"]) - now).total_seconds() - 3600) < 5, "retry: expiresAt = now + ttl")
    r = http("POST", f"/api/tasks/{tid}/retry")
    check(problem(r, 409) and "cannot be retried" in r.json["detail"], "retry of a Pending task: 409 'cannot be retried'")
    # The retry published the task: a real worker may claim the new run first. Either way the
    # new run (retry_count 1) gets attempt 1.
    r = http("POST", f"/api/tasks/{tid}/claim")
    check((r.status == 200 and r.json["attempt"] == 1 and r.json["retryCount"] == 1) or
          (r.status == 409 and row(tid, "retry_count, attempt") == ["1", "1"]), "the retried task is claimable again")
    tid = insert_task(ME)
    http("POST", f"/api/tasks/{tid}/claim")
    r = http("POST", f"/api/tasks/{tid}/retry")
    check(problem(r, 409) and "cannot be retried" in r.json["detail"], "retry of an InProgress task: 409")
    r = http("POST", f"/api/tasks/{tid}/cancel")
    check(r.status == 200 and r.json["status"] == 5 and r.json["statusName"] == "Cancelled" and
          r.json["verdict"] == "cancelled" and r.json["completedAt"], "cancel of an InProgress task: Cancelled")
    check(sql(f"SELECT attempt, status, verdict, ended_at IS NOT NULL FROM task_attempts WHERE task_id = '{tid}'")
          == [["1", "5", "cancelled", "t"]], "cancel writes the running attempt's history row")
    r = http("POST", f"/api/tasks/{tid}/complete", {"attempt": 1, "status": 2})
    check(problem(r, 409) and row(tid, "status")[0] == "5", "a result after cancel is refused")
    r = http("POST", f"/api/tasks/{tid}/cancel")
    check(problem(r, 409) and "cannot be cancelled" in r.json["detail"], "cancel of a finished task: 409")
    pending = create(code=SLOW).json["id"]
    r = http("POST", f"/api/tasks/{pending}/cancel")
    check(r.status == 200 and r.json["status"] == 5, "cancel of a Pending task")
    r = http("POST", f"/api/tasks/{pending}/retry")
    check(r.status == 200 and r.json["status"] == 0 and r.json["retryCount"] == 1, "retry of a Cancelled task")
    http("POST", f"/api/tasks/{pending}/cancel")
    for verb in ("retry", "cancel"):
        r = http("POST", f"/api/tasks/{uuid.uuid4()}/{verb}")
        check(problem(r, 404), f"{verb} of an unknown task: 404")
        r = http("POST", f"/api/tasks/xyz/{verb}")
        check(problem(r, 404), f"{verb} with a non-UUID id: 404")


def test_wait():
    tid = insert_task(ME)
    http("POST", f"/api/tasks/{tid}/claim")
    result = {}

    def waiter():
        t0 = time.monotonic()
        r = http("GET", f"/api/tasks/{tid}?wait=20", timeout=40)
        result.update(r=r, t=time.monotonic(), elapsed=time.monotonic() - t0)

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.7)
    t_sent = time.monotonic()
    c = http("POST", f"/api/tasks/{tid}/complete", {"attempt": 1, "status": 2, "result": "done"})
    t_done = time.monotonic()
    th.join(30)
    r = result.get("r")
    check(c.status == 200 and r is not None and r.status == 200 and r.json["status"] == 2 and r.json["result"] == "done",
          "?wait=20 answers with the completed task")
    if r is not None:
        lag = result["t"] - t_done
        check(result["t"] >= t_sent and lag <= 0.1,
              f"?wait answered within 100 ms of the completion (answer {lag * 1000:+.1f} ms after complete returned, "
              f"complete took {(t_done - t_sent) * 1000:.1f} ms)")
        check(result["elapsed"] >= 0.6, "…and not before it")

    pending = insert_task(ME)
    t0 = time.monotonic()
    r = http("GET", f"/api/tasks/{pending}?wait=1")
    dt = time.monotonic() - t0
    check(r.status == 200 and r.json["status"] == 0 and 0.95 <= dt < 2.0, f"?wait=1 on a Pending task answers after ~1 s ({dt:.2f} s)")
    t0 = time.monotonic()
    r = http("GET", f"/api/tasks/{tid}?wait=30")
    check(r.status == 200 and time.monotonic() - t0 < 0.5, "?wait on a finished task answers at once")
    r = http("GET", f"/api/tasks/{pending}?wait=0")
    check(r.status == 200 and r.json["status"] == 0, "?wait=0 answers at once")
    for w in ("61", "-1", "abc", "1.5", ""):
        r = http("GET", f"/api/tasks/{pending}?wait={w}")
        check(problem(r, 400, "wait"), f"?wait={w}: 400 naming wait")
    r = http("GET", f"/api/tasks/{uuid.uuid4()}?wait=5")
    check(problem(r, 404), "?wait on an unknown task: 404 at once")

    # Several waiters on one task, cancel wakes them all.
    many = insert_task(ME)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(http("GET", f"/api/tasks/{many}?wait=20", timeout=40)))
               for _ in range(5)]
    [t.start() for t in threads]
    time.sleep(0.5)
    http("POST", f"/api/tasks/{many}/cancel")
    [t.join(25) for t in threads]
    check(len(answers) == 5 and all(a.status == 200 and a.json["status"] == 5 for a in answers),
          "5 waiters on one task are all answered when it is cancelled")


def test_tenancy():
    a_key, a_id = make_key("test-api-rest tenant A", ["tasks:read", "tasks:write"])
    b_key, b_id = make_key("test-api-rest tenant B", ["tasks:read", "tasks:write"])
    t = create(key=a_key, name="A's task").json
    check(t["userId"] == a_id, "the owner is the creating key")
    r = http("GET", f"/api/tasks/{t['id']}", key=b_key)
    check(problem(r, 404), "another tenant's task: GET is 404, not 403")
    r = http("GET", "/api/tasks?limit=1000", key=b_key)
    check(r.status == 200 and all(x["userId"] == b_id for x in r.json) and t["id"] not in [x["id"] for x in r.json],
          "another tenant's tasks are not listed")
    for method, path, body in (("PATCH", "", {"name": "x"}), ("POST", "/retry", None), ("POST", "/cancel", None)):
        r = http(method, f"/api/tasks/{t['id']}{path}", body, key=b_key)
        check(problem(r, 404), f"another tenant's task: {method} {path or '/'} is 404")
    r = http("GET", f"/api/tasks/{t['id']}?wait=1", key=b_key)
    check(problem(r, 404), "another tenant's task: ?wait is 404")
    r = row(t["id"], "name, status")
    check(r[0] == "A's task" and r[1] != "5", "the other tenant changed nothing")
    r = http("GET", f"/api/tasks/{t['id']}")
    check(r.status == 200 and r.json["id"] == t["id"], "tasks:admin reads every tenant's task")
    r = http("GET", f"/api/tasks?status=Pending&limit=1000&after=0-{uuid.UUID(int=0)}")
    check(r.status == 200, "tasks:admin lists every tenant")
    r = http("GET", f"/api/tasks/{t['id']}", key=a_key)
    check(r.status == 200, "the owner reads its task")


def test_bad_input():
    bad_key, bad_id = make_key("test-api-rest bad input", ["tasks:read", "tasks:write"])
    count = lambda: sql_value(f"SELECT count(*) FROM tasks WHERE owner_id = '{bad_id}'")  # noqa: E731
    good = {"name": "n", "code": "print(1)", "language": "Python", "ttl": 60}

    def with_(**kw):
        b = dict(good)
        for k, v in kw.items():
            if v is KeyError:
                b.pop(k)
            else:
                b[k] = v
        return b

    matrix = [
        (with_(name=KeyError), "name", "required"), (with_(name=None), "name", "required"),
        (with_(name=""), "name", "empty"), (with_(name="   "), "name", "blank"), (with_(name=7), "name", "string"),
        (with_(name="x" * 251), "name", "250"), (with_(name=["a"]), "name", "string"),
        (with_(code=KeyError), "code", "required"), (with_(code=""), "code", "empty"), (with_(code=1), "code", "string"),
        (with_(code="x" * (64 * 1024 + 1)), "code", "65536 bytes"), (with_(code="a\u0000b"), "code", "NUL"),
        (with_(language=KeyError), "language", "required"), (with_(language="ruby"), "language", "Python"),
        (with_(language=2), "language", "Python"), (with_(language=-1), "language", "Python"),
        (with_(language=None), "language", "required"), (with_(language=True), "language", "Python"),
        (with_(inputData=5), "inputData", "string"), (with_(inputData="x" * (1024 * 1024 + 1)), "inputData", "bytes"),
        (with_(ttl=KeyError), "ttl", "required"), (with_(ttl=0), "ttl", "greater than 00:00:00"),
        (with_(ttl=-60), "ttl", "greater than"), (with_(ttl="00:00:00"), "ttl", "greater than"),
        (with_(ttl="-00:01:00"), "ttl", "greater than"), (with_(ttl=86401), "ttl", "at most 1.00:00:00"),
        (with_(ttl="1.00:00:01"), "ttl", "at most"), (with_(ttl=10 ** 30), "ttl", "at most"),
        (with_(ttl="soon"), "ttl", "TimeSpan"), (with_(ttl=1.5), "ttl", "TimeSpan"), (with_(ttl=[60]), "ttl", "TimeSpan"),
        (with_(ttl="25:00:00"), "ttl", "TimeSpan"),
    ]
    before = count()
    for body, field, needle in matrix:
        shown = {k: (v if not isinstance(v, str) or len(v) < 20 else v[:10] + "…") for k, v in body.items()}
        r = http("POST", "/api/tasks", body, key=bad_key)
        check(problem(r, 400, field, needle), f"create {json.dumps(shown)}: 400 naming {field}")

    r = http("POST", "/api/tasks", json.dumps(good).replace('"n"', '"n\\ud800"').encode(), key=bad_key)
    check(r.status in (201, 400), "a lone surrogate escape is handled (replaced or refused)")
    if r.status == 201:
        http("POST", f"/api/tasks/{r.json['id']}/cancel", key=bad_key)
        sql(f"DELETE FROM tasks WHERE id = '{r.json['id']}'")

    raw = [
        (b'{"name": "n\xff", "code": "c", "language": 1, "ttl": 5}', "name", "UTF-8"),
        (b'{"name": "n", "code": "print(\'\xc3\x28\')", "language": 1, "ttl": 5}', "code", "UTF-8"),
        (b'{"name": "n", "code": "c", "language": 1, "ttl": 5, "inputData": "\xed\xa0\x80"}', "inputData", "UTF-8"),
        (b'{"name": "n", "code": "c", "language": 1, "ttl": 5', "body", "malformed"),
        (b'{"name": "n", "code": "c", "language": 1, "ttl": 5,}', "body", "malformed"),
        (b"{'name': 'n'}", "body", "malformed"),
        (b'[{"name": "n"}]', "body", "object"),
        (b'"just a string"', "body", "object"),
        (b"", "body", "required"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "body", "deeper"),
    ]
    for body, field, needle in raw:
        r = http("POST", "/api/tasks", body, key=bad_key)
        check(problem(r, 400, field, needle), f"create with body {body[:40]!r}: 400 naming {field}")

    r = http("POST", "/api/tasks", json.dumps(good), key=bad_key, headers={"Content-Type": "text/plain"})
    check(problem(r, 415), "create with Content-Type text/plain: 415")
    r = http("POST", "/api/tasks", json.dumps(good), key=bad_key, content_type=None)
    check(problem(r, 415), "create without Content-Type: 415")
    r = http("POST", "/api/tasks", json.dumps(good), key=bad_key, headers={"Content-Type": "application/json; charset=utf-8"})
    check(r.status == 201, "Content-Type application/json; charset=utf-8 is fine")
    created_ok = r.json["id"] if r.status == 201 else None
    huge = b'{"name": "n", "code": "' + b"x" * (8 * 1024 * 1024) + b'", "language": 1, "ttl": 5}'
    head = (f"POST /api/tasks HTTP/1.1\r\nHost: x\r\nX-ApiKey: {bad_key}\r\nContent-Type: application/json\r\n").encode()
    status = raw_status(head + f"Content-Length: {len(huge)}\r\n\r\n".encode() + huge)
    check(status == 413, f"a body over the limit: 413 ({status})")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(huge[i:i + 65536]), huge[i:i + 65536]) for i in range(0, len(huge), 65536))
    status = raw_status(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n")
    # http-server answers 413 once the body ends, or drops the connection when much more than
    # the limit keeps coming (it discards at most 1 MiB): either way nothing is stored.
    check(status in (413, None), f"a chunked body over the limit: 413 or the connection closed ({status})")
    status = raw_status(head + b"Content-Length: 999999999\r\n\r\n{}")
    check(status == 413, f"a Content-Length over the limit is refused before reading: 413 ({status})")

    check(count() == str(int(before) + (1 if created_ok else 0)), "nothing was stored by any rejected request")

    for method, path, status in (("GET", "/api/nothing", 404), ("GET", "/api/tasks/a/b/c", 404), ("DELETE", "/api/tasks", 405),
                                 ("PUT", f"/api/tasks/{uuid.uuid4()}", 405), ("GET", f"/api/tasks/{uuid.uuid4()}/retry", 405),
                                 ("POST", "/healthz", 405)):
        r = http(method, path, key=bad_key)
        check(problem(r, status) and (status != 405 or r.header("Allow")), f"{method} {path}: {status}")
    for verb, body in (("complete", {"attempt": "1", "status": 2}), ("heartbeat", {"attempt": 0})):
        r = http("POST", f"/api/tasks/{uuid.uuid4()}/{verb}", body)
        check(problem(r, 400, "attempt"), f"{verb} with a bad attempt: 400 naming attempt")
    r = http("POST", f"/api/tasks/{uuid.uuid4()}/claim", {"worker": "a\nb"})
    check(problem(r, 400, "worker"), "claim with a bad worker name: 400")
    r = http("GET", "/healthz", key=None)
    check(r.status == 200, "the daemon still serves after the bad input")


test_service_endpoints()
test_auth()
test_create_get()
test_list()
test_idempotency()
test_patch()
test_worker_protocol()
test_retry_cancel()
test_wait()
test_tenancy()
test_bad_input()
deactivate_keys()
finish()
