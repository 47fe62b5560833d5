/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>

#include "macro.h"

/* File system operations of the worker on directories a sandboxed program could write to.
 * The rule: the worker never follows a symlink there, never opens anything but a regular
 * file there, and never leaves the file system it started on. Everything goes through
 * *at() calls relative to a directory fd with O_NOFOLLOW / AT_SYMLINK_NOFOLLOW. Only call
 * these when no sandboxed process is left (the tree is then static). */

/* Removes everything below the directory fd (not the directory itself), depth-first without
 * recursion (programs can nest directories deeply). Does not descend into other file
 * systems (-EXDEV then). Returns the first error, after removing what it could. */
int rm_rf_children(int fd);

/* Reads name (relative to dir_fd) if it is a regular file of at most max bytes:
 * -ELOOP for a symlink, -EBADFD for anything but a regular file, -EMLINK when it has
 * further hard links, -EFBIG when larger than max. *ret gets a NUL-terminated buffer. */
int read_regular_file_at(int dir_fd, const char *name, size_t max, char **ret, size_t *ret_size);

/* Creates name (O_EXCL, O_NOFOLLOW) with the data and the exact mode. */
int write_file_at(int dir_fd, const char *name, const void *data, size_t size, mode_t mode);

/* A per-run working directory: path is created (mode 0700) and, with tmpfs_size > 0, a
 * private tmpfs of that size is mounted on it (its pages are charged to the memory cgroup of
 * whoever writes them); owned by uid:gid. fd is an O_PATH-free directory fd of it. */
typedef struct Workdir {
        char *path;
        int fd;
        bool mounted;
} Workdir;

#define WORKDIR_NULL ((Workdir) { .fd = -EBADF })

int workdir_create(const char *path, uid_t uid, gid_t gid, uint64_t tmpfs_size, Workdir *ret);
/* Unmounts/removes the directory with everything in it. Idempotent. */
int workdir_destroy(Workdir *w);
/* Removes a stale working directory at path left by a crashed worker (unmounting it first). */
int workdir_trim(const char *path);
