/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <stdio.h>

#include "address-list.h"

typedef struct Entry {
        int family;
        uint8_t addr[16];
        unsigned prefix; /* bits */
} Entry;

struct AddressList {
        size_t n;
        Entry entries[];
};

/* "a.b.c.d" / "x::y" / "::ffff:a.b.c.d" (as IPv4). */
static int parse_address(const char *s, int *ret_family, uint8_t ret[16]) {
        uint8_t a6[16];

        if (inet_pton(AF_INET, s, ret) == 1) {
                *ret_family = AF_INET;
                return 0;
        }
        if (inet_pton(AF_INET6, s, a6) != 1)
                return -EINVAL;
        static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        if (memcmp(a6, mapped, sizeof mapped) == 0) {
                memcpy(ret, a6 + 12, 4);
                *ret_family = AF_INET;
                return 0;
        }
        memcpy(ret, a6, 16);
        *ret_family = AF_INET6;
        return 0;
}

static int parse_entry(const char *s, Entry *ret) {
        char buf[INET6_ADDRSTRLEN + 8];
        const char *slash;
        unsigned prefix, max;
        size_t n;

        slash = strchr(s, '/');
        n = slash ? (size_t) (slash - s) : strlen(s);
        if (n == 0 || n >= sizeof buf)
                return -EINVAL;
        memcpy(buf, s, n);
        buf[n] = '\0';
        if (parse_address(buf, &ret->family, ret->addr) < 0)
                return -EINVAL;
        max = ret->family == AF_INET ? 32 : 128;
        if (slash) {
                char *end;
                unsigned long p;

                errno = 0;
                p = strtoul(slash + 1, &end, 10);
                if (errno != 0 || end == slash + 1 || *end != '\0' || p > max)
                        return -EINVAL;
                prefix = (unsigned) p;
        } else
                prefix = max;
        ret->prefix = prefix;
        return 0;
}

int address_list_parse(AddressList **ret, const char *s, char **ret_bad) {
        _cleanup_(address_list_freep) AddressList *l = NULL;
        _cleanup_free_ char *copy = NULL;
        size_t max = 1;
        char *p, *tok, *save = NULL;

        for (const char *c = strempty(s); *c; c++)
                if (strchr(", ;\t\n", *c))
                        max++;
        l = calloc(1, sizeof(AddressList) + max * sizeof(Entry));
        copy = strdup(strempty(s));
        if (!l || !copy)
                return -ENOMEM;

        for (p = copy; (tok = strtok_r(p, ", ;\t\n", &save)); p = NULL) {
                if (parse_entry(tok, &l->entries[l->n]) < 0) {
                        if (ret_bad)
                                *ret_bad = strdup(tok);
                        return -EINVAL;
                }
                l->n++;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

AddressList *address_list_free(AddressList *l) {
        return mfree(l);
}

static bool prefix_matches(const uint8_t *a, const uint8_t *b, unsigned bits) {
        unsigned bytes = bits / 8, rest = bits % 8;

        if (memcmp(a, b, bytes) != 0)
                return false;
        if (rest == 0)
                return true;
        uint8_t mask = (uint8_t) (0xff << (8 - rest));
        return (a[bytes] & mask) == (b[bytes] & mask);
}

bool address_list_contains(const AddressList *l, const char *address) {
        uint8_t a[16];
        int family;

        if (!l || !address || parse_address(address, &family, a) < 0)
                return false;
        for (size_t i = 0; i < l->n; i++)
                if (l->entries[i].family == family && prefix_matches(a, l->entries[i].addr, l->entries[i].prefix))
                        return true;
        return false;
}

size_t address_list_size(const AddressList *l) {
        return l ? l->n : 0;
}
