#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Fault injection on workers and dtask-api (suite integration): private database, queue,
dtask-api, workers and dtask-reaper per scenario (see test-faults-common.py), so nothing here
stops a shared server and the test runs in parallel with others.

  1. kill -9 a worker while it runs a 3 s task: the run's processes die with it, dtask-reaper
     rescues the lapsed lease (3 s), the other worker completes it in attempt 2, one final result.
  2. dtask-api stopped while a worker finishes a task, shorter than the lease: the worker keeps the
     result and delivers it once dtask-api is back (attempt 1, nothing re-run).
  3. the same outage longer than the lease: dtask-reaper rescues the task meanwhile, the late
     result of attempt 1 is refused (fenced) and the task is re-run: attempt 2, one final result.
  4. 200 tasks with mixed TTLs across two workers, one killed (-9) midway: every task ends in
     exactly one terminal state (Completed or Expired as its TTL dictates); prints the counts.

Two or three dtask-reapers at once expiring each task exactly once: tests/test-reaper.py
(test_concurrent_reapers_expire_once) proves it; not repeated here."""

import importlib.util
import os
import sys
import uuid

_spec = importlib.util.spec_from_file_location(
    "faults_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test-faults-common.py"))
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)
W, check, note, time, wait_for = F.W, F.check, F.note, F.time, F.wait_for


def sleeper_code(marker, seconds, output):
    """A run that keeps a child process named `marker` for `seconds`, then prints `output`."""
    return ("import os, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            f"    os.execv('/usr/bin/sleep', ['{marker}', '{seconds}'])\n"
            "os.waitpid(pid, 0)\n"
            f"print({output!r}, end='')\n")


# ---- 1. kill -9 of the worker that runs a task ------------------------------------------------

def test_kill_worker():
    start = F.scenario("kill -9 the worker running a 3 s task")
    box = F.Sandbox("kill -9", lease="3s")
    try:
        w1, w2 = box.start_worker(), box.start_worker()
        box.start_reaper("500ms")
        marker = f"dtask-faults-kill-{uuid.uuid4().hex[:12]}"
        t = box.create(sleeper_code(marker, 3, "done"), ttl=120, name="faults kill -9")
        running = wait_running(box, t["id"], marker)
        if not check(running, "kill -9: the task runs (InProgress, its process exists)"):
            return
        name = box.row(t["id"], "worker")[0]
        victim = box.worker_by_name(name)
        other = w2 if victim is w1 else w1
        if not check(victim is not None, f"kill -9: the task runs on one of the two private workers ({name})"):
            return
        time.sleep(0.5)
        killed_at = time.monotonic()
        F.kill9(victim)
        gone = wait_for(lambda: not W.marker_pids(marker), 5, 0.02)
        check(gone, f"kill -9: the run's processes die with the worker "
                    f"({time.monotonic() - killed_at:.2f} s; PR_SET_PDEATHSIG, bwrap --die-with-parent)")

        final = box.wait_terminal(t["id"], timeout=45)
        elapsed = time.monotonic() - killed_at
        check(final["statusName"] == "Completed" and final["result"] == "done" and final["attempt"] == 2,
              f"kill -9: Completed with attempt 2 on the other worker {elapsed:.1f} s after the kill "
              f"({final['statusName']}, attempt {final['attempt']}, result {final['result']!r})")
        att = box.attempts(t["id"])
        check(len(att) == 2 and att[0][:2] == (1, victim.name) and att[0][3] == "worker_lost" and att[0][4]
              and att[1][:3] == (2, other.name, 2) and att[1][4],
              f"kill -9: attempt 1 ({victim.instance}) closed as worker_lost, attempt 2 Completed by "
              f"{other.instance} ({att})")
        tr = box.transitions(t["id"])
        finals = [x for x in tr if x[1] in F.TERMINAL]
        check(len(finals) == 1 and [x[1] for x in tr] == [0, 1, 0, 1, 2],
              f"kill -9: one final result; Pending → InProgress → Pending (rescued) → InProgress → Completed "
              f"({[(F.STATUS_NAMES[x[1]], x[3]) for x in tr]})")
        check(other.wait_log(f"Task {t['id']}, attempt 2: Completed", 5),
              "kill -9: the other worker logs the completion of attempt 2")
        check("rescued=1" in box.reaper.text() or "queued again" in box.reaper.text(),
              "kill -9: dtask-reaper logs the rescue")
        left = box.sql("SELECT count(*) FROM tasks WHERE status = 1")
        check(left == [["0"]], "kill -9: nothing stays InProgress")
    finally:
        box.close()
        F.took(start, "kill -9 scenario")


def wait_running(box, tid, marker, timeout=30):
    return wait_for(lambda: box.get(tid)["status"] == 1 and W.marker_pids(marker), timeout, 0.05)


# ---- 2./3. dtask-api stopped while a worker finishes a task -----------------------------------

def test_api_outage(lease, outage, expect_rescue):
    what = "outage longer than the lease" if expect_rescue else "outage shorter than the lease"
    start = F.scenario(f"dtask-api stopped while the worker finishes a task ({what}: lease {lease}, "
                       f"down ~{outage} s)")
    box = F.Sandbox(f"api outage {lease}", lease=lease)
    try:
        w = box.start_worker()
        box.start_reaper("500ms")
        marker = f"dtask-faults-api-{uuid.uuid4().hex[:12]}"
        t = box.create(sleeper_code(marker, 2, "42"), ttl=120, name=f"faults api outage {lease}")
        if not check(wait_running(box, t["id"], marker), f"api outage ({what}): the task runs"):
            return
        box.api.stop()
        down_at = time.monotonic()
        check(w.wait_log("could not report the result", 15),
              f"api outage ({what}): the run ends, the worker cannot report and keeps the result")
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        if expect_rescue:
            rescued = wait_for(lambda: box.row(t["id"], "status")[0] == "0", 10, 0.1)
            check(rescued, "api outage (longer than the lease): dtask-reaper put the task back to Pending meanwhile "
                           "(the worker could not heartbeat)")
        else:
            r = box.row(t["id"], "status, attempt, extract(epoch FROM lease_expires_at - now())")
            check(r[0] == "1" and r[1] == "1" and float(r[2]) > 0,
                  f"api outage (shorter than the lease): the task is still InProgress, attempt 1, lease "
                  f"{float(r[2]):.1f} s ahead")
        box.api.start()  # same port
        back_at = time.monotonic()
        note(f"dtask-api was down {back_at - down_at:.1f} s")
        final = box.wait_terminal(t["id"], timeout=40)
        tr = box.transitions(t["id"])
        finals = [x for x in tr if x[1] in F.TERMINAL]
        att = box.attempts(t["id"])
        if not expect_rescue:
            check(final["statusName"] == "Completed" and final["result"] == "42" and final["attempt"] == 1,
                  f"api outage (shorter than the lease): the kept result is delivered "
                  f"{time.monotonic() - back_at:.1f} s after dtask-api is back, attempt 1 "
                  f"({final['statusName']}, attempt {final['attempt']}, {final['result']!r})")
            check(w.wait_log(f"Task {t['id']}, attempt 1: result delivered after", 10),
                  "api outage (shorter than the lease): the worker logs the late delivery")
            check(len(att) == 1 and att[0][2] == 2 and len(finals) == 1,
                  f"api outage (shorter than the lease): one attempt, one final state, nothing re-run ({att})")
        else:
            check(final["statusName"] == "Completed" and final["result"] == "42" and final["attempt"] == 2,
                  f"api outage (longer than the lease): re-run and Completed in attempt 2 "
                  f"({final['statusName']}, attempt {final['attempt']}, {final['result']!r})")
            check(w.wait_log(f"Task {t['id']}, attempt 1: the API refused the result", 10),
                  "api outage (longer than the lease): the late result of attempt 1 is refused (fenced, 409)")
            check(len(att) == 2 and att[0][3] == "worker_lost" and att[1][2] == 2 and len(finals) == 1,
                  f"api outage (longer than the lease): attempt 1 worker_lost, attempt 2 Completed, one final "
                  f"state ({att})")
        check(box.sql("SELECT count(*) FROM tasks WHERE status = 1") == [["0"]],
              f"api outage ({what}): nothing stays InProgress")
    finally:
        box.close()
        F.took(start, f"api outage scenario ({what})")


# ---- 4. 200 tasks, mixed TTLs, one of two workers killed midway ---------------------------------

def test_mixed_ttls():
    start = F.scenario("200 tasks with mixed TTLs, two workers, one killed (-9) midway")
    box = F.Sandbox("mixed ttls", lease="3s")
    try:
        w1 = box.start_worker(concurrency=2)
        box.start_worker(concurrency=2)
        box.start_reaper("500ms")
        rng = F.random.Random(4242)
        tasks = []  # (id, kind, ttl, index)
        victim = None
        t0 = time.monotonic()

        def add(kind):
            i = len(tasks)
            if kind == "expire":
                ttl = rng.choice([1, 2])
                t = box.create("import time\ntime.sleep(30)\nprint('too late')", ttl=ttl, name=f"faults mixed {i} expire")
            else:
                ttl = 300
                t = box.create(f"print({i}, end='')", ttl=ttl, name=f"faults mixed {i} print")
            tasks.append((t["id"], kind, ttl, i))

        # 10 waves of 20: a sleeping task with a TTL of 1–2 s first (a free slot runs it: the worker's
        # timer expires it), 18 print tasks, another sleeping one last (it may expire still queued);
        # each wave once the previous one is nearly done. A worker is killed (-9) during wave 6.
        for wave in range(10):
            wait_for(lambda: sum(1 for s, _ in box.statuses([x[0] for x in tasks]).values()
                                 if s not in F.TERMINAL) <= 4, 30, 0.1)
            add("expire")
            for _ in range(18):
                add("print")
            add("expire")
            if wave == 5:
                # midway, while the wave runs: kill the worker of a task that runs right now
                running = wait_for(lambda: [r[0] for r in box.sql(
                    "SELECT worker FROM tasks WHERE status = 1 AND worker IS NOT NULL ORDER BY started_at DESC")], 10, 0.02)
                victim = (box.worker_by_name(running[0]) if running else None) or w1
                done_before = sum(1 for s, _ in box.statuses([x[0] for x in tasks]).values() if s in F.TERMINAL)
                F.kill9(victim)
                note(f"killed worker {victim.instance} (-9) with {done_before}/200 tasks terminal, "
                     f"{(running or []).count(victim.name)} of its tasks InProgress")
        note(f"200 tasks created in {time.monotonic() - t0:.1f} s")
        ids = [x[0] for x in tasks]

        st = box.wait_all_terminal(ids, timeout=150)
        elapsed = time.monotonic() - t0
        counts = F.status_counts(st)
        print(f"# counts per status after {elapsed:.1f} s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
        check(all(s in F.TERMINAL for s, _ in st.values()), f"mixed: all 200 tasks are terminal ({counts})")

        term = box.terminal_transitions()
        multi = {k: v for k, v in term.items() if v != 1}
        check(len(term) == 200 and not multi,
              f"mixed: every task entered a terminal state exactly once ({len(multi)} did not: "
              f"{list(multi.items())[:5]})")

        rows = {r[0]: r for r in box.sql("SELECT id, status, attempt, coalesce(result, ''), "
                                         "coalesce(error_message, ''), coalesce(verdict, '') FROM tasks")}
        bad_print = [(x[3], rows[x[0]][1:4]) for x in tasks
                     if x[1] == "print" and (rows[x[0]][1] != "2" or rows[x[0]][3] != str(x[3]))]
        check(not bad_print, f"mixed: every print task (TTL 300 s) Completed with its own output ({bad_print[:5]})")
        bad_expire = [(x[3], rows[x[0]][1:]) for x in tasks
                      if x[1] == "expire" and (rows[x[0]][1] != "4" or rows[x[0]][4] != "Task expired due to TTL")]
        check(not bad_expire, f"mixed: every sleeping task with a TTL of 1–2 s is Expired ({bad_expire[:5]})")
        queued = sum(1 for x in tasks if x[1] == "expire" and rows[x[0]][2] == "0")
        note(f"of the 20 expired tasks {queued} expired while queued (never claimed), {20 - queued} while running")
        retried = sum(1 for x in tasks if int(rows[x[0]][2]) > 1)
        note(f"{retried} task(s) ran in a second attempt (rescued from the killed worker)")
        over = [x[3] for x in tasks if int(rows[x[0]][2]) > 2]
        check(not over, f"mixed: no task needed more than 2 attempts ({over[:5]})")
        lateness = [float(r[0]) for r in box.sql(
            "SELECT extract(epoch FROM completed_at - expires_at) FROM tasks WHERE status = 4")]
        if lateness:
            note(f"expired tasks: completedAt − expiresAt p50 {F.percentile(lateness, 50):.3f} s, "
                 f"max {max(lateness):.3f} s")
        check(box.sql("SELECT count(*) FROM tasks WHERE status IN (0, 1)") == [["0"]],
              "mixed: nothing stays Pending or InProgress")
    finally:
        box.close()
        F.took(start, "mixed TTL scenario")


SCENARIOS = {
    "kill": test_kill_worker,
    "api-short": lambda: test_api_outage("30s", 5, expect_rescue=False),
    "api-long": lambda: test_api_outage("3s", 6, expect_rescue=True),
    "mixed": test_mixed_ttls,
}
F.remove_leftovers()
for _name in sys.argv[1:] or SCENARIOS:  # a subset by name, for working on one of them
    SCENARIOS[_name]()
F.finish()
