/* SPDX-License-Identifier: MIT */
/* dtask-sandbox-run: one program through the sandbox, the result as JSON on stdout. For tests
 * and benchmarks; not installed. Needs root, like the worker. */
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "config.h"
#include "json-util.h"
#include "log.h"
#include "sandbox.h"
#include "time-util.h"

static int read_file(const char *path, char **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t n = 0, allocated = 0;

        fd = streq(path, "-") ? dup(STDIN_FILENO) : open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        for (;;) {
                if (allocated - n < 65536) {
                        allocated = MAX(allocated * 2, (size_t) 131072);
                        char *p = realloc(buf, allocated);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
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
        *ret_size = n;
        return 0;
}

static int parse_size(const char *name, const char *value, uint64_t *ret) {
        const ConfigKey key = { .name = name, .type = CONFIG_SIZE };
        _cleanup_free_ char *error = NULL;
        int r;

        r = config_parse_value(&key, value, ret, &error);
        if (r < 0)
                log_error("--%s=%s: %s", name, value, strna(error));
        return r;
}

static void help(void) {
        printf("dtask-sandbox-run --language=python|csharp --code-file=FILE [OPTIONS]\n\n"
               "Runs one program in the dtask sandbox and prints the result as JSON.\n\n"
               "  --stdin-file=FILE       program input (default: none)\n"
               "  --timeout=DURATION      the worker's max run time (default: 30s)\n"
               "  --ttl=DURATION          TTL deadline, relative to now (default: none)\n"
               "  --memory=SIZE           memory limit (default 256M)\n"
               "  --pids=N                pids limit (default 64)\n"
               "  --cpu=PERCENT           CPU quota (default 100)\n"
               "  --output-max=SIZE       cap of stdout and stderr each (default 1M)\n"
               "  --uid-min=UID --uid-max=UID   slot range (default 61000-61999)\n"
               "  --cache-dir=DIR         C# build cache (default: none)\n"
               "  --runtime-dir=DIR       slot locks and working directories\n"
               "  --cgroup-root=PATH      cgroup path for runs\n"
               "  --no-tmpfs              plain working directories instead of tmpfs\n"
               "  --config=FILE           take the limits from a dtask.conf\n");
}

int main(int argc, char *argv[]) {
        enum {
                ARG_LANGUAGE = 0x100, ARG_CODE_FILE, ARG_STDIN_FILE, ARG_TIMEOUT, ARG_TTL, ARG_MEMORY, ARG_PIDS,
                ARG_CPU, ARG_OUTPUT_MAX, ARG_UID_MIN, ARG_UID_MAX, ARG_CACHE_DIR, ARG_RUNTIME_DIR,
                ARG_CGROUP_ROOT, ARG_NO_TMPFS, ARG_CONFIG,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "language", required_argument, NULL, ARG_LANGUAGE },
                { "code-file", required_argument, NULL, ARG_CODE_FILE },
                { "stdin-file", required_argument, NULL, ARG_STDIN_FILE },
                { "timeout", required_argument, NULL, ARG_TIMEOUT },
                { "ttl", required_argument, NULL, ARG_TTL },
                { "memory", required_argument, NULL, ARG_MEMORY },
                { "pids", required_argument, NULL, ARG_PIDS },
                { "cpu", required_argument, NULL, ARG_CPU },
                { "output-max", required_argument, NULL, ARG_OUTPUT_MAX },
                { "uid-min", required_argument, NULL, ARG_UID_MIN },
                { "uid-max", required_argument, NULL, ARG_UID_MAX },
                { "cache-dir", required_argument, NULL, ARG_CACHE_DIR },
                { "runtime-dir", required_argument, NULL, ARG_RUNTIME_DIR },
                { "cgroup-root", required_argument, NULL, ARG_CGROUP_ROOT },
                { "no-tmpfs", no_argument, NULL, ARG_NO_TMPFS },
                { "config", required_argument, NULL, ARG_CONFIG },
                {}
        };
        _cleanup_(config_freep) Config *config = NULL;
        _cleanup_(sandbox_freep) Sandbox *sb = NULL;
        _cleanup_free_ char *code = NULL, *input = NULL, *error = NULL;
        _cleanup_json_ json_object *j = NULL;
        const char *code_file = NULL, *stdin_file = NULL, *config_file = NULL;
        SandboxSettings s;
        SandboxRequest req = { .language = _LANGUAGE_INVALID, .ttl_deadline = USEC_INFINITY };
        SandboxResult res = {};
        usec_t timeout = 30 * USEC_PER_SEC, ttl = USEC_INFINITY;
        uint64_t v;
        int c, r;

        log_set_ident("dtask-sandbox-run");
        (void) log_set_max_level_from_string(getenv("DTASK_LOG_LEVEL") ?: "warning");

        /* first pass: --config, whose values the other options override */
        for (int i = 1; i < argc; i++)
                if (strneq(argv[i], "--config=", 9))
                        config_file = argv[i] + 9;
        sandbox_settings_init(&s);
        if (config_file) {
                r = config_load(&config, config_file, &error);
                if (r < 0) {
                        log_error("%s", strna(error));
                        return EXIT_FAILURE;
                }
                (void) sandbox_settings_from_config(&s, config);
        }

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return EXIT_SUCCESS;
                case ARG_LANGUAGE:
                        req.language = language_from_string(optarg);
                        if (req.language < 0) {
                                log_error("Unknown language: %s", optarg);
                                return EXIT_FAILURE;
                        }
                        break;
                case ARG_CODE_FILE:
                        code_file = optarg;
                        break;
                case ARG_STDIN_FILE:
                        stdin_file = optarg;
                        break;
                case ARG_TIMEOUT:
                case ARG_TTL:
                        if (duration_parse(optarg, c == ARG_TIMEOUT ? &timeout : &ttl) < 0) {
                                log_error("Invalid duration: %s", optarg);
                                return EXIT_FAILURE;
                        }
                        break;
                case ARG_MEMORY:
                        if (parse_size("memory", optarg, &s.memory_max) < 0)
                                return EXIT_FAILURE;
                        break;
                case ARG_OUTPUT_MAX:
                        if (parse_size("output-max", optarg, &s.output_max) < 0)
                                return EXIT_FAILURE;
                        break;
                case ARG_PIDS:
                case ARG_CPU:
                case ARG_UID_MIN:
                case ARG_UID_MAX: {
                        char *end;
                        errno = 0;
                        v = strtoull(optarg, &end, 10);
                        if (errno != 0 || *end || end == optarg || v > UINT32_MAX) {
                                log_error("Invalid number: %s", optarg);
                                return EXIT_FAILURE;
                        }
                        if (c == ARG_PIDS)
                                s.pids_max = v;
                        else if (c == ARG_CPU)
                                s.cpu_quota_percent = v;
                        else if (c == ARG_UID_MIN)
                                s.uid_min = (uid_t) v;
                        else
                                s.uid_max = (uid_t) v;
                        break;
                }
                case ARG_CACHE_DIR:
                        s.cache_dir = optarg;
                        break;
                case ARG_RUNTIME_DIR:
                        s.runtime_dir = optarg;
                        break;
                case ARG_CGROUP_ROOT:
                        s.cgroup_root = optarg;
                        break;
                case ARG_NO_TMPFS:
                        s.workdir_tmpfs = false;
                        break;
                case ARG_CONFIG:
                        break;
                default:
                        return EXIT_FAILURE;
                }

        if (req.language < 0 || !code_file) {
                log_error("--language= and --code-file= are required (see --help)");
                return EXIT_FAILURE;
        }

        r = read_file(code_file, &code, &req.code_size);
        if (r < 0) {
                log_error_errno(r, "Cannot read %s: %m", code_file);
                return EXIT_FAILURE;
        }
        req.code = code;
        if (stdin_file) {
                r = read_file(stdin_file, &input, &req.stdin_size);
                if (r < 0) {
                        log_error_errno(r, "Cannot read %s: %m", stdin_file);
                        return EXIT_FAILURE;
                }
                req.stdin_data = input;
        }
        req.max_runtime = timeout == 0 ? USEC_INFINITY : timeout;
        if (ttl != USEC_INFINITY)
                req.ttl_deadline = now_usec(CLOCK_REALTIME) + ttl;

        r = sandbox_new(&s, &sb, &error);
        if (r < 0) {
                log_error_errno(r, "Cannot set up the sandbox: %s", strna(error));
                return EXIT_FAILURE;
        }

        r = sandbox_run_sync(sb, &req, &res);
        if (r < 0) {
                log_error_errno(r, "Cannot start the run: %m");
                return EXIT_FAILURE;
        }

        j = json_object_new_object();
        if (!j || json_add_string(j, "end", sandbox_end_to_string(res.end)) < 0 ||
            json_add_string(j, "verdict", sandbox_verdict_to_string(res.verdict)) < 0 ||
            (res.exit_code >= 0 ? json_add_int(j, "exitCode", res.exit_code)
                                : json_object_object_add(j, "exitCode", NULL)) < 0 ||
            json_object_object_add(j, "stdout", json_object_new_string_len(res.stdout_data, (int) res.stdout_size)) < 0 ||
            json_object_object_add(j, "stderr", json_object_new_string_len(res.stderr_data, (int) res.stderr_size)) < 0 ||
            json_add_bool(j, "outputTruncated", res.output_truncated) < 0 ||
            json_add_bool(j, "compiled", res.compiled) < 0 || json_add_bool(j, "cacheHit", res.cache_hit) < 0 ||
            json_add_int(j, "oomKills", (int64_t) res.oom_kills) < 0 ||
            json_add_int(j, "pidsMaxEvents", (int64_t) res.pids_max_events) < 0 ||
            json_add_int(j, "memoryPeak", (int64_t) res.memory_peak) < 0 ||
            json_add_int(j, "cpuUsec", (int64_t) res.cpu_usec) < 0 ||
            json_add_int(j, "durationUsec", (int64_t) res.duration) < 0 || json_add_int(j, "uid", res.uid) < 0 ||
            json_add_string(j, "error", res.error_message) < 0) {
                log_oom();
                sandbox_result_done(&res);
                return EXIT_FAILURE;
        }
        printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        sandbox_result_done(&res);
        return EXIT_SUCCESS;
}
