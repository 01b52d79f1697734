/* Blocking file calls for work functions (rx/work.h): the ones rx-http needs to serve a file,
 * going through rx's syscall layer so that a test can make them slow or fail. They may sleep: call
 * them on a pool thread, or on a loop thread only where a stall is acceptable. */
#ifndef RX_FILE_H
#define RX_FILE_H

#include <linux/openat2.h>
#include <stddef.h>
#include <sys/stat.h>

#ifdef __cplusplus
extern "C" {
#endif

/* openat2(2): opens path relative to dirfd as `how` says (flags, mode, RESOLVE_* rules; the
 * kernel refuses a mode without O_CREAT or O_TMPFILE with -EINVAL), retrying EINTR. Returns the
 * new fd, which the caller owns, or a negative errno (-ENOSYS before Linux 5.6, and under
 * valgrind 3.19, which does not know the call). */
int rx_file_openat2(int dirfd, const char *path, const struct open_how *how);

/* fstat(2). Returns 0, or a negative errno. */
int rx_file_fstat(int fd, struct stat *st);

/* Writes all n bytes of buf to fd, going on after short writes and EINTR. Returns 0, or a negative
 * errno (-EIO when a write takes nothing); then an unknown prefix may have been written. */
int rx_file_write_all(int fd, const void *buf, size_t n);

#ifdef __cplusplus
}
#endif

#endif
