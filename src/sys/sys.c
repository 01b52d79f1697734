/* Default bindings of the syscall/allocation layer to libc (see sys.h for why it exists). */
#include "sys.h"

#include <stdlib.h>
#include <sys/sendfile.h>
#include <unistd.h>

/* A macro rather than a const struct: C requires a constant expression to initialise rx_sys. */
#define LIBC_OPS                                                                                   \
    {                                                                                              \
        .read = read, .readv = readv, .write = write, .writev = writev, .send = send,              \
        .sendmsg = sendmsg, .sendfile = sendfile, .accept4 = accept4, .epoll_ctl = epoll_ctl,      \
        .malloc = malloc, .realloc = realloc, .calloc = calloc, .free = free,                      \
    }

struct rx_sys_ops rx_sys = LIBC_OPS;

void rx_sys_reset(void) { rx_sys = (struct rx_sys_ops)LIBC_OPS; }
