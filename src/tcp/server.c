/* rx_server: listeners and the connections they accepted, on one loop or spread over a group's
 * loops, with a connection limit and a graceful stop in two deadlines (let them finish, then close
 * within a second deadline). Each loop's part of the server (a shard) is touched only by that
 * loop's thread; the loops talk through their post queues. */
#include <rx/server.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "conn_internal.h"

/* The part of a server that lives on one loop. */
struct rx_server_shard {
    rx_server *s;
    rx_loop *loop;
    rx_listener *listener; /* reuseport: one per shard; handoff: only on the accepting loop */
    rx_timer *stop_timer;
    bool stopping;
    /* Written by the shard's thread only (load + store), read by any thread. */
    atomic_size_t count;
    atomic_ullong accepted;
    unsigned long long shed, refused; /* the listener's counts, once it is gone */
};

struct rx_server {
    rx_loop *home; /* accepts (handoff) and runs on_stopped */
    rx_loop_group *group;
    rx_spread spread;
    rx_pick pick;
    rx_addr addr;
    rx_conn_opts conn_opts;
    size_t max_conns;
    bool proxy; /* the listeners read PROXY headers: a connection's peer is the header's */
    const rx_conn_callbacks *cbs;
    void *arg;
    void (*on_shed)(rx_listener *l, void *arg);
    unsigned nshards;
    struct rx_server_shard *shards;
    /* Handoff over a group: the one listener, on home, hands connections to the shards. */
    struct rx_server_shard acceptor;

    /* Graceful stop: when deadline_ms has passed, each shard closes its connections, each within
     * another deadline_ms (after which rx_conn aborts it). */
    bool stopping;
    uint64_t deadline_ms;
    atomic_uint busy_shards; /* shards not done stopping */
    rx_task_fn on_stopped;
    void *stopped_arg;
};

static void bump(atomic_size_t *v, long delta) {
    size_t n = atomic_load_explicit(v, memory_order_relaxed);
    atomic_store_explicit(v, n + (size_t)delta, memory_order_relaxed);
}

/* ---- connections -------------------------------------------------------------------------- */

static size_t total_count(const rx_server *s) {
    size_t n = 0;
    for (unsigned i = 0; i < s->nshards; i++)
        n += atomic_load_explicit(&s->shards[i].count, memory_order_relaxed);
    return n;
}

/* A new connection on the shard's loop (its thread); peer: the client a PROXY header named. */
static void adopt(struct rx_server_shard *sh, int fd, const rx_addr *peer) {
    rx_server *s = sh->s;
    if (sh->stopping || (s->max_conns && total_count(s) >= s->max_conns)) {
        close(fd); /* over the limit: the client sees its connection end at once */
        return;
    }
    /* No context of its own until on_open gives it one: on_close never gets the server's arg. */
    rx_conn *c =
        rx_conn_create(sh->loop, fd, false, &s->conn_opts, s->cbs, NULL, s->proxy ? peer : NULL);
    if (!c)
        return;
    c->owner = sh;
    bump(&sh->count, 1);
    unsigned long long a = atomic_load_explicit(&sh->accepted, memory_order_relaxed);
    atomic_store_explicit(&sh->accepted, a + 1, memory_order_relaxed);
    if (s->cbs->on_open)
        s->cbs->on_open(c, s->arg);
}

struct handoff {
    struct rx_server_shard *sh;
    int fd;
    rx_addr peer[]; /* the PROXY header's client: allocated only for a server that reads them */
};

static void handoff_run(void *arg) {
    struct handoff *h = arg;
    adopt(h->sh, h->fd, h->peer); /* read only when the server reads headers */
    rx_sys.free(h);
}

/* The target loop was freed first: the fd is still ours to close. */
static void handoff_drop(void *arg) {
    struct handoff *h = arg;
    close(h->fd);
    rx_sys.free(h);
}

static struct rx_server_shard *shard_of(rx_server *s, rx_loop *loop) {
    for (unsigned i = 0; i < s->nshards; i++)
        if (s->shards[i].loop == loop)
            return &s->shards[i];
    return NULL;
}

static void on_accept(rx_listener *l, int fd, const rx_addr *peer, void *arg) {
    (void)l;
    struct rx_server_shard *sh = arg;
    rx_server *s = sh->s;
    if (sh == &s->acceptor) {
        sh = shard_of(s, rx_loop_group_pick(s->group, s->pick));
        if (sh->loop != s->home) {
            struct handoff *h = rx_sys.malloc(sizeof(*h) + (s->proxy ? sizeof(*peer) : 0));
            if (h) {
                *h = (struct handoff){sh, fd};
                if (s->proxy)
                    h->peer[0] = *peer;
            }
            if (!h || rx_loop_post_drop(sh->loop, handoff_run, handoff_drop, h) < 0) {
                rx_sys.free(h);
                close(fd);
            }
            return;
        }
    }
    adopt(sh, fd, peer);
}

/* The user's on_shed gets the server's arg, not the shard. */
static void on_shed(rx_listener *l, void *arg) {
    struct rx_server_shard *sh = arg;
    sh->s->on_shed(l, sh->s->arg);
}

/* Calls fn on every connection of the shard (fn may close it). Its loop's thread. */
static void each_conn(struct rx_server_shard *sh, void (*fn)(struct rx_server_shard *, rx_conn *)) {
    rx_conn *next;
    for (rx_conn *c = rx_conn_next(sh->loop, NULL); c; c = next) {
        next = rx_conn_next(sh->loop, c);
        if (c->owner == sh)
            fn(sh, c);
    }
}

/* ---- graceful stop ------------------------------------------------------------------------ */

/* A shard has no connection left; the last one reports to the server's loop. */
static void shard_done(struct rx_server_shard *sh) {
    rx_timer_stop(sh->stop_timer);
    rx_server *s = sh->s;
    if (atomic_fetch_sub_explicit(&s->busy_shards, 1, memory_order_acq_rel) != 1 || !s->on_stopped)
        return;
    /* Posted, so it never runs inside rx_server_stop or a connection's teardown. */
    if (rx_loop_post(s->home, s->on_stopped, s->stopped_arg) < 0 && sh->loop == s->home)
        s->on_stopped(s->stopped_arg);
}

void rx_server_conn_released(struct rx_server_shard *sh, rx_conn *c) {
    c->owner = NULL;
    bump(&sh->count, -1);
    if (sh->stopping && atomic_load_explicit(&sh->count, memory_order_relaxed) == 0)
        shard_done(sh);
}

static void close_conn(struct rx_server_shard *sh, rx_conn *c) {
    rx_conn_close_within(c, sh->s->deadline_ms);
}

static void on_stop_timer(rx_timer *t, void *arg) {
    (void)t;
    each_conn(arg, close_conn);
}

static void free_listener(struct rx_server_shard *sh) {
    rx_listener **l = &sh->listener;
    if (!*l)
        return;
    sh->shed = rx_listener_shed(*l);
    sh->refused = rx_listener_refused(*l);
    rx_listener_free(*l);
    *l = NULL;
}

/* Each connection's own table: a connection may have changed hands (rx_conn_join). */
static void tell_stop(struct rx_server_shard *sh, rx_conn *c) {
    (void)sh;
    if (c->cbs->on_stop)
        c->cbs->on_stop(c, c->arg);
}

/* The shard's part of a stop, on its loop's thread. */
static void shard_stop(void *arg) {
    struct rx_server_shard *sh = arg;
    sh->stopping = true;
    free_listener(sh);
    each_conn(sh, tell_stop);
    if (atomic_load_explicit(&sh->count, memory_order_relaxed) == 0)
        shard_done(sh);
    else
        rx_timer_start(sh->stop_timer, sh->s->deadline_ms, 0);
}

void rx_server_stop(rx_server *s, uint64_t deadline_ms, rx_task_fn on_stopped, void *arg) {
    if (s->stopping)
        return;
    s->stopping = true;
    s->on_stopped = on_stopped;
    s->stopped_arg = arg;
    s->deadline_ms = deadline_ms;
    atomic_store(&s->busy_shards, s->nshards);
    free_listener(&s->acceptor);
    /* Connections handed off before this are created before their shard's stop: both were
     * posted by this thread, in this order. */
    for (unsigned i = 0; i < s->nshards; i++) {
        struct rx_server_shard *sh = &s->shards[i];
        if (sh->loop == s->home)
            shard_stop(sh);
        else if (rx_loop_post(sh->loop, shard_stop, sh) < 0)
            fprintf(stderr, "rx: rx_server_stop: out of memory, a loop keeps its connections\n");
    }
}

/* ---- life --------------------------------------------------------------------------------- */

/* A listener on the shard's loop: on fd when it is one (adopted), else bound to addr. */
static rx_listener *listen_on(rx_server *s, struct rx_server_shard *sh, const char *addr, int fd,
                              const rx_server_opts *opts) {
    rx_listener_opts lo = opts->listener;
    lo.on_shed = s->on_shed ? on_shed : NULL;
    if (s->group && s->spread == RX_SPREAD_REUSEPORT)
        lo.reuseport = true;
    if (fd >= 0)
        return rx_listener_adopt(sh->loop, fd, &lo, on_accept, sh);
    return rx_listener_new(sh->loop, addr, &lo, on_accept, sh);
}

static void close_fds(const int *fds, unsigned n) {
    for (unsigned i = 0; i < n; i++)
        close(fds[i]);
}

/* The listeners: one on home (a shard's, or the acceptor's for a handoff over a group), or one
 * per loop on the same port (the first one's, when port 0 let the kernel choose); on the given
 * listening sockets instead when there are some. Returns 0 or a negative errno. */
static int start_listening(rx_server *s, const rx_server_opts *opts) {
    const int *fds = opts->listen_fds;
    unsigned nfds = fds ? opts->nlisten_fds : 0; /* the caller's count; 0 means bind listen */
    bool one = !s->group || s->spread == RX_SPREAD_HANDOFF;
    if (nfds && nfds != (one ? 1 : s->nshards)) {
        close_fds(fds, nfds);
        return -EINVAL;
    }
    if (one) {
        struct rx_server_shard *sh = s->group ? &s->acceptor : &s->shards[0];
        if (!(sh->listener = listen_on(s, sh, opts->listen, nfds ? fds[0] : -1, opts)))
            return -errno;
        s->addr = *rx_listener_addr(sh->listener);
        return 0;
    }
    char addr[RX_ADDR_STRLEN];
    for (unsigned i = 0; i < s->nshards; i++) {
        struct rx_server_shard *sh = &s->shards[i];
        sh->listener = listen_on(s, sh, i == 0 ? opts->listen : addr, nfds ? fds[i] : -1, opts);
        if (!sh->listener) {
            int err = errno;
            if (nfds)
                close_fds(fds + i + 1, nfds - i - 1);
            return -err;
        }
        if (i == 0) {
            s->addr = *rx_listener_addr(sh->listener);
            rx_addr_format(&s->addr, addr, sizeof(addr));
        }
    }
    return 0;
}

rx_server *rx_server_new(rx_loop *loop, const rx_server_opts *opts) {
    static const rx_conn_callbacks no_callbacks;
    /* The given sockets are the server's from here on, also when it cannot be made. */
    unsigned nfds = opts && opts->listen_fds ? opts->nlisten_fds : 0;
    if (!opts || (!opts->listen && !nfds) || (!loop && !opts->group)) {
        if (nfds)
            close_fds(opts->listen_fds, nfds);
        errno = EINVAL;
        return NULL;
    }
    rx_server *s = rx_sys.calloc(1, sizeof(*s));
    unsigned n = opts->group ? rx_loop_group_size(opts->group) : 1;
    if (!s || !(s->shards = rx_sys.calloc(n, sizeof(*s->shards)))) {
        rx_sys.free(s);
        close_fds(opts->listen_fds, nfds);
        errno = ENOMEM;
        return NULL;
    }
    s->group = opts->group;
    s->home = loop ? loop : rx_loop_group_loop(opts->group, 0);
    s->spread = opts->spread;
    s->pick = opts->pick;
    s->conn_opts = opts->conn;
    s->max_conns = opts->max_conns;
    s->proxy = opts->listener.proxy_protocol;
    s->cbs = opts->cbs ? opts->cbs : &no_callbacks;
    s->arg = opts->arg;
    s->on_shed = opts->listener.on_shed;
    s->acceptor = (struct rx_server_shard){.s = s, .loop = s->home};
    int rc = 0;
    for (s->nshards = 0; s->nshards < n && rc == 0; s->nshards++) {
        struct rx_server_shard *sh = &s->shards[s->nshards];
        sh->s = s;
        sh->loop = s->group ? rx_loop_group_loop(s->group, s->nshards) : loop;
        atomic_init(&sh->count, 0);
        atomic_init(&sh->accepted, 0);
        if (!(sh->stop_timer = rx_timer_new(sh->loop, on_stop_timer, sh)))
            rc = -ENOMEM;
    }
    if (rc == 0)
        rc = start_listening(s, opts);
    else
        close_fds(opts->listen_fds, nfds);
    if (rc < 0) {
        rx_server_free(s);
        errno = -rc;
        return NULL;
    }
    return s;
}

const rx_addr *rx_server_addr(const rx_server *s) { return &s->addr; }
void *rx_server_arg(const rx_server *s) { return s->arg; }
rx_server *rx_conn_server(const rx_conn *c) { return c->owner ? c->owner->s : NULL; }
size_t rx_server_conn_count(const rx_server *s) { return total_count(s); }

unsigned long long rx_server_accepted(const rx_server *s) {
    unsigned long long n = 0;
    for (unsigned i = 0; i < s->nshards; i++)
        n += atomic_load_explicit(&s->shards[i].accepted, memory_order_relaxed);
    return n;
}

enum listener_count { COUNT_SHED, COUNT_REFUSED };

/* A listener count over the server: the live listeners' and the ones kept from those freed. */
static unsigned long long listener_sum(const rx_server *s, enum listener_count k) {
    unsigned long long n = 0;
    for (unsigned i = 0; i <= s->nshards; i++) {
        const struct rx_server_shard *sh = i < s->nshards ? &s->shards[i] : &s->acceptor;
        const rx_listener *l = sh->listener;
        if (k == COUNT_SHED)
            n += l ? rx_listener_shed(l) : sh->shed;
        else
            n += l ? rx_listener_refused(l) : sh->refused;
    }
    return n;
}

unsigned long long rx_server_shed(const rx_server *s) { return listener_sum(s, COUNT_SHED); }

unsigned long long rx_server_refused(const rx_server *s) { return listener_sum(s, COUNT_REFUSED); }

/* A connection outlives the server until its on_close returns: it forgets its owner first. */
static void forget_conn(struct rx_server_shard *sh, rx_conn *c) {
    c->owner = NULL;
    bump(&sh->count, -1);
}

static void abort_conn(struct rx_server_shard *sh, rx_conn *c) {
    forget_conn(sh, c);
    rx_conn_abort(c);
}

void rx_server_free(rx_server *s) {
    if (!s)
        return;
    rx_listener_free(s->acceptor.listener);
    for (unsigned i = 0; i < s->nshards; i++) {
        struct rx_server_shard *sh = &s->shards[i];
        rx_listener_free(sh->listener);
        each_conn(sh, abort_conn);
        /* Also those closed but not yet through on_close (this one among them, when called
         * from an on_close). */
        for (rx_conn *c = rx_conn_next_closed(sh->loop, NULL); c;
             c = rx_conn_next_closed(sh->loop, c))
            if (c->owner == sh)
                forget_conn(sh, c);
        rx_timer_free(sh->stop_timer);
    }
    rx_sys.free(s->shards);
    rx_sys.free(s);
}
