/* SPDX-License-Identifier: MIT */
#pragma once

#include "http-server.h"

typedef struct Manager Manager;

/* The routes table of dtask-api (literal segments before "{id}" ones) and the handlers of
 * the service endpoints: /healthz, /readyz, /metrics, /openapi.json and the dashboard.
 * Body limits come from the configuration, hence built at run time. */
int routes_new(Manager *m, HttpRoute **ret, size_t *ret_n);

/* Embedded at build time (embed.py). */
extern const char api_openapi_json[];
extern const size_t api_openapi_json_size;
extern const char api_dashboard_html[];
extern const size_t api_dashboard_html_size;
