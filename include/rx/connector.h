/* rx_connect: the client side: a non-blocking connect with a timeout and retries, giving an
 * ordinary rx_conn, which belongs to the loop's thread like any other (see conn.h). */
#ifndef RX_CONNECTOR_H
#define RX_CONNECTOR_H

#include <stdint.h>

#include <rx/conn.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_connect_opts {
    const char *addr;        /* where to connect, see rx_addr_parse */
    const char *bind;        /* optional local address to bind first ("127.0.0.2:0") */
    uint64_t timeout_ms;     /* per attempt; 0: none (the kernel's own limit) */
    unsigned retries;        /* further attempts after a failed one */
    uint64_t backoff_ms;     /* wait before the first retry, doubled each time; 0: 100 ms */
    uint64_t backoff_max_ms; /* cap of the wait; 0: 10 s */
    rx_conn_opts conn;       /* options of the connection once open */
    const rx_conn_callbacks *cbs;
    void *arg;
} rx_connect_opts;

/* Starts connecting and returns the connection in state RX_CONN_CONNECTING at once; data sent
 * meanwhile is queued. on_open runs when connected; when every attempt has failed, on_close runs
 * with RX_CLOSE_ERROR (err -ECONNREFUSED, ...) or RX_CLOSE_TIMEOUT (err -ETIMEDOUT). rx_conn_close
 * or rx_conn_abort cancel it. Returns NULL and sets errno for a bad address (EINVAL) or when no
 * socket can be made (EMFILE, ENOMEM, ...). A connection made here belongs to no server, so no
 * server's graceful stop reaches it: join it to a server's connection (rx/join.h: the server's
 * stop then closes the pair), or close it yourself when you stop the server. */
rx_conn *rx_connect(rx_loop *loop, const rx_connect_opts *opts);

#ifdef __cplusplus
}
#endif

#endif
