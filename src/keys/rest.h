/* SPDX-License-Identifier: MIT */
#pragma once

#include "http-server.h"

typedef struct Manager Manager;

/* The REST API of SPEC §4 plus /healthz and /readyz, served by m->http. */
int rest_server_new(Manager *m, HttpServer **ret);
