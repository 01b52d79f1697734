/* rx_buffer: a contiguous growable byte buffer with free space in front (prepend) and behind.
 * No locking: a buffer is used by one thread at a time (a connection's, by its loop's thread). */
#ifndef RX_BUFFER_H
#define RX_BUFFER_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes [start, end) of data are readable; [0, start) is free space in front, [end, cap) behind.
 * The struct is public so it can be embedded; treat the fields as read-only. A zeroed buffer
 * (RX_BUFFER_INIT) is valid and empty, and allocates nothing until first written. */
typedef struct rx_buffer {
    char *data;
    size_t start;
    size_t end;
    size_t cap;
} rx_buffer;

#define RX_BUFFER_INIT                                                                             \
    { 0, 0, 0, 0 }

/* Space kept in front of the data when the buffer is allocated or emptied, so a small header can
 * be prepended without moving bytes. */
#define RX_BUFFER_HEADROOM 16

/* Size of the stack spill area rx_buffer_read_fd uses beyond the buffer's own free space. */
#define RX_BUFFER_SPILL (64 * 1024)

/* Returned by the search functions when nothing matches. */
#define RX_BUFFER_NPOS ((size_t)-1)

void rx_buffer_init(rx_buffer *buf);

/* Releases the memory; the buffer is empty and reusable afterwards. */
void rx_buffer_free(rx_buffer *buf);

static inline size_t rx_buffer_len(const rx_buffer *buf) { return buf->end - buf->start; }
/* Readable bytes; NULL for a buffer that never allocated. */
static inline const char *rx_buffer_peek(const rx_buffer *buf) {
    return buf->data ? buf->data + buf->start : NULL;
}
static inline size_t rx_buffer_writable(const rx_buffer *buf) { return buf->cap - buf->end; }
/* Free space behind the data; valid after rx_buffer_reserve succeeded. */
static inline char *rx_buffer_tail(rx_buffer *buf) {
    return buf->data ? buf->data + buf->end : NULL;
}

/* Makes at least n bytes writable behind the data. When the data is at most half of cap and
 * moving it to the front frees enough, it is moved (no allocation). Otherwise the block is
 * reallocated to the smallest of 2 * cap, 4 * cap, ... (of 256, 512, ... for the first block)
 * that holds RX_BUFFER_HEADROOM + length + n, so a buffer kept more than half full doubles rather
 * than moving its bytes for every append. Returns 0, -ENOMEM (buffer unchanged), or -EOVERFLOW
 * when the size cannot be represented. */
int rx_buffer_reserve(rx_buffer *buf, size_t n);

/* Marks n bytes written at rx_buffer_tail() as readable. n must not exceed rx_buffer_writable(). */
void rx_buffer_commit(rx_buffer *buf, size_t n);

/* Copies n bytes to the end / to the front; src must not point into the buffer itself (it may
 * move). Returns 0, -ENOMEM or -EOVERFLOW (buffer unchanged). */
int rx_buffer_append(rx_buffer *buf, const void *src, size_t n);
int rx_buffer_prepend(rx_buffer *buf, const void *src, size_t n);

/* Drops the first n readable bytes (all of them when n exceeds the length). */
void rx_buffer_consume(rx_buffer *buf, size_t n);

/* Releases the memory of an empty buffer (a non-empty one is left alone); returns the bytes
 * released. For idle connections. */
size_t rx_buffer_release_if_empty(rx_buffer *buf);

/* Offset (from the first readable byte) of the first c / "\r\n" / "\r\n\r\n" at or after offset
 * from, or RX_BUFFER_NPOS. */
size_t rx_buffer_find_byte(const rx_buffer *buf, size_t from, char c);
size_t rx_buffer_find_crlf(const rx_buffer *buf, size_t from);
size_t rx_buffer_find_crlfcrlf(const rx_buffer *buf, size_t from);

/* Reads once from fd with readv into the free space behind the data plus a 64 KiB stack spill
 * area, appending whatever arrived. Returns bytes read, 0 at end of file, or a negative errno
 * (-EAGAIN when nothing is ready; EINTR is retried). On -ENOMEM the spilled bytes are lost and
 * the buffer keeps what fit. */
ssize_t rx_buffer_read_fd(rx_buffer *buf, int fd);

/* Writes the readable bytes to fd once (send with MSG_NOSIGNAL on sockets, write otherwise) and
 * consumes what was written. Returns bytes written or a negative errno (-EAGAIN, -EPIPE, ...). */
ssize_t rx_buffer_write_fd(rx_buffer *buf, int fd);

/* Writes several buffers to fd with one writev, in order, consuming what was written from each.
 * Returns bytes written or a negative errno. */
ssize_t rx_buffer_writev_fd(rx_buffer *const *bufs, int count, int fd);

#ifdef __cplusplus
}
#endif

#endif
