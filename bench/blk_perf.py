#!/usr/bin/env python3
"""vhost-user-blk back-end throughput: ours (``dataplane-vhost-blk``) against ``qemu-storage-daemon``.

Usage::

    python bench/blk_perf.py [--seconds S] [--rounds N] [--size 256M] [--depth 32]

Both back-ends serve the same image file on tmpfs (``/dev/shm``), one queue,
and run side by side for the whole run (each is idle while the other is
measured: our lcore sleeps on its kick fd when no request comes):

* **ours**: ``python -m dataplane.apps.vhost_blk --file IMG`` -- the main lcore
  (cpu 0) serves the socket, one worker lcore on cpu 1 polls the queue.
* **qsd**: ``qemu-storage-daemon --blockdev driver=file,node-name=d,filename=IMG
  --export type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=SOCK,writable=on``,
  not pinned: its event loop and I/O threads may use every cpu.

The front-end is this process on cpu 0: the scripted vhost-user front-end
(:class:`~dataplane.testing.vhost_frontend.VhostUserFrontend`) sets up a
128-entry split ring in memfd guest memory, and a numba loop built from the
rings' driver kernels (:class:`~dataplane.testing.blk_driver.RequestStream`)
keeps ``--depth`` requests in flight, polling the used ring (interrupts
off) and kicking when the ring asks for it.  Workloads: 4 KiB random read,
4 KiB random write (IOPS), 128 KiB sequential read (MB/s); each runs
``--seconds`` per measurement after a short warm-up, every request checked
for status OK.  Each workload (a row) alternates ours and qsd ``--rounds``
times each (ours, qsd, ours, qsd, ...); the table has every run, the
medians and ``ratio`` = ours' median ÷ qsd's (bench/bench_common.py).  The
line before the last names the worst row (``worst_row=4k-randwrite``), the
LAST line is ``speed_ratio=<its ratio>``: the minimum over the workloads.

Figures from a loaded machine mean little; the 1-min load average is
printed before and after.  Everything started is stopped and removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import bench_common
from dataplane.memory.units import parse_size
from dataplane.rings.split import split_drv_enable_interrupt
from dataplane.testing.blk_driver import BlkDriver, RequestStream
from dataplane.testing.storage_daemon import QSD, StorageDaemon
from dataplane.testing.vhost_blk_proc import BlkProcess
from dataplane.testing.vhost_frontend import GuestMemoryLayout, VhostUserFrontend
from dataplane.vhost.blk.spec import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from dataplane.vhost_user import VirtioFeature as VF

RING = 128
MAX_DATA = 128 << 10
WORKLOADS = [  # name, request type, bytes, sequential, unit
    ("4k-randread", VIRTIO_BLK_T_IN, 4096, False, "IOPS"),
    ("4k-randwrite", VIRTIO_BLK_T_OUT, 4096, False, "IOPS"),
    ("128k-seqread", VIRTIO_BLK_T_IN, 128 << 10, True, "MB/s"),
]


class Frontend:
    """One queue of a vhost-user-blk back-end at ``sock``, driven from this process."""

    def __init__(self, sock: str, depth: int):
        self.mem = GuestMemoryLayout.simple(RING * (MAX_DATA + 4096) + (4 << 20))
        self.fe = VhostUserFrontend.connect(sock, memory=self.mem, timeout=30, wait=30)
        fe = self.fe
        fe.start(queue_size=RING, features=fe.get_features() & ~(1 << VF.VIRTIO_F_RING_PACKED | 1 << VF.VHOST_F_LOG_ALL),
                 nvrings=1)
        self.drv = BlkDriver(self.mem, vring=fe.vrings[0], features=fe.features, max_data=MAX_DATA)
        split_drv_enable_interrupt(self.drv.vr, self.drv.ds, False)  # we poll
        self.depth = depth

    def measure(self, rtype: int, nbytes: int, sequential: bool, disk_bytes: int, seconds: float) -> float:
        """Requests per second over ``seconds`` (after a warm-up of a tenth of it)."""
        rs = RequestStream(self.drv, depth=self.depth, rtype=rtype, nbytes=nbytes, disk_bytes=disk_bytes,
                           sequential=sequential)
        try:
            chunk = 256
            warm = time.perf_counter() + seconds / 10
            while time.perf_counter() < warm:
                rs.run(chunk)
            done, t0 = 0, time.perf_counter()
            while True:
                done += rs.run(chunk)
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds:
                    break
            rs.drain()
            if rs.bad:
                raise RuntimeError(f"{rs.bad} requests completed with an error status")
            return done / elapsed
        finally:
            rs.close()

    def close(self) -> None:
        self.fe.close()
        self.drv = None
        self.mem.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement (one workload, one back-end)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of ours and of qsd per workload, alternated")
    ap.add_argument("--size", default="256M", help="image size")
    ap.add_argument("--depth", type=int, default=32, help="requests in flight")
    args = ap.parse_args(argv)
    if QSD is None:
        print("qemu-storage-daemon not found (Debian package qemu-system-common)", file=sys.stderr)
        return 2
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="blkperf", dir="/dev/shm")
    img = os.path.join(work, "disk.img")
    with open(img, "wb") as f:
        f.truncate(size)
    with open(img, "r+b") as f:  # real data, so reads copy pages that exist
        chunk = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
    print(f"image {img} {size >> 20} MiB on tmpfs, queue depth {args.depth}, {args.seconds} s per measurement, "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}", flush=True)
    ours = qsd = fe_ours = fe_qsd = None
    rows = []
    try:
        ours = BlkProcess(os.path.join(work, "ours.sock"), file=img, lcores="0-1")
        qsd = StorageDaemon(img, os.path.join(work, "qsd.sock"))
        if os.cpu_count() and os.cpu_count() > 1:
            os.sched_setaffinity(0, {0})  # the front-end; the back-ends poll on cpu 1
        fe_ours = Frontend(os.path.join(work, "ours.sock"), args.depth)
        fe_qsd = Frontend(os.path.join(work, "qsd.sock"), args.depth)
        for name, rtype, nbytes, seq, unit in WORKLOADS:
            scale = nbytes / 1e6 if unit == "MB/s" else 1.0

            def run(fe):
                return fe.measure(rtype, nbytes, seq, size, args.seconds) * scale

            row = bench_common.alternate(name, lambda: run(fe_ours), lambda: run(fe_qsd), args.rounds,
                                         unit=unit, ref_label="qsd")
            row.extra["unit"] = unit
            rows.append(row)
    finally:
        for fe in (fe_ours, fe_qsd):
            if fe is not None:
                fe.close()
        if qsd is not None:
            qsd.close()
        if ours is not None:
            ours.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    bench_common.print_table(rows, unit="", ref_label="qsd", digits=0)
    bench_common.print_headline(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
