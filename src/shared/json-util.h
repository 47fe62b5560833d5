/* SPDX-License-Identifier: MIT */
#pragma once

#include <json-c/json.h>

#include "macro.h"

/* JSON on json-c with limits, and field accessors that collect validation errors
 * in the shape of RFC 9457 "errors": {"field": ["message", …]}. */

typedef struct JsonLimits {
        size_t max_size;   /* bytes of the document */
        int max_depth;     /* nesting of arrays/objects */
        size_t max_string; /* bytes of any one string (keys and values) */
} JsonLimits;

#define JSON_LIMITS_DEFAULT ((JsonLimits) { .max_size = 2 * 1024 * 1024, .max_depth = 16, .max_string = 2 * 1024 * 1024 })

/* Parses exactly one JSON value (whitespace around it allowed) with strict syntax and UTF-8 checks.
 * Errors: -E2BIG document too large, -EMLINK too deep, -EMSGSIZE a string too long,
 * -EBADMSG malformed or invalid UTF-8; *ret_error (optional) then says what and where. */
int json_parse_limited(const char *buf, size_t size, const JsonLimits *limits, json_object **ret,
                       char **ret_error);

/* Adds "message" to errors[field]; creates *errors on first use. Returns -ENOMEM or 0. */
int json_errors_add(json_object **errors, const char *field, const char *format, ...) _printf_(3, 4);
/* "field: first message" of the first entry, for a problem's "detail"; caller frees. NULL if empty. */
char *json_errors_summary(json_object *errors);

/* Looks up a member case-insensitively (ASP.NET clients send "Name" or "name"); NULL if absent. */
json_object *json_object_get_ci(json_object *obj, const char *field);

/* Typed field accessors. Return 1 when present with a valid value (written to *ret),
 * 0 when absent or null (*ret untouched), -EINVAL when present but invalid (a message is
 * added to *errors under field), -ENOMEM. Strings are borrowed from obj. */
int json_field_string(json_object *obj, const char *field, size_t min_len, size_t max_len, const char **ret,
                      json_object **errors);
int json_field_int64(json_object *obj, const char *field, int64_t min, int64_t max, int64_t *ret,
                     json_object **errors);
int json_field_bool(json_object *obj, const char *field, bool *ret, json_object **errors);
/* Array of strings, each 1..max_len; *ret is a new NULL-terminated strv (free with strv_free). */
int json_field_strv(json_object *obj, const char *field, size_t max_items, size_t max_len, char ***ret,
                    json_object **errors);

char **strv_free(char **l);
DEFINE_TRIVIAL_CLEANUP_FUNC(char **, strv_free);
size_t strv_length(char *const *l);
bool strv_contains(char *const *l, const char *s);

/* Adds members; value NULL adds JSON null. Return -ENOMEM or 0. */
int json_add_string(json_object *obj, const char *field, const char *value);
int json_add_int(json_object *obj, const char *field, int64_t value);
int json_add_bool(json_object *obj, const char *field, bool value);
/* Serializes compactly; borrowed string valid while obj lives. */
const char *json_to_string(json_object *obj, size_t *ret_size);
