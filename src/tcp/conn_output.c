/* rx_conn output queue: buffered bytes and file ranges (sendfile) in one order, written as far as
 * the socket takes them, a bounded amount per call so one fast peer cannot hold the loop. */
#include "conn_internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

/* A file range queued with rx_conn_sendfile; `before` counts the buffered bytes between the
 * previous range (or the queue head) and this one. */
struct rx_file_seg {
    int fd;
    off_t offset;
    size_t len;
    size_t before;
};

/* A ring of ranges, allocated with the first one and released with the last. */
struct rx_file_queue {
    size_t head, n, cap;
    size_t before_sum; /* sum of `before` over the ranges */
    size_t bytes;      /* sum of `len` */
    struct rx_file_seg seg[];
};

size_t rx_conn_file_bytes(const rx_conn *c) { return c->files ? c->files->bytes : 0; }

size_t rx_conn_queued(const rx_conn *c) { return rx_buffer_len(&c->out) + rx_conn_file_bytes(c); }

void rx_conn_release_files(rx_conn *c) {
    struct rx_file_queue *q = c->files;
    if (!q)
        return;
    for (size_t i = 0; i < q->n; i++)
        close(q->seg[(q->head + i) % q->cap].fd);
    rx_sys.free(q);
    c->files = NULL;
}

/* Whether this thread has SIGPIPE blocked by rx (sendfile_nosignal). */
static _Thread_local bool sigpipe_blocked;

/* sendfile has no MSG_NOSIGNAL: on a socket whose peer reset it, it fails with EPIPE and raises
 * SIGPIPE, which kills a process that does not ignore it. So the first file sent from a thread
 * blocks SIGPIPE in that thread for good (changing the mask around every call cost a fifth of the
 * rate of small files), and the SIGPIPE a failed call raised is taken back at once. */
static ssize_t sendfile_nosignal(int sock, int fd, off_t *offset, size_t n) {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    if (!sigpipe_blocked) {
        pthread_sigmask(SIG_BLOCK, &pipe, NULL);
        sigpipe_blocked = true;
    }
    ssize_t r = rx_sys.sendfile(sock, fd, offset, n);
    if (r < 0 && errno == EPIPE) {
        static const struct timespec now = {0, 0};
        while (sigtimedwait(&pipe, NULL, &now) < 0 && errno == EINTR) {
        }
        errno = EPIPE;
    }
    return r;
}

/* One sendfile of the range at the head of the queue. */
static ssize_t send_file_range(rx_conn *c, size_t cap) {
    struct rx_file_queue *q = c->files;
    struct rx_file_seg *seg = &q->seg[q->head];
    size_t chunk = seg->len < cap ? seg->len : cap;
    ssize_t n = sendfile_nosignal(rx_conn_sock(c), seg->fd, &seg->offset, chunk);
    if (n == 0) {
        errno = EIO; /* the file shrank under us: the promised bytes cannot come */
        return -1;
    }
    if (n > 0) {
        seg->len -= (size_t)n;
        q->bytes -= (size_t)n;
        if (seg->len == 0) {
            close(seg->fd);
            q->head = (q->head + 1) % q->cap;
            if (--q->n == 0)
                rx_conn_release_files(c);
        }
    }
    return n;
}

int rx_conn_write_queue(rx_conn *c, size_t cap) {
    size_t written = 0;
    while (rx_conn_queued(c) > 0) {
        if (written >= cap)
            return 1;
        struct rx_file_queue *q = c->files;
        struct rx_file_seg *seg = q ? &q->seg[q->head] : NULL;
        ssize_t n;
        if (seg && seg->before == 0) {
            n = send_file_range(c, cap - written);
        } else {
            size_t limit = seg ? seg->before : rx_buffer_len(&c->out);
            if (limit > cap - written)
                limit = cap - written;
            n = rx_sys.send(rx_conn_sock(c), rx_buffer_peek(&c->out), limit, MSG_NOSIGNAL);
            if (n > 0) {
                rx_buffer_consume(&c->out, (size_t)n);
                if (seg) {
                    seg->before -= (size_t)n;
                    q->before_sum -= (size_t)n;
                }
            }
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -errno;
        }
        c->bytes_out += (size_t)n;
        written += (size_t)n;
    }
    return 0;
}

/* Room for one more range (the ring unrolled into a bigger block when full). */
static int files_reserve(rx_conn *c) {
    struct rx_file_queue *q = c->files;
    if (q && q->n < q->cap)
        return 0;
    size_t cap = q ? q->cap * 2 : 2;
    struct rx_file_queue *nq = rx_sys.malloc(sizeof(*nq) + cap * sizeof(nq->seg[0]));
    if (!nq)
        return -ENOMEM;
    *nq = (struct rx_file_queue){.cap = cap};
    if (q) {
        for (size_t i = 0; i < q->n; i++)
            nq->seg[i] = q->seg[(q->head + i) % q->cap];
        nq->n = q->n;
        nq->before_sum = q->before_sum;
        nq->bytes = q->bytes;
        rx_sys.free(q);
    }
    c->files = nq;
    return 0;
}

/* Appends the range behind everything queued; the caller checked that sends are accepted.
 * Returns 0 or -ENOMEM (fd then still the caller's). */
int rx_conn_queue_file(rx_conn *c, int fd, off_t offset, size_t len) {
    if (files_reserve(c) < 0)
        return -ENOMEM;
    struct rx_file_queue *q = c->files;
    size_t before = rx_buffer_len(&c->out) - q->before_sum;
    q->seg[(q->head + q->n) % q->cap] =
        (struct rx_file_seg){.fd = fd, .offset = offset, .len = len, .before = before};
    q->n++;
    q->before_sum += before;
    q->bytes += len;
    return 0;
}
