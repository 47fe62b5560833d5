/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>

#include "macro.h"

/* The cgroups of sandbox runs — one per slot, which one run at a time has to itself — on
 * cgroup v2 (a delegated subtree) or on cgroup v1 / hybrid hosts (one directory per controller
 * hierarchy). Controllers used: memory, pids, cpu (and cpuacct on v1 when mounted, for CPU
 * time only).
 *
 * Shared-code rules apply: nothing here logs above debug; errors are negative errno and
 * cgroup_root_new() explains a failure in *ret_error for the operator. */

typedef enum CGroupMode {
        CGROUP_MODE_UNIFIED, /* cgroup v2 at /sys/fs/cgroup */
        CGROUP_MODE_LEGACY,  /* cgroup v1 controllers (hybrid: the v2 mount has none of ours) */
        _CGROUP_MODE_MAX,
} CGroupMode;

const char *cgroup_mode_to_string(CGroupMode m);

typedef struct CGroupLimits {
        uint64_t memory_max;        /* bytes; swap is turned off for the group */
        uint64_t pids_max;          /* tasks (threads count) */
        uint64_t cpu_quota_percent; /* of one CPU, per 100 ms period */
} CGroupLimits;

typedef struct CGroupStats {
        uint64_t oom_kills;       /* processes killed by the OOM killer in the group */
        uint64_t pids_max_events; /* forks refused because of pids.max */
        uint64_t memory_peak;     /* bytes, 0 when the kernel does not say */
        uint64_t cpu_usec;        /* CPU time, 0 when the kernel does not say */
} CGroupStats;

/* The parent directory (directories on v1) of all runs of this process. */
typedef struct CGroupRoot CGroupRoot;

/* path: a cgroup path inside the hierarchies (as in /proc/self/cgroup, e.g. "/dtask"); it is
 * created when missing. NULL picks the default:
 *   v2: the process's own cgroup O; every process in O is moved to O/supervisor (the
 *       no-internal-processes rule; needs Delegate=yes under systemd), memory/pids/cpu are
 *       enabled in O and runs go to O/runs (when O is the root cgroup: /dtask);
 *   v1: O/dtask in each hierarchy, O being the process's cgroup in that hierarchy. */
int cgroup_root_new(const char *path, CGroupRoot **ret, char **ret_error);

typedef enum CGroupRootFlags {
        /* For tests only: on hybrid hosts the v2 hierarchy has none of our controllers; this
         * runs the v2 code there without limits and statistics. */
        CGROUP_ROOT_LIMITS_OPTIONAL = 1 << 0,
} CGroupRootFlags;

/* fs: the cgroup file system (NULL: /sys/fs/cgroup; else a cgroup2 mount, for tests). */
int cgroup_root_new_full(const char *fs, const char *path, CGroupRootFlags flags, CGroupRoot **ret,
                         char **ret_error);
CGroupRoot *cgroup_root_free(CGroupRoot *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(CGroupRoot *, cgroup_root_free);
CGroupMode cgroup_root_mode(const CGroupRoot *r);
/* The directory of the memory controller's root, for messages. */
const char *cgroup_root_path(const CGroupRoot *r);

typedef struct CGroup CGroup;

/* Creates <root>/<name> in every hierarchy with the limits applied. -EEXIST when it exists
 * already (see cgroup_trim()). */
int cgroup_new(CGroupRoot *root, const char *name, const CGroupLimits *limits, CGroup **ret);
/* A slot's group, kept across runs (creating and removing a group per run costs more than the
 * run's own set-up on cgroup v1): opens <root>/<name>, creating it when missing; whatever is
 * still in it (processes of a crashed predecessor, of a run that outlived its clean-up) is
 * killed first, waiting at most timeout_usec (-EBUSY if it does not empty). The limits are
 * applied again, and the statistics count from here: cgroup_get_stats() reports what happened
 * since (the peak on v2 needs Linux 6.12; older kernels report the group's lifetime peak),
 * and starts the count again for the group's next use.
 * cgroup_free() leaves the group in place; cgroup_trim() removes it. */
int cgroup_open_slot(CGroupRoot *root, const char *name, const CGroupLimits *limits, uint64_t timeout_usec,
                     CGroup **ret);
/* Kills whatever is left in <root>/<name> (from a crashed predecessor) and removes it. Waits
 * at most timeout_usec; -EBUSY if it could not be removed. 0 also when it did not exist. */
int cgroup_trim(CGroupRoot *root, const char *name, uint64_t timeout_usec);
/* Best effort: removes the group if it is still there (killing what is left, no waiting);
 * a group from cgroup_open_slot() is only closed. */
CGroup *cgroup_free(CGroup *cg);
DEFINE_TRIVIAL_CLEANUP_FUNC(CGroup *, cgroup_free);

/* The most fds cgroup_procs_fds() returns. */
#define CGROUP_PROCS_FDS_MAX 4
/* The cgroup.procs fds (O_CLOEXEC, one per hierarchy) a forked child writes "0" to. */
size_t cgroup_procs_fds(const CGroup *cg, const int **ret);
/* For the forked child, async-signal-safe: moves the calling process into the group. */
int cgroup_join_self(const int *fds, size_t n);

/* SIGKILLs every process in the group at once where the kernel can (v2 cgroup.kill), else
 * each listed process through a pidfd, checked to still be in the group (no pid reuse
 * races). Call again until cgroup_is_populated() says 0. */
int cgroup_kill(CGroup *cg);
/* > 0 while tasks are in the group — zombies included (pids.current counts them until they
 * are reaped) — 0 when empty. */
int cgroup_is_populated(CGroup *cg);
/* What happened in the group since it was made or opened, or since the previous call: each
 * call starts the counting afresh (the memory peak, too), so that a group used again — a
 * slot's next run — reports only its own. */
int cgroup_get_stats(CGroup *cg, CGroupStats *ret);
/* Up to n of the processes in the group (for watching them exit); the number stored. */
int cgroup_list_pids(CGroup *cg, pid_t *ret, size_t n);
/* rmdir()s the group; -EBUSY while processes are still leaving (try again shortly). */
int cgroup_remove(CGroup *cg);
/* The memory controller's directory of the group, for messages and tests. */
const char *cgroup_path(const CGroup *cg);
/* The group's directory in the hierarchy of controller ("memory", "pids", "cpu"), for tests. */
const char *cgroup_controller_path(const CGroup *cg, const char *controller);
