/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "macro.h"
#include "store.h"

/* Coalesces the lastUsedAt writes of validations: the first use of a key is written at
 * once, further uses within LAST_USED_INTERVAL are remembered and written together by
 * a timer (one UPDATE for all pending keys). So each key costs at most one write per
 * interval, however often it is validated. The table of keys is bounded; an entry
 * evicted with a pending time is written at once. Pending times may be lost when the
 * daemon stops (at most one interval's worth). */

#define LAST_USED_INTERVAL_USEC (1 * USEC_PER_SEC)
#define LAST_USED_MAX_KEYS 16384

typedef struct LastUsed LastUsed;

int last_used_new(LastUsed **ret, sd_event *event, KeyStore *store);
LastUsed *last_used_free(LastUsed *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(LastUsed *, last_used_free);

/* Key id was used (validated) at now_realtime. */
void last_used_record(LastUsed *l, const char *id, usec_t now_realtime);
/* Forgets a deleted key. */
void last_used_forget(LastUsed *l, const char *id);

/* Counters for tests and logs: statements issued and key times written. */
uint64_t last_used_n_statements(const LastUsed *l);
