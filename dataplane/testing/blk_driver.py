"""A virtio-blk driver for one queue, built from the rings' driver kernels: the "guest" side of block tests.

It owns a ring (split or packed) and request buffers in front-end guest
memory (:class:`~dataplane.testing.vhost_frontend.GuestMemoryLayout`) and
adds chains with :func:`~dataplane.rings.split.split_drv_add` /
:func:`~dataplane.rings.packed.packed_drv_add`, so whatever serves the other
side (our :class:`~dataplane.vhost.blk.requests.BlkQueue` in-process, our
back-end or qemu-storage-daemon over vhost-user) sees a real ring::

    mem = GuestMemoryLayout.simple(16 << 20)
    drv = BlkDriver(mem, num=64, packed=False)
    q = BlkQueue(*drv.device_addrs(), drv.num, regions=drv.region_table(), disk=disk, packed=drv.packed)
    slot = drv.submit(VIRTIO_BLK_T_OUT, sector=8, data=b"x" * 4096)
    drv.publish(); q.burst()
    [(slot, used_len)] = drv.harvest()
    assert drv.status(slot) == VIRTIO_BLK_S_OK

:class:`RequestStream` keeps ``depth`` requests in flight from a numba loop
(:func:`drive_split`), for benchmarks against a back-end in another process.

Requests use one *slot* each (header, data and status buffers at fixed
guest addresses); :meth:`submit` lays them out as Linux does (header,
data, status descriptors; the data may be cut into several descriptors or
put in an indirect table), and :meth:`add` adds any chain at all, for
hostile requests.  Slots double as the chains' cookies.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from dataplane.rings.jit import eventfd_signal, inline_kernel, loop_kernel
from dataplane.rings.mem import ld8, store_u32, store_u64
from dataplane.rings.packed import DRV_USED_IDX as PACKED_DRV_USED_IDX
from dataplane.rings.split import DRV_LAST_USED as SPLIT_DRV_LAST_USED
from dataplane.rings.packed import (
    packed_drv_add,
    packed_drv_get_used,
    packed_drv_init,
    packed_drv_need_kick,
    packed_drv_state,
    packed_vring_from_addrs,
)
from dataplane.rings.regions import make_regions
from dataplane.rings.split import (
    split_drv_add,
    split_drv_get_used,
    split_drv_init,
    split_drv_publish,
    split_drv_state,
    split_vring_from_addrs,
)
from dataplane.testing.guest_net import notify_area_pages, pages_of, used_write_pages
from dataplane.testing.vhost_frontend import FrontendVring, GuestMemoryLayout
from dataplane.vhost.blk.spec import REQ_HDR_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_IN
from dataplane.vhost.virtio_net import ring_feat_mask
from dataplane.vhost_user.features import VirtioFeature as VF

__all__ = ["BlkDriver", "RequestStream", "drive_split", "STATUS_UNSET"]

#: What a status byte holds before the device writes it (no virtio status has this value).
STATUS_UNSET = 0xEE
_PAGE = 4096


class BlkDriver:
    """The driver side of one virtio-blk queue in ``memory`` (see the module doc).

    ``vring``: a ring a :class:`~dataplane.testing.vhost_frontend.VhostUserFrontend`
    set up (its GPAs are used); otherwise the ring is allocated in ``memory``.
    ``features``: negotiated virtio bits (EVENT_IDX, INDIRECT_DESC matter).
    ``max_data``: data bytes per slot.  ``device_writes``: the guest pages the
    device must have written for the requests harvested so far (data up to the
    used length, status byte, used entries; for dirty-log checks).
    """

    def __init__(self, memory: GuestMemoryLayout, num: int = 64, *, packed: bool = False, features: int = 0,
                 vring: FrontendVring | None = None, max_data: int = 1 << 16, max_segs: int = 8):
        self.memory = memory
        self.packed = bool(packed if vring is None else vring.packed)
        self.num = int(num if vring is None else vring.num)
        self.vring = vring
        num = self.num
        if vring is None:
            if self.packed:
                self.desc_gpa = memory.alloc(16 * num, _PAGE)
                self.avail_gpa = memory.alloc(4, 64)
                self.used_gpa = memory.alloc(4, 64)
            else:
                self.desc_gpa = memory.alloc(16 * num, _PAGE)
                self.avail_gpa = memory.alloc(6 + 2 * num, 64)
                self.used_gpa = memory.alloc(6 + 8 * num, _PAGE)
        else:
            self.desc_gpa, self.avail_gpa, self.used_gpa = vring.desc_gpa, vring.avail_gpa, vring.used_gpa
        feat = ring_feat_mask(features)
        d, a, u = self.device_addrs()
        if self.packed:
            self.vr = packed_vring_from_addrs(d, a, u, num)
            self.ds = packed_drv_state(num)
            packed_drv_init(self.vr, self.ds, num, feat)
        else:
            self.vr = split_vring_from_addrs(d, a, u, num)
            self.ds = split_drv_state(num)
            split_drv_init(self.vr, self.ds, num, feat)
        self.max_data = int(max_data)
        self.max_segs = int(max_segs)
        # per slot: header (16), status (1, padded to 64), indirect table, data
        self.slot_size = 64 + 64 + 16 * (max_segs + 2) + self.max_data
        self.slot_size = (self.slot_size + 63) & ~63
        self.slots_gpa = memory.alloc(num * self.slot_size, _PAGE)
        self.free = list(range(num - 1, -1, -1))
        self.kick_fd = -1 if vring is None else vring.kick_fd
        self._cookies = np.zeros(num, np.uint64)
        self._lens = np.zeros(num, np.uint32)
        self._chains: dict[int, tuple[list, bool]] = {}  # slot -> (segs, indirect)
        self.device_writes: set[int] = set()
        self.event_idx = bool(features >> VF.VIRTIO_RING_F_EVENT_IDX & 1)

    # -- addresses ------------------------------------------------------------------
    def device_addrs(self) -> tuple[int, int, int]:
        """Our host addresses of the ring's three areas (for an in-process device)."""
        m = self.memory
        return m.hva(self.desc_gpa), m.hva(self.avail_gpa), m.hva(self.used_gpa)

    def region_table(self) -> np.ndarray:
        """The region table an in-process device translates with."""
        return make_regions([(r.gpa, r.size, r.addr) for r in self.memory.regions])

    def hdr_gpa(self, slot: int) -> int:
        return self.slots_gpa + slot * self.slot_size

    def status_gpa(self, slot: int) -> int:
        return self.hdr_gpa(slot) + 64

    def table_gpa(self, slot: int) -> int:
        return self.hdr_gpa(slot) + 128

    def data_gpa(self, slot: int) -> int:
        return self.table_gpa(slot) + 16 * (self.max_segs + 2)

    def view(self, gpa: int, n: int) -> np.ndarray:
        return self.memory.view(gpa, n)

    # -- requests ---------------------------------------------------------------------
    def alloc_slot(self) -> int:
        if not self.free:
            raise RuntimeError("no free request slot (harvest first)")
        return self.free.pop()

    def write_header(self, slot: int, rtype: int, sector: int, reserved: int = 0) -> None:
        self.view(self.hdr_gpa(slot), REQ_HDR_SIZE)[:] = np.frombuffer(
            struct.pack("<IIQ", rtype, reserved, sector & (2**64 - 1)), np.uint8)

    def submit(self, rtype: int, sector: int = 0, data: bytes | None = None, read_len: int = 0, *,
               nsegs: int = 1, indirect: bool = False) -> int:
        """Add a request laid out as Linux does; returns its slot.

        ``data`` (OUT, DISCARD / WRITE_ZEROES segments) is device-readable;
        ``read_len`` bytes (IN, GET_ID) are device-writable.  The data goes
        in ``nsegs`` descriptors; ``indirect`` puts the chain in an indirect table.
        """
        slot = self.alloc_slot()
        self.write_header(slot, rtype, sector)
        segs = [(self.hdr_gpa(slot), REQ_HDR_SIZE, False)]
        n = len(data) if data is not None else int(read_len)
        if n > self.max_data:
            raise ValueError(f"{n} data bytes > max_data {self.max_data}")
        if data is not None:
            self.view(self.data_gpa(slot), n)[:] = np.frombuffer(bytes(data), np.uint8)
        elif n:
            self.view(self.data_gpa(slot), n)[:] = 0xA5  # stale bytes the device must overwrite
        if n:
            cuts = np.linspace(0, n, min(nsegs, n) + 1).astype(int)
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                segs.append((self.data_gpa(slot) + int(lo), int(hi - lo), data is None))
        segs.append((self.status_gpa(slot), 1, True))
        self.view(self.status_gpa(slot), 1)[0] = STATUS_UNSET
        self.add(segs, slot, indirect=indirect)
        return slot

    def add(self, segs, slot: int | None = None, *, indirect: bool = False) -> int:
        """Add the chain ``segs`` = [(gpa, len, device_writable)] as is; returns its slot (cookie)."""
        if slot is None:
            slot = self.alloc_slot()
        k = len(segs)
        gpa = np.array([s[0] for s in segs], np.uint64)
        ln = np.array([s[1] & 0xFFFFFFFF for s in segs], np.uint32)
        wr = np.array([1 if s[2] else 0 for s in segs], np.uint8)
        ind_gpa = ind_hva = 0
        if indirect:
            if k > self.max_segs + 2:
                raise ValueError("chain too long for the slot's indirect table")
            ind_gpa = self.table_gpa(slot)
            ind_hva = self.memory.hva(ind_gpa, 16 * k)
        if self.packed:
            r = packed_drv_add(self.vr, self.ds, slot, gpa, ln, wr, k, ind_gpa, ind_hva)
        else:
            r = split_drv_add(self.vr, self.ds, slot, gpa, ln, wr, k, ind_gpa, ind_hva)
        if r < 0:
            self.free.append(slot)
            raise RuntimeError("the ring has no room for the chain")
        self._chains[slot] = (list(segs), bool(indirect))
        return slot

    def publish(self) -> bool:
        """Make the added chains visible; returns whether the device wants a kick."""
        if self.packed:
            return bool(packed_drv_need_kick(self.vr, self.ds))
        return bool(split_drv_publish(self.vr, self.ds))

    def kick(self) -> bool:
        """:meth:`publish`, and write the kick eventfd when the device wants it (and there is one)."""
        need = self.publish()
        if need and self.kick_fd >= 0:
            os.eventfd_write(self.kick_fd, 1)
        return need

    def harvest(self) -> list[tuple[int, int]]:
        """The used chains: [(slot, used length)]; their slots become free."""
        slot = int(self.ds.state[PACKED_DRV_USED_IDX if self.packed else SPLIT_DRV_LAST_USED])
        if self.packed:
            n = packed_drv_get_used(self.vr, self.ds, self._cookies, self._lens, self.num)
        else:
            n = split_drv_get_used(self.vr, self.ds, self._cookies, self._lens, self.num)
        out = [(int(self._cookies[i]), int(self._lens[i])) for i in range(n)]
        self.free.extend(s for s, _ in out)
        self._note_device_writes(slot, out)
        return out

    def notify_area_pages(self) -> set[int]:
        """Pages of the fields the device writes when it asks for kicks or not."""
        return notify_area_pages(self.packed, self.used_gpa, self.num, self.event_idx)

    def _note_device_writes(self, slot: int, used) -> None:
        """The device wrote the first ``len - 1`` writable bytes and the status byte (the last one)."""
        ndescs = []
        for cookie, ln in used:
            segs, indirect = self._chains.pop(cookie, ([], False))
            writable = [(g, n) for g, n, w in segs if w and n]
            left = ln - 1
            for g, n in writable:
                if left > 0:
                    self.device_writes |= pages_of(g, min(n, left))
                    left -= n
            if writable and ln > 0:
                g, n = writable[-1]
                self.device_writes |= pages_of(g + n - 1, 1)
            ndescs.append(1 if indirect else len(segs))
        self.device_writes |= used_write_pages(self.packed, self.desc_gpa, self.used_gpa, self.num, slot, ndescs)

    def status(self, slot: int) -> int:
        return int(self.view(self.status_gpa(slot), 1)[0])

    def data(self, slot: int, n: int) -> bytes:
        return bytes(self.view(self.data_gpa(slot), n))

    def read_id(self, slot: int) -> bytes:
        return self.data(slot, VIRTIO_BLK_ID_BYTES)


# -----------------------------------------------------------------------------------
# The benchmark's driver loop: requests kept in flight against another process
# -----------------------------------------------------------------------------------

# drive state slots (int64)
DRIVE_NFREE = 0  # slots free (their numbers at free[:nfree])
DRIVE_SEQ = 1  # next block of a sequential run
DRIVE_RNG = 2  # xorshift64 state
DRIVE_DONE = 3  # requests completed
DRIVE_BAD = 4  # completed with a status other than OK
DRIVE_KICKS = 5  # kick eventfd writes
DRIVE_SLOTS = 8


@inline_kernel
def _xorshift(x):
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    return x


@loop_kernel
def drive_split(vr, ds, kick_fd, slots_gpa, slots_hva, slot_size, data_off, nbytes, rtype, nblocks, sequential,
                want, submit, st, free, sg_gpa, sg_len, sg_wr, cookies, lens):
    """Complete ``want`` requests on a split ring, keeping every free slot in flight (``submit``).

    Each request is ``rtype`` (IN or OUT) of ``nbytes`` at a random (or, with
    ``sequential``, the next) ``nbytes``-aligned block of ``nblocks``; its
    header, data and status live in slot ``s`` at ``slots_gpa + s * slot_size``
    (data at ``data_off``).  Kicks when the ring says the device wants one.
    Without ``submit`` it only harvests, until every slot is back (a drain).
    Counters and the free-slot stack persist in ``st`` / ``free`` across calls.
    Returns the requests completed by this call.
    """
    got = 0
    per = np.uint64(nbytes >> 9)
    size = np.uint64(slot_size)
    while got < want:
        if submit:
            added = False
            while st[DRIVE_NFREE] > 0:
                slot = free[st[DRIVE_NFREE] - 1]
                if sequential:
                    blk = np.uint64(st[DRIVE_SEQ] % nblocks)
                    st[DRIVE_SEQ] += 1
                else:
                    x = _xorshift(np.uint64(st[DRIVE_RNG]))
                    st[DRIVE_RNG] = np.int64(x >> np.uint64(1))
                    blk = x % np.uint64(nblocks)
                gpa = np.uint64(slots_gpa) + np.uint64(slot) * size
                hva = np.uint64(slots_hva) + np.uint64(slot) * size
                store_u32(hva, 0, rtype)
                store_u32(hva, 1, 0)
                store_u64(hva, 1, blk * per)
                store_u32(hva + np.uint64(64), 0, STATUS_UNSET)
                sg_gpa[0] = gpa
                sg_len[0] = REQ_HDR_SIZE
                sg_wr[0] = 0
                sg_gpa[1] = gpa + np.uint64(data_off)
                sg_len[1] = nbytes
                sg_wr[1] = 1 if rtype == VIRTIO_BLK_T_IN else 0
                sg_gpa[2] = gpa + np.uint64(64)
                sg_len[2] = 1
                sg_wr[2] = 1
                if split_drv_add(vr, ds, slot, sg_gpa, sg_len, sg_wr, 3, 0, 0) < 0:
                    break
                st[DRIVE_NFREE] -= 1
                added = True
            if added and split_drv_publish(vr, ds) and kick_fd >= 0:
                eventfd_signal(kick_fd)
                st[DRIVE_KICKS] += 1
        elif st[DRIVE_NFREE] == free.shape[0]:
            break
        n = split_drv_get_used(vr, ds, cookies, lens, cookies.shape[0])
        for i in range(n):
            slot = np.int64(cookies[i])
            if ld8(np.uint64(slots_hva) + np.uint64(slot) * size + np.uint64(64)) != 0:
                st[DRIVE_BAD] += 1
            free[st[DRIVE_NFREE]] = slot
            st[DRIVE_NFREE] += 1
        got += n
        st[DRIVE_DONE] += n
    return got


class RequestStream:
    """Requests of one kind kept in flight by :func:`drive_split` on a :class:`BlkDriver`'s split ring.

    ``depth`` slots of the driver are used (queue depth); ``rtype`` IN or OUT
    of ``nbytes`` per request over the first ``disk_bytes`` of the disk,
    random or ``sequential``.  :meth:`run` completes about ``n`` requests and
    returns how many; :meth:`drain` waits for the ones in flight.
    """

    def __init__(self, drv: BlkDriver, *, depth: int, rtype: int, nbytes: int, disk_bytes: int,
                 sequential: bool = False, seed: int = 0x9E3779B97F4A7C15):
        if drv.packed:
            raise ValueError("the driver loop drives split rings only")
        if nbytes % 512 or nbytes > drv.max_data:
            raise ValueError(f"request size {nbytes} must be whole sectors and at most {drv.max_data}")
        if depth > drv.num:
            raise ValueError(f"queue depth {depth} > ring size {drv.num}")
        self.drv, self.rtype, self.nbytes, self.sequential = drv, rtype, nbytes, sequential
        self.nblocks = disk_bytes // nbytes
        self.st = np.zeros(DRIVE_SLOTS, np.int64)
        self.st[DRIVE_NFREE] = depth
        self.st[DRIVE_RNG] = seed & 0x7FFFFFFFFFFFFFFF or 1
        self.free = np.array([drv.alloc_slot() for _ in range(depth)], np.int64)
        self.sg_gpa, self.sg_len, self.sg_wr = np.zeros(3, np.uint64), np.zeros(3, np.uint32), np.zeros(3, np.uint8)
        self.cookies, self.lens = np.zeros(depth, np.uint64), np.zeros(depth, np.uint32)
        self.data_off = drv.data_gpa(0) - drv.hdr_gpa(0)
        self.slots_hva = drv.memory.hva(drv.slots_gpa, drv.num * drv.slot_size)

    def _call(self, want: int, submit: bool) -> int:
        d = self.drv
        return int(drive_split(d.vr, d.ds, d.kick_fd, d.slots_gpa, self.slots_hva, d.slot_size, self.data_off,
                               self.nbytes, self.rtype, self.nblocks, self.sequential, want, submit, self.st,
                               self.free, self.sg_gpa, self.sg_len, self.sg_wr, self.cookies, self.lens))

    def run(self, n: int) -> int:
        return self._call(int(n), True)

    def drain(self) -> int:
        return self._call(1 << 62, False)

    @property
    def bad(self) -> int:
        return int(self.st[DRIVE_BAD])

    def close(self) -> None:
        """Give the slots back to the driver (after :meth:`drain`)."""
        self.drv.free.extend(int(s) for s in self.free[: self.st[DRIVE_NFREE]])
        self.st[DRIVE_NFREE] = 0
