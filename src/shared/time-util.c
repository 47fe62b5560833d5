/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdio.h>
#include <time.h>

#include "time-util.h"

#define USEC_PER_MINUTE (60 * USEC_PER_SEC)
#define USEC_PER_HOUR (60 * USEC_PER_MINUTE)
#define USEC_PER_DAY (24 * USEC_PER_HOUR)

usec_t now_usec(clockid_t clock) {
        struct timespec ts;

        if (clock_gettime(clock, &ts) < 0)
                abort(); /* cannot fail for the clocks we use */
        return (usec_t) ts.tv_sec * USEC_PER_SEC + (usec_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* Reads 1..max_digits decimal digits; returns the number of digits read, 0 if none. */
static size_t parse_digits(const char **p, size_t max_digits, uint64_t *ret) {
        uint64_t v = 0;
        size_t n = 0;

        while (n < max_digits && isdigit((unsigned char) (*p)[n])) {
                v = v * 10 + (uint64_t) ((*p)[n] - '0');
                n++;
        }
        *p += n;
        *ret = v;
        return n;
}

/* Fraction digits to microseconds, rounding at the 7th digit (TimeSpan ticks) or truncating. */
static size_t parse_fraction(const char **p, size_t max_digits, bool round, usec_t *ret) {
        usec_t usec = 0, scale = 100000;
        size_t n = 0;

        while (n < max_digits && isdigit((unsigned char) (*p)[n])) {
                unsigned d = (unsigned) ((*p)[n] - '0');

                if (n < 6)
                        usec += d * scale;
                else if (n == 6 && round && d >= 5)
                        usec += 1;
                scale /= 10;
                n++;
        }
        *p += n;
        *ret = usec;
        return n;
}

int timespan_parse(const char *s, usec_t *ret) {
        uint64_t a, b, c = 0, days = 0;
        usec_t fraction = 0;
        const char *p = s;
        size_t n;

        if (isempty(s))
                return -EINVAL;
        if (*p == '-')
                return -ERANGE;

        /* Either "d." prefix or the hours: read the first number, then decide by what follows. */
        n = parse_digits(&p, 8, &a);
        if (n == 0)
                return -EINVAL;
        if (*p == '.') {
                days = a;
                p++;
                if (parse_digits(&p, 2, &a) == 0)
                        return -EINVAL;
        } else if (n > 2)
                return -EINVAL;

        if (*p != ':')
                return -EINVAL;
        p++;
        if (parse_digits(&p, 2, &b) != 2)
                return -EINVAL;

        if (*p == ':') {
                p++;
                if (parse_digits(&p, 2, &c) != 2)
                        return -EINVAL;
                if (*p == '.') {
                        p++;
                        if (parse_fraction(&p, 7, /* round= */ true, &fraction) == 0)
                                return -EINVAL;
                }
        }
        if (*p != '\0')
                return -EINVAL;
        if (a > 23 || b > 59 || c > 59)
                return -EINVAL;
        if (days > TIMESPAN_MAX_USEC / USEC_PER_DAY)
                return -ERANGE;

        *ret = days * USEC_PER_DAY + a * USEC_PER_HOUR + b * USEC_PER_MINUTE + c * USEC_PER_SEC + fraction;
        return 0;
}

char *timespan_format(usec_t t, char buf[static TIMESPAN_STRING_MAX]) {
        usec_t days = t / USEC_PER_DAY, rest = t % USEC_PER_DAY;
        unsigned h = (unsigned) (rest / USEC_PER_HOUR), m = (unsigned) (rest % USEC_PER_HOUR / USEC_PER_MINUTE),
                 sec = (unsigned) (rest % USEC_PER_MINUTE / USEC_PER_SEC), frac = (unsigned) (rest % USEC_PER_SEC);
        int k = 0;

        if (days > 0)
                k = snprintf(buf, TIMESPAN_STRING_MAX, "%" PRIu64 ".", days);
        k += snprintf(buf + k, TIMESPAN_STRING_MAX - (size_t) k, "%02u:%02u:%02u", h, m, sec);
        if (frac > 0)
                (void) snprintf(buf + k, TIMESPAN_STRING_MAX - (size_t) k, ".%06u0", frac);
        return buf;
}

int duration_parse(const char *s, usec_t *ret) {
        static const struct {
                const char *suffix;
                usec_t factor;
        } units[] = {
                { "us", 1 },
                { "ms", USEC_PER_MSEC },
                { "s", USEC_PER_SEC },
                { "sec", USEC_PER_SEC },
                { "min", USEC_PER_MINUTE },
                { "m", USEC_PER_MINUTE },
                { "h", USEC_PER_HOUR },
                { "d", USEC_PER_DAY },
        };
        const char *p = s;
        uint64_t v;

        if (isempty(s))
                return -EINVAL;
        if (strchr(s, ':'))
                return timespan_parse(s, ret);

        if (parse_digits(&p, 12, &v) == 0)
                return *p == '-' ? -ERANGE : -EINVAL;
        if (*p == '\0') {
                *ret = v * USEC_PER_SEC;
                return 0;
        }
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (streq(p, units[i].suffix)) {
                        if (v > TIMESPAN_MAX_USEC / units[i].factor)
                                return -ERANGE;
                        *ret = v * units[i].factor;
                        return 0;
                }
        return -EINVAL;
}

char *iso8601_format(usec_t t, char buf[static ISO8601_STRING_MAX]) {
        time_t sec = (time_t) (t / USEC_PER_SEC);
        struct tm tm;
        size_t k;

        if (!gmtime_r(&sec, &tm))
                abort(); /* only for times beyond year 2^31 */
        k = strftime(buf, ISO8601_STRING_MAX, "%Y-%m-%dT%H:%M:%S", &tm);
        (void) snprintf(buf + k, ISO8601_STRING_MAX - k, ".%06uZ", (unsigned) (t % USEC_PER_SEC));
        return buf;
}

static bool expect(const char **p, char c) {
        if (**p != c)
                return false;
        (*p)++;
        return true;
}

int iso8601_parse(const char *s, usec_t *ret) {
        uint64_t year, mon, day, hour, min, sec, oh = 0, om = 0;
        usec_t fraction = 0;
        const char *p = s;
        struct tm tm = {};
        int64_t offset = 0;
        time_t t;

        if (isempty(s))
                return -EINVAL;

        if (parse_digits(&p, 4, &year) != 4 || !expect(&p, '-') || parse_digits(&p, 2, &mon) != 2 ||
            !expect(&p, '-') || parse_digits(&p, 2, &day) != 2)
                return -EINVAL;
        if (!expect(&p, 'T') && !expect(&p, 't') && !expect(&p, ' '))
                return -EINVAL;
        if (parse_digits(&p, 2, &hour) != 2 || !expect(&p, ':') || parse_digits(&p, 2, &min) != 2 ||
            !expect(&p, ':') || parse_digits(&p, 2, &sec) != 2)
                return -EINVAL;
        if (expect(&p, '.') && parse_fraction(&p, 9, /* round= */ false, &fraction) == 0)
                return -EINVAL;

        if (expect(&p, 'Z') || expect(&p, 'z'))
                ;
        else if (*p == '+' || *p == '-') {
                int sign = *p == '-' ? -1 : 1;

                p++;
                if (parse_digits(&p, 2, &oh) != 2)
                        return -EINVAL;
                (void) expect(&p, ':');
                if (parse_digits(&p, 2, &om) != 2 || oh > 23 || om > 59)
                        return -EINVAL;
                offset = sign * (int64_t) (oh * 3600 + om * 60);
        }
        if (*p != '\0')
                return -EINVAL;

        if (year < 1970 || mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60)
                return -EINVAL;

        tm = (struct tm) {
                .tm_year = (int) year - 1900,
                .tm_mon = (int) mon - 1,
                .tm_mday = (int) day,
                .tm_hour = (int) hour,
                .tm_min = (int) min,
                .tm_sec = (int) sec,
        };
        t = timegm(&tm);
        if (t == (time_t) -1)
                return -EINVAL;
        /* timegm() normalizes 2026-02-31 into March: refuse such dates. */
        if (tm.tm_mday != (int) day || tm.tm_mon != (int) mon - 1)
                return -EINVAL;
        t -= offset;
        if (t < 0)
                return -ERANGE;

        *ret = (usec_t) t * USEC_PER_SEC + fraction;
        return 0;
}
