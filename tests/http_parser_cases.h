/* The table of requests for test_http_parser.c: valid ones with what the parser must report, and
 * invalid ones with the exact status they must get. Included once, by test_http_parser.c. */
#ifndef HTTP_PARSER_CASES_H
#define HTTP_PARSER_CASES_H

#include "http_parser.h"

typedef struct hp_hdr {
    const char *name;  /* looked up case-insensitively (first match) */
    const char *value; /* the trimmed value, exactly */
} hp_hdr;

typedef struct hp_case {
    const char *name;
    const char *req;
    size_t len;
    int status;                  /* 0: valid; otherwise the expected error status */
    size_t max_head, max_target; /* limits (0: defaults) */
    /* What a valid request must give. */
    http_method method;
    const char *mname;
    const char *path;
    const char *query; /* NULL: "" */
    int minor;
    size_t nheaders;
    bool keep_alive, chunked, has_length, expect;
    uint64_t cl;
    size_t tail;      /* bytes after the head (head_len = len - tail) */
    const char *host; /* NULL: no Host header */
    const char *ims;  /* NULL: no If-Modified-Since */
    hp_hdr hdr[3];
} hp_case;

#define REQ(s) .req = (s), .len = sizeof(s) - 1
#define BAD(nm, st, s)                                                                             \
    { .name = (nm), .status = (st), REQ(s) }
#define H11 " HTTP/1.1\r\nHost: h\r\n"
#define GET10(pth) .method = HTTP_M_GET, .mname = "GET", .path = (pth)
#define GET11(pth) GET10(pth), .minor = 1, .keep_alive = 1

static const hp_case cases[] = {
    /* ---- valid: request line ---- */
    {"simple", REQ("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), GET11("/"), .nheaders = 1, .host = "a",
     .hdr = {{"host", "a"}}},
    {"query", REQ("GET /p/a?x=1&y=2 HTTP/1.1\r\nHost: a\r\n\r\n"), GET11("/p/a"),
     .query = "x=1&y=2", .nheaders = 1, .host = "a"},
    {"second ? in query", REQ("GET /a?b?c HTTP/1.1\r\nHost: a\r\n\r\n"), GET11("/a"),
     .query = "b?c", .nheaders = 1, .host = "a"},
    {"empty query", REQ("GET /a? HTTP/1.1\r\nHost: a\r\n\r\n"), GET11("/a"), .nheaders = 1,
     .host = "a"},
    {"visible punctuation in target",
     REQ("GET /a%20b;c=d,e!$&'()*+~@:[]{}|\\^`\"<> HTTP/1.1\r\nHost: a\r\n\r\n"),
     GET11("/a%20b;c=d,e!$&'()*+~@:[]{}|\\^`\"<>"), .nheaders = 1, .host = "a"},
    {"1.0 without Host", REQ("GET /x HTTP/1.0\r\n\r\n"), .method = HTTP_M_GET, .mname = "GET",
     .path = "/x"},
    {"HEAD", REQ("HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"), .method = HTTP_M_HEAD, .mname = "HEAD",
     .path = "/h", .minor = 1, .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"PUT", REQ("PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab"), .method = HTTP_M_PUT,
     .mname = "PUT", .path = "/u", .minor = 1, .keep_alive = 1, .nheaders = 2, .host = "a",
     .has_length = 1, .cl = 2, .tail = 2},
    {"DELETE", REQ("DELETE /d HTTP/1.1\r\nHost: a\r\n\r\n"), .method = HTTP_M_DELETE,
     .mname = "DELETE", .path = "/d", .minor = 1, .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"PATCH", REQ("PATCH /p HTTP/1.1\r\nHost: a\r\n\r\n"), .method = HTTP_M_PATCH, .mname = "PATCH",
     .path = "/p", .minor = 1, .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"TRACE", REQ("TRACE /t HTTP/1.1\r\nHost: a\r\n\r\n"), .method = HTTP_M_TRACE, .mname = "TRACE",
     .path = "/t", .minor = 1, .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"OPTIONS origin", REQ("OPTIONS /o HTTP/1.1\r\nHost: a\r\n\r\n"), .method = HTTP_M_OPTIONS,
     .mname = "OPTIONS", .path = "/o", .minor = 1, .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"OPTIONS *", REQ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), .method = HTTP_M_OPTIONS,
     .mname = "OPTIONS", .path = "*", .minor = 1, .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"lower-case method is another token", REQ("get / HTTP/1.1\r\nHost: a\r\n\r\n"),
     .method = HTTP_M_OTHER, .mname = "get", .path = "/", .minor = 1, .keep_alive = 1,
     .nheaders = 1, .host = "a"},
    {"unknown method", REQ("PROPFIND /dav HTTP/1.1\r\nHost: a\r\n\r\n"), .method = HTTP_M_OTHER,
     .mname = "PROPFIND", .path = "/dav", .minor = 1, .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"method of all tchars", REQ("!#$%&'*+-.^_`|~09AZaz / HTTP/1.1\r\nHost: a\r\n\r\n"),
     .method = HTTP_M_OTHER, .mname = "!#$%&'*+-.^_`|~09AZaz", .path = "/", .minor = 1,
     .keep_alive = 1, .nheaders = 1, .host = "a"},
    {"absolute-form", REQ("GET http://example.com/a/b?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
     GET11("/a/b"), .query = "q=1", .nheaders = 1, .host = "example.com"},
    {"absolute-form without path", REQ("GET http://example.com HTTP/1.1\r\nHost: e\r\n\r\n"),
     GET11("/"), .nheaders = 1, .host = "e"},
    {"absolute-form query, no path", REQ("GET http://e.com?x=y HTTP/1.1\r\nHost: e\r\n\r\n"),
     GET11("/"), .query = "x=y", .nheaders = 1, .host = "e"},
    {"absolute-form https, port", REQ("GET https://h:8443/x HTTP/1.1\r\nHost: h:8443\r\n\r\n"),
     GET11("/x"), .nheaders = 1, .host = "h:8443"},
    {"absolute-form scheme case", REQ("GET HTTP://h/ HTTP/1.1\r\nHost: h\r\n\r\n"), GET11("/"),
     .nheaders = 1, .host = "h"},
    {"CONNECT authority-form", REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
     .method = HTTP_M_CONNECT, .mname = "CONNECT", .path = "", .minor = 1, .keep_alive = 1,
     .nheaders = 1, .host = "example.com"},
    {"CONNECT IPv6", REQ("CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
     .method = HTTP_M_CONNECT, .mname = "CONNECT", .path = "", .minor = 1, .keep_alive = 1,
     .nheaders = 1, .host = "[::1]:8080"},
    {"one leading empty line", REQ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), GET11("/"),
     .nheaders = 1, .host = "a"},
    {"four leading empty lines", REQ("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
     GET11("/"), .nheaders = 1, .host = "a"},
    {"pipelined: head_len stops at the head", REQ("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 H"),
     GET11("/1"), .nheaders = 1, .host = "a", .tail = 8},
    {"target of exactly max_target", REQ("GET /123456789 HTTP/1.1\r\nHost: a\r\n\r\n"),
     .max_target = 10, GET11("/123456789"), .nheaders = 1, .host = "a"},
    {"head of exactly max_head_bytes", REQ("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), .max_head = 27,
     GET11("/"), .nheaders = 1, .host = "a"},
    /* ---- valid: header fields ---- */
    {"OWS trimmed", REQ("GET / HTTP/1.1\r\nHost: \t a \t \r\nX-A:b\r\nX-B:  v  a  l  \r\n\r\n"),
     GET11("/"), .nheaders = 3, .host = "a", .hdr = {{"x-a", "b"}, {"X-B", "v  a  l"}}},
    {"empty values", REQ("GET / HTTP/1.1\r\nHost: a\r\nX-E:\r\nX-F: \t \r\n\r\n"), GET11("/"),
     .nheaders = 3, .host = "a", .hdr = {{"x-e", ""}, {"x-f", ""}}},
    {"empty Host", REQ("GET / HTTP/1.1\r\nHost:\r\n\r\n"), GET11("/"), .nheaders = 1, .host = ""},
    {"obs-text and tabs in value",
     REQ("GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\tb\xff\r\n\r\n"), GET11("/"), .nheaders = 2,
     .host = "a", .hdr = {{"x", "caf\xc3\xa9\tb\xff"}}},
    {"colons in value", REQ("GET / HTTP/1.1\r\nHost: a:80\r\nX: a:b: c\r\n\r\n"), GET11("/"),
     .nheaders = 2, .host = "a:80", .hdr = {{"X", "a:b: c"}}},
    {"header name of all tchars",
     REQ("GET / HTTP/1.1\r\nHost: a\r\n!#$%&'*+-.^_`|~09AZaz: v\r\n\r\n"), GET11("/"),
     .nheaders = 2, .host = "a", .hdr = {{"!#$%&'*+-.^_`|~09AZaz", "v"}}},
    {"names are case-insensitive", REQ("GET / HTTP/1.1\r\nhOsT: a\r\ncontent-LENGTH: 3\r\n\r\nabc"),
     GET11("/"), .nheaders = 2, .host = "a", .has_length = 1, .cl = 3, .tail = 3},
    {"If-Modified-Since",
     REQ("GET / HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: Sat, 29 Oct 1994 19:43:31 GMT\r\n\r\n"),
     GET11("/"), .nheaders = 2, .host = "a", .ims = "Sat, 29 Oct 1994 19:43:31 GMT"},
    {"first If-Modified-Since kept",
     REQ("GET / HTTP/1.1\r\nHost: a\r\nif-modified-since: x\r\nIf-Modified-Since: y\r\n\r\n"),
     GET11("/"), .nheaders = 3, .host = "a", .ims = "x"},
    /* ---- valid: Connection ---- */
    {"1.1 default keep-alive", REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"),
     GET11("/"), .nheaders = 2, .host = "a"},
    {"1.1 close", REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), GET10("/"),
     .minor = 1, .nheaders = 2, .host = "a"},
    {"1.1 close in a list", REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade , CLOSE\r\n\r\n"),
     GET10("/"), .minor = 1, .nheaders = 2, .host = "a"},
    {"1.1 other tokens", REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, closed\r\n\r\n"),
     GET11("/"), .nheaders = 2, .host = "a"},
    {"1.0 default close", REQ("GET / HTTP/1.0\r\nHost: a\r\n\r\n"), .method = HTTP_M_GET,
     .mname = "GET", .path = "/", .nheaders = 1, .host = "a"},
    {"1.0 keep-alive", REQ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
     .method = HTTP_M_GET, .mname = "GET", .path = "/", .nheaders = 1, .keep_alive = 1},
    {"1.0 close wins", REQ("GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n"),
     .method = HTTP_M_GET, .mname = "GET", .path = "/", .nheaders = 1},
    {"1.0 close wins across headers",
     REQ("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"),
     .method = HTTP_M_GET, .mname = "GET", .path = "/", .nheaders = 2},
    /* ---- valid: body framing and Expect ---- */
    {"Content-Length", REQ("POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/f", .minor = 1, .keep_alive = 1,
     .nheaders = 2, .host = "a", .has_length = 1, .cl = 5, .tail = 5},
    {"Content-Length 0", REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1,
     .nheaders = 2, .host = "a", .has_length = 1, .cl = 0},
    {"Content-Length list of equal values",
     REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5 ,5\r\n\r\n"), .method = HTTP_M_POST,
     .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1, .nheaders = 2, .host = "a",
     .has_length = 1, .cl = 5},
    {"Content-Length repeated, same value",
     REQ("POST / HTTP/1.1\r\nContent-Length: 7\r\nHost: a\r\nContent-Length: 7\r\n\r\n"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1,
     .nheaders = 3, .host = "a", .has_length = 1, .cl = 7},
    {"Content-Length leading zeros",
     REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n"), .method = HTTP_M_POST,
     .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1, .nheaders = 2, .host = "a",
     .has_length = 1, .cl = 7},
    {"Content-Length 2^62",
     REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4611686018427387904\r\n\r\n"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1,
     .nheaders = 2, .host = "a", .has_length = 1, .cl = (uint64_t)1 << 62},
    {"1.0 Content-Length", REQ("POST / HTTP/1.0\r\nContent-Length: 1\r\n\r\nx"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/", .nheaders = 1, .has_length = 1, .cl = 1,
     .tail = 1},
    {"chunked", REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1,
     .nheaders = 2, .host = "a", .chunked = 1, .tail = 5},
    {"chunked, any case", REQ("POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  ChUnKeD \r\n\r\n"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1,
     .nheaders = 2, .host = "a", .chunked = 1},
    {"chunked, empty list elements",
     REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked,\r\n\r\n"),
     .method = HTTP_M_POST, .mname = "POST", .path = "/", .minor = 1, .keep_alive = 1,
     .nheaders = 2, .host = "a", .chunked = 1},
    {"Expect 100-continue",
     REQ("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"),
     .method = HTTP_M_PUT, .mname = "PUT", .path = "/", .minor = 1, .keep_alive = 1, .nheaders = 3,
     .host = "a", .expect = 1, .has_length = 1, .cl = 9},
    {"Expect, any case", REQ("GET / HTTP/1.1\r\nHost: a\r\nexpect: 100-CONTINUE\r\n\r\n"),
     GET11("/"), .nheaders = 2, .host = "a", .expect = 1},
    {"Expect ignored in 1.0", REQ("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"),
     .method = HTTP_M_GET, .mname = "GET", .path = "/", .nheaders = 1},

    /* ---- invalid: line endings ---- */
    BAD("bare LF ends the request line", 400, "GET / HTTP/1.1\nHost: a\r\n\r\n"),
    BAD("bare LF ends a field line", 400, "GET / HTTP/1.1\r\nHost: a\n\r\n"),
    BAD("bare LF ends the head", 400, "GET / HTTP/1.1\r\nHost: a\r\n\n"),
    BAD("bare LF as a leading empty line", 400, "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("bare LF after the method", 400, "GET\n"),
    BAD("bare LF in the target", 400, "GET /a\nb HTTP/1.1\r\n\r\n"),
    BAD("bare LF in a header name", 400, "GET / HTTP/1.1\r\nHost\n: a\r\n\r\n"),
    BAD("bare LF in a value", 400, "GET / HTTP/1.1\r\nHost: a\nb\r\n\r\n"),
    BAD("bare CR ends the request line", 400, "GET / HTTP/1.1\rHost: a\r\n\r\n"),
    BAD("bare CR in a field line", 400, "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
    BAD("bare CR ends the head", 400, "GET / HTTP/1.1\r\nHost: a\r\n\rX"),
    BAD("bare CR as a leading line", 400, "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("five leading empty lines", 400, "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    /* ---- invalid: request line ---- */
    BAD("method with (", 400, "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("method with @", 400, "G@T / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("method with obs-text", 400, "G\xc3\xa9T / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("empty method", 400, " / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("HTAB after the method", 400, "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("two SP after the method", 400, "GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("two SP before the version", 400, "GET /  HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("SP after the version", 400, "GET / HTTP/1.1 \r\nHost: a\r\n\r\n"),
    BAD("no version", 400, "GET /\r\nHost: a\r\n\r\n"),
    BAD("CTL in the target", 400, "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("HTAB in the target", 400, "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("DEL in the target", 400, "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("obs-text in the target", 400, "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("NUL in the target", 400, "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("relative target", 400, "GET index.html HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("query-only target", 400, "GET ?x HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("asterisk with GET", 400, "GET *" H11 "\r\n"),
    BAD("asterisk with a suffix", 400, "OPTIONS *x" H11 "\r\n"),
    BAD("authority-form with GET", 400, "GET example.com:80" H11 "\r\n"),
    BAD("CONNECT with origin-form", 400, "CONNECT /" H11 "\r\n"),
    BAD("CONNECT with absolute-form", 400, "CONNECT http://h:80/" H11 "\r\n"),
    BAD("CONNECT without port", 400, "CONNECT example.com" H11 "\r\n"),
    BAD("CONNECT with empty port", 400, "CONNECT example.com:" H11 "\r\n"),
    BAD("CONNECT with empty host", 400, "CONNECT :443" H11 "\r\n"),
    BAD("CONNECT with bad port", 400, "CONNECT h:44a" H11 "\r\n"),
    BAD("CONNECT with userinfo", 400, "CONNECT u@h:443" H11 "\r\n"),
    BAD("absolute-form with empty authority", 400, "GET http:///x" H11 "\r\n"),
    BAD("absolute-form with another scheme", 400, "GET ftp://h/x" H11 "\r\n"),
    BAD("scheme alone", 400, "GET http:" H11 "\r\n"),
    {.name = "target over max_target",
     .status = 414,
     .max_target = 10,
     REQ("GET /1234567890 HTTP/1.1\r\nHost: a\r\n\r\n")},
    {.name = "head over max_head_bytes",
     .status = 431,
     .max_head = 26,
     REQ("GET / HTTP/1.1\r\nHost: a\r\n\r\n")},
    {.name = "leading empty lines count toward max_head_bytes",
     .status = 431,
     .max_head = 28,
     REQ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")},
    /* ---- invalid: version ---- */
    BAD("HTTP/2.0", 505, "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
    BAD("HTTP/1.2", 505, "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
    BAD("HTTP/0.9", 505, "GET / HTTP/0.9\r\n\r\n"),
    BAD("HTTP/3.0", 505, "GET / HTTP/3.0\r\nHost: a\r\n\r\n"),
    BAD("HTTP/9.9", 505, "GET / HTTP/9.9\r\n\r\n"),
    BAD("lower-case http", 400, "GET / http/1.1\r\nHost: a\r\n\r\n"),
    BAD("HTTPS/1.1", 400, "GET / HTTPS/1.1\r\nHost: a\r\n\r\n"),
    BAD("two minor digits", 400, "GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
    BAD("no dot", 400, "GET / HTTP/11\r\nHost: a\r\n\r\n"),
    BAD("no minor", 400, "GET / HTTP/1\r\nHost: a\r\n\r\n"),
    BAD("letter minor", 400, "GET / HTTP/1.x\r\nHost: a\r\n\r\n"),
    BAD("SP instead of /", 400, "GET / HTTP 1.1\r\nHost: a\r\n\r\n"),
    BAD("two major digits", 400, "GET / HTTP/10.1\r\nHost: a\r\n\r\n"),
    /* ---- invalid: header fields ---- */
    BAD("SP before colon", 400, "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
    BAD("HTAB before colon", 400, "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),
    BAD("empty name", 400, "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
    BAD("obs-fold with SP", 400, "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
    BAD("obs-fold with HTAB", 400, "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"),
    BAD("whitespace before the first field", 400, "GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
    BAD("name with @", 400, "GET / HTTP/1.1\r\nHost: a\r\nX@Y: b\r\n\r\n"),
    BAD("name with obs-text", 400, "GET / HTTP/1.1\r\nHost: a\r\nX\x80: b\r\n\r\n"),
    BAD("no colon", 400, "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
    BAD("NUL in value", 400, "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
    BAD("CTL in value", 400, "GET / HTTP/1.1\r\nHost: a\r\nX: a\x1b[0m\r\n\r\n"),
    BAD("DEL in value", 400, "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n"),
    /* ---- invalid: Content-Length ---- */
    BAD("Content-Length negative", 400, "POST /" H11 "Content-Length: -5\r\n\r\n"),
    BAD("Content-Length with +", 400, "POST /" H11 "Content-Length: +5\r\n\r\n"),
    BAD("Content-Length with SP inside", 400, "POST /" H11 "Content-Length: 5 5\r\n\r\n"),
    BAD("Content-Length in hex", 400, "POST /" H11 "Content-Length: 0x5\r\n\r\n"),
    BAD("Content-Length with a letter", 400, "POST /" H11 "Content-Length: 5a\r\n\r\n"),
    BAD("Content-Length empty", 400, "POST /" H11 "Content-Length:  \r\n\r\n"),
    BAD("Content-Length list, different", 400, "POST /" H11 "Content-Length: 5, 6\r\n\r\n"),
    BAD("Content-Length list, empty element", 400, "POST /" H11 "Content-Length: 5,\r\n\r\n"),
    BAD("Content-Length list of nothing", 400, "POST /" H11 "Content-Length: ,\r\n\r\n"),
    BAD("Content-Length repeated, different", 400,
        "POST /" H11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"),
    BAD("Content-Length over 2^62", 400,
        "POST /" H11 "Content-Length: 4611686018427387905\r\n\r\n"),
    BAD("Content-Length over 2^64", 400,
        "POST /" H11 "Content-Length: 18446744073709551616\r\n\r\n"),
    BAD("Content-Length of 30 digits", 400,
        "POST /" H11 "Content-Length: 999999999999999999999999999999\r\n\r\n"),
    /* ---- invalid: Transfer-Encoding ---- */
    BAD("TE gzip", 501, "POST /" H11 "Transfer-Encoding: gzip\r\n\r\n"),
    BAD("TE identity", 501, "POST /" H11 "Transfer-Encoding: identity\r\n\r\n"),
    BAD("TE gzip, chunked", 501, "POST /" H11 "Transfer-Encoding: gzip, chunked\r\n\r\n"),
    BAD("TE chunked, gzip", 501, "POST /" H11 "Transfer-Encoding: chunked, gzip\r\n\r\n"),
    BAD("TE chunked, chunked", 501, "POST /" H11 "Transfer-Encoding: chunked, chunked\r\n\r\n"),
    BAD("TE in two headers", 501,
        "POST /" H11 "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
    BAD("TE chunked twice in two headers", 501,
        "POST /" H11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
    BAD("TE empty", 400, "POST /" H11 "Transfer-Encoding: \r\n\r\n"),
    BAD("TE then Content-Length", 400,
        "POST /" H11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
    BAD("Content-Length then TE", 400,
        "POST /" H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
    BAD("TE in HTTP/1.0", 400, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
    /* ---- invalid: Host ---- */
    BAD("1.1 without Host", 400, "GET / HTTP/1.1\r\nX: a\r\n\r\n"),
    BAD("1.1 without any header", 400, "GET / HTTP/1.1\r\n\r\n"),
    BAD("two Host headers", 400, "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
    BAD("two Host headers in 1.0", 400, "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
    BAD("Host with a space", 400, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
    BAD("Host with a slash", 400, "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    BAD("Host with userinfo", 400, "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n"),
    BAD("Host with obs-text", 400, "GET / HTTP/1.0\r\nHost: caf\xc3\xa9\r\n\r\n"),
    /* ---- invalid: Expect ---- */
    BAD("Expect something else", 417, "GET /" H11 "Expect: the-unexpected\r\n\r\n"),
    BAD("Expect in a list", 417, "GET /" H11 "Expect: 100-continue, foo\r\n\r\n"),
    BAD("Expect empty", 417, "GET /" H11 "Expect:\r\n\r\n"),
    BAD("Expect in 1.0", 417, "GET / HTTP/1.0\r\nExpect: 200-ok\r\n\r\n"),
};

#define NCASES (sizeof cases / sizeof cases[0])

/* ---- chunked bodies ---- */

typedef struct hc_case {
    const char *name;
    const char *req; /* the raw body */
    size_t len;
    uint64_t max_body;   /* 0: no limit */
    int rc;              /* what decoding all of raw gives */
    int status;          /* on HTTP_PARSE_ERROR */
    const char *decoded; /* on HTTP_PARSE_DONE (and so far, on AGAIN) */
    size_t tail;         /* on HTTP_PARSE_DONE: raw bytes after the body */
} hc_case;

#define C_OK(nm, s, dec, ...)                                                                      \
    { (nm), REQ(s), .rc = HTTP_PARSE_DONE, .decoded = (dec), __VA_ARGS__ }
#define C_BAD(nm, st, s, ...)                                                                      \
    { (nm), REQ(s), .rc = HTTP_PARSE_ERROR, .status = (st), __VA_ARGS__ }

static const hc_case chunk_cases[] = {
    C_OK("one chunk", "5\r\nhello\r\n0\r\n\r\n", "hello"),
    C_OK("two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
    C_OK("zero-length body", "0\r\n\r\n", ""),
    C_OK("hex digits of both cases", "a\r\n0123456789\r\nB\r\nabcdefghijk\r\n0\r\n\r\n",
         "0123456789abcdefghijk"),
    C_OK("leading zeros", "005\r\nhello\r\n000\r\n\r\n", "hello"),
    C_OK("one-byte chunks", "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", "abc"),
    C_OK("payload with CRLF inside", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "\r\n\r\n"),
    C_OK("extensions", "5;foo=bar\r\nhello\r\n0;last\r\n\r\n", "hello"),
    C_OK("extension with BWS and quotes", "5 \t; a = \"x y\"\r\nhello\r\n0\r\n\r\n", "hello"),
    C_OK("extension with obs-text", "5;n=\xc3\xa9\r\nhello\r\n0\r\n\r\n", "hello"),
    C_OK("trailers", "5\r\nhello\r\n0\r\nX-T: a\r\nY:b \r\nZ:\r\n\r\n", "hello"),
    C_OK("the next request follows", "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n", "abc", .tail = 16),
    C_OK("max_body reached exactly", "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", "helloworld",
         .max_body = 10),
    C_OK("16 hex digits do not overflow", "0000000000000003\r\nabc\r\n0\r\n\r\n", "abc"),
    {"incomplete: still in a payload", REQ("8\r\nhel"), .rc = HTTP_PARSE_AGAIN, .decoded = "hel"},
    {"incomplete: 2^64-1 bytes announced", REQ("ffffffffffffffff\r\nab"), .rc = HTTP_PARSE_AGAIN,
     .decoded = "ab"},
    C_BAD("payload not followed by CRLF", 400, "5\r\nhelloX\r\n0\r\n\r\n"),
    C_BAD("payload followed by CR alone", 400, "5\r\nhello\rX0\r\n\r\n"),
    C_BAD("payload followed by another byte and LF", 400, "5\r\nhelloX\n0\r\n\r\n"),
    C_BAD("payload followed by bare LF", 400, "5\r\nhello\n0\r\n\r\n"),
    C_BAD("payload longer than announced", 400, "3\r\nhello\r\n0\r\n\r\n"),
    C_BAD("bare LF after the size", 400, "5\nhello\r\n0\r\n\r\n"),
    C_BAD("bare CR after the size", 400, "5\rhello\r\n0\r\n\r\n"),
    C_BAD("bare LF after an extension", 400, "5;a=b\nhello\r\n0\r\n\r\n"),
    C_BAD("CTL in an extension", 400, "5;a=\x01\r\nhello\r\n0\r\n\r\n"),
    C_BAD("empty size", 400, "\r\nhello\r\n0\r\n\r\n"),
    C_BAD("size not hex", 400, "g\r\n"),
    C_BAD("size with a sign", 400, "+5\r\nhello\r\n0\r\n\r\n"),
    C_BAD("size with 0x", 400, "0x5\r\nhello\r\n0\r\n\r\n"),
    C_BAD("SP before the size", 400, " 5\r\nhello\r\n0\r\n\r\n"),
    C_BAD("whitespace after the size without ;", 400, "5 \r\nhello\r\n0\r\n\r\n"),
    C_BAD("size overflows 64 bits", 400, "10000000000000000\r\n"),
    C_BAD("size over max_body", 413, "6\r\nhello!\r\n0\r\n\r\n", .max_body = 5),
    C_BAD("sum over max_body", 413, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", .max_body = 10),
    C_BAD("huge size over max_body", 413, "fffffffffff\r\n", .max_body = 1000),
    C_BAD("trailer folded", 400, "0\r\nX: a\r\n b\r\n\r\n"),
    C_BAD("trailer without colon", 400, "0\r\nX\r\n\r\n"),
    C_BAD("trailer with SP before colon", 400, "0\r\nX : a\r\n\r\n"),
    C_BAD("trailer with empty name", 400, "0\r\n: a\r\n\r\n"),
    C_BAD("trailer with bare LF", 400, "0\r\nX: a\n\r\n"),
    C_BAD("trailer with CTL", 400, "0\r\nX: a\x7f\r\n\r\n"),
    C_BAD("last line with bare LF", 400, "0\r\n\n"),
    C_BAD("last line with bare CR", 400, "0\r\n\rX"),
};

#define NCHUNK_CASES (sizeof chunk_cases / sizeof chunk_cases[0])

#endif
