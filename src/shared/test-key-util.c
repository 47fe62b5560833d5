/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "key-util.h"

#define N_KEYS 10000

static const char pepper_a[] = "0123456789abcdef0123456789abcdef";       /* 32 bytes */
static const char pepper_b[] = "0123456789abcdef0123456789abcdeX";       /* differs in the last byte */

static bool is_urlsafe_base64(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static void test_generate_format(void **state) {
        char key[API_KEY_STRING_MAX];
        unsigned seen[256] = {};

        for (unsigned i = 0; i < N_KEYS; i++) {
                api_key_generate(key);
                assert_int_equal(strlen(key), 32);
                assert_memory_equal(key, "ak_", 3);
                for (size_t j = 3; j < 32; j++) {
                        assert_true(is_urlsafe_base64(key[j]));
                        seen[(unsigned char) key[j]]++;
                }
                assert_true(api_key_format_is_valid(key));
        }

        /* 290 000 characters: every one of the 64 must have turned up, none other. */
        for (unsigned c = 0; c < 256; c++)
                assert_true(is_urlsafe_base64((char) c) ? seen[c] > 0 : seen[c] == 0);
}

static void test_generate_unique(void **state) {
        char **keys = calloc(N_KEYS, sizeof(char *));

        assert_non_null(keys);
        for (unsigned i = 0; i < N_KEYS; i++) {
                keys[i] = malloc(API_KEY_STRING_MAX);
                assert_non_null(keys[i]);
                api_key_generate(keys[i]);
        }
        qsort(keys, N_KEYS, sizeof(char *), cmp_str);
        for (unsigned i = 1; i < N_KEYS; i++)
                assert_string_not_equal(keys[i - 1], keys[i]);
        for (unsigned i = 0; i < N_KEYS; i++)
                free(keys[i]);
        free(keys);
}

static void test_format_check(void **state) {
        assert_true(api_key_format_is_valid("ak_ABCDEFGHIJKLMNOPQRSTUVWXYZ-_0"));
        assert_false(api_key_format_is_valid("ak_ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"));   /* 31 */
        assert_false(api_key_format_is_valid("ak_ABCDEFGHIJKLMNOPQRSTUVWXYZ-_01")); /* 33 */
        assert_false(api_key_format_is_valid("ax_ABCDEFGHIJKLMNOPQRSTUVWXYZ-_0"));
        assert_false(api_key_format_is_valid("ak_ABCDEFGHIJKLMNOPQRSTUVWXYZ+/0"));  /* not URL-safe */
        assert_false(api_key_format_is_valid("ak_ABCDEFGHIJKLMNOPQRSTUVWXYZ=_0"));
        assert_false(api_key_format_is_valid(""));
        assert_false(api_key_format_is_valid(NULL));
}

static void test_display_prefix(void **state) {
        char p[API_KEY_DISPLAY_PREFIX_LENGTH + 1];

        assert_string_equal(api_key_display_prefix("ak_ABCDEFGHIJKLMNOPQRSTUVWXYZ-_0", p), "ak_ABCDE");
        assert_string_equal(api_key_display_prefix("ak_A", p), "ak_A");
}

static void test_hash(void **state) {
        ApiKeyPepper a, b;
        char key[API_KEY_STRING_MAX], other[API_KEY_STRING_MAX];
        uint8_t h1[API_KEY_HASH_SIZE], h2[API_KEY_HASH_SIZE], h3[API_KEY_HASH_SIZE], h4[API_KEY_HASH_SIZE];

        assert_int_equal(api_key_pepper_init(&a, pepper_a, strlen(pepper_a)), 0);
        assert_int_equal(api_key_pepper_init(&b, pepper_b, strlen(pepper_b)), 0);
        api_key_generate(key);
        api_key_generate(other);

        /* same key, same pepper → same hash */
        assert_int_equal(api_key_hash(&a, key, strlen(key), h1), 0);
        assert_int_equal(api_key_hash(&a, key, strlen(key), h2), 0);
        assert_memory_equal(h1, h2, sizeof h1);
        assert_true(api_key_hash_equal(h1, h2));

        /* other pepper → other hash */
        assert_int_equal(api_key_hash(&b, key, strlen(key), h3), 0);
        assert_memory_not_equal(h1, h3, sizeof h1);
        assert_false(api_key_hash_equal(h1, h3));

        /* other key → other hash */
        assert_int_equal(api_key_hash(&a, other, strlen(other), h4), 0);
        assert_memory_not_equal(h1, h4, sizeof h1);

        /* the hash is not the key, nor contains its text */
        assert_memory_not_equal(h1, key, sizeof h1);
        assert_null(memmem(h1, sizeof h1, key + 3, 8));

        /* it is keyed BLAKE2b-256 with the pepper as key */
        {
                uint8_t ref[32];
                assert_int_equal(crypto_generichash(ref, sizeof ref, (const unsigned char *) key, strlen(key),
                                                    (const unsigned char *) pepper_a, strlen(pepper_a)),
                                 0);
                assert_memory_equal(ref, h1, sizeof ref);
        }

        api_key_pepper_done(&a);
        api_key_pepper_done(&b);
}

static void test_pepper(void **state) {
        ApiKeyPepper p;
        char long_pepper[200];
        uint8_t h1[API_KEY_HASH_SIZE], h2[API_KEY_HASH_SIZE];

        /* shorter than 32 bytes is refused */
        assert_int_equal(api_key_pepper_init(&p, "0123456789abcdef0123456789abcde", 31), -EINVAL);
        assert_int_equal(api_key_pepper_init(&p, "", 0), -EINVAL);

        /* peppers longer than BLAKE2b's 64-byte key work, and all their bytes count */
        memset(long_pepper, 'p', sizeof long_pepper);
        assert_int_equal(api_key_pepper_init(&p, long_pepper, sizeof long_pepper), 0);
        assert_int_equal(api_key_hash(&p, "ak_x", 4, h1), 0);
        long_pepper[sizeof long_pepper - 1] = 'q';
        assert_int_equal(api_key_pepper_init(&p, long_pepper, sizeof long_pepper), 0);
        assert_int_equal(api_key_hash(&p, "ak_x", 4, h2), 0);
        assert_memory_not_equal(h1, h2, sizeof h1);

        /* an uninitialized (wiped) pepper is not usable */
        api_key_pepper_done(&p);
        assert_int_equal(api_key_hash(&p, "ak_x", 4, h1), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_generate_format),
                cmocka_unit_test(test_generate_unique),
                cmocka_unit_test(test_format_check),
                cmocka_unit_test(test_display_prefix),
                cmocka_unit_test(test_hash),
                cmocka_unit_test(test_pepper),
        };

        if (sodium_init() < 0)
                return 1;
        return cmocka_run_group_tests(tests, NULL, NULL);
}
