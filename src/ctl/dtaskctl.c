/* SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <stdio.h>

#include "ctl-keys.h"
#include "ctl-tasks.h"
#include "ctl-util.h"
#include "json-util.h"
#include "time-util.h"

/* dtaskctl: the command-line client of dtask. Task verbs talk to dtask-api over REST through
 * libdtask; `keys` verbs talk to dtask-keys over D-Bus. main() parses the options (global and
 * per-verb ones in one pass, so they may come before or after the verb), checks that the verb
 * accepts the options given, and runs it. */

typedef struct Verb {
        const char *group;      /* "keys" for "keys create", NULL for top-level verbs */
        const char *name;
        size_t min_args, max_args;
        unsigned options;       /* CtlOption mask */
        int (*run)(Ctl *ctl, char **args, size_t n_args);
        const char *synopsis;
        const char *help;
} Verb;

static const Verb verbs[] = {
        { NULL, "submit", 1, 1,
          CTL_OPT_NAME | CTL_OPT_LANGUAGE | CTL_OPT_TTL | CTL_OPT_INPUT | CTL_OPT_INPUT_FILE | CTL_OPT_IDEMPOTENCY_KEY |
                  CTL_OPT_WAIT,
          verb_submit, "submit [OPTIONS] FILE|-",
          "Create a task from the code in FILE (or standard input) and print its id.\n\n"
          "  --name=NAME              task name (default: the file's name)\n"
          "  --language=LANG          python or csharp (default: from the extension .py/.cs)\n"
          "  --ttl=TTL                time to live: 00:30:00, 1.00:00:00, 1800, 30min, 2h (default 00:30:00)\n"
          "  --input=TEXT             standard input of the program\n"
          "  --input-file=FILE        standard input of the program from FILE ('-': stdin)\n"
          "  --idempotency-key=KEY    same key within 24 h returns the first task instead of a new one\n"
          "  --wait[=SECONDS]         wait for the result, print the program's stdout (stderr to stderr);\n"
          "                           exit 0 Completed, 3 Failed, 4 Expired, 5 Cancelled, 1 when\n"
          "                           SECONDS passed first\n"
          "  --json[=short|pretty]    print the task as JSON instead\n" },
        { NULL, "get", 1, 1, CTL_OPT_WAIT, verb_get, "get [OPTIONS] ID",
          "Show a task.\n\n"
          "  --wait[=SECONDS]         first wait until the task finished (at most SECONDS)\n"
          "  --json[=short|pretty]    print the task as JSON\n" },
        { NULL, "list", 0, 0, CTL_OPT_STATUS | CTL_OPT_LIMIT | CTL_OPT_AFTER | CTL_OPT_ALL, verb_list,
          "list [OPTIONS]",
          "List tasks, oldest first.\n\n"
          "  --status=STATUS          Pending, InProgress, Completed, Failed, Expired or Cancelled\n"
          "  --limit=N                show at most N tasks (default 100)\n"
          "  --after=CURSOR           continue after CURSOR (printed when more tasks exist)\n"
          "  --all                    show all tasks\n"
          "  --json[=short|pretty]    print a JSON array\n" },
        { NULL, "retry", 1, 1, 0, verb_retry, "retry ID",
          "Run a finished (Completed, Failed, Expired, Cancelled) task again.\n\n"
          "  --json[=short|pretty]    print the task as JSON\n" },
        { NULL, "cancel", 1, 1, 0, verb_cancel, "cancel ID",
          "Cancel a Pending or InProgress task (a running program is killed).\n\n"
          "  --json[=short|pretty]    print the task as JSON\n" },
        { "keys", "create", 1, 1, CTL_OPT_CLAIM | CTL_OPT_EXPIRES, verb_keys_create,
          "keys create NAME [--claim=CLAIM...] [--expires=TIME]",
          "Create an API key and print it (shown only this once). Needs root or group dtask-admin.\n\n"
          "  --claim=CLAIM            tasks:read, tasks:write, tasks:execute, tasks:admin (repeat, or\n"
          "                           separate with commas)\n"
          "  --expires=TIME           ISO-8601 time, a duration from now (30d, 12h) or never (default)\n"
          "  --json[=short|pretty]    print {\"id\", \"apiKey\"}\n" },
        { "keys", "list", 0, 0, 0, verb_keys_list, "keys list",
          "List all API keys (inactive ones included).\n\n"
          "  --json[=short|pretty]    print a JSON array\n" },
        { "keys", "get", 1, 1, 0, verb_keys_get, "keys get ID",
          "Show an API key.\n\n"
          "  --json[=short|pretty]    print the key as JSON\n" },
        { "keys", "deactivate", 1, 1, 0, verb_keys_deactivate, "keys deactivate ID",
          "Deactivate an API key: it stops working everywhere within seconds. Needs root or dtask-admin.\n" },
        { "keys", "delete", 1, 1, 0, verb_keys_delete, "keys delete ID",
          "Delete an API key. Needs root or group dtask-admin.\n" },
};

static void help_global(void) {
        printf("dtaskctl [OPTIONS] COMMAND ...\n\n"
               "Submit and manage dtask tasks (REST API) and API keys (D-Bus).\n\n"
               "Tasks:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (!verbs[i].group)
                        printf("  %s\n", verbs[i].synopsis);
        printf("\nAPI keys (root or group dtask-admin; system bus, $DBUS_SYSTEM_BUS_ADDRESS honoured):\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (verbs[i].group)
                        printf("  %s\n", verbs[i].synopsis);
        printf("\nOptions:\n"
               "  -h --help                this text; 'dtaskctl COMMAND --help' for a command\n"
               "     --version            the version\n"
               "     --url=URL            the dtask API (default $DTASK_API_URL, else http://127.0.0.1:8080)\n"
               "     --api-key=KEY        API key (default $DTASK_API_KEY; visible to other local users\n"
               "                          in the process list: prefer the variable or --api-key-file=)\n"
               "     --api-key-file=PATH  read the API key from PATH\n"
               "     --timeout=DURATION   deadline of each request (default 30s)\n"
               "     --json[=MODE]        JSON output: short (default) or pretty\n\n"
               "Exit status: 0 success, 1 error, 2 usage; submit --wait: see 'dtaskctl submit --help'.\n");
}

static void help_verb(const Verb *v) {
        printf("dtaskctl %s\n\n%s", v->synopsis, v->help);
}

enum {
        ARG_VERSION = 0x100,
        ARG_URL,
        ARG_API_KEY,
        ARG_API_KEY_FILE,
        ARG_TIMEOUT,
        ARG_JSON,
        ARG_NAME,
        ARG_LANGUAGE,
        ARG_TTL,
        ARG_INPUT,
        ARG_INPUT_FILE,
        ARG_IDEMPOTENCY_KEY,
        ARG_WAIT,
        ARG_STATUS,
        ARG_LIMIT,
        ARG_AFTER,
        ARG_ALL,
        ARG_CLAIM,
        ARG_EXPIRES,
};

static const struct option options[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, ARG_VERSION },
        { "url", required_argument, NULL, ARG_URL },
        { "api-key", required_argument, NULL, ARG_API_KEY },
        { "api-key-file", required_argument, NULL, ARG_API_KEY_FILE },
        { "timeout", required_argument, NULL, ARG_TIMEOUT },
        { "json", optional_argument, NULL, ARG_JSON },
        { "name", required_argument, NULL, ARG_NAME },
        { "language", required_argument, NULL, ARG_LANGUAGE },
        { "ttl", required_argument, NULL, ARG_TTL },
        { "input", required_argument, NULL, ARG_INPUT },
        { "input-file", required_argument, NULL, ARG_INPUT_FILE },
        { "idempotency-key", required_argument, NULL, ARG_IDEMPOTENCY_KEY },
        { "wait", optional_argument, NULL, ARG_WAIT },
        { "status", required_argument, NULL, ARG_STATUS },
        { "limit", required_argument, NULL, ARG_LIMIT },
        { "after", required_argument, NULL, ARG_AFTER },
        { "all", no_argument, NULL, ARG_ALL },
        { "claim", required_argument, NULL, ARG_CLAIM },
        { "expires", required_argument, NULL, ARG_EXPIRES },
        {},
};

static const char *option_name(unsigned opt) {
        static const struct {
                unsigned opt;
                const char *name;
        } names[] = {
                { CTL_OPT_NAME, "--name" },         { CTL_OPT_LANGUAGE, "--language" },
                { CTL_OPT_TTL, "--ttl" },           { CTL_OPT_INPUT, "--input" },
                { CTL_OPT_INPUT_FILE, "--input-file" }, { CTL_OPT_IDEMPOTENCY_KEY, "--idempotency-key" },
                { CTL_OPT_WAIT, "--wait" },         { CTL_OPT_STATUS, "--status" },
                { CTL_OPT_LIMIT, "--limit" },       { CTL_OPT_AFTER, "--after" },
                { CTL_OPT_ALL, "--all" },           { CTL_OPT_CLAIM, "--claim" },
                { CTL_OPT_EXPIRES, "--expires" },
        };
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (names[i].opt == opt)
                        return names[i].name;
        return "?";
}

static int parse_unsigned(const char *s, unsigned max, unsigned *ret) {
        unsigned long v;
        char *end;

        if (isempty(s) || !strchr("0123456789", s[0]))
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || *end != '\0' || v > max)
                return -ERANGE;
        *ret = (unsigned) v;
        return 0;
}

static int add_claims(Ctl *ctl, const char *arg) {
        const char *p = arg;

        /* "a,b" and repeated --claim= both work */
        while (*p) {
                size_t n = strcspn(p, ",");
                char **l;
                size_t k = strv_length(ctl->claims);

                if (n > 0) {
                        l = realloc(ctl->claims, (k + 2) * sizeof(char *));
                        if (!l)
                                return -ENOMEM;
                        ctl->claims = l;
                        l[k] = strndup(p, n);
                        l[k + 1] = NULL;
                        if (!l[k])
                                return -ENOMEM;
                }
                p += n;
                if (*p == ',')
                        p++;
        }
        return 0;
}

/* Returns 0 to go on, or an exit code (> 0) / -errno to stop with. *ret_help: --help given. */
static int parse_argv(Ctl *ctl, int argc, char *argv[], bool *ret_help) {
        int c, r;

        *ret_help = false;
        ctl->status = DTASK_STATUS_ANY;

        /* permuting: options may come before and after the verb */
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        *ret_help = true;
                        break;
                case ARG_VERSION:
                        printf("dtaskctl %s\n", PACKAGE_VERSION);
                        return -ECANCELED; /* done: exit 0 */
                case ARG_URL:
                        free(ctl->url);
                        ctl->url = strdup(optarg);
                        if (!ctl->url)
                                return ctl_error(ENOMEM, "Out of memory.");
                        break;
                case ARG_API_KEY:
                        erase_and_free(ctl->api_key);
                        ctl->api_key = strdup(optarg);
                        if (!ctl->api_key)
                                return ctl_error(ENOMEM, "Out of memory.");
                        break;
                case ARG_API_KEY_FILE: {
                        char *key = NULL;
                        size_t n;

                        r = ctl_read_file(optarg, 4096, &key);
                        if (r < 0)
                                return r;
                        n = strcspn(key, "\r\n");
                        if (key[n + strspn(key + n, "\r\n")] != '\0') {
                                erase_and_free(key);
                                return ctl_usage(NULL, "%s holds more than one line; expected just the API key.", optarg);
                        }
                        key[n] = '\0';
                        erase_and_free(ctl->api_key);
                        ctl->api_key = key;
                        break;
                }
                case ARG_TIMEOUT: {
                        usec_t t;

                        if (duration_parse(optarg, &t) < 0 || t == 0)
                                return ctl_usage(NULL, "Invalid --timeout=%s: use seconds or a duration (30s, 2min).",
                                                 optarg);
                        ctl->timeout_usec = t;
                        break;
                }
                case ARG_JSON:
                        if (!optarg || streq(optarg, "short"))
                                ctl->json = CTL_JSON_SHORT;
                        else if (streq(optarg, "pretty"))
                                ctl->json = CTL_JSON_PRETTY;
                        else
                                return ctl_usage(NULL, "Invalid --json=%s: use short or pretty.", optarg);
                        break;
                case ARG_NAME:
                        ctl->given |= CTL_OPT_NAME;
                        ctl->name = optarg;
                        break;
                case ARG_LANGUAGE:
                        ctl->given |= CTL_OPT_LANGUAGE;
                        ctl->language = optarg;
                        break;
                case ARG_TTL:
                        ctl->given |= CTL_OPT_TTL;
                        ctl->ttl = optarg;
                        break;
                case ARG_INPUT:
                        ctl->given |= CTL_OPT_INPUT;
                        ctl->input = optarg;
                        break;
                case ARG_INPUT_FILE:
                        ctl->given |= CTL_OPT_INPUT_FILE;
                        ctl->input_file = optarg;
                        break;
                case ARG_IDEMPOTENCY_KEY:
                        ctl->given |= CTL_OPT_IDEMPOTENCY_KEY;
                        ctl->idempotency_key = optarg;
                        break;
                case ARG_WAIT:
                        ctl->given |= CTL_OPT_WAIT;
                        ctl->wait = true;
                        ctl->wait_usec = 0;
                        if (optarg) {
                                usec_t t;

                                if (duration_parse(optarg, &t) < 0 || t == 0)
                                        return ctl_usage(NULL, "Invalid --wait=%s: use seconds or a duration (30s, 5min).",
                                                         optarg);
                                ctl->wait_usec = t;
                        }
                        break;
                case ARG_STATUS:
                        ctl->given |= CTL_OPT_STATUS;
                        ctl->status = dtask_status_from_string(optarg);
                        if (ctl->status == DTASK_STATUS_ANY)
                                return ctl_usage(NULL,
                                                 "Invalid --status=%s: use Pending, InProgress, Completed, Failed, "
                                                 "Expired or Cancelled.",
                                                 optarg);
                        break;
                case ARG_LIMIT:
                        ctl->given |= CTL_OPT_LIMIT;
                        if (parse_unsigned(optarg, UINT32_MAX, &ctl->limit) < 0 || ctl->limit == 0)
                                return ctl_usage(NULL, "Invalid --limit=%s: use a positive number.", optarg);
                        break;
                case ARG_AFTER:
                        ctl->given |= CTL_OPT_AFTER;
                        if (isempty(optarg))
                                return ctl_usage(NULL, "--after= needs a cursor.");
                        ctl->after = optarg;
                        break;
                case ARG_ALL:
                        ctl->given |= CTL_OPT_ALL;
                        ctl->all = true;
                        break;
                case ARG_CLAIM:
                        ctl->given |= CTL_OPT_CLAIM;
                        if (add_claims(ctl, optarg) < 0)
                                return ctl_error(ENOMEM, "Out of memory.");
                        break;
                case ARG_EXPIRES:
                        ctl->given |= CTL_OPT_EXPIRES;
                        ctl->expires = optarg;
                        break;
                case ':':
                        return ctl_usage(NULL, "Option %s needs an argument.", argv[optind - 1]);
                case '?':
                        if (optopt != 0)
                                return ctl_usage(NULL, "Unknown option -%c.", optopt);
                        return ctl_usage(NULL, "Unknown option %s.", argv[optind - 1]);
                default:
                        return ctl_usage(NULL, "Unhandled option.");
                }
        }
        return 0;
}

static const Verb *find_verb(char **args, size_t n_args, size_t *ret_consumed) {
        if (n_args == 0)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                const Verb *v = &verbs[i];

                if (!v->group && streq(args[0], v->name)) {
                        *ret_consumed = 1;
                        return v;
                }
                if (v->group && streq(args[0], v->group) && n_args >= 2 && streq(args[1], v->name)) {
                        *ret_consumed = 2;
                        return v;
                }
        }
        return NULL;
}

static void help_group(const char *group) {
        printf("dtaskctl %s COMMAND ...\n\n", group);
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (verbs[i].group && streq(verbs[i].group, group))
                        printf("  %s\n", verbs[i].synopsis);
}

static int run(int argc, char *argv[]) {
        _cleanup_(ctl_done) Ctl ctl = {};
        const Verb *v;
        char **args;
        size_t n_args, consumed = 0, verb_args;
        bool help;
        int r;

        r = parse_argv(&ctl, argc, argv, &help);
        if (r == -ECANCELED)
                return CTL_EXIT_OK;
        if (r != 0)
                return r;

        args = argv + optind;
        n_args = (size_t) (argc - optind);

        if (n_args == 0) {
                if (help) {
                        help_global();
                        return CTL_EXIT_OK;
                }
                return ctl_usage(NULL, "No command given.");
        }

        v = find_verb(args, n_args, &consumed);
        if (!v) {
                if (streq(args[0], "keys")) {
                        if (help || n_args == 1) {
                                help_group("keys");
                                return help ? CTL_EXIT_OK : CTL_EXIT_USAGE;
                        }
                        return ctl_usage("keys", "Unknown command \"keys %s\".", args[1]);
                }
                if (streq(args[0], "help")) {
                        help_global();
                        return CTL_EXIT_OK;
                }
                return ctl_usage(NULL, "Unknown command \"%s\".", args[0]);
        }

        if (help) {
                help_verb(v);
                return CTL_EXIT_OK;
        }

        /* options of other verbs are mistakes, not something to ignore */
        for (unsigned bit = 1; bit != 0 && bit <= ctl.given; bit <<= 1)
                if ((ctl.given & bit) && !(v->options & bit)) {
                        char verb[64];

                        snprintf(verb, sizeof verb, "%s%s%s", strempty(v->group), v->group ? " " : "", v->name);
                        return ctl_usage(verb, "Option %s does not apply to \"%s\".", option_name(bit), verb);
                }

        verb_args = n_args - consumed;
        if (verb_args < v->min_args || verb_args > v->max_args) {
                char verb[64];

                snprintf(verb, sizeof verb, "%s%s%s", strempty(v->group), v->group ? " " : "", v->name);
                return ctl_usage(verb, "Usage: dtaskctl %s", v->synopsis);
        }

        return v->run(&ctl, args + consumed, verb_args);
}

int main(int argc, char *argv[]) {
        int r;

        r = run(argc, argv);
        if (r < 0)
                return CTL_EXIT_ERROR;
        return r;
}
