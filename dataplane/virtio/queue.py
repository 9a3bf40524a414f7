"""One virtqueue of the virtio-user PMD: ring, driver state, counters, scratch, all in one memzone.

The memzone belongs to our own :class:`~dataplane.memory.Memory`, so the
ring's iova (= virtual address) is inside a segment announced by
SET_MEM_TABLE and the back-end reaches it.  Everything a burst touches lives
in the same memzone, laid out by :func:`queue_layout`::

    ring (split: desc | avail | used, 4 KiB aligned; packed: desc | driver | device event areas)
    Tx only: header area, 16 bytes per descriptor id (virtio-net headers of
             packets whose first mbuf has no usable headroom)
    driver state: state int64[16] | cookie u64[num] | ndesc u16[num] |
                  split: wlen u32[num], dnext u16[num]; packed: free_ids u16[num]
    counters int64[Q_SLOTS] | scratch: ck u64[num], ln u32[num], sg_gpa u64[64], sg_len u32[64], sg_wr u8[64]
    meta int64[8] (the last 64 bytes): magic, index, num, packed

so another process sharing the memory (an lcore forked before the port
connected) can rebuild every view with :meth:`VirtQueue.attach` and run the
burst kernels on the very same state, while the main process reads the
counters.  Only the eventfds are per process (pass the kick fd along with
the queue, as the vhost hand-off does with call fds).
"""

from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

from dataplane.memory.mempool import pktmbuf_free_bulk
from dataplane.rings import packed as pk
from dataplane.rings import split as sp
from dataplane.rings.virtqueue import FEAT_EVENT_IDX, FEAT_IN_ORDER
from dataplane.virtio import rxtx
from dataplane.virtio.vhost_user import VringSetup

__all__ = ["VirtQueue", "QueueLayout", "queue_layout", "MAX_TX_SEGS"]

MAX_TX_SEGS = 64  # descriptors per Tx packet (header + segments); longer chains are errors
HDR_SLOT = 16
META_MAGIC = 0x5155515456  # "VTQUQ"
META_BYTES = 64

QueueLayout = namedtuple(
    "QueueLayout",
    ["num", "packed", "is_tx", "ring", "ring_bytes", "hdr_off", "state_off", "cookie_off", "ndesc_off", "aux1_off",
     "aux2_off", "counters_off", "ck_off", "ln_off", "sg_gpa_off", "sg_len_off", "sg_wr_off", "meta_off", "total"],
)


_STATE_WORDS = max(pk.DRV_SLOTS, sp.DRV_SLOTS)  # driver state words (either ring kind)


def queue_layout(num: int, packed: bool, is_tx: bool) -> QueueLayout:
    """Byte offsets of everything in a queue's memzone (see the module doc)."""
    ring = pk.packed_layout(num) if packed else sp.split_layout(num, 4096)
    off = ring.total_size

    def take(nbytes, align=64):
        nonlocal off
        off = (off + align - 1) & ~(align - 1)
        at = off
        off += nbytes
        return at

    hdr_off = take(HDR_SLOT * num if is_tx else 0)
    state_off = take(8 * _STATE_WORDS)
    cookie_off = take(8 * num)
    ndesc_off = take(2 * num)
    aux1_off = take(2 * num if packed else 4 * num)  # packed: free_ids; split: wlen
    aux2_off = take(0 if packed else 2 * num)  # split: dnext
    counters_off = take(8 * rxtx.Q_SLOTS)
    ck_off = take(8 * num)
    ln_off = take(4 * num)
    sg_gpa_off = take(8 * MAX_TX_SEGS)
    sg_len_off = take(4 * MAX_TX_SEGS)
    sg_wr_off = take(MAX_TX_SEGS)
    meta_off = take(META_BYTES)
    return QueueLayout(num, packed, is_tx, ring, ring.total_size, hdr_off, state_off, cookie_off, ndesc_off, aux1_off,
                       aux2_off, counters_off, ck_off, ln_off, sg_gpa_off, sg_len_off, sg_wr_off, meta_off, off)


class VirtQueue:
    """Virtqueue ``index`` (even: Rx of pair index//2, odd: Tx) of ``num`` entries in memzone ``zone_name``."""

    def __init__(self, memory, zone_name: str, index: int, num: int, packed: bool, *, _attach: bool = False):
        self.memory = memory
        self.index = index
        self.num = num
        self.packed = packed
        self.is_tx = bool(index & 1)
        lay = queue_layout(num, packed, self.is_tx)
        self.layout = lay
        self.zone_name = zone_name
        self.owner = not _attach
        if _attach:
            self.zone = memory.memzone_lookup(zone_name)
        else:
            self.zone = memory.memzone_reserve(zone_name, lay.total, align=4096)
        buf = self.zone.view(np.uint8)
        meta = buf[lay.meta_off : lay.meta_off + META_BYTES].view(np.int64)
        if not _attach:
            meta[:4] = (META_MAGIC, index, num, int(packed))

        def arr(off, dtype, count):
            return buf[off : off + np.dtype(dtype).itemsize * count].view(dtype)

        state = arr(lay.state_off, np.int64, _STATE_WORDS)
        cookie = arr(lay.cookie_off, np.uint64, num)
        ndesc = arr(lay.ndesc_off, np.uint16, num)
        ring = lay.ring
        if packed:
            self.vr = pk.packed_vring_from_buffer(buf, num)
            self.ds = pk.PackedDrvState(state, cookie, ndesc, arr(lay.aux1_off, np.uint16, num))
            self.desc_addr = self.zone.iova + ring.desc_offset
            self.avail_addr = self.zone.iova + ring.driver_offset
            self.used_addr = self.zone.iova + ring.device_offset
        else:
            self.vr = sp.split_vring_from_buffer(buf, num, 0, 4096)
            self.ds = sp.SplitDrvState(state, cookie, ndesc, arr(lay.aux1_off, np.uint32, num), arr(lay.aux2_off, np.uint16, num))
            self.desc_addr = self.zone.iova + ring.desc_offset
            self.avail_addr = self.zone.iova + ring.avail_offset
            self.used_addr = self.zone.iova + ring.used_offset
        self.hdr_hva = np.uint64(self.zone.addr + lay.hdr_off)
        self.hdr_iova = np.uint64(self.zone.iova + lay.hdr_off)
        self.counters = arr(lay.counters_off, np.int64, rxtx.Q_SLOTS)
        self.ck = arr(lay.ck_off, np.uint64, num)
        self.ln = arr(lay.ln_off, np.uint32, num)
        self.sg_gpa = arr(lay.sg_gpa_off, np.uint64, MAX_TX_SEGS)
        self.sg_len = arr(lay.sg_len_off, np.uint32, MAX_TX_SEGS)
        self.sg_wr = arr(lay.sg_wr_off, np.uint8, MAX_TX_SEGS)
        if _attach:
            self.kick_fd = self.call_fd = -1
        else:
            self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.features = 0

    @classmethod
    def attach(cls, memory, zone_name: str) -> "VirtQueue":
        """The views of a queue another process created (no eventfds: ``kick_fd`` is -1, pass yours)."""
        mz = memory.memzone_lookup(zone_name)
        # the layout ends with the meta block (its size is a multiple of 64: the memzone's exactly)
        meta = mz.view(np.uint8)[mz.size - META_BYTES :].view(np.int64)
        magic, index, num, packed = (int(x) for x in meta[:4])
        if magic != META_MAGIC or queue_layout(num, bool(packed), bool(index & 1)).total != mz.size:
            raise ValueError(f"memzone {zone_name!r} holds no virtio-user queue")
        return cls(memory, zone_name, index, num, bool(packed), _attach=True)

    # -- control ------------------------------------------------------------------

    def init(self, features_mask: int) -> None:
        """Driver reset of the ring (empty, interrupts off: we poll)."""
        self.features = features_mask & (FEAT_EVENT_IDX | FEAT_IN_ORDER)
        if self.packed:
            pk.packed_drv_init(self.vr, self.ds, self.num, self.features)
            pk.packed_drv_enable_interrupt(self.vr, self.ds, False)
        else:
            sp.split_drv_init(self.vr, self.ds, self.num, self.features)
            sp.split_drv_enable_interrupt(self.vr, self.ds, False)

    def setup(self) -> VringSetup:
        base = pk.WRAP_BIT if self.packed else 0  # fresh ring: index 0, wrap counter 1
        return VringSetup(self.index, self.num, base, self.desc_addr, self.avail_addr, self.used_addr, self.kick_fd, self.call_fd)

    def release_buffers(self, mp) -> int:
        """Free every mbuf the ring still holds (after a disconnect, before a reset); returns the count."""
        busy = np.nonzero(self.ds.ndesc)[0]
        if busy.size == 0:
            return 0
        cookies = self.ds.cookie[busy].astype(np.uint32)
        self.ds.ndesc[busy] = 0
        pktmbuf_free_bulk(mp.arrays, -1, cookies, cookies.size)
        return int(cookies.size)

    @property
    def broken(self) -> bool:
        """The device returned an impossible used entry; the ring stopped (needs a reset)."""
        if self.ds is None:
            return False
        return bool(self.ds.state[pk.DRV_BROKEN if self.packed else sp.DRV_BROKEN])

    @property
    def bad_used(self) -> int:
        if self.ds is None:
            return 0
        return int(self.ds.state[pk.DRV_BAD_USED if self.packed else sp.DRV_BAD_USED])

    def outstanding(self) -> int:
        return int(np.count_nonzero(self.ds.ndesc))

    def close(self) -> None:
        for name in ("kick_fd", "call_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        if self.zone is not None:
            self.vr = self.ds = None
            self.zone = None
            if self.owner:
                try:
                    self.memory.memzone_free(self.zone_name)
                except Exception:
                    pass
