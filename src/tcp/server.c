/* rx_server: a listener and the list of its connections, with a connection limit and a graceful
 * stop in two deadlines (let them finish, then close, then abort). */
#include <rx/server.h>

#include <errno.h>
#include <unistd.h>

#include "conn_internal.h"

struct rx_server {
    rx_loop *loop;
    rx_listener *listener;
    rx_addr addr;
    rx_conn_opts conn_opts;
    size_t max_conns;
    const rx_conn_callbacks *cbs;
    void *arg;
    void (*on_shed)(rx_listener *l, void *arg);
    size_t count; /* connections whose owner is this server */
    unsigned long long accepted;
    unsigned long long shed; /* the listener's count, once it is gone */

    /* Graceful stop: when deadline_ms has passed, the connections still open are closed, each
     * within another deadline_ms (after which rx_conn aborts it). */
    bool stopping;
    uint64_t deadline_ms;
    rx_timer *stop_timer;
    rx_task_fn on_stopped;
    void *stopped_arg;
};

static void stopped(rx_server *s) {
    rx_timer_stop(s->stop_timer);
    if (s->on_stopped) {
        rx_task_fn fn = s->on_stopped;
        s->on_stopped = NULL;
        /* Posted, so it never runs inside rx_server_stop or a connection's teardown. */
        if (rx_loop_post(s->loop, fn, s->stopped_arg) < 0)
            fn(s->stopped_arg);
    }
}

void rx_server_conn_released(rx_server *s, rx_conn *c) {
    c->owner = NULL;
    s->count--;
    if (s->stopping && s->count == 0)
        stopped(s);
}

/* The user's on_shed gets the server's arg, not the server. */
static void on_shed(rx_listener *l, void *arg) {
    rx_server *s = arg;
    s->on_shed(l, s->arg);
}

static void on_accept(rx_listener *l, int fd, const rx_addr *peer, void *arg) {
    (void)l;
    (void)peer;
    rx_server *s = arg;
    if (s->max_conns && s->count >= s->max_conns) {
        close(fd); /* over the limit: the client sees its connection end at once */
        return;
    }
    rx_conn *c = rx_conn_create(s->loop, fd, false, &s->conn_opts, s->cbs, s->arg);
    if (!c)
        return;
    c->owner = s;
    s->count++;
    s->accepted++;
    if (s->cbs->on_open)
        s->cbs->on_open(c, c->arg);
}

/* Calls fn on every connection of the server (fn may close it). */
static void each_conn(rx_server *s, void (*fn)(rx_server *s, rx_conn *c)) {
    rx_conn *next;
    for (rx_conn *c = rx_conn_next(s->loop, NULL); c; c = next) {
        next = rx_conn_next(s->loop, c);
        if (c->owner == s)
            fn(s, c);
    }
}

static void close_conn(rx_server *s, rx_conn *c) { rx_conn_close_within(c, s->deadline_ms); }

static void on_stop_timer(rx_timer *t, void *arg) {
    (void)t;
    each_conn(arg, close_conn);
}

rx_server *rx_server_new(rx_loop *loop, const rx_server_opts *opts) {
    static const rx_conn_callbacks no_callbacks;
    if (!opts || !opts->listen) {
        errno = EINVAL;
        return NULL;
    }
    rx_server *s = rx_sys.calloc(1, sizeof(*s));
    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    s->loop = loop;
    s->conn_opts = opts->conn;
    s->max_conns = opts->max_conns;
    s->cbs = opts->cbs ? opts->cbs : &no_callbacks;
    s->arg = opts->arg;
    s->on_shed = opts->listener.on_shed;
    rx_listener_opts lo = opts->listener;
    lo.on_shed = s->on_shed ? on_shed : NULL;
    s->stop_timer = rx_timer_new(loop, on_stop_timer, s);
    if (s->stop_timer)
        s->listener = rx_listener_new(loop, opts->listen, &lo, on_accept, s);
    if (!s->listener) {
        int err = s->stop_timer ? errno : ENOMEM;
        rx_timer_free(s->stop_timer);
        rx_sys.free(s);
        errno = err;
        return NULL;
    }
    s->addr = *rx_listener_addr(s->listener);
    return s;
}

const rx_addr *rx_server_addr(const rx_server *s) { return &s->addr; }
size_t rx_server_conn_count(const rx_server *s) { return s->count; }
unsigned long long rx_server_accepted(const rx_server *s) { return s->accepted; }
unsigned long long rx_server_shed(const rx_server *s) {
    return s->listener ? rx_listener_shed(s->listener) : s->shed;
}

void rx_server_stop(rx_server *s, uint64_t deadline_ms, rx_task_fn on_stopped, void *arg) {
    if (s->stopping)
        return;
    s->stopping = true;
    s->on_stopped = on_stopped;
    s->stopped_arg = arg;
    s->deadline_ms = deadline_ms;
    s->shed = rx_listener_shed(s->listener);
    rx_listener_free(s->listener);
    s->listener = NULL;
    if (s->count == 0)
        stopped(s);
    else
        rx_timer_start(s->stop_timer, deadline_ms, 0);
}

/* The connection outlives the server until its on_close: it forgets its owner first. */
static void abort_conn(rx_server *s, rx_conn *c) {
    c->owner = NULL;
    s->count--;
    rx_conn_abort(c);
}

void rx_server_free(rx_server *s) {
    if (!s)
        return;
    rx_listener_free(s->listener);
    each_conn(s, abort_conn);
    rx_timer_free(s->stop_timer);
    rx_sys.free(s);
}
