/* SPDX-License-Identifier: MIT */
/* dtask-bench: the load generator of bench/run for the task workloads, a client of libdtask
 * like any other program. Not part of the product; built by bench/run into $BUILD/bench/.
 *
 *   dtask-bench latency N CODE-FILE LANG TTL
 *        N tasks one after the other: create, then GET ?wait=60 until terminal; the client's
 *        wall time of each (create sent → terminal reply received).
 *   dtask-bench submit N CONCURRENCY CODE-FILE LANG TTL [DISTINCT-COMMENT]
 *        creates N tasks with CONCURRENCY creates in flight, then waits until every one of
 *        them is terminal (GET ?wait=60). With DISTINCT-COMMENT ("#", "//"), each program
 *        gets a line "<comment> bench <nonce> <i>" appended: N distinct programs.
 *   dtask-bench window N WINDOW CODE-FILE LANG TTL
 *        keeps WINDOW tasks in flight (create → wait until terminal → next create) until N
 *        tasks ran.
 *   dtask-bench exec-seq N -- COMMAND...
 *        runs COMMAND N times one after the other (stdout to /dev/null) and prints the wall
 *        time of each: the floor of the end-to-end latency.
 *
 * The API is $DTASK_API_URL with the key $DTASK_API_KEY; tasks are named $DTASK_BENCH_NAME. Output: JSON lines, first
 * {"t0": µs} (CLOCK_REALTIME when the first request was queued), then one object per task. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dtask.h>

extern char **environ;

static uint64_t now_usec(clockid_t clock) {
        struct timespec ts;

        clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

static char *read_file(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t n = 0, a = 0;

        if (!f)
                return NULL;
        for (;;) {
                if (a - n < 4096) {
                        a = a ? a * 2 : 8192;
                        buf = realloc(buf, a);
                        if (!buf)
                                abort();
                }
                size_t k = fread(buf + n, 1, a - n - 1, f);
                if (k == 0)
                        break;
                n += k;
        }
        fclose(f);
        buf[n] = '\0';
        return buf;
}

/* JSON string of s (ASCII control characters and quotes escaped). */
static void print_json_string(const char *s) {
        if (!s) {
                fputs("null", stdout);
                return;
        }
        putchar('"');
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if (*p == '"' || *p == '\\')
                        printf("\\%c", *p);
                else if (*p < 0x20)
                        printf("\\u%04x", *p);
                else
                        putchar(*p);
        }
        putchar('"');
}

static void print_task(unsigned i, const DtaskTask *t, uint64_t client_start, uint64_t client_end, int error) {
        printf("{\"i\":%u,\"error\":%d,\"id\":", i, error);
        print_json_string(t ? t->id : NULL);
        if (t) {
                printf(",\"status\":%d,\"verdict\":", (int) t->status);
                print_json_string(t->verdict);
                printf(",\"result\":");
                print_json_string(t->result);
                printf(",\"attempt\":%u,\"created\":%" PRIu64 ",\"started\":%" PRIu64 ",\"completed\":%" PRIu64
                       ",\"expires\":%" PRIu64,
                       t->attempt, t->created_at, t->started_at, t->completed_at, t->expires_at);
        }
        printf(",\"client_start\":%" PRIu64 ",\"client_end\":%" PRIu64 "}\n", client_start, client_end);
}

/* $DTASK_BENCH_NAME: the name of every task, so that bench/run finds (and removes) its own. */
static const char *task_name(void) {
        const char *n = getenv("DTASK_BENCH_NAME");
        return n && *n ? n : "bench";
}

static DtaskLanguage parse_language(const char *s) {
        DtaskLanguage l = dtask_language_from_string(s);

        if (l == DTASK_LANGUAGE_UNKNOWN) {
                fprintf(stderr, "unknown language %s\n", s);
                exit(2);
        }
        return l;
}

/* ---- shared state of the asynchronous modes --------------------------------------------- */

typedef struct Bench Bench;

typedef struct Slot {
        Bench *bench;
        unsigned i;
        char id[64];
        uint64_t client_start;
} Slot;

struct Bench {
        DtaskClient *client;
        sd_event *event;
        const char *code;
        const char *distinct_comment;
        char nonce[17];
        DtaskLanguage language;
        const char *ttl;

        unsigned n, concurrency;
        unsigned next_create, created, creates_in_flight;
        unsigned next_wait, waits_in_flight, done;
        bool window; /* window mode: create → wait → next create, per slot */
        Slot *slots;
        int failures;
};

#define WAITS_IN_FLIGHT 6U /* libdtask's pool has 8 connections: leave room for creates */

static int start_create(Bench *b);
static int start_wait(Bench *b, Slot *s);

static void record(Bench *b, Slot *s, const DtaskTask *t, int error) {
        print_task(s->i, t, s->client_start, now_usec(CLOCK_REALTIME), error);
        if (error < 0)
                b->failures++;
        b->done++;
        if (b->done == b->n) {
                fflush(stdout);
                sd_event_exit(b->event, 0);
        }
}

/* Queues what may be queued now. */
static void pump(Bench *b) {
        if (b->window) {
                while (b->next_create < b->n && b->creates_in_flight + b->waits_in_flight < b->concurrency)
                        if (start_create(b) < 0)
                                return;
                return;
        }
        while (b->next_create < b->n && b->creates_in_flight < b->concurrency)
                if (start_create(b) < 0)
                        return;
        /* the waits once every task exists: the long polls must not hold up the creates */
        if (b->created < b->n)
                return;
        while (b->next_wait < b->n && b->waits_in_flight < WAITS_IN_FLIGHT)
                if (start_wait(b, &b->slots[b->next_wait++]) < 0)
                        return;
}

static void on_wait(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply, void *userdata) {
        Slot *s = userdata;
        Bench *b = s->bench;

        b->waits_in_flight--;
        if (error >= 0 && !dtask_status_is_terminal(task->status)) {
                /* the wait ran out: ask again */
                if (start_wait(b, s) < 0)
                        record(b, s, NULL, -EIO);
                return;
        }
        if (error < 0)
                fprintf(stderr, "GET %s: %s\n", s->id, reply->problem_detail ?: strerror(-error));
        record(b, s, error < 0 ? NULL : task, error);
        pump(b);
}

static int start_wait(Bench *b, Slot *s) {
        int r;

        r = dtask_get(b->client, s->id, 60, on_wait, s, NULL);
        if (r < 0) {
                fprintf(stderr, "dtask_get: %s\n", strerror(-r));
                return r;
        }
        b->waits_in_flight++;
        return 0;
}

static void on_created(DtaskClient *c, int error, const DtaskTask *task, const DtaskReply *reply, void *userdata) {
        Slot *s = userdata;
        Bench *b = s->bench;

        b->creates_in_flight--;
        b->created++;
        if (error < 0) {
                fprintf(stderr, "POST /api/tasks: %s\n", reply->problem_detail ?: strerror(-error));
                record(b, s, NULL, error);
                pump(b);
                return;
        }
        snprintf(s->id, sizeof s->id, "%s", task->id);
        if (b->window && start_wait(b, s) < 0)
                record(b, s, NULL, -EIO);
        pump(b);
}

static int start_create(Bench *b) {
        Slot *s = &b->slots[b->next_create];
        char *code = NULL;
        int r;

        s->bench = b;
        s->i = b->next_create;
        if (b->distinct_comment) {
                if (asprintf(&code, "%s\n%s bench %s %u\n", b->code, b->distinct_comment, b->nonce, s->i) < 0)
                        return -ENOMEM;
        }
        s->client_start = now_usec(CLOCK_REALTIME);
        r = dtask_create(b->client,
                         &(DtaskTaskSpec) {
                                 .name = task_name(),
                                 .code = code ?: b->code,
                                 .language = b->language,
                                 .ttl = b->ttl,
                         },
                         on_created, s, NULL);
        free(code);
        if (r < 0) {
                fprintf(stderr, "dtask_create: %s\n", strerror(-r));
                return r;
        }
        b->next_create++;
        b->creates_in_flight++;
        return 0;
}

static int run_async(unsigned n, unsigned concurrency, bool window, const char *code_file, const char *language,
                     const char *ttl, const char *distinct_comment) {
        Bench b = {
                .n = n,
                .concurrency = concurrency,
                .window = window,
                .language = parse_language(language),
                .ttl = ttl,
                .distinct_comment = distinct_comment,
        };
        unsigned char rnd[8];
        int r;

        b.code = read_file(code_file);
        if (!b.code) {
                fprintf(stderr, "%s: %m\n", code_file);
                return 1;
        }
        if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
                return 1;
        for (size_t i = 0; i < sizeof rnd; i++)
                snprintf(b.nonce + 2 * i, 3, "%02x", rnd[i]);
        b.slots = calloc(n, sizeof(Slot));
        if (!b.slots)
                return 1;
        r = sd_event_default(&b.event);
        if (r < 0)
                return 1;
        r = dtask_client_new(&b.client, b.event, getenv("DTASK_API_URL"), getenv("DTASK_API_KEY"));
        if (r < 0) {
                fprintf(stderr, "dtask_client_new: %s\n", strerror(-r));
                return 1;
        }
        dtask_client_set_timeout(b.client, 120 * 1000000ULL);

        printf("{\"t0\":%" PRIu64 "}\n", now_usec(CLOCK_REALTIME));
        pump(&b);
        if (n > 0) {
                r = sd_event_loop(b.event);
                if (r < 0) {
                        fprintf(stderr, "sd_event_loop: %s\n", strerror(-r));
                        return 1;
                }
        }
        dtask_client_free(b.client);
        sd_event_unref(b.event);
        return b.failures > 0 ? 3 : 0;
}

/* ---- sequential modes ------------------------------------------------------------------- */

static int run_latency(unsigned n, const char *code_file, const char *language, const char *ttl) {
        DtaskClient *c;
        char *code = read_file(code_file);
        DtaskLanguage l = parse_language(language);
        int r, failures = 0;

        if (!code) {
                fprintf(stderr, "%s: %m\n", code_file);
                return 1;
        }
        r = dtask_client_new_blocking(&c, getenv("DTASK_API_URL"), getenv("DTASK_API_KEY"));
        if (r < 0) {
                fprintf(stderr, "dtask_client_new_blocking: %s\n", strerror(-r));
                return 1;
        }
        printf("{\"t0\":%" PRIu64 "}\n", now_usec(CLOCK_REALTIME));
        for (unsigned i = 0; i < n; i++) {
                DtaskTask *t = NULL, *done = NULL;
                uint64_t start = now_usec(CLOCK_REALTIME), end;

                r = dtask_create_sync(c, &(DtaskTaskSpec) { .name = task_name(), .code = code, .language = l, .ttl = ttl },
                                      &t);
                if (r >= 0) {
                        do {
                                done = dtask_task_free(done);
                                r = dtask_get_sync(c, t->id, 60, &done);
                        } while (r >= 0 && !dtask_status_is_terminal(done->status));
                }
                end = now_usec(CLOCK_REALTIME);
                if (r < 0) {
                        const DtaskReply *reply = dtask_client_get_last_reply(c);
                        fprintf(stderr, "task %u: %s\n", i, reply->problem_detail ?: strerror(-r));
                        failures++;
                }
                print_task(i, r < 0 ? NULL : done, start, end, r < 0 ? r : 0);
                dtask_task_free(t);
                dtask_task_free(done);
        }
        dtask_client_free(c);
        free(code);
        return failures > 0 ? 3 : 0;
}

static int run_exec_seq(unsigned n, char **argv) {
        posix_spawn_file_actions_t fa;
        int failures = 0;

        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
        for (unsigned i = 0; i < n; i++) {
                uint64_t start = now_usec(CLOCK_MONOTONIC), end;
                pid_t pid;
                int status = 0, r;

                r = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
                if (r != 0) {
                        fprintf(stderr, "%s: %s\n", argv[0], strerror(r));
                        return 1;
                }
                while (waitpid(pid, &status, 0) < 0)
                        if (errno != EINTR)
                                return 1;
                end = now_usec(CLOCK_MONOTONIC);
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                        failures++;
                printf("{\"i\":%u,\"usec\":%" PRIu64 ",\"status\":%d}\n", i, end - start, status);
        }
        posix_spawn_file_actions_destroy(&fa);
        return failures > 0 ? 3 : 0;
}

static unsigned parse_uint(const char *s) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);

        if (*s == '\0' || *end != '\0' || v == 0 || v > 1000000) {
                fprintf(stderr, "not a count: %s\n", s);
                exit(2);
        }
        return (unsigned) v;
}

int main(int argc, char *argv[]) {
        setvbuf(stdout, NULL, _IOLBF, 0);

        if (argc >= 6 && strcmp(argv[1], "latency") == 0)
                return run_latency(parse_uint(argv[2]), argv[3], argv[4], argv[5]);
        if (argc >= 7 && strcmp(argv[1], "submit") == 0)
                return run_async(parse_uint(argv[2]), parse_uint(argv[3]), false, argv[4], argv[5], argv[6],
                                 argc >= 8 ? argv[7] : NULL);
        if (argc >= 7 && strcmp(argv[1], "window") == 0)
                return run_async(parse_uint(argv[2]), parse_uint(argv[3]), true, argv[4], argv[5], argv[6], NULL);
        if (argc >= 5 && strcmp(argv[1], "exec-seq") == 0 && strcmp(argv[3], "--") == 0)
                return run_exec_seq(parse_uint(argv[2]), argv + 4);

        fprintf(stderr,
                "usage: dtask-bench latency N CODE-FILE LANG TTL\n"
                "       dtask-bench submit N CONCURRENCY CODE-FILE LANG TTL [DISTINCT-COMMENT]\n"
                "       dtask-bench window N WINDOW CODE-FILE LANG TTL\n"
                "       dtask-bench exec-seq N -- COMMAND...\n");
        return 2;
}
