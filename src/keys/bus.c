/* SPDX-License-Identifier: MIT */
#include "bus-util.h"
#include "bus.h"
#include "json-util.h"
#include "log.h"
#include "manager.h"
#include "uuid-util.h"

#define BUS_ERROR_NOT_FOUND "org.dtask.Keys1.Error.NotFound"
#define BUS_ERROR_UNAVAILABLE "org.dtask.Keys1.Error.Unavailable"
#define KEY_STRUCT_SIGNATURE "sssbtttas"

typedef struct BusCall {
        Manager *manager;
        sd_bus_message *message;
        uid_t uid;
        char id[UUID_STRING_MAX];
        bool deactivated;
} BusCall;

static BusCall *bus_call_free(BusCall *c) {
        if (!c)
                return NULL;
        sd_bus_message_unref(c->message);
        return mfree(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(BusCall *, bus_call_free);

static BusCall *bus_call_new(Manager *m, sd_bus_message *message, uid_t uid) {
        BusCall *c = calloc(1, sizeof *c);

        if (!c)
                return NULL;
        c->manager = m;
        c->message = sd_bus_message_ref(message);
        c->uid = uid;
        return c;
}

static void reply_log(int r) {
        if (r < 0)
                log_debug_errno(r, "Failed to send a D-Bus reply: %m");
}

/* Replies with the error of the store (not "not found"). */
static int reply_store_error(BusCall *c, int error, const char *what) {
        if (error_is_unavailable(error)) {
                log_debug_errno(error, "Cannot %s, the database is unavailable: %m", what);
                return sd_bus_reply_method_errorf(c->message, BUS_ERROR_UNAVAILABLE,
                                                  "The key database is unavailable; try again later.");
        }
        log_error_errno(error, "Failed to %s: %m", what);
        return sd_bus_reply_method_errorf(c->message, SD_BUS_ERROR_FAILED, "Failed to %s.", what);
}

static int check_ready(Manager *m, sd_bus_error *error) {
        if (manager_is_ready(m))
                return 0;
        return sd_bus_error_setf(error, BUS_ERROR_UNAVAILABLE, "The key database is not ready yet; try again later.");
}

static int append_key(sd_bus_message *reply, const ApiKey *k) {
        int r;

        r = sd_bus_message_open_container(reply, 'r', KEY_STRUCT_SIGNATURE);
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "sssbttt", k->id, k->name, k->prefix, (int) k->is_active,
                                  (uint64_t) k->created_at, (uint64_t) k->expires_at, (uint64_t) k->last_used_at);
        if (r < 0)
                return r;
        r = sd_bus_message_append_strv(reply, k->claims);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static int reply_not_found(BusCall *c) {
        return sd_bus_reply_method_errorf(c->message, BUS_ERROR_NOT_FOUND, "No API key with id %s.", c->id);
}

/* ---- CreateKey ---- */

static void on_created(int error, const ApiKey *key, const char *plaintext, void *userdata) {
        _cleanup_(bus_call_freep) BusCall *c = userdata;

        if (error < 0) {
                reply_log(reply_store_error(c, error, "create an API key"));
                return;
        }
        log_info("API key %s created over D-Bus by uid " UID_FMT ".", key->id, c->uid);
        reply_log(sd_bus_reply_method_return(c->message, "ss", key->id, plaintext));
}

static int method_create_key(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(strv_freep) char **claims = NULL;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        const char *name, *msg;
        uint64_t expires_at;
        uid_t uid;
        int r;

        r = bus_require_admin(message, &uid, error);
        if (r < 0)
                return r;
        r = check_ready(m, error);
        if (r < 0)
                return r;

        r = sd_bus_message_read(message, "s", &name);
        if (r < 0)
                return r;
        r = sd_bus_message_read_strv(message, &claims);
        if (r < 0)
                return r;
        r = sd_bus_message_read(message, "t", &expires_at);
        if (r < 0)
                return r;

        msg = api_key_check_name(name);
        if (msg)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "name %s", msg);
        msg = api_key_check_claims(claims);
        if (msg)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "claims: %s", msg);
        api_key_claims_uniq(claims);
        if (expires_at >= (uint64_t) 253402300800 * USEC_PER_SEC) /* year 10000 */
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "expires_at_usec is beyond the year 9999");

        c = bus_call_new(m, message, uid);
        if (!c)
                return -ENOMEM;
        r = key_store_create(m->store, name, claims, expires_at, on_created, c);
        if (r < 0) {
                reply_log(reply_store_error(c, r, "create an API key"));
                return 1;
        }
        TAKE_PTR(c);
        return 1;
}

/* ---- ListKeys, GetKey ---- */

static void on_listed(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(bus_call_freep) BusCall *c = userdata;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        if (error < 0) {
                reply_log(reply_store_error(c, error, "list API keys"));
                return;
        }
        r = sd_bus_message_new_method_return(c->message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(" KEY_STRUCT_SIGNATURE ")");
        for (size_t i = 0; r >= 0 && i < n_keys; i++)
                r = append_key(reply, keys[i]);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                reply_log(sd_bus_reply_method_errnof(c->message, r, "Failed to build the reply: %m"));
}

static int method_list_keys(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        int r;

        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, BUS_UID_INVALID);
        if (!c)
                return -ENOMEM;
        r = key_store_list(m->store, on_listed, c);
        if (r < 0) {
                reply_log(reply_store_error(c, r, "list API keys"));
                return 1;
        }
        TAKE_PTR(c);
        return 1;
}

static void on_got(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(bus_call_freep) BusCall *c = userdata;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const ApiKey *k;
        int r;

        if (error == -ENOENT) {
                reply_log(reply_not_found(c));
                return;
        }
        if (error < 0) {
                reply_log(reply_store_error(c, error, "read an API key"));
                return;
        }
        k = keys[0];
        r = sd_bus_message_new_method_return(c->message, &reply);
        if (r >= 0)
                r = sd_bus_message_append(reply, "sssbttt", k->id, k->name, k->prefix, (int) k->is_active,
                                          (uint64_t) k->created_at, (uint64_t) k->expires_at,
                                          (uint64_t) k->last_used_at);
        if (r >= 0)
                r = sd_bus_message_append_strv(reply, k->claims);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                reply_log(sd_bus_reply_method_errnof(c->message, r, "Failed to build the reply: %m"));
}

static int method_get_key(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        int r;

        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, BUS_UID_INVALID);
        if (!c)
                return -ENOMEM;
        r = bus_read_uuid(message, "key", c->id, error);
        if (r < 0)
                return r;
        r = key_store_get(m->store, c->id, on_got, c);
        if (r < 0) {
                reply_log(reply_store_error(c, r, "read an API key"));
                return 1;
        }
        TAKE_PTR(c);
        return 1;
}

/* ---- UpdateKey, DeactivateKey, DeleteKey ---- */

static void on_updated(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(bus_call_freep) BusCall *c = userdata;

        if (error == -ENOENT) {
                reply_log(reply_not_found(c));
                return;
        }
        if (error < 0) {
                reply_log(reply_store_error(c, error, "update an API key"));
                return;
        }
        log_info("API key %s %s over D-Bus by uid " UID_FMT ".", c->id, c->deactivated ? "deactivated" : "updated",
                 c->uid);
        reply_log(sd_bus_reply_method_return(c->message, NULL));
}

static int read_changes(sd_bus_message *message, ApiKeyUpdate *u, char ***claims, sd_bus_error *error) {
        int r;

        r = sd_bus_message_enter_container(message, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(message, 'e', "sv")) > 0) {
                const char *field, *s;
                uint64_t t;
                int b;

                r = sd_bus_message_read(message, "s", &field);
                if (r < 0)
                        return r;
                if (streq(field, "Name")) {
                        r = sd_bus_message_read(message, "v", "s", &s);
                        if (r < 0)
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Name must be a string (s).");
                        u->name = s; /* points into message, which lives as long as the call */
                } else if (streq(field, "Claims")) {
                        strv_free(*claims);
                        *claims = NULL;
                        r = sd_bus_message_enter_container(message, 'v', "as");
                        if (r >= 0)
                                r = sd_bus_message_read_strv(message, claims);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(message);
                        if (r < 0)
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                         "Claims must be an array of strings (as).");
                        u->set_claims = true;
                        u->claims = *claims;
                } else if (streq(field, "ExpiresAt")) {
                        r = sd_bus_message_read(message, "v", "t", &t);
                        if (r < 0)
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                         "ExpiresAt must be microseconds since the epoch (t).");
                        if (t >= (uint64_t) 253402300800 * USEC_PER_SEC)
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                         "ExpiresAt is beyond the year 9999.");
                        u->set_expires_at = true;
                        u->expires_at = t;
                } else if (streq(field, "IsActive")) {
                        r = sd_bus_message_read(message, "v", "b", &b);
                        if (r < 0)
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "IsActive must be a boolean (b).");
                        u->is_active = !!b;
                } else
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Unknown field \"%s\" (expected Name, Claims, ExpiresAt, IsActive).",
                                                 field);
                r = sd_bus_message_exit_container(message);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(message);
}

static int method_update_key(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(strv_freep) char **claims = NULL;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        ApiKeyUpdate u = API_KEY_UPDATE_INIT;
        const char *msg;
        uid_t uid;
        int r;

        r = bus_require_admin(message, &uid, error);
        if (r < 0)
                return r;
        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, uid);
        if (!c)
                return -ENOMEM;
        r = bus_read_uuid(message, "key", c->id, error);
        if (r < 0)
                return r;
        r = read_changes(message, &u, &claims, error);
        if (r < 0)
                return r;
        if (u.name) {
                msg = api_key_check_name(u.name);
                if (msg)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Name %s", msg);
        }
        if (u.set_claims) {
                msg = api_key_check_claims(claims);
                if (msg)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Claims: %s", msg);
                api_key_claims_uniq(claims);
        }
        c->deactivated = u.is_active == 0;

        r = key_store_update(m->store, c->id, &u, on_updated, c);
        if (r < 0) {
                reply_log(reply_store_error(c, r, "update an API key"));
                return 1;
        }
        TAKE_PTR(c);
        return 1;
}

static int method_deactivate_key(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        ApiKeyUpdate u = API_KEY_UPDATE_INIT;
        uid_t uid;
        int r;

        r = bus_require_admin(message, &uid, error);
        if (r < 0)
                return r;
        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, uid);
        if (!c)
                return -ENOMEM;
        r = bus_read_uuid(message, "key", c->id, error);
        if (r < 0)
                return r;
        u.is_active = false;
        c->deactivated = true;
        r = key_store_update(m->store, c->id, &u, on_updated, c);
        if (r < 0) {
                reply_log(reply_store_error(c, r, "deactivate an API key"));
                return 1;
        }
        TAKE_PTR(c);
        return 1;
}

static void on_deleted(int error, ApiKey *const *keys, size_t n_keys, void *userdata) {
        _cleanup_(bus_call_freep) BusCall *c = userdata;

        if (error == -ENOENT) {
                reply_log(reply_not_found(c));
                return;
        }
        if (error < 0) {
                reply_log(reply_store_error(c, error, "delete an API key"));
                return;
        }
        last_used_forget(c->manager->last_used, c->id);
        log_info("API key %s deleted over D-Bus by uid " UID_FMT ".", c->id, c->uid);
        reply_log(sd_bus_reply_method_return(c->message, NULL));
}

static int method_delete_key(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(bus_call_freep) BusCall *c = NULL;
        uid_t uid;
        int r;

        r = bus_require_admin(message, &uid, error);
        if (r < 0)
                return r;
        r = check_ready(m, error);
        if (r < 0)
                return r;
        c = bus_call_new(m, message, uid);
        if (!c)
                return -ENOMEM;
        r = bus_read_uuid(message, "key", c->id, error);
        if (r < 0)
                return r;
        r = key_store_delete(m->store, c->id, on_deleted, c);
        if (r < 0) {
                reply_log(reply_store_error(c, r, "delete an API key"));
                return 1;
        }
        TAKE_PTR(c);
        return 1;
}

/* Access control is done by the methods themselves (root or group dtask-admin for
 * mutating ones; reading is open to every local user), hence UNPRIVILEGED everywhere. */
static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_NAMES("CreateKey", "sast", SD_BUS_PARAM(name) SD_BUS_PARAM(claims) SD_BUS_PARAM(expires_at_usec),
                                 "ss", SD_BUS_PARAM(id) SD_BUS_PARAM(key), method_create_key,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("ListKeys", NULL, , "a(" KEY_STRUCT_SIGNATURE ")", SD_BUS_PARAM(keys),
                                 method_list_keys, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("GetKey", "s", SD_BUS_PARAM(id), KEY_STRUCT_SIGNATURE,
                                 SD_BUS_PARAM(id) SD_BUS_PARAM(name) SD_BUS_PARAM(prefix) SD_BUS_PARAM(is_active)
                                 SD_BUS_PARAM(created_at_usec) SD_BUS_PARAM(expires_at_usec)
                                 SD_BUS_PARAM(last_used_at_usec) SD_BUS_PARAM(claims),
                                 method_get_key, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("UpdateKey", "sa{sv}", SD_BUS_PARAM(id) SD_BUS_PARAM(changes), NULL, ,
                                 method_update_key, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("DeactivateKey", "s", SD_BUS_PARAM(id), NULL, , method_deactivate_key,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("DeleteKey", "s", SD_BUS_PARAM(id), NULL, , method_delete_key,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* ---- connection ---- */

static void on_bus_state(BusService *service, bool connected, int error, void *userdata) {
        if (connected) {
                log_info("Offering %s on the system bus.", KEYS_BUS_NAME);
                return;
        }
        log_warning_errno(error, "D-Bus interface %s unavailable (%s: %m); serving REST only, retrying every %us.",
                          KEYS_BUS_NAME, bus_service_error_reason(error),
                          (unsigned) (KEYS_BUS_RETRY_USEC / USEC_PER_SEC));
}

int keys_bus_start(Manager *m) {
        int r;

        r = bus_service_new(&m->bus, m->event,
                            &(BusServiceSettings) {
                                    .description = "dtask-keys",
                                    .name = KEYS_BUS_NAME,
                                    .path = KEYS_BUS_PATH,
                                    .interface = KEYS_BUS_INTERFACE,
                                    .vtable = manager_vtable,
                                    .vtable_userdata = m,
                                    .retry_usec = KEYS_BUS_RETRY_USEC,
                                    .state = on_bus_state,
                            });
        if (r < 0)
                return log_error_errno(r, "Failed to set up the D-Bus interface: %m");
        return 0;
}

void keys_bus_stop(Manager *m) {
        m->bus = bus_service_free(m->bus);
}
