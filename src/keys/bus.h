/* SPDX-License-Identifier: MIT */
#pragma once

typedef struct Manager Manager;

/* org.dtask.Keys1 on the system bus. When the bus cannot be reached, or the name is
 * taken or not allowed, a warning is logged and the connection is retried every few
 * seconds in the background; REST keeps working meanwhile. The same happens when the
 * connection is lost later. */
#define KEYS_BUS_RETRY_USEC (5 * USEC_PER_SEC)

int keys_bus_start(Manager *m);
void keys_bus_stop(Manager *m);
