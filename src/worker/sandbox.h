/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>
#include <systemd/sd-event.h>

#include "macro.h"
#include "runner.h"
#include "time-util.h"

/* The sandbox: runs one program (Python, or C# built then run) per SandboxRun, asynchronously
 * on the caller's sd-event loop, and reports a SandboxResult through a callback.
 *
 * Per run: a slot = a dedicated UID/GID from [uid_min, uid_max] (slots are locked with
 * flock() on files in runtime_dir, so several worker processes on one host can share the
 * range); a fresh working directory (a size-limited tmpfs by default) holding only the
 * program; the slot's cgroup with memory (no swap), pids and CPU limits — kept from run to
 * run, checked empty (anything left in it killed) and its statistics counted afresh for each
 * run; rlimits; bubblewrap with every namespace unshared, a read-only /usr, no host /etc beyond
 * what the runtime needs. A slot whose run ended clean (its cgroup seen empty, its working
 * directory removed) stays locked by the sandbox for its next run, which takes it as it is;
 * any other slot goes back to the range, and is cleaned up in full (kill_uid, working
 * directory, cgroup) by whoever takes it next. Stdout and stderr are read concurrently, each
 * up to output_max; stdin is written from the loop. At the TTL deadline, at the max run time,
 * on output overflow or on sandbox_run_kill() the whole cgroup is killed at once. The callback
 * runs only after every process of the run is gone, the cgroup empty and the working directory
 * removed.
 * sandbox_free() gives the slots back and removes the cgroups of the slots it used (those no
 * other process holds).
 *
 * The next run is prepared while the loop is idle (typically while the current run goes on):
 * a slot is taken and a child forked into its cgroup, where it waits to become the next run's
 * bubblewrap. So a sandbox holds as many slots as it had runs at once at its busiest, plus
 * one (two for one run at a time: the slots alternate), and the process has one more child
 * (root, in the prepared slot's cgroup, holding nothing of any run). sandbox_warm() goes one
 * step further for a run that is about to come, in one more slot: see there.
 *
 * Process requirements and side effects of sandbox_new(): runs as root; SIGCHLD must not be
 * SIG_IGN (children are reaped through pidfds, so SIGCHLD need not be blocked); SIGPIPE is
 * set to SIG_IGN if it is still SIG_DFL (stdin of a program that exits early); the process
 * becomes a child subreaper (PR_SET_CHILD_SUBREAPER), so that processes orphaned by a kill
 * are reparented to it — the sandbox reaps those zombies whose UID is in the slot range, and
 * nothing else; the soft RLIMIT_NOFILE is raised to the hard one. On cgroup v2 with the
 * default cgroup root, every process of the worker's cgroup is moved to <own
 * cgroup>/supervisor. */

typedef struct Config Config; /* src/shared/config.h */

typedef struct SandboxSettings {
        uint64_t memory_max;        /* bytes, per run (memory + tmpfs pages; swap off) */
        uint64_t pids_max;          /* tasks per run, threads included */
        uint64_t cpu_quota_percent; /* of one CPU */
        uint64_t file_size_max;     /* RLIMIT_FSIZE */
        uint64_t open_files_max;    /* RLIMIT_NOFILE */
        uint64_t output_max;        /* cap of stdout, and of stderr, each */
        usec_t max_runtime;         /* the worker's own limit of one run (build + run): verdict timeout */
        uid_t uid_min, uid_max;     /* one UID (and GID of the same number) per concurrent run */
        const char *cgroup_root;    /* cgroup path; NULL: default, see cgroup_root_new() */
        const char *runtime_dir;    /* slot locks and working directories; host-wide, shared by all
                                     * workers using the same UID range. NULL: /run/dtask-sandbox */
        const char *cache_dir;      /* C# build cache in <cache_dir>/csharp; NULL: no cache */
        bool workdir_tmpfs;         /* private tmpfs per working directory (default true) */
        const char *bwrap_path;     /* NULL: /usr/bin/bwrap */
        const char *stem_helper_path; /* dtask-sandbox-stem; NULL: found (see sandbox_stem_helper()),
                                       * "": none, the children of runs are forked */
        RunnerSettings runners;
} SandboxSettings;

/* The defaults, matching config-keys.c. */
void sandbox_settings_init(SandboxSettings *s);
/* From the SANDBOX_*, PYTHON_PATH, CSHARP_TOOLCHAIN, *_PATH and CACHE_DIRECTORY keys. Strings
 * are borrowed from c. */
int sandbox_settings_from_config(SandboxSettings *s, const Config *c);

typedef enum SandboxEnd {
        SANDBOX_END_EXITED,       /* the program (or its build) ended by itself */
        SANDBOX_END_EXPIRED,      /* the TTL deadline (task expiresAt) passed: the task is Expired */
        SANDBOX_END_TIMEOUT,      /* the max run time passed: Failed, verdict timeout */
        SANDBOX_END_OUTPUT_LIMIT, /* stdout or stderr went over output_max */
        SANDBOX_END_CANCELLED,    /* sandbox_run_kill(…, SANDBOX_END_CANCELLED) */
        SANDBOX_END_SHUTDOWN,     /* sandbox_run_kill(…, SANDBOX_END_SHUTDOWN): release the task */
        SANDBOX_END_FAILED,       /* the sandbox itself failed (verdict internal_error) */
        _SANDBOX_END_MAX,
        _SANDBOX_END_INVALID = -EINVAL,
} SandboxEnd;

typedef enum SandboxVerdict {
        SANDBOX_VERDICT_OK,
        SANDBOX_VERDICT_RUNTIME_ERROR,
        SANDBOX_VERDICT_COMPILE_ERROR,
        SANDBOX_VERDICT_TIMEOUT, /* also for SANDBOX_END_EXPIRED; the caller makes that Expired */
        SANDBOX_VERDICT_MEMORY_LIMIT,
        SANDBOX_VERDICT_PIDS_LIMIT,
        SANDBOX_VERDICT_OUTPUT_LIMIT,
        SANDBOX_VERDICT_CANCELLED, /* SANDBOX_END_CANCELLED and SANDBOX_END_SHUTDOWN */
        SANDBOX_VERDICT_INTERNAL_ERROR,
        _SANDBOX_VERDICT_MAX,
} SandboxVerdict;

const char *sandbox_end_to_string(SandboxEnd e);    /* "exited", "expired", "timeout", … */
const char *sandbox_verdict_to_string(SandboxVerdict v); /* the API's words: "ok", "runtime_error", … */

typedef struct SandboxResult {
        SandboxEnd end;
        SandboxVerdict verdict;
        /* Verdict precedence: a kill by the sandbox decides (end != EXITED); else an OOM kill →
         * memory_limit, a refused fork → pids_limit (limits hit are failures even if the
         * program then exits 0), a failed build → compile_error, exit 0 → ok, else
         * runtime_error. */
        int exit_code;              /* exit status of the program; -1 when killed by the sandbox
                                     * or never started. A program killed by a signal of its own
                                     * (e.g. the OOM killer) shows 128+signal, as bubblewrap
                                     * reports it. */
        char *stdout_data;          /* NUL-terminated; of the run step (of the build for compile errors) */
        size_t stdout_size;
        char *stderr_data;          /* NUL-terminated; for compile errors: the compiler's diagnostics */
        size_t stderr_size;
        bool output_truncated;      /* stdout or stderr hit output_max */
        bool compiled;              /* a build ran for this run */
        bool cache_hit;             /* the build came from the cache */
        uint64_t oom_kills, pids_max_events, memory_peak, cpu_usec;  /* from the cgroup(s) */
        usec_t duration;            /* wall clock, start to end */
        uid_t uid;                  /* the slot's UID */
        int error;                  /* SANDBOX_END_FAILED: negative errno */
        char *error_message;        /* SANDBOX_END_FAILED: what failed, for errorMessage and the log */
} SandboxResult;

void sandbox_result_done(SandboxResult *r);

typedef struct SandboxRequest {
        Language language;
        const char *code;
        size_t code_size;
        const char *stdin_data; /* may be NULL; copied */
        size_t stdin_size;
        usec_t ttl_deadline;    /* CLOCK_REALTIME, absolute (expiresAt); USEC_INFINITY: none */
        usec_t max_runtime;     /* relative; 0: the settings' max_runtime; USEC_INFINITY: none */
} SandboxRequest;

typedef struct Sandbox Sandbox;
typedef struct SandboxRun SandboxRun;

/* result belongs to the run (valid until sandbox_run_free()); the callback may take the
 * strings out of it (TAKE_PTR) and may free the run. */
typedef void (*SandboxDoneCallback)(SandboxRun *run, SandboxResult *result, void *userdata);
/* The program's process (the last phase's) has exited, or was killed: what is left is the
 * cleanup, before the done callback. Called at most once, from the event loop; must not free
 * the run. */
typedef void (*SandboxExitedCallback)(SandboxRun *run, void *userdata);

/* Checks everything that can be checked up front (root, bwrap, toolchains, UID range not
 * used by any account, cgroup controllers), sets up the cgroup root, runtime and cache
 * directories, and cleans up what crashed workers left in the free slots of the range.
 * *ret_error explains a failure for the operator. */
int sandbox_new(const SandboxSettings *s, Sandbox **ret, char **ret_error);
/* Runs still alive are killed and freed (without their callbacks). */
Sandbox *sandbox_free(Sandbox *sb);
DEFINE_TRIVIAL_CLEANUP_FUNC(Sandbox *, sandbox_free);

/* "v1" or "v2", and where runs' cgroups go: for the startup log line. */
const char *sandbox_cgroup_mode(const Sandbox *sb);
const char *sandbox_cgroup_root(const Sandbox *sb);
/* The dtask-sandbox-stem that spawns the children of runs: the one next to our executable (a
 * build tree), else the installed one; NULL where none was built or found, or since it could
 * not be started: they are forked. */
const char *sandbox_stem_helper(const Sandbox *sb);
/* Number of slots (UIDs) in the range: the most runs this process can have at once. */
unsigned sandbox_slots(const Sandbox *sb);
/* How many runs started now get a slot at once: the next run's child is prepared in one, and
 * the slots that earlier runs left clean are still ours. */
unsigned sandbox_slots_ready(const Sandbox *sb);

/* Starts a run. Copies what it needs from req. Returns < 0 only when nothing was started:
 * -EBUSY when no slot is free, -EINVAL for a bad request, -ENOMEM. Every other failure
 * (working directory, cgroup, bubblewrap…) is reported through the callback as
 * SANDBOX_END_FAILED with error_message. The callback is always dispatched from the event
 * loop, never from within sandbox_start() or sandbox_run_kill(). */
int sandbox_start(Sandbox *sb, sd_event *e, const SandboxRequest *req, SandboxDoneCallback cb, void *userdata,
                  SandboxRun **ret);
/* A run of language will likely be started soon (the caller is claiming its task): sets up the
 * sandbox of that run now, so that the namespaces and mounts (a few ms) overlap the wait, and
 * sandbox_start() only writes the program and lets it go. The prepared child executes
 * bubblewrap with the run's command line and an empty working directory; bubblewrap sets up
 * the sandbox and waits before it starts the program. Nothing of any task is in it. At most
 * one such sandbox exists; it is kept until a run of its language takes it, a run of another
 * language needs its slot (the last free one), or the sandbox is freed (it costs one more slot
 * and a waiting bubblewrap). Languages with a build step
 * (C#) are not prepared this way: which command runs first depends on the program.
 * Returns 1 when a sandbox was set up, 0 when there was nothing to do (another one waits, or
 * the language has a build step), < 0 on failure (the next run then starts as usual). e: the
 * loop on which the next prepared child is made. */
int sandbox_warm(Sandbox *sb, sd_event *e, Language language);
/* Kills every process of the run at once; reason: SANDBOX_END_CANCELLED, _EXPIRED, _TIMEOUT
 * or _SHUTDOWN. The first reason wins; once the program has exited by itself (only cleanup
 * left, a few ms) the run ends as it ended and the reason is ignored. The callback follows
 * once everything is gone. 0 if accepted, -ESRCH when the run has already ended. */
int sandbox_run_kill(SandboxRun *r, SandboxEnd reason);
/* A run still going is killed and cleaned up synchronously (bounded wait), no callback. */
SandboxRun *sandbox_run_free(SandboxRun *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(SandboxRun *, sandbox_run_free);
/* Set after sandbox_start(): cb gets the run's userdata. */
void sandbox_run_set_exited_callback(SandboxRun *r, SandboxExitedCallback cb);
uid_t sandbox_run_uid(const SandboxRun *r);

/* Blocking helper for the CLI and tests: runs its own sd-event loop. ret is filled also when
 * the run failed inside (end == SANDBOX_END_FAILED); < 0 only if it could not start. */
int sandbox_run_sync(Sandbox *sb, const SandboxRequest *req, SandboxResult *ret);
