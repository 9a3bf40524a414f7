"""The emulated IFC card's switch alone: VF1 TX -> the card -> VF2 RX, in Mpps at 64 B and 1518 B.

Two parts (``--part card|kernels|all``, default all):

**kernels**: the card's datapath kernels in this process, no card process: two VFs whose RX and
TX rings (split, in test memory, ``--ring`` entries) are kept full by a numba "guest" that
re-posts every used chain; each turn serves VF1's TX queue into VF2's RX queue and the other
way, a ring's worth of frames per queue.  It prints ns per frame (the Python turn included) of

* ``serve``: the staged path, a call per queue (``tx_serve``: :func:`tx_pull` into a staging slot,
  then :func:`rx_deliver`) -- the card before issue 13's speed work, the reference;
* ``window``: the card's turn now, one :func:`switch_window` call (through ``FastCall``) for both
  queues, copying each frame from its TX chain straight into its RX chain;
* ``switch``: the direct path called per queue through the dispatcher (``tx_switch``),

``window`` and ``serve`` alternated (bench_common), the ratio of their medians, and what a turn
costs when the TX rings are empty (the per-turn overhead).  Stable even on a busy machine: one
cpu, no processes.  ``--cross`` adds rows where the guests re-post from a thread on the other cpu
(rings and buffers then cross between cpus as in vm2vm); those need a quiet machine: when other
work time-slices either cpu, the card side waits for the guest's slices and the figures measure
the scheduler (one probe at load 4 read microseconds per frame for both paths).

**card**: a register-level driver (dataplane.testing.nic_driver) programs two VFs of a
``dataplane-nic`` card; a numba loop (dataplane.testing.vdpa_sim_guest.net_loop_split)
keeps VF1's TX ring full of one frame and VF2's RX ring full of buffers, and a
relay thread turns its kick eventfd into doorbell writes (ifcvf's notify relay).
No DPDK figure here: bench/vdpa_perf.py (issue 13) compares with DPDK's vm2vm.

    python3 bench/nic_switch_perf.py [--part card|kernels|all] [--frames N] [--rounds R] [--ring N] [--cross]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_common  # noqa: E402
from dataplane.nic import kernels as K  # noqa: E402
from dataplane.rings.atomics import load_acquire, load_relaxed, store_release  # noqa: E402
from dataplane.nic.card import F  # noqa: E402
from dataplane.testing.blk_driver import BlkDriver  # noqa: E402
from dataplane.testing.nic_card import CardProc  # noqa: E402
from dataplane.testing.nic_driver import NicDriver, NicQueue, net_frame  # noqa: E402
from dataplane.testing.vdpa_sim_guest import LOOP_BAD, LOOP_RX_NFREE, LOOP_SLOTS, net_loop_split  # noqa: E402
from dataplane.testing.vhost_frontend import GuestMemoryLayout  # noqa: E402

FEATS = (1 << F.VERSION_1) | (1 << F.ACCESS_PLATFORM) | (1 << F.MAC)
RING = 256


def _vf(card, i):
    d = NicDriver(card.vf_dir(i))
    mem = GuestMemoryLayout.simple(32 << 20, gpa=1 << 20)
    d.dma_map_memory(mem)
    d.set_irqs(d.num_irqs)
    rx = NicQueue(d, mem, 0, num=RING)
    tx = NicQueue(d, mem, 1, num=RING)
    d.start({0: rx, 1: tx}, FEATS)
    return d, mem, rx, tx


def run_size(size: int, frames: int) -> float:
    rt = tempfile.mkdtemp(prefix="nicb", dir="/tmp")
    card = CardProc(rt)
    vfs = []
    try:
        vfs = [_vf(card, 0), _vf(card, 1)]
        (da, _ma, _rxa, txa), (db, _mb, rxb, _txb) = vfs
        mac_a = bytes(da.bar0.u8[da.device : da.device + 6])
        mac_b = bytes(db.bar0.u8[db.device : db.device + 6])
        frame = net_frame(mac_b, mac_a, bytes(size - 14))
        t, r = txa.ring, rxb.ring
        tslot = t.alloc_slot()
        tgpa = t.data_gpa(tslot)
        t.view(tgpa, len(frame))[:] = np.frombuffer(frame, np.uint8)
        slots = np.array([r.alloc_slot() for _ in range(r.num)], np.int64)
        st = np.zeros(LOOP_SLOTS, np.int64)
        st[LOOP_RX_NFREE] = len(slots)
        cookies = np.zeros(RING, np.uint64)
        lens = np.zeros(RING, np.uint32)
        kfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        stop = threading.Event()

        def relay():
            while not stop.is_set():
                if select.select([kfd], [], [], 0.05)[0]:
                    try:
                        os.eventfd_read(kfd)
                    except BlockingIOError:
                        continue
                    da.doorbell(1)

        th = threading.Thread(target=relay, daemon=True)
        th.start()
        args = (r.vr, r.ds, t.vr, t.ds, -1, kfd, r.data_gpa(0), r.slot_size, 2048, tgpa, len(frame))
        net_loop_split(*args, 1000, st, slots, cookies, lens, 50_000_000)  # warm-up
        t0 = time.perf_counter()
        got = net_loop_split(*args, frames, st, slots, cookies, lens, 50_000_000)
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
        os.close(kfd)
        if st[LOOP_BAD]:
            raise RuntimeError(f"{st[LOOP_BAD]} frames arrived with a wrong length")
        return got / dt / 1e6
    finally:
        for d, m, *_ in vfs:
            d.close()
            m.close()
        card.stop()
        shutil.rmtree(rt, ignore_errors=True)


# -- the kernels alone ----------------------------------------------------------------------------


@njit(cache=True)
def _repost(avail, used_u16, used_u32, num, seen):
    """The guest: every chain the device used since last time goes back on the avail ring (split)."""
    u = np.int64(used_u16[1])
    k = (u - seen[0]) & 0xFFFF
    a = np.int64(avail[1])
    mask = num - 1
    for i in range(k):
        avail[2 + ((a + i) & mask)] = used_u32[1 + 2 * ((seen[0] + i) & mask)]
    avail[1] = (a + k) & 0xFFFF
    seen[0] = u
    return k


@njit(cache=True, inline="always")
def _repost_sync(avail, used_u16, used_u32, num, seen, i):
    u = np.int64(load_acquire(used_u16, 1))
    k = (u - seen[i]) & 0xFFFF
    if k == 0:
        return 0
    a = np.int64(avail[1])
    mask = num - 1
    for j in range(k):
        avail[2 + ((a + j) & mask)] = used_u32[1 + 2 * ((seen[i] + j) & mask)]
    store_release(avail, 1, (a + k) & 0xFFFF)
    seen[i] = u
    return k


@njit(cache=True, nogil=True)
def _guest_loop(a0, u0, w0, a1, u1, w1, a2, u2, w2, a3, u3, w3, num, seen, stop):
    """The guests on their own cpu: re-post every used chain of the four rings until ``stop[0]``."""
    while load_relaxed(stop, 0) == 0:
        _repost_sync(a0, u0, w0, num, seen, 0)
        _repost_sync(a1, u1, w1, num, seen, 1)
        _repost_sync(a2, u2, w2, num, seen, 2)
        _repost_sync(a3, u3, w3, num, seen, 3)


class _KVf:
    """One VF for the kernels part: memory, an RX and a TX ring kept full, their card-side contexts."""

    def __init__(self, index: int, num: int, frame: bytes):
        self.index = index
        self.mem = GuestMemoryLayout.simple(64 << 20, gpa=1 << 20)
        self.num = num
        self.rows = np.zeros((2, K.Q_WORDS), np.int64)
        self.drv, self.ctx, self.seen = [], [], []
        for qid in (0, 1):
            d = BlkDriver(self.mem, num, max_data=2048)
            for _ in range(num):
                slot = d.alloc_slot()
                g = d.data_gpa(slot)
                if qid == 0:
                    d.add([(g, 2048, True)], slot)
                else:
                    d.view(g, len(frame))[:] = np.frombuffer(frame, np.uint8)
                    d.add([(g, len(frame), False)], slot)
            d.publish()
            ctx = K.open_queue(d.device_addrs(), num, packed=False, feat=0, last_avail=0, last_used=0,
                               regions=d.region_table(), callfd=-1, counters=self.rows[qid])
            self.drv.append(d)
            self.ctx.append(ctx)
            self.seen.append(np.zeros(1, np.int64))

    def repost(self) -> None:
        for d, seen in zip(self.drv, self.seen):
            _repost(d.vr.avail, d.vr.used_u16, d.vr.used_u32, self.num, seen)

    def close(self) -> None:
        self.ctx = []
        self.drv = []
        self.mem.close()


class KernelBench:
    """Two VFs of ``num``-entry rings carrying ``size``-byte frames (virtio-net header not counted)."""

    def __init__(self, size: int, num: int):
        macs = [bytes([2, 0, 0, 0, 0, 1]), bytes([2, 0, 0, 0, 0, 2])]
        frames = [bytes(K.HDR_LEN) + macs[1 - i] + macs[i] + b"\x08\x00" + bytes(size - 14) for i in (0, 1)]
        self.size = size
        self.vfs = [_KVf(i, num, frames[i]) for i in (0, 1)]
        self.frames = frames
        self.fdb = np.zeros((K.FDB_SIZE, 2), np.int64)
        self.stage = np.zeros((K.BURST, K.SLOT), np.uint8)
        self.slen = np.zeros(K.BURST, np.int64)
        self.smask = np.zeros(K.BURST, np.int64)
        self.active = 3
        self.sw = K.switch_scratch()
        self.txqs = (self.vfs[0].ctx[1], self.vfs[1].ctx[1])
        self.window = K.FastCall(K.switch_window)
        self.rxqs = [(self.vfs[0].ctx[0], self.vfs[1].ctx[0])] * 2

    def _turns(self, mode: str, turns: int) -> int:
        """``turns`` card turns: both TX queues served (a ring's worth each), then the guests re-post.
        ``mode``: "serve" (the staged path, a call per queue), "switch" (the direct path, a call per
        queue) or "window" (both queues in one direct call, through FastCall: the card's turn)."""
        a, b = self.vfs
        rxqs = self.rxqs[0]
        num = a.num
        moved = 0
        for _ in range(turns):
            a.repost()
            b.repost()
            if mode == "window":
                self.sw[K.SW_SERVE, :2] = 1
                moved += self.window(self.txqs, self.fdb, self.active, rxqs, self.sw, 2 * num, 1)
                continue
            for vf in (a, b):
                if mode == "switch":
                    moved += K.tx_switch(vf.ctx[1], vf.index, self.fdb, self.active, rxqs, self.sw, num, 1)
                else:
                    moved += K.tx_serve(vf.ctx[1], vf.index, self.fdb, self.active, rxqs, self.stage, self.slen,
                                        self.smask, num, 1)
        return moved

    def ns_per_frame(self, mode: str, frames: int) -> float:
        turns = max(1, frames // (2 * self.vfs[0].num))
        t0 = time.perf_counter()
        moved = self._turns(mode, turns)
        dt = time.perf_counter() - t0
        if moved < turns * 2 * self.vfs[0].num:
            raise RuntimeError(f"{mode} moved {moved} frames in {turns} turns")
        return dt / moved * 1e9

    def empty_call_us(self, mode: str, calls: int = 2000) -> float:
        """One turn on empty TX rings (the frames already taken, nothing re-posted): the per-turn overhead."""
        rxqs = self.rxqs[0]
        self._turns(mode, 1)
        t0 = time.perf_counter()
        for _ in range(calls):
            if mode == "window":
                self.sw[K.SW_SERVE, :2] = 1
                self.window(self.txqs, self.fdb, self.active, rxqs, self.sw, 128, 1)
                continue
            for vf in self.vfs:
                if mode == "switch":
                    K.tx_switch(vf.ctx[1], vf.index, self.fdb, self.active, rxqs, self.sw, 64, 1)
                else:
                    K.tx_serve(vf.ctx[1], vf.index, self.fdb, self.active, rxqs, self.stage, self.slen, self.smask,
                               64, 1)
        return (time.perf_counter() - t0) / calls * 1e6

    def cross_cpu_ns(self, mode: str, seconds: float) -> float:
        """ns per frame with the guests re-posting on the other cpu (a nogil numba loop in a thread),
        as a VM does: the descriptors and avail rings cross between cpus as in vm2vm.  The card side
        turns (``mode``: "window" or "serve") for ``seconds``, a turn as the card's (budget 4096 a
        queue, 32 empty pulls)."""
        a, b = self.vfs
        rings = [d.vr for vf in (a, b) for d in vf.drv]
        seen = np.array([vf.seen[i][0] for vf in (a, b) for i in (0, 1)], np.int64)
        stop = np.zeros(1, np.int64)
        args = [x for vr in rings for x in (vr.avail, vr.used_u16, vr.used_u32)]
        me = os.sched_getaffinity(0)
        cpus = sorted(me)
        _guest_loop(*args, a.num, seen.copy(), np.ones(1, np.int64))  # compiled (or loaded) before the clock
        th = threading.Thread(target=_guest_loop, args=(*args, a.num, seen, stop), daemon=True)
        try:
            if len(cpus) >= 2:
                os.sched_setaffinity(0, {cpus[1]})
            th.start()
            if len(cpus) >= 2:
                os.sched_setaffinity(0, {cpus[0]})  # the card side; the thread kept cpus[1]
            rxqs = self.rxqs[0]
            moved = 0
            t0 = time.perf_counter()
            end = t0 + seconds
            while time.perf_counter() < end:
                if mode == "window":
                    self.sw[K.SW_SERVE, :2] = 1
                    moved += self.window(self.txqs, self.fdb, self.active, rxqs, self.sw, 2 * 4096, 32)
                else:
                    for vf in (a, b):
                        moved += K.tx_serve(vf.ctx[1], vf.index, self.fdb, self.active, rxqs, self.stage,
                                            self.slen, self.smask, 4096, 32)
            dt = time.perf_counter() - t0
        finally:
            stop[0] = 1
            th.join()
            os.sched_setaffinity(0, me)
        for vf, i0 in ((a, 0), (b, 2)):  # the guests' view, for the next measurement
            vf.seen[0][0], vf.seen[1][0] = seen[i0], seen[i0 + 1]
        return dt / max(moved, 1) * 1e9

    def check(self) -> None:
        """Both paths deliver the frame with a fresh header (num_buffers 1) and count it."""
        for mode in MODES:
            before = [vf.rows.copy() for vf in self.vfs]
            self._turns(mode, 1)
            for vf, rows0 in zip(self.vfs, before):
                other = self.vfs[1 - vf.index]
                rx = vf.drv[0]
                u = int(rx.vr.used_u16[1])
                last = (u - 1) % vf.num
                head, ln = int(rx.vr.used_u32[1 + 2 * last]), int(rx.vr.used_u32[2 + 2 * last])
                exp = bytes(10) + b"\x01\x00" + self.frames[other.index][K.HDR_LEN:]
                if ln != len(exp):
                    raise RuntimeError(f"used length {ln}, expected {len(exp)}")
                addr = int(rx.vr.desc_u64[2 * head])
                got = bytes(rx.view(addr, ln))
                if got != exp:
                    raise RuntimeError(f"{mode}: VF{vf.index} received other bytes")
                d_pk = vf.rows[0, K.Q_PACKETS] - rows0[0, K.Q_PACKETS]
                d_by = vf.rows[0, K.Q_BYTES] - rows0[0, K.Q_BYTES]
                if d_pk != vf.num or d_by != vf.num * self.size or vf.rows[0, K.Q_NOBUF] or vf.rows[1, K.Q_DROPS]:
                    raise RuntimeError(f"counters: {d_pk} packets, {d_by} bytes, {vf.rows}")

    def close(self) -> None:
        for vf in self.vfs:
            vf.close()


MODES = ("serve", "switch", "window")


def run_kernels(sizes, ring: int, frames: int, rounds: int, cross: bool = False) -> list:
    """Per size a row: the card's turn now ("window") against the staged path ("serve"), alternated;
    the direct path called per queue ("switch") and each mode's empty turn as more columns."""
    rows = []
    for size in sizes:
        kb = KernelBench(size, ring)
        try:
            kb.check()  # also compiles every path
            name = f"{size}B ring {ring}"
            row = bench_common.alternate(name, lambda: kb.ns_per_frame("window", frames),
                                         lambda: kb.ns_per_frame("serve", frames), rounds, higher_is_better=False,
                                         unit="ns/frame", ours_label="window", ref_label="serve")
            sw_ns = bench_common.median(kb.ns_per_frame("switch", frames) for _ in range(rounds))
            row.extra["switch ns/frame"] = f"{sw_ns:.1f}"
            if cross:
                xrow = bench_common.alternate(name + " guests on the other cpu",
                                              lambda: kb.cross_cpu_ns("window", 1.0),
                                              lambda: kb.cross_cpu_ns("serve", 1.0), rounds,
                                              higher_is_better=False, unit="ns/frame", ours_label="window",
                                              ref_label="serve")
            row.extra["empty turn us (window/switch/serve)"] = " / ".join(
                f"{kb.empty_call_us(m):.1f}" for m in ("window", "switch", "serve"))
            rows.append(row)
            if cross:
                rows.append(xrow)
        finally:
            kb.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("card", "kernels", "all"), default="all")
    ap.add_argument("--frames", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ring", type=int, default=256, help="ring entries of the kernels part")
    ap.add_argument("--cross", action="store_true",
                    help="kernels part: also rows with the guests re-posting on the other cpu")
    args = ap.parse_args()
    if args.part in ("kernels", "all"):
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus", flush=True)
        rows = run_kernels((64, 1518), args.ring, args.frames, args.rounds, args.cross)
        bench_common.print_table(rows, unit="ns/frame", ours_label="window", ref_label="serve")
    if args.part in ("card", "all"):
        for size in (64, 1518):
            print(f"card switch VF1 -> VF2, {size} B: {run_size(size, args.frames):.3f} Mpps", flush=True)
    if args.part in ("kernels", "all"):
        bench_common.print_headline(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
