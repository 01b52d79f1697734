/* Shared state of rx-http: configuration, counters, the cached Date header, and the pieces the
 * session, response and static-file modules use. */
#ifndef HTTP_SERVER_H
#define HTTP_SERVER_H

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

typedef struct http_stats {
    unsigned long long conns_open, conns_total, requests, bytes_in, bytes_out;
    unsigned long long by_class[6]; /* [1] 1xx .. [5] 5xx */
} http_stats;

typedef struct http_server {
    http_config cfg;
    rx_loop *loop;
    rx_server *server;
    int root_fd; /* an O_PATH descriptor of --root: files are opened beneath it only */
    http_stats stats;
    FILE *log;
    app_shed shed;
    /* "Date: ...\r\n" for the current second, rebuilt at most once a second. */
    char date_line[48];
    size_t date_len;
    uint64_t date_next_ms;   /* loop time at which the wall-clock second changes */
    http_request shared_req; /* parse target of requests that arrive whole */
    void *req_pool;          /* recycled request structs for requests that span reads */
    void *session_pool;      /* recycled sessions */
    int last_status;         /* of the last response head written, for the access log */
    unsigned long long last_length;
} http_server;

/* How a response ends the connection: close it, keep it (HTTP/1.1's default), or keep it and say
 * so (an HTTP/1.0 client that asked for keep-alive). */
enum { HTTP_CONN_CLOSE, HTTP_CONN_KEEP, HTTP_CONN_KEEP_10 };

/* Output queued beyond this pauses request processing (and reading) until the client reads: the
 * connections' high-water mark. */
#define HTTP_OUTPUT_LIMIT (256 * 1024)

/* Connection callbacks (http_session.c); the server's rx_server_opts.arg must be srv, given to
 * http_session_setup first. http_session_cleanup frees the recycled memory at exit. */
extern const rx_conn_callbacks http_session_callbacks;
void http_session_setup(http_server *srv);
void http_session_cleanup(http_server *srv);

/* Response helpers (http_response.c). */
const char *http_reason(int status);
void http_date_refresh(http_server *srv);

/* Appends a status line and the common headers (Server, Date, Content-Length, Content-Type when
 * ctype is non-NULL, Connection per conn_mode, `extra` verbatim when non-NULL), then the blank
 * line. 1xx, 204 and 304 get no Content-Length (content_length is then ignored). Returns 0, or
 * -ENOMEM with nothing appended: the caller must then not append a body either. */
int http_write_head(http_server *srv, rx_buffer *out, int status, const char *ctype,
                    uint64_t content_length, int conn_mode, const char *extra);

/* Appends a complete response with a short text/plain body explaining status; for a HEAD
 * request (head_only) the same head, whose Content-Length is that of the body, and no body.
 * Returns 0 or -ENOMEM; after a failure part of the response may be in `out`, so the caller must
 * abort the connection. */
int http_write_error(http_server *srv, rx_buffer *out, int status, int conn_mode, const char *extra,
                     bool head_only);

/* Static files (http_static.c): answers GET/HEAD of `path` (still percent-encoded) under the
 * root; only regular files are served (anything else, a FIFO or a device, is a 403 and is never
 * read). Returns the status sent, or a negative errno when the response could not be queued
 * whole: the caller must then abort the connection, as a head may be queued without its body. */
int http_serve_static(http_server *srv, rx_conn *c, const char *buf, const http_request *req,
                      int conn_mode);

#endif
