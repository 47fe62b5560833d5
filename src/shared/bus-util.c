/* SPDX-License-Identifier: MIT */
#include <grp.h>

#include "bus-util.h"
#include "log.h"

int bus_open_system_attached(sd_event *event, int64_t priority, const char *description, sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        if (!event || !ret)
                return -EINVAL;

        /* Honours $DBUS_SYSTEM_BUS_ADDRESS. */
        r = sd_bus_open_system_with_description(&bus, description);
        if (r < 0)
                return r;
        r = sd_bus_set_exit_on_disconnect(bus, false);
        if (r < 0)
                return r;
        r = sd_bus_attach_event(bus, event, priority);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(bus);
        return 0;
}

int bus_request_name(sd_bus *bus, const char *name) {
        int r;

        r = sd_bus_request_name(bus, name, 0);
        if (r == -EEXIST || r == -EALREADY)
                return r == -EALREADY ? 0 : -EEXIST;
        if (r == -EPERM)
                return -EACCES;
        return r < 0 ? r : 0;
}

int bus_match_disconnected(sd_bus *bus, sd_bus_message_handler_t callback, void *userdata, sd_bus_slot **ret_slot) {
        return sd_bus_match_signal(bus, ret_slot, "org.freedesktop.DBus.Local", "/org/freedesktop/DBus/Local",
                                   "org.freedesktop.DBus.Local", "Disconnected", callback, userdata);
}

static int lookup_group(const char *name, gid_t *ret) {
        _cleanup_free_ char *buf = NULL;
        struct group grp, *result = NULL;
        size_t size = 4096;

        for (;;) {
                int r;

                buf = mfree(buf);
                buf = malloc(size);
                if (!buf)
                        return -ENOMEM;
                r = getgrnam_r(name, &grp, buf, size, &result);
                if (r == ERANGE && size < 1024 * 1024) {
                        size *= 2;
                        continue;
                }
                if (r != 0)
                        return -r;
                if (!result)
                        return -ENOENT;
                *ret = result->gr_gid;
                return 0;
        }
}

uid_t bus_sender_uid(sd_bus_message *m) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t uid;

        if (sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds) < 0)
                return BUS_UID_INVALID;
        if (sd_bus_creds_get_euid(creds, &uid) < 0)
                return BUS_UID_INVALID;
        return uid;
}

/* The caller's groups as the bus daemon recorded them when it connected (dbus-daemon ≥ 1.12 and
 * dbus-broker report "UnixGroupIDs" from SO_PEERGROUPS): not racy, unlike reading /proc/PID.
 * -ENODATA when the bus does not report them. */
static int bus_sender_groups(sd_bus_message *m, gid_t **ret, size_t *ret_n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *sender;
        int r;

        sender = sd_bus_message_get_sender(m);
        if (!sender)
                return -ENODATA;
        r = sd_bus_call_method(sd_bus_message_get_bus(m), "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetConnectionCredentials", &error, &reply, "s", sender);
        sd_bus_error_free(&error);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *key;

                r = sd_bus_message_read(reply, "s", &key);
                if (r < 0)
                        return r;
                if (streq(key, "UnixGroupIDs")) {
                        const uint32_t *a;
                        size_t size;
                        gid_t *gids;

                        r = sd_bus_message_enter_container(reply, 'v', "au");
                        if (r < 0)
                                return r;
                        r = sd_bus_message_read_array(reply, 'u', (const void **) &a, &size);
                        if (r < 0)
                                return r;
                        gids = malloc(MAX(size, sizeof(uint32_t)));
                        if (!gids)
                                return -ENOMEM;
                        for (size_t i = 0; i < size / sizeof(uint32_t); i++)
                                gids[i] = (gid_t) a[i];
                        *ret = gids;
                        *ret_n = size / sizeof(uint32_t);
                        return 0;
                }
                r = sd_bus_message_skip(reply, "v");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
        }
        return r < 0 ? r : -ENODATA;
}

int bus_verify_admin(sd_bus_message *m, const char *admin_group, uid_t *ret_uid, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        _cleanup_free_ gid_t *bus_gids = NULL;
        const char *group = admin_group ?: BUS_ADMIN_GROUP;
        size_t n_bus_gids = 0;
        uid_t uid;
        gid_t admin_gid = 0;
        int r;

        if (ret_uid)
                *ret_uid = BUS_UID_INVALID;

        r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot determine the credentials of the caller: %m");
        r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot determine the user of the caller: %m");
        if (ret_uid)
                *ret_uid = uid;
        if (uid == 0)
                return 1;

        /* A group that does not exist has no members. */
        r = lookup_group(group, &admin_gid);
        if (r < 0) {
                if (r != -ENOENT)
                        log_debug_errno(r, "Failed to look up group %s: %m", group);
                goto denied;
        }

        r = bus_sender_groups(m, &bus_gids, &n_bus_gids);
        if (r >= 0) {
                for (size_t i = 0; i < n_bus_gids; i++)
                        if (bus_gids[i] == admin_gid)
                                return 1;
                goto denied;
        }
        log_debug_errno(r, "The bus did not report the groups of the caller, reading them from /proc: %m");

        /* Older buses: the groups of the caller's process (sd-bus "augments" from /proc/PID). */
        creds = sd_bus_creds_unref(creds);
        r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID | SD_BUS_CREDS_GID | SD_BUS_CREDS_SUPPLEMENTARY_GIDS |
                                                 SD_BUS_CREDS_AUGMENT,
                                      &creds);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot determine the groups of the caller: %m");
        {
                const gid_t *gids = NULL;
                gid_t gid;
                int n;

                if (sd_bus_creds_get_gid(creds, &gid) >= 0 && gid == admin_gid)
                        return 1;
                n = sd_bus_creds_get_supplementary_gids(creds, &gids);
                for (int i = 0; i < n; i++)
                        if (gids[i] == admin_gid)
                                return 1;
        }

denied:
        sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "Only root and members of group %s may call this method.",
                          group);
        return 0;
}
