/* rx-http's static files on the work pool (--io-threads), in process: the session, static-file and
 * log modules on one loop thread, a real listening server on 127.0.0.1 and real client sockets,
 * with openat2 slowed down (or failed) through the syscall layer.
 *
 * The isolation scenario (issue 11): every openat2 takes 200 ms, 50 static-file requests stay in
 * flight, and another client times GET /plaintext. With the lookups on a pool of 4 threads the
 * probe's p99 stays under 5 ms; with them on the loop (--io-threads 0) the probe waits for the
 * disk. Both are asserted, so the test shows that the pool is what helps. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "http_server.h"
#include "sys.h"
#include "testutil.h"

#define NSTATIC 50
#define SLOW_MS 200
#define FILE_SIZE 1000

/* ---- openat2, slowed or failed through rx_sys ------------------------------------------------ */

static atomic_bool slow;        /* every openat2 sleeps SLOW_MS first */
static atomic_bool fail;        /* every openat2 fails with EIO */
static atomic_int opens;        /* openat2 calls that may wait for the disk */
static atomic_int cached_opens; /* RESOLVE_CACHED ones */

/* A slow disk: an open that needs it takes SLOW_MS, and one that may only use the kernel's cache
 * (RESOLVE_CACHED) fails at once with EAGAIN, as the kernel's does for a path not in its cache. */
static int test_openat2(int dirfd, const char *path, const struct open_how *how) {
    if (how->resolve & RESOLVE_CACHED) {
        atomic_fetch_add(&cached_opens, 1);
        if (atomic_load(&slow)) {
            errno = EAGAIN;
            return -1;
        }
    } else {
        atomic_fetch_add(&opens, 1);
    }
    if (atomic_load(&slow)) {
        struct timespec ts = {0, SLOW_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&fail)) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_openat2, dirfd, path, how, sizeof(*how));
}

/* ---- the server, on a thread of its own -------------------------------------------------------
 */

static http_server srv;
static char root[64];
static char file_body[FILE_SIZE];
static int port;

/* Starts rx-http's modules on one loop with a pool of io_threads threads (0: none) whose queue
 * holds max_queued requests (0: the default), serving a root that holds f.txt; cached_open is
 * --tune no-cached-open's opposite. */
static void server_start(unsigned io_threads, unsigned max_queued, bool cached_open) {
    strcpy(root, "/tmp/rx-offload-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(root));
    char path[128];
    snprintf(path, sizeof(path), "%s/f.txt", root);
    for (int i = 0; i < FILE_SIZE; i++)
        file_body[i] = (char)('a' + i % 26);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, file_body, FILE_SIZE), FILE_SIZE);
    close(fd);

    atomic_store(&slow, false);
    atomic_store(&fail, false);
    atomic_store(&opens, 0);
    atomic_store(&cached_opens, 0);
    rx_sys.openat2 = test_openat2; /* before any thread starts; restored after they are joined */

    memset(&srv, 0, sizeof(srv));
    srv.cfg = (http_config){.idle_timeout_ms = 30000,
                            .header_timeout_ms = 10000,
                            .max_header_bytes = 16384,
                            .max_body_bytes = 1 << 20,
                            .io_threads = io_threads,
                            .backpressure = true,
                            .batch = true,
                            .date_cache = true,
                            .sendfile = true,
                            .cached_open = cached_open};
    srv.root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(srv.root_fd, 0);
    srv.log_fd = -1;
    if (io_threads) {
        srv.pool =
            rx_work_pool_new(&(rx_work_pool_opts){.threads = io_threads, .max_queued = max_queued});
        ck_assert_ptr_nonnull(srv.pool);
    }
    srv.group = rx_loop_group_new(1);
    ck_assert_ptr_nonnull(srv.group);
    ck_assert_int_eq(http_session_setup(&srv), 0);
    srv.loop = rx_loop_group_loop(srv.group, 0);
    rx_server_opts opts = {
        .listen = "127.0.0.1:0",
        .conn = {.high_water = HTTP_OUTPUT_LIMIT},
        .cbs = &http_session_callbacks,
        .arg = &srv,
        .group = srv.group,
    };
    srv.server = rx_server_new(srv.loop, &opts);
    ck_assert_ptr_nonnull(srv.server);
    port = rx_addr_port(rx_server_addr(srv.server));
    ck_assert_int_eq(rx_loop_group_start(srv.group), 0);
}

/* Stops and frees all of it in rx-http's order; returns how long that took, in ms. */
static unsigned long long server_stop(void) {
    unsigned long long t0 = tu_now_ms();
    rx_loop_group_stop(srv.group);
    rx_loop_group_join(srv.group);
    rx_server_free(srv.server);
    rx_loop_group_free(srv.group);
    rx_work_pool_free(srv.pool);
    http_session_cleanup(&srv);
    unsigned long long took = tu_now_ms() - t0;
    close(srv.root_fd);
    rx_sys_reset();
    char path[128];
    snprintf(path, sizeof(path), "%s/f.txt", root);
    unlink(path);
    rmdir(root);
    return took;
}

/* ---- clients ------------------------------------------------------------------------------------
 */

typedef struct client {
    int fd;
    bool busy; /* a request is out */
    unsigned long long sent_ms, sent_ns;
    char buf[4096];
    size_t len;
    char head[512]; /* the last complete response's head */
} client;

/* A client connected to the server (a blocking socket; reads use MSG_DONTWAIT). */
static client client_open(void) {
    client c = {.fd = tu_tcp_connect(port, false)};
    ck_assert_int_ge(c.fd, 0);
    return c;
}

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void client_send(client *c, const char *path) {
    char req[128];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    ck_assert_int_eq(send(c->fd, req, (size_t)n, MSG_NOSIGNAL), n);
    c->busy = true;
    c->sent_ms = tu_now_ms();
    c->sent_ns = now_ns();
}

/* Reads what has arrived; returns the status of a response now complete (its bytes consumed), or
 * 0 when none is yet. A response's body must be what the path serves. */
static int client_poll(client *c) {
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, MSG_DONTWAIT);
    if (n > 0)
        c->len += (size_t)n;
    ck_assert_msg(n != 0, "the server closed a connection");
    c->buf[c->len < sizeof(c->buf) ? c->len : sizeof(c->buf) - 1] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end)
        return 0;
    char *cl = strstr(c->buf, "Content-Length: ");
    ck_assert_msg(cl && cl < end, "a response without Content-Length: %s", c->buf);
    size_t head = (size_t)(end + 4 - c->buf), body = strtoul(cl + 16, NULL, 10);
    if (c->len < head + body)
        return 0;
    int status = atoi(c->buf + 9);
    snprintf(c->head, sizeof(c->head), "%.*s", (int)head, c->buf);
    if (status == 200 && body == FILE_SIZE)
        ck_assert_msg(memcmp(c->buf + head, file_body, FILE_SIZE) == 0, "a file's body differs");
    else if (status == 200)
        ck_assert_msg(body == 13 && memcmp(c->buf + head, "Hello, World!", 13) == 0,
                      "an unexpected 200 body");
    memmove(c->buf, c->buf + head + body, c->len - head - body);
    c->len -= head + body;
    c->busy = false;
    return status;
}

/* Waits until c's response is complete (at most max_ms); returns its status. */
static int client_wait(client *c, int max_ms) {
    unsigned long long end = tu_now_ms() + (unsigned long long)max_ms;
    for (;;) {
        int status = client_poll(c);
        if (status)
            return status;
        ck_assert_msg(tu_now_ms() < end, "no response within %d ms", max_ms);
        struct pollfd p = {c->fd, POLLIN, 0};
        poll(&p, 1, 10);
    }
}

static int cmp_ull(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

typedef struct scenario {
    int probes;
    double p50_ms, p99_ms;
    int files; /* static responses received, each checked */
} scenario;

/* The isolation scenario against a started server: NSTATIC clients keep one static request each in
 * flight while openat2 is slow, and a probe times GET /plaintext back to back for window_ms; then
 * the lookups are made fast again and every static request is waited for. */
static scenario isolation(int window_ms) {
    static client statics[NSTATIC];
    static unsigned long long lat[100000];
    client probe = client_open();
    client_send(&probe, "/plaintext"); /* the probe's connection is open on the loop */
    ck_assert_int_eq(client_wait(&probe, 2000), 200);
    for (int i = 0; i < NSTATIC; i++) {
        statics[i] = client_open();
    }
    atomic_store(&slow, true);
    for (int i = 0; i < NSTATIC; i++)
        client_send(&statics[i], "/f.txt");
    struct timespec settle = {0, 20 * 1000000L}; /* the requests reach the server */
    nanosleep(&settle, NULL);

    scenario r = {0};
    unsigned long long window_end = tu_now_ms() + (unsigned long long)window_ms;
    unsigned long long deadline = window_end + 20000;
    struct pollfd pfd[NSTATIC + 1];
    for (;;) {
        unsigned long long now = tu_now_ms();
        ck_assert_msg(now < deadline, "the static requests were not all answered");
        if (now >= window_end)
            atomic_store(&slow, false); /* the rest drains fast */
        if (!probe.busy && now < window_end)
            client_send(&probe, "/plaintext");
        int outstanding = probe.busy;
        for (int i = 0; i < NSTATIC; i++)
            outstanding += statics[i].busy;
        if (!outstanding)
            break;
        for (int i = 0; i < NSTATIC; i++)
            pfd[i] = (struct pollfd){statics[i].fd, statics[i].busy ? POLLIN : 0, 0};
        pfd[NSTATIC] = (struct pollfd){probe.fd, POLLIN, 0};
        poll(pfd, NSTATIC + 1, 10);
        if (probe.busy) {
            int status = client_poll(&probe);
            if (status) {
                ck_assert_int_eq(status, 200);
                ck_assert_int_lt(r.probes, (int)(sizeof(lat) / sizeof(lat[0])));
                lat[r.probes++] = now_ns() - probe.sent_ns;
            }
        }
        for (int i = 0; i < NSTATIC; i++) {
            if (!statics[i].busy)
                continue;
            int status = client_poll(&statics[i]);
            if (!status)
                continue;
            ck_assert_int_eq(status, 200);
            r.files++;
            if (tu_now_ms() < window_end) /* keep NSTATIC lookups in flight */
                client_send(&statics[i], "/f.txt");
        }
    }
    for (int i = 0; i < NSTATIC; i++)
        close(statics[i].fd);
    close(probe.fd);
    ck_assert_int_gt(r.probes, 0);
    qsort(lat, (size_t)r.probes, sizeof(lat[0]), cmp_ull);
    /* Nearest rank: the smallest latency that at least 50% (99%) of the probes did not exceed. */
    r.p50_ms = (double)lat[(r.probes * 50 + 99) / 100 - 1] / 1e6;
    r.p99_ms = (double)lat[(r.probes * 99 + 99) / 100 - 1] / 1e6;
    return r;
}

/* The isolation scenario on a fresh server with io_threads pool threads (0: inline lookups); the
 * figures are printed for docs/c10k.md (technique 13). */
static scenario isolation_run(unsigned io_threads, bool cached_open) {
    server_start(io_threads, 0, cached_open);
    scenario r = isolation(1000);
    server_stop();
    printf("isolation, --io-threads %u%s: %d probes of /plaintext, p50 %.3f ms, p99 %.3f ms; %d "
           "files served\n",
           io_threads, cached_open ? "" : " --tune no-cached-open", r.probes, r.p50_ms, r.p99_ms,
           r.files);
    fflush(stdout);
    ck_assert_int_ge(r.files, NSTATIC);
    return r;
}

/* _i 0: a lookup is first tried on the loop with RESOLVE_CACHED, which fails at once here; _i 1
 * (--tune no-cached-open): every openat2 is made on the pool, and every one takes SLOW_MS. */
START_TEST(test_pool_keeps_the_loop_responsive) {
    scenario r = isolation_run(4, _i == 0);
    ck_assert_int_ge(r.probes, 100); /* the loop answered all along */
    ck_assert_msg(r.p99_ms < 5.0, "p99 of /plaintext is %.3f ms with the pool", r.p99_ms);
}
END_TEST

START_TEST(test_inline_lookups_stall_the_loop) {
    scenario r = isolation_run(0, true);
    /* The probe waited behind the loop's slow opens for most of the window. */
    ck_assert_msg(r.p99_ms >= SLOW_MS, "p99 of /plaintext is only %.3f ms without the pool",
                  r.p99_ms);
}
END_TEST

/* A full pool queue is answered at once with 503 and Retry-After, never by waiting on the loop. */
START_TEST(test_full_queue_is_503) {
    server_start(1, 2, true); /* one lookup running, two waiting: the next ones do not fit */
    atomic_store(&slow, true);
    client c[5];
    for (int i = 0; i < 5; i++) {
        c[i] = client_open();
        client_send(&c[i], "/f.txt");
        /* In order: each request reaches the loop before the next is sent. */
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int ok = 0, busy = 0;
    for (int i = 0; i < 5; i++) {
        int status = client_wait(&c[i], 5000);
        ok += status == 200;
        busy += status == 503;
        if (status == 503)
            ck_assert_ptr_nonnull(strstr(c[i].head, "\r\nRetry-After: 1\r\n"));
    }
    ck_assert_int_eq(ok, 3);
    ck_assert_int_eq(busy, 2);
    /* Once the queue drained, the same connections are served again. */
    atomic_store(&slow, false);
    for (int i = 0; i < 5; i++) {
        client_send(&c[i], "/f.txt");
        ck_assert_int_eq(client_wait(&c[i], 5000), 200);
        close(c[i].fd);
    }
    server_stop();
}
END_TEST

/* With the kernel's cache warm, a lookup never leaves the loop: no openat2 but RESOLVE_CACHED
 * ones, each answered at once; with --tune no-cached-open every one goes to the pool. */
START_TEST(test_cached_lookups_stay_on_the_loop) {
    server_start(2, 0, _i == 0);
    client c = client_open();
    for (int i = 0; i < 10; i++) {
        client_send(&c, "/f.txt");
        ck_assert_int_eq(client_wait(&c, 5000), 200);
    }
    close(c.fd);
    server_stop();
    ck_assert_int_eq(atomic_load(&cached_opens), _i == 0 ? 10 : 0);
    ck_assert_int_eq(atomic_load(&opens), _i == 0 ? 0 : 10);
}
END_TEST

/* A failing lookup is an error answer, and the connection goes on. */
START_TEST(test_failed_open_is_500) {
    server_start(2, 0, true);
    atomic_store(&fail, true);
    client c = client_open();
    client_send(&c, "/f.txt");
    ck_assert_int_eq(client_wait(&c, 5000), 500);
    atomic_store(&fail, false);
    client_send(&c, "/f.txt");
    ck_assert_int_eq(client_wait(&c, 5000), 200);
    close(c.fd);
    server_stop();
}
END_TEST

/* Pipelined requests behind a file lookup are answered after it, in order. */
START_TEST(test_pipelined_answers_keep_their_order) {
    server_start(2, 0, true);
    atomic_store(&slow, true);
    client c = client_open();
    static const char reqs[] = "GET /f.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /f.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /missing HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(send(c.fd, reqs, sizeof(reqs) - 1, 0), (ssize_t)sizeof(reqs) - 1);
    c.busy = true;
    static const char *const want[] = {"Content-Length: 1000", "Content-Length: 13",
                                       "Content-Length: 1000", "HTTP/1.1 404"};
    for (int i = 0; i < 4; i++) {
        /* client_wait checks each 200's body: the file's, or /plaintext's. */
        int status = client_wait(&c, 5000);
        ck_assert_int_eq(status, i == 3 ? 404 : 200);
        ck_assert_msg(strstr(c.head, want[i]), "answer %d out of order: %s", i, c.head);
        c.busy = true;
    }
    close(c.fd);
    server_stop();
}
END_TEST

/* Connections that close, and a server that stops, while their lookups are queued or running:
 * every job is released (ASan and valgrind see no leak) and the stop does not wait for the queue.
 */
START_TEST(test_close_and_stop_with_lookups_in_flight) {
    server_start(1, 0, true);
    atomic_store(&slow, true);
    int fds[8];
    for (int i = 0; i < 8; i++) {
        fds[i] = tu_tcp_connect(port, false);
        ck_assert_int_ge(fds[i], 0);
        static const char req[] = "GET /f.txt HTTP/1.1\r\nHost: t\r\n\r\n";
        ck_assert_int_eq(send(fds[i], req, sizeof(req) - 1, 0), (ssize_t)sizeof(req) - 1);
    }
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
    for (int i = 0; i < 4; i++) /* these lookups are cancelled (or dropped when they end) */
        close(fds[i]);
    nanosleep(&ts, NULL);
    /* Seven lookups of 200 ms remain on one thread: a stop that waited for them all would take
     * well over a second. It waits for the running one only. */
    unsigned long long took = server_stop();
    for (int i = 4; i < 8; i++)
        close(fds[i]);
    ck_assert_msg(took < 1000, "the stop took %llu ms", took);
    /* The first lookup ran; the queued ones were cancelled, by on_close or by the loop's free. */
    ck_assert_int_le(atomic_load(&opens), 2);
}
END_TEST

int main(void) {
    Suite *s = suite_create("http_offload");
    TCase *tc = tu_tcase(s, "isolation", 60);
    tcase_add_loop_test(tc, test_pool_keeps_the_loop_responsive, 0, 2);
    tcase_add_test(tc, test_inline_lookups_stall_the_loop);
    tc = tu_tcase(s, "pool", 30);
    tcase_add_test(tc, test_full_queue_is_503);
    tcase_add_loop_test(tc, test_cached_lookups_stay_on_the_loop, 0, 2);
    tcase_add_test(tc, test_failed_open_is_500);
    tcase_add_test(tc, test_pipelined_answers_keep_their_order);
    tcase_add_test(tc, test_close_and_stop_with_lookups_in_flight);
    return tu_main(s);
}
