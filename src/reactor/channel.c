/* rx_channel: epoll registration of one fd, with closes deferred to the end of the iteration so
 * events still queued in the current batch never reach freed memory. */
#include "loop_internal.h"

#include <errno.h>
#include <unistd.h>

rx_channel *rx_channel_new(rx_loop *loop, int fd, uint32_t flags, rx_channel_fn cb, void *arg) {
    if (fd < 0 || !cb) {
        errno = EINVAL;
        return NULL;
    }
    rx_channel *ch = rx_sys.calloc(1, sizeof(*ch));
    if (!ch) {
        errno = ENOMEM;
        return NULL;
    }
    ch->loop = loop;
    ch->fd = fd;
    ch->flags = flags;
    ch->cb = cb;
    ch->arg = arg;
    ch->next = loop->channels;
    if (loop->channels)
        loop->channels->prev = ch;
    loop->channels = ch;
    return ch;
}

int rx_channel_set_interest(rx_channel *ch, uint32_t interest) {
    interest &= RX_READABLE | RX_WRITABLE;
    if (ch->closed)
        return -EBADF;
    if (interest == ch->interest && (interest != 0) == ch->registered)
        return 0;
    struct epoll_event ev = {.data.ptr = ch};
    if (interest & RX_READABLE)
        ev.events |= EPOLLIN | EPOLLRDHUP;
    if (interest & RX_WRITABLE)
        ev.events |= EPOLLOUT;
    if (ch->flags & RX_CHANNEL_EDGE)
        ev.events |= EPOLLET;
    /* No interest means leaving the epoll set: a registered fd would still report EPOLLHUP and,
     * level-triggered, spin the loop. */
    int op = interest == 0 ? EPOLL_CTL_DEL : ch->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (rx_sys.epoll_ctl(ch->loop->epfd, op, ch->fd, &ev) < 0)
        return -errno;
    ch->registered = interest != 0;
    ch->interest = interest;
    return 0;
}

uint32_t rx_channel_interest(const rx_channel *ch) { return ch->interest; }
int rx_channel_fd(const rx_channel *ch) { return ch->fd; }
void *rx_channel_arg(const rx_channel *ch) { return ch->arg; }
rx_loop *rx_channel_loop(const rx_channel *ch) { return ch->loop; }
void rx_channel_set_destructor(rx_channel *ch, rx_task_fn destructor) {
    ch->destructor = destructor;
}

static void unlink_live(rx_channel *ch) {
    rx_loop *loop = ch->loop;
    if (ch->prev)
        ch->prev->next = ch->next;
    else
        loop->channels = ch->next;
    if (ch->next)
        ch->next->prev = ch->prev;
    ch->prev = ch->next = NULL;
}

static void release(rx_channel *ch) {
    if (ch->destructor)
        ch->destructor(ch->arg);
    rx_sys.free(ch);
}

void rx_channel_close(rx_channel *ch) {
    if (!ch || ch->closed)
        return;
    rx_loop *loop = ch->loop;
    ch->closed = true;
    if (ch->registered) {
        struct epoll_event ev = {0};
        rx_sys.epoll_ctl(loop->epfd, EPOLL_CTL_DEL, ch->fd, &ev);
        ch->registered = false;
    }
    if (ch->flags & RX_CHANNEL_OWNS_FD)
        close(ch->fd);
    ch->interest = 0;
    unlink_live(ch);
    if (loop->running) {
        ch->next = loop->graveyard;
        loop->graveyard = ch;
    } else {
        release(ch);
    }
}

void rx_channel_reap(rx_loop *loop) {
    /* A destructor may close more channels; they join the list and are released here too. */
    while (loop->graveyard) {
        rx_channel *ch = loop->graveyard;
        loop->graveyard = ch->next;
        release(ch);
    }
}

void rx_channel_free_all(rx_loop *loop) {
    while (loop->channels)
        rx_channel_close(loop->channels);
    rx_channel_reap(loop);
}
