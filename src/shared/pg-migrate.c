/* SPDX-License-Identifier: MIT */
/* Schema migrations: blocking libpq, run before a daemon serves and by dtask-migrate.
 *
 * Every NNNN-name.sql file in the directory is one migration, version NNNN. Under a
 * session-level advisory lock (so concurrent runners serialize), the ones not recorded in
 * schema_migrations are applied in version order, each in its own transaction together
 * with its schema_migrations row: a migration is applied completely and recorded, or not
 * at all. The file text goes through PQexec() because a migration has several
 * statements; this is the only place where SQL text is not a fixed string with
 * parameters, and it comes from files installed with the package, never from users. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>

#include "log.h"
#include "pg-internal.h"
#include "pg.h"

/* pg_advisory_lock() key: "dtaskmig" as a big-endian 64-bit integer. */
#define PG_MIGRATE_LOCK_KEY "7238517649442695527"
#define PG_MIGRATE_FILE_MAX (64U * 1024U * 1024U)

typedef struct Migration {
        unsigned version;
        char *file; /* "0001-init.sql" */
} Migration;

static void migrations_free(Migration *m, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(m[i].file);
        free(m);
}

/* Replaces *ret_error (initialized, may be NULL) with a new message. */
_printf_(2, 3) static int set_error(char **ret_error, const char *format, ...) {
        va_list ap;
        char *s = NULL;

        if (!ret_error)
                return 0;
        va_start(ap, format);
        if (vasprintf(&s, format, ap) < 0)
                s = NULL;
        va_end(ap);
        free(*ret_error);
        *ret_error = s;
        return 0;
}

/* "NNNN-name.sql": at least four digits, a dash, a non-empty name. */
static bool migration_name_parse(const char *name, unsigned *ret_version) {
        size_t digits = strspn(name, "0123456789"), l = strlen(name);
        unsigned long v;

        if (digits < 4 || digits > 9 || name[digits] != '-')
                return false;
        if (l < digits + 1 + 1 + STRLEN(".sql") || !streq(name + l - STRLEN(".sql"), ".sql"))
                return false;
        v = strtoul(name, NULL, 10);
        *ret_version = (unsigned) v;
        return true;
}

static int migration_cmp(const void *a, const void *b) {
        const Migration *x = a, *y = b;
        return x->version < y->version ? -1 : x->version > y->version ? 1 : 0;
}

static int migrations_scan(const char *dir, Migration **ret, size_t *ret_n, char **ret_error) {
        DIR *d;
        struct dirent *de;
        Migration *m = NULL;
        size_t n = 0;
        int r = 0;

        d = opendir(dir);
        if (!d) {
                r = -errno;
                set_error(ret_error, "Failed to open migration directory %s: %s", dir, strerror(-r));
                return r;
        }

        while ((errno = 0, de = readdir(d))) {
                unsigned version;
                struct stat st;

                if (de->d_name[0] == '.' || !migration_name_parse(de->d_name, &version))
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
                        continue;

                for (size_t i = 0; i < n; i++)
                        if (m[i].version == version) {
                                r = -EEXIST;
                                set_error(ret_error, "Migrations %s and %s have the same version %u", m[i].file,
                                          de->d_name, version);
                                goto finish;
                        }

                Migration *nm = reallocarray(m, n + 1, sizeof(Migration));
                if (!nm) {
                        r = -ENOMEM;
                        goto finish;
                }
                m = nm;
                m[n].version = version;
                m[n].file = strdup(de->d_name);
                if (!m[n].file) {
                        r = -ENOMEM;
                        goto finish;
                }
                n++;
        }
        if (errno != 0) {
                r = -errno;
                set_error(ret_error, "Failed to read migration directory %s: %s", dir, strerror(-r));
        }

finish:
        closedir(d);
        if (r < 0) {
                migrations_free(m, n);
                return r;
        }
        if (n > 0)
                qsort(m, n, sizeof(Migration), migration_cmp);
        *ret = m;
        *ret_n = n;
        return 0;
}

static int read_file_at(const char *dir, const char *file, char **ret) {
        _cleanup_close_ int dfd = -EBADF, fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t len = 0;

        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        fd = openat(dfd, file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if ((uint64_t) st.st_size > PG_MIGRATE_FILE_MAX)
                return -EFBIG;

        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        while (len < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + len, (size_t) st.st_size - len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                len += (size_t) k;
        }
        buf[len] = '\0';
        if (strlen(buf) != len)
                return -EBADMSG; /* a NUL byte: PQexec() would silently stop there */

        *ret = TAKE_PTR(buf);
        return 0;
}

/* "ERROR:  syntax error at or near …" plus, when the server gives a position, the line
 * of the file. */
static char *describe_error(const PGresult *res, const PGconn *conn, const char *text) {
        const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        const char *severity = res ? PQresultErrorField(res, PG_DIAG_SEVERITY) : NULL;
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
        char *s = NULL, where[32] = "";

        if (!primary) {
                const char *m = res ? PQresultErrorMessage(res) : "";
                if (isempty(m))
                        m = PQerrorMessage(conn);
                size_t l = strlen(m);
                while (l > 0 && (m[l - 1] == '\n' || m[l - 1] == ' '))
                        l--;
                if (asprintf(&s, "%.*s", (int) l, m) < 0)
                        return NULL;
                return s;
        }

        if (pos && text) {
                /* The position counts characters (UTF-8 code points) from 1. */
                long want = atol(pos), chars = 0, line = 1;
                for (const char *p = text; *p && chars < want - 1; p++) {
                        if (((unsigned char) *p & 0xC0) != 0x80)
                                chars++;
                        if (*p == '\n')
                                line++;
                }
                snprintf(where, sizeof where, "line %ld: ", line);
        }

        if (asprintf(&s, "%s%s: %s%s%s%s", where, strna(severity), primary, state ? " (SQLSTATE " : "",
                     strempty(state), state ? ")" : "") < 0)
                return NULL;
        return s;
}

static bool result_ok(const PGresult *r) {
        ExecStatusType st = PQresultStatus(r);
        return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
}

/* Runs a fixed statement; on failure sets *ret_error to "<what>: <server message>". */
static int exec_simple(PGconn *conn, const char *sql, int n_params, const char *const *values, PGresult **ret,
                       const char *what, char **ret_error) {
        _cleanup_pgresult_ PGresult *res = NULL;

        res = n_params > 0 ? PQexecParams(conn, sql, n_params, NULL, values, NULL, NULL, 0) : PQexec(conn, sql);
        if (!res || !result_ok(res)) {
                _cleanup_free_ char *m = describe_error(res, conn, NULL);
                set_error(ret_error, "%s: %s", what, strna(m));
                return PQstatus(conn) == CONNECTION_BAD ? -ENOTCONN : res ? -EBADMSG : -EIO;
        }
        if (ret)
                *ret = TAKE_PTR(res);
        return 0;
}

static int migration_apply(PGconn *conn, const char *dir, const Migration *m, char **ret_error) {
        _cleanup_free_ char *text = NULL, *version = NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        int r;

        r = read_file_at(dir, m->file, &text);
        if (r < 0)
                return set_error(ret_error, "Failed to read migration %s/%s: %s", dir, m->file,
                                 r == -EBADMSG ? "file contains a NUL byte" : strerror(-r)), r;

        if (asprintf(&version, "%u", m->version) < 0)
                return -ENOMEM;

        r = exec_simple(conn, "BEGIN", 0, NULL, NULL, m->file, ret_error);
        if (r < 0)
                return r;

        res = PQexec(conn, text);
        if (!res || !result_ok(res)) {
                _cleanup_free_ char *msg = describe_error(res, conn, text);
                set_error(ret_error, "Migration %s failed: %s", m->file, strna(msg));
                r = PQstatus(conn) == CONNECTION_BAD ? -ENOTCONN : res ? -EBADMSG : -EIO;
                goto rollback;
        }
        if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
                /* The file ended the transaction itself: what ran is committed and cannot
                 * be undone here. */
                set_error(ret_error,
                          "Migration %s ends the transaction it runs in (COMMIT/ROLLBACK in the file); "
                          "migrations must not contain transaction control, check the database by hand",
                          m->file);
                r = -EBADMSG;
                goto rollback;
        }
        PQclear(TAKE_PTR(res));

        const char *values[] = { version, m->file };
        r = exec_simple(conn, "INSERT INTO schema_migrations (version, name) VALUES ($1::integer, $2)", 2, values,
                        NULL, m->file, ret_error);
        if (r < 0)
                goto rollback;

        r = exec_simple(conn, "COMMIT", 0, NULL, NULL, m->file, ret_error);
        if (r < 0)
                return r; /* the server rolled back */

        log_debug("Applied migration %s", m->file);
        return 0;

rollback:
        PQclear(PQexec(conn, "ROLLBACK"));
        return r;
}

static bool version_in(const unsigned *applied, size_t n, unsigned v) {
        for (size_t i = 0; i < n; i++)
                if (applied[i] == v)
                        return true;
        return false;
}

int pg_migrate(const char *conninfo, const char *dir, unsigned *ret_applied, char **ret_error) {
        _cleanup_(erase_and_freep) char *normalized = NULL;
        _cleanup_free_ char *redacted = NULL;
        _cleanup_free_ unsigned *applied = NULL;
        _cleanup_free_ char *error = NULL;
        _cleanup_(PQfinishp) PGconn *conn = NULL;
        _cleanup_pgresult_ PGresult *res = NULL;
        Migration *m = NULL;
        size_t n = 0, n_applied;
        unsigned count = 0;
        int r;

        assert_return(conninfo, -EINVAL);
        assert_return(dir, -EINVAL);

        r = pg_conninfo_normalize(conninfo, &normalized);
        if (r < 0) {
                set_error(&error, "Invalid database connection string");
                goto finish;
        }
        r = pg_conninfo_redact(normalized, &redacted);
        if (r < 0)
                goto finish;

        /* Read the directory first: a wrong path fails before touching the database. */
        r = migrations_scan(dir, &m, &n, &error);
        if (r < 0)
                goto finish;

        const char *keywords[] = { "connect_timeout", "fallback_application_name", "client_encoding", "gssencmode",
                                   "dbname", NULL };
        const char *values[] = { "10", program_invocation_short_name, "UTF8", PG_DEFAULT_GSSENCMODE, normalized, NULL };
        conn = PQconnectdbParams(keywords, values, /* expand_dbname= */ 1);
        if (!conn) {
                r = -ENOMEM;
                goto finish;
        }
        if (PQstatus(conn) != CONNECTION_OK) {
                const char *e = PQerrorMessage(conn);
                size_t l = strlen(e);
                while (l > 0 && e[l - 1] == '\n')
                        l--;
                set_error(&error, "Failed to connect to %s: %.*s", redacted, (int) l, e);
                r = -ECONNREFUSED;
                goto finish;
        }
        PQsetNoticeProcessor(conn, pg_notice_processor, NULL);

        const char *key[] = { PG_MIGRATE_LOCK_KEY };
        r = exec_simple(conn, "SELECT pg_advisory_lock($1::bigint)", 1, key, NULL, "Failed to take the migration lock",
                        &error);
        if (r < 0)
                goto finish;

        r = exec_simple(conn,
                        "CREATE TABLE IF NOT EXISTS schema_migrations ("
                        "version integer PRIMARY KEY, "
                        "name text NOT NULL, "
                        "applied_at timestamptz NOT NULL DEFAULT now())",
                        0, NULL, NULL, "Failed to create table schema_migrations", &error);
        if (r < 0)
                goto finish;

        r = exec_simple(conn, "SELECT version FROM schema_migrations", 0, NULL, &res,
                        "Failed to read table schema_migrations", &error);
        if (r < 0)
                goto finish;
        n_applied = (size_t) PQntuples(res);
        applied = calloc(n_applied + 1, sizeof(unsigned));
        if (!applied) {
                r = -ENOMEM;
                goto finish;
        }
        for (size_t i = 0; i < n_applied; i++)
                applied[i] = (unsigned) strtoul(PQgetvalue(res, (int) i, 0), NULL, 10);

        for (size_t i = 0; i < n; i++) {
                if (version_in(applied, n_applied, m[i].version))
                        continue;
                r = migration_apply(conn, dir, &m[i], &error);
                if (r < 0)
                        goto finish;
                count++;
        }

        (void) exec_simple(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, key, NULL, "unlock", NULL);
        log_debug("Migrations in %s: %zu, applied now: %u", dir, n, count);

        if (ret_applied)
                *ret_applied = count;
        r = 0;

finish:
        /* On failure the lock goes with the session (PQfinish). */
        migrations_free(m, n);
        if (r < 0 && ret_error) {
                if (!error)
                        set_error(&error, "Migration failed: %s", strerror(-r));
                *ret_error = TAKE_PTR(error);
        }
        return r;
}
