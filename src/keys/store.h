/* SPDX-License-Identifier: MIT */
#pragma once

#include "key-util.h"
#include "macro.h"
#include "pg.h"
#include "time-util.h"
#include "uuid-util.h"

/* The api_keys table, asynchronously through the PostgreSQL pool. Every operation
 * calls its callback exactly once from the event loop. Errors passed to callbacks:
 * -ENOENT no such key, the pool's errors otherwise (-ENOTCONN, -ETIMEDOUT,
 * -ECONNRESET, -EAGAIN: the database is unavailable; -EBADMSG: the statement was
 * refused; -ECANCELED: shutting down). */

#define API_KEY_NAME_MAX 250
#define API_KEY_CLAIMS_MAX 64
#define API_KEY_CLAIM_MAX 200

typedef struct ApiKey {
        char id[UUID_STRING_MAX];
        char *name;
        char *prefix;
        bool is_active;
        usec_t created_at;
        usec_t expires_at;   /* 0: never */
        usec_t last_used_at; /* 0: never */
        char **claims;       /* never NULL */
} ApiKey;

ApiKey *api_key_free(ApiKey *k);
DEFINE_TRIVIAL_CLEANUP_FUNC(ApiKey *, api_key_free);
void api_key_array_free(ApiKey **keys, size_t n);

typedef enum ApiKeyState {
        API_KEY_VALID,
        API_KEY_INACTIVE,
        API_KEY_EXPIRED,
} ApiKeyState;

ApiKeyState api_key_state(const ApiKey *k, usec_t now_realtime);

/* Input checks shared by REST and D-Bus. They return NULL when the value is fine,
 * otherwise a message for the caller. A name has 1–250 characters, not all of them
 * white space, and no control characters; claims are at most 64 strings of 1–200
 * characters without control characters. */
const char *api_key_check_name(const char *name);
const char *api_key_check_claims(char *const *claims);
/* Drops repeated claims in place (the first one stays). */
void api_key_claims_uniq(char **claims);

typedef struct KeyStore KeyStore;

int key_store_new(KeyStore **ret, PgPool *pool, const ApiKeyPepper *pepper, uint64_t timeout_usec);
KeyStore *key_store_free(KeyStore *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(KeyStore *, key_store_free);

/* key: NULL unless error == 0. plaintext: the new key, to be shown once and forgotten. */
typedef void (*KeyStoreCreateCallback)(int error, const ApiKey *key, const char *plaintext, void *userdata);
/* keys: the result rows (error == 0); for one key, -ENOENT when there is none. */
typedef void (*KeyStoreCallback)(int error, ApiKey *const *keys, size_t n_keys, void *userdata);

/* Generates a new key, stores its hash and returns the row. */
int key_store_create(KeyStore *s, const char *name, char *const *claims, usec_t expires_at,
                     KeyStoreCreateCallback callback, void *userdata);
int key_store_get(KeyStore *s, const char *id, KeyStoreCallback callback, void *userdata);
/* All keys, oldest first, inactive ones included. */
int key_store_list(KeyStore *s, KeyStoreCallback callback, void *userdata);

typedef struct ApiKeyUpdate {
        const char *name;     /* NULL: unchanged */
        bool set_expires_at;
        usec_t expires_at;    /* with set_expires_at; 0: never */
        int is_active;        /* -1: unchanged */
        bool set_claims;
        char *const *claims;  /* with set_claims; NULL or empty clears */
} ApiKeyUpdate;
#define API_KEY_UPDATE_INIT ((ApiKeyUpdate) { .is_active = -1 })

/* keys[0] is the updated row. */
int key_store_update(KeyStore *s, const char *id, const ApiKeyUpdate *u, KeyStoreCallback callback, void *userdata);
/* n_keys 1 and keys[0] the deleted row, or -ENOENT. */
int key_store_delete(KeyStore *s, const char *id, KeyStoreCallback callback, void *userdata);

/* Finds the key whose hash matches plaintext: -ENOENT when there is none. */
int key_store_lookup(KeyStore *s, const char *plaintext, size_t len, KeyStoreCallback callback, void *userdata);

/* Records last uses: ids[i] was last used at times[i] (realtime usec). One statement. */
typedef void (*KeyStoreDoneCallback)(int error, void *userdata);
int key_store_touch(KeyStore *s, char *const *ids, const usec_t *times, size_t n, KeyStoreDoneCallback callback,
                    void *userdata);
