/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "amqp.h"
#include "config.h"
#include "daemon-util.h"
#include "http-server.h"
#include "macro.h"
#include "migrator.h"
#include "pg.h"
#include "task-json.h"

#define API_DEFAULT_LISTEN "127.0.0.1:8080"
#define API_BUS_NAME "org.dtask.Tasks1"
#define API_BUS_PATH "/org/dtask/Tasks1"
#define API_BUS_INTERFACE "org.dtask.Tasks1.Manager"
#define API_NOTIFY_CHANNEL "dtask_task_changed"
/* Owner of tasks created over D-Bus (no API key there): a fixed, well-known UUID. */
#define API_SYSTEM_OWNER_ID "00000000-0000-0000-0000-000000000000"

typedef struct Auth Auth;
typedef struct Dispatch Dispatch;
typedef struct Metrics Metrics;
typedef struct TaskCache TaskCache;
typedef struct TaskStore TaskStore;
typedef struct Waiters Waiters;
typedef struct ApiBus ApiBus;

typedef struct ManagerOptions {
        const char *config_path; /* NULL: default */
        const char *listen;      /* NULL: socket activation or the default address */
        const char *sql_dir;     /* NULL: $DTASK_SQL_DIR or the installed directory */
} ManagerOptions;

typedef struct Manager {
        sd_event *event;
        Config *config;

        /* settings from the configuration */
        TaskLimits limits;
        usec_t max_wait;
        usec_t lease_duration;
        usec_t idempotency_retention;
        usec_t db_timeout;
        unsigned max_attempts;
        char *conninfo; /* secret */
        char *sql_dir;
        char *listen;      /* --listen=, NULL: socket activation or the default */
        char *tls_certificate, *tls_key; /* PEM text; the key is a secret */

        HttpServer *http;
        HttpRoute *routes;
        size_t n_routes;

        PgPool *pool;
        PgListener *listener;
        TaskStore *store;
        TaskCache *cache;  /* NULL: TASK_CACHE_SIZE=0 */
        bool migrated;
        usec_t db_warned_at; /* CLOCK_MONOTONIC of the last "database unavailable" warning */
        Migrator *migrator;

        Auth *auth;
        Dispatch *dispatch;
        Waiters *waiters;
        Metrics *metrics;
        /* /metrics: the last count of every status, whose finished counts are reused while
         * another is not due (task_stats_full_interval()) */
        uint64_t metrics_counts[_TASK_STATUS_MAX];
        usec_t metrics_counted_at, metrics_count_took; /* CLOCK_MONOTONIC; 0: never */
        ApiBus *bus;
} Manager;

int manager_new(Manager **ret, const ManagerOptions *options);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

/* Listens, connects, migrates (retrying in the background while the database is
 * unreachable) and notifies READY=1 once migrations are applied. */
int manager_start(Manager *m, const ManagerOptions *options);
int manager_run(Manager *m);

static inline bool manager_is_ready(const Manager *m) {
        return m->migrated;
}

/* Whether an error of the store means that the database is unavailable (→ 503). */
static inline bool error_is_unavailable(int error) {
        return error == -ENOTCONN || error == -ETIMEDOUT || error == -ECONNRESET || error == -ECONNREFUSED ||
               error == -EAGAIN || error == -EHOSTUNREACH || error == -ECANCELED;
}

/* The task cache, when it can be trusted: only while notifications of changes arrive. */
static inline TaskCache *manager_cache(const Manager *m) {
        return pg_listener_is_ready(m->listener) ? m->cache : NULL;
}

/* Called for every task status change (from PostgreSQL NOTIFY), for waiters and D-Bus. */
void manager_task_changed(Manager *m, const char *id, TaskStatus status, unsigned attempt);
