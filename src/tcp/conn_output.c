/* rx_conn output queue: buffered bytes and file ranges (sendfile) in one order, written as far as
 * the socket takes them. */
#include "conn_internal.h"

#include <errno.h>
#include <limits.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

size_t rx_conn_queued(const rx_conn *c) { return rx_buffer_len(&c->out) + c->file_bytes; }

void rx_conn_release_files(rx_conn *c) {
    for (size_t i = 0; i < c->nsegs; i++)
        close(c->segs[(c->seg_head + i) % c->segs_cap].fd);
    rx_sys.free(c->segs);
    c->segs = NULL;
    c->nsegs = c->segs_cap = c->seg_head = 0;
    c->seg_before = c->file_bytes = 0;
}

/* Sends buffered bytes up to the next file range, then that range, and so on. Returns 0 when the
 * queue is empty or the socket is full, or a negative errno. */
int rx_conn_write_queue(rx_conn *c) {
    while (rx_conn_queued(c) > 0) {
        struct rx_file_seg *seg = c->nsegs ? &c->segs[c->seg_head] : NULL;
        ssize_t n;
        if (seg && seg->before == 0) {
            size_t chunk = seg->len > (size_t)INT_MAX ? (size_t)INT_MAX : seg->len;
            n = rx_sys.sendfile(c->fd, seg->fd, &seg->offset, chunk);
            if (n == 0)
                return -EIO; /* the file shrank under us: the promised bytes cannot come */
            if (n > 0) {
                seg->len -= (size_t)n;
                c->file_bytes -= (size_t)n;
                if (seg->len == 0) {
                    close(seg->fd);
                    c->seg_head = (c->seg_head + 1) % c->segs_cap;
                    c->nsegs--;
                }
            }
        } else {
            size_t limit = seg ? seg->before : rx_buffer_len(&c->out);
            n = rx_sys.send(c->fd, rx_buffer_peek(&c->out), limit, MSG_NOSIGNAL);
            if (n > 0) {
                rx_buffer_consume(&c->out, (size_t)n);
                if (seg) {
                    seg->before -= (size_t)n;
                    c->seg_before -= (size_t)n;
                }
            }
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -errno;
        }
        c->bytes_out += (size_t)n;
    }
    return 0;
}

int rx_conn_sendfile(rx_conn *c, int fd, off_t offset, size_t len) {
    if (!rx_conn_can_write(c)) {
        close(fd);
        return -EPIPE;
    }
    if (len == 0) {
        close(fd);
        return 0;
    }
    if (c->nsegs == c->segs_cap) {
        size_t cap = c->segs_cap ? c->segs_cap * 2 : 2;
        struct rx_file_seg *segs = rx_sys.malloc(cap * sizeof(*segs));
        if (!segs) {
            close(fd);
            return -ENOMEM;
        }
        for (size_t i = 0; i < c->nsegs; i++) /* unroll the ring into the new array */
            segs[i] = c->segs[(c->seg_head + i) % c->segs_cap];
        rx_sys.free(c->segs);
        c->segs = segs;
        c->segs_cap = cap;
        c->seg_head = 0;
    }
    size_t before = rx_buffer_len(&c->out) - c->seg_before;
    c->segs[(c->seg_head + c->nsegs) % c->segs_cap] =
        (struct rx_file_seg){.fd = fd, .offset = offset, .len = len, .before = before};
    c->nsegs++;
    c->seg_before += before;
    c->file_bytes += len;
    if (!c->in_data && !c->waiting_write)
        return rx_conn_flush(c);
    return 0;
}
