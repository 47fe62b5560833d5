/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>

#include "lru-map.h"

static unsigned n_evicted;
static char last_evicted[LRU_MAP_KEY_MAX + 1];

static void on_evict(const char *key, void *value, void *userdata) {
        n_evicted++;
        snprintf(last_evicted, sizeof last_evicted, "%s", key);
        assert_int_equal(*(int *) value, atoi(key + 1));
}

static bool remove_odd(const char *key, void *value, void *userdata) {
        (*(unsigned *) userdata)++;
        return *(int *) value % 2 == 1;
}

static void test_lru(void **state) {
        _cleanup_(lru_map_freep) LruMap *m = NULL;
        const char *oldest = NULL;
        char key[16];
        bool created;
        int *v;

        n_evicted = 0;
        assert_int_equal(lru_map_new(&m, 4, sizeof(int), on_evict, NULL), 0);
        for (int i = 0; i < 4; i++) {
                snprintf(key, sizeof key, "k%d", i);
                v = lru_map_ensure(m, key, &created);
                assert_non_null(v);
                assert_true(created);
                assert_int_equal(*v, 0);
                *v = i;
        }
        assert_int_equal(lru_map_size(m), 4);

        /* touching k0 makes k1 the oldest */
        v = lru_map_get(m, "k0");
        assert_non_null(v);
        assert_int_equal(*v, 0);
        v = lru_map_ensure(m, "k4", &created);
        assert_true(created);
        *v = 4;
        assert_int_equal(n_evicted, 1);
        assert_string_equal(last_evicted, "k1");
        assert_null(lru_map_get(m, "k1"));
        assert_non_null(lru_map_get(m, "k0"));
        assert_int_equal(lru_map_size(m), 4);

        /* ensure on an existing key does not create or evict */
        v = lru_map_ensure(m, "k4", &created);
        assert_false(created);
        assert_int_equal(*v, 4);
        assert_int_equal(n_evicted, 1);

        assert_true(lru_map_remove(m, "k4"));
        assert_false(lru_map_remove(m, "k4"));
        assert_int_equal(lru_map_size(m), 3);

        /* the oldest, without touching it: k2, then k3, k0 */
        for (int i = 0; i < 2; i++) {
                v = lru_map_oldest(m, &oldest);
                assert_non_null(v);
                assert_string_equal(oldest, "k2");
                assert_int_equal(*v, 2);
        }
        assert_true(lru_map_remove(m, oldest));
        assert_non_null(lru_map_oldest(m, &oldest));
        assert_string_equal(oldest, "k3");
        assert_true(lru_map_remove(m, "k3"));
        assert_true(lru_map_remove(m, "k0"));
        assert_null(lru_map_oldest(m, &oldest));
        assert_null(lru_map_oldest(NULL, NULL));
}

static void test_visit_and_many(void **state) {
        _cleanup_(lru_map_freep) LruMap *m = NULL;
        char key[16];
        unsigned visited = 0;

        n_evicted = 0;
        assert_int_equal(lru_map_new(&m, 1000, sizeof(int), on_evict, NULL), 0);
        for (int i = 0; i < 5000; i++) {
                int *v;

                snprintf(key, sizeof key, "k%d", i);
                v = lru_map_ensure(m, key, NULL);
                assert_non_null(v);
                *v = i;
        }
        assert_int_equal(lru_map_size(m), 1000);
        assert_int_equal(n_evicted, 4000);
        /* every entry and its value survived the growth of the bucket array */
        for (int i = 4000; i < 5000; i++) {
                int *v;

                snprintf(key, sizeof key, "k%d", i);
                v = lru_map_get(m, key);
                assert_non_null(v);
                assert_int_equal(*v, i);
        }
        lru_map_visit(m, remove_odd, &visited);
        assert_int_equal(visited, 1000);
        assert_int_equal(lru_map_size(m), 500);
        assert_null(lru_map_get(m, "k4001"));
        assert_non_null(lru_map_get(m, "k4002"));
}

static void test_key_too_long(void **state) {
        _cleanup_(lru_map_freep) LruMap *m = NULL;
        char key[LRU_MAP_KEY_MAX + 2];

        memset(key, 'x', sizeof key - 1);
        key[sizeof key - 1] = '\0';
        assert_int_equal(lru_map_new(&m, 2, 8, NULL, NULL), 0);
        errno = 0;
        assert_null(lru_map_ensure(m, key, NULL));
        assert_int_equal(errno, EINVAL);
        key[LRU_MAP_KEY_MAX] = '\0';
        assert_non_null(lru_map_ensure(m, key, NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_lru),
                cmocka_unit_test(test_visit_and_many),
                cmocka_unit_test(test_key_too_long),
        };

        if (sodium_init() < 0)
                return 1;
        return cmocka_run_group_tests(tests, NULL, NULL);
}
