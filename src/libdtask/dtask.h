/* SPDX-License-Identifier: MIT */
#ifndef DTASK_H
#define DTASK_H

/* libdtask — the C client of the dtask task REST API (dtask-api, SPEC §3).
 *
 * Link with `pkg-config --cflags --libs dtask`; include as <dtask/dtask.h>.
 *
 * TWO WAYS TO USE IT
 *
 *   Asynchronous, non-blocking (daemons, anything with an event loop):
 *     dtask_client_new() attaches the client to YOUR sd-event loop. Every operation
 *     (dtask_create(), dtask_get(), dtask_claim(), …) queues one HTTP request and returns at
 *     once; its callback runs later, from the loop, exactly once — never from within the
 *     call that queued it. Nothing blocks after dtask_client_new(), which may block in
 *     getaddrinfo() when the URL names a host rather than a numeric address (create clients
 *     at start-up). Programs built on another loop can embed sd-event: poll
 *     sd_event_get_fd() and call sd_event_run(e, 0) when it is readable.
 *
 *   Blocking, by design (simple programs, command-line tools such as dtaskctl):
 *     dtask_client_new_blocking() creates a client with a PRIVATE sd-event loop; each
 *     *_sync() function sends one request and runs that private loop until the reply
 *     arrived or the request timed out (dtask_client_set_timeout(), default 30 s; a get
 *     with wait_sec waits that much longer). The _sync() functions refuse clients made by
 *     dtask_client_new() (-EOPNOTSUPP): they would run someone else's loop.
 *
 * A client is not thread-safe: use it from one thread (the thread of its loop).
 *
 * ERRORS are negative errno values; 0 (or a documented positive value) is success. When
 * the server answered with an error status, the error is mapped from it:
 *     400 -EINVAL        (validation: the problem detail names the field)
 *     401 -EKEYREJECTED  (API key missing, invalid, inactive or expired; -ENOKEY when the
 *                         client has no key at all)
 *     403 -EPERM         (the key lacks the claim: tasks:read/write/execute/admin)
 *     404 -ENOENT        (no such task, or another tenant's task)
 *     405 -EOPNOTSUPP    409 -EBUSY (conflict: cannot be retried/cancelled/claimed now)
 *     409 -ESTALE        for dtask_heartbeat()/dtask_complete(): the attempt is fenced
 *                        (no longer current, or the task is no longer InProgress)
 *     413 -E2BIG         415 -EPROTO
 *     422 -EEXIST        for dtask_create(): the Idempotency-Key was used with another request
 *     429, 503 -EAGAIN   (try again later)   504 -ETIMEDOUT   other 5xx -EIO
 *     2xx with a body that is not what the API sends: -EBADMSG
 * Transport errors come as they are: -ECONNREFUSED, -ENETUNREACH, -EHOSTUNREACH,
 * -ETIMEDOUT, -ECONNRESET, -EBADMSG (not HTTP), -EMSGSIZE (reply too large),
 * -ECANCELED (the client is being freed). The server's RFC 9457 problem document
 * (title, detail, errors) and the HTTP status are in the DtaskReply given to every
 * callback, and after a _sync() call in dtask_client_get_last_reply().
 *
 * The API key travels in the X-ApiKey header. The library never logs or prints it and wipes
 * its copies from memory when they are freed.
 *
 * EXAMPLES
 *
 *   Blocking:
 *     DtaskClient *c;  DtaskTask *t;
 *     r = dtask_client_new_blocking(&c, "http://127.0.0.1:8080", getenv("DTASK_API_KEY"));
 *     r = dtask_create_sync(c, &(DtaskTaskSpec) { .name = "hello", .code = "print('hi')",
 *                                                 .language = DTASK_LANGUAGE_PYTHON, .ttl = "5min" }, &t);
 *     if (r < 0) fprintf(stderr, "%s\n", dtask_client_get_last_reply(c)->problem_detail ?: strerror(-r));
 *     r = dtask_get_sync(c, t->id, 60, &done);   // long-poll: returns when it finished, or after 60 s
 *
 *   Asynchronous (a worker):
 *     static void on_claimed(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply, void *u) {
 *             if (error == -EBUSY) return;            // someone else has it, or it was cancelled
 *             ... run task->code, heartbeat with task->attempt, then dtask_complete() ...
 *     }
 *     r = dtask_client_new(&c, event, url, key);
 *     r = dtask_claim(c, id, "host/1", on_claimed, worker, NULL);
 *
 * Exported symbols all start with dtask_; the ABI is versioned (LIBDTASK_0). The structs
 * below that the library hands out (DtaskTask, DtaskTaskList, DtaskReply) are allocated by
 * the library only; later versions may append members. DtaskTaskSpec and DtaskCompletion
 * are filled by the caller: initialize them with designated initializers (unset members
 * are zero). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the task model (SPEC §2) ---------------------------------------------------------- */

/* Numbers as on the wire. */
typedef enum DtaskStatus {
        DTASK_STATUS_PENDING = 0,
        DTASK_STATUS_IN_PROGRESS = 1,
        DTASK_STATUS_COMPLETED = 2,
        DTASK_STATUS_FAILED = 3,
        DTASK_STATUS_EXPIRED = 4,
        DTASK_STATUS_CANCELLED = 5,
        DTASK_STATUS_ANY = -1, /* dtask_list(): no filter; dtask_status_from_string(): invalid */
} DtaskStatus;

/* Numbers as on the wire (compat: 0 is CSharp). */
typedef enum DtaskLanguage {
        DTASK_LANGUAGE_CSHARP = 0,
        DTASK_LANGUAGE_PYTHON = 1,
        DTASK_LANGUAGE_UNKNOWN = -1, /* a language this library does not know */
} DtaskLanguage;

/* "Pending", "InProgress", …; NULL for an unknown value. */
const char *dtask_status_to_string(DtaskStatus s);
/* Case-insensitive "Pending", "InProgress"/"in_progress"/"in-progress", …, or "0".."5";
 * DTASK_STATUS_ANY when it is none of them. */
DtaskStatus dtask_status_from_string(const char *s);
/* Completed, Failed, Expired or Cancelled. */
bool dtask_status_is_terminal(DtaskStatus s);

/* "CSharp", "Python"; NULL for DTASK_LANGUAGE_UNKNOWN. */
const char *dtask_language_to_string(DtaskLanguage l);
/* Case-insensitive "python"/"csharp" (also "c#", "cs", "py"), or "0"/"1". */
DtaskLanguage dtask_language_from_string(const char *s);

/* A task as the API returned it. Strings are NUL-terminated UTF-8; NULL stands for JSON null
 * or a member the server did not send. Times are microseconds since the Unix epoch (UTC),
 * 0 for null. */
typedef struct DtaskTask {
        char *id;                 /* UUID */
        char *name;
        char *code;
        DtaskLanguage language;
        char *input_data;         /* given to the program on stdin */
        char *user_id;            /* id of the API key that owns the task */
        DtaskStatus status;
        char *status_name;
        char *result;             /* stdout of the program */
        char *error_message;      /* stderr, or the reason it failed/expired */
        bool has_exit_code;
        int exit_code;            /* valid when has_exit_code */
        char *verdict;            /* "ok", "runtime_error", "compile_error", "timeout", … */
        bool output_truncated;
        char *ttl;                /* .NET TimeSpan text as sent: "00:30:00", "1.00:00:00" */
        uint64_t ttl_usec;
        uint64_t created_at;
        uint64_t started_at;
        uint64_t completed_at;
        uint64_t expires_at;
        unsigned retry_count;
        unsigned attempt;
        char *json;               /* the whole task object as received, compact JSON text */
} DtaskTask;

DtaskTask *dtask_task_free(DtaskTask *t); /* accepts NULL, returns NULL */
/* A deep copy (for keeping a task handed to a callback); -ENOMEM. */
int dtask_task_dup(const DtaskTask *t, DtaskTask **ret);

/* One page of GET /api/tasks, oldest first. */
typedef struct DtaskTaskList {
        DtaskTask **tasks;
        size_t n_tasks;
        char *next_cursor;        /* pass as `after` for the next page; NULL on the last page */
} DtaskTaskList;

DtaskTaskList *dtask_task_list_free(DtaskTaskList *l); /* accepts NULL, returns NULL */

/* "2026-11-28T18:06:45.123456Z" into buf (at least DTASK_TIMESTAMP_MAX bytes); "" for 0.
 * Returns buf. */
#define DTASK_TIMESTAMP_MAX 40
char *dtask_timestamp_format(uint64_t usec, char *buf, size_t size);

/* ---- the client ------------------------------------------------------------------------ */

typedef struct DtaskClient DtaskClient;
/* One request in flight; valid until its callback runs. Only for dtask_call_cancel(). */
typedef struct DtaskCall DtaskCall;

/* What the server said, beyond the result. Borrowed: valid during the callback (or, from
 * dtask_client_get_last_reply(), until the next call on the client). */
typedef struct DtaskReply {
        unsigned http_status;       /* 0: no HTTP response (transport error, or not sent) */
        const char *problem_type;   /* RFC 9457 members of an error reply, NULL when absent */
        const char *problem_title;
        const char *problem_detail; /* the human-readable reason: print this */
        const char *problem_errors; /* "errors" (field → [messages]) as JSON text, NULL when absent */
        const char *location;       /* Location header (create), NULL when absent */
        bool replayed;              /* create: the Idempotency-Key matched an earlier request, the
                                     * original task is returned (200, nothing new created) */
} DtaskReply;

/* base_url: "http://HOST[:PORT][/PREFIX]" (https is not supported yet: -EPROTONOSUPPORT).
 * api_key: sent as X-ApiKey with every request; may be NULL (then every task operation
 * fails with -ENOKEY from the server's 401). The key is copied.
 * Errors: -EINVAL (malformed URL), -EPROTONOSUPPORT, -EADDRNOTAVAIL (host did not resolve),
 * -ENOMEM. The client holds a reference on event. */
int dtask_client_new(DtaskClient **ret, sd_event *event, const char *base_url, const char *api_key);
/* The same with a private event loop, for the _sync() functions. */
int dtask_client_new_blocking(DtaskClient **ret, const char *base_url, const char *api_key);
/* Cancels every request in flight — their callbacks run from within this call with
 * -ECANCELED — and frees the client. Accepts NULL, returns NULL; may be called from a
 * callback. */
DtaskClient *dtask_client_free(DtaskClient *c);

/* The loop the client runs on (private for a blocking client). Not a new reference. */
sd_event *dtask_client_get_event(DtaskClient *c);
/* Deadline of each request, from queueing to the complete reply; 0 restores the default
 * (30 s). dtask_get() with wait_sec adds wait_sec to it. */
int dtask_client_set_timeout(DtaskClient *c, uint64_t usec);
/* The reply of the last _sync() call on this client (also set when it failed). */
const DtaskReply *dtask_client_get_last_reply(DtaskClient *c);

/* Callbacks. error < 0: the call failed (see ERRORS above), task/list is NULL. The task or
 * list is borrowed: it is freed when the callback returns — dtask_task_dup() what you keep.
 * reply is never NULL. A callback may start new calls, cancel others, free the client. */
typedef void (*DtaskTaskCallback)(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply,
                                  void *userdata);
typedef void (*DtaskListCallback)(DtaskClient *c, int error, const DtaskTaskList *list, const DtaskReply *reply,
                                  void *userdata);
typedef void (*DtaskDoneCallback)(DtaskClient *c, int error, const DtaskReply *reply, void *userdata);

/* The callback will not run; the request is dropped (if it was already sent, the server may
 * still act on it). Accepts NULL. A no-op from within that call's own callback. */
void dtask_call_cancel(DtaskCall *call);

/* The asynchronous operations all return 0 when the request was queued (the callback will
 * run later), or a negative errno when it was not (the callback will never run): -EINVAL
 * for bad arguments (an id that is not a UUID, a missing name/code/ttl, …), -EAGAIN when too
 * many requests are queued, -ENOMEM. ret_call (optional) gets a handle for cancelling. */

/* POST /api/tasks (claim tasks:write) */
typedef struct DtaskTaskSpec {
        const char *name;            /* required, 1–250 characters */
        const char *code;            /* required, non-empty */
        DtaskLanguage language;      /* DTASK_LANGUAGE_PYTHON or DTASK_LANGUAGE_CSHARP */
        const char *input_data;      /* NULL: none (empty stdin) */
        const char *ttl;             /* .NET TimeSpan "[d.]hh:mm:ss[.fffffff]", whole seconds
                                      * "1800", or a number with a unit "30min", "2h", "1d";
                                      * sent as TimeSpan text. NULL: ttl_usec is used */
        uint64_t ttl_usec;
        const char *idempotency_key; /* NULL: none. Same key + same owner within 24 h returns
                                      * the original task (reply->replayed) */
} DtaskTaskSpec;
int dtask_create(DtaskClient *c, const DtaskTaskSpec *spec, DtaskTaskCallback callback, void *userdata,
                 DtaskCall **ret_call);

/* GET /api/tasks/{id}[?wait=N] (tasks:read). wait_sec > 0: the server answers as soon as the
 * task is terminal or wait_sec passed (at most 60; more is refused with -EINVAL). */
int dtask_get(DtaskClient *c, const char *id, unsigned wait_sec, DtaskTaskCallback callback, void *userdata,
              DtaskCall **ret_call);

/* GET /api/tasks (tasks:read): one page, oldest first. status: DTASK_STATUS_ANY or a filter;
 * limit: page size 1–1000, 0 for the server's default (100); after: NULL or the next_cursor
 * of the previous page. */
int dtask_list(DtaskClient *c, DtaskStatus status, unsigned limit, const char *after, DtaskListCallback callback,
               void *userdata, DtaskCall **ret_call);

/* POST /api/tasks/{id}/retry (tasks:write): a terminal task back to Pending. -EBUSY when it
 * is Pending or InProgress. */
int dtask_retry(DtaskClient *c, const char *id, DtaskTaskCallback callback, void *userdata, DtaskCall **ret_call);
/* POST /api/tasks/{id}/cancel (tasks:write): Pending/InProgress → Cancelled. -EBUSY when it
 * has finished already. */
int dtask_cancel(DtaskClient *c, const char *id, DtaskTaskCallback callback, void *userdata, DtaskCall **ret_call);

/* Worker protocol (claim tasks:execute). */

/* POST /api/tasks/{id}/claim: atomically Pending → InProgress with a lease; the task comes
 * back with its new `attempt`. worker: a name for the logs ("host/1"), or NULL. -EBUSY when
 * the task is not claimable (taken, cancelled, expired). */
int dtask_claim(DtaskClient *c, const char *id, const char *worker, DtaskTaskCallback callback, void *userdata,
                DtaskCall **ret_call);
/* POST /api/tasks/{id}/heartbeat: extends the lease of `attempt`. -ESTALE when that attempt
 * is no longer current: stop running the task. */
int dtask_heartbeat(DtaskClient *c, const char *id, unsigned attempt, DtaskDoneCallback callback, void *userdata,
                    DtaskCall **ret_call);

/* POST /api/tasks/{id}/release: gives up `attempt` without a result (the worker is stopping):
 * the task goes back to Pending and is dispatched again; the attempt stays counted. -ESTALE
 * when that attempt is no longer current. */
int dtask_release(DtaskClient *c, const char *id, unsigned attempt, DtaskDoneCallback callback, void *userdata,
                  DtaskCall **ret_call);

typedef struct DtaskCompletion {
        unsigned attempt;            /* the attempt claimed */
        DtaskStatus status;          /* COMPLETED, FAILED or EXPIRED */
        const char *result;          /* stdout; NULL: null. Must be valid UTF-8 */
        const char *error_message;   /* stderr or reason; NULL: null. Must be valid UTF-8 */
        bool has_exit_code;
        int exit_code;               /* sent when has_exit_code, else null (killed) */
        const char *verdict;         /* "ok", "runtime_error", …; NULL: null */
        bool output_truncated;
} DtaskCompletion;
/* POST /api/tasks/{id}/complete: the final result of an attempt; the callback gets the
 * finished task. -ESTALE when fenced (wrong attempt, or the task is no longer InProgress —
 * e.g. it expired or was cancelled meanwhile): nothing was changed. */
int dtask_complete(DtaskClient *c, const char *id, const DtaskCompletion *completion, DtaskTaskCallback callback,
                   void *userdata, DtaskCall **ret_call);

/* ---- blocking wrappers (clients of dtask_client_new_blocking() only) ------------------- */

/* Same arguments and errors as above. *ret (optional, may be NULL) gets a task or list the
 * caller frees (dtask_task_free(), dtask_task_list_free()); it is set only on success.
 * The reply is in dtask_client_get_last_reply() afterwards, whatever the outcome. */
int dtask_create_sync(DtaskClient *c, const DtaskTaskSpec *spec, DtaskTask **ret);
int dtask_get_sync(DtaskClient *c, const char *id, unsigned wait_sec, DtaskTask **ret);
int dtask_list_sync(DtaskClient *c, DtaskStatus status, unsigned limit, const char *after, DtaskTaskList **ret);
int dtask_retry_sync(DtaskClient *c, const char *id, DtaskTask **ret);
int dtask_cancel_sync(DtaskClient *c, const char *id, DtaskTask **ret);
int dtask_claim_sync(DtaskClient *c, const char *id, const char *worker, DtaskTask **ret);
int dtask_heartbeat_sync(DtaskClient *c, const char *id, unsigned attempt);
int dtask_release_sync(DtaskClient *c, const char *id, unsigned attempt);
int dtask_complete_sync(DtaskClient *c, const char *id, const DtaskCompletion *completion, DtaskTask **ret);

#ifdef __cplusplus
}
#endif

#endif /* DTASK_H */
