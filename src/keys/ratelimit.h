/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* Per-client rate limits: a token bucket per client address that holds up to
 * `per_minute` tokens and refills at per_minute/60 tokens a second, kept as a
 * "theoretical arrival time" (GCRA), one integer per address. The table of
 * addresses is bounded (least recently seen addresses are forgotten first, which
 * only ever makes a limit more lenient). Times are CLOCK_MONOTONIC microseconds,
 * passed in so that tests can drive the clock. */

typedef struct RateLimit RateLimit;

#define RATELIMIT_MAX_ADDRESSES_DEFAULT 4096

int ratelimit_new(RateLimit **ret, unsigned per_minute, size_t max_addresses);
RateLimit *ratelimit_free(RateLimit *rl);
DEFINE_TRIVIAL_CLEANUP_FUNC(RateLimit *, ratelimit_free);

/* Whether address may make a request now, without using a token. When not,
 * *ret_retry_after_usec (optional) is the time until a token is available (> 0). */
bool ratelimit_test(RateLimit *rl, const char *address, uint64_t now_usec, uint64_t *ret_retry_after_usec);

/* Uses one token of address. Returns 1 when one was available, 0 when the limit is
 * exhausted (then *ret_retry_after_usec is set as above and nothing is used), -ENOMEM. */
int ratelimit_take(RateLimit *rl, const char *address, uint64_t now_usec, uint64_t *ret_retry_after_usec);

/* Whole seconds for a Retry-After header: rounded up, at least 1. */
unsigned ratelimit_retry_after_sec(uint64_t retry_after_usec);

size_t ratelimit_n_addresses(RateLimit *rl);
