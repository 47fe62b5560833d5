/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"
#include "task-json.h"
#include "uuid-util.h"

/* Long-poll waiters of GET /api/tasks/{id}?wait=N, indexed by task id. The manager feeds
 * it the status changes that PostgreSQL announces (NOTIFY dtask_task_changed, from every
 * API instance, worker and the reaper), so a waiter learns of a change the moment it is
 * committed — nothing polls. After the LISTEN connection was re-established every waiter
 * is told to re-check, since notifications sent meanwhile are lost. A change this instance
 * made itself comes with the task's new row, so that its waiters need not ask again. */

typedef struct Waiters Waiters;
typedef struct Waiter Waiter;

/* Called when the task may have reached a terminal state (or must be re-checked); task is
 * its row after the change when the notifier has it, else NULL. The callback may free its
 * own waiter, but no other one. */
typedef void (*WaiterCallback)(Waiter *w, const Task *task, void *userdata);

int waiters_new(Waiters **ret);
/* All waiters must have been freed before. */
Waiters *waiters_free(Waiters *ws);
DEFINE_TRIVIAL_CLEANUP_FUNC(Waiters *, waiters_free);

int waiters_add(Waiters *ws, const char *id, WaiterCallback cb, void *userdata, Waiter **ret);
/* Unregisters and frees; accepts NULL; returns NULL. */
Waiter *waiter_free(Waiter *w);
DEFINE_TRIVIAL_CLEANUP_FUNC(Waiter *, waiter_free);

/* Wakes the waiters of one task (task: its row, or NULL) / of all tasks. */
void waiters_notify(Waiters *ws, const char *id, const Task *task);
void waiters_notify_all(Waiters *ws);
size_t waiters_count(const Waiters *ws);
