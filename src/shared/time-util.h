/* SPDX-License-Identifier: MIT */
#pragma once

#include <time.h>

#include "macro.h"

/* Times are microseconds: usec_t since the epoch (CLOCK_REALTIME) or durations. */
typedef uint64_t usec_t;

/* .NET TimeSpan text, the "c" format of the older system: [d.]hh:mm:ss[.fffffff].
 * Parsing accepts days, hh 0–23, mm/ss 0–59, 1–7 fraction digits, and also the
 * short form hh:mm. Precision is the microsecond: a 7th fraction digit is rounded.
 * Negative spans are refused (-ERANGE), as are values beyond TIMESPAN_MAX_USEC. */
#define TIMESPAN_MAX_USEC ((usec_t) 10675199 * 24 * 3600 * USEC_PER_SEC) /* TimeSpan.MaxValue days */
#define TIMESPAN_STRING_MAX 32
int timespan_parse(const char *s, usec_t *ret);
/* Formats into buf (TIMESPAN_STRING_MAX); returns buf. 1800 s → "00:30:00",
 * 7 days → "7.00:00:00", 1.5 s → "00:00:01.5000000". */
char *timespan_format(usec_t t, char buf[static TIMESPAN_STRING_MAX]);

/* Durations in configuration: a TimeSpan, an integer number of seconds, or a number
 * with a unit: "500ms", "2s", "5min", "1h", "1d" (also "us"). */
int duration_parse(const char *s, usec_t *ret);

/* ISO-8601 UTC timestamps "2026-11-28T18:06:45.123456Z" (always 6 fraction digits). */
#define ISO8601_STRING_MAX 40
char *iso8601_format(usec_t t, char buf[static ISO8601_STRING_MAX]);
/* Accepts "YYYY-MM-DDTHH:MM:SS[.f…](Z|±HH:MM|±HHMM)" (' ' for 'T' too); without an offset
 * the time is taken as UTC. Up to 9 fraction digits, truncated to microseconds. */
int iso8601_parse(const char *s, usec_t *ret);

usec_t now_usec(clockid_t clock);
