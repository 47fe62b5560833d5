/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "macro.h"

/* Validation of API keys against dtask-keys (POST {keys_url}/api/apikeys/validate), for
 * dtask-api, asynchronous on sd-event, with a short cache.
 *
 * Cache: positive AND negative answers (valid / not valid / inactive / expired) are kept for
 * the cache TTL (default and maximum 5 s, SPEC §4: a deactivated or deleted key stops working
 * everywhere within 5 s). The TTL counts from the moment the request was SENT, not from when
 * the answer arrived, so an entry never outlives the keys service's decision by more than the
 * TTL. Entries are keyed by BLAKE2b-256 of the key under a random key drawn when the client is
 * created: the plaintext key is never stored. The cache is bounded (default 10 000 entries;
 * the oldest is evicted first). Errors are never cached. Concurrent validations of the same
 * uncached key share one HTTP request.
 *
 * Keys that cannot be valid — empty, longer than KEYS_CLIENT_KEY_MAX, or containing anything
 * but printable ASCII without spaces — are answered KEY_NOT_VALID without asking dtask-keys.
 *
 * Keys are never logged; the client logs at debug level only. */

typedef struct KeysClient KeysClient;
typedef struct KeysClientQuery KeysClientQuery;

typedef enum KeyValidity {
        KEY_VALID,
        KEY_NOT_VALID, /* unknown key (or one that cannot be a key) */
        KEY_INACTIVE,
        KEY_EXPIRED,
        _KEY_VALIDITY_MAX,
} KeyValidity;

const char *key_validity_to_string(KeyValidity v); /* "valid", "not valid", "inactive", "expired" */

#define KEYS_CLIENT_CACHE_TTL_DEFAULT_USEC (5 * USEC_PER_SEC)
#define KEYS_CLIENT_CACHE_TTL_MAX_USEC (5 * USEC_PER_SEC)
#define KEYS_CLIENT_CACHE_MAX_ENTRIES_DEFAULT 10000U
#define KEYS_CLIENT_TIMEOUT_DEFAULT_USEC (5 * USEC_PER_SEC)
#define KEYS_CLIENT_KEY_MAX 256U

/* The result of one validation, called exactly once per query, always from an event-loop
 * callback (never from within keys_client_validate()), unless the query was cancelled.
 *
 * error < 0: no answer about the key — dtask-api answers 503, never 401:
 *   -ECONNREFUSED, -ETIMEDOUT, -ECONNRESET, … transport errors of the HTTP client
 *   -EBUSY       dtask-keys answered 429 (rate limited)
 *   -EIO         dtask-keys answered 5xx
 *   -EPROTO      any other unexpected status
 *   -EBADMSG     a 200 whose body is not {"apiKeyId": "<uuid>", "claims": [strings]}
 *   -ECANCELED   the client is being freed
 * error == 0: validity says what dtask-keys answered: 200 → KEY_VALID; 409 → the reason of
 * the refusal, from its "reason" member, else its "detail" ("inactive", "expired", "not valid";
 * a sentence containing the word, or a bare word as text or JSON string, works too), and
 * KEY_NOT_VALID whenever the reason cannot be told — a 409 always refuses. For KEY_VALID, key_id is the key's id
 * (a lower-case UUID) and claims its claims (NULL-terminated, possibly empty, never NULL);
 * for the others key_id and claims are NULL. Both are borrowed for the callback only.
 * The callback may start new validations, cancel other queries, and free the client. */
typedef void (*KeysClientCallback)(KeysClient *k, int error, KeyValidity validity, const char *key_id,
                                   char *const *claims, void *userdata);

typedef struct KeysClientSettings {
        uint64_t cache_ttl_usec;      /* 0: 5 s; more than KEYS_CLIENT_CACHE_TTL_MAX_USEC: -ERANGE */
        size_t cache_max_entries;     /* 0: 10 000 */
        uint64_t timeout_usec;        /* deadline of one validation request, 0: 5 s */
        unsigned max_connections;     /* HTTP connections to dtask-keys, 0: 8 */
} KeysClientSettings;

/* keys_url: the base URL of dtask-keys, "http://127.0.0.1:5215" (see http-client.h: numeric
 * hosts or names resolved once here; no https). cache_ttl_usec: 0 for the default (5 s). */
int keys_client_new(KeysClient **ret, sd_event *event, const char *keys_url, uint64_t cache_ttl_usec);
int keys_client_new_full(KeysClient **ret, sd_event *event, const char *keys_url, const KeysClientSettings *settings);
/* Pending queries get -ECANCELED (their callbacks run from within this call, or, when called
 * from a callback of this client, right after that callback returned). Wipes the cache.
 * Accepts NULL. */
KeysClient *keys_client_free(KeysClient *k);
DEFINE_TRIVIAL_CLEANUP_FUNC(KeysClient *, keys_client_free);

/* Starts validating api_key (which is not kept: only its keyed hash). Returns 0 (the callback
 * will run), or -EINVAL, -ESHUTDOWN (client being freed), -ENOMEM; then it will not.
 * ret_query (optional): a handle valid until the callback runs, for cancelling. */
int keys_client_validate(KeysClient *k, const char *api_key, KeysClientCallback callback, void *userdata,
                         KeysClientQuery **ret_query);
/* The callback will not be called. An HTTP request already under way is not aborted: its
 * answer still fills the cache (and serves other waiters). Accepts NULL; a no-op from within
 * the query's own callback. */
void keys_client_query_cancel(KeysClientQuery *q);

/* Synchronous cache lookup, for request handlers that can answer at once: 1 and the cached
 * answer on a hit (key_id and claims borrowed, valid until control returns to the event loop
 * or the next call on k; pass NULL for what is not needed), 0 on a miss. Counts as a hit. */
int keys_client_lookup_cached(KeysClient *k, const char *api_key, KeyValidity *ret_validity, const char **ret_key_id,
                              char *const **ret_claims);

/* Drops every cached answer (e.g. on SIGHUP, or in tests). */
void keys_client_flush_cache(KeysClient *k);

/* Counters for /metrics (monotonic, except entries). */
typedef struct KeysClientStats {
        uint64_t hits;        /* validations answered from the cache */
        uint64_t misses;      /* validations that needed dtask-keys (coalesced ones included) */
        uint64_t coalesced;   /* misses that joined a request already under way */
        uint64_t requests;    /* HTTP requests sent to dtask-keys */
        uint64_t errors;      /* validations that ended with an error */
        uint64_t rejected;    /* keys refused locally (cannot be keys) */
        uint64_t evictions;   /* cache entries dropped to make room */
        uint64_t entries;     /* cached answers now */
} KeysClientStats;
const KeysClientStats *keys_client_get_stats(KeysClient *k);
