/* Tests for rx_buffer: layout (headroom, compaction, growth), failure injection through rx_sys,
 * search, fd I/O on pipes and socket pairs, and a randomized comparison against a plain array. */
#include "testutil.h"

#include "sys.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define H RX_BUFFER_HEADROOM
#define NPOS RX_BUFFER_NPOS

static void teardown(void) { rx_sys_reset(); }

static void append_str(rx_buffer *b, const char *s) {
    ck_assert_int_eq(rx_buffer_append(b, s, strlen(s)), 0);
}

static void assert_content(const rx_buffer *b, const void *want, size_t n) {
    ck_assert_uint_eq(rx_buffer_len(b), n);
    if (n > 0)
        ck_assert_int_eq(memcmp(rx_buffer_peek(b), want, n), 0);
}

static void assert_str(const rx_buffer *b, const char *s) { assert_content(b, s, strlen(s)); }

/* A buffer that has storage: one byte appended, then consumed (so it is empty at HEADROOM). */
static void allocated_empty(rx_buffer *b) {
    rx_buffer_init(b);
    append_str(b, "x");
    rx_buffer_consume(b, 1);
    ck_assert_ptr_nonnull(b->data);
    ck_assert_uint_eq(b->start, H);
}

/* ---- failure injection helpers ---- */

static int n_malloc, n_realloc, n_free, n_send, n_write, n_sendmsg, n_writev, n_readv;

static void *fail_malloc(size_t n) {
    (void)n;
    n_malloc++;
    return NULL;
}
static void *fail_realloc(void *p, size_t n) {
    (void)p;
    (void)n;
    n_realloc++;
    return NULL;
}
static void *count_realloc(void *p, size_t n) {
    n_realloc++;
    return realloc(p, n);
}
static void count_free(void *p) {
    n_free++;
    free(p);
}

/* ---- layout ---- */

START_TEST(test_init_empty_no_alloc) {
    rx_buffer b;
    memset(&b, 0xa5, sizeof b);
    rx_buffer_init(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.cap, 0);
    ck_assert_uint_eq(rx_buffer_len(&b), 0);
    ck_assert_uint_eq(rx_buffer_writable(&b), 0);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, 'a'), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 0), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, 0), NPOS);
    rx_buffer_consume(&b, 10);
    ck_assert_int_eq(rx_buffer_append(&b, "", 0), 0);
    ck_assert_int_eq(rx_buffer_prepend(&b, "", 0), 0);
    ck_assert_int_eq(rx_buffer_reserve(&b, 0), 0);
    ck_assert_uint_eq(rx_buffer_release_if_empty(&b), 0);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.start + b.end + b.cap, 0);

    rx_buffer z = RX_BUFFER_INIT;
    append_str(&z, "abc");
    ck_assert_ptr_nonnull(z.data);
    ck_assert_uint_eq(z.start, H);
    ck_assert_uint_ge(z.cap, H + 3);
    assert_str(&z, "abc");
    rx_buffer_free(&z);
    ck_assert_ptr_null(z.data);
    ck_assert_uint_eq(z.cap, 0);
    rx_buffer_free(&z); /* freeing twice is harmless: the buffer is zeroed */
}
END_TEST

START_TEST(test_exact_fill_to_capacity) {
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "ab");
    char *data = b.data;
    size_t cap = b.cap, w = rx_buffer_writable(&b);
    ck_assert_uint_eq(w, cap - H - 2);
    ck_assert_int_eq(rx_buffer_reserve(&b, w), 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    char *fill = malloc(w);
    memset(fill, 'f', w);
    ck_assert_int_eq(rx_buffer_append(&b, fill, w), 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_uint_eq(rx_buffer_writable(&b), 0);
    ck_assert_uint_eq(b.end, cap);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b), "ab", 2), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + 2, fill, w), 0);
    /* One more byte must grow, keeping everything. */
    append_str(&b, "z");
    ck_assert_uint_gt(b.cap, cap);
    ck_assert_uint_eq(rx_buffer_len(&b), w + 3);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + 2, fill, w), 0);
    ck_assert_int_eq(rx_buffer_peek(&b)[w + 2], 'z');
    free(fill);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_prepend_into_headroom_no_move) {
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "world");
    char *data = b.data;
    const char *old = rx_buffer_peek(&b);
    ck_assert_int_eq(rx_buffer_prepend(&b, "hello ", 6), 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_ptr_eq(rx_buffer_peek(&b), old - 6);
    ck_assert_ptr_eq(rx_buffer_peek(&b) + 6, old);
    assert_str(&b, "hello world");
    /* Exactly the remaining headroom still fits without moving. */
    char pad[H];
    memset(pad, '.', sizeof pad);
    ck_assert_int_eq(rx_buffer_prepend(&b, pad, H - 6), 0);
    ck_assert_uint_eq(b.start, 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_ptr_eq(rx_buffer_peek(&b) + H, old);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + H - 6, "hello world", 11), 0);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_prepend_larger_than_headroom) {
    /* Fits in the block: data shifts, no reallocation. */
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "body");
    char *data = b.data;
    size_t cap = b.cap;
    char hdr[100];
    for (size_t i = 0; i < sizeof hdr; i++)
        hdr[i] = (char)('A' + i % 26);
    ck_assert_int_eq(rx_buffer_prepend(&b, hdr, sizeof hdr), 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_uint_eq(rx_buffer_len(&b), 104);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b), hdr, 100), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + 100, "body", 4), 0);
    /* Then a prepend that needs a bigger block. */
    size_t big = cap * 3;
    char *p = malloc(big);
    memset(p, 'P', big);
    ck_assert_int_eq(rx_buffer_prepend(&b, p, big), 0);
    ck_assert_uint_ge(b.cap, big + 104);
    ck_assert_uint_eq(rx_buffer_len(&b), big + 104);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b), p, big), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + big, hdr, 100), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + big + 100, "body", 4), 0);
    free(p);
    rx_buffer_free(&b);

    /* Prepend on a zero buffer allocates and keeps headroom for the next prepend. */
    rx_buffer z = RX_BUFFER_INIT;
    ck_assert_int_eq(rx_buffer_prepend(&z, hdr, 40), 0);
    ck_assert_uint_eq(z.start, H);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&z), hdr, 40), 0);
    char *zd = z.data;
    ck_assert_int_eq(rx_buffer_prepend(&z, "12", 2), 0);
    ck_assert_ptr_eq(z.data, zd);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&z), "12", 2), 0);
    rx_buffer_free(&z);
}
END_TEST

START_TEST(test_grow_after_prepend) {
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "payload");
    ck_assert_int_eq(rx_buffer_prepend(&b, "0123456789", 10), 0);
    ck_assert_uint_eq(b.start, H - 10);
    size_t cap = b.cap, n = cap * 4;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)(i * 7);
    ck_assert_int_eq(rx_buffer_append(&b, big, n), 0);
    ck_assert_uint_gt(b.cap, cap);
    ck_assert_uint_eq(rx_buffer_len(&b), 17 + n);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b), "0123456789payload", 17), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + 17, big, n), 0);
    /* After growing, the headroom is back. */
    ck_assert_uint_ge(b.start, H);
    free(big);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_consume) {
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "hello world");
    char *data = b.data;
    size_t cap = b.cap;
    rx_buffer_consume(&b, 6);
    assert_str(&b, "world");
    ck_assert_uint_eq(b.start, H + 6);
    rx_buffer_consume(&b, 0);
    assert_str(&b, "world");
    rx_buffer_consume(&b, 5); /* all: rewinds */
    ck_assert_uint_eq(rx_buffer_len(&b), 0);
    ck_assert_uint_eq(b.start, H);
    ck_assert_uint_eq(b.end, H);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_uint_eq(rx_buffer_writable(&b), cap - H);

    append_str(&b, "abc");
    rx_buffer_consume(&b, 1000); /* more than len */
    ck_assert_uint_eq(rx_buffer_len(&b), 0);
    ck_assert_uint_eq(b.start, H);
    ck_assert_uint_eq(b.end, H);
    /* After a prepend ate the headroom, emptying restores it. */
    append_str(&b, "x");
    ck_assert_int_eq(rx_buffer_prepend(&b, "0123456789abcdef", H), 0);
    ck_assert_uint_eq(b.start, 0);
    rx_buffer_consume(&b, SIZE_MAX);
    ck_assert_uint_eq(b.start, H);
    ck_assert_uint_eq(rx_buffer_len(&b), 0);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_reserve_compacts) {
    rx_buffer b = RX_BUFFER_INIT;
    char blob[200];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (char)i;
    ck_assert_int_eq(rx_buffer_append(&b, blob, sizeof blob), 0);
    char *data = b.data;
    size_t cap = b.cap;
    rx_buffer_consume(&b, 150);
    size_t w = rx_buffer_writable(&b);
    size_t want = cap - H - 50; /* more than is behind, exactly what compaction frees */
    ck_assert_uint_gt(want, w);
    n_realloc = 0;
    rx_sys.realloc = count_realloc;
    ck_assert_int_eq(rx_buffer_reserve(&b, want), 0);
    ck_assert_int_eq(n_realloc, 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_uint_eq(b.start, H);
    ck_assert_uint_ge(rx_buffer_writable(&b), want);
    assert_content(&b, blob + 150, 50);
    /* One byte more than compaction can free has to grow. */
    ck_assert_int_eq(rx_buffer_reserve(&b, want + 1), 0);
    ck_assert_int_eq(n_realloc, 1);
    ck_assert_uint_gt(b.cap, cap);
    assert_content(&b, blob + 150, 50);
    rx_buffer_free(&b);
}
END_TEST

/* Appends n bytes and returns how many bytes of old data that append moved: all of them when the
 * data now sits elsewhere (a compaction, or a reallocation that could not grow in place). */
static size_t append_moved(rx_buffer *b, const char *src, size_t n) {
    char *data = b->data;
    size_t start = b->start, len = rx_buffer_len(b);
    ck_assert_int_eq(rx_buffer_append(b, src, n), 0);
    return (b->data != data || b->start != start) ? len : 0;
}

START_TEST(test_fifo_nearly_full_grows) {
    /* A FIFO kept ~90% full: compaction is refused (more than half full), so the buffer must grow
     * instead of moving ~90% of its bytes each time the tail reaches the end. */
    rx_sys.realloc = count_realloc;
    n_realloc = 0;
    rx_buffer b = RX_BUFFER_INIT;
    char chunk[64];
    memset(chunk, 'q', sizeof chunk);
    size_t moved = 0, appended = 0;
    while (rx_buffer_len(&b) < 3600) {
        moved += append_moved(&b, chunk, sizeof chunk);
        appended += sizeof chunk;
    }
    size_t cap0 = b.cap;
    ck_assert_uint_eq(cap0, 4096);
    ck_assert_uint_ge(rx_buffer_len(&b) * 10, cap0 * 8); /* > 80% full */
    int realloc0 = n_realloc;
    moved = appended = 0;
    for (int round = 0; round < 20000; round++) {
        moved += append_moved(&b, chunk, sizeof chunk);
        appended += sizeof chunk;
        rx_buffer_consume(&b, sizeof chunk);
    }
    ck_assert_msg(b.cap > cap0, "capacity stayed %zu", b.cap);
    ck_assert_uint_le(b.cap, 2 * cap0);
    ck_assert_int_le(n_realloc - realloc0, 1);
    /* At most half full after the growth: a compaction moves at most as many bytes as the free
     * space it recovers, so the copying stays below the bytes appended. */
    ck_assert_msg(moved <= appended, "moved %zu bytes for %zu appended", moved, appended);
    for (size_t i = 0; i < rx_buffer_len(&b); i++)
        ck_assert_int_eq(rx_buffer_peek(&b)[i], 'q');
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_fifo_half_full_compacts) {
    /* Kept at most half full, the same FIFO never grows: room comes from compaction. */
    rx_sys.realloc = count_realloc;
    rx_buffer b = RX_BUFFER_INIT;
    char chunk[64];
    memset(chunk, 'h', sizeof chunk);
    while (rx_buffer_len(&b) < 3000)
        append_str(&b, "0123456789abcdef");
    rx_buffer_consume(&b, rx_buffer_len(&b) - 1600); /* 1600 of 4096: under half */
    size_t cap0 = b.cap;
    char *data0 = b.data;
    ck_assert_uint_eq(cap0, 4096);
    n_realloc = 0;
    size_t moved = 0, appended = 0;
    for (int round = 0; round < 20000; round++) {
        moved += append_moved(&b, chunk, sizeof chunk);
        appended += sizeof chunk;
        rx_buffer_consume(&b, sizeof chunk);
    }
    ck_assert_uint_eq(b.cap, cap0);
    ck_assert_ptr_eq(b.data, data0);
    ck_assert_int_eq(n_realloc, 0);
    ck_assert_uint_gt(moved, 0); /* it did compact */
    ck_assert_uint_le(moved, appended);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_growth_sizes) {
    /* The documented sizes: the first block is the smallest of 256, 512, ... that fits; a growth
     * at least doubles, to the smallest cap * 2^k that fits. */
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "x");
    ck_assert_uint_eq(b.cap, 256);
    rx_buffer_free(&b);
    ck_assert_int_eq(rx_buffer_reserve(&b, 300), 0);
    ck_assert_uint_eq(b.cap, 512);
    ck_assert_int_eq(rx_buffer_reserve(&b, 512 - H + 1), 0);
    ck_assert_uint_eq(b.cap, 1024);
    ck_assert_int_eq(rx_buffer_reserve(&b, 5000), 0);
    ck_assert_uint_eq(b.cap, 8192);
    rx_buffer_free(&b);

    /* More than half full, with enough room in total: grows to twice the size, no compaction. */
    char blob[200];
    memset(blob, 'b', sizeof blob);
    ck_assert_int_eq(rx_buffer_append(&b, blob, sizeof blob), 0);
    ck_assert_uint_eq(b.cap, 256);
    rx_buffer_consume(&b, 40); /* 160 bytes left: more than half of 256 */
    size_t want = rx_buffer_writable(&b) + 10;
    ck_assert_uint_le(H + rx_buffer_len(&b) + want, b.cap); /* compaction would free enough */
    ck_assert_int_eq(rx_buffer_reserve(&b, want), 0);
    ck_assert_uint_eq(b.cap, 512);
    ck_assert_uint_eq(b.start, H);
    assert_content(&b, blob, 160);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_geometric_growth) {
    rx_sys.realloc = count_realloc;
    n_realloc = 0;
    rx_buffer b = RX_BUFFER_INIT;
    size_t prev = 0;
    int changes = 0;
    const size_t total = 1u << 20;
    for (size_t i = 0; i < total; i++) {
        char c = (char)(i % 251);
        ck_assert_int_eq(rx_buffer_append(&b, &c, 1), 0);
        if (b.cap != prev) {
            if (prev)
                ck_assert_uint_ge(b.cap, 2 * prev);
            else
                ck_assert_uint_ge(b.cap, 64);
            prev = b.cap;
            changes++;
        }
    }
    /* 1 MiB one byte at a time: a logarithmic number of reallocations, not one per append. */
    ck_assert_int_le(n_realloc, 16);
    ck_assert_int_eq(changes, n_realloc + 1);
    ck_assert_uint_le(b.cap, 2 * (total + H));
    for (size_t i = 0; i < total; i++)
        if (rx_buffer_peek(&b)[i] != (char)(i % 251))
            ck_abort_msg("byte %zu differs", i);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_overflow) {
    rx_buffer b = RX_BUFFER_INIT;
    ck_assert_int_eq(rx_buffer_reserve(&b, SIZE_MAX), -EOVERFLOW);
    ck_assert_ptr_null(b.data);
    ck_assert_int_eq(rx_buffer_reserve(&b, SIZE_MAX - H), -EOVERFLOW);
    ck_assert_int_eq(rx_buffer_reserve(&b, (size_t)PTRDIFF_MAX), -EOVERFLOW);
    ck_assert_ptr_null(b.data);

    append_str(&b, "keep");
    rx_buffer before = b;
    ck_assert_int_eq(rx_buffer_reserve(&b, SIZE_MAX), -EOVERFLOW);
    ck_assert_int_eq(rx_buffer_reserve(&b, SIZE_MAX - 3), -EOVERFLOW);
    /* The size is checked before the source is read. */
    ck_assert_int_eq(rx_buffer_append(&b, "x", SIZE_MAX), -EOVERFLOW);
    ck_assert_int_eq(rx_buffer_prepend(&b, "x", SIZE_MAX), -EOVERFLOW);
    ck_assert_int_eq(rx_buffer_prepend(&b, "x", SIZE_MAX - 2), -EOVERFLOW);
    ck_assert_mem_eq(&b, &before, sizeof b);
    assert_str(&b, "keep");
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_enomem_unchanged) {
    rx_sys.malloc = fail_malloc;
    rx_sys.realloc = fail_realloc;
    n_malloc = n_realloc = 0;

    rx_buffer z = RX_BUFFER_INIT;
    ck_assert_int_eq(rx_buffer_append(&z, "abc", 3), -ENOMEM);
    ck_assert_int_eq(rx_buffer_prepend(&z, "abc", 3), -ENOMEM);
    ck_assert_int_eq(rx_buffer_reserve(&z, 1), -ENOMEM);
    ck_assert_int_eq(n_malloc + n_realloc, 3);
    ck_assert_ptr_null(z.data);
    ck_assert_uint_eq(z.start + z.end + z.cap, 0);

    rx_sys_reset();
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "0123456789");
    rx_buffer_consume(&b, 2);
    rx_buffer before = b;
    rx_sys.malloc = fail_malloc;
    rx_sys.realloc = fail_realloc;
    size_t big = b.cap * 2;
    char *src = calloc(1, big);
    ck_assert_int_eq(rx_buffer_append(&b, src, big), -ENOMEM);
    ck_assert_int_eq(rx_buffer_prepend(&b, src, big), -ENOMEM);
    ck_assert_int_eq(rx_buffer_reserve(&b, big), -ENOMEM);
    ck_assert_mem_eq(&b, &before, sizeof b);
    assert_str(&b, "23456789");
    /* Work that needs no allocation still succeeds. */
    append_str(&b, "ab");
    ck_assert_int_eq(rx_buffer_prepend(&b, "<", 1), 0);
    assert_str(&b, "<23456789ab");
    free(src);
    rx_sys_reset();
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_release_if_empty) {
    rx_sys.free = count_free;
    n_free = 0;
    rx_buffer b = RX_BUFFER_INIT;
    ck_assert_uint_eq(rx_buffer_release_if_empty(&b), 0);
    append_str(&b, "data");
    size_t cap = b.cap;
    ck_assert_uint_eq(rx_buffer_release_if_empty(&b), 0);
    ck_assert_ptr_nonnull(b.data);
    assert_str(&b, "data");
    ck_assert_int_eq(n_free, 0);
    rx_buffer_consume(&b, 4);
    ck_assert_uint_eq(rx_buffer_release_if_empty(&b), cap);
    ck_assert_int_eq(n_free, 1);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.start + b.end + b.cap, 0);
    ck_assert_uint_eq(rx_buffer_release_if_empty(&b), 0);
    ck_assert_int_eq(n_free, 1);
    /* Reusable afterwards, with headroom again. */
    append_str(&b, "again");
    ck_assert_uint_eq(b.start, H);
    assert_str(&b, "again");
    rx_buffer_free(&b);
    ck_assert_int_eq(n_free, 2);
}
END_TEST

/* ---- search ---- */

START_TEST(test_find_byte) {
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "a:b:c");
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, ':'), 1);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 1, ':'), 1);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 2, ':'), 3);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 4, ':'), NPOS);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 4, 'c'), 4);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 5, 'c'), NPOS);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 1000, 'a'), NPOS);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, SIZE_MAX, 'a'), NPOS);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, '\0'), NPOS);
    /* Offsets are relative to the readable data, not the block. */
    rx_buffer_consume(&b, 2);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, ':'), 1);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, 'a'), NPOS);
    ck_assert_int_eq(rx_buffer_prepend(&b, "\0", 1), 0);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, '\0'), 0);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, (char)0xff), NPOS);
    ck_assert_int_eq(rx_buffer_append(&b, "\xff", 1), 0);
    ck_assert_uint_eq(rx_buffer_find_byte(&b, 0, (char)0xff), 4);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_find_crlf) {
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "abc\r\ndef\r\n");
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 0), 3);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 3), 3);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 4), 8); /* "\n" at from is not a match */
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 8), 8);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 9), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 10), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, SIZE_MAX), NPOS);
    rx_buffer_free(&b);

    append_str(&b, "\n\r\r\n\n");
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 0), 2);
    rx_buffer_free(&b);

    append_str(&b, "x\ry\n\r");
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 0), NPOS);
    append_str(&b, "\n");
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 0), 4);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 5), NPOS);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_find_crlfcrlf) {
    rx_buffer b = RX_BUFFER_INIT;
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY\r\n\r\n";
    append_str(&b, req);
    size_t at = (size_t)(strstr(req, "\r\n\r\n") - req);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, 0), at);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, at), at);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, at + 1), strlen(req) - 4);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, strlen(req) - 3), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, strlen(req)), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, SIZE_MAX), NPOS);
    rx_buffer_free(&b);

    /* "\r\n\r" at the end is not a match; the final "\n" completes it. */
    append_str(&b, "Host: y\r\n\r");
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, 0), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 0), 7);
    append_str(&b, "\n");
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, 0), 7);
    rx_buffer_free(&b);

    /* Near misses. */
    append_str(&b, "\r\n\n\r\n\r\r\n\r\n");
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, 0), 6);
    rx_buffer_free(&b);

    /* A match whose halves straddle a reallocation. */
    append_str(&b, "X");
    size_t fill = rx_buffer_writable(&b) - 2;
    char *pad = malloc(fill);
    memset(pad, 'h', fill);
    ck_assert_int_eq(rx_buffer_append(&b, pad, fill), 0);
    append_str(&b, "\r\n");
    ck_assert_uint_eq(rx_buffer_writable(&b), 0);
    size_t cap = b.cap;
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, 0), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, 0), fill + 1);
    append_str(&b, "\r\nrest");
    ck_assert_uint_gt(b.cap, cap);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, 0), fill + 1);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, fill), fill + 1);
    ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, fill + 2), NPOS);
    ck_assert_uint_eq(rx_buffer_find_crlf(&b, fill + 2), fill + 3);
    free(pad);
    rx_buffer_free(&b);
}
END_TEST

/* ---- read_fd ---- */

START_TEST(test_read_fd_spill_large) {
    enum { TOTAL = 200 * 1024 };
    int p[2];
    ck_assert_int_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    ck_assert_int_ge(fcntl(p[1], F_SETPIPE_SZ, 512 * 1024), 256 * 1024);
    unsigned char *src = malloc(TOTAL);
    for (size_t i = 0; i < TOTAL; i++)
        src[i] = (unsigned char)((i * 131u) ^ (i >> 9));
    ck_assert_int_eq(write(p[1], src, TOTAL), TOTAL);

    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "pre:");
    size_t room = rx_buffer_writable(&b);
    ck_assert_uint_lt(room, TOTAL);
    ssize_t r = rx_buffer_read_fd(&b, p[0]);
    /* The first read filled the free space and spilled a full 64 KiB more. */
    ck_assert_int_gt(r, (ssize_t)room);
    ck_assert_int_eq(r, (ssize_t)(room + RX_BUFFER_SPILL));
    ck_assert_uint_eq(rx_buffer_len(&b), 4 + (size_t)r);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b), "pre:", 4), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + 4, src, (size_t)r), 0);

    size_t got = (size_t)r;
    int reads = 1;
    while (got < TOTAL) {
        r = rx_buffer_read_fd(&b, p[0]);
        ck_assert_int_gt(r, 0);
        got += (size_t)r;
        ck_assert_int_lt(++reads, 20);
    }
    ck_assert_uint_eq(got, TOTAL);
    ck_assert_int_eq(rx_buffer_read_fd(&b, p[0]), -EAGAIN);
    ck_assert_uint_eq(rx_buffer_len(&b), 4 + (size_t)TOTAL);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + 4, src, TOTAL), 0);

    /* The same over a socket pair, consuming as we go. */
    int sv[2];
    tu_socketpair(sv);
    int sz = 1024 * 1024;
    ck_assert_int_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
    ck_assert_int_eq(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
    size_t sent = 0;
    while (sent < TOTAL) {
        ssize_t w = write(sv[0], src + sent, TOTAL - sent);
        ck_assert_int_gt(w, 0);
        sent += (size_t)w;
    }
    rx_buffer s = RX_BUFFER_INIT;
    got = 0;
    reads = 0;
    while (got < TOTAL) {
        r = rx_buffer_read_fd(&s, sv[1]);
        ck_assert_int_gt(r, 0);
        ck_assert_uint_eq(rx_buffer_len(&s), (size_t)r);
        ck_assert_int_eq(memcmp(rx_buffer_peek(&s), src + got, (size_t)r), 0);
        got += (size_t)r;
        rx_buffer_consume(&s, (size_t)r);
        ck_assert_int_lt(++reads, 100);
    }
    ck_assert_int_eq(rx_buffer_read_fd(&s, sv[1]), -EAGAIN);

    rx_buffer_free(&s);
    rx_buffer_free(&b);
    free(src);
    close(sv[0]);
    close(sv[1]);
    close(p[0]);
    close(p[1]);
}
END_TEST

START_TEST(test_read_fd_small_into_zero_buffer) {
    int sv[2];
    tu_socketpair(sv);
    ck_assert_int_eq(write(sv[0], "ping", 4), 4);
    rx_buffer b = RX_BUFFER_INIT;
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), 4);
    ck_assert_uint_eq(b.start, H);
    assert_str(&b, "ping");
    /* Small messages do not make the buffer grow past its first size. */
    size_t cap = b.cap;
    ck_assert_int_eq(write(sv[0], "pong", 4), 4);
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), 4);
    assert_str(&b, "pingpong");
    ck_assert_uint_eq(b.cap, cap);
    rx_buffer_free(&b);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

START_TEST(test_read_fd_eof) {
    int sv[2];
    tu_socketpair(sv);
    ck_assert_int_eq(write(sv[0], "last", 4), 4);
    close(sv[0]);
    rx_buffer b = RX_BUFFER_INIT;
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), 4);
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), 0);
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), 0);
    assert_str(&b, "last");
    rx_buffer_free(&b);

    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), 0);
    ck_assert_ptr_null(b.data);
    close(sv[1]);
}
END_TEST

START_TEST(test_read_fd_eagain) {
    int sv[2];
    tu_socketpair(sv);
    rx_buffer b = RX_BUFFER_INIT;
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), -EAGAIN);
    ck_assert_ptr_null(b.data); /* nothing arrived, nothing allocated */
    append_str(&b, "kept");
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), -EAGAIN);
    assert_str(&b, "kept");
    int closed = dup(sv[0]);
    close(closed);
    ck_assert_int_eq(rx_buffer_read_fd(&b, closed), -EBADF);
    assert_str(&b, "kept");
    rx_buffer_free(&b);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

static ssize_t eintr_once_readv(int fd, const struct iovec *iov, int n) {
    if (n_readv++ == 0) {
        errno = EINTR;
        return -1;
    }
    return readv(fd, iov, n);
}

START_TEST(test_read_fd_eintr_retried) {
    int sv[2];
    tu_socketpair(sv);
    ck_assert_int_eq(write(sv[0], "hello", 5), 5);
    n_readv = 0;
    rx_sys.readv = eintr_once_readv;
    rx_buffer b = RX_BUFFER_INIT;
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), 5);
    ck_assert_int_eq(n_readv, 2);
    assert_str(&b, "hello");
    rx_buffer_free(&b);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

START_TEST(test_read_fd_enomem_keeps_what_fit) {
    int sv[2];
    tu_socketpair(sv);
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "head");
    size_t room = rx_buffer_writable(&b);
    size_t n = room + 100;
    char *src = malloc(n);
    memset(src, 'q', n);
    ck_assert_int_eq(write(sv[0], src, n), (ssize_t)n);
    rx_sys.malloc = fail_malloc;
    rx_sys.realloc = fail_realloc;
    ck_assert_int_eq(rx_buffer_read_fd(&b, sv[1]), -ENOMEM);
    ck_assert_uint_eq(rx_buffer_len(&b), 4 + room);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b), "head", 4), 0);
    ck_assert_int_eq(memcmp(rx_buffer_peek(&b) + 4, src, room), 0);
    rx_sys_reset();
    rx_buffer_free(&b);
    free(src);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

/* ---- write_fd / writev_fd ---- */

static ssize_t short_send(int fd, const void *p, size_t n, int flags) {
    n_send++;
    ck_assert_int_ne(flags & MSG_NOSIGNAL, 0);
    return send(fd, p, n < 7 ? n : 7, flags);
}

START_TEST(test_write_fd_partial) {
    int sv[2];
    tu_socketpair(sv);
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "0123456789abcdef");
    n_send = 0;
    rx_sys.send = short_send;
    ck_assert_int_eq(rx_buffer_write_fd(&b, sv[0]), 7);
    ck_assert_int_eq(n_send, 1);
    assert_str(&b, "789abcdef");
    ck_assert_int_eq(rx_buffer_write_fd(&b, sv[0]), 7);
    assert_str(&b, "ef");
    ck_assert_int_eq(rx_buffer_write_fd(&b, sv[0]), 2);
    ck_assert_uint_eq(rx_buffer_len(&b), 0);
    ck_assert_uint_eq(b.start, H);
    char got[32];
    ck_assert_int_eq(read(sv[1], got, sizeof got), 16);
    ck_assert_int_eq(memcmp(got, "0123456789abcdef", 16), 0);
    rx_buffer_free(&b);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

static ssize_t count_send(int fd, const void *p, size_t n, int flags) {
    n_send++;
    return send(fd, p, n, flags);
}
static ssize_t count_write(int fd, const void *p, size_t n) {
    n_write++;
    return write(fd, p, n);
}
static ssize_t count_sendmsg(int fd, const struct msghdr *m, int flags) {
    n_sendmsg++;
    return sendmsg(fd, m, flags);
}
static ssize_t count_writev(int fd, const struct iovec *iov, int n) {
    n_writev++;
    return writev(fd, iov, n);
}

START_TEST(test_write_fd_pipe_fallback) {
    int p[2];
    ck_assert_int_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    n_send = n_write = 0;
    rx_sys.send = count_send;
    rx_sys.write = count_write;
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "through a pipe");
    ck_assert_int_eq(rx_buffer_write_fd(&b, p[1]), 14);
    ck_assert_int_eq(n_send, 1);
    ck_assert_int_eq(n_write, 1);
    ck_assert_uint_eq(rx_buffer_len(&b), 0);
    char got[32];
    ck_assert_int_eq(read(p[0], got, sizeof got), 14);
    ck_assert_int_eq(memcmp(got, "through a pipe", 14), 0);

    /* A full pipe reports EAGAIN and keeps the data. */
    ck_assert_int_ge(fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
    char blk[4096];
    memset(blk, 'b', sizeof blk);
    while (write(p[1], blk, sizeof blk) > 0) {
    }
    append_str(&b, "later");
    ck_assert_int_eq(rx_buffer_write_fd(&b, p[1]), -EAGAIN);
    assert_str(&b, "later");
    rx_buffer_free(&b);
    close(p[0]);
    close(p[1]);
}
END_TEST

START_TEST(test_write_fd_epipe_no_sigpipe) {
    signal(SIGPIPE, SIG_DFL);
    int sv[2];
    tu_socketpair(sv);
    close(sv[1]);
    rx_buffer b = RX_BUFFER_INIT;
    append_str(&b, "nobody listens");
    ck_assert_int_eq(rx_buffer_write_fd(&b, sv[0]), -EPIPE);
    assert_str(&b, "nobody listens");
    rx_buffer *v[] = {&b};
    ck_assert_int_eq(rx_buffer_writev_fd(v, 1, sv[0]), -EPIPE);
    assert_str(&b, "nobody listens");
    rx_buffer_free(&b);
    close(sv[0]);
}
END_TEST

static ssize_t forbidden_send(int fd, const void *p, size_t n, int flags) {
    (void)fd;
    (void)p;
    (void)n;
    (void)flags;
    ck_abort_msg("send called for empty input");
    return -1;
}
static ssize_t forbidden_sendmsg(int fd, const struct msghdr *m, int flags) {
    (void)fd;
    (void)m;
    (void)flags;
    ck_abort_msg("sendmsg called for empty input");
    return -1;
}

START_TEST(test_write_empty_no_syscall) {
    rx_sys.send = forbidden_send;
    rx_sys.sendmsg = forbidden_sendmsg;
    rx_buffer a = RX_BUFFER_INIT, b;
    allocated_empty(&b);
    ck_assert_int_eq(rx_buffer_write_fd(&a, -1), 0);
    ck_assert_int_eq(rx_buffer_write_fd(&b, -1), 0);
    rx_buffer *v[] = {&a, &b};
    ck_assert_int_eq(rx_buffer_writev_fd(v, 2, -1), 0);
    ck_assert_int_eq(rx_buffer_writev_fd(v, 0, -1), 0);
    ck_assert_int_eq(rx_buffer_writev_fd(NULL, 0, -1), 0);
    ck_assert_int_eq(rx_buffer_writev_fd(v, -1, -1), -EINVAL);
    ck_assert_ptr_null(a.data);
    rx_buffer_free(&b);
}
END_TEST

START_TEST(test_writev_fd_order) {
    int sv[2];
    tu_socketpair(sv);
    rx_buffer a = RX_BUFFER_INIT, e = RX_BUFFER_INIT, b = RX_BUFFER_INIT, c = RX_BUFFER_INIT;
    append_str(&a, "HTTP/1.1 200 OK\r\n");
    append_str(&b, "Content-Length: 5\r\n\r\n");
    append_str(&c, "hello");
    rx_buffer_consume(&b, 0);
    n_sendmsg = 0;
    rx_sys.sendmsg = count_sendmsg;
    rx_buffer *v[] = {&a, &e, &b, &c};
    const char *want = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    ck_assert_int_eq(rx_buffer_writev_fd(v, 4, sv[0]), (ssize_t)strlen(want));
    ck_assert_int_eq(n_sendmsg, 1);
    for (int i = 0; i < 4; i++)
        ck_assert_uint_eq(rx_buffer_len(v[i]), 0);
    char got[128];
    ck_assert_int_eq(read(sv[1], got, sizeof got), (ssize_t)strlen(want));
    ck_assert_int_eq(memcmp(got, want, strlen(want)), 0);
    ck_assert_ptr_null(e.data);
    rx_buffer_free(&a);
    rx_buffer_free(&b);
    rx_buffer_free(&c);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

/* Records what would have been written and claims only the first `writev_limit` bytes. */
static char captured[256];
static size_t captured_len, writev_limit;
static ssize_t capturing_sendmsg(int fd, const struct msghdr *m, int flags) {
    (void)fd;
    n_sendmsg++;
    ck_assert_int_ne(flags & MSG_NOSIGNAL, 0);
    captured_len = 0;
    for (size_t i = 0; i < m->msg_iovlen; i++) {
        ck_assert_uint_gt(m->msg_iov[i].iov_len, 0);
        ck_assert_uint_le(captured_len + m->msg_iov[i].iov_len, sizeof captured);
        memcpy(captured + captured_len, m->msg_iov[i].iov_base, m->msg_iov[i].iov_len);
        captured_len += m->msg_iov[i].iov_len;
    }
    return (ssize_t)(captured_len < writev_limit ? captured_len : writev_limit);
}

START_TEST(test_writev_fd_partial) {
    rx_buffer a = RX_BUFFER_INIT, b = RX_BUFFER_INIT, c = RX_BUFFER_INIT;
    append_str(&a, "aaaa");
    append_str(&b, "bbbbbb");
    append_str(&c, "cc");
    rx_buffer *v[] = {&a, &b, &c};
    rx_sys.sendmsg = capturing_sendmsg;
    n_sendmsg = 0;

    writev_limit = 7; /* all of a, 3 of b */
    ck_assert_int_eq(rx_buffer_writev_fd(v, 3, 99), 7);
    ck_assert_uint_eq(captured_len, 12);
    ck_assert_int_eq(memcmp(captured, "aaaabbbbbbcc", 12), 0);
    ck_assert_uint_eq(rx_buffer_len(&a), 0);
    assert_str(&b, "bbb");
    assert_str(&c, "cc");

    writev_limit = 3; /* exactly the rest of b */
    ck_assert_int_eq(rx_buffer_writev_fd(v, 3, 99), 3);
    ck_assert_uint_eq(captured_len, 5);
    ck_assert_int_eq(memcmp(captured, "bbbcc", 5), 0);
    ck_assert_uint_eq(rx_buffer_len(&b), 0);
    assert_str(&c, "cc");

    writev_limit = 1;
    ck_assert_int_eq(rx_buffer_writev_fd(v, 3, 99), 1);
    assert_str(&c, "c");
    writev_limit = 100;
    ck_assert_int_eq(rx_buffer_writev_fd(v, 3, 99), 1);
    ck_assert_uint_eq(rx_buffer_len(&c), 0);
    ck_assert_int_eq(n_sendmsg, 4);
    rx_buffer_free(&a);
    rx_buffer_free(&b);
    rx_buffer_free(&c);
}
END_TEST

static ssize_t eintr_once_sendmsg(int fd, const struct msghdr *m, int flags) {
    if (n_sendmsg++ == 0) {
        errno = EINTR;
        return -1;
    }
    return sendmsg(fd, m, flags);
}

START_TEST(test_writev_fd_pipe_fallback_and_eintr) {
    int p[2];
    ck_assert_int_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    rx_buffer a = RX_BUFFER_INIT, b = RX_BUFFER_INIT;
    append_str(&a, "one,");
    append_str(&b, "two");
    rx_buffer *v[] = {&a, &b};
    n_sendmsg = n_writev = 0;
    rx_sys.sendmsg = eintr_once_sendmsg;
    rx_sys.writev = count_writev;
    ck_assert_int_eq(rx_buffer_writev_fd(v, 2, p[1]), 7);
    ck_assert_int_eq(n_sendmsg, 2); /* EINTR, then ENOTSOCK */
    ck_assert_int_eq(n_writev, 1);
    ck_assert_uint_eq(rx_buffer_len(&a) + rx_buffer_len(&b), 0);
    char got[16];
    ck_assert_int_eq(read(p[0], got, sizeof got), 7);
    ck_assert_int_eq(memcmp(got, "one,two", 7), 0);
    rx_buffer_free(&a);
    rx_buffer_free(&b);
    close(p[0]);
    close(p[1]);
}
END_TEST

START_TEST(test_writev_fd_many_buffers) {
    /* More non-empty buffers than one writev takes: the first batch goes out, in order. */
    enum { N = 1500 };
    rx_buffer *bufs = calloc(N, sizeof *bufs);
    rx_buffer **v = calloc(N, sizeof *v);
    for (int i = 0; i < N; i++) {
        char c = (char)('a' + i % 26);
        ck_assert_int_eq(rx_buffer_append(&bufs[i], &c, 1), 0);
        v[i] = &bufs[i];
    }
    int sv[2];
    tu_socketpair(sv);
    size_t total = 0;
    while (total < N) {
        ssize_t r = rx_buffer_writev_fd(v, N, sv[0]);
        ck_assert_int_gt(r, 0);
        ck_assert_int_le(r, 1024);
        total += (size_t)r;
    }
    ck_assert_uint_eq(total, N);
    char got[N];
    ck_assert_int_eq(read(sv[1], got, sizeof got), N);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(got[i], 'a' + i % 26);
        rx_buffer_free(&bufs[i]);
    }
    free(bufs);
    free(v);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

/* ---- randomized comparison against a plain array ---- */

static uint64_t rng_state;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static size_t rnd(size_t n) { return n ? (size_t)(rng() % n) : 0; }

/* Mostly letters, with enough '\r' and '\n' that CRLF matches are common. */
static char rnd_byte(void) {
    static const char alphabet[] = "ab\r\n\r\nxyz\0";
    return alphabet[rnd(sizeof alphabet)];
}

static size_t naive_find(const char *m, size_t len, size_t from, const char *pat, size_t k) {
    for (size_t i = from; i + k <= len && i < len; i++)
        if (memcmp(m + i, pat, k) == 0)
            return i;
    return NPOS;
}

START_TEST(test_random_against_model) {
    rng_state = 0x9e3779b97f4a7c15ull;
    size_t mcap = 1u << 20, mlen = 0;
    char *model = malloc(mcap), tmp[8192];
    rx_buffer b = RX_BUFFER_INIT;
    for (int step = 0; step < 20000; step++) {
        int op = (int)rnd(100);
        size_t n;
        if (op < 30) {
            n = rnd(8) == 0 ? rnd(sizeof tmp) : rnd(300);
            for (size_t i = 0; i < n; i++)
                tmp[i] = rnd_byte();
            if (mlen + n > mcap)
                continue;
            ck_assert_int_eq(rx_buffer_append(&b, tmp, n), 0);
            memcpy(model + mlen, tmp, n);
            mlen += n;
        } else if (op < 45) {
            n = rnd(6) == 0 ? rnd(600) : rnd(24);
            for (size_t i = 0; i < n; i++)
                tmp[i] = rnd_byte();
            if (mlen + n > mcap)
                continue;
            ck_assert_int_eq(rx_buffer_prepend(&b, tmp, n), 0);
            memmove(model + n, model, mlen);
            memcpy(model, tmp, n);
            mlen += n;
        } else if (op < 65) {
            n = rnd(4) == 0 ? mlen + rnd(10) : rnd(mlen + 1);
            rx_buffer_consume(&b, n);
            size_t c = n < mlen ? n : mlen;
            if (mlen > c) /* guard also keeps gcc -O2 from a false stringop-overflow */
                memmove(model, model + c, mlen - c);
            mlen -= c;
            if (mlen == 0 && b.data)
                ck_assert_uint_eq(b.start, H);
        } else if (op < 80) {
            n = rnd(2000);
            size_t k = rnd(n + 1);
            if (mlen + k > mcap)
                continue;
            ck_assert_int_eq(rx_buffer_reserve(&b, n), 0);
            ck_assert_uint_ge(rx_buffer_writable(&b), n);
            for (size_t i = 0; i < k; i++)
                model[mlen + i] = rx_buffer_tail(&b)[i] = rnd_byte();
            rx_buffer_commit(&b, k);
            mlen += k;
        } else if (op < 85) {
            size_t cap = b.cap;
            size_t rel = rx_buffer_release_if_empty(&b);
            ck_assert_uint_eq(rel, mlen == 0 ? cap : 0);
            if (mlen == 0)
                ck_assert_ptr_null(b.data);
        } else {
            size_t from = rnd(4) == 0 ? rnd(mlen + 5) : rnd(mlen / 8 + 1);
            char c = rnd_byte();
            ck_assert_uint_eq(rx_buffer_find_byte(&b, from, c),
                              naive_find(model, mlen, from, &c, 1));
            ck_assert_uint_eq(rx_buffer_find_crlf(&b, from),
                              naive_find(model, mlen, from, "\r\n", 2));
            ck_assert_uint_eq(rx_buffer_find_crlfcrlf(&b, from),
                              naive_find(model, mlen, from, "\r\n\r\n", 4));
        }
        ck_assert_uint_le(b.start, b.end);
        ck_assert_uint_le(b.end, b.cap);
        ck_assert_int_eq(b.data == NULL, b.cap == 0);
        ck_assert_uint_eq(rx_buffer_len(&b), mlen);
        if (mlen > 0 && memcmp(rx_buffer_peek(&b), model, mlen) != 0)
            ck_abort_msg("contents differ after step %d (op %d)", step, op);
    }
    free(model);
    rx_buffer_free(&b);
}
END_TEST

static Suite *buffer_suite(void) {
    Suite *s = suite_create("buffer");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_init_empty_no_alloc);
    tcase_add_test(tc, test_exact_fill_to_capacity);
    tcase_add_test(tc, test_prepend_into_headroom_no_move);
    tcase_add_test(tc, test_prepend_larger_than_headroom);
    tcase_add_test(tc, test_grow_after_prepend);
    tcase_add_test(tc, test_consume);
    tcase_add_test(tc, test_reserve_compacts);
    tcase_add_test(tc, test_fifo_nearly_full_grows);
    tcase_add_test(tc, test_fifo_half_full_compacts);
    tcase_add_test(tc, test_growth_sizes);
    tcase_add_test(tc, test_geometric_growth);
    tcase_add_test(tc, test_overflow);
    tcase_add_test(tc, test_enomem_unchanged);
    tcase_add_test(tc, test_release_if_empty);
    tcase_add_test(tc, test_find_byte);
    tcase_add_test(tc, test_find_crlf);
    tcase_add_test(tc, test_find_crlfcrlf);
    tcase_add_test(tc, test_read_fd_spill_large);
    tcase_add_test(tc, test_read_fd_small_into_zero_buffer);
    tcase_add_test(tc, test_read_fd_eof);
    tcase_add_test(tc, test_read_fd_eagain);
    tcase_add_test(tc, test_read_fd_eintr_retried);
    tcase_add_test(tc, test_read_fd_enomem_keeps_what_fit);
    tcase_add_test(tc, test_write_fd_partial);
    tcase_add_test(tc, test_write_fd_pipe_fallback);
    tcase_add_test(tc, test_write_fd_epipe_no_sigpipe);
    tcase_add_test(tc, test_write_empty_no_syscall);
    tcase_add_test(tc, test_writev_fd_order);
    tcase_add_test(tc, test_writev_fd_partial);
    tcase_add_test(tc, test_writev_fd_pipe_fallback_and_eintr);
    tcase_add_test(tc, test_writev_fd_many_buffers);
    tcase_add_test(tc, test_random_against_model);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(buffer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
