"""A card's VF with one RX and one TX queue whose rings live in test memory, for the switch kernels.

The driver side is :class:`~dataplane.testing.blk_driver.BlkDriver` (a generic ring driver); the card
side is :func:`~dataplane.nic.kernels.open_queue` over the same memory, as the card process opens a
queue.  Queue 0 is RX, queue 1 TX."""

from __future__ import annotations

import numpy as np

from dataplane.nic import kernels as K
from dataplane.testing.blk_driver import BlkDriver
from dataplane.testing.vhost_frontend import GuestMemoryLayout

__all__ = ["VfRings"]


class VfRings:
    def __init__(self, index: int, packed: bool, offloads: int = 0, size: int = 16, max_data: int = 4096,
                 mem_size: int = 4 << 20):
        """VF ``index``; ``offloads``: both queues' :mod:`~dataplane.nic.offload` bits; ``size`` descriptors a
        ring, ``max_data`` bytes a buffer slot."""
        self.index = index
        self.mem = GuestMemoryLayout.simple(mem_size, gpa=1 << 20)
        self.rows = np.zeros((2, K.Q_WORDS), np.int64)
        self.q = [BlkDriver(self.mem, size, packed=packed, max_data=max_data) for _ in (0, 1)]
        start = 0x8000 if packed else 0
        self.ctx = [K.open_queue(d.device_addrs(), d.num, packed=packed, feat=0, last_avail=start, last_used=start,
                                 regions=d.region_table(), callfd=-1, counters=self.rows[i],
                                 offloads=offloads)
                    for i, d in enumerate(self.q)]
        self.rx_segs: dict[int, list] = {}

    def post_rx(self, *lens: int) -> None:
        """An RX chain of writable segments of these lengths, back to back in one slot."""
        d = self.q[0]
        slot = d.alloc_slot()
        g = d.data_gpa(slot)
        d.view(g, sum(lens))[:] = 0xA5
        segs, off = [], 0
        for n in lens:
            segs.append((g + off, n, True))
            off += n
        d.add(segs, slot)
        d.publish()

    def send(self, data: bytes, cuts=()) -> None:
        """A TX chain of ``data`` cut into readable segments at offsets ``cuts``."""
        d = self.q[1]
        slot = d.alloc_slot()
        g = d.data_gpa(slot)
        d.view(g, len(data))[:] = np.frombuffer(data, np.uint8)
        edges = [0, *cuts, len(data)]
        d.add([(g + a, b - a, False) for a, b in zip(edges, edges[1:])], slot)
        d.publish()

    def received(self) -> list[bytes]:
        d = self.q[0]
        return [d.data(slot, n) for slot, n in d.harvest()]

    def close(self) -> None:
        self.ctx = []
        self.q = []
        self.mem.close()
