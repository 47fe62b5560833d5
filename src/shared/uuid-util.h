/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* UUIDs as text: 36 characters, lower-case, with dashes. */
#define UUID_STRING_MAX 37

/* A random (version 4, RFC 4122 variant) UUID from libsodium's CSPRNG. */
char *uuid_generate_v4(char buf[static UUID_STRING_MAX]);
/* Validates "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (any case, any version) and writes
 * its lower-case form to buf (may be NULL). -EINVAL when it is not a UUID. */
int uuid_normalize(const char *s, char buf[static UUID_STRING_MAX]);
static inline bool uuid_is_valid(const char *s) {
        char buf[UUID_STRING_MAX];
        return s && uuid_normalize(s, buf) >= 0;
}
/* FNV-1a over the text of a normalized id, for hash tables: ids are random (the server
 * makes them), so any mix will do. */
static inline uint32_t uuid_hash(const char *id) {
        uint32_t h = 2166136261U;

        for (const unsigned char *p = (const unsigned char *) id; *p; p++)
                h = (h ^ *p) * 16777619U;
        return h;
}
