/* SPDX-License-Identifier: MIT */
/* The cgroup backend on the host's real cgroups (v1 on hybrid hosts, v2 where unified): a
 * group gets its limits, a process tree that double-forks, setsids and ignores SIGTERM is
 * killed as a whole, the group is removed, stale groups are trimmed. Needs root and the
 * memory/pids/cpu controllers (exit 77 without). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>

#include "cgroup.h"
#include "log.h"

static CGroupRoot *root;
static char name[64];

static uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static char *attr(CGroup *cg, const char *ctrl, const char *file) {
        static char buf[512];
        char path[1200];
        _cleanup_close_ int fd = -EBADF;
        const char *d = cgroup_controller_path(cg, ctrl);
        ssize_t k;

        assert_non_null(d);
        snprintf(path, sizeof path, "%s/%s", d, file);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        k = read(fd, buf, sizeof buf - 1);
        if (k < 0)
                return NULL;
        buf[k] = '\0';
        return buf;
}

/* The group's directory is the root's own + the name; on v1, our own memory cgroup may not be
 * the same path as in the pids hierarchy, so compare within a hierarchy only. */
static void assert_gone(CGroup *cg_path_holder_unused, const char *memory_dir) {
        assert_int_equal(access(memory_dir, F_OK), -1);
}

static int setup(void **state) {
        _cleanup_free_ char *error = NULL;
        int r;

        r = cgroup_root_new(NULL, &root, &error);
        if (r < 0) {
                print_message("cgroup root: %s\n", strna(error));
                return -1;
        }
        print_message("cgroup %s, runs under %s\n", cgroup_mode_to_string(cgroup_root_mode(root)),
                      cgroup_root_path(root));
        snprintf(name, sizeof name, "test-cgroup-%d", (int) getpid());
        return 0;
}

static int teardown(void **state) {
        (void) cgroup_trim(root, name, USEC_PER_SEC);
        root = cgroup_root_free(root);
        return 0;
}

/* Each test starts without the group, whatever the previous one left. */
static int trim(void **state) {
        assert_int_equal(cgroup_trim(root, name, 5 * USEC_PER_SEC), 0);
        while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        return 0;
}

static void test_limits_applied(void **state) {
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 17, .cpu_quota_percent = 50 };
        _cleanup_free_ char *dir = NULL;
        char *s;

        assert_int_equal(cgroup_new(root, name, &l, &cg), 0);
        dir = strdup(cgroup_path(cg));
        assert_non_null(dir);
        assert_int_equal(cgroup_new(root, name, &l, &(CGroup *) { NULL }), -EEXIST);

        if (cgroup_root_mode(root) == CGROUP_MODE_LEGACY) {
                s = attr(cg, "memory", "memory.limit_in_bytes");
                assert_non_null(s);
                assert_int_equal(strtoull(s, NULL, 10), 64 * 1024 * 1024);
                s = attr(cg, "memory", "memory.memsw.limit_in_bytes");
                if (s)
                        assert_int_equal(strtoull(s, NULL, 10), 64 * 1024 * 1024);
                s = attr(cg, "pids", "pids.max");
                assert_non_null(s);
                assert_int_equal(strtoull(s, NULL, 10), 17);
                s = attr(cg, "cpu", "cpu.cfs_quota_us");
                assert_non_null(s);
                assert_int_equal(strtoull(s, NULL, 10), 50000);
        } else {
                s = attr(cg, "memory", "memory.max");
                assert_non_null(s);
                assert_int_equal(strtoull(s, NULL, 10), 64 * 1024 * 1024);
                s = attr(cg, "pids", "pids.max");
                assert_non_null(s);
                assert_int_equal(strtoull(s, NULL, 10), 17);
                s = attr(cg, "cpu", "cpu.max");
                assert_non_null(s);
                assert_true(strneq(s, "50000 100000", 12));
                s = attr(cg, "memory", "memory.swap.max");
                if (s)
                        assert_true(strneq(s, "0", 1));
        }

        assert_int_equal(cgroup_is_populated(cg), 0);
        assert_int_equal(cgroup_remove(cg), 0);
        assert_gone(cg, dir);
}

/* A tree: child → setsid, ignores SIGTERM, forks grandchild → setsid again, forks a
 * great-grandchild, the middle one exits (double fork); all sleep. */
static pid_t spawn_tree(CGroup *cg, int ready_fd) {
        const int *fds;
        size_t n = cgroup_procs_fds(cg, &fds);
        pid_t pid = fork();

        assert_true(pid >= 0);
        if (pid > 0)
                return pid;

        if (cgroup_join_self(fds, n) < 0)
                _exit(1);
        (void) signal(SIGTERM, SIG_IGN);
        (void) setsid();
        if (fork() == 0) {
                (void) setsid();
                if (fork() == 0) {
                        (void) !write(ready_fd, "x", 1);
                        for (;;)
                                pause();
                }
                _exit(0);
        }
        for (;;)
                pause();
}

static void test_kill_whole_tree(void **state) {
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 16, .cpu_quota_percent = 100 };
        _cleanup_free_ char *dir = NULL;
        int p[2], status;
        char c;
        pid_t pid;
        uint64_t t0;

        assert_int_equal(cgroup_new(root, name, &l, &cg), 0);
        dir = strdup(cgroup_path(cg));
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = spawn_tree(cg, p[1]);
        close(p[1]);
        assert_int_equal(read(p[0], &c, 1), 1); /* the great-grandchild runs */
        close(p[0]);
        assert_int_equal(cgroup_is_populated(cg), 1);
        assert_int_equal(kill(pid, SIGTERM), 0); /* ignored */
        usleep(100000);
        assert_int_equal(cgroup_is_populated(cg), 1);

        t0 = now_us();
        assert_true(cgroup_kill(cg) >= 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        /* the orphaned great-grandchild comes to us (subreaper), and is reaped here */
        while (cgroup_is_populated(cg) > 0 && now_us() - t0 < 5 * USEC_PER_SEC) {
                while (waitpid(-1, NULL, WNOHANG) > 0)
                        ;
                usleep(5000);
        }
        assert_int_equal(cgroup_is_populated(cg), 0);
        print_message("tree killed and gone after %llu ms\n", (unsigned long long) (now_us() - t0) / 1000);
        assert_true(now_us() - t0 < USEC_PER_SEC);

        assert_int_equal(cgroup_remove(cg), 0);
        assert_gone(cg, dir);
}

/* On v1 every hierarchy has a group of its own: a process in the group of any one of them is
 * found and killed (also where our own cgroup in that hierarchy is the root, whose path is "/"). */
static void test_kill_in_each_hierarchy(void **state) {
        static const char *const controllers[] = { "memory", "pids", "cpu" };
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 16, .cpu_quota_percent = 100 };

        assert_int_equal(cgroup_new(root, name, &l, &cg), 0);
        for (size_t i = 0; i < ELEMENTSOF(controllers); i++) {
                char path[1200];
                int p[2], status = 0;
                pid_t pid;
                char c;
                uint64_t t0;

                snprintf(path, sizeof path, "%s/cgroup.procs", cgroup_controller_path(cg, controllers[i]));
                assert_int_equal(pipe2(p, O_CLOEXEC), 0);
                pid = fork();
                assert_true(pid >= 0);
                if (pid == 0) {
                        int fd = open(path, O_WRONLY | O_CLOEXEC);
                        if (fd < 0 || write(fd, "0", 1) != 1)
                                _exit(1);
                        (void) !write(p[1], "x", 1);
                        for (;;)
                                pause();
                }
                close(p[1]);
                assert_int_equal(read(p[0], &c, 1), 1);
                close(p[0]);

                assert_true(cgroup_kill(cg) >= 0);
                t0 = now_us();
                while (waitpid(pid, &status, WNOHANG) == 0 && now_us() - t0 < 2 * USEC_PER_SEC)
                        usleep(5000);
                if (!WIFSIGNALED(status)) {
                        (void) kill(pid, SIGKILL);
                        (void) waitpid(pid, NULL, 0);
                        fail_msg("a process in the %s group only was not killed", controllers[i]);
                }
                assert_int_equal(WTERMSIG(status), SIGKILL);
        }
        assert_int_equal(cgroup_remove(cg), 0);
}

static void test_pids_limit_counted(void **state) {
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 4, .cpu_quota_percent = 100 };
        CGroupStats st;
        const int *fds;
        size_t n;
        int status;
        pid_t pid;

        assert_int_equal(cgroup_new(root, name, &l, &cg), 0);
        n = cgroup_procs_fds(cg, &fds);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int failed = 0;
                if (cgroup_join_self(fds, n) < 0)
                        _exit(2);
                for (int i = 0; i < 10; i++) {
                        pid_t c = fork();
                        if (c == 0) {
                                pause();
                                _exit(0);
                        }
                        if (c < 0)
                                failed++;
                }
                _exit(failed > 0 ? 0 : 3);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_true(cgroup_kill(cg) >= 0);
        for (int i = 0; i < 200 && cgroup_is_populated(cg) > 0; i++)
                usleep(5000);
        assert_int_equal(cgroup_get_stats(cg, &st), 0);
        assert_true(st.pids_max_events > 0);
        assert_int_equal(st.oom_kills, 0);
        assert_int_equal(cgroup_remove(cg), 0);
}

static void test_trim_stale(void **state) {
        CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 16, .cpu_quota_percent = 100 };
        char dir[512];
        int p[2], q[2], status;
        ssize_t k;
        pid_t pid;

        /* a worker that crashes: leaves its group behind, with a process tree in it */
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(pipe2(q, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                CGroup *cg = NULL;
                char c;

                if (cgroup_new(root, name, &l, &cg) < 0)
                        _exit(1);
                (void) !write(q[1], cgroup_path(cg), strlen(cgroup_path(cg)));
                close(q[1]);
                (void) spawn_tree(cg, p[1]);
                if (read(p[0], &c, 1) != 1)
                        _exit(2);
                _exit(0); /* no cleanup at all */
        }
        close(p[1]);
        close(q[1]);
        k = read(q[0], dir, sizeof dir - 1);
        assert_true(k > 0);
        dir[k] = '\0';
        close(q[0]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        close(p[0]);

        assert_int_equal(access(dir, F_OK), 0);
        assert_int_equal(cgroup_trim(root, name, 5 * USEC_PER_SEC), 0);
        assert_int_equal(access(dir, F_OK), -1);
        assert_int_equal(cgroup_trim(root, name, USEC_PER_SEC), 0); /* nothing there: fine */
}

static void test_bad_names(void **state) {
        CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 16, .cpu_quota_percent = 100 };
        CGroup *cg = NULL;

        assert_int_equal(cgroup_new(root, "../escape", &l, &cg), -EINVAL);
        assert_int_equal(cgroup_new(root, "a/b", &l, &cg), -EINVAL);
        assert_int_equal(cgroup_new(root, "", &l, &cg), -EINVAL);
        assert_int_equal(cgroup_new(root, ".hidden", &l, &cg), -EINVAL);
        assert_null(cg);
        assert_int_equal(cgroup_root_new("relative", &(CGroupRoot *) { NULL }, NULL), -EINVAL);
        assert_int_equal(cgroup_root_new("/a/../b", &(CGroupRoot *) { NULL }, NULL), -EINVAL);
        assert_int_equal(cgroup_root_new("/", &(CGroupRoot *) { NULL }, NULL), -EINVAL);
}

/* The v2 code on the v2 hierarchy of a hybrid host: no controllers there, so no limits, but
 * creation, joining, cgroup.kill, cgroup.events and removal are the real thing. */
#define UNIFIED "/sys/fs/cgroup/unified"

static bool have_hybrid_unified(void) {
        struct statfs a, b;
        return statfs("/sys/fs/cgroup", &a) >= 0 && (uint64_t) a.f_type != (uint64_t) CGROUP2_SUPER_MAGIC &&
               statfs(UNIFIED, &b) >= 0 && (uint64_t) b.f_type == (uint64_t) CGROUP2_SUPER_MAGIC;
}

static void test_v2_kill_whole_tree(void **state) {
        _cleanup_(cgroup_root_freep) CGroupRoot *r2 = NULL;
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        _cleanup_free_ char *error = NULL;
        CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 16, .cpu_quota_percent = 100 };
        CGroupStats st;
        char path[128], dir[256];
        int p[2];
        char c;
        pid_t pid;
        uint64_t t0;

        if (!have_hybrid_unified())
                skip();

        snprintf(path, sizeof path, "/dtask-test-%d", (int) getpid());
        assert_int_equal(cgroup_root_new_full(UNIFIED, path, CGROUP_ROOT_LIMITS_OPTIONAL, &r2, &error), 0);
        assert_int_equal(cgroup_root_mode(r2), CGROUP_MODE_UNIFIED);
        assert_int_equal(cgroup_new(r2, "run", &l, &cg), 0);
        snprintf(dir, sizeof dir, "%s/run", cgroup_root_path(r2));
        assert_string_equal(cgroup_path(cg), dir);

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = spawn_tree(cg, p[1]);
        close(p[1]);
        assert_int_equal(read(p[0], &c, 1), 1);
        close(p[0]);
        assert_int_equal(cgroup_is_populated(cg), 1);

        t0 = now_us();
        assert_true(cgroup_kill(cg) >= 0); /* cgroup.kill */
        assert_int_equal(waitpid(pid, NULL, 0), pid);
        while (cgroup_is_populated(cg) > 0 && now_us() - t0 < 5 * USEC_PER_SEC) {
                while (waitpid(-1, NULL, WNOHANG) > 0)
                        ;
                usleep(5000);
        }
        assert_int_equal(cgroup_is_populated(cg), 0);
        print_message("v2: tree killed and gone after %llu ms\n", (unsigned long long) (now_us() - t0) / 1000);
        assert_int_equal(cgroup_get_stats(cg, &st), 0);
        assert_int_equal(cgroup_remove(cg), 0);
        assert_int_equal(access(dir, F_OK), -1);
        assert_int_equal(rmdir(cgroup_root_path(r2)), 0);
}

static void test_v2_supervisor(void **state) {
        char own[128], path[256];
        int status;
        pid_t pid;

        if (!have_hybrid_unified())
                skip();

        /* in a child: it moves itself around in the v2 hierarchy */
        snprintf(own, sizeof own, UNIFIED "/dtask-test-own-%d", (int) getpid());
        assert_int_equal(mkdir(own, 0755), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                CGroupRoot *r2 = NULL;
                CGroup *cg = NULL;
                CGroupLimits l = { .memory_max = 64 * 1024 * 1024, .pids_max = 16, .cpu_quota_percent = 100 };
                char *error = NULL, *s, want[160];
                int fd;

                snprintf(path, sizeof path, "%s/cgroup.procs", own);
                fd = open(path, O_WRONLY | O_CLOEXEC);
                if (fd < 0 || write(fd, "0", 1) != 1)
                        _exit(10);
                close(fd);
                /* the default: runs below our own cgroup, we move to a leaf beside them */
                if (cgroup_root_new_full(UNIFIED, NULL, CGROUP_ROOT_LIMITS_OPTIONAL, &r2, &error) < 0) {
                        fprintf(stderr, "%s\n", strna(error));
                        _exit(11);
                }
                snprintf(want, sizeof want, "0::/dtask-test-own-%d/supervisor\n", (int) getppid());
                fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        _exit(12);
                char buf[4096] = {};
                if (read(fd, buf, sizeof buf - 1) <= 0)
                        _exit(13);
                s = strstr(buf, "0::");
                if (!s || !strneq(s, want, strlen(want)))
                        _exit(14);
                snprintf(want, sizeof want, "%s/runs", own);
                if (!streq(cgroup_root_path(r2), want))
                        _exit(15);
                if (cgroup_new(r2, "run", &l, &cg) < 0 || cgroup_remove(cg) < 0)
                        _exit(16);
                _exit(0);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);

        snprintf(path, sizeof path, "%s/runs", own);
        assert_int_equal(rmdir(path), 0);
        snprintf(path, sizeof path, "%s/supervisor", own);
        assert_int_equal(rmdir(path), 0);
        assert_int_equal(rmdir(own), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup(test_limits_applied, trim),
                cmocka_unit_test_setup(test_kill_whole_tree, trim),
                cmocka_unit_test_setup(test_kill_in_each_hierarchy, trim),
                cmocka_unit_test_setup(test_pids_limit_counted, trim),
                cmocka_unit_test_setup(test_trim_stale, trim),
                cmocka_unit_test_setup(test_bad_names, trim),
                cmocka_unit_test(test_v2_kill_whole_tree),
                cmocka_unit_test(test_v2_supervisor),
        };
        _cleanup_free_ char *error = NULL;
        CGroupRoot *probe = NULL;
        int r;

        if (geteuid() != 0) {
                fprintf(stderr, "Skipping: needs root\n");
                return 77;
        }
        r = cgroup_root_new(NULL, &probe, &error);
        if (r == -EOPNOTSUPP || r == -ENOENT) {
                fprintf(stderr, "Skipping: %s\n", strna(error));
                return 77;
        }
        cgroup_root_free(probe);
        /* like the sandbox: orphans of killed trees are ours to reap, not init's */
        (void) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

        return cmocka_run_group_tests(tests, setup, teardown);
}
