/* rx_listener: a non-blocking listening socket on a level-triggered channel that accepts in
 * bounded batches and survives EMFILE/ENFILE with a spare fd (shed one connection) or, failing
 * that, a timed pause, so running out of fds never spins the loop. With proxy_protocol it reads
 * each connection's PROXY header first: at once when it has arrived with the connection (the
 * usual case, a balancer sends it in its first segment), else on an edge-triggered channel of the
 * connection's own, under one timer for all of them. */
#include <rx/channel.h>
#include <rx/listener.h>
#include <rx/timer.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "channel_internal.h"
#include "listener_internal.h"
#include "proxy_header.h"
#include "sys.h"

#define DEFAULT_BATCH 64
#define DEFAULT_RETRY_MS 100u
#define DEFAULT_PROXY_TIMEOUT_MS 5000u

/* A connection accepted on a proxy_protocol listener whose header has not all arrived: it lives in
 * its channel's allocation, in the listener's list in order of arrival (so of deadline). */
struct pending {
    rx_listener *l; /* NULL once detached: the listener no longer knows it */
    struct pending *prev, *next;
    rx_channel *ch; /* edge-triggered: woken by new bytes, not by the ones already peeked at */
    int fd;         /* -1 once handed on; else closed with the channel */
    uint64_t deadline;
    rx_addr peer;
};

struct rx_listener {
    rx_loop *loop;
    rx_channel *ch; /* owns the listening fd; its destructor releases this struct */
    rx_timer *retry;
    int fd;
    int spare_fd; /* reserved /dev/null fd, given up to shed a connection on EMFILE; -1: none */
    rx_addr addr;
    int batch;
    unsigned retry_ms;
    rx_accept_fn cb;
    void (*on_shed)(rx_listener *l, void *arg);
    void *arg;
    unsigned long long accepted, shed, refused;
    bool proxy;              /* proxy_protocol */
    unsigned proxy_ms;       /* proxy_timeout_ms */
    rx_timer *proxy_timer;   /* at the first pending connection's deadline */
    struct pending *pending; /* oldest first */
    struct pending *pending_tail;
    /* Two independent reasons not to accept; events are wanted only while neither holds. */
    bool paused;  /* by rx_listener_pause, until rx_listener_resume */
    bool backoff; /* out of fds or memory, until the retry timer fires */
    bool freed;   /* rx_listener_free ran; the memory lives until the channel is released */
    bool owns_path;
    dev_t path_dev; /* identity of the socket file we created, so we only unlink our own */
    ino_t path_ino;
};

static void open_spare(rx_listener *l) {
    if (l->spare_fd < 0)
        l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void close_spare(rx_listener *l) {
    if (l->spare_fd >= 0)
        close(l->spare_fd);
    l->spare_fd = -1;
}

static void remove_path(rx_listener *l) {
    if (!l->owns_path)
        return;
    l->owns_path = false;
    struct stat st;
    const char *path = l->addr.u.un.sun_path;
    if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == l->path_dev &&
        st.st_ino == l->path_ino)
        unlink(path);
}

static void detach(struct pending *p) {
    rx_listener *l = p->l;
    if (!l)
        return;
    *(p->prev ? &p->prev->next : &l->pending) = p->next;
    *(p->next ? &p->next->prev : &l->pending_tail) = p->prev;
    p->l = NULL;
}

/* Closes the connections still waiting for their header (their channels close their fds). */
static void drop_pending(rx_listener *l) {
    while (l->pending) {
        struct pending *p = l->pending;
        detach(p);
        rx_channel_close(p->ch);
    }
}

/* Everything but the channel (and the memory). */
static void release_resources(rx_listener *l) {
    drop_pending(l);
    rx_timer_free(l->proxy_timer);
    l->proxy_timer = NULL;
    rx_timer_free(l->retry);
    l->retry = NULL;
    close_spare(l);
    remove_path(l);
}

/* Channel destructor: runs at the end of the iteration after rx_listener_free, or from
 * rx_loop_free (which releases channels before timers, so the timer is still there). */
static void destroy(void *arg) {
    rx_listener *l = arg;
    if (!l->freed)
        release_resources(l);
    rx_sys.free(l);
}

static bool want_events(const rx_listener *l) { return !l->paused && !l->backoff && !l->freed; }

/* Stops accepting for retry_ms, whether or not the listener is also paused. Without a timer to
 * resume (it could not be armed) the channel stays armed: level-triggered, the next iteration
 * retries. */
static void start_backoff(rx_listener *l) {
    if (rx_timer_start(l->retry, l->retry_ms, 0) < 0)
        return;
    l->backoff = true;
    rx_channel_set_interest(l->ch, 0); /* on failure on_ready drops the event and retries */
}

static void on_retry(rx_timer *t, void *arg) {
    (void)t;
    rx_listener *l = arg;
    l->backoff = false;
    if (want_events(l) && rx_channel_set_interest(l->ch, RX_READABLE) < 0)
        start_backoff(l);
}

enum shed_result { SHED_DONE, SHED_EMPTY, SHED_FAILED };

/* Out of fds: give up the spare to accept one connection and close it at once, so the client
 * sees a reset instead of waiting in the backlog, then take the spare back. *shed tells whether a
 * connection was closed that way (SHED_DONE also covers a peer that gave up first). */
static enum shed_result shed_one(rx_listener *l, bool *shed) {
    *shed = false;
    if (l->spare_fd < 0)
        return SHED_FAILED;
    close_spare(l);
    int fd;
    do
        fd = rx_sys.accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    int err = errno;
    *shed = fd >= 0;
    if (fd >= 0) {
        close(fd);
        l->shed++;
    }
    open_spare(l);
    if (l->spare_fd < 0)
        return SHED_FAILED;
    if (fd >= 0 || err == ECONNABORTED || err == EPROTO)
        return SHED_DONE;
    if (err == EAGAIN || err == EWOULDBLOCK)
        return SHED_EMPTY;
    return SHED_FAILED;
}

/* ---- PROXY protocol ------------------------------------------------------------------------ */

/* Reads the PROXY header at the start of fd's input, leaving what follows for the connection, and
 * sets *peer to the client it names unless it is a local one. Returns 1 once read, 0 when more
 * must arrive, or a negative errno (-EPROTO: not a header; -ECONNRESET: the peer ended first).
 * Plain recv, not rx_sys: the header is peeked at whole first, so consuming it cannot fall short.
 */
static int read_header(int fd, rx_addr *peer) {
    unsigned char buf[RX_PROXY_HEADER_MAX];
    ssize_t n;
    do
        n = recv(fd, buf, sizeof(buf), MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return n == 0 ? -ECONNRESET : errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    rx_proxy_header h;
    int len = rx_proxy_header_parse(buf, (size_t)n, &h);
    if (len <= 0)
        return len;
    do
        n = recv(fd, buf, (size_t)len, 0);
    while (n < 0 && errno == EINTR);
    if (n != len)
        return n < 0 ? -errno : -EIO;
    if (!h.local)
        *peer = h.src;
    return 1;
}

static void refuse(rx_listener *l, int fd) {
    close(fd);
    l->refused++;
}

/* A pending connection is done with (handed on or refused): the channel goes, and with it the fd
 * unless it was handed on. The timer stays armed for the old first deadline, and re-arms then. */
static void end_pending(struct pending *p) {
    rx_listener *l = p->l;
    detach(p);
    if (!l->pending)
        rx_timer_stop(l->proxy_timer);
    rx_channel_close(p->ch);
}

static void on_header(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ch;
    struct pending *p = arg;
    rx_listener *l = p->l;
    rx_addr peer = p->peer;
    int rc = read_header(p->fd, &peer);
    if (rc == 0 && !(ready & (RX_HUP | RX_ERROR)))
        return; /* the next bytes come with the next edge */
    int fd = p->fd;
    if (rc > 0)
        p->fd = -1;
    end_pending(p);
    l->refused += rc <= 0;
    if (rc > 0)
        l->cb(l, fd, &peer, l->arg);
}

static void pending_release(void *arg) {
    struct pending *p = arg;
    detach(p); /* still linked only when rx_loop_free releases it before its listener */
    if (p->fd >= 0)
        close(p->fd);
    rx_channel_free_owner(p->ch);
}

static void on_proxy_timeout(rx_timer *t, void *arg) {
    rx_listener *l = arg;
    uint64_t now = rx_loop_now_ms(l->loop);
    while (l->pending && l->pending->deadline <= now) {
        l->refused++;
        end_pending(l->pending);
    }
    if (l->pending)
        rx_timer_start(t, l->pending->deadline - now, 0);
}

/* Watches fd until its header is complete. Returns 0 or a negative errno (fd is still the
 * caller's then). */
static int wait_header(rx_listener *l, int fd, const rx_addr *peer) {
    struct pending *p;
    rx_channel *ch =
        rx_channel_new_owner(l->loop, fd, RX_CHANNEL_EDGE, on_header, sizeof(*p), (void **)&p);
    if (!ch)
        return -errno;
    p->ch = ch;
    p->fd = -1;
    rx_channel_set_destructor(ch, pending_release);
    /* Edge-triggered, registering reports bytes that came since the peek. */
    int rc = rx_channel_set_interest(ch, RX_READABLE);
    if (rc == 0 && !l->pending)
        rc = rx_timer_start(l->proxy_timer, l->proxy_ms, 0);
    if (rc < 0) {
        rx_channel_close(ch);
        return rc;
    }
    p->fd = fd;
    p->peer = *peer;
    p->deadline = rx_loop_now_ms(l->loop) + l->proxy_ms;
    p->l = l;
    p->prev = l->pending_tail;
    *(p->prev ? &p->prev->next : &l->pending) = p;
    l->pending_tail = p;
    return 0;
}

/* A connection of a proxy_protocol listener: handed on once its header is read. */
static void take_header(rx_listener *l, int fd, const rx_addr *peer) {
    rx_addr who = *peer;
    int rc = read_header(fd, &who);
    if (rc > 0)
        l->cb(l, fd, &who, l->arg);
    else if (rc < 0 || wait_header(l, fd, peer) < 0)
        refuse(l, fd);
}

/* ---- accepting ----------------------------------------------------------------------------- */

static void on_ready(rx_channel *ch, uint32_t ready, void *arg) {
    (void)ready;
    rx_listener *l = arg;
    if (!want_events(l)) {
        /* An event from the batch that was already polled when we paused, or a failed
         * EPOLL_CTL_DEL: drop it and try again to stop watching. */
        rx_channel_set_interest(ch, 0);
        return;
    }
    open_spare(l); /* lost earlier when the process was out of fds */
    for (int calls = 0; calls < l->batch; calls++) {
        rx_addr peer;
        memset(&peer, 0, sizeof(peer));
        socklen_t len = sizeof(peer.u);
        int fd = rx_sys.accept4(l->fd, &peer.u.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            peer.len = len;
            l->accepted++;
            if (l->proxy)
                take_header(l, fd, &peer);
            else
                l->cb(l, fd, &peer, l->arg);
            /* The callback may have freed or paused the listener; the memory is still valid,
             * since the channel is released at the end of the iteration at the earliest. */
            if (!want_events(l))
                return;
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
            return;
        case EINTR:
        case ECONNABORTED: /* the peer gave up while queued: skip it */
        case EPROTO:
            continue;
        case EMFILE:
        case ENFILE: {
            bool shed;
            enum shed_result r = shed_one(l, &shed);
            /* After the spare is back, so a callback that frees the listener releases it. */
            if (shed && l->on_shed) {
                l->on_shed(l, l->arg);
                if (!want_events(l))
                    return;
            }
            switch (r) {
            case SHED_DONE:
                calls++;
                continue;
            case SHED_EMPTY:
                return;
            case SHED_FAILED:
                start_backoff(l);
                return;
            }
            return;
        }
        default: /* ENOBUFS, ENOMEM, ...: give the system time */
            start_backoff(l);
            return;
        }
    }
}

/* The address fd is bound to. Returns 0 or a negative errno. */
static int bound_addr(int fd, rx_addr *out) {
    rx_addr bound;
    memset(&bound, 0, sizeof(bound));
    socklen_t len = sizeof(bound.u);
    if (getsockname(fd, &bound.u.sa, &len) < 0)
        return -errno;
    bound.len = len;
    *out = bound;
    return 0;
}

static int bind_listen(int fd, const rx_addr *want, const rx_listener_opts *o, rx_addr *bound) {
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
        return -errno;
    if (o->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        return -errno;
    if (bind(fd, &want->u.sa, want->len) < 0)
        return -errno;
    int rc = 0;
    if (listen(fd, o->backlog > 0 ? o->backlog : SOMAXCONN) < 0)
        rc = -errno;
    else
        rc = bound_addr(fd, bound);
    if (rc < 0 && want->u.sa.sa_family == AF_UNIX)
        unlink(want->u.un.sun_path); /* bind made it */
    return rc;
}

int rx_listen_socket(const rx_addr *want, const rx_listener_opts *o, rx_addr *bound) {
    int fd = socket(want->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = bind_listen(fd, want, o, bound);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* The listener around fd once it listens: the retry timer, the spare fd, the channel. Owns fd
 * and l from the call on; on failure releases both and returns NULL with errno set. */
static rx_listener *start(rx_listener *l) {
    int rc = -ENOMEM;
    l->retry = rx_timer_new(l->loop, on_retry, l);
    if (!l->retry || (l->proxy && !(l->proxy_timer = rx_timer_new(l->loop, on_proxy_timeout, l))))
        goto fail;
    /* Best effort: without a spare the listener still works, and EMFILE pauses it instead. */
    open_spare(l);
    l->ch = rx_channel_new(l->loop, l->fd, RX_CHANNEL_OWNS_FD, on_ready, l);
    if (!l->ch) {
        rc = -errno;
        goto fail;
    }
    /* From here on the channel owns l->fd and, through the destructor, l itself. */
    rx_channel_set_destructor(l->ch, destroy);
    rc = rx_channel_set_interest(l->ch, RX_READABLE);
    if (rc < 0) {
        rx_listener_free(l);
        errno = -rc;
        return NULL;
    }
    return l;

fail:
    release_resources(l);
    if (l->fd >= 0)
        close(l->fd);
    rx_sys.free(l);
    errno = -rc;
    return NULL;
}

/* A listener with no socket yet; NULL and errno set when opts are bad or memory is short. */
static rx_listener *alloc_listener(rx_loop *loop, const rx_listener_opts *o, rx_accept_fn cb,
                                   void *arg) {
    if (!loop || !cb || o->backlog < 0 || o->accept_batch < 0) {
        errno = EINVAL;
        return NULL;
    }
    rx_listener *l = rx_sys.calloc(1, sizeof(*l));
    if (!l) {
        errno = ENOMEM;
        return NULL;
    }
    l->loop = loop;
    l->cb = cb;
    l->on_shed = o->on_shed;
    l->arg = arg;
    l->batch = o->accept_batch > 0 ? o->accept_batch : DEFAULT_BATCH;
    l->retry_ms = o->retry_ms > 0 ? o->retry_ms : DEFAULT_RETRY_MS;
    l->proxy = o->proxy_protocol;
    l->proxy_ms = o->proxy_timeout_ms > 0 ? o->proxy_timeout_ms : DEFAULT_PROXY_TIMEOUT_MS;
    l->spare_fd = -1;
    l->fd = -1;
    return l;
}

static const rx_listener_opts default_opts = {0};

rx_listener *rx_listener_new(rx_loop *loop, const char *addr, const rx_listener_opts *opts,
                             rx_accept_fn cb, void *arg) {
    const rx_listener_opts *o = opts ? opts : &default_opts;
    rx_addr want;
    if (rx_addr_parse(&want, addr) < 0) {
        errno = EINVAL;
        return NULL;
    }
    rx_listener *l = alloc_listener(loop, o, cb, arg);
    if (!l)
        return NULL;
    int fd = rx_listen_socket(&want, o, &l->addr);
    if (fd < 0) {
        rx_sys.free(l);
        errno = -fd;
        return NULL;
    }
    l->fd = fd;
    struct stat st;
    if (want.u.sa.sa_family == AF_UNIX && stat(want.u.un.sun_path, &st) == 0) {
        l->owns_path = true;
        l->path_dev = st.st_dev;
        l->path_ino = st.st_ino;
    }
    return start(l);
}

rx_listener *rx_listener_adopt(rx_loop *loop, int fd, const rx_listener_opts *opts, rx_accept_fn cb,
                               void *arg) {
    const rx_listener_opts *o = opts ? opts : &default_opts;
    rx_listener *l = fd >= 0 ? alloc_listener(loop, o, cb, arg) : NULL;
    if (!l) {
        int err = fd < 0 ? EBADF : errno;
        if (fd >= 0)
            close(fd);
        errno = err;
        return NULL;
    }
    l->fd = fd;
    int type = 0, listening = 0, rc = 0;
    socklen_t len = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        rc = -errno; /* ENOTSOCK, EBADF */
    else if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
        rc = -errno;
    else if (type != SOCK_STREAM || !listening)
        rc = -EINVAL;
    else if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ||
             fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
        rc = -errno;
    else
        rc = bound_addr(fd, &l->addr);
    if (rc < 0) {
        close(fd);
        rx_sys.free(l);
        errno = -rc;
        return NULL;
    }
    return start(l);
}

const rx_addr *rx_listener_addr(const rx_listener *l) { return &l->addr; }

void rx_listener_pause(rx_listener *l) {
    if (l->freed)
        return;
    l->paused = true;
    /* A back-off keeps its timer: pausing must not make a later resume skip the wait. */
    rx_channel_set_interest(l->ch, 0); /* on failure on_ready drops events until resumed */
}

void rx_listener_resume(rx_listener *l) {
    if (l->freed || !l->paused)
        return;
    l->paused = false;
    if (l->backoff)
        return; /* on_retry arms the channel when the back-off ends */
    if (rx_channel_set_interest(l->ch, RX_READABLE) < 0)
        start_backoff(l);
}

unsigned long long rx_listener_accepted(const rx_listener *l) { return l->accepted; }
unsigned long long rx_listener_shed(const rx_listener *l) { return l->shed; }
unsigned long long rx_listener_refused(const rx_listener *l) { return l->refused; }

void rx_listener_free(rx_listener *l) {
    if (!l || l->freed)
        return;
    l->freed = true;
    release_resources(l);
    /* Closes the listening fd now; destroy() releases l now or at the end of the iteration. */
    rx_channel_close(l->ch);
}
