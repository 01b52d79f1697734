/* What rx-echo and rx-http share: number options, --threads and --spread, the life of a server on
 * a loop group (signals, stop, join), and --tune, the switches that turn one C10K technique off so
 * bench/run can measure what each is worth (docs/c10k.md). */
#ifndef RX_APPS_APP_H
#define RX_APPS_APP_H

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <rx/rx.h>

/* Parses a decimal count (digits only, no sign) up to max. Returns 0, or -1 when malformed. */
static inline int app_parse_count(const char *s, unsigned long long max, unsigned long long *out) {
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* A count flag from 0 (which means `zero`) to max. Returns 0, or -1 after printing why the value
 * is bad. */
static inline int app_parse_upto(const char *prog, const char *flag, const char *zero,
                                 const char *s, unsigned max, unsigned *out) {
    unsigned long long v;
    if (app_parse_count(s, max, &v) < 0) {
        fprintf(stderr, "%s: %s wants a count from 0 (%s) to %u, got '%s'\n", prog, flag, zero, max,
                s);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

/* Raises the soft limit of open files to the hard one, as nginx's worker_rlimit_nofile does: a
 * shell's usual soft limit of 1024 would cap a C10K demo at about 1,000 connections. Returns the
 * soft limit in force afterwards. */
static inline unsigned long long app_raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (unsigned long long)rl.rlim_cur;
}

/* A warning when a listener sheds connections for lack of fds: at most one line a second for the
 * whole process, with the count since the last one. With SO_REUSEPORT every loop has a listener,
 * so this runs on several threads: the counters are atomic and one compare-and-swap of next_ms
 * elects the thread that prints (shedding is the slow path: locked instructions are fine here). */
typedef struct app_shed {
    const char *prog;
    _Atomic uint64_t next_ms;
    _Atomic unsigned long long unreported, total;
} app_shed;

static inline void app_on_shed(rx_listener *l, app_shed *w) {
    (void)l;
    atomic_fetch_add_explicit(&w->unreported, 1, memory_order_relaxed);
    unsigned long long total = atomic_fetch_add_explicit(&w->total, 1, memory_order_relaxed) + 1;
    /* Not the loop's cached time: the callback may run on any loop's thread. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    uint64_t next = atomic_load_explicit(&w->next_ms, memory_order_relaxed);
    if (now < next ||
        !atomic_compare_exchange_strong_explicit(&w->next_ms, &next, now + 1000,
                                                 memory_order_relaxed, memory_order_relaxed))
        return;
    fprintf(stderr,
            "%s: out of file descriptors: %llu connection(s) closed at once (%llu in all); raise "
            "the open files limit (ulimit -n) or lower the load\n",
            w->prog, atomic_exchange_explicit(&w->unreported, 0, memory_order_relaxed), total);
}

/* --threads N: loops (and threads) of the group; 0 is one per CPU, resolved by
 * rx_loop_group_new. Returns 0, or -1 after printing why the value is bad. */
#define APP_MAX_THREADS 1024

static inline int app_parse_threads(const char *prog, const char *s, unsigned *out) {
    return app_parse_upto(prog, "--threads", "one per CPU", s, APP_MAX_THREADS, out);
}

/* --spread handoff|reuseport. Returns 0, or -1 after printing why the value is bad. */
static inline int app_parse_spread(const char *prog, const char *s, rx_spread *out) {
    if (!strcmp(s, "handoff"))
        *out = RX_SPREAD_HANDOFF;
    else if (!strcmp(s, "reuseport"))
        *out = RX_SPREAD_REUSEPORT;
    else {
        fprintf(stderr, "%s: --spread wants handoff or reuseport, got '%s'\n", prog, s);
        return -1;
    }
    return 0;
}

static inline const char *app_spread_name(rx_spread s) {
    return s == RX_SPREAD_REUSEPORT ? "reuseport" : "handoff";
}

/* The life of a server on a loop group, the same in both apps: SIGINT and SIGTERM are watched
 * once, on loop 0 (signals are process-wide: one watcher handles each delivery); the first one
 * stops the server gracefully, whose on_stopped (on loop 0 too) stops every loop, and main's
 * rx_loop_group_join returns. With drain_ms (rx-http's --drain) the stop waits that long first,
 * still accepting, after on_drain(drain_arg) ran on loop 0: time for a balancer's health checks to
 * see the server going and send it no more connections; a second signal cuts the drain short. */
typedef struct app_run {
    const char *prog;
    rx_loop_group *group;
    rx_server *server;
    uint64_t drain_ms;
    void (*on_drain)(void *drain_arg);
    void *drain_arg;
    rx_timer *drain_timer;
    bool stopping, draining; /* touched on loop 0's thread only */
} app_run;

static inline void app_on_stopped(void *arg) {
    app_run *r = arg;
    rx_loop_group_stop(r->group);
}

static inline void app_stop_now(app_run *r) {
    if (r->draining)
        rx_timer_stop(r->drain_timer);
    r->draining = false;
    rx_server_stop(r->server, 5000, app_on_stopped, r);
}

static inline void app_drained(rx_timer *t, void *arg) {
    (void)t;
    app_stop_now(arg);
}

static inline void app_on_signal(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    app_run *r = arg;
    if (r->draining) {
        fprintf(stderr, "%s: %s, stopping now\n", r->prog, strsignal(signo));
        app_stop_now(r);
        return;
    }
    if (r->stopping) /* a second signal changes nothing: the deadline bounds the stop already */
        return;
    r->stopping = true;
    if (r->drain_timer && rx_timer_start(r->drain_timer, r->drain_ms, 0) == 0) {
        fprintf(stderr, "%s: %s, draining for %llu ms, then stopping\n", r->prog, strsignal(signo),
                (unsigned long long)r->drain_ms);
        r->draining = true;
        r->on_drain(r->drain_arg);
        return;
    }
    fprintf(stderr, "%s: %s, stopping\n", r->prog, strsignal(signo));
    app_stop_now(r);
}

/* At exit, after the join: how many connections --proxy-protocol refused (none without it). */
static inline void app_print_refused(const char *prog, const rx_server *s,
                                     const rx_server_opts *opts) {
    if (opts->listener.proxy_protocol)
        fprintf(stderr, "%s: %llu connections closed for a missing, bad or late PROXY header\n",
                prog, rx_server_refused(s));
}

/* Call from main before rx_loop_group_start: rx blocks the signals in the calling thread, and
 * the loop threads inherit that mask, so no thread of the group dies of them. Returns 0, or -1
 * after printing why. */
static inline int app_watch_signals(app_run *r) {
    rx_loop *loop0 = rx_loop_group_loop(r->group, 0);
    if (r->drain_ms && !(r->drain_timer = rx_timer_new(loop0, app_drained, r))) {
        fprintf(stderr, "%s: out of memory\n", r->prog);
        return -1;
    }
    if (!rx_signal_new(loop0, SIGINT, app_on_signal, r) ||
        !rx_signal_new(loop0, SIGTERM, app_on_signal, r)) {
        fprintf(stderr, "%s: cannot watch signals: %s\n", r->prog, strerror(errno));
        return -1;
    }
    return 0;
}

/* Starts the loop threads and waits for them (until a signal stopped the server). Returns 0, or
 * -1 after printing why. */
static inline int app_run_group(app_run *r) {
    int rc = rx_loop_group_start(r->group);
    if (rc < 0) {
        fprintf(stderr, "%s: cannot start the loop threads: %s\n", r->prog, strerror(-rc));
        return -1;
    }
    rc = rx_loop_group_join(r->group);
    if (rc < 0) {
        fprintf(stderr, "%s: a loop failed: %s\n", r->prog, strerror(-rc));
        return -1;
    }
    return 0;
}

/* --workers N: this process becomes a master (rx_master) that binds the address and runs N
 * workers, each this program again with the same arguments, which find their sockets with
 * rx_worker_listen_fds. The master logs each worker's life on stderr, reloads on SIGHUP and
 * stops on SIGINT/SIGTERM once every worker has stopped. */
#define APP_MAX_WORKERS 1024

typedef struct app_master {
    const char *prog;
    rx_loop *loop;
    rx_master *master;
    int status; /* main's exit status: 1 once a worker did not stop cleanly */
} app_master;

static inline void app_master_log(rx_master *m, const rx_worker_info *w, void *arg) {
    (void)m;
    app_master *a = arg;
    char what[96] = "";
    switch (w->event) {
    case RX_WORKER_STARTED:
        strcpy(what, "started");
        break;
    case RX_WORKER_READY:
        strcpy(what, "ready");
        break;
    case RX_WORKER_STOPPING:
        strcpy(what, "stopping");
        break;
    case RX_WORKER_KILLED:
        strcpy(what, "killed (SIGKILL): it did not stop or get ready in time");
        break;
    case RX_WORKER_EXITED:
        if (WIFEXITED(w->status))
            snprintf(what, sizeof(what), "exited with status %d", WEXITSTATUS(w->status));
        else
            snprintf(what, sizeof(what), "killed by signal %d (%s)", WTERMSIG(w->status),
                     strsignal(WTERMSIG(w->status)));
        if (w->expected && !(WIFEXITED(w->status) && WEXITSTATUS(w->status) == 0))
            a->status = 1;
        break;
    case RX_WORKER_FAILED:
        snprintf(what, sizeof(what), "could not be started: %s", strerror(-w->err));
        break;
    }
    if (w->restart_ms > 0 && (w->event == RX_WORKER_EXITED || w->event == RX_WORKER_FAILED))
        fprintf(stderr, "%s: worker %u (pid %d, generation %u) %s; restart in %lld ms\n", a->prog,
                w->slot, (int)w->pid, w->generation, what, (long long)w->restart_ms);
    else if (w->restart_ms == 0 && w->event == RX_WORKER_EXITED)
        fprintf(stderr, "%s: worker %u (pid %d, generation %u) %s; restarting it\n", a->prog,
                w->slot, (int)w->pid, w->generation, what);
    else
        fprintf(stderr, "%s: worker %u (pid %d, generation %u) %s\n", a->prog, w->slot, (int)w->pid,
                w->generation, what);
}

static inline void app_master_stopped(void *arg) {
    app_master *a = arg;
    rx_loop_stop(a->loop);
}

static inline void app_master_signal(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    app_master *a = arg;
    if (signo == SIGHUP) {
        fprintf(stderr, "%s: %s, reloading: new workers first, then the old ones stop\n", a->prog,
                strsignal(signo));
        if (rx_master_reload(a->master) < 0)
            fprintf(stderr, "%s: stopping already, no reload\n", a->prog);
        return;
    }
    fprintf(stderr, "%s: %s, stopping the workers\n", a->prog, strsignal(signo));
    rx_master_stop(a->master, app_master_stopped, a);
}

/* The loops --threads N makes: N, or one per CPU this process may run on for 0. */
static inline unsigned app_loops(unsigned threads) {
    cpu_set_t set;
    if (threads > 0 || sched_getaffinity(0, sizeof(set), &set) < 0)
        return threads > 0 ? threads : 1;
    return (unsigned)CPU_COUNT(&set);
}

/* Runs a master for `workers` workers serving as `server` says (its address, listener options,
 * spread) until it stopped: each worker gets one socket, or one per loop with reuseport. A worker
 * asked to stop has drain_ms (its --drain) and 30 s more before it is killed. Returns main's exit
 * status. */
static inline int app_run_master(const char *prog, const rx_server_opts *server, unsigned threads,
                                 unsigned workers, uint64_t drain_ms, char **argv,
                                 unsigned long long nofile) {
    app_master a = {.prog = prog};
    unsigned loops = app_loops(threads);
    rx_master_opts opts = {
        .listen = server->listen,
        .listener = server->listener,
        .workers = workers,
        .sockets_per_worker = server->spread == RX_SPREAD_REUSEPORT ? loops : 1,
        .argv = argv,
        .stop_timeout_ms = drain_ms + 30000,
        .on_worker = app_master_log,
        .arg = &a,
    };
    rx_addr want;
    if (rx_addr_parse(&want, opts.listen) == 0 && want.u.sa.sa_family == AF_UNIX) {
        fprintf(stderr, "%s: --workers needs a TCP address, not %s\n", prog, opts.listen);
        return 2;
    }
    if (!(a.loop = rx_loop_new())) {
        fprintf(stderr, "%s: cannot create the master's loop: %s\n", prog, strerror(errno));
        return 1;
    }
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
        if (!rx_signal_new(a.loop, signals[i], app_master_signal, &a)) {
            fprintf(stderr, "%s: cannot watch signals: %s\n", prog, strerror(errno));
            rx_loop_free(a.loop);
            return 1;
        }
    if (!(a.master = rx_master_new(a.loop, &opts))) {
        fprintf(stderr, "%s: cannot listen on %s: %s\n", prog, opts.listen, strerror(errno));
        rx_loop_free(a.loop);
        return 1;
    }
    /* Flushed before any worker can write a line of its own. */
    char where[RX_ADDR_STRLEN];
    rx_addr_format(rx_master_addr(a.master), where, sizeof(where));
    printf("%s listening on %s (master pid %d, %u workers of %u thread%s, spread %s, open files "
           "limit %llu)\n",
           prog, where, (int)getpid(), workers, loops, loops == 1 ? "" : "s",
           app_spread_name(server->spread), nofile);
    fflush(stdout);
    int rc = rx_loop_run(a.loop);
    rx_master_free(a.master);
    rx_loop_free(a.loop);
    if (rc < 0) {
        fprintf(stderr, "%s: the master's loop failed: %s\n", prog, strerror(-rc));
        return 1;
    }
    fprintf(stderr, "%s: every worker stopped\n", prog);
    return a.status;
}

/* Once the server listens and the signals are watched: in a worker, tells the master it serves
 * and returns true (the master printed the first stdout line); else returns false and the caller
 * prints it. */
static inline bool app_worker_serving(const char *prog) {
    if (rx_worker_slot() < 0)
        return false;
    int rc = rx_worker_ready();
    if (rc < 0)
        fprintf(stderr, "%s: cannot tell the master it serves: %s\n", prog, strerror(-rc));
    return true;
}

/* --workers N. Returns 0, or -1 after printing why the value is bad. */
static inline int app_parse_workers(const char *prog, const char *s, unsigned *out) {
    return app_parse_upto(prog, "--workers", "no master", s, APP_MAX_WORKERS, out);
}

/* In a worker (or under systemd's socket activation): puts the inherited listening sockets in
 * opts. Returns 0 (none inherited is fine), or -1 after printing why. */
static inline int app_inherit_sockets(const char *prog, rx_server_opts *opts, int *fds,
                                      unsigned max) {
    int n = rx_worker_listen_fds(fds, max);
    if (n < 0) {
        fprintf(stderr, "%s: bad inherited sockets (LISTEN_FDS): %s\n", prog, strerror(-n));
        return -1;
    }
    if (n > 0) {
        opts->listen_fds = fds;
        opts->nlisten_fds = (unsigned)n;
    }
    return 0;
}

/* The switches every server has; app-specific ones are passed in `app` (names) and reported in
 * `app_on` (same order). */
#define TUNE_COMMON "edge, own-buffers, always-queue, nagle, accept-one, no-backpressure"

/* Applies a comma-separated list. Returns 0, or -1 after printing which name is unknown. */
static inline int tune_apply(const char *prog, const char *list, rx_server_opts *opts,
                             bool *backpressure, const char *const *app, bool *app_on) {
    char copy[256];
    if (strlen(list) >= sizeof(copy)) {
        fprintf(stderr, "%s: --tune list too long\n", prog);
        return -1;
    }
    strcpy(copy, list);
    for (char *save = NULL, *name = strtok_r(copy, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        if (!strcmp(name, "edge"))
            opts->conn.tuning.edge_triggered = true;
        else if (!strcmp(name, "own-buffers"))
            opts->conn.tuning.own_buffers = true;
        else if (!strcmp(name, "always-queue"))
            opts->conn.tuning.always_queue = true;
        else if (!strcmp(name, "nagle"))
            opts->conn.nagle = true;
        else if (!strcmp(name, "accept-one"))
            opts->listener.accept_batch = 1;
        else if (!strcmp(name, "no-backpressure"))
            *backpressure = false;
        else {
            size_t i = 0;
            while (app && app[i] && strcmp(name, app[i]))
                i++;
            if (!app || !app[i]) {
                fprintf(stderr, "%s: unknown --tune switch '%s'\n", prog, name);
                return -1;
            }
            app_on[i] = true;
        }
    }
    return 0;
}

#endif
