/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "uuid-util.h"

static void test_generate(void **state) {
        char a[UUID_STRING_MAX], b[UUID_STRING_MAX], n[UUID_STRING_MAX];

        uuid_generate_v4(a);
        uuid_generate_v4(b);
        assert_int_equal(strlen(a), 36);
        assert_string_not_equal(a, b);
        assert_int_equal(a[14], '4');                 /* version */
        assert_non_null(strchr("89ab", a[19]));       /* variant */
        assert_int_equal(uuid_normalize(a, n), 0);
        assert_string_equal(a, n);
}

static void test_normalize(void **state) {
        char n[UUID_STRING_MAX];

        assert_int_equal(uuid_normalize("0B7F3C9E-5D1A-4C8E-9F2A-6E4D2C1B0A99", n), 0);
        assert_string_equal(n, "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99");
        assert_true(uuid_is_valid("00000000-0000-0000-0000-000000000000"));
        assert_false(uuid_is_valid("0b7f3c9e5d1a4c8e9f2a6e4d2c1b0a99"));
        assert_false(uuid_is_valid("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a9"));
        assert_false(uuid_is_valid("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99x"));
        assert_false(uuid_is_valid("0b7f3c9g-5d1a-4c8e-9f2a-6e4d2c1b0a99"));
        assert_false(uuid_is_valid("0b7f3c9e_5d1a-4c8e-9f2a-6e4d2c1b0a99"));
        assert_false(uuid_is_valid("not-a-uuid"));
        assert_false(uuid_is_valid(""));
        assert_false(uuid_is_valid(NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_generate),
                cmocka_unit_test(test_normalize),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
