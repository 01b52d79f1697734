/* Default bindings of the syscall/allocation layer to libc (see sys.h for why it exists). */
#include "sys.h"

#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A macro rather than a const struct: C requires a constant expression to initialise rx_sys. */
#define LIBC_OPS                                                                                   \
    {                                                                                              \
        .read = read, .readv = readv, .write = write, .writev = writev, .send = send,              \
        .sendmsg = sendmsg, .sendfile = sendfile, .accept4 = accept4, .epoll_ctl = epoll_ctl,      \
        .openat2 = sys_openat2, .fstat = fstat, .malloc = malloc, .realloc = realloc,              \
        .calloc = calloc, .free = free,                                                            \
    }

static int sys_openat2(int dirfd, const char *path, const struct open_how *how) {
    return (int)syscall(SYS_openat2, dirfd, path, how, sizeof(*how));
}

struct rx_sys_ops rx_sys = LIBC_OPS;

void rx_sys_reset(void) { rx_sys = (struct rx_sys_ops)LIBC_OPS; }
