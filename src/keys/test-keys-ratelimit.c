/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>

#include "ratelimit.h"

#define SEC USEC_PER_SEC
#define T0 ((uint64_t) 1000 * SEC)

static void test_burst_then_refill(void **state) {
        _cleanup_(ratelimit_freep) RateLimit *rl = NULL;
        uint64_t retry = 0;

        /* 10 a minute: 10 at once, then one every 6 s */
        assert_int_equal(ratelimit_new(&rl, 10, 0), 0);
        for (int i = 0; i < 10; i++)
                assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0, &retry), 1);
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0, &retry), 0);
        assert_int_equal(retry, 6 * SEC);
        assert_int_equal(ratelimit_retry_after_sec(retry), 6);
        assert_false(ratelimit_test(rl, "192.0.2.1", T0, NULL));

        /* a refused attempt uses nothing: after 6 s exactly one more */
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0 + 6 * SEC - 1, &retry), 0);
        assert_int_equal(retry, 1);
        assert_int_equal(ratelimit_retry_after_sec(retry), 1);
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0 + 6 * SEC, &retry), 1);
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0 + 6 * SEC, &retry), 0);

        /* after a full minute of quiet the whole burst is back */
        for (int i = 0; i < 10; i++)
                assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0 + 72 * SEC, NULL), 1);
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0 + 72 * SEC, NULL), 0);
}

static void test_per_address(void **state) {
        _cleanup_(ratelimit_freep) RateLimit *rl = NULL;

        assert_int_equal(ratelimit_new(&rl, 2, 0), 0);
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0, NULL), 1);
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0, NULL), 1);
        assert_int_equal(ratelimit_take(rl, "192.0.2.1", T0, NULL), 0);
        /* other addresses are not affected */
        assert_true(ratelimit_test(rl, "192.0.2.2", T0, NULL));
        assert_int_equal(ratelimit_take(rl, "192.0.2.2", T0, NULL), 1);
        assert_int_equal(ratelimit_take(rl, "::1", T0, NULL), 1);
        assert_int_equal(ratelimit_n_addresses(rl), 3);
}

static void test_test_does_not_consume(void **state) {
        _cleanup_(ratelimit_freep) RateLimit *rl = NULL;

        assert_int_equal(ratelimit_new(&rl, 1, 0), 0);
        for (int i = 0; i < 100; i++)
                assert_true(ratelimit_test(rl, "198.51.100.7", T0, NULL));
        assert_int_equal(ratelimit_n_addresses(rl), 0);
        assert_int_equal(ratelimit_take(rl, "198.51.100.7", T0, NULL), 1);
        assert_false(ratelimit_test(rl, "198.51.100.7", T0, NULL));
        assert_true(ratelimit_test(rl, "198.51.100.7", T0 + 60 * SEC, NULL));
}

static void test_bounded_table(void **state) {
        _cleanup_(ratelimit_freep) RateLimit *rl = NULL;
        char addr[64];

        assert_int_equal(ratelimit_new(&rl, 1, 16), 0);
        assert_int_equal(ratelimit_take(rl, "10.0.0.0", T0, NULL), 1);
        assert_int_equal(ratelimit_take(rl, "10.0.0.0", T0, NULL), 0);
        for (int i = 1; i <= 1000; i++) {
                snprintf(addr, sizeof addr, "10.0.%d.%d", i / 256, i % 256);
                assert_int_equal(ratelimit_take(rl, addr, T0, NULL), 1);
                assert_true(ratelimit_n_addresses(rl) <= 16);
        }
        /* the oldest address was forgotten: it has its bucket back (more lenient, never stricter) */
        assert_int_equal(ratelimit_take(rl, "10.0.0.0", T0, NULL), 1);
        /* a recent one is still limited */
        assert_int_equal(ratelimit_take(rl, "10.0.3.232", T0, NULL), 0);
}

static void test_long_address(void **state) {
        _cleanup_(ratelimit_freep) RateLimit *rl = NULL;
        char addr[200];

        memset(addr, 'a', sizeof addr - 1);
        addr[sizeof addr - 1] = '\0';
        assert_int_equal(ratelimit_new(&rl, 1, 0), 0);
        assert_int_equal(ratelimit_take(rl, addr, T0, NULL), 1);
        assert_int_equal(ratelimit_take(rl, addr, T0, NULL), 0);
        assert_int_equal(ratelimit_take(rl, NULL, T0, NULL), 1);
}

static void test_high_rate(void **state) {
        _cleanup_(ratelimit_freep) RateLimit *rl = NULL;
        unsigned ok = 0;

        /* 600 a minute: 600 at once, then 10 a second */
        assert_int_equal(ratelimit_new(&rl, 600, 0), 0);
        for (int i = 0; i < 1000; i++)
                ok += ratelimit_take(rl, "203.0.113.9", T0, NULL) == 1;
        assert_int_equal(ok, 600);
        ok = 0;
        for (int i = 0; i < 1000; i++)
                ok += ratelimit_take(rl, "203.0.113.9", T0 + SEC, NULL) == 1;
        assert_int_equal(ok, 10);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_burst_then_refill),
                cmocka_unit_test(test_per_address),
                cmocka_unit_test(test_test_does_not_consume),
                cmocka_unit_test(test_bounded_table),
                cmocka_unit_test(test_long_address),
                cmocka_unit_test(test_high_rate),
        };

        if (sodium_init() < 0)
                return 1;
        return cmocka_run_group_tests(tests, NULL, NULL);
}
