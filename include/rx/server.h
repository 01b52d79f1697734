/* rx_server: a listener plus the set of its connections, with limits and a graceful stop. */
#ifndef RX_SERVER_H
#define RX_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <rx/conn.h>
#include <rx/group.h>
#include <rx/listener.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_server rx_server;

/* How a server spreads connections over the loops of a group. */
typedef enum rx_spread {
    /* Main/sub reactor: one loop accepts and hands each fd to a loop of the group (by `pick`),
     * where the connection is created: balanced, one cross-thread hop per connection. */
    RX_SPREAD_HANDOFF,
    /* One SO_REUSEPORT listener per loop: the kernel spreads connections, no hop; connections
     * queued on a listener that closes are lost, and long-lived ones can pile up on one loop. */
    RX_SPREAD_REUSEPORT,
} rx_spread;

typedef struct rx_server_opts {
    const char *listen; /* address, see rx_addr_parse; unused with listen_fds */
    /* Optional: sockets already bound and listening (a master's, see rx_worker_listen_fds, or
     * systemd's) to accept on instead of binding `listen`: one without a group or with handoff,
     * one per loop with reuseport (else EINVAL). The server owns them from rx_server_new on, also
     * when it fails. */
    const int *listen_fds;
    unsigned nlisten_fds;
    rx_listener_opts listener;    /* backlog, SO_REUSEPORT, accept batch; its on_shed gets `arg` */
    rx_conn_opts conn;            /* per-connection marks, idle timeout, TCP options */
    size_t max_conns;             /* 0: no limit; over it new connections are closed at once */
    const rx_conn_callbacks *cbs; /* for every connection; must outlive the server */
    /* The server's context: on_open's arg, rx_server_arg, on_shed's arg. Not a connection's: a
     * connection starts with none (its arg is NULL until on_open calls rx_conn_set_arg). */
    void *arg;
    /* NULL: every connection lives on `loop`. Else they are spread over the group's loops, and
     * each connection's callbacks run on its own loop's thread (so must cbs and arg allow). */
    rx_loop_group *group;
    rx_spread spread; /* with a group: handoff (default) or reuseport */
    rx_pick pick;     /* handoff: how the loop of a new connection is chosen (round-robin) */
} rx_server_opts;

/* Starts listening and accepting. on_open runs for each accepted connection, on its loop. `loop`
 * accepts (handoff), and is where on_stopped runs; with a group it may be NULL (then the group's
 * loop 0) and the server must be made before rx_loop_group_start. The caller owns the server.
 * Returns NULL and sets errno (EINVAL, EADDRINUSE, ENOMEM, ...). */
rx_server *rx_server_new(rx_loop *loop, const rx_server_opts *opts);

const rx_addr *rx_server_addr(const rx_server *s);

/* rx_server_opts.arg. */
void *rx_server_arg(const rx_server *s);

/* The server that accepted c, from its on_open until its on_close returns; NULL for a connection
 * of rx_connect, or once the server was freed (rx_server_free). */
rx_server *rx_conn_server(const rx_conn *c);

/* Graceful stop: stops accepting now, lets open connections go on until they close or
 * deadline_ms passes, then closes the rest (queued output is still written; a connection that
 * cannot write it within another deadline_ms is aborted). on_stopped(arg) runs once no connection
 * is left, on the server's loop. Safe from any callback of the server's loop (with a group, every
 * loop does its part on its own thread). */
void rx_server_stop(rx_server *s, uint64_t deadline_ms, rx_task_fn on_stopped, void *arg);

/* Connections open now (each counts until its on_close returns), accepted since the start, and
 * shed since the start (accepted and closed at once because the process was out of fds: see
 * rx_listener_opts.on_shed). */
size_t rx_server_conn_count(const rx_server *s);
unsigned long long rx_server_accepted(const rx_server *s);
unsigned long long rx_server_shed(const rx_server *s);

/* Connections its listeners closed for a missing, malformed or late PROXY header (see
 * rx_listener_opts.proxy_protocol; the connection's peer address is the header's client). */
unsigned long long rx_server_refused(const rx_server *s);

/* Closes the listener and aborts every connection still open (their on_close runs with
 * RX_CLOSE_LOCAL at the end of the iteration, or at the next one outside rx_loop_run). Safe from
 * any callback. With a group: only once its threads have been joined. */
void rx_server_free(rx_server *s);

#ifdef __cplusplus
}
#endif

#endif
