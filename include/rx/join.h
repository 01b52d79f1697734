/* rx_conn_join: two connections of one loop joined into a two-way pipe, the heart of a proxy or a
 * tunnel. What one side reads is sent to the other, with backpressure both ways, half-closes
 * passed on, and one close policy for the pair. */
#ifndef RX_JOIN_H
#define RX_JOIN_H

#include <rx/conn.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How a joined pair ended, given to on_end once both connections have closed. Index 0 is the
 * first connection given to rx_conn_join (a), 1 the second (b). */
typedef struct rx_join_end {
    rx_close_reason reason[2];   /* each connection's on_close reason */
    int err[2];                  /* and its err (0 or a negative errno) */
    unsigned long long bytes[2]; /* bytes[0]: read from a and handed to b; bytes[1]: b to a */
    bool opened[2]; /* the connection was established: open at the join, or its connect completed
                       (false: a connect that failed, or was cut short) */
} rx_join_end;

typedef struct rx_join_opts {
    /* Runs once, after both connections have closed (from the second one's on_close, or in
     * rx_loop_free). May be NULL. */
    void (*on_end)(const rx_join_end *end, void *arg);
    void *arg;
} rx_join_opts;

/* Joins a and b, two connections of the same loop that are open or still connecting
 * (rx_connect: what a sends meanwhile is queued on b). From then on the join owns both
 * connections' callbacks and args (yours are no longer called; on_end says how it ended):
 *   - what a reads is sent to b and what b reads to a, written at once when the socket takes it
 *     and queued otherwise; input a or b had already buffered (read but not consumed) goes first;
 *   - backpressure: when b's queued output passes b's high-water mark, a stops reading until it
 *     falls to b's low-water mark (and the other way round), so memory stays bounded by the
 *     marks (plus what one read brings) whatever the speeds;
 *   - a's end of stream shuts b's write side once what a sent is written (and the other way
 *     round); once both directions ended, both connections close (RX_CLOSE_PEER);
 *   - when either connection closes before both directions ended: if it was reset
 *     (RX_CLOSE_RESET), the other is aborted, so the reset passes on; for any other reason (a
 *     failed connect, a timeout, a local close or a server's stop) the other is closed
 *     gracefully: what is queued for it is still written, then its peer sees the end of stream.
 * opts may be NULL (no on_end). Returns 0; -EINVAL (a or b NULL, a == b, or two loops); -EPIPE
 * when either is closing or closed; -EBUSY when either is joined already; -ENOMEM (nothing changes
 * on an error). Loop thread only. */
int rx_conn_join(rx_conn *a, rx_conn *b, const rx_join_opts *opts);

#ifdef __cplusplus
}
#endif

#endif
