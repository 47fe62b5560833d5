/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"
#include "task-json.h"
#include "time-util.h"
#include "uuid-util.h"

/* TaskCache: the JSON of recently read tasks, so that GET /api/tasks/{id} of a task that did
 * not change answers without the database. An LruMap by task id, bounded in bytes (least
 * recently used entries go first) and in age. It is only as fresh as what it is told: the
 * owner forgets a task when it changes it and when PostgreSQL announces a change (every
 * visible change is announced, sql/0005), and clears everything when it may have missed
 * announcements.
 *
 * A read races with the changes announced while it is in flight: ask for a ticket before
 * sending the query and hand it to task_cache_put() with the answer, which is dropped when
 * the task was forgotten (or everything cleared) since the ticket was taken.
 *
 * Every function accepts a NULL cache (disabled): nothing is stored, nothing found. */

typedef struct TaskCache TaskCache;

typedef struct TaskCacheEntry {
        char owner_id[UUID_STRING_MAX];
        TaskStatus status;
        usec_t stored_at;      /* CLOCK_MONOTONIC */
        size_t json_size;
        char *json;            /* the task's JSON text, NUL-terminated */
} TaskCacheEntry;

typedef struct TaskCacheStats {
        uint64_t hits, misses;
        uint64_t entries, bytes;
} TaskCacheStats;

/* max_bytes 0: no cache (*ret is NULL). */
int task_cache_new(TaskCache **ret, uint64_t max_bytes, usec_t max_age);
TaskCache *task_cache_free(TaskCache *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(TaskCache *, task_cache_free);

/* The entry of id (normalized), or NULL (counted as a miss) when there is none or it is older
 * than max_age. The entry is valid until the next call that changes the cache. */
const TaskCacheEntry *task_cache_get(TaskCache *c, const char *id, usec_t now);

/* 0 when c is NULL: such a ticket stores nothing. */
uint64_t task_cache_ticket(TaskCache *c);

/* Stores (or replaces) the JSON text of task t read with ticket, unless t was forgotten since
 * then or the entry would take more than a sixteenth of the cache. The text is copied.
 * 1 when stored, 0 when not, -ENOMEM. */
int task_cache_put(TaskCache *c, uint64_t ticket, const Task *t, const char *json, size_t json_size, usec_t now);

/* id changed (or may have): its entry goes, and reads in flight for it will not be stored. */
void task_cache_forget(TaskCache *c, const char *id);
/* Anything may have changed. */
void task_cache_clear(TaskCache *c);

void task_cache_stats(const TaskCache *c, TaskCacheStats *ret);
