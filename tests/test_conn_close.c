/* Tests for the ends of an rx_conn: half-close from either side, graceful close with what is
 * queued, the close deadline, abort, and -EPIPE once a side ended. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- the peer's view ---- */

/* The peer (fd b, closed after) reads until its stream ends: it sees that end and no byte. */
static void peer_sees_bare_eof(rx_loop *loop, int b, int max_ms) {
    tu_peer p;
    tu_peer_init(&p, b, false);
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p, max_ms, 1));
    ck_assert(p.eof);
    ck_assert_uint_eq(p.n, 0);
    tu_peer_free(&p);
}

/* The peer (fd b, closed after) reads until its stream ends: a reset, after bytes that are a
 * correct start of the pattern. Returns how many it read. */
static unsigned long long peer_sees_reset(rx_loop *loop, int b) {
    tu_peer p;
    tu_peer_init(&p, b, true);
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p, 2000, 1));
    ck_assert_int_eq(p.err, ECONNRESET);
    ck_assert_int_eq(p.bad, -1);
    tu_peer_free(&p);
    return p.n;
}

/* ---- half-close ---- */

START_TEST(test_peer_half_close_delivers_all) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    tu_conn_pair(loop, false, NULL, &tu_tr_cbs, &t, &b); /* no on_eof: closes with PEER */
    const size_t n = MiB + 123;
    char *data = tu_pattern_alloc(0, n);
    tu_peer_write_all(loop, b, data, n);
    ck_assert_int_eq(shutdown(b, SHUT_WR), 0);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t, 5000, 5));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_PEER);
    ck_assert_int_eq(t.err, 0);
    ck_assert_uint_eq(t.in_at_close, n); /* every byte before on_close */
    ck_assert_int_eq(tu_pattern_check(rx_buffer_peek(&t.in), 0, n), -1);
    ck_assert_uint_eq(t.bytes_in, n);
    tu_tr_assert_none_late(&t);
    /* The peer sees the connection end. */
    peer_sees_bare_eof(loop, b, 2000);
    free(data);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_local_shutdown_keeps_reading) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    /* Queued output first: the write side shuts only once it is written. */
    const size_t out = 2 * MiB;
    ck_assert_int_eq(tu_send_pattern(c, 0, out), 0);
    ck_assert_uint_gt(rx_conn_queued(c), 0);
    rx_conn_shutdown(c);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_HALF_CLOSED);
    ck_assert_int_eq(rx_conn_send(c, "x", 1), -EPIPE);

    tu_peer p;
    tu_peer_init(&p, b, true);
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p, 5000, 1));
    ck_assert(p.eof);
    ck_assert_int_eq(p.err, 0);
    ck_assert_uint_eq(p.n, out);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 0);

    /* The peer read EOF; now it sends more, and the half-closed connection still gets it. */
    const size_t more = 300 * KiB;
    char *data = tu_pattern_alloc(0, more);
    tu_peer_write_all(loop, b, data, more);
    tu_duo d = {&t, &p, more};
    ck_assert(tu_run_until_fn(loop, tu_tr_has, &d, 5000, 1));
    ck_assert_int_eq(t.closes, 0);
    ck_assert_uint_eq(rx_buffer_len(&t.in), more);
    ck_assert_int_eq(tu_pattern_check(rx_buffer_peek(&t.in), 0, more), -1);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_HALF_CLOSED);

    /* Then the peer ends too: closed with PEER. */
    ck_assert_int_eq(shutdown(b, SHUT_WR), 0);
    tu_tr_wait_close(loop, &t, 2000, RX_CLOSE_PEER);
    ck_assert_int_eq(t.err, 0);
    ck_assert_uint_eq(t.bytes_out, out);
    ck_assert_uint_eq(t.bytes_in, more);
    tu_tr_assert_none_late(&t);
    free(data);
    tu_peer_free(&p);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* on_eof set: the connection stays writable after the peer's EOF and the owner replies. */
static void eof_reply(rx_conn *c, void *arg) {
    tu_tr *t = arg;
    tu_tr_eof(c, arg);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_HALF_CLOSED);
    ck_assert_int_eq(rx_conn_send(c, "response:", 9), 0);
    ck_assert_int_eq(tu_send_pattern(c, 9, MiB), 0); /* more than the socket takes at once */
    rx_conn_close(c);
    t->done = true;
}

START_TEST(test_on_eof_reply_then_close) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {
        .on_data = tu_tr_data,
        .on_drain = tu_tr_drain,
        .on_eof = eof_reply,
        .on_close = tu_tr_close,
    };
    tu_tr t = {0};
    int b;
    tu_conn_pair(loop, true, NULL, &cbs, &t, &b);
    tu_peer_write_all(loop, b, "request", 7);
    ck_assert_int_eq(shutdown(b, SHUT_WR), 0);
    tu_peer p;
    tu_peer_init(&p, b, false);
    tu_duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, tu_peer_done_and_closed, &d, 5000, 1));
    ck_assert_int_eq(t.eofs, 1);
    ck_assert_uint_eq(t.in_at_eof, 7); /* all data before on_eof */
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in), "request", 7), 0);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert(p.eof);
    ck_assert_int_eq(p.err, 0);
    ck_assert_uint_eq(p.n, 9 + MiB);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got), "response:", 9), 0);
    ck_assert_int_eq(tu_pattern_check(rx_buffer_peek(&p.got) + 9, 9, MiB), -1);
    tu_tr_assert_none_late(&t);
    tu_peer_free(&p);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- -EPIPE after close / shutdown ---- */

static void epipe_data(rx_conn *c, rx_buffer *in, void *arg) {
    tu_tr *t = arg;
    tu_tr_data(c, in, arg);
    rx_conn_close(c);
    t->done = true;
    /* Nothing queued: the write side is shut at once and it lingers for the peer's end. */
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    ck_assert_int_eq(rx_conn_send(c, "x", 1), -EPIPE);
    struct iovec iov = {.iov_base = "y", .iov_len = 1};
    ck_assert_int_eq(rx_conn_sendv(c, &iov, 1), -EPIPE);
}

START_TEST(test_send_epipe_after_close_or_shutdown) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2, a3, b3;
    tu_tcp_pair(&a1, &b1);
    tu_small_tcp_pair(&a2, &b2);
    tu_tcp_pair(&a3, &b3);
    tu_tr t1 = {0}, t2 = {0}, t3 = {0};

    /* Shut write side: every kind of send is refused; sendfile still closes its fd. */
    rx_conn *c1 = rx_conn_new(loop, a1, NULL, &tu_tr_cbs, &t1);
    rx_conn_shutdown(c1);
    ck_assert_int_eq(rx_conn_send(c1, "x", 1), -EPIPE);
    struct iovec iov = {.iov_base = "y", .iov_len = 1};
    ck_assert_int_eq(rx_conn_sendv(c1, &iov, 1), -EPIPE);
    int file = tu_pattern_file(100);
    int f = dup(file);
    ck_assert_int_eq(rx_conn_sendfile(c1, f, 0, 100), -EPIPE);
    ck_assert(tu_fd_closed(f));
    close(file);

    /* Closing with output queued: CLOSING, and sends are refused. */
    rx_conn *c2 = rx_conn_new(loop, a2, NULL, &tu_tr_cbs, &t2);
    ck_assert_int_eq(tu_send_pattern(c2, 0, 4 * MiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c2), 0);
    rx_conn_close(c2);
    ck_assert_int_eq(rx_conn_get_state(c2), RX_CONN_CLOSING);
    ck_assert_int_eq(rx_conn_send(c2, "x", 1), -EPIPE);
    ck_assert_int_eq(t2.closes, 0);

    /* Closed inside a callback: the memory lives until the end of the iteration. The peer never
     * ends its side: the close deadline ends the linger. */
    static const rx_conn_callbacks cbs3 = {.on_data = epipe_data, .on_close = tu_tr_close};
    rx_conn *c3 = rx_conn_new(loop, a3, &(rx_conn_opts){.close_timeout_ms = 100}, &cbs3, &t3);
    ck_assert_ptr_nonnull(c3);
    tu_peer_write_all(loop, b3, "z", 1);
    tu_tr_wait_close(loop, &t3, 2000, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t3.datas, 1);

    /* The peer of the shut connection sees EOF at once. */
    peer_sees_bare_eof(loop, b1, 2000);
    ck_assert_int_eq(t1.closes, 0);

    close(b2);
    close(b3);
    tu_free_loop_closing(loop, &t1, &t2, &t3, NULL);
}
END_TEST

/* ---- graceful close and abort ---- */

START_TEST(test_close_writes_queue_then_closes) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 4 * MiB), 0);
    rx_conn_close(c);
    t.done = true;
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    rx_conn_close(c); /* twice: no effect */
    tu_peer p;
    tu_peer_init(&p, b, true);
    tu_duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, tu_peer_done_and_closed, &d, 10000, 1));
    ck_assert_msg(p.eof, "peer: %llu of %u bytes, then %s", p.n, 4 * MiB, strerror(p.err));
    ck_assert_uint_eq(p.n, 4 * MiB);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    tu_tr_assert_none_late(&t);
    tu_peer_free(&p);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* A graceful close whose deadline cannot be armed (no memory for its timer) is not begun: the
 * queue is lost, and on_close says so (RX_CLOSE_ERROR, -ENOMEM), for a local close and for the
 * peer's end alike (the fault schedules saw a lost answer reported as RX_CLOSE_PEER). */
START_TEST(test_close_without_memory_for_its_deadline) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 1 * MiB), 0); /* queued: the small pair is full */
    ck_assert_uint_gt(rx_conn_queued(c), 0);
    if (_i == 0) {
        tu_fail_allocs();
        rx_conn_close(c);
        rx_sys_reset();
        ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSED);
    } else {
        /* A first byte makes the loop's read scratch buffer, which the read of the end uses. */
        ck_assert_int_eq(send(b, "x", 1, MSG_NOSIGNAL), 1);
        for (int i = 0; i < 100 && !t.datas; i++)
            rx_loop_run_once(loop, 10);
        ck_assert_int_eq(shutdown(b, SHUT_WR), 0); /* the peer's end: tu_tr_cbs has no on_eof */
        tu_fail_allocs();
        for (int i = 0; i < 100 && !t.closes; i++)
            rx_loop_run_once(loop, 10);
        rx_sys_reset();
    }
    tu_tr_wait_close(loop, &t, 1000, RX_CLOSE_ERROR);
    ck_assert_int_eq(t.err, -ENOMEM);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* The peer keeps sending while the connection is closing: nothing more reaches on_data, and
 * "write what is queued" still holds: every queued byte arrives, then the end of stream. */
START_TEST(test_close_with_unread_input_delivers_queue) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    tu_small_tcp_pair(&a, &b);
    tu_tr t = {0};
    /* Only data and close: this test is about the bytes, not about late water marks. */
    static const rx_conn_callbacks cbs = {.on_data = tu_tr_data, .on_close = tu_tr_close};
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, &t);
    ck_assert_int_eq(tu_send_pattern(c, 0, 4 * MiB), 0);
    rx_conn_close(c);
    t.done = true;
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    tu_peer_write_all(loop, b, "ignored", 7);
    tu_peer p;
    tu_peer_init(&p, b, true);
    tu_duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, tu_peer_done_and_closed, &d, 10000, 1));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t.datas, 0);
    tu_tr_assert_none_late(&t);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_msg(p.eof && p.n == 4 * MiB,
                  "graceful close lost output: peer got %llu of %u bytes, then %s", p.n, 4 * MiB,
                  p.eof ? "EOF" : strerror(p.err));
    tu_peer_free(&p);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_abort_drops_queue) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 4 * MiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c), MiB);
    rx_conn_abort(c); /* outside the loop: on_close runs from the loop, never inside the call */
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSED);
    tu_tr_assert_closes_next(loop, &t, RX_CLOSE_LOCAL);
    ck_assert_uint_lt(peer_sees_reset(loop, b), 4 * MiB);
    tu_tr_assert_closed_once(loop, &t, 20);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- the peer resets while MiBs are queued ---- */

START_TEST(test_peer_reset_mid_send) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 8 * MiB), 0);
    tu_run_for(loop, 20);
    ck_assert_uint_gt(rx_conn_queued(c), MiB);
    /* Read a little, then reset. */
    char buf[4096];
    ck_assert_int_gt(read(b, buf, sizeof(buf)), 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    ck_assert_int_eq(setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(b);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t, 3000, 5));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_RESET);
    ck_assert_msg(t.err == -ECONNRESET || t.err == -EPIPE, "err %d", t.err);
    tu_tr_assert_closed_once(loop, &t, 20);
    tu_tr_assert_none_late(&t);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- the close deadline ---- */

/* issue 9 item 3: a closing connection is bounded by its close deadline, which nothing lifts:
 * rx_conn_set_idle_timeout is refused with -EPIPE. (It used to share the lingering timer, so
 * setting 0 cancelled the bound and a peer that never sent its FIN kept the connection open.) */
START_TEST(test_item3_idle_timeout_cannot_lift_close_deadline) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.close_timeout_ms = 100};
    rx_conn *c = tu_conn_pair(loop, false, &o, &tu_tr_cbs, &t, &b);
    /* Input the close has to drop: it then waits for the peer's FIN, which never comes. */
    ck_assert_int_eq(send(b, "unread", 6, MSG_NOSIGNAL), 6);
    ck_assert(tu_poll(rx_conn_fd(c), POLLIN, 1000) & POLLIN);
    rx_loop_update_time(loop); /* the deadline counts from the loop's cached time */
    unsigned long long t0 = tu_now_ms();
    rx_conn_close(c);
    t.done = true;
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    ck_assert_int_eq(rx_conn_set_idle_timeout(c, 0), -EPIPE);
    ck_assert_int_eq(rx_conn_set_idle_timeout(c, 60000), -EPIPE);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t, 3000, 5));
    unsigned long long ms = t.close_ms - t0;
    ck_assert_msg(ms >= 90 && ms < 1000, "closed %llu ms after the close, want ~100", ms);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t.datas, 0);
    tu_tr_assert_none_late(&t);
    /* Our end of stream reached the peer, and nothing else. */
    peer_sees_bare_eof(loop, b, 1000);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* issue 9 item 11: a close from inside on_data, after the response was appended, writes the
 * response, shuts the write side and closes in that same iteration: after one rx_loop_run_once the
 * peer has the response and its EOF, and EPOLLOUT was never asked for (it used to be, and the
 * response waited for the next iteration). */
static void respond_and_close(rx_conn *c, rx_buffer *in, void *arg) {
    tu_tr *t = arg;
    t->datas++;
    rx_buffer_consume(in, rx_buffer_len(in));
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "response", 8), 0);
    rx_conn_close(c);
}

START_TEST(test_item11_close_in_on_data_writes_at_once) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = respond_and_close, .on_close = tu_tr_close};
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &cbs, &t, &b);
    int a = rx_conn_fd(c);
    ck_assert_int_eq(send(b, "request", 7, MSG_NOSIGNAL), 7);
    ck_assert(tu_poll(a, POLLIN, 1000) & POLLIN);
    tu_inject_epoll_ctl(a);
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 1);
    rx_sys_reset();
    ck_assert_int_eq(t.datas, 1);
    ck_assert_msg(tu_ctl.out_mods == 0, "%d EPOLL_CTL_MOD(s) asked for EPOLLOUT", tu_ctl.out_mods);
    ck_assert_int_eq(t.closes, 0); /* lingering: the peer may still send */
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    /* Without running the loop again: the bytes and the FIN are on the peer's side already. */
    tu_peer p;
    tu_peer_init(&p, b, false);
    unsigned long long deadline = tu_now_ms() + 1000;
    while (!tu_peer_read(&p) && tu_now_ms() < deadline)
        tu_poll(b, POLLIN, 100);
    ck_assert_msg(p.eof, "peer: %llu bytes, no EOF (%s)", p.n, strerror(p.err));
    ck_assert_uint_eq(p.n, 8);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got), "response", 8), 0);
    /* The peer's end of stream ends the linger. */
    tu_peer_free(&p);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t, 1000, 5));
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    rx_loop_free(loop);
}
END_TEST

/* issue 9 item 17: a graceful close is bounded even when the queue cannot drain: with 4 MiB queued
 * to a peer that never reads and no idle timeout, the close deadline aborts the connection
 * (RX_CLOSE_TIMEOUT, -ETIMEDOUT, a reset for the peer). With _i == 1 an idle timeout of 50 ms and
 * on_timeout are set too: on_timeout never runs while closing. Closing again changes nothing. */
START_TEST(test_item17_close_deadline_aborts_nonreader) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {
        .on_data = tu_tr_data, .on_timeout = tu_tr_timeout, .on_close = tu_tr_close};
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.close_timeout_ms = 200, .idle_timeout_ms = _i ? 50 : 0};
    rx_conn *c = tu_conn_pair(loop, true, &o, &cbs, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 4 * MiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c), MiB);
    rx_loop_update_time(loop); /* the deadline counts from the loop's cached time */
    unsigned long long t0 = tu_now_ms();
    rx_conn_close(c);
    rx_conn_close(c);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    tu_run_for(loop, 100);
    ck_assert_int_eq(t.closes, 0);
    rx_conn_close(c); /* halfway: neither restarts nor shortens the deadline */
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t, 3000, 5));
    unsigned long long ms = t.close_ms - t0;
    ck_assert_msg(ms >= 190 && ms < 1500, "closed %llu ms after the close, want ~200", ms);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_TIMEOUT);
    ck_assert_int_eq(t.err, -ETIMEDOUT);
    ck_assert_int_eq(t.timeouts, 0);
    ck_assert_uint_lt(t.bytes_out, 4 * MiB);
    peer_sees_reset(loop, b);
    tu_tr_assert_closed_once(loop, &t, 20);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* issue 9 item 17: the close deadline counts from the last write progress, not from the close: a
 * peer that reads slowly but steadily (at most 64 KiB every 50 ms) gets all of a 2 MiB download
 * queued before a close with a 200 ms deadline, then the end of stream. */
START_TEST(test_item17_close_deadline_spares_slow_reader) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.close_timeout_ms = 200};
    rx_conn *c = tu_conn_pair(loop, true, &o, &tu_tr_cbs, &t, &b);
    const size_t total = 2 * MiB;
    ck_assert_int_eq(tu_send_pattern(c, 0, total), 0);
    /* The deadline counts from the loop's cached time: a slow setup (ThreadSanitizer) must not
     * leave it behind, or the first timer pass could find the deadline already past. */
    rx_loop_update_time(loop);
    rx_conn_close(c);
    t.done = true;
    static char buf[64 * KiB];
    unsigned long long n = 0, t0 = tu_now_ms(), next = t0, deadline = t0 + 20000;
    long long bad = -1;
    bool eof = false;
    int err = 0;
    while (!eof && !err && tu_now_ms() < deadline) {
        for (size_t tick = 0; tu_now_ms() >= next && tick < sizeof(buf);) {
            ssize_t r = recv(b, buf, sizeof(buf) - tick, MSG_DONTWAIT);
            if (r <= 0) {
                eof = r == 0;
                err = r < 0 && errno != EAGAIN ? errno : 0;
                break;
            }
            long long at = tu_pattern_check(buf, n, (size_t)r);
            if (at >= 0 && bad < 0)
                bad = (long long)n + at;
            n += (unsigned long long)r;
            tick += (size_t)r;
        }
        if (tu_now_ms() >= next)
            next += 50;
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    }
    unsigned long long ms = tu_now_ms() - t0;
    ck_assert_msg(eof && n == total, "peer got %llu of %zu bytes in %llu ms, then %s", n, total, ms,
                  eof ? "EOF" : strerror(err));
    ck_assert_int_eq(bad, -1);
    ck_assert_uint_ge(ms, 5 * 200); /* it outlived the deadline many times over */
    tu_tr_wait_close(loop, &t, 2000, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t.err, 0);
    ck_assert_uint_eq(t.bytes_out, total);
    tu_tr_assert_none_late(&t);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- read and write sides ---- */

/* issue 9, read and write sides: rx_conn_ended says which side ended (the peer's FIN with on_eof
 * set; our rx_conn_shutdown), both once closed; a connection whose sides both ended, by shutdown
 * and the peer's EOF in either order, closes by itself with RX_CLOSE_PEER. */
START_TEST(test_ended_sides_close_by_themselves) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {
        .on_data = tu_tr_data, .on_eof = tu_tr_eof, .on_close = tu_tr_close};
    tu_tr t1 = {0}, t2 = {0};
    int b1, b2;
    rx_conn *c1 = tu_conn_pair(loop, false, NULL, &cbs, &t1, &b1);
    rx_conn *c2 = tu_conn_pair(loop, false, NULL, &cbs, &t2, &b2);
    ck_assert_uint_eq(rx_conn_ended(c1), 0);
    ck_assert_uint_eq(rx_conn_ended(c2), 0);
    /* c1: the peer's end first; the connection stays writable. */
    ck_assert_int_eq(shutdown(b1, SHUT_WR), 0);
    ck_assert(tu_run_until_count(loop, &t1.eofs, 1, 2000));
    ck_assert_uint_eq(rx_conn_ended(c1), RX_CONN_READ_ENDED);
    ck_assert_int_eq(rx_conn_get_state(c1), RX_CONN_HALF_CLOSED);
    ck_assert_int_eq(rx_conn_send(c1, "still", 5), 0);
    rx_conn_shutdown(c1);
    ck_assert_uint_eq(rx_conn_ended(c1), RX_CONN_READ_ENDED | RX_CONN_WRITE_ENDED);
    /* c2: our end first; reading goes on. */
    rx_conn_shutdown(c2);
    ck_assert_uint_eq(rx_conn_ended(c2), RX_CONN_WRITE_ENDED);
    ck_assert_int_eq(rx_conn_get_state(c2), RX_CONN_HALF_CLOSED);
    tu_peer_write_all(loop, b2, "more", 4);
    tu_duo d = {&t2, NULL, 4};
    ck_assert(tu_run_until_fn(loop, tu_tr_has, &d, 2000, 5));
    ck_assert_int_eq(t2.closes, 0);
    ck_assert_int_eq(shutdown(b2, SHUT_WR), 0);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t1, 2000, 5));
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t2, 2000, 5));
    ck_assert_int_eq(t1.reason, RX_CLOSE_PEER);
    ck_assert_int_eq(t2.reason, RX_CLOSE_PEER);
    ck_assert_int_eq(t1.err, 0);
    ck_assert_int_eq(t2.err, 0);
    ck_assert_uint_eq(t1.ended_at_close, RX_CONN_READ_ENDED | RX_CONN_WRITE_ENDED);
    ck_assert_uint_eq(t2.ended_at_close, RX_CONN_READ_ENDED | RX_CONN_WRITE_ENDED);
    /* Each peer saw what was sent and then the end of stream. */
    tu_peer p1, p2;
    tu_peer_init(&p1, b1, false);
    tu_peer_init(&p2, b2, false);
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p1, 1000, 1));
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p2, 1000, 1));
    ck_assert(p1.eof && p2.eof);
    ck_assert_uint_eq(p1.n, 5);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p1.got), "still", 5), 0);
    ck_assert_uint_eq(p2.n, 0);
    tu_peer_free(&p1);
    tu_peer_free(&p2);
    tu_tr_free(&t1);
    tu_tr_free(&t2);
    rx_loop_free(loop);
}
END_TEST

static Suite *conn_close_suite(void) {
    Suite *s = suite_create("conn_close");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_peer_half_close_delivers_all);
    tcase_add_test(tc, test_local_shutdown_keeps_reading);
    tcase_add_test(tc, test_on_eof_reply_then_close);
    tcase_add_test(tc, test_send_epipe_after_close_or_shutdown);
    tcase_add_test(tc, test_close_writes_queue_then_closes);
    tcase_add_test(tc, test_close_with_unread_input_delivers_queue);
    tcase_add_loop_test(tc, test_close_without_memory_for_its_deadline, 0, 2);
    tcase_add_test(tc, test_abort_drops_queue);
    tcase_add_test(tc, test_peer_reset_mid_send);
    tcase_add_test(tc, test_item3_idle_timeout_cannot_lift_close_deadline);
    tcase_add_test(tc, test_item11_close_in_on_data_writes_at_once);
    tcase_add_loop_test(tc, test_item17_close_deadline_aborts_nonreader, 0, 2);
    tcase_add_test(tc, test_item17_close_deadline_spares_slow_reader);
    tcase_add_test(tc, test_ended_sides_close_by_themselves);
    return s;
}

int main(void) { return tu_main(conn_close_suite()); }
