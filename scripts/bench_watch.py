#!/usr/bin/env python3
"""The measuring half of scripts/bench-watch.sh (read that first). Runs inside the lab's host
namespace, as root, with the Python standard library only; every program runs with an argument
vector (no shell). Times come from time.monotonic_ns() taken when a netlink listener receives the
kernel's own event (route, rule, nftables), so a change and its repair are timed alike.

    bench_watch.py heal|idle|scale|all  BIN CONFIG STATE_DIR  [--trials N] [--poll-trials N]
                   [--idle-secs S] [--runs N] [--quick]
"""

import argparse
import json
import random
import select
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

VM = "192.168.99.100"
HOST_IF = "vboxnet0"
SUBNET = "172.17.0.0/16"
CTR = ("172.17.0.2", 6379)
TABLE = 5017
PREF = 5100
PROTO = 100

# netlink
NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_DELRULE = 33
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 1, 4, 0x100, 0x400
NLMSG_ERROR = 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
FRA_DST, FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL = 1, 6, 15, 21
RTM_F_LOOKUP_TABLE = 0x1000
GRP_ROUTE, GRP_RULE = 7, 8  # RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE
NFNLGRP_NFTABLES = 7


def attr(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def ip4(a):
    return socket.inet_aton(a)


def net(cidr):
    a, n = cidr.split("/")
    return ip4(a), int(n)


class Netlink:
    """One rtnetlink request socket: a route lookup, and a batch of changes in one datagram."""

    def __init__(self):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.s.bind((0, 0))
        self.seq = 0

    def _msg(self, kind, flags, body):
        self.seq += 1
        return struct.pack("=IHHII", 16 + len(body), kind, flags, self.seq, 0) + body

    def batch(self, msgs):
        """msgs: (type, flags, body); all in one datagram; returns each errno (0 = done)."""
        first = self.seq + 1
        data = b"".join(self._msg(k, NLM_F_REQUEST | NLM_F_ACK | f, b) for k, f, b in msgs)
        self.s.send(data)
        out = {}
        while len(out) < len(msgs):
            buf = self.s.recv(65536)
            for kind, seq, payload in split(buf):
                if kind == NLMSG_ERROR and first <= seq < first + len(msgs):
                    out[seq - first] = -struct.unpack_from("=i", payload)[0]
        return [out[i] for i in range(len(msgs))]

    def lookup(self, dst):
        """(gateway, oif) of the kernel's route to dst, or None when unreachable."""
        body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 32, 0, 0, 0, 0, 0, RTM_F_LOOKUP_TABLE)
        body += attr(RTA_DST, ip4(dst))
        self.s.send(self._msg(RTM_GETROUTE, NLM_F_REQUEST, body))
        seq = self.seq
        while True:
            for kind, s, payload in split(self.s.recv(65536)):
                if s != seq:
                    continue
                if kind == NLMSG_ERROR:
                    return None
                attrs = parse_attrs(payload[12:])
                gw = attrs.get(RTA_GATEWAY)
                oif = attrs.get(RTA_OIF)
                return (
                    socket.inet_ntoa(gw) if gw else None,
                    struct.unpack("=I", oif)[0] if oif else None,
                )


def split(buf):
    at = 0
    while at + 16 <= len(buf):
        n, kind, _, seq, _ = struct.unpack_from("=IHHII", buf, at)
        if n < 16:
            break
        yield kind, seq, buf[at + 16 : at + n]
        at += (n + 3) & ~3


def parse_attrs(b):
    out, at = {}, 0
    while at + 4 <= len(b):
        n, kind = struct.unpack_from("=HH", b, at)
        if n < 4:
            break
        out[kind & 0x3FFF] = b[at + 4 : at + n]
        at += (n + 3) & ~3
    return out


def route_msg(cidr, table, oif=None, gw=None, metric=None, proto=0, scope=255, kind=0):
    dst, plen = net(cidr)
    t = table if table < 256 else 0
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, plen, 0, 0, t, proto, scope, kind, 0)
    body += attr(RTA_DST, dst) + attr(RTA_TABLE, struct.pack("=I", table))
    if oif is not None:
        body += attr(RTA_OIF, struct.pack("=I", oif))
    if gw is not None:
        body += attr(RTA_GATEWAY, ip4(gw))
    if metric is not None:
        body += attr(RTA_PRIORITY, struct.pack("=I", metric))
    return body


def rule_msg(cidr):
    dst, plen = net(cidr)
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, plen, 0, 0, 0, 0, 0, 1, 0)
    body += attr(FRA_DST, dst) + attr(FRA_PRIORITY, struct.pack("=I", PREF))
    body += attr(FRA_TABLE, struct.pack("=I", TABLE)) + attr(FRA_PROTOCOL, bytes([PROTO]))
    return body


class Listener:
    """Route and rule events (and nftables' when asked), each stamped when it is received."""

    def __init__(self, nft=False):
        self.r = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.r.bind((0, (1 << (GRP_ROUTE - 1)) | (1 << (GRP_RULE - 1))))
        self.n = None
        if nft:
            self.n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self.n.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))

    def drain(self):
        for s in filter(None, (self.r, self.n)):
            s.setblocking(False)
            try:
                while True:
                    s.recv(1 << 16)
            except BlockingIOError:
                pass
            s.setblocking(True)

    def wait(self, deadline_ns):
        """Block until an event (its receive time) or the deadline (None)."""

        socks = [s for s in (self.r, self.n) if s]
        left = (deadline_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            return None
        ready, _, _ = select.select(socks, [], [], left)
        if not ready:
            return None
        now = time.monotonic_ns()
        for s in ready:
            s.setblocking(False)
            try:
                while True:
                    s.recv(1 << 16)
            except (BlockingIOError, OSError):
                pass
            s.setblocking(True)
        return now


def connects(timeout=0.005):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(CTR)
        return True
    except OSError:
        return False
    finally:
        s.close()


def run(*argv, check=True, stdin=None):
    return subprocess.run(
        argv, check=check, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def add_link(name, addr=None):
    """A link that is up (a veth pair: the lab's kernel may have no dummy driver)."""
    run("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
    if addr:
        run("ip", "addr", "add", addr, "dev", name)
    run("ip", "link", "set", name + "p", "up")
    run("ip", "link", "set", name, "up")


def ifindex(name):
    return socket.if_nametoindex(name)


def pct(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def fmt_ms(ns):
    ms = ns / 1e6
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


class Ctx:
    def __init__(self, a):
        self.a = a
        self.bin, self.config, self.state = a.bin, a.config, a.state_dir
        self.nl = Netlink()
        self.vbox = ifindex(HOST_IF)

    def dr(self, *args):
        return [self.bin, "--config", self.config, *args]

    def up_args(self, fw=True):
        return self.dr(
            "up", "--vm-ip", VM, "--dns", "off", "--firewall", "auto" if fw else "off"
        )

    def via_vm(self):
        r = self.nl.lookup(CTR[0])
        return r is not None and r == (VM, self.vbox)


# ---------------------------------------------------------------- keepers


class Keeper:
    """A process that keeps the route, started in its own process group."""

    def __init__(self, ctx, kind):
        self.ctx, self.kind, self.p = ctx, kind, None

    def start(self):
        c = self.ctx
        if self.kind == "dockroute":
            argv = c.dr("watch", "--vm-ip", VM, "--dns", "off", "--firewall", "auto")
            env = dict(os.environ, DOCKROUTE_LOG="debug")
            self.log = tempfile.TemporaryFile()
            self.p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
                env=env, start_new_session=True,
            )
        else:
            # the shell's own recipe: a fixed script, no input in it
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-keepers.sh")
            self.p = subprocess.Popen(
                ["bash", script, self.kind], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not c.via_vm():
            if time.monotonic() > deadline or self.p.poll() is not None:
                raise SystemExit(f"bench: the {self.kind} keeper did not set the route up")
            time.sleep(0.01)
        time.sleep(0.3)  # let its start settle

    def stop(self):
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()

    def reconciles(self):
        if self.kind != "dockroute":
            return None
        self.log.seek(0)
        return self.log.read().decode(errors="replace").count("reconcile #")


# ---------------------------------------------------------------- heal


def break_routes(ctx, kind):
    """Delete what the keeper installed, in one datagram."""
    if kind == "dockroute":
        msgs = [
            (RTM_DELRULE, 0, rule_msg(SUBNET)),
            (RTM_DELRULE, 0, rule_msg("192.168.99.0/24")),
            (RTM_DELROUTE, 0, route_msg(SUBNET, TABLE, proto=PROTO)),
            (RTM_DELROUTE, 0, route_msg("192.168.99.0/24", TABLE, proto=PROTO)),
            (RTM_DELROUTE, 0, route_msg(SUBNET, 254, metric=TABLE, proto=PROTO)),
        ]
    else:
        msgs = [(RTM_DELROUTE, 0, route_msg(SUBNET, 254, metric=0))]
    errs = ctx.nl.batch(msgs)
    if any(errs):
        raise SystemExit(f"bench: deleting the {kind} routes: errno {errs}")


def tunnel_replace(ctx, kind):
    """What vpnc-script does: `ip route replace 172.17.0.0/16 dev tun0` in main."""
    body = route_msg(SUBNET, 254, oif=ifindex("tun0"), proto=3, scope=253, kind=1)
    errs = ctx.nl.batch([(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)])
    if any(errs):
        raise SystemExit(f"bench: ip route replace ... dev tun0: errno {errs}")


def tunnel_undo(ctx):
    ctx.nl.batch([(RTM_DELROUTE, 0, route_msg(SUBNET, 254, oif=ifindex("tun0"), metric=0))])


VPN_TABLE = """table inet benchvpn {
    chain input { type filter hook input priority 0; policy drop; iifname "lo" accept; iifname "tun0" accept; }
    chain output { type filter hook output priority 0; policy drop; oifname "lo" accept; oifname "tun0" accept; }
}
"""


def nft_file(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False)
    f.write(text)
    f.close()
    return f.name


def heal_trial(ctx, lst, kind, scenario, timeout_s):
    """One trial: the change, then the time until the container is reached through the VM again,
    observed on the listener's clock. Returns (ns or None when not restored within timeout_s,
    whether it was broken at all). t0 is when the change is complete in the kernel: the ack of
    the route change (sent in one datagram), or the first nftables event of nft's transaction. A
    repair the keeper finished before this helper looked counts until that look (an upper bound)."""
    lst.drain()
    ok = connects if scenario == "nft" else ctx.via_vm
    if scenario == "nft":
        p = subprocess.Popen(["nft", "-f", ctx.recreate])
        t0 = lst.wait(time.monotonic_ns() + 2_000_000_000)
        p.wait()
        if t0 is None or p.returncode != 0:
            raise SystemExit("bench: re-creating the nftables table failed")
    elif scenario == "routes":
        break_routes(ctx, kind)
        t0 = time.monotonic_ns()
    else:
        tunnel_replace(ctx, kind)
        t0 = time.monotonic_ns()
        if ok():
            return 0, False
    if ok():
        return time.monotonic_ns() - t0, True
    deadline = t0 + int(timeout_s * 1e9)
    while True:
        t = lst.wait(deadline)
        if t is None:
            return None, True
        if ok():
            return t - t0, True


def heal(ctx):
    a = ctx.a
    add_link("tun0", "10.8.0.2/24")
    ctx.create = nft_file(VPN_TABLE)
    ctx.recreate = nft_file("delete table inet benchvpn\n" + VPN_TABLE)
    lst = Listener(nft=True)
    rows = []
    for kind, trials in (("dockroute", a.trials), ("monitor", a.trials), ("poll", a.poll_trials)):
        k = Keeper(ctx, kind)
        k.start()
        for scenario, label in (
            ("routes", "routes and rules deleted"),
            ("tunnel", "ip route replace 172.17.0.0/16 dev tun0"),
            ("nft", "nftables table re-created, policy drop"),
        ):
            if scenario == "nft" and kind != "dockroute":
                rows.append((kind, label, None, 0, "repairs no firewall"))
                continue
            times, never, lost = [], 0, 0
            if scenario == "nft":
                run("nft", "-f", ctx.create)
                settle(ctx, k)
            for _ in range(trials):
                if kind == "poll":
                    # a change comes at any time of the loop's period, not right after a check
                    time.sleep(random.uniform(0, 5))
                ns, broken = heal_trial(ctx, lst, kind, scenario, 7 if kind == "poll" else 2)
                if ns is None:
                    lost += 1
                else:
                    times.append(ns)
                    never += not broken
                # back to the start state, quietly
                if scenario == "tunnel" and kind == "dockroute":
                    tunnel_undo(ctx)
                settle(ctx, k, lst)
            if scenario == "nft":
                run("nft", "delete", "table", "inet", "benchvpn")
                settle(ctx, k)
            note = []
            if never:
                note.append(f"never broken in {never}")
            if lost:
                note.append(f"NOT restored in {lost} (within {7 if kind == 'poll' else 2} s)")
            rows.append((kind, label, times, trials, ", ".join(note)))
        if kind == "dockroute":
            rows.append(("dockroute", "(reconciles run during the trials)", None, 0,
                         str(k.reconciles())))
        k.stop()
        # leave nothing of this keeper for the next one
        if kind == "dockroute":
            run(*ctx.dr("down"))
        else:
            ctx.nl.batch([(RTM_DELROUTE, 0, route_msg(SUBNET, 254, metric=0))])
    run("ip", "link", "del", "tun0")
    os.unlink(ctx.recreate)
    os.unlink(ctx.create)
    print("heal latency: from the change's kernel event to the container reached through the VM")
    print("  again (route: the kernel's route to 172.17.0.2 goes via the VM on vboxnet0, as `ip route")
    print("  get`; firewall: a TCP connect to 172.17.0.2:6379 succeeds), netlink listener clock")
    print(f"  {'keeper':<10} {'change':<42} {'trials':>6} {'median':>9} {'p99':>9}  ms")
    for kind, label, times, n, note in rows:
        if times is None:
            print(f"  {kind:<10} {label:<42} {'':>6} {'':>9} {'':>9}     {note}")
            continue
        if times:
            med, p99 = fmt_ms(statistics.median(times)), fmt_ms(pct(times, 99))
        else:
            med = p99 = "-"
        print(f"  {kind:<10} {label:<42} {n:>6} {med:>9} {p99:>9}     {note}")
    sys.stdout.flush()


def settle(ctx, keeper, lst=None):
    """Wait until the setup is whole again and the keeper is quiet (dockroute: its debug log,
    one line per reconcile at least, has not grown for 150 ms; the monitor keeper: no route
    event for 200 ms, so that it has no event left to act on)."""
    kind = keeper.kind
    deadline = time.monotonic() + (7 if kind == "poll" else 3)
    while time.monotonic() < deadline:
        if ctx.via_vm() and (kind != "dockroute" or connects(0.05)):
            break
        time.sleep(0.005)
    if kind == "monitor" and lst is not None:
        while lst.wait(time.monotonic_ns() + 200_000_000) is not None:
            pass
        return
    if kind != "dockroute":
        time.sleep(0.01)
        return
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = os.fstat(keeper.log.fileno()).st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since > 0.15:
            return
        time.sleep(0.01)


# ---------------------------------------------------------------- idle


def proc_sample(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    ticks = int(st[11]) + int(st[12])  # utime, stime (fields 14, 15)
    child = int(st[13]) + int(st[14])  # cutime, cstime of waited-for children
    vol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    vol += int(line.split()[1])
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                rss = int(line.split()[1])
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return ticks, child, vol, rss, threads


def idle(ctx):
    k = Keeper(ctx, "dockroute")
    k.start()
    time.sleep(1)
    before_n = k.reconciles()
    t0 = time.monotonic()
    a = proc_sample(k.p.pid)
    time.sleep(ctx.a.idle_secs)
    b = proc_sample(k.p.pid)
    secs = time.monotonic() - t0
    n = k.reconciles() - before_n
    k.stop()
    run(*ctx.dr("down"))
    hz = os.sysconf("SC_CLK_TCK")
    print(f"idle cost of `dockroute watch` over {secs:.0f} s with no events (firewall auto, DNS off):")
    print(f"  CPU ticks (utime+stime, 1/{hz} s)     {b[0] - a[0]}")
    print(f"  children's CPU ticks (cutime+cstime)  {b[1] - a[1]}")
    print(f"  wake-ups (voluntary context switches) {b[2] - a[2]}")
    print(f"  reconciles (backstop re-checks)        {n}")
    print(f"  resident memory (VmRSS)                {b[3] / 1024:.1f} MiB ({b[4]} thread(s))")
    sys.stdout.flush()


# ---------------------------------------------------------------- scale


def fill_routes(n, have):
    """Make main hold n routes on the bulk0 link (adds or removes the difference)."""
    if n == have:
        return
    lines = []
    if n > have:
        lines = [f"route add 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32 dev bulk0" for i in range(have, n)]
    else:
        lines = [f"route del 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32 dev bulk0" for i in range(n, have)]
    subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


def firewall_text(n):
    """An iptables-nft filter table with n rules: a kill switch (INPUT and OUTPUT drop by policy),
    a quarter of the rules in INPUT, a quarter in OUTPUT, half in FORWARD's chains (as Docker's
    and ufw's): what a laptop firewall with a VPN looks like."""
    out = ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT DROP [0:0]"]
    if n == 0:
        return "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    out += [":FW-IN - [0:0]", ":FW-OUT - [0:0]", ":FW-FWD - [0:0]"]
    out += ["-A INPUT -i lo -j ACCEPT", "-A INPUT -i tun0 -j ACCEPT", "-A INPUT -j FW-IN"]
    out += ["-A OUTPUT -o lo -j ACCEPT", "-A OUTPUT -o tun0 -j ACCEPT", "-A OUTPUT -j FW-OUT"]
    out += ["-A FORWARD -j FW-FWD"]
    rest = n - 7
    q = rest // 4
    for i in range(rest):
        a = f"10.{200 + (i >> 16 & 15)}.{i >> 8 & 255}.{i & 255}"
        if i < q:
            out.append(f"-A FW-IN -s {a}/32 -p tcp --dport 443 -j ACCEPT")
        elif i < 2 * q:
            out.append(f"-A FW-OUT -d {a}/32 -p tcp --dport 443 -j ACCEPT")
        else:
            out.append(f"-A FW-FWD -d {a}/32 -p tcp --dport 80 -j ACCEPT")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def hyperfine(cmd, prepare, runs):
    with tempfile.NamedTemporaryFile(suffix=".json") as j:
        argv = ["hyperfine", "-N", "--style", "none", "--warmup", "3", "--runs", str(runs),
                "--export-json", j.name]
        if prepare:
            argv += ["--prepare", " ".join(prepare)]
        argv.append(" ".join(cmd))
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench: hyperfine failed: {r.stderr}")
        with open(j.name) as f:
            times = json.load(f)["results"][0]["times"]
    return statistics.median(times) * 1000, min(times) * 1000


def kernel_walk_ms(ctx, runs):
    """Median time of the route dump `down` and `status` ask for (strict checking, protocol
    100: the kernel walks every table, main's thousands of routes included, and returns
    dockroute's few). `up` and watch's reconcile read only dockroute's own table."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    s.setsockopt(270, 12, 1)  # SOL_NETLINK, NETLINK_GET_STRICT_CHK
    s.bind((0, 0))
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, PROTO, 0, 1, 0)
    times = []
    bulk = ifindex("bulk0")
    for seq in range(1, runs + 1):
        # as after the event that wakes a reconcile: a route added and deleted in main first
        add = route_msg("10.250.0.0/24", 254, oif=bulk, scope=253, kind=1, proto=3)
        ctx.nl.batch([(RTM_NEWROUTE, NLM_F_CREATE, add)])
        ctx.nl.batch([(RTM_DELROUTE, 0, route_msg("10.250.0.0/24", 254, oif=bulk))])
        t = time.monotonic_ns()
        s.send(struct.pack("=IHHII", 16 + len(body), RTM_GETROUTE, NLM_F_REQUEST | 0x300, seq, 0) + body)
        done = False
        while not done:
            for kind, _, payload in split(s.recv(1 << 16)):
                if kind == 2 and struct.unpack_from("=i", payload)[0] != 0:
                    raise SystemExit("bench: the filtered route dump failed")
                done |= kind in (2, 3)  # NLMSG_ERROR, NLMSG_DONE
        times.append(time.monotonic_ns() - t)
    s.close()
    return statistics.median(times) / 1e6


def watch_reconciles(ctx, runs):
    """Medians of `watch`'s own reconcile times (its debug log: "nothing to change (X ms)") after
    an unrelated route event (the firewall is not read) and after SIGHUP (everything is read)."""
    import re

    k = Keeper(ctx, "dockroute")
    k.start()
    settle(ctx, k)
    pat = re.compile(r"cause=([^}]*)\}: reconcile #\d+: nothing to change \(([0-9.]+) ms\)")

    def lines():
        k.log.seek(0)
        return pat.findall(k.log.read().decode(errors="replace"))

    out = {}
    bulk = ifindex("bulk0")
    for what in ("route", "SIGHUP"):
        got = []
        for _ in range(runs):
            n = len(lines())
            if what == "route":
                body = route_msg("10.250.0.0/24", 254, oif=bulk, scope=253, kind=1, proto=3)
                ctx.nl.batch([(RTM_NEWROUTE, NLM_F_CREATE, body)])
            else:
                os.killpg(k.p.pid, signal.SIGHUP)
            deadline = time.monotonic() + 3
            while len(lines()) == n and time.monotonic() < deadline:
                time.sleep(0.005)
            got += [float(ms) for cause, ms in lines()[n:] if what.lower() in cause.lower()]
            if what == "route":
                ctx.nl.batch([(RTM_DELROUTE, 0, route_msg("10.250.0.0/24", 254, oif=bulk))])
            settle(ctx, k)
        out[what] = statistics.median(got) if got else float("nan")
    k.stop()
    return out["route"], out["SIGHUP"]


def scale(ctx):
    a = ctx.a
    routes = [0, 1000] if a.quick else [0, 1000, 5000, 20000]
    rules = [0, 500] if a.quick else [0, 500, 2000]
    add_link("bulk0")
    add_link("tun0")
    have = 0
    rows = []
    for n in routes:
        fill_routes(n, have)
        have = n
        for f in rules:
            subprocess.run(["iptables-restore"], input=firewall_text(f), text=True, check=True)
            up_fw, up_rt, down = ctx.up_args(True), ctx.up_args(False), ctx.dr("down")
            run(*up_fw)
            r = {
                "steady_rt": hyperfine(up_rt, None, a.runs),
                "steady_fw": hyperfine(up_fw, None, a.runs),
                "status": hyperfine(ctx.dr("status"), None, a.runs),
            }
            r["walk"] = kernel_walk_ms(ctx, 50)
            r["w_rt"], r["w_all"] = watch_reconciles(ctx, 3 if a.quick else 7)
            r["up_rt"] = hyperfine(up_rt, down, a.runs)
            r["up_fw"] = hyperfine(up_fw, down, a.runs)
            run(*down)
            rows.append((n, f, r))
            print(f"  ... {n} routes, {f} rules done", file=sys.stderr)
    fill_routes(0, have)
    subprocess.run(["iptables-restore"], input=firewall_text(0), text=True, check=True)
    run("ip", "link", "del", "bulk0")
    run("ip", "link", "del", "tun0")
    print(f"scale: medians, ms; main holds R routes, the iptables-nft filter table F rules (a kill")
    print("  switch: INPUT/OUTPUT policy drop; 1/4 of the rules in a chain INPUT jumps to, 1/4 in one")
    print("  of OUTPUT's, 1/2 in FORWARD's); no nftables table. watch: `dockroute watch`'s own reconcile")
    print("  with nothing to change, from its log (rt: after an unrelated route event, the firewall")
    print("  unread; all: after SIGHUP, everything read); steady: `up` with nothing to change, a process")
    print(f"  (hyperfine -N, {a.runs} runs); up: `up` from nothing (after `down`), with the firewall repair")
    print("  when F > 0; rt = --firewall off, fw = --firewall auto; walk: the kernel's filtered route")
    print("  dump of every table alone (what `down` and `status` ask for: it walks main; `up` reads")
    print("  only dockroute's own table)")
    print("  Process columns: median (fastest run): this machine is shared and its load comes in")
    print("  bursts, which move medians by milliseconds; the fastest run shows the cost itself")
    hdr = (f"  {'R':>6} {'F':>5} | {'walk':>5} | {'watch rt':>8} {'watch all':>9} | {'steady rt':>14} {'steady fw':>14}"
           f" | {'up rt':>14} {'up fw':>14} | {'status':>14}")
    print(hdr)
    base = {}
    mm = lambda v: f"{v[0]:.2f} ({v[1]:.2f})"
    for n, f, r in rows:
        base.setdefault(f, r)
        print(f"  {n:>6} {f:>5} | {r['walk']:>5.3f} | {r['w_rt']:>8.2f} {r['w_all']:>9.2f} | {mm(r['steady_rt']):>14} {mm(r['steady_fw']):>14}"
              f" | {mm(r['up_rt']):>14} {mm(r['up_fw']):>14} | {mm(r['status']):>14}")
    n, f, r = rows[-1]
    b = base[f]

    def ratio(k):
        v, w = r[k], b[k]
        return f"{v[0] / w[0]:.2f} ({v[1] / w[1]:.2f})" if isinstance(v, tuple) else f"{v / w:.2f}"

    print(f"  R={n} vs R=0 (both F={f}): up rt x{ratio('up_rt')}, up fw x{ratio('up_fw')}, "
          f"steady rt x{ratio('steady_rt')}, steady fw x{ratio('steady_fw')}, status x{ratio('status')}, "
          f"watch rt x{ratio('w_rt')}, watch all x{ratio('w_all')}")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=["heal", "idle", "scale", "all"])
    p.add_argument("bin")
    p.add_argument("config")
    p.add_argument("state_dir")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--poll-trials", type=int, default=20)
    p.add_argument("--idle-secs", type=float, default=60)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    ctx = Ctx(a)
    if a.part in ("heal", "all"):
        heal(ctx)
    if a.part in ("idle", "all"):
        idle(ctx)
    if a.part in ("scale", "all"):
        scale(ctx)


if __name__ == "__main__":
    main()
