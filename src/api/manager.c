/* SPDX-License-Identifier: MIT */
#include <signal.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "auth.h"
#include "bus.h"
#include "daemon-util.h"
#include "dispatch.h"
#include "log.h"
#include "manager.h"
#include "metrics.h"
#include "routes.h"
#include "task-cache.h"
#include "task-store.h"
#include "waiters.h"


Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* Order matters: requests first (suspended ones are answered 503; their calls are
         * freed or detached), then the sources of callbacks into those calls (keys client,
         * pool: pending operations complete with -ECANCELED), then what the callbacks use. */
        m->bus = api_bus_free(m->bus);
        m->http = http_server_free(m->http);
        m->auth = auth_free(m->auth);
        m->listener = pg_listener_free(m->listener);
        m->migrator = migrator_free(m->migrator);
        m->dispatch = dispatch_free(m->dispatch);
        m->pool = pg_pool_free(m->pool);
        m->store = task_store_free(m->store);
        m->cache = task_cache_free(m->cache);
        m->waiters = waiters_free(m->waiters);
        m->metrics = metrics_free(m->metrics);
        free(m->routes);

        erase_and_free(m->conninfo);
        erase_and_free(m->tls_key);
        free(m->tls_certificate);
        free(m->sql_dir);
        free(m->listen);

        config_free(m->config);
        sd_event_unref(m->event);
        return mfree(m);
}

static int config_error(const char *message) {
        log_error("Invalid configuration: %s", message);
        return -EINVAL;
}

static int manager_configure(Manager *m, const ManagerOptions *o) {
        static const char *const required[] = { "DATABASE_URL", NULL };
        _cleanup_free_ char *error = NULL;
        const Config *c = m->config;
        const char *s;
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

        m->limits = (TaskLimits) {
                .max_code_size = config_uint(c, "MAX_CODE_SIZE"),
                .max_input_size = config_uint(c, "MAX_INPUT_SIZE"),
                .max_ttl = config_uint(c, "MAX_TTL"),
                /* what a worker may report: its captured output, with room for annotations */
                .max_output_size = 2 * config_uint(c, "SANDBOX_OUTPUT_MAX") + 64 * 1024,
        };
        m->max_wait = config_uint(c, "MAX_WAIT");
        m->lease_duration = config_uint(c, "LEASE_DURATION");
        m->idempotency_retention = config_uint(c, "IDEMPOTENCY_RETENTION");
        m->db_timeout = config_uint(c, "DATABASE_TIMEOUT");
        m->max_attempts = (unsigned) config_uint(c, "MAX_ATTEMPTS");
        r = task_cache_new(&m->cache, config_uint(c, "TASK_CACHE_SIZE"), config_uint(c, "TASK_CACHE_TTL"));
        if (r < 0)
                return log_oom();

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

        r = metrics_new(&m->metrics, config_string(c, "METRICS_ALLOW"));
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0) {
                log_error("Invalid configuration: METRICS_ALLOW (%s): \"%s\" is not a list of addresses or "
                          "CIDR prefixes (e.g. \"127.0.0.0/8, ::1\", or \"*\").",
                          config_source(c, "METRICS_ALLOW"), config_string(c, "METRICS_ALLOW"));
                return -EINVAL;
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

        log_info("Received %s, stopping.", strsignal((int) si->ssi_signo));
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Stopping.");
        return sd_event_exit(m->event, 0);
}

void manager_task_changed(Manager *m, const char *id, TaskStatus status, unsigned attempt) {
        log_debug("Task %s is now %s (attempt %u).", id, strna(task_status_to_string(status)), attempt);
        if (task_status_is_terminal(status))
                waiters_notify(m->waiters, id, NULL);
        api_bus_task_changed(m->bus, id, status);
}

/* Payloads on API_NOTIFY_CHANNEL (sql/0001, sql/0005): "<id> <status> <attempt>" for a
 * change, "<id> deleted", and "*" when the table was truncated. */

/* The task id a payload starts with, normalized into id; returns what follows it (after its
 * space), or NULL when the payload does not start with a task id. */
static const char *payload_task_id(const char *payload, char id[static UUID_STRING_MAX]) {
        char text[UUID_STRING_MAX];
        size_t n = strcspn(payload, " ");

        if (n != UUID_STRING_MAX - 1)
                return NULL;
        memcpy(text, payload, n);
        text[n] = '\0';
        if (uuid_normalize(text, id) < 0)
                return NULL;
        return payload + n + (payload[n] == ' ');
}

/* Runs as each notification is read, before its turn to be delivered: the cache must not
 * serve a task that PostgreSQL has already said changed. */
static void on_notify_read(PgListener *l, const char *channel, const char *payload, void *userdata) {
        Manager *m = userdata;
        char id[UUID_STRING_MAX];

        if (payload_task_id(payload, id))
                task_cache_forget(m->cache, id);
        else
                task_cache_clear(m->cache); /* "*", or which task cannot be told: forget them all */
}

static void on_notify(PgListener *l, const char *channel, const char *payload, void *userdata) {
        Manager *m = userdata;
        char id[UUID_STRING_MAX], status_buf[8];
        const char *rest;
        unsigned attempt;
        int status;

        if (streq(payload, "*")) {
                waiters_notify_all(m->waiters);
                api_bus_refresh_counts(m->bus);
                return;
        }
        rest = payload_task_id(payload, id);
        if (rest && sscanf(rest, "%7s", status_buf) == 1 && streq(status_buf, "deleted")) {
                log_debug("Task %s was deleted.", id);
                waiters_notify(m->waiters, id, NULL); /* they ask again, and answer 404 */
                return;
        }
        if (!rest || sscanf(rest, "%7s %u", status_buf, &attempt) != 2) {
                log_debug("Ignoring a malformed notification on %s: \"%s\"", channel, payload);
                return;
        }
        status = task_status_from_string(status_buf);
        if (status < 0) {
                log_debug("Ignoring a notification with unknown status on %s: \"%s\"", channel, payload);
                return;
        }
        manager_task_changed(m, id, (TaskStatus) status, attempt);
}

static void on_listener_reconnect(PgListener *l, void *userdata) {
        Manager *m = userdata;

        /* Changes announced while we were not listening are lost: everybody looks again. */
        log_info("Listening for task changes again; re-checking %zu waiting request(s).", waiters_count(m->waiters));
        task_cache_clear(m->cache);
        waiters_notify_all(m->waiters);
        api_bus_refresh_counts(m->bus);
}

static void on_request_completed(const char *route, HttpMethod method, unsigned status, uint64_t duration_usec,
                                 void *userdata) {
        Manager *m = userdata;

        metrics_request_completed(m->metrics, route, method, status, duration_usec);
}

static void notify_ready(Manager *m) {
        (void) sd_notifyf(false, "READY=1\nSTATUS=Serving tasks%s.",
                          m->bus ? "" : " (D-Bus unavailable)");
}

/* Serving starts once the database is usable: until then systemd's sockets keep the
 * connections in their backlog and dbus-daemon holds activating calls, so the first
 * request after a cold start waits instead of failing. */
static int manager_serve(Manager *m) {
        bool activated = sd_listen_fds(false) > 0; /* asked before http_server_listen() consumes $LISTEN_FDS */
        int r;

        r = http_server_listen(m->http, m->listen, API_DEFAULT_LISTEN);
        if (r < 0)
                return log_error_errno(r, "Failed to listen on %s: %m",
                                       activated ? "the sockets from systemd" : m->listen ?: API_DEFAULT_LISTEN);
        log_info("Listening on %s%s.", activated ? "sockets from systemd" : m->listen ?: API_DEFAULT_LISTEN,
                 m->tls_certificate ? " (HTTPS)" : "");
        return api_bus_new(&m->bus, m);
}

static void on_migrated(Migrator *migrator, int error, void *userdata) {
        Manager *m = userdata;

        if (error < 0) {
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
        api_bus_refresh_counts(m->bus);
        notify_ready(m);
}

int manager_start(Manager *m, const ManagerOptions *o) {
        static const char *const channels[] = { API_NOTIFY_CHANNEL };
        PgPoolSettings pool_settings = {
                .size = (unsigned) config_uint(m->config, "DATABASE_POOL_SIZE"),
                .default_timeout_usec = m->db_timeout,
        };
        HttpServerSettings http_settings;
        const char *listen = o ? o->listen : NULL;
        int r;

        r = daemon_event_new(&m->event, on_signal, m);
        if (r < 0)
                return r;

        r = waiters_new(&m->waiters);
        if (r < 0)
                return log_oom();

        r = pg_pool_new(&m->pool, m->event, m->conninfo, &pool_settings);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the database pool: %m");
        r = task_store_new(&m->store, m->pool, m->db_timeout, m->cache);
        if (r < 0)
                return log_oom();
        r = pg_listener_new(&m->listener, m->event, m->conninfo, channels, ELEMENTSOF(channels), on_notify,
                            on_listener_reconnect, m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up listening for task changes: %m");
        pg_listener_set_read_callback(m->listener, on_notify_read);

        r = auth_new(&m->auth, m->event, config_string(m->config, "KEYS_URL"), config_uint(m->config, "KEY_CACHE_TTL"));
        if (r < 0)
                return log_error_errno(r, "Failed to set up the client of dtask-keys at %s: %m",
                                       config_string(m->config, "KEYS_URL"));

        r = dispatch_new(&m->dispatch, m->event, m->config, m->store, m->metrics);
        if (r == -EPROTONOSUPPORT)
                return log_error_errno(r, "AMQP_URL: amqps:// is not supported; use amqp:// (e.g. over a private "
                                       "network or a local TLS tunnel).");
        if (r < 0)
                return log_error_errno(r, "Failed to set up publishing to RabbitMQ (check AMQP_URL): %m");

        r = routes_new(m, &m->routes, &m->n_routes);
        if (r < 0)
                return log_oom();
        http_settings = (HttpServerSettings) {
                .routes = m->routes,
                .n_routes = m->n_routes,
                .max_body_size = TASK_SMALL_BODY_LIMIT,
                .connection_limit = (unsigned) config_uint(m->config, "HTTP_MAX_CONNECTIONS"),
                .connection_timeout = (unsigned) (config_uint(m->config, "HTTP_TIMEOUT") / USEC_PER_SEC),
                .tls_certificate = m->tls_certificate,
                .tls_key = m->tls_key,
                .completed = on_request_completed,
                .userdata = m,
        };
        r = http_server_new(&m->http, m->event, &http_settings);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the HTTP server%s: %m",
                                       m->tls_certificate ? " (check TLS_CERTIFICATE and TLS_KEY)" : "");
        if (listen) {
                m->listen = strdup(listen);
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
