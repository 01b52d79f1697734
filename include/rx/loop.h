/* rx_loop: one epoll event loop, run by one thread; the hub every other rx object hangs off. */
#ifndef RX_LOOP_H
#define RX_LOOP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_loop rx_loop;

/* A function the loop calls later with the pointer it was given. */
typedef void (*rx_task_fn)(void *arg);

/* Creates a loop (epoll fd, eventfd for wake-ups). Returns NULL and sets errno on failure.
 * The caller owns the loop and frees it with rx_loop_free. */
rx_loop *rx_loop_new(void);

/* Releases the loop and everything still registered on it: first channels (and their owned fds)
 * with their destructors (a connection's on_close runs here), then signal watchers, timers,
 * posted tasks that never ran, and last the loop's own fds. Work submitted for the loop
 * (rx/work.h) is settled with the posted tasks: queued requests are cancelled, running ones waited
 * for, and every done still due runs here (0 or -ECANCELED). A destructor may still call
 * rx_loop_post and rx_loop_stop (the task is then dropped unrun). Must not be called from
 * inside rx_loop_run. */
void rx_loop_free(rx_loop *loop);

/* Runs iterations until rx_loop_stop is called. Returns 0 after a stop, or a negative errno
 * if epoll_wait fails with anything but EINTR. */
int rx_loop_run(rx_loop *loop);

/* Runs one iteration: waits up to timeout_ms for events (-1: until an event or the nearest
 * timer; 0: do not block), then dispatches events, due timers, posted tasks and deferred frees.
 * A pending rx_loop_stop makes it not wait, and is consumed by it. Returns the number of fd
 * events dispatched, or a negative errno. */
int rx_loop_run_once(rx_loop *loop, int timeout_ms);

/* Makes rx_loop_run return after the current iteration (or after one iteration, when called while
 * the loop is not running). Safe from any thread and from any callback; wakes a blocked
 * epoll_wait. One stop ends one run: the next rx_loop_run or rx_loop_run_once waits as usual. */
void rx_loop_stop(rx_loop *loop);

/* Queues fn(arg) to run on the loop thread during a later iteration. Safe from any thread; wakes
 * a blocked epoll_wait. Tasks run in the order they were posted (per posting thread); a task
 * posted while tasks are running runs on the next pass. A task still queued when the loop is freed
 * is discarded silently: fn never runs and arg stays the caller's (see rx_loop_post_drop).
 * Returns 0, -EINVAL (fn NULL) or -ENOMEM. */
int rx_loop_post(rx_loop *loop, rx_task_fn fn, void *arg);

/* Like rx_loop_post, but exactly one of fn(arg) and drop(arg) runs: drop runs inside rx_loop_free
 * when the loop is freed before fn ran, so the task can release arg. drop may be NULL (then this
 * is rx_loop_post). On failure (-EINVAL, -ENOMEM) neither runs and arg stays the caller's. */
int rx_loop_post_drop(rx_loop *loop, rx_task_fn fn, rx_task_fn drop, void *arg);

/* Registers fn(arg) to run at the start of every iteration, before epoll_wait (the place where
 * upper layers flush output they batched). Loop thread only. Returns 0 or -ENOMEM. */
int rx_loop_add_hook(rx_loop *loop, rx_task_fn fn, void *arg);

/* Removes a hook registered with the same fn and arg. Safe from inside any callback, including
 * the hook itself. Returns 0, or -ENOENT if no such hook exists. */
int rx_loop_remove_hook(rx_loop *loop, rx_task_fn fn, void *arg);

/* Monotonic time cached at the start of the current iteration (after epoll_wait returns), in
 * milliseconds and nanoseconds. Cheap: no syscall. */
uint64_t rx_loop_now_ms(const rx_loop *loop);
uint64_t rx_loop_now_ns(const rx_loop *loop);

/* Refreshes the cached time now (for a callback that ran long). */
void rx_loop_update_time(rx_loop *loop);

/* Counters since creation: iterations run and fd events dispatched to channels. */
uint64_t rx_loop_iterations(const rx_loop *loop);
uint64_t rx_loop_events(const rx_loop *loop);

/* Connections (rx_conn) living on the loop now. Any thread (a snapshot). */
unsigned rx_loop_conn_count(const rx_loop *loop);

#ifdef __cplusplus
}
#endif

#endif
