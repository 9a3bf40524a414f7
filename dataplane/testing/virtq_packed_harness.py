"""Runs the packed-ring kernels and the reference model side by side and compares everything.

Used by tests/rings/test_packed*.py.
"""

from __future__ import annotations

import numpy as np

from dataplane.rings.packed import (
    DRV_ADDED,
    DRV_AVAIL_IDX,
    DRV_AVAIL_WRAP,
    DRV_BAD_USED,
    DRV_BROKEN,
    DRV_COMPLETED,
    DRV_FREE_COUNT,
    DRV_FREE_HEAD,
    DRV_INORDER_SKIP,
    DRV_NUM_ADDED,
    DRV_NUM_FREE,
    DRV_USED_IDX,
    DRV_USED_WRAP,
    PACKED_DEV_SHADOW_IDX,
    PACKED_DEV_SHADOW_WRAP,
    PACKED_FEAT_NO_BATCH,
    packed_dev_enable_notify,
    packed_dev_fetch,
    packed_dev_flush_used,
    packed_dev_push_used,
    packed_dev_push_used_inorder,
    packed_dev_set_base,
    packed_dev_state,
    packed_drv_add,
    packed_drv_add1,
    packed_drv_enable_interrupt,
    packed_drv_get_used,
    packed_drv_init,
    packed_drv_need_kick,
    packed_drv_state,
    packed_vring_alloc,
)
from dataplane.rings.regions import make_regions
from dataplane.rings.virtqueue import (
    STATE_AVAIL_WRAP,
    STATE_CHAINS,
    STATE_ERR_BASE,
    STATE_ERRORS,
    STATE_LAST_AVAIL,
    STATE_LAST_USED,
    STATE_SHADOW_N,
    STATE_SIGNALLED_USED,
    STATE_USED,
    STATE_USED_WRAP,
    N_ERR,
    Chains,
    make_chains,
)
from dataplane.testing import virtq_packed_model as M

DATA_GPA = 0x10_0000
DATA_SIZE = 1 << 20
TBL_GPA = 0x4000_0000
MAXSEG = 8  # entries per driver-built indirect table


def aligned(nbytes, align=4096):
    raw = np.zeros(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + nbytes]


class Pair:
    """One ring driven by both the kernels and the model."""

    def __init__(self, num, features=0, start=0, no_batch=False, chain_cap=64, seg_cap=512, extra_rows=()):
        self.num = num
        self.features = features
        self.buf, self.vr = packed_vring_alloc(num)
        self.ds = packed_drv_state(num)
        packed_drv_init(self.vr, self.ds, num, features)
        self.st = packed_dev_state(num, features | (PACKED_FEAT_NO_BATCH if no_batch else 0))
        self.data = aligned(DATA_SIZE)
        self.tables = aligned(num * MAXSEG * 16 + 4096)
        rows = [
            (DATA_GPA, DATA_SIZE, self.data.ctypes.data),
            (TBL_GPA, self.tables.nbytes, self.tables.ctypes.data),
            *extra_rows,
        ]
        self.regions = make_regions(rows)
        self.mem = M.GuestMemory(rows)
        self.ring = M.Ring(num)
        self.dev = M.Device(self.ring, self.mem, features, start, 1)
        self.drv = M.Driver(self.ring, self.mem, features, start)
        if start:
            # As if both sides had run `start` slots: earlier slots hold lap-1 used descriptors.
            for i in range(start):
                self.vr.desc_u16[8 * i + 7] = M.AVAIL | M.USED
                self.ring.desc[i].flags = M.AVAIL | M.USED
            s = self.ds.state
            s[DRV_AVAIL_IDX] = s[DRV_USED_IDX] = start
            packed_dev_set_base(self.st, start | 0x8000)
        self.chains = make_chains(chain_cap, seg_cap)
        self.inflight = []  # [(id, ndesc)] fetched, not yet completed, in fetch order
        self.table_of = {}  # cookie -> table slot
        self.free_tables = list(range(num))
        self.next_cookie = 1
        self.out_cookies = np.zeros(4096, np.uint64)
        self.out_lens = np.zeros(4096, np.uint32)

    # ------------------------------------------------------------------ ops
    def add(self, segs, indirect=False):
        """segs = [(gpa, len, write)].  Returns the id (same on both sides)."""
        cookie = self.next_cookie
        self.next_cookie += 1
        ind_gpa = ind_hva = 0
        use_ind = indirect and self.free_tables and len(segs) <= MAXSEG
        if use_ind:
            slot = self.free_tables[-1]
            ind_gpa = TBL_GPA + slot * MAXSEG * 16
            ind_hva = self.tables.ctypes.data + slot * MAXSEG * 16
        if len(segs) == 1 and not use_ind and segs[0][2] in (0, 1):
            k = packed_drv_add1(self.vr, self.ds, cookie, np.uint64(segs[0][0]), segs[0][1], segs[0][2])
        else:
            gpa = np.array([s[0] for s in segs] or [0], np.uint64)
            ln = np.array([s[1] for s in segs] or [0], np.uint32)
            wr = np.array([s[2] for s in segs] or [0], np.uint8)
            k = packed_drv_add(self.vr, self.ds, cookie, gpa, ln, wr, len(segs), ind_gpa, ind_hva)
        m = self.drv.add(cookie, segs, ind_gpa, use_ind)
        assert k == m, f"add: kernel id {k} model id {m}"
        if k >= 0 and use_ind:
            self.table_of[cookie] = self.free_tables.pop()
        return k

    def kick(self):
        k = bool(packed_drv_need_kick(self.vr, self.ds))
        m = self.drv.need_kick()
        assert k == m, f"need_kick: kernel {k} model {m}"
        return k

    def fetch(self, max_chains=64, seg_cap=None):
        ch = self.chains
        if seg_cap is not None:
            ch = Chains(*(a[:seg_cap] if name.startswith("seg_") and name not in ("seg_start", "seg_count") else a for name, a in zip(Chains._fields, ch)))
        n = packed_dev_fetch(self.vr, self.st, self.regions, ch, max_chains)
        mc = self.dev.fetch(min(max_chains, ch.head.shape[0]), ch.seg_addr.shape[0])
        got = kernel_chains(ch, n)
        want = [(c.id, c.ndesc, c.status, c.segs, c.total) for c in mc]
        assert got == want, f"fetch:\n kernel {got}\n model  {want}"
        self.inflight += [(c.id, c.ndesc) for c in mc]
        return mc

    def push(self, buf_id, length, ndesc, inorder=False):
        if inorder:
            packed_dev_push_used_inorder(self.vr, self.st, buf_id, length, ndesc)
            self.dev.push_used_inorder(buf_id, length, ndesc)
        else:
            packed_dev_push_used(self.vr, self.st, buf_id, length, ndesc)
            self.dev.push_used(buf_id, length, ndesc)

    def flush(self):
        k = bool(packed_dev_flush_used(self.vr, self.st))
        m = self.dev.flush()
        assert k == m, f"flush: kernel {k} model {m}"
        return k

    def harvest(self, n):
        k = packed_drv_get_used(self.vr, self.ds, self.out_cookies, self.out_lens, n)
        got = [(int(self.out_cookies[i]), int(self.out_lens[i])) for i in range(k)]
        want = self.drv.get_used(n)
        assert got == want, f"get_used:\n kernel {got}\n model  {want}"
        for cookie, _ in got:
            slot = self.table_of.pop(cookie, None)
            if slot is not None:
                self.free_tables.append(slot)
        return got

    def intr(self, enable):
        k = bool(packed_drv_enable_interrupt(self.vr, self.ds, enable))
        m = self.drv.enable_interrupt(enable)
        assert k == m, f"enable_interrupt: kernel {k} model {m}"
        return k

    def notify(self, enable):
        k = bool(packed_dev_enable_notify(self.vr, self.st, enable))
        m = self.dev.enable_notify(enable)
        assert k == m, f"enable_notify: kernel {k} model {m}"
        return k

    def complete(self, picks, lengths, inorder_merge=False):
        """Completes inflight entries at positions ``picks`` (in that order)."""
        chosen = [self.inflight[i] for i in picks]
        for i in sorted(picks, reverse=True):
            del self.inflight[i]
        for (buf_id, nd), ln in zip(chosen, lengths):
            self.push(buf_id, ln, nd, inorder_merge)

    def set_dev_base(self, slot, wrap):
        """Moves the device (both sides of the comparison) to ``slot`` in lap ``wrap``, nothing in flight."""
        packed_dev_set_base(self.st, slot | (wrap << 15))
        d = self.dev
        d.last_avail = d.used_idx = d.next_used = slot
        d.avail_wrap = d.used_wrap = d.next_used_wrap = wrap
        d.pending = []
        d.signalled = -1
        self.inflight = []

    # ---------------------------------------------------------------- raw writes (hostile rings)
    def write_desc(self, slot, addr, length, buf_id, flags):
        self.vr.desc_u64[2 * slot] = addr
        self.vr.desc_u32[4 * slot + 2] = length
        self.vr.desc_u16[8 * slot + 6] = buf_id
        self.vr.desc_u16[8 * slot + 7] = flags
        d = self.ring.desc[slot]
        d.addr, d.len, d.id, d.flags = addr, length, buf_id, flags

    def write_table(self, gpa, entries):
        """Writes raw packed descriptors [(addr, len, id, flags)] at ``gpa`` in the tables region."""
        raw = b"".join(M.pack_desc(*e) for e in entries)
        off = gpa - TBL_GPA
        self.tables[off : off + len(raw)] = np.frombuffer(raw, np.uint8)
        self.mem.write(gpa, raw)

    # ------------------------------------------------------------------ compare
    def check(self):
        v = self.vr
        num = self.num
        ring = self.ring
        assert list(v.desc_u64[0::2]) == [d.addr for d in ring.desc], "desc.addr differs"
        assert list(v.desc_u32[2::4]) == [d.len for d in ring.desc], "desc.len differs"
        assert list(v.desc_u16[6::8]) == [d.id for d in ring.desc], "desc.id differs"
        assert list(v.desc_u16[7::8]) == [d.flags for d in ring.desc], "desc.flags differs"
        assert list(v.driver_event) == ring.driver_event, "driver event area differs"
        assert list(v.device_event) == ring.device_event, "device event area differs"
        # device
        st, dev = self.st, self.dev
        want = {
            STATE_LAST_AVAIL: dev.last_avail,
            STATE_AVAIL_WRAP: dev.avail_wrap,
            STATE_LAST_USED: dev.used_idx,
            STATE_USED_WRAP: dev.used_wrap,
            PACKED_DEV_SHADOW_IDX: dev.next_used,
            PACKED_DEV_SHADOW_WRAP: dev.next_used_wrap,
            STATE_SHADOW_N: len(dev.pending),
            STATE_SIGNALLED_USED: dev.signalled,
            STATE_CHAINS: dev.chains,
            STATE_USED: dev.used,
            STATE_ERRORS: dev.errors,
        }
        for code in range(1, N_ERR):
            want[STATE_ERR_BASE + code] = dev.err.get(code, 0)
        got = {k: int(st[k]) for k in want}
        assert got == want, f"device state:\n kernel {got}\n model  {want}"
        # driver
        s, drv = self.ds.state, self.drv
        want = {
            DRV_AVAIL_IDX: drv.avail_idx,
            DRV_AVAIL_WRAP: drv.avail_wrap,
            DRV_USED_IDX: drv.used_idx,
            DRV_USED_WRAP: drv.used_wrap,
            DRV_NUM_FREE: drv.num_free,
            DRV_FREE_COUNT: len(drv.free_ids),
            DRV_NUM_ADDED: drv.num_added,
            DRV_INORDER_SKIP: drv.inorder_skip,
            DRV_BROKEN: int(drv.broken),
            DRV_ADDED: drv.added,
            DRV_COMPLETED: drv.completed,
            DRV_BAD_USED: drv.bad_used,
        }
        got = {k: int(s[k]) for k in want}
        assert got == want, f"driver state:\n kernel {got}\n model  {want}"
        h = int(s[DRV_FREE_HEAD])
        fifo = [int(self.ds.free_ids[(h + i) % num]) for i in range(int(s[DRV_FREE_COUNT]))]
        assert fifo == drv.free_ids, "driver free-id FIFO differs"
        for i in range(num):
            o = drv.outstanding.get(i)
            assert int(self.ds.ndesc[i]) == (o.ndesc if o else 0), f"ndesc[{i}] differs"
            if o:
                assert int(self.ds.cookie[i]) == o.cookie, f"cookie[{i}] differs"
        # indirect tables written by the driver
        assert bytes(self.tables) == self.mem.read(TBL_GPA, self.tables.nbytes), "indirect tables differ"


def kernel_chains(ch, n):
    out = []
    for c in range(n):
        s0, k = int(ch.seg_start[c]), int(ch.seg_count[c])
        segs = [(int(ch.seg_addr[s]), int(ch.seg_len[s]), int(ch.seg_write[s])) for s in range(s0, s0 + k)]
        out.append((int(ch.head[c]), int(ch.ndesc[c]), int(ch.status[c]), segs, int(ch.total_len[c])))
    return out
