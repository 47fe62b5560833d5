/* SPDX-License-Identifier: MIT */
/* Every configuration key of dtask, for all binaries (one dtask.conf serves them all).
 * Keep this table in sync with man/dtask.conf.5. */
#include "config.h"

#define SEC ((uint64_t) 1000000)
#define KiB ((uint64_t) 1024)
#define MiB (1024 * KiB)

const ConfigKey config_keys[] = {
        /* common */
        { "LOG_LEVEL", CONFIG_STRING, 0, "info", .description = "emerg…debug, or 0…7" },
        { "DATABASE_URL", CONFIG_STRING, CONFIG_SECRET | CONFIG_CREDENTIAL, NULL,
          .alias = "API_KEYS_CONNECTION_STRING",
          .description = "PostgreSQL connection: libpq URI/keywords or an Npgsql connection string" },
        { "DATABASE_POOL_SIZE", CONFIG_UINT, 0, "16", 1, 64 },
        { "DATABASE_TIMEOUT", CONFIG_DURATION, 0, "10s", SEC / 100, 600 * SEC,
          .description = "deadline of one database query" },
        { "AMQP_URL", CONFIG_URL, CONFIG_SECRET | CONFIG_CREDENTIAL, "amqp://guest:guest@127.0.0.1:5672" },
        { "AMQP_EXCHANGE", CONFIG_STRING, 0, "task_exchange" },
        { "AMQP_QUEUE", CONFIG_STRING, 0, "task_queue" },
        { "AMQP_ROUTING_KEY", CONFIG_STRING, 0, "task_key" },
        { "AMQP_EVENTS_EXCHANGE", CONFIG_STRING, 0, "dtask_events",
          .description = "fanout exchange for cancel/expire events to running workers" },
        { "AMQP_HEARTBEAT", CONFIG_DURATION, 0, "30s", 0, 3600 * SEC },
        { "TLS_CERTIFICATE", CONFIG_STRING, CONFIG_CREDENTIAL, NULL,
          .description = "PEM certificate (chain) for HTTPS: a path, or the PEM text as a credential" },
        { "TLS_KEY", CONFIG_STRING, CONFIG_SECRET | CONFIG_CREDENTIAL, NULL,
          .description = "PEM private key for HTTPS: a path, or the PEM text as a credential" },
        { "HTTP_MAX_CONNECTIONS", CONFIG_UINT, 0, "1024", 1, 65536 },
        { "HTTP_TIMEOUT", CONFIG_DURATION, 0, "90s", SEC, 3600 * SEC,
          .description = "idle HTTP connections are closed after this" },

        /* dtask-keys */
        { "JWT_SECRET", CONFIG_STRING, CONFIG_SECRET | CONFIG_CREDENTIAL, NULL,
          .description = "HS256 signing secret, at least 32 bytes" },
        { "JWT_LIFETIME", CONFIG_DURATION, 0, "24h", 60 * SEC, 30 * 24 * 3600 * SEC },
        { "ADMIN_USERNAME", CONFIG_STRING, 0, NULL },
        { "ADMIN_PASSWORD", CONFIG_STRING, CONFIG_SECRET | CONFIG_CREDENTIAL, NULL },
        { "ADMIN_PASSWORD_HASH", CONFIG_STRING, CONFIG_SECRET | CONFIG_CREDENTIAL, NULL,
          .description = "argon2id hash (libsodium crypto_pwhash_str) instead of ADMIN_PASSWORD" },
        { "ADMIN_CLAIMS", CONFIG_STRING, 0, "ManageApiKey", .description = "';'-separated claims of the admin" },
        { "KEY_PEPPER", CONFIG_STRING, CONFIG_SECRET | CONFIG_CREDENTIAL, NULL,
          .description = "server-side secret of the keyed BLAKE2b key hash, at least 32 bytes" },
        { "LOGIN_RATE_LIMIT", CONFIG_UINT, 0, "10", 1, 100000,
          .description = "login attempts per minute and client address" },
        { "VALIDATE_RATE_LIMIT", CONFIG_UINT, 0, "600", 1, 10000000,
          .description = "validations of unknown keys per minute and client address" },
        { "VALIDATE_RATE_LIMIT_EXEMPT", CONFIG_STRING, 0, "127.0.0.1,::1",
          .description = "clients whose validations are never rate-limited (the dtask-api hosts): "
                         "addresses or CIDR prefixes" },

        /* dtask-api */
        { "KEYS_URL", CONFIG_URL, 0, "http://127.0.0.1:5215", .description = "base URL of dtask-keys" },
        { "KEY_CACHE_TTL", CONFIG_DURATION, 0, "5s", 0, 5 * SEC,
          .description = "how long key validations are cached (at most 5 s)" },
        { "TASK_CACHE_SIZE", CONFIG_SIZE, 0, "4M", 0, 1024 * MiB,
          .description = "memory for the JSON of recently read tasks, answered without the database; 0: none" },
        { "TASK_CACHE_TTL", CONFIG_DURATION, 0, "1s", 0, 60 * SEC,
          .description = "how long a cached task is answered at most (changes announced by PostgreSQL end it sooner)" },
        { "MAX_CODE_SIZE", CONFIG_SIZE, 0, "64K", 1, 16 * MiB },
        { "MAX_INPUT_SIZE", CONFIG_SIZE, 0, "1M", 0, 64 * MiB },
        { "MAX_TTL", CONFIG_DURATION, 0, "1.00:00:00", SEC, 365 * 24 * 3600 * SEC },
        { "MAX_WAIT", CONFIG_DURATION, 0, "60s", 0, 600 * SEC, .description = "longest ?wait= of GET" },
        { "LEASE_DURATION", CONFIG_DURATION, 0, "30s", SEC, 3600 * SEC,
          .description = "a worker's claim lapses when not renewed by a heartbeat for this long" },
        { "MAX_ATTEMPTS", CONFIG_UINT, 0, "3", 1, 100 },
        { "IDEMPOTENCY_RETENTION", CONFIG_DURATION, 0, "24h", 60 * SEC, 30 * 24 * 3600 * SEC },
        { "METRICS_ALLOW", CONFIG_STRING, 0, "127.0.0.0/8,::1",
          .description = "clients allowed to read /metrics: addresses or CIDR prefixes, \"*\" for all" },

        /* dtask-worker */
        { "API_URL", CONFIG_URL, 0, "http://127.0.0.1:8080", .description = "base URL of dtask-api" },
        { "API_KEY", CONFIG_STRING, CONFIG_SECRET | CONFIG_CREDENTIAL, NULL,
          .description = "the worker's key (claims tasks:read and tasks:execute)" },
        { "WORKER_CONCURRENCY", CONFIG_UINT, 0, "1", 1, 256 },
        { "WORKER_LOOKAHEAD", CONFIG_UINT, 0, "1", 0, 256,
          .description = "messages a worker takes ahead while all its slots are busy (held at most 0.1 s)" },
        { "WORKER_STOP_GRACE", CONFIG_DURATION, 0, "20s", 0, 3600 * SEC,
          .description = "on SIGTERM, how long running tasks may finish before they are killed and released" },
        { "SANDBOX_MEMORY_MAX", CONFIG_SIZE, 0, "256M", 16 * MiB, 0 },
        { "SANDBOX_PIDS_MAX", CONFIG_UINT, 0, "64", 4, 100000 },
        { "SANDBOX_CPU_QUOTA", CONFIG_UINT, 0, "100", 1, 100000, .description = "percent of one CPU" },
        { "SANDBOX_FILE_SIZE_MAX", CONFIG_SIZE, 0, "16M", 0, 0 },
        { "SANDBOX_OPEN_FILES_MAX", CONFIG_UINT, 0, "256", 16, 65536 },
        { "SANDBOX_OUTPUT_MAX", CONFIG_SIZE, 0, "1M", 1, 256 * MiB },
        { "SANDBOX_MAX_RUNTIME", CONFIG_DURATION, 0, "1.00:00:00", SEC, 0,
          .description = "the worker's own limit of one run (verdict timeout)" },
        { "SANDBOX_UID_MIN", CONFIG_UINT, 0, "61000", 1, 4294967294 },
        { "SANDBOX_UID_MAX", CONFIG_UINT, 0, "61999", 1, 4294967294 },
        { "SANDBOX_CGROUP_ROOT", CONFIG_STRING, 0, NULL,
          .description = "cgroup directory for runs (default: the worker's own delegated cgroup)" },
        { "PYTHON_PATH", CONFIG_STRING, 0, "/usr/bin/python3" },
        { "CSHARP_TOOLCHAIN", CONFIG_STRING, 0, "mono", .description = "mono or dotnet" },
        { "MCS_PATH", CONFIG_STRING, 0, "/usr/bin/mcs" },
        { "MONO_PATH", CONFIG_STRING, 0, "/usr/bin/mono" },
        { "DOTNET_PATH", CONFIG_STRING, 0, "/usr/bin/dotnet" },
        { "CACHE_DIRECTORY", CONFIG_STRING, 0, "/var/cache/dtask" },
        { "STATE_DIRECTORY", CONFIG_STRING, 0, "/var/lib/dtask" },

        /* dtask-reaper */
        { "REPUBLISH_AFTER", CONFIG_DURATION, 0, "5min", 10 * SEC, 0,
          .description = "a Pending task published this long ago and never claimed is published again" },
        { "RETENTION", CONFIG_DURATION, 0, "0", 0, 0,
          .description = "purge terminal tasks older than this; 0 keeps them forever" },
};

const size_t config_keys_n = ELEMENTSOF(config_keys);
