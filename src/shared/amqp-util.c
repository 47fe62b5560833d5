/* SPDX-License-Identifier: MIT */
/* AMQP helpers that need no connection: URLs, building message bodies, error mapping.
 * Parsing message bodies (with json-c) is in amqp-body-parse.c, so that the daemons that
 * only publish (dtask-reaper) do not link json-c. */

#include <ctype.h>
#include <stdio.h>

#include "amqp.h"

#define EVENT_NAME_MAX 32U

bool amqp_is_uuid(const char *s, size_t n) {
        if (!s || n != 36)
                return false;

        for (size_t i = 0; i < n; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (s[i] != '-')
                                return false;
                } else if (!isxdigit((unsigned char) s[i]))
                        return false;
        }
        return true;
}

char *amqp_uuid_lower(const char *s) {
        char *r = strndup(s, 36);
        if (!r)
                return NULL;
        for (char *p = r; *p; p++)
                *p = (char) tolower((unsigned char) *p);
        return r;
}

int amqp_body_from_task_id(const char *id, char **ret) {
        _cleanup_free_ char *lower = NULL;
        char *body;

        assert_return(ret, -EINVAL);

        if (!id || !amqp_is_uuid(id, strlen(id)))
                return -EINVAL;

        lower = amqp_uuid_lower(id);
        if (!lower)
                return -ENOMEM;
        if (asprintf(&body, "\"%s\"", lower) < 0)
                return -ENOMEM;

        *ret = body;
        return 0;
}

bool amqp_event_name_valid(const char *s, size_t n) {
        if (!s || n == 0 || n > EVENT_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!(islower((unsigned char) s[i]) || isdigit((unsigned char) s[i]) || strchr("_.-", s[i])) ||
                    s[i] == '\0')
                        return false;
        return true;
}

int amqp_event_body_build(const char *event, const char *task_id, char **ret) {
        _cleanup_free_ char *lower = NULL;
        char *body;

        assert_return(ret, -EINVAL);

        if (!event || !amqp_event_name_valid(event, strlen(event)))
                return -EINVAL;
        if (!task_id || !amqp_is_uuid(task_id, strlen(task_id)))
                return -EINVAL;

        lower = amqp_uuid_lower(task_id);
        if (!lower)
                return -ENOMEM;
        /* Both strings are validated to need no JSON escaping. */
        if (asprintf(&body, "{\"event\":\"%s\",\"taskId\":\"%s\"}", event, lower) < 0)
                return -ENOMEM;
        *ret = body;
        return 0;
}

void amqp_url_done(AmqpUrl *u) {
        if (!u)
                return;
        u->user = mfree(u->user);
        u->password = erase_and_free(u->password);
        u->host = mfree(u->host);
        u->vhost = mfree(u->vhost);
        u->port = 0;
}

int amqp_url_parse(const char *url, AmqpUrl *ret) {
        _cleanup_erase_ char *copy = NULL;
        struct amqp_connection_info info;
        AmqpUrl u = {};

        assert_return(ret, -EINVAL);

        if (!url)
                url = AMQP_DEFAULT_URL;
        if (strneq(url, "amqps://", STRLEN("amqps://")))
                return -EPROTONOSUPPORT;
        if (!strneq(url, "amqp://", STRLEN("amqp://")))
                return -EINVAL;

        /* amqp_parse_url() parses in place; the copy holds the password. */
        copy = strdup(url);
        if (!copy)
                return -ENOMEM;
        if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK)
                return -EINVAL;
        if (info.ssl)
                return -EPROTONOSUPPORT;
        if (isempty(info.host) || info.port <= 0 || info.port > UINT16_MAX)
                return -EINVAL;

        u.user = strdup(strempty(info.user));
        u.password = strdup(strempty(info.password));
        u.host = strdup(info.host);
        /* "amqp://host/" selects vhost "" in rabbitmq-c, which never exists; the .NET
         * client (and every user) means the default vhost then. */
        u.vhost = strdup(isempty(info.vhost) ? "/" : info.vhost);
        u.port = (uint16_t) info.port;
        if (!u.user || !u.password || !u.host || !u.vhost) {
                amqp_url_done(&u);
                return -ENOMEM;
        }

        *ret = u;
        return 0;
}

int amqp_url_redact(const char *url, char **ret) {
        const char *scheme_end, *rest, *at, *colon;
        char *r;

        assert_return(url, -EINVAL);
        assert_return(ret, -EINVAL);

        scheme_end = strstr(url, "://");
        rest = scheme_end ? scheme_end + 3 : url;

        /* The userinfo ends at the last '@': an unencoded '@', '/' or ':' in the password
         * then still ends up hidden (a vhost with a raw '@' hides too much, which is fine). */
        at = strrchr(rest, '@');
        if (!at) {
                r = strdup(url);
                if (!r)
                        return -ENOMEM;
                *ret = r;
                return 0;
        }

        colon = memchr(rest, ':', (size_t) (at - rest));
        if (!scheme_end && !colon)
                colon = rest - 1; /* not a URL: hide the whole part before '@' */

        if (!colon) {
                r = strdup(url);
                if (!r)
                        return -ENOMEM;
        } else if (colon < rest) {
                if (asprintf(&r, "***%s", at) < 0)
                        return -ENOMEM;
        } else if (asprintf(&r, "%.*s:***%s", (int) (colon - url), url, at) < 0)
                return -ENOMEM;

        *ret = r;
        return 0;
}

int amqp_status_to_errno(int status) {
        switch (status) {
        case AMQP_STATUS_OK:
                return 0;
        case AMQP_STATUS_NO_MEMORY:
                return -ENOMEM;
        case AMQP_STATUS_BAD_AMQP_DATA:
                return -EBADMSG;
        case AMQP_STATUS_UNKNOWN_CLASS:
        case AMQP_STATUS_UNKNOWN_METHOD:
        case AMQP_STATUS_WRONG_METHOD:
        case AMQP_STATUS_UNEXPECTED_STATE:
                return -EPROTO;
        case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED:
                return -EHOSTUNREACH;
        case AMQP_STATUS_INCOMPATIBLE_AMQP_VERSION:
        case AMQP_STATUS_BROKER_UNSUPPORTED_SASL_METHOD:
                return -EPROTONOSUPPORT;
        case AMQP_STATUS_CONNECTION_CLOSED:
        case AMQP_STATUS_SOCKET_ERROR:
        case AMQP_STATUS_TCP_ERROR:
                return -ECONNRESET;
        case AMQP_STATUS_BAD_URL:
        case AMQP_STATUS_INVALID_PARAMETER:
                return -EINVAL;
        case AMQP_STATUS_TABLE_TOO_BIG:
                return -E2BIG;
        case AMQP_STATUS_TIMEOUT:
        case AMQP_STATUS_HEARTBEAT_TIMEOUT:
                return -ETIMEDOUT;
        case AMQP_STATUS_SOCKET_CLOSED:
                return -ENOTCONN;
        case AMQP_STATUS_SOCKET_INUSE:
                return -EBUSY;
        case AMQP_STATUS_UNSUPPORTED:
                return -EOPNOTSUPP;
        default:
                return -EIO; /* TIMER_FAILURE, TCP_SOCKETLIB_INIT_ERROR, SSL_*, unknown */
        }
}

int amqp_reply_code_to_errno(unsigned code) {
        switch (code) {
        case AMQP_REPLY_SUCCESS:
                return 0;
        case AMQP_CONTENT_TOO_LARGE:
                return -EMSGSIZE;
        case AMQP_NO_ROUTE:
        case AMQP_NO_CONSUMERS:
                return -EHOSTUNREACH;
        case AMQP_CONNECTION_FORCED: /* broker shutting down, connection closed by an admin */
                return -ECONNRESET;
        case AMQP_INVALID_PATH:
        case AMQP_NOT_FOUND:
                return -ENOENT;
        case AMQP_ACCESS_REFUSED:
                return -EACCES;
        case AMQP_NOT_ALLOWED: /* e.g. vhost does not exist or the user may not use it */
                return -EPERM;
        case AMQP_RESOURCE_LOCKED:
                return -EBUSY;
        case AMQP_PRECONDITION_FAILED: /* e.g. redeclared with other properties */
                return -EINVAL;
        case AMQP_RESOURCE_ERROR:
                return -ENOBUFS;
        case AMQP_NOT_IMPLEMENTED:
                return -EOPNOTSUPP;
        case AMQP_INTERNAL_ERROR:
                return -EIO;
        default: /* FRAME_ERROR, SYNTAX_ERROR, COMMAND_INVALID, CHANNEL_ERROR, UNEXPECTED_FRAME, … */
                return -EPROTO;
        }
}

int amqp_rpc_reply_to_errno(const amqp_rpc_reply_t *r) {
        assert_return(r, -EINVAL);

        switch (r->reply_type) {
        case AMQP_RESPONSE_NORMAL:
                return 0;
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
                return amqp_status_to_errno(r->library_error) ?: -EIO;
        case AMQP_RESPONSE_SERVER_EXCEPTION:
                if (r->reply.id == AMQP_CONNECTION_CLOSE_METHOD && r->reply.decoded)
                        return amqp_reply_code_to_errno(((amqp_connection_close_t *) r->reply.decoded)->reply_code)
                                       ?: -ECONNRESET;
                if (r->reply.id == AMQP_CHANNEL_CLOSE_METHOD && r->reply.decoded)
                        return amqp_reply_code_to_errno(((amqp_channel_close_t *) r->reply.decoded)->reply_code)
                                       ?: -ECONNRESET;
                return -EPROTO;
        default:
                return -EPROTO;
        }
}
