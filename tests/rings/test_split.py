"""Split virtqueue kernels: layout, differential tests against the reference model,
hostile rings, notification suppression."""

from __future__ import annotations

import os
import pickle
import struct
import traceback

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dataplane.rings import split as S
from dataplane.rings import virtqueue as V
from dataplane.rings.regions import make_regions
from dataplane.rings.split import (
    split_dev_avail_count,
    split_dev_enable_notify,
    split_dev_fetch,
    split_dev_flush_used,
    split_dev_get_base,
    split_dev_push_used,
    split_dev_push_used_inorder,
    split_dev_set_base,
    split_dev_state,
    split_dev_sync_from_used,
    split_drv_add,
    split_drv_add1,
    split_drv_enable_interrupt,
    split_drv_get_used,
    split_drv_init,
    split_drv_publish,
    split_drv_state,
    split_layout,
    split_vring_from_addrs,
    split_vring_from_buffer,
)
from dataplane.testing import virtq_split_model as M

FEATS_ALL = V.FEAT_EVENT_IDX | V.FEAT_IN_ORDER | V.FEAT_INDIRECT
DATA_GPA = 0x1000_0000  # test memory region
TABLE_OFF = 0x8000  # indirect tables live from here in the region
TABLE_SLOT = 16 * 16  # room for 16 entries per table
MAX_CHAIN_SEGS = 6
MEM_SIZE = TABLE_OFF + 1024 * TABLE_SLOT


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def make_ring(num, pad=0):
    lay = split_layout(num)
    buf = np.zeros(lay.total_size + pad, np.uint8)
    return buf, split_vring_from_buffer(buf, num)


def u64(*xs):
    return np.array(xs, np.uint64)


def set_desc(vr, i, addr, length, flags=0, nxt=0):
    vr.desc_u64[2 * i] = addr
    vr.desc_u32[4 * i + 2] = length
    vr.desc_u16[8 * i + 6] = flags
    vr.desc_u16[8 * i + 7] = nxt


def make_avail(vr, num, heads, start=0):
    for k, h in enumerate(heads):
        vr.avail[2 + (start + k) % num] = h
    vr.avail[1] = (start + len(heads)) & 0xFFFF


def chains_of(ch, n):
    out = []
    for c in range(n):
        s0, k = int(ch.seg_start[c]), int(ch.seg_count[c])
        segs = [(int(ch.seg_addr[s]), int(ch.seg_len[s]), int(ch.seg_write[s])) for s in range(s0, s0 + k)]
        out.append(
            dict(
                head=int(ch.head[c]),
                ndesc=int(ch.ndesc[c]),
                status=int(ch.status[c]),
                seg_start=s0,
                segs=segs,
                total=int(ch.total_len[c]),
            )
        )
    return out


def model_chains(lst):
    return [
        dict(head=c.head, ndesc=c.ndesc, status=c.status, seg_start=c.seg_start, segs=c.segs, total=c.total)
        for c in lst
    ]


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num", [1, 2, 4, 256, 1024, 32768])
def test_layout_matches_spec_formula(num):
    lay = split_layout(num)
    # virtio 1.1 §2.7.2 legacy layout: used ring at ALIGN(desc + avail)
    assert lay.desc_offset == 0 and lay.desc_size == 16 * num
    assert lay.avail_offset == 16 * num and lay.avail_size == 2 * (3 + num)
    assert lay.used_offset == (16 * num + 2 * (3 + num) + 4095) & ~4095
    assert lay.used_size == 6 + 8 * num
    assert lay.total_size == lay.used_offset + lay.used_size
    small = split_layout(num, align=4)
    assert small.used_offset == (16 * num + 2 * (3 + num) + 3) & ~3


@pytest.mark.parametrize("bad", [0, 3, 6, 65536, 32768 * 2, -1, 2.0, "8", None, True])
def test_layout_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="queue size"):
        split_layout(bad)


def test_layout_rejects_bad_align():
    for a in (0, 3, 2, 4097):
        with pytest.raises(ValueError):
            split_layout(8, align=a)


def test_views_land_on_spec_byte_offsets():
    num = 8
    lay = split_layout(num)
    buf, vr = make_ring(num)
    set_desc(vr, 3, 0x1122334455667788, 0xAABBCCDD, 0x0102, 0x0304)
    vr.avail[0], vr.avail[1], vr.avail[2 + 5], vr.avail[2 + num] = 0x11, 0x22, 0x33, 0x44
    vr.used_u16[0], vr.used_u16[1], vr.used_u16[2 + 4 * num] = 0x55, 0x66, 0x77
    vr.used_u32[1 + 2 * 6], vr.used_u32[2 + 2 * 6] = 0xDEADBEEF, 0x12345678
    b = bytes(buf)
    assert struct.unpack_from("<QIHH", b, 16 * 3) == (0x1122334455667788, 0xAABBCCDD, 0x0102, 0x0304)
    a = lay.avail_offset
    assert struct.unpack_from("<HH", b, a) == (0x11, 0x22)
    assert struct.unpack_from("<H", b, a + 4 + 2 * 5) == (0x33,)
    assert struct.unpack_from("<H", b, a + 4 + 2 * num) == (0x44,)
    u = lay.used_offset
    assert struct.unpack_from("<HH", b, u) == (0x55, 0x66)
    assert struct.unpack_from("<II", b, u + 4 + 8 * 6) == (0xDEADBEEF, 0x12345678)
    assert struct.unpack_from("<H", b, u + 4 + 8 * num) == (0x77,)
    # desc_u64 word 1 packs len | flags << 32 | next << 48
    assert int(vr.desc_u64[7]) == 0xAABBCCDD | 0x0102 << 32 | 0x0304 << 48


def test_views_from_addrs_alias_buffer_views():
    num = 16
    lay = split_layout(num)
    buf, vr = make_ring(num)
    base = buf.ctypes.data
    vr2 = split_vring_from_addrs(base, base + lay.avail_offset, base + lay.used_offset, num)
    for name in S.SplitVring._fields:
        a, b = getattr(vr, name), getattr(vr2, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.ctypes.data == b.ctypes.data, name
    vr2.used_u16[2 + 4 * num] = 9
    assert vr.used_u16[2 + 4 * num] == 9
    with pytest.raises(ValueError, match="misaligned"):
        split_vring_from_addrs(base + 8, base + lay.avail_offset, base + lay.used_offset, num)
    with pytest.raises(ValueError, match="misaligned"):
        split_vring_from_addrs(base, base + lay.avail_offset + 1, base + lay.used_offset, num)
    with pytest.raises(ValueError, match="misaligned"):
        split_vring_from_addrs(base, base + lay.avail_offset, base + lay.used_offset + 2, num)
    with pytest.raises(ValueError):
        split_vring_from_addrs(0, base, base, num)


def test_view_from_buffer_checks_size_and_offset():
    lay = split_layout(64)
    buf = np.zeros(lay.total_size + 4096, np.uint8)
    vr = split_vring_from_buffer(buf, 64, offset=4096)
    assert vr.desc_u64.ctypes.data == buf.ctypes.data + 4096
    with pytest.raises(ValueError, match="does not fit"):
        split_vring_from_buffer(buf, 64, offset=4097 + 16)
    with pytest.raises(ValueError, match="aligned"):
        split_vring_from_buffer(buf, 64, offset=8)
    with pytest.raises(ValueError):
        split_vring_from_buffer(buf, 48)


# ---------------------------------------------------------------------------
# the differential harness: numba kernels vs the model, same operations
# ---------------------------------------------------------------------------


class Harness:
    """A driver and a device on one ring, each implemented twice (numba + model)."""

    CHAIN_ROOMS = (1, 3, 8, 32)
    SEG_ROOMS = (1, 4, 6, 8, 16, 64)
    BIG_SEG_ROOMS = (MAX_CHAIN_SEGS, 8, 16, 64)  # every well-formed chain fits

    def __init__(self, num, feats, base=0):
        self.num = num
        self.feats = feats
        self.buf, self.vr = make_ring(num)
        self.mem = np.zeros(MEM_SIZE, np.uint8)
        self.rows = [(DATA_GPA, MEM_SIZE, self.mem.ctypes.data)]
        self.regions = make_regions(self.rows)
        self.ds = split_drv_state(num)
        split_drv_init(self.vr, self.ds, num, feats)
        self.dev = split_dev_state(num, feats)
        self.mring = M.Ring(num)
        self.mmem = M.Memory(self.rows)
        self.mdrv = M.DriverModel(self.mring, self.mmem, num, feats)
        self.mdev = M.DeviceModel(self.mring, self.mmem, num, feats)
        self.chains = {(c, s): V.make_chains(c, s) for c in self.CHAIN_ROOMS for s in self.SEG_ROOMS}
        self.out_cookies = np.zeros(64, np.uint64)
        self.out_lens = np.zeros(64, np.uint32)
        self.cookie = 0
        self.tables_free = list(range(num))
        self.table_of = {}
        self.outstanding = []  # fetched, not yet completed: (head, status, writable bytes)
        self.base = base
        if base:
            self._rebase(base)
        self.check()

    def _rebase(self, base):
        """Start every free-running index at ``base`` (exercises u16 wrap)."""
        for st_ in (self.ds.state, self.mdrv.s):
            st_[S.DRV_AVAIL_IDX] = st_[S.DRV_KICKED_AVAIL] = st_[S.DRV_LAST_USED] = base
        self.vr.avail[1] = self.vr.used_u16[1] = base
        self.mring.avail_idx = self.mring.used_idx = base
        split_dev_set_base(self.dev, base)
        self.mdev.set_base(base)

    # -- comparisons --------------------------------------------------------
    def check(self):
        real = M.Ring.from_views(self.vr, self.num).fields()
        model = self.mring.fields()
        for k in model:
            assert real[k] == model[k], f"ring field {k}"
        assert self.dev.tolist() == self.mdev.s, "device state"
        assert self.ds.state.tolist() == self.mdrv.s, "driver state"
        assert self.ds.cookie.tolist() == self.mdrv.cookie
        assert self.ds.ndesc.tolist() == self.mdrv.ndesc
        assert self.ds.wlen.tolist() == self.mdrv.wlen
        assert self.ds.dnext.tolist() == self.mdrv.dnext
        assert bytes(self.mem) == bytes(self.mmem.data[0]), "guest memory (indirect tables)"

    # -- driver ops ---------------------------------------------------------
    def drv_add(self, segs, indirect):
        self.cookie += 1
        ind_gpa = ind_hva = 0
        slot = None
        if indirect and self.tables_free:
            slot = self.tables_free.pop()
            ind_gpa = DATA_GPA + TABLE_OFF + slot * TABLE_SLOT
            ind_hva = self.mem.ctypes.data + TABLE_OFF + slot * TABLE_SLOT
        gpa = np.array([s[0] for s in segs], np.uint64)
        ln = np.array([s[1] for s in segs], np.uint32)
        wr = np.array([s[2] for s in segs], np.uint8)
        if len(segs) == 1 and not ind_gpa and self.cookie % 2:
            h = split_drv_add1(self.vr, self.ds, self.cookie, segs[0][0], segs[0][1], segs[0][2])
        else:
            h = split_drv_add(self.vr, self.ds, self.cookie, gpa, ln, wr, len(segs), ind_gpa, ind_hva)
        mh = self.mdrv.add(self.cookie, segs, ind_gpa)
        assert h == mh
        if slot is not None:
            if h < 0:
                self.tables_free.append(slot)
            else:
                self.table_of[self.cookie] = slot
        return h

    def drv_publish(self):
        k = split_drv_publish(self.vr, self.ds)
        assert k == self.mdrv.publish()
        return k

    def drv_get_used(self, n):
        got = split_drv_get_used(self.vr, self.ds, self.out_cookies, self.out_lens, n)
        mgot = self.mdrv.get_used(n)
        real = list(zip(self.out_cookies[:got].tolist(), self.out_lens[:got].tolist()))
        assert real == mgot
        for cookie, _ in real:
            slot = self.table_of.pop(cookie, None)
            if slot is not None:
                self.tables_free.append(slot)
        return real

    def drv_enable_interrupt(self, enable):
        r = split_drv_enable_interrupt(self.vr, self.ds, enable)
        assert r == self.mdrv.enable_interrupt(enable)
        return r

    # -- device ops ---------------------------------------------------------
    def dev_fetch(self, max_chains, chain_room, seg_room):
        ch = self.chains[(chain_room, seg_room)]
        n = split_dev_fetch(self.vr, self.dev, self.regions, ch, max_chains)
        real = chains_of(ch, n)
        model = model_chains(self.mdev.fetch(max_chains, chain_room, seg_room))
        assert real == model
        for c in real:
            wl = sum(s[1] for s in c["segs"] if s[2])
            self.outstanding.append((c["head"], c["status"], wl))
        return real

    def dev_complete(self, picks, lens, batch):
        """Completes outstanding chains: ``picks`` indexes (in order for IN_ORDER)."""
        done = []
        for p in picks:
            if not self.outstanding:
                break
            done.append(self.outstanding.pop(p % len(self.outstanding)))
        used = []
        for (head, status, wl), frac in zip(done, lens):
            used.append((head, 0 if status else int(wl * frac)))
        if batch and used:
            head, length = used[-1]
            split_dev_push_used_inorder(self.vr, self.dev, head, length, len(used))
            self.mdev.push_used_inorder(head, length, len(used))
        else:
            for head, length in used:
                split_dev_push_used(self.vr, self.dev, head, length)
                self.mdev.push_used(head, length)
        return used

    def dev_flush(self):
        r = split_dev_flush_used(self.vr, self.dev)
        assert r == self.mdev.flush_used()
        return r

    def dev_enable_notify(self, enable):
        r = split_dev_enable_notify(self.vr, self.dev, enable)
        assert r == self.mdev.enable_notify(enable)
        return r

    def dev_avail_count(self):
        r = split_dev_avail_count(self.vr, self.dev)
        assert r == self.mdev.avail_count()
        return r


OPS = ["add", "add", "add", "publish", "get_used", "intr", "fetch", "fetch", "complete", "complete", "flush", "notify", "count"]


def _segments(draw, num, indirect):
    nseg_max = MAX_CHAIN_SEGS if indirect else min(MAX_CHAIN_SEGS, num)
    nseg = draw(st.integers(1, nseg_max))
    nread = draw(st.integers(0, nseg))
    segs = []
    for j in range(nseg):
        length = draw(st.sampled_from([0, 1, 14, 64, 1518, 2048]))
        off = draw(st.integers(0, TABLE_OFF - 2048))
        segs.append((DATA_GPA + off, length, 0 if j < nread else 1))
    return segs


def run_ops(h, data, nsteps):
    num = h.num
    in_order = bool(h.feats & V.FEAT_IN_ORDER)
    for _ in range(nsteps):
        op = data.draw(st.sampled_from(OPS))
        if op == "add":
            indirect = bool(h.feats & V.FEAT_INDIRECT) and data.draw(st.booleans())
            if h.drv_add(_segments(data.draw, num, indirect), indirect) >= 0 and indirect:
                event("indirect chain added")
        elif op == "publish":
            h.drv_publish()
        elif op == "get_used":
            h.drv_get_used(data.draw(st.integers(1, 64)))
        elif op == "intr":
            h.drv_enable_interrupt(data.draw(st.booleans()))
        elif op == "fetch":
            h.dev_fetch(
                data.draw(st.integers(1, 40)),
                data.draw(st.sampled_from(Harness.CHAIN_ROOMS)),
                data.draw(st.sampled_from(Harness.BIG_SEG_ROOMS)),
            )
        elif op == "complete":
            k = data.draw(st.integers(1, 8))
            if in_order:
                picks = [0] * k
                batch = data.draw(st.booleans())
            else:
                picks = data.draw(st.lists(st.integers(0, 1000), min_size=k, max_size=k))
                batch = False
            lens = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=k, max_size=k))
            used = h.dev_complete(picks, lens, batch)
            if batch and len(used) > 1:
                event("in-order batch of several chains")
        elif op == "flush":
            h.dev_flush()
        elif op == "notify":
            h.dev_enable_notify(data.draw(st.booleans()))
        else:
            h.dev_avail_count()
        h.check()
    # drain: everything the driver added comes back exactly once
    for _ in range(4 * num + 8):
        h.drv_publish()
        h.dev_fetch(32, 32, 64)
        h.dev_complete([0] * len(h.outstanding), [1.0] * len(h.outstanding), in_order)
        h.dev_flush()
        h.drv_get_used(64)
        h.check()
        if h.ds.state[S.DRV_NUM_FREE] == num and not h.outstanding:
            break
    assert h.ds.state[S.DRV_NUM_FREE] == num
    assert h.ds.state[S.DRV_ADDED] == h.ds.state[S.DRV_COMPLETED]
    assert h.dev[V.STATE_ERRORS] == 0 and h.ds.state[S.DRV_BROKEN] == 0
    if h.base and int(h.vr.used_u16[1]) < h.base:
        event("used idx wrapped past 0xFFFF")


SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SLOW
@given(
    data=st.data(),
    log_num=st.integers(0, 10),
    feats=st.integers(0, FEATS_ALL),
    base=st.sampled_from([0, 0, 0xFFFF, 0xFFF0, 0x8000, 12345]),
)
def test_kernels_match_model(data, log_num, feats, base):
    h = Harness(1 << log_num, feats, base)
    run_ops(h, data, data.draw(st.integers(1, 60)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), feats=st.integers(0, FEATS_ALL))
def test_small_ring_wraps_many_times(data, feats):
    """Long runs on tiny rings: indices wrap the ring many times, and the u16 index space."""
    h = Harness(data.draw(st.sampled_from([1, 2, 4])), feats, data.draw(st.sampled_from([0xFFFF, 0xFFFC, 0xFFF8])))
    run_ops(h, data, 150)


@pytest.mark.parametrize("feats", [0, V.FEAT_EVENT_IDX, FEATS_ALL, V.FEAT_IN_ORDER | V.FEAT_INDIRECT])
@pytest.mark.parametrize("num", [1, 8, 256])
def test_full_ring_round_trips(num, feats):
    """Fill the ring completely, drain it, repeatedly; across the u16 wrap."""
    h = Harness(num, feats, 0x10000 - num - 1)
    for rnd in range(4):
        while h.ds.state[S.DRV_NUM_FREE]:
            assert h.drv_add([(DATA_GPA + 64 * rnd, 64, rnd & 1)], False) >= 0
        assert h.drv_add([(DATA_GPA, 64, 0)], False) == -1  # full
        h.drv_publish()
        got = h.dev_fetch(32, 32, 64)
        while got:
            got = h.dev_fetch(32, 32, 64)
        assert len(h.outstanding) == num
        h.dev_complete([0] * num, [1.0] * num, bool(feats & V.FEAT_IN_ORDER))
        h.dev_flush()
        assert len(h.drv_get_used(64)) == min(num, 64)
        while h.drv_get_used(64):
            pass
        h.check()
        assert h.ds.state[S.DRV_NUM_FREE] == num


# ---------------------------------------------------------------------------
# hostile rings: random garbage descriptor tables, numba vs model
# ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), log_num=st.integers(0, 5), feats=st.integers(0, FEATS_ALL))
def test_garbage_rings_match_model(data, log_num, feats):
    num = 1 << log_num
    h = Harness(num, feats)
    table_gpa = DATA_GPA + TABLE_OFF
    addr = st.one_of(
        st.integers(DATA_GPA, DATA_GPA + 0x7000),
        st.integers(DATA_GPA, DATA_GPA + 0x7000),
        st.integers(DATA_GPA - 16, DATA_GPA + MEM_SIZE + 16),
        st.sampled_from([0, DATA_GPA + MEM_SIZE - 16, (1 << 64) - 16]),
    )
    length = st.one_of(
        st.integers(0, 64), st.sampled_from([16, 32, 48, 0xFFFFFFFF, MEM_SIZE, 0x80000000, 24, 0])
    )
    flags = st.sampled_from([0, 1, 2, 3, 0, 1, 2, 3, 1, 3, 4, 5, 6, 7])

    def garbage(nxt):
        a, ln, f = data.draw(addr), data.draw(length), data.draw(flags)
        if f & V.VRING_DESC_F_INDIRECT and data.draw(st.booleans()):
            a, ln = table_gpa, 16 * data.draw(st.integers(1, 8))  # a plausible table
        return [a, ln, f, data.draw(nxt)]

    # garbage descriptors in the ring and in an indirect table at table_gpa
    for i in range(num):
        d = garbage(st.integers(0, num if data.draw(st.integers(0, 3)) == 0 else num - 1))
        set_desc(h.vr, i, *d)
        h.mring.desc[i] = d
    for j in range(8):
        raw = struct.pack("<QIHH", *garbage(st.integers(0, 9)))
        h.mem[TABLE_OFF + 16 * j : TABLE_OFF + 16 * j + 16] = np.frombuffer(raw, np.uint8)
        h.mmem.write(table_gpa + 16 * j, raw)
    head = st.one_of(st.integers(0, num - 1), st.integers(0, num - 1), st.integers(0, num), st.just(0xFFFF))
    heads = data.draw(st.lists(head, min_size=0, max_size=num))
    make_avail(h.vr, num, heads)
    h.mring.avail_ring = [int(x) for x in h.vr.avail[2 : 2 + num]]
    h.mring.avail_idx = int(h.vr.avail[1])
    if data.draw(st.integers(0, 9)) == 0:  # sometimes a jump past the queue size
        h.vr.avail[1] = h.mring.avail_idx = data.draw(st.integers(0, 0xFFFF))
    h.check()
    for _ in range(3):
        h.dev_fetch(data.draw(st.integers(1, 40)), data.draw(st.sampled_from(Harness.CHAIN_ROOMS)), data.draw(st.sampled_from(Harness.SEG_ROOMS)))
        h.check()
    if h.dev[V.STATE_BROKEN]:
        event("queue broken (avail idx jump)")
    for head, status, wl in h.outstanding:
        event(f"chain status {V.ERR_NAMES[status]}")
        split_dev_push_used(h.vr, h.dev, head, 0 if status else wl)
        h.mdev.push_used(head, 0 if status else wl)
    h.dev_flush()
    h.check()


# ---------------------------------------------------------------------------
# hostile rings built by hand: each error detected, counted, chain returned
# ---------------------------------------------------------------------------


class Dev:
    """A device on a hand-built ring."""

    def __init__(self, num=8, feats=V.FEAT_INDIRECT, mem_size=1 << 16, chain_room=32, seg_room=64, regions=None):
        self.num = num
        self.buf, self.vr = make_ring(num)
        self.mem = np.zeros(mem_size, np.uint8)
        self.regions = regions if regions is not None else make_regions([(DATA_GPA, mem_size, self.mem.ctypes.data)])
        self.st = split_dev_state(num, feats)
        self.ch = V.make_chains(chain_room, seg_room)
        self.heads = 0

    def desc(self, i, addr, length, flags=0, nxt=0):
        set_desc(self.vr, i, addr, length, flags, nxt)

    def table(self, off, entries):
        for j, (a, ln, f, nx) in enumerate(entries):
            raw = struct.pack("<QIHH", a, ln, f, nx)
            self.mem[off + 16 * j : off + 16 * j + 16] = np.frombuffer(raw, np.uint8)
        return DATA_GPA + off

    def offer(self, *heads):
        for h in heads:
            self.vr.avail[2 + self.heads % self.num] = h
            self.heads += 1
        self.vr.avail[1] = self.heads & 0xFFFF

    def fetch(self, max_chains=32):
        n = split_dev_fetch(self.vr, self.st, self.regions, self.ch, max_chains)
        return chains_of(self.ch, n)

    def errors(self, code):
        return int(self.st[V.STATE_ERR_BASE + code])


def one(dev):
    got = dev.fetch()
    assert len(got) == 1
    return got[0]


def _expect(dev, code, **kw):
    c = one(dev)
    assert c["status"] == code, (V.ERR_NAMES[c["status"]], V.ERR_NAMES[code])
    assert c["segs"] == [] and c["total"] == 0
    assert dev.errors(code) == 1 and dev.st[V.STATE_ERRORS] == 1
    for k, v in kw.items():
        assert c[k] == v, k
    # the chain is completed with length 0 like any other
    split_dev_push_used(dev.vr, dev.st, c["head"], 0)
    split_dev_flush_used(dev.vr, dev.st)
    assert int(dev.vr.used_u16[1]) == 1 and int(dev.vr.used_u32[1]) == c["head"] and int(dev.vr.used_u32[2]) == 0
    return c


def case_cycle_two():
    d = Dev()
    d.desc(0, DATA_GPA, 16, V.VRING_DESC_F_NEXT, 1)
    d.desc(1, DATA_GPA, 16, V.VRING_DESC_F_NEXT, 0)
    d.offer(0)
    _expect(d, V.ERR_CHAIN_LOOP, ndesc=d.num + 1)


def case_cycle_self():
    d = Dev(num=32768, seg_room=32768 + 8)
    d.desc(5, DATA_GPA, 16, V.VRING_DESC_F_NEXT, 5)
    d.offer(5)
    _expect(d, V.ERR_CHAIN_LOOP, head=5, ndesc=32769)


def case_cycle_stopped_by_segment_room():
    """With fewer segment slots than the ring size a cycle ends at the segment cap first."""
    d = Dev(num=32768, seg_room=64)
    d.desc(5, DATA_GPA, 16, V.VRING_DESC_F_NEXT, 5)
    d.offer(5)
    _expect(d, V.ERR_TOO_MANY_SEGS, head=5, ndesc=65)


def case_cycle_in_indirect_table():
    d = Dev()
    t = d.table(0x100, [(DATA_GPA, 8, V.VRING_DESC_F_NEXT, 1), (DATA_GPA, 8, V.VRING_DESC_F_NEXT, 0)])
    d.desc(0, t, 32, V.VRING_DESC_F_INDIRECT)
    d.offer(0)
    _expect(d, V.ERR_CHAIN_LOOP)


def case_indirect_len_not_multiple_of_16():
    d = Dev()
    t = d.table(0x100, [(DATA_GPA, 8, 0, 0)])
    d.desc(0, t, 24, V.VRING_DESC_F_INDIRECT)
    d.offer(0)
    _expect(d, V.ERR_INDIRECT)


def case_indirect_len_zero():
    d = Dev()
    d.desc(0, DATA_GPA, 0, V.VRING_DESC_F_INDIRECT)
    d.offer(0)
    _expect(d, V.ERR_INDIRECT)


def case_indirect_table_out_of_bounds():
    d = Dev(mem_size=4096)
    d.desc(0, DATA_GPA + 4096 - 16, 32, V.VRING_DESC_F_INDIRECT)  # straddles the region end
    d.desc(1, DATA_GPA + (1 << 40), 16, V.VRING_DESC_F_INDIRECT)  # unmapped
    d.desc(2, DATA_GPA, 0xFFFFFFF0, V.VRING_DESC_F_INDIRECT)  # 4 GiB table
    d.offer(0, 1, 2)
    got = d.fetch()
    assert [c["status"] for c in got] == [V.ERR_INDIRECT] * 3
    assert d.errors(V.ERR_INDIRECT) == 3


def case_nested_indirect():
    d = Dev()
    inner = d.table(0x200, [(DATA_GPA, 8, 0, 0)])
    t = d.table(0x100, [(DATA_GPA, 8, V.VRING_DESC_F_NEXT, 1), (inner, 16, V.VRING_DESC_F_INDIRECT, 0)])
    d.desc(0, t, 32, V.VRING_DESC_F_INDIRECT)
    d.offer(0)
    _expect(d, V.ERR_INDIRECT)


def case_indirect_with_next():
    d = Dev()
    t = d.table(0x100, [(DATA_GPA, 8, 0, 0)])
    d.desc(0, t, 16, V.VRING_DESC_F_INDIRECT | V.VRING_DESC_F_NEXT, 1)
    d.desc(1, DATA_GPA, 8)
    d.offer(0)
    _expect(d, V.ERR_INDIRECT)


def case_indirect_not_negotiated():
    d = Dev(feats=0)
    t = d.table(0x100, [(DATA_GPA, 8, 0, 0)])
    d.desc(0, t, 16, V.VRING_DESC_F_INDIRECT)
    d.offer(0)
    _expect(d, V.ERR_INDIRECT)


def case_indirect_next_out_of_table():
    d = Dev()
    t = d.table(0x100, [(DATA_GPA, 8, V.VRING_DESC_F_NEXT, 7)])
    d.desc(0, t, 16, V.VRING_DESC_F_INDIRECT)
    d.offer(0)
    _expect(d, V.ERR_DESC_INDEX)


def case_indirect_ok_after_direct():
    d = Dev()
    t = d.table(0x100, [(DATA_GPA + 8, 8, V.VRING_DESC_F_NEXT, 1), (DATA_GPA + 16, 100, V.VRING_DESC_F_WRITE, 0)])
    d.desc(0, DATA_GPA, 8, V.VRING_DESC_F_NEXT, 3)
    d.desc(3, t, 32, V.VRING_DESC_F_INDIRECT)
    d.offer(0)
    c = one(d)
    assert c["status"] == V.OK and c["ndesc"] == 2 and c["total"] == 116
    base = d.mem.ctypes.data
    assert c["segs"] == [(base, 8, 0), (base + 8, 8, 0), (base + 16, 100, 1)]


def case_lengths_up_to_4gib():
    # a fake 16 GiB region (never dereferenced: the device only translates buffers)
    big = make_regions([(DATA_GPA, 1 << 34, 0x7F00_0000_0000)])
    d = Dev(regions=big)
    d.desc(0, DATA_GPA, 0xFFFFFFFF, V.VRING_DESC_F_NEXT, 1)
    d.desc(1, DATA_GPA + (1 << 33), 0xFFFFFFFF, V.VRING_DESC_F_WRITE)
    d.desc(2, DATA_GPA + (1 << 34) - 0xFFFFFFFF + 1, 0xFFFFFFFF)  # one byte past the end
    d.desc(3, (1 << 64) - 16, 0xFFFFFFFF)  # would wrap the address space
    d.offer(0, 2, 3)
    got = d.fetch()
    assert got[0]["status"] == V.OK
    assert got[0]["total"] == 2 * 0xFFFFFFFF  # no u32 overflow
    assert [s[1] for s in got[0]["segs"]] == [0xFFFFFFFF, 0xFFFFFFFF]
    assert got[0]["segs"][1][0] == 0x7F00_0000_0000 + (1 << 33)
    assert [c["status"] for c in got[1:]] == [V.ERR_ADDR, V.ERR_ADDR]


def case_address_outside_regions():
    d = Dev(mem_size=4096)
    d.desc(0, 0, 64)
    d.desc(1, DATA_GPA - 1, 2)
    d.desc(2, DATA_GPA + 4096, 1)
    d.desc(3, DATA_GPA + 4000, 97)
    d.desc(4, DATA_GPA, 4, V.VRING_DESC_F_NEXT, 5)
    d.desc(5, 0xDEAD_0000_0000, 4, V.VRING_DESC_F_WRITE)
    d.offer(0, 1, 2, 3, 4)
    got = d.fetch()
    assert [c["status"] for c in got] == [V.ERR_ADDR] * 5
    assert d.errors(V.ERR_ADDR) == 5 and int(d.st[V.STATE_CHAINS]) == 5


def case_next_index_out_of_range():
    d = Dev()
    d.desc(0, DATA_GPA, 8, V.VRING_DESC_F_NEXT, 8)
    d.desc(1, DATA_GPA, 8, V.VRING_DESC_F_NEXT, 0xFFFF)
    d.offer(0, 1, 8, 0xFFFF)
    got = d.fetch()
    assert [c["status"] for c in got] == [V.ERR_DESC_INDEX] * 4
    assert [c["head"] for c in got] == [0, 1, 8, 0xFFFF]
    assert [c["ndesc"] for c in got] == [1, 1, 0, 0]


def case_avail_idx_jump():
    d = Dev()
    d.desc(0, DATA_GPA, 8)
    d.offer(0)
    assert len(d.fetch()) == 1
    d.vr.avail[1] = 1 + d.num + 1  # 9 new entries on an 8-entry ring
    assert split_dev_avail_count(d.vr, d.st) == 0
    assert d.fetch() == []
    assert d.st[V.STATE_BROKEN] == 1 and d.errors(V.ERR_AVAIL_IDX) == 1
    d.vr.avail[1] = 2  # even a sane index later: broken until reset
    assert d.fetch() == [] and d.errors(V.ERR_AVAIL_IDX) == 1
    assert split_dev_enable_notify(d.vr, d.st, True) is False
    split_dev_set_base(d.st, 1)
    assert d.st[V.STATE_BROKEN] == 0
    assert len(d.fetch()) == 1


def case_readable_after_writable():
    d = Dev()
    d.desc(0, DATA_GPA, 8, V.VRING_DESC_F_WRITE | V.VRING_DESC_F_NEXT, 1)
    d.desc(1, DATA_GPA, 8, 0)
    d.offer(0)
    _expect(d, V.ERR_LAYOUT, ndesc=2)


def case_too_many_segments():
    d = Dev(seg_room=4)
    for i in range(5):
        d.desc(i, DATA_GPA, 8, V.VRING_DESC_F_NEXT if i < 4 else 0, i + 1)
    d.desc(6, DATA_GPA, 8)
    d.offer(6, 0)
    got = d.fetch()
    # the 5-segment chain does not fit what is left after chain 6: the burst ends
    assert [c["head"] for c in got] == [6] and got[0]["status"] == V.OK
    got = d.fetch()  # alone, it does not fit at all
    assert [(c["head"], c["status"]) for c in got] == [(0, V.ERR_TOO_MANY_SEGS)]
    assert d.errors(V.ERR_TOO_MANY_SEGS) == 1


def case_shadow_overflow_same_head():
    """A driver offering one head over and over: the device never overruns its shadow."""
    d = Dev(num=4)
    d.desc(0, DATA_GPA, 8)
    total = 0
    for _ in range(10):
        d.offer(0, 0, 0, 0)
        for c in d.fetch():
            split_dev_push_used(d.vr, d.st, c["head"], 1)
            total += 1
    assert total == 40 and d.st[V.STATE_SHADOW_N] <= 4
    split_dev_flush_used(d.vr, d.st)
    assert int(d.vr.used_u16[1]) == 40 and d.st[V.STATE_USED] == 40


def case_driver_survives_hostile_device():
    num = 8
    buf, vr = make_ring(num)
    for bad in ("jump", "id_range", "not_outstanding", "inorder_overrun"):
        feats = V.FEAT_IN_ORDER if bad == "inorder_overrun" else 0
        ds = split_drv_state(num)
        split_drv_init(vr, ds, num, feats)
        assert split_drv_add1(vr, ds, 11, DATA_GPA, 64, 1) == 0
        assert split_drv_add1(vr, ds, 12, DATA_GPA, 64, 1) == 1
        split_drv_publish(vr, ds)
        oc, ol = np.zeros(8, np.uint64), np.zeros(8, np.uint32)
        if bad == "jump":
            vr.used_u16[1] = num + 1
        elif bad == "id_range":
            vr.used_u32[1], vr.used_u16[1] = 1000, 1
        elif bad == "not_outstanding":
            vr.used_u32[1], vr.used_u16[1] = 5, 1
        else:
            vr.used_u32[1], vr.used_u32[2], vr.used_u16[1] = 1, 7, 3  # batch of 2 claims 3
        n = split_drv_get_used(vr, ds, oc, ol, 8)
        assert ds.state[S.DRV_BROKEN] == 1 and ds.state[S.DRV_BAD_USED] == 1, bad
        if bad == "inorder_overrun":
            assert n == 2 and oc[:2].tolist() == [11, 12] and ol[:2].tolist() == [64, 7]
        else:
            assert n == 0
        assert split_drv_get_used(vr, ds, oc, ol, 8) == 0
        assert split_drv_add1(vr, ds, 13, DATA_GPA, 64, 1) == -1


HOSTILE = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", HOSTILE, ids=lambda f: f.__name__[5:])
def test_hostile(case):
    case()


def _run_in_child(fns):
    """Runs ``fns`` in a forked child; returns (exit status, error text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code, msg = 0, ""
        try:
            for fn in fns:
                fn()
        except BaseException:
            code, msg = 1, traceback.format_exc()
        finally:
            os.write(w, pickle.dumps(msg))
            os.close(w)
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return status, pickle.loads(b"".join(chunks)) if chunks else "child died before reporting"


def test_hostile_battery_in_forked_child_survives():
    """All hostile cases in one child process: it must exit normally (no segfault)."""
    status, msg = _run_in_child(HOSTILE)
    assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else '?'}"
    assert os.WEXITSTATUS(status) == 0, msg


# ---------------------------------------------------------------------------
# notification suppression
# ---------------------------------------------------------------------------


def pair(num=8, feats=0):
    buf, vr = make_ring(num)
    mem = np.zeros(4096, np.uint8)
    regions = make_regions([(DATA_GPA, 4096, mem.ctypes.data)])
    ds = split_drv_state(num)
    split_drv_init(vr, ds, num, feats)
    dev = split_dev_state(num, feats)
    ch = V.make_chains(32, 64)
    return vr, ds, dev, regions, ch, (buf, mem)


def test_kick_suppression_with_flags():
    vr, ds, dev, regions, ch, _keep = pair()
    assert split_drv_publish(vr, ds) is False  # nothing new: no kick
    split_drv_add1(vr, ds, 1, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is True
    assert split_dev_enable_notify(vr, dev, False) is False
    assert vr.used_u16[0] & V.VRING_USED_F_NO_NOTIFY
    split_drv_add1(vr, ds, 2, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is False  # device polls
    assert split_dev_fetch(vr, dev, regions, ch, 32) == 2
    # re-enable: nothing pending -> device may sleep
    assert split_dev_enable_notify(vr, dev, True) is False
    assert vr.used_u16[0] & V.VRING_USED_F_NO_NOTIFY == 0
    split_drv_add1(vr, ds, 3, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is True
    # the recheck: chain published while notifications were off -> keep polling
    split_dev_enable_notify(vr, dev, False)
    split_drv_add1(vr, ds, 4, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is False
    assert split_dev_enable_notify(vr, dev, True) is True
    assert vr.used_u16[2 + 4 * 8] == 0  # avail_event untouched without EVENT_IDX


def test_kick_suppression_with_event_idx():
    num = 8
    vr, ds, dev, regions, ch, _keep = pair(num, V.FEAT_EVENT_IDX)
    split_drv_add1(vr, ds, 1, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is True  # avail_event 0 in [0, 1)
    split_drv_add1(vr, ds, 2, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is False  # device has not asked again
    assert split_dev_fetch(vr, dev, regions, ch, 32) == 2
    # flags are ignored with EVENT_IDX
    split_dev_enable_notify(vr, dev, False)
    assert vr.used_u16[0] == 0
    assert split_dev_enable_notify(vr, dev, True) is False
    assert vr.used_u16[2 + 4 * num] == 2  # avail_event = last_avail_idx
    split_drv_add1(vr, ds, 3, DATA_GPA, 8, 0)
    split_drv_add1(vr, ds, 4, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is True  # 2 in [2, 4)
    # the device asks to be kicked at 7: the driver publishes 4..6 without kicking, then 6..8 kicks
    vr.used_u16[2 + 4 * num] = 7
    for k in range(2):
        split_drv_add1(vr, ds, 5 + k, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is False
    split_dev_fetch(vr, dev, regions, ch, 32)
    for c in range(4):
        split_dev_push_used(vr, dev, ch.head[c], 0)
    split_dev_flush_used(vr, dev)
    oc, ol = np.zeros(8, np.uint64), np.zeros(8, np.uint32)
    while split_drv_get_used(vr, ds, oc, ol, 8):
        pass
    for k in range(2):
        split_drv_add1(vr, ds, 7 + k, DATA_GPA, 8, 0)
    assert split_drv_publish(vr, ds) is True
    # the recheck with EVENT_IDX: published before avail_event moved -> keep polling
    assert split_dev_enable_notify(vr, dev, True) is True


def test_interrupt_suppression_with_flags():
    vr, ds, dev, regions, ch, _keep = pair()
    oc, ol = np.zeros(8, np.uint64), np.zeros(8, np.uint32)
    assert split_dev_flush_used(vr, dev) is False  # nothing used
    split_drv_add1(vr, ds, 1, DATA_GPA, 8, 1)
    split_drv_publish(vr, ds)
    split_dev_fetch(vr, dev, regions, ch, 32)
    split_dev_push_used(vr, dev, ch.head[0], 3)
    assert split_dev_flush_used(vr, dev) is True
    assert split_dev_flush_used(vr, dev) is False  # no new entries
    assert split_drv_enable_interrupt(vr, ds, False) is False
    assert vr.avail[0] & V.VRING_AVAIL_F_NO_INTERRUPT
    split_drv_add1(vr, ds, 2, DATA_GPA, 8, 1)
    split_drv_publish(vr, ds)
    split_dev_fetch(vr, dev, regions, ch, 32)
    split_dev_push_used(vr, dev, ch.head[0], 3)
    assert split_dev_flush_used(vr, dev) is False
    # re-enable with used entries pending: the driver must harvest before sleeping
    assert split_drv_enable_interrupt(vr, ds, True) is True
    assert vr.avail[0] & V.VRING_AVAIL_F_NO_INTERRUPT == 0
    assert split_drv_get_used(vr, ds, oc, ol, 8) == 2
    assert split_drv_enable_interrupt(vr, ds, True) is False
    assert vr.avail[2 + 8] == 0  # used_event untouched without EVENT_IDX


def test_interrupt_suppression_with_event_idx():
    num = 8
    vr, ds, dev, regions, ch, _keep = pair(num, V.FEAT_EVENT_IDX)
    oc, ol = np.zeros(8, np.uint64), np.zeros(8, np.uint32)

    def complete(k):
        for i in range(k):
            split_drv_add1(vr, ds, i, DATA_GPA, 8, 1)
        split_drv_publish(vr, ds)
        n = split_dev_fetch(vr, dev, regions, ch, 32)
        for c in range(n):
            split_dev_push_used(vr, dev, ch.head[c], 1)
        return split_dev_flush_used(vr, dev)

    assert complete(1) is True  # the first decision always interrupts
    assert complete(1) is False  # used_event 0 not in [1, 2)
    assert split_drv_enable_interrupt(vr, ds, True) is True  # used_event = 0 (nothing harvested) and pending
    assert split_drv_get_used(vr, ds, oc, ol, 8) == 2
    assert split_drv_enable_interrupt(vr, ds, True) is False
    assert vr.avail[2 + num] == 2  # used_event = last_used_idx
    split_drv_enable_interrupt(vr, ds, False)  # writes nothing with EVENT_IDX
    assert vr.avail[0] == 0 and vr.avail[2 + num] == 2
    assert complete(3) is True  # 2 in [2, 5)
    assert complete(1) is False
    split_drv_get_used(vr, ds, oc, ol, 8)
    vr.avail[2 + num] = 7  # interrupt me once used idx passes 7
    assert complete(1) is False  # [6, 7)
    assert complete(2) is True  # 7 in [7, 9)


# ---------------------------------------------------------------------------
# in-order batches, vring base, indirect from the driver
# ---------------------------------------------------------------------------


def test_inorder_batch_single_used_entry():
    num = 8
    vr, ds, dev, regions, ch, _keep = pair(num, V.FEAT_IN_ORDER)
    gpa, ln, wr = u64(DATA_GPA, DATA_GPA + 64), np.array([16, 100], np.uint32), np.array([0, 1], np.uint8)
    assert split_drv_add1(vr, ds, 100, DATA_GPA, 50, 1) == 0
    assert split_drv_add(vr, ds, 101, gpa, ln, wr, 2, 0, 0) == 1  # descriptors 1, 2
    assert split_drv_add1(vr, ds, 102, DATA_GPA, 60, 1) == 3
    # IN_ORDER chains use descriptors in ring order with next = x + 1
    assert vr.desc_u16[8 * 1 + 7] == 2 and vr.desc_u16[8 * 1 + 6] == V.VRING_DESC_F_NEXT
    split_drv_publish(vr, ds)
    assert split_dev_fetch(vr, dev, regions, ch, 32) == 3
    split_dev_push_used_inorder(vr, dev, int(ch.head[2]), 33, 3)
    split_dev_flush_used(vr, dev)
    assert int(vr.used_u16[1]) == 3
    assert (int(vr.used_u32[1]), int(vr.used_u32[2])) == (3, 33)  # one entry: the last chain's id
    oc, ol = np.zeros(8, np.uint64), np.zeros(8, np.uint32)
    assert split_drv_get_used(vr, ds, oc, ol, 2) == 2  # may stop inside a batch
    assert oc[:2].tolist() == [100, 101] and ol[:2].tolist() == [50, 100]
    assert split_drv_get_used(vr, ds, oc, ol, 8) == 1
    assert oc[0] == 102 and ol[0] == 33
    assert ds.state[S.DRV_NUM_FREE] == num and ds.state[S.DRV_BROKEN] == 0
    assert ds.state[S.DRV_OLDEST] == 4 and ds.state[S.DRV_FREE_HEAD] == 4


def test_vring_base_get_set():
    vr, ds, dev, regions, ch, _keep = pair(8)
    for i in range(3):
        split_drv_add1(vr, ds, i, DATA_GPA, 8, 0)
    split_drv_publish(vr, ds)
    assert split_dev_fetch(vr, dev, regions, ch, 2) == 2
    assert split_dev_get_base(dev) == 2
    assert split_dev_get_base(dev) == 2  # does not reset anything
    assert split_dev_avail_count(vr, dev) == 1
    split_dev_set_base(dev, 0x1FFFF)
    assert dev[V.STATE_LAST_AVAIL] == 0xFFFF and dev[V.STATE_LAST_USED] == 0xFFFF
    split_dev_set_base(dev, 1)
    assert split_dev_fetch(vr, dev, regions, ch, 32) == 2 and ch.head[0] == 1


def test_sync_from_used_on_reconnect():
    vr, ds, dev, regions, ch, _keep = pair(8)
    for i in range(3):
        split_drv_add1(vr, ds, i, DATA_GPA, 8, 0)
    split_drv_publish(vr, ds)
    assert split_dev_fetch(vr, dev, regions, ch, 32) == 3
    split_dev_push_used(vr, dev, ch.head[0], 0)
    split_dev_flush_used(vr, dev)
    # the backend restarts knowing nothing: base 0, but the ring says used idx 1
    fresh = split_dev_state(8)
    assert split_dev_sync_from_used(vr, fresh) is True
    assert fresh[V.STATE_LAST_AVAIL] == 1 and fresh[V.STATE_LAST_USED] == 1
    assert split_dev_sync_from_used(vr, fresh) is False
    assert split_dev_fetch(vr, fresh, regions, ch, 32) == 2  # the 2 in-flight chains again
    assert ch.head[:2].tolist() == [1, 2]


def test_driver_refuses_indirect_without_feature():
    vr, ds, dev, regions, ch, keep = pair(4, 0)
    mem = keep[1]
    g, ln, wr = u64(DATA_GPA), np.array([8], np.uint32), np.array([0], np.uint8)
    assert split_drv_add(vr, ds, 1, g, ln, wr, 1, DATA_GPA + 0x800, mem.ctypes.data + 0x800) == -1
    assert split_drv_add(vr, ds, 1, g, ln, wr, 0, 0, 0) == -1  # no segments
    assert ds.state[S.DRV_NUM_FREE] == 4 and ds.state[S.DRV_AVAIL_IDX] == 0


def test_driver_indirect_table_layout():
    num = 4
    vr, ds, dev, regions, ch, keep = pair(num, V.FEAT_INDIRECT)
    mem = keep[1]
    gpa = u64(DATA_GPA + 0x100, DATA_GPA + 0x200, DATA_GPA + 0x300)
    ln, wr = np.array([10, 20, 30], np.uint32), np.array([0, 1, 1], np.uint8)
    h = split_drv_add(vr, ds, 7, gpa, ln, wr, 3, DATA_GPA + 0x800, mem.ctypes.data + 0x800)
    assert h == 0 and ds.state[S.DRV_NUM_FREE] == num - 1 and ds.ndesc[0] == 1 and ds.wlen[0] == 50
    assert vr.desc_u16[6] == V.VRING_DESC_F_INDIRECT and vr.desc_u32[2] == 48 and vr.desc_u64[0] == DATA_GPA + 0x800
    table = [struct.unpack_from("<QIHH", bytes(mem), 0x800 + 16 * j) for j in range(3)]
    assert table == [
        (DATA_GPA + 0x100, 10, V.VRING_DESC_F_NEXT, 1),
        (DATA_GPA + 0x200, 20, V.VRING_DESC_F_NEXT | V.VRING_DESC_F_WRITE, 2),
        (DATA_GPA + 0x300, 30, V.VRING_DESC_F_WRITE, 0),
    ]
    split_drv_publish(vr, ds)
    assert split_dev_fetch(vr, dev, regions, ch, 32) == 1
    assert ch.status[0] == 0 and ch.seg_count[0] == 3 and ch.ndesc[0] == 1 and ch.total_len[0] == 60
    # more segments than free ring descriptors is fine through an indirect table
    big = split_drv_add(
        vr, ds, 8, np.full(6, DATA_GPA, np.uint64), np.full(6, 8, np.uint32), np.zeros(6, np.uint8), 6,
        DATA_GPA + 0x900, mem.ctypes.data + 0x900,
    )
    assert big == 1
    assert ds.state[S.DRV_NUM_FREE] == 2
    assert split_drv_add(vr, ds, 9, gpa, ln, wr, 3, 0, 0) == -1  # direct: needs 3 descriptors
    assert split_drv_add(vr, ds, 9, gpa, ln, wr, 2, 0, 0) == 2
    assert ds.state[S.DRV_NUM_FREE] == 0 and ds.ndesc[2] == 2
