#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""libdtask.so's ABI surface: the dynamic symbol table holds only dtask_* functions (all
versioned LIBDTASK_0), every function the public header declares is exported, the soname is
libdtask.so.0, the header includes nothing project-internal, and dtask.pc is usable.

Usage: test-libdtask-symbols.py LIBDTASK_SO HEADER PC_FILE"""

import re
import subprocess
import sys

failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1


def main():
    so, header, pc = sys.argv[1:4]

    out = subprocess.run(["nm", "-D", "--defined-only", so], check=True, capture_output=True, text=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        kind, name = parts[1], parts[2]
        symbols[name] = kind
    names = {n.split("@")[0]: n for n in symbols}

    # the version node itself shows up as an absolute symbol
    stray = [n for n, k in symbols.items() if not (n.startswith("dtask_") or (k == "A" and n == "LIBDTASK_0"))]
    check(not stray, f"only dtask_* symbols are exported (stray: {stray[:10]})")
    unversioned = [n for n in symbols if n.startswith("dtask_") and not n.endswith("@@LIBDTASK_0")]
    check(not unversioned, f"every dtask_* symbol is versioned LIBDTASK_0 (not: {unversioned[:10]})")
    check(all(symbols[n] == "T" for n in symbols if n.startswith("dtask_")), "every exported symbol is a function")

    text = open(header).read()
    declared = set(re.findall(r"^\s*(?:[A-Za-z_][\w \*]*?[\s\*])(dtask_\w+)\(", text, re.M))
    check(len(declared) >= 30, f"the header declares the API ({len(declared)} functions)")
    missing = sorted(declared - set(names))
    check(not missing, f"every function of dtask.h is exported (missing: {missing})")
    extra = sorted(set(names) - declared - {"LIBDTASK_0"})
    check(not extra, f"nothing is exported that dtask.h does not declare (extra: {extra})")

    includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', text, re.M)
    allowed = {"stdbool.h", "stddef.h", "stdint.h", "systemd/sd-event.h"}
    check(set(includes) <= allowed, f"dtask.h includes only {sorted(allowed)} (has {includes})")

    dyn = subprocess.run(["readelf", "-d", so], check=True, capture_output=True, text=True).stdout
    check("Library soname: [libdtask.so.0]" in dyn, "the soname is libdtask.so.0")
    needed = set(re.findall(r"Shared library: \[([^\]]+)\]", dyn))
    internal = {n for n in needed if re.match(r"lib(pq|microhttpd|rabbitmq|jwt)\.", n)}
    check(not internal, f"no daemon-only libraries are linked in (NEEDED: {sorted(needed)})")

    pc_text = open(pc).read()
    fields = dict(re.findall(r"^([A-Za-z.]+):\s*(.*)$", pc_text, re.M))
    check(fields.get("Name") == "dtask", "dtask.pc: Name: dtask")
    check("-ldtask" in fields.get("Libs", "") and "-L${libdir}" in fields.get("Libs", ""),
          "dtask.pc: Libs: -L${libdir} -ldtask")
    check("libsystemd" in fields.get("Requires", ""), "dtask.pc: Requires: libsystemd (the header uses sd-event)")
    private = fields.get("Requires.private", "") + fields.get("Libs.private", "")
    check(not re.search(r"libpq|microhttpd|rabbitmq|jwt|dtask-shared", private),
          f"dtask.pc drags in no internal dependencies ({private!r})")

    if failures:
        print(f"{failures} check(s) failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
