/* SPDX-License-Identifier: MIT */
#include "lru-map.h"
#include "task-cache.h"

/* Forgotten ids leave their sequence number in one of these slots (by hash). A read whose
 * ticket is older than its slot's number is not stored: ids sharing a slot only cost a miss. */
#define STAMPS 1024U
/* What an entry costs beside its JSON text: the map's entry (links, key) and ours. */
#define ENTRY_OVERHEAD (128 + sizeof(TaskCacheEntry))
/* The smallest entry there can be (a task's JSON is ~350 bytes at least): bounds the count. */
#define ENTRY_MIN (ENTRY_OVERHEAD + 256)

struct TaskCache {
        LruMap *map;            /* task id → TaskCacheEntry */
        uint64_t max_bytes, bytes;
        usec_t max_age;

        uint64_t seq;           /* counts the forgets and clears; tickets are its values */
        uint64_t cleared_at;    /* seq of the last clear */
        uint64_t stamps[STAMPS];

        uint64_t hits, misses;
};

static void entry_release(TaskCache *c, TaskCacheEntry *e) {
        c->bytes -= ENTRY_OVERHEAD + e->json_size + 1;
        e->json = mfree(e->json);
}

static void on_evict(const char *key, void *value, void *userdata) {
        entry_release(userdata, value);
}

static void remove_id(TaskCache *c, const char *id) {
        TaskCacheEntry *e = lru_map_get(c->map, id);

        if (e) {
                entry_release(c, e);
                (void) lru_map_remove(c->map, id);
        }
}

int task_cache_new(TaskCache **ret, uint64_t max_bytes, usec_t max_age) {
        TaskCache *c;
        int r;

        *ret = NULL;
        if (max_bytes == 0)
                return 0;

        c = calloc(1, sizeof(TaskCache));
        if (!c)
                return -ENOMEM;
        r = lru_map_new(&c->map, MAX(max_bytes / ENTRY_MIN, (uint64_t) 1), sizeof(TaskCacheEntry), on_evict, c);
        if (r < 0) {
                free(c);
                return r;
        }
        c->max_bytes = max_bytes;
        c->max_age = max_age;
        c->seq = 1; /* ticket 0 means "do not store" */
        *ret = c;
        return 0;
}

TaskCache *task_cache_free(TaskCache *c) {
        if (!c)
                return NULL;
        task_cache_clear(c);
        lru_map_free(c->map);
        return mfree(c);
}

const TaskCacheEntry *task_cache_get(TaskCache *c, const char *id, usec_t now) {
        TaskCacheEntry *e;

        if (!c)
                return NULL;
        e = lru_map_get(c->map, id);
        if (e && now >= e->stored_at + c->max_age) {
                remove_id(c, id);
                e = NULL;
        }
        if (!e) {
                c->misses++;
                return NULL;
        }
        c->hits++;
        return e;
}

uint64_t task_cache_ticket(TaskCache *c) {
        return c ? c->seq : 0;
}

int task_cache_put(TaskCache *c, uint64_t ticket, const Task *t, const char *json, size_t json_size, usec_t now) {
        TaskCacheEntry *e;
        char *copy;

        if (!c || ticket == 0 || ticket < c->cleared_at || ticket < c->stamps[uuid_hash(t->id) % STAMPS])
                return 0;
        if (c->max_age == 0 || ENTRY_OVERHEAD + json_size + 1 > c->max_bytes / 16)
                return 0;

        copy = malloc(json_size + 1);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, json, json_size);
        copy[json_size] = '\0';
        remove_id(c, t->id);
        e = lru_map_ensure(c->map, t->id, NULL); /* may evict the oldest (on_evict) */
        if (!e) {
                free(copy);
                return -errno;
        }
        *e = (TaskCacheEntry) {
                .status = t->status,
                .stored_at = now,
                .json_size = json_size,
                .json = copy,
        };
        memcpy(e->owner_id, t->owner_id, UUID_STRING_MAX);
        c->bytes += ENTRY_OVERHEAD + json_size + 1;

        while (c->bytes > c->max_bytes) {
                const char *oldest;

                e = lru_map_oldest(c->map, &oldest);
                if (!e)
                        break;
                entry_release(c, e);
                (void) lru_map_remove(c->map, oldest);
        }
        return 1;
}

void task_cache_forget(TaskCache *c, const char *id) {
        if (!c)
                return;
        /* Stamped past every ticket handed out so far: ticket < seq after the increment. */
        c->stamps[uuid_hash(id) % STAMPS] = ++c->seq;
        remove_id(c, id);
}

static bool clear_visit(const char *key, void *value, void *userdata) {
        entry_release(userdata, value);
        return true;
}

void task_cache_clear(TaskCache *c) {
        if (!c)
                return;
        c->cleared_at = ++c->seq;
        lru_map_visit(c->map, clear_visit, c);
}

void task_cache_stats(const TaskCache *c, TaskCacheStats *ret) {
        *ret = c ? (TaskCacheStats) {
                .hits = c->hits,
                .misses = c->misses,
                .entries = lru_map_size(c->map),
                .bytes = c->bytes,
        } : (TaskCacheStats) {};
}
