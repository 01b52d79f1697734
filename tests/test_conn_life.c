/* Tests for an rx_conn's life: creation (and its failures), closing or aborting from inside every
 * callback and from another connection's, on_close never inside a call of the user's, and
 * rx_loop_free with live connections. */
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

/* ---- creation ---- */

START_TEST(test_new_bad_fd) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    errno = 0;
    ck_assert_ptr_null(rx_conn_new(loop, -1, NULL, &tu_tr_cbs, &t));
    ck_assert_int_ne(errno, 0);
    ck_assert_int_eq(t.closes, 0);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_socket_options) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    tu_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    rx_conn *c1 = rx_conn_new(loop, a1, NULL, NULL, NULL);
    rx_conn_opts o = {.nagle = true, .keepalive = true};
    rx_conn *c2 = rx_conn_new(loop, a2, &o, NULL, NULL);
    ck_assert_ptr_nonnull(c1);
    ck_assert_ptr_nonnull(c2);
    int v = -1;
    socklen_t len = sizeof(v);
    ck_assert_int_eq(getsockopt(a1, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
    ck_assert_int_ne(v, 0); /* TCP_NODELAY by default */
    ck_assert_int_eq(getsockopt(a1, SOL_SOCKET, SO_KEEPALIVE, &v, &len), 0);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(getsockopt(a2, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
    ck_assert_int_eq(v, 0); /* nagle: left on */
    ck_assert_int_eq(getsockopt(a2, SOL_SOCKET, SO_KEEPALIVE, &v, &len), 0);
    ck_assert_int_ne(v, 0);
    close(b1);
    close(b2);
    rx_loop_free(loop);
}
END_TEST

/* The constructor owns the fd also on failure, and a connection it never returned gets no
 * callbacks (a caller that frees its context after a NULL must not see on_close free it too). */
START_TEST(test_new_failure_owns_fd_no_callbacks) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    tu_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    tu_tr t1 = {0}, t2 = {0};
    /* Out of memory for the connection itself. */
    rx_sys.calloc = tu_fail_calloc;
    errno = 0;
    ck_assert_ptr_null(rx_conn_new(loop, a1, NULL, &tu_tr_cbs, &t1));
    ck_assert_int_eq(errno, ENOMEM);
    rx_sys_reset();
    ck_assert(tu_fd_closed(a1));
    /* Registration with epoll fails. */
    tu_inject_epoll_ctl(a2);
    tu_ctl.fail_op = EPOLL_CTL_ADD;
    tu_ctl.fail_errno = ENOMEM;
    errno = 0;
    ck_assert_ptr_null(rx_conn_new(loop, a2, NULL, &tu_tr_cbs, &t2));
    int err = errno;
    rx_sys_reset();
    ck_assert_int_eq(err, ENOMEM);
    ck_assert_int_ge(tu_ctl.failures, 1);
    ck_assert(tu_fd_closed(a2));
    tu_run_for(loop, 20);
    ck_assert_int_eq(t1.closes, 0);
    ck_assert_msg(t2.closes == 0,
                  "on_close ran (reason %d, err %d) for a connection "
                  "rx_conn_new returned NULL for",
                  t2.reason, t2.err);
    close(b1);
    close(b2);
    rx_loop_free(loop);
}
END_TEST

/* ---- close / abort from inside every callback (through a server) ---- */

enum { CB_OPEN, CB_DATA, CB_DRAIN, CB_HIGH, CB_LOW, CB_EOF, CB_COUNT };
static const char *const cb_names[CB_COUNT] = {"on_open",       "on_data",      "on_drain",
                                               "on_high_water", "on_low_water", "on_eof"};

static struct cbt {
    int which;
    bool abort;
    bool req;
    int late, closes, datas, calls[CB_COUNT];
    rx_close_reason reason;
    rx_conn *c;
} g;

/* Every callback goes through here: counts, flags late calls, and closes when it is its turn. */
static bool cbt_act(rx_conn *c, int which) {
    if (g.req || g.closes) {
        g.late++;
        return true;
    }
    g.calls[which]++;
    if (which != g.which)
        return false;
    g.req = true;
    if (g.abort)
        rx_conn_abort(c);
    else
        rx_conn_close(c);
    ck_assert_int_eq(rx_conn_send(c, "x", 1), -EPIPE);
    return true;
}

static void cbt_open(rx_conn *c, void *arg) {
    (void)arg;
    g.c = c;
    if (cbt_act(c, CB_OPEN))
        return;
    if (g.which == CB_DRAIN || g.which == CB_HIGH || g.which == CB_LOW) {
        int small = 16 * KiB;
        setsockopt(rx_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
        /* on_high_water runs inside the send; when it closed the connection, the send says so. */
        ck_assert_int_eq(tu_send_pattern(c, 0, 2 * MiB), g.which == CB_HIGH ? -EPIPE : 0);
    }
}
static void cbt_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    g.datas++;
    rx_buffer_consume(in, rx_buffer_len(in));
    cbt_act(c, CB_DATA);
}
static void cbt_drain(rx_conn *c, void *arg) {
    (void)arg;
    cbt_act(c, CB_DRAIN);
}
static void cbt_high(rx_conn *c, size_t q, void *arg) {
    (void)arg;
    (void)q;
    cbt_act(c, CB_HIGH);
}
static void cbt_low(rx_conn *c, size_t q, void *arg) {
    (void)arg;
    (void)q;
    cbt_act(c, CB_LOW);
}
static void cbt_eof(rx_conn *c, void *arg) {
    (void)arg;
    cbt_act(c, CB_EOF);
}
static void cbt_close(rx_conn *c, rx_close_reason r, int err, void *arg) {
    (void)c;
    (void)err;
    (void)arg;
    g.closes++;
    g.reason = r;
}

static bool cbt_opened(void *arg) {
    (void)arg;
    return g.c != NULL;
}

static bool cbt_finished(void *arg) {
    tu_peer *p = arg;
    tu_peer_read(p);
    return g.closes > 0 && (p->eof || p->err);
}

START_TEST(test_close_from_callback) {
    memset(&g, 0, sizeof(g));
    g.which = _i / 2;
    g.abort = _i % 2;
    static const rx_conn_callbacks cbs = {
        .on_open = cbt_open,
        .on_data = cbt_data,
        .on_drain = cbt_drain,
        .on_high_water = cbt_high,
        .on_low_water = cbt_low,
        .on_eof = cbt_eof,
        .on_close = cbt_close,
    };
    rx_loop *loop = rx_loop_new();
    rx_server_opts so = {.cbs = &cbs};
    so.conn.high_water = 64 * KiB;
    rx_server *s = tu_server(loop, &so);
    int cl = tu_tcp_connect(tu_server_port(s), true);
    ck_assert_int_ge(cl, 0);
    tu_set_buf(cl, SO_RCVBUF, 32 * KiB);
    ck_assert(tu_run_until_fn(loop, cbt_opened, NULL, 2000, 5));
    if (g.which == CB_DATA)
        ck_assert_int_eq(send(cl, "ping", 4, MSG_NOSIGNAL), 4);
    if (g.which == CB_EOF)
        ck_assert_int_eq(shutdown(cl, SHUT_WR), 0);
    tu_peer p;
    tu_peer_init(&p, cl, true);
    /* The peer reads throughout (drain and low water need it); once the close was asked for it
     * sends more, which must not reach on_data. */
    unsigned long long deadline = tu_now_ms() + 10000;
    bool poked = false;
    while (!cbt_finished(&p) && tu_now_ms() < deadline) {
        /* (A graceful close with output still queued is poked only after it ended: unread
         * input at close time is test_close_with_unread_input_delivers_queue's subject.) */
        bool queued_close = !g.abort && (g.which == CB_HIGH || g.which == CB_LOW);
        if (g.req && !poked && g.which != CB_EOF && !queued_close) {
            send(cl, "after", 5, MSG_NOSIGNAL);
            poked = true;
        }
        ck_assert_int_ge(rx_loop_run_once(loop, 1), 0);
    }
    ck_assert_msg(g.req, "%s never ran", cb_names[g.which]);
    ck_assert_msg(cbt_finished(&p), "%s/%s: not closed", cb_names[g.which],
                  g.abort ? "abort" : "close");
    tu_run_for(loop, 30);
    ck_assert_int_eq(g.closes, 1);
    ck_assert_int_eq(g.reason, RX_CLOSE_LOCAL);
    ck_assert_msg(g.late == 0, "%s/%s: %d callbacks after close", cb_names[g.which],
                  g.abort ? "abort" : "close", g.late);
    ck_assert_int_eq(g.datas, g.which == CB_DATA ? 1 : 0);
    if (!g.abort) {
        /* A graceful close still delivers what was queued, then EOF. */
        ck_assert_msg(p.eof, "%s/close: peer got %llu bytes, then %s", cb_names[g.which], p.n,
                      strerror(p.err));
        ck_assert_int_eq(p.bad, -1);
        if (g.which == CB_HIGH || g.which == CB_LOW || g.which == CB_DRAIN)
            ck_assert_uint_eq(p.n, 2 * MiB);
    } else {
        ck_assert_int_eq(p.bad, -1);
    }
    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    tu_peer_free(&p);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* ---- closing another connection with an event pending in the same batch ---- */

static struct pair2 {
    rx_conn *c[2];
    int n, datas[2], closes[2];
    rx_close_reason reason[2];
    bool abort;
} pr;

static int pr_index(rx_conn *c) { return c == pr.c[0] ? 0 : 1; }

static void pr_open(rx_conn *c, void *arg) {
    (void)arg;
    ck_assert_int_lt(pr.n, 2);
    pr.c[pr.n++] = c;
}
static void pr_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    int i = pr_index(c);
    pr.datas[i]++;
    rx_buffer_consume(in, rx_buffer_len(in));
    if (pr.datas[0] + pr.datas[1] == 1) {
        rx_conn *other = pr.c[1 - i];
        if (pr.abort)
            rx_conn_abort(other);
        else
            rx_conn_close(other);
    }
}
static void pr_close(rx_conn *c, rx_close_reason r, int err, void *arg) {
    (void)err;
    (void)arg;
    int i = pr_index(c);
    pr.closes[i]++;
    pr.reason[i] = r;
}

static bool pr_both_open(void *arg) {
    (void)arg;
    return pr.n == 2;
}

START_TEST(test_close_other_same_batch) {
    memset(&pr, 0, sizeof(pr));
    pr.abort = _i;
    static const rx_conn_callbacks cbs = {
        .on_open = pr_open, .on_data = pr_data, .on_close = pr_close};
    rx_loop *loop = rx_loop_new();
    rx_server_opts so = {.cbs = &cbs};
    rx_server *s = tu_server(loop, &so);
    int port = tu_server_port(s);
    int cl1 = tu_tcp_connect(port, true), cl2 = tu_tcp_connect(port, true);
    ck_assert(tu_run_until_fn(loop, pr_both_open, NULL, 2000, 5));
    /* Both readable before the next poll. */
    ck_assert_int_eq(send(cl1, "1", 1, MSG_NOSIGNAL), 1);
    ck_assert_int_eq(send(cl2, "2", 1, MSG_NOSIGNAL), 1);
    ck_assert(tu_poll(rx_conn_fd(pr.c[0]), POLLIN, 1000) & POLLIN);
    ck_assert(tu_poll(rx_conn_fd(pr.c[1]), POLLIN, 1000) & POLLIN);
    /* Level-triggered, both are in the next batch. An aborted one is closed at once and its
     * event skipped; a gracefully closed one lingers (its event only drains input). Either way it
     * never gets on_data, and on_close comes once. */
    uint64_t events = rx_loop_events(loop);
    int n = rx_loop_run_once(loop, 1000);
    ck_assert_int_eq(n, pr.abort ? 1 : 2);
    ck_assert_uint_eq(rx_loop_events(loop) - events, (uint64_t)n);
    ck_assert_int_eq(pr.datas[0] + pr.datas[1], 1);
    int first = pr.datas[0] ? 0 : 1, other = 1 - first;
    int other_fd = first == 0 ? cl2 : cl1;
    ck_assert_int_eq(pr.datas[other], 0);
    ck_assert_int_eq(pr.closes[first], 0);
    if (!pr.abort) {
        ck_assert_int_eq(pr.closes[other], 0);
        char eof;
        ck_assert_int_eq(recv(other_fd, &eof, 1, 0), 0); /* the server shut its side */
        shutdown(other_fd, SHUT_WR);
        tu_run_for(loop, 30);
    }
    ck_assert_int_eq(pr.closes[other], 1); /* at the end of that iteration */
    ck_assert_int_eq(pr.reason[other], RX_CLOSE_LOCAL);
    tu_run_for(loop, 30);
    ck_assert_int_eq(pr.datas[other], 0);
    ck_assert_int_eq(pr.closes[other], 1);
    /* The first goes on normally until its client leaves. */
    close(cl1);
    close(cl2);
    unsigned long long deadline = tu_now_ms() + 2000;
    while (pr.closes[first] == 0 && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 5);
    ck_assert_int_eq(pr.closes[first], 1);
    ck_assert_int_eq(pr.reason[first], RX_CLOSE_PEER);
    ck_assert_int_eq(pr.closes[other], 1);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* ---- rx_loop_free with live connections ---- */

START_TEST(test_loop_free_live_conns) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    tu_small_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    tu_tr t1 = {0}, t2 = {0};
    rx_conn_opts o = {.idle_timeout_ms = 10000};
    rx_conn *c1 = rx_conn_new(loop, a1, &o, &tu_tr_cbs, &t1);
    rx_conn *c2 = rx_conn_new(loop, a2, NULL, &tu_tr_cbs, &t2);
    ck_assert_ptr_nonnull(c2);
    /* c1 has buffered output, a file range and partial input. */
    ck_assert_int_eq(tu_send_pattern(c1, 0, 2 * MiB), 0);
    int file = tu_pattern_file(1000);
    int f = dup(file);
    ck_assert_int_eq(rx_conn_sendfile(c1, f, 0, 1000), 0);
    ck_assert_int_eq(tu_send_pattern(c1, 0, 100), 0);
    tu_peer_write_all(loop, b2, "abc", 3);
    tu_run_for(loop, 20);
    ck_assert_int_eq(t2.datas, 1);
    rx_loop_free(loop);
    ck_assert_int_eq(t1.closes, 1);
    ck_assert_int_eq(t1.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t2.closes, 1);
    ck_assert_int_eq(t2.reason, RX_CLOSE_LOCAL);
    ck_assert(tu_fd_closed(f));
    ck_assert(tu_fd_closed(a1));
    ck_assert(tu_fd_closed(a2));
    close(file);
    close(b1);
    close(b2);
    tu_tr_free(&t1);
    tu_tr_free(&t2);
}
END_TEST

/* ---- on_close: never inside a call of the user's ---- */

/* issue 9: rx_conn_abort, and rx_conn_close with nothing queued once the peer has ended its side
 * (which closes at once), leave on_close to the loop; the next rx_loop_run_once(loop, -1) does
 * not wait for an event before running it (on_close used to run inside the call). */
START_TEST(test_on_close_never_inside_user_call) {
    rx_loop *loop = rx_loop_new();
    tu_tr t1 = {0}, t2 = {0};
    int b1, b2;
    rx_conn *c1 = tu_conn_pair(loop, false, NULL, &tu_tr_cbs, &t1, &b1);
    static const rx_conn_callbacks eof_cbs = {
        .on_data = tu_tr_data, .on_eof = tu_tr_eof, .on_close = tu_tr_close};
    rx_conn *c2 = tu_conn_pair(loop, false, NULL, &eof_cbs, &t2, &b2);
    rx_conn_abort(c1);
    ck_assert_int_eq(t1.closes, 0);
    ck_assert_int_eq(rx_conn_get_state(c1), RX_CONN_CLOSED);
    /* c2's peer ends its side and c2 reads that end (its on_eof keeps it open). */
    shutdown(b2, SHUT_WR);
    ck_assert(tu_run_until_count(loop, &t2.eofs, 1, 1000));
    rx_conn_close(c2);
    ck_assert_int_eq(t2.closes, 0);
    ck_assert_int_eq(rx_conn_get_state(c2), RX_CONN_CLOSED);
    tu_guard g; /* bounds the wait, should the loop block after all */
    tu_guard_start(&g, loop, 2000);
    unsigned long long t0 = tu_now_ms();
    ck_assert_int_ge(rx_loop_run_once(loop, -1), 0);
    unsigned long long ms = tu_now_ms() - t0;
    ck_assert_msg(ms < 500 && !g.fired, "rx_loop_run_once(-1) waited %llu ms", ms);
    ck_assert_int_eq(t1.closes, 1);
    ck_assert_int_eq(t2.closes, 1);
    ck_assert_int_eq(t1.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t2.reason, RX_CLOSE_LOCAL);
    /* The aborted one reset its peer; the closed one ended its stream. */
    tu_peer p1, p2;
    tu_peer_init(&p1, b1, false);
    tu_peer_init(&p2, b2, false);
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p1, 1000, 1));
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p2, 1000, 1));
    ck_assert_int_eq(p1.err, ECONNRESET);
    ck_assert(p2.eof);
    tu_peer_free(&p1);
    tu_peer_free(&p2);
    tu_guard_free(&g);
    rx_loop_free(loop);
}
END_TEST

/* issue 9 item 19: a send outside rx_loop_run whose own on_high_water aborts the connection
 * returns -EPIPE, and on_close has not run when it returns: it runs at the next iteration. */
static void abort_on_high(rx_conn *c, size_t queued, void *arg) {
    tu_tr_high(c, queued, arg);
    rx_conn_abort(c);
}

START_TEST(test_item19_send_aborted_by_own_high_water) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_high_water = abort_on_high, .on_close = tu_tr_close};
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.high_water = 64 * KiB};
    rx_conn *c = tu_conn_pair(loop, true, &o, &cbs, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 2 * MiB), -EPIPE);
    ck_assert_int_eq(t.highs, 1);
    ck_assert_int_eq(t.closes, 0);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSED);
    ck_assert_int_ge(rx_loop_run_once(loop, 0), 0);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    close(b);
    rx_loop_free(loop);
}
END_TEST

/* issue 9 item 4: rx_loop_free releases connections first, while post and stop still work: an
 * on_close that posts a task and stops the loop gets 0 from rx_loop_post, the task is dropped
 * unrun, and nothing is touched after it was freed (ASan, valgrind). */
static int post_rc, posted_runs;

static void posted_task(void *arg) {
    (void)arg;
    posted_runs++;
}

static void post_and_stop_on_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    tu_tr_close(c, reason, err, arg);
    post_rc = rx_loop_post(rx_conn_loop(c), posted_task, NULL);
    rx_loop_stop(rx_conn_loop(c));
}

START_TEST(test_item4_loop_free_on_close_posts_and_stops) {
    post_rc = 1;
    posted_runs = 0;
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = tu_tr_data,
                                          .on_close = post_and_stop_on_close};
    tu_tr t = {0};
    int b;
    tu_conn_pair(loop, false, NULL, &cbs, &t, &b);
    tu_peer_write_all(loop, b, "x", 1);
    ck_assert(tu_run_until_count(loop, &t.datas, 1, 2000));
    rx_loop_free(loop);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(post_rc, 0);
    ck_assert_int_eq(posted_runs, 0);
    close(b);
    tu_tr_free(&t);
}
END_TEST

static Suite *conn_life_suite(void) {
    Suite *s = suite_create("conn_life");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_new_bad_fd);
    tcase_add_test(tc, test_socket_options);
    tcase_add_test(tc, test_new_failure_owns_fd_no_callbacks);
    tcase_add_loop_test(tc, test_close_from_callback, 0, 2 * CB_COUNT);
    tcase_add_loop_test(tc, test_close_other_same_batch, 0, 2);
    tcase_add_test(tc, test_loop_free_live_conns);
    tcase_add_test(tc, test_on_close_never_inside_user_call);
    tcase_add_test(tc, test_item19_send_aborted_by_own_high_water);
    tcase_add_test(tc, test_item4_loop_free_on_close_posts_and_stops);
    return s;
}

int main(void) { return tu_main(conn_life_suite()); }
