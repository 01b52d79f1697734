/* Small helpers shared by the test suites: socket pairs and bounded loop runs. */
#ifndef RX_TESTUTIL_H
#define RX_TESTUTIL_H

#include <stdbool.h>

#include <rx/rx.h>

/* Makes fd non-blocking; fails the test on error. */
void tu_nonblock(int fd);

/* A connected AF_UNIX stream pair, both ends non-blocking and close-on-exec. */
void tu_socketpair(int sv[2]);

/* Runs loop iterations (each waiting at most 10 ms) until *done is true or max_ms pass.
 * Returns true when *done became true. */
bool tu_run_until(rx_loop *loop, const bool *done, int max_ms);

/* Monotonic milliseconds, for bounding loops in tests. */
unsigned long long tu_now_ms(void);

/* ---- TCP helpers (127.0.0.1, ephemeral ports) ---- */

/* A listening TCP socket on 127.0.0.1:0 (blocking, close-on-exec) with the given backlog;
 * *port receives the port the kernel chose. Fails the test on error. */
int tu_tcp_listen(int backlog, int *port);

/* A socket connected (blocking connect) to 127.0.0.1:port, then made non-blocking when asked.
 * Returns the fd, or -1 with errno set when the connect failed. */
int tu_tcp_connect(int port, bool nonblock);

/* A connected TCP pair over 127.0.0.1, both ends non-blocking and close-on-exec. */
void tu_tcp_pair(int *a, int *b);

/* A port on 127.0.0.1 that nothing listens on now (bound once, then closed). */
int tu_free_port(void);

/* Waits up to ms for poll events on fd; returns the revents (0 on timeout). */
short tu_poll(int fd, short events, int ms);

/* A deterministic byte stream: tu_pattern_fill writes bytes [off, off + n) of it to buf;
 * tu_pattern_check returns the index of the first byte of buf that differs from bytes
 * [off, off + n), or -1 when all match. */
void tu_pattern_fill(void *buf, unsigned long long off, size_t n);
long long tu_pattern_check(const void *buf, unsigned long long off, size_t n);

/* Runs loop iterations (each waiting at most 10 ms) for ms milliseconds. */
void tu_run_for(rx_loop *loop, int ms);

/* Runs loop iterations (each waiting at most wait_ms) until fn(arg) returns true or max_ms
 * pass; fn is called before every iteration (it may do the peer's side of the I/O). Returns
 * the last result of fn. */
bool tu_run_until_fn(rx_loop *loop, bool (*fn)(void *arg), void *arg, int max_ms, int wait_ms);

/* The far end of a connection, driven by the test: a non-blocking socket whose input is either
 * kept in `got` or checked against the tu_pattern stream and only counted. */
typedef struct tu_peer {
    int fd;
    bool verify;          /* check against tu_pattern instead of keeping */
    rx_buffer got;        /* bytes read, when !verify */
    unsigned long long n; /* bytes read */
    long long bad;        /* stream offset of the first wrong byte; -1: none */
    bool eof;             /* read returned 0 */
    int err;              /* errno of a failed read (ECONNRESET, ...); 0: none */
} tu_peer;

void tu_peer_init(tu_peer *p, int fd, bool verify);

/* Reads what is there without blocking. Returns true once EOF or an error was seen. */
bool tu_peer_read(tu_peer *p);

/* Closes the fd (when >= 0) and frees `got`. */
void tu_peer_free(tu_peer *p);

/* Replacements for rx_sys.malloc/calloc/realloc that fail with ENOMEM (restore with
 * rx_sys_reset). */
void *tu_fail_malloc(size_t n);
void *tu_fail_calloc(size_t count, size_t n);
void *tu_fail_realloc(void *p, size_t n);

#endif
