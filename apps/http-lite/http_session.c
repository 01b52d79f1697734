/* One HTTP/1.1 connection: parse pipelined requests out of the input buffer, read bodies
 * (Content-Length or chunked, with 100-continue), route, and append every response to the output
 * buffer so all answers to one read leave in one write. Backpressure pauses a client that does not
 * read its responses; a header that does not arrive in time gets 408. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_server.h"

typedef enum { TIMEOUT_NONE, TIMEOUT_HEADER, TIMEOUT_IDLE } timeout_mode;

struct file_job;

typedef struct session {
    char kind; /* HTTP_ARG_SESSION, first: see the arg life below */
    http_worker *w;
    rx_conn *conn;
    http_parser parser;
    http_request *req; /* borrowed while a request spans reads; NULL otherwise */
    bool in_body;      /* head parsed, waiting for the body */
    bool sent_continue;
    bool paused;          /* stopped processing for backpressure */
    struct file_job *job; /* a static file's lookup is on the work pool: reading waits for it */
    http_chunked chunk;
    uint64_t header_deadline_ms; /* when the current head must be complete; 0: no head started */
    timeout_mode timeout;
    unsigned long long seen_in, seen_out; /* connection byte counters already in the stats */
} session;

/* Sessions and the parse results of requests that span reads are recycled through free lists of
 * the loop's worker, so steady traffic allocates nothing and no loop shares a list with another;
 * free entries keep the next pointer in place. */
static void *pool_take(void **pool, size_t size) {
    void *p = *pool;
    if (p)
        *pool = *(void **)p;
    else
        p = malloc(size);
    return p;
}

static void pool_give(void **pool, void *p) {
    *(void **)p = *pool;
    *pool = p;
}

/* Most requests arrive whole and parse into the worker's one shared struct (its loop is
 * single-threaded); one spanning reads needs its own. */
static http_request *req_borrow(http_worker *w) {
    return pool_take(&w->req_pool, sizeof(http_request));
}

static void req_return(http_worker *w, http_request *r) { pool_give(&w->req_pool, r); }

/* Output counts when it is queued (sent or on its way), so a session can go between requests
 * while its last answer is still being written. */
static unsigned long long produced(rx_conn *c) { return rx_conn_bytes_out(c) + rx_conn_queued(c); }

static void sync_stats(session *s) {
    http_stats *st = &s->w->stats;
    unsigned long long in = rx_conn_bytes_in(s->conn), out = produced(s->conn);
    http_count(&st->bytes_in, in - s->seen_in);
    http_count(&st->bytes_out, out - s->seen_out);
    s->seen_in = in;
    s->seen_out = out;
}

static void session_release(session *s);

static void set_timeout(session *s, timeout_mode mode, uint64_t ms) {
    if (s->timeout == mode && mode != TIMEOUT_HEADER)
        return;
    s->timeout = mode;
    rx_conn_set_idle_timeout(s->conn, ms);
}

static void end_request(session *s) {
    if (s->req) {
        req_return(s->w, s->req);
        s->req = NULL;
    }
    s->in_body = false;
    s->sent_continue = false;
    s->header_deadline_ms = 0;
    http_parser_init(&s->parser, &(http_limits){.max_head_bytes = s->w->cfg->max_header_bytes});
}

/* Whether the request at the front of the input is a HEAD. fail() also answers requests the
 * parser rejected and heads that timed out, for which no parse result can be trusted (the shared
 * request struct may hold another connection's), so it reads the bytes, after the empty lines the
 * parser skips. */
static bool input_is_head(session *s) {
    rx_buffer *in = rx_conn_input(s->conn);
    const char *b = rx_buffer_peek(in);
    size_t n = rx_buffer_len(in), i = 0;
    while (i + 2 <= n && b[i] == '\r' && b[i + 1] == '\n')
        i += 2;
    return n - i >= 5 && memcmp(b + i, "HEAD ", 5) == 0;
}

/* Answers with an error and closes: after a malformed request the stream cannot be trusted. */
static void fail(session *s, int status, const char *extra) {
    int rc = http_write_error(s->w, rx_conn_output(s->conn), status, HTTP_CONN_CLOSE, extra,
                              input_is_head(s));
    http_count(&s->w->stats.requests, 1);
    end_request(s);
    if (rc < 0)
        rx_conn_abort(s->conn); /* part of the answer may be queued: send none of it */
    else
        rx_conn_close(s->conn);
}

static bool path_is(const char *buf, const http_request *req, const char *path) {
    size_t n = strlen(path);
    return req->path.len == n && memcmp(buf + req->path.off, path, n) == 0;
}

/* The methods rx-http recognises: one a route does not take is a 405 with Allow (RFC 9110
 * §15.5.6). Any other is a 501, TRACE and CONNECT included: rx-http neither reflects requests nor
 * opens tunnels, on any resource (§15.6.2). */
static bool method_known(http_method m) {
    return m == HTTP_M_GET || m == HTTP_M_HEAD || m == HTTP_M_POST || m == HTTP_M_OPTIONS ||
           m == HTTP_M_PUT || m == HTTP_M_DELETE || m == HTTP_M_PATCH;
}

/* For OPTIONS *: every method some route takes. */
#define ALLOW_ANY "Allow: GET, HEAD, POST, OPTIONS\r\n"

static const char *allow_for(const char *buf, const http_request *req) {
    return path_is(buf, req, "/echo") ? "Allow: POST, OPTIONS\r\n"
                                      : "Allow: GET, HEAD, OPTIONS\r\n";
}

/* Whether the method is one this path answers (else 405 with allow_for). */
static bool method_allowed(const char *buf, const http_request *req) {
    if (req->method == HTTP_M_OPTIONS)
        return true;
    if (path_is(buf, req, "/echo"))
        return req->method == HTTP_M_POST;
    return req->method == HTTP_M_GET || req->method == HTTP_M_HEAD;
}

/* The status a request gets before its body is read, or 0 when it may go on. A client waiting
 * for 100 Continue learns a rejection without sending the body. */
static int early_status(const http_config *cfg, const char *buf, const http_request *req) {
    if (!method_known(req->method))
        return 501;
    if (req->has_length && req->content_length > cfg->max_body_bytes)
        return 413;
    if (req->expect_continue && !method_allowed(buf, req))
        return 405;
    return 0;
}

/* The respond_* helpers return 0, or -ENOMEM when the response could not be queued whole. */

static int respond_fixed(session *s, const http_request *req, int keep_alive, const char *ctype,
                         const char *body) {
    rx_buffer *out = rx_conn_output(s->conn);
    size_t n = strlen(body);
    int rc = http_write_head(s->w, out, 200, ctype, n, keep_alive, NULL);
    if (rc == 0 && req->method != HTTP_M_HEAD)
        rc = rx_buffer_append(out, body, n);
    return rc;
}

/* OPTIONS * asks about the server (200, empty content); OPTIONS on a path about its route (204).
 * A static path is not looked up: answering about methods needs no file I/O. */
static int respond_options(session *s, const char *buf, const http_request *req, int keep_alive) {
    rx_buffer *out = rx_conn_output(s->conn);
    if (path_is(buf, req, "*"))
        return http_write_head(s->w, out, 200, NULL, 0, keep_alive, ALLOW_ANY);
    return http_write_head(s->w, out, 204, NULL, 0, keep_alive, allow_for(buf, req));
}

/* /healthz, for a balancer's health checks: 200 while serving, 503 once a stop or --drain began
 * (with Connection: close, as every answer then). */
static int respond_health(session *s, const http_request *req, int keep_alive) {
    if (!s->w->stopping)
        return respond_fixed(s, req, keep_alive, "text/plain", "ok\n");
    return http_write_error(s->w, rx_conn_output(s->conn), 503, keep_alive, NULL,
                            req->method == HTTP_M_HEAD);
}

/* /stats: every loop's counters and their sums (http_worker.c). */
static int respond_stats(session *s, const http_request *req, int keep_alive) {
    return respond_fixed(s, req, keep_alive, "application/json", http_stats_body(s->w));
}

static int respond_echo(session *s, const char *buf, const http_request *req, const char *body,
                        size_t len, int keep_alive) {
    rx_buffer *out = rx_conn_output(s->conn);
    const char *ctype = "application/octet-stream";
    char ct[128];
    for (size_t i = 0; i < req->nheaders; i++) {
        const http_header *h = &req->headers[i];
        if (http_span_ieq(buf, h->name, "content-type") && h->value.len < sizeof(ct)) {
            memcpy(ct, buf + h->value.off, h->value.len);
            ct[h->value.len] = '\0';
            ctype = ct;
        }
    }
    int rc = http_write_head(s->w, out, 200, ctype, len, keep_alive, NULL);
    return rc < 0 ? rc : rx_buffer_append(out, body, len);
}

/* How an answer ends its connection. Once the server stops, every answer is the connection's
 * last (on_stop). */
static int conn_mode(const http_worker *w, bool keep_alive, int version_minor) {
    return !keep_alive || w->stopping ? HTTP_CONN_CLOSE
           : version_minor == 0       ? HTTP_CONN_KEEP_10
                                      : HTTP_CONN_KEEP;
}

/* After an answer: --tune no-batch writes each one at once; the last one closes. */
static void answered(session *s, int ka) {
    if (!s->w->cfg->batch)
        rx_conn_flush(s->conn);
    if (ka == HTTP_CONN_CLOSE)
        rx_conn_close(s->conn);
}

/* A static file request out on the work pool (--io-threads): the lookup's input and output, and
 * what the answer needs once it is back. */
typedef struct file_job {
    http_file f;
    http_worker *w;
    session *s; /* NULL once the connection closed: the answer is dropped */
    rx_work *req;
    bool head, keep_alive;
    int version_minor;
    char *log; /* the access-log line's prefix (the request is gone by then); NULL: no log */
    size_t log_len;
} file_job;

static void job_free(file_job *j) {
    http_file_discard(&j->f);
    free(j->log);
    pool_give(&j->w->job_pool, j);
}

/* On a pool thread: only the job and what the server never changes. */
static void file_work(void *arg) {
    file_job *j = arg;
    http_file_open(&j->f, j->w->srv->root_fd);
}

/* Back on the loop: answer, log, and go on with the requests that waited. */
static void file_done(void *arg, int status) {
    file_job *j = arg;
    session *s = j->s;
    if (!s || (rx_conn_ended(s->conn) & RX_CONN_WRITE_ENDED)) {
        if (s)
            s->job = NULL;
        job_free(j);
        return;
    }
    http_worker *w = j->w;
    rx_conn *c = s->conn;
    s->job = NULL;
    if (status < 0) { /* cancelled: the pool is being freed */
        http_file_discard(&j->f);
        j->f.status = 503;
    }
    int ka = conn_mode(w, j->keep_alive, j->version_minor);
    int rc = http_file_respond(w, c, &j->f, j->head, ka);
    if (rc >= 0 && j->log)
        http_log_line(w, j->log, j->log_len, w->last_status, w->last_length);
    job_free(j);
    if (rc < 0) {
        rx_conn_abort(c);
        return;
    }
    answered(s, ka);
    if (ka == HTTP_CONN_CLOSE) {
        sync_stats(s);
        return;
    }
    /* Requests that arrived meanwhile reach on_data before the next poll. */
    rx_conn_resume_read(c);
    if (rx_buffer_len(rx_conn_input(c)) > 0) {
        sync_stats(s);
        return;
    }
    set_timeout(s, TIMEOUT_IDLE, w->cfg->idle_timeout_ms);
    session_release(s);
}

/* Sends a static file request to the work pool. Returns 0 when it went (s->job is set) or was
 * answered at once (a path refused without a lookup, a lookup the kernel's cache answered, or 503
 * when the pool's queue is full: the file system is behind, and the loop must not wait for it),
 * or -ENOMEM. */
static int start_file(session *s, const char *buf, const http_request *req, int ka) {
    http_worker *w = s->w;
    bool head = req->method == HTTP_M_HEAD;
    file_job *j = pool_take(&w->job_pool, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->w = w;
    j->log = NULL;
    /* A path refused without a lookup, or a lookup the kernel's cache answers at once (the hot
     * case: a popular file), is answered here; only one that would wait for the disk goes. */
    if (http_file_prepare(&j->f, buf, req) != 0 ||
        (w->cfg->cached_open && http_file_open_cached(&j->f, w->srv->root_fd))) {
        int rc = http_file_respond(w, s->conn, &j->f, head, ka);
        job_free(j);
        return rc;
    }
    j->s = s;
    j->head = head;
    j->keep_alive = req->keep_alive;
    j->version_minor = req->version_minor;
    if (w->srv->log_fd >= 0) {
        size_t cap = http_log_prefix_size(req);
        if (!(j->log = malloc(cap))) {
            job_free(j);
            return -ENOMEM;
        }
        j->log_len = http_log_prefix(s->conn, buf, req, j->log, cap);
    }
    int rc = rx_work_submit(w->srv->pool, w->loop, file_work, file_done, j, &j->req);
    if (rc < 0) {
        job_free(j);
        return rc == -EAGAIN ? http_write_error(w, rx_conn_output(s->conn), 503, ka,
                                                "Retry-After: 1\r\n", head)
                             : rc;
    }
    s->job = j;
    set_timeout(s, TIMEOUT_IDLE, w->cfg->idle_timeout_ms);
    return 0;
}

/* Routes a complete request; body points into the input buffer. */
static void route(session *s, const char *buf, const http_request *req, const char *body,
                  size_t body_len) {
    http_worker *w = s->w;
    rx_buffer *out = rx_conn_output(s->conn);
    int ka = conn_mode(w, req->keep_alive, req->version_minor);
    http_count(&w->stats.requests, 1);
    bool head = req->method == HTTP_M_HEAD;
    int rc;
    if (!method_known(req->method))
        rc = http_write_error(w, out, 501, ka, NULL, head);
    else if (!method_allowed(buf, req))
        rc = http_write_error(w, out, 405, ka, allow_for(buf, req), head);
    else if (req->method == HTTP_M_OPTIONS)
        rc = respond_options(s, buf, req, ka);
    else if (path_is(buf, req, "/plaintext"))
        rc = respond_fixed(s, req, ka, "text/plain", "Hello, World!");
    else if (path_is(buf, req, "/json"))
        rc = respond_fixed(s, req, ka, "application/json", "{\"message\":\"Hello, World!\"}");
    else if (path_is(buf, req, "/echo"))
        rc = respond_echo(s, buf, req, body, body_len, ka);
    else if (path_is(buf, req, "/stats"))
        rc = respond_stats(s, req, ka);
    else if (path_is(buf, req, "/healthz"))
        rc = respond_health(s, req, ka);
    else if (w->srv->pool)
        rc = start_file(s, buf, req, ka);
    else
        rc = http_serve_static(w, s->conn, buf, req, ka);
    if (rc < 0) { /* a head may be queued without its body: the client must not see it */
        rx_conn_abort(s->conn);
        return;
    }
    if (s->job)
        return; /* the answer, its log line and the requests after it wait for the lookup */
    if (w->srv->log_fd >= 0)
        http_log_request(w, s->conn, buf, req);
    answered(s, ka);
}

/* Handles the request at the front of `in` as far as the bytes allow. Returns true when a whole
 * request was consumed and the next may follow. */
static bool step(session *s, rx_buffer *in) {
    http_worker *w = s->w;
    const http_config *cfg = w->cfg;
    const char *buf = rx_buffer_peek(in);
    size_t len = rx_buffer_len(in);
    http_request *req = s->req ? s->req : &w->shared_req;
    if (!s->in_body) {
        uint64_t header_ms = cfg->header_timeout_ms ? cfg->header_timeout_ms : UINT64_MAX / 2;
        if (s->header_deadline_ms == 0)
            s->header_deadline_ms = rx_loop_now_ms(w->loop) + header_ms;
        int rc = http_parse_head(&s->parser, req, buf, len);
        if (rc == HTTP_PARSE_ERROR) {
            fail(s, s->parser.status, NULL);
            return false;
        }
        if (rc == HTTP_PARSE_AGAIN) {
            uint64_t now = rx_loop_now_ms(w->loop);
            if (now >= s->header_deadline_ms) {
                fail(s, 408, NULL);
                return false;
            }
            /* The header timeout counts from the first byte, however slowly the rest trickles. */
            if (cfg->header_timeout_ms)
                set_timeout(s, TIMEOUT_HEADER, s->header_deadline_ms - now);
            goto keep;
        }
        int early = early_status(cfg, buf, req);
        if (early) {
            fail(s, early, early == 405 ? allow_for(buf, req) : NULL);
            return false;
        }
        s->in_body = req->chunked || (req->has_length && req->content_length > 0);
        if (req->chunked)
            http_chunked_init(&s->chunk, cfg->max_body_bytes);
    }
    size_t body_len = 0, total = req->head_len;
    if (s->in_body) {
        if (req->chunked) {
            int rc =
                http_chunked_decode(&s->chunk, (char *)buf + req->head_len, len - req->head_len);
            if (rc == HTTP_PARSE_ERROR) {
                fail(s, s->chunk.status, NULL);
                return false;
            }
            /* Chunk sizes are checked against the limit, but extensions and trailers are not
             * payload: cap what we buffer for them too. */
            if (rc == HTTP_PARSE_AGAIN && len - req->head_len > cfg->max_body_bytes + 65536) {
                fail(s, 413, NULL);
                return false;
            }
            if (rc == HTTP_PARSE_AGAIN)
                goto need_body;
            body_len = s->chunk.decoded;
            total += s->chunk.raw;
        } else {
            if (len - req->head_len < req->content_length)
                goto need_body;
            body_len = (size_t)req->content_length;
            total += body_len;
        }
    }
    route(s, buf, req, buf + req->head_len, body_len);
    rx_buffer_consume(in, total);
    end_request(s);
    return true;

need_body:
    if (req->expect_continue && !s->sent_continue) {
        rx_buffer *out = rx_conn_output(s->conn);
        if (rx_buffer_append(out, "HTTP/1.1 100 Continue\r\n\r\n", 25) < 0) {
            rx_conn_abort(s->conn); /* out of memory: the client would hold its body back */
            return false;
        }
        http_count(&w->stats.by_class[1], 1);
        s->sent_continue = true;
    }
    set_timeout(s, TIMEOUT_IDLE, cfg->idle_timeout_ms);
keep:
    if (!s->req) { /* the request spans reads: give it memory of its own */
        s->req = req_borrow(w);
        if (!s->req) {
            fail(s, 500, NULL);
            return false;
        }
        memcpy(s->req, &w->shared_req, sizeof(*s->req));
    }
    return false;
}

/* Returns true when every request of the input was answered and nothing is pending. */
static bool process(session *s, rx_buffer *in) {
    while (rx_buffer_len(in) > 0) {
        if (rx_conn_ended(s->conn))
            return false;
        if (s->job) { /* answers go out in order: the next request waits for the file's */
            rx_conn_pause_read(s->conn);
            return false;
        }
        /* Past the connection's high-water mark (HTTP_OUTPUT_LIMIT) stop answering: rx_conn
         * judges the mark on what this call queued, so on_low_water follows once it drained. */
        if (rx_conn_queued(s->conn) > HTTP_OUTPUT_LIMIT && s->w->cfg->backpressure) {
            s->paused = true;
            rx_conn_pause_read(s->conn);
            return false;
        }
        if (!step(s, in))
            return false;
    }
    if (s->job) {
        rx_conn_pause_read(s->conn);
        return false;
    }
    set_timeout(s, TIMEOUT_IDLE, s->w->cfg->idle_timeout_ms);
    return true;
}

/* A connection's arg says what the connection holds now, and leads to its loop's worker without a
 * lookup on the hot path (the first byte of each says which it is, HTTP_ARG_*):
 *   - the shared server (opts.arg), until on_open runs on the connection's loop;
 *   - that loop's worker, until its first bytes arrive (header timeout);
 *   - a session of the worker, while a request is in progress or its answer is being written;
 *   - the worker's idle marker between requests (idle timeout): a connection that is not busy
 *     (C10K) costs no session memory.
 * Each object is touched only by its loop's thread; the server's first byte is set before the
 * loops start. */
static int arg_kind(const void *arg) { return *(const char *)arg; }

static bool has_session(const void *arg) { return arg_kind(arg) == HTTP_ARG_SESSION; }

static http_worker *worker_of_idle(void *arg) {
    return (http_worker *)((char *)arg - offsetof(http_worker, idle_mark));
}

/* A scan of at most one worker per CPU: once per connection (on_open), never per request. */
static http_worker *worker_of_loop(http_server *srv, const rx_loop *loop) {
    for (unsigned i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].loop == loop)
            return &srv->workers[i];
    return NULL;
}

/* The worker of a connection with no session. */
static http_worker *worker_for(rx_conn *c, void *arg) {
    switch (arg_kind(arg)) {
    case HTTP_ARG_FRESH:
        return arg;
    case HTTP_ARG_IDLE:
        return worker_of_idle(arg);
    default: /* the server: in on_open, or on_open never ran (a connection not from rx_server) */
        return worker_of_loop(arg, rx_conn_loop(c));
    }
}

/* On the connection's own loop: from here on its arg leads to that loop's worker. */
static void on_open(rx_conn *c, void *arg) {
    http_worker *w = worker_for(c, arg);
    http_count(&w->stats.conns_open, 1);
    http_count(&w->stats.conns_total, 1);
    rx_conn_set_arg(c, w);
    /* A new connection gets the header timeout for its first request. */
    rx_conn_set_idle_timeout(c, w->cfg->header_timeout_ms);
}

/* A session for the bytes `in` holds, all of them new: what came before is in the stats. */
static session *session_new(rx_conn *c, void *arg, const rx_buffer *in) {
    http_worker *w = worker_for(c, arg);
    session *s = pool_take(&w->session_pool, sizeof(*s));
    if (!s)
        return NULL;
    *s = (session){.kind = HTTP_ARG_SESSION, .w = w, .conn = c};
    s->timeout = arg_kind(arg) == HTTP_ARG_IDLE ? TIMEOUT_IDLE : TIMEOUT_HEADER;
    s->seen_in = rx_conn_bytes_in(c) - rx_buffer_len(in);
    s->seen_out = produced(c);
    end_request(s);
    rx_conn_set_arg(c, s);
    return s;
}

/* Between requests (the last answer may still be on its way): the session goes back to the pool. */
static void session_release(session *s) {
    sync_stats(s);
    rx_conn_set_arg(s->conn, &s->w->idle_mark);
    pool_give(&s->w->session_pool, s);
}

static void on_data(rx_conn *c, rx_buffer *in, void *arg) {
    session *s = has_session(arg) ? arg : session_new(c, arg, in);
    if (!s) {
        rx_conn_abort(c);
        return;
    }
    if (process(s, in) && !rx_conn_ended(c))
        session_release(s);
    else
        sync_stats(s);
}

static void on_low_water(rx_conn *c, size_t queued, void *arg) {
    (void)queued;
    session *s = arg;
    if (!has_session(arg) || !s->paused)
        return;
    s->paused = false;
    rx_conn_resume_read(c); /* rx hands the requests still buffered to on_data */
}

static void on_timeout(rx_conn *c, rx_timeout_kind kind, void *arg) {
    /* --send-timeout: the client took none of its answer for that long. A graceful close would
     * wait on the same stuck output; a reset frees at once what rx and the kernel hold for it. */
    if (kind == RX_TIMEOUT_WRITE) {
        rx_conn_abort(c);
        return;
    }
    session *s = arg;
    /* Part of a head arrived: say why we hang up. Nothing at all, or between requests: just go. */
    if (has_session(arg) && !s->in_body && !s->job && rx_buffer_len(rx_conn_input(c)) > 0) {
        fail(s, 408, NULL);
        rx_conn_flush(c);
    } else {
        rx_conn_close(c);
    }
}

/* How long a connection that has not sent a byte yet may take for its first request once a stop
 * began (at most the header timeout). */
#define STOP_FIRST_REQUEST_MS 1000

/* The server began a graceful stop (on each loop, for each of its connections): one between
 * requests closes now (its client may send the next request again on a new connection, RFC 9112
 * section 9.3.1); one in the middle of a request finishes it, and its answer says Connection:
 * close (route). One that has not sent a byte yet was accepted just before the stop, and its
 * first request is likely on its way: closing it would lose that request with no sign that it is
 * safe to send again, so it gets STOP_FIRST_REQUEST_MS for it, answered with Connection: close. */
static void on_stop(rx_conn *c, void *arg) {
    if (has_session(arg)) {
        ((session *)arg)->w->stopping = true;
        return;
    }
    http_worker *w = worker_for(c, arg);
    w->stopping = true;
    if (arg_kind(arg) == HTTP_ARG_IDLE) {
        rx_conn_close(c);
        return;
    }
    uint64_t t = w->cfg->header_timeout_ms;
    rx_conn_set_idle_timeout(c, t && t < STOP_FIRST_REQUEST_MS ? t : STOP_FIRST_REQUEST_MS);
}

static void on_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)reason;
    (void)err;
    if (has_session(arg)) {
        session *s = arg;
        if (s->job) { /* its done frees it: at once if cancelled, else once the lookup ends */
            s->job->s = NULL;
            rx_work_cancel(s->job->req);
        }
        http_count(&s->w->stats.conns_open, -1ull);
        sync_stats(s);
        if (s->req)
            req_return(s->w, s->req);
        pool_give(&s->w->session_pool, s);
        return;
    }
    http_worker *w = worker_for(c, arg);
    http_count(&w->stats.conns_open, -1ull); /* unsigned wrap-around: minus one */
    if (arg_kind(arg) != HTTP_ARG_IDLE) {    /* never sent anything: no session counted its bytes */
        http_count(&w->stats.bytes_in, rx_conn_bytes_in(c));
        http_count(&w->stats.bytes_out, rx_conn_bytes_out(c));
    }
}

const rx_conn_callbacks http_session_callbacks = {
    .on_open = on_open,
    .on_data = on_data,
    .on_low_water = on_low_water,
    .on_timeout = on_timeout,
    .on_stop = on_stop,
    .on_close = on_close,
};
