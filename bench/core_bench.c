/* core_bench: the cost of rx's core reactor operations, side by side with libevent 2.1 in the
 * same process and run: timer add+cancel, posted task, empty iteration and ready-fd dispatch.
 * Each row prints the median, over K rounds, of nanoseconds per operation. Uses only the public
 * headers of both libraries. What each row measures and why: bench/README.md. */
#include <rx/rx.h>

#include <event2/event.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LIVE_TIMERS 10000 /* timers pending in the heap while one more is added and cancelled */
#define NTIMEOUTS 4096    /* pre-drawn random timeouts, so the RNG is not inside the timing */
#define POST_BATCH 1000   /* posts queued before each draining iteration */
#define NFDS 100          /* socketpairs with a byte pending, dispatched every iteration */
#define MAX_ROUNDS 1000

static unsigned rounds = 7;
static unsigned quick = 1; /* --quick divides the work per round by 10 */

static uint64_t timeouts_ms[NTIMEOUTS];

static void die(const char *what) {
    fprintf(stderr, "core_bench: %s\n", what);
    exit(1);
}

static uint64_t clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64: a fixed seed gives both libraries the very same timeouts, run after run. */
static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* 10 s .. 1000 s: spread out so new timers land all over the heap rather than always at the
 * bottom, and far enough away that none fires while the benchmark runs. */
static uint64_t random_timeout(uint64_t *s) { return 10000 + rng_next(s) % 990000; }

static struct timeval to_tv(uint64_t ms) {
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

/* Per-library state for one row; a row uses the fields it needs. */
struct rx_side {
    rx_loop *loop;
    rx_timer *timer;
    uint64_t count;
    unsigned ops;
};

struct ev_side {
    struct event_base *base;
    struct event *timer;
    struct event **extra; /* background timers, idle or ready fd events */
    size_t nextra;
    uint64_t count;
    unsigned ops;
};

typedef void (*round_fn)(void *side);

static void rx_timer_fired(rx_timer *t, void *arg) {
    (void)t;
    (void)arg;
    die("a background rx timer fired");
}

static void ev_noop(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    (void)arg;
}

static void ev_timer_fired(evutil_socket_t fd, short what, void *arg) {
    ev_noop(fd, what, arg);
    die("a background libevent timer fired");
}

static void rx_count_task(void *arg) { ((struct rx_side *)arg)->count++; }

static void ev_count_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    ((struct ev_side *)arg)->count++;
}

static void rx_count_ready(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    (void)ready;
    ((struct rx_side *)arg)->count++;
}

static struct rx_side rx_side_new(void) {
    struct rx_side s = {.loop = rx_loop_new()};
    if (!s.loop)
        die("rx_loop_new failed");
    return s;
}

static struct ev_side ev_side_new(size_t nextra) {
    struct ev_side s = {.base = event_base_new(), .nextra = nextra};
    s.extra = calloc(nextra ? nextra : 1, sizeof(*s.extra));
    if (!s.base || !s.extra)
        die("cannot create a libevent base");
    return s;
}

static void ev_side_free(struct ev_side *s) {
    for (size_t i = 0; i < s->nextra; i++)
        event_free(s->extra[i]);
    if (s->timer)
        event_free(s->timer);
    free(s->extra);
    event_base_free(s->base);
}

/* --- Row 1: timer add + cancel. The ops run inside a callback, where timers are armed in real
 * programs, so both libraries use their cached loop time (outside a callback libevent would read
 * the clock on every evtimer_add, which is not what servers pay). --- */

static void rx_timer_task(void *arg) {
    struct rx_side *s = arg;
    for (unsigned i = 0; i < s->ops; i++) {
        if (rx_timer_start(s->timer, timeouts_ms[i % NTIMEOUTS], 0) < 0)
            die("rx_timer_start failed");
        rx_timer_stop(s->timer);
    }
}

static void rx_timer_round(void *arg) {
    struct rx_side *s = arg;
    if (rx_loop_post(s->loop, rx_timer_task, s) < 0 || rx_loop_run_once(s->loop, 0) < 0)
        die("rx timer round failed");
}

static void ev_timer_task(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    struct ev_side *s = arg;
    for (unsigned i = 0; i < s->ops; i++) {
        struct timeval tv = to_tv(timeouts_ms[i % NTIMEOUTS]);
        if (evtimer_add(s->timer, &tv) < 0)
            die("evtimer_add failed");
        evtimer_del(s->timer);
    }
}

static void ev_timer_round(void *arg) {
    struct ev_side *s = arg;
    if (event_base_once(s->base, -1, EV_TIMEOUT, ev_timer_task, s, NULL) < 0 ||
        event_base_loop(s->base, EVLOOP_NONBLOCK | EVLOOP_ONCE) < 0)
        die("libevent timer round failed");
}

/* --- Row 2: posted task. libevent's closest equivalent of rx_loop_post is event_base_once with
 * EV_TIMEOUT and a NULL timeval: it allocates a one-shot event, makes it active at once (no timer
 * heap) and frees it after the callback, just as rx allocates, queues and frees a task. --- */

static void rx_post_round(void *arg) {
    struct rx_side *s = arg;
    for (unsigned done = 0; done < s->ops; done += POST_BATCH) {
        for (unsigned i = 0; i < POST_BATCH; i++)
            if (rx_loop_post(s->loop, rx_count_task, s) < 0)
                die("rx_loop_post failed");
        if (rx_loop_run_once(s->loop, 0) < 0)
            die("rx_loop_run_once failed");
    }
}

static void ev_post_round(void *arg) {
    struct ev_side *s = arg;
    for (unsigned done = 0; done < s->ops; done += POST_BATCH) {
        for (unsigned i = 0; i < POST_BATCH; i++)
            if (event_base_once(s->base, -1, EV_TIMEOUT, ev_count_cb, s, NULL) < 0)
                die("event_base_once failed");
        if (event_base_loop(s->base, EVLOOP_NONBLOCK | EVLOOP_ONCE) < 0)
            die("event_base_loop failed");
    }
}

/* --- Row 3: empty iteration. The return values are checked because libevent returns 1 without
 * polling when nothing is registered; the idle event added in row_empty keeps it honest. --- */

static void rx_empty_round(void *arg) {
    struct rx_side *s = arg;
    for (unsigned i = 0; i < s->ops; i++)
        if (rx_loop_run_once(s->loop, 0) != 0)
            die("rx empty iteration was not empty");
}

static void ev_empty_round(void *arg) {
    struct ev_side *s = arg;
    for (unsigned i = 0; i < s->ops; i++)
        if (event_base_loop(s->base, EVLOOP_NONBLOCK | EVLOOP_ONCE) != 0)
            die("libevent empty iteration did not poll");
}

/* --- Row 4: ready-fd dispatch, NFDS level-triggered fds per iteration, per dispatched event. */

static void rx_ready_round(void *arg) {
    struct rx_side *s = arg;
    for (unsigned i = 0; i < s->ops / NFDS; i++)
        if (rx_loop_run_once(s->loop, 0) != NFDS)
            die("rx did not dispatch every ready fd");
}

static void ev_ready_round(void *arg) {
    struct ev_side *s = arg;
    for (unsigned i = 0; i < s->ops / NFDS; i++)
        if (event_base_loop(s->base, EVLOOP_NONBLOCK | EVLOOP_ONCE) < 0)
            die("event_base_loop failed");
}

/* --- Runner --- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, unsigned n) {
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double time_round(round_fn fn, void *side, unsigned ops) {
    uint64_t t0 = clock_ns();
    fn(side);
    return (double)(clock_ns() - t0) / ops;
}

/* One warm-up round each (page faults, heap growth, libevent's epoll buffer growth, caches),
 * then rx and libevent rounds alternate so that drift in CPU clock or noise from neighbours hits
 * both columns alike. Checks the callback counts afterwards: a row that skipped work would
 * otherwise look fast. */
static void run_row(const char *name, unsigned ops, round_fn rx_fn, struct rx_side *rx,
                    round_fn ev_fn, struct ev_side *ev, int count_calls) {
    double t_rx[MAX_ROUNDS], t_ev[MAX_ROUNDS];
    rx->ops = ev->ops = ops;
    rx_fn(rx);
    ev_fn(ev);
    rx->count = ev->count = 0; /* libevent drops events while its epoll buffer grows in warm-up */
    for (unsigned k = 0; k < rounds; k++) {
        t_rx[k] = time_round(rx_fn, rx, ops);
        t_ev[k] = time_round(ev_fn, ev, ops);
    }
    uint64_t want = count_calls ? (uint64_t)ops * rounds : 0;
    if (rx->count != want || ev->count != want) {
        fprintf(stderr, "core_bench: %s: %llu rx / %llu libevent callbacks, expected %llu\n", name,
                (unsigned long long)rx->count, (unsigned long long)ev->count,
                (unsigned long long)want);
        exit(1);
    }
    double m_rx = median(t_rx, rounds), m_ev = median(t_ev, rounds);
    printf("%-36s %10.1f %14.1f %12.2f\n", name, m_rx, m_ev, m_rx / m_ev);
}

static void row_timer(void) {
    struct rx_side rx = rx_side_new();
    struct ev_side ev = ev_side_new(LIVE_TIMERS);
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < LIVE_TIMERS; i++) {
        uint64_t ms = random_timeout(&seed);
        struct timeval tv = to_tv(ms);
        rx_timer *t = rx_timer_new(rx.loop, rx_timer_fired, NULL);
        ev.extra[i] = evtimer_new(ev.base, ev_timer_fired, NULL);
        if (!t || !ev.extra[i] || rx_timer_start(t, ms, 0) < 0 || evtimer_add(ev.extra[i], &tv) < 0)
            die("cannot create the background timers");
    }
    for (size_t i = 0; i < NTIMEOUTS; i++)
        timeouts_ms[i] = random_timeout(&seed);
    rx.timer = rx_timer_new(rx.loop, rx_timer_fired, NULL);
    ev.timer = evtimer_new(ev.base, ev_timer_fired, NULL);
    if (!rx.timer || !ev.timer)
        die("cannot create the measured timer");
    run_row("timer add+cancel (10k live)", 2000000 / quick, rx_timer_round, &rx, ev_timer_round,
            &ev, 0);
    rx_loop_free(rx.loop);
    ev_side_free(&ev);
}

static void row_post(void) {
    struct rx_side rx = rx_side_new();
    struct ev_side ev = ev_side_new(0);
    run_row("posted task (batches of 1000)", 1000000 / quick, rx_post_round, &rx, ev_post_round,
            &ev, 1);
    rx_loop_free(rx.loop);
    ev_side_free(&ev);
}

static void row_empty(void) {
    struct rx_side rx = rx_side_new();
    /* One idle fd for libevent, the counterpart of the wake eventfd every rx loop watches:
     * without a registered event event_base_loop returns before epoll_wait. */
    struct ev_side ev = ev_side_new(1);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair failed");
    ev.extra[0] = event_new(ev.base, sv[0], EV_READ | EV_PERSIST, ev_noop, NULL);
    if (!ev.extra[0] || event_add(ev.extra[0], NULL) < 0)
        die("cannot add the idle libevent event");
    run_row("empty iteration", 100000 / quick, rx_empty_round, &rx, ev_empty_round, &ev, 0);
    rx_loop_free(rx.loop);
    ev_side_free(&ev);
    close(sv[0]);
    close(sv[1]);
}

static void row_ready(void) {
    struct rx_side rx = rx_side_new();
    struct ev_side ev = ev_side_new(NFDS);
    int pairs[NFDS][2];
    /* The same fds sit in both epoll sets: nothing is ever read or written during the row, so
     * neither library disturbs the other's readiness. */
    for (int i = 0; i < NFDS; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pairs[i]) < 0 ||
            write(pairs[i][1], "x", 1) != 1)
            die("cannot make a ready socketpair");
        rx_channel *ch = rx_channel_new(rx.loop, pairs[i][0], 0, rx_count_ready, &rx);
        ev.extra[i] = event_new(ev.base, pairs[i][0], EV_READ | EV_PERSIST, ev_count_cb, &ev);
        if (!ch || rx_channel_set_interest(ch, RX_READABLE) < 0 || !ev.extra[i] ||
            event_add(ev.extra[i], NULL) < 0)
            die("cannot watch a ready fd");
    }
    run_row("ready-fd dispatch (100 fds), /event", 200000 / quick, rx_ready_round, &rx,
            ev_ready_round, &ev, 1);
    rx_loop_free(rx.loop);
    ev_side_free(&ev);
    for (int i = 0; i < NFDS; i++) {
        close(pairs[i][0]);
        close(pairs[i][1]);
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: core_bench [--rounds N] [--quick]\n"
            "  --rounds N  measured rounds per row, median reported (default 7, max %d)\n"
            "  --quick     a tenth of the work per round (smoke test, noisier numbers)\n",
            MAX_ROUNDS);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > MAX_ROUNDS) {
                usage(stderr);
                return 2;
            }
            rounds = (unsigned)n;
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = 10;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    /* Same kernel mechanism on both sides, or the comparison means nothing. */
    struct event_base *probe = event_base_new();
    if (!probe)
        die("event_base_new failed");
    const char *method = event_base_get_method(probe);
    if (strcmp(method, "epoll") != 0)
        fprintf(stderr, "core_bench: warning: libevent uses %s, not epoll\n", method);
    printf("rx core vs libevent %s (%s): median of %u rounds, ns per operation\n\n",
           event_get_version(), method, rounds);
    event_base_free(probe);

    printf("%-36s %10s %14s %12s\n", "row", "rx ns/op", "libevent ns/op", "rx/libevent");
    row_timer();
    row_post();
    row_empty();
    row_ready();
    return 0;
}
