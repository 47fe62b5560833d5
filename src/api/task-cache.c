/* SPDX-License-Identifier: MIT */
#include <assert.h>

#include "task-cache.h"

/* Forgotten ids leave their sequence number in one of these slots (by hash). A read whose
 * ticket is older than its slot's number is not stored: ids sharing a slot only cost a miss. */
#define STAMPS 1024U

struct TaskCache {
        uint64_t max_bytes, bytes;
        usec_t max_age;

        TaskCacheEntry **buckets;
        size_t n_buckets;       /* a power of two */
        size_t n_entries;
        TaskCacheEntry *lru_head, *lru_tail; /* head: used last */

        uint64_t seq;           /* counts the forgets and clears; tickets are its values */
        uint64_t cleared_at;    /* seq of the last clear */
        uint64_t stamps[STAMPS];

        uint64_t hits, misses;
};

static size_t entry_bytes(const TaskCacheEntry *e) {
        return sizeof(TaskCacheEntry) + e->json_size + 1;
}

int task_cache_new(TaskCache **ret, uint64_t max_bytes, usec_t max_age) {
        TaskCache *c;
        size_t n = 64;

        *ret = NULL;
        if (max_bytes == 0)
                return 0;

        /* about one bucket per typical entry (~1 KiB with its JSON) */
        while (n < 65536 && n * 1024 < max_bytes)
                n <<= 1;

        c = calloc(1, sizeof(TaskCache));
        if (!c)
                return -ENOMEM;
        c->buckets = calloc(n, sizeof(TaskCacheEntry *));
        if (!c->buckets) {
                free(c);
                return -ENOMEM;
        }
        c->n_buckets = n;
        c->max_bytes = max_bytes;
        c->max_age = max_age;
        c->seq = 1; /* ticket 0 means "do not store" */
        *ret = c;
        return 0;
}

static TaskCacheEntry **bucket_of(TaskCache *c, const char *id) {
        return &c->buckets[uuid_hash(id) & (c->n_buckets - 1)];
}

static void lru_unlink(TaskCache *c, TaskCacheEntry *e) {
        if (e->lru_prev)
                e->lru_prev->lru_next = e->lru_next;
        else
                c->lru_head = e->lru_next;
        if (e->lru_next)
                e->lru_next->lru_prev = e->lru_prev;
        else
                c->lru_tail = e->lru_prev;
        e->lru_prev = e->lru_next = NULL;
}

static void lru_push(TaskCache *c, TaskCacheEntry *e) {
        e->lru_prev = NULL;
        e->lru_next = c->lru_head;
        if (c->lru_head)
                c->lru_head->lru_prev = e;
        c->lru_head = e;
        if (!c->lru_tail)
                c->lru_tail = e;
}

static TaskCacheEntry *find(TaskCache *c, const char *id) {
        for (TaskCacheEntry *e = *bucket_of(c, id); e; e = e->bucket_next)
                if (streq(e->id, id))
                        return e;
        return NULL;
}

static void entry_remove(TaskCache *c, TaskCacheEntry *e) {
        TaskCacheEntry **link = bucket_of(c, e->id);

        while (*link != e)
                link = &(*link)->bucket_next;
        *link = e->bucket_next;
        lru_unlink(c, e);
        assert(c->bytes >= entry_bytes(e) && c->n_entries > 0);
        c->bytes -= entry_bytes(e);
        c->n_entries--;
        free(e);
}

TaskCache *task_cache_free(TaskCache *c) {
        if (!c)
                return NULL;
        task_cache_clear(c);
        free(c->buckets);
        return mfree(c);
}

const TaskCacheEntry *task_cache_get(TaskCache *c, const char *id, usec_t now) {
        TaskCacheEntry *e;

        if (!c)
                return NULL;
        e = find(c, id);
        if (e && now >= e->stored_at + c->max_age) {
                entry_remove(c, e);
                e = NULL;
        }
        if (!e) {
                c->misses++;
                return NULL;
        }
        lru_unlink(c, e);
        lru_push(c, e);
        c->hits++;
        return e;
}

uint64_t task_cache_ticket(TaskCache *c) {
        return c ? c->seq : 0;
}

int task_cache_put(TaskCache *c, uint64_t ticket, const Task *t, const char *json, size_t json_size, usec_t now) {
        TaskCacheEntry *e;

        if (!c || ticket == 0 || ticket < c->cleared_at || ticket < c->stamps[uuid_hash(t->id) % STAMPS])
                return 0;
        if (c->max_age == 0 || json_size > c->max_bytes / 16)
                return 0;

        e = find(c, t->id);
        if (e)
                entry_remove(c, e);
        e = malloc(sizeof(TaskCacheEntry) + json_size + 1);
        if (!e)
                return -ENOMEM;
        *e = (TaskCacheEntry) {
                .status = t->status,
                .stored_at = now,
                .json_size = json_size,
        };
        memcpy(e->id, t->id, UUID_STRING_MAX);
        memcpy(e->owner_id, t->owner_id, UUID_STRING_MAX);
        memcpy(e->json, json, json_size);
        e->json[json_size] = '\0';

        while (c->lru_tail && c->bytes + entry_bytes(e) > c->max_bytes)
                entry_remove(c, c->lru_tail);
        e->bucket_next = *bucket_of(c, e->id);
        *bucket_of(c, e->id) = e;
        lru_push(c, e);
        c->bytes += entry_bytes(e);
        c->n_entries++;
        return 1;
}

void task_cache_forget(TaskCache *c, const char *id) {
        TaskCacheEntry *e;

        if (!c)
                return;
        /* Stamped past every ticket handed out so far: ticket < seq after the increment. */
        c->stamps[uuid_hash(id) % STAMPS] = ++c->seq;
        e = find(c, id);
        if (e)
                entry_remove(c, e);
}

void task_cache_clear(TaskCache *c) {
        if (!c)
                return;
        c->cleared_at = ++c->seq;
        while (c->lru_head)
                entry_remove(c, c->lru_head);
}

void task_cache_stats(const TaskCache *c, TaskCacheStats *ret) {
        *ret = c ? (TaskCacheStats) {
                .hits = c->hits,
                .misses = c->misses,
                .entries = c->n_entries,
                .bytes = c->bytes,
        } : (TaskCacheStats) {};
}
