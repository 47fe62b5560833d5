/* SPDX-License-Identifier: MIT */
#include <signal.h>
#include <systemd/sd-daemon.h>

#include "bus.h"
#include "daemon-util.h"
#include "json-util.h"
#include "log.h"
#include "manager.h"
#include "rest.h"


Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* Order matters: requests first (suspended ones are answered 503 and forgotten), then
         * the pool (pending queries complete with -ECANCELED), then what their callbacks use. */
        keys_bus_stop(m);
        m->http = http_server_free(m->http);
        m->migrator = migrator_free(m->migrator);
        m->pool = pg_pool_free(m->pool);
        m->last_used = last_used_free(m->last_used);
        m->store = key_store_free(m->store);
        ratelimit_free(m->login_limit);
        ratelimit_free(m->validate_limit);
        address_list_free(m->validate_exempt);

        erase_and_free(m->conninfo);
        erase_and_free(m->jwt_secret);
        erase_and_free(m->tls_key);
        erase_and_free(m->admin_password_hash);
        free(m->tls_certificate);
        free(m->sql_dir);
        free(m->listen);
        free(m->admin_username);
        strv_free(m->admin_claims);
        api_key_pepper_done(&m->pepper);
        sodium_memzero(m->compare_key, sizeof m->compare_key);
        sodium_memzero(m->admin_password_digest, sizeof m->admin_password_digest);

        config_free(m->config);
        sd_event_unref(m->event);
        return mfree(m);
}

/* ADMIN_CLAIMS: ';'-separated, each trimmed, empty ones dropped. */
static int parse_claims_list(const char *s, char ***ret) {
        _cleanup_(strv_freep) char **l = NULL;
        size_t n = 0;

        l = calloc(1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        while (s && *s) {
                size_t len = strcspn(s, ";");
                const char *b = s, *e = s + len;
                char **nl;

                while (b < e && strchr(" \t", *b))
                        b++;
                while (e > b && strchr(" \t", e[-1]))
                        e--;
                if (e > b) {
                        nl = realloc(l, (n + 2) * sizeof(char *));
                        if (!nl)
                                return -ENOMEM;
                        l = nl;
                        l[n] = strndup(b, (size_t) (e - b));
                        if (!l[n])
                                return -ENOMEM;
                        l[++n] = NULL;
                }
                s += len;
                if (*s == ';')
                        s++;
        }
        api_key_claims_uniq(l);
        *ret = TAKE_PTR(l);
        return 0;
}

static int config_error(const char *message) {
        log_error("Invalid configuration: %s", message);
        return -EINVAL;
}

static int manager_configure(Manager *m, const ManagerOptions *o) {
        static const char *const required[] = { "DATABASE_URL", "JWT_SECRET", "KEY_PEPPER", NULL };
        _cleanup_free_ char *error = NULL;
        const Config *c = m->config;
        const char *s, *user, *password, *hash;
        int r;

        s = config_string(c, "LOG_LEVEL");
        if (log_set_max_level_from_string(s) < 0) {
                log_error("Invalid configuration: LOG_LEVEL (%s): unknown level \"%s\" (emerg…debug or 0…7).",
                          config_source(c, "LOG_LEVEL"), s);
                return -EINVAL;
        }

        r = config_require(c, required, &error);
        if (r < 0)
                return config_error(error ?: "a required key is not set");

        m->conninfo = strdup(config_string(c, "DATABASE_URL"));
        if (!m->conninfo)
                return log_oom();

        s = config_string(c, "JWT_SECRET");
        if (strlen(s) < JWT_SECRET_MIN) {
                log_error("Invalid configuration: JWT_SECRET (%s) is %zu bytes long; at least %d bytes are required "
                          "(e.g. openssl rand -base64 48).",
                          config_source(c, "JWT_SECRET"), strlen(s), JWT_SECRET_MIN);
                return -EINVAL;
        }
        m->jwt_secret = strdup(s);
        if (!m->jwt_secret)
                return log_oom();
        m->jwt = (JwtSettings) {
                .secret = m->jwt_secret,
                .secret_size = strlen(m->jwt_secret),
                .issuer = KEYS_JWT_ISSUER,
                .audience = KEYS_JWT_AUDIENCE,
        };
        m->jwt_lifetime = config_uint(c, "JWT_LIFETIME");

        s = config_string(c, "KEY_PEPPER");
        if (api_key_pepper_init(&m->pepper, s, strlen(s)) < 0) {
                log_error("Invalid configuration: KEY_PEPPER (%s) is %zu bytes long; at least %d bytes are required "
                          "(e.g. openssl rand -base64 32). Changing it invalidates every stored key.",
                          config_source(c, "KEY_PEPPER"), strlen(s), API_KEY_PEPPER_MIN);
                return -EINVAL;
        }

        /* Admin login: all of user and one password form, or nothing (then keys are managed over D-Bus only). */
        user = config_string(c, "ADMIN_USERNAME");
        password = config_string(c, "ADMIN_PASSWORD");
        hash = config_string(c, "ADMIN_PASSWORD_HASH");
        if (!isempty(password) && !isempty(hash))
                return config_error("ADMIN_PASSWORD and ADMIN_PASSWORD_HASH are both set; set only one of them.");
        if (isempty(user) && (!isempty(password) || !isempty(hash)))
                return config_error("ADMIN_USERNAME is not set, but an admin password is.");
        if (!isempty(user) && isempty(password) && isempty(hash))
                return config_error("ADMIN_USERNAME is set, but neither ADMIN_PASSWORD nor ADMIN_PASSWORD_HASH is.");
        if (!isempty(hash)) {
                if (!strneq(hash, "$argon2id$", STRLEN("$argon2id$")) ||
                    crypto_pwhash_str_needs_rehash(hash, crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN) < 0)
                        return config_error("ADMIN_PASSWORD_HASH is not an argon2id hash in the PHC string format "
                                            "($argon2id$v=19$m=…,t=…,p=…$salt$hash).");
                m->admin_password_hash = strdup(hash);
                if (!m->admin_password_hash)
                        return log_oom();
        }
        randombytes_buf(m->compare_key, sizeof m->compare_key);
        if (!isempty(user)) {
                m->admin_username = strdup(user);
                if (!m->admin_username)
                        return log_oom();
                crypto_generichash(m->admin_username_digest, sizeof m->admin_username_digest,
                                   (const unsigned char *) user, strlen(user), m->compare_key, sizeof m->compare_key);
                if (!isempty(password))
                        crypto_generichash(m->admin_password_digest, sizeof m->admin_password_digest,
                                           (const unsigned char *) password, strlen(password), m->compare_key,
                                           sizeof m->compare_key);
                m->admin_login_enabled = true;
        } else
                log_warning("ADMIN_USERNAME is not set: admin login is disabled; manage keys over D-Bus (%s).",
                            KEYS_BUS_NAME);

        r = parse_claims_list(config_string(c, "ADMIN_CLAIMS"), &m->admin_claims);
        if (r < 0)
                return log_oom();
        if (m->admin_login_enabled && !strv_contains(m->admin_claims, KEYS_ADMIN_CLAIM))
                log_warning("ADMIN_CLAIMS does not contain %s: admin tokens will not be able to manage keys.",
                            KEYS_ADMIN_CLAIM);

        if (config_is_set(c, "TLS_CERTIFICATE") != config_is_set(c, "TLS_KEY"))
                return config_error("TLS_CERTIFICATE and TLS_KEY must be set together.");
        if (config_is_set(c, "TLS_CERTIFICATE")) {
                r = daemon_read_pem("TLS_CERTIFICATE", config_string(c, "TLS_CERTIFICATE"), &m->tls_certificate);
                if (r < 0)
                        return r;
                r = daemon_read_pem("TLS_KEY", config_string(c, "TLS_KEY"), &m->tls_key);
                if (r < 0)
                        return r;
        }

        r = ratelimit_new(&m->login_limit, (unsigned) config_uint(c, "LOGIN_RATE_LIMIT"), RATELIMIT_MAX_ADDRESSES_DEFAULT);
        if (r < 0)
                return log_oom();
        r = ratelimit_new(&m->validate_limit, (unsigned) config_uint(c, "VALIDATE_RATE_LIMIT"),
                          RATELIMIT_MAX_ADDRESSES_DEFAULT);
        if (r < 0)
                return log_oom();

        {
                _cleanup_free_ char *bad = NULL;

                r = address_list_parse(&m->validate_exempt, config_string(c, "VALIDATE_RATE_LIMIT_EXEMPT"), &bad);
                if (r == -ENOMEM)
                        return log_oom();
                if (r < 0) {
                        log_error("Invalid configuration: VALIDATE_RATE_LIMIT_EXEMPT (%s): \"%s\" is not an address "
                                  "or CIDR prefix.",
                                  config_source(c, "VALIDATE_RATE_LIMIT_EXEMPT"), strna(bad));
                        return r;
                }
        }

        m->sql_dir = strdup(daemon_sql_dir(o ? o->sql_dir : NULL));
        if (!m->sql_dir)
                return log_oom();
        return 0;
}

int manager_new(Manager **ret, const ManagerOptions *o) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = calloc(1, sizeof *m);
        if (!m)
                return log_oom();

        r = daemon_config_load(&m->config, o ? o->config_path : NULL);
        if (r < 0)
                return r;
        r = manager_configure(m, o);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        log_info("Received SIG%s, stopping.", strna(sigabbrev_np((int) si->ssi_signo)));
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Stopping.");
        return sd_event_exit(m->event, 0);
}

static void notify_ready(Manager *m) {
        (void) sd_notifyf(false, "READY=1\nSTATUS=Serving API keys%s.",
                          bus_service_get_bus(m->bus) ? " (REST and D-Bus)" : " (REST; D-Bus unavailable)");
}

/* Serving starts once the database is usable: until then systemd's sockets keep the
 * connections in their backlog and dbus-daemon holds activating calls, so the first
 * request after a cold start waits instead of failing. */
static int manager_serve(Manager *m) {
        bool activated = !isempty(getenv("LISTEN_FDS"));
        int r;

        r = http_server_listen(m->http, m->listen, KEYS_DEFAULT_LISTEN);
        if (r < 0)
                return log_error_errno(r, "Failed to listen on %s: %m",
                                       m->listen ?: activated ? "the sockets from systemd" : KEYS_DEFAULT_LISTEN);
        log_info("Serving HTTP%s on %s.", m->tls_certificate ? "S" : "",
                 m->listen ?: activated ? "the sockets from systemd" : KEYS_DEFAULT_LISTEN);
        return keys_bus_start(m);
}

/* The pool answered (or not) after the migrations: only then are we ready. */
static void on_probe(PgPool *pool, const PGresult *result, int error, void *userdata) {
        Manager *m = userdata;

        if (error == -ECANCELED)
                return;
        if (error < 0) {
                log_debug_errno(error, "Database probe failed, retrying: %m");
                if (migrator_retry(m->migrator) < 0)
                        (void) sd_event_exit(m->event, error);
                return;
        }
        m->migrated = true;
        m->migrator = migrator_free(m->migrator);
        error = manager_serve(m);
        if (error < 0) {
                (void) sd_event_exit(m->event, error);
                return;
        }
        notify_ready(m);
}

static void on_migrated(Migrator *migrator, int error, void *userdata) {
        Manager *m = userdata;

        if (error >= 0)
                error = pg_pool_query(m->pool, "SELECT 1", 0, NULL, 0, on_probe, m, NULL);
        if (error < 0)
                (void) sd_event_exit(m->event, error);
}

int manager_start(Manager *m, const ManagerOptions *o) {
        PgPoolSettings pool_settings = {
                .size = (unsigned) config_uint(m->config, "DATABASE_POOL_SIZE"),
                .default_timeout_usec = config_uint(m->config, "DATABASE_TIMEOUT"),
        };
        int r;

        r = daemon_event_new(&m->event, on_signal, m);
        if (r < 0)
                return r;

        r = pg_pool_new(&m->pool, m->event, m->conninfo, &pool_settings);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the database pool: %m");
        r = key_store_new(&m->store, m->pool, &m->pepper, config_uint(m->config, "DATABASE_TIMEOUT"));
        if (r < 0)
                return log_error_errno(r, "Failed to set up the key store: %m");
        r = last_used_new(&m->last_used, m->event, m->store);
        if (r < 0)
                return log_error_errno(r, "Failed to set up last-use tracking: %m");

        r = rest_server_new(m, &m->http);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the HTTP server: %m");
        if (o && o->listen) {
                m->listen = strdup(o->listen);
                if (!m->listen)
                        return log_oom();
        }

        return migrator_new(&m->migrator, m->event, m->conninfo, m->sql_dir, on_migrated, m);
}

int manager_run(Manager *m) {
        int r;

        r = sd_event_loop(m->event);
        (void) sd_notify(false, "STOPPING=1");
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");
        return r;
}
