/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <strings.h>

#include "auth.h"
#include "dispatch.h"
#include "json-util.h"
#include "log.h"
#include "manager.h"
#include "task-cache.h"
#include "task-store.h"
#include "tasks.h"
#include "waiters.h"

#define LIST_LIMIT_DEFAULT 100U
#define LIST_LIMIT_MAX 1000U
#define DB_WARN_INTERVAL_USEC (10 * USEC_PER_SEC)

typedef struct TaskCall TaskCall;
typedef void (*TaskStep)(TaskCall *c);

/* One REST request on tasks, from authentication to the reply. It lives while the request
 * does or while an asynchronous operation (key validation, query) holds a pointer to it,
 * whichever is longer: when the server drops the request (shutdown), req becomes NULL and
 * the pending operation's callback frees the call. */
struct TaskCall {
        Manager *manager;
        HttpRequest *req;
        TaskStep step;      /* runs once the caller is authenticated */
        unsigned need;      /* any of these claims will do (tasks:admin always does) */
        Caller caller;
        bool busy;          /* an operation holds a pointer to this call */
        char id[UUID_STRING_MAX];
        char client[64];

        json_object *body;
        TaskCreate create;
        TaskPatch patch;
        TaskCompletion completion;
        unsigned attempt;
        uint64_t ticket;    /* of the task cache, taken when the query was sent */
        char *idempotency_key;
        uint8_t hash[32];

        /* GET /api/tasks */
        TaskStatus status_filter;
        unsigned limit;

        /* GET /api/tasks/{id} */
        bool no_cache;      /* Cache-Control: no-cache: read the database */

        /* GET ?wait= */
        Waiter *waiter;
        sd_event_source *timer;
        bool dirty;         /* woken while a query ran: ask again */
        bool deadline;      /* the wait is over: answer with what the next query says */
};

static TaskCall *task_call_free(TaskCall *c) {
        if (!c)
                return NULL;
        waiter_free(c->waiter);
        sd_event_source_disable_unref(c->timer);
        json_object_put(c->body);
        free(c->idempotency_key);
        return mfree(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(TaskCall *, task_call_free);

bool content_type_is_json(const char *ct) {
        size_t n;

        if (!ct)
                return false;
        ct += strspn(ct, " \t");
        n = strcspn(ct, ";");
        while (n > 0 && strchr(" \t", ct[n - 1]))
                n--;
        if (n == STRLEN("application/json") && strncasecmp(ct, "application/json", n) == 0)
                return true;
        /* application/merge-patch+json, application/problem+json, … */
        return n > STRLEN("application/+json") && strncasecmp(ct, "application/", STRLEN("application/")) == 0 &&
               strncasecmp(ct + n - STRLEN("+json"), "+json", STRLEN("+json")) == 0;
}

bool cache_control_no_cache(const char *value) {
        if (!value)
                return false;
        for (const char *p = value; *p;) {
                size_t n, len;

                p += strspn(p, " \t,");
                len = n = strcspn(p, ",");
                while (len > 0 && strchr(" \t", p[len - 1]))
                        len--;
                if ((len == STRLEN("no-cache") && strncasecmp(p, "no-cache", len) == 0) ||
                    (len == STRLEN("max-age=0") && strncasecmp(p, "max-age=0", len) == 0))
                        return true;
                p += n;
        }
        return false;
}

static const char *owner_filter(const TaskCall *c) {
        return c->caller.claims & CLAIM_TASKS_ADMIN ? NULL : c->caller.key_id;
}

/* ---- replies: no-ops once the request is gone ---- */

static void reply_log(int r) {
        if (r < 0 && r != -EALREADY)
                log_debug_errno(r, "Failed to queue an HTTP reply: %m");
}

static void reply_problem(TaskCall *c, unsigned status, const char *format, ...) _printf_(3, 4);
static void reply_problem(TaskCall *c, unsigned status, const char *format, ...) {
        _cleanup_free_ char *detail = NULL;
        va_list ap;

        if (!c->req)
                return;
        va_start(ap, format);
        if (vasprintf(&detail, format, ap) < 0)
                detail = NULL;
        va_end(ap);
        reply_log(http_request_reply_problem_errors(c->req, status, detail, NULL));
}

static void reply_errors(TaskCall *c, unsigned status, json_object *errors) {
        _cleanup_free_ char *summary = NULL;

        if (!c->req)
                return;
        summary = json_errors_summary(errors);
        reply_log(http_request_reply_problem_errors(c->req, status, summary ?: "The request is invalid.", errors));
}

static void reply_not_found(TaskCall *c) {
        const char *raw = c->req ? http_request_param(c->req, "id") : NULL;

        if (c->id[0] != '\0')
                reply_problem(c, 404, "No task with id %s.", c->id);
        else
                reply_problem(c, 404, "No task with id \"%.64s\": task ids are UUIDs.", strempty(raw));
}

/* Failures of the store that are not about the task itself. */
static void reply_store_error(TaskCall *c, int error, const char *what) {
        if (error == -ENOENT) {
                reply_not_found(c);
                return;
        }
        if (error == -ECANCELED && !c->req)
                return; /* shutting down */
        if (error_is_unavailable(error)) {
                usec_t now = now_usec(CLOCK_MONOTONIC);

                /* at most one warning every few seconds while the database is away */
                if (now >= c->manager->db_warned_at + DB_WARN_INTERVAL_USEC) {
                        log_warning_errno(error, "Cannot %s, the database is unavailable: %m", what);
                        c->manager->db_warned_at = now;
                } else
                        log_debug_errno(error, "Cannot %s, the database is unavailable: %m", what);
                if (c->req)
                        (void) http_request_add_header(c->req, "Retry-After", "1");
                reply_problem(c, 503, "The task database is unavailable; try again later.");
                return;
        }
        log_error_errno(error, "Failed to %s: %m", what);
        reply_problem(c, 500, "Failed to %s.", what);
}

/* Replies with t; its JSON text goes into the task cache when t was read with ticket. */
static void reply_task_caching(TaskCall *c, unsigned status, const Task *t, uint64_t ticket) {
        _cleanup_json_ json_object *o = NULL;
        const char *text = NULL;
        size_t size;

        if (!c->req)
                return;
        if (task_to_json(t, &o) >= 0)
                text = json_to_string(o, &size);
        if (!text) {
                reply_problem(c, 500, "Out of memory.");
                return;
        }
        if (task_cache_put(manager_cache(c->manager), ticket, t, text, size, now_usec(CLOCK_MONOTONIC)) < 0)
                log_debug("Out of memory: task %s is not cached.", t->id);
        reply_log(http_request_reply(c->req, status, "application/json", text, size));
}

static void reply_task(TaskCall *c, unsigned status, const Task *t) {
        reply_task_caching(c, status, t, 0);
}

/* ---- authentication ---- */

static void on_abort(HttpRequest *req, void *userdata) {
        TaskCall *c = userdata;

        c->req = NULL;
        c->waiter = waiter_free(c->waiter);
        c->timer = sd_event_source_disable_unref(c->timer);
        if (!c->busy)
                task_call_free(c);
}

/* Runs the step of an authenticated caller; frees the call unless the step left it busy or waiting. */
static void authenticated(TaskCall *c) {
        unsigned need = c->need | CLAIM_TASKS_ADMIN;

        if (!(c->caller.claims & need)) {
                const char *claim = c->need & CLAIM_TASKS_EXECUTE ? "tasks:execute"
                                  : c->need & CLAIM_TASKS_WRITE   ? "tasks:write"
                                                                  : "tasks:read";

                log_debug("Key %s from %s lacks claim %s for %s %s.", c->caller.key_id, c->client, claim,
                          strna(http_method_to_string(http_request_method(c->req))), http_request_path(c->req));
                reply_problem(c, 403, "The API key lacks the claim %s.", claim);
                task_call_free(c);
                return;
        }
        c->step(c);
}

static void on_auth(int error, const Caller *caller, void *userdata) {
        TaskCall *c = userdata;

        c->busy = false;
        if (!c->req) {
                task_call_free(c);
                return;
        }
        if (error == -ENOKEY || error == -EKEYREJECTED) {
                (void) http_request_add_header(c->req, "WWW-Authenticate", "ApiKey");
                reply_problem(c, 401, "The API key is missing, invalid, inactive or expired.");
                task_call_free(c);
                return;
        }
        if (error < 0) {
                /* logged by auth.c when dtask-keys goes away and comes back */
                (void) http_request_add_header(c->req, "Retry-After", "1");
                reply_problem(c, 503, "The API key cannot be checked right now; try again later.");
                task_call_free(c);
                return;
        }
        c->caller = *caller;
        authenticated(c);
}

/* Starts a request: creates the call, authenticates (from the cache at once, or
 * asynchronously), then runs step. Always returns 0: the request is answered or suspended. */
static int task_call_begin(HttpRequest *req, Manager *m, unsigned need, bool has_id, TaskStep step) {
        _cleanup_(task_call_freep) TaskCall *c = NULL;
        const char *key, *addr;
        int r;

        c = calloc(1, sizeof(TaskCall));
        if (!c)
                return -ENOMEM;
        c->manager = m;
        c->req = req;
        c->need = need;
        c->step = step;
        addr = http_request_client_address(req);
        snprintf(c->client, sizeof(c->client), "%s", strna(addr));

        key = auth_request_key(req);
        if (!key) {
                r = http_request_add_header(req, "WWW-Authenticate", "ApiKey");
                if (r < 0)
                        return r;
                return http_request_reply_problem(req, 401, "An API key is required (header X-ApiKey).");
        }

        if (!manager_is_ready(m)) {
                (void) http_request_add_header(req, "Retry-After", "1");
                return http_request_reply_problem(req, 503, "The service is starting; the database is not ready yet.");
        }

        /* A malformed id is answered 404 by the step, i.e. after authentication. */
        if (has_id) {
                const char *id = http_request_param(req, "id");

                if (!id || uuid_normalize(id, c->id) < 0)
                        c->id[0] = '\0';
        }

        r = http_request_suspend(req, on_abort, c);
        if (r < 0)
                return r;

        r = auth_check_cached(m->auth, key, &c->caller);
        if (r > 0) {
                authenticated(TAKE_PTR(c));
                return 0;
        }
        if (r == 0) {
                c->busy = true;
                r = auth_check(m->auth, key, on_auth, c, NULL);
        }
        if (r < 0) {
                c->busy = false;
                on_auth(r, NULL, TAKE_PTR(c));
                return 0;
        }
        TAKE_PTR(c);
        return 0;
}

/* For steps that need a task id from the path. Returns false (and has answered) when malformed. */
static bool require_id(TaskCall *c) {
        if (c->id[0] != '\0')
                return true;
        reply_not_found(c);
        task_call_free(c);
        return false;
}

/* Parses the JSON body. optional: an empty body is an empty object. Returns false (and has
 * answered and freed the call) when the body is not acceptable. */
static bool read_body(TaskCall *c, uint64_t limit, bool optional) {
        _cleanup_json_ json_object *errors = NULL;
        const void *body;
        size_t size;
        int r;

        body = http_request_body(c->req, &size);
        if (size > 0 && !content_type_is_json(http_request_header(c->req, "Content-Type"))) {
                reply_problem(c, 415, "The request body must be JSON (Content-Type: application/json).");
                goto fail;
        }
        r = task_json_parse_body(body ?: "", size, limit, optional, &c->body, &errors);
        if (r == -E2BIG) {
                reply_problem(c, 413, "The request body is larger than %" PRIu64 " bytes.", limit);
                goto fail;
        }
        if (r == -ENOMEM) {
                reply_problem(c, 500, "Out of memory.");
                goto fail;
        }
        if (r < 0) {
                reply_errors(c, 400, errors);
                goto fail;
        }
        return true;

fail:
        task_call_free(c);
        return false;
}

/* Runs a store operation: the call is busy until cb ran. On failure to start, answers and frees. */
#define STORE(c, call, what)                                        \
        do {                                                        \
                int _r;                                             \
                (c)->busy = true;                                   \
                _r = (call);                                        \
                if (_r < 0) {                                       \
                        (c)->busy = false;                          \
                        reply_store_error((c), _r, (what));         \
                        task_call_free(c);                          \
                }                                                   \
        } while (false)

/* First thing of every store callback: returns false (and frees) when the request is gone. */
static bool still_wanted(TaskCall *c) {
        c->busy = false;
        if (c->req)
                return true;
        task_call_free(c);
        return false;
}

/* A change this instance made: its own waiters get the row now rather than after
 * PostgreSQL's announcement and another read (the announcement still reaches the other
 * instances, and finds nobody waiting here). */
static void wake_waiters(TaskCall *c, const Task *t) {
        if (task_status_is_terminal(t->status))
                waiters_notify(c->manager->waiters, t->id, t);
}

/* ---- POST /api/tasks ---- */

static void on_created(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        Manager *m = c->manager;
        _cleanup_free_ char *location = NULL;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error == -EILSEQ) {
                reply_problem(c, 422,
                              "Idempotency-Key \"%s\" was already used with a different request; use a new key.",
                              c->idempotency_key);
                return;
        }
        if (error < 0) {
                reply_store_error(c, error, "create a task");
                return;
        }
        t = *task;

        if (c->req && asprintf(&location, "/api/tasks/%s", t->id) >= 0)
                (void) http_request_add_header(c->req, "Location", location);

        if (!applied) {
                log_debug("Task %s returned again for Idempotency-Key of key %s from %s.", t->id, c->caller.key_id,
                          c->client);
                if (c->req)
                        (void) http_request_add_header(c->req, "Idempotent-Replayed", "true");
                reply_task_caching(c, 200, t, c->ticket);
                return;
        }

        log_info("Task %s created (%s) by key %s from %s.", t->id,
                 task_language_to_string(t->language), t->owner_id, c->client);
        dispatch_task(m->dispatch, t->id, t->retry_count);
        /* PostgreSQL announces changes, not creations (sql/0002): tell D-Bus ourselves. */
        manager_task_changed(m, t->id, t->status, t->attempt);
        reply_task_caching(c, 201, t, c->ticket);
}

static bool idempotency_key_is_valid(const char *k) {
        size_t n = strlen(k);

        if (n == 0 || n > TASK_IDEMPOTENCY_KEY_MAX)
                return false;
        for (const char *p = k; *p; p++)
                if (*p < 0x20 || *p > 0x7e)
                        return false;
        return true;
}

static void step_create(TaskCall *c) {
        Manager *m = c->manager;
        _cleanup_json_ json_object *errors = NULL;
        const char *key;
        TaskInsert insert;
        int r;

        if (!read_body(c, task_create_body_limit(&m->limits), false))
                return;

        key = http_request_header(c->req, "Idempotency-Key");
        if (key) {
                if (!idempotency_key_is_valid(key)) {
                        r = json_errors_add(&errors, "Idempotency-Key", "must be 1–%d printable ASCII characters",
                                            TASK_IDEMPOTENCY_KEY_MAX);
                        goto invalid;
                }
                c->idempotency_key = strdup(key);
                if (!c->idempotency_key) {
                        reply_problem(c, 500, "Out of memory.");
                        task_call_free(c);
                        return;
                }
        }

        r = task_create_from_json(c->body, &m->limits, &c->create, &errors);
        if (r < 0)
                goto invalid;

        if (c->idempotency_key)
                task_create_hash(&c->create, c->hash);
        insert = (TaskInsert) {
                .create = &c->create,
                .owner_id = c->caller.key_id,
                .max_attempts = m->max_attempts,
                .idempotency_key = c->idempotency_key,
                .request_hash = c->hash,
                .idempotency_retention = m->idempotency_retention,
        };
        c->ticket = task_cache_ticket(manager_cache(m));
        STORE(c, task_store_insert(m->store, &insert, on_created, c), "create a task");
        return;

invalid:
        if (r == -ENOMEM)
                reply_problem(c, 500, "Out of memory.");
        else
                reply_errors(c, 400, errors);
        task_call_free(c);
}

int tasks_create(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_WRITE, false, step_create);
}

/* ---- GET /api/tasks/{id}[?wait=N] ---- */

static void get_query(TaskCall *c);

/* Whether a GET answers with a task in this status now: always without ?wait=, else once the
 * task is finished or the wait is over. */
static bool get_answers_now(const TaskCall *c, TaskStatus status) {
        return !c->waiter || c->deadline || task_status_is_terminal(status);
}

static void on_got(int error, Task **task, bool applied, void *userdata) {
        TaskCall *c = userdata;

        if (!still_wanted(c))
                return;
        if (error < 0) {
                reply_store_error(c, error, "read a task");
                task_call_free(c);
                return;
        }
        if (get_answers_now(c, (*task)->status)) {
                reply_task_caching(c, 200, *task, c->ticket);
                task_call_free(c);
                return;
        }
        /* Not finished yet: keep waiting, unless a change was announced while we asked. */
        if (c->dirty)
                get_query(c);
}

/* The task as the cache has it: as the database would answer, since every change it was
 * told of (before any waiter is woken for it) removed the entry. */
static void got_cached(TaskCall *c, const TaskCacheEntry *e) {
        const char *owner = owner_filter(c);

        if (owner && !strcaseeq(owner, e->owner_id)) {
                reply_not_found(c);
                task_call_free(c);
                return;
        }
        if (get_answers_now(c, e->status)) {
                reply_log(http_request_reply(c->req, 200, "application/json", e->json, e->json_size));
                task_call_free(c);
        }
        /* else not finished yet: keep waiting */
}

static void get_query(TaskCall *c) {
        TaskCache *cache = manager_cache(c->manager);
        const TaskCacheEntry *e;

        c->dirty = false;
        if (!c->no_cache) {
                e = task_cache_get(cache, c->id, now_usec(CLOCK_MONOTONIC));
                if (e) {
                        got_cached(c, e);
                        return;
                }
        }
        c->ticket = task_cache_ticket(cache);
        STORE(c, task_store_get(c->manager->store, c->id, owner_filter(c), on_got, c), "read a task");
}

/* A change of the task was announced (or must be assumed, after a reconnect). */
static void on_wake(Waiter *w, const Task *task, void *userdata) {
        TaskCall *c = userdata;
        const char *owner = owner_filter(c);

        /* This instance made the change and has the row: answer with it at once. */
        if (task && !c->busy && task_status_is_terminal(task->status) && (!owner || strcaseeq(owner, task->owner_id))) {
                reply_task(c, 200, task);
                task_call_free(c);
                return;
        }
        if (c->busy)
                c->dirty = true;
        else
                get_query(c);
}

static int on_deadline(sd_event_source *s, uint64_t usec, void *userdata) {
        TaskCall *c = userdata;

        c->deadline = true;
        if (!c->busy)
                get_query(c);
        return 0;
}

static void step_get(TaskCall *c) {
        Manager *m = c->manager;
        const char *wait;
        uint64_t seconds = 0;
        int r;

        if (!require_id(c))
                return;
        c->no_cache = cache_control_no_cache(http_request_header(c->req, "Cache-Control"));

        wait = http_request_query(c->req, "wait");
        if (wait) {
                _cleanup_json_ json_object *errors = NULL;
                char *end;

                errno = 0;
                seconds = strtoull(wait, &end, 10);
                if (isempty(wait) || *end != '\0' || errno != 0 || wait[0] == '-' || wait[0] == '+' ||
                    seconds > m->max_wait / USEC_PER_SEC) {
                        r = json_errors_add(&errors, "wait", "must be a whole number of seconds from 0 to %" PRIu64,
                                            m->max_wait / USEC_PER_SEC);
                        if (r < 0)
                                reply_problem(c, 500, "Out of memory.");
                        else
                                reply_errors(c, 400, errors);
                        task_call_free(c);
                        return;
                }
        }

        if (seconds > 0) {
                /* Registered before the first query, so that no change can slip in between. */
                r = waiters_add(m->waiters, c->id, on_wake, c, &c->waiter);
                if (r >= 0)
                        r = sd_event_add_time_relative(m->event, &c->timer, CLOCK_MONOTONIC, seconds * USEC_PER_SEC,
                                                       USEC_PER_MSEC, on_deadline, c);
                if (r < 0) {
                        log_error_errno(r, "Failed to set up waiting for task %s: %m", c->id);
                        reply_problem(c, 500, "Failed to wait for the task.");
                        task_call_free(c);
                        return;
                }
        }
        get_query(c);
}

int tasks_get(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_READ, true, step_get);
}

/* ---- GET /api/tasks ---- */

static void on_listed(int error, Task **tasks, size_t n, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        _cleanup_json_ json_object *array = NULL;
        unsigned limit = c->limit;
        int r;

        if (!still_wanted(c)) {
                TAKE_PTR(c);
                return;
        }
        if (error < 0) {
                reply_store_error(c, error, "list tasks");
                return;
        }

        array = json_object_new_array();
        if (!array) {
                reply_problem(c, 500, "Out of memory.");
                return;
        }
        for (size_t i = 0; i < n && i < limit; i++) {
                json_object *o = NULL;

                r = task_to_json(tasks[i], &o);
                if (r < 0 || json_object_array_add(array, o) < 0) {
                        json_object_put(o);
                        reply_problem(c, 500, "Out of memory.");
                        return;
                }
        }

        /* One row more than asked for was read: there is a next page. */
        if (n > limit) {
                _cleanup_free_ char *cursor = task_store_cursor(tasks[limit - 1]), *link = NULL;

                if (cursor && asprintf(&link, "</api/tasks?limit=%u&after=%s%s%s>; rel=\"next\"", limit, cursor,
                                       c->status_filter >= 0 ? "&status=" : "",
                                       c->status_filter >= 0 ? task_status_to_string(c->status_filter) : "") >= 0)
                        (void) http_request_add_header(c->req, "Link", link);
        }
        reply_log(http_request_reply_json(c->req, 200, array));
}

static void step_list(TaskCall *c) {
        Manager *m = c->manager;
        _cleanup_json_ json_object *errors = NULL;
        const char *status, *limit, *after;
        unsigned long n = LIST_LIMIT_DEFAULT;
        int r = 0;

        c->status_filter = _TASK_STATUS_INVALID;
        status = http_request_query(c->req, "status");
        if (status) {
                c->status_filter = task_status_from_string(status);
                if (c->status_filter < 0)
                        r = json_errors_add(&errors, "status",
                                            "must be a status name (Pending, InProgress, Completed, Failed, Expired, "
                                            "Cancelled) or number (0–5)");
        }
        limit = http_request_query(c->req, "limit");
        if (limit) {
                char *end;

                errno = 0;
                n = strtoul(limit, &end, 10);
                if (isempty(limit) || *end != '\0' || errno != 0 || limit[0] == '-' || limit[0] == '+' || n < 1 ||
                    n > LIST_LIMIT_MAX)
                        r = json_errors_add(&errors, "limit", "must be a whole number from 1 to %u", LIST_LIMIT_MAX);
        }
        after = http_request_query(c->req, "after");
        if (after) {
                usec_t t;
                char id[UUID_STRING_MAX];

                if (task_store_cursor_parse(after, &t, id) < 0)
                        r = json_errors_add(&errors, "after", "must be a cursor from a Link header of this API");
        }
        if (r < 0 || errors) {
                if (r == -ENOMEM)
                        reply_problem(c, 500, "Out of memory.");
                else
                        reply_errors(c, 400, errors);
                task_call_free(c);
                return;
        }

        c->limit = (unsigned) n;
        STORE(c,
              task_store_list(m->store, owner_filter(c), c->status_filter, after, (unsigned) n + 1, on_listed, c),
              "list tasks");
}

int tasks_list(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_READ, false, step_list);
}

/* ---- PATCH /api/tasks/{id} ---- */

static void on_patched(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error < 0) {
                reply_store_error(c, error, "update a task");
                return;
        }
        t = *task;
        if (!applied) {
                reply_problem(c, 409,
                              "Task %s is InProgress: code, language, inputData and ttl cannot be changed while it "
                              "runs.", t->id);
                return;
        }
        log_info("Task %s (owner %s) updated by key %s from %s (fields 0x%x).", t->id, t->owner_id, c->caller.key_id,
                 c->client, c->patch.fields);
        if ((c->patch.fields & TASK_PATCH_STATUS) && t->status == TASK_PENDING)
                dispatch_task(c->manager->dispatch, t->id, t->retry_count);
        reply_task(c, 200, t);
        wake_waiters(c, t);
}

static void step_patch(TaskCall *c) {
        Manager *m = c->manager;
        _cleanup_json_ json_object *errors = NULL;
        unsigned forbidden;
        int r;

        if (!require_id(c))
                return;
        if (!read_body(c, task_create_body_limit(&m->limits) + task_complete_body_limit(&m->limits), false))
                return;

        r = task_patch_from_json(c->body, &m->limits, &c->patch, &errors);
        if (r < 0) {
                if (r == -ENOMEM)
                        reply_problem(c, 500, "Out of memory.");
                else
                        reply_errors(c, 400, errors);
                task_call_free(c);
                return;
        }

        /* Execution fields are the workers' (and admins') business: no mass assignment. */
        forbidden = c->caller.claims & (CLAIM_TASKS_EXECUTE | CLAIM_TASKS_ADMIN) ? 0
                                                                                   : c->patch.fields & TASK_PATCH_EXECUTION_FIELDS;
        if (forbidden) {
                for (unsigned f = 1; f <= TASK_PATCH_USER_ID; f <<= 1)
                        if (forbidden & f &&
                            json_errors_add(&errors, task_patch_field_name(f),
                                            "may only be set with the claim tasks:execute or tasks:admin") < 0) {
                                reply_problem(c, 500, "Out of memory.");
                                task_call_free(c);
                                return;
                        }
                log_notice("Refused to let key %s from %s set execution fields of task %s (claim tasks:write only).",
                           c->caller.key_id, c->client, c->id);
                reply_errors(c, 403, errors);
                task_call_free(c);
                return;
        }

        STORE(c, task_store_patch(m->store, c->id, owner_filter(c), &c->patch, on_patched, c), "update a task");
}

int tasks_patch(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_WRITE, true, step_patch);
}

/* ---- POST /api/tasks/{id}/retry, /cancel ---- */

static void on_retried(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error < 0) {
                reply_store_error(c, error, "retry a task");
                return;
        }
        t = *task;
        if (!applied) {
                reply_problem(c, 409,
                              "Task %s is %s and cannot be retried; only Completed, Failed, Expired or Cancelled "
                              "tasks can.", t->id, task_status_to_string(t->status));
                return;
        }
        log_info("Task %s (owner %s) retried (run %u) by key %s from %s.", t->id, t->owner_id, t->retry_count,
                 c->caller.key_id, c->client);
        dispatch_task(c->manager->dispatch, t->id, t->retry_count);
        reply_task(c, 200, t);
}

static void step_retry(TaskCall *c) {
        if (!require_id(c) || !read_body(c, TASK_SMALL_BODY_LIMIT, true))
                return;
        STORE(c, task_store_retry(c->manager->store, c->id, owner_filter(c), on_retried, c), "retry a task");
}

int tasks_retry(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_WRITE, true, step_retry);
}

static void on_cancelled(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error < 0) {
                reply_store_error(c, error, "cancel a task");
                return;
        }
        t = *task;
        if (!applied) {
                reply_problem(c, 409, "Task %s is %s and cannot be cancelled; only Pending or InProgress tasks can.",
                              t->id, task_status_to_string(t->status));
                return;
        }
        log_info("Task %s (owner %s) cancelled by key %s from %s.", t->id, t->owner_id, c->caller.key_id, c->client);
        /* Running workers hear it on the events exchange (and from the status NOTIFY). */
        dispatch_event(c->manager->dispatch, "cancelled", t->id);
        reply_task(c, 200, t);
        wake_waiters(c, t);
}

static void step_cancel(TaskCall *c) {
        if (!require_id(c) || !read_body(c, TASK_SMALL_BODY_LIMIT, true))
                return;
        STORE(c, task_store_cancel(c->manager->store, c->id, owner_filter(c), on_cancelled, c), "cancel a task");
}

int tasks_cancel(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_WRITE, true, step_cancel);
}

/* ---- worker protocol: claim, heartbeat, complete ---- */

static void on_claimed(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error < 0) {
                reply_store_error(c, error, "claim a task");
                return;
        }
        t = *task;
        if (!applied) {
                if (t->status == TASK_EXPIRED)
                        reply_problem(c, 409, "Task %s is not claimable: it expired (expiresAt passed).", t->id);
                else
                        reply_problem(c, 409, "Task %s is not claimable: it is %s.", t->id,
                                      task_status_to_string(t->status));
                return;
        }
        log_info("Task %s (owner %s) claimed, attempt %u, by worker %s with key %s from %s.", t->id, t->owner_id,
                 t->attempt, strna(t->worker), c->caller.key_id, c->client);
        reply_task(c, 200, t);
}

static void step_claim(TaskCall *c) {
        _cleanup_json_ json_object *errors = NULL;
        const char *worker = NULL, *header;
        int r;

        if (!require_id(c) || !read_body(c, TASK_SMALL_BODY_LIMIT, true))
                return;

        r = task_claim_from_json(c->body, &worker, &errors);
        header = http_request_header(c->req, "X-Worker");
        if (r >= 0 && !worker && header) {
                if (task_worker_name_is_valid(header))
                        worker = header;
                else
                        r = json_errors_add(&errors, "X-Worker", "must be 1–%d printable characters", TASK_WORKER_MAX)
                                    ?: -EINVAL;
        }
        if (r < 0) {
                if (r == -ENOMEM)
                        reply_problem(c, 500, "Out of memory.");
                else
                        reply_errors(c, 400, errors);
                task_call_free(c);
                return;
        }
        STORE(c, task_store_claim(c->manager->store, c->id, worker, c->manager->lease_duration, on_claimed, c),
              "claim a task");
}

int tasks_claim(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_EXECUTE, true, step_claim);
}

static void on_heartbeat(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error < 0) {
                reply_store_error(c, error, "extend a lease");
                return;
        }
        t = *task;
        if (!applied) {
                reply_problem(c, 409,
                              "Attempt %u of task %s is no longer current (the task is %s, attempt %u).",
                              c->attempt, t->id, task_status_to_string(t->status), t->attempt);
                return;
        }
        log_debug("Lease of task %s, attempt %u, extended by key %s from %s.", t->id, t->attempt, c->caller.key_id,
                  c->client);
        if (c->req)
                reply_log(http_request_reply_empty(c->req, 204));
}

static void step_heartbeat(TaskCall *c) {
        _cleanup_json_ json_object *errors = NULL;
        int r;

        if (!require_id(c) || !read_body(c, TASK_SMALL_BODY_LIMIT, false))
                return;
        r = task_heartbeat_from_json(c->body, &c->attempt, &errors);
        if (r < 0) {
                if (r == -ENOMEM)
                        reply_problem(c, 500, "Out of memory.");
                else
                        reply_errors(c, 400, errors);
                task_call_free(c);
                return;
        }
        STORE(c,
              task_store_heartbeat(c->manager->store, c->id, c->attempt, c->manager->lease_duration, on_heartbeat, c),
              "extend a lease");
}

int tasks_heartbeat(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_EXECUTE, true, step_heartbeat);
}

static void on_completed(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error < 0) {
                reply_store_error(c, error, "complete a task");
                return;
        }
        t = *task;
        if (!applied) {
                log_notice("Refused the result of task %s, attempt %u, from key %s at %s: the task is %s, attempt %u.",
                           t->id, c->completion.attempt, c->caller.key_id, c->client, task_status_to_string(t->status),
                           t->attempt);
                reply_problem(c, 409,
                              "Attempt %u of task %s cannot complete: the task is %s, attempt %u.",
                              c->completion.attempt, t->id, task_status_to_string(t->status), t->attempt);
                return;
        }
        log_info("Task %s (owner %s) %s, attempt %u, verdict %s, reported by key %s from %s.", t->id, t->owner_id,
                 task_status_to_string(t->status), t->attempt, strna(t->verdict), c->caller.key_id, c->client);
        reply_task(c, 200, t);
        wake_waiters(c, t);
}

static void step_complete(TaskCall *c) {
        Manager *m = c->manager;
        _cleanup_json_ json_object *errors = NULL;
        int r;

        if (!require_id(c) || !read_body(c, task_complete_body_limit(&m->limits), false))
                return;
        r = task_completion_from_json(c->body, &m->limits, &c->completion, &errors);
        if (r < 0) {
                if (r == -ENOMEM)
                        reply_problem(c, 500, "Out of memory.");
                else
                        reply_errors(c, 400, errors);
                task_call_free(c);
                return;
        }
        STORE(c, task_store_complete(m->store, c->id, &c->completion, on_completed, c), "complete a task");
}

int tasks_complete(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_EXECUTE, true, step_complete);
}

/* ---- POST /api/tasks/{id}/release (worker protocol) ---- */

/* A worker that stops gives its attempt back without a result: the task is Pending again
 * (the attempt stays counted) and is published at once for another worker. Fenced like
 * heartbeat and complete. */
static void on_released(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(task_call_freep) TaskCall *c = userdata;
        const Task *t;

        c->busy = false; /* without a request (shutdown) the outcome is still logged and acted on */
        if (error < 0) {
                reply_store_error(c, error, "release a task");
                return;
        }
        t = *task;
        if (!applied) {
                reply_problem(c, 409,
                              "Attempt %u of task %s is no longer current (the task is %s, attempt %u).",
                              c->attempt, t->id, task_status_to_string(t->status), t->attempt);
                return;
        }
        log_info("Task %s (owner %s) released by its worker (attempt %u) with key %s from %s; Pending again.", t->id,
                 t->owner_id, c->attempt, c->caller.key_id, c->client);
        dispatch_task(c->manager->dispatch, t->id, t->retry_count);
        if (c->req)
                reply_log(http_request_reply_empty(c->req, 204));
}

static void step_release(TaskCall *c) {
        _cleanup_json_ json_object *errors = NULL;
        int r;

        if (!require_id(c) || !read_body(c, TASK_SMALL_BODY_LIMIT, false))
                return;
        r = task_heartbeat_from_json(c->body, &c->attempt, &errors); /* the same body: {"attempt": N} */
        if (r < 0) {
                if (r == -ENOMEM)
                        reply_problem(c, 500, "Out of memory.");
                else
                        reply_errors(c, 400, errors);
                task_call_free(c);
                return;
        }
        STORE(c, task_store_release(c->manager->store, c->id, c->attempt, on_released, c), "release a task");
}

int tasks_release(HttpRequest *req, void *userdata) {
        return task_call_begin(req, userdata, CLAIM_TASKS_EXECUTE, true, step_release);
}
