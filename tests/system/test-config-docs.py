#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The configuration is documented completely and correctly.

Against the key table of src/shared/config-keys.c (printed by config-keys-dump):
  - man/dtask.conf.5 has an entry for every key and for nothing else, each with the
    table's default;
  - conf/dtask.conf (the shipped /etc/dtask/dtask.conf) shows every key, commented out
    with its default, set, or (secrets) named as a credential; and it loads without error.

usage: test-config-docs.py CONFIG-KEYS-DUMP SOURCE-ROOT
"""

import re
import subprocess
import sys

dump, root = sys.argv[1], sys.argv[2]
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


table = {}
for line in subprocess.run([dump], capture_output=True, text=True, check=True).stdout.splitlines():
    name, default, kind = line.split("\t")
    table[name] = (default, kind == "credential")
print(f"{len(table)} keys in the table")
if len(table) < 40:
    fail(f"only {len(table)} keys: is the dump helper broken?")

# --- man/dtask.conf.5 -------------------------------------------------------------------
man = open(f"{root}/man/dtask.conf.5").read()
keys_section = man.split(".SH KEYS", 1)[1].split("\n.SH ", 1)[0]
entries = {}
for m in re.finditer(r"^\.TP\n\.B ([A-Z0-9_]+)\n(.*?)(?=^\.TP|^\.SS|\Z)", keys_section, re.M | re.S):
    entries[m.group(1)] = m.group(2)
for name in table.keys() - entries.keys():
    fail(f"dtask.conf(5) does not document {name}")
for name in entries.keys() - table.keys():
    fail(f"dtask.conf(5) documents {name}, which is not a key")
for name, text in entries.items():
    if name not in table:
        continue
    default = table[name][0]
    m = re.search(r"Default: (.*?)\. Used by", text.replace("\n", " "))
    if not m:
        fail(f"dtask.conf(5): {name} has no 'Default: …. Used by' line")
        continue
    shown = m.group(1)
    if default:
        if shown != f"\\fB{default}\\fR":
            fail(f"dtask.conf(5): {name} default is shown as {shown!r}, the table says {default!r}")
    elif not shown.startswith("("):
        fail(f"dtask.conf(5): {name} has no default, but the page shows {shown!r}")

# --- conf/dtask.conf --------------------------------------------------------------------
conf_path = f"{root}/conf/dtask.conf"
conf = open(conf_path).read()
lines = {}
for m in re.finditer(r"^(#?)([A-Z0-9_]+)=(.*)$", conf, re.M):
    lines[m.group(2)] = (m.group(1) == "#", m.group(3))
for name, (default, credential) in table.items():
    if name in lines:
        commented, value = lines[name]
        if commented and value != default:
            fail(f"conf/dtask.conf: #{name}={value} is not the default ({default!r})")
    elif not (credential and re.search(rf"^#.*\b{name}\b", conf, re.M)):
        fail(f"conf/dtask.conf does not show {name}")
for name in lines.keys() - table.keys():
    fail(f"conf/dtask.conf sets {name}, which is not a key")
p = subprocess.run([dump, f"--check={conf_path}"], capture_output=True, text=True)
if p.returncode != 0:
    fail(f"conf/dtask.conf does not load: {p.stderr.strip()}")

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("ok: dtask.conf(5) and conf/dtask.conf match the key table")
