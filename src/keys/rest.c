/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdio.h>
#include <strings.h>

#include "json-util.h"
#include "log.h"
#include "manager.h"
#include "rest.h"
#include "time-util.h"
#include "uuid-util.h"

/* Request bodies of this API are small; anything bigger is refused before it is read. */
#define REST_BODY_MAX (64 * 1024)
#define LOGIN_FIELD_MAX 1024
#define API_KEY_INPUT_MAX 1024

static const JsonLimits rest_json_limits = {
        .max_size = REST_BODY_MAX,
        .max_depth = 8,
        .max_string = REST_BODY_MAX,
};

/* ---- helpers ---- */

/* For log lines: user-supplied text with anything but printable ASCII replaced, cut at 64 bytes. */
static char *log_sanitize(const char *s, char buf[static 68]) {
        size_t k = 0;

        for (; s && *s && k < 64; s++)
                buf[k++] = (*s >= 0x20 && *s < 0x7f && *s != '"' && *s != '\\') ? *s : '?';
        if (s && *s)
                buf[k++] = '.', buf[k++] = '.', buf[k++] = '.';
        buf[k] = '\0';
        return buf;
}

static int reply_problem_reason(HttpRequest *req, unsigned status, const char *reason) {
        _cleanup_json_ json_object *p = NULL;
        const char *body;
        size_t size;

        p = http_problem_new(status, reason, NULL);
        if (!p || json_add_string(p, "reason", reason) < 0)
                return -ENOMEM;
        body = json_to_string(p, &size);
        return http_request_reply(req, status, "application/problem+json", body, size);
}

static int reply_unavailable(HttpRequest *req) {
        (void) http_request_add_header(req, "Retry-After", "5");
        return http_request_reply_problem(req, 503, "The key database is unavailable; try again later.");
}

/* A failure of the store that is not "not found": 503 when the database is unreachable. */
static int reply_store_error(HttpRequest *req, int error, const char *what) {
        if (error_is_unavailable(error)) {
                log_debug_errno(error, "Cannot %s, the database is unavailable: %m", what);
                return reply_unavailable(req);
        }
        log_error_errno(error, "Failed to %s: %m", what);
        return http_request_reply_problem(req, 500, "Internal error.");
}

static int reply_not_ready(HttpRequest *req) {
        return reply_unavailable(req);
}

static int reply_rate_limited(HttpRequest *req, uint64_t retry_after_usec) {
        char buf[32];

        (void) snprintf(buf, sizeof buf, "%u", ratelimit_retry_after_sec(retry_after_usec));
        (void) http_request_add_header(req, "Retry-After", buf);
        return http_request_reply_problem(req, 429, "Too many requests from this address; retry after %s seconds.",
                                          buf);
}

static json_object *claims_to_json(char *const *claims) {
        json_object *a = json_object_new_array();

        for (char *const *c = claims; a && c && *c; c++)
                if (json_object_array_add(a, json_object_new_string(*c)) < 0)
                        return json_object_put(a), NULL;
        return a;
}

static int add_time(json_object *o, const char *field, usec_t t) {
        char buf[ISO8601_STRING_MAX];

        return json_add_string(o, field, t > 0 ? iso8601_format(t, buf) : NULL);
}

static json_object *api_key_to_json(const ApiKey *k) {
        _cleanup_json_ json_object *o = json_object_new_object();
        json_object *claims;

        if (!o)
                return NULL;
        if (json_add_string(o, "id", k->id) < 0 || json_add_string(o, "name", k->name) < 0 ||
            json_add_string(o, "prefix", k->prefix) < 0 || add_time(o, "createdAt", k->created_at) < 0 ||
            add_time(o, "expiresAt", k->expires_at) < 0 || json_add_bool(o, "isActive", k->is_active) < 0 ||
            add_time(o, "lastUsedAt", k->last_used_at) < 0)
                return NULL;
        claims = claims_to_json(k->claims);
        if (!claims || json_object_object_add(o, "claims", claims) < 0)
                return json_object_put(claims), NULL;
        return TAKE_PTR(o);
}

/* application/json, text/json and application/…+json, parameters ignored (as ASP.NET accepts). */
static bool content_type_is_json(const char *ct) {
        size_t n;

        if (!ct)
                return false;
        while (*ct == ' ' || *ct == '\t')
                ct++;
        n = strcspn(ct, ";");
        while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
                n--;
        if ((n == STRLEN("application/json") && strncasecmp(ct, "application/json", n) == 0) ||
            (n == STRLEN("text/json") && strncasecmp(ct, "text/json", n) == 0))
                return true;
        return n > STRLEN("application/") + STRLEN("+json") && strncasecmp(ct, "application/", 12) == 0 &&
               strncasecmp(ct + n - 5, "+json", 5) == 0;
}

/* Returns 1 with the body as a JSON object, or 0 after replying 415/400. */
static int parse_body(HttpRequest *req, json_object **ret) {
        _cleanup_free_ char *error = NULL;
        _cleanup_json_ json_object *o = NULL;
        const char *body;
        size_t size;
        int r;

        if (!content_type_is_json(http_request_header(req, "Content-Type")))
                return http_request_reply_problem(req, 415, "The request body must be application/json.") ?: 0;

        body = http_request_body(req, &size);
        if (!body || size == 0)
                return http_request_reply_problem(req, 400, "The request body is empty.") ?: 0;
        r = json_parse_limited(body, size, &rest_json_limits, &o, &error);
        if (r == -E2BIG)
                return http_request_reply_problem(req, 413, "%s", strna(error)) ?: 0;
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return http_request_reply_problem(req, 400, "%s", error ?: "malformed JSON") ?: 0;
        if (!json_object_is_type(o, json_type_object))
                return http_request_reply_problem(req, 400, "The request body must be a JSON object.") ?: 0;

        *ret = TAKE_PTR(o);
        return 1;
}

static int reply_validation(HttpRequest *req, json_object *errors) {
        _cleanup_free_ char *detail = json_errors_summary(errors);

        return http_request_reply_problem_errors(req, 400, detail ?: "The request is invalid.", errors);
}

static int reply_unauthorized(HttpRequest *req, bool token_given, const char *detail) {
        (void) http_request_add_header(req, "WWW-Authenticate",
                                       token_given ? "Bearer error=\"invalid_token\"" : "Bearer");
        return http_request_reply_problem(req, 401, "%s", detail);
}

/* Returns 1 with the admin's token when the request is authorized to manage keys,
 * otherwise replies 401/403 and returns 0. */
static int authorize(Manager *m, HttpRequest *req, JwtToken **ret) {
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        const char *h, *token;
        int r;

        h = http_request_header(req, "Authorization");
        if (isempty(h))
                return reply_unauthorized(req, false, "A bearer token is required.") ?: 0;
        while (*h == ' ')
                h++;
        if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
                return reply_unauthorized(req, false, "A bearer token is required.") ?: 0;
        token = h + 7;
        while (*token == ' ' || *token == '\t')
                token++;
        if (isempty(token))
                return reply_unauthorized(req, false, "A bearer token is required.") ?: 0;

        r = jwt_util_decode(&m->jwt, token, now_usec(CLOCK_REALTIME), &t);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                log_debug_errno(r, "Refusing bearer token from %s: %m", strna(http_request_client_address(req)));
                return reply_unauthorized(req, true,
                                          r == -EKEYEXPIRED ? "The token has expired." : "The token is not valid.") ?: 0;
        }
        if (!jwt_token_has_claim(t, KEYS_ADMIN_CLAIM))
                return http_request_reply_problem(req, 403, "The token lacks the claim " KEYS_ADMIN_CLAIM ".") ?: 0;

        *ret = TAKE_PTR(t);
        return 1;
}

/* ---- suspended requests ---- */

typedef struct RestCall {
        Manager *manager;
        HttpRequest *req; /* NULL once the server dropped the request */
        char *admin;      /* token subject, for logs */
        char *client;
        char id[UUID_STRING_MAX];
        bool deactivated;
} RestCall;

static RestCall *rest_call_free(RestCall *c) {
        if (!c)
                return NULL;
        free(c->admin);
        free(c->client);
        return mfree(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(RestCall *, rest_call_free);

static RestCall *rest_call_new(Manager *m, HttpRequest *req, const JwtToken *t) {
        _cleanup_(rest_call_freep) RestCall *c = calloc(1, sizeof *c);

        if (!c)
                return NULL;
        c->manager = m;
        c->req = req;
        c->client = strdup(strna(http_request_client_address(req)));
        c->admin = strdup(t && t->subject ? t->subject : "(admin)");
        if (!c->client || !c->admin)
                return NULL;
        return TAKE_PTR(c);
}

static void rest_call_abort(HttpRequest *req, void *userdata) {
        RestCall *c = userdata;

        c->req = NULL;
}

/* After the store accepted the query: keep the connection open until its callback. */
static int suspend(RestCall *c) {
        int r;

        r = http_request_suspend(c->req, rest_call_abort, c);
        if (r < 0) {
                /* The callback still comes and frees c, but must not touch the request. */
                c->req = NULL;
                return r;
        }
        return 0;
}

static void reply_error_log(int r) {
        if (r < 0 && r != -EALREADY)
                log_debug_errno(r, "Failed to queue a reply: %m");
}

/* ---- health ---- */

static int handle_healthz(HttpRequest *req, void *userdata) {
        static const char body[] = "{\"status\":\"ok\"}";

        return http_request_reply(req, 200, "application/json", body, sizeof(body) - 1);
}

static int handle_readyz(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        static const char ready[] = "{\"status\":\"ready\"}", unavailable[] = "{\"status\":\"unavailable\"}";

        if (manager_is_ready(m) && pg_pool_is_connected(m->pool))
                return http_request_reply(req, 200, "application/json", ready, sizeof(ready) - 1);
        return http_request_reply(req, 503, "application/json", unavailable, sizeof(unavailable) - 1);
}

/* ---- login ---- */

static bool login_check(Manager *m, const char *username, const char *password) {
        uint8_t u[32], p[32];
        int ok_user, ok_password;

        if (!m->admin_login_enabled)
                return false;

        crypto_generichash(u, sizeof u, (const unsigned char *) username, strlen(username), m->compare_key,
                           sizeof m->compare_key);
        ok_user = sodium_memcmp(u, m->admin_username_digest, sizeof u) == 0;

        /* The password is checked whatever the user name was, so that the time taken does not tell. */
        if (m->admin_password_hash)
                ok_password = crypto_pwhash_str_verify(m->admin_password_hash, password, strlen(password)) == 0;
        else {
                crypto_generichash(p, sizeof p, (const unsigned char *) password, strlen(password), m->compare_key,
                                   sizeof m->compare_key);
                ok_password = sodium_memcmp(p, m->admin_password_digest, sizeof p) == 0;
        }
        sodium_memzero(p, sizeof p);
        return ok_user & ok_password;
}

static int handle_login(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_json_ json_object *body = NULL, *errors = NULL;
        _cleanup_erase_ char *token = NULL, *reply = NULL;
        const char *client = strna(http_request_client_address(req)), *username = NULL, *password = NULL;
        uint64_t retry_after;
        char sanitized[68];
        int r;

        r = ratelimit_take(m->login_limit, client, now_usec(CLOCK_MONOTONIC), &retry_after);
        if (r < 0)
                return r;
        if (r == 0) {
                log_notice("Refusing admin login from %s: too many attempts.", client);
                return reply_rate_limited(req, retry_after);
        }

        r = parse_body(req, &body);
        if (r <= 0)
                return r;

        r = json_field_string(body, "username", 1, LOGIN_FIELD_MAX, &username, &errors);
        if (r == -ENOMEM)
                return r;
        if (r == 0 && json_errors_add(&errors, "username", "is required") < 0)
                return -ENOMEM;
        r = json_field_string(body, "password", 1, LOGIN_FIELD_MAX, &password, &errors);
        if (r == -ENOMEM)
                return r;
        if (r == 0 && json_errors_add(&errors, "password", "is required") < 0)
                return -ENOMEM;
        if (errors)
                return reply_validation(req, errors);

        if (!login_check(m, username, password)) {
                log_notice("Failed admin login from %s (user \"%s\").", client, log_sanitize(username, sanitized));
                return http_request_reply_problem(req, 401, "Invalid user name or password.");
        }

        r = jwt_util_encode(&m->jwt, m->admin_username, m->admin_claims, now_usec(CLOCK_REALTIME), m->jwt_lifetime,
                            &token);
        if (r < 0)
                return log_error_errno(r, "Failed to sign a token: %m");

        /* A token is base64url and dots: nothing to escape. The body is composed here so that
         * the copy of the secret is wiped afterwards. */
        if (asprintf(&reply, "{\"jwtToken\":\"%s\"}", token) < 0)
                return -ENOMEM;
        log_info("Admin %s logged in from %s.", m->admin_username, client);
        (void) http_request_add_header(req, "Cache-Control", "no-store");
        return http_request_reply(req, 200, "application/json", reply, strlen(reply));
}

/* ---- validate ---- */

static void on_validated(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(rest_call_freep) RestCall *c = userdata;
        _cleanup_json_ json_object *reply = NULL;
        Manager *m = c->manager;
        const ApiKey *k;
        json_object *claims;
        int r;

        if (!c->req)
                return;

        if (error == -ENOENT) {
                /* Only failed guesses count against an address: a busy dtask-api validating good keys is never slowed. */
                if (!address_list_contains(m->validate_exempt, c->client))
                        (void) ratelimit_take(m->validate_limit, c->client, now_usec(CLOCK_MONOTONIC), NULL);
                log_debug("Validation from %s: unknown key.", c->client);
                reply_error_log(reply_problem_reason(c->req, 409, "not valid"));
                return;
        }
        if (error < 0) {
                reply_error_log(reply_store_error(c->req, error, "look up an API key"));
                return;
        }

        k = keys[0];
        switch (api_key_state(k, now_usec(CLOCK_REALTIME))) {
        case API_KEY_INACTIVE:
                log_debug("Validation from %s: key %s is inactive.", c->client, k->id);
                reply_error_log(reply_problem_reason(c->req, 409, "inactive"));
                return;
        case API_KEY_EXPIRED:
                log_debug("Validation from %s: key %s has expired.", c->client, k->id);
                reply_error_log(reply_problem_reason(c->req, 409, "expired"));
                return;
        case API_KEY_VALID:
                break;
        }

        last_used_record(m->last_used, k->id, now_usec(CLOCK_REALTIME));

        reply = json_object_new_object();
        claims = claims_to_json(k->claims);
        if (!reply || !claims || json_add_string(reply, "apiKeyId", k->id) < 0 ||
            json_object_object_add(reply, "claims", claims) < 0) {
                json_object_put(claims);
                reply_error_log(http_request_reply_problem(c->req, 500, "Out of memory."));
                return;
        }
        r = http_request_reply_json(c->req, 200, reply);
        reply_error_log(r);
}

static int handle_validate(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_json_ json_object *body = NULL, *errors = NULL;
        _cleanup_(rest_call_freep) RestCall *c = NULL;
        const char *client = strna(http_request_client_address(req)), *key = NULL;
        uint64_t retry_after;
        int r;

        /* dtask-api validates for all its clients from one address: it is exempt (by default the
         * local one), or one client guessing keys would lock all of them out. */
        if (!address_list_contains(m->validate_exempt, client) &&
            !ratelimit_test(m->validate_limit, client, now_usec(CLOCK_MONOTONIC), &retry_after)) {
                log_debug("Refusing validation from %s: too many unknown keys.", client);
                return reply_rate_limited(req, retry_after);
        }
        if (!manager_is_ready(m))
                return reply_not_ready(req);

        r = parse_body(req, &body);
        if (r <= 0)
                return r;
        r = json_field_string(body, "apiKey", 1, API_KEY_INPUT_MAX, &key, &errors);
        if (r == -ENOMEM)
                return r;
        if (r == 0 && json_errors_add(&errors, "apiKey", "is required") < 0)
                return -ENOMEM;
        if (errors)
                return reply_validation(req, errors);

        c = rest_call_new(m, req, NULL);
        if (!c)
                return -ENOMEM;
        r = key_store_lookup(m->store, key, strlen(key), on_validated, c);
        if (r < 0)
                return reply_store_error(req, r, "look up an API key");
        return suspend(TAKE_PTR(c));
}

/* ---- admin: create ---- */

static void on_created(int error, const ApiKey *key, const char *plaintext, void *userdata) {
        _cleanup_(rest_call_freep) RestCall *c = userdata;
        _cleanup_json_ json_object *info = NULL;
        _cleanup_free_ char *location = NULL;
        _cleanup_erase_ char *reply = NULL;

        if (error < 0) {
                if (c->req)
                        reply_error_log(reply_store_error(c->req, error, "create an API key"));
                return;
        }
        /* The key exists now, whether or not the client hears of it. */
        log_info("API key %s created by %s from %s.", key->id, c->admin, c->client);
        if (!c->req)
                return;

        /* Composed here so that the copy of the plaintext key is wiped afterwards; ids and keys
         * (URL-safe base64) need no escaping. */
        info = api_key_to_json(key);
        if (!info || asprintf(&reply, "{\"id\":\"%s\",\"apiKey\":\"%s\",\"info\":%s}", key->id, plaintext,
                              json_to_string(info, NULL)) < 0 ||
            asprintf(&location, "/api/apikeys/%s", key->id) < 0) {
                reply_error_log(http_request_reply_problem(c->req, 500, "Out of memory."));
                return;
        }
        (void) http_request_add_header(c->req, "Location", location);
        (void) http_request_add_header(c->req, "Cache-Control", "no-store");
        reply_error_log(http_request_reply(c->req, 201, "application/json", reply, strlen(reply)));
}

/* Parses "expiresAt": 1 with *ret set (0 for null), 0 when absent, -EINVAL (error recorded). */
static int field_expires_at(json_object *body, usec_t *ret, json_object **errors) {
        const char *s = NULL;
        json_object *v;
        int r;

        v = json_object_get_ci(body, "expiresAt");
        if (!v)
                return 0;
        if (json_object_is_type(v, json_type_null)) {
                *ret = 0;
                return 1;
        }
        r = json_field_string(body, "expiresAt", 1, 64, &s, errors);
        if (r <= 0)
                return r == 0 ? 0 : r;
        if (iso8601_parse(s, ret) < 0 || *ret == 0)
                return json_errors_add(errors, "expiresAt", "must be an ISO-8601 date and time, e.g. 2030-01-31T12:00:00Z")
                               ?: -EINVAL;
        return 1;
}

static int field_name(json_object *body, bool required, const char **ret, json_object **errors) {
        const char *msg;
        int r;

        r = json_field_string(body, "name", 0, 0, ret, errors);
        if (r < 0)
                return r;
        if (r == 0)
                return required ? (json_errors_add(errors, "name", "is required") ?: -EINVAL) : 0;
        msg = api_key_check_name(*ret);
        if (msg)
                return json_errors_add(errors, "name", "%s", msg) ?: -EINVAL;
        return 1;
}

static int field_claims(json_object *body, char ***ret, json_object **errors) {
        _cleanup_(strv_freep) char **l = NULL;
        const char *msg;
        int r;

        r = json_field_strv(body, "claims", API_KEY_CLAIMS_MAX, API_KEY_CLAIM_MAX, &l, errors);
        if (r <= 0)
                return r;
        msg = api_key_check_claims(l);
        if (msg)
                return json_errors_add(errors, "claims", "%s", msg) ?: -EINVAL;
        api_key_claims_uniq(l);
        *ret = TAKE_PTR(l);
        return 1;
}

static int handle_create(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        _cleanup_json_ json_object *body = NULL, *errors = NULL;
        _cleanup_(strv_freep) char **claims = NULL;
        _cleanup_(rest_call_freep) RestCall *c = NULL;
        const char *name = NULL;
        usec_t expires_at = 0;
        int r;

        r = authorize(m, req, &t);
        if (r <= 0)
                return r;
        if (!manager_is_ready(m))
                return reply_not_ready(req);
        r = parse_body(req, &body);
        if (r <= 0)
                return r;

        if (field_name(body, true, &name, &errors) == -ENOMEM ||
            field_expires_at(body, &expires_at, &errors) == -ENOMEM ||
            field_claims(body, &claims, &errors) == -ENOMEM)
                return -ENOMEM;
        if (errors)
                return reply_validation(req, errors);

        c = rest_call_new(m, req, t);
        if (!c)
                return -ENOMEM;
        r = key_store_create(m->store, name, claims, expires_at, on_created, c);
        if (r < 0)
                return reply_store_error(req, r, "create an API key");
        return suspend(TAKE_PTR(c));
}

/* ---- admin: list, get ---- */

static void on_listed(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(rest_call_freep) RestCall *c = userdata;
        _cleanup_json_ json_object *a = NULL;
        const char *body;
        size_t size;

        if (!c->req)
                return;
        if (error < 0) {
                reply_error_log(reply_store_error(c->req, error, "list API keys"));
                return;
        }
        a = json_object_new_array_ext((int) MIN(n_keys, (size_t) INT32_MAX));
        for (size_t i = 0; a && i < n_keys; i++) {
                json_object *o = api_key_to_json(keys[i]);
                if (!o || json_object_array_add(a, o) < 0) {
                        json_object_put(o);
                        json_object_put(TAKE_PTR(a));
                }
        }
        if (!a) {
                reply_error_log(http_request_reply_problem(c->req, 500, "Out of memory."));
                return;
        }
        body = json_to_string(a, &size);
        reply_error_log(http_request_reply(c->req, 200, "application/json", body, size));
}

static int handle_list(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        _cleanup_(rest_call_freep) RestCall *c = NULL;
        int r;

        r = authorize(m, req, &t);
        if (r <= 0)
                return r;
        if (!manager_is_ready(m))
                return reply_not_ready(req);
        c = rest_call_new(m, req, t);
        if (!c)
                return -ENOMEM;
        r = key_store_list(m->store, on_listed, c);
        if (r < 0)
                return reply_store_error(req, r, "list API keys");
        return suspend(TAKE_PTR(c));
}

static int reply_not_found(HttpRequest *req) {
        return http_request_reply_problem(req, 404, "No such API key.");
}

static void on_got(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(rest_call_freep) RestCall *c = userdata;
        _cleanup_json_ json_object *o = NULL;

        if (!c->req)
                return;
        if (error == -ENOENT) {
                reply_error_log(reply_not_found(c->req));
                return;
        }
        if (error < 0) {
                reply_error_log(reply_store_error(c->req, error, "read an API key"));
                return;
        }
        o = api_key_to_json(keys[0]);
        if (!o) {
                reply_error_log(http_request_reply_problem(c->req, 500, "Out of memory."));
                return;
        }
        reply_error_log(http_request_reply_json(c->req, 200, o));
}

/* The {id} of the path in lower case: 1, or 0 after replying 404 (a path with a malformed
 * id names no resource, as with ASP.NET's {id:guid} route constraint). */
static int path_id(HttpRequest *req, char id[static UUID_STRING_MAX]) {
        if (uuid_normalize(http_request_param(req, "id"), id) < 0)
                return reply_not_found(req) ?: 0;
        return 1;
}

static int handle_get(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        _cleanup_(rest_call_freep) RestCall *c = NULL;
        int r;

        r = authorize(m, req, &t);
        if (r <= 0)
                return r;
        if (!manager_is_ready(m))
                return reply_not_ready(req);
        c = rest_call_new(m, req, t);
        if (!c)
                return -ENOMEM;
        r = path_id(req, c->id);
        if (r <= 0)
                return r;
        r = key_store_get(m->store, c->id, on_got, c);
        if (r < 0)
                return reply_store_error(req, r, "read an API key");
        return suspend(TAKE_PTR(c));
}

/* ---- admin: update, delete ---- */

static void on_updated(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(rest_call_freep) RestCall *c = userdata;

        if (error == -ENOENT) {
                if (c->req)
                        reply_error_log(reply_not_found(c->req));
                return;
        }
        if (error < 0) {
                if (c->req)
                        reply_error_log(reply_store_error(c->req, error, "update an API key"));
                return;
        }
        log_info("API key %s updated%s by %s from %s.", c->id, c->deactivated ? " (deactivated)" : "", c->admin,
                 c->client);
        if (c->req)
                reply_error_log(http_request_reply_empty(c->req, 204));
}

static int handle_update(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        _cleanup_json_ json_object *body = NULL, *errors = NULL;
        _cleanup_(strv_freep) char **claims = NULL;
        _cleanup_(rest_call_freep) RestCall *c = NULL;
        ApiKeyUpdate u = API_KEY_UPDATE_INIT;
        usec_t expires_at = 0;
        bool active;
        int r;

        r = authorize(m, req, &t);
        if (r <= 0)
                return r;
        if (!manager_is_ready(m))
                return reply_not_ready(req);
        c = rest_call_new(m, req, t);
        if (!c)
                return -ENOMEM;
        r = path_id(req, c->id);
        if (r <= 0)
                return r;
        r = parse_body(req, &body);
        if (r <= 0)
                return r;

        /* Compat: a field that is null or absent leaves the value as it is. */
        if (field_name(body, false, &u.name, &errors) == -ENOMEM)
                return -ENOMEM;
        r = field_expires_at(body, &expires_at, &errors);
        if (r == -ENOMEM)
                return r;
        if (r > 0 && expires_at > 0) {
                u.set_expires_at = true;
                u.expires_at = expires_at;
        }
        r = json_field_bool(body, "isActive", &active, &errors);
        if (r == -ENOMEM)
                return r;
        if (r > 0)
                u.is_active = active;
        r = field_claims(body, &claims, &errors);
        if (r == -ENOMEM)
                return r;
        if (r > 0) {
                u.set_claims = true;
                u.claims = claims;
        }
        if (errors)
                return reply_validation(req, errors);
        c->deactivated = u.is_active == 0;

        r = key_store_update(m->store, c->id, &u, on_updated, c);
        if (r < 0)
                return reply_store_error(req, r, "update an API key");
        return suspend(TAKE_PTR(c));
}

static void on_deleted(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(rest_call_freep) RestCall *c = userdata;

        if (error == -ENOENT) {
                if (c->req)
                        reply_error_log(reply_not_found(c->req));
                return;
        }
        if (error < 0) {
                if (c->req)
                        reply_error_log(reply_store_error(c->req, error, "delete an API key"));
                return;
        }
        last_used_forget(c->manager->last_used, c->id);
        log_info("API key %s deleted by %s from %s.", c->id, c->admin, c->client);
        if (c->req)
                reply_error_log(http_request_reply_empty(c->req, 204));
}

static int handle_delete(HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        _cleanup_(rest_call_freep) RestCall *c = NULL;
        int r;

        r = authorize(m, req, &t);
        if (r <= 0)
                return r;
        if (!manager_is_ready(m))
                return reply_not_ready(req);
        c = rest_call_new(m, req, t);
        if (!c)
                return -ENOMEM;
        r = path_id(req, c->id);
        if (r <= 0)
                return r;
        r = key_store_delete(m->store, c->id, on_deleted, c);
        if (r < 0)
                return reply_store_error(req, r, "delete an API key");
        return suspend(TAKE_PTR(c));
}

/* ---- server ---- */

static const HttpRoute routes[] = {
        { HTTP_GET, "/healthz", handle_healthz, 0 },
        { HTTP_GET, "/readyz", handle_readyz, 0 },
        { HTTP_POST, "/api/auth/login", handle_login, REST_BODY_MAX },
        { HTTP_POST, "/api/apikeys/validate", handle_validate, REST_BODY_MAX },
        { HTTP_POST, "/api/apikeys", handle_create, REST_BODY_MAX },
        { HTTP_GET, "/api/apikeys", handle_list, REST_BODY_MAX },
        { HTTP_GET, "/api/apikeys/{id}", handle_get, REST_BODY_MAX },
        { HTTP_PUT, "/api/apikeys/{id}", handle_update, REST_BODY_MAX },
        { HTTP_DELETE, "/api/apikeys/{id}", handle_delete, REST_BODY_MAX },
};

static void on_completed(const char *route, HttpMethod method, unsigned status, uint64_t duration_usec,
                         void *userdata) {
        log_debug("%s %s → %u (%" PRIu64 " µs)", http_method_to_string(method), strna(route), status, duration_usec);
}

int rest_server_new(Manager *m, HttpServer **ret) {
        HttpServerSettings settings = {
                .routes = routes,
                .n_routes = ELEMENTSOF(routes),
                .max_body_size = REST_BODY_MAX,
                .connection_limit = (unsigned) config_uint(m->config, "HTTP_MAX_CONNECTIONS"),
                .connection_timeout = (unsigned) (config_uint(m->config, "HTTP_TIMEOUT") / USEC_PER_SEC),
                .tls_certificate = m->tls_certificate,
                .tls_key = m->tls_key,
                .completed = on_completed,
                .userdata = m,
        };

        return http_server_new(ret, m->event, &settings);
}
