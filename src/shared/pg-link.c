/* SPDX-License-Identifier: MIT */
/* PgLink: one libpq connection driven asynchronously on sd-event (see pg-internal.h). */

#include <errno.h>
#include <sys/epoll.h>
#include <time.h>

#include "log.h"
#include "pg-internal.h"

static int link_io_handler(sd_event_source *s, int fd, uint32_t revents, void *userdata);
static int link_timer_handler(sd_event_source *s, uint64_t usec, void *userdata);

void pg_link_init(PgLink *l, sd_event *event, const char *conninfo, const char *redacted,
                  uint64_t connect_timeout_usec, const char *description,
                  void (*on_up)(PgLink *l, void *userdata),
                  void (*on_io)(PgLink *l, uint32_t revents, void *userdata), void *userdata) {
        *l = (PgLink) {
                .event = event,
                .conninfo = conninfo,
                .redacted = redacted,
                .description = description,
                .connect_timeout_usec = connect_timeout_usec ?: PG_CONNECT_TIMEOUT_DEFAULT_USEC,
                .state = PG_LINK_DOWN,
                .backoff_usec = PG_BACKOFF_MIN_USEC,
                .on_up = on_up,
                .on_io = on_io,
                .userdata = userdata,
        };
}

static int link_arm_timer(PgLink *l, uint64_t delay) {
        uint64_t now;
        int r;

        r = sd_event_now(l->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;

        if (!l->timer) {
                r = sd_event_add_time(l->event, &l->timer, CLOCK_MONOTONIC, now + delay, USEC_PER_MSEC,
                                      link_timer_handler, l);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(l->timer, l->description);
        } else {
                r = sd_event_source_set_time(l->timer, now + delay);
                if (r < 0)
                        return r;
        }
        return sd_event_source_set_enabled(l->timer, SD_EVENT_ONESHOT);
}

static void link_drop_io(PgLink *l) {
        /* Always before libpq closes the socket: the fd number may be reused at once by
         * another connection, whose epoll registration our EPOLL_CTL_DEL would remove. */
        l->io = sd_event_source_disable_unref(l->io);
}

int pg_link_watch(PgLink *l, uint32_t events) {
        int r;

        if (l->io)
                return sd_event_source_set_io_events(l->io, events);

        int fd = PQsocket(l->conn);
        if (fd < 0)
                return -EBADF;

        r = sd_event_add_io(l->event, &l->io, fd, events, link_io_handler, l);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(l->io, l->description);
        return 0;
}

void pg_link_close(PgLink *l) {
        link_drop_io(l);
        if (l->timer)
                (void) sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
        if (l->conn) {
                PQfinish(l->conn);
                l->conn = NULL;
        }
        l->state = PG_LINK_DOWN;
}

void pg_link_done(PgLink *l) {
        pg_link_close(l);
        l->timer = sd_event_source_disable_unref(l->timer);
}

static void link_schedule(PgLink *l, uint64_t delay) {
        int r;

        r = link_arm_timer(l, delay);
        if (r < 0)
                /* Without a timer we cannot come back later; this only happens when out of
                 * memory, and the owner sees the link stay down. */
                log_debug_errno(r, "%s: failed to schedule reconnect: %m", l->description);
}

void pg_link_fail(PgLink *l, const char *why) {
        uint64_t delay = l->backoff_usec;

        if (l->conn)
                log_debug("%s: connection to %s failed (%s): %s", l->description, l->redacted, why,
                          PQerrorMessage(l->conn));
        else
                log_debug("%s: connection to %s failed (%s)", l->description, l->redacted, why);

        pg_link_close(l);
        l->n_failures++;
        l->backoff_usec = MIN(l->backoff_usec * 2, PG_BACKOFF_MAX_USEC);
        link_schedule(l, delay);
}

static void link_connected(PgLink *l) {
        int r;

        if (PQsetnonblocking(l->conn, 1) < 0)
                return pg_link_fail(l, "PQsetnonblocking");

        r = pg_link_watch(l, EPOLLIN);
        if (r < 0)
                return pg_link_fail(l, "watch");

        (void) sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
        l->state = PG_LINK_UP;
        l->backoff_usec = PG_BACKOFF_MIN_USEC;
        log_debug("%s: connected to %s (server %d, backend pid %d)", l->description, l->redacted,
                  PQserverVersion(l->conn), PQbackendPID(l->conn));

        l->on_up(l, l->userdata); /* last */
}

static void link_connect_poll(PgLink *l, PostgresPollingStatusType st) {
        int r;

        /* libpq may have closed the socket and opened another one: start afresh. */
        link_drop_io(l);

        switch (st) {
        case PGRES_POLLING_READING:
        case PGRES_POLLING_WRITING:
                r = pg_link_watch(l, st == PGRES_POLLING_READING ? EPOLLIN : EPOLLOUT);
                if (r < 0)
                        pg_link_fail(l, "watch");
                return;
        case PGRES_POLLING_OK:
                return link_connected(l);
        default:
                return pg_link_fail(l, "connect");
        }
}

void pg_link_start(PgLink *l) {
        const char *keywords[8], *values[8];
        int r;

        pg_link_close(l);

        pg_connect_params(l->conninfo, keywords, values);
        l->conn = PQconnectStartParams(keywords, values, /* expand_dbname= */ 1);
        if (!l->conn || PQstatus(l->conn) == CONNECTION_BAD)
                return pg_link_fail(l, "start");

        PQsetNoticeProcessor(l->conn, pg_notice_processor, NULL);
        l->state = PG_LINK_CONNECTING;

        r = link_arm_timer(l, l->connect_timeout_usec);
        if (r < 0)
                return pg_link_fail(l, "timer");

        /* After PQconnectStart*(), poll as if PQconnectPoll() had said WRITING. */
        link_connect_poll(l, PGRES_POLLING_WRITING);
}

static int link_timer_handler(sd_event_source *s, uint64_t usec, void *userdata) {
        PgLink *l = userdata;

        switch (l->state) {
        case PG_LINK_DOWN:
                pg_link_start(l);
                break;
        case PG_LINK_CONNECTING:
                pg_link_fail(l, "timeout");
                break;
        case PG_LINK_UP:
                break;
        }
        return 0;
}

static int link_io_handler(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        PgLink *l = userdata;

        /* Handlers return 0: a negative return would make sd-event disable the source. */
        switch (l->state) {
        case PG_LINK_CONNECTING:
                link_connect_poll(l, PQconnectPoll(l->conn));
                break;
        case PG_LINK_UP:
                l->on_io(l, revents, l->userdata); /* last */
                break;
        case PG_LINK_DOWN:
                break;
        }
        return 0;
}
