/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jwt.h>
#include <stdio.h>

#include "json-util.h"
#include "jwt-util.h"

#define SECRET "an HS256 secret of at least 32 bytes, for tests"
#define NOW ((uint64_t) 1800000000 * USEC_PER_SEC)
#define HOUR (3600 * USEC_PER_SEC)

static const JwtSettings settings = {
        .secret = SECRET,
        .secret_size = sizeof(SECRET) - 1,
        .issuer = "dtask-keys",
        .audience = "dtask-keys",
};

static char *b64url(const void *data, size_t n) {
        size_t len = sodium_base64_encoded_len(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        char *s = malloc(len);

        assert_non_null(s);
        sodium_bin2base64(s, len, data, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        return s;
}

/* A token from raw header and payload JSON, signed with HMAC-SHA256 under key (NULL: no signature). */
static char *make_token(const char *header, const char *payload, const char *key) {
        char *h = b64url(header, strlen(header)), *p = b64url(payload, strlen(payload)), *sig = NULL, *t = NULL;
        char *signing_input = NULL;

        assert_true(asprintf(&signing_input, "%s.%s", h, p) > 0);
        if (key) {
                crypto_auth_hmacsha256_state st;
                uint8_t mac[crypto_auth_hmacsha256_BYTES];

                crypto_auth_hmacsha256_init(&st, (const unsigned char *) key, strlen(key));
                crypto_auth_hmacsha256_update(&st, (const unsigned char *) signing_input, strlen(signing_input));
                crypto_auth_hmacsha256_final(&st, mac);
                sig = b64url(mac, sizeof mac);
        }
        assert_true(asprintf(&t, "%s.%s", signing_input, sig ?: "") > 0);
        free(h);
        free(p);
        free(sig);
        free(signing_input);
        return t;
}

static char *payload(long exp, const char *iss, const char *aud, const char *claims) {
        char *s = NULL;

        assert_true(asprintf(&s, "{\"iss\":\"%s\",\"aud\":%s,\"sub\":\"admin\",\"exp\":%ld,\"claims\":%s}", iss, aud,
                             exp, claims) > 0);
        return s;
}

static void test_roundtrip(void **state) {
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        char *claims[] = { (char *) "ManageApiKey", (char *) "other", NULL };
        char *token = NULL;

        assert_int_equal(jwt_util_encode(&settings, "admin", claims, NOW, 24 * HOUR, &token), 0);
        assert_non_null(token);
        /* three base64url parts */
        assert_non_null(strchr(token, '.'));
        assert_int_equal(jwt_util_decode(&settings, token, NOW + HOUR, &t), 0);
        assert_string_equal(t->subject, "admin");
        assert_int_equal(strv_length(t->claims), 2);
        assert_true(jwt_token_has_claim(t, "ManageApiKey"));
        assert_true(jwt_token_has_claim(t, "other"));
        assert_false(jwt_token_has_claim(t, "manageapikey"));
        assert_int_equal(t->expires_at, NOW + 24 * HOUR);
        assert_int_equal(t->issued_at, NOW);

        /* the header says HS256 and the ManageApiKey claim is mirrored top-level (ASP.NET style) */
        {
                jwt_t *j = NULL;
                assert_int_equal(jwt_decode(&j, token, (const unsigned char *) SECRET, (int) strlen(SECRET)), 0);
                assert_int_equal(jwt_get_alg(j), JWT_ALG_HS256);
                assert_string_equal(jwt_get_grant(j, "ManageApiKey"), "true");
                assert_string_equal(jwt_get_grant(j, "iss"), "dtask-keys");
                assert_string_equal(jwt_get_grant(j, "aud"), "dtask-keys");
                jwt_free(j);
        }
        free(token);
}

static void test_expired(void **state) {
        JwtToken *t = NULL;
        char *token = NULL;

        assert_int_equal(jwt_util_encode(&settings, "admin", NULL, NOW, HOUR, &token), 0);
        assert_int_equal(jwt_util_decode(&settings, token, NOW + HOUR - 1, &t), 0);
        t = jwt_token_free(t);
        assert_int_equal(jwt_util_decode(&settings, token, NOW + HOUR, &t), -EKEYEXPIRED);
        assert_int_equal(jwt_util_decode(&settings, token, NOW + 2 * HOUR, &t), -EKEYEXPIRED);
        assert_null(t);
        free(token);

        /* a token without "exp" never passes */
        {
                char *tok = make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                                       "{\"iss\":\"dtask-keys\",\"aud\":\"dtask-keys\",\"claims\":[\"ManageApiKey\"]}",
                                       SECRET);
                assert_int_equal(jwt_util_decode(&settings, tok, NOW, &t), -EKEYEXPIRED);
                free(tok);
        }
}

static void test_wrong_signature(void **state) {
        JwtToken *t = NULL;
        JwtSettings other = settings;
        char *token = NULL;

        other.secret = "another secret, also at least 32 bytes long";
        other.secret_size = strlen(other.secret);
        assert_int_equal(jwt_util_encode(&other, "admin", NULL, NOW, HOUR, &token), 0);
        assert_int_equal(jwt_util_decode(&settings, token, NOW, &t), -EBADMSG);

        /* a flipped character in the signature */
        free(token);
        assert_int_equal(jwt_util_encode(&settings, "admin", NULL, NOW, HOUR, &token), 0);
        token[strlen(token) - 2] = token[strlen(token) - 2] == 'A' ? 'B' : 'A';
        assert_int_equal(jwt_util_decode(&settings, token, NOW, &t), -EBADMSG);
        assert_null(t);
        free(token);

        /* a hand-made token signed with the right key is accepted (so the failures above are the signature) */
        {
                char *p = payload((long) (NOW / USEC_PER_SEC) + 60, "dtask-keys", "\"dtask-keys\"", "[\"ManageApiKey\"]");
                char *tok = make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", p, SECRET);
                assert_int_equal(jwt_util_decode(&settings, tok, NOW, &t), 0);
                assert_true(jwt_token_has_claim(t, "ManageApiKey"));
                t = jwt_token_free(t);
                free(tok);
                free(p);
        }
}

static void test_alg_none(void **state) {
        JwtToken *t = NULL;
        char *p = payload((long) (NOW / USEC_PER_SEC) + 60, "dtask-keys", "\"dtask-keys\"", "[\"ManageApiKey\"]");
        char *tok;

        tok = make_token("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, NULL);
        assert_true(jwt_util_decode(&settings, tok, NOW, &t) < 0);
        assert_null(t);
        free(tok);

        /* "none" with a signature part attached */
        tok = make_token("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, SECRET);
        assert_true(jwt_util_decode(&settings, tok, NOW, &t) < 0);
        assert_null(t);
        free(tok);
        free(p);
}

static void test_other_alg(void **state) {
        JwtToken *t = NULL;
        jwt_t *j = NULL;
        char *tok;

        /* correctly signed with HS512 under the same secret: still refused, only HS256 is accepted */
        assert_int_equal(jwt_new(&j), 0);
        assert_int_equal(jwt_add_grant(j, "iss", "dtask-keys"), 0);
        assert_int_equal(jwt_add_grant(j, "aud", "dtask-keys"), 0);
        assert_int_equal(jwt_add_grant_int(j, "exp", (long) (NOW / USEC_PER_SEC) + 60), 0);
        assert_int_equal(jwt_add_grants_json(j, "{\"claims\":[\"ManageApiKey\"]}"), 0);
        assert_int_equal(jwt_set_alg(j, JWT_ALG_HS512, (const unsigned char *) SECRET, (int) strlen(SECRET)), 0);
        tok = jwt_encode_str(j);
        assert_non_null(tok);
        jwt_free(j);
        assert_int_equal(jwt_util_decode(&settings, tok, NOW, &t), -EPROTONOSUPPORT);
        assert_null(t);
        free(tok);
}

static void test_wrong_iss_aud(void **state) {
        JwtToken *t = NULL;
        long exp = (long) (NOW / USEC_PER_SEC) + 60;
        struct {
                const char *iss, *aud;
                int expected;
        } cases[] = {
                { "dtask-keys", "\"dtask-keys\"", 0 },
                { "dtask-keys", "[\"x\",\"dtask-keys\"]", 0 },
                { "someone-else", "\"dtask-keys\"", -EKEYREJECTED },
                { "dtask-keys", "\"dtask-api\"", -EKEYREJECTED },
                { "dtask-keys", "[\"dtask-api\"]", -EKEYREJECTED },
                { "dtask-keys", "42", -EKEYREJECTED },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *p = payload(exp, cases[i].iss, cases[i].aud, "[]");
                char *tok = make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", p, SECRET);

                assert_int_equal(jwt_util_decode(&settings, tok, NOW, &t), cases[i].expected);
                t = jwt_token_free(t);
                free(tok);
                free(p);
        }

        /* no "iss" at all */
        {
                char *tok = make_token("{\"alg\":\"HS256\"}", "{\"aud\":\"dtask-keys\",\"exp\":1900000000}", SECRET);
                assert_int_equal(jwt_util_decode(&settings, tok, NOW, &t), -EKEYREJECTED);
                free(tok);
        }
}

static void test_malformed(void **state) {
        JwtToken *t = NULL;
        char *big;

        assert_int_equal(jwt_util_decode(&settings, "", NOW, &t), -EBADMSG);
        assert_int_equal(jwt_util_decode(&settings, "abc", NOW, &t), -EBADMSG);
        assert_int_equal(jwt_util_decode(&settings, "a.b.c", NOW, &t), -EBADMSG);
        assert_int_equal(jwt_util_decode(&settings, "....", NOW, &t), -EBADMSG);
        big = malloc(JWT_TOKEN_MAX + 2);
        assert_non_null(big);
        memset(big, 'a', JWT_TOKEN_MAX + 1);
        big[JWT_TOKEN_MAX + 1] = '\0';
        assert_int_equal(jwt_util_decode(&settings, big, NOW, &t), -EBADMSG);
        free(big);
        assert_null(t);
}

static void test_short_secret(void **state) {
        JwtSettings s = settings;
        JwtToken *t = NULL;
        char *token = NULL;

        s.secret = "0123456789abcdef0123456789abcde"; /* 31 bytes */
        s.secret_size = 31;
        assert_int_equal(jwt_util_encode(&s, "admin", NULL, NOW, HOUR, &token), -ENOKEY);
        assert_null(token);
        assert_int_equal(jwt_util_decode(&s, "a.b.c", NOW, &t), -ENOKEY);
        s.secret_size = 0;
        assert_int_equal(jwt_util_encode(&s, "admin", NULL, NOW, HOUR, &token), -ENOKEY);

        s.secret = "0123456789abcdef0123456789abcdef"; /* exactly 32: fine */
        s.secret_size = 32;
        assert_int_equal(jwt_util_encode(&s, "admin", NULL, NOW, HOUR, &token), 0);
        assert_int_equal(jwt_util_decode(&s, token, NOW, &t), 0);
        jwt_token_free(t);
        free(token);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_roundtrip),
                cmocka_unit_test(test_expired),
                cmocka_unit_test(test_wrong_signature),
                cmocka_unit_test(test_alg_none),
                cmocka_unit_test(test_other_alg),
                cmocka_unit_test(test_wrong_iss_aud),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_short_secret),
        };

        if (sodium_init() < 0)
                return 1;
        return cmocka_run_group_tests(tests, NULL, NULL);
}
