/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "json-util.h"

static int parse(const char *text, const JsonLimits *l, json_object **ret, char **error) {
        return json_parse_limited(text, strlen(text), l, ret, error);
}

static void expect_parse_error(const char *text, const JsonLimits *l, int r, const char *needle) {
        _cleanup_json_ json_object *o = NULL;
        _cleanup_free_ char *error = NULL;

        assert_int_equal(parse(text, l, &o, &error), r);
        assert_null(o);
        assert_non_null(error);
        if (!strstr(error, needle))
                fail_msg("error \"%s\" does not mention \"%s\"", error, needle);
}

static void test_parse_ok(void **state) {
        _cleanup_json_ json_object *o = NULL;

        assert_int_equal(parse(" {\"a\": [1, 2, {\"b\": \"c\"}]}\n", NULL, &o, NULL), 0);
        assert_true(json_object_is_type(o, json_type_object));
        assert_string_equal(json_to_string(o, NULL), "{\"a\":[1,2,{\"b\":\"c\"}]}");
}

static void test_parse_limits(void **state) {
        JsonLimits small = { .max_size = 16, .max_depth = 3, .max_string = 4 };

        expect_parse_error("{\"a\": \"0123456789abcdef\"}", &small, -E2BIG, "larger than 16 bytes");
        expect_parse_error("[[[[1]]]]", &small, -EMLINK, "deeper than 3");
        expect_parse_error("{\"a\":\"12345\"}", &small, -EMSGSIZE, "longer than 4 bytes");
        expect_parse_error("{\"abcde\":1}", &small, -EMSGSIZE, "member name");
}

static void test_parse_malformed(void **state) {
        expect_parse_error("{\"a\": 1", NULL, -EBADMSG, "unexpected end");
        expect_parse_error("{\"a\": 1} x", NULL, -EBADMSG, "malformed JSON at byte 9");
        expect_parse_error("{'a': 1}", NULL, -EBADMSG, "malformed JSON at byte");
        expect_parse_error("{\"a\": \"\xff\xfe\"}", NULL, -EBADMSG, "malformed JSON");
        expect_parse_error("[1,]", NULL, -EBADMSG, "malformed JSON");
        expect_parse_error("[\"it's\", 'x']", NULL, -EBADMSG, "at byte 9");
        expect_parse_error("", NULL, -EBADMSG, "malformed JSON");
}

static void test_fields(void **state) {
        _cleanup_json_ json_object *o = NULL, *errors = NULL;
        _cleanup_(strv_freep) char **claims = NULL;
        _cleanup_free_ char *summary = NULL;
        const char *s = NULL;
        int64_t i = 0;
        bool b = false;

        assert_int_equal(parse("{\"Name\": \"héllo\", \"count\": 5, \"flag\": true, \"claims\": [\"a\", \"b\"],"
                               " \"nul\": \"a\\u0000b\", \"n\": null, \"big\": 99999999999999999999999}",
                               NULL, &o, NULL),
                         0);

        /* case-insensitive member names (ASP.NET compat), length in characters */
        assert_int_equal(json_field_string(o, "name", 1, 5, &s, &errors), 1);
        assert_string_equal(s, "héllo");
        assert_int_equal(json_field_string(o, "name", 1, 4, &s, &errors), -EINVAL);
        assert_int_equal(json_field_string(o, "absent", 1, 4, &s, &errors), 0);
        assert_int_equal(json_field_string(o, "n", 1, 4, &s, &errors), 0); /* null = absent */
        assert_int_equal(json_field_string(o, "nul", 1, 10, &s, &errors), -EINVAL);
        assert_int_equal(json_field_string(o, "count", 1, 10, &s, &errors), -EINVAL);

        assert_int_equal(json_field_int64(o, "count", 1, 10, &i, &errors), 1);
        assert_int_equal(i, 5);
        assert_int_equal(json_field_int64(o, "count", 6, 10, &i, &errors), -EINVAL);
        assert_int_equal(json_field_int64(o, "big", 0, INT64_MAX, &i, &errors), -EINVAL);
        assert_int_equal(json_field_int64(o, "flag", 0, 1, &i, &errors), -EINVAL);

        assert_int_equal(json_field_bool(o, "flag", &b, &errors), 1);
        assert_true(b);
        assert_int_equal(json_field_bool(o, "count", &b, &errors), -EINVAL);

        assert_int_equal(json_field_strv(o, "claims", 10, 10, &claims, &errors), 1);
        assert_int_equal(strv_length(claims), 2);
        assert_true(strv_contains(claims, "b"));
        assert_int_equal(json_field_strv(o, "claims", 1, 10, &claims, &errors), -EINVAL);

        /* the errors object has the RFC 9457 shape: field → [messages] */
        assert_string_equal(
                json_to_string(errors, NULL),
                "{\"name\":[\"must be at most 4 characters long\"],"
                "\"nul\":[\"must not contain NUL characters\"],\"count\":[\"must be a string\",\"must be between 6 and 10\",\"must be true or false\"],"
                "\"big\":[\"must be between 0 and 9223372036854775807\"],\"flag\":[\"must be an integer\"],"
                "\"claims\":[\"must have at most 1 entries\"]}");
        summary = json_errors_summary(errors);
        assert_string_equal(summary, "name: must be at most 4 characters long");
}

static void test_build(void **state) {
        _cleanup_json_ json_object *o = json_object_new_object();

        assert_int_equal(json_add_string(o, "a", "x/y"), 0);
        assert_int_equal(json_add_string(o, "b", NULL), 0);
        assert_int_equal(json_add_int(o, "c", -3), 0);
        assert_int_equal(json_add_bool(o, "d", false), 0);
        assert_string_equal(json_to_string(o, NULL), "{\"a\":\"x/y\",\"b\":null,\"c\":-3,\"d\":false}");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_ok),     cmocka_unit_test(test_parse_limits),
                cmocka_unit_test(test_parse_malformed), cmocka_unit_test(test_fields),
                cmocka_unit_test(test_build),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
