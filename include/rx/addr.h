/* rx_addr: socket addresses parsed from and formatted to one string. */
#ifndef RX_ADDR_H
#define RX_ADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rx_addr {
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
        struct sockaddr_un un;
        struct sockaddr_storage storage;
    } u;
    socklen_t len;
} rx_addr;

/* Longest string rx_addr_format writes, with its terminating NUL. */
#define RX_ADDR_STRLEN (sizeof("unix:") + sizeof(((struct sockaddr_un *)0)->sun_path))

/* Parses "127.0.0.1:8080", "[::1]:8080", "0.0.0.0:0" (port 0: the kernel picks one) or
 * "unix:/path/to.sock". Numeric hosts only (no DNS lookup, which would block the loop).
 * Returns 0, or -EINVAL for a malformed string (out is then zeroed). */
int rx_addr_parse(rx_addr *out, const char *str);

/* Writes the address in the form rx_addr_parse reads into buf (size n, at least RX_ADDR_STRLEN
 * is always enough); an unnamed unix peer prints as "unix:", and an IPv6 scope id is dropped.
 * Returns the length written, or -EINVAL (abstract or unknown family) / -ENOSPC. */
int rx_addr_format(const rx_addr *addr, char *buf, size_t n);

/* The port of an IPv4/IPv6 address; 0 for a unix socket. */
int rx_addr_port(const rx_addr *addr);

#ifdef __cplusplus
}
#endif

#endif
