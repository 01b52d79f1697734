/* rx_loop_group: loops and their threads as one object, and the choice of a loop for a new
 * connection. Each thread only runs its loop; everything else reaches a loop through its post
 * queue, so no lock is taken on any loop's hot path. */
#include <rx/group.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include "sys.h"

struct rx_loop_group {
    unsigned n;
    rx_loop **loops;
    pthread_t *threads;
    int *rcs; /* each thread's rx_loop_run result */
    bool started;
    atomic_uint next; /* round-robin cursor */
};

struct thread_start {
    rx_loop_group *g;
    unsigned i;
};

static unsigned cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    return 1;
}

rx_loop_group *rx_loop_group_new(unsigned n) {
    if (n == 0)
        n = cpu_count();
    rx_loop_group *g = rx_sys.calloc(1, sizeof(*g));
    if (!g || !(g->loops = rx_sys.calloc(n, sizeof(*g->loops))) ||
        !(g->threads = rx_sys.calloc(n, sizeof(*g->threads))) ||
        !(g->rcs = rx_sys.calloc(n, sizeof(*g->rcs)))) {
        rx_loop_group_free(g);
        errno = ENOMEM;
        return NULL;
    }
    atomic_init(&g->next, 0);
    for (g->n = 0; g->n < n; g->n++) {
        if (!(g->loops[g->n] = rx_loop_new())) {
            int err = errno;
            rx_loop_group_free(g);
            errno = err;
            return NULL;
        }
    }
    return g;
}

unsigned rx_loop_group_size(const rx_loop_group *g) { return g->n; }

rx_loop *rx_loop_group_loop(const rx_loop_group *g, unsigned i) {
    return i < g->n ? g->loops[i] : NULL;
}

rx_loop *rx_loop_group_pick(rx_loop_group *g, rx_pick how) {
    if (how == RX_PICK_LEAST_CONNS) {
        unsigned best = 0, least = rx_loop_conn_count(g->loops[0]);
        for (unsigned i = 1; i < g->n && least > 0; i++) {
            unsigned c = rx_loop_conn_count(g->loops[i]);
            if (c < least) {
                least = c;
                best = i;
            }
        }
        return g->loops[best];
    }
    return g->loops[atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed) % g->n];
}

static void *run_thread(void *arg) {
    struct thread_start *ts = arg;
    rx_loop_group *g = ts->g;
    unsigned i = ts->i;
    rx_sys.free(ts);
    char name[16];
    snprintf(name, sizeof(name), "rx-loop-%u", i);
    pthread_setname_np(pthread_self(), name);
    g->rcs[i] = rx_loop_run(g->loops[i]);
    return NULL;
}

/* Joins threads [0, n). */
static int join_first(rx_loop_group *g, unsigned n) {
    int rc = 0;
    for (unsigned i = 0; i < n; i++) {
        pthread_join(g->threads[i], NULL);
        if (rc == 0 && g->rcs[i] < 0)
            rc = g->rcs[i];
    }
    g->started = false;
    return rc;
}

int rx_loop_group_start(rx_loop_group *g) {
    if (g->started)
        return -EALREADY;
    for (unsigned i = 0; i < g->n; i++) {
        struct thread_start *ts = rx_sys.malloc(sizeof(*ts));
        int rc = ts ? 0 : ENOMEM;
        if (ts) {
            *ts = (struct thread_start){g, i};
            rc = pthread_create(&g->threads[i], NULL, run_thread, ts);
            if (rc != 0)
                rx_sys.free(ts);
        }
        if (rc != 0) {
            for (unsigned k = 0; k < i; k++)
                rx_loop_stop(g->loops[k]);
            join_first(g, i);
            return -rc;
        }
    }
    g->started = true;
    return 0;
}

void rx_loop_group_stop(rx_loop_group *g) {
    for (unsigned i = 0; i < g->n; i++)
        rx_loop_stop(g->loops[i]);
}

int rx_loop_group_join(rx_loop_group *g) { return g->started ? join_first(g, g->n) : 0; }

void rx_loop_group_free(rx_loop_group *g) {
    if (!g)
        return;
    if (g->started) {
        rx_loop_group_stop(g);
        rx_loop_group_join(g);
    }
    for (unsigned i = 0; i < g->n; i++)
        rx_loop_free(g->loops[i]);
    rx_sys.free(g->loops);
    rx_sys.free(g->threads);
    rx_sys.free(g->rcs);
    rx_sys.free(g);
}
