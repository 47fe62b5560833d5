/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <stdio.h>

#include "metrics.h"
#include "task-json.h"

#define METRICS_MAX_SERIES 512U /* distinct (route, method, status) triples; more are folded into "other" */
#define METRICS_MAX_ALLOW 32U

/* Latency buckets in seconds. */
static const double buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
#define N_BUCKETS ELEMENTSOF(buckets)

typedef struct Series {
        const char *route; /* static pattern string from the routes table, or NULL */
        HttpMethod method;
        unsigned status;
        uint64_t count;
} Series;

typedef struct Histogram {
        const char *route;
        uint64_t buckets[N_BUCKETS]; /* cumulative at output time, stored per bucket */
        uint64_t count;
        double sum;
} Histogram;

typedef struct AllowEntry {
        int family;
        uint8_t addr[16];
        unsigned prefix;
} AllowEntry;

struct Metrics {
        Series *series;
        size_t n_series;
        Histogram *histograms;
        size_t n_histograms;
        uint64_t other_requests;
        uint64_t publish_confirmed;
        uint64_t publish_failed;

        bool allow_all;
        AllowEntry allow[METRICS_MAX_ALLOW];
        size_t n_allow;
};

static int parse_allow(Metrics *m, const char *allow) {
        const char *p = allow;

        while (p && *p) {
                char item[INET6_ADDRSTRLEN + 8], *slash;
                size_t n;
                AllowEntry e = {};
                unsigned long prefix;

                p += strspn(p, ", \t");
                n = strcspn(p, ", \t");
                if (n == 0)
                        break;
                if (n >= sizeof(item))
                        return -EINVAL;
                memcpy(item, p, n);
                item[n] = '\0';
                p += n;

                if (streq(item, "*")) {
                        m->allow_all = true;
                        continue;
                }
                slash = strchr(item, '/');
                if (slash)
                        *slash = '\0';
                if (inet_pton(AF_INET, item, e.addr) == 1) {
                        e.family = AF_INET;
                        e.prefix = 32;
                } else if (inet_pton(AF_INET6, item, e.addr) == 1) {
                        e.family = AF_INET6;
                        e.prefix = 128;
                } else
                        return -EINVAL;
                if (slash) {
                        char *end;

                        errno = 0;
                        prefix = strtoul(slash + 1, &end, 10);
                        if (errno != 0 || *end != '\0' || end == slash + 1 || prefix > e.prefix)
                                return -EINVAL;
                        e.prefix = (unsigned) prefix;
                }
                if (m->n_allow >= METRICS_MAX_ALLOW)
                        return -E2BIG;
                m->allow[m->n_allow++] = e;
        }
        return 0;
}

int metrics_new(Metrics **ret, const char *allow) {
        _cleanup_(metrics_freep) Metrics *m = NULL;
        int r;

        m = calloc(1, sizeof(Metrics));
        if (!m)
                return -ENOMEM;
        r = parse_allow(m, allow);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

Metrics *metrics_free(Metrics *m) {
        if (!m)
                return NULL;
        free(m->series);
        free(m->histograms);
        return mfree(m);
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits) {
        unsigned bytes = bits / 8, rest = bits % 8;

        if (memcmp(a, b, bytes) != 0)
                return false;
        if (rest == 0)
                return true;
        return ((a[bytes] ^ b[bytes]) & (uint8_t) (0xff << (8 - rest))) == 0;
}

bool metrics_is_allowed(const Metrics *m, const char *client_address) {
        uint8_t addr[16];
        int family;

        if (m->allow_all)
                return true;
        if (!client_address)
                return false;
        if (inet_pton(AF_INET, client_address, addr) == 1)
                family = AF_INET;
        else if (inet_pton(AF_INET6, client_address, addr) == 1) {
                family = AF_INET6;
                /* IPv4-mapped IPv6 addresses count as IPv4 */
                static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
                if (memcmp(addr, mapped, 12) == 0) {
                        memmove(addr, addr + 12, 4);
                        family = AF_INET;
                }
        } else
                return false;

        for (size_t i = 0; i < m->n_allow; i++)
                if (m->allow[i].family == family && prefix_match(m->allow[i].addr, addr, m->allow[i].prefix))
                        return true;
        return false;
}

static Histogram *histogram_for(Metrics *m, const char *route) {
        Histogram *h;

        for (size_t i = 0; i < m->n_histograms; i++)
                if (m->histograms[i].route == route)
                        return &m->histograms[i];
        if (m->n_histograms >= METRICS_MAX_SERIES)
                return NULL;
        h = realloc(m->histograms, (m->n_histograms + 1) * sizeof(Histogram));
        if (!h)
                return NULL;
        m->histograms = h;
        h = &m->histograms[m->n_histograms++];
        *h = (Histogram) { .route = route };
        return h;
}

void metrics_request_completed(Metrics *m, const char *route, HttpMethod method, unsigned status,
                               uint64_t duration_usec) {
        double seconds = (double) duration_usec / 1e6;
        Histogram *h;
        Series *s = NULL;

        if (!m)
                return;

        for (size_t i = 0; i < m->n_series; i++)
                if (m->series[i].route == route && m->series[i].method == method && m->series[i].status == status) {
                        s = &m->series[i];
                        break;
                }
        if (!s && m->n_series < METRICS_MAX_SERIES) {
                Series *n = realloc(m->series, (m->n_series + 1) * sizeof(Series));

                if (n) {
                        m->series = n;
                        s = &m->series[m->n_series++];
                        *s = (Series) { .route = route, .method = method, .status = status };
                }
        }
        if (s)
                s->count++;
        else
                m->other_requests++;

        h = histogram_for(m, route);
        if (!h)
                return;
        for (size_t i = 0; i < N_BUCKETS; i++)
                if (seconds <= buckets[i]) {
                        h->buckets[i]++;
                        break;
                }
        h->count++;
        h->sum += seconds;
}

void metrics_publish_confirmed(Metrics *m) {
        if (m)
                m->publish_confirmed++;
}

void metrics_publish_failed(Metrics *m) {
        if (m)
                m->publish_failed++;
}

static const char *route_label(const char *route) {
        return route ?: "unmatched";
}

int metrics_format(const Metrics *m, const MetricsGauges *g, char **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;

        fputs("# HELP dtask_api_http_requests_total HTTP requests answered, by route pattern, method and status code.\n"
              "# TYPE dtask_api_http_requests_total counter\n",
              f);
        for (size_t i = 0; i < m->n_series; i++)
                fprintf(f, "dtask_api_http_requests_total{route=\"%s\",method=\"%s\",code=\"%u\"} %" PRIu64 "\n",
                        route_label(m->series[i].route), strna(http_method_to_string(m->series[i].method)),
                        m->series[i].status, m->series[i].count);
        if (m->other_requests > 0)
                fprintf(f, "dtask_api_http_requests_total{route=\"other\",method=\"other\",code=\"other\"} %" PRIu64 "\n",
                        m->other_requests);

        fputs("# HELP dtask_api_http_request_duration_seconds Time from the first byte of a request to its response.\n"
              "# TYPE dtask_api_http_request_duration_seconds histogram\n",
              f);
        for (size_t i = 0; i < m->n_histograms; i++) {
                const Histogram *h = &m->histograms[i];
                uint64_t cumulative = 0;

                for (size_t b = 0; b < N_BUCKETS; b++) {
                        cumulative += h->buckets[b];
                        fprintf(f, "dtask_api_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                                route_label(h->route), buckets[b], cumulative);
                }
                fprintf(f, "dtask_api_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                        route_label(h->route), h->count);
                fprintf(f, "dtask_api_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", route_label(h->route),
                        h->sum);
                fprintf(f, "dtask_api_http_request_duration_seconds_count{route=\"%s\"} %" PRIu64 "\n",
                        route_label(h->route), h->count);
        }

        fprintf(f,
                "# HELP dtask_api_publish_confirmed_total Task messages confirmed by the broker.\n"
                "# TYPE dtask_api_publish_confirmed_total counter\n"
                "dtask_api_publish_confirmed_total %" PRIu64 "\n"
                "# HELP dtask_api_publish_failures_total Task messages not published or not confirmed (the reaper re-publishes them).\n"
                "# TYPE dtask_api_publish_failures_total counter\n"
                "dtask_api_publish_failures_total %" PRIu64 "\n",
                m->publish_confirmed, m->publish_failed);

        if (g->have_stats) {
                fputs("# HELP dtask_tasks Tasks in the database, by status.\n"
                      "# TYPE dtask_tasks gauge\n",
                      f);
                for (TaskStatus s = 0; s < _TASK_STATUS_MAX; s++)
                        fprintf(f, "dtask_tasks{status=\"%s\"} %" PRIu64 "\n", task_status_to_string(s), g->tasks[s]);
                fprintf(f,
                        "# HELP dtask_tasks_unpublished Pending tasks whose message the broker has not confirmed.\n"
                        "# TYPE dtask_tasks_unpublished gauge\n"
                        "dtask_tasks_unpublished %" PRIu64 "\n"
                        "# HELP dtask_queue_lag_seconds Age of the oldest Pending task.\n"
                        "# TYPE dtask_queue_lag_seconds gauge\n"
                        "dtask_queue_lag_seconds %.6f\n",
                        g->unpublished, (double) g->oldest_pending_age_usec / 1e6);
        }

        fprintf(f,
                "# HELP dtask_api_up Whether a dependency is connected (1) or not (0).\n"
                "# TYPE dtask_api_up gauge\n"
                "dtask_api_up{dependency=\"postgresql\"} %d\n"
                "dtask_api_up{dependency=\"rabbitmq\"} %d\n"
                "# HELP dtask_api_waiters Requests waiting for a task to finish (?wait=).\n"
                "# TYPE dtask_api_waiters gauge\n"
                "dtask_api_waiters %" PRIu64 "\n"
                "# HELP dtask_api_task_creates_waiting Creates waiting for one of the database statements that "
                "write them in batches.\n"
                "# TYPE dtask_api_task_creates_waiting gauge\n"
                "dtask_api_task_creates_waiting %" PRIu64 "\n"
                "# HELP dtask_api_http_connections Open HTTP connections.\n"
                "# TYPE dtask_api_http_connections gauge\n"
                "dtask_api_http_connections %" PRIu64 "\n",
                g->database_connected, g->broker_connected, g->waiters, g->creates_waiting, g->http_connections);
        if (g->have_task_cache)
                fprintf(f,
                        "# HELP dtask_api_task_cache_lookups_total Reads of GET /api/tasks/{id} from the task cache, "
                        "by result.\n"
                        "# TYPE dtask_api_task_cache_lookups_total counter\n"
                        "dtask_api_task_cache_lookups_total{result=\"hit\"} %" PRIu64 "\n"
                        "dtask_api_task_cache_lookups_total{result=\"miss\"} %" PRIu64 "\n"
                        "# HELP dtask_api_task_cache_entries Tasks in the task cache.\n"
                        "# TYPE dtask_api_task_cache_entries gauge\n"
                        "dtask_api_task_cache_entries %" PRIu64 "\n"
                        "# HELP dtask_api_task_cache_bytes Memory held by the task cache.\n"
                        "# TYPE dtask_api_task_cache_bytes gauge\n"
                        "dtask_api_task_cache_bytes %" PRIu64 "\n",
                        g->task_cache.hits, g->task_cache.misses, g->task_cache.entries, g->task_cache.bytes);

        if (fclose(f) != 0)
                return -ENOMEM;
        *ret = TAKE_PTR(buf);
        return 0;
}
