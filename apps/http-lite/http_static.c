/* Static files beneath --root: percent-decoding, refusal of dot segments, openat2 with
 * RESOLVE_BENEATH so neither ".." nor a symlink can leave the root (without openat2, no symlink
 * is followed at all), index.html for directories, only regular files served, Last-Modified /
 * If-Modified-Since, and bodies sent with sendfile. The lookup (http_file_open) may block on the
 * file system, so with --io-threads it runs on the work pool (http_session.c) unless the kernel's
 * cache can answer it at once (http_file_open_cached); the answer is always written on the loop. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http_server.h"

static const struct {
    const char *ext;
    const char *type;
} mime_types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css"},
    {"js", "text/javascript"},
    {"json", "application/json"},
    {"txt", "text/plain; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"svg", "image/svg+xml"},
    {"ico", "image/x-icon"},
    {"webp", "image/webp"},
    {"pdf", "application/pdf"},
    {"wasm", "application/wasm"},
    {"xml", "application/xml"},
    {"woff2", "font/woff2"},
};

static const char *mime_for(const char *name) {
    const char *dot = strrchr(name, '.');
    if (dot && !strchr(dot, '/')) {
        for (size_t i = 0; i < sizeof(mime_types) / sizeof(mime_types[0]); i++) {
            if (strcasecmp(dot + 1, mime_types[i].ext) == 0)
                return mime_types[i].type;
        }
    }
    return "application/octet-stream";
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes the URL path into a relative file path ("a/b.html", "." for the root). Returns 0, or
 * the status to answer: 400 for a bad escape or NUL, 403 for a "." or ".." segment (also when
 * spelled with %2e), 404 when it does not fit in cap (PATH_MAX): no file has such a name, and the
 * parser has already accepted the target's length. */
static int decode_path(const char *p, size_t n, char *out, size_t cap) {
    size_t o = 0, seg = 0;
    for (size_t i = 0; i <= n; i++) {
        char ch;
        if (i == n) {
            ch = '/';
        } else if (p[i] == '%') {
            int hi = i + 2 < n ? hexval(p[i + 1]) : -1, lo = hi >= 0 ? hexval(p[i + 2]) : -1;
            if (lo < 0)
                return 400;
            ch = (char)(hi * 16 + lo);
            i += 2;
            if (ch == '\0')
                return 400;
        } else {
            ch = p[i];
        }
        if (ch != '/') {
            if (o + 2 >= cap)
                return 404;
            out[o++] = ch;
            continue;
        }
        /* A segment ended: out[seg..o). */
        size_t len = o - seg;
        if ((len == 1 && out[seg] == '.') || (len == 2 && out[seg] == '.' && out[seg + 1] == '.'))
            return 403;
        if (len > 0)
            out[o++] = '/';
        seg = o;
    }
    if (o > 0 && out[o - 1] == '/')
        o--;
    if (o == 0)
        out[o++] = '.';
    out[o] = '\0';
    return 0;
}

/* Set once RESOLVE_CACHED turned out unknown (Linux before 5.12): every lookup then goes to the
 * pool. Any loop may set it; a relaxed flag is enough. */
static atomic_bool no_resolve_cached;
/* Set once openat2 itself turned out unknown (Linux before 5.6, or under valgrind, which does not
 * implement it): lookups then walk the path one component at a time. */
static atomic_bool no_openat2;

/* The lookup without openat2: one openat per component, each with O_NOFOLLOW, from dirfd down.
 * No symlink is followed at all, also one that stays beneath the root (stricter than
 * RESOLVE_BENEATH, like nginx's disable_symlinks); a symlink is -ELOOP (403) wherever it is.
 * decode_path has already refused "." and ".." segments and collapsed empty ones. */
static int open_by_components(int dirfd, const char *path, int flags) {
    char name[NAME_MAX + 1];
    int dir = dirfd;
    for (;;) {
        const char *slash = strchr(path, '/');
        size_t n = slash ? (size_t)(slash - path) : strlen(path);
        if (n > NAME_MAX) {
            if (dir != dirfd)
                close(dir);
            return -ENAMETOOLONG;
        }
        memcpy(name, path, n);
        name[n] = '\0';
        int fd =
            openat(dir, name,
                   slash ? O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC : flags | O_NOFOLLOW);
        int err = fd < 0 ? errno : 0;
        struct stat st;
        /* O_DIRECTORY reports a symlink to a directory as no directory. */
        if (err == ENOTDIR && slash && fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISLNK(st.st_mode))
            err = ELOOP;
        if (dir != dirfd)
            close(dir);
        if (err || !slash)
            return err ? -err : fd;
        dir = fd;
        path = slash + 1;
    }
}

/* O_NONBLOCK: opening a FIFO without a writer (or some devices) would block; the open returns at
 * once and the caller refuses what is not a regular file. It changes nothing for reading a regular
 * file. O_NOCTTY: a terminal under the root must not become ours. `cached` adds RESOLVE_CACHED:
 * the kernel answers -EAGAIN instead of reading a path component it does not hold in its cache. */
static int open_beneath(int dirfd, const char *path, bool cached) {
    const int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    if (atomic_load_explicit(&no_openat2, memory_order_relaxed))
        return cached ? -EAGAIN : open_by_components(dirfd, path, flags);
    struct open_how how = {
        .flags = flags,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (cached ? RESOLVE_CACHED : 0),
    };
    int fd = rx_file_openat2(dirfd, path, &how);
    if (fd == -ENOSYS) {
        atomic_store_explicit(&no_openat2, true, memory_order_relaxed);
        atomic_store_explicit(&no_resolve_cached, true, memory_order_relaxed);
        return open_beneath(dirfd, path, cached);
    }
    if (cached && fd == -EINVAL) {
        atomic_store_explicit(&no_resolve_cached, true, memory_order_relaxed);
        fd = -EAGAIN;
    }
    return fd;
}

static int status_for_errno(int err) {
    switch (err) {
    case -ENOENT:
    case -ENOTDIR:
    case -ENAMETOOLONG:
        return 404;
    case -EXDEV: /* would leave the root */
    case -ELOOP:
    case -EACCES:
    case -EPERM:
        return 403;
    default:
        return 500;
    }
}

static void http_time(time_t t, char *out, size_t n) {
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* True when the client's copy, dated by If-Modified-Since, is still current. */
static bool not_modified(const char *ims, time_t mtime) {
    if (!ims[0])
        return false;
    struct tm tm = {0};
    const char *end = strptime(ims, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end)
        return false; /* an unparsable date is ignored (RFC 9110 §13.1.3) */
    return mtime <= timegm(&tm);
}

/* The file read into the output buffer, as a server without sendfile would: one more copy through
 * user space. Closes fd. Returns 0, or a negative errno when the body could not be read whole (the
 * head already promised its length). */
static int copy_body(rx_conn *c, int fd, size_t size) {
    rx_buffer *out = rx_conn_output(c);
    int rc = rx_buffer_reserve(out, size);
    if (rc == 0) {
        ssize_t n = pread(fd, rx_buffer_tail(out), size, 0);
        rc = n < 0 ? -errno : n != (ssize_t)size ? -EIO : 0;
    }
    close(fd);
    if (rc == 0)
        rx_buffer_commit(out, size);
    return rc;
}

int http_file_prepare(http_file *f, const char *buf, const http_request *req) {
    f->fd = -1;
    f->ims[0] = '\0';
    if (req->if_modified_since && req->if_modified_since_value.len < sizeof(f->ims)) {
        memcpy(f->ims, buf + req->if_modified_since_value.off, req->if_modified_since_value.len);
        f->ims[req->if_modified_since_value.len] = '\0';
    }
    f->status = decode_path(buf + req->path.off, req->path.len, f->rel, sizeof(f->rel));
    return f->status;
}

/* The lookup; with `cached`, -EAGAIN (and f unchanged) as soon as it would need the disk. */
static int lookup(http_file *f, int root_fd, bool cached) {
    int fd = open_beneath(root_fd, f->rel, cached);
    if (fd == -EAGAIN && cached)
        return -EAGAIN;
    if (fd >= 0 && rx_file_fstat(fd, &f->st) == 0 && S_ISDIR(f->st.st_mode)) {
        int index = open_beneath(fd, "index.html", cached);
        close(fd);
        if (index == -EAGAIN && cached)
            return -EAGAIN;
        fd = index;
        if (fd >= 0)
            strcpy(f->rel, "index.html");
    }
    if (fd < 0) {
        f->status = status_for_errno(fd);
        return 0;
    }
    /* A failed fstat is the server's trouble (500), not a file the client may not have. */
    int rc = rx_file_fstat(fd, &f->st), st = rc < 0 ? status_for_errno(rc) : 0;
    if (st || !S_ISREG(f->st.st_mode)) {
        close(fd);
        f->status = st ? st : 403;
        return 0;
    }
    f->fd = fd;
    f->status = 0;
    return 0;
}

void http_file_open(http_file *f, int root_fd) { lookup(f, root_fd, false); }

bool http_file_open_cached(http_file *f, int root_fd) {
    if (atomic_load_explicit(&no_resolve_cached, memory_order_relaxed))
        return false;
    return lookup(f, root_fd, true) == 0;
}

void http_file_discard(http_file *f) {
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
}

int http_file_respond(http_worker *w, rx_conn *c, http_file *f, bool head, int conn_mode) {
    rx_buffer *out = rx_conn_output(c);
    if (f->status != 0) {
        int rc = http_write_error(w, out, f->status, conn_mode, NULL, head);
        return rc < 0 ? rc : f->status;
    }
    int fd = f->fd;
    f->fd = -1;
    const struct stat *st = &f->st;
    char extra[80] = "Last-Modified: ";
    http_time(st->st_mtime, extra + 15, sizeof(extra) - 18);
    strcat(extra, "\r\n");
    if (not_modified(f->ims, st->st_mtime)) {
        close(fd);
        int rc = http_write_head(w, out, 304, NULL, 0, conn_mode, extra);
        return rc < 0 ? rc : 304;
    }
    int rc =
        http_write_head(w, out, 200, mime_for(f->rel), (uint64_t)st->st_size, conn_mode, extra);
    if (rc < 0 || head || st->st_size == 0)
        close(fd);
    else if (w->cfg->sendfile)
        rc = rx_conn_sendfile(c, fd, 0, (size_t)st->st_size); /* closes fd, also on failure */
    else
        rc = copy_body(c, fd, (size_t)st->st_size); /* --tune no-sendfile */
    return rc < 0 ? rc : 200;
}

int http_serve_static(http_worker *w, rx_conn *c, const char *buf, const http_request *req,
                      int conn_mode) {
    http_file f;
    if (http_file_prepare(&f, buf, req) == 0)
        http_file_open(&f, w->srv->root_fd);
    return http_file_respond(w, c, &f, req->method == HTTP_M_HEAD, conn_mode);
}
