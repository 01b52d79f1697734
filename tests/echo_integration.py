#!/usr/bin/env python3
"""Integration tests of rx-echo: the real binary on an ephemeral 127.0.0.1 port, driven by
echo-load and plain sockets. Usage: echo_integration.py RX_ECHO_BINARY ECHO_LOAD_BINARY"""
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

from appserver import (MEMCHECKED, AppServer, assert_rejected, exchange_concurrently,
                       server_end_open, skip_under_valgrind, slow_reader, watch_slow_readers)

# ASan and valgrind keep freed memory in quarantine, so RSS bounds are looser under them.
RSS_SLACK_KIB = 64 * 1024 if MEMCHECKED else 8 * 1024

ECHO = None
LOAD = None


class Server(AppServer):
    def __init__(self, *flags, nofile=None):
        super().__init__([ECHO, *flags], nofile=nofile)


class Echo(unittest.TestCase):
    def test_echo_load_100_conns_zero_mismatches(self):
        srv = Server()
        try:
            r = subprocess.run([LOAD, "--connect", srv.addr, "--conns", "100", "--size", "512",
                                "--mode", "pingpong", "--duration", "3"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            m = re.search(r"mismatch\w*[=: ]+(\d+)", r.stdout)
            self.assertIsNotNone(m, r.stdout)
            self.assertEqual(int(m.group(1)), 0)
            msgs = re.search(r"messages[=: ]+(\d+)", r.stdout)
            self.assertIsNotNone(msgs, r.stdout)
            self.assertGreater(int(msgs.group(1)), 1000)
        finally:
            rc, out, _ = srv.stop()
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"\d+ connections, \d+ bytes in, \d+ bytes out")

    @skip_under_valgrind("it keeps the soft open files limit for itself and refuses to raise it")
    def test_raises_open_files_limit_and_says_so(self):
        """Issue 9 item 16: started with the shell's usual soft limit, the demo raises it to the
        hard one and says so, instead of shedding past about 1,000 connections."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        soft = min(1024, hard)
        srv = Server(nofile=(soft, hard))
        try:
            self.assertIn("open files limit %d" % hard, srv.first_line)
            with open("/proc/%d/limits" % srv.proc.pid) as f:
                line = next(l for l in f if l.startswith("Max open files"))
            self.assertEqual(int(line.split()[3]), hard)
        finally:
            srv.stop()

    def test_shedding_is_reported(self):
        """Issue 9 item 16: when the process is out of fds, the listener sheds connections (the
        client sees its connection end at once) and the app warns, at most once a second."""
        srv = Server(nofile=(40, 40))
        socks = []
        try:
            for _ in range(60):
                socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
            ended = 0
            for s in socks[40:]:
                s.settimeout(2)
                try:
                    s.sendall(b"x")
                    ended += s.recv(1) == b""
                except (ConnectionResetError, BrokenPipeError):
                    ended += 1
            self.assertGreater(ended, 0)
        finally:
            for s in socks:
                s.close()
            _, _, err = srv.stop()
        warnings = re.findall(r"out of file descriptors: (\d+) connection", err)
        self.assertGreaterEqual(len(warnings), 1, err)
        self.assertLessEqual(len(warnings), 2, err)  # rate-limited: the test takes < 2 s

    def test_stream_mode_large_messages(self):
        srv = Server()
        try:
            r = subprocess.run([LOAD, "--connect", srv.addr, "--conns", "8", "--size", "65536",
                                "--mode", "stream", "--messages", "200"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        finally:
            srv.stop()

    def test_half_close_gets_everything_back_then_eof(self):
        srv = Server()
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            data = os.urandom(3 * 1024 * 1024)
            got = bytearray()

            def reader():
                while True:
                    b = s.recv(65536)
                    if not b:
                        return
                    got.extend(b)

            t = threading.Thread(target=reader)
            t.start()
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            t.join(20)
            self.assertFalse(t.is_alive(), "no EOF after the echo")
            self.assertEqual(bytes(got), data)
            s.close()
        finally:
            srv.stop()

    def test_client_that_never_reads_is_bounded(self):
        srv = Server()
        try:
            before = srv.rss_kib()
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.settimeout(0.5)
            chunk = b"x" * 65536
            sent = 0
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 5 and sent < 256 * 1024 * 1024:
                    sent += s.send(chunk)
            except socket.timeout:
                pass
            grown = srv.rss_kib() - before
            # The server paused reading once its queue passed the high-water mark (1 MiB), so
            # neither the bytes we could push nor its memory grew without bound.
            self.assertLess(sent, 32 * 1024 * 1024, "server kept reading")
            self.assertLess(grown, RSS_SLACK_KIB, "server RSS grew by %d KiB" % grown)
            # Another client is still served meanwhile.
            c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            c.sendall(b"ping")
            self.assertEqual(c.recv(4), b"ping")
            c.close()
            s.close()
        finally:
            srv.stop()

    def test_sigint_stops_gracefully(self):
        srv = Server()
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        c.sendall(b"hello")
        self.assertEqual(c.recv(5), b"hello")
        c.close()
        time.sleep(0.1)
        rc, out, err = srv.stop(signal.SIGINT)
        self.assertEqual(rc, 0, err)
        self.assertIn("1 connections, 5 bytes in, 5 bytes out", out)

    def test_tuned_server_still_echoes_every_byte(self):
        srv = Server("--tune", "edge,own-buffers,always-queue,nagle,accept-one")
        try:
            r = subprocess.run([LOAD, "--connect", srv.addr, "--conns", "20", "--size", "20000",
                                "--mode", "stream", "--messages", "50"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        finally:
            srv.stop()

    def test_bad_flags_exit_2(self):
        for args in (["--bogus"], ["--listen", "nowhere"], ["--max-conns", "-1"],
                     ["--idle-timeout", "x"], ["--tune", "warp-speed"], ["--threads", "x"],
                     ["--threads", "-1"], ["--threads", "1025"], ["--threads", ""],
                     ["--spread", "roundrobin"], ["--spread", ""]):
            r = subprocess.run([ECHO, *args], capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, args)
            self.assertTrue(r.stderr.strip(), args)

    def test_send_timeout_closes_a_slow_reader(self):
        """A client that sends 4 MiB to echo and reads the echoes a byte a second makes no write
        progress: with --send-timeout 1 the server closes it within a few seconds; without a
        send timeout it is still connected after the same time."""
        timed, untimed = Server("--send-timeout", "1"), Server("--send-timeout", "0")
        clients = []
        try:
            t0 = time.monotonic()
            for srv in (timed, untimed):
                s = slow_reader(srv.port)
                clients.append(s)
                s.settimeout(0.2)
                chunk, sent = b"x" * 65536, 0
                try:  # until the server stops reading (its echoes pile up) or closes
                    while sent < 4 * 1024 * 1024 and time.monotonic() - t0 < 3:
                        sent += s.send(chunk)
                except (socket.timeout, ConnectionResetError, BrokenPipeError):
                    pass
                self.assertGreater(sent, 1024 * 1024)
            closed_at, got = watch_slow_readers(t0, timed.port, clients[0], clients[1])
            self.assertIsNotNone(closed_at, "the slow reader is still connected after 8 s")
            self.assertLess(closed_at, 4)
            self.assertGreaterEqual(time.monotonic() - t0, max(closed_at, 4))
            self.assertTrue(server_end_open(untimed.port, clients[1]),
                            "closed without a send timeout")
            self.assertTrue(got.startswith(b"x"), got)
        finally:
            for s in clients:
                s.close()
            self.assertEqual(timed.stop()[0], 0)
            self.assertEqual(untimed.stop()[0], 0)

    def test_send_timeout_flag(self):
        r = subprocess.run([ECHO, "--help"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"--send-timeout SECONDS .*\n.*\(default 60, 0: never\)")
        assert_rejected(self, ECHO, "--send-timeout", ("x", "-1", "", "1.5", "9" * 20),
                        "--send-timeout wants whole seconds, got '%s'")

    def test_idle_timeout_closes_idle_client(self):
        srv = Server("--idle-timeout", "1")
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            t0 = time.monotonic()
            self.assertEqual(s.recv(1), b"")
            self.assertGreaterEqual(time.monotonic() - t0, 0.9)
            s.close()
        finally:
            srv.stop()

    def test_proxy_protocol_header_is_read_not_echoed(self):
        """With --proxy-protocol the header is the server's, never echoed: what follows it is;
        a connection without one is closed unanswered and counted at exit."""
        srv = Server("--proxy-protocol")
        try:
            self.assertIn("PROXY protocol", srv.first_line)
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 7000\r\nhello")
            self.assertEqual(s.recv(5), b"hello")
            s.close()
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"hello, no header\r\n")
            try:  # closed on unread bytes: a reset, or an EOF
                self.assertEqual(s.recv(100), b"")
            except ConnectionResetError:
                pass
            s.close()
            time.sleep(0.1)
        finally:
            rc, out, err = srv.stop()
        self.assertEqual(rc, 0, err)
        self.assertIn("1 connections, 5 bytes in, 5 bytes out", out)
        self.assertIn("1 connections closed for a missing, bad or late PROXY header", err)


class EchoThreads(unittest.TestCase):
    """--threads and --spread, whatever RX_TEST_THREADS says."""

    def test_200_clients_every_byte_on_4_threads_both_spreads(self):
        size = 64 * 1024
        for spread in ("handoff", "reuseport"):
            with self.subTest(spread=spread):
                srv = Server("--threads", "4", "--spread", spread)
                try:
                    self.assertIn("4 threads, spread %s" % spread, srv.first_line)
                    payloads = [os.urandom(size) for _ in range(200)]
                    got = exchange_concurrently(srv.port, payloads)
                    bad = [i for i, (p, g) in enumerate(zip(payloads, got)) if p != g]
                    self.assertEqual(bad, [], "clients whose echo differs")
                finally:
                    rc, out, err = srv.stop()
                self.assertEqual(rc, 0, err)
                # The counters printed at exit sum every loop's.
                n = 200 * size
                self.assertIn("200 connections, %d bytes in, %d bytes out" % (n, n), out)

    def test_threads_0_is_one_per_cpu(self):
        srv = Server("--threads", "0")
        try:
            n = len(os.sched_getaffinity(0))
            self.assertIn("%d thread%s," % (n, "" if n == 1 else "s"), srv.first_line)
            c = srv.sock()
            c.sendall(b"ping")
            self.assertEqual(c.recv(4), b"ping")
            c.close()
        finally:
            self.assertEqual(srv.stop()[0], 0)

    def test_sigterm_with_threads_stops_gracefully(self):
        """Each signal is handled once (and a second one changes nothing), the connection still
        open at the stop is served to its end, the process exits 0 as soon as it closes, and the
        counters printed sum every loop's."""
        srv = Server("--threads", "4")
        for _ in range(8):
            c = srv.sock()
            c.sendall(b"x" * 1000)
            got = b""
            while len(got) < 1000:
                got += c.recv(1000)
            c.close()
        late = srv.sock()
        late.sendall(b"before")
        self.assertEqual(late.recv(6), b"before")
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)  # a second signal changes nothing
        time.sleep(0.2)
        self.assertIsNone(srv.proc.poll(), "exited with a connection still open")
        late.sendall(b"after!")
        self.assertEqual(late.recv(6), b"after!")
        t0 = time.monotonic()
        late.close()
        rc, out, err = srv.wait(10)
        self.assertEqual(rc, 0, err)
        self.assertLess(time.monotonic() - t0, 3, "waited for the deadline")
        self.assertEqual(err.count("stopping"), 1, err)
        self.assertIn("9 connections, 8012 bytes in, 8012 bytes out", out)


def main():
    global ECHO, LOAD
    ECHO, LOAD = sys.argv[1], sys.argv[2]
    load = unittest.defaultTestLoader.loadTestsFromTestCase
    suite = unittest.TestSuite([load(Echo), load(EchoThreads)])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
