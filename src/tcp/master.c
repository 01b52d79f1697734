/* rx_master: fork+exec of workers that inherit listening sockets, their supervision on one loop
 * (SIGCHLD through a signalfd, a ready pipe and a timer per worker), restarts with a back-off,
 * reloads slot by slot, and the worker side of the protocol (environment variables).
 *
 * A worker gets its sockets as fds 3.. with LISTEN_FDS and LISTEN_PID, systemd's protocol, so a
 * worker program also runs under systemd's socket activation; RX_WORKER names its slot and
 * RX_READY_FD the pipe it writes one byte to once it serves. Workers are exec'd rather than only
 * forked: a fresh process inherits none of the master's loop, signal watchers or memory. */
#include <rx/channel.h>
#include <rx/master.h>
#include <rx/signal.h>
#include <rx/timer.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "listener_internal.h"
#include "sys.h"

#define LIVED_LONG_MS 1000 /* a worker that dies younger is restarted after a back-off */

extern char **environ;

struct worker {
    rx_master *m;
    struct worker *next; /* every worker alive, any slot, any generation */
    unsigned slot, gen;
    pid_t pid;
    rx_channel *ready_ch; /* the ready pipe's read end, until the byte or its end */
    rx_timer *timer;      /* the ready timeout, then the stop timeout */
    uint64_t started_ms;
    bool ready, stopping;
};

struct slot {
    rx_master *m;
    unsigned index;
    struct worker *cur;  /* serving, or starting */
    struct worker *next; /* a reload's replacement, until it is ready */
    rx_timer *restart;
    uint64_t backoff_ms;
};

struct rx_master {
    rx_loop *loop;
    rx_signal *sigchld;
    pid_t pid;
    int *fds; /* nslots * per listening sockets, slot-major */
    unsigned per, nslots;
    struct slot *slots;
    struct worker *all;
    unsigned alive, generation;
    rx_addr addr;
    char exe[PATH_MAX];
    char *const *argv;
    uint64_t stop_ms, ready_ms, backoff_min, backoff_max;
    void (*on_worker)(rx_master *m, const rx_worker_info *info, void *arg);
    void *arg;
    bool stopping;
    rx_task_fn on_stopped;
    void *stopped_arg;
};

static void report(rx_master *m, const struct worker *w, rx_worker_info info) {
    info.slot = w->slot;
    info.generation = w->gen;
    info.pid = w->pid;
    if (m->on_worker)
        m->on_worker(m, &info, m->arg);
}

/* ---- the child, between fork and exec: async-signal-safe calls only -------------------------- */

/* Writes v in decimal at out (room for 20 digits and a NUL). */
static void put_decimal(char *out, unsigned long v) {
    char tmp[24];
    int n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n)
        *out++ = tmp[--n];
    *out = '\0';
}

/* Moves the slot's sockets to 3.., the ready pipe after them, and execs. Never returns. */
static void run_child(const rx_master *m, const int *socks, int ready_fd, char *const *envp,
                      char *pid_value) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* the master blocks what its signalfds watch */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != m->pid)
        _exit(127); /* the master is gone already */
    int k = (int)m->per, tmp[RX_MASTER_MAX_SOCKETS + 1];
    for (int i = 0; i <= k; i++) {
        tmp[i] = fcntl(i < k ? socks[i] : ready_fd, F_DUPFD_CLOEXEC, 3 + k + 1);
        if (tmp[i] < 0)
            _exit(127);
    }
    for (int i = 0; i <= k; i++) /* dup2 clears close-on-exec; the tmp copies close at exec */
        if (dup2(tmp[i], 3 + i) < 0)
            _exit(127);
    put_decimal(pid_value, (unsigned long)getpid());
    execve(m->exe, m->argv, envp);
    _exit(127);
}

/* ---- spawning ---------------------------------------------------------------------------------
 */

static bool ours(const char *var) {
    static const char *const names[] = {
        "LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=", "RX_WORKER=", "RX_READY_FD="};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strncmp(var, names[i], strlen(names[i])))
            return true;
    return false;
}

/* The worker's environment: the master's without the protocol's variables, then those. vars
 * holds their text; LISTEN_PID's value is filled in by the child. NULL when out of memory. */
static char **worker_env(const rx_master *m, unsigned slot, char vars[4][48], char **pid_value) {
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = rx_sys.malloc((n + 5) * sizeof(*env));
    if (!env)
        return NULL;
    size_t e = 0;
    for (size_t i = 0; i < n; i++)
        if (!ours(environ[i]))
            env[e++] = environ[i];
    strcpy(vars[0], "LISTEN_FDS=");
    put_decimal(vars[0] + strlen(vars[0]), m->per);
    strcpy(vars[1], "RX_WORKER=");
    put_decimal(vars[1] + strlen(vars[1]), slot);
    strcpy(vars[2], "RX_READY_FD=");
    put_decimal(vars[2] + strlen(vars[2]), 3 + m->per);
    strcpy(vars[3], "LISTEN_PID=");
    *pid_value = vars[3] + strlen(vars[3]);
    for (int i = 0; i < 4; i++)
        env[e++] = vars[i];
    env[e] = NULL;
    return env;
}

static void on_ready_pipe(rx_channel *ch, uint32_t ready, void *arg);
static void on_worker_timer(rx_timer *t, void *arg);
static void schedule_restart(rx_master *m, unsigned slot, uint64_t delay_ms);

static void release_worker(struct worker *w) {
    rx_channel_close(w->ready_ch);
    rx_timer_free(w->timer);
    rx_sys.free(w);
}

/* A pipe whose read end (non-blocking) the master watches and whose write end the child gets. */
static int ready_pipe(struct worker *w, int p[2]) {
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    w->ready_ch = rx_channel_new(w->m->loop, p[0], RX_CHANNEL_OWNS_FD, on_ready_pipe, w);
    int rc = w->ready_ch ? rx_channel_set_interest(w->ready_ch, RX_READABLE) : -errno;
    if (!w->ready_ch)
        close(p[0]);
    if (rc < 0)
        close(p[1]);
    return rc;
}

/* Forks and execs a worker for slot. Returns it, or NULL with errno set. */
static struct worker *spawn(rx_master *m, unsigned slot) {
    struct worker *w = rx_sys.calloc(1, sizeof(*w));
    if (!w) {
        errno = ENOMEM;
        return NULL;
    }
    *w = (struct worker){.m = m, .slot = slot, .gen = m->generation};
    char vars[4][48], *pid_value = NULL, **env = NULL;
    int p[2] = {-1, -1}, rc = 0;
    if (!(w->timer = rx_timer_new(m->loop, on_worker_timer, w)) ||
        !(env = worker_env(m, slot, vars, &pid_value)))
        rc = -ENOMEM;
    else
        rc = ready_pipe(w, p);
    if (rc == 0 && (w->pid = fork()) < 0)
        rc = -errno;
    if (rc == 0 && w->pid == 0)
        run_child(m, m->fds + (size_t)slot * m->per, p[1], env, pid_value);
    rx_sys.free(env);
    if (p[1] >= 0)
        close(p[1]);
    if (rc < 0) {
        release_worker(w);
        errno = -rc;
        return NULL;
    }
    w->started_ms = rx_loop_now_ms(m->loop);
    rx_timer_start(w->timer, m->ready_ms, 0);
    w->next = m->all;
    m->all = w;
    m->alive++;
    report(m, w, (rx_worker_info){.event = RX_WORKER_STARTED});
    return w;
}

/* The back-off after a worker of slot lived `lived` ms (or could not start: lived 0). */
static uint64_t next_delay(rx_master *m, struct slot *sl, uint64_t lived) {
    if (lived >= LIVED_LONG_MS) {
        sl->backoff_ms = 0;
        return 0;
    }
    sl->backoff_ms = sl->backoff_ms ? sl->backoff_ms * 2 : m->backoff_min;
    if (sl->backoff_ms > m->backoff_max)
        sl->backoff_ms = m->backoff_max;
    return sl->backoff_ms;
}

/* Starts slot's serving worker; when that fails, reports it and tries again after a back-off. */
static void start_slot(rx_master *m, unsigned slot) {
    struct slot *sl = &m->slots[slot];
    if ((sl->cur = spawn(m, slot)))
        return;
    uint64_t delay = next_delay(m, sl, 0);
    struct worker none = {.slot = slot, .gen = m->generation};
    report(
        m, &none,
        (rx_worker_info){.event = RX_WORKER_FAILED, .err = -errno, .restart_ms = (int64_t)delay});
    schedule_restart(m, slot, delay);
}

static void on_restart(rx_timer *t, void *arg) {
    (void)t;
    struct slot *sl = arg;
    if (!sl->m->stopping && !sl->cur)
        start_slot(sl->m, sl->index);
}

static void schedule_restart(rx_master *m, unsigned slot, uint64_t delay_ms) {
    rx_timer_start(m->slots[slot].restart, delay_ms, 0);
}

/* ---- a worker's life ------------------------------------------------------------------------- */

/* SIGTERM: the worker's own graceful stop; SIGKILL if it is still there after the stop timeout. */
static void retire(struct worker *w) {
    if (w->stopping)
        return;
    w->stopping = true;
    kill(w->pid, SIGTERM);
    rx_timer_start(w->timer, w->m->stop_ms, 0);
    report(w->m, w, (rx_worker_info){.event = RX_WORKER_STOPPING});
}

static void became_ready(struct worker *w) {
    rx_master *m = w->m;
    struct slot *sl = &m->slots[w->slot];
    w->ready = true;
    if (!w->stopping)
        rx_timer_stop(w->timer);
    report(m, w, (rx_worker_info){.event = RX_WORKER_READY});
    if (sl->next == w) { /* a reload's replacement: the worker it replaces can go */
        if (sl->cur)
            retire(sl->cur);
        sl->cur = w;
        sl->next = NULL;
    }
}

static void on_ready_pipe(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    struct worker *w = arg;
    char byte;
    ssize_t n = read(rx_channel_fd(ch), &byte, 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    rx_channel_close(ch); /* the byte, or the end: the worker exited (SIGCHLD tells) */
    w->ready_ch = NULL;
    if (n == 1 && !w->ready)
        became_ready(w);
}

/* The ready timeout (a worker that never serves) or the stop timeout: SIGKILL. */
static void on_worker_timer(rx_timer *t, void *arg) {
    (void)t;
    struct worker *w = arg;
    kill(w->pid, SIGKILL);
    report(w->m, w, (rx_worker_info){.event = RX_WORKER_KILLED});
}

static void finish_stop(rx_master *m) {
    if (m->stopping && m->alive == 0 && m->on_stopped) {
        rx_task_fn fn = m->on_stopped;
        m->on_stopped = NULL;
        fn(m->stopped_arg);
    }
}

static void reaped(rx_master *m, struct worker *w, int status) {
    struct slot *sl = &m->slots[w->slot];
    int64_t restart = -1;
    if (sl->next == w) {
        sl->next = NULL; /* a replacement that never got ready: the old worker serves on */
    } else if (sl->cur == w) {
        sl->cur = sl->next; /* a reload under way: its replacement takes the slot */
        sl->next = NULL;
        if (!sl->cur && !m->stopping) {
            uint64_t delay = next_delay(m, sl, rx_loop_now_ms(m->loop) - w->started_ms);
            schedule_restart(m, w->slot, delay);
            restart = (int64_t)delay;
        }
    }
    m->alive--;
    report(m, w,
           (rx_worker_info){.event = RX_WORKER_EXITED,
                            .status = status,
                            .expected = w->stopping,
                            .restart_ms = restart});
    release_worker(w);
}

static void on_sigchld(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    (void)signo;
    rx_master *m = arg;
    /* Deliveries coalesce: look at every worker. Only ours, so other children stay the caller's. */
    for (struct worker **pw = &m->all; *pw;) {
        struct worker *w = *pw;
        int status;
        pid_t r = waitpid(w->pid, &status, WNOHANG);
        if (r == w->pid || (r < 0 && errno == ECHILD)) {
            *pw = w->next;
            reaped(m, w, r == w->pid ? status : 0);
        } else {
            pw = &w->next;
        }
    }
    finish_stop(m);
}

/* ---- the master ------------------------------------------------------------------------------ */

/* nslots * per sockets on the same port, every one SO_REUSEPORT. Returns 0 or a negative errno. */
static int bind_all(rx_master *m, const rx_master_opts *opts) {
    rx_addr want;
    if (rx_addr_parse(&want, opts->listen) < 0)
        return -EINVAL;
    if (want.u.sa.sa_family == AF_UNIX)
        return -EAFNOSUPPORT;
    rx_listener_opts lo = opts->listener;
    lo.reuseport = true;
    size_t n = (size_t)m->nslots * m->per;
    for (size_t i = 0; i < n; i++) {
        int fd = rx_listen_socket(i == 0 ? &want : &m->addr, &lo, &m->addr);
        if (fd < 0)
            return fd;
        m->fds[i] = fd;
    }
    return 0;
}

static uint64_t or_default(uint64_t v, uint64_t d) { return v ? v : d; }

rx_master *rx_master_new(rx_loop *loop, const rx_master_opts *opts) {
    if (!loop || !opts || !opts->listen || opts->workers == 0 || !opts->argv ||
        opts->sockets_per_worker > RX_MASTER_MAX_SOCKETS || !opts->argv[0] ||
        opts->backoff_min_ms > or_default(opts->backoff_max_ms, 10000)) {
        errno = EINVAL;
        return NULL;
    }
    rx_master *m = rx_sys.calloc(1, sizeof(*m));
    if (!m) {
        errno = ENOMEM;
        return NULL;
    }
    m->loop = loop;
    m->pid = getpid();
    m->nslots = opts->workers;
    m->per = opts->sockets_per_worker ? opts->sockets_per_worker : 1;
    m->argv = opts->argv;
    m->stop_ms = or_default(opts->stop_timeout_ms, 30000);
    m->ready_ms = or_default(opts->ready_timeout_ms, 10000);
    m->backoff_min = or_default(opts->backoff_min_ms, 100);
    m->backoff_max = or_default(opts->backoff_max_ms, 10000);
    m->on_worker = opts->on_worker;
    m->arg = opts->arg;
    int rc = 0;
    ssize_t len = readlink("/proc/self/exe", m->exe, sizeof(m->exe) - 1);
    size_t nfds = (size_t)m->nslots * m->per;
    if (len < 0) {
        rc = -errno;
    } else if (!(m->fds = rx_sys.calloc(nfds, sizeof(*m->fds))) ||
               !(m->slots = rx_sys.calloc(m->nslots, sizeof(*m->slots)))) {
        rc = -ENOMEM;
    } else {
        m->exe[len] = '\0';
        for (size_t i = 0; i < nfds; i++)
            m->fds[i] = -1;
        rc = bind_all(m, opts);
    }
    for (unsigned i = 0; rc == 0 && i < m->nslots; i++) {
        m->slots[i] = (struct slot){.m = m, .index = i};
        if (!(m->slots[i].restart = rx_timer_new(loop, on_restart, &m->slots[i])))
            rc = -ENOMEM;
    }
    if (rc == 0 && !(m->sigchld = rx_signal_new(loop, SIGCHLD, on_sigchld, m)))
        rc = -errno;
    if (rc < 0) {
        rx_master_free(m);
        errno = -rc;
        return NULL;
    }
    for (unsigned i = 0; i < m->nslots; i++)
        start_slot(m, i);
    return m;
}

const rx_addr *rx_master_addr(const rx_master *m) { return &m->addr; }
unsigned rx_master_alive(const rx_master *m) { return m->alive; }

int rx_master_reload(rx_master *m) {
    if (m->stopping)
        return -ECANCELED;
    m->generation++;
    for (unsigned i = 0; i < m->nslots; i++) {
        struct slot *sl = &m->slots[i];
        if (!sl->cur) { /* waiting for a restart: start the new generation now */
            rx_timer_stop(sl->restart);
            start_slot(m, i);
            continue;
        }
        if (sl->next)
            retire(sl->next); /* an earlier reload's replacement, not ready yet */
        sl->next = spawn(m, i);
        if (!sl->next) {
            struct worker none = {.slot = i, .gen = m->generation};
            report(m, &none,
                   (rx_worker_info){.event = RX_WORKER_FAILED, .err = -errno, .restart_ms = -1});
        }
    }
    return 0;
}

void rx_master_stop(rx_master *m, rx_task_fn on_stopped, void *arg) {
    if (m->stopping)
        return;
    m->stopping = true;
    m->on_stopped = on_stopped;
    m->stopped_arg = arg;
    for (unsigned i = 0; i < m->nslots; i++)
        rx_timer_stop(m->slots[i].restart);
    for (struct worker *w = m->all; w; w = w->next)
        retire(w);
    finish_stop(m);
}

void rx_master_free(rx_master *m) {
    if (!m)
        return;
    while (m->all) {
        struct worker *w = m->all;
        m->all = w->next;
        kill(w->pid, SIGKILL);
        while (waitpid(w->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        release_worker(w);
    }
    rx_signal_free(m->sigchld);
    for (unsigned i = 0; m->slots && i < m->nslots; i++)
        rx_timer_free(m->slots[i].restart);
    for (size_t i = 0; m->fds && i < (size_t)m->nslots * m->per; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    rx_sys.free(m->slots);
    rx_sys.free(m->fds);
    rx_sys.free(m);
}

/* ---- in a worker ----------------------------------------------------------------------------- */

/* The non-negative decimal value of environment variable name, or -1 (unset or malformed). */
static long env_number(const char *name) {
    const char *s = getenv(name);
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno || *end ? -1 : v;
}

int rx_worker_slot(void) {
    long v = env_number("RX_WORKER");
    return v >= 0 && v <= INT_MAX ? (int)v : -1;
}

int rx_worker_listen_fds(int *fds, unsigned max) {
    if (!getenv("LISTEN_FDS"))
        return 0;
    long n = env_number("LISTEN_FDS"), pid = env_number("LISTEN_PID");
    if (n < 0 || (getenv("LISTEN_PID") && pid < 0) || n > INT_MAX - 3)
        return -EINVAL;
    if (pid >= 0 && pid != (long)getpid())
        return 0; /* meant for another process (the one that set them, before it exec'd us) */
    if ((unsigned long)n > max)
        return -E2BIG;
    for (long i = 0; i < n; i++) {
        int fd = 3 + (int)i;
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
            return -errno;
        fds[i] = fd;
    }
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    return (int)n;
}

int rx_worker_ready(void) {
    long fd = env_number("RX_READY_FD");
    if (fd < 0)
        return 0;
    unsetenv("RX_READY_FD");
    char byte = 'R';
    ssize_t n;
    while ((n = write((int)fd, &byte, 1)) < 0 && errno == EINTR)
        ;
    int rc = n == 1 ? 0 : -errno;
    close((int)fd);
    return rc;
}
