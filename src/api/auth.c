/* SPDX-License-Identifier: MIT */
#include "auth.h"
#include "json-util.h"
#include "keys-client.h"
#include "log.h"

struct Auth {
        KeysClient *keys;
        char *keys_url;
        int down; /* the error while dtask-keys is unavailable (logged once), 0 when fine */
};

struct AuthQuery {
        Auth *auth;
        KeysClientQuery *query;
        AuthCallback callback;
        void *userdata;
};

int auth_new(Auth **ret, sd_event *event, const char *keys_url, uint64_t cache_ttl_usec) {
        _cleanup_(auth_freep) Auth *a = NULL;
        int r;

        a = calloc(1, sizeof(Auth));
        if (!a)
                return -ENOMEM;
        a->keys_url = strdup(keys_url);
        if (!a->keys_url)
                return -ENOMEM;
        r = keys_client_new(&a->keys, event, keys_url, cache_ttl_usec > 0 ? cache_ttl_usec : 1);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(a);
        return 0;
}

Auth *auth_free(Auth *a) {
        if (!a)
                return NULL;
        keys_client_free(a->keys);
        free(a->keys_url);
        return mfree(a);
}

const char *auth_request_key(HttpRequest *req) {
        const char *k;

        k = http_request_header(req, "X-ApiKey");
        if (!isempty(k))
                return k;
        k = http_request_query(req, "apiKey");
        return isempty(k) ? NULL : k;
}

unsigned auth_claim_from_string(const char *s) {
        if (streq(s, "tasks:read"))
                return CLAIM_TASKS_READ;
        if (streq(s, "tasks:write"))
                return CLAIM_TASKS_WRITE;
        if (streq(s, "tasks:execute"))
                return CLAIM_TASKS_EXECUTE;
        if (streq(s, "tasks:admin"))
                return CLAIM_TASKS_ADMIN;
        return 0;
}

static int make_caller(KeyValidity validity, const char *key_id, char *const *claims, Caller *ret) {
        Caller c = {};

        if (validity != KEY_VALID)
                return -EKEYREJECTED;
        if (uuid_normalize(key_id, c.key_id) < 0)
                return -EBADMSG;
        for (char *const *i = claims; i && *i; i++)
                c.claims |= auth_claim_from_string(*i);
        *ret = c;
        return 0;
}

static void on_validated(KeysClient *k, int error, KeyValidity validity, const char *key_id, char *const *claims,
                         void *userdata) {
        _cleanup_free_ AuthQuery *q = userdata;
        Auth *a = q->auth;
        Caller caller = {};

        /* Availability of dtask-keys is logged when it changes, not per request. */
        if (error < 0 && error != -ECANCELED && a->down != error) {
                log_warning_errno(error, "Cannot validate API keys, dtask-keys at %s is unavailable (%m); "
                                  "answering 503 until it is back.", a->keys_url);
                a->down = error;
        } else if (error >= 0 && a->down != 0) {
                log_notice("dtask-keys at %s answers again.", a->keys_url);
                a->down = 0;
        }

        if (error >= 0)
                error = make_caller(validity, key_id, claims, &caller);
        q->callback(error, error < 0 ? NULL : &caller, q->userdata);
}

int auth_check(Auth *a, const char *key, AuthCallback cb, void *userdata, AuthQuery **ret) {
        _cleanup_free_ AuthQuery *q = NULL;
        int r;

        q = calloc(1, sizeof(AuthQuery));
        if (!q)
                return -ENOMEM;
        q->auth = a;
        q->callback = cb;
        q->userdata = userdata;

        r = keys_client_validate(a->keys, key, on_validated, q, &q->query);
        if (r == -EINVAL)
                r = -EKEYREJECTED;
        if (r < 0)
                return r;
        if (ret)
                *ret = q;
        TAKE_PTR(q);
        return 0;
}

int auth_check_cached(Auth *a, const char *key, Caller *ret) {
        KeyValidity validity;
        const char *key_id = NULL;
        char *const *claims = NULL;
        int r;

        r = keys_client_lookup_cached(a->keys, key, &validity, &key_id, &claims);
        if (r <= 0)
                return r;
        r = make_caller(validity, key_id, claims, ret);
        return r < 0 ? r : 1;
}

void auth_query_cancel(AuthQuery *q) {
        if (!q)
                return;
        keys_client_query_cancel(q->query);
        free(q);
}
