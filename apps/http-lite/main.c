/* rx-http: the HTTP-lite demo server. Options, the loops (--threads) and the listening server
 * spread over them (--spread), the work pool for file lookups (--io-threads), signals for a
 * graceful stop and the access log. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../app.h"
#include "http_server.h"

#ifndef RX_HTTP_DEFAULT_ROOT
#define RX_HTTP_DEFAULT_ROOT "www"
#endif

static void usage(FILE *out) {
    fprintf(out,
            "usage: rx-http [options]\n"
            "  --listen ADDR            127.0.0.1:PORT, [::1]:PORT or unix:/path "
            "(default 127.0.0.1:8080)\n"
            "  --threads N              loops, one thread each (default 1, 0: one per CPU)\n"
            "  --spread MODE            how connections reach the loops: handoff (one loop "
            "accepts,\n"
            "                           default) or reuseport (a listener per loop)\n"
            "  --root DIR               static files (default %s)\n"
            "  --idle-timeout S         close a keep-alive connection idle this long "
            "(default 30, 0: never)\n"
            "  --header-timeout S       408 when a request head takes longer (default 10, 0: "
            "never)\n"
            "  --send-timeout S         reset a connection whose answer the client has taken "
            "none\n"
            "                           of for this long (default 60, 0: never)\n"
            "  --max-header-bytes N     431 beyond this request head size (default 16384)\n"
            "  --max-body-bytes N       413 beyond this body size (default 1048576)\n"
            "  --max-conns N            close connections beyond N at once (default: no limit)\n"
            "  --access-log FILE|-      one line per request (default: none)\n"
            "  --proxy-protocol         behind a layer-4 balancer: every connection starts with a\n"
            "                           PROXY protocol header (v1 or v2), whose client address\n"
            "                           the access log shows; a missing or bad one closes it\n"
            "  --drain S                on SIGTERM, serve on for S seconds with /healthz saying\n"
            "                           503 and every answer closing its connection, so that a\n"
            "                           balancer moves away, then stop (default 0)\n"
            "  --io-threads N           open and stat static files the kernel's cache cannot\n"
            "                           answer at once, and write the access log, on a pool of N\n"
            "                           threads (default 0: everything on the loops)\n"
            "  --workers N              a master and N worker processes sharing the port\n"
            "                           (default 0: this process serves); SIGHUP reloads them,\n"
            "                           and each worker's /stats counts its own connections\n"
            "  --tune LIST              for benchmarks, switch techniques off: " TUNE_COMMON
            ",\n                           no-batch, no-date-cache, no-sendfile, no-cached-open\n"
            "  --help\n",
            RX_HTTP_DEFAULT_ROOT);
}

static void on_shed(rx_listener *l, void *arg) {
    http_server *srv = arg;
    app_on_shed(l, &srv->shed);
}

/* Options into cfg, opts and threads. Returns 0, or the exit status for bad usage. */
static int parse_args(int argc, char **argv, http_config *cfg, rx_server_opts *opts,
                      unsigned *threads, unsigned *workers, bool *help) {
    static const char *const app_switches[] = {"no-batch", "no-date-cache", "no-sendfile",
                                               "no-cached-open", NULL};
    bool app_off[4] = {false, false, false, false};
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"root", required_argument, NULL, 'r'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"header-timeout", required_argument, NULL, 't'},
        {"send-timeout", required_argument, NULL, 'w'},
        {"max-header-bytes", required_argument, NULL, 'H'},
        {"max-body-bytes", required_argument, NULL, 'B'},
        {"max-conns", required_argument, NULL, 'm'},
        {"access-log", required_argument, NULL, 'a'},
        {"tune", required_argument, NULL, 'T'},
        {"threads", required_argument, NULL, 'n'},
        {"spread", required_argument, NULL, 's'},
        {"io-threads", required_argument, NULL, 'I'},
        {"workers", required_argument, NULL, 'W'},
        {"proxy-protocol", no_argument, NULL, 'P'},
        {"drain", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    unsigned long long v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *name = NULL;
        switch (ch) {
        case 'l':
            cfg->listen = optarg;
            continue;
        case 'r':
            cfg->root = optarg;
            continue;
        case 'a':
            cfg->access_log = optarg;
            continue;
        case 'P':
            cfg->proxy_protocol = true;
            continue;
        case 'D':
            if (app_parse_count(optarg, 3600, &v) == 0) {
                cfg->drain_ms = v * 1000;
                continue;
            }
            name = "--drain (0 .. 3600 seconds)";
            break;
        case 'T':
            if (tune_apply("rx-http", optarg, opts, &cfg->backpressure, app_switches, app_off) < 0)
                return 2;
            cfg->batch = !app_off[0];
            cfg->date_cache = !app_off[1];
            cfg->sendfile = !app_off[2];
            cfg->cached_open = !app_off[3];
            continue;
        case 'n':
            if (app_parse_threads("rx-http", optarg, threads) < 0)
                return 2;
            continue;
        case 's':
            if (app_parse_spread("rx-http", optarg, &opts->spread) < 0)
                return 2;
            continue;
        case 'W':
            if (app_parse_workers("rx-http", optarg, workers) < 0)
                return 2;
            continue;
        case 'h':
            *help = true;
            return 0;
        case 'i':
            if (app_parse_count(optarg, 86400 * 365, &v) == 0) {
                cfg->idle_timeout_ms = v * 1000;
                continue;
            }
            name = "--idle-timeout";
            break;
        case 't':
            if (app_parse_count(optarg, 86400 * 365, &v) == 0) {
                cfg->header_timeout_ms = v * 1000;
                continue;
            }
            name = "--header-timeout";
            break;
        case 'w':
            if (app_parse_count(optarg, 86400 * 365, &v) == 0) {
                cfg->send_timeout_ms = v * 1000;
                continue;
            }
            name = "--send-timeout";
            break;
        case 'H':
            if (app_parse_count(optarg, 1 << 24, &v) == 0 && v >= 64) {
                cfg->max_header_bytes = (size_t)v;
                continue;
            }
            name = "--max-header-bytes (64 .. 16777216)";
            break;
        case 'B':
            if (app_parse_count(optarg, 1ull << 40, &v) == 0) {
                cfg->max_body_bytes = v;
                continue;
            }
            name = "--max-body-bytes";
            break;
        case 'I':
            if (app_parse_count(optarg, 1024, &v) == 0) {
                cfg->io_threads = (unsigned)v;
                continue;
            }
            name = "--io-threads (0 .. 1024)";
            break;
        case 'm':
            if (app_parse_count(optarg, 1ull << 32, &v) == 0 && v > 0) {
                cfg->max_conns = (size_t)v;
                continue;
            }
            name = "--max-conns";
            break;
        default:
            usage(stderr);
            return 2;
        }
        fprintf(stderr, "rx-http: bad value '%s' for %s\n", optarg, name);
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "rx-http: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    rx_addr check;
    if (rx_addr_parse(&check, cfg->listen) < 0) {
        fprintf(stderr,
                "rx-http: bad --listen address '%s' (want 127.0.0.1:PORT, [::1]:PORT or "
                "unix:/path)\n",
                cfg->listen);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    static http_server srv; /* shared by every loop; a static: zeroed */
    srv.cfg = (http_config){
        .listen = "127.0.0.1:8080",
        .root = RX_HTTP_DEFAULT_ROOT,
        .idle_timeout_ms = 30000,
        .header_timeout_ms = 10000,
        .send_timeout_ms = 60000, /* nginx's send_timeout */
        .max_header_bytes = 16384,
        .max_body_bytes = 1024 * 1024,
        .backpressure = true,
        .batch = true,
        .date_cache = true,
        .sendfile = true,
        .cached_open = true,
    };
    rx_server_opts opts = {
        .conn = {.high_water = HTTP_OUTPUT_LIMIT},
        .cbs = &http_session_callbacks,
        .arg = &srv,
    };
    bool help = false;
    unsigned threads = 1, workers = 0;
    int rc = parse_args(argc, argv, &srv.cfg, &opts, &threads, &workers, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (rc)
        return rc;
    srv.root_fd = open(srv.cfg.root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (srv.root_fd < 0) {
        fprintf(stderr, "rx-http: --root %s: %s\n", srv.cfg.root, strerror(errno));
        return 2;
    }
    srv.log_fd = -1;
    if (srv.cfg.access_log) {
        srv.log_fd =
            strcmp(srv.cfg.access_log, "-") == 0
                ? STDOUT_FILENO
                : open(srv.cfg.access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (srv.log_fd < 0) {
            fprintf(stderr, "rx-http: --access-log %s: %s\n", srv.cfg.access_log, strerror(errno));
            return 2;
        }
    }
    unsigned long long nofile = app_raise_nofile();
    char prog[32] = "rx-http";
    if (workers > 0 && rx_worker_slot() < 0) {
        /* The master only checked that the root and the log open: each worker opens its own. */
        close(srv.root_fd);
        if (srv.log_fd > STDOUT_FILENO)
            close(srv.log_fd);
        opts.listen = srv.cfg.listen;
        return app_run_master(prog, &opts, threads, workers, srv.cfg.drain_ms, argv, nofile);
    }
    int fds[APP_MAX_THREADS];
    if (app_inherit_sockets(prog, &opts, fds, APP_MAX_THREADS) < 0)
        return 1;
    if (rx_worker_slot() >= 0)
        snprintf(prog, sizeof(prog), "rx-http worker %d", rx_worker_slot());
    if (srv.cfg.io_threads > 0 &&
        !(srv.pool = rx_work_pool_new(&(rx_work_pool_opts){.threads = srv.cfg.io_threads}))) {
        fprintf(stderr, "rx-http: cannot start %u I/O threads: %s\n", srv.cfg.io_threads,
                strerror(errno));
        return 1;
    }
    srv.shed.prog = prog;
    app_run run = {
        .prog = prog, .drain_ms = srv.cfg.drain_ms, .on_drain = http_drain, .drain_arg = &srv};
    srv.group = run.group = rx_loop_group_new(threads);
    if (!srv.group) {
        fprintf(stderr, "rx-http: cannot create the loops: %s\n", strerror(errno));
        return 1;
    }
    /* One worker per loop, made before any loop runs: the loops only read the array. */
    if (http_session_setup(&srv) < 0) {
        fprintf(stderr, "rx-http: out of memory\n");
        return 1;
    }
    srv.loop = rx_loop_group_loop(srv.group, 0);
    opts.listen = srv.cfg.listen;
    opts.conn.write_timeout_ms = srv.cfg.send_timeout_ms;
    /* The input limit: a backstop above the parser's own limits, which no valid request reaches.
     * on_data consumes every complete request, so what it leaves is the one in progress: at most a
     * head of --max-header-bytes and a body of --max-body-bytes with the 64 KiB of chunk framing
     * step() tolerates; add 64 KiB, one read of pipelined requests behind it (while answers wait,
     * reading is paused: the input does not grow). Reaching it means on_data stopped consuming, a
     * bug: rx closes the connection (-EMSGSIZE). From 4 GiB up it is no limit. */
    opts.conn.max_input = srv.cfg.max_header_bytes + (size_t)srv.cfg.max_body_bytes + 128 * 1024;
    opts.max_conns = srv.cfg.max_conns;
    opts.listener.on_shed = on_shed;
    opts.listener.proxy_protocol = srv.cfg.proxy_protocol;
    /* The header comes before the request head, within the same bound. */
    opts.listener.proxy_timeout_ms =
        (unsigned)(srv.cfg.header_timeout_ms < 60000 ? srv.cfg.header_timeout_ms : 60000);
    opts.group = srv.group;
    srv.server = run.server = rx_server_new(srv.loop, &opts);
    if (!srv.server) {
        fprintf(stderr, "rx-http: cannot listen on %s: %s\n", srv.cfg.listen, strerror(errno));
        rx_loop_group_free(srv.group);
        rx_work_pool_free(srv.pool);
        http_session_cleanup(&srv);
        return 1;
    }
    if (app_watch_signals(&run) < 0)
        return 1;
    /* Set up from this thread before the group starts, as rx_loop_group_new allows. */
    for (unsigned i = 0; srv.log_fd >= 0 && i < srv.nworkers; i++) {
        if (rx_loop_add_hook(srv.workers[i].loop, http_log_flush, &srv.workers[i]) < 0) {
            fprintf(stderr, "rx-http: out of memory\n");
            return 1;
        }
    }
    if (!app_worker_serving(prog)) {
        char where[RX_ADDR_STRLEN];
        rx_addr_format(rx_server_addr(srv.server), where, sizeof(where));
        printf("rx-http listening on http://%s/ (root %s, %u thread%s, spread %s, %u I/O "
               "thread%s, open files limit %llu%s)\n",
               where, srv.cfg.root, srv.nworkers, srv.nworkers == 1 ? "" : "s",
               app_spread_name(opts.spread), srv.cfg.io_threads, srv.cfg.io_threads == 1 ? "" : "s",
               nofile, opts.listener.proxy_protocol ? ", PROXY protocol" : "");
        fflush(stdout);
    }

    rc = app_run_group(&run);
    /* The threads are joined: what is left (connections aborted here, whose on_close counts them)
     * runs on this thread, and only then are the workers' counters final. */
    app_print_refused(prog, srv.server, &opts);
    rx_server_free(srv.server);
    /* Freeing the loops settles their file lookups (each connection's on_close cancels its own);
     * the pool is idle after. */
    rx_loop_group_free(srv.group);
    rx_work_pool_free(srv.pool);
    http_stats_sum(&srv, &srv.stats);
    http_session_cleanup(&srv);
    close(srv.root_fd);
    if (srv.log_fd > STDOUT_FILENO)
        close(srv.log_fd);
    fprintf(stderr, "%s: %llu connections, %llu requests\n", prog, srv.stats.conns_total,
            srv.stats.requests);
    return rc < 0 ? 1 : 0;
}
