/* rx_addr: parsing "a.b.c.d:port", "[v6]:port" and "unix:/path" into socket addresses and
 * formatting them back, with numeric hosts only (inet_pton; never DNS, which would block). */
#include <rx/addr.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define UNIX_PREFIX "unix:"
#define UNIX_PREFIX_LEN (sizeof(UNIX_PREFIX) - 1)

/* Digits only, 1 to 5 of them, value 0..65535. */
static bool parse_port(const char *s, in_port_t *out) {
    unsigned v = 0;
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 5)
            return false;
        v = v * 10u + (unsigned)(s[n] - '0');
    }
    if (n == 0 || v > 65535u)
        return false;
    *out = htons((uint16_t)v);
    return true;
}

/* Copies [begin, end) into buf (size n) as a C string; false when it does not fit. */
static bool copy_host(char *buf, size_t n, const char *begin, const char *end) {
    size_t len = (size_t)(end - begin);
    if (len == 0 || len >= n)
        return false;
    memcpy(buf, begin, len);
    buf[len] = '\0';
    return true;
}

static bool parse_unix(rx_addr *out, const char *path) {
    size_t len = strlen(path);
    /* The path must leave room for its NUL in sun_path; "" would be an abstract address. */
    if (len == 0 || len >= sizeof(out->u.un.sun_path))
        return false;
    out->u.un.sun_family = AF_UNIX;
    memcpy(out->u.un.sun_path, path, len + 1);
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    return true;
}

static bool parse_in6(rx_addr *out, const char *str) {
    const char *close = strchr(str, ']');
    char host[INET6_ADDRSTRLEN];
    if (!close || close[1] != ':' || !copy_host(host, sizeof(host), str + 1, close))
        return false;
    if (!parse_port(close + 2, &out->u.in6.sin6_port) ||
        inet_pton(AF_INET6, host, &out->u.in6.sin6_addr) != 1)
        return false;
    out->u.in6.sin6_family = AF_INET6;
    out->len = sizeof(out->u.in6);
    return true;
}

static bool parse_in4(rx_addr *out, const char *str) {
    const char *colon = strrchr(str, ':');
    char host[INET_ADDRSTRLEN];
    if (!colon || !copy_host(host, sizeof(host), str, colon))
        return false;
    if (!parse_port(colon + 1, &out->u.in.sin_port) ||
        inet_pton(AF_INET, host, &out->u.in.sin_addr) != 1)
        return false;
    out->u.in.sin_family = AF_INET;
    out->len = sizeof(out->u.in);
    return true;
}

int rx_addr_parse(rx_addr *out, const char *str) {
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (!str)
        return -EINVAL;
    bool ok;
    if (strncmp(str, UNIX_PREFIX, UNIX_PREFIX_LEN) == 0)
        ok = parse_unix(out, str + UNIX_PREFIX_LEN);
    else if (str[0] == '[')
        ok = parse_in6(out, str);
    else
        ok = parse_in4(out, str);
    if (!ok) {
        memset(out, 0, sizeof(*out));
        return -EINVAL;
    }
    return 0;
}

/* Formats into tmp (RX_ADDR_STRLEN bytes); returns the length or -EINVAL. */
static int format_tmp(const rx_addr *addr, char *tmp) {
    char host[INET6_ADDRSTRLEN];
    switch (addr->u.sa.sa_family) {
    case AF_INET:
        if (!inet_ntop(AF_INET, &addr->u.in.sin_addr, host, sizeof(host)))
            return -EINVAL;
        return snprintf(tmp, RX_ADDR_STRLEN, "%s:%u", host, (unsigned)ntohs(addr->u.in.sin_port));
    case AF_INET6:
        if (!inet_ntop(AF_INET6, &addr->u.in6.sin6_addr, host, sizeof(host)))
            return -EINVAL;
        return snprintf(tmp, RX_ADDR_STRLEN, "[%s]:%u", host,
                        (unsigned)ntohs(addr->u.in6.sin6_port));
    case AF_UNIX: {
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t max = addr->len > off ? (size_t)addr->len - off : 0;
        if (max > sizeof(addr->u.un.sun_path))
            max = sizeof(addr->u.un.sun_path);
        /* An abstract address (leading NUL) has no form rx_addr_parse reads. An unnamed socket
         * (the usual peer of a unix listener: len covers the family only) formats as "unix:". */
        if (max > 0 && addr->u.un.sun_path[0] == '\0')
            return -EINVAL;
        size_t len = strnlen(addr->u.un.sun_path, max);
        memcpy(tmp, UNIX_PREFIX, UNIX_PREFIX_LEN);
        memcpy(tmp + UNIX_PREFIX_LEN, addr->u.un.sun_path, len);
        tmp[UNIX_PREFIX_LEN + len] = '\0';
        return (int)(UNIX_PREFIX_LEN + len);
    }
    default:
        return -EINVAL;
    }
}

int rx_addr_format(const rx_addr *addr, char *buf, size_t n) {
    if (!addr || (!buf && n > 0))
        return -EINVAL;
    char tmp[RX_ADDR_STRLEN];
    int len = format_tmp(addr, tmp);
    if (len < 0)
        return len;
    if ((size_t)len >= n) {
        if (n > 0)
            buf[0] = '\0';
        return -ENOSPC;
    }
    memcpy(buf, tmp, (size_t)len + 1);
    return len;
}

int rx_addr_port(const rx_addr *addr) {
    if (!addr)
        return 0;
    switch (addr->u.sa.sa_family) {
    case AF_INET:
        return ntohs(addr->u.in.sin_port);
    case AF_INET6:
        return ntohs(addr->u.in6.sin6_port);
    default:
        return 0;
    }
}
