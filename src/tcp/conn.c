/* rx_conn: one stream connection as two sides, each a small state machine (conn_internal.h).
 *
 *   event                       read side            write side       then
 *   bytes read                  OPEN                 -                on_data
 *   on_data left max_input      OPEN -> FULL         -                on_input_full, or close
 *                                                                     (ERROR, -EMSGSIZE)
 *   input consumed below it     FULL -> OPEN         -                (in on_input_full or on_data)
 *   read returns 0              OPEN, DRAIN -> EOF   -                on_eof, or close (PEER)
 *   rx_conn_pause_read          OPEN, FULL -> PAUSED -
 *   rx_conn_resume_read         PAUSED -> OPEN       -                buffered input to on_data
 *                               (FULL while at the
 *                               limit); FULL -> OPEN
 *                               once below it
 *   rx_conn_shutdown            -                    OPEN -> FLUSH
 *   rx_conn_close               OPEN, PAUSED, FULL   OPEN -> FLUSH    close deadline armed,
 *                               -> DRAIN                              idle timeout stopped
 *   queue written               -                    FLUSH -> SHUT    shutdown(SHUT_WR)
 *   read EOF and write SHUT     -> CLOSED            -> CLOSED        fd closed
 *   error, rx_conn_abort, idle  -> CLOSED            -> CLOSED        fd closed
 *   timeout, close deadline
 *
 * A closing connection reads and drops what the peer still sends until its end of stream, so the
 * kernel never answers unread bytes with a reset that could destroy our last bytes in flight; the
 * close deadline bounds all of it. on_close runs at the end of the iteration in which the fd
 * closed (the channel's destructor), never inside a call of the user's.
 *
 * Reads go into the loop's scratch buffer and output built in on_data into the loop's output
 * scratch buffer, so a connection holds buffer memory only while a message is incomplete or
 * output waits for the socket. Callbacks owed where they cannot run (inside a call of the
 * user's) run from a deferred call before the loop polls again. */
#include "conn_internal.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scratch.h"

#define DEFAULT_HIGH_WATER (1024 * 1024)
#define DEFAULT_MAX_INPUT (1024 * 1024)
#define DEFAULT_CLOSE_MS 5000
/* Per event, an edge-triggered read stops after READ_CAP bytes and goes on before the next poll,
 * after the other ready connections had their turn (writes: WRITE_CAP, conn_write.c). */
#define READ_CAP (256 * 1024)
/* A leftover this small is copied out of a scratch buffer; a bigger one takes the buffer over. */
#define COPY_MAX 4096

static void on_event(rx_channel *ch, uint32_t ready, void *arg);

static void stop_timer(rx_timer *t) {
    if (t)
        rx_timer_stop(t);
}

static uint32_t clamp32(uint64_t v) { return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v; }

/* A read or write timer runs only while its direction can move; started, it counts from now. */
static void sync_one(rx_conn *c, rx_timer *t, uint32_t ms, bool on, uint64_t *last) {
    if (!t)
        return;
    if (!on || ms == 0) {
        rx_timer_stop(t);
    } else if (!rx_timer_active(t)) {
        *last = rx_loop_now_ms(rx_conn_loop_of(c));
        rx_timer_start(t, ms, 0);
    }
}

static void on_read_timeout(rx_timer *t, void *arg);
static void on_write_timeout(rx_timer *t, void *arg);

/* The timers' block with the read or the write timeout's timer in it. Returns 0 or -ENOMEM. */
static int need_timer(rx_conn *c, bool write) {
    if (!c->rw && !(c->rw = rx_sys.calloc(1, sizeof(*c->rw))))
        return -ENOMEM;
    rx_timer **t = write ? &c->rw->wr : &c->rw->rd;
    if (!*t &&
        !(*t = rx_timer_new(rx_conn_loop_of(c), write ? on_write_timeout : on_read_timeout, c)))
        return -ENOMEM;
    return 0;
}

static void sync_rw(rx_conn *c) {
    if (!c->rw && c->write_ms == 0)
        return;
    bool live = !rx_conn_closing(c) && !rx_conn_is_closed(c) && !rx_conn_connecting(c);
    bool writing = live && c->write_ms && rx_conn_writing(c) && rx_conn_queued(c) > 0;
    /* Output waits for the first time: the write timeout gets its timer now. */
    if (writing && (!c->rw || !c->rw->wr) && need_timer(c, true) < 0) {
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
        return;
    }
    struct rx_conn_rw *rw = c->rw;
    if (!rw)
        return;
    sync_one(c, rw->rd, rw->read_ms, live && c->rd == RD_OPEN, &rw->last_read);
    sync_one(c, rw->wr, c->write_ms, writing, &rw->last_write);
}

void rx_conn_update_interest(rx_conn *c) {
    if (rx_conn_is_closed(c) || rx_conn_connecting(c))
        return;
    uint32_t want = 0;
    if (c->rd == RD_OPEN || c->rd == RD_DRAIN)
        want |= RX_READABLE;
    /* Inside on_data, output waits for the callback to return: leave the write interest alone. */
    if (rx_conn_has(c, B_IN_DATA))
        want |= rx_channel_interest(c->ch) & RX_WRITABLE;
    else if (rx_conn_writing(c) && rx_conn_queued(c) > 0 && !rx_conn_has(c, B_OWE_WRITE))
        want |= RX_WRITABLE;
    int rc = rx_channel_set_interest(c->ch, want);
    if (rc < 0)
        rx_conn_close_now(c, RX_CLOSE_ERROR, rc);
    else
        sync_rw(c);
}

/* ---- buffers ---------------------------------------------------------------------------- */

/* Gives a scratch buffer back after its borrower is done with it. Bytes left in it stay with
 * `keep`: copied when few, else the borrower takes the memory over (as when it grew it). Returns
 * 0, or -ENOMEM when the copy failed (the bytes are lost). */
int rx_conn_unlend(rx_conn *c, rx_buffer *buf, int kind, rx_buffer *keep) {
    rx_loop *loop = rx_conn_loop_of(c);
    size_t len = rx_buffer_len(buf);
    if (buf->data != rx_loop_scratch(loop, kind) || len > COPY_MAX) {
        rx_loop_scratch_forget(loop, kind);
        *keep = *buf;
        return 0;
    }
    *keep = (rx_buffer)RX_BUFFER_INIT;
    return len > 0 ? rx_buffer_append(keep, rx_buffer_peek(buf), len) : 0;
}

/* Input kept between reads: an rx_buffer of its own, allocated only for an incomplete message. */
static void free_input(rx_conn *c) {
    if (!c->in)
        return;
    rx_buffer_free(c->in);
    rx_sys.free(c->in);
    c->in = NULL;
}

/* ---- closing ---------------------------------------------------------------------------- */

void rx_conn_close_now(rx_conn *c, rx_close_reason reason, int err) {
    if (rx_conn_is_closed(c))
        return;
    c->rd = RD_CLOSED;
    c->wr = WR_CLOSED;
    atomic_fetch_or_explicit(&c->refs, REF_CLOSED, memory_order_release);
    c->reason = reason;
    c->err = (uint32_t)-err & 0xfff;
    stop_timer(c->idle);
    stop_timer(c->close_timer);
    if (c->rw) {
        stop_timer(c->rw->rd);
        stop_timer(c->rw->wr);
    }
    if (rx_conn_has(c, B_OUT_LENT)) {
        /* The loop's memory, never ours to free; unless output outgrew it, which moved it: then
         * the loop's pointer is stale and the memory is ours (as rx_conn_unlend does). */
        c->bits &= ~B_OUT_LENT;
        rx_loop *loop = rx_conn_loop_of(c);
        if (c->out.data != rx_loop_scratch(loop, RX_SCRATCH_OUT)) {
            rx_loop_scratch_forget(loop, RX_SCRATCH_OUT);
            rx_buffer_free(&c->out);
        }
        c->out = (rx_buffer)RX_BUFFER_INIT;
    }
    rx_channel_close(c->ch); /* closes the fd; finalize runs at the end of the iteration */
}

rx_close_reason rx_conn_reason_for(int err) {
    return err == -ECONNRESET || err == -EPIPE ? RX_CLOSE_RESET : RX_CLOSE_ERROR;
}

/* The close of fd that follows sends a reset, not an orderly end of stream. */
static void reset_on_close(int fd) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

static void abort_now(rx_conn *c, rx_close_reason reason, int err) {
    if (rx_conn_is_closed(c))
        return;
    reset_on_close(rx_conn_sock(c));
    rx_conn_close_now(c, reason, err);
}

/* Closes once both sides ended. A peer that is quiet now may still send later; a close before
 * its end would answer that with a reset, which destroys what it has not read of ours yet. */
void rx_conn_maybe_finish(rx_conn *c) {
    if (c->wr == WR_SHUT && c->rd == RD_EOF)
        rx_conn_close_now(c, rx_conn_closing(c) ? (rx_close_reason)c->reason : RX_CLOSE_PEER,
                          rx_conn_err(c));
}

/* The close deadline counts from the close or from the last write progress, whichever is later:
 * a peer that reads what we queued keeps its download, one that does not is cut off. */
static void on_close_deadline(rx_timer *t, void *arg) {
    rx_conn *c = arg;
    uint64_t now = rx_loop_now_ms(rx_conn_loop_of(c));
    uint64_t deadline = c->last_active + c->close_ms;
    if (c->wr == WR_FLUSH && now < deadline) {
        rx_timer_start(t, deadline - now, 0);
        return;
    }
    /* Everything was written and our FIN sent: only the peer's end is missing, so close. */
    if (c->wr == WR_SHUT)
        rx_conn_close_now(c, (rx_close_reason)c->reason, rx_conn_err(c));
    else
        abort_now(c, RX_CLOSE_TIMEOUT, -ETIMEDOUT);
}

/* Starts a graceful close: no more input to on_data, no more sends, the queue goes out, then the
 * write side is shut and the peer's end awaited, all within ms. */
static void start_close(rx_conn *c, rx_close_reason reason, uint64_t ms) {
    if (rx_conn_is_closed(c) || rx_conn_closing(c))
        return;
    if (rx_conn_connecting(c) && rx_conn_queued(c) == 0) {
        rx_conn_close_now(c, reason, 0); /* nothing to deliver: cancel the connect */
        return;
    }
    c->reason = reason;
    c->err = 0;
    stop_timer(c->idle);
    c->close_ms = ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
    rx_conn_touch(c);
    if ((!c->close_timer &&
         !(c->close_timer = rx_timer_new(rx_conn_loop_of(c), on_close_deadline, c))) ||
        rx_timer_start(c->close_timer, ms, 0) < 0) {
        /* A close that cannot be bounded is not begun: what is queued is lost, an error (not
         * the orderly end the reason would claim). */
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
        return;
    }
    if (c->rd == RD_OPEN || c->rd == RD_PAUSED || c->rd == RD_FULL) {
        c->rd = RD_DRAIN;
        if (!rx_conn_has(c, B_IN_DATA)) /* else deliver drops it when on_data returns */
            free_input(c);
    }
    if (c->wr == WR_OPEN)
        c->wr = WR_FLUSH;
    /* Output appended inside on_data goes out when it returns, in one write with the rest. */
    if (c->wr == WR_SHUT)
        rx_conn_maybe_finish(c); /* shut before: only the read side was left */
    else if (!rx_conn_connecting(c) && !rx_conn_has(c, B_IN_DATA))
        rx_conn_write_out(c);
    rx_conn_update_interest(c);
}

void rx_conn_close(rx_conn *c) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    start_close(c, RX_CLOSE_LOCAL, c->close_ms);
}

void rx_conn_close_within(rx_conn *c, uint64_t ms) { start_close(c, RX_CLOSE_LOCAL, ms); }

void rx_conn_abort(rx_conn *c) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    abort_now(c, RX_CLOSE_LOCAL, 0);
}

/* ---- reading ---------------------------------------------------------------------------- */

/* After on_data (or on_high_water) built output: a high-water mark is judged on everything queued,
 * before the write, so a callback that stopped at its own limit always hears on_low_water. */
static void after_data(rx_conn *c) {
    if (!rx_conn_is_closed(c))
        rx_conn_notify(c);
    if (!rx_conn_is_closed(c)) {
        if (rx_conn_write_pending(c) || (rx_conn_has(c, B_ALWAYS_QUEUE) && rx_conn_queued(c) > 0))
            rx_conn_update_interest(c);
        else
            rx_conn_write_out(c);
    }
    rx_conn_unlend_out(c);
}

/* Bytes kept between on_data calls. */
static size_t input_len(const rx_conn *c) { return c->in ? rx_buffer_len(c->in) : 0; }

/* The input kept reached the limit: reading must stop until the owner consumes. */
static bool input_full(const rx_conn *c) {
    return c->max_input != NO_INPUT_LIMIT && input_len(c) >= c->max_input;
}

/* How many bytes one read may add to the input kept. */
static size_t input_room(const rx_conn *c) {
    return c->max_input == NO_INPUT_LIMIT ? SIZE_MAX : c->max_input - input_len(c);
}

/* on_data left the input at its limit: reading stops (the kernel keeps what the peer sends) and
 * the owner hears it, or, without on_input_full, the connection closes: a protocol that stops
 * consuming is a bug or an attack, and must not hang. */
static void input_at_limit(rx_conn *c) {
    c->rd = RD_FULL;
    if (!c->cbs->on_input_full) {
        rx_conn_close_now(c, RX_CLOSE_ERROR, -EMSGSIZE);
        return;
    }
    c->cbs->on_input_full(c, c->in, c->arg);
    if (rx_conn_is_closed(c))
        return;
    if (c->rd == RD_FULL && !input_full(c))
        c->rd = RD_OPEN; /* it consumed: reading goes on */
    if (c->in && rx_buffer_len(c->in) == 0 && !rx_conn_has(c, B_OWN_BUFFERS))
        free_input(c);
    rx_conn_update_interest(c);
}

/* After on_data: the input limit, judged on what it left. */
static void check_input(rx_conn *c) {
    if (input_full(c)) {
        input_at_limit(c);
    } else if (c->rd == RD_FULL) { /* a resume at the limit handed it over, and it consumed */
        c->rd = RD_OPEN;
        rx_conn_update_interest(c);
    }
}

/* on_data for the bytes in buf: c->in, or a scratch buffer that goes back to the loop after (what
 * on_data left in it is kept in an input buffer of the connection's own). Input memory is held
 * only for an incomplete message. */
static void deliver(rx_conn *c, rx_buffer *buf) {
    bool scratch = buf != c->in;
    c->in = buf;
    if (c->cbs->on_data) {
        c->bits |= B_IN_DATA;
        c->cbs->on_data(c, buf, c->arg);
        c->bits &= ~B_IN_DATA;
    } else {
        rx_buffer_consume(buf, rx_buffer_len(buf));
    }
    c->in = scratch ? NULL : buf;
    bool keep = !rx_conn_is_closed(c) && c->rd != RD_DRAIN &&
                (rx_buffer_len(buf) > 0 || rx_conn_has(c, B_OWN_BUFFERS));
    if (scratch) {
        rx_buffer kept;
        int rc = rx_conn_unlend(c, buf, RX_SCRATCH_IN, &kept);
        if (keep && rc == 0 && (c->in = rx_sys.malloc(sizeof(*c->in))) != NULL)
            *c->in = kept;
        else
            rx_buffer_free(&kept);
        if (keep && !c->in)
            rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
    } else if (!keep) {
        free_input(c);
    }
    after_data(c);
    /* Input fully consumed (the common case) costs one test. */
    if ((c->in && c->rd == RD_OPEN) || c->rd == RD_FULL)
        check_input(c);
}

/* Hands the input kept while reading was paused to on_data (rx_conn_resume_read owes it); at the
 * input limit too, where on_data may now consume it. */
static void deliver_owed(rx_conn *c) {
    c->bits &= ~B_OWE_INPUT;
    if ((c->rd == RD_OPEN || c->rd == RD_FULL) && c->in && rx_buffer_len(c->in) > 0)
        deliver(c, c->in);
}

/* The peer ended its stream. */
static void peer_eof(rx_conn *c) {
    bool was_draining = c->rd == RD_DRAIN;
    c->rd = RD_EOF;
    rx_conn_update_interest(c);
    if (was_draining || c->wr == WR_SHUT) {
        rx_conn_maybe_finish(c);
        return;
    }
    if (c->cbs->on_eof)
        c->cbs->on_eof(c, c->arg);
    else
        start_close(c, RX_CLOSE_PEER, c->close_ms);
}

/* One read of at most n bytes into buf's free space (made first). Returns bytes read, 0 at end
 * of stream, or a negative errno. */
static ssize_t read_into(rx_conn *c, char *buf, size_t n) {
    ssize_t r;
    do
        r = rx_sys.read(rx_conn_sock(c), buf, n);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

/* One read and its on_data (or, closing, its drop). Reading adds no more to the input kept than
 * fits under its limit. Returns the read's result. */
static ssize_t read_once(rx_conn *c) {
    rx_loop *loop = rx_conn_loop_of(c);
    char *scratch = NULL;
    ssize_t n;
    size_t room = c->rd == RD_OPEN ? input_room(c) : SIZE_MAX; /* closing: all is dropped */
    if (room == 0) { /* at the limit the read side is FULL; should a path miss that, stop here */
        c->rd = RD_FULL;
        rx_conn_update_interest(c);
        return -EAGAIN;
    }
    if (!c->in && (scratch = rx_loop_scratch(loop, RX_SCRATCH_IN)) == NULL) {
        rx_conn_close_now(c, RX_CLOSE_ERROR, -ENOMEM);
        return -ENOMEM;
    }
    if (scratch) {
        n = read_into(c, scratch, room < RX_SCRATCH_SIZE ? room : RX_SCRATCH_SIZE);
    } else if (room >= rx_buffer_writable(c->in) + RX_BUFFER_SPILL) {
        n = rx_buffer_read_fd(c->in, rx_conn_sock(c)); /* far from the limit */
    } else {
        /* Near it: one read of what fits (the buffer grows to the limit at most). */
        n = rx_buffer_reserve(c->in, room);
        if (n == 0 && (n = read_into(c, rx_buffer_tail(c->in), room)) > 0)
            rx_buffer_commit(c->in, (size_t)n);
    }
    if (n > 0) {
        c->bytes_in += (size_t)n;
        /* Bytes a closing connection drops are no progress: they must not extend its deadline. */
        if (c->rd == RD_OPEN)
            rx_conn_touch_read(c);
        if (c->rd == RD_OPEN && scratch) {
            rx_buffer tmp = {.data = scratch, .end = (size_t)n, .cap = RX_SCRATCH_SIZE};
            deliver(c, &tmp);
        } else if (c->rd == RD_OPEN) {
            deliver(c, c->in);
        } /* else closing: read and dropped */
    } else if (n == 0) {
        peer_eof(c);
    } else if (n != -EAGAIN) {
        rx_conn_close_now(
            c, rx_conn_closing(c) ? (rx_close_reason)c->reason : rx_conn_reason_for((int)n),
            (int)n);
    }
    return n;
}

/* Level-triggered, one read per readiness event keeps a busy peer from starving the others;
 * edge-triggered must read until EAGAIN, and past READ_CAP goes on before the next poll. */
static void read_in(rx_conn *c) {
    /* Input a resume owes the application goes first: a read could bring the peer's end of
     * stream, which must not overtake requests already here (the application may pause again). */
    if (rx_conn_has(c, B_OWE_INPUT))
        deliver_owed(c);
    if (c->rd != RD_OPEN && c->rd != RD_DRAIN)
        return;
    size_t total = 0;
    ssize_t n;
    do {
        n = read_once(c);
        if (n > 0)
            total += (size_t)n;
    } while (rx_conn_has(c, B_EDGE) && n > 0 && (c->rd == RD_OPEN || c->rd == RD_DRAIN) &&
             total < READ_CAP);
    if (rx_conn_has(c, B_EDGE) && n > 0 && (c->rd == RD_OPEN || c->rd == RD_DRAIN)) {
        c->bits |= B_OWE_READ;
        rx_channel_defer(c->ch);
    }
}

/* What a call of the user's left owed, before the loop polls again. */
static void on_deferred(rx_conn *c) {
    if (rx_conn_connecting(c))
        return; /* the connect's completion writes what is queued */
    c->bits &= ~B_OWE_WRITE;
    if (!rx_conn_waiting_write(c))
        rx_conn_write_out(c);
    if (rx_conn_has(c, B_OWE_READ) && !rx_conn_is_closed(c)) {
        c->bits &= ~B_OWE_READ;
        if (c->rd == RD_OPEN || c->rd == RD_DRAIN)
            read_in(c);
    }
    if (rx_conn_has(c, B_OWE_INPUT))
        deliver_owed(c);
}

static void on_event(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    rx_conn *c = arg;
    if (ready & RX_DEFERRED) {
        on_deferred(c);
    } else if (rx_conn_connecting(c)) {
        rx_connect_on_event(c, ready);
        return;
    } else if (ready & RX_ERROR) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        getsockopt(rx_conn_sock(c), SOL_SOCKET, SO_ERROR, &soerr, &len);
        rx_conn_close_now(c, rx_conn_reason_for(-soerr), soerr ? -soerr : -EIO);
        return;
    } else {
        if ((ready & RX_WRITABLE) && rx_conn_waiting_write(c))
            rx_conn_write_out(c);
        if ((ready & (RX_READABLE | RX_HUP)) && (c->rd == RD_OPEN || c->rd == RD_DRAIN))
            read_in(c);
    }
    if (!rx_conn_is_closed(c))
        rx_conn_notify(c);
}

/* ---- flow control and timeouts ---------------------------------------------------------- */

void rx_conn_pause_read(rx_conn *c) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    if (c->rd != RD_OPEN && c->rd != RD_FULL)
        return;
    c->rd = RD_PAUSED;
    rx_conn_update_interest(c);
}

/* Input left in the buffer while reading was paused is handed over before the next poll: the
 * peer may be waiting for our answer to it before sending anything that would wake us. Input at
 * its limit keeps reading off (RD_FULL): only on_data's or the owner's consuming reopens it. */
void rx_conn_resume_read(rx_conn *c) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    if (c->rd != RD_PAUSED && (c->rd != RD_FULL || input_full(c)))
        return;
    c->rd = input_full(c) ? RD_FULL : RD_OPEN;
    rx_conn_update_interest(c);
    if (c->in && rx_buffer_len(c->in) > 0) {
        c->bits |= B_OWE_INPUT;
        rx_channel_defer(c->ch);
    }
}

void rx_conn_shutdown(rx_conn *c) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    if (c->wr != WR_OPEN || rx_conn_closing(c))
        return;
    c->wr = WR_FLUSH;
    if (!rx_conn_connecting(c) && !rx_conn_has(c, B_IN_DATA))
        rx_conn_write_out(c);
}

/* A timer of one of the three timeouts went off at its deadline as armed. Activity since it was
 * armed only moved *last: it is re-armed for what is left. Else the timeout passed: the owner's
 * on_timeout decides (the timeout starts over first), or the connection closes. */
static void timeout_due(rx_conn *c, rx_timer *t, uint32_t ms, uint64_t *last,
                        rx_timeout_kind kind) {
    uint64_t now = rx_loop_now_ms(rx_conn_loop_of(c));
    uint64_t deadline = *last + ms;
    if (now < deadline) {
        rx_timer_start(t, deadline - now, 0);
        return;
    }
    if (!c->cbs->on_timeout) {
        rx_conn_close_now(c, RX_CLOSE_TIMEOUT, -ETIMEDOUT);
        return;
    }
    *last = now;
    rx_timer_start(t, ms, 0);
    c->cbs->on_timeout(c, kind, c->arg);
}

static void on_idle(rx_timer *t, void *arg) {
    rx_conn *c = arg;
    timeout_due(c, t, c->idle_ms, &c->last_active, RX_TIMEOUT_IDLE);
}

static void on_read_timeout(rx_timer *t, void *arg) {
    rx_conn *c = arg;
    timeout_due(c, t, c->rw->read_ms, &c->rw->last_read, RX_TIMEOUT_READ);
}

static void on_write_timeout(rx_timer *t, void *arg) {
    rx_conn *c = arg;
    timeout_due(c, t, c->write_ms, &c->rw->last_write, RX_TIMEOUT_WRITE);
}

int rx_conn_set_idle_timeout(rx_conn *c, uint64_t ms) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    if (rx_conn_is_closed(c) || rx_conn_closing(c))
        return -EPIPE; /* a closing connection is bounded by its close deadline */
    c->idle_ms = clamp32(ms);
    if (ms == 0) {
        stop_timer(c->idle);
        return 0;
    }
    if (!c->idle && !(c->idle = rx_timer_new(rx_conn_loop_of(c), on_idle, c)))
        return -ENOMEM;
    rx_conn_touch(c);
    return rx_timer_start(c->idle, c->idle_ms, 0);
}

int rx_conn_set_timeouts(rx_conn *c, uint64_t read_ms, uint64_t write_ms) {
    RX_LOOP_THREAD(rx_conn_loop_of(c));
    if (rx_conn_is_closed(c) || rx_conn_closing(c))
        return -EPIPE;
    /* The read timer runs whenever reading is on: made now. The write timer is made once output
     * waits (sync_rw), unless some waits already. */
    if ((read_ms && need_timer(c, false) < 0) ||
        (write_ms && rx_conn_queued(c) > 0 && need_timer(c, true) < 0))
        return -ENOMEM;
    c->write_ms = clamp32(write_ms);
    if (c->rw) {
        c->rw->read_ms = clamp32(read_ms);
        stop_timer(c->rw->rd); /* so that sync_rw starts each over from now */
        stop_timer(c->rw->wr);
    }
    sync_rw(c);
    return 0;
}

/* The read and write timeouts' memory. */
static void free_rw(rx_conn *c) {
    if (!c->rw)
        return;
    rx_timer_free(c->rw->rd);
    rx_timer_free(c->rw->wr);
    rx_sys.free(c->rw);
    c->rw = NULL;
}

/* ---- life --------------------------------------------------------------------------------- */

/* Drops one reference; the last one frees the memory (the channel's allocation). */
static void drop_ref(rx_conn *c) {
    if ((atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) & ~REF_CLOSED) == 1)
        rx_channel_free_owner(c->ch);
}

/* The channel destructor: the end of the iteration in which the connection closed, or
 * rx_loop_free. The memory goes with the loop's reference, unless another thread holds one. */
static void finalize(void *arg) {
    rx_conn *c = arg;
    if (!rx_conn_is_closed(c)) /* released by rx_loop_free while open */
        rx_conn_close_now(c, RX_CLOSE_LOCAL, 0);
    rx_loop_count_conn(rx_conn_loop_of(c), -1);
    if (c->cbs->on_close)
        c->cbs->on_close(c, (rx_close_reason)c->reason, rx_conn_err(c), c->arg);
    /* After on_close, so that rx_conn_server works there; a server freed meanwhile cleared it. */
    if (c->owner)
        rx_server_conn_released(c->owner, c);
    rx_connect_release(c);
    rx_timer_free(c->idle);
    rx_timer_free(c->close_timer);
    free_rw(c);
    free_input(c);
    rx_buffer_free(&c->out);
    rx_conn_release_files(c);
    drop_ref(c);
}

/* The destructor of a connection that was never handed out. */
static void free_unopened(void *arg) {
    rx_conn *c = arg;
    rx_channel_free_owner(c->ch);
}

void rx_conn_ref(rx_conn *c) { atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); }

void rx_conn_unref(rx_conn *c) { drop_ref(c); }

/* A send from another thread, on its way to the connection's loop. */
struct async_send {
    rx_conn *c;
    rx_send_done_fn done;
    void *arg;
    size_t n;
    char data[];
};

static void async_finish(struct async_send *a, int status) {
    if (a->done)
        a->done(a->c, status, a->arg);
    drop_ref(a->c);
    rx_sys.free(a);
}

static void async_run(void *arg) {
    struct async_send *a = arg;
    async_finish(a, rx_conn_is_closed(a->c) ? -EPIPE : rx_conn_send(a->c, a->data, a->n));
}

static void async_drop(void *arg) { async_finish(arg, -ECANCELED); }

int rx_conn_send_async(rx_conn *c, const void *data, size_t n, rx_send_done_fn done, void *arg) {
    if (atomic_load_explicit(&c->refs, memory_order_acquire) & REF_CLOSED)
        return -EPIPE;
    struct async_send *a = n <= SIZE_MAX - sizeof(*a) ? rx_sys.malloc(sizeof(*a) + n) : NULL;
    if (!a)
        return -ENOMEM;
    *a = (struct async_send){.c = c, .done = done, .arg = arg, .n = n};
    memcpy(a->data, data, n);
    rx_conn_ref(c);
    int rc = rx_loop_post_drop(rx_conn_loop_of(c), async_run, async_drop, a);
    if (rc < 0) {
        drop_ref(c);
        rx_sys.free(a);
    }
    return rc;
}

/* The address a PROXY header gave, in the connection's allocation behind the struct: only
 * connections that have one pay for it. */
struct conn_peer {
    socklen_t len;
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } u;
};

static bool keeps_peer(const rx_addr *peer) {
    return peer && (peer->u.sa.sa_family == AF_INET || peer->u.sa.sa_family == AF_INET6) &&
           peer->len <= sizeof(((struct conn_peer *)0)->u);
}

rx_conn *rx_conn_create(rx_loop *loop, int fd, bool connecting, const rx_conn_opts *opts,
                        const rx_conn_callbacks *cbs, void *arg, const rx_addr *peer) {
    static const rx_conn_callbacks no_callbacks;
    static const rx_conn_opts defaults;
    if (fd < 0) {
        errno = EINVAL;
        return NULL;
    }
    if (!opts)
        opts = &defaults;
    rx_conn *c = NULL;
    uint32_t flags = RX_CHANNEL_OWNS_FD | (opts->tuning.edge_triggered ? RX_CHANNEL_EDGE : 0);
    bool own_peer = keeps_peer(peer);
    size_t size = sizeof(*c) + (own_peer ? sizeof(struct conn_peer) : 0);
    rx_channel *ch = rx_channel_new_owner(loop, fd, flags, on_event, size, (void **)&c);
    /* A connection that could not be made ends with a reset: its peer must not take it for an
     * orderly end (an accepted client would see its request answered by a clean close). */
    if (!ch) {
        reset_on_close(fd);
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->ch = ch;
    atomic_init(&c->refs, 1); /* the loop's */
    c->reason = CLOSE_NONE;
    c->bits = (opts->tuning.edge_triggered ? B_EDGE : 0) |
              (opts->tuning.own_buffers ? B_OWN_BUFFERS : 0) |
              (opts->tuning.always_queue ? B_ALWAYS_QUEUE : 0);
    if (own_peer) {
        struct conn_peer *p = (struct conn_peer *)(c + 1);
        p->len = peer->len;
        memcpy(&p->u, &peer->u, peer->len);
        c->bits |= B_PEER;
    }
    c->cbs = cbs ? cbs : &no_callbacks;
    c->arg = arg;
    /* Marks beyond 4 GiB make no sense for one connection's queue: clamped, they fit 32 bits. */
    c->high_water = opts->high_water ? clamp32(opts->high_water) : DEFAULT_HIGH_WATER;
    c->low_water = opts->low_water ? clamp32(opts->low_water) : c->high_water / 4;
    c->close_ms = clamp32(opts->close_timeout_ms ? opts->close_timeout_ms : DEFAULT_CLOSE_MS);
    /* Limits from 4 GiB - 1 up are none: a connection keeping that much is not held back. */
    c->max_input = opts->max_input ? clamp32(opts->max_input) : DEFAULT_MAX_INPUT;
    int one = 1;
    /* Both fail harmlessly on a unix socket. */
    if (!opts->nagle)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opts->keepalive)
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    rx_conn_touch(c);
    int rc = opts->idle_timeout_ms ? rx_conn_set_idle_timeout(c, opts->idle_timeout_ms) : 0;
    if (rc == 0)
        rc = rx_conn_set_timeouts(c, opts->read_timeout_ms, opts->write_timeout_ms);
    if (rc == 0 && opts->tuning.own_buffers &&
        (!(c->in = rx_sys.calloc(1, sizeof(*c->in))) || rx_buffer_reserve(c->in, 4096) < 0 ||
         rx_buffer_reserve(&c->out, 4096) < 0))
        rc = -ENOMEM;
    if (rc == 0 && !connecting)
        rc = rx_channel_set_interest(ch, RX_READABLE);
    if (rc < 0) {
        /* Never handed out: no on_close is owed, only the memory. */
        rx_timer_free(c->idle);
        free_rw(c);
        free_input(c);
        rx_buffer_free(&c->out);
        rx_channel_set_destructor(ch, free_unopened);
        reset_on_close(fd);
        rx_channel_close(ch); /* closes fd */
        errno = -rc;
        return NULL;
    }
    rx_loop_count_conn(loop, 1);
    rx_channel_set_destructor(ch, finalize);
    return c;
}

rx_conn *rx_conn_new(rx_loop *loop, int fd, const rx_conn_opts *opts, const rx_conn_callbacks *cbs,
                     void *arg) {
    return rx_conn_create(loop, fd, false, opts, cbs, arg, NULL);
}

rx_conn *rx_conn_next(rx_loop *loop, rx_conn *c) {
    rx_channel *ch = rx_channel_next(loop, c ? c->ch : NULL, on_event);
    return ch ? rx_channel_arg(ch) : NULL;
}

rx_conn *rx_conn_next_closed(rx_loop *loop, rx_conn *c) {
    rx_channel *ch = rx_channel_next_closed(loop, c ? c->ch : NULL, on_event);
    return ch ? rx_channel_arg(ch) : NULL;
}

void rx_conn_replace_fd(rx_conn *c, int fd) { rx_channel_replace_fd(c->ch, fd); }

void rx_conn_established(rx_conn *c) {
    rx_conn_touch(c);
    rx_conn_update_interest(c);
    if (!rx_conn_closing(c) && c->cbs->on_open)
        c->cbs->on_open(c, c->arg);
    /* What was sent, shut down or closed while connecting happens now. */
    if (!rx_conn_is_closed(c) && !rx_conn_waiting_write(c))
        rx_conn_write_out(c);
    if (!rx_conn_is_closed(c))
        rx_conn_notify(c);
}

rx_conn_state rx_conn_get_state(const rx_conn *c) {
    if (rx_conn_is_closed(c))
        return RX_CONN_CLOSED;
    if (rx_conn_closing(c))
        return RX_CONN_CLOSING;
    if (rx_conn_connecting(c))
        return RX_CONN_CONNECTING;
    if ((c->rd == RD_OPEN || c->rd == RD_PAUSED || c->rd == RD_FULL) && c->wr == WR_OPEN)
        return RX_CONN_OPEN;
    return RX_CONN_HALF_CLOSED;
}

unsigned rx_conn_ended(const rx_conn *c) {
    return (c->rd == RD_OPEN || c->rd == RD_PAUSED || c->rd == RD_FULL ? 0 : RX_CONN_READ_ENDED) |
           (c->wr == WR_OPEN && !rx_conn_closing(c) ? 0 : RX_CONN_WRITE_ENDED);
}

static rx_buffer empty_input; /* what rx_conn_input shows while nothing is buffered */

rx_buffer *rx_conn_input(rx_conn *c) { return c->in ? c->in : &empty_input; }
rx_loop *rx_conn_loop(const rx_conn *c) { return rx_conn_loop_of(c); }
void *rx_conn_arg(const rx_conn *c) { return c->arg; }
void rx_conn_set_arg(rx_conn *c, void *arg) { c->arg = arg; }
int rx_conn_fd(const rx_conn *c) { return rx_conn_is_closed(c) ? -1 : rx_conn_sock(c); }
unsigned long long rx_conn_bytes_in(const rx_conn *c) { return c->bytes_in; }
unsigned long long rx_conn_bytes_out(const rx_conn *c) { return c->bytes_out; }

static int sock_addr(const rx_conn *c, rx_addr *out,
                     int (*get)(int, struct sockaddr *, socklen_t *)) {
    memset(out, 0, sizeof(*out));
    out->len = sizeof(out->u);
    if (rx_conn_is_closed(c))
        return -ENOTCONN;
    return get(rx_conn_sock(c), &out->u.sa, &out->len) < 0 ? -errno : 0;
}

int rx_conn_peer_addr(const rx_conn *c, rx_addr *out) {
    if (!rx_conn_has(c, B_PEER) || rx_conn_is_closed(c))
        return sock_addr(c, out, getpeername);
    const struct conn_peer *p = (const struct conn_peer *)(c + 1);
    memset(out, 0, sizeof(*out));
    memcpy(&out->u, &p->u, p->len);
    out->len = p->len;
    return 0;
}
int rx_conn_local_addr(const rx_conn *c, rx_addr *out) { return sock_addr(c, out, getsockname); }
