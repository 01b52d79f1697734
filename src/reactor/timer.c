/* rx_timer: a binary min-heap of timers ordered by (due time, start order), so add and cancel are
 * O(log n) and the nearest timer gives the epoll_wait timeout. */
#include "loop_internal.h"

#include <errno.h>
#include <limits.h>

static bool earlier(const rx_timer *a, const rx_timer *b) {
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void place(rx_loop *loop, size_t i, rx_timer *t) {
    loop->timers[i] = t;
    t->heap_index = i;
}

static void sift_up(rx_loop *loop, size_t i) {
    rx_timer *t = loop->timers[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(t, loop->timers[parent]))
            break;
        place(loop, i, loop->timers[parent]);
        i = parent;
    }
    place(loop, i, t);
}

static void sift_down(rx_loop *loop, size_t i) {
    rx_timer *t = loop->timers[i];
    size_t n = loop->ntimers;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && earlier(loop->timers[child + 1], loop->timers[child]))
            child++;
        if (!earlier(loop->timers[child], t))
            break;
        place(loop, i, loop->timers[child]);
        i = child;
    }
    place(loop, i, t);
}

static void heap_remove(rx_loop *loop, rx_timer *t) {
    size_t i = t->heap_index;
    rx_timer *last = loop->timers[--loop->ntimers];
    t->heap_index = RX_TIMER_IDLE;
    if (last == t)
        return;
    place(loop, i, last);
    if (i > 0 && earlier(last, loop->timers[(i - 1) / 2]))
        sift_up(loop, i);
    else
        sift_down(loop, i);
}

/* Capacity must already be there. */
static void heap_push(rx_loop *loop, rx_timer *t) {
    size_t i = loop->ntimers++;
    place(loop, i, t);
    sift_up(loop, i);
}

static int heap_reserve(rx_loop *loop) {
    if (loop->ntimers < loop->timers_cap)
        return 0;
    size_t cap = loop->timers_cap ? loop->timers_cap * 2 : 64;
    if (cap > SIZE_MAX / sizeof(rx_timer *))
        return -ENOMEM;
    rx_timer **heap = rx_sys.realloc(loop->timers, cap * sizeof(*heap));
    if (!heap)
        return -ENOMEM;
    loop->timers = heap;
    loop->timers_cap = cap;
    return 0;
}

rx_timer *rx_timer_new(rx_loop *loop, rx_timer_fn cb, void *arg) {
    if (!cb) {
        errno = EINVAL;
        return NULL;
    }
    rx_timer *t = rx_sys.calloc(1, sizeof(*t));
    if (!t) {
        errno = ENOMEM;
        return NULL;
    }
    t->loop = loop;
    t->cb = cb;
    t->arg = arg;
    t->heap_index = RX_TIMER_IDLE;
    t->next = loop->all_timers;
    if (t->next)
        t->next->prev = t;
    loop->all_timers = t;
    return t;
}

int rx_timer_start(rx_timer *t, uint64_t timeout_ms, uint64_t repeat_ms) {
    rx_loop *loop = t->loop;
    RX_LOOP_THREAD(loop);
    rx_timer_stop(t);
    int rc = heap_reserve(loop);
    if (rc < 0)
        return rc;
    uint64_t now = loop->now_ms;
    t->due_ms = timeout_ms > UINT64_MAX - now ? UINT64_MAX : now + timeout_ms;
    t->repeat_ms = repeat_ms;
    t->seq = loop->timer_seq++;
    heap_push(loop, t);
    return 0;
}

void rx_timer_stop(rx_timer *t) {
    if (t->heap_index != RX_TIMER_IDLE)
        heap_remove(t->loop, t);
}

bool rx_timer_active(const rx_timer *t) { return t->heap_index != RX_TIMER_IDLE; }

void rx_timer_free(rx_timer *t) {
    if (!t)
        return;
    rx_loop *loop = t->loop;
    rx_timer_stop(t);
    if (t->prev)
        t->prev->next = t->next;
    else
        loop->all_timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    /* Its own callback may still be on the stack: release at the end of the iteration. */
    if (loop->running) {
        t->next_dead = loop->dead_timers;
        loop->dead_timers = t;
    } else {
        rx_sys.free(t);
    }
}

int rx_timer_next_timeout(rx_loop *loop) {
    if (loop->ntimers == 0)
        return -1;
    uint64_t due = loop->timers[0]->due_ms;
    if (due <= loop->now_ms)
        return 0;
    uint64_t wait = due - loop->now_ms;
    return wait > INT_MAX ? INT_MAX : (int)wait;
}

void rx_timer_run_due(rx_loop *loop) {
    /* Timers started during this iteration carry seq >= limit: they wait for the next one even
     * when due now, so a zero timeout can never recurse. */
    uint64_t limit = loop->timer_seq_limit;
    while (loop->ntimers > 0) {
        rx_timer *t = loop->timers[0];
        if (t->due_ms > loop->now_ms || t->seq >= limit)
            break;
        heap_remove(loop, t);
        if (t->repeat_ms > 0) {
            /* Re-armed before the callback so the callback may stop it; the slot just freed
             * guarantees capacity. */
            t->due_ms = loop->now_ms + t->repeat_ms;
            t->seq = loop->timer_seq++;
            heap_push(loop, t);
        }
        t->cb(t, t->arg);
    }
}

void rx_timer_reap(rx_loop *loop) {
    while (loop->dead_timers) {
        rx_timer *t = loop->dead_timers;
        loop->dead_timers = t->next_dead;
        rx_sys.free(t);
    }
}

void rx_timer_free_all(rx_loop *loop) {
    while (loop->all_timers)
        rx_timer_free(loop->all_timers);
    rx_timer_reap(loop);
    rx_sys.free(loop->timers);
    loop->timers = NULL;
    loop->timers_cap = 0;
}
