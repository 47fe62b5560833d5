/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* Configuration of every dtask binary. One table of known keys (config-keys.c) serves
 * all of them, because /etc/dtask/dtask.conf is shared. Sources, later ones winning:
 *   1. built-in defaults;
 *   2. the configuration file (KEY=VALUE lines, '#' comments): the path given with
 *      --config=, else /etc/dtask/dtask.conf if it exists; unknown keys are an error;
 *   3. ./.env in the working directory when present (compat with the older system; it
 *      may hold variables of other programs, so unknown keys there are ignored);
 *   4. systemd credentials: $CREDENTIALS_DIRECTORY/<KEY> for keys marked as credentials;
 *   5. the environment.
 * Every value is checked against its type when loaded; an error names the key and the
 * source. Secret values are wiped from memory when the Config is freed. */

typedef enum ConfigType {
        CONFIG_STRING,
        CONFIG_UINT,     /* decimal, within [min, max] */
        CONFIG_BOOL,     /* yes/no, true/false, on/off, 1/0 */
        CONFIG_DURATION, /* duration_parse(): TimeSpan, seconds, or "500ms"/"5min"…; microseconds in [min, max] */
        CONFIG_SIZE,     /* bytes, optional K/M/G suffix (powers of 1024), within [min, max] */
        CONFIG_URL,      /* "scheme://…" */
        _CONFIG_TYPE_MAX,
} ConfigType;

typedef enum ConfigFlags {
        CONFIG_SECRET = 1 << 0,     /* never printed; may come from a credential */
        CONFIG_CREDENTIAL = 1 << 1, /* may come from $CREDENTIALS_DIRECTORY/<name> */
} ConfigFlags;

typedef struct ConfigKey {
        const char *name;
        ConfigType type;
        ConfigFlags flags;
        const char *default_value; /* NULL: unset */
        uint64_t min, max;         /* for UINT, DURATION, SIZE; max 0: no limit */
        const char *alias;         /* compat name, used when name itself is not set */
        const char *description;
} ConfigKey;

extern const ConfigKey config_keys[];
extern const size_t config_keys_n;

typedef struct Config Config;

/* path: NULL for the default file (optional), otherwise the file must exist.
 * On failure *ret_error (if not NULL) gets a message for the operator. */
int config_load(Config **ret, const char *path, char **ret_error);
/* Same, with explicit sources; for tests. env: NULL-terminated "KEY=VALUE" array or NULL
 * for environ; dotenv_path/credentials_dir NULL to skip. */
int config_load_from(Config **ret, const char *path, bool path_required, const char *dotenv_path,
                     const char *credentials_dir, char *const *env, char **ret_error);
Config *config_free(Config *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(Config *, config_free);

/* Accessors: name must be in the key table (abort() otherwise: a programming error). */
const char *config_string(const Config *c, const char *name); /* NULL when unset */
uint64_t config_uint(const Config *c, const char *name);      /* UINT, DURATION (usec), SIZE (bytes) */
bool config_bool(const Config *c, const char *name);
bool config_is_set(const Config *c, const char *name);
/* Where the value came from, e.g. "/etc/dtask/dtask.conf:12", "environment", "credential", "default". */
const char *config_source(const Config *c, const char *name);

/* Checks that each of the NULL-terminated names is set; the error names the first missing key. */
int config_require(const Config *c, const char *const *names, char **ret_error);

/* Parses one value as the given type; exposed for tests. */
int config_parse_value(const ConfigKey *key, const char *value, uint64_t *ret, char **ret_error);
