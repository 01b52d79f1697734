/* Tests for rx_timer: firing times and order, repeat, stop/free/restart from callbacks, scale. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* A generic recording timer context. */
#define MAXREC 64
struct rec {
    rx_loop *loop;
    rx_timer *timer;
    int id;
    int calls;
    uint64_t fired_ms[MAXREC];
    uint64_t fired_iter[MAXREC];
    /* actions */
    int stop_self_at;     /* stop itself on this call */
    int free_self_at;     /* free itself on this call */
    int restart_self_max; /* restart itself (timeout restart_ms) while calls < this */
    uint64_t restart_ms;
    rx_timer *stop_other; /* stop this one on the first call */
    rx_timer *free_other; /* free this one on the first call */
    bool *other_freed;
    rx_timer *start_other; /* start this one with timeout 0 on the first call */
    struct rec *other_rec;
    int other_calls_after_start;
    bool active_in_cb;
};

static int order[MAXREC];
static int norder;

static void rec_cb(rx_timer *t, void *arg) {
    struct rec *r = arg;
    ck_assert_ptr_eq(t, r->timer);
    if (r->calls < MAXREC) {
        r->fired_ms[r->calls] = rx_loop_now_ms(r->loop);
        r->fired_iter[r->calls] = rx_loop_iterations(r->loop);
    }
    r->calls++;
    if (norder < MAXREC)
        order[norder++] = r->id;
    r->active_in_cb = rx_timer_active(t);
    if (r->calls == 1 && r->stop_other)
        rx_timer_stop(r->stop_other);
    if (r->calls == 1 && r->free_other && !*r->other_freed) {
        rx_timer_free(r->free_other);
        *r->other_freed = true;
    }
    if (r->calls == 1 && r->start_other) {
        ck_assert_int_eq(rx_timer_start(r->start_other, 0, 0), 0);
        r->other_calls_after_start = r->other_rec->calls;
    }
    if (r->restart_self_max && r->calls < r->restart_self_max)
        ck_assert_int_eq(rx_timer_start(t, r->restart_ms, 0), 0);
    if (r->stop_self_at && r->calls == r->stop_self_at)
        rx_timer_stop(t);
    if (r->free_self_at && r->calls == r->free_self_at)
        rx_timer_free(t);
}

static rx_timer *new_rec_timer(rx_loop *loop, struct rec *r, int id) {
    r->loop = loop;
    r->id = id;
    r->timer = rx_timer_new(loop, rec_cb, r);
    ck_assert_ptr_nonnull(r->timer);
    return r->timer;
}

/* ---- basics ---- */

START_TEST(test_oneshot) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    rx_timer *t = new_rec_timer(loop, &r, 0);
    ck_assert(!rx_timer_active(t));
    rx_loop_update_time(loop);
    uint64_t t0 = rx_loop_now_ms(loop);
    unsigned long long real0 = tu_now_ms();
    ck_assert_int_eq(rx_timer_start(t, 20, 0), 0);
    ck_assert(rx_timer_active(t));
    ck_assert_int_eq(r.calls, 0); /* never from inside start */
    ck_assert(tu_run_until_count(loop, &r.calls, 1, 1000));
    ck_assert_uint_ge(r.fired_ms[0], t0 + 20);
    ck_assert_uint_ge(tu_now_ms() - real0, 19);
    ck_assert_uint_lt(tu_now_ms() - real0, 500);
    ck_assert(!rx_timer_active(t));
    tu_run_for(loop, 40);
    ck_assert_int_eq(r.calls, 1);
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_active) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0}, rr = {0};
    rx_timer *t = new_rec_timer(loop, &r, 0);
    rx_timer *rep = new_rec_timer(loop, &rr, 1);
    ck_assert(!rx_timer_active(t));
    rx_timer_stop(t); /* no-op when stopped */
    ck_assert(!rx_timer_active(t));
    ck_assert_int_eq(rx_timer_start(t, 1000, 0), 0);
    ck_assert(rx_timer_active(t));
    rx_timer_stop(t);
    ck_assert(!rx_timer_active(t));
    rx_timer_stop(t);
    ck_assert(!rx_timer_active(t));
    /* A stopped timer never fires. */
    ck_assert_int_eq(rx_timer_start(t, 0, 0), 0);
    rx_timer_stop(t);
    tu_run_for(loop, 20);
    ck_assert_int_eq(r.calls, 0);
    /* A one-shot is inactive after firing; a repeating timer stays active. */
    ck_assert_int_eq(rx_timer_start(t, 0, 0), 0);
    ck_assert_int_eq(rx_timer_start(rep, 0, 1000), 0);
    ck_assert(tu_run_until_count(loop, &r.calls, 1, 1000));
    ck_assert(tu_run_until_count(loop, &rr.calls, 1, 1000));
    ck_assert(!rx_timer_active(t));
    ck_assert(rx_timer_active(rep));
    rx_timer_free(t);
    rx_timer_free(rep);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_order_different_timeouts) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    static const uint64_t timeouts[] = {30, 10, 20, 0, 5, 15};
    static const int expected[] = {3, 4, 1, 5, 2, 0};
    enum { N = 6 };
    struct rec r[N];
    norder = 0;
    rx_loop_update_time(loop);
    uint64_t t0 = rx_loop_now_ms(loop);
    for (int i = 0; i < N; i++) {
        r[i] = (struct rec){0};
        ck_assert_int_eq(rx_timer_start(new_rec_timer(loop, &r[i], i), timeouts[i], 0), 0);
    }
    ck_assert(tu_run_until_count(loop, &norder, N, 1000));
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(order[i], expected[i]);
        ck_assert_int_eq(r[i].calls, 1);
        ck_assert_uint_ge(r[i].fired_ms[0], t0 + timeouts[i]);
    }
    for (int i = 0; i < N; i++)
        rx_timer_free(r[i].timer);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_equal_timeouts_start_order) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    enum { N = 40 };
    static struct rec r[N];
    norder = 0;
    for (int i = 0; i < N; i++) {
        r[i] = (struct rec){0};
        new_rec_timer(loop, &r[i], i);
    }
    /* Start them in a shuffled order; they must fire in that start order. */
    int perm[N];
    for (int i = 0; i < N; i++)
        perm[i] = i;
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(rng() % (uint64_t)(i + 1));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(rx_timer_start(r[perm[i]].timer, 5, 0), 0);
    ck_assert(tu_run_until_count(loop, &norder, N, 1000));
    for (int i = 0; i < N; i++)
        ck_assert_msg(order[i] == perm[i], "position %d: fired %d, started %d", i, order[i],
                      perm[i]);
    for (int i = 0; i < N; i++)
        rx_timer_free(r[i].timer);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_repeating_stop_in_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {.stop_self_at = 5};
    rx_timer *t = new_rec_timer(loop, &r, 0);
    rx_loop_update_time(loop);
    uint64_t t0 = rx_loop_now_ms(loop);
    ck_assert_int_eq(rx_timer_start(t, 5, 5), 0);
    ck_assert(tu_run_until_count(loop, &r.calls, 5, 2000));
    ck_assert(!rx_timer_active(t));
    for (int i = 0; i < 5; i++) {
        ck_assert_uint_ge(r.fired_ms[i], t0 + 5u * (uint64_t)(i + 1));
        if (i)
            ck_assert_uint_gt(r.fired_iter[i], r.fired_iter[i - 1]);
    }
    tu_run_for(loop, 30);
    ck_assert_int_eq(r.calls, 5);
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_restart_self_in_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {.restart_self_max = 3, .restart_ms = 5};
    rx_timer *t = new_rec_timer(loop, &r, 0);
    ck_assert_int_eq(rx_timer_start(t, 0, 0), 0);
    ck_assert(tu_run_until_count(loop, &r.calls, 3, 1000));
    ck_assert(!rx_timer_active(t));
    tu_run_for(loop, 20);
    ck_assert_int_eq(r.calls, 3);
    ck_assert_uint_ge(r.fired_ms[1], r.fired_ms[0] + 5);
    ck_assert_uint_ge(r.fired_ms[2], r.fired_ms[1] + 5);
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

/* ---- stop/free from callbacks ---- */

START_TEST(test_cancel_other_from_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    /* A later timer stopped by an earlier one. */
    struct rec a = {0}, b = {0};
    new_rec_timer(loop, &a, 0);
    new_rec_timer(loop, &b, 1);
    a.stop_other = b.timer;
    ck_assert_int_eq(rx_timer_start(a.timer, 5, 0), 0);
    ck_assert_int_eq(rx_timer_start(b.timer, 20, 0), 0);
    ck_assert(tu_run_until_count(loop, &a.calls, 1, 1000));
    ck_assert(!rx_timer_active(b.timer));
    tu_run_for(loop, 40);
    ck_assert_int_eq(b.calls, 0);

    /* Both due in the same iteration: whichever runs first stops the other. */
    struct rec c = {0}, d = {0};
    new_rec_timer(loop, &c, 2);
    new_rec_timer(loop, &d, 3);
    c.stop_other = d.timer;
    d.stop_other = c.timer;
    ck_assert_int_eq(rx_timer_start(c.timer, 5, 0), 0);
    ck_assert_int_eq(rx_timer_start(d.timer, 5, 0), 0);
    int total = 0;
    unsigned long long deadline = tu_now_ms() + 1000;
    while (c.calls + d.calls == 0 && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 10);
    tu_run_for(loop, 20);
    total = c.calls + d.calls;
    ck_assert_int_eq(total, 1);
    ck_assert(!rx_timer_active(c.timer));
    ck_assert(!rx_timer_active(d.timer));

    /* A repeating timer stopped by another one. */
    struct rec e = {0}, f = {0};
    new_rec_timer(loop, &e, 4);
    new_rec_timer(loop, &f, 5);
    f.stop_other = e.timer;
    ck_assert_int_eq(rx_timer_start(e.timer, 1, 1), 0);
    ck_assert_int_eq(rx_timer_start(f.timer, 15, 0), 0);
    ck_assert(tu_run_until_count(loop, &f.calls, 1, 1000));
    int ec = e.calls;
    tu_run_for(loop, 20);
    ck_assert_int_eq(e.calls, ec);

    rx_timer_free(a.timer);
    rx_timer_free(b.timer);
    rx_timer_free(c.timer);
    rx_timer_free(d.timer);
    rx_timer_free(e.timer);
    rx_timer_free(f.timer);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_free_other_from_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    bool freed = false;
    struct rec c = {0}, d = {0};
    new_rec_timer(loop, &c, 0);
    new_rec_timer(loop, &d, 1);
    c.free_other = d.timer;
    c.other_freed = &freed;
    d.free_other = c.timer;
    d.other_freed = &freed;
    ck_assert_int_eq(rx_timer_start(c.timer, 5, 0), 0);
    ck_assert_int_eq(rx_timer_start(d.timer, 5, 0), 0);
    unsigned long long deadline = tu_now_ms() + 1000;
    while (c.calls + d.calls == 0 && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 10);
    tu_run_for(loop, 20);
    ck_assert(freed);
    ck_assert_int_eq(c.calls + d.calls, 1);
    rx_timer_free(c.calls ? c.timer : d.timer);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_free_inside_own_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec one = {.free_self_at = 1}, rep = {.free_self_at = 3};
    new_rec_timer(loop, &one, 0);
    new_rec_timer(loop, &rep, 1);
    ck_assert_int_eq(rx_timer_start(one.timer, 2, 0), 0);
    ck_assert_int_eq(rx_timer_start(rep.timer, 1, 2), 0);
    ck_assert(tu_run_until_count(loop, &rep.calls, 3, 1000));
    tu_run_for(loop, 30);
    ck_assert_int_eq(one.calls, 1);
    ck_assert_int_eq(rep.calls, 3);
    /* An active timer freed outside the loop never fires. */
    struct rec z = {0};
    new_rec_timer(loop, &z, 2);
    ck_assert_int_eq(rx_timer_start(z.timer, 0, 1), 0);
    rx_timer_free(z.timer);
    tu_run_for(loop, 10);
    ck_assert_int_eq(z.calls, 0);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_restart_moves) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    rx_timer *t = new_rec_timer(loop, &r, 0);

    /* Later. */
    rx_loop_update_time(loop);
    uint64_t t0 = rx_loop_now_ms(loop);
    ck_assert_int_eq(rx_timer_start(t, 5, 0), 0);
    ck_assert_int_eq(rx_timer_start(t, 60, 0), 0);
    ck_assert(rx_timer_active(t));
    tu_run_for(loop, 35);
    ck_assert_int_eq(r.calls, 0);
    ck_assert(tu_run_until_count(loop, &r.calls, 1, 1000));
    ck_assert_uint_ge(r.fired_ms[0], t0 + 60);

    /* Earlier. */
    rx_loop_update_time(loop);
    t0 = rx_loop_now_ms(loop);
    ck_assert_int_eq(rx_timer_start(t, 5000, 0), 0);
    ck_assert_int_eq(rx_timer_start(t, 10, 0), 0);
    ck_assert(tu_run_until_count(loop, &r.calls, 2, 300));
    ck_assert_uint_ge(r.fired_ms[1], t0 + 10);
    ck_assert_uint_lt(r.fired_ms[1], t0 + 300);
    ck_assert(!rx_timer_active(t)); /* the 5 s entry is gone */

    /* Restarting a repeating timer as one-shot. */
    ck_assert_int_eq(rx_timer_start(t, 1, 1), 0);
    ck_assert_int_eq(rx_timer_start(t, 2, 0), 0);
    ck_assert(tu_run_until_count(loop, &r.calls, 3, 300));
    tu_run_for(loop, 20);
    ck_assert_int_eq(r.calls, 3);
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_zero_timeout_from_callback_next_iteration) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec a = {0}, b = {0};
    new_rec_timer(loop, &a, 0);
    new_rec_timer(loop, &b, 1);
    a.start_other = b.timer;
    a.other_rec = &b;
    ck_assert_int_eq(rx_timer_start(a.timer, 0, 0), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.other_calls_after_start, 0); /* not from inside rx_timer_start */
    ck_assert_int_eq(b.calls, 0);                   /* not in the same iteration */
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_uint_eq(b.fired_iter[0], a.fired_iter[0] + 1);

    /* A timer restarting itself with 0 runs once per iteration, never recursively. */
    struct rec s = {.restart_self_max = 6, .restart_ms = 0};
    new_rec_timer(loop, &s, 2);
    ck_assert_int_eq(rx_timer_start(s.timer, 0, 0), 0);
    for (int i = 1; i <= 6; i++) {
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
        ck_assert_int_eq(s.calls, i);
    }
    ck_assert(!rx_timer_active(s.timer));
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(s.calls, 6);

    rx_timer_free(a.timer);
    rx_timer_free(b.timer);
    rx_timer_free(s.timer);
    rx_loop_free(loop);
}
END_TEST

struct fd_start_ctx {
    rx_timer *timer;
    uint64_t iter_started;
    int calls;
};

static void start_from_fd_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    struct fd_start_ctx *c = arg;
    c->calls++;
    c->iter_started = rx_loop_iterations(rx_channel_loop(ch));
    ck_assert_int_eq(rx_timer_start(c->timer, 0, 0), 0);
    ck_assert_int_eq(rx_channel_set_interest(ch, 0), 0);
}

START_TEST(test_zero_timeout_from_fd_callback_next_iteration) {
    /* "A timer that is due now runs on the next iteration": also when started from an fd
     * callback, whose iteration still has its timer pass to come. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    struct fd_start_ctx c = {.timer = new_rec_timer(loop, &r, 0)};
    int sv[2];
    tu_socketpair(sv);
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, start_from_fd_cb, &c);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_msg(r.calls == 0, "0 ms timer started from an fd callback ran in the same iteration");
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 0);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_uint_eq(r.fired_iter[0], c.iter_started + 1);
    rx_channel_close(ch);
    close(sv[1]);
    rx_timer_free(r.timer);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_wait_bounded_by_nearest_timer) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec near = {0}, far = {0};
    new_rec_timer(loop, &near, 0);
    new_rec_timer(loop, &far, 1);
    rx_loop_update_time(loop);
    ck_assert_int_eq(rx_timer_start(far.timer, 5000, 0), 0);
    ck_assert_int_eq(rx_timer_start(near.timer, 30, 0), 0);
    unsigned long long t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run_once(loop, -1), 0);
    unsigned long long dt = tu_now_ms() - t0;
    ck_assert_int_eq(near.calls, 1);
    ck_assert_int_eq(far.calls, 0);
    ck_assert_uint_ge(dt, 28);
    ck_assert_uint_le(dt, 200);

    /* A positive timeout longer than the nearest timer is cut short by it... */
    rx_loop_update_time(loop);
    ck_assert_int_eq(rx_timer_start(near.timer, 10, 0), 0);
    t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 0);
    dt = tu_now_ms() - t0;
    ck_assert_int_eq(near.calls, 2);
    ck_assert_uint_le(dt, 200);

    /* ...and a shorter one is not extended by it. */
    rx_loop_update_time(loop);
    ck_assert_int_eq(rx_timer_start(near.timer, 100, 0), 0);
    t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run_once(loop, 10), 0);
    dt = tu_now_ms() - t0;
    ck_assert_int_eq(near.calls, 2);
    ck_assert_uint_lt(dt, 80);
    rx_timer_stop(near.timer);

    rx_timer_free(near.timer);
    rx_timer_free(far.timer);
    rx_loop_free(loop);
}
END_TEST

static void slow_cb(rx_timer *t, void *arg) {
    (void)t;
    (void)arg;
    tu_spin_ms(60);
}

START_TEST(test_wait_not_extended_by_stale_time) {
    /* The nearest timer is due 80 ms after the cached time, but 60 ms of that have already gone
     * by (work outside the loop, or a slow callback) when the loop next polls: run_once(-1) must
     * wait for the rest only, not for another full 80 ms. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    rx_timer *t = new_rec_timer(loop, &r, 0);
    rx_loop_update_time(loop);
    uint64_t due = rx_loop_now_ms(loop) + 80;
    ck_assert_int_eq(rx_timer_start(t, 80, 0), 0);
    tu_spin_ms(60);
    unsigned long long t0 = tu_now_ms();
    while (r.calls == 0 && tu_now_ms() - t0 < 500)
        ck_assert_int_ge(rx_loop_run_once(loop, -1), 0);
    unsigned long long waited = tu_now_ms() - t0;
    ck_assert_int_eq(r.calls, 1);
    ck_assert_uint_ge(r.fired_ms[0], due);
    ck_assert_msg(waited < 50, "timer due in ~20 ms fired after %llu ms (late by the stale time)",
                  waited);

    /* Same inside rx_loop_run: a slow callback delays the next timer only by its own length. */
    struct rec r2 = {0};
    rx_timer *t2 = new_rec_timer(loop, &r2, 1);
    rx_timer *slow = rx_timer_new(loop, slow_cb, NULL);
    rx_loop_update_time(loop);
    ck_assert_int_eq(rx_timer_start(slow, 0, 0), 0);
    ck_assert_int_eq(rx_timer_start(t2, 80, 0), 0);
    t0 = tu_now_ms();
    while (r2.calls == 0 && tu_now_ms() - t0 < 500)
        ck_assert_int_ge(rx_loop_run_once(loop, -1), 0);
    waited = tu_now_ms() - t0;
    ck_assert_int_eq(r2.calls, 1);
    ck_assert_msg(waited < 120, "timer due in 80 ms fired after %llu ms", waited);
    rx_timer_free(slow);
    rx_timer_free(t2);
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_huge_timeout) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    rx_timer *t = new_rec_timer(loop, &r, 0);
    ck_assert_int_eq(rx_timer_start(t, UINT64_MAX, UINT64_MAX), 0);
    ck_assert(rx_timer_active(t));
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    unsigned long long t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run_once(loop, 20), 0);
    unsigned long long dt = tu_now_ms() - t0;
    ck_assert_uint_ge(dt, 15);
    ck_assert_uint_lt(dt, 500);
    ck_assert_int_eq(r.calls, 0);
    ck_assert(rx_timer_active(t));
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

/* ---- scale ---- */

enum { BIG = 100000 };

struct big_ctx {
    rx_loop *loop;
    uint64_t base;
    uint32_t timeout[BIG];
    uint32_t fired[BIG];
    bool cancelled[BIG];
    int nfired;
    uint64_t last_due;
    int order_violations;
    int early;
};

static struct big_ctx big;
static rx_timer *big_timers[BIG];
/* Timers in the scale tests: BIG, or a tenth under valgrind (RX_TEST_VALGRIND, set by the
 * valgrind test setup), where 100,000 took 100 s of CI's valgrind pass. */
static uint32_t nbig = BIG;

static void big_cb(rx_timer *t, void *arg) {
    (void)t;
    uint32_t i = (uint32_t)(uintptr_t)arg;
    big.fired[i]++;
    big.nfired++;
    uint64_t due = big.base + big.timeout[i];
    if (due < big.last_due)
        big.order_violations++;
    big.last_due = due;
    if (rx_loop_now_ms(big.loop) < due)
        big.early++;
}

static void big_setup(rx_loop *loop) {
    big.loop = loop;
    big.nfired = 0;
    big.last_due = 0;
    big.order_violations = 0;
    big.early = 0;
    rx_loop_update_time(loop);
    big.base = rx_loop_now_ms(loop);
    for (uint32_t i = 0; i < nbig; i++) {
        big.timeout[i] = (uint32_t)(rng() % 51);
        big.fired[i] = 0;
        big.cancelled[i] = false;
        big_timers[i] = rx_timer_new(loop, big_cb, (void *)(uintptr_t)i);
        ck_assert_ptr_nonnull(big_timers[i]);
    }
}

START_TEST(test_many_random_timers) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    big_setup(loop);
    for (uint32_t i = 0; i < nbig; i++)
        ck_assert_int_eq(rx_timer_start(big_timers[i], big.timeout[i], 0), 0);
    ck_assert(tu_run_until_count(loop, &big.nfired, (int)nbig, 5000));
    tu_run_for(loop, 10);
    ck_assert_int_eq(big.nfired, (int)nbig);
    ck_assert_int_eq(big.order_violations, 0);
    ck_assert_int_eq(big.early, 0);
    for (uint32_t i = 0; i < nbig; i++) {
        ck_assert_uint_eq(big.fired[i], 1);
        ck_assert(!rx_timer_active(big_timers[i]));
    }
    /* Half freed here, half left to rx_loop_free. */
    for (uint32_t i = 0; i < nbig; i += 2)
        rx_timer_free(big_timers[i]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_many_add_stop_pairs) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    big_setup(loop);
    for (uint32_t i = 0; i < nbig; i++) {
        ck_assert_int_eq(rx_timer_start(big_timers[i], big.timeout[i], 0), 0);
        ck_assert(rx_timer_active(big_timers[i]));
        rx_timer_stop(big_timers[i]);
        ck_assert(!rx_timer_active(big_timers[i]));
    }
    /* One timer started and stopped over and over. */
    for (uint32_t i = 0; i < nbig; i++) {
        ck_assert_int_eq(rx_timer_start(big_timers[0], big.timeout[i], big.timeout[i] & 1), 0);
        rx_timer_stop(big_timers[0]);
    }
    ck_assert(!rx_timer_active(big_timers[0]));
    tu_run_for(loop, 60);
    ck_assert_int_eq(big.nfired, 0);
    for (uint32_t i = 0; i < nbig; i++)
        rx_timer_free(big_timers[i]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_many_stop_random_half) {
    /* Removal from arbitrary heap positions keeps the heap valid. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    big_setup(loop);
    for (uint32_t i = 0; i < nbig; i++)
        ck_assert_int_eq(rx_timer_start(big_timers[i], big.timeout[i], 0), 0);
    int live = (int)nbig;
    for (uint32_t i = 0; i < nbig; i++) {
        if (rng() & 1) {
            big.cancelled[i] = true;
            if (rng() & 1) {
                rx_timer_stop(big_timers[i]);
            } else {
                rx_timer_free(big_timers[i]);
                big_timers[i] = NULL;
            }
            live--;
        }
    }
    ck_assert(tu_run_until_count(loop, &big.nfired, live, 5000));
    tu_run_for(loop, 10);
    ck_assert_int_eq(big.nfired, live);
    ck_assert_int_eq(big.order_violations, 0);
    ck_assert_int_eq(big.early, 0);
    for (uint32_t i = 0; i < nbig; i++)
        ck_assert_uint_eq(big.fired[i], big.cancelled[i] ? 0 : 1);
    rx_loop_free(loop);
}
END_TEST

/* ---- ENOMEM ---- */

static void noop_timer_cb(rx_timer *t, void *arg) {
    (void)t;
    ++*(int *)arg;
}

START_TEST(test_new_enomem) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int calls = 0;
    tu_fail_allocs();
    errno = 0;
    ck_assert_ptr_null(rx_timer_new(loop, noop_timer_cb, &calls));
    ck_assert_int_eq(errno, ENOMEM);
    rx_sys_reset();
    rx_timer *t = rx_timer_new(loop, noop_timer_cb, &calls);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(rx_timer_start(t, 0, 0), 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(calls, 1);
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_start_enomem_leaves_stopped) {
    /* With allocation failing, rx_timer_start either succeeds (no allocation needed) or returns
     * -ENOMEM and leaves that timer stopped; the others keep working. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    enum { N = 5000 };
    static rx_timer *ts[N];
    static int calls[N];
    static bool started[N];
    for (int i = 0; i < N; i++) {
        calls[i] = 0;
        ts[i] = rx_timer_new(loop, noop_timer_cb, &calls[i]);
        ck_assert_ptr_nonnull(ts[i]);
    }
    /* One already running before the failure, then restarted while failing. */
    ck_assert_int_eq(rx_timer_start(ts[0], 1000, 0), 0);
    tu_fail_allocs();
    int nstarted = 0;
    for (int i = 0; i < N; i++) {
        int rc = rx_timer_start(ts[i], (uint64_t)(i % 7), 0);
        ck_assert_msg(rc == 0 || rc == -ENOMEM, "rx_timer_start returned %d", rc);
        started[i] = rc == 0;
        ck_assert(rx_timer_active(ts[i]) == started[i]);
        nstarted += started[i];
    }
    rx_sys_reset();
    tu_run_for(loop, 30);
    int total = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(calls[i], started[i] ? 1 : 0);
        total += calls[i];
    }
    ck_assert_int_eq(total, nstarted);
    for (int i = 0; i < N; i++)
        rx_timer_free(ts[i]);
    rx_loop_free(loop);
}
END_TEST

static Suite *timer_suite(void) {
    Suite *s = suite_create("timer");
    TCase *tc = tu_tcase(s, "core", 60);
    tcase_add_test(tc, test_oneshot);
    tcase_add_test(tc, test_active);
    tcase_add_test(tc, test_order_different_timeouts);
    tcase_add_test(tc, test_equal_timeouts_start_order);
    tcase_add_test(tc, test_repeating_stop_in_callback);
    tcase_add_test(tc, test_restart_self_in_callback);
    tcase_add_test(tc, test_cancel_other_from_callback);
    tcase_add_test(tc, test_free_other_from_callback);
    tcase_add_test(tc, test_free_inside_own_callback);
    tcase_add_test(tc, test_restart_moves);
    tcase_add_test(tc, test_zero_timeout_from_callback_next_iteration);
    tcase_add_test(tc, test_zero_timeout_from_fd_callback_next_iteration);
    tcase_add_test(tc, test_wait_bounded_by_nearest_timer);
    tcase_add_test(tc, test_wait_not_extended_by_stale_time);
    tcase_add_test(tc, test_huge_timeout);
    tcase_add_test(tc, test_many_random_timers);
    tcase_add_test(tc, test_many_add_stop_pairs);
    tcase_add_test(tc, test_many_stop_random_half);
    tcase_add_test(tc, test_new_enomem);
    tcase_add_test(tc, test_start_enomem_leaves_stopped);
    return s;
}

int main(void) {
    if (getenv("RX_TEST_VALGRIND"))
        nbig = BIG / 10;
    return tu_main(timer_suite());
}
