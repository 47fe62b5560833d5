/* SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <stdio.h>

#include "log.h"
#include "manager.h"

static void help(void) {
        printf("Usage: dtask-keys [OPTIONS]\n\n"
               "API-key service of dtask: REST API (admin login with JWT, key validation) and\n"
               "D-Bus interface org.dtask.Keys1 on the system bus.\n\n"
               "  -h --help              Show this help\n"
               "     --version           Show the version\n"
               "     --listen=ADDR:PORT  Listen here when no socket is passed by systemd\n"
               "                         (default " KEYS_DEFAULT_LISTEN ")\n"
               "     --config=PATH       Configuration file (default " SYSCONFDIR "/dtask/dtask.conf)\n"
               "     --sql-dir=DIR       Schema migrations (default $DTASK_SQL_DIR or " SQLDIR ")\n"
               "     --hash-password     Read a password from standard input, print its argon2id\n"
               "                         hash for ADMIN_PASSWORD_HASH, and exit\n\n"
               "Configuration keys: DATABASE_URL (or API_KEYS_CONNECTION_STRING), JWT_SECRET (at least\n"
               "32 bytes), JWT_LIFETIME, KEY_PEPPER (at least 32 bytes), ADMIN_USERNAME, ADMIN_PASSWORD or\n"
               "ADMIN_PASSWORD_HASH, ADMIN_CLAIMS, LOGIN_RATE_LIMIT, VALIDATE_RATE_LIMIT,\n"
               "VALIDATE_RATE_LIMIT_EXEMPT, TLS_CERTIFICATE, "
               "TLS_KEY, LOG_LEVEL. Secrets may come from $CREDENTIALS_DIRECTORY.\n");
}

enum {
        ARG_VERSION = 0x100,
        ARG_LISTEN,
        ARG_CONFIG,
        ARG_SQL_DIR,
        ARG_HASH_PASSWORD,
};

/* For ADMIN_PASSWORD_HASH: libsodium's "interactive" argon2id cost (64 MiB, 2 passes), which
 * is what a login may take on the event loop. The password is read from stdin, one line. */
static int hash_password(void) {
        char buf[4096], hash[crypto_pwhash_STRBYTES];
        size_t n;

        if (!fgets(buf, sizeof buf, stdin)) {
                log_error("No password on standard input.");
                return -EINVAL;
        }
        n = strlen(buf);
        if (n > 0 && buf[n - 1] == '\n')
                buf[--n] = '\0';
        if (n > 0 && buf[n - 1] == '\r')
                buf[--n] = '\0';
        if (n == 0) {
                sodium_memzero(buf, sizeof buf);
                log_error("The password is empty.");
                return -EINVAL;
        }
        if (crypto_pwhash_str_alg(hash, buf, n, crypto_pwhash_OPSLIMIT_INTERACTIVE, crypto_pwhash_MEMLIMIT_INTERACTIVE,
                                  crypto_pwhash_ALG_ARGON2ID13) != 0) {
                sodium_memzero(buf, sizeof buf);
                return log_error_errno(ENOMEM, "Failed to hash the password: %m");
        }
        sodium_memzero(buf, sizeof buf);
        printf("%s\n", hash);
        return 0;
}

static int parse_argv(int argc, char *argv[], ManagerOptions *o) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "listen", required_argument, NULL, ARG_LISTEN },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "sql-dir", required_argument, NULL, ARG_SQL_DIR },
                { "hash-password", no_argument, NULL, ARG_HASH_PASSWORD },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("dtask-keys %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_LISTEN:
                        o->listen = optarg;
                        break;
                case ARG_CONFIG:
                        o->config_path = optarg;
                        break;
                case ARG_SQL_DIR:
                        o->sql_dir = optarg;
                        break;
                case ARG_HASH_PASSWORD:
                        if (sodium_init() < 0)
                                return -EIO;
                        return hash_password() < 0 ? -EINVAL : 0;
                case '?':
                        return -EINVAL;
                default:
                        abort();
                }
        if (optind < argc) {
                log_error("Unexpected argument: %s", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        ManagerOptions o = {};
        int r;

        log_set_ident("dtask-keys");
        r = parse_argv(argc, argv, &o);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        if (sodium_init() < 0) {
                log_error("Failed to initialize libsodium.");
                return EXIT_FAILURE;
        }

        r = manager_new(&m, &o);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_start(m, &o);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_run(m);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
