/* Tests for rx_conn_join over real TCP on 127.0.0.1: MiBs both ways with every byte checked,
 * backpressure that keeps the queues bounded, half-closes passed on each way, a reset passed on
 * as a reset, a refused connect that closes the other side at once, input buffered before the
 * join going first, the error returns, on_end exactly once (also from rx_loop_free) and a server's
 * stop, on one loop and on a loop group. */
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

#include "sys.h"
#include "testutil.h"

/* Each direction is its own slice of the pattern, so a byte sent back the way it came shows. */
#define BASE_A 0ull         /* what a's far end sends (a -> b) */
#define BASE_B 1000003ull   /* what b's far end sends (b -> a) */
#define ONE_READ (64 * KiB) /* what one read of a connection takes at most (the scratch buffer) */

/* The far end of one joined connection, driven by the test: sends `total` bytes of the pattern
 * from base_out (then shuts its write side when asked), reads and checks what comes. */
typedef struct far {
    int fd; /* -1: closed by the test */
    unsigned long long base_out, total, sent, base_in, got;
    bool shut, shut_done, reading, eof;
    long long bad; /* offset of the first wrong byte read; -1: none */
    int err, send_err;
    unsigned long long eof_ms;
} far;

static struct jt {
    rx_conn *c[2];
    far f[2];
    atomic_int ends, joined, stopped, faults;
    rx_join_end end;
    bool sample; /* record rx_conn_queued of both sides after every step */
    size_t max_queued[2];
    rx_loop *loop; /* NULL: the loops run on a group's threads */
} J;

static void far_init(far *f, int fd, unsigned long long base_out, unsigned long long base_in) {
    *f = (far){.fd = fd, .base_out = base_out, .base_in = base_in, .bad = -1, .reading = true};
}

static void far_close(far *f) {
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
}

static void far_step(far *f) {
    static char buf[64 * KiB];
    while (f->fd >= 0 && f->reading && !f->eof && !f->err) {
        ssize_t n = read(f->fd, buf, sizeof(buf));
        if (n > 0) {
            long long at = tu_pattern_check(buf, f->base_in + f->got, (size_t)n);
            if (at >= 0 && f->bad < 0)
                f->bad = (long long)f->got + at;
            f->got += (unsigned long long)n;
        } else if (n == 0) {
            f->eof = true;
            f->eof_ms = tu_now_ms();
        } else if (errno != EINTR) {
            if (errno != EAGAIN)
                f->err = errno;
            break;
        }
    }
    while (f->fd >= 0 && !f->send_err && f->sent < f->total) {
        size_t n = tu_min(sizeof(buf), (size_t)(f->total - f->sent));
        tu_pattern_fill(buf, f->base_out + f->sent, n);
        ssize_t w = send(f->fd, buf, n, MSG_NOSIGNAL);
        if (w > 0)
            f->sent += (unsigned long long)w;
        else if (errno == EAGAIN)
            break;
        else if (errno != EINTR)
            f->send_err = errno;
    }
    if (f->fd >= 0 && f->shut && !f->shut_done && f->sent == f->total) {
        ck_assert_int_eq(shutdown(f->fd, SHUT_WR), 0);
        f->shut_done = true;
    }
}

/* One step of both far ends (and the sampling of the queues). */
static void step(void) {
    far_step(&J.f[0]);
    far_step(&J.f[1]);
    for (int i = 0; J.sample && i < 2; i++) {
        size_t q = rx_conn_queued(J.c[i]);
        if (q > J.max_queued[i])
            J.max_queued[i] = q;
    }
}

/* Steps and runs the loop (or, with a group, waits 1 ms) until cond() or max_ms pass. */
static bool run_until(bool (*cond)(void), int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    for (;;) {
        step();
        if (cond())
            return true;
        if (tu_now_ms() >= deadline)
            return false;
        if (J.loop)
            ck_assert_int_ge(rx_loop_run_once(J.loop, 1), 0);
        else
            usleep(1000);
    }
}

static void run_for(int ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)ms;
    while (tu_now_ms() < deadline) {
        step();
        ck_assert_int_ge(rx_loop_run_once(J.loop, 1), 0);
    }
}

static void on_end(const rx_join_end *e, void *arg) {
    if (arg != &J)
        atomic_fetch_add(&J.faults, 1);
    J.end = *e;
    atomic_fetch_add(&J.ends, 1);
}

static const rx_join_opts join_opts = {.on_end = on_end, .arg = &J};

/* Conditions for run_until. */
static bool ended(void) { return atomic_load(&J.ends) > 0; }
static bool both_eof(void) { return J.f[0].eof && J.f[1].eof; }
static bool all_done(void) { return both_eof() && ended(); }
static bool got_all(void) { return J.f[0].got >= J.f[1].total && J.f[1].got >= J.f[0].total; }

/* A fresh J (with a loop when asked), the far ends' fds (-1: none yet). */
static void fresh(bool loop, int pa, int pb) {
    memset(&J, 0, sizeof(J));
    J.loop = loop ? rx_loop_new() : NULL;
    ck_assert(!loop || J.loop);
    far_init(&J.f[0], pa, BASE_A, BASE_B);
    far_init(&J.f[1], pb, BASE_B, BASE_A);
}

/* Two connections with callbacks cbs over fresh TCP pairs (small kernel buffers both ways when
 * `small`), each held by a reference so the test can look at it after it closed. */
static void two(const rx_conn_callbacks *cbs, bool small, const rx_conn_opts *o) {
    fresh(true, -1, -1);
    for (int i = 0; i < 2; i++) {
        J.c[i] = tu_conn_pair(J.loop, small, o, cbs, NULL, &J.f[i].fd);
        rx_conn_ref(J.c[i]);
        if (small) { /* tu_small_tcp_pair made the way out small; the way in too */
            tu_set_buf(J.f[i].fd, SO_SNDBUF, 32 * KiB);
            tu_set_buf(rx_conn_fd(J.c[i]), SO_RCVBUF, 32 * KiB);
        }
    }
}

/* two(), joined as a and b. */
static void setup(bool small, const rx_conn_opts *o) {
    two(NULL, small, o);
    ck_assert_int_eq(rx_conn_join(J.c[0], J.c[1], &join_opts), 0);
}

/* Frees the loop and everything; on_end ran exactly once, with no fault. */
static void teardown(void) {
    far_close(&J.f[0]);
    far_close(&J.f[1]);
    if (J.loop)
        rx_loop_free(J.loop);
    for (int i = 0; i < 2; i++)
        if (J.c[i])
            rx_conn_unref(J.c[i]);
    ck_assert_int_eq(atomic_load(&J.ends), 1);
    ck_assert_int_eq(atomic_load(&J.faults), 0);
}

static void assert_far_clean(const far *f, unsigned long long want) {
    ck_assert_int_eq(f->err, 0);
    ck_assert_int_eq(f->bad, -1);
    ck_assert_uint_eq(f->got, want);
}

/* ---- bytes both ways ---- */

#define BOTH (8ull * MiB)
#define HIGH (256u * KiB)

START_TEST(test_both_ways_every_byte) {
    rx_conn_opts o = {.high_water = HIGH};
    setup(true, &o);
    J.sample = true;
    for (int i = 0; i < 2; i++) {
        J.f[i].total = BOTH;
        J.f[i].shut = true;
    }
    ck_assert_msg(run_until(all_done, 60000), "a's far end got %llu, b's %llu", J.f[0].got,
                  J.f[1].got);
    assert_far_clean(&J.f[0], BOTH);
    assert_far_clean(&J.f[1], BOTH);
    /* Both streams ended by their far ends: both connections closed by themselves. */
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(J.end.reason[i], RX_CLOSE_PEER);
        ck_assert_int_eq(J.end.err[i], 0);
        ck_assert_uint_eq(J.end.bytes[i], BOTH);
        ck_assert_uint_le(J.max_queued[i], HIGH + ONE_READ);
        ck_assert_uint_eq(rx_conn_bytes_in(J.c[i]), BOTH);
        ck_assert_uint_eq(rx_conn_bytes_out(J.c[i]), BOTH);
    }
    run_for(20);
    teardown();
}
END_TEST

/* ---- backpressure: one far end stops reading for a while ---- */

#define BP_TOTAL (8ull * MiB)
#define BP_HIGH (128u * KiB)

static int slow; /* the side whose far end stops reading */
static bool slow_side_full(void) { return J.max_queued[slow] > BP_HIGH; }

/* _i: 0, b's far end is slow (a is paused); 1, a's far end is slow (b is paused). */
START_TEST(test_backpressure_pauses_and_bounds) {
    slow = _i == 0 ? 1 : 0;
    int fast = 1 - slow;
    rx_conn_opts o = {.high_water = BP_HIGH};
    setup(true, &o);
    J.sample = true;
    J.f[fast].total = BP_TOTAL;
    J.f[slow].reading = false;
    /* Generous: under ThreadSanitizer, next to another suite, it once took more than 5 s. */
    ck_assert_msg(run_until(slow_side_full, 30000),
                  "slow side's queue at most %zu (now %zu), fast side read %llu, its far end sent "
                  "%llu",
                  J.max_queued[slow], rx_conn_queued(J.c[slow]), rx_conn_bytes_in(J.c[fast]),
                  J.f[fast].sent);
    /* The slow side's queue passed its mark: the fast side reads nothing more, its far end is
     * held up by the kernel's (small) buffers, and the queue stays where it is. */
    run_for(100);
    unsigned long long in = rx_conn_bytes_in(J.c[fast]);
    run_for(200);
    ck_assert_uint_eq(rx_conn_bytes_in(J.c[fast]), in);
    ck_assert_uint_lt(J.f[fast].sent, 2 * MiB);
    ck_assert_uint_gt(rx_conn_queued(J.c[slow]), BP_HIGH / 2); /* the kernel may take a little */
    ck_assert_uint_le(J.max_queued[slow], BP_HIGH + ONE_READ);
    /* It reads again: everything arrives, intact, and the queue never grew past the bound. */
    J.f[slow].reading = true;
    J.f[fast].shut = J.f[slow].shut = true;
    ck_assert_msg(run_until(all_done, 60000), "got %llu of %llu", J.f[slow].got, BP_TOTAL);
    assert_far_clean(&J.f[slow], BP_TOTAL);
    assert_far_clean(&J.f[fast], 0);
    ck_assert_uint_le(J.max_queued[slow], BP_HIGH + ONE_READ);
    ck_assert_uint_gt(rx_conn_bytes_in(J.c[fast]), in);
    ck_assert_uint_eq(J.end.bytes[fast], BP_TOTAL);
    ck_assert_uint_eq(J.end.bytes[slow], 0);
    ck_assert_int_eq(J.end.reason[0], RX_CLOSE_PEER);
    ck_assert_int_eq(J.end.reason[1], RX_CLOSE_PEER);
    teardown();
}
END_TEST

/* ---- half-close, each way, with data in flight ---- */

#define HC (1ull * MiB)

static int first; /* the side whose far end ends its stream first */

static bool first_eof_seen(void) {
    return J.f[first].shut_done && (rx_conn_ended(J.c[first]) & RX_CONN_READ_ENDED);
}
static bool second_got_eof(void) { return J.f[1 - first].eof || J.f[1 - first].err; }
static bool first_got_eof(void) { return J.f[first].eof || J.f[first].err; }

/* _i: 0, a's far end sends and shuts first; 1, b's. */
START_TEST(test_half_close_each_way) {
    first = _i;
    int second = 1 - first;
    rx_conn_opts o = {.high_water = 4 * MiB}; /* the whole first stream fits in the queue */
    setup(true, &o);
    J.f[first].total = HC;
    J.f[first].shut = true;
    J.f[second].reading = false;
    ck_assert(run_until(first_eof_seen, 10000));
    /* The end reached rx while most of the stream still waits in the other side's queue: that
     * side's write side is shut only once the queue is written. */
    ck_assert_uint_gt(rx_conn_queued(J.c[second]), HC / 2);
    ck_assert_int_eq(rx_conn_get_state(J.c[first]), RX_CONN_HALF_CLOSED);
    ck_assert_int_eq(rx_conn_get_state(J.c[second]), RX_CONN_HALF_CLOSED);
    ck_assert_uint_eq(rx_conn_ended(J.c[second]), RX_CONN_WRITE_ENDED);
    J.f[second].reading = true;
    ck_assert(run_until(second_got_eof, 10000));
    assert_far_clean(&J.f[second], HC);
    ck_assert(J.f[second].eof);
    /* The other direction still flows, then ends too. */
    ck_assert_int_eq(atomic_load(&J.ends), 0);
    ck_assert_int_eq(rx_conn_get_state(J.c[first]), RX_CONN_HALF_CLOSED);
    J.f[second].total = HC;
    J.f[second].shut = true;
    ck_assert(run_until(first_got_eof, 10000));
    assert_far_clean(&J.f[first], HC);
    ck_assert(J.f[first].eof);
    ck_assert(run_until(ended, 5000));
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(J.end.reason[i], RX_CLOSE_PEER);
        ck_assert_int_eq(J.end.err[i], 0);
        ck_assert_uint_eq(J.end.bytes[i], HC);
    }
    run_for(20);
    teardown();
}
END_TEST

/* ---- a reset passes on as a reset ---- */

static int reset_side;
static bool other_sees_end(void) {
    far *f = &J.f[1 - reset_side];
    return f->eof || f->err;
}

/* _i: 0, a's far end resets; 1, b's. */
START_TEST(test_reset_passed_on) {
    reset_side = _i;
    setup(false, NULL);
    J.f[0].total = J.f[1].total = 64 * KiB;
    ck_assert(run_until(got_all, 5000));
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    ck_assert_int_eq(setsockopt(J.f[reset_side].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    far_close(&J.f[reset_side]);
    ck_assert(run_until(other_sees_end, 5000));
    ck_assert_msg(J.f[1 - reset_side].err == ECONNRESET, "the other far end saw %s",
                  J.f[1 - reset_side].eof ? "an EOF" : strerror(J.f[1 - reset_side].err));
    ck_assert(run_until(ended, 5000));
    ck_assert_int_eq(J.end.reason[reset_side], RX_CLOSE_RESET);
    ck_assert_int_lt(J.end.err[reset_side], 0);
    ck_assert_int_eq(J.end.reason[1 - reset_side], RX_CLOSE_LOCAL); /* rx_conn_abort */
    ck_assert_uint_eq(J.end.bytes[0], 64 * KiB);
    ck_assert_uint_eq(J.end.bytes[1], 64 * KiB);
    teardown();
}
END_TEST

/* ---- b still connecting, and its connect is refused ---- */

static bool a_far_ended(void) { return J.f[0].eof || J.f[0].err; }

START_TEST(test_refused_connect_closes_a_at_once) {
    fresh(true, -1, -1);
    J.c[0] = tu_conn_pair(J.loop, false, NULL, NULL, NULL, &J.f[0].fd);
    rx_conn_ref(J.c[0]);
    char addr[64];
    tu_addr(addr, sizeof(addr), tu_free_port());
    rx_connect_opts co = {.addr = addr, .timeout_ms = 2000};
    unsigned long long t0 = tu_now_ms();
    rx_conn *b = rx_connect(J.loop, &co);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(rx_conn_get_state(b), RX_CONN_CONNECTING);
    ck_assert_int_eq(rx_conn_join(J.c[0], b, &join_opts), 0);
    ck_assert(run_until(a_far_ended, 2000));
    /* a was closed gracefully: its far end reads an orderly end, well within 100 ms of the
     * refusal (which came after t0). */
    ck_assert_msg(J.f[0].eof && J.f[0].err == 0, "a's far end: %s", strerror(J.f[0].err));
    ck_assert_msg(J.f[0].eof_ms - t0 < 100, "EOF %llu ms after the connect began",
                  J.f[0].eof_ms - t0);
    ck_assert_int_eq(atomic_load(&J.ends), 0); /* a waits for its peer's end */
    far_close(&J.f[0]);
    ck_assert(run_until(ended, 5000));
    ck_assert_int_eq(J.end.reason[1], RX_CLOSE_ERROR);
    ck_assert_int_eq(J.end.err[1], -ECONNREFUSED);
    ck_assert(J.end.opened[0]);
    ck_assert(!J.end.opened[1]); /* the connect never completed */
    ck_assert_int_eq(J.end.reason[0], RX_CLOSE_LOCAL);
    ck_assert_uint_eq(J.end.bytes[0] + J.end.bytes[1], 0);
    run_for(20);
    teardown();
}
END_TEST

/* ---- input buffered before the join goes first ---- */

/* A user's on_data that keeps what came (consumes nothing) and stops reading. */
static void keep_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)in;
    (void)arg;
    rx_conn_pause_read(c);
}

static bool both_buffered(void) {
    return rx_buffer_len(rx_conn_input(J.c[0])) == 7 && rx_buffer_len(rx_conn_input(J.c[1])) == 7;
}
static bool both_got_7(void) { return J.f[0].got >= 7 && J.f[1].got >= 7; }
static bool both_got_14(void) { return J.f[0].got >= 14 && J.f[1].got >= 14; }

/* The far ends write raw pattern bytes, so what arrives is checked like any other stream. */
static void far_write(far *f, size_t n) {
    f->total += n;
    far_step(f);
    ck_assert_uint_eq(f->sent, f->total);
}

START_TEST(test_buffered_input_goes_first) {
    static const rx_conn_callbacks keep = {.on_data = keep_data};
    two(&keep, false, NULL);
    far_write(&J.f[0], 7);
    far_write(&J.f[1], 7);
    ck_assert(run_until(both_buffered, 2000));
    ck_assert_int_eq(rx_conn_join(J.c[0], J.c[1], &join_opts), 0);
    /* Forwarded without a byte more from either far end, from the loop (not inside the join). */
    step();
    ck_assert_uint_eq(J.f[0].got + J.f[1].got, 0);
    ck_assert(run_until(both_got_7, 2000));
    far_write(&J.f[0], 7);
    far_write(&J.f[1], 7);
    ck_assert(run_until(both_got_14, 2000));
    assert_far_clean(&J.f[0], 14);
    assert_far_clean(&J.f[1], 14);
    ck_assert_uint_eq(J.end.bytes[0], 0); /* not ended yet: on_end has not run */
    J.f[0].shut = J.f[1].shut = true;
    ck_assert(run_until(all_done, 5000));
    ck_assert_uint_eq(J.end.bytes[0], 14);
    ck_assert_uint_eq(J.end.bytes[1], 14);
    teardown();
}
END_TEST

/* a's far end sent its bytes and ended its stream before the join (a is half-closed, its input
 * kept): they go to b, then b's far end sees the end; b -> a still flows, then both close. */
static void keep_all(rx_conn *c, rx_buffer *in, void *arg) {
    (void)c;
    (void)in;
    (void)arg;
}
static void eof_noop(rx_conn *c, void *arg) {
    (void)c;
    (void)arg;
}
static bool a_read_ended(void) { return rx_conn_ended(J.c[0]) & RX_CONN_READ_ENDED; }
static bool b_far_ended(void) { return J.f[1].eof || J.f[1].err; }

START_TEST(test_join_after_peer_ended) {
    static const rx_conn_callbacks half = {.on_data = keep_all, .on_eof = eof_noop};
    two(&half, false, NULL);
    J.f[0].total = 3000;
    J.f[0].shut = true;
    ck_assert(run_until(a_read_ended, 2000));
    ck_assert_uint_eq(rx_buffer_len(rx_conn_input(J.c[0])), 3000);
    ck_assert_int_eq(rx_conn_get_state(J.c[0]), RX_CONN_HALF_CLOSED);
    ck_assert_int_eq(rx_conn_join(J.c[0], J.c[1], &join_opts), 0);
    ck_assert(run_until(b_far_ended, 2000));
    assert_far_clean(&J.f[1], 3000);
    ck_assert(J.f[1].eof);
    J.f[1].total = 5000;
    J.f[1].shut = true;
    ck_assert(run_until(all_done, 5000));
    assert_far_clean(&J.f[0], 5000);
    ck_assert_int_eq(J.end.reason[0], RX_CLOSE_PEER);
    ck_assert_int_eq(J.end.reason[1], RX_CLOSE_PEER);
    ck_assert_uint_eq(J.end.bytes[0], 3000);
    ck_assert_uint_eq(J.end.bytes[1], 5000);
    teardown();
}
END_TEST

/* A proxy's way: a's on_data reads a header line, connects b, and joins inside on_data; what
 * followed the header in the same read goes to b, queued while b is still connecting. */
static struct {
    char addr[64];
    rx_conn_state b_state;
    size_t left;
} px;

static void header_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    size_t nl = rx_buffer_find_byte(in, 0, '\n');
    if (nl == RX_BUFFER_NPOS)
        return;
    rx_buffer_consume(in, nl + 1);
    rx_connect_opts co = {.addr = px.addr, .timeout_ms = 2000};
    J.c[1] = rx_connect(rx_conn_loop(c), &co);
    ck_assert_ptr_nonnull(J.c[1]);
    rx_conn_ref(J.c[1]);
    px.b_state = rx_conn_get_state(J.c[1]);
    px.left = rx_buffer_len(in);
    ck_assert_int_eq(rx_conn_join(c, J.c[1], &join_opts), 0);
}

static bool is_joined(void) { return J.c[1] != NULL; }
static bool b_far_got_early(void) { return J.f[1].got >= 1000; }
static bool a_far_got_reply(void) { return J.f[0].got >= 5000; }

START_TEST(test_join_inside_on_data_while_connecting) {
    static const rx_conn_callbacks hdr = {.on_data = header_data};
    fresh(true, -1, -1);
    int port, lfd = tu_tcp_listen(4, &port);
    tu_addr(px.addr, sizeof(px.addr), port);
    J.c[0] = tu_conn_pair(J.loop, false, NULL, &hdr, NULL, &J.f[0].fd);
    rx_conn_ref(J.c[0]);
    /* The header and 1000 bytes of the stream in one write, so one read takes both. */
    char msg[1 + 1000];
    msg[0] = '\n';
    tu_pattern_fill(msg + 1, BASE_A, 1000);
    ck_assert_int_eq(send(J.f[0].fd, msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
    J.f[0].sent = J.f[0].total = 1000;
    ck_assert(run_until(is_joined, 2000));
    ck_assert_int_eq(px.b_state, RX_CONN_CONNECTING);
    ck_assert_uint_eq(px.left, 1000);
    ck_assert(!J.end.opened[1]); /* not yet */
    ck_assert_int_gt(tu_poll(lfd, POLLIN, 2000), 0);
    J.f[1].fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    ck_assert_int_ge(J.f[1].fd, 0);
    close(lfd);
    ck_assert(run_until(b_far_got_early, 2000));
    J.f[1].total = 5000;
    ck_assert(run_until(a_far_got_reply, 2000));
    assert_far_clean(&J.f[1], 1000);
    assert_far_clean(&J.f[0], 5000);
    J.f[0].shut = J.f[1].shut = true;
    ck_assert(run_until(all_done, 5000));
    ck_assert_int_eq(J.end.reason[0], RX_CLOSE_PEER);
    ck_assert_int_eq(J.end.reason[1], RX_CLOSE_PEER);
    ck_assert(J.end.opened[0] && J.end.opened[1]); /* b's connect completed after the join */
    ck_assert_uint_eq(J.end.bytes[0], 1000);
    ck_assert_uint_eq(J.end.bytes[1], 5000);
    teardown();
}
END_TEST

/* ---- errors: -EINVAL, -EPIPE, -EBUSY, -ENOMEM change nothing ---- */

START_TEST(test_errors_change_nothing) {
    memset(&J, 0, sizeof(J));
    rx_loop *l1 = rx_loop_new(), *l2 = rx_loop_new();
    tu_tr ta = {0}, tb = {0}, tc = {0}, td = {0}, te = {0}, tf = {0};
    int pa, pb, pc, pd, pe, pf;
    rx_conn *a = tu_conn_pair(l1, false, NULL, &tu_tr_cbs, &ta, &pa);
    rx_conn *b = tu_conn_pair(l1, false, NULL, &tu_tr_cbs, &tb, &pb);
    rx_conn *c = tu_conn_pair(l2, false, NULL, &tu_tr_cbs, &tc, &pc);
    rx_conn *d = tu_conn_pair(l1, false, NULL, &tu_tr_cbs, &td, &pd);
    rx_conn *e = tu_conn_pair(l1, false, NULL, &tu_tr_cbs, &te, &pe);
    rx_conn *f = tu_conn_pair(l1, false, NULL, &tu_tr_cbs, &tf, &pf);
    ck_assert_int_eq(rx_conn_join(NULL, b, &join_opts), -EINVAL);
    ck_assert_int_eq(rx_conn_join(a, NULL, &join_opts), -EINVAL);
    ck_assert_int_eq(rx_conn_join(a, a, &join_opts), -EINVAL);
    ck_assert_int_eq(rx_conn_join(a, c, &join_opts), -EINVAL); /* two loops */
    tu_fail_allocs();
    ck_assert_int_eq(rx_conn_join(a, b, &join_opts), -ENOMEM);
    rx_sys_reset();
    rx_conn_close(b); /* closing */
    rx_conn_abort(d); /* closed */
    ck_assert_int_eq(rx_conn_join(a, b, &join_opts), -EPIPE);
    ck_assert_int_eq(rx_conn_join(b, a, &join_opts), -EPIPE);
    ck_assert_int_eq(rx_conn_join(d, a, &join_opts), -EPIPE);
    /* a is still the user's: its callbacks and arg are unchanged. */
    ck_assert_ptr_eq(rx_conn_arg(a), &ta);
    tu_peer_write_all(l1, pa, "mine", 4);
    tu_duo da = {&ta, NULL, 4};
    ck_assert(tu_run_until_fn(l1, tu_tr_has, &da, 2000, 5));
    ck_assert_int_eq(memcmp(rx_buffer_peek(&ta.in), "mine", 4), 0);
    /* opts may be NULL; then the user's callbacks are no longer called, and nothing reports. */
    ck_assert_int_eq(rx_conn_join(a, e, NULL), 0);
    ck_assert_ptr_ne(rx_conn_arg(a), &ta);
    /* A joined connection cannot be joined again, either side first; f stays the user's. */
    ck_assert_int_eq(rx_conn_join(f, a, &join_opts), -EBUSY);
    ck_assert_int_eq(rx_conn_join(e, f, &join_opts), -EBUSY);
    ck_assert_ptr_eq(rx_conn_arg(f), &tf);
    tu_peer_write_all(l1, pa, "x", 1);
    tu_peer p;
    tu_peer_init(&p, pe, false);
    tu_duo de = {NULL, &p, 1};
    ck_assert(tu_run_until_fn(l1, tu_peer_has, &de, 2000, 5));
    ck_assert_int_eq(*rx_buffer_peek(&p.got), 'x');
    ck_assert_int_eq(ta.datas, 1);
    ck_assert_int_eq(te.datas, 0);
    tu_peer_free(&p);
    close(pb);
    close(pd);
    close(pc);
    close(pf);
    rx_loop_free(l2);
    tu_free_loop_closing(l1, &tb, &td, &tf, NULL); /* b, d, f: the user's to the end */
    ck_assert_int_eq(ta.closes + te.closes, 0);
    ck_assert_int_eq(tc.closes, 1);
    ck_assert_int_eq(atomic_load(&J.ends), 0);
    close(pa);
    tu_tr_free(&ta);
    tu_tr_free(&tc);
    tu_tr_free(&te);
}
END_TEST

/* ---- on_end exactly once when the loop is freed with the pair open ---- */

static bool b_queued(void) { return rx_conn_queued(J.c[1]) > 128 * KiB; }

/* _i: 0, an open pair with output queued; 1, b still connecting. */
START_TEST(test_loop_free_ends_once) {
    fresh(true, -1, -1);
    tu_tr ta = {0}, tb = {0};
    rx_conn_opts o = {.high_water = 4 * MiB};
    int lfd = -1, port;
    J.c[0] = tu_conn_pair(J.loop, true, &o, &tu_tr_cbs, &ta, &J.f[0].fd);
    if (_i == 0) {
        J.c[1] = tu_conn_pair(J.loop, true, &o, &tu_tr_cbs, &tb, &J.f[1].fd);
    } else {
        lfd = tu_tcp_listen(4, &port);
        rx_connect_opts co = {.timeout_ms = 2000, .cbs = &tu_tr_cbs, .arg = &tb};
        char addr[64];
        tu_addr(addr, sizeof(addr), port);
        co.addr = addr;
        J.c[1] = rx_connect(J.loop, &co);
        ck_assert_ptr_nonnull(J.c[1]);
    }
    ck_assert_int_eq(rx_conn_join(J.c[0], J.c[1], &join_opts), 0);
    if (_i == 0) {
        J.f[0].total = MiB;
        J.f[1].reading = false;
        ck_assert(run_until(b_queued, 5000));
    }
    J.c[0] = J.c[1] = NULL; /* no reference held: the loop releases them */
    teardown();
    /* The user's callbacks ended with the join: none ran, on_close neither. */
    ck_assert_int_eq(ta.datas + tb.datas + ta.closes + tb.closes + ta.opens + tb.opens, 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(J.end.reason[i], RX_CLOSE_LOCAL);
    if (lfd >= 0)
        close(lfd);
    tu_tr_free(&ta);
    tu_tr_free(&tb);
}
END_TEST

/* ---- a send that can queue nothing (-ENOMEM) ---- */

/* The first allocation fails, then rx_sys is libc again. */
static void *fail_once_malloc(size_t n) {
    (void)n;
    rx_sys_reset();
    errno = ENOMEM;
    return NULL;
}
static void *fail_once_realloc(void *p, size_t n) {
    (void)p;
    return fail_once_malloc(n);
}

START_TEST(test_send_enomem_breaks_the_pair) {
    setup(false, NULL);
    J.f[0].total = J.f[1].total = 1000; /* the loop's scratch buffers are made by now */
    ck_assert(run_until(got_all, 2000));
    /* b's socket takes nothing and its buffer cannot be made: a's next bytes cannot go on. */
    tu_inject_io(rx_conn_fd(J.c[1]));
    tu_io.fail_errno = EAGAIN;
    rx_sys.malloc = fail_once_malloc;
    rx_sys.realloc = fail_once_realloc;
    J.f[0].total += 1000;
    ck_assert(run_until(a_far_ended, 2000));
    rx_sys_reset();
    /* b closed with the error, a gracefully (an orderly end for its far end). */
    ck_assert_msg(J.f[0].eof && J.f[0].err == 0, "a's far end: %s", strerror(J.f[0].err));
    far_close(&J.f[0]);
    ck_assert(run_until(ended, 5000));
    ck_assert_int_eq(J.end.reason[1], RX_CLOSE_ERROR);
    ck_assert_int_eq(J.end.err[1], -ENOMEM);
    ck_assert_int_eq(J.end.reason[0], RX_CLOSE_LOCAL);
    ck_assert_uint_eq(J.end.bytes[0], 1000);
    ck_assert_uint_eq(J.end.bytes[1], 1000);
    teardown();
}
END_TEST

/* ---- a server's stop closes joined pairs gracefully ---- */

static struct {
    char backend[64];
    atomic_int user_stops;
} sv;

/* The server's on_open (on the connection's loop): connect to the backend and join. */
static void srv_open(rx_conn *c, void *arg) {
    (void)arg;
    rx_connect_opts co = {.addr = sv.backend, .timeout_ms = 2000};
    rx_conn *b = rx_connect(rx_conn_loop(c), &co);
    if (!b || rx_conn_join(c, b, &join_opts) != 0)
        atomic_fetch_add(&J.faults, 1);
    atomic_store(&J.joined, 1);
}

static void srv_stop(rx_conn *c, void *arg) {
    (void)arg;
    atomic_fetch_add(&sv.user_stops, 1); /* never: the join took the callbacks over */
    rx_conn_close(c);
}

static void on_stopped(void *arg) {
    (void)arg;
    atomic_store(&J.stopped, 1);
}

static rx_server *stop_me;
static void stop_task(void *arg) {
    (void)arg;
    rx_server_stop(stop_me, 3000, on_stopped, NULL);
}

static bool joined(void) { return atomic_load(&J.joined) > 0; }
static bool client_ended(void) { return J.f[0].eof || J.f[0].err; }
static bool backend_ended(void) { return J.f[1].eof || J.f[1].err; }
static bool stopped_and_ended(void) { return atomic_load(&J.stopped) && ended(); }

/* _i: 0, a plain server on the test's loop; 1, a server on a group of 2 loops. */
START_TEST(test_server_stop_closes_pairs_gracefully) {
    static const rx_conn_callbacks scbs = {.on_open = srv_open, .on_stop = srv_stop};
    fresh(_i == 0, -1, -1);
    memset(&sv, 0, sizeof(sv));
    rx_loop_group *g = NULL;
    rx_server_opts so = {.cbs = &scbs};
    if (_i == 1) {
        g = rx_loop_group_new(2);
        ck_assert_ptr_nonnull(g);
        so.group = g;
    }
    int bport, lfd = tu_tcp_listen(4, &bport);
    tu_addr(sv.backend, sizeof(sv.backend), bport);
    rx_server *s = tu_server(J.loop, &so);
    stop_me = s;
    if (g)
        ck_assert_int_eq(rx_loop_group_start(g), 0);
    J.f[0].fd = tu_tcp_connect(tu_server_port(s), true);
    ck_assert_int_ge(J.f[0].fd, 0);
    ck_assert(run_until(joined, 5000));
    ck_assert_int_gt(tu_poll(lfd, POLLIN, 5000), 0);
    J.f[1].fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    ck_assert_int_ge(J.f[1].fd, 0);
    close(lfd);
    J.f[0].total = J.f[1].total = 256 * KiB;
    ck_assert(run_until(got_all, 10000));
    unsigned long long t0 = tu_now_ms();
    if (g)
        ck_assert_int_eq(rx_loop_post(rx_loop_group_loop(g, 0), stop_task, NULL), 0);
    else
        stop_task(NULL);
    /* The client's side closes at once (not at the 3 s deadline), with an orderly end. */
    ck_assert(run_until(client_ended, 2000));
    ck_assert_msg(J.f[0].eof && J.f[0].err == 0, "client: %s", strerror(J.f[0].err));
    ck_assert_uint_lt(J.f[0].eof_ms - t0, 1000);
    far_close(&J.f[0]); /* its close ends the client's side, which closes the backend's */
    ck_assert(run_until(backend_ended, 2000));
    ck_assert_msg(J.f[1].eof && J.f[1].err == 0, "backend: %s", strerror(J.f[1].err));
    far_close(&J.f[1]);
    ck_assert(run_until(stopped_and_ended, 5000));
    assert_far_clean(&J.f[0], 256 * KiB);
    assert_far_clean(&J.f[1], 256 * KiB);
    ck_assert_int_eq(J.end.reason[0], RX_CLOSE_LOCAL);
    ck_assert_int_eq(J.end.reason[1], RX_CLOSE_LOCAL);
    ck_assert_uint_eq(J.end.bytes[0], 256 * KiB);
    ck_assert_uint_eq(J.end.bytes[1], 256 * KiB);
    ck_assert_int_eq(atomic_load(&sv.user_stops), 0);
    if (g) {
        rx_loop_group_stop(g);
        ck_assert_int_eq(tu_group_join_within(g, 5000), 0);
    }
    rx_server_free(s);
    if (g)
        rx_loop_group_free(g);
    teardown();
}
END_TEST

static Suite *join_suite(void) {
    Suite *s = suite_create("join");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_errors_change_nothing);
    tcase_add_test(tc, test_buffered_input_goes_first);
    tcase_add_test(tc, test_join_after_peer_ended);
    tcase_add_test(tc, test_join_inside_on_data_while_connecting);
    tcase_add_test(tc, test_refused_connect_closes_a_at_once);
    tcase_add_loop_test(tc, test_half_close_each_way, 0, 2);
    tcase_add_loop_test(tc, test_reset_passed_on, 0, 2);
    tcase_add_loop_test(tc, test_loop_free_ends_once, 0, 2);
    tcase_add_test(tc, test_send_enomem_breaks_the_pair);
    tcase_add_loop_test(tc, test_server_stop_closes_pairs_gracefully, 0, 2);
    TCase *bulk = tu_tcase(s, "bulk", 100);
    tcase_add_test(bulk, test_both_ways_every_byte);
    tcase_add_loop_test(bulk, test_backpressure_pauses_and_bounds, 0, 2);
    return s;
}

int main(void) { return tu_main(join_suite()); }
