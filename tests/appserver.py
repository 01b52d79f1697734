"""The example servers as the integration tests run them: a real binary listening on an
ephemeral 127.0.0.1 port, stopped by a signal to its PID. With RX_TEST_THREADS=N in the
environment every server runs N loops (--threads N) unless the test chose its own --threads; with
RX_TEST_IO_THREADS=N every rx-http serves files through a work pool (--io-threads N) unless the
test chose its own. With RX_TEST_VALGRIND=1 every server runs under valgrind's memcheck, and
stopping it fails on any error or definitely lost byte it reported."""
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import tempfile
import time
import unittest

VALGRIND = os.environ.get("RX_TEST_VALGRIND") == "1"
# ASan and valgrind keep freed memory in quarantine (and valgrind adds its own), so RSS bounds
# are looser under either.
MEMCHECKED = VALGRIND or os.environ.get("RX_SANITIZED") == "1"
# ThreadSanitizer's shadow and history take about 4 KiB more per connection of the server's.
TSAN = "thread" in os.environ.get("RX_SANITIZER", "")


def skip_under_valgrind(why):
    """Skips a test whose timing or load valgrind's 20-50x slowdown makes meaningless."""
    return unittest.skipIf(VALGRIND, "under valgrind: " + why)


def env_threads(argv):
    """The flags RX_TEST_THREADS and RX_TEST_IO_THREADS add to argv: none for a variable that is
    unset or whose flag argv has already."""
    flags = []
    n = os.environ.get("RX_TEST_THREADS")
    if n and "--threads" not in argv:
        flags += ["--threads", n]
    n = os.environ.get("RX_TEST_IO_THREADS")
    if n and "--io-threads" not in argv and os.path.basename(argv[0]) == "rx-http":
        flags += ["--io-threads", n]
    return flags


class AppServer:
    def __init__(self, argv, nofile=None):
        """argv: the server command without --listen; its first stdout line names the port.
        nofile: (soft, hard) RLIMIT_NOFILE to start it with."""
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
        argv = [*argv, *env_threads(argv)]
        self.vg_log = None
        wrapper = []
        if VALGRIND:
            fd, self.vg_log = tempfile.mkstemp(prefix="rx-valgrind-", suffix=".log")
            os.close(fd)
            # -q: the log holds only errors and the leak records of the kinds that count.
            wrapper = ["valgrind", "-q", "--leak-check=full", "--show-leak-kinds=definite,indirect",
                       "--errors-for-leak-kinds=definite,indirect", "--log-file=" + self.vg_log]
        self.proc = subprocess.Popen([*wrapper, *argv, "--listen", "127.0.0.1:0"],
                                     preexec_fn=limit, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        self.first_line = line
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("%s did not start: %r %r" % (argv[0], line, self.proc.stderr.read()))
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def sock(self, timeout=5):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def stop(self, sig=signal.SIGTERM):
        """Returns (exit status, stdout, stderr)."""
        self.proc.send_signal(sig)
        # A graceful stop takes at most two deadlines of 5 s (let connections finish, then close
        # each, lingering until the peer's end) when clients are left open.
        return self.wait(20)

    def wait(self, timeout):
        """Waits at most timeout seconds for the server to exit (killing it if it does not);
        returns (exit status, stdout, stderr) and fails on a sanitizer's or valgrind's report."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        # A sanitizer's report makes the test fail even where the exit status is not checked.
        for report in ("WARNING: ThreadSanitizer", "ERROR: AddressSanitizer",
                       "runtime error:"):
            if report in err:
                raise AssertionError("a sanitizer report in the server's stderr:\n" + err)
        self.check_valgrind()
        return self.proc.returncode, out, err

    def check_valgrind(self):
        """Under valgrind: raises if its log (kept only then) has an error or a leak record."""
        if not self.vg_log:
            return
        with open(self.vg_log, errors="replace") as f:
            # Errors and leak records are "==PID==" lines; "--PID--" lines are valgrind's own
            # notes (an unknown syscall such as openat2, which rx-http then does without).
            report = "".join(line for line in f if line.startswith("=="))
        if report:
            raise AssertionError("valgrind reported (log kept in %s):\n%s" % (self.vg_log, report))
        os.unlink(self.vg_log)
        self.vg_log = None


def server_end_open(port, client):
    """Whether the server's end of client's connection (to 127.0.0.1:port) is still
    established, from /proc/net/tcp: once the server closed it, its socket is gone (a reset) or
    in FIN-WAIT (a close; its FIN waits behind the bytes the client does not read)."""
    local = "0100007F:%04X" % port
    remote = "0100007F:%04X" % client.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[3] == "01"  # TCP_ESTABLISHED
    return False


def slow_reader(port):
    """A client with a small receive buffer: once it is full, reading a byte now and then never
    opens the window enough for the peer to send again."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def read_a_byte(s):
    """One byte, if one is there (the server may have closed or reset the connection)."""
    s.settimeout(0.05)
    try:
        return s.recv(1)
    except (socket.timeout, ConnectionResetError):
        return b""


def watch_slow_readers(t0, timed_port, timed, other, hold=4, limit=8):
    """Two slow readers read a byte a second each until the server on timed_port closed its end
    of `timed` and `hold` seconds passed since t0 (at most `limit` seconds). Returns when the
    server closed it (seconds since t0, None if it did not) and the bytes `other` read."""
    closed_at, got = None, b""
    while time.monotonic() - t0 < limit:
        got += read_a_byte(other)
        read_a_byte(timed)
        for _ in range(4):
            if closed_at is None and not server_end_open(timed_port, timed):
                closed_at = time.monotonic() - t0
            time.sleep(0.25)
        if closed_at is not None and time.monotonic() - t0 >= hold:
            break
    return closed_at, got


def assert_rejected(test, argv0, flag, values, message):
    """Each value of flag makes argv0 exit 2, with `message % value` on stderr."""
    for value in values:
        r = subprocess.run([argv0, flag, value], capture_output=True, text=True, timeout=10)
        test.assertEqual(r.returncode, 2, value)
        test.assertIn(message % value, r.stderr)


def exchange_concurrently(port, payloads, half_close=True, timeout=60):
    """One client per payload, all connected before any sends (so the server has them all open
    at once), each sending its payload (then shutting its write side down when half_close) and
    reading until the server closes, driven by one selector. Returns the bytes each received."""
    sel = selectors.DefaultSelector()
    clients = []
    try:
        for data in payloads:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            c = {"sock": s, "out": memoryview(data), "got": bytearray(), "done": False}
            clients.append(c)
        for c in clients:
            sel.register(c["sock"], selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        left = len(clients)
        deadline = time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError("%d of %d clients not finished after %d s"
                                   % (left, len(clients), timeout))
            for key, ev in sel.select(0.5):
                c, s = key.data, key.fileobj
                if ev & selectors.EVENT_WRITE and c["out"]:
                    try:
                        c["out"] = c["out"][s.send(c["out"][:65536]):]
                    except BlockingIOError:
                        pass
                    if not c["out"]:
                        if half_close:
                            s.shutdown(socket.SHUT_WR)
                        sel.modify(s, selectors.EVENT_READ, c)
                if ev & selectors.EVENT_READ:
                    try:
                        b = s.recv(65536)
                    except BlockingIOError:
                        continue
                    if b:
                        c["got"] += b
                    else:
                        sel.unregister(s)
                        c["done"] = True
                        left -= 1
        return [bytes(c["got"]) for c in clients]
    finally:
        sel.close()
        for c in clients:
            c["sock"].close()
