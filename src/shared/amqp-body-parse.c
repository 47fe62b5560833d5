/* SPDX-License-Identifier: MIT */
/* Parsing AMQP message bodies (task ids, events) with json-c; the builders are in
 * amqp-util.c. */

#include <json-c/json.h>

#include "amqp.h"

#define TASK_BODY_MAX 1024U
#define EVENT_BODY_MAX 4096U

static bool json_ws(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parses exactly one JSON value of at most max bytes from body: surrounding JSON
 * whitespace is fine, anything else after the value is not. */
static int parse_json_exact(const void *body, size_t size, size_t max, int depth, json_object **ret) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        struct json_tokener *tok;
        const char *s = body;
        size_t end;

        if (!body || size == 0 || size > max)
                return -EBADMSG;
        /* json-c stops at a NUL byte; the body must not hide anything behind one. */
        if (memchr(s, 0, size))
                return -EBADMSG;

        tok = json_tokener_new_ex(depth);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        o = json_tokener_parse_ex(tok, s, (int) size);
        if (!o || json_tokener_get_error(tok) != json_tokener_success) {
                json_tokener_free(tok);
                return -EBADMSG;
        }
        end = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);

        for (; end < size; end++)
                if (!json_ws(s[end]))
                        return -EBADMSG;

        *ret = TAKE_PTR(o);
        return 0;
}

int amqp_body_to_task_id(const void *body, size_t size, char **ret) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        char *id;
        int r;

        assert_return(ret, -EINVAL);

        r = parse_json_exact(body, size, TASK_BODY_MAX, 2, &o);
        if (r < 0)
                return r;
        if (!json_object_is_type(o, json_type_string))
                return -EBADMSG;
        if (!amqp_is_uuid(json_object_get_string(o), (size_t) json_object_get_string_len(o)))
                return -EBADMSG;

        id = amqp_uuid_lower(json_object_get_string(o));
        if (!id)
                return -ENOMEM;
        *ret = id;
        return 0;
}

int amqp_event_body_parse(const void *body, size_t size, char **ret_event, char **ret_task_id) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        _cleanup_free_ char *event = NULL, *id = NULL;
        json_object *e, *t;
        int r;

        r = parse_json_exact(body, size, EVENT_BODY_MAX, 8, &o);
        if (r < 0)
                return r;
        if (!json_object_is_type(o, json_type_object))
                return -EBADMSG;
        if (!json_object_object_get_ex(o, "event", &e) || !json_object_is_type(e, json_type_string) ||
            !amqp_event_name_valid(json_object_get_string(e), (size_t) json_object_get_string_len(e)))
                return -EBADMSG;
        if (!json_object_object_get_ex(o, "taskId", &t) || !json_object_is_type(t, json_type_string) ||
            !amqp_is_uuid(json_object_get_string(t), (size_t) json_object_get_string_len(t)))
                return -EBADMSG;

        event = strdup(json_object_get_string(e));
        id = amqp_uuid_lower(json_object_get_string(t));
        if (!event || !id)
                return -ENOMEM;

        if (ret_event)
                *ret_event = TAKE_PTR(event);
        if (ret_task_id)
                *ret_task_id = TAKE_PTR(id);
        return 0;
}
