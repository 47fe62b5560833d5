/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>

#include "json-util.h"

static int errorf(char **ret_error, const char *format, ...) _printf_(2, 3);
static int errorf(char **ret_error, const char *format, ...) {
        va_list ap;

        if (!ret_error)
                return 0;
        va_start(ap, format);
        if (vasprintf(ret_error, format, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return 0;
}

/* json-c limits the depth itself; string lengths are checked after parsing. */
static int check_strings(json_object *o, size_t max, char **ret_error) {
        switch (json_object_get_type(o)) {
        case json_type_string:
                if ((size_t) json_object_get_string_len(o) > max)
                        return errorf(ret_error, "a string is longer than %zu bytes", max), -EMSGSIZE;
                return 0;

        case json_type_array:
                for (size_t i = 0, n = json_object_array_length(o); i < n; i++) {
                        int r = check_strings(json_object_array_get_idx(o, i), max, ret_error);
                        if (r < 0)
                                return r;
                }
                return 0;

        case json_type_object: {
                json_object_object_foreach(o, key, value) {
                        int r;

                        if (strlen(key) > max)
                                return errorf(ret_error, "a member name is longer than %zu bytes", max), -EMSGSIZE;
                        r = check_strings(value, max, ret_error);
                        if (r < 0)
                                return r;
                }
                return 0;
        }

        default:
                return 0;
        }
}

/* json-c accepts single-quoted strings even in strict mode; JSON does not. Returns the
 * offset of the first quote outside a double-quoted string, or size. */
static size_t find_single_quote(const char *buf, size_t size) {
        bool in_string = false;

        for (size_t i = 0; i < size; i++) {
                if (in_string) {
                        if (buf[i] == '\\')
                                i++;
                        else if (buf[i] == '"')
                                in_string = false;
                } else if (buf[i] == '"')
                        in_string = true;
                else if (buf[i] == '\'')
                        return i;
        }
        return size;
}

int json_parse_limited(const char *buf, size_t size, const JsonLimits *limits, json_object **ret,
                       char **ret_error) {
        _cleanup_json_ json_object *o = NULL;
        struct json_tokener *tok;
        enum json_tokener_error jerr;
        size_t offset, rest;
        JsonLimits l = limits ? *limits : JSON_LIMITS_DEFAULT;
        int r;

        if (size > l.max_size)
                return errorf(ret_error, "body is larger than %zu bytes", l.max_size), -E2BIG;
        if (size > INT32_MAX)
                return -E2BIG;
        offset = find_single_quote(buf, size);
        if (offset < size)
                return errorf(ret_error, "malformed JSON at byte %zu: unexpected character", offset), -EBADMSG;

        tok = json_tokener_new_ex(l.max_depth);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

        o = json_tokener_parse_ex(tok, buf, (int) size);
        jerr = json_tokener_get_error(tok);
        offset = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);

        if (jerr == json_tokener_continue)
                return errorf(ret_error, "malformed JSON: unexpected end of input"), -EBADMSG;
        if (jerr == json_tokener_error_depth)
                return errorf(ret_error, "JSON nested deeper than %d levels", l.max_depth), -EMLINK;
        if (jerr != json_tokener_success)
                return errorf(ret_error, "malformed JSON at byte %zu: %s", offset, json_tokener_error_desc(jerr)),
                       -EBADMSG;

        /* Only whitespace may follow the value. */
        for (rest = offset; rest < size; rest++)
                if (!strchr(" \t\r\n", buf[rest]))
                        return errorf(ret_error, "malformed JSON at byte %zu: data after the value", rest),
                               -EBADMSG;

        r = check_strings(o, l.max_string, ret_error);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(o); /* may be NULL for the document "null" */
        return 0;
}

int json_errors_add(json_object **errors, const char *field, const char *format, ...) {
        _cleanup_free_ char *m = NULL;
        json_object *list;
        va_list ap;
        int k;

        va_start(ap, format);
        k = vasprintf(&m, format, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;

        if (!*errors) {
                *errors = json_object_new_object();
                if (!*errors)
                        return -ENOMEM;
        }
        if (!json_object_object_get_ex(*errors, field, &list)) {
                list = json_object_new_array();
                if (!list || json_object_object_add(*errors, field, list) < 0)
                        return -ENOMEM;
        }
        return json_object_array_add(list, json_object_new_string(m)) < 0 ? -ENOMEM : 0;
}

char *json_errors_summary(json_object *errors) {
        char *s;

        if (!errors)
                return NULL;
        json_object_object_foreach(errors, field, list) {
                json_object *first = json_object_array_get_idx(list, 0);

                if (asprintf(&s, "%s: %s", field, first ? json_object_get_string(first) : "invalid") < 0)
                        return NULL;
                return s;
        }
        return NULL;
}

json_object *json_object_get_ci(json_object *obj, const char *field) {
        json_object *v;

        if (!json_object_is_type(obj, json_type_object))
                return NULL;
        if (json_object_object_get_ex(obj, field, &v))
                return v;
        json_object_object_foreach(obj, key, value)
                if (strcaseeq(key, field))
                        return value;
        return NULL;
}

static size_t utf8_chars(const char *s, size_t len) {
        size_t n = 0;

        for (size_t i = 0; i < len; i++)
                if (((unsigned char) s[i] & 0xc0) != 0x80)
                        n++;
        return n;
}

int json_field_string(json_object *obj, const char *field, size_t min_len, size_t max_len, const char **ret,
                      json_object **errors) {
        json_object *v = json_object_get_ci(obj, field);
        const char *s;
        size_t len, chars;

        if (!v)
                return 0;
        if (!json_object_is_type(v, json_type_string))
                return json_errors_add(errors, field, "must be a string") ?: -EINVAL;

        s = json_object_get_string(v);
        len = (size_t) json_object_get_string_len(v);
        if (strlen(s) != len)
                return json_errors_add(errors, field, "must not contain NUL characters") ?: -EINVAL;

        /* Lengths are counted in characters, like the older system did. */
        chars = utf8_chars(s, len);
        if (chars < min_len)
                return (min_len == 1 ? json_errors_add(errors, field, "must not be empty")
                                     : json_errors_add(errors, field, "must be at least %zu characters long", min_len))
                               ?: -EINVAL;
        if (max_len > 0 && chars > max_len)
                return json_errors_add(errors, field, "must be at most %zu characters long", max_len) ?: -EINVAL;

        *ret = s;
        return 1;
}

int json_field_int64(json_object *obj, const char *field, int64_t min, int64_t max, int64_t *ret,
                     json_object **errors) {
        json_object *v = json_object_get_ci(obj, field);
        int64_t i;

        if (!v)
                return 0;
        if (!json_object_is_type(v, json_type_int))
                return json_errors_add(errors, field, "must be an integer") ?: -EINVAL;

        i = json_object_get_int64(v);
        /* json-c clamps numbers beyond int64 to INT64_MIN/MAX: treat those as out of range. */
        if (i == INT64_MIN || i == INT64_MAX || i < min || i > max)
                return json_errors_add(errors, field, "must be between %" PRIi64 " and %" PRIi64, min, max) ?: -EINVAL;

        *ret = i;
        return 1;
}

int json_field_bool(json_object *obj, const char *field, bool *ret, json_object **errors) {
        json_object *v = json_object_get_ci(obj, field);

        if (!v)
                return 0;
        if (!json_object_is_type(v, json_type_boolean))
                return json_errors_add(errors, field, "must be true or false") ?: -EINVAL;
        *ret = json_object_get_boolean(v);
        return 1;
}

int json_field_strv(json_object *obj, const char *field, size_t max_items, size_t max_len, char ***ret,
                    json_object **errors) {
        json_object *v = json_object_get_ci(obj, field);
        _cleanup_(strv_freep) char **l = NULL;
        size_t n;

        if (!v)
                return 0;
        if (!json_object_is_type(v, json_type_array))
                return json_errors_add(errors, field, "must be an array of strings") ?: -EINVAL;
        n = json_object_array_length(v);
        if (n > max_items)
                return json_errors_add(errors, field, "must have at most %zu entries", max_items) ?: -EINVAL;

        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *e = json_object_array_get_idx(v, i);
                const char *s;
                size_t len;

                if (!json_object_is_type(e, json_type_string))
                        return json_errors_add(errors, field, "must be an array of strings") ?: -EINVAL;
                s = json_object_get_string(e);
                len = (size_t) json_object_get_string_len(e);
                if (len == 0 || strlen(s) != len || utf8_chars(s, len) > max_len)
                        return json_errors_add(errors, field,
                                               "entries must be non-empty strings of at most %zu characters",
                                               max_len)
                                       ?: -EINVAL;
                l[i] = strdup(s);
                if (!l[i])
                        return -ENOMEM;
        }

        *ret = TAKE_PTR(l);
        return 1;
}

char **strv_free(char **l) {
        for (char **i = l; i && *i; i++)
                free(*i);
        return mfree(l);
}

size_t strv_length(char *const *l) {
        size_t n = 0;

        while (l && l[n])
                n++;
        return n;
}

bool strv_contains(char *const *l, const char *s) {
        for (char *const *i = l; i && *i; i++)
                if (streq(*i, s))
                        return true;
        return false;
}

int json_add_string(json_object *obj, const char *field, const char *value) {
        json_object *v = NULL;

        if (value) {
                v = json_object_new_string(value);
                if (!v)
                        return -ENOMEM;
        }
        if (json_object_object_add(obj, field, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

int json_add_int(json_object *obj, const char *field, int64_t value) {
        json_object *v = json_object_new_int64(value);

        if (!v || json_object_object_add(obj, field, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

int json_add_bool(json_object *obj, const char *field, bool value) {
        json_object *v = json_object_new_boolean(value);

        if (!v || json_object_object_add(obj, field, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

const char *json_to_string(json_object *obj, size_t *ret_size) {
        const char *s;
        size_t n;

        s = json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
        if (ret_size)
                *ret_size = n;
        return s;
}
