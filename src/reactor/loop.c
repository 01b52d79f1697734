/* rx_loop: creation, the iteration (hooks, poll, dispatch, timers, posted tasks, deferred frees),
 * run/stop and the cached clock. */
#include "loop_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

rx_loop *rx_loop_new(void) {
    rx_loop *loop = rx_sys.calloc(1, sizeof(*loop));
    if (!loop) {
        errno = ENOMEM;
        return NULL;
    }
    loop->wakefd = -1;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        int err = errno;
        rx_sys.free(loop);
        errno = err;
        return NULL;
    }
    atomic_init(&loop->stop, false);
    atomic_init(&loop->owned, false);
    atomic_init(&loop->conns, 0);
    atomic_init(&loop->wake_pending, false);
    rx_loop_update_time(loop);
    int rc = rx_post_init(loop);
    if (rc < 0) {
        rx_loop_free(loop);
        errno = -rc;
        return NULL;
    }
    return loop;
}

void rx_loop_free(rx_loop *loop) {
    if (!loop)
        return;
    loop->running = false;
    /* The objects users own first, while everything they may call from a destructor or on_close
     * (post, stop, timers) still works; the loop's own fds (wake-up, signals) last. */
    rx_channel_reap(loop);
    rx_channel_close_all(loop, false);
    rx_signal_free_all(loop);
    rx_timer_reap(loop);
    rx_timer_free_all(loop);
    rx_post_free(loop);
    rx_channel_close_all(loop, true);
    rx_sys.free(loop->hooks);
    for (int k = 0; k < RX_SCRATCH_KINDS; k++)
        rx_sys.free(loop->scratch[k]);
    close(loop->epfd);
    rx_sys.free(loop);
}

char *rx_loop_scratch(rx_loop *loop, int kind) {
    if (!loop->scratch[kind])
        loop->scratch[kind] = rx_sys.malloc(RX_SCRATCH_SIZE);
    return loop->scratch[kind];
}

void rx_loop_scratch_forget(rx_loop *loop, int kind) { loop->scratch[kind] = NULL; }

void rx_loop_update_time(rx_loop *loop) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    loop->now_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    loop->now_ms = loop->now_ns / 1000000u;
}

uint64_t rx_loop_now_ms(const rx_loop *loop) { return loop->now_ms; }
uint64_t rx_loop_now_ns(const rx_loop *loop) { return loop->now_ns; }
uint64_t rx_loop_iterations(const rx_loop *loop) { return loop->iterations; }
uint64_t rx_loop_events(const rx_loop *loop) { return loop->events; }

unsigned rx_loop_conn_count(const rx_loop *loop) {
    return atomic_load_explicit(&loop->conns, memory_order_relaxed);
}

/* Only the loop's thread writes: a plain load and store, no locked instruction per connection. */
void rx_loop_count_conn(rx_loop *loop, int delta) {
    unsigned n = atomic_load_explicit(&loop->conns, memory_order_relaxed);
    atomic_store_explicit(&loop->conns, n + (unsigned)delta, memory_order_relaxed);
}

void rx_loop_check_thread(const rx_loop *loop, const char *fn) {
    if (atomic_load_explicit(&loop->owned, memory_order_acquire) &&
        !pthread_equal(loop->owner, pthread_self())) {
        fprintf(stderr, "rx: %s called from a thread that does not run its loop\n", fn);
        abort();
    }
}

/* The calling thread runs the loop until release_thread. */
static void claim_thread(rx_loop *loop) {
    loop->owner = pthread_self();
    atomic_store_explicit(&loop->owned, true, memory_order_release);
}

static void release_thread(rx_loop *loop) {
    atomic_store_explicit(&loop->owned, false, memory_order_release);
}

int rx_loop_add_hook(rx_loop *loop, rx_task_fn fn, void *arg) {
    RX_LOOP_THREAD(loop);
    if (!fn)
        return -EINVAL;
    if (loop->nhooks == loop->hooks_cap) {
        size_t cap = loop->hooks_cap ? loop->hooks_cap * 2 : 4;
        struct rx_hook *h = rx_sys.realloc(loop->hooks, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        loop->hooks = h;
        loop->hooks_cap = cap;
    }
    loop->hooks[loop->nhooks++] = (struct rx_hook){fn, arg};
    return 0;
}

int rx_loop_remove_hook(rx_loop *loop, rx_task_fn fn, void *arg) {
    for (size_t i = 0; i < loop->nhooks; i++) {
        if (loop->hooks[i].fn == fn && loop->hooks[i].arg == arg) {
            /* The hook pass may be iterating the array: blank the slot, compact afterwards. */
            loop->hooks[i].fn = NULL;
            loop->hooks_dirty = true;
            return 0;
        }
    }
    return -ENOENT;
}

static void run_hooks(rx_loop *loop) {
    /* Hooks added during the pass wait for the next one. */
    size_t n = loop->nhooks;
    for (size_t i = 0; i < n; i++) {
        if (loop->hooks[i].fn)
            loop->hooks[i].fn(loop->hooks[i].arg);
    }
    if (loop->hooks_dirty) {
        size_t k = 0;
        for (size_t i = 0; i < loop->nhooks; i++) {
            if (loop->hooks[i].fn)
                loop->hooks[k++] = loop->hooks[i];
        }
        loop->nhooks = k;
        loop->hooks_dirty = false;
    }
}

/* Masked by the interest the channel has now: an earlier callback in the batch may have
 * narrowed it. */
static uint32_t ready_bits(uint32_t ev, uint32_t interest) {
    uint32_t ready = 0;
    if (ev & EPOLLIN)
        ready |= RX_READABLE;
    if (ev & EPOLLOUT)
        ready |= RX_WRITABLE;
    if (ev & (EPOLLRDHUP | EPOLLHUP))
        ready |= RX_HUP;
    if (ev & EPOLLERR)
        ready |= RX_ERROR;
    /* Errors and hang-ups surface through the read or write the owner would do anyway. */
    if (ev & (EPOLLERR | EPOLLHUP))
        ready |= RX_READABLE | RX_WRITABLE;
    return ready & (interest | RX_HUP | RX_ERROR);
}

static int dispatch(rx_loop *loop, int n) {
    int dispatched = 0;
    for (int i = 0; i < n; i++) {
        rx_channel *ch = loop->evbuf[i].data.ptr;
        /* A callback earlier in this batch may have closed it (its memory is ours until the end
         * of the iteration, so reading the flag is safe) or withdrawn its interest. */
        if (ch->closed || ch->interest == 0)
            continue;
        if (!(ch->flags & RX_CHANNEL_INTERNAL))
            dispatched++;
        ch->cb(ch, ready_bits(loop->evbuf[i].events, ch->interest), ch->arg);
    }
    loop->events += (uint64_t)dispatched;
    return dispatched;
}

/* One iteration. *stopped tells whether a stop was asked for (and is now consumed). */
static int iterate(rx_loop *loop, int timeout_ms, bool *stopped) {
    if (loop->running)
        return -EBUSY;
    loop->running = true;
    /* Fresh time for the timeout, so time spent since the last poll does not delay timers; a
     * clock read is a third of an empty iteration, so only when a timer can be delayed. */
    if (timeout_ms != 0 && loop->ntimers > 0)
        rx_loop_update_time(loop);
    if (loop->nhooks > 0)
        run_hooks(loop);
    if (loop->deferred.head)
        rx_channel_run_deferred(loop);

    int timeout = rx_timer_next_timeout(loop);
    if (timeout_ms >= 0 && (timeout < 0 || timeout > timeout_ms))
        timeout = timeout_ms;
    /* Work already owed (deferred calls asked for by the pass, releases owed from outside the
     * loop, a stop) must not wait for an event. */
    /* A plain load first: an atomic exchange on every iteration costs more than the check. */
    *stopped = atomic_load_explicit(&loop->stop, memory_order_relaxed) &&
               atomic_exchange(&loop->stop, false);
    if (*stopped || loop->deferred.head || loop->graveyard)
        timeout = 0;

    int n = epoll_wait(loop->epfd, loop->evbuf, RX_MAX_EVENTS, timeout);
    if (n < 0) {
        int err = errno;
        n = 0;
        if (err != EINTR) {
            loop->running = false;
            return -err;
        }
    }
    rx_loop_update_time(loop);
    loop->iterations++;
    /* Timers started from here on wait for the next iteration, even when due now. */
    loop->timer_seq_limit = loop->timer_seq;
    n = dispatch(loop, n);
    if (loop->ntimers > 0)
        rx_timer_run_due(loop);
    rx_post_run(loop);
    if (loop->graveyard)
        rx_channel_reap(loop);
    if (loop->dead_timers)
        rx_timer_reap(loop);
    loop->running = false;
    /* A stop asked for by this iteration's callbacks belongs to it too. */
    if (atomic_load_explicit(&loop->stop, memory_order_relaxed))
        *stopped = atomic_exchange(&loop->stop, false) || *stopped;
    return n;
}

int rx_loop_run_once(rx_loop *loop, int timeout_ms) {
    if (loop->running)
        return -EBUSY;
    bool stopped;
    claim_thread(loop);
    int rc = iterate(loop, timeout_ms, &stopped);
    release_thread(loop);
    return rc;
}

int rx_loop_run(rx_loop *loop) {
    if (loop->running)
        return -EBUSY;
    bool stopped = false;
    int rc;
    claim_thread(loop);
    do
        rc = iterate(loop, -1, &stopped);
    while (rc >= 0 && !stopped);
    release_thread(loop);
    return rc < 0 ? rc : 0;
}

void rx_loop_stop(rx_loop *loop) {
    atomic_store(&loop->stop, true);
    rx_post_wake(loop);
}
