/* The loop's scratch read buffer, lent to one connection at a time so reading needs no memory per
 * connection until a message stays incomplete. The one piece of the loop the TCP layer needs;
 * private to the library. */
#ifndef RX_SCRATCH_H
#define RX_SCRATCH_H

#include <rx/loop.h>

#include "sys.h"

#define RX_SCRATCH_SIZE (64 * 1024)

/* The loop's scratch buffer (RX_SCRATCH_SIZE bytes, allocated on first use; NULL on ENOMEM). */
RX_INTERNAL char *rx_loop_scratch(rx_loop *loop);

/* Forgets the scratch buffer after a borrower took its memory over (it grew it); the next call to
 * rx_loop_scratch allocates a new one. */
RX_INTERNAL void rx_loop_scratch_forget(rx_loop *loop);

#endif
