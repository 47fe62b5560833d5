/* SPDX-License-Identifier: MIT */
/* The API-key validation client (src/shared/keys-client.c) against the REAL dtask-keys of the
 * development environment (tools/dev test): a valid key validates with its claims, a key
 * deactivated through the admin REST API is refused as inactive within the 5 s cache TTL, a
 * key that expires is refused as expired, an unknown key is "not valid", and an unreachable
 * keys service is an error, never "not valid".
 *
 * Needs DTASK_KEYS_URL, DTASK_API_KEY, DTASK_ADMIN_USERNAME and DTASK_ADMIN_PASSWORD; exits 77
 * (skipped) without them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>

#include "http-client.h"
#include "json-util.h"
#include "keys-client.h"
#include "time-util.h"
#include "uuid-util.h"

/* SPEC §4: a deactivated key stops working within 5 s. A cached answer is delivered on the
 * next loop iteration (LOOP_MARGIN); a refusal needs one request to dtask-keys after the
 * poll that follows the expiry (POLL_INTERVAL + DEACTIVATION_MARGIN). */
#define POLL_INTERVAL_USEC (50 * USEC_PER_MSEC)
#define LOOP_MARGIN_USEC (50 * USEC_PER_MSEC)
#define DEACTIVATION_MARGIN_USEC (500 * USEC_PER_MSEC)
#define DEACTIVATION_BOUND_USEC (5 * USEC_PER_SEC + POLL_INTERVAL_USEC + DEACTIVATION_MARGIN_USEC)

static const char *keys_url, *api_key, *admin_user, *admin_password;
static sd_event *event;
static HttpClient *admin;
static char *jwt;
static char created_ids[8][UUID_STRING_MAX];
static size_t n_created;

/* ------------------------------------------------------------------------------------------ */
/* synchronous helpers on top of the loop */

typedef struct Reply {
        bool done;
        int error;
        unsigned status;
        char *body;
} Reply;

static void on_reply(HttpClient *c, int error, const HttpResponse *resp, void *userdata) {
        Reply *r = userdata;

        r->done = true;
        r->error = error;
        if (resp) {
                r->status = resp->status;
                r->body = strndup(resp->body, resp->size);
        }
}

static void run_while(const bool *done, uint64_t timeout) {
        uint64_t end = now_usec(CLOCK_MONOTONIC) + timeout;

        while (!*done) {
                assert_true(now_usec(CLOCK_MONOTONIC) < end);
                assert_true(sd_event_run(event, 50 * USEC_PER_MSEC) >= 0);
        }
}

static void run_for(uint64_t duration) {
        uint64_t until = now_usec(CLOCK_MONOTONIC) + duration;

        while (now_usec(CLOCK_MONOTONIC) < until)
                assert_true(sd_event_run(event, duration / 4 + 1) >= 0);
}

/* Calls the admin REST API; body (may be NULL) is a JSON object. Returns the status. */
static unsigned admin_call(const char *method, const char *path, json_object *body, json_object **ret) {
        _cleanup_free_ char *auth = NULL;
        const char *headers[2] = {};
        const char *text = NULL;
        size_t size = 0;
        Reply r = {};

        if (jwt) {
                assert_true(asprintf(&auth, "Authorization: Bearer %s", jwt) > 0);
                headers[0] = auth;
        }
        if (body)
                text = json_to_string(body, &size);
        assert_int_equal(http_client_request(admin, method, path, headers, body ? "application/json" : NULL, text, size,
                                             10 * USEC_PER_SEC, 0, on_reply, &r, NULL),
                         0);
        run_while(&r.done, 15 * USEC_PER_SEC);
        if (r.error < 0)
                fail_msg("%s %s: %s", method, path, strerror(-r.error));
        if (ret) {
                *ret = r.body && r.body[0] ? json_tokener_parse(r.body) : NULL;
        }
        if (auth)
                sodium_memzero(auth, strlen(auth));
        free(r.body);
        return r.status;
}

typedef struct Verdict {
        bool done;
        int error;
        KeyValidity validity;
        char *key_id;
        char **claims;
} Verdict;

static void verdict_done(Verdict *v) {
        free(v->key_id);
        strv_free(v->claims);
        *v = (Verdict) {};
}

static void on_verdict(KeysClient *k, int error, KeyValidity validity, const char *key_id, char *const *claims,
                       void *userdata) {
        Verdict *v = userdata;

        v->done = true;
        v->error = error;
        v->validity = validity;
        if (key_id)
                v->key_id = strdup(key_id);
        if (claims) {
                v->claims = calloc(strv_length(claims) + 1, sizeof(char *));
                for (size_t i = 0; claims[i]; i++)
                        v->claims[i] = strdup(claims[i]);
        }
}

static void validate(KeysClient *k, const char *key, Verdict *v) {
        *v = (Verdict) {};
        assert_int_equal(keys_client_validate(k, key, on_verdict, v, NULL), 0);
        run_while(&v->done, 15 * USEC_PER_SEC);
}

/* A key through the admin API: returns its plaintext, writes its id. */
static char *create_key(const char *name, const char *expires_at, const char *const *claims,
                        char id[static UUID_STRING_MAX]) {
        _cleanup_json_ json_object *req = json_object_new_object(), *resp = NULL;
        json_object *a = json_object_new_array();
        const char *key = NULL, *s = NULL;
        unsigned status;

        for (const char *const *c = claims; *c; c++)
                json_object_array_add(a, json_object_new_string(*c));
        json_add_string(req, "name", name);
        if (expires_at)
                json_add_string(req, "expiresAt", expires_at);
        json_object_object_add(req, "claims", a);

        status = admin_call("POST", "/api/apikeys", req, &resp);
        if (status != 201 && status != 200)
                fail_msg("POST /api/apikeys answered %u", status);
        assert_non_null(resp);
        assert_int_equal(json_field_string(resp, "id", 1, 64, &s, NULL), 1);
        assert_int_equal(uuid_normalize(s, id), 0);
        assert_int_equal(json_field_string(resp, "apiKey", 1, 256, &key, NULL), 1);
        assert_true(strncmp(key, "ak_", 3) == 0);

        assert_true(n_created < ELEMENTSOF(created_ids));
        strcpy(created_ids[n_created++], id);
        return strdup(key);
}

static void delete_key(const char *id) {
        char path[128];
        unsigned status;

        snprintf(path, sizeof(path), "/api/apikeys/%s", id);
        status = admin_call("DELETE", path, NULL, NULL);
        assert_true(status == 204 || status == 404);
}

/* ------------------------------------------------------------------------------------------ */

static int group_setup(void **state) {
        _cleanup_json_ json_object *req = json_object_new_object(), *resp = NULL;
        const char *token = NULL;
        unsigned status;

        assert_int_equal(sd_event_new(&event), 0);
        assert_int_equal(http_client_new(&admin, event, keys_url, NULL), 0);

        json_add_string(req, "username", admin_user);
        json_add_string(req, "password", admin_password);
        status = admin_call("POST", "/api/auth/login", req, &resp);
        if (status != 200)
                fail_msg("admin login at %s answered %u", keys_url, status);
        assert_int_equal(json_field_string(resp, "jwtToken", 1, 0, &token, NULL), 1);
        jwt = strdup(token);
        return 0;
}

static int group_teardown(void **state) {
        /* whatever happened, do not leave test keys behind */
        for (size_t i = 0; i < n_created; i++)
                delete_key(created_ids[i]);
        if (jwt) {
                sodium_memzero(jwt, strlen(jwt));
                jwt = mfree(jwt);
        }
        admin = http_client_free(admin);
        event = sd_event_unref(event);
        return 0;
}

static void test_valid_key(void **state) {
        _cleanup_(keys_client_freep) KeysClient *k = NULL;
        Verdict v;

        assert_int_equal(keys_client_new(&k, event, keys_url, 0), 0);
        validate(k, api_key, &v);
        assert_int_equal(v.error, 0);
        assert_int_equal(v.validity, KEY_VALID);
        assert_true(uuid_is_valid(v.key_id));
        assert_true(strv_contains(v.claims, "tasks:read")); /* the dev key has every tasks:* claim */
        verdict_done(&v);

        /* the second time from the cache, same answer */
        validate(k, api_key, &v);
        assert_int_equal(v.validity, KEY_VALID);
        assert_true(strv_contains(v.claims, "tasks:read"));
        verdict_done(&v);
        assert_int_equal(keys_client_get_stats(k)->hits, 1);
        assert_int_equal(keys_client_get_stats(k)->requests, 1);
}

static void test_unknown_key(void **state) {
        _cleanup_(keys_client_freep) KeysClient *k = NULL;
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        char key[33] = "ak_";
        Verdict v;

        for (size_t i = 3; i < 32; i++)
                key[i] = alphabet[randombytes_uniform(sizeof(alphabet) - 1)];
        key[32] = '\0';

        assert_int_equal(keys_client_new(&k, event, keys_url, 0), 0);
        validate(k, key, &v);
        assert_int_equal(v.error, 0);
        assert_int_equal(v.validity, KEY_NOT_VALID);
        assert_null(v.key_id);
}

static void test_deactivation(void **state) {
        static const char *const claims[] = { "tasks:read", "tasks:write", NULL };
        _cleanup_(keys_client_freep) KeysClient *k = NULL, *fresh = NULL;
        _cleanup_json_ json_object *update = json_object_new_object();
        _cleanup_free_ char *key = NULL;
        char id[UUID_STRING_MAX], name[64], path[128];
        uint64_t deactivated, refused = 0, last_valid = 0;
        Verdict v;

        snprintf(name, sizeof(name), "test-keys-client-live-%u", randombytes_random());
        key = create_key(name, NULL, claims, id);

        assert_int_equal(keys_client_new(&k, event, keys_url, 0), 0); /* the default TTL: 5 s */
        validate(k, key, &v);
        assert_int_equal(v.error, 0);
        assert_int_equal(v.validity, KEY_VALID);
        assert_string_equal(v.key_id, id);
        assert_int_equal(strv_length(v.claims), 2);
        assert_true(strv_contains(v.claims, "tasks:read"));
        assert_true(strv_contains(v.claims, "tasks:write"));
        verdict_done(&v);

        json_add_bool(update, "isActive", false);
        snprintf(path, sizeof(path), "/api/apikeys/%s", id);
        assert_int_equal(admin_call("PUT", path, update, NULL), 204);
        deactivated = now_usec(CLOCK_MONOTONIC);

        /* a client without a cached answer knows at once */
        assert_int_equal(keys_client_new(&fresh, event, keys_url, 0), 0);
        validate(fresh, key, &v);
        assert_int_equal(v.error, 0);
        assert_int_equal(v.validity, KEY_INACTIVE);

        /* The caching client: still valid from its cache for a while, but no "valid" answer
         * comes later than 5 s after the deactivation (its entry was made before it), and the
         * first validation after that is refused. */
        for (;;) {
                uint64_t hits = keys_client_get_stats(k)->hits;

                validate(k, key, &v);
                assert_int_equal(v.error, 0);
                if (v.validity != KEY_VALID) {
                        assert_int_equal(v.validity, KEY_INACTIVE);
                        refused = now_usec(CLOCK_MONOTONIC);
                        break;
                }
                last_valid = now_usec(CLOCK_MONOTONIC);
                assert_int_equal(keys_client_get_stats(k)->hits, hits + 1); /* valid only ever from the cache */
                verdict_done(&v);
                if (last_valid - deactivated > DEACTIVATION_BOUND_USEC)
                        fail_msg("deactivated key still accepted after %" PRIu64 " ms",
                                 (last_valid - deactivated) / USEC_PER_MSEC);
                run_for(POLL_INTERVAL_USEC);
        }
        print_message("deactivated key: last accepted after %" PRIu64 " ms, refused after %" PRIu64 " ms\n",
                      last_valid ? (last_valid - deactivated) / USEC_PER_MSEC : 0,
                      (refused - deactivated) / USEC_PER_MSEC);
        assert_true(last_valid > 0); /* served from the cache at least once: the bound was exercised */
        assert_true(last_valid - deactivated <= 5 * USEC_PER_SEC + LOOP_MARGIN_USEC);
        assert_true(refused - deactivated <= 5 * USEC_PER_SEC + POLL_INTERVAL_USEC + DEACTIVATION_MARGIN_USEC);

        /* deleted: unknown from then on */
        delete_key(id);
        fresh = keys_client_free(fresh);
        assert_int_equal(keys_client_new(&fresh, event, keys_url, 0), 0);
        validate(fresh, key, &v);
        assert_int_equal(v.error, 0);
        assert_int_equal(v.validity, KEY_NOT_VALID);
}

static void test_expiry(void **state) {
        static const char *const claims[] = { "tasks:read", NULL };
        _cleanup_(keys_client_freep) KeysClient *k = NULL;
        _cleanup_free_ char *key = NULL;
        char id[UUID_STRING_MAX], name[64], expires[ISO8601_STRING_MAX];
        uint64_t expires_mono, start;
        Verdict v;

        snprintf(name, sizeof(name), "test-keys-client-live-exp-%u", randombytes_random());
        iso8601_format(now_usec(CLOCK_REALTIME) + 3 * USEC_PER_SEC, expires);
        expires_mono = now_usec(CLOCK_MONOTONIC) + 3 * USEC_PER_SEC;
        key = create_key(name, expires, claims, id);

        assert_int_equal(keys_client_new(&k, event, keys_url, USEC_PER_SEC), 0);
        validate(k, key, &v);
        assert_int_equal(v.error, 0);
        assert_int_equal(v.validity, KEY_VALID);
        verdict_done(&v);

        start = now_usec(CLOCK_MONOTONIC);
        for (;;) {
                validate(k, key, &v);
                assert_int_equal(v.error, 0);
                if (v.validity != KEY_VALID)
                        break;
                verdict_done(&v);
                assert_true(now_usec(CLOCK_MONOTONIC) - start < 10 * USEC_PER_SEC);
                run_for(POLL_INTERVAL_USEC);
        }
        assert_int_equal(v.validity, KEY_EXPIRED);
        /* not before it expired, and within the (1 s) TTL plus a margin after */
        assert_true(now_usec(CLOCK_MONOTONIC) + 200 * USEC_PER_MSEC >= expires_mono);
        assert_true(now_usec(CLOCK_MONOTONIC) <= expires_mono + USEC_PER_SEC + 700 * USEC_PER_MSEC);
}

static void test_unreachable(void **state) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        _cleanup_(keys_client_freep) KeysClient *k = NULL;
        _cleanup_close_ int fd = -EBADF;
        char url[64];
        Verdict v;

        /* a port that is bound but not listening: connections are refused */
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        snprintf(url, sizeof(url), "http://127.0.0.1:%u", ntohs(sa.sin_port));

        assert_int_equal(keys_client_new(&k, event, url, 0), 0);
        validate(k, api_key, &v);
        assert_true(v.error < 0); /* dtask-api answers 503 then, not 401 */
        assert_int_equal(v.error, -ECONNREFUSED);
        assert_null(v.key_id);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid_key),
                cmocka_unit_test(test_unknown_key),
                cmocka_unit_test(test_deactivation),
                cmocka_unit_test(test_expiry),
                cmocka_unit_test(test_unreachable),
        };

        keys_url = getenv("DTASK_KEYS_URL");
        api_key = getenv("DTASK_API_KEY");
        admin_user = getenv("DTASK_ADMIN_USERNAME");
        admin_password = getenv("DTASK_ADMIN_PASSWORD");
        if (isempty(keys_url) || isempty(api_key) || isempty(admin_user) || isempty(admin_password)) {
                printf("test-keys-client-live: DTASK_KEYS_URL, DTASK_API_KEY, DTASK_ADMIN_USERNAME or "
                       "DTASK_ADMIN_PASSWORD not set (run through tools/dev test); skipping.\n");
                return 77;
        }
        if (sodium_init() < 0)
                return 1;

        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
