/* tiny_resolve: blocking work off the loop (docs/embedding.md). Each line a client sends is a host
 * name; the answer "NAME ADDRESS" comes from getaddrinfo, which may wait seconds on a DNS server,
 * so it runs on a work pool and the loop goes on serving everyone else. Stops on SIGINT/SIGTERM.
 * Usage: tiny_resolve [ADDR] */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* getaddrinfo under -std=c11 */
#endif
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rx/rx.h>

static rx_work_pool *pool;

struct lookup {
    rx_conn *c;
    char name[256], addr[INET_ADDRSTRLEN];
};

static void resolve(void *arg) { /* on a pool thread: it may block, it must not touch the loop */
    struct lookup *q = arg;
    struct addrinfo hints = {.ai_family = AF_INET}, *res;
    strcpy(q->addr, "-");
    if (getaddrinfo(q->name, NULL, &hints, &res) == 0) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, q->addr,
                  sizeof(q->addr));
        freeaddrinfo(res);
    }
}

static void resolved(void *arg, int status) { /* back on the loop thread, exactly once */
    struct lookup *q = arg;
    char line[300];
    int n = snprintf(line, sizeof(line), "%s %s\n", q->name, status == 0 ? q->addr : "-");
    rx_conn_send(q->c, line, (size_t)n); /* -EPIPE if the client left meanwhile: fine */
    rx_conn_unref(q->c);                 /* the reference kept q->c valid until now */
    free(q);
}

static void on_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    const char *nl;
    while ((nl = memchr(rx_buffer_peek(in), '\n', rx_buffer_len(in))) != NULL) {
        size_t len = (size_t)(nl - rx_buffer_peek(in));
        struct lookup *q = len < 256 ? calloc(1, sizeof(*q)) : NULL;
        if (q) {
            memcpy(q->name, rx_buffer_peek(in), len);
            q->c = c;
            rx_conn_ref(c);
            if (rx_work_submit(pool, rx_conn_loop(c), resolve, resolved, q, NULL) < 0) {
                rx_conn_unref(c);
                free(q);
                q = NULL;
            }
        }
        if (!q)
            rx_conn_send(c, "busy\n", 5);
        rx_buffer_consume(in, len + 1);
    }
}

static void on_signal(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    (void)signo;
    rx_loop_stop(arg);
}

int main(int argc, char **argv) {
    static const rx_conn_callbacks callbacks = {.on_data = on_data};
    rx_server_opts opts = {.listen = argc > 1 ? argv[1] : "127.0.0.1:7001", .cbs = &callbacks};
    rx_loop *loop = rx_loop_new();
    pool = rx_work_pool_new(NULL); /* 4 threads */
    rx_server *server = loop && pool ? rx_server_new(loop, &opts) : NULL;
    if (!server || !rx_signal_new(loop, SIGINT, on_signal, loop) ||
        !rx_signal_new(loop, SIGTERM, on_signal, loop)) {
        perror("tiny_resolve");
        return 1;
    }
    char where[RX_ADDR_STRLEN];
    rx_addr_format(rx_server_addr(server), where, sizeof(where));
    printf("listening on %s\n", where);
    fflush(stdout);
    rx_loop_run(loop);
    rx_server_free(server);
    rx_loop_free(loop);      /* lookups still out are cancelled or waited for; each done runs */
    rx_work_pool_free(pool); /* idle by now */
    return 0;
}
