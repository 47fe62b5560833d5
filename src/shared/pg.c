/* SPDX-License-Identifier: MIT */
/* PostgreSQL helpers: connection strings (Npgsql → libpq, redaction), connection
 * parameters, result helpers. */

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <strings.h>

#include "log.h"
#include "pg-internal.h"
#include "pg.h"

const char *pg_result_sqlstate(const PGresult *r) {
        if (!r)
                return NULL;
        return PQresultErrorField(r, PG_DIAG_SQLSTATE);
}

/* ---- string builder ---- */

typedef struct Buf {
        char *data;
        size_t len, allocated;
        bool oom;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
        if (b->oom)
                return;
        if (b->len + n + 1 > b->allocated) {
                size_t a = MAX(b->allocated * 2, b->len + n + 64);
                char *d = realloc(b->data, a);
                if (!d) {
                        b->oom = true;
                        return;
                }
                b->data = d;
                b->allocated = a;
        }
        memcpy(b->data + b->len, s, n);
        b->len += n;
        b->data[b->len] = '\0';
}

static void buf_puts(Buf *b, const char *s) {
        buf_put(b, s, strlen(s));
}

static void buf_putc(Buf *b, char c) {
        buf_put(b, &c, 1);
}

static void buf_wipe(Buf *b) {
        if (b->data) {
                sodium_memzero(b->data, b->allocated);
                free(b->data);
        }
        *b = (Buf) {};
}

/* Hands out the string (an empty one if nothing was put). */
static int buf_steal(Buf *b, char **ret) {
        if (!b->oom && !b->data)
                buf_put(b, "", 0);
        if (b->oom) {
                buf_wipe(b);
                return -ENOMEM;
        }
        *ret = TAKE_PTR(b->data);
        *b = (Buf) {};
        return 0;
}

/* A keyword/value value, always single-quoted: \ and ' are escaped with a backslash. */
static void buf_put_kv_value(Buf *b, const char *v) {
        buf_putc(b, '\'');
        for (const char *p = v; *p; p++) {
                if (*p == '\\' || *p == '\'')
                        buf_putc(b, '\\');
                buf_putc(b, *p);
        }
        buf_putc(b, '\'');
}

/* ---- Npgsql connection strings ---- */

typedef struct NpgsqlPair {
        char *key;   /* normalized: lower case, without white space ("User ID" → "userid") */
        char *value; /* unquoted */
        size_t span_start, span_end; /* the value as written, quotes included */
} NpgsqlPair;

static void npgsql_pairs_free(NpgsqlPair *pairs, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(pairs[i].key);
                erase_and_free(pairs[i].value);
        }
        free(pairs);
}

static bool is_blank(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* .NET DbConnectionStringBuilder syntax: "key=value;key='va;lue';key=\"va\"\"lue\"".
 * White space around keys and unquoted values is insignificant, a quote character is
 * escaped by doubling it, empty pairs are skipped, keys are case-insensitive.
 *
 * lenient (for redaction): never fails on syntax; segments that are not "key=value" are
 * skipped, an unterminated quoted value runs to the end, and a quoted value followed by
 * garbage runs to the next ';'. */
static int npgsql_parse(const char *s, bool lenient, NpgsqlPair **ret, size_t *ret_n, bool *ret_has_separator) {
        NpgsqlPair *pairs = NULL;
        size_t n = 0;
        bool sep = false;
        const char *p = s;
        int r;

        for (;;) {
                while (is_blank(*p) || *p == ';') {
                        if (*p == ';')
                                sep = true;
                        p++;
                }
                if (*p == '\0')
                        break;

                const char *k = p;
                while (*p != '\0' && *p != '=' && *p != ';')
                        p++;
                if (*p != '=') {
                        if (lenient)
                                continue; /* at ';' or the end */
                        r = -EINVAL; /* a key without a value */
                        goto fail;
                }
                const char *kend = p++;

                NpgsqlPair *np = reallocarray(pairs, n + 1, sizeof(NpgsqlPair));
                if (!np) {
                        r = -ENOMEM;
                        goto fail;
                }
                pairs = np;
                NpgsqlPair *pair = &pairs[n++];
                *pair = (NpgsqlPair) {};

                pair->key = malloc(kend - k + 1);
                if (!pair->key) {
                        r = -ENOMEM;
                        goto fail;
                }
                size_t kl = 0;
                for (const char *c = k; c < kend; c++)
                        if (!is_blank(*c))
                                pair->key[kl++] = (char) tolower((unsigned char) *c);
                pair->key[kl] = '\0';
                if (kl == 0 && !lenient) {
                        r = -EINVAL;
                        goto fail;
                }

                while (is_blank(*p))
                        p++;

                Buf v = {};
                if (*p == '"' || *p == '\'') {
                        char q = *p;
                        pair->span_start = p - s;
                        p++;
                        for (;;) {
                                if (*p == '\0') {
                                        if (lenient)
                                                break;
                                        buf_wipe(&v);
                                        r = -EINVAL; /* unterminated quote */
                                        goto fail;
                                }
                                if (*p == q) {
                                        if (p[1] == q) {
                                                buf_putc(&v, q);
                                                p += 2;
                                                continue;
                                        }
                                        p++;
                                        break;
                                }
                                buf_putc(&v, *p++);
                        }
                        pair->span_end = p - s;
                        while (is_blank(*p))
                                p++;
                        if (*p != ';' && *p != '\0') {
                                if (!lenient) {
                                        buf_wipe(&v);
                                        r = -EINVAL; /* garbage after the closing quote */
                                        goto fail;
                                }
                                p = strchrnul(p, ';');
                                pair->span_end = p - s;
                        }
                } else {
                        const char *vs = p, *ve;
                        while (*p != '\0' && *p != ';')
                                p++;
                        ve = p;
                        while (ve > vs && is_blank(ve[-1]))
                                ve--;
                        buf_put(&v, vs, ve - vs);
                        pair->span_start = vs - s;
                        pair->span_end = ve - s;
                }
                r = buf_steal(&v, &pair->value);
                if (r < 0)
                        goto fail;
        }

        *ret = pairs;
        *ret_n = n;
        if (ret_has_separator)
                *ret_has_separator = sep;
        return 0;

fail:
        npgsql_pairs_free(pairs, n);
        return r;
}

typedef enum NpgsqlKind {
        NPGSQL_COPY,      /* value as is */
        NPGSQL_HOST,      /* "h1:5433,h2,[::1]:5434" */
        NPGSQL_PORT,
        NPGSQL_SSLMODE,   /* Disable/Allow/Prefer/Require/VerifyCA/VerifyFull */
        NPGSQL_UINT,      /* seconds */
        NPGSQL_BOOL,      /* true/false → 1/0 */
        NPGSQL_TSA,       /* Target Session Attributes */
        NPGSQL_LOWER,     /* lower-cased */
        NPGSQL_OPTIONS,   /* Options: passed on in "options" */
        NPGSQL_GUC,       /* becomes "-c <guc>=<value>" in "options" */
        NPGSQL_IGNORE,    /* client-side Npgsql settings without libpq equivalent */
} NpgsqlKind;

static const struct {
        const char *key;      /* normalized Npgsql key */
        const char *libpq;    /* libpq keyword (or GUC name for NPGSQL_GUC) */
        NpgsqlKind kind;
} npgsql_keys[] = {
        { "host", "host", NPGSQL_HOST },
        { "server", "host", NPGSQL_HOST },
        { "port", "port", NPGSQL_PORT },
        { "database", "dbname", NPGSQL_COPY },
        { "db", "dbname", NPGSQL_COPY },
        { "username", "user", NPGSQL_COPY },
        { "user", "user", NPGSQL_COPY },
        { "userid", "user", NPGSQL_COPY },
        { "uid", "user", NPGSQL_COPY },
        { "password", "password", NPGSQL_COPY },
        { "pwd", "password", NPGSQL_COPY },
        { "psw", "password", NPGSQL_COPY },
        { "passfile", "passfile", NPGSQL_COPY },
        { "sslmode", "sslmode", NPGSQL_SSLMODE },
        { "sslcertificate", "sslcert", NPGSQL_COPY },
        { "sslkey", "sslkey", NPGSQL_COPY },
        { "sslpassword", "sslpassword", NPGSQL_COPY },
        { "rootcertificate", "sslrootcert", NPGSQL_COPY },
        { "channelbinding", "channel_binding", NPGSQL_LOWER },
        { "timeout", "connect_timeout", NPGSQL_UINT },
        { "applicationname", "application_name", NPGSQL_COPY },
        { "clientencoding", "client_encoding", NPGSQL_COPY },
        { "targetsessionattributes", "target_session_attrs", NPGSQL_TSA },
        { "tcpkeepalive", "keepalives", NPGSQL_BOOL },
        { "tcpkeepalivetime", "keepalives_idle", NPGSQL_UINT },
        { "tcpkeepaliveinterval", "keepalives_interval", NPGSQL_UINT },
        { "kerberosservicename", "krbsrvname", NPGSQL_COPY },
        { "options", "options", NPGSQL_OPTIONS },
        { "searchpath", "search_path", NPGSQL_GUC },
        { "timezone", "TimeZone", NPGSQL_GUC },
        /* Pooling, timeouts and behaviour of the .NET driver itself. */
        { "pooling", NULL, NPGSQL_IGNORE },
        { "minpoolsize", NULL, NPGSQL_IGNORE },
        { "maxpoolsize", NULL, NPGSQL_IGNORE },
        { "minimumpoolsize", NULL, NPGSQL_IGNORE },
        { "maximumpoolsize", NULL, NPGSQL_IGNORE },
        { "connectionidlelifetime", NULL, NPGSQL_IGNORE },
        { "connectionpruninginterval", NULL, NPGSQL_IGNORE },
        { "connectionlifetime", NULL, NPGSQL_IGNORE },
        { "commandtimeout", NULL, NPGSQL_IGNORE },
        { "internalcommandtimeout", NULL, NPGSQL_IGNORE },
        { "cancellationtimeout", NULL, NPGSQL_IGNORE },
        { "includeerrordetail", NULL, NPGSQL_IGNORE },
        { "includeerrordetails", NULL, NPGSQL_IGNORE },
        { "logparameters", NULL, NPGSQL_IGNORE },
        { "trustservercertificate", NULL, NPGSQL_IGNORE },
        { "checkcertificaterevocation", NULL, NPGSQL_IGNORE },
        { "enlist", NULL, NPGSQL_IGNORE },
        { "maxautoprepare", NULL, NPGSQL_IGNORE },
        { "autoprepareminusages", NULL, NPGSQL_IGNORE },
        { "noresetonclose", NULL, NPGSQL_IGNORE },
        { "servercompatibilitymode", NULL, NPGSQL_IGNORE },
        { "keepalive", NULL, NPGSQL_IGNORE },
        { "readbuffersize", NULL, NPGSQL_IGNORE },
        { "writebuffersize", NULL, NPGSQL_IGNORE },
        { "socketreceivebuffersize", NULL, NPGSQL_IGNORE },
        { "socketsendbuffersize", NULL, NPGSQL_IGNORE },
        { "multiplexing", NULL, NPGSQL_IGNORE },
        { "writecoalescingbuffersize", NULL, NPGSQL_IGNORE },
        { "persistsecurityinfo", NULL, NPGSQL_IGNORE },
        { "loadtablecomposites", NULL, NPGSQL_IGNORE },
        { "loadbalancehosts", NULL, NPGSQL_IGNORE },
        { "hostrecheckseconds", NULL, NPGSQL_IGNORE },
        { "encoding", NULL, NPGSQL_IGNORE },
        { "arraynullabilitymode", NULL, NPGSQL_IGNORE },
        { "integratedsecurity", NULL, NPGSQL_IGNORE },
        { "includerealm", NULL, NPGSQL_IGNORE },
};

static int npgsql_key_lookup(const char *key) {
        for (size_t i = 0; i < ELEMENTSOF(npgsql_keys); i++)
                if (streq(npgsql_keys[i].key, key))
                        return (int) i;
        return -1;
}

static bool npgsql_all_known(const NpgsqlPair *pairs, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (npgsql_key_lookup(pairs[i].key) < 0)
                        return false;
        return true;
}

/* Keys compared without case and without '-'/'_', so "VerifyCA", "verify-ca" and
 * "verify_ca" are all the same thing. */
static bool word_eq(const char *a, const char *b) {
        for (;;) {
                while (*a == '-' || *a == '_')
                        a++;
                while (*b == '-' || *b == '_')
                        b++;
                if (tolower((unsigned char) *a) != tolower((unsigned char) *b))
                        return false;
                if (*a == '\0')
                        return true;
                a++, b++;
        }
}

static const char *map_word(const char *v, const char *const table[][2], size_t n) {
        for (size_t i = 0; i < n; i++)
                if (word_eq(v, table[i][0]))
                        return table[i][1];
        return NULL;
}

static bool parse_uint_str(const char *v) {
        if (isempty(v) || strlen(v) > 9)
                return false;
        for (const char *p = v; *p; p++)
                if (!isdigit((unsigned char) *p))
                        return false;
        return true;
}

static int parse_bool_str(const char *v) {
        static const char *const yes[] = { "true", "yes", "on", "1" }, *const no[] = { "false", "no", "off", "0" };
        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcaseeq(v, yes[i]))
                        return 1;
                if (strcaseeq(v, no[i]))
                        return 0;
        }
        return -EINVAL;
}

/* Escapes a value for libpq's "options" (command-line style: white space and backslashes
 * are escaped with a backslash). */
static void buf_put_options_word(Buf *b, const char *v) {
        for (const char *p = v; *p; p++) {
                if (*p == '\\' || is_blank(*p))
                        buf_putc(b, '\\');
                buf_putc(b, *p);
        }
}

/* "h1:5433,h2,[::1]:5434" → hosts "h1,h2,::1" and, if any port is given, ports
 * "5433,<default>,5434". */
static int npgsql_split_hosts(const char *v, const char *default_port, Buf *hosts, Buf *ports, bool *ret_any_port) {
        bool any_port = false;
        const char *p = v;

        if (isempty(v))
                return -EINVAL;

        for (;;) {
                const char *e = strchrnul(p, ','), *h = p, *he, *port = NULL;
                size_t port_len = 0;

                while (h < e && is_blank(*h))
                        h++;
                he = e;
                while (he > h && is_blank(he[-1]))
                        he--;
                if (h == he)
                        return -EINVAL;

                if (*h == '[') {
                        const char *rb = memchr(h, ']', he - h);
                        if (!rb)
                                return -EINVAL;
                        if (rb + 1 < he) {
                                if (rb[1] != ':')
                                        return -EINVAL;
                                port = rb + 2;
                                port_len = he - port;
                        }
                        h++;
                        he = rb;
                } else {
                        const char *c = memchr(h, ':', he - h);
                        /* Exactly one ':' is host:port; more is a bare IPv6 address. */
                        if (c && !memchr(c + 1, ':', he - c - 1)) {
                                port = c + 1;
                                port_len = he - port;
                                he = c;
                        }
                }
                if (port) {
                        if (port_len == 0 || port_len > 5)
                                return -EINVAL;
                        for (size_t i = 0; i < port_len; i++)
                                if (!isdigit((unsigned char) port[i]))
                                        return -EINVAL;
                        any_port = true;
                }

                if (p != v) {
                        buf_putc(hosts, ',');
                        buf_putc(ports, ',');
                }
                buf_put(hosts, h, he - h);
                if (port)
                        buf_put(ports, port, port_len);
                else
                        buf_puts(ports, default_port);

                if (*e == '\0')
                        break;
                p = e + 1;
        }

        *ret_any_port = any_port;
        return 0;
}

static int npgsql_to_libpq(const NpgsqlPair *pairs, size_t n, char **ret) {
        static const char *const sslmodes[][2] = {
                { "Disable", "disable" },         { "Allow", "allow" },   { "Prefer", "prefer" },
                { "Require", "require" },         { "VerifyCA", "verify-ca" },
                { "VerifyFull", "verify-full" },
        };
        static const char *const tsas[][2] = {
                { "Any", "any" },         { "ReadWrite", "read-write" }, { "ReadOnly", "read-only" },
                { "Primary", "primary" }, { "Standby", "standby" },      { "PreferStandby", "prefer-standby" },
        };
        _cleanup_(buf_wipe) Buf out = {}, opts = {};
        const char *host = NULL, *port = NULL;
        int r;

        /* Host and port belong together ("Host=h:5433"); last one wins, as in Npgsql. */
        for (size_t i = 0; i < n; i++) {
                int k = npgsql_key_lookup(pairs[i].key);
                if (k < 0)
                        return -EINVAL;
                if (npgsql_keys[k].kind == NPGSQL_HOST)
                        host = pairs[i].value;
                else if (npgsql_keys[k].kind == NPGSQL_PORT) {
                        if (!parse_uint_str(pairs[i].value) || atoi(pairs[i].value) > 65535)
                                return -EINVAL;
                        port = pairs[i].value;
                }
        }

        if (host) {
                _cleanup_(buf_wipe) Buf hosts = {}, ports = {};
                bool any_port = false;

                r = npgsql_split_hosts(host, port ?: "5432", &hosts, &ports, &any_port);
                if (r < 0)
                        return r;
                if (hosts.oom || ports.oom)
                        return -ENOMEM;
                buf_puts(&out, "host=");
                buf_put_kv_value(&out, hosts.data);
                if (any_port) {
                        buf_puts(&out, " port=");
                        buf_put_kv_value(&out, ports.data);
                        port = NULL;
                }
        }
        if (port) {
                if (out.len > 0)
                        buf_putc(&out, ' ');
                buf_puts(&out, "port=");
                buf_put_kv_value(&out, port);
        }

        for (size_t i = 0; i < n; i++) {
                int k = npgsql_key_lookup(pairs[i].key);
                const char *v = pairs[i].value, *mapped = v;
                char num[16];

                switch (npgsql_keys[k].kind) {
                case NPGSQL_HOST:
                case NPGSQL_PORT:
                case NPGSQL_IGNORE:
                        continue;
                case NPGSQL_COPY:
                        break;
                case NPGSQL_SSLMODE:
                        mapped = map_word(v, sslmodes, ELEMENTSOF(sslmodes));
                        if (!mapped)
                                return -EINVAL;
                        break;
                case NPGSQL_TSA:
                        mapped = map_word(v, tsas, ELEMENTSOF(tsas));
                        if (!mapped)
                                return -EINVAL;
                        break;
                case NPGSQL_UINT:
                        if (!parse_uint_str(v))
                                return -EINVAL;
                        break;
                case NPGSQL_BOOL:
                        r = parse_bool_str(v);
                        if (r < 0)
                                return r;
                        snprintf(num, sizeof num, "%d", r);
                        mapped = num;
                        break;
                case NPGSQL_LOWER: {
                        size_t l = strlen(v);
                        if (l == 0 || l >= sizeof num)
                                return -EINVAL;
                        for (size_t j = 0; j <= l; j++)
                                num[j] = (char) tolower((unsigned char) v[j]);
                        mapped = num;
                        break;
                }
                case NPGSQL_OPTIONS:
                        if (opts.len > 0)
                                buf_putc(&opts, ' ');
                        buf_puts(&opts, v);
                        continue;
                case NPGSQL_GUC:
                        if (opts.len > 0)
                                buf_putc(&opts, ' ');
                        buf_puts(&opts, "-c ");
                        buf_put_options_word(&opts, npgsql_keys[k].libpq);
                        buf_putc(&opts, '=');
                        buf_put_options_word(&opts, v);
                        continue;
                }

                if (out.len > 0)
                        buf_putc(&out, ' ');
                buf_puts(&out, npgsql_keys[k].libpq);
                buf_putc(&out, '=');
                buf_put_kv_value(&out, mapped);
        }

        if (opts.oom)
                return -ENOMEM;
        if (opts.len > 0) {
                if (out.len > 0)
                        buf_putc(&out, ' ');
                buf_puts(&out, "options=");
                buf_put_kv_value(&out, opts.data);
        }

        return buf_steal(&out, ret);
}

/* ---- classification ---- */

static bool startswith_prefix(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool conninfo_is_uri(const char *s) {
        /* libpq matches these prefixes case-sensitively. */
        return startswith_prefix(s, "postgresql://") || startswith_prefix(s, "postgres://");
}

static bool conninfo_is_keyword_value(const char *s) {
        char *err = NULL;
        PQconninfoOption *o = PQconninfoParse(s, &err);
        if (err)
                PQfreemem(err); /* may quote the string: never log it */
        if (!o)
                return false;
        PQconninfoFree(o);
        return true;
}

/* Whether the first key, as written, is a libpq keyword. */
static bool first_key_is_libpq(const char *s) {
        _cleanup_free_ char *t = NULL;
        const char *k = s + strspn(s, " \t\r\n\f\v"), *e = strchrnul(k, '=');

        while (e > k && is_blank(e[-1]))
                e--;
        if (e == k || asprintf(&t, "%.*s=''", (int) (e - k), k) < 0)
                return false;
        return conninfo_is_keyword_value(t);
}

int pg_conninfo_normalize(const char *s, char **ret) {
        NpgsqlPair *pairs = NULL;
        size_t n = 0;
        bool sep = false, npgsql;
        char *copy;
        int r;

        assert_return(s, -EINVAL);
        assert_return(ret, -EINVAL);

        if (conninfo_is_uri(s))
                goto pass;

        r = npgsql_parse(s, /* lenient= */ false, &pairs, &n, &sep);
        if (r == -ENOMEM)
                return r;
        npgsql = r >= 0 && npgsql_all_known(pairs, n);

        /* "Host=x;…" is not valid libpq syntax (keywords are lower case). A string
         * that is valid both ways ("host=x;port=5432") is Npgsql if it has a ';'
         * separator: libpq would take "x;port=5432" as the host name. Without one, a
         * string that starts with a libpq keyword is libpq's ("host=h junk" is an error,
         * not the host name "h junk"). */
        if (npgsql && (sep || (!conninfo_is_keyword_value(s) && !first_key_is_libpq(s)))) {
                r = npgsql_to_libpq(pairs, n, ret);
                npgsql_pairs_free(pairs, n);
                return r;
        }
        npgsql_pairs_free(pairs, n);

        if (!conninfo_is_keyword_value(s))
                return -EINVAL;

pass:
        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        *ret = copy;
        return 0;
}

/* ---- redaction ---- */

typedef struct Span {
        size_t start, end;
} Span;

static int spans_add(Span **spans, size_t *n, size_t start, size_t end) {
        Span *s = reallocarray(*spans, *n + 1, sizeof(Span));
        if (!s)
                return -ENOMEM;
        s[(*n)++] = (Span) { start, end };
        *spans = s;
        return 0;
}

static int span_cmp(const void *a, const void *b) {
        const Span *x = a, *y = b;
        return x->start < y->start ? -1 : x->start > y->start ? 1 : 0;
}

static bool is_secret_key(const char *key, size_t len) {
        static const char *const secret[] = { "password", "sslpassword", "pwd", "psw" };
        for (size_t i = 0; i < ELEMENTSOF(secret); i++)
                if (strlen(secret[i]) == len && strncasecmp(key, secret[i], len) == 0)
                        return true;
        return false;
}

/* libpq keyword/value syntax (as conninfo_parse() in fe-connect.c), collecting the
 * spans of secret values. Lenient: keys are not checked, a word without '=' is skipped,
 * an unterminated quoted value runs to the end. */
static int kv_secret_spans(const char *s, Span **spans, size_t *n) {
        const char *p = s;
        int r;

        for (;;) {
                while (isspace((unsigned char) *p))
                        p++;
                if (*p == '\0')
                        return 0;

                const char *k = p;
                while (*p != '\0' && *p != '=' && !isspace((unsigned char) *p))
                        p++;
                size_t klen = p - k;
                while (isspace((unsigned char) *p))
                        p++;
                if (*p != '=')
                        continue; /* not a keyword: go on with the next word */
                p++;
                while (isspace((unsigned char) *p))
                        p++;

                const char *v = p;
                if (*p != '\'') {
                        while (*p != '\0' && !isspace((unsigned char) *p)) {
                                if (*p == '\\' && p[1] != '\0')
                                        p++;
                                p++;
                        }
                } else {
                        p++;
                        while (*p != '\0') {
                                if (*p == '\\' && p[1] != '\0') {
                                        p += 2;
                                        continue;
                                }
                                if (*p++ == '\'')
                                        break;
                        }
                }

                if (is_secret_key(k, klen) && p > v) {
                        r = spans_add(spans, n, v - s, p - s);
                        if (r < 0)
                                return r;
                }
        }
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* postgresql://user:password@host:port/db?password=…&sslpassword=… */
static int uri_secret_spans(const char *s, Span **spans, size_t *n) {
        const char *p = strstr(s, "://") + 3, *at;
        int r;

        /* As libpq: credentials end at the first '@' seen before any '/'. */
        at = p;
        while (*at != '\0' && *at != '@' && *at != '/')
                at++;
        if (*at == '@') {
                const char *colon = memchr(p, ':', at - p);
                if (colon && colon + 1 < at) {
                        r = spans_add(spans, n, colon + 1 - s, at - s);
                        if (r < 0)
                                return r;
                }
                p = at + 1;
        }

        const char *q = strchr(p, '?');
        if (!q)
                return 0;
        q++;
        while (*q != '\0') {
                const char *e = strchrnul(q, '&'), *eq = memchr(q, '=', e - q);
                if (eq) {
                        char key[32];
                        size_t kl = 0;
                        for (const char *c = q; c < eq && kl < sizeof key - 1; c++) {
                                if (*c == '%' && c + 2 < eq && unhex(c[1]) >= 0 && unhex(c[2]) >= 0) {
                                        key[kl++] = (char) (unhex(c[1]) * 16 + unhex(c[2]));
                                        c += 2;
                                } else
                                        key[kl++] = *c;
                        }
                        if (is_secret_key(key, kl) && eq + 1 < e) {
                                r = spans_add(spans, n, eq + 1 - s, e - s);
                                if (r < 0)
                                        return r;
                        }
                }
                q = *e ? e + 1 : e;
        }
        return 0;
}

int pg_conninfo_redact(const char *s, char **ret) {
        _cleanup_free_ Span *spans = NULL;
        size_t n = 0;
        int r;

        assert_return(s, -EINVAL);
        assert_return(ret, -EINVAL);

        if (conninfo_is_uri(s)) {
                r = uri_secret_spans(s, &spans, &n);
                if (r < 0)
                        return r;
        } else {
                /* Mask whatever any reading of the string takes for a password: in a
                 * string like "host=h;password=x" each reading sees a different one, and
                 * a malformed string may still carry one. */
                NpgsqlPair *pairs = NULL;
                size_t np = 0;

                r = kv_secret_spans(s, &spans, &n);
                if (r < 0)
                        return r;

                r = npgsql_parse(s, /* lenient= */ true, &pairs, &np, NULL);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < np; i++)
                        if (is_secret_key(pairs[i].key, strlen(pairs[i].key)) &&
                            pairs[i].span_end > pairs[i].span_start) {
                                r = spans_add(&spans, &n, pairs[i].span_start, pairs[i].span_end);
                                if (r < 0)
                                        break;
                        }
                npgsql_pairs_free(pairs, np);
                if (r < 0)
                        return r;
        }

        if (n > 1)
                qsort(spans, n, sizeof(Span), span_cmp);

        _cleanup_(buf_wipe) Buf out = {};
        size_t pos = 0;
        for (size_t i = 0; i < n; i++) {
                if (spans[i].end <= pos)
                        continue; /* inside a span masked already */
                size_t start = MAX(spans[i].start, pos);
                buf_put(&out, s + pos, start - pos);
                if (start == spans[i].start)
                        buf_puts(&out, "***");
                pos = spans[i].end;
        }
        buf_puts(&out, s + pos);

        return buf_steal(&out, ret);
}

/* ---- connection parameters ---- */

int pg_conninfo_connect_timeout(const char *conninfo, uint64_t *ret) {
        PQconninfoOption *opts;
        char *err = NULL;
        uint64_t t = PG_CONNECT_TIMEOUT_DEFAULT_USEC;

        opts = PQconninfoParse(conninfo, &err);
        if (err)
                PQfreemem(err);
        if (!opts)
                return -EINVAL;

        for (PQconninfoOption *o = opts; o->keyword; o++)
                if (streq(o->keyword, "connect_timeout") && !isempty(o->val)) {
                        int v = atoi(o->val);
                        /* As libpq: 0 or negative is "forever" there; we keep a bound. */
                        if (v > 0)
                                t = MAX((uint64_t) v, 2) * USEC_PER_SEC;
                }

        PQconninfoFree(opts);
        *ret = t;
        return 0;
}

void pg_connect_params(const char *conninfo, const char *keywords[static 8], const char *values[static 8]) {
        size_t i = 0;

        /* Defaults first: the conninfo, expanded from "dbname", overrides each of them. */
        keywords[i] = "fallback_application_name", values[i++] = program_invocation_short_name;
        keywords[i] = "client_encoding", values[i++] = "UTF8";
        /* Notice a dead peer on idle connections (e.g. the LISTEN one) within about a minute. */
        keywords[i] = "keepalives_idle", values[i++] = "30";
        keywords[i] = "keepalives_interval", values[i++] = "10";
        keywords[i] = "keepalives_count", values[i++] = "3";
        keywords[i] = "gssencmode", values[i++] = PG_DEFAULT_GSSENCMODE;
        keywords[i] = "dbname", values[i++] = conninfo;
        keywords[i] = NULL, values[i] = NULL;
}

void pg_notice_processor(void *arg, const char *message) {
        size_t l = strlen(message);
        while (l > 0 && message[l - 1] == '\n')
                l--;
        log_debug("PostgreSQL: %.*s", (int) l, message);
}
