# SPDX-License-Identifier: MIT
"""Helpers of the dtask-keys integration tests (test-keys-*.py): HTTP, JWT minting,
psql, spawning dtask-keys and private D-Bus daemons. Python standard library only.
Loaded by the tests with importlib (the file name has dashes)."""

import base64
import contextlib
import hashlib
import hmac
import http.client as httpclient
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

SKIP = 77


def need_env(*names):
    """Returns the values of the variables; exits 77 (skipped) when one is missing."""
    values = []
    for n in names:
        v = os.environ.get(n)
        if not v:
            print(f"SKIP: {n} is not set (run through 'tools/dev test')", file=sys.stderr)
            sys.exit(SKIP)
        values.append(v)
    return values


def build_root():
    return os.environ.get("DTASK_BUILD_ROOT") or os.environ.get("DTASK_BUILD_DIR") or "build"


def keys_binary():
    p = os.path.join(build_root(), "src", "keys", "dtask-keys")
    if not os.access(p, os.X_OK):
        print(f"SKIP: {p} is not built", file=sys.stderr)
        sys.exit(SKIP)
    return p


def source_root():
    return os.environ.get("DTASK_SOURCE_ROOT") or os.environ.get("DTASK_ROOT") or "."


def credentials_dir():
    d = os.environ.get("DTASK_CREDENTIALS_DIRECTORY")
    if d:
        return d
    root = os.environ.get("DTASK_ROOT")
    return os.path.join(root, ".dev", "credentials") if root else None


def read_credential(name):
    """A secret of the shared dev instance, as dtask-keys reads it (one trailing newline dropped)."""
    d = credentials_dir()
    if not d:
        return None
    try:
        with open(os.path.join(d, name), "rb") as f:
            data = f.read()
    except OSError:
        return None
    if data.endswith(b"\n"):
        data = data[:-1]
    if data.endswith(b"\r"):
        data = data[:-1]
    return data


# ---------------------------------------------------------------------------
# HTTP

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"<{self.status} {self.headers.get('content-type')} {self.body[:300]!r}>"


def http(base_url, method, path, body=None, headers=None, raw=None, timeout=30):
    """One request. body: JSON-serialized with Content-Type application/json unless raw (bytes) is given."""
    u = urllib.parse.urlsplit(base_url)
    conn = httpclient.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    h = dict(headers or {})
    data = None
    if raw is not None:
        data = raw
    elif body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        resp = Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()
    return resp


def http_announce_body(base_url, method, path, length, headers=None, timeout=30):
    """Sends only the request head, announcing a body of length bytes, and reads the answer: a
    server that checks the size before reading answers at once (413), without the body."""
    u = urllib.parse.urlsplit(base_url)
    h = {"Host": f"{u.hostname}:{u.port}", "Content-Length": str(length), "Connection": "close"}
    h.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head.encode())
        f = s.makefile("rb")
        r = httpclient.HTTPResponse(s)
        r.begin()
        resp = Response(r.status, r.getheaders(), r.read())
        f.close()
    return resp


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------
# JWT

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def mint_jwt(secret, payload, alg="HS256", header=None, signature=None):
    """A token signed with HMAC (HS256/384/512) under secret; alg 'none' leaves the signature empty."""
    h = {"alg": alg, "typ": "JWT"}
    if header:
        h.update(header)
    signing_input = b64url(json.dumps(h).encode()) + "." + b64url(json.dumps(payload).encode())
    if signature is not None:
        sig = signature
    elif alg == "none":
        sig = ""
    else:
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        sig = b64url(hmac.new(secret, signing_input.encode(), digest).digest())
    return signing_input + "." + sig


def jwt_payload(token):
    return json.loads(b64url_decode(token.split(".")[1]))


def jwt_header(token):
    return json.loads(b64url_decode(token.split(".")[0]))


def admin_payload(claims=("ManageApiKey",), lifetime=3600, **extra):
    now = int(time.time())
    p = {"iss": "dtask-keys", "aud": "dtask-keys", "sub": "test-admin", "iat": now, "nbf": now,
         "exp": now + lifetime, "claims": list(claims)}
    p.update(extra)
    return p


# ---------------------------------------------------------------------------
# PostgreSQL

def psql_binary():
    pg_bin = os.environ.get("DTASK_PG_BIN")
    if pg_bin and os.access(os.path.join(pg_bin, "psql"), os.X_OK):
        return os.path.join(pg_bin, "psql")
    return shutil.which("psql") or "/usr/bin/psql"


def psql(database_url, sql, *params):
    """Runs one statement; returns the rows as lists of strings (tab-separated, unaligned).
    Parameters are passed as psql variables (:'v1', :'v2', …) so that they are quoted by psql."""
    args = [psql_binary(), database_url, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\t"]
    for i, p in enumerate(params, 1):
        args += ["-v", f"v{i}={p}"]
    r = subprocess.run(args, input=sql, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"psql failed ({r.returncode}): {r.stderr.strip()}\nSQL: {sql}")
    return [line.split("\t") for line in r.stdout.splitlines() if line != ""]


# ---------------------------------------------------------------------------
# processes

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_secret(n=48):
    return base64.b64encode(os.urandom(n)).decode()


class KeysDaemon:
    """A dtask-keys of our own: own port, own configuration file, own secrets, a notify socket
    that records sd_notify messages. Use as a context manager."""

    def __init__(self, database_url, conf=None, env=None, bus_address="unix:path=/nonexistent/dtask-test-no-bus",
                 args=None, jwt_secret=None, pepper=None, admin_password="test-admin-password"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="dtask-keys-test-")
        os.chmod(self.dir, 0o755)
        self.jwt_secret = jwt_secret if jwt_secret is not None else random_secret()
        self.pepper = pepper if pepper is not None else random_secret(32)
        self.admin_password = admin_password
        self.conf_path = os.path.join(self.dir, "dtask.conf")
        c = {
            "DATABASE_URL": database_url,
            "ADMIN_USERNAME": "admin",
            "ADMIN_CLAIMS": "ManageApiKey",
            "LOG_LEVEL": "debug",
        }
        c.update(conf or {})
        with open(self.conf_path, "w") as f:
            for k, v in c.items():
                if v is not None:
                    f.write(f"{k}={v}\n")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "DATABASE_URL",
                                         "JWT_", "ADMIN_", "KEY_PEPPER", "API_KEYS_CONNECTION_STRING"))}
        self.env["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
        if self.jwt_secret:
            self.env["JWT_SECRET"] = self.jwt_secret
        if self.pepper:
            self.env["KEY_PEPPER"] = self.pepper
        if self.admin_password:
            self.env["ADMIN_PASSWORD"] = self.admin_password
        self.env.update(env or {})
        self.env = {k: v for k, v in self.env.items() if v is not None}
        self.args = [keys_binary(), f"--listen=127.0.0.1:{self.port}", f"--config={self.conf_path}"] + list(args or [])
        self.notify_path = os.path.join(self.dir, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.setblocking(False)
        self.env["NOTIFY_SOCKET"] = self.notify_path
        self.log_path = os.path.join(self.dir, "log")
        self.proc = None
        self.messages = []

    def start(self, wait_ready=True, timeout=20):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        if wait_ready:
            self.wait_notify("READY=1", timeout)
        return self

    def poll_notify(self):
        while True:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                return
            self.messages += data.decode(errors="replace").split("\n")

    def wait_notify(self, what, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.poll_notify()
            if what in self.messages:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"dtask-keys exited with {self.proc.returncode} before {what}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"dtask-keys did not send {what} within {timeout}s:\n{self.output()}")

    def wait_http(self, path="/healthz", timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                return http(self.url, "GET", path, timeout=2)
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"dtask-keys exited with {self.proc.returncode}:\n{self.output()}")
                time.sleep(0.05)
        raise AssertionError(f"dtask-keys does not answer on {self.url}:\n{self.output()}")

    def run_to_exit(self, timeout=20):
        """Starts it expecting it to exit by itself (e.g. configuration errors); returns (code, output)."""
        self.start(wait_ready=False)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"dtask-keys did not exit:\n{self.output()}")
        return self.proc.returncode, self.output()

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"dtask-keys ignored signal {sig} for {timeout}s:\n{self.output()}")
        return self.proc.returncode

    def close(self):
        try:
            self.stop()
            # in sanitizer builds (-Db_sanitize=address,undefined) a report fails the test
            out = self.output()
            for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
                if marker in out:
                    raise AssertionError(f"dtask-keys: sanitizer report:\n{out[-6000:]}")
        finally:
            self.notify.close()
            if getattr(self, "log", None):
                self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def login(self, username="admin", password=None):
        r = http(self.url, "POST", "/api/auth/login",
                 {"username": username, "password": password if password is not None else self.admin_password})
        assert r.status == 200, r
        return r.json["jwtToken"]


# D-Bus: a private bus, "realistic" (the policy of Debian's system bus plus the project's
# dbus/*.conf) or "permissive" (everybody may send anything: only the service checks).
DBUS_REALISTIC = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <includedir>{includedir}</includedir>
</busconfig>
"""

DBUS_PERMISSIVE = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


class DBusDaemon:
    def __init__(self, template, policy_files=(), directory=None):
        self.dir = directory or tempfile.mkdtemp(prefix="dtask-keys-bus-")
        os.chmod(self.dir, 0o755)
        self.socket = os.path.join(self.dir, "system_bus_socket")
        self.address = f"unix:path={self.socket}"
        includedir = os.path.join(self.dir, "system.d")
        os.makedirs(includedir, exist_ok=True)
        for p in policy_files:
            shutil.copy(p, includedir)
        self.conf = os.path.join(self.dir, "system.conf")
        with open(self.conf, "w") as f:
            f.write(template.format(socket=self.socket, includedir=includedir))
        self.proc = None

    def start(self):
        self.log = os.path.join(self.dir, "log")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={self.conf}", "--nofork", "--nopidfile",
                                          "--nosyslog"], stdout=subprocess.DEVNULL, stderr=log,
                                         stdin=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if os.path.exists(self.socket):
                r = subprocess.run(["busctl", f"--address={self.address}", "list"], capture_output=True)
                if r.returncode == 0:
                    return self
            if self.proc.poll() is not None:
                with open(self.log) as f:
                    raise AssertionError(f"dbus-daemon exited: {f.read()}")
            time.sleep(0.05)
        raise AssertionError("dbus-daemon did not come up")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def ensure_traversable_for(path, user="nobody"):
    """Makes every directory above path searchable by others, so that user can reach a socket there."""
    d = os.path.dirname(os.path.abspath(path))
    uid = pwd.getpwnam(user).pw_uid
    while True:
        st = os.stat(d)
        if not (st.st_mode & 0o001) and st.st_uid != uid:
            os.chmod(d, st.st_mode | 0o001)
        if d == "/":
            break
        d = os.path.dirname(d)


AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def busctl(address, *args, as_user=None, timeout=30):
    """busctl --json=short call … ; returns (returncode, parsed JSON or None, stderr)."""
    cmd = list(as_user or []) + ["busctl", f"--address={address}", "--json=short", "--timeout=20", "call",
                                 "org.dtask.Keys1", "/org/dtask/Keys1", "org.dtask.Keys1.Manager"] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    data = None
    if r.returncode == 0 and r.stdout.strip():
        data = json.loads(r.stdout)
    return r.returncode, data, r.stderr.strip()


def dbus_send(address, method, *args, as_user=None, timeout=30):
    """dbus-send (prints the D-Bus error name, which busctl does not); returns (rc, stdout, error name or None).
    The error message is in dbus_send.last_message."""
    cmd = list(as_user or []) + ["dbus-send", f"--bus={address}", "--print-reply", "--reply-timeout=20000",
                                 "--dest=org.dtask.Keys1", "/org/dtask/Keys1",
                                 f"org.dtask.Keys1.Manager.{method}"] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    name = None
    dbus_send.last_message = None
    for line in r.stderr.splitlines():
        if line.startswith("Error "):
            name = line.split()[1].rstrip(":")
            dbus_send.last_message = line.split(":", 1)[1].strip() if ":" in line else ""
    return r.returncode, r.stdout, name


def blake2b_key_hash(key, pepper):
    """The stored hash of a key: keyed BLAKE2b-256 with the pepper as key (≤ 64 bytes)."""
    return hashlib.blake2b(key.encode(), key=pepper, digest_size=32).hexdigest()


@contextlib.contextmanager
def timed(label):
    t = time.monotonic()
    yield
    print(f"  {label}: {time.monotonic() - t:.2f}s", file=sys.stderr)
