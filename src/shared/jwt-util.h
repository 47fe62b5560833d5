/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* JSON Web Tokens on libjwt 1.10, HS256 only. libjwt 1.10 has no validation API and
 * does not look at "exp", so every check beyond the signature is done here: the
 * header "alg" must be HS256, "exp" must be present and in the future, "nbf" (when
 * present) in the past, "iss" and "aud" must equal the expected values ("aud" may
 * also be an array containing it). A token carries its claims as a JSON array of
 * strings in the member "claims"; JWT_CLAIM_MIRROR (if the claims contain it) is
 * also set as a top-level string member "true", the way ASP.NET code reads a claim
 * of that type (compat with tokens of the older system). */

#define JWT_SECRET_MIN 32
#define JWT_TOKEN_MAX 8192
#define JWT_CLAIM_MIRROR "ManageApiKey"

typedef struct JwtSettings {
        const void *secret;
        size_t secret_size;  /* at least JWT_SECRET_MIN, else -ENOKEY */
        const char *issuer;
        const char *audience;
} JwtSettings;

typedef struct JwtToken {
        char *subject;       /* "sub", may be NULL */
        char **claims;       /* NULL-terminated, never NULL */
        uint64_t issued_at;  /* usec, 0 if absent */
        uint64_t expires_at; /* usec */
} JwtToken;

JwtToken *jwt_token_free(JwtToken *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(JwtToken *, jwt_token_free);

/* Signs a token for subject with the claims (NULL-terminated, may be NULL), valid from
 * now_usec for lifetime_usec. The token is a secret: free it with erase_and_free(). */
int jwt_util_encode(const JwtSettings *s, const char *subject, char *const *claims, uint64_t now_usec,
                    uint64_t lifetime_usec, char **ret_token);

/* Verifies a token. Errors:
 *   -ENOKEY       the secret is shorter than JWT_SECRET_MIN bytes
 *   -EBADMSG      malformed, too long, or the signature does not match
 *   -EPROTONOSUPPORT  the header names another algorithm than HS256 (e.g. "none")
 *   -EKEYEXPIRED  "exp" has passed, or is missing; "nbf" is in the future
 *   -EKEYREJECTED "iss" or "aud" is not the expected value
 *   -ENOMEM */
int jwt_util_decode(const JwtSettings *s, const char *token, uint64_t now_usec, JwtToken **ret);

bool jwt_token_has_claim(const JwtToken *t, const char *claim);
