#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-keys REST API (SPEC §4) against the running development instance
($DTASK_KEYS_URL) and the real PostgreSQL ($DTASK_DATABASE_URL): every endpoint's
success and error codes, JWT checks, input validation, hashing at rest, lastUsedAt
and its coalescing. Keys created here carry a unique name prefix and are deleted at
the end. Login attempts are kept to a minimum (the shared instance rate-limits
them per address); rate limiting itself is tested on a private instance
(test-keys-daemon.py)."""

import importlib.util
import json
import os
import re
import sys
import threading
import time
import unittest
import uuid

_spec = importlib.util.spec_from_file_location(
    "keys_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test-keys-common.py"))
kc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kc)

URL, ADMIN_USER, ADMIN_PASSWORD, DB = kc.need_env("DTASK_KEYS_URL", "DTASK_ADMIN_USERNAME", "DTASK_ADMIN_PASSWORD",
                                                  "DTASK_DATABASE_URL")
JWT_SECRET = kc.read_credential("JWT_SECRET")
PEPPER = kc.read_credential("KEY_PEPPER")
MARK = "t-rest-" + uuid.uuid4().hex[:10]
KEY_RE = re.compile(r"^ak_[A-Za-z0-9_-]{29}$")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
INFO_FIELDS = {"id", "name", "prefix", "createdAt", "expiresAt", "isActive", "lastUsedAt", "claims"}

PLAINTEXT_KEYS = []   # every key created here, to look for in the database
TOKEN = None


def req(method, path, body=None, headers=None, raw=None, token=None):
    h = dict(headers or {})
    if token:
        h.update(kc.bearer(token))
    return kc.http(URL, method, path, body=body, headers=h, raw=raw)


def login(username, password, expect=200):
    """Logs in; waits out a 429 (other tests share this address) at most twice."""
    for _ in range(3):
        r = req("POST", "/api/auth/login", {"username": username, "password": password})
        if r.status != 429:
            break
        time.sleep(min(int(r.header("Retry-After") or "5"), 30) + 0.2)
    assert r.status == expect, r
    return r


def create(name=None, token=None, **fields):
    body = {"name": name or f"{MARK}-{uuid.uuid4().hex[:6]}"}
    body.update(fields)
    r = req("POST", "/api/apikeys", body, token=token or TOKEN)
    assert r.status == 201, r
    PLAINTEXT_KEYS.append(r.json["apiKey"])
    return r


def validate(key):
    return req("POST", "/api/apikeys/validate", {"apiKey": key})


def rows_named(prefix):
    return int(kc.psql(DB, "SELECT count(*) FROM api_keys WHERE starts_with(name, :'v1')", prefix)[0][0])


def assert_problem(tc, r, status):
    tc.assertEqual(r.status, status, r)
    tc.assertEqual(r.header("Content-Type"), "application/problem+json", r)
    tc.assertEqual(r.json["status"], status)
    tc.assertIn("title", r.json)
    tc.assertIn("type", r.json)


def setUpModule():
    global TOKEN
    r = req("GET", "/healthz")
    assert r.status == 200, f"dtask-keys at {URL} is not serving: {r}"
    TOKEN = login(ADMIN_USER, ADMIN_PASSWORD).json["jwtToken"]


def tearDownModule():
    kc.psql(DB, "DELETE FROM api_keys WHERE starts_with(name, :'v1')", MARK)


class Health(unittest.TestCase):
    def test_healthz(self):
        r = req("GET", "/healthz")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"status": "ok"})

    def test_readyz(self):
        # a test that restarted PostgreSQL may have run just before: the pool reconnects
        # within its backoff (at most 5 s)
        deadline = time.monotonic() + 30
        r = req("GET", "/readyz")
        while r.status != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            r = req("GET", "/readyz")
        self.assertEqual(r.status, 200, r)

    def test_unknown_route_and_method(self):
        assert_problem(self, req("GET", "/api/nothing"), 404)
        r = req("PATCH", "/api/apikeys")
        assert_problem(self, r, 405)


class Login(unittest.TestCase):
    def test_token(self):
        token = TOKEN
        self.assertEqual(token.count("."), 2)
        h, p = kc.jwt_header(token), kc.jwt_payload(token)
        self.assertEqual(h["alg"], "HS256")
        self.assertEqual(p["iss"], "dtask-keys")
        self.assertEqual(p["aud"], "dtask-keys")
        self.assertEqual(p["sub"], ADMIN_USER)
        self.assertIn("ManageApiKey", p["claims"])
        self.assertEqual(p.get("ManageApiKey"), "true")
        # default lifetime 24 h
        self.assertAlmostEqual(p["exp"] - time.time(), 24 * 3600, delta=120)

    # Failed logins, bad login requests and the login rate limit are tested on instances of
    # their own (test-keys-daemon.py): this shared instance allows 10 attempts a minute per
    # address, and every test process of the suite logs in once.


class Auth(unittest.TestCase):
    """Every admin endpoint: 401 without/with a bad token (WWW-Authenticate: Bearer), 403 without the claim."""

    ENDPOINTS = [("GET", "/api/apikeys", None), ("POST", "/api/apikeys", {"name": MARK + "-auth"}),
                 ("GET", f"/api/apikeys/{uuid.uuid4()}", None), ("PUT", f"/api/apikeys/{uuid.uuid4()}", {"name": "x"}),
                 ("DELETE", f"/api/apikeys/{uuid.uuid4()}", None)]

    def check_401(self, headers):
        for method, path, body in self.ENDPOINTS:
            r = req(method, path, body, headers=headers)
            assert_problem(self, r, 401)
            self.assertTrue((r.header("WWW-Authenticate") or "").startswith("Bearer"), r)

    def test_no_token(self):
        self.check_401({})

    def test_other_scheme(self):
        self.check_401({"Authorization": "Basic YWRtaW46YWRtaW4="})
        self.check_401({"Authorization": "Bearer"})

    def test_garbage(self):
        self.check_401(kc.bearer("not.a.token"))
        self.check_401(kc.bearer("x" * 10000))

    @unittest.skipUnless(JWT_SECRET, "JWT_SECRET of the dev instance not readable")
    def test_minted_tokens(self):
        good = kc.mint_jwt(JWT_SECRET, kc.admin_payload())
        # the minted token is accepted: the failures below are caused by what was changed
        self.assertEqual(req("GET", "/api/apikeys", token=good).status, 200)

        cases = {
            "alg none": kc.mint_jwt(JWT_SECRET, kc.admin_payload(), alg="none"),
            "alg none with signature": kc.mint_jwt(JWT_SECRET, kc.admin_payload(), header={"alg": "none"},
                                                   signature=good.split(".")[2]),
            "wrong signature": kc.mint_jwt(b"another secret that is long enough!!", kc.admin_payload()),
            "HS512": kc.mint_jwt(JWT_SECRET, kc.admin_payload(), alg="HS512"),
            "HS384": kc.mint_jwt(JWT_SECRET, kc.admin_payload(), alg="HS384"),
            "expired": kc.mint_jwt(JWT_SECRET, kc.admin_payload(lifetime=-10)),
            "no exp": kc.mint_jwt(JWT_SECRET, {k: v for k, v in kc.admin_payload().items() if k != "exp"}),
            "wrong iss": kc.mint_jwt(JWT_SECRET, kc.admin_payload(iss="someone")),
            "wrong aud": kc.mint_jwt(JWT_SECRET, kc.admin_payload(aud="dtask-api")),
            "tampered payload": good.split(".")[0] + "." + kc.b64url(json.dumps(
                kc.admin_payload(claims=["ManageApiKey", "more"])).encode()) + "." + good.split(".")[2],
        }
        for name, token in cases.items():
            with self.subTest(name):
                self.check_401(kc.bearer(token))

    @unittest.skipUnless(JWT_SECRET, "JWT_SECRET of the dev instance not readable")
    def test_missing_claim_403(self):
        for claims in ([], ["tasks:admin"], ["manageapikey"]):
            token = kc.mint_jwt(JWT_SECRET, kc.admin_payload(claims=claims))
            for method, path, body in self.ENDPOINTS:
                with self.subTest(claims=claims, method=method):
                    assert_problem(self, req(method, path, body, token=token), 403)
        self.assertEqual(rows_named(MARK + "-auth"), 0)


class Create(unittest.TestCase):
    def test_create(self):
        name = f"{MARK}-create"
        before = time.time()
        r = create(name, claims=["tasks:read", "tasks:write", "tasks:read"])
        self.assertRegex(r.header("Location") or "", r"^/api/apikeys/[0-9a-f-]{36}$")
        self.assertEqual(r.header("Location"), f"/api/apikeys/{r.json['id']}")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        self.assertEqual(set(r.json), {"id", "apiKey", "info"})
        key, info = r.json["apiKey"], r.json["info"]
        self.assertRegex(key, KEY_RE)
        self.assertEqual(len(key), 32)
        self.assertRegex(r.json["id"], UUID_RE)
        self.assertEqual(set(info), INFO_FIELDS)
        self.assertEqual(info["id"], r.json["id"])
        self.assertEqual(info["name"], name)
        self.assertEqual(info["prefix"], key[:8])
        self.assertIs(info["isActive"], True)
        self.assertIsNone(info["expiresAt"])
        self.assertIsNone(info["lastUsedAt"])
        self.assertEqual(info["claims"], ["tasks:read", "tasks:write"])  # repeated claims dropped
        self.assertRegex(info["createdAt"], ISO_RE)
        created = time.mktime(time.strptime(info["createdAt"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        self.assertLess(abs(created - before), 30)

        # the key validates, with its claims
        v = validate(key)
        self.assertEqual(v.status, 200, v)
        self.assertEqual(v.json, {"apiKeyId": r.json["id"], "claims": ["tasks:read", "tasks:write"]})

    def test_create_minimal_and_case_insensitive(self):
        r = req("POST", "/api/apikeys", {"NAME": f"{MARK}-ci", "ExpiresAt": "2099-01-02T03:04:05+02:00",
                                         "CLAIMS": ["a"]}, token=TOKEN)
        self.assertEqual(r.status, 201, r)
        PLAINTEXT_KEYS.append(r.json["apiKey"])
        self.assertEqual(r.json["info"]["expiresAt"], "2099-01-02T01:04:05.000000Z")
        self.assertEqual(r.json["info"]["claims"], ["a"])
        r = create(f"{MARK}-noclaims", claims=None)
        self.assertEqual(r.json["info"]["claims"], [])
        self.assertEqual(validate(r.json["apiKey"]).json["claims"], [])

    def test_name_limits(self):
        r = create(MARK + "-" + "n" * (250 - len(MARK) - 1))
        self.assertEqual(len(r.json["info"]["name"]), 250)
        # 250 characters, not bytes
        r = create(MARK + "-" + "ä" * (250 - len(MARK) - 1))
        self.assertEqual(len(r.json["info"]["name"]), 250)

    def test_bad_inputs(self):
        bad = f"{MARK}-bad"
        cases = [
            ({"name": bad + "-" + "n" * (251 - len(bad) - 1)}, "name"),
            ({"name": ""}, "name"),
            ({"name": "   \t "}, "name"),
            ({}, "name"),
            ({"name": None}, "name"),
            ({"name": 42}, "name"),
            ({"name": ["x"]}, "name"),
            ({"name": bad + "\n"}, "name"),
            ({"name": bad, "claims": "tasks:read"}, "claims"),
            ({"name": bad, "claims": [1, 2]}, "claims"),
            ({"name": bad, "claims": [""]}, "claims"),
            ({"name": bad, "claims": ["x"] * 65}, "claims"),
            ({"name": bad, "claims": ["c" * 201]}, "claims"),
            ({"name": bad, "expiresAt": "tomorrow"}, "expiresAt"),
            ({"name": bad, "expiresAt": 1893456000}, "expiresAt"),
            ({"name": bad, "expiresAt": "2030-02-31T00:00:00Z"}, "expiresAt"),
        ]
        for body, field in cases:
            with self.subTest(body=str(body)[:80]):
                r = req("POST", "/api/apikeys", body, token=TOKEN)
                assert_problem(self, r, 400)
                self.assertIn(field, r.json.get("errors", {}), r)
                self.assertTrue(r.json["detail"].startswith(field), r)

        raw_cases = [
            (b'{"name": "' + bad.encode() + b'"', "application/json", 400),      # truncated
            (b"{'name': '" + bad.encode() + b"'}", "application/json", 400),     # not JSON
            (b'["' + bad.encode() + b'"]', "application/json", 400),             # not an object
            (b'null', "application/json", 400),
            (b'', "application/json", 400),
            (b'{"name": "' + bad.encode() + b'", "x": "\xff"}', "application/json", 400),  # invalid UTF-8
            (json.dumps({"name": bad}).encode(), "text/plain", 415),
            (json.dumps({"name": bad}).encode(), "application/x-www-form-urlencoded", 415),
            (json.dumps({"name": bad}).encode(), None, 415),
        ]
        for raw, ctype, status in raw_cases:
            with self.subTest(raw=raw[:40], ctype=ctype):
                h = {"Content-Type": ctype} if ctype else {}
                r = req("POST", "/api/apikeys", raw=raw, headers=h, token=TOKEN)
                assert_problem(self, r, status)

        # a 2 MiB body is refused from its Content-Length, before it is read
        r = kc.http_announce_body(URL, "POST", "/api/apikeys", 2 * 1024 * 1024,
                                  headers={"Content-Type": "application/json", **kc.bearer(TOKEN)})
        assert_problem(self, r, 413)
        # and one just over the 64 KiB limit, sent in full
        r = req("POST", "/api/apikeys", raw=json.dumps({"name": bad, "pad": "x" * 65536}).encode(),
                headers={"Content-Type": "application/json"}, token=TOKEN)
        assert_problem(self, r, 413)

        # nothing was stored, and the daemon still serves
        self.assertEqual(rows_named(bad), 0)
        self.assertEqual(req("GET", "/healthz").status, 200)
        create(f"{MARK}-after-bad")

    def test_charset_and_suffix_json(self):
        for ctype in ("application/json; charset=utf-8", "APPLICATION/JSON", "application/merge+json", "text/json"):
            with self.subTest(ctype=ctype):
                r = req("POST", "/api/apikeys", raw=json.dumps({"name": f"{MARK}-ct"}).encode(),
                        headers={"Content-Type": ctype}, token=TOKEN)
                self.assertEqual(r.status, 201, r)
                PLAINTEXT_KEYS.append(r.json["apiKey"])

    def test_past_expiry_accepted_then_expired(self):
        r = create(f"{MARK}-past", expiresAt="2001-01-01T00:00:00Z")
        self.assertEqual(r.json["info"]["expiresAt"], "2001-01-01T00:00:00.000000Z")
        v = validate(r.json["apiKey"])
        assert_problem(self, v, 409)
        self.assertEqual(v.json["detail"], "expired")
        self.assertEqual(v.json["reason"], "expired")

    def test_expiry_passes(self):
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        r = create(f"{MARK}-soon", expiresAt=soon)
        key = r.json["apiKey"]
        self.assertEqual(validate(key).status, 200)
        time.sleep(3.1)
        v = validate(key)
        self.assertEqual((v.status, v.json["reason"]), (409, "expired"))


class ReadUpdateDelete(unittest.TestCase):
    def test_list(self):
        a = create(f"{MARK}-list-a").json
        b = create(f"{MARK}-list-b").json
        self.assertEqual(req("PUT", f"/api/apikeys/{b['id']}", {"isActive": False}, token=TOKEN).status, 204)
        r = req("GET", "/api/apikeys", token=TOKEN)
        self.assertEqual(r.status, 200, r)
        self.assertIsInstance(r.json, list)
        by_id = {k["id"]: k for k in r.json}
        self.assertIn(a["id"], by_id)
        self.assertIn(b["id"], by_id)        # inactive keys included
        self.assertIs(by_id[b["id"]]["isActive"], False)
        for k in r.json:
            self.assertEqual(set(k), INFO_FIELDS)
            self.assertNotIn("apiKey", k)
        # oldest first
        ids = [k["id"] for k in r.json]
        self.assertLess(ids.index(a["id"]), ids.index(b["id"]))

    def test_get(self):
        c = create(f"{MARK}-get", claims=["x"]).json
        r = req("GET", f"/api/apikeys/{c['id']}", token=TOKEN)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, c["info"])
        r = req("GET", f"/api/apikeys/{c['id'].upper()}", token=TOKEN)
        self.assertEqual(r.status, 200, r)
        assert_problem(self, req("GET", f"/api/apikeys/{uuid.uuid4()}", token=TOKEN), 404)
        for bad in ("not-a-uuid", "1234", c["id"] + "0", c["id"][:-1] + "g", "validate"):
            with self.subTest(bad=bad):
                assert_problem(self, req("GET", f"/api/apikeys/{bad}", token=TOKEN), 404)

    def test_update(self):
        c = create(f"{MARK}-upd", claims=["a", "b"], expiresAt="2090-01-01T00:00:00Z").json
        kid, key = c["id"], c["apiKey"]
        path = f"/api/apikeys/{kid}"

        r = req("PUT", path, {"name": f"{MARK}-upd2"}, token=TOKEN)
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.body, b"")
        info = req("GET", path, token=TOKEN).json
        self.assertEqual(info["name"], f"{MARK}-upd2")
        self.assertEqual(info["claims"], ["a", "b"])                  # absent: unchanged
        self.assertEqual(info["expiresAt"], "2090-01-01T00:00:00.000000Z")

        # null fields leave values alone
        self.assertEqual(req("PUT", path, {"name": None, "claims": None, "expiresAt": None, "isActive": None},
                             token=TOKEN).status, 204)
        self.assertEqual(req("GET", path, token=TOKEN).json, info)

        # claims [] clears; case-insensitive members
        self.assertEqual(req("PUT", path, {"Claims": [], "EXPIRESAT": "2091-06-01T12:00:00Z"}, token=TOKEN).status, 204)
        info = req("GET", path, token=TOKEN).json
        self.assertEqual(info["claims"], [])
        self.assertEqual(info["expiresAt"], "2091-06-01T12:00:00.000000Z")
        self.assertEqual(validate(key).json["claims"], [])

        # isActive false deactivates → 409 inactive; true reactivates
        self.assertEqual(req("PUT", path, {"isActive": False}, token=TOKEN).status, 204)
        self.assertIs(req("GET", path, token=TOKEN).json["isActive"], False)
        v = validate(key)
        assert_problem(self, v, 409)
        self.assertEqual((v.json["detail"], v.json["reason"]), ("inactive", "inactive"))
        self.assertEqual(req("PUT", path, {"isActive": True, "claims": ["z"]}, token=TOKEN).status, 204)
        self.assertEqual(validate(key).json, {"apiKeyId": kid, "claims": ["z"]})

        # past expiry through PUT
        self.assertEqual(req("PUT", path, {"expiresAt": "2000-01-01T00:00:00Z"}, token=TOKEN).status, 204)
        self.assertEqual(validate(key).json["reason"], "expired")

    def test_update_errors(self):
        c = create(f"{MARK}-upderr").json
        path = f"/api/apikeys/{c['id']}"
        assert_problem(self, req("PUT", f"/api/apikeys/{uuid.uuid4()}", {"name": "x"}, token=TOKEN), 404)
        assert_problem(self, req("PUT", "/api/apikeys/nope", {"name": "x"}, token=TOKEN), 404)
        for body, field in (({"name": ""}, "name"), ({"name": "n" * 251}, "name"), ({"isActive": "no"}, "isActive"),
                            ({"isActive": 0}, "isActive"), ({"claims": "a"}, "claims"),
                            ({"expiresAt": "soon"}, "expiresAt")):
            with self.subTest(body=str(body)[:60]):
                r = req("PUT", path, body, token=TOKEN)
                assert_problem(self, r, 400)
                self.assertIn(field, r.json["errors"])
        assert_problem(self, req("PUT", path, raw=b"{", headers={"Content-Type": "application/json"}, token=TOKEN), 400)
        assert_problem(self, req("PUT", path, raw=b'{"name":"x"}', headers={"Content-Type": "text/plain"},
                                 token=TOKEN), 415)
        # unchanged
        self.assertEqual(req("GET", path, token=TOKEN).json, c["info"])

    def test_delete(self):
        c = create(f"{MARK}-del").json
        path = f"/api/apikeys/{c['id']}"
        self.assertEqual(validate(c["apiKey"]).status, 200)
        r = req("DELETE", path, token=TOKEN)
        self.assertEqual(r.status, 204, r)
        assert_problem(self, req("DELETE", path, token=TOKEN), 404)
        assert_problem(self, req("GET", path, token=TOKEN), 404)
        v = validate(c["apiKey"])
        self.assertEqual((v.status, v.json["reason"]), (409, "not valid"))
        assert_problem(self, req("DELETE", "/api/apikeys/xyz", token=TOKEN), 404)
        self.assertEqual(int(kc.psql(DB, "SELECT count(*) FROM api_keys WHERE id = :'v1'", c["id"])[0][0]), 0)


class Validate(unittest.TestCase):
    def test_unknown(self):
        for key in ("ak_" + "A" * 29, "ak_short", "something else entirely", "x"):
            with self.subTest(key=key):
                v = validate(key)
                assert_problem(self, v, 409)
                self.assertEqual(v.json["detail"], "not valid")
                self.assertEqual(v.json["reason"], "not valid")

    def test_bad_requests(self):
        assert_problem(self, req("POST", "/api/apikeys/validate", {}), 400)
        assert_problem(self, req("POST", "/api/apikeys/validate", {"apiKey": 5}), 400)
        assert_problem(self, req("POST", "/api/apikeys/validate", {"apiKey": ""}), 400)
        assert_problem(self, req("POST", "/api/apikeys/validate", raw=b"ak_x", headers={"Content-Type": "text/plain"}), 415)
        assert_problem(self, req("POST", "/api/apikeys/validate", raw=b"{", headers={"Content-Type": "application/json"}), 400)

    def test_case_insensitive_member(self):
        c = create(f"{MARK}-vci").json
        r = req("POST", "/api/apikeys/validate", {"ApiKey": c["apiKey"]})
        self.assertEqual(r.status, 200, r)

    def test_last_used(self):
        c = create(f"{MARK}-lu").json
        path = f"/api/apikeys/{c['id']}"
        self.assertIsNone(req("GET", path, token=TOKEN).json["lastUsedAt"])
        t = time.time()
        self.assertEqual(validate(c["apiKey"]).status, 200)
        # the first use is written at once
        deadline = time.monotonic() + 3
        while True:
            lu = req("GET", path, token=TOKEN).json["lastUsedAt"]
            if lu or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertIsNotNone(lu)
        self.assertRegex(lu, ISO_RE)
        lu_t = time.mktime(time.strptime(lu[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        self.assertLess(abs(lu_t - t), 5)
        row = kc.psql(DB, "SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = :'v1'", c["id"])
        self.assertEqual(row, [["t"]])

    def test_last_used_coalesced(self):
        """Hundreds of validations of one key cost a handful of UPDATEs (at most one a second),
        counted by a row trigger that watches only this key."""
        c = create(f"{MARK}-coal").json
        kid, key = c["id"], c["apiKey"]
        suffix = uuid.uuid4().hex[:8]
        table, func, trig = f"test_keys_touch_{suffix}", f"test_keys_touch_fn_{suffix}", f"test_keys_touch_tr_{suffix}"
        kc.psql(DB, f"""
            CREATE TABLE {table} (at timestamptz NOT NULL DEFAULT clock_timestamp(), value timestamptz);
            CREATE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO {table} (value) VALUES (NEW.last_used_at); RETURN NULL; END; $$;
            CREATE TRIGGER {trig} AFTER UPDATE OF last_used_at ON api_keys FOR EACH ROW
                WHEN (NEW.id = '{kid}'::uuid) EXECUTE FUNCTION {func}();""")
        try:
            n, start = 0, time.monotonic()
            errors = []

            def worker():
                nonlocal n
                while time.monotonic() - start < 2.5:
                    r = validate(key)
                    if r.status != 200:
                        errors.append(r)
                        return
                    n += 1

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            last_validation = time.time()
            self.assertEqual(errors, [])
            self.assertGreater(n, 100)
            time.sleep(1.6)   # the pending use is flushed within a second
            writes = kc.psql(DB, f"SELECT count(*), extract(epoch FROM max(value)) FROM {table}")[0]
            print(f"  {n} validations in 2.5 s → {writes[0]} UPDATEs of last_used_at", file=sys.stderr)
            self.assertGreaterEqual(int(writes[0]), 2)
            self.assertLessEqual(int(writes[0]), 6)
            # the last write carries (nearly) the time of the last validation
            self.assertLess(abs(float(writes[1]) - last_validation), 1.5)
        finally:
            kc.psql(DB, f"DROP TRIGGER IF EXISTS {trig} ON api_keys; DROP FUNCTION IF EXISTS {func}(); "
                        f"DROP TABLE IF EXISTS {table};")


class AtRest(unittest.TestCase):
    def test_no_plaintext_in_database(self):
        created = [create(f"{MARK}-rest-{i}", claims=["tasks:read"]).json for i in range(3)]
        keys = [c["apiKey"] for c in created] + PLAINTEXT_KEYS
        self.assertGreater(len(keys), 3)
        # every column of every row, as text, and the hash in several encodings
        dump = "\n".join("\t".join(r) for r in kc.psql(DB, """
            SELECT row_to_json(k)::text, encode(key_hash, 'hex'), encode(key_hash, 'base64'),
                   encode(key_hash, 'escape'), prefix, name, array_to_string(claims, ',')
            FROM api_keys k"""))
        self.assertGreater(len(dump), 0)
        for key in keys:
            self.assertNotIn(key, dump)
            self.assertNotIn(key[3:], dump)        # the random part
            self.assertNotIn(key[8:24], dump)      # any part beyond the display prefix
        # what is stored: the display prefix and the keyed BLAKE2b-256 of the key
        for c in created:
            row = kc.psql(DB, "SELECT prefix, encode(key_hash, 'hex'), octet_length(key_hash) FROM api_keys "
                              "WHERE id = :'v1'", c["id"])[0]
            self.assertEqual(row[0], c["apiKey"][:8])
            self.assertEqual(row[2], "32")
            self.assertNotEqual(row[1], c["apiKey"].encode().hex())
            if PEPPER and len(PEPPER) <= 64:
                self.assertEqual(row[1], kc.blake2b_key_hash(c["apiKey"], PEPPER))


if __name__ == "__main__":
    unittest.main(verbosity=2)
