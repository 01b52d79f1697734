/* rx_signal: one signalfd per loop covering every watched signal; each delivery runs the
 * watchers of that signal as ordinary loop callbacks, so handlers may do anything. */
#include "loop_internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

struct rx_signal {
    rx_loop *loop;
    int signo;
    bool dead; /* freed during dispatch; unlinked once the dispatch pass ends */
    rx_signal_fn cb;
    void *arg;
    rx_signal *next;
};

struct rx_signal_state {
    int fd;
    rx_channel *channel;
    sigset_t watched; /* signals with at least one live watcher on this loop */
    rx_signal *watchers;
    bool dispatching;
};

/* The signal mask and dispositions are not per loop: two loops of one thread may watch the same
 * signal, and it must stay blocked until the last of them lets go. So how many loops watch each
 * signal, and whether rx blocked it, is process state. */
static pthread_mutex_t block_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned loops_watching[NSIG];
static bool rx_blocked[NSIG];

static void block_signal(int signo) {
    sigset_t one, old;
    sigemptyset(&one);
    sigaddset(&one, signo);
    pthread_mutex_lock(&block_lock);
    pthread_sigmask(SIG_BLOCK, &one, &old);
    if (loops_watching[signo]++ == 0)
        rx_blocked[signo] = !sigismember(&old, signo);
    pthread_mutex_unlock(&block_lock);
}

static void unblock_signal(int signo) {
    pthread_mutex_lock(&block_lock);
    if (--loops_watching[signo] == 0 && rx_blocked[signo]) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, signo);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        rx_blocked[signo] = false;
    }
    pthread_mutex_unlock(&block_lock);
}

static bool valid_signo(int signo) {
    return signo > 0 && signo < SIGRTMIN && signo != SIGKILL && signo != SIGSTOP;
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
        for (rx_signal *s = st->watchers; s; s = s->next) {
            if (!s->dead && s->signo == (int)info.ssi_signo)
                s->cb(s, s->signo, s->arg);
        }
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
    loop->signals = st;
    return st;
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
    if (!sigismember(&st->watched, signo)) {
        /* Block first, so a signal arriving in between stays pending for the signalfd. */
        block_signal(signo);
        sigaddset(&st->watched, signo);
        if (signalfd(st->fd, &st->watched, 0) < 0) {
            int err = errno;
            sigdelset(&st->watched, signo);
            unblock_signal(signo);
            rx_sys.free(s);
            errno = err;
            return NULL;
        }
    }
    s->loop = loop;
    s->signo = signo;
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
    sigdelset(&st->watched, signo);
    signalfd(st->fd, &st->watched, 0);
    unblock_signal(signo);
}

void rx_signal_free(rx_signal *sig) {
    if (!sig || sig->dead)
        return;
    struct rx_signal_state *st = sig->loop->signals;
    if (!watched_by_others(st, sig))
        unwatch(st, sig->signo);
    sig->dead = true;
    if (!st->dispatching)
        sweep(st);
}

void rx_signal_free_all(rx_loop *loop) {
    struct rx_signal_state *st = loop->signals;
    if (!st)
        return;
    st->dispatching = true; /* keep the list intact while walking it */
    for (rx_signal *s = st->watchers; s; s = s->next)
        rx_signal_free(s);
    st->dispatching = false;
    sweep(st);
    rx_channel_close(st->channel);
    rx_sys.free(st);
    loop->signals = NULL;
}
