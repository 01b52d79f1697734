/* The one thin layer every rx I/O syscall and allocation goes through, so a test build can
 * inject short counts, EAGAIN, EINTR, ECONNRESET and ENOMEM by swapping a function pointer.
 * Private to the library; tests include it from the source tree. */
#ifndef RX_SYS_H
#define RX_SYS_H

#include <linux/openat2.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Marks library-internal functions shared between files: not exported from the shared library. */
#define RX_INTERNAL __attribute__((visibility("hidden")))

struct rx_sys_ops {
    ssize_t (*read)(int fd, void *buf, size_t n);
    ssize_t (*readv)(int fd, const struct iovec *iov, int iovcnt);
    ssize_t (*write)(int fd, const void *buf, size_t n);
    ssize_t (*writev)(int fd, const struct iovec *iov, int iovcnt);
    ssize_t (*send)(int fd, const void *buf, size_t n, int flags);
    ssize_t (*sendmsg)(int fd, const struct msghdr *msg, int flags);
    ssize_t (*sendfile)(int out_fd, int in_fd, off_t *offset, size_t count);
    int (*accept4)(int fd, struct sockaddr *addr, socklen_t *len, int flags);
    int (*epoll_ctl)(int epfd, int op, int fd, struct epoll_event *ev);
    /* The file calls of rx/file.h, which work functions use. openat2 has no libc wrapper. */
    int (*openat2)(int dirfd, const char *path, const struct open_how *how);
    int (*fstat)(int fd, struct stat *st);
    void *(*malloc)(size_t n);
    void *(*realloc)(void *p, size_t n);
    void *(*calloc)(size_t count, size_t n);
    void (*free)(void *p);
};

/* The live table; starts out pointing at libc. Tests may overwrite entries and must restore them
 * (rx_sys_reset). */
extern RX_INTERNAL struct rx_sys_ops rx_sys;

RX_INTERNAL void rx_sys_reset(void);

#endif
