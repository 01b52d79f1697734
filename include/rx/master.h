/* rx_master: a master process supervising N worker processes that share a TCP port (nginx's
 * process model). The master binds the listening sockets, one SO_REUSEPORT socket per worker (or
 * per worker loop), and keeps them open for its whole life; each worker is this program again
 * (its own executable, the argv given), which finds its sockets with rx_worker_listen_fds. A
 * worker that exits is restarted, with a back-off when it dies young; a reload starts new workers
 * on the same sockets and stops the old ones once the new ones are ready, so connections waiting
 * in a socket's queue are never lost. The master never serves; it runs one loop on one thread and
 * must not start threads of its own before rx_master_new (fork). */
#ifndef RX_MASTER_H
#define RX_MASTER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <rx/addr.h>
#include <rx/listener.h>
#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_master rx_master;

#define RX_MASTER_MAX_SOCKETS 1024

typedef enum rx_worker_event {
    RX_WORKER_STARTED,  /* forked: pid is known; the program is being executed */
    RX_WORKER_READY,    /* it called rx_worker_ready: it serves */
    RX_WORKER_STOPPING, /* asked to stop (SIGTERM): a reload replaced it, or the master stops */
    RX_WORKER_KILLED,   /* it did not stop (or get ready) in time: SIGKILL sent */
    RX_WORKER_EXITED,   /* reaped: status is its wait status */
    RX_WORKER_FAILED,   /* could not be started at all: err says why */
} rx_worker_event;

typedef struct rx_worker_info {
    rx_worker_event event;
    unsigned slot;       /* 0 .. workers-1: the sockets it serves */
    unsigned generation; /* 0 at the start, one more for each reload */
    pid_t pid;           /* 0 for RX_WORKER_FAILED */
    int status;          /* RX_WORKER_EXITED: the wait status (WIFEXITED, WEXITSTATUS, ...) */
    int err;             /* RX_WORKER_FAILED: a negative errno */
    bool expected;       /* RX_WORKER_EXITED: it had been asked to stop */
    /* RX_WORKER_EXITED and RX_WORKER_FAILED: the replacement starts in this many ms; -1: none
     * (it was asked to stop, or a newer worker of its slot is serving). */
    int64_t restart_ms;
} rx_worker_info;

typedef struct rx_master_opts {
    const char *listen;        /* a TCP address (see rx_addr_parse); port 0 picks one for all */
    rx_listener_opts listener; /* backlog only */
    unsigned workers;          /* at least 1 */
    /* 0 or 1: one socket per worker; N (up to RX_MASTER_MAX_SOCKETS): one per loop of a worker
     * that spreads its connections by reuseport. */
    unsigned sockets_per_worker;
    /* The workers' argv (NULL-terminated; argv[0] is only their name): the program run is the
     * master's own executable. Not copied: it must outlive the master. */
    char *const *argv;
    uint64_t stop_timeout_ms;  /* a worker asked to stop is killed after this; 0: 30 s */
    uint64_t ready_timeout_ms; /* a worker not ready after this is killed; 0: 10 s */
    /* Back-off of a worker that dies within 1 s of its start: restarts wait from min to max ms,
     * doubling; 0, 0: 100 ms to 10 s. A worker that lived longer is restarted at once. */
    uint64_t backoff_min_ms, backoff_max_ms;
    /* Optional: each event of a worker's life, on the master's loop (to log it). */
    void (*on_worker)(rx_master *m, const rx_worker_info *info, void *arg);
    void *arg;
} rx_master_opts;

/* Binds the sockets and starts the workers (their events follow on the loop). Watches SIGCHLD on
 * loop (see rx_signal_new; the caller's other children are not reaped). The caller owns the
 * master. Returns NULL and sets errno: EINVAL (bad options, a unix address: EAFNOSUPPORT),
 * EADDRINUSE, ENOMEM, ... */
rx_master *rx_master_new(rx_loop *loop, const rx_master_opts *opts);

/* The address the workers serve (with the port the kernel chose for port 0). */
const rx_addr *rx_master_addr(const rx_master *m);

/* Starts a new generation of workers on the same sockets; each old worker is asked to stop
 * (SIGTERM, then its own graceful stop) once its replacement is ready. A replacement that exits
 * or is not ready in time leaves the old worker serving. Returns 0, or -ECANCELED once stopping. */
int rx_master_reload(rx_master *m);

/* Asks every worker to stop (SIGTERM; SIGKILL after stop_timeout_ms) and restarts none;
 * on_stopped(arg) runs on the loop once all have been reaped. Once only; later calls do nothing. */
void rx_master_stop(rx_master *m, rx_task_fn on_stopped, void *arg);

/* Workers alive now (any generation, stopping ones included). */
unsigned rx_master_alive(const rx_master *m);

/* Kills (SIGKILL) and reaps the workers still alive, closes the sockets, releases the master. */
void rx_master_free(rx_master *m);

/* ---- in a worker ---------------------------------------------------------------------------- */

/* This process's slot when a master started it, else -1. */
int rx_worker_slot(void);

/* The listening sockets this process inherited, from a master or from systemd's socket
 * activation (LISTEN_FDS, LISTEN_PID): up to max of them in fds, which the caller then owns.
 * Clears those variables, so that a program the caller starts does not take them for its own.
 * Returns how many (0: none), or -EINVAL when the variables are malformed. */
int rx_worker_listen_fds(int *fds, unsigned max);

/* Tells the master that this worker serves (once; a no-op without a master). Returns 0 or a
 * negative errno. */
int rx_worker_ready(void);

#ifdef __cplusplus
}
#endif

#endif
