/* Tests for reaching a loop from other threads: rx_conn_send_async racing closes (delivered or
 * -EPIPE, never lost half-way), in order and canceled with its loop, the debug-build check that
 * aborts loop-thread-only calls made from another thread, and a process-directed signal handled
 * once by each watcher of a group.
 *
 * As in test_group.c, code that runs on a loop's thread reports through atomics, never ck_assert.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rx/rx.h>

#include "testutil.h"

static rx_loop_group *new_group(unsigned n) {
    rx_loop_group *g = rx_loop_group_new(n);
    ck_assert_msg(g != NULL, "rx_loop_group_new(%u): %s", n, strerror(errno));
    return g;
}

static void end_group(rx_loop_group *g) {
    rx_loop_group_stop(g);
    ck_assert_int_eq(tu_group_join_within(g, 5000), 0);
    rx_loop_group_free(g);
}

/* ---- rx_conn_send_async racing closes ---- */

#define ROUNDS 1000

/* One round: a connection on loop A, its far end kept by the test. */
static struct round {
    rx_loop *a;
    int fd; /* the connection's end, handed to rx_conn_new */
    _Atomic(rx_conn *) c;
    bool abort; /* rx_conn_abort instead of rx_conn_close */
    atomic_int made_bad;
    atomic_int close_ran; /* the close task ran */
    atomic_int closed;    /* on_close ran */
    atomic_int done;      /* the send's done callback ran (count) */
    atomic_int status;    /* what it reported */
    atomic_int done_bad;  /* done got another connection or arg */
} R;

static void r_close_cb(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)c;
    (void)reason;
    (void)err;
    (void)arg;
    atomic_fetch_add(&R.closed, 1);
}

static const rx_conn_callbacks r_cbs = {.on_close = r_close_cb};

/* On A: the connection, and the test's reference to it. */
static void r_make(void *arg) {
    (void)arg;
    rx_conn *c = rx_conn_new(R.a, R.fd, NULL, &r_cbs, NULL);
    if (!c) {
        atomic_fetch_add(&R.made_bad, 1);
        return;
    }
    rx_conn_ref(c);
    atomic_store(&R.c, c);
}

/* On A: the close the send races with. */
static void r_close(void *arg) {
    (void)arg;
    rx_conn *c = atomic_load(&R.c);
    if (R.abort)
        rx_conn_abort(c);
    else
        rx_conn_close(c);
    atomic_store(&R.close_ran, 1);
}

/* On B: hands the close to A, so it reaches A's queue from another thread than the send's and
 * the two are not ordered. */
static void r_relay_close(void *arg) {
    if (rx_loop_post(R.a, r_close, arg) != 0)
        atomic_fetch_add(&R.made_bad, 1);
}

static void r_done(rx_conn *c, int status, void *arg) {
    if (c != atomic_load(&R.c) || arg != &R)
        atomic_fetch_add(&R.done_bad, 1);
    atomic_store(&R.status, status);
    atomic_fetch_add(&R.done, 1);
}

static void nothing(void *arg) { (void)arg; }

struct outcome {
    int n_epipe; /* rx_conn_send_async returned -EPIPE */
    int n_sent;  /* done reported 0: the peer got the bytes */
    int n_failed;
};

static bool r_settled(void *arg) {
    int *ret = arg;
    return *ret != 0 || atomic_load(&R.done) > 0;
}

/* Reads the peer's end to EOF (or a reset), keeping what came in buf. Returns the byte count. */
static size_t drain_peer(int fd, char *buf, size_t cap) {
    size_t got = 0;
    unsigned long long deadline = tu_now_ms() + 5000;
    while (tu_now_ms() < deadline) {
        char tmp[512];
        ssize_t r = read(fd, tmp, sizeof(tmp));
        if (r > 0) {
            ck_assert_uint_le(got + (size_t)r, cap);
            memcpy(buf + got, tmp, (size_t)r);
            got += (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            return got;
        tu_poll(fd, POLLIN, 10);
    }
    ck_abort_msg("the peer saw no end of stream in 5 s");
    return got;
}

static void one_round(rx_loop_group *g, int i, struct outcome *o) {
    int sv[2];
    tu_socketpair(sv);
    memset(&R, 0, sizeof(R));
    R.a = rx_loop_group_loop(g, 0);
    R.fd = sv[0];
    R.abort = i % 2 == 1;
    tu_on_loop(R.a, r_make, NULL, 5000);
    ck_assert_int_eq(atomic_load(&R.made_bad), 0);
    rx_conn *c = atomic_load(&R.c);
    ck_assert_ptr_nonnull(c);

    char msg[64];
    int len = snprintf(msg, sizeof(msg), "round %d: %s, variant %d", i, R.abort ? "abort" : "close",
                       (i / 2) % 4);
    int ret;
    switch ((i / 2) % 4) {
    case 0: /* the send is queued first, the close right behind it */
        ret = rx_conn_send_async(c, msg, (size_t)len, r_done, &R);
        ck_assert_int_eq(rx_loop_post(R.a, r_close, NULL), 0);
        break;
    case 1: /* the close is queued first; the send may find it done or under way */
        ck_assert_int_eq(rx_loop_post(R.a, r_close, NULL), 0);
        ret = rx_conn_send_async(c, msg, (size_t)len, r_done, &R);
        break;
    case 2: /* the close comes through loop B: no order between the two */
        ck_assert_int_eq(rx_loop_post(rx_loop_group_loop(g, 1), r_relay_close, NULL), 0);
        if (i % 3 == 0)
            tu_spin_ms(0); /* a little jitter (a clock read) on some rounds */
        ret = rx_conn_send_async(c, msg, (size_t)len, r_done, &R);
        break;
    default: /* the connection has closed already: -EPIPE, nothing touched */
        ck_assert_int_eq(rx_loop_post(R.a, r_close, NULL), 0);
        ck_assert(tu_wait_atomic(&R.close_ran, 1, 5000));
        ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0); /* lets the graceful close finish */
        ck_assert_msg(tu_wait_atomic(&R.closed, 1, 5000), "round %d: no on_close", i);
        ret = rx_conn_send_async(c, msg, (size_t)len, r_done, &R);
        ck_assert_msg(ret == -EPIPE, "round %d: send_async after on_close returned %d", i, ret);
        break;
    }
    ck_assert_msg(ret == 0 || ret == -EPIPE, "round %d: rx_conn_send_async returned %d", i, ret);
    ck_assert_msg(tu_wait_fn(r_settled, &ret, 5000), "round %d: done never ran", i);
    ck_assert(tu_wait_atomic(&R.close_ran, 1, 5000));

    /* The close is under way or done: end the peer's side so a graceful close can finish, then
     * read everything the connection wrote. */
    shutdown(sv[1], SHUT_WR);
    char got[256];
    size_t n = drain_peer(sv[1], got, sizeof(got));
    ck_assert_msg(tu_wait_atomic(&R.closed, 1, 5000), "round %d: no on_close", i);
    /* A task posted now runs after the send's (same thread, FIFO): done has run by then if it
     * ever runs. */
    tu_on_loop(R.a, nothing, NULL, 5000);

    ck_assert_int_eq(atomic_load(&R.done_bad), 0);
    ck_assert_int_eq(atomic_load(&R.closed), 1);
    if (ret == -EPIPE) {
        ck_assert_msg(atomic_load(&R.done) == 0, "round %d: done ran after -EPIPE", i);
        ck_assert_msg(n == 0, "round %d: -EPIPE but the peer got %zu bytes", i, n);
        o->n_epipe++;
    } else {
        ck_assert_msg(atomic_load(&R.done) == 1, "round %d: done ran %d times", i,
                      atomic_load(&R.done));
        int st = atomic_load(&R.status);
        if (st == 0) {
            /* Handed to rx_conn_send: a few bytes into an empty socket buffer are written at
             * once, so even an abort cannot drop them. */
            ck_assert_msg(n == (size_t)len && memcmp(got, msg, n) == 0,
                          "round %d: done said sent, the peer got %zu of %d bytes", i, n, len);
            o->n_sent++;
        } else {
            ck_assert_msg(st < 0, "round %d: done status %d", i, st);
            ck_assert_msg(n == 0, "round %d: send failed (%d) but the peer got %zu bytes", i, st,
                          n);
            o->n_failed++;
        }
    }
    rx_conn_unref(c);
    close(sv[1]);
}

START_TEST(test_send_async_races_close) {
    rx_loop_group *g = new_group(2);
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    struct outcome o = {0};
    for (int i = 0; i < ROUNDS; i++)
        one_round(g, i, &o);
    fprintf(stderr,
            "send_async vs close, %d rounds: %d returned -EPIPE, %d delivered (done 0), %d "
            "failed in done\n",
            ROUNDS, o.n_epipe, o.n_sent, o.n_failed);
    ck_assert_int_eq(o.n_epipe + o.n_sent + o.n_failed, ROUNDS);
    /* Variant 3 (a quarter of the rounds) is -EPIPE by construction, variant 0 queues the send
     * ahead of the close: both outcomes must show up. */
    ck_assert_int_ge(o.n_epipe, ROUNDS / 4);
    ck_assert_int_gt(o.n_sent, 0);
    end_group(g);
}
END_TEST

/* Sends of one thread arrive in the order of the calls; each done runs once, with 0, on the
 * connection's loop thread. */
#define ORDER_MSGS 500

static pthread_t order_loop_thread;
static atomic_int order_done, order_bad;

static void order_cb(rx_conn *c, int status, void *arg) {
    (void)c;
    /* arg is the message's index: the done callbacks come in the order of the sends too. */
    if (status != 0 || (intptr_t)arg != atomic_load(&order_done) ||
        !pthread_equal(pthread_self(), order_loop_thread))
        atomic_fetch_add(&order_bad, 1);
    atomic_fetch_add(&order_done, 1);
}

START_TEST(test_send_async_in_order) {
    atomic_store(&order_done, 0);
    atomic_store(&order_bad, 0);
    rx_loop_group *g = new_group(1);
    int sv[2];
    tu_socketpair(sv);
    memset(&R, 0, sizeof(R));
    R.a = rx_loop_group_loop(g, 0);
    R.fd = sv[0];
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    tu_group_threads(g, &order_loop_thread);
    tu_on_loop(R.a, r_make, NULL, 5000);
    rx_conn *c = atomic_load(&R.c);
    ck_assert_ptr_nonnull(c);

    static char want[ORDER_MSGS * 16];
    size_t wlen = 0;
    for (int i = 0; i < ORDER_MSGS; i++) {
        char msg[16];
        int n = snprintf(msg, sizeof(msg), "<%d>", i);
        memcpy(want + wlen, msg, (size_t)n);
        wlen += (size_t)n;
        /* msg is on this stack frame and reused at once: the send must have copied it. */
        ck_assert_int_eq(rx_conn_send_async(c, msg, (size_t)n, order_cb, (void *)(intptr_t)i), 0);
    }
    static char got[ORDER_MSGS * 16];
    size_t glen = 0;
    unsigned long long deadline = tu_now_ms() + 10000;
    while (glen < wlen && tu_now_ms() < deadline) {
        ssize_t r = read(sv[1], got + glen, sizeof(got) - glen);
        if (r > 0)
            glen += (size_t)r;
        else
            tu_poll(sv[1], POLLIN, 10);
    }
    ck_assert_uint_eq(glen, wlen);
    ck_assert_int_eq(memcmp(got, want, wlen), 0);
    ck_assert(tu_wait_atomic(&order_done, ORDER_MSGS, 5000));
    ck_assert_int_eq(atomic_load(&order_bad), 0);
    end_group(g); /* rx_loop_free closes the connection */
    ck_assert_int_eq(atomic_load(&R.closed), 1);
    rx_conn_unref(c);
    close(sv[1]);
}
END_TEST

/* A reference keeps the memory past on_close (ASan/valgrind check the accesses), and a send on a
 * connection whose loop is freed before the send ran reports -ECANCELED through done. */
static atomic_int cancel_done, cancel_status;

static void cancel_cb(rx_conn *c, int status, void *arg) {
    (void)c;
    (void)arg;
    atomic_store(&cancel_status, status);
    atomic_fetch_add(&cancel_done, 1);
}

START_TEST(test_send_async_canceled_when_loop_freed) {
    atomic_store(&cancel_done, 0);
    atomic_store(&cancel_status, 1);
    rx_loop_group *g = new_group(1);
    int sv[2];
    tu_socketpair(sv);
    memset(&R, 0, sizeof(R));
    R.a = rx_loop_group_loop(g, 0);
    R.fd = sv[0];
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    tu_on_loop(R.a, r_make, NULL, 5000);
    rx_conn *c = atomic_load(&R.c);
    ck_assert_ptr_nonnull(c);
    rx_loop_group_stop(g);
    ck_assert_int_eq(tu_group_join_within(g, 5000), 0);
    /* The loop no longer runs: the send waits in its queue until the loop is freed. */
    ck_assert_int_eq(rx_conn_send_async(c, "late", 4, cancel_cb, NULL), 0);
    ck_assert_int_eq(atomic_load(&cancel_done), 0);
    rx_loop_group_free(g);
    ck_assert_int_eq(atomic_load(&cancel_done), 1);
    ck_assert_int_eq(atomic_load(&cancel_status), -ECANCELED);
    ck_assert_int_eq(atomic_load(&R.closed), 1); /* rx_loop_free closed it */
    /* Closed now: a new send is refused without touching anything. */
    ck_assert_int_eq(rx_conn_send_async(c, "later", 5, cancel_cb, NULL), -EPIPE);
    rx_conn_unref(c);
    char buf[8];
    ck_assert_int_le(read(sv[1], buf, sizeof(buf)), 0); /* nothing was sent */
    close(sv[1]);
}
END_TEST

/* ---- loop-thread checks (debug builds) ---- */

#ifndef NDEBUG

static void t_fired(rx_timer *t, void *arg) {
    (void)t;
    atomic_fetch_add((atomic_int *)arg, 1);
}

static atomic_int fired;
static rx_timer *timer_on_loop;

static void t_start_here(void *arg) {
    (void)arg;
    if (rx_timer_start(timer_on_loop, 1, 0) != 0)
        atomic_fetch_add(&fired, 1000);
}

/* The check does not misfire: set-up from the creating thread before the start, and calls from
 * the loop's own thread once it runs, are fine. */
START_TEST(test_loop_thread_calls_allowed) {
    atomic_store(&fired, 0);
    rx_loop_group *g = new_group(1);
    rx_loop *loop = rx_loop_group_loop(g, 0);
    timer_on_loop = rx_timer_new(loop, t_fired, &fired);
    ck_assert_ptr_nonnull(timer_on_loop);
    ck_assert_int_eq(rx_timer_start(timer_on_loop, 1, 0), 0); /* before the start: this thread */
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    ck_assert(tu_wait_atomic(&fired, 1, 5000));
    tu_on_loop(loop, t_start_here, NULL, 5000); /* its own thread */
    ck_assert(tu_wait_atomic(&fired, 2, 5000));
    ck_assert_int_eq(atomic_load(&fired), 2);
    end_group(g);
}
END_TEST

/* A group of one, started, with a connection made on its thread (the test keeps a reference). */
static rx_loop_group *group_with_conn(rx_conn **c, int *peer) {
    rx_loop_group *g = new_group(1);
    int sv[2];
    tu_socketpair(sv);
    memset(&R, 0, sizeof(R));
    R.a = rx_loop_group_loop(g, 0);
    R.fd = sv[0];
    *peer = sv[1];
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    tu_on_loop(R.a, r_make, NULL, 5000);
    *c = atomic_load(&R.c);
    ck_assert_ptr_nonnull(*c);
    return g;
}

START_TEST(test_conn_send_off_thread_aborts) {
    rx_conn *c;
    int peer;
    group_with_conn(&c, &peer);
    rx_conn_send(c, "x", 1); /* the test's thread, not the loop's: SIGABRT */
    ck_abort_msg("rx_conn_send from another thread returned");
}
END_TEST

START_TEST(test_timer_start_off_thread_aborts) {
    rx_loop_group *g = new_group(1);
    rx_timer *t = rx_timer_new(rx_loop_group_loop(g, 0), t_fired, &fired);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    /* Wait until the loop's thread runs the loop, so the call below is surely off-thread. */
    tu_on_loop(rx_loop_group_loop(g, 0), nothing, NULL, 5000);
    rx_timer_start(t, 10, 0);
    ck_abort_msg("rx_timer_start from another thread returned");
}
END_TEST

/* In the child: which = 0 calls rx_conn_send, 1 rx_timer_start, from the test's thread, on a
 * loop that another thread runs (so it should abort). */
static void off_thread_call(void *arg) {
    int which = *(int *)arg;
    if (which == 0) {
        rx_conn *c;
        int peer;
        group_with_conn(&c, &peer);
        rx_conn_send(c, "x", 1);
    } else {
        rx_loop_group *g = new_group(1);
        rx_timer *t = rx_timer_new(rx_loop_group_loop(g, 0), t_fired, &fired);
        if (!t || rx_loop_group_start(g) != 0)
            _exit(3);
        tu_on_loop(rx_loop_group_loop(g, 0), nothing, NULL, 5000);
        rx_timer_start(t, 10, 0);
    }
}

/* off_thread_call in a child with stderr captured: the wait status; the message goes into msg. */
static int off_thread_child(int which, char *msg, size_t cap) {
    return tu_in_child(off_thread_call, &which, msg, cap);
}

/* Whether msg names fn as a whole word (rx_conn_send, not rx_conn_sendv). */
static bool names(const char *msg, const char *fn) {
    size_t n = strlen(fn);
    for (const char *p = strstr(msg, fn); p; p = strstr(p + 1, fn)) {
        char next = p[n];
        bool ident = (next >= 'a' && next <= 'z') || (next >= 'A' && next <= 'Z') ||
                     (next >= '0' && next <= '9') || next == '_';
        bool starts = p == msg || !((p[-1] >= 'a' && p[-1] <= 'z') || p[-1] == '_');
        if (!ident && starts)
            return true;
    }
    return false;
}

START_TEST(test_off_thread_abort_names_the_function) {
    static const char *fns[] = {"rx_conn_send", "rx_timer_start"};
    for (int which = 0; which < 2; which++) {
        char msg[4096];
        int status = off_thread_child(which, msg, sizeof(msg));
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
                      "%s off-thread: child %s %d, stderr: %s", fns[which],
                      WIFSIGNALED(status) ? "killed by signal" : "exited with",
                      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), msg);
        ck_assert_msg(names(msg, fns[which]), "the abort message does not name %s: %s", fns[which],
                      msg);
    }
}
END_TEST

#endif /* !NDEBUG */

/* ---- signals: once per process, whatever the threads ---- */

#define SIG_LOOPS 4

static struct sigrec {
    int k; /* its loop */
    atomic_int calls;
    atomic_int bad; /* wrong signo, or run on another thread than its loop's */
} SR[SIG_LOOPS];

/* Each loop's thread, written by that thread itself (tu_group_threads) and read only by it. */
static pthread_t sig_threads[SIG_LOOPS];

static void sig_cb(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    struct sigrec *r = arg;
    if (signo != SIGUSR1 || !pthread_equal(pthread_self(), sig_threads[r->k]))
        atomic_fetch_add(&r->bad, 1);
    atomic_fetch_add(&r->calls, 1);
}

static bool all_calls(int want) {
    for (int k = 0; k < SIG_LOOPS; k++)
        if (atomic_load(&SR[k].calls) < want)
            return false;
    return true;
}

static bool all_once(void *arg) {
    (void)arg;
    return all_calls(1);
}

static bool all_twice(void *arg) {
    (void)arg;
    return all_calls(2);
}

static bool blocked(int signo) {
    sigset_t cur;
    ck_assert_int_eq(pthread_sigmask(SIG_BLOCK, NULL, &cur), 0);
    return sigismember(&cur, signo) == 1;
}

START_TEST(test_signal_once_per_watcher_over_threads) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    ck_assert_int_eq(pthread_sigmask(SIG_UNBLOCK, &set, NULL), 0);

    rx_loop_group *g = new_group(SIG_LOOPS);
    /* Made here, before the start: SIGUSR1 is blocked in this thread, and the loops' threads
     * inherit the mask, so no thread takes the default action (termination). */
    for (int k = 0; k < SIG_LOOPS; k++) {
        memset(&SR[k], 0, sizeof(SR[k]));
        SR[k].k = k;
        ck_assert_ptr_nonnull(
            rx_signal_new(rx_loop_group_loop(g, (unsigned)k), SIGUSR1, sig_cb, &SR[k]));
    }
    ck_assert(blocked(SIGUSR1));
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    tu_group_threads(g, sig_threads);

    ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
    ck_assert_msg(tu_wait_fn(all_once, NULL, 1000), "after 1 s: %d %d %d %d calls",
                  atomic_load(&SR[0].calls), atomic_load(&SR[1].calls), atomic_load(&SR[2].calls),
                  atomic_load(&SR[3].calls));
    /* Exactly once each: a while longer brings no second call. */
    usleep(200 * 1000);
    for (int k = 0; k < SIG_LOOPS; k++) {
        ck_assert_msg(atomic_load(&SR[k].calls) == 1, "watcher %d ran %d times", k,
                      atomic_load(&SR[k].calls));
        ck_assert_int_eq(atomic_load(&SR[k].bad), 0);
    }

    /* A second delivery, after the first was handled, runs each once more. */
    ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
    ck_assert_msg(tu_wait_fn(all_twice, NULL, 1000), "second signal not handled by all in 1 s");
    usleep(100 * 1000);
    for (int k = 0; k < SIG_LOOPS; k++) {
        ck_assert_int_eq(atomic_load(&SR[k].calls), 2);
        ck_assert_int_eq(atomic_load(&SR[k].bad), 0);
    }

    /* The watchers go with their loops, freed on this thread (their creator's): the last one
     * unblocks SIGUSR1 here again, as it was. */
    end_group(g);
    ck_assert(!blocked(SIGUSR1));
}
END_TEST

static Suite *threads_suite(void) {
    Suite *s = suite_create("threads");
    TCase *send = tu_tcase(s, "send_async", 120);
    tcase_add_test(send, test_send_async_races_close);
    tcase_add_test(send, test_send_async_in_order);
    tcase_add_test(send, test_send_async_canceled_when_loop_freed);
    TCase *sig = tu_tcase(s, "signals", 30);
    tcase_add_test(sig, test_signal_once_per_watcher_over_threads);
#ifndef NDEBUG
    TCase *check = tu_tcase(s, "loop_thread_check", 30);
    tcase_add_test(check, test_loop_thread_calls_allowed);
    tcase_add_test(check, test_off_thread_abort_names_the_function);
    /* A test that dies by a signal would end the whole run under CK_FORK=no (valgrind). */
    if (tu_forking()) {
        tcase_add_test_raise_signal(check, test_conn_send_off_thread_aborts, SIGABRT);
        tcase_add_test_raise_signal(check, test_timer_start_off_thread_aborts, SIGABRT);
    }
#endif
    return s;
}

int main(void) { return tu_main(threads_suite()); }
