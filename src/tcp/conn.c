/* rx_conn: reading into a borrowed scratch buffer, send-now-else-queue with EPOLLOUT watched only
 * while output waits, file ranges ordered with buffered bytes, water marks, half-close, idle
 * timeout, and a close whose on_close runs at the end of the iteration. */
#include "conn_internal.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scratch.h"

#define DEFAULT_HIGH_WATER (1024 * 1024)
#define LINGER_MS 2000

static void on_event(rx_channel *ch, uint32_t ready, void *arg);
static void on_idle(rx_timer *t, void *arg);

static bool closing_or_closed(const rx_conn *c) {
    return c->state == RX_CONN_CLOSING || c->state == RX_CONN_CLOSED;
}

static void touch(rx_conn *c) { c->last_active = rx_loop_now_ms(c->loop); }

static void update_interest(rx_conn *c) {
    if (c->state == RX_CONN_CLOSED)
        return;
    uint32_t want = 0;
    if (c->state == RX_CONN_CONNECTING)
        want = RX_WRITABLE;
    else {
        bool reading =
            c->lingering || (!c->read_paused && !c->peer_eof && c->state != RX_CONN_CLOSING);
        if (reading)
            want |= RX_READABLE;
        if (c->waiting_write)
            want |= RX_WRITABLE;
    }
    int rc = rx_channel_set_interest(c->ch, want);
    if (rc < 0)
        rx_conn_close_now(c, RX_CLOSE_ERROR, rc);
}

/* The channel destructor: the end of the iteration in which the connection closed, or
 * rx_loop_free. */
static void finalize(void *arg) {
    rx_conn *c = arg;
    if (c->state != RX_CONN_CLOSED) { /* released by rx_loop_free while open */
        c->state = RX_CONN_CLOSED;
        c->reason = RX_CLOSE_LOCAL;
        c->err = 0;
    }
    if (c->owner_release)
        c->owner_release(c, c->owner);
    if (c->cbs->on_close)
        c->cbs->on_close(c, c->reason, c->err, c->arg);
    rx_connect_release(c);
    rx_timer_free(c->idle);
    rx_timer_free(c->kick);
    rx_buffer_free(&c->in);
    rx_buffer_free(&c->out);
    rx_conn_release_files(c);
    rx_sys.free(c);
}

void rx_conn_close_now(rx_conn *c, rx_close_reason reason, int err) {
    if (c->state == RX_CONN_CLOSED)
        return;
    c->state = RX_CONN_CLOSED;
    c->reason = reason;
    c->err = err;
    if (c->idle)
        rx_timer_stop(c->idle);
    if (c->kick)
        rx_timer_stop(c->kick);
    rx_channel_close(c->ch); /* closes the fd; finalize runs at the end of the iteration */
}

static rx_close_reason reason_for(int err) {
    return err == -ECONNRESET || err == -EPIPE ? RX_CLOSE_RESET : RX_CLOSE_ERROR;
}

/* Everything queued is written: close. If the peer may still be sending, closing now would make
 * the kernel answer its unread bytes with a reset that can destroy our last bytes in flight, so
 * shut our side and read to the peer's end of stream first (lingering close), for at most
 * LINGER_MS. */
static void finish_close(rx_conn *c) {
    if (c->peer_eof) {
        rx_conn_close_now(c, c->reason, c->err);
        return;
    }
    if (!c->write_shut) {
        shutdown(c->fd, SHUT_WR);
        c->write_shut = true;
    }
    c->lingering = true;
    c->waiting_write = false;
    if ((!c->idle && !(c->idle = rx_timer_new(c->loop, on_idle, c))) ||
        rx_timer_start(c->idle, LINGER_MS, 0) < 0) {
        rx_conn_close_now(c, c->reason, c->err);
        return;
    }
    update_interest(c);
}

static void set_high(rx_conn *c) {
    size_t q = rx_conn_queued(c);
    if (!c->above_high && q > c->high_water) {
        c->above_high = true;
        if (c->cbs->on_high_water)
            c->cbs->on_high_water(c, q, c->arg);
    }
}

static void on_kick(rx_timer *t, void *arg);

/* Runs on_kick on the next iteration: for callbacks owed where they could not run (inside a call
 * of the owner's) and for input left buffered by a pause. */
static void arm_kick(rx_conn *c) {
    if ((!c->kick && !(c->kick = rx_timer_new(c->loop, on_kick, c))) ||
        rx_timer_start(c->kick, 0, 0) < 0)
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
}

/* on_low_water and on_drain, when owed; a closing connection owes its owner only on_close. */
static void notify(rx_conn *c) {
    if (c->owe_low && !closing_or_closed(c)) {
        c->owe_low = false;
        if (c->cbs->on_low_water)
            c->cbs->on_low_water(c, rx_conn_queued(c), c->arg);
    }
    if (c->owe_drain && !closing_or_closed(c)) {
        c->owe_drain = false;
        if (c->cbs->on_drain)
            c->cbs->on_drain(c, c->arg);
    }
    c->owe_low = c->owe_drain = false;
}

/* Writes what is queued and settles interest, half-close and a pending close. Callbacks owed
 * (low water, drain) run here when `may_notify`, else on the next iteration: never from inside a
 * call of the owner's such as rx_conn_flush. */
static int flush(rx_conn *c, bool may_notify) {
    if (c->state == RX_CONN_CONNECTING || c->state == RX_CONN_CLOSED)
        return 0;
    size_t before = rx_conn_queued(c);
    int rc = rx_conn_write_queue(c);
    if (rc < 0) {
        rx_conn_close_now(c, reason_for(rc), rc);
        return rc;
    }
    size_t queued = rx_conn_queued(c);
    if (queued < before)
        touch(c);
    if (queued == 0) {
        /* An output buffer stays while the connection is busy, so a response costs no malloc;
         * one grown by a burst goes now, a small one when the idle timer finds it empty. */
        if (!c->own_buffers && c->out.cap > RX_SCRATCH_SIZE)
            rx_buffer_release_if_empty(&c->out);
        if (c->shut_pending && !c->write_shut) {
            shutdown(c->fd, SHUT_WR);
            c->write_shut = true;
        }
        if (c->state == RX_CONN_CLOSING) {
            finish_close(c);
            return 0;
        }
    }
    bool was_waiting = c->waiting_write;
    c->waiting_write = queued > 0;
    if (c->waiting_write != was_waiting)
        update_interest(c);
    if (c->above_high && queued <= c->low_water) {
        c->above_high = false;
        c->owe_low = true;
    }
    if (queued == 0 && was_waiting)
        c->owe_drain = true;
    set_high(c);
    if (c->owe_low || c->owe_drain) {
        if (may_notify)
            notify(c);
        else
            arm_kick(c);
    }
    return 0;
}

int rx_conn_flush(rx_conn *c) { return flush(c, false); }

rx_buffer *rx_conn_output(rx_conn *c) { return &c->out; }
rx_buffer *rx_conn_input(rx_conn *c) { return &c->in; }

bool rx_conn_can_write(const rx_conn *c) {
    return !closing_or_closed(c) && !c->write_shut && !c->shut_pending;
}

int rx_conn_sendv(rx_conn *c, const struct iovec *iov, int iovcnt) {
    if (!rx_conn_can_write(c))
        return -EPIPE;
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return -EINVAL;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > SIZE_MAX - total)
            return -EOVERFLOW;
        total += iov[i].iov_len;
    }
    size_t written = 0;
    /* Send now when nothing is queued ahead (output appended with rx_conn_output counts): the
     * bytes go straight from the caller's memory, usually without ever being copied. */
    bool tried = false;
    if (c->state != RX_CONN_CONNECTING && rx_conn_queued(c) == 0 && total > 0 && !c->always_queue) {
        tried = true;
        struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t n;
        do
            n = rx_sys.sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN) {
            int err = -errno;
            rx_conn_close_now(c, reason_for(err), err);
            return err;
        }
        if (n > 0) {
            written = (size_t)n;
            c->bytes_out += written;
            touch(c);
        }
    }
    if (written == total)
        return 0;
    if (rx_buffer_reserve(&c->out, total - written) < 0) {
        if (written == 0)
            return -ENOMEM;
        /* Part of the message is on the wire and the rest cannot be kept. */
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
        return -ENOMEM;
    }
    size_t skip = written;
    for (int i = 0; i < iovcnt; i++) {
        size_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        rx_buffer_append(&c->out, (const char *)iov[i].iov_base + skip, len - skip);
        skip = 0;
    }
    /* The socket is full (or we queue on purpose): wait for EPOLLOUT. Bytes queued behind
     * output an on_data is building are written when it returns. */
    if ((tried || !c->in_data) && c->state != RX_CONN_CONNECTING && !c->waiting_write) {
        c->waiting_write = true;
        update_interest(c);
    }
    set_high(c);
    return 0;
}

int rx_conn_send(rx_conn *c, const void *data, size_t n) {
    struct iovec iov = {.iov_base = (void *)data, .iov_len = n};
    return rx_conn_sendv(c, &iov, 1);
}

/* Hands the input to on_data; what it appends to the output is held until it returns. */
static void call_on_data(rx_conn *c) {
    if (!c->cbs->on_data) {
        rx_buffer_consume(&c->in, rx_buffer_len(&c->in));
        return;
    }
    c->in_data = true;
    c->cbs->on_data(c, &c->in, c->arg);
    c->in_data = false;
}

/* on_data for input already buffered, then the write it produced. */
static void deliver(rx_conn *c) {
    call_on_data(c);
    if (!closing_or_closed(c) && rx_conn_queued(c) > 0 && !c->waiting_write)
        flush(c, true);
}

/* Stops reading, writes what is queued, then closes with `reason`. */
static void close_graceful(rx_conn *c, rx_close_reason reason) {
    if (closing_or_closed(c))
        return;
    c->reason = reason;
    c->err = 0;
    if (c->state == RX_CONN_CONNECTING) {
        rx_conn_close_now(c, reason, 0);
        return;
    }
    c->state = RX_CONN_CLOSING;
    if (rx_conn_queued(c) == 0 || c->write_shut) {
        finish_close(c);
        return;
    }
    c->waiting_write = true;
    update_interest(c);
}

/* One read and its on_data. Input with no leftover from an earlier read goes into the loop's
 * scratch buffer, so a connection holds no input memory between messages; only an incomplete
 * message is copied into its own buffer. Returns the read's result. */
static ssize_t read_once(rx_conn *c) {
    rx_buffer *in = &c->in;
    char *scratch = NULL;
    ssize_t n;
    if (in->cap == 0 && !c->own_buffers && (scratch = rx_loop_scratch(c->loop)) != NULL) {
        *in = (rx_buffer){.data = scratch, .cap = RX_SCRATCH_SIZE};
        do
            n = rx_sys.read(c->fd, scratch, RX_SCRATCH_SIZE);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            n = -errno;
        else
            in->end = (size_t)n;
    } else {
        n = rx_buffer_read_fd(in, c->fd);
    }
    if (n > 0) {
        c->bytes_in += (size_t)n;
        touch(c);
        call_on_data(c);
    }
    if (scratch) {
        if (in->data != scratch || in->cap != RX_SCRATCH_SIZE) {
            rx_loop_scratch_forget(c->loop); /* the callback grew it: the memory is ours now */
        } else {
            rx_buffer left = RX_BUFFER_INIT;
            if (c->state != RX_CONN_CLOSED && rx_buffer_len(in) > 0 &&
                rx_buffer_append(&left, rx_buffer_peek(in), rx_buffer_len(in)) < 0)
                rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
            *in = left;
        }
    }
    if (c->state == RX_CONN_CLOSED)
        return -EPIPE;
    if (n == 0) {
        c->peer_eof = true;
        if (c->cbs->on_eof) {
            if (c->state == RX_CONN_OPEN)
                c->state = RX_CONN_HALF_CLOSED;
            update_interest(c);
            c->cbs->on_eof(c, c->arg);
        } else {
            close_graceful(c, RX_CLOSE_PEER);
        }
        return 0;
    }
    if (n < 0 && n != -EAGAIN) {
        rx_conn_close_now(c, reason_for((int)n), (int)n);
        return n;
    }
    if (rx_conn_queued(c) > 0 && !c->waiting_write)
        flush(c, true);
    return n;
}

static bool reading(const rx_conn *c) {
    return !c->read_paused && !c->peer_eof && !closing_or_closed(c);
}

/* Level-triggered, one read per readiness event keeps a busy peer from starving the others;
 * edge-triggered must read until EAGAIN or the readiness is lost. */
static void handle_read(rx_conn *c) {
    ssize_t n;
    do
        n = read_once(c);
    while (c->edge && n > 0 && reading(c));
}

/* Lingering: read and drop what the peer still sends, until its end of stream. */
static void discard_input(rx_conn *c) {
    char *scratch = rx_loop_scratch(c->loop);
    ssize_t n;
    do
        n = scratch ? rx_sys.read(c->fd, scratch, RX_SCRATCH_SIZE) : -1;
    while (n < 0 && errno == EINTR);
    if (n > 0)
        c->bytes_in += (size_t)n;
    else if (n == 0 || errno != EAGAIN)
        rx_conn_close_now(c, c->reason, c->err);
}

static void on_event(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    rx_conn *c = arg;
    if (c->state == RX_CONN_CONNECTING) {
        rx_connect_on_event(c, ready);
        return;
    }
    if (ready & RX_ERROR) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        rx_conn_close_now(c, reason_for(-soerr), soerr ? -soerr : -EIO);
        return;
    }
    if (c->lingering) {
        discard_input(c);
        return;
    }
    if ((ready & RX_WRITABLE) && c->waiting_write)
        flush(c, true);
    if ((ready & (RX_READABLE | RX_HUP)) && reading(c))
        handle_read(c);
}

static void on_idle(rx_timer *t, void *arg) {
    rx_conn *c = arg;
    if (c->lingering) {
        rx_conn_close_now(c, c->reason, c->err);
        return;
    }
    /* The timer runs about once per idle period: the moment to give back empty buffers. */
    if (!c->own_buffers) {
        rx_buffer_release_if_empty(&c->in);
        rx_buffer_release_if_empty(&c->out);
    }
    uint64_t now = rx_loop_now_ms(c->loop);
    uint64_t deadline = c->last_active + c->idle_ms;
    if (now >= deadline) {
        if (!c->cbs->on_timeout) {
            rx_conn_close_now(c, RX_CLOSE_TIMEOUT, -ETIMEDOUT);
            return;
        }
        touch(c);
        rx_timer_start(t, c->idle_ms, 0);
        c->cbs->on_timeout(c, c->arg);
        return;
    }
    /* Activity since the timer was armed only moved last_active: re-arm for what is left. */
    rx_timer_start(t, deadline - now, 0);
}

int rx_conn_set_idle_timeout(rx_conn *c, uint64_t ms) {
    if (c->state == RX_CONN_CLOSED)
        return -EPIPE;
    c->idle_ms = ms;
    if (ms == 0) {
        if (c->idle)
            rx_timer_stop(c->idle);
        return 0;
    }
    if (!c->idle && !(c->idle = rx_timer_new(c->loop, on_idle, c)))
        return -ENOMEM;
    touch(c);
    return rx_timer_start(c->idle, ms, 0);
}

rx_conn *rx_conn_create(rx_loop *loop, int fd, rx_conn_state state, const rx_conn_opts *opts,
                        const rx_conn_callbacks *cbs, void *arg) {
    static const rx_conn_callbacks no_callbacks;
    static const rx_conn_opts defaults;
    if (fd < 0) {
        errno = EINVAL;
        return NULL;
    }
    if (!opts)
        opts = &defaults;
    rx_conn *c = rx_sys.calloc(1, sizeof(*c));
    uint32_t flags = RX_CHANNEL_OWNS_FD | (opts->edge_triggered ? RX_CHANNEL_EDGE : 0);
    rx_channel *ch = c ? rx_channel_new(loop, fd, flags, on_event, c) : NULL;
    if (!ch) {
        rx_sys.free(c);
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->edge = opts->edge_triggered;
    c->own_buffers = opts->own_buffers;
    c->always_queue = opts->always_queue;
    c->loop = loop;
    c->ch = ch;
    c->fd = fd;
    c->state = state;
    c->cbs = cbs ? cbs : &no_callbacks;
    c->arg = arg;
    c->high_water = opts->high_water ? opts->high_water : DEFAULT_HIGH_WATER;
    c->low_water = opts->low_water ? opts->low_water : c->high_water / 4;
    int one = 1;
    /* Both fail harmlessly on a unix socket. */
    if (!opts->nagle)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opts->keepalive)
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    touch(c);
    int rc = opts->idle_timeout_ms ? rx_conn_set_idle_timeout(c, opts->idle_timeout_ms) : 0;
    if (rc == 0 && c->own_buffers &&
        (rx_buffer_reserve(&c->in, 4096) < 0 || rx_buffer_reserve(&c->out, 4096) < 0))
        rc = -ENOMEM;
    if (rc == 0)
        rc = rx_channel_set_interest(ch, state == RX_CONN_CONNECTING ? RX_WRITABLE : RX_READABLE);
    if (rc < 0) {
        /* Never handed out: no on_close is owed, the memory goes now. */
        rx_timer_free(c->idle);
        rx_buffer_free(&c->in);
        rx_buffer_free(&c->out);
        rx_channel_close(ch); /* closes fd */
        rx_sys.free(c);
        errno = -rc;
        return NULL;
    }
    rx_channel_set_destructor(ch, finalize);
    return c;
}

rx_conn *rx_conn_new(rx_loop *loop, int fd, const rx_conn_opts *opts, const rx_conn_callbacks *cbs,
                     void *arg) {
    return rx_conn_create(loop, fd, RX_CONN_OPEN, opts, cbs, arg);
}

int rx_conn_replace_fd(rx_conn *c, int fd) {
    uint32_t flags = RX_CHANNEL_OWNS_FD | (c->edge ? RX_CHANNEL_EDGE : 0);
    rx_channel *ch = rx_channel_new(c->loop, fd, flags, on_event, c);
    if (!ch) {
        close(fd);
        return -ENOMEM;
    }
    rx_channel_set_destructor(c->ch, NULL);
    rx_channel_close(c->ch);
    rx_channel_set_destructor(ch, finalize);
    c->ch = ch;
    c->fd = fd;
    update_interest(c);
    return c->state == RX_CONN_CLOSED ? c->err : 0;
}

void rx_conn_established(rx_conn *c) {
    c->state = c->shut_pending ? RX_CONN_HALF_CLOSED : RX_CONN_OPEN;
    touch(c);
    update_interest(c);
    if (c->state != RX_CONN_CLOSED && c->cbs->on_open)
        c->cbs->on_open(c, c->arg);
    /* What was sent or shut down while connecting happens now. */
    if (!closing_or_closed(c) && !c->waiting_write)
        flush(c, true);
}

void rx_conn_pause_read(rx_conn *c) {
    if (c->read_paused)
        return;
    c->read_paused = true;
    update_interest(c);
}

/* Input left in the buffer while reading was paused is handed over on the next iteration: the
 * peer may be waiting for our answer to it before sending anything that would wake us. */
static void on_kick(rx_timer *t, void *arg) {
    (void)t;
    rx_conn *c = arg;
    notify(c);
    if (!c->read_paused && !closing_or_closed(c) && rx_buffer_len(&c->in) > 0)
        deliver(c);
}

void rx_conn_resume_read(rx_conn *c) {
    if (!c->read_paused)
        return;
    c->read_paused = false;
    update_interest(c);
    if (rx_buffer_len(&c->in) > 0 && !closing_or_closed(c))
        arm_kick(c);
}

void rx_conn_shutdown(rx_conn *c) {
    if (closing_or_closed(c) || c->shut_pending)
        return;
    c->shut_pending = true;
    if (c->state == RX_CONN_OPEN)
        c->state = RX_CONN_HALF_CLOSED;
    if (rx_conn_queued(c) == 0 && c->state != RX_CONN_CONNECTING) {
        shutdown(c->fd, SHUT_WR);
        c->write_shut = true;
    }
}

void rx_conn_close(rx_conn *c) { close_graceful(c, RX_CLOSE_LOCAL); }

void rx_conn_abort(rx_conn *c) {
    if (c->state == RX_CONN_CLOSED)
        return;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    rx_conn_close_now(c, RX_CLOSE_LOCAL, 0);
}

rx_conn_state rx_conn_get_state(const rx_conn *c) { return c->state; }
rx_loop *rx_conn_loop(const rx_conn *c) { return c->loop; }
void *rx_conn_arg(const rx_conn *c) { return c->arg; }
void rx_conn_set_arg(rx_conn *c, void *arg) { c->arg = arg; }
int rx_conn_fd(const rx_conn *c) { return c->state == RX_CONN_CLOSED ? -1 : c->fd; }
unsigned long long rx_conn_bytes_in(const rx_conn *c) { return c->bytes_in; }
unsigned long long rx_conn_bytes_out(const rx_conn *c) { return c->bytes_out; }

int rx_conn_peer_addr(const rx_conn *c, rx_addr *out) {
    memset(out, 0, sizeof(*out));
    out->len = sizeof(out->u);
    if (c->state == RX_CONN_CLOSED)
        return -ENOTCONN;
    return getpeername(c->fd, &out->u.sa, &out->len) < 0 ? -errno : 0;
}

int rx_conn_local_addr(const rx_conn *c, rx_addr *out) {
    memset(out, 0, sizeof(*out));
    out->len = sizeof(out->u);
    if (c->state == RX_CONN_CLOSED)
        return -ENOTCONN;
    return getsockname(c->fd, &out->u.sa, &out->len) < 0 ? -errno : 0;
}
