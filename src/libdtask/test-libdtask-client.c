/* SPDX-License-Identifier: MIT */
/* DtaskClient against a scripted fake dtask-api (the shared HTTP server on the same sd-event
 * loop): the requests it sends (method, path, query, X-ApiKey, Idempotency-Key, body), how
 * replies and problem documents reach the callbacks, the blocking wrappers, cancellation,
 * freeing with calls in flight, transport errors and timeouts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>

#include "dtask-wire.h"
#include "dtask.h"
#include "http-server.h"
#include "json-util.h"

#define TASK_ID "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99"
#define API_KEY "ak_0123456789abcdefghijklmnopqrs"

static const char task_json[] =
        "{\"id\":\"" TASK_ID "\",\"name\":\"sum of input\",\"code\":\"print(6)\",\"language\":\"Python\","
        "\"inputData\":\"1 2 3\",\"userId\":\"5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6\",\"result\":null,\"status\":1,"
        "\"statusName\":\"InProgress\",\"createdAt\":\"2026-11-28T18:06:45.123456Z\","
        "\"startedAt\":\"2026-11-28T18:06:45.140211Z\",\"completedAt\":null,"
        "\"expiresAt\":\"2026-11-28T18:36:45.123456Z\",\"ttl\":\"00:30:00\",\"errorMessage\":null,"
        "\"exitCode\":null,\"verdict\":null,\"outputTruncated\":false,\"retryCount\":0,\"attempt\":2}";

/* ---- the fake server ---------------------------------------------------------------------- */

typedef struct Seen {
        char *method, *path, *wait, *after, *status, *limit;
        char *api_key, *idempotency_key, *content_type, *accept, *body;
} Seen;

static struct {
        HttpServer *server;
        uint16_t port;
        char url[64];
        /* the next reply */
        unsigned status;
        const char *content_type;
        const char *body;
        const char *header_name, *header_value;
        bool hang;
        bool hang_on_wait; /* never answer GET ?wait= */
        /* the last request */
        unsigned n_requests;
        Seen seen;
} fake;

static sd_event *event;

static char *dup_or_null(const char *s) {
        return s ? strdup(s) : NULL;
}

static void seen_clear(Seen *s) {
        char **fields[] = { &s->method, &s->path, &s->wait, &s->after, &s->status, &s->limit,
                            &s->api_key, &s->idempotency_key, &s->content_type, &s->accept, &s->body };
        for (size_t i = 0; i < ELEMENTSOF(fields); i++)
                *fields[i] = mfree(*fields[i]);
}

static int fake_handler(HttpRequest *req, void *userdata) {
        const void *body;
        size_t size;

        fake.n_requests++;
        seen_clear(&fake.seen);
        fake.seen.method = strdup(http_method_to_string(http_request_method(req)));
        fake.seen.path = strdup(http_request_path(req));
        fake.seen.wait = dup_or_null(http_request_query(req, "wait"));
        fake.seen.after = dup_or_null(http_request_query(req, "after"));
        fake.seen.status = dup_or_null(http_request_query(req, "status"));
        fake.seen.limit = dup_or_null(http_request_query(req, "limit"));
        fake.seen.api_key = dup_or_null(http_request_header(req, "X-ApiKey"));
        fake.seen.idempotency_key = dup_or_null(http_request_header(req, "Idempotency-Key"));
        fake.seen.content_type = dup_or_null(http_request_header(req, "Content-Type"));
        fake.seen.accept = dup_or_null(http_request_header(req, "Accept"));
        body = http_request_body(req, &size);
        fake.seen.body = strndup(body ?: "", size);

        if (fake.hang || (fake.hang_on_wait && fake.seen.wait))
                return http_request_suspend(req, NULL, NULL);
        if (fake.header_name)
                assert_int_equal(http_request_add_header(req, fake.header_name, fake.header_value), 0);
        if (!fake.body)
                return http_request_reply_empty(req, fake.status);
        return http_request_reply(req, fake.status, fake.content_type ?: "application/json", fake.body,
                                  strlen(fake.body));
}

static const HttpRoute routes[] = {
        { HTTP_GET | HTTP_POST, "/api/tasks", fake_handler, 0 },
        { HTTP_GET | HTTP_PATCH, "/api/tasks/{id}", fake_handler, 0 },
        { HTTP_POST, "/api/tasks/{id}/{verb}", fake_handler, 0 },
};

static int listen_ephemeral(uint16_t *ret_port) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sin;
        int fd;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sin, sizeof sin), 0);
        assert_int_equal(listen(fd, SOMAXCONN), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sin, &len), 0);
        *ret_port = ntohs(sin.sin_port);
        return fd;
}

/* Serves on e (the test's loop, or a blocking client's private one) on the listening fd. */
static void fake_serve(sd_event *e, int fd, uint16_t port) {
        HttpServerSettings settings = {
                .routes = routes,
                .n_routes = ELEMENTSOF(routes),
        };

        seen_clear(&fake.seen);
        fake.n_requests = 0;
        fake.status = 200;
        fake.content_type = NULL;
        fake.body = task_json;
        fake.header_name = fake.header_value = NULL;
        fake.hang = fake.hang_on_wait = false;
        assert_int_equal(http_server_new(&fake.server, e, &settings), 0);
        assert_int_equal(http_server_add_listener(fake.server, fd), 0);
        fake.port = port;
        snprintf(fake.url, sizeof fake.url, "http://127.0.0.1:%u", fake.port);
}

static void fake_start(sd_event *e) {
        uint16_t port;
        int fd = listen_ephemeral(&port);

        fake_serve(e, fd, port);
}

static void fake_stop(void) {
        fake.server = http_server_free(fake.server);
        seen_clear(&fake.seen);
}

static void fake_reply(unsigned status, const char *content_type, const char *body) {
        fake.status = status;
        fake.content_type = content_type;
        fake.body = body;
        fake.header_name = fake.header_value = NULL;
}

static int setup(void **state) {
        assert_true(sd_event_new(&event) >= 0);
        fake_start(event);
        return 0;
}

static int teardown(void **state) {
        fake_stop();
        event = sd_event_unref(event);
        return 0;
}

/* ---- results of async calls ---------------------------------------------------------------- */

typedef struct Result {
        unsigned calls;
        int error;
        DtaskTask *task;
        DtaskTaskList *list;
        unsigned http_status;
        char *detail, *title, *errors, *location;
        bool replayed;
        DtaskClient *free_client; /* freed from within the callback when set */
} Result;

static void result_clear(Result *r) {
        dtask_task_free(r->task);
        dtask_task_list_free(r->list);
        free(r->detail);
        free(r->title);
        free(r->errors);
        free(r->location);
        *r = (Result) {};
}

static void result_reply(Result *r, const DtaskReply *reply) {
        assert_non_null(reply);
        r->calls++;
        r->http_status = reply->http_status;
        r->detail = dup_or_null(reply->problem_detail);
        r->title = dup_or_null(reply->problem_title);
        r->errors = dup_or_null(reply->problem_errors);
        r->location = dup_or_null(reply->location);
        r->replayed = reply->replayed;
}

static void on_task(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply, void *userdata) {
        Result *r = userdata;

        result_reply(r, reply);
        r->error = error;
        if (error < 0)
                assert_null(task);
        else {
                assert_non_null(task);
                assert_int_equal(dtask_task_dup(task, &r->task), 0);
        }
        if (r->free_client)
                dtask_client_free(TAKE_PTR(r->free_client));
}

static void on_list(DtaskClient *c, int error, const DtaskTaskList *list, const DtaskReply *reply, void *userdata) {
        Result *r = userdata;

        result_reply(r, reply);
        r->error = error;
        if (error >= 0) {
                assert_non_null(list);
                r->list = calloc(1, sizeof(DtaskTaskList));
                r->list->n_tasks = list->n_tasks;
                r->list->tasks = calloc(list->n_tasks + 1, sizeof(DtaskTask *));
                for (size_t i = 0; i < list->n_tasks; i++)
                        assert_int_equal(dtask_task_dup(list->tasks[i], &r->list->tasks[i]), 0);
                r->list->next_cursor = dup_or_null(list->next_cursor);
        } else
                assert_null(list);
}

static void on_done(DtaskClient *c, int error, const DtaskReply *reply, void *userdata) {
        Result *r = userdata;

        result_reply(r, reply);
        r->error = error;
}

static void run_until(Result *r, unsigned calls) {
        for (unsigned i = 0; r->calls < calls; i++) {
                assert_true(i < 1000);
                assert_true(sd_event_run(event, 100 * USEC_PER_MSEC) >= 0);
        }
        assert_int_equal(r->calls, calls);
}

static DtaskClient *client_new(void) {
        DtaskClient *c = NULL;

        assert_int_equal(dtask_client_new(&c, event, fake.url, API_KEY), 0);
        assert_ptr_equal(dtask_client_get_event(c), event);
        return c;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_create(void **state) {
        DtaskClient *c = client_new();
        _cleanup_json_ json_object *body = NULL;
        Result r = {};
        DtaskTaskSpec spec = {
                .name = "sum of input",
                .code = "print(6)",
                .language = DTASK_LANGUAGE_PYTHON,
                .input_data = "1 2 3",
                .ttl = "30min",
                .idempotency_key = "job-42",
        };

        fake_reply(201, NULL, task_json);
        fake.header_name = "Location";
        fake.header_value = "/api/tasks/" TASK_ID;
        assert_int_equal(dtask_create(c, &spec, on_task, &r, NULL), 0);
        assert_int_equal(r.calls, 0); /* never from within the call */
        run_until(&r, 1);

        assert_string_equal(fake.seen.method, "POST");
        assert_string_equal(fake.seen.path, "/api/tasks");
        assert_string_equal(fake.seen.api_key, API_KEY);
        assert_string_equal(fake.seen.idempotency_key, "job-42");
        assert_string_equal(fake.seen.content_type, "application/json");
        assert_non_null(strstr(fake.seen.accept, "application/json"));
        assert_int_equal(wire_parse_body(fake.seen.body, strlen(fake.seen.body), &body), 0);
        assert_int_equal(json_object_object_length(body), 5);
        assert_string_equal(json_object_get_string(json_object_object_get(body, "ttl")), "00:30:00");
        assert_string_equal(json_object_get_string(json_object_object_get(body, "language")), "Python");

        assert_int_equal(r.error, 0);
        assert_int_equal(r.http_status, 201);
        assert_string_equal(r.location, "/api/tasks/" TASK_ID);
        assert_false(r.replayed);
        assert_string_equal(r.task->id, TASK_ID);
        assert_int_equal(r.task->status, DTASK_STATUS_IN_PROGRESS);
        assert_int_equal(r.task->attempt, 2);
        result_clear(&r);

        /* the same Idempotency-Key again: 200 with the original task */
        fake_reply(200, NULL, task_json);
        fake.header_name = "Idempotent-Replayed";
        fake.header_value = "true";
        assert_int_equal(dtask_create(c, &spec, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_int_equal(r.error, 0);
        assert_true(r.replayed);
        result_clear(&r);

        /* invalid arguments: refused at once, no request, no callback */
        spec.ttl = "whenever";
        assert_int_equal(dtask_create(c, &spec, on_task, &r, NULL), -EINVAL);
        spec.ttl = "60";
        assert_int_equal(dtask_create(c, &spec, NULL, &r, NULL), -EINVAL);
        assert_int_equal(dtask_create(c, NULL, on_task, &r, NULL), -EINVAL);
        assert_int_equal(fake.n_requests, 2);
        assert_int_equal(r.calls, 0);

        dtask_client_free(c);
}

static void test_get_list(void **state) {
        DtaskClient *c = client_new();
        Result r = {};

        assert_int_equal(dtask_get(c, TASK_ID, 5, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_string_equal(fake.seen.method, "GET");
        assert_string_equal(fake.seen.path, "/api/tasks/" TASK_ID);
        assert_string_equal(fake.seen.wait, "5");
        assert_string_equal(fake.seen.api_key, API_KEY);
        assert_int_equal(r.error, 0);
        assert_string_equal(r.task->name, "sum of input");
        result_clear(&r);

        assert_int_equal(dtask_get(c, TASK_ID, 0, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_null(fake.seen.wait);
        result_clear(&r);

        assert_int_equal(dtask_get(c, "not-a-uuid", 0, on_task, &r, NULL), -EINVAL);

        /* a page with a next link; the cursor goes back encoded and arrives decoded */
        static char page[sizeof(task_json) * 2 + 8];
        snprintf(page, sizeof page, "[%s,%s]", task_json, task_json);
        fake_reply(200, NULL, page);
        fake.header_name = "Link";
        fake.header_value = "</api/tasks?limit=2&after=1764353205123456-" TASK_ID "&status=InProgress>; rel=\"next\"";
        assert_int_equal(dtask_list(c, DTASK_STATUS_IN_PROGRESS, 2, "12+3/4", on_list, &r, NULL), 0);
        run_until(&r, 1);
        assert_string_equal(fake.seen.path, "/api/tasks");
        assert_string_equal(fake.seen.status, "InProgress");
        assert_string_equal(fake.seen.limit, "2");
        assert_string_equal(fake.seen.after, "12+3/4");
        assert_int_equal(r.error, 0);
        assert_int_equal(r.list->n_tasks, 2);
        assert_string_equal(r.list->tasks[1]->id, TASK_ID);
        assert_string_equal(r.list->next_cursor, "1764353205123456-" TASK_ID);
        result_clear(&r);

        /* the last page: no Link */
        fake_reply(200, NULL, "[]");
        assert_int_equal(dtask_list(c, DTASK_STATUS_ANY, 0, NULL, on_list, &r, NULL), 0);
        run_until(&r, 1);
        assert_null(fake.seen.status);
        assert_null(fake.seen.limit);
        assert_null(fake.seen.after);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.list->n_tasks, 0);
        assert_null(r.list->next_cursor);
        result_clear(&r);

        dtask_client_free(c);
}

static void test_errors(void **state) {
        static const struct {
                DtaskOp op;
                unsigned status;
                const char *content_type;
                const char *body;
                int error;
                const char *detail;
        } table[] = {
                { DTASK_OP_CREATE, 400, "application/problem+json",
                  "{\"type\":\"about:blank\",\"title\":\"Bad Request\",\"status\":400,\"detail\":\"ttl: must be greater "
                  "than 00:00:00\",\"errors\":{\"ttl\":[\"must be greater than 00:00:00\"]}}",
                  -EINVAL, "ttl: must be greater than 00:00:00" },
                { DTASK_OP_GET, 401, "application/problem+json",
                  "{\"title\":\"Unauthorized\",\"status\":401,\"detail\":\"The API key is missing, invalid, inactive or expired.\"}",
                  -EKEYREJECTED, "The API key is missing, invalid, inactive or expired." },
                { DTASK_OP_GET, 403, "application/problem+json", "{\"detail\":\"The API key lacks the claim tasks:read.\"}",
                  -EPERM, "The API key lacks the claim tasks:read." },
                { DTASK_OP_GET, 404, "application/problem+json", "{\"detail\":\"No task with id x.\"}", -ENOENT,
                  "No task with id x." },
                { DTASK_OP_RETRY, 409, "application/problem+json", "{\"detail\":\"Task x is Pending and cannot be retried.\"}",
                  -EBUSY, "Task x is Pending and cannot be retried." },
                { DTASK_OP_CANCEL, 409, "application/problem+json", "{\"detail\":\"done\"}", -EBUSY, "done" },
                { DTASK_OP_CLAIM, 409, "application/problem+json", "{\"detail\":\"not claimable\"}", -EBUSY, "not claimable" },
                { DTASK_OP_COMPLETE, 409, "application/problem+json", "{\"detail\":\"fenced\"}", -ESTALE, "fenced" },
                { DTASK_OP_HEARTBEAT, 409, "application/problem+json", "{\"detail\":\"gone\"}", -ESTALE, "gone" },
                { DTASK_OP_CREATE, 413, "application/problem+json", "{\"detail\":\"too big\"}", -E2BIG, "too big" },
                { DTASK_OP_CREATE, 422, "application/problem+json", "{\"detail\":\"key reused\"}", -EEXIST, "key reused" },
                { DTASK_OP_GET, 503, "application/problem+json", "{\"detail\":\"later\"}", -EAGAIN, "later" },
                /* not a problem document: still the status, no detail */
                { DTASK_OP_GET, 502, "text/html", "<html>Bad Gateway</html>", -EIO, NULL },
                { DTASK_OP_GET, 500, NULL, NULL, -EIO, NULL },
                /* success statuses with a body that is not a task */
                { DTASK_OP_GET, 200, "application/json", "[1,2]", -EBADMSG, NULL },
                { DTASK_OP_GET, 200, "application/json", "{\"id\":", -EBADMSG, NULL },
                { DTASK_OP_GET, 204, NULL, NULL, -EBADMSG, NULL },
                { DTASK_OP_LIST, 200, "application/json", "{}", -EBADMSG, NULL },
        };
        DtaskClient *c = client_new();
        DtaskCompletion completion = { .attempt = 1, .status = DTASK_STATUS_COMPLETED };
        DtaskTaskSpec spec = { .name = "n", .code = "c", .language = DTASK_LANGUAGE_PYTHON, .ttl = "60" };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                Result r = {};

                fake_reply(table[i].status, table[i].content_type, table[i].body);
                switch (table[i].op) {
                case DTASK_OP_CREATE:
                        assert_int_equal(dtask_create(c, &spec, on_task, &r, NULL), 0);
                        break;
                case DTASK_OP_GET:
                        assert_int_equal(dtask_get(c, TASK_ID, 0, on_task, &r, NULL), 0);
                        break;
                case DTASK_OP_LIST:
                        assert_int_equal(dtask_list(c, DTASK_STATUS_ANY, 0, NULL, on_list, &r, NULL), 0);
                        break;
                case DTASK_OP_RETRY:
                        assert_int_equal(dtask_retry(c, TASK_ID, on_task, &r, NULL), 0);
                        break;
                case DTASK_OP_CANCEL:
                        assert_int_equal(dtask_cancel(c, TASK_ID, on_task, &r, NULL), 0);
                        break;
                case DTASK_OP_CLAIM:
                        assert_int_equal(dtask_claim(c, TASK_ID, NULL, on_task, &r, NULL), 0);
                        break;
                case DTASK_OP_HEARTBEAT:
                        assert_int_equal(dtask_heartbeat(c, TASK_ID, 1, on_done, &r, NULL), 0);
                        break;
                case DTASK_OP_COMPLETE:
                        assert_int_equal(dtask_complete(c, TASK_ID, &completion, on_task, &r, NULL), 0);
                        break;
                default:
                        fail();
                }
                run_until(&r, 1);
                if (r.error != table[i].error)
                        fail_msg("case %zu (HTTP %u): error %d, expected %d", i, table[i].status, r.error,
                                 table[i].error);
                assert_int_equal(r.http_status, table[i].status);
                if (table[i].detail)
                        assert_string_equal(r.detail, table[i].detail);
                else
                        assert_null(r.detail);
                if (i == 0) {
                        assert_string_equal(r.title, "Bad Request");
                        assert_string_equal(r.errors, "{\"ttl\":[\"must be greater than 00:00:00\"]}");
                }
                result_clear(&r);
        }

        dtask_client_free(c);

        /* without a key, 401 is -ENOKEY, and no X-ApiKey header is sent */
        {
                DtaskClient *nokey = NULL;
                Result r = {};

                assert_int_equal(dtask_client_new(&nokey, event, fake.url, NULL), 0);
                fake_reply(401, "application/problem+json", "{\"detail\":\"An API key is required (header X-ApiKey).\"}");
                assert_int_equal(dtask_get(nokey, TASK_ID, 0, on_task, &r, NULL), 0);
                run_until(&r, 1);
                assert_int_equal(r.error, -ENOKEY);
                assert_null(fake.seen.api_key);
                result_clear(&r);
                dtask_client_free(nokey);
        }
}

static void test_worker_protocol(void **state) {
        DtaskClient *c = client_new();
        _cleanup_json_ json_object *body = NULL;
        Result r = {};
        DtaskCompletion completion = {
                .attempt = 2,
                .status = DTASK_STATUS_COMPLETED,
                .result = "6",
                .error_message = "",
                .has_exit_code = true,
                .exit_code = 0,
                .verdict = "ok",
        };

        assert_int_equal(dtask_claim(c, TASK_ID, "host/1", on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_string_equal(fake.seen.method, "POST");
        assert_string_equal(fake.seen.path, "/api/tasks/" TASK_ID "/claim");
        assert_string_equal(fake.seen.body, "{\"worker\":\"host/1\"}");
        assert_int_equal(r.error, 0);
        assert_int_equal(r.task->attempt, 2);
        result_clear(&r);

        fake_reply(204, NULL, NULL);
        assert_int_equal(dtask_heartbeat(c, TASK_ID, 2, on_done, &r, NULL), 0);
        run_until(&r, 1);
        assert_string_equal(fake.seen.path, "/api/tasks/" TASK_ID "/heartbeat");
        assert_string_equal(fake.seen.body, "{\"attempt\":2}");
        assert_string_equal(fake.seen.content_type, "application/json");
        assert_int_equal(r.error, 0);
        assert_int_equal(r.http_status, 204);
        result_clear(&r);
        assert_int_equal(dtask_heartbeat(c, TASK_ID, 0, on_done, &r, NULL), -EINVAL);

        fake_reply(200, NULL, task_json);
        assert_int_equal(dtask_complete(c, TASK_ID, &completion, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_string_equal(fake.seen.path, "/api/tasks/" TASK_ID "/complete");
        assert_int_equal(wire_parse_body(fake.seen.body, strlen(fake.seen.body), &body), 0);
        assert_int_equal(json_object_get_int(json_object_object_get(body, "attempt")), 2);
        assert_int_equal(json_object_get_int(json_object_object_get(body, "status")), 2);
        assert_string_equal(json_object_get_string(json_object_object_get(body, "result")), "6");
        assert_int_equal(json_object_get_int(json_object_object_get(body, "exitCode")), 0);
        assert_string_equal(json_object_get_string(json_object_object_get(body, "verdict")), "ok");
        assert_int_equal(r.error, 0);
        result_clear(&r);

        /* retry and cancel carry no body */
        assert_int_equal(dtask_retry(c, TASK_ID, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_string_equal(fake.seen.path, "/api/tasks/" TASK_ID "/retry");
        assert_string_equal(fake.seen.body, "");
        result_clear(&r);
        assert_int_equal(dtask_cancel(c, TASK_ID, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_string_equal(fake.seen.path, "/api/tasks/" TASK_ID "/cancel");
        result_clear(&r);

        dtask_client_free(c);
}

static void test_cancel_and_free(void **state) {
        DtaskClient *c = client_new();
        Result r1 = {}, r2 = {}, r3 = {}, r4 = {}, r5 = {};
        DtaskCall *call = NULL;

        /* a cancelled call never calls back */
        fake.hang = true;
        assert_int_equal(dtask_get(c, TASK_ID, 0, on_task, &r1, &call), 0);
        assert_non_null(call);
        for (unsigned i = 0; fake.n_requests < 1; i++) {
                assert_true(i < 100);
                assert_true(sd_event_run(event, 100 * USEC_PER_MSEC) >= 0);
        }
        dtask_call_cancel(call);
        for (unsigned i = 0; i < 5; i++)
                assert_true(sd_event_run(event, 10 * USEC_PER_MSEC) >= 0);
        assert_int_equal(r1.calls, 0);
        dtask_call_cancel(NULL);

        /* freeing the client completes what is in flight with -ECANCELED, from within the free */
        assert_int_equal(dtask_get(c, TASK_ID, 0, on_task, &r2, NULL), 0);
        assert_int_equal(dtask_heartbeat(c, TASK_ID, 1, on_done, &r3, NULL), 0);
        assert_true(sd_event_run(event, 10 * USEC_PER_MSEC) >= 0);
        dtask_client_free(c);
        assert_int_equal(r2.calls, 1);
        assert_int_equal(r2.error, -ECANCELED);
        assert_int_equal(r2.http_status, 0);
        assert_int_equal(r3.calls, 1);
        assert_int_equal(r3.error, -ECANCELED);
        result_clear(&r2);
        result_clear(&r3);

        /* a callback frees the client while another call is in flight */
        fake.hang = false;
        fake.hang_on_wait = true;
        c = client_new();
        r4.free_client = c;
        fake_reply(200, NULL, task_json);
        assert_int_equal(dtask_get(c, TASK_ID, 30, on_task, &r5, NULL), 0);
        for (unsigned i = 0; fake.n_requests < 1; i++) {
                assert_true(i < 100);
                assert_true(sd_event_run(event, 100 * USEC_PER_MSEC) >= 0);
        }
        assert_int_equal(dtask_get(c, TASK_ID, 0, on_task, &r4, NULL), 0);
        run_until(&r4, 1);
        assert_int_equal(r4.error, 0);
        assert_null(r4.free_client);
        /* the waiting call was cancelled by the free, from within r4's callback */
        assert_int_equal(r5.calls, 1);
        assert_int_equal(r5.error, -ECANCELED);
        result_clear(&r4);
        result_clear(&r5);
}

static void test_transport_errors(void **state) {
        DtaskClient *c = NULL;
        Result r = {};
        int fd;
        uint16_t port;
        char url[64];

        /* nobody listens: a port that was just free */
        fd = listen_ephemeral(&port);
        safe_close(fd);
        snprintf(url, sizeof url, "http://127.0.0.1:%u", port);
        assert_int_equal(dtask_client_new(&c, event, url, API_KEY), 0);
        assert_int_equal(dtask_get(c, TASK_ID, 0, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_int_equal(r.error, -ECONNREFUSED);
        assert_int_equal(r.http_status, 0);
        result_clear(&r);
        c = dtask_client_free(c);

        /* the server never answers: the deadline */
        c = client_new();
        fake.hang = true;
        assert_int_equal(dtask_client_set_timeout(c, 200 * USEC_PER_MSEC), 0);
        assert_int_equal(dtask_get(c, TASK_ID, 0, on_task, &r, NULL), 0);
        run_until(&r, 1);
        assert_int_equal(r.error, -ETIMEDOUT);
        result_clear(&r);
        c = dtask_client_free(c);

        /* URLs and keys the client refuses */
        assert_int_equal(dtask_client_new(&c, event, "https://127.0.0.1:1", API_KEY), -EPROTONOSUPPORT);
        assert_int_equal(dtask_client_new(&c, event, "127.0.0.1:1", API_KEY), -EINVAL);
        assert_int_equal(dtask_client_new(&c, event, "http://127.0.0.1:1", "key\r\nX-Evil: 1"), -EINVAL);
        assert_int_equal(dtask_client_new(&c, event, "http://127.0.0.1:1", ""), -EINVAL);
        assert_int_equal(dtask_client_new(&c, NULL, "http://127.0.0.1:1", API_KEY), -EINVAL);
        assert_null(c);
}

static void test_blocking(void **state) {
        DtaskClient *c = NULL, *async = client_new();
        DtaskTask *t = NULL;
        DtaskTaskList *l = NULL;
        const DtaskReply *reply;
        DtaskTaskSpec spec = { .name = "n", .code = "c", .language = DTASK_LANGUAGE_CSHARP, .ttl = "1h" };
        DtaskCompletion completion = { .attempt = 2, .status = DTASK_STATUS_FAILED, .verdict = "runtime_error" };
        static char page[sizeof(task_json) + 8];
        uint16_t port;
        char url[64];
        int fd;

        /* the _sync calls never run somebody else's loop */
        assert_int_equal(dtask_get_sync(async, TASK_ID, 0, &t), -EOPNOTSUPP);
        assert_null(t);
        dtask_client_free(async);

        /* the fake server moves onto the blocking client's private loop: bind first, for the URL */
        fake_stop();
        fd = listen_ephemeral(&port);
        snprintf(url, sizeof url, "http://127.0.0.1:%u", port);
        assert_int_equal(dtask_client_new_blocking(&c, url, API_KEY), 0);
        fake_serve(dtask_client_get_event(c), fd, port);

        assert_int_equal(dtask_get_sync(c, TASK_ID, 3, &t), 0);
        assert_string_equal(fake.seen.wait, "3");
        assert_string_equal(fake.seen.api_key, API_KEY);
        assert_string_equal(t->id, TASK_ID);
        t = dtask_task_free(t);
        reply = dtask_client_get_last_reply(c);
        assert_int_equal(reply->http_status, 200);
        assert_null(reply->problem_detail);

        fake_reply(201, NULL, task_json);
        fake.header_name = "Location";
        fake.header_value = "/api/tasks/" TASK_ID;
        assert_int_equal(dtask_create_sync(c, &spec, &t), 0);
        assert_string_equal(dtask_client_get_last_reply(c)->location, "/api/tasks/" TASK_ID);
        assert_false(dtask_client_get_last_reply(c)->replayed);
        assert_int_equal(t->language, DTASK_LANGUAGE_PYTHON);
        t = dtask_task_free(t);
        assert_int_equal(dtask_create_sync(c, &spec, NULL), 0); /* result not wanted */

        snprintf(page, sizeof page, "[%s]", task_json);
        fake_reply(200, NULL, page);
        fake.header_name = "Link";
        fake.header_value = "</api/tasks?limit=1&after=99-" TASK_ID ">; rel=\"next\"";
        assert_int_equal(dtask_list_sync(c, DTASK_STATUS_ANY, 1, NULL, &l), 0);
        assert_int_equal(l->n_tasks, 1);
        assert_string_equal(l->next_cursor, "99-" TASK_ID);
        l = dtask_task_list_free(l);

        fake_reply(200, NULL, task_json);
        assert_int_equal(dtask_claim_sync(c, TASK_ID, NULL, &t), 0);
        assert_string_equal(fake.seen.body, "{}");
        assert_int_equal(t->attempt, 2);
        t = dtask_task_free(t);

        fake_reply(204, NULL, NULL);
        assert_int_equal(dtask_heartbeat_sync(c, TASK_ID, 2), 0);
        assert_int_equal(dtask_client_get_last_reply(c)->http_status, 204);

        fake_reply(409, "application/problem+json",
                   "{\"title\":\"Conflict\",\"detail\":\"Attempt 2 of task x cannot complete: the task is Expired, attempt 2.\"}");
        assert_int_equal(dtask_complete_sync(c, TASK_ID, &completion, &t), -ESTALE);
        assert_null(t);
        reply = dtask_client_get_last_reply(c);
        assert_int_equal(reply->http_status, 409);
        assert_string_equal(reply->problem_title, "Conflict");
        assert_string_equal(reply->problem_detail,
                            "Attempt 2 of task x cannot complete: the task is Expired, attempt 2.");
        assert_int_equal(dtask_retry_sync(c, TASK_ID, &t), -EBUSY);
        assert_int_equal(dtask_heartbeat_sync(c, TASK_ID, 2), -ESTALE);

        fake_reply(200, NULL, task_json);
        assert_int_equal(dtask_cancel_sync(c, TASK_ID, &t), 0);
        assert_string_equal(fake.seen.path, "/api/tasks/" TASK_ID "/cancel");
        t = dtask_task_free(t);
        assert_int_equal(dtask_retry_sync(c, TASK_ID, NULL), 0);

        /* refused before sending: the last reply is cleared */
        assert_int_equal(dtask_get_sync(c, "nope", 0, &t), -EINVAL);
        assert_int_equal(dtask_client_get_last_reply(c)->http_status, 0);

        /* deadline */
        fake.hang = true;
        assert_int_equal(dtask_client_set_timeout(c, 200 * USEC_PER_MSEC), 0);
        assert_int_equal(dtask_get_sync(c, TASK_ID, 0, &t), -ETIMEDOUT);
        assert_null(t);

        fake_stop();
        dtask_client_free(c);

        /* transport error */
        assert_int_equal(dtask_client_new_blocking(&c, url, API_KEY), 0);
        assert_int_equal(dtask_get_sync(c, TASK_ID, 0, &t), -ECONNREFUSED);
        assert_int_equal(dtask_client_get_last_reply(c)->http_status, 0);
        dtask_client_free(c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_create, setup, teardown),
                cmocka_unit_test_setup_teardown(test_get_list, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_worker_protocol, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_and_free, setup, teardown),
                cmocka_unit_test_setup_teardown(test_transport_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_blocking, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
