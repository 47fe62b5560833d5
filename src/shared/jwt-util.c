/* SPDX-License-Identifier: MIT */
#include <json-c/json.h>
#include <jwt.h>

#include "json-util.h"
#include "jwt-util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(jwt_t *, jwt_free);

JwtToken *jwt_token_free(JwtToken *t) {
        if (!t)
                return NULL;
        free(t->subject);
        strv_free(t->claims);
        return mfree(t);
}

static int settings_check(const JwtSettings *s) {
        if (!s || !s->issuer || !s->audience || (!s->secret && s->secret_size > 0))
                return -EINVAL;
        if (s->secret_size < JWT_SECRET_MIN || s->secret_size > INT32_MAX)
                return -ENOKEY;
        return 0;
}

int jwt_util_encode(const JwtSettings *s, const char *subject, char *const *claims, uint64_t now_usec,
                    uint64_t lifetime_usec, char **ret_token) {
        _cleanup_(jwt_freep) jwt_t *jwt = NULL;
        _cleanup_json_ json_object *grants = NULL, *list = NULL;
        char *token;
        long now = (long) (now_usec / USEC_PER_SEC);
        int r;

        r = settings_check(s);
        if (r < 0)
                return r;
        if (!ret_token || lifetime_usec == 0)
                return -EINVAL;

        /* All grants go in as one JSON document, so that "claims" is a real array. */
        grants = json_object_new_object();
        list = json_object_new_array();
        if (!grants || !list)
                return -ENOMEM;
        for (char *const *c = claims; c && *c; c++)
                if (json_object_array_add(list, json_object_new_string(*c)) < 0)
                        return -ENOMEM;
        if (json_add_string(grants, "iss", s->issuer) < 0 || json_add_string(grants, "aud", s->audience) < 0 ||
            (subject && json_add_string(grants, "sub", subject) < 0) || json_add_int(grants, "iat", now) < 0 ||
            json_add_int(grants, "nbf", now) < 0 ||
            json_add_int(grants, "exp", (int64_t) ((now_usec + lifetime_usec + USEC_PER_SEC - 1) / USEC_PER_SEC)) < 0)
                return -ENOMEM;
        if (strv_contains(claims, JWT_CLAIM_MIRROR) && json_add_string(grants, JWT_CLAIM_MIRROR, "true") < 0)
                return -ENOMEM;
        if (json_object_object_add(grants, "claims", list) < 0)
                return -ENOMEM;
        TAKE_PTR(list);

        r = jwt_new(&jwt);
        if (r != 0)
                return -abs(r);
        r = jwt_add_grants_json(jwt, json_object_to_json_string_ext(grants, JSON_C_TO_STRING_PLAIN));
        if (r != 0)
                return -abs(r);
        r = jwt_set_alg(jwt, JWT_ALG_HS256, s->secret, (int) s->secret_size);
        if (r != 0)
                return -abs(r);

        token = jwt_encode_str(jwt);
        if (!token)
                return errno > 0 ? -errno : -ENOMEM;
        *ret_token = token;
        return 0;
}

/* "aud" is a string or an array of strings (RFC 7519 4.1.3). */
static bool audience_matches(jwt_t *jwt, const char *audience) {
        _cleanup_free_ char *json = NULL;
        _cleanup_json_ json_object *v = NULL;
        const char *s;

        errno = 0;
        s = jwt_get_grant(jwt, "aud");
        if (s)
                return streq(s, audience);

        json = jwt_get_grants_json(jwt, "aud");
        if (!json)
                return false;
        v = json_tokener_parse(json);
        if (!json_object_is_type(v, json_type_array))
                return false;
        for (size_t i = 0, n = json_object_array_length(v); i < n; i++) {
                json_object *e = json_object_array_get_idx(v, i);

                if (json_object_is_type(e, json_type_string) && streq(json_object_get_string(e), audience))
                        return true;
        }
        return false;
}

static int read_claims(jwt_t *jwt, char ***ret) {
        _cleanup_free_ char *json = NULL;
        _cleanup_json_ json_object *v = NULL;
        _cleanup_(strv_freep) char **l = NULL;
        size_t n;

        json = jwt_get_grants_json(jwt, "claims");
        if (json)
                v = json_tokener_parse(json);
        if (!json_object_is_type(v, json_type_array))
                n = 0;
        else
                n = json_object_array_length(v);

        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0, k = 0; i < n; i++) {
                json_object *e = json_object_array_get_idx(v, i);

                if (!json_object_is_type(e, json_type_string))
                        continue;
                l[k] = strdup(json_object_get_string(e));
                if (!l[k])
                        return -ENOMEM;
                k++;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

int jwt_util_decode(const JwtSettings *s, const char *token, uint64_t now_usec, JwtToken **ret) {
        _cleanup_(jwt_freep) jwt_t *jwt = NULL;
        _cleanup_(jwt_token_freep) JwtToken *t = NULL;
        const char *iss, *sub;
        long exp, nbf, iat;
        int r;

        r = settings_check(s);
        if (r < 0)
                return r;
        if (!token || !ret)
                return -EINVAL;
        if (strlen(token) > JWT_TOKEN_MAX)
                return -EBADMSG;

        /* With a key given, libjwt verifies the signature with the algorithm the header
         * names and refuses "none"; any algorithm other than HS256 is refused below. */
        r = jwt_decode(&jwt, token, s->secret, (int) s->secret_size);
        if (r == ENOMEM)
                return -ENOMEM;
        if (r != 0 || !jwt)
                return -EBADMSG;
        if (jwt_get_alg(jwt) != JWT_ALG_HS256)
                return -EPROTONOSUPPORT;

        errno = 0;
        exp = jwt_get_grant_int(jwt, "exp");
        if (errno != 0 || exp <= 0)
                return -EKEYEXPIRED;
        if ((uint64_t) exp * USEC_PER_SEC <= now_usec)
                return -EKEYEXPIRED;
        errno = 0;
        nbf = jwt_get_grant_int(jwt, "nbf");
        if (errno == 0 && nbf > 0 && (uint64_t) nbf * USEC_PER_SEC > now_usec + 60 * USEC_PER_SEC)
                return -EKEYEXPIRED; /* not yet valid; one minute of clock skew is allowed */

        errno = 0;
        iss = jwt_get_grant(jwt, "iss");
        if (!iss || !streq(iss, s->issuer))
                return -EKEYREJECTED;
        if (!audience_matches(jwt, s->audience))
                return -EKEYREJECTED;

        t = calloc(1, sizeof *t);
        if (!t)
                return -ENOMEM;
        sub = jwt_get_grant(jwt, "sub");
        if (sub) {
                t->subject = strdup(sub);
                if (!t->subject)
                        return -ENOMEM;
        }
        r = read_claims(jwt, &t->claims);
        if (r < 0)
                return r;
        errno = 0;
        iat = jwt_get_grant_int(jwt, "iat");
        t->issued_at = errno == 0 && iat > 0 ? (uint64_t) iat * USEC_PER_SEC : 0;
        t->expires_at = (uint64_t) exp * USEC_PER_SEC;

        *ret = TAKE_PTR(t);
        return 0;
}

bool jwt_token_has_claim(const JwtToken *t, const char *claim) {
        return t && strv_contains(t->claims, claim);
}
