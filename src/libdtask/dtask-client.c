/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <strings.h>

#include "dtask-wire.h"
#include "dtask.h"
#include "http-client.h"
#include "json-util.h"
#include "log.h"

/* DtaskClient: the task REST API over the shared asynchronous HTTP client, on an sd-event
 * loop that is either the caller's (dtask_client_new) or private (dtask_client_new_blocking,
 * for the _sync wrappers). Every operation is one DtaskCall: one HTTP request whose reply is
 * parsed into a task, a list or nothing, then handed to the callback — or, for a _sync call,
 * stored in the SyncState the wrapper waits on. */

#define DTASK_DEFAULT_TIMEOUT_USEC (30U * USEC_PER_SEC)

DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTask *, dtask_task_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTaskList *, dtask_task_list_free);

typedef struct SyncState {
        bool done;
        int error;
        DtaskTask *task;
        DtaskTaskList *list;
} SyncState;

struct DtaskCall {
        DtaskClient *client;
        DtaskCall *prev, *next;
        DtaskOp op;
        HttpClientRequest *request;
        DtaskTaskCallback task_callback;
        DtaskListCallback list_callback;
        DtaskDoneCallback done_callback;
        void *userdata;
        SyncState *sync;
        bool completing;
};

/* Copies of the last _sync reply, owned by the client. */
typedef struct ReplyCopy {
        DtaskReply reply;
        char *type, *title, *detail, *errors, *location;
} ReplyCopy;

struct DtaskClient {
        sd_event *event;
        bool blocking;
        HttpClient *http;
        char *key_header; /* "X-ApiKey: …", wiped when freed; NULL without a key */
        uint64_t timeout_usec;
        DtaskCall *calls;
        bool freeing;
        ReplyCopy last;
};

static void erase_string(char *s) {
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

static void reply_copy_clear(ReplyCopy *c) {
        free(c->type);
        free(c->title);
        free(c->detail);
        free(c->errors);
        free(c->location);
        *c = (ReplyCopy) {};
}

static void reply_copy_set(ReplyCopy *c, const DtaskReply *r) {
        reply_copy_clear(c);
        /* best effort: under memory pressure a member stays NULL */
        c->type = r->problem_type ? strdup(r->problem_type) : NULL;
        c->title = r->problem_title ? strdup(r->problem_title) : NULL;
        c->detail = r->problem_detail ? strdup(r->problem_detail) : NULL;
        c->errors = r->problem_errors ? strdup(r->problem_errors) : NULL;
        c->location = r->location ? strdup(r->location) : NULL;
        c->reply = (DtaskReply) {
                .http_status = r->http_status,
                .problem_type = c->type,
                .problem_title = c->title,
                .problem_detail = c->detail,
                .problem_errors = c->errors,
                .location = c->location,
                .replayed = r->replayed,
        };
}

/* ---- calls ------------------------------------------------------------------------------ */

static void call_unlink(DtaskCall *call) {
        DtaskClient *c = call->client;

        if (!c)
                return;
        if (call->prev)
                call->prev->next = call->next;
        else if (c->calls == call)
                c->calls = call->next;
        if (call->next)
                call->next->prev = call->prev;
        call->prev = call->next = NULL;
        call->client = NULL;
}

/* Hands the outcome to the callback (or the waiting _sync wrapper) and frees the call. Takes
 * ownership of task and list. Last thing a handler does: the callback may free the client. */
static void call_finish(DtaskCall *call, int error, const DtaskReply *reply, DtaskTask *task, DtaskTaskList *list) {
        _cleanup_(dtask_task_freep) DtaskTask *t = task;
        _cleanup_(dtask_task_list_freep) DtaskTaskList *l = list;
        DtaskClient *c = call->client;

        call->completing = true;
        call_unlink(call);

        if (error < 0) {
                t = dtask_task_free(t);
                l = dtask_task_list_free(l);
        }

        if (call->sync) {
                SyncState *s = call->sync;

                s->done = true;
                s->error = error;
                s->task = TAKE_PTR(t);
                s->list = TAKE_PTR(l);
                reply_copy_set(&c->last, reply);
        } else if (call->task_callback)
                call->task_callback(c, error, t, reply, call->userdata);
        else if (call->list_callback)
                call->list_callback(c, error, l, reply, call->userdata);
        else if (call->done_callback)
                call->done_callback(c, error, reply, call->userdata);

        free(call);
}

static bool reply_is_json(const HttpResponse *resp) {
        const char *ct = resp->content_type;
        size_t n;

        if (!ct)
                return false;
        n = strcspn(ct, "; \t");
        if (n == STRLEN("application/json") && strncasecmp(ct, "application/json", n) == 0)
                return true;
        return n > STRLEN("+json") && strncasecmp(ct + n - STRLEN("+json"), "+json", STRLEN("+json")) == 0;
}

static void on_http_reply(HttpClient *h, int error, const HttpResponse *resp, void *userdata) {
        DtaskCall *call = userdata;
        DtaskClient *c = call->client;
        _cleanup_json_ json_object *json = NULL;
        _cleanup_(dtask_task_freep) DtaskTask *task = NULL;
        _cleanup_(dtask_task_list_freep) DtaskTaskList *list = NULL;
        _cleanup_free_ char *errors = NULL;
        DtaskReply reply = {};
        int r = error;

        call->request = NULL;

        if (r >= 0) {
                reply.http_status = resp->status;
                reply.location = resp->location;
                r = wire_errno_from_status(call->op, resp->status, c->key_header != NULL);

                if (r < 0) {
                        /* an error: pick up the problem document, if there is one */
                        WireProblem problem;

                        if (resp->size > 0 && reply_is_json(resp) &&
                            wire_parse_body(resp->body, resp->size, &json) >= 0 &&
                            wire_problem_from_json(json, &problem) >= 0) {
                                reply.problem_type = problem.type;
                                reply.problem_title = problem.title;
                                reply.problem_detail = problem.detail;
                                reply.problem_errors = errors = problem.errors;
                        }
                        log_debug("libdtask: HTTP %u: %s", resp->status, strna(reply.problem_detail));
                } else if (call->op == DTASK_OP_HEARTBEAT || call->op == DTASK_OP_RELEASE) {
                        /* 204, nothing to parse */
                } else if (resp->status == 204 || resp->size == 0)
                        r = -EBADMSG;
                else {
                        r = wire_parse_body(resp->body, resp->size, &json);
                        if (r >= 0 && call->op == DTASK_OP_LIST) {
                                r = wire_task_list_from_json(json, &list);
                                if (r >= 0) {
                                        const char *links[16];
                                        size_t n = 0;

                                        for (size_t i = 0; i < resp->n_headers && n < ELEMENTSOF(links); i++)
                                                if (strcaseeq(resp->headers[i].name, "Link"))
                                                        links[n++] = resp->headers[i].value;
                                        r = wire_link_next_cursor(links, n, &list->next_cursor);
                                }
                        } else if (r >= 0)
                                r = wire_task_from_json(json, &task);
                        if (r == -EBADMSG)
                                log_debug("libdtask: unexpected reply body (HTTP %u)", resp->status);

                        if (call->op == DTASK_OP_CREATE) {
                                const char *replayed = http_response_header(resp, "Idempotent-Replayed");

                                reply.replayed = resp->status == 200 || (replayed && strcaseeq(replayed, "true"));
                        }
                }
        }

        call_finish(call, r < 0 ? r : 0, &reply, TAKE_PTR(task), TAKE_PTR(list));
}

typedef struct CallArgs {
        DtaskOp op;
        const char *method;
        const char *path;
        const char *body;               /* JSON text or NULL */
        const char *idempotency_key;
        uint64_t extra_timeout_usec;
        DtaskTaskCallback task_callback;
        DtaskListCallback list_callback;
        DtaskDoneCallback done_callback;
        void *userdata;
        SyncState *sync;
} CallArgs;

static int call_start(DtaskClient *c, const CallArgs *a, DtaskCall **ret_call) {
        _cleanup_free_ DtaskCall *call = NULL;
        _cleanup_free_ char *idempotency = NULL;
        const char *headers[4];
        size_t n = 0;
        uint64_t timeout;
        int r;

        if (c->freeing)
                return -ESHUTDOWN;

        call = calloc(1, sizeof(DtaskCall));
        if (!call)
                return -ENOMEM;
        call->op = a->op;
        call->task_callback = a->task_callback;
        call->list_callback = a->list_callback;
        call->done_callback = a->done_callback;
        call->userdata = a->userdata;
        call->sync = a->sync;

        if (c->key_header)
                headers[n++] = c->key_header;
        headers[n++] = "Accept: application/json, application/problem+json";
        if (a->idempotency_key) {
                if (asprintf(&idempotency, "Idempotency-Key: %s", a->idempotency_key) < 0)
                        return -ENOMEM;
                headers[n++] = idempotency;
        }
        headers[n] = NULL;

        timeout = c->timeout_usec + a->extra_timeout_usec;
        r = http_client_request(c->http, a->method, a->path, headers, a->body ? "application/json" : NULL, a->body,
                                a->body ? strlen(a->body) : 0, timeout, 0, on_http_reply, call, &call->request);
        if (r < 0)
                return r;

        call->client = c;
        call->next = c->calls;
        if (c->calls)
                c->calls->prev = call;
        c->calls = call;

        if (ret_call)
                *ret_call = call;
        TAKE_PTR(call);
        return 0;
}

_public_ void dtask_call_cancel(DtaskCall *call) {
        if (!call || call->completing)
                return;
        http_client_request_cancel(call->request);
        call_unlink(call);
        free(call);
}

/* ---- the client ------------------------------------------------------------------------- */

static int client_new(DtaskClient **ret, sd_event *event, bool blocking, const char *base_url, const char *api_key) {
        DtaskClient *c;
        const HttpClientSettings settings = {
                .max_connections = 4,
                .max_body_size = DTASK_MAX_REPLY_SIZE,
                .user_agent = "libdtask/" PACKAGE_VERSION,
        };
        int r;

        assert_return(ret, -EINVAL);
        assert_return(base_url, -EINVAL);
        if (api_key) {
                /* it goes into a header line: printable ASCII only */
                if (isempty(api_key))
                        return -EINVAL;
                for (const char *p = api_key; *p; p++)
                        if (*p < 0x21 || *p > 0x7e)
                                return -EINVAL;
        }

        c = calloc(1, sizeof(DtaskClient));
        if (!c)
                return -ENOMEM;
        c->timeout_usec = DTASK_DEFAULT_TIMEOUT_USEC;
        c->blocking = blocking;

        if (event)
                c->event = sd_event_ref(event);
        else {
                r = sd_event_new(&c->event);
                if (r < 0)
                        goto fail;
        }

        if (api_key && asprintf(&c->key_header, "X-ApiKey: %s", api_key) < 0) {
                r = -ENOMEM;
                goto fail;
        }

        r = http_client_new(&c->http, c->event, base_url, &settings);
        if (r < 0)
                goto fail;

        *ret = c;
        return 0;

fail:
        dtask_client_free(c);
        return r;
}

_public_ int dtask_client_new(DtaskClient **ret, sd_event *event, const char *base_url, const char *api_key) {
        assert_return(event, -EINVAL);
        return client_new(ret, event, false, base_url, api_key);
}

_public_ int dtask_client_new_blocking(DtaskClient **ret, const char *base_url, const char *api_key) {
        return client_new(ret, NULL, true, base_url, api_key);
}

_public_ DtaskClient *dtask_client_free(DtaskClient *c) {
        if (!c || c->freeing)
                return NULL;
        c->freeing = true;

        /* fails every request in flight with -ECANCELED: their callbacks run from here */
        c->http = http_client_free(c->http);
        /* calls not yet handed to the HTTP client cannot exist; be safe anyway */
        while (c->calls)
                dtask_call_cancel(c->calls);

        erase_string(c->key_header);
        reply_copy_clear(&c->last);
        sd_event_unref(c->event);
        return mfree(c);
}

_public_ sd_event *dtask_client_get_event(DtaskClient *c) {
        return c ? c->event : NULL;
}

_public_ int dtask_client_set_timeout(DtaskClient *c, uint64_t usec) {
        assert_return(c, -EINVAL);
        c->timeout_usec = usec > 0 ? usec : DTASK_DEFAULT_TIMEOUT_USEC;
        return 0;
}

_public_ const DtaskReply *dtask_client_get_last_reply(DtaskClient *c) {
        return c ? &c->last.reply : NULL;
}

/* ---- operations ------------------------------------------------------------------------- */

static int op_create(DtaskClient *c, const DtaskTaskSpec *spec, DtaskTaskCallback cb, void *userdata, SyncState *sync,
                     DtaskCall **ret_call) {
        _cleanup_free_ char *body = NULL;
        int r;

        assert_return(c, -EINVAL);
        assert_return(cb || sync, -EINVAL);

        r = wire_create_body(spec, &body);
        if (r < 0)
                return r;
        return call_start(c,
                          &(CallArgs) {
                                  .op = DTASK_OP_CREATE,
                                  .method = "POST",
                                  .path = "/api/tasks",
                                  .body = body,
                                  .idempotency_key = spec->idempotency_key,
                                  .task_callback = cb,
                                  .userdata = userdata,
                                  .sync = sync,
                          },
                          ret_call);
}

static int op_get(DtaskClient *c, const char *id, unsigned wait_sec, DtaskTaskCallback cb, void *userdata,
                  SyncState *sync, DtaskCall **ret_call) {
        _cleanup_free_ char *path = NULL;
        int r;

        assert_return(c, -EINVAL);
        assert_return(cb || sync, -EINVAL);

        r = wire_get_path(id, wait_sec, &path);
        if (r < 0)
                return r;
        return call_start(c,
                          &(CallArgs) {
                                  .op = DTASK_OP_GET,
                                  .method = "GET",
                                  .path = path,
                                  .extra_timeout_usec = (uint64_t) wait_sec * USEC_PER_SEC,
                                  .task_callback = cb,
                                  .userdata = userdata,
                                  .sync = sync,
                          },
                          ret_call);
}

static int op_list(DtaskClient *c, DtaskStatus status, unsigned limit, const char *after, DtaskListCallback cb,
                   void *userdata, SyncState *sync, DtaskCall **ret_call) {
        _cleanup_free_ char *path = NULL;
        int r;

        assert_return(c, -EINVAL);
        assert_return(cb || sync, -EINVAL);

        r = wire_list_path(status, limit, after, &path);
        if (r < 0)
                return r;
        return call_start(c,
                          &(CallArgs) {
                                  .op = DTASK_OP_LIST,
                                  .method = "GET",
                                  .path = path,
                                  .list_callback = cb,
                                  .userdata = userdata,
                                  .sync = sync,
                          },
                          ret_call);
}

/* retry, cancel, claim, heartbeat, complete: POST /api/tasks/{id}/<verb> with a JSON body (or none) */
static int op_post(DtaskClient *c, DtaskOp op, const char *id, const char *verb, const char *body,
                   DtaskTaskCallback task_cb, DtaskDoneCallback done_cb, void *userdata, SyncState *sync,
                   DtaskCall **ret_call) {
        _cleanup_free_ char *path = NULL;
        int r;

        assert_return(c, -EINVAL);
        assert_return(task_cb || done_cb || sync, -EINVAL);

        r = wire_task_path(id, verb, &path);
        if (r < 0)
                return r;
        return call_start(c,
                          &(CallArgs) {
                                  .op = op,
                                  .method = "POST",
                                  .path = path,
                                  .body = body,
                                  .task_callback = task_cb,
                                  .done_callback = done_cb,
                                  .userdata = userdata,
                                  .sync = sync,
                          },
                          ret_call);
}

static int op_claim(DtaskClient *c, const char *id, const char *worker, DtaskTaskCallback cb, void *userdata,
                    SyncState *sync, DtaskCall **ret_call) {
        _cleanup_free_ char *body = NULL;
        int r;

        r = wire_claim_body(worker, &body);
        if (r < 0)
                return r;
        return op_post(c, DTASK_OP_CLAIM, id, "/claim", body, cb, NULL, userdata, sync, ret_call);
}

static int op_heartbeat(DtaskClient *c, const char *id, unsigned attempt, DtaskDoneCallback cb, void *userdata,
                        SyncState *sync, DtaskCall **ret_call) {
        _cleanup_free_ char *body = NULL;
        int r;

        r = wire_heartbeat_body(attempt, &body);
        if (r < 0)
                return r;
        return op_post(c, DTASK_OP_HEARTBEAT, id, "/heartbeat", body, NULL, cb, userdata, sync, ret_call);
}

static int op_release(DtaskClient *c, const char *id, unsigned attempt, DtaskDoneCallback cb, void *userdata,
                      SyncState *sync, DtaskCall **ret_call) {
        _cleanup_free_ char *body = NULL;
        int r;

        /* the same body as a heartbeat: {"attempt": N} */
        r = wire_heartbeat_body(attempt, &body);
        if (r < 0)
                return r;
        return op_post(c, DTASK_OP_RELEASE, id, "/release", body, NULL, cb, userdata, sync, ret_call);
}

static int op_complete(DtaskClient *c, const char *id, const DtaskCompletion *completion, DtaskTaskCallback cb,
                       void *userdata, SyncState *sync, DtaskCall **ret_call) {
        _cleanup_free_ char *body = NULL;
        int r;

        r = wire_complete_body(completion, &body);
        if (r < 0)
                return r;
        return op_post(c, DTASK_OP_COMPLETE, id, "/complete", body, cb, NULL, userdata, sync, ret_call);
}

_public_ int dtask_create(DtaskClient *c, const DtaskTaskSpec *spec, DtaskTaskCallback callback, void *userdata,
                          DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_create(c, spec, callback, userdata, NULL, ret_call);
}

_public_ int dtask_get(DtaskClient *c, const char *id, unsigned wait_sec, DtaskTaskCallback callback, void *userdata,
                       DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_get(c, id, wait_sec, callback, userdata, NULL, ret_call);
}

_public_ int dtask_list(DtaskClient *c, DtaskStatus status, unsigned limit, const char *after,
                        DtaskListCallback callback, void *userdata, DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_list(c, status, limit, after, callback, userdata, NULL, ret_call);
}

_public_ int dtask_retry(DtaskClient *c, const char *id, DtaskTaskCallback callback, void *userdata,
                         DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_post(c, DTASK_OP_RETRY, id, "/retry", NULL, callback, NULL, userdata, NULL, ret_call);
}

_public_ int dtask_cancel(DtaskClient *c, const char *id, DtaskTaskCallback callback, void *userdata,
                          DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_post(c, DTASK_OP_CANCEL, id, "/cancel", NULL, callback, NULL, userdata, NULL, ret_call);
}

_public_ int dtask_claim(DtaskClient *c, const char *id, const char *worker, DtaskTaskCallback callback,
                         void *userdata, DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_claim(c, id, worker, callback, userdata, NULL, ret_call);
}

_public_ int dtask_heartbeat(DtaskClient *c, const char *id, unsigned attempt, DtaskDoneCallback callback,
                             void *userdata, DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_heartbeat(c, id, attempt, callback, userdata, NULL, ret_call);
}

_public_ int dtask_release(DtaskClient *c, const char *id, unsigned attempt, DtaskDoneCallback callback,
                           void *userdata, DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_release(c, id, attempt, callback, userdata, NULL, ret_call);
}

_public_ int dtask_complete(DtaskClient *c, const char *id, const DtaskCompletion *completion,
                            DtaskTaskCallback callback, void *userdata, DtaskCall **ret_call) {
        assert_return(callback, -EINVAL);
        return op_complete(c, id, completion, callback, userdata, NULL, ret_call);
}

/* ---- blocking wrappers ------------------------------------------------------------------ */

/* Checks the client can block, and clears the last reply. */
static int sync_begin(DtaskClient *c) {
        assert_return(c, -EINVAL);
        if (!c->blocking)
                return -EOPNOTSUPP;
        reply_copy_clear(&c->last);
        return 0;
}

/* r: what starting the call returned. Runs the private loop until the call finished. */
static int sync_wait(DtaskClient *c, int r, DtaskCall *call, SyncState *s) {
        if (r < 0) {
                reply_copy_clear(&c->last);
                return r;
        }
        while (!s->done) {
                r = sd_event_run(c->event, UINT64_MAX);
                if (r < 0) {
                        /* e.g. -EBUSY: called from a callback of this very loop */
                        dtask_call_cancel(call);
                        return r;
                }
        }
        return s->error;
}

static int sync_task_result(int r, SyncState *s, DtaskTask **ret) {
        _cleanup_(dtask_task_freep) DtaskTask *t = TAKE_PTR(s->task);

        if (r < 0)
                return r;
        if (ret)
                *ret = TAKE_PTR(t);
        return 0;
}

_public_ int dtask_create_sync(DtaskClient *c, const DtaskTaskSpec *spec, DtaskTask **ret) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        r = sync_wait(c, op_create(c, spec, NULL, NULL, &s, &call), call, &s);
        return sync_task_result(r, &s, ret);
}

_public_ int dtask_get_sync(DtaskClient *c, const char *id, unsigned wait_sec, DtaskTask **ret) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        r = sync_wait(c, op_get(c, id, wait_sec, NULL, NULL, &s, &call), call, &s);
        return sync_task_result(r, &s, ret);
}

_public_ int dtask_list_sync(DtaskClient *c, DtaskStatus status, unsigned limit, const char *after,
                             DtaskTaskList **ret) {
        _cleanup_(dtask_task_list_freep) DtaskTaskList *l = NULL;
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        r = sync_wait(c, op_list(c, status, limit, after, NULL, NULL, &s, &call), call, &s);
        l = TAKE_PTR(s.list);
        if (r < 0)
                return r;
        if (ret)
                *ret = TAKE_PTR(l);
        return 0;
}

_public_ int dtask_retry_sync(DtaskClient *c, const char *id, DtaskTask **ret) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        r = sync_wait(c, op_post(c, DTASK_OP_RETRY, id, "/retry", NULL, NULL, NULL, NULL, &s, &call), call, &s);
        return sync_task_result(r, &s, ret);
}

_public_ int dtask_cancel_sync(DtaskClient *c, const char *id, DtaskTask **ret) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        r = sync_wait(c, op_post(c, DTASK_OP_CANCEL, id, "/cancel", NULL, NULL, NULL, NULL, &s, &call), call, &s);
        return sync_task_result(r, &s, ret);
}

_public_ int dtask_claim_sync(DtaskClient *c, const char *id, const char *worker, DtaskTask **ret) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        r = sync_wait(c, op_claim(c, id, worker, NULL, NULL, &s, &call), call, &s);
        return sync_task_result(r, &s, ret);
}

_public_ int dtask_heartbeat_sync(DtaskClient *c, const char *id, unsigned attempt) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        return sync_wait(c, op_heartbeat(c, id, attempt, NULL, NULL, &s, &call), call, &s);
}

_public_ int dtask_release_sync(DtaskClient *c, const char *id, unsigned attempt) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        return sync_wait(c, op_release(c, id, attempt, NULL, NULL, &s, &call), call, &s);
}

_public_ int dtask_complete_sync(DtaskClient *c, const char *id, const DtaskCompletion *completion, DtaskTask **ret) {
        DtaskCall *call = NULL;
        SyncState s = {};
        int r;

        r = sync_begin(c);
        if (r < 0)
                return r;
        r = sync_wait(c, op_complete(c, id, completion, NULL, NULL, &s, &call), call, &s);
        return sync_task_result(r, &s, ret);
}
