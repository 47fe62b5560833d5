#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-worker end to end through the REST API (dev dtask-api, the dev workers of tools/dev —
or one of its own when none consumes the dev queue): the compat cases of the older system
(Python and C#, stdin, results byte for byte, runtime and compile errors), plus how results
are mapped (raw stdout, stderr, exit codes, output that is not UTF-8)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_worker_lib import *  # noqa: E402,F403

own_worker = None
if not dev_workers_consuming():
    note("no worker consumes the dev queue: starting one for this test")
    own_worker = Worker()

CASES = [
    # name, language, code, stdin, expected status name, check(task) -> bool, description
    ("py stdin length", "Python", 'import sys; print(len(sys.stdin.read()), end="")', "a" * 42, "Completed",
     lambda t: t["result"] == "42" and t["exitCode"] == 0 and t["verdict"] == "ok",
     'result exactly "42", exitCode 0, verdict ok'),
    ("py print", "Python", 'print(42, end="")', None, "Completed",
     lambda t: t["result"] == "42" and t["errorMessage"] == "" and t["outputTruncated"] is False,
     'result exactly "42", errorMessage "", outputTruncated false'),
    ("py zero division", "Python", "print(42/0)", None, "Failed",
     lambda t: "ZeroDivisionError" in (t["errorMessage"] or "") and t["verdict"] == "runtime_error"
     and t["exitCode"] == 1 and t["result"] == "",
     "errorMessage mentions ZeroDivisionError, verdict runtime_error, exitCode 1"),
    ("cs stdin plus one", "CSharp",
     "using System;\nclass P { static void Main() { Console.Write(int.Parse(Console.In.ReadToEnd()) + 1); } }",
     "41", "Completed", lambda t: t["result"] == "42" and t["verdict"] == "ok", 'result exactly "42"'),
    ("cs write", "CSharp", "using System;\nclass P { static void Main() { Console.Write(42); } }", None,
     "Completed", lambda t: t["result"] == "42", 'result exactly "42"'),
    ("cs throw", "CSharp", "using System;\nclass P { static void Main() { throw new Exception(); } }", None,
     "Failed", lambda t: (t["errorMessage"] or "").strip() != "" and t["verdict"] == "runtime_error",
     "errorMessage non-empty, verdict runtime_error"),
    ("cs syntax error", "CSharp", "using System;\nclass P { static void Main() { Console.Write(42) } }", None,
     "Failed", lambda t: t["verdict"] == "compile_error" and (t["errorMessage"] or "").strip() != ""
     and t["exitCode"] != 0,
     "verdict compile_error, the compiler's message in errorMessage"),
    # result mapping beyond the compat cases
    ("py raw stdout", "Python", 'import sys\nprint("  a  ")\nprint()\nsys.stderr.write("warn\\n")', None,
     "Completed", lambda t: t["result"] == "  a  \n\n" and t["errorMessage"] == "warn\n",
     "stdout kept raw (spaces, newlines), stderr in errorMessage even on success"),
    ("py exit code", "Python", "import sys; print('x', end=''); sys.exit(3)", None, "Failed",
     lambda t: t["exitCode"] == 3 and t["verdict"] == "runtime_error" and t["result"] == "x",
     "exit 3 → Failed, exitCode 3, runtime_error, stdout kept"),
    ("py binary output", "Python", r"import sys; sys.stdout.buffer.write(b'ok \xff\xfe \x00 end')", None,
     "Completed", lambda t: t["result"] == "ok \ufffd\ufffd \ufffd end",
     "output that is not UTF-8 (and NUL) is reported with U+FFFD in its place"),
    ("py utf8", "Python", 'print("żółw ✓ 🐢", end="")', None, "Completed",
     lambda t: t["result"] == "żółw ✓ 🐢", "UTF-8 output preserved byte for byte"),
]

tasks = []
for name, language, code, stdin, *_ in CASES:
    tasks.append(create(code, language=language, input_data=stdin, ttl="00:05:00", name=f"worker compat {name}"))

for (name, language, code, stdin, want_status, predicate, what), task in zip(CASES, tasks):
    t = wait_terminal(task["id"], timeout=180)
    ok = t["statusName"] == want_status and predicate(t)
    if not check(ok, f"{name}: {want_status}, {what}"):
        note(f"task: { {k: t.get(k) for k in ('statusName', 'result', 'errorMessage', 'exitCode', 'verdict')} }")
    check(t["attempt"] == 1 and t["startedAt"] and t["completedAt"], f"{name}: one attempt, startedAt and completedAt set")

if own_worker:
    own_worker.stop()
finish()
