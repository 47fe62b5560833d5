#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""dtask-keys on D-Bus (org.dtask.Keys1, SPEC §5) with busctl/dbus-send as clients:
every method with its errors, keys created over D-Bus validating over REST, and access
control for callers other than root (run under uid nobody with setpriv):
  - on a private bus with the policy of a real system bus plus dbus/org.dtask.Keys1.conf
    (the bus itself refuses the mutating methods),
  - on a private permissive bus (only dtask-keys' own check stands),
  - members of group dtask-admin (created if missing) are allowed.
Also: the bus is unavailable at start-up / goes away (REST keeps serving, D-Bus comes
back), the name is taken. Finally the shared development bus and instance
($DBUS_SYSTEM_BUS_ADDRESS, $DTASK_KEYS_URL), when set."""

import grp
import importlib.util
import os
import subprocess
import sys
import time
import unittest
import uuid

_spec = importlib.util.spec_from_file_location(
    "keys_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test-keys-common.py"))
kc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kc)

(DB,) = kc.need_env("DTASK_DATABASE_URL")
kc.keys_binary()
if os.geteuid() != 0:
    print("SKIP: needs root (private bus daemons, setpriv)", file=sys.stderr)
    sys.exit(kc.SKIP)
POLICY = os.path.join(kc.source_root(), "dbus", "org.dtask.Keys1.conf")
MARK = "t-bus-" + uuid.uuid4().hex[:10]
ADMIN_GROUP = "dtask-admin"
NOBODY = kc.AS_NOBODY


def admin_gid():
    try:
        return grp.getgrnam(ADMIN_GROUP).gr_gid
    except KeyError:
        # the package creates it (sysusers); on a development machine the test does
        subprocess.run(["groupadd", "--system", ADMIN_GROUP], check=True)
        return grp.getgrnam(ADMIN_GROUP).gr_gid


def wait_for_service(address, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rc, data, err = kc.busctl(address, "ListKeys", timeout=10)
        if rc == 0:
            return data
        time.sleep(0.2)
    raise AssertionError(f"org.dtask.Keys1 did not appear on {address}: {err}")


def create(address, name, claims=(), expires_usec=0, as_user=None):
    rc, data, err = kc.busctl(address, "CreateKey", "sast", name, len(claims), *claims, expires_usec, as_user=as_user)
    return rc, data, err


def validate(url, key):
    return kc.http(url, "POST", "/api/apikeys/validate", {"apiKey": key})


def get_key(address, kid):
    rc, data, err = kc.busctl(address, "GetKey", "s", kid)
    assert rc == 0, err
    f = data["data"]
    return {"id": f[0], "name": f[1], "prefix": f[2], "is_active": f[3], "created": f[4], "expires": f[5],
            "last_used": f[6], "claims": f[7]}


def tearDownModule():
    kc.psql(DB, "DELETE FROM api_keys WHERE starts_with(name, :'v1')", MARK)


class PrivateBuses(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gid = admin_gid()
        cls.real = kc.DBusDaemon(kc.DBUS_REALISTIC, [POLICY]).start()
        cls.loose = kc.DBusDaemon(kc.DBUS_PERMISSIVE).start()
        for b in (cls.real, cls.loose):
            kc.ensure_traversable_for(b.socket)
        cls.keys_real = kc.KeysDaemon(DB, bus_address=cls.real.address).start()
        cls.keys_loose = kc.KeysDaemon(DB, bus_address=cls.loose.address).start()
        wait_for_service(cls.real.address)
        wait_for_service(cls.loose.address)

    @classmethod
    def tearDownClass(cls):
        for x in (cls.keys_real, cls.keys_loose, cls.real, cls.loose):
            x.close()

    def test_root_lifecycle(self):
        a, url = self.real.address, self.keys_real.url
        before = int(time.time() * 1e6)
        rc, data, err = create(a, f"{MARK}-root", ["tasks:read", "tasks:write"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(data["type"], "ss")
        kid, key = data["data"]
        self.assertRegex(kid, r"^[0-9a-f-]{36}$")
        self.assertRegex(key, r"^ak_[A-Za-z0-9_-]{29}$")

        # the key created over D-Bus works over REST
        v = validate(url, key)
        self.assertEqual(v.status, 200, v)
        self.assertEqual(v.json, {"apiKeyId": kid, "claims": ["tasks:read", "tasks:write"]})

        k = get_key(a, kid)
        self.assertEqual(k["name"], f"{MARK}-root")
        self.assertEqual(k["prefix"], key[:8])
        self.assertIs(k["is_active"], True)
        self.assertLess(abs(k["created"] - before), 30_000_000)
        self.assertEqual(k["expires"], 0)
        self.assertEqual(k["claims"], ["tasks:read", "tasks:write"])
        # lastUsedAt of the validation above
        deadline = time.monotonic() + 3
        while get_key(a, kid)["last_used"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertGreater(get_key(a, kid)["last_used"], before)

        rc, data, err = kc.busctl(a, "ListKeys")
        self.assertEqual(rc, 0, err)
        self.assertEqual(data["type"], "a(sssbtttas)")
        self.assertIn(kid, [row[0] for row in data["data"][0]])

        # UpdateKey: several fields at once
        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", kid, 3, "Name", "s", f"{MARK}-renamed",
                               "Claims", "as", 1, "tasks:admin", "IsActive", "b", "false")
        self.assertEqual(rc, 0, err)
        k = get_key(a, kid)
        self.assertEqual((k["name"], k["claims"], k["is_active"]), (f"{MARK}-renamed", ["tasks:admin"], False))
        self.assertEqual(validate(url, key).json["reason"], "inactive")

        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", kid, 2, "IsActive", "b", "true",
                               "ExpiresAt", "t", 946684800000000)   # 2000-01-01: in the past
        self.assertEqual(rc, 0, err)
        self.assertEqual(validate(url, key).json["reason"], "expired")
        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", kid, 1, "ExpiresAt", "t", 0)  # 0 removes the expiry
        self.assertEqual(rc, 0, err)
        self.assertEqual(get_key(a, kid)["expires"], 0)
        v = validate(url, key)
        self.assertEqual(v.json, {"apiKeyId": kid, "claims": ["tasks:admin"]})
        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", kid, 1, "Claims", "as", 0)  # empty clears
        self.assertEqual(rc, 0, err)
        self.assertEqual(validate(url, key).json["claims"], [])

        rc, _, err = kc.busctl(a, "DeactivateKey", "s", kid)
        self.assertEqual(rc, 0, err)
        self.assertIs(get_key(a, kid)["is_active"], False)
        self.assertEqual(validate(url, key).json["reason"], "inactive")

        rc, _, err = kc.busctl(a, "DeleteKey", "s", kid.upper())   # ids in any case
        self.assertEqual(rc, 0, err)
        self.assertEqual(validate(url, key).json["reason"], "not valid")
        rc, _, name = kc.dbus_send(a, "GetKey", f"string:{kid}")
        self.assertEqual(name, "org.dtask.Keys1.Error.NotFound")

        out = self.keys_real.output()
        self.assertIn(f"API key {kid} created over D-Bus by uid 0", out)
        self.assertIn(f"API key {kid} deactivated over D-Bus by uid 0", out)
        self.assertIn(f"API key {kid} deleted over D-Bus by uid 0", out)
        self.assertNotIn(key, out)

    def test_past_expiry_accepted(self):
        rc, data, err = create(self.real.address, f"{MARK}-past", [], 946684800000000)
        self.assertEqual(rc, 0, err)
        self.assertEqual(validate(self.keys_real.url, data["data"][1]).json["reason"], "expired")

    def test_errors(self):
        a = self.real.address
        u = str(uuid.uuid4())
        for method, args, expected in (
                ("GetKey", ["string:not-a-uuid"], "org.freedesktop.DBus.Error.InvalidArgs"),
                ("GetKey", [f"string:{u}"], "org.dtask.Keys1.Error.NotFound"),
                ("DeleteKey", [f"string:{u}"], "org.dtask.Keys1.Error.NotFound"),
                ("DeactivateKey", [f"string:{u}"], "org.dtask.Keys1.Error.NotFound"),
                ("DeleteKey", ["string:"], "org.freedesktop.DBus.Error.InvalidArgs"),
                ("CreateKey", ["string:", "array:string:", "uint64:0"], "org.freedesktop.DBus.Error.InvalidArgs"),
                ("CreateKey", ["string:   ", "array:string:", "uint64:0"], "org.freedesktop.DBus.Error.InvalidArgs"),
                ("CreateKey", [f"string:{MARK}" + "x" * 251, "array:string:", "uint64:0"],
                 "org.freedesktop.DBus.Error.InvalidArgs"),
                ("CreateKey", [f"string:{MARK}-c", "array:string:" + ",".join(["c"] * 65), "uint64:0"],
                 "org.freedesktop.DBus.Error.InvalidArgs"),
                ("CreateKey", [f"string:{MARK}-c", "uint64:0"], "org.freedesktop.DBus.Error.InvalidArgs")):
            with self.subTest(method=method, args=str(args)[:60]):
                rc, _, name = kc.dbus_send(a, method, *args)
                self.assertNotEqual(rc, 0)
                self.assertEqual(name, expected)

        rc, data, _ = create(a, f"{MARK}-errs")
        kid = data["data"][0]
        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", kid, 1, "Colour", "s", "blue")
        self.assertNotEqual(rc, 0)
        self.assertIn("Unknown field", err)
        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", kid, 1, "Name", "i", 5)
        self.assertNotEqual(rc, 0)
        self.assertIn("Name must be a string", err)
        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", kid, 1, "Name", "s", "")
        self.assertNotEqual(rc, 0)
        rc, _, err = kc.busctl(a, "UpdateKey", "sa{sv}", u, 1, "Name", "s", "x")
        self.assertNotEqual(rc, 0)
        self.assertIn("No API key", err)
        # nothing of the refused calls was stored
        self.assertEqual(int(kc.psql(DB, "SELECT count(*) FROM api_keys WHERE starts_with(name, :'v1') "
                                         "AND name NOT LIKE '%-errs'", MARK)[0][0]), 0)
        self.assertEqual(get_key(a, kid)["name"], f"{MARK}-errs")

    def mutate_as(self, address, kid, as_user):
        """Every mutating method as as_user; returns {method: (rc, error text/name)}."""
        out = {}
        rc, _, name = kc.dbus_send(address, "CreateKey", f"string:{MARK}-intruder", "array:string:tasks:admin",
                                   "uint64:0", as_user=as_user)
        out["CreateKey"] = (rc, name)
        rc, _, name = kc.dbus_send(address, "DeactivateKey", f"string:{kid}", as_user=as_user)
        out["DeactivateKey"] = (rc, name)
        rc, _, name = kc.dbus_send(address, "DeleteKey", f"string:{kid}", as_user=as_user)
        out["DeleteKey"] = (rc, name)
        rc, _, err = kc.busctl(address, "UpdateKey", "sa{sv}", kid, 1, "IsActive", "b", "false", as_user=as_user)
        out["UpdateKey"] = (rc, err)
        return out

    def check_denied(self, bus, keys, expect_service_message):
        a = bus.address
        rc, data, _ = create(a, f"{MARK}-victim", ["tasks:read"])
        kid, key = data["data"]

        # reading is open to everybody
        rc, data, err = kc.busctl(a, "ListKeys", as_user=NOBODY)
        self.assertEqual(rc, 0, err)
        self.assertIn(kid, [row[0] for row in data["data"][0]])
        rc, data, err = kc.busctl(a, "GetKey", "s", kid, as_user=NOBODY)
        self.assertEqual(rc, 0, err)
        self.assertEqual(data["data"][0], kid)

        for method, (rc, what) in self.mutate_as(a, kid, NOBODY).items():
            with self.subTest(method=method):
                self.assertNotEqual(rc, 0)
                if method == "UpdateKey":
                    self.assertIn("Access denied", what)   # busctl shows the errno text only
                else:
                    self.assertEqual(what, "org.freedesktop.DBus.Error.AccessDenied")

        # nothing changed
        k = get_key(a, kid)
        self.assertIs(k["is_active"], True)
        self.assertEqual(validate(keys.url, key).status, 200)
        self.assertEqual(int(kc.psql(DB, "SELECT count(*) FROM api_keys WHERE name = :'v1'",
                                     f"{MARK}-intruder")[0][0]), 0)
        return kid

    def test_nobody_denied_by_bus_policy(self):
        self.check_denied(self.real, self.keys_real, expect_service_message=False)

    def test_nobody_denied_by_service(self):
        kid = self.check_denied(self.loose, self.keys_loose, expect_service_message=True)
        # the refusal came from dtask-keys itself (the permissive bus lets everything through)
        out = self.keys_loose.output()
        self.assertIn("Refusing CreateKey over D-Bus from uid 65534", out)
        self.assertIn("Refusing DeleteKey over D-Bus from uid 65534", out)
        rc, _, name = kc.dbus_send(self.loose.address, "DeleteKey", f"string:{kid}", as_user=NOBODY)
        self.assertEqual(name, "org.freedesktop.DBus.Error.AccessDenied")
        self.assertIn("Only root and members of group dtask-admin", kc.dbus_send.last_message)
        # on the realistic bus it is the bus that refuses (the call never reaches dtask-keys)
        rc, _, name = kc.dbus_send(self.real.address, "DeleteKey", f"string:{kid}", as_user=NOBODY)
        self.assertEqual(name, "org.freedesktop.DBus.Error.AccessDenied")
        self.assertNotIn("Only root and members", kc.dbus_send.last_message)

    def test_admin_group_allowed(self):
        for bus, keys in ((self.real, self.keys_real), (self.loose, self.keys_loose)):
            for variant, as_user in (("supplementary", ["setpriv", "--reuid=nobody", "--regid=nogroup",
                                                        f"--groups={self.gid}"]),
                                     ("primary", ["setpriv", "--reuid=nobody", f"--regid={self.gid}",
                                                  "--clear-groups"])):
                with self.subTest(bus=bus.address, variant=variant):
                    rc, data, err = create(bus.address, f"{MARK}-grp-{variant}", ["tasks:read"], as_user=as_user)
                    self.assertEqual(rc, 0, err)
                    kid, key = data["data"]
                    self.assertEqual(validate(keys.url, key).status, 200)
                    rc, _, err = kc.busctl(bus.address, "DeleteKey", "s", kid, as_user=as_user)
                    self.assertEqual(rc, 0, err)
                    self.assertIn(f"API key {kid} created over D-Bus by uid 65534", keys.output())

    def test_name_taken(self):
        # a second instance on the same bus: the name is owned; it warns and serves REST
        with kc.KeysDaemon(DB, bus_address=self.loose.address) as d:
            d.start()
            self.assertIn("owned by another process", d.output())
            self.assertEqual(kc.http(d.url, "GET", "/readyz").status, 200)
        wait_for_service(self.loose.address)


class BusComesAndGoes(unittest.TestCase):
    def test_bus_later_and_lost(self):
        bus = kc.DBusDaemon(kc.DBUS_PERMISSIVE)
        try:
            with kc.KeysDaemon(DB, bus_address=bus.address) as d:
                d.start()   # READY=1 without a bus
                self.assertIn("serving REST only", d.output())
                self.assertTrue(any("D-Bus unavailable" in m for m in d.messages), d.messages)
                self.assertEqual(kc.http(d.url, "GET", "/readyz").status, 200)

                bus.start()
                wait_for_service(bus.address, timeout=15)
                self.assertIn("Offering org.dtask.Keys1 on the system bus", d.output())

                bus.stop()
                time.sleep(0.5)
                self.assertTrue(d.alive())
                self.assertEqual(kc.http(d.url, "GET", "/healthz").status, 200)
                self.assertIn("the connection to the bus was lost", d.output())

                if os.path.exists(bus.socket):
                    os.unlink(bus.socket)
                bus.start()
                wait_for_service(bus.address, timeout=15)
                self.assertEqual(d.stop(), 0)
        finally:
            bus.close()


class DevelopmentBus(unittest.TestCase):
    """The shared environment: the dev instance on the dev bus (created over D-Bus, used over REST)."""

    @classmethod
    def setUpClass(cls):
        cls.address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        cls.url = os.environ.get("DTASK_KEYS_URL")
        if not cls.address or not cls.url:
            raise unittest.SkipTest("DBUS_SYSTEM_BUS_ADDRESS or DTASK_KEYS_URL not set")

    def test_create_over_bus_validate_over_rest(self):
        wait_for_service(self.address)
        rc, data, err = create(self.address, f"{MARK}-dev", ["tasks:read", "tasks:execute"])
        self.assertEqual(rc, 0, err)
        kid, key = data["data"]
        v = validate(self.url, key)
        self.assertEqual(v.status, 200, v)
        self.assertEqual(v.json, {"apiKeyId": kid, "claims": ["tasks:read", "tasks:execute"]})
        rc, _, err = kc.busctl(self.address, "DeactivateKey", "s", kid)
        self.assertEqual(rc, 0, err)
        self.assertEqual(validate(self.url, key).json["reason"], "inactive")
        rc, _, err = kc.busctl(self.address, "DeleteKey", "s", kid)
        self.assertEqual(rc, 0, err)
        self.assertEqual(validate(self.url, key).json["reason"], "not valid")


if __name__ == "__main__":
    unittest.main(verbosity=2)
