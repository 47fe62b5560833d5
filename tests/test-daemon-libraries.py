#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The daemons load only libraries they call (each library costs resident memory when it
is loaded, and libpq brings two dozen: Kerberos, LDAP, SASL, GnuTLS, OpenSSL):

  - every DT_NEEDED library of a daemon provides at least one symbol the daemon imports
    (ld's --as-needed decides before --gc-sections drops unused code, so a reference from
    dead code in libdtask-shared.a still adds the library);
  - dtask-worker links neither libpq nor libmicrohttpd nor libjwt; dtask-reaper links
    neither libmicrohttpd nor libjwt.

Usage: test-daemon-libraries.py NAME=BINARY..."""

import os
import re
import subprocess
import sys

failures = 0

# Libraries a daemon must not load at all (they have no use for them).
FORBIDDEN = {
    "dtask-worker": ["libpq.so", "libmicrohttpd.so", "libjwt.so"],
    "dtask-reaper": ["libmicrohttpd.so", "libjwt.so"],
}
# The C runtime is needed whatever the import table says.
ALWAYS_USED = ("libc.so", "ld-linux")


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1


def run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def needed(binary):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-d", "-W", binary))


def resolved_paths(binary):
    """soname → path, as the dynamic loader resolves them for this binary."""
    env = dict(os.environ, LD_TRACE_LOADED_OBJECTS="1")
    out = subprocess.run([binary], env=env, check=True, capture_output=True, text=True).stdout
    paths = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+) \(0x", line)
        if m:
            paths[m.group(1)] = m.group(2)
    return paths


def dynamic_symbols(path, undefined):
    out = run("nm", "-D", "--undefined-only" if undefined else "--defined-only", path)
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if parts:
            names.add(parts[-1].split("@")[0])
    return names


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for arg in sys.argv[1:]:
        name, binary = arg.split("=", 1)
        libs = needed(binary)
        check(bool(libs), f"{name}: has DT_NEEDED entries ({len(libs)})")
        for bad in FORBIDDEN.get(name, []):
            check(not any(lib.startswith(bad) for lib in libs), f"{name}: does not link {bad}")

        imports = dynamic_symbols(binary, undefined=True)
        paths = resolved_paths(binary)
        for lib in libs:
            if lib.startswith(ALWAYS_USED):
                continue
            path = paths.get(lib)
            if not path:
                check(False, f"{name}: {lib} resolves to a file")
                continue
            used = imports & dynamic_symbols(path, undefined=False)
            check(bool(used), f"{name}: {lib} provides symbols it calls ({len(used)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
