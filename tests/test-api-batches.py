#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Creates written in batches (task_store_insert()), against the dev environment.

A dtask-api of this build on its own port sends a create to the database at once while
fewer than two are in flight, and gathers the others for one statement. The test holds
two creates in the database (a trigger of its own makes them wait for an advisory lock
the test holds), so that the next ones gather; /metrics says when they all wait. Then:

- every create of a batch is answered 201 with exactly what was sent, also text that
  needs quoting in an array literal (quotes, backslashes, braces, commas, "NULL",
  newlines, non-ASCII), and an input that is null next to one that is empty;
- they were written by one statement (one createdAt), published (a message each) and
  confirmed (their outbox rows are gone);
- a row that the database refuses fails alone: the others of its batch are stored;
- creates still waiting when dtask-api stops never reach the database, and it exits 0.

The trigger fires only for names of this run, and is dropped at the end. Real workers run
the tasks that were created, as for test-api-rest."""

import os
import random
import subprocess
import sys
import threading
import uuid

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(__file__))
from test_api_lib import (DB, PSQL, AmqpListener, Instance, check, create, finish, in_outbox, metric,  # noqa: E402
                          sql, sql_value, wait_for)

RUN = uuid.uuid4().hex[:12]
PREFIX = f"batch-{RUN}"
GATE = f"{PREFIX}-gate"        # waits for the lock in the database
REFUSED = f"{PREFIX}-refused"  # refused by the trigger
LOCK = random.randrange(1, 2**62)
FUNCTION = f"test_batches_{RUN}"


class LockHolder:
    """A psql session holding the advisory lock LOCK until release()."""

    def __init__(self):
        self.proc = subprocess.Popen([PSQL, DB, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(f"SELECT pg_advisory_lock({LOCK}), 'locked';\n")
        self.proc.stdin.flush()
        if "locked" not in self.proc.stdout.readline():
            raise RuntimeError("the advisory lock was not taken")

    def release(self):
        self.proc.stdin.write(f"SELECT pg_advisory_unlock({LOCK});\n")
        self.proc.stdin.close()
        self.proc.wait(10)


def in_background(fn, *args, **kwargs):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn(*args, **kwargs)))
    t.start()
    return t, out


def waiting_in_database(n):
    """n sessions wait for LOCK (not for any other advisory lock, such as the migrations' one
    of a dtask-api or dtask-keys that another test starts meanwhile)."""
    return wait_for(lambda: sql_value("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                      f"AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = {LOCK}")
                    == str(n))


def hold_two(api):
    """Two creates that wait in the database: both statements of the instance are in flight."""
    holder = LockHolder()
    gates = [in_background(create, name=GATE, base=api.url) for _ in range(2)]
    check(waiting_in_database(2), "two creates wait in the database")
    return holder, gates


def await_all(started):
    for t, _ in started:
        t.join(60)
    return [out.get("r") for _, out in started]


# Text that an array literal must quote or escape, and that must come back unchanged.
AWKWARD = ['print("a", "b")', "print('\\\\')  # one backslash\n", "x = {1, 2}\nprint(x)", "NULL",
           "print('ü ☃ 𝄞')\r\n", 'print("\\"")', "print(1)  ,}{"]


def test_batch(api, listener):
    holder, gates = hold_two(api)
    bodies = []
    for i in range(20):
        b = {"name": f"{PREFIX}-{i}", "code": AWKWARD[i % len(AWKWARD)] + f"\n# {i}", "ttl": "00:10:00"}
        if i % 3 == 1:
            b["inputData"] = ""
        elif i % 3 == 2:
            b["inputData"] = '{"a": [1, 2]} \\ NULL'
        if i == 5:
            b["name"] = "NULL"
        bodies.append(b)
    started = [in_background(create, b, base=api.url) for b in bodies]
    check(wait_for(lambda: metric(api.url, "dtask_api_task_creates_waiting") == 20),
          "/metrics: 20 creates wait for a statement")
    holder.release()
    answers = await_all(started)
    gate_answers = await_all(gates)

    check(all(r is not None and r.status == 201 for r in answers + gate_answers),
          f"all 22 creates answered 201 ({[r.status if r else None for r in answers + gate_answers]})")
    ok = [(b, r.json) for b, r in zip(bodies, answers) if r is not None and r.status == 201]
    check(all(t["name"] == b["name"] and t["code"] == b["code"] and t["inputData"] == b.get("inputData") and
              t["status"] == 0 and t["ttl"] == "00:10:00" for b, t in ok),
          "each answer has exactly the name, code and inputData that were sent (null stays null, '' stays '')")
    ids = [t["id"] for _, t in ok]
    stored = {r[0]: r[1:] for r in sql(
        "SELECT id, name, encode(convert_to(code, 'UTF8'), 'hex'), input_data IS NULL, "
        "encode(convert_to(coalesce(input_data, ''), 'UTF8'), 'hex') FROM tasks WHERE id IN ("
        + ", ".join(f"'{i}'" for i in ids) + ")")}
    check(len(stored) == 20 and all(
        stored[t["id"]] == [b["name"], b["code"].encode().hex(), "t" if "inputData" not in b else "f",
                            b.get("inputData", "").encode().hex()] for b, t in ok),
          "every task is stored byte for byte")
    check(len({t["createdAt"] for _, t in ok}) == 1, "the 20 were written by one statement (one createdAt)")
    check(wait_for(lambda: not any(in_outbox(i) for i in ids)), "the broker confirmed each: the outbox is empty")
    check(all(listener.find(lambda m, i=i: m.get("body") == f'"{i}"') for i in ids), "each task was published")
    check(metric(api.url, "dtask_api_task_creates_waiting") == 0, "/metrics: none waits any more")


def test_refused_row(api):
    holder, gates = hold_two(api)
    names = [f"{PREFIX}-r{i}" for i in range(10)]
    names[4] = REFUSED
    started = [in_background(create, name=n, base=api.url) for n in names]
    check(wait_for(lambda: metric(api.url, "dtask_api_task_creates_waiting") == 10),
          "/metrics: 10 creates wait, one of them to be refused")
    holder.release()
    answers = await_all(started)
    await_all(gates)
    statuses = [r.status if r else None for r in answers]
    check(statuses[4] == 500 and statuses[:4] + statuses[5:] == [201] * 9,
          f"the refused create fails alone: 500 for it, 201 for the 9 others ({statuses})")
    check(sql_value(f"SELECT count(*) FROM tasks WHERE name = '{REFUSED}'") == "0" and
          sql_value(f"SELECT count(*) FROM tasks WHERE name LIKE '{PREFIX}-r%'") == "9",
          "the 9 others are stored, the refused one is not")
    with open(api.log.name) as f:
        log = f.read()
    check("refused a statement of 10 creates" in log, "dtask-api logged that it sent them one by one")


def test_stop_while_waiting():
    api = Instance()
    holder, gates = hold_two(api)
    names = [f"{PREFIX}-s{i}" for i in range(5)]
    started = [in_background(create, name=n, base=api.url) for n in names]
    check(wait_for(lambda: metric(api.url, "dtask_api_task_creates_waiting") == 5), "/metrics: 5 creates wait")
    code = api.stop()
    holder.release()
    answers = await_all(started + gates)
    check(code == 0, f"dtask-api stopped with creates waiting exits 0 ({code})")
    check(all(r is None or r.status != 201 for r in answers[:5]),
          f"none of the waiting creates was answered as created ({[r.status if r else None for r in answers[:5]]})")
    check(sql_value(f"SELECT count(*) FROM tasks WHERE name LIKE '{PREFIX}-s%'") == "0",
          "none of them reached the database")


def main():
    sql(f"""CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.name = '{GATE}' THEN
                    PERFORM pg_advisory_xact_lock({LOCK});
                ELSIF NEW.name = '{REFUSED}' THEN
                    RAISE EXCEPTION 'refused by test-api-batches';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {FUNCTION} BEFORE INSERT ON tasks FOR EACH ROW
                WHEN (NEW.name LIKE '{PREFIX}-%') EXECUTE FUNCTION {FUNCTION}();""")
    listener = AmqpListener()
    api = Instance()
    try:
        test_batch(api, listener)
        test_refused_row(api)
        test_stop_while_waiting()
    finally:
        api.stop()
        listener.close()
        sql(f"DROP TRIGGER {FUNCTION} ON tasks; DROP FUNCTION {FUNCTION}()")
    finish()


if __name__ == "__main__":
    main()
