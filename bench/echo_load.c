/* echo-load: a load generator for echo servers, built on rx itself (rx_connect + rx_conn, one
 * rx_loop per process). Every connection sends a deterministic byte stream and verifies every
 * echoed byte; it reports throughput, round-trip latency percentiles and errors.
 *
 * Timeline of each process: connect every connection (paced, at most MAX_OUTSTANDING connects in
 * flight); once all have opened or failed, the warm-up runs, then the measured window (--duration,
 * or until every connection has done its --messages). Messages completed during the connect ramp
 * and the warm-up are verified but not counted. After --duration, no new messages are sent and the
 * in-flight echoes get DRAIN_MS to arrive.
 *
 * Latency is taken with clock_gettime(CLOCK_MONOTONIC) when a message is handed to rx_conn_send
 * and when the read that completes its echo returns (one clock read per on_data), so it includes
 * the client's own queueing but not the loop's per-iteration clock granularity. */
#include <rx/rx.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"

#define MAX_OUTSTANDING 1000     /* connects in flight at once, per process */
#define STREAM_WINDOW 4          /* messages in flight per connection in stream mode */
#define DRAIN_MS 2000            /* wait for in-flight echoes after --duration */
#define CONNECT_TIMEOUT_MS 10000 /* per connect attempt */
#define MAX_SIZE (64 * 1024 * 1024)
#define NS 1000000000ull

typedef unsigned long long ull; /* counts, printed with %llu */

enum mode { PINGPONG, STREAM };

struct opts {
    const char *connect;
    ull conns, messages;
    size_t size;
    enum mode mode;
    double duration, rate, connect_rate, warmup;
    unsigned procs, sources;
    bool json, hold;
};

/* What a worker process reports to the parent: plain bytes through a pipe. */
struct stats {
    ull conns_ok, conns_failed;
    ull messages;     /* completed inside the measured window */
    ull messages_all; /* completed and verified in all (ramp and warm-up included) */
    ull err_mismatch, err_reset, err_short, err_connect, err_other;
    ull late; /* echoes still missing when the drain time ran out (not errors) */
    ull peak_open;
    double elapsed_s;  /* length of the measured window */
    double verified_s; /* --hold: from the start until every connection verified or failed */
    struct hist lat;
};

struct worker;

struct lconn {
    struct worker *w;
    rx_conn *c;
    ull k;           /* global index: pattern phase and source address */
    ull sent, recvd; /* stream offsets: bytes sent / echoed and verified */
    ull msgs_sent, msgs_done;
    uint64_t t_send[STREAM_WINDOW]; /* send times of the messages in flight, by number % window */
    bool opened, closing, failed, waiting;
    struct lconn *next_wait;
};

enum phase { RAMP, RUN, DRAIN, CLOSE };

struct worker {
    const struct opts *o;
    unsigned index;
    rx_loop *loop;
    struct lconn *conns;
    ull n, next, connecting, open; /* next: the next connection to start */
    enum phase phase;
    bool timed, stopped, freeing, said_error, cut;     /* cut: SIGUSR1 ended the hold */
    bool settled;                                      /* --hold: said so */
    ull verified;                                      /* connections that did all their messages */
    double rate, connect_rate, tokens, connect_tokens; /* this process's shares and buckets */
    struct lconn *wait_head, *wait_tail;               /* connections waiting for a token */
    uint64_t t_start, t_refill, measure_ns, stop_ns, drain_end_ns, last_done_ns;
    uint64_t t_progress, progress_msgs;
    struct stats st;
};

/* The pattern: byte i of connection k's stream is ((i + 7k) * 131) & 0xFF, so the message at
 * offset i is the slice starting at pattern[(i + 7k) & 255]: sending copies nothing and checking
 * is a memcmp. (131 is odd, so a shift by less than 256 bytes shows.) */
static unsigned char *pattern;
static size_t pattern_span; /* bytes usable from any phase: max(size, 64 KiB) */

static const unsigned char *pattern_at(uint64_t k, uint64_t off) {
    return pattern + ((off + 7 * k) & 255);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t window(const struct opts *o) { return o->mode == STREAM ? STREAM_WINDOW : 1; }

static ull errors(const struct stats *s) {
    return s->err_mismatch + s->err_reset + s->err_short + s->err_connect + s->err_other;
}

/* Counts an error against the connection (once) and tells about the first one of the process. */
__attribute__((format(printf, 3, 4))) static void fail(struct lconn *lc, ull *counter,
                                                       const char *fmt, ...) {
    struct worker *w = lc->w;
    if (lc->failed)
        return;
    lc->failed = true;
    (*counter)++;
    if (w->said_error)
        return;
    w->said_error = true;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "echo-load: connection %llu: ", lc->k);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (further errors are only counted)\n");
    va_end(ap);
}

static void enqueue_wait(struct worker *w, struct lconn *lc) {
    lc->waiting = true;
    lc->next_wait = NULL;
    if (w->wait_tail)
        w->wait_tail->next_wait = lc;
    else
        w->wait_head = lc;
    w->wait_tail = lc;
}

static bool can_send(const struct lconn *lc) {
    const struct worker *w = lc->w;
    const struct opts *o = w->o;
    return lc->c && lc->opened && !lc->closing && !lc->failed &&
           (w->phase == RAMP || w->phase == RUN) && lc->msgs_sent - lc->msgs_done < window(o) &&
           (o->messages == 0 || lc->msgs_sent < o->messages);
}

/* Sends as many messages as the window, the message limit and the rate allow; t is now. */
static void pump(struct lconn *lc, uint64_t t) {
    struct worker *w = lc->w;
    size_t size = w->o->size;
    while (!lc->waiting && can_send(lc)) {
        if (w->rate > 0) {
            if (w->tokens < 1) {
                enqueue_wait(w, lc);
                return;
            }
            w->tokens -= 1;
        }
        lc->t_send[lc->msgs_sent % STREAM_WINDOW] = t;
        int rc = rx_conn_send(lc->c, pattern_at(lc->k, lc->sent), size);
        if (rc == -ENOMEM) {
            fail(lc, &w->st.err_other, "out of memory queueing a message");
            rx_conn_abort(lc->c);
        }
        if (rc < 0)
            return; /* -EPIPE: the connection closed; on_close tells why */
        lc->sent += size;
        lc->msgs_sent++;
    }
}

/* Closes a connection that has nothing more to do. */
static void maybe_close(struct lconn *lc) {
    const struct worker *w = lc->w;
    if (!lc->c || lc->closing || lc->failed)
        return;
    bool all_done = w->o->messages && !w->o->hold && lc->msgs_done >= w->o->messages;
    bool drained = w->phase >= DRAIN && lc->msgs_done == lc->msgs_sent;
    if (all_done || drained) {
        lc->closing = true;
        rx_conn_close(lc->c);
    }
}

static void complete(struct worker *w, uint64_t latency, uint64_t t) {
    w->st.messages_all++;
    if (w->phase != RAMP && t >= w->measure_ns && t < w->stop_ns) {
        hist_add(&w->st.lat, latency);
        w->st.messages++;
        w->last_done_ns = t;
    }
}

static void on_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)c;
    struct lconn *lc = arg;
    struct worker *w = lc->w;
    size_t size = w->o->size;
    uint64_t t = now_ns(); /* completion time of whatever this read completes */
    const unsigned char *p = (const unsigned char *)rx_buffer_peek(in);
    size_t n = rx_buffer_len(in);
    rx_buffer_consume(in, n); /* the bytes stay readable until this call returns */
    if (lc->failed)
        return;
    if (n > lc->sent - lc->recvd) {
        fail(lc, &w->st.err_mismatch, "%zu bytes echoed, only %llu were outstanding", n,
             (lc->sent - lc->recvd));
        rx_conn_abort(lc->c);
        return;
    }
    for (size_t off = 0; off < n; off += pattern_span) {
        size_t len = n - off < pattern_span ? n - off : pattern_span;
        const unsigned char *want = pattern_at(lc->k, lc->recvd + off);
        if (memcmp(p + off, want, len) != 0) {
            size_t i = 0;
            while (p[off + i] == want[i])
                i++;
            fail(lc, &w->st.err_mismatch, "byte %llu of the stream is 0x%02x, expected 0x%02x",
                 (lc->recvd + off + i), p[off + i], want[i]);
            rx_conn_abort(lc->c);
            return;
        }
    }
    lc->recvd += n;
    for (ull done = lc->recvd / size; lc->msgs_done < done; lc->msgs_done++)
        complete(w, t - lc->t_send[lc->msgs_done % STREAM_WINDOW], t);
    if (w->o->messages && lc->msgs_done == w->o->messages)
        w->verified++;
    pump(lc, t);
    maybe_close(lc);
}

static void pump_connects(struct worker *w);

/* Once every connection has opened or failed, the warm-up starts, then the measured window. */
static void end_ramp(struct worker *w, uint64_t t) {
    if (w->phase != RAMP || w->next < w->n || w->connecting > 0)
        return;
    w->phase = RUN;
    w->measure_ns = t + (uint64_t)(w->o->warmup * 1e9);
    if (w->o->duration > 0)
        w->stop_ns = w->cut ? t : w->measure_ns + (uint64_t)(w->o->duration * 1e9);
}

/* --hold: SIGUSR1 ends the hold now (at the end of the ramp if it is still going on). */
static void on_usr1(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    (void)signo;
    struct worker *w = arg;
    w->cut = true;
    if (w->phase == RUN)
        w->stop_ns = now_ns();
}

static void on_open(rx_conn *c, void *arg) {
    (void)c;
    struct lconn *lc = arg;
    struct worker *w = lc->w;
    lc->opened = true;
    w->connecting--;
    if (++w->open > w->st.peak_open)
        w->st.peak_open = w->open;
    uint64_t t = now_ns();
    pump_connects(w);
    end_ramp(w, t);
    pump(lc, t);
}

static void check_finished(struct worker *w) {
    if (w->stopped || w->phase == RAMP || w->open > 0 || w->connecting > 0 || w->next < w->n)
        return;
    w->stopped = true;
    uint64_t end = w->timed ? w->stop_ns : w->last_done_ns;
    w->st.elapsed_s = end > w->measure_ns ? (double)(end - w->measure_ns) / 1e9 : 0;
    rx_loop_stop(w->loop);
}

static void on_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)c;
    struct lconn *lc = arg;
    struct worker *w = lc->w;
    struct stats *st = &w->st;
    const char *why = err ? strerror(-err) : "no error";
    lc->c = NULL;
    if (!lc->opened) {
        w->connecting--;
        fail(lc, &st->err_connect, "connect failed: %s", why);
    } else {
        w->open--;
        if (reason == RX_CLOSE_PEER && !lc->closing)
            fail(lc, &st->err_short, "closed by the server with %llu bytes still to come",
                 (lc->sent - lc->recvd));
        else if (reason == RX_CLOSE_RESET)
            fail(lc, &st->err_reset, "reset by the server (%s)", why);
        else if (reason != RX_CLOSE_LOCAL && reason != RX_CLOSE_PEER)
            fail(lc, &st->err_other, "closed: %s", why);
    }
    if (lc->failed)
        st->conns_failed++;
    else
        st->conns_ok++;
    if (!w->freeing) {
        end_ramp(w, now_ns());
        check_finished(w);
    }
}

static const rx_conn_callbacks load_callbacks = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
};

static void start_connect(struct worker *w, struct lconn *lc) {
    char bind[32];
    rx_connect_opts co = {
        .addr = w->o->connect,
        .timeout_ms = CONNECT_TIMEOUT_MS,
        .cbs = &load_callbacks,
        .arg = lc,
    };
    if (w->o->sources > 1) {
        snprintf(bind, sizeof(bind), "127.0.0.%u:0", (unsigned)(1 + lc->k % w->o->sources));
        co.bind = bind;
    }
    lc->c = rx_connect(w->loop, &co);
    if (lc->c) {
        w->connecting++;
        return;
    }
    fail(lc, &w->st.err_connect, "cannot start a connect: %s", strerror(errno));
    w->st.conns_failed++;
}

static void pump_connects(struct worker *w) {
    while (w->phase == RAMP && w->next < w->n && w->connecting < MAX_OUTSTANDING) {
        if (w->connect_rate > 0) {
            if (w->connect_tokens < 1)
                return;
            w->connect_tokens -= 1;
        }
        start_connect(w, &w->conns[w->next++]);
    }
}

static void progress(struct worker *w, uint64_t t) {
    const struct opts *o = w->o;
    bool long_run = o->duration > 0 ? o->duration + o->warmup > 2 : t - w->t_start > 2 * NS;
    if (t < w->t_progress + NS || !long_run)
        return;
    static const char *const names[] = {"connecting", "running", "draining", "closing"};
    double dt = (double)(t - w->t_progress) / 1e9;
    char who[16] = "";
    if (o->procs > 1)
        snprintf(who, sizeof(who), "[%u]", w->index);
    fprintf(stderr, "echo-load%s: %5.1f s %-10s %10.0f msgs/s %7llu open %llu errors\n", who,
            (double)(t - w->t_start) / 1e9, names[w->phase],
            (double)(w->st.messages_all - w->progress_msgs) / dt, w->open, errors(&w->st));
    w->t_progress = t;
    w->progress_msgs = w->st.messages_all;
}

/* --hold: once every connection of this process has either verified its messages or failed,
 * says so on stderr at once, so that whoever watches (bench/run --c1m) knows when the held
 * connections are all proven. */
static void say_settled(struct worker *w, uint64_t t) {
    if (!w->o->hold || w->settled || w->next < w->n || w->connecting > 0 ||
        w->verified + w->st.conns_failed < w->n)
        return;
    w->settled = true;
    w->st.verified_s = (double)(t - w->t_start) / 1e9;
    char who[16] = "";
    if (w->o->procs > 1)
        snprintf(who, sizeof(who), "[%u]", w->index);
    fprintf(stderr,
            "echo-load%s: all %llu connections settled after %.1f s: %llu verified, %llu failed, "
            "holding\n",
            who, w->n, w->st.verified_s, w->verified, w->st.conns_failed);
}

static void on_tick(rx_timer *timer, void *arg) {
    (void)timer;
    struct worker *w = arg;
    uint64_t t = now_ns();
    double dt = (double)(t - w->t_refill) / 1e9;
    w->t_refill = t;
    if (w->rate > 0) { /* the bucket holds at most 10 ms worth of messages */
        double cap = w->rate / 100 > 1 ? w->rate / 100 : 1;
        w->tokens = w->tokens + dt * w->rate > cap ? cap : w->tokens + dt * w->rate;
        while (w->wait_head && w->tokens >= 1) {
            struct lconn *lc = w->wait_head;
            if (!(w->wait_head = lc->next_wait))
                w->wait_tail = NULL;
            lc->waiting = false;
            pump(lc, t);
        }
    }
    if (w->connect_rate > 0) {
        double cap = w->connect_rate / 100 > 1 ? w->connect_rate / 100 : 1;
        w->connect_tokens += dt * w->connect_rate;
        if (w->connect_tokens > cap)
            w->connect_tokens = cap;
    }
    pump_connects(w);
    end_ramp(w, t);
    say_settled(w, t);
    if (w->phase == RUN && t >= w->stop_ns) {
        w->phase = DRAIN;
        w->timed = true;
        w->drain_end_ns = t + DRAIN_MS * 1000000ull;
        for (ull i = 0; i < w->n; i++)
            maybe_close(&w->conns[i]);
    } else if (w->phase == DRAIN && t >= w->drain_end_ns) {
        w->phase = CLOSE;
        for (ull i = 0; i < w->n; i++) {
            struct lconn *lc = &w->conns[i];
            if (lc->c && !lc->closing) {
                w->st.late += lc->msgs_sent - lc->msgs_done;
                lc->closing = true;
                rx_conn_abort(lc->c);
            }
        }
    }
    progress(w, t);
    check_finished(w);
}

/* Runs connections [first, first + n) in this process. Returns 0, or -1 if the loop failed. */
static int run_worker(const struct opts *o, unsigned index, ull first, ull n, struct stats *out) {
    struct worker w = {.o = o, .index = index, .n = n, .phase = RAMP};
    hist_init(&w.st.lat);
    w.rate = o->rate * (double)n / (double)o->conns;
    w.connect_rate = o->connect_rate * (double)n / (double)o->conns;
    w.tokens = w.rate / 100 > 1 ? w.rate / 100 : 1;
    w.connect_tokens = 1;
    w.t_start = w.t_refill = w.t_progress = now_ns();
    w.measure_ns = w.stop_ns = UINT64_MAX;
    w.conns = calloc(n, sizeof(*w.conns));
    w.loop = w.conns ? rx_loop_new() : NULL;
    rx_timer *tick = w.loop ? rx_timer_new(w.loop, on_tick, &w) : NULL;
    bool paced = o->rate > 0 || o->connect_rate > 0;
    if (!tick || rx_timer_start(tick, 0, paced ? 1 : 10) < 0) {
        fprintf(stderr, "echo-load: cannot set up the loop: %s\n", strerror(errno));
        if (w.loop)
            rx_loop_free(w.loop);
        free(w.conns);
        return -1;
    }
    if (o->hold && !rx_signal_new(w.loop, SIGUSR1, on_usr1, &w)) {
        fprintf(stderr, "echo-load: cannot watch SIGUSR1: %s\n", strerror(errno));
        rx_loop_free(w.loop);
        free(w.conns);
        return -1;
    }
    for (ull i = 0; i < n; i++)
        w.conns[i] = (struct lconn){.w = &w, .k = first + i};
    int rc = rx_loop_run(w.loop);
    if (rc < 0)
        fprintf(stderr, "echo-load: the loop failed: %s\n", strerror(-rc));
    w.freeing = true; /* on_close of connections still open runs in rx_loop_free */
    rx_loop_free(w.loop);
    free(w.conns);
    *out = w.st;
    return rc < 0 ? -1 : 0;
}

static void raise_nofile(ull need) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        need + 32 > rl.rlim_cur)
        fprintf(stderr,
                "echo-load: warning: %llu connections per process but RLIMIT_NOFILE is %llu; "
                "use more --procs or raise the limit\n",
                need, (ull)rl.rlim_cur);
}

static void merge(struct stats *into, const struct stats *s) {
    into->conns_ok += s->conns_ok;
    into->conns_failed += s->conns_failed;
    into->messages += s->messages;
    into->messages_all += s->messages_all;
    into->err_mismatch += s->err_mismatch;
    into->err_reset += s->err_reset;
    into->err_short += s->err_short;
    into->err_connect += s->err_connect;
    into->err_other += s->err_other;
    into->late += s->late;
    into->peak_open += s->peak_open;
    if (s->elapsed_s > into->elapsed_s)
        into->elapsed_s = s->elapsed_s;
    if (s->verified_s > into->verified_s)
        into->verified_s = s->verified_s;
    hist_merge(&into->lat, &s->lat);
}

/* Moves n bytes through a pipe. Returns 0, or -1 on an error or a short transfer. */
static int xfer(int fd, void *buf, size_t n, bool out) {
    for (size_t off = 0; off < n;) {
        ssize_t r =
            out ? write(fd, (char *)buf + off, n - off) : read(fd, (char *)buf + off, n - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        off += (size_t)r;
    }
    return 0;
}

/* Forks one worker per process; each sends its stats back through its pipe. */
static int run_procs(const struct opts *o, struct stats *total, double *msgs_per_s) {
    int bad = 0;
    int fds[256];
    pid_t pids[256];
    ull first = 0;
    for (unsigned i = 0; i < o->procs; i++) {
        ull n = o->conns / o->procs + (i < o->conns % o->procs);
        int p[2];
        if (pipe(p) < 0 || (pids[i] = fork()) < 0) {
            fprintf(stderr, "echo-load: cannot start worker %u: %s\n", i, strerror(errno));
            exit(1);
        }
        if (pids[i] == 0) {
            close(p[0]);
            struct stats st;
            bool ok =
                run_worker(o, i, first, n, &st) == 0 && xfer(p[1], &st, sizeof(st), true) == 0;
            _exit(ok ? 0 : 1);
        }
        close(p[1]);
        fds[i] = p[0];
        first += n;
    }
    /* --hold: SIGUSR1 to the process group ends every worker's hold; it is not for this one. */
    if (o->hold)
        signal(SIGUSR1, SIG_IGN);
    for (unsigned i = 0; i < o->procs; i++) {
        struct stats st;
        int got = xfer(fds[i], &st, sizeof(st), false);
        close(fds[i]);
        int status = 0;
        while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR)
            ;
        if (got < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "echo-load: worker %u failed without a report\n", i);
            bad = 1;
            continue;
        }
        merge(total, &st);
        if (st.elapsed_s > 0)
            *msgs_per_s += (double)st.messages / st.elapsed_s;
    }
    return bad ? -1 : 0;
}

static void print_report(const struct opts *o, const struct stats *s, double msgs_per_s) {
    double mbps = msgs_per_s * (double)o->size / 1e6;
    const struct hist *h = &s->lat;
    double p50 = (double)hist_quantile(h, 0.50) / 1e3, p90 = (double)hist_quantile(h, 0.90) / 1e3;
    double p99 = (double)hist_quantile(h, 0.99) / 1e3, p999 = (double)hist_quantile(h, 0.999) / 1e3;
    double mean = h->count ? (double)h->sum_ns / (double)h->count / 1e3 : 0;
    double max = (double)h->max_ns / 1e3;
    const char *mode = o->mode == STREAM ? "stream" : "pingpong";
    if (o->json) {
        printf("{\"mode\":\"%s\",\"conns\":%llu,\"size\":%zu,\"procs\":%u,\"sources\":%u,"
               "\"elapsed_s\":%.3f,\"conns_ok\":%llu,\"conns_failed\":%llu,\"messages\":%llu,"
               "\"messages_all\":%llu,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,"
               "\"latency_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
               "\"mean\":%.1f,\"max\":%.1f},\"errors\":{\"total\":%llu,\"mismatch\":%llu,"
               "\"reset\":%llu,\"short_close\":%llu,\"connect\":%llu,\"other\":%llu},"
               "\"late\":%llu,\"peak_open\":%llu,\"verified_s\":%.3f}\n",
               mode, o->conns, o->size, o->procs, o->sources, s->elapsed_s, s->conns_ok,
               s->conns_failed, s->messages, s->messages_all, msgs_per_s, mbps, p50, p90, p99, p999,
               mean, max, errors(s), s->err_mismatch, s->err_reset, s->err_short, s->err_connect,
               s->err_other, s->late, s->peak_open, s->verified_s);
        return;
    }
    printf("echo-load: %s, %llu connections x %zu B, %u process%s, %.2f s measured\n", mode,
           o->conns, o->size, o->procs, o->procs > 1 ? "es" : "", s->elapsed_s);
    printf("  connections  %llu ok, %llu failed\n", s->conns_ok, s->conns_failed);
    printf("  messages     %llu measured (%llu verified in all), %.0f msgs/s, %.2f MB/s echoed\n",
           s->messages, s->messages_all, msgs_per_s, mbps);
    printf("  latency us   p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  mean %.1f  max %.1f\n", p50,
           p90, p99, p999, mean, max);
    printf("  errors       %llu (mismatch %llu, reset %llu, short close %llu, connect %llu, "
           "other %llu)",
           errors(s), s->err_mismatch, s->err_reset, s->err_short, s->err_connect, s->err_other);
    if (s->late)
        printf(", %llu echoes late at the end", s->late);
    printf("\n");
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: echo-load --connect ADDR --conns N --size BYTES [options]\n"
            "  --connect ADDR      echo server to load, e.g. 127.0.0.1:7000\n"
            "  --conns N           connections in all (split over the processes)\n"
            "  --size BYTES        message size\n"
            "  --mode MODE         pingpong (default): one message in flight per connection;\n"
            "                      stream: up to %d messages in flight per connection\n"
            "  --duration S        measure for S seconds (default 10 unless --messages)\n"
            "  --messages M        messages per connection in all, then close (with --duration:\n"
            "                      whichever ends first)\n"
            "  --rate R            at most R messages/s over all connections (0: unlimited)\n"
            "  --procs P           worker processes, each with N/P connections (default 1)\n"
            "  --sources K         spread connections over source addresses 127.0.0.1..K, for\n"
            "                      more than ~28k connections to one server (default: as many\n"
            "                      as ip_local_port_range needs for --conns, to a 127.x server)\n"
            "  --connect-rate C    start at most C connects/s (default unlimited; at most %d\n"
            "                      connects in flight per process in any case)\n"
            "  --warmup S          run S seconds before measuring (default 0)\n"
            "  --hold              with --messages and --duration: keep each connection open\n"
            "                      once its messages are verified, until --duration ends;\n"
            "                      each process says on stderr when all of its are verified;\n"
            "                      SIGUSR1 (to the process group) ends the hold at once\n"
            "  --json              print one JSON object instead of the text summary\n"
            "  --help              this text\n"
            "Every echoed byte is verified. Exit status: 0 when all went well, 1 on any error\n"
            "(mismatch, reset, early close, failed connect), 2 on bad arguments.\n",
            STREAM_WINDOW, MAX_OUTSTANDING);
}

static int parse_u64(const char *s, ull min, ull max, ull *out) {
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_secs(const char *s, double *out) {
    char *end;
    errno = 0;
    if ((*s < '0' || *s > '9') && *s != '.')
        return -1;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= 0 && v <= 1e9))
        return -1;
    *out = v;
    return 0;
}

static int bad_arg(const char *opt, const char *val, const char *want) {
    fprintf(stderr, "echo-load: %s wants %s, got '%s'\n", opt, want, val);
    return 2;
}

/* Source addresses enough that none runs out of ephemeral ports towards the server: each gives
 * the size of ip_local_port_range (less a tenth, for TIME_WAIT and other sockets). Only for a
 * 127.0.0.0/8 server, where every 127.0.0.X is a local address. */
static unsigned auto_sources(const rx_addr *addr, unsigned long long conns) {
    if (addr->u.sa.sa_family != AF_INET || (ntohl(addr->u.in.sin_addr.s_addr) >> 24) != 127)
        return 1;
    unsigned lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%u %u", &lo, &hi) != 2 || hi < lo)
            lo = 32768, hi = 60999;
        fclose(f);
    }
    unsigned long long ports = (hi - lo + 1ull) * 9 / 10;
    unsigned long long n = (conns + ports - 1) / ports;
    return n < 1 ? 1 : n > 254 ? 254 : (unsigned)n;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"connect", required_argument, NULL, 'c'},
        {"conns", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},
        {"mode", required_argument, NULL, 'm'},
        {"duration", required_argument, NULL, 'd'},
        {"messages", required_argument, NULL, 'M'},
        {"rate", required_argument, NULL, 'r'},
        {"procs", required_argument, NULL, 'p'},
        {"sources", required_argument, NULL, 'S'},
        {"connect-rate", required_argument, NULL, 'C'},
        {"warmup", required_argument, NULL, 'w'},
        {"json", no_argument, NULL, 'j'},
        {"hold", no_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct opts o = {.mode = PINGPONG, .procs = 1, .sources = 0}; /* 0: chosen below */
    ull v;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:n:s:m:d:M:r:p:S:C:w:jHh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            o.connect = optarg;
            break;
        case 'n':
            if (parse_u64(optarg, 1, 10000000, &o.conns) < 0)
                return bad_arg("--conns", optarg, "a count from 1");
            break;
        case 's':
            if (parse_u64(optarg, 1, MAX_SIZE, &v) < 0)
                return bad_arg("--size", optarg, "bytes from 1 to 64 MiB");
            o.size = (size_t)v;
            break;
        case 'm':
            if (strcmp(optarg, "pingpong") != 0 && strcmp(optarg, "stream") != 0)
                return bad_arg("--mode", optarg, "pingpong or stream");
            o.mode = optarg[0] == 's' ? STREAM : PINGPONG;
            break;
        case 'd':
            if (parse_secs(optarg, &o.duration) < 0 || o.duration == 0)
                return bad_arg("--duration", optarg, "seconds above 0");
            break;
        case 'M':
            if (parse_u64(optarg, 1, UINT64_MAX, &o.messages) < 0)
                return bad_arg("--messages", optarg, "a count from 1");
            break;
        case 'r':
            if (parse_secs(optarg, &o.rate) < 0)
                return bad_arg("--rate", optarg, "messages per second (0: unlimited)");
            break;
        case 'p':
            if (parse_u64(optarg, 1, 256, &v) < 0)
                return bad_arg("--procs", optarg, "a count from 1 to 256");
            o.procs = (unsigned)v;
            break;
        case 'S':
            if (parse_u64(optarg, 1, 254, &v) < 0)
                return bad_arg("--sources", optarg, "a count from 1 to 254");
            o.sources = (unsigned)v;
            break;
        case 'C':
            if (parse_secs(optarg, &o.connect_rate) < 0)
                return bad_arg("--connect-rate", optarg, "connects per second (0: unlimited)");
            break;
        case 'w':
            if (parse_secs(optarg, &o.warmup) < 0)
                return bad_arg("--warmup", optarg, "seconds");
            break;
        case 'H':
            o.hold = true;
            break;
        case 'j':
            o.json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "echo-load: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    rx_addr addr;
    if (!o.connect || !o.conns || !o.size) {
        fprintf(stderr, "echo-load: --connect, --conns and --size are required (see --help)\n");
        return 2;
    }
    if (rx_addr_parse(&addr, o.connect) < 0)
        return bad_arg("--connect", o.connect, "an address like 127.0.0.1:7000");
    if (o.sources > 1 && addr.u.sa.sa_family != AF_INET)
        return bad_arg("--connect", o.connect, "an IPv4 address with --sources");
    if (o.sources == 0)
        o.sources = auto_sources(&addr, o.conns);
    if (o.procs > o.conns) {
        fprintf(stderr, "echo-load: --procs %u is more than --conns %llu\n", o.procs, o.conns);
        return 2;
    }
    if (o.hold && (o.duration == 0 || o.messages == 0)) {
        fprintf(stderr, "echo-load: --hold needs --messages and --duration\n");
        return 2;
    }
    if (o.duration == 0 && o.messages == 0)
        o.duration = 10;

    pattern_span = o.size > 65536 ? o.size : 65536;
    pattern = malloc(256 + pattern_span);
    if (!pattern) {
        fprintf(stderr, "echo-load: out of memory\n");
        return 1;
    }
    for (size_t j = 0; j < 256 + pattern_span; j++)
        pattern[j] = (unsigned char)(j * 131);
    raise_nofile((o.conns + o.procs - 1) / o.procs);

    struct stats total = {0};
    hist_init(&total.lat);
    double msgs_per_s = 0;
    int rc;
    if (o.procs == 1) {
        rc = run_worker(&o, 0, 0, o.conns, &total);
        if (total.elapsed_s > 0)
            msgs_per_s = (double)total.messages / total.elapsed_s;
    } else {
        fflush(stdout);
        rc = run_procs(&o, &total, &msgs_per_s);
    }
    print_report(&o, &total, msgs_per_s);
    free(pattern);
    return rc < 0 || errors(&total) > 0 ? 1 : 0;
}
