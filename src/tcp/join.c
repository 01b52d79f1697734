/* rx_conn_join: two connections of one loop as a two-way pipe. The join takes both connections'
 * callbacks and args over; each callback below acts on "this" side (the connection it was called
 * for) and "the other" side:
 *
 *   callback of this side       then
 *   on_open                     (a connect under way at the join completed) note it for on_end
 *   on_data                     send the bytes to the other (at once when nothing is queued
 *                               there, from the loop's scratch buffer), consume them
 *   on_high_water               the other stops reading (it feeds this side's queue)
 *   on_low_water                the other reads again
 *   on_eof                      shut the other's write side once its queue is written
 *   on_stop                     close this side gracefully
 *   on_close                    RESET: abort the other; PEER with the other's stream ended too:
 *                               shut the other, which then closes with PEER as well; any other
 *                               case: close the other gracefully. The second on_close ends the
 *                               join (on_end).
 *
 * Nothing runs inside rx_conn_join but its own bookkeeping: input buffered before the join is
 * handed to on_data by a resume (from the loop), except on a side whose peer already ended its
 * stream, whose input is sent at once, followed by the shutdown of the other side. */
#include <rx/join.h>

#include <errno.h>

#include "conn_internal.h"

struct rx_join {
    rx_conn *c[2];   /* a, b; c[i] must not be touched once closed[i] (its memory is gone) */
    bool closed[2];  /* on_close ran */
    rx_join_end end; /* reasons, errs and bytes, for on_end */
    void (*on_end)(const rx_join_end *end, void *arg);
    void *arg;
};

static int side_of(const struct rx_join *j, const rx_conn *c) { return c == j->c[1]; }

/* The other side of c, or NULL once it closed. */
static rx_conn *other_of(const struct rx_join *j, const rx_conn *c) {
    int o = 1 - side_of(j, c);
    return j->closed[o] ? NULL : j->c[o];
}

/* Sends what side i read to the other side and consumes it, whatever becomes of it: when the
 * other cannot take it (closing, or its write side shut) it is dropped, as a closing connection
 * drops what its peer still sends. A send that could queue nothing (-ENOMEM) breaks the stream:
 * the other side is closed at once with the error, and this one follows from its on_close. */
static void forward(struct rx_join *j, int i, rx_buffer *in) {
    size_t n = rx_buffer_len(in);
    if (n == 0)
        return;
    rx_conn *o = j->closed[1 - i] ? NULL : j->c[1 - i];
    if (o) {
        int rc = rx_conn_send(o, rx_buffer_peek(in), n);
        if (rc == 0)
            j->end.bytes[i] += n;
        else if (rc == -ENOMEM && !rx_conn_is_closed(o))
            rx_conn_close_now(o, RX_CLOSE_ERROR, -ENOMEM);
        /* -EPIPE: dropped; a failed write closed o, whose on_close follows. */
    }
    rx_buffer_consume(in, n);
}

static void join_data(rx_conn *c, rx_buffer *in, void *arg) {
    struct rx_join *j = arg;
    forward(j, side_of(j, c), in);
}

static void join_high(rx_conn *c, size_t queued, void *arg) {
    (void)queued;
    rx_conn *o = other_of(arg, c);
    if (o)
        rx_conn_pause_read(o);
}

static void join_low(rx_conn *c, size_t queued, void *arg) {
    (void)queued;
    rx_conn *o = other_of(arg, c);
    if (o)
        rx_conn_resume_read(o);
}

static void join_eof(rx_conn *c, void *arg) {
    rx_conn *o = other_of(arg, c);
    if (o)
        rx_conn_shutdown(o);
}

/* A connect still under way at the join completed. */
static void join_open(rx_conn *c, void *arg) {
    struct rx_join *j = arg;
    j->end.opened[side_of(j, c)] = true;
}

static void join_stop(rx_conn *c, void *arg) {
    (void)arg;
    rx_conn_close(c);
}

/* This side closed for `reason`; the other is still open. */
static void pass_close(rx_conn *o, rx_close_reason reason) {
    if (reason == RX_CLOSE_RESET)
        rx_conn_abort(o); /* the reset passes on */
    else if (reason == RX_CLOSE_PEER && (rx_conn_ended(o) & RX_CONN_READ_ENDED))
        rx_conn_shutdown(o); /* both streams ended: o writes what is queued and closes (PEER) */
    else
        rx_conn_close(o);
}

static void join_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    struct rx_join *j = arg;
    int i = side_of(j, c);
    j->closed[i] = true;
    j->end.reason[i] = reason;
    j->end.err[i] = err;
    if (!j->closed[1 - i]) {
        pass_close(j->c[1 - i], reason);
        return;
    }
    if (j->on_end)
        j->on_end(&j->end, j->arg);
    rx_sys.free(j);
}

static const rx_conn_callbacks join_cbs = {
    .on_open = join_open,
    .on_data = join_data,
    .on_high_water = join_high,
    .on_low_water = join_low,
    .on_eof = join_eof,
    .on_stop = join_stop,
    .on_close = join_close,
};

/* Side i's start in the join: input it buffered goes first, and it reads, unless the other side's
 * queue is above its high-water mark already (then its on_low_water resumes it). */
static void start_side(struct rx_join *j, int i) {
    rx_conn *c = j->c[i], *o = j->c[1 - i];
    if (rx_conn_is_closed(c) || rx_conn_is_closed(o))
        return; /* the other side's start failed a send: on_close follows */
    rx_buffer *in = rx_conn_input(c);
    if (rx_conn_ended(c) & RX_CONN_READ_ENDED) {
        /* Its peer ended before the join: no on_data or on_eof will come for it. */
        forward(j, i, in);
        if (!rx_conn_is_closed(o))
            rx_conn_shutdown(o);
        return;
    }
    bool held = rx_conn_has(o, B_ABOVE_HIGH);
    /* A pause and a resume hand buffered input to on_data before the loop polls again. */
    if (held || rx_buffer_len(in) > 0)
        rx_conn_pause_read(c);
    if (!held)
        rx_conn_resume_read(c);
}

static bool gone(const rx_conn *c) { return rx_conn_is_closed(c) || rx_conn_closing(c); }

int rx_conn_join(rx_conn *a, rx_conn *b, const rx_join_opts *opts) {
    if (!a || !b || a == b || rx_conn_loop_of(a) != rx_conn_loop_of(b))
        return -EINVAL;
    RX_LOOP_THREAD(rx_conn_loop_of(a));
    if (gone(a) || gone(b))
        return -EPIPE;
    if (a->cbs == &join_cbs || b->cbs == &join_cbs)
        return -EBUSY;
    struct rx_join *j = rx_sys.calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->c[0] = a;
    j->c[1] = b;
    j->end.opened[0] = rx_conn_get_state(a) != RX_CONN_CONNECTING;
    j->end.opened[1] = rx_conn_get_state(b) != RX_CONN_CONNECTING;
    if (opts) {
        j->on_end = opts->on_end;
        j->arg = opts->arg;
    }
    rx_conn_set_callbacks(a, &join_cbs, j);
    rx_conn_set_callbacks(b, &join_cbs, j);
    start_side(j, 0);
    start_side(j, 1);
    return 0;
}
