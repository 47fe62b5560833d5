/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "macro.h"

/* Separate from daemon-util: only the daemons that own the schema (dtask-keys, dtask-api)
 * link this and with it libpq; dtask-worker uses daemon-util and must not pull libpq in. */

/* Applies the schema migrations at start-up, retrying with backoff (1 s … 30 s) while the
 * database is unreachable, so that a daemon can serve /healthz and wait. done() runs once
 * the migrations are applied (error 0), or with error < 0 when retrying cannot help
 * (e.g. the migration directory does not exist; already logged). The first attempt runs
 * within migrator_new(); done() may run from within it. pg_migrate() blocks while it
 * runs: only at start-up, before the daemon serves anything else. */
typedef struct Migrator Migrator;
typedef void (*MigratorDone)(Migrator *m, int error, void *userdata);
int migrator_new(Migrator **ret, sd_event *e, const char *conninfo, const char *sql_dir, MigratorDone done,
                 void *userdata);
/* Tries again after the backoff: for owners that check more after the migrations (a pool probe). */
int migrator_retry(Migrator *m);
Migrator *migrator_free(Migrator *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Migrator *, migrator_free);
