"""A slow, obvious reference model of the packed virtqueue (virtio 1.1 §2.8), for tests only.

It mirrors the contract of :mod:`dataplane.rings.packed` in plain Python
objects — a ring of descriptor records, two event suppression structures,
guest memory as bytearrays, and the state of both sides — with no numpy, no
numba and no cleverness, so a test can run the same operations on the model
and on the kernels and compare every field after every step.

Deliberately independent choices where the kernels are clever:

* the driver keeps its outstanding buffers in an explicit submission-order
  list (the kernels derive the oldest from the free-id FIFO);
* the device keeps its pending used entries as a list of records;
* chains are walked descriptor by descriptor (no 4-descriptor batch).

The observable contract both must follow:

* ``push_used`` writes id and len into the ring at once, and the flags of
  every entry but the first since the last flush; ``flush`` writes the first
  entry's flags (so the whole batch appears at once).
* Errors are detected in walk order; the first one wins, except that a list
  longer than the queue is ``ERR_CHAIN_LOOP`` whatever came before.
* A chain whose elements do not fit in what is left of the burst's seg
  arrays ends the burst (it is taken next time) unless it is the first chain
  of the burst (then ``ERR_TOO_MANY_SEGS``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dataplane.rings.virtqueue import (
    ERR_ADDR,
    ERR_CHAIN_LOOP,
    ERR_DESC_INDEX,
    ERR_INDIRECT,
    ERR_LAYOUT,
    ERR_TOO_MANY_SEGS,
    FEAT_EVENT_IDX,
    FEAT_IN_ORDER,
    FEAT_INDIRECT,
    OK,
)

NEXT = 1
WRITE = 2
INDIRECT = 4
AVAIL = 1 << 7
USED = 1 << 15

EV_ENABLE = 0
EV_DISABLE = 1
EV_DESC = 2


def avail_flags(wrap):
    """AVAIL/USED bits of a descriptor the driver makes available in lap ``wrap``."""
    return AVAIL if wrap else USED


def used_flags(wrap):
    """AVAIL/USED bits of a descriptor the device marks used in lap ``wrap``."""
    return AVAIL | USED if wrap else 0


def is_avail(flags, wrap):
    return bool(flags & AVAIL) == bool(wrap) and bool(flags & USED) != bool(wrap)


def is_used(flags, wrap):
    return bool(flags & AVAIL) == bool(wrap) and bool(flags & USED) == bool(wrap)


def need_event(event, new, old):
    """The spec's vring_need_event, in 16-bit arithmetic."""
    return (new - event - 1) % 65536 < (new - old) % 65536


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


class GuestMemory:
    """Regions ``(gpa, size, hva)`` each backed by its own bytearray (created lazily up to ``size``)."""

    def __init__(self, rows):
        self.rows = [(int(g), int(s), int(h)) for g, s, h in rows]
        self.data = {}

    def translate(self, gpa, length):
        """Like regions.translate: the first region holding ``gpa`` must hold the whole range."""
        for g, s, h in self.rows:
            if g <= gpa < g + s:
                if gpa + length > g + s:
                    return 0
                return h + (gpa - g)
        return 0

    def _locate(self, gpa, length):
        for i, (g, s, h) in enumerate(self.rows):
            if g <= gpa and gpa + length <= g + s:
                buf = self.data.get(i)
                if buf is None:
                    buf = self.data[i] = bytearray()
                need = gpa - g + length
                if len(buf) < need:
                    buf.extend(bytes(need - len(buf)))
                return buf, gpa - g
        raise ValueError(f"model memory: {gpa:#x}+{length} not mapped")

    def read(self, gpa, length):
        buf, off = self._locate(gpa, length)
        return bytes(buf[off : off + length])

    def write(self, gpa, data):
        buf, off = self._locate(gpa, len(data))
        buf[off : off + len(data)] = data


def pack_desc(addr, length, buf_id, flags):
    return struct.pack("<QIHH", addr, length, buf_id, flags)


def unpack_desc(raw):
    return struct.unpack("<QIHH", raw)


# ---------------------------------------------------------------------------
# the shared ring
# ---------------------------------------------------------------------------


@dataclass
class Desc:
    addr: int = 0
    len: int = 0
    id: int = 0
    flags: int = 0


class Ring:
    def __init__(self, num):
        if not 1 <= num <= 32768:
            raise ValueError(num)
        self.num = num
        self.desc = [Desc() for _ in range(num)]
        self.driver_event = [0, 0]  # off_wrap, flags (written by the driver)
        self.device_event = [0, 0]  # off_wrap, flags (written by the device)


# ---------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------


@dataclass
class Chain:
    id: int
    ndesc: int
    status: int
    segs: list  # [(hva, len, write)]
    total: int


@dataclass
class Pending:
    slot: int
    wrap: int
    id: int
    len: int


class _Retry(Exception):
    pass


class Device:
    def __init__(self, ring, mem, features=0, last_avail=0, avail_wrap=1):
        self.ring = ring
        self.mem = mem
        self.features = features
        self.num = ring.num
        self.last_avail = last_avail
        self.avail_wrap = avail_wrap
        self.used_idx = last_avail  # published used position
        self.used_wrap = avail_wrap
        self.next_used = last_avail  # where the next pushed entry goes
        self.next_used_wrap = avail_wrap
        self.pending = []  # entries pushed since the last flush
        self.signalled = -1
        self.chains = 0
        self.used = 0
        self.errors = 0
        self.err = {}

    # -- fetch
    def fetch(self, max_chains, seg_capacity):
        out = []
        segs_used = 0
        while len(out) < max_chains:
            head = self.ring.desc[self.last_avail]
            if not is_avail(head.flags, self.avail_wrap):
                break
            try:
                chain = self._walk(segs_used, seg_capacity, first=not out)
            except _Retry:
                break
            if chain.status == OK:
                segs_used += len(chain.segs)
            else:
                self.errors += 1
                self.err[chain.status] = self.err.get(chain.status, 0) + 1
            out.append(chain)
            self.last_avail += chain.ndesc
            if self.last_avail >= self.num:
                self.last_avail -= self.num
                self.avail_wrap ^= 1
        self.chains += len(out)
        return out

    def _walk(self, segs_used, seg_capacity, first):
        status = OK
        segs = []
        seen_write = False
        slot = self.last_avail
        ndesc = 0

        def element(addr, length, writable):
            nonlocal status, seen_write
            if status != OK:
                return
            if writable:
                seen_write = True
            elif seen_write:
                status = ERR_LAYOUT
                return
            hva = self.mem.translate(addr, length)
            if hva == 0:
                status = ERR_ADDR
                return
            if segs_used + len(segs) >= seg_capacity:
                if not first:
                    raise _Retry()
                status = ERR_TOO_MANY_SEGS
                return
            segs.append((hva, length, 1 if writable else 0))

        while True:
            d = self.ring.desc[slot]
            ndesc += 1
            buf_id = d.id
            if d.flags & INDIRECT:
                if status == OK:
                    if not (self.features & FEAT_INDIRECT) or d.flags & NEXT or ndesc > 1:
                        status = ERR_INDIRECT
                    elif d.len == 0 or d.len % 16:
                        status = ERR_INDIRECT
                    elif self.mem.translate(d.addr, d.len) == 0:
                        status = ERR_INDIRECT
                    else:
                        for j in range(d.len // 16):
                            addr, length, _id, flags = unpack_desc(self.mem.read(d.addr + 16 * j, 16))
                            if flags & INDIRECT:
                                status = ERR_INDIRECT
                            else:
                                element(addr, length, flags & WRITE)
                            if status != OK:
                                break
            else:
                element(d.addr, d.len, d.flags & WRITE)
            if not d.flags & NEXT:
                break
            if ndesc >= self.num:
                status = ERR_CHAIN_LOOP
                break
            slot = (slot + 1) % self.num
        if status == OK and buf_id >= self.num:
            status = ERR_DESC_INDEX
        if status != OK:
            return Chain(buf_id, ndesc, status, [], 0)
        return Chain(buf_id, ndesc, status, segs, sum(s[1] for s in segs))

    # -- used
    def _write_entry(self, p, head):
        d = self.ring.desc[p.slot]
        d.id = p.id & 0xFFFF
        d.len = p.len & 0xFFFFFFFF
        if not head:
            d.flags = self._entry_flags(p)

    @staticmethod
    def _entry_flags(p):
        return used_flags(p.wrap) | (WRITE if p.len else 0)

    def push_used(self, buf_id, length, ndesc):
        p = Pending(self.next_used, self.next_used_wrap, buf_id, length)
        self.pending.append(p)
        self._write_entry(p, head=len(self.pending) == 1)
        self._advance_next_used(ndesc)

    def push_used_inorder(self, buf_id, length, ndesc):
        if not self.pending or not self.features & FEAT_IN_ORDER:
            return self.push_used(buf_id, length, ndesc)
        p = self.pending[-1]
        p.id, p.len = buf_id, length
        self._write_entry(p, head=len(self.pending) == 1)
        self._advance_next_used(ndesc)

    def _advance_next_used(self, ndesc):
        self.next_used += ndesc
        if self.next_used >= self.num:
            self.next_used -= self.num
            self.next_used_wrap ^= 1

    def flush(self):
        if not self.pending:
            return False
        head = self.pending[0]
        self.ring.desc[head.slot].flags = self._entry_flags(head)
        self.used += len(self.pending)
        self.pending = []
        self.used_idx, self.used_wrap = self.next_used, self.next_used_wrap
        old, new = self.signalled, self.used_idx
        self.signalled = new
        flags = self.ring.driver_event[1] & 3
        if flags == EV_DISABLE:
            return False
        if flags != EV_DESC or not self.features & FEAT_EVENT_IDX:
            return True
        if old < 0:
            return True
        if new <= old:
            old -= self.num
        off_wrap = self.ring.driver_event[0]
        off = off_wrap & 0x7FFF
        if (off_wrap >> 15) != self.used_wrap:
            off -= self.num
        return need_event(off, new, old)

    def enable_notify(self, enable):
        if not enable:
            self.ring.device_event[1] = EV_DISABLE
            return False
        if self.features & FEAT_EVENT_IDX:
            self.ring.device_event[0] = self.last_avail | (self.avail_wrap << 15)
            self.ring.device_event[1] = EV_DESC
        else:
            self.ring.device_event[1] = EV_ENABLE
        return is_avail(self.ring.desc[self.last_avail].flags, self.avail_wrap)

    def get_base(self):
        return self.last_avail | (self.avail_wrap << 15)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


@dataclass
class Outstanding:
    cookie: int
    ndesc: int


class Driver:
    def __init__(self, ring, mem, features=0, start=0):
        self.ring = ring
        self.mem = mem
        self.features = features
        self.num = ring.num
        self.avail_idx = start
        self.avail_wrap = 1
        self.used_idx = start
        self.used_wrap = 1
        self.num_free = self.num
        self.free_ids = list(range(self.num))  # FIFO
        self.outstanding = {}  # id -> Outstanding
        self.order = []  # outstanding ids in submission order
        self.num_added = 0
        self.inorder_skip = 0
        self.broken = False
        self.added = 0
        self.completed = 0
        self.bad_used = 0

    def add(self, cookie, segs, ind_gpa=0, indirect=False):
        """``segs`` = [(gpa, len, write)]; ``indirect``: table at ``ind_gpa``. Returns id or -1."""
        if self.broken or not segs:
            return -1
        need = 1 if indirect else len(segs)
        if self.num_free < need:
            return -1
        buf_id = self.free_ids.pop(0)
        self.outstanding[buf_id] = Outstanding(cookie, need)
        self.order.append(buf_id)
        self.num_free -= need
        self.num_added += need
        self.added += 1
        if indirect:
            for i, (gpa, length, w) in enumerate(segs):
                self.mem.write(ind_gpa + 16 * i, pack_desc(gpa, length, 0, WRITE if w else 0))
            d = self.ring.desc[self.avail_idx]
            d.addr, d.len, d.id = ind_gpa, 16 * len(segs), buf_id
            d.flags = INDIRECT | avail_flags(self.avail_wrap)
            self._advance_avail()
        else:
            for i, (gpa, length, w) in enumerate(segs):
                d = self.ring.desc[self.avail_idx]
                d.addr, d.len, d.id = gpa, length, buf_id
                d.flags = avail_flags(self.avail_wrap) | (WRITE if w else 0) | (NEXT if i + 1 < len(segs) else 0)
                self._advance_avail()
        return buf_id

    def _advance_avail(self):
        self.avail_idx += 1
        if self.avail_idx == self.num:
            self.avail_idx = 0
            self.avail_wrap ^= 1

    def need_kick(self):
        added, self.num_added = self.num_added, 0
        flags = self.ring.device_event[1] & 3
        if flags == EV_DISABLE:
            return False
        if flags != EV_DESC or not self.features & FEAT_EVENT_IDX:
            return True
        if added >= self.num:
            return True
        new = self.avail_idx
        old = new - added
        off_wrap = self.ring.device_event[0]
        off = off_wrap & 0x7FFF
        if (off_wrap >> 15) != self.avail_wrap:
            off -= self.num
        return need_event(off, new, old)

    def used_pending(self):
        return is_used(self.ring.desc[self.used_idx].flags, self.used_wrap)

    def _release(self, buf_id):
        o = self.outstanding.pop(buf_id)
        self.order.remove(buf_id)
        self.free_ids.append(buf_id)
        self.completed += 1
        return o

    def get_used(self, n):
        """Returns [(cookie, len)] of up to ``n`` completed buffers."""
        out = []
        if self.broken:
            return out
        while len(out) < n:
            d = self.ring.desc[self.used_idx]
            if not is_used(d.flags, self.used_wrap):
                break
            buf_id = d.id
            length = d.len if d.flags & WRITE else 0
            if buf_id >= self.num or buf_id not in self.outstanding:
                self.broken = True
                self.bad_used += 1
                break
            if self.features & FEAT_IN_ORDER:
                finished = False
                while len(out) < n:
                    oldest = self.order[0]
                    o = self._release(oldest)
                    out.append((o.cookie, length if oldest == buf_id else 0))
                    self.inorder_skip += o.ndesc
                    if oldest == buf_id:
                        finished = True
                        break
                if not finished:
                    break
                skip, self.inorder_skip = self.inorder_skip, 0
            else:
                o = self._release(buf_id)
                out.append((o.cookie, length))
                skip = o.ndesc
            self.num_free += skip
            self.used_idx += skip
            if self.used_idx >= self.num:
                self.used_idx -= self.num
                self.used_wrap ^= 1
        return out

    def enable_interrupt(self, enable):
        if not enable:
            self.ring.driver_event[1] = EV_DISABLE
            return False
        if self.features & FEAT_EVENT_IDX:
            self.ring.driver_event[0] = self.used_idx | (self.used_wrap << 15)
            self.ring.driver_event[1] = EV_DESC
        else:
            self.ring.driver_event[1] = EV_ENABLE
        return self.used_pending()


__all__ = [
    "GuestMemory",
    "Ring",
    "Desc",
    "Chain",
    "Device",
    "Driver",
    "pack_desc",
    "unpack_desc",
    "is_avail",
    "is_used",
    "need_event",
    "avail_flags",
    "used_flags",
    "FEAT_EVENT_IDX",
    "FEAT_IN_ORDER",
    "FEAT_INDIRECT",
]
