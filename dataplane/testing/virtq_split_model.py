"""A slow, obvious reference model of the split virtqueue, for tests only.

It mirrors :mod:`dataplane.rings.split` operation by operation, but keeps the
ring as Python fields (lists of ints) instead of shared memory, guest memory
as one ``bytearray`` per region, and does all index arithmetic with Python
ints modulo 2**16.  Its state lists use the same slot numbers as the numba
state arrays so a test can compare them whole.  Nothing here is fast and
nothing here is used by the dataplane.

Only *layout* data (slot numbers, flag bits, error codes) is shared with the
implementation; the logic is written out again, step by step, from the
virtio 1.1 text (§2.7).
"""

from __future__ import annotations

import struct

from dataplane.rings import split as S
from dataplane.rings import virtqueue as V

U16 = 1 << 16
U32 = 1 << 32


def need_event(event, new, old):
    """virtio: notify iff ``event`` lies in the window ``[old, new)`` (mod 2**16)."""
    return (new - event - 1) % U16 < (new - old) % U16


class Ring:
    """The three areas of a split ring as plain fields."""

    def __init__(self, num):
        self.num = num
        self.desc = [[0, 0, 0, 0] for _ in range(num)]  # addr, len, flags, next
        self.avail_flags = 0
        self.avail_idx = 0
        self.avail_ring = [0] * num
        self.used_event = 0
        self.used_flags = 0
        self.used_idx = 0
        self.used_ring = [[0, 0] for _ in range(num)]  # id, len
        self.avail_event = 0

    @classmethod
    def from_views(cls, vr, num):
        """Decodes real ring memory (a SplitVring) into fields, independently of the kernels."""
        r = cls(num)
        raw = bytes(vr.desc_u64[: 2 * num].tobytes())
        for i in range(num):
            r.desc[i] = list(struct.unpack_from("<QIHH", raw, 16 * i))
        av = [int(x) for x in vr.avail[: 3 + num]]
        r.avail_flags, r.avail_idx = av[0], av[1]
        r.avail_ring = av[2 : 2 + num]
        r.used_event = av[2 + num]
        u16 = [int(x) for x in vr.used_u16[: 3 + 4 * num]]
        r.used_flags, r.used_idx = u16[0], u16[1]
        r.avail_event = u16[2 + 4 * num]
        u32 = [int(x) for x in vr.used_u32[: 1 + 2 * num]]
        r.used_ring = [[u32[1 + 2 * i], u32[2 + 2 * i]] for i in range(num)]
        return r

    def fields(self):
        return {
            "desc": self.desc,
            "avail_flags": self.avail_flags,
            "avail_idx": self.avail_idx,
            "avail_ring": self.avail_ring,
            "used_event": self.used_event,
            "used_flags": self.used_flags,
            "used_idx": self.used_idx,
            "used_ring": self.used_ring,
            "avail_event": self.avail_event,
        }


class Memory:
    """Guest memory: regions ``(gpa, length, hva)`` each backed by a bytearray."""

    def __init__(self, rows, contents=None):
        self.rows = [(int(g), int(n), int(h)) for g, n, h in rows]
        self.data = []
        for i, (_, n, _) in enumerate(self.rows):
            self.data.append(bytearray(contents[i]) if contents is not None else bytearray(n))

    def translate(self, gpa, length):
        for gstart, size, hva in self.rows:
            if gstart <= gpa < gstart + size:
                if gpa + length > gstart + size:
                    return 0
                return hva + (gpa - gstart)
        return 0

    def _locate(self, gpa, length):
        for i, (gstart, size, _) in enumerate(self.rows):
            if gstart <= gpa and gpa + length <= gstart + size:
                return i, gpa - gstart
        raise ValueError(f"model memory: {gpa:#x}+{length} not mapped")

    def read(self, gpa, length):
        i, off = self._locate(gpa, length)
        return bytes(self.data[i][off : off + length])

    def write(self, gpa, data):
        i, off = self._locate(gpa, len(data))
        self.data[i][off : off + len(data)] = data


# ---------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------


class Chain:
    def __init__(self, head, ndesc, status, segs, total):
        self.head = head
        self.ndesc = ndesc
        self.status = status
        self.segs = segs  # [(hva, len, write)]
        self.total = total

    def __repr__(self):
        return f"Chain(head={self.head}, ndesc={self.ndesc}, status={self.status}, segs={self.segs}, total={self.total})"


class _Fail(Exception):
    def __init__(self, code):
        self.code = code


class DeviceModel:
    def __init__(self, ring, mem, num, features=0, base=0):
        self.ring = ring
        self.mem = mem
        self.num = num
        self.s = [0] * (S.SPLIT_DEV_SHADOW_BASE + 2 * num)
        self.s[V.STATE_SIZE] = num
        self.s[V.STATE_FEATURES] = features
        self.set_base(base)

    # -- control ----------------------------------------------------------
    def set_base(self, idx):
        idx %= U16
        self.s[V.STATE_LAST_AVAIL] = idx
        self.s[V.STATE_LAST_USED] = idx
        self.s[V.STATE_SIGNALLED_USED] = idx
        self.s[S.SPLIT_DEV_SIGNALLED_VALID] = 0
        self.s[V.STATE_SHADOW_N] = 0
        self.s[V.STATE_BROKEN] = 0

    def get_base(self):
        return self.s[V.STATE_LAST_AVAIL]

    def _count_error(self, code):
        self.s[V.STATE_ERRORS] += 1
        self.s[V.STATE_ERR_BASE + code] += 1

    def avail_count(self):
        if self.s[V.STATE_BROKEN]:
            return 0
        n = (self.ring.avail_idx - self.s[V.STATE_LAST_AVAIL]) % U16
        return 0 if n > self.num else n

    # -- fetch --------------------------------------------------------------
    def _buffer(self, addr, length, flags, ctx, room):
        if flags & V.VRING_DESC_F_WRITE:
            ctx["seen_write"] = True
        elif ctx["seen_write"]:
            raise _Fail(V.ERR_LAYOUT)
        if len(ctx["segs"]) >= room:
            raise _Fail(V.ERR_TOO_MANY_SEGS)
        hva = self.mem.translate(addr, length)
        if hva == 0:
            raise _Fail(V.ERR_ADDR)
        ctx["segs"].append((hva, length, 1 if flags & V.VRING_DESC_F_WRITE else 0))
        ctx["total"] += length

    def _walk(self, head, room):
        ctx = {"segs": [], "total": 0, "seen_write": False, "ndesc": 0}
        try:
            idx = head
            while True:
                if idx >= self.num:
                    raise _Fail(V.ERR_DESC_INDEX)
                ctx["ndesc"] += 1
                if ctx["ndesc"] > self.num:
                    raise _Fail(V.ERR_CHAIN_LOOP)
                addr, length, flags, nxt = self.ring.desc[idx]
                if flags & V.VRING_DESC_F_INDIRECT:
                    self._walk_table(addr, length, flags, ctx, room)
                    break
                self._buffer(addr, length, flags, ctx, room)
                if not flags & V.VRING_DESC_F_NEXT:
                    break
                idx = nxt
        except _Fail as f:
            return Chain(head, ctx["ndesc"], f.code, [], 0)
        return Chain(head, ctx["ndesc"], V.OK, ctx["segs"], ctx["total"])

    def _walk_table(self, addr, length, flags, ctx, room):
        if flags & V.VRING_DESC_F_NEXT:
            raise _Fail(V.ERR_INDIRECT)
        if not self.s[V.STATE_FEATURES] & V.FEAT_INDIRECT:
            raise _Fail(V.ERR_INDIRECT)
        if length == 0 or length % 16:
            raise _Fail(V.ERR_INDIRECT)
        if self.mem.translate(addr, length) == 0:
            raise _Fail(V.ERR_INDIRECT)
        count = length // 16
        j = 0
        visited = 0
        while True:
            if j >= count:
                raise _Fail(V.ERR_DESC_INDEX)
            visited += 1
            if visited > count:
                raise _Fail(V.ERR_CHAIN_LOOP)
            taddr, tlen, tflags, tnext = struct.unpack("<QIHH", self.mem.read(addr + 16 * j, 16))
            if tflags & V.VRING_DESC_F_INDIRECT:
                raise _Fail(V.ERR_INDIRECT)
            self._buffer(taddr, tlen, tflags, ctx, room)
            if not tflags & V.VRING_DESC_F_NEXT:
                return
            j = tnext

    def fetch(self, max_chains, chain_room, seg_room):
        """Returns the list of chains fetched (same rules as split_dev_fetch)."""
        if self.s[V.STATE_BROKEN]:
            return []
        last = self.s[V.STATE_LAST_AVAIL]
        n = (self.ring.avail_idx - last) % U16
        if n == 0:
            return []
        if n > self.num:
            self.s[V.STATE_BROKEN] = 1
            self._count_error(V.ERR_AVAIL_IDX)
            return []
        n = min(n, max_chains, chain_room)
        out = []
        used_segs = 0
        for c in range(n):
            head = self.ring.avail_ring[(last + c) % self.num]
            ch = self._walk(head, seg_room - used_segs)
            if ch.status == V.ERR_TOO_MANY_SEGS and used_segs > 0:
                break
            if ch.status != V.OK:
                self._count_error(ch.status)
            used_segs += len(ch.segs)
            ch.seg_start = used_segs - len(ch.segs)
            out.append(ch)
        self.s[V.STATE_LAST_AVAIL] = (last + len(out)) % U16
        self.s[V.STATE_CHAINS] += len(out)
        return out

    # -- used ---------------------------------------------------------------
    def _write_shadow(self):
        k = self.s[V.STATE_SHADOW_N]
        if k == 0:
            return
        u = self.s[V.STATE_LAST_USED]
        done = 0
        for e in range(k):
            word = self.s[S.SPLIT_DEV_SHADOW_BASE + 2 * e]
            length = self.s[S.SPLIT_DEV_SHADOW_BASE + 2 * e + 1]
            self.ring.used_ring[u % self.num] = [word % U32, length]
            u += word >> 32
            done += word >> 32
        self.ring.used_idx = u % U16
        self.s[V.STATE_LAST_USED] = u % U16
        self.s[V.STATE_USED] += done
        self.s[V.STATE_SHADOW_N] = 0

    def _shadow_add(self, head, length, count):
        k = self.s[V.STATE_SHADOW_N]
        if k >= self.num:
            self._write_shadow()
            k = 0
        self.s[S.SPLIT_DEV_SHADOW_BASE + 2 * k] = (head % U32) | (count << 32)
        self.s[S.SPLIT_DEV_SHADOW_BASE + 2 * k + 1] = length % U32
        self.s[V.STATE_SHADOW_N] = k + 1

    def push_used(self, head, length):
        self._shadow_add(head, length, 1)

    def push_used_inorder(self, head, length, count):
        if count > 0:
            self._shadow_add(head, length, count)

    def flush_used(self):
        self._write_shadow()
        new = self.s[V.STATE_LAST_USED]
        old = self.s[V.STATE_SIGNALLED_USED]
        valid = self.s[S.SPLIT_DEV_SIGNALLED_VALID]
        if new == old:
            return False
        self.s[V.STATE_SIGNALLED_USED] = new
        self.s[S.SPLIT_DEV_SIGNALLED_VALID] = 1
        if self.s[V.STATE_FEATURES] & V.FEAT_EVENT_IDX:
            if not valid:
                return True
            return need_event(self.ring.used_event, new, old)
        return not (self.ring.avail_flags & V.VRING_AVAIL_F_NO_INTERRUPT)

    def enable_notify(self, enable):
        if self.s[V.STATE_FEATURES] & V.FEAT_EVENT_IDX:
            if enable:
                self.ring.avail_event = self.s[V.STATE_LAST_AVAIL]
        elif enable:
            self.ring.used_flags &= ~V.VRING_USED_F_NO_NOTIFY
        else:
            self.ring.used_flags |= V.VRING_USED_F_NO_NOTIFY
        if not enable:
            return False
        return self.avail_count() != 0


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


class DriverModel:
    def __init__(self, ring, mem, num, features=0):
        self.ring = ring
        self.mem = mem
        self.num = num
        # the driver owns the ring: init zeroes it
        fresh = Ring(num)
        ring.__dict__.update(fresh.__dict__)
        self.s = [0] * S.DRV_SLOTS
        self.s[S.DRV_SIZE] = num
        self.s[S.DRV_FEATURES] = features
        self.s[S.DRV_NUM_FREE] = num
        self.s[S.DRV_BATCH_ID] = -1
        self.s[S.DRV_INTR_ENABLED] = 1
        self.cookie = [0] * num
        self.ndesc = [0] * num
        self.wlen = [0] * num
        self.dnext = [(i + 1) % num for i in range(num)]

    @property
    def in_order(self):
        return bool(self.s[S.DRV_FEATURES] & V.FEAT_IN_ORDER)

    def add(self, cookie, segs, ind_gpa=0):
        """segs: [(gpa, len, write)]; returns head or -1."""
        s = self.s
        nseg = len(segs)
        if nseg < 1 or s[S.DRV_BROKEN]:
            return -1
        if ind_gpa and not s[S.DRV_FEATURES] & V.FEAT_INDIRECT:
            return -1
        need = 1 if ind_gpa else nseg
        if need > s[S.DRV_NUM_FREE]:
            return -1
        head = s[S.DRV_FREE_HEAD]
        wl = 0
        for _, length, write in segs:
            if write:
                wl += length
        if ind_gpa:
            table = b""
            for j, (gpa, length, write) in enumerate(segs):
                more = j < nseg - 1
                flags = (V.VRING_DESC_F_NEXT if more else 0) | (V.VRING_DESC_F_WRITE if write else 0)
                table += struct.pack("<QIHH", gpa, length, flags, j + 1 if more else 0)
            self.mem.write(ind_gpa, table)
            self.ring.desc[head] = [ind_gpa, 16 * nseg, V.VRING_DESC_F_INDIRECT, self.dnext[head]]
            last = head
        else:
            i = head
            for j, (gpa, length, write) in enumerate(segs):
                more = j < nseg - 1
                flags = (V.VRING_DESC_F_NEXT if more else 0) | (V.VRING_DESC_F_WRITE if write else 0)
                self.ring.desc[i] = [gpa, length, flags, self.dnext[i]]
                last = i
                i = self.dnext[i]
        s[S.DRV_FREE_HEAD] = self.dnext[last]
        s[S.DRV_NUM_FREE] -= need
        self.cookie[head] = cookie
        self.ndesc[head] = need
        self.wlen[head] = min(wl, U32 - 1)
        self.ring.avail_ring[s[S.DRV_AVAIL_IDX] % self.num] = head
        s[S.DRV_AVAIL_IDX] = (s[S.DRV_AVAIL_IDX] + 1) % U16
        s[S.DRV_ADDED] += 1
        return head

    def publish(self):
        s = self.s
        new, old = s[S.DRV_AVAIL_IDX], s[S.DRV_KICKED_AVAIL]
        if new == old:
            return False
        self.ring.avail_idx = new
        s[S.DRV_KICKED_AVAIL] = new
        if s[S.DRV_FEATURES] & V.FEAT_EVENT_IDX:
            return need_event(self.ring.avail_event, new, old)
        return not (self.ring.used_flags & V.VRING_USED_F_NO_NOTIFY)

    def _broken(self):
        self.s[S.DRV_BROKEN] = 1
        self.s[S.DRV_BAD_USED] += 1

    def get_used(self, n):
        """Returns [(cookie, len)] for up to n used chains."""
        s = self.s
        if s[S.DRV_BROKEN]:
            return []
        last = s[S.DRV_LAST_USED]
        pending = (self.ring.used_idx - last) % U16
        if pending == 0:
            return []
        if pending > self.num:
            self._broken()
            return []
        n = min(n, pending)
        out = []
        while len(out) < n:
            slot = (last + len(out)) % self.num
            if self.in_order:
                if s[S.DRV_BATCH_ID] < 0:
                    bid, blen = self.ring.used_ring[slot]
                    if bid >= self.num or self.ndesc[bid] == 0:
                        self._broken()
                        break
                    s[S.DRV_BATCH_ID], s[S.DRV_BATCH_LEN] = bid, blen
                if s[S.DRV_NUM_FREE] == self.num:
                    self._broken()
                    break
                head = s[S.DRV_OLDEST]
                if head == s[S.DRV_BATCH_ID]:
                    length = s[S.DRV_BATCH_LEN]
                    s[S.DRV_BATCH_ID] = -1
                else:
                    length = self.wlen[head]
                out.append((self.cookie[head], length))
                nd = self.ndesc[head]
                self.ndesc[head] = 0
                s[S.DRV_NUM_FREE] += nd
                s[S.DRV_OLDEST] = (head + nd) % self.num
            else:
                head, length = self.used_ring_entry(slot)
                if head >= self.num or self.ndesc[head] == 0:
                    self._broken()
                    break
                out.append((self.cookie[head], length))
                # return the chain to the front of the free list
                nd = self.ndesc[head]
                tail = head
                for _ in range(nd - 1):
                    tail = self.dnext[tail]
                self.dnext[tail] = s[S.DRV_FREE_HEAD]
                s[S.DRV_FREE_HEAD] = head
                s[S.DRV_NUM_FREE] += nd
                self.ndesc[head] = 0
        s[S.DRV_LAST_USED] = (last + len(out)) % U16
        s[S.DRV_COMPLETED] += len(out)
        return out

    def used_ring_entry(self, slot):
        return self.ring.used_ring[slot]

    def enable_interrupt(self, enable):
        s = self.s
        if s[S.DRV_FEATURES] & V.FEAT_EVENT_IDX:
            if enable:
                self.ring.used_event = s[S.DRV_LAST_USED]
        elif enable:
            self.ring.avail_flags &= ~V.VRING_AVAIL_F_NO_INTERRUPT
        else:
            self.ring.avail_flags |= V.VRING_AVAIL_F_NO_INTERRUPT
        s[S.DRV_INTR_ENABLED] = 1 if enable else 0
        if not enable:
            return False
        return (self.ring.used_idx - s[S.DRV_LAST_USED]) % U16 != 0
