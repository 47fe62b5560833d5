/* SPDX-License-Identifier: MIT */
#pragma once

#include "http-server.h"
#include "macro.h"
#include "task-cache.h"

/* Prometheus metrics of dtask-api (text exposition format 0.0.4): HTTP requests by route,
 * method and status code, a latency histogram per route, dispatch outcomes, and the
 * gauges the manager samples at scrape time (tasks by status, queue lag, connections).
 * /metrics answers only clients in the METRICS_ALLOW list. */

typedef struct Metrics Metrics;

typedef struct MetricsGauges {
        bool have_stats;                     /* false when the database could not be asked */
        uint64_t tasks[6];                   /* per TaskStatus */
        uint64_t unpublished;
        uint64_t oldest_pending_age_usec;
        bool database_connected;
        bool broker_connected;
        uint64_t waiters;
        uint64_t creates_waiting;
        uint64_t http_connections;
        bool have_task_cache;                /* false: TASK_CACHE_SIZE=0 */
        TaskCacheStats task_cache;
} MetricsGauges;

/* allow: comma/space separated addresses or CIDR prefixes ("127.0.0.0/8, ::1"), "*" for
 * everybody, "" for nobody. -EINVAL when malformed. */
int metrics_new(Metrics **ret, const char *allow);
Metrics *metrics_free(Metrics *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Metrics *, metrics_free);

bool metrics_is_allowed(const Metrics *m, const char *client_address);

void metrics_request_completed(Metrics *m, const char *route, HttpMethod method, unsigned status,
                               uint64_t duration_usec);
void metrics_publish_confirmed(Metrics *m);
void metrics_publish_failed(Metrics *m);

/* The whole exposition text; caller frees. */
int metrics_format(const Metrics *m, const MetricsGauges *g, char **ret);
