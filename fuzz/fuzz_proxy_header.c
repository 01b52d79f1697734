/* libFuzzer target for the PROXY protocol header parser (src/tcp/proxy_header.c).
 *
 * Input: the bytes a balancer might send first. What must hold, else abort():
 * - the result is -EPROTO, 0 (more needed: only below the size limit) or a length within the
 *   input and the limit (107 bytes for a v1 line);
 * - a header found is found again, the same, in exactly its own bytes, and every shorter prefix
 *   of it asks for more (the parser never decides on bytes it has not seen);
 * - a header with addresses has IPv4 or IPv6 ones, both of the same family, that format.
 * Every parse reads a heap copy of exactly the bytes it is given, so ASan sees a read past them. */
#include "proxy_header.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int parse_copy(const uint8_t *data, size_t n, rx_proxy_header *h) {
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy)
        abort();
    memcpy(copy, data, n);
    int rc = rx_proxy_header_parse(copy, n, h);
    free(copy);
    return rc;
}

static void same(const rx_proxy_header *a, const rx_proxy_header *b) {
    if (a->local != b->local)
        abort();
    if (a->local)
        return;
    if (a->src.len != b->src.len || memcmp(&a->src.u, &b->src.u, a->src.len) ||
        a->dst.len != b->dst.len || memcmp(&a->dst.u, &b->dst.u, a->dst.len))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rx_proxy_header h, again;
    int rc = parse_copy(data, size, &h);
    if (rc == -EPROTO)
        return 0;
    if (rc == 0) {
        if (size >= RX_PROXY_HEADER_MAX)
            abort();
        return 0;
    }
    if (rc < 0 || (size_t)rc > size || rc > RX_PROXY_HEADER_MAX || (data[0] == 'P' && rc > 107))
        abort(); /* a v1 line is 107 bytes at most, with its CRLF */
    if (parse_copy(data, (size_t)rc, &again) != rc)
        abort();
    same(&h, &again);
    for (size_t cut = 0; cut < (size_t)rc; cut++)
        if (parse_copy(data, cut, &again) != 0)
            abort();
    if (!h.local) {
        int f = h.src.u.sa.sa_family;
        char buf[RX_ADDR_STRLEN];
        if ((f != AF_INET && f != AF_INET6) || h.dst.u.sa.sa_family != f ||
            rx_addr_format(&h.src, buf, sizeof(buf)) <= 0 ||
            rx_addr_format(&h.dst, buf, sizeof(buf)) <= 0)
            abort();
    }
    return 0;
}
