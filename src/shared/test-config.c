/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "config.h"

static char dir[] = "/tmp/dtask-test-config-XXXXXX";

static void write_file(const char *name, const char *text) {
        char path[256];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

/* Each call returns its own buffer: several may be arguments of one call. */
static char *path_of(const char *name) {
        static char paths[4][256];
        static unsigned next = 0;
        char *p = paths[next++ % ELEMENTSOF(paths)];

        snprintf(p, sizeof paths[0], "%s/%s", dir, name);
        return p;
}

static int setup(void **state) {
        return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static char *const empty_env[] = { NULL };

static void test_defaults(void **state) {
        _cleanup_(config_freep) Config *c = NULL;

        assert_int_equal(config_load_from(&c, NULL, false, NULL, NULL, empty_env, NULL), 0);
        assert_string_equal(config_string(c, "AMQP_EXCHANGE"), "task_exchange");
        assert_string_equal(config_string(c, "AMQP_QUEUE"), "task_queue");
        assert_string_equal(config_string(c, "AMQP_ROUTING_KEY"), "task_key");
        assert_int_equal(config_uint(c, "MAX_CODE_SIZE"), 64 * 1024);
        assert_int_equal(config_uint(c, "MAX_TTL"), 24ULL * 3600 * 1000000);
        assert_int_equal(config_uint(c, "JWT_LIFETIME"), 24ULL * 3600 * 1000000);
        assert_false(config_is_set(c, "JWT_SECRET"));
        assert_null(config_string(c, "JWT_SECRET"));
        assert_string_equal(config_source(c, "AMQP_QUEUE"), "default");
}

static void test_precedence(void **state) {
        _cleanup_(config_freep) Config *c = NULL;
        char *const env[] = { "AMQP_QUEUE=from_env", "PATH=/bin", "UNRELATED=1", NULL };

        write_file("dtask.conf",
                   "# comment\n"
                   "\n"
                   "AMQP_QUEUE = from_file\n"
                   "AMQP_EXCHANGE=\"quoted \\\"x\\\"\"\n"
                   "MAX_CODE_SIZE=128K\n"
                   "ADMIN_USERNAME=admin\n"
                   "JWT_SECRET=file-secret\n");
        write_file(".env", "export ADMIN_USERNAME='dotenv'\nSOMETHING_ELSE=ignored\n");
        mkdir(path_of("creds"), 0700);
        write_file("creds/JWT_SECRET", "credential-secret\n");

        assert_int_equal(config_load_from(&c, path_of("dtask.conf"), true, path_of(".env"), path_of("creds"), env, NULL),
                         0);
        assert_string_equal(config_string(c, "AMQP_QUEUE"), "from_env");
        assert_string_equal(config_source(c, "AMQP_QUEUE"), "environment");
        assert_string_equal(config_string(c, "AMQP_EXCHANGE"), "quoted \"x\"");
        assert_int_equal(config_uint(c, "MAX_CODE_SIZE"), 128 * 1024);
        assert_string_equal(config_string(c, "ADMIN_USERNAME"), "dotenv");
        assert_string_equal(config_string(c, "JWT_SECRET"), "credential-secret"); /* trailing newline dropped */
        assert_string_equal(config_source(c, "JWT_SECRET"), "credential");
}

static void test_alias(void **state) {
        _cleanup_(config_freep) Config *c = NULL, *d = NULL;
        char *const env_alias[] = { "API_KEYS_CONNECTION_STRING=Host=db;Database=keys", NULL };
        char *const env_both[] = { "API_KEYS_CONNECTION_STRING=Host=db", "DATABASE_URL=postgresql:///x", NULL };

        assert_int_equal(config_load_from(&c, NULL, false, NULL, NULL, env_alias, NULL), 0);
        assert_string_equal(config_string(c, "DATABASE_URL"), "Host=db;Database=keys");
        assert_int_equal(config_load_from(&d, NULL, false, NULL, NULL, env_both, NULL), 0);
        assert_string_equal(config_string(d, "DATABASE_URL"), "postgresql:///x");
}

static void expect_error(const char *conf, char *const *env, int expected_r, const char *needle) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *error = NULL;

        write_file("bad.conf", conf);
        assert_int_equal(config_load_from(&c, path_of("bad.conf"), true, NULL, NULL, env ?: empty_env, &error),
                         expected_r);
        assert_null(c);
        assert_non_null(error);
        if (!strstr(error, needle))
                fail_msg("error \"%s\" does not mention \"%s\"", error, needle);
}

static void test_errors(void **state) {
        char *const bad_env[] = { "WORKER_CONCURRENCY=many", NULL };
        char *const range_env[] = { "KEY_CACHE_TTL=10s", NULL };

        expect_error("NO_SUCH_KEY=1\n", NULL, -EINVAL, "unknown key NO_SUCH_KEY");
        expect_error("ADMIN_USERNAME=a\njust text\n", NULL, -EINVAL, "bad.conf:2: expected KEY=VALUE");
        expect_error("MAX_CODE_SIZE=lots\n", NULL, -EINVAL, "MAX_CODE_SIZE");
        expect_error("MAX_TTL=-5\n", NULL, -ERANGE, "MAX_TTL");
        expect_error("AMQP_URL=localhost\n", NULL, -EINVAL, "AMQP_URL: expected a URL");
        expect_error("ADMIN_USERNAME=\"open\n", NULL, -EINVAL, "unbalanced quotes");
        expect_error("WORKER_CONCURRENCY=0\n", NULL, -ERANGE, "WORKER_CONCURRENCY");
        expect_error("", bad_env, -EINVAL, "environment: WORKER_CONCURRENCY: expected a non-negative integer");
        expect_error("", range_env, -ERANGE, "KEY_CACHE_TTL");
        expect_error("SANDBOX_MEMORY_MAX=1K\n", NULL, -ERANGE, "bad.conf:1: SANDBOX_MEMORY_MAX");
}

static void test_missing_file(void **state) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *error = NULL;

        /* An explicit file must exist; the default one is optional. */
        assert_int_equal(config_load_from(&c, path_of("nope.conf"), true, NULL, NULL, empty_env, &error), -ENOENT);
        assert_non_null(strstr(error, "nope.conf"));
        assert_int_equal(config_load_from(&c, path_of("nope.conf"), false, NULL, NULL, empty_env, NULL), 0);
}

static void test_require(void **state) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *error = NULL;
        char *const env[] = { "JWT_SECRET=x", NULL };

        assert_int_equal(config_load_from(&c, NULL, false, NULL, NULL, env, NULL), 0);
        assert_int_equal(config_require(c, (const char *const[]) { "JWT_SECRET", "ADMIN_USERNAME", NULL }, &error),
                         -ENOKEY);
        assert_non_null(strstr(error, "ADMIN_USERNAME is not set"));
        /* A secret value never appears in an error message. */
        assert_null(strstr(error, "=x"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),  cmocka_unit_test(test_precedence),
                cmocka_unit_test(test_alias),     cmocka_unit_test(test_errors),
                cmocka_unit_test(test_missing_file), cmocka_unit_test(test_require),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
