#!/usr/bin/env python3
"""vhost back-end throughput: DPDK virtio-user txonly → our net_vhost port, against DPDK's net_vhost.

Usage::

    python bench/vhost_perf.py [--seconds S] [--rounds N] [--sizes 64,1518] [--rings split,packed]
                               [--modes rxonly,io] [--log-rows yes|no|only]

Topology (both back-ends, same cpus): a ``dpdk-testpmd`` with ``net_virtio_user``
(DPDK's defaults: mergeable Rx buffers, IN_ORDER, queue size 256, burst 32)
generates traffic with its forwarding lcore on cpu 0; the back-end polls on
cpu 1:

* **ours**: ``python -m dataplane.apps.vhost_echo`` -- one worker lcore on cpu 1
  running the numba poll loop (the main lcore, cpu 0, only serves the socket).
* **DPDK**: ``dpdk-testpmd --vdev net_vhost0,...`` with its forwarding lcore on cpu 1.

Two modes per back-end:

* ``rxonly``: virtio-user ``txonly`` → back-end receives (dequeue into mbufs) and frees.
* ``io``: a loop: virtio-user ``io`` forwarding after ``start tx_first 32``, the
  back-end echoes every packet (``io``): dequeue and enqueue on the same queue.

A measurement is the back-end's received packets per second: the median
of 1-s samples after a 1-s warm-up (ours from its shared-memory counters,
DPDK from testpmd's ``show port stats``).  Each row (mode, ring, size)
alternates ours and DPDK ``--rounds`` times each (ours, DPDK, ours, DPDK,
...); the table has every run, each side's median and ``ratio`` = ours'
median ÷ DPDK's (bench/bench_common.py).  The line before the last names
the worst row (``worst_row=io packed 64B``), the LAST line is
``speed_ratio=<its ratio>``: the minimum over the rows.

**Dirty-logging rows** (``--log-rows``, default yes; the issue's goal: logging
costs at most 15 % at 64 B).  DPDK's virtio-user never negotiates
VHOST_F_LOG_ALL nor sends a log (only a migrating QEMU does), so these rows
drive *our* back-end from our own front-end instead: the scripted vhost-user
front-end of the test suite (:class:`~dataplane.testing.vhost_frontend.VhostUserFrontend`,
which starts and stops logging in QEMU's order: SET_LOG_BASE with a memfd
log, SET_FEATURES with LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG) and
the guest double's fixed-buffer driver
(:meth:`~dataplane.testing.guest_net.GuestNet.drive_fixed`: a numba loop,
GIL released, on cpu 0) re-posting Tx buffers of ``size`` bytes (and, in
``io`` mode, 2 KiB Rx buffers the echo fills).  One connection, one run:
logging off, on, off again, each measured as above from the back-end's
counters; ``on/off`` is the on figure over the mean of the two off
figures, so it compares the same front-end, back-end and load minutes
apart, not a DPDK figure.  The log is never cleared (QEMU clears it every
iteration; the back-end's cost per write is the same either way).

Other processes on this 2-cpu VM slow a poll loop that shares their cpu;
the bench prints the 1-min load average before and after so a disturbed
run is visible.  Everything started is stopped; sockets and
``/var/run/dpdk`` prefixes are removed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import bench_common
from dataplane.testing.guest_net import GuestMemory, GuestNet
from dataplane.testing.testpmd import TESTPMD, Testpmd
from dataplane.testing.vhost_echo_proc import EchoProcess
from dataplane.testing.vhost_frontend import FrontendLog, GuestMemoryLayout, GuestRegion, VhostUserFrontend
from dataplane.vhost.net_hdr import F_MRG_RXBUF, F_VERSION_1
from dataplane.vhost_user.features import VirtioFeature as VF, bit

GUEST_GPA = 0x1_0000_0000


def _virtio_user(sock: str, packed: bool, size: int, mode: str) -> Testpmd:
    tp = Testpmd(
        ["--vdev", f"net_virtio_user0,path={sock},queues=1,packed_vq={int(packed)}"],
        ["--nb-cores=1", f"--txpkts={size}", "--burst=32", "--enable-scatter"],
        cpus="0", mbufs=8192, memory_mb=1024,
    )
    tp.wait_link(0)
    if mode == "rxonly":
        tp.cmd("set fwd txonly")
        tp.cmd("start")
    else:
        tp.cmd("set fwd io")
        tp.cmd("start tx_first 32")
    return tp


def _samples(read, seconds: float) -> list[float]:
    """Rates (packets/s) of ``read() -> (time, packets)`` over 1-s windows after a 1-s warm-up."""
    time.sleep(1.0)
    t0, p0 = read()
    out = []
    for _ in range(int(seconds)):
        time.sleep(1.0)
        t1, p1 = read()
        if t1 > t0:
            out.append((p1 - p0) / (t1 - t0))
        t0, p0 = t1, p1
    return out


class Ours:
    name = "ours"

    def __init__(self, mode: str, sock: str):
        self.mode = mode
        self.sock = sock
        self.proc = EchoProcess([f"net_vhost0,iface={sock},queues=1"], mode=mode, lcores="0,1")

    def read(self):
        s = self.proc.stats()
        return s["time"], s["ports"]["net_vhost0"]["stats"]["ipackets"]

    def close(self):
        self.proc.close()


class Dpdk:
    name = "DPDK"

    def __init__(self, mode: str, sock: str):
        self.tp = Testpmd(["--vdev", f"net_vhost0,iface={sock},queues=1"], ["--nb-cores=1", "--burst=32"],
                          cpus="1", mbufs=8192, memory_mb=1024)
        self.tp.cmd(f"set fwd {mode}")
        self.tp.cmd("start")

    def read(self):
        s = self.tp.port_stats(0)
        return time.monotonic(), s["RX-packets"]

    def close(self):
        self.tp.close()


def measure(backend_cls, mode: str, packed: bool, size: int, seconds: float, sock_dir: str) -> float:
    sock = os.path.join(sock_dir, f"{backend_cls.name}-{mode}.sock")
    be = backend_cls(mode, sock)
    try:
        tp = _virtio_user(sock, packed, size, mode)
        try:
            rates = _samples(be.read, seconds)
        finally:
            tp.close()
    finally:
        be.close()
        if os.path.exists(sock):
            os.unlink(sock)
    return statistics.median(rates) / 1e6 if rates else 0.0


def measure_logging(mode: str, packed: bool, size: int, seconds: float, sock_dir: str) -> tuple[float, float, float]:
    """Our back-end under our front-end: Mpps with logging off, on, off again (one connection)."""
    sock = os.path.join(sock_dir, f"log-{mode}.sock")
    be = Ours(mode, sock)
    layout = GuestMemoryLayout([GuestRegion(GUEST_GPA, 64 << 20)])
    region = layout.regions[0]
    g = GuestNet(packed=packed, features=F_VERSION_1 | F_MRG_RXBUF, memory=GuestMemory.over(region.mem, region.gpa))
    log = FrontendLog(layout)
    fe = driver = None
    stop = threading.Event()

    def drive():
        os.sched_setaffinity(0, {0})  # this thread: cpu 0, the echo's lcore is on cpu 1
        while not stop.is_set():
            g.drive_fixed(20000)

    def mpps():
        rates = _samples(be.read, seconds)
        return statistics.median(rates) / 1e6 if rates else 0.0

    try:
        fe = VhostUserFrontend.connect(sock, memory=layout, timeout=240)
        fe.vrings.update(g.frontend_vrings())
        fe.start(queue_size=g.tx.size, features=g.features | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES))
        frame = b"\xff" * 6 + b"\x52\x54\x00\x00\x00\x01" + b"\x08\x00" + bytes(size - 14)
        g.tx.fill_fixed(g.hdr_len + size, write=False, data=bytes(g.hdr_len) + frame)
        if mode == "io":
            g.rx.fill_fixed(2048, write=True)
        g.drive_fixed(1)  # compiled (or loaded) before the clock runs
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        deadline = time.monotonic() + 240
        while be.read()[1] == 0:  # the echo's lcore may still be compiling
            if time.monotonic() > deadline:
                raise RuntimeError("the back-end received nothing")
            time.sleep(0.1)
        off = mpps()
        fe.set_logging(True, log)
        on = mpps()
        fe.set_logging(False)
        off2 = mpps()
        if not log.pages():
            raise RuntimeError("logging was on but the back-end marked no page")
    finally:
        stop.set()
        if driver is not None:
            driver.join()
        if fe is not None:
            fe.close()
        g.rx.close()
        g.tx.close()
        log.close()
        layout.close()
        be.close()
        if os.path.exists(sock):
            os.unlink(sock)
    return off, on, off2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4, help="1-s samples per measurement (after a 1-s warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of ours and of DPDK per row, alternated")
    ap.add_argument("--sizes", default="64,1518")
    ap.add_argument("--rings", default="split,packed")
    ap.add_argument("--modes", default="rxonly,io")
    ap.add_argument("--log-rows", choices=("yes", "no", "only"), default="yes",
                    help="dirty logging on/off rows (ours only, see the module doc); 'only': just those")
    args = ap.parse_args()
    if TESTPMD is None and args.log_rows != "only":
        print("dpdk-testpmd is not installed (apt-get install dpdk)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    rings = args.rings.split(",")
    modes = args.modes.split(",")
    sock_dir = tempfile.mkdtemp(prefix="vhperf", dir="/tmp")
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    log_rows = []
    try:
        for mode in modes:
            for ring in rings:
                for size in sizes:
                    packed = ring == "packed"
                    if args.log_rows != "only":
                        rows.append(bench_common.alternate(
                            f"{mode} {ring} {size}B",
                            lambda: measure(Ours, mode, packed, size, args.seconds, sock_dir),
                            lambda: measure(Dpdk, mode, packed, size, args.seconds, sock_dir),
                            args.rounds))
                    if args.log_rows != "no":
                        off, on, off2 = measure_logging(mode, packed, size, args.seconds, sock_dir)
                        log_rows.append((mode, ring, size, off, on, off2))
                        print(f"  {mode:6} {ring:6} {size:5} B: ours, our front-end: log off {off:6.2f}  on {on:6.2f}"
                              f"  off {off2:6.2f} Mpps", flush=True)
    finally:
        os.rmdir(sock_dir)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    if rows:
        bench_common.print_table(rows, unit="Mpps")
    if log_rows:
        print()
        print("Dirty logging (ours, driven by our front-end; see the module doc):")
        print("| mode | ring | size | log off Mpps | log on Mpps | log off again | on/off |")
        print("|---|---|---|---|---|---|---|")
    for mode, ring, size, off, on, off2 in log_rows:
        base = (off + off2) / 2
        ratio = on / base if base else float("nan")
        print(f"| {mode} | {ring} | {size} B | {off:.2f} | {on:.2f} | {off2:.2f} | {ratio:.2f} |")
    cost = [r for r in log_rows if r[2] == 64 and r[3] + r[5] > 0]
    if cost:
        worst = max(1 - r[4] / ((r[3] + r[5]) / 2) for r in cost)
        print(f"dirty logging cost at 64 B (worst row): {100 * worst:.1f} % (goal: at most 15 %)")
    if args.log_rows == "only":
        return 0  # no DPDK figure to compare with
    bench_common.print_headline(rows)
    return 0

if __name__ == "__main__":
    sys.exit(main())
