/* Tests for the work pool (rx/work.h) and the blocking file helpers (rx/file.h): done on the
 * submitting loop's thread, exactly once and never inside a call; FIFO start order; cancel; the
 * max_queued bound; freeing the pool or the loop with work queued and running; submits during a
 * pool free; 10,000 requests from 4 loops; the pool threads' names and signal mask; the file
 * helpers on a temporary directory with injected short writes, EINTR and failures; the debug-build
 * check that aborts an off-thread rx_work_cancel.
 *
 * Work and done functions run on other threads than the test's: they never call ck_assert but
 * count what went wrong in atomics that the test thread checks. A work function that must hold its
 * pool thread waits at a gate the test opens (bounded: it lets go after 5 s anyway). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

#define UNUSED __attribute__((unused))

/* ---- helpers ---- */

static void nap_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

struct gate {
    atomic_int entered; /* work functions that reached it */
    atomic_int open;
    int delay_ms; /* open_later */
};

static void gate_pass(struct gate *g) {
    atomic_fetch_add(&g->entered, 1);
    unsigned long long deadline = tu_now_ms() + 5000;
    while (!atomic_load(&g->open) && tu_now_ms() < deadline)
        nanosleep(&(struct timespec){.tv_nsec = 200 * 1000}, NULL);
}

static void *opener(void *arg) {
    struct gate *g = arg;
    nap_ms(g->delay_ms);
    atomic_store(&g->open, 1);
    return NULL;
}

/* Opens g from a thread of its own after ms; join the thread returned. */
static pthread_t open_later(struct gate *g, int ms) {
    pthread_t t;
    g->delay_ms = ms;
    ck_assert_int_eq(pthread_create(&t, NULL, opener, g), 0);
    return t;
}

#define MAGIC 0x5eedc0deu

/* One request of the test, given as the arg of w_fn and d_fn. */
struct req {
    unsigned magic;
    int id;
    struct gate *gate; /* w_fn waits there when set */
    atomic_int ran, finished, done, status;
    pthread_t work_thread, done_thread;
    char work_name[16];
    struct req *extra; /* when set, d_fn submits it (once) to re_pool/re_loop */
    atomic_int re_rc;  /* what that submit returned */
};

#define ORDER_MAX 64
static int order[ORDER_MAX]; /* ids in the order the work functions started */
static atomic_int norder;    /* work starts */
static atomic_int ndone;     /* d_fn calls, all requests */
static atomic_int bad_dones; /* d_fn with a wrong arg, or inside a call flagged by in_call */
static atomic_int in_call;   /* the test is inside an rx call on the loop's thread */
static rx_work_pool *re_pool;
static rx_loop *re_loop;

static void reset(void) {
    atomic_store(&norder, 0);
    atomic_store(&ndone, 0);
    atomic_store(&bad_dones, 0);
    atomic_store(&in_call, 0);
}

static void init_req(struct req *r, int id, struct gate *g) {
    memset(r, 0, sizeof(*r));
    r->magic = MAGIC;
    r->id = id;
    r->gate = g;
    atomic_store(&r->status, 1); /* neither 0 nor an errno: "never reported" */
    atomic_store(&r->re_rc, 1);
}

static void w_fn(void *arg) {
    struct req *r = arg;
    r->work_thread = pthread_self();
    if (pthread_getname_np(pthread_self(), r->work_name, sizeof(r->work_name)) != 0)
        snprintf(r->work_name, sizeof(r->work_name), "?");
    int k = atomic_fetch_add(&norder, 1);
    if (k < ORDER_MAX)
        order[k] = r->id;
    atomic_fetch_add(&r->ran, 1);
    if (r->gate)
        gate_pass(r->gate);
    atomic_store(&r->finished, 1);
}

static void d_fn(void *arg, int status) {
    struct req *r = arg;
    if (r->magic != MAGIC || atomic_load(&in_call))
        atomic_fetch_add(&bad_dones, 1);
    r->done_thread = pthread_self();
    atomic_store(&r->status, status);
    if (r->extra) {
        struct req *x = r->extra;
        r->extra = NULL;
        atomic_store(&r->re_rc, rx_work_submit(re_pool, re_loop, w_fn, d_fn, x, NULL));
    }
    atomic_fetch_add(&r->done, 1);
    atomic_fetch_add(&ndone, 1);
}

/* Counts for requests that share one arg. */
struct tally {
    atomic_int ran, done, ok;
};

static void t_work(void *arg) { atomic_fetch_add(&((struct tally *)arg)->ran, 1); }

static void t_done(void *arg, int status) {
    struct tally *t = arg;
    atomic_fetch_add(&t->ok, status == 0);
    atomic_fetch_add(&t->done, 1);
}

static rx_work_pool *new_pool(unsigned threads, unsigned max_queued) {
    rx_work_pool_opts o = {.threads = threads, .max_queued = max_queued};
    rx_work_pool *p = rx_work_pool_new(&o);
    ck_assert_msg(p != NULL, "rx_work_pool_new(%u, %u): %s", threads, max_queued, strerror(errno));
    return p;
}

static rx_loop *new_loop(void) {
    rx_loop *l = rx_loop_new();
    ck_assert_ptr_nonnull(l);
    return l;
}

static rx_work *submit(rx_work_pool *p, rx_loop *l, struct req *r) {
    rx_work *h = NULL;
    ck_assert_int_eq(rx_work_submit(p, l, w_fn, d_fn, r, &h), 0);
    ck_assert_ptr_nonnull(h);
    return h;
}

/* On a pool of one thread: a (id 0) held at gt and running, then q[0 .. n) (ids 1 ..) queued
 * behind it. Handles into h[0] (a) and h[1 .. n] when h is not NULL. */
static void hold_and_queue(rx_work_pool *p, rx_loop *l, struct gate *gt, struct req *a,
                           struct req *q, int n, rx_work **h) {
    init_req(a, 0, gt);
    rx_work *ha = submit(p, l, a);
    ck_assert(tu_wait_atomic(&gt->entered, 1, 5000));
    if (h)
        h[0] = ha;
    for (int i = 0; i < n; i++) {
        init_req(&q[i], i + 1, NULL);
        rx_work *hq = submit(p, l, &q[i]);
        if (h)
            h[i + 1] = hq;
    }
}

/* Runs the loop (iterations of at most 10 ms) until *v >= want or max_ms pass. */
static bool run_until(rx_loop *loop, atomic_int *v, int want, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (atomic_load(v) < want && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    return atomic_load(v) >= want;
}

static void end_group(rx_loop_group *g) {
    rx_loop_group_stop(g);
    ck_assert_int_eq(tu_group_join_within(g, 5000), 0);
    rx_loop_group_free(g);
}

static void assert_ran_ok(struct req *r, pthread_t loop_thread) {
    ck_assert_int_eq(atomic_load(&r->ran), 1);
    ck_assert_int_eq(atomic_load(&r->done), 1);
    ck_assert_int_eq(atomic_load(&r->status), 0);
    ck_assert_msg(pthread_equal(r->done_thread, loop_thread), "request %d: done off its loop",
                  r->id);
    ck_assert_msg(!pthread_equal(r->work_thread, loop_thread), "request %d: work on the loop",
                  r->id);
    ck_assert_msg(strncmp(r->work_name, "rx-work-", 8) == 0, "request %d ran on thread \"%s\"",
                  r->id, r->work_name);
}

static void assert_cancelled(struct req *r) {
    ck_assert_int_eq(atomic_load(&r->ran), 0);
    ck_assert_int_eq(atomic_load(&r->done), 1);
    ck_assert_int_eq(atomic_load(&r->status), -ECANCELED);
}

/* ---- done: where, when, how often; cancel ---- */

/* A submit or a cancel made by a task on a loop's thread. */
struct on_loop {
    rx_work_pool *pool;
    rx_loop *loop;
    struct req *r;
    rx_work *h; /* cancel h when set, else submit r */
    atomic_int rc;
};

static void call_on_loop(void *arg) {
    struct on_loop *s = arg;
    atomic_store(&in_call, 1);
    atomic_store(&s->rc, s->h ? rx_work_cancel(s->h)
                              : rx_work_submit(s->pool, s->loop, w_fn, d_fn, s->r, NULL));
    atomic_store(&in_call, 0);
}

START_TEST(test_done_on_the_loop_thread) {
    rx_loop_group *g = rx_loop_group_new(1);
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    pthread_t lt;
    tu_group_threads(g, &lt);
    rx_loop *loop = rx_loop_group_loop(g, 0);
    rx_work_pool *p = new_pool(2, 0);
    /* Submitted from the test's thread: done runs on the loop's. */
    struct req r[3];
    for (int i = 0; i < 3; i++) {
        init_req(&r[i], i, NULL);
        submit(p, loop, &r[i]);
    }
    ck_assert(tu_wait_atomic(&ndone, 3, 5000));
    /* Submitted from the loop's own thread: done is not called inside the submit. */
    struct req own;
    init_req(&own, 3, NULL);
    struct on_loop s = {.pool = p, .loop = loop, .r = &own};
    tu_on_loop(loop, call_on_loop, &s, 5000);
    ck_assert_int_eq(atomic_load(&s.rc), 0);
    ck_assert(tu_wait_atomic(&ndone, 4, 5000));
    /* done may be NULL: the work still runs. */
    struct tally t = {0};
    ck_assert_int_eq(rx_work_submit(p, loop, t_work, NULL, &t, NULL), 0);
    ck_assert(tu_wait_atomic(&t.ran, 1, 5000));
    /* A cancel on the thread of a loop that rx_loop_run runs is allowed (no debug abort). */
    rx_work_pool *p1 = new_pool(1, 0);
    struct gate gt = {0};
    struct req a, b;
    rx_work *h[2];
    hold_and_queue(p1, loop, &gt, &a, &b, 1, h);
    struct on_loop c = {.h = h[1]};
    tu_on_loop(loop, call_on_loop, &c, 5000);
    ck_assert_int_eq(atomic_load(&c.rc), 0);
    ck_assert(tu_wait_atomic(&b.done, 1, 5000));
    atomic_store(&gt.open, 1);
    ck_assert(tu_wait_atomic(&a.done, 1, 5000));
    /* Exactly once: a while longer brings no second call. */
    nap_ms(100);
    for (int i = 0; i < 3; i++) {
        assert_ran_ok(&r[i], lt);
        ck_assert(!pthread_equal(r[i].work_thread, pthread_self()));
    }
    assert_ran_ok(&own, lt);
    assert_ran_ok(&a, lt);
    assert_cancelled(&b);
    ck_assert(pthread_equal(b.done_thread, lt));
    ck_assert_int_eq(atomic_load(&ndone), 6);
    ck_assert_int_eq(atomic_load(&t.ran), 1);
    ck_assert_int_eq(atomic_load(&bad_dones), 0);
    end_group(g);
    rx_work_pool_free(p);
    rx_work_pool_free(p1);
}
END_TEST

START_TEST(test_fifo_start_order) {
    enum { N = 24 };
    rx_loop *loop = new_loop();
    rx_work_pool *p = new_pool(1, 0);
    struct gate gt = {0};
    struct req r[N];
    hold_and_queue(p, loop, &gt, &r[0], &r[1], N - 1, NULL);
    atomic_store(&gt.open, 1);
    ck_assert(run_until(loop, &ndone, N, 5000));
    ck_assert_int_eq(atomic_load(&norder), N);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(order[i] == i, "start %d was request %d", i, order[i]);
        assert_ran_ok(&r[i], pthread_self());
    }
    rx_loop_free(loop);
    rx_work_pool_free(p);
}
END_TEST

START_TEST(test_cancel) {
    rx_loop *loop = new_loop(); /* run by this thread */
    rx_work_pool *p = new_pool(1, 0);
    struct gate gt = {0};
    struct req r[5];
    rx_work *h[5];
    hold_and_queue(p, loop, &gt, &r[0], &r[1], 4, h);
    atomic_store(&in_call, 1);
    ck_assert_int_eq(rx_work_cancel(h[2]), 0);         /* middle of the queue */
    ck_assert_int_eq(rx_work_cancel(h[4]), 0);         /* its tail */
    ck_assert_int_eq(rx_work_cancel(h[2]), -EALREADY); /* twice */
    ck_assert_int_eq(rx_work_cancel(h[0]), -EBUSY);    /* running */
    ck_assert_int_eq(rx_work_cancel(h[0]), -EBUSY);
    atomic_store(&in_call, 0);
    ck_assert_int_eq(atomic_load(&ndone), 0); /* never inside the call */
    /* The cancelled ones' done comes with the next iteration, while r[0] still runs. */
    ck_assert_int_ge(rx_loop_run_once(loop, 0), 0);
    assert_cancelled(&r[2]);
    assert_cancelled(&r[4]);
    ck_assert_int_eq(atomic_load(&ndone), 2);
    atomic_store(&gt.open, 1);
    /* r[1] has run, its done not yet (the loop does not run): too late to cancel. */
    ck_assert(tu_wait_atomic(&r[1].finished, 1, 5000));
    nap_ms(20);
    ck_assert_int_eq(atomic_load(&r[1].done), 0); /* done waits for the loop */
    ck_assert_int_eq(rx_work_cancel(h[1]), -EBUSY);
    ck_assert(run_until(loop, &ndone, 5, 5000));
    tu_run_for(loop, 30);
    ck_assert_int_eq(atomic_load(&ndone), 5);
    for (int i = 0; i < 4; i += i == 1 ? 2 : 1) /* 0, 1, 3 */
        assert_ran_ok(&r[i], pthread_self());
    assert_cancelled(&r[2]);
    assert_cancelled(&r[4]);
    ck_assert_int_eq(atomic_load(&norder), 3);
    ck_assert(order[0] == 0 && order[1] == 1 && order[2] == 3);
    ck_assert_int_eq(atomic_load(&bad_dones), 0);
    rx_loop_free(loop);
    rx_work_pool_free(p);
}
END_TEST

/* ---- the bound, bad arguments, defaults ---- */

START_TEST(test_max_queued_bound) {
    rx_loop *loop = new_loop();
    rx_work_pool *p = new_pool(1, 3);
    struct tally never = {0};
    for (int round = 0; round < 2; round++) { /* the bound holds again once the queue drained */
        struct gate gt = {0};
        struct req a, q[3];
        hold_and_queue(p, loop, &gt, &a, q, 3, NULL); /* a runs: it does not count */
        unsigned long long t0 = tu_now_ms();
        for (int i = 0; i < 2; i++)
            ck_assert_int_eq(rx_work_submit(p, loop, t_work, t_done, &never, NULL), -EAGAIN);
        ck_assert_uint_lt(tu_now_ms() - t0, 1000); /* refused at once (the gate holds 5 s) */
        atomic_store(&gt.open, 1);
        ck_assert(run_until(loop, &ndone, 4 * (round + 1), 5000));
        assert_ran_ok(&a, pthread_self());
        for (int i = 0; i < 3; i++)
            assert_ran_ok(&q[i], pthread_self());
    }
    tu_run_for(loop, 20);
    ck_assert_int_eq(atomic_load(&never.ran), 0);
    ck_assert_int_eq(atomic_load(&never.done), 0);
    rx_loop_free(loop);
    rx_work_pool_free(p);
}
END_TEST

/* opts NULL: 4 threads (rx-work-0 .. 3), running 4 requests at once, and at most 1024 queued;
 * threads over 1024 and NULL arguments refused. */
START_TEST(test_defaults_and_bad_arguments) {
    rx_loop *loop = new_loop();
    rx_work_pool *p = rx_work_pool_new(NULL);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(rx_work_pool_threads(p), 4);
    struct gate gt = {0};
    struct req r[4];
    for (int i = 0; i < 4; i++) {
        init_req(&r[i], i, &gt);
        submit(p, loop, &r[i]);
    }
    ck_assert_msg(tu_wait_atomic(&gt.entered, 4, 5000), "%d of 4 requests run at once",
                  atomic_load(&gt.entered));
    struct tally t = {0};
    for (int i = 0; i < 1024; i++)
        ck_assert_int_eq(rx_work_submit(p, loop, t_work, t_done, &t, NULL), 0);
    ck_assert_int_eq(rx_work_submit(p, loop, t_work, t_done, &t, NULL), -EAGAIN);
    atomic_store(&gt.open, 1);
    ck_assert(run_until(loop, &t.done, 1024, 10000));
    ck_assert(run_until(loop, &ndone, 4, 5000));
    ck_assert_int_eq(atomic_load(&t.ran), 1024);
    ck_assert_int_eq(atomic_load(&t.ok), 1024);
    bool seen[4] = {false};
    for (int i = 0; i < 4; i++) {
        assert_ran_ok(&r[i], pthread_self());
        unsigned k = 99;
        ck_assert_int_eq(sscanf(r[i].work_name, "rx-work-%u", &k), 1);
        ck_assert_uint_lt(k, 4);
        ck_assert_msg(!seen[k], "two requests ran on %s at once", r[i].work_name);
        seen[k] = true;
    }
    rx_loop_free(loop);
    rx_work_pool_free(p);
    /* Zeroes mean the defaults too. */
    rx_work_pool_opts o = {0};
    p = rx_work_pool_new(&o);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(rx_work_pool_threads(p), 4);
    rx_work_pool_free(p);
    for (unsigned bad = 1025; bad != 0; bad = bad < 100000 ? 100000 : bad < ~0u ? ~0u : 0) {
        o.threads = bad; /* more than 1024 threads */
        errno = 0;
        ck_assert_ptr_null(rx_work_pool_new(&o));
        ck_assert_int_eq(errno, EINVAL);
    }
    p = new_pool(3, 0);
    ck_assert_uint_eq(rx_work_pool_threads(p), 3);
    /* -EINVAL for a NULL pool, loop or work: neither function runs. */
    loop = new_loop();
    t = (struct tally){0};
    rx_work *h = NULL;
    ck_assert_int_eq(rx_work_submit(NULL, loop, t_work, t_done, &t, &h), -EINVAL);
    ck_assert_int_eq(rx_work_submit(p, NULL, t_work, t_done, &t, &h), -EINVAL);
    ck_assert_int_eq(rx_work_submit(p, loop, NULL, t_done, &t, &h), -EINVAL);
    tu_run_for(loop, 30);
    ck_assert_int_eq(atomic_load(&t.ran) + atomic_load(&t.done), 0);
    rx_loop_free(loop);
    rx_work_pool_free(p);
}
END_TEST

/* ---- freeing the pool, or the loop, with work in flight ---- */

START_TEST(test_pool_free_in_flight) {
    rx_loop *loop = new_loop(); /* run by this thread, and not during the free */
    rx_work_pool *p = new_pool(1, 0);
    struct gate gt = {0};
    struct req a, q[3];
    rx_work *h[4];
    hold_and_queue(p, loop, &gt, &a, q, 3, h);
    rx_loop *l2 = new_loop(); /* freed before it ever runs */
    struct req c;
    init_req(&c, 4, NULL);
    submit(p, l2, &c);
    pthread_t op = open_later(&gt, 100); /* lets a go while the free waits for it */
    unsigned long long t0 = tu_now_ms();
    rx_work_pool_free(p);
    unsigned long long took = tu_now_ms() - t0;
    ck_assert_int_eq(pthread_join(op, NULL), 0);
    ck_assert_int_eq(atomic_load(&a.finished), 1); /* returned only after the work was over */
    ck_assert_uint_ge(took, 50);
    ck_assert_int_eq(atomic_load(&ndone), 0); /* no done inside the free */
    /* The requests keep the pool's memory: cancel is still safe and says what happened. */
    ck_assert_int_eq(rx_work_cancel(h[1]), -EALREADY);
    ck_assert_int_eq(rx_work_cancel(h[3]), -EALREADY);
    ck_assert_int_eq(rx_work_cancel(h[0]), -EBUSY);
    ck_assert_int_eq(atomic_load(&ndone), 0);
    /* Every completion is queued already: the next iteration runs them all. */
    ck_assert_int_ge(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(atomic_load(&ndone), 4);
    tu_run_for(loop, 20);
    ck_assert_int_eq(atomic_load(&ndone), 4);
    assert_ran_ok(&a, pthread_self());
    for (int i = 0; i < 3; i++) {
        assert_cancelled(&q[i]);
        ck_assert(pthread_equal(q[i].done_thread, pthread_self()));
    }
    /* A loop freed before it ran again gets its completions inside rx_loop_free. */
    rx_loop_free(l2);
    assert_cancelled(&c);
    ck_assert(pthread_equal(c.done_thread, pthread_self()));
    ck_assert_int_eq(atomic_load(&bad_dones), 0);
    rx_loop_free(loop);
}
END_TEST

/* A work function that waits until another thread is about to free its pool, then submits again
 * and again until a submit fails. */
#define SH_TRIES 200
static struct shut {
    rx_work_pool *pool;
    rx_loop *loop;
    atomic_int running, freeing;
    atomic_int rc, accepted; /* the failed submit's result; the submits before it */
    struct req tries[SH_TRIES];
} SH;

static void sh_work(UNUSED void *arg) {
    atomic_store(&SH.running, 1);
    unsigned long long deadline = tu_now_ms() + 5000;
    while (!atomic_load(&SH.freeing) && tu_now_ms() < deadline)
        nap_ms(1);
    for (int i = 0; i < SH_TRIES; i++) {
        int rc = rx_work_submit(SH.pool, SH.loop, w_fn, d_fn, &SH.tries[i], NULL);
        if (rc != 0) {
            atomic_store(&SH.rc, rc);
            break;
        }
        atomic_fetch_add(&SH.accepted, 1); /* the free had not begun: it cancels this one */
        nap_ms(10);
    }
}

static void *sh_free(UNUSED void *arg) {
    atomic_store(&SH.freeing, 1);
    rx_work_pool_free(SH.pool);
    return NULL;
}

START_TEST(test_submit_during_pool_free) {
    memset(&SH, 0, sizeof(SH));
    for (int i = 0; i < SH_TRIES; i++)
        init_req(&SH.tries[i], i, NULL);
    SH.loop = new_loop();
    SH.pool = new_pool(1, 0);
    struct tally t = {0};
    ck_assert_int_eq(rx_work_submit(SH.pool, SH.loop, sh_work, t_done, &t, NULL), 0);
    ck_assert(tu_wait_atomic(&SH.running, 1, 5000));
    pthread_t ft;
    ck_assert_int_eq(pthread_create(&ft, NULL, sh_free, NULL), 0);
    ck_assert_int_eq(pthread_join(ft, NULL), 0);
    ck_assert_int_eq(atomic_load(&SH.rc), -ESHUTDOWN);
    int acc = atomic_load(&SH.accepted);
    ck_assert_int_lt(acc, SH_TRIES);
    ck_assert_int_ge(rx_loop_run_once(SH.loop, 0), 0);
    tu_run_for(SH.loop, 20);
    ck_assert_int_eq(atomic_load(&t.ok), 1);
    ck_assert_int_eq(atomic_load(&ndone), acc);
    for (int i = 0; i < acc; i++)
        assert_cancelled(&SH.tries[i]);
    /* The refused one: neither function ran. */
    ck_assert_int_eq(atomic_load(&SH.tries[acc].done), 0);
    ck_assert_int_eq(atomic_load(&norder), 0);
    rx_loop_free(SH.loop);
}
END_TEST

START_TEST(test_loop_free_in_flight) {
    rx_loop *loop = new_loop(); /* never run */
    rx_work_pool *p = new_pool(1, 0);
    struct gate gt = {0};
    struct req a, q[3], extra;
    hold_and_queue(p, loop, &gt, &a, q, 3, NULL);
    /* q[1]'s done, run inside rx_loop_free, submits once more to the dying loop. */
    init_req(&extra, 9, NULL);
    q[1].extra = &extra;
    re_pool = p;
    re_loop = loop;
    pthread_t op = open_later(&gt, 100);
    ck_assert_int_eq(atomic_load(&ndone), 0);
    rx_loop_free(loop);
    ck_assert_int_eq(pthread_join(op, NULL), 0);
    /* Everything settled inside rx_loop_free, on this thread, after a was over. */
    ck_assert_int_eq(atomic_load(&a.finished), 1);
    assert_ran_ok(&a, pthread_self());
    for (int i = 0; i < 3; i++) {
        assert_cancelled(&q[i]);
        ck_assert(pthread_equal(q[i].done_thread, pthread_self()));
    }
    ck_assert_int_eq(atomic_load(&q[1].re_rc), 0);
    ck_assert_int_eq(atomic_load(&extra.done), 1);
    int st = atomic_load(&extra.status);
    ck_assert_msg(st == 0 || st == -ECANCELED, "the late request's done got %d", st);
    ck_assert_int_eq(atomic_load(&extra.ran), st == 0);
    ck_assert(pthread_equal(extra.done_thread, pthread_self()));
    ck_assert_int_eq(atomic_load(&ndone), 5);
    ck_assert_int_eq(atomic_load(&bad_dones), 0);
    /* The pool serves another loop afterwards. */
    rx_loop *l2 = new_loop();
    struct req b;
    init_req(&b, 10, NULL);
    submit(p, l2, &b);
    ck_assert(run_until(l2, &b.done, 1, 5000));
    assert_ran_ok(&b, pthread_self());
    rx_loop_free(l2);
    rx_work_pool_free(p);
}
END_TEST

/* ---- stress: 4 loops, 10,000 requests, one 4-thread pool ---- */

#define S_LOOPS 4
#define S_PER 2500
#define S_TOTAL (S_LOOPS * S_PER)

static struct sloop {
    rx_loop *loop;
    rx_timer *retry;
    unsigned k;
    int next; /* the loop's thread only */
    atomic_int done, eagain;
} SL[S_LOOPS];
static pthread_t s_thr[S_LOOPS];
static rx_work_pool *s_pool;
static atomic_uchar s_ran[S_TOTAL], s_done[S_TOTAL];
static atomic_int s_bad;

static void s_work(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    for (int k = 0; k < S_LOOPS; k++)
        if (pthread_equal(pthread_self(), s_thr[k]))
            atomic_fetch_add(&s_bad, 1);
    atomic_fetch_add(&s_ran[i], 1);
}

static void s_done_fn(void *arg, int status) {
    uintptr_t i = (uintptr_t)arg;
    unsigned k = (unsigned)(i / S_PER);
    if (status != 0 || !pthread_equal(pthread_self(), s_thr[k]) || atomic_load(&s_ran[i]) != 1)
        atomic_fetch_add(&s_bad, 1);
    atomic_fetch_add(&s_done[i], 1);
    atomic_fetch_add(&SL[k].done, 1);
}

/* On loop k: submits its next requests, at most 128 per iteration; after -EAGAIN, again 1 ms
 * later. */
static void s_pump(void *arg) {
    struct sloop *l = arg;
    for (int batch = 0; l->next < S_PER && batch < 128; batch++) {
        uintptr_t i = (uintptr_t)l->k * S_PER + (uintptr_t)l->next;
        int rc = rx_work_submit(s_pool, l->loop, s_work, s_done_fn, (void *)i, NULL);
        if (rc == -EAGAIN) {
            atomic_fetch_add(&l->eagain, 1);
            if (rx_timer_start(l->retry, 1, 0) != 0)
                atomic_fetch_add(&s_bad, 1);
            return;
        }
        if (rc != 0) {
            atomic_fetch_add(&s_bad, 1);
            return;
        }
        l->next++;
    }
    if (l->next < S_PER && rx_loop_post(l->loop, s_pump, l) != 0)
        atomic_fetch_add(&s_bad, 1);
}

static void s_retry(UNUSED rx_timer *t, void *arg) { s_pump(arg); }

static bool s_all_done(UNUSED void *arg) {
    for (int k = 0; k < S_LOOPS; k++)
        if (atomic_load(&SL[k].done) < S_PER)
            return false;
    return true;
}

START_TEST(test_stress_four_loops) {
    atomic_store(&s_bad, 0);
    memset(s_ran, 0, sizeof(s_ran)); /* no thread runs yet */
    memset(s_done, 0, sizeof(s_done));
    rx_loop_group *g = rx_loop_group_new(S_LOOPS);
    ck_assert_ptr_nonnull(g);
    for (unsigned k = 0; k < S_LOOPS; k++) {
        memset(&SL[k], 0, sizeof(SL[k]));
        SL[k].k = k;
        SL[k].loop = rx_loop_group_loop(g, k);
        SL[k].retry = rx_timer_new(SL[k].loop, s_retry, &SL[k]);
        ck_assert_ptr_nonnull(SL[k].retry);
    }
    s_pool = new_pool(4, 256); /* small enough that the loops meet -EAGAIN */
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    tu_group_threads(g, s_thr);
    for (unsigned k = 0; k < S_LOOPS; k++)
        ck_assert_int_eq(rx_loop_post(SL[k].loop, s_pump, &SL[k]), 0);
    ck_assert_msg(tu_wait_fn(s_all_done, NULL, 60000), "done calls: %d %d %d %d",
                  atomic_load(&SL[0].done), atomic_load(&SL[1].done), atomic_load(&SL[2].done),
                  atomic_load(&SL[3].done));
    nap_ms(50);
    ck_assert_int_eq(atomic_load(&s_bad), 0);
    for (int i = 0; i < S_TOTAL; i++) {
        ck_assert_msg(atomic_load(&s_ran[i]) == 1, "request %d ran %d times", i,
                      atomic_load(&s_ran[i]));
        ck_assert_msg(atomic_load(&s_done[i]) == 1, "request %d: done ran %d times", i,
                      atomic_load(&s_done[i]));
    }
    fprintf(stderr, "stress: %d requests, -EAGAIN met %d/%d/%d/%d times\n", S_TOTAL,
            atomic_load(&SL[0].eagain), atomic_load(&SL[1].eagain), atomic_load(&SL[2].eagain),
            atomic_load(&SL[3].eagain));
    end_group(g);
    rx_work_pool_free(s_pool);
}
END_TEST

/* ---- the pool threads' signal mask ---- */

static const int watched[] = {SIGINT, SIGTERM, SIGUSR1};

struct sigcheck {
    struct gate *gate;
    atomic_int blocked; /* watched signals found blocked */
};

static void sig_work(void *arg) {
    struct sigcheck *c = arg;
    sigset_t cur;
    if (pthread_sigmask(SIG_BLOCK, NULL, &cur) == 0)
        for (size_t i = 0; i < 3; i++)
            atomic_fetch_add(&c->blocked, sigismember(&cur, watched[i]) == 1);
    gate_pass(c->gate); /* holds its thread, so the other request runs on the other one */
}

START_TEST(test_pool_threads_block_signals) {
    sigset_t set, old, now;
    sigemptyset(&set);
    for (size_t i = 0; i < 3; i++)
        sigaddset(&set, watched[i]);
    ck_assert_int_eq(pthread_sigmask(SIG_UNBLOCK, &set, &old), 0);
    rx_loop *loop = new_loop();
    rx_work_pool *p = new_pool(2, 0);
    ck_assert_int_eq(pthread_sigmask(SIG_BLOCK, NULL, &now), 0);
    for (size_t i = 0; i < 3; i++) /* the creating thread's mask is as it was */
        ck_assert_int_eq(sigismember(&now, watched[i]), 0);
    struct gate gt = {0};
    struct sigcheck c[2] = {{.gate = &gt}, {.gate = &gt}};
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(rx_work_submit(p, loop, sig_work, NULL, &c[i], NULL), 0);
    ck_assert(tu_wait_atomic(&gt.entered, 2, 5000)); /* both threads checked */
    atomic_store(&gt.open, 1);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(atomic_load(&c[i].blocked), 3);
    rx_loop_free(loop);
    rx_work_pool_free(p);
    ck_assert_int_eq(pthread_sigmask(SIG_SETMASK, &old, NULL), 0);
}
END_TEST

/* ---- rx/file.h on a temporary directory ---- */

/* The directory the file tests work in, made and removed by the test case's unchecked fixture,
 * which runs in this process (not in the forked test), so it goes even when a test fails. */
static char base[64];

static int rm_entry(const char *path, UNUSED const struct stat *st, UNUSED int flag,
                    UNUSED struct FTW *ftw) {
    return remove(path);
}

static void base_make(void) {
    snprintf(base, sizeof(base), "/tmp/rx-work-XXXXXX");
    if (!mkdtemp(base))
        base[0] = '\0';
}

static void base_remove(void) {
    if (base[0])
        nftw(base, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    base[0] = '\0';
}

/* A fresh directory of the test's own and a file "f" in it, opened read-write with plain openat;
 * returns the directory's fd, the file's in *fd. */
static int make_tmpdir(int *fd) {
    char dir[96];
    ck_assert_msg(base[0] != '\0', "no temporary directory");
    snprintf(dir, sizeof(dir), "%s/t-XXXXXX", base);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(dfd, 0);
    *fd = openat(dfd, "f", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ck_assert_int_ge(*fd, 0);
    return dfd;
}

static int open_in(int dfd, const char *path, unsigned long long flags,
                   unsigned long long resolve) {
    /* openat2 wants mode 0 unless a file may be created. */
    struct open_how how = {
        .flags = flags | O_CLOEXEC, .mode = (flags & O_CREAT) ? 0600 : 0, .resolve = resolve};
    return rx_file_openat2(dfd, path, &how);
}

START_TEST(test_file_open_beneath_and_stat) {
    int f, dfd = make_tmpdir(&f);
    close(f);
    ck_assert_int_eq(mkdirat(dfd, "sub", 0700), 0);
    int fd = open_in(dfd, "sub/g", O_WRONLY | O_CREAT | O_EXCL, RESOLVE_BENEATH);
    if (fd == -ENOSYS) { /* the header's promise before Linux 5.6 (and under valgrind < 3.20) */
        fprintf(stderr, "openat2 is not available here: the real-file checks are skipped\n");
        close(dfd);
        return;
    }
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(rx_file_write_all(fd, "hello, rx", 9), 0);
    struct stat st;
    ck_assert_int_eq(rx_file_fstat(fd, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    ck_assert_int_eq(st.st_size, 9);
    close(fd);
    /* ".." that stays beneath is fine; the file reads back. */
    fd = open_in(dfd, "sub/../sub/g", O_RDONLY, RESOLVE_BENEATH);
    ck_assert_int_ge(fd, 0);
    char buf[16] = {0};
    ck_assert_int_eq(read(fd, buf, sizeof(buf)), 9);
    ck_assert_str_eq(buf, "hello, rx");
    close(fd);
    ck_assert_int_eq(open_in(dfd, "../x", O_RDONLY, RESOLVE_BENEATH), -EXDEV);
    ck_assert_int_eq(open_in(dfd, "/etc/hostname", O_RDONLY, RESOLVE_BENEATH), -EXDEV);
    ck_assert_int_eq(open_in(dfd, "missing", O_RDONLY, RESOLVE_BENEATH), -ENOENT);
    ck_assert_int_eq(open_in(dfd, "sub/g", O_WRONLY | O_CREAT | O_EXCL, 0), -EEXIST);
    ck_assert_int_eq(rx_file_fstat(-1, &st), -EBADF);
    close(dfd);
}
END_TEST

/* rx_sys.write on one fd: EINTR every other call, else 1 byte at a time; ENOSPC once fail_after
 * bytes are written (when nonzero). */
static struct {
    int fd, calls;
    size_t written, fail_after;
} wi;

static ssize_t write_injected(int fd, const void *buf, size_t n) {
    if (fd != wi.fd)
        return write(fd, buf, n);
    if (wi.calls++ % 2 == 0) {
        errno = EINTR;
        return -1;
    }
    if (wi.fail_after && wi.written >= wi.fail_after) {
        errno = ENOSPC;
        return -1;
    }
    ssize_t w = write(fd, buf, n < 1 ? n : 1);
    if (w > 0)
        wi.written += (size_t)w;
    return w;
}

START_TEST(test_file_write_all_injected) {
    int fd, dfd = make_tmpdir(&fd);
    enum { N = 3000 };
    char *data = tu_pattern_alloc(0, N);
    wi = (__typeof__(wi)){.fd = fd};
    rx_sys.write = write_injected;
    ck_assert_int_eq(rx_file_write_all(fd, data, N), 0);
    ck_assert_int_eq(wi.calls, 2 * N); /* each byte after one EINTR */
    char back[N];
    ck_assert_int_eq(pread(fd, back, N, 0), N);
    ck_assert_int_eq(tu_pattern_check(back, 0, N), -1);
    /* A failure ends it with the negative errno; the prefix before it was written. */
    ck_assert_int_eq(ftruncate(fd, 0), 0);
    ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
    wi = (__typeof__(wi)){.fd = fd, .fail_after = 10};
    ck_assert_int_eq(rx_file_write_all(fd, data, N), -ENOSPC);
    rx_sys_reset();
    struct stat st;
    ck_assert_int_eq(rx_file_fstat(fd, &st), 0);
    ck_assert_int_eq(st.st_size, 10);
    free(data);
    close(fd);
    close(dfd);
}
END_TEST

static int openat2_eio(UNUSED int dirfd, UNUSED const char *path,
                       UNUSED const struct open_how *how) {
    errno = EIO;
    return -1;
}

static int fstat_eio(UNUSED int fd, UNUSED struct stat *st) {
    errno = EIO;
    return -1;
}

START_TEST(test_file_injected_failures) {
    int fd, dfd = make_tmpdir(&fd);
    rx_sys.openat2 = openat2_eio;
    rx_sys.fstat = fstat_eio;
    struct stat st;
    ck_assert_int_eq(open_in(dfd, "f", O_RDONLY, RESOLVE_BENEATH), -EIO);
    ck_assert_int_eq(rx_file_fstat(fd, &st), -EIO);
    rx_sys_reset();
    ck_assert_int_eq(rx_file_fstat(fd, &st), 0);
    int fd2 = open_in(dfd, "f", O_RDONLY, RESOLVE_BENEATH);
    ck_assert_msg(fd2 >= 0 || fd2 == -ENOSYS, "rx_file_openat2 after the reset: %d", fd2);
    if (fd2 >= 0)
        close(fd2);
    close(fd);
    close(dfd);
}
END_TEST

/* ---- the loop-thread check of rx_work_cancel (debug builds) ---- */

#ifndef NDEBUG

static void mark(void *arg) { atomic_store((atomic_int *)arg, 1); }

/* In the child: a loop run by a thread of its own, a request queued for it, and rx_work_cancel
 * from this thread. */
static void cancel_off_thread(void *unused) {
    (void)unused;
    rx_loop_group *g = rx_loop_group_new(1);
    rx_work_pool_opts o = {.threads = 1};
    rx_work_pool *p = rx_work_pool_new(&o);
    if (!g || !p || rx_loop_group_start(g) != 0)
        _exit(3);
    rx_loop *loop = rx_loop_group_loop(g, 0);
    static struct gate gt;
    static struct req a, b;
    static atomic_int running;
    init_req(&a, 0, &gt);
    init_req(&b, 1, NULL);
    rx_work *h = NULL;
    if (rx_work_submit(p, loop, w_fn, d_fn, &a, NULL) != 0 ||
        rx_work_submit(p, loop, w_fn, d_fn, &b, &h) != 0 || rx_loop_post(loop, mark, &running))
        _exit(3);
    unsigned long long deadline = tu_now_ms() + 5000;
    while ((!atomic_load(&running) || !atomic_load(&gt.entered)) && tu_now_ms() < deadline)
        nap_ms(1);
    rx_work_cancel(h); /* b is queued, its loop runs on another thread: SIGABRT */
}

START_TEST(test_cancel_off_thread_aborts) {
    char msg[4096];
    int status = tu_in_child(cancel_off_thread, NULL, msg, sizeof(msg));
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child %s %d, stderr: %s",
                  WIFSIGNALED(status) ? "killed by signal" : "exited",
                  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), msg);
    ck_assert_msg(strstr(msg, "rx_work_cancel") != NULL, "the message does not name it: %s", msg);
}
END_TEST

#endif /* !NDEBUG */

static Suite *work_suite(void) {
    Suite *s = suite_create("work");
    TCase *done = tu_tcase(s, "done", 30);
    tcase_add_checked_fixture(done, reset, NULL);
    tcase_add_test(done, test_done_on_the_loop_thread);
    tcase_add_test(done, test_fifo_start_order);
    tcase_add_test(done, test_cancel);
#ifndef NDEBUG
    tcase_add_test(done, test_cancel_off_thread_aborts);
#endif
    TCase *limits = tu_tcase(s, "limits", 30);
    tcase_add_checked_fixture(limits, reset, NULL);
    tcase_add_test(limits, test_max_queued_bound);
    tcase_add_test(limits, test_defaults_and_bad_arguments);
    tcase_add_test(limits, test_pool_threads_block_signals);
    TCase *life = tu_tcase(s, "lifetime", 30);
    tcase_add_checked_fixture(life, reset, NULL);
    tcase_add_test(life, test_pool_free_in_flight);
    tcase_add_test(life, test_submit_during_pool_free);
    tcase_add_test(life, test_loop_free_in_flight);
    TCase *stress = tu_tcase(s, "stress", 120);
    tcase_add_test(stress, test_stress_four_loops);
    TCase *file = tu_tcase(s, "file", 30);
    tcase_add_unchecked_fixture(file, base_make, base_remove);
    tcase_add_test(file, test_file_open_beneath_and_stat);
    tcase_add_test(file, test_file_write_all_injected);
    tcase_add_test(file, test_file_injected_failures);
    return s;
}

int main(void) { return tu_main(work_suite()); }
