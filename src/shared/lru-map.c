/* SPDX-License-Identifier: MIT */
#include <sodium.h>

#include "lru-map.h"

/* The bucket array starts small and doubles whenever the entries fill half of it, up
 * to the size for max_entries (the same load as before): an idle daemon does not hold
 * (nor calloc() clear) bucket arrays for thousands of clients it has not seen. */
#define LRU_MAP_BUCKETS_MIN 16

typedef struct Entry Entry;
struct Entry {
        Entry *bucket_next;
        Entry *lru_prev, *lru_next; /* lru_prev towards the most recently used end */
        char key[LRU_MAP_KEY_MAX + 1];
        max_align_t value[];
};

struct LruMap {
        Entry **buckets;
        size_t n_buckets, max_buckets; /* powers of two */
        size_t n_entries, max_entries, value_size;
        Entry *newest, *oldest;
        uint8_t hash_key[crypto_shorthash_KEYBYTES];
        LruMapEvictCallback evict;
        void *userdata;
};

int lru_map_new(LruMap **ret, size_t max_entries, size_t value_size, LruMapEvictCallback evict, void *userdata) {
        _cleanup_(lru_map_freep) LruMap *m = NULL;
        size_t n = LRU_MAP_BUCKETS_MIN;

        if (!ret || max_entries == 0 || max_entries > SIZE_MAX / 4)
                return -EINVAL;
        while (n < max_entries * 2)
                n *= 2;

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->max_buckets = n;
        m->n_buckets = LRU_MAP_BUCKETS_MIN;
        m->buckets = calloc(m->n_buckets, sizeof(Entry *));
        if (!m->buckets)
                return -ENOMEM;
        m->max_entries = max_entries;
        m->value_size = value_size;
        m->evict = evict;
        m->userdata = userdata;
        crypto_shorthash_keygen(m->hash_key);

        *ret = TAKE_PTR(m);
        return 0;
}

LruMap *lru_map_free(LruMap *m) {
        if (!m)
                return NULL;
        for (Entry *e = m->oldest, *prev; e; e = prev) {
                prev = e->lru_prev;
                free(e);
        }
        free(m->buckets);
        sodium_memzero(m->hash_key, sizeof m->hash_key);
        return mfree(m);
}

static size_t bucket_in(const LruMap *m, const char *key, size_t n_buckets) {
        uint8_t h[crypto_shorthash_BYTES];
        uint64_t v;

        crypto_shorthash(h, (const unsigned char *) key, strlen(key), m->hash_key);
        memcpy(&v, h, sizeof v);
        return (size_t) (v & (n_buckets - 1));
}

static size_t bucket_of(const LruMap *m, const char *key) {
        return bucket_in(m, key, m->n_buckets);
}

/* Doubles the bucket array. Best effort: without memory the map keeps its buckets
 * (longer chains, still correct). */
static void lru_map_grow(LruMap *m) {
        size_t n = m->n_buckets * 2;
        Entry **buckets;

        buckets = calloc(n, sizeof(Entry *));
        if (!buckets)
                return;
        for (Entry *e = m->oldest; e; e = e->lru_prev) {
                Entry **slot = &buckets[bucket_in(m, e->key, n)];

                e->bucket_next = *slot;
                *slot = e;
        }
        free(m->buckets);
        m->buckets = buckets;
        m->n_buckets = n;
}

static Entry **find_slot(LruMap *m, const char *key) {
        Entry **slot = &m->buckets[bucket_of(m, key)];

        while (*slot && !streq((*slot)->key, key))
                slot = &(*slot)->bucket_next;
        return slot;
}

static void lru_unlink(LruMap *m, Entry *e) {
        if (e->lru_prev)
                e->lru_prev->lru_next = e->lru_next;
        else
                m->newest = e->lru_next;
        if (e->lru_next)
                e->lru_next->lru_prev = e->lru_prev;
        else
                m->oldest = e->lru_prev;
        e->lru_prev = e->lru_next = NULL;
}

static void lru_push_newest(LruMap *m, Entry *e) {
        e->lru_prev = NULL;
        e->lru_next = m->newest;
        if (m->newest)
                m->newest->lru_prev = e;
        m->newest = e;
        if (!m->oldest)
                m->oldest = e;
}

static void entry_remove(LruMap *m, Entry *e) {
        Entry **slot = find_slot(m, e->key);

        *slot = e->bucket_next;
        lru_unlink(m, e);
        m->n_entries--;
        free(e);
}

void *lru_map_get(LruMap *m, const char *key) {
        Entry *e;

        if (!m || !key || strlen(key) > LRU_MAP_KEY_MAX)
                return NULL;
        e = *find_slot(m, key);
        if (!e)
                return NULL;
        lru_unlink(m, e);
        lru_push_newest(m, e);
        return e->value;
}

void *lru_map_ensure(LruMap *m, const char *key, bool *ret_created) {
        Entry **slot, *e;
        size_t len;

        if (!m || !key || (len = strlen(key)) > LRU_MAP_KEY_MAX) {
                errno = EINVAL;
                return NULL;
        }
        e = *find_slot(m, key);
        if (e) {
                lru_unlink(m, e);
                lru_push_newest(m, e);
                if (ret_created)
                        *ret_created = false;
                return e->value;
        }

        if (m->n_entries >= m->max_entries) {
                Entry *old = m->oldest;

                if (m->evict)
                        m->evict(old->key, old->value, m->userdata);
                entry_remove(m, old);
        }

        e = calloc(1, sizeof(Entry) + m->value_size);
        if (!e) {
                errno = ENOMEM;
                return NULL;
        }
        memcpy(e->key, key, len + 1);
        slot = find_slot(m, key);
        *slot = e;
        lru_push_newest(m, e);
        m->n_entries++;
        if (m->n_entries * 2 > m->n_buckets && m->n_buckets < m->max_buckets)
                lru_map_grow(m);
        if (ret_created)
                *ret_created = true;
        return e->value;
}

bool lru_map_remove(LruMap *m, const char *key) {
        Entry *e;

        if (!m || !key || strlen(key) > LRU_MAP_KEY_MAX)
                return false;
        e = *find_slot(m, key);
        if (!e)
                return false;
        entry_remove(m, e);
        return true;
}

void *lru_map_oldest(LruMap *m, const char **ret_key) {
        if (!m || !m->oldest)
                return NULL;
        if (ret_key)
                *ret_key = m->oldest->key;
        return m->oldest->value;
}

size_t lru_map_size(const LruMap *m) {
        return m ? m->n_entries : 0;
}

void lru_map_visit(LruMap *m, LruMapVisit visit, void *userdata) {
        if (!m)
                return;
        for (Entry *e = m->oldest, *prev; e; e = prev) {
                prev = e->lru_prev;
                if (visit(e->key, e->value, userdata))
                        entry_remove(m, e);
        }
}
