/* Tests for rx_conn's input and output over real TCP on 127.0.0.1 and socket pairs: echo and
 * counters, send/sendv/sendfile in order, input kept while a message is incomplete, output built
 * in on_data in one write, injected short writes/EAGAIN/EINTR/ENOMEM/ECONNRESET, and buffers held
 * only while needed. */
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
#include <sys/socket.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- basics ---- */

START_TEST(test_echo_counters_addrs) {
    rx_loop *loop = rx_loop_new();
    int a, b;
    tu_tcp_pair(&a, &b);
    tu_tr t = {.echo = true};
    rx_conn *c = rx_conn_new(loop, a, NULL, &tu_tr_cbs, &t);
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
    tu_addr(s2, sizeof(s2), ntohs(bl.sin_port));
    ck_assert_str_eq(s1, s2);

    tu_peer p;
    tu_peer_init(&p, b, false);
    const char msg[] = "hello, reactor";
    tu_peer_write_all(loop, b, msg, sizeof(msg) - 1);
    tu_duo d = {&t, &p, sizeof(msg) - 1};
    ck_assert(tu_run_until_fn(loop, tu_peer_has, &d, 2000, 1));
    ck_assert_uint_eq(p.n, sizeof(msg) - 1);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got), msg, sizeof(msg) - 1), 0);
    ck_assert_uint_eq(rx_conn_bytes_in(c), sizeof(msg) - 1);
    ck_assert_uint_eq(rx_conn_bytes_out(c), sizeof(msg) - 1);

    rx_conn_set_arg(c, &t); /* same arg; just exercise it */
    ck_assert_ptr_eq(rx_conn_arg(c), &t);

    /* The peer closes: on_close(PEER, 0) once, with the counters intact. */
    close(b);
    p.fd = -1;
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t, 2000, 5));
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_PEER);
    ck_assert_int_eq(t.err, 0);
    ck_assert_uint_eq(t.bytes_in, sizeof(msg) - 1);
    ck_assert_uint_eq(t.bytes_out, sizeof(msg) - 1);
    tu_tr_assert_closed_once(loop, &t, 20);
    tu_tr_assert_none_late(&t);
    tu_peer_free(&p);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* ---- sendfile ordering ---- */

START_TEST(test_sendfile_order) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    /* The file holds the whole stream; pieces of it go out as buffered bytes and as file
     * ranges, so the peer must read the stream in order. */
    const size_t total = 1101 * KiB + 50 * KiB;
    int file = tu_pattern_file(total);
    int f1 = dup(file), f2 = dup(file), f3 = dup(file), f4 = dup(file);
    ck_assert_int_ge(f4, 0);
    ck_assert_int_eq(tu_send_pattern(c, 0, 300 * KiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f1, 300 * KiB, 500 * KiB), 0);
    ck_assert_int_eq(tu_send_pattern(c, 800 * KiB, 200 * KiB), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f2, 1000 * KiB, 100 * KiB), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f3, 1100 * KiB, KiB), 0);
    ck_assert_int_eq(rx_conn_sendfile(c, f4, 0, 0), 0); /* empty range: nothing, fd closed */
    ck_assert(tu_fd_closed(f4));
    ck_assert_int_eq(tu_send_pattern(c, 1101 * KiB, 50 * KiB), 0);
    ck_assert_uint_le(rx_conn_queued(c), total);
    rx_conn_close(c);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);

    tu_peer p;
    tu_peer_init(&p, b, true);
    tu_duo d = {&t, &p, 0};
    ck_assert(tu_run_until_fn(loop, tu_peer_done_and_closed, &d, 10000, 1));
    ck_assert(p.eof);
    ck_assert_uint_eq(p.n, total);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 1);
    ck_assert_int_eq(t.reason, RX_CLOSE_LOCAL);
    ck_assert_uint_eq(t.bytes_out, total);
    /* The connection closed the file descriptors it was given. */
    ck_assert(tu_fd_closed(f1));
    ck_assert(tu_fd_closed(f2));
    ck_assert(tu_fd_closed(f3));
    close(file);
    tu_peer_free(&p);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* Sendfile from inside on_data goes out after the output appended before it. */
static int sf_file = -1;
static void sf_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_buffer_consume(in, rx_buffer_len(in));
    char *head = tu_pattern_alloc(0, 1000);
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), head, 1000), 0);
    free(head);
    ck_assert_int_eq(rx_conn_sendfile(c, sf_file, 1000, 200 * KiB), 0);
    sf_file = -1;
    ck_assert_int_eq(tu_send_pattern(c, 1000 + 200 * KiB, 10), 0);
}

/* sendfile has no MSG_NOSIGNAL: on a socket whose write side is gone it fails with EPIPE and
 * raises SIGPIPE, which kills a process that did not ignore it (rx-http under wrk, issue 11). rx
 * takes the signal back: with SIGPIPE at its default action the process survives, the connection
 * closes as reset with -EPIPE, and no SIGPIPE is left pending. */
START_TEST(test_sendfile_epipe_raises_no_sigpipe) {
    struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
    ck_assert_int_eq(sigaction(SIGPIPE, &dfl, &old), 0);
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &tu_tr_cbs, &t, &b);
    /* As a peer's reset would, but deterministic: the next sendfile gets EPIPE. */
    ck_assert_int_eq(shutdown(rx_conn_fd(c), SHUT_WR), 0);
    int rc = rx_conn_sendfile(c, tu_pattern_file(64 * KiB), 0, 64 * KiB);
    ck_assert(rc == 0 || rc == -EPIPE);
    tu_tr_wait_close(loop, &t, 2000, RX_CLOSE_RESET);
    ck_assert_int_eq(t.err, -EPIPE);
    sigset_t pending;
    ck_assert_int_eq(sigpending(&pending), 0);
    ck_assert(!sigismember(&pending, SIGPIPE));
    ck_assert_int_eq(sigaction(SIGPIPE, &old, NULL), 0);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_sendfile_in_on_data) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = sf_data, .on_close = tu_tr_close};
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &cbs, &t, &b);
    int file = tu_pattern_file(300 * KiB);
    sf_file = dup(file);
    tu_peer_write_all(loop, b, "go", 2);
    tu_peer p;
    tu_peer_init(&p, b, true);
    tu_duo d = {&t, &p, 1010 + 200 * KiB};
    ck_assert(tu_run_until_fn(loop, tu_peer_has, &d, 5000, 1));
    ck_assert_uint_eq(p.n, 1010 + 200 * KiB);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_uint_eq(rx_conn_queued(c), 0);
    close(file);
    tu_peer_free(&p);
    tu_free_loop_closing(loop, &t, NULL);
}
END_TEST

/* ---- sendv ---- */

START_TEST(test_sendv_three_iovecs) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    const size_t plen = 200 * KiB;
    char *payload = tu_pattern_alloc(0, plen);
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
    tu_duo d = {&t, &p, total};
    ck_assert(tu_run_until_fn(loop, tu_peer_has, &d, 5000, 1));
    ck_assert_uint_eq(p.n, total);
    const char *got = rx_buffer_peek(&p.got);
    ck_assert_int_eq(memcmp(got, "HDR 1\r\n", 7), 0);
    ck_assert_int_eq(memcmp(got + 7, payload, plen), 0);
    ck_assert_int_eq(memcmp(got + 7 + plen, "\r\nENDABC", 8), 0);
    ck_assert_uint_eq(rx_conn_bytes_out(c), total);
    free(payload);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tu_tr_free(&t);
}
END_TEST

/* ---- input left in the buffer stays for the next call ---- */

static void line_data(rx_conn *c, rx_buffer *in, void *arg) {
    tu_tr *t = arg;
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
    static const rx_conn_callbacks cbs = {.on_data = line_data, .on_close = tu_tr_close};
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &cbs, &t, &b);
    tu_peer_write_all(loop, b, "abc", 3);
    tu_run_for(loop, 30);
    ck_assert_int_ge(t.datas, 1);
    ck_assert_uint_eq(rx_buffer_len(&t.in), 0);
    tu_peer_write_all(loop, b, "def\nxy", 6);
    tu_duo d = {&t, NULL, 7};
    ck_assert(tu_run_until_fn(loop, tu_tr_has, &d, 2000, 5));
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in), "abcdef\n", 7), 0);
    /* A long line, far beyond one read: kept and grown until its end arrives. */
    const size_t n = 300 * KiB;
    char *line = tu_pattern_alloc(0, n);
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    line[n - 1] = '\n';
    tu_peer_write_all(loop, b, line, n);
    d.want = 7 + 2 + n;
    ck_assert(tu_run_until_fn(loop, tu_tr_has, &d, 5000, 1));
    ck_assert_uint_eq(rx_buffer_len(&t.in), 7 + 2 + n);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in) + 7, "xy", 2), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in) + 9, line, n), 0);
    ck_assert_uint_eq(rx_conn_bytes_in(c), 9 + n);
    free(line);
    close(b);
    rx_loop_free(loop);
    tu_tr_free(&t);
}
END_TEST

/* ---- output appended in on_data goes out in one write ---- */

static int batch_calls_in_cb = -1;
static void batch_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_buffer_consume(in, rx_buffer_len(in));
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "a", 1), 0);
    ck_assert_int_eq(rx_conn_send(c, "bb", 2), 0);
    struct iovec iov[2] = {{.iov_base = "ccc", .iov_len = 3}, {.iov_base = "dddd", .iov_len = 4}};
    ck_assert_int_eq(rx_conn_sendv(c, iov, 2), 0);
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "e", 1), 0);
    batch_calls_in_cb = (int)tu_io.calls;
}

START_TEST(test_output_in_on_data_one_write) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = batch_data};
    int a, b;
    tu_tcp_pair(&a, &b);
    rx_conn *c = rx_conn_new(loop, a, NULL, &cbs, NULL);
    ck_assert_ptr_nonnull(c);
    tu_inject_io(a); /* counts the write calls */
    tu_peer_write_all(loop, b, "?", 1);
    tu_peer p;
    tu_peer_init(&p, b, false);
    tu_duo d = {NULL, &p, 11};
    ck_assert(tu_run_until_fn(loop, tu_peer_has, &d, 2000, 1));
    ck_assert_int_eq(batch_calls_in_cb, 0); /* nothing written inside the callback */
    ck_assert_uint_eq(tu_io.calls, 1);      /* one write after it */
    ck_assert_uint_eq(p.n, 11);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got), "abbcccdddde", 11), 0);
    rx_sys_reset();
    /* rx_conn_flush sends what was appended outside on_data. */
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "flushed", 7), 0);
    ck_assert_int_eq(rx_conn_flush(c), 0);
    d.want = 18;
    ck_assert(tu_run_until_fn(loop, tu_peer_has, &d, 2000, 1));
    ck_assert_int_eq(memcmp(rx_buffer_peek(&p.got) + 11, "flushed", 7), 0);
    tu_peer_free(&p);
    rx_loop_free(loop);
}
END_TEST

/* ---- injected short writes, EAGAIN and EINTR ---- */

START_TEST(test_injected_short_writes) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &tu_tr_cbs, &t, &b);
    const size_t total = 2 * MiB + 777;
    int file = tu_pattern_file(total);
    tu_inject_io(rx_conn_fd(c));
    tu_io.shorten = true;
    /* Pieces of every kind, of uneven sizes, each starting where the previous one ended. */
    size_t off = 0;
    unsigned k = 0;
    while (off < total) {
        size_t n = tu_min(total - off, 1 + (k * 104729u) % (96 * KiB));
        switch (k++ % 3) {
        case 0:
            ck_assert_int_eq(tu_send_pattern(c, off, n), 0);
            break;
        case 1: {
            char *p = tu_pattern_alloc(off, n);
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
    tu_duo d = {&t, &p, total};
    ck_assert(tu_run_until_fn(loop, tu_peer_has, &d, 20000, 1));
    ck_assert_uint_eq(p.n, total);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 0);
    ck_assert_uint_eq(rx_conn_bytes_out(c), total);
    ck_assert_uint_eq(rx_conn_queued(c), 0);
    ck_assert_uint_gt(tu_io.calls, 700);
    rx_sys_reset();
    close(file);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tu_tr_free(&t);
}
END_TEST

/* ---- ENOMEM ---- */

START_TEST(test_enomem_nothing_queued) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, true, NULL, &tu_tr_cbs, &t, &b);
    const size_t first = 4 * MiB;
    ck_assert_int_eq(tu_send_pattern(c, 0, first), 0);
    size_t queued = rx_conn_queued(c);
    ck_assert_uint_gt(queued, 0);
    /* More than the output buffer can take without growing. */
    size_t big = rx_conn_output(c)->cap + 1;
    char *junk = calloc(1, big);
    ck_assert_ptr_nonnull(junk);
    tu_fail_allocs();
    ck_assert_int_eq(rx_conn_send(c, junk, big), -ENOMEM);
    struct iovec iov[2] = {{junk, big / 2}, {junk + big / 2, big - big / 2}};
    ck_assert_int_eq(rx_conn_sendv(c, iov, 2), -ENOMEM);
    int file = tu_pattern_file(10);
    /* The file-range ring cannot grow either: -ENOMEM, and the fd is closed. */
    int f = dup(file);
    int rc = rx_conn_sendfile(c, f, 0, 10);
    rx_sys_reset();
    ck_assert_int_eq(rc, -ENOMEM);
    ck_assert(tu_fd_closed(f));
    close(file);
    ck_assert_uint_eq(rx_conn_queued(c), queued);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_OPEN);
    ck_assert_int_eq(t.closes, 0);
    free(junk);
    /* Nothing of the refused sends went out; later sends still do. */
    ck_assert_int_eq(tu_send_pattern(c, first, 1000), 0);
    tu_peer p;
    tu_peer_init(&p, b, true);
    tu_duo d = {&t, &p, first + 1000};
    ck_assert(tu_run_until_fn(loop, tu_peer_has, &d, 10000, 1));
    tu_run_for(loop, 20);
    tu_peer_read(&p);
    ck_assert_uint_eq(p.n, first + 1000);
    ck_assert_int_eq(p.bad, -1);
    ck_assert_int_eq(t.closes, 0);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tu_tr_free(&t);
}
END_TEST

START_TEST(test_enomem_after_partial_write_closes) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &tu_tr_cbs, &t, &b);
    char *data = tu_pattern_alloc(0, 1000);
    tu_inject_io(rx_conn_fd(c));
    tu_io.max_write = 10;
    tu_fail_allocs();
    int rc = rx_conn_send(c, data, 1000);
    rx_sys_reset();
    /* Part of the message is on the wire and the rest cannot be kept: the stream is broken, so
     * the connection closes with ENOMEM. */
    ck_assert_int_eq(rc, -ENOMEM);
    tu_tr_assert_closes_next(loop, &t, RX_CLOSE_ERROR);
    ck_assert_int_eq(t.err, -ENOMEM);
    tu_peer p;
    tu_peer_init(&p, b, true);
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p, 2000, 1));
    ck_assert_uint_eq(p.n, 10);
    ck_assert_int_eq(p.bad, -1);
    free(data);
    tu_peer_free(&p);
    rx_loop_free(loop);
    tu_tr_free(&t);
}
END_TEST

/* ---- injected ECONNRESET ---- */

START_TEST(test_injected_reset) {
    rx_loop *loop = rx_loop_new();
    tu_tr t1 = {0}, t2 = {0};
    int b1, b2;
    rx_conn *c1 = tu_conn_pair(loop, false, NULL, &tu_tr_cbs, &t1, &b1);
    rx_conn *c2 = tu_conn_pair(loop, false, NULL, &tu_tr_cbs, &t2, &b2);
    /* On write. */
    tu_inject_io(rx_conn_fd(c1));
    tu_io.fail_errno = ECONNRESET;
    int rc = rx_conn_send(c1, "hello", 5);
    ck_assert_int_eq(rc, -ECONNRESET);
    tu_tr_assert_closes_next(loop, &t1, RX_CLOSE_RESET);
    ck_assert_int_eq(t1.err, -ECONNRESET);
    /* On read. */
    tu_io.fd = rx_conn_fd(c2);
    tu_peer_write_all(loop, b2, "x", 1);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &t2, 2000, 5));
    rx_sys_reset();
    ck_assert_int_eq(t2.reason, RX_CLOSE_RESET);
    ck_assert_int_eq(t2.err, -ECONNRESET);
    ck_assert_int_eq(t2.datas, 0);
    close(b1);
    close(b2);
    tu_free_loop_closing(loop, &t1, &t2, NULL);
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
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), rx_buffer_peek(in), rx_buffer_len(in)), 0);
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
    /* issue 9, idle memory: a connection that never received a byte holds no buffer either. */
    int sv2[2];
    tu_socketpair(sv2);
    rx_conn *idle = rx_conn_new(loop, sv2[0], NULL, &cbs, NULL);
    ck_assert_ptr_nonnull(idle);
    tu_run_for(loop, 20);
    ck_assert_ptr_null(rx_conn_input(idle)->data);
    ck_assert_ptr_null(rx_conn_output(idle)->data);
    close(sv[1]);
    close(sv2[1]);
    rx_loop_free(loop);
}
END_TEST

/* issue 9 item 9: a message spanning reads is kept in a buffer of the connection's own only while
 * it is incomplete; once on_data consumed it the buffer goes at once, with no idle timeout set
 * (which used to be the only thing that released it). */
START_TEST(test_item9_input_buffer_released_when_message_completes) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {.on_data = line_data, .on_close = tu_tr_close};
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &cbs, &t, &b);
    const size_t n = 100 * KiB;
    char *line = tu_pattern_alloc(0, n);
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    tu_peer_write_all(loop, b, line, n);
    unsigned long long deadline = tu_now_ms() + 5000;
    while (rx_conn_bytes_in(c) < n && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    ck_assert_uint_eq(rx_conn_bytes_in(c), n);
    /* Incomplete: kept, unconsumed. */
    ck_assert_uint_eq(rx_buffer_len(rx_conn_input(c)), n);
    ck_assert_ptr_nonnull(rx_conn_input(c)->data);
    ck_assert_uint_eq(rx_buffer_len(&t.in), 0);
    tu_peer_write_all(loop, b, "\n", 1);
    tu_duo d = {&t, NULL, n + 1};
    ck_assert(tu_run_until_fn(loop, tu_tr_has, &d, 2000, 5));
    ck_assert_int_eq(t.closes, 0);
    ck_assert_uint_eq(rx_buffer_len(&t.in), n + 1);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&t.in), line, n), 0);
    /* Consumed: no buffer kept while the connection waits for the next message. */
    ck_assert_uint_eq(rx_buffer_len(rx_conn_input(c)), 0);
    ck_assert_ptr_null(rx_conn_input(c)->data);
    free(line);
    close(b);
    rx_loop_free(loop);
    tu_tr_free(&t);
}
END_TEST

/* issue 9 item 18: from A's on_data, bytes appended to rx_conn_output(B) of another connection,
 * with no rx_conn_flush, go out before the loop polls again: B's peer has them after at most one
 * more iteration (they used to wait until something else flushed B). */
static rx_conn *relay_to;

static void relay_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)c;
    (void)arg;
    rx_buffer *out = rx_conn_output(relay_to);
    ck_assert_int_eq(rx_buffer_append(out, rx_buffer_peek(in), rx_buffer_len(in)), 0);
    rx_buffer_consume(in, rx_buffer_len(in));
}

START_TEST(test_item18_output_appended_to_other_conn_goes_out) {
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks relay_cbs = {.on_data = relay_data};
    int a1, b1, a2, b2;
    tu_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    tu_tr t = {0};
    rx_conn *from = rx_conn_new(loop, a1, NULL, &relay_cbs, NULL);
    relay_to = rx_conn_new(loop, a2, NULL, &tu_tr_cbs, &t);
    ck_assert_ptr_nonnull(from);
    ck_assert_ptr_nonnull(relay_to);
    ck_assert_int_eq(send(b1, "for B", 5, MSG_NOSIGNAL), 5);
    ck_assert(tu_poll(a1, POLLIN, 1000) & POLLIN);
    ck_assert_int_eq(rx_loop_run_once(loop, 1000), 1); /* A's on_data */
    int runs = 1;
    while (!(tu_poll(b2, POLLIN, 50) & POLLIN) && runs < 2) {
        ck_assert_int_ge(rx_loop_run_once(loop, 100), 0);
        runs++;
    }
    char buf[16];
    ssize_t n = recv(b2, buf, sizeof(buf), MSG_DONTWAIT);
    ck_assert_msg(n == 5, "B's peer got %zd bytes after %d iterations", n, runs);
    ck_assert_int_eq(memcmp(buf, "for B", 5), 0);
    ck_assert_uint_eq(rx_conn_queued(relay_to), 0);
    close(b1);
    close(b2);
    tu_free_loop_closing(loop, &t, NULL);
}
END_TEST

/* Input kept while reading was paused reaches on_data before the peer's end of stream does, even
 * when the resume comes from a deferred pass (here: another connection's resumed input), so that
 * the poll after it already reports the end (found by the fault schedules, test_faults). */
struct held {
    bool hold;         /* on_data keeps its input and pauses */
    rx_conn *other;    /* on_data resumes it */
    int datas, closes; /* on_data calls that consumed, on_close calls */
    char got[16];
    rx_close_reason reason;
};

static void held_data(rx_conn *c, rx_buffer *in, void *arg) {
    struct held *h = arg;
    if (h->hold) {
        rx_conn_pause_read(c);
        return;
    }
    size_t n = tu_min(rx_buffer_len(in), sizeof(h->got) - 1);
    memcpy(h->got, rx_buffer_peek(in), n);
    rx_buffer_consume(in, rx_buffer_len(in));
    h->datas++;
    if (h->other)
        rx_conn_resume_read(h->other);
}

static void held_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)c;
    (void)err;
    struct held *h = arg;
    h->closes++;
    h->reason = reason;
}

START_TEST(test_resumed_input_before_peer_eof) {
    static const rx_conn_callbacks cbs = {.on_data = held_data, .on_close = held_close};
    rx_loop *loop = rx_loop_new();
    int ya, yb, za, zb;
    tu_tcp_pair(&ya, &yb);
    tu_tcp_pair(&za, &zb);
    struct held y = {.hold = true}, z = {.hold = true};
    rx_conn *yc = rx_conn_new(loop, ya, NULL, &cbs, &y);
    rx_conn *zc = rx_conn_new(loop, za, NULL, &cbs, &z);
    ck_assert_ptr_nonnull(yc);
    ck_assert_ptr_nonnull(zc);
    ck_assert_int_eq(send(yb, "request", 7, MSG_NOSIGNAL), 7);
    ck_assert_int_eq(send(zb, "z", 1, MSG_NOSIGNAL), 1);
    /* Both read their bytes and pause, holding them; y's peer then ends its stream. */
    for (int i = 0;
         i < 100 && !(rx_buffer_len(rx_conn_input(yc)) && rx_buffer_len(rx_conn_input(zc))); i++)
        rx_loop_run_once(loop, 10);
    ck_assert_uint_eq(rx_buffer_len(rx_conn_input(yc)), 7);
    ck_assert_uint_eq(rx_buffer_len(rx_conn_input(zc)), 1);
    ck_assert_int_eq(shutdown(yb, SHUT_WR), 0);
    y.hold = z.hold = false;
    z.other = yc;
    rx_conn_resume_read(
        zc); /* z's input is handed over in the next deferred pass, which resumes y */
    for (int i = 0; i < 100 && !y.closes; i++)
        rx_loop_run_once(loop, 10);
    ck_assert_int_eq(z.datas, 1);
    ck_assert_msg(y.datas == 1 && strcmp(y.got, "request") == 0,
                  "y's held request was dropped at its peer's end of stream (%d on_data)", y.datas);
    ck_assert_int_eq(y.closes, 1);
    ck_assert_int_eq(y.reason, RX_CLOSE_PEER);
    close(yb);
    close(zb);
    rx_loop_free(loop);
    ck_assert_int_eq(z.closes, 1);
}
END_TEST

/* A connection that closes inside on_data after its output outgrew the loop's output scratch
 * buffer (which moved it) leaves the loop a scratch buffer that is still good: the next
 * connection's output arrives whole (and ASan sees no use after free). Found by bench/soak: a
 * reset while a large echo was being answered. */
static void big_then_abort(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_buffer_consume(in, rx_buffer_len(in));
    char *p = tu_pattern_alloc(0, 200 * KiB);
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), p, 200 * KiB), 0);
    free(p);
    rx_conn_abort(c);
}

static void small_answer(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_buffer_consume(in, rx_buffer_len(in));
    ck_assert_int_eq(rx_buffer_append(rx_conn_output(c), "answer", 6), 0);
}

START_TEST(test_close_in_on_data_after_output_outgrew_scratch) {
    static const rx_conn_callbacks big = {.on_data = big_then_abort},
                                   small = {.on_data = small_answer};
    rx_loop *loop = rx_loop_new();
    int a1, b1, a2, b2;
    tu_tcp_pair(&a1, &b1);
    tu_tcp_pair(&a2, &b2);
    ck_assert_ptr_nonnull(rx_conn_new(loop, a1, NULL, &big, NULL));
    ck_assert_ptr_nonnull(rx_conn_new(loop, a2, NULL, &small, NULL));
    ck_assert_int_eq(send(b1, "x", 1, MSG_NOSIGNAL), 1);
    for (int i = 0; i < 50 && !(tu_poll(b1, POLLIN, 0) & (POLLIN | POLLHUP)); i++)
        rx_loop_run_once(loop, 10);
    ck_assert_int_eq(send(b2, "y", 1, MSG_NOSIGNAL), 1);
    char buf[16] = {0};
    ssize_t n = 0;
    for (int i = 0; i < 100 && n < 6; i++) {
        rx_loop_run_once(loop, 10);
        ssize_t r = recv(b2, buf + n, sizeof(buf) - 1 - (size_t)n, MSG_DONTWAIT);
        if (r > 0)
            n += r;
    }
    ck_assert_int_eq(n, 6);
    ck_assert_str_eq(buf, "answer");
    close(b1);
    close(b2);
    rx_loop_free(loop);
}
END_TEST

static Suite *conn_io_suite(void) {
    Suite *s = suite_create("conn_io");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_echo_counters_addrs);
    tcase_add_test(tc, test_sendfile_order);
    tcase_add_test(tc, test_sendfile_epipe_raises_no_sigpipe);
    tcase_add_test(tc, test_sendfile_in_on_data);
    tcase_add_test(tc, test_sendv_three_iovecs);
    tcase_add_test(tc, test_partial_input_kept);
    tcase_add_test(tc, test_output_in_on_data_one_write);
    tcase_add_test(tc, test_injected_short_writes);
    tcase_add_test(tc, test_enomem_nothing_queued);
    tcase_add_test(tc, test_enomem_after_partial_write_closes);
    tcase_add_test(tc, test_injected_reset);
    tcase_add_test(tc, test_buffers_only_while_needed);
    tcase_add_test(tc, test_item9_input_buffer_released_when_message_completes);
    tcase_add_test(tc, test_item18_output_appended_to_other_conn_goes_out);
    tcase_add_test(tc, test_resumed_input_before_peer_eof);
    tcase_add_test(tc, test_close_in_on_data_after_output_outgrew_scratch);
    return s;
}

int main(void) { return tu_main(conn_io_suite()); }
