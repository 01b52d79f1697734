/* Static files beneath --root: percent-decoding, refusal of dot segments, openat2 with
 * RESOLVE_BENEATH so neither ".." nor a symlink can leave the root, index.html for directories,
 * only regular files served, Last-Modified / If-Modified-Since, and bodies sent with sendfile. */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

/* O_NONBLOCK: opening a FIFO without a writer (or some devices) would block the loop; the open
 * returns at once and the caller refuses what is not a regular file. It changes nothing for
 * reading a regular file. O_NOCTTY: a terminal under the root must not become ours. */
static int open_beneath(int dirfd, const char *path) {
    struct open_how how = {
        .flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    return fd < 0 ? -errno : (int)fd;
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
static bool not_modified(const char *buf, const http_request *req, time_t mtime) {
    if (!req->if_modified_since || req->if_modified_since_value.len >= 64)
        return false;
    char date[64];
    memcpy(date, buf + req->if_modified_since_value.off, req->if_modified_since_value.len);
    date[req->if_modified_since_value.len] = '\0';
    struct tm tm = {0};
    const char *end = strptime(date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
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

int http_serve_static(http_worker *w, rx_conn *c, const char *buf, const http_request *req,
                      int conn_mode) {
    rx_buffer *out = rx_conn_output(c);
    char rel[4096];
    int status = decode_path(buf + req->path.off, req->path.len, rel, sizeof(rel));
    int fd = -1;
    struct stat st;
    if (status == 0) {
        fd = open_beneath(w->srv->root_fd, rel);
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
            int index = open_beneath(fd, "index.html");
            close(fd);
            fd = index;
            if (fd >= 0)
                strcpy(rel, "index.html");
        }
        if (fd < 0)
            status = status_for_errno(fd);
        else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
            status = 403;
    }
    bool head = req->method == HTTP_M_HEAD;
    if (status != 0) {
        if (fd >= 0)
            close(fd);
        int rc = http_write_error(w, out, status, conn_mode, NULL, head);
        return rc < 0 ? rc : status;
    }
    char extra[80] = "Last-Modified: ";
    http_time(st.st_mtime, extra + 15, sizeof(extra) - 18);
    strcat(extra, "\r\n");
    if (not_modified(buf, req, st.st_mtime)) {
        close(fd);
        int rc = http_write_head(w, out, 304, NULL, 0, conn_mode, extra);
        return rc < 0 ? rc : 304;
    }
    int rc = http_write_head(w, out, 200, mime_for(rel), (uint64_t)st.st_size, conn_mode, extra);
    if (rc < 0 || head || st.st_size == 0)
        close(fd);
    else if (w->cfg->sendfile)
        rc = rx_conn_sendfile(c, fd, 0, (size_t)st.st_size); /* closes fd, also on failure */
    else
        rc = copy_body(c, fd, (size_t)st.st_size); /* --tune no-sendfile */
    return rc < 0 ? rc : 200;
}
