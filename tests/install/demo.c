/* Install smoke test: a program that sees rx only through <rx/rx.h> (installed headers + rx.pc,
 * or rx as a Meson subproject). It starts a 10 ms timer and posts a task; the timer stops the
 * loop once the task has run. Prints "timer ran, task ran" and exits 0 only if both ran. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <rx/rx.h>

struct demo {
    rx_loop *loop;
    bool task_ran;
    bool timer_ran;
    int timer_fires;
};

static void on_task(void *arg) {
    struct demo *d = arg;
    d->task_ran = true;
}

static void on_timer(rx_timer *timer, void *arg) {
    struct demo *d = arg;
    d->timer_fires++;
    if (d->task_ran) {
        d->timer_ran = true;
        rx_loop_stop(d->loop);
    } else if (d->timer_fires >= 100) {
        /* The task never ran: give up after ~1 s instead of hanging. */
        rx_loop_stop(d->loop);
    } else if (rx_timer_start(timer, 10, 0) != 0) {
        rx_loop_stop(d->loop);
    }
}

int main(void) {
    struct demo d = {0};
    d.loop = rx_loop_new();
    if (!d.loop) {
        perror("rx_loop_new");
        return 1;
    }
    rx_timer *timer = rx_timer_new(d.loop, on_timer, &d);
    if (!timer) {
        perror("rx_timer_new");
        rx_loop_free(d.loop);
        return 1;
    }
    int rc = rx_timer_start(timer, 10, 0);
    if (rc == 0)
        rc = rx_loop_post(d.loop, on_task, &d);
    if (rc == 0)
        rc = rx_loop_run(d.loop);
    if (rc != 0)
        fprintf(stderr, "demo: %s\n", strerror(-rc));
    rx_timer_free(timer);
    rx_loop_free(d.loop);

    if (rc != 0 || !d.timer_ran || !d.task_ran) {
        fprintf(stderr, "demo: timer %s, task %s\n", d.timer_ran ? "ran" : "did not run",
                d.task_ran ? "ran" : "did not run");
        return 1;
    }
    printf("timer ran, task ran\n");
    return 0;
}
