/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "address-list.h"

static void test_match(void **state) {
        _cleanup_(address_list_freep) AddressList *l = NULL;

        assert_int_equal(address_list_parse(&l, " 127.0.0.1, ::1;10.0.0.0/8  fd00::/8\t192.168.1.128/25", NULL), 0);
        assert_int_equal(address_list_size(l), 5);
        assert_true(address_list_contains(l, "127.0.0.1"));
        assert_false(address_list_contains(l, "127.0.0.2"));
        assert_true(address_list_contains(l, "::1"));
        assert_true(address_list_contains(l, "::ffff:127.0.0.1"));   /* IPv4 through an IPv6 socket */
        assert_true(address_list_contains(l, "10.255.1.2"));
        assert_false(address_list_contains(l, "11.0.0.1"));
        assert_true(address_list_contains(l, "fd12:3456::1"));
        assert_false(address_list_contains(l, "fe80::1"));
        assert_true(address_list_contains(l, "192.168.1.200"));
        assert_false(address_list_contains(l, "192.168.1.127"));
        assert_false(address_list_contains(l, "not an address"));
        assert_false(address_list_contains(l, NULL));
}

static void test_empty_and_bad(void **state) {
        _cleanup_(address_list_freep) AddressList *l = NULL;
        char *bad = NULL;

        assert_int_equal(address_list_parse(&l, "", NULL), 0);
        assert_int_equal(address_list_size(l), 0);
        assert_false(address_list_contains(l, "127.0.0.1"));
        l = address_list_free(l);
        assert_int_equal(address_list_parse(&l, NULL, NULL), 0);
        l = address_list_free(l);

        assert_int_equal(address_list_parse(&l, "127.0.0.1, localhost", &bad), -EINVAL);
        assert_string_equal(bad, "localhost");
        free(bad);
        assert_int_equal(address_list_parse(&l, "10.0.0.0/33", NULL), -EINVAL);
        assert_int_equal(address_list_parse(&l, "10.0.0.0/", NULL), -EINVAL);
        assert_int_equal(address_list_parse(&l, "::/129", NULL), -EINVAL);
        assert_int_equal(address_list_parse(&l, "0.0.0.0/0", NULL), 0);
        assert_true(address_list_contains(l, "203.0.113.1"));
        assert_false(address_list_contains(l, "2001:db8::1"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_match),
                cmocka_unit_test(test_empty_and_bad),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
