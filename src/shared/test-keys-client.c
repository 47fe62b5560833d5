/* SPDX-License-Identifier: MIT */
/* Unit tests of the API-key validation client against a fake dtask-keys endpoint that runs
 * on the same sd-event loop: answer mapping, the cache (hits, TTL, negative entries, errors
 * not cached, bound), coalescing, cancellation and failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "json-util.h"
#include "keys-client.h"

#define VALID_ID "0B7F3C9E-5D1A-4C8E-9F2A-6E4D2C1B0A99"
#define VALID_ID_LOWER "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99"

/* ------------------------------------------------------------------------------------------ */
/* a fake dtask-keys */

typedef struct FakeKeys FakeKeys;

typedef struct FakeConn {
        FakeKeys *server;
        struct FakeConn *prev, *next;
        int fd;
        sd_event_source *io, *timer;
        char *in;
        size_t in_size, in_allocated;
        char *out;
        size_t out_size, out_pos;
        char *delayed;
} FakeConn;

struct FakeKeys {
        sd_event *event;
        int fd;
        sd_event_source *source;
        uint16_t port;
        FakeConn *conns;
        unsigned n_requests;
        bool bad_request;       /* a request was not POST /api/apikeys/validate with JSON */
        char last_key[512];
        /* per-test behaviour */
        bool toggle_inactive;   /* "ak_toggle" answers inactive instead of valid */
        unsigned flaky_count;   /* "ak_flaky" answers 503 the first time */
        uint64_t slow_usec;     /* delay of "ak_slow" */
};

static uint64_t now_mono(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static void fake_conn_close(FakeConn *c) {
        if (c->prev)
                c->prev->next = c->next;
        else
                c->server->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        safe_close(c->fd);
        free(c->in);
        free(c->out);
        free(c->delayed);
        free(c);
}

static void fake_send(FakeConn *c, const char *data) {
        free(c->out);
        c->out = strdup(data);
        c->out_size = strlen(data);
        c->out_pos = 0;
        assert_int_equal(sd_event_source_set_io_events(c->io, EPOLLIN | EPOLLOUT), 0);
}

static int on_fake_timer(sd_event_source *t, uint64_t usec, void *userdata) {
        FakeConn *c = userdata;
        _cleanup_free_ char *d = TAKE_PTR(c->delayed);

        if (d)
                fake_send(c, d);
        return 0;
}

static void fake_reply(FakeConn *c, unsigned status, const char *content_type, const char *body, uint64_t delay) {
        _cleanup_free_ char *r = NULL;

        assert_true(asprintf(&r, "HTTP/1.1 %u X\r\n%s%s%sContent-Length: %zu\r\n\r\n%s", status,
                             content_type ? "Content-Type: " : "", strempty(content_type), content_type ? "\r\n" : "",
                             strlen(body), body) > 0);
        if (delay == 0) {
                fake_send(c, r);
                return;
        }
        free(c->delayed);
        c->delayed = TAKE_PTR(r);
        sd_event_source_disable_unref(c->timer);
        assert_int_equal(sd_event_add_time_relative(c->server->event, &c->timer, CLOCK_MONOTONIC, delay, 1,
                                                    on_fake_timer, c),
                         0);
}

static void fake_problem(FakeConn *c, const char *reason) {
        char body[256];

        snprintf(body, sizeof(body),
                 "{\"type\":\"about:blank\",\"title\":\"Conflict\",\"status\":409,\"detail\":\"%s\",\"reason\":\"%s\"}",
                 reason, reason);
        fake_reply(c, 409, "application/problem+json", body, 0);
}

static const char *const VALID_BODY = "{\"apiKeyId\":\"" VALID_ID "\",\"claims\":[\"tasks:read\",\"tasks:write\"]}";

static void fake_handle(FakeConn *c, const char *head, const char *body, size_t body_size) {
        FakeKeys *s = c->server;
        _cleanup_json_ json_object *j = NULL;
        const char *key;

        s->n_requests++;
        if (strncmp(head, "POST /api/apikeys/validate HTTP/1.1\r\n", 37) != 0 ||
            !strcasestr(head, "\r\nContent-Type: application/json\r\n"))
                s->bad_request = true;

        j = json_tokener_parse(body);
        if (!j || !json_object_object_get_ex(j, "apiKey", NULL)) {
                s->bad_request = true;
                fake_reply(c, 400, NULL, "", 0);
                return;
        }
        key = json_object_get_string(json_object_object_get(j, "apiKey"));
        snprintf(s->last_key, sizeof(s->last_key), "%s", key);

        if (streq(key, "ak_valid"))
                fake_reply(c, 200, "application/json", VALID_BODY, 0);
        else if (streq(key, "ak_other"))
                fake_reply(c, 200, "application/json; charset=utf-8",
                           "{\"apiKeyId\":\"5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6\",\"claims\":[]}", 0);
        else if (streq(key, "ak_noclaims"))
                fake_reply(c, 200, "application/json", "{\"apiKeyId\":\"" VALID_ID "\",\"claims\":null}", 0);
        else if (streq(key, "ak_inactive"))
                fake_problem(c, "inactive");
        else if (streq(key, "ak_expired"))
                fake_problem(c, "expired");
        else if (streq(key, "ak_detail_only"))
                fake_reply(c, 409, "application/problem+json", "{\"status\":409,\"detail\":\"The API key is inactive.\"}", 0);
        else if (streq(key, "ak_bare_word"))
                fake_reply(c, 409, "text/plain", "expired", 0);
        else if (streq(key, "ak_json_string"))
                fake_reply(c, 409, "application/json", "\"inactive\"", 0);
        else if (streq(key, "ak_empty_409"))
                fake_reply(c, 409, NULL, "", 0);
        else if (streq(key, "ak_toggle")) {
                if (s->toggle_inactive)
                        fake_problem(c, "inactive");
                else
                        fake_reply(c, 200, "application/json", VALID_BODY, 0);
        } else if (streq(key, "ak_flaky")) {
                if (s->flaky_count++ == 0)
                        fake_reply(c, 503, "application/problem+json", "{\"status\":503}", 0);
                else
                        fake_reply(c, 200, "application/json", VALID_BODY, 0);
        } else if (streq(key, "ak_slow"))
                fake_reply(c, 200, "application/json", VALID_BODY, s->slow_usec);
        else if (streq(key, "ak_never"))
                ; /* no answer */
        else if (streq(key, "ak_ratelimited"))
                fake_reply(c, 429, "application/problem+json", "{\"status\":429}", 0);
        else if (streq(key, "ak_unavailable"))
                fake_reply(c, 503, "application/problem+json", "{\"status\":503}", 0);
        else if (streq(key, "ak_notfound"))
                fake_reply(c, 404, "application/problem+json", "{\"status\":404}", 0);
        else if (streq(key, "ak_garbage"))
                fake_reply(c, 200, "application/json", "this is not json", 0);
        else if (streq(key, "ak_noid"))
                fake_reply(c, 200, "application/json", "{\"claims\":[\"tasks:read\"]}", 0);
        else if (streq(key, "ak_badid"))
                fake_reply(c, 200, "application/json", "{\"apiKeyId\":\"nope\",\"claims\":[]}", 0);
        else if (streq(key, "ak_badclaims"))
                fake_reply(c, 200, "application/json", "{\"apiKeyId\":\"" VALID_ID "\",\"claims\":[1,2]}", 0);
        else
                fake_problem(c, "not valid");
        (void) body_size;
}

static int on_fake_conn_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        FakeConn *c = userdata;

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t n;

                if (c->in_allocated - c->in_size < 4096) {
                        c->in_allocated = c->in_allocated * 2 + 4096;
                        c->in = realloc(c->in, c->in_allocated + 1);
                }
                n = recv(fd, c->in + c->in_size, c->in_allocated - c->in_size, MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN)) {
                        fake_conn_close(c);
                        return 0;
                }
                if (n > 0) {
                        char *e, *cl;
                        size_t head, length = 0;

                        c->in_size += (size_t) n;
                        c->in[c->in_size] = '\0';
                        e = strstr(c->in, "\r\n\r\n");
                        if (!e)
                                return 0;
                        head = (size_t) (e - c->in) + 4;
                        cl = strcasestr(c->in, "\r\nContent-Length:");
                        if (cl && cl < e)
                                length = strtoul(cl + 17, NULL, 10);
                        if (c->in_size < head + length)
                                return 0;
                        {
                                _cleanup_free_ char *h = strndup(c->in, head), *b = strndup(c->in + head, length);
                                memmove(c->in, c->in + head + length, c->in_size - head - length);
                                c->in_size -= head + length;
                                fake_handle(c, h, b, length);
                        }
                        return 0;
                }
        }

        if ((revents & EPOLLOUT) && c->out) {
                ssize_t n = send(fd, c->out + c->out_pos, c->out_size - c->out_pos, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno != EAGAIN)
                                fake_conn_close(c);
                        return 0;
                }
                c->out_pos += (size_t) n;
                if (c->out_pos == c->out_size) {
                        c->out = mfree(c->out);
                        assert_int_equal(sd_event_source_set_io_events(c->io, EPOLLIN), 0);
                }
        }
        return 0;
}

static int on_fake_accept(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        FakeKeys *s = userdata;
        FakeConn *c;
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0)
                return 0;
        c = calloc(1, sizeof(FakeConn));
        c->server = s;
        c->fd = cfd;
        assert_int_equal(sd_event_add_io(s->event, &c->io, cfd, EPOLLIN, on_fake_conn_io, c), 0);
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        return 0;
}

static FakeKeys *fake_keys_new(sd_event *e) {
        FakeKeys *s = calloc(1, sizeof(FakeKeys));
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);

        s->event = e;
        s->slow_usec = 100 * USEC_PER_MSEC;
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(s->fd >= 0);
        assert_int_equal(bind(s->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(s->fd, 128), 0);
        assert_int_equal(getsockname(s->fd, (struct sockaddr *) &sa, &len), 0);
        s->port = ntohs(sa.sin_port);
        assert_int_equal(sd_event_add_io(e, &s->source, s->fd, EPOLLIN, on_fake_accept, s), 0);
        return s;
}

static void fake_keys_free(FakeKeys *s) {
        while (s->conns)
                fake_conn_close(s->conns);
        sd_event_source_disable_unref(s->source);
        safe_close(s->fd);
        free(s);
}

/* ------------------------------------------------------------------------------------------ */
/* fixture */

typedef struct Answer {
        unsigned n_called;
        int error;
        KeyValidity validity;
        char *key_id;
        char **claims;
        bool claims_null;
        KeysClient **free_client;
} Answer;

static void answer_done(Answer *a) {
        free(a->key_id);
        strv_free(a->claims);
        *a = (Answer) {};
}

static void on_answer(KeysClient *k, int error, KeyValidity validity, const char *key_id, char *const *claims,
                      void *userdata) {
        Answer *a = userdata;

        a->n_called++;
        a->error = error;
        a->validity = validity;
        a->claims_null = !claims;
        if (error == 0 && validity == KEY_VALID) {
                assert_non_null(key_id);
                assert_non_null(claims);
                a->key_id = strdup(key_id);
                a->claims = calloc(strv_length(claims) + 1, sizeof(char *));
                for (size_t i = 0; claims[i]; i++)
                        a->claims[i] = strdup(claims[i]);
        } else {
                assert_null(key_id);
                assert_null(claims);
        }
        if (a->free_client)
                *a->free_client = keys_client_free(*a->free_client);
}

typedef struct Fixture {
        sd_event *event;
        FakeKeys *server;
        KeysClient *client;
        char url[64];
} Fixture;

static void make_client(Fixture *f, const KeysClientSettings *s) {
        f->client = keys_client_free(f->client);
        assert_int_equal(keys_client_new_full(&f->client, f->event, f->url, s), 0);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        assert_int_equal(sd_event_new(&f->event), 0);
        f->server = fake_keys_new(f->event);
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u", f->server->port);
        make_client(f, NULL);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        assert_false(f->server->bad_request);
        keys_client_free(f->client);
        fake_keys_free(f->server);
        sd_event_unref(f->event);
        free(f);
        return 0;
}

static void run_until(sd_event *e, const unsigned *n, unsigned want, uint64_t timeout) {
        uint64_t end = now_mono() + timeout;

        while (*n < want) {
                assert_true(now_mono() < end);
                assert_true(sd_event_run(e, 10 * USEC_PER_MSEC) >= 0);
        }
}

static void run_for(sd_event *e, uint64_t duration) {
        uint64_t end = now_mono() + duration;

        while (now_mono() < end)
                assert_true(sd_event_run(e, 5 * USEC_PER_MSEC) >= 0);
}

static void validate(Fixture *f, const char *key, Answer *a) {
        *a = (Answer) {};
        assert_int_equal(keys_client_validate(f->client, key, on_answer, a, NULL), 0);
        assert_int_equal(a->n_called, 0); /* never from within keys_client_validate(), not even on a hit */
        run_until(f->event, &a->n_called, 1, 10 * USEC_PER_SEC);
        run_for(f->event, USEC_PER_MSEC);
        assert_int_equal(a->n_called, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* tests */

static void test_new(void **state) {
        Fixture *f = *state;
        KeysClient *k = NULL;

        assert_int_equal(keys_client_new(&k, f->event, f->url, 5 * USEC_PER_SEC + 1), -ERANGE);
        assert_int_equal(keys_client_new(&k, f->event, "https://127.0.0.1:5215", 0), -EPROTONOSUPPORT);
        assert_int_equal(keys_client_new(&k, f->event, "not a url", 0), -EINVAL);
        assert_null(k);
        assert_int_equal(keys_client_new(&k, f->event, f->url, 0), 0);
        k = keys_client_free(k);
        assert_string_equal(key_validity_to_string(KEY_VALID), "valid");
        assert_string_equal(key_validity_to_string(KEY_NOT_VALID), "not valid");
        assert_string_equal(key_validity_to_string(KEY_INACTIVE), "inactive");
        assert_string_equal(key_validity_to_string(KEY_EXPIRED), "expired");
}

static void test_valid(void **state) {
        Fixture *f = *state;
        Answer a;

        validate(f, "ak_valid", &a);
        assert_int_equal(a.error, 0);
        assert_int_equal(a.validity, KEY_VALID);
        assert_string_equal(a.key_id, VALID_ID_LOWER);
        assert_int_equal(strv_length(a.claims), 2);
        assert_string_equal(a.claims[0], "tasks:read");
        assert_string_equal(a.claims[1], "tasks:write");
        assert_string_equal(f->server->last_key, "ak_valid");
        answer_done(&a);

        validate(f, "ak_other", &a);
        assert_int_equal(a.validity, KEY_VALID);
        assert_string_equal(a.key_id, "5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6");
        assert_int_equal(strv_length(a.claims), 0);
        assert_false(a.claims_null);
        answer_done(&a);

        validate(f, "ak_noclaims", &a);
        assert_int_equal(a.validity, KEY_VALID);
        assert_int_equal(strv_length(a.claims), 0);
        answer_done(&a);
        assert_int_equal(f->server->n_requests, 3);
}

static void test_refusals(void **state) {
        Fixture *f = *state;
        static const struct {
                const char *key;
                KeyValidity validity;
        } cases[] = {
                { "ak_inactive", KEY_INACTIVE },
                { "ak_expired", KEY_EXPIRED },
                { "ak_unknown", KEY_NOT_VALID },
                { "ak_detail_only", KEY_INACTIVE },
                { "ak_bare_word", KEY_EXPIRED },
                { "ak_json_string", KEY_INACTIVE },
                { "ak_empty_409", KEY_NOT_VALID },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Answer a;

                validate(f, cases[i].key, &a);
                if (a.error != 0 || a.validity != cases[i].validity)
                        fail_msg("%s: error %d, validity %s", cases[i].key, a.error, key_validity_to_string(a.validity));
                answer_done(&a);
        }
        assert_int_equal(f->server->n_requests, ELEMENTSOF(cases));
}

static void test_errors(void **state) {
        Fixture *f = *state;
        static const struct {
                const char *key;
                int error;
        } cases[] = {
                { "ak_ratelimited", -EBUSY },
                { "ak_unavailable", -EIO },
                { "ak_notfound", -EPROTO },
                { "ak_garbage", -EBADMSG },
                { "ak_noid", -EBADMSG },
                { "ak_badid", -EBADMSG },
                { "ak_badclaims", -EBADMSG },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Answer a;

                validate(f, cases[i].key, &a);
                if (a.error != cases[i].error)
                        fail_msg("%s: error %d, expected %d", cases[i].key, a.error, cases[i].error);
                answer_done(&a);
        }
        assert_int_equal(keys_client_get_stats(f->client)->errors, ELEMENTSOF(cases));

        /* errors are not cached: asking again asks dtask-keys again */
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Answer a;
                validate(f, cases[i].key, &a);
                assert_int_equal(a.error, cases[i].error);
                answer_done(&a);
        }
        assert_int_equal(f->server->n_requests, 2 * ELEMENTSOF(cases));
        assert_int_equal(keys_client_get_stats(f->client)->hits, 0);
        assert_int_equal(keys_client_get_stats(f->client)->entries, 0);
}

static void test_errors_not_cached(void **state) {
        Fixture *f = *state;
        Answer a;

        validate(f, "ak_flaky", &a); /* 503 first */
        assert_int_equal(a.error, -EIO);
        answer_done(&a);
        validate(f, "ak_flaky", &a); /* then valid */
        assert_int_equal(a.error, 0);
        assert_int_equal(a.validity, KEY_VALID);
        answer_done(&a);
        assert_int_equal(f->server->n_requests, 2);
}

static void test_cache_hit_and_ttl(void **state) {
        Fixture *f = *state;
        const KeysClientStats *st;
        Answer a;

        make_client(f, &(KeysClientSettings) { .cache_ttl_usec = 300 * USEC_PER_MSEC });
        st = keys_client_get_stats(f->client);

        validate(f, "ak_toggle", &a);
        assert_int_equal(a.validity, KEY_VALID);
        answer_done(&a);
        assert_int_equal(f->server->n_requests, 1);

        /* deactivated at dtask-keys: within the TTL the cached answer stands, no request */
        f->server->toggle_inactive = true;
        validate(f, "ak_toggle", &a);
        assert_int_equal(a.validity, KEY_VALID);
        assert_string_equal(a.key_id, VALID_ID_LOWER);
        assert_int_equal(strv_length(a.claims), 2);
        answer_done(&a);
        assert_int_equal(f->server->n_requests, 1);
        assert_int_equal(st->hits, 1);
        assert_int_equal(st->misses, 1);

        /* after the TTL: asked again, and now refused */
        run_for(f->event, 350 * USEC_PER_MSEC);
        validate(f, "ak_toggle", &a);
        assert_int_equal(a.error, 0);
        assert_int_equal(a.validity, KEY_INACTIVE);
        answer_done(&a);
        assert_int_equal(f->server->n_requests, 2);

        /* the negative answer is cached too */
        validate(f, "ak_toggle", &a);
        assert_int_equal(a.validity, KEY_INACTIVE);
        answer_done(&a);
        assert_int_equal(f->server->n_requests, 2);
        assert_int_equal(st->hits, 2);

        validate(f, "ak_unknown", &a);
        validate(f, "ak_unknown", &a);
        assert_int_equal(a.validity, KEY_NOT_VALID);
        assert_int_equal(f->server->n_requests, 3);
        assert_int_equal(st->hits, 3);
        assert_int_equal(st->entries, 2);

        keys_client_flush_cache(f->client);
        assert_int_equal(st->entries, 0);
        validate(f, "ak_unknown", &a);
        assert_int_equal(f->server->n_requests, 4);
}

static void test_ttl_counts_from_request(void **state) {
        Fixture *f = *state;
        Answer a;
        uint64_t start;

        /* the answer takes 200 ms, the TTL is 300 ms: the entry must be gone 300 ms after the
         * request was sent, not 300 ms after the answer came */
        make_client(f, &(KeysClientSettings) { .cache_ttl_usec = 300 * USEC_PER_MSEC });
        f->server->slow_usec = 200 * USEC_PER_MSEC;
        start = now_mono();
        validate(f, "ak_slow", &a);
        assert_int_equal(a.validity, KEY_VALID);
        answer_done(&a);
        assert_true(now_mono() - start >= 200 * USEC_PER_MSEC);
        run_for(f->event, start + 320 * USEC_PER_MSEC > now_mono() ? start + 320 * USEC_PER_MSEC - now_mono() : 0);
        assert_int_equal(keys_client_lookup_cached(f->client, "ak_slow", NULL, NULL, NULL), 0);
}

static void test_coalescing(void **state) {
        Fixture *f = *state;
        Answer a[10] = {};
        unsigned done = 0;
        uint64_t end = now_mono() + 5 * USEC_PER_SEC;

        for (size_t i = 0; i < ELEMENTSOF(a); i++)
                assert_int_equal(keys_client_validate(f->client, "ak_slow", on_answer, &a[i], NULL), 0);
        while (done < ELEMENTSOF(a)) {
                assert_true(now_mono() < end);
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
                done = 0;
                for (size_t i = 0; i < ELEMENTSOF(a); i++)
                        done += a[i].n_called;
        }
        for (size_t i = 0; i < ELEMENTSOF(a); i++) {
                assert_int_equal(a[i].n_called, 1);
                assert_int_equal(a[i].error, 0);
                assert_int_equal(a[i].validity, KEY_VALID);
                assert_string_equal(a[i].key_id, VALID_ID_LOWER);
                assert_int_equal(strv_length(a[i].claims), 2);
                answer_done(&a[i]);
        }
        assert_int_equal(f->server->n_requests, 1);
        assert_int_equal(keys_client_get_stats(f->client)->coalesced, 9);
        assert_int_equal(keys_client_get_stats(f->client)->requests, 1);
}

static void test_timeout_and_unreachable(void **state) {
        Fixture *f = *state;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        _cleanup_close_ int fd = -EBADF;
        Answer a;

        make_client(f, &(KeysClientSettings) { .timeout_usec = 200 * USEC_PER_MSEC });
        validate(f, "ak_never", &a);
        assert_int_equal(a.error, -ETIMEDOUT);
        answer_done(&a);

        /* a closed port: an error, never "not valid" */
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u", ntohs(sa.sin_port));
        make_client(f, NULL);
        validate(f, "ak_valid", &a);
        assert_int_equal(a.error, -ECONNREFUSED);
        answer_done(&a);
        validate(f, "ak_valid", &a); /* not cached */
        assert_int_equal(a.error, -ECONNREFUSED);
        answer_done(&a);
        assert_int_equal(keys_client_get_stats(f->client)->requests, 2);
        assert_int_equal(keys_client_get_stats(f->client)->errors, 2);
}

static void test_implausible_keys(void **state) {
        Fixture *f = *state;
        char long_key[KEYS_CLIENT_KEY_MAX + 2];
        static const char *const keys[] = { "", "ak bad", "ak_\ttab", "ak_\xc3\xa9", "ak_\n" };
        Answer a;

        memset(long_key, 'a', sizeof(long_key) - 1);
        long_key[sizeof(long_key) - 1] = '\0';
        validate(f, long_key, &a);
        assert_int_equal(a.error, 0);
        assert_int_equal(a.validity, KEY_NOT_VALID);
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                validate(f, keys[i], &a);
                assert_int_equal(a.error, 0);
                assert_int_equal(a.validity, KEY_NOT_VALID);
        }
        assert_int_equal(f->server->n_requests, 0);
        assert_int_equal(keys_client_get_stats(f->client)->rejected, ELEMENTSOF(keys) + 1);

        /* characters JSON must escape reach dtask-keys intact */
        validate(f, "ak_\"quoted\\", &a);
        assert_int_equal(a.validity, KEY_NOT_VALID);
        assert_int_equal(f->server->n_requests, 1);
        assert_string_equal(f->server->last_key, "ak_\"quoted\\");
}

static void test_cache_bound(void **state) {
        Fixture *f = *state;
        const KeysClientStats *st;
        char key[32];
        Answer a;

        make_client(f, &(KeysClientSettings) { .cache_max_entries = 5 });
        st = keys_client_get_stats(f->client);
        for (unsigned i = 0; i < 10; i++) {
                snprintf(key, sizeof(key), "ak_unknown%u", i);
                validate(f, key, &a);
                assert_int_equal(a.validity, KEY_NOT_VALID);
        }
        assert_int_equal(st->entries, 5);
        assert_int_equal(st->evictions, 5);
        assert_int_equal(f->server->n_requests, 10);

        validate(f, "ak_unknown9", &a); /* newest: still cached */
        assert_int_equal(f->server->n_requests, 10);
        validate(f, "ak_unknown0", &a); /* oldest: evicted */
        assert_int_equal(f->server->n_requests, 11);
        assert_int_equal(st->entries, 5);
}

static void test_lookup_cached(void **state) {
        Fixture *f = *state;
        KeyValidity v = _KEY_VALIDITY_MAX;
        const char *id = NULL;
        char *const *claims = NULL;
        Answer a;

        assert_int_equal(keys_client_lookup_cached(f->client, "ak_valid", &v, &id, &claims), 0);
        validate(f, "ak_valid", &a);
        answer_done(&a);
        assert_int_equal(keys_client_lookup_cached(f->client, "ak_valid", &v, &id, &claims), 1);
        assert_int_equal(v, KEY_VALID);
        assert_string_equal(id, VALID_ID_LOWER);
        assert_int_equal(strv_length(claims), 2);
        assert_int_equal(keys_client_lookup_cached(f->client, "ak_valid2", &v, &id, &claims), 0);
        assert_int_equal(keys_client_lookup_cached(f->client, "", &v, &id, &claims), 1);
        assert_int_equal(v, KEY_NOT_VALID);
        assert_null(id);
        assert_int_equal(f->server->n_requests, 1);
}

static void test_cancel(void **state) {
        Fixture *f = *state;
        Answer a = {}, b = {}, c;
        KeysClientQuery *qa = NULL, *qh = NULL;

        assert_int_equal(keys_client_validate(f->client, "ak_slow", on_answer, &a, &qa), 0);
        assert_int_equal(keys_client_validate(f->client, "ak_slow", on_answer, &b, NULL), 0);
        keys_client_query_cancel(qa);
        run_until(f->event, &b.n_called, 1, 5 * USEC_PER_SEC);
        run_for(f->event, 20 * USEC_PER_MSEC);
        assert_int_equal(a.n_called, 0);
        assert_int_equal(b.error, 0);
        answer_done(&b);

        /* all waiters cancelled: the answer still fills the cache */
        assert_int_equal(keys_client_validate(f->client, "ak_other", on_answer, &a, &qa), 0);
        keys_client_query_cancel(qa);
        run_for(f->event, 100 * USEC_PER_MSEC);
        assert_int_equal(a.n_called, 0);
        assert_int_equal(keys_client_lookup_cached(f->client, "ak_other", NULL, NULL, NULL), 1);

        /* a cache hit cancelled before its callback ran */
        assert_int_equal(keys_client_validate(f->client, "ak_other", on_answer, &a, &qh), 0);
        keys_client_query_cancel(qh);
        validate(f, "ak_other", &c);
        assert_int_equal(a.n_called, 0);
        answer_done(&c);
        assert_int_equal(f->server->n_requests, 2);
        keys_client_query_cancel(NULL);
}

static void test_free_pending(void **state) {
        Fixture *f = *state;
        Answer a = {}, b = {}, c = {};

        assert_int_equal(keys_client_validate(f->client, "ak_never", on_answer, &a, NULL), 0);
        assert_int_equal(keys_client_validate(f->client, "ak_never", on_answer, &b, NULL), 0);
        run_until(f->event, &f->server->n_requests, 1, 5 * USEC_PER_SEC);
        f->client = keys_client_free(f->client);
        assert_int_equal(a.n_called, 1);
        assert_int_equal(a.error, -ECANCELED);
        assert_int_equal(b.n_called, 1);
        assert_int_equal(b.error, -ECANCELED);

        /* freed from a callback: the others get -ECANCELED right after it */
        make_client(f, NULL);
        a = (Answer) { .free_client = &f->client };
        b = (Answer) {};
        assert_int_equal(keys_client_validate(f->client, "ak_slow", on_answer, &a, NULL), 0);
        assert_int_equal(keys_client_validate(f->client, "ak_slow", on_answer, &b, NULL), 0);
        assert_int_equal(keys_client_validate(f->client, "ak_never", on_answer, &c, NULL), 0);
        run_until(f->event, &a.n_called, 1, 5 * USEC_PER_SEC);
        assert_null(f->client);
        assert_int_equal(b.n_called, 1);
        assert_int_equal(b.error, -ECANCELED);
        assert_int_equal(c.n_called, 1);
        assert_int_equal(c.error, -ECANCELED);
        answer_done(&a);
        run_for(f->event, 20 * USEC_PER_MSEC);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_new, setup, teardown),
                cmocka_unit_test_setup_teardown(test_valid, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors_not_cached, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cache_hit_and_ttl, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_counts_from_request, setup, teardown),
                cmocka_unit_test_setup_teardown(test_coalescing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout_and_unreachable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_implausible_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cache_bound, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lookup_cached, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_free_pending, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
