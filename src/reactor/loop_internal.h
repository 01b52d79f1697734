/* State shared by the reactor's files: the loop struct and the objects it tracks. Private. */
#ifndef RX_LOOP_INTERNAL_H
#define RX_LOOP_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

#include <rx/channel.h>
#include <rx/loop.h>
#include <rx/signal.h>
#include <rx/timer.h>

#include "channel_internal.h"
#include "scratch.h"
#include "sys.h"

struct rx_channel {
    rx_loop *loop;
    int fd;
    uint32_t flags;
    uint8_t interest;
    bool registered; /* in the epoll set */
    bool closed;     /* close requested; pending events are dropped */
    bool deferred;   /* in the loop's deferred list (rx_channel_defer) */
    rx_channel_fn cb;
    void *arg;
    rx_task_fn destructor;
    /* Doubly linked list of live channels, so rx_loop_free can release them; a closed channel
     * moves to the loop's singly linked graveyard until the end of the iteration. */
    rx_channel *prev, *next;
    rx_channel *defer_next;
};

struct rx_timer {
    rx_loop *loop;
    rx_timer_fn cb;
    void *arg;
    uint64_t due_ms;
    uint64_t repeat_ms;
    uint64_t seq;          /* start order: ties on due_ms fire in the order they were started */
    size_t heap_index;     /* position in loop->timers, or RX_TIMER_IDLE */
    rx_timer *prev, *next; /* every timer of the loop, running or not, for rx_loop_free */
    rx_timer *next_dead;   /* graveyard link */
};

#define RX_TIMER_IDLE ((size_t)-1)

/* Channel flag of the loop's own fds (wake-up eventfd, signalfd): not counted as user events,
 * released last by rx_loop_free. */
#define RX_CHANNEL_INTERNAL (1u << 31)
/* Channel flag: the allocation holds the owner's object too (rx_channel_new_owner). */
#define RX_CHANNEL_OWNER_MEM (1u << 30)

struct rx_task {
    rx_task_fn fn;
    rx_task_fn drop; /* called instead of fn when the loop is freed first; may be NULL */
    void *arg;
    struct rx_task *next;
};

struct rx_hook {
    rx_task_fn fn;
    void *arg;
};

#define RX_MAX_EVENTS 512

struct rx_loop {
    int epfd;
    /* The thread running rx_loop_run / rx_loop_run_once, while `owned` (written before it,
     * release; read after it, acquire): what the loop-thread checks compare against. */
    pthread_t owner;
    atomic_bool owned;
    atomic_uint conns; /* connections living here; written by the loop's thread only */
    struct epoll_event evbuf[RX_MAX_EVENTS];
    bool running; /* inside rx_loop_run_once: frees are deferred */
    atomic_bool stop;
    uint64_t now_ns;
    uint64_t now_ms;
    uint64_t iterations;
    uint64_t events;

    rx_channel *channels;  /* live channels */
    rx_channel *graveyard; /* closed, released at the end of the iteration */
    rx_channel *reaping;   /* taken off the graveyard, its destructor running */
    /* Channels asking for an RX_DEFERRED call before the next poll, in the order they asked;
     * those asking during the pass (`deferring`) wait in deferred_later for the next one. */
    struct rx_defer_list {
        rx_channel *head, *tail;
    } deferred, deferred_later;
    bool deferring;

    /* Timers: a binary min-heap ordered by (due_ms, seq). */
    rx_timer **timers;
    rx_timer *all_timers;
    size_t ntimers, timers_cap;
    uint64_t timer_seq;
    uint64_t timer_seq_limit; /* timer_seq when the current iteration's poll returned */
    rx_timer *dead_timers;    /* freed during an iteration, released at its end */

    /* Hooks run before each poll. Removal during the hook pass only clears fn, compacted after. */
    struct rx_hook *hooks;
    size_t nhooks, hooks_cap;
    bool hooks_dirty;

    /* Posted tasks: a locked FIFO plus an eventfd to wake epoll_wait. */
    pthread_mutex_t post_lock;
    struct rx_task *post_head, *post_tail;
    /* The eventfd was written and the queue not yet taken. Written under post_lock; read without
     * it by rx_post_run, which alone clears it (with the queue), so false means nothing queued. */
    atomic_bool wake_pending;
    int wakefd;
    rx_channel *wake_channel;
    /* Work requests for this loop that are queued or running in some pool (work.c), under
     * post_lock: rx_loop_free settles them. */
    struct rx_work *work;

    /* Buffers lent to one connection at a time (scratch.h). */
    char *scratch[RX_SCRATCH_KINDS];

    /* Signals: one signalfd for every watched signal. */
    struct rx_signal_state *signals;
};

/* Timers (timer.c). */
RX_INTERNAL int rx_timer_next_timeout(rx_loop *loop); /* ms until the nearest timer, -1 when none */
RX_INTERNAL void rx_timer_run_due(rx_loop *loop);
RX_INTERNAL void rx_timer_free_all(rx_loop *loop);
RX_INTERNAL void rx_timer_reap(rx_loop *loop);

/* Channels (channel.c): release the closed ones; run the deferred calls asked for so far (those
 * asked for meanwhile wait for the next pass); close every live channel with or without the
 * RX_CHANNEL_INTERNAL flag. */
RX_INTERNAL void rx_channel_reap(rx_loop *loop);
RX_INTERNAL void rx_channel_run_deferred(rx_loop *loop);
RX_INTERNAL void rx_channel_close_all(rx_loop *loop, bool internal);

/* Posted tasks (post.c). */
RX_INTERNAL int rx_post_init(rx_loop *loop);
RX_INTERNAL void rx_post_run(rx_loop *loop);
RX_INTERNAL void rx_post_wake(rx_loop *loop);
RX_INTERNAL void rx_post_write_wake(rx_loop *loop);
/* Appends a task whose memory the queue takes over (freed with rx_sys.free once run or dropped),
 * post_lock held. Returns true when the caller must wake the loop (rx_post_write_wake). */
RX_INTERNAL bool rx_post_append_locked(rx_loop *loop, struct rx_task *task);
RX_INTERNAL void rx_post_free(rx_loop *loop);

/* Work (work.c): cancels this loop's queued requests and waits for its running ones, so that
 * every completion is in the post queue; called by rx_post_free until nothing is left. */
RX_INTERNAL void rx_work_settle(rx_loop *loop);

/* Signals (signal.c). rx_signal_free_all takes the loop out of the process-wide registry of
 * watching loops, after which no other loop forwards (posts) to it: call it before rx_post_free. */
RX_INTERNAL void rx_signal_free_all(rx_loop *loop);

#endif
