/* PROXY protocol headers, versions 1 (a text line) and 2 (binary), after HAProxy's
 * specification (proxy-protocol.txt). Choices where it leaves room: a v1 line is plain printable
 * ASCII with single spaces, ports are decimal without leading zeros; a v2 header carries TCP over
 * IPv4 or IPv6 (other transports are refused), and its TLVs are skipped unread; a unix address
 * pair counts as local. */
#include "proxy_header.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#define V1_MAX 107 /* "PROXY TCP6 " + two full IPv6 addresses + two ports + CRLF */
#define V2_FIXED 16

static const unsigned char v2_signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                               0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* A decimal port, "0" or without a leading zero. Returns it, or -1. */
static int parse_port(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535 ? v : -1;
}

/* host and port into out, for family (AF_INET or AF_INET6). Returns 0 or -1. */
static int v1_addr(int family, const char *host, const char *port, rx_addr *out) {
    int p = parse_port(port);
    memset(out, 0, sizeof(*out));
    if (p < 0)
        return -1;
    if (family == AF_INET) {
        out->u.in.sin_family = AF_INET;
        out->u.in.sin_port = htons((uint16_t)p);
        out->len = sizeof(out->u.in);
        return inet_pton(AF_INET, host, &out->u.in.sin_addr) == 1 ? 0 : -1;
    }
    out->u.in6.sin6_family = AF_INET6;
    out->u.in6.sin6_port = htons((uint16_t)p);
    out->len = sizeof(out->u.in6);
    return inet_pton(AF_INET6, host, &out->u.in6.sin6_addr) == 1 ? 0 : -1;
}

/* "PROXY TCP4|TCP6 src dst sport dport" or "PROXY UNKNOWN[ anything]", line without its CRLF. */
static int parse_v1_line(char *line, rx_proxy_header *out) {
    char *tok[7];
    int n = 0;
    for (char *s = line;; s++) {
        if (n == 7)
            return -EPROTO;
        tok[n++] = s;
        s = strchr(s, ' ');
        if (!s)
            break;
        *s = '\0';
        if (n >= 2 && !strcmp(tok[1], "UNKNOWN"))
            break; /* the rest of an UNKNOWN line is ignored */
    }
    for (int i = 0; i < n; i++)
        if (!tok[i][0])
            return -EPROTO; /* two spaces in a row, or a space at the end */
    if (n >= 2 && !strcmp(tok[1], "UNKNOWN")) {
        out->local = true;
        return 0;
    }
    int family = n == 6 && !strcmp(tok[1], "TCP4")   ? AF_INET
                 : n == 6 && !strcmp(tok[1], "TCP6") ? AF_INET6
                                                     : 0;
    if (!family || v1_addr(family, tok[2], tok[4], &out->src) < 0 ||
        v1_addr(family, tok[3], tok[5], &out->dst) < 0)
        return -EPROTO;
    out->local = false;
    return 0;
}

static int parse_v1(const unsigned char *p, size_t len, rx_proxy_header *out) {
    /* The CR can be at most at V1_MAX - 2: the line with its CRLF fits in V1_MAX bytes. */
    size_t limit = len < V1_MAX - 1 ? len : V1_MAX - 1;
    for (size_t i = 0; i < limit; i++) {
        if (p[i] == '\r') {
            if (i + 1 == len)
                return 0;
            if (p[i + 1] != '\n')
                return -EPROTO;
            char line[V1_MAX];
            memcpy(line, p, i);
            line[i] = '\0';
            int rc = parse_v1_line(line, out);
            return rc < 0 ? rc : (int)(i + 2);
        }
        if (p[i] < 0x20 || p[i] > 0x7e)
            return -EPROTO;
    }
    return len < V1_MAX - 1 ? 0 : -EPROTO;
}

static int parse_v2(const unsigned char *p, size_t len, rx_proxy_header *out) {
    unsigned version = p[12] >> 4, command = p[12] & 0x0F;
    unsigned family = p[13] >> 4, transport = p[13] & 0x0F;
    size_t body = (size_t)p[14] << 8 | p[15], total = V2_FIXED + body;
    if (version != 2 || command > 1 || family > 3 || total > RX_PROXY_HEADER_MAX)
        return -EPROTO;
    if (len < total)
        return 0;
    const unsigned char *a = p + V2_FIXED;
    memset(out, 0, sizeof(*out));
    out->local = true;
    if (command == 0 || family == 0 || family == 3) /* LOCAL, UNSPEC, a unix pair */
        return (int)total;
    if (transport != 1)
        return -EPROTO; /* not STREAM: not a TCP connection's header */
    if (family == 1) {
        if (body < 12)
            return -EPROTO;
        out->src.u.in.sin_family = out->dst.u.in.sin_family = AF_INET;
        memcpy(&out->src.u.in.sin_addr, a, 4);
        memcpy(&out->dst.u.in.sin_addr, a + 4, 4);
        memcpy(&out->src.u.in.sin_port, a + 8, 2); /* both in network order already */
        memcpy(&out->dst.u.in.sin_port, a + 10, 2);
        out->src.len = out->dst.len = sizeof(out->src.u.in);
    } else {
        if (body < 36)
            return -EPROTO;
        out->src.u.in6.sin6_family = out->dst.u.in6.sin6_family = AF_INET6;
        memcpy(&out->src.u.in6.sin6_addr, a, 16);
        memcpy(&out->dst.u.in6.sin6_addr, a + 16, 16);
        memcpy(&out->src.u.in6.sin6_port, a + 32, 2);
        memcpy(&out->dst.u.in6.sin6_port, a + 34, 2);
        out->src.len = out->dst.len = sizeof(out->src.u.in6);
    }
    out->local = false;
    return (int)total;
}

int rx_proxy_header_parse(const void *buf, size_t len, rx_proxy_header *out) {
    const unsigned char *p = buf;
    size_t n = len < sizeof(v2_signature) ? len : sizeof(v2_signature);
    if (memcmp(p, v2_signature, n) == 0)
        return len < V2_FIXED ? 0 : parse_v2(p, len, out);
    n = len < 6 ? len : 6;
    if (memcmp(p, "PROXY ", n) == 0)
        return len < 6 ? 0 : parse_v1(p, len, out);
    return -EPROTO;
}
