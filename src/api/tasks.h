/* SPDX-License-Identifier: MIT */
#pragma once

#include "http-server.h"

/* The handlers of /api/tasks (SPEC §3). Each authenticates the caller, checks its claim,
 * validates the request and runs one statement of the task store; userdata is the Manager. */

int tasks_list(HttpRequest *req, void *userdata);
int tasks_create(HttpRequest *req, void *userdata);
int tasks_get(HttpRequest *req, void *userdata);
int tasks_patch(HttpRequest *req, void *userdata);
int tasks_retry(HttpRequest *req, void *userdata);
int tasks_cancel(HttpRequest *req, void *userdata);
int tasks_claim(HttpRequest *req, void *userdata);
int tasks_heartbeat(HttpRequest *req, void *userdata);
int tasks_complete(HttpRequest *req, void *userdata);
int tasks_release(HttpRequest *req, void *userdata);

/* true for application/json and any "+json" media type, parameters ignored. */
bool content_type_is_json(const char *content_type);

/* Whether a request's Cache-Control asks for the current state (no-cache, max-age=0): GET
 * then reads the database instead of dtask-api's task cache. */
bool cache_control_no_cache(const char *value);
