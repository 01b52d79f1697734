/* Static files beneath --root: percent-decoding, refusal of dot segments, openat2 with
 * RESOLVE_BENEATH so neither ".." nor a symlink can leave the root, index.html for directories,
 * Last-Modified / If-Modified-Since, and bodies sent with sendfile. */
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
 * spelled with %2e), 414 when it does not fit. */
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
                return 414;
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

static int open_beneath(int dirfd, const char *path) {
    struct open_how how = {
        .flags = O_RDONLY | O_CLOEXEC,
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
 * user space. A read error aborts the connection, since the head promised the length. */
static void copy_body(rx_conn *c, int fd, size_t size) {
    rx_buffer *out = rx_conn_output(c);
    ssize_t n = -1;
    if (rx_buffer_reserve(out, size) == 0)
        n = pread(fd, rx_buffer_tail(out), size, 0);
    close(fd);
    if (n != (ssize_t)size) {
        rx_conn_abort(c);
        return;
    }
    rx_buffer_commit(out, size);
}

int http_serve_static(http_server *srv, rx_conn *c, const char *buf, const http_request *req,
                      int conn_mode) {
    rx_buffer *out = rx_conn_output(c);
    char rel[4096];
    int status = decode_path(buf + req->path.off, req->path.len, rel, sizeof(rel));
    int fd = -1;
    struct stat st;
    if (status == 0) {
        fd = open_beneath(srv->root_fd, rel);
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
    if (status != 0) {
        if (fd >= 0)
            close(fd);
        http_write_error(srv, out, status, conn_mode, NULL);
        return status;
    }
    char extra[80] = "Last-Modified: ";
    http_time(st.st_mtime, extra + 15, sizeof(extra) - 18);
    strcat(extra, "\r\n");
    if (not_modified(buf, req, st.st_mtime)) {
        close(fd);
        http_write_head(srv, out, 304, NULL, 0, conn_mode, extra);
        return 304;
    }
    http_write_head(srv, out, 200, mime_for(rel), (uint64_t)st.st_size, conn_mode, extra);
    if (req->method == HTTP_M_HEAD || st.st_size == 0)
        close(fd);
    else if (srv->cfg.sendfile)
        rx_conn_sendfile(c, fd, 0, (size_t)st.st_size);
    else
        copy_body(c, fd, (size_t)st.st_size); /* --tune no-sendfile */
    return 200;
}
