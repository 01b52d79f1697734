/* rx-echo: writes every byte back in order. Shows the TCP layer's backpressure (a client that
 * does not read stops being read), half-close, idle timeouts and a graceful stop on signals. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rx/rx.h>

#include "../app.h"

struct echo {
    rx_loop *loop;
    rx_server *server;
    unsigned long long conns, bytes_in, bytes_out;
    bool backpressure; /* --tune no-backpressure clears it */
    app_shed shed;
};

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
    struct echo *e = arg;
    if (e->backpressure)
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
    struct echo *e = arg;
    e->conns++;
    e->bytes_in += rx_conn_bytes_in(c);
    e->bytes_out += rx_conn_bytes_out(c);
}

static void on_shed(rx_listener *l, void *arg) {
    struct echo *e = arg;
    app_on_shed(l, &e->shed);
}

static const rx_conn_callbacks echo_callbacks = {
    .on_data = on_data,
    .on_high_water = on_high_water,
    .on_low_water = on_low_water,
    .on_close = on_close,
};

static void on_stopped(void *arg) {
    struct echo *e = arg;
    rx_loop_stop(e->loop);
}

static void on_signal(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    struct echo *e = arg;
    fprintf(stderr, "rx-echo: %s, stopping\n", strsignal(signo));
    rx_server_stop(e->server, 5000, on_stopped, e);
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: rx-echo [--listen ADDR] [--idle-timeout SECONDS] [--max-conns N] [--help]\n"
            "  --listen ADDR           127.0.0.1:PORT, [::1]:PORT or unix:/path "
            "(default 127.0.0.1:7000)\n"
            "  --idle-timeout SECONDS  close connections idle this long (default: never)\n"
            "  --max-conns N           close connections beyond N at once (default: no "
            "limit)\n");
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"max-conns", required_argument, NULL, 'm'},
        {"tune", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    rx_server_opts opts = {.listen = "127.0.0.1:7000", .cbs = &echo_callbacks};
    struct echo e = {.backpressure = true};
    unsigned long long v;
    int ch;
    while ((ch = getopt_long(argc, argv, "l:i:m:t:h", longopts, NULL)) != -1) {
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

    opts.arg = &e;
    opts.listener.on_shed = on_shed;
    unsigned long long nofile = app_raise_nofile();
    e.loop = rx_loop_new();
    if (!e.loop) {
        fprintf(stderr, "rx-echo: cannot create the loop: %s\n", strerror(errno));
        return 1;
    }
    e.shed = (app_shed){.prog = "rx-echo", .loop = e.loop};
    e.server = rx_server_new(e.loop, &opts);
    if (!e.server) {
        fprintf(stderr, "rx-echo: cannot listen on %s: %s\n", opts.listen, strerror(errno));
        rx_loop_free(e.loop);
        return 1;
    }
    rx_signal *sigint = rx_signal_new(e.loop, SIGINT, on_signal, &e);
    rx_signal *sigterm = rx_signal_new(e.loop, SIGTERM, on_signal, &e);
    if (!sigint || !sigterm) {
        fprintf(stderr, "rx-echo: cannot watch signals: %s\n", strerror(errno));
        return 1;
    }
    char where[RX_ADDR_STRLEN];
    rx_addr_format(rx_server_addr(e.server), where, sizeof(where));
    printf("rx-echo listening on %s (open files limit %llu)\n", where, nofile);
    fflush(stdout);

    int rc = rx_loop_run(e.loop);
    rx_server_free(e.server);
    rx_loop_free(e.loop);
    printf("rx-echo: %llu connections, %llu bytes in, %llu bytes out\n", e.conns, e.bytes_in,
           e.bytes_out);
    return rc < 0 ? 1 : 0;
}
