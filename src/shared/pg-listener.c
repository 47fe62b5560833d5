/* SPDX-License-Identifier: MIT */
/* PgListener: one dedicated connection that LISTENs on a set of channels and reconnects
 * by itself. Notifications are copied out of libpq as soon as they are read (so that
 * none is lost when the connection breaks right after) and handed to the callback one
 * per event-loop iteration from a defer source. */

#include <errno.h>
#include <sys/epoll.h>

#include "log.h"
#include "pg-internal.h"
#include "pg.h"

typedef struct Notification Notification;
struct Notification {
        Notification *next;
        char *channel;
        char *payload;
};

typedef enum ListenerState {
        LISTENER_DOWN,
        LISTENER_SUBSCRIBING, /* the LISTEN commands are in flight */
        LISTENER_READY,
} ListenerState;

struct PgListener {
        sd_event *event;
        char *conninfo;
        char *redacted;
        char **channels;
        size_t n_channels;

        PgNotifyCallback callback;
        PgNotifyCallback on_read;
        PgReconnectCallback on_reconnect;
        void *userdata;

        PgLink link;
        ListenerState state;
        bool flushing;
        bool subscribe_failed;
        unsigned n_failures_seen; /* link.n_failures when LISTEN was last set up */

        Notification *head, *tail;
        sd_event_source *deliver;
};

static Notification *notification_free(Notification *n) {
        if (!n)
                return NULL;
        free(n->channel);
        free(n->payload);
        return mfree(n);
}

static void listener_collect(PgListener *l) {
        PGnotify *pn;

        while ((pn = PQnotifies(l->link.conn))) {
                Notification *n;

                if (l->on_read)
                        l->on_read(l, pn->relname, strempty(pn->extra), l->userdata);
                n = calloc(1, sizeof(Notification));
                if (n) {
                        n->channel = strdup(pn->relname);
                        n->payload = strdup(strempty(pn->extra));
                }
                PQfreemem(pn);
                if (!n || !n->channel || !n->payload) {
                        log_debug("pg-listener: out of memory, dropping a notification");
                        notification_free(n);
                        continue;
                }
                if (l->tail)
                        l->tail->next = n;
                else
                        l->head = n;
                l->tail = n;
        }

        if (l->head)
                (void) sd_event_source_set_enabled(l->deliver, SD_EVENT_ONESHOT);
}

static int listener_deliver(sd_event_source *s, void *userdata) {
        PgListener *l = userdata;
        Notification *n = l->head;

        if (!n)
                return 0;
        l->head = n->next;
        if (!l->head)
                l->tail = NULL;
        else
                (void) sd_event_source_set_enabled(l->deliver, SD_EVENT_ONESHOT);

        l->callback(l, n->channel, n->payload, l->userdata); /* may free l */
        notification_free(n);
        return 0;
}

static void listener_fail(PgListener *l, const char *why) {
        if (l->link.conn)
                listener_collect(l); /* what was read before the failure still counts */
        l->state = LISTENER_DOWN;
        l->flushing = false;
        pg_link_fail(&l->link, why);
}

static int listener_flush(PgListener *l) {
        int r = PQflush(l->link.conn);
        if (r < 0)
                return -ECONNRESET;
        l->flushing = r > 0;
        return pg_link_watch(&l->link, l->flushing ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

static void listener_on_up(PgLink *link, void *userdata) {
        PgListener *l = userdata;
        _cleanup_free_ char *sql = NULL;
        size_t len = 0;

        /* One simple-protocol query: LISTEN "a"; LISTEN "b"; … (identifiers quoted). */
        for (size_t i = 0; i < l->n_channels; i++) {
                char *id = PQescapeIdentifier(link->conn, l->channels[i], strlen(l->channels[i]));
                if (!id)
                        return listener_fail(l, "escape");
                size_t add = strlen("LISTEN ; ") + strlen(id);
                char *n = realloc(sql, len + add + 1);
                if (!n) {
                        PQfreemem(id);
                        return listener_fail(l, "oom");
                }
                sql = n;
                len += (size_t) sprintf(sql + len, "LISTEN %s; ", id);
                PQfreemem(id);
        }

        l->state = LISTENER_SUBSCRIBING;
        l->subscribe_failed = false;
        if (!PQsendQuery(link->conn, sql))
                return listener_fail(l, "send LISTEN");
        if (listener_flush(l) < 0)
                return listener_fail(l, "flush");
}

static void listener_on_io(PgLink *link, uint32_t revents, void *userdata) {
        PgListener *l = userdata;
        PGconn *pc = link->conn;

        if (l->flushing && listener_flush(l) < 0)
                return listener_fail(l, "flush");

        if (!PQconsumeInput(pc) || PQstatus(pc) == CONNECTION_BAD)
                return listener_fail(l, "read");

        if (l->state == LISTENER_SUBSCRIBING) {
                for (;;) {
                        PGresult *res;

                        if (PQisBusy(pc)) {
                                listener_collect(l);
                                return;
                        }
                        res = PQgetResult(pc);
                        if (!res)
                                break;
                        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                                log_debug("pg-listener: LISTEN failed: %s", PQresultErrorMessage(res));
                                l->subscribe_failed = true;
                        }
                        PQclear(res);
                }

                if (l->subscribe_failed || PQstatus(pc) == CONNECTION_BAD)
                        return listener_fail(l, "LISTEN");

                l->state = LISTENER_READY;
                listener_collect(l);

                /* Anything sent while we were not listening is lost: tell the owner. */
                if (link->n_failures != l->n_failures_seen) {
                        l->n_failures_seen = link->n_failures;
                        log_debug("pg-listener: listening again on %zu channel(s)", l->n_channels);
                        if (l->on_reconnect)
                                l->on_reconnect(l, l->userdata); /* last */
                }
                return;
        }

        listener_collect(l);
}

void pg_listener_set_read_callback(PgListener *l, PgNotifyCallback on_read) {
        l->on_read = on_read;
}

bool pg_listener_is_ready(const PgListener *l) {
        return l && l->state == LISTENER_READY;
}

int pg_listener_new(PgListener **ret, sd_event *event, const char *conninfo, const char *const *channels,
                    size_t n_channels, PgNotifyCallback callback, PgReconnectCallback on_reconnect,
                    void *userdata) {
        _cleanup_(pg_listener_freep) PgListener *l = NULL;
        uint64_t connect_timeout;
        int r;

        assert_return(ret, -EINVAL);
        assert_return(conninfo, -EINVAL);
        assert_return(channels && n_channels > 0, -EINVAL);
        assert_return(callback, -EINVAL);

        l = calloc(1, sizeof(PgListener));
        if (!l)
                return -ENOMEM;
        l->callback = callback;
        l->on_reconnect = on_reconnect;
        l->userdata = userdata;

        if (event)
                l->event = sd_event_ref(event);
        else {
                r = sd_event_default(&l->event);
                if (r < 0)
                        return r;
        }

        l->channels = calloc(n_channels, sizeof(char *));
        if (!l->channels)
                return -ENOMEM;
        for (size_t i = 0; i < n_channels; i++) {
                if (isempty(channels[i]))
                        return -EINVAL;
                l->channels[i] = strdup(channels[i]);
                if (!l->channels[i])
                        return -ENOMEM;
                l->n_channels++;
        }

        r = pg_conninfo_normalize(conninfo, &l->conninfo);
        if (r < 0)
                return r;
        r = pg_conninfo_redact(l->conninfo, &l->redacted);
        if (r < 0)
                return r;
        r = pg_conninfo_connect_timeout(l->conninfo, &connect_timeout);
        if (r < 0)
                return r;

        r = sd_event_add_defer(l->event, &l->deliver, listener_deliver, l);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(l->deliver, SD_EVENT_OFF);
        (void) sd_event_source_set_description(l->deliver, "pg-listener-deliver");

        pg_link_init(&l->link, l->event, l->conninfo, l->redacted, connect_timeout, "pg-listener",
                     listener_on_up, listener_on_io, l);
        pg_link_start(&l->link);

        *ret = TAKE_PTR(l);
        return 0;
}

PgListener *pg_listener_free(PgListener *l) {
        if (!l)
                return NULL;

        pg_link_done(&l->link);
        l->deliver = sd_event_source_disable_unref(l->deliver);
        while (l->head) {
                Notification *n = l->head;
                l->head = n->next;
                notification_free(n);
        }
        for (size_t i = 0; i < l->n_channels; i++)
                free(l->channels[i]);
        free(l->channels);
        erase_and_free(l->conninfo);
        free(l->redacted);
        sd_event_unref(l->event);
        return mfree(l);
}
