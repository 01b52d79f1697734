/* rx_timer: one-shot and repeating monotonic timers with millisecond resolution (a min-heap).
 * A timer belongs to its loop's thread: call these functions only there (debug builds abort with
 * a message otherwise); from another thread, post a task to the loop. */
#ifndef RX_TIMER_H
#define RX_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_timer rx_timer;

typedef void (*rx_timer_fn)(rx_timer *timer, void *arg);

/* Creates a stopped timer. The loop owns the memory until rx_timer_free (or rx_loop_free).
 * Returns NULL and sets errno (ENOMEM). */
rx_timer *rx_timer_new(rx_loop *loop, rx_timer_fn cb, void *arg);

/* (Re)starts the timer: cb runs once timeout_ms have passed since the loop's cached time, then
 * every repeat_ms if repeat_ms > 0. A timer that is due now runs on the next iteration, never from
 * inside this call. O(log n). Returns 0 or -ENOMEM (the timer is left stopped then). */
int rx_timer_start(rx_timer *timer, uint64_t timeout_ms, uint64_t repeat_ms);

/* Stops the timer; safe from any callback, including its own. O(log n). No-op when stopped. */
void rx_timer_stop(rx_timer *timer);

bool rx_timer_active(const rx_timer *timer);

/* Stops and releases the timer; safe from any callback, including its own (the memory is then
 * released at the end of the iteration). */
void rx_timer_free(rx_timer *timer);

#ifdef __cplusplus
}
#endif

#endif
