/* SPDX-License-Identifier: MIT */
/* PgPool and PgListener survive a PostgreSQL restart: the same pool object serves
 * queries again afterwards, and the listener reconnects, calls on_reconnect and receives
 * a NOTIFY sent after the restart; pg_listener_is_ready() says false while it is down, and
 * its read callback sees every notification no later than the delivery.
 *
 * Needs DTASK_DATABASE_URL and a way to restart the server: `tools/dev stop|start
 * postgres` (DTASK_ROOT, as exported by tools/dev test), else pg_ctl on DTASK_PG_DATA
 * as user postgres. Skipped (77) without them. Restarting disturbs everything else that
 * uses the server, so meson runs this test alone (is_parallel: false). */

#include <fcntl.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include "pg.h"

#define SKIP_EXIT_CODE 77

extern char **environ;

static const char *database_url, *dev_tool, *pg_data, *pg_bin;
static char *postmaster_opts; /* fallback: server options to start it again with */
static char log_path[128];
static sd_event *event;

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static bool run_until(const unsigned *done, unsigned want, uint64_t timeout_usec) {
        uint64_t end = now_usec() + timeout_usec;
        while (*done < want && now_usec() < end)
                assert_true(sd_event_run(event, 100 * USEC_PER_MSEC) >= 0);
        return *done >= want;
}

static void run_for(uint64_t usec) {
        uint64_t end = now_usec() + usec;
        while (now_usec() < end)
                assert_true(sd_event_run(event, end - now_usec()) >= 0);
}

/* Runs a command (no shell), stdout to the test log; returns its exit status. */
static int run(const char *const argv[]) {
        pid_t pid;
        int status;

        fprintf(stderr, "# running:");
        for (size_t i = 0; argv[i]; i++)
                fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, "\n");

        if (posix_spawn(&pid, argv[0], NULL, NULL, (char *const *) argv, environ) != 0)
                return -1;
        if (waitpid(pid, &status, 0) < 0)
                return -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *pg_ctl_path(void) {
        char *p = NULL;
        assert_true(asprintf(&p, "%s/pg_ctl", pg_bin) > 0);
        return p;
}

/* pg_ctl start needs the options the server ran with unless postgresql.conf has them
 * (tools/dev's cluster does): postmaster.opts is the command line minus the binary. */
static void save_postmaster_opts(void) {
        _cleanup_free_ char *path = NULL, *line = NULL;
        size_t n = 0;
        FILE *f;

        assert_true(asprintf(&path, "%s/postmaster.opts", pg_data) > 0);
        f = fopen(path, "re");
        assert_non_null(f);
        assert_true(getline(&line, &n, f) > 0);
        fclose(f);
        line[strcspn(line, "\n")] = '\0';

        /* Skip the binary (quoted or not), then "-D" "<dir>": pg_ctl passes -D itself. */
        size_t i = line[0] == '"' ? 1 + strcspn(line + 1, "\"") + 1 : strcspn(line, " ");
        i = MIN(i, strlen(line));
        i += strspn(line + i, " ");
        if (strncmp(line + i, "\"-D\" \"", 6) == 0) {
                i += 6;
                i += strcspn(line + i, "\"");
                if (line[i] == '"')
                        i++;
        }
        i += strspn(line + i, " ");
        const char *p = line + i;
        free(postmaster_opts);
        postmaster_opts = strdup(p);
        assert_non_null(postmaster_opts);
}

static bool server_down = false;

static int server_stop(void) {
        server_down = true;
        if (dev_tool) {
                const char *argv[] = { dev_tool, "stop", "postgres", NULL };
                return run(argv);
        }
        _cleanup_free_ char *pg_ctl = pg_ctl_path();
        save_postmaster_opts();
        const char *argv[] = { "/usr/sbin/runuser", "-u", "postgres", "--", pg_ctl, "-D", pg_data, "-m", "fast",
                               "-w", "stop", NULL };
        return run(argv);
}

static int server_start(void) {
        int r;

        if (dev_tool) {
                const char *argv[] = { dev_tool, "start", "postgres", NULL };
                r = run(argv);
        } else {
                _cleanup_free_ char *pg_ctl = pg_ctl_path();
                if (!postmaster_opts)
                        return -1;
                const char *argv[] = { "/usr/sbin/runuser", "-u", "postgres", "--", pg_ctl, "-D", pg_data, "-w", "-l",
                                       log_path, "-o", postmaster_opts, "start", NULL };
                r = run(argv);
        }
        if (r == 0)
                server_down = false;
        return r;
}

typedef struct Outcome {
        unsigned calls;
        int error;
        char value[128];
} Outcome;

static void outcome_cb(PgPool *pool, const PGresult *result, int error, void *userdata) {
        Outcome *o = userdata;
        o->calls++;
        o->error = error;
        o->value[0] = '\0';
        if (result && PQresultStatus(result) == PGRES_TUPLES_OK && PQntuples(result) > 0)
                snprintf(o->value, sizeof o->value, "%s", PQgetvalue(result, 0, 0));
}

static Outcome query(PgPool *p, const char *sql, int n, const char *const *values, uint64_t timeout) {
        Outcome o = {};
        assert_int_equal(pg_pool_query(p, sql, n, values, timeout, outcome_cb, &o, NULL), 0);
        assert_true(run_until(&o.calls, 1, 90 * USEC_PER_SEC));
        return o;
}

typedef struct Listen {
        unsigned received, reconnects;
        unsigned read; /* seen by the read callback, before delivery */
        char channel[64], payload[64];
        char want[64];
        unsigned matched;
} Listen;

static void notify_cb(PgListener *l, const char *channel, const char *payload, void *userdata) {
        Listen *s = userdata;
        s->received++;
        snprintf(s->channel, sizeof s->channel, "%s", channel);
        snprintf(s->payload, sizeof s->payload, "%s", payload);
        if (streq(payload, s->want))
                s->matched++;
}

static void read_cb(PgListener *l, const char *channel, const char *payload, void *userdata) {
        Listen *s = userdata;
        s->read++;
}

static void reconnect_cb(PgListener *l, void *userdata) {
        Listen *s = userdata;
        s->reconnects++;
}

/* Sends NOTIFY through the pool until the listener has it (the LISTEN may still be on
 * its way the first time). */
static bool notify_until_received(PgPool *p, Listen *s, const char *channel, const char *payload) {
        uint64_t end = now_usec() + 30 * USEC_PER_SEC;

        snprintf(s->want, sizeof s->want, "%s", payload);
        s->matched = 0;
        while (now_usec() < end) {
                Outcome o = query(p, "SELECT pg_notify($1, $2)", 2, (const char *[]) { channel, payload }, 0);
                assert_int_equal(o.error, 0);
                if (run_until(&s->matched, 1, 500 * USEC_PER_MSEC))
                        return true;
        }
        return false;
}

static void test_restart(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = NULL;
        _cleanup_(pg_listener_freep) PgListener *l = NULL;
        PgPoolSettings settings = { .size = 3, .default_timeout_usec = 60 * USEC_PER_SEC };
        char channel[64];
        Listen s = {};
        Outcome o;

        /* Mixed case and a space: LISTEN must quote the identifier. */
        snprintf(channel, sizeof channel, "dtask Test %d", (int) getpid());
        const char *channels[] = { channel };

        assert_int_equal(pg_pool_new(&p, event, database_url, &settings), 0);
        assert_int_equal(pg_listener_new(&l, event, database_url, channels, 1, notify_cb, reconnect_cb, &s), 0);
        pg_listener_set_read_callback(l, read_cb);

        /* Before: queries work, the listener hears us. */
        for (int i = 0; i < 5; i++) {
                o = query(p, "SELECT 1 + $1::int", 1, (const char *[]) { "41" }, 0);
                assert_int_equal(o.error, 0);
                assert_string_equal(o.value, "42");
        }
        assert_true(notify_until_received(p, &s, channel, "before"));
        assert_string_equal(s.channel, channel);
        assert_int_equal(s.reconnects, 0);
        assert_true(s.read >= s.received && s.received > 0);
        assert_true(pg_listener_is_ready(l));

        o = query(p, "SELECT pg_postmaster_start_time()", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        char started_before[sizeof o.value];
        snprintf(started_before, sizeof started_before, "%s", o.value);

        /* A statement running when the server goes down fails with -ECONNRESET. */
        Outcome running = {};
        assert_int_equal(pg_pool_query(p, "SELECT pg_sleep(30)", 0, NULL, 60 * USEC_PER_SEC, outcome_cb, &running, NULL),
                         0);
        run_for(300 * USEC_PER_MSEC);
        assert_int_equal(running.calls, 0);

        /* Down: the pool notices, queries wait and then fail with -ENOTCONN. */
        assert_int_equal(server_stop(), 0);
        assert_true(run_until(&running.calls, 1, 10 * USEC_PER_SEC));
        assert_int_equal(running.error, -ECONNRESET);
        run_for(1500 * USEC_PER_MSEC);
        assert_false(pg_pool_is_connected(p));
        assert_false(pg_listener_is_ready(l));
        o = query(p, "SELECT 1", 0, NULL, 500 * USEC_PER_MSEC);
        assert_int_equal(o.error, -ENOTCONN);

        /* A query queued while the server is down runs once it is back. */
        Outcome waiting = {};
        assert_int_equal(pg_pool_query(p, "SELECT 'waited'", 0, NULL, 60 * USEC_PER_SEC, outcome_cb, &waiting, NULL), 0);
        run_for(300 * USEC_PER_MSEC);
        assert_int_equal(waiting.calls, 0);

        assert_int_equal(server_start(), 0);

        assert_true(run_until(&waiting.calls, 1, 60 * USEC_PER_SEC));
        assert_int_equal(waiting.error, 0);
        assert_string_equal(waiting.value, "waited");
        assert_true(pg_pool_is_connected(p));

        /* The same pool, a new server. */
        o = query(p, "SELECT pg_postmaster_start_time()", 0, NULL, 0);
        assert_int_equal(o.error, 0);
        assert_string_not_equal(o.value, started_before);
        for (int i = 0; i < 10; i++) {
                o = query(p, "SELECT 1 + $1::int", 1, (const char *[]) { "1" }, 0);
                assert_int_equal(o.error, 0);
                assert_string_equal(o.value, "2");
        }

        /* The listener is back: on_reconnect, then a NOTIFY sent now arrives. */
        assert_true(run_until(&s.reconnects, 1, 60 * USEC_PER_SEC));
        snprintf(s.want, sizeof s.want, "after");
        s.matched = 0;
        Outcome n = query(p, "SELECT pg_notify($1, 'after')", 1, (const char *[]) { channel }, 0);
        assert_int_equal(n.error, 0);
        assert_true(run_until(&s.matched, 1, 10 * USEC_PER_SEC));
        assert_string_equal(s.payload, "after");
        assert_true(pg_listener_is_ready(l));
        assert_true(s.read >= s.received);
}

/* A restart while the loop is not running (the connections still look fine): the
 * next query must not be sent into a dead session. */
static void test_restart_unnoticed(void **state) {
        _cleanup_(pg_pool_freep) PgPool *p = NULL;
        PgPoolSettings settings = { .size = 2, .default_timeout_usec = 60 * USEC_PER_SEC };
        Outcome o;

        assert_int_equal(pg_pool_new(&p, event, database_url, &settings), 0);
        for (int i = 0; i < 4; i++) {
                o = query(p, "SELECT 'ok'", 0, NULL, 0);
                assert_int_equal(o.error, 0);
        }

        assert_int_equal(server_stop(), 0);
        assert_int_equal(server_start(), 0);

        for (int i = 0; i < 4; i++) {
                o = query(p, "SELECT 'ok again'", 0, NULL, 0);
                assert_int_equal(o.error, 0);
                assert_string_equal(o.value, "ok again");
        }
}

static int setup(void **state) {
        return sd_event_new(&event) >= 0 ? 0 : -1;
}

/* Whatever failed, leave the server running for everyone else. */
static int teardown_server(void **state) {
        if (server_down && server_start() != 0)
                fprintf(stderr, "# FAILED to start PostgreSQL again\n");
        return 0;
}

static int teardown(void **state) {
        event = sd_event_unref(event);
        postmaster_opts = mfree(postmaster_opts);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_restart, teardown_server),
                cmocka_unit_test_teardown(test_restart_unnoticed, teardown_server),
        };
        static char tool[512];
        const char *root;

        database_url = getenv("DTASK_DATABASE_URL");
        root = getenv("DTASK_ROOT");
        pg_data = getenv("DTASK_PG_DATA");
        pg_bin = getenv("DTASK_PG_BIN") ?: "/usr/lib/postgresql/15/bin";

        if (!isempty(root) && snprintf(tool, sizeof tool, "%s/tools/dev", root) < (int) sizeof tool &&
            access(tool, X_OK) == 0)
                dev_tool = tool;

        if (isempty(database_url) || (!dev_tool && isempty(pg_data))) {
                printf("# DTASK_DATABASE_URL and DTASK_ROOT or DTASK_PG_DATA not set (run through tools/dev test), skipping\n");
                return SKIP_EXIT_CODE;
        }
        snprintf(log_path, sizeof log_path, "/tmp/test-pg-reconnect.%d.log", (int) getpid());

        int r = cmocka_run_group_tests(tests, setup, teardown);
        if (!dev_tool)
                (void) unlink(log_path);
        return r;
}
