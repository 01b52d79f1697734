/* Helpers shared by the test suites (see testutil.h). */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sys.h"

int tu_main(Suite *s) {
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

void tu_teardown(void) { rx_sys_reset(); }

TCase *tu_tcase(Suite *s, const char *name, double timeout) {
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    tcase_add_checked_fixture(tc, NULL, tu_teardown);
    suite_add_tcase(s, tc);
    return tc;
}

void tu_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    ck_assert_int_ge(fl, 0);
    ck_assert_int_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

void tu_socketpair(int sv[2]) {
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

bool tu_fd_closed(int fd) {
    errno = 0;
    return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

void tu_set_buf(int fd, int opt, int bytes) {
    ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof(bytes)), 0);
}

unsigned long long tu_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000u + (unsigned long long)ts.tv_nsec / 1000000u;
}

void tu_spin_ms(unsigned ms) {
    unsigned long long end = tu_now_ms() + ms;
    while (tu_now_ms() < end) {
    }
}

bool tu_run_until(rx_loop *loop, const bool *done, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (!*done && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    return *done;
}

bool tu_run_until_count(rx_loop *loop, const int *count, int want, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (*count < want && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    return *count >= want;
}

void tu_run_for(rx_loop *loop, int ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)ms;
    while (tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
}

bool tu_run_until_fn(rx_loop *loop, bool (*fn)(void *arg), void *arg, int max_ms, int wait_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    for (;;) {
        if (fn(arg))
            return true;
        if (tu_now_ms() >= deadline)
            return fn(arg);
        ck_assert_int_ge(rx_loop_run_once(loop, wait_ms), 0);
    }
}

/* ---- TCP helpers ---- */

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
}

int tu_local_port(int fd) {
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    return ntohs(sin.sin_port);
}

int tu_tcp_listen(int backlog, int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sin = loopback(0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    ck_assert_int_eq(listen(fd, backlog), 0);
    *port = tu_local_port(fd);
    return fd;
}

int tu_tcp_connect(int port, bool nonblock) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sin = loopback(port);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (nonblock)
        tu_nonblock(fd);
    return fd;
}

void tu_tcp_pair(int *a, int *b) {
    int port;
    int lfd = tu_tcp_listen(1, &port);
    *b = tu_tcp_connect(port, true);
    ck_assert_int_ge(*b, 0);
    *a = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    ck_assert_int_ge(*a, 0);
    close(lfd);
}

void tu_small_tcp_pair(int *a, int *b) {
    tu_tcp_pair(a, b);
    tu_set_buf(*a, SO_SNDBUF, 32 * KiB);
    tu_set_buf(*b, SO_RCVBUF, 32 * KiB);
}

rx_conn *tu_conn_pair(rx_loop *loop, bool small, const rx_conn_opts *o,
                      const rx_conn_callbacks *cbs, void *arg, int *peer) {
    int a;
    if (small)
        tu_small_tcp_pair(&a, peer);
    else
        tu_tcp_pair(&a, peer);
    rx_conn *c = rx_conn_new(loop, a, o, cbs, arg);
    ck_assert_ptr_nonnull(c);
    return c;
}

int tu_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sin = loopback(0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    int port = tu_local_port(fd);
    close(fd);
    return port;
}

void tu_addr(char *buf, size_t n, int port) { snprintf(buf, n, "127.0.0.1:%d", port); }

rx_server *tu_server(rx_loop *loop, rx_server_opts *o) {
    o->listen = "127.0.0.1:0";
    rx_server *s = rx_server_new(loop, o);
    ck_assert_ptr_nonnull(s);
    return s;
}

int tu_server_port(const rx_server *s) { return rx_addr_port(rx_server_addr(s)); }

short tu_poll(int fd, short events, int ms) {
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do
        n = poll(&p, 1, ms);
    while (n < 0 && errno == EINTR);
    return n > 0 ? p.revents : 0;
}

static void guard_fired(rx_timer *t, void *arg) {
    (void)t;
    tu_guard *g = arg;
    g->fired = true;
    rx_loop_stop(g->loop);
}

void tu_guard_start(tu_guard *g, rx_loop *loop, uint64_t ms) {
    g->loop = loop;
    g->fired = false;
    g->timer = rx_timer_new(loop, guard_fired, g);
    ck_assert_ptr_nonnull(g->timer);
    ck_assert_int_eq(rx_timer_start(g->timer, ms, 0), 0);
}

void tu_guard_free(tu_guard *g) {
    rx_timer_free(g->timer);
    g->timer = NULL;
}

/* ---- the byte pattern ---- */

/* The stream is a table of a prime length plus the number of the lap, so both a misplaced
 * chunk and a repeated lap show. */
#define TU_PAT_LEN 65521u

static unsigned char pattern[TU_PAT_LEN];

static void pattern_init(void) {
    unsigned x = 2463534242u;
    for (unsigned i = 0; i < TU_PAT_LEN; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pattern[i] = (unsigned char)x;
    }
}

/* Built once, whichever thread gets here first (tests check the stream on several threads). */
static const unsigned char *pattern_table(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pattern_init);
    return pattern;
}

void tu_pattern_fill(void *buf, unsigned long long off, size_t n) {
    const unsigned char *t = pattern_table();
    unsigned char *out = buf;
    while (n > 0) {
        size_t pos = (size_t)(off % TU_PAT_LEN);
        unsigned char lap = (unsigned char)(off / TU_PAT_LEN);
        size_t take = TU_PAT_LEN - pos < n ? TU_PAT_LEN - pos : n;
        for (size_t i = 0; i < take; i++)
            out[i] = (unsigned char)(t[pos + i] + lap);
        out += take;
        off += take;
        n -= take;
    }
}

long long tu_pattern_check(const void *buf, unsigned long long off, size_t n) {
    unsigned char want[4096];
    const unsigned char *in = buf;
    size_t done = 0;
    while (done < n) {
        size_t take = n - done < sizeof(want) ? n - done : sizeof(want);
        tu_pattern_fill(want, off + done, take);
        if (memcmp(want, in + done, take) != 0) {
            for (size_t i = 0; i < take; i++) {
                if (want[i] != in[done + i])
                    return (long long)(done + i);
            }
        }
        done += take;
    }
    return -1;
}

char *tu_pattern_alloc(unsigned long long off, size_t n) {
    char *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    tu_pattern_fill(p, off, n);
    return p;
}

int tu_send_pattern(rx_conn *c, unsigned long long off, size_t n) {
    char *p = tu_pattern_alloc(off, n);
    int rc = rx_conn_send(c, p, n);
    free(p);
    return rc;
}

int tu_pattern_file(size_t n) {
    char path[] = "/tmp/rx-test-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    char *p = tu_pattern_alloc(0, n);
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        ck_assert_int_gt(w, 0);
        done += (size_t)w;
    }
    free(p);
    return fd;
}

/* ---- the far end of a connection ---- */

void tu_peer_init(tu_peer *p, int fd, bool verify) {
    memset(p, 0, sizeof(*p));
    p->fd = fd;
    p->verify = verify;
    p->bad = -1;
}

bool tu_peer_read(tu_peer *p) {
    static char tmp[65536];
    while (!p->eof && !p->err) {
        char *dst = tmp;
        if (!p->verify) {
            ck_assert_int_eq(rx_buffer_reserve(&p->got, sizeof(tmp)), 0);
            dst = rx_buffer_tail(&p->got);
        }
        ssize_t n = read(p->fd, dst, sizeof(tmp));
        if (n > 0) {
            if (p->verify) {
                long long bad = tu_pattern_check(dst, p->n, (size_t)n);
                if (bad >= 0 && p->bad < 0)
                    p->bad = (long long)p->n + bad;
            } else {
                rx_buffer_commit(&p->got, (size_t)n);
            }
            p->n += (unsigned long long)n;
        } else if (n == 0) {
            p->eof = true;
        } else if (errno == EINTR) {
            continue;
        } else {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                p->err = errno;
            break;
        }
    }
    return p->eof || p->err;
}

void tu_peer_free(tu_peer *p) {
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    rx_buffer_free(&p->got);
}

void tu_peer_write_all(rx_loop *loop, int fd, const void *buf, size_t n) {
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

/* ---- a traced connection ---- */

/* Notes a call of the callback `what` (late after on_close, or once the test set `done`); returns
 * the trace it goes to. */
static tu_tr *tr_note(void *arg, const char *what) {
    tu_tr *t = arg;
    if (t->closes || t->done) {
        t->late++;
        t->late_what = what;
    }
    return t;
}

/* Also the connection's context from now on (a server's connection has none until set). */
void tu_tr_open(rx_conn *c, void *arg) {
    tu_tr *t = tr_note(arg, "on_open");
    rx_conn_set_arg(c, t);
    t->opens++;
    t->c = c;
    t->open_ms = tu_now_ms();
    t->state_at_open = rx_conn_get_state(c);
    if (t->close_in_open)
        rx_conn_close(c);
    if (t->abort_in_open)
        rx_conn_abort(c);
}

void tu_tr_data(rx_conn *c, rx_buffer *in, void *arg) {
    tu_tr *t = tr_note(arg, "on_data");
    t->datas++;
    ck_assert_uint_gt(rx_buffer_len(in), 0);
    ck_assert_int_eq(rx_buffer_append(&t->in, rx_buffer_peek(in), rx_buffer_len(in)), 0);
    if (t->echo)
        ck_assert_int_eq(rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in)), 0);
    rx_buffer_consume(in, rx_buffer_len(in));
}

void tu_tr_drain(rx_conn *c, void *arg) {
    (void)c;
    tr_note(arg, "on_drain")->drains++;
}

void tu_tr_high(rx_conn *c, size_t queued, void *arg) {
    (void)c;
    (void)queued;
    tr_note(arg, "on_high_water")->highs++;
}

void tu_tr_low(rx_conn *c, size_t queued, void *arg) {
    (void)c;
    (void)queued;
    tr_note(arg, "on_low_water")->lows++;
}

void tu_tr_eof(rx_conn *c, void *arg) {
    (void)c;
    tu_tr *t = tr_note(arg, "on_eof");
    t->eofs++;
    t->in_at_eof = rx_buffer_len(&t->in);
}

void tu_tr_timeout(rx_conn *c, rx_timeout_kind kind, void *arg) {
    (void)c;
    tu_tr *t = tr_note(arg, "on_timeout");
    t->timeouts++;
    t->timeout_kinds[kind]++;
}

void tu_tr_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    tu_tr *t = arg;
    t->closes++;
    t->reason = reason;
    t->err = err;
    t->ended_at_close = rx_conn_ended(c);
    t->close_ms = tu_now_ms();
    t->bytes_in = rx_conn_bytes_in(c);
    t->bytes_out = rx_conn_bytes_out(c);
    t->in_at_close = rx_buffer_len(&t->in);
    t->c = NULL;
}

const rx_conn_callbacks tu_tr_cbs = {
    .on_open = tu_tr_open,
    .on_data = tu_tr_data,
    .on_drain = tu_tr_drain,
    .on_high_water = tu_tr_high,
    .on_low_water = tu_tr_low,
    .on_close = tu_tr_close,
};

bool tu_tr_closed(void *tr) { return ((tu_tr *)tr)->closes > 0; }

bool tu_tr_opened(void *tr) {
    tu_tr *t = tr;
    return t->opens > 0 || t->closes > 0;
}

void tu_tr_assert_none_late(const tu_tr *t) {
    ck_assert_msg(t->late == 0, "%d callback(s) after close, last %s", t->late, t->late_what);
}

void tu_tr_wait_close(rx_loop *loop, tu_tr *t, int max_ms, rx_close_reason reason) {
    ck_assert_msg(tu_run_until_fn(loop, tu_tr_closed, t, max_ms, 5), "no on_close in %d ms",
                  max_ms);
    ck_assert_int_eq(t->reason, reason);
}

void tu_tr_assert_closes_next(rx_loop *loop, const tu_tr *t, rx_close_reason reason) {
    ck_assert_int_eq(t->closes, 0);
    rx_loop_run_once(loop, 0);
    ck_assert_int_eq(t->closes, 1);
    ck_assert_int_eq(t->reason, reason);
}

void tu_tr_assert_closed_once(rx_loop *loop, const tu_tr *t, int ms) {
    tu_run_for(loop, ms);
    ck_assert_int_eq(t->closes, 1);
}

void tu_free_loop_closing(rx_loop *loop, ...) {
    rx_loop_free(loop);
    va_list ap;
    va_start(ap, loop);
    for (tu_tr *t; (t = va_arg(ap, tu_tr *)) != NULL;) {
        ck_assert_int_eq(t->closes, 1);
        tu_tr_free(t);
    }
    va_end(ap);
}

void tu_tr_free(tu_tr *t) { rx_buffer_free(&t->in); }

bool tu_peer_done(void *peer) { return tu_peer_read(peer); }

bool tu_peer_has(void *duo) {
    tu_duo *d = duo;
    tu_peer_read(d->p);
    return d->p->n >= d->want || d->p->eof || d->p->err;
}

bool tu_peer_done_and_closed(void *duo) {
    tu_duo *d = duo;
    return tu_peer_read(d->p) && d->t->closes > 0;
}

bool tu_tr_has(void *duo) {
    tu_duo *d = duo;
    return rx_buffer_len(&d->t->in) >= d->want || d->t->closes > 0;
}

/* ---- threads and loop groups ---- */

bool tu_forking(void) {
    const char *f = getenv("CK_FORK");
    return !(f && strcmp(f, "no") == 0);
}

unsigned tu_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    ck_assert_int_eq(sched_getaffinity(0, sizeof(set), &set), 0);
    return (unsigned)CPU_COUNT(&set);
}

bool tu_raise_nofile(unsigned long want) {
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want;
}

static void nap(void) {
    struct timespec ts = {.tv_nsec = 200 * 1000};
    nanosleep(&ts, NULL);
}

bool tu_wait_atomic(atomic_int *v, int want, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (atomic_load(v) < want && tu_now_ms() < deadline)
        nap();
    return atomic_load(v) >= want;
}

bool tu_wait_fn(bool (*fn)(void *arg), void *arg, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (!fn(arg) && tu_now_ms() < deadline)
        nap();
    return fn(arg);
}

/* A call made on another thread: what it runs and whether it returned. */
struct tu_call {
    rx_task_fn fn;
    void *arg;
    atomic_int done;
};

static void call_run(void *arg) {
    struct tu_call *call = arg;
    call->fn(call->arg);
    atomic_store(&call->done, 1);
}

void tu_on_loop(rx_loop *loop, rx_task_fn fn, void *arg, int max_ms) {
    /* Static, not on the stack: a task that misses the deadline may still run after this returns
     * (the test fails then, and the loop must not write into a dead frame). */
    static struct tu_call calls[64];
    static atomic_uint next;
    struct tu_call *call = &calls[atomic_fetch_add(&next, 1) % 64];
    call->fn = fn;
    call->arg = arg;
    atomic_store(&call->done, 0);
    ck_assert_int_eq(rx_loop_post(loop, call_run, call), 0);
    ck_assert_msg(tu_wait_atomic(&call->done, 1, max_ms),
                  "a task posted to a loop did not run in %d ms", max_ms);
}

static void *call_thread(void *arg) {
    call_run(arg);
    return NULL;
}

bool tu_call_within(rx_task_fn fn, void *arg, int max_ms) {
    struct tu_call *call = malloc(sizeof(*call));
    ck_assert_ptr_nonnull(call);
    call->fn = fn;
    call->arg = arg;
    atomic_init(&call->done, 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, call_thread, call), 0);
    if (!tu_wait_atomic(&call->done, 1, max_ms)) {
        pthread_detach(t); /* call stays allocated: the thread still uses it */
        return false;
    }
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    free(call);
    return true;
}

struct group_join {
    rx_loop_group *g;
    int rc;
};

static void group_join(void *arg) {
    struct group_join *j = arg;
    j->rc = rx_loop_group_join(j->g);
}

int tu_group_join_within(rx_loop_group *g, int max_ms) {
    static struct group_join j; /* static: outlives a join that missed the deadline */
    j = (struct group_join){.g = g, .rc = 1};
    ck_assert_msg(tu_call_within(group_join, &j, max_ms),
                  "the group's threads did not end in %d ms", max_ms);
    return j.rc;
}

int tu_group_index(const rx_loop_group *g, const rx_loop *loop) {
    for (unsigned i = 0; i < rx_loop_group_size(g); i++)
        if (rx_loop_group_loop(g, i) == loop)
            return (int)i;
    return -1;
}

static void note_self(void *arg) { *(pthread_t *)arg = pthread_self(); }

void tu_group_threads(rx_loop_group *g, pthread_t *out) {
    for (unsigned i = 0; i < rx_loop_group_size(g); i++)
        tu_on_loop(rx_loop_group_loop(g, i), note_self, &out[i], 5000);
}

/* ---- fault injection ---- */

void *tu_fail_malloc(size_t n) {
    (void)n;
    errno = ENOMEM;
    return NULL;
}

void *tu_fail_calloc(size_t count, size_t n) {
    (void)count;
    (void)n;
    errno = ENOMEM;
    return NULL;
}

void *tu_fail_realloc(void *p, size_t n) {
    (void)p;
    (void)n;
    errno = ENOMEM;
    return NULL;
}

void tu_fail_allocs(void) {
    rx_sys.malloc = tu_fail_malloc;
    rx_sys.calloc = tu_fail_calloc;
    rx_sys.realloc = tu_fail_realloc;
}

struct tu_ctl tu_ctl = {.fd = -1};

static int ctl_injected(int epfd, int op, int fd, struct epoll_event *ev) {
    if (tu_ctl.fd >= 0 && fd != tu_ctl.fd)
        return epoll_ctl(epfd, op, fd, ev);
    tu_ctl.calls++;
    if (op == EPOLL_CTL_MOD && ev && (ev->events & EPOLLOUT))
        tu_ctl.out_mods++;
    if (tu_ctl.fail_errno && (tu_ctl.fail_op == 0 || tu_ctl.fail_op == op)) {
        tu_ctl.failures++;
        errno = tu_ctl.fail_errno;
        return -1;
    }
    return epoll_ctl(epfd, op, fd, ev);
}

void tu_inject_epoll_ctl(int fd) {
    tu_ctl = (struct tu_ctl){.fd = fd};
    rx_sys.epoll_ctl = ctl_injected;
}

struct tu_io tu_io = {.fd = -1};

/* How many bytes write call k may take, or -1 with errno for an injected failure. */
static long io_limit(void) {
    unsigned k = tu_io.calls++;
    if (tu_io.fail_errno) {
        errno = tu_io.fail_errno;
        return -1;
    }
    if (tu_io.shorten) {
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
    return tu_io.max_write ? (long)tu_io.max_write : -2;
}

static size_t io_cap(long lim, size_t n) { return lim == -2 ? n : tu_min(n, (size_t)lim); }

/* After a write call on the injected fd: a full socket waits for room when never_full asks
 * (returns true: try again); else the count is recorded. */
static bool io_done(ssize_t n) {
    if (n < 0 && errno == EAGAIN && tu_io.never_full) {
        tu_poll(tu_io.fd, POLLOUT, 1000);
        return true;
    }
    if (n > 0) {
        tu_io.sent += (unsigned long long)n;
        if ((size_t)n > tu_io.largest)
            tu_io.largest = (size_t)n;
    }
    return false;
}

static ssize_t io_send(int fd, const void *buf, size_t n, int flags) {
    if (fd != tu_io.fd)
        return send(fd, buf, n, flags);
    ssize_t r;
    do {
        long lim = io_limit();
        if (lim == -1)
            return -1;
        r = send(fd, buf, io_cap(lim, n), flags);
    } while (io_done(r));
    return r;
}

static ssize_t io_sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (fd != tu_io.fd)
        return sendmsg(fd, msg, flags);
    ssize_t r;
    do {
        long lim = io_limit();
        if (lim == -1)
            return -1;
        /* The first lim bytes of the message, in at most 64 pieces. */
        struct iovec iov[64];
        size_t cnt = 0, total = 0, max = io_cap(lim, SIZE_MAX);
        for (size_t i = 0; i < msg->msg_iovlen && cnt < 64 && total < max; i++) {
            size_t take = tu_min(msg->msg_iov[i].iov_len, max - total);
            iov[cnt++] = (struct iovec){.iov_base = msg->msg_iov[i].iov_base, .iov_len = take};
            total += take;
        }
        struct msghdr m = *msg;
        m.msg_iov = iov;
        m.msg_iovlen = cnt;
        r = sendmsg(fd, &m, flags);
    } while (io_done(r));
    return r;
}

static ssize_t io_sendfile(int out, int in, off_t *off, size_t n) {
    if (out != tu_io.fd)
        return sendfile(out, in, off, n);
    ssize_t r;
    do {
        long lim = io_limit();
        if (lim == -1)
            return -1;
        r = sendfile(out, in, off, io_cap(lim, n));
    } while (io_done(r));
    return r;
}

static ssize_t io_read(int fd, void *buf, size_t n) {
    if (fd == tu_io.fd && tu_io.fail_errno) {
        errno = tu_io.fail_errno;
        return -1;
    }
    return read(fd, buf, n);
}

static ssize_t io_readv(int fd, const struct iovec *iov, int cnt) {
    if (fd == tu_io.fd && tu_io.fail_errno) {
        errno = tu_io.fail_errno;
        return -1;
    }
    return readv(fd, iov, cnt);
}

void tu_inject_io(int fd) {
    tu_io = (struct tu_io){.fd = fd};
    rx_sys.send = io_send;
    rx_sys.sendmsg = io_sendmsg;
    rx_sys.sendfile = io_sendfile;
    rx_sys.read = io_read;
    rx_sys.readv = io_readv;
}

int tu_in_child(void (*fn)(void *), void *arg, char *msg, size_t cap) {
    int pfd[2];
    ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(pfd[1], STDERR_FILENO);
        fn(arg);
        _exit(2); /* fn returned */
    }
    close(pfd[1]);
    size_t got = 0;
    unsigned long long deadline = tu_now_ms() + 10000;
    for (;;) {
        if (tu_poll(pfd[0], POLLIN, 50) == 0) {
            if (tu_now_ms() >= deadline)
                break;
            continue;
        }
        ssize_t r = read(pfd[0], msg + got, cap - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == cap - 1)
            break;
    }
    msg[got] = '\0';
    close(pfd[0]);
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && tu_now_ms() < deadline)
        usleep(5000);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        ck_abort_msg("the child neither aborted nor exited in 10 s");
    }
    return status;
}
