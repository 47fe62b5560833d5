/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <sys/stat.h>

#include "config.h"
#include "log.h"
#include "time-util.h"

#define CONFIG_DEFAULT_PATH SYSCONFDIR "/dtask/dtask.conf"
#define CONFIG_LINE_MAX (64 * 1024)
#define CONFIG_FILE_MAX (1024 * 1024)

extern char **environ;

typedef struct ConfigValue {
        char *value;
        char *source;
        uint64_t parsed;
} ConfigValue;

struct Config {
        size_t n_values;
        ConfigValue values[];
};

static int errorf(char **ret_error, const char *format, ...) _printf_(2, 3);
static int errorf(char **ret_error, const char *format, ...) {
        va_list ap;

        if (!ret_error)
                return 0;
        free(*ret_error);
        va_start(ap, format);
        if (vasprintf(ret_error, format, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return 0;
}

static const ConfigKey *key_find(const char *name, size_t len, size_t *ret_index) {
        for (size_t i = 0; i < config_keys_n; i++) {
                const ConfigKey *k = &config_keys[i];

                if ((strlen(k->name) == len && strneq(k->name, name, len)) ||
                    (k->alias && strlen(k->alias) == len && strneq(k->alias, name, len))) {
                        if (ret_index)
                                *ret_index = i;
                        return k;
                }
        }
        return NULL;
}

static _noreturn_ void unknown_key(const char *name) {
        log_error("BUG: configuration key %s is not in the key table.", name);
        abort();
}

static size_t key_index(const char *name) {
        size_t i;

        if (!key_find(name, strlen(name), &i))
                unknown_key(name);
        return i;
}

static int parse_size(const char *s, uint64_t *ret) {
        char *end;
        uint64_t v, factor = 1;

        if (!isdigit((unsigned char) s[0]))
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0)
                return -ERANGE;
        if (strcaseeq(end, "K") || strcaseeq(end, "KiB"))
                factor = 1024;
        else if (strcaseeq(end, "M") || strcaseeq(end, "MiB"))
                factor = 1024 * 1024;
        else if (strcaseeq(end, "G") || strcaseeq(end, "GiB"))
                factor = 1024 * 1024 * 1024;
        else if (*end != '\0' && !strcaseeq(end, "B"))
                return -EINVAL;
        if (v > UINT64_MAX / factor)
                return -ERANGE;
        *ret = v * factor;
        return 0;
}

int config_parse_value(const ConfigKey *key, const char *value, uint64_t *ret, char **ret_error) {
        uint64_t v = 0;
        int r = 0;

        switch (key->type) {
        case CONFIG_STRING:
                break;

        case CONFIG_URL:
                if (!strstr(value, "://") || value[0] == ':')
                        return errorf(ret_error, "%s: expected a URL (scheme://host…)", key->name), -EINVAL;
                break;

        case CONFIG_BOOL:
                if (strcaseeq(value, "1") || strcaseeq(value, "yes") || strcaseeq(value, "true") ||
                    strcaseeq(value, "on"))
                        v = 1;
                else if (strcaseeq(value, "0") || strcaseeq(value, "no") || strcaseeq(value, "false") ||
                         strcaseeq(value, "off"))
                        v = 0;
                else
                        return errorf(ret_error, "%s: expected yes or no, got \"%s\"", key->name, value),
                               -EINVAL;
                break;

        case CONFIG_UINT: {
                char *end;

                if (!isdigit((unsigned char) value[0]))
                        return errorf(ret_error, "%s: expected a non-negative integer, got \"%s\"", key->name,
                                      value),
                               -EINVAL;
                errno = 0;
                v = strtoull(value, &end, 10);
                if (errno != 0 || *end != '\0')
                        return errorf(ret_error, "%s: expected a non-negative integer, got \"%s\"", key->name,
                                      value),
                               -EINVAL;
                break;
        }

        case CONFIG_DURATION:
                r = duration_parse(value, &v);
                if (r < 0)
                        return errorf(ret_error,
                                      "%s: expected a duration (seconds, [d.]hh:mm:ss, or a number with "
                                      "ms/s/min/h/d), got \"%s\"",
                                      key->name, value),
                               r;
                break;

        case CONFIG_SIZE:
                r = parse_size(value, &v);
                if (r < 0)
                        return errorf(ret_error, "%s: expected a size in bytes (optionally K, M or G), got \"%s\"",
                                      key->name, value),
                               r;
                break;

        default:
                abort();
        }

        if ((key->type == CONFIG_UINT || key->type == CONFIG_DURATION || key->type == CONFIG_SIZE) && (v < key->min || (key->max > 0 && v > key->max)))
                return errorf(ret_error, "%s: \"%s\" is out of range (%" PRIu64 "…%" PRIu64 "%s)", key->name,
                              value, key->min, key->max,
                              key->type == CONFIG_DURATION ? " µs" : key->type == CONFIG_SIZE ? " bytes" : ""),
                       -ERANGE;

        *ret = v;
        return 0;
}

static int config_set(Config *c, size_t i, const char *value, size_t len, const char *source, char **ret_error) {
        const ConfigKey *k = &config_keys[i];
        _cleanup_erase_ char *v = NULL;
        char *s;
        uint64_t parsed = 0;
        int r;

        if (len > CONFIG_LINE_MAX)
                return errorf(ret_error, "%s (%s): value too long", k->name, source), -E2BIG;
        v = strndup(value, len);
        if (!v)
                return -ENOMEM;
        if (strlen(v) != len)
                return errorf(ret_error, "%s (%s): value contains a NUL byte", k->name, source), -EINVAL;

        r = config_parse_value(k, v, &parsed, ret_error);
        if (r < 0) {
                /* Prefix the message with where the value came from. */
                if (ret_error && *ret_error) {
                        _cleanup_free_ char *m = TAKE_PTR(*ret_error);
                        errorf(ret_error, "%s: %s", source, m);
                }
                return r;
        }

        s = strdup(source);
        if (!s)
                return -ENOMEM;
        erase_and_free(c->values[i].value);
        free(c->values[i].source);
        c->values[i] = (ConfigValue) { .value = TAKE_PTR(v), .source = s, .parsed = parsed };
        return 0;
}

static void strip(const char **s, size_t *len) {
        while (*len > 0 && isspace((unsigned char) **s))
                (*s)++, (*len)--;
        while (*len > 0 && isspace((unsigned char) (*s)[*len - 1]))
                (*len)--;
}

/* Unquotes "…" (with \" \\ \n escapes) or '…' in place into out; bare values are copied. */
static int unquote(const char *v, size_t len, char **ret) {
        _cleanup_free_ char *out = malloc(len + 1);
        size_t k = 0;

        if (!out)
                return -ENOMEM;

        if (len >= 2 && (v[0] == '"' || v[0] == '\'') && v[len - 1] == v[0]) {
                char q = v[0];

                for (size_t i = 1; i < len - 1; i++) {
                        if (q == '"' && v[i] == '\\' && i + 1 < len - 1) {
                                i++;
                                out[k++] = v[i] == 'n' ? '\n' : v[i];
                        } else if (v[i] == q)
                                return -EINVAL;
                        else
                                out[k++] = v[i];
                }
        } else {
                if (len > 0 && (v[0] == '"' || v[0] == '\''))
                        return -EINVAL;
                memcpy(out, v, len);
                k = len;
        }
        out[k] = '\0';
        *ret = TAKE_PTR(out);
        return (int) k;
}

static int read_file_limited(const char *path, size_t max, char **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t n = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EISDIR;
        if ((uint64_t) st.st_size > max)
                return -EFBIG;

        /* Sized by the file, not by the limit: a buffer of max + 1 bytes (1 MiB for the
         * configuration file) is mmap()ed by malloc, and freeing it raises glibc's dynamic
         * mmap and trim thresholds for the rest of the process, so that later large
         * allocations stay on the heap and its free top is not given back. cap is one more
         * than the size, to see the end (or growth) of the file; it grows up to max + 1 for
         * files that change while we read them or report size 0. The buffer has room for
         * cap bytes and the NUL. */
        size_t cap = MIN((size_t) st.st_size, max) + 1;
        buf = malloc(cap + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (n == cap) { /* n <= max here, so cap < max + 1 */
                        size_t c = MIN(MAX(cap * 2, (size_t) 4096), max + 1);
                        char *b = malloc(c + 1);
                        if (!b) {
                                sodium_memzero(buf, n);
                                return -ENOMEM;
                        }
                        /* not realloc(): the old block may hold a secret and is wiped */
                        memcpy(b, buf, n);
                        sodium_memzero(buf, n);
                        free(buf);
                        buf = b;
                        cap = c;
                }
                ssize_t k = read(fd, buf + n, cap - n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
                if (n > max) {
                        sodium_memzero(buf, n);
                        return -EFBIG;
                }
        }
        buf[n] = '\0';
        *ret = TAKE_PTR(buf);
        *ret_size = n;
        return 0;
}

static int config_parse_file(Config *c, const char *path, bool strict, char **ret_error) {
        _cleanup_erase_ char *text = NULL;
        size_t size;
        unsigned line = 0;
        int r;

        /* --config=/dev/null: no file, only defaults, credentials and the environment. */
        if (streq(path, "/dev/null"))
                return 0;

        r = read_file_limited(path, CONFIG_FILE_MAX, &text, &size);
        if (r < 0)
                return errorf(ret_error, "%s: cannot read: %s", path, strerror(-r)), r;
        if (strlen(text) != size)
                return errorf(ret_error, "%s: contains a NUL byte", path), -EINVAL;

        for (char *p = text, *eol; *p; p = eol) {
                const char *key, *value;
                size_t key_len, value_len, index;
                _cleanup_free_ char *source = NULL;
                _cleanup_erase_ char *unquoted = NULL;
                char *eq;

                eol = strchrnul(p, '\n');
                if (*eol)
                        *eol++ = '\0';
                line++;

                key = p;
                key_len = strlen(p);
                strip(&key, &key_len);
                if (key_len == 0 || key[0] == '#' || key[0] == ';')
                        continue;
                if (asprintf(&source, "%s:%u", path, line) < 0)
                        return -ENOMEM;

                if (key_len > 7 && strneq(key, "export", 6) && isspace((unsigned char) key[6])) {
                        key += 7;
                        key_len -= 7;
                        strip(&key, &key_len);
                }

                eq = memchr(key, '=', key_len);
                if (!eq)
                        return errorf(ret_error, "%s: expected KEY=VALUE", source), -EINVAL;
                value = eq + 1;
                value_len = key_len - (size_t) (value - key);
                key_len = (size_t) (eq - key);
                strip(&key, &key_len);
                strip(&value, &value_len);
                if (key_len == 0)
                        return errorf(ret_error, "%s: expected KEY=VALUE", source), -EINVAL;

                if (!key_find(key, key_len, &index)) {
                        if (!strict)
                                continue;
                        return errorf(ret_error, "%s: unknown key %.*s", source, (int) key_len, key), -EINVAL;
                }
                /* A compat alias never overrides the key's own name from the same file. */
                if (!strneq(config_keys[index].name, key, key_len) && c->values[index].source &&
                    !streq(c->values[index].source, "default"))
                        continue;

                r = unquote(value, value_len, &unquoted);
                if (r == -EINVAL)
                        return errorf(ret_error, "%s: %.*s: unbalanced quotes", source, (int) key_len, key), r;
                if (r < 0)
                        return r;
                r = config_set(c, index, unquoted, (size_t) r, source, ret_error);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int config_read_credentials(Config *c, const char *dir, char **ret_error) {
        for (size_t i = 0; i < config_keys_n; i++) {
                const ConfigKey *k = &config_keys[i];
                _cleanup_free_ char *path = NULL;
                _cleanup_erase_ char *data = NULL;
                size_t size;
                int r;

                if (!(k->flags & CONFIG_CREDENTIAL))
                        continue;
                if (asprintf(&path, "%s/%s", dir, k->name) < 0)
                        return -ENOMEM;
                r = read_file_limited(path, CONFIG_LINE_MAX, &data, &size);
                if (r == -ENOENT)
                        continue;
                if (r < 0)
                        return errorf(ret_error, "credential %s: cannot read: %s", k->name, strerror(-r)), r;
                /* One trailing newline is what `echo` and editors add; it is not part of a secret. */
                if (size > 0 && data[size - 1] == '\n')
                        size--;
                if (size > 0 && data[size - 1] == '\r')
                        size--;
                r = config_set(c, i, data, size, "credential", ret_error);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int config_read_env(Config *c, char *const *env, char **ret_error) {
        /* Two passes so that a key's own name wins over its compat alias. */
        for (int pass = 0; pass < 2; pass++)
                for (char *const *e = env; e && *e; e++) {
                        const char *eq = strchr(*e, '=');
                        size_t index;
                        int r;

                        if (!eq || !key_find(*e, (size_t) (eq - *e), &index))
                                continue;
                        if ((pass == 0) != !strneq(config_keys[index].name, *e, (size_t) (eq - *e)))
                                continue;
                        r = config_set(c, index, eq + 1, strlen(eq + 1), "environment", ret_error);
                        if (r < 0)
                                return r;
                }
        return 0;
}

int config_load_from(Config **ret, const char *path, bool path_required, const char *dotenv_path,
                     const char *credentials_dir, char *const *env, char **ret_error) {
        _cleanup_(config_freep) Config *c = NULL;
        int r;

        c = calloc(1, sizeof(Config) + config_keys_n * sizeof(ConfigValue));
        if (!c)
                return -ENOMEM;
        c->n_values = config_keys_n;

        for (size_t i = 0; i < config_keys_n; i++)
                if (config_keys[i].default_value) {
                        r = config_set(c, i, config_keys[i].default_value, strlen(config_keys[i].default_value),
                                       "default", ret_error);
                        if (r < 0)
                                return r;
                }

        if (path && (path_required || access(path, F_OK) >= 0)) {
                r = config_parse_file(c, path, /* strict= */ true, ret_error);
                if (r < 0)
                        return r;
        }
        if (dotenv_path && access(dotenv_path, F_OK) >= 0) {
                r = config_parse_file(c, dotenv_path, /* strict= */ false, ret_error);
                if (r < 0)
                        return r;
        }
        if (!isempty(credentials_dir)) {
                r = config_read_credentials(c, credentials_dir, ret_error);
                if (r < 0)
                        return r;
        }
        r = config_read_env(c, env, ret_error);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(c);
        return 0;
}

int config_load(Config **ret, const char *path, char **ret_error) {
        return config_load_from(ret, path ?: CONFIG_DEFAULT_PATH, /* path_required= */ !!path, ".env",
                                getenv("CREDENTIALS_DIRECTORY"), environ, ret_error);
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_values; i++) {
                erase_and_free(c->values[i].value);
                free(c->values[i].source);
        }
        return mfree(c);
}

const char *config_string(const Config *c, const char *name) {
        return c->values[key_index(name)].value;
}

uint64_t config_uint(const Config *c, const char *name) {
        return c->values[key_index(name)].parsed;
}

bool config_bool(const Config *c, const char *name) {
        return c->values[key_index(name)].parsed != 0;
}

bool config_is_set(const Config *c, const char *name) {
        return !isempty(config_string(c, name));
}

const char *config_source(const Config *c, const char *name) {
        return c->values[key_index(name)].source ?: "unset";
}

int config_require(const Config *c, const char *const *names, char **ret_error) {
        for (const char *const *n = names; *n; n++)
                if (!config_is_set(c, *n))
                        return errorf(ret_error, "%s is not set (configuration file, environment or credential)",
                                      *n),
                               -ENOKEY;
        return 0;
}
