#!/usr/bin/env python3
"""Integration tests of --workers (a master and N worker processes sharing the port) in rx-http
and rx-echo: a worker killed under load is replaced while the server keeps answering, a reload
under a steady load of keep-alive and new connections fails no request and resets no
connection, and SIGTERM finishes the requests in flight. Usage:
workers_integration.py RX_HTTP_BINARY WWW_DIR RX_ECHO_BINARY"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

from appserver import AppServer, assert_rejected

HTTP = WWW = ECHO = None
REQUEST = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
ANSWER_BODY = b"Hello, World!"


def children(pid):
    """The pids of pid's child processes (its workers)."""
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        return {int(p) for p in f.read().split()}


def wait_workers(srv, n, old=(), timeout=15):
    """Waits until the master has exactly n children, none of them in old, each serving (a
    worker's listening socket is open: it counts as serving once the master logs it ready, which
    this cannot see; a connection that works is the proof the callers check). Returns them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = children(srv.proc.pid)
        if len(now) == n and not now & set(old):
            return now
        time.sleep(0.05)
    raise AssertionError("workers %r after %d s, wanted %d new ones" % (children(srv.proc.pid),
                                                                         timeout, n))


def worker_sum(pattern, text):
    """The sum of the numbers pattern's group finds in text (each worker's closing line)."""
    return sum(int(m) for m in re.findall(pattern, text))


def read_answer(s, buf):
    """One response to REQUEST from s (buf: bytes already read). Returns (keep_alive, rest), or
    raises EOFError when the connection ended before the first byte of it."""
    first = not buf
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            if first and not buf:
                raise EOFError("closed before an answer")
            raise AssertionError("closed inside an answer: %r" % buf)
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if lines[0] != b"HTTP/1.1 200 OK":
        raise AssertionError("status line %r" % lines[0])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in lines[1:])}
    n = int(headers[b"content-length"])
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("closed inside a body")
        buf += chunk
    if buf[:n] != ANSWER_BODY:
        raise AssertionError("body %r" % buf[:n])
    return headers.get(b"connection") != b"close", buf[n:]


class Load:
    """Steady load on 127.0.0.1:port until stop(): `keepalive` threads that send request after
    request on one connection (a new one when the server answered Connection: close) and `fresh`
    threads that make a new connection for each request. A request on a reused keep-alive
    connection that the server closed before answering (it stopped while the connection was idle)
    is sent again on a new connection, as RFC 9112 section 9.3.1 lets a client do for a GET, and
    counted in `retried`. Everything else that goes wrong is a failure: a reset, a refusal, a
    timeout, a bad or cut answer, or a retry that fails too."""

    def __init__(self, port, keepalive=6, fresh=3):
        self.port = port
        self.ok = self.retried = self.resets = 0
        self.failures = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.clients = keepalive + fresh
        self.threads = [threading.Thread(target=self.keepalive_client) for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self.fresh_client) for _ in range(fresh)]
        for t in self.threads:
            t.start()

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def note(self, err):
        with self.lock:
            if isinstance(err, ConnectionResetError):
                self.resets += 1
            self.failures.append(repr(err))

    def keepalive_client(self):
        s, used, buf = None, False, b""
        while not self.done.is_set():
            try:
                if s is None:
                    s, used, buf = self.connect(), False, b""
                s.sendall(REQUEST)
                try:
                    keep, buf = read_answer(s, buf)
                except EOFError:
                    if not used:
                        raise
                    s.close()
                    s, used, buf = self.connect(), False, b""
                    s.sendall(REQUEST)
                    keep, buf = read_answer(s, buf)
                    with self.lock:
                        self.retried += 1
                with self.lock:
                    self.ok += 1
                used = True
                if not keep:
                    s.close()
                    s = None
            except Exception as e:  # noqa: BLE001: every failure is counted and reported
                self.note(e)
                if s:
                    s.close()
                s = None
        if s:
            s.close()

    def fresh_client(self):
        while not self.done.is_set():
            try:
                with self.connect() as s:
                    s.sendall(REQUEST)
                    read_answer(s, b"")
                with self.lock:
                    self.ok += 1
            except Exception as e:  # noqa: BLE001
                self.note(e)

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(10)

    def assert_clean(self, test, at_least):
        test.assertEqual(self.failures, [], "%d answers, %d retried" % (self.ok, self.retried))
        test.assertEqual(self.resets, 0)
        test.assertGreaterEqual(self.ok, at_least)


class HttpWorkers(unittest.TestCase):
    def server(self, *flags):
        return AppServer([HTTP, "--root", WWW, "--workers", "2", *flags])

    def test_reload_under_load_fails_nothing(self):
        """Three SIGHUPs under 6 keep-alive and 3 new-connection clients: every request answered
        200, none reset, none refused; each reload replaces both workers, the old ones exit 0."""
        srv = self.server()
        first = wait_workers(srv, 2)
        load = Load(srv.port)
        try:
            workers = first
            for _ in range(3):
                time.sleep(1.0)
                srv.proc.send_signal(signal.SIGHUP)
                workers = wait_workers(srv, 2, old=workers)
            time.sleep(1.0)
        finally:
            load.stop()
        rc, out, err = srv.stop()
        load.assert_clean(self, 200)
        print("reload under load: %d answers, %d sent again after an idle keep-alive "
              "connection closed" % (load.ok, load.retried), file=sys.stderr)
        self.assertEqual(rc, 0, err)
        self.assertEqual(err.count("Hangup, reloading"), 3, err)
        self.assertEqual(err.count("generation 3) ready"), 2, err)
        # Every worker of generations 0-2 stopped when asked, and exited 0; so did the last two.
        self.assertEqual(err.count("exited with status 0"), 8, err)
        self.assertNotIn("killed", err)
        self.assertIn("every worker stopped", err)

    def test_killed_worker_is_replaced(self):
        """SIGKILL to a worker under load: the master starts another and the server goes on
        answering; the killed worker's connections queued on its socket wait for the new one."""
        srv = self.server()
        workers = wait_workers(srv, 2)
        load = Load(srv.port, keepalive=2, fresh=3)
        try:
            time.sleep(1.2)  # a worker that lived a second or more is restarted at once
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            now = wait_workers(srv, 2, old=[victim])
            self.assertEqual(len(now & workers), 1)
            time.sleep(0.3)
            with load.lock:
                before, lost = load.ok, len(load.failures)
            time.sleep(1.0)
        finally:
            load.stop()
        rc, out, err = srv.stop()
        self.assertEqual(rc, 0, err)
        self.assertIn("(pid %d, generation 0) killed by signal 9 (Killed); restarting it" % victim,
                      err)
        # Only the connections the killed worker held can fail (they die with it): at most one
        # per client, each of which has one connection at a time.
        self.assertEqual(load.failures[lost:], [], "failures after the replacement")
        self.assertLessEqual(lost, load.clients, load.failures)
        self.assertGreater(load.ok - before, 50)

    def test_sigterm_finishes_requests_in_flight(self):
        """SIGTERM to the master with half-sent requests on both workers: each is answered in
        full (Connection: close), then every worker exits 0 and so does the master."""
        srv = self.server()
        wait_workers(srv, 2)
        busy = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n")  # the head is not complete
            busy.append(s)
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertIsNone(srv.proc.poll(), "the master exited with requests in flight")
        for s in busy:
            s.sendall(b"\r\n")
            keep, rest = read_answer(s, b"")
            self.assertFalse(keep)
            self.assertEqual(rest, b"")
            self.assertEqual(s.recv(10), b"")
            s.close()
        rc, out, err = srv.wait(15)
        self.assertEqual(rc, 0, err)
        self.assertEqual(err.count("exited with status 0"), 2, err)
        self.assertEqual(worker_sum(r"rx-http worker \d+: (\d+) connections", err), 8, err)

    def test_bad_values_exit_2(self):
        for binary in (HTTP, ECHO):
            assert_rejected(self, binary, "--workers", ["-1", "x", "1025"],
                            "--workers wants a count from 0 (no master) to 1024, got '%s'")
            r = subprocess.run([binary, "--workers", "2", "--listen", "unix:/tmp/rx-w.sock"],
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2)
            self.assertIn("--workers needs a TCP address", r.stderr)


class EchoWorkers(unittest.TestCase):
    def test_echo_through_a_reload(self):
        """Connections open across a reload keep echoing on their old worker until they end; new
        ones reach the new workers; SIGTERM ends with every worker's count."""
        srv = AppServer([ECHO, "--workers", "2"])
        old = wait_workers(srv, 2)
        conns = [srv.sock() for _ in range(10)]
        for i, c in enumerate(conns):
            c.sendall(b"before %d" % i)
            self.assertEqual(c.recv(100), b"before %d" % i)
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # the old workers now drain: they keep their connections open
        for i, c in enumerate(conns):
            c.sendall(b"after %d" % i)
            self.assertEqual(c.recv(100), b"after %d" % i)
            c.close()
        wait_workers(srv, 2, old=old)
        c = srv.sock()
        c.sendall(b"new")
        self.assertEqual(c.recv(10), b"new")
        c.close()
        rc, out, err = srv.stop()
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.count("rx-echo worker"), 4, out)
        self.assertEqual(worker_sum(r"rx-echo worker \d+: (\d+) connections", out), 11, out)


def main():
    global HTTP, WWW, ECHO
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    HTTP, WWW, ECHO = (os.path.abspath(a) for a in sys.argv[1:4])
    del sys.argv[1:4]
    unittest.main(verbosity=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
