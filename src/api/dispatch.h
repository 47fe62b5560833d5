/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "macro.h"

/* Dispatch of tasks to the workers (SPEC §6): the task id, as a JSON string, published
 * persistently with publisher confirms to the task exchange; once the broker confirmed,
 * the task's row leaves the outbox (task_outbox). PostgreSQL stays the source of truth: when
 * the broker is unreachable or does not confirm, the row stays there and dtask-reaper
 * publishes the task again later. Cancellations are announced on the fanout
 * events exchange, so running workers learn of them at once. */

typedef struct Dispatch Dispatch;
typedef struct Config Config;
typedef struct TaskStore TaskStore;
typedef struct Metrics Metrics;

int dispatch_new(Dispatch **ret, sd_event *event, const Config *config, TaskStore *store, Metrics *metrics);
Dispatch *dispatch_free(Dispatch *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(Dispatch *, dispatch_free);

bool dispatch_is_connected(Dispatch *d);

/* Publishes the task of run retry_count; the outcome is logged and counted, not returned. */
void dispatch_task(Dispatch *d, const char *id, unsigned retry_count);
/* Announces an event ("cancelled") of a task on the events exchange, best effort. */
void dispatch_event(Dispatch *d, const char *event, const char *id);
