/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <strings.h>

#include "dtask.h"
#include "macro.h"
#include "time-util.h"

/* DtaskTask, DtaskTaskList and the enums of the public API. */

static const char *const status_names[] = {
        [DTASK_STATUS_PENDING] = "Pending",
        [DTASK_STATUS_IN_PROGRESS] = "InProgress",
        [DTASK_STATUS_COMPLETED] = "Completed",
        [DTASK_STATUS_FAILED] = "Failed",
        [DTASK_STATUS_EXPIRED] = "Expired",
        [DTASK_STATUS_CANCELLED] = "Cancelled",
};

_public_ const char *dtask_status_to_string(DtaskStatus s) {
        if (s < 0 || (size_t) s >= ELEMENTSOF(status_names))
                return NULL;
        return status_names[s];
}

_public_ DtaskStatus dtask_status_from_string(const char *s) {
        if (isempty(s))
                return DTASK_STATUS_ANY;
        if (s[0] >= '0' && s[0] <= '5' && s[1] == '\0')
                return (DtaskStatus) (s[0] - '0');
        for (size_t i = 0; i < ELEMENTSOF(status_names); i++)
                if (strcaseeq(s, status_names[i]))
                        return (DtaskStatus) i;
        if (strcaseeq(s, "in_progress") || strcaseeq(s, "in-progress") || strcaseeq(s, "running"))
                return DTASK_STATUS_IN_PROGRESS;
        if (strcaseeq(s, "canceled"))
                return DTASK_STATUS_CANCELLED;
        return DTASK_STATUS_ANY;
}

_public_ bool dtask_status_is_terminal(DtaskStatus s) {
        return s >= DTASK_STATUS_COMPLETED && s <= DTASK_STATUS_CANCELLED;
}

_public_ const char *dtask_language_to_string(DtaskLanguage l) {
        switch (l) {
        case DTASK_LANGUAGE_CSHARP:
                return "CSharp";
        case DTASK_LANGUAGE_PYTHON:
                return "Python";
        default:
                return NULL;
        }
}

_public_ DtaskLanguage dtask_language_from_string(const char *s) {
        if (isempty(s))
                return DTASK_LANGUAGE_UNKNOWN;
        if (streq(s, "0") || strcaseeq(s, "csharp") || strcaseeq(s, "c#") || strcaseeq(s, "cs"))
                return DTASK_LANGUAGE_CSHARP;
        if (streq(s, "1") || strcaseeq(s, "python") || strcaseeq(s, "py"))
                return DTASK_LANGUAGE_PYTHON;
        return DTASK_LANGUAGE_UNKNOWN;
}

_public_ DtaskTask *dtask_task_free(DtaskTask *t) {
        if (!t)
                return NULL;
        free(t->id);
        free(t->name);
        free(t->code);
        free(t->input_data);
        free(t->user_id);
        free(t->status_name);
        free(t->result);
        free(t->error_message);
        free(t->verdict);
        free(t->ttl);
        free(t->json);
        return mfree(t);
}

static int strdup_null(const char *s, char **ret) {
        if (!s) {
                *ret = NULL;
                return 0;
        }
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

_public_ int dtask_task_dup(const DtaskTask *t, DtaskTask **ret) {
        DtaskTask *n;

        assert_return(t, -EINVAL);
        assert_return(ret, -EINVAL);

        n = calloc(1, sizeof(DtaskTask));
        if (!n)
                return -ENOMEM;
        *n = (DtaskTask) {
                .language = t->language,
                .status = t->status,
                .has_exit_code = t->has_exit_code,
                .exit_code = t->exit_code,
                .output_truncated = t->output_truncated,
                .ttl_usec = t->ttl_usec,
                .created_at = t->created_at,
                .started_at = t->started_at,
                .completed_at = t->completed_at,
                .expires_at = t->expires_at,
                .retry_count = t->retry_count,
                .attempt = t->attempt,
        };
        if (strdup_null(t->id, &n->id) < 0 || strdup_null(t->name, &n->name) < 0 ||
            strdup_null(t->code, &n->code) < 0 || strdup_null(t->input_data, &n->input_data) < 0 ||
            strdup_null(t->user_id, &n->user_id) < 0 || strdup_null(t->status_name, &n->status_name) < 0 ||
            strdup_null(t->result, &n->result) < 0 || strdup_null(t->error_message, &n->error_message) < 0 ||
            strdup_null(t->verdict, &n->verdict) < 0 || strdup_null(t->ttl, &n->ttl) < 0 ||
            strdup_null(t->json, &n->json) < 0) {
                dtask_task_free(n);
                return -ENOMEM;
        }
        *ret = n;
        return 0;
}

_public_ DtaskTaskList *dtask_task_list_free(DtaskTaskList *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < l->n_tasks; i++)
                dtask_task_free(l->tasks[i]);
        free(l->tasks);
        free(l->next_cursor);
        return mfree(l);
}

_public_ char *dtask_timestamp_format(uint64_t usec, char *buf, size_t size) {
        char b[ISO8601_STRING_MAX];

        if (!buf || size == 0)
                return buf;
        if (usec == 0)
                buf[0] = '\0';
        else
                (void) snprintf(buf, size, "%s", iso8601_format(usec, b));
        return buf;
}
