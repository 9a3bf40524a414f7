#!/usr/bin/env python3
"""virtio-user Tx throughput: our ``net_virtio_user`` txonly against DPDK's, both into DPDK ``net_vhost`` rxonly.

Usage::

    python bench/virtio_user_perf.py [--seconds S] [--rounds N] [--sizes 64,1518] [--rings split,packed]
                                     [--min-share F] [--quiet-wait S] [--no-dpdk]

**Back-end** (both figures): ``dpdk-testpmd --vdev net_vhost0,iface=SOCK,queues=1``
in rxonly mode, forwarding lcore on cpu 0 (vhost dequeue copies each packet
into an mbuf), ``--stats-period 1``.  Every figure is the median of the vhost
side's 1-s ``Rx-pps`` samples once traffic is steady — the same meter for
both front-ends.

**Ours**: a child process pinned to cpu 1 probes
``net_virtio_user0,path=SOCK`` (defaults: mrg_rxbuf=1, in_order=1, queue
size 256) and runs a numba txonly loop: allocate 32 mbufs (lcore cache),
write a 42-byte Ethernet/IPv4/UDP header, ``pkt_len`` = 64 or 1518 B (like
testpmd's txonly, the rest of the payload is not written), one
:func:`~dataplane.virtio.rxtx.tx_burst_kernel` call per burst, free what the
ring did not take.  No Python per burst: the loop returns to Python every
few thousand bursts to check for the stop signal.

**DPDK**: ``dpdk-testpmd --vdev net_virtio_user0,path=SOCK`` txonly on cpu 1
(same defaults), measured by ``bench/virtqueue_perf.py``'s ``run_dpdk``.

Rows: 64 B and 1518 B, split and packed.  Each row alternates ours and
DPDK ``--rounds`` times each (ours, DPDK, ours, DPDK, ...); the table has
every run, each side's median and ours' median ÷ DPDK's
(bench/bench_common.py).  The line before the last names the worst row
(``worst_row=packed 64B``), the LAST line is ``speed_ratio=<its ratio>``:
the minimum over the rows.  Everything started is stopped and reaped,
sockets and ``/var/run/dpdk`` dirs removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import bench_common  # noqa: E402
import virtqueue_perf as vqp  # noqa: E402  (DPDK helpers: run_dpdk, wait_quiet, ...)
from dataplane.log import configure_logging  # noqa: E402

VH_PREFIX = "vh_vubench"
DEVICE_CPU = vqp.DEVICE_CPU
DRIVER_CPU = vqp.DRIVER_CPU
CHUNK = 4096  # bursts per numba call of the txonly loop


# ---------------------------------------------------------------------------
# the txonly child


def _txonly_kernels():
    from dataplane.memory.mempool import pktmbuf_alloc_bulk, pktmbuf_free_bulk, seg_addr
    from dataplane.rings.jit import kernel
    from dataplane.rings.mem import copy_bytes
    from dataplane.virtio.rxtx import tx_burst_kernel

    @kernel
    def txonly(vr, ds, mp, lcore, hdr_len, hdr_hva, hdr_iova, kickfd, cnt, ck, ln, sg_gpa, sg_len, sg_wr,
               tmpl, pkt_len, bursts, pkts):
        sent = 0
        tsrc = np.uint64(tmpl.ctypes.data)
        for _ in range(bursts):
            if pktmbuf_alloc_bulk(mp, lcore, pkts, 32) != 0:
                continue
            for i in range(32):
                m = pkts[i]
                copy_bytes(seg_addr(mp, m), tsrc, 42)
                mb = mp.mbufs[m]
                mb.data_len = pkt_len
                mb.pkt_len = pkt_len
            k = tx_burst_kernel(vr, ds, mp, lcore, pkts, 32, hdr_len, hdr_hva, hdr_iova, kickfd, cnt, ck, ln,
                                sg_gpa, sg_len, sg_wr)
            if k < 32:
                pktmbuf_free_bulk(mp, lcore, pkts[k:], 32 - k)
            sent += k
        return sent

    return txonly


def _template(size: int) -> np.ndarray:
    """Ethernet/IPv4/UDP header (42 bytes) of a ``size``-byte frame, as testpmd's txonly builds it."""
    import struct

    ip_len = size - 14
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0, 64, 17, 0, bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])))
    s = sum(struct.unpack("!10H", ip))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    ip[10:12] = struct.pack("!H", ~s & 0xFFFF)
    udp = struct.pack("!HHHH", 9, 9, ip_len - 20, 0)
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return np.frombuffer(eth + bytes(ip) + udp, np.uint8).copy()


def child(sock: str, packed: bool, payload: int) -> int:
    """Run txonly on ``sock`` until SIGINT/SIGTERM."""
    from dataplane.memory import Memory
    from dataplane.memory.mempool import mempool_create
    from dataplane.virtio import VirtioUser

    configure_logging([(None, "error")])
    os.sched_setaffinity(0, {DRIVER_CPU})
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    txonly = _txonly_kernels()
    with Memory(128 << 20, huge=False, file_prefix=f"vub{os.getpid()}") as mem:
        mp = mempool_create(mem, "vub", 8192, cache_size=256)
        vu = VirtioUser.probe(f"net_virtio_user0,path={sock},queues=1" + (",packed_vq=1" if packed else ""), mem, mp, lcore=0)
        try:
            vu.start()
            q = vu._txq[0]
            pkts = np.zeros(32, np.uint32)
            tmpl = _template(payload)
            while not stop and vu.link_up:
                with vu._lock:  # hold the port like a burst does (the control thread may reconfigure)
                    txonly(q.vr, q.ds, mp.arrays, 0, vu.hdr_len, q.hdr_hva, q.hdr_iova, q.kick_fd, q.counters, q.ck,
                           q.ln, q.sg_gpa, q.sg_len, q.sg_wr, tmpl, payload, CHUNK, pkts)
        finally:
            vu.close()
    return 0


# ---------------------------------------------------------------------------
# parent


def run_ours(packed: bool, payload: int, seconds: int, workdir: str, min_share: float):
    """(median Rx-pps in Mpps, samples kept, cpu shares) with our txonly child as the front-end."""
    sock = os.path.join(workdir, "vhost.sock")
    vh_log = os.path.join(workdir, "vhost-ours.log")
    vh = ch = None
    shutil.rmtree(f"/var/run/dpdk/{VH_PREFIX}", ignore_errors=True)
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    vqp.wait_quiet(vqp.QUIET_WAIT)
    try:
        with open(vh_log, "wb") as f:
            vh = subprocess.Popen(
                ["dpdk-testpmd", "--no-huge", "-m", "1024", "--no-pci", f"--lcores=0@{DEVICE_CPU},1@{DEVICE_CPU}",
                 "--file-prefix", VH_PREFIX, "--vdev", f"net_vhost0,iface={sock},queues=1", "--",
                 "--forward-mode=rxonly", "--nb-cores=1", "-a", "--stats-period", "1", f"--burst={vqp.BURST}"],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            if vh.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vhost testpmd did not create its socket:\n{vqp._tail(vh_log)}")
            time.sleep(0.05)
        ch = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", sock, str(int(packed)), str(payload)],
                              stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # numba compile on a cold cache
        taken: list[tuple[int, float]] = []
        seen = 0
        last = None
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if vh.poll() is not None or ch.poll() is not None:
                raise RuntimeError(f"a process exited early:\n{vqp._tail(vh_log)}")
            with open(vh_log, "rb") as f:
                samples = [int(x) for x in vqp._PPS.findall(f.read())]
            if len(samples) == seen:
                continue
            seen = len(samples)
            now = (time.monotonic_ns(), vqp._cpu_ns(vh.pid, vqp._fwd_thread(vh.pid)), vqp._proc_cpu_ns(ch.pid))
            first = next((i for i, x in enumerate(samples) if x > 0), None)
            if first is not None and seen - first > 2:
                if last is not None and now[1] and last[1]:
                    wall = now[0] - last[0]
                    share = min((now[1] - last[1]) / wall, (now[2] - last[2]) / wall)
                else:
                    share = float("nan")
                taken.append((samples[-1], share))
                clean = [x for x, sh in taken if not sh < min_share]
                if len(clean) >= seconds or len(taken) >= 3 * seconds:
                    break
                deadline = max(deadline, time.monotonic() + 2)
            last = now
        if not taken:
            raise RuntimeError(f"no Rx-pps samples with traffic from vhost testpmd:\n{vqp._tail(vh_log)}")
        kept = [(x, sh) for x, sh in taken if not sh < min_share] or sorted(taken, key=lambda t: -t[1])[:seconds]
        return statistics.median(x for x, _ in kept) / 1e6, [x for x, _ in kept], [sh for _, sh in kept]
    finally:
        vqp._stop(ch, 10)
        vqp._stop(vh)
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        shutil.rmtree(f"/var/run/dpdk/{VH_PREFIX}", ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="steady 1-s Rx-pps samples per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of ours and of DPDK per row, alternated")
    ap.add_argument("--sizes", default="64,1518", help="packet sizes (bytes)")
    ap.add_argument("--rings", default="split,packed", help="ring layouts")
    ap.add_argument("--min-share", type=float, default=0.9, help="drop samples where a poll loop got less of its cpu")
    ap.add_argument("--quiet-wait", type=float, default=vqp.QUIET_WAIT, help="seconds to wait for other load to stop")
    ap.add_argument("--no-dpdk", action="store_true", help="ours only")
    ap.add_argument("--child", nargs=3, metavar=("SOCK", "PACKED", "PAYLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], bool(int(args.child[1])), int(args.child[2]))
    vqp.QUIET_WAIT = args.quiet_wait
    configure_logging([(None, "error")])
    if shutil.which("dpdk-testpmd") is None:
        print("dpdk-testpmd not found (it is the back-end of both figures)", file=sys.stderr)
        return 2
    configs = [(int(p), ring == "packed") for p in args.sizes.split(",") for ring in args.rings.split(",")]
    rows = []
    workdir = tempfile.mkdtemp(prefix="vu_bench_")
    try:
        for payload, packed in configs:
            kind = "packed" if packed else "split"
            shares = {"ours": [], "DPDK": []}

            def ours():
                o, osamp, osh = run_ours(packed, payload, args.seconds, workdir, args.min_share)
                shares["ours"] += osh
                print(f"#   ours samples {', '.join(f'{x / 1e6:.2f}' for x in osamp)}; cpu share >= {min(osh):.2f}",
                      flush=True)
                return o

            def dpdk():
                d, dsamp, dsh, _other = vqp.run_dpdk(packed, payload, True, args.seconds, workdir, args.min_share)
                shares["DPDK"] += dsh
                print(f"#   DPDK samples {', '.join(f'{x / 1e6:.2f}' for x in dsamp)}; cpu share >= {min(dsh):.2f}",
                      flush=True)
                return d

            row = bench_common.alternate(f"{kind} {payload}B", ours, None if args.no_dpdk else dpdk, args.rounds)
            row.extra["cpu share ours/DPDK"] = "/".join(
                f"{min(v):.2f}" if v else "-" for v in (shares["ours"], shares["DPDK"]))
            rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        vqp._clean_run_dirs()
    print()
    bench_common.print_table(rows, unit="Mpps")
    print("(cpu share: the least cpu time / wall time a poll loop got in the samples kept)")
    if not args.no_dpdk:
        key = next((r for r in rows if r.name == "split 64B"), None)
        if key is not None:
            r = key.ratio
            print(f"goal 64 B split >= 0.5x DPDK: ours/DPDK {r:.2f} ({'met' if r >= 0.5 else 'NOT met'})")
        bench_common.print_headline(rows)
    return 0

if __name__ == "__main__":
    sys.exit(main())
