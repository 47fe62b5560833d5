/* SPDX-License-Identifier: MIT */
#include <json-c/json.h>
#include <sodium.h>

#include "json-util.h"
#include "store.h"

#define KEY_COLUMNS                                                                             \
        "id::text, name, prefix, is_active, "                                                   \
        "(extract(epoch FROM created_at) * 1000000)::bigint, "                                  \
        "(extract(epoch FROM expires_at) * 1000000)::bigint, "                                  \
        "(extract(epoch FROM last_used_at) * 1000000)::bigint, "                                \
        "array_to_json(claims)::text"
#define N_KEY_COLUMNS 8

/* Claims travel as a JSON array parameter; WITH ORDINALITY keeps their order. */
#define CLAIMS_FROM_JSON(param) \
        "ARRAY(SELECT c FROM json_array_elements_text(" param "::json) WITH ORDINALITY AS t(c, i) ORDER BY i)"

struct KeyStore {
        PgPool *pool;
        ApiKeyPepper pepper;
        uint64_t timeout;
};

typedef struct StoreCall {
        KeyStore *store;
        KeyStoreCallback callback;
        KeyStoreCreateCallback create_callback;
        KeyStoreDoneCallback done_callback;
        void *userdata;
        bool want_one;               /* no row → -ENOENT */
        uint8_t hash[API_KEY_HASH_SIZE]; /* lookup: hash to compare with */
        bool compare_hash;
        char *plaintext;             /* create: the new key (wiped) */
} StoreCall;

static StoreCall *store_call_free(StoreCall *c) {
        if (!c)
                return NULL;
        erase_and_free(c->plaintext);
        sodium_memzero(c->hash, sizeof c->hash);
        return mfree(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(StoreCall *, store_call_free);

ApiKey *api_key_free(ApiKey *k) {
        if (!k)
                return NULL;
        free(k->name);
        free(k->prefix);
        strv_free(k->claims);
        return mfree(k);
}

void api_key_array_free(ApiKey **keys, size_t n) {
        for (size_t i = 0; i < n; i++)
                api_key_free(keys[i]);
        free(keys);
}

ApiKeyState api_key_state(const ApiKey *k, usec_t now_realtime) {
        if (!k->is_active)
                return API_KEY_INACTIVE;
        if (k->expires_at > 0 && k->expires_at <= now_realtime)
                return API_KEY_EXPIRED;
        return API_KEY_VALID;
}

static size_t utf8_chars(const char *s) {
        size_t n = 0;

        for (; *s; s++)
                if (((unsigned char) *s & 0xc0) != 0x80)
                        n++;
        return n;
}

static bool has_control(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return true;
        return false;
}

static bool all_space(const char *s) {
        for (; *s; s++)
                if (!strchr(" \t\n\r\v\f", *s))
                        return false;
        return true;
}

const char *api_key_check_name(const char *name) {
        size_t n;

        if (!name)
                return "is required";
        n = utf8_chars(name);
        if (n == 0 || all_space(name))
                return "must not be empty";
        if (n > API_KEY_NAME_MAX)
                return "must be at most 250 characters long";
        if (has_control(name))
                return "must not contain control characters";
        return NULL;
}

const char *api_key_check_claims(char *const *claims) {
        size_t n = 0;

        for (char *const *c = claims; c && *c; c++, n++) {
                size_t k = utf8_chars(*c);

                if (k == 0 || k > API_KEY_CLAIM_MAX)
                        return "entries must have 1 to 200 characters";
                if (has_control(*c))
                        return "entries must not contain control characters";
        }
        if (n > API_KEY_CLAIMS_MAX)
                return "must have at most 64 entries";
        return NULL;
}

void api_key_claims_uniq(char **claims) {
        size_t k = 0;

        for (size_t i = 0; claims && claims[i]; i++) {
                bool seen = false;

                for (size_t j = 0; j < k; j++)
                        if (streq(claims[j], claims[i])) {
                                seen = true;
                                break;
                        }
                if (seen)
                        free(claims[i]);
                else
                        claims[k++] = claims[i];
        }
        if (claims)
                claims[k] = NULL;
}

int key_store_new(KeyStore **ret, PgPool *pool, const ApiKeyPepper *pepper, uint64_t timeout_usec) {
        KeyStore *s;

        if (!ret || !pool || !pepper || pepper->size < API_KEY_PEPPER_MIN)
                return -EINVAL;
        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->pool = pool;
        s->pepper = *pepper;
        s->timeout = timeout_usec;
        *ret = s;
        return 0;
}

KeyStore *key_store_free(KeyStore *s) {
        if (!s)
                return NULL;
        api_key_pepper_done(&s->pepper);
        return mfree(s);
}

/* ---- result parsing ---- */

static int parse_usec(const PGresult *r, int row, int col, usec_t *ret) {
        const char *v;
        char *end;
        long long x;

        if (PQgetisnull(r, row, col)) {
                *ret = 0;
                return 0;
        }
        v = PQgetvalue(r, row, col);
        errno = 0;
        x = strtoll(v, &end, 10);
        if (errno != 0 || *end != '\0' || end == v)
                return -EBADMSG;
        /* Times before 1970 cannot be stored through this service; show them as the epoch + 1 µs. */
        *ret = x > 0 ? (usec_t) x : 1;
        return 0;
}

static int parse_claims(const char *json, char ***ret) {
        _cleanup_json_ json_object *v = NULL;
        _cleanup_(strv_freep) char **l = NULL;
        size_t n;

        v = json_tokener_parse(json);
        if (!json_object_is_type(v, json_type_array))
                return -EBADMSG;
        n = json_object_array_length(v);
        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *e = json_object_array_get_idx(v, i);

                if (!json_object_is_type(e, json_type_string))
                        return -EBADMSG;
                l[i] = strdup(json_object_get_string(e));
                if (!l[i])
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

static int parse_row(const PGresult *r, int row, ApiKey **ret) {
        _cleanup_(api_key_freep) ApiKey *k = NULL;
        int q;

        if (PQnfields(r) < N_KEY_COLUMNS)
                return -EBADMSG;
        k = calloc(1, sizeof *k);
        if (!k)
                return -ENOMEM;
        if (uuid_normalize(PQgetvalue(r, row, 0), k->id) < 0)
                return -EBADMSG;
        k->name = strdup(PQgetvalue(r, row, 1));
        k->prefix = strdup(PQgetvalue(r, row, 2));
        if (!k->name || !k->prefix)
                return -ENOMEM;
        k->is_active = streq(PQgetvalue(r, row, 3), "t");
        q = parse_usec(r, row, 4, &k->created_at);
        if (q >= 0)
                q = parse_usec(r, row, 5, &k->expires_at);
        if (q >= 0)
                q = parse_usec(r, row, 6, &k->last_used_at);
        if (q < 0)
                return q;
        q = parse_claims(PQgetisnull(r, row, 7) ? "[]" : PQgetvalue(r, row, 7), &k->claims);
        if (q < 0)
                return q;
        *ret = TAKE_PTR(k);
        return 0;
}

static int parse_rows(const PGresult *r, ApiKey ***ret, size_t *ret_n) {
        ApiKey **keys;
        int n = PQntuples(r);

        keys = calloc((size_t) n + 1, sizeof(ApiKey *));
        if (!keys)
                return -ENOMEM;
        for (int i = 0; i < n; i++) {
                int q = parse_row(r, i, &keys[i]);
                if (q < 0) {
                        api_key_array_free(keys, (size_t) i);
                        return q;
                }
        }
        *ret = keys;
        *ret_n = (size_t) n;
        return 0;
}

/* ---- completion ---- */

static void on_rows(PgPool *pool, const PGresult *result, int error, void *userdata) {
        _cleanup_(store_call_freep) StoreCall *c = userdata;
        ApiKey **keys = NULL;
        size_t n = 0;
        int r = error;

        if (r >= 0)
                r = parse_rows(result, &keys, &n);
        if (r >= 0 && c->want_one && n == 0)
                r = -ENOENT;

        /* The hash was found by the index; confirm it in constant time. */
        if (r >= 0 && c->compare_hash) {
                uint8_t stored[API_KEY_HASH_SIZE];
                size_t len = 0;
                const char *hex = PQnfields(result) > N_KEY_COLUMNS ? PQgetvalue(result, 0, N_KEY_COLUMNS) : "";

                if (sodium_hex2bin(stored, sizeof stored, hex, strlen(hex), NULL, &len, NULL) < 0 ||
                    len != sizeof stored || !api_key_hash_equal(stored, c->hash))
                        r = -ENOENT;
        }

        if (c->create_callback)
                c->create_callback(r, r >= 0 && n > 0 ? keys[0] : NULL, r >= 0 ? c->plaintext : NULL, c->userdata);
        else
                c->callback(r, r >= 0 ? keys : NULL, r >= 0 ? n : 0, c->userdata);
        if (keys)
                api_key_array_free(keys, n);
}

static void on_done(PgPool *pool, const PGresult *result, int error, void *userdata) {
        _cleanup_(store_call_freep) StoreCall *c = userdata;

        c->done_callback(error, c->userdata);
}

static int query(KeyStore *s, StoreCall *c, const char *sql, int n, const char *const *values, PgCallback cb) {
        int r;

        r = pg_pool_query(s->pool, sql, n, values, s->timeout, cb, c, NULL);
        if (r < 0)
                store_call_free(c);
        return r;
}

static StoreCall *store_call_new(KeyStore *s, KeyStoreCallback callback, void *userdata) {
        StoreCall *c = calloc(1, sizeof *c);

        if (c) {
                c->store = s;
                c->callback = callback;
                c->userdata = userdata;
        }
        return c;
}

static int claims_to_json(char *const *claims, char **ret) {
        _cleanup_json_ json_object *a = json_object_new_array();
        char *s;

        if (!a)
                return -ENOMEM;
        for (char *const *c = claims; c && *c; c++)
                if (json_object_array_add(a, json_object_new_string(*c)) < 0)
                        return -ENOMEM;
        s = strdup(json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN));
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

/* ---- operations ---- */

int key_store_create(KeyStore *s, const char *name, char *const *claims, usec_t expires_at,
                     KeyStoreCreateCallback callback, void *userdata) {
        static const char sql[] =
                "INSERT INTO api_keys (id, name, key_hash, prefix, claims, expires_at) "
                "VALUES ($1::uuid, $2, decode($3, 'hex'), $4, " CLAIMS_FROM_JSON("$5") ", $6::timestamptz) "
                "RETURNING " KEY_COLUMNS;
        _cleanup_(store_call_freep) StoreCall *c = NULL;
        _cleanup_free_ char *claims_json = NULL;
        char id[UUID_STRING_MAX], key[API_KEY_STRING_MAX], prefix[API_KEY_DISPLAY_PREFIX_LENGTH + 1],
                hash_hex[API_KEY_HASH_SIZE * 2 + 1], expires[ISO8601_STRING_MAX];
        uint8_t hash[API_KEY_HASH_SIZE];
        int r;

        if (!s || !name || !callback)
                return -EINVAL;

        c = store_call_new(s, NULL, userdata);
        if (!c)
                return -ENOMEM;
        c->create_callback = callback;
        c->want_one = true;

        api_key_generate(key);
        r = api_key_hash(&s->pepper, key, strlen(key), hash);
        if (r < 0) {
                sodium_memzero(key, sizeof key);
                return r;
        }
        c->plaintext = strdup(key);
        api_key_display_prefix(key, prefix);
        sodium_memzero(key, sizeof key);
        if (!c->plaintext)
                return -ENOMEM;
        sodium_bin2hex(hash_hex, sizeof hash_hex, hash, sizeof hash);
        sodium_memzero(hash, sizeof hash);

        r = claims_to_json(claims, &claims_json);
        if (r < 0)
                return r;

        const char *values[] = {
                uuid_generate_v4(id), name, hash_hex, prefix, claims_json,
                expires_at > 0 ? iso8601_format(expires_at, expires) : NULL,
        };
        return query(s, TAKE_PTR(c), sql, ELEMENTSOF(values), values, on_rows);
}

int key_store_get(KeyStore *s, const char *id, KeyStoreCallback callback, void *userdata) {
        static const char sql[] = "SELECT " KEY_COLUMNS " FROM api_keys WHERE id = $1::uuid";
        StoreCall *c;

        if (!s || !uuid_is_valid(id) || !callback)
                return -EINVAL;
        c = store_call_new(s, callback, userdata);
        if (!c)
                return -ENOMEM;
        c->want_one = true;
        return query(s, c, sql, 1, (const char *const[]) { id }, on_rows);
}

int key_store_list(KeyStore *s, KeyStoreCallback callback, void *userdata) {
        static const char sql[] = "SELECT " KEY_COLUMNS " FROM api_keys ORDER BY created_at, id";
        StoreCall *c;

        if (!s || !callback)
                return -EINVAL;
        c = store_call_new(s, callback, userdata);
        if (!c)
                return -ENOMEM;
        return query(s, c, sql, 0, NULL, on_rows);
}

int key_store_update(KeyStore *s, const char *id, const ApiKeyUpdate *u, KeyStoreCallback callback, void *userdata) {
        static const char sql[] =
                "UPDATE api_keys SET "
                "name = COALESCE($2::text, name), "
                "expires_at = CASE WHEN $3::boolean THEN $4::timestamptz ELSE expires_at END, "
                "is_active = COALESCE($5::boolean, is_active), "
                "claims = CASE WHEN $6::json IS NULL THEN claims ELSE " CLAIMS_FROM_JSON("$6") " END, "
                "updated_at = now() "
                "WHERE id = $1::uuid RETURNING " KEY_COLUMNS;
        _cleanup_free_ char *claims_json = NULL;
        char expires[ISO8601_STRING_MAX];
        StoreCall *c;
        int r;

        if (!s || !uuid_is_valid(id) || !u || !callback)
                return -EINVAL;
        if (u->set_claims) {
                r = claims_to_json(u->claims, &claims_json);
                if (r < 0)
                        return r;
        }

        c = store_call_new(s, callback, userdata);
        if (!c)
                return -ENOMEM;
        c->want_one = true;

        const char *values[] = {
                id,
                u->name,
                u->set_expires_at ? "true" : "false",
                u->set_expires_at && u->expires_at > 0 ? iso8601_format(u->expires_at, expires) : NULL,
                u->is_active < 0 ? NULL : u->is_active ? "true" : "false",
                claims_json,
        };
        return query(s, c, sql, ELEMENTSOF(values), values, on_rows);
}

int key_store_delete(KeyStore *s, const char *id, KeyStoreCallback callback, void *userdata) {
        static const char sql[] = "DELETE FROM api_keys WHERE id = $1::uuid RETURNING " KEY_COLUMNS;
        StoreCall *c;

        if (!s || !uuid_is_valid(id) || !callback)
                return -EINVAL;
        c = store_call_new(s, callback, userdata);
        if (!c)
                return -ENOMEM;
        c->want_one = true;
        return query(s, c, sql, 1, (const char *const[]) { id }, on_rows);
}

int key_store_lookup(KeyStore *s, const char *plaintext, size_t len, KeyStoreCallback callback, void *userdata) {
        static const char sql[] =
                "SELECT " KEY_COLUMNS ", encode(key_hash, 'hex') FROM api_keys WHERE key_hash = decode($1, 'hex')";
        _cleanup_(store_call_freep) StoreCall *c = NULL;
        char hash_hex[API_KEY_HASH_SIZE * 2 + 1];
        int r;

        if (!s || !plaintext || !callback)
                return -EINVAL;
        c = store_call_new(s, callback, userdata);
        if (!c)
                return -ENOMEM;
        c->want_one = true;
        c->compare_hash = true;
        r = api_key_hash(&s->pepper, plaintext, len, c->hash);
        if (r < 0)
                return r;
        sodium_bin2hex(hash_hex, sizeof hash_hex, c->hash, sizeof c->hash);
        return query(s, TAKE_PTR(c), sql, 1, (const char *const[]) { hash_hex }, on_rows);
}

int key_store_touch(KeyStore *s, char *const *ids, const usec_t *times, size_t n, KeyStoreDoneCallback callback,
                    void *userdata) {
        static const char sql[] =
                "UPDATE api_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.ts) "
                "FROM json_to_recordset($1::json) AS u(id uuid, ts timestamptz) WHERE k.id = u.id";
        _cleanup_json_ json_object *a = NULL;
        StoreCall *c;

        if (!s || (!ids && n > 0) || !callback)
                return -EINVAL;

        a = json_object_new_array();
        if (!a)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_new_object();
                char ts[ISO8601_STRING_MAX];

                if (!o || json_object_array_add(a, o) < 0) {
                        json_object_put(o);
                        return -ENOMEM;
                }
                if (json_add_string(o, "id", ids[i]) < 0 || json_add_string(o, "ts", iso8601_format(times[i], ts)) < 0)
                        return -ENOMEM;
        }

        c = store_call_new(s, NULL, userdata);
        if (!c)
                return -ENOMEM;
        c->done_callback = callback;
        return query(s, c, sql, 1, (const char *const[]) { json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN) },
                     on_done);
}
