#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The installed units, sysusers.d, tmpfiles.d and D-Bus files are valid (no systemd needed).

Installs the build tree into a scratch root (meson install --destdir), adds the host's
own units (targets and services ours refer to), then:
  - `systemd-analyze verify --root=` of every unit prints nothing and succeeds (unknown
    keys, bad values, missing executables and dependencies all print);
  - `systemd-analyze security --offline=yes`: dtask-api, dtask-keys and dtask-reaper rate
    "OK" or better (exposure below 5.0), the worker no worse than "MEDIUM"; the scores are
    printed (units/README.md records them);
  - systemd-sysusers creates the user dtask and the group dtask-admin in the scratch root,
    then systemd-tmpfiles creates the directories with the documented modes and owners;
  - the D-Bus policy, activation and introspection files parse, and every activation file
    names an installed unit and the user that unit runs as.

usage: test-units.py BUILD-ROOT
"""

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

build = sys.argv[1]
failures = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures.append(what)
    return cond


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


if not shutil.which("systemd-analyze"):
    print("SKIP: systemd-analyze is not installed")
    sys.exit(77)

root = tempfile.mkdtemp(prefix="dtask-units-")
try:
    p = run(["meson", "install", "-C", build, "--no-rebuild", "--quiet", "--destdir", root])
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        sys.exit(1)

    unitdirs = [d for d in ("lib/systemd/system", "usr/lib/systemd/system")
                if os.path.isdir(os.path.join(root, d)) and
                any(f.startswith("dtask") for f in os.listdir(os.path.join(root, d)))]
    check(len(unitdirs) == 1, f"the units are installed ({unitdirs})")
    unitdir = os.path.join(root, unitdirs[0])
    units = sorted(f for f in os.listdir(unitdir) if f.startswith("dtask"))
    check(set(units) >= {"dtask.target", "dtask-api.socket", "dtask-api.service", "dtask-keys.socket",
                         "dtask-keys.service", "dtask-worker@.service", "dtask-reaper.service",
                         "dtask-reaper.timer"}, "every unit is installed: " + " ".join(units))
    for d in ("/lib/systemd/system", "/usr/lib/systemd/system"):
        if os.path.isdir(d) and not os.path.islink(d):
            run(["cp", "-an", d + "/.", unitdir])

    # verify: instances for the template
    names = [u.replace("@.", "@1.") for u in units]
    p = run(["systemd-analyze", "verify", "--man=no", f"--root={root}"] + names, cwd=unitdir)
    check(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
          "systemd-analyze verify is clean" + (f":\n{p.stdout}{p.stderr}" if (p.stdout + p.stderr).strip() else ""))

    # security
    for u in ("dtask-api.service", "dtask-keys.service", "dtask-reaper.service", "dtask-worker@1.service"):
        p = run(["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", u], cwd=unitdir)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", p.stdout)
        if not check(m is not None, f"systemd-analyze security rates {u}"):
            print(p.stdout + p.stderr)
            continue
        score, rating = float(m.group(1)), m.group(2)
        print(f"   {u}: {score} {rating}")
        if u.startswith("dtask-worker"):
            check(score < 7.5, f"{u} is no worse than MEDIUM ({score} {rating})")
        else:
            check(score < 5.0, f"{u} is OK or better ({score} {rating})")

    # sysusers, then tmpfiles, in the scratch root
    etc = os.path.join(root, "etc")
    os.makedirs(etc, exist_ok=True)
    for f in ("passwd", "group", "shadow", "gshadow"):
        open(os.path.join(etc, f), "a").close()
    sysusers = [os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
                if dp.endswith("sysusers.d") and f == "dtask.conf"]
    tmpfiles = [os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
                if dp.endswith("tmpfiles.d") and f == "dtask.conf"]
    check(len(sysusers) == 1 and len(tmpfiles) == 1, "sysusers.d and tmpfiles.d files are installed")
    p = run(["systemd-sysusers", f"--root={root}", sysusers[0]])
    check(p.returncode == 0, "systemd-sysusers accepts sysusers.d/dtask.conf" + (f": {p.stderr}" if p.returncode else ""))
    passwd = open(os.path.join(etc, "passwd")).read()
    group = open(os.path.join(etc, "group")).read()
    check(re.search(r"^dtask:x:\d+:\d+:", passwd, re.M) is not None, "user dtask is created")
    check(re.search(r"^dtask-admin:x:\d+:", group, re.M) is not None, "group dtask-admin is created")
    uid = {l.split(":")[0]: int(l.split(":")[2]) for l in passwd.splitlines() if l}
    gid = {l.split(":")[0]: int(l.split(":")[2]) for l in group.splitlines() if l}

    p = run(["systemd-tmpfiles", f"--root={root}", "--create", tmpfiles[0]])
    check(p.returncode == 0, "systemd-tmpfiles --create accepts tmpfiles.d/dtask.conf" +
          (f": {p.stderr}" if p.returncode else ""))
    # /etc/dtask for packages (prefix /usr), <prefix>/etc/dtask otherwise
    confs = [os.path.relpath(os.path.join(dp, f), root) for dp, _, fs in os.walk(root) for f in fs
             if f == "dtask.conf" and os.path.basename(dp) == "dtask" and "etc" in dp.split(os.sep)]
    check(len(confs) == 1, f"dtask.conf is installed ({confs})")
    conf_dir = os.path.dirname(confs[0]) if confs else "etc/dtask"
    units_text = "".join(open(os.path.join(unitdir, u)).read() for u in units)
    creds = set(re.findall(r"^LoadCredential=\w+:(\S+)/\w+$", units_text, re.M))
    check(creds == {"/" + conf_dir + "/credentials"},
          f"the units load credentials from /{conf_dir}/credentials ({sorted(creds)})")
    expect = {
        conf_dir: (0o755, "root", "root"),
        conf_dir + "/dtask.conf": (0o640, "root", "dtask"),
        conf_dir + "/credentials": (0o700, "root", "root"),
        "var/lib/dtask": (0o750, "dtask", "dtask"),
        "var/cache/dtask": (0o700, "root", "root"),
        "run/dtask-sandbox": (0o711, "root", "root"),
    }
    for path, (mode, user, grp_) in expect.items():
        full = os.path.join(root, path)
        if not check(os.path.exists(full), f"/{path} exists"):
            continue
        st = os.stat(full)
        want_uid = 0 if user == "root" else uid.get(user)
        want_gid = 0 if grp_ == "root" else gid.get(grp_)
        check(stat.S_IMODE(st.st_mode) == mode and st.st_uid == want_uid and st.st_gid == want_gid,
              f"/{path} is {mode:04o} {user}:{grp_} (is {stat.S_IMODE(st.st_mode):04o} {st.st_uid}:{st.st_gid})")

    # D-Bus files
    share = [os.path.join(dp) for dp, ds, _ in os.walk(root) if dp.endswith("share/dbus-1")]
    check(len(share) == 1, "D-Bus files are installed")
    dbus = share[0]
    for f in sorted(os.listdir(os.path.join(dbus, "system.d"))):
        try:
            t = ET.parse(os.path.join(dbus, "system.d", f)).getroot()
            check(t.tag == "busconfig", f"policy {f} parses")
            owners = {pol.get("user") for pol in t.iter("policy") for a in pol.iter("allow") if a.get("own")}
            check("dtask" in owners, f"policy {f} lets user dtask own the name ({sorted(o for o in owners if o)})")
        except ET.ParseError as e:
            check(False, f"policy {f} parses: {e}")
    for f in sorted(os.listdir(os.path.join(dbus, "interfaces"))):
        try:
            ET.parse(os.path.join(dbus, "interfaces", f))
            check(True, f"introspection {f} parses")
        except ET.ParseError as e:
            check(False, f"introspection {f} parses: {e}")
    for f in sorted(os.listdir(os.path.join(dbus, "system-services"))):
        cp = configparser.ConfigParser(interpolation=None)
        cp.optionxform = str
        cp.read(os.path.join(dbus, "system-services", f))
        s = cp["D-BUS Service"] if cp.has_section("D-BUS Service") else {}
        unit = s.get("SystemdService", "")
        check(s.get("Name") + ".service" == f if s.get("Name") else False, f"{f}: Name= matches the file name")
        check(unit in units, f"{f}: SystemdService={unit} is an installed unit")
        if unit in units:
            text = open(os.path.join(unitdir, unit)).read()
            m = re.search(r"^User=(\S+)", text, re.M)
            check(m is not None and s.get("User") == m.group(1),
                  f"{f}: User={s.get('User')} is the user of {unit} ({m.group(1) if m else 'root'})")
            exe = re.search(r"^ExecStart=(\S+)", text, re.M)
            check(exe is not None and s.get("Exec", "").split()[0] == exe.group(1),
                  f"{f}: Exec= is the unit's ExecStart= ({s.get('Exec')})")
finally:
    shutil.rmtree(root, ignore_errors=True)

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
