/* SPDX-License-Identifier: MIT */
/* dtask-reaper: one pass of the TTL authority (run by dtask-reaper.timer), or a loop
 * of passes for hosts without systemd (--loop=INTERVAL). */

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "log.h"
#include "pg.h"
#include "reaper.h"
#include "time-util.h"

static const char *arg_config = NULL;
static usec_t arg_loop = 0;

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "Expires tasks whose TTL ran out, rescues tasks of lost workers and publishes\n"
               "tasks the broker never confirmed. Runs one pass and exits, unless --loop is given.\n\n"
               "  -h --help              Show this help\n"
               "     --version           Show package version\n"
               "     --config=PATH       Configuration file (default: %s/dtask/dtask.conf)\n"
               "     --loop=INTERVAL     Run a pass every INTERVAL (e.g. 1s, 500ms) until stopped\n",
               program_invocation_short_name, SYSCONFDIR);
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_CONFIG,
                ARG_LOOP,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "loop", required_argument, NULL, ARG_LOOP },
                {},
        };
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("dtask-reaper %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_CONFIG:
                        arg_config = optarg;
                        break;
                case ARG_LOOP:
                        r = duration_parse(optarg, &arg_loop);
                        if (r < 0 || arg_loop < 10 * USEC_PER_MSEC)
                                return log_error_errno(r < 0 ? r : -ERANGE,
                                                       "Invalid --loop interval \"%s\": expected e.g. 1s or 500ms "
                                                       "(at least 10ms).",
                                                       optarg);
                        break;
                case '?':
                        return -EINVAL;
                default:
                        abort();
                }

        if (optind < argc)
                return log_error_errno(EINVAL, "%s takes no arguments.", program_invocation_short_name);
        return 1;
}

typedef struct Context {
        char *database; /* redacted, for messages */
        sd_event *event;
        Reaper *reaper;
        sd_event_source *timer;
        int result;
} Context;

static void on_pass_done(Reaper *reaper, int error, const ReaperStats *s, void *userdata);

static int on_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        Context *c = userdata;
        int r;

        r = reaper_run(c->reaper, on_pass_done, c);
        if (r < 0)
                log_warning_errno(r, "Previous pass still running, skipping this one.");
        return 0;
}

static void on_pass_done(Reaper *reaper, int error, const ReaperStats *s, void *userdata) {
        Context *c = userdata;
        int r;

        if (error < 0) {
                log_error_errno(error, "Pass failed: the database %s could not be used: %m", strna(c->database));
                c->result = error;
        } else {
                /* A one-line summary; at debug level when nothing happened, since the timer
                 * runs a pass every second. */
                bool idle = s->expired + s->rescued + s->lost + s->republished + s->publish_failed + s->purged == 0;

                log_full(idle ? LOG_DEBUG : LOG_INFO,
                         "expired=%u rescued=%u lost=%u republished=%u publish_failed=%u purged=%u", s->expired,
                         s->rescued, s->lost, s->republished, s->publish_failed, s->purged);
                c->result = 0;
        }

        if (arg_loop == 0) {
                (void) sd_event_exit(c->event, 0);
                return;
        }
        r = sd_event_source_set_time_relative(c->timer, arg_loop);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
        if (r < 0)
                (void) sd_event_exit(c->event, log_error_errno(r, "Failed to arm the pass timer: %m"));
}

int main(int argc, char *argv[]) {
        _cleanup_(config_freep) Config *config = NULL;
        _cleanup_free_ char *error = NULL;
        Context c = { .result = 0 };
        sigset_t mask;
        int r;

        log_set_ident(program_invocation_short_name);

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        r = config_load(&config, arg_config, &error);
        if (r < 0) {
                log_error_errno(r, "Invalid configuration: %s", error ?: strerror(-r));
                return EXIT_FAILURE;
        }
        (void) log_set_max_level_from_string(config_string(config, "LOG_LEVEL"));
        r = config_require(config, (const char *const[]) { "DATABASE_URL", NULL }, &error);
        if (r < 0) {
                log_error_errno(r, "Invalid configuration: %s", error);
                return EXIT_FAILURE;
        }

        r = pg_conninfo_redact(config_string(config, "DATABASE_URL"), &c.database);
        if (r < 0) {
                log_error_errno(r, "Invalid configuration: DATABASE_URL: %m");
                goto finish;
        }

        r = sd_event_default(&c.event);
        if (r < 0)
                goto finish;
        (void) sigemptyset(&mask);
        (void) sigaddset(&mask, SIGTERM);
        (void) sigaddset(&mask, SIGINT);
        (void) sigprocmask(SIG_BLOCK, &mask, NULL);
        r = sd_event_add_signal(c.event, NULL, SIGTERM, NULL, NULL);
        if (r >= 0)
                r = sd_event_add_signal(c.event, NULL, SIGINT, NULL, NULL);
        if (r < 0) {
                log_error_errno(r, "Failed to set up signal handling: %m");
                goto finish;
        }

        r = reaper_new(&c.reaper, c.event, config);
        if (r < 0) {
                log_error_errno(r, "Failed to set up: %m");
                goto finish;
        }

        if (arg_loop > 0) {
                /* 1 ms accuracy: sd-event's default of 250 ms would make expiry that much later. */
                r = sd_event_add_time_relative(c.event, &c.timer, CLOCK_MONOTONIC, arg_loop, USEC_PER_MSEC, on_timer,
                                               &c);
                if (r < 0) {
                        log_error_errno(r, "Failed to add the pass timer: %m");
                        goto finish;
                }
                (void) sd_event_source_set_enabled(c.timer, SD_EVENT_OFF);
                (void) sd_notify(false, "READY=1\nSTATUS=Reaping every interval");
        }

        r = reaper_run(c.reaper, on_pass_done, &c);
        if (r >= 0)
                r = sd_event_loop(c.event);
        if (r < 0)
                log_error_errno(r, "Event loop failed: %m");
        else
                r = c.result;

finish:
        c.timer = sd_event_source_unref(c.timer);
        c.reaper = reaper_free(c.reaper);
        c.event = sd_event_unref(c.event);
        free(c.database);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
