/* SPDX-License-Identifier: MIT */
/* dtask-api: the task REST API, D-Bus org.dtask.Tasks1 and dispatch to RabbitMQ. */

#include <getopt.h>
#include <stdio.h>

#include "log.h"
#include "manager.h"

static ManagerOptions arg_options = {};

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "The dtask task API: REST on HTTP(S), D-Bus %s, dispatch of tasks to RabbitMQ.\n\n"
               "  -h --help            Show this help\n"
               "     --version         Show package version\n"
               "     --listen=ADDR:PORT  Listen here when not socket-activated (default: %s)\n"
               "     --config=PATH     Configuration file (default: %s/dtask/dtask.conf if it exists)\n"
               "     --sql-dir=DIR     Schema migrations (default: $DTASK_SQL_DIR, else %s)\n",
               program_invocation_short_name, API_BUS_NAME, API_DEFAULT_LISTEN, SYSCONFDIR, SQLDIR);
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_LISTEN,
                ARG_CONFIG,
                ARG_SQL_DIR,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "listen", required_argument, NULL, ARG_LISTEN },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "sql-dir", required_argument, NULL, ARG_SQL_DIR },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("dtask-api %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_LISTEN:
                        arg_options.listen = optarg;
                        break;
                case ARG_CONFIG:
                        arg_options.config_path = optarg;
                        break;
                case ARG_SQL_DIR:
                        arg_options.sql_dir = optarg;
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
        r = manager_start(m, &arg_options);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_run(m);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
