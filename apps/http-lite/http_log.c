/* rx-http's access log. Each loop appends its lines to a buffer of its own and, before it polls,
 * hands them to the file in one write: inline, or with --io-threads as a work request, so that a
 * slow disk stalls no loop. Every write holds whole lines and the file is O_APPEND, so the lines
 * of several loops never mix. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "http_server.h"

/* A loop whose file does not keep up drops lines beyond this much waiting, rather than grow. */
#define LOG_MAX (4u << 20)

/* Room for a line's end: " status length\n" and snprintf's NUL. */
#define LINE_END 40

size_t http_log_prefix_size(const http_request *req) {
    return RX_ADDR_STRLEN + req->method_name.len + req->target.len + 16;
}

size_t http_log_prefix(rx_conn *c, const char *buf, const http_request *req, char *out,
                       size_t cap) {
    rx_addr peer;
    char who[RX_ADDR_STRLEN] = "-";
    if (rx_conn_peer_addr(c, &peer) == 0)
        rx_addr_format(&peer, who, sizeof(who));
    int n = snprintf(out, cap, "%s \"%.*s %.*s HTTP/1.%d\"", who, (int)req->method_name.len,
                     buf + req->method_name.off, (int)req->target.len, buf + req->target.off,
                     req->version_minor);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* Appends " status length\n" to the n bytes at the tail of b (reserved) and commits the line. */
static void end_line(rx_buffer *b, size_t n, int status, unsigned long long length) {
    n += (size_t)snprintf(rx_buffer_tail(b) + n, LINE_END, " %d %llu\n", status, length);
    rx_buffer_commit(b, n);
}

/* Room for a line whose prefix takes n bytes, or false (the line is dropped and counted). */
static bool room(http_worker *w, size_t n) {
    rx_buffer *b = w->log_fill;
    if (rx_buffer_len(b) + n + LINE_END <= LOG_MAX && rx_buffer_reserve(b, n + LINE_END) == 0)
        return true;
    w->log_dropped++;
    return false;
}

void http_log_line(http_worker *w, const char *prefix, size_t n, int status,
                   unsigned long long length) {
    if (!room(w, n))
        return;
    memcpy(rx_buffer_tail(w->log_fill), prefix, n);
    end_line(w->log_fill, n, status, length);
}

void http_log_request(http_worker *w, rx_conn *c, const char *buf, const http_request *req) {
    size_t cap = http_log_prefix_size(req);
    if (!room(w, cap))
        return;
    size_t n = http_log_prefix(c, buf, req, rx_buffer_tail(w->log_fill), cap);
    end_line(w->log_fill, n, w->last_status, w->last_length);
}

/* A failed write loses its lines: say so once per loop, and count them at exit with the rest. */
static void write_failed(http_worker *w, int err) {
    if (!w->log_warned)
        fprintf(stderr, "rx-http: access log: %s (lines are lost)\n", strerror(-err));
    w->log_warned = true;
}

static void write_out(void *arg) {
    http_worker *w = arg;
    w->log_err =
        rx_file_write_all(w->srv->log_fd, rx_buffer_peek(w->log_out), rx_buffer_len(w->log_out));
}

/* On the loop: a cancelled write (the pool is stopping) keeps its lines for the next flush, or for
 * http_log_cleanup. */
static void write_done(void *arg, int status) {
    http_worker *w = arg;
    w->log_writing = false;
    if (status < 0)
        return;
    if (w->log_err < 0)
        write_failed(w, w->log_err);
    rx_buffer_consume(w->log_out, rx_buffer_len(w->log_out));
    rx_buffer_release_if_empty(w->log_out);
}

/* Makes log_out the lines to write next: what a cancelled write kept, else the newest lines.
 * Returns false when there are none. */
static bool next_out(http_worker *w) {
    if (rx_buffer_len(w->log_out) == 0) {
        rx_buffer *t = w->log_out;
        w->log_out = w->log_fill;
        w->log_fill = t;
    }
    return rx_buffer_len(w->log_out) > 0;
}

void http_log_flush(void *worker) {
    http_worker *w = worker;
    if (w->log_writing || !next_out(w))
        return; /* a write is out: these lines wait for the next pass */
    if (w->srv->pool) {
        w->log_writing = rx_work_submit(w->srv->pool, w->loop, write_out, write_done, w, NULL) == 0;
        return; /* when the pool's queue is full, the next pass tries again */
    }
    write_out(w);
    write_done(w, 0);
}

/* After the loops and the pool: whatever is left goes out on this thread. */
void http_log_cleanup(http_server *srv) {
    unsigned long long dropped = 0;
    for (unsigned i = 0; i < srv->nworkers; i++) {
        http_worker *w = &srv->workers[i];
        while (srv->log_fd >= 0 && next_out(w)) {
            write_out(w);
            write_done(w, 0);
        }
        dropped += w->log_dropped;
        rx_buffer_free(&w->log_bufs[0]);
        rx_buffer_free(&w->log_bufs[1]);
    }
    if (dropped)
        fprintf(stderr, "rx-http: %llu access log lines dropped\n", dropped);
}
