/* Tests for rx_server over real TCP on 127.0.0.1: accepting and echoing, addresses, the
 * connection limit, idle timeouts, graceful stop in its two deadlines, freeing with live
 * connections, and surviving EMFILE in a child process with a low fd limit. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rx/rx.h>

#include "sys.h"
#include "testutil.h"

/* ---- helpers ---- */

#define MAXC 16

/* What the server's connections reported, one slot per accepted connection. */
struct sc {
    rx_conn *c;
    int port; /* the client's port (the connection's peer) */
    int opens, datas, closes, late;
    rx_close_reason reason;
    int err;
    unsigned long long open_ms, close_ms;
    rx_server *server_at_close; /* rx_conn_server in on_close */
};

static struct srv {
    struct sc conns[MAXC];
    int n;
    int closes;
    bool echo;
    bool big_on_open;        /* on_open sends 8 MiB into a small send buffer */
    rx_server *free_in_data; /* on_data frees this server */
    bool close_before_free;  /* ... after closing its own connection */
    rx_server *stop_in_data; /* on_data stops this server */
    int stopped;             /* on_stopped calls */
    int stop_calls;          /* on_stop calls */
    int closes_at_stopped;   /* closes seen when on_stopped ran */
    unsigned long long stopped_ms;
} S;

static void srv_reset(void) { memset(&S, 0, sizeof(S)); }

static struct sc *slot_by_port(int port) {
    for (int i = 0; i < S.n; i++)
        if (S.conns[i].port == port)
            return &S.conns[i];
    return NULL;
}

static void s_open(rx_conn *c, void *arg) {
    ck_assert_ptr_eq(arg, &S);                /* the server's arg, */
    ck_assert_ptr_null(rx_conn_arg(c));       /* not the connection's: it has none yet */
    ck_assert_ptr_nonnull(rx_conn_server(c)); /* (which is where the server's arg is found) */
    ck_assert_ptr_eq(rx_server_arg(rx_conn_server(c)), &S);
    ck_assert_int_lt(S.n, MAXC);
    struct sc *sc = &S.conns[S.n++];
    sc->c = c;
    sc->opens++;
    sc->open_ms = tu_now_ms();
    rx_addr peer;
    ck_assert_int_eq(rx_conn_peer_addr(c, &peer), 0);
    sc->port = rx_addr_port(&peer);
    rx_conn_set_arg(c, sc);
    if (S.big_on_open) {
        int small = 16 * KiB;
        setsockopt(rx_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
        char *p = malloc(8 * MiB);
        tu_pattern_fill(p, 0, 8 * MiB);
        ck_assert_int_eq(rx_conn_send(c, p, 8 * MiB), 0);
        free(p);
    }
}

static void s_data(rx_conn *c, rx_buffer *in, void *arg) {
    struct sc *sc = arg;
    if (sc->closes)
        sc->late++;
    sc->datas++;
    if (S.echo)
        ck_assert_int_eq(rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in)), 0);
    rx_buffer_consume(in, rx_buffer_len(in));
    if (S.free_in_data) {
        rx_server *s = S.free_in_data;
        S.free_in_data = NULL;
        if (S.close_before_free)
            rx_conn_abort(c);
        rx_server_free(s);
    }
    if (S.stop_in_data) {
        rx_server *s = S.stop_in_data;
        S.stop_in_data = NULL;
        rx_server_stop(s, 100, NULL, NULL);
    }
}

static void s_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    struct sc *sc = arg;
    sc->closes++;
    sc->server_at_close = rx_conn_server(c);
    sc->reason = reason;
    sc->err = err;
    sc->close_ms = tu_now_ms();
    S.closes++;
}

static const rx_conn_callbacks s_cbs = {
    .on_open = s_open,
    .on_data = s_data,
    .on_close = s_close,
};

static rx_server *server_new(rx_loop *loop, rx_server_opts *o) {
    if (!o->cbs)
        o->cbs = &s_cbs;
    o->arg = &S;
    return tu_server(loop, o);
}

/* Connects n clients to port (their fds into cl) and waits until the server opened them all. */
static void connect_clients(rx_loop *loop, int port, int *cl, int n) {
    for (int i = 0; i < n; i++) {
        cl[i] = tu_tcp_connect(port, true);
        ck_assert_int_ge(cl[i], 0);
    }
    ck_assert(tu_run_until_count(loop, &S.n, n, 2000));
}

static bool stopped(void *arg) {
    (void)arg;
    return S.stopped > 0;
}

static void on_stopped(void *arg) {
    ck_assert_ptr_eq(arg, &S);
    S.stopped++;
    S.closes_at_stopped = S.closes;
    S.stopped_ms = tu_now_ms();
}

/* Waits (running the loop) until fd has n bytes or ends; returns what was read. */
static size_t client_read(rx_loop *loop, int fd, char *buf, size_t n, int max_ms, bool *eof,
                          int *err) {
    size_t got = 0;
    *eof = false;
    *err = 0;
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (got < n && tu_now_ms() < deadline) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0) {
            *eof = true;
            break;
        }
        if (errno != EAGAIN && errno != EINTR) {
            *err = errno;
            break;
        }
        if (loop)
            ck_assert_int_ge(rx_loop_run_once(loop, 2), 0);
        else
            tu_poll(fd, POLLIN, 10);
    }
    return got;
}

/* Sends msg from a client and expects it echoed within max_ms. */
static void expect_echo(rx_loop *loop, int fd, const char *msg, int max_ms) {
    size_t n = strlen(msg);
    ck_assert_int_eq(send(fd, msg, n, MSG_NOSIGNAL), (ssize_t)n);
    char buf[256];
    bool eof;
    int err;
    size_t got = client_read(loop, fd, buf, n, max_ms, &eof, &err);
    ck_assert_msg(got == n, "echo of '%s': got %zu bytes (eof %d, err %s)", msg, got, eof,
                  strerror(err));
    ck_assert_int_eq(memcmp(buf, msg, n), 0);
}

/* Waits for the end of the stream on a client (EOF or reset); returns true for EOF. */
static bool client_sees_end(rx_loop *loop, int fd, int max_ms, int *err) {
    char buf[65536];
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    *err = 0;
    while (tu_now_ms() < deadline) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r > 0)
            continue;
        if (r == 0)
            return true;
        if (errno != EAGAIN && errno != EINTR) {
            *err = errno;
            return false;
        }
        if (loop)
            ck_assert_int_ge(rx_loop_run_once(loop, 2), 0);
        else
            tu_poll(fd, POLLIN, 10);
    }
    *err = ETIMEDOUT;
    return false;
}

/* ---- basics ---- */

START_TEST(test_echo_and_addresses) {
    srv_reset();
    S.echo = true;
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    const rx_addr *sa = rx_server_addr(s);
    ck_assert_int_eq(sa->u.sa.sa_family, AF_INET);
    int port = tu_server_port(s);
    ck_assert_int_gt(port, 0);
    char str[RX_ADDR_STRLEN], want[64];
    ck_assert_int_gt(rx_addr_format(sa, str, sizeof(str)), 0);
    tu_addr(want, sizeof(want), port);
    ck_assert_str_eq(str, want);
    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    ck_assert_uint_eq(rx_server_accepted(s), 0);

    int cl[3];
    connect_clients(loop, port, cl, 3);
    ck_assert_uint_eq(rx_server_conn_count(s), 3);
    ck_assert_uint_eq(rx_server_accepted(s), 3);
    for (int i = 0; i < 3; i++) {
        /* Each client is one of the connections, by its port; local address = server's. */
        struct sc *sc = slot_by_port(tu_local_port(cl[i]));
        ck_assert_ptr_nonnull(sc);
        ck_assert_int_eq(sc->opens, 1);
        rx_addr local;
        ck_assert_int_eq(rx_conn_local_addr(sc->c, &local), 0);
        ck_assert_int_eq(rx_addr_port(&local), port);
        char msg[32];
        snprintf(msg, sizeof(msg), "client %d says hi", i);
        expect_echo(loop, cl[i], msg, 2000);
        ck_assert_uint_eq(rx_conn_bytes_in(sc->c), strlen(msg));
        ck_assert_uint_eq(rx_conn_bytes_out(sc->c), strlen(msg));
    }
    for (int i = 0; i < 3; i++)
        close(cl[i]);
    ck_assert(tu_run_until_count(loop, &S.closes, 3, 2000));
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(S.conns[i].closes, 1);
        ck_assert_int_eq(S.conns[i].reason, RX_CLOSE_PEER);
        ck_assert_int_eq(S.conns[i].late, 0);
        ck_assert_ptr_eq(S.conns[i].server_at_close, s);
    }
    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    ck_assert_uint_eq(rx_server_accepted(s), 3);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* A connection's context is its own: without an on_open that sets one, its callbacks get NULL,
 * never the server's arg (issue 12). */
static void *ctx_seen[2];
static void ctx_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)c;
    ctx_seen[0] = arg;
    rx_buffer_consume(in, rx_buffer_len(in));
}
static void ctx_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)reason;
    (void)err;
    ctx_seen[1] = arg;
    ck_assert_ptr_eq(rx_server_arg(rx_conn_server(c)), &S);
    S.closes++;
}

START_TEST(test_conn_context_not_servers) {
    srv_reset();
    ctx_seen[0] = ctx_seen[1] = &ctx_seen; /* neither NULL nor the server's arg */
    static const rx_conn_callbacks cbs = {.on_data = ctx_data, .on_close = ctx_close};
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {.cbs = &cbs};
    rx_server *s = server_new(loop, &o);
    ck_assert_ptr_eq(rx_server_arg(s), &S);
    int cl = tu_tcp_connect(tu_server_port(s), true);
    ck_assert_int_ge(cl, 0);
    ck_assert_int_eq(send(cl, "x", 1, MSG_NOSIGNAL), 1);
    close(cl);
    ck_assert(tu_run_until_count(loop, &S.closes, 1, 2000));
    ck_assert_ptr_null(ctx_seen[0]);
    ck_assert_ptr_null(ctx_seen[1]);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_new_errors) {
    rx_loop *loop = rx_loop_new();
    errno = 0;
    ck_assert_ptr_null(rx_server_new(loop, NULL));
    ck_assert_int_eq(errno, EINVAL);
    rx_server_opts o = {.cbs = &s_cbs};
    errno = 0;
    ck_assert_ptr_null(rx_server_new(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    o.listen = "127.0.0.1"; /* no port */
    errno = 0;
    ck_assert_ptr_null(rx_server_new(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    o.listen = "localhost:80"; /* no DNS */
    errno = 0;
    ck_assert_ptr_null(rx_server_new(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    /* A port with a listener on it already. */
    int port;
    int lfd = tu_tcp_listen(4, &port);
    char addr[64];
    tu_addr(addr, sizeof(addr), port);
    o.listen = addr;
    errno = 0;
    ck_assert_ptr_null(rx_server_new(loop, &o));
    ck_assert_int_eq(errno, EADDRINUSE);
    close(lfd);
    rx_server_free(NULL); /* no-op */
    rx_loop_free(loop);
}
END_TEST

/* ---- connection limit ---- */

START_TEST(test_max_conns) {
    srv_reset();
    S.echo = true;
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {.max_conns = 2};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    int ab[2];
    connect_clients(loop, port, ab, 2);
    int a = ab[0], b = ab[1];
    int c = tu_tcp_connect(port, true);
    ck_assert_int_ge(c, 0);
    /* The third one is closed at once. */
    int err;
    unsigned long long t0 = tu_now_ms();
    bool eof = client_sees_end(loop, c, 2000, &err);
    ck_assert_msg(eof || err == ECONNRESET, "extra connection not closed: %s", strerror(err));
    ck_assert_uint_lt(tu_now_ms() - t0, 1000);
    ck_assert_int_eq(S.n, 2); /* no on_open for it */
    ck_assert_uint_eq(rx_server_conn_count(s), 2);
    expect_echo(loop, a, "a", 2000);
    expect_echo(loop, b, "b", 2000);
    close(c);
    /* Room again after one leaves. */
    close(a);
    ck_assert(tu_run_until_count(loop, &S.closes, 1, 2000));
    ck_assert_uint_eq(rx_server_conn_count(s), 1);
    int d = tu_tcp_connect(port, true);
    ck_assert(tu_run_until_count(loop, &S.n, 3, 2000));
    expect_echo(loop, d, "d", 2000);
    ck_assert_uint_eq(rx_server_conn_count(s), 2);
    close(b);
    close(d);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* ---- idle timeout closes only idle connections ---- */

START_TEST(test_idle_timeout_only_idle) {
    srv_reset();
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {.conn = {.idle_timeout_ms = 150}};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    unsigned long long t0 = tu_now_ms();
    int silent = tu_tcp_connect(port, true);
    int active = tu_tcp_connect(port, true);
    ck_assert_int_ge(active, 0);
    ck_assert(tu_run_until_count(loop, &S.n, 2, 1000));
    struct sc *ss = slot_by_port(tu_local_port(silent));
    struct sc *sa = slot_by_port(tu_local_port(active));
    ck_assert_ptr_nonnull(ss);
    ck_assert_ptr_nonnull(sa);
    /* The active one sends a byte every 50 ms for 500 ms. */
    unsigned long long last = 0;
    while (tu_now_ms() - t0 < 500) {
        if (tu_now_ms() - last >= 50) {
            ck_assert_int_eq(send(active, "b", 1, MSG_NOSIGNAL), 1);
            last = tu_now_ms();
        }
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    }
    ck_assert_int_eq(ss->closes, 1);
    ck_assert_int_eq(ss->reason, RX_CLOSE_TIMEOUT);
    ck_assert_uint_ge(ss->close_ms - t0, 140);
    ck_assert_uint_lt(ss->close_ms - t0, 1000);
    ck_assert_int_eq(sa->closes, 0);
    ck_assert_int_ge(sa->datas, 5);
    int err;
    ck_assert(client_sees_end(loop, silent, 1000, &err));
    /* Once quiet, the active one times out as well, about 150 ms after its last byte. */
    ck_assert(tu_run_until_count(loop, &S.closes, 2, 2000));
    ck_assert_int_eq(sa->reason, RX_CLOSE_TIMEOUT);
    ck_assert_uint_ge(sa->close_ms - last, 140);
    ck_assert_uint_lt(sa->close_ms - last, 1000);
    close(silent);
    close(active);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* ---- graceful stop ---- */

START_TEST(test_stop_refuses_new_closes_idle_after_deadline) {
    srv_reset();
    S.echo = true;
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    int a;
    connect_clients(loop, port, &a, 1);
    /* Deadlines count from the loop's cached time, which the timers use. */
    unsigned long long t0 = rx_loop_now_ms(loop);
    rx_server_stop(s, 150, on_stopped, &S);
    rx_server_stop(s, 10, on_stopped, &S); /* a second stop changes nothing */
    ck_assert_int_eq(S.stopped, 0);
    /* New connections are refused at once. */
    errno = 0;
    ck_assert_int_eq(tu_tcp_connect(port, true), -1);
    ck_assert_int_eq(errno, ECONNREFUSED);
    /* The open connection goes on until the deadline. */
    tu_run_for(loop, 50);
    expect_echo(loop, a, "still here", 1000);
    ck_assert_int_eq(S.conns[0].closes, 0);
    ck_assert(tu_run_until_fn(loop, stopped, NULL, 2000, 5));
    ck_assert_int_eq(S.conns[0].closes, 1);
    ck_assert_int_eq(S.conns[0].reason, RX_CLOSE_LOCAL);
    ck_assert_uint_ge(S.conns[0].close_ms - t0, 140);
    ck_assert_uint_lt(S.conns[0].close_ms - t0, 1000);
    ck_assert_int_eq(S.closes_at_stopped, 1); /* on_stopped after the last close */
    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    int err;
    ck_assert(client_sees_end(loop, a, 1000, &err));
    tu_run_for(loop, 100);
    ck_assert_int_eq(S.stopped, 1);
    close(a);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* on_stop tells each connection first: one that closes at once (an idle keep-alive connection)
 * does not wait for the deadline (issue 12's "server stop tells the application first"). */
static void close_on_stop(rx_conn *c, void *arg) {
    (void)arg;
    S.stop_calls++;
    rx_conn_close(c);
}

START_TEST(test_stop_tells_conns_first) {
    srv_reset();
    rx_loop *loop = rx_loop_new();
    static const rx_conn_callbacks cbs = {
        .on_open = s_open, .on_data = s_data, .on_stop = close_on_stop, .on_close = s_close};
    rx_server_opts o = {.cbs = &cbs};
    rx_server *s = server_new(loop, &o);
    int cl[3];
    connect_clients(loop, tu_server_port(s), cl, 3);
    unsigned long long t0 = tu_now_ms();
    rx_server_stop(s, 5000, on_stopped, &S);
    for (int i = 0; i < 3; i++) { /* each sees its end at once, and hangs up */
        int err;
        ck_assert(client_sees_end(loop, cl[i], 1000, &err));
        close(cl[i]);
    }
    ck_assert(tu_run_until_fn(loop, stopped, NULL, 2000, 5));
    ck_assert_int_eq(S.stop_calls, 3);
    ck_assert_int_eq(S.closes, 3);
    ck_assert_uint_lt(S.stopped_ms - t0, 1000); /* not the 5 s deadline */
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_stop_finishes_when_conns_leave) {
    srv_reset();
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    int ab[2];
    connect_clients(loop, port, ab, 2);
    int a = ab[0], b = ab[1];
    unsigned long long t0 = tu_now_ms();
    rx_server_stop(s, 5000, on_stopped, &S);
    tu_run_for(loop, 30);
    close(a);
    tu_run_for(loop, 30);
    ck_assert_int_eq(S.stopped, 0); /* one left */
    close(b);
    ck_assert(tu_run_until_fn(loop, stopped, NULL, 2000, 5));
    ck_assert_uint_lt(S.stopped_ms - t0, 1000); /* long before the deadline */
    ck_assert_int_eq(S.closes_at_stopped, 2);
    ck_assert_int_eq(S.conns[0].reason, RX_CLOSE_PEER);
    ck_assert_int_eq(S.conns[1].reason, RX_CLOSE_PEER);
    tu_run_for(loop, 50);
    ck_assert_int_eq(S.stopped, 1);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_stop_without_conns) {
    srv_reset();
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    rx_server_stop(s, 1000, on_stopped, &S);
    ck_assert_int_eq(S.stopped, 0); /* never from inside rx_server_stop */
    ck_assert_int_eq(rx_loop_run_once(loop, 100), 0);
    ck_assert_int_eq(S.stopped, 1);
    errno = 0;
    ck_assert_int_eq(tu_tcp_connect(port, true), -1);
    ck_assert_int_eq(errno, ECONNREFUSED);
    tu_run_for(loop, 50);
    ck_assert_int_eq(S.stopped, 1);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_stop_aborts_conn_that_cannot_drain) {
    srv_reset();
    S.big_on_open = true;
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    int cl = tu_tcp_connect(tu_server_port(s), true);
    int small = 16 * KiB;
    setsockopt(cl, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    ck_assert(tu_run_until_count(loop, &S.n, 1, 2000));
    ck_assert_uint_gt(rx_conn_queued(S.conns[0].c), MiB);
    unsigned long long t0 = rx_loop_now_ms(loop); /* what the deadlines count from */
    rx_server_stop(s, 100, on_stopped, &S);
    /* The client never reads: after 100 ms the connection is asked to close, after another
     * 100 ms without progress it is aborted. */
    ck_assert(tu_run_until_fn(loop, stopped, NULL, 3000, 5));
    ck_assert_int_eq(S.conns[0].closes, 1);
    ck_assert_int_eq(S.conns[0].reason, RX_CLOSE_TIMEOUT);
    ck_assert_uint_ge(S.conns[0].close_ms - t0, 190);
    ck_assert_uint_lt(S.conns[0].close_ms - t0, 1500);
    ck_assert_int_eq(S.closes_at_stopped, 1);
    int err;
    ck_assert(!client_sees_end(NULL, cl, 2000, &err));
    ck_assert_int_eq(err, ECONNRESET);
    close(cl);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_stop_from_callback) {
    srv_reset();
    S.echo = true;
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    int a;
    connect_clients(loop, port, &a, 1);
    S.stop_in_data = s;
    expect_echo(loop, a, "stop please", 2000); /* the echo still goes out */
    ck_assert_ptr_null(S.stop_in_data);
    errno = 0;
    ck_assert_int_eq(tu_tcp_connect(port, true), -1);
    ck_assert_int_eq(errno, ECONNREFUSED);
    ck_assert(tu_run_until_count(loop, &S.closes, 1, 2000));
    ck_assert_int_eq(S.conns[0].reason, RX_CLOSE_LOCAL);
    close(a);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* ---- freeing with live connections ---- */

START_TEST(test_free_live_conns_outside_loop) {
    srv_reset();
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {.conn = {.idle_timeout_ms = 10000}};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    int cl[3];
    connect_clients(loop, port, cl, 3);
    ck_assert_int_eq(send(cl[0], "x", 1, MSG_NOSIGNAL), 1); /* unread input on one */
    tu_poll(rx_conn_fd(S.conns[0].c), POLLIN, 100);
    rx_server_free(s); /* outside rx_loop_run: on_close runs from the loop, not inside the call */
    ck_assert_int_eq(S.closes, 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(S.closes, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(S.conns[i].closes, 1);
        ck_assert_int_eq(S.conns[i].reason, RX_CLOSE_LOCAL);
    }
    for (int i = 0; i < 3; i++) {
        int err;
        bool eof = client_sees_end(NULL, cl[i], 1000, &err);
        ck_assert_msg(eof || err == ECONNRESET, "client %d: %s", i, strerror(err));
        close(cl[i]);
    }
    tu_run_for(loop, 30);
    ck_assert_int_eq(S.closes, 3);
    errno = 0;
    ck_assert_int_eq(tu_tcp_connect(port, true), -1);
    ck_assert_int_eq(errno, ECONNREFUSED);
    rx_loop_free(loop);
    ck_assert_int_eq(S.closes, 3);
}
END_TEST

START_TEST(test_free_from_callback) {
    srv_reset();
    S.close_before_free = _i == 1; /* its on_close is due when the server goes */
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    int cl[3];
    connect_clients(loop, port, cl, 3);
    S.free_in_data = s;
    ck_assert_int_eq(send(cl[1], "bye", 3, MSG_NOSIGNAL), 3);
    ck_assert(tu_run_until_count(loop, &S.closes, 3, 2000));
    ck_assert_ptr_null(S.free_in_data);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(S.conns[i].closes, 1);
        ck_assert_int_eq(S.conns[i].reason, RX_CLOSE_LOCAL);
        ck_assert_int_eq(S.conns[i].late, 0);
        ck_assert_ptr_null(S.conns[i].server_at_close); /* freed before their on_close */
    }
    /* More input from the clients reaches nobody. */
    for (int i = 0; i < 3; i++)
        send(cl[i], "more", 4, MSG_NOSIGNAL);
    tu_run_for(loop, 50);
    ck_assert_int_eq(S.closes, 3);
    int datas = 0;
    for (int i = 0; i < 3; i++)
        datas += S.conns[i].datas;
    ck_assert_int_eq(datas, 1);
    for (int i = 0; i < 3; i++)
        close(cl[i]);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_loop_free_after_server_free) {
    srv_reset();
    S.big_on_open = true; /* queued output on every connection */
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {.conn = {.idle_timeout_ms = 5000, .high_water = 64 * KiB}};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    int cl[4];
    connect_clients(loop, port, cl, 4);
    ck_assert_int_eq(send(cl[2], "partial", 7, MSG_NOSIGNAL), 7);
    tu_run_for(loop, 20);
    rx_conn_close(S.conns[3].c);              /* one already closing */
    rx_server_stop(s, 10000, on_stopped, &S); /* and a stop in progress */
    rx_server_free(s);
    rx_loop_free(loop);
    ck_assert_int_eq(S.closes, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(S.conns[i].closes, 1);
        ck_assert_int_eq(S.conns[i].reason, RX_CLOSE_LOCAL);
        close(cl[i]);
    }
}
END_TEST

/* An accepted connection that cannot be registered with epoll is dropped without any callback
 * (no on_close for a connection that never had on_open), and the server goes on. */
START_TEST(test_accepted_conn_registration_fails) {
    srv_reset();
    S.echo = true;
    rx_loop *loop = rx_loop_new();
    rx_server_opts o = {0};
    rx_server *s = server_new(loop, &o);
    int port = tu_server_port(s);
    tu_inject_epoll_ctl(-1);
    tu_ctl.fail_op = EPOLL_CTL_ADD;
    tu_ctl.fail_errno = ENOSPC;
    int a = tu_tcp_connect(port, true);
    for (int i = 0; i < 5 && tu_ctl.failures == 0; i++)
        ck_assert_int_ge(rx_loop_run_once(loop, 100), 0);
    rx_sys_reset();
    ck_assert_int_ge(tu_ctl.failures, 1);
    tu_run_for(loop, 20);
    int err;
    bool eof = client_sees_end(loop, a, 1000, &err);
    /* A reset: the client must not take the drop for an orderly end. */
    ck_assert_msg(!eof && err == ECONNRESET, "dropped connection: %s",
                  eof ? "a clean end of stream" : strerror(err));
    ck_assert_int_eq(S.n, 0);
    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    ck_assert_msg(S.closes == 0, "on_close ran %d time(s) for a connection that never opened",
                  S.closes);
    /* The server still works. */
    int b;
    connect_clients(loop, port, &b, 1);
    expect_echo(loop, b, "fine", 2000);
    close(a);
    close(b);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* ---- EMFILE: a child with a low fd limit keeps serving ---- */

#define CHILD_NOFILE 64

static struct child {
    bool started, ended;
    unsigned long long cpu0, cpu1, wall0, wall1;
} ch;

static unsigned long long cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (unsigned long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000u +
           (unsigned long long)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000u;
}

static void child_ctl(rx_channel *c, uint32_t ready, void *arg) {
    (void)ready;
    rx_loop *loop = arg;
    char buf[16];
    ssize_t n = read(rx_channel_fd(c), buf, sizeof(buf));
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN)
            return;
        rx_channel_close(c);
        rx_loop_stop(loop);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == 'S') {
            ch.started = true;
            ch.cpu0 = cpu_ms();
            ch.wall0 = tu_now_ms();
        } else if (buf[i] == 'E') {
            ch.ended = true;
            ch.cpu1 = cpu_ms();
            ch.wall1 = tu_now_ms();
        }
    }
}

static void child_echo(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in));
    rx_buffer_consume(in, rx_buffer_len(in));
}

/* Runs in the forked child; reports through the exit status. */
static int emfile_child(int port_wr, int ctl_rd) {
    alarm(30);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 20;
    rl.rlim_cur = CHILD_NOFILE;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 21;
    rx_loop *loop = rx_loop_new();
    if (!loop)
        return 22;
    static const rx_conn_callbacks cbs = {.on_data = child_echo};
    rx_server_opts o = {.listen = "127.0.0.1:0", .cbs = &cbs, .listener = {.retry_ms = 50}};
    rx_server *s = rx_server_new(loop, &o);
    if (!s)
        return 23;
    int port = rx_addr_port(rx_server_addr(s));
    if (write(port_wr, &port, sizeof(port)) != (ssize_t)sizeof(port))
        return 24;
    close(port_wr);
    fcntl(ctl_rd, F_SETFL, O_NONBLOCK);
    rx_channel *c = rx_channel_new(loop, ctl_rd, RX_CHANNEL_OWNS_FD, child_ctl, loop);
    if (!c || rx_channel_set_interest(c, RX_READABLE) < 0)
        return 25;
    if (rx_loop_run(loop) < 0)
        return 26;
    unsigned long long accepted = rx_server_accepted(s);
    rx_server_free(s);
    rx_loop_free(loop);
    if (!ch.started || !ch.ended)
        return 30;
    unsigned long long cpu = ch.cpu1 - ch.cpu0, wall = ch.wall1 - ch.wall0;
    if (wall < 250)
        return 31;
    if (cpu * 100 >= wall * 30)
        return 32; /* spinning while out of fds */
    if (accepted < CHILD_NOFILE - 20)
        return 33;
    return 0;
}

static const char *child_status(int code) {
    switch (code) {
    case 30:
        return "control messages lost";
    case 31:
        return "overload window too short";
    case 32:
        return "child CPU >= 30% of wall time while out of fds";
    case 33:
        return "child accepted too few connections";
    default:
        return code >= 20 && code < 30 ? "child setup failed" : "unknown";
    }
}

START_TEST(test_emfile_survival) {
    int portp[2], ctl[2];
    ck_assert_int_eq(pipe2(portp, O_CLOEXEC), 0);
    ck_assert_int_eq(pipe2(ctl, O_CLOEXEC), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(portp[0]);
        close(ctl[1]);
        _exit(emfile_child(portp[1], ctl[0]));
    }
    close(portp[1]);
    close(ctl[0]);
    int port = 0;
    ck_assert(tu_poll(portp[0], POLLIN, 5000) & POLLIN);
    ck_assert_int_eq(read(portp[0], &port, sizeof(port)), (ssize_t)sizeof(port));
    close(portp[0]);

    /* A client accepted before the overload. */
    int first = tu_tcp_connect(port, true);
    ck_assert_int_ge(first, 0);
    expect_echo(NULL, first, "before", 2000);

    /* Overload: far more clients than the child has fds, arriving over ~300 ms. */
    ck_assert_int_eq(write(ctl[1], "S", 1), 1);
    enum { FLOOD = 200 };
    int flood[FLOOD];
    int nflood = 0;
    bool checked = false;
    unsigned long long t0 = tu_now_ms();
    while (tu_now_ms() - t0 < 320) {
        if (nflood < FLOOD && (tu_now_ms() - t0) * FLOOD / 300 >= (unsigned long long)nflood) {
            flood[nflood] = tu_tcp_connect(port, true);
            ck_assert_int_ge(flood[nflood], 0);
            nflood++;
        } else {
            usleep(1000);
        }
        if (nflood == FLOOD / 2 && !checked) {
            expect_echo(NULL, first, "during", 2000); /* still served */
            checked = true;
        }
    }
    expect_echo(NULL, first, "late in the overload", 2000);
    ck_assert_int_eq(write(ctl[1], "E", 1), 1);
    ck_assert_int_gt(nflood, CHILD_NOFILE);
    /* The child cannot hold the last ones: they are shed (accepted and closed at once), not
     * left hanging in the backlog. */
    int err;
    bool eof = client_sees_end(NULL, flood[nflood - 1], 2000, &err);
    ck_assert_msg(eof || err == ECONNRESET, "last flood client not shed: %s", strerror(err));

    /* Some go away; new clients are accepted again. */
    for (int i = 0; i < nflood; i++)
        close(flood[i]);
    int again = tu_tcp_connect(port, true);
    ck_assert_int_ge(again, 0);
    expect_echo(NULL, again, "after", 3000);
    expect_echo(NULL, first, "first again", 2000);
    close(again);
    close(first);
    close(ctl[1]); /* the child stops */

    int status = 0;
    unsigned long long deadline = tu_now_ms() + 10000;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && tu_now_ms() < deadline)
        usleep(5000);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        ck_abort_msg("child did not exit");
    }
    ck_assert_msg(WIFEXITED(status), "child killed by signal %d",
                  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    ck_assert_msg(WEXITSTATUS(status) == 0, "child failed: %d (%s)", WEXITSTATUS(status),
                  child_status(WEXITSTATUS(status)));
}
END_TEST

static Suite *server_suite(void) {
    Suite *s = suite_create("server");
    /* First, so that under CK_FORK=no (valgrind) the forked child inherits no leak from an
     * earlier failed test, which valgrind would report as the child's own. */
    TCase *emfile = tu_tcase(s, "emfile", 30);
    tcase_add_test(emfile, test_emfile_survival);
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_echo_and_addresses);
    tcase_add_test(tc, test_new_errors);
    tcase_add_test(tc, test_conn_context_not_servers);
    tcase_add_test(tc, test_max_conns);
    tcase_add_test(tc, test_idle_timeout_only_idle);
    tcase_add_test(tc, test_stop_refuses_new_closes_idle_after_deadline);
    tcase_add_test(tc, test_stop_finishes_when_conns_leave);
    tcase_add_test(tc, test_stop_tells_conns_first);
    tcase_add_test(tc, test_stop_without_conns);
    tcase_add_test(tc, test_stop_aborts_conn_that_cannot_drain);
    tcase_add_test(tc, test_stop_from_callback);
    tcase_add_test(tc, test_free_live_conns_outside_loop);
    tcase_add_loop_test(tc, test_free_from_callback, 0, 2);
    tcase_add_test(tc, test_loop_free_after_server_free);
    tcase_add_test(tc, test_accepted_conn_registration_fails);
    return s;
}

int main(void) { return tu_main(server_suite()); }
