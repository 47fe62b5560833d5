/* SPDX-License-Identifier: MIT */
#include <json-c/json.h>
#include <stdio.h>
#include <systemd/sd-bus.h>

#include "ctl-keys.h"
#include "json-util.h"
#include "time-util.h"
#include "uuid-util.h"

/* dbus/org.dtask.Keys1.xml */
#define KEYS_SERVICE "org.dtask.Keys1"
#define KEYS_PATH "/org/dtask/Keys1"
#define KEYS_INTERFACE "org.dtask.Keys1.Manager"
#define KEY_STRUCT "sssbtttas"

typedef struct KeyInfo {
        const char *id, *name, *prefix;
        int is_active;
        uint64_t created_at, expires_at, last_used_at;
        char **claims;
} KeyInfo;

static void key_info_done(KeyInfo *k) {
        strv_free(k->claims);
        *k = (KeyInfo) {};
}

static int bus_open(sd_bus **ret) {
        int r;

        /* the system bus; sd-bus honours $DBUS_SYSTEM_BUS_ADDRESS */
        r = sd_bus_open_system(ret);
        if (r < 0)
                return ctl_error(r, "Failed to connect to the system bus: %m");
        return 0;
}

static int bus_call_failed(const sd_bus_error *e, int r, const char *what) {
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_ACCESS_DENIED))
                return ctl_error(EACCES, "Failed to %s: access denied (root or a member of group dtask-admin only).",
                                 what);
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_SERVICE_UNKNOWN) ||
            sd_bus_error_has_name(e, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return ctl_error(EHOSTDOWN, "Failed to %s: dtask-keys is not running (no %s on the system bus).", what,
                                 KEYS_SERVICE);
        if (e && e->message)
                return ctl_error(r, "Failed to %s: %s", what, e->message);
        return ctl_error(r, "Failed to %s: %m", what);
}

static void print_time_or(const char *label, uint64_t t, const char *none) {
        char buf[ISO8601_STRING_MAX];

        printf("%10s: %s\n", label, t > 0 ? iso8601_format(t, buf) : none);
}

static int json_add_time(json_object *o, const char *name, uint64_t t) {
        char buf[ISO8601_STRING_MAX];

        return json_add_string(o, name, t > 0 ? iso8601_format(t, buf) : NULL);
}

/* The REST API's `info` shape (SPEC §4), so that scripts see the same members either way. */
static int key_info_to_json(const KeyInfo *k, json_object **ret) {
        _cleanup_json_ json_object *o = json_object_new_object(), *claims = json_object_new_array();

        if (!o || !claims)
                return -ENOMEM;
        for (char **c = k->claims; c && *c; c++)
                if (json_object_array_add(claims, json_object_new_string(*c)) < 0)
                        return -ENOMEM;
        if (json_add_string(o, "id", k->id) < 0 || json_add_string(o, "name", k->name) < 0 ||
            json_add_string(o, "prefix", k->prefix) < 0 || json_add_time(o, "createdAt", k->created_at) < 0 ||
            json_add_time(o, "expiresAt", k->expires_at) < 0 || json_add_bool(o, "isActive", k->is_active) < 0 ||
            json_add_time(o, "lastUsedAt", k->last_used_at) < 0 ||
            json_object_object_add(o, "claims", TAKE_PTR(claims)) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(o);
        return 0;
}

/* Reads the members of one key struct (the container is entered by the caller). */
static int read_key(sd_bus_message *m, KeyInfo *ret) {
        KeyInfo k = {};
        int r;

        r = sd_bus_message_read(m, "sssbttt", &k.id, &k.name, &k.prefix, &k.is_active, &k.created_at, &k.expires_at,
                                &k.last_used_at);
        if (r < 0)
                return r;
        r = sd_bus_message_read_strv(m, &k.claims);
        if (r < 0)
                return r;
        *ret = k;
        return 0;
}

static char *claims_joined(char **claims) {
        size_t n = 1;
        char *s, *p;

        for (char **c = claims; c && *c; c++)
                n += strlen(*c) + 1;
        s = p = malloc(n);
        if (!s)
                return NULL;
        *p = '\0';
        for (char **c = claims; c && *c; c++)
                p += sprintf(p, "%s%s", p == s ? "" : ",", *c);
        return s;
}

static int check_key_id(const char *verb, const char *id) {
        if (!uuid_is_valid(id))
                return ctl_usage(verb, "\"%s\" is not a key id (a UUID).", id);
        return 0;
}

int verb_keys_create(Ctl *ctl, char **args, size_t n_args) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *name = args[0], *id, *key;
        usec_t expires = 0;
        int r;

        if (ctl->expires && !streq(ctl->expires, "never")) {
                usec_t d;

                if (iso8601_parse(ctl->expires, &expires) < 0) {
                        if (duration_parse(ctl->expires, &d) < 0 || d == 0)
                                return ctl_usage("keys create",
                                                 "Invalid --expires=%s: use an ISO-8601 time (2027-01-31T00:00:00Z), a "
                                                 "duration from now (30d, 12h) or \"never\".",
                                                 ctl->expires);
                        expires = now_usec(CLOCK_REALTIME) + d;
                }
                if (expires == 0)
                        expires = 1; /* the epoch itself: long expired, not "never" */
        }

        r = bus_open(&bus);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_call(bus, &m, KEYS_SERVICE, KEYS_PATH, KEYS_INTERFACE, "CreateKey");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", name);
        if (r >= 0)
                r = sd_bus_message_append_strv(m, ctl->claims);
        if (r >= 0)
                r = sd_bus_message_append(m, "t", (uint64_t) expires);
        if (r < 0)
                return ctl_error(r, "Failed to build the D-Bus call: %m");

        r = sd_bus_call(bus, m, 0, &error, &reply);
        if (r < 0)
                return bus_call_failed(&error, r, "create the key");
        r = sd_bus_message_read(reply, "ss", &id, &key);
        if (r < 0)
                return ctl_error(r, "Failed to read the reply of CreateKey: %m");

        if (ctl->json != CTL_JSON_OFF) {
                _cleanup_json_ json_object *o = json_object_new_object();

                if (!o || json_add_string(o, "id", id) < 0 || json_add_string(o, "apiKey", key) < 0)
                        return ctl_error(ENOMEM, "Out of memory.");
                ctl_print_json(ctl, json_to_string(o, NULL));
        } else {
                printf("ID: %s\nKey: %s\n", id, key);
                fflush(stdout);
                fprintf(stderr, "The key is shown only this once: store it now.\n");
        }
        return CTL_EXIT_OK;
}

int verb_keys_list(Ctl *ctl, char **args, size_t n_args) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *array = NULL;
        unsigned n = 0;
        int r;

        r = bus_open(&bus);
        if (r < 0)
                return r;
        r = sd_bus_call_method(bus, KEYS_SERVICE, KEYS_PATH, KEYS_INTERFACE, "ListKeys", &error, &reply, NULL);
        if (r < 0)
                return bus_call_failed(&error, r, "list keys");

        if (ctl->json != CTL_JSON_OFF) {
                array = json_object_new_array();
                if (!array)
                        return ctl_error(ENOMEM, "Out of memory.");
        }

        r = sd_bus_message_enter_container(reply, 'a', "(" KEY_STRUCT ")");
        if (r < 0)
                goto bad_reply;
        for (;;) {
                _cleanup_(key_info_done) KeyInfo k = {};

                r = sd_bus_message_enter_container(reply, 'r', KEY_STRUCT);
                if (r < 0)
                        goto bad_reply;
                if (r == 0)
                        break;
                r = read_key(reply, &k);
                if (r < 0)
                        goto bad_reply;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        goto bad_reply;

                if (array) {
                        json_object *o = NULL;

                        if (key_info_to_json(&k, &o) < 0 || json_object_array_add(array, o) < 0) {
                                json_object_put(o);
                                return ctl_error(ENOMEM, "Out of memory.");
                        }
                } else {
                        _cleanup_free_ char *claims = claims_joined(k.claims);
                        char expires[ISO8601_STRING_MAX], used[ISO8601_STRING_MAX];

                        if (n == 0)
                                printf("%-36s %-10s %-6s %-27s %-27s %-20s %s\n", "ID", "PREFIX", "ACTIVE", "EXPIRES",
                                       "LAST USED", "NAME", "CLAIMS");
                        printf("%-36s %-10s %-6s %-27s %-27s %-20s %s\n", k.id, k.prefix, k.is_active ? "yes" : "no",
                               k.expires_at > 0 ? iso8601_format(k.expires_at, expires) : "never",
                               k.last_used_at > 0 ? iso8601_format(k.last_used_at, used) : "never", k.name,
                               strempty(claims));
                }
                n++;
        }
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                goto bad_reply;

        if (array)
                ctl_print_json(ctl, json_to_string(array, NULL));
        else if (n == 0)
                puts("No keys.");
        return CTL_EXIT_OK;

bad_reply:
        return ctl_error(r, "Failed to read the reply of ListKeys: %m");
}

int verb_keys_get(Ctl *ctl, char **args, size_t n_args) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(key_info_done) KeyInfo k = {};
        int r;

        r = check_key_id("keys get", args[0]);
        if (r != 0)
                return r;
        r = bus_open(&bus);
        if (r < 0)
                return r;
        r = sd_bus_call_method(bus, KEYS_SERVICE, KEYS_PATH, KEYS_INTERFACE, "GetKey", &error, &reply, "s", args[0]);
        if (r < 0)
                return bus_call_failed(&error, r, "get the key");
        r = read_key(reply, &k);
        if (r < 0)
                return ctl_error(r, "Failed to read the reply of GetKey: %m");

        if (ctl->json != CTL_JSON_OFF) {
                _cleanup_json_ json_object *o = NULL;

                if (key_info_to_json(&k, &o) < 0)
                        return ctl_error(ENOMEM, "Out of memory.");
                ctl_print_json(ctl, json_to_string(o, NULL));
        } else {
                _cleanup_free_ char *claims = claims_joined(k.claims);

                printf("%10s: %s\n", "ID", k.id);
                printf("%10s: %s\n", "Name", k.name);
                printf("%10s: %s\n", "Prefix", k.prefix);
                printf("%10s: %s\n", "Active", k.is_active ? "yes" : "no");
                print_time_or("Created", k.created_at, "n/a");
                print_time_or("Expires", k.expires_at, "never");
                print_time_or("Last used", k.last_used_at, "never");
                printf("%10s: %s\n", "Claims", isempty(claims) ? "(none)" : claims);
        }
        return CTL_EXIT_OK;
}

static int simple_call(Ctl *ctl, const char *verb, const char *method, const char *id, const char *what,
                       const char *done) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = check_key_id(verb, id);
        if (r != 0)
                return r;
        r = bus_open(&bus);
        if (r < 0)
                return r;
        r = sd_bus_call_method(bus, KEYS_SERVICE, KEYS_PATH, KEYS_INTERFACE, method, &error, NULL, "s", id);
        if (r < 0)
                return bus_call_failed(&error, r, what);
        if (ctl->json == CTL_JSON_OFF)
                printf("Key %s %s.\n", id, done);
        return CTL_EXIT_OK;
}

int verb_keys_deactivate(Ctl *ctl, char **args, size_t n_args) {
        return simple_call(ctl, "keys deactivate", "DeactivateKey", args[0], "deactivate the key", "deactivated");
}

int verb_keys_delete(Ctl *ctl, char **args, size_t n_args) {
        return simple_call(ctl, "keys delete", "DeleteKey", args[0], "delete the key", "deleted");
}
