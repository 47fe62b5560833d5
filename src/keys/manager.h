/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "address-list.h"
#include "bus-util.h"
#include "config.h"
#include "daemon-util.h"
#include "http-server.h"
#include "jwt-util.h"
#include "key-util.h"
#include "last-used.h"
#include "macro.h"
#include "migrator.h"
#include "pg.h"
#include "ratelimit.h"
#include "store.h"

#define KEYS_DEFAULT_LISTEN "127.0.0.1:5215"
#define KEYS_JWT_ISSUER "dtask-keys"
#define KEYS_JWT_AUDIENCE "dtask-keys"
#define KEYS_ADMIN_CLAIM "ManageApiKey"
#define KEYS_BUS_NAME "org.dtask.Keys1"
#define KEYS_BUS_PATH "/org/dtask/Keys1"
#define KEYS_BUS_INTERFACE "org.dtask.Keys1.Manager"

typedef struct ManagerOptions {
        const char *config_path; /* NULL: default */
        const char *listen;      /* NULL: socket activation or the default address */
        const char *sql_dir;     /* NULL: $DTASK_SQL_DIR or the installed directory */
} ManagerOptions;

typedef struct Manager {
        sd_event *event;
        Config *config;

        HttpServer *http;
        char *tls_certificate, *tls_key; /* PEM text; the key is a secret */

        char *conninfo; /* secret */
        char *sql_dir;
        char *listen;      /* --listen=, NULL: socket activation or the default */
        PgPool *pool;
        KeyStore *store;
        LastUsed *last_used;
        bool migrated;
        Migrator *migrator;

        RateLimit *login_limit;
        RateLimit *validate_limit;
        AddressList *validate_exempt;

        /* Admin login. The configured password is kept only as a keyed hash under a
         * per-process random key, so that comparing it is constant-time. */
        char *admin_username;
        bool admin_login_enabled;
        uint8_t compare_key[32];
        uint8_t admin_username_digest[32];
        uint8_t admin_password_digest[32];
        char *admin_password_hash; /* argon2id string, or NULL */
        char **admin_claims;

        char *jwt_secret; /* secret */
        JwtSettings jwt;
        uint64_t jwt_lifetime;

        ApiKeyPepper pepper;

        BusService *bus;
} Manager;

/* Reads and checks the configuration; errors are logged here and name the key. */
int manager_new(Manager **ret, const ManagerOptions *options);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

/* Listens, connects, migrates (retrying in the background while the database is
 * unreachable) and notifies READY=1 once migrations are applied. */
int manager_start(Manager *m, const ManagerOptions *options);
int manager_run(Manager *m);

/* true when API requests may be served (migrations applied). */
static inline bool manager_is_ready(const Manager *m) {
        return m->migrated;
}

/* Whether an error of the store means that the database is unavailable (→ 503). */
static inline bool error_is_unavailable(int error) {
        return error == -ENOTCONN || error == -ETIMEDOUT || error == -ECONNRESET || error == -ECONNREFUSED ||
               error == -EAGAIN || error == -EHOSTUNREACH || error == -ECANCELED || error == -ESHUTDOWN;
}
