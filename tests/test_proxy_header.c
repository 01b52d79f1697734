/* The PROXY protocol: the header parser (src/tcp/proxy_header.c) and the listener that reads it.
 * Parser: a table of good and bad v1 and v2 headers (IPv4, IPv6, UNKNOWN, LOCAL, UNSPEC, unix),
 * each parsed whole, followed by request bytes, and cut at every offset: a good header's every
 * prefix asks for more and never misreads, a bad one is refused at the latest once it is whole.
 * Listener (rx_listener_opts.proxy_protocol, through rx_server over real TCP): the peer is the
 * header's client and on_data gets only what follows it, whether the header comes whole, in two
 * parts or byte by byte, also across a handoff to another loop; a missing, malformed, cut or late
 * header closes the connection and is counted; a listener without the option passes it on as
 * data; connections still waiting for their header are closed when the listener or the loop
 * goes. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rx/rx.h>

#include "proxy_header.h"
#include "testutil.h"

#define SIG "\r\n\r\n\0\r\nQUIT\n"

struct good {
    const char *name;
    const char *bytes;
    size_t len;
    bool local;
    const char *src, *dst; /* as rx_addr_format writes them; NULL when local */
};

#define TEXT(s) s, sizeof(s) - 1

static const struct good goods[] = {
    {"v1 tcp4", TEXT("PROXY TCP4 192.0.2.1 198.51.100.7 51234 8080\r\n"), false, "192.0.2.1:51234",
     "198.51.100.7:8080"},
    {"v1 tcp6", TEXT("PROXY TCP6 2001:db8::1 ::1 65535 0\r\n"), false, "[2001:db8::1]:65535",
     "[::1]:0"},
    {"v1 longest",
     TEXT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:"
          "ffff 65535 65535\r\n"),
     false, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
     "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"},
    {"v1 unknown", TEXT("PROXY UNKNOWN\r\n"), true, NULL, NULL},
    /* 105 characters and the CRLF: v1's longest. */
    {"v1 107 bytes",
     TEXT("PROXY UNKNOWN "
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"),
     true, NULL, NULL},
    {"v1 unknown with addresses", TEXT("PROXY UNKNOWN ffff:f::1 ::2 1 2\r\n"), true, NULL, NULL},
    {"v2 proxy tcp4", TEXT(SIG "\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90"),
     false, "192.0.2.1:51234", "198.51.100.7:8080"},
    {"v2 proxy tcp4 with a TLV",
     TEXT(SIG "\x21\x11\x00\x13\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90"
              "\x04\x00\x04"
              "abcd"),
     false, "192.0.2.1:51234", "198.51.100.7:8080"},
    {"v2 proxy tcp6",
     TEXT(SIG "\x21\x21\x00\x24"
              "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
              "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01"
              "\xff\xff\x00\x50"),
     false, "[2001:db8::1]:65535", "[::1]:80"},
    {"v2 local", TEXT(SIG "\x20\x00\x00\x00"), true, NULL, NULL},
    {"v2 local with addresses",
     TEXT(SIG "\x20\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90"), true, NULL,
     NULL},
    {"v2 proxy unspec", TEXT(SIG "\x21\x00\x00\x00"), true, NULL, NULL},
};

struct bad {
    const char *name;
    const char *bytes;
    size_t len;
};

static const struct bad bads[] = {
    {"no signature", TEXT("GET / HTTP/1.1\r\n\r\n")},
    {"lower case", TEXT("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n")},
    {"v1 unknown protocol", TEXT("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n")},
    {"v1 tcp4 with an IPv6 address", TEXT("PROXY TCP4 ::1 5.6.7.8 1 2\r\n")},
    {"v1 tcp6 with an IPv4 address", TEXT("PROXY TCP6 1.2.3.4 ::1 1 2\r\n")},
    {"v1 two spaces", TEXT("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n")},
    {"v1 trailing space", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n")},
    {"v1 a field missing", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n")},
    {"v1 a field too many", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n")},
    {"v1 port too big", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n")},
    {"v1 port with a leading zero", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n")},
    {"v1 port with a sign", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n")},
    {"v1 bad address", TEXT("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n")},
    {"v1 LF alone", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")},
    {"v1 CR alone", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX")},
    {"v1 NUL", TEXT("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n")},
    /* 106 characters and the CRLF: one byte over v1's 107. */
    {"v1 one byte too long", TEXT("PROXY UNKNOWN "
                                  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                                  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n")},
    {"v1 empty", TEXT("PROXY \r\n")},
    {"v2 version 1", TEXT(SIG "\x11\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 command 2", TEXT(SIG "\x22\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 family 4", TEXT(SIG "\x21\x41\x00\x00")},
    {"v2 udp", TEXT(SIG "\x21\x12\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 tcp4 too short", TEXT(SIG "\x21\x11\x00\x08\xc0\x00\x02\x01\xc6\x33\x64\x07")},
    {"v2 tcp6 too short",
     TEXT(SIG "\x21\x21\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 over the size limit", TEXT(SIG "\x21\x11\xff\xff")},
    {"v2 signature broken", TEXT("\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00")},
};

static const char tail[] = "GET / HTTP/1.1\r\n\r\n";

static void check_good(const struct good *g, const rx_proxy_header *h) {
    ck_assert_msg(h->local == g->local, "%s: local %d", g->name, h->local);
    if (g->local)
        return;
    char s[RX_ADDR_STRLEN], d[RX_ADDR_STRLEN];
    ck_assert_int_gt(rx_addr_format(&h->src, s, sizeof(s)), 0);
    ck_assert_int_gt(rx_addr_format(&h->dst, d, sizeof(d)), 0);
    ck_assert_msg(!strcmp(s, g->src) && !strcmp(d, g->dst), "%s: %s -> %s", g->name, s, d);
}

START_TEST(test_good_headers) {
    const struct good *g = &goods[_i];
    char buf[RX_PROXY_HEADER_MAX + sizeof(tail)];
    memcpy(buf, g->bytes, g->len);
    memcpy(buf + g->len, tail, sizeof(tail) - 1);
    rx_proxy_header h;
    /* Whole, and with the request behind it: the header's length, not a byte more. */
    ck_assert_int_eq(rx_proxy_header_parse(buf, g->len, &h), (int)g->len);
    check_good(g, &h);
    ck_assert_int_eq(rx_proxy_header_parse(buf, g->len + sizeof(tail) - 1, &h), (int)g->len);
    check_good(g, &h);
    /* Cut anywhere before its end: more is needed, whatever the cut. */
    for (size_t cut = 0; cut < g->len; cut++) {
        char *part = malloc(cut ? cut : 1); /* exactly cut bytes: ASan sees a read past them */
        memcpy(part, buf, cut);
        ck_assert_msg(rx_proxy_header_parse(part, cut, &h) == 0, "%s cut at %zu", g->name, cut);
        free(part);
    }
}
END_TEST

START_TEST(test_bad_headers) {
    const struct bad *b = &bads[_i];
    rx_proxy_header h;
    ck_assert_msg(rx_proxy_header_parse(b->bytes, b->len, &h) == -EPROTO, "%s", b->name);
    for (size_t cut = 0; cut < b->len; cut++) {
        char *part = malloc(cut ? cut : 1);
        memcpy(part, b->bytes, cut);
        int rc = rx_proxy_header_parse(part, cut, &h);
        ck_assert_msg(rc == 0 || rc == -EPROTO, "%s cut at %zu: %d", b->name, cut, rc);
        free(part);
    }
}
END_TEST

/* ---- the listener ---- */

#define MAXC 8

/* What the server's connections saw, on the test's loop (or any loop, for the atomics). */
static struct pp {
    int opens, closes;
    char peer[MAXC][RX_ADDR_STRLEN];
    int local_port[MAXC];
    char data[256];
    size_t ndata;
    atomic_int opens_by_loop[2];
    atomic_int peer_ports[MAXC];
    atomic_int async_opens;
    rx_loop *loops[2];
} P;

static void pp_open(rx_conn *c, void *arg) {
    (void)arg;
    rx_addr a;
    ck_assert_int_eq(rx_conn_peer_addr(c, &a), 0);
    ck_assert_int_lt(P.opens, MAXC);
    rx_addr_format(&a, P.peer[P.opens], sizeof(P.peer[0]));
    ck_assert_int_eq(rx_conn_local_addr(c, &a), 0);
    P.local_port[P.opens] = rx_addr_port(&a);
    P.opens++;
}

static void pp_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)c;
    (void)arg;
    size_t n = rx_buffer_len(in);
    ck_assert_uint_le(P.ndata + n, sizeof(P.data));
    memcpy(P.data + P.ndata, rx_buffer_peek(in), n);
    P.ndata += n;
    rx_buffer_consume(in, n);
}

static void pp_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)c;
    (void)reason;
    (void)err;
    (void)arg;
    P.closes++;
}

static const rx_conn_callbacks pp_cbs = {
    .on_open = pp_open, .on_data = pp_data, .on_close = pp_close};

static rx_server *pp_server(rx_loop *loop, bool proxy, unsigned timeout_ms) {
    memset(&P, 0, sizeof(P));
    rx_server_opts o = {
        .cbs = &pp_cbs,
        .listener = {.proxy_protocol = proxy, .proxy_timeout_ms = timeout_ms},
    };
    return tu_server(loop, &o);
}

static void send_all(int fd, const void *buf, size_t n) {
    ck_assert_int_eq(send(fd, buf, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Runs the loop until the client fd sees its end (EOF or a reset) or max_ms passes. */
static bool client_ended(rx_loop *loop, int fd, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (tu_now_ms() < deadline) {
        char b[256];
        ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            return true;
        if (loop)
            ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
        else
            tu_poll(fd, POLLIN, 10);
    }
    return false;
}

static bool data_is(const char *want) {
    return P.ndata == strlen(want) && memcmp(P.data, want, P.ndata) == 0;
}

static void wait_data(rx_loop *loop, const char *want) {
    unsigned long long deadline = tu_now_ms() + 2000;
    while (P.ndata < strlen(want) && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    ck_assert_msg(data_is(want), "on_data got '%.*s', wanted '%s'", (int)P.ndata, P.data, want);
}

/* Good headers as a balancer sends them: the peer each must give (NULL: the socket's own). */
static const struct {
    const char *name, *bytes;
    size_t len;
    const char *peer;
} arrivals[] = {
    {"v1 tcp4", TEXT("PROXY TCP4 192.0.2.1 198.51.100.7 51234 8080\r\n"), "192.0.2.1:51234"},
    {"v2 tcp6",
     TEXT(SIG "\x21\x21\x00\x24"
              "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
              "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01"
              "\xff\xff\x00\x50"),
     "[2001:db8::1]:65535"},
    {"v2 local (a health check)", TEXT(SIG "\x20\x00\x00\x00"), NULL},
    {"v1 unknown", TEXT("PROXY UNKNOWN\r\n"), NULL},
};
#define NARRIVALS (int)(sizeof(arrivals) / sizeof(arrivals[0]))

/* Each header whole with the data behind it (0), in two parts with a pause (1), byte by byte
 * with the loop running between bytes (2). */
START_TEST(test_listener_reads_header) {
    int way = _i / NARRIVALS;
    const char *name = arrivals[_i % NARRIVALS].name, *bytes = arrivals[_i % NARRIVALS].bytes;
    size_t len = arrivals[_i % NARRIVALS].len;
    rx_loop *loop = rx_loop_new();
    rx_server *s = pp_server(loop, true, 0);
    int port = tu_server_port(s);
    int cl = tu_tcp_connect(port, true);
    ck_assert_int_ge(cl, 0);
    char buf[RX_PROXY_HEADER_MAX + 8];
    memcpy(buf, bytes, len);
    memcpy(buf + len, "hello", 5);
    if (way == 0) {
        send_all(cl, buf, len + 5);
    } else if (way == 1) {
        send_all(cl, buf, len / 2);
        tu_run_for(loop, 30);
        ck_assert_msg(P.opens == 0, "%s: opened on half a header", name);
        send_all(cl, buf + len / 2, len - len / 2 + 5);
    } else {
        for (size_t i = 0; i + 1 < len; i++) {
            send_all(cl, buf + i, 1);
            ck_assert_int_ge(rx_loop_run_once(loop, 2), 0);
            ck_assert_msg(P.opens == 0, "%s: opened after %zu of %zu bytes", name, i + 1, len);
        }
        send_all(cl, buf + len - 1, 1);
        send_all(cl, "hello", 5);
    }
    ck_assert(tu_run_until_count(loop, &P.opens, 1, 2000));
    wait_data(loop, "hello");
    char own[64];
    snprintf(own, sizeof(own), "127.0.0.1:%d", tu_local_port(cl));
    const char *want = arrivals[_i % NARRIVALS].peer ? arrivals[_i % NARRIVALS].peer : own;
    ck_assert_msg(strcmp(P.peer[0], want) == 0, "%s: peer %s, wanted %s", name, P.peer[0], want);
    ck_assert_int_eq(P.local_port[0], port); /* the socket's own */
    ck_assert_uint_eq(rx_server_refused(s), 0);
    close(cl);
    ck_assert(tu_run_until_count(loop, &P.closes, 1, 2000));
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* What a client sends before the server must close it: no header at all (a plain request), a
 * malformed one, half a header and the end of its stream, or nothing (the 150 ms timeout). */
static const struct {
    const char *name, *bytes;
    size_t len;
    bool shut;
} refusals[] = {
    {"a request, no header", TEXT("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false},
    {"v1 with a bad port", TEXT("PROXY TCP4 192.0.2.1 198.51.100.7 51234 99999\r\nhello"), false},
    {"v2 with a bad version", TEXT(SIG "\x31\x11\x00\x0c"), false},
    {"half a v1 line, then the end", TEXT("PROXY TCP4 192.0"), true},
    {"nothing (timeout)", "", 0, false},
    {"half a v2 header (timeout)", TEXT(SIG "\x21"), false},
};
#define NREFUSALS (int)(sizeof(refusals) / sizeof(refusals[0]))

START_TEST(test_listener_refuses) {
    const char *name = refusals[_i].name;
    rx_loop *loop = rx_loop_new();
    rx_server *s = pp_server(loop, true, 150);
    int cl = tu_tcp_connect(tu_server_port(s), true);
    ck_assert_int_ge(cl, 0);
    unsigned long long t0 = tu_now_ms();
    if (refusals[_i].len)
        send_all(cl, refusals[_i].bytes, refusals[_i].len);
    if (refusals[_i].shut)
        ck_assert_int_eq(shutdown(cl, SHUT_WR), 0);
    ck_assert_msg(client_ended(loop, cl, 3000), "%s: still open after 3 s", name);
    unsigned long long took = tu_now_ms() - t0;
    bool waits = refusals[_i].len == 0 || strstr(name, "timeout");
    /* A late header is refused at the timeout, not before; anything else at once. */
    ck_assert_msg(waits ? took >= 140 : took < 140, "%s: closed after %llu ms", name, took);
    ck_assert_int_eq(P.opens, 0);
    ck_assert_uint_eq(rx_server_refused(s), 1);
    ck_assert_uint_eq(rx_server_accepted(s), 0);
    close(cl);
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

/* Without the option nothing is parsed: a header is the connection's first bytes. */
START_TEST(test_listener_without_option) {
    rx_loop *loop = rx_loop_new();
    rx_server *s = pp_server(loop, false, 0);
    int cl = tu_tcp_connect(tu_server_port(s), true);
    ck_assert_int_ge(cl, 0);
    const char line[] = "PROXY TCP4 192.0.2.1 198.51.100.7 51234 8080\r\n";
    send_all(cl, line, sizeof(line) - 1);
    wait_data(loop, line);
    char own[64];
    snprintf(own, sizeof(own), "127.0.0.1:%d", tu_local_port(cl));
    ck_assert_str_eq(P.peer[0], own);
    close(cl);
    ck_assert(tu_run_until_count(loop, &P.closes, 1, 2000));
    rx_server_free(s);
    rx_loop_free(loop);
}
END_TEST

static void count_accept(rx_listener *l, int fd, const rx_addr *peer, void *arg) {
    (void)l;
    (void)peer;
    (*(int *)arg)++;
    close(fd);
}

/* Connections waiting for their header belong to the listener: freeing it (0), or freeing the
 * loop with the listener still alive (1), closes them (ASan and valgrind see no fd or memory
 * left behind), and a timeout armed for them does not outlive it. */
START_TEST(test_pending_closed_with_listener) {
    rx_loop *loop = rx_loop_new();
    int handed = 0;
    rx_listener_opts lo = {.proxy_protocol = true, .proxy_timeout_ms = 100};
    rx_listener *l = rx_listener_new(loop, "127.0.0.1:0", &lo, count_accept, &handed);
    ck_assert_ptr_nonnull(l);
    int port = rx_addr_port(rx_listener_addr(l));
    int cl[3];
    for (int i = 0; i < 3; i++) {
        cl[i] = tu_tcp_connect(port, true);
        ck_assert_int_ge(cl[i], 0);
        send_all(cl[i], "PROXY TCP4 ", 11);
    }
    unsigned long long deadline = tu_now_ms() + 2000;
    while (rx_listener_accepted(l) < 3 && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    ck_assert_uint_eq(rx_listener_accepted(l), 3);
    ck_assert_int_eq(handed, 0);
    if (_i == 0) {
        rx_listener_free(l);
        tu_run_for(loop, 200); /* past the timeout: nothing may fire */
    }
    rx_loop_free(loop);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(client_ended(NULL, cl[i], 2000), "client %d still open", i);
        close(cl[i]);
    }
    ck_assert_int_eq(handed, 0);
}
END_TEST

static void async_open(rx_conn *c, void *arg) {
    (void)arg;
    rx_addr a;
    ck_assert_int_eq(rx_conn_peer_addr(c, &a), 0);
    int port = rx_addr_port(&a);
    ck_assert_int_ge(port, 1001);
    ck_assert_int_le(port, 1000 + MAXC);
    atomic_fetch_add(&P.peer_ports[port - 1001], 1);
    atomic_fetch_add(&P.opens_by_loop[rx_conn_loop(c) == P.loops[1]], 1);
    atomic_fetch_add(&P.async_opens, 1);
}

static const rx_conn_callbacks async_cbs = {.on_open = async_open};

/* Handed off to another loop, a connection keeps the header's peer. */
START_TEST(test_header_peer_survives_handoff) {
    memset(&P, 0, sizeof(P));
    rx_loop_group *g = rx_loop_group_new(2);
    ck_assert_ptr_nonnull(g);
    P.loops[0] = rx_loop_group_loop(g, 0);
    P.loops[1] = rx_loop_group_loop(g, 1);
    rx_server_opts o = {
        .cbs = &async_cbs,
        .group = g,
        .spread = RX_SPREAD_HANDOFF,
        .pick = RX_PICK_ROUND_ROBIN,
        .listener = {.proxy_protocol = true},
    };
    rx_server *s = tu_server(P.loops[0], &o);
    ck_assert_int_eq(rx_loop_group_start(g), 0);
    int cl[MAXC];
    for (int i = 0; i < MAXC; i++) {
        cl[i] = tu_tcp_connect(tu_server_port(s), true);
        ck_assert_int_ge(cl[i], 0);
        char line[64];
        int n = snprintf(line, sizeof(line), "PROXY TCP4 192.0.2.1 192.0.2.2 %d 80\r\n", 1001 + i);
        send_all(cl[i], line, (size_t)n);
    }
    ck_assert(tu_wait_atomic(&P.async_opens, MAXC, 5000));
    for (int i = 0; i < MAXC; i++)
        ck_assert_int_eq(atomic_load(&P.peer_ports[i]), 1);
    ck_assert_int_eq(atomic_load(&P.opens_by_loop[0]), MAXC / 2); /* round-robin */
    ck_assert_int_eq(atomic_load(&P.opens_by_loop[1]), MAXC / 2);
    rx_loop_group_stop(g);
    ck_assert_int_eq(tu_group_join_within(g, 5000), 0);
    rx_server_free(s);
    rx_loop_group_free(g);
    for (int i = 0; i < MAXC; i++)
        close(cl[i]);
}
END_TEST

int main(void) {

    Suite *s = suite_create("proxy_header");
    TCase *tc = tu_tcase(s, "parse", 30);
    tcase_add_loop_test(tc, test_good_headers, 0, (int)(sizeof(goods) / sizeof(goods[0])));
    tcase_add_loop_test(tc, test_bad_headers, 0, (int)(sizeof(bads) / sizeof(bads[0])));
    TCase *lc = tu_tcase(s, "listener", 30);
    tcase_add_loop_test(lc, test_listener_reads_header, 0, 3 * NARRIVALS);
    tcase_add_loop_test(lc, test_listener_refuses, 0, NREFUSALS);
    tcase_add_test(lc, test_listener_without_option);
    tcase_add_loop_test(lc, test_pending_closed_with_listener, 0, 2);
    tcase_add_test(lc, test_header_peer_survives_handoff);
    return tu_main(s);
}
