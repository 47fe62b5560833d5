/* SPDX-License-Identifier: MIT */
#include <sodium.h>

#include "key-util.h"

#define API_KEY_INPUT_MAX 4096

static const char alphabet[64] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *api_key_generate(char ret[static API_KEY_STRING_MAX]) {
        uint8_t b[API_KEY_RANDOM_CHARS];
        size_t k = 0;

        /* 64 divides 256, so "byte & 63" picks every character with the same probability. */
        randombytes_buf(b, sizeof b);
        memcpy(ret, API_KEY_PREFIX, STRLEN(API_KEY_PREFIX));
        k = STRLEN(API_KEY_PREFIX);
        for (size_t i = 0; i < sizeof b; i++)
                ret[k++] = alphabet[b[i] & 63];
        ret[k] = '\0';
        sodium_memzero(b, sizeof b);
        return ret;
}

bool api_key_format_is_valid(const char *s) {
        if (!s || strlen(s) != API_KEY_LENGTH || !strneq(s, API_KEY_PREFIX, STRLEN(API_KEY_PREFIX)))
                return false;
        for (size_t i = STRLEN(API_KEY_PREFIX); i < API_KEY_LENGTH; i++)
                if (!memchr(alphabet, s[i], sizeof alphabet))
                        return false;
        return true;
}

char *api_key_display_prefix(const char *key, char ret[static API_KEY_DISPLAY_PREFIX_LENGTH + 1]) {
        size_t n = strnlen(key, API_KEY_DISPLAY_PREFIX_LENGTH);

        memcpy(ret, key, n);
        ret[n] = '\0';
        return ret;
}

int api_key_pepper_init(ApiKeyPepper *ret, const void *pepper, size_t size) {
        if (!ret || (!pepper && size > 0))
                return -EINVAL;
        if (size < API_KEY_PEPPER_MIN)
                return -EINVAL;

        if (size <= crypto_generichash_KEYBYTES_MAX) {
                memcpy(ret->key, pepper, size);
                ret->size = size;
        } else {
                if (crypto_generichash(ret->key, crypto_generichash_BYTES_MAX, pepper, size, NULL, 0) < 0)
                        return -EIO;
                ret->size = crypto_generichash_BYTES_MAX;
        }
        return 0;
}

void api_key_pepper_done(ApiKeyPepper *p) {
        if (p)
                sodium_memzero(p, sizeof *p);
}

int api_key_hash(const ApiKeyPepper *pepper, const char *key, size_t len, uint8_t ret[static API_KEY_HASH_SIZE]) {
        if (!pepper || pepper->size < API_KEY_PEPPER_MIN || !key || len > API_KEY_INPUT_MAX)
                return -EINVAL;
        if (crypto_generichash(ret, API_KEY_HASH_SIZE, (const unsigned char *) key, len, pepper->key,
                               pepper->size) < 0)
                return -EIO;
        return 0;
}

bool api_key_hash_equal(const uint8_t a[static API_KEY_HASH_SIZE], const uint8_t b[static API_KEY_HASH_SIZE]) {
        return sodium_memcmp(a, b, API_KEY_HASH_SIZE) == 0;
}
