/* rx_listener: a listening socket that accepts in batches and survives running out of fds. A
 * listener belongs to its loop's thread: call these functions only there. */
#ifndef RX_LISTENER_H
#define RX_LISTENER_H

#include <stdbool.h>

#include <rx/addr.h>
#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_listener rx_listener;

/* Gets each accepted fd (non-blocking, close-on-exec), which it then owns, and the peer. */
typedef void (*rx_accept_fn)(rx_listener *l, int fd, const rx_addr *peer, void *arg);

typedef struct rx_listener_opts {
    int backlog;       /* listen(2) backlog; 0: SOMAXCONN */
    bool reuseport;    /* SO_REUSEPORT, to share the port between processes or loops */
    int accept_batch;  /* accept4 calls per wake-up at most, for fairness; 0: 64 */
    unsigned retry_ms; /* pause after EMFILE/ENFILE with no spare fd left; 0: 100 ms */
    /* Optional: called with the listener's arg after each connection shed for lack of fds (see
     * rx_listener_shed), e.g. to log a rate-limited warning. It may pause or free the listener. */
    void (*on_shed)(rx_listener *l, void *arg);
    /* Behind a layer-4 balancer (HAProxy's send-proxy): every connection starts with a PROXY
     * protocol header, v1 or v2, which the listener reads (and only it) before handing the fd on,
     * and the callback's peer is the client the header names (the socket's own peer for a LOCAL
     * or UNKNOWN header, a balancer's health check). A connection whose header is malformed, ends
     * early or is not complete within proxy_timeout_ms is closed and counted (rx_listener_refused).
     * Only for a port the balancer alone can reach: anyone else could claim any address. */
    bool proxy_protocol;
    unsigned proxy_timeout_ms; /* 0: 5000 */
} rx_listener_opts;

/* Binds and listens on addr (see rx_addr_parse; SO_REUSEADDR is always set; a stale unix
 * socket file is not removed). opts may be NULL. The caller owns the listener. Returns NULL and
 * sets errno: EINVAL for a malformed address, EADDRINUSE, EACCES, ENOMEM, ... */
rx_listener *rx_listener_new(rx_loop *loop, const char *addr, const rx_listener_opts *opts,
                             rx_accept_fn cb, void *arg);

/* Accepts on fd, a stream socket already bound and listening: one inherited from a master
 * process (rx_worker_listen_fds) or from systemd's socket activation. The listener owns fd from
 * the call on, also on failure (it is closed then); it sets O_NONBLOCK and FD_CLOEXEC on it.
 * opts' backlog and reuseport do not apply (the socket has them). Returns NULL and sets errno:
 * EBADF, ENOTSOCK, EINVAL (not a listening stream socket), ENOMEM, ... */
rx_listener *rx_listener_adopt(rx_loop *loop, int fd, const rx_listener_opts *opts, rx_accept_fn cb,
                               void *arg);

/* The bound address (with the port the kernel chose for port 0). */
const rx_addr *rx_listener_addr(const rx_listener *l);

/* Stops / resumes accepting; connections wait in the kernel backlog meanwhile. Pausing and the
 * error back-off (after ENOBUFS, ENOMEM, or EMFILE with no spare fd: retry_ms) are independent:
 * accepting happens only while neither holds. Resume during a back-off does not cut it short (the
 * retry timer resumes accepting when it ends), and a back-off ending while paused accepts nothing
 * until resume. */
void rx_listener_pause(rx_listener *l);
void rx_listener_resume(rx_listener *l);

/* Counters: connections accepted, and connections shed (accepted and closed at once, then
 * reported to on_shed) because the process was out of fds. */
unsigned long long rx_listener_accepted(const rx_listener *l);
unsigned long long rx_listener_shed(const rx_listener *l);

/* Connections closed for a missing, malformed or late PROXY header (proxy_protocol). */
unsigned long long rx_listener_refused(const rx_listener *l);

/* Closes the socket and releases the listener (and closes the connections still waiting for their
 * PROXY header); safe from any callback. A unix socket file is
 * removed (only if it is still the one this listener made). rx_loop_free releases a listener still
 * alive, after which its pointer is dangling. */
void rx_listener_free(rx_listener *l);

#ifdef __cplusplus
}
#endif

#endif
