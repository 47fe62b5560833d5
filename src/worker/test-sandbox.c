/* SPDX-License-Identifier: MIT */
/* The sandbox, for real: bubblewrap, cgroups, slot UIDs, Python and Mono. The compat cases of
 * the older system, then the escape battery: every case asserts the verdict and that the host
 * is untouched — no process of the slot UID left, the slot's cgroup empty, the working directory
 * removed, host files unchanged. Needs root, bubblewrap and the memory/pids/cpu cgroup
 * controllers (exit 77 without); no other services. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <json-c/json.h>
#include <sodium.h>

#include "config.h"
#include "log.h"
#include "sandbox.h"
#include "stem.h"

#define SEC USEC_PER_SEC
#define MSEC USEC_PER_MSEC
#define RUNTIME_DIR "/run/dtask-sandbox"
/* Our own slots, apart from the default range of workers that may run beside the tests
 * (tools/dev test): a worker starting a run in one of our slots right after our run would
 * look like a process left behind. */
static uid_t test_uid_base; /* 62000 + 100·k, k from a lock: two test processes never share UIDs */
#define TEST_UID_MIN (test_uid_base)
#define TEST_UID_MAX (test_uid_base + 63)
#define TEST_UID_SINGLE (test_uid_base + 64) /* .. TEST_UID_LAST: single-slot and small sandboxes */
#define TEST_UID_LAST (test_uid_base + 99)

static Sandbox *sb;
static char cache_base[64];
static char token[3][33]; /* secrets planted on the host */

/* ---------------------------------------------------------------------------------------- */
/* helpers */

/* DTASK_TEST_SANDBOX_FORK=1 (test-sandbox-forked): the children of runs are forked, as in a
 * build without dtask-sandbox-stem, instead of spawned as dtask-sandbox-stem. */
static bool forked(void) {
        const char *e = getenv("DTASK_TEST_SANDBOX_FORK");
        return e && streq(e, "1");
}

static void test_settings(SandboxSettings *s) {
        sandbox_settings_init(s);
        s->uid_min = TEST_UID_MIN;
        s->uid_max = TEST_UID_MAX;
        if (forked())
                s->stem_helper_path = "";
}

static void random_token(char buf[static 33]) {
        unsigned char b[16];
        randombytes_buf(b, sizeof b);
        sodium_bin2hex(buf, 33, b, sizeof b);
}

static int write_str(const char *path, const char *s, mode_t mode) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return -errno;
        return write(fd, s, strlen(s)) == (ssize_t) strlen(s) ? 0 : -EIO;
}

/* A process (of our UID) that moves itself into the cgroup whose cgroup.procs is procs_path
 * and waits there, as a crashed worker's run would leave it. */
static pid_t plant_in_cgroup(const char *procs_path) {
        char pidbuf[16], c;
        int p[2];
        pid_t pid;

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                snprintf(pidbuf, sizeof pidbuf, "%d", (int) getpid());
                if (write_str(procs_path, pidbuf, 0644) < 0)
                        _exit(1);
                (void) !write(p[1], "x", 1);
                for (;;)
                        pause();
        }
        close(p[1]);
        assert_int_equal(read(p[0], &c, 1), 1);
        close(p[0]);
        return pid;
}

static char *read_str(const char *path) {
        static char buf[4096];
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

/* Processes (zombies included) whose real UID is uid, host-wide; with comm, only those of that
 * name. With sig > 0, each is sent sig. */
static unsigned processes_match(uid_t uid, const char *comm, int sig) {
        DIR *d = opendir("/proc");
        struct dirent *de;
        unsigned n = 0;

        assert_non_null(d);
        while ((de = readdir(d))) {
                char path[300], *s, *line;
                unsigned long real;

                if (de->d_name[0] < '0' || de->d_name[0] > '9')
                        continue;
                snprintf(path, sizeof path, "/proc/%s/status", de->d_name);
                s = read_str(path);
                if (!s || !(line = strstr(s, "\nUid:")))
                        continue;
                real = strtoul(line + 5, NULL, 10);
                if (real != uid)
                        continue;
                if (comm) {
                        snprintf(path, sizeof path, "/proc/%s/comm", de->d_name);
                        s = read_str(path);
                        if (!s || strncmp(s, comm, strlen(comm)) != 0 || s[strlen(comm)] != '\n')
                                continue;
                }
                if (sig > 0)
                        (void) kill((pid_t) atoi(de->d_name), sig);
                n++;
        }
        closedir(d);
        return n;
}

static unsigned processes_of(uid_t uid) {
        return processes_match(uid, NULL, 0);
}

static unsigned processes_named(uid_t uid, const char *comm) {
        return processes_match(uid, comm, 0);
}

/* The slot's cgroup, which is kept for the slot's next run, has no process in it (or is gone). */
static void assert_slot_cgroup_empty(uid_t uid) {
        char path[512];
        const char *procs;

        snprintf(path, sizeof path, "%s/slot-%u/cgroup.procs", sandbox_cgroup_root(sb), (unsigned) uid);
        procs = read_str(path);
        if (procs)
                assert_string_equal(procs, "");
        else
                assert_int_equal(errno, ENOENT);
}

/* Nothing of the run is left on the host. */
static void assert_clean(const SandboxResult *res) {
        char path[512];
        int status;
        pid_t pid;

        assert_true(res->uid >= TEST_UID_MIN && res->uid <= TEST_UID_LAST);
        assert_int_equal(processes_of(res->uid), 0);
        assert_slot_cgroup_empty(res->uid);
        snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u", (unsigned) res->uid);
        assert_int_equal(access(path, F_OK), -1);

        /* and the host can still fork and exec */
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                execl("/bin/true", "true", NULL);
                _exit(127);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void run_full(Sandbox *s, Language lang, const char *code, const char *input, usec_t ttl_rel, usec_t max_runtime,
                     SandboxResult *ret) {
        SandboxRequest req = {
                .language = lang,
                .code = code,
                .code_size = strlen(code),
                .stdin_data = input,
                .stdin_size = input ? strlen(input) : 0,
                .ttl_deadline = ttl_rel ? now_usec(CLOCK_REALTIME) + ttl_rel : USEC_INFINITY,
                .max_runtime = max_runtime,
        };

        assert_int_equal(sandbox_run_sync(s, &req, ret), 0);
        if (ret->end == SANDBOX_END_FAILED)
                print_message("internal error: %s\n", strna(ret->error_message));
}

static void run(Language lang, const char *code, const char *input, SandboxResult *ret) {
        run_full(sb, lang, code, input, 0, 0, ret);
}

static void assert_verdict(const SandboxResult *res, SandboxVerdict v) {
        if (res->verdict != v)
                print_message("verdict %s (end %s, exit %d), expected %s\nstdout: %.2000s\nstderr: %.2000s\nerror: %s\n",
                              sandbox_verdict_to_string(res->verdict), sandbox_end_to_string(res->end), res->exit_code,
                              sandbox_verdict_to_string(v), res->stdout_data, res->stderr_data,
                              strna(res->error_message));
        assert_int_equal(res->verdict, v);
}

#define CS(body) "using System; using System.IO; using System.Collections.Generic; using System.Threading;\n" \
                 "class P { static void Main() { " body " } }\n"

/* ---------------------------------------------------------------------------------------- */
/* compat cases of the older system */

static void test_py_stdin_len(void **state) {
        SandboxResult res = {};
        char input[43];

        memset(input, 'a', 42);
        input[42] = '\0';
        run(LANGUAGE_PYTHON, "import sys; print(len(sys.stdin.read()), end=\"\")", input, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_int_equal(res.end, SANDBOX_END_EXITED);
        assert_int_equal(res.exit_code, 0);
        assert_string_equal(res.stdout_data, "42");
        assert_int_equal(res.stdout_size, 2);
        assert_false(res.output_truncated);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_py_print(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_PYTHON, "print(42, end=\"\")", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "42");
        assert_clean(&res);
        sandbox_result_done(&res);

        /* raw, not trimmed */
        run(LANGUAGE_PYTHON, "print('  x  ')\nprint()", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "  x  \n\n");
        sandbox_result_done(&res);
}

static void test_py_zero_division(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_PYTHON, "print(42/0)", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_RUNTIME_ERROR);
        assert_int_equal(res.end, SANDBOX_END_EXITED);
        assert_int_equal(res.exit_code, 1);
        assert_non_null(strstr(res.stderr_data, "ZeroDivisionError"));
        assert_string_equal(res.stdout_data, "");
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_py_big_stdin(void **state) {
        SandboxResult res = {};
        _cleanup_free_ char *input = malloc(1024 * 1024 + 1);

        assert_non_null(input);
        memset(input, 'z', 1024 * 1024);
        input[1024 * 1024] = '\0';
        run(LANGUAGE_PYTHON, "import sys; d = sys.stdin.read(); print(len(d), set(d), end='')", input, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "1048576 {'z'}");
        sandbox_result_done(&res);

        /* a program that does not read its input at all */
        run(LANGUAGE_PYTHON, "print('ignored', end='')", input, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "ignored");
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_stdin(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_CSHARP, CS("Console.Write(int.Parse(Console.In.ReadToEnd()) + 1);"), "41", &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_int_equal(res.exit_code, 0);
        assert_string_equal(res.stdout_data, "42");
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_write(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_CSHARP, "using System; class P { static void Main() { Console.Write(42); } }", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "42");
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_throw(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_CSHARP, CS("throw new Exception();"), NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_RUNTIME_ERROR);
        assert_int_equal(res.end, SANDBOX_END_EXITED);
        assert_true(res.exit_code > 0);
        assert_true(res.stderr_size > 0);
        assert_non_null(strstr(res.stderr_data, "System.Exception"));
        assert_true(res.compiled || res.cache_hit);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_syntax_error(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_CSHARP, "class P { static void Main() { System.Console.Write(42) } }", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_COMPILE_ERROR);
        assert_int_equal(res.end, SANDBOX_END_EXITED);
        assert_true(res.compiled);
        assert_non_null(strstr(res.stderr_data, "error CS1002"));
        assert_string_equal(res.stdout_data, "");
        assert_clean(&res);
        sandbox_result_done(&res);
}

static unsigned count_cache_files(char *ret_name, size_t size, struct stat *ret_st) {
        char dir[128];
        DIR *d;
        struct dirent *de;
        unsigned n = 0;

        snprintf(dir, sizeof dir, "%s/csharp", cache_base);
        d = opendir(dir);
        assert_non_null(d);
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                n++;
                if (ret_name) {
                        snprintf(ret_name, size, "%s/%s", dir, de->d_name);
                        assert_int_equal(stat(ret_name, ret_st), 0);
                }
        }
        closedir(d);
        return n;
}

static void test_cs_cache(void **state) {
        SandboxResult res = {};
        char code[512], nonce[33], name[512], name2[512];
        struct stat st1, st2;
        unsigned before;

        random_token(nonce);
        snprintf(code, sizeof code, CS("/* %s */ Console.Write(\"cached\");"), nonce);
        before = count_cache_files(NULL, 0, NULL);

        run(LANGUAGE_CSHARP, code, NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "cached");
        assert_true(res.compiled);
        assert_false(res.cache_hit);
        assert_clean(&res);
        sandbox_result_done(&res);
        assert_int_equal(count_cache_files(name, sizeof name, &st1), before + 1);
        assert_true(S_ISREG(st1.st_mode));
        assert_int_equal(st1.st_uid, 0);
        assert_int_equal(st1.st_mode & 077, 0); /* the sandboxes' UIDs cannot read it */

        sleep(1); /* a rewrite would show in the mtime */
        run(LANGUAGE_CSHARP, code, NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "cached");
        assert_false(res.compiled); /* no compile happened */
        assert_true(res.cache_hit);
        assert_clean(&res);
        sandbox_result_done(&res);
        assert_int_equal(count_cache_files(name2, sizeof name2, &st2), before + 1);
        assert_int_equal(st1.st_ino, st2.st_ino);
        assert_int_equal(st1.st_mtim.tv_sec, st2.st_mtim.tv_sec);
        assert_int_equal(st1.st_mtim.tv_nsec, st2.st_mtim.tv_nsec);

        /* another source is another entry */
        snprintf(code, sizeof code, CS("/* %s */ Console.Write(\"other\");"), nonce);
        run(LANGUAGE_CSHARP, code, NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_true(res.compiled);
        assert_string_equal(res.stdout_data, "other");
        sandbox_result_done(&res);
        assert_int_equal(count_cache_files(NULL, 0, NULL), before + 2);
}

/* ---------------------------------------------------------------------------------------- */
/* escape battery */

static void test_py_fork_bomb(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_PYTHON, "import os\nwhile True:\n    os.fork()\n", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_PIDS_LIMIT);
        assert_true(res.pids_max_events > 0);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_thread_bomb(void **state) {
        SandboxResult res = {};

        /* threads are tasks: pids.max holds them, too */
        run(LANGUAGE_CSHARP, CS("for (;;) new Thread(() => Thread.Sleep(-1)).Start();"), NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_PIDS_LIMIT);
        assert_true(res.pids_max_events > 0);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_py_memory_bomb(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_PYTHON, "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_MEMORY_LIMIT);
        assert_true(res.oom_kills > 0);
        assert_clean(&res);
        sandbox_result_done(&res);

        /* in /tmp (a tmpfs: memory, too) */
        run(LANGUAGE_PYTHON,
            "f = open('/tmp/big', 'wb')\nwhile True:\n    f.write(b'x' * 10 ** 6)\n    f.flush()\n", NULL, &res);
        assert_int_not_equal(res.verdict, SANDBOX_VERDICT_OK);
        assert_true(res.verdict == SANDBOX_VERDICT_MEMORY_LIMIT || res.verdict == SANDBOX_VERDICT_RUNTIME_ERROR);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_memory_bomb(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_CSHARP,
            CS("var l = new List<byte[]>(); for (;;) { var b = new byte[10 << 20]; "
               "for (int i = 0; i < b.Length; i += 4096) b[i] = 1; l.Add(b); }"),
            NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_MEMORY_LIMIT);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static int listener(uint16_t *ret_port) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof a;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &a, sizeof a), 0);
        assert_int_equal(listen(fd, 16), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &a, &l), 0);
        *ret_port = ntohs(a.sin_port);
        return fd;
}

static void assert_nobody_connected(int fd) {
        int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        assert_int_equal(c, -1);
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
}

static void test_py_network(void **state) {
        SandboxResult res = {};
        _cleanup_close_ int fd = -EBADF;
        uint16_t port;
        char input[16];

        fd = listener(&port);
        snprintf(input, sizeof input, "%u", port);
        run(LANGUAGE_PYTHON,
            "import socket, sys\n"
            "port = int(sys.stdin.read())\n"
            "def t(name, f):\n"
            "    try:\n"
            "        f(); print(name, 'OK')\n"
            "    except Exception as e:\n"
            "        print(name, 'ERR', type(e).__name__, getattr(e, 'errno', ''))\n"
            "def tcp(host, p):\n"
            "    s = socket.socket(); s.settimeout(3); s.connect((host, p))\n"
            "def udp():\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('1.1.1.1', 53))\n"
            "t('listener', lambda: tcp('127.0.0.1', port))\n"
            "t('postgres', lambda: tcp('127.0.0.1', 55432))\n"
            "t('rabbitmq', lambda: tcp('127.0.0.1', 55672))\n"
            "t('outside', lambda: tcp('1.1.1.1', 53))\n"
            "t('outside6', lambda: socket.create_connection(('2606:4700:4700::1111', 53), 3))\n"
            "t('udp', udp)\n"
            "t('dns', lambda: socket.getaddrinfo('example.com', 80))\n"
            "print('ifaces', sorted(n for i, n in socket.if_nameindex()))\n",
            input, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        print_message("%s", res.stdout_data);
        assert_non_null(strstr(res.stdout_data, "listener ERR ConnectionRefusedError"));
        assert_non_null(strstr(res.stdout_data, "postgres ERR ConnectionRefusedError"));
        assert_non_null(strstr(res.stdout_data, "rabbitmq ERR ConnectionRefusedError"));
        assert_non_null(strstr(res.stdout_data, "outside ERR OSError 101")); /* ENETUNREACH */
        assert_non_null(strstr(res.stdout_data, "outside6 ERR"));
        assert_non_null(strstr(res.stdout_data, "udp ERR OSError 101"));
        assert_non_null(strstr(res.stdout_data, "dns ERR gaierror"));
        assert_non_null(strstr(res.stdout_data, "ifaces ['lo']"));
        assert_null(strstr(res.stdout_data, " OK"));
        assert_nobody_connected(fd);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_network(void **state) {
        SandboxResult res = {};
        _cleanup_close_ int fd = -EBADF;
        uint16_t port;
        char input[16];

        fd = listener(&port);
        snprintf(input, sizeof input, "%u", port);
        run(LANGUAGE_CSHARP,
            "using System; using System.Net; using System.Net.Sockets;\n"
            "class P {\n"
            "  static void T(string name, Action a) {\n"
            "    try { a(); Console.WriteLine(name + \" OK\"); }\n"
            "    catch (Exception e) { Console.WriteLine(name + \" ERR \" + e.GetType().Name); } }\n"
            "  static void Main() {\n"
            "    int port = int.Parse(Console.In.ReadToEnd());\n"
            "    T(\"listener\", () => new TcpClient().Connect(\"127.0.0.1\", port));\n"
            "    T(\"outside\", () => new TcpClient().Connect(\"1.1.1.1\", 53));\n"
            "    T(\"dns\", () => Dns.GetHostEntry(\"example.com\"));\n"
            "  } }\n",
            input, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        print_message("%s", res.stdout_data);
        assert_non_null(strstr(res.stdout_data, "listener ERR SocketException"));
        assert_non_null(strstr(res.stdout_data, "outside ERR SocketException"));
        assert_non_null(strstr(res.stdout_data, "dns ERR SocketException"));
        assert_null(strstr(res.stdout_data, " OK"));
        assert_nobody_connected(fd);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static char root_secret[128], conf_path[] = "/etc/dtask/dtask.conf";
static bool conf_created, conf_dir_created;

static void plant_secrets(void) {
        char buf[128];

        for (size_t i = 0; i < 3; i++)
                random_token(token[i]);
        snprintf(root_secret, sizeof root_secret, "/root/dtask-test-secret-%d", (int) getpid());
        snprintf(buf, sizeof buf, "%s\n", token[0]);
        assert_int_equal(write_str(root_secret, buf, 0600), 0);
        if (access(conf_path, F_OK) < 0) {
                if (mkdir("/etc/dtask", 0755) >= 0)
                        conf_dir_created = true;
                snprintf(buf, sizeof buf, "API_KEY=%s\n", token[1]);
                assert_int_equal(write_str(conf_path, buf, 0600), 0);
                conf_created = true;
        }
        /* the worker's environment */
        assert_int_equal(setenv("DTASK_TEST_SECRET", token[2], 1), 0);
}

static void remove_secrets(void) {
        (void) unlink(root_secret);
        if (conf_created)
                (void) unlink(conf_path);
        if (conf_dir_created)
                (void) rmdir("/etc/dtask");
        (void) unsetenv("DTASK_TEST_SECRET");
}

static void assert_no_secrets(const SandboxResult *res) {
        for (size_t i = 0; i < 3; i++) {
                assert_null(strstr(res->stdout_data, token[i]));
                assert_null(strstr(res->stderr_data, token[i]));
        }
}

static void test_py_secrets(void **state) {
        SandboxResult res = {};
        char code[4096];

        snprintf(code, sizeof code,
                 "import os\n"
                 "def t(p, f):\n"
                 "    try:\n"
                 "        r = f(p); print(p, 'OK', repr(r))\n"
                 "    except Exception as e:\n"
                 "        print(p, 'ERR', type(e).__name__)\n"
                 "rd = lambda p: open(p, 'rb').read()\n"
                 "for p in ['/etc/shadow', '/etc/passwd', '/etc/dtask/dtask.conf', '%s', '/proc/1/environ',\n"
                 "          '/proc/self/environ', '/var/lib/dtask', '/proc/1/root/etc/shadow']:\n"
                 "    t(p, rd)\n"
                 "for p in ['/root', '/var/lib', '/home', '/etc', '/run', '/sys/fs/cgroup', '/var/cache']:\n"
                 "    t(p, os.listdir)\n"
                 "print('environ', dict(os.environ))\n",
                 root_secret);
        run(LANGUAGE_PYTHON, code, NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        print_message("%s", res.stdout_data);
        assert_no_secrets(&res);
        assert_non_null(strstr(res.stdout_data, "/etc/shadow ERR"));
        assert_non_null(strstr(res.stdout_data, "/etc/passwd ERR"));
        assert_non_null(strstr(res.stdout_data, "/etc/dtask/dtask.conf ERR"));
        assert_non_null(strstr(res.stdout_data, "/root/dtask-test-secret-"));
        assert_null(strstr(res.stdout_data, "dtask-test-secret-0 OK"));
        assert_non_null(strstr(res.stdout_data, "/var/lib/dtask ERR"));
        assert_non_null(strstr(res.stdout_data, "/proc/1/root/etc/shadow ERR"));
        /* PID 1 in there is bubblewrap, with an empty environment */
        assert_non_null(strstr(res.stdout_data, "/proc/1/environ OK b''"));
        for (const char *p = res.stdout_data; (p = strstr(p, " OK ")); p++) {
                const char *line = p;
                while (line > res.stdout_data && line[-1] != '\n')
                        line--;
                /* only these may be read */
                assert_true(strneq(line, "/proc/1/environ ", 16) || strneq(line, "/proc/self/environ ", 19));
        }
        assert_null(strstr(res.stdout_data, "DTASK"));
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_secrets(void **state) {
        SandboxResult res = {};
        char code[2048];

        snprintf(code, sizeof code,
                 "using System; using System.IO;\n"
                 "class P {\n"
                 "  static void T(string p) {\n"
                 "    try { Console.WriteLine(p + \" OK \" + File.ReadAllText(p)); }\n"
                 "    catch (Exception e) { Console.WriteLine(p + \" ERR \" + e.GetType().Name); } }\n"
                 "  static void Main() {\n"
                 "    foreach (var p in new[] { \"/etc/shadow\", \"/etc/dtask/dtask.conf\", \"%s\" }) T(p);\n"
                 "    Console.WriteLine(\"env \" + Environment.GetEnvironmentVariable(\"DTASK_TEST_SECRET\"));\n"
                 "  } }\n",
                 root_secret);
        run(LANGUAGE_CSHARP, code, NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        print_message("%s", res.stdout_data);
        assert_no_secrets(&res);
        assert_null(strstr(res.stdout_data, " OK"));
        assert_non_null(strstr(res.stdout_data, "/etc/shadow ERR"));
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_py_write_outside(void **state) {
        SandboxResult res = {};
        static const char *const paths[] = { "/usr/dtask-x", "/etc/dtask-x", "/dtask-x", "/usr/bin/dtask-x" };

        for (size_t i = 0; i < ELEMENTSOF(paths); i++)
                assert_int_equal(access(paths[i], F_OK), -1);
        run(LANGUAGE_PYTHON,
            "import os\n"
            "for p in ['/usr/dtask-x', '/etc/dtask-x', '/dtask-x', '/usr/bin/dtask-x', '/proc/sys/kernel/hostname']:\n"
            "    try:\n"
            "        open(p, 'w').write('x'); print(p, 'OK')\n"
            "    except Exception as e:\n"
            "        print(p, 'ERR', type(e).__name__)\n"
            "for d in ['/etc', '/var']:\n"
            "    try:\n"
            "        os.mkdir(d); print(d, 'OK')\n"
            "    except Exception as e:\n"
            "        print(d, 'ERR', type(e).__name__)\n",
            NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        print_message("%s", res.stdout_data);
        assert_null(strstr(res.stdout_data, " OK"));
        for (size_t i = 0; i < ELEMENTSOF(paths); i++)
                assert_int_equal(access(paths[i], F_OK), -1);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_write_outside(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_CSHARP,
            CS("foreach (var p in new[] { \"/usr/dtask-x\", \"/etc/dtask-x\", \"/dtask-x\" }) {"
               "  try { File.WriteAllText(p, \"x\"); Console.WriteLine(p + \" OK\"); }"
               "  catch (Exception e) { Console.WriteLine(p + \" ERR \" + e.GetType().Name); } }"),
            NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_null(strstr(res.stdout_data, " OK"));
        assert_int_equal(access("/usr/dtask-x", F_OK), -1);
        assert_int_equal(access("/etc/dtask-x", F_OK), -1);
        assert_clean(&res);
        sandbox_result_done(&res);
}

/* The slot's cgroup is kept from run to run: the kernel's counters (OOM kills, refused forks,
 * CPU time, peak memory) are the run's own, not those of earlier runs in the slot. */
static void test_verdicts_per_run(void **state) {
        _cleanup_(sandbox_freep) Sandbox *one = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;
        SandboxResult res = {};
        uid_t uid;

        test_settings(&s);
        s.uid_min = s.uid_max = TEST_UID_SINGLE + 1;
        if (sandbox_new(&s, &one, &error) < 0)
                fail_msg("%s", strna(error));

        run_full(one, LANGUAGE_PYTHON, "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_MEMORY_LIMIT);
        assert_true(res.oom_kills > 0);
        assert_true(res.memory_peak > 128 * 1024 * 1024);
        uid = res.uid;
        sandbox_result_done(&res);

        run_full(one, LANGUAGE_PYTHON, "import os\nwhile True:\n    os.fork()\n", NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_PIDS_LIMIT);
        assert_int_equal(res.uid, uid);
        assert_int_equal(res.oom_kills, 0);
        assert_true(res.pids_max_events > 0);
        sandbox_result_done(&res);

        run_full(one, LANGUAGE_PYTHON, "import time\ntime.sleep(0.3)\nprint(1, end='')\n", NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_int_equal(res.uid, uid);
        assert_string_equal(res.stdout_data, "1");
        assert_int_equal(res.oom_kills, 0);
        assert_int_equal(res.pids_max_events, 0);
        assert_true(res.memory_peak < 128 * 1024 * 1024);
        /* the fork bomb burnt CPU for a while; this run mostly slept */
        assert_true(res.cpu_usec < res.duration / 2);
        assert_clean(&res);
        sandbox_result_done(&res);
}

/* A process left in a slot's cgroup (a crashed predecessor) is killed before the slot's next
 * run, and the run is not disturbed by it. */
static void test_slot_cgroup_leftover(void **state) {
        _cleanup_(sandbox_freep) Sandbox *one = NULL;
        _cleanup_free_ char *error = NULL, *root = NULL;
        SandboxSettings s;
        SandboxResult res = {};
        char dir[512], path[600];
        int status;
        pid_t pid;

        test_settings(&s);
        s.uid_min = s.uid_max = TEST_UID_SINGLE + 2;
        if (sandbox_new(&s, &one, &error) < 0)
                fail_msg("%s", strna(error));
        root = strdup(sandbox_cgroup_root(one));
        assert_non_null(root);

        /* a first run, then the sandbox goes: the slot is free again, its group removed */
        run_full(one, LANGUAGE_PYTHON, "print(1, end='')\n", NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        sandbox_result_done(&res);
        one = sandbox_free(one);

        /* the group with a process of someone else's UID in it, as a crashed worker's run would
         * leave it */
        snprintf(dir, sizeof dir, "%s/slot-%u", root, (unsigned) s.uid_min);
        assert_int_equal(mkdir(dir, 0755), 0);
        snprintf(path, sizeof path, "%s/cgroup.procs", dir);
        pid = plant_in_cgroup(path);

        if (sandbox_new(&s, &one, &error) < 0)
                fail_msg("%s", strna(error));
        run_full(one, LANGUAGE_PYTHON, "print(2, end='')\n", NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "2");
        sandbox_result_done(&res);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        assert_string_equal(read_str(path), "");
}

/* Is the slot's lock held (by us: the slot is kept for our next run)? */
static bool slot_locked(uid_t uid) {
        char path[128];
        _cleanup_close_ int fd = -EBADF;

        snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u.lock", (unsigned) uid);
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        assert_true(fd >= 0);
        if (flock(fd, LOCK_EX | LOCK_NB) >= 0)
                return false;
        assert_int_equal(errno, EWOULDBLOCK);
        return true;
}

/* A slot that a run left clean stays ours and is used again as it is, without the clean-up of
 * a slot from the range: nothing of the first run is in it for the second. The first leaves a
 * daemon (double fork, setsid, SIGTERM ignored) and files in its working directory, $HOME and
 * /tmp; it is gone, and the second sees none of them. */
static void test_slot_reused(void **state) {
        _cleanup_(sandbox_freep) Sandbox *one = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;
        SandboxResult res = {};
        char dir[512];
        uid_t uid;

        /* a single slot: the second run can only have it from us */
        test_settings(&s);
        s.uid_min = s.uid_max = TEST_UID_SINGLE + 6;
        if (sandbox_new(&s, &one, &error) < 0)
                fail_msg("%s", strna(error));

        run_full(one, LANGUAGE_PYTHON,
                 "import os, signal, time\n"
                 "for p in ['/work/left', '/tmp/left', os.path.expanduser('~/.left')]:\n"
                 "    open(p, 'w').write('x')\n"
                 "if os.fork() == 0:\n"
                 "    os.setsid()\n"
                 "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                 "    if os.fork() == 0:\n"
                 /* detached from our outputs, and with memory to free: it takes the kernel a
                  * while to tear it down, which the run's end must wait for */
                 "        null = os.open('/dev/null', os.O_RDWR)\n"
                 "        for fd in range(3):\n"
                 "            os.dup2(null, fd)\n"
                 "        ballast = b'x' * (150 << 20)\n"
                 "        open('/work/daemon', 'w').write('x')\n"
                 "        while True:\n"
                 "            time.sleep(1)\n"
                 "    os._exit(0)\n"
                 "while not os.path.exists('/work/daemon'):\n"
                 "    time.sleep(0.01)\n"
                 "print(sorted(os.listdir('/work')), end='')\n",
                 NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "['.left', 'daemon', 'left', 'main.py']");
        uid = res.uid;
        assert_clean(&res);
        sandbox_result_done(&res);
        assert_true(slot_locked(uid));

        run_full(one, LANGUAGE_PYTHON,
                 "import os\n"
                 "print(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')),"
                 " sorted(p for p in os.listdir('/proc') if p.isdigit()), end='')\n",
                 NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_int_equal(res.uid, uid);
        /* bubblewrap's init and the program */
        assert_string_equal(res.stdout_data, "['main.py'] [] ['1', '2']");
        assert_clean(&res);
        sandbox_result_done(&res);

        /* and sandbox_free() gives it back, its group removed */
        snprintf(dir, sizeof dir, "%s/slot-%u", sandbox_cgroup_root(one), (unsigned) uid);
        assert_int_equal(access(dir, F_OK), 0);
        one = sandbox_free(one);
        assert_false(slot_locked(uid));
        assert_int_equal(access(dir, F_OK), -1);
        assert_int_equal(processes_of(uid), 0);
}

/* The next run's child is prepared while a run goes on (a root process waiting in a free
 * slot's cgroup, holding nothing of any run); sandbox_free() kills it and removes the slots'
 * cgroups. */
static void test_prepared_child(void **state) {
        _cleanup_(sandbox_freep) Sandbox *two = NULL;
        _cleanup_free_ char *error = NULL, *root = NULL;
        SandboxSettings s;
        SandboxResult res = {};
        char path[2][512], *procs;
        pid_t stem = 0;
        uid_t first;
        int n = 0;

        test_settings(&s);
        s.uid_min = TEST_UID_SINGLE + 3;
        s.uid_max = TEST_UID_SINGLE + 4;
        if (sandbox_new(&s, &two, &error) < 0)
                fail_msg("%s", strna(error));
#ifdef STEM_HELPER_PATH
        /* built: found next to us */
        assert_true(forked() == !sandbox_stem_helper(two));
#else
        assert_null(sandbox_stem_helper(two));
#endif
        root = strdup(sandbox_cgroup_root(two));
        assert_non_null(root);
        for (unsigned i = 0; i < 2; i++)
                snprintf(path[i], sizeof path[i], "%s/slot-%u", root, (unsigned) (s.uid_min + i));

        /* a run of some length: the child for the next one is made meanwhile, in the other slot */
        run_full(two, LANGUAGE_PYTHON, "import time\ntime.sleep(0.5)\nprint(1, end='')\n", NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        for (unsigned i = 0; i < 2; i++) {
                char p[600];

                snprintf(p, sizeof p, "%s/cgroup.procs", path[i]);
                procs = read_str(p);
                assert_non_null(procs);
                if (s.uid_min + i == res.uid)
                        assert_string_equal(procs, "");
                else {
                        char status[64], *line;

                        stem = (pid_t) atoi(procs);
                        assert_true(stem > 0);
                        assert_ptr_equal(strchr(procs, '\n'), procs + strlen(procs) - 1); /* just one */
                        snprintf(status, sizeof status, "/proc/%d/status", (int) stem);
                        line = strstr(read_str(status), "\nUid:");
                        assert_non_null(line);
                        assert_int_equal(strtoul(line + 5, NULL, 10), 0);
                        /* dtask-sandbox-stem where it was built (the name cut to 15 bytes), else
                         * a fork of ours */
                        snprintf(status, sizeof status, "/proc/%d/comm", (int) stem);
                        if (sandbox_stem_helper(two))
                                assert_string_equal(read_str(status), "dtask-sandbox-s\n");
                        else
                                assert_string_equal(read_str(status), "test-sandbox\n");
                        n++;
                }
        }
        assert_int_equal(n, 1);
        first = res.uid;
        sandbox_result_done(&res);

        /* the second run takes it: the other slot, and the child is the run's (gone with it) */
        run_full(two, LANGUAGE_PYTHON, "import sys\nprint(sys.stdin.read(), end='')\n", "through the stem", 0, 0,
                 &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "through the stem");
        assert_int_not_equal(res.uid, first);
        assert_int_equal(kill(stem, 0), -1);
        assert_clean(&res);
        sandbox_result_done(&res);

        two = sandbox_free(two);
        for (unsigned i = 0; i < 2; i++) {
                assert_int_equal(access(path[i], F_OK), -1);
                assert_int_equal(processes_of(s.uid_min + i), 0);
        }
}

/* The one slot of [min, max] that has processes (a warm sandbox's bubblewrap: stems are root
 * until their go message), once its sandbox is set up (the inner bubblewrap is there). */
static uid_t warm_slot(uid_t min, uid_t max) {
        for (unsigned tries = 0; tries < 500; tries++) {
                uid_t found = 0;
                unsigned n = 0;

                for (uid_t u = min; u <= max; u++)
                        if (processes_of(u) > 0) {
                                found = u;
                                n++;
                        }
                assert_true(n <= 1);
                if (found > 0 && processes_named(found, "bwrap") >= 2)
                        return found;
                (void) usleep(10 * 1000);
        }
        fail_msg("no warm sandbox in slots %u-%u", (unsigned) min, (unsigned) max);
        return 0;
}

/* sandbox_warm(): the next run's sandbox is set up ahead and waits without a program; the run
 * that takes it gets its input and output as any other and leaves nothing behind; a warm
 * sandbox whose bubblewrap died is not used; sandbox_free() leaves nothing of one that was
 * never used; none is made for a language with a build step. */
static void test_warm(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sandbox_freep) Sandbox *w = NULL;
        _cleanup_free_ char *error = NULL, *root = NULL;
        SandboxSettings s;
        SandboxResult res = {};
        char expected[64], path[600];
        uid_t uid;

        test_settings(&s);
        s.uid_min = TEST_UID_SINGLE + 10;
        s.uid_max = TEST_UID_SINGLE + 12;
        if (sandbox_new(&s, &w, &error) < 0)
                fail_msg("%s", strna(error));
        root = strdup(sandbox_cgroup_root(w));
        assert_non_null(root);
        assert_int_equal(sd_event_new(&e), 0);

        assert_int_equal(sandbox_warm(w, e, LANGUAGE_CSHARP), 0);
        assert_int_equal(sandbox_warm(w, e, LANGUAGE_PYTHON), 1);
        assert_int_equal(sandbox_warm(w, e, LANGUAGE_PYTHON), 0); /* one at most */

        /* set up, and waiting: bubblewrap only, no program, an empty working directory */
        uid = warm_slot(s.uid_min, s.uid_max);
        (void) usleep(200 * 1000);
        assert_int_equal(processes_named(uid, "python3"), 0);
        assert_int_equal(processes_of(uid), processes_named(uid, "bwrap"));
        snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u/main.py", (unsigned) uid);
        assert_int_equal(access(path, F_OK), -1);

        run_full(w, LANGUAGE_PYTHON, "import os, sys\nprint(os.getuid(), sys.stdin.read(), end='')\n", "warm", 0,
                 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_int_equal(res.uid, uid);
        snprintf(expected, sizeof expected, "%u warm", (unsigned) uid);
        assert_string_equal(res.stdout_data, expected);
        assert_clean(&res);
        sandbox_result_done(&res);

        /* its bubblewrap killed while it waits: the run starts afresh */
        assert_int_equal(sandbox_warm(w, e, LANGUAGE_PYTHON), 1);
        uid = warm_slot(s.uid_min, s.uid_max);
        assert_true(processes_match(uid, NULL, SIGKILL) > 0);
        (void) usleep(100 * 1000);
        run_full(w, LANGUAGE_PYTHON, "print(6 * 7, end='')\n", NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "42");
        assert_clean(&res);
        sandbox_result_done(&res);

        /* never used */
        assert_int_equal(sandbox_warm(w, e, LANGUAGE_PYTHON), 1);
        uid = warm_slot(s.uid_min, s.uid_max);
        w = sandbox_free(w);
        for (uid_t u = s.uid_min; u <= s.uid_max; u++) {
                assert_int_equal(processes_of(u), 0);
                snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u", (unsigned) u);
                assert_int_equal(access(path, F_OK), -1);
                snprintf(path, sizeof path, "%s/slot-%u", root, (unsigned) u);
                assert_int_equal(access(path, F_OK), -1);
        }
}

/* A warm sandbox does not keep a run of another language from the last free slot. */
static void test_warm_last_slot(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sandbox_freep) Sandbox *one = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;
        SandboxResult res = {};

        test_settings(&s);
        s.uid_min = s.uid_max = TEST_UID_SINGLE + 13;
        if (sandbox_new(&s, &one, &error) < 0)
                fail_msg("%s", strna(error));
        assert_int_equal(sd_event_new(&e), 0);

        assert_int_equal(sandbox_warm(one, e, LANGUAGE_PYTHON), 1);
        assert_int_equal(warm_slot(s.uid_min, s.uid_max), s.uid_min);
        run_full(one, LANGUAGE_CSHARP, CS("Console.Write(7);"), NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "7");
        assert_int_equal(res.uid, s.uid_min);
        assert_clean(&res);
        sandbox_result_done(&res);
}

/* The program gets stdin, stdout and stderr, and no other fd of ours (the status and block
 * pipes of the set-up, other runs' pipes, cgroup files). */
static void test_py_no_fds_leaked(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_PYTHON,
            "import os\n"
            "fds = []\n"
            "for fd in range(3, 1024):\n"
            "    try:\n"
            "        os.fstat(fd)\n"
            "        fds.append(fd)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(fds, end='')\n",
            NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "[]");
        assert_clean(&res);
        sandbox_result_done(&res);
}

/* dtask-sandbox-stem run by hand, with what the worker would pass it (see stem.h): argv, a
 * status pipe at STEM_FD_STATUS and a control pipe at STEM_FD_CTL (to_ctl: written and closed,
 * NULL: left open, "": closed at once). Returns its wait status; *error the ChildError it
 * reported, zeroed if none. */
static int helper_try(char **argv, const void *to_ctl, size_t to_ctl_size, ChildError *error) {
        int st[2], ctl[2], status = 0;
        pid_t pid;
        ssize_t k;

        assert_int_equal(pipe2(st, O_CLOEXEC), 0);
        assert_int_equal(pipe2(ctl, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
                /* above every target first, then to its number; nothing else stays open */
                int a = fcntl(st[1], F_DUPFD, 20), b = fcntl(ctl[0], F_DUPFD, 20);
                if (nul < 0 || a < 0 || b < 0 || dup2(nul, 0) < 0 || dup2(nul, 1) < 0 || dup2(nul, 2) < 0 ||
                    dup2(nul, STEM_FD_BLOCK) < 0 || dup2(a, STEM_FD_STATUS) < 0 || dup2(b, STEM_FD_CTL) < 0 ||
                    close_range(STEM_FD_CGROUP, ~0U, 0) < 0)
                        _exit(126);
                execv(argv[0], argv);
                _exit(126);
        }
        close(st[1]);
        close(ctl[0]);
        if (to_ctl && to_ctl_size > 0)
                assert_int_equal(write(ctl[1], to_ctl, to_ctl_size), (ssize_t) to_ctl_size);
        if (to_ctl)
                ctl[1] = safe_close(ctl[1]);
        *error = (ChildError) {};
        k = read(st[0], error, sizeof *error);
        assert_true(k == 0 || k == (ssize_t) sizeof *error);
        close(st[0]);
        safe_close(ctl[1]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return status;
}

/* dtask-sandbox-stem refuses arguments it cannot use and a go message that is not one, and
 * reports why on the status fd; a stem whose control pipe closes exits quietly; with good
 * arguments it drops to the slot's UID and executes its program (here env, in place of
 * bubblewrap: it prints nothing, so the status pipe just closes). */
static void test_stem_helper(void **state) {
        const char *helper = sandbox_stem_helper(sb);
        char uid[16], parent[16], nouid[] = "0", *argv[12];
        const uint32_t bad_magic[2] = { 0x12345678, 4 };
        ChildError e;
        int status;

        if (!helper) {
                print_message("no dtask-sandbox-stem in this build (or DTASK_TEST_SANDBOX_FORK=1)\n");
                skip();
        }
        snprintf(uid, sizeof uid, "%u", (unsigned) (TEST_UID_SINGLE + 11));
        snprintf(parent, sizeof parent, "%d", (int) getpid());
#define HELPER_ARGV(u, mode) \
        memcpy(argv, (char *[]) { (char *) helper, u, parent, "0", "64", "32", "0", "/usr/bin/env", mode, NULL }, \
               10 * sizeof(char *))

        HELPER_ARGV(nouid, "stem"); /* never root */
        status = helper_try(argv, "", 0, &e);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 127);
        assert_int_equal(e.tag, 'E');
        assert_int_equal(e.step, STEP_ARGS);
        assert_int_equal(e.error, EINVAL);

        HELPER_ARGV(uid, "later"); /* neither stem nor exec */
        status = helper_try(argv, "", 0, &e);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 127);
        assert_int_equal(e.step, STEP_ARGS);

        HELPER_ARGV(uid, "stem"); /* not needed after all */
        status = helper_try(argv, "", 0, &e);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_int_equal(e.tag, 0);

        status = helper_try(argv, bad_magic, sizeof bad_magic, &e);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 127);
        assert_int_equal(e.step, STEP_GO);
        assert_int_equal(e.error, EBADMSG);

        HELPER_ARGV(uid, "exec");
        argv[9] = "/usr/bin/env";
        argv[10] = NULL;
        status = helper_try(argv, NULL, 0, &e);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_int_equal(e.tag, 0);
#undef HELPER_ARGV
}

/* dtask-sandbox-stem gone while the worker runs (the package removed, or half upgraded): the
 * runs go on, the worker forks their children from then on. */
static void test_stem_helper_gone(void **state) {
        _cleanup_(sandbox_freep) Sandbox *two = NULL;
        _cleanup_free_ char *error = NULL;
        char dir[] = "/tmp/dtask-test-stem-XXXXXX", path[64], cmd[256];
        SandboxSettings s;
        SandboxResult res = {};

        if (!sandbox_stem_helper(sb)) {
                print_message("no dtask-sandbox-stem in this build (or DTASK_TEST_SANDBOX_FORK=1)\n");
                skip();
        }
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/" STEM_HELPER_NAME, dir);
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", sandbox_stem_helper(sb), path);
        assert_int_equal(system(cmd), 0);

        test_settings(&s);
        s.uid_min = TEST_UID_SINGLE + 16; /* two slots: the next run's child is started ahead */
        s.uid_max = TEST_UID_SINGLE + 17;
        s.stem_helper_path = path;
        if (sandbox_new(&s, &two, &error) < 0)
                fail_msg("%s", strna(error));
        assert_string_equal(sandbox_stem_helper(two), path);

        for (unsigned i = 0; i < 3; i++) {
                if (i == 1)
                        assert_int_equal(unlink(path), 0);
                run_full(two, LANGUAGE_PYTHON, "import sys\nprint(sys.stdin.read(), end='')\n", "still runs", 0, 0,
                         &res);
                assert_verdict(&res, SANDBOX_VERDICT_OK);
                assert_string_equal(res.stdout_data, "still runs");
                assert_clean(&res);
                sandbox_result_done(&res);
        }
        assert_null(sandbox_stem_helper(two));

        two = sandbox_free(two);
        assert_int_equal(rmdir(dir), 0);
}

/* When bubblewrap cannot set the sandbox up, the run is an internal error with bubblewrap's
 * reason, not the program's failure. */
static void test_bwrap_setup_failure(void **state) {
        _cleanup_(sandbox_freep) Sandbox *bad = NULL;
        _cleanup_free_ char *error = NULL;
        char dir[] = "/tmp/dtask-test-bwrap-XXXXXX", path[64];
        SandboxSettings s;
        SandboxResult res = {};

        /* a bubblewrap that is asked for a bind mount of something that does not exist */
        assert_non_null(mkdtemp(dir));
        assert_int_equal(chmod(dir, 0755), 0);
        snprintf(path, sizeof path, "%s/bwrap", dir);
        assert_int_equal(write_str(path,
                                   "#!/bin/sh\n"
                                   "[ \"$1\" = --version ] && exec /usr/bin/bwrap --version\n"
                                   "exec /usr/bin/bwrap --ro-bind /nonexistent-dtask-test /x \"$@\"\n",
                                   0755),
                         0);
        test_settings(&s);
        s.uid_min = s.uid_max = TEST_UID_SINGLE + 5;
        s.bwrap_path = path;
        if (sandbox_new(&s, &bad, &error) < 0)
                fail_msg("%s", strna(error));

        run_full(bad, LANGUAGE_PYTHON, "print(1)\n", NULL, 0, 0, &res);
        assert_int_equal(res.end, SANDBOX_END_FAILED);
        assert_verdict(&res, SANDBOX_VERDICT_INTERNAL_ERROR);
        assert_non_null(res.error_message);
        assert_non_null(strstr(res.error_message, "bubblewrap failed to set up the sandbox"));
        assert_non_null(strstr(res.error_message, "nonexistent-dtask-test"));
        assert_int_equal(processes_of(res.uid), 0);
        sandbox_result_done(&res);

        bad = sandbox_free(bad);
        assert_int_equal(unlink(path), 0);
        assert_int_equal(rmdir(dir), 0);
}

/* Files in /tmp, /dev/shm, the working directory and $HOME of one run are not there in the
 * next run in the same slot (same UID) — nor on the host. */
static void test_nothing_survives(void **state) {
        _cleanup_(sandbox_freep) Sandbox *one = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;
        SandboxResult res = {};
        char code[1024], nonce[33], path[128];
        uid_t uid;

        /* a single slot, so that the second run has the same UID for sure */
        test_settings(&s);
        s.uid_min = s.uid_max = TEST_UID_SINGLE;
        if (sandbox_new(&s, &one, &error) < 0)
                fail_msg("%s", strna(error));

        random_token(nonce);
        snprintf(code, sizeof code,
                 "import os\n"
                 "for p in ['/tmp/%1$s', '/dev/shm/%1$s', '/work/%1$s', os.path.expanduser('~/.%1$s'), '/dev/%1$s']:\n"
                 "    open(p, 'w').write('x')\n"
                 "os.mkfifo('/tmp/fifo-%1$s')\n"
                 "print('written', end='')\n",
                 nonce);
        run_full(one, LANGUAGE_PYTHON, code, NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "written");
        uid = res.uid;
        sandbox_result_done(&res);

        run_full(one, LANGUAGE_PYTHON,
                 "import os\n"
                 "print(sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/shm')), sorted(os.listdir('/work')),"
                 " sorted(x for x in os.listdir('/dev') if len(x) == 32), end='')\n",
                 NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_int_equal(res.uid, uid);
        assert_string_equal(res.stdout_data, "[] [] ['main.py'] []");
        assert_int_equal(processes_of(uid), 0);
        sandbox_result_done(&res);

        snprintf(path, sizeof path, "/tmp/%s", nonce);
        assert_int_equal(access(path, F_OK), -1);
        snprintf(path, sizeof path, "/dev/shm/%s", nonce);
        assert_int_equal(access(path, F_OK), -1);
}

static void test_py_infinite_output(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_PYTHON, "while True:\n    print('x' * 1000)\n", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OUTPUT_LIMIT);
        assert_int_equal(res.end, SANDBOX_END_OUTPUT_LIMIT);
        assert_true(res.output_truncated);
        assert_int_equal(res.stdout_size, 1024 * 1024); /* exactly the cap, kept */
        assert_int_equal(strlen(res.stdout_data), 1024 * 1024);
        assert_true(strneq(res.stdout_data, "xxxxxxxxxx", 10));
        assert_int_equal(res.exit_code, -1);
        assert_clean(&res);
        sandbox_result_done(&res);

        run(LANGUAGE_PYTHON, "import sys\nwhile True:\n    sys.stderr.write('e' * 1000)\n", NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OUTPUT_LIMIT);
        assert_true(res.output_truncated);
        assert_int_equal(res.stderr_size, 1024 * 1024);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_cs_infinite_output(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_CSHARP, CS("var s = new string('x', 1000); for (;;) Console.Write(s);"), NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OUTPUT_LIMIT);
        assert_true(res.output_truncated);
        assert_int_equal(res.stdout_size, 1024 * 1024);
        assert_clean(&res);
        sandbox_result_done(&res);
}

/* SIGTERM ignored, a double-forked setsid()ed grandchild, all sleeping forever. */
static const char py_stubborn[] =
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "        while True: time.sleep(1)\n"
        "    os._exit(0)\n"
        "print('started', flush=True)\n"
        "while True: time.sleep(1)\n";

static void check_deadline(Language lang, const char *code, usec_t ttl, usec_t max_runtime, SandboxEnd end) {
        SandboxResult res = {};
        usec_t start = now_usec(CLOCK_REALTIME), done, deadline;

        run_full(sb, lang, code, NULL, ttl, max_runtime, &res);
        done = now_usec(CLOCK_REALTIME);
        /* within 1 s of the deadline, everything is gone */
        assert_int_equal(processes_of(res.uid), 0);
        deadline = start + (ttl ?: max_runtime);
        print_message("%s: run ended %lld ms after its deadline (run %llu ms)\n", sandbox_end_to_string(end),
                      ((long long) done - (long long) deadline) / 1000, (unsigned long long) res.duration / 1000);
        assert_int_equal(res.end, end);
        assert_verdict(&res, SANDBOX_VERDICT_TIMEOUT);
        assert_int_equal(res.exit_code, -1);
        assert_true(done >= deadline);
        assert_true(done - deadline < SEC);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_py_ttl_deadline(void **state) {
        check_deadline(LANGUAGE_PYTHON, py_stubborn, 3 * SEC, 0, SANDBOX_END_EXPIRED);
}

static void test_py_max_runtime(void **state) {
        check_deadline(LANGUAGE_PYTHON, py_stubborn, 0, 3 * SEC, SANDBOX_END_TIMEOUT);
}

static void test_cs_ttl_deadline(void **state) {
        /* generous: the first build of this source takes its time on a busy machine */
        check_deadline(LANGUAGE_CSHARP,
                       CS("new Thread(() => Thread.Sleep(-1)).Start(); Console.WriteLine(\"started\"); Thread.Sleep(-1);"),
                       8 * SEC, 0, SANDBOX_END_EXPIRED);
}

static void test_cs_compile_deadline(void **state) {
        SandboxResult res = {};
        char code[256], nonce[33];

        /* the build is under the deadline, too (and in its own cgroup: nothing left) */
        random_token(nonce);
        snprintf(code, sizeof code, CS("/* %s */ Console.Write(1);"), nonce);
        run_full(sb, LANGUAGE_CSHARP, code, NULL, 100 * MSEC, 0, &res);
        assert_int_equal(res.end, SANDBOX_END_EXPIRED);
        assert_true(res.compiled);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_py_daemon_left_behind(void **state) {
        SandboxResult res = {};

        /* the program exits 0 but leaves a daemon: killed with the run */
        run(LANGUAGE_PYTHON,
            "import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(1000)\n"
            "    os._exit(0)\n"
            "print('bye', end='')\n",
            NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_string_equal(res.stdout_data, "bye");
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_expired_before_start(void **state) {
        SandboxResult res = {};
        SandboxRequest req = {
                .language = LANGUAGE_PYTHON,
                .code = "print(1)",
                .code_size = 8,
                .ttl_deadline = now_usec(CLOCK_REALTIME) - SEC,
        };

        assert_int_equal(sandbox_run_sync(sb, &req, &res), 0);
        assert_int_equal(res.end, SANDBOX_END_EXPIRED);
        assert_false(res.compiled);
        assert_string_equal(res.stdout_data, "");
        assert_true(res.duration < 500 * MSEC);
        assert_clean(&res);
        sandbox_result_done(&res);
}

typedef struct AsyncRun {
        SandboxRun *run;
        SandboxResult result;
        bool done;
        usec_t done_time, kill_time;
        const char *token;
} AsyncRun;

static void on_async_done(SandboxRun *r, SandboxResult *result, void *userdata) {
        AsyncRun *a = userdata;

        a->result = *result;
        *result = (SandboxResult) {};
        a->done = true;
        a->done_time = now_usec(CLOCK_MONOTONIC);
}

static int on_cancel_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        AsyncRun *a = userdata;

        a->kill_time = now_usec(CLOCK_MONOTONIC);
        assert_int_equal(sandbox_run_kill(a->run, SANDBOX_END_CANCELLED), 0);
        assert_int_equal(sandbox_run_kill(a->run, SANDBOX_END_EXPIRED), 0); /* the first reason wins */
        return 0;
}

static void test_cancel(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;
        AsyncRun a = {};
        SandboxRequest req = {
                .language = LANGUAGE_PYTHON,
                .code = py_stubborn,
                .code_size = strlen(py_stubborn),
                .ttl_deadline = USEC_INFINITY,
        };

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(sandbox_start(sb, e, &req, on_async_done, &a, &a.run), 0);
        assert_int_equal(sd_event_add_time_relative(e, &t, CLOCK_MONOTONIC, 2 * SEC, 1, on_cancel_timer, &a), 0);
        while (!a.done)
                assert_true(sd_event_run(e, UINT64_MAX) >= 0);
        assert_int_equal(processes_of(a.result.uid), 0);
        print_message("cancel: done %llu ms after the kill\n", (unsigned long long) (a.done_time - a.kill_time) / 1000);
        assert_true(a.done_time - a.kill_time < SEC);
        assert_int_equal(a.result.end, SANDBOX_END_CANCELLED);
        assert_verdict(&a.result, SANDBOX_VERDICT_CANCELLED);
        assert_string_equal(a.result.stdout_data, "started\n");
        assert_int_equal(sandbox_run_kill(a.run, SANDBOX_END_CANCELLED), -ESRCH);
        assert_clean(&a.result);
        sandbox_result_done(&a.result);
        sandbox_run_free(a.run);
}

static void test_free_running(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        AsyncRun a = {};
        SandboxRequest req = {
                .language = LANGUAGE_PYTHON,
                .code = py_stubborn,
                .code_size = strlen(py_stubborn),
                .ttl_deadline = USEC_INFINITY,
        };
        uid_t uid;
        char path[128];

        /* shutdown: a run freed while going is killed and cleaned up, without callback */
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(sandbox_start(sb, e, &req, on_async_done, &a, &a.run), 0);
        uid = sandbox_run_uid(a.run);
        for (usec_t t = now_usec(CLOCK_MONOTONIC); now_usec(CLOCK_MONOTONIC) - t < SEC;)
                assert_true(sd_event_run(e, 100 * MSEC) >= 0);
        assert_true(processes_of(uid) > 0);
        sandbox_run_free(a.run);
        assert_false(a.done);
        assert_int_equal(processes_of(uid), 0);
        snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u", (unsigned) uid);
        assert_int_equal(access(path, F_OK), -1);
        assert_slot_cgroup_empty(uid);
}

/* What a crashed worker left in a free slot of the range — its working directory, a tmpfs
 * with a file on it, and the slot's cgroup with a process in it — is cleaned up when a sandbox
 * starts, also in a slot it would not use: it keeps the slots it uses rather than coming round
 * to every slot of the range. */
static void test_slot_sweep(void **state) {
        _cleanup_(sandbox_freep) Sandbox *two = NULL;
        _cleanup_free_ char *error = NULL, *root = NULL;
        SandboxSettings s;
        char dir[512], path[600], workdir[128];
        int status;
        uid_t uid;
        pid_t pid;

        test_settings(&s);
        s.uid_min = TEST_UID_SINGLE + 8;
        s.uid_max = TEST_UID_SINGLE + 9;
        uid = s.uid_max;
        if (sandbox_new(&s, &two, &error) < 0)
                fail_msg("%s", strna(error));
        root = strdup(sandbox_cgroup_root(two));
        assert_non_null(root);
        two = sandbox_free(two);

        snprintf(workdir, sizeof workdir, RUNTIME_DIR "/slot-%u", (unsigned) uid);
        assert_int_equal(mkdir(workdir, 0700), 0);
        assert_int_equal(mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m"), 0);
        snprintf(path, sizeof path, "%s/left", workdir);
        assert_int_equal(write_str(path, "x", 0600), 0);

        snprintf(dir, sizeof dir, "%s/slot-%u", root, (unsigned) uid);
        assert_int_equal(mkdir(dir, 0755), 0);
        snprintf(path, sizeof path, "%s/cgroup.procs", dir);
        pid = plant_in_cgroup(path);

        if (sandbox_new(&s, &two, &error) < 0)
                fail_msg("%s", strna(error));
        if (waitpid(pid, &status, WNOHANG) != pid) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                fail_msg("the process in the leftover cgroup was not killed");
        }
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        assert_int_equal(access(dir, F_OK), -1);
        assert_int_equal(access(workdir, F_OK), -1);
        assert_false(slot_locked(uid));
}

typedef struct Planted {
        uid_t uid;
        bool mounted;
} Planted;

static int on_plant_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Planted *p = userdata;
        char path[128];

        /* once the program runs: something over its working directory that the run's clean-up
         * cannot remove (the program itself could not mount anything there) */
        snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u/started", (unsigned) p->uid);
        if (access(path, F_OK) < 0) {
                assert_int_equal(sd_event_source_set_time_relative(s, 5 * MSEC), 0);
                assert_int_equal(sd_event_source_set_enabled(s, SD_EVENT_ONESHOT), 0);
                return 0;
        }
        snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u", (unsigned) p->uid);
        assert_int_equal(mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m"), 0);
        p->mounted = true;
        return 0;
}

/* A slot whose run did not end clean is not kept: it goes back to the range, and is cleaned up
 * in full before its next run — here its working directory could not be removed, and a
 * process of its UID is around (as only a full clean-up would find). */
static void test_slot_unclean_not_kept(void **state) {
        _cleanup_(sandbox_freep) Sandbox *one = NULL;
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;
        _cleanup_free_ char *error = NULL;
        static const char code[] = "import time\nopen('started', 'w')\ntime.sleep(0.5)\nprint(1, end='')\n";
        SandboxRequest req = {
                .language = LANGUAGE_PYTHON,
                .code = code,
                .code_size = strlen(code),
                .ttl_deadline = USEC_INFINITY,
        };
        SandboxSettings s;
        SandboxResult res = {};
        AsyncRun a = {};
        Planted planted = {};
        _cleanup_close_ int pidfd = -EBADF;
        int p[2], exited;
        char c, path[128];
        pid_t pid;

        test_settings(&s);
        s.uid_min = s.uid_max = TEST_UID_SINGLE + 7;
        if (sandbox_new(&s, &one, &error) < 0)
                fail_msg("%s", strna(error));
        planted.uid = s.uid_min;

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(sandbox_start(one, e, &req, on_async_done, &a, &a.run), 0);
        assert_int_equal(sd_event_add_time_relative(e, &t, CLOCK_MONOTONIC, 5 * MSEC, 1, on_plant_timer, &planted), 0);
        while (!a.done)
                assert_true(sd_event_run(e, UINT64_MAX) >= 0);
        assert_true(planted.mounted);
        assert_verdict(&a.result, SANDBOX_VERDICT_OK);
        snprintf(path, sizeof path, RUNTIME_DIR "/slot-%u", (unsigned) planted.uid);
        assert_int_equal(access(path, F_OK), 0); /* left behind */
        sandbox_result_done(&a.result);
        a.run = sandbox_run_free(a.run);
        assert_false(slot_locked(planted.uid));

        /* a process of the slot's UID, outside its cgroup */
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (setgroups(0, NULL) < 0 || setresgid(planted.uid, planted.uid, planted.uid) < 0 ||
                    setresuid(planted.uid, planted.uid, planted.uid) < 0)
                        _exit(1);
                (void) !write(p[1], "x", 1);
                for (;;)
                        pause();
        }
        close(p[1]);
        assert_int_equal(read(p[0], &c, 1), 1);
        close(p[0]);
        /* the sandbox reaps it when it dies (a child of ours with a slot UID): watch its pidfd */
        pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
        assert_true(pidfd >= 0);

        run_full(one, LANGUAGE_PYTHON, "import os\nprint(sorted(os.listdir('/work')), end='')\n", NULL, 0, 0, &res);
        exited = poll(&(struct pollfd) { .fd = pidfd, .events = POLLIN }, 1, 0);
        if (exited != 1) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
        }
        assert_int_equal(exited, 1);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        assert_int_equal(res.uid, planted.uid);
        assert_string_equal(res.stdout_data, "['main.py']");
        assert_clean(&res);
        sandbox_result_done(&res);
}

typedef struct Victims {
        char base[64];
        char file[128];
        char dir[128];
        char inner[192];
} Victims;

static void victims_make(Victims *v) {
        strcpy(v->base, "/tmp/dtask-test-victims-XXXXXX");
        assert_non_null(mkdtemp(v->base));
        assert_int_equal(chmod(v->base, 0755), 0);
        snprintf(v->file, sizeof v->file, "%s/file", v->base);
        snprintf(v->dir, sizeof v->dir, "%s/dir", v->base);
        snprintf(v->inner, sizeof v->inner, "%s/dir/inner", v->base);
        assert_int_equal(write_str(v->file, "precious", 0644), 0);
        assert_int_equal(mkdir(v->dir, 0755), 0);
        assert_int_equal(write_str(v->inner, "also precious", 0644), 0);
}

static void victims_check_and_remove(Victims *v) {
        char *s;

        s = read_str(v->file);
        assert_non_null(s);
        assert_string_equal(s, "precious");
        s = read_str(v->inner);
        assert_non_null(s);
        assert_string_equal(s, "also precious");
        assert_int_equal(unlink(v->inner), 0);
        assert_int_equal(rmdir(v->dir), 0);
        assert_int_equal(unlink(v->file), 0);
        assert_int_equal(rmdir(v->base), 0);
}

static void test_py_symlinks_planted(void **state) {
        _cleanup_(sandbox_freep) Sandbox *plain = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;
        Victims v;
        char code[1024];

        /* both kinds of working directories: tmpfs (unmounted after) and plain (emptied by a
         * walk that must not follow anything) */
        test_settings(&s);
        s.workdir_tmpfs = false;
        if (sandbox_new(&s, &plain, &error) < 0)
                fail_msg("%s", strna(error));

        victims_make(&v);
        snprintf(code, sizeof code,
                 "import os\n"
                 "os.symlink('%1$s', 'main.exe')\n"
                 "os.symlink('%2$s', 'victimdir')\n"
                 "os.symlink('/etc/passwd', 'passwd')\n"
                 "os.symlink('..', 'up')\n"
                 "os.makedirs('a/b/c')\n"
                 "os.symlink('%2$s', 'a/b/c/deep')\n"
                 "os.symlink('%1$s', 'a/b/file')\n"
                 "os.mkfifo('fifo')\n"
                 "print(sorted(os.listdir('.')), end='')\n",
                 v.file, v.dir);
        for (int i = 0; i < 2; i++) {
                SandboxResult res = {};

                run_full(i == 0 ? sb : plain, LANGUAGE_PYTHON, code, NULL, 0, 0, &res);
                assert_verdict(&res, SANDBOX_VERDICT_OK);
                assert_string_equal(res.stdout_data, "['a', 'fifo', 'main.exe', 'main.py', 'passwd', 'up', 'victimdir']");
                assert_clean(&res);
                sandbox_result_done(&res);
        }
        victims_check_and_remove(&v);
}

/* The build output is the one thing the worker reads back from a working directory. A
 * "compiler" (python3 running the source) plants main.exe as a symlink to a host file, or as
 * a fifo: the worker must neither read through it nor hang, nor cache anything. */
static void test_build_output_planted(void **state) {
        _cleanup_(sandbox_freep) Sandbox *fake = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;
        Victims v;
        char code[512];
        unsigned before;

        test_settings(&s);
        s.cache_dir = cache_base;
        s.runners.mcs_path = "/usr/bin/python3"; /* runs "python3 main.cs -out:main.exe …" */
        if (sandbox_new(&s, &fake, &error) < 0)
                fail_msg("%s", strna(error));

        victims_make(&v);
        before = count_cache_files(NULL, 0, NULL);
        for (size_t i = 0; i < 4; i++) {
                SandboxResult res = {};

                if (i == 0)
                        snprintf(code, sizeof code, "import os\nos.symlink('%s', 'main.exe')\n", v.file);
                else if (i == 1)
                        snprintf(code, sizeof code, "import os\nos.mkfifo('main.exe')\n");
                else if (i == 2)
                        snprintf(code, sizeof code, "import os\nos.mkdir('main.exe')\n");
                else /* a hard link to a symlink */
                        snprintf(code, sizeof code,
                                 "import os\nos.symlink('%s', 'x'); os.link('x', 'main.exe', follow_symlinks=False)\n",
                                 v.file);
                run_full(fake, LANGUAGE_CSHARP, code, NULL, 0, 0, &res);
                assert_verdict(&res, SANDBOX_VERDICT_COMPILE_ERROR);
                assert_true(res.compiled);
                assert_non_null(strstr(res.stderr_data, "build output main.exe"));
                assert_null(strstr(res.stderr_data, "precious"));
                print_message("%s", res.stderr_data);
                assert_clean(&res);
                sandbox_result_done(&res);
        }
        assert_int_equal(count_cache_files(NULL, 0, NULL), before);
        victims_check_and_remove(&v);
}

#define N_CONCURRENT 16

static void test_concurrent_isolation(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        AsyncRun a[N_CONCURRENT] = {};
        char tokens[N_CONCURRENT][33];
        static const char code[] =
                "import os, sys, time, json\n"
                "tok = sys.stdin.read()\n"
                "open('/tmp/' + tok, 'w').write(tok)\n"
                "open(tok, 'w').write(tok)\n"
                "time.sleep(3)\n"
                "procs = []\n"
                "for p in os.listdir('/proc'):\n"
                "    if p.isdigit():\n"
                "        try: procs.append(open('/proc/%s/cmdline' % p, 'rb').read().replace(b'\\0', b' ').decode())\n"
                "        except Exception: pass\n"
                "print(json.dumps({'tmp': sorted(os.listdir('/tmp')), 'work': sorted(os.listdir('.')),\n"
                "                  'shm': os.listdir('/dev/shm'), 'procs': procs}))\n";
        usec_t t0;
        unsigned done = 0;

        assert_int_equal(sd_event_new(&e), 0);
        t0 = now_usec(CLOCK_MONOTONIC);
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                SandboxRequest req = {
                        .language = LANGUAGE_PYTHON,
                        .code = code,
                        .code_size = strlen(code),
                        .ttl_deadline = USEC_INFINITY,
                };
                random_token(tokens[i]);
                req.stdin_data = tokens[i];
                req.stdin_size = 32;
                a[i].token = tokens[i];
                assert_int_equal(sandbox_start(sb, e, &req, on_async_done, &a[i], &a[i].run), 0);
        }
        while (done < N_CONCURRENT) {
                assert_true(sd_event_run(e, UINT64_MAX) >= 0);
                done = 0;
                for (size_t i = 0; i < N_CONCURRENT; i++)
                        done += a[i].done;
        }
        print_message("%d concurrent runs took %llu ms\n", N_CONCURRENT,
                      (unsigned long long) (now_usec(CLOCK_MONOTONIC) - t0) / 1000);
        /* each slept 3 s: they overlapped */
        assert_true(now_usec(CLOCK_MONOTONIC) - t0 < N_CONCURRENT * 3 * SEC / 2);

        for (size_t i = 0; i < N_CONCURRENT; i++) {
                _cleanup_json_ json_object *j = NULL;
                json_object *tmp, *work, *procs, *shm;
                const char *out = a[i].result.stdout_data;

                assert_verdict(&a[i].result, SANDBOX_VERDICT_OK);
                for (size_t k = 0; k < i; k++)
                        assert_int_not_equal(a[i].result.uid, a[k].result.uid);
                for (size_t k = 0; k < N_CONCURRENT; k++)
                        if (k != i)
                                assert_null(strstr(out, tokens[k]));

                j = json_tokener_parse(out);
                assert_non_null(j);
                assert_true(json_object_object_get_ex(j, "tmp", &tmp));
                assert_int_equal(json_object_array_length(tmp), 1);
                assert_string_equal(json_object_get_string(json_object_array_get_idx(tmp, 0)), tokens[i]);
                assert_true(json_object_object_get_ex(j, "work", &work));
                assert_int_equal(json_object_array_length(work), 2);
                assert_true(json_object_object_get_ex(j, "shm", &shm));
                assert_int_equal(json_object_array_length(shm), 0);
                assert_true(json_object_object_get_ex(j, "procs", &procs));
                /* bubblewrap's init and the program: nobody else's processes */
                assert_true(json_object_array_length(procs) <= 2);
                for (size_t k = 0; k < json_object_array_length(procs); k++) {
                        const char *c = json_object_get_string(json_object_array_get_idx(procs, k));
                        assert_true(strstr(c, "bwrap") || strstr(c, "main.py"));
                }
                assert_clean(&a[i].result);
                sandbox_result_done(&a[i].result);
                sandbox_run_free(a[i].run);
        }
}

static void test_py_privileges(void **state) {
        SandboxResult res = {};

        run(LANGUAGE_PYTHON,
            "import os, subprocess\n"
            "st = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "print('uid', os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n"
            "print('caps', st['CapEff'].strip(), st['CapPrm'].strip(), st['CapBnd'].strip())\n"
            "print('nnp', st['NoNewPrivs'].strip())\n"
            "r = subprocess.run(['unshare', '-Ur', 'true'], capture_output=True)\n"
            "print('userns', r.returncode)\n"
            "r = subprocess.run(['unshare', '-n', 'true'], capture_output=True)\n"
            "print('netns', r.returncode)\n"
            "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
            "print('hostname', os.uname().nodename)\n",
            NULL, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        print_message("%s", res.stdout_data);
        {
                char want[64];
                snprintf(want, sizeof want, "uid %u %u %u []\n", (unsigned) res.uid, (unsigned) res.uid,
                         (unsigned) res.uid);
                assert_non_null(strstr(res.stdout_data, want));
        }
        assert_non_null(strstr(res.stdout_data, "caps 0000000000000000 0000000000000000 0000000000000000\n"));
        assert_non_null(strstr(res.stdout_data, "nnp 1\n"));
        assert_null(strstr(res.stdout_data, "userns 0\n")); /* no nested user namespaces */
        assert_null(strstr(res.stdout_data, "netns 0\n"));
        assert_non_null(strstr(res.stdout_data, "hostname sandbox\n"));
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_py_cpu_quota(void **state) {
        _cleanup_(sandbox_freep) Sandbox *slow = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;
        SandboxResult res = {};

        /* 2 % of a CPU: even on a busy machine a spinning process would get more than that */
        test_settings(&s);
        s.cpu_quota_percent = 2;
        if (sandbox_new(&s, &slow, &error) < 0)
                fail_msg("%s", strna(error));
        run_full(slow, LANGUAGE_PYTHON,
                 "import time\n"
                 "t = time.monotonic()\n"
                 "while time.monotonic() - t < 2: pass\n",
                 NULL, 0, 0, &res);
        assert_verdict(&res, SANDBOX_VERDICT_OK);
        print_message("cpu %llu ms in %llu ms\n", (unsigned long long) res.cpu_usec / 1000,
                      (unsigned long long) res.duration / 1000);
        if (res.cpu_usec == 0)
                skip(); /* the kernel does not tell (no cpuacct) */
        assert_true(res.cpu_usec < res.duration * 4 / 100);
        assert_clean(&res);
        sandbox_result_done(&res);
}

static void test_settings_from_config(void **state) {
        char *const env[] = {
                (char *) "SANDBOX_MEMORY_MAX=128M", (char *) "SANDBOX_PIDS_MAX=32", (char *) "SANDBOX_CPU_QUOTA=50",
                (char *) "SANDBOX_UID_MIN=62000", (char *) "SANDBOX_UID_MAX=62015", (char *) "SANDBOX_OUTPUT_MAX=64K",
                (char *) "SANDBOX_MAX_RUNTIME=90s", (char *) "SANDBOX_CGROUP_ROOT=/dtask-x", (char *) "MCS_PATH=/usr/bin/mcs",
                (char *) "CACHE_DIRECTORY=/var/cache/x", NULL
        };
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;

        assert_int_equal(config_load_from(&c, NULL, false, NULL, NULL, env, &error), 0);
        assert_int_equal(sandbox_settings_from_config(&s, c), 0);
        assert_int_equal(s.memory_max, 128 * 1024 * 1024);
        assert_int_equal(s.pids_max, 32);
        assert_int_equal(s.cpu_quota_percent, 50);
        assert_int_equal(s.uid_min, 62000);
        assert_int_equal(s.uid_max, 62015);
        assert_int_equal(s.output_max, 64 * 1024);
        assert_int_equal(s.max_runtime, 90 * SEC);
        assert_int_equal(s.file_size_max, 16 * 1024 * 1024); /* default */
        assert_string_equal(s.cgroup_root, "/dtask-x");
        assert_string_equal(s.cache_dir, "/var/cache/x");
        assert_string_equal(s.runners.python_path, "/usr/bin/python3");
        assert_string_equal(s.runners.csharp_toolchain, "mono");
        assert_true(s.workdir_tmpfs);
}

static void test_settings_refused(void **state) {
        SandboxSettings s;
        Sandbox *x = NULL;
        char *error = NULL;

        sandbox_settings_init(&s);
        s.uid_min = 0;
        assert_int_equal(sandbox_new(&s, &x, &error), -EINVAL);
        error = mfree(error);

        /* UIDs that belong to accounts (daemon, bin… on Debian) */
        sandbox_settings_init(&s);
        s.uid_min = 1;
        s.uid_max = 100;
        assert_int_equal(sandbox_new(&s, &x, &error), -EADDRINUSE);
        print_message("%s\n", error);
        error = mfree(error);

        sandbox_settings_init(&s);
        s.runners.csharp_toolchain = "dotnet";
        s.runners.dotnet_path = "/usr/bin/dtask-no-such-dotnet";
        assert_true(sandbox_new(&s, &x, &error) < 0);
        print_message("%s\n", error);
        assert_non_null(strstr(error, "DOTNET_PATH"));
        error = mfree(error);

        sandbox_settings_init(&s);
        s.stem_helper_path = "/usr/bin/dtask-no-such-stem";
        assert_int_equal(sandbox_new(&s, &x, &error), -ENOENT);
        assert_non_null(strstr(error, "/usr/bin/dtask-no-such-stem"));
        error = mfree(error);

        sandbox_settings_init(&s);
        s.runners.csharp_toolchain = "java";
        assert_int_equal(sandbox_new(&s, &x, &error), -EINVAL);
        assert_non_null(strstr(error, "CSHARP_TOOLCHAIN"));
        error = mfree(error);

        sandbox_settings_init(&s);
        s.runners.python_path = "/opt/python3";
        assert_int_equal(sandbox_new(&s, &x, &error), -EINVAL);
        assert_non_null(strstr(error, "/usr/"));
        error = mfree(error);

        sandbox_settings_init(&s);
        s.cgroup_root = "../x";
        assert_int_equal(sandbox_new(&s, &x, &error), -EINVAL);
        error = mfree(error);
        assert_null(x);
}

/* ---------------------------------------------------------------------------------------- */

static int pick_uid_range(void) {
        (void) mkdir(RUNTIME_DIR, 0711);
        for (unsigned k = 0; k < 16; k++) {
                char p[128];
                int fd;

                snprintf(p, sizeof p, RUNTIME_DIR "/test-range-%u.lock", k);
                fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
                if (fd < 0)
                        return -errno;
                if (flock(fd, LOCK_EX | LOCK_NB) >= 0) {
                        test_uid_base = 62000 + 100 * k; /* the fd stays open: ours until we exit */
                        return 0;
                }
                close(fd);
        }
        return -EBUSY;
}

static int setup(void **state) {
        _cleanup_free_ char *error = NULL;
        SandboxSettings s;

        if (pick_uid_range() < 0) {
                print_message("no free UID range for the test\n");
                return -1;
        }

        strcpy(cache_base, "/tmp/test-sandbox-cache-XXXXXX");
        assert_non_null(mkdtemp(cache_base));
        plant_secrets();

        test_settings(&s);
        s.cache_dir = cache_base;
        s.max_runtime = 120 * SEC; /* a backstop only; the tests bring their own deadlines */
        if (sandbox_new(&s, &sb, &error) < 0) {
                print_message("sandbox_new: %s\n", strna(error));
                return -1;
        }
        print_message("cgroup %s, runs under %s\n", sandbox_cgroup_mode(sb), sandbox_cgroup_root(sb));
        return 0;
}

static int teardown(void **state) {
        char path[128];

        sb = sandbox_free(sb);
        remove_secrets();
        snprintf(path, sizeof path, "rm -rf -- '%s'", cache_base);
        (void) !system(path);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_py_stdin_len),
                cmocka_unit_test(test_py_print),
                cmocka_unit_test(test_py_zero_division),
                cmocka_unit_test(test_py_big_stdin),
                cmocka_unit_test(test_cs_stdin),
                cmocka_unit_test(test_cs_write),
                cmocka_unit_test(test_cs_throw),
                cmocka_unit_test(test_cs_syntax_error),
                cmocka_unit_test(test_cs_cache),
                cmocka_unit_test(test_py_fork_bomb),
                cmocka_unit_test(test_cs_thread_bomb),
                cmocka_unit_test(test_py_memory_bomb),
                cmocka_unit_test(test_cs_memory_bomb),
                cmocka_unit_test(test_py_network),
                cmocka_unit_test(test_cs_network),
                cmocka_unit_test(test_py_secrets),
                cmocka_unit_test(test_cs_secrets),
                cmocka_unit_test(test_py_write_outside),
                cmocka_unit_test(test_cs_write_outside),
                cmocka_unit_test(test_nothing_survives),
                cmocka_unit_test(test_verdicts_per_run),
                cmocka_unit_test(test_slot_cgroup_leftover),
                cmocka_unit_test(test_slot_reused),
                cmocka_unit_test(test_slot_unclean_not_kept),
                cmocka_unit_test(test_slot_sweep),
                cmocka_unit_test(test_prepared_child),
                cmocka_unit_test(test_warm),
                cmocka_unit_test(test_warm_last_slot),
                cmocka_unit_test(test_py_no_fds_leaked),
                cmocka_unit_test(test_bwrap_setup_failure),
                cmocka_unit_test(test_stem_helper),
                cmocka_unit_test(test_stem_helper_gone),
                cmocka_unit_test(test_py_infinite_output),
                cmocka_unit_test(test_cs_infinite_output),
                cmocka_unit_test(test_py_ttl_deadline),
                cmocka_unit_test(test_py_max_runtime),
                cmocka_unit_test(test_cs_ttl_deadline),
                cmocka_unit_test(test_cs_compile_deadline),
                cmocka_unit_test(test_py_daemon_left_behind),
                cmocka_unit_test(test_expired_before_start),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_free_running),
                cmocka_unit_test(test_py_symlinks_planted),
                cmocka_unit_test(test_build_output_planted),
                cmocka_unit_test(test_concurrent_isolation),
                cmocka_unit_test(test_py_privileges),
                cmocka_unit_test(test_py_cpu_quota),
                cmocka_unit_test(test_settings_from_config),
                cmocka_unit_test(test_settings_refused),
        };

        log_set_max_level_from_string(getenv("DTASK_LOG_LEVEL") ?: "warning");
        if (geteuid() != 0) {
                fprintf(stderr, "Skipping: the sandbox needs root\n");
                return 77;
        }
        if (access("/usr/bin/bwrap", X_OK) < 0) {
                fprintf(stderr, "Skipping: no bubblewrap\n");
                return 77;
        }
        for (const char *const *c = (const char *const[]) { "memory", "pids", "cpu", NULL }; *c; c++) {
                char p[64];
                snprintf(p, sizeof p, "/sys/fs/cgroup/%s", *c);
                if (access(p, F_OK) < 0 && access("/sys/fs/cgroup/cgroup.controllers", F_OK) < 0) {
                        fprintf(stderr, "Skipping: no cgroup controller %s\n", *c);
                        return 77;
                }
        }
        if (sodium_init() < 0)
                return EXIT_FAILURE;
        if (getenv("DTASK_TEST_FILTER")) /* e.g. DTASK_TEST_FILTER='test_cs_*' */
                cmocka_set_test_filter(getenv("DTASK_TEST_FILTER"));

        return cmocka_run_group_tests(tests, setup, teardown);
}
