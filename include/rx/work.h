/* rx_work_pool: threads for blocking work (opening or stat-ing a file, a DNS lookup, anything that
 * may sleep), so that no loop waits for it. work(arg) runs on a pool thread; done(arg, status) then
 * runs on the thread of the loop named at submit. One pool may serve any number of loops. */
#ifndef RX_WORK_H
#define RX_WORK_H

#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_work_pool rx_work_pool;

/* One submitted request: the handle for rx_work_cancel, valid until its done starts. */
typedef struct rx_work rx_work;

/* Runs on a pool thread. It must not touch the loop or anything registered on it. */
typedef void (*rx_work_fn)(void *arg);

/* Runs on the loop's thread once the request is over: status 0 when work ran, -ECANCELED when it
 * never will (cancelled, or its pool or loop was freed first). */
typedef void (*rx_work_done_fn)(void *arg, int status);

typedef struct rx_work_pool_opts {
    unsigned threads;    /* pool threads; 0: 4 */
    unsigned max_queued; /* requests waiting for a thread before submits fail; 0: 1024 */
} rx_work_pool_opts;

/* Creates a pool and starts its threads (named rx-work-K, every signal blocked). opts may be NULL
 * (the defaults). Returns NULL and sets errno (EINVAL for more than 1024 threads, ENOMEM, or
 * pthread_create's error). The caller owns the pool and frees it with rx_work_pool_free. */
rx_work_pool *rx_work_pool_new(const rx_work_pool_opts *opts);

/* Stops the pool: requests still queued are cancelled, running ones are waited for, and then the
 * threads are joined. Each of those requests' done runs later on its loop's thread as usual (with
 * -ECANCELED or 0), or inside rx_loop_free if its loop is freed first. Submits made meanwhile fail
 * with -ESHUTDOWN; once it returns the pool must not be used. Any thread but a pool thread. */
void rx_work_pool_free(rx_work_pool *pool);

/* The number of threads of the pool. */
unsigned rx_work_pool_threads(const rx_work_pool *pool);

/* Queues work(arg) for a pool thread; done(arg, status) (may be NULL) then runs on loop's thread,
 * in a later iteration, exactly once. Requests start in the order they were submitted. Any thread.
 * When req is not NULL it receives the request's handle. Returns 0, -EINVAL (a NULL pool, loop or
 * work), -EAGAIN (max_queued requests are waiting: nothing is queued, and the loop is not
 * blocked), -ESHUTDOWN (the pool is being freed) or -ENOMEM; on failure neither function runs. */
int rx_work_submit(rx_work_pool *pool, rx_loop *loop, rx_work_fn work, rx_work_done_fn done,
                   void *arg, rx_work **req);

/* Cancels a request whose work has not started: its done runs with -ECANCELED in a later iteration
 * (never inside this call). Returns 0, -EBUSY when the work runs or has run (done follows with 0),
 * or -EALREADY when it was cancelled before. Only on the request's loop thread, before its done
 * ran. */
int rx_work_cancel(rx_work *req);

#ifdef __cplusplus
}
#endif

#endif
