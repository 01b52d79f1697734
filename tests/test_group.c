/* Tests for rx_loop_group and rx_server over a group: one thread per loop (named rx-loop-K),
 * start/stop/join/free, picking a loop (round-robin, least connections), an echo server over 4
 * loops with 1,000 connections in both spreads (handoff and SO_REUSEPORT), and a graceful stop
 * that loses no echoed byte, under load and with a slow reader that still talks.
 *
 * Callbacks run on the loops' threads, not the test's: they never call ck_assert (under
 * CK_FORK=no a failed check longjmps, which cannot cross threads) but count what went wrong in
 * atomics that the test thread checks. */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <rx/rx.h>

#include "testutil.h"

/* ---- helpers ---- */

static rx_loop_group *new_group(unsigned n) {
    rx_loop_group *g = rx_loop_group_new(n);
    ck_assert_msg(g != NULL, "rx_loop_group_new(%u): %s", n, strerror(errno));
    return g;
}

static void start_group(rx_loop_group *g) { ck_assert_int_eq(rx_loop_group_start(g), 0); }

/* Stops the group, joins it (bounded) and frees it. */
static void end_group(rx_loop_group *g) {
    rx_loop_group_stop(g);
    ck_assert_int_eq(tu_group_join_within(g, 5000), 0);
    rx_loop_group_free(g);
}

/* ---- lifecycle ---- */

START_TEST(test_new_zero_is_one_per_cpu) {
    unsigned cpus = tu_cpu_count();
    rx_loop_group *g = new_group(0);
    ck_assert_uint_eq(rx_loop_group_size(g), cpus);
    for (unsigned i = 0; i < cpus; i++) {
        ck_assert_ptr_nonnull(rx_loop_group_loop(g, i));
        for (unsigned j = 0; j < i; j++)
            ck_assert_ptr_ne(rx_loop_group_loop(g, i), rx_loop_group_loop(g, j));
    }
    /* Freed without ever starting: no thread to stop, every loop released (ASan/valgrind). */
    rx_loop_group_free(g);

    g = new_group(3);
    ck_assert_uint_eq(rx_loop_group_size(g), 3);
    rx_loop_group_free(g);
}
END_TEST

/* What a task posted to a loop saw of the thread running it. */
struct seen {
    pthread_t self;
    char name[32];
    pid_t tid;
    int calls;
};

static void note_thread(void *arg) {
    struct seen *s = arg;
    s->self = pthread_self();
    s->tid = (pid_t)syscall(SYS_gettid);
    if (pthread_getname_np(pthread_self(), s->name, sizeof(s->name)) != 0)
        snprintf(s->name, sizeof(s->name), "(getname failed)");
    s->calls++;
}

/* Threads of this process now (entries of /proc/self/task). */
static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

START_TEST(test_threads_named_distinct_and_stable) {
    enum { N = 4 };
    rx_loop_group *g = new_group(N);
    start_group(g);
    struct seen first[N] = {0}, again[N] = {0};
    for (unsigned k = 0; k < N; k++)
        tu_on_loop(rx_loop_group_loop(g, k), note_thread, &first[k], 5000);
    for (unsigned k = 0; k < N; k++)
        tu_on_loop(rx_loop_group_loop(g, k), note_thread, &again[k], 5000);

    for (unsigned k = 0; k < N; k++) {
        char want[32];
        snprintf(want, sizeof(want), "rx-loop-%u", k);
        ck_assert_str_eq(first[k].name, want);
        ck_assert_int_eq(first[k].calls, 1);
        /* Not the test's thread, and not another loop's. */
        ck_assert(!pthread_equal(first[k].self, pthread_self()));
        for (unsigned j = 0; j < k; j++)
            ck_assert_msg(!pthread_equal(first[k].self, first[j].self),
                          "loops %u and %u run on one thread", j, k);
        /* A loop keeps its thread: the second task runs where the first did. */
        ck_assert(pthread_equal(first[k].self, again[k].self));
        ck_assert_int_eq(first[k].tid, again[k].tid);
    }

    int threads = thread_count();
    ck_assert_int_eq(rx_loop_group_start(g), -EALREADY);
    /* The refused start made no thread, and the loops keep theirs. */
    ck_assert_int_eq(thread_count(), threads);
    struct seen third = {0};
    tu_on_loop(rx_loop_group_loop(g, 2), note_thread, &third, 5000);
    ck_assert(pthread_equal(third.self, first[2].self));
    end_group(g);
}
END_TEST

static void stop_from_task(void *arg) { rx_loop_group_stop(arg); }

/* A posted task that records that it ran. */
static void bump_task(void *arg) { atomic_fetch_add((atomic_int *)arg, 1); }

START_TEST(test_stop_from_a_loop_callback) {
    rx_loop_group *g = new_group(3);
    start_group(g);
    atomic_int ran = 0;
    for (unsigned k = 0; k < 3; k++)
        ck_assert_int_eq(rx_loop_post(rx_loop_group_loop(g, k), bump_task, &ran), 0);
    ck_assert(tu_wait_atomic(&ran, 3, 5000));
    /* Any thread, any callback: here a task on loop 1 stops all three. */
    ck_assert_int_eq(rx_loop_post(rx_loop_group_loop(g, 1), stop_from_task, g), 0);
    ck_assert_int_eq(tu_group_join_within(g, 5000), 0);
    rx_loop_group_free(g);
}
END_TEST

/* Whether the kernel still lists a thread of this process. */
static bool tid_alive(pid_t tid) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d", (int)tid);
    return access(path, F_OK) == 0;
}

struct tids {
    pid_t tid[3];
};

static bool tids_gone(void *arg) {
    struct tids *t = arg;
    for (int i = 0; i < 3; i++)
        if (tid_alive(t->tid[i]))
            return false;
    return true;
}

static void free_group(void *arg) { rx_loop_group_free(arg); }

START_TEST(test_free_while_running_stops_and_joins) {
    rx_loop_group *g = new_group(3);
    start_group(g);
    struct seen s[3] = {0};
    struct tids t;
    for (unsigned k = 0; k < 3; k++) {
        tu_on_loop(rx_loop_group_loop(g, k), note_thread, &s[k], 5000);
        t.tid[k] = s[k].tid;
        ck_assert(tid_alive(t.tid[k]));
    }
    /* No stop, no join: free does both, within a bound. */
    ck_assert_msg(tu_call_within(free_group, g, 5000), "rx_loop_group_free did not return");
    /* Joined threads have exited; the kernel drops them from /proc at once or very soon. */
    ck_assert_msg(tu_wait_fn(tids_gone, &t, 2000), "loop threads still alive after free");
}
END_TEST

START_TEST(test_tasks_posted_before_start_run_on_the_threads) {
    rx_loop_group *g = new_group(2);
    /* Set-up from this thread before the start (as servers and timers are): the tasks wait in
     * the loops' queues and run once each loop's thread runs it. */
    struct seen s[2] = {0};
    for (unsigned k = 0; k < 2; k++)
        ck_assert_int_eq(rx_loop_post(rx_loop_group_loop(g, k), note_thread, &s[k]), 0);
    atomic_int ran = 0;
    for (unsigned k = 0; k < 2; k++)
        ck_assert_int_eq(rx_loop_post(rx_loop_group_loop(g, k), bump_task, &ran), 0);
    start_group(g);
    ck_assert(tu_wait_atomic(&ran, 2, 5000));
    for (unsigned k = 0; k < 2; k++) {
        char want[32];
        snprintf(want, sizeof(want), "rx-loop-%u", k);
        ck_assert_str_eq(s[k].name, want); /* ran before `ran`: same loop, posted first */
    }
    end_group(g);
}
END_TEST

/* ---- picking a loop ---- */

START_TEST(test_pick_round_robin_cycles) {
    enum { N = 4 };
    rx_loop_group *g = new_group(N);
    rx_loop *seq[3 * N];
    for (int i = 0; i < 3 * N; i++) {
        seq[i] = rx_loop_group_pick(g, RX_PICK_ROUND_ROBIN);
        ck_assert_int_ge(tu_group_index(g, seq[i]), 0);
    }
    /* Each loop in turn: the first N are all different, and the sequence repeats. */
    for (int i = 0; i < N; i++)
        for (int j = 0; j < i; j++)
            ck_assert_ptr_ne(seq[i], seq[j]);
    for (int i = N; i < 3 * N; i++)
        ck_assert_ptr_eq(seq[i], seq[i - N]);
    /* In index order (modulo the starting point). */
    int first = tu_group_index(g, seq[0]);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(tu_group_index(g, seq[i]), (first + i) % N);

    /* The same while the loops run (pick is any-thread). */
    start_group(g);
    int count[N] = {0};
    for (int i = 0; i < 8 * N; i++)
        count[tu_group_index(g, rx_loop_group_pick(g, RX_PICK_ROUND_ROBIN))]++;
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(count[i], 8);
    end_group(g);
}
END_TEST

/* Connections made on a loop from its own thread, over socketpairs whose far ends the test keeps.
 */
#define LC_MAX 16

static struct lc {
    rx_loop_group *g;
    int peers[LC_MAX];
    int n;
    atomic_int bad;    /* socketpair or rx_conn_new failures */
    atomic_int closes; /* on_close calls */
} LC;

struct lc_make {
    rx_loop *loop;
    int count;
};

static void lc_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)c;
    (void)reason;
    (void)err;
    (void)arg;
    atomic_fetch_add(&LC.closes, 1);
}

static const rx_conn_callbacks lc_cbs = {.on_close = lc_close};

/* On the loop's thread: count new connections there, their peers into LC.peers. */
static void lc_make(void *arg) {
    struct lc_make *m = arg;
    for (int i = 0; i < m->count; i++) {
        int sv[2];
        if (LC.n >= LC_MAX ||
            socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
            atomic_fetch_add(&LC.bad, 1);
            return;
        }
        if (!rx_conn_new(m->loop, sv[0], NULL, &lc_cbs, NULL)) {
            atomic_fetch_add(&LC.bad, 1);
            close(sv[1]);
            return;
        }
        LC.peers[LC.n++] = sv[1]; /* read by the test only after tu_on_loop returned */
    }
}

/* Makes count connections on loop k; returns the index of the first one's peer in LC.peers. */
static int lc_add(unsigned k, int count) {
    int first = LC.n;
    struct lc_make m = {.loop = rx_loop_group_loop(LC.g, k), .count = count};
    tu_on_loop(m.loop, lc_make, &m, 5000);
    ck_assert_int_eq(atomic_load(&LC.bad), 0);
    return first;
}

struct lc_want {
    unsigned counts[3];
};

static bool lc_counts_are(void *arg) {
    struct lc_want *w = arg;
    for (unsigned k = 0; k < 3; k++)
        if (rx_loop_conn_count(rx_loop_group_loop(LC.g, k)) != w->counts[k])
            return false;
    return true;
}

static void lc_expect(unsigned c0, unsigned c1, unsigned c2) {
    struct lc_want w = {{c0, c1, c2}};
    ck_assert_msg(tu_wait_fn(lc_counts_are, &w, 5000), "conn counts %u %u %u, want %u %u %u",
                  rx_loop_conn_count(rx_loop_group_loop(LC.g, 0)),
                  rx_loop_conn_count(rx_loop_group_loop(LC.g, 1)),
                  rx_loop_conn_count(rx_loop_group_loop(LC.g, 2)), c0, c1, c2);
}

static int least(void) {
    return tu_group_index(LC.g, rx_loop_group_pick(LC.g, RX_PICK_LEAST_CONNS));
}

START_TEST(test_pick_least_conns) {
    memset(&LC, 0, sizeof(LC));
    LC.g = new_group(3);
    start_group(LC.g);
    lc_expect(0, 0, 0);
    ck_assert_int_eq(least(), 0); /* a tie of all three: the lowest index */

    int on0 = lc_add(0, 3);
    lc_add(1, 1);
    lc_add(2, 2);
    lc_expect(3, 1, 2);
    ck_assert_int_eq(least(), 1);
    ck_assert_int_eq(least(), 1); /* it does not rotate: the counts decide */

    lc_add(1, 1);
    lc_expect(3, 2, 2);
    ck_assert_int_eq(least(), 1); /* tie between 1 and 2: the lower */
    lc_add(1, 1);
    lc_expect(3, 3, 2);
    ck_assert_int_eq(least(), 2);

    /* Counts also go down: two peers of loop 0 hang up, their connections close there. */
    close(LC.peers[on0]);
    close(LC.peers[on0 + 1]);
    LC.peers[on0] = LC.peers[on0 + 1] = -1;
    ck_assert(tu_wait_atomic(&LC.closes, 2, 5000));
    lc_expect(1, 3, 2);
    ck_assert_int_eq(least(), 0);

    rx_loop_group_stop(LC.g);
    ck_assert_int_eq(tu_group_join_within(LC.g, 5000), 0);
    /* The rest close in rx_loop_free. */
    rx_loop_group_free(LC.g);
    ck_assert_int_eq(atomic_load(&LC.closes), LC.n);
    for (int i = 0; i < LC.n; i++)
        if (LC.peers[i] >= 0)
            close(LC.peers[i]);
}
END_TEST

/* ---- an echo server over a group ---- */

#define MAXLOOPS 8

/* The server side, shared by the loops' threads: counters only (atomics). */
static struct echo {
    rx_loop_group *g;
    pthread_t threads[MAXLOOPS]; /* written before the clients connect, then only read */
    atomic_int opens[MAXLOOPS];  /* on_open per loop */
    atomic_int opens_total, closes, reasons[RX_CLOSE_ERROR + 1];
    atomic_int bad_loop;    /* a connection on no loop of the group */
    atomic_int bad_thread;  /* a callback on another thread than its loop's */
    atomic_int send_errors; /* rx_conn_send in on_data failed */
    atomic_int late;        /* a callback after on_close */
    int sndbuf;             /* on_open sets SO_SNDBUF to it when > 0 (set before the start) */
    atomic_ullong echoed_total;
    /* Bytes each connection echoed (handed to rx_conn_send with success), by its peer's port,
     * stored at on_close; and whether that connection closed. */
    atomic_ullong echoed_by_port[65536];
    atomic_int closed_by_port[65536];
    /* Graceful stop. */
    atomic_int stopped;
    atomic_ullong stopped_ms;
    atomic_int stopped_on_home; /* on_stopped ran on the server's loop's thread */
    atomic_int stop_called;
    atomic_ullong stop_ms;
} E;

/* Per connection, on its loop only. */
struct econn {
    int loop;
    int port;
    unsigned long long echoed;
    bool closed;
};

static void echo_reset(void) {
    E.g = NULL;
    for (int i = 0; i < MAXLOOPS; i++)
        atomic_store(&E.opens[i], 0);
    atomic_store(&E.opens_total, 0);
    atomic_store(&E.closes, 0);
    for (int i = 0; i <= RX_CLOSE_ERROR; i++)
        atomic_store(&E.reasons[i], 0);
    atomic_store(&E.bad_loop, 0);
    atomic_store(&E.bad_thread, 0);
    atomic_store(&E.send_errors, 0);
    atomic_store(&E.late, 0);
    E.sndbuf = 0;
    atomic_store(&E.echoed_total, 0);
    for (int i = 0; i < 65536; i++) {
        atomic_store(&E.echoed_by_port[i], 0);
        atomic_store(&E.closed_by_port[i], 0);
    }
    atomic_store(&E.stopped, 0);
    atomic_store(&E.stopped_ms, 0);
    atomic_store(&E.stopped_on_home, 0);
    atomic_store(&E.stop_called, 0);
    atomic_store(&E.stop_ms, 0);
}

/* The loop index of c, checking that the callback runs on that loop's thread. */
static int echo_check_thread(rx_conn *c) {
    int k = tu_group_index(E.g, rx_conn_loop(c));
    if (k < 0) {
        atomic_fetch_add(&E.bad_loop, 1);
        return -1;
    }
    if (!pthread_equal(pthread_self(), E.threads[k]))
        atomic_fetch_add(&E.bad_thread, 1);
    return k;
}

static void echo_open(rx_conn *c, void *arg) {
    (void)arg;
    int k = echo_check_thread(c);
    struct econn *ec = calloc(1, sizeof(*ec));
    if (!ec) {
        atomic_fetch_add(&E.send_errors, 1);
        rx_conn_abort(c);
        return;
    }
    ec->loop = k;
    rx_addr peer;
    ec->port = rx_conn_peer_addr(c, &peer) == 0 ? rx_addr_port(&peer) : 0;
    rx_conn_set_arg(c, ec);
    if (E.sndbuf > 0)
        setsockopt(rx_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &E.sndbuf, sizeof(E.sndbuf));
    if (k >= 0)
        atomic_fetch_add(&E.opens[k], 1);
    atomic_fetch_add(&E.opens_total, 1);
}

static void echo_data(rx_conn *c, rx_buffer *in, void *arg) {
    struct econn *ec = arg;
    if (!ec || ec->closed) {
        atomic_fetch_add(&E.late, 1);
        rx_buffer_consume(in, rx_buffer_len(in));
        return;
    }
    if (echo_check_thread(c) != ec->loop)
        atomic_fetch_add(&E.bad_thread, 1);
    size_t n = rx_buffer_len(in);
    if (rx_conn_send(c, rx_buffer_peek(in), n) == 0) {
        ec->echoed += n;
        atomic_fetch_add(&E.echoed_total, n);
    } else
        atomic_fetch_add(&E.send_errors, 1);
    rx_buffer_consume(in, n);
}

static void echo_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)err;
    struct econn *ec = arg;
    echo_check_thread(c);
    if (reason >= 0 && reason <= RX_CLOSE_ERROR)
        atomic_fetch_add(&E.reasons[reason], 1);
    if (ec) {
        if (ec->closed)
            atomic_fetch_add(&E.late, 1);
        ec->closed = true;
        atomic_store(&E.echoed_by_port[ec->port], ec->echoed);
        atomic_fetch_add(&E.closed_by_port[ec->port], 1);
        free(ec);
    }
    atomic_fetch_add(&E.closes, 1);
}

static const rx_conn_callbacks echo_cbs = {
    .on_open = echo_open,
    .on_data = echo_data,
    .on_close = echo_close,
};

/* A group of n loops, started, with an echo server spread over it. The server is made before
 * the start (its listeners are set up from this thread); home NULL means the group's loop 0. */
static rx_server *echo_server(unsigned n, rx_spread spread, rx_loop **home_out, int sndbuf) {
    echo_reset();
    E.sndbuf = sndbuf;
    E.g = new_group(n);
    rx_server_opts o = {
        .cbs = &echo_cbs,
        .group = E.g,
        .spread = spread,
        .pick = RX_PICK_ROUND_ROBIN,
        .listener = {.backlog = 4096},
    };
    /* Once with the home loop given, once defaulted: both must mean loop 0 here. */
    rx_loop *home = spread == RX_SPREAD_HANDOFF ? rx_loop_group_loop(E.g, 0) : NULL;
    rx_server *s = tu_server(home, &o);
    start_group(E.g);
    tu_group_threads(E.g, E.threads);
    if (home_out)
        *home_out = rx_loop_group_loop(E.g, 0);
    return s;
}

static const char *spread_name(rx_spread s) {
    return s == RX_SPREAD_HANDOFF ? "handoff" : "reuseport";
}

static void check_no_thread_faults(void) {
    ck_assert_int_eq(atomic_load(&E.bad_loop), 0);
    ck_assert_int_eq(atomic_load(&E.bad_thread), 0);
    ck_assert_int_eq(atomic_load(&E.send_errors), 0);
    ck_assert_int_eq(atomic_load(&E.late), 0);
}

/* A client driven by the test thread with poll. */
struct client {
    int fd;
    int port;
    unsigned long long base; /* its bytes are [base, base + ...) of the tu_pattern stream */
    unsigned long long len;  /* what it sends (1,000-connection test) */
    unsigned long long sent, got;
    long long bad; /* offset of the first wrong byte echoed; -1: none */
    bool eof;
    int err;      /* of a read: the stream ended with it */
    int send_err; /* of a send: no more sends, but what is on the way is still read */
    bool done;    /* closed by the test */
};

/* Reads what is there; checks it against what the client sent. */
static void client_read(struct client *cl) {
    char buf[65536];
    for (;;) {
        ssize_t r = read(cl->fd, buf, sizeof(buf));
        if (r > 0) {
            if (cl->got + (unsigned long long)r > cl->sent) {
                /* More came back than went out: an echo of someone else's bytes. */
                if (cl->bad < 0)
                    cl->bad = (long long)cl->got;
            } else {
                long long b = tu_pattern_check(buf, cl->base + cl->got, (size_t)r);
                if (b >= 0 && cl->bad < 0)
                    cl->bad = (long long)cl->got + b;
            }
            cl->got += (unsigned long long)r;
            continue;
        }
        if (r == 0)
            cl->eof = true;
        else if (errno == EINTR)
            continue;
        else if (errno != EAGAIN && errno != EWOULDBLOCK)
            cl->err = errno;
        return;
    }
}

/* Sends up to n more bytes of the client's stream; returns false when the socket is full. */
static bool client_send(struct client *cl, size_t n) {
    char buf[16384];
    n = tu_min(n, sizeof(buf));
    tu_pattern_fill(buf, cl->base + cl->sent, n);
    ssize_t w = send(cl->fd, buf, n, MSG_NOSIGNAL);
    if (w > 0) {
        cl->sent += (unsigned long long)w;
        return true;
    }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        cl->send_err = errno;
    return false;
}

static void connect_clients(struct client *cl, int n, int port) {
    for (int i = 0; i < n; i++) {
        cl[i] = (struct client){.bad = -1};
        cl[i].fd = tu_tcp_connect(port, true);
        ck_assert_msg(cl[i].fd >= 0, "client %d: connect: %s", i, strerror(errno));
        cl[i].port = tu_local_port(cl[i].fd);
    }
}

#define SPREAD_CLIENTS 1000

START_TEST(test_echo_1000_conns_over_4_loops) {
    rx_spread spread = _i == 0 ? RX_SPREAD_HANDOFF : RX_SPREAD_REUSEPORT;
    /* Both ends of every connection live in this process, plus the loops' own fds. */
    if (!tu_raise_nofile(2500)) {
        fprintf(stderr,
                "SKIP test_echo_1000_conns_over_4_loops (%s): RLIMIT_NOFILE hard limit "
                "below 2500, 1000 connections need both ends here\n",
                spread_name(spread));
        return;
    }
    enum { N = 4 };
    rx_server *s = echo_server(N, spread, NULL, 0);
    int port = tu_server_port(s);

    static struct client cl[SPREAD_CLIENTS];
    static struct pollfd pfd[SPREAD_CLIENTS];
    connect_clients(cl, SPREAD_CLIENTS, port);
    /* Every client's bytes are its own: a distinct slice of the stream, of a distinct length. */
    for (int i = 0; i < SPREAD_CLIENTS; i++) {
        cl[i].base = (unsigned long long)i * 7919u;
        cl[i].len = 200 + ((unsigned)i * 131u) % 3800u;
    }
    /* All of them are open on the server at once before any byte flows (so the share of each
     * loop is the share of 1,000 live connections, not of a few reused ones). */
    ck_assert_msg(tu_wait_atomic(&E.opens_total, SPREAD_CLIENTS, 30000), "%s: %d of %d opened",
                  spread_name(spread), atomic_load(&E.opens_total), SPREAD_CLIENTS);

    for (int i = 0; i < SPREAD_CLIENTS; i++) {
        while (cl[i].sent < cl[i].len) {
            if (!client_send(&cl[i], (size_t)(cl[i].len - cl[i].sent))) {
                ck_assert_msg(cl[i].send_err == 0, "client %d send: %s", i,
                              strerror(cl[i].send_err));
                tu_poll(cl[i].fd, POLLOUT, 100);
            }
        }
        /* The end of its stream: the server (no on_eof) writes what is queued, then closes. */
        ck_assert_int_eq(shutdown(cl[i].fd, SHUT_WR), 0);
    }

    unsigned long long deadline = tu_now_ms() + 60000;
    int open = SPREAD_CLIENTS;
    while (open > 0 && tu_now_ms() < deadline) {
        int n = 0;
        for (int i = 0; i < SPREAD_CLIENTS; i++)
            if (!cl[i].eof && !cl[i].err)
                pfd[n++] = (struct pollfd){.fd = cl[i].fd, .events = POLLIN};
        (void)poll(pfd, (nfds_t)n, 10);
        open = 0;
        for (int i = 0; i < SPREAD_CLIENTS; i++) {
            if (cl[i].eof || cl[i].err)
                continue;
            client_read(&cl[i]);
            if (!cl[i].eof && !cl[i].err)
                open++;
        }
    }
    for (int i = 0; i < SPREAD_CLIENTS; i++) {
        ck_assert_msg(cl[i].eof && cl[i].err == 0, "%s: client %d: eof %d err %s (got %llu/%llu)",
                      spread_name(spread), i, cl[i].eof, strerror(cl[i].err), cl[i].got, cl[i].len);
        ck_assert_msg(cl[i].got == cl[i].len, "%s: client %d got %llu of %llu bytes back",
                      spread_name(spread), i, cl[i].got, cl[i].len);
        ck_assert_msg(cl[i].bad < 0, "%s: client %d: wrong byte at %lld", spread_name(spread), i,
                      cl[i].bad);
        close(cl[i].fd);
    }
    ck_assert(tu_wait_atomic(&E.closes, SPREAD_CLIENTS, 10000));

    int total = 0;
    for (unsigned k = 0; k < N; k++) {
        int opens = atomic_load(&E.opens[k]);
        fprintf(stderr, "%s: loop %u served %d connections\n", spread_name(spread), k, opens);
        ck_assert_msg(opens * 10 >= SPREAD_CLIENTS, "%s: loop %u served only %d of %d",
                      spread_name(spread), k, opens, SPREAD_CLIENTS);
        total += opens;
        ck_assert_uint_eq(rx_loop_conn_count(rx_loop_group_loop(E.g, k)), 0);
    }
    ck_assert_int_eq(total, SPREAD_CLIENTS);
    if (spread == RX_SPREAD_HANDOFF) /* round-robin: exactly a quarter each */
        for (unsigned k = 0; k < N; k++)
            ck_assert_int_eq(atomic_load(&E.opens[k]), SPREAD_CLIENTS / N);
    ck_assert_int_eq(atomic_load(&E.reasons[RX_CLOSE_PEER]), SPREAD_CLIENTS);
    check_no_thread_faults();

    rx_loop_group_stop(E.g);
    ck_assert_int_eq(tu_group_join_within(E.g, 5000), 0);
    ck_assert_uint_eq(rx_server_accepted(s), SPREAD_CLIENTS);
    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    rx_server_free(s);
    rx_loop_group_free(E.g);
}
END_TEST

/* ---- graceful stop under load ---- */

#define STOP_CLIENTS 200
#define SLOW_DEADLINE_MS 500
#define STOP_DEADLINE_MS 2000
#define STOP_WINDOW (64u * 1024u) /* bytes a client keeps in flight at most */

static void on_stopped(void *arg) {
    rx_loop_group *g = arg;
    atomic_store(&E.stopped_ms, tu_now_ms());
    if (pthread_equal(pthread_self(), E.threads[0]))
        atomic_store(&E.stopped_on_home, 1);
    atomic_fetch_add(&E.stopped, 1);
    rx_loop_group_stop(g);
}

static rx_server *stop_server;

static void stop_task(void *arg) {
    rx_server_stop(stop_server, STOP_DEADLINE_MS, on_stopped, arg);
    atomic_store(&E.stop_ms, tu_now_ms());
    atomic_store(&E.stop_called, 1);
}

static void stop_task_deadline(void *arg) {
    rx_server_stop(stop_server, SLOW_DEADLINE_MS, on_stopped, arg);
    atomic_store(&E.stop_called, 1);
}

struct joiner {
    rx_loop_group *g;
    int rc;
    atomic_int done;
    atomic_ullong done_ms;
};

static void *join_thread(void *arg) {
    struct joiner *j = arg;
    j->rc = rx_loop_group_join(j->g);
    atomic_store(&j->done_ms, tu_now_ms());
    atomic_store(&j->done, 1);
    return NULL;
}

START_TEST(test_stop_under_load_loses_no_echoed_byte) {
    rx_spread spread = _i == 0 ? RX_SPREAD_HANDOFF : RX_SPREAD_REUSEPORT;
    const char *name = spread_name(spread);
    if (!tu_raise_nofile(600)) {
        fprintf(stderr, "SKIP test_stop_under_load (%s): RLIMIT_NOFILE hard limit below 600\n",
                name);
        return;
    }
    enum { N = 4 };
    rx_loop *home;
    rx_server *s = echo_server(N, spread, &home, 0);
    stop_server = s;
    int port = tu_server_port(s);

    static struct client cl[STOP_CLIENTS];
    static struct pollfd pfd[STOP_CLIENTS];
    static int idx[STOP_CLIENTS];
    connect_clients(cl, STOP_CLIENTS, port);
    for (int i = 0; i < STOP_CLIENTS; i++)
        cl[i].base = (unsigned long long)i * 7919u;
    ck_assert_msg(tu_wait_atomic(&E.opens_total, STOP_CLIENTS, 20000), "%s: %d of %d opened", name,
                  atomic_load(&E.opens_total), STOP_CLIENTS);

    /* Joined from a thread of the test's, so the join is timed while the clients are driven. */
    static struct joiner j;
    j = (struct joiner){.g = E.g};
    atomic_init(&j.done, 0);
    atomic_init(&j.done_ms, 0);
    pthread_t jt;
    bool joining = false;

    unsigned long long start = tu_now_ms(), stop_at = 0, got_after_stop = 0;
    unsigned long long deadline = start + 30000;
    int open = STOP_CLIENTS;
    while (open > 0 && tu_now_ms() < deadline) {
        unsigned long long now = tu_now_ms();
        /* Stream for a while first, then stop while every client is busy. */
        if (!stop_at && now >= start + 300) {
            bool all_echoing = true;
            for (int i = 0; i < STOP_CLIENTS; i++)
                all_echoing = all_echoing && cl[i].got > 0;
            if (all_echoing) {
                ck_assert_int_eq(rx_loop_post(home, stop_task, E.g), 0);
                stop_at = now;
                ck_assert_int_eq(pthread_create(&jt, NULL, join_thread, &j), 0);
                joining = true;
            }
        }
        int n = 0;
        for (int i = 0; i < STOP_CLIENTS; i++) {
            if (cl[i].done)
                continue;
            short ev = POLLIN;
            if (!cl[i].eof && !cl[i].send_err && cl[i].sent - cl[i].got < STOP_WINDOW)
                ev |= POLLOUT;
            idx[n] = i;
            pfd[n++] = (struct pollfd){.fd = cl[i].fd, .events = ev};
        }
        (void)poll(pfd, (nfds_t)n, 10);
        for (int p = 0; p < n; p++) {
            struct client *c = &cl[idx[p]];
            unsigned long long before = c->got;
            client_read(c);
            if (stop_at)
                got_after_stop += c->got - before;
            /* Keep the stream going until the server ends it (it may drop what comes after its
             * close began: only bytes it echoed must arrive). */
            while (!c->eof && !c->err && !c->send_err && c->sent - c->got < STOP_WINDOW &&
                   client_send(c, STOP_WINDOW - (size_t)(c->sent - c->got))) {
            }
            if (c->eof || c->err) {
                /* Everything up to EOF was read: closing now sends a FIN, not a reset, and lets
                 * the server's graceful close finish. */
                close(c->fd);
                c->fd = -1;
                c->done = true;
                open--;
            }
        }
    }
    ck_assert_msg(stop_at != 0, "%s: not every client got an echo before the stop", name);
    ck_assert_msg(open == 0, "%s: %d clients saw no end of stream in 30 s", name, open);

    /* The group stops itself (on_stopped stops it): it must be joined within the deadline plus a
     * margin, counted from the moment the stop was posted. */
    const unsigned long long margin = 5000;
    unsigned long long join_deadline = stop_at + STOP_DEADLINE_MS + margin;
    while (!atomic_load(&j.done) && tu_now_ms() < join_deadline)
        usleep(2000);
    ck_assert_msg(atomic_load(&j.done), "%s: the group was not joined %llu ms after the stop", name,
                  STOP_DEADLINE_MS + margin);
    ck_assert(joining);
    ck_assert_int_eq(pthread_join(jt, NULL), 0);
    ck_assert_int_eq(j.rc, 0);

    ck_assert_int_eq(atomic_load(&E.stop_called), 1);
    ck_assert_int_eq(atomic_load(&E.stopped), 1);
    ck_assert_int_eq(atomic_load(&E.stopped_on_home), 1);
    /* The connections went on until the deadline: no client closed on its own, so nothing could
     * end the stop sooner (a little slack for the loop's cached clock). */
    unsigned long long took = atomic_load(&E.stopped_ms) - atomic_load(&E.stop_ms);
    fprintf(stderr, "%s: stop took %llu ms; %llu bytes echoed after the stop was posted\n", name,
            took, got_after_stop);
    ck_assert_msg(took + 200 >= STOP_DEADLINE_MS, "%s: stopped after %llu ms, deadline %d", name,
                  took, STOP_DEADLINE_MS);
    ck_assert_msg(got_after_stop > 0, "%s: no echo after the stop began", name);

    /* Every connection: every byte the server echoed arrived before the end of the stream, and
     * those bytes are the prefix of what the client sent. */
    ck_assert_int_eq(atomic_load(&E.closes), STOP_CLIENTS);
    int send_resets = 0;
    for (int i = 0; i < STOP_CLIENTS; i++) {
        ck_assert_msg(cl[i].bad < 0, "%s: client %d: wrong byte at %lld", name, i, cl[i].bad);
        ck_assert_int_eq(atomic_load(&E.closed_by_port[cl[i].port]), 1);
        unsigned long long echoed = atomic_load(&E.echoed_by_port[cl[i].port]);
        ck_assert_msg(cl[i].got == echoed,
                      "%s: client %d got %llu bytes, the server echoed %llu (sent %llu; end: eof "
                      "%d, read error %s, send error %s)",
                      name, i, cl[i].got, echoed, cl[i].sent, cl[i].eof, strerror(cl[i].err),
                      strerror(cl[i].send_err));
        ck_assert(cl[i].got <= cl[i].sent);
        /* The stream ended with the server's FIN, not a reset that could have cut it short. */
        ck_assert_msg(cl[i].eof && cl[i].err == 0, "%s: client %d: read error %s", name, i,
                      strerror(cl[i].err));
        send_resets += cl[i].send_err != 0;
    }
    if (send_resets)
        fprintf(stderr,
                "%s: %d clients were reset while still sending (after the server's FIN, "
                "having read all it echoed)\n",
                name, send_resets);
    /* Closed by the stop (graceful close: RX_CLOSE_LOCAL), none timed out or reset. */
    ck_assert_int_eq(atomic_load(&E.reasons[RX_CLOSE_LOCAL]), STOP_CLIENTS);
    check_no_thread_faults();

    /* The stop closed every listener: nothing accepts on the port any more. */
    int late = tu_tcp_connect(port, false);
    int err = errno;
    if (late >= 0)
        close(late);
    ck_assert_msg(late < 0 && err == ECONNREFUSED, "%s: connect after the stop: %s", name,
                  late >= 0 ? "accepted" : strerror(err));

    ck_assert_uint_eq(rx_server_conn_count(s), 0);
    ck_assert_uint_eq(rx_server_accepted(s), STOP_CLIENTS);
    rx_server_free(s);
    rx_loop_group_free(E.g);
}
END_TEST

/* A client that reads slowly and still talks now and then: when the stop closes its connection,
 * what the server echoed may still wait in the kernel for the client to read it. Its next bytes
 * must be dropped by the server (rx_conn_close reads to the peer's end for that), not answered
 * with a reset that destroys the echoed bytes still on their way. */
#define SLOW_CLIENTS 4
#define SLOW_BYTES (128u * 1024u)

/* A client socket with a small receive buffer (set before the connect, so the window is small). */
static int small_client(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    tu_set_buf(fd, SO_RCVBUF, 4096);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    tu_nonblock(fd);
    return fd;
}

/* Reads at most n bytes of the client's echo. */
static void client_read_some(struct client *cl, size_t n) {
    char buf[4096];
    ssize_t r = read(cl->fd, buf, tu_min(n, sizeof(buf)));
    if (r > 0) {
        long long b = tu_pattern_check(buf, cl->base + cl->got, (size_t)r);
        if (b >= 0 && cl->bad < 0)
            cl->bad = (long long)cl->got + b;
        cl->got += (unsigned long long)r;
    } else if (r == 0) {
        cl->eof = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        cl->err = errno;
    }
}

START_TEST(test_stop_slow_reader_that_talks) {
    rx_loop *home;
    /* A large server send buffer: the whole echo fits in the kernel, so the server has handed
     * everything over when the stop closes it, while the client has read only part of it. */
    rx_server *s = echo_server(2, RX_SPREAD_HANDOFF, &home, 1024 * 1024);
    stop_server = s;
    int port = tu_server_port(s);
    static struct client cl[SLOW_CLIENTS];
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        cl[i] = (struct client){.bad = -1, .base = (unsigned long long)i * 7919u};
        cl[i].fd = small_client(port);
        cl[i].port = tu_local_port(cl[i].fd);
    }
    ck_assert(tu_wait_atomic(&E.opens_total, SLOW_CLIENTS, 5000));
    unsigned long long deadline = tu_now_ms() + 10000;
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        while (cl[i].sent < SLOW_BYTES && tu_now_ms() < deadline)
            if (!client_send(&cl[i], SLOW_BYTES - (size_t)cl[i].sent))
                tu_poll(cl[i].fd, POLLOUT, 10);
        ck_assert_int_eq(cl[i].send_err, 0);
        ck_assert_uint_eq(cl[i].sent, SLOW_BYTES);
    }
    while (atomic_load(&E.echoed_total) < SLOW_CLIENTS * SLOW_BYTES && tu_now_ms() < deadline)
        usleep(1000);
    ck_assert_uint_eq(atomic_load(&E.echoed_total), SLOW_CLIENTS * SLOW_BYTES);

    ck_assert_int_eq(rx_loop_post(home, stop_task_deadline, (void *)E.g), 0);
    unsigned long long stop_at = tu_now_ms();
    bool pinged = false;
    /* 2 KiB per 25 ms (80 KB/s): 128 KiB take 1.6 s, well past the stop's deadline (0.5 s); a
     * word to the server at 0.7 s, after its close began and before the client read it all. */
    int open = SLOW_CLIENTS;
    while (open > 0 && tu_now_ms() < stop_at + 15000) {
        usleep(25 * 1000);
        if (!pinged && tu_now_ms() >= stop_at + SLOW_DEADLINE_MS + 200) {
            for (int i = 0; i < SLOW_CLIENTS; i++)
                if (!cl[i].eof && !cl[i].err)
                    (void)send(cl[i].fd, "ping", 4, MSG_NOSIGNAL);
            pinged = true;
        }
        open = 0;
        for (int i = 0; i < SLOW_CLIENTS; i++) {
            if (cl[i].eof || cl[i].err)
                continue;
            client_read_some(&cl[i], 2048);
            if (!cl[i].eof && !cl[i].err)
                open++;
        }
    }
    for (int i = 0; i < SLOW_CLIENTS; i++)
        close(cl[i].fd);
    ck_assert_int_eq(tu_group_join_within(E.g, 10000), 0);
    ck_assert_int_eq(atomic_load(&E.stopped), 1);
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        ck_assert_msg(cl[i].bad < 0, "client %d: wrong byte at %lld", i, cl[i].bad);
        ck_assert_msg(cl[i].got == SLOW_BYTES && cl[i].eof && cl[i].err == 0,
                      "client %d: got %llu of %u echoed bytes, then %s", i, cl[i].got, SLOW_BYTES,
                      cl[i].eof   ? "EOF"
                      : cl[i].err ? strerror(cl[i].err)
                                  : "nothing (15 s)");
    }
    check_no_thread_faults();
    rx_server_free(s);
    rx_loop_group_free(E.g);
}
END_TEST

static Suite *group_suite(void) {
    Suite *s = suite_create("group");
    TCase *life = tu_tcase(s, "lifecycle", 30);
    tcase_add_test(life, test_new_zero_is_one_per_cpu);
    tcase_add_test(life, test_threads_named_distinct_and_stable);
    tcase_add_test(life, test_stop_from_a_loop_callback);
    tcase_add_test(life, test_free_while_running_stops_and_joins);
    tcase_add_test(life, test_tasks_posted_before_start_run_on_the_threads);
    TCase *pick = tu_tcase(s, "pick", 30);
    tcase_add_test(pick, test_pick_round_robin_cycles);
    tcase_add_test(pick, test_pick_least_conns);
    TCase *server = tu_tcase(s, "server", 120);
    tcase_add_loop_test(server, test_echo_1000_conns_over_4_loops, 0, 2);
    TCase *stop = tu_tcase(s, "stop", 60);
    tcase_add_loop_test(stop, test_stop_under_load_loses_no_echoed_byte, 0, 2);
    tcase_add_test(stop, test_stop_slow_reader_that_talks);
    return s;
}

int main(void) { return tu_main(group_suite()); }
