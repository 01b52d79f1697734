/* Response heads: reason phrases, the Date header cached per wall-clock second, and header
 * assembly by plain appends (no printf on the hot path). */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "http_server.h"

const char *http_reason(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* Per loop: each worker keeps its own copy, so no loop reads a line another one rewrites. */
void http_date_refresh(http_worker *w) {
    uint64_t now = rx_loop_now_ms(w->loop);
    if (now < w->date_next_ms && w->cfg->date_cache)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    w->date_len =
        strftime(w->date_line, sizeof(w->date_line), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    /* Next refresh when the wall clock turns to the next second, not a second from now. */
    w->date_next_ms = now + 1000 - (uint64_t)(ts.tv_nsec / 1000000);
}

static char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_u64(char *p, uint64_t v) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

int http_write_head(http_worker *w, rx_buffer *out, int status, const char *ctype,
                    uint64_t content_length, int conn_mode, const char *extra) {
    http_date_refresh(w);
    const char *reason = http_reason(status);
    size_t rlen = strlen(reason);
    size_t clen = ctype ? strlen(ctype) : 0;
    size_t elen = extra ? strlen(extra) : 0;
    size_t max = 160 + rlen + clen + elen + w->date_len;
    if (rx_buffer_reserve(out, max) < 0)
        return -ENOMEM;
    char *start = rx_buffer_tail(out), *p = start;
    p = PUT_LIT(p, "HTTP/1.1 ");
    p = put_u64(p, (uint64_t)status);
    *p++ = ' ';
    p = put(p, reason, rlen);
    p = PUT_LIT(p, "\r\nServer: rx\r\n");
    p = put(p, w->date_line, w->date_len);
    if (ctype) {
        p = PUT_LIT(p, "Content-Type: ");
        p = put(p, ctype, clen);
        p = PUT_LIT(p, "\r\n");
    }
    /* 1xx, 204 and 304 carry no body, and a Content-Length in them would be wrong (RFC 9110
     * §8.6 forbids it in 1xx and 204; in a 304 it would describe the 200 instead). */
    if (status >= 200 && status != 204 && status != 304) {
        p = PUT_LIT(p, "Content-Length: ");
        p = put_u64(p, content_length);
        p = PUT_LIT(p, "\r\n");
    }
    if (conn_mode == HTTP_CONN_CLOSE)
        p = PUT_LIT(p, "Connection: close\r\n");
    else if (conn_mode == HTTP_CONN_KEEP_10)
        p = PUT_LIT(p, "Connection: keep-alive\r\n");
    if (extra)
        p = put(p, extra, elen);
    p = PUT_LIT(p, "\r\n");
    rx_buffer_commit(out, (size_t)(p - start));
    http_count(&w->stats.by_class[status / 100 <= 5 ? status / 100 : 5], 1);
    w->last_status = status;
    w->last_length = content_length;
    return 0;
}

int http_write_error(http_worker *w, rx_buffer *out, int status, int conn_mode, const char *extra,
                     bool head_only) {
    const char *reason = http_reason(status);
    size_t n = strlen(reason);
    if (http_write_head(w, out, status, "text/plain; charset=utf-8", n + 1, conn_mode, extra) < 0)
        return -ENOMEM;
    if (head_only) /* RFC 9110 §9.3.2: the head GET would get, without the content */
        return 0;
    if (rx_buffer_append(out, reason, n) < 0 || rx_buffer_append(out, "\n", 1) < 0)
        return -ENOMEM;
    return 0;
}
