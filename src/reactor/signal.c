/* rx_signal: one signalfd per loop covering the signals its watchers want. The loop whose
 * signalfd dequeues a delivery runs its own watchers and forwards it, through a process-wide
 * registry of watching loops, to every other loop watching that signal, so each delivery reaches
 * every watcher of the process exactly once. Watchers run as ordinary loop callbacks, so they may
 * do anything. */
#include "loop_internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

struct rx_signal {
    rx_loop *loop;
    int signo;
    bool dead;        /* freed during dispatch; unlinked once the dispatch pass ends */
    pthread_t thread; /* whose mask this watcher counts in (the creating thread) */
    rx_signal_fn cb;
    void *arg;
    rx_signal *next;
};

struct rx_signal_state {
    rx_loop *loop;
    int fd;
    rx_channel *channel;
    /* Signals with at least one live watcher on this loop. Written by the loop's thread under
     * registry_lock, since other loops read it (under the lock) to forward deliveries. */
    sigset_t watched;
    rx_signal *watchers;
    bool dispatching;
    /* Bit signo: a delivery dequeued by another loop, not yet run here. Non-zero exactly while a
     * run_forwarded task is queued (or about to take the bits), so a burst costs one post. */
    atomic_ullong forwarded;
    struct rx_signal_state *reg_next; /* registry link, under registry_lock */
};

/* Every loop that has a signalfd. A loop leaves it (under the lock) before its state is freed,
 * and forwarding posts only while holding the lock, so a post never reaches a freed loop. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rx_signal_state *registry;

/* Signal masks are per thread, so is the bookkeeping: watchers created by this thread per signal,
 * and whether rx (not the application) blocked the signal in this thread. */
static _Thread_local unsigned thread_watchers[NSIG];
static _Thread_local bool thread_blocked[NSIG];

static void block_signal(int signo) {
    if (thread_watchers[signo]++ > 0)
        return;
    sigset_t one, old;
    sigemptyset(&one);
    sigaddset(&one, signo);
    pthread_sigmask(SIG_BLOCK, &one, &old);
    thread_blocked[signo] = !sigismember(&old, signo);
}

/* The mask of the creating thread cannot be changed from another one: freed elsewhere, the
 * watcher leaves the signal blocked there (signal.h says so). */
static void unblock_signal(const rx_signal *s) {
    if (!pthread_equal(s->thread, pthread_self()))
        return;
    if (--thread_watchers[s->signo] > 0 || !thread_blocked[s->signo])
        return;
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, s->signo);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    thread_blocked[s->signo] = false;
}

static bool valid_signo(int signo) {
    /* Below 64 too, for the forwarded bitmask (SIGRTMIN is 34 or so on Linux). */
    return signo > 0 && signo < SIGRTMIN && signo < 64 && signo != SIGKILL && signo != SIGSTOP;
}

static void sweep(struct rx_signal_state *st) {
    rx_signal **p = &st->watchers;
    while (*p) {
        rx_signal *s = *p;
        if (s->dead) {
            *p = s->next;
            rx_sys.free(s);
        } else {
            p = &s->next;
        }
    }
}

static void run_watchers(struct rx_signal_state *st, int signo) {
    for (rx_signal *s = st->watchers; s; s = s->next) {
        if (!s->dead && s->signo == signo)
            s->cb(s, signo, s->arg);
    }
}

/* Posted task: the deliveries other loops dequeued for this one. The state outlives the task: it
 * is freed only by rx_loop_free, which never runs a task still queued. */
static void run_forwarded(void *arg) {
    struct rx_signal_state *st = arg;
    unsigned long long bits = atomic_exchange(&st->forwarded, 0);
    st->dispatching = true;
    for (int signo = 1; signo < 64; signo++) {
        if (bits & (1ull << signo))
            run_watchers(st, signo);
    }
    st->dispatching = false;
    sweep(st);
}

static void forward(struct rx_signal_state *from, int signo) {
    unsigned long long bit = 1ull << signo;
    pthread_mutex_lock(&registry_lock);
    for (struct rx_signal_state *st = registry; st; st = st->reg_next) {
        if (st == from || !sigismember(&st->watched, signo))
            continue;
        if (atomic_fetch_or(&st->forwarded, bit) != 0)
            continue; /* a queued task takes this bit too */
        /* Out of memory this loop misses the delivery; clearing the bit (no other producer can
         * run under the lock) keeps the next one from waiting on a task that was never queued. */
        if (rx_loop_post(st->loop, run_forwarded, st) < 0)
            atomic_fetch_and(&st->forwarded, ~bit);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void on_signalfd(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    (void)ready;
    struct rx_signal_state *st = arg;
    struct signalfd_siginfo info;
    st->dispatching = true;
    for (;;) {
        ssize_t n = read(st->fd, &info, sizeof(info));
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof(info))
            break;
        int signo = (int)info.ssi_signo;
        /* Before our own watchers run: they may create or free watchers, which takes the lock. */
        forward(st, signo);
        run_watchers(st, signo);
    }
    st->dispatching = false;
    sweep(st);
}

static struct rx_signal_state *state_get(rx_loop *loop) {
    if (loop->signals)
        return loop->signals;
    struct rx_signal_state *st = rx_sys.calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->loop = loop;
    atomic_init(&st->forwarded, 0);
    sigemptyset(&st->watched);
    st->fd = signalfd(-1, &st->watched, SFD_NONBLOCK | SFD_CLOEXEC);
    if (st->fd < 0) {
        int err = errno;
        rx_sys.free(st);
        errno = err;
        return NULL;
    }
    st->channel =
        rx_channel_new(loop, st->fd, RX_CHANNEL_OWNS_FD | RX_CHANNEL_INTERNAL, on_signalfd, st);
    if (!st->channel || rx_channel_set_interest(st->channel, RX_READABLE) < 0) {
        int err = errno;
        if (st->channel)
            rx_channel_close(st->channel);
        else
            close(st->fd);
        rx_sys.free(st);
        errno = err;
        return NULL;
    }
    pthread_mutex_lock(&registry_lock);
    st->reg_next = registry;
    registry = st;
    pthread_mutex_unlock(&registry_lock);
    loop->signals = st;
    return st;
}

static void set_watched(struct rx_signal_state *st, const sigset_t *set) {
    pthread_mutex_lock(&registry_lock);
    st->watched = *set;
    pthread_mutex_unlock(&registry_lock);
}

rx_signal *rx_signal_new(rx_loop *loop, int signo, rx_signal_fn cb, void *arg) {
    if (!valid_signo(signo) || !cb) {
        errno = EINVAL;
        return NULL;
    }
    struct rx_signal_state *st = state_get(loop);
    if (!st)
        return NULL;
    rx_signal *s = rx_sys.calloc(1, sizeof(*s));
    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    s->loop = loop;
    s->signo = signo;
    s->thread = pthread_self();
    /* Block first, so a signal arriving in between stays pending for the signalfd. */
    block_signal(signo);
    if (!sigismember(&st->watched, signo)) {
        sigset_t want = st->watched;
        sigaddset(&want, signo);
        if (signalfd(st->fd, &want, 0) < 0) {
            int err = errno;
            unblock_signal(s);
            rx_sys.free(s);
            errno = err;
            return NULL;
        }
        set_watched(st, &want);
    }
    s->cb = cb;
    s->arg = arg;
    s->next = st->watchers;
    st->watchers = s;
    return s;
}

static bool watched_by_others(struct rx_signal_state *st, const rx_signal *gone) {
    for (rx_signal *s = st->watchers; s; s = s->next) {
        if (s != gone && !s->dead && s->signo == gone->signo)
            return true;
    }
    return false;
}

static void unwatch(struct rx_signal_state *st, int signo) {
    sigset_t want = st->watched;
    sigdelset(&want, signo);
    set_watched(st, &want);
    signalfd(st->fd, &want, 0);
    /* A forwarded delivery not yet run has no watcher left; a later watcher must not get it. */
    atomic_fetch_and(&st->forwarded, ~(1ull << signo));
}

void rx_signal_free(rx_signal *sig) {
    if (!sig || sig->dead)
        return;
    struct rx_signal_state *st = sig->loop->signals;
    if (!watched_by_others(st, sig))
        unwatch(st, sig->signo);
    unblock_signal(sig);
    sig->dead = true;
    if (!st->dispatching)
        sweep(st);
}

void rx_signal_free_all(rx_loop *loop) {
    struct rx_signal_state *st = loop->signals;
    if (!st)
        return;
    /* Out of the registry first: from here on no other loop posts to this one. */
    pthread_mutex_lock(&registry_lock);
    struct rx_signal_state **p = &registry;
    while (*p != st)
        p = &(*p)->reg_next;
    *p = st->reg_next;
    pthread_mutex_unlock(&registry_lock);
    st->dispatching = true; /* keep the list intact while walking it */
    for (rx_signal *s = st->watchers; s; s = s->next)
        rx_signal_free(s);
    st->dispatching = false;
    sweep(st);
    rx_channel_close(st->channel);
    rx_sys.free(st);
    loop->signals = NULL;
}
