/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "amqp.h"
#include "config.h"
#include "dtask.h"
#include "macro.h"
#include "sandbox.h"
#include "time-util.h"

/* The dtask-worker daemon: one sd-event loop that consumes task ids from RabbitMQ
 * (task_queue, manual acks, prefetch = WORKER_CONCURRENCY + WORKER_LOOKAHEAD), listens to the
 * events fanout (cancel/expire), and runs one Job per task (job.h) through libdtask and the
 * sandbox. */

typedef struct Job Job;

typedef struct ManagerOptions {
        const char *config_path; /* NULL: the default file */
} ManagerOptions;

typedef struct Manager {
        sd_event *event;
        Config *config;

        char *instance;    /* "1" of dtask-worker@1; NULL when not known */
        char *worker_name; /* "<host>/<instance>", sent with claims and shown by the API */
        char *api_url;

        /* settings */
        unsigned concurrency;
        unsigned lookahead; /* messages taken ahead while every slot is busy */
        usec_t lease_duration;
        usec_t heartbeat_interval; /* lease / 3 */
        usec_t stop_grace;
        SandboxSettings sandbox_settings;

        Sandbox *sandbox;
        Language expected_language; /* of the last task claimed: the next one's sandbox is set up
                                     * ahead for it (sandbox_warm()) */
        DtaskClient *client;
        AmqpConsumer *consumer; /* task_queue */
        AmqpConsumer *events;   /* fanout: cancelled / expired */
        int consumer_error, events_error; /* last connection error, for logging changes only */
        bool consumer_connected, events_connected, events_were_connected;

        Job *jobs;
        unsigned n_jobs;
        bool ready;
        bool held_back; /* a held message went back: none are taken ahead until a slot frees */

        /* claims that failed because the API was unavailable, in a row: the backoff */
        unsigned claim_failures;
        int claim_error;

        bool stopping, killing;
        sd_event_source *grace_timer, *exit_timer;

        uint64_t n_completed, n_failed, n_expired, n_other; /* for STATUS= */
} Manager;

int manager_new(Manager **ret, const ManagerOptions *options);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

/* Sets up the sandbox, the API client and the consumers; READY=1 follows once consuming. */
int manager_start(Manager *m);
int manager_run(Manager *m);

/* For jobs. */
void manager_job_done(Manager *m, Job *j);
void manager_update_status(Manager *m);
/* A claim failed because the API was not available (error < 0) or went through (0): returns
 * how long to hold the message before requeueing it. */
usec_t manager_claim_outcome(Manager *m, int error);
/* Counts a final outcome for STATUS= (DtaskStatus). */
void manager_count_outcome(Manager *m, int status);
/* Jobs whose claim is on its way: each will need a sandbox slot. */
unsigned manager_jobs_claiming(Manager *m);
/* A job gave up its slot (its program exited): a held message is claimed now. */
void manager_slot_freed(Manager *m);
/* A held message went back to the queue because every slot stayed busy: no more messages are
 * taken ahead until a slot frees. */
void manager_hold_expired(Manager *m);
