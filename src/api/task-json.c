/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdio.h>
#include <strings.h>

#include "json-util.h"
#include "task-json.h"

static const char *const status_names[_TASK_STATUS_MAX] = {
        [TASK_PENDING] = "Pending",     [TASK_IN_PROGRESS] = "InProgress", [TASK_COMPLETED] = "Completed",
        [TASK_FAILED] = "Failed",       [TASK_EXPIRED] = "Expired",        [TASK_CANCELLED] = "Cancelled",
};

const char *task_status_to_string(TaskStatus s) {
        if (s < 0 || s >= _TASK_STATUS_MAX)
                return NULL;
        return status_names[s];
}

TaskStatus task_status_from_string(const char *s) {
        if (isempty(s))
                return _TASK_STATUS_INVALID;
        if (s[0] >= '0' && s[0] <= '5' && s[1] == '\0')
                return (TaskStatus) (s[0] - '0');
        for (TaskStatus i = 0; i < _TASK_STATUS_MAX; i++)
                if (strcaseeq(s, status_names[i]))
                        return i;
        if (strcaseeq(s, "in_progress") || strcaseeq(s, "in-progress"))
                return TASK_IN_PROGRESS;
        if (strcaseeq(s, "canceled"))
                return TASK_CANCELLED;
        return _TASK_STATUS_INVALID;
}

static const char *const language_names[_TASK_LANGUAGE_MAX] = {
        [TASK_LANGUAGE_CSHARP] = "CSharp",
        [TASK_LANGUAGE_PYTHON] = "Python",
};

const char *task_language_to_string(TaskLanguage l) {
        if (l < 0 || l >= _TASK_LANGUAGE_MAX)
                return NULL;
        return language_names[l];
}

TaskLanguage task_language_from_string(const char *s) {
        if (isempty(s))
                return _TASK_LANGUAGE_INVALID;
        if (streq(s, "0"))
                return TASK_LANGUAGE_CSHARP;
        if (streq(s, "1"))
                return TASK_LANGUAGE_PYTHON;
        for (TaskLanguage i = 0; i < _TASK_LANGUAGE_MAX; i++)
                if (strcaseeq(s, language_names[i]))
                        return i;
        return _TASK_LANGUAGE_INVALID;
}

bool task_verdict_is_valid(const char *v) {
        static const char *const verdicts[] = {
                "ok",           "runtime_error", "compile_error", "timeout",     "memory_limit",
                "pids_limit",   "output_limit",  "cancelled",     "worker_lost", "internal_error",
        };

        if (!v)
                return false;
        for (size_t i = 0; i < ELEMENTSOF(verdicts); i++)
                if (streq(v, verdicts[i]))
                        return true;
        return false;
}

bool utf8_is_valid(const char *s, size_t len, size_t *ret_offset) {
        const unsigned char *p = (const unsigned char *) s;
        size_t i = 0;

        while (i < len) {
                unsigned char c = p[i];
                uint32_t cp;
                size_t n;

                if (c < 0x80) {
                        i++;
                        continue;
                }
                if (c >= 0xc2 && c <= 0xdf) {
                        n = 1;
                        cp = c & 0x1f;
                } else if (c >= 0xe0 && c <= 0xef) {
                        n = 2;
                        cp = c & 0x0f;
                } else if (c >= 0xf0 && c <= 0xf4) {
                        n = 3;
                        cp = c & 0x07;
                } else
                        goto bad;

                if (len - i <= n)
                        goto bad;
                for (size_t k = 1; k <= n; k++) {
                        if ((p[i + k] & 0xc0) != 0x80)
                                goto bad;
                        cp = (cp << 6) | (p[i + k] & 0x3f);
                }
                if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
                    (cp >= 0xd800 && cp <= 0xdfff))
                        goto bad;
                i += n + 1;
        }
        return true;

bad:
        if (ret_offset)
                *ret_offset = i;
        return false;
}

Task *task_free(Task *t) {
        if (!t)
                return NULL;
        free(t->name);
        free(t->code);
        free(t->input_data);
        free(t->result);
        free(t->error_message);
        free(t->verdict);
        free(t->worker);
        return mfree(t);
}

static int add_time(json_object *o, const char *field, usec_t t) {
        char buf[ISO8601_STRING_MAX];

        return json_add_string(o, field, t > 0 ? iso8601_format(t, buf) : NULL);
}

int task_to_json(const Task *t, json_object **ret) {
        _cleanup_json_ json_object *o = NULL;
        char ttl[TIMESPAN_STRING_MAX];
        int r;

        o = json_object_new_object();
        if (!o)
                return -ENOMEM;

        if ((r = json_add_string(o, "id", t->id)) < 0 || (r = json_add_string(o, "name", t->name)) < 0 ||
            (r = json_add_string(o, "code", t->code)) < 0 ||
            (r = json_add_string(o, "language", task_language_to_string(t->language))) < 0 ||
            (r = json_add_string(o, "inputData", t->input_data)) < 0 ||
            (r = json_add_string(o, "userId", t->owner_id)) < 0 || (r = json_add_string(o, "result", t->result)) < 0 ||
            (r = json_add_int(o, "status", t->status)) < 0 ||
            (r = json_add_string(o, "statusName", task_status_to_string(t->status))) < 0 ||
            (r = add_time(o, "createdAt", t->created_at)) < 0 || (r = add_time(o, "startedAt", t->started_at)) < 0 ||
            (r = add_time(o, "completedAt", t->completed_at)) < 0 ||
            (r = add_time(o, "expiresAt", t->expires_at)) < 0 ||
            (r = json_add_string(o, "ttl", timespan_format(t->ttl, ttl))) < 0 ||
            (r = json_add_string(o, "errorMessage", t->error_message)) < 0)
                return r;

        if (t->has_exit_code)
                r = json_add_int(o, "exitCode", t->exit_code);
        else
                r = json_object_object_add(o, "exitCode", NULL) < 0 ? -ENOMEM : 0;
        if (r < 0)
                return r;

        if ((r = json_add_string(o, "verdict", t->verdict)) < 0 ||
            (r = json_add_bool(o, "outputTruncated", t->output_truncated)) < 0 ||
            (r = json_add_int(o, "retryCount", t->retry_count)) < 0 || (r = json_add_int(o, "attempt", t->attempt)) < 0)
                return r;

        *ret = TAKE_PTR(o);
        return 0;
}

uint64_t task_create_body_limit(const TaskLimits *l) {
        return 6 * (l->max_code_size + l->max_input_size) + 64 * 1024;
}

uint64_t task_complete_body_limit(const TaskLimits *l) {
        return 6 * 2 * l->max_output_size + 64 * 1024;
}

/* The canonical spelling of the members we know, for error messages. */
static const char *const known_members[] = {
        "name",   "code",         "language",  "inputData",   "ttl",      "status",          "result",
        "errorMessage", "startedAt", "completedAt", "userId", "attempt", "exitCode", "verdict",
        "outputTruncated", "worker", "id", "createdAt", "expiresAt", "retryCount",
};

/* Finds the top-level member whose name or value contains byte offset of a JSON object
 * text (which is valid UTF-8 before offset). Writes its name to buf; "body" when none. */
static const char *member_at(const char *buf, size_t offset, char *name, size_t name_size) {
        size_t depth = 0, start = 0;
        bool in_string = false, is_key = false, expect_key = false, have_key = false;

        for (size_t i = 0; i < offset; i++) {
                char c = buf[i];

                if (in_string) {
                        if (c == '\\')
                                i++;
                        else if (c == '"') {
                                in_string = false;
                                if (is_key) {
                                        size_t n = MIN(i - start, name_size - 1);

                                        memcpy(name, buf + start, n);
                                        name[n] = '\0';
                                        have_key = true;
                                }
                        }
                        continue;
                }
                switch (c) {
                case '"':
                        in_string = true;
                        start = i + 1;
                        is_key = depth == 1 && expect_key;
                        break;
                case '{':
                case '[':
                        depth++;
                        if (depth == 1)
                                expect_key = c == '{';
                        break;
                case '}':
                case ']':
                        if (depth > 0)
                                depth--;
                        break;
                case ',':
                        if (depth == 1)
                                expect_key = true;
                        break;
                case ':':
                        if (depth == 1)
                                expect_key = false;
                        break;
                default:
                        break;
                }
        }

        /* Inside a member name, or before any member: blame the body. */
        if (!have_key || (in_string && is_key))
                return "body";
        for (size_t i = 0; i < ELEMENTSOF(known_members); i++)
                if (strcaseeq(name, known_members[i]))
                        return known_members[i];
        return name;
}

int task_json_parse_body(const void *body, size_t size, uint64_t max_size, bool allow_empty, json_object **ret,
                         json_object **errors) {
        _cleanup_json_ json_object *o = NULL;
        _cleanup_free_ char *msg = NULL;
        JsonLimits limits = {
                .max_size = max_size,
                .max_depth = 16,
                .max_string = max_size,
        };
        size_t offset, first = 0;
        int r;

        if (size > max_size)
                return -E2BIG;

        while (first < size && strchr(" \t\r\n", ((const char *) body)[first]))
                first++;
        if (first >= size) {
                if (!allow_empty)
                        return json_errors_add(errors, "body", "a JSON object is required") ?: -EBADMSG;
                o = json_object_new_object();
                if (!o)
                        return -ENOMEM;
                *ret = TAKE_PTR(o);
                return 0;
        }

        if (!utf8_is_valid(body, size, &offset)) {
                char name[64];

                return json_errors_add(errors, member_at(body, offset, name, sizeof(name)),
                                       "must be valid UTF-8 (invalid byte at offset %zu)", offset)
                               ?: -EBADMSG;
        }

        /* Only objects are request bodies (json-c also cannot tell a lone literal from a truncated one). */
        if (((const char *) body)[first] != '{')
                return json_errors_add(errors, "body", "must be a JSON object") ?: -EBADMSG;

        r = json_parse_limited(body, size, &limits, &o, &msg);
        if (r == -ENOMEM || r == -E2BIG)
                return r;
        if (r < 0)
                return json_errors_add(errors, "body", "%s", msg ?: "malformed JSON") ?: (r == -EMLINK ? r : -EBADMSG);
        if (!json_object_is_type(o, json_type_object))
                return json_errors_add(errors, "body", "must be a JSON object") ?: -EBADMSG;

        *ret = TAKE_PTR(o);
        return 0;
}

/* A member that is present and not null. */
static json_object *member(json_object *body, const char *field) {
        json_object *v = json_object_get_ci(body, field);

        return v && !json_object_is_type(v, json_type_null) ? v : NULL;
}

/* A string member: 1 with *ret set, 0 absent/null, -EINVAL (error added), -ENOMEM.
 * min_chars/max_chars count characters (0: no maximum), max_bytes bytes (0: none). */
static int string_member(json_object *body, const char *field, size_t min_chars, size_t max_chars,
                         uint64_t max_bytes, const char **ret, json_object **errors) {
        const char *s = NULL;
        int r;

        r = json_field_string(body, field, min_chars, max_chars, &s, errors);
        if (r <= 0)
                return r;
        if (!utf8_is_valid(s, strlen(s), NULL))
                return json_errors_add(errors, field, "must be valid UTF-8") ?: -EINVAL;
        if (max_bytes > 0 && strlen(s) > max_bytes)
                return json_errors_add(errors, field, "must be at most %" PRIu64 " bytes long", max_bytes) ?: -EINVAL;
        *ret = s;
        return 1;
}

static bool is_blank(const char *s) {
        for (; *s; s++)
                if (!isspace((unsigned char) *s))
                        return false;
        return true;
}

static int name_member(json_object *body, const char **ret, json_object **errors) {
        const char *s = NULL;
        int r;

        r = string_member(body, "name", 1, TASK_NAME_MAX, 0, &s, errors);
        if (r <= 0)
                return r;
        if (is_blank(s))
                return json_errors_add(errors, "name", "must not be blank") ?: -EINVAL;
        *ret = s;
        return 1;
}

static int language_member(json_object *body, TaskLanguage *ret, json_object **errors) {
        json_object *v = member(body, "language");
        TaskLanguage l = _TASK_LANGUAGE_INVALID;

        if (!v)
                return 0;
        if (json_object_is_type(v, json_type_int)) {
                int64_t i = json_object_get_int64(v);

                if (i >= 0 && i < _TASK_LANGUAGE_MAX)
                        l = (TaskLanguage) i;
        } else if (json_object_is_type(v, json_type_string))
                l = task_language_from_string(json_object_get_string(v));

        if (l < 0)
                return json_errors_add(errors, "language", "must be \"Python\" or \"CSharp\" (or 1, 0)") ?: -EINVAL;
        *ret = l;
        return 1;
}

static int status_member(json_object *body, const char *field, unsigned allowed_mask, TaskStatus *ret,
                         json_object **errors) {
        json_object *v = member(body, field);
        TaskStatus s = _TASK_STATUS_INVALID;

        if (!v)
                return 0;
        if (json_object_is_type(v, json_type_int)) {
                int64_t i = json_object_get_int64(v);

                if (i >= 0 && i < _TASK_STATUS_MAX)
                        s = (TaskStatus) i;
        } else if (json_object_is_type(v, json_type_string))
                s = task_status_from_string(json_object_get_string(v));

        if (s < 0 || !(allowed_mask & (1u << s))) {
                _cleanup_free_ char *list = NULL;
                size_t n = 0;

                for (TaskStatus i = 0; i < _TASK_STATUS_MAX; i++)
                        if (allowed_mask & (1u << i)) {
                                char *p;

                                if (asprintf(&p, "%s%s%d (%s)", strempty(list), n++ > 0 ? ", " : "", i,
                                             task_status_to_string(i)) < 0)
                                        return -ENOMEM;
                                free_and_replace(list, p);
                        }
                return json_errors_add(errors, field, "must be one of %s", list) ?: -EINVAL;
        }
        *ret = s;
        return 1;
}

int task_ttl_from_json(json_object *v, usec_t max_ttl, usec_t *ret, json_object **errors) {
        char max[TIMESPAN_STRING_MAX];
        usec_t t = 0;
        bool range = false;

        if (json_object_is_type(v, json_type_int)) {
                int64_t i = json_object_get_int64(v);

                if (i <= 0 || i == INT64_MAX || (uint64_t) i > max_ttl / USEC_PER_SEC)
                        range = true;
                else
                        t = (usec_t) i * USEC_PER_SEC;
        } else if (json_object_is_type(v, json_type_string)) {
                const char *s = json_object_get_string(v);
                size_t n = strspn(s, "0123456789");
                int r;

                if (n > 0 && s[n] == '\0') {
                        /* a string of digits: seconds, like the integer form */
                        if (n > 12 || strtoull(s, NULL, 10) > max_ttl / USEC_PER_SEC)
                                range = true;
                        else
                                t = strtoull(s, NULL, 10) * USEC_PER_SEC;
                } else {
                        r = timespan_parse(s, &t);
                        if (r == -ERANGE)
                                range = true;
                        else if (r < 0)
                                return json_errors_add(errors, "ttl",
                                                       "must be a TimeSpan \"[d.]hh:mm:ss\" or an integer number of seconds")
                                               ?: -EINVAL;
                }
        } else
                return json_errors_add(errors, "ttl",
                                       "must be a TimeSpan \"[d.]hh:mm:ss\" or an integer number of seconds")
                               ?: -EINVAL;

        if (range || t == 0 || t > max_ttl)
                return json_errors_add(errors, "ttl", "must be greater than 00:00:00 and at most %s",
                                       timespan_format(max_ttl, max))
                               ?: -EINVAL;
        *ret = t;
        return 0;
}

static int required(json_object **errors, const char *field) {
        return json_errors_add(errors, field, "is required") ?: -EINVAL;
}

/* Keeps the first error: every member is checked, the result says whether any failed. */
static void merge(int *r, int k) {
        if (k < 0 && (*r >= 0 || k == -ENOMEM))
                *r = k;
}

int task_create_from_json(json_object *body, const TaskLimits *l, TaskCreate *ret, json_object **errors) {
        TaskCreate c = {
                .language = _TASK_LANGUAGE_INVALID,
        };
        json_object *v;
        int r = 0, k;

        k = name_member(body, &c.name, errors);
        merge(&r, k == 0 ? required(errors, "name") : k);

        k = string_member(body, "code", 1, 0, l->max_code_size, &c.code, errors);
        merge(&r, k == 0 ? required(errors, "code") : k);

        k = language_member(body, &c.language, errors);
        merge(&r, k == 0 ? required(errors, "language") : k);

        k = string_member(body, "inputData", 0, 0, l->max_input_size, &c.input_data, errors);
        merge(&r, k);

        v = member(body, "ttl");
        merge(&r, v ? task_ttl_from_json(v, l->max_ttl, &c.ttl, errors) : required(errors, "ttl"));

        if (r < 0)
                return r;
        *ret = c;
        return 0;
}

static void hash_string(crypto_hash_sha256_state *st, const char *s) {
        uint64_t n = s ? strlen(s) : UINT64_MAX;

        crypto_hash_sha256_update(st, (const uint8_t *) &n, sizeof(n));
        if (s)
                crypto_hash_sha256_update(st, (const uint8_t *) s, strlen(s));
}

void task_create_hash(const TaskCreate *c, uint8_t ret[static 32]) {
        crypto_hash_sha256_state st;
        uint64_t language = (uint64_t) c->language, ttl = c->ttl;

        crypto_hash_sha256_init(&st);
        hash_string(&st, "dtask-create-v1");
        hash_string(&st, c->name);
        hash_string(&st, c->code);
        crypto_hash_sha256_update(&st, (const uint8_t *) &language, sizeof(language));
        hash_string(&st, c->input_data);
        crypto_hash_sha256_update(&st, (const uint8_t *) &ttl, sizeof(ttl));
        crypto_hash_sha256_final(&st, ret);
}

static const struct {
        TaskPatchField field;
        const char *name;
} patch_fields[] = {
        { TASK_PATCH_NAME, "name" },
        { TASK_PATCH_CODE, "code" },
        { TASK_PATCH_LANGUAGE, "language" },
        { TASK_PATCH_INPUT_DATA, "inputData" },
        { TASK_PATCH_TTL, "ttl" },
        { TASK_PATCH_STATUS, "status" },
        { TASK_PATCH_RESULT, "result" },
        { TASK_PATCH_ERROR_MESSAGE, "errorMessage" },
        { TASK_PATCH_STARTED_AT, "startedAt" },
        { TASK_PATCH_COMPLETED_AT, "completedAt" },
        { TASK_PATCH_USER_ID, "userId" },
};

const char *task_patch_field_name(TaskPatchField f) {
        for (size_t i = 0; i < ELEMENTSOF(patch_fields); i++)
                if (patch_fields[i].field == f)
                        return patch_fields[i].name;
        return NULL;
}

static int time_member(json_object *body, const char *field, usec_t *ret, json_object **errors) {
        const char *s = NULL;
        usec_t t;
        int r;

        r = string_member(body, field, 1, 64, 0, &s, errors);
        if (r <= 0)
                return r;
        if (iso8601_parse(s, &t) < 0 || t == 0)
                return json_errors_add(errors, field, "must be an ISO-8601 time like \"2026-11-28T18:06:45Z\"")
                               ?: -EINVAL;
        *ret = t;
        return 1;
}

static void mark(TaskPatch *p, TaskPatchField f, int k, int *r) {
        if (k > 0)
                p->fields |= f;
        merge(r, k);
}

int task_patch_from_json(json_object *body, const TaskLimits *l, TaskPatch *ret, json_object **errors) {
        TaskPatch p = {
                .language = _TASK_LANGUAGE_INVALID,
                .status = _TASK_STATUS_INVALID,
        };
        const char *user_id = NULL;
        json_object *v;
        int r = 0, k;

        mark(&p, TASK_PATCH_NAME, name_member(body, &p.name, errors), &r);
        mark(&p, TASK_PATCH_CODE, string_member(body, "code", 1, 0, l->max_code_size, &p.code, errors), &r);
        mark(&p, TASK_PATCH_LANGUAGE, language_member(body, &p.language, errors), &r);
        mark(&p, TASK_PATCH_INPUT_DATA,
             string_member(body, "inputData", 0, 0, l->max_input_size, &p.input_data, errors), &r);
        v = member(body, "ttl");
        if (v) {
                k = task_ttl_from_json(v, l->max_ttl, &p.ttl, errors);
                mark(&p, TASK_PATCH_TTL, k < 0 ? k : 1, &r);
        }

        mark(&p, TASK_PATCH_STATUS, status_member(body, "status", (1u << _TASK_STATUS_MAX) - 1, &p.status, errors),
             &r);
        mark(&p, TASK_PATCH_RESULT, string_member(body, "result", 0, 0, l->max_output_size, &p.result, errors), &r);
        mark(&p, TASK_PATCH_ERROR_MESSAGE,
             string_member(body, "errorMessage", 0, 0, l->max_output_size, &p.error_message, errors), &r);
        mark(&p, TASK_PATCH_STARTED_AT, time_member(body, "startedAt", &p.started_at, errors), &r);
        mark(&p, TASK_PATCH_COMPLETED_AT, time_member(body, "completedAt", &p.completed_at, errors), &r);

        k = string_member(body, "userId", 1, 64, 0, &user_id, errors);
        if (k > 0 && uuid_normalize(user_id, p.user_id) < 0)
                k = json_errors_add(errors, "userId", "must be a UUID") ?: -EINVAL;
        mark(&p, TASK_PATCH_USER_ID, k, &r);

        if (r < 0)
                return r;
        *ret = p;
        return 0;
}

int task_completion_from_json(json_object *body, const TaskLimits *l, TaskCompletion *ret, json_object **errors) {
        TaskCompletion c = {
                .status = _TASK_STATUS_INVALID,
        };
        int64_t i;
        int r = 0, k;

        k = json_field_int64(body, "attempt", 1, INT32_MAX, &i, errors);
        if (k > 0)
                c.attempt = (unsigned) i;
        merge(&r, k == 0 ? required(errors, "attempt") : k);

        k = status_member(body, "status", (1u << TASK_COMPLETED) | (1u << TASK_FAILED) | (1u << TASK_EXPIRED),
                          &c.status, errors);
        merge(&r, k == 0 ? required(errors, "status") : k);

        merge(&r, string_member(body, "result", 0, 0, l->max_output_size, &c.result, errors));
        merge(&r, string_member(body, "errorMessage", 0, 0, l->max_output_size, &c.error_message, errors));

        k = json_field_int64(body, "exitCode", INT32_MIN, INT32_MAX, &i, errors);
        if (k > 0) {
                c.has_exit_code = true;
                c.exit_code = (int) i;
        }
        merge(&r, k);

        k = string_member(body, "verdict", 1, 32, 0, &c.verdict, errors);
        if (k > 0 && !task_verdict_is_valid(c.verdict))
                k = json_errors_add(errors, "verdict",
                                    "must be one of ok, runtime_error, compile_error, timeout, memory_limit, "
                                    "pids_limit, output_limit, cancelled, worker_lost, internal_error")
                            ?: -EINVAL;
        merge(&r, k);

        merge(&r, json_field_bool(body, "outputTruncated", &c.output_truncated, errors));

        if (r < 0)
                return r;
        *ret = c;
        return 0;
}

int task_heartbeat_from_json(json_object *body, unsigned *ret_attempt, json_object **errors) {
        int64_t i;
        int k;

        k = json_field_int64(body, "attempt", 1, INT32_MAX, &i, errors);
        if (k == 0)
                return required(errors, "attempt");
        if (k < 0)
                return k;
        *ret_attempt = (unsigned) i;
        return 0;
}

bool task_worker_name_is_valid(const char *s) {
        size_t n = 0;

        if (isempty(s) || !utf8_is_valid(s, strlen(s), NULL))
                return false;
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if (*p < 0x20 || *p == 0x7f)
                        return false;
                if ((*p & 0xc0) != 0x80)
                        n++;
        }
        return n <= TASK_WORKER_MAX;
}

int task_claim_from_json(json_object *body, const char **ret_worker, json_object **errors) {
        const char *w = NULL;
        int k;

        k = string_member(body, "worker", 1, TASK_WORKER_MAX, 0, &w, errors);
        if (k < 0)
                return k;
        if (k > 0 && !task_worker_name_is_valid(w))
                return json_errors_add(errors, "worker", "must be printable text") ?: -EINVAL;
        *ret_worker = w;
        return 0;
}
