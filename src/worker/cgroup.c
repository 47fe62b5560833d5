/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>

#include "cgroup.h"
#include "log.h"
#include "time-util.h"

#define CGROUP_FS "/sys/fs/cgroup"
#define CPU_PERIOD_USEC 100000

typedef enum CGroupController {
        CGROUP_CONTROLLER_MEMORY,
        CGROUP_CONTROLLER_PIDS,
        CGROUP_CONTROLLER_CPU,
        CGROUP_CONTROLLER_CPUACCT, /* v1 only, optional */
        _CGROUP_CONTROLLER_MAX,
} CGroupController;

#define MASK(c) (1u << (c))
#define REQUIRED_MASK (MASK(CGROUP_CONTROLLER_MEMORY) | MASK(CGROUP_CONTROLLER_PIDS) | MASK(CGROUP_CONTROLLER_CPU))

static const char *const controller_names[_CGROUP_CONTROLLER_MAX] = {
        [CGROUP_CONTROLLER_MEMORY] = "memory",
        [CGROUP_CONTROLLER_PIDS] = "pids",
        [CGROUP_CONTROLLER_CPU] = "cpu",
        [CGROUP_CONTROLLER_CPUACCT] = "cpuacct",
};

static const char *const mode_names[_CGROUP_MODE_MAX] = {
        [CGROUP_MODE_UNIFIED] = "v2",
        [CGROUP_MODE_LEGACY] = "v1",
};

const char *cgroup_mode_to_string(CGroupMode m) {
        return m >= 0 && m < _CGROUP_MODE_MAX ? mode_names[m] : NULL;
}

typedef struct Hierarchy {
        char *dir;      /* file system directory of the runs' parent */
        char *cg_path;  /* the same as a cgroup path, as /proc/PID/cgroup shows it */
        char *ctl_name; /* v1: a controller name identifying the line in /proc/PID/cgroup; v2: NULL */
        unsigned mask;  /* controllers of this hierarchy */
} Hierarchy;

struct CGroupRoot {
        CGroupMode mode;
        CGroupRootFlags flags;
        Hierarchy h[_CGROUP_CONTROLLER_MAX];
        size_t n;
};

/* The files of a group that every run reads (or writes): opened on first use and kept open
 * with the group, read with pread() at offset 0, which makes the kernel produce them anew.
 * Not cgroup.procs on v1: its list is cached per open file (for up to a second). */
typedef enum CGroupFile {
        CGROUP_FILE_PIDS_CURRENT, /* pids.current */
        CGROUP_FILE_EVENTS,       /* v2: cgroup.events */
        CGROUP_FILE_OOM,          /* v2: memory.events; v1: memory.oom_control */
        CGROUP_FILE_PIDS_EVENTS,  /* pids.events */
        CGROUP_FILE_PEAK,         /* v2: memory.peak; v1: memory.max_usage_in_bytes; read and reset */
        CGROUP_FILE_CPU,          /* v2: cpu.stat; v1: cpuacct.usage */
        _CGROUP_FILE_MAX,
} CGroupFile;

static const struct {
        const char *v2, *v1;
        CGroupController controller; /* v1: the hierarchy it is in */
} cgroup_files[_CGROUP_FILE_MAX] = {
        [CGROUP_FILE_PIDS_CURRENT] = { "pids.current", "pids.current", CGROUP_CONTROLLER_PIDS },
        [CGROUP_FILE_EVENTS] = { "cgroup.events", NULL, 0 },
        [CGROUP_FILE_OOM] = { "memory.events", "memory.oom_control", CGROUP_CONTROLLER_MEMORY },
        [CGROUP_FILE_PIDS_EVENTS] = { "pids.events", "pids.events", CGROUP_CONTROLLER_PIDS },
        [CGROUP_FILE_PEAK] = { "memory.peak", "memory.max_usage_in_bytes", CGROUP_CONTROLLER_MEMORY },
        [CGROUP_FILE_CPU] = { "cpu.stat", "cpuacct.usage", CGROUP_CONTROLLER_CPUACCT },
};

struct CGroup {
        CGroupRoot *root;
        char *name;
        char *dirs[_CGROUP_CONTROLLER_MAX];
        int procs_fds[_CGROUP_CONTROLLER_MAX];
        int file_fds[_CGROUP_FILE_MAX]; /* see CGroupFile; -EBADF until used */
        size_t n;
        bool removed;
        bool keep;         /* a slot's group (cgroup_open_slot()): cgroup_free() leaves it in place */
        CGroupStats base;  /* the counters at cgroup_open_slot() or the last cgroup_get_stats() */
};

/* ---------------------------------------------------------------------------------------- */
/* small helpers */

/* Formats a message for the operator into *ret_error (when not NULL); %m is error. Returns error. */
static int error_set(char **ret_error, int error, const char *format, ...) _printf_(3, 4);
static int error_set(char **ret_error, int error, const char *format, ...) {
        va_list ap;

        if (!ret_error)
                return error;
        errno = abs(error);
        va_start(ap, format);
        if (vasprintf(ret_error, format, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return error;
}

static int read_small_file(const char *path, char *buf, size_t size) {
        _cleanup_close_ int fd = -EBADF;
        size_t n = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;

        while (n < size - 1) {
                ssize_t k = read(fd, buf + n, size - 1 - n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = '\0';
        return (int) MIN(n, (size_t) INT_MAX);
}

/* Reads a whole (possibly large, e.g. cgroup.procs) file into a malloc'ed NUL-terminated buffer. */
static int read_full_file(const char *path, char **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t n = 0, allocated = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;

        for (;;) {
                if (allocated - n < 4096) {
                        size_t m = allocated ? allocated * 2 : 8192;
                        char *p;
                        if (m > 64 * 1024 * 1024)
                                return -EFBIG;
                        p = realloc(buf, m);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                        allocated = m;
                }
                ssize_t k = read(fd, buf + n, allocated - n - 1);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = '\0';
        *ret = TAKE_PTR(buf);
        return 0;
}

static int write_string_file(const char *path, const char *s) {
        _cleanup_close_ int fd = -EBADF;
        size_t l = strlen(s);
        ssize_t k;

        fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        k = write(fd, s, l);
        if (k < 0)
                return -errno;
        if ((size_t) k != l)
                return -EIO;
        return 0;
}

static int write_attr(const char *dir, const char *attr, const char *value) {
        _cleanup_free_ char *p = NULL;

        if (asprintf(&p, "%s/%s", dir, attr) < 0)
                return -ENOMEM;
        return write_string_file(p, value);
}

static int write_attr_u64(const char *dir, const char *attr, uint64_t v) {
        char buf[32];

        snprintf(buf, sizeof buf, "%" PRIu64, v);
        return write_attr(dir, attr, buf);
}

static int read_attr(const char *dir, const char *attr, char *buf, size_t size) {
        _cleanup_free_ char *p = NULL;

        if (asprintf(&p, "%s/%s", dir, attr) < 0)
                return -ENOMEM;
        return read_small_file(p, buf, size);
}

/* Is word one of the items of list, separated by any of seps? */
static bool list_contains(const char *list, const char *seps, const char *word) {
        size_t l = strlen(word);

        for (const char *p = list; *p;) {
                size_t k = strcspn(p, seps);
                if (k == l && strneq(p, word, l))
                        return true;
                p += k;
                p += strspn(p, seps);
        }
        return false;
}

/* Finds "key N" in a flat keyed file ("oom_kill 3\n…"). */
static int keyed_u64(const char *text, const char *key, uint64_t *ret) {
        size_t l = strlen(key);

        for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
                if (strneq(p, key, l) && p[l] == ' ') {
                        char *end;
                        errno = 0;
                        unsigned long long v = strtoull(p + l + 1, &end, 10);
                        if (errno != 0 || end == p + l + 1)
                                return -EINVAL;
                        *ret = v;
                        return 0;
                }
        }
        return -ENOENT;
}

static int mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = '\0';
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static bool path_is_safe(const char *p) {
        /* A cgroup path from the configuration: absolute, no "..", no empty components. */
        if (!p || p[0] != '/' || strstr(p, "/../") || strstr(p, "//"))
                return false;
        size_t l = strlen(p);
        if (l >= 3 && streq(p + l - 3, "/.."))
                return false;
        return !strstr(p, "/./") && !(l >= 2 && streq(p + l - 2, "/."));
}

/* "/a/b/" → "/a/b", "/" → "" so that mount + path concatenates cleanly. */
static char *path_join(const char *a, const char *b, const char *c) {
        char *r;
        size_t lb;

        b = b ?: "";
        lb = strlen(b);
        while (lb > 0 && b[lb - 1] == '/')
                lb--;
        if (asprintf(&r, "%s%.*s%s", a, (int) lb, b, c ?: "") < 0)
                return NULL;
        return r;
}

/* ---------------------------------------------------------------------------------------- */
/* /proc/self/cgroup and /proc/self/mountinfo */

/* Returns the path of the calling process in the v1 hierarchy holding controller (or in the
 * v2 hierarchy when controller is NULL). */
static int own_cgroup_path(const char *controller, char **ret) {
        _cleanup_free_ char *text = NULL;
        int r;

        r = read_full_file("/proc/self/cgroup", &text);
        if (r < 0)
                return r;

        for (char *line = text, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';

                char *c1 = strchr(line, ':');
                if (!c1)
                        continue;
                char *c2 = strchr(c1 + 1, ':');
                if (!c2)
                        continue;
                *c2 = '\0';
                const char *list = c1 + 1, *path = c2 + 1;
                bool match = controller ? list_contains(list, ",", controller)
                                        : strneq(line, "0:", 2) && list[0] == '\0';
                if (!match)
                        continue;
                if (path[0] != '/')
                        return -EINVAL;

                char *s = strdup(path);
                if (!s)
                        return -ENOMEM;
                *ret = s;
                return 0;
        }
        return -ENOENT;
}

typedef struct V1Mount {
        char *mount_point;
        char *mount_root;
        unsigned mask;
} V1Mount;

static void v1_mounts_free(V1Mount *m, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(m[i].mount_point);
                free(m[i].mount_root);
        }
}

/* Finds the cgroup v1 mounts that carry our controllers; each controller in at most one. */
static int find_v1_mounts(V1Mount *mounts, size_t *n_mounts) {
        _cleanup_free_ char *text = NULL;
        unsigned seen = 0;
        int r;

        r = read_full_file("/proc/self/mountinfo", &text);
        if (r < 0)
                return r;

        *n_mounts = 0;
        for (char *line = text, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';

                char *sep = strstr(line, " - ");
                if (!sep)
                        continue;
                *sep = '\0';
                char *tail = sep + 3;

                /* tail: FSTYPE SOURCE SUPEROPTS */
                char *fstype = tail, *source, *superopts;
                source = strchr(fstype, ' ');
                if (!source)
                        continue;
                *source++ = '\0';
                if (!streq(fstype, "cgroup"))
                        continue;
                superopts = strchr(source, ' ');
                if (!superopts)
                        continue;
                superopts++;

                unsigned mask = 0;
                for (CGroupController c = 0; c < _CGROUP_CONTROLLER_MAX; c++)
                        if (list_contains(superopts, ",", controller_names[c]))
                                mask |= MASK(c);
                mask &= ~seen;
                if (mask == 0)
                        continue;

                /* head: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS… */
                char *fields[5] = {};
                char *save = NULL, *tok = strtok_r(line, " ", &save);
                for (size_t i = 0; tok && i < 5; i++, tok = strtok_r(NULL, " ", &save))
                        fields[i] = tok;
                if (!fields[4] || strchr(fields[3], '\\') || strchr(fields[4], '\\'))
                        continue; /* escaped names: not something we create cgroups under */

                V1Mount *m = &mounts[(*n_mounts)++];
                m->mount_root = strdup(fields[3]);
                m->mount_point = strdup(fields[4]);
                m->mask = mask;
                if (!m->mount_root || !m->mount_point)
                        return -ENOMEM;
                seen |= mask;
                if (*n_mounts >= _CGROUP_CONTROLLER_MAX)
                        break;
        }
        return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* root setup */

CGroupRoot *cgroup_root_free(CGroupRoot *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n; i++) {
                free(r->h[i].dir);
                free(r->h[i].cg_path);
                free(r->h[i].ctl_name);
        }
        return mfree(r);
}

CGroupMode cgroup_root_mode(const CGroupRoot *r) {
        return r->mode;
}

const char *cgroup_root_path(const CGroupRoot *r) {
        for (size_t i = 0; i < r->n; i++)
                if (r->h[i].mask & MASK(CGROUP_CONTROLLER_MEMORY))
                        return r->h[i].dir;
        return r->n > 0 ? r->h[0].dir : NULL;
}

/* v2: makes memory, pids and cpu available to the children of dir. */
static int v2_enable_controllers(const char *dir, CGroupRootFlags flags, char **ret_error) {
        char avail[1024], enabled[1024];
        int r;

        r = read_attr(dir, "cgroup.controllers", avail, sizeof avail);
        if (r < 0)
                return error_set(ret_error, r, "Cannot read %s/cgroup.controllers: %s", dir, strerror(-r));
        r = read_attr(dir, "cgroup.subtree_control", enabled, sizeof enabled);
        if (r < 0)
                return error_set(ret_error, r, "Cannot read %s/cgroup.subtree_control: %s", dir, strerror(-r));

        for (CGroupController c = 0; c < _CGROUP_CONTROLLER_MAX; c++) {
                if (!(REQUIRED_MASK & MASK(c)))
                        continue;

                const char *name = controller_names[c];
                bool have = list_contains(avail, " \n", name), on = list_contains(enabled, " \n", name);
                if (on)
                        continue;
                if (!have && (flags & CGROUP_ROOT_LIMITS_OPTIONAL))
                        continue;
                if (!have)
                        return error_set(ret_error, -EOPNOTSUPP, "cgroup controller '%s' is not available in %s (under systemd: Delegate=yes)",
                                        name, dir);

                char buf[32];
                snprintf(buf, sizeof buf, "+%s", name);
                r = write_attr(dir, "cgroup.subtree_control", buf);
                if (r < 0)
                        return error_set(ret_error, r, "Cannot enable cgroup controller '%s' in %s: %s%s", name, dir,
                                        strerror(-r),
                                        r == -EBUSY ? " (the cgroup has processes of its own)" : "");
        }
        return 0;
}

/* v2: moves every process of dir into dir/supervisor, so that dir may have controllers
 * enabled for its children. */
static int v2_move_to_supervisor(const char *dir, char **ret_error) {
        _cleanup_free_ char *sup = NULL, *procs = NULL, *sup_procs = NULL;
        int r;

        sup = path_join(dir, NULL, "/supervisor");
        procs = path_join(dir, NULL, "/cgroup.procs");
        sup_procs = path_join(dir, NULL, "/supervisor/cgroup.procs");
        if (!sup || !procs || !sup_procs)
                return -ENOMEM;

        if (mkdir(sup, 0755) < 0 && errno != EEXIST)
                return error_set(ret_error, -errno, "Cannot create %s: %m", sup);

        for (unsigned attempt = 0; attempt < 100; attempt++) {
                _cleanup_free_ char *text = NULL;
                bool any = false;

                r = read_full_file(procs, &text);
                if (r < 0)
                        return error_set(ret_error, r, "Cannot read %s: %s", procs, strerror(-r));
                for (char *p = text, *next; p && *p; p = next) {
                        next = strchr(p, '\n');
                        if (next)
                                *next++ = '\0';
                        if (*p == '\0')
                                continue;
                        any = true;
                        r = write_string_file(sup_procs, p);
                        if (r < 0 && r != -ESRCH)
                                return error_set(ret_error, r, "Cannot move process %s into %s: %s", p, sup,
                                                strerror(-r));
                }
                if (!any)
                        return 0;
        }
        return error_set(ret_error, -EBUSY, "Processes keep appearing in %s", dir);
}

static int root_new_unified(const char *fs, const char *path, CGroupRoot *root, char **ret_error) {
        _cleanup_free_ char *own = NULL, *dir = NULL, *cg_path = NULL;
        int r;

        if (path) {
                _cleanup_free_ char *walk = strdup(fs), *components = strdup(path);
                char *save = NULL;

                cg_path = strdup(path);
                if (!cg_path || !walk || !components)
                        return -ENOMEM;
                /* every ancestor must pass the controllers down */
                for (char *c = strtok_r(components, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
                        char *w;

                        r = v2_enable_controllers(walk, root->flags, ret_error);
                        if (r < 0)
                                return r;
                        if (asprintf(&w, "%s/%s", walk, c) < 0)
                                return -ENOMEM;
                        free_and_replace(walk, w);
                        if (mkdir(walk, 0755) < 0 && errno != EEXIST)
                                return error_set(ret_error, -errno, "Cannot create %s: %m", walk);
                }
        } else {
                r = own_cgroup_path(NULL, &own);
                if (r < 0)
                        return error_set(ret_error, r, "Cannot find our own cgroup v2 in /proc/self/cgroup: %s",
                                        strerror(-r));
                if (streq(own, "/")) {
                        cg_path = strdup("/dtask");
                        if (!cg_path)
                                return -ENOMEM;
                        r = v2_enable_controllers(fs, root->flags, ret_error);
                        if (r < 0)
                                return r;
                } else {
                        _cleanup_free_ char *own_dir = path_join(fs, own, NULL);
                        if (!own_dir)
                                return -ENOMEM;
                        r = v2_move_to_supervisor(own_dir, ret_error);
                        if (r < 0)
                                return r;
                        r = v2_enable_controllers(own_dir, root->flags, ret_error);
                        if (r < 0)
                                return r;
                        cg_path = path_join(own, NULL, "/runs");
                        if (!cg_path)
                                return -ENOMEM;
                }
        }

        dir = path_join(fs, cg_path, NULL);
        if (!dir)
                return -ENOMEM;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return error_set(ret_error, -errno, "Cannot create %s: %m", dir);
        r = v2_enable_controllers(dir, root->flags, ret_error);
        if (r < 0)
                return r;

        root->mode = CGROUP_MODE_UNIFIED;
        root->h[0] = (Hierarchy) {
                .dir = TAKE_PTR(dir),
                .cg_path = TAKE_PTR(cg_path),
                .mask = REQUIRED_MASK,
        };
        root->n = 1;
        return 0;
}

static int root_new_legacy(const char *path, CGroupRoot *root, char **ret_error) {
        V1Mount mounts[_CGROUP_CONTROLLER_MAX] = {};
        size_t n_mounts = 0;
        unsigned have = 0;
        int r;

        r = find_v1_mounts(mounts, &n_mounts);
        if (r < 0) {
                v1_mounts_free(mounts, n_mounts);
                return error_set(ret_error, r, "Cannot read /proc/self/mountinfo: %s", strerror(-r));
        }
        for (size_t i = 0; i < n_mounts; i++)
                have |= mounts[i].mask;
        for (CGroupController c = 0; c < _CGROUP_CONTROLLER_MAX; c++)
                if ((REQUIRED_MASK & MASK(c)) && !(have & MASK(c))) {
                        v1_mounts_free(mounts, n_mounts);
                        return error_set(ret_error, -EOPNOTSUPP, "The cgroup v1 controller '%s' is not mounted", controller_names[c]);
                }

        root->mode = CGROUP_MODE_LEGACY;
        for (size_t i = 0; i < n_mounts; i++) {
                V1Mount *m = &mounts[i];
                Hierarchy *h = &root->h[root->n];
                _cleanup_free_ char *own = NULL, *cg_path = NULL, *rel = NULL;
                CGroupController first = 0;

                while (!(m->mask & MASK(first)))
                        first++;

                if (path)
                        cg_path = strdup(path);
                else {
                        r = own_cgroup_path(controller_names[first], &own);
                        if (r < 0) {
                                (void) error_set(ret_error, r, "Cannot find our own '%s' cgroup in /proc/self/cgroup: %s",
                                         controller_names[first], strerror(-r));
                                goto fail;
                        }
                        /* "/" + "/dtask" must not give "//dtask": the path is compared with
                         * /proc/PID/cgroup to tell a group's processes (cgroup_kill()) */
                        cg_path = path_join("", own, "/dtask");
                }
                if (!cg_path) {
                        r = -ENOMEM;
                        goto fail;
                }

                /* the mount may show a subtree only (cgroup namespaces, bind mounts) */
                if (streq(m->mount_root, "/"))
                        rel = strdup(cg_path);
                else if (strneq(cg_path, m->mount_root, strlen(m->mount_root)) &&
                         cg_path[strlen(m->mount_root)] == '/')
                        rel = strdup(cg_path + strlen(m->mount_root));
                else {
                        r = error_set(ret_error, -ENOENT, "The cgroup %s is not reachable through the mount %s of '%s'",
                                      cg_path, m->mount_point, controller_names[first]);
                        goto fail;
                }
                if (!rel) {
                        r = -ENOMEM;
                        goto fail;
                }

                h->dir = path_join(m->mount_point, rel, NULL);
                h->cg_path = TAKE_PTR(cg_path);
                h->ctl_name = strdup(controller_names[first]);
                h->mask = m->mask;
                root->n++;
                if (!h->dir || !h->ctl_name) {
                        r = -ENOMEM;
                        goto fail;
                }
                r = mkdir_p(h->dir, 0755);
                if (r < 0) {
                        (void) error_set(ret_error, r, "Cannot create %s: %s", h->dir, strerror(-r));
                        goto fail;
                }
        }
        v1_mounts_free(mounts, n_mounts);
        return 0;

fail:
        v1_mounts_free(mounts, n_mounts);
        return r;
}

int cgroup_root_new_full(const char *fs, const char *path, CGroupRootFlags flags, CGroupRoot **ret,
                         char **ret_error) {
        _cleanup_(cgroup_root_freep) CGroupRoot *root = NULL;
        _cleanup_free_ char *error = NULL;
        struct statfs sfs;
        int r;

        if (path && !path_is_safe(path))
                return error_set(ret_error, -EINVAL, "Invalid cgroup path '%s': must be absolute and normalized", path);
        if (path && streq(path, "/"))
                return error_set(ret_error, -EINVAL, "The root cgroup cannot hold the runs");

        root = calloc(1, sizeof *root);
        if (!root)
                return -ENOMEM;
        root->flags = flags;

        fs = fs ?: CGROUP_FS;
        if (statfs(fs, &sfs) < 0)
                return error_set(ret_error, -errno, "Cannot access %s: %m", fs);

        if ((uint64_t) sfs.f_type == (uint64_t) CGROUP2_SUPER_MAGIC)
                r = root_new_unified(fs, path, root, &error);
        else if (streq(fs, CGROUP_FS))
                r = root_new_legacy(path, root, &error);
        else
                r = error_set(&error, -ENOTDIR, "%s is not a cgroup2 mount", fs);
        if (r < 0) {
                if (ret_error)
                        *ret_error = TAKE_PTR(error);
                return r;
        }

        *ret = TAKE_PTR(root);
        return 0;
}

int cgroup_root_new(const char *path, CGroupRoot **ret, char **ret_error) {
        return cgroup_root_new_full(NULL, path, 0, ret, ret_error);
}

/* ---------------------------------------------------------------------------------------- */
/* per-run groups */

static bool name_is_valid(const char *name) {
        if (isempty(name) || strlen(name) > 64 || name[0] == '.')
                return false;
        for (const char *p = name; *p; p++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", *p))
                        return false;
        return true;
}

static int apply_limits_strict(CGroupMode mode, const char *dir, unsigned mask, const CGroupLimits *l);

static int apply_limits(const CGroupRoot *root, const char *dir, unsigned mask, const CGroupLimits *l) {
        int r = apply_limits_strict(root->mode, dir, mask, l);

        /* tests of the v2 code on hybrid hosts, whose v2 hierarchy has no controllers */
        if (r == -ENOENT && (root->flags & CGROUP_ROOT_LIMITS_OPTIONAL))
                return 0;
        return r;
}

static int apply_limits_strict(CGroupMode mode, const char *dir, unsigned mask, const CGroupLimits *l) {
        char buf[64];
        int r;

        if (mode == CGROUP_MODE_UNIFIED) {
                r = write_attr_u64(dir, "memory.max", l->memory_max);
                if (r < 0)
                        return r;
                r = write_attr(dir, "memory.swap.max", "0");
                if (r < 0 && r != -ENOENT) /* no swap accounting: no swap to turn off */
                        return r;
                /* one OOM kill ends the whole run, as a run is one unit of work */
                r = write_attr(dir, "memory.oom.group", "1");
                if (r < 0 && r != -ENOENT)
                        return r;
                r = write_attr_u64(dir, "pids.max", l->pids_max);
                if (r < 0)
                        return r;
                snprintf(buf, sizeof buf, "%" PRIu64 " %u", l->cpu_quota_percent * (CPU_PERIOD_USEC / 100),
                         CPU_PERIOD_USEC);
                return write_attr(dir, "cpu.max", buf);
        }

        if (mask & MASK(CGROUP_CONTROLLER_MEMORY)) {
                /* memory+swap = memory: no swap. Without swap accounting, keep it from swapping.
                 * The kernel wants memory ≤ memory+swap at every step: a reused group whose limit
                 * goes up needs memory+swap raised first. */
                r = write_attr_u64(dir, "memory.limit_in_bytes", l->memory_max);
                if (r == -EINVAL) {
                        r = write_attr_u64(dir, "memory.memsw.limit_in_bytes", l->memory_max);
                        if (r >= 0)
                                r = write_attr_u64(dir, "memory.limit_in_bytes", l->memory_max);
                }
                if (r < 0)
                        return r;
                r = write_attr_u64(dir, "memory.memsw.limit_in_bytes", l->memory_max);
                if (r == -ENOENT)
                        r = write_attr(dir, "memory.swappiness", "0");
                if (r < 0)
                        return r;
        }
        if (mask & MASK(CGROUP_CONTROLLER_PIDS)) {
                r = write_attr_u64(dir, "pids.max", l->pids_max);
                if (r < 0)
                        return r;
        }
        if (mask & MASK(CGROUP_CONTROLLER_CPU)) {
                r = write_attr_u64(dir, "cpu.cfs_period_us", CPU_PERIOD_USEC);
                if (r < 0)
                        return r;
                r = write_attr_u64(dir, "cpu.cfs_quota_us", l->cpu_quota_percent * (CPU_PERIOD_USEC / 100));
                if (r < 0)
                        return r;
        }
        return 0;
}

static CGroup *cgroup_alloc(CGroupRoot *root, const char *name) {
        CGroup *cg = calloc(1, sizeof *cg);

        if (!cg)
                return NULL;
        cg->root = root;
        cg->n = root->n;
        for (size_t i = 0; i < _CGROUP_CONTROLLER_MAX; i++)
                cg->procs_fds[i] = -EBADF;
        for (size_t i = 0; i < _CGROUP_FILE_MAX; i++)
                cg->file_fds[i] = -EBADF;
        cg->name = strdup(name);
        if (!cg->name)
                return mfree(cg);
        for (size_t i = 0; i < cg->n; i++) {
                if (asprintf(&cg->dirs[i], "%s/%s", root->h[i].dir, name) < 0)
                        cg->dirs[i] = NULL;
                if (!cg->dirs[i]) {
                        cg->removed = true;
                        return cgroup_free(cg);
                }
        }
        return cg;
}

static void cgroup_close_fds(CGroup *cg) {
        for (size_t i = 0; i < _CGROUP_CONTROLLER_MAX; i++)
                cg->procs_fds[i] = safe_close(cg->procs_fds[i]);
        for (size_t i = 0; i < _CGROUP_FILE_MAX; i++)
                cg->file_fds[i] = safe_close(cg->file_fds[i]);
}

static const char *dir_with(CGroup *cg, CGroupController c);

/* The fd of one of the group's files (see CGroupFile), opened on first use. -ENOENT where the
 * mode or the hierarchies have no such file. */
static int file_fd(CGroup *cg, CGroupFile f) {
        _cleanup_free_ char *p = NULL;
        const char *name, *d;

        if (cg->file_fds[f] >= 0)
                return cg->file_fds[f];
        if (cg->root->mode == CGROUP_MODE_UNIFIED) {
                name = cgroup_files[f].v2;
                d = cg->dirs[0];
        } else {
                name = cgroup_files[f].v1;
                d = name ? dir_with(cg, cgroup_files[f].controller) : NULL;
        }
        if (!name || !d)
                return -ENOENT;
        if (asprintf(&p, "%s/%s", d, name) < 0)
                return -ENOMEM;
        cg->file_fds[f] = open(p, (f == CGROUP_FILE_PEAK ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY);
        if (cg->file_fds[f] < 0)
                return -errno;
        return cg->file_fds[f];
}

/* Reads one of the group's files, as a NUL-terminated string; the length. */
static int file_read(CGroup *cg, CGroupFile f, char *buf, size_t size) {
        ssize_t k;
        int fd;

        fd = file_fd(cg, f);
        if (fd < 0)
                return fd;
        /* these files are small: all of it comes in one read */
        k = pread(fd, buf, size - 1, 0);
        if (k < 0)
                return -errno;
        if ((size_t) k >= size - 1)
                return -EFBIG;
        buf[k] = '\0';
        return (int) k;
}

static int open_procs_fds(CGroup *cg) {
        for (size_t i = 0; i < cg->n; i++) {
                _cleanup_free_ char *p = path_join(cg->dirs[i], NULL, "/cgroup.procs");

                if (!p)
                        return -ENOMEM;
                cg->procs_fds[i] = open(p, O_WRONLY | O_CLOEXEC | O_NOCTTY);
                if (cg->procs_fds[i] < 0)
                        return -errno;
        }
        return 0;
}

static bool limits_are_valid(const CGroupLimits *limits) {
        return limits && limits->memory_max > 0 && limits->pids_max > 0 && limits->cpu_quota_percent > 0;
}

/* In every hierarchy of the group. */
static int apply_limits_all(CGroup *cg, const CGroupLimits *limits) {
        for (size_t i = 0; i < cg->n; i++) {
                int r = apply_limits(cg->root, cg->dirs[i], cg->root->h[i].mask, limits);
                if (r < 0)
                        return log_debug_errno(r, "Failed to set limits of %s: %m", cg->dirs[i]);
        }
        return 0;
}

int cgroup_new(CGroupRoot *root, const char *name, const CGroupLimits *limits, CGroup **ret) {
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        int r;

        if (!name_is_valid(name) || !limits_are_valid(limits))
                return -EINVAL;

        cg = cgroup_alloc(root, name);
        if (!cg)
                return -ENOMEM;

        for (size_t i = 0; i < cg->n; i++) {
                if (mkdir(cg->dirs[i], 0755) < 0) {
                        r = -errno;
                        /* do not remove what we did not create */
                        for (size_t j = i; j < cg->n; j++) {
                                free(cg->dirs[j]);
                                cg->dirs[j] = NULL;
                        }
                        cg->n = i;
                        return r;
                }
        }

        r = apply_limits_all(cg, limits);
        if (r < 0)
                return r;
        r = open_procs_fds(cg);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(cg);
        return 0;
}

static int get_stats_raw(CGroup *cg, CGroupStats *ret);

/* The peak from here on. v1: writing resets the group's maximum to its current usage.
 * v2: a write resets the peak as seen through this fd (Linux 6.12+); older kernels have only
 * the group's lifetime peak (or none), which is what is reported then. */
static int reset_peak(CGroup *cg) {
        int fd = file_fd(cg, CGROUP_FILE_PEAK);

        if (fd == -ENOENT)
                return 0;
        if (fd < 0)
                return fd;
        if (cg->root->mode == CGROUP_MODE_UNIFIED) {
                (void) pwrite(fd, "reset\n", 6, 0);
                return 0;
        }
        return pwrite(fd, "0", 1, 0) == 1 ? 0 : -errno;
}

/* Counting starts afresh: now (the counters as just read) is the base of the next
 * cgroup_get_stats(), and the peak is reset. */
static int count_afresh(CGroup *cg, const CGroupStats *now) {
        int r = reset_peak(cg);

        if (r < 0)
                return r;
        cg->base = *now;
        cg->base.memory_peak = 0;
        return 0;
}

/* Kills what is in the group until it is empty; -EBUSY after timeout_usec. */
static int wait_empty(CGroup *cg, uint64_t timeout_usec) {
        usec_t start = 0, now;
        int r;

        for (;;) {
                r = cgroup_is_populated(cg);
                if (r <= 0)
                        return r;
                (void) cgroup_kill(cg);
                now = now_usec(CLOCK_MONOTONIC);
                if (start == 0)
                        start = now;
                else if (now - start > timeout_usec)
                        return -EBUSY;
                (void) usleep(5000);
        }
}

int cgroup_open_slot(CGroupRoot *root, const char *name, const CGroupLimits *limits, uint64_t timeout_usec,
                     CGroup **ret) {
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        CGroupStats now;
        int r;

        if (!name_is_valid(name) || !limits_are_valid(limits))
                return -EINVAL;

        cg = cgroup_alloc(root, name);
        if (!cg)
                return -ENOMEM;
        /* whatever happens below, the group stays for the next attempt */
        cg->keep = true;

        for (size_t i = 0; i < cg->n; i++)
                if (mkdir(cg->dirs[i], 0755) < 0 && errno != EEXIST)
                        return -errno;

        /* Nothing of an earlier user of the group may be around: processes of a crashed
         * predecessor, or of a run that outlived its settle timeout. */
        r = wait_empty(cg, timeout_usec);
        if (r < 0)
                return r;

        /* the configuration may have changed since the group was made */
        r = apply_limits_all(cg, limits);
        if (r < 0)
                return r;

        /* counters are cumulative over the group's life: the run's are the difference */
        r = get_stats_raw(cg, &now);
        if (r >= 0)
                r = count_afresh(cg, &now);
        if (r < 0)
                return r;

        r = open_procs_fds(cg);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(cg);
        return 0;
}

_Static_assert(_CGROUP_CONTROLLER_MAX <= CGROUP_PROCS_FDS_MAX,
               "cgroup_procs_fds() may return more than CGROUP_PROCS_FDS_MAX");

size_t cgroup_procs_fds(const CGroup *cg, const int **ret) {
        *ret = cg->procs_fds;
        return cg->n;
}

int cgroup_join_self(const int *fds, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (write(fds[i], "0", 1) != 1)
                        return -errno;
        return 0;
}

static int pidfd_open_(pid_t pid) {
        return (int) syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_send_signal_(int fd, int sig) {
        return (int) syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
}

/* The hierarchies (a bit each) in whose group pid is, by /proc/PID/cgroup. */
static unsigned pid_groups(CGroup *cg, pid_t pid) {
        _cleanup_free_ char *text = NULL;
        char path[64];
        unsigned mask = 0;

        snprintf(path, sizeof path, "/proc/%d/cgroup", (int) pid);
        if (read_full_file(path, &text) < 0)
                return 0;

        for (char *line = text, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                char *c1 = strchr(line, ':');
                char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
                if (!c2)
                        continue;
                *c2 = '\0';
                for (size_t i = 0; i < cg->n; i++) {
                        const Hierarchy *h = &cg->root->h[i];
                        size_t l = strlen(h->cg_path);
                        bool match = h->ctl_name ? list_contains(c1 + 1, ",", h->ctl_name)
                                                 : strneq(line, "0:", 2) && c1[1] == '\0';

                        /* <cg_path>/<name> */
                        if (match && strneq(c2 + 1, h->cg_path, l) && c2[1 + l] == '/' &&
                            streq(c2 + 2 + l, cg->name))
                                mask |= 1u << i;
                }
        }
        return mask;
}

typedef struct Listed {
        pid_t pid;
        unsigned in; /* the hierarchies whose cgroup.procs listed it */
} Listed;

static int listed_compare(const void *a, const void *b) {
        pid_t x = ((const Listed *) a)->pid, y = ((const Listed *) b)->pid;
        return x < y ? -1 : x > y;
}

/* Every process listed in the group's cgroup.procs of any hierarchy, signalled once through a
 * pidfd after checking that it is (still) in the group: the pid may have been reused since it
 * was listed. A process is usually listed in every hierarchy, and /proc/PID/cgroup tells about
 * all of them at once. The number of processes signalled. */
static int kill_listed(CGroup *cg) {
        _cleanup_free_ Listed *l = NULL;
        size_t n = 0, allocated = 0, m = 0;
        int r, k = 0;

        for (size_t i = 0; i < cg->n; i++) {
                _cleanup_free_ char *text = NULL, *p = NULL;

                if (!cg->dirs[i])
                        continue;
                p = path_join(cg->dirs[i], NULL, "/cgroup.procs");
                if (!p)
                        return -ENOMEM;
                r = read_full_file(p, &text);
                if (r == -ENOENT)
                        continue;
                if (r < 0)
                        return r;
                for (char *s = text, *next; s && *s; s = next) {
                        char *end;
                        long pid;

                        next = strchr(s, '\n');
                        if (next)
                                *next++ = '\0';
                        pid = strtol(s, &end, 10);
                        if (end == s || *end != '\0' || pid <= 1)
                                continue;
                        if (n == allocated) {
                                size_t a = MAX(allocated * 2, (size_t) 16);
                                Listed *q = realloc(l, a * sizeof *q);
                                if (!q)
                                        return -ENOMEM;
                                l = q;
                                allocated = a;
                        }
                        l[n++] = (Listed) { .pid = (pid_t) pid, .in = 1u << i };
                }
        }
        if (n == 0)
                return 0;

        /* one entry per process */
        qsort(l, n, sizeof *l, listed_compare);
        for (size_t j = 1; j < n; j++)
                if (l[j].pid == l[m].pid)
                        l[m].in |= l[j].in;
                else
                        l[++m] = l[j];
        n = m + 1;

        for (size_t j = 0; j < n; j++) {
                _cleanup_close_ int fd = pidfd_open_(l[j].pid);

                if (fd < 0)
                        continue; /* gone already */
                if (!(pid_groups(cg, l[j].pid) & l[j].in))
                        continue; /* left (an exiting process shows no group), or a reused pid */
                if (pidfd_send_signal_(fd, SIGKILL) >= 0)
                        k++;
        }
        return k;
}

int cgroup_kill(CGroup *cg) {
        int r;

        if (cg->root->mode == CGROUP_MODE_UNIFIED) {
                if (!cg->dirs[0])
                        return 0;
                r = write_attr(cg->dirs[0], "cgroup.kill", "1");
                if (r >= 0)
                        return 0;
                if (r != -ENOENT) /* kernels before 5.14 lack cgroup.kill */
                        return r;
        }

        return kill_listed(cg);
}

int cgroup_is_populated(CGroup *cg) {
        bool counted = false;
        char buf[256];
        uint64_t v;
        int r;

        /* pids.current counts tasks until they are reaped: zombies, too */
        r = file_read(cg, CGROUP_FILE_PIDS_CURRENT, buf, sizeof buf);
        if (r >= 0 && strtoull(buf, NULL, 10) > 0)
                return 1;
        if (r < 0 && r != -ENOENT)
                return r;
        counted = r >= 0;

        if (cg->root->mode == CGROUP_MODE_UNIFIED) {
                r = file_read(cg, CGROUP_FILE_EVENTS, buf, sizeof buf);
                if (r == -ENOENT)
                        return 0;
                if (r < 0)
                        return r;
                r = keyed_u64(buf, "populated", &v);
                if (r < 0)
                        return r;
                return v > 0;
        }

        /* v1: a process may be in the group of some hierarchies only */
        for (size_t i = 0; i < cg->n; i++) {
                if (!cg->dirs[i])
                        continue;
                if (counted && (cg->root->h[i].mask & MASK(CGROUP_CONTROLLER_PIDS)))
                        continue; /* that is pids.current's */
                r = read_attr(cg->dirs[i], "cgroup.procs", buf, sizeof buf);
                if (r == -ENOENT)
                        continue;
                if (r < 0)
                        return r;
                if (r > 0)
                        return 1;
        }
        return 0;
}

int cgroup_list_pids(CGroup *cg, pid_t *ret, size_t n) {
        _cleanup_free_ char *text = NULL, *p = NULL;
        const char *d = dir_with(cg, CGROUP_CONTROLLER_PIDS);
        size_t k = 0;
        int r;

        if (!d)
                d = cg->n > 0 ? cg->dirs[0] : NULL;
        if (!d)
                return 0;
        p = path_join(d, NULL, "/cgroup.procs");
        if (!p)
                return -ENOMEM;
        r = read_full_file(p, &text);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        for (char *s = text, *end; *s && k < n; s = end) {
                long pid = strtol(s, &end, 10);

                if (end == s)
                        break;
                if (pid > 0)
                        ret[k++] = (pid_t) pid;
        }
        return (int) k;
}

static const char *dir_with(CGroup *cg, CGroupController c) {
        for (size_t i = 0; i < cg->n; i++)
                if ((cg->root->h[i].mask & MASK(c)) && cg->dirs[i])
                        return cg->dirs[i];
        return NULL;
}

static int get_stats_raw(CGroup *cg, CGroupStats *ret) {
        CGroupStats s = {};
        char buf[4096];
        int r;

        if (cg->root->mode == CGROUP_MODE_UNIFIED) {
                bool optional = cg->root->flags & CGROUP_ROOT_LIMITS_OPTIONAL;

                if (!cg->dirs[0])
                        return -ENOENT;
                r = file_read(cg, CGROUP_FILE_OOM, buf, sizeof buf);
                if (r >= 0)
                        r = keyed_u64(buf, "oom_kill", &s.oom_kills);
                if (r < 0 && !(r == -ENOENT && optional))
                        return r;
                r = file_read(cg, CGROUP_FILE_PIDS_EVENTS, buf, sizeof buf);
                if (r >= 0)
                        r = keyed_u64(buf, "max", &s.pids_max_events);
                if (r < 0 && !(r == -ENOENT && optional))
                        return r;
                if (file_read(cg, CGROUP_FILE_PEAK, buf, sizeof buf) > 0)
                        s.memory_peak = strtoull(buf, NULL, 10);
                if (file_read(cg, CGROUP_FILE_CPU, buf, sizeof buf) > 0)
                        (void) keyed_u64(buf, "usage_usec", &s.cpu_usec);
                *ret = s;
                return 0;
        }

        r = file_read(cg, CGROUP_FILE_OOM, buf, sizeof buf);
        if (r < 0)
                return r;
        r = keyed_u64(buf, "oom_kill", &s.oom_kills); /* since Linux 4.13 */
        if (r < 0)
                return r;
        if (file_read(cg, CGROUP_FILE_PEAK, buf, sizeof buf) > 0)
                s.memory_peak = strtoull(buf, NULL, 10);
        r = file_read(cg, CGROUP_FILE_PIDS_EVENTS, buf, sizeof buf);
        if (r < 0)
                return r;
        r = keyed_u64(buf, "max", &s.pids_max_events);
        if (r < 0)
                return r;
        if (file_read(cg, CGROUP_FILE_CPU, buf, sizeof buf) > 0)
                s.cpu_usec = strtoull(buf, NULL, 10) / 1000;

        *ret = s;
        return 0;
}

static uint64_t sub_sat(uint64_t a, uint64_t b) {
        return a > b ? a - b : 0;
}

int cgroup_get_stats(CGroup *cg, CGroupStats *ret) {
        CGroupStats now, s;
        int r;

        r = get_stats_raw(cg, &now);
        if (r < 0)
                return r;
        s = now;
        s.oom_kills = sub_sat(now.oom_kills, cg->base.oom_kills);
        s.pids_max_events = sub_sat(now.pids_max_events, cg->base.pids_max_events);
        s.cpu_usec = sub_sat(now.cpu_usec, cg->base.cpu_usec);
        /* what we read now is the base of the next call: no second read when the group is
         * used again (a slot's next run), as nothing happens in an empty group meanwhile */
        r = count_afresh(cg, &now);
        if (r < 0)
                return r;
        *ret = s;
        return 0;
}

int cgroup_remove(CGroup *cg) {
        int r = 0;

        cgroup_close_fds(cg);
        for (size_t i = 0; i < cg->n; i++) {
                if (!cg->dirs[i])
                        continue;
                if (rmdir(cg->dirs[i]) < 0 && errno != ENOENT) {
                        if (r == 0)
                                r = -errno;
                        continue;
                }
                free(cg->dirs[i]);
                cg->dirs[i] = NULL;
        }
        if (r == 0)
                cg->removed = true;
        return r;
}

const char *cgroup_path(const CGroup *cg) {
        for (size_t i = 0; i < cg->n; i++)
                if (cg->root->h[i].mask & MASK(CGROUP_CONTROLLER_MEMORY))
                        return cg->dirs[i];
        return NULL;
}

const char *cgroup_controller_path(const CGroup *cg, const char *controller) {
        for (CGroupController c = 0; c < _CGROUP_CONTROLLER_MAX; c++)
                if (streq(controller_names[c], controller))
                        for (size_t i = 0; i < cg->n; i++)
                                if (cg->root->h[i].mask & MASK(c))
                                        return cg->dirs[i];
        return NULL;
}

CGroup *cgroup_free(CGroup *cg) {
        if (!cg)
                return NULL;

        cgroup_close_fds(cg);
        if (!cg->removed && !cg->keep) {
                bool any = false;
                for (size_t i = 0; i < cg->n; i++)
                        any = any || cg->dirs[i];
                if (any) {
                        (void) cgroup_kill(cg);
                        (void) cgroup_remove(cg);
                }
        }
        for (size_t i = 0; i < _CGROUP_CONTROLLER_MAX; i++)
                free(cg->dirs[i]);
        free(cg->name);
        return mfree(cg);
}

int cgroup_trim(CGroupRoot *root, const char *name, uint64_t timeout_usec) {
        _cleanup_(cgroup_freep) CGroup *cg = NULL;
        usec_t start;
        bool exists = false;
        int r;

        if (!name_is_valid(name))
                return -EINVAL;

        cg = cgroup_alloc(root, name);
        if (!cg)
                return -ENOMEM;
        for (size_t i = 0; i < cg->n; i++)
                exists = exists || access(cg->dirs[i], F_OK) >= 0;
        if (!exists) {
                cg->removed = true;
                return 0;
        }

        start = now_usec(CLOCK_MONOTONIC);
        for (;;) {
                /* live tasks block rmdir, zombies (maybe not even ours to reap) do not */
                (void) cgroup_kill(cg);
                r = cgroup_remove(cg);
                if (r >= 0)
                        return 0;
                if (now_usec(CLOCK_MONOTONIC) - start > timeout_usec) {
                        cg->removed = true; /* leave it to the next attempt */
                        return -EBUSY;
                }
                (void) usleep(10000);
        }
}
