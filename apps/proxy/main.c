/* rx-proxy: a TCP forwarding proxy. Every client accepted on --listen gets a connection to
 * --upstream, made on the client's own loop and joined to the client at once (rx_conn_join):
 * what the client sends while the upstream is still connecting waits on the upstream, bytes flow
 * both ways with backpressure, half-closes and resets pass through, and a refused connect ends
 * the client's stream. Shows rx_connect and rx_conn_join on N loops (--threads, --spread). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rx/join.h>
#include <rx/rx.h>

#include "../app.h"

/* The high-water mark of both connections of a pair. A pair holds at most what one side queued
 * for the other past it plus one read (64 KiB), in each direction, whatever the speeds: a quarter
 * of rx's default (1 MiB), since a proxy holds two connections per client, and a socket's own
 * buffers carry more than this on a fast path anyway. */
#define PROXY_HIGH_WATER (256 * 1024)

struct proxy;

/* The state of one loop: written only by its own thread (on_open, on_end, drain), read by main
 * after the join of the threads (which orders them), so it needs no atomics. Each on its own cache
 * line, so that loops ending pairs at the same time do not bounce one line between cores. */
struct proxy_loop {
    _Alignas(64) rx_loop *loop;
    struct proxy *p;
    unsigned long long conns, bytes_up, bytes_down, failed; /* pairs ended, and what they moved */
    size_t live;                                            /* pairs joined and not ended yet */
    bool draining; /* the server stopped: the loop is done once live is 0 */
};

/* Shared by every loop: read-only once the group started, but for shed and loops_busy (atomic)
 * and stopping (loop 0's thread only). */
struct proxy {
    rx_connect_opts upstream; /* address, connect timeout, idle timeout of every upstream */
    app_shed shed;
    rx_loop_group *group;
    rx_server *server;
    unsigned nloops;
    struct proxy_loop *loops;
    bool stopping;
    _Atomic unsigned loops_busy; /* after the server's stop: loops with pairs still ending */
};

/* The counters of the loop a connection lives on: a scan of at most one entry per CPU, once per
 * client (on_open), not per read. */
static struct proxy_loop *loop_of(struct proxy *p, rx_conn *c) {
    rx_loop *loop = rx_conn_loop(c);
    for (unsigned i = 0; i < p->nloops; i++)
        if (p->loops[i].loop == loop)
            return &p->loops[i];
    abort(); /* every connection lives on a loop of the group */
}

/* One loop more has no pair left after the server's stop; the last one stops every loop. */
static void loop_drained(struct proxy *p) {
    if (atomic_fetch_sub_explicit(&p->loops_busy, 1, memory_order_acq_rel) == 1)
        rx_loop_group_stop(p->group);
}

/* Both connections of a pair have closed (on their loop's thread, or in rx_loop_free on main's
 * once the threads are joined). Index 0 is the client, 1 the upstream. */
static void on_end(const rx_join_end *end, void *arg) {
    struct proxy_loop *pl = arg;
    pl->conns++;
    pl->bytes_up += end->bytes[0];
    pl->bytes_down += end->bytes[1];
    pl->failed += !end->opened[1]; /* the upstream's connect failed (or the client left first) */
    if (--pl->live == 0 && pl->draining)
        loop_drained(pl->p);
}

/* A client is accepted, on the loop it will live on: connect to the upstream from the same loop
 * and join the two before either can read, so the first bytes either way are forwarded too. */
static void on_open(rx_conn *client, void *arg) {
    struct proxy *p = arg;
    struct proxy_loop *pl = loop_of(p, client);
    rx_conn *up = rx_connect(pl->loop, &p->upstream);
    int rc = up ? rx_conn_join(client, up, &(rx_join_opts){.on_end = on_end, .arg = pl}) : -errno;
    if (rc == 0) {
        pl->live++;
        return;
    }
    /* No socket for the upstream (EMFILE, ...) or no memory: the client sees its stream end. */
    if (up)
        rx_conn_abort(up);
    rx_conn_close(client);
    pl->conns++;
    pl->failed++;
}

static void on_shed(rx_listener *l, void *arg) {
    struct proxy *p = arg;
    app_on_shed(l, &p->shed);
}

/* The graceful stop. The server stops accepting and its stop closes each client gracefully (the
 * join's on_stop: what is queued for it is written, then its stream ends), and the join then
 * closes the upstream the same way; the loops go on until every upstream has written what was
 * queued for it and closed (bounded by its close timeout), so a stop does not cut off what a
 * client sent last. Then every loop stops. */
static void drain(void *arg) {
    struct proxy_loop *pl = arg;
    pl->draining = true;
    if (pl->live == 0)
        loop_drained(pl->p);
}

/* On loop 0, once the server has no client left: each loop checks its own pairs. */
static void on_server_stopped(void *arg) {
    struct proxy *p = arg;
    atomic_store_explicit(&p->loops_busy, p->nloops, memory_order_relaxed);
    for (unsigned i = 0; i < p->nloops; i++)
        if (rx_loop_post(p->loops[i].loop, drain, &p->loops[i]) < 0)
            loop_drained(p); /* no memory for the task: do not wait for that loop */
}

/* SIGINT and SIGTERM, watched once, on loop 0 (signals are process-wide). */
static void on_signal(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    struct proxy *p = arg;
    if (p->stopping) /* a second signal changes nothing: the deadlines bound the stop already */
        return;
    p->stopping = true;
    fprintf(stderr, "rx-proxy: %s, stopping\n", strsignal(signo));
    rx_server_stop(p->server, 5000, on_server_stopped, p);
}

/* Only until rx_conn_join: from then on the join owns each client's callbacks. */
static const rx_conn_callbacks client_callbacks = {.on_open = on_open};

static void usage(FILE *out) {
    fprintf(out, "usage: rx-proxy --listen ADDR --upstream ADDR [--connect-timeout SECONDS]\n"
                 "                [--idle-timeout SECONDS] [--max-conns N] [--threads N]\n"
                 "                [--spread handoff|reuseport] [--help]\n"
                 "  --listen ADDR              where clients connect: 127.0.0.1:PORT, [::1]:PORT "
                 "or\n"
                 "                             unix:/path (default 127.0.0.1:7100)\n"
                 "  --upstream ADDR            where every client is forwarded to (required), in "
                 "the\n"
                 "                             same forms\n"
                 "  --connect-timeout SECONDS  give up connecting to the upstream after this long "
                 "(the\n"
                 "                             client then sees its stream end; default 5, 0: the "
                 "kernel's)\n"
                 "  --idle-timeout SECONDS     close a pair whose client or upstream is idle this "
                 "long\n"
                 "                             (default 300, 0: never)\n"
                 "  --max-conns N              close clients beyond N at once (default: no limit)\n"
                 "  --threads N                loops, one thread each (default 1, 0: one per CPU)\n"
                 "  --spread MODE              how clients reach the loops: handoff (one loop "
                 "accepts,\n"
                 "                             default) or reuseport (a listener per loop)\n");
}

/* Whole seconds, as milliseconds. Returns 0, or -1 after printing why the value is bad. */
static int parse_seconds(const char *flag, const char *s, uint64_t *ms) {
    unsigned long long v;
    if (app_parse_count(s, UINT64_MAX / 1000, &v) < 0) {
        fprintf(stderr, "rx-proxy: %s wants whole seconds, got '%s'\n", flag, s);
        return -1;
    }
    *ms = v * 1000;
    return 0;
}

static int check_addr(const char *flag, const char *addr) {
    rx_addr check;
    if (rx_addr_parse(&check, addr) == 0)
        return 0;
    fprintf(stderr,
            "rx-proxy: bad %s address '%s' (want 127.0.0.1:PORT, [::1]:PORT or unix:/path)\n", flag,
            addr);
    return -1;
}

/* Fills opts, p->upstream and threads from the command line. Returns 0 to go on, 2 for bad usage
 * (after saying why), or -1 after --help printed the usage. */
static int parse_args(int argc, char **argv, rx_server_opts *opts, struct proxy *p,
                      unsigned *threads) {
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"upstream", required_argument, NULL, 'u'},
        {"connect-timeout", required_argument, NULL, 'c'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"max-conns", required_argument, NULL, 'm'},
        {"threads", required_argument, NULL, 'n'},
        {"spread", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    unsigned long long v;
    int ch;
    while ((ch = getopt_long(argc, argv, "l:u:c:i:m:n:s:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            opts->listen = optarg;
            break;
        case 'u':
            p->upstream.addr = optarg;
            break;
        case 'c':
            if (parse_seconds("--connect-timeout", optarg, &p->upstream.timeout_ms) < 0)
                return 2;
            break;
        case 'i':
            if (parse_seconds("--idle-timeout", optarg, &opts->conn.idle_timeout_ms) < 0)
                return 2;
            break;
        case 'm':
            if (app_parse_count(optarg, SIZE_MAX, &v) < 0 || v == 0) {
                fprintf(stderr, "rx-proxy: --max-conns wants a positive count, got '%s'\n", optarg);
                return 2;
            }
            opts->max_conns = (size_t)v;
            break;
        case 'n':
            if (app_parse_threads("rx-proxy", optarg, threads) < 0)
                return 2;
            break;
        case 's':
            if (app_parse_spread("rx-proxy", optarg, &opts->spread) < 0)
                return 2;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "rx-proxy: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!p->upstream.addr) {
        fprintf(stderr, "rx-proxy: --upstream ADDR is required\n");
        usage(stderr);
        return 2;
    }
    if (check_addr("--listen", opts->listen) < 0 || check_addr("--upstream", p->upstream.addr) < 0)
        return 2;
    p->upstream.conn = opts->conn; /* the same marks and idle timeout */
    return 0;
}

int main(int argc, char **argv) {
    rx_server_opts opts = {
        .listen = "127.0.0.1:7100",
        .conn = {.high_water = PROXY_HIGH_WATER, .idle_timeout_ms = 300 * 1000},
        .cbs = &client_callbacks,
    };
    struct proxy p = {.upstream = {.timeout_ms = 5 * 1000}};
    unsigned threads = 1;
    int rc = parse_args(argc, argv, &opts, &p, &threads);
    if (rc != 0)
        return rc < 0 ? 0 : rc;

    opts.arg = &p;
    opts.listener.on_shed = on_shed;
    unsigned long long nofile = app_raise_nofile();
    p.shed.prog = "rx-proxy";
    p.group = rx_loop_group_new(threads);
    if (!p.group) {
        fprintf(stderr, "rx-proxy: cannot create the loops: %s\n", strerror(errno));
        return 1;
    }
    p.nloops = rx_loop_group_size(p.group);
    p.loops = aligned_alloc(_Alignof(struct proxy_loop), p.nloops * sizeof(*p.loops));
    if (!p.loops) {
        fprintf(stderr, "rx-proxy: out of memory\n");
        return 1;
    }
    for (unsigned i = 0; i < p.nloops; i++)
        p.loops[i] = (struct proxy_loop){.loop = rx_loop_group_loop(p.group, i), .p = &p};
    opts.group = p.group;
    rx_loop *loop0 = rx_loop_group_loop(p.group, 0);
    p.server = rx_server_new(loop0, &opts);
    if (!p.server) {
        fprintf(stderr, "rx-proxy: cannot listen on %s: %s\n", opts.listen, strerror(errno));
        rx_loop_group_free(p.group);
        free(p.loops);
        return 1;
    }
    /* Before the threads start: they inherit the mask in which rx blocked the signals. */
    if (!rx_signal_new(loop0, SIGINT, on_signal, &p) ||
        !rx_signal_new(loop0, SIGTERM, on_signal, &p)) {
        fprintf(stderr, "rx-proxy: cannot watch signals: %s\n", strerror(errno));
        return 1;
    }
    char where[RX_ADDR_STRLEN];
    rx_addr_format(rx_server_addr(p.server), where, sizeof(where));
    printf(
        "rx-proxy listening on %s, upstream %s (%u thread%s, spread %s, open files limit %llu)\n",
        where, p.upstream.addr, p.nloops, p.nloops == 1 ? "" : "s", app_spread_name(opts.spread),
        nofile);
    fflush(stdout);

    rc = app_run_group(&(app_run){.prog = "rx-proxy", .group = p.group});
    /* The threads are joined: what is left (pairs aborted here, whose on_end counts them) runs on
     * this thread, and only then are the loops' counters final. The group is no longer stopped
     * when a pair ends here. */
    for (unsigned i = 0; i < p.nloops; i++)
        p.loops[i].draining = false;
    rx_server_free(p.server);
    rx_loop_group_free(p.group);
    struct proxy_loop sum = {0};
    for (unsigned i = 0; i < p.nloops; i++) {
        sum.conns += p.loops[i].conns;
        sum.bytes_up += p.loops[i].bytes_up;
        sum.bytes_down += p.loops[i].bytes_down;
        sum.failed += p.loops[i].failed;
    }
    free(p.loops);
    fprintf(stderr,
            "rx-proxy: %llu connections, %llu bytes client->upstream, %llu bytes "
            "upstream->client, %llu failed connects\n",
            sum.conns, sum.bytes_up, sum.bytes_down, sum.failed);
    return rc < 0 ? 1 : 0;
}
