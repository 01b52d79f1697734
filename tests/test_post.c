/* Tests for rx_loop_post: ordering, passes, cross-thread posting and wake-ups, ENOMEM, and
 * rx_loop_post_drop's drop callback for tasks rx_loop_free discards. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

struct guard {
    rx_loop *loop;
    bool fired;
};
static void guard_cb(rx_timer *t, void *arg) {
    (void)t;
    struct guard *g = arg;
    g->fired = true;
    rx_loop_stop(g->loop);
}

static rx_timer *start_guard(rx_loop *loop, struct guard *g, uint64_t ms) {
    g->loop = loop;
    g->fired = false;
    rx_timer *t = rx_timer_new(loop, guard_cb, g);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(rx_timer_start(t, ms, 0), 0);
    return t;
}

struct task_rec {
    int calls;
    void *arg_seen;
    pthread_t thread_seen;
};

static void rec_task(void *arg) {
    struct task_rec *r = arg;
    r->calls++;
    r->arg_seen = arg;
    r->thread_seen = pthread_self();
}

/* ---- single thread ---- */

START_TEST(test_post_runs_next_iteration) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct task_rec r = {0};
    ck_assert_int_eq(rx_loop_post(loop, rec_task, &r), 0);
    ck_assert_int_eq(r.calls, 0); /* never synchronously */
    ck_assert_int_ge(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_ptr_eq(r.arg_seen, &r);
    ck_assert(pthread_equal(r.thread_seen, pthread_self()));
    for (int i = 0; i < 3; i++)
        ck_assert_int_ge(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 1);

    /* The same fn/arg posted twice runs twice. */
    ck_assert_int_eq(rx_loop_post(loop, rec_task, &r), 0);
    ck_assert_int_eq(rx_loop_post(loop, rec_task, &r), 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(r.calls, 3);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_post_does_not_let_run_once_block) {
    /* A task posted before run_once(-1) is pending work: the call must not sleep. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct guard g;
    rx_timer *guard = start_guard(loop, &g, 1000);
    struct task_rec r = {0};
    ck_assert_int_eq(rx_loop_post(loop, rec_task, &r), 0);
    unsigned long long t0 = tu_now_ms();
    for (int i = 0; i < 2 && r.calls == 0 && !g.fired; i++)
        ck_assert_int_ge(rx_loop_run_once(loop, -1), 0);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!g.fired);
    ck_assert_uint_lt(tu_now_ms() - t0, 200);
    rx_timer_free(guard);
    rx_loop_free(loop);
}
END_TEST

enum { ORDER_N = 1000 };
static int order_seen[ORDER_N];
static int order_n;

static void order_task(void *arg) {
    if (order_n < ORDER_N)
        order_seen[order_n] = (int)(intptr_t)arg;
    order_n++;
}

START_TEST(test_post_order_one_thread) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    order_n = 0;
    for (int i = 0; i < ORDER_N; i++)
        ck_assert_int_eq(rx_loop_post(loop, order_task, (void *)(intptr_t)i), 0);
    ck_assert_int_eq(order_n, 0);
    unsigned long long deadline = tu_now_ms() + 1000;
    while (order_n < ORDER_N && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 0);
    ck_assert_int_eq(order_n, ORDER_N);
    for (int i = 0; i < ORDER_N; i++)
        ck_assert_int_eq(order_seen[i], i);
    rx_loop_free(loop);
}
END_TEST

struct pass_ctx {
    rx_loop *loop;
    int a_calls, b_calls, c_calls;
    int self_calls;
    int self_max;
};

static void task_b(void *arg) { ((struct pass_ctx *)arg)->b_calls++; }
static void task_c(void *arg) { ((struct pass_ctx *)arg)->c_calls++; }

static void task_a(void *arg) {
    struct pass_ctx *p = arg;
    p->a_calls++;
    ck_assert_int_eq(rx_loop_post(p->loop, task_b, p), 0);
}

static void task_self(void *arg) {
    struct pass_ctx *p = arg;
    p->self_calls++;
    if (p->self_calls < p->self_max)
        ck_assert_int_eq(rx_loop_post(p->loop, task_self, p), 0);
}

START_TEST(test_post_from_task_next_pass) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct pass_ctx p = {.loop = loop, .self_max = 5};
    /* a posts b while running; c was queued behind a and still runs in this pass. */
    ck_assert_int_eq(rx_loop_post(loop, task_a, &p), 0);
    ck_assert_int_eq(rx_loop_post(loop, task_c, &p), 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(p.a_calls, 1);
    ck_assert_int_eq(p.c_calls, 1);
    ck_assert_int_eq(p.b_calls, 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(p.b_calls, 1);
    ck_assert_int_eq(p.a_calls, 1);

    /* A task that reposts itself runs exactly once per pass (no starvation of the loop). */
    ck_assert_int_eq(rx_loop_post(loop, task_self, &p), 0);
    for (int i = 1; i <= 5; i++) {
        rx_loop_run_once(loop, 0);
        ck_assert_int_eq(p.self_calls, i);
    }
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(p.self_calls, 5);
    rx_loop_free(loop);
}
END_TEST

static void stop_task(void *arg) { rx_loop_stop(arg); }

START_TEST(test_post_stop_task) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct guard g;
    rx_timer *guard = start_guard(loop, &g, 2000);
    ck_assert_int_eq(rx_loop_post(loop, stop_task, loop), 0);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert(!g.fired);
    rx_timer_free(guard);
    rx_loop_free(loop);
}
END_TEST

/* ---- threads ---- */

enum { NTHREADS = 8, PER_THREAD = 10000, TOTAL = NTHREADS * PER_THREAD };

struct mt_ctx {
    rx_loop *loop;
    pthread_barrier_t barrier;
    atomic_int post_failures;
    unsigned char seen[TOTAL];
    int last_seq[NTHREADS];
    int order_violations;
    int ran;
    bool stop_when_done;
    pthread_t loop_thread;
    int wrong_thread;
};

static struct mt_ctx mt;

static void mt_task(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    if (!pthread_equal(pthread_self(), mt.loop_thread))
        mt.wrong_thread++;
    int t = (int)(id / PER_THREAD), seq = (int)(id % PER_THREAD);
    mt.seen[id]++;
    if (seq <= mt.last_seq[t])
        mt.order_violations++;
    mt.last_seq[t] = seq;
    if (++mt.ran == TOTAL && mt.stop_when_done)
        rx_loop_stop(mt.loop);
}

static void *mt_poster(void *arg) {
    uintptr_t t = (uintptr_t)arg;
    pthread_barrier_wait(&mt.barrier);
    for (uintptr_t i = 0; i < PER_THREAD; i++)
        if (rx_loop_post(mt.loop, mt_task, (void *)(t * PER_THREAD + i)) != 0)
            atomic_fetch_add(&mt.post_failures, 1);
    return NULL;
}

static void mt_start(rx_loop *loop, bool stop_when_done, pthread_t th[NTHREADS]) {
    mt.loop = loop;
    mt.loop_thread = pthread_self();
    mt.stop_when_done = stop_when_done;
    mt.ran = 0;
    mt.order_violations = 0;
    mt.wrong_thread = 0;
    atomic_store(&mt.post_failures, 0);
    memset(mt.seen, 0, sizeof mt.seen);
    for (int i = 0; i < NTHREADS; i++)
        mt.last_seq[i] = -1;
    ck_assert_int_eq(pthread_barrier_init(&mt.barrier, NULL, NTHREADS), 0);
    for (uintptr_t i = 0; i < NTHREADS; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, mt_poster, (void *)i), 0);
}

static void mt_check(pthread_t th[NTHREADS]) {
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&mt.barrier);
    ck_assert_int_eq(atomic_load(&mt.post_failures), 0);
    ck_assert_int_eq(mt.ran, TOTAL);
    ck_assert_int_eq(mt.order_violations, 0);
    ck_assert_int_eq(mt.wrong_thread, 0);
    for (int i = 0; i < TOTAL; i++)
        ck_assert_msg(mt.seen[i] == 1, "task %d ran %d times", i, mt.seen[i]);
}

START_TEST(test_post_many_threads_run) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct guard g;
    rx_timer *guard = start_guard(loop, &g, 20000);
    pthread_t th[NTHREADS];
    mt_start(loop, true, th);
    ck_assert_int_eq(rx_loop_run(loop), 0);
    ck_assert_msg(!g.fired, "only %d of %d tasks ran", mt.ran, TOTAL);
    mt_check(th);
    rx_timer_free(guard);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_post_many_threads_run_once) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct guard g;
    rx_timer *guard = start_guard(loop, &g, 20000);
    pthread_t th[NTHREADS];
    mt_start(loop, false, th);
    while (mt.ran < TOTAL && !g.fired)
        ck_assert_int_ge(rx_loop_run_once(loop, -1), 0);
    ck_assert_msg(!g.fired, "only %d of %d tasks ran", mt.ran, TOTAL);
    mt_check(th);
    /* Nothing extra afterwards. */
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(mt.ran, TOTAL);
    rx_timer_free(guard);
    rx_loop_free(loop);
}
END_TEST

struct wake_ctx {
    rx_loop *loop;
    atomic_ullong posted_at;
    atomic_ullong ran_at;
    int rc;
};

static void wake_task(void *arg) {
    struct wake_ctx *w = arg;
    atomic_store(&w->ran_at, tu_now_ms());
}

static void *wake_poster(void *arg) {
    struct wake_ctx *w = arg;
    usleep(30000);
    atomic_store(&w->posted_at, tu_now_ms());
    w->rc = rx_loop_post(w->loop, wake_task, w);
    return NULL;
}

START_TEST(test_post_wakes_blocked_wait) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct guard g;
    rx_timer *guard = start_guard(loop, &g, 3000);
    struct wake_ctx w = {.loop = loop, .rc = 99};
    pthread_t th;
    unsigned long long t0 = tu_now_ms();
    ck_assert_int_eq(pthread_create(&th, NULL, wake_poster, &w), 0);
    /* Nothing else to do: run_once(-1) blocks until the post (or the 3 s guard). */
    for (int i = 0; i < 3 && atomic_load(&w.ran_at) == 0 && !g.fired; i++)
        ck_assert_int_ge(rx_loop_run_once(loop, -1), 0);
    pthread_join(th, NULL);
    ck_assert_int_eq(w.rc, 0);
    ck_assert_msg(atomic_load(&w.ran_at) != 0, "posted task did not run (guard fired: %d)",
                  g.fired);
    ck_assert(!g.fired);
    ck_assert_uint_lt(atomic_load(&w.ran_at) - atomic_load(&w.posted_at), 1000);
    ck_assert_uint_lt(tu_now_ms() - t0, 1000);
    rx_timer_free(guard);
    rx_loop_free(loop);
}
END_TEST

/* ---- ENOMEM ---- */

static void count_task(void *arg) { ++*(int *)arg; }

START_TEST(test_post_enomem) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int ran = 0, ok = 0, failed = 0;
    rx_sys.malloc = tu_fail_malloc;
    rx_sys.calloc = tu_fail_calloc;
    rx_sys.realloc = tu_fail_realloc;
    for (int i = 0; i < 10000 && failed == 0; i++) {
        int rc = rx_loop_post(loop, count_task, &ran);
        ck_assert_msg(rc == 0 || rc == -ENOMEM, "rx_loop_post returned %d", rc);
        if (rc == 0)
            ok++;
        else
            failed++;
    }
    rx_sys_reset();
    ck_assert_msg(failed > 0, "rx_loop_post never returned -ENOMEM with allocation failing");
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(ran, ok);
    /* Recovers. */
    ck_assert_int_eq(rx_loop_post(loop, count_task, &ran), 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(ran, ok + 1);
    rx_loop_free(loop);
}
END_TEST

/* ---- rx_loop_post_drop ---- */

struct owned {
    int *ran;     /* fn calls, shared by the tasks of one test */
    int *dropped; /* drop calls */
};

static struct owned *owned_new(int *ran, int *dropped) {
    struct owned *o = malloc(sizeof(*o));
    ck_assert_ptr_nonnull(o);
    o->ran = ran;
    o->dropped = dropped;
    return o;
}

/* fn and drop both own the argument: whichever runs frees it, so a leak or a double call shows
 * under ASan/valgrind as well as in the counters. */
static void owned_run(void *arg) {
    struct owned *o = arg;
    ++*o->ran;
    free(o);
}

static void owned_drop(void *arg) {
    struct owned *o = arg;
    ++*o->dropped;
    free(o);
}

/* Posts a task owning its argument (owned_run, or owned_drop when it is discarded). */
static int post_owned(rx_loop *loop, int *ran, int *dropped) {
    return rx_loop_post_drop(loop, owned_run, owned_drop, owned_new(ran, dropped));
}

/* Frees loop, which drops the tasks still queued, then checks how many ran and were dropped. */
static void free_loop_expect(rx_loop *loop, const int *ran, int want_ran, const int *dropped,
                             int want_dropped) {
    rx_loop_free(loop);
    ck_assert_int_eq(*ran, want_ran);
    ck_assert_int_eq(*dropped, want_dropped);
}

START_TEST(test_post_drop_never_run) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int ran = 0, dropped = 0, plain = 0;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(post_owned(loop, &ran, &dropped), 0);
    ck_assert_int_eq(rx_loop_post(loop, count_task, &plain), 0); /* dropped silently */
    ck_assert_int_eq(dropped, 0);
    free_loop_expect(loop, &ran, 0, &dropped, 3);
    ck_assert_int_eq(plain, 0);
}
END_TEST

START_TEST(test_post_drop_after_run) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int ran = 0, dropped = 0;
    ck_assert_int_eq(post_owned(loop, &ran, &dropped), 0);
    ck_assert_int_ge(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(ran, 1);
    /* One that ran, one that did not: only the second is dropped. */
    ck_assert_int_eq(post_owned(loop, &ran, &dropped), 0);
    free_loop_expect(loop, &ran, 1, &dropped, 1);
}
END_TEST

struct chain {
    rx_loop *loop;
    int *ran, *dropped;
};

/* A task that posts its follower while running: the follower, queued for the next pass, is
 * dropped when the loop is freed first. */
static void chain_run(void *arg) {
    struct chain *c = arg;
    ck_assert_int_eq(post_owned(c->loop, c->ran, c->dropped), 0);
}

START_TEST(test_post_drop_posted_by_task) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int ran = 0, dropped = 0;
    struct chain c = {loop, &ran, &dropped};
    ck_assert_int_eq(rx_loop_post(loop, chain_run, &c), 0);
    ck_assert_int_ge(rx_loop_run_once(loop, 0), 0);
    free_loop_expect(loop, &ran, 0, &dropped, 1);
}
END_TEST

static void repost_drop(void *arg) {
    struct chain *c = arg;
    ++*c->dropped;
    /* Hands its work on by posting again while the loop is being freed: dropped in turn. */
    ck_assert_int_eq(post_owned(c->loop, c->ran, c->dropped), 0);
}

START_TEST(test_post_drop_reposting_drop) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int ran = 0, dropped = 0;
    struct chain c = {loop, &ran, &dropped};
    ck_assert_int_eq(rx_loop_post_drop(loop, chain_run, repost_drop, &c), 0);
    free_loop_expect(loop, &ran, 0, &dropped, 2);
}
END_TEST

START_TEST(test_post_drop_errors) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int ran = 0, dropped = 0;
    ck_assert_int_eq(rx_loop_post_drop(loop, NULL, owned_drop, &ran), -EINVAL);
    ck_assert_int_eq(rx_loop_post(loop, NULL, &ran), -EINVAL);
    /* On -ENOMEM nothing was queued: drop is not called, the caller still owns arg. */
    tu_fail_allocs();
    struct owned *o = owned_new(&ran, &dropped);
    int rc = rx_loop_post_drop(loop, owned_run, owned_drop, o);
    rx_sys_reset();
    ck_assert_int_eq(rc, -ENOMEM);
    /* A NULL drop behaves like rx_loop_post. */
    ck_assert_int_eq(rx_loop_post_drop(loop, count_task, NULL, &ran), 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(ran, 1);
    ck_assert_int_eq(rx_loop_post_drop(loop, count_task, NULL, &ran), 0);
    free_loop_expect(loop, &ran, 1, &dropped, 0);
    free(o);
}
END_TEST

static Suite *post_suite(void) {
    Suite *s = suite_create("post");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_post_runs_next_iteration);
    tcase_add_test(tc, test_post_does_not_let_run_once_block);
    tcase_add_test(tc, test_post_order_one_thread);
    tcase_add_test(tc, test_post_from_task_next_pass);
    tcase_add_test(tc, test_post_stop_task);
    tcase_add_test(tc, test_post_many_threads_run);
    tcase_add_test(tc, test_post_many_threads_run_once);
    tcase_add_test(tc, test_post_wakes_blocked_wait);
    tcase_add_test(tc, test_post_enomem);
    tcase_add_test(tc, test_post_drop_never_run);
    tcase_add_test(tc, test_post_drop_after_run);
    tcase_add_test(tc, test_post_drop_posted_by_task);
    tcase_add_test(tc, test_post_drop_reposting_drop);
    tcase_add_test(tc, test_post_drop_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(post_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
