/* rx_signal: POSIX signals (SIGINT, SIGTERM, SIGHUP, ...) delivered as loop callbacks (signalfd).
 */
#ifndef RX_SIGNAL_H
#define RX_SIGNAL_H

#include <signal.h>

#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_signal rx_signal;

typedef void (*rx_signal_fn)(rx_signal *sig, int signo, void *arg);

/* Watches signo: blocks it in the calling thread's signal mask and reports each delivery as
 * cb(sig, signo, arg) on the loop. Block the signal before starting other threads, or in every
 * thread, so the kernel cannot deliver it elsewhere. Several watchers of one signal all run, also
 * on different loops of one thread. Standard signals only (real-time ones: EINVAL). The
 * loop owns the memory until rx_signal_free. Returns NULL and sets errno (EINVAL, ENOMEM, or an
 * errno from signalfd). */
rx_signal *rx_signal_new(rx_loop *loop, int signo, rx_signal_fn cb, void *arg);

/* Stops watching and releases the watcher; safe from any callback, including its own. When the
 * last watcher of a signal goes, the signal is unblocked again. */
void rx_signal_free(rx_signal *sig);

#ifdef __cplusplus
}
#endif

#endif
