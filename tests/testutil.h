/* Small helpers shared by the test suites: socket pairs, bounded loop runs, the byte pattern, a
 * traced connection, fault injectors for the rx_sys layer and the suites' main. */
#ifndef RX_TESTUTIL_H
#define RX_TESTUTIL_H

#include <check.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <pthread.h>

#include <rx/rx.h>

#ifndef KiB
#define KiB (1024u)
#define MiB (1024u * 1024u)
#endif

static inline size_t tu_min(size_t a, size_t b) { return a < b ? a : b; }

/* Runs the suite (CK_FORK decides about forking) with SIGPIPE ignored; returns main's exit
 * status. */
int tu_main(Suite *s);

/* A test case added to s, with the given timeout (seconds) and tu_teardown as its checked
 * fixture; test cases run in the order they were made. */
TCase *tu_tcase(Suite *s, const char *name, double timeout);

/* Checked-fixture teardown of every suite that injects faults: rx_sys back to libc, so a failed
 * test does not leave its injectors to the next one (CK_FORK=no under valgrind). */
void tu_teardown(void);

/* Makes fd non-blocking; fails the test on error. */
void tu_nonblock(int fd);

/* A connected AF_UNIX stream pair, both ends non-blocking and close-on-exec. */
void tu_socketpair(int sv[2]);

/* Whether fd is closed (F_GETFD fails with EBADF). */
bool tu_fd_closed(int fd);

/* setsockopt(fd, SOL_SOCKET, opt, bytes); fails the test on error. */
void tu_set_buf(int fd, int opt, int bytes);

/* Runs loop iterations (each waiting at most 10 ms) until *done is true or max_ms pass.
 * Returns true when *done became true. */
bool tu_run_until(rx_loop *loop, const bool *done, int max_ms);

/* Runs loop iterations (each waiting at most 10 ms) until *count reaches want or max_ms pass.
 * Returns true when it did. */
bool tu_run_until_count(rx_loop *loop, const int *count, int want, int max_ms);

/* Monotonic milliseconds, for bounding loops in tests. */
unsigned long long tu_now_ms(void);

/* Busy-waits ms milliseconds (work that holds the thread, as a slow callback would). */
void tu_spin_ms(unsigned ms);

/* ---- TCP helpers (127.0.0.1, ephemeral ports) ---- */

/* A listening TCP socket on 127.0.0.1:0 (blocking, close-on-exec) with the given backlog;
 * *port receives the port the kernel chose. Fails the test on error. */
int tu_tcp_listen(int backlog, int *port);

/* A socket connected (blocking connect) to 127.0.0.1:port, then made non-blocking when asked.
 * Returns the fd, or -1 with errno set when the connect failed. */
int tu_tcp_connect(int port, bool nonblock);

/* A connected TCP pair over 127.0.0.1, both ends non-blocking and close-on-exec. */
void tu_tcp_pair(int *a, int *b);

/* A TCP pair whose end a (the one given to rx) sends into small kernel buffers (32 KiB send
 * buffer on a, 32 KiB receive buffer on b), so output queues in rx after a few dozen KiB. */
void tu_small_tcp_pair(int *a, int *b);

/* The local port of a TCP socket. */
int tu_local_port(int fd);

/* A connection (rx_conn_new, checked) over a fresh TCP pair made by tu_small_tcp_pair when
 * `small`, else by tu_tcp_pair; *peer receives the far end. */
rx_conn *tu_conn_pair(rx_loop *loop, bool small, const rx_conn_opts *o,
                      const rx_conn_callbacks *cbs, void *arg, int *peer);

/* A port on 127.0.0.1 that nothing listens on now (bound once, then closed). */
int tu_free_port(void);

/* "127.0.0.1:<port>" into buf, for rx_connect and rx_server_new. */
void tu_addr(char *buf, size_t n, int port);

/* An rx_server on 127.0.0.1:0 (o->listen is set); fails the test when it cannot be made. */
rx_server *tu_server(rx_loop *loop, rx_server_opts *o);

/* The port an rx_server listens on. */
int tu_server_port(const rx_server *s);

/* Waits up to ms for poll events on fd; returns the revents (0 on timeout). */
short tu_poll(int fd, short events, int ms);

/* Runs fn(arg) in a forked child whose stderr is captured into msg (cap bytes, NUL-terminated);
 * the child exits with status 2 if fn returns. Returns the child's wait status; fails the test
 * when the child neither ends nor closes its stderr within 10 s. */
int tu_in_child(void (*fn)(void *), void *arg, char *msg, size_t cap);

/* A timer that stops the loop after ms and notes that it fired: bounds an rx_loop_run (or an
 * rx_loop_run_once(loop, -1)) that a test expects to return sooner. */
typedef struct tu_guard {
    rx_loop *loop;
    rx_timer *timer;
    bool fired;
} tu_guard;

void tu_guard_start(tu_guard *g, rx_loop *loop, uint64_t ms);
void tu_guard_free(tu_guard *g);

/* ---- the byte pattern ---- */

/* A deterministic byte stream: tu_pattern_fill writes bytes [off, off + n) of it to buf;
 * tu_pattern_check returns the index of the first byte of buf that differs from bytes
 * [off, off + n), or -1 when all match. */
void tu_pattern_fill(void *buf, unsigned long long off, size_t n);
long long tu_pattern_check(const void *buf, unsigned long long off, size_t n);

/* A heap buffer (free it) holding bytes [off, off + n) of the stream. */
char *tu_pattern_alloc(unsigned long long off, size_t n);

/* Sends bytes [off, off + n) of the stream with one rx_conn_send; returns what it returned. */
int tu_send_pattern(rx_conn *c, unsigned long long off, size_t n);

/* An unlinked temporary file holding bytes [0, n) of the stream. */
int tu_pattern_file(size_t n);

/* ---- running the loop ---- */

/* Runs loop iterations (each waiting at most 10 ms) for ms milliseconds. */
void tu_run_for(rx_loop *loop, int ms);

/* Runs loop iterations (each waiting at most wait_ms) until fn(arg) returns true or max_ms
 * pass; fn is called before every iteration (it may do the peer's side of the I/O). Returns
 * the last result of fn. */
bool tu_run_until_fn(rx_loop *loop, bool (*fn)(void *arg), void *arg, int max_ms, int wait_ms);

/* ---- the far end of a connection ---- */

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

/* Writes all of buf to fd (the peer's socket), running the loop while the socket is full; fails
 * the test after 10 s. */
void tu_peer_write_all(rx_loop *loop, int fd, const void *buf, size_t n);

/* ---- a traced connection ---- */

/* Everything a connection reported, for asserting order and counts. Give it as the arg of a
 * connection (or of a server: then it adds up over the server's connections). */
typedef struct tu_tr {
    rx_conn *c; /* set by on_open, cleared by on_close */
    int opens, datas, drains, highs, lows, eofs, timeouts, closes;
    int timeout_kinds[3];  /* on_timeout calls by rx_timeout_kind */
    int late;              /* callbacks after on_close, or after `done` was set by the test */
    const char *late_what; /* the last of them */
    bool done;             /* the test (or a callback) asked for the close */
    bool echo;             /* on_data sends back what came in */
    bool close_in_open;    /* on_open calls rx_conn_close */
    bool abort_in_open;    /* on_open calls rx_conn_abort */
    rx_conn_state state_at_open;
    rx_close_reason reason;
    int err;
    unsigned ended_at_close; /* rx_conn_ended in on_close */
    unsigned long long open_ms, close_ms;
    unsigned long long bytes_in, bytes_out; /* counters at on_close */
    size_t in_at_eof, in_at_close;          /* bytes received when on_eof / on_close ran */
    rx_buffer in;                           /* bytes received */
} tu_tr;

/* The callbacks, to build tables from (tu_tr_eof counts; without on_eof rx closes at EOF). */
void tu_tr_open(rx_conn *c, void *arg);
void tu_tr_data(rx_conn *c, rx_buffer *in, void *arg);
void tu_tr_drain(rx_conn *c, void *arg);
void tu_tr_high(rx_conn *c, size_t queued, void *arg);
void tu_tr_low(rx_conn *c, size_t queued, void *arg);
void tu_tr_eof(rx_conn *c, void *arg);
void tu_tr_timeout(rx_conn *c, rx_timeout_kind kind, void *arg);
void tu_tr_close(rx_conn *c, rx_close_reason reason, int err, void *arg);

/* on_open, on_data, on_drain, on_high_water, on_low_water and on_close. */
extern const rx_conn_callbacks tu_tr_cbs;

/* Predicates over a tu_tr: on_close ran; on_open or on_close ran. */
bool tu_tr_closed(void *tr);
bool tu_tr_opened(void *tr);

/* Fails the test when any callback came after the close. */
void tu_tr_assert_none_late(const tu_tr *t);

/* Runs loop iterations (each waiting at most 5 ms) until on_close ran, for max_ms at most, and
 * checks the reason it gave. */
void tu_tr_wait_close(rx_loop *loop, tu_tr *t, int max_ms, rx_close_reason reason);

/* on_close has not run yet (it never runs inside a call of the user's): it runs in the next
 * iteration (rx_loop_run_once(loop, 0)), with reason. */
void tu_tr_assert_closes_next(rx_loop *loop, const tu_tr *t, rx_close_reason reason);

/* After on_close: ms more of the loop do not run it again. */
void tu_tr_assert_closed_once(rx_loop *loop, const tu_tr *t, int ms);

/* Frees loop, which closes the connections still open: each trace given (the list ends with
 * NULL) then saw on_close exactly once; then frees the traces. */
void tu_free_loop_closing(rx_loop *loop, ...);

void tu_tr_free(tu_tr *t);

/* A traced connection and its raw peer, for the predicates below. */
typedef struct tu_duo {
    tu_tr *t;
    tu_peer *p;
    size_t want; /* bytes the peer (tu_peer_has) or the connection (tu_tr_has) should see */
} tu_duo;

bool tu_peer_done(void *peer);           /* tu_peer_read: EOF or error seen */
bool tu_peer_has(void *duo);             /* the peer read `want` bytes, or its stream ended */
bool tu_peer_done_and_closed(void *duo); /* the peer's stream ended and on_close ran */
bool tu_tr_has(void *duo);               /* on_data got `want` bytes, or on_close ran */

/* ---- threads and loop groups ---- */

/* Whether libcheck runs each test in a child (CK_FORK is not "no"): tests that must die (abort)
 * are only registered then, since under CK_FORK=no (valgrind) they would end the whole run. */
bool tu_forking(void);

/* CPUs this process may run on (sched_getaffinity). */
unsigned tu_cpu_count(void);

/* Raises the soft RLIMIT_NOFILE to the hard limit. Returns true when that allows at least `want`
 * fds (else the caller skips, saying why). */
bool tu_raise_nofile(unsigned long want);

/* Sleeps in steps of 0.2 ms until *v >= want or max_ms pass (no loop is run: the loops run on
 * their own threads). Returns true when *v reached want. */
bool tu_wait_atomic(atomic_int *v, int want, int max_ms);

/* Like tu_wait_atomic, for any condition: fn(arg) is polled. Returns its last result. */
bool tu_wait_fn(bool (*fn)(void *arg), void *arg, int max_ms);

/* Runs fn(arg) on the thread of a running loop and waits up to max_ms until it returned; fails the
 * test when it did not. fn must not call ck_assert (it is not the test's thread): report through
 * atomics instead. */
void tu_on_loop(rx_loop *loop, rx_task_fn fn, void *arg, int max_ms);

/* Runs fn(arg) on a new thread and waits up to max_ms for it to return (then joins it): a bound on
 * a call that blocks, such as rx_loop_group_join. Returns false when it did not return in time
 * (the thread is left running; the test is failing anyway). */
bool tu_call_within(rx_task_fn fn, void *arg, int max_ms);

/* rx_loop_group_join bounded by max_ms: fails the test when the threads did not all end in time;
 * else returns what join returned. */
int tu_group_join_within(rx_loop_group *g, int max_ms);

/* The index of loop in g, or -1 when it is none of g's loops. */
int tu_group_index(const rx_loop_group *g, const rx_loop *loop);

/* pthread_self() of the thread running each loop of a started group, into out[0 .. size). */
void tu_group_threads(rx_loop_group *g, pthread_t *out);

/* ---- fault injection (rx_sys; restore with rx_sys_reset or tu_teardown) ---- */

/* Replacements for rx_sys.malloc/calloc/realloc that fail with ENOMEM. */
void *tu_fail_malloc(size_t n);
void *tu_fail_calloc(size_t count, size_t n);
void *tu_fail_realloc(void *p, size_t n);

/* Every rx_sys allocation (malloc, calloc, realloc) fails with ENOMEM from now on. */
void tu_fail_allocs(void);

/* rx_sys.epoll_ctl, counting (and failing when asked) the calls on one fd. */
struct tu_ctl {
    int fd;         /* the fd watched; -1: every fd */
    int fail_op;    /* EPOLL_CTL_ADD/MOD/DEL: only that operation fails; 0: any */
    int fail_errno; /* calls on fd (of fail_op) fail with it when nonzero */
    int calls;      /* calls on fd */
    int out_mods;   /* EPOLL_CTL_MOD calls on fd whose mask has EPOLLOUT */
    int failures;   /* calls made to fail */
};
extern struct tu_ctl tu_ctl;

/* Installs the epoll_ctl injector for fd (-1: every fd), with zeroed counters and no failure. */
void tu_inject_epoll_ctl(int fd);

/* rx_sys.send/sendmsg/sendfile/read/readv acting on one fd; calls on other fds go straight to
 * the kernel. */
struct tu_io {
    int fd;
    int fail_errno;          /* every read and write on fd fails with it (ECONNRESET, ...) */
    bool shorten;            /* writes: short counts, EAGAIN and EINTR on a fixed schedule */
    size_t max_write;        /* writes take at most this many bytes per call; 0: no limit */
    bool never_full;         /* a write that finds the socket full waits (up to 1 s) for room and
                                tries again: a peer that reads as fast as rx writes */
    unsigned calls;          /* write calls on fd, the failed ones included */
    unsigned long long sent; /* bytes they wrote */
    size_t largest;          /* the largest count one write call returned */
};
extern struct tu_io tu_io;

/* Installs the I/O injector for fd, with zeroed counters and no fault. */
void tu_inject_io(int fd);

#endif
