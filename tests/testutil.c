/* Helpers shared by the test suites (see testutil.h). */
#include "testutil.h"

#include <check.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>

void tu_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    ck_assert_int_ge(fl, 0);
    ck_assert_int_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

void tu_socketpair(int sv[2]) {
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

unsigned long long tu_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000u + (unsigned long long)ts.tv_nsec / 1000000u;
}

bool tu_run_until(rx_loop *loop, const bool *done, int max_ms) {
    unsigned long long deadline = tu_now_ms() + (unsigned long long)max_ms;
    while (!*done && tu_now_ms() < deadline)
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    return *done;
}

/* ---- TCP helpers ---- */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
}

static int bound_port(int fd) {
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
    *port = bound_port(fd);
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

int tu_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sin = loopback(0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    int port = bound_port(fd);
    close(fd);
    return port;
}

short tu_poll(int fd, short events, int ms) {
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do
        n = poll(&p, 1, ms);
    while (n < 0 && errno == EINTR);
    return n > 0 ? p.revents : 0;
}

/* The stream is a table of a prime length plus the number of the lap, so both a misplaced
 * chunk and a repeated lap show. */
#define TU_PAT_LEN 65521u

static const unsigned char *pattern_table(void) {
    static unsigned char table[TU_PAT_LEN];
    static bool ready;
    if (!ready) {
        unsigned x = 2463534242u;
        for (unsigned i = 0; i < TU_PAT_LEN; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            table[i] = (unsigned char)x;
        }
        ready = true;
    }
    return table;
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
