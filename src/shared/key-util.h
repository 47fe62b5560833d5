/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* API keys (compat format of the older system): "ak_" followed by 29 characters of the
 * URL-safe base64 alphabet (A–Z a–z 0–9 - _), 32 characters in all, from libsodium's
 * CSPRNG (174 random bits). Only a keyed BLAKE2b-256 hash of a key is ever stored, under
 * a server-side secret ("pepper"), plus a short display prefix. */

#define API_KEY_PREFIX "ak_"
#define API_KEY_RANDOM_CHARS 29
#define API_KEY_LENGTH (STRLEN(API_KEY_PREFIX) + API_KEY_RANDOM_CHARS) /* 32 */
#define API_KEY_STRING_MAX (API_KEY_LENGTH + 1)
/* Characters of a key shown in listings: "ak_" plus 5 random characters (30 of 174 bits). */
#define API_KEY_DISPLAY_PREFIX_LENGTH 8
#define API_KEY_HASH_SIZE 32
/* The pepper must have at least this many bytes. */
#define API_KEY_PEPPER_MIN 32

/* Writes a new random key (NUL-terminated) to ret. Cannot fail. */
char *api_key_generate(char ret[static API_KEY_STRING_MAX]);

/* true when s has the format of a key: prefix, length and alphabet. */
bool api_key_format_is_valid(const char *s);

/* The first API_KEY_DISPLAY_PREFIX_LENGTH characters of key (fewer if key is shorter). */
char *api_key_display_prefix(const char *key, char ret[static API_KEY_DISPLAY_PREFIX_LENGTH + 1]);

/* A pepper prepared for hashing: BLAKE2b takes keys of 16–64 bytes; a longer pepper is first
 * reduced to 64 bytes with unkeyed BLAKE2b-512 (as HMAC does with long keys). */
typedef struct ApiKeyPepper {
        uint8_t key[64];
        size_t size;
} ApiKeyPepper;

/* -EINVAL when pepper is shorter than API_KEY_PEPPER_MIN bytes. */
int api_key_pepper_init(ApiKeyPepper *ret, const void *pepper, size_t size);
void api_key_pepper_done(ApiKeyPepper *p); /* wipes */

/* Keyed BLAKE2b-256 of the key text (any length up to 4 KiB; -EINVAL beyond). */
int api_key_hash(const ApiKeyPepper *pepper, const char *key, size_t len, uint8_t ret[static API_KEY_HASH_SIZE]);

/* Constant-time comparison of two hashes. */
bool api_key_hash_equal(const uint8_t a[static API_KEY_HASH_SIZE], const uint8_t b[static API_KEY_HASH_SIZE]);
