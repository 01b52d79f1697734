/* libFuzzer target for rx_buffer (src/buffer/buffer.c, contract in include/rx/buffer.h).
 *
 * The input is a program: each operation is an opcode byte (its top bit picks one of two buffers)
 * followed by its arguments (sizes, offsets, bytes). Every operation of buffer.h is applied to an
 * rx_buffer and to a model, a plain byte array; after each one the buffer's length and bytes must
 * equal the model's, its fields must be consistent (start <= end <= cap, no memory means all
 * zero), and the return value must be what the header promises: reserve's documented growth and
 * compaction policy to the byte (including whether it allocates), the search offsets, the byte
 * counts of the fd calls and the bytes the fd actually received (pipes and a socket pair, so both
 * the write and the send paths run). Allocation failures are injected through rx_sys (an
 * operation arms the next allocation to fail): -ENOMEM must come back exactly when an allocation
 * was tried, and leave the buffer untouched (read_fd: keep what fit). buffer.h has no clear or
 * compact call: consume of everything and reserve's compaction stand for them.
 *
 * Sizes are capped so an input stays fast: at most 256 KiB of data enters the buffers (enough
 * for several doublings and the 64 KiB read spill area; fresh pages are what costs here), and
 * the bytes copied, compared or searched per input are counted and capped at 4 MiB. */
#include <rx/buffer.h>

#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NBUF 2
#define DATA_BUDGET (256u << 10)
#define WORK_BUDGET (4u << 20)
#define MIN_CAP 256 /* buffer.h: the first block is 256, 512, ... bytes */

/* Aborts (what libFuzzer reports) with the failed condition, so a reproducer says which check. */
#define check(ok) ((ok) ? (void)0 : check_failed(__LINE__, #ok))

static void check_failed(int line, const char *what) {
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    abort();
}

/* ---- the input as a stream of arguments ---- */

typedef struct input {
    const uint8_t *p;
    size_t n;
} input;

static uint8_t u8(input *in) {
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

static size_t u16(input *in) {
    size_t lo = u8(in);
    return lo | (size_t)u8(in) << 8;
}

/* Mostly small sizes (one byte: the bytes to write follow in the input); sometimes up to 64 KiB
 * or 256 KiB (0xf0 or 0xf7..0xfe, then a 16-bit value; 0xff: four times it; the bytes are then a
 * pattern), so the first block, repeated growth and the read spill area are reached without the
 * data swallowing the rest of the program; or a size relative to the buffer's layout plus a
 * signed byte (0xf1..0xf6), so the boundaries of its decisions (room behind, room in front, half
 * full, full) are hit exactly rather than by luck. */
static size_t size_after(input *in, uint8_t b, const rx_buffer *buf) {
    if (b < 0xf0)
        return b;
    if (b == 0xf0 || b > 0xf6) {
        size_t v = u16(in);
        return b == 0xff ? v << 2 : v;
    }
    size_t len = rx_buffer_len(buf), half = buf->cap / 2, fits = RX_BUFFER_HEADROOM + len;
    size_t base = b == 0xf1   ? rx_buffer_writable(buf)
                  : b == 0xf2 ? len
                  : b == 0xf3 ? buf->start
                  : b == 0xf4 ? (buf->cap > fits ? buf->cap - fits : 0)
                  : b == 0xf5 ? (len > half ? len - half : 0)
                              : (half > len ? half - len : 0);
    int delta = (int8_t)u8(in);
    return delta < 0 && (size_t)-delta > base ? 0 : base + (size_t)(ptrdiff_t)delta;
}

static size_t size_arg(input *in, const rx_buffer *buf, bool *literal) {
    uint8_t b = u8(in);
    *literal = b < 0xf0;
    return size_after(in, b, buf);
}

static size_t size_only(input *in, const rx_buffer *buf) {
    bool literal;
    return size_arg(in, buf, &literal);
}

/* ---- allocation failure injection ---- */

static int alloc_calls;
static bool fail_next;

static void *fz_malloc(size_t n) {
    alloc_calls++;
    if (fail_next) {
        fail_next = false;
        return NULL;
    }
    return malloc(n);
}

static void *fz_realloc(void *p, size_t n) {
    alloc_calls++;
    if (fail_next) {
        fail_next = false;
        return NULL;
    }
    return realloc(p, n);
}

/* ---- the model ---- */

/* Room for everything an input can add (DATA_BUDGET), allocated once: growing it per input would
 * cost fresh pages that have nothing to do with the buffer under test. */
typedef struct model {
    uint8_t b[DATA_BUDGET];
    size_t len;
} model;

static void model_append(model *m, const void *src, size_t n) {
    check(n <= DATA_BUDGET - m->len);
    memcpy(m->b + m->len, src, n);
    m->len += n;
}

static void model_prepend(model *m, const void *src, size_t n) {
    check(n <= DATA_BUDGET - m->len);
    memmove(m->b + n, m->b, m->len);
    memcpy(m->b, src, n);
    m->len += n;
}

static void model_consume(model *m, size_t n) {
    if (n > m->len)
        n = m->len;
    memmove(m->b, m->b + n, m->len - n);
    m->len -= n;
}

static size_t model_find(const model *m, size_t from, const char *pat, size_t k) {
    if (from >= m->len)
        return RX_BUFFER_NPOS;
    const uint8_t *p = memmem(m->b + from, m->len - from, pat, k);
    return p ? (size_t)(p - m->b) : RX_BUFFER_NPOS;
}

/* ---- state of one input ---- */

static rx_buffer bufs[NBUF];
static model models[NBUF];
static size_t data_left, work_left;
static uint8_t src[256];             /* bytes to append, from the input */
static uint8_t pattern[DATA_BUDGET]; /* bytes to append of the big sizes */
static uint8_t sink[DATA_BUDGET + 65536];
static int pipe_fds[2] = {-1, -1}, sock_fds[2] = {-1, -1};

static void charge(size_t n) { work_left = n < work_left ? work_left - n : 0; }

/* The bytes for an append or a prepend: taken from the input (then zeros, once it ends), or a
 * pattern holding CR and LF so the searches have something to find. */
static const uint8_t *fill(input *in, size_t n, bool literal) {
    if (!literal)
        return pattern;
    size_t from_input = n < in->n ? n : in->n;
    memcpy(src, in->p, from_input);
    in->p += from_input;
    in->n -= from_input;
    memset(src + from_input, 0, n - from_input);
    return src;
}

/* What the header promises of every buffer, and that it holds the model's bytes. */
static void same(const rx_buffer *b, const model *m) {
    check(b->start <= b->end && b->end <= b->cap);
    if (!b->data)
        check(b->start == 0 && b->end == 0 && b->cap == 0 && rx_buffer_peek(b) == NULL);
    check(rx_buffer_len(b) == m->len && rx_buffer_writable(b) == b->cap - b->end);
    if (m->len)
        check(memcmp(rx_buffer_peek(b), m->b, m->len) == 0);
    charge(m->len);
}

static bool unchanged(const rx_buffer *b, const rx_buffer *before) {
    return b->data == before->data && b->start == before->start && b->end == before->end &&
           b->cap == before->cap;
}

/* The block size reserve documents: the smallest of 2 * cap, 4 * cap, ... (256, 512, ... for the
 * first block) that holds need bytes. */
static size_t grown_cap(size_t cap, size_t need) {
    size_t c = cap ? 2 * cap : MIN_CAP;
    while (c < need)
        c *= 2;
    return c;
}

/* Whether reserve(n) must allocate, by the header's policy; also the layout it must leave. */
static bool reserve_allocates(const rx_buffer *b, size_t n) {
    size_t len = rx_buffer_len(b);
    if (rx_buffer_writable(b) >= n)
        return false;
    size_t need = RX_BUFFER_HEADROOM + len + n;
    return !(b->data && need <= b->cap && len <= b->cap / 2);
}

static void check_reserved(rx_buffer *b, const rx_buffer *before, size_t n) {
    size_t len = rx_buffer_len(before);
    check(rx_buffer_writable(b) >= n && (n == 0 || rx_buffer_tail(b) != NULL));
    if (rx_buffer_writable(before) >= n) {
        check(unchanged(b, before)); /* enough room already: nothing moves */
    } else if (!reserve_allocates(before, n)) {
        check(b->data == before->data && b->cap == before->cap); /* compacted in place */
        check(b->start == RX_BUFFER_HEADROOM);
    } else {
        check(b->cap == grown_cap(before->cap, RX_BUFFER_HEADROOM + len + n));
        check(b->start == RX_BUFFER_HEADROOM);
    }
}

/* Reads whatever the fd holds (non-blocking) into sink; returns the count. */
static size_t drain(int fd) {
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, sink + got, sizeof(sink) - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        check(got < sizeof(sink));
    }
    return got;
}

static void op_append(input *in, rx_buffer *b, model *m, bool at_front) {
    bool literal;
    size_t n = size_arg(in, b, &literal);
    if (n > data_left)
        n = data_left;
    charge(n + m->len); /* the data may move, in the buffer and in the model */
    const uint8_t *p = fill(in, n, literal);
    rx_buffer before = *b;
    int calls = alloc_calls;
    bool armed = fail_next;
    int rc = at_front ? rx_buffer_prepend(b, p, n) : rx_buffer_append(b, p, n);
    bool failed = armed && !fail_next; /* the armed failure was spent in this call */
    check(rc == 0 || rc == -ENOMEM);
    check((rc == -ENOMEM) == failed);
    if (rc < 0) {
        check(unchanged(b, &before));
        return;
    }
    if (n == 0)
        check(unchanged(b, &before) && alloc_calls == calls); /* nothing to write: no memory */
    data_left -= n;
    if (at_front)
        model_prepend(m, p, n);
    else
        model_append(m, p, n);
}

static void op_reserve_commit(input *in, rx_buffer *b, model *m) {
    size_t n = size_only(in, b);
    if (n > data_left)
        n = data_left;
    rx_buffer before = *b;
    int calls = alloc_calls;
    bool armed = fail_next;
    int rc = rx_buffer_reserve(b, n);
    check(rc == 0 || rc == -ENOMEM);
    check((alloc_calls != calls) == reserve_allocates(&before, n)); /* the documented policy */
    check((rc == -ENOMEM) == (armed && !fail_next));
    if (rc < 0) {
        check(unchanged(b, &before));
        return;
    }
    check_reserved(b, &before, n);
    /* Write part of what was reserved, maybe more than asked when the block has more room. */
    bool literal;
    size_t k = size_arg(in, b, &literal);
    if (k > rx_buffer_writable(b))
        k = rx_buffer_writable(b);
    if (k > data_left)
        k = data_left;
    charge(k + m->len);
    const uint8_t *p = fill(in, k, literal);
    if (k)
        memcpy(rx_buffer_tail(b), p, k);
    rx_buffer_commit(b, k);
    data_left -= k;
    model_append(m, p, k);
}

static void op_reserve_huge(input *in, rx_buffer *b) {
    rx_buffer before = *b;
    int calls = alloc_calls;
    /* Sizes that cannot be represented with the headroom and the data: never an allocation. */
    size_t n = u8(in) & 1
                   ? SIZE_MAX - u8(in)
                   : (size_t)PTRDIFF_MAX - RX_BUFFER_HEADROOM - rx_buffer_len(b) + 1 + u8(in);
    check(rx_buffer_reserve(b, n) == -EOVERFLOW);
    check(unchanged(b, &before) && alloc_calls == calls);
}

static void op_consume(input *in, rx_buffer *b, model *m) {
    uint8_t how = u8(in);
    size_t n = how == 0xff ? SIZE_MAX : size_after(in, how, b);
    rx_buffer before = *b;
    charge(m->len);
    rx_buffer_consume(b, n);
    model_consume(m, n);
    check(b->data == before.data && b->cap == before.cap);
    if (b->data && m->len == 0) /* emptied: the headroom is back */
        check(b->start == RX_BUFFER_HEADROOM && b->end == RX_BUFFER_HEADROOM);
}

static void op_find(input *in, const rx_buffer *b, const model *m, int kind) {
    uint8_t how = u8(in);
    size_t from = how == 0xff ? SIZE_MAX : size_after(in, how, b);
    size_t got, want;
    if (kind == 0) {
        char c = (char)u8(in);
        got = rx_buffer_find_byte(b, from, c);
        want = model_find(m, from, &c, 1);
    } else if (kind == 1) {
        got = rx_buffer_find_crlf(b, from);
        want = model_find(m, from, "\r\n", 2);
    } else {
        got = rx_buffer_find_crlfcrlf(b, from);
        want = model_find(m, from, "\r\n\r\n", 4);
    }
    check(got == want);
    charge(m->len);
}

static void op_release(rx_buffer *b, const model *m) {
    rx_buffer before = *b;
    size_t released = rx_buffer_release_if_empty(b);
    if (m->len == 0 && before.data) {
        check(released == before.cap && b->data == NULL && b->cap == 0);
    } else {
        check(released == 0 && unchanged(b, &before));
    }
}

static void op_free(rx_buffer *b, model *m) {
    rx_buffer_free(b);
    check(b->data == NULL && b->start == 0 && b->end == 0 && b->cap == 0);
    m->len = 0;
}

/* Bytes arrive on a pipe or a socket; one read_fd must take them (64 KiB at most, which the spill
 * area holds however small the buffer). */
static void op_read_fd(input *in, rx_buffer *b, model *m, bool sock) {
    int wfd = sock ? sock_fds[1] : pipe_fds[1], rfd = sock ? sock_fds[0] : pipe_fds[0];
    bool literal;
    size_t n = size_arg(in, b, &literal);
    if (n > RX_BUFFER_SPILL)
        n = RX_BUFFER_SPILL;
    if (n > data_left)
        n = data_left;
    charge(n + m->len);
    const uint8_t *p = fill(in, n, literal);
    ssize_t w = n ? write(wfd, p, n) : 0;
    size_t sent = w > 0 ? (size_t)w : 0;
    size_t avail = rx_buffer_writable(b);
    rx_buffer before = *b;
    bool armed = fail_next;
    ssize_t r = rx_buffer_read_fd(b, rfd);
    bool failed = armed && !fail_next;
    if (sent == 0) {
        check(r == -EAGAIN && unchanged(b, &before));
        return;
    }
    if (failed) {
        /* The spill could not be appended: what fit behind the data stays, the rest is lost. */
        check(r == -ENOMEM);
        size_t kept = sent < avail ? sent : avail;
        model_append(m, p, kept);
        data_left -= kept;
    } else {
        check(r > 0 && (size_t)r <= sent);
        model_append(m, p, (size_t)r);
        data_left -= (size_t)r;
    }
    drain(rfd); /* a socket may hand over fewer bytes than were sent: drop the rest */
}

/* write_fd / writev_fd into a pipe (write) or a socket (send): what they report written is what
 * the reader gets, and what is consumed. */
static void op_write_fd(input *in, bool sock, bool vector) {
    int wfd = sock ? sock_fds[1] : pipe_fds[1], rfd = sock ? sock_fds[0] : pipe_fds[0];
    uint8_t how = u8(in);
    int first = how & 1, count = vector ? (how >> 1) % 4 - 1 : 1; /* -1 .. 2 */
    rx_buffer *order[NBUF] = {&bufs[first], &bufs[!first]};
    model *morder[NBUF] = {&models[first], &models[!first]};
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += morder[i]->len;
    ssize_t r = vector ? rx_buffer_writev_fd(order, count, wfd) : rx_buffer_write_fd(order[0], wfd);
    if (count < 0) {
        check(r == -EINVAL);
        return;
    }
    check(r >= 0 && (size_t)r <= total);
    check(total == 0 || r > 0); /* an empty pipe or socket takes at least one byte */
    size_t got = drain(rfd);
    check(got == (size_t)r);
    size_t at = 0;
    for (int i = 0; i < count && at < got; i++) {
        size_t take = morder[i]->len < got - at ? morder[i]->len : got - at;
        check(memcmp(sink + at, morder[i]->b, take) == 0);
        model_consume(morder[i], take);
        at += take;
    }
    charge(got);
}

enum {
    OP_APPEND,
    OP_PREPEND,
    OP_RESERVE_COMMIT,
    OP_CONSUME,
    OP_FIND_BYTE,
    OP_FIND_CRLF,
    OP_FIND_CRLFCRLF,
    OP_RELEASE,
    OP_FREE,
    OP_FAIL_NEXT_ALLOC,
    OP_RESERVE_HUGE,
    OP_READ_PIPE,
    OP_READ_SOCK,
    OP_WRITE_PIPE,
    OP_WRITE_SOCK,
    OP_WRITEV_PIPE,
    OP_WRITEV_SOCK,
    OP_COUNT
};

static void setup_once(void) {
    if (pipe_fds[0] >= 0)
        return;
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = (uint8_t) "ab\r\ncd\r\n\r\ne"[i % 11];
    /* Non-blocking both ways: an empty reader gives EAGAIN, a full writer a short count. */
    check(pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) == 0);
    check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sock_fds) == 0);
    rx_sys.malloc = fz_malloc;
    rx_sys.realloc = fz_realloc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup_once();
    input in = {data, size};
    data_left = DATA_BUDGET;
    work_left = WORK_BUDGET;
    fail_next = false;
    for (int i = 0; i < NBUF; i++) {
        rx_buffer_init(&bufs[i]);
        models[i].len = 0;
    }
    while (in.n > 0 && work_left > 0) {
        uint8_t op = u8(&in);
        int which = op >> 7;
        rx_buffer *b = &bufs[which];
        model *m = &models[which];
        switch ((op & 0x7f) % OP_COUNT) {
        case OP_APPEND:
            op_append(&in, b, m, false);
            break;
        case OP_PREPEND:
            op_append(&in, b, m, true);
            break;
        case OP_RESERVE_COMMIT:
            op_reserve_commit(&in, b, m);
            break;
        case OP_CONSUME:
            op_consume(&in, b, m);
            break;
        case OP_FIND_BYTE:
            op_find(&in, b, m, 0);
            break;
        case OP_FIND_CRLF:
            op_find(&in, b, m, 1);
            break;
        case OP_FIND_CRLFCRLF:
            op_find(&in, b, m, 2);
            break;
        case OP_RELEASE:
            op_release(b, m);
            break;
        case OP_FREE:
            op_free(b, m);
            break;
        case OP_FAIL_NEXT_ALLOC:
            fail_next = true;
            break;
        case OP_RESERVE_HUGE:
            op_reserve_huge(&in, b);
            break;
        case OP_READ_PIPE:
        case OP_READ_SOCK:
            op_read_fd(&in, b, m, (op & 0x7f) % OP_COUNT == OP_READ_SOCK);
            break;
        case OP_WRITE_PIPE:
        case OP_WRITE_SOCK:
            op_write_fd(&in, (op & 0x7f) % OP_COUNT == OP_WRITE_SOCK, false);
            break;
        default:
            op_write_fd(&in, (op & 0x7f) % OP_COUNT == OP_WRITEV_SOCK, true);
            break;
        }
        for (int i = 0; i < NBUF; i++)
            same(&bufs[i], &models[i]);
    }
    for (int i = 0; i < NBUF; i++) {
        rx_buffer_free(&bufs[i]);
    }
    return 0;
}
