/* SPDX-License-Identifier: MIT */
#pragma once

#include <json-c/json_object.h>

#include "macro.h"
#include "time-util.h"
#include "uuid-util.h"

/* The task model of SPEC §2 and its JSON mapping: parsing and validation of request
 * bodies and the wire format of a task. Pure functions (no I/O), unit-tested in
 * test-api-task-json.c. Field names in requests are matched case-insensitively (the
 * older ASP.NET service did so); validation errors are collected per field in the
 * RFC 9457 "errors" shape under the canonical camelCase name. */

typedef enum TaskStatus {
        TASK_PENDING = 0,
        TASK_IN_PROGRESS = 1,
        TASK_COMPLETED = 2,
        TASK_FAILED = 3,
        TASK_EXPIRED = 4,
        TASK_CANCELLED = 5,
        _TASK_STATUS_MAX,
        _TASK_STATUS_INVALID = -EINVAL,
} TaskStatus;

const char *task_status_to_string(TaskStatus s); /* "Pending", …; NULL when out of range */
/* "Pending"/"pending"/"in_progress"/"InProgress"/… or "0"…"5". */
TaskStatus task_status_from_string(const char *s);
static inline bool task_status_is_terminal(TaskStatus s) {
        return s >= TASK_COMPLETED && s < _TASK_STATUS_MAX;
}

typedef enum TaskLanguage {
        TASK_LANGUAGE_CSHARP = 0,
        TASK_LANGUAGE_PYTHON = 1,
        _TASK_LANGUAGE_MAX,
        _TASK_LANGUAGE_INVALID = -EINVAL,
} TaskLanguage;

const char *task_language_to_string(TaskLanguage l); /* "CSharp", "Python" */
/* Case-insensitive "python"/"csharp", or "0"/"1" (compat). */
TaskLanguage task_language_from_string(const char *s);

/* "ok", "runtime_error", …: the values the schema allows. */
bool task_verdict_is_valid(const char *v);

/* Strict UTF-8 (no overlong forms, no surrogates, ≤ U+10FFFF). ret_offset (optional) gets
 * the offset of the first bad byte. */
bool utf8_is_valid(const char *s, size_t len, size_t *ret_offset);

/* A task as stored. Times are µs since the epoch, 0 for null. */
typedef struct Task {
        char id[UUID_STRING_MAX];
        char *name;
        char *code;
        TaskLanguage language;
        char *input_data;
        char owner_id[UUID_STRING_MAX];
        TaskStatus status;
        char *result;
        char *error_message;
        bool has_exit_code;
        int exit_code;
        char *verdict;
        bool output_truncated;
        usec_t ttl;
        usec_t created_at;
        usec_t started_at;
        usec_t completed_at;
        usec_t expires_at;
        unsigned retry_count;
        unsigned attempt;
        /* not part of the wire format */
        char *worker;
        usec_t lease_expires_at;
} Task;

Task *task_free(Task *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(Task *, task_free);

/* The wire format of SPEC §8, fields in that order. */
int task_to_json(const Task *t, json_object **ret);

typedef struct TaskLimits {
        uint64_t max_code_size;   /* bytes */
        uint64_t max_input_size;  /* bytes */
        usec_t max_ttl;
        uint64_t max_output_size; /* bytes of result and errorMessage reported by a worker */
} TaskLimits;

#define TASK_NAME_MAX 250    /* characters */
#define TASK_WORKER_MAX 200  /* characters */
#define TASK_IDEMPOTENCY_KEY_MAX 255

/* Request body limits. JSON writers may escape every byte of a string as \uXXXX (System.Text.Json
 * does so for all non-ASCII and HTML-sensitive characters), so the limits leave room for 6×. */
uint64_t task_create_body_limit(const TaskLimits *l);
uint64_t task_complete_body_limit(const TaskLimits *l);
#define TASK_SMALL_BODY_LIMIT (64 * 1024) /* claim, heartbeat, retry, cancel */

/* Parses a request body. An empty body gives an empty object when allow_empty. Malformed
 * JSON, a document that is not an object, invalid UTF-8 (named by the member it occurs
 * in) → -EBADMSG with *errors filled; too large → -E2BIG; too deep → -EMLINK. */
int task_json_parse_body(const void *body, size_t size, uint64_t max_size, bool allow_empty, json_object **ret,
                         json_object **errors);

/* The body of POST /api/tasks. Strings are borrowed from body. */
typedef struct TaskCreate {
        const char *name;
        const char *code;
        TaskLanguage language;
        const char *input_data; /* NULL: none */
        usec_t ttl;
} TaskCreate;

/* Returns 0 on success, -EINVAL with *errors filled when invalid, -ENOMEM. Every field is
 * checked, so *errors names each invalid one. */
int task_create_from_json(json_object *body, const TaskLimits *l, TaskCreate *ret, json_object **errors);
/* SHA-256 over a canonical encoding of the request (for Idempotency-Key). */
void task_create_hash(const TaskCreate *c, uint8_t ret[static 32]);

/* ttl as TimeSpan text, or an integer number of seconds (as a JSON number or a string of digits). */
int task_ttl_from_json(json_object *v, usec_t max_ttl, usec_t *ret, json_object **errors);

/* The body of PATCH /api/tasks/{id}: non-null members overwrite, null/absent ones do not. */
typedef enum TaskPatchField {
        TASK_PATCH_NAME = 1 << 0,
        TASK_PATCH_CODE = 1 << 1,
        TASK_PATCH_LANGUAGE = 1 << 2,
        TASK_PATCH_INPUT_DATA = 1 << 3,
        TASK_PATCH_TTL = 1 << 4,
        /* execution fields: tasks:execute or tasks:admin only */
        TASK_PATCH_STATUS = 1 << 5,
        TASK_PATCH_RESULT = 1 << 6,
        TASK_PATCH_ERROR_MESSAGE = 1 << 7,
        TASK_PATCH_STARTED_AT = 1 << 8,
        TASK_PATCH_COMPLETED_AT = 1 << 9,
        TASK_PATCH_USER_ID = 1 << 10,
} TaskPatchField;

#define TASK_PATCH_DEFINITION_FIELDS \
        (TASK_PATCH_NAME | TASK_PATCH_CODE | TASK_PATCH_LANGUAGE | TASK_PATCH_INPUT_DATA | TASK_PATCH_TTL)
#define TASK_PATCH_EXECUTION_FIELDS                                                                      \
        (TASK_PATCH_STATUS | TASK_PATCH_RESULT | TASK_PATCH_ERROR_MESSAGE | TASK_PATCH_STARTED_AT |     \
         TASK_PATCH_COMPLETED_AT | TASK_PATCH_USER_ID)

const char *task_patch_field_name(TaskPatchField f); /* the JSON name of one flag */

typedef struct TaskPatch {
        unsigned fields; /* TaskPatchField mask of the members given */
        const char *name;
        const char *code;
        TaskLanguage language;
        const char *input_data;
        usec_t ttl;
        TaskStatus status;
        const char *result;
        const char *error_message;
        usec_t started_at;
        usec_t completed_at;
        char user_id[UUID_STRING_MAX];
} TaskPatch;

/* id, createdAt, retryCount, … (read-only members) are ignored, as are unknown members. */
int task_patch_from_json(json_object *body, const TaskLimits *l, TaskPatch *ret, json_object **errors);

/* The body of POST /api/tasks/{id}/complete. */
typedef struct TaskCompletion {
        unsigned attempt;
        TaskStatus status; /* Completed, Failed or Expired */
        const char *result;
        const char *error_message;
        bool has_exit_code;
        int exit_code;
        const char *verdict;
        bool output_truncated;
} TaskCompletion;

int task_completion_from_json(json_object *body, const TaskLimits *l, TaskCompletion *ret, json_object **errors);

/* The body of POST /api/tasks/{id}/heartbeat: {"attempt": N}. */
int task_heartbeat_from_json(json_object *body, unsigned *ret_attempt, json_object **errors);

/* The optional body of POST /api/tasks/{id}/claim: {"worker": "host/1"}; *ret_worker NULL if absent. */
int task_claim_from_json(json_object *body, const char **ret_worker, json_object **errors);

/* A worker name from a header (X-Worker): printable, 1…200 characters. */
bool task_worker_name_is_valid(const char *s);
