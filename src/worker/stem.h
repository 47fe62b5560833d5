/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * What the worker and dtask-sandbox-stem (stem-helper.c) share: the child of a run, between
 * the worker and bubblewrap.
 *
 * The child joins the slot's cgroups, drops to the slot's UID and executes bubblewrap. It is
 * either forked by the worker (child_exec() in sandbox.c), or, where dtask-sandbox-stem was
 * built, spawned as that small program (posix_spawn(): no copy of the worker's memory, so no
 * page table copy and no copy-on-write faults in the worker afterwards). Both do the same
 * steps and report a failure before bubblewrap runs the same way: a ChildError on the status
 * fd, which the exec of bubblewrap closes.
 *
 * A stem waits for its go message on the control fd: STEM_MAGIC, the size, then the command
 * line as NUL-terminated strings. EOF instead: not needed after all, it exits 0.
 *
 * dtask-sandbox-stem gets its fds at fixed numbers: 0-2 the program's stdin/stdout/stderr,
 * STEM_FD_BLOCK bubblewrap's --block-fd, STEM_FD_STATUS the status fd, STEM_FD_CTL the control
 * fd (a stem only), and from STEM_FD_CGROUP on the cgroup.procs fds of the slot. Its arguments:
 *
 *   dtask-sandbox-stem UID PARENT-PID FILE-SIZE-MAX OPEN-FILES-MAX NPROC-MAX N-CGROUP-FDS BWRAP
 *                      {stem | exec ARGV...}
 *
 * (numbers in decimal, FILE-SIZE-MAX 0 for no limit).
 */

#include <stdint.h>

/* its size bounds the command line a stem can take; below the pipe's capacity, so that
 * writing it never blocks */
#define STEM_MSG_MAX (48 * 1024)
#define STEM_ARGC_MAX 1024
#define STEM_MAGIC 0x6d657473u

#define STEM_FD_BLOCK 3
#define STEM_FD_STATUS 4
#define STEM_FD_CTL 5
#define STEM_FD_CGROUP 6
#define STEM_CGROUP_FDS_MAX 16 /* what dtask-sandbox-stem accepts */

#define STEM_HELPER_NAME "dtask-sandbox-stem"

/* Its arguments, by position (argv[0] is its name): */
enum {
        STEM_ARG_UID = 1,
        STEM_ARG_PARENT,
        STEM_ARG_FILE_SIZE_MAX,
        STEM_ARG_OPEN_FILES_MAX,
        STEM_ARG_NPROC_MAX,
        STEM_ARG_N_CGROUP_FDS,
        STEM_ARG_BWRAP,
        STEM_ARG_MODE,    /* "stem" or "exec" */
        STEM_ARG_COMMAND, /* exec: bubblewrap's command line from here on */
};

typedef struct ChildError {
        char tag; /* 'E' */
        int step;
        int error;
} ChildError;

enum {
        STEP_SIGNALS = 1,
        STEP_SETSID,
        STEP_CGROUP,
        STEP_FDS,
        STEP_RLIMITS,
        STEP_CREDENTIALS,
        STEP_PRCTL,
        STEP_PARENT,
        STEP_GO,
        STEP_EXEC,
        STEP_ARGS, /* dtask-sandbox-stem: its arguments */
        _STEP_MAX,
};
