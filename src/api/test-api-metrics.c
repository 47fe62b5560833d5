/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "metrics.h"

static void test_allow(void **state) {
        _cleanup_(metrics_freep) Metrics *m = NULL;

        assert_int_equal(metrics_new(&m, "127.0.0.0/8, ::1 10.1.2.0/23,fd00::/8"), 0);
        assert_true(metrics_is_allowed(m, "127.0.0.1"));
        assert_true(metrics_is_allowed(m, "127.255.0.9"));
        assert_true(metrics_is_allowed(m, "::1"));
        assert_true(metrics_is_allowed(m, "::ffff:127.0.0.1")); /* IPv4-mapped */
        assert_true(metrics_is_allowed(m, "10.1.3.200"));
        assert_false(metrics_is_allowed(m, "10.1.4.1"));
        assert_true(metrics_is_allowed(m, "fd12:3456::1"));
        assert_false(metrics_is_allowed(m, "fe80::1"));
        assert_false(metrics_is_allowed(m, "192.168.1.1"));
        assert_false(metrics_is_allowed(m, NULL));
        assert_false(metrics_is_allowed(m, "garbage"));
        m = metrics_free(m);

        assert_int_equal(metrics_new(&m, "*"), 0);
        assert_true(metrics_is_allowed(m, "203.0.113.7"));
        m = metrics_free(m);

        assert_int_equal(metrics_new(&m, ""), 0);
        assert_false(metrics_is_allowed(m, "127.0.0.1"));
        m = metrics_free(m);

        assert_int_equal(metrics_new(&m, "127.0.0.1/33"), -EINVAL);
        assert_int_equal(metrics_new(&m, "localhost"), -EINVAL);
        assert_int_equal(metrics_new(&m, "10.0.0.0/"), -EINVAL);
        assert_int_equal(metrics_new(&m, "::1/129"), -EINVAL);
}

static void test_format(void **state) {
        _cleanup_(metrics_freep) Metrics *m = NULL;
        _cleanup_free_ char *text = NULL;
        static const char route[] = "/api/tasks/{id}";
        MetricsGauges g = {
                .have_stats = true,
                .tasks = { 3, 1, 10, 2, 0, 4 },
                .unpublished = 2,
                .oldest_pending_age_usec = 1500000,
                .database_connected = true,
                .waiters = 5,
                .creates_waiting = 6,
                .http_connections = 7,
                .have_task_cache = true,
                .task_cache = { .hits = 90, .misses = 10, .entries = 8, .bytes = 8192 },
        };

        assert_int_equal(metrics_new(&m, "*"), 0);
        metrics_request_completed(m, route, HTTP_GET, 200, 3000);    /* 3 ms */
        metrics_request_completed(m, route, HTTP_GET, 200, 40000);   /* 40 ms */
        metrics_request_completed(m, route, HTTP_GET, 404, 500);
        metrics_request_completed(m, NULL, HTTP_DELETE, 405, 100);
        metrics_publish_confirmed(m);
        metrics_publish_failed(m);
        metrics_publish_failed(m);
        assert_int_equal(metrics_format(m, &g, &text), 0);

        assert_non_null(strstr(text, "dtask_api_http_requests_total{route=\"/api/tasks/{id}\",method=\"GET\",code=\"200\"} 2\n"));
        assert_non_null(strstr(text, "dtask_api_http_requests_total{route=\"/api/tasks/{id}\",method=\"GET\",code=\"404\"} 1\n"));
        assert_non_null(strstr(text, "dtask_api_http_requests_total{route=\"unmatched\",method=\"DELETE\",code=\"405\"} 1\n"));
        /* cumulative buckets of the route: 0.001 holds the 0.5 ms request, 0.005 also the 3 ms one, 0.05 all three */
        assert_non_null(strstr(text, "dtask_api_http_request_duration_seconds_bucket{route=\"/api/tasks/{id}\",le=\"0.001\"} 1\n"));
        assert_non_null(strstr(text, "dtask_api_http_request_duration_seconds_bucket{route=\"/api/tasks/{id}\",le=\"0.005\"} 2\n"));
        assert_non_null(strstr(text, "dtask_api_http_request_duration_seconds_bucket{route=\"/api/tasks/{id}\",le=\"0.05\"} 3\n"));
        assert_non_null(strstr(text, "dtask_api_http_request_duration_seconds_bucket{route=\"/api/tasks/{id}\",le=\"+Inf\"} 3\n"));
        assert_non_null(strstr(text, "dtask_api_http_request_duration_seconds_count{route=\"/api/tasks/{id}\"} 3\n"));
        assert_non_null(strstr(text, "dtask_api_publish_confirmed_total 1\n"));
        assert_non_null(strstr(text, "dtask_api_publish_failures_total 2\n"));
        assert_non_null(strstr(text, "dtask_tasks{status=\"Pending\"} 3\n"));
        assert_non_null(strstr(text, "dtask_tasks{status=\"Cancelled\"} 4\n"));
        assert_non_null(strstr(text, "dtask_tasks_unpublished 2\n"));
        assert_non_null(strstr(text, "dtask_queue_lag_seconds 1.500000\n"));
        assert_non_null(strstr(text, "dtask_api_up{dependency=\"postgresql\"} 1\n"));
        assert_non_null(strstr(text, "dtask_api_up{dependency=\"rabbitmq\"} 0\n"));
        assert_non_null(strstr(text, "dtask_api_waiters 5\n"));
        assert_non_null(strstr(text, "dtask_api_task_creates_waiting 6\n"));
        assert_non_null(strstr(text, "dtask_api_task_cache_lookups_total{result=\"hit\"} 90\n"));
        assert_non_null(strstr(text, "dtask_api_task_cache_lookups_total{result=\"miss\"} 10\n"));
        assert_non_null(strstr(text, "dtask_api_task_cache_entries 8\n"));
        assert_non_null(strstr(text, "dtask_api_task_cache_bytes 8192\n"));

        /* without database statistics the task gauges are left out, without a cache its figures */
        free(TAKE_PTR(text));
        g.have_stats = false;
        g.have_task_cache = false;
        assert_int_equal(metrics_format(m, &g, &text), 0);
        assert_null(strstr(text, "dtask_tasks{"));
        assert_null(strstr(text, "dtask_api_task_cache"));
        assert_non_null(strstr(text, "dtask_api_publish_failures_total 2\n"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_allow),
                cmocka_unit_test(test_format),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
