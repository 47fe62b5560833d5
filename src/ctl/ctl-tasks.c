/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <time.h>

#include "ctl-tasks.h"
#include "time-util.h"
#include "uuid-util.h"

#define CTL_MAX_CODE_SIZE ((size_t) 16U * 1024U * 1024U)  /* the server's limit is smaller; it says so */
#define CTL_MAX_INPUT_SIZE ((size_t) 64U * 1024U * 1024U)
#define CTL_DEFAULT_TTL "00:30:00"
#define CTL_WAIT_CHUNK_SEC 60U                            /* ?wait= at most 60 s per request (SPEC §3) */
#define CTL_LIST_PAGE_MAX 1000U

static uint64_t now_mono(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static int check_id(const char *verb, const char *id) {
        if (!uuid_is_valid(id))
                return ctl_usage(verb, "\"%s\" is not a task id (a UUID).", id);
        return 0;
}

/* Waits until the task is terminal, or ctl->wait_usec passed (0: no limit). *task is replaced
 * by the latest state. Returns 1 when terminal, 0 when the time ran out, < 0 on errors. */
static int wait_for_task(Ctl *ctl, DtaskClient *c, DtaskTask **task) {
        uint64_t deadline = ctl->wait_usec > 0 ? now_mono() + ctl->wait_usec : UINT64_MAX;

        while (!dtask_status_is_terminal((*task)->status)) {
                _cleanup_(dtask_task_freep) DtaskTask *t = NULL;
                uint64_t now = now_mono();
                unsigned sec = CTL_WAIT_CHUNK_SEC;
                int r;

                if (now >= deadline)
                        return 0;
                if (deadline != UINT64_MAX)
                        sec = (unsigned) MIN((uint64_t) CTL_WAIT_CHUNK_SEC,
                                             (deadline - now + USEC_PER_SEC - 1) / USEC_PER_SEC);
                r = dtask_get_sync(c, (*task)->id, sec, &t);
                if (r < 0)
                        return ctl_api_error(ctl, c, r, "wait for the task");
                dtask_task_free(*task);
                *task = TAKE_PTR(t);
        }
        return 1;
}

static DtaskLanguage language_from_path(const char *path) {
        const char *dot = strrchr(path, '.');

        if (!dot || strchr(dot, '/'))
                return DTASK_LANGUAGE_UNKNOWN;
        if (streq(dot, ".py"))
                return DTASK_LANGUAGE_PYTHON;
        if (streq(dot, ".cs"))
                return DTASK_LANGUAGE_CSHARP;
        return DTASK_LANGUAGE_UNKNOWN;
}

/* The exit code of `submit --wait` for a finished task: 0 Completed, else its status number. */
static int exit_code_of(const DtaskTask *t) {
        return t->status == DTASK_STATUS_COMPLETED ? CTL_EXIT_OK : (int) t->status;
}

int verb_submit(Ctl *ctl, char **args, size_t n_args) {
        _cleanup_(dtask_client_freep) DtaskClient *c = NULL;
        _cleanup_(dtask_task_freep) DtaskTask *task = NULL;
        _cleanup_free_ char *code = NULL, *input = NULL, *name = NULL;
        const char *path = args[0];
        DtaskTaskSpec spec;
        DtaskLanguage language;
        usec_t ttl;
        int r;

        if (ctl->input && ctl->input_file)
                return ctl_usage("submit", "--input= and --input-file= cannot be combined.");
        if (streq(path, "-") && ctl->input_file && streq(ctl->input_file, "-"))
                return ctl_usage("submit", "The code and --input-file= cannot both come from standard input.");

        if (ctl->language) {
                language = dtask_language_from_string(ctl->language);
                if (language == DTASK_LANGUAGE_UNKNOWN)
                        return ctl_usage("submit", "Unknown language \"%s\": use python or csharp.", ctl->language);
        } else {
                language = language_from_path(path);
                if (language == DTASK_LANGUAGE_UNKNOWN)
                        return ctl_usage("submit", "Cannot tell the language of %s: pass --language=python|csharp.",
                                         streq(path, "-") ? "standard input" : path);
        }
        if (ctl->ttl && (duration_parse(ctl->ttl, &ttl) < 0 || ttl == 0))
                return ctl_usage("submit",
                                 "Invalid --ttl=%s: use a TimeSpan (00:30:00, 1.00:00:00), seconds (1800) or a "
                                 "duration (30min, 2h).",
                                 ctl->ttl);
        if (ctl->name)
                name = strdup(ctl->name);
        else if (streq(path, "-"))
                name = strdup("stdin");
        else {
                const char *slash = strrchr(path, '/');
                name = strdup(slash ? slash + 1 : path);
        }
        if (!name)
                return ctl_error(ENOMEM, "Out of memory.");
        if (isempty(name))
                return ctl_usage("submit", "The task name must not be empty: pass --name=NAME.");

        r = ctl_read_file(path, CTL_MAX_CODE_SIZE, &code);
        if (r < 0)
                return r;
        if (isempty(code))
                return ctl_error(EINVAL, "%s is empty: there is no code to run.",
                                 streq(path, "-") ? "Standard input" : path);
        if (ctl->input_file) {
                r = ctl_read_file(ctl->input_file, CTL_MAX_INPUT_SIZE, &input);
                if (r < 0)
                        return r;
        } else if (ctl->input) {
                input = strdup(ctl->input);
                if (!input)
                        return ctl_error(ENOMEM, "Out of memory.");
        }

        r = ctl_client(ctl, &c);
        if (r < 0)
                return r;

        spec = (DtaskTaskSpec) {
                .name = name,
                .code = code,
                .language = language,
                .input_data = input,
                .ttl = ctl->ttl ?: CTL_DEFAULT_TTL,
                .idempotency_key = ctl->idempotency_key,
        };
        r = dtask_create_sync(c, &spec, &task);
        if (r == -EINVAL && dtask_client_get_last_reply(c)->http_status == 0)
                return ctl_usage("submit", "Invalid task: the name, code, language or --idempotency-key= is not acceptable.");
        if (r < 0)
                return ctl_api_error(ctl, c, r, "create the task");

        if (!ctl->wait) {
                if (ctl->json != CTL_JSON_OFF)
                        ctl_print_json(ctl, task->json);
                else
                        puts(task->id);
                return CTL_EXIT_OK;
        }

        r = wait_for_task(ctl, c, &task);
        if (r < 0)
                return r;
        if (r == 0) {
                fprintf(stderr, "Task %s is still %s after %" PRIu64 " s.\n", task->id,
                        strna(dtask_status_to_string(task->status)), ctl->wait_usec / USEC_PER_SEC);
                if (ctl->json != CTL_JSON_OFF)
                        ctl_print_json(ctl, task->json);
                else
                        puts(task->id);
                return CTL_EXIT_ERROR;
        }

        if (ctl->json != CTL_JSON_OFF)
                ctl_print_json(ctl, task->json);
        else {
                if (task->result)
                        fputs(task->result, stdout);
                if (task->error_message)
                        fputs(task->error_message, stderr);
                if (task->status != DTASK_STATUS_COMPLETED) {
                        fflush(stdout);
                        if (!isempty(task->error_message) &&
                            task->error_message[strlen(task->error_message) - 1] != '\n')
                                fputc('\n', stderr);
                        fprintf(stderr, "Task %s %s%s%s%s.\n", task->id,
                                task->status == DTASK_STATUS_EXPIRED     ? "expired"
                                : task->status == DTASK_STATUS_CANCELLED ? "was cancelled"
                                                                         : "failed",
                                task->verdict ? " (" : "", strempty(task->verdict), task->verdict ? ")" : "");
                }
        }
        fflush(stdout);
        return exit_code_of(task);
}

int verb_get(Ctl *ctl, char **args, size_t n_args) {
        _cleanup_(dtask_client_freep) DtaskClient *c = NULL;
        _cleanup_(dtask_task_freep) DtaskTask *task = NULL;
        int r;

        r = check_id("get", args[0]);
        if (r != 0)
                return r;
        r = ctl_client(ctl, &c);
        if (r < 0)
                return r;
        r = dtask_get_sync(c, args[0], 0, &task);
        if (r < 0)
                return ctl_api_error(ctl, c, r, "get the task");
        if (ctl->wait) {
                r = wait_for_task(ctl, c, &task);
                if (r < 0)
                        return r;
        }
        if (ctl->json != CTL_JSON_OFF)
                ctl_print_json(ctl, task->json);
        else
                ctl_print_task(task);
        return CTL_EXIT_OK;
}

static void print_row(const DtaskTask *t) {
        char created[DTASK_TIMESTAMP_MAX];

        printf("%-36s %-10s %-8s %-27s %s\n", t->id, t->status_name ?: strna(dtask_status_to_string(t->status)),
               strna(dtask_language_to_string(t->language)), dtask_timestamp_format(t->created_at, created, sizeof created),
               strna(t->name));
}

int verb_list(Ctl *ctl, char **args, size_t n_args) {
        _cleanup_(dtask_client_freep) DtaskClient *c = NULL;
        _cleanup_free_ char *cursor = NULL;
        unsigned want = ctl->limit > 0 ? ctl->limit : 100, shown = 0;
        bool header = false;
        int r;

        if (ctl->all && (ctl->given & CTL_OPT_LIMIT))
                return ctl_usage("list", "--all and --limit= cannot be combined.");

        r = ctl_client(ctl, &c);
        if (r < 0)
                return r;

        if (ctl->after) {
                cursor = strdup(ctl->after);
                if (!cursor)
                        return ctl_error(ENOMEM, "Out of memory.");
        }
        if (ctl->json != CTL_JSON_OFF)
                fputs("[", stdout);

        for (;;) {
                _cleanup_(dtask_task_list_freep) DtaskTaskList *page = NULL;
                unsigned n = ctl->all ? CTL_LIST_PAGE_MAX : MIN(want - shown, CTL_LIST_PAGE_MAX);

                r = dtask_list_sync(c, ctl->status, n, cursor, &page);
                if (r < 0) {
                        if (ctl->json != CTL_JSON_OFF)
                                fputs("]\n", stdout);
                        return ctl_api_error(ctl, c, r, "list tasks");
                }

                for (size_t i = 0; i < page->n_tasks; i++) {
                        const DtaskTask *t = page->tasks[i];

                        if (ctl->json == CTL_JSON_PRETTY)
                                printf("%s\n", shown > 0 ? "," : "");
                        else if (ctl->json == CTL_JSON_SHORT && shown > 0)
                                fputs(",", stdout);
                        if (ctl->json != CTL_JSON_OFF)
                                fputs(t->json, stdout);
                        else {
                                if (!header) {
                                        printf("%-36s %-10s %-8s %-27s %s\n", "ID", "STATUS", "LANGUAGE", "CREATED", "NAME");
                                        header = true;
                                }
                                print_row(t);
                        }
                        shown++;
                }

                free(cursor);
                cursor = TAKE_PTR(page->next_cursor);
                if (!cursor || (!ctl->all && shown >= want))
                        break;
        }

        if (ctl->json != CTL_JSON_OFF)
                fputs(ctl->json == CTL_JSON_PRETTY && shown > 0 ? "\n]\n" : "]\n", stdout);
        else if (shown == 0)
                puts("No tasks.");
        fflush(stdout);
        if (cursor)
                fprintf(stderr, "More tasks: dtaskctl list --after=%s%s%s\n", cursor,
                        ctl->status != DTASK_STATUS_ANY ? " --status=" : "",
                        ctl->status != DTASK_STATUS_ANY ? dtask_status_to_string(ctl->status) : "");
        return CTL_EXIT_OK;
}

static int retry_or_cancel(Ctl *ctl, const char *verb, const char *id) {
        _cleanup_(dtask_client_freep) DtaskClient *c = NULL;
        _cleanup_(dtask_task_freep) DtaskTask *task = NULL;
        bool retry = streq(verb, "retry");
        int r;

        r = check_id(verb, id);
        if (r != 0)
                return r;
        r = ctl_client(ctl, &c);
        if (r < 0)
                return r;
        r = retry ? dtask_retry_sync(c, id, &task) : dtask_cancel_sync(c, id, &task);
        if (r < 0)
                return ctl_api_error(ctl, c, r, retry ? "retry the task" : "cancel the task");
        if (ctl->json != CTL_JSON_OFF)
                ctl_print_json(ctl, task->json);
        else
                printf("Task %s is %s.\n", task->id, task->status_name ?: strna(dtask_status_to_string(task->status)));
        return CTL_EXIT_OK;
}

int verb_retry(Ctl *ctl, char **args, size_t n_args) {
        return retry_or_cancel(ctl, "retry", args[0]);
}

int verb_cancel(Ctl *ctl, char **args, size_t n_args) {
        return retry_or_cancel(ctl, "cancel", args[0]);
}
