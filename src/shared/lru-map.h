/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* A bounded map from short strings (client addresses, key ids, task ids) to fixed-size values,
 * with least-recently-used eviction: the memory of per-client state stays bounded
 * whatever clients do. Buckets are chosen with SipHash under a random key
 * (crypto_shorthash), so that clients cannot pick addresses that collide. */

#define LRU_MAP_KEY_MAX 63

typedef struct LruMap LruMap;

/* Called for an entry that is evicted to make room (not for lru_map_remove() or free). */
typedef void (*LruMapEvictCallback)(const char *key, void *value, void *userdata);

int lru_map_new(LruMap **ret, size_t max_entries, size_t value_size, LruMapEvictCallback evict, void *userdata);
LruMap *lru_map_free(LruMap *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(LruMap *, lru_map_free);

/* The value of key (marked as most recently used), or NULL. */
void *lru_map_get(LruMap *m, const char *key);
/* The value of key, created zero-filled when absent (evicting the least recently used
 * entry when full). NULL with errno set (EINVAL: key too long; ENOMEM). */
void *lru_map_ensure(LruMap *m, const char *key, bool *ret_created);
bool lru_map_remove(LruMap *m, const char *key);
/* The value of the least recently used entry (its key in *ret_key), or NULL when empty; not
 * marked as used. */
void *lru_map_oldest(LruMap *m, const char **ret_key);
size_t lru_map_size(const LruMap *m);

/* Visits every entry from the least to the most recently used; the callback may
 * return true to remove the entry. */
typedef bool (*LruMapVisit)(const char *key, void *value, void *userdata);
void lru_map_visit(LruMap *m, LruMapVisit visit, void *userdata);
