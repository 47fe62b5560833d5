/* SPDX-License-Identifier: MIT */
#include "json-util.h"
#include "last-used.h"
#include "log.h"
#include "lru-map.h"

typedef struct Entry {
        usec_t last_write; /* CLOCK_MONOTONIC of the last write issued, 0: never */
        usec_t pending;    /* realtime of a use not written yet, 0: none */
} Entry;

struct LastUsed {
        sd_event *event;
        KeyStore *store;
        LruMap *keys;
        sd_event_source *timer;
        uint64_t n_statements;
        usec_t last_failure_log;
};

static void write_one(LastUsed *l, const char *id, usec_t when);

static void on_evict(const char *key, void *value, void *userdata) {
        LastUsed *l = userdata;
        Entry *e = value;

        if (e->pending > 0)
                write_one(l, key, e->pending);
}

int last_used_new(LastUsed **ret, sd_event *event, KeyStore *store) {
        _cleanup_(last_used_freep) LastUsed *l = NULL;
        int r;

        if (!ret || !event || !store)
                return -EINVAL;
        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        l->event = sd_event_ref(event);
        l->store = store;
        r = lru_map_new(&l->keys, LAST_USED_MAX_KEYS, sizeof(Entry), on_evict, l);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(l);
        return 0;
}

LastUsed *last_used_free(LastUsed *l) {
        if (!l)
                return NULL;
        sd_event_source_disable_unref(l->timer);
        lru_map_free(l->keys);
        sd_event_unref(l->event);
        return mfree(l);
}

static void on_written(int error, void *userdata) {
        LastUsed *l = userdata;
        usec_t now;

        if (error >= 0 || error == -ECANCELED || !l)
                return;
        /* Not worth more than one line a minute: validation itself keeps working. */
        now = now_usec(CLOCK_MONOTONIC);
        if (l->last_failure_log == 0 || now - l->last_failure_log >= 60 * USEC_PER_SEC) {
                l->last_failure_log = now;
                log_warning_errno(error, "Failed to record when API keys were last used: %m");
        }
}

static void issue(LastUsed *l, char *const *ids, const usec_t *times, size_t n) {
        int r;

        if (n == 0)
                return;
        r = key_store_touch(l->store, ids, times, n, on_written, l);
        if (r < 0)
                on_written(r, l);
        else
                l->n_statements++;
}

static void write_one(LastUsed *l, const char *id, usec_t when) {
        char *ids[] = { (char *) id, NULL };

        issue(l, ids, &when, 1);
}

typedef struct Flush {
        usec_t now;
        char **ids;
        usec_t *times;
        size_t n;
        usec_t next; /* earliest time another flush is due, 0: none */
        bool failed;
} Flush;

static bool flush_visit(const char *key, void *value, void *userdata) {
        Flush *f = userdata;
        Entry *e = value;

        if (e->pending == 0)
                /* Idle entries are dropped once their interval is over: they only matter while a key is busy. */
                return f->now - e->last_write >= LAST_USED_INTERVAL_USEC;

        if (f->now - e->last_write < LAST_USED_INTERVAL_USEC) {
                usec_t due = e->last_write + LAST_USED_INTERVAL_USEC;
                if (f->next == 0 || due < f->next)
                        f->next = due;
                return false;
        }

        f->ids[f->n] = strdup(key);
        if (!f->ids[f->n]) {
                f->failed = true;
                return false;
        }
        f->times[f->n] = e->pending;
        f->n++;
        e->pending = 0;
        e->last_write = f->now;
        return false;
}

static int arm(LastUsed *l, usec_t when);

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        LastUsed *l = userdata;
        size_t max = lru_map_size(l->keys);
        Flush f = { .now = now_usec(CLOCK_MONOTONIC) };

        f.ids = calloc(max + 1, sizeof(char *));
        f.times = calloc(max + 1, sizeof(usec_t));
        if (f.ids && f.times) {
                lru_map_visit(l->keys, flush_visit, &f);
                issue(l, f.ids, f.times, f.n);
        } else
                f.next = f.now + LAST_USED_INTERVAL_USEC; /* out of memory: try again later */
        if (f.failed && f.next == 0)
                f.next = f.now + LAST_USED_INTERVAL_USEC;
        strv_free(f.ids);
        free(f.times);

        if (f.next > 0)
                (void) arm(l, f.next);
        return 0;
}

static int arm(LastUsed *l, usec_t when) {
        int r;

        if (!l->timer) {
                r = sd_event_add_time(l->event, &l->timer, CLOCK_MONOTONIC, when, 50 * USEC_PER_MSEC, on_timer, l);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(l->timer, "last-used-flush");
                return sd_event_source_set_enabled(l->timer, SD_EVENT_ONESHOT);
        }
        if (sd_event_source_get_enabled(l->timer, NULL) > 0) {
                uint64_t t;

                if (sd_event_source_get_time(l->timer, &t) >= 0 && t <= when)
                        return 0;
        }
        r = sd_event_source_set_time(l->timer, when);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(l->timer, SD_EVENT_ONESHOT);
}

void last_used_record(LastUsed *l, const char *id, usec_t now_realtime) {
        usec_t now = now_usec(CLOCK_MONOTONIC);
        Entry *e;

        e = lru_map_ensure(l->keys, id, NULL);
        if (!e) {
                write_one(l, id, now_realtime); /* cannot remember it: write it */
                return;
        }
        if (e->last_write == 0 || now - e->last_write >= LAST_USED_INTERVAL_USEC) {
                e->last_write = now;
                e->pending = 0;
                write_one(l, id, now_realtime);
                return;
        }
        e->pending = MAX(e->pending, now_realtime);
        if (arm(l, e->last_write + LAST_USED_INTERVAL_USEC) < 0) {
                /* No timer: write it now rather than lose it. */
                e->pending = 0;
                e->last_write = now;
                write_one(l, id, now_realtime);
        }
}

void last_used_forget(LastUsed *l, const char *id) {
        if (l)
                (void) lru_map_remove(l->keys, id);
}

uint64_t last_used_n_statements(const LastUsed *l) {
        return l ? l->n_statements : 0;
}
