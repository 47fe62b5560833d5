/* SPDX-License-Identifier: MIT */
#include "dispatch.h"
#include "json-util.h"
#include "log.h"
#include "manager.h"
#include "metrics.h"
#include "routes.h"
#include "task-cache.h"
#include "task-store.h"
#include "tasks.h"
#include "waiters.h"

#define STATS_TIMEOUT_USEC (2 * USEC_PER_SEC)

static int handle_healthz(HttpRequest *req, void *userdata) {
        static const char body[] = "{\"status\":\"ok\"}";

        return http_request_reply(req, 200, "application/json", body, sizeof(body) - 1);
}

static int handle_readyz(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_json_ json_object *o = NULL, *checks = NULL;
        bool db = manager_is_ready(m) && pg_pool_is_connected(m->pool), broker = dispatch_is_connected(m->dispatch);
        int r;

        o = json_object_new_object();
        checks = json_object_new_object();
        if (!o || !checks)
                return -ENOMEM;
        if ((r = json_add_string(checks, "postgresql", db ? "ok" : manager_is_ready(m) ? "disconnected" : "not ready")) < 0 ||
            (r = json_add_string(checks, "rabbitmq", broker ? "ok" : "disconnected")) < 0 ||
            (r = json_add_string(o, "status", db && broker ? "ready" : "not ready")) < 0)
                return r;
        if (json_object_object_add(o, "checks", TAKE_PTR(checks)) < 0)
                return -ENOMEM;
        return http_request_reply_json(req, db && broker ? 200 : 503, o);
}

static int handle_openapi(HttpRequest *req, void *userdata) {
        return http_request_reply(req, 200, "application/json", api_openapi_json, api_openapi_json_size);
}

static int handle_dashboard(HttpRequest *req, void *userdata) {
        int r;

        r = http_request_add_header(req, "Content-Security-Policy",
                                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                                    "frame-ancestors 'none'");
        if (r >= 0)
                r = http_request_add_header(req, "X-Content-Type-Options", "nosniff");
        if (r >= 0)
                r = http_request_add_header(req, "Referrer-Policy", "no-referrer");
        if (r < 0)
                return r;
        return http_request_reply(req, 200, "text/html; charset=utf-8", api_dashboard_html, api_dashboard_html_size);
}

/* ---- /metrics ---- */

typedef struct MetricsCall {
        Manager *manager;
        HttpRequest *req; /* NULL once the server dropped the request */
        bool full;        /* every status counted, not only the live ones */
        usec_t sent;      /* CLOCK_MONOTONIC */
} MetricsCall;

static void metrics_reply(MetricsCall *c, const TaskStats *stats) {
        Manager *m = c->manager;
        _cleanup_free_ char *text = NULL;
        MetricsGauges g = {
                .have_stats = stats != NULL,
                .database_connected = pg_pool_is_connected(m->pool),
                .broker_connected = dispatch_is_connected(m->dispatch),
                .waiters = waiters_count(m->waiters),
                .creates_waiting = task_store_creates_waiting(m->store),
                .http_connections = http_server_n_connections(m->http),
                .have_task_cache = m->cache != NULL,
        };
        int r;

        task_cache_stats(m->cache, &g.task_cache);

        if (stats) {
                memcpy(g.tasks, stats->counts, sizeof(g.tasks));
                g.unpublished = stats->unpublished;
                g.oldest_pending_age_usec = stats->oldest_pending_age;
        }
        r = metrics_format(m->metrics, &g, &text);
        if (r < 0) {
                (void) http_request_reply_problem(c->req, 500, "Out of memory.");
                return;
        }
        r = http_request_reply(c->req, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
        if (r < 0)
                log_debug_errno(r, "Failed to queue the metrics reply: %m");
}

static void on_stats(int error, const TaskStats *stats, void *userdata) {
        _cleanup_free_ MetricsCall *c = userdata;
        Manager *m = c->manager;
        TaskStats merged;

        if (error < 0) {
                log_debug_errno(error, "Failed to count tasks for /metrics: %m");
                if (c->req)
                        metrics_reply(c, NULL);
                return;
        }
        if (c->full) {
                usec_t now = now_usec(CLOCK_MONOTONIC);

                memcpy(m->metrics_counts, stats->counts, sizeof(m->metrics_counts));
                m->metrics_counted_at = c->sent;
                m->metrics_count_took = now > c->sent ? now - c->sent : 0;
        } else {
                /* the live counts as they are now, the finished ones of the last full count */
                merged = *stats;
                for (TaskStatus s = 0; s < _TASK_STATUS_MAX; s++)
                        if (task_status_is_terminal(s))
                                merged.counts[s] = m->metrics_counts[s];
                stats = &merged;
        }
        if (c->req)
                metrics_reply(c, stats);
}

static void on_metrics_abort(HttpRequest *req, void *userdata) {
        MetricsCall *c = userdata;

        c->req = NULL; /* freed by on_stats() */
}

static int handle_metrics(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ MetricsCall *c = NULL;
        int r;

        if (!metrics_is_allowed(m->metrics, http_request_client_address(req)))
                return http_request_reply_problem(req, 403, "Metrics are not available to this address (METRICS_ALLOW).");

        c = calloc(1, sizeof(MetricsCall));
        if (!c)
                return -ENOMEM;
        c->manager = m;
        c->req = req;

        if (!manager_is_ready(m) || !pg_pool_is_connected(m->pool)) {
                metrics_reply(c, NULL);
                return 0;
        }

        r = http_request_suspend(req, on_metrics_abort, c);
        if (r < 0)
                return r;
        c->sent = now_usec(CLOCK_MONOTONIC);
        c->full = m->metrics_counted_at == 0 ||
                  c->sent >= m->metrics_counted_at + task_stats_full_interval(m->metrics_count_took);
        r = task_store_stats(m->store, /* live_only= */ !c->full, on_stats, c);
        if (r < 0) {
                metrics_reply(c, NULL);
                return 0;
        }
        TAKE_PTR(c);
        return 0;
}

int routes_new(Manager *m, HttpRoute **ret, size_t *ret_n) {
        const size_t small = TASK_SMALL_BODY_LIMIT, create = task_create_body_limit(&m->limits),
                     complete = task_complete_body_limit(&m->limits);
        const HttpRoute routes[] = {
                { HTTP_GET, "/", handle_dashboard, small },
                { HTTP_GET, "/healthz", handle_healthz, small },
                { HTTP_GET, "/readyz", handle_readyz, small },
                { HTTP_GET, "/metrics", handle_metrics, small },
                { HTTP_GET, "/openapi.json", handle_openapi, small },
                { HTTP_GET, "/api/tasks", tasks_list, small },
                { HTTP_POST, "/api/tasks", tasks_create, create },
                { HTTP_GET, "/api/tasks/{id}", tasks_get, small },
                { HTTP_PATCH, "/api/tasks/{id}", tasks_patch, create + complete },
                { HTTP_POST, "/api/tasks/{id}/retry", tasks_retry, small },
                { HTTP_POST, "/api/tasks/{id}/cancel", tasks_cancel, small },
                { HTTP_POST, "/api/tasks/{id}/claim", tasks_claim, small },
                { HTTP_POST, "/api/tasks/{id}/heartbeat", tasks_heartbeat, small },
                { HTTP_POST, "/api/tasks/{id}/complete", tasks_complete, complete },
                { HTTP_POST, "/api/tasks/{id}/release", tasks_release, small },
        };
        HttpRoute *copy;

        copy = malloc(sizeof(routes));
        if (!copy)
                return -ENOMEM;
        memcpy(copy, routes, sizeof(routes));
        *ret = copy;
        *ret_n = ELEMENTSOF(routes);
        return 0;
}
