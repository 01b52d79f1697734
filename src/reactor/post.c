/* Cross-thread post: a mutex-protected FIFO of tasks drained once per iteration, and an eventfd
 * that wakes epoll_wait. The eventfd is written only when no wake-up is already pending, so a
 * burst of posts costs one write. */
#include "loop_internal.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

static void on_wake(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    (void)arg;
    uint64_t count;
    while (read(rx_channel_fd(ch), &count, sizeof(count)) < 0 && errno == EINTR) {
    }
}

int rx_post_init(rx_loop *loop) {
    int rc = pthread_mutex_init(&loop->post_lock, NULL);
    if (rc != 0)
        return -rc;
    loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wakefd < 0)
        return -errno;
    loop->wake_channel =
        rx_channel_new(loop, loop->wakefd, RX_CHANNEL_OWNS_FD | RX_CHANNEL_INTERNAL, on_wake, NULL);
    if (!loop->wake_channel) {
        rc = -errno;
        close(loop->wakefd);
        loop->wakefd = -1;
        return rc;
    }
    return rx_channel_set_interest(loop->wake_channel, RX_READABLE);
}

void rx_post_write_wake(rx_loop *loop) {
    uint64_t one = 1;
    /* EAGAIN means the counter is saturated, which still wakes the loop. */
    while (write(loop->wakefd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
}

void rx_post_wake(rx_loop *loop) {
    pthread_mutex_lock(&loop->post_lock);
    bool need = !atomic_exchange(&loop->wake_pending, true);
    pthread_mutex_unlock(&loop->post_lock);
    if (need)
        rx_post_write_wake(loop);
}

bool rx_post_append_locked(rx_loop *loop, struct rx_task *task) {
    task->next = NULL;
    if (loop->post_tail)
        loop->post_tail->next = task;
    else
        loop->post_head = task;
    loop->post_tail = task;
    return !atomic_exchange(&loop->wake_pending, true);
}

int rx_loop_post(rx_loop *loop, rx_task_fn fn, void *arg) {
    return rx_loop_post_drop(loop, fn, NULL, arg);
}

int rx_loop_post_drop(rx_loop *loop, rx_task_fn fn, rx_task_fn drop, void *arg) {
    if (!fn)
        return -EINVAL;
    struct rx_task *task = rx_sys.malloc(sizeof(*task));
    if (!task)
        return -ENOMEM;
    task->fn = fn;
    task->drop = drop;
    task->arg = arg;
    pthread_mutex_lock(&loop->post_lock);
    bool need = rx_post_append_locked(loop, task);
    pthread_mutex_unlock(&loop->post_lock);
    if (need)
        rx_post_write_wake(loop);
    return 0;
}

void rx_post_run(rx_loop *loop) {
    /* Most iterations have nothing posted: no lock then. A post racing past this check finds the
     * flag set and the next poll returns at once for it. */
    if (!atomic_load_explicit(&loop->wake_pending, memory_order_acquire))
        return;
    /* Take the whole queue at once: tasks posted while these run go to a fresh queue and wait
     * for the next pass, so a task that re-posts itself cannot starve the loop. */
    pthread_mutex_lock(&loop->post_lock);
    struct rx_task *task = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    atomic_store(&loop->wake_pending, false);
    pthread_mutex_unlock(&loop->post_lock);
    while (task) {
        struct rx_task *next = task->next;
        task->fn(task->arg);
        rx_sys.free(task);
        task = next;
    }
}

void rx_post_free(rx_loop *loop) {
    if (loop->wakefd < 0)
        return; /* rx_post_init never got that far */
    /* A drop function may post again (handing its work on), or submit work: those tasks are
     * dropped too, until the queue stays empty. Work requests still unfinished are settled first
     * (cancelled, or waited for), which posts their completions here. */
    for (;;) {
        rx_work_settle(loop);
        /* Under the lock: work submitted by a drop function may finish on a pool thread now. */
        pthread_mutex_lock(&loop->post_lock);
        struct rx_task *task = loop->post_head;
        loop->post_head = loop->post_tail = NULL;
        pthread_mutex_unlock(&loop->post_lock);
        if (!task)
            break;
        while (task) {
            struct rx_task *next = task->next;
            if (task->drop)
                task->drop(task->arg);
            rx_sys.free(task);
            task = next;
        }
    }
    rx_channel_close(loop->wake_channel);
    pthread_mutex_destroy(&loop->post_lock);
}
