/* SPDX-License-Identifier: MIT */
#include <grp.h>

#include "bus-util.h"
#include "log.h"
#include "uuid-util.h"

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

struct BusService {
        sd_event *event;
        BusServiceSettings settings;
        sd_bus *bus;
        sd_bus_slot *vtable_slot;
        sd_bus_slot *disconnect_slot;
        sd_event_source *retry_timer;
        bool reported;     /* state() ran at least once */
        int last_error;    /* of the last report; 0 when connected */
};

static void bus_service_drop(BusService *s) {
        s->vtable_slot = sd_bus_slot_unref(s->vtable_slot);
        s->disconnect_slot = sd_bus_slot_unref(s->disconnect_slot);
        if (s->bus) {
                (void) sd_bus_detach_event(s->bus);
                s->bus = sd_bus_flush_close_unref(s->bus);
        }
}

static void bus_service_report(BusService *s, int error) {
        if (s->reported && s->last_error == error)
                return;
        s->reported = true;
        s->last_error = error;
        if (s->settings.state)
                s->settings.state(s, error == 0, error, s->settings.userdata);
}

static int bus_service_try(BusService *s);

static int on_retry(sd_event_source *source, uint64_t usec, void *userdata) {
        (void) bus_service_try(userdata);
        return 0;
}

static int bus_service_arm_retry(BusService *s) {
        int r;

        if (s->retry_timer) {
                r = sd_event_source_set_time_relative(s->retry_timer, s->settings.retry_usec);
                if (r >= 0)
                        r = sd_event_source_set_enabled(s->retry_timer, SD_EVENT_ONESHOT);
                return r;
        }
        r = sd_event_add_time_relative(s->event, &s->retry_timer, CLOCK_MONOTONIC, s->settings.retry_usec,
                                       USEC_PER_SEC, on_retry, s);
        if (r >= 0)
                (void) sd_event_source_set_description(s->retry_timer, "bus-retry");
        return r;
}

static int on_disconnected(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;

        bus_service_drop(s);
        bus_service_report(s, -ECONNRESET);
        (void) bus_service_arm_retry(s);
        return 0;
}

static int bus_service_connect(BusService *s) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        r = bus_open_system_attached(s->event, 0, s->settings.description, &bus);
        if (r < 0)
                return r;
        r = sd_bus_add_object_vtable(bus, &s->vtable_slot, s->settings.path, s->settings.interface,
                                     s->settings.vtable, s->settings.vtable_userdata);
        if (r < 0)
                return r;
        r = bus_match_disconnected(bus, on_disconnected, s, &s->disconnect_slot);
        if (r < 0)
                return r;
        r = bus_request_name(bus, s->settings.name);
        if (r < 0)
                return r;
        s->bus = TAKE_PTR(bus);
        return 0;
}

static int bus_service_try(BusService *s) {
        int r;

        r = bus_service_connect(s);
        if (r >= 0) {
                bus_service_report(s, 0);
                return 0;
        }
        bus_service_drop(s);
        bus_service_report(s, r);
        return bus_service_arm_retry(s);
}

int bus_service_new(BusService **ret, sd_event *event, const BusServiceSettings *settings) {
        _cleanup_(bus_service_freep) BusService *s = NULL;
        int r;

        assert_return(ret && event && settings && settings->name && settings->path && settings->interface &&
                      settings->vtable, -EINVAL);

        s = calloc(1, sizeof(BusService));
        if (!s)
                return -ENOMEM;
        s->event = sd_event_ref(event);
        s->settings = *settings;
        if (s->settings.retry_usec == 0)
                s->settings.retry_usec = 5 * USEC_PER_SEC;

        r = bus_service_try(s);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

BusService *bus_service_free(BusService *s) {
        if (!s)
                return NULL;
        s->retry_timer = sd_event_source_disable_unref(s->retry_timer);
        bus_service_drop(s);
        sd_event_unref(s->event);
        return mfree(s);
}

sd_bus *bus_service_get_bus(BusService *s) {
        return s ? s->bus : NULL;
}

const char *bus_service_error_reason(int error) {
        switch (error) {
        case -EEXIST:
                return "the name is owned by another process";
        case -EACCES:
                return "the bus policy does not allow this user to own it";
        case -ECONNRESET:
                return "the connection to the bus was lost";
        default:
                return "cannot connect to the system bus";
        }
}

int bus_require_admin(sd_bus_message *m, uid_t *ret_uid, sd_bus_error *error) {
        uid_t uid;
        int r;

        r = bus_verify_admin(m, BUS_ADMIN_GROUP, &uid, error);
        if (ret_uid)
                *ret_uid = uid;
        if (r < 0)
                return r;
        if (r == 0) {
                log_notice("Refusing %s over D-Bus from uid " UID_FMT ": not root and not in group " BUS_ADMIN_GROUP ".",
                           sd_bus_message_get_member(m), uid);
                return -EACCES;
        }
        return 1;
}

int bus_read_uuid(sd_bus_message *m, const char *what, char id[static UUID_STRING_MAX], sd_bus_error *error) {
        const char *s;
        int r;

        r = sd_bus_message_read(m, "s", &s);
        if (r < 0)
                return r;
        if (uuid_normalize(s, id) < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Not a %s id (UUID): %s", what, s);
        return 0;
}
