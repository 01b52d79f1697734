/* The PROXY protocol header parser (src/tcp/proxy_header.c): a table of good and bad v1 and v2
 * headers (IPv4, IPv6, UNKNOWN, LOCAL, UNSPEC, unix), each parsed whole, followed by request
 * bytes, and cut at every offset: a good header's every prefix asks for more and never misreads,
 * a bad one is refused at the latest once it is whole. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_header.h"
#include "testutil.h"

#define SIG "\r\n\r\n\0\r\nQUIT\n"

struct good {
    const char *name;
    const char *bytes;
    size_t len;
    bool local;
    const char *src, *dst; /* as rx_addr_format writes them; NULL when local */
};

#define TEXT(s) s, sizeof(s) - 1

static const struct good goods[] = {
    {"v1 tcp4", TEXT("PROXY TCP4 192.0.2.1 198.51.100.7 51234 8080\r\n"), false, "192.0.2.1:51234",
     "198.51.100.7:8080"},
    {"v1 tcp6", TEXT("PROXY TCP6 2001:db8::1 ::1 65535 0\r\n"), false, "[2001:db8::1]:65535",
     "[::1]:0"},
    {"v1 longest",
     TEXT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:"
          "ffff 65535 65535\r\n"),
     false, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
     "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"},
    {"v1 unknown", TEXT("PROXY UNKNOWN\r\n"), true, NULL, NULL},
    /* 105 characters and the CRLF: v1's longest. */
    {"v1 107 bytes",
     TEXT("PROXY UNKNOWN "
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"),
     true, NULL, NULL},
    {"v1 unknown with addresses", TEXT("PROXY UNKNOWN ffff:f::1 ::2 1 2\r\n"), true, NULL, NULL},
    {"v2 proxy tcp4", TEXT(SIG "\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90"),
     false, "192.0.2.1:51234", "198.51.100.7:8080"},
    {"v2 proxy tcp4 with a TLV",
     TEXT(SIG "\x21\x11\x00\x13\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90"
              "\x04\x00\x04"
              "abcd"),
     false, "192.0.2.1:51234", "198.51.100.7:8080"},
    {"v2 proxy tcp6",
     TEXT(SIG "\x21\x21\x00\x24"
              "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
              "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01"
              "\xff\xff\x00\x50"),
     false, "[2001:db8::1]:65535", "[::1]:80"},
    {"v2 local", TEXT(SIG "\x20\x00\x00\x00"), true, NULL, NULL},
    {"v2 local with addresses",
     TEXT(SIG "\x20\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90"), true, NULL,
     NULL},
    {"v2 proxy unspec", TEXT(SIG "\x21\x00\x00\x00"), true, NULL, NULL},
};

struct bad {
    const char *name;
    const char *bytes;
    size_t len;
};

static const struct bad bads[] = {
    {"no signature", TEXT("GET / HTTP/1.1\r\n\r\n")},
    {"lower case", TEXT("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n")},
    {"v1 unknown protocol", TEXT("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n")},
    {"v1 tcp4 with an IPv6 address", TEXT("PROXY TCP4 ::1 5.6.7.8 1 2\r\n")},
    {"v1 tcp6 with an IPv4 address", TEXT("PROXY TCP6 1.2.3.4 ::1 1 2\r\n")},
    {"v1 two spaces", TEXT("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n")},
    {"v1 trailing space", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n")},
    {"v1 a field missing", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n")},
    {"v1 a field too many", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n")},
    {"v1 port too big", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n")},
    {"v1 port with a leading zero", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n")},
    {"v1 port with a sign", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n")},
    {"v1 bad address", TEXT("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n")},
    {"v1 LF alone", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")},
    {"v1 CR alone", TEXT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX")},
    {"v1 NUL", TEXT("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n")},
    /* 106 characters and the CRLF: one byte over v1's 107. */
    {"v1 one byte too long", TEXT("PROXY UNKNOWN "
                                  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                                  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n")},
    {"v1 empty", TEXT("PROXY \r\n")},
    {"v2 version 1", TEXT(SIG "\x11\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 command 2", TEXT(SIG "\x22\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 family 4", TEXT(SIG "\x21\x41\x00\x00")},
    {"v2 udp", TEXT(SIG "\x21\x12\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 tcp4 too short", TEXT(SIG "\x21\x11\x00\x08\xc0\x00\x02\x01\xc6\x33\x64\x07")},
    {"v2 tcp6 too short",
     TEXT(SIG "\x21\x21\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x07\xc8\x22\x1f\x90")},
    {"v2 over the size limit", TEXT(SIG "\x21\x11\xff\xff")},
    {"v2 signature broken", TEXT("\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00")},
};

static const char tail[] = "GET / HTTP/1.1\r\n\r\n";

static void check_good(const struct good *g, const rx_proxy_header *h) {
    ck_assert_msg(h->local == g->local, "%s: local %d", g->name, h->local);
    if (g->local)
        return;
    char s[RX_ADDR_STRLEN], d[RX_ADDR_STRLEN];
    ck_assert_int_gt(rx_addr_format(&h->src, s, sizeof(s)), 0);
    ck_assert_int_gt(rx_addr_format(&h->dst, d, sizeof(d)), 0);
    ck_assert_msg(!strcmp(s, g->src) && !strcmp(d, g->dst), "%s: %s -> %s", g->name, s, d);
}

START_TEST(test_good_headers) {
    const struct good *g = &goods[_i];
    char buf[RX_PROXY_HEADER_MAX + sizeof(tail)];
    memcpy(buf, g->bytes, g->len);
    memcpy(buf + g->len, tail, sizeof(tail) - 1);
    rx_proxy_header h;
    /* Whole, and with the request behind it: the header's length, not a byte more. */
    ck_assert_int_eq(rx_proxy_header_parse(buf, g->len, &h), (int)g->len);
    check_good(g, &h);
    ck_assert_int_eq(rx_proxy_header_parse(buf, g->len + sizeof(tail) - 1, &h), (int)g->len);
    check_good(g, &h);
    /* Cut anywhere before its end: more is needed, whatever the cut. */
    for (size_t cut = 0; cut < g->len; cut++) {
        char *part = malloc(cut ? cut : 1); /* exactly cut bytes: ASan sees a read past them */
        memcpy(part, buf, cut);
        ck_assert_msg(rx_proxy_header_parse(part, cut, &h) == 0, "%s cut at %zu", g->name, cut);
        free(part);
    }
}
END_TEST

START_TEST(test_bad_headers) {
    const struct bad *b = &bads[_i];
    rx_proxy_header h;
    ck_assert_msg(rx_proxy_header_parse(b->bytes, b->len, &h) == -EPROTO, "%s", b->name);
    for (size_t cut = 0; cut < b->len; cut++) {
        char *part = malloc(cut ? cut : 1);
        memcpy(part, b->bytes, cut);
        int rc = rx_proxy_header_parse(part, cut, &h);
        ck_assert_msg(rc == 0 || rc == -EPROTO, "%s cut at %zu: %d", b->name, cut, rc);
        free(part);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("proxy_header");
    TCase *tc = tu_tcase(s, "parse", 30);
    tcase_add_loop_test(tc, test_good_headers, 0, (int)(sizeof(goods) / sizeof(goods[0])));
    tcase_add_loop_test(tc, test_bad_headers, 0, (int)(sizeof(bads) / sizeof(bads[0])));
    return tu_main(s);
}
