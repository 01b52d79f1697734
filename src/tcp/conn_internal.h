/* The rx_conn struct and the hooks the server and connector use. Private to src/tcp. */
#ifndef RX_CONN_INTERNAL_H
#define RX_CONN_INTERNAL_H

#include <stdatomic.h>

#include <rx/channel.h>
#include <rx/conn.h>
#include <rx/timer.h>

#include "channel_internal.h"
#include "scratch.h"
#include "sys.h"

/* The read side and the write side of a connection, each with its own few states (the table of
 * transitions is at the top of conn.c). */
enum conn_rd {
    RD_OPEN,   /* reading; bytes go to on_data */
    RD_PAUSED, /* rx_conn_pause_read: the kernel keeps what arrives */
    RD_FULL,   /* the input kept reached max_input: the kernel keeps what arrives until the owner
                  consumes (on_input_full) */
    RD_EOF,    /* the peer ended its stream: nothing more will come */
    RD_DRAIN,  /* closing: what the peer still sends is read and dropped until its end */
    RD_CLOSED, /* the fd is closed */
};
enum conn_wr {
    WR_OPEN,   /* sends accepted; what the socket does not take waits in the queue */
    WR_FLUSH,  /* no more sends: the queue goes out, then our side is shut (FIN) */
    WR_SHUT,   /* our side is shut */
    WR_CLOSED, /* the fd is closed */
};

/* In c->refs: the connection has closed (rx_conn_send_async answers -EPIPE). */
#define REF_CLOSED (1u << 31)

/* c->reason while no close is under way. */
#define CLOSE_NONE 7

/* c->max_input of a connection without an input limit. */
#define NO_INPUT_LIMIT UINT32_MAX

/* c->bits */
enum {
    B_EDGE = 1u << 0, /* rx_conn_opts switches, see conn.h */
    B_OWN_BUFFERS = 1u << 1,
    B_ALWAYS_QUEUE = 1u << 2,
    B_ABOVE_HIGH = 1u << 3, /* on_high_water ran; on_low_water is next */
    B_IN_DATA = 1u << 4,    /* inside on_data: appended output waits for it to return */
    B_OUT_LENT = 1u << 5,   /* `out` is the loop's output scratch buffer, lent during on_data */
    B_OWE_DRAIN = 1u << 6,  /* on_drain is due */
    B_OWE_INPUT = 1u << 7,  /* buffered input is due to on_data (after a resume) */
    B_OWE_READ = 1u << 8,   /* an edge-triggered read stopped at its cap: more is waiting */
    B_OWE_WRITE = 1u << 9,  /* a write stopped at its cap: the rest waits for its turn */
    B_PEER = 1u << 10,      /* the peer's address (a PROXY header's) follows the struct */
};
_Static_assert(B_PEER < 1u << 12, "c->bits has 12 bits");

struct rx_file_queue;
struct rx_connect_state;

/* The timers of the read and write timeouts (rx_conn_set_timeouts): memory only for a connection
 * that uses them, made for a read timeout when it is set, for a write timeout (c->write_ms) only
 * once output first waits, which most connections' never does. Each timer runs only while its
 * direction can move (rx_conn_update_interest). */
struct rx_conn_rw {
    rx_timer *rd, *wr;
    uint32_t read_ms;
    uint64_t last_read, last_write; /* loop ms of the last read, the last write progress */
};
struct rx_server_shard;

/* The memory of a connection lives in its channel's allocation (rx_channel_new_owner): one block,
 * released at the end of the iteration in which it closed. */
struct rx_conn {
    rx_channel *ch;
    const rx_conn_callbacks *cbs;
    void *arg;
    rx_buffer *in; /* bytes kept between reads (an incomplete message); NULL: none */
    rx_buffer out; /* queued output before, between and after file ranges */
    struct rx_file_queue *files;
    uint32_t high_water, low_water;
    rx_timer *idle;        /* the idle timeout, while the connection is not closing */
    rx_timer *close_timer; /* the deadline of a graceful close */
    struct rx_conn_rw *rw; /* the read and write timeouts; NULL: none */
    /* The last read or write progress (the idle timeout), or, once closing, the close or the last
     * write progress (the close deadline: reading the peer's leftovers does not extend it). */
    uint64_t last_active;
    unsigned long long bytes_in, bytes_out;
    struct rx_server_shard *owner;    /* the server (its part on this loop) that accepted it */
    struct rx_connect_state *connect; /* non-NULL while connecting (connector.c) */
    /* References to the memory (the loop's own, plus rx_conn_ref's), and REF_CLOSED once the fd
     * closed: the one field other threads touch. */
    _Atomic uint32_t refs;
    uint32_t close_ms;  /* deadline of a graceful close */
    uint32_t idle_ms;   /* the idle timeout */
    uint32_t write_ms;  /* the write timeout (its timer is in rw) */
    uint32_t max_input; /* input kept is at most this (rx_conn_opts.max_input); NO_INPUT_LIMIT */
    /* The small state in one word, so that the struct stays at 168 bytes (with its channel, a
     * connection is one 256-byte allocation). */
    uint32_t bits : 12;  /* B_* */
    uint32_t rd : 3;     /* enum conn_rd */
    uint32_t wr : 2;     /* enum conn_wr */
    uint32_t reason : 3; /* rx_close_reason of the close under way; CLOSE_NONE */
    uint32_t err : 12;   /* on_close's err, negated (the kernel's errnos are below 4096) */
};
_Static_assert(RD_CLOSED < 1 << 3 && WR_CLOSED < 1 << 2 && CLOSE_NONE < 1 << 3 &&
                   RX_CLOSE_ERROR < CLOSE_NONE,
               "the read and write states and the close reason fit their fields");

/* Small facts about a connection, shared by its files. */
static inline bool rx_conn_has(const rx_conn *c, unsigned bit) { return (c->bits & bit) != 0; }
static inline bool rx_conn_closing(const rx_conn *c) { return c->reason != CLOSE_NONE; }
static inline bool rx_conn_is_closed(const rx_conn *c) { return c->rd == RD_CLOSED; }
/* on_close's err: 0 or a negative errno. */
static inline int rx_conn_err(const rx_conn *c) { return -(int)c->err; }
static inline bool rx_conn_connecting(const rx_conn *c) { return c->connect != NULL; }
static inline rx_loop *rx_conn_loop_of(const rx_conn *c) { return rx_channel_loop(c->ch); }
static inline bool rx_conn_writing(const rx_conn *c) {
    return c->wr == WR_OPEN || c->wr == WR_FLUSH;
}
static inline bool rx_conn_waiting_write(const rx_conn *c) {
    return rx_channel_interest(c->ch) & RX_WRITABLE;
}
/* Queued output will be written without our help: when the socket has room, or on its turn. */
static inline bool rx_conn_write_pending(const rx_conn *c) {
    return rx_conn_waiting_write(c) || rx_conn_has(c, B_OWE_WRITE);
}
static inline int rx_conn_sock(const rx_conn *c) { return rx_channel_fd(c->ch); }
static inline void rx_conn_touch(rx_conn *c) {
    c->last_active = rx_loop_now_ms(rx_channel_loop(c->ch));
}
/* Hands the connection's callbacks and arg to another owner (rx_conn_join). */
static inline void rx_conn_set_callbacks(rx_conn *c, const rx_conn_callbacks *cbs, void *arg) {
    c->cbs = cbs;
    c->arg = arg;
}
/* Bytes were read (and handed to on_data), or written: the timeouts that watch it start over. */
static inline void rx_conn_touch_read(rx_conn *c) {
    rx_conn_touch(c);
    if (c->rw)
        c->rw->last_read = c->last_active;
}
static inline void rx_conn_touch_write(rx_conn *c) {
    rx_conn_touch(c);
    if (c->rw)
        c->rw->last_write = c->last_active;
}

/* Wraps fd in a connection; `connecting` leaves interest to the connector. peer, when not NULL,
 * is what rx_conn_peer_addr reports instead of the socket's (a PROXY header's client; kept only
 * for IPv4 and IPv6, the only clients a header names). */
RX_INTERNAL rx_conn *rx_conn_create(rx_loop *loop, int fd, bool connecting,
                                    const rx_conn_opts *opts, const rx_conn_callbacks *cbs,
                                    void *arg, const rx_addr *peer);

/* Moves a connecting connection to a new socket (a retry); the old one is closed. */
RX_INTERNAL void rx_conn_replace_fd(rx_conn *c, int fd);

/* The connect finished: on_open (unless a close is under way), then what was queued meanwhile. */
RX_INTERNAL void rx_conn_established(rx_conn *c);

/* Closes now: fd closed, on_close owed at the end of the iteration. */
RX_INTERNAL void rx_conn_close_now(rx_conn *c, rx_close_reason reason, int err);

/* A graceful close bounded by ms instead of the connection's close timeout (server stop). */
RX_INTERNAL void rx_conn_close_within(rx_conn *c, uint64_t ms);

/* The live connection after c among the loop's (the first for NULL), or NULL at the end. Closing
 * c takes it out of the list: fetch the next one first. */
RX_INTERNAL rx_conn *rx_conn_next(rx_loop *loop, rx_conn *c);
/* The same over the closed ones whose on_close has not returned (see rx_channel_next_closed). */
RX_INTERNAL rx_conn *rx_conn_next_closed(rx_loop *loop, rx_conn *c);

/* State machine helpers (conn.c): interest from the two sides; close once both ended; the close
 * reason for a failed I/O's errno; give a lent scratch buffer back (bytes left move to *keep;
 * 0 or -ENOMEM). */
RX_INTERNAL void rx_conn_update_interest(rx_conn *c);
RX_INTERNAL void rx_conn_maybe_finish(rx_conn *c);
RX_INTERNAL rx_close_reason rx_conn_reason_for(int err);
RX_INTERNAL int rx_conn_unlend(rx_conn *c, rx_buffer *buf, int kind, rx_buffer *keep);

/* Write side (conn_write.c): write what is queued (bounded per call) and settle the write side;
 * on_high_water when the queue rose above the mark; the marks and on_drain as things stand
 * (loop context only); give the lent output scratch back. */
RX_INTERNAL void rx_conn_write_out(rx_conn *c);
RX_INTERNAL void rx_conn_check_high(rx_conn *c);
RX_INTERNAL void rx_conn_notify(rx_conn *c);
RX_INTERNAL void rx_conn_unlend_out(rx_conn *c);

/* Output queue (conn_output.c): bytes of file ranges queued; write at most `cap` bytes as far as
 * the socket takes them (0: the queue is empty or the socket full; 1: stopped at the cap; or a
 * negative errno); release the file ranges (closing their fds). */
RX_INTERNAL size_t rx_conn_file_bytes(const rx_conn *c);
RX_INTERNAL int rx_conn_write_queue(rx_conn *c, size_t cap);
RX_INTERNAL void rx_conn_release_files(rx_conn *c);

/* Queues len bytes of fd from offset behind everything queued. Returns 0 or -ENOMEM (fd is then
 * still the caller's). */
RX_INTERNAL int rx_conn_queue_file(rx_conn *c, int fd, off_t offset, size_t len);

/* Connector side (connector.c). */
RX_INTERNAL void rx_connect_on_event(rx_conn *c, uint32_t ready);
RX_INTERNAL void rx_connect_release(rx_conn *c);

/* Server side (server.c): the connection is being released. */
RX_INTERNAL void rx_server_conn_released(struct rx_server_shard *sh, rx_conn *c);

#endif
