/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <strings.h>

#include "http-client.h"
#include "json-util.h"
#include "keys-client.h"
#include "log.h"
#include "time-util.h"
#include "uuid-util.h"

#define DIGEST_SIZE 32U
#define PENDING_BUCKETS 256U
#define VALIDATE_PATH "/api/apikeys/validate"
#define REPLY_MAX_SIZE ((size_t) 1024U * 1024U)
#define CLAIMS_MAX 1024U
#define CLAIM_MAX_LENGTH 1024U

/* Entries of both tables start with this: the keyed hash of an API key. */
typedef struct HashNode {
        uint8_t digest[DIGEST_SIZE];
        struct HashNode *bucket_next;
} HashNode;

typedef struct HashTable {
        HashNode **buckets;
        size_t mask; /* number of buckets - 1, a power of two minus one */
} HashTable;

typedef struct CacheEntry {
        HashNode node; /* first */
        struct CacheEntry *older, *newer;
        uint64_t expires; /* CLOCK_MONOTONIC */
        KeyValidity validity;
        char *key_id;
        char **claims;
} CacheEntry;

typedef struct Pending {
        HashNode node; /* first */
        KeysClient *client;
        HttpClientRequest *request;
        uint64_t started;
        KeysClientQuery *waiters_head, *waiters_tail;
} Pending;

typedef enum QueryState {
        QUERY_WAITING,     /* on a Pending's waiter list */
        QUERY_READY,       /* result set, on the client's ready list */
        QUERY_DISPATCHING, /* its callback runs */
} QueryState;

struct KeysClientQuery {
        KeysClient *client;
        QueryState state;
        Pending *pending;
        KeysClientQuery *prev, *next;
        KeysClientCallback callback;
        void *userdata;

        int error;
        KeyValidity validity;
        char *key_id;
        char **claims;
};

struct KeysClient {
        sd_event *event;
        HttpClient *http;
        uint8_t hash_key[crypto_generichash_KEYBYTES];
        uint64_t ttl;
        uint64_t timeout;
        size_t max_entries;

        HashTable cache;
        CacheEntry *oldest, *newest;
        HashTable pending;

        KeysClientQuery *ready_head, *ready_tail;
        sd_event_source *ready_source;
        bool dispatching;
        bool free_requested;
        bool freeing;

        KeysClientStats stats;
};

static const char *const validity_table[_KEY_VALIDITY_MAX] = {
        [KEY_VALID] = "valid",
        [KEY_NOT_VALID] = "not valid",
        [KEY_INACTIVE] = "inactive",
        [KEY_EXPIRED] = "expired",
};

const char *key_validity_to_string(KeyValidity v) {
        return v >= 0 && v < _KEY_VALIDITY_MAX ? validity_table[v] : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* hash tables keyed by digests (already uniformly distributed: the hash is keyed by a secret) */

static int hash_table_init(HashTable *t, size_t min_buckets) {
        size_t n = 16;

        while (n < min_buckets && n < ((size_t) 1 << 24))
                n <<= 1;
        t->buckets = calloc(n, sizeof(HashNode *));
        if (!t->buckets)
                return -ENOMEM;
        t->mask = n - 1;
        return 0;
}

static HashNode **hash_table_slot(HashTable *t, const uint8_t digest[static DIGEST_SIZE]) {
        uint64_t h;

        memcpy(&h, digest, sizeof(h));
        return &t->buckets[h & t->mask];
}

static HashNode *hash_table_get(HashTable *t, const uint8_t digest[static DIGEST_SIZE]) {
        for (HashNode *n = *hash_table_slot(t, digest); n; n = n->bucket_next)
                if (sodium_memcmp(n->digest, digest, DIGEST_SIZE) == 0)
                        return n;
        return NULL;
}

static void hash_table_put(HashTable *t, HashNode *node) {
        HashNode **slot = hash_table_slot(t, node->digest);

        node->bucket_next = *slot;
        *slot = node;
}

static void hash_table_remove(HashTable *t, HashNode *node) {
        for (HashNode **p = hash_table_slot(t, node->digest); *p; p = &(*p)->bucket_next)
                if (*p == node) {
                        *p = node->bucket_next;
                        node->bucket_next = NULL;
                        return;
                }
}

/* ------------------------------------------------------------------------------------------ */
/* the cache */

static void cache_entry_free(KeysClient *k, CacheEntry *e) {
        hash_table_remove(&k->cache, &e->node);
        if (e->older)
                e->older->newer = e->newer;
        else
                k->oldest = e->newer;
        if (e->newer)
                e->newer->older = e->older;
        else
                k->newest = e->older;
        k->stats.entries--;

        sodium_memzero(e->node.digest, DIGEST_SIZE);
        free(e->key_id);
        strv_free(e->claims);
        free(e);
}

/* All entries live equally long, so the oldest entry is also the first to expire. */
static void cache_expire(KeysClient *k, uint64_t now) {
        while (k->oldest && k->oldest->expires <= now)
                cache_entry_free(k, k->oldest);
}

static CacheEntry *cache_get(KeysClient *k, const uint8_t digest[static DIGEST_SIZE]) {
        CacheEntry *e = (CacheEntry *) hash_table_get(&k->cache, digest);

        if (e && e->expires <= now_usec(CLOCK_MONOTONIC)) {
                cache_entry_free(k, e);
                return NULL;
        }
        return e;
}

static int strv_copy(char *const *l, char ***ret) {
        size_t n = strv_length(l);
        _cleanup_(strv_freep) char **c = calloc(n + 1, sizeof(char *));

        if (!c)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                c[i] = strdup(l[i]);
                if (!c[i])
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(c);
        return 0;
}

static int cache_put(KeysClient *k, const uint8_t digest[static DIGEST_SIZE], uint64_t expires, KeyValidity validity,
                     const char *key_id, char *const *claims) {
        _cleanup_free_ CacheEntry *e = NULL;
        CacheEntry *old;
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        int r;

        if (expires <= now)
                return 0; /* the answer took longer than the TTL: already stale */

        old = (CacheEntry *) hash_table_get(&k->cache, digest);
        if (old)
                cache_entry_free(k, old);
        cache_expire(k, now);
        while (k->stats.entries >= k->max_entries && k->oldest) {
                cache_entry_free(k, k->oldest);
                k->stats.evictions++;
        }

        e = calloc(1, sizeof(CacheEntry));
        if (!e)
                return -ENOMEM;
        memcpy(e->node.digest, digest, DIGEST_SIZE);
        e->expires = expires;
        e->validity = validity;
        if (key_id) {
                e->key_id = strdup(key_id);
                if (!e->key_id)
                        return -ENOMEM;
        }
        if (claims) {
                r = strv_copy(claims, &e->claims);
                if (r < 0) {
                        free(e->key_id);
                        return r;
                }
        }

        hash_table_put(&k->cache, &e->node);
        e->older = k->newest;
        if (k->newest)
                k->newest->newer = e;
        else
                k->oldest = e;
        k->newest = e;
        k->stats.entries++;
        TAKE_PTR(e);
        return 0;
}

void keys_client_flush_cache(KeysClient *k) {
        if (!k)
                return;
        while (k->oldest)
                cache_entry_free(k, k->oldest);
}

/* ------------------------------------------------------------------------------------------ */
/* queries */

static void query_free(KeysClientQuery *q) {
        if (!q)
                return;
        free(q->key_id);
        strv_free(q->claims);
        free(q);
}

static int query_set_result(KeysClientQuery *q, int error, KeyValidity validity, const char *key_id,
                            char *const *claims) {
        q->error = error;
        q->validity = validity;
        if (error < 0 || validity != KEY_VALID)
                return 0;

        q->key_id = strdup(strempty(key_id));
        if (!q->key_id)
                goto oom;
        if (strv_copy(claims, &q->claims) < 0)
                goto oom;
        return 0;

oom:
        q->key_id = mfree(q->key_id);
        q->error = -ENOMEM;
        return -ENOMEM;
}

static void ready_remove(KeysClient *k, KeysClientQuery *q) {
        if (q->prev)
                q->prev->next = q->next;
        else
                k->ready_head = q->next;
        if (q->next)
                q->next->prev = q->prev;
        else
                k->ready_tail = q->prev;
        q->prev = q->next = NULL;
}

static void ready_append(KeysClient *k, KeysClientQuery *q) {
        int r;

        q->state = QUERY_READY;
        q->pending = NULL;
        q->next = NULL;
        q->prev = k->ready_tail;
        if (k->ready_tail)
                k->ready_tail->next = q;
        else
                k->ready_head = q;
        k->ready_tail = q;

        if (k->ready_source && !k->dispatching) {
                r = sd_event_source_set_enabled(k->ready_source, SD_EVENT_ONESHOT);
                if (r < 0)
                        log_debug_errno(r, "keys-client: failed to schedule callbacks: %m");
        }
}

static void waiter_remove(Pending *p, KeysClientQuery *q) {
        if (q->prev)
                q->prev->next = q->next;
        else
                p->waiters_head = q->next;
        if (q->next)
                q->next->prev = q->prev;
        else
                p->waiters_tail = q->prev;
        q->prev = q->next = NULL;
        q->pending = NULL;
}

static void waiter_append(Pending *p, KeysClientQuery *q) {
        q->state = QUERY_WAITING;
        q->pending = p;
        q->next = NULL;
        q->prev = p->waiters_tail;
        if (p->waiters_tail)
                p->waiters_tail->next = q;
        else
                p->waiters_head = q;
        p->waiters_tail = q;
}

static void keys_client_free_now(KeysClient *k);

static int on_ready(sd_event_source *s, void *userdata) {
        KeysClient *k = userdata;
        size_t n = 0;

        /* Only what is ready now: queries added by callbacks wait for the next iteration. */
        for (KeysClientQuery *q = k->ready_head; q; q = q->next)
                n++;

        k->dispatching = true;
        for (; n > 0 && k->ready_head && !k->free_requested; n--) {
                KeysClientQuery *q = k->ready_head;

                ready_remove(k, q);
                q->state = QUERY_DISPATCHING;
                if (q->error < 0 && q->error != -ECANCELED)
                        k->stats.errors++;
                q->callback(k, q->error, q->validity, q->error < 0 ? NULL : q->key_id,
                            q->error < 0 || q->validity != KEY_VALID ? NULL : q->claims, q->userdata);
                query_free(q);
        }
        k->dispatching = false;

        if (k->free_requested)
                keys_client_free_now(k);
        else if (k->ready_head)
                (void) sd_event_source_set_enabled(k->ready_source, SD_EVENT_ONESHOT);
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* talking to dtask-keys */

static bool key_is_plausible(const char *key) {
        size_t n = strlen(key);

        if (n == 0 || n > KEYS_CLIENT_KEY_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) key[i] <= 0x20 || (unsigned char) key[i] >= 0x7f)
                        return false;
        return true;
}

static void key_digest(KeysClient *k, const char *key, uint8_t ret[static DIGEST_SIZE]) {
        crypto_generichash(ret, DIGEST_SIZE, (const unsigned char *) key, strlen(key), k->hash_key,
                           sizeof(k->hash_key));
}

/* {"apiKey":"…"} in memory that is wiped afterwards (json-c would leave copies behind). */
static char *validate_body_new(const char *key, size_t *ret_size) {
        size_t n = strlen(key), size = 0;
        char *b = malloc(STRLEN("{\"apiKey\":\"\"}") + 2 * n + 1);

        if (!b)
                return NULL;
        memcpy(b, "{\"apiKey\":\"", 11);
        size = 11;
        for (size_t i = 0; i < n; i++) {
                /* plausible keys are printable ASCII: only these two need escaping */
                if (key[i] == '"' || key[i] == '\\')
                        b[size++] = '\\';
                b[size++] = key[i];
        }
        memcpy(b + size, "\"}", 3);
        size += 2;
        *ret_size = size;
        return b;
}

static void pending_free(Pending *p) {
        if (!p)
                return;
        http_client_request_cancel(p->request);
        sodium_memzero(p->node.digest, DIGEST_SIZE);
        free(p);
}

static int parse_valid_reply(const HttpResponse *resp, char **ret_id, char ***ret_claims) {
        JsonLimits limits = { .max_size = REPLY_MAX_SIZE, .max_depth = 8, .max_string = 64 * 1024 };
        _cleanup_json_ json_object *j = NULL, *errors = NULL;
        _cleanup_(strv_freep) char **claims = NULL;
        char id[UUID_STRING_MAX];
        const char *s = NULL;
        int r;

        r = json_parse_limited(resp->body, resp->size, &limits, &j, NULL);
        if (r < 0)
                return -EBADMSG;
        if (!json_object_is_type(j, json_type_object))
                return -EBADMSG;

        r = json_field_string(j, "apiKeyId", 1, 64, &s, &errors);
        if (r == -ENOMEM)
                return r;
        if (r <= 0 || uuid_normalize(s, id) < 0)
                return -EBADMSG;

        r = json_field_strv(j, "claims", CLAIMS_MAX, CLAIM_MAX_LENGTH, &claims, &errors);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return -EBADMSG;
        if (r == 0) {
                claims = calloc(1, sizeof(char *)); /* absent or null: no claims */
                if (!claims)
                        return -ENOMEM;
        }

        *ret_id = strdup(id);
        if (!*ret_id)
                return -ENOMEM;
        *ret_claims = TAKE_PTR(claims);
        return 0;
}

static KeyValidity reason_to_validity(const char *s, size_t n) {
        static const struct {
                const char *word;
                KeyValidity validity;
        } words[] = {
                { "inactive", KEY_INACTIVE },
                { "deactivated", KEY_INACTIVE },
                { "expired", KEY_EXPIRED },
        };

        while (n > 0 && isspace((unsigned char) *s))
                s++, n--;
        while (n > 0 && isspace((unsigned char) s[n - 1]))
                n--;

        /* "inactive", "expired", "not valid" exactly (compat), or a sentence containing them */
        for (size_t i = 0; i < ELEMENTSOF(words); i++)
                for (size_t j = 0; j + strlen(words[i].word) <= n; j++)
                        if (strncasecmp(s + j, words[i].word, strlen(words[i].word)) == 0)
                                return words[i].validity;
        return KEY_NOT_VALID;
}

/* A 409 always refuses the key; the body only says why. dtask-keys sends problem+json with
 * "reason" and "detail"; the older system sent the bare word (as text or a JSON string). */
static KeyValidity parse_refusal(const HttpResponse *resp) {
        JsonLimits limits = { .max_size = REPLY_MAX_SIZE, .max_depth = 8, .max_string = 64 * 1024 };
        _cleanup_json_ json_object *j = NULL;
        json_object *v;

        if (json_parse_limited(resp->body, resp->size, &limits, &j, NULL) < 0)
                return reason_to_validity(resp->body, resp->size);

        if (json_object_is_type(j, json_type_string))
                return reason_to_validity(json_object_get_string(j), (size_t) json_object_get_string_len(j));
        if (!json_object_is_type(j, json_type_object))
                return KEY_NOT_VALID;

        v = json_object_get_ci(j, "reason");
        if (!v || !json_object_is_type(v, json_type_string))
                v = json_object_get_ci(j, "detail");
        if (!v || !json_object_is_type(v, json_type_string))
                return KEY_NOT_VALID;
        return reason_to_validity(json_object_get_string(v), (size_t) json_object_get_string_len(v));
}

static void on_http_done(HttpClient *c, int error, const HttpResponse *resp, void *userdata) {
        Pending *p = userdata;
        KeysClient *k = p->client;
        _cleanup_free_ char *key_id = NULL;
        _cleanup_(strv_freep) char **claims = NULL;
        KeyValidity validity = KEY_NOT_VALID;
        int r;

        p->request = NULL; /* completed: no longer cancellable */
        hash_table_remove(&k->pending, &p->node);

        if (error >= 0) {
                switch (resp->status) {
                case 200:
                        error = parse_valid_reply(resp, &key_id, &claims);
                        validity = KEY_VALID;
                        break;
                case 409:
                        validity = parse_refusal(resp);
                        break;
                case 429:
                        error = -EBUSY;
                        break;
                default:
                        error = resp->status >= 500 ? -EIO : -EPROTO;
                }
        }

        if (error < 0)
                log_debug_errno(error, "keys-client: validating a key (ak_…) failed: %m");
        else {
                r = cache_put(k, p->node.digest, p->started + k->ttl, validity, key_id, claims);
                if (r < 0)
                        log_debug_errno(r, "keys-client: failed to cache a validation result: %m");
        }

        while (p->waiters_head) {
                KeysClientQuery *q = p->waiters_head;

                waiter_remove(p, q);
                (void) query_set_result(q, error, validity, key_id, claims);
                ready_append(k, q);
        }

        pending_free(p);
}

/* ------------------------------------------------------------------------------------------ */
/* public API */

int keys_client_new_full(KeysClient **ret, sd_event *event, const char *keys_url, const KeysClientSettings *settings) {
        _cleanup_(keys_client_freep) KeysClient *k = NULL;
        const KeysClientSettings defaults = {};
        HttpClientSettings hs;
        int r;

        assert_return(ret, -EINVAL);
        assert_return(event, -EINVAL);
        assert_return(keys_url, -EINVAL);

        if (!settings)
                settings = &defaults;
        if (settings->cache_ttl_usec > KEYS_CLIENT_CACHE_TTL_MAX_USEC)
                return -ERANGE;

        if (sodium_init() < 0)
                return -EIO;

        k = calloc(1, sizeof(KeysClient));
        if (!k)
                return -ENOMEM;
        k->event = sd_event_ref(event);
        k->ttl = settings->cache_ttl_usec ?: KEYS_CLIENT_CACHE_TTL_DEFAULT_USEC;
        k->timeout = settings->timeout_usec ?: KEYS_CLIENT_TIMEOUT_DEFAULT_USEC;
        k->max_entries = settings->cache_max_entries ?: KEYS_CLIENT_CACHE_MAX_ENTRIES_DEFAULT;
        randombytes_buf(k->hash_key, sizeof(k->hash_key));

        r = hash_table_init(&k->cache, k->max_entries + k->max_entries / 2);
        if (r < 0)
                return r;
        r = hash_table_init(&k->pending, PENDING_BUCKETS);
        if (r < 0)
                return r;

        hs = (HttpClientSettings) {
                .max_connections = settings->max_connections,
                .max_body_size = REPLY_MAX_SIZE,
                .default_timeout_usec = k->timeout,
        };
        r = http_client_new(&k->http, event, keys_url, &hs);
        if (r < 0)
                return r;

        r = sd_event_add_defer(event, &k->ready_source, on_ready, k);
        if (r < 0)
                return r;
        r = sd_event_source_set_enabled(k->ready_source, SD_EVENT_OFF);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(k);
        return 0;
}

int keys_client_new(KeysClient **ret, sd_event *event, const char *keys_url, uint64_t cache_ttl_usec) {
        return keys_client_new_full(ret, event, keys_url, &(KeysClientSettings) { .cache_ttl_usec = cache_ttl_usec });
}

static void keys_client_free_now(KeysClient *k) {
        k->freeing = true;
        k->ready_source = sd_event_source_disable_unref(k->ready_source);

        /* requests under way end with -ECANCELED: their waiters move to the ready list */
        k->http = http_client_free(k->http);

        while (k->ready_head) {
                KeysClientQuery *q = k->ready_head;

                ready_remove(k, q);
                q->state = QUERY_DISPATCHING;
                q->callback(k, -ECANCELED, KEY_NOT_VALID, NULL, NULL, q->userdata);
                query_free(q);
        }

        keys_client_flush_cache(k);
        free(k->cache.buckets);
        free(k->pending.buckets);
        sodium_memzero(k->hash_key, sizeof(k->hash_key));
        sd_event_unref(k->event);
        free(k);
}

KeysClient *keys_client_free(KeysClient *k) {
        if (!k || k->freeing || k->free_requested)
                return NULL;
        if (k->dispatching) {
                /* called from a callback: finish after it returned */
                k->free_requested = true;
                return NULL;
        }
        keys_client_free_now(k);
        return NULL;
}

int keys_client_validate(KeysClient *k, const char *api_key, KeysClientCallback callback, void *userdata,
                         KeysClientQuery **ret_query) {
        _cleanup_free_ KeysClientQuery *q = NULL;
        uint8_t digest[DIGEST_SIZE];
        CacheEntry *e;
        Pending *p;
        int r;

        assert_return(k, -EINVAL);
        assert_return(api_key, -EINVAL);
        assert_return(callback, -EINVAL);

        if (k->freeing || k->free_requested)
                return -ESHUTDOWN;

        q = calloc(1, sizeof(KeysClientQuery));
        if (!q)
                return -ENOMEM;
        q->client = k;
        q->callback = callback;
        q->userdata = userdata;

        if (!key_is_plausible(api_key)) {
                k->stats.rejected++;
                (void) query_set_result(q, 0, KEY_NOT_VALID, NULL, NULL);
                goto ready;
        }

        key_digest(k, api_key, digest);

        e = cache_get(k, digest);
        if (e) {
                k->stats.hits++;
                r = query_set_result(q, 0, e->validity, e->key_id, e->claims);
                sodium_memzero(digest, sizeof(digest));
                if (r < 0)
                        return r;
                goto ready;
        }

        p = (Pending *) hash_table_get(&k->pending, digest);
        if (p) {
                k->stats.misses++;
                k->stats.coalesced++;
                waiter_append(p, q);
                sodium_memzero(digest, sizeof(digest));
                goto done;
        }

        {
                static const char *const headers[] = { "Accept: application/json", NULL };
                _cleanup_free_ Pending *np = NULL;
                char *body;
                size_t size;

                np = calloc(1, sizeof(Pending));
                if (!np)
                        return -ENOMEM;
                memcpy(np->node.digest, digest, DIGEST_SIZE);
                sodium_memzero(digest, sizeof(digest));
                np->client = k;
                np->started = now_usec(CLOCK_MONOTONIC);

                body = validate_body_new(api_key, &size);
                if (!body)
                        return -ENOMEM;
                r = http_client_request(k->http, "POST", VALIDATE_PATH, headers, "application/json", body, size,
                                        k->timeout, HTTP_CLIENT_IDEMPOTENT, on_http_done, np, &np->request);
                sodium_memzero(body, size);
                free(body);
                if (r < 0) {
                        sodium_memzero(np->node.digest, DIGEST_SIZE);
                        return r;
                }

                k->stats.misses++;
                k->stats.requests++;
                hash_table_put(&k->pending, &np->node);
                waiter_append(np, q);
                TAKE_PTR(np);
        }
        goto done;

ready:
        ready_append(k, q);
done:
        if (ret_query)
                *ret_query = q;
        TAKE_PTR(q);
        return 0;
}

void keys_client_query_cancel(KeysClientQuery *q) {
        if (!q)
                return;

        switch (q->state) {
        case QUERY_DISPATCHING:
                return;
        case QUERY_READY:
                ready_remove(q->client, q);
                break;
        case QUERY_WAITING:
                /* the request stays: its answer still goes into the cache */
                waiter_remove(q->pending, q);
                break;
        }
        query_free(q);
}

int keys_client_lookup_cached(KeysClient *k, const char *api_key, KeyValidity *ret_validity, const char **ret_key_id,
                              char *const **ret_claims) {
        uint8_t digest[DIGEST_SIZE];
        CacheEntry *e;

        assert_return(k, -EINVAL);
        assert_return(api_key, -EINVAL);

        if (!key_is_plausible(api_key)) {
                k->stats.rejected++;
                if (ret_validity)
                        *ret_validity = KEY_NOT_VALID;
                if (ret_key_id)
                        *ret_key_id = NULL;
                if (ret_claims)
                        *ret_claims = NULL;
                return 1;
        }

        key_digest(k, api_key, digest);
        e = cache_get(k, digest);
        sodium_memzero(digest, sizeof(digest));
        if (!e)
                return 0;

        k->stats.hits++;
        if (ret_validity)
                *ret_validity = e->validity;
        if (ret_key_id)
                *ret_key_id = e->validity == KEY_VALID ? e->key_id : NULL;
        if (ret_claims)
                *ret_claims = e->validity == KEY_VALID ? e->claims : NULL;
        return 1;
}

const KeysClientStats *keys_client_get_stats(KeysClient *k) {
        return k ? &k->stats : NULL;
}
