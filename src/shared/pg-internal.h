/* SPDX-License-Identifier: MIT */
#pragma once

/* Private to pg*.c: the asynchronous connection driver shared by PgPool and PgListener.
 *
 * A PgLink owns one libpq connection and its sd-event sources. It connects with
 * PQconnectStartParams() + PQconnectPoll(), re-creating the io source on every poll
 * step (libpq may close the socket and open another one, possibly with the same fd
 * number, e.g. when it tries the next host or retries without SSL), and enforces a
 * connect timeout (PQconnectPoll ignores connect_timeout). Once connected the socket is
 * non-blocking and every io event is handed to the owner's on_io(). On failure the
 * owner calls pg_link_fail(), which closes the connection and reconnects after an
 * exponential backoff (100 ms … 5 s), reset by every successful connection.
 *
 * Rule for every handler in pg*.c: user callbacks are the last thing a handler does,
 * so a callback may free the pool or listener it was called from. */

#include <libpq-fe.h>
#include <systemd/sd-event.h>

#include "macro.h"

#define PG_BACKOFF_MIN_USEC (100 * USEC_PER_MSEC)
#define PG_BACKOFF_MAX_USEC (5 * USEC_PER_SEC)
#define PG_CONNECT_TIMEOUT_DEFAULT_USEC (10 * USEC_PER_SEC)

typedef enum PgLinkState {
        PG_LINK_DOWN,       /* not connected; a reconnect may be scheduled */
        PG_LINK_CONNECTING, /* PQconnectPoll() in progress */
        PG_LINK_UP,         /* established, non-blocking, owner gets io */
} PgLinkState;

typedef struct PgLink PgLink;

struct PgLink {
        sd_event *event;       /* borrowed from the owner */
        const char *conninfo;  /* borrowed, normalized (contains the password) */
        const char *redacted;  /* borrowed, for debug logs */
        const char *description;
        uint64_t connect_timeout_usec;

        PgLinkState state;
        PGconn *conn;
        sd_event_source *io;
        sd_event_source *timer; /* connect timeout while CONNECTING, backoff while DOWN */
        uint64_t backoff_usec;
        unsigned n_failures;    /* failed attempts and lost connections, ever */

        void (*on_up)(PgLink *l, void *userdata);
        void (*on_io)(PgLink *l, uint32_t revents, void *userdata);
        void *userdata;
};

void pg_link_init(PgLink *l, sd_event *event, const char *conninfo, const char *redacted,
                  uint64_t connect_timeout_usec, const char *description,
                  void (*on_up)(PgLink *l, void *userdata),
                  void (*on_io)(PgLink *l, uint32_t revents, void *userdata), void *userdata);
/* Starts connecting now; failures are handled inside (backoff). */
void pg_link_start(PgLink *l);
/* Closes the connection (sources first, then PQfinish) and cancels any scheduled reconnect. */
void pg_link_close(PgLink *l);
/* pg_link_close() and releases the timer: before the memory of the link goes away. */
void pg_link_done(PgLink *l);
/* Closes the connection and schedules a reconnect after the current backoff. */
void pg_link_fail(PgLink *l, const char *why);
/* Sets the io events to wait for while UP. */
int pg_link_watch(PgLink *l, uint32_t events);

static inline bool pg_link_is_up(const PgLink *l) {
        return l->state == PG_LINK_UP;
}

/* libpq's own default, gssencmode=prefer, makes every TCP connect ask the Kerberos
 * library for a credential cache first (loading and initializing libkrb5 and
 * libgssapi_krb5, reading krb5.conf), although nearly nobody runs PostgreSQL with GSSAPI
 * encryption. GSSAPI authentication is unaffected; users of GSSAPI encryption put
 * gssencmode=prefer or =require into DATABASE_URL, which overrides this. */
#define PG_DEFAULT_GSSENCMODE "disable"

/* Conninfo handling shared by the pool, the listener and the migration runner. */
int pg_conninfo_connect_timeout(const char *conninfo, uint64_t *ret);
/* Keyword/value arrays for PQconnect*Params(): our defaults, then the conninfo as an
 * expanded dbname so that everything in it overrides the defaults. */
void pg_connect_params(const char *conninfo, const char *keywords[static 8], const char *values[static 8]);
void pg_notice_processor(void *arg, const char *message);
