/* rx-http's session under failures: a response that cannot be queued whole aborts the
 * connection, so the client never gets a head without its body or a body without its head (issue
 * 9 item 12); a file lookup that fails for the server's reasons is a 500. The session runs on a
 * real loop over a socketpair, with the syscall layer's entries swapped. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http_server.h"
#include "sys.h"
#include "testutil.h"

/* Fails every allocation at least this big: the output scratch buffer's first growth. */
#define FAIL_FROM (128 * 1024)

static void *big_fails_realloc(void *p, size_t n) { return n >= FAIL_FROM ? NULL : realloc(p, n); }
static void *big_fails_malloc(size_t n) { return n >= FAIL_FROM ? NULL : malloc(n); }

static http_server srv;

static void server_init(rx_loop *loop) {
    memset(&srv, 0, sizeof(srv));
    srv.cfg = (http_config){.max_header_bytes = 16384,
                            .max_body_bytes = 1 << 20,
                            .backpressure = true,
                            .batch = true,
                            .date_cache = true,
                            .sendfile = true};
    srv.loop = loop;
    srv.root_fd = -1;
    srv.log_fd = -1;
    http_session_setup(&srv);
}

/* Checks that buf[0..n) is a run of complete "200 Hello, World!" responses; returns how many. */
static int complete_responses(const char *buf, size_t n) {
    int count = 0;
    size_t at = 0;
    while (at < n) {
        const char *end = NULL;
        for (size_t i = at; i + 4 <= n && !end; i++)
            if (memcmp(buf + i, "\r\n\r\n", 4) == 0)
                end = buf + i;
        ck_assert_msg(end, "a response head was cut after %d responses", count);
        ck_assert_msg(strncmp(buf + at, "HTTP/1.1 200 OK\r\n", 17) == 0,
                      "bytes that are not a status line after %d responses", count);
        size_t body = (size_t)(end - buf) + 4;
        ck_assert_msg(body + 13 <= n && memcmp(buf + body, "Hello, World!", 13) == 0,
                      "a head without its body after %d responses", count);
        at = body + 13;
        count++;
    }
    return count;
}

START_TEST(test_enomem_aborts_instead_of_a_broken_stream) {
    rx_loop *loop = rx_loop_new();
    server_init(loop);
    int sv[2];
    tu_socketpair(sv);
    int big = 4 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    rx_conn *c = rx_conn_new(loop, sv[0], &(rx_conn_opts){.high_water = 8 << 20},
                             &http_session_callbacks, &srv);
    ck_assert_ptr_nonnull(c);
    /* Enough pipelined requests that their answers outgrow the 64 KiB output scratch buffer. */
    static const char req[] = "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n";
    size_t n = 1000 * (sizeof(req) - 1);
    char *reqs = malloc(n);
    ck_assert_ptr_nonnull(reqs);
    for (size_t i = 0; i < 1000; i++)
        memcpy(reqs + i * (sizeof(req) - 1), req, sizeof(req) - 1);
    ck_assert_int_eq(write(sv[1], reqs, n), (ssize_t)n);
    rx_sys.realloc = big_fails_realloc;
    rx_sys.malloc = big_fails_malloc;
    char *got = malloc(1 << 20);
    ck_assert_ptr_nonnull(got);
    size_t len = 0;
    bool ended = false;
    unsigned long long t0 = tu_now_ms();
    while (!ended && tu_now_ms() - t0 < 3000) {
        rx_loop_run_once(loop, 10);
        ssize_t r;
        while ((r = read(sv[1], got + len, (1 << 20) - len)) > 0)
            len += (size_t)r;
        ended = r == 0 || (r < 0 && errno != EAGAIN);
    }
    rx_sys_reset();
    ck_assert_msg(ended, "the connection neither ended nor answered every request (%zu bytes)",
                  len);
    int count = complete_responses(got, len);
    ck_assert_int_lt(count, 1000); /* the allocation did fail on the way */
    free(got);
    free(reqs);
    close(sv[1]);
    rx_loop_free(loop);
    http_session_cleanup(&srv);
}
END_TEST

static int fstat_fails(int fd, struct stat *st) {
    (void)fd;
    (void)st;
    errno = ENOMEM;
    return -1;
}

/* Sends one request on fd and returns the first line of the answer (in line, cap bytes). */
static void ask(rx_loop *loop, int fd, const char *req, char *line, size_t cap) {
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    char got[4096];
    size_t len = 0;
    unsigned long long t0 = tu_now_ms();
    while (!memmem(got, len, "\r\n", 2) && tu_now_ms() - t0 < 3000) {
        rx_loop_run_once(loop, 10);
        ssize_t r = read(fd, got + len, sizeof(got) - len);
        if (r > 0)
            len += (size_t)r;
    }
    char *eol = memmem(got, len, "\r\n", 2);
    ck_assert_msg(eol, "no answer to %s", req);
    snprintf(line, cap, "%.*s", (int)(eol - got), got);
    /* The rest of the answer (a small body) is read by the next call or dropped with fd. */
}

/* Writes text to dir/name. */
static void put_file(const char *dir, const char *name, const char *text) {
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert(f && fputs(text, f) >= 0 && fclose(f) == 0);
}

/* A file that exists but cannot be stat'ed is the server's trouble (500), not a 403: the fault
 * schedules (test_faults) saw a failed fstat answered as if the client were not allowed. */
START_TEST(test_failed_fstat_is_500) {
    char dir[] = "/tmp/rx-http-session-XXXXXX", path[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/f.txt", dir);
    put_file(dir, "f.txt", "file\n");
    rx_loop *loop = rx_loop_new();
    server_init(loop);
    srv.root_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(srv.root_fd, 0);
    int sv[2];
    tu_socketpair(sv);
    ck_assert_ptr_nonnull(rx_conn_new(loop, sv[0], NULL, &http_session_callbacks, &srv));
    char line[128];
    rx_sys.fstat = fstat_fails;
    ask(loop, sv[1], "GET /f.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", line,
        sizeof(line));
    rx_sys_reset();
    ck_assert_str_eq(line, "HTTP/1.1 500 Internal Server Error");
    close(sv[1]);
    tu_socketpair(sv);
    ck_assert_ptr_nonnull(rx_conn_new(loop, sv[0], NULL, &http_session_callbacks, &srv));
    ask(loop, sv[1], "GET /f.txt HTTP/1.1\r\nHost: t\r\n\r\n", line, sizeof(line));
    ck_assert_str_eq(line, "HTTP/1.1 200 OK");
    close(sv[1]);
    rx_loop_free(loop);
    http_session_cleanup(&srv);
    close(srv.root_fd);
    unlink(path);
    rmdir(dir);
}
END_TEST

static int openat2_unknown(int dirfd, const char *path, const struct open_how *how) {
    (void)dirfd;
    (void)path;
    (void)how;
    errno = ENOSYS;
    return -1;
}

/* Without openat2 (Linux before 5.6, valgrind) files are still served, one component at a time,
 * and no symlink is followed: not one that leaves the root, nor one that stays beneath it. */
START_TEST(test_lookup_without_openat2) {
    char dir[] = "/tmp/rx-http-session-XXXXXX", path[128], target[128];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/sub", dir);
    ck_assert_int_eq(mkdir(path, 0700), 0);
    put_file(dir, "index.html", "home\n");
    put_file(dir, "sub/f.txt", "file\n");
    const char *links[][2] = {{"sub/f.txt", "link.txt"}, {"sub", "ldir"}, {"/etc", "out"}};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, links[i][1]);
        snprintf(target, sizeof(target), "%s%s%s", links[i][0][0] == '/' ? "" : dir,
                 links[i][0][0] == '/' ? "" : "/", links[i][0]);
        ck_assert_int_eq(symlink(target, path), 0);
    }
    rx_loop *loop = rx_loop_new();
    server_init(loop);
    srv.root_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(srv.root_fd, 0);
    rx_sys.openat2 = openat2_unknown;
    const struct {
        const char *target, *status;
    } cases[] = {
        {"/sub/f.txt", "200 OK"},          {"/", "200 OK"},
        {"/sub//f.txt", "200 OK"},         {"/link.txt", "403 Forbidden"},
        {"/ldir/f.txt", "403 Forbidden"},  {"/out/passwd", "403 Forbidden"},
        {"/nope", "404 Not Found"},        {"/sub/nope/x", "404 Not Found"},
        {"/sub/f.txt/x", "404 Not Found"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int sv[2];
        tu_socketpair(sv);
        ck_assert_ptr_nonnull(rx_conn_new(loop, sv[0], NULL, &http_session_callbacks, &srv));
        char req[128], line[128], want[64];
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                 cases[i].target);
        ask(loop, sv[1], req, line, sizeof(line));
        snprintf(want, sizeof(want), "HTTP/1.1 %s", cases[i].status);
        ck_assert_msg(strcmp(line, want) == 0, "%s: %s", cases[i].target, line);
        close(sv[1]);
    }
    rx_sys_reset();
    rx_loop_free(loop);
    http_session_cleanup(&srv);
    close(srv.root_fd);
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, links[i][1]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/sub/f.txt", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/sub", dir);
    rmdir(path);
    snprintf(path, sizeof(path), "%s/index.html", dir);
    unlink(path);
    rmdir(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("http_session");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_enomem_aborts_instead_of_a_broken_stream);
    tcase_add_test(tc, test_failed_fstat_is_500);
    tcase_add_test(tc, test_lookup_without_openat2);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
