/* Tests for rx_channel: dispatch, interest changes, edge/level triggering and close safety. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

static void drain(int fd) {
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0) {
    }
}

struct rec {
    int calls;
    uint32_t ready;     /* last ready mask */
    uint32_t ready_any; /* union of all masks */
    rx_channel *ch;
    bool done;
    int dtors;
    bool drain;
};

static void rec_cb(rx_channel *ch, uint32_t ready, void *arg) {
    struct rec *r = arg;
    r->calls++;
    r->ready = ready;
    r->ready_any |= ready;
    r->ch = ch;
    r->done = true;
    if (r->drain)
        drain(rx_channel_fd(ch));
}

/* A socket pair whose end sv[0] is watched by a channel (flags, cb) recording into r. */
static rx_channel *rec_channel(rx_loop *loop, int sv[2], uint32_t flags, rx_channel_fn cb,
                               struct rec *r) {
    tu_socketpair(sv);
    rx_channel *ch = rx_channel_new(loop, sv[0], flags, cb, r);
    ck_assert_ptr_nonnull(ch);
    return ch;
}

static void rec_dtor(void *arg) { ((struct rec *)arg)->dtors++; }

/* ---- dispatch ---- */

START_TEST(test_readable) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {.drain = true};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, 0, rec_cb, &r);
    ck_assert_ptr_nonnull(ch);
    ck_assert_int_eq(rx_channel_fd(ch), sv[0]);
    ck_assert_ptr_eq(rx_channel_arg(ch), &r);
    ck_assert_ptr_eq(rx_channel_loop(ch), loop);
    ck_assert_uint_eq(rx_channel_interest(ch), 0);

    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_uint_eq(rx_channel_interest(ch), RX_READABLE);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 0);

    ck_assert_int_eq(write(sv[1], "ping", 4), 4);
    ck_assert(tu_run_until(loop, &r.done, 1000));
    ck_assert_int_eq(r.calls, 1);
    ck_assert_ptr_eq(r.ch, ch);
    ck_assert_uint_eq(r.ready, RX_READABLE);

    /* Drained: no more events. */
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 1);

    rx_channel_close(ch);
    close(sv[0]);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_writable) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_ptr_nonnull(ch);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 1);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_uint_eq(r.ready, RX_WRITABLE);

    /* Data waiting, but only WRITABLE asked for: READABLE is not reported. */
    ck_assert_int_eq(write(sv[1], "x", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_uint_eq(r.ready, RX_WRITABLE);

    /* Both. */
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE | RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_uint_eq(r.ready, RX_READABLE | RX_WRITABLE);
    ck_assert_int_eq(r.calls, 3);

    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

static void switch_to_read_cb(rx_channel *ch, uint32_t ready, void *arg) {
    rec_cb(ch, ready, arg);
    if (ready & RX_WRITABLE)
        ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
}

START_TEST(test_change_interest_in_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, switch_to_read_cb, &r);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 1);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_uint_eq(rx_channel_interest(ch), RX_READABLE);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(write(sv[1], "x", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 1);
    ck_assert_uint_eq(r.ready, RX_READABLE);
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_hup_on_close) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    close(sv[1]);
    ck_assert(tu_run_until(loop, &r.done, 1000));
    ck_assert_msg(r.ready & RX_HUP, "ready=%#x lacks RX_HUP", r.ready);
    ck_assert_uint_eq(r.ready & ~(uint32_t)(RX_READABLE | RX_HUP | RX_ERROR), 0);
    rx_channel_close(ch);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_hup_reported_unasked) {
    /* RX_HUP comes with any interest, even WRITABLE only. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    close(sv[1]);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert(tu_run_until(loop, &r.done, 1000));
    ck_assert_msg(r.ready & RX_HUP, "ready=%#x lacks RX_HUP", r.ready);
    rx_channel_close(ch);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_hup_on_shutdown_wr) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
    ck_assert(tu_run_until(loop, &r.done, 1000));
    ck_assert_msg(r.ready & RX_HUP, "half-close: ready=%#x lacks RX_HUP", r.ready);
    /* Our side can still write to the half-closed peer. */
    ck_assert_int_eq(write(sv[0], "y", 1), 1);
    char c;
    ck_assert_int_eq(read(sv[1], &c, 1), 1);
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_hup_half_close_write_interest) {
    /* With RX_WRITABLE interest only, the peer's half-close is not reported (it would wake a writer
     * on every iteration, level-triggered), but a full hang-up is, as RX_HUP. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_uint_eq(r.ready, RX_WRITABLE);
    ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
    r.ready_any = 0;
    for (int i = 0; i < 3; i++)
        rx_loop_run_once(loop, 10);
    ck_assert_msg(!(r.ready_any & RX_HUP), "half-close woke a writer: ready=%#x", r.ready_any);
    ck_assert_uint_eq(r.ready_any, RX_WRITABLE);
    close(sv[1]); /* now both directions are gone: EPOLLHUP */
    r.ready_any = 0;
    for (int i = 0; i < 5 && !(r.ready_any & RX_HUP); i++)
        rx_loop_run_once(loop, 10);
    ck_assert_msg(r.ready_any & RX_HUP, "full hang-up not reported: ready=%#x", r.ready_any);
    ck_assert_uint_eq(r.ready_any & RX_READABLE, 0); /* masked: not in the interest */
    rx_channel_close(ch);
    rx_loop_free(loop);
}
END_TEST

/* ---- interest ---- */

START_TEST(test_same_interest_no_syscall) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int sv[2];
    tu_socketpair(sv);
    tu_inject_epoll_ctl(sv[0]);

    struct rec r = {0};
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_ptr_nonnull(ch);
    ck_assert_int_eq(tu_ctl.calls, 0); /* nothing registered before interest */
    ck_assert_int_eq(rx_channel_set_interest(ch, 0), 0);
    ck_assert_int_eq(tu_ctl.calls, 0);

    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(tu_ctl.calls, 1);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(tu_ctl.calls, 1);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE | RX_WRITABLE), 0);
    ck_assert_int_eq(tu_ctl.calls, 2);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE | RX_WRITABLE), 0);
    ck_assert_int_eq(tu_ctl.calls, 2);

    /* Dispatching events makes no epoll_ctl either. */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_int_eq(tu_ctl.calls, 2);

    ck_assert_int_eq(rx_channel_set_interest(ch, 0), 0);
    ck_assert_int_eq(tu_ctl.calls, 3);
    ck_assert_int_eq(rx_channel_set_interest(ch, 0), 0);
    ck_assert_int_eq(tu_ctl.calls, 3);
    ck_assert_uint_eq(rx_channel_interest(ch), 0);

    rx_sys_reset();
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_interest_zero_stops_events) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(write(sv[1], "x", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 1);
    ck_assert_int_eq(r.calls, 1);

    ck_assert_int_eq(rx_channel_set_interest(ch, 0), 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    /* Not even RX_HUP without interest. */
    close(sv[1]);
    ck_assert_int_eq(rx_loop_run_once(loop, 20), 0);
    ck_assert_int_eq(r.calls, 1);

    /* Re-arming reports the pending state again. */
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_int_eq(r.calls, 2);
    ck_assert(r.ready & RX_READABLE);
    rx_channel_close(ch);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_epoll_ctl_failure) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    tu_inject_epoll_ctl(sv[0]);
    tu_ctl.fail_errno = ENOSPC;

    /* ADD fails. */
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), -ENOSPC);
    ck_assert_uint_eq(rx_channel_interest(ch), 0);
    ck_assert_int_ge(tu_ctl.calls, 1);
    tu_ctl.fail_errno = 0;
    ck_assert_int_eq(write(sv[1], "x", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 10), 0);
    ck_assert_int_eq(r.calls, 0);

    /* It works once epoll_ctl does. */
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_uint_eq(rx_channel_interest(ch), RX_READABLE);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_uint_eq(r.ready, RX_READABLE);

    /* MOD fails: the old mask stays, in the channel and in epoll. */
    tu_ctl.fail_errno = ENOMEM;
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE | RX_WRITABLE), -ENOMEM);
    ck_assert_uint_eq(rx_channel_interest(ch), RX_READABLE);
    tu_ctl.fail_errno = 0;
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_uint_eq(r.ready, RX_READABLE);

    /* Removing (mask 0) fails: still watched. */
    tu_ctl.fail_errno = EBADF;
    ck_assert_int_eq(rx_channel_set_interest(ch, 0), -EBADF);
    ck_assert_uint_eq(rx_channel_interest(ch), RX_READABLE);
    tu_ctl.fail_errno = 0;
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_int_eq(r.calls, 3);

    rx_sys_reset();
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

/* ---- interest changed by an earlier callback of the same batch ---- */

struct batch_ctx {
    rx_channel *ch[2];
    int calls[2];
    uint32_t ready[2];
    uint32_t new_interest; /* what the first callback sets on the other channel */
    int total;
    int first; /* index of the channel whose callback ran first */
};

static void batch_cb(rx_channel *ch, uint32_t ready, void *arg) {
    struct batch_ctx *b = arg;
    int me = ch == b->ch[0] ? 0 : 1;
    b->calls[me]++;
    b->ready[me] = ready;
    if (++b->total == 1) {
        b->first = me;
        ck_assert_int_eq(rx_channel_set_interest(b->ch[1 - me], b->new_interest), 0);
    }
}

static void batch_setup(rx_loop *loop, struct batch_ctx *b, int a[2], int c[2], uint32_t interest) {
    tu_socketpair(a);
    tu_socketpair(c);
    b->ch[0] = rx_channel_new(loop, a[0], RX_CHANNEL_OWNS_FD, batch_cb, b);
    b->ch[1] = rx_channel_new(loop, c[0], RX_CHANNEL_OWNS_FD, batch_cb, b);
    ck_assert_int_eq(rx_channel_set_interest(b->ch[0], interest), 0);
    ck_assert_int_eq(rx_channel_set_interest(b->ch[1], interest), 0);
    ck_assert_int_eq(write(a[1], "a", 1), 1);
    ck_assert_int_eq(write(c[1], "c", 1), 1);
}

START_TEST(test_interest_zero_in_same_batch) {
    /* Both channels ready in one batch; whichever runs first sets the other's interest to 0.
     * A channel without interest gets no callback, even for an event already fetched. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct batch_ctx b = {.new_interest = 0};
    int a[2], c[2];
    batch_setup(loop, &b, a, c, RX_READABLE);
    rx_loop_run_once(loop, 100);
    ck_assert_msg(b.total == 1,
                  "callback ran for a channel whose interest was set to 0 earlier in the batch "
                  "(calls %d/%d, ready %#x/%#x)",
                  b.calls[0], b.calls[1], b.ready[0], b.ready[1]);
    rx_channel_close(b.ch[0]);
    rx_channel_close(b.ch[1]);
    close(a[1]);
    close(c[1]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_ready_masked_by_current_interest) {
    /* Both ready for reading and writing; the first callback narrows the other's interest to
     * RX_WRITABLE: the other must not be told RX_READABLE any more. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct batch_ctx b = {.new_interest = RX_WRITABLE};
    int a[2], c[2];
    batch_setup(loop, &b, a, c, RX_READABLE | RX_WRITABLE);
    rx_loop_run_once(loop, 100);
    ck_assert_int_eq(b.total, 2);
    int second = 1 - b.first;
    /* The first one saw both bits; the narrowed one must see RX_WRITABLE only. */
    ck_assert_uint_eq(b.ready[b.first], RX_READABLE | RX_WRITABLE);
    ck_assert_msg(b.ready[second] == RX_WRITABLE,
                  "ready=%#x after interest was narrowed to RX_WRITABLE", b.ready[second]);
    rx_channel_close(b.ch[0]);
    rx_channel_close(b.ch[1]);
    close(a[1]);
    close(c[1]);
    rx_loop_free(loop);
}
END_TEST

/* ---- level vs edge ---- */

START_TEST(test_level_triggered) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(write(sv[1], "abc", 3), 3);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(r.calls, 4);
    drain(sv[0]);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 4);
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_edge_triggered) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_EDGE | RX_CHANNEL_OWNS_FD, rec_cb, &r);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE), 0);
    ck_assert_int_eq(write(sv[1], "abc", 3), 3);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 1);

    /* New data: one new edge, data still unread. */
    ck_assert_int_eq(write(sv[1], "d", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 2);

    /* Writable edge-triggered: once. */
    struct rec w = {0};
    rx_channel *chw = rx_channel_new(loop, sv[1], RX_CHANNEL_EDGE, rec_cb, &w);
    ck_assert_int_eq(rx_channel_set_interest(chw, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(w.calls, 1);
    ck_assert_uint_eq(w.ready, RX_WRITABLE);

    rx_channel_close(chw);
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

/* ---- close safety ---- */

struct pair_ctx {
    rx_channel *ch[2];
    int fds[2];
    int calls[2];
    int dtors[2];
    int dtors_seen_in_cb; /* the victim's destructor count, right after closing it */
    bool victim_fd_closed;
    /* fd reuse */
    int spare_fd;
    rx_channel *reused;
    struct rec *reused_rec;
    rx_loop *loop;
};

static void pair_dtor0(void *arg) { ((struct pair_ctx *)arg)->dtors[0]++; }
static void pair_dtor1(void *arg) { ((struct pair_ctx *)arg)->dtors[1]++; }

static void pair_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    struct pair_ctx *p = arg;
    int me = ch == p->ch[0] ? 0 : 1;
    ck_assert_ptr_eq(ch, p->ch[me]);
    p->calls[me]++;
    if (p->calls[0] + p->calls[1] == 1) {
        int other = 1 - me;
        rx_channel_close(p->ch[other]);
        p->dtors_seen_in_cb = p->dtors[other];
        p->victim_fd_closed = tu_fd_closed(p->fds[other]);
        if (p->spare_fd >= 0) {
            /* Reuse the victim's fd number at once, for a new channel. */
            ck_assert(p->victim_fd_closed);
            ck_assert_int_eq(dup2(p->spare_fd, p->fds[other]), p->fds[other]);
            p->reused = rx_channel_new(p->loop, p->fds[other], 0, rec_cb, p->reused_rec);
            ck_assert_ptr_nonnull(p->reused);
            ck_assert_int_eq(rx_channel_set_interest(p->reused, RX_READABLE), 0);
        }
    }
}

static void setup_pair(rx_loop *loop, struct pair_ctx *p, int a[2], int b[2]) {
    tu_socketpair(a);
    tu_socketpair(b);
    p->loop = loop;
    p->fds[0] = a[0];
    p->fds[1] = b[0];
    p->ch[0] = rx_channel_new(loop, a[0], RX_CHANNEL_OWNS_FD, pair_cb, p);
    p->ch[1] = rx_channel_new(loop, b[0], RX_CHANNEL_OWNS_FD, pair_cb, p);
    ck_assert_ptr_nonnull(p->ch[0]);
    ck_assert_ptr_nonnull(p->ch[1]);
    rx_channel_set_destructor(p->ch[0], pair_dtor0);
    rx_channel_set_destructor(p->ch[1], pair_dtor1);
    ck_assert_int_eq(rx_channel_set_interest(p->ch[0], RX_READABLE), 0);
    ck_assert_int_eq(rx_channel_set_interest(p->ch[1], RX_READABLE), 0);
    /* Both ready before the poll, so they come back in the same epoll_wait batch. */
    ck_assert_int_eq(write(a[1], "a", 1), 1);
    ck_assert_int_eq(write(b[1], "b", 1), 1);
}

START_TEST(test_close_other_in_same_batch) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct pair_ctx p = {.spare_fd = -1};
    int a[2], b[2];
    setup_pair(loop, &p, a, b);

    int n = rx_loop_run_once(loop, 100);
    ck_assert_int_eq(p.calls[0] + p.calls[1], 1);
    int victim = p.calls[0] ? 1 : 0;
    ck_assert_int_eq(p.dtors_seen_in_cb, 0); /* release is deferred to the end of the iteration */
    ck_assert(p.victim_fd_closed);           /* but an owned fd is closed at once */
    ck_assert_int_eq(p.dtors[victim], 1);
    ck_assert_int_eq(p.dtors[1 - victim], 0);
    ck_assert_int_eq(n, 1);
    ck_assert_uint_eq(rx_loop_events(loop), 1);

    /* Later iterations: only the survivor. */
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_int_eq(p.calls[victim], 0);
    ck_assert_int_eq(p.calls[1 - victim], 2);
    ck_assert_int_eq(p.dtors[victim], 1);

    rx_channel_close(p.ch[1 - victim]);
    ck_assert_int_eq(p.dtors[1 - victim], 1);
    ck_assert_int_eq(p.dtors[victim], 1);
    close(a[1]);
    close(b[1]);
    rx_loop_free(loop);
    ck_assert_int_eq(p.dtors[0], 1);
    ck_assert_int_eq(p.dtors[1], 1);
}
END_TEST

START_TEST(test_close_then_reuse_fd) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int spare[2];
    tu_socketpair(spare);
    struct rec reused = {0};
    struct pair_ctx p = {.spare_fd = spare[0], .reused_rec = &reused};
    int a[2], b[2];
    setup_pair(loop, &p, a, b);

    rx_loop_run_once(loop, 100);
    ck_assert_int_eq(p.calls[0] + p.calls[1], 1);
    ck_assert_ptr_nonnull(p.reused);
    int victim = p.calls[0] ? 1 : 0;
    ck_assert_msg(reused.calls == 0, "stale event of the closed channel reached the new one");
    ck_assert_int_eq(p.dtors[victim], 1);
    /* Releasing the victim at the end of the iteration did not close the reused fd number. */
    ck_assert_int_ge(fcntl(p.fds[victim], F_GETFD), 0);

    /* The new channel has no data: still nothing; then it works normally. */
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1); /* the survivor, level-triggered */
    ck_assert_int_eq(reused.calls, 0);
    ck_assert_int_eq(write(spare[1], "z", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 2);
    ck_assert_int_eq(reused.calls, 1);
    ck_assert_ptr_eq(reused.ch, p.reused);

    rx_channel_close(p.reused);
    close(p.fds[victim]); /* the dup2'ed descriptor, not owned by the new channel */
    rx_channel_close(p.ch[1 - victim]);
    close(spare[0]);
    close(spare[1]);
    close(a[1]);
    close(b[1]);
    rx_loop_free(loop);
    ck_assert_int_eq(p.dtors[0], 1);
    ck_assert_int_eq(p.dtors[1], 1);
}
END_TEST

struct self_ctx {
    int calls, dtors, dtors_in_cb;
    bool fd_closed_in_cb;
    int closes;      /* how many times the callback closes itself */
    int occupy_with; /* >= 0: after the first close, dup2 this onto the freed fd number */
    int fd;
};

static void self_dtor(void *arg) { ((struct self_ctx *)arg)->dtors++; }

static void close_self_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    struct self_ctx *s = arg;
    s->calls++;
    s->fd = rx_channel_fd(ch);
    rx_channel_close(ch);
    s->fd_closed_in_cb = tu_fd_closed(s->fd);
    if (s->occupy_with >= 0)
        ck_assert_int_eq(dup2(s->occupy_with, s->fd), s->fd);
    for (int i = 1; i < s->closes; i++)
        rx_channel_close(ch);
    s->dtors_in_cb = s->dtors;
}

START_TEST(test_close_self_in_callback) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int sv[2];
    tu_socketpair(sv);
    struct self_ctx s = {.closes = 1, .occupy_with = -1};
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, close_self_cb, &s);
    rx_channel_set_destructor(ch, self_dtor);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE | RX_WRITABLE), 0);
    ck_assert_int_eq(write(sv[1], "x", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(s.calls, 1);
    ck_assert(s.fd_closed_in_cb);
    ck_assert_int_eq(s.dtors_in_cb, 0);
    ck_assert_int_eq(s.dtors, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.dtors, 1);
    close(sv[1]);
    rx_loop_free(loop);
    ck_assert_int_eq(s.dtors, 1);
}
END_TEST

START_TEST(test_close_twice_noop) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int sv[2];
    tu_socketpair(sv);
    /* After the first close the callback puts another file on the freed fd number: the later
     * closes (and the release at the end of the iteration) must not close it again. */
    struct self_ctx s = {.closes = 3, .occupy_with = sv[1]};
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, close_self_cb, &s);
    rx_channel_set_destructor(ch, self_dtor);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_WRITABLE), 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.dtors_in_cb, 0);
    ck_assert_int_eq(s.dtors, 1);
    ck_assert(s.fd_closed_in_cb);
    ck_assert_msg(fcntl(s.fd, F_GETFD) >= 0, "the owned fd number was closed more than once");
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(s.calls, 1);
    rx_loop_free(loop);
    ck_assert_int_eq(s.dtors, 1);
    ck_assert_int_ge(fcntl(s.fd, F_GETFD), 0);
    close(s.fd);
    close(sv[1]);
}
END_TEST

START_TEST(test_close_outside_run) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    struct rec r = {0};
    int sv[2];
    rx_channel *ch = rec_channel(loop, sv, RX_CHANNEL_OWNS_FD, rec_cb, &r);
    rx_channel_set_destructor(ch, rec_dtor);
    ck_assert_int_eq(rx_channel_set_interest(ch, RX_READABLE | RX_WRITABLE), 0);
    rx_channel_close(ch);
    ck_assert_int_eq(r.dtors, 1);
    ck_assert(tu_fd_closed(sv[0]));
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r.calls, 0);

    /* Without OWNS_FD the fd stays open and usable. */
    int sv2[2];
    tu_socketpair(sv2);
    struct rec r2 = {0};
    rx_channel *ch2 = rx_channel_new(loop, sv2[0], 0, rec_cb, &r2);
    rx_channel_set_destructor(ch2, rec_dtor);
    ck_assert_int_eq(rx_channel_set_interest(ch2, RX_WRITABLE), 0);
    rx_channel_close(ch2);
    ck_assert_int_eq(r2.dtors, 1);
    ck_assert_int_eq(write(sv2[0], "k", 1), 1);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(r2.calls, 0);

    rx_loop_free(loop);
    ck_assert_int_eq(r.dtors, 1);
    ck_assert_int_eq(r2.dtors, 1);
    close(sv[1]);
    close(sv2[0]);
    close(sv2[1]);
}
END_TEST

enum { MANY = 16 };

struct many_ctx {
    rx_channel *ch[MANY];
    int calls[MANY];
    int dtors[MANY];
    int total_calls;
    int dtors_in_cb;
};

static struct many_ctx many;

static void many_dtor(void *arg) { many.dtors[(int)(intptr_t)arg]++; }

static void many_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    (void)ready;
    int me = (int)(intptr_t)arg;
    many.calls[me]++;
    if (++many.total_calls == 1) {
        for (int i = 0; i < MANY; i++)
            if (i != me)
                rx_channel_close(many.ch[i]);
        for (int i = 0; i < MANY; i++)
            many.dtors_in_cb += many.dtors[i];
    }
}

START_TEST(test_close_all_others_in_batch) {
    /* Sixteen channels ready in one batch; whichever callback runs first closes all the others. */
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    memset(&many, 0, sizeof many);
    int sv[MANY][2];
    for (int i = 0; i < MANY; i++) {
        tu_socketpair(sv[i]);
        many.ch[i] =
            rx_channel_new(loop, sv[i][0], RX_CHANNEL_OWNS_FD, many_cb, (void *)(intptr_t)i);
        ck_assert_ptr_nonnull(many.ch[i]);
        rx_channel_set_destructor(many.ch[i], many_dtor);
        ck_assert_int_eq(rx_channel_set_interest(many.ch[i], RX_WRITABLE), 0);
    }
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 1);
    ck_assert_int_eq(many.total_calls, 1);
    ck_assert_int_eq(many.dtors_in_cb, 0);
    int survivor = -1;
    for (int i = 0; i < MANY; i++) {
        if (many.calls[i]) {
            survivor = i;
            ck_assert_int_eq(many.dtors[i], 0);
        } else {
            ck_assert_int_eq(many.dtors[i], 1);
        }
    }
    ck_assert_int_ge(survivor, 0);
    ck_assert_int_eq(rx_loop_run_once(loop, 0), 1);
    ck_assert_int_eq(many.calls[survivor], 2);
    ck_assert_int_eq(many.total_calls, 2);
    rx_loop_free(loop);
    for (int i = 0; i < MANY; i++) {
        ck_assert_int_eq(many.dtors[i], 1);
        ck_assert(tu_fd_closed(sv[i][0]));
        close(sv[i][1]);
    }
}
END_TEST

/* ---- constructor errors ---- */

static void noop_cb(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    (void)ready;
    (void)arg;
}

START_TEST(test_new_bad_fd) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    errno = 0;
    ck_assert_ptr_null(rx_channel_new(loop, -1, 0, noop_cb, NULL));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(rx_channel_new(loop, -5, RX_CHANNEL_OWNS_FD, noop_cb, NULL));
    ck_assert_int_eq(errno, EINVAL);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_new_enomem) {
    rx_loop *loop = rx_loop_new();
    ck_assert_ptr_nonnull(loop);
    int sv[2];
    tu_socketpair(sv);
    rx_sys.malloc = tu_fail_malloc;
    rx_sys.calloc = tu_fail_calloc;
    rx_sys.realloc = tu_fail_realloc;
    errno = 0;
    ck_assert_ptr_null(rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, noop_cb, NULL));
    ck_assert_int_eq(errno, ENOMEM);
    rx_sys_reset();
    /* The fd is untouched by the failed constructor. */
    ck_assert_int_ge(fcntl(sv[0], F_GETFD), 0);
    rx_channel *ch = rx_channel_new(loop, sv[0], RX_CHANNEL_OWNS_FD, noop_cb, NULL);
    ck_assert_ptr_nonnull(ch);
    rx_channel_close(ch);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

static Suite *channel_suite(void) {
    Suite *s = suite_create("channel");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_readable);
    tcase_add_test(tc, test_writable);
    tcase_add_test(tc, test_change_interest_in_callback);
    tcase_add_test(tc, test_hup_on_close);
    tcase_add_test(tc, test_hup_reported_unasked);
    tcase_add_test(tc, test_hup_on_shutdown_wr);
    tcase_add_test(tc, test_hup_half_close_write_interest);
    tcase_add_test(tc, test_same_interest_no_syscall);
    tcase_add_test(tc, test_interest_zero_stops_events);
    tcase_add_test(tc, test_epoll_ctl_failure);
    tcase_add_test(tc, test_interest_zero_in_same_batch);
    tcase_add_test(tc, test_ready_masked_by_current_interest);
    tcase_add_test(tc, test_level_triggered);
    tcase_add_test(tc, test_edge_triggered);
    tcase_add_test(tc, test_close_other_in_same_batch);
    tcase_add_test(tc, test_close_then_reuse_fd);
    tcase_add_test(tc, test_close_self_in_callback);
    tcase_add_test(tc, test_close_twice_noop);
    tcase_add_test(tc, test_close_outside_run);
    tcase_add_test(tc, test_close_all_others_in_batch);
    tcase_add_test(tc, test_new_bad_fd);
    tcase_add_test(tc, test_new_enomem);
    return s;
}

int main(void) { return tu_main(channel_suite()); }
