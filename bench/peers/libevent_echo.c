/* peer-libevent-echo: the echo server a careful user would write with libevent 2.1 instead of rx,
 * the peer the echo benchmarks measure rx-echo against. bufferevents; input moved to output without
 * a copy (evbuffer_add_buffer); TCP_NODELAY; a SOMAXCONN backlog like rx and the ceiling;
 * backpressure: a connection whose output passes 1 MiB stops being read until its output drains
 * below 256 KiB; SIGINT/SIGTERM stop it. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define HIGH_WATER (1024 * 1024)
#define LOW_WATER (256 * 1024)

static void echo_read(struct bufferevent *bev, void *arg) {
    (void)arg;
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_buffer(out, bufferevent_get_input(bev));
    if (evbuffer_get_length(out) > HIGH_WATER) {
        /* Stop reading; the write callback fires once output is down to LOW_WATER. */
        bufferevent_disable(bev, EV_READ);
        bufferevent_setwatermark(bev, EV_WRITE, LOW_WATER, 0);
    }
}

static void echo_write(struct bufferevent *bev, void *arg) {
    (void)arg;
    if (!(bufferevent_get_enabled(bev) & EV_READ)) {
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
        bufferevent_enable(bev, EV_READ);
    }
}

static void echo_event(struct bufferevent *bev, short what, void *arg) {
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_free(bev);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg) {
    (void)sa;
    (void)len;
    (void)arg;
    struct event_base *base = evconnlistener_get_base(l);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        return;
    }
    bufferevent_setcb(bev, echo_read, echo_write, echo_event, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static void usage(FILE *out) {
    fprintf(out, "usage: peer-libevent-echo [--listen 127.0.0.1:PORT]  (default port 0: any free "
                 "port, printed at start)\n");
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen_at = "127.0.0.1:0";
    int ch;
    while ((ch = getopt_long(argc, argv, "l:h", longopts, NULL)) != -1) {
        if (ch == 'l') {
            listen_at = optarg;
        } else {
            usage(ch == 'h' ? stdout : stderr);
            return ch == 'h' ? 0 : 2;
        }
    }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char *end = "";
    unsigned long port = 65536;
    if (strncmp(listen_at, "127.0.0.1:", 10) == 0 && listen_at[10] >= '0' && listen_at[10] <= '9')
        port = strtoul(listen_at + 10, &end, 10);
    if (optind < argc || port > 65535 || *end) {
        fprintf(stderr, "peer-libevent-echo: want --listen 127.0.0.1:PORT, got '%s'\n",
                optind < argc ? argv[optind] : listen_at);
        return 2;
    }
    sin.sin_port = htons((unsigned short)port);
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    if (!base) {
        fprintf(stderr, "peer-libevent-echo: event_base_new failed\n");
        return 1;
    }
    struct evconnlistener *l =
        evconnlistener_new_bind(base, on_accept, NULL, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE,
                                SOMAXCONN, (struct sockaddr *)&sin, sizeof(sin));
    if (!l) {
        fprintf(stderr, "peer-libevent-echo: cannot listen on %s: %s\n", listen_at,
                strerror(errno));
        return 1;
    }
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) < 0 || evsignal_add(sigterm, NULL) < 0) {
        fprintf(stderr, "peer-libevent-echo: cannot watch signals\n");
        return 1;
    }
    struct sockaddr_in bound;
    socklen_t blen = sizeof(bound);
    getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&bound, &blen);
    printf("listening on 127.0.0.1:%u\n", (unsigned)ntohs(bound.sin_port));
    fflush(stdout);

    event_base_dispatch(base);
    event_free(sigint);
    event_free(sigterm);
    evconnlistener_free(l);
    event_base_free(base);
    return 0;
}
