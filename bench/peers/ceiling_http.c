/* peer-ceiling-http: the yardstick for the HTTP benchmarks, the least work an epoll server can
 * do to answer wrk: level-triggered, one read into a static 64 KiB buffer, count the "\r\n\r\n"
 * in it, and answer every complete request with one canned /plaintext response, all of one read's
 * answers in one write. Not a server: it parses nothing and drops what a short write leaves. It
 * marks what the kernel and wrk allow on this machine. 127.0.0.1 only; SIGINT/SIGTERM stop it. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536
#define RESPONSE                                                                                   \
    "HTTP/1.1 200 OK\r\nServer: ceiling\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"                \
    "Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"

static volatile sig_atomic_t stop;
static void on_signal(int sig) { stop = sig; }

int main(int argc, char **argv) {
    static char in[64 * 1024], out[64 * 1024 / 16 * (sizeof(RESPONSE) - 1)];
    static unsigned char
        matched[MAX_FDS]; /* bytes of "\r\n\r\n" seen at the end of the last read */
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof(sin);
    if (argc == 3 && !strcmp(argv[1], "--listen") &&
        sscanf(argv[2], "127.0.0.1:%hu", &sin.sin_port) == 1)
        sin.sin_port = htons(sin.sin_port);
    else if (argc != 1)
        return fprintf(stderr, "usage: peer-ceiling-http [--listen 127.0.0.1:PORT]\n"), 2;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&sin, len) < 0 || listen(lfd, SOMAXCONN) < 0)
        return perror("peer-ceiling-http: listen"), 1;
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    printf("listening on 127.0.0.1:%u\n", ntohs(sin.sin_port));
    fflush(stdout);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd, c;
            if (fd == lfd) {
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= MAX_FDS) {
                        close(c);
                        continue;
                    }
                    matched[c] = 0;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    ev = (struct epoll_event){.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t r = read(fd, in, sizeof(in));
            if (r <= 0) {
                if (r == 0 || errno != EAGAIN)
                    close(fd); /* also leaves the epoll set */
                continue;
            }
            size_t answers = 0, m = matched[fd];
            for (ssize_t k = 0; k < r; k++) {
                char want = (m & 1) ? '\n' : '\r';
                m = in[k] == want ? m + 1 : (in[k] == '\r' ? 1 : 0);
                if (m == 4) {
                    answers++;
                    m = 0;
                }
            }
            matched[fd] = (unsigned char)m;
            if (answers > sizeof(out) / (sizeof(RESPONSE) - 1))
                answers = sizeof(out) / (sizeof(RESPONSE) - 1);
            for (size_t a = 0; a < answers; a++)
                memcpy(out + a * (sizeof(RESPONSE) - 1), RESPONSE, sizeof(RESPONSE) - 1);
            if (answers && write(fd, out, answers * (sizeof(RESPONSE) - 1)) < 0 && errno != EAGAIN)
                close(fd);
        }
    }
    return 0;
}
