/* SPDX-License-Identifier: MIT */
#include "bus-util.h"
#include "bus.h"
#include "dispatch.h"
#include "json-util.h"
#include "log.h"
#include "manager.h"
#include "task-store.h"

#define BUS_ERROR_NOT_FOUND "org.dtask.Tasks1.Error.NotFound"
#define BUS_ERROR_CONFLICT "org.dtask.Tasks1.Error.Conflict"
#define BUS_ERROR_UNAVAILABLE "org.dtask.Tasks1.Error.Unavailable"
/* After changes the live counts (Pending, InProgress: read through the index of live tasks,
 * so a count costs as much as the backlog is long) are refreshed within
 * COUNTS_DEBOUNCE_USEC; the terminal ones, a scan of the whole history, as rarely as
 * task_stats_full_interval() says. Under steady work these counts were a sixth of
 * PostgreSQL's time per task at 0.2 s and 2 s. */
#define COUNTS_DEBOUNCE_USEC (1 * USEC_PER_SEC)
#define LIST_LIMIT_DEFAULT 100U
#define LIST_LIMIT_MAX 1000U

typedef struct CountQuery CountQuery;

struct ApiBus {
        Manager *manager;
        BusService *service;

        /* cached task counts for the properties */
        uint64_t counts[_TASK_STATUS_MAX];
        sd_event_source *count_timer;
        CountQuery *counting;   /* in flight */
        bool recount;           /* changes came in while counting */
        bool full_due;          /* the terminal counts may be out of date */
        usec_t full_counted_at; /* CLOCK_MONOTONIC start of the last count of every status */
        usec_t full_took;       /* how long that count took */
};

struct CountQuery {
        ApiBus *bus; /* NULL once the bus object is gone */
        bool full;   /* every status, not only the live ones */
        usec_t sent; /* CLOCK_MONOTONIC */
};

typedef enum BusOp {
        OP_CREATE,
        OP_GET,
        OP_RETRY,
        OP_CANCEL,
        OP_UPDATE,
} BusOp;

/* One method call waiting for the store. Holds no pointer to ApiBus (which may go away
 * first at shutdown); replies go out through the message's own bus reference. */
typedef struct BusCall {
        Manager *manager;
        sd_bus_message *message;
        BusOp op;
        uid_t uid;
        char id[UUID_STRING_MAX];
        json_object *body;
        TaskCreate create;
        TaskPatch patch;
        TaskStatus status_filter;
        unsigned limit;
} BusCall;

static BusCall *bus_call_free(BusCall *c) {
        if (!c)
                return NULL;
        sd_bus_message_unref(c->message);
        json_object_put(c->body);
        return mfree(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(BusCall *, bus_call_free);

static BusCall *bus_call_new(Manager *m, sd_bus_message *message, BusOp op, uid_t uid) {
        BusCall *c = calloc(1, sizeof *c);

        if (!c)
                return NULL;
        c->manager = m;
        c->message = sd_bus_message_ref(message);
        c->op = op;
        c->uid = uid;
        return c;
}

static void reply_log(int r) {
        if (r < 0)
                log_debug_errno(r, "Failed to send a D-Bus reply: %m");
}

static int reply_store_error(BusCall *c, int error, const char *what) {
        if (error == -ENOENT)
                return sd_bus_reply_method_errorf(c->message, BUS_ERROR_NOT_FOUND, "No task with id %s.", c->id);
        if (error_is_unavailable(error)) {
                log_warning_errno(error, "Cannot %s over D-Bus, the database is unavailable: %m", what);
                return sd_bus_reply_method_errorf(c->message, BUS_ERROR_UNAVAILABLE,
                                                  "The task database is unavailable; try again later.");
        }
        log_error_errno(error, "Failed to %s: %m", what);
        return sd_bus_reply_method_errorf(c->message, SD_BUS_ERROR_FAILED, "Failed to %s.", what);
}

static int check_ready(Manager *m, sd_bus_error *error) {
        if (manager_is_ready(m))
                return 0;
        return sd_bus_error_setf(error, BUS_ERROR_UNAVAILABLE, "The task database is not ready yet; try again later.");
}

static int invalid_args(sd_bus_error *error, json_object *errors) {
        _cleanup_free_ char *summary = json_errors_summary(errors);

        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "%s", summary ?: "invalid arguments");
}

static void reply_task(BusCall *c, const Task *t, bool with_id) {
        _cleanup_json_ json_object *o = NULL;
        int r;

        r = task_to_json(t, &o);
        if (r < 0) {
                reply_log(sd_bus_reply_method_errnof(c->message, r, "Failed to format the task: %m"));
                return;
        }
        if (with_id)
                reply_log(sd_bus_reply_method_return(c->message, "ss", t->id, json_to_string(o, NULL)));
        else
                reply_log(sd_bus_reply_method_return(c->message, "s", json_to_string(o, NULL)));
}

static void on_task(int error, Task **task, bool applied, void *userdata) {
        _cleanup_(bus_call_freep) BusCall *c = userdata;
        static const char *const what[] = {
                [OP_CREATE] = "create a task", [OP_GET] = "read a task",   [OP_RETRY] = "retry a task",
                [OP_CANCEL] = "cancel a task", [OP_UPDATE] = "update a task",
        };
        const Task *t;

        if (error < 0) {
                reply_log(reply_store_error(c, error, what[c->op]));
                return;
        }
        t = *task;

        switch (c->op) {
        case OP_CREATE:
                log_info("Task %s created (%s) over D-Bus by uid " UID_FMT ".", t->id,
                         task_language_to_string(t->language), c->uid);
                dispatch_task(c->manager->dispatch, t->id, t->retry_count);
                manager_task_changed(c->manager, t->id, t->status, t->attempt);
                break;
        case OP_GET:
                break;
        case OP_RETRY:
                if (!applied) {
                        reply_log(sd_bus_reply_method_errorf(
                                c->message, BUS_ERROR_CONFLICT,
                                "Task %s is %s and cannot be retried; only Completed, Failed, Expired or Cancelled "
                                "tasks can.", t->id, task_status_to_string(t->status)));
                        return;
                }
                log_info("Task %s (owner %s) retried (run %u) over D-Bus by uid " UID_FMT ".", t->id, t->owner_id,
                         t->retry_count, c->uid);
                dispatch_task(c->manager->dispatch, t->id, t->retry_count);
                break;
        case OP_CANCEL:
                if (!applied) {
                        reply_log(sd_bus_reply_method_errorf(
                                c->message, BUS_ERROR_CONFLICT,
                                "Task %s is %s and cannot be cancelled; only Pending or InProgress tasks can.", t->id,
                                task_status_to_string(t->status)));
                        return;
                }
                log_info("Task %s (owner %s) cancelled over D-Bus by uid " UID_FMT ".", t->id, t->owner_id, c->uid);
                dispatch_event(c->manager->dispatch, "cancelled", t->id);
                break;
        case OP_UPDATE:
                if (!applied) {
                        reply_log(sd_bus_reply_method_errorf(
                                c->message, BUS_ERROR_CONFLICT,
                                "Task %s is InProgress: code, language, inputData and ttl cannot be changed while it "
                                "runs.", t->id));
                        return;
                }
                log_info("Task %s (owner %s) updated over D-Bus by uid " UID_FMT " (fields 0x%x).", t->id, t->owner_id,
                         c->uid, c->patch.fields);
                if ((c->patch.fields & TASK_PATCH_STATUS) && t->status == TASK_PENDING)
                        dispatch_task(c->manager->dispatch, t->id, t->retry_count);
                break;
        }
        reply_task(c, t, c->op == OP_CREATE);
}

/* Starts a store operation; on failure to start, replies with the error. */
static int start(BusCall *c, int r) {
        _cleanup_(bus_call_freep) BusCall *owned = c;

        if (r < 0) {
                reply_log(reply_store_error(c, r, "run the request"));
                return 1;
        }
        TAKE_PTR(owned);
        return 1;
}

/* ---- methods ---- */

static int method_create_task(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = ((ApiBus *) userdata)->manager;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        _cleanup_json_ json_object *errors = NULL;
        const char *name, *code, *language, *input, *ttl;
        TaskInsert insert;
        uid_t uid;
        int r;

        r = bus_require_admin(message, &uid, error);
        if (r < 0)
                return r;
        r = check_ready(m, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(message, "sssss", &name, &code, &language, &input, &ttl);
        if (r < 0)
                return r;

        c = bus_call_new(m, message, OP_CREATE, uid);
        if (!c)
                return -ENOMEM;
        /* The same validation as REST: build the request body. */
        c->body = json_object_new_object();
        if (!c->body)
                return -ENOMEM;
        if ((r = json_add_string(c->body, "name", name)) < 0 || (r = json_add_string(c->body, "code", code)) < 0 ||
            (r = json_add_string(c->body, "language", language)) < 0 ||
            (r = json_add_string(c->body, "inputData", isempty(input) ? NULL : input)) < 0 ||
            (r = json_add_string(c->body, "ttl", ttl)) < 0)
                return r;
        r = task_create_from_json(c->body, &m->limits, &c->create, &errors);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return invalid_args(error, errors);

        insert = (TaskInsert) {
                .create = &c->create,
                .owner_id = API_SYSTEM_OWNER_ID,
                .max_attempts = m->max_attempts,
        };
        r = task_store_insert(m->store, &insert, on_task, c);
        return start(TAKE_PTR(c), r);
}

static int method_get_task(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = ((ApiBus *) userdata)->manager;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        int r;

        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, OP_GET, BUS_UID_INVALID);
        if (!c)
                return -ENOMEM;
        r = bus_read_uuid(message, "task", c->id, error);
        if (r < 0)
                return r;
        r = task_store_get(m->store, c->id, NULL, on_task, c);
        return start(TAKE_PTR(c), r);
}

static void on_listed(int error, Task **tasks, size_t n, void *userdata) {
        _cleanup_(bus_call_freep) BusCall *c = userdata;
        _cleanup_json_ json_object *array = NULL;
        _cleanup_free_ char *cursor = NULL;
        int r;

        if (error < 0) {
                reply_log(reply_store_error(c, error, "list tasks"));
                return;
        }
        array = json_object_new_array();
        if (!array) {
                reply_log(sd_bus_reply_method_errnof(c->message, ENOMEM, "Out of memory."));
                return;
        }
        for (size_t i = 0; i < n && i < c->limit; i++) {
                json_object *o = NULL;

                r = task_to_json(tasks[i], &o);
                if (r < 0 || json_object_array_add(array, o) < 0) {
                        json_object_put(o);
                        reply_log(sd_bus_reply_method_errnof(c->message, ENOMEM, "Out of memory."));
                        return;
                }
        }
        if (n > c->limit)
                cursor = task_store_cursor(tasks[c->limit - 1]);
        reply_log(sd_bus_reply_method_return(c->message, "ss", json_to_string(array, NULL), strempty(cursor)));
}

static int method_list_tasks(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = ((ApiBus *) userdata)->manager;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        const char *status, *after;
        char id[UUID_STRING_MAX];
        uint32_t limit;
        usec_t t;
        int r;

        r = check_ready(m, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(message, "sus", &status, &limit, &after);
        if (r < 0)
                return r;

        c = bus_call_new(m, message, OP_GET, BUS_UID_INVALID);
        if (!c)
                return -ENOMEM;
        c->status_filter = _TASK_STATUS_INVALID;
        if (!isempty(status)) {
                c->status_filter = task_status_from_string(status);
                if (c->status_filter < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "status: must be a status name or number (0–5), or \"\" for all");
        }
        if (limit > LIST_LIMIT_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "limit: must be at most %u (0: %u)",
                                         LIST_LIMIT_MAX, LIST_LIMIT_DEFAULT);
        c->limit = limit > 0 ? limit : LIST_LIMIT_DEFAULT;
        if (!isempty(after) && task_store_cursor_parse(after, &t, id) < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "after: must be a cursor returned by ListTasks, or \"\"");

        r = task_store_list(m->store, NULL, c->status_filter, isempty(after) ? NULL : after, c->limit + 1,
                            on_listed, c);
        return start(TAKE_PTR(c), r);
}

static int method_retry_or_cancel(sd_bus_message *message, Manager *m, BusOp op, sd_bus_error *error) {
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        uid_t uid;
        int r;

        r = bus_require_admin(message, &uid, error);
        if (r < 0)
                return r;
        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, op, uid);
        if (!c)
                return -ENOMEM;
        r = bus_read_uuid(message, "task", c->id, error);
        if (r < 0)
                return r;
        if (op == OP_RETRY)
                r = task_store_retry(m->store, c->id, NULL, on_task, c);
        else
                r = task_store_cancel(m->store, c->id, NULL, on_task, c);
        return start(TAKE_PTR(c), r);
}

static int method_retry_task(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return method_retry_or_cancel(message, ((ApiBus *) userdata)->manager, OP_RETRY, error);
}

static int method_cancel_task(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return method_retry_or_cancel(message, ((ApiBus *) userdata)->manager, OP_CANCEL, error);
}

static int method_update_task(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = ((ApiBus *) userdata)->manager;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        _cleanup_json_ json_object *errors = NULL;
        const char *patch;
        uid_t uid;
        int r;

        r = bus_require_admin(message, &uid, error);
        if (r < 0)
                return r;
        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, OP_UPDATE, uid);
        if (!c)
                return -ENOMEM;
        r = bus_read_uuid(message, "task", c->id, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(message, "s", &patch);
        if (r < 0)
                return r;

        r = task_json_parse_body(patch, strlen(patch),
                                 task_create_body_limit(&m->limits) + task_complete_body_limit(&m->limits), false,
                                 &c->body, &errors);
        if (r == -ENOMEM)
                return r;
        if (r == -E2BIG)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "changes: too large");
        if (r < 0)
                return invalid_args(error, errors);
        r = task_patch_from_json(c->body, &m->limits, &c->patch, &errors);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return invalid_args(error, errors);

        r = task_store_patch(m->store, c->id, NULL, &c->patch, on_task, c);
        return start(TAKE_PTR(c), r);
}

/* ---- properties ---- */

static int property_get_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ApiBus *b = userdata;

        for (TaskStatus s = 0; s < _TASK_STATUS_MAX; s++) {
                char name[32];

                snprintf(name, sizeof(name), "%sCount", task_status_to_string(s));
                if (streq(property, name))
                        return sd_bus_message_append(reply, "t", b->counts[s]);
        }
        return -ENOENT;
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_NAMES("CreateTask", "sssss",
                                 SD_BUS_PARAM(name) SD_BUS_PARAM(code) SD_BUS_PARAM(language)
                                 SD_BUS_PARAM(input_data) SD_BUS_PARAM(ttl),
                                 "ss", SD_BUS_PARAM(id) SD_BUS_PARAM(task), method_create_task,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("GetTask", "s", SD_BUS_PARAM(id), "s", SD_BUS_PARAM(task), method_get_task,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("ListTasks", "sus", SD_BUS_PARAM(status) SD_BUS_PARAM(limit) SD_BUS_PARAM(after),
                                 "ss", SD_BUS_PARAM(tasks) SD_BUS_PARAM(next), method_list_tasks,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("RetryTask", "s", SD_BUS_PARAM(id), "s", SD_BUS_PARAM(task), method_retry_task,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("CancelTask", "s", SD_BUS_PARAM(id), "s", SD_BUS_PARAM(task), method_cancel_task,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("UpdateTask", "ss", SD_BUS_PARAM(id) SD_BUS_PARAM(changes), "s", SD_BUS_PARAM(task),
                                 method_update_task, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_NAMES("TaskChanged", "si", SD_BUS_PARAM(id) SD_BUS_PARAM(status), 0),
        SD_BUS_PROPERTY("PendingCount", "t", property_get_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("InProgressCount", "t", property_get_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("CompletedCount", "t", property_get_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("FailedCount", "t", property_get_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ExpiredCount", "t", property_get_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("CancelledCount", "t", property_get_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END,
};

/* ---- counts ---- */

static void count_schedule(ApiBus *b, usec_t delay);

static usec_t full_interval(const ApiBus *b) {
        return task_stats_full_interval(b->full_took);
}

static void on_counted(int error, const TaskStats *stats, void *userdata) {
        _cleanup_free_ CountQuery *q = userdata;
        ApiBus *b = q->bus;
        const char *changed[_TASK_STATUS_MAX + 1] = {};
        char names[_TASK_STATUS_MAX][32];
        size_t n = 0;

        if (!b)
                return; /* the bus object is gone */
        b->counting = NULL;
        if (q->full && error >= 0) {
                usec_t now = now_usec(CLOCK_MONOTONIC);

                b->full_took = now > q->sent ? now - q->sent : 0;
                if (full_interval(b) > TASK_STATS_FULL_INTERVAL_USEC)
                        log_debug("Counting every task took %" PRIu64 " ms; the next count in %" PRIu64
                                  " s at the earliest.", b->full_took / USEC_PER_MSEC,
                                  full_interval(b) / USEC_PER_SEC);
        }

        if (error < 0) {
                log_debug_errno(error, "Failed to count tasks for D-Bus: %m");
                b->full_due = b->full_due || q->full;
        } else
                for (TaskStatus s = 0; s < _TASK_STATUS_MAX; s++) {
                        if (!q->full && task_status_is_terminal(s))
                                continue;
                        if (b->counts[s] == stats->counts[s])
                                continue;
                        b->counts[s] = stats->counts[s];
                        snprintf(names[n], sizeof(names[n]), "%sCount", task_status_to_string(s));
                        changed[n] = names[n];
                        n++;
                }
        if (n > 0 && bus_service_get_bus(b->service)) {
                int r = sd_bus_emit_properties_changed_strv(bus_service_get_bus(b->service), API_BUS_PATH, API_BUS_INTERFACE, (char **) changed);
                if (r < 0)
                        log_debug_errno(r, "Failed to emit PropertiesChanged: %m");
        }

        if (b->recount || error < 0) {
                b->recount = false;
                count_schedule(b, COUNTS_DEBOUNCE_USEC);
        } else if (b->full_due) {
                usec_t now = now_usec(CLOCK_MONOTONIC), due = b->full_counted_at + full_interval(b);

                count_schedule(b, MAX(due > now ? due - now : 0, COUNTS_DEBOUNCE_USEC));
        }
}

static int on_count_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        ApiBus *b = userdata;
        _cleanup_free_ CountQuery *q = NULL;
        int r;

        if (!manager_is_ready(b->manager))
                return 0; /* counted once migrations are done */
        if (b->counting) {
                b->recount = true;
                return 0;
        }
        q = calloc(1, sizeof(CountQuery));
        if (!q)
                return log_oom();
        q->bus = b;
        q->sent = now_usec(CLOCK_MONOTONIC);
        q->full = b->full_due && (b->full_counted_at == 0 || usec >= b->full_counted_at + full_interval(b));
        r = task_store_stats(b->manager->store, !q->full, on_counted, q);
        if (r < 0) {
                log_debug_errno(r, "Failed to count tasks for D-Bus: %m");
                return 0;
        }
        if (q->full) {
                b->full_due = false;
                b->full_counted_at = usec;
        }
        b->counting = TAKE_PTR(q);
        return 0;
}

static void count_schedule(ApiBus *b, usec_t delay) {
        int r;

        if (!b)
                return;
        if (b->count_timer) {
                int enabled = SD_EVENT_OFF;
                uint64_t when, now;

                /* Armed already: enough when it fires within delay. It may be armed for the next
                 * full count, seconds away, while a change wants the live counts within one. */
                (void) sd_event_source_get_enabled(b->count_timer, &enabled);
                if (enabled != SD_EVENT_OFF && sd_event_source_get_time(b->count_timer, &when) >= 0 &&
                    sd_event_now(b->manager->event, CLOCK_MONOTONIC, &now) >= 0 && when <= now + delay)
                        return;
                r = sd_event_source_set_time_relative(b->count_timer, delay);
                if (r >= 0)
                        r = sd_event_source_set_enabled(b->count_timer, SD_EVENT_ONESHOT);
        } else
                r = sd_event_add_time_relative(b->manager->event, &b->count_timer, CLOCK_MONOTONIC, delay,
                                               10 * USEC_PER_MSEC, on_count_timer, b);
        if (r < 0)
                log_debug_errno(r, "Failed to schedule counting tasks: %m");
}

void api_bus_refresh_counts(ApiBus *b) {
        if (!b)
                return;
        b->full_due = true;
        count_schedule(b, COUNTS_DEBOUNCE_USEC);
}

void api_bus_task_changed(ApiBus *b, const char *id, TaskStatus status) {
        int r;

        if (!b)
                return;
        if (bus_service_get_bus(b->service)) {
                r = sd_bus_emit_signal(bus_service_get_bus(b->service), API_BUS_PATH, API_BUS_INTERFACE, "TaskChanged", "si", id, (int32_t) status);
                if (r < 0)
                        log_debug_errno(r, "Failed to emit TaskChanged: %m");
        }
        b->full_due = true;
        count_schedule(b, COUNTS_DEBOUNCE_USEC);
}

/* ---- connection ---- */

static void on_bus_state(BusService *service, bool connected, int error, void *userdata) {
        if (connected) {
                log_info("Offering %s on the system bus.", API_BUS_NAME);
                return;
        }
        log_warning_errno(error, "D-Bus interface %s unavailable (%s: %m); serving REST only, retrying every %us.",
                          API_BUS_NAME, bus_service_error_reason(error), (unsigned) (API_BUS_RETRY_USEC / USEC_PER_SEC));
}

int api_bus_new(ApiBus **ret, Manager *m) {
        _cleanup_(api_bus_freep) ApiBus *b = NULL;
        int r;

        b = calloc(1, sizeof(ApiBus));
        if (!b)
                return log_oom();
        b->manager = m;
        r = bus_service_new(&b->service, m->event,
                            &(BusServiceSettings) {
                                    .description = "dtask-api",
                                    .name = API_BUS_NAME,
                                    .path = API_BUS_PATH,
                                    .interface = API_BUS_INTERFACE,
                                    .vtable = manager_vtable,
                                    .vtable_userdata = b, /* methods reach the manager through it */
                                    .retry_usec = API_BUS_RETRY_USEC,
                                    .state = on_bus_state,
                            });
        if (r < 0)
                return log_error_errno(r, "Failed to set up the D-Bus interface: %m");
        *ret = TAKE_PTR(b);
        return 0;
}

ApiBus *api_bus_free(ApiBus *b) {
        if (!b)
                return NULL;
        if (b->counting)
                b->counting->bus = NULL; /* on_counted() frees it */
        b->count_timer = sd_event_source_disable_unref(b->count_timer);
        b->service = bus_service_free(b->service);
        return mfree(b);
}
