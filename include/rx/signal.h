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

/* What is guaranteed:
 * - Each delivery of a watched signal runs every live watcher of it in the process once, each on
 *   its own loop's thread, whatever the number of loops and threads: the loop that dequeues it runs
 *   its watchers and forwards it (rx_loop_post) to every other loop watching the signal.
 * - Deliveries a loop has not run yet coalesce, as pending standard signals do in the kernel. A
 *   forward that fails for lack of memory is lost for that loop only.
 * - Masks are per thread. rx blocks a watched signal in the thread that creates the watcher and
 *   unblocks it when the last watcher that thread created goes, unless it was blocked already.
 *   The kernel may deliver a process-directed signal (kill) to any thread that does not block it,
 *   where the default action runs: block it in every thread, simplest in main before starting
 *   any (rx then never unblocks it). A thread-directed one (raise, pthread_kill) can be dequeued
 *   only by a loop of that thread.
 * - One loop, one thread: a watcher freed on another thread than its creator's (also through
 *   rx_loop_free) cannot unblock the signal in the creator's thread; it stays blocked there. */

/* Watches signo on loop and reports each delivery as cb(sig, signo, arg) on the loop's thread;
 * blocks signo in the calling thread. Standard signals only (real-time ones: EINVAL). The loop
 * owns the memory until rx_signal_free. Returns NULL and sets errno (EINVAL, ENOMEM, or an errno
 * from signalfd). */
rx_signal *rx_signal_new(rx_loop *loop, int signo, rx_signal_fn cb, void *arg);

/* Stops watching and releases the watcher; safe from any callback, including its own. Call it on
 * the creating thread: the last watcher of signo that thread created unblocks signo there, if rx
 * blocked it. */
void rx_signal_free(rx_signal *sig);

#ifdef __cplusplus
}
#endif

#endif
