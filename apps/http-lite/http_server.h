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
    size_t max_header_bytes;
    uint64_t max_body_bytes;
    size_t max_conns;
    const char *access_log; /* NULL: none; "-": stdout */
    /* --tune: techniques switched off, for benchmarks */
    bool backpressure, batch, date_cache, sendfile;
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
    int last_status;       /* of the last response head written, for the access log */
    unsigned long long last_length;
    bool stopping;    /* the server stops: every answer closes its connection */
    char *stats_body; /* room for the /stats body, sized for every loop at setup */
    size_t stats_cap;
    http_request shared_req; /* parse target of requests that arrive whole */
} http_worker;

/* What every loop shares, read-only once the loops run (but shed, which is atomic). */
typedef struct http_server {
    char arg_kind; /* HTTP_ARG_SERVER: the server is opts.arg, every connection's first arg */
    http_config cfg;
    int root_fd; /* an O_PATH descriptor of --root: files are opened beneath it only */
    FILE *log;   /* one for every loop: stdio locks it for each line; each loop flushes it */
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

/* Connection callbacks (http_session.c); the server's rx_server_opts.arg must be srv, given to
 * http_session_setup first (after cfg, root_fd, log and group, or loop without a group, are set),
 * which makes the workers: returns 0 or -ENOMEM. http_session_cleanup frees them and their
 * recycled memory, once the loops are freed. */
extern const rx_conn_callbacks http_session_callbacks;
int http_session_setup(http_server *srv);
void http_session_cleanup(http_server *srv);

/* Sums every loop's counters: each exact, though not all read at one instant. Any thread. */
void http_stats_sum(const http_server *srv, http_totals *out);

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

/* Static files (http_static.c): answers GET/HEAD of `path` (still percent-encoded) under the
 * root; only regular files are served (anything else, a FIFO or a device, is a 403 and is never
 * read). Returns the status sent, or a negative errno when the response could not be queued
 * whole: the caller must then abort the connection, as a head may be queued without its body. */
int http_serve_static(http_worker *w, rx_conn *c, const char *buf, const http_request *req,
                      int conn_mode);

#endif
