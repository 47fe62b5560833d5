/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "sandbox-fs.h"

typedef struct Level {
        char *name;       /* entry in the parent */
        dev_t parent_dev; /* identity of the parent, checked when climbing back */
        ino_t parent_ino;
} Level;

static void levels_free(Level *l, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(l[i].name);
        free(l);
}

static bool dot_or_dotdot(const char *s) {
        return s[0] == '.' && (s[1] == '\0' || (s[1] == '.' && s[2] == '\0'));
}

/* Empties the directory cur as far as it goes without descending. Returns 1 and the name of
 * a non-empty subdirectory in *ret_subdir when one needs descending into, 0 when done. */
static int empty_one_level(int cur, dev_t dev, char **ret_subdir, int *first_error) {
        _cleanup_close_ int dfd = -EBADF;
        DIR *d;
        struct dirent *de;
        int r = 0;

        dfd = openat(cur, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (dfd < 0)
                return -errno;
        d = fdopendir(dfd);
        if (!d)
                return -errno;
        TAKE_FD(dfd);

        while ((errno = 0, de = readdir(d))) {
                struct stat st;

                if (dot_or_dotdot(de->d_name))
                        continue;
                if (fstatat(cur, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno != ENOENT && *first_error == 0)
                                *first_error = -errno;
                        continue;
                }
                if (!S_ISDIR(st.st_mode)) {
                        /* symlinks, fifos, sockets, devices: the entry goes, the target is never touched */
                        if (unlinkat(cur, de->d_name, 0) < 0 && errno != ENOENT && *first_error == 0)
                                *first_error = -errno;
                        continue;
                }
                if (st.st_dev != dev) {
                        if (*first_error == 0)
                                *first_error = -EXDEV;
                        continue;
                }
                if (unlinkat(cur, de->d_name, AT_REMOVEDIR) >= 0)
                        continue;
                if (errno == ENOENT)
                        continue;
                if (errno != ENOTEMPTY && errno != EEXIST) {
                        if (*first_error == 0)
                                *first_error = -errno;
                        continue;
                }
                *ret_subdir = strdup(de->d_name);
                r = *ret_subdir ? 1 : -ENOMEM;
                break;
        }
        if (r == 0 && errno != 0)
                r = -errno;
        closedir(d);
        return r;
}

int rm_rf_children(int fd) {
        _cleanup_close_ int cur = -EBADF;
        Level *levels = NULL;
        size_t depth = 0, allocated = 0;
        struct stat top;
        int first_error = 0, r;

        if (fstat(fd, &top) < 0)
                return -errno;
        if (!S_ISDIR(top.st_mode))
                return -ENOTDIR;
        cur = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (cur < 0)
                return -errno;

        for (;;) {
                char *sub = NULL;

                r = empty_one_level(cur, top.st_dev, &sub, &first_error);
                if (r < 0)
                        goto finish;
                if (r > 0) {
                        struct stat st;
                        int nfd;

                        if (fstat(cur, &st) < 0) {
                                r = -errno;
                                free(sub);
                                goto finish;
                        }
                        nfd = openat(cur, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
                        if (nfd < 0) {
                                r = -errno;
                                free(sub);
                                goto finish;
                        }
                        if (depth == allocated) {
                                size_t m = allocated ? allocated * 2 : 16;
                                Level *l = realloc(levels, m * sizeof *l);
                                if (!l) {
                                        safe_close(nfd);
                                        free(sub);
                                        r = -ENOMEM;
                                        goto finish;
                                }
                                levels = l;
                                allocated = m;
                        }
                        levels[depth++] = (Level) { .name = sub, .parent_dev = st.st_dev, .parent_ino = st.st_ino };
                        safe_close(cur);
                        cur = nfd;
                        continue;
                }

                /* cur is as empty as it gets: climb back and remove it */
                if (depth == 0)
                        break;

                Level *l = &levels[depth - 1];
                struct stat st;
                int pfd = openat(cur, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
                if (pfd < 0) {
                        r = -errno;
                        goto finish;
                }
                safe_close(cur);
                cur = pfd;
                if (fstat(cur, &st) < 0) {
                        r = -errno;
                        goto finish;
                }
                if (st.st_dev != l->parent_dev || st.st_ino != l->parent_ino) {
                        r = -ESTALE; /* the tree changed under us: stop */
                        goto finish;
                }
                if (unlinkat(cur, l->name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
                        r = first_error ?: -errno;
                        goto finish;
                }
                free(l->name);
                depth--;
        }
        r = first_error;

finish:
        levels_free(levels, depth);
        return r;
}

int read_regular_file_at(int dir_fd, const char *name, size_t max, char **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t n = 0;

        /* O_NONBLOCK: a fifo planted under that name must not block us */
        fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if (st.st_nlink > 1)
                return -EMLINK;
        if ((uint64_t) st.st_size > max)
                return -EFBIG;

        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t k;

                if (n == (size_t) st.st_size) {
                        /* must be at EOF now: the file may not grow behind our back */
                        char c;
                        k = read(fd, &c, 1);
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k < 0)
                                return -errno;
                        if (k > 0)
                                return -EFBIG;
                        break;
                }
                k = read(fd, buf + n, (size_t) st.st_size - n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO; /* shrank */
                n += (size_t) k;
        }
        buf[n] = '\0';
        *ret = TAKE_PTR(buf);
        if (ret_size)
                *ret_size = n;
        return 0;
}

int write_file_at(int dir_fd, const char *name, const void *data, size_t size, mode_t mode) {
        _cleanup_close_ int fd = -EBADF;
        const char *p = data;

        fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0)
                return -errno;
        while (size > 0) {
                ssize_t k = write(fd, p, size);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                size -= (size_t) k;
        }
        if (fchmod(fd, mode) < 0)
                return -errno;
        return 0;
}

int workdir_create(const char *path, uid_t uid, gid_t gid, uint64_t tmpfs_size, Workdir *ret) {
        _cleanup_free_ char *copy = NULL;
        _cleanup_close_ int fd = -EBADF;
        bool mounted = false;
        int r;

        copy = strdup(path);
        if (!copy)
                return -ENOMEM;

        if (mkdir(path, 0700) < 0)
                return -errno;

        if (tmpfs_size > 0) {
                char opts[160];

                /* inodes are kernel memory: bound them, too */
                snprintf(opts, sizeof opts, "size=%" PRIu64 ",nr_inodes=%u,mode=0700,uid=%u,gid=%u", tmpfs_size,
                         16384u, (unsigned) uid, (unsigned) gid);
                if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0) {
                        r = -errno;
                        (void) rmdir(path);
                        return r;
                }
                mounted = true;
        }

        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = -errno;
                goto fail;
        }
        if (!mounted && (fchown(fd, uid, gid) < 0 || fchmod(fd, 0700) < 0)) {
                r = -errno;
                goto fail;
        }

        *ret = (Workdir) { .path = TAKE_PTR(copy), .fd = TAKE_FD(fd), .mounted = mounted };
        return 0;

fail:
        fd = safe_close(fd);
        if (mounted)
                (void) umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW);
        (void) rmdir(path);
        return r;
}

int workdir_destroy(Workdir *w) {
        int r = 0;

        if (!w->path) {
                w->fd = safe_close(w->fd);
                return 0;
        }

        if (w->mounted) {
                /* dropping the tmpfs drops everything in it, without looking at any of it */
                w->fd = safe_close(w->fd);
                if (umount2(w->path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL && errno != ENOENT)
                        r = -errno;
                w->mounted = false;
        } else if (w->fd >= 0) {
                r = rm_rf_children(w->fd);
                w->fd = safe_close(w->fd);
        }

        if (r == 0 && rmdir(w->path) < 0 && errno != ENOENT)
                r = -errno;
        if (r == 0)
                w->path = mfree(w->path);
        return r;
}

int workdir_trim(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISDIR(st.st_mode))
                return unlinkat(AT_FDCWD, path, 0) < 0 ? -errno : 0;

        /* tmpfs (possibly stacked) left behind by a crashed worker */
        for (unsigned i = 0; i < 16; i++)
                if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0)
                        break;

        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        int r = rm_rf_children(fd);
        if (r < 0)
                return r;
        fd = safe_close(fd);
        return rmdir(path) < 0 && errno != ENOENT ? -errno : 0;
}
