/* Tests for rx_loop: lifecycle, run/stop, cached clock, counters, hooks and rx_loop_free. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

static void stop_timer_cb(rx_timer *t, void *arg) {
    (void)t;
    rx_loop_stop(arg);
}

static void count_task(void *arg) { ++*(int *)arg; }

static void count_dtor(void *arg) { ++*(int *)arg; }

/* ---- lifecycle ---- */

START_TEST(test_new_free) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    ck_assert_uint_eq(rx_loop_iterations(loop), 0);
    ck_assert_uint_eq(rx_loop_events(loop), 0);
    rx_loop_free(loop);

    /* Several loops coexist (no globals). */
    rx_loop *a = rx_loop_new();
    rx_loop *b = rx_loop_new();
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    rx_loop_free(b);
    rx_loop_free(a);
}
END_TEST

START_TEST(test_run_once_nothing) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_uint_eq(rx_loop_iterations(loop), 2);
    ck_assert_uint_eq(rx_loop_events(loop), 0);

    /* A positive timeout with nothing to do waits about that long and returns 0. */
    unsigned long long t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run_once(loop, 20), 0);
    unsigned long long dt = tu_now_ms() - t0;
    ck_assert_uint_ge(dt, 15);
    ck_assert_uint_lt(dt, 500);
    rx_loop_free(loop);
}
END_TEST

/* ---- stop ---- */

static void stop_from_channel_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    ++*(int *)arg;
    rx_loop_stop(rx_channel_loop(ch));
}

START_TEST(test_stop_from_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    tu_guard g;
    tu_guard_start(&g, loop, 2000);

    /* From a timer callback. */
    rx_timer *t = rx_timer_new(loop, stop_timer_cb, loop);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(rx_timer_start(t, 5, 0), 0);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert(!g.fired);
    ck_assert(!rx_timer_active(t));

    /* From a channel callback; the earlier stop does not make this run return early. */
    int sv[2];
    tu_socketpair(sv);
    int calls = 0;
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, stop_from_channel_cb, &calls);
    ck_assert_ptr_nonnull(ch);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert(!g.fired);
    ck_assert_int_ge(calls, 1);
    rx_channel_close(ch);
    close(sv[1]);

    /* A new run after a stop keeps running until the next stop. */
    ck_assert_int_eq(rx_timer_start(t, 10, 0), 0);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert_msg(!rx_timer_active(t), "second rx_loop_run returned before the stopping timer ran");
    ck_assert(!g.fired);

    rx_timer_free(t);
    tu_guard_free(&g);
    rx_loop_free(loop);
}
END_TEST

/* issue 9 item 10: a stop given while the loop is not running ends exactly one run: the next
 * rx_loop_run_once returns at once and consumes it (the one after waits as usual), and an
 * rx_loop_run returns after one iteration. (The stop used to stay pending: every later run_once
 * returned at once, and rx_loop_run returned without running an iteration.) */
START_TEST(test_item10_stop_then_run_once) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    rx_loop_stop(loop);
    unsigned long long t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run_once(loop, 200), 0);
    ck_assert_uint_lt(tu_now_ms() - t0, 100);
    t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run_once(loop, 200), 0);
    unsigned long long waited = tu_now_ms() - t0;
    ck_assert_msg(waited >= 150, "the stop was not consumed: run_once(200) waited %llu ms", waited);

    tu_guard g;
    tu_guard_start(&g, loop, 2000);
    rx_loop_stop(loop);
    uint64_t iterations = rx_loop_iterations(loop);
    t0 = tu_now_ms();
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert_uint_eq(rx_loop_iterations(loop) - iterations, 1);
    ck_assert(!g.fired);
    ck_assert_uint_lt(tu_now_ms() - t0, 1000);
    tu_guard_free(&g);
    rx_loop_free(loop);
}
END_TEST

struct stopper {
    rx_loop *loop;
    unsigned delay_ms;
    atomic_bool running;
};

static void *stopper_thread(void *arg) {
    struct stopper *s = arg;
    if (s->delay_ms)
        usleep(s->delay_ms * 1000);
    else
        while (!atomic_load(&s->running)) {
        }
    rx_loop_stop(s->loop);
    return NULL;
}

START_TEST(test_stop_from_thread) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    tu_guard g;
    tu_guard_start(&g, loop, 3000);

    struct stopper s = {.loop = loop, .delay_ms = 50};
    pthread_t th;
    unsigned long long t0 = tu_now_ms();
    ck_assert_int_eq(pthread_create(&th, NULL, stopper_thread, &s), 0);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    unsigned long long dt = tu_now_ms() - t0;
    pthread_join(th, NULL);
    ck_assert_msg(!g.fired, "rx_loop_stop from another thread did not wake the loop");
    ck_assert_uint_ge(dt, 40);
    ck_assert_uint_lt(dt, 1000);
    tu_guard_free(&g);
    rx_loop_free(loop);
}
END_TEST

static void set_running_hook(void *arg) { atomic_store(&((struct stopper *)arg)->running, true); }

START_TEST(test_stop_from_thread_race) {
    /* The stop arrives while the loop is between iterations or about to block: it must never be
     * lost. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    tu_guard g;
    tu_guard_start(&g, loop, 2000);
    struct stopper s = {.loop = loop, .delay_ms = 0};
    ck_assert_int_eq(rx_loop_add_hook(loop, set_running_hook, &s), 0);
    for (int i = 0; i < 50; i++) {
        atomic_store(&s.running, false);
        ck_assert_int_eq(rx_timer_start(g.timer, 2000, 0), 0);
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, stopper_thread, &s), 0);
        ck_assert_int_eq(rx_loop_run(loop), 0);
        pthread_join(th, NULL);
        ck_assert_msg(!g.fired, "stop lost in round %d", i);
    }
    ck_assert_int_eq(rx_loop_remove_hook(loop, set_running_hook, &s), 0);
    tu_guard_free(&g);
    rx_loop_free(loop);
}
END_TEST

/* ---- cached time ---- */

START_TEST(test_time_consistent) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    uint64_t prev_ns = 0;
    for (int i = 0; i < 5; i++) {
        uint64_t ms = rx_loop_now_ms(loop), ns = rx_loop_now_ns(loop);
        ck_assert_uint_gt(ns, 0);
        ck_assert_uint_ge(ns, prev_ns);
        ck_assert_uint_le(ns / 1000000u - ms + 1, 2); /* |ns/1e6 - ms| <= 1 */
        /* The loop clock runs at the rate of CLOCK_MONOTONIC. */
        rx_loop_update_time(loop);
        uint64_t a = rx_loop_now_ns(loop);
        unsigned long long r0 = tu_now_ms();
        ck_assert_int_eq(rx_loop_run_once(loop, 10), 0);
        uint64_t loop_dt = (rx_loop_now_ns(loop) - a) / 1000000u;
        unsigned long long real_dt = tu_now_ms() - r0;
        ck_assert_uint_ge(loop_dt + 2, real_dt);
        ck_assert_uint_le(loop_dt, real_dt + 2);
        ck_assert_uint_ge(loop_dt, 9);
        prev_ns = rx_loop_now_ns(loop);
    }
    rx_loop_free(loop);
}
END_TEST

struct time_ctx {
    rx_loop *loop;
    uint64_t ms_a, ns_a, ms_b, ns_b, ms_updated, ns_updated;
    bool ran;
};

static void time_timer_cb(rx_timer *t, void *arg) {
    (void)t;
    struct time_ctx *c = arg;
    c->ms_a = rx_loop_now_ms(c->loop);
    c->ns_a = rx_loop_now_ns(c->loop);
    tu_spin_ms(5);
    c->ms_b = rx_loop_now_ms(c->loop);
    c->ns_b = rx_loop_now_ns(c->loop);
    rx_loop_update_time(c->loop);
    c->ms_updated = rx_loop_now_ms(c->loop);
    c->ns_updated = rx_loop_now_ns(c->loop);
    c->ran = true;
}

START_TEST(test_time_cached_in_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct time_ctx c = {.loop = loop};
    rx_timer *t = rx_timer_new(loop, time_timer_cb, &c);
    ck_assert_int_eq(rx_timer_start(t, 0, 0), 0);
    ck_assert(tu_run_until(loop, &c.ran, 1000));
    /* Unchanged within one callback, although time passed. */
    ck_assert_uint_eq(c.ms_a, c.ms_b);
    ck_assert_uint_eq(c.ns_a, c.ns_b);
    /* update_time refreshes it. */
    ck_assert_uint_ge(c.ms_updated, c.ms_a + 4);
    ck_assert_uint_ge(c.ns_updated, c.ns_a + 4000000u);
    /* And the next iteration does not go backwards. */
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_uint_ge(rx_loop_now_ns(loop), c.ns_updated);
    rx_timer_free(t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_time_advances_between_iterations) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    uint64_t prev_ms = rx_loop_now_ms(loop), prev_ns = rx_loop_now_ns(loop);
    for (int i = 0; i < 5; i++) {
        tu_spin_ms(3);
        /* Cached: no change outside an iteration. */
        ck_assert_uint_eq(rx_loop_now_ns(loop), prev_ns);
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
        uint64_t ms = rx_loop_now_ms(loop), ns = rx_loop_now_ns(loop);
        ck_assert_uint_ge(ms, prev_ms + 2);
        ck_assert_uint_gt(ns, prev_ns);
        prev_ms = ms;
        prev_ns = ns;
    }
    /* Many quick iterations: never decreasing. */
    for (int i = 0; i < 1000; i++) {
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
        ck_assert_uint_ge(rx_loop_now_ns(loop), prev_ns);
        ck_assert_uint_ge(rx_loop_now_ms(loop), prev_ms);
        prev_ns = rx_loop_now_ns(loop);
        prev_ms = rx_loop_now_ms(loop);
    }
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_update_time) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    rx_loop_update_time(loop);
    uint64_t ms = rx_loop_now_ms(loop), ns = rx_loop_now_ns(loop);
    tu_spin_ms(20);
    ck_assert_uint_eq(rx_loop_now_ms(loop), ms);
    rx_loop_update_time(loop);
    ck_assert_uint_ge(rx_loop_now_ms(loop), ms + 19);
    ck_assert_uint_lt(rx_loop_now_ms(loop), ms + 500);
    ck_assert_uint_ge(rx_loop_now_ns(loop), ns + 19000000u);
    uint64_t ms2 = rx_loop_now_ms(loop), ns2 = rx_loop_now_ns(loop);
    ck_assert_uint_le(ns2 / 1000000u - ms2 + 1, 2);
    rx_loop_free(loop);
}
END_TEST

/* ---- counters ---- */

static void noop_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    (void)ready;
    (void)arg;
}

static void noread_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    (void)ready;
    ++*(int *)arg;
}

START_TEST(test_counters_exact) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int a[2], b[2];
    tu_socketpair(a);
    tu_socketpair(b);
    int ca = 0, cb = 0;
    rx_channel *cha = rx_channel_new(loop, a[0], 0, noread_cb, &ca);
    rx_channel *chb = rx_channel_new(loop, b[0], 0, noread_cb, &cb);
    ck_assert_ptr_nonnull(cha);
    ck_assert_ptr_nonnull(chb);
    ck_assert_int_eq(rx_channel_set_interest(cha, RX_READABLE), 0);

    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_uint_eq(rx_loop_iterations(loop), 1);
    ck_assert_uint_eq(rx_loop_events(loop), 0);

    ck_assert_int_eq(write(a[1], "x", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 1);
    ck_assert_uint_eq(rx_loop_iterations(loop), 2);
    ck_assert_uint_eq(rx_loop_events(loop), 1);
    ck_assert_int_eq(ca, 1);

    /* Level-triggered, unread: fires again. */
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_uint_eq(rx_loop_events(loop), 2);

    /* Two channels ready: two events. */
    ck_assert_int_eq(rx_channel_set_interest(chb, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 2);
    ck_assert_uint_eq(rx_loop_iterations(loop), 4);
    ck_assert_uint_eq(rx_loop_events(loop), 4);
    ck_assert_int_eq(ca, 3);
    ck_assert_int_eq(cb, 1);

    /* Nothing watched: no events, iterations still counted. */
    ck_assert_int_eq(rx_channel_set_interest(cha, 0), 0);
    ck_assert_int_eq(rx_channel_set_interest(chb, 0), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_uint_eq(rx_loop_iterations(loop), 5);
    ck_assert_uint_eq(rx_loop_events(loop), 4);

    rx_channel_close(cha);
    rx_channel_close(chb);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
    rx_loop_free(loop);
}
END_TEST

static void count_signal_cb(rx_signal *s, int signo, void *arg) {
    (void)s;
    (void)signo;
    ++*(int *)arg;
}

START_TEST(test_counters_ignore_internal_fds) {
    /* The loop's own plumbing (the post/stop wake-up fd, the signalfd) is not an fd event of the
     * caller: run_once returns 0 and rx_loop_events stays 0 when no channel of the caller fired. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int ran = 0, sigs = 0;
    ck_assert_int_eq(rx_loop_post(loop, count_task, &ran), 0);
    int n = rx_loop_run_once(loop, 100);
    ck_assert_int_eq(ran, 1);
    ck_assert_msg(n == 0, "run_once returned %d for a posted task alone", n);
    ck_assert_uint_eq(rx_loop_events(loop), 0);

    rx_loop_stop(loop);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert_uint_eq(rx_loop_events(loop), 0);

    rx_signal *sig = rx_signal_new(loop, SIGUSR1, count_signal_cb, &sigs);
    ck_assert_ptr_nonnull(sig);
    ck_assert_int_eq(raise(SIGUSR1), 0);
    n = rx_loop_run_once(loop, 100);
    ck_assert_int_eq(sigs, 1);
    ck_assert_msg(n == 0, "run_once returned %d for a signal alone", n);
    ck_assert_uint_eq(rx_loop_events(loop), 0);
    rx_signal_free(sig);
    rx_loop_free(loop);
}
END_TEST

/* ---- hooks ---- */

struct hook_ctx {
    rx_loop *loop;
    int calls;
    int remove_at; /* remove itself on this call (0: never) */
    int remove_rc;
    int write_fd; /* >= 0: write one byte on the first call */
    struct hook_ctx *victim;
};

static void hook_fn(void *arg) {
    struct hook_ctx *h = arg;
    h->calls++;
    if (h->write_fd >= 0 && h->calls == 1)
        ck_assert_int_eq(write(h->write_fd, "h", 1), 1);
    if (h->remove_at && h->calls == h->remove_at)
        h->remove_rc = rx_loop_remove_hook(h->loop, hook_fn, h);
    if (h->victim) {
        h->remove_rc = rx_loop_remove_hook(h->loop, hook_fn, h->victim);
        h->victim = NULL;
    }
}

START_TEST(test_hook_every_iteration_before_poll) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int sv[2];
    tu_socketpair(sv);
    int reads = 0;
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, noread_cb, &reads);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);

    struct hook_ctx h = {.loop = loop, .write_fd = sv[1]};
    ck_assert_int_eq(rx_loop_add_hook(loop, hook_fn, &h), 0);
    ck_assert_int_eq(h.calls, 0);

    /* The hook writes before epoll_wait, so the non-blocking poll of this very iteration sees it.
     */
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_int_eq(reads, 1);

    for (int i = 0; i < 9; i++)
        rx_loop_run_once(loop, 0);
    ck_assert_int_eq(h.calls, 10);
    ck_assert_uint_eq(rx_loop_iterations(loop), 10);

    /* Inside rx_loop_run, too. */
    rx_timer *t = rx_timer_new(loop, stop_timer_cb, loop);
    ck_assert_int_eq(rx_timer_start(t, 5, 0), 0);
    ck_assert_int_eq(rx_channel_set_interest(ch, 0), 0);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert_uint_eq((uint64_t)h.calls, rx_loop_iterations(loop));

    ck_assert_int_eq(rx_loop_remove_hook(loop, hook_fn, &h), 0);
    int before = h.calls;
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(h.calls, before);

    rx_timer_free(t);
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_hook_remove_inside) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct hook_ctx self = {.loop = loop, .remove_at = 2, .remove_rc = 99, .write_fd = -1};
    struct hook_ctx other = {.loop = loop, .write_fd = -1};
    struct hook_ctx keeper = {.loop = loop, .write_fd = -1};
    ck_assert_int_eq(rx_loop_add_hook(loop, hook_fn, &self), 0);
    ck_assert_int_eq(rx_loop_add_hook(loop, hook_fn, &other), 0);
    ck_assert_int_eq(rx_loop_add_hook(loop, hook_fn, &keeper), 0);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(self.calls, 2);
    ck_assert_int_eq(self.remove_rc, 0);
    ck_assert_int_eq(other.calls, 5);
    ck_assert_int_eq(keeper.calls, 5);
    /* Already removed. */
    ck_assert_int_eq(rx_loop_remove_hook(loop, hook_fn, &self), -ENOENT);

    /* One hook removes another one. */
    keeper.victim = &other;
    keeper.remove_rc = 99;
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(keeper.remove_rc, 0);
    int oc = other.calls;
    ck_assert_int_le(oc, 6);
    for (int i = 0; i < 3; i++)
        rx_loop_run_once(loop, 0);
    ck_assert_int_eq(other.calls, oc);
    ck_assert_int_eq(keeper.calls, 9);
    ck_assert_int_eq(self.calls, 2);
    ck_assert_int_eq(rx_loop_remove_hook(loop, hook_fn, &keeper), 0);
    rx_loop_free(loop);
}
END_TEST

static void other_hook_fn(void *arg) { (void)arg; }

START_TEST(test_hook_remove_unknown) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int x = 0, y = 0;
    ck_assert_int_eq(rx_loop_remove_hook(loop, count_task, &x), -ENOENT);
    ck_assert_int_eq(rx_loop_add_hook(loop, count_task, &x), 0);
    /* fn and arg must both match. */
    ck_assert_int_eq(rx_loop_remove_hook(loop, count_task, &y), -ENOENT);
    ck_assert_int_eq(rx_loop_remove_hook(loop, other_hook_fn, &x), -ENOENT);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(x, 1);
    ck_assert_int_eq(rx_loop_remove_hook(loop, count_task, &x), 0);
    ck_assert_int_eq(rx_loop_remove_hook(loop, count_task, &x), -ENOENT);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(x, 1);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_hook_enomem) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    enum { N = 1024 };
    static int counts[N];
    static bool added[N];
    int failures = 0;
    tu_fail_allocs();
    for (int i = 0; i < N; i++) {
        int rc = rx_loop_add_hook(loop, count_task, &counts[i]);
        ck_assert_msg(rc == 0 || rc == -ENOMEM, "add_hook returned %d", rc);
        added[i] = rc == 0;
        failures += rc != 0;
    }
    rx_sys_reset();
    ck_assert_msg(failures > 0, "rx_loop_add_hook never failed with all allocators failing");
    rx_loop_run_once(loop, 0);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(counts[i], added[i] ? 1 : 0);
    /* Works again once memory is back. */
    int z = 0;
    ck_assert_int_eq(rx_loop_add_hook(loop, count_task, &z), 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(z, 1);
    rx_loop_free(loop);
}
END_TEST

/* ---- rx_loop_free with live objects ---- */

struct owned {
    int *dtor_count;
    char *payload;
};

static void owned_dtor(void *arg) {
    struct owned *o = arg;
    ++*o->dtor_count;
    free(o->payload);
    free(o);
}

static void never_timer_cb(rx_timer *t, void *arg) {
    (void)t;
    ++*(int *)arg;
}

static void never_signal_cb(rx_signal *s, int signo, void *arg) {
    (void)s;
    (void)signo;
    ++*(int *)arg;
}

START_TEST(test_free_releases_everything) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int owned_dtors = 0, plain_dtors = 0, idle_dtors = 0, cb_calls = 0;

    /* An owned fd with interest and a heap arg released by its destructor. */
    int a[2];
    tu_socketpair(a);
    struct owned *o = malloc(sizeof *o);
    o->dtor_count = &owned_dtors;
    o->payload = malloc(100);
    rx_channel *ch1 = rx_channel_new(loop, a[0], RX_CHANNEL_OWNS_FD, noop_cb, o);
    ck_assert_ptr_nonnull(ch1);
    rx_channel_set_destructor(ch1, owned_dtor);
    ck_assert_int_eq(rx_channel_set_interest(ch1, RX_READABLE | RX_WRITABLE), 0);

    /* A non-owned fd: stays open. */
    int b[2];
    tu_socketpair(b);
    rx_channel *ch2 = rx_channel_new(loop, b[0], RX_CHANNEL_EDGE, noop_cb, &plain_dtors);
    ck_assert_ptr_nonnull(ch2);
    rx_channel_set_destructor(ch2, count_dtor);
    ck_assert_int_eq(rx_channel_set_interest(ch2, RX_READABLE), 0);

    /* A channel that never got interest. */
    int c[2];
    tu_socketpair(c);
    rx_channel *ch3 = rx_channel_new(loop, c[0], RX_CHANNEL_OWNS_FD, noop_cb, &idle_dtors);
    ck_assert_ptr_nonnull(ch3);
    rx_channel_set_destructor(ch3, count_dtor);

    /* Timers: active one-shot, active repeating, stopped. */
    rx_timer *t1 = rx_timer_new(loop, never_timer_cb, &cb_calls);
    rx_timer *t2 = rx_timer_new(loop, never_timer_cb, &cb_calls);
    rx_timer *t3 = rx_timer_new(loop, never_timer_cb, &cb_calls);
    ck_assert_ptr_nonnull(t1);
    ck_assert_ptr_nonnull(t2);
    ck_assert_ptr_nonnull(t3);
    ck_assert_int_eq(rx_timer_start(t1, 60000, 0), 0);
    ck_assert_int_eq(rx_timer_start(t2, 60000, 1000), 0);

    /* A signal watcher, a hook and posted tasks that never run. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    rx_signal *sig = rx_signal_new(loop, SIGUSR2, never_signal_cb, &cb_calls);
    ck_assert_ptr_nonnull(sig);
    int hook_calls = 0, posted = 0;
    ck_assert_int_eq(rx_loop_add_hook(loop, count_task, &hook_calls), 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rx_loop_post(loop, count_task, &posted), 0);

    /* One iteration so everything is really armed, then more posted tasks. */
    ck_assert_int_ge(rx_loop_run_once(loop, 0), 1);
    ck_assert_int_eq(posted, 3);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(rx_loop_post(loop, count_task, &posted), 0);
    int before = owned_dtors + plain_dtors + idle_dtors;
    ck_assert_int_eq(before, 0);

    rx_loop_free(loop);

    ck_assert_int_eq(owned_dtors, 1);
    ck_assert_int_eq(plain_dtors, 1);
    ck_assert_int_eq(idle_dtors, 1);
    ck_assert_int_eq(cb_calls, 0);
    ck_assert_int_eq(hook_calls, 1);
    ck_assert_int_le(posted, 8); /* the unrun tasks are released; each runs at most once */

    /* Owned fds closed, the other one still open. */
    errno = 0;
    ck_assert_int_eq(fcntl(a[0], F_GETFD), -1);
    ck_assert_int_eq(errno, EBADF);
    errno = 0;
    ck_assert_int_eq(fcntl(c[0], F_GETFD), -1);
    ck_assert_int_eq(errno, EBADF);
    ck_assert_int_ge(fcntl(b[0], F_GETFD), 0);

    /* The last watcher of SIGUSR2 went with the loop: unblocked again. */
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    ck_assert(!sigismember(&cur, SIGUSR2));

    close(a[1]);
    close(b[0]);
    close(b[1]);
    close(c[1]);
}
END_TEST

static void close_self_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    (void)arg;
    rx_channel_close(ch);
}

START_TEST(test_free_after_deferred_close) {
    /* Channels closed inside callbacks are released by the end of their iteration, and a later
     * rx_loop_free does not release them again. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int dtors = 0;
    int sv[2];
    tu_socketpair(sv);
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, close_self_cb, &dtors);
    rx_channel_set_destructor(ch, count_dtor);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(dtors, 1);
    rx_loop_free(loop);
    ck_assert_int_eq(dtors, 1);
    close(sv[1]);
}
END_TEST

static Suite *loop_suite(void) {
    Suite *s = suite_create("loop");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_new_free);
    tcase_add_test(tc, test_run_once_nothing);
    tcase_add_test(tc, test_stop_from_callback);
    tcase_add_test(tc, test_stop_from_thread);
    tcase_add_test(tc, test_stop_from_thread_race);
    tcase_add_test(tc, test_item10_stop_then_run_once);
    tcase_add_test(tc, test_time_consistent);
    tcase_add_test(tc, test_time_cached_in_callback);
    tcase_add_test(tc, test_time_advances_between_iterations);
    tcase_add_test(tc, test_update_time);
    tcase_add_test(tc, test_counters_exact);
    tcase_add_test(tc, test_counters_ignore_internal_fds);
    tcase_add_test(tc, test_hook_every_iteration_before_poll);
    tcase_add_test(tc, test_hook_remove_inside);
    tcase_add_test(tc, test_hook_remove_unknown);
    tcase_add_test(tc, test_hook_enomem);
    tcase_add_test(tc, test_free_releases_everything);
    tcase_add_test(tc, test_free_after_deferred_close);
    return s;
}

int main(void) { return tu_main(loop_suite()); }
