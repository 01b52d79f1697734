/* rx_connect: non-blocking connect (EINPROGRESS, then SO_ERROR once writable), a timeout per
 * attempt and retries with exponential backoff, all on the connection's own channel and timer. */
#include <rx/connector.h>

#include <errno.h>
#include <netinet/in.h>
#include <unistd.h>

#include "conn_internal.h"

struct rx_connect_state {
    rx_addr addr;
    rx_addr bind;
    bool has_bind;
    uint64_t timeout_ms;
    unsigned retries_left;
    uint64_t backoff_ms, backoff_max_ms;
    bool backing_off; /* the timer is the wait before the next attempt, not an attempt timeout */
    int failed_now;   /* the attempt failed inside connect(2); reported by a 0 ms timer */
    rx_timer *timer;
};

/* A new socket with the connect started. Returns the fd, or a negative errno when no socket could
 * be made; *err is set when the connect failed at once (the fd is still returned then, so the
 * failure is reported from the loop like any other). */
static int start_attempt(const struct rx_connect_state *st, int *err) {
    *err = 0;
    int fd = socket(st->addr.u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (st->has_bind) {
        int one = 1;
        /* Pick the source port at connect time, by the full 4-tuple, so many connections can
         * share one source address. */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, &st->bind.u.sa, st->bind.len) < 0) {
            *err = -errno;
            return fd;
        }
    }
    int rc;
    do
        rc = connect(fd, &st->addr.u.sa, st->addr.len);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno != EINPROGRESS)
        *err = -errno;
    return fd; /* connected or in progress: writability tells */
}

static void attempt_failed(rx_conn *c, int err) {
    struct rx_connect_state *st = c->connect;
    if (st->retries_left == 0) {
        rx_conn_close_now(c, err == -ETIMEDOUT ? RX_CLOSE_TIMEOUT : RX_CLOSE_ERROR, err);
        return;
    }
    st->retries_left--;
    st->backing_off = true;
    rx_channel_set_interest(c->ch, 0);
    if (rx_timer_start(st->timer, st->backoff_ms, 0) < 0) {
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
        return;
    }
    st->backoff_ms =
        st->backoff_ms > st->backoff_max_ms / 2 ? st->backoff_max_ms : st->backoff_ms * 2;
}

/* Waits for the attempt on the current socket: writability, its timeout, or at once its
 * immediate failure. */
static void arm_attempt(rx_conn *c, int err) {
    struct rx_connect_state *st = c->connect;
    st->backing_off = false;
    st->failed_now = err;
    int rc = rx_channel_set_interest(c->ch, err ? 0 : RX_WRITABLE);
    uint64_t ms = err ? 0 : st->timeout_ms;
    if (rc == 0 && (err || ms))
        rc = rx_timer_start(st->timer, ms, 0);
    if (rc < 0)
        rx_conn_close_now(c, RX_CLOSE_ERROR, rc);
}

static void on_timer(rx_timer *t, void *arg) {
    (void)t;
    rx_conn *c = arg;
    struct rx_connect_state *st = c->connect;
    if (!st->backing_off) {
        attempt_failed(c, st->failed_now ? st->failed_now : -ETIMEDOUT);
        return;
    }
    int err;
    int fd = start_attempt(st, &err);
    if (fd < 0) {
        attempt_failed(c, fd);
        return;
    }
    rx_conn_replace_fd(c, fd);
    arm_attempt(c, err);
}

void rx_connect_on_event(rx_conn *c, uint32_t ready) {
    (void)ready;
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(rx_conn_sock(c), SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr != 0) {
        attempt_failed(c, -soerr);
        return;
    }
    rx_connect_release(c);
    rx_conn_established(c);
}

void rx_connect_release(rx_conn *c) {
    if (!c->connect)
        return;
    rx_timer_free(c->connect->timer);
    rx_sys.free(c->connect);
    c->connect = NULL;
}

rx_conn *rx_connect(rx_loop *loop, const rx_connect_opts *opts) {
    struct rx_connect_state *st = opts ? rx_sys.calloc(1, sizeof(*st)) : NULL;
    if (!st) {
        errno = opts ? ENOMEM : EINVAL;
        return NULL;
    }
    int rc = opts->addr ? rx_addr_parse(&st->addr, opts->addr) : -EINVAL;
    if (rc == 0 && opts->bind) {
        st->has_bind = true;
        rc = rx_addr_parse(&st->bind, opts->bind);
    }
    if (rc < 0) {
        rx_sys.free(st);
        errno = -rc;
        return NULL;
    }
    st->timeout_ms = opts->timeout_ms;
    st->retries_left = opts->retries;
    st->backoff_ms = opts->backoff_ms ? opts->backoff_ms : 100;
    st->backoff_max_ms = opts->backoff_max_ms ? opts->backoff_max_ms : 10000;

    int err;
    int fd = start_attempt(st, &err);
    if (fd < 0) {
        rx_sys.free(st);
        errno = -fd;
        return NULL;
    }
    rx_conn *c = rx_conn_create(loop, fd, true, &opts->conn, opts->cbs, opts->arg, NULL);
    if (!c) {
        rx_sys.free(st);
        return NULL;
    }
    c->connect = st;
    st->timer = rx_timer_new(loop, on_timer, c);
    if (!st->timer)
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
    else
        arm_attempt(c, err);
    return c;
}
