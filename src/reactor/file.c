/* The blocking file calls of rx/file.h, through the syscall layer (sys.h) so tests can slow them
 * down or make them fail. */
#include <rx/file.h>

#include <errno.h>

#include "sys.h"

int rx_file_openat2(int dirfd, const char *path, const struct open_how *how) {
    int fd;
    while ((fd = rx_sys.openat2(dirfd, path, how)) < 0 && errno == EINTR) {
    }
    return fd < 0 ? -errno : fd;
}

int rx_file_fstat(int fd, struct stat *st) { return rx_sys.fstat(fd, st) < 0 ? -errno : 0; }

int rx_file_write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = rx_sys.write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        if (w == 0)
            return -EIO; /* a regular file that takes nothing would loop forever */
        p += w;
        n -= (size_t)w;
    }
    return 0;
}
