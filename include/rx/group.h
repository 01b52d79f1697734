/* rx_loop_group: N loops, each run by a thread of its own (rx-loop-0, rx-loop-1, ...), created,
 * started, stopped and joined as one object; a server spreads its connections over them. */
#ifndef RX_GROUP_H
#define RX_GROUP_H

#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_loop_group rx_loop_group;

/* How a loop is chosen for a new connection. */
typedef enum rx_pick {
    RX_PICK_ROUND_ROBIN, /* each loop in turn */
    RX_PICK_LEAST_CONNS, /* the loop with the fewest connections now (ties: the lowest index) */
} rx_pick;

/* Creates n loops (0: one per CPU this process may run on) and no thread yet: set the loops up
 * (servers, timers, signal watchers) from this thread, then rx_loop_group_start. The caller owns
 * the group. Returns NULL and sets errno (ENOMEM, or what rx_loop_new failed with). */
rx_loop_group *rx_loop_group_new(unsigned n);

unsigned rx_loop_group_size(const rx_loop_group *g);

/* Loop i (0 <= i < size): it belongs to its thread once the group started. */
rx_loop *rx_loop_group_loop(const rx_loop_group *g, unsigned i);

/* Chooses a loop for a new connection. Any thread. */
rx_loop *rx_loop_group_pick(rx_loop_group *g, rx_pick how);

/* Starts one thread per loop, each running rx_loop_run. Returns 0, -EALREADY, or the errno of a
 * failed pthread_create (the threads already started are stopped and joined then). */
int rx_loop_group_start(rx_loop_group *g);

/* Makes every loop's rx_loop_run return after its current iteration. Any thread, any callback. */
void rx_loop_group_stop(rx_loop_group *g);

/* Waits for every thread to end. Not from a thread of the group. Returns 0, or the first
 * negative errno an rx_loop_run returned. */
int rx_loop_group_join(rx_loop_group *g);

/* Stops and joins the threads if they still run, then frees every loop (rx_loop_free). Free the
 * servers first. Not from a thread of the group. */
void rx_loop_group_free(rx_loop_group *g);

#ifdef __cplusplus
}
#endif

#endif
