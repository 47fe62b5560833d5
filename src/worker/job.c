/* SPDX-License-Identifier: MIT */
#include <stdio.h>

#include "job.h"
#include "log.h"
#include "manager.h"

/* Timing of the reports (complete/release) while dtask-api cannot be reached. */
#define REPORT_RETRY_MIN_USEC (250 * USEC_PER_MSEC)
#define REPORT_RETRY_MAX_USEC (10 * USEC_PER_SEC)
/* A result is kept and retried until the task's expiresAt plus this (after expiresAt the reaper
 * expires the task anyway, so the report would be refused), and at least this long. */
#define REPORT_MARGIN_USEC (60 * USEC_PER_SEC)
/* A release is retried this long (it is only sent while stopping). */
#define RELEASE_DEADLINE_USEC (10 * USEC_PER_SEC)
/* A failed heartbeat is tried again after this (or the interval, when shorter). */
#define HEARTBEAT_RETRY_USEC (2 * USEC_PER_SEC)
#define TIMER_ACCURACY_USEC (10 * USEC_PER_MSEC)

#define EXPIRED_MESSAGE "Task expired due to TTL"

struct Job {
        Manager *manager;
        Job *prev, *next;

        char id[UUID_STRING_MAX];
        uint64_t delivery_tag;
        bool settled; /* the message was acked or rejected */
        bool slot_freed; /* the program exited while another slot was ready: the job takes none */
        bool claimed; /* the claim is durable: the message is acked, never requeued */
        JobState state;

        /* from the claim */
        unsigned attempt;
        DtaskLanguage language;
        char *code;
        char *input;
        usec_t expires_at; /* CLOCK_REALTIME; 0: none */

        DtaskCall *call;           /* the claim, complete or release in flight */
        DtaskCall *heartbeat_call; /* at most one heartbeat in flight */
        sd_event_source *heartbeat_timer;
        sd_event_source *retry_timer; /* requeue after backoff; report retries */
        sd_event_source *hold_timer;  /* HELD: hand the message back */
        unsigned heartbeat_failures;

        SandboxRun *run;
        const char *pending_event; /* "cancelled"/"expired" heard while claiming */
        bool fenced;               /* the API said this attempt is no longer current */
        bool stopping;             /* the worker is stopping: release instead of running */

        /* the report */
        bool release;  /* release (back to Pending) instead of complete */
        bool degraded; /* the API refused the report's content; a plain failure was sent instead */
        DtaskStatus status;
        char *result;
        char *error_message;
        const char *verdict;
        bool has_exit_code;
        int exit_code;
        bool output_truncated;
        usec_t duration;
        unsigned report_tries;
        usec_t report_deadline; /* CLOCK_MONOTONIC */
        int report_error;
};

static const char *const job_state_table[_JOB_STATE_MAX] = {
        [JOB_HELD] = "held",
        [JOB_CLAIMING] = "claiming",
        [JOB_REQUEUE_WAIT] = "requeue-wait",
        [JOB_RUNNING] = "running",
        [JOB_REPORTING] = "reporting",
        [JOB_DONE] = "done",
};

const char *job_state_to_string(JobState s) {
        return s >= 0 && s < _JOB_STATE_MAX ? job_state_table[s] : NULL;
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 character at s (RFC 3629: no overlongs, no surrogates, at most
 * U+10FFFF), 0 when the bytes there are not one. */
static size_t utf8_char_length(const unsigned char *s, size_t n) {
        unsigned char c = s[0];
        unsigned char lo = 0x80, hi = 0xBF;
        size_t len;

        if (c < 0x80)
                return 1;
        if (c >= 0xC2 && c <= 0xDF)
                len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
                len = 3;
                if (c == 0xE0)
                        lo = 0xA0;
                else if (c == 0xED)
                        hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
                len = 4;
                if (c == 0xF0)
                        lo = 0x90;
                else if (c == 0xF4)
                        hi = 0x8F;
        } else
                return 0;

        if (n < len || s[1] < lo || s[1] > hi)
                return 0;
        for (size_t i = 2; i < len; i++)
                if (s[i] < 0x80 || s[i] > 0xBF)
                        return 0;
        return len;
}

int utf8_sanitize(const char *s, size_t n, size_t max, char **ret, bool *ret_cut) {
        static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */
        const unsigned char *u = (const unsigned char *) s;
        _cleanup_free_ char *buf = NULL;
        size_t i = 0, o = 0, allocated;
        bool cut = false;

        if (!s)
                n = 0;
        /* each input byte becomes at most 3 output bytes */
        allocated = (n > SIZE_MAX / 3 ? SIZE_MAX : n * 3);
        allocated = MIN(allocated, max) + 1;
        buf = malloc(allocated);
        if (!buf)
                return -ENOMEM;

        while (i < n) {
                size_t len = u[i] == 0 ? 0 : utf8_char_length(u + i, n - i);
                const char *src = len > 0 ? s + i : replacement;
                size_t k = len > 0 ? len : sizeof(replacement) - 1;

                if (o + k > max) {
                        cut = true;
                        break;
                }
                memcpy(buf + o, src, k);
                o += k;
                i += len > 0 ? len : 1;
        }
        buf[o] = '\0';

        *ret = TAKE_PTR(buf);
        if (ret_cut)
                *ret_cut = cut;
        return 0;
}

/* ---- the object ------------------------------------------------------------------------- */

int job_new(Manager *m, const char *id, uint64_t delivery_tag, Job **ret) {
        Job *j;

        j = calloc(1, sizeof(Job));
        if (!j)
                return -ENOMEM;
        j->manager = m;
        if (uuid_normalize(id, j->id) < 0) {
                free(j);
                return -EINVAL;
        }
        j->delivery_tag = delivery_tag;
        j->state = JOB_CLAIMING;
        j->language = DTASK_LANGUAGE_UNKNOWN;
        *ret = j;
        return 0;
}

static void job_settle(Job *j, bool ack) {
        Manager *m = j->manager;
        int r;

        if (j->settled)
                return;
        j->settled = true;
        r = ack ? amqp_consumer_ack(m->consumer, j->delivery_tag)
                : amqp_consumer_reject(m->consumer, j->delivery_tag, /* requeue= */ true);
        if (r < 0)
                /* -ESTALE/-ECONNRESET: the connection it came on is gone, the broker redelivers it;
                 * the redelivered message is then claimed in vain (409) and dropped. */
                log_debug_errno(r, "Could not %s the message of task %s: %m", ack ? "ack" : "requeue", j->id);
}

Job *job_free(Job *j) {
        if (!j)
                return NULL;

        dtask_call_cancel(j->call);
        dtask_call_cancel(j->heartbeat_call);
        j->heartbeat_timer = sd_event_source_disable_unref(j->heartbeat_timer);
        j->retry_timer = sd_event_source_disable_unref(j->retry_timer);
        j->hold_timer = sd_event_source_disable_unref(j->hold_timer);
        /* kills a run still going, synchronously */
        j->run = sandbox_run_free(j->run);
        /* a message never settled goes back to the queue, unless its task was claimed */
        if (j->manager && j->manager->consumer)
                job_settle(j, j->claimed);

        free(j->code);
        free(j->input);
        free(j->result);
        free(j->error_message);
        return mfree(j);
}

const char *job_id(const Job *j) {
        return j->id;
}

JobState job_state(const Job *j) {
        return j->state;
}

unsigned job_attempt(const Job *j) {
        return j->attempt;
}

bool job_is_running(const Job *j) {
        return j->state == JOB_RUNNING;
}

bool job_takes_slot(const Job *j) {
        return j->state == JOB_CLAIMING || j->state == JOB_REQUEUE_WAIT || (j->state == JOB_RUNNING && !j->slot_freed);
}

Job *job_next(const Job *j) {
        return j->next;
}

void job_link(Job **head, Job *j) {
        j->prev = NULL;
        j->next = *head;
        if (*head)
                (*head)->prev = j;
        *head = j;
}

void job_unlink(Job **head, Job *j) {
        if (j->prev)
                j->prev->next = j->next;
        else if (*head == j)
                *head = j->next;
        if (j->next)
                j->next->prev = j->prev;
        j->prev = j->next = NULL;
}

/* The last thing a callback does: the manager frees the job. */
static void job_finish(Job *j) {
        j->state = JOB_DONE;
        manager_job_done(j->manager, j);
}

static int job_arm(Job *j, sd_event_source **s, usec_t delay, sd_event_time_handler_t handler) {
        int r;

        if (*s) {
                r = sd_event_source_set_time_relative(*s, delay);
                if (r >= 0)
                        r = sd_event_source_set_enabled(*s, SD_EVENT_ONESHOT);
        } else
                r = sd_event_add_time_relative(j->manager->event, s, CLOCK_MONOTONIC, delay, TIMER_ACCURACY_USEC,
                                               handler, j);
        if (r < 0)
                log_warning_errno(r, "Task %s: failed to arm a timer: %m", j->id);
        return r;
}

static const char *reply_detail(const DtaskReply *reply, int error) {
        if (reply && reply->problem_detail)
                return reply->problem_detail;
        return strerror(-error);
}

static bool error_is_fenced(int error) {
        /* 409 on heartbeat/complete/release, or the task is gone altogether */
        return error == -ESTALE || error == -ENOENT;
}

static bool reply_is_success(int error, const DtaskReply *reply) {
        /* a 2xx whose body libdtask could not parse still means the API took it */
        return error >= 0 || (reply && reply->http_status >= 200 && reply->http_status < 300);
}

/* ---- heartbeat -------------------------------------------------------------------------- */

static int on_heartbeat_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void heartbeat_schedule(Job *j, usec_t delay) {
        (void) job_arm(j, &j->heartbeat_timer, delay, on_heartbeat_timer);
}

static void heartbeat_stop(Job *j) {
        j->heartbeat_timer = sd_event_source_disable_unref(j->heartbeat_timer);
        dtask_call_cancel(j->heartbeat_call);
        j->heartbeat_call = NULL;
}

static void on_heartbeat(DtaskClient *c, int error, const DtaskReply *reply, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;

        j->heartbeat_call = NULL;

        if (error_is_fenced(error)) {
                if (j->state == JOB_REPORTING && !j->release) {
                        /* a complete in flight may have just been applied (the task is no longer
                         * InProgress): the complete's own answer decides */
                        heartbeat_stop(j);
                        return;
                }
                j->fenced = true;
                heartbeat_stop(j);
                if (j->state == JOB_RUNNING && j->run) {
                        log_notice("Task %s, attempt %u: the API says this attempt is no longer current (%s); "
                                   "killing the run.",
                                   j->id, j->attempt, reply_detail(reply, error));
                        (void) sandbox_run_kill(j->run, SANDBOX_END_CANCELLED);
                }
                return;
        }

        if (error < 0 && !reply_is_success(error, reply)) {
                if (j->heartbeat_failures++ == 0)
                        log_warning_errno(error, "Task %s, attempt %u: heartbeat failed (%s); retrying.", j->id,
                                          j->attempt, reply_detail(reply, error));
                heartbeat_schedule(j, MIN(m->heartbeat_interval, HEARTBEAT_RETRY_USEC));
                return;
        }

        if (j->heartbeat_failures > 0)
                log_notice("Task %s, attempt %u: heartbeat accepted again after %u failure(s).", j->id, j->attempt,
                           j->heartbeat_failures);
        j->heartbeat_failures = 0;
        heartbeat_schedule(j, m->heartbeat_interval);
}

static void heartbeat_send(Job *j) {
        Manager *m = j->manager;
        int r;

        if (j->heartbeat_call || j->fenced)
                return;
        r = dtask_heartbeat(m->client, j->id, j->attempt, on_heartbeat, j, &j->heartbeat_call);
        if (r < 0) {
                j->heartbeat_call = NULL;
                log_debug_errno(r, "Task %s: could not queue a heartbeat: %m", j->id);
                heartbeat_schedule(j, MIN(m->heartbeat_interval, HEARTBEAT_RETRY_USEC));
        }
}

static int on_heartbeat_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        heartbeat_send(userdata);
        return 0;
}

void job_check_now(Job *j) {
        if (j->state != JOB_RUNNING || j->fenced)
                return;
        heartbeat_send(j);
}

/* ---- the report (complete or release) --------------------------------------------------- */

static void report_send(Job *j);

static int on_report_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        report_send(userdata);
        return 0;
}

static void report_failed(Job *j, int error, const DtaskReply *reply) {
        usec_t now = now_usec(CLOCK_MONOTONIC), delay;

        if (now >= j->report_deadline) {
                if (j->release)
                        log_warning_errno(error,
                                          "Task %s, attempt %u: could not release it (%s); it goes back to Pending "
                                          "when its lease lapses (dtask-reaper).",
                                          j->id, j->attempt, reply_detail(reply, error));
                else
                        log_error_errno(error,
                                        "Task %s, attempt %u: giving up reporting the result after %u tries (%s); "
                                        "dtask-reaper will expire or reschedule the task.",
                                        j->id, j->attempt, j->report_tries, reply_detail(reply, error));
                job_finish(j);
                return;
        }

        delay = REPORT_RETRY_MIN_USEC;
        for (unsigned i = 1; i < j->report_tries && delay < REPORT_RETRY_MAX_USEC; i++)
                delay *= 2;
        delay = MIN(delay, REPORT_RETRY_MAX_USEC);
        delay = MIN(delay, j->report_deadline - now);

        if (error != j->report_error) {
                log_warning_errno(error,
                                  "Task %s, attempt %u: could not %s (%s); the %s is kept and retried for up to "
                                  "%" PRIu64 " s.",
                                  j->id, j->attempt, j->release ? "release it" : "report the result",
                                  reply_detail(reply, error), j->release ? "task" : "result",
                                  (j->report_deadline - now + USEC_PER_SEC - 1) / USEC_PER_SEC);
                j->report_error = error;
        }
        if (job_arm(j, &j->retry_timer, delay, on_report_retry) < 0)
                job_finish(j);
}

static void report_degrade(Job *j, const DtaskReply *reply, int error) {
        _cleanup_free_ char *message = NULL;

        log_warning_errno(error,
                          "Task %s, attempt %u: the API refused the result (%s); reporting a failure instead.",
                          j->id, j->attempt, reply_detail(reply, error));
        if (asprintf(&message, "The worker could not report the result: %s", reply_detail(reply, error)) < 0)
                message = NULL;
        j->degraded = true;
        j->status = DTASK_STATUS_FAILED;
        j->verdict = "internal_error";
        j->has_exit_code = false;
        j->output_truncated = false;
        j->result = mfree(j->result);
        free_and_replace(j->error_message, message);
        report_send(j);
}

static void on_completed(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply,
                         void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;
        char code[16] = "none";

        j->call = NULL;

        if (reply_is_success(error, reply)) {
                if (j->report_tries > 1)
                        log_notice("Task %s, attempt %u: result delivered after %u tries.", j->id, j->attempt,
                                   j->report_tries);
                if (j->has_exit_code)
                        snprintf(code, sizeof code, "%d", j->exit_code);
                log_info("Task %s, attempt %u: %s, verdict %s, exit code %s, run took %.3f s.", j->id, j->attempt,
                         dtask_status_to_string(j->status), strna(j->verdict), code,
                         (double) j->duration / USEC_PER_SEC);
                manager_count_outcome(m, j->status);
                job_finish(j);
                return;
        }
        if (error_is_fenced(error)) {
                log_notice("Task %s, attempt %u: the API refused the result (%s): the task ended elsewhere "
                           "(cancelled, expired or rescued).",
                           j->id, j->attempt, reply_detail(reply, error));
                manager_count_outcome(m, -1);
                job_finish(j);
                return;
        }
        if (error == -EINVAL || error == -E2BIG || error == -EPROTO) {
                if (!j->degraded) {
                        report_degrade(j, reply, error);
                        return;
                }
                log_error_errno(error, "Task %s, attempt %u: the API refused even a plain failure report (%s); "
                                "dtask-reaper will expire or reschedule the task.",
                                j->id, j->attempt, reply_detail(reply, error));
                job_finish(j);
                return;
        }
        report_failed(j, error, reply);
}

static void on_released(DtaskClient *c, int error, const DtaskReply *reply, void *userdata) {
        Job *j = userdata;

        j->call = NULL;

        if (reply_is_success(error, reply))
                log_info("Task %s, attempt %u: released, back to Pending for another worker.", j->id, j->attempt);
        else if (error_is_fenced(error))
                log_notice("Task %s, attempt %u: not released (%s): it ended elsewhere meanwhile.", j->id, j->attempt,
                           reply_detail(reply, error));
        else if (error == -EOPNOTSUPP || error == -EINVAL)
                /* an API without the release endpoint (404 would be -ENOENT, see above) */
                log_warning_errno(error,
                                  "Task %s, attempt %u: the API cannot release tasks (%s); it goes back to Pending "
                                  "when its lease lapses.",
                                  j->id, j->attempt, reply_detail(reply, error));
        else {
                report_failed(j, error, reply);
                return;
        }
        manager_count_outcome(j->manager, -1);
        job_finish(j);
}

static void report_send(Job *j) {
        Manager *m = j->manager;
        int r;

        j->report_tries++;
        if (j->release)
                r = dtask_release(m->client, j->id, j->attempt, on_released, j, &j->call);
        else {
                DtaskCompletion c = {
                        .attempt = j->attempt,
                        .status = j->status,
                        .result = j->result,
                        .error_message = j->error_message,
                        .has_exit_code = j->has_exit_code,
                        .exit_code = j->exit_code,
                        .verdict = j->verdict,
                        .output_truncated = j->output_truncated,
                };
                r = dtask_complete(m->client, j->id, &c, on_completed, j, &j->call);
        }
        if (r < 0) {
                j->call = NULL;
                if (r == -EINVAL && !j->release) {
                        if (!j->degraded) {
                                report_degrade(j, NULL, r);
                                return;
                        }
                        log_error_errno(r, "Task %s, attempt %u: cannot build even a plain failure report: %m", j->id,
                                        j->attempt);
                        job_finish(j);
                        return;
                }
                report_failed(j, r, NULL);
        }
}

static void report_start(Job *j) {
        usec_t now = now_usec(CLOCK_MONOTONIC), now_rt = now_usec(CLOCK_REALTIME), keep;

        j->state = JOB_REPORTING;
        if (j->release) {
                heartbeat_stop(j);
                keep = RELEASE_DEADLINE_USEC;
        } else {
                /* until the task's expiresAt + margin, at least the margin */
                keep = REPORT_MARGIN_USEC;
                if (j->expires_at > now_rt)
                        keep += j->expires_at - now_rt;
                /* the heartbeat keeps the lease while the result is delivered */
        }
        j->report_deadline = now + keep;
        /* a reporting job takes no slot: a held message may be claimed now */
        manager_slot_freed(j->manager);
        report_send(j);
}

static void report_release(Job *j) {
        j->release = true;
        report_start(j);
}

/* ---- the run ---------------------------------------------------------------------------- */

static void append_reason(Job *j, const char *format, ...) _printf_(2, 3);
static void append_reason(Job *j, const char *format, ...) {
        _cleanup_free_ char *reason = NULL, *joined = NULL;
        va_list ap;
        int k;

        va_start(ap, format);
        k = vasprintf(&reason, format, ap);
        va_end(ap);
        if (k < 0)
                return;
        if (isempty(j->error_message))
                k = asprintf(&joined, "%s", reason);
        else
                k = asprintf(&joined, "%s%s%s", j->error_message,
                             j->error_message[strlen(j->error_message) - 1] == '\n' ? "" : "\n", reason);
        if (k >= 0)
                free_and_replace(j->error_message, joined);
}

static char *format_bytes(uint64_t n, char *buf, size_t size) {
        if (n >= 1024 * 1024 && n % (1024 * 1024) == 0)
                snprintf(buf, size, "%" PRIu64 " MiB", n / (1024 * 1024));
        else if (n >= 1024 && n % 1024 == 0)
                snprintf(buf, size, "%" PRIu64 " KiB", n / 1024);
        else
                snprintf(buf, size, "%" PRIu64 " bytes", n);
        return buf;
}

/* Fills the report (status, verdict, result, errorMessage, exit code) from the run's result.
 * For runs killed on our request (cancelled, shutdown) only the output is taken: the caller
 * decides. */
static int report_from_result(Job *j, SandboxResult *res) {
        const SandboxSettings *s = &j->manager->sandbox_settings;
        size_t max = s->output_max;
        bool cut = false;
        char buf[64];
        int r;

        j->duration = res->duration;
        j->output_truncated = res->output_truncated;
        j->has_exit_code = res->exit_code >= 0;
        j->exit_code = res->exit_code;
        j->verdict = sandbox_verdict_to_string(res->verdict);

        /* Program output can be any bytes; the API takes UTF-8 JSON strings. */
        r = utf8_sanitize(res->stdout_data, res->stdout_size, max, &j->result, &cut);
        if (r < 0)
                return r;
        j->output_truncated = j->output_truncated || cut;
        r = utf8_sanitize(res->stderr_data, res->stderr_size, max, &j->error_message, &cut);
        if (r < 0)
                return r;
        j->output_truncated = j->output_truncated || cut;

        switch (res->end) {
        case SANDBOX_END_EXPIRED:
                j->status = DTASK_STATUS_EXPIRED;
                j->has_exit_code = false;
                free(j->error_message);
                j->error_message = strdup(EXPIRED_MESSAGE);
                if (!j->error_message)
                        return -ENOMEM;
                return 0;
        case SANDBOX_END_TIMEOUT:
                j->status = DTASK_STATUS_FAILED;
                j->has_exit_code = false;
                append_reason(j, "Time limit exceeded: the run was stopped after %.1f s.",
                              (double) res->duration / USEC_PER_SEC);
                return 0;
        case SANDBOX_END_OUTPUT_LIMIT:
                j->status = DTASK_STATUS_FAILED;
                j->has_exit_code = false;
                append_reason(j, "Output limit exceeded: stdout and stderr are each limited to %s; the output is "
                              "truncated.",
                              format_bytes(s->output_max, buf, sizeof buf));
                return 0;
        case SANDBOX_END_FAILED:
                j->status = DTASK_STATUS_FAILED;
                j->has_exit_code = false;
                append_reason(j, "Internal error: the sandbox failed: %s", strna(res->error_message));
                return 0;
        case SANDBOX_END_EXITED:
                break;
        default:
                /* cancelled/shutdown: handled by the caller */
                return 0;
        }

        switch (res->verdict) {
        case SANDBOX_VERDICT_OK:
                j->status = DTASK_STATUS_COMPLETED;
                break;
        case SANDBOX_VERDICT_MEMORY_LIMIT:
                j->status = DTASK_STATUS_FAILED;
                append_reason(j, "Memory limit exceeded (%s): the program was killed.",
                              format_bytes(s->memory_max, buf, sizeof buf));
                break;
        case SANDBOX_VERDICT_PIDS_LIMIT:
                j->status = DTASK_STATUS_FAILED;
                append_reason(j, "Process limit exceeded (%" PRIu64 " processes and threads): a fork was refused.",
                              s->pids_max);
                break;
        default:
                /* runtime_error: stderr as it is; compile_error: the compiler's diagnostics */
                j->status = DTASK_STATUS_FAILED;
                if (isempty(j->error_message))
                        append_reason(j, res->verdict == SANDBOX_VERDICT_COMPILE_ERROR
                                                 ? "Compilation failed."
                                                 : "The program exited with status %d.",
                                      res->exit_code);
        }
        return 0;
}

/* The program is gone: its slot is free for a held message, and the ack lets the broker
 * deliver the next one, so that claims overlap this run's cleanup and report. Unless no other
 * slot is ready for it (a range of as many UIDs as the concurrency, or shared with other
 * workers): then the next run needs this run's slot, and all that waits for the end of the run. */
static void on_run_exited(SandboxRun *run, void *userdata) {
        Job *j = userdata;

        if (sandbox_slots_ready(j->manager->sandbox) <= manager_jobs_claiming(j->manager))
                return;
        j->slot_freed = true;
        job_settle(j, true);
        manager_slot_freed(j->manager);
}

static void on_run_done(SandboxRun *run, SandboxResult *res, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;
        SandboxEnd end = res->end;
        int r;

        r = report_from_result(j, res);
        /* res belongs to the run */
        j->run = sandbox_run_free(run);
        /* acked already, unless the run ended before its program was started */
        job_settle(j, true);

        if (j->fenced) {
                log_info("Task %s, attempt %u: run killed after %.3f s; the task is no longer ours, nothing to "
                         "report.",
                         j->id, j->attempt, (double) j->duration / USEC_PER_SEC);
                manager_count_outcome(m, -1);
                job_finish(j);
                return;
        }

        switch (end) {
        case SANDBOX_END_CANCELLED:
                /* the API has set Cancelled already */
                log_info("Task %s, attempt %u: cancelled; run killed after %.3f s.", j->id, j->attempt,
                         (double) j->duration / USEC_PER_SEC);
                manager_count_outcome(m, -1);
                job_finish(j);
                return;
        case SANDBOX_END_SHUTDOWN:
                log_info("Task %s, attempt %u: run killed after %.3f s because the worker is stopping.", j->id,
                         j->attempt, (double) j->duration / USEC_PER_SEC);
                report_release(j);
                return;
        default:
                break;
        }

        if (r < 0) {
                log_oom();
                report_degrade(j, NULL, r);
                return;
        }
        if (end == SANDBOX_END_FAILED)
                log_error("Task %s, attempt %u: the sandbox failed; reporting an internal error: %s", j->id,
                          j->attempt, strna(j->error_message));
        report_start(j);
}

static Language sandbox_language(DtaskLanguage l) {
        switch (l) {
        case DTASK_LANGUAGE_PYTHON:
                return LANGUAGE_PYTHON;
        case DTASK_LANGUAGE_CSHARP:
                return LANGUAGE_CSHARP;
        default:
                return _LANGUAGE_INVALID;
        }
}

/* The next task will likely be of the language of the last one: its sandbox is set up now (a
 * few ms of namespaces and mounts), so that its claim's answer finds it waiting for the
 * program. A wrong guess costs nothing but that sandbox, kept for a later task of its
 * language. */
static void warm_next(Job *j) {
        Manager *m = j->manager;
        int r;

        if (m->expected_language < 0 || m->stopping || j->stopping)
                return;
        r = sandbox_warm(m->sandbox, m->event, m->expected_language);
        if (r < 0)
                log_debug_errno(r, "Could not set up a sandbox ahead of the next task: %m");
}

static void run_start(Job *j) {
        Manager *m = j->manager;
        SandboxRequest req = {
                .code = j->code,
                .code_size = j->code ? strlen(j->code) : 0,
                .stdin_data = j->input,
                .stdin_size = j->input ? strlen(j->input) : 0,
                .ttl_deadline = j->expires_at > 0 ? j->expires_at : USEC_INFINITY,
                .max_runtime = 0, /* the settings' SANDBOX_MAX_RUNTIME */
                .language = sandbox_language(j->language),
        };
        int r;

        if (req.language < 0 || req.code_size == 0) {
                log_warning("Task %s, attempt %u: %s; failing it.", j->id, j->attempt,
                            req.language < 0 ? "unknown language" : "no code");
                j->status = DTASK_STATUS_FAILED;
                j->verdict = "internal_error";
                j->error_message = strdup(req.language < 0 ? "The worker does not know the task's language."
                                                           : "The task has no code.");
                report_start(j);
                return;
        }

        r = sandbox_start(m->sandbox, m->event, &req, on_run_done, j, &j->run);
        if (r == -EBUSY) {
                /* every UID slot of this host is taken (other workers share the range) */
                log_warning("Task %s, attempt %u: no free sandbox slot on this host; releasing it.", j->id,
                            j->attempt);
                report_release(j);
                return;
        }
        if (r < 0) {
                log_error_errno(r, "Task %s, attempt %u: failed to start the sandbox: %m", j->id, j->attempt);
                j->status = DTASK_STATUS_FAILED;
                j->verdict = "internal_error";
                if (asprintf(&j->error_message, "Internal error: the sandbox could not start the program: %s",
                             strerror(-r)) < 0)
                        j->error_message = NULL;
                report_start(j);
                return;
        }

        sandbox_run_set_exited_callback(j->run, on_run_exited);
        j->state = JOB_RUNNING;
        log_debug("Task %s, attempt %u: running in sandbox slot %u.", j->id, j->attempt,
                  (unsigned) sandbox_run_uid(j->run));
        heartbeat_schedule(j, m->heartbeat_interval);
        manager_update_status(m);
        warm_next(j);

        /* an event arrived while the claim was on its way: check at once whether it was about
         * this attempt (409: the heartbeat kills the run) */
        if (j->pending_event)
                heartbeat_send(j);
}

/* ---- the claim -------------------------------------------------------------------------- */

static int on_requeue_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;

        job_settle(j, false);
        job_finish(j);
        return 0;
}

static void claim_unavailable(Job *j, int error, const DtaskReply *reply) {
        usec_t delay;

        delay = manager_claim_outcome(j->manager, error);
        j->state = JOB_REQUEUE_WAIT;
        if (j->stopping || job_arm(j, &j->retry_timer, delay, on_requeue_timer) < 0) {
                job_settle(j, false);
                job_finish(j);
                return;
        }
        log_debug("Task %s: claim failed (%s); its message goes back to the queue in %.1f s.", j->id,
                  reply_detail(reply, error), (double) delay / USEC_PER_SEC);
}

static int job_take_task(Job *j, const DtaskTask *t) {
        j->attempt = t->attempt;
        j->language = t->language;
        j->expires_at = t->expires_at;
        j->code = t->code ? strdup(t->code) : NULL;
        j->input = t->input_data ? strdup(t->input_data) : NULL;
        if ((t->code && !j->code) || (t->input_data && !j->input))
                return -ENOMEM;
        return 0;
}

static void on_claimed(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;
        char when[ISO8601_STRING_MAX];

        j->call = NULL;

        if (error == -EBUSY || error == -ENOENT || error == -EINVAL) {
                /* 409 not claimable (taken, cancelled, expired, done), 404 unknown: PostgreSQL
                 * is the truth, the message is stale */
                (void) manager_claim_outcome(m, 0);
                log_info("Dropping the message of task %s, which is not claimable: %s", j->id,
                         reply_detail(reply, error));
                job_settle(j, true);
                job_finish(j);
                return;
        }
        if (error < 0 || !task) {
                claim_unavailable(j, error < 0 ? error : -EBADMSG, reply);
                return;
        }
        (void) manager_claim_outcome(m, 0);

        /* The claim is durable in PostgreSQL. The message stays unacked until the program
         * exits, so that the broker's prefetch (concurrency + lookahead) keeps further messages
         * for idle workers; should this worker die, the broker hands it to another one, whose
         * claim is refused (409) and drops it, while dtask-reaper rescues the task from the
         * lease. */
        j->claimed = true;

        if (job_take_task(j, task) < 0) {
                log_oom();
                report_release(j);
                return;
        }
        m->expected_language = sandbox_language(j->language);
        log_info("Task %s: claimed attempt %u (%s, expires %s).", j->id, j->attempt,
                 strna(dtask_language_to_string(j->language)),
                 j->expires_at > 0 ? iso8601_format(j->expires_at, when) : "never");

        if (j->stopping) {
                log_info("Task %s, attempt %u: the worker is stopping; releasing it unrun.", j->id, j->attempt);
                report_release(j);
                return;
        }
        run_start(j);
}

static int on_hold_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;

        log_debug("Task %s: every slot is still busy; its message goes back to the queue.", j->id);
        job_settle(j, false);
        manager_hold_expired(j->manager);
        job_finish(j);
        return 0;
}

void job_replace_delivery(Job *j, uint64_t delivery_tag) {
        assert_return(j->state == JOB_HELD, (void) 0);
        job_settle(j, true);
        j->delivery_tag = delivery_tag;
        j->settled = false;
}

int job_hold(Job *j, usec_t max) {
        j->state = JOB_HELD;
        return job_arm(j, &j->hold_timer, max, on_hold_timer);
}

int job_start(Job *j) {
        Manager *m = j->manager;
        int r;

        j->hold_timer = sd_event_source_disable_unref(j->hold_timer);
        j->state = JOB_CLAIMING;
        r = dtask_claim(m->client, j->id, m->worker_name, on_claimed, j, &j->call);
        if (r < 0) {
                j->call = NULL;
                /* not even queued (-EAGAIN: too many requests, -ENOMEM): later */
                j->state = JOB_REQUEUE_WAIT;
                if (job_arm(j, &j->retry_timer, manager_claim_outcome(m, r), on_requeue_timer) < 0)
                        return r;
                return 0;
        }
        /* usually there is one already, made when the last run started */
        warm_next(j);
        return 0;
}

/* ---- events, shutdown ------------------------------------------------------------------- */

void job_handle_event(Job *j, const char *event) {
        SandboxEnd reason;

        if (streq(event, "cancelled"))
                reason = SANDBOX_END_CANCELLED;
        else if (streq(event, "expired"))
                reason = SANDBOX_END_EXPIRED;
        else
                return;

        switch (j->state) {
        case JOB_CLAIMING:
                j->pending_event = reason == SANDBOX_END_CANCELLED ? "cancelled" : "expired";
                break;
        case JOB_RUNNING:
                if (!j->run)
                        break;
                log_info("Task %s, attempt %u: %s elsewhere; killing the run.", j->id, j->attempt, event);
                (void) sandbox_run_kill(j->run, reason);
                break;
        default:
                log_debug("Task %s: event \"%s\" while %s, ignored.", j->id, event, job_state_to_string(j->state));
        }
}

void job_begin_shutdown(Job *j) {
        j->stopping = true;
        if (j->state == JOB_REQUEUE_WAIT || j->state == JOB_HELD) {
                job_settle(j, false);
                job_finish(j);
        }
}

void job_kill_for_shutdown(Job *j) {
        if (j->state != JOB_RUNNING || !j->run)
                return;
        log_notice("Task %s, attempt %u: still running at the end of the stop grace period; killing it.", j->id,
                   j->attempt);
        (void) sandbox_run_kill(j->run, SANDBOX_END_SHUTDOWN);
}
