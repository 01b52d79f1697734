/* libFuzzer target for the chunked body decoder of the HTTP-lite parser (http_chunked_decode in
 * apps/http-lite/http_parser.c).
 *
 * Input: one byte that picks the body limit (max_body), then the body. The body is decoded three
 * ways: at once, in two calls split at an offset derived from the data, and one byte more per
 * call. All three must end with the same result, the same raw and decoded counts, the same
 * status and the same decoded bytes; the byte-wise run must stop at exactly the byte the result
 * depends on (the final LF, or the first unacceptable byte: the parser promises errors are found
 * there). Every outcome is also compared, field by field, with a small reference decoder written
 * here from RFC 9112 §7.1 (and the choices listed at the top of http_parser.c) in a different
 * style: a recursive-descent pass over the whole input into a separate output buffer. Any
 * disagreement abort()s. */
#include "http_parser.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define HAVE_ASAN 1
#endif
#endif
#ifndef HAVE_ASAN
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#endif

/* Aborts (what libFuzzer reports) with the failed condition, so a reproducer says which check. */
#define check(ok) ((ok) ? (void)0 : check_failed(__LINE__, #ok))

static void check_failed(int line, const char *what) {
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    abort();
}

/* ---- the reference decoder ---- */

typedef struct outcome {
    int rc;
    size_t raw, decoded;
    int status; /* meaningful on HTTP_PARSE_ERROR */
} outcome;

typedef struct ref {
    const uint8_t *s;
    size_t n, i;
    uint8_t *out;
    size_t outn;
    uint64_t max;
} ref;

/* Control flow of the reference: a step either goes on (OK) or ends the decode. */
enum { OK = 1, END_AGAIN, END_ERROR, END_413 };

static bool is_hex(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static unsigned hex_of(uint8_t c) {
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

/* RFC 9110 §5.6.2 tchar, spelled out rather than as a bit table. */
static bool is_tchar(uint8_t c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_ws(uint8_t c) { return c == ' ' || c == '\t'; }

/* HTAB, SP, VCHAR, obs-text: what a field value and a quoted-string may hold. */
static bool is_text(uint8_t c) { return c == '\t' || c == ' ' || (c > 0x20 && c != 0x7f); }

/* True when there is a byte at r->i; else the decode needs more input. */
static bool have(const ref *r) { return r->i < r->n; }

#define NEED(r)                                                                                    \
    do {                                                                                           \
        if (!have(r))                                                                              \
            return END_AGAIN;                                                                      \
    } while (0)

static int skip_ws(ref *r) {
    for (;;) {
        NEED(r);
        if (!is_ws(r->s[r->i]))
            return OK;
        r->i++;
    }
}

static int expect_byte(ref *r, uint8_t c) {
    NEED(r);
    if (r->s[r->i] != c)
        return END_ERROR;
    r->i++;
    return OK;
}

static int token(ref *r) {
    NEED(r);
    if (!is_tchar(r->s[r->i]))
        return END_ERROR;
    do {
        r->i++;
        NEED(r);
    } while (is_tchar(r->s[r->i]));
    return OK;
}

/* quoted-string, at its opening DQUOTE. */
static int quoted(ref *r) {
    r->i++;
    for (;;) {
        NEED(r);
        uint8_t c = r->s[r->i];
        if (c == '"') {
            r->i++;
            return OK;
        }
        if (c == '\\') {
            r->i++;
            NEED(r);
            if (!is_text(r->s[r->i]))
                return END_ERROR;
        } else if (!is_text(c)) {
            return END_ERROR;
        }
        r->i++;
    }
}

/* What follows a chunk-size: *( BWS ";" BWS name [ BWS "=" BWS value ] ) CRLF. No whitespace may
 * come before the CR (the choice http_parser.c makes), so whitespace must lead to ';' or '='. */
static int size_line_rest(ref *r) {
    int rc;
    for (;;) {
        NEED(r);
        uint8_t c = r->s[r->i];
        if (c == '\r')
            break;
        if (is_ws(c) && (rc = skip_ws(r)) != OK)
            return rc;
        if ((rc = expect_byte(r, ';')) != OK)
            return rc;
        if ((rc = skip_ws(r)) != OK || (rc = token(r)) != OK)
            return rc;
        /* After the name: '=', whitespace then '=' or ';', or the end of this extension. */
        c = r->s[r->i];
        if (is_ws(c)) {
            if ((rc = skip_ws(r)) != OK)
                return rc;
            c = r->s[r->i];
            if (c == ';')
                continue;
            if (c != '=')
                return END_ERROR;
        }
        if (c != '=')
            continue; /* the loop head takes the CR, the ';' or refuses the byte */
        r->i++;
        if ((rc = skip_ws(r)) != OK)
            return rc;
        if (r->s[r->i] == '"')
            rc = quoted(r);
        else
            rc = token(r);
        if (rc != OK)
            return rc;
    }
    r->i++;
    return expect_byte(r, '\n');
}

/* 1*HEXDIG with any number of leading zeros; the value must fit 64 bits, so the 17th significant
 * digit is refused where it stands. The limit is judged at the byte after the digits. */
static int chunk_size(ref *r, uint64_t *size) {
    NEED(r);
    if (!is_hex(r->s[r->i]))
        return END_ERROR;
    uint64_t v = 0;
    int significant = 0;
    while (have(r) && is_hex(r->s[r->i])) {
        unsigned d = hex_of(r->s[r->i]);
        if (significant > 0 || d != 0)
            significant++;
        if (significant > 16)
            return END_ERROR;
        v = v * 16 + d;
        r->i++;
    }
    NEED(r);
    if (r->max != 0 && (r->outn > r->max || v > r->max - r->outn))
        return END_413;
    *size = v;
    return OK;
}

static int chunk_data(ref *r, uint64_t size) {
    while (size > 0) {
        NEED(r);
        r->out[r->outn++] = r->s[r->i++];
        size--;
    }
    int rc = expect_byte(r, '\r');
    return rc != OK ? rc : expect_byte(r, '\n');
}

/* *( field-name ":" field-value CRLF ) CRLF; values are not interpreted. */
static int trailers(ref *r) {
    int rc;
    for (;;) {
        NEED(r);
        if (r->s[r->i] == '\r')
            break;
        if ((rc = token(r)) != OK || (rc = expect_byte(r, ':')) != OK)
            return rc;
        for (;;) {
            NEED(r);
            if (!is_text(r->s[r->i]))
                break;
            r->i++;
        }
        if ((rc = expect_byte(r, '\r')) != OK || (rc = expect_byte(r, '\n')) != OK)
            return rc;
    }
    r->i++;
    return expect_byte(r, '\n');
}

static int body(ref *r) {
    for (;;) {
        uint64_t size;
        int rc = chunk_size(r, &size);
        if (rc == OK)
            rc = size_line_rest(r);
        if (rc != OK)
            return rc;
        if (size == 0)
            return trailers(r);
        if ((rc = chunk_data(r, size)) != OK)
            return rc;
    }
}

/* out must have room for n bytes. */
static outcome ref_decode(const uint8_t *s, size_t n, uint64_t max, uint8_t *out) {
    ref r = {.s = s, .n = n, .out = out, .max = max};
    int rc = body(&r);
    outcome o = {.decoded = r.outn};
    if (rc == OK) {
        o.rc = HTTP_PARSE_DONE;
        o.raw = r.i;
    } else if (rc == END_AGAIN) {
        o.rc = HTTP_PARSE_AGAIN;
        o.raw = n; /* everything available was examined */
    } else {
        o.rc = HTTP_PARSE_ERROR;
        o.raw = r.i; /* the byte that made the input unacceptable */
        o.status = rc == END_413 ? 413 : 400;
    }
    return o;
}

/* ---- the decoder under test ---- */

static outcome outcome_of(const http_chunked *d, int rc) {
    return (outcome){.rc = rc,
                     .raw = d->raw,
                     .decoded = d->decoded,
                     .status = rc == HTTP_PARSE_ERROR ? d->status : 0};
}

static bool same(outcome a, outcome b) {
    return a.rc == b.rc && a.raw == b.raw && a.decoded == b.decoded && a.status == b.status;
}

/* What must hold after any call that returned rc for len bytes. */
static void sane(const http_chunked *d, int rc, size_t len, uint64_t max) {
    check(rc == HTTP_PARSE_DONE || rc == HTTP_PARSE_AGAIN || rc == HTTP_PARSE_ERROR);
    check(d->decoded <= d->raw && d->raw <= len);
    check(max == 0 || d->decoded <= max);
    check(rc != HTTP_PARSE_AGAIN || d->raw == len);
    check(rc != HTTP_PARSE_DONE || d->raw >= 5); /* "0\r\n\r\n" at least */
    check(rc != HTTP_PARSE_ERROR || d->status == 400 || d->status == 413);
}

/* At once, in a buffer of exactly n bytes (so ASan sees any read past the end). */
static outcome at_once(const uint8_t *s, size_t n, uint64_t max, char **out) {
    char *b = malloc(n ? n : 1);
    check(b != NULL);
    memcpy(b, s, n);
    http_chunked d;
    http_chunked_init(&d, max);
    int rc = http_chunked_decode(&d, b, n);
    sane(&d, rc, n, max);
    outcome o = outcome_of(&d, rc);
    /* After DONE or ERROR the decoder is settled: a repeated call changes nothing. */
    if (rc != HTTP_PARSE_AGAIN) {
        check(http_chunked_decode(&d, b, n) == rc);
        check(same(outcome_of(&d, rc), o));
    }
    *out = b;
    return o;
}

/* Two calls: s[0..k) in a buffer of exactly k bytes, then the buffer grown to n (the decoded bytes
 * at its front move along with realloc). It grows even when the first call settled, so the bytes
 * after the body can be compared with the input in every run. */
static outcome split(const uint8_t *s, size_t n, size_t k, uint64_t max, char **out) {
    char *b = malloc(k ? k : 1);
    check(b != NULL);
    memcpy(b, s, k);
    http_chunked d;
    http_chunked_init(&d, max);
    int rc = http_chunked_decode(&d, b, k);
    sane(&d, rc, k, max);
    b = realloc(b, n ? n : 1);
    check(b != NULL);
    memcpy(b + k, s + k, n - k);
    if (rc == HTTP_PARSE_AGAIN && k < n) {
        rc = http_chunked_decode(&d, b, n);
        sane(&d, rc, n, max);
    }
    *out = b;
    return outcome_of(&d, rc);
}

/* One more byte per call, in one buffer whose bytes not yet given are poisoned: a read past the
 * current length is an ASan report without a reallocation per byte. */
static outcome bytewise(const uint8_t *s, size_t n, uint64_t max, char **out, size_t *calls) {
    char *b = malloc(n ? n : 1);
    check(b != NULL);
    memcpy(b, s, n);
    ASAN_POISON_MEMORY_REGION(b, n);
    http_chunked d;
    http_chunked_init(&d, max);
    int rc = HTTP_PARSE_AGAIN;
    size_t len = 0;
    do {
        ASAN_UNPOISON_MEMORY_REGION(b, len);
        rc = http_chunked_decode(&d, b, len);
        sane(&d, rc, len, max);
    } while (rc == HTTP_PARSE_AGAIN && len++ < n);
    ASAN_UNPOISON_MEMORY_REGION(b, n);
    *calls = len;
    *out = b;
    return outcome_of(&d, rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    /* Limits around the sizes small inputs reach, and none at all. */
    uint64_t max = data[0] < 0x80 ? 0 : (uint64_t)(data[0] - 0x80) * 3;
    const uint8_t *s = data + 1;
    size_t n = size - 1;
    size_t k = n ? (data[size - 1] * 131u + data[size / 2] * 7u + n) % (n + 1) : 0;

    uint8_t *want = malloc(n ? n : 1);
    check(want != NULL);
    outcome r = ref_decode(s, n, max, want);

    char *b0, *b1, *b2;
    size_t calls;
    outcome o0 = at_once(s, n, max, &b0);
    outcome o1 = split(s, n, k, max, &b1);
    outcome o2 = bytewise(s, n, max, &b2, &calls);
    check(same(o0, r) && same(o1, r) && same(o2, r));
    /* The byte-wise run stopped at the byte that settled the result: the final LF (raw counts
     * it), or the unacceptable byte (raw is its offset). */
    if (r.rc == HTTP_PARSE_DONE)
        check(calls == r.raw);
    if (r.rc == HTTP_PARSE_ERROR)
        check(calls == r.raw + 1);

    check(memcmp(b0, want, r.decoded) == 0);
    check(memcmp(b1, want, r.decoded) == 0);
    check(memcmp(b2, want, r.decoded) == 0);
    /* Bytes past the body are the next request's: never touched. */
    if (r.rc == HTTP_PARSE_DONE) {
        check(memcmp(b0 + r.raw, s + r.raw, n - r.raw) == 0);
        check(memcmp(b1 + r.raw, s + r.raw, n - r.raw) == 0);
        check(memcmp(b2 + r.raw, s + r.raw, n - r.raw) == 0);
    }
    free(b0);
    free(b1);
    free(b2);
    free(want);
    return 0;
}
