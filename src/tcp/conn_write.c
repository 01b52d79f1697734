/* rx_conn's write side: send-now-else-queue, output built in place (in the loop's output scratch
 * buffer while inside on_data), the bounded write of the queue with its consequences (shutting a
 * flushing side, memory given back, EPOLLOUT only while output waits) and the water marks. */
#include "conn_internal.h"

#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <unistd.h>

/* Per call, a write of the queue stops after WRITE_CAP bytes; the rest goes out from a deferred
 * call before the next poll, after the other ready connections had their turn, so one fast peer
 * gets at most WRITE_CAP (plus one syscall's worth) per iteration. */
#define WRITE_CAP (1024 * 1024)

/* The buffer output goes into now: inside on_data, an empty connection borrows the loop's output
 * scratch buffer, so a response that leaves at once never needs memory of its own. */
static rx_buffer *outbuf(rx_conn *c) {
    if (rx_conn_has(c, B_IN_DATA) && c->out.cap == 0 &&
        !(c->bits & (B_OWN_BUFFERS | B_ALWAYS_QUEUE))) {
        char *s = rx_loop_scratch(rx_conn_loop_of(c), RX_SCRATCH_OUT);
        if (s) {
            c->out = (rx_buffer){.data = s, .cap = RX_SCRATCH_SIZE};
            c->bits |= B_OUT_LENT;
        }
    }
    return &c->out;
}

void rx_conn_unlend_out(rx_conn *c) {
    if (!rx_conn_has(c, B_OUT_LENT))
        return;
    c->bits &= ~B_OUT_LENT;
    rx_buffer lent = c->out;
    if (rx_conn_unlend(c, &lent, RX_SCRATCH_OUT, &c->out) < 0)
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
}

/* Writes what is queued, at most WRITE_CAP bytes, then settles the write side: memory of an empty
 * queue goes back, a flushing side is shut, the write interest follows the queue. */
void rx_conn_write_out(rx_conn *c) {
    if (rx_conn_is_closed(c) || rx_conn_connecting(c) || !rx_conn_writing(c))
        return;
    size_t before = rx_conn_queued(c);
    bool was_waiting = rx_conn_waiting_write(c);
    int rc = before > 0 ? rx_conn_write_queue(c, WRITE_CAP) : 0;
    if (rc < 0) {
        rx_conn_close_now(c, rx_conn_reason_for(rc), rc);
        return;
    }
    size_t queued = rx_conn_queued(c);
    if (queued < before)
        rx_conn_touch_write(c);
    if (queued == 0) {
        if (!rx_conn_has(c, B_OWN_BUFFERS) && !rx_conn_has(c, B_OUT_LENT))
            rx_buffer_free(&c->out);
        if (was_waiting && c->cbs->on_drain)
            c->bits |= B_OWE_DRAIN;
        if (c->wr == WR_FLUSH) {
            shutdown(rx_conn_sock(c), SHUT_WR);
            c->wr = WR_SHUT;
            rx_conn_maybe_finish(c);
            if (rx_conn_is_closed(c))
                return;
        }
    }
    /* Not EPOLLOUT: the socket has room, and this iteration's poll would report it again. */
    if (rc == 1) {
        c->bits |= B_OWE_WRITE;
        rx_channel_defer(c->ch);
    }
    rx_conn_update_interest(c);
}

/* on_high_water when the queue rose above the mark; a closing connection owes only on_close. */
void rx_conn_check_high(rx_conn *c) {
    size_t q = rx_conn_queued(c);
    if (rx_conn_has(c, B_ABOVE_HIGH) || q <= c->high_water || rx_conn_closing(c) ||
        rx_conn_is_closed(c))
        return;
    c->bits |= B_ABOVE_HIGH;
    if (c->cbs->on_high_water)
        c->cbs->on_high_water(c, q, c->arg);
}

/* The water marks and on_drain, as things stand; only where the loop called us (never inside a
 * call of the user's). */
void rx_conn_notify(rx_conn *c) {
    rx_conn_check_high(c);
    size_t q = rx_conn_queued(c);
    if (rx_conn_has(c, B_ABOVE_HIGH) && q <= c->low_water) {
        c->bits &= ~B_ABOVE_HIGH;
        if (c->cbs->on_low_water && !rx_conn_is_closed(c) && !rx_conn_closing(c))
            c->cbs->on_low_water(c, q, c->arg);
    }
    if (rx_conn_has(c, B_OWE_DRAIN)) {
        c->bits &= ~B_OWE_DRAIN;
        if (!rx_conn_is_closed(c) && !rx_conn_closing(c) && rx_conn_queued(c) == 0)
            c->cbs->on_drain(c, c->arg);
    }
}

/* After a call of the user's wrote: on_low_water and on_drain come before the next poll. */
static void notify_later(rx_conn *c) {
    if ((rx_conn_has(c, B_ABOVE_HIGH) && rx_conn_queued(c) <= c->low_water) ||
        rx_conn_has(c, B_OWE_DRAIN))
        rx_channel_defer(c->ch);
}

static bool rx_conn_can_write(const rx_conn *c) { return c->wr == WR_OPEN && !rx_conn_closing(c); }

int rx_conn_sendv(rx_conn *c, const struct iovec *iov, int iovcnt) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
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
    if (!rx_conn_connecting(c) && rx_conn_queued(c) == 0 && total > 0 &&
        !rx_conn_has(c, B_ALWAYS_QUEUE)) {
        struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t n;
        do
            n = rx_sys.sendmsg(rx_conn_sock(c), &msg, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN) {
            int err = -errno;
            rx_conn_close_now(c, rx_conn_reason_for(err), err);
            return err;
        }
        if (n > 0) {
            written = (size_t)n;
            c->bytes_out += written;
            rx_conn_touch_write(c);
        }
    }
    if (written == total)
        return 0;
    rx_buffer *out = outbuf(c);
    if (rx_buffer_reserve(out, total - written) < 0) {
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
        rx_buffer_append(out, (const char *)iov[i].iov_base + skip, len - skip);
        skip = 0;
    }
    if (!rx_conn_has(c, B_IN_DATA))
        rx_conn_update_interest(
            c); /* the socket is full (or we queue on purpose): wait for EPOLLOUT */
    /* A producer hears at once that it should stop; if its callback closed the connection, the
     * bytes will not arrive and the caller is told so. */
    rx_conn_check_high(c);
    return rx_conn_is_closed(c) || rx_conn_closing(c) ? -EPIPE : 0;
}

int rx_conn_send(rx_conn *c, const void *data, size_t n) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    struct iovec iov = {.iov_base = (void *)data, .iov_len = n};
    return rx_conn_sendv(c, &iov, 1);
}

int rx_conn_sendfile(rx_conn *c, int fd, off_t offset, size_t len) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    if (!rx_conn_can_write(c) || len == 0 || rx_conn_queue_file(c, fd, offset, len) < 0) {
        close(fd);
        return !rx_conn_can_write(c) ? -EPIPE : len == 0 ? 0 : -ENOMEM;
    }
    int rc = rx_conn_has(c, B_IN_DATA) ? 0 : rx_conn_flush(c);
    rx_conn_check_high(c);
    return rc == 0 && (rx_conn_is_closed(c) || rx_conn_closing(c)) ? -EPIPE : rc;
}

int rx_conn_flush(rx_conn *c) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    if (rx_conn_is_closed(c))
        return c->err ? rx_conn_err(c) : -EPIPE;
    if (!rx_conn_waiting_write(c))
        rx_conn_write_out(c);
    if (rx_conn_is_closed(c))
        return c->err ? rx_conn_err(c) : -EPIPE;
    notify_later(c);
    return 0;
}

rx_buffer *rx_conn_output(rx_conn *c) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    /* Appended outside on_data: written before the loop polls again. */
    if (!rx_conn_has(c, B_IN_DATA) && !rx_conn_is_closed(c))
        rx_channel_defer(c->ch);
    return outbuf(c);
}
