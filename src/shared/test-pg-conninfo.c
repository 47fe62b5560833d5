/* SPDX-License-Identifier: MIT */
/* pg_conninfo_normalize() and pg_conninfo_redact(): Npgsql strings become libpq
 * keyword/value strings that libpq parses to the same values; URIs and keyword/value
 * strings pass unchanged; passwords never survive redaction. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "pg-internal.h"
#include "pg.h"

/* Looks a keyword up in what libpq makes of a conninfo string; NULL if unset. */
static char *libpq_value(const char *conninfo, const char *keyword) {
        char *err = NULL, *v = NULL;
        PQconninfoOption *opts = PQconninfoParse(conninfo, &err);

        if (!opts) {
                fail_msg("libpq cannot parse \"%s\": %s", conninfo, err ? err : "?");
                return NULL;
        }
        for (PQconninfoOption *o = opts; o->keyword; o++)
                if (streq(o->keyword, keyword) && o->val)
                        v = strdup(o->val);
        PQconninfoFree(opts);
        return v;
}

static void assert_libpq_value(const char *conninfo, const char *keyword, const char *expected) {
        _cleanup_free_ char *v = libpq_value(conninfo, keyword);
        if (!expected) {
                if (v)
                        fail_msg("%s: expected unset, got \"%s\" in \"%s\"", keyword, v, conninfo);
                return;
        }
        if (!v)
                fail_msg("%s: expected \"%s\", unset in \"%s\"", keyword, expected, conninfo);
        if (!streq(v, expected))
                fail_msg("%s: expected \"%s\", got \"%s\" in \"%s\"", keyword, expected, v, conninfo);
}

static char *normalize(const char *s) {
        char *out = NULL;
        int r = pg_conninfo_normalize(s, &out);
        if (r < 0)
                fail_msg("pg_conninfo_normalize(\"%s\") failed: %s", s, strerror(-r));
        return out;
}

static void test_npgsql_basic(void **state) {
        _cleanup_free_ char *c = normalize("Host=db.example.com;Port=5433;Database=tasks;Username=dtask;Password=s3cret;");

        assert_libpq_value(c, "host", "db.example.com");
        assert_libpq_value(c, "port", "5433");
        assert_libpq_value(c, "dbname", "tasks");
        assert_libpq_value(c, "user", "dtask");
        assert_libpq_value(c, "password", "s3cret");
}

static void test_npgsql_key_synonyms(void **state) {
        static const struct {
                const char *in, *keyword, *value;
        } cases[] = {
                { "Server=h1;Database=d", "host", "h1" },
                { "server = h2 ; database = d", "host", "h2" },
                { "HOST=h3", "host", "h3" },
                { "host=h4;database=x", "host", "h4" }, /* lower case, ';': Npgsql, not host "h4;database=x" */
                { "host=h4;database=x", "dbname", "x" },
                { "Host=h;User ID=alice", "user", "alice" },
                { "Host=h;UserID=alice", "user", "alice" },
                { "Host=h;User=bob", "user", "bob" },
                { "Host=h;Uid=carol", "user", "carol" },
                { "Host=h;user name=dave", "user", "dave" },
                { "Host=h;Pwd=pw1", "password", "pw1" },
                { "Host=h;PSW=pw2", "password", "pw2" },
                { "Host=h;DB=dbx", "dbname", "dbx" },
                { "Host=h;Timeout=15", "connect_timeout", "15" },
                { "Host=h;Application Name=my app", "application_name", "my app" },
                { "Host=h;Client Encoding=LATIN1", "client_encoding", "LATIN1" },
                { "Host=h;Tcp Keepalive=true", "keepalives", "1" },
                { "Host=h;Tcp Keepalive=False", "keepalives", "0" },
                { "Host=h;Target Session Attributes=ReadWrite", "target_session_attrs", "read-write" },
                { "Host=h;Target Session Attributes=prefer-standby", "target_session_attrs", "prefer-standby" },
                { "Host=h;Root Certificate=/etc/ca.pem", "sslrootcert", "/etc/ca.pem" },
                { "Host=h;Options=-c statement_timeout=5s", "options", "-c statement_timeout=5s" },
                { "Host=h;Search Path=app, public", "options", "-c search_path=app,\\ public" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *c = normalize(cases[i].in);
                assert_libpq_value(c, cases[i].keyword, cases[i].value);
        }
}

static void test_npgsql_sslmode(void **state) {
        static const char *const cases[][2] = {
                { "Disable", "disable" },       { "disable", "disable" },         { "Allow", "allow" },
                { "Prefer", "prefer" },         { "Require", "require" },         { "REQUIRE", "require" },
                { "VerifyCA", "verify-ca" },    { "verify-ca", "verify-ca" },     { "VerifyFull", "verify-full" },
                { "verify_full", "verify-full" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *in = NULL, *c = NULL, *c2 = NULL;

                assert_true(asprintf(&in, "Host=h;SSL Mode=%s", cases[i][0]) > 0);
                c = normalize(in);
                assert_libpq_value(c, "sslmode", cases[i][1]);

                free(in);
                assert_true(asprintf(&in, "Host=h;SslMode=%s", cases[i][0]) > 0);
                c2 = normalize(in);
                assert_libpq_value(c2, "sslmode", cases[i][1]);
        }
}

static void test_npgsql_ignored(void **state) {
        _cleanup_free_ char *c = normalize(
                "Host=h;Database=d;Pooling=true;Minimum Pool Size=0;Maximum Pool Size=100;Max Pool Size=5;"
                "Connection Idle Lifetime=300;Command Timeout=30;Include Error Detail=true;"
                "Trust Server Certificate=true;Enlist=false");

        assert_libpq_value(c, "host", "h");
        assert_libpq_value(c, "dbname", "d");
        assert_null(strcasestr(c, "pool"));
        assert_null(strcasestr(c, "enlist"));
}

static void test_npgsql_passwords(void **state) {
        static const struct {
                const char *in, *password;
        } cases[] = {
                { "Host=h;Password=a b c", "a b c" },             /* inner spaces kept */
                { "Host=h;Password=  padded  ;", "padded" },       /* unquoted: trimmed */
                { "Host=h;Password=\"  padded  \";", "  padded  " }, /* quoted: kept */
                { "Host=h;Password=\"semi;colon\";Database=d", "semi;colon" },
                { "Host=h;Password='semi;colon';Database=d", "semi;colon" },
                { "Host=h;Password=\"dq\"\"inside\"", "dq\"inside" },
                { "Host=h;Password='sq''inside'", "sq'inside" },
                { "Host=h;Password=\"it's\"", "it's" },
                { "Host=h;Password='say \"hi\"'", "say \"hi\"" },
                { "Host=h;Password=back\\slash", "back\\slash" },
                { "Host=h;Password=eq=uals==", "eq=uals==" },
                { "Host=h;Password=quote'in middle", "quote'in middle" },
                { "Host=h;Password=", "" },
                { "Host=h;Password=\"\"", "" },
                { "Host=h;Password=p\xc3\xa4ss", "p\xc3\xa4ss" }, /* UTF-8 byte for byte */
                { "Host=h;Password=first;Password=second", "second" }, /* last wins */
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *c = normalize(cases[i].in);
                assert_libpq_value(c, "password", cases[i].password);
                assert_libpq_value(c, "host", "h");
        }
}

static void test_npgsql_multi_host(void **state) {
        _cleanup_free_ char *a = normalize("Host=h1:5433,h2,[::1]:5434;Port=6000;Database=d");
        assert_libpq_value(a, "host", "h1,h2,::1");
        assert_libpq_value(a, "port", "5433,6000,5434");

        _cleanup_free_ char *b = normalize("Host=h1,h2;Port=6000");
        assert_libpq_value(b, "host", "h1,h2");
        assert_libpq_value(b, "port", "6000");

        _cleanup_free_ char *c = normalize("Host=::1;Database=d");
        assert_libpq_value(c, "host", "::1");
        assert_libpq_value(c, "port", NULL);

        _cleanup_free_ char *d = normalize("Host=/run/postgresql;Database=d");
        assert_libpq_value(d, "host", "/run/postgresql");
}

static void test_passthrough(void **state) {
        static const char *const cases[] = {
                "postgresql://postgres@127.0.0.1:55432/dtask",
                "postgresql://u:p%40ss;word@h/db?sslmode=require&application_name=x",
                "postgres://h/db",
                "postgresql:///dtask?host=/run/postgresql",
                "host=localhost port=5432 dbname=dtask user=postgres",
                "host=localhost password='with space'",
                "host=h password=a;b",         /* libpq: the password is "a;b" */
                "host=h password=a;b=c",       /* Npgsql reading has unknown key "b": libpq */
                "dbname = spaced   user=u",
                "host=localhost",
                "",
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *c = normalize(cases[i]);
                assert_string_equal(c, cases[i]);
        }
}

static void test_normalize_errors(void **state) {
        static const char *const cases[] = {
                "Host=h;Password=\"unterminated",
                "Host=h;Password=\"x\" trailing;",
                "Host=h;Bogus Key=1",
                "Host=h;SSL Mode=Sometimes",
                "Host=h;Port=http",
                "Host=h;Port=99999",
                "Host=h;Timeout=-5",
                "Host=h;JustAKey",
                "Host=h;=value",
                "Host=h1:;Database=d",
                "Host=[::1",
                "Host=h;Tcp Keepalive=maybe",
                "no equals sign at all",
                "host='unterminated",
                "host=h junk password=x",  /* broken libpq, not the Npgsql host "h junk password=x" */
                "dbname=d x",
                "Host=",
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *c = NULL;
                int r = pg_conninfo_normalize(cases[i], &c);
                if (r != -EINVAL)
                        fail_msg("\"%s\": expected -EINVAL, got %d (\"%s\")", cases[i], r, c ? c : "");
                assert_null(c);
        }

        char *c = NULL;
        assert_int_equal(pg_conninfo_normalize(NULL, &c), -EINVAL);
        assert_int_equal(pg_conninfo_normalize("host=h", NULL), -EINVAL);
}

static char *redact(const char *s) {
        char *out = NULL;
        int r = pg_conninfo_redact(s, &out);
        if (r < 0)
                fail_msg("pg_conninfo_redact(\"%s\") failed: %s", s, strerror(-r));
        return out;
}

static void test_redact(void **state) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                /* URIs */
                { "postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db" },
                { "postgres://u:secret@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require" },
                { "postgresql://u@h/db", "postgresql://u@h/db" },
                { "postgresql://h/db", "postgresql://h/db" },
                { "postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db" },
                { "postgresql://u:a:b@h/db", "postgresql://u:***@h/db" },
                { "postgresql://h/db?user=u&password=secret&sslmode=disable",
                  "postgresql://h/db?user=u&password=***&sslmode=disable" },
                { "postgresql://h/db?pass%77ord=secret", "postgresql://h/db?pass%77ord=***" },
                { "postgresql://u:pw@h/db?password=pw2", "postgresql://u:***@h/db?password=***" },
                /* keyword/value */
                { "host=h password=secret dbname=d", "host=h password=*** dbname=d" },
                { "host=h password = secret", "host=h password = ***" },
                { "host=h password='with space' user=u", "host=h password=*** user=u" },
                { "host=h password='it\\'s' user=u", "host=h password=*** user=u" },
                { "host=h password=back\\ slash user=u", "host=h password=*** user=u" },
                { "host=h sslpassword=k", "host=h sslpassword=***" },
                { "host=h user=u", "host=h user=u" },
                /* Npgsql */
                { "Host=h;Password=secret;Database=d", "Host=h;Password=***;Database=d" },
                { "Host=h;Pwd=secret", "Host=h;Pwd=***" },
                { "Host=h;PSW = secret ;", "Host=h;PSW = *** ;" },
                { "Host=h;Password=\"se;cret\";Database=d", "Host=h;Password=***;Database=d" },
                { "Host=h;Password='se\"\"cr;et';Database=d", "Host=h;Password=***;Database=d" },
                { "Host=h;Password=\"a\"\"b\"", "Host=h;Password=***" },
                { "Host=h;Password=;Database=d", "Host=h;Password=;Database=d" },
                { "Host=h;Unknown Key=1;Password=x", "Host=h;Unknown Key=1;Password=***" },
                /* Readable both ways: both readings' passwords are masked. */
                { "host=h;password=secret", "host=h;password=***" },
                { "host=h password=a;password=b", "host=h password=***" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *c = redact(cases[i].in);
                if (!streq(c, cases[i].out))
                        fail_msg("redact(\"%s\"): expected \"%s\", got \"%s\"", cases[i].in, cases[i].out, c);
        }
}

static void test_redact_never_leaks(void **state) {
        /* Whatever the form, the secret does not appear in the output, also after
         * normalization (what the pool logs). */
        static const char *const cases[] = {
                "postgresql://u:TOPSECRET@h/db",
                "postgresql://h/db?password=TOPSECRET",
                "host=h password=TOPSECRET",
                "host=h password='TOP SECRET'",
                "Host=h;Password=TOPSECRET",
                "Host=h;Password=\"TOP;SECRET\"",
                "Server=h;User ID=u;Pwd=TOPSECRET;Pooling=true",
                "host=h;password=TOPSECRET",
                "Host=h;Password=TOPSECRET;Garbage",       /* malformed */
                "Host=h;Password=\"unterminated TOPSECRET",
                "Host=h;Password=\"TOPSECRET\" trailing TOPSECRET;Database=d",
                "host=h password='unterminated TOPSECRET",
                "host=h junk password=TOPSECRET",
                "postgresql://u:TOPSECRET@h/db?password=TOPSECRET",
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *r1 = redact(cases[i]);
                assert_null(strstr(r1, "TOP"));

                _cleanup_free_ char *n = NULL;
                if (pg_conninfo_normalize(cases[i], &n) >= 0) {
                        _cleanup_free_ char *r2 = redact(n);
                        assert_null(strstr(r2, "TOP"));
                }
        }

        char *c = NULL;
        assert_int_equal(pg_conninfo_redact(NULL, &c), -EINVAL);
        assert_int_equal(pg_conninfo_redact("host=h", NULL), -EINVAL);
}

static void test_sqlstate_null(void **state) {
        assert_null(pg_result_sqlstate(NULL));
}

/* What a connection made with pg_connect_params() uses for keyword: libpq's view of the
 * PGconn (the connection itself fails at once: the socket directory does not exist). */
static char *connect_params_value(const char *conninfo, const char *keyword) {
        const char *keywords[8], *values[8];
        char *v = NULL;

        pg_connect_params(conninfo, keywords, values);
        PGconn *conn = PQconnectStartParams(keywords, values, /* expand_dbname= */ 1);
        assert_non_null(conn);
        PQconninfoOption *opts = PQconninfo(conn);
        assert_non_null(opts);
        for (PQconninfoOption *o = opts; o->keyword; o++)
                if (strcmp(o->keyword, keyword) == 0 && o->val)
                        v = strdup(o->val);
        PQconninfoFree(opts);
        PQfinish(conn);
        return v;
}

static void test_connect_params_gssencmode(void **state) {
        static const struct {
                const char *conninfo, *expected;
        } cases[] = {
                /* our default: no GSSAPI encryption attempt (nor libkrb5 start-up) per connect */
                { "host=/nonexistent-dtask-test dbname=d", "disable" },
                { "postgresql:///d?host=/nonexistent-dtask-test", "disable" },
                /* the configuration overrides it, in every syntax */
                { "host=/nonexistent-dtask-test dbname=d gssencmode=prefer", "prefer" },
                { "postgresql:///d?host=/nonexistent-dtask-test&gssencmode=prefer", "prefer" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *v = connect_params_value(cases[i].conninfo, "gssencmode");
                assert_non_null(v);
                assert_string_equal(v, cases[i].expected);
                free(v);
        }
        /* the other defaults stay overridable as well */
        char *v = connect_params_value("host=/nonexistent-dtask-test dbname=d client_encoding=LATIN1", "client_encoding");
        assert_non_null(v);
        assert_string_equal(v, "LATIN1");
        free(v);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_npgsql_basic),
                cmocka_unit_test(test_npgsql_key_synonyms),
                cmocka_unit_test(test_npgsql_sslmode),
                cmocka_unit_test(test_npgsql_ignored),
                cmocka_unit_test(test_npgsql_passwords),
                cmocka_unit_test(test_npgsql_multi_host),
                cmocka_unit_test(test_passthrough),
                cmocka_unit_test(test_normalize_errors),
                cmocka_unit_test(test_redact),
                cmocka_unit_test(test_redact_never_leaks),
                cmocka_unit_test(test_sqlstate_null),
                cmocka_unit_test(test_connect_params_gssencmode),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
