#!/usr/bin/env python3
"""Integration tests of rx-proxy: the real binary on an ephemeral 127.0.0.1 port, forwarding to
upstreams the test runs itself on other ephemeral 127.0.0.1 ports (python3 -m http.server, raw
sockets the test drives, an echo server). Usage: proxy_integration.py RX_PROXY_BINARY"""
import hashlib
import http.client
import os
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from appserver import MEMCHECKED, AppServer, exchange_concurrently, skip_under_valgrind

# ASan and valgrind keep freed memory in quarantine, so RSS bounds are looser under them.
RSS_SLACK_KIB = 64 * 1024 if MEMCHECKED else 4 * 1024

PROXY = None

COUNTERS = re.compile(r"rx-proxy: (\d+) connections, (\d+) bytes client->upstream, (\d+) bytes "
                      r"upstream->client, (\d+) failed connects")


class Proxy(AppServer):
    def __init__(self, upstream, *flags, nofile=None):
        super().__init__([PROXY, "--upstream", upstream, *flags], nofile=nofile)

    def stop(self, sig=signal.SIGTERM):
        """Returns (exit status, the counters printed at exit as a tuple of 4 ints, stderr)."""
        rc, _, err = super().stop(sig)
        m = COUNTERS.search(err)
        return rc, tuple(map(int, m.groups())) if m else None, err


class Upstream:
    """A listening socket on an ephemeral 127.0.0.1 port whose connections the test drives."""

    def __init__(self, backlog=128):
        if backlog == 0 and not syns_dropped_when_full():
            raise unittest.SkipTest("tcp_abort_on_overflow is set: a full accept queue answers "
                                    "with a reset instead of dropping SYNs")
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(backlog)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]

    def accept(self, timeout=10):
        self.lsock.settimeout(timeout)
        s, _ = self.lsock.accept()
        s.settimeout(timeout)
        return s

    def close(self):
        self.lsock.close()


class EchoUpstream:
    """An echo server on an ephemeral 127.0.0.1 port, one selector on a thread of its own: writes
    every byte back and, once a connection's stream ended and everything went back, closes it."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.accepted = 0
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ)
        while self.running:
            for key, ev in sel.select(0.2):
                if key.fileobj is self.lsock:
                    while True:
                        try:
                            s, _ = self.lsock.accept()
                        except BlockingIOError:
                            break
                        s.setblocking(False)
                        self.accepted += 1
                        sel.register(s, selectors.EVENT_READ, {"out": bytearray(), "eof": False})
                    continue
                s, c = key.fileobj, key.data
                if ev & selectors.EVENT_READ and not c["eof"]:
                    try:
                        b = s.recv(65536)
                    except BlockingIOError:
                        b = None
                    except ConnectionError:
                        sel.unregister(s)
                        s.close()
                        continue
                    if b == b"":
                        c["eof"] = True
                    elif b:
                        c["out"] += b
                if c["out"]:
                    try:
                        del c["out"][:s.send(c["out"])]
                    except BlockingIOError:
                        pass
                    except ConnectionError:
                        sel.unregister(s)
                        s.close()
                        continue
                if c["eof"] and not c["out"]:
                    sel.unregister(s)
                    s.close()
                    continue
                want = (0 if c["eof"] else selectors.EVENT_READ) | (
                    selectors.EVENT_WRITE if c["out"] else 0)
                sel.modify(s, want, c)
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()

    def close(self):
        self.running = False
        self.thread.join(5)


def syns_dropped_when_full():
    """A full accept queue drops SYNs (the connect hangs and is retried) unless
    tcp_abort_on_overflow makes it answer with a reset."""
    try:
        with open("/proc/sys/net/ipv4/tcp_abort_on_overflow") as f:
            return f.read().strip() == "0"
    except OSError:
        return True


def sha(b):
    return hashlib.sha256(b).hexdigest()


def recv_to_eof(s):
    got = bytearray()
    while True:
        b = s.recv(65536)
        if not b:
            return bytes(got)
        got += b


class in_thread(threading.Thread):  # pylint: disable=invalid-name
    """Runs fn(*args) on a thread of its own, started at once: .result is what it returned,
    .error what it raised."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.result, self.error = fn, args, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # pylint: disable=broad-except
            self.error = e


def finish(test, t, timeout=30):
    t.join(timeout)
    test.assertFalse(t.is_alive(), "a peer did not finish in %d s" % timeout)
    if t.error:
        raise t.error
    return t.result


def pair(proxy, upstream):
    """A client through the proxy and the upstream's end of the same pair, both blocking."""
    client = proxy.sock(timeout=30)
    return client, upstream.accept(timeout=30)


def reset(s):
    """Closes s with a TCP reset (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class ProxyTest(unittest.TestCase):
    def test_first_line_and_help(self):
        up = Upstream()
        proxy = Proxy(up.addr)
        try:
            self.assertRegex(proxy.first_line, r"^rx-proxy listening on 127\.0\.0\.1:\d+, upstream "
                             + re.escape(up.addr) + r" \(\d+ threads?, spread handoff, open files "
                             r"limit \d+\)$")
        finally:
            self.assertEqual(proxy.stop()[:2], (0, (0, 0, 0, 0)))
            up.close()
        r = subprocess.run([PROXY, "--help"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--upstream ADDR", r.stdout)

    def test_3mb_download_from_http_server(self):
        """A real HTTP server behind the proxy: the file arrives byte for byte."""
        with tempfile.TemporaryDirectory() as root:
            data = os.urandom(3 * 1024 * 1024)
            with open(os.path.join(root, "blob.bin"), "wb") as f:
                f.write(data)
            web = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                                    "127.0.0.1", "--directory", root],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                line = web.stdout.readline()
                m = re.search(r"port (\d+)", line)
                self.assertIsNotNone(m, "http.server did not start: %r" % line)
                proxy = Proxy("127.0.0.1:%s" % m.group(1))
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
                    conn.request("GET", "/blob.bin")
                    resp = conn.getresponse()
                    self.assertEqual(resp.status, 200)
                    body = resp.read()
                    conn.close()
                    self.assertEqual(len(body), len(data))
                    self.assertEqual(sha(body), sha(data))
                finally:
                    rc, counters, err = proxy.stop()
                self.assertEqual(rc, 0, err)
                self.assertIsNotNone(counters, err)
                conns, up, down, failed = counters
                self.assertEqual((conns, failed), (1, 0), err)
                self.assertGreater(up, 0)
                self.assertGreater(down, len(data))  # the file and the response head
                self.assertLess(down, len(data) + 4096)
            finally:
                web.terminate()
                web.wait(10)

    def half_close(self, closer_is_client):
        """The closer sends 4 MiB and shuts its write side while the other side sends 4 MiB and
        reads nothing for 0.5 s (so the end of stream reaches the proxy with data queued behind
        it); the other side gets all of it, then the end of stream, and still sends 1 MiB more
        afterwards, which the closer gets in full, then the end of stream."""
        up = Upstream()
        proxy = Proxy(up.addr)
        try:
            client, server = pair(proxy, up)
            closer, other = (client, server) if closer_is_client else (server, client)
            first, reply, tail = os.urandom(4 << 20), os.urandom(4 << 20), os.urandom(1 << 20)

            def other_side():
                sender = in_thread(other.sendall, reply)
                time.sleep(0.5)
                got = recv_to_eof(other)
                finish(self, sender)
                other.sendall(tail)  # the closer's half-close left this direction open
                other.shutdown(socket.SHUT_WR)
                return got

            peer = in_thread(other_side)
            reader = in_thread(recv_to_eof, closer)
            closer.sendall(first)
            closer.shutdown(socket.SHUT_WR)
            got_other = finish(self, peer)
            got_closer = finish(self, reader)
            self.assertEqual(sha(got_other), sha(first), "what the closer sent before its FIN")
            self.assertEqual(sha(got_closer), sha(reply + tail), "what flowed back after it")
            client.close()
            server.close()
        finally:
            rc, counters, err = proxy.stop()
            up.close()
        self.assertEqual(rc, 0, err)
        sent_up, sent_down = (4 << 20, 5 << 20) if closer_is_client else (5 << 20, 4 << 20)
        self.assertEqual(counters, (1, sent_up, sent_down, 0), err)

    def test_client_half_close_passes_on(self):
        self.half_close(closer_is_client=True)

    def test_upstream_half_close_passes_on(self):
        self.half_close(closer_is_client=False)

    def test_32mb_each_way_with_far_side_stalled_memory_bounded(self):
        """Both ends send 32 MiB at once and neither reads for 3 s: the proxy stops reading from
        each (backpressure), so the senders block and its RSS stays put; then everything arrives,
        byte for byte."""
        size = 32 << 20
        up = Upstream()
        proxy = Proxy(up.addr)
        try:
            client, server = pair(proxy, up)
            client.sendall(b"p")  # the pair is up and the loop's buffers exist before we measure
            self.assertEqual(server.recv(1), b"p")
            server.sendall(b"q")
            self.assertEqual(client.recv(1), b"q")
            before = proxy.rss_kib()
            peak = [before]
            sampling = threading.Event()

            def sample():
                while not sampling.is_set():
                    peak[0] = max(peak[0], proxy.rss_kib())
                    time.sleep(0.02)

            sampler = in_thread(sample)
            data = {client: os.urandom(size), server: os.urandom(size)}
            sent = {client: 0, server: 0}

            def send(s):
                view = memoryview(data[s])
                while sent[s] < size:
                    sent[s] += s.send(view[sent[s]:sent[s] + 65536])
                s.shutdown(socket.SHUT_WR)

            def receive(s):
                h, n = hashlib.sha256(), 0
                time.sleep(3)  # the far side stalls
                stalled = dict(sent)
                while True:
                    b = s.recv(1 << 20)
                    if not b:
                        return h.hexdigest(), n, stalled
                    h.update(b)
                    n += len(b)

            senders = [in_thread(send, client), in_thread(send, server)]
            receivers = [in_thread(receive, server), in_thread(receive, client)]
            (to_server, n_server, stalled), (to_client, n_client, _) = (
                finish(self, r, 120) for r in receivers)
            for t in senders:
                finish(self, t)
            sampling.set()
            finish(self, sampler)
            grown = peak[0] - before
            print("\n  32 MiB each way, stalled 3 s: RSS %d KiB -> peak %d KiB (+%d KiB); sent "
                  "during the stall: %d and %d bytes" % (before, peak[0], grown, stalled[client],
                                                         stalled[server]), file=sys.stderr)
            # What the sockets' buffers hold on the way varies with the kernel's autotuning; the
            # proxy itself stopped reading, so neither sender could finish during the stall.
            self.assertLess(stalled[client], size, "the proxy kept reading the client")
            self.assertLess(stalled[server], size, "the proxy kept reading the upstream")
            self.assertLess(grown, RSS_SLACK_KIB, "proxy RSS grew by %d KiB" % grown)
            self.assertEqual((n_server, to_server), (size, sha(data[client])))
            self.assertEqual((n_client, to_client), (size, sha(data[server])))
            client.close()
            server.close()
        finally:
            rc, counters, err = proxy.stop()
            up.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(counters, (1, size + 1, size + 1, 0), err)

    def test_refused_upstream_gives_eof_at_once(self):
        """Nothing listens on the upstream port (bound, so no one else takes it, but not
        listening): each client sees its stream end within 100 ms of connecting, also one that
        sent a request meanwhile, and every attempt counts as a failed connect."""
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        proxy = Proxy("127.0.0.1:%d" % closed.getsockname()[1])
        try:
            worst = 0
            for hello in (b"", b"", b"", b"", b"GET / HTTP/1.0\r\n\r\n"):
                t0 = time.monotonic()
                c = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
                if hello:
                    c.sendall(hello)
                self.assertEqual(c.recv(1), b"")
                worst = max(worst, time.monotonic() - t0)
                c.close()
            print("\n  refused upstream: worst EOF %.1f ms after connecting" % (worst * 1000),
                  file=sys.stderr)
            self.assertLess(worst, 0.1)
        finally:
            rc, counters, err = proxy.stop()
            closed.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(counters[0], 5, err)
        self.assertEqual(counters[2:], (0, 5), err)

    def test_connect_timeout_ends_the_client(self):
        """An upstream whose accept queue is full drops SYNs: after --connect-timeout 1 the client
        sees its stream end, and the attempt counts as a failed connect."""
        full = Upstream(backlog=0)
        # Nobody accepts: once the accept queue (backlog 0 holds one) is full, the kernel drops
        # every further SYN and those connects hang.
        fillers = [socket.socket() for _ in range(3)]
        try:
            for s in fillers:
                s.setblocking(False)
                s.connect_ex(full.lsock.getsockname())
            time.sleep(0.2)
            proxy = Proxy(full.addr, "--connect-timeout", "1")
            try:
                t0 = time.monotonic()
                c = proxy.sock(timeout=10)
                self.assertEqual(c.recv(1), b"")
                took = time.monotonic() - t0
                c.close()
                self.assertGreater(took, 0.9)
                self.assertLess(took, 5)
            finally:
                rc, counters, err = proxy.stop()
            self.assertEqual(rc, 0, err)
            self.assertEqual((counters[0], counters[3]), (1, 1), err)
        finally:
            for s in fillers:
                s.close()
            full.close()

    def test_client_bytes_wait_for_a_slow_connect(self):
        """The client's first bytes arrive while the upstream is still connecting (its accept
        queue is full, so the proxy's SYN is dropped and retried a second later): the proxy keeps
        them, then delivers them once the connect completes, and the answer comes back."""
        slow = Upstream(backlog=0)
        fillers = [socket.socket() for _ in range(3)]
        accepted = []
        try:
            for s in fillers:
                s.setblocking(False)
                s.connect_ex(slow.lsock.getsockname())
            time.sleep(0.2)
            proxy = Proxy(slow.addr)
            try:
                client = proxy.sock(timeout=10)
                client.sendall(b"early bytes")
                time.sleep(0.5)
                slow.lsock.listen(16)  # room again: the retried SYNs get through
                server = None
                while server is None:
                    s = slow.accept(timeout=10)
                    accepted.append(s)
                    s.settimeout(0.5)
                    try:
                        if s.recv(11, socket.MSG_PEEK):
                            server = s
                    except socket.timeout:
                        pass
                server.settimeout(10)
                self.assertEqual(recv_exactly(server, 11), b"early bytes")
                server.sendall(b"answer")
                self.assertEqual(recv_exactly(client, 6), b"answer")
                client.close()
                self.assertEqual(server.recv(1), b"")
                server.close()
            finally:
                rc, counters, err = proxy.stop()
            self.assertEqual(rc, 0, err)
            self.assertEqual(counters, (1, 11, 6, 0), err)
        finally:
            for s in fillers + accepted:
                s.close()
            slow.close()

    def reset_passes_on(self, from_client):
        """One side says 4 bytes and then resets: the other side gets them, then the reset."""
        up = Upstream()
        proxy = Proxy(up.addr)
        try:
            client, server = pair(proxy, up)
            talker, other = (client, server) if from_client else (server, client)
            talker.sendall(b"ping")
            self.assertEqual(other.recv(4), b"ping")
            reset(talker)
            with self.assertRaises(ConnectionResetError):
                other.recv(1)
            other.close()
        finally:
            rc, counters, err = proxy.stop()
            up.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(counters, (1, 4, 0, 0) if from_client else (1, 0, 4, 0), err)

    def test_client_reset_passes_on_to_upstream(self):
        self.reset_passes_on(from_client=True)

    def test_upstream_reset_passes_on_to_client(self):
        self.reset_passes_on(from_client=False)

    def test_idle_timeout_ends_both_sides(self):
        up = Upstream()
        proxy = Proxy(up.addr, "--idle-timeout", "1")
        try:
            t0 = time.monotonic()
            client, server = pair(proxy, up)
            self.assertEqual(client.recv(1), b"")
            self.assertEqual(server.recv(1), b"")
            took = time.monotonic() - t0
            self.assertGreater(took, 0.9)
            self.assertLess(took, 5)
            client.close()
            server.close()
        finally:
            rc, counters, err = proxy.stop()
            up.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(counters, (1, 0, 0, 0), err)

    def test_1000_concurrent_pairs_every_byte(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < 2200:
            self.skipTest("open files limit %d: too low for 1,000 pairs in one process" % hard)
        echo = EchoUpstream()
        proxy = Proxy(echo.addr)
        try:
            payloads = [os.urandom(8192 + 64 * i % 8192) for i in range(1000)]
            got = exchange_concurrently(proxy.port, payloads, timeout=150)
            bad = [i for i, (p, g) in enumerate(zip(payloads, got)) if p != g]
            self.assertEqual(bad, [], "clients whose bytes came back different")
        finally:
            rc, counters, err = proxy.stop()
            echo.close()
        self.assertEqual(rc, 0, err)
        n = sum(map(len, payloads))
        self.assertEqual(counters, (1000, n, n, 0), err)
        self.assertEqual(echo.accepted, 1000)

    def test_200_pairs_on_4_threads_both_spreads(self):
        """Whatever RX_TEST_THREADS says: pairs spread over 4 loops, every byte right, and the
        counters printed at exit sum every loop's."""
        for spread in ("handoff", "reuseport"):
            with self.subTest(spread=spread):
                echo = EchoUpstream()
                proxy = Proxy(echo.addr, "--threads", "4", "--spread", spread)
                try:
                    self.assertIn("4 threads, spread %s" % spread, proxy.first_line)
                    payloads = [os.urandom(32768) for _ in range(200)]
                    got = exchange_concurrently(proxy.port, payloads, timeout=120)
                    bad = [i for i, (p, g) in enumerate(zip(payloads, got)) if p != g]
                    self.assertEqual(bad, [], "clients whose bytes came back different")
                finally:
                    rc, counters, err = proxy.stop()
                    echo.close()
                self.assertEqual(rc, 0, err)
                self.assertEqual(counters, (200, 200 * 32768, 200 * 32768, 0), err)

    def test_bad_flags_exit_2(self):
        up = "127.0.0.1:9"
        for args in ([], ["--listen", "127.0.0.1:0"], ["--upstream"], ["--upstream", "nowhere"],
                     ["--upstream", "example.com:80"], ["--upstream", up, "--listen", "nowhere"],
                     ["--upstream", up, "--connect-timeout", "x"],
                     ["--upstream", up, "--connect-timeout", "-1"],
                     ["--upstream", up, "--idle-timeout", "1.5"],
                     ["--upstream", up, "--max-conns", "0"], ["--upstream", up, "--threads", "x"],
                     ["--upstream", up, "--threads", "1025"],
                     ["--upstream", up, "--spread", "roundrobin"], ["--upstream", up, "--bogus"],
                     ["--upstream", up, "extra"]):
            with self.subTest(args=args):
                r = subprocess.run([PROXY, *args], capture_output=True, text=True, timeout=10)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertTrue(r.stderr.strip())
                self.assertEqual(r.stdout, "")

    def test_sigterm_with_pairs_open(self):
        """SIGTERM with three pairs open (on several loops when there are several): the stop
        ends each pair gracefully (both peers see their stream end), the process exits 0, once,
        and the counters sum every pair's bytes."""
        up = Upstream()
        proxy = Proxy(up.addr)
        pairs = []
        try:
            for i in range(3):
                client, server = pair(proxy, up)
                client.sendall(b"c" * (1000 + i))
                self.assertEqual(len(recv_exactly(server, 1000 + i)), 1000 + i)
                server.sendall(b"s" * (2000 + i))
                self.assertEqual(len(recv_exactly(client, 2000 + i)), 2000 + i)
                pairs.append((client, server))
            proxy.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            proxy.proc.send_signal(signal.SIGTERM)  # a second one changes nothing
            readers = [in_thread(recv_to_eof, s) for p in pairs for s in p]
            got = [finish(self, r, 15) for r in readers]
            self.assertEqual(got, [b""] * 6)
            for client, server in pairs:
                client.close()
                server.close()
            t0 = time.monotonic()
            rc, _, err = proxy.wait(15)
            self.assertLess(time.monotonic() - t0, 3, "waited for a deadline")
        finally:
            up.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(err.count("stopping"), 1, err)
        m = COUNTERS.search(err)
        self.assertIsNotNone(m, err)
        self.assertEqual(tuple(map(int, m.groups())), (3, 3003, 6003, 0), err)


    def test_stop_delivers_everything_forwarded(self):
        """SIGTERM while a client uploads to an upstream that is not reading: the stop ends the
        client's stream at once, but every byte the proxy had taken from it still reaches the
        upstream, a prefix of what the client sent, followed by an orderly end of stream; the
        counters say exactly that many."""
        up = Upstream()
        proxy = Proxy(up.addr)
        try:
            client, server = pair(proxy, up)
            data = os.urandom(8 << 20)

            def upload():
                try:
                    client.sendall(data)
                except OSError:  # the stop may cut the upload short
                    pass
                client.close()

            uploader = in_thread(upload)
            time.sleep(1)  # the proxy's queue for the upstream fills up
            proxy.proc.send_signal(signal.SIGTERM)
            time.sleep(1.5)  # the upstream still reads nothing
            got = recv_to_eof(server)
            server.close()
            finish(self, uploader)
            rc, _, err = proxy.wait(15)
        finally:
            up.close()
        self.assertEqual(rc, 0, err)
        self.assertGreater(len(got), 0)
        self.assertEqual(got, data[:len(got)])
        m = COUNTERS.search(err)
        self.assertIsNotNone(m, err)
        self.assertEqual(tuple(map(int, m.groups())), (1, len(got), 0, 0), err)


def recv_exactly(s, n):
    got = bytearray()
    while len(got) < n:
        b = s.recv(n - len(got))
        if not b:
            break
        got += b
    return bytes(got)


def main():
    global PROXY
    PROXY = sys.argv[1]
    # Further arguments pick tests by name (ProxyTest.test_idle_timeout_ends_both_sides).
    names = sys.argv[2:]
    loader = unittest.defaultTestLoader
    suite = (loader.loadTestsFromNames(names, sys.modules[__name__]) if names else
             loader.loadTestsFromTestCase(ProxyTest))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
