#!/usr/bin/env python3
"""PVP loopback: DPDK virtio-user ⇄ vhost back-end forwarding in io mode, dataplane vs dpdk-testpmd.

Usage::

    python bench/pvp.py [--seconds S] [--rounds N] [--sizes 64,1518] [--rings split,packed] [--no-write]

Topology, 1 queue, two processes: a virtio-user side (DPDK's defaults:
mergeable buffers, IN_ORDER, 256 entries) in io mode seeds the loop with
``start tx_first 32`` (32 bursts of 32 packets) from cpu 0; the vhost side
forwards every packet straight back (io) on cpu 1.  Each side is either

* **dataplane**: ``dataplane --vdev net_vhost0,... -- -i --forward-mode=io`` (forwarding
  lcore on cpu 1) and ``dataplane --lcores 0@0,1@0 --vdev net_virtio_user0,... -- -i``; or
* **DPDK**: two ``dpdk-testpmd`` with the same vdevs and cpus.

A third figure has DPDK's virtio-user driving dataplane's vhost port.

A measurement: the vhost side's received packets per second (median of
1-s samples after a 1-s warm-up, from ``show port stats``), and CPU
seconds per million packets of the vhost side's processes (utime + stime
from ``/proc/PID/stat``, over the same window).  Each row (ring, size)
alternates dataplane and DPDK ``--rounds`` times each (dataplane, DPDK,
dataplane, DPDK, ...), then measures the mixed figure once; the table has
every run, the medians and ``ratio`` = dataplane's median ÷ DPDK's
(bench/bench_common.py).

Warm start: the time from launching ``dataplane`` (second launch, numba's
disk cache warm) to its ready prompt, and to the first packet it forwards
(the virtio-user peer is started as soon as the socket exists).

Writes the table to ``bench/results/latest.md`` (unless ``--no-write``).
The line before the last names the worst row (``worst_row=packed 64B``),
the LAST line is ``speed_ratio=<its ratio>``: the minimum over the rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_common
from dataplane.testing.testpmd import TESTPMD, Testpmd, dataplane_shell

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its direct children (dataplane's lcores)."""
    pids = [pid]
    try:
        pids += [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def _backend(kind: str, sock: str) -> Testpmd:
    eal = ["--vdev", f"net_vhost0,iface={sock},queues=1"]
    app = ["--forward-mode=io", "--nb-cores=1", "--burst=32"]
    if kind == "dataplane":
        return dataplane_shell(eal, app, lcores="0-1", mbufs=16384, memory_mb=512)
    return Testpmd(eal, app, cpus="1", mbufs=16384, memory_mb=1024)


def _generator(sock: str, packed: bool, size: int, kind: str = "dpdk") -> Testpmd:
    vdev = f"net_virtio_user0,path={sock},queues=1,packed_vq={int(packed)}"
    app = ["--nb-cores=1", "--burst=32", f"--txpkts={size}", "--forward-mode=io"]
    if kind == "dataplane":
        tp = dataplane_shell(["--vdev", vdev], app, lcores="0@0,1@0", mbufs=16384, memory_mb=512)
    else:
        tp = Testpmd(["--vdev", vdev], app + ["--enable-scatter"], cpus="0", mbufs=16384, memory_mb=1024)
    tp.wait_link(0)
    return tp


def measure(kind: str, packed: bool, size: int, seconds: float, sock_dir: str, gen_kind: str | None = None):
    """(Mpps, CPU seconds per million packets) of the vhost side; the virtio-user side is
    ``gen_kind`` (default: the same program as the vhost side)."""
    sock = os.path.join(sock_dir, f"{kind}.sock")
    be = _backend(kind, sock)
    try:
        be.cmd("start")
        gen = _generator(sock, packed, size, gen_kind or kind)
        try:
            gen.cmd(f"set txpkts {size}")
            gen.cmd("start tx_first 32")
            time.sleep(1.0)
            rates, cpu = [], []
            t0, p0, c0 = time.monotonic(), be.port_stats(0)["RX-packets"], _cpu_seconds(be.proc.pid)
            for _ in range(int(seconds)):
                time.sleep(1.0)
                t1, p1, c1 = time.monotonic(), be.port_stats(0)["RX-packets"], _cpu_seconds(be.proc.pid)
                if p1 > p0:
                    rates.append((p1 - p0) / (t1 - t0))
                    cpu.append((c1 - c0) / ((p1 - p0) / 1e6))
                t0, p0, c0 = t1, p1, c1
            gen.cmd("stop")
        finally:
            gen.close()
        be.cmd("stop")
    finally:
        be.close()
        if os.path.exists(sock):
            os.unlink(sock)
    if not rates:
        return 0.0, float("nan")
    return statistics.median(rates) / 1e6, statistics.median(cpu)


def warm_start(sock_dir: str) -> tuple[float, float]:
    """Seconds from launching dataplane (warm cache) to its prompt, and to the first forwarded packet."""
    sock = os.path.join(sock_dir, "warm.sock")
    t0 = time.monotonic()
    dp = dataplane_shell(["--vdev", f"net_vhost0,iface={sock},queues=1"], ["--forward-mode=io", "--auto-start"],
                         mbufs=16384, memory_mb=512)
    try:
        ready = time.monotonic() - t0
        gen = _generator(sock, False, 64)
        try:
            gen.cmd("start tx_first 1")
            while dp.port_stats(0)["TX-packets"] == 0 and time.monotonic() - t0 < 60:
                time.sleep(0.01)
            first = time.monotonic() - t0
            gen.cmd("stop")
        finally:
            gen.close()
    finally:
        dp.close()
        if os.path.exists(sock):
            os.unlink(sock)
    return ready, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4, help="1-s samples per measurement (after a 1-s warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of dataplane and of DPDK per row, alternated")
    ap.add_argument("--sizes", default="64,1518")
    ap.add_argument("--rings", default="split,packed")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results/latest.md")
    args = ap.parse_args()
    if TESTPMD is None:
        print("dpdk-testpmd is not installed (apt-get install dpdk)", file=sys.stderr)
        return 2
    sock_dir = tempfile.mkdtemp(prefix="pvp", dir="/tmp")
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    try:
        warm_start(sock_dir)  # first launch: compiles (or loads) the kernels
        ready, first = warm_start(sock_dir)
        print(f"warm start: prompt after {ready:.2f} s, first forwarded packet after {first:.2f} s", flush=True)
        for ring in args.rings.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                packed = ring == "packed"
                cpu = {"dataplane": [], "dpdk": []}

                def run(kind):
                    mpps, cpu_s = measure(kind, packed, size, args.seconds, sock_dir)
                    cpu[kind].append(cpu_s)
                    return mpps

                row = bench_common.alternate(f"{ring} {size}B", lambda: run("dataplane"), lambda: run("dpdk"),
                                             args.rounds, ours_label="dataplane")
                mixed, _ = measure("dataplane", packed, size, args.seconds, sock_dir, gen_kind="dpdk")
                print(f"  {row.name}: DPDK virtio-user -> dataplane vhost {mixed:.2f} Mpps", flush=True)
                row.extra["dataplane cpu-s/Mpkt"] = f"{bench_common.median(cpu['dataplane']):.3f}"
                row.extra["DPDK cpu-s/Mpkt"] = f"{bench_common.median(cpu['dpdk']):.3f}"
                row.extra["DPDK→dataplane vhost Mpps"] = f"{mixed:.2f}"
                rows.append(row)
    finally:
        os.rmdir(sock_dir)
    load_after = os.getloadavg()[0]
    lines = [
        "# PVP loopback: DPDK virtio-user ⇄ vhost io, 1 queue",
        "",
        f"`python3 bench/pvp.py --seconds {args.seconds:g} --rounds {args.rounds}` on {time.strftime('%Y-%m-%d %H:%M')};"
        f" load average after: {load_after:.2f}.",
        f"Warm start: ready prompt after {ready:.2f} s, first forwarded packet after {first:.2f} s.",
        "",
        "Both sides dataplane (virtio-user and vhost ports, two processes) against both sides dpdk-testpmd,",
        "alternated per row; cpu-s/Mpkt are medians; the last column has DPDK's virtio-user driving",
        "dataplane's vhost port (one measurement).",
        "",
        *bench_common.table_lines(rows, unit="Mpps", ours_label="dataplane"),
        "",
        *bench_common.headline_lines(rows),
    ]
    text = "\n".join(lines) + "\n"
    if not args.no_write:
        out = Path(__file__).resolve().parent / "results" / "latest.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
    print()
    print("\n".join(lines[:-3]))
    print()
    bench_common.print_headline(rows)
    return 0

if __name__ == "__main__":
    sys.exit(main())
