/* SPDX-License-Identifier: MIT */
#include <signal.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-login.h>

#include "daemon-util.h"
#include "job.h"
#include "log.h"
#include "manager.h"

#define CLAIM_BACKOFF_MIN_USEC (1 * USEC_PER_SEC)
#define CLAIM_BACKOFF_MAX_USEC (30 * USEC_PER_SEC)
/* After the stop grace period, how long killed tasks have to be released and results to be
 * delivered before the worker exits anyway. */
#define STOP_FINAL_USEC (15 * USEC_PER_SEC)
/* How long a message taken ahead (WORKER_LOOKAHEAD) waits for a slot before it goes back to
 * the queue, where an idle worker may take it. */
#define LOOKAHEAD_HOLD_USEC (100 * USEC_PER_MSEC)
#define INSTANCE_MAX 64
#define STATUS_MAX 512

static void manager_update_flow(Manager *m);

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* jobs first: they cancel their calls, kill their runs and requeue unsettled messages */
        while (m->jobs) {
                Job *j = m->jobs;

                job_unlink(&m->jobs, j);
                job_free(j);
        }
        m->n_jobs = 0;

        m->grace_timer = sd_event_source_disable_unref(m->grace_timer);
        m->exit_timer = sd_event_source_disable_unref(m->exit_timer);
        m->events = amqp_consumer_free(m->events);
        m->consumer = amqp_consumer_free(m->consumer);
        m->client = dtask_client_free(m->client);
        m->sandbox = sandbox_free(m->sandbox);

        free(m->instance);
        free(m->worker_name);
        free(m->api_url);
        config_free(m->config);
        sd_event_unref(m->event);
        return mfree(m);
}

/* ---- configuration ---------------------------------------------------------------------- */

static bool instance_is_valid(const char *s) {
        size_t n = strlen(s);

        if (n == 0 || n > INSTANCE_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (s[i] <= ' ' || s[i] >= 127 || s[i] == '/')
                        return false;
        return true;
}

/* $DTASK_WORKER_INSTANCE, else the instance of the dtask-worker@N.service unit we run in. */
static int find_instance(char **ret) {
        _cleanup_free_ char *unit = NULL;
        const char *e;
        size_t n;

        e = getenv("DTASK_WORKER_INSTANCE");
        if (!isempty(e)) {
                if (!instance_is_valid(e))
                        return log_error_errno(EINVAL,
                                               "Invalid DTASK_WORKER_INSTANCE=\"%s\": expected 1–%d printable "
                                               "characters without spaces or '/'.",
                                               e, INSTANCE_MAX);
                *ret = strdup(e);
                return *ret ? 0 : log_oom();
        }

        *ret = NULL;
        if (sd_pid_get_unit(0, &unit) < 0)
                return 0;
        if (!strneq(unit, "dtask-worker@", STRLEN("dtask-worker@")))
                return 0;
        n = strlen(unit);
        if (n <= STRLEN("dtask-worker@") + STRLEN(".service") || !streq(unit + n - STRLEN(".service"), ".service"))
                return 0;
        unit[n - STRLEN(".service")] = '\0';
        if (!instance_is_valid(unit + STRLEN("dtask-worker@")))
                return 0;
        *ret = strdup(unit + STRLEN("dtask-worker@"));
        return *ret ? 0 : log_oom();
}

static int manager_configure(Manager *m) {
        const Config *c = m->config;
        char host[256] = "";
        const char *s;
        int r;

        s = config_string(c, "LOG_LEVEL");
        if (log_set_max_level_from_string(s) < 0)
                return log_error_errno(EINVAL,
                                       "Invalid configuration: LOG_LEVEL (%s): unknown level \"%s\" (emerg…debug "
                                       "or 0…7).",
                                       config_source(c, "LOG_LEVEL"), s);

        if (!config_is_set(c, "API_KEY") || isempty(config_string(c, "API_KEY")))
                return log_error_errno(EINVAL,
                                       "Invalid configuration: API_KEY is not set. The worker needs an API key with "
                                       "the claim tasks:execute: set API_KEY in the configuration file or the "
                                       "environment, or pass the systemd credential API_KEY "
                                       "(LoadCredential=API_KEY:…).");

        m->api_url = strdup(config_string(c, "API_URL"));
        if (!m->api_url)
                return log_oom();

        m->concurrency = (unsigned) config_uint(c, "WORKER_CONCURRENCY");
        m->lookahead = (unsigned) config_uint(c, "WORKER_LOOKAHEAD");
        m->lease_duration = config_uint(c, "LEASE_DURATION");
        m->heartbeat_interval = MAX(m->lease_duration / 3, 100 * USEC_PER_MSEC);
        m->stop_grace = config_uint(c, "WORKER_STOP_GRACE");

        r = sandbox_settings_from_config(&m->sandbox_settings, c);
        if (r < 0)
                return log_error_errno(r, "Invalid configuration of the sandbox: %m");
        if (m->sandbox_settings.uid_min > m->sandbox_settings.uid_max)
                return log_error_errno(EINVAL,
                                       "Invalid configuration: SANDBOX_UID_MIN (%u, %s) is above SANDBOX_UID_MAX "
                                       "(%u, %s).",
                                       (unsigned) m->sandbox_settings.uid_min, config_source(c, "SANDBOX_UID_MIN"),
                                       (unsigned) m->sandbox_settings.uid_max, config_source(c, "SANDBOX_UID_MAX"));
        if ((uint64_t) m->sandbox_settings.uid_max - m->sandbox_settings.uid_min + 1 < m->concurrency)
                return log_error_errno(EINVAL,
                                       "Invalid configuration: WORKER_CONCURRENCY (%u, %s) needs as many sandbox "
                                       "UIDs, but SANDBOX_UID_MIN…SANDBOX_UID_MAX has only %u.",
                                       m->concurrency, config_source(c, "WORKER_CONCURRENCY"),
                                       (unsigned) (m->sandbox_settings.uid_max - m->sandbox_settings.uid_min + 1));

        r = find_instance(&m->instance);
        if (r < 0)
                return r;
        if (gethostname(host, sizeof host - 1) < 0 || isempty(host))
                strcpy(host, "localhost");
        if (m->instance)
                r = asprintf(&m->worker_name, "%s/%s", host, m->instance);
        else
                r = asprintf(&m->worker_name, "%s/pid-%d", host, (int) getpid());
        if (r < 0)
                return log_oom();
        /* the API takes at most 200 printable characters */
        if (strlen(m->worker_name) > 200)
                m->worker_name[200] = '\0';
        return 0;
}

int manager_new(Manager **ret, const ManagerOptions *o) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = calloc(1, sizeof(Manager));
        if (!m)
                return log_oom();
        m->expected_language = _LANGUAGE_INVALID;

        r = daemon_config_load(&m->config, o ? o->config_path : NULL);
        if (r < 0)
                return r;
        r = manager_configure(m);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

/* ---- status ----------------------------------------------------------------------------- */

void manager_count_outcome(Manager *m, int status) {
        switch (status) {
        case DTASK_STATUS_COMPLETED:
                m->n_completed++;
                break;
        case DTASK_STATUS_FAILED:
                m->n_failed++;
                break;
        case DTASK_STATUS_EXPIRED:
                m->n_expired++;
                break;
        default:
                m->n_other++;
        }
}

void manager_update_status(Manager *m) {
        char status[STATUS_MAX], *p = status;
        size_t left = sizeof status;
        unsigned n_running = 0, n_reporting = 0, n_held = 0;
        int k;

#define APPEND(...)                                                     \
        do {                                                            \
                k = snprintf(p, left, __VA_ARGS__);                     \
                if (k > 0 && (size_t) k < left) {                       \
                        p += k;                                         \
                        left -= (size_t) k;                             \
                }                                                       \
        } while (false)

        for (Job *j = m->jobs; j; j = job_next(j)) {
                if (job_state(j) == JOB_RUNNING)
                        n_running++;
                else if (job_state(j) == JOB_REPORTING)
                        n_reporting++;
                else if (job_state(j) == JOB_HELD)
                        n_held++;
        }

        if (m->stopping)
                APPEND("Stopping: ");
        if (!m->consumer_connected && !m->stopping)
                APPEND("Waiting for RabbitMQ%s%s. ", m->consumer_error < 0 ? ": " : "",
                       m->consumer_error < 0 ? strerror(-m->consumer_error) : "");
        if (m->claim_error < 0)
                APPEND("dtask-api unavailable (%s), retrying. ", strerror(-m->claim_error));

        if (n_running == 0 && n_reporting == 0)
                APPEND("%s", m->stopping ? "nothing running. " : "Idle. ");
        else {
                unsigned shown = 0;

                APPEND("Running ");
                for (Job *j = m->jobs; j; j = job_next(j)) {
                        if (job_state(j) != JOB_RUNNING)
                                continue;
                        if (shown++ >= 4) {
                                APPEND("… ");
                                break;
                        }
                        APPEND("%stask %s (attempt %u)", shown > 1 ? ", " : "", job_id(j), job_attempt(j));
                }
                if (n_running == 0)
                        APPEND("nothing");
                if (n_reporting > 0)
                        APPEND("; reporting %u result(s)", n_reporting);
                if (n_held > 0)
                        APPEND("; %u taken ahead", n_held);
                APPEND(". ");
        }
        APPEND("Done: %" PRIu64 " completed, %" PRIu64 " failed, %" PRIu64 " expired, %" PRIu64 " other.",
               m->n_completed, m->n_failed, m->n_expired, m->n_other);
        /* systemctl status shows which instance this is: dtask-worker@N. */
        if (m->worker_name)
                APPEND(" Worker %s.", m->worker_name);
#undef APPEND

        (void) sd_notifyf(false, "STATUS=%s", status);
        manager_update_flow(m);
}

/* ---- flow control ----------------------------------------------------------------------- */

static unsigned manager_slots_taken(Manager *m) {
        unsigned n = 0;

        for (Job *j = m->jobs; j; j = job_next(j))
                n += job_takes_slot(j);
        return n;
}

/* A message is acked when its program has exited (or its claim failed), so that the next
 * claim overlaps the sandbox's cleanup and the report. The prefetch is WORKER_CONCURRENCY +
 * WORKER_LOOKAHEAD: up to WORKER_LOOKAHEAD messages wait here, unclaimed, while every slot is
 * busy, and the next one is claimed the moment a program exits rather than a broker round
 * trip later. A message held for LOOKAHEAD_HOLD_USEC goes back to the queue for an idle
 * worker, and the consumer pauses until a slot frees, so that a long run does not keep
 * further messages here. The consumer pauses, too, while the worker stops. */
static void manager_update_flow(Manager *m) {
        int r;

        if (!m->consumer)
                return;

        if (m->held_back && manager_slots_taken(m) < m->concurrency)
                m->held_back = false;

        if (m->stopping || m->held_back) {
                if (!amqp_consumer_is_paused(m->consumer)) {
                        r = amqp_consumer_pause(m->consumer);
                        if (r < 0)
                                log_warning_errno(r, "Failed to pause consuming: %m");
                }
        } else if (amqp_consumer_is_paused(m->consumer)) {
                r = amqp_consumer_resume(m->consumer);
                if (r < 0)
                        log_warning_errno(r, "Failed to resume consuming: %m");
        }
}

usec_t manager_claim_outcome(Manager *m, int error) {
        usec_t delay = CLAIM_BACKOFF_MIN_USEC;

        if (error >= 0) {
                if (m->claim_failures > 0) {
                        log_notice("dtask-api at %s accepts claims again.", m->api_url);
                        m->claim_failures = 0;
                        m->claim_error = 0;
                        manager_update_status(m);
                }
                return 0;
        }

        m->claim_failures++;
        if (error != m->claim_error) {
                if (error == -EKEYREJECTED || error == -ENOKEY)
                        log_error("dtask-api at %s rejected the worker's API key (API_KEY): it is invalid, "
                                  "inactive or expired. Messages are requeued until this is fixed.",
                                  m->api_url);
                else if (error == -EPERM)
                        log_error("The worker's API key (API_KEY) lacks the claim tasks:execute. Messages are "
                                  "requeued until this is fixed.");
                else
                        log_warning_errno(error,
                                          "Cannot claim tasks at %s (%m); their messages are requeued after a "
                                          "delay.",
                                          m->api_url);
                m->claim_error = error;
                manager_update_status(m);
        }

        for (unsigned i = 1; i < m->claim_failures && delay < CLAIM_BACKOFF_MAX_USEC; i++)
                delay *= 2;
        return MIN(delay, CLAIM_BACKOFF_MAX_USEC);
}

/* ---- jobs ------------------------------------------------------------------------------- */

/* The job that holds the task: claiming it, waiting to requeue its message, or running it. A job
 * that is reporting (complete or release) does not count: its attempt may already have been taken
 * away — the lease lapsed while dtask-api was unreachable and dtask-reaper put the task back to
 * Pending and published it again, or the worker released it. A message that arrives then is the
 * task's only way back to a worker: it is claimed by a job of its own (a stale duplicate just
 * gets a 409 and is dropped), never dropped as a duplicate. Events are ignored while reporting. */
static Job *manager_find_job(Manager *m, const char *id) {
        for (Job *j = m->jobs; j; j = job_next(j))
                if (job_state(j) != JOB_REPORTING && streq(job_id(j), id))
                        return j;
        return NULL;
}

/* Claims held messages, oldest first, while slots are free. */
static void manager_start_held(Manager *m) {
        while (!m->stopping && manager_slots_taken(m) < m->concurrency) {
                Job *oldest = NULL;
                int r;

                for (Job *j = m->jobs; j; j = job_next(j))
                        if (job_state(j) == JOB_HELD)
                                oldest = j; /* the list is newest first */
                if (!oldest)
                        return;
                r = job_start(oldest);
                if (r < 0) {
                        log_error_errno(r, "Task %s: failed to start claiming it: %m", job_id(oldest));
                        manager_job_done(m, oldest); /* requeues the message */
                }
        }
}

unsigned manager_jobs_claiming(Manager *m) {
        unsigned n = 0;

        for (Job *j = m->jobs; j; j = job_next(j))
                n += job_state(j) == JOB_CLAIMING;
        return n;
}

void manager_slot_freed(Manager *m) {
        manager_start_held(m);
        manager_update_status(m);
}

void manager_hold_expired(Manager *m) {
        m->held_back = true;
}

void manager_job_done(Manager *m, Job *j) {
        job_unlink(&m->jobs, j);
        if (m->n_jobs > 0)
                m->n_jobs--;
        job_free(j);

        if (m->stopping && m->n_jobs == 0) {
                log_info("No tasks left; exiting.");
                (void) sd_event_exit(m->event, 0);
                return;
        }
        manager_start_held(m);
        manager_update_status(m);
}

/* A printable excerpt of a message body, for the log. */
static void body_excerpt(const void *body, size_t size, char *buf, size_t buf_size) {
        const unsigned char *b = body;
        size_t i, o = 0;

        /* room for one escape (4), "…" (3) and the NUL */
        for (i = 0; i < size && o + 8 <= buf_size; i++)
                if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\')
                        buf[o++] = (char) b[i];
                else
                        o += (size_t) snprintf(buf + o, buf_size - o, "\\x%02x", b[i]);
        strcpy(buf + o, i < size ? "…" : "");
}

static void on_delivery(AmqpConsumer *c, uint64_t tag, const void *body, size_t size, bool redelivered,
                        void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ char *id = NULL;
        _cleanup_(job_freep) Job *j = NULL;
        Job *known;
        bool busy;
        int r;

        r = amqp_body_to_task_id(body, size, &id);
        if (r < 0) {
                char excerpt[100];

                body_excerpt(body, size, excerpt, sizeof excerpt);
                log_warning("Dropping a message that is not a task id (%zu bytes: \"%s\").", size, excerpt);
                r = amqp_consumer_ack(c, tag);
                if (r < 0)
                        log_debug_errno(r, "Failed to ack the dropped message: %m");
                return;
        }

        if (m->stopping) {
                (void) amqp_consumer_reject(c, tag, true);
                return;
        }
        known = manager_find_job(m, id);
        if (known && job_state(known) == JOB_HELD) {
                /* The held message may be a delivery of a connection since lost, which the broker
                 * has requeued and now delivers again: keep the one that can still be settled. */
                log_debug("Task %s: a second message while its first is held; keeping the second.", id);
                job_replace_delivery(known, tag);
                return;
        }
        if (known) {
                /* a duplicate (published twice, or redelivered) of a task we are working on */
                log_info("Task %s is already being handled here; dropping a duplicate message.", id);
                (void) amqp_consumer_ack(c, tag);
                return;
        }

        log_debug("Message for task %s%s.", id, redelivered ? " (redelivered)" : "");
        r = job_new(m, id, tag, &j);
        if (r < 0) {
                log_oom();
                (void) amqp_consumer_reject(c, tag, true);
                return;
        }
        busy = manager_slots_taken(m) >= m->concurrency;
        job_link(&m->jobs, j);
        m->n_jobs++;
        r = busy ? job_hold(j, LOOKAHEAD_HOLD_USEC) : job_start(j);
        if (r < 0) {
                log_error_errno(r, "Task %s: failed to start claiming it: %m", id);
                job_unlink(&m->jobs, j);
                m->n_jobs--;
                return; /* job_free() requeues the message */
        }
        TAKE_PTR(j);
        manager_update_status(m);
}

static void on_event(AmqpConsumer *c, uint64_t tag, const void *body, size_t size, bool redelivered,
                     void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ char *event = NULL, *id = NULL;
        Job *j;
        int r;

        r = amqp_event_body_parse(body, size, &event, &id);
        if (r < 0) {
                log_debug_errno(r, "Ignoring a malformed event (%zu bytes): %m", size);
                return;
        }
        j = manager_find_job(m, id);
        if (!j) {
                log_debug("Event \"%s\" for task %s, which does not run here.", event, id);
                return;
        }
        job_handle_event(j, event);
}

/* ---- connection state --------------------------------------------------------------------- */

static void manager_check_ready(Manager *m) {
        if (m->ready || !m->consumer_connected || !m->events_connected)
                return;
        m->ready = true;
        /* tools/dev waits for this line */
        log_notice("Ready: worker %s consuming %s with prefetch %u, %u sandbox slot(s) on %s cgroups at %s, "
                   "runs started by %s, API %s.",
                   m->worker_name, strna(amqp_consumer_queue(m->consumer)), m->concurrency + m->lookahead,
                   sandbox_slots(m->sandbox), sandbox_cgroup_mode(m->sandbox), sandbox_cgroup_root(m->sandbox),
                   sandbox_stem_helper(m->sandbox) ?: "fork", m->api_url);
        (void) sd_notify(false, "READY=1");
        manager_update_status(m);
}

static void on_consumer_state(bool connected, int error, void *userdata) {
        Manager *m = userdata;

        m->consumer_connected = connected;
        if (connected) {
                if (m->consumer_error < 0)
                        log_notice("Connected to RabbitMQ again; consuming.");
                m->consumer_error = 0;
                manager_check_ready(m);
        } else if (error != m->consumer_error) {
                m->consumer_error = error ?: -ECONNRESET;
                log_warning_errno(m->consumer_error,
                                  "RabbitMQ is unreachable (%m); reconnecting. Running tasks go on and report "
                                  "through dtask-api.");
        }
        manager_update_status(m);
}

static void on_events_state(bool connected, int error, void *userdata) {
        Manager *m = userdata;

        m->events_connected = connected;
        if (connected) {
                m->events_error = 0;
                if (m->events_were_connected) {
                        /* cancel/expire events sent meanwhile are lost: ask the API */
                        log_info("Listening to task events again; checking %u task(s).", m->n_jobs);
                        for (Job *j = m->jobs; j; j = job_next(j))
                                job_check_now(j);
                }
                m->events_were_connected = true;
                manager_check_ready(m);
        } else if (error != m->events_error) {
                m->events_error = error ?: -ECONNRESET;
                log_debug_errno(m->events_error, "Event consumer disconnected: %m");
        }
}

/* ---- stopping ----------------------------------------------------------------------------- */

static void manager_kill_jobs(Manager *m) {
        m->killing = true;
        for (Job *j = m->jobs, *next; j; j = next) {
                next = job_next(j);
                job_kill_for_shutdown(j);
        }
}

static int on_grace_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        manager_kill_jobs(m);
        return 0;
}

static int on_exit_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        for (Job *j = m->jobs; j; j = job_next(j))
                log_warning("Task %s, attempt %u: still %s at exit; dtask-reaper reschedules it when its lease "
                            "lapses.",
                            job_id(j), job_attempt(j), job_state_to_string(job_state(j)));
        return sd_event_exit(m->event, 0);
}

static void manager_stop(Manager *m, const char *why) {
        int r;

        if (m->stopping) {
                if (!m->killing) {
                        log_notice("%s again: killing running tasks now.", why);
                        manager_kill_jobs(m);
                }
                return;
        }
        m->stopping = true;
        (void) sd_notify(false, "STOPPING=1");

        r = amqp_consumer_pause(m->consumer);
        if (r < 0)
                log_warning_errno(r, "Failed to stop consuming: %m");

        for (Job *j = m->jobs, *next; j; j = next) {
                next = job_next(j);
                job_begin_shutdown(j);
        }
        if (m->n_jobs == 0) {
                log_info("%s: stopping; no tasks running.", why);
                (void) sd_event_exit(m->event, 0);
                return;
        }

        log_info("%s: stopping; %u task(s) may finish within %.1f s, then they are killed and released.", why,
                 m->n_jobs, (double) m->stop_grace / USEC_PER_SEC);
        r = sd_event_add_time_relative(m->event, &m->grace_timer, CLOCK_MONOTONIC, m->stop_grace,
                                       10 * USEC_PER_MSEC, on_grace_timer, m);
        if (r >= 0)
                r = sd_event_add_time_relative(m->event, &m->exit_timer, CLOCK_MONOTONIC,
                                               m->stop_grace + STOP_FINAL_USEC, 10 * USEC_PER_MSEC, on_exit_timer,
                                               m);
        if (r < 0) {
                log_error_errno(r, "Failed to arm the stop timers: %m");
                manager_kill_jobs(m);
        }
        manager_update_status(m);
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        manager_stop(userdata, si->ssi_signo == SIGINT ? "Interrupted" : "Received SIGTERM");
        return 0;
}

/* ---- start ------------------------------------------------------------------------------ */

int manager_start(Manager *m) {
        _cleanup_free_ char *error = NULL, *amqp_redacted = NULL;
        const Config *c = m->config;
        AmqpSettings settings;
        _cleanup_free_ char *connection_name = NULL;
        usec_t heartbeat;
        int r;

        r = daemon_event_new(&m->event, on_signal, m);
        if (r < 0)
                return r;

        r = sandbox_new(&m->sandbox_settings, &m->sandbox, &error);
        if (r < 0)
                return log_error_errno(r,
                                       "Cannot set up the sandbox: %s (see the SANDBOX_*, PYTHON_PATH, "
                                       "CSHARP_TOOLCHAIN, MCS_PATH, MONO_PATH, DOTNET_PATH and CACHE_DIRECTORY "
                                       "keys).",
                                       error ?: strerror(-r));

        r = dtask_client_new(&m->client, m->event, m->api_url, config_string(c, "API_KEY"));
        if (r == -EINVAL || r == -EPROTONOSUPPORT)
                return log_error_errno(r, "Invalid configuration: API_URL (%s): \"%s\" is not %s.",
                                       config_source(c, "API_URL"), m->api_url,
                                       r == -EINVAL ? "a valid http://HOST[:PORT] URL" : "supported (only http://)");
        if (r == -EADDRNOTAVAIL)
                return log_error_errno(r, "API_URL (%s): the host of \"%s\" does not resolve.",
                                       config_source(c, "API_URL"), m->api_url);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the client of dtask-api at %s: %m", m->api_url);
        /* a heartbeat that hangs must not outlive the lease */
        (void) dtask_client_set_timeout(m->client, CLAMP(m->lease_duration / 2, 5 * USEC_PER_SEC, 30 * USEC_PER_SEC));

        if (asprintf(&connection_name, "dtask-worker %s", m->worker_name) < 0)
                return log_oom();
        heartbeat = config_uint(c, "AMQP_HEARTBEAT");
        settings = (AmqpSettings) {
                .url = config_string(c, "AMQP_URL"),
                .exchange = config_string(c, "AMQP_EXCHANGE"),
                .queue = config_string(c, "AMQP_QUEUE"),
                .routing_key = config_string(c, "AMQP_ROUTING_KEY"),
                .events_exchange = config_string(c, "AMQP_EVENTS_EXCHANGE"),
                .connection_name = connection_name,
                .heartbeat_sec = heartbeat > 0 ? (unsigned) MAX(heartbeat / USEC_PER_SEC, 1u) : 0,
        };
        (void) amqp_url_redact(settings.url, &amqp_redacted);

        r = amqp_consumer_new(&m->consumer, m->event, &settings, NULL,
                              (uint16_t) MIN(m->concurrency + m->lookahead, 65535u),
                              on_delivery, m);
        if (r >= 0) {
                amqp_consumer_set_state_callback(m->consumer, on_consumer_state, m);
                r = amqp_consumer_new_fanout(&m->events, m->event, &settings, NULL, on_event, m);
        }
        if (r == -EINVAL || r == -EPROTONOSUPPORT)
                return log_error_errno(r, "Invalid configuration: AMQP_URL (%s): \"%s\" is not %s.",
                                       config_source(c, "AMQP_URL"), strna(amqp_redacted),
                                       r == -EINVAL ? "a valid amqp:// URL" : "supported (amqps:// is not)");
        if (r < 0)
                return log_error_errno(r, "Failed to set up consuming from RabbitMQ: %m");
        amqp_consumer_set_state_callback(m->events, on_events_state, m);

        log_info("Starting worker %s: concurrency %u, lookahead %u, heartbeat every %.1f s, stop grace %.1f s, "
                 "RabbitMQ %s, API %s.",
                 m->worker_name, m->concurrency, m->lookahead, (double) m->heartbeat_interval / USEC_PER_SEC,
                 (double) m->stop_grace / USEC_PER_SEC, strna(amqp_redacted), m->api_url);
        (void) sd_notify(false, "STATUS=Connecting to RabbitMQ.");
        return 0;
}

int manager_run(Manager *m) {
        int r;

        r = sd_event_loop(m->event);
        (void) sd_notify(false, "STOPPING=1");
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");
        return 0;
}
