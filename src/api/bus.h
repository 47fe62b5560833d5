/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"
#include "task-json.h"

typedef struct Manager Manager;
typedef struct ApiBus ApiBus;

/* org.dtask.Tasks1 on the system bus (object /org/dtask/Tasks1, interface
 * org.dtask.Tasks1.Manager): CreateTask, GetTask, ListTasks, RetryTask, CancelTask,
 * UpdateTask, the TaskChanged(s id, i status) signal and per-status count properties.
 * Tasks are exchanged as the JSON of the REST API. Reading is open to every local user
 * the bus policy lets in; mutating methods need root or group dtask-admin. Callers act on
 * all tenants' tasks; tasks created here belong to API_SYSTEM_OWNER_ID.
 *
 * When the bus cannot be reached, or the name is taken, a warning is logged and the
 * connection is retried every few seconds; REST keeps working meanwhile. */
#define API_BUS_RETRY_USEC (5 * USEC_PER_SEC)

int api_bus_new(ApiBus **ret, Manager *m);
ApiBus *api_bus_free(ApiBus *b);
DEFINE_TRIVIAL_CLEANUP_FUNC(ApiBus *, api_bus_free);

/* A task's status changed (from PostgreSQL NOTIFY): emits TaskChanged and schedules a
 * refresh of the count properties. */
void api_bus_task_changed(ApiBus *b, const char *id, TaskStatus status);
/* Re-reads the counts (e.g. after the LISTEN connection was re-established). */
void api_bus_refresh_counts(ApiBus *b);
