/* Traffic under seeded fault schedules (faults.h): for every seed, an rx echo server and rx-http
 * serve real clients over 127.0.0.1 while each call rx makes may be cut short or fail, and an rx
 * client connects with retries. What must hold for every seed:
 *   - every stream arrives exactly once and in order, or its connection ended and an error was
 *     reported (a reset or error close, or a failed call the application saw);
 *   - with only transient faults (short counts, EAGAIN, EINTR), everything arrives and closes
 *     cleanly: those may cost time, never bytes;
 *   - on_close runs exactly once per opened connection, and no callback after it;
 *   - every run ends within its bound (no hang), and ASan/valgrind see no leak;
 *   - the loop still serves a connection that was open through it all, and a new one.
 * Everything runs on the test's thread (clients included, non-blocking), so a seed replays the
 * same decisions: RX_FAULT_SEED=N runs that seed alone. RX_FAULT_SEEDS (1000) and
 * RX_FAULT_FIRST (1) choose the range; RX_FAULT_SECONDS runs seeds until that time passed. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "faults.h"
#include "http_server.h"
#include "sys.h"
#include "testutil.h"

/* One wall-clock bound per scenario of a seed: far above what a run needs (milliseconds). */
#define RUN_MS 5000

static uint64_t seed;    /* the seed being run */
static uint64_t rng;     /* the test's own choices (sizes, splits), from the seed */
static tf_plan plan;     /* the seed's fault plan */
static char where[4096]; /* the test binary, for the replay line */

static void failed(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failed(int line, const char *fmt, ...) {
    char what[512], desc[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    tf_plan_describe(&plan, desc, sizeof(desc));
    tf_stop();
    ck_abort_msg("seed %llu (%s), line %d: %s\nreplay: RX_FAULT_SEED=%llu CK_FORK=no %s",
                 (unsigned long long)seed, desc, line, what, (unsigned long long)seed, where);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            failed(__LINE__, __VA_ARGS__);                                                         \
    } while (0)

static size_t pick(size_t lo, size_t hi) { return lo + (size_t)(tf_rand(&rng) % (hi - lo + 1)); }

/* Fatal faults injected so far: a run without any must lose nothing. */
static unsigned long long fatal_count(void) {
    return tf_count.injected[TF_RESET] + tf_count.injected[TF_ENOMEM];
}

/* ---- what the server side saw, one record per accepted connection ---- */

#define MAXREC 32

struct rec {
    rx_conn *c;
    int port; /* the client's port */
    int opens, closes, late;
    int app_err; /* a call of ours failed (the application saw the error) */
    rx_close_reason reason;
    int err;
};

static struct {
    struct rec r[MAXREC];
    int n, closes;
} S;

/* The record of a client's connection: among those made since the client connected (records
 * from `from` on), as the kernel gives ports again, within a seed too. */
static struct rec *rec_by_port(int port, int from) {
    for (int i = S.n - 1; i >= from; i--)
        if (S.r[i].port == port)
            return &S.r[i];
    return NULL;
}

/* An error close, or one the application asked for after a failed call. */
static bool error_reported(const struct rec *r) {
    return r->app_err || r->reason == RX_CLOSE_RESET || r->reason == RX_CLOSE_ERROR ||
           r->reason == RX_CLOSE_TIMEOUT;
}

static struct rec *rec_new(rx_conn *c) {
    rx_addr peer;
    int port = rx_conn_peer_addr(c, &peer) == 0 ? rx_addr_port(&peer) : 0;
    CHECK(S.n < MAXREC, "more than %d connections", MAXREC);
    struct rec *r = &S.r[S.n++];
    *r = (struct rec){.c = c, .port = port, .opens = 1};
    return r;
}

static void rec_closed(struct rec *r, rx_close_reason reason, int err) {
    r->closes++;
    r->reason = reason;
    r->err = err;
    S.closes++;
}

static void rec_open(rx_conn *c, void *arg) {
    (void)arg;
    rx_conn_set_arg(c, rec_new(c));
}

static void rec_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)c;
    rec_closed(arg, reason, err);
}

static void note_late(void *arg) {
    struct rec *r = arg;
    if (r->closes)
        r->late++;
}

/* ---- the echo server ---- */

static void echo_data(rx_conn *c, rx_buffer *in, void *arg) {
    note_late(arg);
    int rc = rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in));
    rx_buffer_consume(in, rx_buffer_len(in));
    if (rc < 0) { /* the stream cannot go on whole */
        ((struct rec *)arg)->app_err = rc;
        rx_conn_abort(c);
    }
}

static void echo_high(rx_conn *c, size_t queued, void *arg) {
    (void)queued;
    note_late(arg);
    rx_conn_pause_read(c);
}

static void echo_low(rx_conn *c, size_t queued, void *arg) {
    (void)queued;
    note_late(arg);
    rx_conn_resume_read(c);
}

static const rx_conn_callbacks echo_cbs = {
    .on_open = rec_open,
    .on_data = echo_data,
    .on_high_water = echo_high,
    .on_low_water = echo_low,
    .on_close = rec_close,
};

/* ---- a plain client: sends a stream in random pieces, half-closes, reads the answer ---- */

struct client {
    int fd, port;
    int first_rec;   /* S.n when it connected: its server side's record comes after */
    const char *out; /* what it sends */
    size_t total, sent;
    bool shut;
    char *in; /* what it received (cap bytes) */
    size_t got, cap;
    bool eof;
    int err;
};

static void client_open(struct client *k, int port, const char *out, size_t total, size_t cap) {
    *k = (struct client){.out = out, .total = total, .cap = cap, .first_rec = S.n};
    k->fd = tu_tcp_connect(port, true);
    CHECK(k->fd >= 0, "connect: %s", strerror(errno));
    k->port = tu_local_port(k->fd);
    k->in = malloc(cap + 1);
    CHECK(k->in != NULL, "no memory");
}

/* One step of the client's I/O; returns true once its stream ended (EOF or an error). */
static bool client_step(struct client *k) {
    if (k->eof || k->err)
        return true;
    while (!k->shut) {
        if (k->sent == k->total) {
            shutdown(k->fd, SHUT_WR);
            k->shut = true;
            break;
        }
        size_t n = tu_min(pick(1, 16 * KiB), k->total - k->sent);
        ssize_t w = send(k->fd, k->out + k->sent, n, MSG_NOSIGNAL);
        if (w > 0) {
            k->sent += (size_t)w;
            continue;
        }
        if (errno != EAGAIN)
            k->shut = true; /* the server went away; reading tells how */
        break;
    }
    for (;;) {
        char buf[64 * 1024];
        ssize_t r = recv(k->fd, buf, sizeof(buf), 0);
        if (r > 0) {
            CHECK(k->got + (size_t)r <= k->cap, "client %d got %zu bytes, more than %zu", k->port,
                  k->got + (size_t)r, k->cap);
            memcpy(k->in + k->got, buf, (size_t)r);
            k->got += (size_t)r;
            continue;
        }
        if (r == 0)
            k->eof = true;
        else if (errno != EAGAIN)
            k->err = errno;
        return k->eof || k->err;
    }
}

static void client_free(struct client *k) {
    if (k->fd >= 0)
        close(k->fd);
    free(k->in);
}

/* Runs the loop with the clients' steps until every client's stream ended; false on timeout. */
static bool drive(rx_loop *loop, struct client *ks, int n) {
    unsigned long long end = tu_now_ms() + RUN_MS;
    while (tu_now_ms() < end) {
        bool all = true;
        for (int i = 0; i < n; i++)
            all &= client_step(&ks[i]);
        if (all)
            return true;
        rx_loop_run_once(loop, 1);
    }
    return false;
}

/* After the clients: every opened connection reaches on_close (bounded), but for the idle one
 * (the first) until the end. */
static void settle(rx_loop *loop, bool idle_too) {
    int from = idle_too ? 0 : 1;
    unsigned long long end = tu_now_ms() + RUN_MS;
    while (S.closes < S.n - from && tu_now_ms() < end)
        rx_loop_run_once(loop, 1);
    for (int i = from; i < S.n; i++) {
        CHECK(S.r[i].closes == 1, "server connection of port %d closed %d times", S.r[i].port,
              S.r[i].closes);
        CHECK(S.r[i].late == 0, "a callback after on_close (port %d)", S.r[i].port);
    }
}

/* What a client saw against what the server side reported. `expect` is the answer it should
 * get whole; a shorter one needs an error reported, or a connection rx never opened (accepted,
 * then closed at once: a failed allocation). */
static void judge(const struct client *k, const char *expect, size_t want, bool fatal) {
    CHECK(k->got <= want && memcmp(k->in, expect, k->got) == 0,
          "client %d: the %zu bytes received are not a prefix of the %zu expected", k->port, k->got,
          want);
    const struct rec *r = rec_by_port(k->port, k->first_rec);
    bool whole = k->got == want && k->eof;
    if (!fatal) {
        CHECK(whole, "client %d: %zu of %zu bytes (eof %d, %s) with transient faults only", k->port,
              k->got, want, k->eof, strerror(k->err));
        CHECK(r && r->reason == RX_CLOSE_PEER, "client %d: closed with reason %d, not PEER",
              k->port, r ? (int)r->reason : -1);
    }
    if (whole)
        return;
    if (r)
        CHECK(error_reported(r),
              "client %d: %zu of %zu bytes, yet the close (reason %d) reports "
              "no error",
              k->port, k->got, want, r->reason);
    else
        CHECK(k->got == 0, "client %d: bytes from a connection that was never opened", k->port);
}

/* ---- scenario 1: echo streams with half-close, beside an idle connection ---- */

#define ECHO_CLIENTS 3

static void echo_scenario(rx_loop *loop, rx_server *s, int port) {
    struct client ks[ECHO_CLIENTS];
    char *out[ECHO_CLIENTS];
    unsigned long long fatal0 = fatal_count(), acc0 = tf_count.accepted;
    int opens0 = S.n;
    for (int i = 0; i < ECHO_CLIENTS; i++) {
        size_t n = pick(0, 96 * KiB);
        out[i] = tu_pattern_alloc(pick(0, 1u << 20), n);
        client_open(&ks[i], port, out[i], n, n);
    }
    CHECK(drive(loop, ks, ECHO_CLIENTS), "the echo streams did not end within %d ms", RUN_MS);
    settle(loop, false);
    bool fatal = fatal_count() > fatal0;
    int orphans = 0;
    for (int i = 0; i < ECHO_CLIENTS; i++) {
        judge(&ks[i], out[i], ks[i].total, fatal);
        orphans += rec_by_port(ks[i].port, ks[i].first_rec) == NULL;
    }
    /* A client with no server connection was accepted and dropped: each such drop is an accept
     * the schedule let through that did not become a connection. */
    CHECK((unsigned long long)orphans <=
              tf_count.accepted - acc0 - (unsigned long long)(S.n - opens0),
          "%d clients were never served, but only %llu accepts were dropped", orphans,
          tf_count.accepted - acc0 - (unsigned long long)(S.n - opens0));
    for (int i = 0; i < ECHO_CLIENTS; i++) {
        client_free(&ks[i]);
        free(out[i]);
    }
    (void)s;
}

/* The idle connection opened before the faults, then a new one: both still echo. */
static void still_serving(rx_loop *loop, int idle_fd, int port) {
    struct client k = {.fd = idle_fd};
    char msg[] = "still here";
    k.out = msg;
    k.total = sizeof(msg) - 1;
    k.cap = k.total;
    k.in = malloc(k.cap + 1);
    k.port = tu_local_port(idle_fd);
    CHECK(drive(loop, &k, 1), "the idle connection got no answer");
    CHECK(k.eof && k.got == k.total && memcmp(k.in, msg, k.got) == 0,
          "the idle connection's echo is wrong (%zu bytes, eof %d, %s)", k.got, k.eof,
          strerror(k.err));
    client_free(&k);
    struct client n;
    client_open(&n, port, msg, sizeof(msg) - 1, sizeof(msg) - 1);
    CHECK(drive(loop, &n, 1) && n.eof && n.got == n.total, "a new connection got no echo");
    client_free(&n);
    settle(loop, true);
}

/* ---- scenario 2: an rx client connects, with retries, and has its stream echoed ---- */

struct attempt {
    size_t want;
    unsigned long long off;
    int port; /* its local port, once open */
    int opens, closes, late, app_err;
    size_t got;
    bool bad; /* a byte that is not the stream's */
    rx_close_reason reason;
};

static void at_open(rx_conn *c, void *arg) {
    struct attempt *a = arg;
    a->opens++;
    rx_addr local;
    a->port = rx_conn_local_addr(c, &local) == 0 ? rx_addr_port(&local) : 0;
    int rc = tu_send_pattern(c, a->off, a->want);
    if (rc < 0) {
        a->app_err = rc;
        rx_conn_abort(c);
        return;
    }
    rx_conn_shutdown(c);
}

static void at_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)c;
    struct attempt *a = arg;
    if (a->closes)
        a->late++;
    size_t n = rx_buffer_len(in);
    if (a->got + n > a->want || tu_pattern_check(rx_buffer_peek(in), a->off + a->got, n) >= 0)
        a->bad = true;
    a->got += n;
    rx_buffer_consume(in, n);
}

static void at_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)c;
    (void)err;
    struct attempt *a = arg;
    a->closes++;
    a->reason = reason;
}

static const rx_conn_callbacks at_cbs = {
    .on_open = at_open, .on_data = at_data, .on_close = at_close};

#define ATTEMPTS 4

static void connect_scenario(rx_loop *loop, int port) {
    char addr[64];
    tu_addr(addr, sizeof(addr), port);
    struct attempt as[ATTEMPTS];
    for (int i = 0; i < ATTEMPTS; i++) {
        unsigned long long fatal0 = fatal_count();
        struct attempt *a = &as[i];
        *a = (struct attempt){.want = pick(1, 32 * KiB), .off = pick(0, 1u << 20)};
        int first_rec = S.n; /* its server side's record comes after */
        rx_connect_opts o = {.addr = addr, .timeout_ms = RUN_MS, .cbs = &at_cbs, .arg = a};
        rx_conn *c = rx_connect(loop, &o);
        if (!c) {
            CHECK(errno == ENOMEM && fatal_count() > fatal0, "rx_connect failed: %s",
                  strerror(errno));
            continue;
        }
        unsigned long long end = tu_now_ms() + RUN_MS;
        while (!a->closes && tu_now_ms() < end)
            rx_loop_run_once(loop, 1);
        CHECK(a->closes == 1, "attempt %d: no on_close within %d ms", i, RUN_MS);
        settle(loop, false);
        CHECK(!a->bad, "attempt %d: bytes out of order or too many", i);
        bool whole = a->got == a->want && a->reason == RX_CLOSE_PEER;
        if (whole)
            return;
        const struct rec *r = a->port ? rec_by_port(a->port, first_rec) : NULL;
        CHECK(fatal_count() > fatal0,
              "attempt %d: %zu of %zu bytes (reason %d) with transient "
              "faults only",
              i, a->got, a->want, a->reason);
        CHECK(a->app_err || a->reason != RX_CLOSE_PEER || (r && error_reported(r)),
              "attempt %d: %zu of %zu bytes and a clean close on both sides", i, a->got, a->want);
    }
}

/* ---- scenario 3: rx-http, pipelined requests with bodies, and files through sendfile ---- */

#define BIG_FILE (200 * KiB)

static http_server hs;
static char docroot[64];

static void http_start(rx_loop *loop) {
    memset(&hs, 0, sizeof(hs));
    hs.cfg = (http_config){.header_timeout_ms = RUN_MS,
                           .max_header_bytes = 16384,
                           .max_body_bytes = 1 << 20,
                           .backpressure = true,
                           .batch = true,
                           .date_cache = true,
                           .sendfile = true};
    hs.loop = loop;
    hs.root_fd = open(docroot, O_PATH | O_DIRECTORY | O_CLOEXEC);
    CHECK(hs.root_fd >= 0, "docroot: %s", strerror(errno));
    hs.log_fd = -1;
    CHECK(http_session_setup(&hs) == 0, "http_session_setup");
}

/* rx-http's callbacks, with its connections recorded too (found by pointer: rx-http keeps its
 * own arg). */
static rx_conn_callbacks http_cbs;

static void http_open(rx_conn *c, void *arg) {
    rec_new(c);
    http_session_callbacks.on_open(c, arg);
}

static void http_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    for (int i = 0; i < S.n; i++)
        if (S.r[i].c == c && !S.r[i].closes) {
            rec_closed(&S.r[i], reason, err);
            break;
        }
    http_session_callbacks.on_close(c, reason, err, arg);
}

static void http_stop(void) {
    http_session_cleanup(&hs);
    close(hs.root_fd);
}

/* A growing string. */
struct text {
    char *p;
    size_t n, cap;
};

static void put(struct text *t, const void *s, size_t n) {
    if (t->n + n > t->cap) {
        t->cap = (t->n + n) * 2;
        t->p = realloc(t->p, t->cap);
        CHECK(t->p != NULL, "no memory");
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
}

static void putf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct text *t, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    put(t, buf, (size_t)n);
}

#define MAXREQ 8

/* The requests of one connection, and the body each answer must carry. */
struct http_plan {
    struct text reqs;
    struct text bodies[MAXREQ];
    int n;
};

static void plan_requests(struct http_plan *p, const char *big) {
    memset(p, 0, sizeof(*p));
    p->n = (int)pick(1, MAXREQ);
    for (int i = 0; i < p->n; i++) {
        struct text *b = &p->bodies[i];
        size_t len = pick(0, 20 * KiB);
        char *body = tu_pattern_alloc(pick(0, 1u << 20), len);
        switch (pick(0, 4)) {
        case 0:
            putf(&p->reqs, "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
            put(b, "Hello, World!", 13);
            break;
        case 1:
            putf(&p->reqs, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", len);
            put(&p->reqs, body, len);
            put(b, body, len);
            break;
        case 2: /* chunked, in pieces of random sizes */
            putf(&p->reqs, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
            for (size_t at = 0; at < len;) {
                size_t c = tu_min(pick(1, 4 * KiB), len - at);
                putf(&p->reqs, "%zx\r\n", c);
                put(&p->reqs, body + at, c);
                put(&p->reqs, "\r\n", 2);
                at += c;
            }
            put(&p->reqs, "0\r\n\r\n", 5);
            put(b, body, len);
            break;
        case 3:
            putf(&p->reqs, "GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
            put(b, big, BIG_FILE);
            break;
        default:
            putf(&p->reqs, "GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n");
            put(b, "small file\n", 11);
            break;
        }
        free(body);
    }
}

static void plan_free(struct http_plan *p) {
    free(p->reqs.p);
    for (int i = 0; i < MAXREQ; i++)
        free(p->bodies[i].p);
}

/* Reads one response at buf[0..n): returns its length, 0 when it is not complete; sets *status,
 * *body and *blen. Fails the test on bytes that are not a response. */
static size_t parse_response(const char *buf, size_t n, int *status, const char **body,
                             size_t *blen) {
    const char *end = memmem(buf, n, "\r\n\r\n", 4);
    if (!end)
        return 0;
    CHECK(n >= 13 && memcmp(buf, "HTTP/1.1 ", 9) == 0, "bytes that are not a status line");
    *status = atoi(buf + 9);
    const char *cl = memmem(buf, (size_t)(end - buf), "\r\nContent-Length: ", 18);
    CHECK(cl != NULL, "a response without Content-Length");
    *blen = strtoull(cl + 18, NULL, 10);
    size_t head = (size_t)(end - buf) + 4;
    if (head + *blen > n)
        return 0;
    *body = buf + head;
    return head + *blen;
}

static void http_scenario(rx_loop *loop, int port, const char *big) {
    struct http_plan p;
    plan_requests(&p, big);
    unsigned long long fatal0 = fatal_count();
    struct client k;
    client_open(&k, port, p.reqs.p, p.reqs.n, 2 * MiB);
    CHECK(drive(loop, &k, 1), "the HTTP client did not see its stream end within %d ms", RUN_MS);
    settle(loop, false);
    bool fatal = fatal_count() > fatal0;
    int answered = 0;
    bool server_error = false;
    size_t at = 0;
    while (answered < p.n) {
        int status;
        const char *body;
        size_t blen, len = parse_response(k.in + at, k.got - at, &status, &body, &blen);
        if (len == 0)
            break;
        if (status >= 500 && fatal) { /* a failed allocation or lookup, answered as such */
            server_error = true;
        } else {
            CHECK(status == 200, "answer %d: status %d", answered, status);
            const struct text *want = &p.bodies[answered];
            CHECK(blen == want->n && memcmp(body, want->p, blen) == 0,
                  "answer %d: a body of %zu bytes that is not the %zu expected", answered, blen,
                  want->n);
        }
        at += len;
        answered++;
    }
    const struct rec *r = rec_by_port(k.port, k.first_rec);
    if (!fatal)
        CHECK(r && r->reason == RX_CLOSE_PEER && k.eof,
              "with transient faults only: close reason %d, client eof %d (%s)",
              r ? (int)r->reason : -1, k.eof, strerror(k.err));
    if (answered == p.n) {
        CHECK(at == k.got, "%zu bytes after the last answer", k.got - at);
    } else {
        CHECK(fatal, "%d of %d answers with transient faults only (%zu bytes, eof %d, %s)",
              answered, p.n, k.got, k.eof, strerror(k.err));
        CHECK(!r || r->reason != RX_CLOSE_PEER || server_error,
              "%d of %d answers and a clean close", answered, p.n);
    }
    client_free(&k);
    plan_free(&p);
}

/* ---- one seed ---- */

static void run_seed(uint64_t s, const char *big) {
    seed = s;
    rng = s * 0x9e3779b97f4a7c15ull + 1;
    plan = tf_plan_for(s);
    memset(&S, 0, sizeof(S));
    rx_loop *loop = rx_loop_new();
    CHECK(loop != NULL, "rx_loop_new");
    rx_server_opts eo = {.cbs = &echo_cbs,
                         .conn = {.high_water = 32 * KiB, .close_timeout_ms = RUN_MS}};
    rx_server *es = tu_server(loop, &eo);
    int eport = tu_server_port(es);
    http_start(loop);
    http_cbs = http_session_callbacks;
    http_cbs.on_open = http_open;
    http_cbs.on_close = http_close;
    rx_server_opts ho = {.cbs = &http_cbs,
                         .arg = &hs,
                         .conn = {.high_water = HTTP_OUTPUT_LIMIT, .close_timeout_ms = RUN_MS}};
    rx_server *hsrv = tu_server(loop, &ho);
    int hport = tu_server_port(hsrv);
    /* Opened before the faults, idle through them. */
    int idle = tu_tcp_connect(eport, true);
    CHECK(idle >= 0, "connect: %s", strerror(errno));
    unsigned long long end = tu_now_ms() + RUN_MS;
    while (S.n < 1 && tu_now_ms() < end)
        rx_loop_run_once(loop, 1);
    CHECK(S.n == 1, "the idle connection was not accepted");

    tf_start(s, &plan);
    echo_scenario(loop, es, eport);
    connect_scenario(loop, eport);
    http_scenario(loop, hport, big);
    tf_stop();

    still_serving(loop, idle, eport);
    rx_server_free(hsrv);
    rx_server_free(es);
    rx_loop_free(loop);
    http_stop();
}

static unsigned long long env_ull(const char *name, unsigned long long dflt) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : dflt;
}

/* The docroot of the HTTP scenario: a file big enough for several sendfile calls, a small one. */
static char *make_docroot(void) {
    strcpy(docroot, "/tmp/rx-faults-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(docroot));
    char path[128], *big = tu_pattern_alloc(0, BIG_FILE);
    snprintf(path, sizeof(path), "%s/big.bin", docroot);
    FILE *f = fopen(path, "w");
    ck_assert(f && fwrite(big, 1, BIG_FILE, f) == BIG_FILE && fclose(f) == 0);
    snprintf(path, sizeof(path), "%s/small.txt", docroot);
    f = fopen(path, "w");
    ck_assert(f && fputs("small file\n", f) >= 0 && fclose(f) == 0);
    return big;
}

static void remove_docroot(void) {
    char path[128];
    snprintf(path, sizeof(path), "%s/big.bin", docroot);
    unlink(path);
    snprintf(path, sizeof(path), "%s/small.txt", docroot);
    unlink(path);
    rmdir(docroot);
}

/* A sanitizer's report ends the process without a word of the seed: say it then (the callback
 * exists only in sanitized builds). */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static void say_seed(void) {
    fprintf(stderr, "faults: died in seed %llu\nreplay: RX_FAULT_SEED=%llu CK_FORK=no %s\n",
            (unsigned long long)seed, (unsigned long long)seed, where);
}

START_TEST(test_seeded_schedules) {
    if (__sanitizer_set_death_callback)
        __sanitizer_set_death_callback(say_seed);
    ssize_t n = readlink("/proc/self/exe", where, sizeof(where) - 1);
    where[n > 0 ? n : 0] = '\0';
    char *big = make_docroot();
    unsigned long long first = env_ull("RX_FAULT_FIRST", 1),
                       count = env_ull("RX_FAULT_SEEDS", 1000);
    unsigned long long seconds = env_ull("RX_FAULT_SECONDS", 0);
    if (getenv("RX_FAULT_SEED")) {
        first = env_ull("RX_FAULT_SEED", 1);
        count = 1;
    }
    unsigned long long t0 = tu_now_ms(), ran = 0, calls = 0, injected[TF_KINDS] = {0};
    for (uint64_t s = first; seconds ? tu_now_ms() - t0 < seconds * 1000 : ran < count; s++) {
        run_seed(s, big);
        ran++;
        calls += tf_count.calls;
        for (int k = 0; k < TF_KINDS; k++)
            injected[k] += tf_count.injected[k];
    }
    remove_docroot();
    free(big);
    fprintf(stderr,
            "faults: %llu seeds from %llu in %llu ms: %llu calls, injected short %llu, eagain "
            "%llu, eintr %llu, reset %llu, enomem %llu\n",
            ran, first, tu_now_ms() - t0, calls, injected[TF_SHORT], injected[TF_EAGAIN],
            injected[TF_EINTR], injected[TF_RESET], injected[TF_ENOMEM]);
    /* The campaign must have exercised every kind (unless one seed was asked for). */
    for (int k = 0; k < TF_KINDS && ran >= 100; k++)
        ck_assert_msg(injected[k] > 0, "no fault of kind %d in %llu seeds", k, ran);
}
END_TEST

int main(void) {
    Suite *s = suite_create("faults");
    TCase *tc = tu_tcase(s, "core", 900);
    tcase_add_test(tc, test_seeded_schedules);
    return tu_main(s);
}
