/* rx_master and the worker side of its protocol: workers serve on the sockets they inherit, one
 * that dies is restarted (at once, or after a back-off that doubles when it dies young), one that
 * never gets ready or ignores SIGTERM is killed, a reload replaces every worker without a
 * connection refused and keeps the old ones when the new ones fail, and a stop reaps them all.
 * Plus rx_listener_adopt, rx_server's listen_fds and the LISTEN_FDS variables.
 *
 * The workers are this test program again: with RX_WORKER set, main runs worker_main instead of
 * the suite. TEST_WORKER picks what the worker does: "serve" (each connection gets the worker's
 * pid and a newline, then an echo), "exit3" (exits with status 3 at once), "never-ready" (serves
 * but never calls rx_worker_ready), "deaf" (serves and ignores SIGTERM). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rx/rx.h>

#include "testutil.h"

/* ---- the worker ---- */

struct worker_state {
    rx_loop *loop;
    rx_server *server;
};

static void w_open(rx_conn *c, void *arg) {
    (void)arg;
    char line[32];
    int n = snprintf(line, sizeof(line), "%d\n", (int)getpid());
    rx_conn_send(c, line, (size_t)n);
}

static void w_data(rx_conn *c, rx_buffer *in, void *arg) {
    (void)arg;
    rx_conn_send(c, rx_buffer_peek(in), rx_buffer_len(in));
    rx_buffer_consume(in, rx_buffer_len(in));
}

static const rx_conn_callbacks worker_cbs = {.on_open = w_open, .on_data = w_data};

static void w_stopped(void *arg) {
    struct worker_state *w = arg;
    rx_loop_stop(w->loop);
}

static void w_term(rx_signal *sig, int signo, void *arg) {
    (void)sig;
    (void)signo;
    struct worker_state *w = arg;
    rx_server_stop(w->server, 1000, w_stopped, w);
}

static int worker_main(void) {
    const char *mode = getenv("TEST_WORKER");
    if (!mode || !strcmp(mode, "exit3"))
        return 3;
    int fds[4];
    int n = rx_worker_listen_fds(fds, 4);
    struct worker_state w = {.loop = rx_loop_new()};
    if (n != 1 || !w.loop)
        return 4;
    w.server = rx_server_new(
        w.loop, &(rx_server_opts){.listen_fds = fds, .nlisten_fds = 1, .cbs = &worker_cbs});
    if (!w.server)
        return 5;
    if (strcmp(mode, "deaf") && !rx_signal_new(w.loop, SIGTERM, w_term, &w))
        return 6;
    if (!strcmp(mode, "deaf"))
        signal(SIGTERM, SIG_IGN);
    if (strcmp(mode, "never-ready") && rx_worker_ready() < 0)
        return 7;
    int rc = rx_loop_run(w.loop);
    rx_server_free(w.server);
    rx_loop_free(w.loop);
    return rc < 0 ? 8 : 0;
}

/* ---- the master's side ---- */

#define MAX_EVENTS 256

static rx_worker_info events[MAX_EVENTS];
static int nevents;
static bool stopped;

static void on_worker(rx_master *m, const rx_worker_info *info, void *arg) {
    (void)m;
    (void)arg;
    ck_assert_int_lt(nevents, MAX_EVENTS);
    events[nevents++] = *info;
}

static void on_stopped(void *arg) { *(bool *)arg = true; }

static char *worker_argv[] = {"test-master-worker", NULL};

static rx_master_opts base_opts(unsigned workers) {
    return (rx_master_opts){
        .listen = "127.0.0.1:0", .workers = workers, .argv = worker_argv, .on_worker = on_worker};
}

static rx_master *start(rx_loop *loop, const rx_master_opts *o, const char *mode) {
    nevents = 0;
    stopped = false;
    setenv("TEST_WORKER", mode, 1);
    rx_master *m = rx_master_new(loop, o);
    ck_assert_msg(m, "rx_master_new: %s", strerror(errno));
    return m;
}

static int count(rx_worker_event ev) {
    int n = 0;
    for (int i = 0; i < nevents; i++)
        n += events[i].event == ev;
    return n;
}

struct want {
    rx_worker_event ev;
    int n;
};

static bool reached(void *arg) {
    const struct want *w = arg;
    return count(w->ev) >= w->n;
}

/* Runs the master's loop until n events of kind ev have been seen (at most 10 s). */
static void wait_events(rx_loop *loop, rx_worker_event ev, int n) {
    struct want w = {ev, n};
    ck_assert_msg(tu_run_until_fn(loop, reached, &w, 10000, 10),
                  "%d events of kind %d after 10 s, wanted %d", count(ev), ev, n);
}

static int port_of(const rx_master *m) {
    const rx_addr *a = rx_master_addr(m);
    return ntohs(a->u.in.sin_port);
}

/* A new connection's worker: the pid it sends first, then an echo through it. 0: refused, reset
 * or silent for 3 s. */
static pid_t served_by(int port) {
    int fd = tu_tcp_connect(port, false);
    if (fd < 0)
        return 0;
    char buf[64];
    size_t len = 0;
    pid_t pid = 0;
    while (len < sizeof(buf) - 1 && tu_poll(fd, POLLIN, 3000)) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        if (strchr(buf, '\n')) {
            pid = (pid_t)atoi(buf);
            break;
        }
    }
    if (pid > 0 && (write(fd, "ping", 4) != 4 || !tu_poll(fd, POLLIN, 3000) ||
                    read(fd, buf, sizeof(buf)) != 4 || memcmp(buf, "ping", 4)))
        pid = 0;
    close(fd);
    return pid;
}

/* The pid of the latest event of kind ev for slot (0: none). */
static pid_t latest(rx_worker_event ev, unsigned slot) {
    for (int i = nevents - 1; i >= 0; i--)
        if (events[i].event == ev && events[i].slot == slot)
            return events[i].pid;
    return 0;
}

static void stop_all(rx_loop *loop, rx_master *m) {
    rx_master_stop(m, on_stopped, &stopped);
    ck_assert(tu_run_until(loop, &stopped, 10000));
    ck_assert_uint_eq(rx_master_alive(m), 0);
    rx_master_free(m);
    rx_loop_free(loop);
}

START_TEST(test_workers_serve_then_stop) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(2);
    rx_master *m = start(loop, &o, "serve");
    wait_events(loop, RX_WORKER_READY, 2);
    ck_assert_uint_eq(rx_master_alive(m), 2);
    pid_t a = latest(RX_WORKER_READY, 0), b = latest(RX_WORKER_READY, 1);
    ck_assert(a > 0 && b > 0 && a != b);
    int seen_a = 0, seen_b = 0;
    for (int i = 0; i < 40; i++) {
        pid_t p = served_by(port_of(m));
        ck_assert_msg(p == a || p == b, "connection %d served by %d", i, (int)p);
        seen_a += p == a;
        seen_b += p == b;
    }
    ck_assert_msg(seen_a && seen_b, "one worker took all 40 connections");
    rx_master_stop(m, on_stopped, &stopped);
    ck_assert(tu_run_until(loop, &stopped, 10000));
    ck_assert_int_eq(count(RX_WORKER_STOPPING), 2);
    ck_assert_int_eq(count(RX_WORKER_EXITED), 2);
    for (int i = 0; i < nevents; i++)
        if (events[i].event == RX_WORKER_EXITED) {
            ck_assert(events[i].expected);
            ck_assert(WIFEXITED(events[i].status) && WEXITSTATUS(events[i].status) == 0);
            ck_assert_int_eq(events[i].restart_ms, -1);
        }
    rx_master_free(m);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_killed_worker_is_replaced) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(1);
    o.backoff_min_ms = 50;
    rx_master *m = start(loop, &o, "serve");
    wait_events(loop, RX_WORKER_READY, 1);
    pid_t first = latest(RX_WORKER_READY, 0);
    tu_run_for(loop, 1100); /* it lived long: restarted at once */
    ck_assert_int_eq(kill(first, SIGKILL), 0);
    wait_events(loop, RX_WORKER_READY, 2);
    const rx_worker_info *ex = NULL;
    for (int i = 0; i < nevents; i++)
        if (events[i].event == RX_WORKER_EXITED)
            ex = &events[i];
    ck_assert_ptr_nonnull(ex);
    ck_assert(!ex->expected && WIFSIGNALED(ex->status) && WTERMSIG(ex->status) == SIGKILL);
    ck_assert_int_eq(ex->restart_ms, 0);
    pid_t second = latest(RX_WORKER_READY, 0);
    ck_assert(second > 0 && second != first);
    ck_assert_int_eq(served_by(port_of(m)), second);
    /* Killed young: the back-off's first step. */
    ck_assert_int_eq(kill(second, SIGKILL), 0);
    wait_events(loop, RX_WORKER_READY, 3);
    ck_assert_int_eq(events[nevents - 3].event, RX_WORKER_EXITED);
    ck_assert_int_eq(events[nevents - 3].restart_ms, 50);
    ck_assert_int_eq(served_by(port_of(m)), latest(RX_WORKER_READY, 0));
    stop_all(loop, m);
}
END_TEST

START_TEST(test_crashing_worker_backs_off) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(1);
    o.backoff_min_ms = 10;
    o.backoff_max_ms = 40;
    rx_master *m = start(loop, &o, "exit3");
    wait_events(loop, RX_WORKER_EXITED, 5);
    int64_t want[] = {10, 20, 40, 40, 40};
    int k = 0;
    for (int i = 0; i < nevents && k < 5; i++)
        if (events[i].event == RX_WORKER_EXITED) {
            ck_assert(WIFEXITED(events[i].status) && WEXITSTATUS(events[i].status) == 3);
            ck_assert(!events[i].expected);
            ck_assert_int_eq(events[i].restart_ms, want[k++]);
        }
    stop_all(loop, m);
}
END_TEST

START_TEST(test_worker_never_ready_is_killed) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(1);
    o.ready_timeout_ms = 200;
    rx_master *m = start(loop, &o, "never-ready");
    wait_events(loop, RX_WORKER_EXITED, 1);
    ck_assert_int_eq(count(RX_WORKER_READY), 0);
    ck_assert_int_eq(count(RX_WORKER_KILLED), 1);
    const rx_worker_info *ex = &events[nevents - 1];
    ck_assert(WIFSIGNALED(ex->status) && WTERMSIG(ex->status) == SIGKILL);
    ck_assert_int_ge(ex->restart_ms, 0);
    stop_all(loop, m);
}
END_TEST

struct reload_watch {
    rx_loop *loop;
    int port, served, refused;
};

/* Between the master's iterations: one more connection, which must be served by some worker. */
static bool reload_done(void *arg) {
    struct reload_watch *r = arg;
    if (served_by(r->port) > 0)
        r->served++;
    else
        r->refused++;
    return count(RX_WORKER_EXITED) >= 2 && count(RX_WORKER_READY) >= 4;
}

START_TEST(test_reload_replaces_every_worker_refusing_nothing) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(2);
    rx_master *m = start(loop, &o, "serve");
    wait_events(loop, RX_WORKER_READY, 2);
    pid_t old[2] = {latest(RX_WORKER_READY, 0), latest(RX_WORKER_READY, 1)};
    ck_assert_int_eq(rx_master_reload(m), 0);
    struct reload_watch r = {.loop = loop, .port = port_of(m)};
    ck_assert(tu_run_until_fn(loop, reload_done, &r, 10000, 1));
    ck_assert_int_eq(r.refused, 0);
    ck_assert_int_gt(r.served, 0);
    for (int i = 0; i < nevents; i++) {
        bool was_old = events[i].pid == old[0] || events[i].pid == old[1];
        if (events[i].event == RX_WORKER_READY)
            ck_assert_uint_eq(events[i].generation, was_old ? 0 : 1);
        if (events[i].event == RX_WORKER_EXITED) {
            ck_assert(was_old);
            ck_assert(events[i].expected && WIFEXITED(events[i].status) &&
                      WEXITSTATUS(events[i].status) == 0);
            ck_assert_int_eq(events[i].restart_ms, -1);
        }
    }
    /* Only the new generation serves now. */
    for (int i = 0; i < 10; i++) {
        pid_t p = served_by(r.port);
        ck_assert(p == latest(RX_WORKER_READY, 0) || p == latest(RX_WORKER_READY, 1));
        ck_assert(p != old[0] && p != old[1]);
    }
    stop_all(loop, m);
}
END_TEST

START_TEST(test_failed_reload_keeps_the_old_workers) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(1);
    rx_master *m = start(loop, &o, "serve");
    wait_events(loop, RX_WORKER_READY, 1);
    pid_t old = latest(RX_WORKER_READY, 0);
    setenv("TEST_WORKER", "exit3", 1);
    ck_assert_int_eq(rx_master_reload(m), 0);
    wait_events(loop, RX_WORKER_EXITED, 1);
    const rx_worker_info *ex = &events[nevents - 1];
    ck_assert_uint_eq(ex->generation, 1);
    ck_assert(!ex->expected && WIFEXITED(ex->status) && WEXITSTATUS(ex->status) == 3);
    ck_assert_int_eq(ex->restart_ms, -1);
    tu_run_for(loop, 200);
    ck_assert_int_eq(count(RX_WORKER_STOPPING), 0);
    ck_assert_uint_eq(rx_master_alive(m), 1);
    ck_assert_int_eq(served_by(port_of(m)), old);
    stop_all(loop, m);
}
END_TEST

START_TEST(test_stop_kills_a_worker_that_ignores_sigterm) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(1);
    o.stop_timeout_ms = 300;
    rx_master *m = start(loop, &o, "deaf");
    wait_events(loop, RX_WORKER_READY, 1);
    unsigned long long t0 = tu_now_ms();
    rx_master_stop(m, on_stopped, &stopped);
    ck_assert(tu_run_until(loop, &stopped, 5000));
    ck_assert_uint_ge(tu_now_ms() - t0, 250);
    ck_assert_int_eq(count(RX_WORKER_KILLED), 1);
    const rx_worker_info *ex = &events[nevents - 1];
    ck_assert(ex->event == RX_WORKER_EXITED && ex->expected);
    ck_assert(WIFSIGNALED(ex->status) && WTERMSIG(ex->status) == SIGKILL);
    rx_master_stop(m, on_stopped, &stopped); /* a second stop changes nothing */
    rx_master_free(m);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_bad_options) {
    rx_loop *loop = rx_loop_new();
    rx_master_opts o = base_opts(0);
    errno = 0;
    ck_assert_ptr_null(rx_master_new(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    o = base_opts(1);
    o.argv = NULL;
    ck_assert_ptr_null(rx_master_new(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    o = base_opts(1);
    o.listen = "unix:/tmp/rx-test-master.sock";
    ck_assert_ptr_null(rx_master_new(loop, &o));
    ck_assert_int_eq(errno, EAFNOSUPPORT);
    o = base_opts(1);
    o.listen = "not an address";
    ck_assert_ptr_null(rx_master_new(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    o = base_opts(1);
    o.sockets_per_worker = RX_MASTER_MAX_SOCKETS + 1;
    ck_assert_ptr_null(rx_master_new(loop, &o));
    ck_assert_int_eq(errno, EINVAL);
    /* A port another socket holds without SO_REUSEPORT. */
    int port, busy = tu_tcp_listen(8, &port);
    char addr[32];
    tu_addr(addr, sizeof(addr), port);
    o = base_opts(1);
    o.listen = addr;
    ck_assert_ptr_null(rx_master_new(loop, &o));
    ck_assert_int_eq(errno, EADDRINUSE);
    close(busy);
    rx_loop_free(loop);
}
END_TEST

START_TEST(test_listen_fds_variables) {
    int fds[2];
    unsetenv("LISTEN_FDS");
    ck_assert_int_eq(rx_worker_listen_fds(fds, 2), 0);
    ck_assert_int_eq(rx_worker_slot(), -1);
    ck_assert_int_eq(rx_worker_ready(), 0); /* no master: nothing to tell */
    setenv("LISTEN_FDS", "x1", 1);
    ck_assert_int_eq(rx_worker_listen_fds(fds, 2), -EINVAL);
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", pid, 1);
    ck_assert_int_eq(rx_worker_listen_fds(fds, 2), 0); /* another process's */
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", "3", 1);
    ck_assert_int_eq(rx_worker_listen_fds(fds, 2), -E2BIG);
    ck_assert_ptr_nonnull(getenv("LISTEN_FDS")); /* an error takes nothing */
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
}
END_TEST

static void accept_count(rx_listener *l, int fd, const rx_addr *peer, void *arg) {
    (void)l;
    (void)peer;
    close(fd);
    ++*(int *)arg;
}

START_TEST(test_adopt_checks_the_socket) {
    rx_loop *loop = rx_loop_new();
    int p[2], accepted = 0;
    ck_assert_int_eq(pipe(p), 0);
    ck_assert_ptr_null(rx_listener_adopt(loop, p[0], NULL, accept_count, &accepted));
    ck_assert_int_eq(errno, ENOTSOCK);
    ck_assert(tu_fd_closed(p[0])); /* owned from the call on */
    close(p[1]);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_ptr_null(rx_listener_adopt(loop, s, NULL, accept_count, &accepted));
    ck_assert_int_eq(errno, EINVAL); /* not listening */
    ck_assert(tu_fd_closed(s));
    ck_assert_ptr_null(rx_listener_adopt(loop, -1, NULL, accept_count, &accepted));
    ck_assert_int_eq(errno, EBADF);
    int port, lfd = tu_tcp_listen(8, &port);
    rx_listener *l = rx_listener_adopt(loop, lfd, NULL, accept_count, &accepted);
    ck_assert_ptr_nonnull(l);
    ck_assert_int_eq(ntohs(rx_listener_addr(l)->u.in.sin_port), port);
    ck_assert(fcntl(lfd, F_GETFL) & O_NONBLOCK);
    int c = tu_tcp_connect(port, false);
    ck_assert(tu_run_until_count(loop, &accepted, 1, 2000));
    close(c);
    rx_listener_free(l);
    /* A server given the wrong number of sockets closes them all. */
    int a = tu_tcp_listen(8, &port), b = tu_tcp_listen(8, &port);
    int two[2] = {a, b};
    ck_assert_ptr_null(rx_server_new(loop, &(rx_server_opts){.listen_fds = two, .nlisten_fds = 2}));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert(tu_fd_closed(a) && tu_fd_closed(b));
    rx_loop_free(loop);
}
END_TEST

int main(void) {
    if (rx_worker_slot() >= 0)
        return worker_main();
    Suite *s = suite_create("master");
    TCase *tc = tu_tcase(s, "workers", 60);
    tcase_add_test(tc, test_workers_serve_then_stop);
    tcase_add_test(tc, test_killed_worker_is_replaced);
    tcase_add_test(tc, test_crashing_worker_backs_off);
    tcase_add_test(tc, test_worker_never_ready_is_killed);
    tcase_add_test(tc, test_reload_replaces_every_worker_refusing_nothing);
    tcase_add_test(tc, test_failed_reload_keeps_the_old_workers);
    tcase_add_test(tc, test_stop_kills_a_worker_that_ignores_sigterm);
    tc = tu_tcase(s, "api", 30);
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_listen_fds_variables);
    tcase_add_test(tc, test_adopt_checks_the_socket);
    return tu_main(s);
}
