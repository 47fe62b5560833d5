/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include "task-cache.h"

#define OWNER "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99"
#define NOW (1000 * USEC_PER_SEC)

static Task task_with_id(const char *id, TaskStatus status) {
        Task t = { .status = status };

        snprintf(t.id, sizeof t.id, "%s", id);
        snprintf(t.owner_id, sizeof t.owner_id, "%s", OWNER);
        return t;
}

static void id_of(unsigned i, char buf[static UUID_STRING_MAX]) {
        snprintf(buf, UUID_STRING_MAX, "%08x-0000-4000-8000-000000000000", i);
}

static int put(TaskCache *c, uint64_t ticket, const char *id, const char *json, usec_t now) {
        Task t = task_with_id(id, TASK_PENDING);

        return task_cache_put(c, ticket, &t, json, strlen(json), now);
}

static void test_disabled(void **state) {
        TaskCache *c = (TaskCache *) 1;
        Task t = task_with_id("00000001-0000-4000-8000-000000000000", TASK_PENDING);

        assert_int_equal(task_cache_new(&c, 0, USEC_PER_SEC), 0);
        assert_null(c);
        assert_int_equal(task_cache_ticket(c), 0);
        assert_int_equal(task_cache_put(c, 1, &t, "{}", 2, NOW), 0);
        assert_null(task_cache_get(c, t.id, NOW));
        task_cache_forget(c, t.id);
        task_cache_clear(c);
}

static void test_get_put_age(void **state) {
        _cleanup_(task_cache_freep) TaskCache *c = NULL;
        const TaskCacheEntry *e;
        TaskCacheStats st;
        char id[UUID_STRING_MAX];
        Task t;

        assert_int_equal(task_cache_new(&c, 1024 * 1024, USEC_PER_SEC), 0);
        id_of(1, id);
        assert_null(task_cache_get(c, id, NOW));

        t = task_with_id(id, TASK_COMPLETED);
        assert_int_equal(task_cache_put(c, task_cache_ticket(c), &t, "{\"a\":1}", 7, NOW), 1);
        e = task_cache_get(c, id, NOW + USEC_PER_SEC - 1);
        assert_non_null(e);
        assert_string_equal(e->json, "{\"a\":1}");
        assert_int_equal(e->json_size, 7);
        assert_int_equal(e->status, TASK_COMPLETED);
        assert_string_equal(e->owner_id, OWNER);

        /* a ticket 0 stores nothing; a newer read replaces the entry */
        assert_int_equal(put(c, 0, id, "{\"a\":0}", NOW), 0);
        assert_int_equal(put(c, task_cache_ticket(c), id, "{\"a\":2}", NOW), 1);
        assert_string_equal(task_cache_get(c, id, NOW)->json, "{\"a\":2}");

        /* too old */
        assert_null(task_cache_get(c, id, NOW + USEC_PER_SEC));
        task_cache_stats(c, &st);
        assert_int_equal(st.hits, 2);
        assert_int_equal(st.misses, 2);
        assert_int_equal(st.entries, 0);
        assert_int_equal(st.bytes, 0);
}

/* A read in flight when the task changes must not be stored: it may have seen the old row. */
static void test_forget_races_reads(void **state) {
        _cleanup_(task_cache_freep) TaskCache *c = NULL;
        char a[UUID_STRING_MAX], b[UUID_STRING_MAX];
        uint64_t before, after;

        assert_int_equal(task_cache_new(&c, 1024 * 1024, 10 * USEC_PER_SEC), 0);
        id_of(1, a);
        id_of(2, b);

        assert_int_equal(put(c, task_cache_ticket(c), a, "{}", NOW), 1);
        before = task_cache_ticket(c);
        task_cache_forget(c, a);
        after = task_cache_ticket(c);
        assert_null(task_cache_get(c, a, NOW));
        assert_int_equal(put(c, before, a, "{\"old\":1}", NOW), 0);
        assert_null(task_cache_get(c, a, NOW));
        assert_int_equal(put(c, after, a, "{\"new\":1}", NOW), 1);
        assert_string_equal(task_cache_get(c, a, NOW)->json, "{\"new\":1}");

        /* another task is not affected (unless it shares a stamp slot: then it is only a miss) */
        assert_int_equal(put(c, before, b, "{}", NOW), 1);

        /* clearing voids every ticket taken before */
        before = task_cache_ticket(c);
        task_cache_clear(c);
        assert_null(task_cache_get(c, a, NOW));
        assert_null(task_cache_get(c, b, NOW));
        assert_int_equal(put(c, before, a, "{}", NOW), 0);
        assert_int_equal(put(c, task_cache_ticket(c), a, "{}", NOW), 1);
}

static void test_bounded(void **state) {
        _cleanup_(task_cache_freep) TaskCache *c = NULL;
        char id[UUID_STRING_MAX], big[8192];
        TaskCacheStats st;
        unsigned n = 2000;

        assert_int_equal(task_cache_new(&c, 64 * 1024, 10 * USEC_PER_SEC), 0);
        for (unsigned i = 0; i < n; i++) {
                id_of(i, id);
                assert_int_equal(put(c, task_cache_ticket(c), id, "{\"some\":\"task\"}", NOW), 1);
                task_cache_stats(c, &st);
                assert_true(st.bytes <= 64 * 1024);
        }
        /* the least recently used went first: the last ones are there, the first are not */
        id_of(n - 1, id);
        assert_non_null(task_cache_get(c, id, NOW));
        id_of(0, id);
        assert_null(task_cache_get(c, id, NOW));

        /* one used recently survives the next puts */
        task_cache_stats(c, &st);
        id_of(n - st.entries, id);
        assert_non_null(task_cache_get(c, id, NOW));
        for (unsigned i = n; i < n + 10; i++) {
                char other[UUID_STRING_MAX];

                id_of(i, other);
                assert_int_equal(put(c, task_cache_ticket(c), other, "{\"some\":\"task\"}", NOW), 1);
        }
        assert_non_null(task_cache_get(c, id, NOW));

        /* an entry larger than a sixteenth of the cache is not kept */
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        id_of(n + 100, id);
        assert_int_equal(put(c, task_cache_ticket(c), id, big, NOW), 0);
        assert_null(task_cache_get(c, id, NOW));

        task_cache_clear(c);
        task_cache_stats(c, &st);
        assert_int_equal(st.entries, 0);
        assert_int_equal(st.bytes, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_disabled),
                cmocka_unit_test(test_get_put_age),
                cmocka_unit_test(test_forget_races_reads),
                cmocka_unit_test(test_bounded),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
