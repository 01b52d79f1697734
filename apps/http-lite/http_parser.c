/* The HTTP/1.x request head parser and chunked body decoder of http_parser.h.
 *
 * Both are byte-level state machines that keep their position in the parser struct, so every
 * input byte is examined once however the request is split across calls (a header line is read
 * a second time, once, when it is complete, to interpret Content-Length, Connection, ...).
 * Errors are detected at the first byte that makes the input unacceptable, so a request gives the
 * same answer whether it arrives at once or one byte at a time.
 *
 * Choices (strict where RFC 9112 lets a server choose):
 * - lines end with CRLF only: a bare LF or a bare CR is a 400, in every line of the head, of the
 *   chunk-size lines and of the trailers;
 * - up to MAX_EMPTY_LINES empty lines (CRLF) before the request line are skipped (RFC 9112
 *   §2.2); they count toward max_head_bytes and head_len, and method_name.off is after them;
 * - obs-fold, whitespace before ':' and an empty field name are 400s;
 * - an absolute-form target gives path "/" (a '/' of its "://") when it has no path;
 * - CONNECT must use the authority-form "host:port" (its path and query are empty), and the
 *   authority-form is accepted only with CONNECT; "*" only with OPTIONS;
 * - Transfer-Encoding (RFC 9112 §6.1, §6.3): a field line repeated, "chunked" listed twice, or a
 *   last coding other than "chunked" is a 400 (and rx-http closes); another coding before a final
 *   "chunked" (e.g. "gzip, chunked") is a 501, since no other coding is implemented;
 * - a method token longer than MAX_METHOD bytes is a 501 (no method we implement is that long),
 *   detected at its byte MAX_METHOD + 1 rather than running into the head limit's 431;
 * - a '#' in the request-target is a 400: a fragment is never sent (RFC 9110 §7.1);
 * - a request-target of up to DEFAULT_MAX_TARGET (8 KiB) bytes is accepted by default (RFC 9112
 *   §3 recommends at least 8000 octets), so the default head limit is 16 KiB;
 * - "Expect: 100-continue" is ignored in an HTTP/1.0 request (RFC 9110 §10.1.1), any other
 *   expectation is a 417 in both versions;
 * - the first If-Modified-Since is recorded;
 * - a Host value may hold only the bytes of a host and port (RFC 9112 §3.2: else 400), and may
 *   not be empty: RFC 9112 §3.2 allows that only for a target URI without an authority, and an
 *   "http" URI with an empty host must be rejected as invalid (RFC 9110 §4.2.1);
 * - chunk extensions must follow RFC 9112 §7.1.1: ';' name ['=' (token / quoted-string)], with
 *   BWS around ';' and '=', repeated; a bare ';', a missing name or value, a byte outside the
 *   grammar or an unterminated quoted-string is a 400. Whitespace before the CRLF of a size line
 *   is a 400 too (the grammar has BWS only before ';' and around '='). Extensions are ignored. */
#include "http_parser.h"

#include <stddef.h>
#include <string.h>

#define DEFAULT_MAX_HEAD 16384
#define DEFAULT_MAX_TARGET 8192
#define MAX_METHOD 32
#define MAX_EMPTY_LINES 4
#define MAX_CONTENT_LENGTH ((uint64_t)1 << 62)

/* Head parser states (0 is the state of a zeroed parser): at a line start before the request
 * line, after the CR of a leading empty line, in the method, the target, "HTTP/d.d", after the
 * CR of the request line; at a field line start (or the final empty line), in a field name, after
 * its ':', in its value, after its CR, after the CR of the final empty line. */
/* clang-format off */
enum { S_START, S_LEAD_LF, S_METHOD, S_TARGET, S_VERSION, S_RL_LF,
       S_HDR_START, S_HDR_NAME, S_HDR_OWS, S_HDR_VALUE, S_HDR_LF, S_END_LF, S_DONE, S_ERROR };
/* clang-format on */

/* p->flags */
enum { F_CLOSE = 1, F_KEEP_ALIVE = 2 };

/* The bytes of a token (RFC 9110 §5.6.2 tchar), one bit each for 0x00-0x7f. */
static const uint32_t tchar_bits[4] = {0, 0x03ff6cfa, 0xc7fffffe, 0x57ffffff};

static bool is_tchar(unsigned char c) { return c < 0x80 && (tchar_bits[c >> 5] >> (c & 31)) & 1; }

static bool is_vchar(unsigned char c) { return c > 0x20 && c < 0x7f; }

/* A byte allowed in a field value (and a chunk extension): HTAB, SP, VCHAR, obs-text. */
static bool is_field_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

/* A byte of uri-host [":" port] (RFC 3986 reg-name, IP literal, port). */
static bool is_host_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("-._~%!$&'()*+,;=:[]", c) != NULL);
}

static bool is_ows(unsigned char c) { return c == ' ' || c == '\t'; }

static unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c; }

/* s[0..n) equals the lower-case string low[0..n), ignoring ASCII case. */
static bool ieq(const unsigned char *s, const char *low, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != (unsigned char)low[i])
            return false;
    return true;
}

static bool ieq_str(const unsigned char *s, size_t n, const char *low) {
    return strlen(low) == n && ieq(s, low, n);
}

bool http_span_ieq(const char *buf, http_span s, const char *str) {
    size_t n = strlen(str);
    if (n != s.len)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)buf[s.off + i]) != lower((unsigned char)str[i]))
            return false;
    return true;
}

static http_span span(size_t off, size_t len) { return (http_span){(uint32_t)off, (uint32_t)len}; }

static http_method method_id(const unsigned char *m, size_t n) {
    static const char *const names[] = {
        [HTTP_M_GET] = "GET",     [HTTP_M_HEAD] = "HEAD",     [HTTP_M_POST] = "POST",
        [HTTP_M_PUT] = "PUT",     [HTTP_M_DELETE] = "DELETE", [HTTP_M_OPTIONS] = "OPTIONS",
        [HTTP_M_PATCH] = "PATCH", [HTTP_M_TRACE] = "TRACE",   [HTTP_M_CONNECT] = "CONNECT",
    };
    for (size_t i = 1; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], m, n) == 0)
            return (http_method)i;
    return HTTP_M_OTHER;
}

void http_parser_init(http_parser *p, const http_limits *limits) {
    memset(p, 0, sizeof *p);
    if (limits)
        p->limits = *limits;
}

size_t http_parser_work(const http_parser *p) { return p->work; }

/* Zeroes everything but the headers array (HTTP_M_OTHER is 0). */
static void request_reset(http_request *r) {
    memset(r, 0, offsetof(http_request, headers));
    memset(&r->head_len, 0, sizeof *r - offsetof(http_request, head_len));
}

/* Sets the error; always returns -1 so callers can `return fail(...)`. */
static int fail(http_parser *p, int status, const char *why) {
    p->status = status;
    p->error = why;
    return -1;
}

/* Splits the path and query of the complete request-target and checks its form against the
 * method. req->query.off holds the offset of the first '?' (0: none) on entry. */
static int classify_target(http_parser *p, http_request *r, const unsigned char *s) {
    size_t t0 = r->target.off, te = t0 + r->target.len;
    size_t q = r->query.off, pe = q ? q : te;
    r->query = q ? span(q + 1, te - q - 1) : span(te, 0);
    if (s[t0] == '/') {
        if (r->method == HTTP_M_CONNECT)
            return fail(p, 400, "CONNECT needs an authority-form target");
        r->path = span(t0, pe - t0);
        return 0;
    }
    if (r->method == HTTP_M_CONNECT) { /* authority-form: host ":" port */
        size_t colon = 0;
        for (size_t i = t0; i < te; i++) {
            if (s[i] == '/' || s[i] == '?' || s[i] == '#' || s[i] == '@')
                return fail(p, 400, "invalid authority-form target");
            if (s[i] == ':')
                colon = i;
        }
        if (colon == 0 || colon == t0 || colon + 1 == te)
            return fail(p, 400, "invalid authority-form target");
        for (size_t i = colon + 1; i < te; i++)
            if (s[i] < '0' || s[i] > '9')
                return fail(p, 400, "invalid authority-form target");
        p->work += te - t0;
        r->path = span(t0, 0);
        r->query = span(te, 0);
        return 0;
    }
    if (te - t0 == 1 && s[t0] == '*') {
        if (r->method != HTTP_M_OPTIONS)
            return fail(p, 400, "asterisk-form target needs OPTIONS");
        r->path = span(t0, 1);
        return 0;
    }
    size_t a; /* start of the authority of an absolute-form target */
    if (pe - t0 >= 7 && ieq(s + t0, "http://", 7))
        a = t0 + 7;
    else if (pe - t0 >= 8 && ieq(s + t0, "https://", 8))
        a = t0 + 8;
    else
        return fail(p, 400, "invalid request-target");
    size_t k = a;
    while (k < pe && s[k] != '/')
        k++;
    p->work += k - t0;
    if (k == a)
        return fail(p, 400, "empty authority in request-target");
    r->path = k < pe ? span(k, pe - k) : span(a - 1, 1);
    return 0;
}

/* Iterates over the elements of a comma-separated list v[0..n): on true, [*b, *e) is the next
 * element with OWS trimmed (possibly empty). *pos starts at 0. */
static bool list_next(const unsigned char *v, size_t n, size_t *pos, size_t *b, size_t *e) {
    size_t i = *pos;
    if (i > n)
        return false;
    while (i < n && is_ows(v[i]))
        i++;
    *b = i;
    while (i < n && v[i] != ',')
        i++;
    *pos = i + 1; /* past the comma, or n + 1 at the end */
    while (i > *b && is_ows(v[i - 1]))
        i--;
    *e = i;
    return true;
}

static int content_length(http_parser *p, http_request *r, const unsigned char *v, size_t n) {
    size_t pos = 0, b, e;
    if (n == 0)
        return fail(p, 400, "empty Content-Length");
    if (r->chunked)
        return fail(p, 400, "Content-Length with Transfer-Encoding");
    while (list_next(v, n, &pos, &b, &e)) {
        if (b == e)
            return fail(p, 400, "invalid Content-Length");
        uint64_t x = 0;
        for (size_t i = b; i < e; i++) {
            if (v[i] < '0' || v[i] > '9')
                return fail(p, 400, "invalid Content-Length");
            unsigned d = v[i] - '0';
            if (x > (MAX_CONTENT_LENGTH - d) / 10)
                return fail(p, 400, "Content-Length too large");
            x = x * 10 + d;
        }
        if (r->has_length && x != r->content_length)
            return fail(p, 400, "conflicting Content-Length");
        r->has_length = true;
        r->content_length = x;
    }
    return 0;
}

/* Only a lone "chunked" is accepted. The 400s are framing errors (RFC 9112 §6.3: the length of
 * the body cannot be determined), the 501 a coding we could frame but not decode. A repeated
 * field line is refused as such: a proxy that keeps only one of them would frame differently. */
static int transfer_encoding(http_parser *p, http_request *r, const unsigned char *v, size_t n) {
    size_t pos = 0, b, e, count = 0, chunked = 0;
    bool last_chunked = false;
    if (r->version_minor == 0)
        return fail(p, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (r->has_length)
        return fail(p, 400, "Transfer-Encoding with Content-Length");
    if (r->chunked)
        return fail(p, 400, "Transfer-Encoding repeated");
    while (list_next(v, n, &pos, &b, &e)) {
        if (b == e)
            continue; /* empty list elements are ignored (RFC 9110 §5.6.1) */
        count++;
        last_chunked = ieq_str(v + b, e - b, "chunked");
        chunked += last_chunked;
    }
    if (count == 0)
        return fail(p, 400, "empty Transfer-Encoding");
    if (chunked > 1)
        return fail(p, 400, "chunked applied twice");
    if (!last_chunked)
        return fail(p, 400, "final transfer coding is not chunked");
    if (count > 1)
        return fail(p, 501, "unsupported transfer coding");
    r->chunked = true;
    return 0;
}

/* Interprets the field line h, just completed. */
static int header_semantics(http_parser *p, http_request *r, const unsigned char *s,
                            const http_header *h) {
    const unsigned char *name = s + h->name.off, *v = s + h->value.off;
    size_t nl = h->name.len, n = h->value.len;
    p->work += n;
    if (ieq_str(name, nl, "host")) {
        if (r->host.off != 0)
            return fail(p, 400, "more than one Host");
        if (n == 0)
            return fail(p, 400, "empty Host");
        for (size_t i = 0; i < n; i++)
            if (!is_host_char(v[i]))
                return fail(p, 400, "invalid Host");
        r->host = h->value;
    } else if (ieq_str(name, nl, "content-length")) {
        return content_length(p, r, v, n);
    } else if (ieq_str(name, nl, "transfer-encoding")) {
        return transfer_encoding(p, r, v, n);
    } else if (ieq_str(name, nl, "connection")) {
        size_t pos = 0, b, e;
        while (list_next(v, n, &pos, &b, &e)) {
            if (ieq_str(v + b, e - b, "close"))
                p->flags |= F_CLOSE;
            else if (ieq_str(v + b, e - b, "keep-alive"))
                p->flags |= F_KEEP_ALIVE;
        }
    } else if (ieq_str(name, nl, "expect")) {
        if (!ieq_str(v, n, "100-continue"))
            return fail(p, 417, "unsupported expectation");
        if (r->version_minor == 1)
            r->expect_continue = true;
    } else if (ieq_str(name, nl, "if-modified-since")) {
        if (!r->if_modified_since) {
            r->if_modified_since = true;
            r->if_modified_since_value = h->value;
        }
    }
    return 0;
}

static int head_complete(http_parser *p, http_request *r) {
    if (r->version_minor == 1 && r->host.off == 0)
        return fail(p, 400, "missing Host");
    r->keep_alive = !(p->flags & F_CLOSE) && (r->version_minor == 1 || (p->flags & F_KEEP_ALIVE));
    return 0;
}

int http_parse_head(http_parser *p, http_request *req, const char *buf, size_t len) {
    if (p->state == S_DONE)
        return HTTP_PARSE_DONE;
    if (p->state == S_ERROR)
        return HTTP_PARSE_ERROR;
    if (p->state == S_START && p->scanned == 0) {
        request_reset(req);
        p->flags = 0;
    }
    size_t max_head = p->limits.max_head_bytes ? p->limits.max_head_bytes : DEFAULT_MAX_HEAD;
    size_t max_target = p->limits.max_target ? p->limits.max_target : DEFAULT_MAX_TARGET;
    if (max_head > UINT32_MAX - 1) /* spans are 32-bit */
        max_head = UINT32_MAX - 1;
    if (max_target > max_head)
        max_target = max_head;
    const unsigned char *s = (const unsigned char *)buf;
    size_t end = len < max_head ? len : max_head;
    size_t i = p->scanned;
    int st = p->state;
    http_header *h = &req->headers[req->nheaders < HTTP_MAX_HEADERS ? req->nheaders : 0];

#define FAIL(at, status, why)                                                                      \
    do {                                                                                           \
        i = (at);                                                                                  \
        fail(p, (status), (why));                                                                  \
        st = S_ERROR;                                                                              \
        goto out;                                                                                  \
    } while (0)
#define LF_OR(c, why) ((c) == '\n' ? "bare LF" : (why))

    while (i < end) {
        unsigned char c = s[i];
        switch (st) {
        case S_START: /* a bare LF here is caught as an invalid method */
            if (c == '\r' && i / 2 >= MAX_EMPTY_LINES)
                FAIL(i, 400, "too many empty lines before the request");
            if (c == '\r')
                st = S_LEAD_LF, i++;
            else
                st = S_METHOD, req->method_name.off = (uint32_t)i;
            break;
        case S_LEAD_LF:
            if (c != '\n')
                FAIL(i, 400, "bare CR");
            st = S_START, i++;
            break;
        case S_METHOD: {
            size_t too_long = req->method_name.off + MAX_METHOD; /* a tchar here is one too many */
            size_t stop = end < too_long ? end : too_long;
            while (i < stop && is_tchar(s[i]))
                i++;
            if (i == too_long && i < end && is_tchar(s[i]))
                FAIL(i, 501, "method too long");
            if (i == end)
                break;
            if (s[i] != ' ' || i == req->method_name.off)
                FAIL(i, 400, LF_OR(s[i], "invalid method"));
            req->method_name.len = (uint32_t)(i - req->method_name.off);
            req->method = method_id(s + req->method_name.off, req->method_name.len);
            req->target.off = (uint32_t)++i;
            st = S_TARGET;
            break;
        }
        case S_TARGET: {
            size_t too_long = req->target.off + max_target; /* a target byte here is one too many */
            size_t stop = end < too_long ? end : too_long;
            for (; i < stop && is_vchar(s[i]) && s[i] != '#'; i++)
                if (s[i] == '?' && req->query.off == 0)
                    req->query.off = (uint32_t)i;
            if (i < end && s[i] == '#')
                FAIL(i, 400, "fragment in request-target");
            if (i == too_long && i < end && is_vchar(s[i]))
                FAIL(i, 414, "request-target too long");
            if (i == end)
                break;
            if (s[i] != ' ' || i == req->target.off)
                FAIL(i, 400, LF_OR(s[i], "invalid or empty request-target"));
            req->target.len = (uint32_t)(i - req->target.off);
            if (classify_target(p, req, s) != 0)
                FAIL(i, p->status, p->error);
            st = S_VERSION, i++;
            break;
        }
        case S_VERSION: {
            size_t k = i - (req->target.off + req->target.len + 1); /* "HTTP/d.d" then CR */
            bool ok = k < 5    ? c == (unsigned char)"HTTP/"[k]
                      : k == 6 ? c == '.'
                      : k == 8 ? c == '\r'
                               : c >= '0' && c <= '9';
            if (!ok)
                FAIL(i, 400, LF_OR(c, "invalid HTTP version"));
            if (k == 8 && (s[i - 3] != '1' || s[i - 1] > '1'))
                FAIL(i, 505, "HTTP version not supported");
            if (k == 8)
                req->version_minor = s[i - 1] - '0', st = S_RL_LF;
            i++;
            break;
        }
        case S_RL_LF:
        case S_HDR_LF:
        case S_END_LF:
            if (c != '\n')
                FAIL(i, 400, "bare CR");
            i++;
            if (st == S_HDR_LF) {
                req->nheaders++;
                if (header_semantics(p, req, s, h) != 0)
                    FAIL(i, p->status, p->error);
            } else if (st == S_END_LF) {
                if (head_complete(p, req) != 0)
                    FAIL(i, p->status, p->error);
                req->head_len = i;
                st = S_DONE;
                goto out;
            }
            st = S_HDR_START;
            break;
        case S_HDR_START:
            if (c == '\r') {
                st = S_END_LF, i++;
                break;
            }
            if (c == '\n' || is_ows(c))
                FAIL(i, 400, LF_OR(c, "obsolete line folding"));
            if (req->nheaders == HTTP_MAX_HEADERS)
                FAIL(i, 431, "too many header fields");
            if (!is_tchar(c))
                FAIL(i, 400, c == ':' ? "empty header name" : "invalid header name");
            h = &req->headers[req->nheaders];
            h->name.off = (uint32_t)i++;
            st = S_HDR_NAME;
            break;
        case S_HDR_NAME:
            while (i < end && is_tchar(s[i]))
                i++;
            if (i == end)
                break;
            if (s[i] != ':')
                FAIL(i, 400, is_ows(s[i]) ? "whitespace before ':'" : LF_OR(s[i], "invalid name"));
            h->name.len = (uint32_t)(i - h->name.off);
            h->value = span(++i, 0);
            st = S_HDR_OWS;
            break;
        case S_HDR_OWS:
            if (is_ows(c)) {
                h->value.off = (uint32_t)++i;
                break;
            }
            st = S_HDR_VALUE;
            /* fall through */
        case S_HDR_VALUE: {
            size_t last = h->value.off + h->value.len; /* after the last non-OWS byte */
            for (; i < end && is_field_char(s[i]); i++)
                if (!is_ows(s[i]))
                    last = i + 1;
            h->value.len = (uint32_t)(last - h->value.off);
            if (i == end)
                break;
            if (s[i] != '\r')
                FAIL(i, 400, LF_OR(s[i], "invalid character in header value"));
            st = S_HDR_LF, i++;
            break;
        }
        default:
            FAIL(i, 400, "bad parser state");
        }
    }
    if (len > max_head) /* max_head bytes scanned and the head is not complete */
        FAIL(i, 431, "request header section too large");
out:
    p->work += i - p->scanned;
    p->scanned = i;
    p->state = st;
    return st == S_DONE ? HTTP_PARSE_DONE : st == S_ERROR ? HTTP_PARSE_ERROR : HTTP_PARSE_AGAIN;
#undef LF_OR
#undef FAIL
}

/* ---- chunked body decoder ---- */

/* Decoder states: at the first digit of a chunk-size, in it; in BWS where only ';' may follow
 * (after the size or an extension value); after a ';' (BWS, then a name), in an extension name,
 * in BWS after it (';' or '=' may follow), after its '=' (BWS, then a value), in a token value,
 * in a quoted-string value, after a backslash in it, after its closing quote; after the CR of the
 * size line; in a payload (d->left bytes to go), CR then LF expected after it; at a trailer line
 * start (or the final empty line), in a trailer name, in its value, after its CR; after the CR of
 * the final empty line. */
/* clang-format off */
enum { C_SIZE0, C_SIZE, C_BWS, C_EXT_SEMI, C_EXT_NAME, C_EXT_NAME_BWS, C_EXT_EQ, C_EXT_TOKEN,
       C_EXT_QUOTED, C_EXT_QPAIR, C_EXT_END, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF,
       C_TR_START, C_TR_NAME, C_TR_VALUE, C_TR_LF, C_END_LF, C_DONE, C_ERROR };
/* clang-format on */

void http_chunked_init(http_chunked *d, uint64_t max_body) {
    memset(d, 0, sizeof *d);
    d->max_body = max_body;
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int http_chunked_decode(http_chunked *d, char *body, size_t len) {
    if (d->state == C_DONE)
        return HTTP_PARSE_DONE;
    if (d->state == C_ERROR)
        return HTTP_PARSE_ERROR;
    unsigned char *s = (unsigned char *)body;
    size_t i = d->raw;
    int st = d->state, status = 400;
    while (i < len) {
        unsigned char c = s[i];
        int v;
        switch (st) {
        case C_SIZE0:
            if ((v = hexval(c)) < 0)
                goto error;
            d->left = (uint64_t)v;
            st = C_SIZE;
            i++;
            break;
        case C_SIZE:
            if ((v = hexval(c)) >= 0) {
                if (d->left >> 60)
                    goto error; /* one more digit would overflow 64 bits */
                d->left = d->left << 4 | (uint64_t)v;
                i++;
                break;
            }
            if (d->max_body && d->left > d->max_body - d->decoded) {
                status = 413;
                goto error;
            }
            st = C_EXT_END;
            break;
        case C_BWS:
            if (c == ';')
                st = C_EXT_SEMI;
            else if (!is_ows(c))
                goto error;
            i++;
            break;
        case C_EXT_SEMI:
        case C_EXT_EQ:
            if (is_ows(c)) {
                i++;
                break;
            }
            if (st == C_EXT_EQ && c == '"')
                st = C_EXT_QUOTED;
            else if (is_tchar(c))
                st = st == C_EXT_EQ ? C_EXT_TOKEN : C_EXT_NAME;
            else
                goto error;
            i++;
            break;
        case C_EXT_NAME:
        case C_EXT_TOKEN:
            while (i < len && is_tchar(s[i]))
                i++;
            if (i == len)
                break;
            if (st == C_EXT_NAME && (s[i] == '=' || is_ows(s[i]))) {
                st = s[i] == '=' ? C_EXT_EQ : C_EXT_NAME_BWS;
                i++;
                break;
            }
            st = C_EXT_END;
            break;
        case C_EXT_NAME_BWS:
            if (c == '=')
                st = C_EXT_EQ;
            else if (c == ';')
                st = C_EXT_SEMI;
            else if (!is_ows(c))
                goto error;
            i++;
            break;
        case C_EXT_QUOTED: /* qdtext: a field byte other than DQUOTE and backslash */
            while (i < len && is_field_char(s[i]) && s[i] != '"' && s[i] != '\\')
                i++;
            if (i == len)
                break;
            if (s[i] == '"')
                st = C_EXT_END;
            else if (s[i] == '\\')
                st = C_EXT_QPAIR;
            else
                goto error; /* a CTL, or the CR of a line whose quoted-string is unterminated */
            i++;
            break;
        case C_EXT_QPAIR:
            if (!is_field_char(c))
                goto error;
            st = C_EXT_QUOTED;
            i++;
            break;
        case C_EXT_END: /* after a size, a name or a value: the line ends or another one follows */
            if (c == '\r')
                st = C_SIZE_LF;
            else if (c == ';')
                st = C_EXT_SEMI;
            else if (is_ows(c))
                st = C_BWS;
            else
                goto error;
            i++;
            break;
        case C_SIZE_LF:
        case C_DATA_LF:
        case C_TR_LF:
            if (c != '\n')
                goto error;
            st = st == C_TR_LF     ? C_TR_START
                 : st == C_DATA_LF ? C_SIZE0
                 : d->left         ? C_DATA
                                   : C_TR_START;
            i++;
            break;
        case C_DATA: {
            size_t n = len - i;
            if (n > d->left)
                n = (size_t)d->left;
            memmove(s + d->decoded, s + i, n);
            d->decoded += n;
            d->left -= n;
            i += n;
            if (d->left == 0)
                st = C_DATA_CR;
            break;
        }
        case C_DATA_CR:
            if (c != '\r')
                goto error;
            st = C_DATA_LF;
            i++;
            break;
        case C_TR_START:
            if (c == '\r')
                st = C_END_LF;
            else if (is_tchar(c))
                st = C_TR_NAME;
            else
                goto error; /* bare LF, obs-fold, empty name, invalid name */
            i++;
            break;
        case C_TR_NAME:
            while (i < len && is_tchar(s[i]))
                i++;
            if (i == len)
                break;
            if (s[i] != ':')
                goto error;
            st = C_TR_VALUE;
            i++;
            break;
        case C_TR_VALUE:
            while (i < len && is_field_char(s[i]))
                i++;
            if (i == len)
                break;
            if (s[i] != '\r')
                goto error;
            st = C_TR_LF;
            i++;
            break;
        case C_END_LF:
            if (c != '\n')
                goto error;
            d->raw = i + 1;
            d->state = C_DONE;
            return HTTP_PARSE_DONE;
        default:
            goto error;
        }
    }
    d->raw = i;
    d->state = st;
    return HTTP_PARSE_AGAIN;
error:
    d->raw = i;
    d->state = C_ERROR;
    d->status = status;
    return HTTP_PARSE_ERROR;
}
