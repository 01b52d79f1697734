/* The state of rx-http: the configuration and what every loop shares (http_server), what each
 * loop owns (http_worker: counters, the cached Date header, free lists), and the pieces the
 * session, response and static-file modules use. */
#ifndef HTTP_SERVER_H
#define HTTP_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <rx/rx.h>

#include "../app.h"
#include "http_parser.h"

typedef struct http_config {
    const char *listen;
    const char *root;
    uint64_t idle_timeout_ms;
    uint64_t header_timeout_ms;
    uint64_t send_timeout_ms; /* an answer the client takes none of for this long: reset */
    size_t max_header_bytes;
    uint64_t max_body_bytes;
    size_t max_conns;
    const char *access_log; /* NULL: none; "-": stdout */
    unsigned io_threads;    /* work pool threads for file lookups and log writes; 0: inline */
    uint64_t drain_ms;      /* --drain: serve on this long after SIGTERM, /healthz saying 503 */
    bool proxy_protocol;    /* --proxy-protocol: a PROXY header starts every connection */
    /* --tune: techniques switched off, for benchmarks */
    bool backpressure, batch, date_cache, sendfile;
    bool cached_open; /* with io_threads, try the lookup on the loop first (RESOLVE_CACHED) */
} http_config;

/* A counter of one loop. Only its loop's thread writes it, with a relaxed load and store
 * (http_count): the hot path takes no locked instruction, and /stats, served by any loop, reads
 * every loop's counters with relaxed loads without a data race. */
typedef _Atomic unsigned long long http_counter;

static inline void http_count(http_counter *c, unsigned long long delta) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + delta,
                          memory_order_relaxed);
}

static inline unsigned long long http_counter_get(const http_counter *c) {
    return atomic_load_explicit(c, memory_order_relaxed);
}

typedef struct http_stats {
    http_counter conns_open, conns_total, requests, bytes_in, bytes_out;
    http_counter by_class[6]; /* [1] 1xx .. [5] 5xx */
} http_stats;

/* Counters summed over the loops (http_stats_sum). */
typedef struct http_totals {
    unsigned long long conns_open, conns_total, requests, bytes_in, bytes_out;
    unsigned long long by_class[6];
} http_totals;

/* The first byte of every object a connection's arg points to says what it is (a connection's arg
 * is one of them, see http_session.c): the shared server (opts.arg, until on_open), a worker
 * (nothing received yet), a worker's idle marker (between requests), or a session. */
enum { HTTP_ARG_SERVER = 1, HTTP_ARG_FRESH, HTTP_ARG_IDLE, HTTP_ARG_SESSION };

struct http_server;

/* What one loop of rx-http owns: its counters, its Date cache, its free lists and its parse
 * target. Only that loop's thread touches it (but for the counters, which /stats reads from any
 * loop): the hot path takes no lock. Aligned so that two loops never write one cache line. */
typedef struct http_worker {
    _Alignas(64) char fresh_mark; /* HTTP_ARG_FRESH: the worker is the arg of a silent connection */
    char idle_mark;               /* HTTP_ARG_IDLE: &idle_mark is the arg between requests */
    struct http_server *srv;
    const http_config *cfg; /* &srv->cfg, one load closer */
    rx_loop *loop;
    http_stats stats;
    /* "Date: ...\r\n" for the current second, rebuilt at most once a second. */
    char date_line[48];
    size_t date_len;
    uint64_t date_next_ms; /* loop time at which the wall-clock second changes */
    void *req_pool;        /* recycled request structs for requests that span reads */
    void *session_pool;    /* recycled sessions */
    void *job_pool;        /* recycled file jobs (--io-threads) */
    int last_status;       /* of the last response head written, for the access log */
    unsigned long long last_length;
    bool stopping; /* the server drains or stops: every answer closes its connection, /healthz
                      says 503 */
    /* The access log: lines are appended to log_fill; before each poll they go to the file, with
     * --io-threads as a work request (log_out is then the buffer being written), else inline. */
    rx_buffer log_bufs[2];
    rx_buffer *log_fill, *log_out;
    bool log_writing;               /* a write of log_out is on the pool */
    int log_err;                    /* the last write's result, set by the pool thread */
    unsigned long long log_dropped; /* lines dropped: the file did not keep up, or failed */
    bool log_warned;
    char *stats_body; /* room for the /stats body, sized for every loop at setup */
    size_t stats_cap;
    http_request shared_req; /* parse target of requests that arrive whole */
} http_worker;

/* What every loop shares, read-only once the loops run (but shed, which is atomic). */
typedef struct http_server {
    char arg_kind; /* HTTP_ARG_SERVER: the server is opts.arg, on_open's arg */
    http_config cfg;
    int root_fd;          /* an O_PATH descriptor of --root: files are opened beneath it only */
    int log_fd;           /* the access log (O_APPEND: each loop writes whole lines), -1: none */
    rx_work_pool *pool;   /* --io-threads: file lookups and log writes; NULL: on the loops */
    rx_loop_group *group; /* one worker per loop of it; NULL: one worker, on `loop` */
    rx_loop *loop;        /* the server's (with a group, loop 0: signals, accepts in handoff) */
    rx_server *server;
    app_shed shed;
    unsigned nworkers;
    http_worker *workers;
    http_totals stats; /* the sum over the loops, taken by main after the join */
} http_server;

/* How a response ends the connection: close it, keep it (HTTP/1.1's default), or keep it and say
 * so (an HTTP/1.0 client that asked for keep-alive). */
enum { HTTP_CONN_CLOSE, HTTP_CONN_KEEP, HTTP_CONN_KEEP_10 };

/* Output queued beyond this pauses request processing (and reading) until the client reads: the
 * connections' high-water mark. */
#define HTTP_OUTPUT_LIMIT (256 * 1024)

/* Connection callbacks (http_session.c). The connections' high-water mark must be
 * HTTP_OUTPUT_LIMIT: a session paused for backpressure resumes on on_low_water, which only follows
 * a crossing of the connection's own mark. The server's rx_server_opts.arg must be srv, given to
 * http_session_setup first (http_worker.c: after cfg, root_fd, log_fd, pool and group, or loop
 * without a group, are set), which makes the workers: returns 0 or -ENOMEM. Once the loops and
 * the pool are freed, http_session_cleanup writes what is left of the access log and frees the
 * workers and their recycled memory. */
extern const rx_conn_callbacks http_session_callbacks;
int http_session_setup(http_server *srv);
void http_session_cleanup(http_server *srv);

/* Sums every loop's counters: each exact, though not all read at one instant. Any thread. */
void http_stats_sum(const http_server *srv, http_totals *out);

/* The /stats body for a request on w's loop: every loop's counters and their sums, in w's buffer
 * (good until the next call on this loop). */
const char *http_stats_body(http_worker *w);

/* --drain began (loop 0, after SIGTERM): every loop's worker answers as if stopping. */
void http_drain(void *srv);

/* Response helpers (http_response.c). */
const char *http_reason(int status);
void http_date_refresh(http_worker *w);

/* Appends a status line and the common headers (Server, Date, Content-Length, Content-Type when
 * ctype is non-NULL, Connection per conn_mode, `extra` verbatim when non-NULL), then the blank
 * line. 1xx, 204 and 304 get no Content-Length (content_length is then ignored). Returns 0, or
 * -ENOMEM with nothing appended: the caller must then not append a body either. */
int http_write_head(http_worker *w, rx_buffer *out, int status, const char *ctype,
                    uint64_t content_length, int conn_mode, const char *extra);

/* Appends a complete response with a short text/plain body explaining status; for a HEAD
 * request (head_only) the same head, whose Content-Length is that of the body, and no body.
 * Returns 0 or -ENOMEM; after a failure part of the response may be in `out`, so the caller must
 * abort the connection. */
int http_write_error(http_worker *w, rx_buffer *out, int status, int conn_mode, const char *extra,
                     bool head_only);

/* A static file request's lookup, which may run on a pool thread: what it needs of the request,
 * copied (the request's bytes are gone by the time it runs), and what it found. */
typedef struct http_file {
    char rel[4096]; /* the decoded path beneath the root */
    char ims[64];   /* the If-Modified-Since value; "" when none (or too long to be a date) */
    int status; /* 0: fd is open on a regular file, described by st; else the status to answer */
    int fd;
    struct stat st;
} http_file;

/* Copies what the lookup needs of the request into f, decoding its path. Returns 0, or the status
 * to answer (400, 403, 404; also left in f->status, and f->fd is -1). No I/O. */
int http_file_prepare(http_file *f, const char *buf, const http_request *req);

/* The lookup: opens f->rel beneath root_fd (index.html for a directory) and stats it through
 * rx/file.h, so it blocks. Sets f->status, and f->fd (owned by f) when it is 0. */
void http_file_open(http_file *f, int root_fd);

/* The lookup if the kernel can do it without waiting for a disk: every path component in its
 * cache (openat2's RESOLVE_CACHED; fstat of an open file does no I/O there). Returns true when f
 * is settled as http_file_open would, false (f unchanged) when the lookup needs the pool. */
bool http_file_open_cached(http_file *f, int root_fd);

/* Closes f->fd, if open (a lookup whose answer will not be sent). */
void http_file_discard(http_file *f);

/* Answers the request from f: the error status, 304, or the head and the body (sendfile, or a copy
 * with --tune no-sendfile). Takes f->fd. Returns the status sent, or a negative errno when the
 * response could not be queued whole: the caller must then abort the connection. */
int http_file_respond(http_worker *w, rx_conn *c, http_file *f, bool head, int conn_mode);

/* Static files (http_static.c): answers GET/HEAD of `path` (still percent-encoded) under the
 * root; only regular files are served (anything else, a FIFO or a device, is a 403 and is never
 * read). Returns the status sent, or a negative errno when the response could not be queued
 * whole: the caller must then abort the connection, as a head may be queued without its body. */
int http_serve_static(http_worker *w, rx_conn *c, const char *buf, const http_request *req,
                      int conn_mode);

/* The access log (http_log.c). http_log_flush is the hook each loop runs before it polls: it
 * hands the lines to the file. http_log_cleanup writes what is left, inline, and frees the
 * buffers (from http_session_cleanup). */
void http_log_flush(void *worker);
void http_log_cleanup(http_server *srv);

/* The start of a request's line, up to the request line: "peer "GET /x HTTP/1.1"". Written to
 * out (cap bytes, NUL-terminated, cut if it does not fit). Returns its length. */
size_t http_log_prefix(rx_conn *c, const char *buf, const http_request *req, char *out, size_t cap);

/* The room http_log_prefix needs for req, NUL included. */
size_t http_log_prefix_size(const http_request *req);

/* Appends one line: the prefix, then the status and body length. */
void http_log_line(http_worker *w, const char *prefix, size_t n, int status,
                   unsigned long long length);

/* Appends the line of a request just answered, with the status and body length of its response
 * head (w->last_status, w->last_length). */
void http_log_request(http_worker *w, rx_conn *c, const char *buf, const http_request *req);

#endif
