/* SPDX-License-Identifier: MIT */
/* The worker's file operations on directories a sandboxed program wrote to: they never follow
 * a symlink, never read anything but a regular file, and remove everything without recursion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>

#include "sandbox-fs.h"

typedef struct Fixture {
        char base[64];    /* holds everything of one test */
        char victim[128]; /* a "host" file outside the work dir */
        char victim_dir[128];
        char work[128];   /* the "working directory" */
        int work_fd;
} Fixture;

static int write_str(const char *path, const char *s) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        return write(fd, s, strlen(s)) == (ssize_t) strlen(s) ? 0 : -EIO;
}

static char *read_str(const char *path) {
        static char buf[256];
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t k;

        if (fd < 0)
                return NULL;
        k = read(fd, buf, sizeof buf - 1);
        if (k < 0)
                return NULL;
        buf[k] = '\0';
        return buf;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        char sub[256];

        assert_non_null(f);
        strcpy(f->base, "/tmp/test-sandbox-fs-XXXXXX");
        assert_non_null(mkdtemp(f->base));
        snprintf(f->victim, sizeof f->victim, "%s/victim", f->base);
        snprintf(f->victim_dir, sizeof f->victim_dir, "%s/victim-dir", f->base);
        snprintf(f->work, sizeof f->work, "%s/work", f->base);
        assert_int_equal(write_str(f->victim, "precious"), 0);
        assert_int_equal(mkdir(f->victim_dir, 0755), 0);
        snprintf(sub, sizeof sub, "%s/inner", f->victim_dir);
        assert_int_equal(write_str(sub, "also precious"), 0);
        assert_int_equal(mkdir(f->work, 0755), 0);
        f->work_fd = open(f->work, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(f->work_fd >= 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        _cleanup_close_ int fd = open(f->base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (fd >= 0)
                (void) rm_rf_children(fd);
        (void) rmdir(f->base);
        safe_close(f->work_fd);
        free(f);
        return 0;
}

static void assert_victims_intact(Fixture *f) {
        char sub[256];
        char *s;

        s = read_str(f->victim);
        assert_non_null(s);
        assert_string_equal(s, "precious");
        snprintf(sub, sizeof sub, "%s/inner", f->victim_dir);
        s = read_str(sub);
        assert_non_null(s);
        assert_string_equal(s, "also precious");
}

static void test_rm_rf_does_not_follow_symlinks(void **state) {
        Fixture *f = *state;
        char p[256];

        /* what a program could plant: symlinks to a host file and a host directory, at the top
         * and deeper, a fifo, a dangling link, a link to "..", nested directories */
        assert_int_equal(symlinkat(f->victim, f->work_fd, "main.exe"), 0);
        assert_int_equal(symlinkat(f->victim_dir, f->work_fd, "dirlink"), 0);
        assert_int_equal(symlinkat("..", f->work_fd, "up"), 0);
        assert_int_equal(symlinkat("/nonexistent", f->work_fd, "dangling"), 0);
        assert_int_equal(mkfifoat(f->work_fd, "fifo", 0600), 0);
        assert_int_equal(mkdirat(f->work_fd, "a", 0700), 0);
        assert_int_equal(mkdirat(f->work_fd, "a/b", 0700), 0);
        assert_int_equal(symlinkat(f->victim_dir, f->work_fd, "a/b/deeplink"), 0);
        assert_int_equal(symlinkat(f->victim, f->work_fd, "a/b/victimlink"), 0);
        snprintf(p, sizeof p, "%s/a/b/file", f->work);
        assert_int_equal(write_str(p, "x"), 0);
        /* an unreadable, unsearchable directory does not stop root */
        assert_int_equal(mkdirat(f->work_fd, "a/locked", 0), 0);

        assert_int_equal(rm_rf_children(f->work_fd), 0);

        /* the working directory is empty, still there; nothing outside was touched */
        assert_int_equal(faccessat(f->work_fd, "main.exe", F_OK, AT_SYMLINK_NOFOLLOW), -1);
        assert_int_equal(faccessat(f->work_fd, "a", F_OK, AT_SYMLINK_NOFOLLOW), -1);
        assert_int_equal(access(f->work, F_OK), 0);
        assert_victims_intact(f);
}

static void test_rm_rf_deep_nesting(void **state) {
        Fixture *f = *state;
        _cleanup_close_ int fd = -EBADF;
        const unsigned depth = 5000; /* deeper than any recursion would like */

        fd = fcntl(f->work_fd, F_DUPFD_CLOEXEC, 3);
        assert_true(fd >= 0);
        for (unsigned i = 0; i < depth; i++) {
                int nfd;
                assert_int_equal(mkdirat(fd, "d", 0700), 0);
                if (i % 100 == 0)
                        assert_int_equal(symlinkat(f->victim, fd, "v"), 0);
                nfd = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                assert_true(nfd >= 0);
                safe_close(fd);
                fd = nfd;
        }
        fd = safe_close(fd);

        assert_int_equal(rm_rf_children(f->work_fd), 0);
        assert_int_equal(faccessat(f->work_fd, "d", F_OK, AT_SYMLINK_NOFOLLOW), -1);
        assert_victims_intact(f);
}

static void test_read_regular_file_at(void **state) {
        Fixture *f = *state;
        char p[256], *buf = NULL;
        size_t size = 0;

        snprintf(p, sizeof p, "%s/main.exe", f->work);
        assert_int_equal(write_str(p, "MZ binary"), 0);
        assert_int_equal(read_regular_file_at(f->work_fd, "main.exe", 1024, &buf, &size), 0);
        assert_int_equal(size, 9);
        assert_string_equal(buf, "MZ binary");
        free(buf);
        buf = NULL;

        /* size cap */
        assert_int_equal(read_regular_file_at(f->work_fd, "main.exe", 8, &buf, &size), -EFBIG);
        assert_null(buf);

        /* a symlink to a host file: never followed */
        assert_int_equal(symlinkat(f->victim, f->work_fd, "link.exe"), 0);
        assert_int_equal(read_regular_file_at(f->work_fd, "link.exe", 1024, &buf, &size), -ELOOP);
        assert_null(buf);

        /* a fifo: refused without blocking */
        assert_int_equal(mkfifoat(f->work_fd, "fifo.exe", 0600), 0);
        assert_int_equal(read_regular_file_at(f->work_fd, "fifo.exe", 1024, &buf, &size), -EBADFD);

        /* a directory */
        assert_int_equal(mkdirat(f->work_fd, "dir.exe", 0700), 0);
        assert_int_equal(read_regular_file_at(f->work_fd, "dir.exe", 1024, &buf, &size), -EBADFD);

        /* a hard link (of a host file, when on the same file system) */
        assert_int_equal(linkat(AT_FDCWD, f->victim, f->work_fd, "hard.exe", 0), 0);
        assert_int_equal(read_regular_file_at(f->work_fd, "hard.exe", 1024, &buf, &size), -EMLINK);
        assert_null(buf);

        assert_int_equal(read_regular_file_at(f->work_fd, "missing.exe", 1024, &buf, &size), -ENOENT);
        assert_victims_intact(f);
}

static void test_write_file_at(void **state) {
        Fixture *f = *state;
        struct stat st;

        assert_int_equal(write_file_at(f->work_fd, "main.py", "print(1)", 8, 0444), 0);
        assert_int_equal(fstatat(f->work_fd, "main.py", &st, AT_SYMLINK_NOFOLLOW), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0444);
        assert_int_equal(st.st_size, 8);

        /* never through a symlink, never over an existing file */
        assert_int_equal(symlinkat(f->victim, f->work_fd, "x"), 0);
        assert_int_equal(write_file_at(f->work_fd, "x", "evil", 4, 0644), -EEXIST);
        assert_int_equal(write_file_at(f->work_fd, "main.py", "evil", 4, 0644), -EEXIST);
        assert_victims_intact(f);
}

static void test_workdir_plain(void **state) {
        Fixture *f = *state;
        Workdir w = WORKDIR_NULL;
        char path[256];
        struct stat st;

        snprintf(path, sizeof path, "%s/slot", f->base);
        assert_int_equal(workdir_create(path, getuid(), getgid(), 0, &w), 0);
        assert_int_equal(fstat(w.fd, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0700);
        assert_false(w.mounted);
        assert_int_equal(workdir_create(path, getuid(), getgid(), 0, &(Workdir) { .fd = -EBADF }), -EEXIST);

        assert_int_equal(symlinkat(f->victim, w.fd, "main.exe"), 0);
        assert_int_equal(symlinkat(f->victim_dir, w.fd, "d"), 0);
        assert_int_equal(workdir_destroy(&w), 0);
        assert_int_equal(access(path, F_OK), -1);
        assert_int_equal(workdir_destroy(&w), 0); /* idempotent */
        assert_victims_intact(f);

        /* leftovers of a crashed worker */
        assert_int_equal(mkdir(path, 0700), 0);
        assert_int_equal(symlinkat(f->victim, AT_FDCWD, strcat(strcpy((char[300]) {}, path), "/v")), 0);
        assert_int_equal(workdir_trim(path), 0);
        assert_int_equal(access(path, F_OK), -1);
        assert_int_equal(workdir_trim(path), 0);
        assert_victims_intact(f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_rm_rf_does_not_follow_symlinks, setup, teardown),
                cmocka_unit_test_setup_teardown(test_rm_rf_deep_nesting, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_regular_file_at, setup, teardown),
                cmocka_unit_test_setup_teardown(test_write_file_at, setup, teardown),
                cmocka_unit_test_setup_teardown(test_workdir_plain, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
