/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "config.h"
#include "macro.h"
#include "time-util.h"

/* The TTL authority. One pass, in PostgreSQL statements that are safe against
 * concurrent passes (other reapers, API instances, workers):
 *   1. expire Pending/InProgress tasks whose expiresAt passed, and tell running
 *      workers through the events exchange;
 *   2. rescue InProgress tasks whose worker lease lapsed: back to Pending (and
 *      re-published at once) while attempts remain, else Failed/worker_lost;
 *   3. re-publish Pending tasks whose message never got a broker confirm, or whose
 *      message looks lost (published long ago, never claimed);
 *   4. purge terminal tasks past RETENTION (when set) and old idempotency keys. */

typedef struct ReaperStats {
        unsigned expired;
        unsigned rescued;
        unsigned lost;
        unsigned republished;
        unsigned publish_failed;
        unsigned purged;
} ReaperStats;

typedef struct Reaper Reaper;

/* Called when a pass ended: error < 0 when the database could not be used. */
typedef void (*ReaperDoneCallback)(Reaper *r, int error, const ReaperStats *stats, void *userdata);

int reaper_new(Reaper **ret, sd_event *e, const Config *config);
Reaper *reaper_free(Reaper *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(Reaper *, reaper_free);

/* Starts one pass; -EBUSY while one runs. */
int reaper_run(Reaper *r, ReaperDoneCallback cb, void *userdata);
