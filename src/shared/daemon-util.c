/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "daemon-util.h"
#include "log.h"
#include "pg.h"
#include "time-util.h"

#define PEM_MAX (1024 * 1024)
#define MIGRATE_RETRY_MIN_USEC (1 * USEC_PER_SEC)
#define MIGRATE_RETRY_MAX_USEC (30 * USEC_PER_SEC)

int daemon_event_new(sd_event **ret, sd_event_signal_handler_t on_signal, void *userdata) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        sigset_t mask;
        int r;

        r = sd_event_default(&e);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        (void) sigemptyset(&mask);
        (void) sigaddset(&mask, SIGTERM);
        (void) sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals: %m");
        r = sd_event_add_signal(e, NULL, SIGTERM, on_signal, userdata);
        if (r >= 0)
                r = sd_event_add_signal(e, NULL, SIGINT, on_signal, userdata);
        if (r < 0)
                return log_error_errno(r, "Failed to add signal handlers: %m");
        r = sd_event_set_watchdog(e, true);
        if (r < 0)
                return log_error_errno(r, "Failed to enable the watchdog: %m");

        *ret = TAKE_PTR(e);
        return 0;
}

int daemon_config_load(Config **ret, const char *path) {
        _cleanup_free_ char *error = NULL;
        int r;

        r = config_load(ret, path, &error);
        if (r < 0) {
                if (error)
                        log_error("Invalid configuration: %s", error);
                else
                        log_error_errno(r, "Failed to load the configuration: %m");
        }
        return r;
}

const char *daemon_sql_dir(const char *override) {
        const char *e;

        if (!isempty(override))
                return override;
        e = getenv("DTASK_SQL_DIR");
        if (!isempty(e))
                return e;
        /* Run from the build tree (not installed): the migrations of the source tree. */
        if (access(SQLDIR, F_OK) < 0 && access(SOURCE_SQLDIR, F_OK) >= 0)
                return SOURCE_SQLDIR;
        return SQLDIR;
}

int daemon_read_pem(const char *key, const char *value, char **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_erase_ char *buf = NULL;
        struct stat st;
        size_t n = 0;

        if (strstr(value, "-----BEGIN ")) {
                buf = strdup(value);
                if (!buf)
                        return log_oom();
                *ret = TAKE_PTR(buf);
                return 0;
        }

        fd = open(value, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(errno, "%s: cannot open %s: %m", key, value);
        if (fstat(fd, &st) < 0)
                return log_error_errno(errno, "%s: cannot stat %s: %m", key, value);
        if (!S_ISREG(st.st_mode) || st.st_size > PEM_MAX)
                return log_error_errno(EINVAL, "%s: %s is not a regular file of at most 1 MiB.", key, value);
        buf = calloc(1, (size_t) st.st_size + 1);
        if (!buf)
                return log_oom();
        while (n < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + n, (size_t) st.st_size - n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return log_error_errno(errno, "%s: cannot read %s: %m", key, value);
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = '\0';
        if (!strstr(buf, "-----BEGIN "))
                return log_error_errno(EINVAL, "%s: %s does not contain PEM data.", key, value);

        *ret = TAKE_PTR(buf);
        return 0;
}

struct Migrator {
        sd_event *event;
        sd_event_source *timer;
        char *conninfo; /* a secret: may hold a password */
        char *sql_dir;
        unsigned attempts;
        MigratorDone done;
        void *userdata;
};

Migrator *migrator_free(Migrator *m) {
        if (!m)
                return NULL;
        m->timer = sd_event_source_disable_unref(m->timer);
        erase_and_free(m->conninfo);
        free(m->sql_dir);
        sd_event_unref(m->event);
        return mfree(m);
}

/* Returns 1 when applied, 0 to retry, < 0 when retrying cannot help. */
static int migrator_attempt(Migrator *m) {
        _cleanup_free_ char *error = NULL;
        unsigned applied = 0;
        int r;

        m->attempts++;
        r = pg_migrate(m->conninfo, m->sql_dir, &applied, &error);
        if (r == -ENOENT && access(m->sql_dir, F_OK) < 0)
                return log_error_errno(r, "Migration directory %s does not exist (use --sql-dir= or $DTASK_SQL_DIR).",
                                       m->sql_dir);
        if (r < 0) {
                if (m->attempts == 1)
                        log_warning_errno(r, "Database not ready, retrying in the background: %s",
                                          error ?: strerror(-r));
                else
                        log_debug_errno(r, "Database still not ready (attempt %u): %s", m->attempts,
                                        error ?: strerror(-r));
                (void) sd_notifyf(false, "STATUS=Waiting for the database (attempt %u).", m->attempts);
                return 0;
        }
        if (applied > 0)
                log_info("Applied %u database migration%s from %s.", applied, applied == 1 ? "" : "s", m->sql_dir);
        if (m->attempts > 1)
                log_notice("Database reachable after %u attempts.", m->attempts);
        return 1;
}

static void migrator_step(Migrator *m) {
        int r = migrator_attempt(m);

        if (r == 0) {
                r = migrator_retry(m);
                if (r >= 0)
                        return;
        }
        m->done(m, MIN(r, 0), m->userdata);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        migrator_step(userdata);
        return 0;
}

int migrator_retry(Migrator *m) {
        usec_t delay = MIGRATE_RETRY_MIN_USEC;
        int r;

        for (unsigned i = 1; i < m->attempts && delay < MIGRATE_RETRY_MAX_USEC; i++)
                delay *= 2;
        delay = MIN(delay, MIGRATE_RETRY_MAX_USEC);

        if (m->timer) {
                r = sd_event_source_set_time_relative(m->timer, delay);
                if (r >= 0)
                        r = sd_event_source_set_enabled(m->timer, SD_EVENT_ONESHOT);
        } else
                r = sd_event_add_time_relative(m->event, &m->timer, CLOCK_MONOTONIC, delay, 100 * USEC_PER_MSEC,
                                               on_timer, m);
        if (r < 0)
                return log_error_errno(r, "Failed to arm the migration timer: %m");
        return 0;
}

int migrator_new(Migrator **ret, sd_event *e, const char *conninfo, const char *sql_dir, MigratorDone done,
                 void *userdata) {
        _cleanup_(migrator_freep) Migrator *m = NULL;

        m = calloc(1, sizeof(Migrator));
        if (!m)
                return log_oom();
        m->event = sd_event_ref(e);
        m->conninfo = strdup(conninfo);
        m->sql_dir = strdup(sql_dir);
        if (!m->conninfo || !m->sql_dir)
                return log_oom();
        m->done = done;
        m->userdata = userdata;

        *ret = m;
        migrator_step(TAKE_PTR(m));
        return 0;
}
