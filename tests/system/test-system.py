#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""System test of the packages under a real systemd (issue 7).

Builds the .deb and .rpm packages of the working tree (tools/dev package), compares
their file lists, boots systemd as PID 1 in a throwaway container (container.sh: own
PID/mount/cgroup/network namespaces, overlay of the host's / on a tmpfs), installs the
.deb there, starts PostgreSQL and RabbitMQ (their Debian units), and proves:

  - the units pass `systemd-analyze verify`; the package created users, directories and
    secrets and enabled the sockets, the timer and dtask.target, but started nothing;
  - the first request to port 8080 starts dtask-api.service through its socket (inactive
    before), the first request to 5215 dtask-keys.service; with both inactive, the first
    request with an API key is answered (not 503) and starts both;
  - D-Bus activation: the first call to org.dtask.Tasks1 / org.dtask.Keys1 starts the unit
    and is answered;
  - busctl: Keys1.CreateKey makes keys that work over REST; Tasks1.CreateTask and ListTasks
    work for root; a user outside dtask-admin gets AccessDenied from both, a member of
    dtask-admin does not;
  - dtask-worker@1 and @2 both become active and both complete tasks (counted per
    instance from each unit's journal and STATUS=);
  - a memory bomb ends Failed with verdict memory_limit, killed inside the worker's
    delegated cgroup subtree;
  - with the workers stopped, a task with a TTL of 2 s is Expired by dtask-reaper.service,
    started by dtask-reaper.timer;
  - installing over the installed package (the upgrade path) keeps the secrets and
    restarts the running daemons;
  - `systemctl stop dtask.target` leaves no dtask process and no dtask unit active, and
    systemd never reported an ordering cycle;
  - `dpkg --purge` removes everything, the generated secrets included.

Needs root, unshare/nsenter, dpkg-buildpackage and rpmbuild; exits 77 (skip) otherwise.
Set DTASK_SYSTEST_PACKAGES=DIR to use packages already built there instead of building.
Every step is bounded in time; the container is always shut down and its cgroups removed.
"""

import ctypes
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("DTASK_SOURCE_ROOT") or os.path.dirname(os.path.dirname(HERE))
CONTAINER = os.path.join(HERE, "container.sh")
# Commands inside the container get an environment of their own: the host's (tools/dev test
# exports DBUS_SYSTEM_BUS_ADDRESS of the dev bus, among others) would point busctl and
# friends at the host's buses.
INSIDE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
TOTAL_TIMEOUT = 840  # the whole test, package builds included (meson's timeout is 900 s)

API = "http://127.0.0.1:8080"
KEYS = "http://127.0.0.1:5215"
UNITS = ["dtask.target", "dtask-api.socket", "dtask-api.service", "dtask-keys.socket",
         "dtask-keys.service", "dtask-reaper.service", "dtask-reaper.timer", "dtask-worker@1.service"]

T0 = time.monotonic()
failures = []


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def check(cond, what):
    if cond:
        log(f"ok: {what}")
    else:
        log(f"FAIL: {what}")
        failures.append(what)
    return cond


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


class Container:
    def __init__(self, dir):
        self.dir = dir
        self.pid = None

    def boot(self):
        out = subprocess.run([CONTAINER, "boot", self.dir], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"container boot failed: {out.stderr}")
        self.pid = int(out.stdout.strip().splitlines()[-1])

    def shutdown(self):
        subprocess.run([CONTAINER, "shutdown", self.dir, "20"], timeout=90)

    def run(self, cmd, check=True, timeout=60, input=None, user=None):
        """Runs cmd (a shell command line) inside the container; returns CompletedProcess."""
        argv = ["nsenter", "-t", str(self.pid), "-a", "--"]
        if user:
            argv += ["runuser", "-u", user, "--"]
        argv += ["/bin/sh", "-c", cmd]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, env=INSIDE_ENV)
        if check and p.returncode != 0:
            raise RuntimeError(f"inside the container: {cmd!r} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
        return p

    def out(self, cmd, **kw):
        return self.run(cmd, **kw).stdout.strip()

    def copy_in(self, paths, directory="/root/dtask-packages"):
        """Copies host files into the container (its /tmp is a tmpfs of its own, so a project
        checked out under /tmp is not visible there); returns the paths inside."""
        self.run(f"mkdir -p {directory}")
        inside = []
        for path in paths:
            dest = f"{directory}/{os.path.basename(path)}"
            with open(path, "rb") as f:
                subprocess.run(["nsenter", "-t", str(self.pid), "-a", "--", "/bin/sh", "-c", f"cat > {dest}"],
                               stdin=f, check=True, timeout=60, env=INSIDE_ENV)
            inside.append(dest)
        return inside

    def active(self, unit):
        return self.out(f"systemctl is-active {unit}", check=False)

    def join_network(self):
        """Moves this process into the container's network namespace (its own loopback)."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)


def wait_for(what, fn, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 — keep polling, report the last error
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http(method, url, body=None, key=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("X-ApiKey", key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw and r.headers.get_content_type().endswith("json") else raw)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw


# ---------------------------------------------------------------------------------------
# packages


def build_packages():
    given = os.environ.get("DTASK_SYSTEST_PACKAGES")
    if given:
        log(f"using the packages in {given}")
        return given
    log("building the packages (tools/dev package)")
    p = subprocess.run([os.path.join(ROOT, "tools/dev"), "package"], capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"tools/dev package failed:\n{p.stdout}{p.stderr}")
    log("built: " + " ".join(p.stdout.split()))
    return os.path.join(ROOT, "build-pkg")


def package_files(pkgdir):
    """{path: kind} of the .deb and .rpm packages, paths normalised to one layout."""
    multiarch = subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True,
                               text=True, check=True).stdout.strip()
    libdir = subprocess.run(["rpm", "--eval", "%{_libdir}"], capture_output=True, text=True,
                            check=True).stdout.strip()

    def normal(path):
        path = "/" + path.lstrip("./").lstrip("/")
        if path.startswith("/lib/"):  # merged /usr
            path = "/usr" + path
        path = path.replace(f"/usr/lib/{multiarch}/", "/usr/lib/@libdir@/")
        path = path.replace(f"{libdir}/", "/usr/lib/@libdir@/")
        if path.startswith("/usr/share/man/") and path.endswith(".gz"):
            path = path[:-3]
        return path

    def ignored(path):
        # distribution-specific documentation and debug data
        return path.startswith(("/usr/share/doc/", "/usr/lib/.build-id/", "/usr/lib/debug/"))

    deb, rpm = {}, {}
    for f in sorted(os.listdir(pkgdir)):
        full = os.path.join(pkgdir, f)
        if f.endswith(".deb") and "-dbgsym_" not in f:
            out = subprocess.run(["dpkg-deb", "--fsys-tarfile", full], capture_output=True, check=True).stdout
            listing = subprocess.run(["tar", "-tvf", "-"], input=out, capture_output=True, check=True).stdout
            for line in listing.decode().splitlines():
                fields = line.split(None, 5)
                mode, name = fields[0], fields[5].split(" -> ")[0]
                if mode[0] == "d":
                    continue
                path = normal(name)
                if not ignored(path):
                    deb[path] = "link" if mode[0] == "l" else ("exec" if "x" in mode[1:4] else "file")
        elif f.endswith(".rpm") and not f.endswith(".src.rpm"):
            out = subprocess.run(["rpm", "-qlp", "--dump", full], capture_output=True, text=True,
                                 check=True).stdout
            for line in out.splitlines():
                fields = line.split()
                name, mode = fields[0], int(fields[4], 8)
                if (mode & 0o170000) == 0o040000:
                    continue
                path = normal(name)
                if not ignored(path):
                    rpm[path] = "link" if (mode & 0o170000) == 0o120000 else (
                        "exec" if mode & 0o100 else "file")
    return deb, rpm


def test_package_lists(pkgdir):
    debs = [f for f in os.listdir(pkgdir) if f.endswith(".deb")]
    rpms = [f for f in os.listdir(pkgdir) if f.endswith(".rpm")]
    check(any(f.startswith("dtask_") for f in debs), f"the .deb was built ({', '.join(sorted(debs))})")
    check(any(re.match(r"dtask-\d", f) for f in rpms), f"the .rpm was built ({', '.join(sorted(rpms))})")
    deb, rpm = package_files(pkgdir)
    only_deb = sorted(set(deb) - set(rpm))
    only_rpm = sorted(set(rpm) - set(deb))
    # Debian installs shared libraries 0644, Fedora 0755: only programs must agree on it
    differ = sorted(p for p in set(deb) & set(rpm) if deb[p] != rpm[p]
                    and not (".so" in p and {deb[p], rpm[p]} == {"file", "exec"}))
    log(f"{len(deb)} files in the .debs, {len(rpm)} in the .rpms")
    for p in only_deb:
        log(f"  only in .deb: {p}")
    for p in only_rpm:
        log(f"  only in .rpm: {p}")
    for p in differ:
        log(f"  differs: {p}: .deb {deb[p]}, .rpm {rpm[p]}")
    check(len(deb) > 30 and not only_deb and not only_rpm and not differ,
          "the .rpm file list matches the .deb's (distribution paths normalised)")


# ---------------------------------------------------------------------------------------
# inside the container


def install(c, pkgdir):
    debs = sorted(os.path.join(pkgdir, f) for f in os.listdir(pkgdir)
                  if f.endswith(".deb") and "-dbgsym_" not in f)
    log("installing " + " ".join(os.path.basename(d) for d in debs))
    debs = c.copy_in(debs)
    # man-db's trigger takes seconds and proves nothing here
    c.run("rm -f /var/lib/man-db/auto-update")
    # The overlay's lower layer is the live host, where other tests create and remove
    # /etc/dtask/dtask.conf and /var/cache/dtask now and then (test-sandbox proves the
    # sandbox cannot read them): give the package directories of its own.
    c.run("for d in /etc/dtask /var/lib/dtask /var/cache/dtask; do mkdir -p $d && "
          "mount -t tmpfs -o mode=0755 systest $d; done")
    p = c.run("DEBIAN_FRONTEND=noninteractive dpkg -i " + " ".join(debs), timeout=120, check=False)
    check(p.returncode == 0, "dpkg -i of the .debs succeeds" + ("" if p.returncode == 0 else f":\n{p.stdout}{p.stderr}"))

    check(c.run("getent passwd dtask", check=False).returncode == 0, "sysusers: user dtask exists")
    check(c.run("getent group dtask-admin", check=False).returncode == 0, "sysusers: group dtask-admin exists")
    modes = c.out("stat -c '%n %a %U:%G %s' /etc/dtask/credentials /etc/dtask/credentials/* /etc/dtask/dtask.conf "
                  "/var/lib/dtask /run/dtask-sandbox /var/cache/dtask")
    log("  " + modes.replace("\n", "\n  "))
    m = {line.split()[0]: line.split()[1:] for line in modes.splitlines()}
    check(m.get("/etc/dtask/credentials", [""])[0] == "700", "credentials directory is 0700")
    for s in ("JWT_SECRET", "KEY_PEPPER", "ADMIN_PASSWORD"):
        e = m.get(f"/etc/dtask/credentials/{s}")
        check(e is not None and e[0] == "600" and e[1] == "root:root" and int(e[2]) >= 24,
              f"postinst generated {s} (0600 root, non-empty)")
    check(m.get("/etc/dtask/dtask.conf", ["", ""])[:2] == ["640", "root:dtask"], "dtask.conf is 0640 root:dtask")

    enabled = c.out("systemctl is-enabled dtask.target dtask-api.socket dtask-keys.socket dtask-reaper.timer",
                    check=False).split()
    check(enabled == ["enabled"] * 4, f"sockets, timer and dtask.target are enabled ({enabled})")
    states = {u: c.active(u) for u in ("dtask-api.socket", "dtask-api.service", "dtask-keys.service",
                                       "dtask-reaper.timer")}
    check(all(s == "inactive" for s in states.values()), f"nothing started on a fresh install ({states})")

    p = c.run("cd /lib/systemd/system && systemd-analyze verify " + " ".join(UNITS), check=False)
    check(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
          "systemd-analyze verify is clean for every unit" + (f":\n{p.stdout}{p.stderr}" if p.stdout + p.stderr else ""))


def setup_services(c):
    # UIDs are not namespaced here: the host's dev workers and test-sandbox use 61000…63xxx
    # and kill every process of a slot UID before reusing it — our runs among them. A range
    # of our own keeps the two apart (see SANDBOX UIDS in dtask-worker(8)).
    c.run("printf 'SANDBOX_UID_MIN=64000\\nSANDBOX_UID_MAX=64063\\n' >>/etc/dtask/dtask.conf")
    wait_for("PostgreSQL", lambda: c.active("postgresql@15-main.service") == "active", 60)
    c.run("runuser -u postgres -- createuser dtask && runuser -u postgres -- createdb -O dtask dtask")
    # the shipped dtask.conf connects as the system user dtask over the local socket
    wait_for("RabbitMQ", lambda: c.run("rabbitmqctl -q await_startup", check=False, timeout=30).returncode == 0, 60)
    log("PostgreSQL and RabbitMQ are up")


def test_socket_activation(c):
    c.run("systemctl start dtask.target")
    before = {u: c.active(u) for u in ("dtask-api.socket", "dtask-keys.socket", "dtask-reaper.timer",
                                       "dtask-api.service", "dtask-keys.service")}
    check(before["dtask-api.socket"] == "active" and before["dtask-keys.socket"] == "active"
          and before["dtask-reaper.timer"] == "active", f"dtask.target started the sockets and the timer ({before})")
    check(before["dtask-api.service"] == "inactive", "dtask-api.service is inactive before the first request")
    check(before["dtask-keys.service"] == "inactive", "dtask-keys.service is inactive before the first request")

    status, _ = http("GET", API + "/healthz", timeout=60)
    check(status == 200, f"GET :8080/healthz answers 200 ({status})")
    check(c.active("dtask-api.service") == "active", "the first request started dtask-api.service")
    check(c.active("dtask-keys.service") == "inactive", "dtask-keys.service is still inactive")

    status, _ = http("GET", KEYS + "/healthz", timeout=60)
    check(status == 200, f"GET :5215/healthz answers 200 ({status})")
    # dtask-keys answers HTTP while it still connects to the database (READY=1 follows)
    state = wait_for("dtask-keys.service to become active",
                     lambda: (lambda s: s if s != "activating" else None)(c.active("dtask-keys.service")), 30)
    check(state == "active", f"the first request started dtask-keys.service ({state})")

    for u in ("dtask-api.service", "dtask-keys.service"):
        user = c.out(f"ps -o user= -p $(systemctl show -P MainPID {u})")
        check(user == "dtask", f"{u} runs as user dtask ({user})")


def busctl_json(c, args, user=None):
    p = c.run("busctl --json=short call " + args, check=False, user=user)
    return p, (json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None)


def dbus_send_error(c, dest, path, method, args, user):
    """Calls with dbus-send as user; returns the error name or None."""
    p = c.run(f"dbus-send --system --print-reply --dest={dest} {path} {method} {args}", check=False, user=user)
    m = re.search(r"^Error ([^\s:]+)", p.stderr + p.stdout, re.M)
    return m.group(1) if m else (None if p.returncode == 0 else f"rc {p.returncode}: {p.stderr.strip()}")


def test_dbus(c):
    keys = "org.dtask.Keys1 /org/dtask/Keys1 org.dtask.Keys1.Manager"
    tasks = "org.dtask.Tasks1 /org/dtask/Tasks1 org.dtask.Tasks1.Manager"

    # D-Bus activation (SystemdService= of the activation files): the first call starts the
    # unit and is answered by it.
    c.run("systemctl stop dtask-api.service dtask-keys.service")
    for name, unit, call in (("Tasks1", "dtask-api.service", f"{tasks} ListTasks sus '' 1 ''"),
                             ("Keys1", "dtask-keys.service", f"{keys} ListKeys")):
        before = c.active(unit)
        p, r = busctl_json(c, call)
        check(before == "inactive" and r is not None and c.active(unit) == "active",
              f"D-Bus activation: the first {name} call starts {unit} and is answered "
              f"({before} → {c.active(unit)}; {(p.stderr or '').strip() or 'ok'})")

    p, r = busctl_json(c, f"{keys} CreateKey sast worker 2 tasks:read tasks:execute 0")
    check(r is not None, "busctl Keys1.CreateKey (root) creates the worker key" + ("" if r else f": {p.stderr}"))
    worker_key = r["data"][1]
    c.run("umask 077 && cat >/etc/dtask/credentials/API_KEY", input=worker_key)

    p, r = busctl_json(c, f"{keys} CreateKey sast system-test 3 tasks:read tasks:write tasks:admin 0")
    check(r is not None, "busctl Keys1.CreateKey creates a user key")
    user_key = r["data"][1]
    status, body = http("POST", API + "/api/tasks", {"name": "rest", "code": "print(1)", "language": "Python",
                                                       "ttl": 60}, key=user_key)
    check(status == 201, f"the key made over D-Bus works over REST (POST /api/tasks → {status})")
    status, _ = http("POST", API + "/api/tasks", {"name": "x", "code": "print(1)", "language": "Python", "ttl": 60},
                     key="ak_" + "A" * 29)
    check(status == 401, f"an unknown key is refused over REST ({status})")

    p, r = busctl_json(c, f"{tasks} CreateTask sssss dbus-task 'print(7)' python '' 00:05:00")
    check(r is not None, "busctl Tasks1.CreateTask (root) creates a task" + ("" if r else f": {p.stderr}"))
    dbus_task = r["data"][0] if r else None
    p, r = busctl_json(c, f"{tasks} ListTasks sus '' 1000 ''")
    listed = [t["id"] for t in json.loads(r["data"][0])] if r else []
    check(dbus_task in listed, f"busctl Tasks1.ListTasks lists it ({len(listed)} tasks)")

    c.run("useradd --system --no-create-home --shell /usr/sbin/nologin systest-user && "
          "useradd --system --no-create-home --shell /usr/sbin/nologin -G dtask-admin systest-admin")
    e = dbus_send_error(c, "org.dtask.Keys1", "/org/dtask/Keys1", "org.dtask.Keys1.Manager.CreateKey",
                        "string:evil array:string:tasks:admin uint64:0", "systest-user")
    check(e == "org.freedesktop.DBus.Error.AccessDenied", f"non-admin Keys1.CreateKey → AccessDenied ({e})")
    e = dbus_send_error(c, "org.dtask.Tasks1", "/org/dtask/Tasks1", "org.dtask.Tasks1.Manager.CreateTask",
                        "string:evil 'string:print(1)' string:python string: string:00:05:00", "systest-user")
    check(e == "org.freedesktop.DBus.Error.AccessDenied", f"non-admin Tasks1.CreateTask → AccessDenied ({e})")
    e = dbus_send_error(c, "org.dtask.Tasks1", "/org/dtask/Tasks1", "org.dtask.Tasks1.Manager.ListTasks",
                        "string: uint32:10 string:", "systest-user")
    check(e is None, f"non-admin Tasks1.ListTasks is allowed ({e})")
    e = dbus_send_error(c, "org.dtask.Keys1", "/org/dtask/Keys1", "org.dtask.Keys1.Manager.CreateKey",
                        "string:by-admin-group array:string:tasks:read uint64:0", "systest-admin")
    check(e is None, f"a member of dtask-admin may call Keys1.CreateKey ({e})")
    return user_key


def test_cold_start(c, key):
    """Both daemons inactive (as after boot): the first request with a key is served, its
    validation starting dtask-keys through its socket in turn."""
    c.run("systemctl stop dtask-api.service dtask-keys.service")
    states = [c.active("dtask-api.service"), c.active("dtask-keys.service")]
    status, body = http("GET", API + "/api/tasks?limit=1", key=key, timeout=60)
    check(states == ["inactive", "inactive"] and status == 200,
          f"cold start: the first request with a key is answered 200 ({states} → {status}"
          + ("" if status == 200 else f": {body.get('detail') if isinstance(body, dict) else body!r}") + ")")
    check(c.active("dtask-api.service") == "active" and c.active("dtask-keys.service") == "active",
          "cold start: that request started dtask-api.service and, through it, dtask-keys.service")


def create_task(key, name, code, ttl=120, language="Python", input_data=None):
    body = {"name": name, "code": code, "language": language, "ttl": ttl}
    if input_data is not None:
        body["inputData"] = input_data
    status, t = http("POST", API + "/api/tasks", body, key=key)
    if status != 201:
        raise RuntimeError(f"POST /api/tasks → {status}: {t}")
    return t["id"]


def get_task(key, tid, wait=0):
    status, t = http("GET", f"{API}/api/tasks/{tid}" + (f"?wait={wait}" if wait else ""), key=key,
                     timeout=wait + 30)
    if status != 200:
        raise RuntimeError(f"GET /api/tasks/{tid} → {status}: {t}")
    return t


def wait_terminal(key, tid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = int(deadline - time.monotonic())
        t = get_task(key, tid, wait=max(1, min(left, 20)))
        if t["status"] >= 2 or time.monotonic() >= deadline:
            return t


def test_workers(c, key):
    c.run("systemctl start dtask-worker@1 dtask-worker@2", timeout=90)
    states = [c.active("dtask-worker@1"), c.active("dtask-worker@2")]
    check(states == ["active", "active"], f"dtask-worker@1 and @2 are active ({states})")
    for i in (1, 2):
        env = c.out(f"tr '\\0' '\\n' </proc/$(systemctl show -P MainPID dtask-worker@{i})/environ")
        check(f"DTASK_WORKER_INSTANCE={i}" in env.splitlines(), f"dtask-worker@{i} gets DTASK_WORKER_INSTANCE={i}")
    ready = c.out("journalctl -u dtask-worker@1 -o cat --no-pager | grep -m1 '^Ready:' || true")
    log(f"  worker@1: {ready}")
    check("/1 " in ready or "/1," in ready, "the instance appears in the worker's name in its log")
    if platform.machine() in ("x86_64", "aarch64"):
        check("runs started by /usr/libexec/dtask/dtask-sandbox-stem," in ready,
              "the installed worker starts its runs through dtask-sandbox-stem")

    n = 10
    ids = [create_task(key, f"spread-{i}", "import time\ntime.sleep(0.5)\nprint('done', end='')") for i in range(n)]
    results = [wait_terminal(key, tid, 60) for tid in ids]
    statuses = [t["statusName"] for t in results]
    check(all(s == "Completed" for s in statuses) and all(t["result"] == "done" for t in results),
          f"{n} tasks completed ({statuses})")
    for t in results:
        if t["statusName"] != "Completed":
            log(f"  {t['id']}: {t['statusName']}/{t['verdict']}: {t['errorMessage']!r}")

    by_instance = {}
    for i in (1, 2):
        journal = c.out(f"journalctl -u dtask-worker@{i} -o cat --no-pager")
        done = {tid for tid in ids if re.search(rf"^Task {tid}, attempt \d+: completed", journal, re.M | re.I)}
        by_instance[i] = done
        status = c.out(f"systemctl show -P StatusText dtask-worker@{i}")
        log(f"  dtask-worker@{i}: {len(done)} of the tasks; STATUS={status!r}")
    check(by_instance[1] and by_instance[2], f"both instances completed tasks "
          f"(@1: {len(by_instance[1])}, @2: {len(by_instance[2])})")
    check(by_instance[1] | by_instance[2] == set(ids) and not by_instance[1] & by_instance[2],
          "every task was completed by exactly one instance")

    # Memory bomb: grows until the cgroup's memory limit (256M) kills it.
    tid = create_task(key, "memory-bomb", "a = []\nwhile True:\n    a.append(b'x' * (8 << 20))\n")
    t = wait_terminal(key, tid, 60)
    check(t["statusName"] == "Failed" and t["verdict"] == "memory_limit",
          f"a memory bomb ends Failed/memory_limit ({t['statusName']}/{t['verdict']}: {t['errorMessage']!r})")
    # the sandbox's cgroups are below the worker's own unit cgroup (Delegate=yes)
    cg = c.out("journalctl -u dtask-worker@1 -u dtask-worker@2 -o cat --no-pager | grep -m1 -o 'cgroups at [^ ,]*' || true")
    log(f"  {cg}")
    check(re.search(r"/system\.slice/system-dtask\\x2dworker\.slice/dtask-worker@[12]\.service", cg) is not None,
          "the runs' cgroups are in the worker's delegated subtree")

    # Python and C# through the sandbox as installed (bwrap under the unit's hardening)
    tid = create_task(key, "stdin", "import sys\nprint(len(sys.stdin.read()), end='')", input_data="a" * 42)
    t = wait_terminal(key, tid, 60)
    check(t["statusName"] == "Completed" and t["result"] == "42", f"Python with stdin → 42 ({t['result']!r})")
    if os.path.exists("/usr/bin/mcs"):
        tid = create_task(key, "csharp", "class P { static void Main() { System.Console.Write(6 * 7); } }",
                          language="CSharp")
        t = wait_terminal(key, tid, 90)
        check(t["statusName"] == "Completed" and t["result"] == "42",
              f"C# (Mono JIT under the unit) → 42 ({t['statusName']}, {t['result']!r}, {t.get('errorMessage')!r})")


def test_reaper(c, key):
    c.run("systemctl stop dtask-worker@1 dtask-worker@2", timeout=90)
    states = [c.active("dtask-worker@1"), c.active("dtask-worker@2")]
    check(states == ["inactive", "inactive"], f"workers stopped ({states})")
    tid = create_task(key, "ttl-2s", "print('never')", ttl=2)
    t = wait_terminal(key, tid, 15)
    check(t["statusName"] == "Expired" and t["errorMessage"] == "Task expired due to TTL",
          f"a TTL-2 s task nobody runs is Expired ({t['statusName']}, {t['errorMessage']!r})")
    if t["statusName"] == "Expired":
        def ts(s):
            s = s.rstrip("Z")
            base, _, frac = s.partition(".")
            return time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
        late = ts(t["completedAt"]) - ts(t["expiresAt"])
        log(f"  expired {late:.3f} s after expiresAt")
        check(late <= 1.5, f"expired within 1.5 s of expiresAt ({late:.3f} s)")
    journal = c.out("journalctl -u dtask-reaper.service -o cat --no-pager")
    check(re.search(rf"^Task {tid} expired", journal, re.M) is not None,
          "dtask-reaper.service logged the expiry")
    first = c.out("systemctl show -P InvocationID dtask-reaper.service")
    time.sleep(2.5)
    second = c.out("systemctl show -P InvocationID dtask-reaper.service")
    triggers = c.out("systemctl show -P Triggers dtask-reaper.timer")
    check(triggers == "dtask-reaper.service" and first and second and first != second,
          f"dtask-reaper.timer keeps starting dtask-reaper.service (invocation {first[:8]} → {second[:8]})")
    failed = c.out("systemctl show -P Result dtask-reaper.service")
    check(failed == "success", f"the reaper's last pass succeeded ({failed})")


def test_reinstall(c, pkgdir):
    """An upgrade (here: the same version again) keeps the secrets and restarts what runs."""
    c.run("systemctl start dtask-api.service")
    before = c.out("systemctl show -P MainPID dtask-api.service")
    secret = c.out("sha256sum /etc/dtask/credentials/JWT_SECRET /etc/dtask/credentials/API_KEY")
    debs = c.copy_in(sorted(os.path.join(pkgdir, f) for f in os.listdir(pkgdir)
                            if f.endswith(".deb") and "-dbgsym_" not in f))
    p = c.run("DEBIAN_FRONTEND=noninteractive dpkg -i " + " ".join(debs), timeout=120, check=False)
    check(p.returncode == 0, "dpkg -i over the installed package (upgrade path) succeeds")
    check(c.out("sha256sum /etc/dtask/credentials/JWT_SECRET /etc/dtask/credentials/API_KEY") == secret,
          "the upgrade keeps the secrets and the worker key")
    after = c.out("systemctl show -P MainPID dtask-api.service")
    check(c.active("dtask-api.service") == "active" and after not in ("0", before),
          f"the upgrade restarted the running dtask-api.service (pid {before} → {after})")


def test_purge(c):
    p = c.run("dpkg --purge dtask libdtask-dev libdtask0", timeout=120, check=False)
    check(p.returncode == 0, "dpkg --purge removes the packages" + (f": {p.stdout}{p.stderr}" if p.returncode else ""))
    left = c.out("find /etc/dtask /var/lib/dtask /var/cache/dtask -mindepth 1; "
                 "ls /lib/systemd/system /usr/share/dbus-1/system.d | grep -i dtask; "
                 "systemctl list-unit-files --no-legend 'dtask*' | awk '{print $1}'", check=False)
    check(left == "", "nothing of dtask is left (configuration, secrets, units)" + (f": {left}" if left else ""))


def test_stop(c):
    since = c.out("date +%s")
    c.run("systemctl stop dtask.target", timeout=90)
    procs = c.out("ps -eo pid=,comm= | awk '$2 ~ /^dtask/'")
    check(procs == "", "systemctl stop dtask.target leaves no dtask process" + (f": {procs}" if procs else ""))
    active = c.out("systemctl list-units --no-legend --plain --state=active 'dtask*' | awk '{print $1}'")
    check(active == "", "no dtask unit is active" + (f": {active}" if active else ""))
    cycles = c.out("journalctl -b --no-pager -o cat | grep -i 'ordering cycle' || true")
    check(cycles == "", "systemd found no ordering cycle" + (f": {cycles}" if cycles else ""))
    if procs or active:
        log("  the journal since the stop:\n" + c.out(f"journalctl --no-pager -o short-monotonic --since=@{since}",
                                                      check=False))


def record_security(c):
    for u in ("dtask-api.service", "dtask-keys.service", "dtask-reaper.service", "dtask-worker@1.service"):
        line = c.out(f"systemd-analyze security --no-pager {u} | tail -n1", check=False)
        log(f"  security: {line}")


def remove_stale_containers():
    """Shuts down containers of earlier runs that were killed before they could clean up."""
    tmp = tempfile.gettempdir()
    for d in os.listdir(tmp):
        path = os.path.join(tmp, d)
        if not d.startswith("dtask-systest-") or not os.path.isdir(path):
            continue
        try:
            owner = int(open(os.path.join(path, "owner")).read())
            if owner != os.getpid() and os.path.exists(f"/proc/{owner}"):
                continue  # another run of this test, still going
        except (OSError, ValueError):
            pass
        try:
            pid = int(open(os.path.join(path, "pid")).read())
            alive = os.path.exists(f"/proc/{pid}")
        except (OSError, ValueError):
            alive = False
        if alive or os.path.exists(os.path.join(path, "cgroups")):
            log(f"shutting down a container left behind in {path}")
            subprocess.run([CONTAINER, "shutdown", path, "5"], timeout=60)
        shutil.rmtree(path, ignore_errors=True)


def main():
    if os.geteuid() != 0:
        skip("needs root")
    for tool in ("unshare", "nsenter", "dpkg-buildpackage", "rpmbuild", "dpkg-deb", "rpm"):
        if not shutil.which(tool):
            skip(f"{tool} is not installed")
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        skip("needs cgroup v1 controllers (the recipe of ENVIRONMENT.md)")

    def interrupted(signum, _frame):
        raise SystemExit(f"interrupted by signal {signum}")  # unwinds through the clean-up below

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("the system test took too long")))
    signal.signal(signal.SIGTERM, interrupted)  # meson's timeout
    signal.signal(signal.SIGHUP, interrupted)
    signal.alarm(TOTAL_TIMEOUT)
    remove_stale_containers()

    pkgdir = build_packages()
    test_package_lists(pkgdir)

    workdir = tempfile.mkdtemp(prefix="dtask-systest-")
    with open(os.path.join(workdir, "owner"), "w") as f:
        f.write(str(os.getpid()))
    c = Container(workdir)
    try:
        log("booting the container")
        c.boot()
        wait_for("systemd in the container", lambda: c.out("systemctl is-system-running", check=False)
                 in ("running", "degraded"), 90)
        log(f"systemd runs as PID {c.pid} ({c.out('systemctl is-system-running', check=False)})")
        c.join_network()

        install(c, pkgdir)
        setup_services(c)
        test_socket_activation(c)
        key = test_dbus(c)
        test_cold_start(c, key)
        test_workers(c, key)
        test_reaper(c, key)
        record_security(c)
        test_reinstall(c, pkgdir)
        test_stop(c)
        test_purge(c)
    except Exception as e:  # noqa: BLE001
        failures.append(f"{type(e).__name__}: {e}")
        log(f"ERROR: {type(e).__name__}: {e}")
        try:
            for u in ("dtask-api", "dtask-keys", "dtask-worker@1", "dtask-worker@2", "dtask-reaper"):
                log(f"--- journal of {u}:\n" + c.out(f"journalctl -u {u} --no-pager -n 30 -o short-monotonic",
                                                     check=False, timeout=20))
        except Exception:  # noqa: BLE001
            pass
    finally:
        signal.alarm(0)
        log("shutting the container down")
        c.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    if failures:
        print(f"\n{len(failures)} failure(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    log("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
