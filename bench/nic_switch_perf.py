"""The emulated IFC card's switch alone: VF1 TX -> the card -> VF2 RX, in Mpps at 64 B and 1518 B.

A register-level driver (dataplane.testing.nic_driver) programs two VFs of a
``dataplane-nic`` card; a numba loop (dataplane.testing.vdpa_sim_guest.net_loop_split)
keeps VF1's TX ring full of one frame and VF2's RX ring full of buffers, and a
relay thread turns its kick eventfd into doorbell writes (ifcvf's notify relay).
No DPDK figure here: bench/vdpa_perf.py (issue 13) compares with DPDK's vm2vm.

    python3 bench/nic_switch_perf.py [--frames N]
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane.nic.card import F  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500_000)
    args = ap.parse_args()
    for size in (64, 1518):
        print(f"card switch VF1 -> VF2, {size} B: {run_size(size, args.frames):.3f} Mpps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
