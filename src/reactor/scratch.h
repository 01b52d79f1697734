/* The loop's scratch buffers, lent to one connection at a time: reading needs no memory per
 * connection until a message stays incomplete, and a response built in on_data needs none unless
 * the socket does not take it at once. The one piece of the loop the TCP layer needs; private to
 * the library. */
#ifndef RX_SCRATCH_H
#define RX_SCRATCH_H

#include <rx/loop.h>

#include "sys.h"

#define RX_SCRATCH_SIZE (64 * 1024)

enum { RX_SCRATCH_IN, RX_SCRATCH_OUT, RX_SCRATCH_KINDS };

/* The loop's scratch buffer of that kind (RX_SCRATCH_SIZE bytes, allocated on first use; NULL on
 * ENOMEM). */
RX_INTERNAL char *rx_loop_scratch(rx_loop *loop, int kind);

/* Forgets the scratch buffer of that kind after a borrower took its memory over (it grew it, or
 * keeps bytes in it); the next rx_loop_scratch allocates a new one. */
RX_INTERNAL void rx_loop_scratch_forget(rx_loop *loop, int kind);

#endif
