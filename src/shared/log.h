/* SPDX-License-Identifier: MIT */
#pragma once

#include <syslog.h>

#include "macro.h"

/* Logging to stderr with "<N>" syslog priority prefixes, which journald (and
 * systemd's stdout/stderr stream) turns into the message priority. On a terminal
 * the prefix is left out. Shared code logs at debug level only; daemons log where
 * decisions are made. Never pass secrets (keys, tokens, passwords) to these. */

void log_set_max_level(int level);
int log_get_max_level(void);
int log_set_max_level_from_string(const char *s);
/* Identifier printed before each message on a terminal, e.g. "dtask-api". */
void log_set_ident(const char *ident);

/* Logs and returns -abs(error) (or 0 when error == 0); errno is set so that %m works. */
int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) _printf_(6, 7);

#define log_full_errno(level, error, ...)                                                       \
        ({                                                                                      \
                int _level_ = (level), _e_ = (error);                                           \
                _level_ <= log_get_max_level()                                                  \
                        ? log_internal(_level_, _e_, __FILE__, __LINE__, __func__, __VA_ARGS__) \
                        : -abs(_e_);                                                            \
        })

#define log_full(level, ...) (void) log_full_errno(level, 0, __VA_ARGS__)

#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)

#define log_debug_errno(error, ...) log_full_errno(LOG_DEBUG, error, __VA_ARGS__)
#define log_info_errno(error, ...) log_full_errno(LOG_INFO, error, __VA_ARGS__)
#define log_notice_errno(error, ...) log_full_errno(LOG_NOTICE, error, __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, error, __VA_ARGS__)
#define log_error_errno(error, ...) log_full_errno(LOG_ERR, error, __VA_ARGS__)

#define log_oom() log_full_errno(LOG_ERR, ENOMEM, "Out of memory.")
