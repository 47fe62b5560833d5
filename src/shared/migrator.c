/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include "log.h"
#include "migrator.h"
#include "pg.h"
#include "time-util.h"

#define MIGRATE_RETRY_MIN_USEC (1 * USEC_PER_SEC)
#define MIGRATE_RETRY_MAX_USEC (30 * USEC_PER_SEC)

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
