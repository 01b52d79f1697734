/* What the layers above the reactor may do with a channel beyond the public API: carry their
 * object in the channel's own allocation, swap the fd, ask for a callback before the next poll and
 * walk a loop's channels. Private to the library. */
#ifndef RX_CHANNEL_INTERNAL_H
#define RX_CHANNEL_INTERNAL_H

#include <stddef.h>

#include <rx/channel.h>

#include "sys.h"

/* Aborts with a message naming fn when called from a thread other than the one running the loop
 * (debug builds; nothing with NDEBUG). For loop-thread-only entry points. */
RX_INTERNAL void rx_loop_check_thread(const rx_loop *loop, const char *fn);
#ifdef NDEBUG
#define RX_LOOP_THREAD(loop) ((void)0)
#else
#define RX_LOOP_THREAD(loop) rx_loop_check_thread((loop), __func__)
#endif

/* Counts a connection arriving on (+1) or leaving (-1) the loop (rx_loop_conn_count). Loop
 * thread only. */
RX_INTERNAL void rx_loop_count_conn(rx_loop *loop, int delta);

/* Ready bit of a callback asked for with rx_channel_defer (never set together with the others). */
#define RX_DEFERRED (1u << 30)

/* Like rx_channel_new, but one allocation also holds `size` zeroed bytes for the owner's object,
 * which becomes the callback arg and is returned in *owner. The destructor is then responsible
 * for the memory: it (or something it hands the duty to, on any thread) calls
 * rx_channel_free_owner. Such a channel is always released at the end of an iteration (or in
 * rx_loop_free), never inside rx_channel_close, so its owner's last callback never runs inside a
 * call of the user's. Returns NULL and sets errno (EINVAL, ENOMEM). */
RX_INTERNAL rx_channel *rx_channel_new_owner(rx_loop *loop, int fd, uint32_t flags,
                                             rx_channel_fn cb, size_t size, void **owner);

/* Frees the allocation of a released rx_channel_new_owner channel. Any thread. */
RX_INTERNAL void rx_channel_free_owner(rx_channel *ch);

/* Moves the channel to another fd: the old one leaves the epoll set (and is closed when the
 * channel owns it); the new one starts with no interest. Not from inside the channel's own
 * callback for an fd event of the same batch (events of the old fd would reach the new one). */
RX_INTERNAL void rx_channel_replace_fd(rx_channel *ch, int fd);

/* Calls the callback with RX_DEFERRED before the loop next polls (at the start of the next
 * iteration, or of the first one when the loop is not running), once however often it is asked.
 * A channel closed meanwhile gets no call. */
RX_INTERNAL void rx_channel_defer(rx_channel *ch);

/* The live channel with callback cb after `ch` in the loop's list (from the first one for NULL), or
 * NULL at the end. Closing `ch` takes it out of the list: fetch the next one first. */
RX_INTERNAL rx_channel *rx_channel_next(rx_loop *loop, rx_channel *ch, rx_channel_fn cb);

/* The same over the closed channels not yet released: the one whose destructor is running, then
 * those waiting for the end of the iteration. Nothing may be closed or released during the walk. */
RX_INTERNAL rx_channel *rx_channel_next_closed(rx_loop *loop, rx_channel *ch, rx_channel_fn cb);

#endif
