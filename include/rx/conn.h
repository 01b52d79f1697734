/* rx_conn: one non-blocking stream connection (TCP or unix) with input and output buffers,
 * send-now-else-queue, backpressure marks, half-close, idle, read and write timeouts and a bounded
 * graceful close.
 * A connection belongs to its loop's thread: call these functions only there. Apart from
 * on_high_water, which a send may run so a producer stops at once, no callback of a connection
 * runs inside a call of yours (rx_conn_close, rx_conn_flush, ...): what such a call makes due
 * runs from the loop, before it polls again. */
#ifndef RX_CONN_H
#define RX_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <rx/addr.h>
#include <rx/buffer.h>
#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_conn rx_conn;

typedef enum rx_conn_state {
    RX_CONN_CONNECTING, /* connect in progress (connector) */
    RX_CONN_OPEN,
    RX_CONN_HALF_CLOSED, /* one direction has ended (rx_conn_ended says which) */
    RX_CONN_CLOSING,     /* a graceful close is under way: writing what is queued */
    RX_CONN_CLOSED,      /* fd closed; on_close runs at the end of the iteration */
} rx_conn_state;

/* Bits of rx_conn_ended. */
enum {
    RX_CONN_READ_ENDED = 1u << 0,  /* nothing more will reach on_data: the peer ended its stream,
                                      or a close is under way */
    RX_CONN_WRITE_ENDED = 1u << 1, /* nothing more can be sent: rx_conn_shutdown or a close */
};

typedef enum rx_close_reason {
    RX_CLOSE_PEER,    /* orderly end of stream from the peer (and our output was written) */
    RX_CLOSE_RESET,   /* ECONNRESET / EPIPE: the peer went away abruptly */
    RX_CLOSE_TIMEOUT, /* idle timeout, connect timeout, or a graceful close past its deadline */
    RX_CLOSE_LOCAL,   /* rx_conn_close / rx_conn_abort, a server stop or rx_loop_free */
    RX_CLOSE_ERROR,   /* another error: see err (ECONNREFUSED, ENOMEM, ...) */
} rx_close_reason;

/* Which timeout on_timeout reports (rx_conn_opts). */
typedef enum rx_timeout_kind {
    RX_TIMEOUT_IDLE,  /* nothing read and nothing written for idle_timeout_ms */
    RX_TIMEOUT_READ,  /* reading on, and nothing read for read_timeout_ms */
    RX_TIMEOUT_WRITE, /* output queued, and none of it written for write_timeout_ms */
} rx_timeout_kind;

/* Every callback is optional. The table is not copied: it must outlive the connections. */
typedef struct rx_conn_callbacks {
    /* The connection is established (accepted, or the connect completed). For a connection a
     * server accepted, arg is the server's (rx_server_opts.arg) and the connection's own arg,
     * which every other callback gets, is NULL until set here (rx_conn_set_arg); for rx_connect,
     * arg is the connection's own (rx_connect_opts.arg). */
    void (*on_open)(rx_conn *c, void *arg);
    /* New bytes are in `in`. Consume what you parsed (rx_buffer_consume); the rest stays for the
     * next call (kept in memory of the connection's own until the message is complete). Do not
     * keep pointers into `in` past this call; do not append to it. Output appended to
     * rx_conn_output() during the call goes out in one write when it returns (rx_conn_send writes
     * at once when nothing is queued ahead). */
    void (*on_data)(rx_conn *c, rx_buffer *in, void *arg);
    /* on_data left max_input bytes (rx_conn_opts): reading stopped. Consume from `in` (below the
     * limit reading goes on) or close; else reading stays off until you consume from
     * rx_conn_input and call rx_conn_resume_read. NULL: rx closes (RX_CLOSE_ERROR, -EMSGSIZE). */
    void (*on_input_full)(rx_conn *c, rx_buffer *in, void *arg);
    /* Output that had to wait for the socket has all been written. */
    void (*on_drain)(rx_conn *c, void *arg);
    /* Queued output rose above the high-water mark / then fell back to the low-water mark.
     * on_high_water runs inside rx_conn_send/sendv/sendfile when they cross the mark (so a
     * producer stops at once), or when on_data returns, judged on everything it queued before
     * that is written: output built above the mark in one call is always followed by
     * on_low_water. on_low_water runs after the write that reached the mark, from the loop. A
     * closing connection gets neither. */
    void (*on_high_water)(rx_conn *c, size_t queued, void *arg);
    void (*on_low_water)(rx_conn *c, size_t queued, void *arg);
    /* The peer shut its write side. When set, the connection stays open for writing and the
     * owner closes it (or shuts its side: once both sides ended the connection closes with
     * RX_CLOSE_PEER); when NULL, rx writes what is queued and closes with RX_CLOSE_PEER. */
    void (*on_eof)(rx_conn *c, void *arg);
    /* A timeout passed (never while closing or connecting); `kind` says which. When set, the
     * connection stays open and the owner decides (answer and close, or wait again: that timeout
     * restarts); when NULL, rx closes with RX_CLOSE_TIMEOUT (err -ETIMEDOUT). */
    void (*on_timeout)(rx_conn *c, rx_timeout_kind kind, void *arg);
    /* The server that accepted the connection began a graceful stop (rx_server_stop): finish
     * what is in progress and close (an idle keep-alive connection can close at once). When
     * NULL, the connection goes on until it closes or the stop's deadline passes. */
    void (*on_stop)(rx_conn *c, void *arg);
    /* Last callback, exactly once, at the end of the iteration in which the connection closed
     * (also when it closed outside rx_loop_run: then at the end of the next iteration), or in
     * rx_loop_free. err is 0 or a negative errno. The connection memory is released after it
     * returns; free your context here. */
    void (*on_close)(rx_conn *c, rx_close_reason reason, int err, void *arg);
} rx_conn_callbacks;

/* For benchmarks only, not for use: switches that turn one of rx's techniques off, to measure what
 * it is worth (docs/c10k.md, bench/run --variant). Leave rx_conn_opts.tuning zeroed. */
typedef struct rx_conn_tuning {
    bool edge_triggered; /* EPOLLET, reading until EAGAIN, instead of level-triggered */
    bool own_buffers;    /* 4 KiB input and output buffers per connection, never released,
                            instead of the loop's shared scratch buffer and lazy output */
    bool always_queue;   /* queue every send and write it when EPOLLOUT says so, instead of
                            writing at once */
} rx_conn_tuning;

typedef struct rx_conn_opts {
    size_t high_water; /* 0: 1 MiB */
    size_t low_water;  /* 0: high_water / 4 */
    /* The most input kept between on_data calls (bytes on_data left unconsumed): rx reads no
     * more than fits, and stops reading when on_data leaves that much (on_input_full). 0: 1 MiB;
     * SIZE_MAX (as any value from 4 GiB - 1 up): no limit. */
    size_t max_input;
    /* Timeouts, 0: none; at most 49 days. The idle timeout is the simple case: nothing read and
     * nothing written for that long, whatever the connection waits for. The read and write
     * timeouts (libevent's) each watch one direction, and only while it can move: the read
     * timeout while reading is on (not paused for backpressure or at the input limit, the peer's
     * stream not ended), the write timeout while output is queued (a peer that stopped reading). */
    uint64_t idle_timeout_ms;
    uint64_t read_timeout_ms;
    uint64_t write_timeout_ms;
    uint64_t close_timeout_ms; /* bound on a graceful close, after which it is aborted; 0: 5 s */
    bool nagle;                /* leave Nagle's algorithm on (TCP_NODELAY is set by default) */
    bool keepalive;            /* SO_KEEPALIVE */
    rx_conn_tuning tuning;     /* benchmarks only (above): leave zeroed */
} rx_conn_opts;

/* Wraps a connected non-blocking socket, which the connection then owns (also on failure: then
 * it is closed with a reset, so the peer does not take it for an orderly end).
 * Reading starts at once; on_open is not called (the caller knows). opts may be NULL.
 * The loop owns the memory (released after on_close). Returns NULL and sets errno. */
rx_conn *rx_conn_new(rx_loop *loop, int fd, const rx_conn_opts *opts, const rx_conn_callbacks *cbs,
                     void *arg);

/* Sends n bytes: writes at once when nothing is queued, queues what the socket did not take and
 * watches for writability only while something is queued. Returns 0; -EPIPE when the connection
 * is closing or its write side is shut (also when on_high_water, run by this call, closed it);
 * -ENOMEM when nothing could be queued (the connection is closed if part of the bytes already
 * left); or the errno of a failed write (-ECONNRESET, ...), the connection then being closed
 * (on_close follows from the loop, never inside this call). */
int rx_conn_send(rx_conn *c, const void *data, size_t n);

/* Like rx_conn_send for several pieces (a header and a payload) with one writev. */
int rx_conn_sendv(rx_conn *c, const struct iovec *iov, int iovcnt);

/* Queues len bytes of file fd from offset, after everything queued before, sent with sendfile.
 * The connection takes ownership of fd and closes it when sent or on close (also on error). A
 * peer's reset must not kill the process with SIGPIPE, which sendfile raises: the first file sent
 * from a thread blocks SIGPIPE in that thread for good, and rx takes back the ones it raised.
 * Returns 0, -EPIPE, -ENOMEM. */
int rx_conn_sendfile(rx_conn *c, int fd, off_t offset, size_t len);

/* The output buffer, for building output in place; the pointer is good until you return to the
 * loop. What is appended goes out after anything queued before: when on_data returns (inside
 * on_data), else at rx_conn_flush or before the loop polls again, whichever comes first. */
rx_buffer *rx_conn_output(rx_conn *c);

/* Writes what is queued as far as the socket takes it (at most 1 MiB; the rest follows from the
 * loop). Returns 0 or a negative errno (the connection is then closed). */
int rx_conn_flush(rx_conn *c);

/* The input buffer: bytes read and not yet consumed (for an owner that stopped consuming and
 * resumes outside on_data); an empty buffer when there are none. */
rx_buffer *rx_conn_input(rx_conn *c);

/* Bytes queued for output (buffered and file ranges). */
size_t rx_conn_queued(const rx_conn *c);

/* Stops / resumes reading (backpressure). Data already read stays in the input buffer; after a
 * resume, on_data gets it before the loop polls again, without waiting for new bytes. A resume
 * also ends a stop at the input limit (on_input_full) once the owner consumed below it; while the
 * input is still at the limit, reading stays off (after a pause, on_data still gets the input). */
void rx_conn_pause_read(rx_conn *c);
void rx_conn_resume_read(rx_conn *c);

/* Shuts the write side once the queue is written (half-close); reading goes on. Once the peer
 * ended its side too, the connection closes (RX_CLOSE_PEER). */
void rx_conn_shutdown(rx_conn *c);

/* Graceful close: no more on_data and no more sends; what is queued is written, the write side
 * shut, and the connection closes once the peer ended its side too (what it still sends is
 * dropped), with RX_CLOSE_LOCAL. Reading to the peer's end avoids the reset that closing on
 * unread input would cause, which could destroy the last bytes we sent. All of it is bounded by
 * close_timeout_ms: past it the connection is aborted (RX_CLOSE_TIMEOUT, -ETIMEDOUT). A close of
 * a connection still connecting waits for the connect to write what was queued (and is a plain
 * cancel when nothing was); a second close is a no-op. */
void rx_conn_close(rx_conn *c);

/* Closes at once with a TCP reset (SO_LINGER 0), dropping queued output (RX_CLOSE_LOCAL). */
void rx_conn_abort(rx_conn *c);

/* Changes the idle timeout (0: none). Activity (a read or a write) restarts it; O(1). Returns 0,
 * -ENOMEM, or -EPIPE when the connection is closing or closed (its close deadline bounds it). */
int rx_conn_set_idle_timeout(rx_conn *c, uint64_t ms);

/* Changes the read and write timeouts (0: none; see rx_conn_opts). Each starts over from now.
 * Returns 0, -ENOMEM (nothing changed), or -EPIPE when the connection is closing or closed. */
int rx_conn_set_timeouts(rx_conn *c, uint64_t read_ms, uint64_t write_ms);

rx_conn_state rx_conn_get_state(const rx_conn *c);

/* Which sides have ended: RX_CONN_READ_ENDED | RX_CONN_WRITE_ENDED (both once closed). */
unsigned rx_conn_ended(const rx_conn *c);
rx_loop *rx_conn_loop(const rx_conn *c);
/* The connection's context, passed to its callbacks (on_open aside: see there); the caller owns
 * what it points to. For the server's context: rx_server_arg(rx_conn_server(c)). */
void *rx_conn_arg(const rx_conn *c);
void rx_conn_set_arg(rx_conn *c, void *arg);
int rx_conn_fd(const rx_conn *c);

/* From other threads. A connection belongs to its loop's thread; another thread reaches it with a
 * reference (which keeps its memory, not the connection, alive past on_close) and posted sends.
 * rx_conn_ref / rx_conn_unref: any thread; the last unref frees the memory once on_close ran. */
void rx_conn_ref(rx_conn *c);
void rx_conn_unref(rx_conn *c);

/* The outcome of an rx_conn_send_async, on the connection's loop thread: 0 when the bytes were
 * handed to rx_conn_send, else its negative errno (-EPIPE: the connection closed first). */
typedef void (*rx_send_done_fn)(rx_conn *c, int status, void *arg);

/* Any thread, holding a reference: copies n bytes and sends them from the connection's loop, in
 * the order of the calls of one thread. Returns 0 (then done, if not NULL, runs exactly once,
 * also when the loop is freed first: -ECANCELED), -EPIPE when the connection has closed already
 * (nothing is touched, done does not run), or -ENOMEM. */
int rx_conn_send_async(rx_conn *c, const void *data, size_t n, rx_send_done_fn done, void *arg);

/* Peer and local addresses (getpeername/getsockname). For a connection a proxy_protocol listener
 * accepted, the peer is the client its PROXY header named (rx_listener_opts); the local address
 * stays the socket's. Return 0 or a negative errno (-ENOTCONN once closed). */
int rx_conn_peer_addr(const rx_conn *c, rx_addr *out);
int rx_conn_local_addr(const rx_conn *c, rx_addr *out);

/* Counters: bytes read from and written to the socket. */
unsigned long long rx_conn_bytes_in(const rx_conn *c);
unsigned long long rx_conn_bytes_out(const rx_conn *c);

#ifdef __cplusplus
}
#endif

#endif
