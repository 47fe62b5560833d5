#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-keys as a process, each test with an instance of its own (own port, own secrets,
same PostgreSQL $DTASK_DATABASE_URL): configuration checked at start-up (short JWT_SECRET,
missing/short KEY_PEPPER, bad values name their key), sd_notify READY=1/STOPPING=1,
SIGTERM, socket activation, login (plain and argon2id password, bad requests), rate
limiting with 429 + Retry-After, and database outages (through a TCP proxy that the
test cuts) answered with 503 while the daemon keeps serving."""

import importlib.util
import os
import select
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.parse
import uuid

_spec = importlib.util.spec_from_file_location(
    "keys_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test-keys-common.py"))
kc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kc)

(DB,) = kc.need_env("DTASK_DATABASE_URL")
BINARY = kc.keys_binary()
MARK = "t-daemon-" + uuid.uuid4().hex[:10]


def tearDownModule():
    kc.psql(DB, "DELETE FROM api_keys WHERE starts_with(name, :'v1')", MARK)


class TcpProxy:
    """Forwards 127.0.0.1:port to PostgreSQL; cut() drops every connection and stops listening."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = kc.free_port()
        self.listener = None
        self.conns = []
        self.lock = threading.Lock()

    def start(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener):
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                r, _, _ = select.select([a, b], [], [], 1)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        raise OSError
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self):
        if self.listener:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in accept()
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns = []

    def url(self):
        u = urllib.parse.urlsplit(DB)
        netloc = (u.username + "@" if u.username else "") + f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def db_target():
    u = urllib.parse.urlsplit(DB)
    return u.hostname or "127.0.0.1", u.port or 5432


class Configuration(unittest.TestCase):
    def run_bad(self, must_mention, **kw):
        with kc.KeysDaemon(DB, **kw) as d:
            code, out = d.run_to_exit()
        self.assertEqual(code, 1, out)
        for m in must_mention:
            self.assertIn(m, out)
        self.assertNotIn("READY=1", d.messages)
        return out

    def test_short_jwt_secret_refused(self):
        out = self.run_bad(["JWT_SECRET", "31 bytes", "at least 32"], jwt_secret="s" * 31)
        self.assertNotIn("s" * 31, out)  # the secret itself is not printed

    def test_missing_jwt_secret(self):
        self.run_bad(["JWT_SECRET"], jwt_secret="")

    def test_missing_pepper(self):
        self.run_bad(["KEY_PEPPER"], pepper="")

    def test_short_pepper(self):
        out = self.run_bad(["KEY_PEPPER", "at least 32"], pepper="p" * 20)
        self.assertNotIn("p" * 20, out)

    def test_missing_database_url(self):
        self.run_bad(["DATABASE_URL"], conf={"DATABASE_URL": None})

    def test_bad_values_name_their_key(self):
        self.run_bad(["LOGIN_RATE_LIMIT"], conf={"LOGIN_RATE_LIMIT": "many"})
        self.run_bad(["VALIDATE_RATE_LIMIT"], conf={"VALIDATE_RATE_LIMIT": "0"})
        self.run_bad(["JWT_LIFETIME"], conf={"JWT_LIFETIME": "forever"})
        self.run_bad(["LOG_LEVEL"], conf={"LOG_LEVEL": "loud"})
        self.run_bad(["NO_SUCH_KEY"], conf={"NO_SUCH_KEY": "1"})

    def test_admin_settings(self):
        self.run_bad(["ADMIN_PASSWORD", "ADMIN_PASSWORD_HASH"],
                     env={"ADMIN_PASSWORD_HASH": "$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaA"})
        self.run_bad(["ADMIN_PASSWORD_HASH", "argon2id"], admin_password="",
                     env={"ADMIN_PASSWORD_HASH": "plain-text"})
        self.run_bad(["ADMIN_USERNAME"], admin_password="", conf={"ADMIN_USERNAME": "admin"})
        self.run_bad(["TLS_CERTIFICATE", "TLS_KEY"], conf={"TLS_CERTIFICATE": "/nonexistent.pem"})

    def test_compat_connection_string_alias(self):
        # API_KEYS_CONNECTION_STRING (the older system's name) is accepted for DATABASE_URL
        with kc.KeysDaemon(DB, conf={"DATABASE_URL": None}, env={"API_KEYS_CONNECTION_STRING": DB}) as d:
            d.start()
            self.assertEqual(kc.http(d.url, "GET", "/readyz").status, 200)

    def test_help_version(self):
        r = subprocess.run([BINARY, "--version"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^dtask-keys \d")
        r = subprocess.run([BINARY, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--listen", r.stdout)
        r = subprocess.run([BINARY, "--bogus"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)


class Lifecycle(unittest.TestCase):
    def test_ready_stopping_sigterm(self):
        with kc.KeysDaemon(DB) as d:
            d.start()
            self.assertIn("READY=1", d.messages)
            self.assertTrue(any(m.startswith("STATUS=") for m in d.messages))
            r = kc.http(d.url, "GET", "/healthz")
            self.assertEqual((r.status, r.json), (200, {"status": "ok"}))
            self.assertEqual(kc.http(d.url, "GET", "/readyz").status, 200)
            self.assertEqual(d.stop(signal.SIGTERM), 0)
            d.poll_notify()
            self.assertIn("STOPPING=1", d.messages)
            self.assertIn("Received SIGTERM, stopping.", d.output())

    def test_sigint(self):
        with kc.KeysDaemon(DB) as d:
            d.start()
            self.assertEqual(d.stop(signal.SIGINT), 0)

    def test_socket_activation(self):
        port = kc.free_port()
        with kc.KeysDaemon(DB) as d:
            # systemd-socket-activate passes the listening socket as fd 3 (LISTEN_FDS=1)
            d.args = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", "NOTIFY_SOCKET",
                      "-E", "JWT_SECRET", "-E", "KEY_PEPPER", "-E", "ADMIN_PASSWORD", "-E", "DBUS_SYSTEM_BUS_ADDRESS",
                      BINARY, f"--config={d.conf_path}"]
            d.url = f"http://127.0.0.1:{port}"
            d.start(wait_ready=False)
            r = d.wait_http("/healthz")
            self.assertEqual(r.status, 200)
            d.wait_notify("READY=1")
            self.assertIn("sockets from systemd", d.output())
            self.assertEqual(d.stop(), 0)


class Tls(unittest.TestCase):
    def test_https(self):
        import ssl
        tmp = kc.tempfile.mkdtemp(prefix="dtask-keys-tls-")
        try:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                                "-keyout", key, "-out", cert], capture_output=True)
            if r.returncode != 0:
                self.skipTest("openssl cannot make a certificate")
            ctx = ssl.create_default_context(cafile=cert)
            with open(key) as f:
                key_pem = f.read()
            # paths in the configuration file; or the PEM text itself (as systemd credentials hold it)
            for conf, env in (({"TLS_CERTIFICATE": cert, "TLS_KEY": key}, {}),
                              ({"TLS_CERTIFICATE": cert}, {"TLS_KEY": key_pem})):
                with self.subTest(env=bool(env)), kc.KeysDaemon(DB, conf=conf, env=env) as d:
                    d.start()
                    self.assertIn("Serving HTTPS", d.output())
                    c = kc.httpclient.HTTPSConnection("127.0.0.1", d.port, context=ctx, timeout=10)
                    c.request("POST", "/api/auth/login", body=kc.json.dumps(
                        {"username": "admin", "password": d.admin_password}),
                        headers={"Content-Type": "application/json"})
                    resp = c.getresponse()
                    self.assertEqual(resp.status, 200)
                    self.assertIn("jwtToken", kc.json.loads(resp.read()))
                    c.close()
                    self.assertNotIn("PRIVATE KEY", d.output())
        finally:
            kc.shutil.rmtree(tmp, ignore_errors=True)


class Login(unittest.TestCase):
    def test_login_requests(self):
        with kc.KeysDaemon(DB, conf={"LOGIN_RATE_LIMIT": "1000"}) as d:
            d.start()
            ok = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": d.admin_password})
            self.assertEqual(ok.status, 200, ok)
            self.assertEqual(ok.header("Cache-Control"), "no-store")
            self.assertEqual(set(ok.json), {"jwtToken"})
            # token lifetime and claims from the configuration
            p = kc.jwt_payload(ok.json["jwtToken"])
            self.assertEqual(p["claims"], ["ManageApiKey"])
            # token signed with this instance's secret works on it
            self.assertEqual(kc.http(d.url, "GET", "/api/apikeys", headers=kc.bearer(ok.json["jwtToken"])).status, 200)
            # … and a token minted with that secret too (the secret is the only thing that matters)
            t = kc.mint_jwt(d.jwt_secret.encode(), kc.admin_payload())
            self.assertEqual(kc.http(d.url, "GET", "/api/apikeys", headers=kc.bearer(t)).status, 200)

            cases = [
                ({"username": "admin", "password": "wrong"}, None, 401),
                ({"username": "root", "password": d.admin_password}, None, 401),
                ({"username": "ADMIN", "password": d.admin_password}, None, 401),
                ({"Username": "admin", "PASSWORD": d.admin_password}, None, 200),
                ({"username": "admin"}, None, 400),
                ({"password": d.admin_password}, None, 400),
                ({"username": 1, "password": 2}, None, 400),
                ({"username": "", "password": ""}, None, 400),
                (b"{", "application/json", 400),
                (b"[]", "application/json", 400),
                (b'{"username":"admin"}', "text/plain", 415),
            ]
            for body, ctype, status in cases:
                with self.subTest(body=str(body)[:60]):
                    if isinstance(body, bytes):
                        r = kc.http(d.url, "POST", "/api/auth/login", raw=body, headers={"Content-Type": ctype})
                    else:
                        r = kc.http(d.url, "POST", "/api/auth/login", body)
                    self.assertEqual(r.status, status, r)
                    if status != 200:
                        self.assertEqual(r.header("Content-Type"), "application/problem+json")
                        self.assertNotIn("jwtToken", r.json or {})
            out = d.output()
            self.assertIn("Admin admin logged in from 127.0.0.1", out)
            self.assertIn("Failed admin login from 127.0.0.1", out)
            self.assertNotIn(d.admin_password, out)
            self.assertNotIn(ok.json["jwtToken"], out)

    def test_admin_claims(self):
        with kc.KeysDaemon(DB, conf={"ADMIN_CLAIMS": " ManageApiKey ; other;;ManageApiKey "}) as d:
            d.start()
            self.assertEqual(kc.jwt_payload(d.login())["claims"], ["ManageApiKey", "other"])
        with kc.KeysDaemon(DB, conf={"ADMIN_CLAIMS": "SomethingElse", "JWT_LIFETIME": "1h"}) as d:
            d.start()
            token = d.login()
            self.assertAlmostEqual(kc.jwt_payload(token)["exp"] - time.time(), 3600, delta=60)
            # an admin without ManageApiKey may log in but not manage keys
            self.assertEqual(kc.http(d.url, "GET", "/api/apikeys", headers=kc.bearer(token)).status, 403)

    def test_password_hash(self):
        h = subprocess.run([BINARY, "--hash-password"], input="correct horse\n", capture_output=True, text=True)
        self.assertEqual(h.returncode, 0, h.stderr)
        phc = h.stdout.strip()
        self.assertTrue(phc.startswith("$argon2id$"), phc)
        with kc.KeysDaemon(DB, admin_password="", env={"ADMIN_PASSWORD_HASH": phc}) as d:
            d.start()
            r = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": "correct horse"})
            self.assertEqual(r.status, 200, r)
            r = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": "correct horse "})
            self.assertEqual(r.status, 401, r)
            r = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": phc})
            self.assertEqual(r.status, 401, r)

    def test_login_disabled_without_admin(self):
        with kc.KeysDaemon(DB, admin_password="", conf={"ADMIN_USERNAME": None}) as d:
            d.start()
            self.assertIn("admin login is disabled", d.output())
            r = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": "x"})
            self.assertEqual(r.status, 401)


class RateLimit(unittest.TestCase):
    def test_login_rate_limit(self):
        with kc.KeysDaemon(DB, conf={"LOGIN_RATE_LIMIT": "3"}) as d:
            d.start()
            for _ in range(3):
                r = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": "wrong"})
                self.assertEqual(r.status, 401, r)
            # the 4th attempt within the minute is refused, even with the right password
            for password in ("wrong", d.admin_password):
                r = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": password})
                self.assertEqual(r.status, 429, r)
                self.assertEqual(r.header("Content-Type"), "application/problem+json")
                retry = r.header("Retry-After")
                self.assertRegex(retry or "", r"^\d+$")
                self.assertTrue(1 <= int(retry) <= 20, retry)   # 3 a minute: one every 20 s
            self.assertNotIn("jwtToken", r.json)
            # other endpoints are not affected
            self.assertEqual(kc.http(d.url, "GET", "/healthz").status, 200)
            v = kc.http(d.url, "POST", "/api/apikeys/validate", {"apiKey": "ak_" + "x" * 29})
            self.assertEqual(v.status, 409)
            # after Retry-After the address may try again
            time.sleep(int(retry) + 0.3)
            r = kc.http(d.url, "POST", "/api/auth/login", {"username": "admin", "password": d.admin_password})
            self.assertEqual(r.status, 200, r)

    def test_validate_rate_limit(self):
        with kc.KeysDaemon(DB, conf={"VALIDATE_RATE_LIMIT": "4", "LOGIN_RATE_LIMIT": "100",
                                     "VALIDATE_RATE_LIMIT_EXEMPT": ""}) as d:
            d.start()
            token = d.login()
            c = kc.http(d.url, "POST", "/api/apikeys", {"name": f"{MARK}-rl"}, headers=kc.bearer(token))
            self.assertEqual(c.status, 201, c)
            key = c.json["apiKey"]
            # valid keys do not count: many validations of a good key pass
            for _ in range(20):
                self.assertEqual(kc.http(d.url, "POST", "/api/apikeys/validate", {"apiKey": key}).status, 200)
            # unknown keys do: 4 guesses, then 429
            for i in range(4):
                r = kc.http(d.url, "POST", "/api/apikeys/validate", {"apiKey": f"ak_guess{i:025d}"})
                self.assertEqual((r.status, r.json["reason"]), (409, "not valid"))
            r = kc.http(d.url, "POST", "/api/apikeys/validate", {"apiKey": "ak_guess" + "9" * 25})
            self.assertEqual(r.status, 429, r)
            self.assertRegex(r.header("Retry-After") or "", r"^\d+$")
            self.assertTrue(1 <= int(r.header("Retry-After")) <= 15)
            # while limited, the address cannot validate at all (no oracle for guesses)
            self.assertEqual(kc.http(d.url, "POST", "/api/apikeys/validate", {"apiKey": key}).status, 429)
            # admin endpoints are unaffected
            self.assertEqual(kc.http(d.url, "GET", "/api/apikeys", headers=kc.bearer(token)).status, 200)

    def test_validate_exempt_addresses(self):
        # by default the local dtask-api (127.0.0.1, ::1) is never limited: it validates for all its clients
        for exempt in (None, "10.0.0.0/8, 127.0.0.0/8"):
            with self.subTest(exempt=exempt), kc.KeysDaemon(DB, conf={"VALIDATE_RATE_LIMIT": "2",
                                                                      "VALIDATE_RATE_LIMIT_EXEMPT": exempt}) as d:
                d.start()
                for i in range(10):
                    r = kc.http(d.url, "POST", "/api/apikeys/validate", {"apiKey": f"ak_guess{i:025d}"})
                    self.assertEqual(r.status, 409, r)
        with kc.KeysDaemon(DB, conf={"VALIDATE_RATE_LIMIT_EXEMPT": "127.0.0.1, dtask-api.example"}) as d:
            code, out = d.run_to_exit()
            self.assertEqual(code, 1)
            self.assertIn("VALIDATE_RATE_LIMIT_EXEMPT", out)
            self.assertIn("dtask-api.example", out)


class DatabaseOutage(unittest.TestCase):
    def test_unreachable_at_start(self):
        proxy = TcpProxy(*db_target())
        with kc.KeysDaemon(proxy.url(), conf={"DATABASE_TIMEOUT": "2s"}) as d:
            d.start(wait_ready=False)
            # Until the database is usable it serves nothing: under systemd the socket's
            # backlog holds the connections (here, with --listen, they are refused).
            time.sleep(2.5)
            self.assertTrue(d.alive())
            d.poll_notify()
            self.assertNotIn("READY=1", d.messages)
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", d.port), timeout=2).close()
            # the database comes: migrations are applied and READY=1 follows
            proxy.start()
            try:
                d.wait_notify("READY=1", timeout=40)
                self.assertEqual(kc.http(d.url, "GET", "/readyz").status, 200)
                token = d.login()
                r = kc.http(d.url, "POST", "/api/apikeys", {"name": f"{MARK}-late"}, headers=kc.bearer(token))
                self.assertEqual(r.status, 201, r)
            finally:
                proxy.cut()

    def test_outage_while_running(self):
        proxy = TcpProxy(*db_target()).start()
        try:
            with kc.KeysDaemon(proxy.url(), conf={"DATABASE_TIMEOUT": "2s"}) as d:
                d.start()
                token = d.login()
                c = kc.http(d.url, "POST", "/api/apikeys", {"name": f"{MARK}-outage"}, headers=kc.bearer(token))
                self.assertEqual(c.status, 201, c)
                key = c.json["apiKey"]

                proxy.cut()
                for method, path, body in (("POST", "/api/apikeys/validate", {"apiKey": key}),
                                           ("GET", "/api/apikeys", None),
                                           ("GET", f"/api/apikeys/{c.json['id']}", None),
                                           ("POST", "/api/apikeys", {"name": f"{MARK}-during"})):
                    with self.subTest(path=path):
                        t = time.monotonic()
                        r = kc.http(d.url, method, path, body, headers=kc.bearer(token))
                        self.assertEqual(r.status, 503, r)
                        self.assertEqual(r.header("Content-Type"), "application/problem+json")
                        self.assertLess(time.monotonic() - t, 10)
                self.assertTrue(d.alive())
                self.assertEqual(kc.http(d.url, "GET", "/healthz").status, 200)
                self.assertEqual(kc.http(d.url, "GET", "/readyz").status, 503)

                proxy.start()
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    r = kc.http(d.url, "POST", "/api/apikeys/validate", {"apiKey": key})
                    if r.status == 200:
                        break
                    time.sleep(0.5)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(kc.http(d.url, "GET", "/readyz").status, 200)
                self.assertTrue(d.alive())
                self.assertEqual(d.stop(), 0)
        finally:
            proxy.cut()


if __name__ == "__main__":
    unittest.main(verbosity=2)
