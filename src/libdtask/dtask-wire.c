/* SPDX-License-Identifier: MIT */
#include <json-c/json.h>
#include <stdio.h>
#include <strings.h>

#include "dtask-wire.h"
#include "json-util.h"
#include "uuid-util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTask *, dtask_task_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTaskList *, dtask_task_list_free);

/* ---- status → errno ---------------------------------------------------------------------- */

int wire_errno_from_status(DtaskOp op, unsigned status, bool have_key) {
        if (status >= 200 && status < 300)
                return 0;

        switch (status) {
        case 400:
                return -EINVAL;
        case 401:
                return have_key ? -EKEYREJECTED : -ENOKEY;
        case 403:
                return -EPERM;
        case 404:
                return -ENOENT;
        case 405:
                return -EOPNOTSUPP;
        case 409:
                /* the worker protocol's fencing: this attempt lost the task */
                return op == DTASK_OP_HEARTBEAT || op == DTASK_OP_COMPLETE || op == DTASK_OP_RELEASE ? -ESTALE
                                                                                                     : -EBUSY;
        case 413:
                return -E2BIG;
        case 415:
                return -EPROTO;
        case 422:
                return op == DTASK_OP_CREATE ? -EEXIST : -EINVAL;
        case 429:
        case 503:
                return -EAGAIN;
        case 504:
                return -ETIMEDOUT;
        default:
                if (status >= 500 && status < 600)
                        return -EIO;
                if (status >= 400 && status < 500)
                        return -EINVAL;
                /* 1xx leftovers, 3xx: not something this API answers */
                return -EPROTO;
        }
}

/* ---- replies ---------------------------------------------------------------------------- */

int wire_parse_body(const char *body, size_t size, json_object **ret) {
        const JsonLimits limits = {
                .max_size = DTASK_MAX_REPLY_SIZE,
                .max_depth = 16,
                .max_string = DTASK_MAX_STRING_SIZE,
        };
        int r;

        r = json_parse_limited(body ?: "", size, &limits, ret, NULL);
        if (r == -ENOMEM)
                return r;
        if (r == -E2BIG || r == -EMSGSIZE)
                return -EMSGSIZE;
        return r < 0 ? -EBADMSG : 0;
}

/* Members are matched exactly first, then case-insensitively (like the API does on input). */
static json_object *member(json_object *o, const char *name) {
        return json_object_get_ci(o, name);
}

static int member_string(json_object *o, const char *name, char **ret) {
        json_object *v = member(o, name);

        if (!v || json_object_is_type(v, json_type_null)) {
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(v, json_type_string))
                return -EBADMSG;
        *ret = strndup(json_object_get_string(v), (size_t) json_object_get_string_len(v));
        return *ret ? 1 : -ENOMEM;
}

static int member_int(json_object *o, const char *name, int64_t min, int64_t max, int64_t *ret) {
        json_object *v = member(o, name);
        int64_t i;

        if (!v || json_object_is_type(v, json_type_null))
                return 0;
        if (!json_object_is_type(v, json_type_int))
                return -EBADMSG;
        errno = 0;
        i = json_object_get_int64(v);
        if (errno != 0 || i < min || i > max)
                return -EBADMSG;
        *ret = i;
        return 1;
}

static int member_bool(json_object *o, const char *name, bool *ret) {
        json_object *v = member(o, name);

        if (!v || json_object_is_type(v, json_type_null))
                return 0;
        if (!json_object_is_type(v, json_type_boolean))
                return -EBADMSG;
        *ret = json_object_get_boolean(v);
        return 1;
}

static int member_time(json_object *o, const char *name, uint64_t *ret) {
        json_object *v = member(o, name);
        usec_t t;

        if (!v || json_object_is_type(v, json_type_null))
                return 0;
        if (!json_object_is_type(v, json_type_string) || iso8601_parse(json_object_get_string(v), &t) < 0)
                return -EBADMSG;
        *ret = t;
        return 1;
}

int wire_task_from_json(json_object *o, DtaskTask **ret) {
        _cleanup_(dtask_task_freep) DtaskTask *t = NULL;
        json_object *v;
        int64_t i;
        int r;

        if (!json_object_is_type(o, json_type_object))
                return -EBADMSG;

        t = calloc(1, sizeof(DtaskTask));
        if (!t)
                return -ENOMEM;
        t->language = DTASK_LANGUAGE_UNKNOWN;

        r = member_string(o, "id", &t->id);
        if (r < 0)
                return r;
        if (isempty(t->id))
                return -EBADMSG;

        if ((r = member_string(o, "name", &t->name)) < 0 || (r = member_string(o, "code", &t->code)) < 0 ||
            (r = member_string(o, "inputData", &t->input_data)) < 0 ||
            (r = member_string(o, "userId", &t->user_id)) < 0 ||
            (r = member_string(o, "statusName", &t->status_name)) < 0 ||
            (r = member_string(o, "result", &t->result)) < 0 ||
            (r = member_string(o, "errorMessage", &t->error_message)) < 0 ||
            (r = member_string(o, "verdict", &t->verdict)) < 0)
                return r;

        /* language: "Python"/"CSharp" on output; the input forms (0/1, any case) are accepted too */
        v = member(o, "language");
        if (v && json_object_is_type(v, json_type_string))
                t->language = dtask_language_from_string(json_object_get_string(v));
        else if (v && json_object_is_type(v, json_type_int)) {
                i = json_object_get_int64(v);
                t->language = i == 0 ? DTASK_LANGUAGE_CSHARP : i == 1 ? DTASK_LANGUAGE_PYTHON : DTASK_LANGUAGE_UNKNOWN;
        } else if (v && !json_object_is_type(v, json_type_null))
                return -EBADMSG;

        /* status: an integer (compat); a name is tolerated */
        v = member(o, "status");
        if (!v)
                return -EBADMSG;
        if (json_object_is_type(v, json_type_int)) {
                r = member_int(o, "status", 0, INT32_MAX, &i);
                if (r < 0)
                        return r;
                t->status = (DtaskStatus) i;
        } else if (json_object_is_type(v, json_type_string)) {
                t->status = dtask_status_from_string(json_object_get_string(v));
                if (t->status < 0)
                        return -EBADMSG;
        } else
                return -EBADMSG;

        r = member_int(o, "exitCode", INT32_MIN, INT32_MAX, &i);
        if (r < 0)
                return r;
        if (r > 0) {
                t->has_exit_code = true;
                t->exit_code = (int) i;
        }

        r = member_bool(o, "outputTruncated", &t->output_truncated);
        if (r < 0)
                return r;

        /* ttl: TimeSpan text (compat); integer seconds tolerated */
        v = member(o, "ttl");
        if (v && json_object_is_type(v, json_type_string)) {
                usec_t u;

                if (timespan_parse(json_object_get_string(v), &u) < 0)
                        return -EBADMSG;
                t->ttl_usec = u;
                t->ttl = strdup(json_object_get_string(v));
                if (!t->ttl)
                        return -ENOMEM;
        } else if (v && json_object_is_type(v, json_type_int)) {
                char buf[TIMESPAN_STRING_MAX];

                r = member_int(o, "ttl", 0, (int64_t) (TIMESPAN_MAX_USEC / USEC_PER_SEC), &i);
                if (r < 0)
                        return r;
                t->ttl_usec = (uint64_t) i * USEC_PER_SEC;
                t->ttl = strdup(timespan_format(t->ttl_usec, buf));
                if (!t->ttl)
                        return -ENOMEM;
        } else if (v && !json_object_is_type(v, json_type_null))
                return -EBADMSG;

        if ((r = member_time(o, "createdAt", &t->created_at)) < 0 ||
            (r = member_time(o, "startedAt", &t->started_at)) < 0 ||
            (r = member_time(o, "completedAt", &t->completed_at)) < 0 ||
            (r = member_time(o, "expiresAt", &t->expires_at)) < 0)
                return r;

        r = member_int(o, "retryCount", 0, UINT32_MAX, &i);
        if (r < 0)
                return r;
        if (r > 0)
                t->retry_count = (unsigned) i;
        r = member_int(o, "attempt", 0, UINT32_MAX, &i);
        if (r < 0)
                return r;
        if (r > 0)
                t->attempt = (unsigned) i;

        t->json = strdup(json_to_string(o, NULL));
        if (!t->json)
                return -ENOMEM;

        *ret = TAKE_PTR(t);
        return 0;
}

int wire_task_list_from_json(json_object *a, DtaskTaskList **ret) {
        _cleanup_(dtask_task_list_freep) DtaskTaskList *l = NULL;
        size_t n;
        int r;

        if (!json_object_is_type(a, json_type_array))
                return -EBADMSG;

        l = calloc(1, sizeof(DtaskTaskList));
        if (!l)
                return -ENOMEM;
        n = json_object_array_length(a);
        if (n > 0) {
                l->tasks = calloc(n, sizeof(DtaskTask *));
                if (!l->tasks)
                        return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                r = wire_task_from_json(json_object_array_get_idx(a, i), &l->tasks[i]);
                if (r < 0)
                        return r;
                l->n_tasks++;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

static const char *string_or_null(json_object *o, const char *name) {
        json_object *v = member(o, name);

        return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

int wire_problem_from_json(json_object *o, WireProblem *ret) {
        WireProblem p = {};
        json_object *errors;

        if (json_object_is_type(o, json_type_object)) {
                p.type = string_or_null(o, "type");
                p.title = string_or_null(o, "title");
                p.detail = string_or_null(o, "detail");
                errors = member(o, "errors");
                if (errors && json_object_is_type(errors, json_type_object)) {
                        p.errors = strdup(json_to_string(errors, NULL));
                        if (!p.errors)
                                return -ENOMEM;
                }
        }
        *ret = p;
        return 0;
}

/* ---- requests --------------------------------------------------------------------------- */

int wire_ttl_text(const char *ttl, uint64_t ttl_usec, char buf[static TIMESPAN_STRING_MAX]) {
        usec_t u = ttl_usec;

        if (ttl) {
                const char *s = ttl + strspn(ttl, " \t");
                char *copy;
                size_t n = strlen(s);
                int r;

                while (n > 0 && strchr(" \t", s[n - 1]))
                        n--;
                copy = strndup(s, n);
                if (!copy)
                        return -ENOMEM;
                r = duration_parse(copy, &u);
                free(copy);
                if (r < 0)
                        return -EINVAL;
        } else if (ttl_usec == 0)
                return -EINVAL;

        if (u > TIMESPAN_MAX_USEC)
                return -EINVAL;
        timespan_format(u, buf);
        return 0;
}

bool wire_idempotency_key_is_valid(const char *k) {
        size_t n;

        if (!k)
                return false;
        n = strlen(k);
        if (n == 0 || n > DTASK_IDEMPOTENCY_KEY_MAX)
                return false;
        for (const char *p = k; *p; p++)
                if (*p < 0x20 || *p > 0x7e)
                        return false;
        return true;
}

static int body_to_string(json_object *o, char **ret) {
        char *s = strdup(json_to_string(o, NULL));

        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int wire_create_body(const DtaskTaskSpec *spec, char **ret) {
        _cleanup_json_ json_object *o = NULL;
        char ttl[TIMESPAN_STRING_MAX];
        const char *language;
        int r;

        if (!spec || isempty(spec->name) || isempty(spec->code))
                return -EINVAL;
        language = dtask_language_to_string(spec->language);
        if (!language)
                return -EINVAL;
        r = wire_ttl_text(spec->ttl, spec->ttl_usec, ttl);
        if (r < 0)
                return r;
        if (spec->idempotency_key && !wire_idempotency_key_is_valid(spec->idempotency_key))
                return -EINVAL;

        o = json_object_new_object();
        if (!o)
                return -ENOMEM;
        if (json_add_string(o, "name", spec->name) < 0 || json_add_string(o, "code", spec->code) < 0 ||
            json_add_string(o, "language", language) < 0 ||
            (spec->input_data && json_add_string(o, "inputData", spec->input_data) < 0) ||
            json_add_string(o, "ttl", ttl) < 0)
                return -ENOMEM;

        return body_to_string(o, ret);
}

int wire_complete_body(const DtaskCompletion *c, char **ret) {
        _cleanup_json_ json_object *o = NULL;
        json_object *exit_code = NULL;

        if (!c || c->attempt < 1 || c->attempt > INT32_MAX)
                return -EINVAL;
        if (c->status != DTASK_STATUS_COMPLETED && c->status != DTASK_STATUS_FAILED &&
            c->status != DTASK_STATUS_EXPIRED)
                return -EINVAL;

        o = json_object_new_object();
        if (!o)
                return -ENOMEM;
        if (c->has_exit_code) {
                exit_code = json_object_new_int(c->exit_code);
                if (!exit_code)
                        return -ENOMEM;
        }
        if (json_add_int(o, "attempt", c->attempt) < 0 || json_add_int(o, "status", c->status) < 0 ||
            json_add_string(o, "result", c->result) < 0 ||
            json_add_string(o, "errorMessage", c->error_message) < 0 ||
            json_object_object_add(o, "exitCode", exit_code) < 0 ||
            json_add_string(o, "verdict", c->verdict) < 0 ||
            json_add_bool(o, "outputTruncated", c->output_truncated) < 0)
                return -ENOMEM;

        return body_to_string(o, ret);
}

int wire_heartbeat_body(unsigned attempt, char **ret) {
        _cleanup_json_ json_object *o = NULL;

        if (attempt < 1 || attempt > INT32_MAX)
                return -EINVAL;
        o = json_object_new_object();
        if (!o || json_add_int(o, "attempt", attempt) < 0)
                return -ENOMEM;
        return body_to_string(o, ret);
}

int wire_claim_body(const char *worker, char **ret) {
        _cleanup_json_ json_object *o = NULL;

        if (worker) {
                size_t n = strlen(worker);

                if (n == 0 || n > DTASK_WORKER_MAX * 4)
                        return -EINVAL;
                for (const unsigned char *p = (const unsigned char *) worker; *p; p++)
                        if (*p < 0x20 || *p == 0x7f)
                                return -EINVAL;
        }
        o = json_object_new_object();
        if (!o || (worker && json_add_string(o, "worker", worker) < 0))
                return -ENOMEM;
        return body_to_string(o, ret);
}

/* ---- URLs ------------------------------------------------------------------------------- */

char *wire_percent_encode(const char *s) {
        static const char hex[] = "0123456789ABCDEF";
        char *buf, *p;

        buf = malloc(strlen(s) * 3 + 1);
        if (!buf)
                return NULL;
        p = buf;
        for (const unsigned char *q = (const unsigned char *) s; *q; q++) {
                if ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
                    strchr("-._~", *q))
                        *p++ = (char) *q;
                else {
                        *p++ = '%';
                        *p++ = hex[*q >> 4];
                        *p++ = hex[*q & 15];
                }
        }
        *p = '\0';
        return buf;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

int wire_percent_decode(const char *s, size_t n, char **ret) {
        _cleanup_free_ char *buf = NULL;
        char *p;

        buf = malloc(n + 1);
        if (!buf)
                return -ENOMEM;
        p = buf;
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '%') {
                        int a, b;

                        if (i + 2 >= n)
                                return -EINVAL;
                        a = unhex(s[i + 1]);
                        b = unhex(s[i + 2]);
                        if (a < 0 || b < 0 || (a == 0 && b == 0))
                                return -EINVAL;
                        *p++ = (char) (a << 4 | b);
                        i += 2;
                } else
                        *p++ = s[i];
        }
        *p = '\0';
        *ret = TAKE_PTR(buf);
        return 0;
}

static bool is_ws(char c) {
        return c == ' ' || c == '\t';
}

/* Does the rel value (space-separated relation types) contain "next"? */
static bool rel_has_next(const char *v, size_t n) {
        size_t i = 0;

        while (i < n) {
                size_t start, len;

                while (i < n && is_ws(v[i]))
                        i++;
                start = i;
                while (i < n && !is_ws(v[i]))
                        i++;
                len = i - start;
                if (len == 4 && strncasecmp(v + start, "next", 4) == 0)
                        return true;
        }
        return false;
}

/* The `after` parameter of the query of a URI reference. */
static int uri_after(const char *uri, size_t n, char **ret) {
        const char *q = memchr(uri, '?', n), *end = uri + n, *hash;

        hash = memchr(uri, '#', n);
        if (hash)
                end = hash;
        if (!q || q > end)
                return 0;
        q++;
        while (q < end) {
                const char *amp = memchr(q, '&', (size_t) (end - q)) ?: end;

                if ((size_t) (amp - q) > 6 && strneq(q, "after=", 6)) {
                        int r = wire_percent_decode(q + 6, (size_t) (amp - q) - 6, ret);
                        if (r == -EINVAL)
                                return 0;
                        return r < 0 ? r : 1;
                }
                q = amp + 1;
        }
        return 0;
}

/* One header value: link-value *( "," link-value ), link-value = "<" URI ">" *( ";" param ). */
static int link_value_next(const char *s, char **ret) {
        const char *p = s;

        for (;;) {
                const char *uri, *uri_end;
                bool next = false;

                while (*p && (is_ws(*p) || *p == ','))
                        p++;
                if (*p == '\0')
                        return 0;
                if (*p != '<')
                        return 0; /* malformed: give up on this header */
                uri = p + 1;
                uri_end = strchr(uri, '>');
                if (!uri_end)
                        return 0;
                p = uri_end + 1;

                /* parameters */
                for (;;) {
                        const char *name, *value;
                        size_t name_len, value_len;

                        while (is_ws(*p))
                                p++;
                        if (*p != ';')
                                break;
                        p++;
                        while (is_ws(*p))
                                p++;
                        name = p;
                        while (*p && !is_ws(*p) && !strchr("=;,", *p))
                                p++;
                        name_len = (size_t) (p - name);
                        while (is_ws(*p))
                                p++;
                        value = "";
                        value_len = 0;
                        if (*p == '=') {
                                p++;
                                while (is_ws(*p))
                                        p++;
                                if (*p == '"') {
                                        value = ++p;
                                        while (*p && *p != '"') {
                                                if (*p == '\\' && p[1])
                                                        p++;
                                                p++;
                                        }
                                        value_len = (size_t) (p - value);
                                        if (*p == '"')
                                                p++;
                                } else {
                                        value = p;
                                        while (*p && !is_ws(*p) && !strchr(";,", *p))
                                                p++;
                                        value_len = (size_t) (p - value);
                                }
                        }
                        if (name_len == 3 && strncasecmp(name, "rel", 3) == 0 && rel_has_next(value, value_len))
                                next = true;
                }

                if (next)
                        return uri_after(uri, (size_t) (uri_end - uri), ret);

                /* skip to the next link-value */
                while (*p && *p != ',')
                        p++;
        }
}

int wire_link_next_cursor(const char *const *links, size_t n_links, char **ret) {
        for (size_t i = 0; i < n_links; i++) {
                int r;

                if (!links[i])
                        continue;
                r = link_value_next(links[i], ret);
                if (r != 0)
                        return r;
        }
        return 0;
}

int wire_task_path(const char *id, const char *suffix, char **ret) {
        char uuid[UUID_STRING_MAX];

        if (!id || uuid_normalize(id, uuid) < 0)
                return -EINVAL;
        if (asprintf(ret, "/api/tasks/%s%s", uuid, strempty(suffix)) < 0)
                return -ENOMEM;
        return 0;
}

int wire_get_path(const char *id, unsigned wait_sec, char **ret) {
        char uuid[UUID_STRING_MAX];
        int r;

        if (!id || uuid_normalize(id, uuid) < 0)
                return -EINVAL;
        if (wait_sec > 0)
                r = asprintf(ret, "/api/tasks/%s?wait=%u", uuid, wait_sec);
        else
                r = asprintf(ret, "/api/tasks/%s", uuid);
        return r < 0 ? -ENOMEM : 0;
}

int wire_list_path(DtaskStatus status, unsigned limit, const char *after, char **ret) {
        _cleanup_free_ char *encoded = NULL;
        char status_part[32] = "", limit_part[32] = "";
        char *p;

        if (status != DTASK_STATUS_ANY) {
                const char *s = dtask_status_to_string(status);

                if (!s)
                        return -EINVAL;
                (void) snprintf(status_part, sizeof(status_part), "&status=%s", s);
        }
        if (limit > 0)
                (void) snprintf(limit_part, sizeof(limit_part), "&limit=%u", limit);
        if (after) {
                if (isempty(after))
                        return -EINVAL;
                encoded = wire_percent_encode(after);
                if (!encoded)
                        return -ENOMEM;
        }

        /* each part starts with '&': the first one becomes '?' */
        if (asprintf(&p, "/api/tasks%s%s%s%s", status_part, limit_part, encoded ? "&after=" : "", strempty(encoded)) < 0)
                return -ENOMEM;
        if (p[STRLEN("/api/tasks")] == '&')
                p[STRLEN("/api/tasks")] = '?';
        *ret = p;
        return 0;
}
