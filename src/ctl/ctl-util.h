/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdio.h>

#include "dtask.h"
#include "macro.h"

/* Shared state and helpers of dtaskctl's verb groups (ctl-tasks.c, ctl-keys.c). */

/* Exit codes: 0 success, 1 error, 2 usage; `submit --wait` exits with the task's status
 * number for Failed (3), Expired (4) and Cancelled (5). */
#define CTL_EXIT_OK 0
#define CTL_EXIT_ERROR 1
#define CTL_EXIT_USAGE 2

typedef enum CtlJson {
        CTL_JSON_OFF,
        CTL_JSON_SHORT,
        CTL_JSON_PRETTY,
} CtlJson;

/* Options a verb may accept; the global ones (--url, --api-key, --json, …) are always fine. */
typedef enum CtlOption {
        CTL_OPT_NAME = 1 << 0,
        CTL_OPT_LANGUAGE = 1 << 1,
        CTL_OPT_TTL = 1 << 2,
        CTL_OPT_INPUT = 1 << 3,
        CTL_OPT_INPUT_FILE = 1 << 4,
        CTL_OPT_IDEMPOTENCY_KEY = 1 << 5,
        CTL_OPT_WAIT = 1 << 6,
        CTL_OPT_STATUS = 1 << 7,
        CTL_OPT_LIMIT = 1 << 8,
        CTL_OPT_AFTER = 1 << 9,
        CTL_OPT_ALL = 1 << 10,
        CTL_OPT_CLAIM = 1 << 11,
        CTL_OPT_EXPIRES = 1 << 12,
} CtlOption;

typedef struct Ctl {
        /* global */
        char *url;
        char *api_key;          /* secret: erased when freed, never printed */
        uint64_t timeout_usec;  /* 0: the library's default */
        CtlJson json;

        /* verb options */
        unsigned given;         /* CtlOption mask of the verb options on the command line */
        const char *name;
        const char *language;
        const char *ttl;
        const char *input;
        const char *input_file;
        const char *idempotency_key;
        bool wait;              /* --wait given */
        uint64_t wait_usec;     /* --wait=SECONDS; 0: until the task finishes */
        DtaskStatus status;
        unsigned limit;
        const char *after;
        bool all;
        char **claims;
        const char *expires;
} Ctl;

void ctl_done(Ctl *ctl);

/* Prints "message" (with %m for -error) to stderr; returns -abs(error) (or -EINVAL for 0). */
int ctl_error(int error, const char *format, ...) _printf_(2, 3);
/* Prints a usage error and the hint to --help; returns CTL_EXIT_USAGE. */
int ctl_usage(const char *verb, const char *format, ...) _printf_(2, 3);

/* A blocking client for the REST API (URL and key from the options or the environment). */
int ctl_client(Ctl *ctl, DtaskClient **ret);
DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskClient *, dtask_client_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTask *, dtask_task_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DtaskTaskList *, dtask_task_list_free);

/* Prints why an API call failed: the server's problem detail (and field errors) when there
 * is one, else the errno text; returns error. what: "create the task", … */
int ctl_api_error(Ctl *ctl, DtaskClient *c, int error, const char *what);

/* Reads a whole file ("-": stdin) of at most max bytes; refuses NUL bytes. */
int ctl_read_file(const char *path, size_t max, char **ret);

/* Prints JSON text in the --json mode chosen, followed by a newline. */
int ctl_print_json(Ctl *ctl, const char *json);
/* A task for humans: fields, then stdout and stderr of the program. */
void ctl_print_task(const DtaskTask *t);
