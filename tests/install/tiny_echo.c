/* tiny_echo: the smallest complete server embedding rx (docs/embedding.md): echoes every byte,
 * closes idle clients after 30 s, stops on SIGINT/SIGTERM. Usage: tiny_echo [ADDR] */
#include <stdio.h>

#include <rx/rx.h>

static void on_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    /* Written at once when the socket takes it, queued otherwise; then mark it consumed. */
    if (rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in)) < 0)
        rx_conn_abort(c);
    rx_buffer_consume(in, rx_buffer_len(in));
}

static void on_signal(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    (void)signo;
    rx_loop_stop(arg);
}

int main(int argc, char **argv) {
    static const rx_conn_callbacks callbacks = {.on_data = on_data};
    rx_server_opts opts = {
        .listen = argc > 1 ? argv[1] : "127.0.0.1:7000",
        .conn = {.idle_timeout_ms = 30000},
        .cbs = &callbacks,
    };
    rx_loop *loop = rx_loop_new();
    rx_server *server = loop ? rx_server_new(loop, &opts) : NULL;
    if (!server || !rx_signal_new(loop, SIGINT, on_signal, loop) ||
        !rx_signal_new(loop, SIGTERM, on_signal, loop)) {
        perror("tiny_echo");
        return 1;
    }
    char where[RX_ADDR_STRLEN];
    rx_addr_format(rx_server_addr(server), where, sizeof(where));
    printf("listening on %s\n", where);
    fflush(stdout);
    rx_loop_run(loop);
    rx_server_free(server);
    rx_loop_free(loop); /* releases the signal watchers and anything left */
    return 0;
}
