/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include "waiters.h"

#define ID_A "0b7f3c9e-5d1a-4c8e-9f2a-6e4d2c1b0a99"
#define ID_B "5a1d2e3f-4b6c-4d7e-8f90-a1b2c3d4e5f6"

typedef struct Probe {
        unsigned calls;
        Waiter *w;
        const Task *task;
        bool free_self;
} Probe;

static void on_wake(Waiter *w, const Task *task, void *userdata) {
        Probe *p = userdata;

        assert_ptr_equal(w, p->w);
        p->calls++;
        p->task = task;
        if (p->free_self)
                p->w = waiter_free(p->w);
}

static void test_notify(void **state) {
        _cleanup_(waiters_freep) Waiters *ws = NULL;
        Probe a1 = {}, a2 = {}, b = {};

        assert_int_equal(waiters_new(&ws), 0);
        assert_int_equal(waiters_add(ws, ID_A, on_wake, &a1, &a1.w), 0);
        assert_int_equal(waiters_add(ws, ID_A, on_wake, &a2, &a2.w), 0);
        assert_int_equal(waiters_add(ws, ID_B, on_wake, &b, &b.w), 0);
        assert_int_equal(waiters_count(ws), 3);
        assert_int_equal(waiters_add(ws, "nope", on_wake, &b, &b.w), -EINVAL);

        /* ids are matched case-insensitively (normalized) */
        waiters_notify(ws, "0B7F3C9E-5D1A-4C8E-9F2A-6E4D2C1B0A99", NULL);
        assert_int_equal(a1.calls, 1);
        assert_int_equal(a2.calls, 1);
        assert_int_equal(b.calls, 0);

        waiters_notify(ws, "not a uuid", NULL);
        waiters_notify(ws, "11111111-1111-1111-1111-111111111111", NULL);
        assert_int_equal(a1.calls + a2.calls + b.calls, 2);

        waiters_notify_all(ws);
        assert_int_equal(a1.calls, 2);
        assert_int_equal(a2.calls, 2);
        assert_int_equal(b.calls, 1);
        assert_null(b.task);

        /* the row of a change made here is handed to the waiters of that task */
        Task row = { .status = TASK_COMPLETED };
        waiters_notify(ws, ID_B, &row);
        assert_int_equal(b.calls, 2);
        assert_ptr_equal(b.task, &row);
        assert_int_equal(a1.calls, 2);

        /* callbacks may free their own waiter while the list is walked */
        a1.free_self = a2.free_self = true;
        waiters_notify(ws, ID_A, NULL);
        assert_null(a1.w);
        assert_null(a2.w);
        assert_int_equal(waiters_count(ws), 1);
        waiters_notify(ws, ID_A, NULL);
        assert_int_equal(a1.calls, 3);

        b.free_self = true;
        waiters_notify_all(ws);
        assert_int_equal(waiters_count(ws), 0);
        assert_null(waiter_free(NULL));
}

static void test_many(void **state) {
        _cleanup_(waiters_freep) Waiters *ws = NULL;
        Probe probes[600] = {};
        char id[UUID_STRING_MAX];

        assert_int_equal(waiters_new(&ws), 0);
        for (size_t i = 0; i < ELEMENTSOF(probes); i++) {
                snprintf(id, sizeof(id), "%08zx-0000-4000-8000-000000000000", i % 300);
                assert_int_equal(waiters_add(ws, id, on_wake, &probes[i], &probes[i].w), 0);
        }
        waiters_notify(ws, "00000007-0000-4000-8000-000000000000", NULL);
        for (size_t i = 0; i < ELEMENTSOF(probes); i++)
                assert_int_equal(probes[i].calls, i % 300 == 7 ? 1 : 0);
        for (size_t i = 0; i < ELEMENTSOF(probes); i += 2)
                probes[i].w = waiter_free(probes[i].w);
        assert_int_equal(waiters_count(ws), 300);
        waiters_notify_all(ws);
        for (size_t i = 0; i < ELEMENTSOF(probes); i++)
                assert_int_equal(probes[i].calls, (i % 300 == 7) + (i % 2 == 1));
        for (size_t i = 1; i < ELEMENTSOF(probes); i += 2)
                probes[i].w = waiter_free(probes[i].w);
        assert_int_equal(waiters_count(ws), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_notify),
                cmocka_unit_test(test_many),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
