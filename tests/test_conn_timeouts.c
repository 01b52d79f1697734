/* rx_conn's read and write timeouts (issue 12): each watches one direction and runs only while
 * that direction can move (reading on; output queued), on_timeout says which one passed, and
 * neither outlives a close. Also: bytes a closing connection drops do not extend its deadline. */
#include <check.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

/* Callbacks that trace, with on_timeout (the connection then stays open). */
static const rx_conn_callbacks with_timeout = {
    .on_data = tu_tr_data, .on_timeout = tu_tr_timeout, .on_close = tu_tr_close};

/* Silence: the read timeout passes, and with no on_timeout the connection closes. */
START_TEST(test_read_timeout_closes_a_silent_conn) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.read_timeout_ms = 60};
    rx_conn *c = tu_conn_pair(loop, false, &o, &tu_tr_cbs, &t, &b);
    (void)c;
    unsigned long long t0 = rx_loop_now_ms(loop); /* the timer counts from the cached time */
    tu_tr_wait_close(loop, &t, 2000, RX_CLOSE_TIMEOUT);
    ck_assert_int_eq(t.err, -ETIMEDOUT);
    ck_assert_uint_ge(t.close_ms - t0, 50);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* Writing is no reading: a connection that only sends (the peer reads all) still times out for
 * not reading, unlike with the idle timeout (test_idle_timeout_writes_keep_alive). Bytes that
 * arrive keep it alive. */
START_TEST(test_read_timeout_ignores_writes_and_restarts_on_reads) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn *c = tu_conn_pair(loop, false, NULL, &with_timeout, &t, &b);
    ck_assert_int_eq(rx_conn_set_timeouts(c, 80, 0), 0);
    tu_peer p;
    tu_peer_init(&p, b, false);
    /* 300 ms of the peer sending a byte every 30 ms: no timeout. */
    unsigned long long start = tu_now_ms(), last = 0;
    while (tu_now_ms() - start < 300) {
        if (tu_now_ms() - last >= 30) {
            ck_assert_int_eq(write(b, "r", 1), 1);
            last = tu_now_ms();
        }
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    }
    ck_assert_int_eq(t.timeouts, 0);
    ck_assert_uint_ge(rx_buffer_len(&t.in), 5);
    /* Now we only write: the read timeout passes (on_timeout, the connection stays open). */
    start = tu_now_ms();
    while (t.timeouts == 0 && tu_now_ms() - start < 2000) {
        ck_assert_int_eq(rx_conn_send(c, "w", 1), 0);
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
        tu_peer_read(&p);
    }
    ck_assert_int_eq(t.timeouts, 1);
    ck_assert_int_eq(t.timeout_kinds[RX_TIMEOUT_READ], 1);
    ck_assert_uint_ge(tu_now_ms() - start, 40); /* 80 ms from the last byte, <= 30 ms before */
    ck_assert_int_eq(t.closes, 0);
    /* on_timeout let it live: the timeout started over and passes again. */
    tu_run_for(loop, 200);
    ck_assert_int_ge(t.timeout_kinds[RX_TIMEOUT_READ], 2);
    ck_assert_int_eq(t.timeout_kinds[RX_TIMEOUT_WRITE] + t.timeout_kinds[RX_TIMEOUT_IDLE], 0);
    tu_peer_free(&p);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* A connection paused for backpressure is not timed out for not reading; resumed, the timeout
 * counts from the resume. */
START_TEST(test_read_timeout_sleeps_while_paused) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.read_timeout_ms = 50};
    rx_conn *c = tu_conn_pair(loop, false, &o, &tu_tr_cbs, &t, &b);
    rx_conn_pause_read(c);
    tu_run_for(loop, 300);
    ck_assert_int_eq(t.closes, 0);
    rx_conn_resume_read(c);
    unsigned long long resumed = rx_loop_now_ms(loop);
    tu_tr_wait_close(loop, &t, 2000, RX_CLOSE_TIMEOUT);
    ck_assert_uint_ge(t.close_ms - resumed, 40);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* The write timeout runs only while output waits: a connection with nothing queued never times out
 * for not writing; one whose peer stopped reading does, although the peer keeps sending (reads
 * are no write progress). _i 0: on_timeout hears RX_TIMEOUT_WRITE and the connection stays;
 * _i 1: without on_timeout it closes. */
START_TEST(test_write_timeout_only_while_output_waits) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.write_timeout_ms = 100};
    rx_conn *c = tu_conn_pair(loop, true, &o, _i ? &tu_tr_cbs : &with_timeout, &t, &b);
    tu_run_for(loop, 300);
    ck_assert_int_eq(t.timeouts + t.closes, 0);
    ck_assert_int_eq(tu_send_pattern(c, 0, 4 * MiB), 0);
    ck_assert_uint_gt(rx_conn_queued(c), 0);
    unsigned long long queued_at = tu_now_ms();
    while (t.timeouts + t.closes == 0 && tu_now_ms() - queued_at < 3000) {
        ck_assert_int_eq(write(b, "x", 1), 1); /* the peer talks, but never reads */
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    }
    ck_assert_uint_ge(tu_now_ms() - queued_at, 90);
    if (_i == 0) {
        ck_assert_int_eq(t.timeout_kinds[RX_TIMEOUT_WRITE], 1);
        ck_assert_int_eq(t.timeout_kinds[RX_TIMEOUT_READ] + t.timeout_kinds[RX_TIMEOUT_IDLE], 0);
        ck_assert_uint_gt(rx_buffer_len(&t.in), 0);
        ck_assert_int_eq(t.closes, 0);
    } else {
        tu_tr_wait_close(loop, &t, 100, RX_CLOSE_TIMEOUT);
        ck_assert_int_eq(t.err, -ETIMEDOUT);
    }
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* A slow but steady reader keeps the write timeout from passing: it counts from the last write
 * progress, not from when the output was queued. Once the queue is empty the timer stops. */
START_TEST(test_write_timeout_spares_a_slow_reader) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.write_timeout_ms = 150};
    rx_conn *c = tu_conn_pair(loop, true, &o, &tu_tr_cbs, &t, &b);
    const size_t total = MiB;
    ck_assert_int_eq(tu_send_pattern(c, 0, total), 0);
    static char buf[32 * KiB];
    size_t n = 0;
    unsigned long long t0 = tu_now_ms(), next = t0;
    while (n < total && t.closes == 0 && tu_now_ms() - t0 < 20000) {
        if (tu_now_ms() >= next) { /* 32 KiB every 40 ms: about 1 s for the whole MiB */
            ssize_t r = recv(b, buf, sizeof(buf), MSG_DONTWAIT);
            if (r > 0)
                n += (size_t)r;
            next += 40;
        }
        ck_assert_int_ge(rx_loop_run_once(loop, 5), 0);
    }
    ck_assert_int_eq(t.closes, 0);
    ck_assert_uint_eq(n, total);
    ck_assert_uint_ge(tu_now_ms() - t0, 3 * 150); /* it outlived the timeout several times */
    tu_run_for(loop, 300);                        /* nothing queued: no timeout */
    ck_assert_int_eq(t.closes, 0);
    ck_assert_int_eq(rx_conn_set_timeouts(c, 0, 0), 0);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* Neither timeout runs once a close is under way (the close deadline bounds it), and neither can
 * be set then. */
START_TEST(test_timeouts_stop_at_close) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.read_timeout_ms = 30, .write_timeout_ms = 30, .close_timeout_ms = 400};
    rx_conn *c = tu_conn_pair(loop, true, &o, &with_timeout, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 4 * MiB), 0);
    rx_loop_update_time(loop);
    unsigned long long t0 = tu_now_ms();
    rx_conn_close(c);
    ck_assert_int_eq(rx_conn_set_timeouts(c, 10, 10), -EPIPE);
    tu_tr_wait_close(loop, &t, 3000, RX_CLOSE_TIMEOUT); /* the close deadline, not 30 ms */
    ck_assert_int_eq(t.timeouts, 0);
    ck_assert_uint_ge(t.close_ms - t0, 350);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

/* A peer that keeps sending but never reads cannot hold a close open: what it sends is read and
 * dropped, which is no progress of the close, so the deadline passes and the close is aborted. */
START_TEST(test_dropped_input_does_not_extend_the_close_deadline) {
    rx_loop *loop = rx_loop_new();
    tu_tr t = {0};
    int b;
    rx_conn_opts o = {.close_timeout_ms = 200};
    rx_conn *c = tu_conn_pair(loop, true, &o, &tu_tr_cbs, &t, &b);
    ck_assert_int_eq(tu_send_pattern(c, 0, 4 * MiB), 0);
    rx_loop_update_time(loop);
    unsigned long long t0 = tu_now_ms();
    rx_conn_close(c);
    while (t.closes == 0 && tu_now_ms() - t0 < 3000) {
        if (write(b, "talk", 4) < 0)
            break; /* reset: the close was aborted */
        ck_assert_int_ge(rx_loop_run_once(loop, 10), 0);
    }
    tu_tr_wait_close(loop, &t, 500, RX_CLOSE_TIMEOUT);
    ck_assert_uint_lt(t.close_ms - t0, 1500);
    close(b);
    tu_tr_free(&t);
    rx_loop_free(loop);
}
END_TEST

int main(void) {
    Suite *s = suite_create("conn_timeouts");
    TCase *tc = tu_tcase(s, "core", 30);
    tcase_add_test(tc, test_read_timeout_closes_a_silent_conn);
    tcase_add_test(tc, test_read_timeout_ignores_writes_and_restarts_on_reads);
    tcase_add_test(tc, test_read_timeout_sleeps_while_paused);
    tcase_add_loop_test(tc, test_write_timeout_only_while_output_waits, 0, 2);
    tcase_add_test(tc, test_write_timeout_spares_a_slow_reader);
    tcase_add_test(tc, test_timeouts_stop_at_close);
    tcase_add_test(tc, test_dropped_input_does_not_extend_the_close_deadline);
    return tu_main(s);
}
