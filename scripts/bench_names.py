"""The measuring of scripts/bench-names.sh (Python standard library only), run in a lab's host
namespace.

  bench_names.py serve N SOCKET          a fake Docker engine on SOCKET with N running containers
  bench_names.py dnsperf BIN DIR SOCKET  dnsperf against watch's responder and dnsmasq (same N
                                         names), and watch's resident memory
  bench_names.py live BIN DIR SOCKET DOCKER_CLI RUNS
                                         name live after `docker start` (a real engine)
"""

import json
import os
import random
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler

SUBNET = "172.20"


def ident(i, kind):
    return ("%s%060x" % (kind, i))[-64:]


def container(i):
    return {
        "Id": ident(i, "c"),
        "Names": ["/c%d" % i],
        "State": "running",
        "Labels": {"com.docker.compose.service": "s%d" % i, "com.docker.compose.project": "bench"},
        "NetworkSettings": {"Networks": {"bench": {
            "IPAddress": "%s.%d.%d" % (SUBNET, 1 + i // 250, 2 + i % 250),
            "EndpointID": ident(i, "e"),
            "Aliases": None,
        }}},
    }


def serve(n, path):
    listed = json.dumps([container(i) for i in range(n)]).encode()
    inspected = json.dumps({"NetworkSettings": {"Networks": {"bench": {"Aliases": []}}}}).encode()
    networks = json.dumps([{
        "Name": "bench", "Id": ident(0, "a"), "Driver": "bridge", "Scope": "local",
        "Internal": False, "IPAM": {"Config": [{"Subnet": SUBNET + ".0.0/16"}]},
    }]).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            p = self.path.split("?")[0]
            if p.endswith("/_ping"):
                body, kind = b"OK", "text/plain"
            elif p.endswith("/version"):
                body, kind = b'{"Version":"fake","ApiVersion":"1.41"}', "application/json"
            elif p.endswith("/networks"):
                body, kind = networks, "application/json"
            elif p.endswith("/containers/json"):
                body, kind = listed, "application/json"
            elif p.endswith("/json"):
                body, kind = inspected, "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    if os.path.exists(path):
        os.unlink(path)
    Server(path, Handler).serve_forever()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_watch(binary, work, socket_path, dns):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DOCKROUTE_STATE_DIR": work + "/state",
           "DOCKROUTE_LOG": "info"}
    log = open(work + "/watch-%s.log" % dns, "w")
    p = subprocess.Popen([binary, "--config", work + "/config.toml", "watch", "--vm-ip",
                          "192.168.99.100", "--docker", "unix://" + socket_path, "--dns", dns],
                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.time() + 20
    while time.time() < deadline:
        with open(work + "/watch-%s.log" % dns) as f:
            if "watching (" in f.read():
                return p
        time.sleep(0.05)
    raise SystemExit("watch did not start: see " + work)


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)


def dnsperf_run(server, queries, secs, verbose):
    args = ["dnsperf", "-s", server, "-d", queries, "-l", str(secs), "-c", "4", "-q", "100"]
    if verbose:
        args.append("-v")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    qps = None
    lat = []
    lost = 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Queries per second:"):
            qps = float(line.split()[-1])
        if line.startswith("Queries lost:"):
            lost = int(line.split()[2])
        if verbose and line.startswith(">"):
            # "> NOERROR c1.docker A 0.000123"
            try:
                lat.append(float(line.split()[-1]) * 1000)
            except ValueError:
                pass
    return qps, lat, lost


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def dnsperf(binary, work, socket_path, n=1000):
    queries = work + "/queries"
    with open(queries, "w") as f:
        for i in range(n):
            f.write("c%d.docker A\n" % i)
    hosts = work + "/hosts"
    with open(hosts, "w") as f:
        for i in range(n):
            c = container(i)
            f.write("%s c%d.docker\n" % (c["NetworkSettings"]["Networks"]["bench"]["IPAddress"], i))
    # an idle watch: the same engine, no responder
    w = start_watch(binary, work, socket_path, "off")
    time.sleep(3)
    idle = rss_kib(w.pid)
    stop(w)
    w = start_watch(binary, work, socket_path, "resolv-conf")
    # the aliases cache fills over refreshes (64 inspections each): SIGHUP until it is full
    for _ in range(n // 64 + 2):
        w.send_signal(signal.SIGHUP)
        time.sleep(0.3)
    time.sleep(2)
    full = rss_kib(w.pid)
    dnsmasq = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                                "--no-resolv", "--no-hosts", "--addn-hosts=" + hosts,
                                "--listen-address=127.0.0.154", "--bind-interfaces", "--port=53",
                                "--user=root", "--pid-file=", "--local=/docker/",
                                "--cache-size=10000"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(1)
    # several rounds, the two servers alternating (first one, then the other): load elsewhere on
    # the machine falls on both alike; each figure is the median over the rounds
    servers = (("dockroute responder", "127.0.0.153"), ("dnsmasq (hosts file)", "127.0.0.154"))
    rounds = int(os.environ.get("BENCH_NAMES_ROUNDS", "3"))
    got = {name: [] for name, _ in servers}
    for r in range(rounds):
        for name, server in (servers if r % 2 == 0 else servers[::-1]):
            qps, _, lost = dnsperf_run(server, queries, 10, False)
            _, lat, _ = dnsperf_run(server, queries, 5, True)
            got[name].append((qps, lost, statistics.median(lat), pct(lat, 0.99)))
    rows = []
    for name, _ in servers:
        runs = got[name]
        rows.append((name, statistics.median(x[0] for x in runs), sum(x[1] for x in runs),
                     statistics.median(x[2] for x in runs), statistics.median(x[3] for x in runs)))
    peak = rss_kib(w.pid)
    dnsmasq.terminate()
    dnsmasq.wait()
    stop(w)
    print("dnsperf, %d names, %d alternating rounds of 10 s each (4 clients, 100 outstanding), medians;"
          " latency from a 5 s run with -v" % (n, rounds))
    print("%-22s %10s %6s %12s %12s" % ("server", "qps", "lost", "median ms", "p99 ms"))
    for r in rows:
        print("%-22s %10.0f %6d %12.3f %12.3f" % r)
    print("responder / dnsmasq: qps %.2f, p99 %.2f" % (rows[0][1] / rows[1][1], rows[0][4] / rows[1][4]))
    print("watch resident memory: idle (--dns off) %.1f MiB; %d containers named %.1f MiB (+%.1f MiB); after the dnsperf runs %.1f MiB"
          % (idle / 1024, n, full / 1024, (full - idle) / 1024, peak / 1024))


def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def answers(sock, name):
    qid = random.randrange(65536)
    sock.send(query(name, qid))
    try:
        r = sock.recv(512)
    except socket.timeout:
        return False
    if len(r) < 12:
        return False
    rid, flags, _, ancount = struct.unpack(">HHHH", r[:8])
    return rid == qid and flags & 0xF == 0 and ancount > 0


def live(binary, work, socket_path, cli, runs):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DOCKER_HOST": "unix://" + socket_path,
           "DOCKER_CONFIG": work + "/cli"}

    def docker(*args):
        subprocess.run([cli] + list(args), env=env, check=True, stdout=subprocess.DEVNULL)

    docker("run", "-d", "--name", "live", "busybox-httpd")
    w = start_watch(binary, work, socket_path, "resolv-conf")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.153", 53))
    sock.settimeout(0.05)
    took = []
    for _ in range(runs):
        docker("stop", "-t", "0", "live")
        while answers(sock, "live.docker"):
            time.sleep(0.005)
        docker("start", "live")
        t0 = time.monotonic()
        # the container's start event refreshes the names (no reconcile, no signal)
        while not answers(sock, "live.docker"):
            time.sleep(0.001)
        took.append((time.monotonic() - t0) * 1000)
    stop(w)
    print("name live after `docker start` returned (its event refreshes the names), %d starts: median %.1f ms, p99 %.1f ms, max %.1f ms"
          % (runs, statistics.median(took), pct(took, 0.99), max(took)))


if __name__ == "__main__":
    part = sys.argv[1]
    if part == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif part == "dnsperf":
        dnsperf(sys.argv[2], sys.argv[3], sys.argv[4])
    elif part == "live":
        live(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
