/* libFuzzer target for a whole rx-http connection: apps/http-lite's session, parser, routes,
 * responses and static files (from apps/http-lite/www, RX_FUZZ_WWW, which fuzz/meson.build sets),
 * on a real rx loop, fed through a socket pair; no other network. Each input gets its own loop,
 * server state and socket pair, all freed before it returns: nothing but the docroot's O_PATH
 * descriptor outlives an input, so inputs do not influence each other and LeakSanitizer sees
 * every leak.
 *
 * Input: one byte (low 3 bits: how many split points follow; the others switch --tune's batch,
 * sendfile and backpressure off), that many bytes giving the lengths of the first pieces, then
 * the byte stream a client sends. The stream is written in those pieces with the loop run between
 * them (the last piece is the rest), the write side is shut, and the loop runs until the server
 * ends its side. A server that has not ended it within 1000 iterations (or 10 s) is a hang: the
 * peer's end of stream must make it answer what it can and close.
 *
 * What the server wrote is then checked against a model that replays the stream with the same
 * parser and chunked decoder, the way http_session.c's step() consumes it, and says which
 * responses must come: one per complete request, in order, up to the first one that closes (an
 * error, Connection: close, HTTP/1.0) or an incomplete request at the end. Every response must be
 * well-formed: "HTTP/1.1 NNN reason", header lines, CRLFCRLF, and a body framed exactly by
 * Content-Length (none for 1xx/204/304, none for HEAD), so responses follow each other exactly
 * to the end of the output; its status must be the one the model expects (the static-file
 * routes: one of those a file lookup gives); Connection: close must be there exactly when the
 * model closes; the bodies of /echo (the decoded request body), /plaintext and error responses
 * must be the expected bytes. "100 Continue" may come once before the answer to a request with
 * Expect: 100-continue whose body was awaited (whether it comes depends on the split points).
 * A trailing partial response is never accepted: without injected failures the server only ever
 * closes gracefully (rx_conn_close writes what is queued first); rx_conn_abort, the one way a
 * response can be cut, happens only when memory runs out. */
#include "http_server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef RX_FUZZ_WWW
#error "RX_FUZZ_WWW must name the docroot (apps/http-lite/www): see fuzz/meson.build"
#endif

/* Small limits, so 413, 431 and the limit paths are within reach of short inputs. */
#define MAX_HEADER_BYTES 1024
#define MAX_BODY_BYTES 256

#define MAX_ITERATIONS 1000
#define MAX_WAIT_MS 10000

/* Aborts (what libFuzzer reports) with the failed condition, so a reproducer says which check. */
#define check(ok) ((ok) ? (void)0 : check_failed(__LINE__, #ok))

static void check_failed(int line, const char *what) {
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    abort();
}

/* ---- the model: which responses the stream must get ---- */

typedef struct slot {
    bool final;        /* a final response is due (else only a 100 Continue may come) */
    bool may_continue; /* a "100 Continue" may come before it */
    bool head_only;    /* the answer to a HEAD: Content-Length but no body */
    bool head_either;  /* head_only may go either way (see error_slot) */
    bool closes;       /* says Connection: close, and is the last response */
    bool keep_10;      /* says Connection: keep-alive (HTTP/1.0) */
    int status;        /* the status it must have; 0: a static file's (200, 304, 400, 403, 404) */
    const char *body;  /* its body, when the model knows it (NULL: not checked) */
    size_t body_len;
} slot;

typedef struct model {
    slot *slots;
    size_t n;
    char *bodies; /* decoded /echo bodies, which slots point into */
} model;

/* As http_session.c: after the empty lines the parser skips, does the request start "HEAD "? */
static bool starts_head(const uint8_t *b, size_t n) {
    size_t i = 0;
    while (i + 2 <= n && b[i] == '\r' && b[i + 1] == '\n')
        i += 2;
    return n - i >= 5 && memcmp(b + i, "HEAD ", 5) == 0;
}

static bool path_is(const uint8_t *buf, const http_request *r, const char *path) {
    size_t n = strlen(path);
    return r->path.len == n && memcmp(buf + r->path.off, path, n) == 0;
}

/* The routes of rx-http, as its README and http_session.c describe them. */
static bool method_known(http_method m) {
    return m == HTTP_M_GET || m == HTTP_M_HEAD || m == HTTP_M_POST || m == HTTP_M_OPTIONS ||
           m == HTTP_M_PUT || m == HTTP_M_DELETE || m == HTTP_M_PATCH;
}

static bool method_allowed(const uint8_t *buf, const http_request *r) {
    if (r->method == HTTP_M_OPTIONS)
        return true;
    if (path_is(buf, r, "/echo"))
        return r->method == HTTP_M_POST;
    return r->method == HTTP_M_GET || r->method == HTTP_M_HEAD;
}

/* An answer that closes the connection: after it nothing more is answered. The server decides
 * whether it is the answer to a HEAD from the bytes it holds at that moment, at least `seen` of
 * the `left` the stream has: after an error among the empty lines before a request line ("\r\n"
 * five times), the "HEAD " after it may or may not have arrived, depending on the split points.
 * Once true, starts_head stays true for longer inputs, so comparing the shortest and the longest
 * view says whether the split can matter. */
static void error_slot(slot *s, int status, const uint8_t *req, size_t seen, size_t left) {
    s->final = true;
    s->status = status;
    s->head_only = starts_head(req, left);
    s->head_either = starts_head(req, seen) != s->head_only;
    s->closes = true;
}

/* What a routed request gets (http_session.c route()). */
static void routed_slot(slot *s, const uint8_t *buf, const http_request *r, const char *body,
                        size_t body_len) {
    static const char plaintext[] = "Hello, World!";
    s->final = true;
    s->head_only = r->method == HTTP_M_HEAD;
    s->closes = !r->keep_alive;
    s->keep_10 = r->keep_alive && r->version_minor == 0;
    if (!method_allowed(buf, r)) {
        s->status = 405;
    } else if (r->method == HTTP_M_OPTIONS) {
        s->status = path_is(buf, r, "*") ? 200 : 204;
        s->body = "";
    } else if (path_is(buf, r, "/plaintext")) {
        s->status = 200;
        s->body = plaintext;
        s->body_len = sizeof(plaintext) - 1;
    } else if (path_is(buf, r, "/json") || path_is(buf, r, "/stats")) {
        s->status = 200;
    } else if (path_is(buf, r, "/echo")) {
        s->status = 200;
        s->body = body;
        s->body_len = body_len;
    } else {
        s->status = 0;
    }
}

static void model_build(model *m, const uint8_t *in, size_t n) {
    /* A request takes at least 16 bytes ("M / HTTP/1.0" CRLF CRLF). */
    size_t cap = n / 16 + 2;
    m->slots = calloc(cap, sizeof(slot));
    m->bodies = malloc(n + 1);
    check(m->slots && m->bodies);
    m->n = 0;
    size_t off = 0, bodies_used = 0;
    http_limits lim = {.max_head_bytes = MAX_HEADER_BYTES};
    static http_request r;
    while (off < n) {
        const uint8_t *req = in + off;
        size_t left = n - off;
        http_parser p;
        http_parser_init(&p, &lim);
        int rc = http_parse_head(&p, &r, (const char *)req, left);
        if (rc == HTTP_PARSE_AGAIN)
            return; /* no answer: the end of stream closes the connection */
        slot *s = &m->slots[m->n++];
        check(m->n <= cap);
        if (rc == HTTP_PARSE_ERROR) {
            error_slot(s, p.status, req, p.scanned, left);
            return;
        }
        int early = !method_known(r.method)                             ? 501
                    : r.has_length && r.content_length > MAX_BODY_BYTES ? 413
                    : r.expect_continue && !method_allowed(req, &r)     ? 405
                                                                        : 0;
        if (early) {
            error_slot(s, early, req, left, left);
            return;
        }
        size_t total = r.head_len, body_len = 0, avail = left - r.head_len;
        char *body = m->bodies + bodies_used;
        if (r.chunked) {
            s->may_continue = r.expect_continue;
            memcpy(body, req + r.head_len, avail);
            http_chunked d;
            http_chunked_init(&d, MAX_BODY_BYTES);
            int drc = http_chunked_decode(&d, body, avail);
            if (drc == HTTP_PARSE_ERROR) {
                error_slot(s, d.status, req, left, left);
                return;
            }
            if (drc == HTTP_PARSE_AGAIN) {
                if (avail > MAX_BODY_BYTES + 65536)
                    error_slot(s, 413, req, left, left);
                return;
            }
            body_len = d.decoded;
            total += d.raw;
        } else if (r.has_length && r.content_length > 0) {
            s->may_continue = r.expect_continue;
            if (avail < r.content_length)
                return;
            body_len = (size_t)r.content_length;
            memcpy(body, req + r.head_len, body_len);
            total += body_len;
        }
        bodies_used += body_len;
        routed_slot(s, req, &r, body, body_len);
        if (s->closes)
            return;
        off += total;
    }
}

/* ---- the checker ---- */

static bool is_tchar(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool line_is(const uint8_t *l, size_t n, const char *s) {
    return n == strlen(s) && memcmp(l, s, n) == 0;
}

/* The length of the head at out[0..n) (through CRLFCRLF), or 0 when it is not complete. */
static size_t head_end(const uint8_t *out, size_t n) {
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(out + i, "\r\n\r\n", 4) == 0)
            return i + 4;
    return 0;
}

typedef struct head {
    int status;
    const uint8_t *reason;
    size_t reason_len;
    int content_lengths; /* how many Content-Length lines */
    uint64_t content_length;
    bool close, keep_alive;
} head;

/* Parses and checks the status line and header lines of out[0..len) (len ends at CRLFCRLF). */
static head parse_head(const uint8_t *out, size_t len) {
    head h = {0};
    check(len >= 17 && memcmp(out, "HTTP/1.1 ", 9) == 0);
    for (int i = 9; i < 12; i++)
        check(out[i] >= '0' && out[i] <= '9');
    check(out[9] >= '1' && out[9] <= '5' && out[12] == ' ');
    h.status = (out[9] - '0') * 100 + (out[10] - '0') * 10 + (out[11] - '0');
    size_t at = 13, eol = at;
    while (out[eol] != '\r')
        eol++;
    h.reason = out + at;
    h.reason_len = eol - at;
    check(h.reason_len > 0);
    for (size_t i = at; i < eol; i++)
        check(out[i] >= 0x20 && out[i] < 0x7f);
    check(out[eol + 1] == '\n');
    at = eol + 2;
    while (at + 2 < len) { /* header lines, up to the empty line */
        eol = at;
        while (out[eol] != '\r')
            eol++;
        check(out[eol + 1] == '\n');
        const uint8_t *l = out + at;
        size_t n = eol - at, colon = 0;
        while (colon < n && is_tchar(l[colon]))
            colon++;
        check(colon > 0 && colon + 1 < n && l[colon] == ':' && l[colon + 1] == ' ');
        for (size_t i = colon + 2; i < n; i++)
            check(l[i] == '\t' || (l[i] >= 0x20 && l[i] != 0x7f));
        if (colon == 14 && strncasecmp((const char *)l, "Content-Length", 14) == 0) {
            h.content_lengths++;
            check(n > 16 && n - 16 <= 19);
            h.content_length = 0;
            for (size_t i = 16; i < n; i++) {
                check(l[i] >= '0' && l[i] <= '9');
                h.content_length = h.content_length * 10 + (uint64_t)(l[i] - '0');
            }
        }
        if (line_is(l, n, "Connection: close"))
            h.close = true;
        if (line_is(l, n, "Connection: keep-alive"))
            h.keep_alive = true;
        at = eol + 2;
    }
    check(at + 2 == len);
    return h;
}

static bool static_status(int status) {
    return status == 200 || status == 304 || status == 400 || status == 403 || status == 404;
}

static void check_output(const model *m, const uint8_t *out, size_t n) {
    size_t at = 0, si = 0;
    bool continued = false; /* the current request got its 100 Continue */
    while (at < n) {
        size_t hl = head_end(out + at, n - at);
        check(hl > 0); /* a cut head: never, see the top */
        head h = parse_head(out + at, hl);
        check(si < m->n);
        const slot *s = &m->slots[si];
        if (h.status == 100) {
            check(line_is(out + at, hl, "HTTP/1.1 100 Continue\r\n\r\n"));
            check(s->may_continue && !continued);
            continued = true;
            at += hl;
            continue;
        }
        check(s->final);
        check(s->status ? h.status == s->status : static_status(h.status));
        bool bodiless = h.status == 204 || h.status == 304;
        check(h.content_lengths == (bodiless ? 0 : 1));
        /* Ambiguous (error_slot): the answer is the last, so the output says which it was. */
        bool head_only = s->head_either ? n - at == hl : s->head_only;
        bool no_body = bodiless || head_only;
        check(no_body || h.content_length <= n - at - hl); /* a cut body: never */
        size_t body = no_body ? 0 : (size_t)h.content_length;
        const uint8_t *b = out + at + hl;
        if (s->body && !head_only)
            check(body == s->body_len && memcmp(b, s->body, body) == 0);
        if (h.status >= 400 && !head_only) /* error bodies: the reason phrase and LF */
            check(body == h.reason_len + 1 && memcmp(b, h.reason, h.reason_len) == 0 &&
                  b[h.reason_len] == '\n');
        check(h.close == s->closes && h.keep_alive == s->keep_10);
        at += hl + body;
        si++;
        continued = false;
        if (s->closes)
            check(at == n); /* nothing after the last answer */
    }
    /* Every complete request was answered; the last may be one still waiting for its body. */
    check(si == m->n || (si + 1 == m->n && !m->slots[si].final));
}

/* ---- driving the session ---- */

typedef struct run {
    rx_loop *loop;
    int fd; /* the client's end */
    uint8_t *out;
    size_t len, cap;
    bool eof;
    int iterations;
    uint64_t t0;
} run;

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reads what the server wrote so far; notes its end of stream. */
static void collect(run *r) {
    while (!r->eof) {
        if (r->cap - r->len < 65536) {
            r->cap = r->cap ? 2 * r->cap : 1 << 17;
            r->out = realloc(r->out, r->cap);
            check(r->out != NULL);
        }
        ssize_t n = read(r->fd, r->out + r->len, r->cap - r->len);
        if (n > 0)
            r->len += (size_t)n;
        else if (n == 0)
            r->eof = true;
        else if (errno == EAGAIN)
            return;
        else
            check(errno == EINTR);
    }
}

/* One iteration of the loop and a read of what it wrote; false once the bound is reached. */
static bool step(run *r, int timeout_ms) {
    check(rx_loop_run_once(r->loop, timeout_ms) >= 0);
    collect(r);
    r->iterations++;
    return r->iterations < MAX_ITERATIONS && now_ms() - r->t0 < MAX_WAIT_MS;
}

/* Runs the loop until it has nothing left to do for now. */
static void settle(run *r) {
    for (int i = 0; i < 8; i++) {
        size_t before = r->len;
        int events = rx_loop_run_once(r->loop, 0);
        check(events >= 0);
        collect(r);
        r->iterations++;
        if (events == 0 && r->len == before)
            return;
    }
}

/* Writes one piece, running the loop while the socket is full. Returns false when the server no
 * longer reads (it closed: the rest of the stream is moot). */
static bool send_piece(run *r, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(r->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EAGAIN) {
            check(step(r, 10)); /* the server must keep reading while we read its answers */
        } else {
            check(w < 0 && (errno == EPIPE || errno == ECONNRESET || errno == EINTR));
            if (errno != EINTR)
                return false;
        }
    }
    settle(r);
    return true;
}

static int root_fd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    if (root_fd < 0) {
        root_fd = open(RX_FUZZ_WWW, O_PATH | O_DIRECTORY | O_CLOEXEC);
        check(root_fd >= 0);
    }
    uint8_t opts = data[0];
    size_t nsplit = opts & 7;
    if (nsplit > size - 1)
        nsplit = size - 1;
    const uint8_t *splits = data + 1, *stream = data + 1 + nsplit;
    size_t n = size - 1 - nsplit;

    model m;
    model_build(&m, stream, n);

    static http_server srv;
    memset(&srv, 0, sizeof(srv));
    srv.cfg = (http_config){.root = RX_FUZZ_WWW,
                            .max_header_bytes = MAX_HEADER_BYTES,
                            .max_body_bytes = MAX_BODY_BYTES,
                            .batch = !(opts & 0x08),
                            .sendfile = !(opts & 0x10),
                            .backpressure = !(opts & 0x20),
                            .date_cache = true};
    srv.root_fd = root_fd;
    srv.log_fd = -1;
    srv.loop = rx_loop_new();
    check(srv.loop != NULL);
    check(http_session_setup(&srv) == 0);

    int sv[2];
    check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    /* As tests/test_http_session.c does: the server is the arg and on_open does not run. The
     * marks are main.c's: the session's backpressure waits for on_low_water, which only follows a
     * crossing of the high-water mark; the input limit is the backstop main.c sets (reaching it
     * would be a session that stopped consuming: the connection closes, the answers go missing). */
    rx_conn_opts copts = {.high_water = HTTP_OUTPUT_LIMIT,
                          .max_input = MAX_HEADER_BYTES + MAX_BODY_BYTES + 128 * 1024};
    check(rx_conn_new(srv.loop, sv[0], &copts, &http_session_callbacks, &srv) != NULL);

    run r = {.loop = srv.loop, .fd = sv[1], .t0 = now_ms()};
    size_t at = 0;
    bool open = true;
    for (size_t i = 0; i <= nsplit && open && at < n; i++) {
        size_t piece = i < nsplit ? (size_t)splits[i] + 1 : n - at;
        if (piece > n - at)
            piece = n - at;
        open = send_piece(&r, stream + at, piece);
        at += piece;
    }
    shutdown(sv[1], SHUT_WR);
    while (!r.eof) {
        bool more = step(&r, 10);
        check(r.eof || more); /* see the top: not closing is a hang */
    }

    check_output(&m, r.out, r.len);

    close(sv[1]);
    rx_loop_free(srv.loop);
    http_session_cleanup(&srv);
    free(r.out);
    free(m.slots);
    free(m.bodies);
    return 0;
}
