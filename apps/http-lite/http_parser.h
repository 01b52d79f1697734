/* An incremental, zero-copy HTTP/1.x request parser: request line and header section, plus a
 * chunked body decoder. Results are offsets into the caller's buffer, so they stay valid when the
 * buffer is moved or grown between calls (the request must stay at offset 0). Lines must end in
 * CRLF: a bare LF or CR anywhere is a 400 (see the choices at the top of http_parser.c). */
#ifndef HTTP_PARSER_H
#define HTTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 64

/* A view of bytes [off, off + len) of the buffer given to http_parse_head. */
typedef struct http_span {
    uint32_t off;
    uint32_t len;
} http_span;

typedef enum http_method {
    HTTP_M_OTHER = 0, /* a valid token we do not know */
    HTTP_M_GET,
    HTTP_M_HEAD,
    HTTP_M_POST,
    HTTP_M_PUT,
    HTTP_M_DELETE,
    HTTP_M_OPTIONS,
    HTTP_M_PATCH,
    HTTP_M_TRACE,
    HTTP_M_CONNECT,
} http_method;

typedef struct http_header {
    http_span name;  /* token, as sent (compare case-insensitively) */
    http_span value; /* leading and trailing whitespace trimmed */
} http_header;

typedef struct http_request {
    http_method method;
    http_span method_name;
    http_span target;  /* the request-target as sent */
    http_span path;    /* origin-form path (from an absolute-form target too), without the query */
    http_span query;   /* after '?', empty when none */
    int version_minor; /* HTTP/1.<minor>: 0 or 1 */
    size_t nheaders;
    http_header headers[HTTP_MAX_HEADERS];
    size_t head_len; /* bytes of request line + headers + the final empty line */

    /* Semantics the server needs, derived while parsing. */
    bool keep_alive; /* 1.1 without "Connection: close", or 1.0 with "keep-alive" */
    bool chunked;    /* Transfer-Encoding: chunked */
    bool has_length; /* Content-Length present */
    uint64_t content_length;
    bool expect_continue; /* Expect: 100-continue */
    http_span host;       /* the Host header value, when present */
    bool if_modified_since;
    http_span if_modified_since_value;
} http_request;

typedef struct http_limits {
    size_t max_head_bytes; /* request line + headers; over it: 431 (0: 16384) */
    size_t max_target;     /* request-target length; over it: 414 (0: 8192) */
} http_limits;

/* Resumable state; zero it (or http_parser_init) before each request. */
typedef struct http_parser {
    http_limits limits;
    size_t scanned; /* bytes already scanned, so a request arriving in pieces costs O(n) */
    int state;
    int status;        /* on HTTP_PARSE_ERROR: the response status (400, 414, 431, 501, 505, 417) */
    const char *error; /* on HTTP_PARSE_ERROR: a short static reason, for logs and bodies */
    unsigned flags;    /* private: Connection tokens seen so far */
    size_t work;       /* bytes examined so far, all calls included (see http_parser_work) */
} http_parser;

enum {
    HTTP_PARSE_DONE = 0,   /* the head is complete: req is filled, head_len bytes belong to it */
    HTTP_PARSE_AGAIN = -1, /* incomplete: call again with the same bytes plus more */
    HTTP_PARSE_ERROR = -2, /* malformed or unacceptable: p->status says how to answer */
};

void http_parser_init(http_parser *p, const http_limits *limits);

/* Parses the head of the request at buf[0..len). Call again with a longer buffer after
 * HTTP_PARSE_AGAIN; work already done is not repeated. req is filled in as the bytes arrive:
 * pass the same req to every call for one request (the first call, p->scanned == 0, resets it);
 * its fields are meaningful once HTTP_PARSE_DONE is returned. After DONE or ERROR, further calls
 * return the same result. */
int http_parse_head(http_parser *p, http_request *req, const char *buf, size_t len);

/* Bytes the parser has examined for this request so far (each input byte once, plus one more
 * read of each field value and of the request-target when they are interpreted): lets tests
 * check that a request arriving in pieces costs O(n). */
size_t http_parser_work(const http_parser *p);

/* Compares a span of buf with a string, ignoring ASCII case. */
bool http_span_ieq(const char *buf, http_span s, const char *str);

/* Decoder of a chunked body, in place: chunk payloads are moved together at the front of the
 * body region, so the decoded body is contiguous. */
typedef struct http_chunked {
    size_t raw;     /* bytes of the body region consumed (sizes, payloads, CRLFs, trailers) */
    size_t decoded; /* decoded payload bytes, at the start of the body region */
    uint64_t left;  /* payload bytes left in the current chunk */
    int state;
    uint64_t max_body; /* over it: error with status 413 (0: no limit) */
    int status;        /* on HTTP_PARSE_ERROR: 400 or 413 */
} http_chunked;

void http_chunked_init(http_chunked *d, uint64_t max_body);

/* Decodes body[d->raw..len) in place. Returns HTTP_PARSE_DONE when the last chunk and the
 * trailers have been read (d->raw bytes of the region belong to the body, d->decoded bytes at
 * body[0] are the payload), HTTP_PARSE_AGAIN for more, HTTP_PARSE_ERROR (d->status). */
int http_chunked_decode(http_chunked *d, char *body, size_t len);

#endif
