"""The example servers as the integration tests run them: a real binary listening on an
ephemeral 127.0.0.1 port, stopped by a signal to its PID."""
import re
import resource
import signal
import socket
import subprocess


class AppServer:
    def __init__(self, argv, nofile=None):
        """argv: the server command without --listen; its first stdout line names the port.
        nofile: (soft, hard) RLIMIT_NOFILE to start it with."""
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
        self.proc = subprocess.Popen([*argv, "--listen", "127.0.0.1:0"], preexec_fn=limit,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, out, err
