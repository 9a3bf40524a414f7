"""A guest-side virtio-net test double: guest memory, Rx/Tx virtqueues, a driver that posts and reads buffers.

What a QEMU guest's virtio-net driver would do, in one process, so the vhost
data path (and later vhost ports, vDPA device emulation) can be tested
without a VM:

* :class:`GuestMemory` — "guest RAM": a page-aligned numpy buffer or a memfd
  mapping (``memfd=True``; its fd can travel in SET_MEM_TABLE) placed at a
  chosen guest-physical address, with a small first-fit allocator and the
  region-table row the device side needs.
* :class:`GuestVq` — one split or packed virtqueue living in that memory,
  driven with the driver-side kernels of :mod:`dataplane.rings`
  (``split_drv_*`` / ``packed_drv_*``); kick and call eventfds; buffers
  tracked per cookie.  ``add_raw`` posts arbitrary (even unmapped) addresses
  and ``vr`` exposes the ring views, for hostile-guest tests.
* :class:`GuestNet` — an Rx queue and a Tx queue plus the virtio-net
  semantics: ``post_rx`` (mergeable or not, chained buffers, header in its own
  descriptor, indirect), ``send`` (virtio-net header with offload fields,
  header separate or shared, payload chained, indirect), ``tx_reclaim``,
  ``recv`` (parses ``num_buffers`` and reassembles mergeable packets), and
  ``vhost_queue`` to build the device side (:class:`~dataplane.vhost.virtio_net.VhostQueue`).
* Dirty-log checks: :meth:`GuestVq.get_used` records in ``device_writes``
  the guest pages the device must have written for what it harvests (the
  used lengths' bytes of the buffers, the used entries and used idx), and
  :func:`log_pages` lists the pages a dirty log marks; a test compares the two.
* Frame builders (:func:`ether_frame`, :func:`udp_packet`, :func:`tcp_packet`)
  and :func:`l4_checksum_ok` for offload tests.

Fixed-buffer mode for benchmarks: :meth:`GuestVq.fill_fixed` gives every
descriptor id its own buffer and :meth:`GuestVq.recycle` (one numba call)
harvests used buffers and re-posts them.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections import namedtuple

import numpy as np
from numba import njit

from dataplane.rings.packed import DRV_USED_IDX as PACKED_DRV_USED_IDX
from dataplane.rings.packed import (
    packed_drv_add,
    packed_drv_add1,
    packed_drv_enable_interrupt,
    packed_drv_free_count,
    packed_drv_get_used,
    packed_drv_init,
    packed_drv_need_kick,
    packed_drv_state,
    packed_layout,
    packed_vring_from_buffer,
)
from dataplane.rings.regions import make_regions
from dataplane.rings.split import DRV_LAST_USED as SPLIT_DRV_LAST_USED
from dataplane.rings.split import (
    split_drv_add,
    split_drv_add1,
    split_drv_enable_interrupt,
    split_drv_free_count,
    split_drv_get_used,
    split_drv_init,
    split_drv_publish,
    split_drv_state,
    split_layout,
    split_vring_from_buffer,
)
from dataplane.net.cksum import inet_checksum
from dataplane.vhost.net_hdr import (
    F_EVENT_IDX,
    F_IN_ORDER,
    F_INDIRECT_DESC,
    F_MRG_RXBUF,
    F_RING_PACKED,
    F_VERSION_1,
    NetHdr,
    net_hdr_len,
)

__all__ = [
    "GuestMemory",
    "GuestVq",
    "GuestNet",
    "RxPacket",
    "DEFAULT_GPA",
    "ether_frame",
    "ipv4_header",
    "udp_packet",
    "tcp_packet",
    "tcp6_packet",
    "l4_checksum_ok",
    "ipv4_checksum_ok",
    "pages_of",
    "log_pages",
    "used_write_pages",
    "notify_area_pages",
]

DEFAULT_GPA = 0x1_0000_0000  # 4 GiB: far from 0, so a stray 0 address is unmapped


def pages_of(gpa: int, length: int) -> set[int]:
    """The 4 KiB guest pages of ``[gpa, gpa + length)``."""
    if length <= 0:
        return set()
    return set(range(gpa >> 12, ((gpa + length - 1) >> 12) + 1))


def used_write_pages(packed: bool, desc_gpa: int, used_gpa: int, size: int, slot: int, ndescs) -> set[int]:
    """Pages a device writes to complete chains of ``ndescs`` descriptors each (in ring order, the
    first at used slot ``slot``; no IN_ORDER): split used entries and used idx, or packed
    descriptors written back (id, len, flags)."""
    pages = set()
    for nd in ndescs:
        s = slot % size
        if packed:
            pages |= pages_of(desc_gpa + 16 * s + 8, 8)
            slot += nd
        else:
            pages |= pages_of(used_gpa + 4 + 8 * s, 8)
            slot += 1
    if ndescs and not packed:
        pages |= pages_of(used_gpa + 2, 2)
    return pages


def notify_area_pages(packed: bool, used_gpa: int, size: int, event_idx: bool) -> set[int]:
    """The pages of the fields a device writes when it asks for kicks or not (split: the used
    ring's flags, or avail_event with EVENT_IDX; packed: the device event area)."""
    if packed:
        return pages_of(used_gpa, 4)
    if event_idx:
        return pages_of(used_gpa + 4 + 8 * size, 2)
    return pages_of(used_gpa, 2)


def log_pages(bitmap: np.ndarray) -> set[int]:
    """The pages a dirty log marks (bit ``page % 8`` of byte ``page // 8``)."""
    return set(int(p) for p in np.flatnonzero(np.unpackbits(np.asarray(bitmap, np.uint8), bitorder="little")))


class _Heap:
    """First-fit allocator of offsets in ``[0, size)``."""

    def __init__(self, size: int):
        self.free: list[tuple[int, int]] = [(0, size)]
        self.used: dict[int, int] = {}

    def alloc(self, size: int, align: int = 64) -> int:
        size = max(int(size), 1)
        for i, (off, ln) in enumerate(self.free):
            a = (off + align - 1) // align * align
            pad = a - off
            if ln - pad >= size:
                new = []
                if pad:
                    new.append((off, pad))
                if ln - pad - size:
                    new.append((a + size, ln - pad - size))
                self.free[i : i + 1] = new
                self.used[a] = size
                return a
        raise MemoryError(f"guest memory: no room for {size} bytes")

    def release(self, off: int) -> None:
        size = self.used.pop(off)
        i = bisect.bisect(self.free, (off, 0))
        self.free.insert(i, (off, size))
        # coalesce with the neighbours
        if i + 1 < len(self.free) and self.free[i][0] + self.free[i][1] == self.free[i + 1][0]:
            self.free[i] = (self.free[i][0], self.free[i][1] + self.free[i + 1][1])
            del self.free[i + 1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == self.free[i][0]:
            self.free[i - 1] = (self.free[i - 1][0], self.free[i - 1][1] + self.free[i][1])
            del self.free[i]

    def in_use(self) -> int:
        return sum(self.used.values())


class GuestMemory:
    """``size`` bytes of guest RAM at guest-physical ``gpa`` (numpy buffer, or memfd with ``memfd=True``)."""

    @classmethod
    def over(cls, buf: np.ndarray, gpa: int) -> "GuestMemory":
        """Guest RAM over memory someone else owns (a front-end's region, ``buf`` its uint8 view)."""
        self = cls.__new__(cls)
        self.size = int(buf.nbytes) & ~4095
        self.gpa = int(gpa)
        self.fd = -1
        self._mmap = None
        self.buf = buf[: self.size]
        self.hva = self.buf.ctypes.data
        self.heap = _Heap(self.size)
        return self

    def __init__(self, size: int, gpa: int = DEFAULT_GPA, memfd: bool = False):
        size = (int(size) + 4095) & ~4095
        self.size = size
        self.gpa = int(gpa)
        self.fd = -1
        self._mmap = None
        if memfd:
            self.fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
            self._mmap = mmap.mmap(self.fd, size)
            self.buf = np.frombuffer(self._mmap, dtype=np.uint8)
        else:
            raw = np.zeros(size + 4096, np.uint8)
            off = (-raw.ctypes.data) % 4096
            self.buf = raw[off : off + size]
        self.hva = self.buf.ctypes.data
        self.heap = _Heap(size)

    def alloc(self, size: int, align: int = 64) -> int:
        """Guest-physical address of ``size`` new bytes."""
        return self.gpa + self.heap.alloc(size, align)

    def free(self, gpa: int) -> None:
        self.heap.release(int(gpa) - self.gpa)

    def offset(self, gpa: int) -> int:
        off = int(gpa) - self.gpa
        if not 0 <= off < self.size:
            raise ValueError(f"gpa {gpa:#x} not in guest memory")
        return off

    def hva_of(self, gpa: int) -> int:
        return self.hva + self.offset(gpa)

    def write(self, gpa: int, data) -> None:
        off = self.offset(gpa)
        b = np.frombuffer(bytes(data), np.uint8)
        self.buf[off : off + len(b)] = b

    def read(self, gpa: int, n: int) -> bytes:
        off = self.offset(gpa)
        return self.buf[off : off + int(n)].tobytes()

    @property
    def log_size(self) -> int:
        """Bytes of a dirty log covering this memory (one bit per 4 KiB page from GPA 0)."""
        return ((self.gpa + self.size) // 4096 + 7) // 8

    def region(self) -> tuple[int, int, int]:
        """(gpa, length, hva): the region-table row."""
        return (self.gpa, self.size, self.hva)

    def regions(self) -> np.ndarray:
        return make_regions([self.region()])

    def close(self) -> None:
        if self._mmap is not None:
            self.buf = None
            try:
                self._mmap.close()
            except BufferError:
                pass  # views still alive; the mapping goes with them
            self._mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -----------------------------------------------------------------------------
# fixed-buffer recycling (benchmarks): cookie = buffer number
# -----------------------------------------------------------------------------


@njit(cache=True, _nrt=False)
def _recycle_split(vr, ds, gpas, lens, write, cookies, ulens):
    n = split_drv_get_used(vr, ds, cookies, ulens, cookies.shape[0])
    for i in range(n):
        c = np.int64(cookies[i])
        split_drv_add1(vr, ds, c, gpas[c], lens[c], write)
    split_drv_publish(vr, ds)
    return n


@njit(cache=True, _nrt=False)
def _recycle_packed(vr, ds, gpas, lens, write, cookies, ulens):
    n = packed_drv_get_used(vr, ds, cookies, ulens, cookies.shape[0])
    for i in range(n):
        c = np.int64(cookies[i])
        packed_drv_add1(vr, ds, c, gpas[c], lens[c], write)
    packed_drv_need_kick(vr, ds)
    return n


@njit(cache=True, _nrt=False, nogil=True)
def _drive_split(tx_vr, tx_ds, tx_gpas, tx_lens, rx_vr, rx_ds, rx_gpas, rx_lens, cookies, ulens, iters):
    """``iters`` turns of recycling the Tx and Rx queues' fixed buffers; returns Tx buffers recycled."""
    moved = 0
    for _ in range(iters):
        moved += _recycle_split(tx_vr, tx_ds, tx_gpas, tx_lens, False, cookies, ulens)
        _recycle_split(rx_vr, rx_ds, rx_gpas, rx_lens, True, cookies, ulens)
    return moved


@njit(cache=True, _nrt=False, nogil=True)
def _drive_packed(tx_vr, tx_ds, tx_gpas, tx_lens, rx_vr, rx_ds, rx_gpas, rx_lens, cookies, ulens, iters):
    """:func:`_drive_split` for packed rings."""
    moved = 0
    for _ in range(iters):
        moved += _recycle_packed(tx_vr, tx_ds, tx_gpas, tx_lens, False, cookies, ulens)
        _recycle_packed(rx_vr, rx_ds, rx_gpas, rx_lens, True, cookies, ulens)
    return moved


_Buf = namedtuple("_Buf", ["segs", "allocs", "ind"])  # segs: [(gpa, len, write)]


class GuestVq:
    """A split or packed virtqueue in guest memory, driven by the driver-side kernels."""

    def __init__(self, mem: GuestMemory, size: int, packed: bool = False, feat_mask: int = 0, name: str = "vq"):
        self.mem = mem
        self.size = int(size)
        self.packed = bool(packed)
        self.feat_mask = int(feat_mask)
        self.name = name
        if self.packed:
            lay = packed_layout(self.size)
            self.ring_gpa = mem.alloc(lay.total_size, 4096)
            off = mem.offset(self.ring_gpa)
            self.vr = packed_vring_from_buffer(mem.buf, self.size, off)
            self.ds = packed_drv_state(self.size)
            packed_drv_init(self.vr, self.ds, self.size, self.feat_mask)
            self.desc_gpa = self.ring_gpa
            self.avail_gpa = self.ring_gpa + lay.driver_offset
            self.used_gpa = self.ring_gpa + lay.device_offset
        else:
            lay = split_layout(self.size)
            self.ring_gpa = mem.alloc(lay.total_size, 4096)
            off = mem.offset(self.ring_gpa)
            self.vr = split_vring_from_buffer(mem.buf, self.size, off)
            self.ds = split_drv_state(self.size)
            split_drv_init(self.vr, self.ds, self.size, self.feat_mask)
            self.desc_gpa = self.ring_gpa + lay.desc_offset
            self.avail_gpa = self.ring_gpa + lay.avail_offset
            self.used_gpa = self.ring_gpa + lay.used_offset
        self.kickfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.callfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.bufs: dict[int, _Buf] = {}
        self._next_cookie = 1
        self.kicks = 0
        self._fixed = None
        self._cookies = np.zeros(self.size, np.uint64)
        self._ulens = np.zeros(self.size, np.uint32)
        self.device_writes: set[int] = set()  # pages the device wrote for what get_used harvested

    # -- addresses the device needs ------------------------------------------------
    @property
    def addrs(self) -> tuple[int, int, int]:
        """Host addresses (desc, avail/driver area, used/device area)."""
        m = self.mem
        return m.hva_of(self.desc_gpa), m.hva_of(self.avail_gpa), m.hva_of(self.used_gpa)

    # -- buffers ----------------------------------------------------------------
    def add_raw(self, segs, indirect: bool = False, allocs=()) -> int | None:
        """Post one chain of ``segs`` = [(gpa, len, write), ...] as they are (any address); its cookie or None."""
        n = len(segs)
        gpa = np.array([s[0] for s in segs], np.uint64)
        ln = np.array([s[1] for s in segs], np.uint32)
        wr = np.array([1 if s[2] else 0 for s in segs], np.uint8)
        ind_gpa = 0
        ind_hva = 0
        if indirect:
            ind_gpa = self.mem.alloc(16 * n, 16)
            ind_hva = self.mem.hva_of(ind_gpa)
        cookie = self._next_cookie
        if self.packed:
            r = packed_drv_add(self.vr, self.ds, cookie, gpa, ln, wr, n, ind_gpa, ind_hva)
        else:
            r = split_drv_add(self.vr, self.ds, cookie, gpa, ln, wr, n, ind_gpa, ind_hva)
        if r < 0:
            if ind_gpa:
                self.mem.free(ind_gpa)
            return None
        self._next_cookie += 1
        self.bufs[cookie] = _Buf(list(segs), list(allocs), ind_gpa)
        return cookie

    def add(self, seg_lens, write: bool, data: bytes | None = None, indirect: bool = False) -> int | None:
        """Allocate segments of ``seg_lens`` bytes (each its own allocation), fill them
        with ``data`` (readable chains) and post them; the cookie, or None when full."""
        allocs = [self.mem.alloc(int(n), 64) for n in seg_lens]
        if data is not None:
            pos = 0
            for g, n in zip(allocs, seg_lens):
                self.mem.write(g, data[pos : pos + n])
                pos += n
        segs = [(g, int(n), write) for g, n in zip(allocs, seg_lens)]
        c = self.add_raw(segs, indirect, allocs)
        if c is None:
            for g in allocs:
                self.mem.free(g)
        return c

    def publish(self) -> bool:
        """Make the added chains visible (split) and decide on a kick; writes the kick fd if needed."""
        if self.packed:
            need = bool(packed_drv_need_kick(self.vr, self.ds))
        else:
            need = bool(split_drv_publish(self.vr, self.ds))
        if need:
            self.kicks += 1
            os.eventfd_write(self.kickfd, 1)
        return need

    def get_used(self, n: int | None = None) -> list[tuple[int, int]]:
        """Harvest up to ``n`` used chains: [(cookie, used len)]."""
        n = self.size if n is None else int(n)
        if self.packed:
            slot = int(self.ds.state[PACKED_DRV_USED_IDX])
            got = packed_drv_get_used(self.vr, self.ds, self._cookies, self._ulens, n)
        else:
            slot = int(self.ds.state[SPLIT_DRV_LAST_USED])
            got = split_drv_get_used(self.vr, self.ds, self._cookies, self._ulens, n)
        used = [(int(self._cookies[i]), int(self._ulens[i])) for i in range(got)]
        self._note_device_writes(slot, used)
        return used

    def _note_device_writes(self, slot: int, used) -> None:
        """Pages the device wrote for ``used`` (harvested from used slot ``slot`` on), without IN_ORDER."""
        w = self.device_writes
        ndescs = []
        for cookie, ln in used:
            b = self.bufs.get(cookie)
            left = ln
            for g, n, wr in (b.segs if b is not None else ()):
                if wr and left > 0:
                    w |= pages_of(g, min(n, left))
                    left -= n
            ndescs.append(1 if b is None or b.ind else len(b.segs))
        w |= used_write_pages(self.packed, self.desc_gpa, self.used_gpa, self.size, slot, ndescs)

    def gather(self, cookie: int, length: int) -> bytes:
        """The first ``length`` bytes of the chain's writable segments."""
        out = []
        left = length
        for g, n, w in self.bufs[cookie].segs:
            if not w or left <= 0:
                continue
            k = min(n, left)
            out.append(self.mem.read(g, k))
            left -= k
        return b"".join(out)

    def release(self, cookie: int) -> None:
        b = self.bufs.pop(cookie)
        for g in b.allocs:
            self.mem.free(g)
        if b.ind:
            self.mem.free(b.ind)

    def enable_interrupt(self, enable: bool) -> bool:
        if self.packed:
            return bool(packed_drv_enable_interrupt(self.vr, self.ds, bool(enable)))
        return bool(split_drv_enable_interrupt(self.vr, self.ds, bool(enable)))

    def free_count(self) -> int:
        if self.packed:
            return int(packed_drv_free_count(self.ds))
        return int(split_drv_free_count(self.ds))

    def interrupts(self) -> int:
        """Read (and reset) the call eventfd: the number of interrupts since the last read."""
        try:
            return os.eventfd_read(self.callfd)
        except BlockingIOError:
            return 0

    # -- fixed buffers (benchmarks) -------------------------------------------------
    def fill_fixed(self, buf_len: int, write: bool, data: bytes | None = None) -> int:
        """One buffer of ``buf_len`` bytes per queue entry, all posted; returns how many."""
        gpas = np.zeros(self.size, np.uint64)
        lens = np.full(self.size, int(buf_len), np.uint32)
        if data is not None:
            lens[:] = len(data)
        for i in range(self.size):
            gpas[i] = self.mem.alloc(int(buf_len), 64)
            if data is not None:
                self.mem.write(int(gpas[i]), data)
        self._fixed = (gpas, lens, bool(write))
        for i in range(self.size):
            if self.packed:
                packed_drv_add1(self.vr, self.ds, i, gpas[i], lens[i], bool(write))
            else:
                split_drv_add1(self.vr, self.ds, i, gpas[i], lens[i], bool(write))
        self.publish()
        return self.size

    def recycle(self) -> int:
        """Harvest used fixed buffers and post them again (one numba call); returns how many."""
        gpas, lens, write = self._fixed
        f = _recycle_packed if self.packed else _recycle_split
        return int(f(self.vr, self.ds, gpas, lens, write, self._cookies, self._ulens))

    def close(self) -> None:
        for fd in (self.kickfd, self.callfd):
            if fd >= 0:
                os.close(fd)
        self.kickfd = self.callfd = -1


RxPacket = namedtuple("RxPacket", ["hdr", "data", "num_buffers", "lens"])
RxPacket.__doc__ = """A packet read from the Rx queue: its NetHdr, payload bytes, the
number of used buffers it took and their used lengths."""


def _split_lengths(total: int, nseg: int) -> list[int]:
    """``total`` bytes in ``nseg`` (non-empty where possible) near-equal pieces."""
    nseg = max(1, min(int(nseg), max(total, 1)))
    base, extra = divmod(total, nseg)
    return [base + (1 if i < extra else 0) for i in range(nseg)]


class GuestNet:
    """A virtio-net guest: Rx queue 0 and Tx queue 1 in :class:`GuestMemory`.

    ``features`` are the negotiated virtio bits (RING_PACKED is added when
    ``packed``); they fix the header length (10 or 12), mergeable Rx buffers
    and the rings' EVENT_IDX / IN_ORDER / INDIRECT behaviour.
    """

    def __init__(
        self,
        *,
        packed: bool = False,
        features: int = F_VERSION_1 | F_MRG_RXBUF,
        queue_size: int = 256,
        mem_size: int = 32 << 20,
        gpa: int = DEFAULT_GPA,
        memfd: bool = False,
        memory: GuestMemory | None = None,
    ):
        features = int(features)
        if packed:
            features |= F_RING_PACKED
        self.packed = bool(features & F_RING_PACKED)
        self.features = features
        self.hdr_len = net_hdr_len(features)
        self.mergeable = bool(features & F_MRG_RXBUF)
        from dataplane.vhost.virtio_net import ring_feat_mask

        feat = ring_feat_mask(features)
        self.mem = GuestMemory(mem_size, gpa, memfd) if memory is None else memory
        self.rx = GuestVq(self.mem, queue_size, self.packed, feat, "rx")
        self.tx = GuestVq(self.mem, queue_size, self.packed, feat, "tx")
        self.indirect_ok = bool(features & F_INDIRECT_DESC)
        self.event_idx = bool(features & F_EVENT_IDX)
        self.in_order = bool(features & F_IN_ORDER)
        self.rx_errors = 0  # used Rx buffers of length 0 where a packet should start
        self.rx_empty_bufs = 0  # length-0 buffers inside a mergeable packet
        self._partial = None  # mergeable packet still missing buffers: [hdr, [data], want, [lens]]

    # -- device side ----------------------------------------------------------------
    def queue_addrs(self, which: str) -> dict:
        vq = self.rx if which == "rx" else self.tx
        d, a, u = vq.addrs
        return dict(desc=d, avail=a, used=u, size=vq.size)

    def vhost_queue(self, which: str, **kw):
        """A :class:`~dataplane.vhost.virtio_net.VhostQueue` serving our ``"rx"`` or ``"tx"`` queue."""
        from dataplane.vhost.virtio_net import VhostQueue

        vq = self.rx if which == "rx" else self.tx
        d, a, u = vq.addrs
        kw.setdefault("callfd", vq.callfd)
        return VhostQueue(
            d, a, u, vq.size, regions=self.mem.regions(), packed=self.packed, features=self.features, keepalive=self, **kw
        )

    def frontend_vrings(self) -> dict:
        """Our Rx / Tx queues as the scripted front-end's vrings 0 and 1
        (:class:`~dataplane.testing.vhost_frontend.FrontendVring`, with dup'ed eventfds):
        put them in ``VhostUserFrontend.vrings`` before its ``start`` and it sets them up."""
        from dataplane.testing.vhost_frontend import FrontendVring

        out = {}
        for index, vq in enumerate((self.rx, self.tx)):
            out[index] = FrontendVring(index, vq.size, self.packed, vq.desc_gpa, vq.avail_gpa, vq.used_gpa,
                                       self.mem.buf[:0], self.mem.buf[:0], self.mem.buf[:0],
                                       kick_fd=os.dup(vq.kickfd), call_fd=os.dup(vq.callfd))
        return out

    def notify_area_pages(self) -> set[int]:
        """The pages of the fields a device writes when it asks for kicks or not
        (split: the used ring's flags / avail_event; packed: the device event area)."""
        return set().union(*(notify_area_pages(self.packed, vq.used_gpa, vq.size, self.event_idx)
                             for vq in (self.rx, self.tx)))

    def drive_fixed(self, iters: int) -> int:
        """Benchmarks: ``iters`` turns of re-posting the fixed buffers the device used on both
        queues (:meth:`GuestVq.fill_fixed` first; an unfilled Rx queue is left alone), in one
        numba call that releases the GIL.  Returns the Tx buffers re-posted."""
        none = (np.zeros(0, np.uint64), np.zeros(0, np.uint32))
        tx = self.tx._fixed[:2]
        rx = self.rx._fixed[:2] if self.rx._fixed is not None else none
        cookies, ulens = self.tx._cookies, self.tx._ulens
        drive = _drive_packed if self.packed else _drive_split
        return int(drive(self.tx.vr, self.tx.ds, *tx, self.rx.vr, self.rx.ds, *rx, cookies, ulens, int(iters)))

    # -- Rx ---------------------------------------------------------------------
    def post_rx(
        self, n: int, buf_size: int = 2048, nseg: int = 1, indirect: bool = False, hdr_separate: bool = False
    ) -> int:
        """Post up to ``n`` Rx chains of ``buf_size`` writable bytes (in ``nseg`` descriptors,
        plus a ``hdr_len``-byte header descriptor first with ``hdr_separate``); returns how many."""
        posted = 0
        lens = _split_lengths(buf_size, nseg)
        if hdr_separate:
            lens = [self.hdr_len] + lens
        for _ in range(int(n)):
            if self.rx.add(lens, True, indirect=indirect) is None:
                break
            posted += 1
        self.rx.publish()
        return posted

    def recv(self, n: int | None = None) -> list[RxPacket]:
        """Harvest used Rx buffers and return the complete packets (buffers are freed).

        Mergeable: the header (read across buffers if it straddles them) gives
        ``num_buffers``; a packet's buffers may come over several calls.  A
        length-0 buffer where a packet should start counts in ``rx_errors``.
        """
        out = []
        hl = self.hdr_len
        for cookie, ln in self.rx.get_used(n):
            data = self.rx.gather(cookie, ln)
            self.rx.release(cookie)
            if not self.mergeable:
                if ln < hl:
                    self.rx_errors += 1
                    continue
                out.append(RxPacket(NetHdr.unpack(data, hl), data[hl:], 1, [ln]))
                continue
            p = self._partial
            if p is None:
                if ln == 0:
                    self.rx_errors += 1
                    continue
                p = self._partial = [None, [], 0, []]  # hdr, chunks, want, lens
            elif ln == 0:
                self.rx_empty_bufs += 1
            p[1].append(data)
            p[3].append(ln)
            if p[0] is None:
                raw = b"".join(p[1])
                if len(raw) >= hl:
                    p[0] = NetHdr.unpack(raw, hl)
                    p[2] = max(p[0].num_buffers, 1)
            if p[0] is not None and len(p[3]) >= p[2]:
                raw = b"".join(p[1])
                out.append(RxPacket(p[0], raw[hl:], p[2], p[3]))
                self._partial = None
        return out

    # -- Tx ---------------------------------------------------------------------
    def send(
        self,
        packets,
        hdrs=None,
        nseg: int = 1,
        hdr_separate: bool = False,
        indirect: bool = False,
        publish: bool = True,
    ) -> int:
        """Queue ``packets`` (bytes) on Tx with their virtio-net headers (``hdrs``: one NetHdr
        for all, or one per packet; default all zero).  ``nseg``: payload descriptors per
        packet; ``hdr_separate``: the header in a descriptor of its own.  Returns how many."""
        sent = 0
        for i, p in enumerate(packets):
            h = hdrs[i] if isinstance(hdrs, (list, tuple)) else (hdrs or NetHdr())
            hb = h.pack(self.hdr_len)
            p = bytes(p)
            if hdr_separate:
                lens = [self.hdr_len] + _split_lengths(len(p), nseg)
            else:
                lens = _split_lengths(self.hdr_len + len(p), nseg)
            if self.tx.add(lens, False, data=hb + p, indirect=indirect) is None:
                break
            sent += 1
        if publish:
            self.tx.publish()
        return sent

    def tx_reclaim(self) -> list[int]:
        """Harvest completed Tx chains (freeing their memory); returns their used lengths."""
        lens = []
        for cookie, ln in self.tx.get_used():
            self.tx.release(cookie)
            lens.append(ln)
        return lens

    def close(self) -> None:
        self.rx.close()
        self.tx.close()
        self.mem.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -----------------------------------------------------------------------------
# frames
# -----------------------------------------------------------------------------


def ether_frame(dst: bytes, src: bytes, ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    h = bytes(dst) + bytes(src)
    if vlan is not None:
        h += struct.pack("!HH", 0x8100, vlan)
    return h + struct.pack("!H", ethertype) + bytes(payload)


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = 64, checksum: bool = True) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, ttl, proto, 0, bytes(src), bytes(dst))
    if checksum:
        c = (~inet_checksum(h)) & 0xFFFF
        h = h[:10] + struct.pack("!H", c) + h[12:]
    return h


_MAC_A = bytes.fromhex("525400000001")
_MAC_B = bytes.fromhex("525400000002")
_IP_A = bytes([10, 0, 0, 1])
_IP_B = bytes([10, 0, 0, 2])


def _pseudo_v4(src, dst, proto, length):
    return bytes(src) + bytes(dst) + struct.pack("!BBH", 0, proto, length)


def udp_packet(payload: bytes, *, src_mac=_MAC_A, dst_mac=_MAC_B, src_ip=_IP_A, dst_ip=_IP_B, sport=1234, dport=5678, csum="full", vlan=None) -> bytes:
    """An Ethernet/IPv4/UDP frame.  ``csum``: "full" (valid), "partial" (pseudo-header sum,
    as a NEEDS_CSUM sender leaves it) or "zero"."""
    ln = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, ln, 0) + bytes(payload)
    ph = _pseudo_v4(src_ip, dst_ip, 17, ln)
    if csum == "full":
        c = (~inet_checksum(ph + udp)) & 0xFFFF or 0xFFFF
    elif csum == "partial":
        c = inet_checksum(ph)
    else:
        c = 0
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return ether_frame(dst_mac, src_mac, 0x0800, ipv4_header(src_ip, dst_ip, 17, ln) + udp, vlan)


def _tcp_segment(payload: bytes, sport: int, dport: int, flags: int, csum: str, pseudo) -> bytes:
    """A 20-byte TCP header plus ``payload``, checksummed over ``pseudo(length)`` as ``csum`` says."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + bytes(payload)
    ph = pseudo(len(tcp))
    if csum == "full":
        c = (~inet_checksum(ph + tcp)) & 0xFFFF
    elif csum == "partial":
        c = inet_checksum(ph)
    else:
        c = 0
    return tcp[:16] + struct.pack("!H", c) + tcp[18:]


def tcp_packet(payload: bytes, *, src_mac=_MAC_A, dst_mac=_MAC_B, src_ip=_IP_A, dst_ip=_IP_B, sport=1234, dport=80, csum="full", vlan=None, ip_csum=True, flags=0x18) -> bytes:
    """An Ethernet/IPv4/TCP frame (20-byte TCP header, ``flags`` default ACK|PSH); ``csum`` as :func:`udp_packet`."""
    tcp = _tcp_segment(payload, sport, dport, flags, csum, lambda n: _pseudo_v4(src_ip, dst_ip, 6, n))
    return ether_frame(dst_mac, src_mac, 0x0800, ipv4_header(src_ip, dst_ip, 6, len(tcp), checksum=ip_csum) + tcp, vlan)


_IP6_A = bytes.fromhex("fd000000000000000000000000000001")
_IP6_B = bytes.fromhex("fd000000000000000000000000000002")


def _pseudo_v6(src, dst, proto, length):
    return bytes(src) + bytes(dst) + struct.pack("!IxxxB", length, proto)


def tcp6_packet(payload: bytes, *, src_mac=_MAC_A, dst_mac=_MAC_B, src_ip=_IP6_A, dst_ip=_IP6_B, sport=1234, dport=80,
                csum="full", vlan=None, flags=0x18) -> bytes:
    """An Ethernet/IPv6/TCP frame (no extension headers, 20-byte TCP header); ``csum`` as :func:`udp_packet`."""
    tcp = _tcp_segment(payload, sport, dport, flags, csum, lambda n: _pseudo_v6(src_ip, dst_ip, 6, n))
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, bytes(src_ip), bytes(dst_ip))
    return ether_frame(dst_mac, src_mac, 0x86DD, ip6 + tcp, vlan)


def _l3_offset(frame: bytes) -> int:
    return 18 if struct.unpack("!H", frame[12:14])[0] == 0x8100 else 14


def ipv4_checksum_ok(frame: bytes) -> bool:
    o = _l3_offset(frame)
    ihl = (frame[o] & 0xF) * 4
    return inet_checksum(frame[o : o + ihl]) == 0xFFFF


def l4_checksum_ok(frame: bytes) -> bool:
    """Whether the TCP/UDP checksum of an Ethernet/IPv4 or IPv6 (no extension headers) frame verifies."""
    o = _l3_offset(frame)
    if frame[o] >> 4 == 6:
        plen, proto = struct.unpack("!HB", frame[o + 4 : o + 7])
        l4 = frame[o + 40 : o + 40 + plen]
        return inet_checksum(_pseudo_v6(frame[o + 8 : o + 24], frame[o + 24 : o + 40], proto, len(l4)) + l4) == 0xFFFF
    ihl = (frame[o] & 0xF) * 4
    proto = frame[o + 9]
    tot = struct.unpack("!H", frame[o + 2 : o + 4])[0]
    l4 = frame[o + ihl : o + tot]
    ph = _pseudo_v4(frame[o + 12 : o + 16], frame[o + 16 : o + 20], proto, len(l4))
    return inet_checksum(ph + l4) == 0xFFFF
