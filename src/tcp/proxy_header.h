/* The PROXY protocol header (HAProxy's, versions 1 and 2) that a layer-4 balancer puts in front of
 * a connection to say whose it is: parsed, never trusted past its limits. */
#ifndef RX_PROXY_HEADER_H
#define RX_PROXY_HEADER_H

#include <stdbool.h>
#include <stddef.h>

#include <rx/addr.h>

/* The longest header accepted: v1 allows 107 bytes; a v2 header is 16 bytes plus its length
 * field, which rx caps here (addresses and TLVs: a unix pair takes 216). */
#define RX_PROXY_HEADER_MAX 536

typedef struct rx_proxy_header {
    /* The balancer speaks for itself (v2 LOCAL, a health check) or does not know the client (v1
     * UNKNOWN, v2 UNSPEC): the connection's own addresses stand. */
    bool local;
    rx_addr src, dst; /* the client and the address it connected to, unless local */
} rx_proxy_header;

/* Parses the header at the start of buf[0..len). Returns its length (> 0) with *out filled in, 0
 * when the bytes so far are a correct beginning and more are needed, or -EPROTO when they cannot
 * begin a header (no PROXY signature, a malformed or over-long line, a bad version, command,
 * family or length). Never reads past buf[len]. */
int rx_proxy_header_parse(const void *buf, size_t len, rx_proxy_header *out);

#endif
