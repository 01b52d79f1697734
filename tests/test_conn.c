/* Tests for rx_conn over real TCP on 127.0.0.1: bulk transfer, half-close, backpressure marks,
 * resets, sendfile ordering, batching of output, injected short writes/EAGAIN/ENOMEM/ECONNRESET,
 * idle timeouts, and closing from inside every callback. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

#define KiB (1024u)
#define MiB (1024u * 1024u)

static void teardown(void) { rx_sys_reset(); }

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

static void set_buf(int fd, int opt, int bytes) {
    ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof(bytes)), 0);
}

/* A TCP pair whose rx end sends into small kernel buffers, so output queues in rx quickly. */
static void small_pair(int *a, int *b) {
    tu_tcp_pair(a, b);
    set_buf(*a, SO_SNDBUF, 32 * KiB);
    set_buf(*b, SO_RCVBUF, 32 * KiB);
}

static bool fd_closed(int fd) {
    errno = 0;
    return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

/* A heap buffer holding bytes [off, off + n) of the pattern stream. */
static char *pattern_alloc(unsigned long long off, size_t n) {
    char *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    tu_pattern_fill(p, off, n);
    return p;
}

/* Sends bytes [off, off + n) of the pattern stream with one rx_conn_send. */
static int send_pattern(rx_conn *c, unsigned long long off, size_t n) {
    char *p = pattern_alloc(off, n);
    int rc = rx_conn_send(c, p, n);
    free(p);
    return rc;
}

/* An unlinked temp file holding bytes [0, n) of the pattern stream. */
static int pattern_file(size_t n) {
    char path[] = "/tmp/rx-test-conn-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    char *p = pattern_alloc(0, n);
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        ck_assert_int_gt(w, 0);
        done += (size_t)w;
    }
    free(p);
    return fd;
}

/* Everything a connection reported, for asserting order and counts. */
struct tr {
    rx_conn *c;
    int opens, datas, drains, highs, lows, eofs, closes;
    int late;              /* callbacks after on_close, or after `done` was set by the test */
    const char *late_what; /* the last of them */
    bool done;             /* the test (or a callback) asked for the close */
    bool echo;             /* on_data sends back what came in */
    rx_close_reason reason;
    int err;
    unsigned long long close_ms;
    unsigned long long bytes_in, bytes_out; /* counters at on_close */
    size_t in_at_eof, in_at_close;          /* bytes received when on_eof / on_close ran */
    rx_buffer in;                           /* bytes received */
};

static void tr_note(struct tr *t, const char *what) {
    if (t->closes || t->done) {
        t->late++;
        t->late_what = what;
    }
}

static void tr_open(rx_conn *c, void *arg) {
    struct tr *t = arg;
    tr_note(t, "on_open");
    t->opens++;
    t->c = c;
}

static void tr_data(rx_conn *c, rx_buffer *in, void *arg) {
    struct tr *t = arg;
    tr_note(t, "on_data");
    t->datas++;
    ck_assert_uint_gt(rx_buffer_len(in), 0);
    ck_assert_int_eq(rx_buffer_append(&t->in, rx_buffer_peek(in), rx_buffer_len(in)), 0);
    if (t->echo)
        ck_assert_int_eq(rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in)), 0);
    rx_buffer_consume(in, rx_buffer_len(in));
}

static void tr_drain(rx_conn *c, void *arg) {
    (void)c;
    struct tr *t = arg;
    tr_note(t, "on_drain");
    t->drains++;
}

static void tr_high(rx_conn *c, size_t queued, void *arg) {
    (void)c;
    (void)queued;
    struct tr *t = arg;
    tr_note(t, "on_high_water");
    t->highs++;
}

static void tr_low(rx_conn *c, size_t queued, void *arg) {
    (void)c;
    (void)queued;
    struct tr *t = arg;
    tr_note(t, "on_low_water");
    t->lows++;
}

static void tr_eof(rx_conn *c, void *arg) {
    (void)c;
    struct tr *t = arg;
    tr_note(t, "on_eof");
    t->eofs++;
    t->in_at_eof = rx_buffer_len(&t->in);
}

static void tr_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    struct tr *t = arg;
    t->closes++;
    t->reason = reason;
    t->err = err;
    t->close_ms = tu_now_ms();
    t->bytes_in = rx_conn_bytes_in(c);
    t->bytes_out = rx_conn_bytes_out(c);
    t->in_at_close = rx_buffer_len(&t->in);
    t->c = NULL;
}

static void tr_free(struct tr *t) { rx_buffer_free(&t->in); }

static const rx_conn_callbacks tr_cbs = {
    .on_open = tr_open,
    .on_data = tr_data,
    .on_drain = tr_drain,
    .on_high_water = tr_high,
    .on_low_water = tr_low,
    .on_close = tr_close,
};

static bool tr_closed(void *arg) { return ((struct tr *)arg)->closes > 0; }

/* A connection and its raw peer, for the predicates below. */
struct duo {
    struct tr *t;
    tu_peer *p;
    size_t want; /* bytes the peer should see */
};

static bool peer_done(void *arg) { return tu_peer_read(arg); }

static bool peer_has(void *arg) {
    struct duo *d = arg;
    tu_peer_read(d->p);
    return d->p->n >= d->want || d->p->eof || d->p->err;
}

static bool peer_done_and_closed(void *arg) {
    struct duo *d = arg;
    return tu_peer_read(d->p) && d->t->closes > 0;
}

static bool tr_has(void *arg) {
    struct duo *d = arg;
    return rx_buffer_len(&d->t->in) >= d->want || d->t->closes > 0;
}

/* Writes all of buf from the peer, running the loop while the socket is full. */
static void peer_write_all(rx_loop *loop, int fd, const void *buf, size_t n) {
    const char *p = buf;
    unsigned long long deadline = tu_now_ms() + 10000;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        ck_assert_msg(w < 0 && (errno == EAGAIN || errno == EINTR), "peer send: %s",
                      strerror(errno));
        ck_assert_msg(tu_now_ms() < deadline, "peer could not write in 10 s");
        ck_assert_int_ge(rx_loop_run_once(loop, 1), 0);
    }
}

/* ---- basics ---- */

START_TEST(test_echo_counters_addrs) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    tu_tcp_pair(&a, &b);
    struct tr t = {.echo = true};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(t.opens, 0); /* rx_conn_new does not call on_open */
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_OPEN);
    ck_assert_int_eq(rx_conn_fd(c), a);
    ck_assert_ptr_eq(rx_conn_loop(c), loop);
    ck_assert_ptr_eq(rx_conn_arg(c), &t);

    /* Addresses: the conn's peer is the raw socket's local end and vice versa. */
    rx_addr peer, local;
    ck_assert_int_eq(rx_conn_peer_addr(c, &peer), 0);
    ck_assert_int_eq(rx_conn_local_addr(c, &local), 0);
    struct sockaddr_in bl, bp;
    socklen_t len = sizeof(bl);
    ck_assert_int_eq(getsockname(b, (struct sockaddr *)&bl, &len), 0);
    len = sizeof(bp);
    ck_assert_int_eq(getpeername(b, (struct sockaddr *)&bp, &len), 0);
    ck_assert_int_eq(peer.u.sa.sa_family, AF_INET);
    ck_assert_int_eq(rx_addr_port(&peer), ntohs(bl.sin_port));
    ck_assert_int_eq(rx_addr_port(&local), ntohs(bp.sin_port));
    char s1[RX_ADDR_STRLEN], s2[64];
    ck_assert_int_gt(rx_addr_format(&peer, s1, sizeof(s1)), 0);
    snprintf(s2, sizeof(s2), "127.0.0.1:%d", ntohs(bl.sin_port));
    ck_assert_str_eq(s1, s2);

    tu_peer p;
    tu_peer_init(&p, b, false);
    const char msg[] = "hello, reactor";
    peer_write_all(loop, b, msg, sizeof(msg) - 1);
    struct duo d = {&t, &p, sizeof(msg) - 1};
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 2000, 1));
    ck_assert_uint_eq(p.n, sizeof(msg) - 1);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got), msg, sizeof(msg) - 1), 0);
    ck_assert_uint_eq(rx_conn_bytes_in(c), sizeof(msg) - 1);
    ck_assert_uint_eq(rx_conn_bytes_out(c), sizeof(msg) - 1);

    rx_conn_set_arg(c, &t); /* same arg; just exercise it */
    ck_assert_ptr_eq(rx_conn_arg(c), &t);

    /* The peer closes: on_close(PEER, 0) once, with the counters intact. */
    close(b);
    p.fd = -1;
    ck_assert(tu_run_until_fn(loop, tr_closed, &t, 2000, 5));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_PEER);
    ck_assert_int_eq(t.err, 0);
    ck_assert_uint_eq(t.bytes_in, sizeof(msg) - 1);
    ck_assert_uint_eq(t.bytes_out, sizeof(msg) - 1);
    tu_run_for(loop, 20);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_msg(t.late == 0, "%d callback(s) after close, last %s", t.late, t.late_what);
    tu_peer_free(&p);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_new_bad_fd) {
    rx_loop *loop = rx_loop_new();
    struct tr t = {0};
    errno = 0;
    ck_assert_ptr_null(rx_conn_new(loop, -1, NULL, &tr_cbs, &t));
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
static int ctl_fail_fd = -1;
static int ctl_calls;
static int failing_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    if (fd == ctl_fail_fd) {
        ctl_calls++;
        if (op == EPOLL_CTL_ADD) {
            errno = ENOMEM;
            return -1;
        }
    }
    return epoll_ctl(epfd, op, fd, ev);
}

START_TEST(test_new_failure_owns_fd_no_callbacks) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    tu_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    struct tr t1 = {0}, t2 = {0};
    /* Out of memory for the connection itself. */
    rx_sys.calloc = tu_fail_calloc;
    errno = 0;
    ck_assert_ptr_null(rx_conn_new(loop, a1, NULL, &tr_cbs, &t1));
    ck_assert_int_eq(errno, ENOMEM);
    rx_sys_reset();
    ck_assert(fd_closed(a1));
    /* Registration with epoll fails. */
    ctl_fail_fd = a2;
    rx_sys.epoll_ctl = failing_epoll_ctl;
    errno = 0;
    ck_assert_ptr_null(rx_conn_new(loop, a2, NULL, &tr_cbs, &t2));
    int err = errno;
    rx_sys_reset();
    ck_assert_int_eq(err, ENOMEM);
    ck_assert_int_ge(ctl_calls, 1);
    ck_assert(fd_closed(a2));
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

/* ---- 64 MiB both ways: rx server echoing, rx_connect client checking every byte ---- */

#define BIG (64ull * MiB)

static struct bulk {
    unsigned long long sent, recvd;
    long long bad;
    int closes_c, closes_s;
    rx_close_reason reason_c, reason_s;
    unsigned long long s_in, s_out, c_in, c_out;
    int s_highs, s_lows;
} bk;

static char bulk_chunk[64 * KiB];

static void bulk_pump(rx_conn *c) {
    while (bk.sent < BIG && rx_conn_queued(c) < MiB) {
        size_t n = (size_t)min_sz(sizeof(bulk_chunk), (size_t)(BIG - bk.sent));
        tu_pattern_fill(bulk_chunk, bk.sent, n);
        ck_assert_int_eq(rx_conn_send(c, bulk_chunk, n), 0);
        bk.sent += n;
    }
}

static void bulk_c_open(rx_conn *c, void *arg) {
    (void)arg;
    bulk_pump(c);
}
static void bulk_c_drain(rx_conn *c, void *arg) {
    (void)arg;
    bulk_pump(c);
}
static void bulk_c_low(rx_conn *c, size_t q, void *arg) {
    (void)arg;
    (void)q;
    bulk_pump(c);
}
static void bulk_c_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    size_t n = rx_buffer_len(in);
    long long bad = tu_pattern_check(rx_buffer_peek(in), bk.recvd, n);
    if (bad >= 0 && bk.bad < 0)
        bk.bad = (long long)bk.recvd + bad;
    bk.recvd += n;
    rx_buffer_consume(in, n);
    if (bk.recvd == BIG)
        rx_conn_close(c);
}
static void bulk_c_close(rx_conn *c, rx_close_reason r, int err, void *arg) {
    (void)arg;
    (void)err;
    bk.closes_c++;
    bk.reason_c = r;
    bk.c_in = rx_conn_bytes_in(c);
    bk.c_out = rx_conn_bytes_out(c);
}

static void bulk_s_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    ck_assert_int_eq(rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in)), 0);
    rx_buffer_consume(in, rx_buffer_len(in));
}
static void bulk_s_high(rx_conn *c, size_t q, void *arg) {
    (void)arg;
    (void)q;
    bk.s_highs++;
    rx_conn_pause_read(c);
}
static void bulk_s_low(rx_conn *c, size_t q, void *arg) {
    (void)arg;
    (void)q;
    bk.s_lows++;
    rx_conn_resume_read(c);
}
static void bulk_s_close(rx_conn *c, rx_close_reason r, int err, void *arg) {
    (void)arg;
    (void)err;
    bk.closes_s++;
    bk.reason_s = r;
    bk.s_in = rx_conn_bytes_in(c);
    bk.s_out = rx_conn_bytes_out(c);
}

static bool bulk_done(void *arg) {
    (void)arg;
    return bk.closes_c > 0 && bk.closes_s > 0;
}

START_TEST(test_64mib_both_ways) {
    memset(&bk, 0, sizeof(bk));
    bk.bad = -1;
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks scbs = {
        .on_data = bulk_s_data,
        .on_high_water = bulk_s_high,
        .on_low_water = bulk_s_low,
        .on_close = bulk_s_close,
    };
    static const rx_conn_callbacks ccbs = {
        .on_open = bulk_c_open,
        .on_data = bulk_c_data,
        .on_drain = bulk_c_drain,
        .on_low_water = bulk_c_low,
        .on_close = bulk_c_close,
    };
    /* _i: the technique switches of rx_conn_opts, each must move the same bytes. */
    rx_conn_opts copts = {
        .edge_triggered = _i == 1, .own_buffers = _i == 2, .always_queue = _i == 3};
    rx_server_opts so = {.listen = "127.0.0.1:0", .cbs = &scbs, .conn = copts};
    rx_server *s = rx_server_new(loop, &so);
    ck_assert_ptr_nonnull(s);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", rx_addr_port(rx_server_addr(s)));
    rx_connect_opts co = {.addr = addr, .timeout_ms = 2000, .cbs = &ccbs, .conn = copts};
    rx_conn *c = rx_connect(loop, &co);
    ck_assert_ptr_nonnull(c);
    unsigned long long t0 = tu_now_ms();
    ck_assert_msg(tu_run_until_fn(loop, bulk_done, NULL, 100000, 10),
                  "64 MiB echo did not finish: sent %llu, received %llu", bk.sent, bk.recvd);
    unsigned long long ms = tu_now_ms() - t0;
    ck_assert_int_eq(bk.bad, -1);
    ck_assert_uint_eq(bk.sent, BIG);
    ck_assert_uint_eq(bk.recvd, BIG);
    ck_assert_int_eq(bk.closes_c, 1);
    ck_assert_int_eq(bk.closes_s, 1);
    ck_assert_int_eq(bk.reason_c, RX_CLOSE_LOCAL);
    ck_assert_int_eq(bk.reason_s, RX_CLOSE_PEER);
    ck_assert_uint_eq(bk.s_in, BIG);
    ck_assert_uint_eq(bk.s_out, BIG);
    ck_assert_uint_eq(bk.c_in, BIG);
    ck_assert_uint_eq(bk.c_out, BIG);
    fprintf(stderr, "64 MiB each way in %llu ms (server high/low water %d/%d)\n", ms, bk.s_highs,
            bk.s_lows);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* ---- half-close ---- */

START_TEST(test_peer_half_close_delivers_all) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    tu_tcp_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t); /* no on_eof: closes with PEER */
    ck_assert_ptr_nonnull(c);
    const size_t n = MiB + 123;
    char *data = pattern_alloc(0, n);
    peer_write_all(loop, b, data, n);
    ck_assert_int_eq(shutdown(b, SHUT_WR), 0);
    ck_assert(tu_run_until_fn(loop, tr_closed, &t, 5000, 5));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_PEER);
    ck_assert_int_eq(t.err, 0);
    ck_assert_uint_eq(t.in_at_close, n); /* every byte before on_close */
    ck_assert_int_eq(tu_pattern_check(rx_buffer_peek(&t.in), 0, n), -1);
    ck_assert_uint_eq(t.bytes_in, n);
    ck_assert_msg(t.late == 0, "%d callback(s) after close, last %s", t.late, t.late_what);
    /* The peer sees the connection end. */
    tu_peer p;
    tu_peer_init(&p, b, false);
    ck_assert(tu_run_until_fn(loop, peer_done, &p, 2000, 1));
    ck_assert(p.eof);
    ck_assert_uint_eq(p.n, 0);
    tu_peer_free(&p);
    free(data);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_local_shutdown_keeps_reading) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    /* Queued output first: the write side shuts only once it is written. */
    const size_t out = 2 * MiB;
    ck_assert_int_eq(send_pattern(c, 0, out), 0);
    ck_assert_uint_gt(rx_conn_queued(c), 0);
    rx_conn_shutdown(c);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_HALF_CLOSED);
    ck_assert_int_eq(rx_conn_send(c, "x", 1), -EPIPE);

    tu_peer p;
    tu_peer_init(&p, b, true);
    ck_assert(tu_run_until_fn(loop, peer_done, &p, 5000, 1));
    ck_assert(p.eof);
    ck_assert_int_eq(p.err, 0);
    ck_assert_uint_eq(p.n, out);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 0);

    /* The peer read EOF; now it sends more, and the half-closed connection still gets it. */
    const size_t more = 300 * KiB;
    char *data = pattern_alloc(0, more);
    peer_write_all(loop, b, data, more);
    struct duo d = {&t, &p, more};
    ck_assert(tu_run_until_fn(loop, tr_has, &d, 5000, 1));
    ck_assert_int_eq(t.closes, 0);
    ck_assert_uint_eq(rx_buffer_len(&t.in), more);
    ck_assert_int_eq(tu_pattern_check(rx_buffer_peek(&t.in), 0, more), -1);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_HALF_CLOSED);

    /* Then the peer ends too: closed with PEER. */
    ck_assert_int_eq(shutdown(b, SHUT_WR), 0);
    ck_assert(tu_run_until_fn(loop, tr_closed, &t, 2000, 5));
    ck_assert_int_eq(t.reason, RX_CLOSE_PEER);
    ck_assert_int_eq(t.err, 0);
    ck_assert_uint_eq(t.bytes_out, out);
    ck_assert_uint_eq(t.bytes_in, more);
    ck_assert_msg(t.late == 0, "%d callback(s) after close, last %s", t.late, t.late_what);
    free(data);
    tu_peer_free(&p);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* on_eof set: the connection stays writable after the peer's EOF and the owner replies. */
static void eof_reply(rx_conn *c, void *arg) {
    struct tr *t = arg;
    tr_eof(c, arg);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_HALF_CLOSED);
    ck_assert_int_eq(rx_conn_send(c, "response:", 9), 0);
    ck_assert_int_eq(send_pattern(c, 9, MiB), 0); /* more than the socket takes at once */
    rx_conn_close(c);
    t->done = true;
}

START_TEST(test_on_eof_reply_then_close) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {
        .on_data = tr_data,
        .on_drain = tr_drain,
        .on_eof = eof_reply,
        .on_close = tr_close,
    };
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, &t);
    ck_assert_ptr_nonnull(c);
    peer_write_all(loop, b, "request", 7);
    ck_assert_int_eq(shutdown(b, SHUT_WR), 0);
    tu_peer p;
    tu_peer_init(&p, b, false);
    struct duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, peer_done_and_closed, &d, 5000, 1));
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
    ck_assert_msg(t.late == 0, "%d callback(s) after close, last %s", t.late, t.late_what);
    tu_peer_free(&p);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- backpressure: a peer that does not read ---- */

#define NR_TOTAL (16ull * MiB)
#define NR_HIGH (256u * KiB)
#define NR_CHUNK (64u * KiB)

static struct nr {
    unsigned long long sent;
    bool above;
    int highs, lows, drains, closes;
    size_t max_queued, queued_at_high, queued_at_low;
} nr;

static void nr_pump(rx_conn *c) {
    static char chunk[NR_CHUNK];
    while (!nr.above && nr.sent < NR_TOTAL) {
        size_t n = (size_t)min_sz(NR_CHUNK, (size_t)(NR_TOTAL - nr.sent));
        tu_pattern_fill(chunk, nr.sent, n);
        ck_assert_int_eq(rx_conn_send(c, chunk, n), 0);
        nr.sent += n;
        size_t q = rx_conn_queued(c);
        if (q > nr.max_queued)
            nr.max_queued = q;
    }
}
static void nr_high(rx_conn *c, size_t q, void *arg) {
    (void)arg;
    nr.highs++;
    nr.above = true;
    nr.queued_at_high = q;
    ck_assert_uint_eq(q, rx_conn_queued(c));
}
static void nr_low(rx_conn *c, size_t q, void *arg) {
    (void)arg;
    nr.lows++;
    nr.above = false;
    nr.queued_at_low = q;
    nr_pump(c);
}
static void nr_drain(rx_conn *c, void *arg) {
    (void)arg;
    nr.drains++;
    nr_pump(c);
}
static void nr_close(rx_conn *c, rx_close_reason r, int e, void *arg) {
    (void)c;
    (void)r;
    (void)e;
    (void)arg;
    nr.closes++;
}

static bool nr_received(void *arg) {
    tu_peer *p = arg;
    tu_peer_read(p);
    return p->n >= NR_TOTAL || p->eof || p->err;
}

START_TEST(test_never_reading_peer_bounded) {
    memset(&nr, 0, sizeof(nr));
    static const rx_conn_callbacks cbs = {
        .on_drain = nr_drain,
        .on_high_water = nr_high,
        .on_low_water = nr_low,
        .on_close = nr_close,
    };
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    rx_conn_opts o = {.high_water = NR_HIGH};
    rx_conn *c = rx_conn_new(loop, a, &o, &cbs, NULL);
    ck_assert_ptr_nonnull(c);
    nr_pump(c);
    tu_run_for(loop, 200); /* the peer reads nothing meanwhile */
    ck_assert_int_eq(nr.highs, 1);
    ck_assert(nr.above);
    ck_assert_uint_gt(nr.queued_at_high, NR_HIGH);
    ck_assert_uint_lt(nr.sent, NR_TOTAL / 2);
    ck_assert_uint_le(rx_conn_queued(c), NR_HIGH + NR_CHUNK);
    ck_assert_uint_le(nr.max_queued, NR_HIGH + NR_CHUNK);
    ck_assert_int_eq(nr.lows, 0);

    /* Now the peer reads: low water, more sends, everything intact. */
    tu_peer p;
    tu_peer_init(&p, b, true);
    ck_assert(tu_run_until_fn(loop, nr_received, &p, 20000, 0));
    ck_assert_uint_eq(p.n, NR_TOTAL);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(p.err, 0);
    ck_assert_int_ge(nr.lows, 1);
    ck_assert_uint_le(nr.queued_at_low, NR_HIGH / 4); /* default low water: high / 4 */
    ck_assert_uint_le(nr.max_queued, NR_HIGH + NR_CHUNK);
    ck_assert_int_eq(nr.closes, 0);
    ck_assert_uint_eq(rx_conn_bytes_out(c), NR_TOTAL);
    tu_peer_free(&p);
    rx_loop_free(loop);
    ck_assert_int_eq(nr.closes, 1);
}
END_TEST

/* ---- the peer resets while MiBs are queued ---- */

START_TEST(test_peer_reset_mid_send) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(send_pattern(c, 0, 8 * MiB), 0);
    tu_run_for(loop, 20);
    ck_assert_uint_gt(rx_conn_queued(c), MiB);
    /* Read a little, then reset. */
    char buf[4096];
    ck_assert_int_gt(read(b, buf, sizeof(buf)), 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    ck_assert_int_eq(setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(b);
    ck_assert(tu_run_until_fn(loop, tr_closed, &t, 3000, 5));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_RESET);
    ck_assert_msg(t.err == -ECONNRESET || t.err == -EPIPE, "err %d", t.err);
    tu_run_for(loop, 20);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_msg(t.late == 0, "%d callback(s) after close, last %s", t.late, t.late_what);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- sendfile ordering ---- */

START_TEST(test_sendfile_order) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    /* The file holds the whole stream; pieces of it go out as buffered bytes and as file
     * ranges, so the peer must read the stream in order. */
    const size_t total = 1101 * KiB + 50 * KiB;
    int file = pattern_file(total);
    int f1 = dup(file), f2 = dup(file), f3 = dup(file), f4 = dup(file);
    ck_assert_int_ge(f4, 0);
    ck_assert_int_eq(send_pattern(c, 0, 300 * KiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f1, 300 * KiB, 500 * KiB), 0);
    ck_assert_int_eq(send_pattern(c, 800 * KiB, 200 * KiB), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f2, 1000 * KiB, 100 * KiB), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f3, 1100 * KiB, KiB), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f4, 0, 0), 0); /* empty range: nothing, fd closed */
    ck_assert(fd_closed(f4));
    ck_assert_int_eq(send_pattern(c, 1101 * KiB, 50 * KiB), 0);
    ck_assert_uint_le(rx_conn_queued(c), total);
    rx_conn_close(c);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);

    tu_peer p;
    tu_peer_init(&p, b, true);
    struct duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, peer_done_and_closed, &d, 10000, 1));
    ck_assert(p.eof);
    ck_assert_uint_eq(p.n, total);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert_uint_eq(t.bytes_out, total);
    /* The connection closed the file descriptors it was given. */
    ck_assert(fd_closed(f1));
    ck_assert(fd_closed(f2));
    ck_assert(fd_closed(f3));
    close(file);
    tu_peer_free(&p);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* Sendfile from inside on_data goes out after the output appended before it. */
static int sf_file = -1;
static void sf_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_buffer_consume(in, rx_buffer_len(in));
    char *head = pattern_alloc(0, 1000);
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), head, 1000), 0);
    free(head);
    ck_assert_int_eq(rx_conn_sendfile(c, sf_file, 1000, 200 * KiB), 0);
    sf_file = -1;
    ck_assert_int_eq(send_pattern(c, 1000 + 200 * KiB, 10), 0);
}

START_TEST(test_sendfile_in_on_data) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = sf_data, .on_close = tr_close};
    int a, b;
    tu_tcp_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, &t);
    ck_assert_ptr_nonnull(c);
    int file = pattern_file(300 * KiB);
    sf_file = dup(file);
    peer_write_all(loop, b, "go", 2);
    tu_peer p;
    tu_peer_init(&p, b, true);
    struct duo d = {&t, &p, 1010 + 200 * KiB};
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 5000, 1));
    ck_assert_uint_eq(p.n, 1010 + 200 * KiB);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_uint_eq(rx_conn_queued(c), 0);
    close(file);
    tu_peer_free(&p);
    rx_loop_free(loop);
    ck_assert_int_eq(t.closes, 1);
    tr_free(&t);
}
END_TEST

/* ---- sendv ---- */

START_TEST(test_sendv_three_iovecs) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    const size_t plen = 200 * KiB;
    char *payload = pattern_alloc(0, plen);
    struct iovec iov[3] = {
        {.iov_base = "HDR 1\r\n", .iov_len = 7},
        {.iov_base = payload, .iov_len = plen},
        {.iov_base = "\r\nEND", .iov_len = 5},
    };
    ck_assert_int_eq(rx_conn_sendv(c, iov, 3), 0);
    /* A second message behind the first (queued by now: small buffers). */
    struct iovec iov2[3] = {
        {.iov_base = "A", .iov_len = 1},
        {.iov_base = "", .iov_len = 0},
        {.iov_base = "BC", .iov_len = 2},
    };
    ck_assert_int_eq(rx_conn_sendv(c, iov2, 3), 0);
    const size_t total = 7 + plen + 5 + 3;
    tu_peer p;
    tu_peer_init(&p, b, false);
    struct duo d = {&t, &p, total};
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 5000, 1));
    ck_assert_uint_eq(p.n, total);
    const char *got = rx_buffer_peek(&p.got);
    ck_assert_int_eq(memcmp(got, "HDR 1\r\n", 7), 0);
    ck_assert_int_eq(memcmp(got + 7, payload, plen), 0);
    ck_assert_int_eq(memcmp(got + 7 + plen, "\r\nENDABC", 8), 0);
    ck_assert_uint_eq(rx_conn_bytes_out(c), total);
    free(payload);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tr_free(&t);
}
END_TEST

/* ---- -EPIPE after close / shutdown ---- */

static void epipe_data(rx_conn *c, rx_buffer *in, void *arg) {
    struct tr *t = arg;
    tr_data(c, in, arg);
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
    small_pair(&a2, &b2);
    tu_tcp_pair(&a3, &b3);
    struct tr t1 = {0}, t2 = {0}, t3 = {0};

    /* Shut write side: every kind of send is refused; sendfile still closes its fd. */
    rx_conn *c1 = rx_conn_new(loop, a1, NULL, &tr_cbs, &t1);
    rx_conn_shutdown(c1);
    ck_assert_int_eq(rx_conn_send(c1, "x", 1), -EPIPE);
    struct iovec iov = {.iov_base = "y", .iov_len = 1};
    ck_assert_int_eq(rx_conn_sendv(c1, &iov, 1), -EPIPE);
    int file = pattern_file(100);
    int f = dup(file);
    ck_assert_int_eq(rx_conn_sendfile(c1, f, 0, 100), -EPIPE);
    ck_assert(fd_closed(f));
    close(file);

    /* Closing with output queued: CLOSING, and sends are refused. */
    rx_conn *c2 = rx_conn_new(loop, a2, NULL, &tr_cbs, &t2);
    ck_assert_int_eq(send_pattern(c2, 0, 4 * MiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c2), 0);
    rx_conn_close(c2);
    ck_assert_int_eq(rx_conn_get_state(c2), RX_CONN_CLOSING);
    ck_assert_int_eq(rx_conn_send(c2, "x", 1), -EPIPE);
    ck_assert_int_eq(t2.closes, 0);

    /* Closed inside a callback: the memory lives until the end of the iteration. The peer never
     * ends its side: the close deadline ends the linger. */
    static const rx_conn_callbacks cbs3 = {.on_data = epipe_data, .on_close = tr_close};
    rx_conn *c3 = rx_conn_new(loop, a3, &(rx_conn_opts){.close_timeout_ms = 100}, &cbs3, &t3);
    ck_assert_ptr_nonnull(c3);
    peer_write_all(loop, b3, "z", 1);
    ck_assert(tu_run_until_fn(loop, tr_closed, &t3, 2000, 5));
    ck_assert_int_eq(t3.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t3.datas, 1);

    /* The peer of the shut connection sees EOF at once. */
    tu_peer p1;
    tu_peer_init(&p1, b1, false);
    ck_assert(tu_run_until_fn(loop, peer_done, &p1, 2000, 1));
    ck_assert(p1.eof);
    ck_assert_uint_eq(p1.n, 0);
    ck_assert_int_eq(t1.closes, 0);

    tu_peer_free(&p1);
    close(b2);
    close(b3);
    rx_loop_free(loop);
    ck_assert_int_eq(t1.closes, 1);
    ck_assert_int_eq(t2.closes, 1);
    ck_assert_int_eq(t3.closes, 1);
    tr_free(&t1);
    tr_free(&t2);
    tr_free(&t3);
}
END_TEST

/* ---- graceful close and abort ---- */

START_TEST(test_close_writes_queue_then_closes) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_int_eq(send_pattern(c, 0, 4 * MiB), 0);
    rx_conn_close(c);
    t.done = true;
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    rx_conn_close(c); /* twice: no effect */
    tu_peer p;
    tu_peer_init(&p, b, true);
    struct duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, peer_done_and_closed, &d, 10000, 1));
    ck_assert_msg(p.eof, "peer: %llu of %u bytes, then %s", p.n, 4 * MiB, strerror(p.err));
    ck_assert_uint_eq(p.n, 4 * MiB);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert_msg(t.late == 0, "%d callback(s) after close, last %s", t.late, t.late_what);
    tu_peer_free(&p);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* The peer keeps sending while the connection is closing: nothing more reaches on_data, and
 * "write what is queued" still holds: every queued byte arrives, then the end of stream. */
START_TEST(test_close_with_unread_input_delivers_queue) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    /* Only data and close: this test is about the bytes, not about late water marks. */
    static const rx_conn_callbacks cbs = {.on_data = tr_data, .on_close = tr_close};
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, &t);
    ck_assert_int_eq(send_pattern(c, 0, 4 * MiB), 0);
    rx_conn_close(c);
    t.done = true;
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    peer_write_all(loop, b, "ignored", 7);
    tu_peer p;
    tu_peer_init(&p, b, true);
    struct duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, peer_done_and_closed, &d, 10000, 1));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t.datas, 0);
    ck_assert_msg(t.late == 0, "%d callback(s) after close, last %s", t.late, t.late_what);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_msg(p.eof && p.n == 4 * MiB,
                  "graceful close lost output: peer got %llu of %u bytes, then %s", p.n, 4 * MiB,
                  p.eof ? "EOF" : strerror(p.err));
    tu_peer_free(&p);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_abort_drops_queue) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_int_eq(send_pattern(c, 0, 4 * MiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c), MiB);
    rx_conn_abort(c); /* outside the loop: on_close runs from the loop, never inside the call */
    ck_assert_int_eq(t.closes, 0);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSED);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    tu_peer p;
    tu_peer_init(&p, b, true);
    ck_assert(tu_run_until_fn(loop, peer_done, &p, 2000, 1));
    ck_assert_int_eq(p.err, ECONNRESET);
    ck_assert_uint_lt(p.n, 4 * MiB);
    ck_assert_int_eq(p.bad, -1);
    tu_run_for(loop, 20);
    ck_assert_int_eq(t.closes, 1);
    tu_peer_free(&p);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- pause / resume ---- */

START_TEST(test_pause_resume_read) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    tu_tcp_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    rx_conn_pause_read(c);
    rx_conn_pause_read(c); /* twice is fine */
    peer_write_all(loop, b, "paused data", 11);
    tu_run_for(loop, 100);
    ck_assert_int_eq(t.datas, 0);
    ck_assert_uint_eq(rx_conn_bytes_in(c), 0);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_OPEN);
    rx_conn_resume_read(c);
    struct duo d = {&t, NULL, 11};
    ck_assert(tu_run_until_fn(loop, tr_has, &d, 2000, 5));
    ck_assert_uint_eq(rx_buffer_len(&t.in), 11);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in), "paused data", 11), 0);
    /* Paused again, a peer EOF is not noticed either; resumed, it is. */
    rx_conn_pause_read(c);
    shutdown(b, SHUT_WR);
    tu_run_for(loop, 50);
    ck_assert_int_eq(t.closes, 0);
    rx_conn_resume_read(c);
    ck_assert(tu_run_until_fn(loop, tr_closed, &t, 2000, 5));
    ck_assert_int_eq(t.reason, RX_CLOSE_PEER);
    close(b);
    tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* Input left unconsumed when reading was paused is delivered again after resume_read, without
 * waiting for more bytes from the peer (there is no other way to reach it). */
static struct {
    int lines;
    char last[16];
    bool pause;
} rl;

static void one_line_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    size_t nl = rx_buffer_find_byte(in, 0, '\n');
    if (nl == RX_BUFFER_NPOS)
        return;
    size_t n = nl + 1 < sizeof(rl.last) ? nl + 1 : sizeof(rl.last) - 1;
    memcpy(rl.last, rx_buffer_peek(in), n);
    rl.last[n] = '\0';
    rl.lines++;
    rx_buffer_consume(in, nl + 1);
    if (rl.pause)
        rx_conn_pause_read(c); /* one request at a time */
}

static bool two_lines(void *arg) {
    (void)arg;
    return rl.lines >= 2;
}

START_TEST(test_resume_delivers_buffered_input) {
    memset(&rl, 0, sizeof(rl));
    rl.pause = true;
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = one_line_data};
    int a, b;
    tu_tcp_pair(&a, &b);
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, NULL);
    ck_assert_ptr_nonnull(c);
    peer_write_all(loop, b, "one\ntwo\n", 8); /* two pipelined requests */
    tu_run_for(loop, 50);
    ck_assert_int_eq(rl.lines, 1);
    ck_assert_str_eq(rl.last, "one\n");
    rl.pause = false;
    rx_conn_resume_read(c);
    ck_assert_msg(tu_run_until_fn(loop, two_lines, NULL, 500, 5),
                  "the second request stayed in the input buffer after resume_read");
    ck_assert_str_eq(rl.last, "two\n");
    close(b);
    rx_loop_free(loop);
}
END_TEST

/* EPOLLOUT is watched only while output waits: steady small echoes make no epoll_ctl call; a
 * queued send adds writability once and removes it once drained; on_drain runs once, and the
 * drained output buffer is released. */
static int ctl_count_fd = -1, ctl_count;
static int counting_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    if (fd == ctl_count_fd)
        ctl_count++;
    return epoll_ctl(epfd, op, fd, ev);
}

START_TEST(test_epollout_only_while_queued) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {.echo = true};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    ctl_count_fd = a;
    ctl_count = 0;
    rx_sys.epoll_ctl = counting_epoll_ctl;
    tu_peer p;
    tu_peer_init(&p, b, false);
    struct duo d = {&t, &p, 0};
    for (int i = 0; i < 50; i++) {
        peer_write_all(loop, b, "m", 1);
        d.want = (size_t)i + 1;
        ck_assert(tu_run_until_fn(loop, peer_has, &d, 1000, 1));
    }
    ck_assert_uint_eq(p.n, 50);
    ck_assert_int_eq(ctl_count, 0);
    ck_assert_int_eq(t.drains, 0); /* nothing had to wait */
    /* A send the socket cannot take at once. */
    t.echo = false;
    rx_buffer_free(&p.got);
    tu_peer_init(&p, b, true); /* same socket, now checking the pattern */
    ck_assert_int_eq(send_pattern(c, 0, 2 * MiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c), 0);
    ck_assert_int_eq(ctl_count, 1);
    d.want = 2 * MiB;
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 5000, 1));
    tu_run_for(loop, 20);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_uint_eq(rx_conn_queued(c), 0);
    ck_assert_int_eq(ctl_count, 2);
    ck_assert_int_eq(t.drains, 1);
    ck_assert_uint_eq(rx_conn_output(c)->cap, 0);
    rx_sys_reset();
    tu_peer_free(&p);
    rx_loop_free(loop);
    tr_free(&t);
}
END_TEST

/* ---- input left in the buffer stays for the next call ---- */

static void line_data(rx_conn *c, rx_buffer *in, void *arg) {
    struct tr *t = arg;
    (void)c;
    t->datas++;
    size_t nl = rx_buffer_find_byte(in, 0, '\n');
    if (nl == RX_BUFFER_NPOS)
        return; /* incomplete: keep it */
    ck_assert_int_eq(rx_buffer_append(&t->in, rx_buffer_peek(in), nl + 1), 0);
    rx_buffer_consume(in, nl + 1);
}

START_TEST(test_partial_input_kept) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = line_data, .on_close = tr_close};
    int a, b;
    tu_tcp_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, &t);
    ck_assert_ptr_nonnull(c);
    peer_write_all(loop, b, "abc", 3);
    tu_run_for(loop, 30);
    ck_assert_int_ge(t.datas, 1);
    ck_assert_uint_eq(rx_buffer_len(&t.in), 0);
    peer_write_all(loop, b, "def\nxy", 6);
    struct duo d = {&t, NULL, 7};
    ck_assert(tu_run_until_fn(loop, tr_has, &d, 2000, 5));
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in), "abcdef\n", 7), 0);
    /* A long line, far beyond one read: kept and grown until its end arrives. */
    const size_t n = 300 * KiB;
    char *line = pattern_alloc(0, n);
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    line[n - 1] = '\n';
    peer_write_all(loop, b, line, n);
    d.want = 7 + 2 + n;
    ck_assert(tu_run_until_fn(loop, tr_has, &d, 5000, 1));
    ck_assert_uint_eq(rx_buffer_len(&t.in), 7 + 2 + n);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in) + 7, "xy", 2), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in) + 9, line, n), 0);
    ck_assert_uint_eq(rx_conn_bytes_in(c), 9 + n);
    free(line);
    close(b);
    rx_loop_free(loop);
    tr_free(&t);
}
END_TEST

/* ---- output appended in on_data goes out in one write ---- */

static int cnt_fd = -1, cnt_calls;
static ssize_t counting_send(int fd, const void *buf, size_t n, int flags) {
    if (fd == cnt_fd)
        cnt_calls++;
    return send(fd, buf, n, flags);
}
static ssize_t counting_sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (fd == cnt_fd)
        cnt_calls++;
    return sendmsg(fd, msg, flags);
}

static int batch_calls_in_cb = -1;
static void batch_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_buffer_consume(in, rx_buffer_len(in));
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "a", 1), 0);
    ck_assert_int_eq(rx_conn_send(c, "bb", 2), 0);
    struct iovec iov[2] = {{.iov_base = "ccc", .iov_len = 3}, {.iov_base = "dddd", .iov_len = 4}};
    ck_assert_int_eq(rx_conn_sendv(c, iov, 2), 0);
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "e", 1), 0);
    batch_calls_in_cb = cnt_calls;
}

START_TEST(test_output_in_on_data_one_write) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = batch_data};
    int a, b;
    tu_tcp_pair(&a, &b);
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, NULL);
    ck_assert_ptr_nonnull(c);
    cnt_fd = a;
    cnt_calls = 0;
    rx_sys.send = counting_send;
    rx_sys.sendmsg = counting_sendmsg;
    peer_write_all(loop, b, "?", 1);
    tu_peer p;
    tu_peer_init(&p, b, false);
    struct duo d = {NULL, &p, 11};
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 2000, 1));
    ck_assert_int_eq(batch_calls_in_cb, 0); /* nothing written inside the callback */
    ck_assert_int_eq(cnt_calls, 1);         /* one write after it */
    ck_assert_uint_eq(p.n, 11);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got), "abbcccdddde", 11), 0);
    rx_sys_reset();
    /* rx_conn_flush sends what was appended outside on_data. */
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "flushed", 7), 0);
    ck_assert_int_eq(rx_conn_flush(c), 0);
    d.want = 18;
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 2000, 1));
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got) + 11, "flushed", 7), 0);
    tu_peer_free(&p);
    rx_loop_free(loop);
}
END_TEST

/* ---- injected short writes, EAGAIN and EINTR ---- */

static int inj_fd = -1;
static unsigned inj_calls;

/* How many bytes call k may write, or -1 with errno for an injected failure. */
static long inj_limit(void) {
    unsigned k = inj_calls++;
    if (k % 4 == 1) {
        errno = EAGAIN;
        return -1;
    }
    if (k % 7 == 3) {
        errno = EINTR;
        return -1;
    }
    return 1 + (long)((k * 7919u) % 3000u);
}

static ssize_t short_send(int fd, const void *buf, size_t n, int flags) {
    if (fd != inj_fd)
        return send(fd, buf, n, flags);
    long lim = inj_limit();
    if (lim < 0)
        return -1;
    return send(fd, buf, min_sz(n, (size_t)lim), flags);
}

static ssize_t short_sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (fd != inj_fd)
        return sendmsg(fd, msg, flags);
    long lim = inj_limit();
    if (lim < 0)
        return -1;
    struct iovec iov[64];
    size_t cnt = 0, total = 0;
    for (size_t i = 0; i < msg->msg_iovlen && cnt < 64 && total < (size_t)lim; i++) {
        size_t take = min_sz(msg->msg_iov[i].iov_len, (size_t)lim - total);
        iov[cnt++] = (struct iovec){.iov_base = msg->msg_iov[i].iov_base, .iov_len = take};
        total += take;
    }
    struct msghdr m = *msg;
    m.msg_iov = iov;
    m.msg_iovlen = cnt;
    return sendmsg(fd, &m, flags);
}

static ssize_t short_sendfile(int out, int in, off_t *off, size_t n) {
    if (out != inj_fd)
        return sendfile(out, in, off, n);
    long lim = inj_limit();
    if (lim < 0)
        return -1;
    return sendfile(out, in, off, min_sz(n, (size_t)lim));
}

START_TEST(test_injected_short_writes) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    tu_tcp_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    const size_t total = 2 * MiB + 777;
    int file = pattern_file(total);
    inj_fd = a;
    inj_calls = 0;
    rx_sys.send = short_send;
    rx_sys.sendmsg = short_sendmsg;
    rx_sys.sendfile = short_sendfile;
    /* Pieces of every kind, of uneven sizes, each starting where the previous one ended. */
    size_t off = 0;
    unsigned k = 0;
    while (off < total) {
        size_t n = min_sz(total - off, 1 + (k * 104729u) % (96 * KiB));
        switch (k++ % 3) {
        case 0:
            ck_assert_int_eq(send_pattern(c, off, n), 0);
            break;
        case 1: {
            char *p = pattern_alloc(off, n);
            size_t h = n / 3, m = n / 2;
            struct iovec iov[3] = {{p, h}, {p + h, m - h}, {p + m, n - m}};
            ck_assert_int_eq(rx_conn_sendv(c, iov, 3), 0);
            free(p);
            break;
        }
        default:
            ck_assert_int_eq(rx_conn_sendfile(c, dup(file), (off_t)off, n), 0);
            break;
        }
        off += n;
    }
    tu_peer p;
    tu_peer_init(&p, b, true);
    struct duo d = {&t, &p, total};
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 20000, 1));
    ck_assert_uint_eq(p.n, total);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 0);
    ck_assert_uint_eq(rx_conn_bytes_out(c), total);
    ck_assert_uint_eq(rx_conn_queued(c), 0);
    ck_assert_uint_gt(inj_calls, 700);
    rx_sys_reset();
    close(file);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tr_free(&t);
}
END_TEST

/* ---- ENOMEM ---- */

static void fail_allocs(void) {
    rx_sys.malloc = tu_fail_malloc;
    rx_sys.realloc = tu_fail_realloc;
    rx_sys.calloc = tu_fail_calloc;
}

START_TEST(test_enomem_nothing_queued) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    small_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    const size_t first = 4 * MiB;
    ck_assert_int_eq(send_pattern(c, 0, first), 0);
    size_t queued = rx_conn_queued(c);
    ck_assert_uint_gt(queued, 0);
    /* More than the output buffer can take without growing. */
    size_t big = rx_conn_output(c)->cap + 1;
    char *junk = calloc(1, big);
    ck_assert_ptr_nonnull(junk);
    fail_allocs();
    ck_assert_int_eq(rx_conn_send(c, junk, big), -ENOMEM);
    struct iovec iov[2] = {{junk, big / 2}, {junk + big / 2, big - big / 2}};
    ck_assert_int_eq(rx_conn_sendv(c, iov, 2), -ENOMEM);
    int file = pattern_file(10);
    /* The file-range ring cannot grow either: -ENOMEM, and the fd is closed. */
    int f = dup(file);
    int rc = rx_conn_sendfile(c, f, 0, 10);
    rx_sys_reset();
    ck_assert_int_eq(rc, -ENOMEM);
    ck_assert(fd_closed(f));
    close(file);
    ck_assert_uint_eq(rx_conn_queued(c), queued);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_OPEN);
    ck_assert_int_eq(t.closes, 0);
    free(junk);
    /* Nothing of the refused sends went out; later sends still do. */
    ck_assert_int_eq(send_pattern(c, first, 1000), 0);
    tu_peer p;
    tu_peer_init(&p, b, true);
    struct duo d = {&t, &p, first + 1000};
    ck_assert(tu_run_until_fn(loop, peer_has, &d, 10000, 1));
    tu_run_for(loop, 20);
    tu_peer_read(&p);
    ck_assert_uint_eq(p.n, first + 1000);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 0);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tr_free(&t);
}
END_TEST

static ssize_t ten_bytes_sendmsg(int fd, const struct msghdr *msg, int flags) {
    struct iovec iov = {.iov_base = msg->msg_iov[0].iov_base,
                        .iov_len = min_sz(10, msg->msg_iov[0].iov_len)};
    struct msghdr m = *msg;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    return sendmsg(fd, &m, flags);
}

START_TEST(test_enomem_after_partial_write_closes) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    tu_tcp_pair(&a, &b);
    struct tr t = {0};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tr_cbs, &t);
    ck_assert_ptr_nonnull(c);
    char *data = pattern_alloc(0, 1000);
    rx_sys.sendmsg = ten_bytes_sendmsg;
    fail_allocs();
    int rc = rx_conn_send(c, data, 1000);
    rx_sys_reset();
    /* Part of the message is on the wire and the rest cannot be kept: the stream is broken, so
     * the connection closes with ENOMEM. */
    ck_assert_int_eq(rc, -ENOMEM);
    ck_assert_int_eq(t.closes, 0); /* on_close comes from the loop */
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_ERROR);
    ck_assert_int_eq(t.err, -ENOMEM);
    tu_peer p;
    tu_peer_init(&p, b, true);
    ck_assert(tu_run_until_fn(loop, peer_done, &p, 2000, 1));
    ck_assert_uint_eq(p.n, 10);
    ck_assert_int_eq(p.bad, -1);
    free(data);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tr_free(&t);
}
END_TEST

/* ---- injected ECONNRESET ---- */

static int reset_fd = -1;
static ssize_t reset_sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (fd == reset_fd) {
        errno = ECONNRESET;
        return -1;
    }
    return sendmsg(fd, msg, flags);
}
static ssize_t reset_send(int fd, const void *buf, size_t n, int flags) {
    if (fd == reset_fd) {
        errno = ECONNRESET;
        return -1;
    }
    return send(fd, buf, n, flags);
}
static ssize_t reset_read(int fd, void *buf, size_t n) {
    if (fd == reset_fd) {
        errno = ECONNRESET;
        return -1;
    }
    return read(fd, buf, n);
}
static ssize_t reset_readv(int fd, const struct iovec *iov, int cnt) {
    if (fd == reset_fd) {
        errno = ECONNRESET;
        return -1;
    }
    return readv(fd, iov, cnt);
}

START_TEST(test_injected_reset) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    tu_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    struct tr t1 = {0}, t2 = {0};
    rx_conn *c1 = rx_conn_new(loop, a1, NULL, &tr_cbs, &t1);
    rx_conn *c2 = rx_conn_new(loop, a2, NULL, &tr_cbs, &t2);
    ck_assert_ptr_nonnull(c1);
    ck_assert_ptr_nonnull(c2);
    /* On write. */
    reset_fd = a1;
    rx_sys.sendmsg = reset_sendmsg;
    rx_sys.send = reset_send;
    int rc = rx_conn_send(c1, "hello", 5);
    ck_assert_int_eq(rc, -ECONNRESET);
    ck_assert_int_eq(t1.closes, 0); /* on_close comes from the loop */
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(t1.closes, 1);
    ck_assert_int_eq(t1.reason, RX_CLOSE_RESET);
    ck_assert_int_eq(t1.err, -ECONNRESET);
    /* On read. */
    reset_fd = a2;
    rx_sys.read = reset_read;
    rx_sys.readv = reset_readv;
    peer_write_all(loop, b2, "x", 1);
    ck_assert(tu_run_until_fn(loop, tr_closed, &t2, 2000, 5));
    rx_sys_reset();
    ck_assert_int_eq(t2.reason, RX_CLOSE_RESET);
    ck_assert_int_eq(t2.err, -ECONNRESET);
    ck_assert_int_eq(t2.datas, 0);
    close(b1);
    close(b2);
    rx_loop_free(loop);
    ck_assert_int_eq(t1.closes, 1);
    ck_assert_int_eq(t2.closes, 1);
    tr_free(&t1);
    tr_free(&t2);
}
END_TEST

/* ---- idle timeout on a single connection ---- */

START_TEST(test_idle_timeout_writes_keep_alive) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    tu_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    struct tr t1 = {0}, t2 = {0};
    rx_conn_opts o = {.idle_timeout_ms = 100};
    rx_conn *c1 = rx_conn_new(loop, a1, &o, &tr_cbs, &t1);
    rx_conn *c2 = rx_conn_new(loop, a2, &o, &tr_cbs, &t2);
    ck_assert_ptr_nonnull(c1);
    ck_assert_ptr_nonnull(c2);
    ck_assert_int_eq(rx_conn_set_idle_timeout(c2, 0), 0); /* disabled */
    tu_peer p1;
    tu_peer_init(&p1, b1, false);
    /* c1 only writes (the peer reads): writing is activity too. */
    unsigned long long start = tu_now_ms(), last = 0;
    while (tu_now_ms() - start < 350) {
        if (tu_now_ms() - last >= 40) {
            ck_assert_int_eq(rx_conn_send(c1, "w", 1), 0);
            last = tu_now_ms();
        }
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
        tu_peer_read(&p1);
    }
    ck_assert_int_eq(t1.closes, 0);
    ck_assert_int_eq(t2.closes, 0);
    ck_assert_uint_ge(p1.n, 5);
    /* Now silent: c1 times out about 100 ms after its last write; c2 never does. */
    unsigned long long quiet = tu_now_ms();
    ck_assert(tu_run_until_fn(loop, tr_closed, &t1, 2000, 5));
    ck_assert_int_eq(t1.reason, RX_CLOSE_TIMEOUT);
    ck_assert_int_le(t1.err, 0);
    ck_assert_uint_ge(t1.close_ms - quiet, 50);
    ck_assert_uint_lt(t1.close_ms - last, 1000);
    tu_run_for(loop, 150);
    ck_assert_int_eq(t2.closes, 0);
    /* Re-enabled: it times out too. */
    ck_assert_int_eq(rx_conn_set_idle_timeout(c2, 60), 0);
    unsigned long long armed = rx_loop_now_ms(loop); /* the timer counts from the cached time */
    ck_assert(tu_run_until_fn(loop, tr_closed, &t2, 2000, 5));
    ck_assert_int_eq(t2.reason, RX_CLOSE_TIMEOUT);
    ck_assert_uint_ge(t2.close_ms - armed, 50);
    tu_peer_free(&p1);
    close(b2);
    rx_loop_free(loop);
    tr_free(&t1);
    tr_free(&t2);
}
END_TEST

/* ---- rx_loop_free with live connections ---- */

START_TEST(test_loop_free_live_conns) {
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    small_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    struct tr t1 = {0}, t2 = {0};
    rx_conn_opts o = {.idle_timeout_ms = 10000};
    rx_conn *c1 = rx_conn_new(loop, a1, &o, &tr_cbs, &t1);
    rx_conn *c2 = rx_conn_new(loop, a2, NULL, &tr_cbs, &t2);
    ck_assert_ptr_nonnull(c2);
    /* c1 has buffered output, a file range and partial input. */
    ck_assert_int_eq(send_pattern(c1, 0, 2 * MiB), 0);
    int file = pattern_file(1000);
    int f = dup(file);
    ck_assert_int_eq(rx_conn_sendfile(c1, f, 0, 1000), 0);
    ck_assert_int_eq(send_pattern(c1, 0, 100), 0);
    peer_write_all(loop, b2, "abc", 3);
    tu_run_for(loop, 20);
    ck_assert_int_eq(t2.datas, 1);
    rx_loop_free(loop);
    ck_assert_int_eq(t1.closes, 1);
    ck_assert_int_eq(t1.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(t2.closes, 1);
    ck_assert_int_eq(t2.reason, RX_CLOSE_LOCAL);
    ck_assert(fd_closed(f));
    ck_assert(fd_closed(a1));
    ck_assert(fd_closed(a2));
    close(file);
    close(b1);
    close(b2);
    tr_free(&t1);
    tr_free(&t2);
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
        ck_assert_int_eq(send_pattern(c, 0, 2 * MiB), g.which == CB_HIGH ? -EPIPE : 0);
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
    rx_server_opts so = {.listen = "127.0.0.1:0", .cbs = &cbs};
    so.conn.high_water = 64 * KiB;
    rx_server *s = rx_server_new(loop, &so);
    ck_assert_ptr_nonnull(s);
    int cl = tu_tcp_connect(rx_addr_port(rx_server_addr(s)), true);
    ck_assert_int_ge(cl, 0);
    set_buf(cl, SO_RCVBUF, 32 * KiB);
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
    rx_server_opts so = {.listen = "127.0.0.1:0", .cbs = &cbs};
    rx_server *s = rx_server_new(loop, &so);
    ck_assert_ptr_nonnull(s);
    int port = rx_addr_port(rx_server_addr(s));
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

/* ---- buffers: memory only while a message is incomplete or output waits ---- */

static unsigned long long mallocs;
static void *counting_malloc(size_t n) {
    mallocs++;
    return malloc(n);
}
static void *counting_realloc(void *p, size_t n) {
    mallocs++;
    return realloc(p, n);
}

static void reply_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), rx_buffer_peek(in), rx_buffer_len(in)),
                     0);
    rx_buffer_consume(in, rx_buffer_len(in));
}

START_TEST(test_buffers_only_while_needed) {
    rx_loop *loop = rx_loop_new();
    int sv[2];
    tu_socketpair(sv);
    static const rx_conn_callbacks cbs = {.on_data = reply_data};
    rx_conn *c = rx_conn_new(loop, sv[0], NULL, &cbs, NULL);
    ck_assert_ptr_nonnull(c);
    /* Warm up: the loop's scratch buffers are allocated once. */
    char buf[16];
    ck_assert_int_eq(write(sv[1], "ping", 4), 4);
    for (int k = 0; k < 100 && !tu_poll(sv[1], POLLIN, 0); k++)
        rx_loop_run_once(loop, 10);
    ck_assert_int_eq(read(sv[1], buf, sizeof(buf)), 4);
    /* Request and response through the scratch buffers: no allocation per message, and none kept
     * by the connection between messages. */
    mallocs = 0;
    rx_sys.malloc = counting_malloc;
    rx_sys.realloc = counting_realloc;
    for (int i = 0; i < 100; i++) {
        ck_assert_int_eq(write(sv[1], "hello", 5), 5);
        for (int k = 0; k < 100 && !tu_poll(sv[1], POLLIN, 0); k++)
            rx_loop_run_once(loop, 10);
        ck_assert_int_eq(read(sv[1], buf, sizeof(buf)), 5);
    }
    rx_sys_reset();
    ck_assert_uint_eq(mallocs, 0);
    ck_assert_ptr_null(rx_conn_output(c)->data);
    ck_assert_ptr_null(rx_conn_input(c)->data);
    close(sv[1]);
    rx_loop_free(loop);
}
END_TEST

static Suite *conn_suite(void) {
    Suite *s = suite_create("conn");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_echo_counters_addrs);
    tcase_add_test(tc, test_buffers_only_while_needed);
    tcase_add_test(tc, test_new_bad_fd);
    tcase_add_test(tc, test_socket_options);
    tcase_add_test(tc, test_new_failure_owns_fd_no_callbacks);
    tcase_add_test(tc, test_peer_half_close_delivers_all);
    tcase_add_test(tc, test_local_shutdown_keeps_reading);
    tcase_add_test(tc, test_on_eof_reply_then_close);
    tcase_add_test(tc, test_never_reading_peer_bounded);
    tcase_add_test(tc, test_peer_reset_mid_send);
    tcase_add_test(tc, test_sendfile_order);
    tcase_add_test(tc, test_sendfile_in_on_data);
    tcase_add_test(tc, test_sendv_three_iovecs);
    tcase_add_test(tc, test_send_epipe_after_close_or_shutdown);
    tcase_add_test(tc, test_close_writes_queue_then_closes);
    tcase_add_test(tc, test_close_with_unread_input_delivers_queue);
    tcase_add_test(tc, test_abort_drops_queue);
    tcase_add_test(tc, test_pause_resume_read);
    tcase_add_test(tc, test_partial_input_kept);
    tcase_add_test(tc, test_resume_delivers_buffered_input);
    tcase_add_test(tc, test_epollout_only_while_queued);
    tcase_add_test(tc, test_output_in_on_data_one_write);
    tcase_add_test(tc, test_injected_short_writes);
    tcase_add_test(tc, test_enomem_nothing_queued);
    tcase_add_test(tc, test_enomem_after_partial_write_closes);
    tcase_add_test(tc, test_injected_reset);
    tcase_add_test(tc, test_idle_timeout_writes_keep_alive);
    tcase_add_test(tc, test_loop_free_live_conns);
    tcase_add_loop_test(tc, test_close_from_callback, 0, 2 * CB_COUNT);
    tcase_add_loop_test(tc, test_close_other_same_batch, 0, 2);
    suite_add_tcase(s, tc);

    TCase *bulk = tcase_create("bulk");
    tcase_set_timeout(bulk, 100);
    tcase_add_checked_fixture(bulk, NULL, teardown);
    tcase_add_loop_test(bulk, test_64mib_both_ways, 0, 4);
    suite_add_tcase(s, bulk);
    return s;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(conn_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
