/* Tests for rx_signal: delivery through the loop, several watchers, freeing, mask handling. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

static void unblock(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    ck_assert_int_eq(pthread_sigmask(SIG_UNBLOCK, &set, NULL), 0);
}

static bool is_blocked(int signo) {
    sigset_t cur;
    ck_assert_int_eq(pthread_sigmask(SIG_BLOCK, NULL, &cur), 0);
    return sigismember(&cur, signo) == 1;
}

static void run_for(rx_loop *loop, int ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)ms;
    while (tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
}

static bool run_until_count(rx_loop *loop, const int *count, int want, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (*count < want && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    return *count >= want;
}

struct rec {
    rx_signal *sig;
    int calls;
    int signo;
    rx_signal *sig_seen;
    bool free_self;
    struct rec *free_other; /* free this watcher on the first call (if not yet freed) */
    bool *freed_flag;
    int *shared_count;
};

static void rec_cb(rx_signal *sig, int signo, void *arg) {
    struct rec *r = arg;
    r->calls++;
    r->signo = signo;
    r->sig_seen = sig;
    if (r->shared_count)
        ++*r->shared_count;
    if (r->free_self) {
        rx_signal_free(sig);
        r->sig = NULL;
    }
    if (r->free_other && !*r->freed_flag) {
        rx_signal_free(r->free_other->sig);
        r->free_other->sig = NULL;
        *r->freed_flag = true;
    }
}

static rx_signal *watch(rx_loop *loop, int signo, struct rec *r) {
    r->sig = rx_signal_new(loop, signo, rec_cb, r);
    ck_assert_msg(r->sig != NULL, "rx_signal_new(%d) failed: errno %d", signo, errno);
    return r->sig;
}

/* ---- tests ---- */

START_TEST(test_sigusr1_delivered) {
    unblock(SIGUSR1);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    watch(loop, SIGUSR1, &r);
    ck_assert(is_blocked(SIGUSR1));
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert_int_eq(r.calls, 0); /* only through the loop */
    ck_assert(run_until_count(loop, &r.calls, 1, 1000));
    ck_assert_int_eq(r.signo, SIGUSR1);
    ck_assert_ptr_eq(r.sig_seen, r.sig);
    run_for(loop, 20);
    ck_assert_int_eq(r.calls, 1);

    /* Again. */
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert(run_until_count(loop, &r.calls, 2, 1000));
    run_for(loop, 10);
    ck_assert_int_eq(r.calls, 2);
    rx_signal_free(r.sig);
    ck_assert(!is_blocked(SIGUSR1));
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_two_watchers_one_signal) {
    unblock(SIGUSR2);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec a = {0}, b = {0};
    watch(loop, SIGUSR2, &a);
    watch(loop, SIGUSR2, &b);
    ck_assert_int_eq(raise(SIGUSR2), 0);
    unsigned long long deadline = tu_now_ms() + 1000;
    while ((a.calls == 0 || b.calls == 0) && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 10);
    run_for(loop, 10);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_int_eq(a.signo, SIGUSR2);
    ck_assert_int_eq(b.signo, SIGUSR2);
    ck_assert_ptr_eq(a.sig_seen, a.sig);
    ck_assert_ptr_eq(b.sig_seen, b.sig);

    /* Freeing one keeps the other working and the signal blocked. */
    rx_signal_free(a.sig);
    ck_assert(is_blocked(SIGUSR2));
    ck_assert_int_eq(raise(SIGUSR2), 0);
    ck_assert(run_until_count(loop, &b.calls, 2, 1000));
    ck_assert_int_eq(a.calls, 1);
    rx_signal_free(b.sig);
    ck_assert(!is_blocked(SIGUSR2));
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_int_term_hup) {
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++)
        unblock(sigs[i]);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        watch(loop, sigs[i], &r[i]);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(raise(sigs[i]), 0);
        ck_assert(run_until_count(loop, &r[i].calls, 1, 1000));
        ck_assert_int_eq(r[i].signo, sigs[i]);
        for (int j = 0; j < 3; j++)
            ck_assert_int_eq(r[j].calls, j <= i ? 1 : 0);
    }
    /* All three at once. */
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(raise(sigs[i]), 0);
    unsigned long long deadline = tu_now_ms() + 1000;
    while ((r[0].calls < 2 || r[1].calls < 2 || r[2].calls < 2) && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 10);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(r[i].calls, 2);
        ck_assert_int_eq(r[i].signo, sigs[i]);
    }
    for (int i = 0; i < 3; i++) {
        rx_signal_free(r[i].sig);
        ck_assert(!is_blocked(sigs[i]));
    }
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_free_inside_callback) {
    unblock(SIGUSR1);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec self = {.free_self = true}, stay = {0};
    watch(loop, SIGUSR1, &self);
    watch(loop, SIGUSR1, &stay);
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert(run_until_count(loop, &stay.calls, 1, 1000));
    run_for(loop, 10);
    ck_assert_int_eq(self.calls, 1);
    ck_assert_ptr_null(self.sig);
    ck_assert(is_blocked(SIGUSR1)); /* one watcher left */
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert(run_until_count(loop, &stay.calls, 2, 1000));
    ck_assert_int_eq(self.calls, 1);

    /* The last watcher freeing itself unblocks the signal. */
    stay.free_self = true;
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert(run_until_count(loop, &stay.calls, 3, 1000));
    run_for(loop, 10);
    ck_assert(!is_blocked(SIGUSR1));
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_free_other_inside_callback) {
    /* Two watchers of one signal; whichever runs first frees the other: it must not run. */
    unblock(SIGUSR2);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    bool freed = false;
    int total = 0;
    struct rec a = {.freed_flag = &freed, .shared_count = &total};
    struct rec b = {.freed_flag = &freed, .shared_count = &total};
    a.free_other = &b;
    b.free_other = &a;
    watch(loop, SIGUSR2, &a);
    watch(loop, SIGUSR2, &b);
    ck_assert_int_eq(raise(SIGUSR2), 0);
    ck_assert(run_until_count(loop, &total, 1, 1000));
    run_for(loop, 10);
    ck_assert(freed);
    ck_assert_int_eq(total, 1);
    struct rec *survivor = a.calls ? &a : &b;
    ck_assert_ptr_nonnull(survivor->sig);
    ck_assert(is_blocked(SIGUSR2));
    rx_signal_free(survivor->sig);
    ck_assert(!is_blocked(SIGUSR2));
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_unblocked_after_last_free) {
    unblock(SIGUSR1);
    unblock(SIGUSR2);
    ck_assert(!is_blocked(SIGUSR1));
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec a = {0}, b = {0}, c = {0};
    watch(loop, SIGUSR1, &a);
    ck_assert(is_blocked(SIGUSR1));
    ck_assert(!is_blocked(SIGUSR2)); /* only the watched signal */
    watch(loop, SIGUSR1, &b);
    watch(loop, SIGUSR2, &c);
    ck_assert(is_blocked(SIGUSR2));
    rx_signal_free(a.sig);
    ck_assert(is_blocked(SIGUSR1));
    rx_signal_free(b.sig);
    ck_assert(!is_blocked(SIGUSR1));
    ck_assert(is_blocked(SIGUSR2)); /* another signal's watcher is untouched */

    /* Watching again after the unblock works. */
    watch(loop, SIGUSR1, &a);
    ck_assert(is_blocked(SIGUSR1));
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert(run_until_count(loop, &a.calls, 1, 1000));
    ck_assert_int_eq(c.calls, 0);

    /* rx_loop_free releases the remaining watchers and unblocks their signals. */
    rx_loop_free(loop);
    ck_assert(!is_blocked(SIGUSR1));
    ck_assert(!is_blocked(SIGUSR2));
}
END_TEST

START_TEST(test_two_loops_same_signal) {
    /* Two loops of one thread watch SIGUSR1. Freeing the first loop's watcher does not free the
     * last watcher of the signal, so it stays blocked and the second loop still gets it. */
    unblock(SIGUSR1);
    rx_loop *a = rx_loop_new();
    rx_loop *b = rx_loop_new();
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    struct rec ra = {0}, rb = {0};
    watch(a, SIGUSR1, &ra);
    watch(b, SIGUSR1, &rb);
    rx_signal_free(ra.sig);
    ck_assert_msg(is_blocked(SIGUSR1),
                  "SIGUSR1 unblocked while another loop still watches it (raising it would kill "
                  "the process)");
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert(run_until_count(b, &rb.calls, 1, 1000));
    rx_signal_free(rb.sig);
    ck_assert(!is_blocked(SIGUSR1));
    rx_loop_free(a);
    rx_loop_free(b);
}
END_TEST

static void noop_cb(rx_signal *s, int signo, void *arg) {
    (void)s;
    (void)signo;
    (void)arg;
}

START_TEST(test_invalid_signo) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    static const int bad[] = {0, -1, 1000, 65, SIGKILL, SIGSTOP};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        ck_assert_ptr_null(rx_signal_new(loop, bad[i], noop_cb, NULL));
        ck_assert_msg(errno == EINVAL, "signo %d: errno %d", bad[i], errno);
    }
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_new_enomem) {
    unblock(SIGUSR1);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    rx_sys.malloc = tu_fail_malloc;
    rx_sys.calloc = tu_fail_calloc;
    rx_sys.realloc = tu_fail_realloc;
    errno = 0;
    ck_assert_ptr_null(rx_signal_new(loop, SIGUSR1, noop_cb, NULL));
    ck_assert_int_eq(errno, ENOMEM);
    rx_sys_reset();
    ck_assert_msg(!is_blocked(SIGUSR1), "a failed rx_signal_new left the signal blocked");
    struct rec r = {0};
    watch(loop, SIGUSR1, &r);
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert(run_until_count(loop, &r.calls, 1, 1000));
    rx_signal_free(r.sig);
    rx_loop_free(loop);
}
END_TEST

struct killer {
    int signo;
    unsigned long long sent_at;
};

static void *kill_thread(void *arg) {
    struct killer *k = arg;
    usleep(30000);
    k->sent_at = tu_now_ms();
    kill(getpid(), k->signo);
    return NULL;
}

struct guard {
    bool fired;
};
static void guard_cb(rx_timer *t, void *arg) {
    (void)t;
    ((struct guard *)arg)->fired = true;
}

START_TEST(test_wakes_blocked_wait) {
    /* A process-directed signal from another thread wakes run_once(-1). The thread starts after
     * rx_signal_new, so it inherits the blocked mask. */
    unblock(SIGUSR2);
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    watch(loop, SIGUSR2, &r);
    struct guard g = {0};
    rx_timer *guard = rx_timer_new(loop, guard_cb, &g);
    ck_assert_int_eq(rx_timer_start(guard, 2000, 0), 0);
    struct killer k = {.signo = SIGUSR2};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, kill_thread, &k), 0);
    for (int i = 0; i < 3 && r.calls == 0 && !g.fired; i++)
        ck_assert_int_ge(rx_loop_run_once(loop, -1), 0);
    unsigned long long done = tu_now_ms();
    pthread_join(th, NULL);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!g.fired);
    ck_assert_int_eq(r.signo, SIGUSR2);
    ck_assert_uint_lt(done - k.sent_at, 1000);
    rx_timer_free(guard);
    rx_signal_free(r.sig);
    rx_loop_free(loop);
}
END_TEST

static Suite *signal_suite(void) {
    Suite *s = suite_create("signal");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_sigusr1_delivered);
    tcase_add_test(tc, test_two_watchers_one_signal);
    tcase_add_test(tc, test_int_term_hup);
    tcase_add_test(tc, test_free_inside_callback);
    tcase_add_test(tc, test_free_other_inside_callback);
    tcase_add_test(tc, test_unblocked_after_last_free);
    tcase_add_test(tc, test_two_loops_same_signal);
    tcase_add_test(tc, test_invalid_signo);
    tcase_add_test(tc, test_new_enomem);
    tcase_add_test(tc, test_wakes_blocked_wait);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(signal_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
