#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtaskctl without any service: --help for every verb, usage errors exit 2 with a hint,
client-side errors exit 1 with a clear message, and the API key never shows up in output.

Usage: test-dtaskctl-usage.py DTASKCTL"""

import os
import subprocess
import sys
import tempfile

DTASKCTL = sys.argv[1]
failures = 0
SECRET = "ak_SECRETSECRETSECRETSECRETSECR"


def check(cond, what, r=None):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1
        if r is not None:
            print(f"     exit {r.returncode}\n     stdout: {r.stdout!r}\n     stderr: {r.stderr!r}")


def ctl(*args, env=None, stdin=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("DTASK_")}
    e.update(env or {})
    return subprocess.run([DTASKCTL, *args], env=e, input=stdin, capture_output=True, text=True, timeout=30)


def main():
    r = ctl("--help")
    check(r.returncode == 0 and "submit" in r.stdout and "keys create" in r.stdout, "--help lists the verbs", r)
    r = ctl("--version")
    check(r.returncode == 0 and r.stdout.startswith("dtaskctl "), "--version", r)

    for verb in (["submit"], ["get"], ["list"], ["retry"], ["cancel"], ["keys", "create"], ["keys", "list"],
                 ["keys", "get"], ["keys", "deactivate"], ["keys", "delete"]):
        r = ctl(*verb, "--help")
        check(r.returncode == 0 and r.stdout.startswith("dtaskctl " + " ".join(verb)),
              f"dtaskctl {' '.join(verb)} --help", r)
    r = ctl("submit", "--help")
    check("--ttl" in r.stdout and "--wait" in r.stdout and "--input-file" in r.stdout, "submit --help names its options")
    r = ctl("keys", "--help")
    check(r.returncode == 0 and "keys deactivate" in r.stdout, "keys --help lists the key verbs", r)

    usage = [
        ([], "No command given"),
        (["frobnicate"], "Unknown command"),
        (["keys", "frobnicate"], "Unknown command"),
        (["list", "--name=x"], "does not apply"),
        (["get"], "Usage: dtaskctl get"),
        (["get", "a", "b"], "Usage: dtaskctl get"),
        (["get", "not-a-uuid"], "not a task id"),
        (["cancel", "123"], "not a task id"),
        (["submit"], "Usage: dtaskctl submit"),
        (["submit", "--ttl=soon", "x.py"], "Invalid --ttl"),
        (["submit", "--language=ruby", "x.rb"], "Unknown language"),
        (["submit", "x.txt"], "--language"),
        (["submit", "--input=a", "--input-file=b", "x.py"], "cannot be combined"),
        (["submit", "--input-file=-", "-", "--language=python"], "standard input"),
        (["list", "--status=Sleeping"], "Invalid --status"),
        (["list", "--limit=0"], "Invalid --limit"),
        (["list", "--limit=-3"], "Invalid --limit"),
        (["list", "--all", "--limit=3"], "cannot be combined"),
        (["get", "--wait=later", "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99"], "Invalid --wait"),
        (["list", "--json=yaml"], "Invalid --json"),
        (["list", "--bogus"], "Unknown option"),
        (["list", "--url"], "needs an argument"),
        (["keys", "create", "n", "--expires=someday"], "Invalid --expires"),
        (["keys", "delete", "nope"], "not a key id"),
    ]
    for args, needle in usage:
        r = ctl(*args, env={"DTASK_API_KEY": SECRET})
        check(r.returncode == 2 and needle in r.stderr and "--help" in r.stderr,
              f"dtaskctl {' '.join(args)}: usage error (2) mentioning {needle!r}", r)

    # client-side errors: 1
    r = ctl("list")
    check(r.returncode == 1 and "API key" in r.stderr, "no API key: exit 1 and says how to pass one", r)
    r = ctl("--url=http://127.0.0.1:1", "--api-key=" + SECRET, "list")
    check(r.returncode == 1 and "Connection refused" in r.stderr and "127.0.0.1:1" in r.stderr,
          "nothing listening: exit 1, connection refused and the URL", r)
    check(SECRET not in r.stdout + r.stderr, "the API key is not printed")
    r = ctl("list", env={"DTASK_API_URL": "https://127.0.0.1:1", "DTASK_API_KEY": SECRET})
    check(r.returncode == 1 and "http://" in r.stderr, "https URL: exit 1, only http:// is supported", r)
    r = ctl("list", env={"DTASK_API_URL": "http://127.0.0.1:1", "DTASK_API_KEY": "bad key with spaces"})
    check(r.returncode == 1 and "bad key" not in r.stderr, "an unusable key: exit 1, key not echoed", r)

    with tempfile.TemporaryDirectory() as d:
        empty = os.path.join(d, "empty.py")
        open(empty, "w").close()
        r = ctl("submit", empty, env={"DTASK_API_KEY": SECRET, "DTASK_API_URL": "http://127.0.0.1:1"})
        check(r.returncode == 1 and "empty" in r.stderr, "an empty code file: exit 1", r)
        r = ctl("submit", os.path.join(d, "missing.py"), env={"DTASK_API_KEY": SECRET})
        check(r.returncode == 1 and "missing.py" in r.stderr, "a missing code file: exit 1 naming it", r)
        nul = os.path.join(d, "nul.py")
        with open(nul, "wb") as f:
            f.write(b"print(1)\0")
        r = ctl("submit", nul, env={"DTASK_API_KEY": SECRET})
        check(r.returncode == 1 and "NUL" in r.stderr, "code with NUL bytes: exit 1", r)
        keyfile = os.path.join(d, "key")
        with open(keyfile, "w") as f:
            f.write(SECRET + "\n")
        r = ctl("--api-key-file=" + keyfile, "--url=http://127.0.0.1:1", "list")
        check(r.returncode == 1 and "Connection refused" in r.stderr and SECRET not in r.stderr,
              "--api-key-file= is read (gets as far as connecting)", r)
        with open(keyfile, "w") as f:
            f.write(SECRET + "\nsecond line\n")
        r = ctl("--api-key-file=" + keyfile, "list")
        check(r.returncode == 2 and SECRET not in r.stderr, "--api-key-file= with two lines: usage error", r)

    if failures:
        print(f"{failures} check(s) failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
