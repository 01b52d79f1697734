/* rx_work_pool: a fixed set of threads taking requests from one locked FIFO. A request travels
 * back to its loop as a posted task that is the request itself, so finishing one never allocates
 * and cannot fail on a pool thread. Until it finishes, a request also sits in its loop's list of
 * unfinished work, where rx_loop_free finds it; and until its done has run it holds a reference on
 * its pool, so a cancel stays safe after the pool was freed.
 *
 * Locks: pool->lock, then a loop's post_lock inside it, never the other way round. */
#include <rx/work.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>

#include "loop_internal.h"

enum work_state { W_QUEUED, W_RUNNING, W_FINISHED };

struct rx_work {
    struct rx_task task; /* first: the completion posted to the loop, which frees it (post.c) */
    rx_work_pool *pool;
    rx_loop *loop;
    rx_work_fn work;
    rx_work_done_fn done;
    void *arg;
    enum work_state state;  /* under pool->lock */
    bool cancelled;         /* finished without running; under pool->lock */
    rx_work *next, *prev;   /* the pool's queue, while W_QUEUED */
    rx_work *lnext, *lprev; /* the loop's unfinished requests (loop->work), under its post_lock */
};

struct rx_work_pool {
    pthread_mutex_t lock;
    pthread_cond_t has_work; /* a request was queued, or the pool stops */
    pthread_cond_t finished; /* a running request finished (rx_work_settle waits for it) */
    rx_work *head, *tail;    /* queued requests, oldest first */
    unsigned nqueued, max_queued;
    bool stopping;
    unsigned nthreads;
    pthread_t *threads;
    atomic_uint refs; /* the owner's, plus one per request whose done has not run */
};

#define DEFAULT_THREADS 4
#define DEFAULT_MAX_QUEUED 1024
#define MAX_THREADS 1024

static void pool_unref(rx_work_pool *pool) {
    if (atomic_fetch_sub_explicit(&pool->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_cond_destroy(&pool->finished);
    pthread_cond_destroy(&pool->has_work);
    pthread_mutex_destroy(&pool->lock);
    rx_sys.free(pool->threads);
    rx_sys.free(pool);
}

/* The posted completion, run by the loop (or dropped into by rx_loop_free): the one place done
 * runs. post.c frees the request afterwards. */
static void deliver(void *arg) {
    rx_work *r = arg;
    rx_work_pool *pool = r->pool;
    if (r->done)
        r->done(r->arg, r->cancelled ? -ECANCELED : 0);
    pool_unref(pool);
}

static void dequeue(rx_work_pool *pool, rx_work *r) {
    *(r->prev ? &r->prev->next : &pool->head) = r->next;
    *(r->next ? &r->next->prev : &pool->tail) = r->prev;
    pool->nqueued--;
}

/* Ends a queued or running request and posts its completion; pool->lock held. The wake-up is
 * written under the loop's post_lock: once that is released rx_loop_free may find the loop's list
 * empty and free the loop, so nothing here may touch the loop after it. */
static void finish_locked(rx_work *r, bool cancelled) {
    rx_loop *loop = r->loop;
    r->state = W_FINISHED;
    r->cancelled = cancelled;
    pthread_mutex_lock(&loop->post_lock);
    *(r->lprev ? &r->lprev->lnext : &loop->work) = r->lnext;
    if (r->lnext)
        r->lnext->lprev = r->lprev;
    if (rx_post_append_locked(loop, &r->task))
        rx_post_write_wake(loop);
    pthread_mutex_unlock(&loop->post_lock);
}

static void *pool_thread(void *arg) {
    rx_work_pool *pool = arg;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->head && !pool->stopping)
            pthread_cond_wait(&pool->has_work, &pool->lock);
        rx_work *r = pool->head;
        if (!r)
            break; /* stopping, and rx_work_pool_free cancelled whatever was queued */
        dequeue(pool, r);
        r->state = W_RUNNING;
        pthread_mutex_unlock(&pool->lock);
        r->work(r->arg);
        pthread_mutex_lock(&pool->lock);
        finish_locked(r, false);
        pthread_cond_broadcast(&pool->finished);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

/* Stops the threads (the first n of them exist) and drops the owner's reference. */
static void pool_stop(rx_work_pool *pool, unsigned n) {
    pthread_mutex_lock(&pool->lock);
    pool->stopping = true;
    while (pool->head) {
        rx_work *r = pool->head;
        dequeue(pool, r);
        finish_locked(r, true);
    }
    pthread_cond_broadcast(&pool->has_work);
    pthread_mutex_unlock(&pool->lock);
    for (unsigned i = 0; i < n; i++)
        pthread_join(pool->threads[i], NULL);
    pool_unref(pool);
}

rx_work_pool *rx_work_pool_new(const rx_work_pool_opts *opts) {
    unsigned threads = opts && opts->threads ? opts->threads : DEFAULT_THREADS;
    unsigned max_queued = opts && opts->max_queued ? opts->max_queued : DEFAULT_MAX_QUEUED;
    if (threads > MAX_THREADS) {
        errno = EINVAL;
        return NULL;
    }
    rx_work_pool *pool = rx_sys.calloc(1, sizeof(*pool));
    pthread_t *tids = rx_sys.calloc(threads, sizeof(*tids));
    if (!pool || !tids) {
        rx_sys.free(pool);
        rx_sys.free(tids);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->has_work, NULL);
    pthread_cond_init(&pool->finished, NULL);
    pool->max_queued = max_queued;
    pool->threads = tids;
    atomic_init(&pool->refs, 1);
    /* The threads start with every signal blocked, so a signal meant for a loop's watcher (or the
     * application) is never delivered to a pool thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = 0;
    for (; pool->nthreads < threads; pool->nthreads++) {
        rc = pthread_create(&tids[pool->nthreads], NULL, pool_thread, pool);
        if (rc != 0)
            break;
        char name[16];
        snprintf(name, sizeof(name), "rx-work-%u", pool->nthreads);
        pthread_setname_np(tids[pool->nthreads], name);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pool_stop(pool, pool->nthreads);
        errno = rc;
        return NULL;
    }
    return pool;
}

void rx_work_pool_free(rx_work_pool *pool) {
    if (pool)
        pool_stop(pool, pool->nthreads);
}

unsigned rx_work_pool_threads(const rx_work_pool *pool) { return pool->nthreads; }

int rx_work_submit(rx_work_pool *pool, rx_loop *loop, rx_work_fn work, rx_work_done_fn done,
                   void *arg, rx_work **req) {
    if (!pool || !loop || !work)
        return -EINVAL;
    rx_work *r = rx_sys.malloc(sizeof(*r));
    if (!r)
        return -ENOMEM;
    *r = (rx_work){
        .task = {.fn = deliver, .drop = deliver, .arg = r},
        .pool = pool,
        .loop = loop,
        .work = work,
        .done = done,
        .arg = arg,
        .state = W_QUEUED,
    };
    pthread_mutex_lock(&pool->lock);
    int rc = pool->stopping ? -ESHUTDOWN : pool->nqueued >= pool->max_queued ? -EAGAIN : 0;
    if (rc == 0) {
        atomic_fetch_add_explicit(&pool->refs, 1, memory_order_relaxed);
        r->prev = pool->tail;
        *(pool->tail ? &pool->tail->next : &pool->head) = r;
        pool->tail = r;
        pool->nqueued++;
        pthread_mutex_lock(&loop->post_lock);
        r->lnext = loop->work;
        if (loop->work)
            loop->work->lprev = r;
        loop->work = r;
        pthread_mutex_unlock(&loop->post_lock);
        if (req)
            *req = r;
        pthread_cond_signal(&pool->has_work);
    }
    pthread_mutex_unlock(&pool->lock);
    if (rc < 0)
        rx_sys.free(r);
    return rc;
}

int rx_work_cancel(rx_work *r) {
    RX_LOOP_THREAD(r->loop);
    /* The pool is alive even if it was freed: r holds a reference until its done has run. */
    rx_work_pool *pool = r->pool;
    pthread_mutex_lock(&pool->lock);
    int rc = r->state == W_QUEUED ? 0 : r->cancelled ? -EALREADY : -EBUSY;
    if (rc == 0) {
        dequeue(pool, r);
        finish_locked(r, true);
    }
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

void rx_work_settle(rx_loop *loop) {
    for (;;) {
        pthread_mutex_lock(&loop->post_lock);
        rx_work *r = loop->work;
        pthread_mutex_unlock(&loop->post_lock);
        if (!r)
            return;
        /* r stays allocated, and keeps its pool alive, until this thread runs its completion. */
        rx_work_pool *pool = r->pool;
        pthread_mutex_lock(&pool->lock);
        if (r->state == W_QUEUED) {
            dequeue(pool, r);
            finish_locked(r, true);
        }
        while (r->state == W_RUNNING)
            pthread_cond_wait(&pool->finished, &pool->lock);
        pthread_mutex_unlock(&pool->lock);
    }
}
