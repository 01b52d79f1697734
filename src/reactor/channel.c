/* rx_channel: epoll registration of one fd, with closes deferred to the end of the iteration so
 * events still queued in the current batch never reach freed memory. */
#include "loop_internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

/* Where an owner's object starts in a channel's allocation. */
#define OWNER_OFFSET                                                                               \
    ((sizeof(rx_channel) + _Alignof(max_align_t) - 1) / _Alignof(max_align_t) *                    \
     _Alignof(max_align_t))

static rx_channel *channel_alloc(rx_loop *loop, int fd, uint32_t flags, rx_channel_fn cb,
                                 size_t extra) {
    if (fd < 0 || !cb || extra > SIZE_MAX - OWNER_OFFSET) {
        errno = EINVAL;
        return NULL;
    }
    rx_channel *ch = rx_sys.calloc(1, extra ? OWNER_OFFSET + extra : sizeof(*ch));
    if (!ch) {
        errno = ENOMEM;
        return NULL;
    }
    ch->loop = loop;
    ch->fd = fd;
    ch->flags = flags;
    ch->cb = cb;
    ch->next = loop->channels;
    if (loop->channels)
        loop->channels->prev = ch;
    loop->channels = ch;
    return ch;
}

rx_channel *rx_channel_new(rx_loop *loop, int fd, uint32_t flags, rx_channel_fn cb, void *arg) {
    rx_channel *ch = channel_alloc(
        loop, fd, flags & (RX_CHANNEL_EDGE | RX_CHANNEL_OWNS_FD | RX_CHANNEL_INTERNAL), cb, 0);
    if (ch)
        ch->arg = arg;
    return ch;
}

rx_channel *rx_channel_new_owner(rx_loop *loop, int fd, uint32_t flags, rx_channel_fn cb,
                                 size_t size, void **owner) {
    rx_channel *ch = channel_alloc(loop, fd, flags | RX_CHANNEL_OWNER_MEM, cb, size ? size : 1);
    if (ch)
        ch->arg = *owner = (char *)ch + OWNER_OFFSET;
    return ch;
}

int rx_channel_set_interest(rx_channel *ch, uint32_t interest) {
    RX_LOOP_THREAD(ch->loop);
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
    bool owner_frees = ch->flags & RX_CHANNEL_OWNER_MEM;
    if (ch->destructor)
        ch->destructor(ch->arg);
    if (!owner_frees)
        rx_sys.free(ch);
}

void rx_channel_free_owner(rx_channel *ch) { rx_sys.free(ch); }

/* Unlinks ch from whichever deferred list holds it (see rx_channel_run_deferred). */
static void undefer(rx_channel *ch) {
    rx_loop *loop = ch->loop;
    struct rx_defer_list *lists[] = {&loop->deferred, &loop->deferred_later};
    for (int i = 0; i < 2; i++) {
        rx_channel *prev = NULL;
        for (rx_channel **p = &lists[i]->head; *p; prev = *p, p = &(*p)->defer_next) {
            if (*p != ch)
                continue;
            *p = ch->defer_next;
            if (lists[i]->tail == ch)
                lists[i]->tail = prev;
            ch->defer_next = NULL;
            ch->deferred = false;
            return;
        }
    }
}

void rx_channel_close(rx_channel *ch) {
    if (!ch || ch->closed)
        return;
    rx_loop *loop = ch->loop;
    RX_LOOP_THREAD(loop);
    ch->closed = true;
    if (ch->registered) {
        struct epoll_event ev = {0};
        rx_sys.epoll_ctl(loop->epfd, EPOLL_CTL_DEL, ch->fd, &ev);
        ch->registered = false;
    }
    if (ch->flags & RX_CHANNEL_OWNS_FD)
        close(ch->fd);
    ch->interest = 0;
    /* Deferred lists are short (what this iteration touched), and closing while listed is rare. */
    if (ch->deferred)
        undefer(ch);
    unlink_live(ch);
    if (loop->running || (ch->flags & RX_CHANNEL_OWNER_MEM)) {
        ch->next = loop->graveyard;
        loop->graveyard = ch;
    } else {
        release(ch);
    }
}

void rx_channel_replace_fd(rx_channel *ch, int fd) {
    rx_channel_set_interest(ch, 0);
    if (ch->flags & RX_CHANNEL_OWNS_FD)
        close(ch->fd);
    ch->fd = fd;
}

void rx_channel_defer(rx_channel *ch) {
    if (ch->closed || ch->deferred)
        return;
    rx_loop *loop = ch->loop;
    /* Asked for during a pass: the next pass, so a callback that asks again cannot keep the loop
     * from polling. */
    struct rx_defer_list *l = loop->deferring ? &loop->deferred_later : &loop->deferred;
    ch->deferred = true;
    ch->defer_next = NULL;
    if (l->tail)
        l->tail->defer_next = ch;
    else
        l->head = ch;
    l->tail = ch;
}

void rx_channel_run_deferred(rx_loop *loop) {
    loop->deferring = true;
    /* Popped one at a time, so a callback closing (unlinking) a later one is safe; closed channels
     * stay allocated until the reap at the end of the iteration. */
    while (loop->deferred.head) {
        rx_channel *ch = loop->deferred.head;
        loop->deferred.head = ch->defer_next;
        if (!loop->deferred.head)
            loop->deferred.tail = NULL;
        ch->defer_next = NULL;
        ch->deferred = false;
        ch->cb(ch, RX_DEFERRED, ch->arg);
    }
    loop->deferring = false;
    loop->deferred = loop->deferred_later;
    loop->deferred_later = (struct rx_defer_list){NULL, NULL};
}

rx_channel *rx_channel_next(rx_loop *loop, rx_channel *ch, rx_channel_fn cb) {
    for (ch = ch ? ch->next : loop->channels; ch; ch = ch->next)
        if (ch->cb == cb)
            return ch;
    return NULL;
}

rx_channel *rx_channel_next_closed(rx_loop *loop, rx_channel *ch, rx_channel_fn cb) {
    /* The one being released comes first; its own link is stale (the graveyard moved on). */
    if (!ch && loop->reaping && loop->reaping->cb == cb)
        return loop->reaping;
    for (ch = !ch || ch == loop->reaping ? loop->graveyard : ch->next; ch; ch = ch->next)
        if (ch->cb == cb)
            return ch;
    return NULL;
}

void rx_channel_reap(rx_loop *loop) {
    /* A destructor may close more channels; they join the list and are released here too. */
    while (loop->graveyard) {
        rx_channel *ch = loop->graveyard;
        loop->graveyard = ch->next;
        rx_channel *outer = loop->reaping;
        loop->reaping = ch;
        release(ch);
        loop->reaping = outer;
    }
}

void rx_channel_close_all(rx_loop *loop, bool internal) {
    rx_channel *ch = loop->channels;
    while (ch) {
        if (((ch->flags & RX_CHANNEL_INTERNAL) != 0) != internal) {
            ch = ch->next;
            continue;
        }
        /* A destructor may close other channels, the next one included: start over each time
         * (the loop's own channels, skipped by the first pass, are few and were created first,
         * so they sit at the end of the list). */
        rx_channel_close(ch);
        rx_channel_reap(loop);
        ch = loop->channels;
    }
}
