/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>

#include "log.h"

static int max_level = LOG_INFO;
static const char *ident = NULL;
static int use_prefix = -1; /* -1: not decided yet */

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg",   [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
        [LOG_ERR] = "err",       [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info",     [LOG_DEBUG] = "debug",
};

void log_set_max_level(int level) {
        max_level = CLAMP(level, LOG_EMERG, LOG_DEBUG);
}

int log_get_max_level(void) {
        return max_level;
}

int log_set_max_level_from_string(const char *s) {
        if (!s)
                return -EINVAL;

        for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
                if (strcaseeq(s, level_names[i])) {
                        log_set_max_level((int) i);
                        return 0;
                }

        if (strcaseeq(s, "error"))
                return log_set_max_level(LOG_ERR), 0;
        if (strcaseeq(s, "warn"))
                return log_set_max_level(LOG_WARNING), 0;
        if (s[0] >= '0' && s[0] <= '7' && s[1] == '\0')
                return log_set_max_level(s[0] - '0'), 0;

        return -EINVAL;
}

void log_set_ident(const char *s) {
        ident = s;
}

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) {
        char buf[2048];
        va_list ap;
        int saved_errno = errno;

        error = abs(error);
        if (use_prefix < 0)
                use_prefix = !isatty(STDERR_FILENO);

        /* Make %m print the error we are logging about. */
        errno = error;
        va_start(ap, format);
        (void) vsnprintf(buf, sizeof buf, format, ap);
        va_end(ap);

        if (use_prefix)
                fprintf(stderr, "<%d>%s\n", level & LOG_PRIMASK, buf);
        else if (max_level >= LOG_DEBUG)
                fprintf(stderr, "%s%s%s:%d %s: %s\n", strempty(ident), ident ? " " : "", file, line,
                        func, buf);
        else
                fprintf(stderr, "%s%s%s\n", strempty(ident), ident ? ": " : "", buf);

        errno = error ?: saved_errno;
        return -error;
}
