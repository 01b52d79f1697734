#!/usr/bin/env python3
"""Integration tests of rx-http: the real binary on an ephemeral 127.0.0.1 port, driven by
curl, http.client and raw sockets. Usage: http_integration.py RX_HTTP_BINARY WWW_DIR"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from appserver import (MEMCHECKED, TSAN, AppServer, assert_rejected, exchange_concurrently,
                       server_end_open, skip_under_valgrind, slow_reader, watch_slow_readers)

# ASan and valgrind keep freed memory in quarantine, so RSS bounds are looser under them.
RSS_SLACK_KIB = 64 * 1024 if MEMCHECKED else 8 * 1024

BINARY = None
WWW = None


class Server(AppServer):
    """rx-http with --root (default: the demo site) and extra flags."""

    def __init__(self, *flags, root=None):
        super().__init__([BINARY, "--root", root or WWW, *flags])


def read_head(s, buf=b""):
    """Reads one response head from s, and nothing after it (what a client does for a HEAD
    request, a 1xx, 204 or 304); returns (status, headers, rest). headers keys are lower case."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("connection closed before a complete head: %r" % buf)
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        raise AssertionError("not a status line: %r" % lines[0])
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, buf


def read_response(s, buf=b""):
    """Reads one response (head + Content-Length body) from s; returns (status, headers, body,
    rest). headers keys are lower case."""
    status, headers, buf = read_head(s, buf)
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("connection closed inside a body")
        buf += chunk
    return status, headers, buf[:n], buf[n:]


def http_reason_body(status):
    """The body rx-http sends with an error status: its reason phrase and a newline."""
    return http.client.responses[status].encode() + b"\n"


def recv_until_closed(s, limit_s=5):
    s.settimeout(limit_s)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


class HttpLite(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop()[0] == 0

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=5)

    def test_plaintext_and_headers(self):
        c = self.conn()
        c.request("GET", "/plaintext")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.read(), b"Hello, World!")
        self.assertEqual(r.getheader("Content-Type"), "text/plain")
        self.assertEqual(r.getheader("Content-Length"), "13")
        self.assertEqual(r.getheader("Server"), "rx")
        self.assertRegex(r.getheader("Date"), r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$")

    def test_json(self):
        c = self.conn()
        c.request("GET", "/json")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertEqual(r.read(), b'{"message":"Hello, World!"}')

    def test_keep_alive_reuses_one_connection(self):
        s = self.srv.sock()
        port = s.getsockname()[1]
        rest = b""
        for _ in range(5):
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body, rest = read_response(s, rest)
            self.assertEqual((status, body), (200, b"Hello, World!"))
        self.assertEqual(s.getsockname()[1], port)
        s.close()

    def test_pipelining_16_in_order(self):
        s = self.srv.sock()
        paths = ["/plaintext", "/json"] * 8
        s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in paths))
        rest = b""
        for p in paths:
            status, _, body, rest = read_response(s, rest)
            self.assertEqual(status, 200)
            self.assertEqual(body, b"Hello, World!" if p == "/plaintext" else
                             b'{"message":"Hello, World!"}')
        self.assertEqual(rest, b"")
        s.close()

    def test_http10_closes_unless_keep_alive(self):
        s = self.srv.sock()
        s.sendall(b"GET /plaintext HTTP/1.0\r\n\r\n")
        data = recv_until_closed(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(data.endswith(b"Hello, World!"))
        self.assertIn(b"Connection: close", data)
        s.close()
        s = self.srv.sock()
        s.sendall(b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body, rest = read_response(s)
        self.assertEqual((status, headers.get("connection")), (200, "keep-alive"))
        s.sendall(b"GET /json HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, _, body, _ = read_response(s, rest)
        self.assertEqual(body, b'{"message":"Hello, World!"}')
        s.close()

    def test_connection_close_honoured(self):
        s = self.srv.sock()
        s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                  b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
        data = recv_until_closed(s)
        self.assertEqual(data.count(b"HTTP/1.1 "), 1)
        s.close()

    def test_head_has_headers_no_body(self):
        s = self.srv.sock()
        s.sendall(b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                  b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        buf = b""
        while buf.count(b"Hello, World!") < 1:
            buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        size = os.path.getsize(os.path.join(WWW, "hello.txt"))
        self.assertIn(b"Content-Length: %d" % size, head)
        self.assertIn(b"Last-Modified: ", head)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 OK"), rest)
        s.close()

    def test_static_bytes_identical_with_curl(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "got")
            rc = subprocess.run(["curl", "-sf", "-o", out,
                                 "http://127.0.0.1:%d/index.html" % self.srv.port], timeout=10)
            self.assertEqual(rc.returncode, 0)
            with open(out, "rb") as a, open(os.path.join(WWW, "index.html"), "rb") as b:
                self.assertEqual(a.read(), b.read())
        c = self.conn()
        c.request("GET", "/")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "text/html; charset=utf-8")
        with open(os.path.join(WWW, "index.html"), "rb") as f:
            self.assertEqual(r.read(), f.read())

    def test_if_modified_since_304(self):
        c = self.conn()
        c.request("GET", "/hello.txt")
        r = c.getresponse()
        r.read()
        lm = r.getheader("Last-Modified")
        c.request("GET", "/hello.txt", headers={"If-Modified-Since": lm})
        r = c.getresponse()
        self.assertEqual(r.status, 304)
        self.assertEqual(r.read(), b"")
        c.request("GET", "/hello.txt", headers={"If-Modified-Since":
                                                "Mon, 01 Jan 1990 00:00:00 GMT"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        r.read()

    def test_traversal_denied(self):
        for target in [b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/a/../../etc/passwd",
                       b"/%2E%2E%2Fetc%2Fpasswd", b"/./hello.txt"]:
            s = self.srv.sock()
            s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body, _ = read_response(s)
            self.assertIn(status, (400, 403, 404), target)
            self.assertNotIn(b"root:", body)
            s.close()

    def test_symlink_out_of_root_denied(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "root")
            os.mkdir(root)
            secret = os.path.join(tmp, "secret.txt")
            with open(secret, "w") as f:
                f.write("top secret")
            os.symlink(secret, os.path.join(root, "leak.txt"))
            os.symlink(tmp, os.path.join(root, "up"))
            with open(os.path.join(root, "ok.txt"), "w") as f:
                f.write("fine")
            srv = Server(root=root)
            try:
                for path, want in [("/leak.txt", (403, 404)), ("/up/secret.txt", (403, 404)),
                                   ("/ok.txt", (200,))]:
                    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
                    c.request("GET", path)
                    r = c.getresponse()
                    body = r.read()
                    self.assertIn(r.status, want, path)
                    self.assertNotIn(b"top secret", body)
            finally:
                self.assertEqual(srv.stop()[0], 0)

    def test_not_found_and_405_with_allow(self):
        c = self.conn()
        c.request("GET", "/no/such/file")
        r = c.getresponse()
        self.assertEqual(r.status, 404)
        r.read()
        c.request("POST", "/plaintext", body=b"x")
        r = c.getresponse()
        self.assertEqual(r.status, 405)
        self.assertEqual(r.getheader("Allow"), "GET, HEAD, OPTIONS")
        r.read()
        c.request("GET", "/echo")
        r = c.getresponse()
        self.assertEqual((r.status, r.getheader("Allow")), (405, "POST, OPTIONS"))
        r.read()

    def test_head_errors_have_a_head_and_no_body(self):
        # A HEAD gets the head GET would get, Content-Length of GET's body included, and no body:
        # the next response on the connection starts right after the head.
        s = self.srv.sock()
        rest = b""
        for target, want in [(b"/nope", 404), (b"/echo", 405), (b"/./hello.txt", 403)]:
            s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            status, get_headers, body, rest = read_response(s, rest)
            self.assertEqual(status, want, target)
            self.assertGreater(len(body), 0)
            s.sendall(b"HEAD " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"
                      b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, rest = read_head(s, rest)
            self.assertEqual(status, want, target)
            for k in ("content-length", "content-type", "allow", "connection"):
                self.assertEqual(headers.get(k), get_headers.get(k), (target, k))
            status, _, body, rest = read_response(s, rest)  # fails on a stray body
            self.assertEqual((status, body), (200, b"Hello, World!"), target)
        self.assertEqual(rest, b"")
        s.close()

    def test_head_rejected_by_the_parser_gets_no_body(self):
        # These answers close the connection: all that arrives is the head.
        for req, want in [
                (b"HEAD / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
                (b"HEAD / HTTP/1.1\r\n\r\n", 400),  # no Host
                (b"\r\nHEAD /a#b HTTP/1.1\r\nHost: t\r\n\r\n", 400)]:
            s = self.srv.sock()
            s.sendall(req)
            data = recv_until_closed(s)
            s.close()
            status, headers, rest = read_head(None, data)
            self.assertEqual(status, want, req)
            self.assertEqual(headers.get("connection"), "close")
            self.assertEqual(int(headers["content-length"]), len(http_reason_body(want)))
            self.assertEqual(rest, b"", req)

    def test_options(self):
        s = self.srv.sock()
        s.sendall(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body, rest = read_response(s)
        self.assertEqual((status, headers.get("allow"), headers.get("content-length"), body),
                         (200, "GET, HEAD, POST, OPTIONS", "0", b""))
        get_head = "GET, HEAD, OPTIONS"
        for path, allow in [(b"/plaintext", get_head), (b"/echo", "POST, OPTIONS"),
                            (b"/hello.txt", get_head), (b"/stats", get_head)]:
            s.sendall(b"OPTIONS " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, rest = read_head(s, rest)
            self.assertEqual((status, headers.get("allow")), (204, allow), path)
            self.assertNotIn("content-length", headers, path)  # RFC 9110 §8.6
        s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body, rest = read_response(s, rest)
        self.assertEqual((status, body, rest), (200, b"Hello, World!", b""))
        s.close()

    def test_known_methods_get_405_unknown_501(self):
        c = self.conn()
        for method, path, allow in [("PUT", "/hello.txt", "GET, HEAD, OPTIONS"),
                                    ("DELETE", "/plaintext", "GET, HEAD, OPTIONS"),
                                    ("PATCH", "/json", "GET, HEAD, OPTIONS"),
                                    ("DELETE", "/no/such/file", "GET, HEAD, OPTIONS"),
                                    ("PUT", "/echo", "POST, OPTIONS")]:
            c.request(method, path, body=b"data")
            r = c.getresponse()
            r.read()
            self.assertEqual((r.status, r.getheader("Allow")), (405, allow), (method, path))
        for method in ["TRACE", "BREW"]:
            c.request(method, "/plaintext")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 501, method)
        s = self.srv.sock()
        s.sendall(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n")
        self.assertEqual(read_response(s)[0], 501)
        s.close()

    def test_over_long_method_is_501_not_431(self):
        s = self.srv.sock()
        try:
            s.sendall(b"M" * 20000 + b" / HTTP/1.1\r\nHost: t\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before we finish sending
        status, headers, _, _ = read_response(s)
        self.assertEqual((status, headers.get("connection")), (501, "close"))
        s.close()

    def test_8k_request_target_accepted(self):
        # RFC 9112 §3: at least 8000 octets of request-line. With the default limits a target of
        # 8192 bytes, along with a dozen header fields, reaches routing; one more byte is a 414.
        fields = b"".join(b"X-Field-%d: %s\r\n" % (i, b"v" * 60) for i in range(12))
        for n, want in [(7900, 404), (8192, 404), (8193, 414)]:
            s = self.srv.sock()
            s.sendall(b"GET /" + b"a" * (n - 1) + b" HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
            status, _, _, _ = read_response(s)
            self.assertEqual(status, want, n)
            s.close()

    def test_fifo_under_root_is_403_without_blocking(self):
        with tempfile.TemporaryDirectory() as root:
            fifos = [os.path.join(root, "pipe"), os.path.join(root, "d", "index.html")]
            os.mkdir(os.path.join(root, "d"))
            for f in fifos:
                os.mkfifo(f)
            with open(os.path.join(root, "ok.txt"), "w") as f:
                f.write("fine")
            srv = Server(root=root)
            try:
                for target in [b"/pipe", b"/d/", b"/d"]:
                    s = srv.sock(timeout=2)
                    t0 = time.monotonic()
                    s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
                    status, _, _, _ = read_response(s)
                    self.assertEqual(status, 403, target)
                    self.assertLess(time.monotonic() - t0, 1.0, target)
                    s.close()
                c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
                c.request("GET", "/ok.txt")
                r = c.getresponse()
                self.assertEqual((r.status, r.read()), (200, b"fine"))
                c.request("GET", "/plaintext")
                self.assertEqual(c.getresponse().status, 200)
            finally:
                # A server stuck opening a FIFO would never stop: be its writer, so it resumes.
                for f in fifos:
                    try:
                        os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                    except OSError:
                        pass  # ENXIO: nobody has it open for reading
                self.assertEqual(srv.stop()[0], 0)

    def test_one_byte_at_a_time(self):
        s = self.srv.sock()
        for b in b"GET /plaintext HTTP/1.1\r\nHost: slow\r\nX-Pad: abcdefgh\r\n\r\n":
            s.sendall(bytes([b]))
            time.sleep(0.001)
        status, _, body, _ = read_response(s)
        self.assertEqual((status, body), (200, b"Hello, World!"))
        s.close()

    def test_431_on_64k_header(self):
        s = self.srv.sock()
        try:
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 65536 +
                      b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before we finish sending
        status, headers, _, _ = read_response(s)
        self.assertEqual(status, 431)
        self.assertEqual(headers.get("connection"), "close")
        s.close()

    def test_413_body_too_large(self):
        srv = Server("--max-body-bytes", "1000")
        try:
            s = srv.sock()
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
            status, _, _, _ = read_response(s)
            self.assertEqual(status, 413)
            s.close()
            s = srv.sock()
            body = b"5\r\nhello\r\n" * 300 + b"0\r\n\r\n"
            try:
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            status, _, _, _ = read_response(s)
            self.assertEqual(status, 413)
            s.close()
        finally:
            self.assertEqual(srv.stop()[0], 0)

    def test_408_after_header_timeout(self):
        srv = Server("--header-timeout", "1")
        try:
            s = srv.sock()
            t0 = time.monotonic()
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n")
            data = recv_until_closed(s, limit_s=5)
            elapsed = time.monotonic() - t0
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
            self.assertGreaterEqual(elapsed, 0.9)
            self.assertLess(elapsed, 3.0)
            # Meanwhile, and afterwards, other clients are served.
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            c.request("GET", "/plaintext")
            self.assertEqual(c.getresponse().status, 200)
        finally:
            self.assertEqual(srv.stop()[0], 0)

    def test_slowloris_trickle_still_times_out(self):
        srv = Server("--header-timeout", "1")
        try:
            s = srv.sock()
            t0 = time.monotonic()
            closed = False
            for b in b"GET /plaintext HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                try:
                    s.sendall(bytes([b]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                s.settimeout(0.1)
                try:
                    if s.recv(65536).startswith(b"HTTP/1.1 408"):
                        closed = True
                        break
                except socket.timeout:
                    pass
                if time.monotonic() - t0 > 4:
                    break
            self.assertTrue(closed, "a trickling client was not cut off")
            self.assertLess(time.monotonic() - t0, 3.0)
        finally:
            self.assertEqual(srv.stop()[0], 0)

    def test_chunked_post_echo(self):
        s = self.srv.sock()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: text/x-test\r\n\r\n"
                  b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n")
        status, headers, body, _ = read_response(s)
        self.assertEqual((status, body), (200, b"hello, world"))
        self.assertEqual(headers.get("content-type"), "text/x-test")
        s.close()
        rc = subprocess.run(["curl", "-sf", "-H", "Transfer-Encoding: chunked", "--data-binary",
                             "@-", "http://127.0.0.1:%d/echo" % self.srv.port],
                            input=b"x" * 100000, capture_output=True, timeout=10)
        self.assertEqual(rc.stdout, b"x" * 100000)

    def test_expect_100_continue(self):
        s = self.srv.sock()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        status, _, _, rest = read_response(s)
        self.assertEqual(status, 100)
        s.sendall(b"ping")
        status, _, body, _ = read_response(s, rest)
        self.assertEqual((status, body), (200, b"ping"))
        s.close()
        s = self.srv.sock()
        s.sendall(b"POST /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        status, _, _, _ = read_response(s)
        self.assertEqual(status, 405)
        s.close()

    def test_bad_requests_get_complete_errors(self):
        te = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
        chunked = te + b"chunked\r\n\r\n"
        cases = [  # (request, status); all but BREW's 501 close the connection
            (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),  # empty Host
            (b"GET /plaintext#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
            (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n", 400),
            # RFC 9112 §6.3: a final coding other than chunked is a 400, and the server closes.
            (te + b"gzip\r\n\r\n", 400),
            (te + b"chunked, gzip\r\n\r\n", 400),
            (te + b"chunked, chunked\r\n\r\n", 400),
            (te + b"chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (te + b"gzip, chunked\r\n\r\n", 501),
            # Chunk extensions outside the grammar of RFC 9112 §7.1.1.
            (chunked + b"5;\r\nhello\r\n0\r\n\r\n", 400),
            (chunked + b"5;=x\r\nhello\r\n0\r\n\r\n", 400),
            (chunked + b"5;a=b@c\r\nhello\r\n0\r\n\r\n", 400),
            (chunked + b"5;a=\"open\r\nhello\r\n0\r\n\r\n", 400),
            (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
            (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        ]
        for req, want in cases:
            s = self.srv.sock()
            s.sendall(req)
            status, headers, body, _ = read_response(s)
            self.assertEqual(status, want, req)
            self.assertEqual(len(body), int(headers["content-length"]))
            if not req.startswith(b"BREW"):
                self.assertEqual(headers.get("connection"), "close", req)
            s.close()

    def test_pipelining_client_that_does_not_read_is_paused(self):
        before = self.srv.rss_kib()
        s = self.srv.sock()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        req = b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n" * 200
        s.settimeout(0.2)
        sent = 0
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 3:
                sent += s.send(req)
        except (socket.timeout, BlockingIOError):
            pass
        # The server stopped reading: we could not push more than a bounded amount, and its
        # memory did not grow with what we pushed.
        self.assertLess(sent, 16 * 1024 * 1024)
        self.assertLess(self.srv.rss_kib() - before, RSS_SLACK_KIB)
        # Other clients are still served.
        c = self.conn()
        c.request("GET", "/plaintext")
        self.assertEqual(c.getresponse().status, 200)
        s.close()

    def test_request_behind_a_large_response_is_answered(self):
        """Issue 9 item 1: a request pipelined behind a response between the output limit
        (256 KiB) and 1 MiB used to wait for the idle timeout (408)."""
        with tempfile.TemporaryDirectory() as root:
            with open(os.path.join(root, "big.bin"), "wb") as f:
                f.write(os.urandom(500 * 1024))
            srv = Server("--idle-timeout", "30", root=root)
            try:
                body = os.urandom(300 * 1000)
                for first in [b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                              % len(body) + body,
                              b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n"]:
                    s = srv.sock(timeout=5)
                    s.sendall(first + b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
                    t0 = time.monotonic()
                    status, _, got, rest = read_response(s)
                    self.assertEqual(status, 200)
                    self.assertEqual(len(got), len(body) if first.startswith(b"POST") else
                                     500 * 1024)
                    status, _, got, _ = read_response(s, rest)
                    self.assertEqual((status, got), (200, b"Hello, World!"))
                    self.assertLess(time.monotonic() - t0, 2.0)
                    s.close()
            finally:
                self.assertEqual(srv.stop()[0], 0)

    def test_idle_keep_alive_connections_cost_little(self):
        """Issue 9: 2,000 connections that made one request each and sit idle hold at most about
        400 bytes of the server's memory apiece (the session goes back between requests)."""
        n = 2000
        srv = Server()
        socks = []
        try:
            # Warm up the allocator with a first batch, measured from there.
            before = None
            for i in range(n):
                s = srv.sock()
                s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
                socks.append(s)
                if i == 99:
                    for t in socks:
                        read_response(t)
                    time.sleep(0.1)
                    before = srv.rss_kib()
            for t in socks[100:]:
                read_response(t)
            time.sleep(0.2)
            per_conn = (srv.rss_kib() - before) * 1024 / (n - 100)
            # The real bound is the plain build's; under a checker it only catches gross growth
            # (TSan's own cost was 4,020-4,050 bytes a connection, before and after the PROXY
            # protocol came).
            limit = 8192 if TSAN else 4096 if MEMCHECKED else 400
            self.assertLess(per_conn, limit, "%.0f bytes per idle keep-alive connection"
                            % per_conn)
        finally:
            for t in socks:
                t.close()
            self.assertEqual(srv.stop()[0], 0)

    def test_send_timeout_resets_a_slow_reader(self):
        """A client with a small receive buffer that asks for a 4 MiB file and reads it a byte a
        second makes no write progress: with --send-timeout 1 the server resets it within a few
        seconds; with the default (60 s) it is still connected after the same time."""
        with tempfile.TemporaryDirectory() as root:
            with open(os.path.join(root, "big.bin"), "wb") as f:
                f.write(os.urandom(4 * 1024 * 1024))
            timed, default = Server("--send-timeout", "1", root=root), Server(root=root)
            clients = []
            try:
                t0 = time.monotonic()
                for srv in (timed, default):
                    s = slow_reader(srv.port)
                    s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                    clients.append(s)
                closed_at, got = watch_slow_readers(t0, timed.port, clients[0], clients[1])
                self.assertIsNotNone(closed_at, "the slow reader is still connected after 8 s")
                self.assertLess(closed_at, 4)
                self.assertGreaterEqual(time.monotonic() - t0, max(closed_at, 4))
                self.assertTrue(server_end_open(default.port, clients[1]),
                                "closed with the default send timeout")
                self.assertTrue(b"HTTP/1.1 200 OK".startswith(got), got)
                # Reset, not closed: the kernel dropped what it held for the client at once.
                clients[0].settimeout(1)
                with self.assertRaises(ConnectionResetError):
                    while clients[0].recv(65536):
                        pass
            finally:
                for s in clients:
                    s.close()
                self.assertEqual(timed.stop()[0], 0)
                self.assertEqual(default.stop()[0], 0)

    def test_send_timeout_flag(self):
        r = subprocess.run([BINARY, "--help"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"--send-timeout S .*\n.*\(default 60, 0: never\)")
        assert_rejected(self, BINARY, "--send-timeout", ("x", "-1", "", "1.5", "9" * 11),
                        "bad value '%s' for --send-timeout")

    def test_large_requests_within_the_limits_pass_the_input_limit(self):
        """The connection's input limit (max header + max body + 128 KiB) is a backstop the
        largest valid requests do not reach: a body of exactly --max-body-bytes, chunked with
        heavy framing, behind a head near --max-header-bytes, with requests pipelined after it,
        all answered on one connection."""
        srv = Server("--max-body-bytes", "300000", "--max-header-bytes", "8192")
        try:
            s = srv.sock(timeout=10)
            pad = b"X-Pad: " + b"p" * 7000 + b"\r\n"
            body = os.urandom(300000)
            # Chunk framing just under the 64 KiB the session tolerates beyond the body.
            chunks = b"".join(b"%x;ext=%s\r\n%s\r\n" % (2000, b"e" * 380, body[i:i + 2000])
                              for i in range(0, len(body), 2000)) + b"0\r\n\r\n"
            self.assertGreater(len(chunks) - len(body), 56 * 1024)
            self.assertLess(len(chunks) - len(body), 64 * 1024)
            reqs = (b"POST /echo HTTP/1.1\r\nHost: t\r\n" + pad + b"Content-Length: %d\r\n\r\n"
                    % len(body) + body +
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
                    chunks + b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n" * 50)
            got = []

            def reader():
                rest = b""
                for _ in range(52):
                    status, _, data, rest = read_response(s, rest)
                    got.append((status, data))

            t = threading.Thread(target=reader)
            t.start()
            s.sendall(reqs)
            t.join(20)
            self.assertFalse(t.is_alive(), "answers missing")
            self.assertEqual(got[0], (200, body))
            self.assertEqual(got[1], (200, body))
            self.assertEqual(got[2:], [(200, b"Hello, World!")] * 50)
            s.close()
        finally:
            self.assertEqual(srv.stop()[0], 0)

    def test_every_tune_switch_still_serves_correctly(self):
        # The switches bench/run uses to measure techniques must not change behaviour.
        srv = Server("--tune", "edge,own-buffers,always-queue,nagle,accept-one,no-backpressure,"
                     "no-batch,no-date-cache,no-sendfile")
        try:
            s = srv.sock()
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n" * 4 +
                      b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n")
            rest = b""
            for _ in range(4):
                status, _, body, rest = read_response(s, rest)
                self.assertEqual((status, body), (200, b"Hello, World!"))
            status, _, body, _ = read_response(s, rest)
            with open(os.path.join(WWW, "index.html"), "rb") as f:
                self.assertEqual((status, body), (200, f.read()))
            s.close()
        finally:
            self.assertEqual(srv.stop()[0], 0)
        r = subprocess.run([BINARY, "--tune", "warp-speed"], capture_output=True, text=True,
                           timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("warp-speed", r.stderr)

    def test_access_log(self):
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "access.log")
            srv = Server("--access-log", log)
            try:
                c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
                c.request("GET", "/plaintext")
                c.getresponse().read()
                c.request("GET", "/missing?x=1")
                c.getresponse().read()
            finally:
                self.assertEqual(srv.stop()[0], 0)
            with open(log) as f:
                lines = f.read().splitlines()
            self.assertEqual(len(lines), 2, lines)
            self.assertRegex(lines[0], r'^127\.0\.0\.1:\d+ "GET /plaintext HTTP/1\.1" 200 13$')
            self.assertRegex(lines[1], r'^127\.0\.0\.1:\d+ "GET /missing\?x=1 HTTP/1\.1" 404 \d+$')

    def test_stats_counts(self):
        c = self.conn()
        c.request("GET", "/stats")
        r = c.getresponse()
        import json
        st = json.loads(r.read())
        self.assertGreaterEqual(st["requests"], 1)
        self.assertGreaterEqual(st["connections_open"], 1)
        self.assertIn("2xx", st["responses"])


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
# A v2 PROXY header for TCP over IPv6 from [2001:db8::1]:443 to [2001:db8::2]:80, and a v2 LOCAL
# one (what HAProxy's health checks send with check-send-proxy).
V2_TCP6 = (V2_SIG + b"\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
           + socket.inet_pton(socket.AF_INET6, "2001:db8::2") + b"\x01\xbb\x00\x50")
V2_LOCAL = V2_SIG + b"\x20\x00\x00\x00"


class HttpBalancer(unittest.TestCase):
    """Behind a balancer: --proxy-protocol, /healthz and --drain."""

    def test_proxy_protocol_client_in_access_log(self):
        """v1 and v2 headers name the client the access log shows, for every request of a
        keep-alive connection; a LOCAL header (a health check) leaves the socket's own peer."""
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "access.log")
            srv = Server("--proxy-protocol", "--access-log", log)
            try:
                self.assertIn("PROXY protocol", srv.first_line)
                v1 = srv.sock()
                v1.sendall(b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 8080\r\n"
                           b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
                self.assertEqual(read_response(v1)[2], b"Hello, World!")
                v1.sendall(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
                self.assertEqual(read_response(v1)[0], 200)
                v2 = srv.sock()
                v2.sendall(V2_TCP6[:10])  # the header in two parts
                time.sleep(0.05)
                v2.sendall(V2_TCP6[10:] + b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
                self.assertEqual(read_response(v2)[0], 200)
                local = srv.sock()
                local.sendall(V2_LOCAL + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                self.assertEqual(read_response(local)[:3:2], (200, b"ok\n"))
                own = local.getsockname()[1]
                for s in (v1, v2, local):
                    s.close()
            finally:
                rc, _, err = srv.stop()
                self.assertEqual(rc, 0, err)
            self.assertIn("0 connections closed for a missing, bad or late PROXY header", err)
            with open(log) as f:
                lines = f.read().splitlines()
            self.assertEqual(lines, [
                '192.0.2.1:51234 "GET /plaintext HTTP/1.1" 200 13',
                '192.0.2.1:51234 "GET /json HTTP/1.1" 200 27',
                '[2001:db8::1]:443 "GET /plaintext HTTP/1.1" 200 13',
                '127.0.0.1:%d "GET /healthz HTTP/1.1" 200 3' % own])

    def test_proxy_protocol_refuses_missing_bad_and_late_headers(self):
        """A plain request, a malformed header and no header within --header-timeout each close
        the connection without an answer; the count is printed at exit."""
        srv = Server("--proxy-protocol", "--header-timeout", "1")
        try:
            for first in (b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n",
                          b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 99999\r\n"):
                s = srv.sock()
                s.sendall(first)
                try:  # closed on unread bytes: a reset, or an EOF
                    self.assertEqual(recv_until_closed(s, 3), b"", first)
                except ConnectionResetError:
                    pass
                s.close()
            s = srv.sock()
            t0 = time.monotonic()
            self.assertEqual(recv_until_closed(s, 5), b"")
            waited = time.monotonic() - t0
            self.assertGreater(waited, 0.8)
            self.assertLess(waited, 4 if MEMCHECKED else 2.5)
            s.close()
        finally:
            rc, _, err = srv.stop()
        self.assertEqual(rc, 0, err)
        self.assertIn("3 connections closed for a missing, bad or late PROXY header", err)

    def test_without_the_flag_a_header_is_a_bad_request(self):
        s = self.srv_plain.sock()
        s.sendall(b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 8080\r\n"
                  b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _, _ = read_response(s)
        self.assertEqual((status, headers.get("connection")), (400, "close"))
        s.close()

    def test_healthz(self):
        c = http.client.HTTPConnection("127.0.0.1", self.srv_plain.port, timeout=5)
        c.request("GET", "/healthz")
        r = c.getresponse()
        self.assertEqual((r.status, r.read()), (200, b"ok\n"))
        c.request("HEAD", "/healthz")
        r = c.getresponse()
        self.assertEqual((r.status, r.read()), (200, b""))
        c.close()

    @classmethod
    def setUpClass(cls):
        cls.srv_plain = Server()

    @classmethod
    def tearDownClass(cls):
        assert cls.srv_plain.stop()[0] == 0

    def test_drain_says_503_and_closes_while_serving_on(self):
        """With --drain 2, SIGTERM is followed by 2 s in which the server still accepts and
        answers, /healthz says 503 and every answer closes its connection; then it stops and
        exits 0. Without a request in between, a keep-alive connection is closed at the stop."""
        srv = Server("--drain", "2")
        ka = srv.sock()
        ka.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertEqual(read_response(ka)[1].get("connection"), None)
        idle = srv.sock()
        idle.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(idle)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        h = srv.sock()  # a new connection, as a balancer's health check makes
        h.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _, rest = read_response(h)
        self.assertEqual((status, headers.get("connection")), (503, "close"))
        self.assertEqual(rest + recv_until_closed(h, 3), b"")
        ka.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body, rest = read_response(ka)
        self.assertEqual((status, body, headers.get("connection")), (200, b"Hello, World!", "close"))
        self.assertEqual(rest + recv_until_closed(ka, 3), b"")
        self.assertLess(time.monotonic() - t0, 1.8, "too slow to test the drain")
        self.assertIsNone(srv.proc.poll(), "stopped before the drain ended")
        self.assertEqual(recv_until_closed(idle, 5), b"")  # closed at the stop
        rc, _, err = srv.wait(10)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, err)
        self.assertGreater(took, 1.9)
        self.assertIn("draining for 2000 ms, then stopping", err)
        for s in (ka, idle, h):
            s.close()

    def test_second_signal_ends_the_drain(self):
        srv = Server("--drain", "60")
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        t0 = time.monotonic()
        rc, _, err = srv.stop()
        self.assertEqual(rc, 0, err)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn("Terminated, stopping now", err)

    def test_bad_drain_values_exit_2(self):
        assert_rejected(self, BINARY, "--drain", ["", "x", "-1", "3601", "1.5"],
                        "bad value '%s' for --drain")


def read_head_bytes(data):
    """(status, headers, rest) of the response head at the start of data."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError("a cut response head: %r" % head[:200])
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, rest


def split_responses(data):
    """The (status, headers, body) of each Content-Length response in data, in order."""
    out = []
    while data:
        status, headers, data = read_head_bytes(data)
        n = int(headers.get("content-length", "0"))
        if len(data) < n:
            raise AssertionError("a cut body")
        out.append((status, headers, data[:n]))
        data = data[n:]
    return out


class HttpThreads(unittest.TestCase):
    """--threads and --spread, whatever RX_TEST_THREADS says."""

    def stats(self, srv):
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        c.request("GET", "/stats")
        st = json.loads(c.getresponse().read())
        c.close()
        return st

    def test_200_clients_on_4_threads_both_spreads(self):
        """200 clients at once, each with a pipeline of a plaintext, a JSON, a static file and
        an echo of its own body: every response right, on every loop, in both modes."""
        with open(os.path.join(WWW, "hello.txt"), "rb") as f:
            hello = f.read()
        for spread in ("handoff", "reuseport"):
            with self.subTest(spread=spread):
                srv = Server("--threads", "4", "--spread", spread)
                try:
                    self.assertIn("4 threads, spread %s" % spread, srv.first_line)
                    bodies = [os.urandom(8).hex().encode() * 64 for _ in range(200)]
                    reqs = [b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
                            b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n"
                            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                            b"Connection: close\r\n\r\n%s" % (len(b), b) for b in bodies]
                    got = exchange_concurrently(srv.port, reqs, half_close=False)
                    want = [b"Hello, World!", b'{"message":"Hello, World!"}', hello]
                    for i, data in enumerate(got):
                        answers = [(st, body) for st, _, body in split_responses(data)]
                        self.assertEqual(answers, [(200, w) for w in want + [bodies[i]]],
                                         "client %d" % i)
                    st = self.stats(srv)
                    self.assertEqual(len(st["loops"]), 4)
                    self.assertEqual(st["requests"], 801)
                    self.assertEqual(st["connections_total"], 201)
                    if spread == "handoff":  # round-robin: 50 or 51 connections each
                        for loop in st["loops"]:
                            self.assertGreaterEqual(loop["connections_total"], 50, st)
                finally:
                    rc, _, err = srv.stop()
                self.assertEqual(rc, 0, err)
                self.assertIn("rx-http: 201 connections, 801 requests", err)

    def test_stats_lists_4_loops_that_add_up(self):
        srv = Server("--threads", "4")
        try:
            for _ in range(20):  # one connection each: handed to the loops in turn
                c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
                c.request("GET", "/plaintext")
                self.assertEqual(c.getresponse().read(), b"Hello, World!")
                c.close()
            keep = srv.sock()  # one connection left open, on some loop
            keep.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
            read_response(keep)
            # The loops see the 20 closes in their own time: ask (on `keep`) until they have.
            for polls in range(1, 101):
                keep.sendall(b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n")
                status, _, body, _ = read_response(keep)
                st = json.loads(body)
                if st["connections_open"] == 1:
                    break
                time.sleep(0.05)
            loops = st["loops"]
            self.assertEqual(len(loops), 4, st)
            for key in ("requests", "connections_total", "connections_open"):
                self.assertEqual(sum(loop[key] for loop in loops), st[key], (key, st))
            self.assertEqual(st["connections_open"], 1, st)
            self.assertEqual(st["connections_total"], 21, st)
            self.assertEqual(st["requests"], 21 + polls, st)
            self.assertTrue(all(loop["requests"] >= 5 for loop in loops), st)
            # A /stats request is counted before its body is made, its response after.
            self.assertEqual(st["responses"]["2xx"], 21 + polls - 1, st)
            keep.close()
        finally:
            self.assertEqual(srv.stop()[0], 0)

    def test_bad_threads_and_spread_exit_2(self):
        for args in (["--threads", "x"], ["--threads", "-1"], ["--threads", "1025"],
                     ["--threads", ""], ["--spread", "kernel"], ["--spread", ""]):
            r = subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(args[0], r.stderr)

    def test_sigterm_with_threads_stops_gracefully(self):
        """The signal is handled once; at the stop a keep-alive connection between requests is
        closed at once, one in the middle of a request gets its answer (with Connection: close)
        and is closed after it; then the process exits 0 and prints the sums of every loop."""
        srv = Server("--threads", "4")
        for _ in range(5):
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            c.request("GET", "/json")
            c.getresponse().read()
            c.close()
        idle = srv.sock()
        idle.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(idle)
        busy = srv.sock()
        busy.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n")  # the head is not complete
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)
        self.assertEqual(recv_until_closed(idle, 3), b"")
        idle.close()
        time.sleep(0.2)
        self.assertIsNone(srv.proc.poll(), "exited with a request in progress")
        busy.sendall(b"\r\n")
        status, headers, body, rest = read_response(busy)
        self.assertEqual((status, body), (200, b"Hello, World!"))
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(rest + recv_until_closed(busy, 3), b"")
        t0 = time.monotonic()
        busy.close()
        rc, _, err = srv.wait(10)
        self.assertEqual(rc, 0, err)
        self.assertLess(time.monotonic() - t0, 3, "waited for the deadline")
        self.assertEqual(err.count("stopping"), 1, err)
        self.assertIn("rx-http: 7 connections, 7 requests", err)


class HttpIoThreads(unittest.TestCase):
    """--io-threads: static files looked up, and the access log written, on a work pool."""

    def test_files_through_the_pool_answer_in_order(self):
        """200 clients at once, each pipelining static files (found, a directory's index.html,
        missing, HEAD, If-Modified-Since) between requests the loop answers itself: every
        answer right and in its place, on 2 loops sharing a pool of 3 threads."""
        with open(os.path.join(WWW, "hello.txt"), "rb") as f:
            hello = f.read()
        with open(os.path.join(WWW, "index.html"), "rb") as f:
            index = f.read()
        srv = Server("--threads", "2", "--io-threads", "3")
        try:
            self.assertIn("3 I/O threads", srv.first_line)
            future = "Sat, 01 Jan 2050 00:00:00 GMT"
            req = (b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /no/such/file HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: %s\r\n\r\n"
                   b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                   % future.encode())
            got = exchange_concurrently(srv.port, [req] * 200, half_close=False)
            for i, data in enumerate(got):
                # HEAD and 304 have no body: split by hand around them.
                s1, h1, rest = read_head_bytes(data)
                self.assertEqual(s1, 200, i)
                self.assertEqual(rest[:len(hello)], hello, i)
                rest = rest[len(hello):]
                answers = []
                for head_only in (False, False, False, True, True, False):
                    st, hd, rest = read_head_bytes(rest)
                    n = 0 if head_only else int(hd.get("content-length", "0"))
                    answers.append((st, rest[:n]))
                    rest = rest[n:]
                self.assertEqual(rest, b"", i)
                self.assertEqual(answers, [(200, b"Hello, World!"), (200, index),
                                           (404, http_reason_body(404)), (200, b""), (304, b""),
                                           (200, b'{"message":"Hello, World!"}')], i)
        finally:
            rc, _, err = srv.stop()
        self.assertEqual(rc, 0, err)
        self.assertIn("rx-http: 200 connections, 1400 requests", err)

    def test_access_log_written_by_the_pool(self):
        """50 clients, 4 requests each, 2 loops: after SIGTERM the log holds every line once,
        each client's in the order of its requests."""
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "access.log")
            srv = Server("--threads", "2", "--io-threads", "2", "--access-log", log)
            try:
                paths = [b"/hello.txt", b"/plaintext", b"/missing", b"/json"]
                req = b"".join(b"GET %s?c=%%d HTTP/1.1\r\nHost: t\r\n\r\n" % p for p in paths)
                reqs = [req.replace(b"%d", str(i).encode()) for i in range(50)]
                reqs = [r[:-4] + b"\r\nConnection: close\r\n\r\n" for r in reqs]
                exchange_concurrently(srv.port, reqs, half_close=False)
            finally:
                rc, _, err = srv.stop()
            self.assertEqual(rc, 0, err)
            with open(log) as f:
                lines = f.read().splitlines()
        self.assertEqual(len(lines), 200, lines[:5])
        want = {"/hello.txt": 200, "/plaintext": 200, "/missing": 404, "/json": 200}
        per_client = {}
        for line in lines:
            m = re.match(r'^127\.0\.0\.1:\d+ "GET (/[a-z.]+)\?c=(\d+) HTTP/1\.1" (\d+) \d+$',
                         line)
            self.assertIsNotNone(m, line)
            self.assertEqual(int(m.group(3)), want[m.group(1)], line)
            per_client.setdefault(m.group(2), []).append(m.group(1))
        self.assertEqual(len(per_client), 50)
        for c, seen in per_client.items():
            self.assertEqual(seen, [p.decode() for p in paths], c)

    def test_bad_io_threads_exit_2(self):
        for value in ("x", "-1", "1025", ""):
            r = subprocess.run([BINARY, "--io-threads", value], capture_output=True, text=True,
                               timeout=10)
            self.assertEqual(r.returncode, 2, value)
            self.assertIn("--io-threads", r.stderr)


def main():
    global BINARY, WWW
    BINARY, WWW = sys.argv[1], sys.argv[2]
    if not shutil.which("curl"):
        print("curl not found; install it (apt-get install curl)", file=sys.stderr)
        return 1
    load = unittest.defaultTestLoader.loadTestsFromTestCase
    suite = unittest.TestSuite([load(HttpLite), load(HttpThreads), load(HttpIoThreads),
                                 load(HttpBalancer)])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
