/* SPDX-License-Identifier: MIT */
#include "waiters.h"

#define WAITERS_BUCKETS 256U

struct Waiter {
        Waiters *waiters;
        char id[UUID_STRING_MAX];
        size_t bucket;
        WaiterCallback callback;
        void *userdata;
        Waiter *prev, *next;
};

struct Waiters {
        Waiter *buckets[WAITERS_BUCKETS];
        size_t n;
        /* The waiter to visit next while notifying: lets a callback free its own waiter. */
        Waiter *cursor;
};

static size_t bucket_of(const char *id) {
        return uuid_hash(id) % WAITERS_BUCKETS;
}

int waiters_new(Waiters **ret) {
        Waiters *ws = calloc(1, sizeof(Waiters));

        if (!ws)
                return -ENOMEM;
        *ret = ws;
        return 0;
}

Waiters *waiters_free(Waiters *ws) {
        if (!ws)
                return NULL;
        /* Owners free their waiters first; detach any left so that they do not point here. */
        for (size_t b = 0; b < WAITERS_BUCKETS; b++)
                for (Waiter *w = ws->buckets[b]; w; w = w->next)
                        w->waiters = NULL;
        return mfree(ws);
}

int waiters_add(Waiters *ws, const char *id, WaiterCallback cb, void *userdata, Waiter **ret) {
        Waiter *w;

        w = calloc(1, sizeof(Waiter));
        if (!w)
                return -ENOMEM;
        if (uuid_normalize(id, w->id) < 0) {
                free(w);
                return -EINVAL;
        }
        w->waiters = ws;
        w->bucket = bucket_of(w->id);
        w->callback = cb;
        w->userdata = userdata;
        w->next = ws->buckets[w->bucket];
        if (w->next)
                w->next->prev = w;
        ws->buckets[w->bucket] = w;
        ws->n++;
        *ret = w;
        return 0;
}

Waiter *waiter_free(Waiter *w) {
        Waiters *ws;

        if (!w)
                return NULL;
        ws = w->waiters;
        if (ws) {
                if (ws->cursor == w)
                        ws->cursor = w->next;
                if (w->prev)
                        w->prev->next = w->next;
                else
                        ws->buckets[w->bucket] = w->next;
                if (w->next)
                        w->next->prev = w->prev;
                ws->n--;
        }
        return mfree(w);
}

static void notify_bucket(Waiters *ws, size_t b, const char *id, const Task *task) {
        ws->cursor = ws->buckets[b];
        while (ws->cursor) {
                Waiter *w = ws->cursor;

                ws->cursor = w->next;
                if (!id || streq(w->id, id))
                        w->callback(w, task, w->userdata);
        }
}

void waiters_notify(Waiters *ws, const char *id, const Task *task) {
        char normalized[UUID_STRING_MAX];

        if (!ws || uuid_normalize(id, normalized) < 0)
                return;
        notify_bucket(ws, bucket_of(normalized), normalized, task);
}

void waiters_notify_all(Waiters *ws) {
        if (!ws)
                return;
        for (size_t b = 0; b < WAITERS_BUCKETS; b++)
                notify_bucket(ws, b, NULL, NULL);
}

size_t waiters_count(const Waiters *ws) {
        return ws ? ws->n : 0;
}
