/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "macro.h"
#include "time-util.h"
#include "uuid-util.h"

/* One task's life on this worker, from its RabbitMQ message to its final report:
 *
 *   HELD: taken ahead (WORKER_LOOKAHEAD) while every slot is busy, not claimed; claimed the
 *      │  moment a slot frees, or handed back (reject, requeue) after 0.1 s
 *      ▼
 *   CLAIMING ──409/404──▶ ack, drop
 *      │ └──API unreachable/503──▶ REQUEUE_WAIT ──backoff──▶ reject(requeue)
 *      ▼ 200: PostgreSQL holds the claim; the message stays unacked, so that the
 *             broker's prefetch (concurrency + lookahead) keeps the next ones for idle workers
 *   RUNNING: the sandbox run, a heartbeat every lease/3
 *      │  heartbeat 409 ─▶ kill, report nothing (the task is no longer ours)
 *      │  "cancelled" event ─▶ kill, report nothing (the API has set Cancelled)
 *      │  "expired" event / own TTL timer ─▶ kill, report Expired (the fence decides)
 *      │  shutdown after the grace period ─▶ kill, release (back to Pending)
 *      │  the program exited: ack the message, the slot is free (the run's cleanup goes on)
 *      ▼ the run ended: ack the message unless done (also whenever a claimed job ends otherwise)
 *   REPORTING: complete (or release), retried with backoff while the API is unreachable,
 *      until the task's expiresAt + a margin; the heartbeat keeps the lease meanwhile
 *      ▼ 200 / 409 (fenced: the result of a stale attempt is refused) / deadline
 *   done: the manager frees the job
 *
 * Jobs are owned by the Manager (a list); a job tells the manager when it is done through
 * manager_job_done(), which frees it. */

typedef struct Manager Manager;
typedef struct Job Job;

typedef enum JobState {
        JOB_HELD,
        JOB_CLAIMING,
        JOB_REQUEUE_WAIT,
        JOB_RUNNING,
        JOB_REPORTING,
        JOB_DONE,
        _JOB_STATE_MAX,
} JobState;

const char *job_state_to_string(JobState s);

/* id: a task id (normalized); delivery_tag: the message to settle. */
int job_new(Manager *m, const char *id, uint64_t delivery_tag, Job **ret);
Job *job_free(Job *j);
DEFINE_TRIVIAL_CLEANUP_FUNC(Job *, job_free);

/* Sends the claim. < 0 only when the request could not even be queued (the caller then
 * requeues the message). */
int job_start(Job *j);
/* Keeps the message unclaimed until job_start(), at most `max`; then it goes back to the
 * queue and the manager hears of it (manager_hold_expired()). */
int job_hold(Job *j, usec_t max);
/* A held job's task came in another message: the first one is acked (dropped), the job goes on
 * with delivery_tag. */
void job_replace_delivery(Job *j, uint64_t delivery_tag);
/* Whether the job takes one of the WORKER_CONCURRENCY slots: claiming, waiting to requeue,
 * or running until its program has exited. */
bool job_takes_slot(const Job *j);

/* An event from the fanout exchange about this job's task: "cancelled" or "expired". */
void job_handle_event(Job *j, const char *event);
/* The event stream was interrupted: events may have been missed. Checks with a heartbeat
 * right away whether the task is still ours. */
void job_check_now(Job *j);
/* The worker is stopping: a message waiting to be requeued goes back now, a claim that
 * succeeds from now on is released at once. Running tasks go on (see job_kill_for_shutdown()). */
void job_begin_shutdown(Job *j);
/* The grace period is over: a running task is killed and released. */
void job_kill_for_shutdown(Job *j);

const char *job_id(const Job *j);
JobState job_state(const Job *j);
unsigned job_attempt(const Job *j); /* 0 before the claim */
bool job_is_running(const Job *j);

/* The manager's list. */
Job *job_next(const Job *j);
void job_link(Job **head, Job *j);
void job_unlink(Job **head, Job *j);

/* Replaces each invalid UTF-8 sequence and each NUL byte by U+FFFD and cuts the text at
 * max bytes (at a character boundary; *ret_cut tells). For reporting program output, which
 * may be any bytes, as JSON strings. */
int utf8_sanitize(const char *s, size_t n, size_t max, char **ret, bool *ret_cut);
