/* SPDX-License-Identifier: MIT */
#pragma once

#include "ctl-util.h"

/* The task verbs of dtaskctl, over the REST API through libdtask (blocking client).
 * Each returns an exit code (>= 0) or a negative errno after printing why. */

int verb_submit(Ctl *ctl, char **args, size_t n_args);
int verb_get(Ctl *ctl, char **args, size_t n_args);
int verb_list(Ctl *ctl, char **args, size_t n_args);
int verb_retry(Ctl *ctl, char **args, size_t n_args);
int verb_cancel(Ctl *ctl, char **args, size_t n_args);
