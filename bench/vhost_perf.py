#!/usr/bin/env python3
"""vhost back-end throughput: DPDK virtio-user txonly → our net_vhost port, against DPDK's net_vhost.

Usage::

    python bench/vhost_perf.py [--seconds S] [--sizes 64,1518] [--rings split,packed]

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

The figure is the back-end's received packets per second: the median of
1-s samples after a 1-s warm-up (ours from its shared-memory counters, DPDK
from testpmd's ``show port stats``).  ``ratio`` = ours ÷ DPDK.  The LAST
line is ``speed_ratio=<ours ÷ DPDK>`` for 64 B split rxonly.

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
import time

from dataplane.testing.testpmd import TESTPMD, Testpmd
from dataplane.testing.vhost_echo_proc import EchoProcess


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--sizes", default="64,1518")
    ap.add_argument("--rings", default="split,packed")
    ap.add_argument("--modes", default="rxonly,io")
    args = ap.parse_args()
    if TESTPMD is None:
        print("dpdk-testpmd is not installed (apt-get install dpdk)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    rings = args.rings.split(",")
    modes = args.modes.split(",")
    sock_dir = tempfile.mkdtemp(prefix="vhperf", dir="/tmp")
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    try:
        for mode in modes:
            for ring in rings:
                for size in sizes:
                    ours = measure(Ours, mode, ring == "packed", size, args.seconds, sock_dir)
                    dpdk = measure(Dpdk, mode, ring == "packed", size, args.seconds, sock_dir)
                    rows.append((mode, ring, size, ours, dpdk))
                    print(f"  {mode:6} {ring:6} {size:5} B: ours {ours:6.2f} Mpps  DPDK {dpdk:6.2f} Mpps", flush=True)
    finally:
        os.rmdir(sock_dir)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    print("| mode | ring | size | ours Mpps | DPDK Mpps | ratio |")
    print("|---|---|---|---|---|---|")
    for mode, ring, size, ours, dpdk in rows:
        ratio = ours / dpdk if dpdk else float("nan")
        print(f"| {mode} | {ring} | {size} B | {ours:.2f} | {dpdk:.2f} | {ratio:.2f} |")
    key = [r for r in rows if r[0] == "rxonly" and r[1] == "split" and r[2] == 64]
    ratio = key[0][3] / key[0][4] if key and key[0][4] else 0.0
    print(f"speed_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
