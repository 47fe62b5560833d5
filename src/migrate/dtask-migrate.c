/* SPDX-License-Identifier: MIT */
/* dtask-migrate: applies the SQL schema migrations (sql/NNNN-*.sql) to the database. */

#include <getopt.h>
#include <stdio.h>

#include "log.h"
#include "pg.h"

static const char *arg_database_url = NULL;
static const char *arg_sql_dir = SQLDIR;

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "Applies the dtask schema migrations that the database does not have yet.\n\n"
               "  -h --help               Show this help\n"
               "     --version            Show package version\n"
               "     --database-url=URL   PostgreSQL connection string (libpq URI or keyword/value,\n"
               "                          or Npgsql style); default: $DATABASE_URL\n"
               "     --sql-dir=DIR        Directory with NNNN-name.sql files (default: %s)\n",
               program_invocation_short_name, SQLDIR);
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_DATABASE_URL,
                ARG_SQL_DIR,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "database-url", required_argument, NULL, ARG_DATABASE_URL },
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
                        printf("dtask-migrate %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_DATABASE_URL:
                        arg_database_url = optarg;
                        break;
                case ARG_SQL_DIR:
                        arg_sql_dir = optarg;
                        break;
                case '?':
                        return -EINVAL;
                default:
                        return log_error_errno(EINVAL, "Unknown option code %c.", c);
                }

        if (optind < argc)
                return log_error_errno(EINVAL, "%s takes no arguments.", program_invocation_short_name);

        if (!arg_database_url)
                arg_database_url = getenv("DATABASE_URL");
        if (isempty(arg_database_url))
                return log_error_errno(EINVAL, "No database given: use --database-url= or set $DATABASE_URL.");

        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_free_ char *error = NULL;
        unsigned applied = 0;
        int r;

        log_set_ident(program_invocation_short_name);

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        r = pg_migrate(arg_database_url, arg_sql_dir, &applied, &error);
        if (r < 0) {
                /* The message names the file and the server's error; connection strings in
                 * it are redacted. */
                log_error_errno(r, "%s", strna(error));
                return EXIT_FAILURE;
        }

        printf("Applied %u migration(s).\n", applied);
        return EXIT_SUCCESS;
}
