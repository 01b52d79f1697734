/* Tests for rx_connect over 127.0.0.1: success, refusal, retries with backoff until a server
 * appears, the per-attempt timeout (against a listener whose backlog is full), data queued while
 * connecting, cancelling, local binding, and 5,000 concurrent connections in one loop. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

/* A client connection reports to a tu_tr through these. */
static const rx_conn_callbacks c_cbs = {
    .on_open = tu_tr_open, .on_data = tu_tr_data, .on_close = tu_tr_close};

/* An echo server whose connections all report to E. */
static tu_tr E;

static rx_server *echo_server(rx_loop *loop, const char *addr) {
    tu_tr_free(&E);
    memset(&E, 0, sizeof(E));
    E.echo = true;
    rx_server_opts o = {.listen = addr ? addr : "127.0.0.1:0", .cbs = &tu_tr_cbs, .arg = &E};
    return rx_server_new(loop, &o);
}

/* A listener with a full accept queue: listen(fd, 0) holds one connection, which a first client
 * takes; later SYNs are dropped, so a connect to it hangs. Returns false if this kernel does not
 * behave like that (the caller then skips). */
static bool full_backlog(int *lfd, int *filler, int *port) {
    *lfd = tu_tcp_listen(0, port);
    *filler = tu_tcp_connect(*port, true);
    ck_assert_int_ge(*filler, 0);
    /* Probe: a second connection must not complete. */
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)*port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(probe, (struct sockaddr *)&sin, sizeof(sin));
    bool hangs = rc < 0 && errno == EINPROGRESS && tu_poll(probe, POLLOUT, 100) == 0;
    close(probe);
    return hangs;
}

/* A full_backlog listener and its address ("127.0.0.1:<port>"). */
struct hang {
    int lfd, filler;
    char addr[64];
};

/* Makes h; returns whether connects to it hang here. */
static bool hang_start(struct hang *h) {
    int port;
    bool hangs = full_backlog(&h->lfd, &h->filler, &port);
    tu_addr(h->addr, sizeof(h->addr), port);
    return hangs;
}

static void hang_end(struct hang *h) {
    close(h->filler);
    close(h->lfd);
}

/* hang_start for a test that needs the connects to hang: where they do not, it says that test is
 * skipped, ends h and returns false. */
static bool hang_or_skip(struct hang *h, const char *test) {
    if (hang_start(h))
        return true;
    fprintf(stderr, "%s: connects to a full backlog complete here, skipped\n", test);
    hang_end(h);
    return false;
}

/* An echo server (echo_server) on 127.0.0.1:0; addr (64 bytes) receives its address. */
static rx_server *echo_server_at(rx_loop *loop, char *addr) {
    rx_server *s = echo_server(loop, NULL);
    tu_addr(addr, 64, tu_server_port(s));
    return s;
}

/* A client: rx_connect (checked) with the options o, reporting to k through c_cbs. */
static rx_conn *client(rx_loop *loop, rx_connect_opts o, tu_tr *k) {
    o.cbs = &c_cbs;
    o.arg = k;
    rx_conn *c = rx_connect(loop, &o);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* ---- success ---- */

START_TEST(test_connect_ok) {
    rx_loop *loop = rx_loop_new();
    rx_server *s = echo_server(loop, NULL);
    ck_assert_ptr_nonnull(s);
    char addr[64];
    int port = tu_server_port(s);
    tu_addr(addr, sizeof(addr), port);
    tu_tr k = {0};
    rx_conn *c = client(loop, (rx_connect_opts){.addr = addr, .timeout_ms = 2000}, &k);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CONNECTING);
    ck_assert_int_eq(k.opens, 0);         /* never from inside rx_connect */
    ck_assert_ptr_eq(rx_conn_arg(c), &k); /* its own context from the start */
    ck_assert_ptr_null(rx_conn_server(c));
    ck_assert(tu_run_until_fn(loop, tu_tr_opened, &k, 2000, 5));
    ck_assert_int_eq(k.opens, 1);
    ck_assert_int_eq(k.closes, 0);
    ck_assert_int_eq(k.state_at_open, RX_CONN_OPEN);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_OPEN);
    rx_addr peer, local;
    ck_assert_int_eq(rx_conn_peer_addr(c, &peer), 0);
    ck_assert_int_eq(rx_addr_port(&peer), port);
    ck_assert_int_eq(rx_conn_local_addr(c, &local), 0);
    ck_assert_int_eq(local.u.in.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    ck_assert_int_eq(rx_conn_send(c, "ping", 4), 0);
    unsigned long long deadline = tu_now_ms() + 2000;
    while (rx_buffer_len(&k.in) < 4 && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 5);
    ck_assert_uint_eq(rx_buffer_len(&k.in), 4);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&k.in), "ping", 4), 0);
    ck_assert_uint_eq(rx_conn_bytes_out(c), 4);
    ck_assert_uint_eq(rx_conn_bytes_in(c), 4);
    rx_conn_close(c);
    tu_tr_wait_close(loop, &k, 2000, RX_CLOSE_LOCAL);
    ck_assert_int_eq(k.late, 0);
    rx_buffer_free(&k.in);
    rx_buffer_free(&E.in);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_bad_address) {
    rx_loop *loop = rx_loop_new();
    tu_tr k = {0};
    const char *bad[] = {"nonsense", "127.0.0.1", "127.0.0.1:99999", "localhost:80", NULL};
    for (int i = 0;; i++) {
        rx_connect_opts o = {.addr = bad[i], .cbs = &c_cbs, .arg = &k};
        errno = 0;
        ck_assert_ptr_null(rx_connect(loop, &o));
        ck_assert_int_eq(errno, EINVAL);
        if (!bad[i])
            break;
    }
    rx_connect_opts o = {.addr = "127.0.0.1:1", .bind = "bogus", .cbs = &c_cbs, .arg = &k};
    errno = 0;
    ck_assert_ptr_null(rx_connect(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(rx_connect(loop, NULL));
    ck_assert_int_eq(errno, EINVAL);
    tu_run_for(loop, 20);
    ck_assert_int_eq(k.closes, 0);
    ck_assert_int_eq(k.opens, 0);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_bind_local_address) {
    rx_loop *loop = rx_loop_new();
    char addr[64], bind[64];
    rx_server *s = echo_server_at(loop, addr);
    int lport = tu_free_port();
    tu_addr(bind, sizeof(bind), lport);
    tu_tr k = {0};
    rx_conn *c = client(loop, (rx_connect_opts){.addr = addr, .bind = bind}, &k);
    ck_assert(tu_run_until_fn(loop, tu_tr_opened, &k, 2000, 5));
    ck_assert_int_eq(k.opens, 1);
    rx_addr local;
    ck_assert_int_eq(rx_conn_local_addr(c, &local), 0);
    ck_assert_int_eq(rx_addr_port(&local), lport);
    /* And port 0: the kernel picks one. */
    tu_tr k2 = {0};
    rx_conn *c2 = client(loop, (rx_connect_opts){.addr = addr, .bind = "127.0.0.1:0"}, &k2);
    ck_assert(tu_run_until_fn(loop, tu_tr_opened, &k2, 2000, 5));
    ck_assert_int_eq(k2.opens, 1);
    ck_assert_int_eq(rx_conn_local_addr(c2, &local), 0);
    ck_assert_int_gt(rx_addr_port(&local), 0);
    rx_server_free(s);
    rx_loop_free(loop);
    ck_assert_int_eq(k.closes, 1);
    ck_assert_int_eq(k2.closes, 1);
    rx_buffer_free(&E.in);
}
END_TEST

/* ---- refusal, retries, timeout ---- */

START_TEST(test_refused) {
    rx_loop *loop = rx_loop_new();
    char addr[64];
    tu_addr(addr, sizeof(addr), tu_free_port());
    tu_tr k = {0};
    rx_conn *c = client(loop, (rx_connect_opts){.addr = addr}, &k);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CONNECTING);
    ck_assert_int_eq(k.closes, 0); /* reported from the loop, not from rx_connect */
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &k, 2000, 5));
    ck_assert_int_eq(k.closes, 1);
    ck_assert_int_eq(k.opens, 0);
    ck_assert_int_eq(k.reason, RX_CLOSE_ERROR);
    ck_assert_int_eq(k.err, -ECONNREFUSED);
    tu_tr_assert_closed_once(loop, &k, 30);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_retries_exhausted_backoff) {
    rx_loop *loop = rx_loop_new();
    char addr[64];
    tu_addr(addr, sizeof(addr), tu_free_port());
    tu_tr k = {0};
    /* Waits of 30, 60 and 60 (capped) ms between the four attempts. */
    rx_connect_opts o = {.addr = addr, .retries = 3, .backoff_ms = 30, .backoff_max_ms = 60};
    unsigned long long t0 = rx_loop_now_ms(loop); /* timers count from the cached time */
    client(loop, o, &k);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &k, 3000, 2));
    unsigned long long ms = k.close_ms - t0;
    ck_assert_int_eq(k.reason, RX_CLOSE_ERROR);
    ck_assert_int_eq(k.err, -ECONNREFUSED);
    ck_assert_int_eq(k.opens, 0);
    ck_assert_msg(ms >= 145 && ms < 1000, "closed after %llu ms, want ~150", ms);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_retry_until_server_appears) {
    rx_loop *loop = rx_loop_new();
    int port = tu_free_port();
    char addr[64];
    tu_addr(addr, sizeof(addr), port);
    tu_tr k = {0};
    rx_connect_opts o = {.addr = addr, .timeout_ms = 1000, .retries = 5, .backoff_ms = 20};
    unsigned long long t0 = tu_now_ms();
    rx_conn *c = client(loop, o, &k);
    /* Sent while connecting: queued, and delivered exactly once after the retries. */
    ck_assert_int_eq(rx_conn_send(c, "early bird", 10), 0);
    ck_assert_uint_eq(rx_conn_queued(c), 10);
    while (tu_now_ms() - t0 < 50)
        ck_assert_int_ge(rx_loop_run_once(loop, 2), 0);
    ck_assert_int_eq(k.opens, 0);
    ck_assert_int_eq(k.closes, 0);
    rx_server *s = echo_server(loop, addr);
    if (!s && errno == EADDRINUSE) {
        fprintf(stderr, "test_retry_until_server_appears: port %d taken meanwhile, skipped\n",
                port);
        rx_loop_free(loop);
        return;
    }
    ck_assert_ptr_nonnull(s);
    ck_assert(tu_run_until_fn(loop, tu_tr_opened, &k, 3000, 2));
    ck_assert_msg(k.opens == 1, "closed instead: reason %d err %d", k.reason, k.err);
    ck_assert_int_eq(k.closes, 0);
    unsigned long long deadline = tu_now_ms() + 2000;
    while (rx_buffer_len(&k.in) < 10 && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 5);
    ck_assert_uint_eq(rx_buffer_len(&E.in), 10);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&E.in), "early bird", 10), 0);
    ck_assert_uint_eq(rx_buffer_len(&k.in), 10);
    ck_assert_int_eq(E.opens, 1);
    rx_conn_close(c);
    tu_tr_wait_close(loop, &k, 2000, RX_CLOSE_LOCAL);
    rx_buffer_free(&k.in);
    rx_buffer_free(&E.in);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_connect_timeout) {
    struct hang h;
    if (!hang_or_skip(&h, "test_connect_timeout"))
        return;
    rx_loop *loop = rx_loop_new();
    tu_tr k = {0}, k2 = {0};
    rx_connect_opts o = {.addr = h.addr, .timeout_ms = 100};
    /* With one retry: two attempts of 100 ms and a 50 ms wait between them. */
    rx_connect_opts o2 = {.addr = h.addr, .timeout_ms = 100, .retries = 1, .backoff_ms = 50};
    unsigned long long t0 = rx_loop_now_ms(loop); /* timers count from the cached time */
    client(loop, o, &k);
    client(loop, o2, &k2);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &k, 2000, 2));
    ck_assert_int_eq(k.reason, RX_CLOSE_TIMEOUT);
    ck_assert_int_eq(k.err, -ETIMEDOUT);
    ck_assert_int_eq(k.opens, 0);
    ck_assert_uint_ge(k.close_ms - t0, 95);
    ck_assert_uint_lt(k.close_ms - t0, 1000);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &k2, 2000, 2));
    ck_assert_int_eq(k2.reason, RX_CLOSE_TIMEOUT);
    ck_assert_int_eq(k2.err, -ETIMEDOUT);
    ck_assert_uint_ge(k2.close_ms - t0, 245);
    ck_assert_uint_lt(k2.close_ms - t0, 1500);
    rx_loop_free(loop);
    hang_end(&h);
}
END_TEST

/* ---- data while connecting, shutdown while connecting ---- */

START_TEST(test_data_while_connecting) {
    rx_loop *loop = rx_loop_new();
    char addr[64];
    rx_server *s = echo_server_at(loop, addr);
    tu_tr k = {0};
    rx_conn *c = client(loop, (rx_connect_opts){.addr = addr}, &k);
    /* Several pieces of several kinds, all queued before the connect completes. */
    const size_t big = 3 * 1024 * 1024;
    char *payload = malloc(big);
    tu_pattern_fill(payload, 0, big);
    ck_assert_int_eq(rx_conn_send(c, "A", 1), 0);
    struct iovec iov[3] = {{"B", 1}, {payload, big}, {"C", 1}};
    ck_assert_int_eq(rx_conn_sendv(c, iov, 3), 0);
    /* A file range too, after the buffered bytes. */
    const size_t flen = 100 * 1024;
    char path[] = "/tmp/rx-test-connector-XXXXXX";
    int file = mkstemp(path);
    ck_assert_int_ge(file, 0);
    unlink(path);
    ck_assert_int_eq(write(file, payload, flen), (ssize_t)flen);
    ck_assert_int_eq(rx_conn_sendfile(c, file, 0, flen), 0);
    ck_assert_int_eq(rx_conn_send(c, "D", 1), 0);
    const size_t total = big + 3 + flen + 1;
    ck_assert_uint_eq(rx_conn_queued(c), total);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CONNECTING);
    unsigned long long deadline = tu_now_ms() + 5000;
    while (rx_buffer_len(&E.in) < total && tu_now_ms() < deadline)
        rx_loop_run_once(loop, 2);
    ck_assert_int_eq(k.opens, 1);
    ck_assert_uint_eq(rx_buffer_len(&E.in), total);
    const char *got = rx_buffer_peek(&E.in);
    ck_assert_int_eq(got[0], 'A');
    ck_assert_int_eq(got[1], 'B');
    ck_assert_int_eq(memcmp(got + 2, payload, big), 0);
    ck_assert_int_eq(got[big + 2], 'C');
    ck_assert_int_eq(memcmp(got + big + 3, payload, flen), 0);
    ck_assert_int_eq(got[total - 1], 'D');
    ck_assert_uint_eq(rx_conn_bytes_out(c), total);
    free(payload);
    rx_server_free(s);
    rx_loop_free(loop);
    rx_buffer_free(&k.in);
    rx_buffer_free(&E.in);
}
END_TEST

/* rx_conn_shutdown while connecting: what was queued goes out, then the write side shuts (the
 * server, without on_eof, then closes with RX_CLOSE_PEER). */
START_TEST(test_shutdown_while_connecting) {
    for (int with_data = 1; with_data >= 0; with_data--) {
        rx_loop *loop = rx_loop_new();
        char addr[64];
        rx_server *s = echo_server_at(loop, addr);
        tu_tr k = {0};
        rx_conn *c = client(loop, (rx_connect_opts){.addr = addr}, &k);
        if (with_data)
            ck_assert_int_eq(rx_conn_send(c, "last words", 10), 0);
        rx_conn_shutdown(c);
        ck_assert_int_eq(rx_conn_send(c, "x", 1), -EPIPE);
        unsigned long long deadline = tu_now_ms() + 2000;
        while (E.closes == 0 && tu_now_ms() < deadline)
            rx_loop_run_once(loop, 5);
        ck_assert_int_eq(k.opens, 1);
        ck_assert_msg(E.closes == 1, "%s: the server never saw the client's EOF",
                      with_data ? "with data" : "without data");
        ck_assert_int_eq(E.reason, RX_CLOSE_PEER);
        ck_assert_uint_eq(rx_buffer_len(&E.in), with_data ? 10u : 0u);
        rx_server_free(s);
        rx_loop_free(loop);
        rx_buffer_free(&k.in);
        rx_buffer_free(&E.in);
    }
}
END_TEST

/* ---- cancelling ---- */

START_TEST(test_close_while_connecting) {
    struct hang h;
    bool hangs = hang_start(&h);
    rx_loop *loop = rx_loop_new();
    for (int mode = 0; mode < 2; mode++) {
        tu_tr k = {0};
        rx_connect_opts o = {.addr = h.addr, .timeout_ms = 5000, .conn = {.close_timeout_ms = 100}};
        rx_conn *c = client(loop, o, &k);
        if (mode == 0)
            ck_assert_int_eq(rx_conn_send(c, "queued", 6), 0);
        tu_run_for(loop, 20);
        if (hangs)
            ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CONNECTING);
        if (rx_conn_get_state(c) != RX_CONN_CONNECTING) {
            rx_conn_abort(c);
            continue;
        }
        /* Nothing queued: a plain cancel. Bytes queued: the close waits for the connect to write
         * them, bounded by the close deadline (the connect hangs here). */
        rx_conn_close(c);
        ck_assert_int_eq(rx_conn_get_state(c), mode == 0 ? RX_CONN_CLOSING : RX_CONN_CLOSED);
        ck_assert_int_eq(k.closes, 0); /* from the loop, never inside the call */
        tu_tr_wait_close(loop, &k, 2000, mode == 0 ? RX_CLOSE_TIMEOUT : RX_CLOSE_LOCAL);
        tu_tr_assert_closed_once(loop, &k, 30);
        ck_assert_int_eq(k.opens, 0);
    }
    rx_loop_free(loop);
    hang_end(&h);
}
END_TEST

/* Cancelled from inside a callback (a timer's) while connecting: on_close at the end of that
 * iteration. */
static void cancel_cb(rx_timer *t, void *arg) {
    (void)t;
    rx_conn_close(arg);
}

START_TEST(test_close_while_connecting_in_callback) {
    struct hang h;
    if (!hang_or_skip(&h, "test_close_while_connecting_in_callback"))
        return;
    rx_loop *loop = rx_loop_new();
    tu_tr k = {0};
    rx_connect_opts o = {.addr = h.addr, .timeout_ms = 5000, .cbs = &c_cbs, .arg = &k};
    rx_conn *c = rx_connect(loop, &o);
    rx_timer *t = rx_timer_new(loop, cancel_cb, c);
    rx_timer_start(t, 30, 0);
    tu_tr_wait_close(loop, &k, 2000, RX_CLOSE_LOCAL);
    ck_assert_int_eq(k.opens, 0);
    tu_tr_assert_closed_once(loop, &k, 30);
    rx_timer_free(t);
    rx_loop_free(loop);
    hang_end(&h);
}
END_TEST

START_TEST(test_close_during_backoff) {
    rx_loop *loop = rx_loop_new();
    char addr[64];
    tu_addr(addr, sizeof(addr), tu_free_port());
    tu_tr k = {0};
    rx_conn *c = client(loop, (rx_connect_opts){.addr = addr, .retries = 5, .backoff_ms = 100}, &k);
    tu_run_for(loop, 40); /* the first attempt failed; waiting for the retry */
    ck_assert_int_eq(k.closes, 0);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CONNECTING);
    rx_conn_close(c);
    tu_tr_assert_closes_next(loop, &k, RX_CLOSE_LOCAL);
    tu_tr_assert_closed_once(loop, &k, 300); /* the retry timer is gone with it */
    ck_assert_int_eq(k.opens, 0);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_close_in_on_open) {
    rx_loop *loop = rx_loop_new();
    char addr[64];
    rx_server *s = echo_server_at(loop, addr);
    tu_tr k = {.close_in_open = true}, k2 = {.abort_in_open = true};
    rx_conn *c = client(loop, (rx_connect_opts){.addr = addr}, &k);
    client(loop, (rx_connect_opts){.addr = addr}, &k2);
    ck_assert_int_eq(rx_conn_send(c, "queued", 6), 0);
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &k, 2000, 5));
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &k2, 2000, 5));
    tu_run_for(loop, 50);
    ck_assert_int_eq(k.opens, 1);
    ck_assert_int_eq(k.closes, 1);
    ck_assert_int_eq(k.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(k.late, 0);
    ck_assert_int_eq(k2.opens, 1);
    ck_assert_int_eq(k2.closes, 1);
    ck_assert_int_eq(k2.reason, RX_CLOSE_LOCAL);
    ck_assert_int_eq(k2.late, 0);
    /* The graceful one still wrote what was queued before it closed. */
    ck_assert_uint_eq(rx_buffer_len(&E.in), 6);
    rx_server_free(s);
    rx_loop_free(loop);
    rx_buffer_free(&E.in);
}
END_TEST

START_TEST(test_loop_free_while_connecting) {
    struct hang h;
    bool hangs = hang_start(&h);
    rx_loop *loop = rx_loop_new();
    char refused[64];
    tu_addr(refused, sizeof(refused), tu_free_port());
    tu_tr k = {0}, k2 = {0};
    client(loop, (rx_connect_opts){.addr = h.addr, .timeout_ms = 5000}, &k);
    client(loop, (rx_connect_opts){.addr = refused, .retries = 3, .backoff_ms = 1000}, &k2);
    tu_run_for(loop, 30);
    if (hangs)
        ck_assert_int_eq(k.closes, 0);
    ck_assert_int_eq(k2.closes, 0); /* backing off */
    rx_loop_free(loop);
    ck_assert_int_eq(k.closes, 1);
    ck_assert_int_eq(k2.closes, 1);
    ck_assert_int_eq(k2.reason, RX_CLOSE_LOCAL);
    if (hangs)
        ck_assert_int_eq(k.reason, RX_CLOSE_LOCAL);
    hang_end(&h);
}
END_TEST

/* issue 9 item 20: a request sent and the connection closed at once, while still connecting: the
 * close waits for the connect, the request is written, then the stream ends. The server reads all
 * of it and EOF; on_open never runs (a close is under way) and on_close says LOCAL (or PEER). The
 * close used to cancel the connect and drop the request. */
START_TEST(test_item20_send_then_close_while_connecting) {
    int port;
    int lfd = tu_tcp_listen(4, &port);
    rx_loop *loop = rx_loop_new();
    char addr[64];
    tu_addr(addr, sizeof(addr), port);
    tu_tr k = {0};
    rx_conn *c = client(loop, (rx_connect_opts){.addr = addr, .timeout_ms = 2000}, &k);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CONNECTING);
    const size_t n = 100 * 1024;
    ck_assert_int_eq(tu_send_pattern(c, 0, n), 0);
    rx_conn_close(c);
    ck_assert_int_eq(rx_conn_get_state(c), RX_CONN_CLOSING);
    /* The server's side: accept, then read to the end of the stream. */
    int sfd = -1;
    unsigned long long deadline = tu_now_ms() + 2000;
    while (sfd < 0 && tu_now_ms() < deadline) {
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
        if (tu_poll(lfd, POLLIN, 0) & POLLIN)
            sfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    }
    ck_assert_int_ge(sfd, 0);
    tu_peer p;
    tu_peer_init(&p, sfd, true);
    ck_assert(tu_run_until_fn(loop, tu_peer_done, &p, 5000, 1));
    ck_assert_msg(p.eof && p.n == n, "server got %llu of %zu bytes, then %s", p.n, n,
                  p.eof ? "EOF" : strerror(p.err));
    ck_assert_int_eq(p.bad, -1);
    tu_peer_free(&p); /* the server ends its side too: the client's linger ends */
    ck_assert(tu_run_until_fn(loop, tu_tr_closed, &k, 2000, 5));
    ck_assert_msg(k.reason == RX_CLOSE_LOCAL || k.reason == RX_CLOSE_PEER, "closed with %d (%d)",
                  k.reason, k.err);
    ck_assert_int_eq(k.err, 0);
    ck_assert_int_eq(k.opens, 0);
    rx_loop_free(loop);
    close(lfd);
}
END_TEST

/* issue 9 item 6: a connect that keeps retrying while memory is short ends one way or the other:
 * with every rx_sys allocation failing from the moment the first attempt (to a refusing port)
 * failed, the connection connects or gets on_close (RX_CLOSE_ERROR) within 2 s; it never stays
 * CONNECTING with nothing left to wake it. (A retry used to need a new channel, and when that
 * failed the connection was left waiting forever.) _i: 1 with a per-attempt timeout (its timer is
 * armed before allocations fail), 0 without. */
START_TEST(test_item6_retry_under_enomem_never_hangs) {
    rx_loop *loop = rx_loop_new();
    char addr[64];
    tu_addr(addr, sizeof(addr), tu_free_port());
    tu_tr k = {0};
    rx_connect_opts o = {.addr = addr, .timeout_ms = _i ? 1000 : 0, .retries = 2, .backoff_ms = 20};
    rx_conn *c = client(loop, o, &k);
    /* The refusal is seen by the loop from here on: every allocation fails from then. */
    tu_fail_allocs();
    unsigned long long deadline = tu_now_ms() + 2000;
    while (k.closes == 0 && k.opens == 0 && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    rx_sys_reset();
    ck_assert_msg(k.closes == 1 || k.opens == 1, "no on_open nor on_close after 2 s (state %d)",
                  rx_conn_get_state(c));
    if (k.closes) {
        ck_assert_int_eq(k.reason, RX_CLOSE_ERROR);
        ck_assert_msg(k.err == -ENOMEM || k.err == -ECONNREFUSED, "err %d", k.err);
    }
    rx_loop_free(loop);
    ck_assert_int_eq(k.closes, 1);
}
END_TEST

/* ---- 5,000 concurrent connections ---- */

#define MANY 5000

static struct many {
    int opens, closes, good, bad, server_closes;
    int id[MANY];
    rx_buffer in[MANY];
} * M;

static void m_open(rx_conn *c, void *arg) {
    (void)c;
    (void)arg;
    M->opens++;
}
static void m_data(rx_conn *c, rx_buffer *in, void *arg) {
    int i = *(int *)arg;
    ck_assert_int_eq(rx_buffer_append(&M->in[i], rx_buffer_peek(in), rx_buffer_len(in)), 0);
    rx_buffer_consume(in, rx_buffer_len(in));
    char want[32];
    int n = snprintf(want, sizeof(want), "message %d", i);
    if (rx_buffer_len(&M->in[i]) < (size_t)n)
        return;
    if (rx_buffer_len(&M->in[i]) == (size_t)n && memcmp(rx_buffer_peek(&M->in[i]), want, n) == 0)
        M->good++;
    else
        M->bad++;
    rx_conn_close(c);
}
static void m_close(rx_conn *c, rx_close_reason r, int err, void *arg) {
    (void)c;
    (void)err;
    int i = *(int *)arg;
    M->closes++;
    if (r != RX_CLOSE_LOCAL)
        M->bad++;
    rx_buffer_free(&M->in[i]);
}
static void ms_close(rx_conn *c, rx_close_reason r, int err, void *arg) {
    (void)c;
    (void)r;
    (void)err;
    (void)arg;
    M->server_closes++;
}
static void ms_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in));
    rx_buffer_consume(in, rx_buffer_len(in));
}

static bool many_done(void *arg) {
    (void)arg;
    return M->closes == MANY && M->server_closes == MANY;
}

START_TEST(test_5000_concurrent) {
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 2 * MANY + 100) {
        fprintf(stderr, "test_5000_concurrent: RLIMIT_NOFILE hard limit %llu < %d, skipped\n",
                (unsigned long long)rl.rlim_max, 2 * MANY + 100);
        return;
    }
    rl.rlim_cur = rl.rlim_max;
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    M = calloc(1, sizeof(*M));
    ck_assert_ptr_nonnull(M);
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks scbs = {.on_data = ms_data, .on_close = ms_close};
    static const rx_conn_callbacks ccbs = {
        .on_open = m_open, .on_data = m_data, .on_close = m_close};
    rx_server_opts so = {.cbs = &scbs};
    rx_server *s = tu_server(loop, &so);
    char addr[64];
    tu_addr(addr, sizeof(addr), tu_server_port(s));
    unsigned long long t0 = tu_now_ms();
    for (int i = 0; i < MANY; i++) {
        M->id[i] = i;
        rx_connect_opts o = {.addr = addr, .timeout_ms = 20000, .cbs = &ccbs, .arg = &M->id[i]};
        rx_conn *c = rx_connect(loop, &o);
        ck_assert_msg(c != NULL, "rx_connect %d: %s", i, strerror(errno));
        char msg[32];
        int n = snprintf(msg, sizeof(msg), "message %d", i);
        ck_assert_int_eq(rx_conn_send(c, msg, (size_t)n), 0);
        if (i % 250 == 249)
            ck_assert_int_ge(rx_loop_run_once(loop, 0), 0); /* let the server accept */
    }
    ck_assert_msg(tu_run_until_fn(loop, many_done, NULL, 28000, 10),
                  "after %llu ms: %d opened, %d closed, %d good, %d bad, %d server closes",
                  tu_now_ms() - t0, M->opens, M->closes, M->good, M->bad, M->server_closes);
    ck_assert_int_eq(M->opens, MANY);
    ck_assert_int_eq(M->good, MANY);
    ck_assert_int_eq(M->bad, 0);
    ck_assert_uint_eq(rx_server_accepted(s), MANY);
    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    fprintf(stderr, "5000 connections echoed in %llu ms\n", tu_now_ms() - t0);
    rx_server_free(s);
    rx_loop_free(loop);
    free(M);
    M = NULL;
}
END_TEST

static Suite *connector_suite(void) {
    Suite *s = suite_create("connector");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_connect_ok);
    tcase_add_test(tc, test_bad_address);
    tcase_add_test(tc, test_bind_local_address);
    tcase_add_test(tc, test_refused);
    tcase_add_test(tc, test_retries_exhausted_backoff);
    tcase_add_test(tc, test_retry_until_server_appears);
    tcase_add_test(tc, test_connect_timeout);
    tcase_add_test(tc, test_data_while_connecting);
    tcase_add_test(tc, test_shutdown_while_connecting);
    tcase_add_test(tc, test_close_while_connecting);
    tcase_add_test(tc, test_close_while_connecting_in_callback);
    tcase_add_test(tc, test_close_during_backoff);
    tcase_add_test(tc, test_close_in_on_open);
    tcase_add_test(tc, test_loop_free_while_connecting);
    tcase_add_test(tc, test_item20_send_then_close_while_connecting);
    tcase_add_loop_test(tc, test_item6_retry_under_enomem_never_hangs, 0, 2);

    TCase *many = tu_tcase(s, "many", 60);
    tcase_add_test(many, test_5000_concurrent);
    return s;
}

int main(void) { return tu_main(connector_suite()); }
