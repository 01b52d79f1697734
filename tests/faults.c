/* The injectors of faults.h. Each decides, from the seeded stream, what its call does; a short
 * count shrinks the request before the real call, so what the kernel reports stays true. */
#include "faults.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sys.h"

tf_counts tf_count;

static const char *kind_names[TF_KINDS] = {"short", "eagain", "eintr", "reset", "enomem"};

static struct {
    uint64_t rng;
    tf_plan plan;
    bool trace; /* RX_FAULT_TRACE: print every injected fault */
} F;

uint64_t tf_rand(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

tf_plan tf_plan_for(uint64_t seed) {
    /* Transient kinds up to 20% of calls; fatal ones (a reset, ENOMEM) up to 1%: more would end
     * nearly every connection at its first call and test little else. */
    static const unsigned transient[] = {0, 100, 500, 2000};
    static const unsigned fatal[] = {0, 0, 20, 100};
    uint64_t s = seed ^ 0x5eedull;
    tf_plan p;
    for (int k = 0; k < TF_KINDS; k++) {
        unsigned pick = (unsigned)(tf_rand(&s) % 4);
        p.per10k[k] = k == TF_RESET || k == TF_ENOMEM ? fatal[pick] : transient[pick];
    }
    return p;
}

void tf_plan_describe(const tf_plan *p, char *buf, size_t cap) {
    size_t at = 0;
    for (int k = 0; k < TF_KINDS && at < cap; k++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%s %u.%02u%%", k ? " " : "", kind_names[k],
                               p->per10k[k] / 100, p->per10k[k] % 100);
}

#define BIT(k) (1u << (k))

/* The fault for this call of `what` among the kinds in `can` (bits of tf_kind), or TF_KINDS for
 * none. */
static tf_kind decide(const char *what, unsigned can) {
    tf_count.calls++;
    unsigned r = (unsigned)(tf_rand(&F.rng) % 10000);
    for (int k = 0; k < TF_KINDS; k++) {
        if (!(can & BIT(k)))
            continue;
        if (r < F.plan.per10k[k]) {
            tf_count.injected[k]++;
            if (F.trace)
                fprintf(stderr, "fault: call %llu, %s: %s\n", tf_count.calls, what, kind_names[k]);
            return (tf_kind)k;
        }
        r -= F.plan.per10k[k];
    }
    return TF_KINDS;
}

/* 1..n-1 bytes of n (n when it cannot be shorter). */
static size_t shorter(size_t n) { return n > 1 ? 1 + (size_t)(tf_rand(&F.rng) % (n - 1)) : n; }

static ssize_t fail(int err) {
    errno = err;
    return -1;
}

/* The error of a fault that fails the call: a reset is ECONNRESET or, for writes, EPIPE. */
static ssize_t fail_as(tf_kind f, bool writing) {
    switch (f) {
    case TF_EAGAIN:
        return fail(EAGAIN);
    case TF_EINTR:
        return fail(EINTR);
    case TF_RESET:
        return fail(writing && (tf_rand(&F.rng) & 1) ? EPIPE : ECONNRESET);
    default:
        return fail(ENOMEM);
    }
}

#define IO_FAULTS (BIT(TF_SHORT) | BIT(TF_EAGAIN) | BIT(TF_EINTR) | BIT(TF_RESET))

/* A copy of iov holding at most `keep` bytes, in out (cap entries); returns its count. */
static int trim_iov(const struct iovec *iov, int cnt, size_t keep, struct iovec *out, int cap) {
    int n = 0;
    for (int i = 0; i < cnt && n < cap && keep > 0; i++) {
        out[n] = iov[i];
        if (out[n].iov_len > keep)
            out[n].iov_len = keep;
        keep -= out[n].iov_len;
        n++;
    }
    return n;
}

static size_t iov_total(const struct iovec *iov, int cnt) {
    size_t n = 0;
    for (int i = 0; i < cnt; i++)
        n += iov[i].iov_len;
    return n;
}

#define IOV_CAP 1024

static ssize_t f_read(int fd, void *buf, size_t n) {
    tf_kind f = decide("read", IO_FAULTS);
    if (f == TF_SHORT || f == TF_KINDS)
        return read(fd, buf, f == TF_SHORT ? shorter(n) : n);
    return fail_as(f, false);
}

static ssize_t f_write(int fd, const void *buf, size_t n) {
    tf_kind f = decide("write", IO_FAULTS);
    if (f == TF_SHORT || f == TF_KINDS)
        return write(fd, buf, f == TF_SHORT ? shorter(n) : n);
    return fail_as(f, true);
}

static ssize_t f_send(int fd, const void *buf, size_t n, int flags) {
    tf_kind f = decide("send", IO_FAULTS);
    if (f == TF_SHORT || f == TF_KINDS)
        return send(fd, buf, f == TF_SHORT ? shorter(n) : n, flags);
    return fail_as(f, true);
}

/* readv and writev: a short count trims the vector. */
static ssize_t f_vec(int fd, const struct iovec *iov, int cnt, bool writing) {
    tf_kind f = decide(writing ? "writev" : "readv", IO_FAULTS);
    if (f != TF_SHORT && f != TF_KINDS)
        return fail_as(f, writing);
    struct iovec tmp[IOV_CAP];
    if (f == TF_SHORT && cnt <= IOV_CAP) {
        cnt = trim_iov(iov, cnt, shorter(iov_total(iov, cnt)), tmp, IOV_CAP);
        iov = tmp;
    }
    return writing ? writev(fd, iov, cnt) : readv(fd, iov, cnt);
}

static ssize_t f_readv(int fd, const struct iovec *iov, int cnt) {
    return f_vec(fd, iov, cnt, false);
}

static ssize_t f_writev(int fd, const struct iovec *iov, int cnt) {
    return f_vec(fd, iov, cnt, true);
}

static ssize_t f_sendmsg(int fd, const struct msghdr *msg, int flags) {
    tf_kind f = decide("sendmsg", IO_FAULTS);
    if (f != TF_SHORT && f != TF_KINDS)
        return fail_as(f, true);
    struct iovec tmp[IOV_CAP];
    struct msghdr m = *msg;
    int cnt = (int)m.msg_iovlen;
    if (f == TF_SHORT && cnt <= IOV_CAP) {
        m.msg_iovlen =
            (size_t)trim_iov(m.msg_iov, cnt, shorter(iov_total(m.msg_iov, cnt)), tmp, IOV_CAP);
        m.msg_iov = tmp;
    }
    return sendmsg(fd, &m, flags);
}

static ssize_t f_sendfile(int out, int in, off_t *off, size_t n) {
    tf_kind f = decide("sendfile", IO_FAULTS);
    if (f == TF_SHORT || f == TF_KINDS)
        return sendfile(out, in, off, f == TF_SHORT ? shorter(n) : n);
    return fail_as(f, true);
}

/* A failed accept leaves the connection in the backlog, as the kernel does for these errors. */
static int f_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    tf_kind f = decide("accept4", BIT(TF_EAGAIN) | BIT(TF_EINTR) | BIT(TF_RESET) | BIT(TF_ENOMEM));
    if (f == TF_KINDS) {
        int s = accept4(fd, addr, len, flags);
        if (s >= 0)
            tf_count.accepted++;
        return s;
    }
    errno = f == TF_EAGAIN  ? EAGAIN
            : f == TF_EINTR ? EINTR
            : f == TF_RESET ? ECONNABORTED
                            : ENOBUFS;
    return -1;
}

/* Removing an fd does not allocate; adding or changing one may fail for want of memory. */
static int f_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    if (op != EPOLL_CTL_DEL && decide("epoll_ctl", BIT(TF_ENOMEM)) == TF_ENOMEM)
        return (int)fail(ENOMEM);
    return epoll_ctl(epfd, op, fd, ev);
}

/* EAGAIN only where the kernel can give it: a lookup asked to stay in the cache. */
static int f_openat2(int dirfd, const char *path, const struct open_how *how) {
    unsigned can = BIT(TF_ENOMEM) | ((how->resolve & RESOLVE_CACHED) ? BIT(TF_EAGAIN) : 0);
    tf_kind f = decide("openat2", can);
    if (f != TF_KINDS)
        return (int)fail(f == TF_EAGAIN ? EAGAIN : ENOMEM);
    return (int)syscall(SYS_openat2, dirfd, path, how, sizeof(*how));
}

static int f_fstat(int fd, struct stat *st) {
    if (decide("fstat", BIT(TF_ENOMEM)) == TF_ENOMEM)
        return (int)fail(ENOMEM);
    return fstat(fd, st);
}

static void *f_malloc(size_t n) {
    return decide("malloc", BIT(TF_ENOMEM)) == TF_ENOMEM ? NULL : malloc(n);
}

static void *f_calloc(size_t count, size_t n) {
    return decide("calloc", BIT(TF_ENOMEM)) == TF_ENOMEM ? NULL : calloc(count, n);
}

static void *f_realloc(void *p, size_t n) {
    return decide("realloc", BIT(TF_ENOMEM)) == TF_ENOMEM ? NULL : realloc(p, n);
}

void tf_start(uint64_t seed, const tf_plan *plan) {
    F.rng = seed;
    F.plan = *plan;
    F.trace = getenv("RX_FAULT_TRACE") != NULL;
    memset(&tf_count, 0, sizeof(tf_count));
    rx_sys.read = f_read;
    rx_sys.readv = f_readv;
    rx_sys.write = f_write;
    rx_sys.writev = f_writev;
    rx_sys.send = f_send;
    rx_sys.sendmsg = f_sendmsg;
    rx_sys.sendfile = f_sendfile;
    rx_sys.accept4 = f_accept4;
    rx_sys.epoll_ctl = f_epoll_ctl;
    rx_sys.openat2 = f_openat2;
    rx_sys.fstat = f_fstat;
    rx_sys.malloc = f_malloc;
    rx_sys.calloc = f_calloc;
    rx_sys.realloc = f_realloc;
}

void tf_stop(void) { rx_sys_reset(); }
