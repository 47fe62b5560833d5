/* SPDX-License-Identifier: MIT */
/* pg_migrate() and dtask-migrate against a fresh database (created from
 * DTASK_DATABASE_URL, dropped at the end; skipped when the variable is unset):
 * concurrent runners apply each migration exactly once, in version order, files not
 * named NNNN-name.sql are ignored, a second run applies nothing, a broken migration
 * names its file and leaves nothing half-applied. argv[1]: the dtask-migrate binary. */

#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "pg.h"

#define SKIP_EXIT_CODE 77
#define N_RUNNERS 4

extern char **environ;

static const char *database_url, *migrate_binary;
static char dbname[64], dir[64];
static char *conninfo; /* DTASK_DATABASE_URL with dbname replaced */

static PGconn *connect_to(const char *ci) {
        PGconn *c = PQconnectdb(ci);
        if (PQstatus(c) != CONNECTION_OK)
                fail_msg("cannot connect: %s", PQerrorMessage(c));
        return c;
}

static void exec_ok(PGconn *c, const char *sql) {
        _cleanup_pgresult_ PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
                fail_msg("%s: %s", sql, PQresultErrorMessage(r));
}

/* The result of a query as "a,b;c,d" (rows separated by ';'). */
static char *query_text(const char *sql) {
        _cleanup_(PQfinishp) PGconn *c = connect_to(conninfo);
        _cleanup_pgresult_ PGresult *r = PQexec(c, sql);
        char buf[4096] = "";
        size_t l = 0;

        if (PQresultStatus(r) != PGRES_TUPLES_OK)
                fail_msg("%s: %s", sql, PQresultErrorMessage(r));
        for (int i = 0; i < PQntuples(r); i++)
                for (int j = 0; j < PQnfields(r); j++)
                        l += snprintf(buf + l, sizeof buf - l, "%s%s", i > 0 && j == 0 ? ";" : j > 0 ? "," : "",
                                      PQgetisnull(r, i, j) ? "NULL" : PQgetvalue(r, i, j));
        return strdup(buf);
}

static void write_file(const char *name, const char *text) {
        char path[256];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        f = fopen(path, "we");
        assert_non_null(f);
        assert_int_equal(fputs(text, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
}

static void remove_file(const char *name) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        assert_int_equal(unlink(path), 0);
}

static void test_concurrent_runners(void **state) {
        int barrier[2];
        pid_t pids[N_RUNNERS];
        unsigned sum = 0;

        write_file("0001-create.sql",
                   "CREATE TABLE effects (id serial PRIMARY KEY, migration integer NOT NULL);\n"
                   "INSERT INTO effects (migration) VALUES (1);\n"
                   "-- keep the lock a while, so that the other runners really wait for it\n"
                   "SELECT pg_sleep(0.5);\n");
        write_file("0002-second.sql",
                   "INSERT INTO effects (migration) VALUES (2);\n"
                   "ALTER TABLE effects ADD COLUMN note text;\n");
        /* Needs the column from 0002: version order, not directory order. */
        write_file("0010-third.sql", "INSERT INTO effects (migration, note) VALUES (10, 'after 0002');\n");
        /* Not migrations: would fail if they ran. */
        write_file("README.md", "SELECT 1/0;\n");
        write_file("0003_underscore.sql", "SELECT 1/0;\n");
        write_file("abcd-letters.sql", "SELECT 1/0;\n");
        write_file("0004-not-sql.txt", "SELECT 1/0;\n");
        write_file("005-three-digits.sql", "SELECT 1/0;\n");
        write_file("0006-.sql", "SELECT 1/0;\n");
        write_file(".0007-hidden.sql", "SELECT 1/0;\n");

        assert_int_equal(pipe2(barrier, O_CLOEXEC), 0);
        fflush(NULL);
        for (unsigned i = 0; i < N_RUNNERS; i++) {
                pids[i] = fork();
                assert_true(pids[i] >= 0);
                if (pids[i] == 0) {
                        char c, *error = NULL;
                        unsigned applied = 0;
                        int r;

                        close(barrier[1]);
                        (void) read(barrier[0], &c, 1); /* EOF when the parent lets all go */
                        r = pg_migrate(conninfo, dir, &applied, &error);
                        if (r < 0) {
                                fprintf(stderr, "runner %u: %s\n", i, error ? error : "?");
                                _exit(100);
                        }
                        _exit(50 + (int) applied); /* not 0/1: those could be anything */
                }
        }
        close(barrier[0]);
        close(barrier[1]);

        for (unsigned i = 0; i < N_RUNNERS; i++) {
                int status;
                assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
                assert_true(WIFEXITED(status));
                assert_true(WEXITSTATUS(status) >= 50 && WEXITSTATUS(status) <= 53);
                printf("# runner %u applied %d\n", i, WEXITSTATUS(status) - 50);
                sum += (unsigned) WEXITSTATUS(status) - 50;
        }
        assert_int_equal(sum, 3);

        _cleanup_free_ char *recorded = query_text("SELECT version, name FROM schema_migrations ORDER BY version");
        assert_string_equal(recorded, "1,0001-create.sql;2,0002-second.sql;10,0010-third.sql");
        _cleanup_free_ char *effects = query_text("SELECT migration, note FROM effects ORDER BY id");
        assert_string_equal(effects, "1,NULL;2,NULL;10,after 0002");
        _cleanup_free_ char *stamps = query_text("SELECT count(*) FROM schema_migrations WHERE applied_at <= now()");
        assert_string_equal(stamps, "3");

        /* Again: nothing to do. */
        unsigned applied = 99;
        _cleanup_free_ char *error = NULL;
        assert_int_equal(pg_migrate(conninfo, dir, &applied, &error), 0);
        assert_int_equal(applied, 0);
        assert_null(error);
}

static void test_broken_migration(void **state) {
        _cleanup_free_ char *error = NULL;
        unsigned applied = 99;
        int r;

        write_file("0011-broken.sql",
                   "INSERT INTO effects (migration) VALUES (11);\n"
                   "CREATE TABLE half_done (x integer);\n"
                   "SELEC oops;\n");
        write_file("0012-later.sql", "INSERT INTO effects (migration) VALUES (12);\n");

        r = pg_migrate(conninfo, dir, &applied, &error);
        assert_int_equal(r, -EBADMSG);
        assert_int_equal(applied, 99); /* untouched on failure */
        assert_non_null(error);
        printf("# error: %s\n", error);
        assert_non_null(strstr(error, "0011-broken.sql"));
        assert_non_null(strstr(error, "syntax error"));
        assert_non_null(strstr(error, "line 3"));
        assert_non_null(strstr(error, "42601"));

        /* Nothing of 0011 stays, and 0012 did not run after it. */
        _cleanup_free_ char *effects = query_text("SELECT migration FROM effects ORDER BY id");
        assert_string_equal(effects, "1;2;10");
        _cleanup_free_ char *half = query_text("SELECT to_regclass('half_done') IS NULL");
        assert_string_equal(half, "t");
        _cleanup_free_ char *recorded = query_text("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations");
        assert_string_equal(recorded, "1,2,10");

        /* Fixed: both run now, in order. */
        write_file("0011-broken.sql", "INSERT INTO effects (migration) VALUES (11);\n");
        free(error);
        error = NULL;
        assert_int_equal(pg_migrate(conninfo, dir, &applied, &error), 0);
        assert_int_equal(applied, 2);
        _cleanup_free_ char *effects2 = query_text("SELECT migration FROM effects ORDER BY id");
        assert_string_equal(effects2, "1;2;10;11;12");
}

static void test_bad_inputs(void **state) {
        _cleanup_free_ char *e1 = NULL, *e2 = NULL, *e3 = NULL;
        unsigned applied;

        /* Two files with one version. */
        write_file("0020-a.sql", "SELECT 1;\n");
        write_file("0020-b.sql", "SELECT 1;\n");
        assert_int_equal(pg_migrate(conninfo, dir, &applied, &e1), -EEXIST);
        assert_non_null(e1);
        assert_non_null(strstr(e1, "0020-a.sql"));
        assert_non_null(strstr(e1, "0020-b.sql"));
        remove_file("0020-a.sql");
        remove_file("0020-b.sql");

        assert_int_equal(pg_migrate(conninfo, "/nonexistent/dtask-sql", &applied, &e2), -ENOENT);
        assert_non_null(e2);
        assert_non_null(strstr(e2, "/nonexistent/dtask-sql"));

        /* No server there; the password is not in the message. */
        assert_int_equal(pg_migrate("postgresql://u:SEKRIT@127.0.0.1:1/x", dir, &applied, &e3), -ECONNREFUSED);
        assert_non_null(e3);
        assert_non_null(strstr(e3, "127.0.0.1"));
        assert_null(strstr(e3, "SEKRIT"));
}

/* Runs dtask-migrate; returns its exit status, stdout and stderr. */
static int run_tool(const char *const *args, char **ret_out, char **ret_err) {
        char out_path[] = "/tmp/test-pg-migrate-out.XXXXXX", err_path[] = "/tmp/test-pg-migrate-err.XXXXXX";
        int out_fd = mkostemp(out_path, O_CLOEXEC), err_fd = mkostemp(err_path, O_CLOEXEC), status;
        posix_spawn_file_actions_t fa;
        const char *argv[8] = { migrate_binary };
        pid_t pid;

        assert_true(out_fd >= 0 && err_fd >= 0);
        for (size_t i = 0; args[i]; i++)
                argv[i + 1] = args[i];

        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&fa, err_fd, STDERR_FILENO);
        assert_int_equal(posix_spawn(&pid, migrate_binary, &fa, NULL, (char *const *) argv, environ), 0);
        posix_spawn_file_actions_destroy(&fa);
        assert_int_equal(waitpid(pid, &status, 0), pid);

        for (unsigned i = 0; i < 2; i++) {
                int fd = i == 0 ? out_fd : err_fd;
                char buf[4096];
                ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
                assert_true(n >= 0);
                buf[n] = '\0';
                *(i == 0 ? ret_out : ret_err) = strdup(buf);
                close(fd);
        }
        unlink(out_path);
        unlink(err_path);
        assert_true(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static void test_tool(void **state) {
        char url_arg[1024], dir_arg[128];

        if (!migrate_binary)
                skip();

        snprintf(url_arg, sizeof url_arg, "--database-url=%s", conninfo);
        snprintf(dir_arg, sizeof dir_arg, "--sql-dir=%s", dir);

        {
                _cleanup_free_ char *out = NULL, *err = NULL;
                assert_int_equal(run_tool((const char *[]) { url_arg, dir_arg, NULL }, &out, &err), 0);
                assert_string_equal(out, "Applied 0 migration(s).\n");
        }
        {
                /* $DATABASE_URL is the default. */
                _cleanup_free_ char *out = NULL, *err = NULL;
                write_file("0030-tool.sql", "INSERT INTO effects (migration) VALUES (30);\n");
                assert_int_equal(setenv("DATABASE_URL", conninfo, 1), 0);
                int r = run_tool((const char *[]) { dir_arg, NULL }, &out, &err);
                unsetenv("DATABASE_URL");
                assert_int_equal(r, 0);
                assert_string_equal(out, "Applied 1 migration(s).\n");
        }
        {
                _cleanup_free_ char *out = NULL, *err = NULL;
                write_file("0031-bad.sql", "INSERT INTO no_such_table VALUES (1);\n");
                assert_int_equal(run_tool((const char *[]) { url_arg, dir_arg, NULL }, &out, &err), 1);
                assert_non_null(strstr(err, "0031-bad.sql"));
                assert_non_null(strstr(err, "no_such_table"));
                remove_file("0031-bad.sql");
        }
        {
                _cleanup_free_ char *out = NULL, *err = NULL;
                assert_int_equal(run_tool((const char *[]) { "--database-url=postgresql://u:SEKRIT@127.0.0.1:1/x",
                                                             dir_arg, NULL },
                                          &out, &err),
                                 1);
                assert_null(strstr(err, "SEKRIT"));
                assert_null(strstr(out, "SEKRIT"));
                assert_non_null(strstr(err, "connect"));
        }
        {
                _cleanup_free_ char *out = NULL, *err = NULL;
                assert_int_equal(run_tool((const char *[]) { url_arg, "--sql-dir=/nonexistent/x", NULL }, &out, &err),
                                 1);
                assert_non_null(strstr(err, "/nonexistent/x"));
        }
        {
                _cleanup_free_ char *out = NULL, *err = NULL;
                unsetenv("DATABASE_URL");
                assert_int_equal(run_tool((const char *[]) { dir_arg, NULL }, &out, &err), 1);
                assert_non_null(strstr(err, "DATABASE_URL"));
        }
        {
                _cleanup_free_ char *out = NULL, *err = NULL;
                assert_int_equal(run_tool((const char *[]) { "--version", NULL }, &out, &err), 0);
                assert_non_null(strstr(out, PACKAGE_VERSION));
                free(out), free(err);
                assert_int_equal(run_tool((const char *[]) { "--help", NULL }, &out, &err), 0);
                assert_non_null(strstr(out, "--sql-dir"));
                free(out), free(err);
                assert_int_equal(run_tool((const char *[]) { "--bogus", NULL }, &out, &err), 1);
        }

        _cleanup_free_ char *effects = query_text("SELECT count(*) FROM effects WHERE migration = 30");
        assert_string_equal(effects, "1");
}

/* ---- fixture: a fresh database and a temporary directory ---- */

static char *conninfo_with_dbname(const char *url, const char *db) {
        PQconninfoOption *opts = PQconninfoParse(url, NULL);
        char buf[2048] = "";
        size_t l = 0;

        assert_non_null(opts);
        for (PQconninfoOption *o = opts; o->keyword; o++) {
                const char *v = streq(o->keyword, "dbname") ? db : o->val;
                if (isempty(v))
                        continue;
                l += snprintf(buf + l, sizeof buf - l, "%s='", o->keyword);
                for (const char *p = v; *p; p++)
                        l += snprintf(buf + l, sizeof buf - l, "%s%c", *p == '\'' || *p == '\\' ? "\\" : "", *p);
                l += snprintf(buf + l, sizeof buf - l, "' ");
        }
        PQconninfoFree(opts);
        if (!strstr(buf, "dbname="))
                l += snprintf(buf + l, sizeof buf - l, "dbname='%s'", db);
        assert_true(l < sizeof buf);
        return strdup(buf);
}

static int setup(void **state) {
        _cleanup_(PQfinishp) PGconn *admin = NULL;
        uint8_t rnd[6];
        char sql[128];

        assert_int_equal(getrandom(rnd, sizeof rnd, 0), (ssize_t) sizeof rnd);
        snprintf(dbname, sizeof dbname, "test_migrate_%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
                 rnd[4], rnd[5]);

        admin = connect_to(database_url);
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", dbname);
        exec_ok(admin, sql);
        conninfo = conninfo_with_dbname(database_url, dbname);

        snprintf(dir, sizeof dir, "/tmp/test-pg-migrate.XXXXXX");
        assert_non_null(mkdtemp(dir));
        return 0;
}

static int teardown(void **state) {
        _cleanup_(PQfinishp) PGconn *admin = connect_to(database_url);
        char sql[128];
        DIR *d;

        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
        exec_ok(admin, sql);

        d = opendir(dir);
        if (d) {
                struct dirent *de;
                while ((de = readdir(d)))
                        if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                                (void) unlinkat(dirfd(d), de->d_name, 0);
                closedir(d);
                (void) rmdir(dir);
        }
        conninfo = mfree(conninfo);
        return 0;
}

int main(int argc, char *argv[]) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_concurrent_runners),
                cmocka_unit_test(test_broken_migration),
                cmocka_unit_test(test_bad_inputs),
                cmocka_unit_test(test_tool),
        };

        database_url = getenv("DTASK_DATABASE_URL");
        if (isempty(database_url)) {
                printf("# DTASK_DATABASE_URL not set (run through tools/dev test), skipping\n");
                return SKIP_EXIT_CODE;
        }
        if (argc > 1)
                migrate_binary = argv[1];

        return cmocka_run_group_tests(tests, setup, teardown);
}
