/* What the TCP layer shares about listening sockets beyond rx_listener: the master process
 * (master.c) makes the sockets its workers inherit. */
#ifndef RX_LISTENER_INTERNAL_H
#define RX_LISTENER_INTERNAL_H

#include <rx/addr.h>
#include <rx/listener.h>

/* A non-blocking, close-on-exec stream socket bound to want and listening, with SO_REUSEADDR
 * (and SO_REUSEPORT when o->reuseport) and o->backlog; its bound address in *bound. The caller
 * owns the fd (and, for a unix address, the socket file). Returns the fd or a negative errno. */
int rx_listen_socket(const rx_addr *want, const rx_listener_opts *o, rx_addr *bound);

#endif
