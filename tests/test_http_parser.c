/* Tests for the HTTP-lite request parser (apps/http-lite/http_parser.c): the table of valid and
 * invalid requests in http_parser_cases.h, each parsed at once, split at every offset and grown
 * one byte at a time; limits detected early; the O(n) promise; the chunked body decoder. */
#include "http_parser.h"
#include "http_parser_cases.h"

#include <check.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

/* Formats at b + n (a short piece), returns the new length. */
static size_t put(char *b, size_t n, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    ck_assert(k >= 0 && (size_t)k < sizeof tmp);
    memcpy(b + n, tmp, (size_t)k);
    return n + (size_t)k;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        abort();
    return p;
}

static http_limits case_limits(const hp_case *c) {
    return (http_limits){.max_head_bytes = c->max_head, .max_target = c->max_target};
}

/* Parses buf[0..n) copied into a buffer of exactly n bytes, so ASan sees any read past n and the
 * parser cannot keep pointers into a previous buffer. */
static int parse_copy(http_parser *p, http_request *r, const char *buf, size_t n) {
    char *copy = xmalloc(n);
    memcpy(copy, buf, n);
    size_t before = p->scanned;
    int rc = http_parse_head(p, r, copy, n);
    free(copy);
    ck_assert_uint_ge(p->scanned, before);
    return rc;
}

static bool span_is(const char *buf, http_span s, const char *want) {
    return strlen(want) == s.len && memcmp(buf + s.off, want, s.len) == 0;
}

static void span_in_head(http_span s, const http_request *r) {
    ck_assert_uint_le((size_t)s.off + s.len, r->head_len);
}

static bool span_eq(http_span a, http_span b) { return a.off == b.off && a.len == b.len; }

/* Every field of a parsed request, compared. */
static void assert_same_request(const http_request *a, const http_request *b) {
    ck_assert_int_eq(a->method, b->method);
    ck_assert(span_eq(a->method_name, b->method_name));
    ck_assert(span_eq(a->target, b->target));
    ck_assert(span_eq(a->path, b->path));
    ck_assert(span_eq(a->query, b->query));
    ck_assert_int_eq(a->version_minor, b->version_minor);
    ck_assert_uint_eq(a->nheaders, b->nheaders);
    for (size_t i = 0; i < a->nheaders; i++) {
        ck_assert(span_eq(a->headers[i].name, b->headers[i].name));
        ck_assert(span_eq(a->headers[i].value, b->headers[i].value));
    }
    ck_assert_uint_eq(a->head_len, b->head_len);
    ck_assert_int_eq(a->keep_alive, b->keep_alive);
    ck_assert_int_eq(a->chunked, b->chunked);
    ck_assert_int_eq(a->has_length, b->has_length);
    ck_assert_uint_eq(a->content_length, b->content_length);
    ck_assert_int_eq(a->expect_continue, b->expect_continue);
    ck_assert(span_eq(a->host, b->host));
    ck_assert_int_eq(a->if_modified_since, b->if_modified_since);
    ck_assert(span_eq(a->if_modified_since_value, b->if_modified_since_value));
}

static const http_header *find_header(const char *buf, const http_request *r, const char *name) {
    for (size_t i = 0; i < r->nheaders; i++)
        if (http_span_ieq(buf, r->headers[i].name, name))
            return &r->headers[i];
    return NULL;
}

/* Checks a DONE result against the table's expectations. */
static void check_valid(const hp_case *c, const http_request *r) {
    const char *b = c->req;
    ck_assert_uint_eq(r->head_len, c->len - c->tail);
    ck_assert_int_eq(r->method, c->method);
    ck_assert_msg(span_is(b, r->method_name, c->mname), "method of %s", c->name);
    ck_assert_msg(span_is(b, r->path, c->path), "path of %s", c->name);
    ck_assert_msg(span_is(b, r->query, c->query ? c->query : ""), "query of %s", c->name);
    ck_assert_int_eq(r->version_minor, c->minor);
    ck_assert_uint_eq(r->nheaders, c->nheaders);
    ck_assert_int_eq(r->keep_alive, c->keep_alive);
    ck_assert_int_eq(r->chunked, c->chunked);
    ck_assert_int_eq(r->has_length, c->has_length);
    ck_assert_uint_eq(r->content_length, c->cl);
    ck_assert_int_eq(r->expect_continue, c->expect);
    if (c->host)
        ck_assert_msg(r->host.off != 0 && span_is(b, r->host, c->host), "host of %s", c->name);
    else
        ck_assert_uint_eq(r->host.off, 0);
    ck_assert_int_eq(r->if_modified_since, c->ims != NULL);
    if (c->ims)
        ck_assert(span_is(b, r->if_modified_since_value, c->ims));
    for (size_t i = 0; i < 3 && c->hdr[i].name; i++) {
        const http_header *h = find_header(b, r, c->hdr[i].name);
        ck_assert_msg(h != NULL, "%s: no header %s", c->name, c->hdr[i].name);
        ck_assert_msg(span_is(b, h->value, c->hdr[i].value), "%s: value of %s", c->name,
                      c->hdr[i].name);
    }
    /* The target is the method's neighbour, the path and query lie inside it. */
    ck_assert_uint_eq(r->target.off, r->method_name.off + r->method_name.len + 1);
    span_in_head(r->target, r);
    span_in_head(r->path, r);
    span_in_head(r->query, r);
    for (size_t i = 0; i < r->nheaders; i++) {
        ck_assert_uint_gt(r->headers[i].name.len, 0);
        span_in_head(r->headers[i].name, r);
        span_in_head(r->headers[i].value, r);
        ck_assert_int_eq(b[r->headers[i].name.off + r->headers[i].name.len], ':');
    }
}

/* ---- the table ---- */

START_TEST(test_case_whole) {
    const hp_case *c = &cases[_i];
    http_limits lim = case_limits(c);
    http_parser p;
    http_request r;
    http_parser_init(&p, &lim);
    int rc = parse_copy(&p, &r, c->req, c->len);
    if (c->status) {
        ck_assert_msg(rc == HTTP_PARSE_ERROR, "%s: rc %d", c->name, rc);
        ck_assert_msg(p.status == c->status, "%s: status %d, want %d (%s)", c->name, p.status,
                      c->status, p.error);
        ck_assert_ptr_nonnull(p.error);
        /* The error is sticky. */
        ck_assert_int_eq(http_parse_head(&p, &r, c->req, c->len), HTTP_PARSE_ERROR);
    } else {
        ck_assert_msg(rc == HTTP_PARSE_DONE, "%s: rc %d (%d %s)", c->name, rc, p.status,
                      p.error ? p.error : "");
        check_valid(c, &r);
        ck_assert_uint_eq(p.scanned, r.head_len);
        /* Each byte once, plus field values and the target once more. */
        ck_assert_uint_le(http_parser_work(&p), 2 * r.head_len);
        ck_assert_int_eq(http_parse_head(&p, &r, c->req, c->len), HTTP_PARSE_DONE);
        check_valid(c, &r);
    }
}
END_TEST

/* buf[0..k) then the whole, for every k. */
START_TEST(test_case_split) {
    const hp_case *c = &cases[_i];
    http_limits lim = case_limits(c);
    http_parser p0;
    http_request want;
    http_parser_init(&p0, &lim);
    int rc0 = parse_copy(&p0, &want, c->req, c->len);
    for (size_t k = 0; k <= c->len; k++) {
        http_parser p;
        http_request r;
        http_parser_init(&p, &lim);
        int rc = parse_copy(&p, &r, c->req, k);
        if (c->status == 0)
            ck_assert_int_eq(rc, k < want.head_len ? HTTP_PARSE_AGAIN : HTTP_PARSE_DONE);
        else
            ck_assert_int_ne(rc, HTTP_PARSE_DONE);
        rc = parse_copy(&p, &r, c->req, c->len);
        ck_assert_msg(rc == rc0, "%s split at %zu: rc %d, want %d", c->name, k, rc, rc0);
        if (rc == HTTP_PARSE_DONE)
            assert_same_request(&r, &want);
        else
            ck_assert_int_eq(p.status, p0.status);
    }
}
END_TEST

/* Lengths 1, 2, 3, ..., n on one parser. */
START_TEST(test_case_bytewise) {
    const hp_case *c = &cases[_i];
    http_limits lim = case_limits(c);
    http_parser p0, p;
    http_request want, r;
    http_parser_init(&p0, &lim);
    int rc0 = parse_copy(&p0, &want, c->req, c->len);
    http_parser_init(&p, &lim);
    int rc = HTTP_PARSE_AGAIN;
    size_t n;
    for (n = 1; n <= c->len && rc == HTTP_PARSE_AGAIN; n++)
        rc = parse_copy(&p, &r, c->req, n);
    ck_assert_int_eq(rc, rc0);
    if (c->status == 0) {
        ck_assert_uint_eq(n - 1, want.head_len); /* AGAIN until the last byte of the head */
        assert_same_request(&r, &want);
        ck_assert_uint_eq(http_parser_work(&p), http_parser_work(&p0));
    } else {
        ck_assert_int_eq(p.status, c->status);
    }
}
END_TEST

/* ---- limits, long heads and the O(n) promise ---- */

/* A request line plus nfields "X-Header-<i>: <vlen bytes>" lines and the final CRLF. */
static char *make_head(size_t nfields, size_t vlen, size_t *len) {
    size_t cap = 64 + nfields * (vlen + 32);
    char *b = xmalloc(cap);
    size_t n = put(b, 0, "GET /long HTTP/1.1\r\nHost: h\r\n");
    for (size_t i = 0; i < nfields; i++) {
        n = put(b, n, "X-Header-%zu: ", i);
        for (size_t j = 0; j < vlen; j++)
            b[n++] = (char)('a' + (i + j) % 26);
        b[n++] = '\r';
        b[n++] = '\n';
    }
    memcpy(b + n, "\r\n", 2);
    *len = n + 2;
    return b;
}

/* Feeds b one byte more at a time; returns the final rc and the length that gave it. */
static int feed_bytewise(http_parser *p, http_request *r, const char *b, size_t len, size_t *at) {
    int rc = HTTP_PARSE_AGAIN;
    size_t n = 0, scanned = 0;
    while (rc == HTTP_PARSE_AGAIN && n < len) {
        rc = http_parse_head(p, r, b, ++n);
        ck_assert_uint_ge(p->scanned, scanned);
        ck_assert_uint_le(p->scanned, n);
        scanned = p->scanned;
    }
    *at = n;
    return rc;
}

START_TEST(test_linear_bytewise_8000) {
    size_t len, at;
    char *b = make_head(62, 115, &len); /* 63 fields, about 8100 bytes */
    ck_assert_uint_ge(len, 8000);
    http_limits lim = {.max_head_bytes = 16384};
    http_parser p;
    http_request r;
    http_parser_init(&p, &lim);
    ck_assert_int_eq(feed_bytewise(&p, &r, b, len, &at), HTTP_PARSE_DONE);
    ck_assert_uint_eq(at, len);
    ck_assert_uint_eq(r.head_len, len);
    ck_assert_uint_eq(r.nheaders, 63);
    ck_assert_uint_le(http_parser_work(&p), 2 * len);

    http_parser p1;
    http_request r1;
    http_parser_init(&p1, &lim);
    ck_assert_int_eq(http_parse_head(&p1, &r1, b, len), HTTP_PARSE_DONE);
    assert_same_request(&r, &r1);
    ck_assert_uint_eq(http_parser_work(&p), http_parser_work(&p1));
    free(b);
}
END_TEST

START_TEST(test_linear_bytewise_one_long_value) {
    size_t len, at;
    char *b = make_head(1, 7900, &len);
    http_parser p;
    http_request r;
    http_parser_init(&p, NULL);
    ck_assert_int_eq(feed_bytewise(&p, &r, b, len, &at), HTTP_PARSE_DONE);
    ck_assert_uint_eq(r.headers[1].value.len, 7900);
    ck_assert_uint_le(http_parser_work(&p), 2 * len);
    free(b);
}
END_TEST

START_TEST(test_64_fields_ok_65_is_431) {
    size_t len;
    char *b = make_head(63, 3, &len); /* Host + 63 = 64 */
    http_parser p;
    http_request r;
    http_parser_init(&p, NULL);
    ck_assert_int_eq(http_parse_head(&p, &r, b, len), HTTP_PARSE_DONE);
    ck_assert_uint_eq(r.nheaders, HTTP_MAX_HEADERS);
    ck_assert(span_is(b, r.headers[63].name, "X-Header-62"));
    free(b);

    b = make_head(64, 3, &len);
    http_parser_init(&p, NULL);
    ck_assert_int_eq(http_parse_head(&p, &r, b, len), HTTP_PARSE_ERROR);
    ck_assert_int_eq(p.status, 431);
    free(b);
}
END_TEST

/* 431 as soon as max_head_bytes + 1 bytes are there, without waiting for the end of the head. */
START_TEST(test_431_detected_early) {
    size_t len, at;
    char *b = make_head(40, 420, &len);
    http_parser p;
    http_request r;
    http_parser_init(&p, NULL); /* default limit: 16384 */
    ck_assert_uint_gt(len, 16385);
    ck_assert_int_eq(feed_bytewise(&p, &r, b, len - 2, &at), HTTP_PARSE_ERROR);
    ck_assert_int_eq(p.status, 431);
    ck_assert_uint_eq(at, 16385);
    http_parser_init(&p, NULL);
    ck_assert_int_eq(http_parse_head(&p, &r, b, 16384), HTTP_PARSE_AGAIN);
    ck_assert_int_eq(http_parse_head(&p, &r, b, 16385), HTTP_PARSE_ERROR);
    ck_assert_int_eq(p.status, 431);
    free(b);
}
END_TEST

/* A head of exactly the default limit is fine; a zeroed parser uses the default limits. */
START_TEST(test_default_limits) {
    static char b[16384 + 16];
    const char *start = "GET / HTTP/1.1\r\nHost: h\r\nX: ";
    size_t n = strlen(start);
    memcpy(b, start, n);
    memset(b + n, 'v', 16384 - n - 4);
    memcpy(b + 16384 - 4, "\r\n\r\n", 4);
    http_parser p;
    memset(&p, 0, sizeof p);
    http_request r;
    ck_assert_int_eq(http_parse_head(&p, &r, b, 16384), HTTP_PARSE_DONE);
    ck_assert_uint_eq(r.head_len, 16384);
    memcpy(b + 16384 - 4, "v\r\n\r\n", 5);
    memset(&p, 0, sizeof p);
    ck_assert_int_eq(http_parse_head(&p, &r, b, 16385), HTTP_PARSE_ERROR);
    ck_assert_int_eq(p.status, 431);

    /* Target of 8192 bytes: fine; 8193: 414, as soon as byte 8193 of the target is there. */
    memcpy(b, "GET /", 5);
    memset(b + 5, 'a', 8300);
    memcpy(b + 4 + 8192, " HTTP/1.1\r\nHost: h\r\n\r\n", 22);
    memset(&p, 0, sizeof p);
    ck_assert_int_eq(http_parse_head(&p, &r, b, 4 + 8192 + 22), HTTP_PARSE_DONE);
    ck_assert_uint_eq(r.target.len, 8192);
    b[4 + 8192] = 'a';
    memset(&p, 0, sizeof p);
    ck_assert_int_eq(http_parse_head(&p, &r, b, 4 + 8192), HTTP_PARSE_AGAIN);
    ck_assert_int_eq(http_parse_head(&p, &r, b, 4 + 8193), HTTP_PARSE_ERROR);
    ck_assert_int_eq(p.status, 414);
}
END_TEST

/* RFC 9112 §3 asks for request lines of at least 8000 octets: a 7,900-byte target with a
 * browser's worth of header fields fits the default limits. */
START_TEST(test_default_limits_fit_a_7900_byte_target) {
    static char b[16384];
    size_t n = put(b, 0, "GET /");
    memset(b + n, 'p', 7899);
    n += 7899;
    n = put(b, n, "?q HTTP/1.1\r\nHost: example.com\r\n");
    for (int i = 0; i < 20; i++)
        n = put(b, n, "X-Field-%02d: %040d\r\n", i, i);
    n = put(b, n, "\r\n");
    ck_assert_uint_gt(n, 8192);
    http_parser p;
    http_request r;
    http_parser_init(&p, NULL);
    ck_assert_int_eq(http_parse_head(&p, &r, b, n), HTTP_PARSE_DONE);
    ck_assert_uint_eq(r.path.len, 7900);
    ck_assert_uint_eq(r.nheaders, 21);
    ck_assert_uint_eq(r.head_len, n);
}
END_TEST

/* Limits larger than any buffer do not overflow the parser's arithmetic. */
START_TEST(test_huge_limits) {
    const char *b = "GET /abc HTTP/1.1\r\nHost: h\r\n\r\n";
    http_limits lim = {.max_head_bytes = SIZE_MAX, .max_target = SIZE_MAX};
    http_parser p;
    http_request r;
    http_parser_init(&p, &lim);
    ck_assert_int_eq(http_parse_head(&p, &r, b, strlen(b)), HTTP_PARSE_DONE);
    ck_assert(span_is(b, r.path, "/abc"));
}
END_TEST

START_TEST(test_414_detected_early) {
    char b[200];
    memcpy(b, "GET /", 5);
    memset(b + 5, 'x', sizeof b - 5);
    http_limits lim = {.max_target = 50};
    http_parser p;
    http_request r;
    size_t at;
    http_parser_init(&p, &lim);
    ck_assert_int_eq(feed_bytewise(&p, &r, b, sizeof b, &at), HTTP_PARSE_ERROR);
    ck_assert_int_eq(p.status, 414);
    ck_assert_uint_eq(at, 4 + 51);
}
END_TEST

START_TEST(test_pipelined_requests) {
    const char *b = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                    "POST /2 HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc"
                    "\r\nGET /3?q HTTP/1.0\r\n\r\n";
    const char *paths[] = {"/1", "/2", "/3"};
    size_t off = 0, len = strlen(b);
    http_request r;
    for (int i = 0; i < 3; i++) {
        const char *req = b + off;
        http_parser p;
        http_parser_init(&p, NULL);
        ck_assert_int_eq(http_parse_head(&p, &r, req, len - off), HTTP_PARSE_DONE);
        ck_assert(span_is(req, r.path, paths[i]));
        ck_assert(span_is(req, r.query, i == 2 ? "q" : ""));
        ck_assert_uint_eq(r.method_name.off, i == 2 ? 2 : 0); /* the CRLF after the body */
        ck_assert_uint_eq(r.nheaders, i == 2 ? 0 : i + 1);
        ck_assert_int_eq(r.has_length, i == 1);
        off += r.head_len + (r.has_length ? r.content_length : 0);
    }
    ck_assert_uint_eq(off, len);
}
END_TEST

START_TEST(test_span_ieq) {
    const char *b = "xxContent-Typeyy";
    http_span s = {2, 12};
    ck_assert(http_span_ieq(b, s, "content-type"));
    ck_assert(http_span_ieq(b, s, "CONTENT-TYPE"));
    ck_assert(!http_span_ieq(b, s, "content-typ"));
    ck_assert(!http_span_ieq(b, s, "content-types"));
    ck_assert(!http_span_ieq(b, s, "content_type"));
    ck_assert(http_span_ieq(b, (http_span){0, 0}, ""));
}
END_TEST

/* ---- chunked decoder ---- */

/* Decodes c->req, fed as [0..k) then [0..len) (or byte by byte when k == SIZE_MAX) in a buffer
 * of exactly the length given, grown with realloc between calls. Checks the result against the
 * table and returns the decoder. */
static http_chunked decode_case(const hc_case *c, size_t k) {
    http_chunked d;
    http_chunked_init(&d, c->max_body);
    char *buf = NULL;
    size_t have = 0, raw = 0;
    int rc = HTTP_PARSE_AGAIN;
    size_t steps[2] = {k, c->len};
    for (size_t i = 0; rc == HTTP_PARSE_AGAIN && have < c->len; i++) {
        size_t n = k == SIZE_MAX ? have + 1 : steps[i < 1 ? 0 : 1];
        if (n > c->len)
            n = c->len;
        char *nb = realloc(buf, n ? n : 1);
        ck_assert_ptr_nonnull(nb);
        buf = nb;
        memcpy(buf + have, c->req + have, n - have);
        have = n;
        rc = http_chunked_decode(&d, buf, have);
        ck_assert_uint_ge(d.raw, raw);
        ck_assert_uint_le(d.raw, have);
        ck_assert_uint_le(d.decoded, d.raw);
        raw = d.raw;
    }
    ck_assert_msg(rc == c->rc, "%s (k %zu): rc %d, want %d", c->name, k, rc, c->rc);
    if (rc == HTTP_PARSE_ERROR) {
        ck_assert_msg(d.status == c->status, "%s: status %d", c->name, d.status);
    } else {
        ck_assert_uint_eq(d.decoded, strlen(c->decoded));
        ck_assert_msg(memcmp(buf, c->decoded, d.decoded) == 0, "%s: decoded", c->name);
    }
    if (rc == HTTP_PARSE_DONE) {
        ck_assert_uint_eq(d.raw, c->len - c->tail);
        ck_assert_int_eq(memcmp(buf + d.raw, c->req + d.raw, have - d.raw), 0); /* untouched */
        ck_assert_int_eq(http_chunked_decode(&d, buf, have), HTTP_PARSE_DONE);
    }
    free(buf);
    return d;
}

START_TEST(test_chunked_whole) { decode_case(&chunk_cases[_i], chunk_cases[_i].len); }
END_TEST

START_TEST(test_chunked_split) {
    const hc_case *c = &chunk_cases[_i];
    http_chunked want = decode_case(c, c->len);
    for (size_t k = 0; k <= c->len; k++) {
        http_chunked d = decode_case(c, k);
        if (c->rc != HTTP_PARSE_ERROR)
            ck_assert_uint_eq(d.raw, want.raw);
    }
}
END_TEST

START_TEST(test_chunked_bytewise) { decode_case(&chunk_cases[_i], SIZE_MAX); }
END_TEST

/* Random chunk sizes, extensions and trailers, decoded in random pieces, against the payload. */
START_TEST(test_chunked_random) {
    unsigned seed = 12345;
#define RND() (seed = seed * 1103515245u + 12345u, (seed >> 16) & 0x7fff)
    for (int round = 0; round < 200; round++) {
        size_t cap = 1 << 16, n = 0, plen = 0;
        char *raw = xmalloc(cap), *payload = xmalloc(cap);
        int nchunks = (int)(RND() % 8);
        for (int i = 0; i < nchunks; i++) {
            size_t sz = 1 + RND() % 700;
            n = put(raw, n, RND() % 2 ? "%zx" : "%zX", sz);
            if (RND() % 3 == 0)
                n = put(raw, n, ";ext%d=\"v\"", i);
            n = put(raw, n, "\r\n");
            for (size_t j = 0; j < sz; j++)
                payload[plen++] = raw[n++] = (char)RND();
            n = put(raw, n, "\r\n");
        }
        n = put(raw, n, "0\r\n%s\r\n", RND() % 2 ? "T: x\r\n" : "");
        http_chunked d;
        http_chunked_init(&d, 0);
        int rc = HTTP_PARSE_AGAIN;
        for (size_t have = 0; rc == HTTP_PARSE_AGAIN && have < n;) {
            have += 1 + RND() % 300;
            rc = http_chunked_decode(&d, raw, have < n ? have : n);
        }
        ck_assert_int_eq(rc, HTTP_PARSE_DONE);
        ck_assert_uint_eq(d.raw, n);
        ck_assert_uint_eq(d.decoded, plen);
        ck_assert_int_eq(memcmp(raw, payload, plen), 0);
        free(raw);
        free(payload);
    }
#undef RND
}
END_TEST

static void add_chunked_tests(TCase *tc) {
    tcase_add_loop_test(tc, test_chunked_whole, 0, (int)NCHUNK_CASES);
    tcase_add_loop_test(tc, test_chunked_split, 0, (int)NCHUNK_CASES);
    tcase_add_loop_test(tc, test_chunked_bytewise, 0, (int)NCHUNK_CASES);
    tcase_add_test(tc, test_chunked_random);
}

static Suite *http_parser_suite(void) {
    Suite *s = suite_create("http_parser");
    TCase *tc = tcase_create("table");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_case_whole, 0, (int)NCASES);
    tcase_add_loop_test(tc, test_case_split, 0, (int)NCASES);
    tcase_add_loop_test(tc, test_case_bytewise, 0, (int)NCASES);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_linear_bytewise_8000);
    tcase_add_test(tc, test_linear_bytewise_one_long_value);
    tcase_add_test(tc, test_64_fields_ok_65_is_431);
    tcase_add_test(tc, test_431_detected_early);
    tcase_add_test(tc, test_default_limits);
    tcase_add_test(tc, test_default_limits_fit_a_7900_byte_target);
    tcase_add_test(tc, test_414_detected_early);
    tcase_add_test(tc, test_huge_limits);
    tcase_add_test(tc, test_pipelined_requests);
    tcase_add_test(tc, test_span_ieq);
    suite_add_tcase(s, tc);

    tc = tcase_create("chunked");
    tcase_set_timeout(tc, 60);
    add_chunked_tests(tc);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(http_parser_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
