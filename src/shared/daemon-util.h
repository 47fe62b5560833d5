/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "macro.h"

/* What every dtask daemon does the same way at start-up. */

/* The daemon's event loop: sd_event_default() with SIGTERM and SIGINT blocked and
 * delivered to on_signal (NULL: they exit the loop), and the watchdog enabled when the
 * service manager asked for one ($WATCHDOG_USEC). Logs what failed. */
int daemon_event_new(sd_event **ret, sd_event_signal_handler_t on_signal, void *userdata);

/* Loads the configuration (config_load()); on failure logs the message naming the key. */
typedef struct Config Config;
int daemon_config_load(Config **ret, const char *path);

/* Where the schema migrations are: override (--sql-dir=), else $DTASK_SQL_DIR, else the
 * installed SQLDIR, or the source tree's sql/ when running uninstalled from the build tree. */
const char *daemon_sql_dir(const char *override);

/* A PEM configuration value (TLS_CERTIFICATE, TLS_KEY): a credential holds the PEM text
 * itself, the configuration file names a path. *ret gets the text (at most 1 MiB). Logs
 * errors naming the key. */
int daemon_read_pem(const char *key, const char *value, char **ret);
