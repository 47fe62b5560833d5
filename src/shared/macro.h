/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((__cleanup__(f)))
#define _unused_ __attribute__((__unused__))
#define _pure_ __attribute__((__pure__))
#define _const_ __attribute__((__const__))
#define _noreturn_ __attribute__((__noreturn__))
#define _printf_(a, b) __attribute__((__format__(printf, a, b)))
#define _sentinel_ __attribute__((__sentinel__))
#define _warn_unused_result_ __attribute__((__warn_unused_result__))
#define _likely_(x) (__builtin_expect(!!(x), 1))
#define _unlikely_(x) (__builtin_expect(!!(x), 0))
#define _public_ __attribute__((__visibility__("default")))
#define _fallthrough_ __attribute__((__fallthrough__))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define STRLEN(x) (sizeof("" x "") - 1)

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : (x) > (hi) ? (hi) : (x))

#define streq(a, b) (strcmp((a), (b)) == 0)
#define strneq(a, b, n) (strncmp((a), (b), (n)) == 0)
#define strcaseeq(a, b) (strcasecmp((a), (b)) == 0)

static inline bool streq_ptr(const char *a, const char *b) {
        return a && b ? streq(a, b) : a == b;
}

static inline bool isempty(const char *s) {
        return !s || s[0] == '\0';
}

static inline const char *strempty(const char *s) {
        return s ?: "";
}

static inline const char *strna(const char *s) {
        return s ?: "n/a";
}

/* Returns the value of the pointer and sets the variable to NULL: hands ownership out. */
#define TAKE_PTR(p)                             \
        ({                                      \
                __typeof__(p) _ptr_ = (p);      \
                (p) = NULL;                     \
                _ptr_;                          \
        })

#define TAKE_FD(fd)                     \
        ({                              \
                int _fd_ = (fd);        \
                (fd) = -EBADF;          \
                _fd_;                   \
        })

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

#define free_and_replace(a, b)          \
        ({                              \
                free(a);                \
                (a) = TAKE_PTR(b);      \
                0;                      \
        })

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}

static inline void freep(void *p) {
        free(*(void **) p);
}

static inline void closep(int *fd) {
        safe_close(*fd);
}

#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)

/* Defines name##p(), a cleanup helper calling func(*p) when *p is not NULL. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                 \
        static inline void func##p(type *p) {                   \
                if (*p)                                         \
                        (void) func(*p);                        \
        }

#define DEFINE_TRIVIAL_CLEANUP_FUNC_FULL(type, func, name)      \
        static inline void name(type *p) {                      \
                if (*p)                                         \
                        (void) func(*p);                        \
        }

/* Makes sure errno is negative and never zero: libraries sometimes fail without setting it. */
static inline int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}

#define RET_NERRNO(expr)                        \
        ({                                      \
                __typeof__(expr) _r_ = (expr);  \
                _r_ < 0 ? negative_errno() : _r_; \
        })

#define assert_return(expr, r)                  \
        do {                                    \
                if (_unlikely_(!(expr)))        \
                        return (r);             \
        } while (false)

#define USEC_PER_SEC ((uint64_t) 1000000ULL)
#define USEC_PER_MSEC ((uint64_t) 1000ULL)
#define NSEC_PER_USEC ((uint64_t) 1000ULL)
#define NSEC_PER_SEC ((uint64_t) 1000000000ULL)
#define USEC_INFINITY ((uint64_t) UINT64_MAX)

/* Cleanup helpers for the foreign types every daemon handles. */
#include <json-c/json_object.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <sodium.h>

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put);
DEFINE_TRIVIAL_CLEANUP_FUNC(PGresult *, PQclear);
DEFINE_TRIVIAL_CLEANUP_FUNC(PGconn *, PQfinish);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct MHD_Response *, MHD_destroy_response);

#define _cleanup_json_ _cleanup_(json_object_putp)
#define _cleanup_pgresult_ _cleanup_(PQclearp)

/* Secrets: wiped before the memory goes back to the allocator. */
static inline void *erase_and_free(char *s) {
        if (s) {
                sodium_memzero(s, strlen(s));
                free(s);
        }
        return NULL;
}

static inline void erase_and_freep(char **s) {
        erase_and_free(*s);
}

#define _cleanup_erase_ _cleanup_(erase_and_freep)
