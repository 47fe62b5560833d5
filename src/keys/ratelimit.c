/* SPDX-License-Identifier: MIT */
#include "lru-map.h"
#include "ratelimit.h"

#define MINUTE_USEC (60 * USEC_PER_SEC)

struct RateLimit {
        LruMap *addresses; /* address → uint64_t theoretical arrival time */
        uint64_t interval; /* usec per token */
        uint64_t burst;    /* usec of tokens that may be used at once beyond one: (per_minute - 1) * interval */
};

int ratelimit_new(RateLimit **ret, unsigned per_minute, size_t max_addresses) {
        _cleanup_(ratelimit_freep) RateLimit *rl = NULL;
        int r;

        if (!ret || per_minute == 0)
                return -EINVAL;

        rl = calloc(1, sizeof *rl);
        if (!rl)
                return -ENOMEM;
        rl->interval = MAX(MINUTE_USEC / per_minute, (uint64_t) 1);
        rl->burst = (uint64_t) (per_minute - 1) * rl->interval;
        r = lru_map_new(&rl->addresses, max_addresses ?: RATELIMIT_MAX_ADDRESSES_DEFAULT, sizeof(uint64_t), NULL,
                        NULL);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(rl);
        return 0;
}

RateLimit *ratelimit_free(RateLimit *rl) {
        if (!rl)
                return NULL;
        lru_map_free(rl->addresses);
        return mfree(rl);
}

/* Addresses are at most 45 characters (IPv6) plus a zone; longer ones are cut. */
static const char *address_key(const char *address, char buf[static LRU_MAP_KEY_MAX + 1]) {
        size_t n = strnlen(strempty(address), LRU_MAP_KEY_MAX);

        memcpy(buf, strempty(address), n);
        buf[n] = '\0';
        return buf;
}

/* An address that is not in the table has its full bucket. */
static bool allowed(const RateLimit *rl, uint64_t tat, uint64_t now, uint64_t *ret_retry_after) {
        uint64_t t = MAX(tat, now);

        if (t - now <= rl->burst)
                return true;
        if (ret_retry_after)
                *ret_retry_after = t - now - rl->burst;
        return false;
}

bool ratelimit_test(RateLimit *rl, const char *address, uint64_t now_usec, uint64_t *ret_retry_after_usec) {
        char buf[LRU_MAP_KEY_MAX + 1];
        uint64_t *tat;

        tat = lru_map_get(rl->addresses, address_key(address, buf));
        return allowed(rl, tat ? *tat : 0, now_usec, ret_retry_after_usec);
}

int ratelimit_take(RateLimit *rl, const char *address, uint64_t now_usec, uint64_t *ret_retry_after_usec) {
        char buf[LRU_MAP_KEY_MAX + 1];
        uint64_t *tat;

        tat = lru_map_ensure(rl->addresses, address_key(address, buf), NULL);
        if (!tat)
                return -errno;
        if (!allowed(rl, *tat, now_usec, ret_retry_after_usec))
                return 0;
        *tat = MAX(*tat, now_usec) + rl->interval;
        return 1;
}

unsigned ratelimit_retry_after_sec(uint64_t retry_after_usec) {
        uint64_t s = (retry_after_usec + USEC_PER_SEC - 1) / USEC_PER_SEC;

        return (unsigned) CLAMP(s, (uint64_t) 1, (uint64_t) UINT32_MAX);
}

size_t ratelimit_n_addresses(RateLimit *rl) {
        return lru_map_size(rl->addresses);
}
