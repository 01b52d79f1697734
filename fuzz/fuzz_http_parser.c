/* libFuzzer target for the HTTP-lite parser (apps/http-lite/http_parser.c).
 *
 * The input is parsed as a request head with the default limits and with small ones, at once
 * and split at an offset derived from the data (and, for short inputs, grown one byte at a
 * time); every way must give the same result, and a parsed request must be consistent. When the
 * head is complete and the body chunked, the body is decoded in a copy, at once and split, and
 * both must agree. Any disagreement abort()s. */
#include "http_parser.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check(bool ok) {
    if (!ok)
        abort();
}

static bool span_eq(http_span a, http_span b) { return a.off == b.off && a.len == b.len; }

static void within(http_span s, size_t lo, size_t hi) {
    check(s.off >= lo && (size_t)s.off + s.len <= hi);
}

static void same_request(const http_request *a, const http_request *b) {
    check(a->method == b->method && span_eq(a->method_name, b->method_name));
    check(span_eq(a->target, b->target) && span_eq(a->path, b->path));
    check(span_eq(a->query, b->query) && a->version_minor == b->version_minor);
    check(a->nheaders == b->nheaders && a->head_len == b->head_len);
    for (size_t i = 0; i < a->nheaders; i++)
        check(span_eq(a->headers[i].name, b->headers[i].name) &&
              span_eq(a->headers[i].value, b->headers[i].value));
    check(a->keep_alive == b->keep_alive && a->chunked == b->chunked);
    check(a->has_length == b->has_length && a->content_length == b->content_length);
    check(a->expect_continue == b->expect_continue && span_eq(a->host, b->host));
    check(a->if_modified_since == b->if_modified_since &&
          span_eq(a->if_modified_since_value, b->if_modified_since_value));
}

/* What must hold for any request the parser accepts. */
static void check_request(const http_request *r, const uint8_t *buf, size_t len) {
    size_t hl = r->head_len;
    check(hl >= 16 && hl <= len); /* "M / HTTP/1.0\r\n\r\n" at least */
    check(buf[hl - 2] == '\r' && buf[hl - 1] == '\n');
    check(r->method_name.len > 0 && r->target.len > 0);
    check(r->target.off == r->method_name.off + r->method_name.len + 1);
    size_t t0 = r->target.off, te = t0 + r->target.len;
    within(r->target, 0, hl);
    within(r->path, t0, te);
    within(r->query, t0, te);
    check(buf[te] == ' ' && r->version_minor >= 0 && r->version_minor <= 1);
    check(r->nheaders <= HTTP_MAX_HEADERS);
    for (size_t i = 0; i < r->nheaders; i++) {
        const http_header *h = &r->headers[i];
        check(h->name.len > 0 && buf[h->name.off + h->name.len] == ':');
        within(h->name, te, hl);
        within(h->value, h->name.off + h->name.len + 1, hl);
        if (h->value.len > 0) {
            check(buf[h->value.off] != ' ' && buf[h->value.off] != '\t');
            uint8_t last = buf[h->value.off + h->value.len - 1];
            check(last != ' ' && last != '\t');
        }
        for (size_t j = 0; j < h->value.len; j++)
            check(buf[h->value.off + j] == '\t' || buf[h->value.off + j] >= 0x20);
    }
    check(!(r->chunked && r->has_length));
    check(!r->chunked || r->version_minor == 1);
    check(r->content_length <= (uint64_t)1 << 62);
    check(r->has_length || r->content_length == 0);
    check(r->version_minor == 0 || r->host.off != 0);
}

/* Parses buf[0..k) (in a copy of exactly k bytes) and then buf[0..n). */
static int parse_split(http_parser *p, http_request *r, const uint8_t *buf, size_t n, size_t k) {
    if (k < n) {
        char *copy = malloc(k ? k : 1);
        check(copy != NULL);
        memcpy(copy, buf, k);
        int rc = http_parse_head(p, r, copy, k);
        free(copy);
        check(rc != HTTP_PARSE_DONE || r->head_len <= k);
        check(p->scanned <= k);
    }
    return http_parse_head(p, r, (const char *)buf, n);
}

static void same_outcome(int rc0, const http_parser *p0, const http_request *r0, int rc,
                         const http_parser *p, const http_request *r) {
    check(rc == rc0 && p->scanned == p0->scanned);
    if (rc == HTTP_PARSE_DONE)
        same_request(r0, r);
    if (rc == HTTP_PARSE_ERROR)
        check(p->status == p0->status && strcmp(p->error, p0->error) == 0);
}

/* Decodes body[0..n) in a copy, split at k (k >= n: at once); the decoded bytes go to *out. */
static int decode(http_chunked *d, const uint8_t *body, size_t n, size_t k, uint64_t max,
                  char **out) {
    http_chunked_init(d, max);
    size_t have = k < n ? k : n;
    char *b = malloc(have ? have : 1); /* exactly the bytes given, so ASan sees overreads */
    check(b != NULL);
    memcpy(b, body, have);
    int rc = http_chunked_decode(d, b, have);
    check(d->decoded <= d->raw && d->raw <= have);
    if (rc == HTTP_PARSE_AGAIN && have < n) {
        b = realloc(b, n); /* the decoded bytes at the front move along */
        check(b != NULL);
        memcpy(b + have, body + have, n - have);
        rc = http_chunked_decode(d, b, n);
    }
    check(d->decoded <= d->raw && d->raw <= n);
    check(d->max_body == 0 || d->decoded <= d->max_body);
    check(rc != HTTP_PARSE_ERROR || d->status == 400 || d->status == 413);
    *out = b;
    return rc;
}

static void fuzz_body(const uint8_t *body, size_t n, size_t k) {
    uint64_t max = n % 2 ? 0 : n / 3; /* no limit, or a limit some inputs reach */
    http_chunked d0, d1;
    char *b0, *b1;
    int rc0 = decode(&d0, body, n, n, max, &b0);
    int rc1 = decode(&d1, body, n, k, max, &b1);
    check(rc0 == rc1 && d0.raw == d1.raw && d0.decoded == d1.decoded);
    check(rc0 != HTTP_PARSE_ERROR || d0.status == d1.status);
    check(memcmp(b0, b1, d0.decoded) == 0);
    if (rc0 == HTTP_PARSE_DONE) /* what follows the body is untouched */
        check(memcmp(b0 + d0.raw, body + d0.raw, n - d0.raw) == 0);
    free(b0);
    free(b1);
}

static void fuzz_head(const uint8_t *data, size_t size, size_t k, const http_limits *lim) {
    static http_request r0, r1;
    http_parser p0, p1;
    http_parser_init(&p0, lim);
    int rc0 = http_parse_head(&p0, &r0, (const char *)data, size);
    check(p0.scanned <= size);
    if (rc0 == HTTP_PARSE_DONE)
        check_request(&r0, data, size);
    if (rc0 == HTTP_PARSE_ERROR)
        check(p0.error != NULL && (p0.status == 400 || p0.status == 414 || p0.status == 431 ||
                                   p0.status == 501 || p0.status == 505 || p0.status == 417));

    http_parser_init(&p1, lim);
    int rc1 = parse_split(&p1, &r1, data, size, k);
    same_outcome(rc0, &p0, &r0, rc1, &p1, &r1);

    if (size <= 256) { /* one byte more at a time */
        http_parser_init(&p1, lim);
        rc1 = HTTP_PARSE_AGAIN;
        for (size_t n = 0; n <= size && rc1 == HTTP_PARSE_AGAIN; n++)
            rc1 = http_parse_head(&p1, &r1, (const char *)data, n);
        same_outcome(rc0, &p0, &r0, rc1, &p1, &r1);
        check(rc0 != HTTP_PARSE_DONE || http_parser_work(&p1) == http_parser_work(&p0));
    }
    check(http_parser_work(&p0) <= 2 * size + 16);

    if (rc0 == HTTP_PARSE_DONE && r0.chunked) {
        size_t n = size - r0.head_len;
        fuzz_body(data + r0.head_len, n, n ? k % (n + 1) : 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t k = size ? (data[size - 1] * 131u + data[size / 2] * 7u + size) % (size + 1) : 0;
    fuzz_head(data, size, k, NULL);
    http_limits small = {.max_head_bytes = 200, .max_target = 24};
    fuzz_head(data, size, k, &small);
    return 0;
}
