/* rx_buffer: contiguous growable byte buffer with headroom for prepends, fd I/O and search (see
 * include/rx/buffer.h for the contract). Memory and syscalls go through rx_sys so tests can
 * inject failures and short counts. */
#include <rx/buffer.h>

#include "sys.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* First allocation size: small enough for idle connections, big enough that a typical request
 * line plus headers does not grow more than once or twice. */
#define MIN_CAP 256

/* Objects larger than PTRDIFF_MAX break pointer subtraction, and the allocator refuses them
 * anyway; treat such sizes as unrepresentable rather than as an allocation failure. */
#define MAX_CAP ((size_t)PTRDIFF_MAX)

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

void rx_buffer_init(rx_buffer *buf) { *buf = (rx_buffer)RX_BUFFER_INIT; }

void rx_buffer_free(rx_buffer *buf) {
    if (buf->data)
        rx_sys.free(buf->data);
    *buf = (rx_buffer)RX_BUFFER_INIT;
}

/* Bytes needed to hold the headroom, the current data and n more, or 0 if that is not
 * representable. */
static size_t needed(const rx_buffer *buf, size_t n) {
    size_t len = rx_buffer_len(buf);
    if (n > MAX_CAP - RX_BUFFER_HEADROOM - len)
        return 0;
    return RX_BUFFER_HEADROOM + len + n;
}

static size_t twice(size_t cap) { return cap > MAX_CAP / 2 ? MAX_CAP : cap * 2; }

/* Reallocates to the smallest of cap * 2, cap * 4, ... (MIN_CAP, MIN_CAP * 2, ... for the first
 * block) that holds need bytes, and moves the data to offset HEADROOM + gap. At least doubling
 * even when need already fits is what makes refusing to compact a full buffer pay off: the next
 * compaction moves at most half the block. The buffer is untouched on failure. */
static int grow(rx_buffer *buf, size_t need, size_t gap) {
    size_t cap = buf->cap ? twice(buf->cap) : MIN_CAP;
    while (cap < need) /* terminates: needed() keeps need <= MAX_CAP */
        cap = twice(cap);

    size_t len = rx_buffer_len(buf);
    char *p;
    if (!buf->data) {
        /* malloc, not realloc(NULL): a test failing malloc should see the first allocation. */
        p = rx_sys.malloc(cap);
        if (!p)
            return -ENOMEM;
    } else {
        p = rx_sys.realloc(buf->data, cap);
        if (!p)
            return -ENOMEM;
        if (buf->start != RX_BUFFER_HEADROOM + gap)
            memmove(p + RX_BUFFER_HEADROOM + gap, p + buf->start, len);
    }
    buf->data = p;
    buf->cap = cap;
    buf->start = RX_BUFFER_HEADROOM + gap;
    buf->end = buf->start + len;
    return 0;
}

int rx_buffer_reserve(rx_buffer *buf, size_t n) {
    if (rx_buffer_writable(buf) >= n)
        return 0;
    size_t need = needed(buf, n);
    if (!need)
        return -EOVERFLOW;
    size_t len = rx_buffer_len(buf);
    /* Moving the data to the front frees enough: cheaper than a new block and keeps memory flat.
     * Only when at most half is data, so a compaction copies at most half the block and leaves
     * the rest (less the headroom) free; a fuller buffer grows instead (see grow). */
    if (buf->data && need <= buf->cap && len <= buf->cap / 2) {
        memmove(buf->data + RX_BUFFER_HEADROOM, buf->data + buf->start, len);
        buf->start = RX_BUFFER_HEADROOM;
        buf->end = RX_BUFFER_HEADROOM + len;
        return 0;
    }
    return grow(buf, need, 0);
}

void rx_buffer_commit(rx_buffer *buf, size_t n) {
    assert(n <= rx_buffer_writable(buf));
    buf->end += n;
}

int rx_buffer_append(rx_buffer *buf, const void *src, size_t n) {
    if (n == 0)
        return 0;
    int rc = rx_buffer_reserve(buf, n);
    if (rc < 0)
        return rc;
    memcpy(buf->data + buf->end, src, n);
    buf->end += n;
    return 0;
}

int rx_buffer_prepend(rx_buffer *buf, const void *src, size_t n) {
    if (n == 0)
        return 0;
    if (buf->data && n <= buf->start) {
        buf->start -= n;
        memcpy(buf->data + buf->start, src, n);
        return 0;
    }
    size_t need = needed(buf, n);
    if (!need)
        return -EOVERFLOW;
    if (buf->data && need <= buf->cap) {
        /* Shift the data back just far enough, keeping the usual headroom in front of the new
         * bytes for the next prepend. */
        size_t len = rx_buffer_len(buf);
        memmove(buf->data + RX_BUFFER_HEADROOM + n, buf->data + buf->start, len);
        buf->start = RX_BUFFER_HEADROOM + n;
        buf->end = buf->start + len;
    } else {
        int rc = grow(buf, need, n);
        if (rc < 0)
            return rc;
    }
    buf->start -= n;
    memcpy(buf->data + buf->start, src, n);
    return 0;
}

void rx_buffer_consume(rx_buffer *buf, size_t n) {
    if (n < rx_buffer_len(buf)) {
        buf->start += n;
    } else if (buf->data) {
        /* Empty: rewind for free so the whole block and the headroom are usable again. */
        buf->start = buf->end = RX_BUFFER_HEADROOM;
    }
}

size_t rx_buffer_release_if_empty(rx_buffer *buf) {
    if (rx_buffer_len(buf) != 0 || !buf->data)
        return 0;
    size_t released = buf->cap;
    rx_buffer_free(buf);
    return released;
}

size_t rx_buffer_find_byte(const rx_buffer *buf, size_t from, char c) {
    size_t len = rx_buffer_len(buf);
    if (from >= len)
        return RX_BUFFER_NPOS;
    const char *base = buf->data + buf->start;
    const char *p = memchr(base + from, c, len - from);
    return p ? (size_t)(p - base) : RX_BUFFER_NPOS;
}

/* Offset of the first pattern of k bytes ending in '\n' at or after from. Scanning for the '\n'
 * and looking back lets memchr do the work; '\n' is the rarer byte in text protocols. */
static size_t find_lf_terminated(const rx_buffer *buf, size_t from, const char *pat, size_t k) {
    size_t len = rx_buffer_len(buf);
    if (from >= len || len - from < k)
        return RX_BUFFER_NPOS;
    const char *base = buf->data + buf->start;
    size_t i = from + k - 1;
    while (i < len) {
        const char *p = memchr(base + i, '\n', len - i);
        if (!p)
            break;
        i = (size_t)(p - base);
        if (memcmp(base + i + 1 - k, pat, k - 1) == 0)
            return i + 1 - k;
        i++;
    }
    return RX_BUFFER_NPOS;
}

size_t rx_buffer_find_crlf(const rx_buffer *buf, size_t from) {
    return find_lf_terminated(buf, from, "\r\n", 2);
}

size_t rx_buffer_find_crlfcrlf(const rx_buffer *buf, size_t from) {
    return find_lf_terminated(buf, from, "\r\n\r\n", 4);
}

ssize_t rx_buffer_read_fd(rx_buffer *buf, int fd) {
    /* The spill lets one syscall drain up to 64 KiB even into a small or unallocated buffer, so
     * idle connections keep small buffers without costing extra reads when data floods in. */
    char spill[RX_BUFFER_SPILL];
    struct iovec iov[2];
    int cnt = 0;
    size_t avail = rx_buffer_writable(buf);
    if (avail > 0)
        iov[cnt++] = (struct iovec){.iov_base = rx_buffer_tail(buf), .iov_len = avail};
    iov[cnt++] = (struct iovec){.iov_base = spill, .iov_len = sizeof spill};

    ssize_t r;
    do
        r = rx_sys.readv(fd, iov, cnt);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return r < 0 ? -errno : 0;

    if ((size_t)r <= avail) {
        buf->end += (size_t)r;
        return r;
    }
    buf->end += avail;
    int rc = rx_buffer_append(buf, spill, (size_t)r - avail);
    return rc < 0 ? rc : r;
}

ssize_t rx_buffer_write_fd(rx_buffer *buf, int fd) {
    size_t len = rx_buffer_len(buf);
    if (len == 0)
        return 0;
    const char *p = rx_buffer_peek(buf);
    ssize_t r;
    /* send, not write, for MSG_NOSIGNAL: a closed peer must give -EPIPE, not kill the process. */
    do
        r = rx_sys.send(fd, p, len, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == ENOTSOCK) {
        do
            r = rx_sys.write(fd, p, len);
        while (r < 0 && errno == EINTR);
    }
    if (r < 0)
        return -errno;
    rx_buffer_consume(buf, (size_t)r);
    return r;
}

ssize_t rx_buffer_writev_fd(rx_buffer *const *bufs, int count, int fd) {
    if (count < 0 || (count > 0 && !bufs))
        return -EINVAL;
    struct iovec iov[IOV_MAX];
    int cnt = 0;
    for (int i = 0; i < count && cnt < IOV_MAX; i++) {
        size_t len = rx_buffer_len(bufs[i]);
        if (len > 0)
            iov[cnt++] = (struct iovec){.iov_base = bufs[i]->data + bufs[i]->start, .iov_len = len};
    }
    if (cnt == 0)
        return 0;

    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
    ssize_t r;
    do
        r = rx_sys.sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == ENOTSOCK) {
        do
            r = rx_sys.writev(fd, iov, cnt);
        while (r < 0 && errno == EINTR);
    }
    if (r < 0)
        return -errno;

    /* The kernel writes the iovecs in order, so what was written is a prefix of the sequence. */
    size_t left = (size_t)r;
    for (int i = 0; i < count && left > 0; i++) {
        size_t len = rx_buffer_len(bufs[i]);
        size_t take = len < left ? len : left;
        rx_buffer_consume(bufs[i], take);
        left -= take;
    }
    return r;
}
