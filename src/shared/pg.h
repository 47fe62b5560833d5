/* SPDX-License-Identifier: MIT */
#pragma once

#include <libpq-fe.h>
#include <systemd/sd-event.h>

#include "macro.h"

/* Asynchronous PostgreSQL on sd-event: a small pool of non-blocking libpq
 * connections (PQconnectStart/PQconnectPoll, prepared statements, PQconsumeInput),
 * opened as queries come to wait for one, up to the pool's size; queries are
 * queued while all connections are busy, each with a deadline. A
 * connection that breaks is re-established in the background with backoff, so
 * the pool recovers by itself after the server restarts. Queries are always
 * parameterized; SQL is never built from strings. */

typedef struct PgPool PgPool;
typedef struct PgQuery PgQuery;

/* Result delivery. error == 0: result is PGRES_TUPLES_OK or PGRES_COMMAND_OK.
 * error < 0: -EBADMSG when the server rejected the statement (result is then the
 * error result: see pg_result_sqlstate()), -ETIMEDOUT when the deadline passed,
 * -ECONNRESET when the connection broke while the query ran, -ENOTCONN when no
 * connection could be made before the deadline, -ECANCELED when the pool is freed.
 * result (may be NULL) is borrowed: it is freed after the callback returns. */
typedef void (*PgCallback)(PgPool *pool, const PGresult *result, int error, void *userdata);

typedef struct PgPoolSettings {
        unsigned size;                 /* connections at most (opened when queries wait), 0: 4 */
        uint64_t default_timeout_usec; /* query deadline when a query passes 0; 0: 10 s */
        unsigned max_queued;           /* bounded queue of waiting queries, 0: 1024; beyond → -EAGAIN */
} PgPoolSettings;

/* conninfo: a libpq URI/keyword string, or an Npgsql-style connection string
 * ("Host=…;Port=…;Database=…;Username=…;Password=…", compat) which is converted. */
int pg_pool_new(PgPool **ret, sd_event *event, const char *conninfo, const PgPoolSettings *settings);
PgPool *pg_pool_free(PgPool *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(PgPool *, pg_pool_free);

/* true when at least one connection is established (for /readyz). */
bool pg_pool_is_connected(PgPool *p);

/* Queues a statement with text parameters (values[i] may be NULL for SQL NULL; sql and
 * values are copied). The callback is always called exactly once, later, from the event
 * loop (never from within this call), unless the query is cancelled with
 * pg_query_cancel(). ret_query (optional) is a handle valid until the callback ran.
 * timeout_usec: 0 is the pool's default, USEC_INFINITY none. A statement that runs past
 * its deadline costs its connection (it is dropped and re-established: PQcancel() would
 * block). Returns -EAGAIN when max_queued queries wait already, -ESHUTDOWN while the pool
 * is being freed, -EINVAL for bad arguments. The callback may queue or cancel queries and
 * may free the pool. */
int pg_pool_query(PgPool *p, const char *sql, int n_params, const char *const *values,
                  uint64_t timeout_usec, PgCallback callback, void *userdata, PgQuery **ret_query);
/* The callback will not be called; the statement may still run on the server. */
void pg_query_cancel(PgQuery *q);

/* Several statements run in order on one connection inside BEGIN … COMMIT; the
 * callback gets the result of the last one. Any failure rolls back, and the callback gets
 * the failing statement's error result (-EBADMSG). -ETIMEDOUT/-ECONNRESET while COMMIT
 * was in flight leave the outcome unknown. */
typedef struct PgStatement {
        const char *sql;
        int n_params;
        const char *const *values;
} PgStatement;
int pg_pool_transaction(PgPool *p, const PgStatement *statements, size_t n_statements,
                        uint64_t timeout_usec, PgCallback callback, void *userdata, PgQuery **ret_query);

/* LISTEN on channels over a dedicated connection that reconnects by itself; the
 * callback runs for every NOTIFY. After a reconnect, on_reconnect (optional) runs so the
 * owner can re-check state it may have missed: each time the LISTENs are in place again
 * after the connection was lost or an attempt failed (not after a first attempt that
 * succeeded). Channel names are quoted identifiers (case-sensitive, as pg_notify()). */
typedef struct PgListener PgListener;
typedef void (*PgNotifyCallback)(PgListener *l, const char *channel, const char *payload, void *userdata);
typedef void (*PgReconnectCallback)(PgListener *l, void *userdata);
int pg_listener_new(PgListener **ret, sd_event *event, const char *conninfo, const char *const *channels,
                    size_t n_channels, PgNotifyCallback callback, PgReconnectCallback on_reconnect,
                    void *userdata);
PgListener *pg_listener_free(PgListener *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(PgListener *, pg_listener_free);
/* on_read (optional) sees every notification the moment it is read from the connection,
 * before its turn to be delivered, and even when copying it for delivery fails: for state
 * that must not lag behind (a cache to invalidate). It must not free the listener. */
void pg_listener_set_read_callback(PgListener *l, PgNotifyCallback on_read);
/* Whether the LISTENs are in place now: notifications of changes committed from here on arrive. */
bool pg_listener_is_ready(const PgListener *l);

/* Helpers. */
const char *pg_result_sqlstate(const PGresult *r); /* NULL if none */
/* "23505" unique_violation etc. */
#define PG_UNIQUE_VIOLATION "23505"
/* Converts an Npgsql connection string to libpq keyword/value form; other strings are copied. */
int pg_conninfo_normalize(const char *s, char **ret);
/* Masks passwords (password, sslpassword; Pwd/Psw in Npgsql form) in a conninfo of any
 * of the three forms with "***", for logging. Lenient: a malformed string is still
 * masked wherever some reading of it has a password. */
int pg_conninfo_redact(const char *s, char **ret);

/* Migrations (blocking; run at start-up before the event loop serves, and by dtask-migrate):
 * applies every sql/NNNN-*.sql file in dir not yet recorded in table schema_migrations, in
 * order, each in its own transaction, all under a session advisory lock so that several
 * daemons starting at once apply each migration exactly once. ret_applied: number applied.
 * File names: four or more digits, '-', a name, ".sql"; other files are ignored. A file must
 * not contain transaction control (BEGIN/COMMIT). On failure *ret_error (optional, free())
 * says what failed, naming the file and quoting the server (never the password); errors:
 * -ECONNREFUSED (connect), -EBADMSG (server rejected SQL), -ENOTCONN (connection lost),
 * -ENOENT etc. (directory/files), -EEXIST (two files with one version). */
int pg_migrate(const char *conninfo, const char *dir, unsigned *ret_applied, char **ret_error);
