/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "http-server.h"
#include "macro.h"
#include "uuid-util.h"

/* Authentication of REST callers: the API key of the request (header X-ApiKey, compat:
 * query parameter apiKey when the header is absent) is validated by dtask-keys through
 * the caching keys client. The key itself never leaves this module (nor gets logged). */

typedef enum Claim {
        CLAIM_TASKS_READ = 1 << 0,
        CLAIM_TASKS_WRITE = 1 << 1,
        CLAIM_TASKS_EXECUTE = 1 << 2,
        CLAIM_TASKS_ADMIN = 1 << 3,
} Claim;

typedef struct Caller {
        char key_id[UUID_STRING_MAX]; /* the key's id: the owner of what it creates */
        unsigned claims;              /* Claim mask */
} Caller;

typedef struct Auth Auth;
typedef struct AuthQuery AuthQuery;

/* Outcome of one check. error:
 *   0              caller is set
 *   -ENOKEY        no key in the request                              → 401
 *   -EKEYREJECTED  the key is unknown, inactive or expired            → 401
 *   other < 0      dtask-keys unreachable or failing                  → 503 */
typedef void (*AuthCallback)(int error, const Caller *caller, void *userdata);

int auth_new(Auth **ret, sd_event *event, const char *keys_url, uint64_t cache_ttl_usec);
/* Pending checks are called back with -ECANCELED. */
Auth *auth_free(Auth *a);
DEFINE_TRIVIAL_CLEANUP_FUNC(Auth *, auth_free);

/* The key of a request: X-ApiKey, else ?apiKey= (compat). NULL when there is none. */
const char *auth_request_key(HttpRequest *req);

/* Validates key; cb is always called later from the event loop (never from within this
 * call) unless the query is cancelled. ret (optional) is a handle for auth_query_cancel(). */
int auth_check(Auth *a, const char *key, AuthCallback cb, void *userdata, AuthQuery **ret);
void auth_query_cancel(AuthQuery *q);
/* Answers from the cache only: 1 with *ret set, 0 not cached, -EKEYREJECTED cached as invalid. */
int auth_check_cached(Auth *a, const char *key, Caller *ret);

/* "tasks:read" … → Claim; 0 for claims of other services. */
unsigned auth_claim_from_string(const char *s);
