/* peer-ceiling-echo: the yardstick for the echo benchmarks, the least work an epoll echo can do:
 * level-triggered, one read into a static 64 KiB buffer and one write of what was read per
 * readiness, nothing else. Not a server: what a short write leaves is dropped, and nothing
 * survives EMFILE. 127.0.0.1 only; SIGINT/SIGTERM stop it. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { stop = sig; }

int main(int argc, char **argv) {
    static char buf[64 * 1024];
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof(sin);
    if (argc == 3 && !strcmp(argv[1], "--listen") &&
        sscanf(argv[2], "127.0.0.1:%hu", &sin.sin_port) == 1)
        sin.sin_port = htons(sin.sin_port);
    else if (argc != 1)
        return fprintf(stderr, "usage: peer-ceiling-echo [--listen 127.0.0.1:PORT]\n"), 2;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&sin, len) < 0 || listen(lfd, SOMAXCONN) < 0)
        return perror("peer-ceiling-echo: listen"), 1;
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
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    ev = (struct epoll_event){.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r > 0 && write(fd, buf, (size_t)r) >= 0)
                continue;
            if (r == 0 || (r < 0 && errno != EAGAIN))
                close(fd); /* also leaves the epoll set */
        }
    }
    return 0;
}
