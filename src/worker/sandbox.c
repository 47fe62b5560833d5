/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include <sodium.h>

/* "config.h" alone would find the build's generated config.h first */
#include "config.h"
#include "cgroup.h"
#include "json-util.h"
#include "log.h"
#include "sandbox-fs.h"
#include "sandbox.h"
#include "stem.h"

#define DEFAULT_RUNTIME_DIR "/run/dtask-sandbox"
#define DEFAULT_BWRAP "/usr/bin/bwrap"
#define SANDBOX_WORKDIR "/work"
#define ARTIFACT_MAX (64 * 1024 * 1024)
#define READ_CHUNK (64 * 1024)
#define SETTLE_INTERVAL_USEC (5 * USEC_PER_MSEC)
#define SETTLE_WATCH_MAX 4
#define SETTLE_TIMEOUT_USEC (10 * USEC_PER_SEC)
#define TRIM_TIMEOUT_USEC (2 * USEC_PER_SEC)

static const char *const end_names[_SANDBOX_END_MAX] = {
        [SANDBOX_END_EXITED] = "exited",
        [SANDBOX_END_EXPIRED] = "expired",
        [SANDBOX_END_TIMEOUT] = "timeout",
        [SANDBOX_END_OUTPUT_LIMIT] = "output_limit",
        [SANDBOX_END_CANCELLED] = "cancelled",
        [SANDBOX_END_SHUTDOWN] = "shutdown",
        [SANDBOX_END_FAILED] = "failed",
};

static const char *const verdict_names[_SANDBOX_VERDICT_MAX] = {
        [SANDBOX_VERDICT_OK] = "ok",
        [SANDBOX_VERDICT_RUNTIME_ERROR] = "runtime_error",
        [SANDBOX_VERDICT_COMPILE_ERROR] = "compile_error",
        [SANDBOX_VERDICT_TIMEOUT] = "timeout",
        [SANDBOX_VERDICT_MEMORY_LIMIT] = "memory_limit",
        [SANDBOX_VERDICT_PIDS_LIMIT] = "pids_limit",
        [SANDBOX_VERDICT_OUTPUT_LIMIT] = "output_limit",
        [SANDBOX_VERDICT_CANCELLED] = "cancelled",
        [SANDBOX_VERDICT_INTERNAL_ERROR] = "internal_error",
};

const char *sandbox_end_to_string(SandboxEnd e) {
        return e >= 0 && e < _SANDBOX_END_MAX ? end_names[e] : NULL;
}

const char *sandbox_verdict_to_string(SandboxVerdict v) {
        return v >= 0 && v < _SANDBOX_VERDICT_MAX ? verdict_names[v] : NULL;
}

/* A slot taken ahead of the next run, with a child already forked into the slot's cgroup and
 * waiting for its command line (the "go" message) to exec bubblewrap. Joining a cgroup is the
 * expensive step of starting a run: on cgroup v1 the first write to cgroup.procs after a pause
 * waits for an RCU grace period (the kernel's cgroup_threadgroup_rwsem), milliseconds; a stem
 * does it while the worker is idle or the previous run is still going. It is root and has
 * nothing of any run until the go message; it exits on EOF of its control pipe and dies with
 * us (PR_SET_PDEATHSIG).
 *
 * Bubblewrap starts the program only once the gate is open: a byte in the pipe behind its
 * --block-fd, written when the child goes to a run (child_give()). A warm stem (see
 * sandbox_warm()) had its go message already: its bubblewrap sets the sandbox up (namespaces,
 * mounts; a few ms) while the worker still waits for the claim of the task, and then waits at
 * the gate, with an empty working directory, until sandbox_start() writes the program there and
 * opens it. */
typedef struct Stem {
        /* the slot */
        uid_t uid;
        int lock_fd;
        char slot_name[32];
        char *workdir_path;
        CGroup *cgroup;
        /* the child */
        pid_t pid;
        int pidfd;
        int ctl_fd;                                    /* the go message; closing it makes the stem exit */
        int stdin_fd, stdout_fd, stderr_fd, status_fd; /* our ends of its pipes */
        int block_fd;                                  /* our read end of its block pipe */
        int gate_fd;                                   /* the write end: closed once the gate is open */
        /* warm: its bubblewrap is setting up, or set up, for a run of this language */
        Language warm;
        Workdir workdir; /* warm: the run's working directory, empty */
} Stem;

#define STEM_NULL                                                                                           \
        ((Stem) { .lock_fd = -EBADF, .pidfd = -EBADF, .ctl_fd = -EBADF, .stdin_fd = -EBADF,                 \
                  .stdout_fd = -EBADF, .stderr_fd = -EBADF, .status_fd = -EBADF, .block_fd = -EBADF,        \
                  .gate_fd = -EBADF, .warm = _LANGUAGE_INVALID, .workdir = WORKDIR_NULL })

struct Sandbox {
        SandboxSettings settings;
        char *runtime_dir;
        char *bwrap;
        char *stem_helper; /* dtask-sandbox-stem spawns the children of runs; NULL: we fork them */
        int runtime_fd;
        int cache_fd;    /* <cache_dir>/csharp, or -EBADF */
        int children_fd; /* our /proc/self/task/<tid>/children, see reap_orphans() */
        CGroupRoot *cgroup_root;
        Runner *runners[_LANGUAGE_MAX];
        char **base_args; /* bwrap options common to every run */
        unsigned next_slot;
        uint8_t *slot_used; /* per slot: we made its cgroup, sandbox_free() removes it */
        Stem *kept;         /* slots our own runs left clean, still ours (slot part only): see slot_keep() */
        size_t n_kept, n_kept_allocated;
        Stem stem;                   /* for the next run, when .pid > 0 */
        Stem warm;                   /* a warm stem (see sandbox_warm()), when .pid > 0 */
        sd_event_source *stem_event; /* prepares the stem when the loop is idle */
        char *stem_buf;              /* STEM_MSG_MAX bytes, and STEM_ARGC_MAX pointers, for the stem */
        char **stem_argv;
        SandboxRun *runs;
};

typedef enum RunPhase {
        PHASE_NONE,
        PHASE_BUILD,
        PHASE_RUN,
} RunPhase;

typedef struct Output {
        char *data;
        size_t size, allocated;
        int fd;
        sd_event_source *source;
} Output;

struct SandboxRun {
        Sandbox *sandbox;
        SandboxRun *prev, *next;
        sd_event *event;
        const Runner *runner;
        SandboxDoneCallback callback;
        SandboxExitedCallback exited_callback;
        void *userdata;

        char *code;
        size_t code_size;
        char *stdin_data;
        size_t stdin_size, stdin_written;
        usec_t ttl_deadline;     /* CLOCK_REALTIME */
        usec_t runtime_deadline; /* CLOCK_MONOTONIC */
        usec_t start_time;       /* CLOCK_MONOTONIC */

        /* the slot */
        uid_t uid;
        int lock_fd;
        char slot_name[32];
        char *workdir_path;
        Stem stem; /* from the sandbox, until the first phase starts it (.pid and the fds only) */
        bool slot_clean; /* the last phase ended with its cgroup seen empty and its working
                          * directory removed: the slot may be kept for our next run */

        /* C# build cache */
        bool use_cache;
        char cache_key[crypto_generichash_BYTES * 2 + 1];
        char **artifact_data;
        size_t *artifact_size;

        /* the current phase */
        RunPhase phase;
        Workdir workdir;
        CGroup *cgroup;
        pid_t pid;
        int pidfd;
        sd_event_source *child_source;
        int status_fd; /* setup errors of the child before its exec of bubblewrap */
        int block_fd;  /* our read end of bubblewrap's --block-fd (see Stem) */
        Output out[2]; /* stdout, stderr */
        int stdin_fd;
        sd_event_source *stdin_source;
        bool child_exited;
        bool sandbox_ready; /* bubblewrap set the sandbox up and went on to start the program */
        siginfo_t child_status;
        usec_t settle_start;
        sd_event_source *settle_timer;
        sd_event_source *exit_watch[SETTLE_WATCH_MAX]; /* pidfds of processes still in the cgroup */

        sd_event_source *ttl_timer, *runtime_timer, *done_event;

        bool killing;
        SandboxEnd kill_reason;
        bool finished;
        bool build_failed;
        int error;
        char *error_message;
        CGroupStats stats;

        SandboxResult result;
};

static void stem_discard(Stem *s);
static void warm_discard(Sandbox *sb);

/* ---------------------------------------------------------------------------------------- */
/* settings */

void sandbox_settings_init(SandboxSettings *s) {
        *s = (SandboxSettings) {
                .memory_max = 256 * 1024 * 1024,
                .pids_max = 64,
                .cpu_quota_percent = 100,
                .file_size_max = 16 * 1024 * 1024,
                .open_files_max = 256,
                .output_max = 1024 * 1024,
                .max_runtime = 24 * 3600 * USEC_PER_SEC,
                .uid_min = 61000,
                .uid_max = 61999,
                .workdir_tmpfs = true,
                .runners = {
                        .python_path = "/usr/bin/python3",
                        .csharp_toolchain = "mono",
                        .mcs_path = "/usr/bin/mcs",
                        .mono_path = "/usr/bin/mono",
                        .dotnet_path = "/usr/bin/dotnet",
                },
        };
}

int sandbox_settings_from_config(SandboxSettings *s, const Config *c) {
        sandbox_settings_init(s);

        s->memory_max = config_uint(c, "SANDBOX_MEMORY_MAX");
        s->pids_max = config_uint(c, "SANDBOX_PIDS_MAX");
        s->cpu_quota_percent = config_uint(c, "SANDBOX_CPU_QUOTA");
        s->file_size_max = config_uint(c, "SANDBOX_FILE_SIZE_MAX");
        s->open_files_max = config_uint(c, "SANDBOX_OPEN_FILES_MAX");
        s->output_max = config_uint(c, "SANDBOX_OUTPUT_MAX");
        s->max_runtime = config_uint(c, "SANDBOX_MAX_RUNTIME");
        s->uid_min = (uid_t) config_uint(c, "SANDBOX_UID_MIN");
        s->uid_max = (uid_t) config_uint(c, "SANDBOX_UID_MAX");
        s->cgroup_root = config_string(c, "SANDBOX_CGROUP_ROOT");
        s->cache_dir = config_string(c, "CACHE_DIRECTORY");
        s->runners.python_path = config_string(c, "PYTHON_PATH");
        s->runners.csharp_toolchain = config_string(c, "CSHARP_TOOLCHAIN");
        s->runners.mcs_path = config_string(c, "MCS_PATH");
        s->runners.mono_path = config_string(c, "MONO_PATH");
        s->runners.dotnet_path = config_string(c, "DOTNET_PATH");
        return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* helpers */

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

static int strv_push(char ***l, size_t *n, const char *s) {
        char **m, *c;

        c = strdup(s);
        if (!c)
                return -ENOMEM;
        m = realloc(*l, (*n + 2) * sizeof(char *));
        if (!m) {
                free(c);
                return -ENOMEM;
        }
        m[(*n)++] = c;
        m[*n] = NULL;
        *l = m;
        return 0;
}

static int strv_pushv(char ***l, size_t *n, ...) _sentinel_;
static int strv_pushv(char ***l, size_t *n, ...) {
        va_list ap;
        int r = 0;

        va_start(ap, n);
        for (const char *s = va_arg(ap, const char *); s && r >= 0; s = va_arg(ap, const char *))
                r = strv_push(l, n, s);
        va_end(ap);
        return r;
}

static int fd_move_above_stdio(int fd) {
        int copy;

        if (fd < 0 || fd > 2)
                return fd;
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return -errno;
        safe_close(fd);
        return copy;
}

/* pipe2(O_CLOEXEC) with both ends above stdio, so the child can dup2 onto 0-2 blindly. */
static int make_pipe(int fds[2]) {
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        fds[0] = fd_move_above_stdio(fds[0]);
        fds[1] = fd_move_above_stdio(fds[1]);
        if (fds[0] < 0 || fds[1] < 0) {
                int r = fds[0] < 0 ? fds[0] : fds[1];
                safe_close(fds[0]);
                safe_close(fds[1]);
                return r;
        }
        return 0;
}

/* Opens the gate of a child (see Stem): bubblewrap reads the byte after setting up the sandbox,
 * right before it starts the program. If the byte is still in the pipe once bubblewrap has
 * exited, bubblewrap gave up before (read_status_fd()). */
static void gate_open(int *gate_fd) {
        if (*gate_fd < 0)
                return;
        /* EPIPE: bubblewrap is gone already, which the run sees when it reaps it */
        (void) !write(*gate_fd, "x", 1);
        *gate_fd = safe_close(*gate_fd);
}

static int set_nonblock(int fd) {
        int flags = fcntl(fd, F_GETFL);

        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;
        return 0;
}

static int pidfd_open_(pid_t pid) {
        return (int) syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_send_signal_(int fd, int sig) {
        return (int) syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
}

/* SIGKILLs every process whose real UID is uid, atomically with respect to fork() (the
 * kernel walks the task list under tasklist_lock): a forked helper becomes uid (real,
 * effective and saved, so it has no rights over anything else) and kill(-1)s. */
static int kill_uid(uid_t uid) {
        pid_t pid;
        int status;

        if (uid == 0)
                return -EINVAL;

        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0)
                        _exit(EXIT_FAILURE);
                if (getuid() != uid || geteuid() != uid)
                        _exit(EXIT_FAILURE);
                (void) kill(-1, SIGKILL);
                _exit(EXIT_SUCCESS);
        }
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EPERM;
}

/* We are a child subreaper (sandbox_new()): when a kill takes the outer bubblewrap down before
 * its PID-1 helper, the helper is reparented to us. Reap such zombies — children with a slot
 * UID that no run tracks as its main process — so that nothing of a run lingers, not even in
 * the process table (pids.current counts zombies, too). Up to n of the untracked children still
 * alive go to alive (NULL: none wanted); returns how many. */
static size_t reap_orphans(Sandbox *sb, pid_t *alive, size_t n) {
        char buf[4096];
        size_t n_alive = 0;
        ssize_t k;

        /* several times a run: kept open, read anew from offset 0 */
        if (sb->children_fd < 0) {
                char path[64];

                snprintf(path, sizeof path, "/proc/self/task/%d/children", (int) getpid());
                sb->children_fd = open(path, O_RDONLY | O_CLOEXEC);
                if (sb->children_fd < 0)
                        return 0;
        }
        k = pread(sb->children_fd, buf, sizeof buf - 1, 0);
        if (k <= 0)
                return 0;
        buf[k] = '\0';

        for (char *p = buf, *end; *p; p = end) {
                siginfo_t si = {};
                bool tracked = false;
                long pid = strtol(p, &end, 10);

                if (end == p)
                        break;
                if (pid <= 0 || pid == sb->stem.pid || pid == sb->warm.pid)
                        continue;
                for (SandboxRun *r = sb->runs; r; r = r->next)
                        tracked = tracked || (r->pid == (pid_t) pid && !r->child_exited);
                if (tracked)
                        continue;
                if (waitid(P_PID, (id_t) pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
                        continue;
                if (si.si_pid == 0) {
                        if (alive && n_alive < n)
                                alive[n_alive++] = (pid_t) pid;
                        continue;
                }
                if (si.si_uid < sb->settings.uid_min || si.si_uid > sb->settings.uid_max)
                        continue;
                (void) waitid(P_PID, (id_t) pid, &si, WEXITED | WNOHANG);
        }
        return n_alive;
}

/* ---------------------------------------------------------------------------------------- */
/* sandbox */

/* bwrap arguments for /bin, /lib… as the host has them: usr-merged symlinks or directories. */
static int add_host_layout(char ***args, size_t *n) {
        static const char *const dirs[] = { "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32" };
        int r;

        for (size_t i = 0; i < ELEMENTSOF(dirs); i++) {
                struct stat st;
                char target[PATH_MAX];
                ssize_t k;

                if (lstat(dirs[i], &st) < 0)
                        continue;
                if (S_ISLNK(st.st_mode)) {
                        k = readlink(dirs[i], target, sizeof target - 1);
                        if (k <= 0)
                                continue;
                        target[k] = '\0';
                        if (!strneq(target, "usr/", 4) && !strneq(target, "/usr/", 5))
                                continue;
                        r = strv_pushv(args, n, "--symlink", target, dirs[i], NULL);
                } else if (S_ISDIR(st.st_mode))
                        r = strv_pushv(args, n, "--ro-bind", dirs[i], dirs[i], NULL);
                else
                        continue;
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The bwrap version as major * 1000000 + minor * 1000 + micro. */
static int bwrap_version(const char *bwrap, unsigned *ret) {
        _cleanup_close_ int rfd = -EBADF;
        int fds[2], r, status;
        char buf[128] = {};
        size_t n = 0;
        unsigned a = 0, b = 0, c = 0;
        pid_t pid;

        r = make_pipe(fds);
        if (r < 0)
                return r;
        pid = fork();
        if (pid < 0) {
                r = -errno;
                safe_close(fds[0]);
                safe_close(fds[1]);
                return r;
        }
        if (pid == 0) {
                char *argv[] = { (char *) bwrap, (char *) "--version", NULL }, *envp[] = { NULL };
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(fds[1], STDOUT_FILENO) < 0 ||
                    dup2(null, STDERR_FILENO) < 0)
                        _exit(127);
                execve(bwrap, argv, envp);
                _exit(127);
        }
        safe_close(fds[1]);
        rfd = fds[0];
        for (;;) {
                ssize_t k = read(rfd, buf + n, sizeof buf - 1 - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0 || (n += (size_t) k) >= sizeof buf - 1)
                        break;
        }
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return -ENOEXEC;
        if (sscanf(buf, "bubblewrap %u.%u.%u", &a, &b, &c) < 2)
                return -EBADMSG;
        *ret = a * 1000000 + b * 1000 + c;
        return 0;
}

static int check_uid_range(uid_t lo, uid_t hi, char **ret_error) {
        struct passwd *pw;
        struct group *gr;

        if (lo == 0 || lo > hi)
                return error_set(ret_error, -EINVAL, "SANDBOX_UID_MIN=%u, SANDBOX_UID_MAX=%u: need 0 < min <= max",
                                 (unsigned) lo, (unsigned) hi);
        if (hi - lo >= 65536)
                return error_set(ret_error, -EINVAL, "SANDBOX_UID_MIN…SANDBOX_UID_MAX: at most 65536 IDs");
        if (hi == (uid_t) -1 || hi == 65534 || (lo <= 65534 && hi >= 65534))
                return error_set(ret_error, -EINVAL, "SANDBOX_UID_MIN…SANDBOX_UID_MAX must not include nobody (65534) or -1");

        /* Every process of a slot's UID is killed at the end of a run: the range must not
         * belong to anyone. Local accounts only (no NSS network lookups per run). */
        setpwent();
        while ((errno = 0, pw = getpwent()))
                if (pw->pw_uid >= lo && pw->pw_uid <= hi) {
                        int r = error_set(ret_error, -EADDRINUSE,
                                          "UID %u (%s) is in SANDBOX_UID_MIN…SANDBOX_UID_MAX: the range must be unused",
                                          (unsigned) pw->pw_uid, pw->pw_name);
                        endpwent();
                        return r;
                }
        endpwent();
        setgrent();
        while ((errno = 0, gr = getgrent()))
                if (gr->gr_gid >= lo && gr->gr_gid <= hi) {
                        int r = error_set(ret_error, -EADDRINUSE,
                                          "GID %u (%s) is in SANDBOX_UID_MIN…SANDBOX_UID_MAX: the range must be unused",
                                          (unsigned) gr->gr_gid, gr->gr_name);
                        endgrent();
                        return r;
                }
        endgrent();
        if (getuid() >= lo && getuid() <= hi)
                return error_set(ret_error, -EINVAL, "Our own UID is in SANDBOX_UID_MIN…SANDBOX_UID_MAX");
        return 0;
}

static int mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = '\0';
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

/* A directory of ours: created when missing, must be root's, not a symlink, not writable
 * by others; mode is enforced. */
static int open_private_dir(const char *path, mode_t mode, char **ret_error) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        int r;

        if (isempty(path) || path[0] != '/')
                return error_set(ret_error, -EINVAL, "%s: must be an absolute path", strempty(path));
        r = mkdir_p(path, mode);
        if (r < 0)
                return error_set(ret_error, r, "Cannot create %s: %m", path);
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return error_set(ret_error, -errno, "Cannot open %s: %m", path);
        if (fstat(fd, &st) < 0)
                return error_set(ret_error, -errno, "Cannot stat %s: %m", path);
        if (st.st_uid != 0)
                return error_set(ret_error, -EPERM, "%s must belong to root", path);
        if ((st.st_mode & 07777) != mode && fchmod(fd, mode) < 0)
                return error_set(ret_error, -errno, "Cannot chmod %s: %m", path);
        return TAKE_FD(fd);
}

/* Takes the lock of slot uid (a file in the runtime directory, made when create is set) and
 * names the slot: the lock's fd, -EWOULDBLOCK while another process holds it, or another
 * error. The slot range is shared by every worker of the host. */
static int slot_lock(Sandbox *sb, uid_t uid, bool create, char slot_name[static 32]) {
        _cleanup_close_ int fd = -EBADF;
        char lock_name[48];

        snprintf(lock_name, sizeof lock_name, "slot-%u.lock", (unsigned) uid);
        snprintf(slot_name, 32, "slot-%u", (unsigned) uid);
        fd = openat(sb->runtime_fd, lock_name, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | (create ? O_CREAT : 0),
                    0600);
        if (fd < 0)
                return -errno;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0)
                return errno == EWOULDBLOCK ? -EWOULDBLOCK : -errno;
        return TAKE_FD(fd);
}

/* What crashed workers left in slots nobody holds now: a working directory (its tmpfs may
 * hold up to SANDBOX_MEMORY_MAX of files), the slot's cgroup. Whoever takes such a slot
 * cleans it up, but a sandbox keeps the slots it uses (slot_keep()) rather than coming round
 * to every slot of the range in turn: so a starting sandbox (a worker restarted after a
 * crash) sweeps the range once. Cheap where there is nothing: a stat or two per slot. */
static void slots_sweep(Sandbox *sb) {
        const char *cg_root = cgroup_root_path(sb->cgroup_root);
        unsigned n = sandbox_slots(sb), swept = 0;

        for (unsigned i = 0; i < n; i++) {
                uid_t uid = sb->settings.uid_min + i;
                char slot_name[32], group[PATH_MAX];
                _cleanup_free_ char *workdir = NULL;
                _cleanup_close_ int fd = -EBADF;
                struct stat st;
                int k;

                snprintf(slot_name, sizeof slot_name, "slot-%u", (unsigned) uid);
                snprintf(group, sizeof group, "%s/%s", strempty(cg_root), slot_name);
                if (fstatat(sb->runtime_fd, slot_name, &st, AT_SYMLINK_NOFOLLOW) < 0 &&
                    (!cg_root || access(group, F_OK) < 0))
                        continue;

                fd = slot_lock(sb, uid, /* create= */ true, slot_name);
                if (fd < 0)
                        continue; /* in use: its holder's business */
                if (asprintf(&workdir, "%s/%s", sb->runtime_dir, slot_name) < 0)
                        return;
                k = cgroup_trim(sb->cgroup_root, slot_name, TRIM_TIMEOUT_USEC);
                if (k >= 0)
                        k = kill_uid(uid);
                if (k >= 0)
                        k = workdir_trim(workdir);
                if (k < 0)
                        log_debug_errno(k, "Failed to clean up slot %u, left to whoever takes it: %m", (unsigned) uid);
                else
                        swept++;
        }
        if (swept > 0)
                log_debug("Cleaned up what crashed workers left in %u sandbox slot(s).", swept);
}

/* The cgroups of the slots we used, as far as no one else is using the slot right now (the
 * slot range is shared by every worker of the host): nothing of ours stays behind. */
static void slots_remove_cgroups(Sandbox *sb) {
        unsigned n = sb->slot_used ? sandbox_slots(sb) : 0;

        for (unsigned i = 0; i < n; i++) {
                char slot_name[32];
                _cleanup_close_ int fd = -EBADF;
                uid_t uid = sb->settings.uid_min + i;
                int k;

                if (!sb->slot_used[i] || sb->runtime_fd < 0 || !sb->cgroup_root)
                        continue;
                fd = slot_lock(sb, uid, /* create= */ false, slot_name);
                if (fd < 0)
                        continue;
                k = cgroup_trim(sb->cgroup_root, slot_name, TRIM_TIMEOUT_USEC);
                if (k < 0)
                        log_debug_errno(k, "Failed to remove the cgroup of slot %u: %m", (unsigned) uid);
        }
}

Sandbox *sandbox_free(Sandbox *sb) {
        if (!sb)
                return NULL;
        while (sb->runs)
                sandbox_run_free(sb->runs);
        sb->stem_event = sd_event_source_disable_unref(sb->stem_event);
        stem_discard(&sb->stem);
        warm_discard(sb);
        free(sb->stem_buf);
        free(sb->stem_argv);
        for (size_t i = 0; i < sb->n_kept; i++)
                stem_discard(&sb->kept[i]);
        sb->kept = mfree(sb->kept);
        slots_remove_cgroups(sb);
        free(sb->slot_used);
        for (Language l = 0; l < _LANGUAGE_MAX; l++)
                runner_free(sb->runners[l]);
        cgroup_root_free(sb->cgroup_root);
        strv_free(sb->base_args);
        safe_close(sb->runtime_fd);
        safe_close(sb->cache_fd);
        safe_close(sb->children_fd);
        free(sb->runtime_dir);
        free(sb->bwrap);
        free(sb->stem_helper);
        return mfree(sb);
}

/* The dtask-sandbox-stem to spawn the children of runs with (see stem.h): path, if given ("":
 * none, fork them); else the one next to our own executable (a build tree), else the
 * installed one, where it was built. *ret NULL: fork. */
static int stem_helper_find(const char *path, char **ret, char **ret_error) {
        char self[PATH_MAX + sizeof "/" STEM_HELPER_NAME];
        const char *candidates[2] = {};
        ssize_t n;

        *ret = NULL;
        if (path) {
                if (isempty(path))
                        return 0;
                if (access(path, X_OK) < 0)
                        return error_set(ret_error, -errno, "%s is not executable: %m", path);
                *ret = strdup(path);
                return *ret ? 0 : -ENOMEM;
        }

        n = readlink("/proc/self/exe", self, PATH_MAX);
        if (n > 0 && n < PATH_MAX) {
                char *slash;

                self[n] = '\0';
                slash = strrchr(self, '/');
                if (slash) {
                        strcpy(slash + 1, STEM_HELPER_NAME);
                        candidates[0] = self;
                }
        }
#ifdef STEM_HELPER_PATH
        candidates[1] = STEM_HELPER_PATH;
#endif
        for (size_t i = 0; i < ELEMENTSOF(candidates); i++)
                if (candidates[i] && access(candidates[i], X_OK) >= 0) {
                        *ret = strdup(candidates[i]);
                        return *ret ? 0 : -ENOMEM;
                }
        return 0;
}

int sandbox_new(const SandboxSettings *s, Sandbox **ret, char **ret_error) {
        _cleanup_(sandbox_freep) Sandbox *sb = NULL;
        struct sigaction sa;
        struct rlimit rl;
        size_t n = 0;
        unsigned version = 0;
        int r;

        if (geteuid() != 0)
                return error_set(ret_error, -EPERM, "The sandbox needs root (UID switching, cgroups, mounts)");
        if (s->memory_max < 16 * 1024 * 1024 || s->pids_max < 4 || s->cpu_quota_percent < 1 || s->output_max < 1 ||
            s->open_files_max < 16)
                return error_set(ret_error, -EINVAL, "Sandbox limits too small");

        if (sigaction(SIGCHLD, NULL, &sa) < 0)
                return error_set(ret_error, -errno, "sigaction: %m");
        if (sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT))
                return error_set(ret_error, -EINVAL, "SIGCHLD must not be ignored: children are reaped explicitly");
        if (sigaction(SIGPIPE, NULL, &sa) < 0)
                return error_set(ret_error, -errno, "sigaction: %m");
        if (sa.sa_handler == SIG_DFL)
                (void) signal(SIGPIPE, SIG_IGN);
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
                return error_set(ret_error, -errno, "Cannot become a child subreaper: %m");
        /* About ten fds per slot held (its lock and cgroup files) and seven per run: the soft
         * limit of 1024 (systemd's default, for select() users) would cap the concurrency.
         * Nothing here uses select(); the programs get SANDBOX_OPEN_FILES_MAX of their own. */
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }

        if (sodium_init() < 0)
                return error_set(ret_error, -EIO, "libsodium failed to initialize");

        sb = calloc(1, sizeof *sb);
        if (!sb)
                return -ENOMEM;
        sb->runtime_fd = sb->cache_fd = sb->children_fd = -EBADF;
        sb->stem = sb->warm = STEM_NULL;
        sb->settings = *s;
        sb->settings.cgroup_root = sb->settings.runtime_dir = sb->settings.cache_dir = sb->settings.bwrap_path =
                sb->settings.stem_helper_path = NULL;
        sb->settings.runners = (RunnerSettings) {};

        r = check_uid_range(s->uid_min, s->uid_max, ret_error);
        if (r < 0)
                return r;
        sb->slot_used = calloc(sandbox_slots(sb), 1);
        sb->stem_buf = malloc(STEM_MSG_MAX);
        sb->stem_argv = calloc(STEM_ARGC_MAX, sizeof(char *));
        if (!sb->slot_used || !sb->stem_buf || !sb->stem_argv)
                return -ENOMEM;

        sb->bwrap = strdup(s->bwrap_path ?: DEFAULT_BWRAP);
        sb->runtime_dir = strdup(s->runtime_dir ?: DEFAULT_RUNTIME_DIR);
        if (!sb->bwrap || !sb->runtime_dir)
                return -ENOMEM;

        r = stem_helper_find(s->stem_helper_path, &sb->stem_helper, ret_error);
        if (r < 0)
                return r;

        r = bwrap_version(sb->bwrap, &version);
        if (r < 0)
                return error_set(ret_error, r, "%s does not work (bubblewrap is needed): %s", sb->bwrap, strerror(-r));

        for (Language l = 0; l < _LANGUAGE_MAX; l++) {
                r = runner_new(l, &s->runners, &sb->runners[l], ret_error);
                if (r < 0)
                        return r;
        }

        r = cgroup_root_new(s->cgroup_root, &sb->cgroup_root, ret_error);
        if (r < 0)
                return r;

        /* 0711: the slot UIDs must reach their working directory below it, nothing else */
        r = open_private_dir(sb->runtime_dir, 0711, ret_error);
        if (r < 0)
                return r;
        sb->runtime_fd = r;

        if (!isempty(s->cache_dir)) {
                _cleanup_free_ char *p = NULL;

                if (asprintf(&p, "%s/csharp", s->cache_dir) < 0)
                        return -ENOMEM;
                r = open_private_dir(p, 0700, ret_error);
                if (r < 0)
                        return r;
                sb->cache_fd = r;
        }

        slots_sweep(sb);

        r = strv_pushv(&sb->base_args, &n, sb->bwrap,
                       "--unshare-all", "--unshare-user", "--unshare-cgroup",
                       "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                       "--hostname", "sandbox", NULL);
        if (r >= 0 && version >= 8000)
                r = strv_push(&sb->base_args, &n, "--disable-userns"); /* no nested user namespaces */
        if (r >= 0)
                r = strv_pushv(&sb->base_args, &n, "--ro-bind", "/usr", "/usr", NULL);
        if (r >= 0)
                r = add_host_layout(&sb->base_args, &n);
        if (r >= 0)
                r = strv_pushv(&sb->base_args, &n,
                               "--proc", "/proc",
                               "--dev", "/dev",
                               "--tmpfs", "/dev/shm",
                               "--tmpfs", "/tmp", NULL);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(sb);
        return 0;
}

const char *sandbox_cgroup_mode(const Sandbox *sb) {
        return cgroup_mode_to_string(cgroup_root_mode(sb->cgroup_root));
}

const char *sandbox_stem_helper(const Sandbox *sb) {
        return sb->stem_helper;
}

const char *sandbox_cgroup_root(const Sandbox *sb) {
        return cgroup_root_path(sb->cgroup_root);
}

unsigned sandbox_slots(const Sandbox *sb) {
        return (unsigned) (sb->settings.uid_max - sb->settings.uid_min + 1);
}

unsigned sandbox_slots_ready(const Sandbox *sb) {
        return (sb->stem.pid > 0) + (sb->warm.pid > 0) + (unsigned) sb->n_kept;
}

/* ---------------------------------------------------------------------------------------- */
/* slots */

/* The slot's cgroup for the next phase of a run: emptied, limits applied, statistics from zero. */
static int slot_open_cgroup(Sandbox *sb, const char *slot_name, CGroup **ret) {
        CGroupLimits limits = {
                .memory_max = sb->settings.memory_max,
                .pids_max = sb->settings.pids_max,
                .cpu_quota_percent = sb->settings.cpu_quota_percent,
        };

        return cgroup_open_slot(sb->cgroup_root, slot_name, &limits, TRIM_TIMEOUT_USEC, ret);
}

/* Takes a free slot and fills the slot part of ret: one that our own last run in it left
 * clean (see slot_keep()) as it is, else one from the range, cleaning up what a crashed
 * predecessor may have left of it. */
static int slot_acquire(Sandbox *sb, Stem *ret) {
        unsigned n = sandbox_slots(sb);

        if (sb->n_kept > 0) {
                Stem *k = &sb->kept[--sb->n_kept];

                ret->uid = k->uid;
                ret->lock_fd = TAKE_FD(k->lock_fd);
                memcpy(ret->slot_name, k->slot_name, sizeof ret->slot_name);
                ret->workdir_path = TAKE_PTR(k->workdir_path);
                ret->cgroup = TAKE_PTR(k->cgroup);
                return 0;
        }

        for (unsigned i = 0; i < n; i++) {
                unsigned idx = (sb->next_slot + i) % n;
                uid_t uid = sb->settings.uid_min + idx;
                char slot_name[32];
                _cleanup_free_ char *workdir = NULL;
                _cleanup_close_ int fd = -EBADF;
                CGroup *cg = NULL;
                int k;

                fd = slot_lock(sb, uid, /* create= */ true, slot_name);
                if (fd == -EWOULDBLOCK)
                        continue;
                if (fd < 0)
                        return log_debug_errno(fd, "Cannot lock sandbox slot %u: %m", (unsigned) uid);

                /* We own the slot: whatever is left of it comes from a crashed predecessor. Its
                 * cgroup is kept from run to run; opening it kills what is still in it. */
                if (asprintf(&workdir, "%s/%s", sb->runtime_dir, slot_name) < 0)
                        return -ENOMEM;
                sb->slot_used[idx] = true;
                k = slot_open_cgroup(sb, slot_name, &cg);
                if (k >= 0)
                        k = kill_uid(uid);
                if (k >= 0)
                        k = workdir_trim(workdir);
                if (k < 0) {
                        log_warning_errno(k, "Slot %u has leftovers that cannot be cleaned up, skipping it: %m",
                                          (unsigned) uid);
                        cg = cgroup_free(cg);
                        continue;
                }

                sb->next_slot = (idx + 1) % n;
                ret->cgroup = TAKE_PTR(cg);
                ret->uid = uid;
                ret->lock_fd = TAKE_FD(fd);
                memcpy(ret->slot_name, slot_name, sizeof slot_name);
                ret->workdir_path = TAKE_PTR(workdir);
                return 0;
        }
        return -EBUSY;
}

/* The slot part of s goes to the run. */
static void slot_give(SandboxRun *r, Stem *s) {
        r->uid = s->uid;
        r->lock_fd = TAKE_FD(s->lock_fd);
        memcpy(r->slot_name, s->slot_name, sizeof r->slot_name);
        r->workdir_path = TAKE_PTR(s->workdir_path);
        r->cgroup = TAKE_PTR(s->cgroup);
}

/* A slot whose run ended clean stays ours, lock and open cgroup, for our next run: it needs
 * none of the clean-up of a slot taken from the range (kill_uid()'s fork, the leftover
 * working directory, the cgroup emptied, its limits written, its counters read). Nothing of
 * the run is left in it:
 *  - processes: every process of the slot's UID is made inside the slot's cgroup (the child
 *    joins it while still root, before it takes the UID) and cannot leave it (the cgroup
 *    files are root's, and not in the sandbox); phase_settle() saw the group empty, zombies
 *    included (pids.current);
 *  - files: the working directory (its tmpfs) is unmounted and removed; /tmp, /dev/shm, IPC
 *    objects and the rest went with bubblewrap's namespaces;
 *  - statistics: cgroup_get_stats() at the end of the run started the counting afresh.
 * A slot whose run did not end so (settle timeout, failure, freed while running) goes back
 * to the range, and whoever takes it next cleans it up in full. */
static int slot_keep(SandboxRun *r) {
        Sandbox *sb = r->sandbox;
        Stem *k;

        if (!sb || !r->slot_clean || r->error != 0 || !r->cgroup || r->lock_fd < 0 || !r->workdir_path)
                return -ESTALE;
        if (sb->n_kept == sb->n_kept_allocated) {
                size_t m = MAX(sb->n_kept_allocated * 2, (size_t) 4);
                Stem *p = realloc(sb->kept, m * sizeof *p);

                if (!p)
                        return -ENOMEM;
                sb->kept = p;
                sb->n_kept_allocated = m;
        }
        k = &sb->kept[sb->n_kept++];
        *k = STEM_NULL;
        k->uid = r->uid;
        k->lock_fd = TAKE_FD(r->lock_fd);
        memcpy(k->slot_name, r->slot_name, sizeof k->slot_name);
        k->workdir_path = TAKE_PTR(r->workdir_path);
        k->cgroup = TAKE_PTR(r->cgroup);
        return 0;
}

static void slot_release(SandboxRun *r) {
        stem_discard(&r->stem); /* a stem that was not used */
        if (slot_keep(r) >= 0)
                return;
        r->cgroup = cgroup_free(r->cgroup); /* closes it; the group stays, empty */
        /* closing the fd drops the flock */
        r->lock_fd = safe_close(r->lock_fd);
}

/* ---------------------------------------------------------------------------------------- */
/* the C# build cache */

static void cache_key_compute(SandboxRun *r) {
        crypto_generichash_state st;
        unsigned char h[crypto_generichash_BYTES];
        static const char tag[] = "dtask-csharp-build";

        crypto_generichash_init(&st, NULL, 0, sizeof h);
        crypto_generichash_update(&st, (const unsigned char *) tag, sizeof tag);
        crypto_generichash_update(&st, (const unsigned char *) r->runner->toolchain_id,
                                  strlen(r->runner->toolchain_id) + 1);
        crypto_generichash_update(&st, (const unsigned char *) r->code, r->code_size);
        crypto_generichash_final(&st, h, sizeof h);
        sodium_bin2hex(r->cache_key, sizeof r->cache_key, h, sizeof h);
}

static size_t artifacts_n(const Runner *runner) {
        return strv_length(runner->artifacts);
}

static void artifacts_clear(SandboxRun *r) {
        size_t n = artifacts_n(r->runner);

        if (!r->artifact_data)
                return;
        for (size_t i = 0; i < n; i++)
                free(r->artifact_data[i]);
        r->artifact_data = mfree(r->artifact_data);
        r->artifact_size = mfree(r->artifact_size);
}

static int artifacts_alloc(SandboxRun *r) {
        size_t n = artifacts_n(r->runner);

        artifacts_clear(r);
        r->artifact_data = calloc(n + 1, sizeof(char *));
        r->artifact_size = calloc(n + 1, sizeof(size_t));
        if (!r->artifact_data || !r->artifact_size)
                return -ENOMEM;
        return 0;
}

/* 1 on a hit (artifacts loaded), 0 on a miss. */
static int cache_lookup(SandboxRun *r) {
        Sandbox *sb = r->sandbox;
        size_t n = artifacts_n(r->runner);
        int k;

        if (sb->cache_fd < 0)
                return 0;
        k = artifacts_alloc(r);
        if (k < 0)
                return k;
        for (size_t i = 0; i < n; i++) {
                char name[256];

                snprintf(name, sizeof name, "%s.%s", r->cache_key, r->runner->artifacts[i]);
                k = read_regular_file_at(sb->cache_fd, name, ARTIFACT_MAX, &r->artifact_data[i], &r->artifact_size[i]);
                if (k < 0) {
                        if (k != -ENOENT)
                                log_warning_errno(k, "Ignoring unreadable build cache entry %s: %m", name);
                        artifacts_clear(r);
                        return 0;
                }
        }
        return 1;
}

static void cache_store(SandboxRun *r) {
        Sandbox *sb = r->sandbox;
        size_t n = artifacts_n(r->runner);
        int k = 0;

        if (sb->cache_fd < 0)
                return;

        /* one rename per file; a lookup needs all of them, so a torn entry is just a miss */
        for (size_t i = 0; i < n && k >= 0; i++) {
                char name[256], tmp[300];
                _cleanup_close_ int fd = -EBADF;

                snprintf(name, sizeof name, "%s.%s", r->cache_key, r->runner->artifacts[i]);
                snprintf(tmp, sizeof tmp, ".tmp.%s.%d", name, (int) getpid());
                (void) unlinkat(sb->cache_fd, tmp, 0);
                k = write_file_at(sb->cache_fd, tmp, r->artifact_data[i], r->artifact_size[i], 0600);
                if (k >= 0) {
                        fd = openat(sb->cache_fd, tmp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                        if (fd < 0 || fdatasync(fd) < 0)
                                k = -errno;
                }
                if (k >= 0 && renameat(sb->cache_fd, tmp, sb->cache_fd, name) < 0)
                        k = -errno;
                if (k < 0)
                        (void) unlinkat(sb->cache_fd, tmp, 0);
        }
        if (k < 0)
                log_warning_errno(k, "Failed to store the build in the cache: %m");
}

/* ---------------------------------------------------------------------------------------- */
/* the child */

static const char *const step_names[_STEP_MAX] = {
        [STEP_SIGNALS] = "resetting signals",
        [STEP_SETSID] = "setsid",
        [STEP_CGROUP] = "joining the cgroup",
        [STEP_FDS] = "setting up fds",
        [STEP_RLIMITS] = "setting rlimits",
        [STEP_CREDENTIALS] = "switching UID/GID",
        [STEP_PRCTL] = "prctl",
        [STEP_PARENT] = "parent died",
        [STEP_GO] = "reading the command line",
        [STEP_EXEC] = "executing bubblewrap",
        [STEP_ARGS] = "arguments of " STEM_HELPER_NAME,
};

typedef struct ChildSetup {
        int stdin_fd, stdout_fd, stderr_fd, status_fd;
        int block_fd; /* bubblewrap's --block-fd: the gate (see Stem) */
        int ctl_fd; /* a stem: the go message comes from here (see Stem); else -EBADF */
        char *msg_buf;
        char **msg_argv;
        const int *cgroup_fds;
        size_t n_cgroup_fds;
        uid_t uid;
        pid_t parent;
        uint64_t file_size_max, open_files_max, nproc_max;
        const char *bwrap;
        char **argv;
} ChildSetup;

_noreturn_ static void child_fail(int fd, int step, int error) {
        ChildError e = { .tag = 'E', .step = step, .error = error };
        (void) !write(fd, &e, sizeof e);
        _exit(127);
}

/* After fork(), before exec: async-signal-safe calls only. */
_noreturn_ static void child_exec(const ChildSetup *c) {
        static char *const envp[] = { NULL };
        sigset_t none;
        struct rlimit rl;
        int status_fd = c->status_fd, src[3 + CGROUP_PROCS_FDS_MAX], cgroup_fds[CGROUP_PROCS_FDS_MAX];
        size_t n_src = 0;

        sigemptyset(&none);
        if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
                child_fail(status_fd, STEP_SIGNALS, errno);
        for (int sig = 1; sig < _NSIG; sig++) {
                struct sigaction sa = { .sa_handler = SIG_DFL };
                if (sig == SIGKILL || sig == SIGSTOP)
                        continue;
                (void) sigaction(sig, &sa, NULL);
        }

        if (setsid() < 0)
                child_fail(status_fd, STEP_SETSID, errno);

        if (c->ctl_fd >= 0) {
                /* a stem waits, maybe long: with us, or not at all */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
                        child_fail(status_fd, STEP_PRCTL, errno);
                if (getppid() != c->parent)
                        child_fail(status_fd, STEP_PARENT, ESRCH);
        }

        /* First the fds, so that nothing of other runs is held (their pipes' ends would hold
         * off their EOF) while the cgroup join waits. All our fds are >= 3 (make_pipe), so 0-2
         * can be overwritten blindly. Then from 3 on: the block fd (bubblewrap waits for its byte
         * once the sandbox is set up, see Stem), the status fd (CLOEXEC: it reports a
         * failure before the exec, the exec closes it), the control fd of a stem, the cgroup
         * fds. Those are first copied above their targets, so that no dup2() overwrites one. */
        if (dup2(c->stdin_fd, STDIN_FILENO) < 0 || dup2(c->stdout_fd, STDOUT_FILENO) < 0 ||
            dup2(c->stderr_fd, STDERR_FILENO) < 0)
                child_fail(status_fd, STEP_FDS, errno);
        src[n_src++] = c->block_fd;
        src[n_src++] = c->status_fd;
        if (c->ctl_fd >= 0)
                src[n_src++] = c->ctl_fd;
        for (size_t i = 0; i < c->n_cgroup_fds; i++)
                src[n_src++] = c->cgroup_fds[i];
        for (size_t i = 0; i < n_src; i++) {
                src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3 + (int) n_src);
                if (src[i] < 0)
                        child_fail(status_fd, STEP_FDS, errno);
        }
        for (size_t i = 0; i < n_src; i++)
                if (dup2(src[i], 3 + (int) i) < 0)
                        child_fail(src[1], STEP_FDS, errno);
        status_fd = STEM_FD_STATUS;
        if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) < 0 || close_range(3 + (unsigned) n_src, ~0U, 0) < 0)
                child_fail(status_fd, STEP_FDS, errno);
        for (size_t i = 0; i < c->n_cgroup_fds; i++)
                cgroup_fds[i] = 3 + (int) n_src - (int) c->n_cgroup_fds + (int) i;

        /* into the slot's cgroup while still root: from here on every descendant is in it */
        if (cgroup_join_self(cgroup_fds, c->n_cgroup_fds) < 0)
                child_fail(status_fd, STEP_CGROUP, errno);

        if (c->ctl_fd >= 0) {
                /* the go message: magic, size, then the command line as NUL-terminated strings */
                uint32_t hdr[2];
                size_t got = 0, argc = 0;

                for (char *p = (char *) hdr; got < sizeof hdr;) {
                        ssize_t k = read(STEM_FD_CTL, p + got, sizeof hdr - got);
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k == 0 && got == 0)
                                _exit(0); /* not needed after all */
                        if (k <= 0)
                                child_fail(status_fd, STEP_GO, k < 0 ? errno : EPIPE);
                        got += (size_t) k;
                }
                if (hdr[0] != STEM_MAGIC || hdr[1] == 0 || hdr[1] > STEM_MSG_MAX)
                        child_fail(status_fd, STEP_GO, EBADMSG);
                for (got = 0; got < hdr[1];) {
                        ssize_t k = read(STEM_FD_CTL, c->msg_buf + got, hdr[1] - got);
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k <= 0)
                                child_fail(status_fd, STEP_GO, k < 0 ? errno : EPIPE);
                        got += (size_t) k;
                }
                if (c->msg_buf[hdr[1] - 1] != '\0')
                        child_fail(status_fd, STEP_GO, EBADMSG);
                for (size_t i = 0; i < hdr[1]; i += strlen(c->msg_buf + i) + 1) {
                        if (argc >= STEM_ARGC_MAX - 1)
                                child_fail(status_fd, STEP_GO, E2BIG);
                        c->msg_argv[argc++] = c->msg_buf + i;
                }
                c->msg_argv[argc] = NULL;
        }
        /* bubblewrap gets 0-2, the block fd and the status fd (until the exec) */
        if (close_range(STEM_FD_CTL, ~0U, 0) < 0)
                child_fail(status_fd, STEP_FDS, errno);

        rl.rlim_cur = rl.rlim_max = 0;
        if (setrlimit(RLIMIT_CORE, &rl) < 0)
                child_fail(status_fd, STEP_RLIMITS, errno);
        rl.rlim_cur = rl.rlim_max = c->file_size_max > 0 ? c->file_size_max : RLIM_INFINITY;
        if (setrlimit(RLIMIT_FSIZE, &rl) < 0)
                child_fail(status_fd, STEP_RLIMITS, errno);
        rl.rlim_cur = rl.rlim_max = c->open_files_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                child_fail(status_fd, STEP_RLIMITS, errno);
        /* second line of defence behind pids.max: the UID is this run's alone */
        rl.rlim_cur = rl.rlim_max = c->nproc_max;
        if (setrlimit(RLIMIT_NPROC, &rl) < 0)
                child_fail(status_fd, STEP_RLIMITS, errno);

        if (setgroups(0, NULL) < 0 || setresgid(c->uid, c->uid, c->uid) < 0 || setresuid(c->uid, c->uid, c->uid) < 0)
                child_fail(status_fd, STEP_CREDENTIALS, errno);
        if (getuid() != c->uid || geteuid() != c->uid || getgid() != c->uid || getegid() != c->uid)
                child_fail(status_fd, STEP_CREDENTIALS, EPERM);

        /* after the UID change, which resets the parent-death signal */
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
                child_fail(status_fd, STEP_PRCTL, errno);
        if (getppid() != c->parent)
                child_fail(status_fd, STEP_PARENT, ESRCH);

        umask(0077);
        execve(c->bwrap, c->ctl_fd >= 0 ? c->msg_argv : c->argv, envp);
        child_fail(status_fd, STEP_EXEC, errno);
}

/* ---------------------------------------------------------------------------------------- */
/* stems (see Stem) */

/* Kills the child (if any) and reaps it. */
static void stem_kill(Stem *s) {
        s->ctl_fd = safe_close(s->ctl_fd);
        if (s->pid > 0) {
                siginfo_t si;

                /* not reaped yet: the pid cannot have been reused */
                if (s->pidfd >= 0)
                        (void) pidfd_send_signal_(s->pidfd, SIGKILL);
                else
                        (void) kill(s->pid, SIGKILL);
                while (waitid(P_PID, (id_t) s->pid, &si, WEXITED) < 0 && errno == EINTR)
                        ;
                s->pid = 0;
        }
}

/* Its child has not exited (yet). */
static bool stem_alive(const Stem *s) {
        siginfo_t si = {};

        return s->pidfd >= 0 && waitid((idtype_t) P_PIDFD, (id_t) s->pidfd, &si, WEXITED | WNOHANG | WNOWAIT) >= 0 &&
               si.si_pid == 0;
}

/* Kills the child (if any), reaps it, gives the slot back. */
static void stem_discard(Stem *s) {
        stem_kill(s);
        /* after the kill: bubblewrap must not see the gate open (EOF) while alive */
        s->gate_fd = safe_close(s->gate_fd);
        if (workdir_destroy(&s->workdir) < 0)
                s->workdir.path = mfree(s->workdir.path); /* the slot's next user trims it */
        s->warm = _LANGUAGE_INVALID;
        s->pidfd = safe_close(s->pidfd);
        s->stdin_fd = safe_close(s->stdin_fd);
        s->stdout_fd = safe_close(s->stdout_fd);
        s->stderr_fd = safe_close(s->stderr_fd);
        s->status_fd = safe_close(s->status_fd);
        s->block_fd = safe_close(s->block_fd);
        s->cgroup = cgroup_free(s->cgroup);
        s->lock_fd = safe_close(s->lock_fd);
        s->workdir_path = mfree(s->workdir_path);
}

/* posix_spawn() of dtask-sandbox-stem for c, with c's fds at their fixed numbers (see stem.h).
 * The file actions first copy every fd above all of them and all targets, then to its target,
 * so that no copy overwrites an fd still to be copied; everything else is closed. */
static int helper_spawn(const Sandbox *sb, const ChildSetup *c, pid_t *ret) {
        const int src[] = { c->stdin_fd, c->stdout_fd, c->stderr_fd, c->block_fd, c->status_fd, c->ctl_fd };
        char num[STEM_ARG_BWRAP - STEM_ARG_UID][24];
        _cleanup_free_ char **args = NULL;
        size_t n_argv = c->argv ? strv_length(c->argv) : 0, n_fds = STEM_FD_CGROUP + c->n_cgroup_fds;
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, all;
        int fd[STEM_FD_CGROUP + CGROUP_PROCS_FDS_MAX], high = (int) n_fds, k;

        _Static_assert(ELEMENTSOF(src) == STEM_FD_CGROUP, "one fd per number below STEM_FD_CGROUP");
        _Static_assert(CGROUP_PROCS_FDS_MAX <= STEM_CGROUP_FDS_MAX, "more cgroup fds than the helper takes");
        for (size_t i = 0; i < n_fds; i++) {
                fd[i] = i < STEM_FD_CGROUP ? src[i] : c->cgroup_fds[i - STEM_FD_CGROUP];
                high = MAX(high, fd[i] + 1);
        }

        args = calloc(STEM_ARG_COMMAND + n_argv + 1, sizeof(char *));
        if (!args)
                return -ENOMEM;
#define NUM(arg) num[(arg) - STEM_ARG_UID]
        snprintf(NUM(STEM_ARG_UID), sizeof num[0], "%u", (unsigned) c->uid);
        snprintf(NUM(STEM_ARG_PARENT), sizeof num[0], "%d", (int) c->parent);
        snprintf(NUM(STEM_ARG_FILE_SIZE_MAX), sizeof num[0], "%" PRIu64, c->file_size_max);
        snprintf(NUM(STEM_ARG_OPEN_FILES_MAX), sizeof num[0], "%" PRIu64, c->open_files_max);
        snprintf(NUM(STEM_ARG_NPROC_MAX), sizeof num[0], "%" PRIu64, c->nproc_max);
        snprintf(NUM(STEM_ARG_N_CGROUP_FDS), sizeof num[0], "%zu", c->n_cgroup_fds);
        args[0] = (char *) STEM_HELPER_NAME;
        for (int a = STEM_ARG_UID; a < STEM_ARG_BWRAP; a++)
                args[a] = NUM(a);
#undef NUM
        args[STEM_ARG_BWRAP] = (char *) c->bwrap;
        args[STEM_ARG_MODE] = (char *) (c->argv ? "exec" : "stem");
        for (size_t i = 0; i < n_argv; i++)
                args[STEM_ARG_COMMAND + i] = c->argv[i];

        k = posix_spawn_file_actions_init(&fa);
        if (k != 0)
                return -k;
        for (size_t i = 0; i < n_fds && k == 0; i++)
                if (fd[i] >= 0)
                        k = posix_spawn_file_actions_adddup2(&fa, fd[i], high + (int) i);
        for (size_t i = 0; i < n_fds && k == 0; i++)
                k = fd[i] >= 0 ? posix_spawn_file_actions_adddup2(&fa, high + (int) i, (int) i)
                               : posix_spawn_file_actions_addclose(&fa, (int) i);
        if (k == 0)
                k = posix_spawn_file_actions_addclosefrom_np(&fa, (int) n_fds);

        sigemptyset(&none);
        sigfillset(&all);
        if (k == 0)
                k = posix_spawnattr_init(&attr);
        if (k == 0) {
                k = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
                if (k == 0)
                        k = posix_spawnattr_setsigmask(&attr, &none);
                if (k == 0)
                        k = posix_spawnattr_setsigdefault(&attr, &all);
                if (k == 0)
                        k = posix_spawn(ret, sb->stem_helper, &fa, &attr, args, (char *[]) { NULL });
                posix_spawnattr_destroy(&attr);
        }
        posix_spawn_file_actions_destroy(&fa);
        return -k;
}

/* Forks the child of a run into the slot of uid and cgroup cg and fills the child part of
 * ret (pid, pidfd, our ends of its pipes). argv NULL: a stem, which waits for its command
 * line on ctl_fd; else the child executes argv at once. On failure ret may hold a child:
 * stem_discard() it. */
static int child_spawn(Sandbox *sb, uid_t uid, CGroup *cg, char **argv, Stem *ret) {
        int in[2] = { -EBADF, -EBADF }, out[2] = { -EBADF, -EBADF }, err[2] = { -EBADF, -EBADF },
            st[2] = { -EBADF, -EBADF }, ctl[2] = { -EBADF, -EBADF }, blk[2] = { -EBADF, -EBADF };
        ChildSetup c;
        pid_t pid;
        int k;

        if ((k = make_pipe(in)) < 0 || (k = make_pipe(out)) < 0 || (k = make_pipe(err)) < 0 ||
            (k = make_pipe(st)) < 0 || (!argv && (k = make_pipe(ctl)) < 0) || (k = make_pipe(blk)) < 0)
                goto finish;

        c = (ChildSetup) {
                .stdin_fd = in[0],
                .stdout_fd = out[1],
                .stderr_fd = err[1],
                .status_fd = st[1],
                .block_fd = blk[0],
                .ctl_fd = ctl[0],
                .msg_buf = sb->stem_buf,
                .msg_argv = sb->stem_argv,
                .uid = uid,
                .parent = getpid(),
                .file_size_max = sb->settings.file_size_max,
                .open_files_max = sb->settings.open_files_max,
                .nproc_max = 2 * sb->settings.pids_max + 16,
                .bwrap = sb->bwrap,
                .argv = argv,
        };
        c.n_cgroup_fds = cgroup_procs_fds(cg, &c.cgroup_fds);

        if (sb->stem_helper) {
                k = helper_spawn(sb, &c, &pid);
                if (k == -ENOENT || k == -EACCES || k == -ENOEXEC) {
                        /* gone or broken under us (a package removed, or half upgraded): this run
                         * goes on, and the next ones, with the fork */
                        log_warning_errno(k, "Cannot start %s, forking the children of runs from now on: %m",
                                          sb->stem_helper);
                        sb->stem_helper = mfree(sb->stem_helper);
                } else if (k < 0)
                        goto finish;
        }
        if (!sb->stem_helper) {
                pid = fork();
                if (pid < 0) {
                        k = -errno;
                        goto finish;
                }
                if (pid == 0)
                        child_exec(&c);
        }

        ret->pid = pid;
        ret->pidfd = pidfd_open_(pid);
        if (ret->pidfd < 0) {
                k = -errno; /* the caller's stem_discard() kills and reaps it */
                goto finish;
        }
        ret->stdin_fd = TAKE_FD(in[1]);
        ret->stdout_fd = TAKE_FD(out[0]);
        ret->stderr_fd = TAKE_FD(err[0]);
        ret->status_fd = TAKE_FD(st[0]);
        ret->ctl_fd = TAKE_FD(ctl[1]);
        ret->block_fd = TAKE_FD(blk[0]);
        ret->gate_fd = TAKE_FD(blk[1]);
        k = 0;

finish:
        safe_close(in[0]);
        safe_close(in[1]);
        safe_close(out[0]);
        safe_close(out[1]);
        safe_close(err[0]);
        safe_close(err[1]);
        safe_close(st[0]);
        safe_close(st[1]);
        safe_close(ctl[0]);
        safe_close(ctl[1]);
        safe_close(blk[0]);
        safe_close(blk[1]);
        return k;
}

/* Takes a slot and forks the stem into its cgroup. */
static int stem_spawn(Sandbox *sb) {
        _cleanup_(stem_discard) Stem s = STEM_NULL;
        int k;

        if (sb->stem.pid > 0)
                return 0;

        k = slot_acquire(sb, &s);
        if (k < 0)
                return k;
        k = child_spawn(sb, s.uid, s.cgroup, /* argv= */ NULL, &s);
        if (k < 0)
                return k;
        sb->stem = s;
        s = STEM_NULL;
        return 0;
}

static int on_stem_event(sd_event_source *source, void *userdata) {
        Sandbox *sb = userdata;
        int k;

        k = stem_spawn(sb);
        if (k < 0)
                log_debug_errno(k, "Could not prepare the next run's sandbox: %m");
        return 0;
}

/* Prepares a stem for the next run once the loop has nothing else to do. */
static void stem_schedule(Sandbox *sb, sd_event *e) {
        int k;

        if (sb->stem.pid > 0)
                return;
        if (sb->stem_event && sd_event_source_get_event(sb->stem_event) != e)
                sb->stem_event = sd_event_source_disable_unref(sb->stem_event);
        if (!sb->stem_event) {
                k = sd_event_add_defer(e, &sb->stem_event, on_stem_event, sb);
                if (k >= 0)
                        k = sd_event_source_set_priority(sb->stem_event, SD_EVENT_PRIORITY_IDLE);
                if (k < 0) {
                        log_debug_errno(k, "Could not schedule the next run's sandbox: %m");
                        sb->stem_event = sd_event_source_disable_unref(sb->stem_event);
                        return;
                }
        }
        (void) sd_event_source_set_enabled(sb->stem_event, SD_EVENT_ONESHOT);
}

/* The child part of s (its process and our ends of its pipes) goes to the run, and its
 * bubblewrap may start the program. */
static void child_give(SandboxRun *r, Stem *s) {
        gate_open(&s->gate_fd);
        s->ctl_fd = safe_close(s->ctl_fd);
        r->pid = s->pid;
        r->pidfd = TAKE_FD(s->pidfd);
        r->stdin_fd = TAKE_FD(s->stdin_fd);
        r->out[0].fd = TAKE_FD(s->stdout_fd);
        r->out[1].fd = TAKE_FD(s->stderr_fd);
        r->status_fd = TAKE_FD(s->status_fd);
        r->block_fd = TAKE_FD(s->block_fd);
        s->pid = 0;
}

/* Sends the stem its command line: it executes bubblewrap, which sets up the sandbox and waits
 * at the gate. */
static int stem_send(Stem *s, char **argv) {
        size_t size = 0;
        uint32_t hdr[2];
        struct iovec iov[2];
        _cleanup_free_ char *msg = NULL;
        char *p;
        ssize_t k;

        for (char **a = argv; *a; a++)
                size += strlen(*a) + 1;
        if (size == 0 || size > STEM_MSG_MAX || strv_length(argv) >= STEM_ARGC_MAX)
                return -E2BIG;
        msg = malloc(size);
        if (!msg)
                return -ENOMEM;
        p = msg;
        for (char **a = argv; *a; a++)
                p = stpcpy(p, *a) + 1;

        hdr[0] = STEM_MAGIC;
        hdr[1] = (uint32_t) size;
        iov[0] = (struct iovec) { .iov_base = hdr, .iov_len = sizeof hdr };
        iov[1] = (struct iovec) { .iov_base = msg, .iov_len = size };
        /* less than the pipe's capacity: complete at once, or the stem is gone (EPIPE) */
        k = writev(s->ctl_fd, iov, 2);
        if (k < 0)
                return -errno;
        if ((size_t) k != sizeof hdr + size)
                return -EIO;
        return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the run */

static usec_t now_mono(void) {
        return now_usec(CLOCK_MONOTONIC);
}

static void run_set_error(SandboxRun *r, int error, const char *format, ...) _printf_(3, 4);
static void run_set_error(SandboxRun *r, int error, const char *format, ...) {
        va_list ap;
        char *m = NULL;

        if (r->error != 0)
                return; /* the first error is the one that counts */
        r->error = error < 0 ? error : -EIO;
        errno = abs(r->error);
        va_start(ap, format);
        if (vasprintf(&m, format, ap) < 0)
                m = NULL;
        va_end(ap);
        free_and_replace(r->error_message, m);
}

static void output_close(Output *o) {
        o->source = sd_event_source_disable_unref(o->source);
        o->fd = safe_close(o->fd);
}

static void stdin_close(SandboxRun *r) {
        r->stdin_source = sd_event_source_disable_unref(r->stdin_source);
        r->stdin_fd = safe_close(r->stdin_fd);
}

/* Everything of the current phase's processes at once. */
static void run_kill_processes(SandboxRun *r) {
        if (r->pidfd >= 0 && !r->child_exited)
                (void) pidfd_send_signal_(r->pidfd, SIGKILL);
        if (r->cgroup) {
                int k = cgroup_kill(r->cgroup);
                if (k < 0)
                        log_debug_errno(k, "Failed to kill cgroup %s: %m", cgroup_path(r->cgroup));
        }
        (void) kill_uid(r->uid);
}

static int on_done(sd_event_source *s, void *userdata) {
        SandboxRun *r = userdata;

        r->done_event = sd_event_source_disable_unref(r->done_event);
        /* last thing: the callback may free r */
        r->callback(r, &r->result, r->userdata);
        return 0;
}

static void exit_watch_stop(SandboxRun *r);

static void run_finish(SandboxRun *r) {
        SandboxResult *res = &r->result;
        Output *out = &r->out[0], *err = &r->out[1];
        int k;

        assert_return(!r->finished, (void) 0);
        r->finished = true;

        r->ttl_timer = sd_event_source_disable_unref(r->ttl_timer);
        r->runtime_timer = sd_event_source_disable_unref(r->runtime_timer);
        r->settle_timer = sd_event_source_disable_unref(r->settle_timer);
        exit_watch_stop(r);
        slot_release(r);

        res->uid = r->uid;
        res->duration = now_mono() - r->start_time;
        res->oom_kills = r->stats.oom_kills;
        res->pids_max_events = r->stats.pids_max_events;
        res->memory_peak = r->stats.memory_peak;
        res->cpu_usec = r->stats.cpu_usec;
        if (r->child_exited && r->child_status.si_code == CLD_EXITED && !r->killing && r->error == 0)
                res->exit_code = r->child_status.si_status;
        else
                res->exit_code = -1;

        if (r->error != 0) {
                res->end = SANDBOX_END_FAILED;
                res->verdict = SANDBOX_VERDICT_INTERNAL_ERROR;
                res->error = r->error;
                res->error_message = TAKE_PTR(r->error_message);
        } else if (r->killing) {
                res->end = r->kill_reason;
                switch (r->kill_reason) {
                case SANDBOX_END_EXPIRED:
                case SANDBOX_END_TIMEOUT:
                        res->verdict = SANDBOX_VERDICT_TIMEOUT;
                        break;
                case SANDBOX_END_OUTPUT_LIMIT:
                        res->verdict = SANDBOX_VERDICT_OUTPUT_LIMIT;
                        break;
                default:
                        res->verdict = SANDBOX_VERDICT_CANCELLED;
                }
        } else {
                res->end = SANDBOX_END_EXITED;
                if (r->stats.oom_kills > 0)
                        res->verdict = SANDBOX_VERDICT_MEMORY_LIMIT;
                else if (r->stats.pids_max_events > 0)
                        res->verdict = SANDBOX_VERDICT_PIDS_LIMIT;
                else if (r->build_failed)
                        res->verdict = SANDBOX_VERDICT_COMPILE_ERROR;
                else if (res->exit_code == 0)
                        res->verdict = SANDBOX_VERDICT_OK;
                else
                        res->verdict = SANDBOX_VERDICT_RUNTIME_ERROR;
        }

        if (res->verdict == SANDBOX_VERDICT_COMPILE_ERROR) {
                /* mcs: diagnostics on stderr, the summary on stdout; the message is both */
                if (out->size > 0) {
                        char *m = realloc(err->data, err->size + out->size + 2);
                        if (m) {
                                err->data = m;
                                if (err->size > 0 && err->data[err->size - 1] != '\n')
                                        err->data[err->size++] = '\n';
                                memcpy(err->data + err->size, out->data, out->size);
                                err->size += out->size;
                                err->data[err->size] = '\0';
                        }
                }
                out->size = 0;
        }

        for (size_t i = 0; i < 2; i++) {
                Output *o = &r->out[i];
                if (!o->data) {
                        o->data = strdup("");
                        o->size = 0;
                } else
                        o->data[o->size] = '\0';
        }
        res->stdout_data = TAKE_PTR(out->data);
        res->stdout_size = out->size;
        res->stderr_data = TAKE_PTR(err->data);
        res->stderr_size = err->size;
        out->size = out->allocated = err->size = err->allocated = 0;
        artifacts_clear(r);

        log_debug("Sandbox run in slot %u done: end=%s verdict=%s exit=%d%s%s", (unsigned) r->uid,
                  sandbox_end_to_string(res->end), sandbox_verdict_to_string(res->verdict), res->exit_code,
                  res->error_message ? ": " : "", strempty(res->error_message));

        k = sd_event_add_defer(r->event, &r->done_event, on_done, r);
        if (k < 0) {
                /* cannot defer: call directly, from where we are (never from sandbox_start/kill) */
                log_warning_errno(k, "Failed to defer the sandbox callback: %m");
                r->callback(r, &r->result, r->userdata);
        }
}

static int run_kill(SandboxRun *r, SandboxEnd reason) {
        if (r->finished)
                return -ESRCH;
        if (r->killing)
                return 0;
        /* The program has ended by itself, only the cleanup is going on: it finished in time,
         * whatever deadline or cancellation comes now. Output beyond the cap still counts. */
        if (r->phase == PHASE_RUN && r->child_exited && reason != SANDBOX_END_OUTPUT_LIMIT)
                return 0;
        r->killing = true;
        r->kill_reason = reason;
        log_debug("Killing sandbox run in slot %u: %s", (unsigned) r->uid, sandbox_end_to_string(reason));
        stdin_close(r);
        if (r->phase != PHASE_NONE)
                run_kill_processes(r);
        return 0;
}

int sandbox_run_kill(SandboxRun *r, SandboxEnd reason) {
        if (!r)
                return -EINVAL;
        if (reason != SANDBOX_END_CANCELLED && reason != SANDBOX_END_EXPIRED && reason != SANDBOX_END_TIMEOUT &&
            reason != SANDBOX_END_SHUTDOWN)
                return -EINVAL;
        return run_kill(r, reason);
}

/* ---------------------------------------------------------------------------------------- */
/* phases: BUILD (C#, on a cache miss) then RUN; each with its own working directory, cgroup
 * and processes, under the same deadlines */

static void phase_end(SandboxRun *r, bool settled);

/* Kills what is in cg, again and again, until it is empty (its zombies reaped), at most
 * SETTLE_TIMEOUT_USEC. */
static void cgroup_empty_sync(Sandbox *sb, CGroup *cg) {
        usec_t start = now_mono();

        for (;;) {
                (void) reap_orphans(sb, NULL, 0);
                if (cgroup_is_populated(cg) <= 0 || now_mono() - start >= SETTLE_TIMEOUT_USEC)
                        break;
                (void) cgroup_kill(cg);
                (void) usleep(5000);
        }
}

/* A warm stem has more than its child in the slot's cgroup: bubblewrap's own children. */
static void warm_discard(Sandbox *sb) {
        Stem *s = &sb->warm;

        if (s->pid > 0 && s->cgroup) {
                (void) cgroup_kill(s->cgroup);
                stem_kill(s);
                cgroup_empty_sync(sb, s->cgroup);
        }
        stem_discard(s);
}

/* There is a warm stem for a run of language, its bubblewrap still there. One whose
 * bubblewrap gave up is discarded: the run starts afresh. */
static bool warm_ready(Sandbox *sb, Language language) {
        if (sb->warm.pid <= 0 || sb->warm.warm != language)
                return false;
        if (stem_alive(&sb->warm))
                return true;
        warm_discard(sb);
        return false;
}

/* Synchronous teardown of whatever the current phase has (errors, sandbox_run_free()). */
static void phase_cleanup_sync(SandboxRun *r) {
        int k;

        stem_discard(&r->stem);
        stdin_close(r);
        if (r->pid > 0 && !r->child_exited) {
                siginfo_t si;

                run_kill_processes(r);
                while (waitid(P_PID, r->pid, &si, WEXITED) < 0 && errno == EINTR)
                        ;
                r->child_exited = true;
        } else if (r->cgroup)
                run_kill_processes(r);
        r->child_source = sd_event_source_disable_unref(r->child_source);
        r->settle_timer = sd_event_source_disable_unref(r->settle_timer);
        exit_watch_stop(r);
        r->pidfd = safe_close(r->pidfd);
        r->status_fd = safe_close(r->status_fd);
        r->block_fd = safe_close(r->block_fd);
        output_close(&r->out[0]);
        output_close(&r->out[1]);

        if (r->cgroup) {
                cgroup_empty_sync(r->sandbox, r->cgroup);
                /* the slot's group stays; the next run in the slot checks that it is empty */
                r->cgroup = cgroup_free(r->cgroup);
        }
        k = workdir_destroy(&r->workdir);
        if (k < 0)
                log_warning_errno(k, "Failed to remove working directory %s: %m", strna(r->workdir.path));
        r->phase = PHASE_NONE;
        r->pid = 0;
}

static void phase_settle(SandboxRun *r, bool tick);

static int on_settle_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        phase_settle(userdata, true);
        return 0;
}

static void exit_watch_stop(SandboxRun *r) {
        for (size_t i = 0; i < SETTLE_WATCH_MAX; i++)
                r->exit_watch[i] = sd_event_source_disable_unref(r->exit_watch[i]);
}

static int on_exit_watch(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        SandboxRun *r = userdata;

        for (size_t i = 0; i < SETTLE_WATCH_MAX; i++)
                if (r->exit_watch[i] == s)
                        r->exit_watch[i] = sd_event_source_disable_unref(s);
        phase_settle(r, false);
        return 0;
}

/* Wakes phase_settle() when a process still in the cgroup exits (typically bubblewrap's PID 1,
 * tearing the sandbox's namespaces down), rather than at the next tick. A process that is
 * exiting is no longer listed in cgroup.procs, though it counts until reaped: the orphans are
 * watched, too (an orphan of another run just wakes this one once more). */
static void exit_watch_start(SandboxRun *r, const pid_t *orphans, size_t n_orphans) {
        pid_t pids[SETTLE_WATCH_MAX];
        size_t n = 0;
        int k;

        exit_watch_stop(r);
        k = cgroup_list_pids(r->cgroup, pids, SETTLE_WATCH_MAX);
        if (k > 0)
                n = (size_t) k;
        for (size_t i = 0; i < n_orphans && n < SETTLE_WATCH_MAX; i++) {
                bool listed = false;

                for (size_t j = 0; j < n; j++)
                        listed = listed || pids[j] == orphans[i];
                if (!listed)
                        pids[n++] = orphans[i];
        }
        for (size_t i = 0; i < n; i++) {
                int fd = pidfd_open_(pids[i]);

                if (fd < 0)
                        continue; /* gone already */
                if (sd_event_add_io(r->event, &r->exit_watch[i], fd, EPOLLIN, on_exit_watch, r) < 0 ||
                    sd_event_source_set_io_fd_own(r->exit_watch[i], true) < 0) {
                        if (!r->exit_watch[i])
                                safe_close(fd);
                        r->exit_watch[i] = sd_event_source_disable_unref(r->exit_watch[i]);
                }
        }
}

/* After the main process exited: wait until the outputs are drained and the cgroup is empty.
 * tick: called by the timer, i.e. the group did not empty in time by itself. */
static void phase_settle(SandboxRun *r, bool tick) {
        bool outputs_done = r->out[0].fd < 0 && r->out[1].fd < 0;
        pid_t orphans[SETTLE_WATCH_MAX];
        size_t n_orphans;
        int populated = 0, k;

        n_orphans = reap_orphans(r->sandbox, orphans, ELEMENTSOF(orphans));
        if (r->cgroup) {
                populated = cgroup_is_populated(r->cgroup);
                if (populated < 0) {
                        log_debug_errno(populated, "Cannot tell whether cgroup %s is empty: %m",
                                        cgroup_path(r->cgroup));
                        populated = 1;
                }
        }
        if (outputs_done && populated == 0) {
                phase_end(r, /* settled= */ true);
                return;
        }
        if (now_mono() - r->settle_start > SETTLE_TIMEOUT_USEC) {
                log_warning("Processes of sandbox slot %u are still around %u s after the end of the run, giving up on them",
                            (unsigned) r->uid, (unsigned) (SETTLE_TIMEOUT_USEC / USEC_PER_SEC));
                output_close(&r->out[0]);
                output_close(&r->out[1]);
                phase_end(r, /* settled= */ false);
                return;
        }
        if (populated > 0) {
                (void) cgroup_kill(r->cgroup);
                if (tick) /* still there a tick later */
                        (void) kill_uid(r->uid);
                exit_watch_start(r, orphans, n_orphans);
        }

        r->settle_timer = sd_event_source_disable_unref(r->settle_timer);
        k = sd_event_add_time_relative(r->event, &r->settle_timer, CLOCK_MONOTONIC, SETTLE_INTERVAL_USEC, 1,
                                       on_settle_timer, r);
        if (k < 0) {
                run_set_error(r, k, "Failed to arm a timer: %m");
                phase_cleanup_sync(r);
                run_finish(r);
        }
}

static void read_status_fd(SandboxRun *r) {
        char buf[64];
        ssize_t k = -1;

        if (r->status_fd >= 0)
                k = read(r->status_fd, buf, sizeof buf);
        r->status_fd = safe_close(r->status_fd);

        /* bubblewrap took the block pipe's byte: it got as far as starting the program */
        if (r->block_fd >= 0) {
                int left = 1;
                r->sandbox_ready = ioctl(r->block_fd, FIONREAD, &left) >= 0 && left == 0;
        }
        r->block_fd = safe_close(r->block_fd);

        if (k >= (ssize_t) sizeof(ChildError) && buf[0] == 'E') {
                ChildError e;
                memcpy(&e, buf, sizeof e);
                run_set_error(r, -e.error, "Sandbox setup failed (%s): %m",
                              e.step > 0 && e.step < _STEP_MAX ? step_names[e.step] : "?");
        }
}

static void output_append(Output *o, const char *s) {
        size_t l = strlen(s);
        char *m;

        m = realloc(o->data, o->size + l + 1);
        if (!m)
                return;
        memcpy(m + o->size, s, l + 1);
        o->data = m;
        o->size += l;
        o->allocated = o->size + 1;
}

static int on_child(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        SandboxRun *r = userdata;
        siginfo_t si = {};

        if (waitid((idtype_t) P_PIDFD, (id_t) r->pidfd, &si, WEXITED | WNOHANG) < 0) {
                if (errno == EINTR || errno == EAGAIN)
                        return 0;
                run_set_error(r, -errno, "waitid() failed: %m");
                si.si_code = CLD_KILLED;
        } else if (si.si_pid == 0)
                return 0; /* not yet */

        r->child_exited = true;
        r->child_status = si;
        r->child_source = sd_event_source_disable_unref(r->child_source);
        r->pidfd = safe_close(r->pidfd);
        stdin_close(r);

        /* let the outputs drain first: bubblewrap's own complaints land on stderr */
        read_status_fd(r);

        /* Nothing of the run outlives its main process: bubblewrap's PID namespace goes down
         * with it anyway (the kernel kills what is left in it when its PID 1 exits), this makes
         * sure. What is typically left is that PID 1, reparented to us and exiting or a zombie:
         * phase_settle() reaps it first (a zombie does not count), kills what is still in the
         * cgroup and goes on until the group is empty (with kill_uid() if something is still
         * there a tick later, not at once: that fork would be for nothing in nearly every run). */
        if (r->phase == PHASE_RUN && r->exited_callback)
                r->exited_callback(r, r->userdata);
        r->settle_start = now_mono();
        phase_settle(r, false);
        return 0;
}

static int on_output(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        SandboxRun *r = userdata;
        Output *o = fd == r->out[0].fd ? &r->out[0] : &r->out[1];
        size_t cap = r->sandbox->settings.output_max;

        for (unsigned i = 0; i < 16; i++) {
                ssize_t k;

                if (o->size >= cap) {
                        char c;

                        k = read(fd, &c, 1);
                        if (k > 0) {
                                r->result.output_truncated = true;
                                output_close(o);
                                (void) run_kill(r, SANDBOX_END_OUTPUT_LIMIT);
                                return 0;
                        }
                } else {
                        size_t want = MIN(cap - o->size, (size_t) READ_CHUNK);

                        if (o->allocated < o->size + want + 1) {
                                size_t m = MAX(o->allocated * 2, o->size + want + 1);
                                char *p;

                                m = MIN(m, cap + 1);
                                p = realloc(o->data, m);
                                if (!p) {
                                        run_set_error(r, -ENOMEM, "Out of memory reading output");
                                        output_close(o);
                                        (void) run_kill(r, SANDBOX_END_SHUTDOWN);
                                        return 0;
                                }
                                o->data = p;
                                o->allocated = m;
                        }
                        k = read(fd, o->data + o->size, want);
                        if (k > 0) {
                                o->size += (size_t) k;
                                continue;
                        }
                }
                if (k < 0 && errno == EAGAIN)
                        return 0;
                if (k < 0 && errno == EINTR)
                        continue;
                /* EOF (or a read error: same thing here) */
                output_close(o);
                if (r->child_exited)
                        phase_settle(r, false);
                return 0;
        }
        return 0;
}

static int on_stdin(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        SandboxRun *r = userdata;

        while (r->stdin_written < r->stdin_size) {
                ssize_t k = write(fd, r->stdin_data + r->stdin_written,
                                  MIN(r->stdin_size - r->stdin_written, (size_t) READ_CHUNK));
                if (k < 0) {
                        if (errno == EAGAIN)
                                return 0;
                        if (errno == EINTR)
                                continue;
                        break; /* EPIPE: the program does not read its input; fine */
                }
                r->stdin_written += (size_t) k;
        }
        stdin_close(r);
        return 0;
}

static int on_ttl(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) run_kill(userdata, SANDBOX_END_EXPIRED);
        return 0;
}

static int on_runtime(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) run_kill(userdata, SANDBOX_END_TIMEOUT);
        return 0;
}

/* bubblewrap's command line for cmd of runner rn in the working directory workdir_path */
static int build_argv(Sandbox *sb, const Runner *rn, const char *workdir_path, char *const *cmd, char ***ret) {
        char **a = NULL;
        size_t n = 0;
        int k = 0;

        for (char **s = sb->base_args; *s && k >= 0; s++)
                k = strv_push(&a, &n, *s);
        for (char **b = rn->ro_binds; b && *b && k >= 0; b++)
                k = strv_pushv(&a, &n, "--ro-bind", *b, *b, NULL);
        if (k >= 0)
                k = strv_pushv(&a, &n,
                               "--bind", workdir_path, SANDBOX_WORKDIR,
                               "--chdir", SANDBOX_WORKDIR,
                               "--remount-ro", "/",
                               "--clearenv",
                               "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
                               "--setenv", "HOME", SANDBOX_WORKDIR,
                               "--setenv", "TMPDIR", "/tmp",
                               "--setenv", "LANG", "C.UTF-8", NULL);
        for (char **e = rn->env; e && *e && k >= 0; e++) {
                _cleanup_free_ char *name = NULL;
                const char *eq = strchr(*e, '=');

                if (!eq)
                        continue;
                name = strndup(*e, (size_t) (eq - *e));
                k = name ? strv_pushv(&a, &n, "--setenv", name, eq + 1, NULL) : -ENOMEM;
        }
        if (k >= 0)
                k = strv_pushv(&a, &n, "--block-fd", "3", "--", NULL);
        for (char *const *c = cmd; *c && k >= 0; c++)
                k = strv_push(&a, &n, *c);
        if (k < 0) {
                strv_free(a);
                return k;
        }
        *ret = a;
        return 0;
}

static int phase_spawn(SandboxRun *r, char *const *cmd, bool with_stdin) {
        Sandbox *sb = r->sandbox;
        _cleanup_(strv_freep) char **argv = NULL;
        _cleanup_(stem_discard) Stem child = STEM_NULL;
        int k;

        if (r->stem.pid > 0 && r->stem.warm >= 0) {
                /* its bubblewrap has this command line already, and waits at the gate */
                child_give(r, &r->stem);
                goto started;
        }

        k = build_argv(sb, r->runner, r->workdir_path, cmd, &argv);
        if (k < 0)
                return k;

        if (r->stem.pid > 0) {
                k = stem_send(&r->stem, argv);
                if (k >= 0) {
                        child_give(r, &r->stem);
                        goto started;
                }
                log_debug_errno(k, "Sandbox slot %u: the prepared child is not usable, forking another: %m",
                                (unsigned) r->uid);
                stem_discard(&r->stem);
        }

        k = child_spawn(sb, r->uid, r->cgroup, argv, &child);
        if (k < 0)
                return k;
        child_give(r, &child);

started:
        if ((k = set_nonblock(r->stdin_fd)) < 0 || (k = set_nonblock(r->out[0].fd)) < 0 ||
            (k = set_nonblock(r->out[1].fd)) < 0 || (k = set_nonblock(r->status_fd)) < 0)
                return k;

        k = sd_event_add_io(r->event, &r->child_source, r->pidfd, EPOLLIN, on_child, r);
        if (k < 0)
                return k;
        for (size_t i = 0; i < 2; i++) {
                k = sd_event_add_io(r->event, &r->out[i].source, r->out[i].fd, EPOLLIN, on_output, r);
                if (k < 0)
                        return k;
        }
        r->stdin_written = 0;
        if (with_stdin && r->stdin_size > 0) {
                k = sd_event_add_io(r->event, &r->stdin_source, r->stdin_fd, EPOLLOUT, on_stdin, r);
                if (k < 0)
                        return k;
        } else
                stdin_close(r); /* EOF right away */
        return 0;
}

/* The working directory of a run in the slot of uid, empty. */
static int slot_workdir_create(Sandbox *sb, const char *path, uid_t uid, Workdir *ret) {
        uint64_t tmpfs_size = sb->settings.workdir_tmpfs ? sb->settings.memory_max : 0;
        int k;

        k = workdir_create(path, uid, uid, tmpfs_size, ret);
        if (k == -EEXIST) {
                /* a leftover of the previous phase or run that could not be removed then */
                k = workdir_trim(path);
                if (k >= 0)
                        k = workdir_create(path, uid, uid, tmpfs_size, ret);
        }
        return k;
}

static int phase_prepare_workdir(SandboxRun *r, RunPhase phase) {
        const Runner *rn = r->runner;
        int k;

        if (r->stem.workdir.fd >= 0) {
                /* a warm stem's, bound into its sandbox already */
                r->workdir = r->stem.workdir;
                r->stem.workdir = WORKDIR_NULL;
        } else {
                k = slot_workdir_create(r->sandbox, r->workdir_path, r->uid, &r->workdir);
                if (k < 0)
                        return k;
        }

        /* Files of the worker are root's and read-only: the program may read them, not change them. */
        if (phase == PHASE_RUN && rn->compile_argv) {
                for (size_t i = 0; rn->artifacts[i]; i++) {
                        k = write_file_at(r->workdir.fd, rn->artifacts[i], r->artifact_data[i], r->artifact_size[i],
                                          0444);
                        if (k < 0)
                                return k;
                }
                return 0;
        }
        k = write_file_at(r->workdir.fd, rn->source_name, r->code, r->code_size, 0444);
        if (k >= 0 && rn->extra_name)
                k = write_file_at(r->workdir.fd, rn->extra_name, rn->extra_content, strlen(rn->extra_content), 0444);
        return k;
}

static int phase_begin(SandboxRun *r, RunPhase phase) {
        Sandbox *sb = r->sandbox;
        char *const *cmd = phase == PHASE_BUILD ? r->runner->compile_argv : r->runner->run_argv;
        int k;

        r->phase = phase;
        r->slot_clean = false;
        r->pid = 0;
        r->sandbox_ready = false;
        r->child_exited = false;
        if (phase == PHASE_BUILD)
                r->result.compiled = true;
        r->child_status = (siginfo_t) {};

        k = phase_prepare_workdir(r, phase);
        if (k < 0) {
                run_set_error(r, k, "Failed to set up the working directory %s: %m", r->workdir_path);
                goto fail;
        }

        /* the first phase has it from slot_acquire(), the second from the first if that ended
         * clean (counting afresh, see phase_end()) */
        k = r->cgroup ? 0 : slot_open_cgroup(sb, r->slot_name, &r->cgroup);
        if (k < 0) {
                run_set_error(r, k, "Failed to set up the cgroup %s of the run: %m", r->slot_name);
                goto fail;
        }

        k = phase_spawn(r, cmd, phase == PHASE_RUN);
        if (k < 0) {
                run_set_error(r, k, "Failed to start the sandbox: %m");
                goto fail;
        }
        return 0;

fail:
        phase_cleanup_sync(r);
        return k;
}

static void output_reset(Output *o) {
        o->data = mfree(o->data);
        o->size = o->allocated = 0;
}

/* settled: the cgroup was seen empty (else phase_settle() gave up on it). */
static void phase_end(SandboxRun *r, bool settled) {
        RunPhase phase = r->phase;
        CGroupStats st;
        bool build_ok = false, clean = settled;
        int k;

        r->settle_timer = sd_event_source_disable_unref(r->settle_timer);
        exit_watch_stop(r);
        output_close(&r->out[0]);
        output_close(&r->out[1]);

        if (!r->sandbox_ready && !r->killing && r->error == 0) {
                /* bubblewrap gave up before starting the program; it said why on stderr */
                Output *err = &r->out[1];
                run_set_error(r, -EIO, "bubblewrap failed to set up the sandbox: %.*s",
                              (int) MIN(err->size, (size_t) 1024), err->data ? err->data : "");
        }

        if (r->cgroup) {
                k = cgroup_get_stats(r->cgroup, &st);
                if (k >= 0) {
                        r->stats.oom_kills += st.oom_kills;
                        r->stats.pids_max_events += st.pids_max_events;
                        r->stats.memory_peak = MAX(r->stats.memory_peak, st.memory_peak);
                        r->stats.cpu_usec += st.cpu_usec;
                } else {
                        log_warning_errno(k, "Failed to read the statistics of cgroup %s: %m", cgroup_path(r->cgroup));
                        clean = false;
                }

                /* Empty now, unless the settle gave up: then closed, and the next phase or the
                 * slot's next user opens it again, which empties it first. Else kept open. */
                if (!clean)
                        r->cgroup = cgroup_free(r->cgroup);
        } else
                clean = false;

        if (phase == PHASE_BUILD && !r->killing && r->error == 0) {
                if (r->child_status.si_code == CLD_EXITED && r->child_status.si_status == 0 &&
                    r->stats.oom_kills == 0 && r->stats.pids_max_events == 0) {
                        const Runner *rn = r->runner;

                        build_ok = true;
                        k = artifacts_alloc(r);
                        for (size_t i = 0; rn->artifacts[i] && k >= 0; i++) {
                                /* never follows a symlink, never reads anything but a regular file */
                                k = read_regular_file_at(r->workdir.fd, rn->artifacts[i], ARTIFACT_MAX,
                                                         &r->artifact_data[i], &r->artifact_size[i]);
                                if (k == -ENOMEM)
                                        run_set_error(r, k, "Out of memory");
                                else if (k < 0) {
                                        /* the compiler said yes but left no proper file */
                                        char m[256];
                                        snprintf(m, sizeof m, "%sbuild output %s: %s\n",
                                                 r->out[1].size > 0 ? "\n" : "", rn->artifacts[i],
                                                 k == -ELOOP    ? "is a symbolic link, not used"
                                                 : k == -EBADFD ? "is not a regular file, not used"
                                                 : k == -EMLINK ? "has other hard links, not used"
                                                 : k == -EFBIG  ? "is too large"
                                                 : k == -ENOENT ? "is missing"
                                                                : strerror(-k));
                                        output_append(&r->out[1], m);
                                }
                        }
                        if (k < 0) {
                                build_ok = false;
                                artifacts_clear(r);
                        } else
                                cache_store(r);
                }
                r->build_failed = !build_ok;
        }

        k = workdir_destroy(&r->workdir);
        if (k < 0) {
                log_warning_errno(k, "Failed to remove working directory %s (left for later): %m", r->workdir_path);
                clean = false;
        }
        r->slot_clean = clean;
        r->pid = 0;
        r->phase = PHASE_NONE;

        if (phase == PHASE_BUILD && build_ok && !r->killing && r->error == 0) {
                /* the compiler's chatter is not the program's output */
                output_reset(&r->out[0]);
                output_reset(&r->out[1]);
                r->result.output_truncated = false;
                if (phase_begin(r, PHASE_RUN) >= 0)
                        return;
        }
        run_finish(r);
}

/* ---------------------------------------------------------------------------------------- */
/* public */

void sandbox_result_done(SandboxResult *r) {
        if (!r)
                return;
        free(r->stdout_data);
        free(r->stderr_data);
        free(r->error_message);
        *r = (SandboxResult) {};
}

void sandbox_run_set_exited_callback(SandboxRun *r, SandboxExitedCallback cb) {
        r->exited_callback = cb;
}

uid_t sandbox_run_uid(const SandboxRun *r) {
        return r->uid;
}

SandboxRun *sandbox_run_free(SandboxRun *r) {
        if (!r)
                return NULL;

        if (!r->finished) {
                if (!r->killing) {
                        r->killing = true;
                        r->kill_reason = SANDBOX_END_SHUTDOWN;
                }
                phase_cleanup_sync(r);
        }

        if (r->sandbox) {
                if (r->prev)
                        r->prev->next = r->next;
                else
                        r->sandbox->runs = r->next;
                if (r->next)
                        r->next->prev = r->prev;
        }

        r->ttl_timer = sd_event_source_disable_unref(r->ttl_timer);
        r->runtime_timer = sd_event_source_disable_unref(r->runtime_timer);
        r->settle_timer = sd_event_source_disable_unref(r->settle_timer);
        exit_watch_stop(r);
        r->done_event = sd_event_source_disable_unref(r->done_event);
        r->child_source = sd_event_source_disable_unref(r->child_source);
        stdin_close(r);
        output_close(&r->out[0]);
        output_close(&r->out[1]);
        output_reset(&r->out[0]);
        output_reset(&r->out[1]);
        r->pidfd = safe_close(r->pidfd);
        r->status_fd = safe_close(r->status_fd);
        r->block_fd = safe_close(r->block_fd);
        slot_release(r);

        if (r->runner)
                artifacts_clear(r);
        sandbox_result_done(&r->result);
        free(r->code);
        free(r->stdin_data);
        free(r->workdir_path);
        free(r->workdir.path);
        free(r->error_message);
        sd_event_unref(r->event);
        return mfree(r);
}

#define CODE_SIZE_MAX ((size_t) 64 * 1024 * 1024)
#define STDIN_SIZE_MAX ((size_t) 1024 * 1024 * 1024)

int sandbox_start(Sandbox *sb, sd_event *e, const SandboxRequest *req, SandboxDoneCallback cb, void *userdata,
                  SandboxRun **ret) {
        _cleanup_(sandbox_run_freep) SandboxRun *r = NULL;
        usec_t max_runtime;
        Stem *prepared;
        RunPhase first = PHASE_RUN;
        int k;

        if (!sb || !e || !req || !cb || !ret)
                return -EINVAL;
        if (req->language < 0 || req->language >= _LANGUAGE_MAX)
                return -EINVAL;
        if (!sb->runners[req->language])
                return -EOPNOTSUPP;
        if (!req->code || req->code_size == 0 || req->code_size > CODE_SIZE_MAX)
                return -EINVAL;
        if (req->stdin_size > STDIN_SIZE_MAX || (req->stdin_size > 0 && !req->stdin_data))
                return -EINVAL;

        r = calloc(1, sizeof *r);
        if (!r)
                return -ENOMEM;
        r->lock_fd = r->pidfd = r->status_fd = r->block_fd = r->stdin_fd = r->out[0].fd = r->out[1].fd = -EBADF;
        r->stem = STEM_NULL;
        r->workdir = WORKDIR_NULL;
        r->event = sd_event_ref(e);
        r->callback = cb;
        r->userdata = userdata;
        r->runner = sb->runners[req->language];
        r->start_time = now_mono();

        r->code = malloc(req->code_size);
        r->stdin_data = malloc(MAX(req->stdin_size, (size_t) 1));
        if (!r->code || !r->stdin_data)
                return -ENOMEM;
        memcpy(r->code, req->code, req->code_size);
        r->code_size = req->code_size;
        if (req->stdin_size > 0)
                memcpy(r->stdin_data, req->stdin_data, req->stdin_size);
        r->stdin_size = req->stdin_size;

        r->ttl_deadline = req->ttl_deadline == 0 ? USEC_INFINITY : req->ttl_deadline;
        max_runtime = req->max_runtime == 0 ? sb->settings.max_runtime : req->max_runtime;
        if (max_runtime == 0)
                max_runtime = USEC_INFINITY;
        r->runtime_deadline = max_runtime == USEC_INFINITY || max_runtime > USEC_INFINITY - r->start_time
                                      ? USEC_INFINITY
                                      : r->start_time + max_runtime;

        /* prepared for us: the slot, and a child in its cgroup (its pipes, pid, pidfd); a warm
         * one's bubblewrap has set the sandbox up already and waits at the gate */
        prepared = warm_ready(sb, req->language) ? &sb->warm : sb->stem.pid > 0 ? &sb->stem : NULL;
        if (prepared) {
                slot_give(r, prepared);
                r->stem = *prepared;
                *prepared = STEM_NULL;
        } else {
                Stem slot = STEM_NULL;

                k = slot_acquire(sb, &slot);
                if (k == -EBUSY && sb->warm.pid > 0) {
                        /* the last free slot went to a warm sandbox of another language */
                        warm_discard(sb);
                        k = slot_acquire(sb, &slot);
                }
                if (k < 0)
                        return k;
                slot_give(r, &slot);
        }
        r->sandbox = sb;
        r->next = sb->runs;
        if (sb->runs)
                sb->runs->prev = r;
        sb->runs = r;

        /* 1 ms accuracy: sd-event would otherwise coalesce the wakeup by up to 250 ms */
        if (r->ttl_deadline != USEC_INFINITY) {
                k = sd_event_add_time(e, &r->ttl_timer, CLOCK_REALTIME, r->ttl_deadline, USEC_PER_MSEC, on_ttl, r);
                if (k < 0)
                        return k;
        }
        if (r->runtime_deadline != USEC_INFINITY) {
                k = sd_event_add_time(e, &r->runtime_timer, CLOCK_MONOTONIC, r->runtime_deadline, USEC_PER_MSEC,
                                      on_runtime, r);
                if (k < 0)
                        return k;
        }

        if (r->ttl_deadline != USEC_INFINITY && now_usec(CLOCK_REALTIME) >= r->ttl_deadline) {
                /* expired before it started: it never starts */
                r->killing = true;
                r->kill_reason = SANDBOX_END_EXPIRED;
                run_finish(r);
                *ret = TAKE_PTR(r);
                return 0;
        }

        if (r->runner->compile_argv) {
                cache_key_compute(r);
                k = cache_lookup(r);
                if (k < 0)
                        return k;
                if (k > 0)
                        r->result.cache_hit = true;
                else
                        first = PHASE_BUILD;
        }

        /* from here on, failures are reported through the callback, with their reason */
        if (phase_begin(r, first) < 0)
                run_finish(r);

        /* the next run's slot and child, while this one runs */
        stem_schedule(sb, e);

        *ret = TAKE_PTR(r);
        return 0;
}

int sandbox_warm(Sandbox *sb, sd_event *e, Language language) {
        _cleanup_(strv_freep) char **argv = NULL;
        const Runner *rn;
        Stem *s;
        int k;

        if (!sb || !e || language < 0 || language >= _LANGUAGE_MAX)
                return -EINVAL;
        rn = sb->runners[language];
        if (!rn || rn->compile_argv)
                return 0; /* a build comes first, and what it runs depends on the program */
        if (sb->warm.pid > 0)
                return 0; /* one at most; it waits for a run of its language */

        k = stem_spawn(sb); /* the stem at hand, or a new one */
        if (k < 0)
                return k;
        s = &sb->stem;
        k = slot_workdir_create(sb, s->workdir_path, s->uid, &s->workdir);
        if (k >= 0)
                k = build_argv(sb, rn, s->workdir_path, rn->run_argv, &argv);
        if (k >= 0)
                k = stem_send(s, argv);
        if (k >= 0) {
                s->warm = language;
                sb->warm = *s;
                *s = STEM_NULL;
        } else
                stem_discard(s);
        stem_schedule(sb, e);
        return k < 0 ? k : 1;
}

typedef struct SyncState {
        bool done;
        SandboxResult result;
} SyncState;

static void on_sync_done(SandboxRun *run, SandboxResult *result, void *userdata) {
        SyncState *s = userdata;

        s->result = *result;
        *result = (SandboxResult) {};
        s->done = true;
}

int sandbox_run_sync(Sandbox *sb, const SandboxRequest *req, SandboxResult *ret) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sandbox_run_freep) SandboxRun *run = NULL;
        SyncState s = {};
        int k;

        k = sd_event_new(&e);
        if (k < 0)
                return k;
        k = sandbox_start(sb, e, req, on_sync_done, &s, &run);
        if (k < 0)
                return k;
        while (!s.done) {
                k = sd_event_run(e, UINT64_MAX);
                if (k < 0)
                        return k;
        }
        *ret = s.result;
        return 0;
}
