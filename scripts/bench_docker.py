#!/usr/bin/env python3
"""The measuring of scripts/bench-docker.sh (Python standard library only). Runs in the lab's
host namespace; the engine is the lab's real dockerd (its socket for the docker CLI, its TCP
endpoint for dockroute).

  bench_docker.py BIN CONFIG DOCKER_CLI [--creates N] [--runs N] [--idle-secs S] [--sizes 1,10,100]
"""

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

from bench_watch import proc_sample  # (ticks, children's ticks, wake-ups, RSS KiB, threads)

VM = "192.168.99.100"
ENGINE = f"tcp://{VM}:2375"
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTA_DST = 1


class RouteMonitor:
    """rtnetlink route events of this namespace: (kind, 'dst/len') -> times (ns, realtime)."""

    def __init__(self):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.s.bind((0, RTMGRP_IPV4_ROUTE))
        self.seen = {}
        self.cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            buf = self.s.recv(1 << 16)
            now = time.time_ns()
            off = 0
            while off + 16 <= len(buf):
                ln, kind = struct.unpack_from("=IH", buf, off)
                if ln < 16:
                    break
                if kind in (RTM_NEWROUTE, RTM_DELROUTE):
                    self._route(kind, buf[off + 16 : off + ln], now)
                off += (ln + 3) & ~3

    def _route(self, kind, body, now):
        if len(body) < 12 or body[0] != socket.AF_INET:
            return
        dst_len = body[1]
        off = 12
        while off + 4 <= len(body):
            ln, t = struct.unpack_from("=HH", body, off)
            if ln < 4:
                break
            if t == RTA_DST and ln >= 8:
                dst = socket.inet_ntoa(body[off + 4 : off + 8])
                with self.cv:
                    self.seen.setdefault((kind, f"{dst}/{dst_len}"), []).append(now)
                    self.cv.notify_all()
            off += (ln + 3) & ~3

    def wait(self, kind, cidr, timeout=15.0, settle=0.2):
        """The time the last of the route messages for `cidr` came (dockroute's table and
        main), or None."""
        key = (kind, cidr)
        deadline = time.monotonic() + timeout
        with self.cv:
            while key not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)
        time.sleep(settle)
        with self.cv:
            return self.seen.pop(key)[-1]


class DockerEvents:
    """`docker events` for networks: (action, name) -> the engine's timeNano."""

    def __init__(self, cli, env):
        self.p = subprocess.Popen(
            [cli, "events", "--filter", "type=network", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True,
        )
        self.seen = {}
        self.cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for line in self.p.stdout:
            try:
                e = json.loads(line)
                key = (e["Action"], e["Actor"]["Attributes"]["name"])
                with self.cv:
                    self.seen[key] = int(e["timeNano"])
                    self.cv.notify_all()
            except (ValueError, KeyError, TypeError):
                continue

    def wait(self, action, name, timeout=15.0):
        deadline = time.monotonic() + timeout
        with self.cv:
            while (action, name) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)
            return self.seen.pop((action, name))

    def stop(self):
        self.p.terminate()
        self.p.wait()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(ns):
    return ns / 1e6


class Ctx:
    def __init__(self, a):
        self.a = a
        self.env = dict(os.environ)
        self.docker_env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DOCKER_HOST": a.docker_host,
            "DOCKER_CONFIG": a.docker_config,
        }

    def dr(self, *args):
        return [self.a.bin, "--config", self.a.config, *args]

    def docker(self, *args):
        subprocess.run([self.a.cli, *args], env=self.docker_env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run(self, argv):
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv[3:5])}... failed:\n{r.stderr.decode()[-2000:]}")


def start_watch(ctx, log):
    p = subprocess.Popen(
        ctx.dr("watch", "--vm-ip", VM, "--dns", "off", "--docker", ENGINE),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        env=dict(ctx.env, DOCKROUTE_LOG="info"), start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while True:
        log.seek(0)
        if b"following the engine's events at" in log.read():
            break
        if time.monotonic() > deadline or p.poll() is not None:
            log.seek(0)
            raise SystemExit("bench: watch did not open the event stream:\n" + log.read().decode())
        time.sleep(0.05)
    time.sleep(1.0)  # its relist reconcile settles
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        p.wait(10)


def trial(ctx, mon, ev, argv, event, route, from_event, from_return):
    """Run `docker ARGV`; note when the route message came, after the engine's event and after
    the command returned. 1 when either never came."""
    ctx.docker(*argv)
    returned = time.time_ns()
    t_ev = ev.wait(*event)
    t_rt = mon.wait(*route)
    time.sleep(0.1)
    if t_ev is None or t_rt is None:
        return 1
    from_event.append(t_rt - t_ev)
    from_return.append(t_rt - returned)
    return 0


def follow(ctx):
    import tempfile
    mon = RouteMonitor()
    ev = DockerEvents(ctx.a.cli, ctx.docker_env)
    log = tempfile.TemporaryFile()
    w = start_watch(ctx, log)
    add_ev, add_ret, del_ev, del_ret, missed = [], [], [], [], 0
    for i in range(ctx.a.creates):
        name, cidr = f"bench{i}", f"10.201.{i % 250}.0/24"
        missed += trial(ctx, mon, ev, ("network", "create", "--subnet", cidr, name),
                        ("create", name), (RTM_NEWROUTE, cidr), add_ev, add_ret)
        missed += trial(ctx, mon, ev, ("network", "rm", name),
                        ("destroy", name), (RTM_DELROUTE, cidr), del_ev, del_ret)
    stop(w)
    ev.stop()
    ctx.run(ctx.dr("down"))
    print(f"network created -> route present, removed -> route gone ({ctx.a.creates} of each; "
          f"watch --docker {ENGINE}, firewall auto, DNS off; ms):")
    print(f"  {'':38} {'median':>8} {'p99':>8} {'max':>8}")
    for label, xs in [
        ("created: from the engine's event", add_ev),
        ("created: from `docker network create`", add_ret),
        ("removed: from the engine's event", del_ev),
        ("removed: from `docker network rm`", del_ret),
    ]:
        if xs:
            print(f"  {label:38} {ms(statistics.median(xs)):8.1f} {ms(pct(xs, 99)):8.1f} "
                  f"{ms(max(xs)):8.1f}")
    if missed:
        print(f"  missed (no event or no route within 15 s): {missed}")
    sys.stdout.flush()


def timed(ctx, argv, runs, before=None):
    out = []
    for _ in range(runs):
        if before:
            ctx.run(before)
        t = time.perf_counter()
        ctx.run(argv)
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000


def scale(ctx):
    sizes = [int(s) for s in ctx.a.sizes.split(",")]
    made = 0
    runs = ctx.a.runs
    print(f"`up` listing the engine vs routes-only `up` of the same subnets as --subnet "
          f"(median of {runs} runs, ms; firewall auto, DNS off):")
    print(f"  {'networks':>8} {'from nothing: engine':>21} {'--subnet':>9} {'ratio':>6}"
          f" {'no change: engine':>18} {'--subnet':>9} {'ratio':>6}")
    down = ctx.dr("down")
    for n in sizes:
        while made < n:
            ctx.docker("network", "create", "--subnet", f"10.202.{made}.0/24", f"scale{made}")
            made += 1
        engine = ctx.dr("up", "--vm-ip", VM, "--dns", "off", "--docker", ENGINE)
        fixed = ctx.dr("up", "--vm-ip", VM, "--dns", "off", "--docker", "off",
                       "--subnet", "172.17.0.0/16",
                       *[a for j in range(n) for a in ("--subnet", f"10.202.{j}.0/24")])
        ctx.run(engine)  # warm the page cache
        e1 = timed(ctx, engine, runs, before=down)
        f1 = timed(ctx, fixed, runs, before=down)
        ctx.run(engine)
        e2 = timed(ctx, engine, runs)
        ctx.run(fixed)
        f2 = timed(ctx, fixed, runs)
        ctx.run(down)
        print(f"  {n:8} {e1:21.1f} {f1:9.1f} {e1 / f1:6.2f} {e2:18.1f} {f2:9.1f} {e2 / f2:6.2f}")
        sys.stdout.flush()
    for j in range(made):
        ctx.docker("network", "rm", f"scale{j}")


def cpu_ns(pid):
    """The CPU time of every thread of `pid` so far, in ns (the scheduler's exact sum, not
    sampled: se.sum_exec_runtime, in ms, of /proc/PID/task/TID/sched)."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":")[1])
        except (OSError, ValueError, IndexError):
            continue
    return int(total * 1e6)


def idle(ctx):
    import tempfile
    log = tempfile.TemporaryFile()
    w = start_watch(ctx, log)
    a = proc_sample(w.pid)
    ca = cpu_ns(w.pid)
    t0 = time.monotonic()
    time.sleep(ctx.a.idle_secs)
    b = proc_sample(w.pid)
    cb = cpu_ns(w.pid)
    secs = time.monotonic() - t0
    stop(w)
    ctx.run(ctx.dr("down"))
    hz = os.sysconf("SC_CLK_TCK")
    print(f"`watch --docker` idle over {secs:.0f} s, the event stream open, no events:")
    print(f"  CPU ticks (utime+stime, 1/{hz} s)      {b[0] - a[0]}")
    print(f"  CPU time (scheduler, all threads)      {(cb - ca) / 1e6:.2f} ms")
    print(f"  wake-ups (voluntary context switches)  {b[2] - a[2]}")
    print(f"  resident memory (VmRSS)                {b[3] / 1024:.1f} MiB ({b[4]} threads)")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["follow", "scale", "idle", "all"])
    ap.add_argument("bin")
    ap.add_argument("config")
    ap.add_argument("cli")
    ap.add_argument("docker_host")
    ap.add_argument("docker_config")
    ap.add_argument("--creates", type=int, default=60)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle-secs", type=float, default=60)
    ap.add_argument("--sizes", default="1,10,100")
    a = ap.parse_args()
    ctx = Ctx(a)
    if a.part in ("follow", "all"):
        follow(ctx)
    if a.part in ("scale", "all"):
        scale(ctx)
    if a.part in ("idle", "all"):
        idle(ctx)


if __name__ == "__main__":
    main()
