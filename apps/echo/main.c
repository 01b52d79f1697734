/* rx-echo: writes every byte back in order. Shows the TCP layer's backpressure (a client that
 * does not read stops being read, and is closed once its echoes make no progress for
 * --send-timeout), half-close, idle timeouts, a graceful stop on signals, and connections spread
 * over N loops on N threads (--threads, --spread). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rx/rx.h>

#include "../app.h"

/* The context of every connection on one loop: its counters, written only by that loop's thread
 * (on_close), read by main after the join (which orders them), so they need no atomics. Each on
 * its own cache line, so that loops closing connections at the same time do not bounce one line
 * between cores. */
struct echo_loop {
    _Alignas(64) rx_loop *loop;
    const struct echo *e;
    unsigned long long conns, bytes_in, bytes_out;
};

/* Shared by every loop: read-only once the group started, but for shed (atomic). */
struct echo {
    bool backpressure; /* --tune no-backpressure clears it */
    app_shed shed;
    unsigned nloops;
    struct echo_loop *loops;
};

/* A connection's context is its loop's counters: a scan of at most one entry per CPU, once per
 * connection, not per read. */
static void on_open(rx_conn *c, void *arg) {
    struct echo *e = arg; /* the server's */
    rx_loop *loop = rx_conn_loop(c);
    for (unsigned i = 0; i < e->nloops; i++)
        if (e->loops[i].loop == loop) {
            rx_conn_set_arg(c, &e->loops[i]);
            return;
        }
    abort(); /* every connection lives on a loop of the group */
}

static void on_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    /* Written straight from the read buffer when the socket takes it; queued otherwise. */
    if (rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in)) == 0)
        rx_buffer_consume(in, rx_buffer_len(in));
    else
        rx_conn_abort(c);
}

/* Backpressure: stop reading from a client whose echoes pile up until it reads them. */
static void on_high_water(rx_conn *c, size_t queued, void *arg) {
    (void)queued;
    const struct echo_loop *el = arg;
    if (el->e->backpressure)
        rx_conn_pause_read(c);
}

static void on_low_water(rx_conn *c, size_t queued, void *arg) {
    (void)queued;
    (void)arg;
    rx_conn_resume_read(c);
}

static void on_close(rx_conn *c, rx_close_reason reason, int err, void *arg) {
    (void)reason;
    (void)err;
    struct echo_loop *el = arg;
    el->conns++;
    el->bytes_in += rx_conn_bytes_in(c);
    el->bytes_out += rx_conn_bytes_out(c);
}

static void on_shed(rx_listener *l, void *arg) {
    struct echo *e = arg;
    app_on_shed(l, &e->shed);
}

static const rx_conn_callbacks echo_callbacks = {
    .on_open = on_open,
    .on_data = on_data,
    .on_high_water = on_high_water,
    .on_low_water = on_low_water,
    .on_close = on_close,
};

static void usage(FILE *out) {
    fprintf(
        out,
        "usage: rx-echo [--listen ADDR] [--threads N] [--spread handoff|reuseport] [--workers N]\n"
        "               [--idle-timeout SECONDS] [--send-timeout SECONDS] [--max-conns N]\n"
        "               [--proxy-protocol] [--help]\n"
        "  --listen ADDR           127.0.0.1:PORT, [::1]:PORT or unix:/path "
        "(default 127.0.0.1:7000)\n"
        "  --threads N             loops, one thread each (default 1, 0: one per CPU)\n"
        "  --spread MODE           how connections reach the loops: handoff (one loop "
        "accepts,\n"
        "                          default) or reuseport (a listener per loop)\n"
        "  --idle-timeout SECONDS  close connections idle this long (default: never)\n"
        "  --send-timeout SECONDS  close a connection whose echoes the client has taken none\n"
        "                          of for this long (default 60, 0: never)\n"
        "  --max-conns N           close connections beyond N at once (default: no "
        "limit)\n"
        "  --workers N             a master and N worker processes sharing the port (default\n"
        "                          0: this process serves); SIGHUP reloads the workers\n"
        "  --proxy-protocol        behind a layer-4 balancer: every connection starts with a\n"
        "                          PROXY protocol header (v1 or v2), read before anything else;\n"
        "                          a missing or bad one closes the connection\n");
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"send-timeout", required_argument, NULL, 'w'},
        {"max-conns", required_argument, NULL, 'm'},
        {"tune", required_argument, NULL, 't'},
        {"threads", required_argument, NULL, 'n'},
        {"spread", required_argument, NULL, 's'},
        {"workers", required_argument, NULL, 'W'},
        {"proxy-protocol", no_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* A client that stops reading its echoes holds their memory: after 60 s (nginx's send_timeout)
     * without progress it is closed. The timer costs nothing until output has to wait. */
    rx_server_opts opts = {
        .listen = "127.0.0.1:7000", .cbs = &echo_callbacks, .conn.write_timeout_ms = 60000};
    struct echo e = {.backpressure = true};
    unsigned threads = 1, workers = 0;
    unsigned long long v;
    int ch;
    while ((ch = getopt_long(argc, argv, "l:i:w:m:t:n:s:W:Ph", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            opts.listen = optarg;
            break;
        case 'i':
            if (app_parse_count(optarg, UINT64_MAX / 1000, &v) < 0) {
                fprintf(stderr, "rx-echo: --idle-timeout wants whole seconds, got '%s'\n", optarg);
                return 2;
            }
            opts.conn.idle_timeout_ms = v * 1000;
            break;
        case 'w':
            if (app_parse_count(optarg, UINT64_MAX / 1000, &v) < 0) {
                fprintf(stderr, "rx-echo: --send-timeout wants whole seconds, got '%s'\n", optarg);
                return 2;
            }
            opts.conn.write_timeout_ms = v * 1000;
            break;
        case 'm':
            if (app_parse_count(optarg, SIZE_MAX, &v) < 0 || v == 0) {
                fprintf(stderr, "rx-echo: --max-conns wants a positive count, got '%s'\n", optarg);
                return 2;
            }
            opts.max_conns = (size_t)v;
            break;
        case 't':
            if (tune_apply("rx-echo", optarg, &opts, &e.backpressure, NULL, NULL) < 0)
                return 2;
            break;
        case 'n':
            if (app_parse_threads("rx-echo", optarg, &threads) < 0)
                return 2;
            break;
        case 's':
            if (app_parse_spread("rx-echo", optarg, &opts.spread) < 0)
                return 2;
            break;
        case 'W':
            if (app_parse_workers("rx-echo", optarg, &workers) < 0)
                return 2;
            break;
        case 'P':
            opts.listener.proxy_protocol = true;
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
        fprintf(stderr, "rx-echo: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    rx_addr check;
    if (rx_addr_parse(&check, opts.listen) < 0) {
        fprintf(stderr,
                "rx-echo: bad --listen address '%s' (want 127.0.0.1:PORT, [::1]:PORT or "
                "unix:/path)\n",
                opts.listen);
        return 2;
    }

    unsigned long long nofile = app_raise_nofile();
    char prog[32] = "rx-echo";
    if (workers > 0 && rx_worker_slot() < 0)
        return app_run_master(prog, &opts, threads, workers, 0, argv, nofile);
    int fds[APP_MAX_THREADS];
    if (app_inherit_sockets(prog, &opts, fds, APP_MAX_THREADS) < 0)
        return 1;
    if (rx_worker_slot() >= 0)
        snprintf(prog, sizeof(prog), "rx-echo worker %d", rx_worker_slot());
    opts.arg = &e;
    opts.listener.on_shed = on_shed;
    e.shed.prog = prog;
    app_run run = {.prog = prog};
    run.group = rx_loop_group_new(threads);
    if (!run.group) {
        fprintf(stderr, "rx-echo: cannot create the loops: %s\n", strerror(errno));
        return 1;
    }
    e.nloops = rx_loop_group_size(run.group);
    e.loops = aligned_alloc(_Alignof(struct echo_loop), e.nloops * sizeof(*e.loops));
    if (!e.loops) {
        fprintf(stderr, "rx-echo: out of memory\n");
        return 1;
    }
    for (unsigned i = 0; i < e.nloops; i++)
        e.loops[i] = (struct echo_loop){.loop = rx_loop_group_loop(run.group, i), .e = &e};
    opts.group = run.group;
    run.server = rx_server_new(rx_loop_group_loop(run.group, 0), &opts);
    if (!run.server) {
        fprintf(stderr, "rx-echo: cannot listen on %s: %s\n", opts.listen, strerror(errno));
        rx_loop_group_free(run.group);
        free(e.loops);
        return 1;
    }
    if (app_watch_signals(&run) < 0)
        return 1;
    if (!app_worker_serving(prog)) {
        char where[RX_ADDR_STRLEN];
        rx_addr_format(rx_server_addr(run.server), where, sizeof(where));
        printf("rx-echo listening on %s (%u thread%s, spread %s, open files limit %llu%s)\n", where,
               e.nloops, e.nloops == 1 ? "" : "s", app_spread_name(opts.spread), nofile,
               opts.listener.proxy_protocol ? ", PROXY protocol" : "");
        fflush(stdout);
    }

    int rc = app_run_group(&run);
    /* The threads are joined: what is left (connections aborted here, whose on_close counts them)
     * runs on this thread. */
    app_print_refused(prog, run.server, &opts);
    rx_server_free(run.server);
    rx_loop_group_free(run.group);
    struct echo_loop sum = {0};
    for (unsigned i = 0; i < e.nloops; i++) {
        sum.conns += e.loops[i].conns;
        sum.bytes_in += e.loops[i].bytes_in;
        sum.bytes_out += e.loops[i].bytes_out;
    }
    free(e.loops);
    printf("%s: %llu connections, %llu bytes in, %llu bytes out\n", prog, sum.conns, sum.bytes_in,
           sum.bytes_out);
    return rc < 0 ? 1 : 0;
}
