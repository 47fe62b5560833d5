/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "macro.h"
#include "uuid-util.h"

/* sd-bus helpers shared by the daemons that offer a D-Bus API (dtask-keys, dtask-api). */

/* sd-bus.h itself provides sd_bus_flush_close_unrefp(), sd_bus_message_unrefp(),
 * sd_bus_creds_unrefp() and sd_bus_slot_unrefp() for _cleanup_(). */
#define _cleanup_bus_error_ _cleanup_(sd_bus_error_free)

#define BUS_UID_INVALID ((uid_t) -1)
#ifndef UID_FMT
#define UID_FMT "%" PRIu32
#endif

/* The group whose members may call mutating methods besides root. */
#define BUS_ADMIN_GROUP "dtask-admin"

/* Opens a connection to the system bus ($DBUS_SYSTEM_BUS_ADDRESS is honoured) and
 * attaches it to event at the given priority. The bus does not exit the loop when
 * it is disconnected; the owner watches the Disconnected signal (bus_match_disconnected). */
int bus_open_system_attached(sd_event *event, int64_t priority, const char *description, sd_bus **ret);

/* Requests a well-known name synchronously (at start-up). -EEXIST when someone else
 * owns it, -EACCES when the bus policy does not allow it. */
int bus_request_name(sd_bus *bus, const char *name);

/* Calls callback when the connection is lost (the local Disconnected signal). */
int bus_match_disconnected(sd_bus *bus, sd_bus_message_handler_t callback, void *userdata, sd_bus_slot **ret_slot);

/* Decides whether the sender of a method call may call mutating methods: root
 * (effective uid 0) or a member of group admin_group (primary or supplementary;
 * NULL for BUS_ADMIN_GROUP). The user comes from the bus (sd_bus_query_sender_creds,
 * EUID); the groups from the bus daemon's GetConnectionCredentials ("UnixGroupIDs",
 * recorded when the caller connected), or, on buses that do not report them, from
 * sd_bus_query_sender_creds with GID|SUPPLEMENTARY_GIDS|AUGMENT (/proc of the caller).
 * Synchronous: one round trip to the bus daemon for callers other than root.
 * Returns 1 when allowed, 0 when not (then error is set to
 * org.freedesktop.DBus.Error.AccessDenied), negative errno when the credentials
 * could not be read (error set as well). ret_uid (optional) gets the caller's uid
 * (BUS_UID_INVALID when unknown), for logging. */
int bus_verify_admin(sd_bus_message *m, const char *admin_group, uid_t *ret_uid, sd_bus_error *error);

/* For the methods that change something: bus_verify_admin() with BUS_ADMIN_GROUP, and a
 * refusal logged (notice) and returned as -EACCES (AccessDenied for the caller). Returns 1
 * when allowed, negative errno otherwise. ret_uid as for bus_verify_admin(). */
int bus_require_admin(sd_bus_message *m, uid_t *ret_uid, sd_bus_error *error);

/* Reads a UUID argument ("s") into id, normalized. A string that is not one is the
 * caller's error: InvalidArgs, "Not a <what> id (UUID): …". */
int bus_read_uuid(sd_bus_message *m, const char *what, char id[static UUID_STRING_MAX], sd_bus_error *error);

/* The caller's uid, for logging; BUS_UID_INVALID when unknown. */
uid_t bus_sender_uid(sd_bus_message *m);

/* An object offered under a well-known name on the system bus, kept offered: when the
 * bus is not there, the name is owned by another process, the policy refuses it, or the
 * connection drops, it tries again every retry_usec. The daemon keeps serving REST
 * meanwhile. state() (optional) runs on every change: connected, or not with the error
 * (-EEXIST name taken, -EACCES refused by the policy, -ECONNRESET connection lost, …);
 * while disconnected it runs again only when the error changes, so it can be logged as is. */
typedef struct BusService BusService;
typedef void (*BusServiceStateCallback)(BusService *s, bool connected, int error, void *userdata);

typedef struct BusServiceSettings {
        const char *description; /* of the connection, e.g. "dtask-api" */
        const char *name;        /* well-known name */
        const char *path;
        const char *interface;
        const sd_bus_vtable *vtable;
        void *vtable_userdata;
        uint64_t retry_usec;     /* 0: 5 s */
        BusServiceStateCallback state;
        void *userdata;
} BusServiceSettings;

/* The first attempt runs within this call (state() may run from it). Strings and the vtable
 * must outlive the service. */
int bus_service_new(BusService **ret, sd_event *event, const BusServiceSettings *settings);
BusService *bus_service_free(BusService *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(BusService *, bus_service_free);
/* Words for an error of state(), for a log line. */
const char *bus_service_error_reason(int error);
/* The connection while the name is owned, else NULL (for signals and property changes). */
sd_bus *bus_service_get_bus(BusService *s);
