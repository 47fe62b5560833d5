/* SPDX-License-Identifier: MIT */
/* libdtask as an outside program sees it: compiled against the public header alone (no
 * project-internal header, no json-c), linked against libdtask.so alone. Proves the header is
 * self-contained and that what it declares is exported and works: enum helpers, task
 * copies, the blocking client's transport errors and refusals. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtask.h"

#ifdef DTASK_INTERNAL_HEADER_SEEN
#error "a project-internal header leaked into the public one"
#endif
#ifdef _cleanup_
#error "dtask.h pulled in macro.h"
#endif
#ifdef JSON_C_VERSION
#error "dtask.h pulled in json-c"
#endif

static int failures;

#define CHECK(cond)                                                                     \
        do {                                                                            \
                if (!(cond)) {                                                          \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                        failures++;                                                     \
                }                                                                       \
        } while (0)

static void on_task(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply, void *userdata) {
        int *result = userdata;
        *result = error;
}

int main(void) {
        DtaskClient *c = NULL, *async = NULL;
        DtaskTask *t = NULL, *copy = NULL;
        sd_event *e = NULL;
        char buf[DTASK_TIMESTAMP_MAX];
        int result = 1;

        CHECK(strcmp(dtask_status_to_string(DTASK_STATUS_COMPLETED), "Completed") == 0);
        CHECK(dtask_status_from_string("expired") == DTASK_STATUS_EXPIRED);
        CHECK(dtask_status_is_terminal(DTASK_STATUS_FAILED));
        CHECK(!dtask_status_is_terminal(DTASK_STATUS_IN_PROGRESS));
        CHECK(dtask_language_from_string("python") == DTASK_LANGUAGE_PYTHON);
        CHECK(strcmp(dtask_language_to_string(DTASK_LANGUAGE_CSHARP), "CSharp") == 0);
        CHECK(strcmp(dtask_timestamp_format(1000000, buf, sizeof buf), "1970-01-01T00:00:01.000000Z") == 0);

        /* the library owns DtaskTask memory, but dup/free work on any well-formed one */
        t = calloc(1, sizeof(DtaskTask));
        t->id = strdup("0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99");
        t->result = strdup("6");
        t->attempt = 3;
        CHECK(dtask_task_dup(t, &copy) == 0);
        CHECK(copy && strcmp(copy->id, t->id) == 0 && strcmp(copy->result, "6") == 0 && copy->attempt == 3);
        CHECK(copy && copy->name == NULL);
        dtask_task_free(copy);
        dtask_task_free(t);
        dtask_task_free(NULL);
        dtask_task_list_free(NULL);

        /* blocking client: nobody listens on port 1 */
        CHECK(dtask_client_new_blocking(&c, "http://127.0.0.1:1", "ak_test") == 0);
        CHECK(dtask_client_get_event(c) != NULL);
        t = NULL;
        CHECK(dtask_get_sync(c, "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", 0, &t) == -ECONNREFUSED);
        CHECK(t == NULL);
        CHECK(dtask_client_get_last_reply(c)->http_status == 0);
        CHECK(dtask_get_sync(c, "not a uuid", 0, &t) == -EINVAL);
        CHECK(dtask_heartbeat_sync(c, "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", 0) == -EINVAL);
        dtask_client_free(c);

        /* asynchronous client on our loop; _sync refused; the callback runs from the loop */
        CHECK(sd_event_new(&e) >= 0);
        CHECK(dtask_client_new(&async, e, "http://127.0.0.1:1", NULL) == 0);
        CHECK(dtask_get_sync(async, "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", 0, &t) == -EOPNOTSUPP);
        CHECK(dtask_get(async, "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99", 0, on_task, &result, NULL) == 0);
        CHECK(result == 1);
        for (int i = 0; i < 100 && result == 1; i++)
                CHECK(sd_event_run(e, 100000) >= 0);
        CHECK(result == -ECONNREFUSED);
        dtask_client_free(async);
        sd_event_unref(e);

        CHECK(dtask_client_new_blocking(&c, "https://127.0.0.1:1", NULL) == -EPROTONOSUPPORT);

        if (failures > 0) {
                fprintf(stderr, "%d check(s) failed\n", failures);
                return EXIT_FAILURE;
        }
        printf("ok\n");
        return EXIT_SUCCESS;
}
