/* Tests for rx_signal: delivery through the loop, several watchers, freeing, mask handling, and
 * fan-out of one delivery to the watchers of several loops, in one thread and across threads. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
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

/* A new loop watching signo through r. */
static rx_loop *loop_watching(int signo, struct rec *r) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    watch(loop, signo, r);
    return loop;
}

/* Two loops of this thread watching signo (unblocked first: rx must put the mask back as it found
 * it), a through ra and b through rb: the start of the fan-out tests within one thread. */
static void two_loops(int signo, rx_loop **a, struct rec *ra, rx_loop **b, struct rec *rb) {
    unblock(signo);
    *a = rx_loop_new();
    *b = rx_loop_new();
    ck_assert_ptr_nonnull(*a);
    ck_assert_ptr_nonnull(*b);
    watch(*a, signo, ra);
    watch(*b, signo, rb);
}

/* Raises signo in this thread and runs loop until *count reaches want (1 s at most). */
static void raise_until(rx_loop *loop, int signo, const int *count, int want) {
    ck_assert_int_eq(raise(signo), 0);
    ck_assert_msg(tu_run_until_count(loop, count, want, 1000), "signal %d: %d of %d calls", signo,
                  *count, want);
}

/* Frees r's watcher, the last one of signo, so signo is unblocked again; then frees loop. */
static void free_last(struct rec *r, int signo, rx_loop *loop) {
    rx_signal_free(r->sig);
    ck_assert(!is_blocked(signo));
    rx_loop_free(loop);
}

/* ---- tests ---- */

START_TEST(test_sigusr1_delivered) {
    unblock(SIGUSR1);
    struct rec r = {0};
    rx_loop *loop = loop_watching(SIGUSR1, &r);
    ck_assert(is_blocked(SIGUSR1));
    ck_assert_int_eq(raise(SIGUSR1), 0);
    ck_assert_int_eq(r.calls, 0); /* only through the loop */
    ck_assert(tu_run_until_count(loop, &r.calls, 1, 1000));
    ck_assert_int_eq(r.signo, SIGUSR1);
    ck_assert_ptr_eq(r.sig_seen, r.sig);
    run_for(loop, 20);
    ck_assert_int_eq(r.calls, 1);

    /* Again. */
    raise_until(loop, SIGUSR1, &r.calls, 2);
    run_for(loop, 10);
    ck_assert_int_eq(r.calls, 2);
    free_last(&r, SIGUSR1, loop);
}
END_TEST

START_TEST(test_two_watchers_one_signal) {
    unblock(SIGUSR2);
    struct rec a = {0}, b = {0};
    rx_loop *loop = loop_watching(SIGUSR2, &a);
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
    raise_until(loop, SIGUSR2, &b.calls, 2);
    ck_assert_int_eq(a.calls, 1);
    free_last(&b, SIGUSR2, loop);
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
        raise_until(loop, sigs[i], &r[i].calls, 1);
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
    struct rec self = {.free_self = true}, stay = {0};
    rx_loop *loop = loop_watching(SIGUSR1, &self);
    watch(loop, SIGUSR1, &stay);
    raise_until(loop, SIGUSR1, &stay.calls, 1);
    run_for(loop, 10);
    ck_assert_int_eq(self.calls, 1);
    ck_assert_ptr_null(self.sig);
    ck_assert(is_blocked(SIGUSR1)); /* one watcher left */
    raise_until(loop, SIGUSR1, &stay.calls, 2);
    ck_assert_int_eq(self.calls, 1);

    /* The last watcher freeing itself unblocks the signal. */
    stay.free_self = true;
    raise_until(loop, SIGUSR1, &stay.calls, 3);
    run_for(loop, 10);
    ck_assert(!is_blocked(SIGUSR1));
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_free_other_inside_callback) {
    /* Two watchers of one signal; whichever runs first frees the other: it must not run. */
    unblock(SIGUSR2);
    bool freed = false;
    int total = 0;
    struct rec a = {.freed_flag = &freed, .shared_count = &total};
    struct rec b = {.freed_flag = &freed, .shared_count = &total};
    a.free_other = &b;
    b.free_other = &a;
    rx_loop *loop = loop_watching(SIGUSR2, &a);
    watch(loop, SIGUSR2, &b);
    raise_until(loop, SIGUSR2, &total, 1);
    run_for(loop, 10);
    ck_assert(freed);
    ck_assert_int_eq(total, 1);
    struct rec *survivor = a.calls ? &a : &b;
    ck_assert_ptr_nonnull(survivor->sig);
    ck_assert(is_blocked(SIGUSR2));
    free_last(survivor, SIGUSR2, loop);
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
    raise_until(loop, SIGUSR1, &a.calls, 1);
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
    rx_loop *a, *b;
    struct rec ra = {0}, rb = {0};
    two_loops(SIGUSR1, &a, &ra, &b, &rb);
    rx_signal_free(ra.sig);
    ck_assert_msg(is_blocked(SIGUSR1),
                  "SIGUSR1 unblocked while another loop still watches it (raising it would kill "
                  "the process)");
    raise_until(b, SIGUSR1, &rb.calls, 1);
    free_last(&rb, SIGUSR1, a);
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
    tu_fail_allocs();
    errno = 0;
    ck_assert_ptr_null(rx_signal_new(loop, SIGUSR1, noop_cb, NULL));
    ck_assert_int_eq(errno, ENOMEM);
    rx_sys_reset();
    ck_assert_msg(!is_blocked(SIGUSR1), "a failed rx_signal_new left the signal blocked");
    struct rec r = {0};
    watch(loop, SIGUSR1, &r);
    raise_until(loop, SIGUSR1, &r.calls, 1);
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
    struct rec r = {0};
    rx_loop *loop = loop_watching(SIGUSR2, &r);
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

/* ---- fan-out to several loops ---- */

static void block(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    ck_assert_int_eq(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
}

/* Runs both loops (each iteration waits at most 5 ms) until a and b reach their counts or max_ms
 * pass, then settle_ms more so an extra run would show. */
static void run_two(rx_loop *la, const int *a, int want_a, rx_loop *lb, const int *b, int want_b,
                    int max_ms, int settle_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while ((*a < want_a || *b < want_b) && tu_now_ms() < deadline) {
        ck_assert_int_ge(rx_loop_run_once(la, 5), 0);
        ck_assert_int_ge(rx_loop_run_once(lb, 5), 0);
    }
    deadline = tu_now_ms() + (unsigned long long)settle_ms;
    while (tu_now_ms() < deadline) {
        ck_assert_int_ge(rx_loop_run_once(la, 5), 0);
        ck_assert_int_ge(rx_loop_run_once(lb, 5), 0);
    }
}

START_TEST(test_fanout_two_loops_one_thread) {
    /* One delivery, two loops of this thread watching: each loop's watcher runs exactly once,
     * whichever loop's signalfd dequeues it. Both for a thread-directed (raise) and a
     * process-directed (kill) signal, and with either loop run first. */
    rx_loop *a, *b;
    struct rec ra = {0}, rb = {0}, rb2 = {0};
    two_loops(SIGUSR1, &a, &ra, &b, &rb);
    watch(b, SIGUSR1, &rb2);
    ck_assert_int_eq(raise(SIGUSR1), 0);
    run_two(a, &ra.calls, 1, b, &rb.calls, 1, 1000, 30);
    ck_assert_int_eq(ra.calls, 1);
    ck_assert_int_eq(rb.calls, 1);
    ck_assert_int_eq(rb2.calls, 1);
    ck_assert_int_eq(ra.signo, SIGUSR1);
    ck_assert_int_eq(rb.signo, SIGUSR1);
    ck_assert_ptr_eq(rb.sig_seen, rb.sig);

    ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
    run_two(b, &rb.calls, 2, a, &ra.calls, 2, 1000, 30);
    ck_assert_int_eq(ra.calls, 2);
    ck_assert_int_eq(rb.calls, 2);
    ck_assert_int_eq(rb2.calls, 2);

    /* Freeing one loop's watchers keeps the other loop's working. */
    rx_signal_free(rb.sig);
    rx_signal_free(rb2.sig);
    ck_assert(is_blocked(SIGUSR1));
    ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
    run_two(b, &rb.calls, 2, a, &ra.calls, 3, 1000, 30);
    ck_assert_int_eq(ra.calls, 3);
    ck_assert_int_eq(rb.calls, 2);
    free_last(&ra, SIGUSR1, a);
    rx_loop_free(b);
}
END_TEST

START_TEST(test_fanout_coalesces) {
    /* Two deliveries dequeued by loop a before loop b runs: b's watcher runs once for both, as a
     * standard signal pending twice is delivered once. */
    unblock(SIGUSR2);
    rx_loop *a, *b;
    struct rec ra = {0}, rb = {0}, ra2 = {0}, rb2 = {0};
    two_loops(SIGUSR1, &a, &ra, &b, &rb);
    watch(a, SIGUSR2, &ra2);
    watch(b, SIGUSR2, &rb2);
    for (int i = 1; i <= 2; i++)
        raise_until(a, SIGUSR1, &ra.calls, i);
    raise_until(a, SIGUSR2, &ra2.calls, 1);
    ck_assert_int_eq(rb.calls, 0);
    run_for(b, 30);
    ck_assert_int_eq(rb.calls, 1);
    ck_assert_int_eq(rb2.calls, 1); /* another signal's delivery is not merged away */
    ck_assert_int_eq(rb2.signo, SIGUSR2);
    rx_loop_free(a);
    rx_loop_free(b);
    ck_assert(!is_blocked(SIGUSR1));
    ck_assert(!is_blocked(SIGUSR2));
}
END_TEST

START_TEST(test_fanout_forward_enomem) {
    /* A forward that cannot be posted (no memory) is lost for that loop only, and does not stop
     * later deliveries from reaching it. */
    rx_loop *a, *b;
    struct rec ra = {0}, rb = {0};
    two_loops(SIGUSR1, &a, &ra, &b, &rb);
    ck_assert_int_eq(raise(SIGUSR1), 0);
    tu_fail_allocs();
    bool got = tu_run_until_count(a, &ra.calls, 1, 1000); /* a dequeues it; the post to b fails */
    rx_sys_reset();
    ck_assert(got);
    run_for(b, 30);
    ck_assert_int_eq(rb.calls, 0);
    ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
    run_two(a, &ra.calls, 2, b, &rb.calls, 1, 1000, 30);
    ck_assert_int_eq(ra.calls, 2);
    ck_assert_int_eq(rb.calls, 1);
    rx_loop_free(a);
    rx_loop_free(b);
}
END_TEST

START_TEST(test_fanout_target_freed) {
    /* A forward still queued on a loop that is then freed: dropped with the loop (ASan/valgrind
     * check nothing leaks), and the freed loop gets no further forwards. */
    unblock(SIGUSR2);
    rx_loop *a, *b;
    struct rec ra = {0}, rb = {0}, rb2 = {0};
    two_loops(SIGUSR1, &a, &ra, &b, &rb);
    watch(b, SIGUSR2, &rb2); /* b has a signalfd for a signal a does not watch, too */
    raise_until(a, SIGUSR1, &ra.calls, 1);
    run_for(b, 20);
    ck_assert_int_eq(rb.calls, 1); /* forwarded */
    raise_until(a, SIGUSR1, &ra.calls, 2);
    rx_loop_free(b); /* with the forward of the second delivery queued */
    ck_assert_int_eq(rb.calls, 1);
    ck_assert(is_blocked(SIGUSR1));  /* a still watches it */
    ck_assert(!is_blocked(SIGUSR2)); /* b's watcher is gone */
    ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
    ck_assert(tu_run_until_count(a, &ra.calls, 3, 1000));

    /* The other way round: the loop that dequeued it is freed before the target runs. */
    rx_loop *c = rx_loop_new();
    ck_assert_ptr_nonnull(c);
    struct rec rc = {0};
    watch(c, SIGUSR1, &rc);
    raise_until(a, SIGUSR1, &ra.calls, 4);
    rx_loop_free(a);
    ck_assert(is_blocked(SIGUSR1));
    run_for(c, 20);
    ck_assert_int_eq(rc.calls, 1);
    rx_loop_free(c);
    ck_assert(!is_blocked(SIGUSR1));
}
END_TEST

START_TEST(test_mask_left_alone_when_blocked_before) {
    /* A signal the thread blocked itself stays blocked when the last watcher goes. */
    block(SIGUSR1);
    struct rec r = {0};
    rx_loop *loop = loop_watching(SIGUSR1, &r);
    raise_until(loop, SIGUSR1, &r.calls, 1);
    rx_signal_free(r.sig);
    ck_assert(is_blocked(SIGUSR1));
    rx_loop_free(loop);
    ck_assert(is_blocked(SIGUSR1));
    unblock(SIGUSR1);
}
END_TEST

/* ---- fan-out across threads ---- */

/* A loop on its own thread, driven step by step from the test through a barrier. The thread does
 * no ck_assert (libcheck asserts belong to the test's thread); it records what it saw. */
struct peer {
    int signo;
    pthread_t th;
    pthread_barrier_t step;
    rx_loop *loop;
    struct rec r;
    atomic_int calls;   /* r.calls, published for the test thread */
    int want;           /* run until calls reaches it (then settle_ms more) */
    int settle_ms;      /* after want is reached */
    bool free_watcher;  /* in the last step: free the watcher on this thread */
    bool keep_watcher;  /* in the last step: leave the watcher for the test thread to free */
    bool blocked_with;  /* signo blocked in this thread while watching */
    bool blocked_after; /* signo blocked in this thread after the last step */
    bool failed;        /* rx_loop_new / rx_signal_new failed */
    int steps;          /* run steps to do before the last one */
};

static bool thread_blocked(int signo) {
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    return sigismember(&cur, signo) == 1;
}

static void *peer_main(void *arg) {
    struct peer *p = arg;
    /* The thread inherited the test thread's mask, where a watcher may block signo already; rx
     * restores a mask only to what it was, so start from unblocked (nothing is sent yet). */
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, p->signo);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    p->loop = rx_loop_new();
    p->r.sig = p->loop ? rx_signal_new(p->loop, p->signo, rec_cb, &p->r) : NULL;
    p->failed = p->r.sig == NULL;
    p->blocked_with = thread_blocked(p->signo);
    pthread_barrier_wait(&p->step); /* watching */
    for (int i = 0; i < p->steps; i++) {
        pthread_barrier_wait(&p->step); /* the test sent a signal and set want */
        unsigned long long deadline = tu_now_ms() + 2000;
        while (!p->failed && p->r.calls < p->want && tu_now_ms() < deadline)
            rx_loop_run_once(p->loop, 5);
        deadline = tu_now_ms() + (unsigned long long)p->settle_ms;
        while (!p->failed && tu_now_ms() < deadline)
            rx_loop_run_once(p->loop, 5);
        atomic_store(&p->calls, p->r.calls);
        pthread_barrier_wait(&p->step); /* done */
    }
    pthread_barrier_wait(&p->step); /* last step */
    if (p->free_watcher && p->r.sig) {
        rx_signal_free(p->r.sig);
        p->r.sig = NULL;
    }
    if (!p->keep_watcher) {
        rx_loop_free(p->loop);
        p->loop = NULL;
    }
    p->blocked_after = thread_blocked(p->signo);
    pthread_barrier_wait(&p->step);
    return NULL;
}

static int peer_calls(struct peer *p) { return atomic_load(&p->calls); }

/* Starts the test's peer watching signo, for `steps` run steps; in its last step it frees its
 * watcher and loop itself, or with keep leaves both to the test. The peer is static: a test that
 * fails while the thread runs (CK_FORK=no) must not leave it a dead stack frame. */
static struct peer *peer_start(int signo, int steps, bool keep) {
    static struct peer peer;
    struct peer *p = &peer;
    memset(p, 0, sizeof *p);
    p->free_watcher = !keep;
    p->keep_watcher = keep;
    p->signo = signo;
    p->steps = steps;
    ck_assert_int_eq(pthread_barrier_init(&p->step, NULL, 2), 0);
    ck_assert_int_eq(pthread_create(&p->th, NULL, peer_main, p), 0);
    pthread_barrier_wait(&p->step);
    ck_assert(!p->failed);
    ck_assert(p->blocked_with);
    return p;
}

/* One run step of the peer. This thread runs `loop` until *count reaches want (then 30 ms more):
 * at the same time as the peer, or with run_here false only once the peer's step is over. */
static void peer_step(struct peer *p, int peer_want, rx_loop *loop, const int *count, int want,
                      bool run_here) {
    p->want = peer_want;
    p->settle_ms = 30;
    pthread_barrier_wait(&p->step);
    if (!run_here)
        pthread_barrier_wait(&p->step);
    unsigned long long deadline = tu_now_ms() + 2000;
    while (*count < want && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    deadline = tu_now_ms() + 30;
    while (tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    if (run_here)
        pthread_barrier_wait(&p->step);
}

/* Sends signo to the process and runs one step of the peer and of this thread's loop (see
 * peer_step) until both watchers ran want times, which they then must have exactly. */
static void kill_step(struct peer *p, rx_loop *loop, struct rec *r, int want, bool run_here) {
    ck_assert_int_eq(kill(getpid(), p->signo), 0);
    peer_step(p, want, loop, &r->calls, want, run_here);
    ck_assert_int_eq(r->calls, want);
    ck_assert_int_eq(peer_calls(p), want);
}

static void peer_finish(struct peer *p) {
    pthread_barrier_wait(&p->step);
    pthread_barrier_wait(&p->step);
    pthread_join(p->th, NULL);
    pthread_barrier_destroy(&p->step);
}

START_TEST(test_fanout_two_threads) {
    /* Loops on two threads watch SIGUSR2: one kill runs both watchers once. The peer thread then
     * frees its watcher: its own mask is restored, this thread's is not touched, and this loop
     * keeps getting the signal. */
    unblock(SIGUSR2);
    struct rec r = {0};
    rx_loop *loop = loop_watching(SIGUSR2, &r);
    struct peer *p = peer_start(SIGUSR2, 2, false);
    kill_step(p, loop, &r, 1, true);

    /* Again, with this thread's loop idle until the peer's step is over: the peer dequeues the
     * signal and forwards it here. */
    kill_step(p, loop, &r, 2, false);

    peer_finish(p);
    ck_assert_msg(!p->blocked_after, "SIGUSR2 still blocked in the thread whose last watcher went");
    ck_assert(is_blocked(SIGUSR2));
    ck_assert_int_eq(kill(getpid(), SIGUSR2), 0);
    ck_assert(tu_run_until_count(loop, &r.calls, 3, 1000));
    run_for(loop, 20);
    ck_assert_int_eq(r.calls, 3);
    ck_assert_int_eq(p->r.calls, 2);
    free_last(&r, SIGUSR2, loop);
}
END_TEST

START_TEST(test_fanout_other_thread_keeps_working) {
    /* This thread's watcher goes first: its mask is restored and the peer's loop still gets the
     * signal (this thread blocks it by hand meanwhile, as signal.h asks). */
    unblock(SIGUSR1);
    struct rec r = {0};
    rx_loop *loop = loop_watching(SIGUSR1, &r);
    struct peer *p = peer_start(SIGUSR1, 2, false);
    kill_step(p, loop, &r, 1, true);

    rx_signal_free(r.sig);
    ck_assert(!is_blocked(SIGUSR1));
    block(SIGUSR1);
    ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
    int none = 0;
    peer_step(p, 2, loop, &none, 0, true);
    ck_assert_int_eq(peer_calls(p), 2);
    ck_assert_int_eq(r.calls, 1);
    peer_finish(p);
    ck_assert(!p->blocked_after);
    rx_loop_free(loop);
    unblock(SIGUSR1);
}
END_TEST

START_TEST(test_thread_directed_read_by_its_thread) {
    /* pthread_kill targets the peer's thread: only its loop can dequeue the signal (this loop,
     * run meanwhile, sees nothing), then the delivery is forwarded here. */
    unblock(SIGUSR1);
    struct rec r = {0};
    rx_loop *loop = loop_watching(SIGUSR1, &r);
    struct peer *p = peer_start(SIGUSR1, 1, false);
    ck_assert_int_eq(pthread_kill(p->th, SIGUSR1), 0);
    run_for(loop, 50);
    ck_assert_int_eq(r.calls, 0);
    peer_step(p, 1, loop, &r.calls, 1, true);
    ck_assert_int_eq(peer_calls(p), 1);
    ck_assert_int_eq(r.calls, 1);
    peer_finish(p);
    rx_signal_free(r.sig);
    rx_loop_free(loop);
    ck_assert(!is_blocked(SIGUSR1));
}
END_TEST

START_TEST(test_free_on_other_thread_leaves_mask) {
    /* The peer's watcher and loop, freed on this thread: the peer's mask cannot be changed from
     * here and stays blocked; this thread's own bookkeeping is not disturbed either. */
    unblock(SIGUSR2);
    struct peer *p = peer_start(SIGUSR2, 0, true);
    rx_signal_free(p->r.sig);
    rx_loop_free(p->loop);
    ck_assert(!is_blocked(SIGUSR2));
    peer_finish(p);
    ck_assert(p->blocked_after);

    struct rec r = {0};
    rx_loop *loop = loop_watching(SIGUSR2, &r);
    ck_assert(is_blocked(SIGUSR2));
    raise_until(loop, SIGUSR2, &r.calls, 1);
    free_last(&r, SIGUSR2, loop);
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
    tcase_add_test(tc, test_fanout_two_loops_one_thread);
    tcase_add_test(tc, test_fanout_coalesces);
    tcase_add_test(tc, test_fanout_forward_enomem);
    tcase_add_test(tc, test_fanout_target_freed);
    tcase_add_test(tc, test_mask_left_alone_when_blocked_before);
    tcase_add_test(tc, test_fanout_two_threads);
    tcase_add_test(tc, test_fanout_other_thread_keeps_working);
    tcase_add_test(tc, test_thread_directed_read_by_its_thread);
    tcase_add_test(tc, test_free_on_other_thread_leaves_mask);
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
