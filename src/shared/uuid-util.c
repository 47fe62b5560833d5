/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <sodium.h>
#include <stdio.h>

#include "uuid-util.h"

char *uuid_generate_v4(char buf[static UUID_STRING_MAX]) {
        static const char hex[] = "0123456789abcdef";
        uint8_t b[16];
        size_t k = 0;

        randombytes_buf(b, sizeof b);
        b[6] = (uint8_t) ((b[6] & 0x0f) | 0x40); /* version 4 */
        b[8] = (uint8_t) ((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */

        for (size_t i = 0; i < sizeof b; i++) {
                if (i == 4 || i == 6 || i == 8 || i == 10)
                        buf[k++] = '-';
                buf[k++] = hex[b[i] >> 4];
                buf[k++] = hex[b[i] & 0xf];
        }
        buf[k] = '\0';
        return buf;
}

int uuid_normalize(const char *s, char buf[static UUID_STRING_MAX]) {
        char tmp[UUID_STRING_MAX];

        if (!s || strlen(s) != UUID_STRING_MAX - 1)
                return -EINVAL;

        for (size_t i = 0; i < UUID_STRING_MAX - 1; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (s[i] != '-')
                                return -EINVAL;
                        tmp[i] = '-';
                } else if (isxdigit((unsigned char) s[i]))
                        tmp[i] = (char) tolower((unsigned char) s[i]);
                else
                        return -EINVAL;
        }
        tmp[UUID_STRING_MAX - 1] = '\0';
        if (buf)
                memcpy(buf, tmp, sizeof tmp);
        return 0;
}
