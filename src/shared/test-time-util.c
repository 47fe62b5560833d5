/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "time-util.h"

#define SEC USEC_PER_SEC
#define DAY (24 * 3600 * SEC)

static void check_roundtrip(const char *text, usec_t expected) {
        char buf[TIMESPAN_STRING_MAX];
        usec_t t = 0;

        assert_int_equal(timespan_parse(text, &t), 0);
        assert_int_equal(t, expected);
        assert_string_equal(timespan_format(t, buf), text);
}

static void test_timespan_roundtrip(void **state) {
        check_roundtrip("00:00:00", 0);
        check_roundtrip("00:30:00", 1800 * SEC);
        check_roundtrip("00:00:01", SEC);
        check_roundtrip("23:59:59", DAY - SEC);
        check_roundtrip("1.00:00:00", DAY);
        check_roundtrip("7.00:00:00", 7 * DAY);
        check_roundtrip("30.00:00:00", 30 * DAY);
        check_roundtrip("1.02:03:04", DAY + 2 * 3600 * SEC + 3 * 60 * SEC + 4 * SEC);
        check_roundtrip("00:00:01.5000000", SEC + SEC / 2);
        check_roundtrip("00:00:00.0000010", 1);
        check_roundtrip("10675199.02:48:05.4775800", 10675199 * DAY + (2 * 3600 + 48 * 60 + 5) * SEC + 477580);
}

static void test_timespan_parse_forms(void **state) {
        usec_t t;

        /* hh:mm short form, fraction digits of any count up to 7 */
        assert_int_equal(timespan_parse("01:30", &t), 0);
        assert_int_equal(t, 90 * 60 * SEC);
        assert_int_equal(timespan_parse("00:00:00.5", &t), 0);
        assert_int_equal(t, SEC / 2);
        assert_int_equal(timespan_parse("00:00:00.1234567", &t), 0);
        assert_int_equal(t, 123457); /* 7th digit rounds */
        assert_int_equal(timespan_parse("0.00:00:02", &t), 0);
        assert_int_equal(t, 2 * SEC);
        assert_int_equal(timespan_parse("1:2:3", &t), -EINVAL); /* minutes need two digits */
        assert_int_equal(timespan_parse("1:02:03", &t), 0);
        assert_int_equal(t, 3723 * SEC);
}

static void test_timespan_bad(void **state) {
        static const char *const bad[] = {
                "", "abc", "1800", "00:60:00", "24:00:00", "00:00:60", "00:00", /* ok form but below */
                "00:00:00.", "00:00:00.12345678", "1.", ".00:00:00", "00:00:00 ", " 00:00:00", "00-00-00",
                "1.24:00:00", "00:00:0a", "1..00:00:00", "00:00:00:00",
        };
        usec_t t;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (streq(bad[i], "00:00"))
                        continue; /* valid short form, listed for completeness */
                assert_int_equal(timespan_parse(bad[i], &t), -EINVAL);
        }
        assert_int_equal(timespan_parse("-00:00:01", &t), -ERANGE);
        assert_int_equal(timespan_parse("99999999.00:00:00", &t), -ERANGE);
        assert_int_equal(timespan_parse(NULL, &t), -EINVAL);
}

static void test_duration(void **state) {
        usec_t t;

        assert_int_equal(duration_parse("30", &t), 0);
        assert_int_equal(t, 30 * SEC);
        assert_int_equal(duration_parse("500ms", &t), 0);
        assert_int_equal(t, 500 * USEC_PER_MSEC);
        assert_int_equal(duration_parse("5min", &t), 0);
        assert_int_equal(t, 300 * SEC);
        assert_int_equal(duration_parse("24h", &t), 0);
        assert_int_equal(t, DAY);
        assert_int_equal(duration_parse("1.00:00:00", &t), 0);
        assert_int_equal(t, DAY);
        assert_int_equal(duration_parse("5 min", &t), -EINVAL);
        assert_int_equal(duration_parse("5x", &t), -EINVAL);
        assert_int_equal(duration_parse("-5", &t), -ERANGE);
        assert_int_equal(duration_parse("", &t), -EINVAL);
}

static void test_iso8601(void **state) {
        char buf[ISO8601_STRING_MAX];
        usec_t t;

        assert_string_equal(iso8601_format(0, buf), "1970-01-01T00:00:00.000000Z");
        assert_int_equal(iso8601_parse("2026-11-28T18:06:45.123456Z", &t), 0);
        assert_string_equal(iso8601_format(t, buf), "2026-11-28T18:06:45.123456Z");
        assert_int_equal(t, 1795889205123456ULL);

        /* offsets, no fraction, 7 digits (.NET), space separator, no zone = UTC */
        assert_int_equal(iso8601_parse("2026-11-28T19:06:45+01:00", &t), 0);
        assert_string_equal(iso8601_format(t, buf), "2026-11-28T18:06:45.000000Z");
        assert_int_equal(iso8601_parse("2026-11-28T17:06:45.1234567-0100", &t), 0);
        assert_string_equal(iso8601_format(t, buf), "2026-11-28T18:06:45.123456Z");
        assert_int_equal(iso8601_parse("2026-11-28 18:06:45", &t), 0);
        assert_string_equal(iso8601_format(t, buf), "2026-11-28T18:06:45.000000Z");

        assert_int_equal(iso8601_parse("2026-02-30T00:00:00Z", &t), -EINVAL);
        assert_int_equal(iso8601_parse("2026-13-01T00:00:00Z", &t), -EINVAL);
        assert_int_equal(iso8601_parse("2026-11-28", &t), -EINVAL);
        assert_int_equal(iso8601_parse("2026-11-28T18:06:45Zjunk", &t), -EINVAL);
        assert_int_equal(iso8601_parse("tomorrow", &t), -EINVAL);
        assert_int_equal(iso8601_parse("", &t), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_timespan_roundtrip),
                cmocka_unit_test(test_timespan_parse_forms),
                cmocka_unit_test(test_timespan_bad),
                cmocka_unit_test(test_duration),
                cmocka_unit_test(test_iso8601),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
