/* The rx_conn struct and the hooks the server and connector use. Private to src/tcp. */
#ifndef RX_CONN_INTERNAL_H
#define RX_CONN_INTERNAL_H

#include <rx/channel.h>
#include <rx/conn.h>
#include <rx/timer.h>

#include "sys.h"

/* A file range queued with rx_conn_sendfile; `before` counts the buffered bytes between the
 * previous range (or the queue head) and this one. */
struct rx_file_seg {
    int fd;
    off_t offset;
    size_t len;
    size_t before;
};

struct rx_connect_state;

struct rx_conn {
    rx_loop *loop;
    rx_channel *ch;
    int fd;
    rx_conn_state state;
    const rx_conn_callbacks *cbs;
    void *arg;
    rx_buffer in, out;

    struct rx_file_seg *segs; /* ring of queued file ranges */
    size_t seg_head, nsegs, segs_cap;
    size_t seg_before; /* sum of `before` over queued ranges */
    size_t file_bytes; /* sum of `len` over queued ranges */

    size_t high_water, low_water;
    bool above_high;
    bool owe_low, owe_drain; /* callbacks due that could not run where they became due */
    bool waiting_write;      /* output is queued and EPOLLOUT is watched */
    bool read_paused;
    bool in_data;      /* inside on_data: appended output waits for the callback to return */
    bool shut_pending; /* rx_conn_shutdown asked; done once the queue is written */
    bool write_shut;
    bool peer_eof;
    bool lingering; /* closing: our side is shut, reading to the peer's end of stream */
    bool edge;      /* rx_conn_opts switches, see conn.h */
    bool own_buffers;
    bool always_queue;

    uint64_t idle_ms, last_active;
    rx_timer *idle; /* idle timeout, then the lingering close's limit */
    rx_timer *kick; /* hands buffered input to on_data after a resume */

    rx_close_reason reason; /* why it is closing / closed */
    int err;
    unsigned long long bytes_in, bytes_out;

    /* Server bookkeeping: called once when the connection is released, before on_close. */
    void (*owner_release)(rx_conn *c, void *owner);
    void *owner;
    rx_conn *owner_prev, *owner_next;

    struct rx_connect_state *connect; /* connector attempt state while connecting */
};

/* Wraps fd in a connection in the given state (RX_CONN_OPEN or RX_CONN_CONNECTING). */
RX_INTERNAL rx_conn *rx_conn_create(rx_loop *loop, int fd, rx_conn_state state,
                                    const rx_conn_opts *opts, const rx_conn_callbacks *cbs,
                                    void *arg);

/* Moves a connecting connection to a new socket (a retry); the old one is closed. */
RX_INTERNAL int rx_conn_replace_fd(rx_conn *c, int fd);

/* The connect finished: RX_CONN_OPEN, read interest, on_open, flush what was queued. */
RX_INTERNAL void rx_conn_established(rx_conn *c);

/* Closes now: fd closed, on_close owed at the end of the iteration. */
RX_INTERNAL void rx_conn_close_now(rx_conn *c, rx_close_reason reason, int err);

/* Whether sends are still accepted (not closing, write side not shut or about to be). */
RX_INTERNAL bool rx_conn_can_write(const rx_conn *c);

/* Output queue (conn_output.c): write as far as the socket takes it (0, or a negative errno),
 * and release queued file ranges. */
RX_INTERNAL int rx_conn_write_queue(rx_conn *c);
RX_INTERNAL void rx_conn_release_files(rx_conn *c);

/* Connector side (connector.c). */
RX_INTERNAL void rx_connect_on_event(rx_conn *c, uint32_t ready);
RX_INTERNAL void rx_connect_release(rx_conn *c);

#endif
