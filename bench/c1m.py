"""bench/run --c1m: as many concurrent connections as this machine allows, aiming at 1,000,000.

rx-echo --workers W holds them (W = what the target needs with each worker at 80% of its fd
limit, the headroom for the kernel's uneven SO_REUSEPORT spread); echo-load in P processes (each
under its own fd limit) opens them from S source addresses 127.0.0.1..S (each gives the size of
ip_local_port_range, halved), sends one 16-byte message on each and verifies its echo, then
holds them. While they are held: the number held, the time to open and verify them, the workers'
RSS per connection (all workers together), the kernel's slab per connection (/proc/meminfo, both
ends: client and server run here) and a fresh client's round trips (p50/p99). MemAvailable is
watched as they open: below STOP_MEM_GIB (2 GiB, plus a margin for the next half second) the load
is stopped and the report names the wall. Limits are checked first and what is short is said.
Everything started is stopped by its PID (echo-load by its process group)."""
import datetime
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import benchlib as bl

TARGET = 1_000_000
STOP_MEM_GIB = 2.0
MARGIN_GIB = 0.5       # opening runs at up to ~1 GiB/s of kernel memory: checked every 0.25 s
WORKER_FILL = 0.8      # of a worker's fd limit
FD_SPARE = 200         # fds a process needs besides its connections
HOLD_S = 3600          # echo-load's hold; SIGUSR1 ends it once the figures are taken
MSG = 16
# Of ip_local_port_range, per source address: the rest is for sockets in TIME_WAIT (an earlier
# run's, for 60 s) and whatever else binds there. Source addresses cost nothing on 127/8.
PORT_SHARE = 0.5
# Connects per second over all echo-load processes. Faster, the listen queues overflow while the
# workers wait for a CPU, the kernel drops SYNs (ListenOverflows) and connects time out.
CONNECT_RATE = 20000
PROBES = 200


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0])  # KiB
    return out


def tcp_inuse():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                return int(line.split()[2])
    return 0


def limits(target):
    """(target, workers, procs, sources, lines): what the limits allow, and what is short."""
    lines, short = [], []
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    per_worker = int((hard - FD_SPARE) * WORKER_FILL)
    per_proc = hard - FD_SPARE
    lines.append(f"RLIMIT_NOFILE hard {hard:,} per process: {per_worker:,} connections per "
                 f"rx-echo worker (80%), {per_proc:,} per echo-load process")
    file_max = int(bl.read_sysctl("fs.file-max")[0])
    nr_files = int(bl.read_sysctl("fs.file-nr")[0])
    room = (file_max - nr_files - 50_000) // 2  # two fds (client, server) per connection
    if room < target:
        short.append(f"fs.file-max {file_max:,} leaves room for {room:,} connections "
                     f"(two fds each): raise it (sysctl -w fs.file-max=...)")
        target = room
    else:
        lines.append(f"fs.file-max {file_max:,} ({nr_files:,} in use): room for {room:,}")
    lo, hi = map(int, bl.read_sysctl("net.ipv4.ip_local_port_range"))
    ports = int((hi - lo + 1) * PORT_SHARE)
    sources = math.ceil(target / ports)
    if sources > 254:
        short.append(f"ip_local_port_range {lo}-{hi} gives {ports:,} usable ports per source "
                     f"address; 254 addresses reach {254 * ports:,}")
        target, sources = 254 * ports, 254
    lines.append(f"ip_local_port_range {lo}-{hi}: {ports:,} ports per source address, "
                 f"{sources} addresses (127.0.0.1..{sources})")
    if os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
        # Loaded is not tracking: only a rule that asks for it makes loopback connections count.
        ct = int(bl.read_sysctl("net.netfilter.nf_conntrack_max")[0])
        count = int(bl.read_sysctl("net.netfilter.nf_conntrack_count")[0])
        if count > 0 and ct < target:
            short.append(f"nf_conntrack tracks connections ({count:,} now) and "
                         f"net.netfilter.nf_conntrack_max is {ct:,}: SYNs past it are dropped")
        else:
            lines.append(f"nf_conntrack_max {ct:,}, {count:,} tracked now")
    with open("/proc/net/sockstat") as f:
        tw = int(re.search(r"tw (\d+)", f.read()).group(1))
    lines.append(f"{tw:,} sockets in TIME_WAIT now (they hold their ports for up to 60 s)")
    somax = int(bl.read_sysctl("net.core.somaxconn")[0])
    lines.append(f"net.core.somaxconn {somax}")
    avail = meminfo()["MemAvailable"] / 2**20
    lines.append(f"MemAvailable {avail:.1f} GiB at the start; the run stops below "
                 f"{STOP_MEM_GIB:.0f} GiB")
    workers = math.ceil(target / per_worker)
    procs = math.ceil(target / per_proc)
    for s in short:
        print("c1m: SHORT: " + s, file=sys.stderr)
    for l in lines:
        print("c1m: " + l, file=sys.stderr)
    return target, workers, procs, sources, ["SHORT: " + s for s in short] + lines


class Lines(threading.Thread):
    """Collects a pipe's lines (a child's stderr) as they come."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []
        self.start()

    def run(self):
        for line in self.pipe:
            self.lines.append(line.rstrip("\n"))

    def count(self, pattern):
        return sum(1 for l in list(self.lines) if re.search(pattern, l))


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def run(build, out_dir, target=TARGET):
    target, workers, procs, sources, limit_lines = limits(target)
    bl.raise_nofile()
    echo = os.path.join(build, "apps", "echo", "rx-echo")
    load = os.path.join(build, "bench", "echo-load")
    for b in (echo, load):
        if not os.access(b, os.X_OK):
            raise bl.BenchError(f"{b} is missing: build first")
    mem0 = meminfo()
    inuse0 = tcp_inuse()
    srv = subprocess.Popen([echo, "--listen", "127.0.0.1:0", "--workers", str(workers)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lp = None
    notes, res = [], {"target": target, "workers": workers, "procs": procs, "sources": sources}
    try:
        first = srv.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", first)
        if not m:
            raise bl.BenchError(f"rx-echo did not start: {first!r}")
        port = int(m.group(1))
        log = Lines(srv.stderr)
        deadline = time.monotonic() + 60
        while log.count(r"\) ready$") < workers:
            if time.monotonic() > deadline or srv.poll() is not None:
                raise bl.BenchError(f"{log.count(r'ready$')} of {workers} workers ready")
            time.sleep(0.1)
        pids = children(srv.pid)
        rss0 = sum(bl.status_kb(p, "VmRSS") for p in pids)
        fds0 = sum(bl.fd_count(p) for p in pids)
        argv = [load, "--connect", f"127.0.0.1:{port}", "--conns", str(target), "--size",
                str(MSG), "--messages", "1", "--hold", "--duration", str(HOLD_S), "--procs",
                str(procs), "--sources", str(sources), "--connect-rate", str(CONNECT_RATE),
                "--json"]
        print("c1m: " + " ".join(argv), file=sys.stderr)
        t0 = time.monotonic()
        lp = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
        llog = Lines(lp.stderr)
        stop_why, last = None, 0.0
        while llog.count(r"connections settled after") < procs:
            time.sleep(0.25)
            now = time.monotonic() - t0
            conns = (tcp_inuse() - inuse0) // 2
            avail = meminfo()["MemAvailable"] / 2**20
            if avail < STOP_MEM_GIB + MARGIN_GIB:
                stop_why = (f"MemAvailable fell to {avail:.2f} GiB with {conns:,} connections "
                            f"open (the run stops before {STOP_MEM_GIB:.0f} GiB)")
                break
            if lp.poll() is not None:
                stop_why = f"echo-load ended early: {llog.lines[-3:]}"
                break
            if now - last >= 1:
                last = now
                print(f"c1m: {now:5.1f} s  {conns:>9,} of {target:,} open, "
                      f"{llog.count('connections settled after')}/{procs} processes settled, "
                      f"MemAvailable {avail:.1f} GiB", file=sys.stderr, flush=True)
        res["open_s"] = time.monotonic() - t0
        if stop_why:
            notes.append(stop_why)
            print("c1m: STOP: " + stop_why, file=sys.stderr)
        time.sleep(1)  # the last echoes' bytes leave the queues
        mem1 = meminfo()
        if children(srv.pid) != pids:
            notes.append("a worker was replaced during the run (the master's log is below)")
        res["held"] = sum(bl.fd_count(p) for p in pids) - fds0  # one fd per connection
        rss1 = sum(bl.status_kb(p, "VmRSS") for p in pids)
        held = max(res["held"], 1)
        res["rss_conn"] = (rss1 - rss0) * 1024 / held
        res["rss_mib"] = rss1 / 1024
        res["slab_conn"] = (mem1["Slab"] - mem0["Slab"]) * 1024 / held
        res["mem_used_gib"] = (mem0["MemAvailable"] - mem1["MemAvailable"]) / 2**20
        res["avail_gib"] = mem1["MemAvailable"] / 2**20
        res["p50"], res["p99"] = bl.probe(port, bl.echo_roundtrip, PROBES)
        print(f"c1m: held {res['held']:,}, open+verify {res['open_s']:.1f} s, user RSS "
              f"{res['rss_conn']:.0f} B/conn, slab {res['slab_conn']:.0f} B/conn, fresh client "
              f"p50 {res['p50']:.0f} us p99 {res['p99']:.0f} us", file=sys.stderr)
        os.killpg(lp.pid, signal.SIGUSR1)
        out, _ = lp.communicate(timeout=600)
        j = bl.parse_echo_load(out)["json"]
        res["verified"], res["errors"], res["failed"] = (j["messages_all"], j["errors"]["total"],
                                                         j["conns_failed"])
        res["verified_s"] = j["verified_s"]
        if res["errors"] or res["failed"]:
            notes += ["echo-load: " + l for l in llog.lines if "settled" not in l
                      and " s connecting " not in l and " s running " not in l][-10:]
    finally:
        if lp and lp.poll() is None:
            os.killpg(lp.pid, signal.SIGKILL)
            lp.wait()
        if srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
            try:
                srv.wait(120)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
    return report(res, limit_lines, notes, out_dir)


def report(r, limit_lines, notes, out_dir):
    f = bl.machine_facts()
    date = datetime.date.today().isoformat()
    ok = r["verified"] == r["target"] and r["errors"] == 0
    lines = [f"# rx-echo holding {r['held']:,} connections, {date}", "",
             f"Machine: {f['nproc']} CPUs ({f['cpu']}), Linux {f['kernel']}. Server: rx-echo "
             f"--workers {r['workers']} (one loop each); load: echo-load in {r['procs']} "
             f"processes from {r['sources']} source addresses; everything shares both CPUs.", "",
             "| figure | value |", "|---|---:|",
             f"| connections aimed at | {r['target']:,} |",
             f"| held at once (the workers' open fds, less their baseline) | {r['held']:,} |",
             f"| verified by one echo each | {r['verified']:,} |",
             f"| errors / failed connects | {r['errors']:,} / {r['failed']:,} |",
             f"| time to open and verify them | {r['open_s']:.1f} s |",
             f"| user-space RSS of all workers | {r['rss_mib']:,.0f} MiB |",
             f"| user-space RSS per connection | {r['rss_conn']:.0f} B |",
             f"| kernel slab per connection (both ends) | {r['slab_conn']:,.0f} B |",
             f"| memory taken in all (MemAvailable before - after) | {r['mem_used_gib']:.2f} GiB |",
             f"| MemAvailable while held | {r['avail_gib']:.1f} GiB |",
             f"| fresh client round trip p50 / p99 ({PROBES}, 64 B) | {r['p50']:.0f} / "
             f"{r['p99']:.0f} us |", "",
             "Limits checked first:", ""] + [f"- {l}" for l in limit_lines]
    if notes:
        lines += ["", "Stopped early:", ""] + [f"- {n}" for n in notes]
    lines += ["", "PASS" if ok else "FAIL: not every connection was verified"]
    text = "\n".join(lines) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{date}-c1m.md")
    with open(path, "w") as fh:
        fh.write(text)
    print(text)
    print(f"written: {os.path.relpath(path)}", file=sys.stderr)
    return 0 if ok else 1
