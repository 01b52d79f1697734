/* What the layers above the reactor may do with a channel beyond the public API: carry their
 * object in the channel's own allocation, swap the fd, ask for a callback before the next poll and
 * walk a loop's channels. Private to the library. */
#ifndef RX_CHANNEL_INTERNAL_H
#define RX_CHANNEL_INTERNAL_H

#include <stddef.h>

#include <rx/channel.h>

#include "sys.h"

/* Ready bit of a callback asked for with rx_channel_defer (never set together with the others). */
#define RX_DEFERRED (1u << 30)

/* Like rx_channel_new, but one allocation also holds `size` zeroed bytes for the owner's object,
 * which becomes the callback arg and is returned in *owner. That memory is released with the
 * channel, after the destructor. Such a channel is always released at the end of an iteration
 * (or in rx_loop_free), never inside rx_channel_close, so its owner's last callback never runs
 * inside a call of the user's. Returns NULL and sets errno (EINVAL, ENOMEM). */
RX_INTERNAL rx_channel *rx_channel_new_owner(rx_loop *loop, int fd, uint32_t flags,
                                             rx_channel_fn cb, size_t size, void **owner);

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

#endif
