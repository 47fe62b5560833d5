/* SPDX-License-Identifier: MIT */
/*
 * dtask-sandbox-stem: the child of a sandbox run as a program of its own (see stem.h). It does
 * what child_exec() in sandbox.c does after the fork, with the fds the worker's posix_spawn()
 * put in place, and executes bubblewrap.
 *
 * Freestanding: no C library, system calls only, a few KiB. A program linked against glibc
 * (static or not) spends more on its own start (relocations, the loader, page faults of a
 * large image) than the fork it replaces; this one starts in a few pages.
 *
 * Not meant to be run by hand: it is spawned by dtask-worker, as root.
 */

#include <asm/unistd.h>
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/prctl.h>
#include <linux/resource.h>
#include <linux/signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stem.h"

#if !defined(__x86_64__) && !defined(__aarch64__)
#error "dtask-sandbox-stem supports x86_64 and aarch64; elsewhere the worker forks (see meson.build)"
#endif

/* ---- system calls --------------------------------------------------------------------------- */

static long sys6(long n, long a, long b, long c, long d, long e, long f) {
#if defined(__x86_64__)
        register long r10 __asm__("r10") = d;
        register long r8 __asm__("r8") = e;
        register long r9 __asm__("r9") = f;
        long ret;

        __asm__ volatile("syscall"
                         : "=a"(ret)
                         : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                         : "rcx", "r11", "memory");
        return ret;
#elif defined(__aarch64__)
        register long x8 __asm__("x8") = n;
        register long x0 __asm__("x0") = a;
        register long x1 __asm__("x1") = b;
        register long x2 __asm__("x2") = c;
        register long x3 __asm__("x3") = d;
        register long x4 __asm__("x4") = e;
        register long x5 __asm__("x5") = f;

        __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
        return x0;
#endif
}

#define sys(n, ...) sys_(n, __VA_ARGS__, 0, 0, 0, 0, 0, 0)
#define sys_(n, a, b, c, d, e, f, ...) sys6((n), (long) (a), (long) (b), (long) (c), (long) (d), (long) (e), (long) (f))

/* The entry point: the initial stack holds argc, then argv. */
#if defined(__x86_64__)
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "        xor %rbp, %rbp\n"
        "        mov %rsp, %rdi\n"
        "        and $-16, %rsp\n"
        "        call stem_main\n"
        "        hlt\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "        mov x29, #0\n"
        "        mov x30, #0\n"
        "        mov x0, sp\n"
        "        bl stem_main\n"
        "        brk #0\n");
#endif

/* The compiler may call these for copies and clearing, even freestanding. */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
_Noreturn void stem_main(long *sp);

void *memcpy(void *dst, const void *src, size_t n) {
        unsigned char *d = dst;
        const unsigned char *s = src;

        while (n-- > 0)
                *d++ = *s++;
        return dst;
}

void *memset(void *dst, int c, size_t n) {
        unsigned char *d = dst;

        while (n-- > 0)
                *d++ = (unsigned char) c;
        return dst;
}

/* ---- the steps ------------------------------------------------------------------------------ */

_Noreturn static void fail(int step, long error) {
        ChildError e;

        memset(&e, 0, sizeof e); /* no stray bytes of the stack in the padding */
        e.tag = 'E';
        e.step = step;
        e.error = (int) -error;
        (void) sys(__NR_write, STEM_FD_STATUS, &e, sizeof e);
        sys(__NR_exit_group, 127);
        __builtin_unreachable();
}

/* A decimal number, all of s. */
static bool parse_u64(const char *s, uint64_t *ret) {
        uint64_t v = 0;

        if (!s || !*s)
                return false;
        for (; *s; s++) {
                if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
                        return false;
                v = v * 10 + (uint64_t) (*s - '0');
        }
        *ret = v;
        return true;
}

static bool streq(const char *a, const char *b) {
        while (*a && *a == *b)
                a++, b++;
        return *a == *b;
}

/* Reads exactly n bytes. 0: all of them; 1: EOF before the first byte; else -errno. */
static long read_all(int fd, char *buf, size_t n) {
        size_t got = 0;

        while (got < n) {
                long k = sys(__NR_read, fd, buf + got, n - got);
                if (k == -EINTR)
                        continue;
                if (k == 0)
                        return got == 0 ? 1 : -EPIPE;
                if (k < 0)
                        return k;
                got += (size_t) k;
        }
        return 0;
}

static void set_limit(int resource, uint64_t value) {
        struct rlimit64 rl = { .rlim_cur = value, .rlim_max = value };
        long k = sys(__NR_prlimit64, 0, resource, &rl, NULL);

        if (k < 0)
                fail(STEP_RLIMITS, k);
}

static char msg[STEM_MSG_MAX];
static char *msg_argv[STEM_ARGC_MAX];

/* Waits for the go message; returns the command line in it. */
static char **read_go_message(void) {
        uint32_t hdr[2];
        size_t argc = 0;
        long k;

        k = read_all(STEM_FD_CTL, (char *) hdr, sizeof hdr);
        if (k == 1)
                sys(__NR_exit_group, 0); /* not needed after all */
        if (k < 0)
                fail(STEP_GO, k);
        if (hdr[0] != STEM_MAGIC || hdr[1] == 0 || hdr[1] > STEM_MSG_MAX)
                fail(STEP_GO, -EBADMSG);
        k = read_all(STEM_FD_CTL, msg, hdr[1]);
        if (k != 0)
                fail(STEP_GO, k < 0 ? k : -EPIPE);
        if (msg[hdr[1] - 1] != '\0')
                fail(STEP_GO, -EBADMSG);
        for (size_t i = 0; i < hdr[1];) {
                if (argc >= STEM_ARGC_MAX - 1)
                        fail(STEP_GO, -E2BIG);
                msg_argv[argc++] = msg + i;
                while (msg[i] != '\0')
                        i++;
                i++;
        }
        msg_argv[argc] = NULL;
        return msg_argv;
}

__attribute__((used)) _Noreturn void stem_main(long *sp) {
        static char *const envp[] = { NULL };
        long argc = sp[0];
        char **argv = (char **) (sp + 1), **exec_argv;
        uint64_t uid, parent, file_size_max, open_files_max, nproc_max, n_cgroup_fds;
        bool stem;
        long k;

        /* First the status fd, CLOEXEC: a failure is reported on it; the exec of bubblewrap
         * closes it (the worker sees EOF). */
        k = sys(__NR_fcntl, STEM_FD_STATUS, F_SETFD, FD_CLOEXEC);
        if (k < 0)
                sys(__NR_exit_group, 127);

        if (argc < STEM_ARG_COMMAND || !parse_u64(argv[STEM_ARG_UID], &uid) ||
            !parse_u64(argv[STEM_ARG_PARENT], &parent) || !parse_u64(argv[STEM_ARG_FILE_SIZE_MAX], &file_size_max) ||
            !parse_u64(argv[STEM_ARG_OPEN_FILES_MAX], &open_files_max) ||
            !parse_u64(argv[STEM_ARG_NPROC_MAX], &nproc_max) ||
            !parse_u64(argv[STEM_ARG_N_CGROUP_FDS], &n_cgroup_fds) || uid == 0 || uid > UINT32_MAX - 1 ||
            n_cgroup_fds > STEM_CGROUP_FDS_MAX)
                fail(STEP_ARGS, -EINVAL);
        stem = streq(argv[STEM_ARG_MODE], "stem");
        if (stem ? argc != STEM_ARG_COMMAND : !streq(argv[STEM_ARG_MODE], "exec") || argc <= STEM_ARG_COMMAND)
                fail(STEP_ARGS, -EINVAL);

        if (stem) {
                /* a stem waits, maybe long: with the worker, or not at all */
                k = sys(__NR_prctl, PR_SET_PDEATHSIG, SIGKILL);
                if (k < 0)
                        fail(STEP_PRCTL, k);
                if ((uint64_t) sys(__NR_getppid, 0) != parent)
                        fail(STEP_PARENT, -ESRCH);
        }

        /* into the slot's cgroup while still root: from here on every descendant is in it */
        for (uint64_t i = 0; i < n_cgroup_fds; i++) {
                k = sys(__NR_write, STEM_FD_CGROUP + (long) i, "0", 1);
                if (k != 1)
                        fail(STEP_CGROUP, k < 0 ? k : -EIO);
        }

        exec_argv = stem ? read_go_message() : argv + STEM_ARG_COMMAND;

        /* bubblewrap gets 0-2, the block fd and the status fd (until the exec) */
        k = sys(__NR_close_range, STEM_FD_CTL, ~0U, 0);
        if (k < 0)
                fail(STEP_FDS, k);

        set_limit(RLIMIT_CORE, 0);
        set_limit(RLIMIT_FSIZE, file_size_max > 0 ? file_size_max : RLIM64_INFINITY);
        set_limit(RLIMIT_NOFILE, open_files_max);
        /* second line of defence behind pids.max: the UID is this run's alone */
        set_limit(RLIMIT_NPROC, nproc_max);

        if ((k = sys(__NR_setgroups, 0, NULL)) < 0 || (k = sys(__NR_setresgid, uid, uid, uid)) < 0 ||
            (k = sys(__NR_setresuid, uid, uid, uid)) < 0)
                fail(STEP_CREDENTIALS, k);
        if ((uint64_t) sys(__NR_getuid, 0) != uid || (uint64_t) sys(__NR_geteuid, 0) != uid ||
            (uint64_t) sys(__NR_getgid, 0) != uid || (uint64_t) sys(__NR_getegid, 0) != uid)
                fail(STEP_CREDENTIALS, -EPERM);

        /* after the UID change, which resets the parent-death signal */
        if ((k = sys(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) < 0 ||
            (k = sys(__NR_prctl, PR_SET_PDEATHSIG, SIGKILL)) < 0)
                fail(STEP_PRCTL, k);
        if ((uint64_t) sys(__NR_getppid, 0) != parent)
                fail(STEP_PARENT, -ESRCH);

        (void) sys(__NR_umask, 0077);
        k = sys(__NR_execve, argv[STEM_ARG_BWRAP], exec_argv, envp);
        fail(STEP_EXEC, k);
}
