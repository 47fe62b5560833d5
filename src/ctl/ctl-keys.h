/* SPDX-License-Identifier: MIT */
#pragma once

#include "ctl-util.h"

/* `dtaskctl keys …`: API-key administration over D-Bus (org.dtask.Keys1 on the system bus,
 * $DBUS_SYSTEM_BUS_ADDRESS honoured), as root or a member of dtask-admin. args[0] is the
 * sub-verb's first argument. Each returns an exit code (>= 0) or a negative errno. */

int verb_keys_create(Ctl *ctl, char **args, size_t n_args);
int verb_keys_list(Ctl *ctl, char **args, size_t n_args);
int verb_keys_get(Ctl *ctl, char **args, size_t n_args);
int verb_keys_deactivate(Ctl *ctl, char **args, size_t n_args);
int verb_keys_delete(Ctl *ctl, char **args, size_t n_args);
