/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "daemon-util.h"
#include "log.h"
#include "time-util.h"

#define PEM_MAX (1024 * 1024)

int daemon_event_new(sd_event **ret, sd_event_signal_handler_t on_signal, void *userdata) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        sigset_t mask;
        int r;

        r = sd_event_default(&e);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        (void) sigemptyset(&mask);
        (void) sigaddset(&mask, SIGTERM);
        (void) sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals: %m");
        r = sd_event_add_signal(e, NULL, SIGTERM, on_signal, userdata);
        if (r >= 0)
                r = sd_event_add_signal(e, NULL, SIGINT, on_signal, userdata);
        if (r < 0)
                return log_error_errno(r, "Failed to add signal handlers: %m");
        r = sd_event_set_watchdog(e, true);
        if (r < 0)
                return log_error_errno(r, "Failed to enable the watchdog: %m");

        *ret = TAKE_PTR(e);
        return 0;
}

int daemon_config_load(Config **ret, const char *path) {
        _cleanup_free_ char *error = NULL;
        int r;

        r = config_load(ret, path, &error);
        if (r < 0) {
                if (error)
                        log_error("Invalid configuration: %s", error);
                else
                        log_error_errno(r, "Failed to load the configuration: %m");
        }
        return r;
}

const char *daemon_sql_dir(const char *override) {
        const char *e;

        if (!isempty(override))
                return override;
        e = getenv("DTASK_SQL_DIR");
        if (!isempty(e))
                return e;
        /* Run from the build tree (not installed): the migrations of the source tree. */
        if (access(SQLDIR, F_OK) < 0 && access(SOURCE_SQLDIR, F_OK) >= 0)
                return SOURCE_SQLDIR;
        return SQLDIR;
}

int daemon_read_pem(const char *key, const char *value, char **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_erase_ char *buf = NULL;
        struct stat st;
        size_t n = 0;

        if (strstr(value, "-----BEGIN ")) {
                buf = strdup(value);
                if (!buf)
                        return log_oom();
                *ret = TAKE_PTR(buf);
                return 0;
        }

        fd = open(value, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(errno, "%s: cannot open %s: %m", key, value);
        if (fstat(fd, &st) < 0)
                return log_error_errno(errno, "%s: cannot stat %s: %m", key, value);
        if (!S_ISREG(st.st_mode) || st.st_size > PEM_MAX)
                return log_error_errno(EINVAL, "%s: %s is not a regular file of at most 1 MiB.", key, value);
        buf = calloc(1, (size_t) st.st_size + 1);
        if (!buf)
                return log_oom();
        while (n < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + n, (size_t) st.st_size - n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return log_error_errno(errno, "%s: cannot read %s: %m", key, value);
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = '\0';
        if (!strstr(buf, "-----BEGIN "))
                return log_error_errno(EINVAL, "%s: %s does not contain PEM data.", key, value);

        *ret = TAKE_PTR(buf);
        return 0;
}
