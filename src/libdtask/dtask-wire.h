/* SPDX-License-Identifier: MIT */
#pragma once

#include <json-c/json_object.h>

#include "dtask.h"
#include "macro.h"
#include "time-util.h"

/* The wire format of the task REST API as libdtask speaks it (SPEC §3, §8): request bodies,
 * reply parsing, status → errno mapping, the Link header. Pure functions, no I/O; unit-tested
 * in test-libdtask-wire.c. Not exported from libdtask.so (hidden visibility). */

typedef enum DtaskOp {
        DTASK_OP_CREATE,
        DTASK_OP_GET,
        DTASK_OP_LIST,
        DTASK_OP_RETRY,
        DTASK_OP_CANCEL,
        DTASK_OP_CLAIM,
        DTASK_OP_HEARTBEAT,
        DTASK_OP_COMPLETE,
        DTASK_OP_RELEASE,
        _DTASK_OP_MAX,
} DtaskOp;

/* Limits on replies. A page of tasks with large inputs and outputs can exceed them (1000
 * tasks with 1 MiB outputs each): such a page fails with -EMSGSIZE; ask for smaller pages. */
#define DTASK_MAX_REPLY_SIZE ((size_t) 256U * 1024U * 1024U)
#define DTASK_MAX_STRING_SIZE ((size_t) 64U * 1024U * 1024U)
#define DTASK_IDEMPOTENCY_KEY_MAX 255U
#define DTASK_WORKER_MAX 200U

/* The negative errno for a reply status of op: 0 for 2xx. have_key: whether an API key was
 * sent (401 is -EKEYREJECTED with one, -ENOKEY without). */
int wire_errno_from_status(DtaskOp op, unsigned status, bool have_key);

/* Parses one task object (tolerant of unknown members; a known member of the wrong type, or
 * a missing id or status, is -EBADMSG). */
int wire_task_from_json(json_object *o, DtaskTask **ret);
/* Parses a JSON array of tasks. */
int wire_task_list_from_json(json_object *a, DtaskTaskList **ret);
/* Parses a reply body with the limits above (-EBADMSG when malformed). */
int wire_parse_body(const char *body, size_t size, json_object **ret);

/* The problem document of an error reply (RFC 9457), borrowed from o. Members that are
 * absent or of the wrong type are left NULL. *ret_errors is a new string (or NULL). */
typedef struct WireProblem {
        const char *type;
        const char *title;
        const char *detail;
        char *errors;
} WireProblem;
int wire_problem_from_json(json_object *o, WireProblem *ret);

/* Request bodies, compact JSON text (caller frees). -EINVAL when an argument is invalid. */
int wire_create_body(const DtaskTaskSpec *spec, char **ret);
int wire_complete_body(const DtaskCompletion *c, char **ret);
int wire_heartbeat_body(unsigned attempt, char **ret);
int wire_claim_body(const char *worker, char **ret); /* worker NULL: "{}" */

/* The TTL of a spec as TimeSpan text (spec->ttl parsed as TimeSpan, seconds or "30min";
 * otherwise spec->ttl_usec). -EINVAL when unparsable or neither is set. */
int wire_ttl_text(const char *ttl, uint64_t ttl_usec, char buf[static TIMESPAN_STRING_MAX]);

/* true for 1–255 printable ASCII characters (what dtask-api accepts as Idempotency-Key). */
bool wire_idempotency_key_is_valid(const char *k);

/* Percent-encodes everything but RFC 3986 unreserved characters. */
char *wire_percent_encode(const char *s);
/* Decodes %XX (malformed escapes: -EINVAL). */
int wire_percent_decode(const char *s, size_t n, char **ret);

/* From the values of all Link headers: the `after` query parameter of the rel="next" target,
 * percent-decoded. Returns 1 and sets *ret when found, 0 when there is no next link (or it
 * has no `after`), -ENOMEM. */
int wire_link_next_cursor(const char *const *links, size_t n_links, char **ret);

/* The request path of an operation (percent-encoded query). -EINVAL for ids that are not
 * UUIDs, bad wait/limit values; -ENOMEM. */
int wire_task_path(const char *id, const char *suffix, char **ret);
int wire_get_path(const char *id, unsigned wait_sec, char **ret);
int wire_list_path(DtaskStatus status, unsigned limit, const char *after, char **ret);
