/* SPDX-License-Identifier: MIT */
/* dtask-worker: consumes task ids from RabbitMQ, claims the tasks from dtask-api, runs them in
 * the sandbox and reports the results. Run as dtask-worker@N. */

#include <getopt.h>
#include <stdio.h>

#include "log.h"
#include "manager.h"

static ManagerOptions arg_options = {};

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "The dtask worker: runs queued tasks (Python, C#) in a sandbox and reports the results\n"
               "to dtask-api. Meant to run as dtask-worker@N.service; the instance N comes from\n"
               "$DTASK_WORKER_INSTANCE or the unit name.\n\n"
               "  -h --help            Show this help\n"
               "     --version         Show package version\n"
               "     --config=PATH     Configuration file (default: %s/dtask/dtask.conf if it exists)\n",
               program_invocation_short_name, SYSCONFDIR);
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_CONFIG,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "config", required_argument, NULL, ARG_CONFIG },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("dtask-worker %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_CONFIG:
                        arg_options.config_path = optarg;
                        break;
                case '?':
                        return -EINVAL;
                default:
                        return log_error_errno(EINVAL, "Unknown option code %c.", c);
                }

        if (optind < argc)
                return log_error_errno(EINVAL, "%s takes no arguments.", program_invocation_short_name);
        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        log_set_ident(program_invocation_short_name);

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        r = manager_new(&m, &arg_options);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_start(m);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_run(m);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
