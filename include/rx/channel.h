/* rx_channel: one file descriptor watched by a loop, with an interest mask and one callback.
 * A channel belongs to its loop's thread: call these functions only there (debug builds abort
 * with a message otherwise). */
#ifndef RX_CHANNEL_H
#define RX_CHANNEL_H

#include <stdint.h>

#include <rx/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_channel rx_channel;

/* Interest and readiness bits. RX_ERROR and RX_HUP for a full hang-up (EPOLLHUP) are reported
 * whether asked for or not while the channel has any interest; RX_HUP for the peer's half-close
 * (EPOLLRDHUP) comes with RX_READABLE interest only, so a channel that only waits to write is not
 * woken over and over by a half-close it cannot act on. Ready bits never include RX_READABLE or
 * RX_WRITABLE outside the interest the channel has when its callback runs. */
enum {
    RX_READABLE = 1u << 0,
    RX_WRITABLE = 1u << 1,
    RX_HUP = 1u << 2,
    RX_ERROR = 1u << 3,
};

/* Creation flags. */
enum {
    RX_CHANNEL_EDGE = 1u << 0,    /* edge-triggered (EPOLLET) instead of level-triggered */
    RX_CHANNEL_OWNS_FD = 1u << 1, /* close(fd) when the channel is released */
};

/* Called with the ready bits (RX_READABLE | RX_WRITABLE | RX_HUP | RX_ERROR). */
typedef void (*rx_channel_fn)(rx_channel *ch, uint32_t ready, void *arg);

/* Wraps fd (which the caller has made non-blocking) in a channel with no interest yet: nothing
 * is registered with epoll until rx_channel_set_interest asks for events. The loop owns the
 * channel memory. Returns NULL and sets errno (EINVAL for fd < 0, ENOMEM). */
rx_channel *rx_channel_new(rx_loop *loop, int fd, uint32_t flags, rx_channel_fn cb, void *arg);

/* Sets the interest mask (RX_READABLE | RX_WRITABLE; 0 removes the fd from epoll). Setting the
 * mask it already has makes no syscall. Returns 0 or a negative errno from epoll_ctl (the mask is
 * unchanged then). */
int rx_channel_set_interest(rx_channel *ch, uint32_t interest);

uint32_t rx_channel_interest(const rx_channel *ch);
int rx_channel_fd(const rx_channel *ch);
void *rx_channel_arg(const rx_channel *ch);
rx_loop *rx_channel_loop(const rx_channel *ch);

/* Runs destructor(arg) exactly once when the channel memory is released: at the end of the
 * iteration in which it was closed, or in rx_loop_free. This is where the owner of arg frees it. */
void rx_channel_set_destructor(rx_channel *ch, rx_task_fn destructor);

/* Stops watching the fd at once and releases the channel at the end of the current iteration
 * (immediately when called outside rx_loop_run). Events for it still pending in the current batch
 * are dropped, so it is safe from any callback, on itself or another channel. With
 * RX_CHANNEL_OWNS_FD the fd is closed now. Closing twice is a no-op. */
void rx_channel_close(rx_channel *ch);

#ifdef __cplusplus
}
#endif

#endif
