"""Packed virtqueue kernels against the reference model: layout, random op sequences, batch path.

Every operation runs on the numba kernels and on
``dataplane.testing.virtq_packed_model`` and every descriptor field, flag,
event area, both sides' state and the indirect tables are compared after
each step (see ``dataplane.testing.virtq_packed_harness.Pair``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.rings.packed import (
    DRV_BATCH_HEAD,
    DRV_BROKEN,
    PACKED_DEV_BATCHED,
    check_packed_size,
    packed_dev_fetch,
    packed_dev_flush_used,
    packed_dev_get_base,
    packed_dev_get_used_base,
    packed_dev_push_used,
    packed_dev_set_base,
    packed_dev_state,
    packed_drv_add,
    packed_drv_add1,
    packed_drv_add1_batch,
    packed_drv_get_used,
    packed_drv_need_kick,
    packed_drv_prefetch_avail,
    packed_drv_publish,
    packed_layout,
    packed_vring_alloc,
    packed_vring_from_addrs,
    packed_vring_from_buffer,
)
from dataplane.rings.virtqueue import (
    ERR_ADDR,
    ERR_DESC_INDEX,
    FEAT_EVENT_IDX,
    FEAT_IN_ORDER,
    FEAT_INDIRECT,
    STATE_AVAIL_WRAP,
    STATE_LAST_AVAIL,
    STATE_SLOTS,
    make_chains,
)
from dataplane.testing import virtq_packed_model as M
from dataplane.testing.virtq_packed_harness import DATA_GPA, DATA_SIZE, Pair, aligned, kernel_chains

# PACKED_EXAMPLES=5000 for a long fuzz run
EXAMPLES = int(os.environ.get("PACKED_EXAMPLES", "800"))
SIZES = [1, 2, 3, 4, 5, 7, 8, 13, 100, 255, 256, 1000, 1024]
FEATURE_SETS = [0, FEAT_EVENT_IDX, FEAT_IN_ORDER, FEAT_INDIRECT, FEAT_EVENT_IDX | FEAT_INDIRECT, FEAT_IN_ORDER | FEAT_EVENT_IDX, FEAT_IN_ORDER | FEAT_INDIRECT | FEAT_EVENT_IDX]


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num", [1, 3, 5, 7, 100, 255, 256, 1000, 1024, 32768])
def test_layout_any_size(num):
    lay = packed_layout(num)
    assert lay.desc_offset == 0 and lay.desc_size == 16 * num
    assert lay.driver_offset >= lay.desc_size and lay.driver_offset % 4 == 0
    assert lay.device_offset >= lay.driver_offset + 4 and lay.device_offset % 4 == 0
    assert lay.total_size >= lay.device_offset + 4
    buf, vr = packed_vring_alloc(num)
    assert vr.desc_u64.shape == (2 * num,) and vr.desc_u32.shape == (4 * num,) and vr.desc_u16.shape == (8 * num,)
    assert vr.driver_event.shape == (2,) and vr.device_event.shape == (2,)
    # field positions: addr [2i], len [4i+2], id [8i+6], flags [8i+7]
    i = num - 1
    raw = M.pack_desc(0x1122334455667788, 0xAABBCCDD, 0x1234, 0x8081)
    buf[16 * i : 16 * i + 16] = np.frombuffer(raw, np.uint8)
    assert vr.desc_u64[2 * i] == 0x1122334455667788
    assert vr.desc_u32[4 * i + 2] == 0xAABBCCDD
    assert vr.desc_u16[8 * i + 6] == 0x1234 and vr.desc_u16[8 * i + 7] == 0x8081
    vr.driver_event[:] = (0x8003, 2)
    vr.device_event[:] = (0x0004, 1)
    assert bytes(buf[lay.driver_offset : lay.driver_offset + 4]) == b"\x03\x80\x02\x00"
    assert bytes(buf[lay.device_offset : lay.device_offset + 4]) == b"\x04\x00\x01\x00"


@pytest.mark.parametrize("bad", [0, -1, 32769, 65536, 1.0, "8", None, True])
def test_layout_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="packed queue size"):
        packed_layout(bad)
    with pytest.raises(ValueError):
        check_packed_size(bad)
    with pytest.raises(ValueError):
        packed_dev_state(bad)


def test_vring_from_addrs_aliases_buffer():
    num = 5
    buf, vr = packed_vring_alloc(num)
    lay = packed_layout(num)
    base = buf.ctypes.data
    vr2 = packed_vring_from_addrs(base, base + lay.driver_offset, base + lay.device_offset, num)
    assert vr2.desc_u16.shape == (8 * num,)
    vr2.desc_u64[2 * 4] = 77
    vr2.desc_u16[8 * 4 + 7] = 0x80
    vr2.driver_event[1] = 1
    vr2.device_event[0] = 0x8002
    assert vr.desc_u64[8] == 77 and vr.desc_u16[39] == 0x80
    assert vr.driver_event[1] == 1 and vr.device_event[0] == 0x8002
    with pytest.raises(ValueError, match="16-byte aligned"):
        packed_vring_from_addrs(base + 8, base + lay.driver_offset, base + lay.device_offset, num)
    with pytest.raises(ValueError, match="4-byte aligned"):
        packed_vring_from_addrs(base, base + lay.driver_offset + 2, base + lay.device_offset, num)
    with pytest.raises(ValueError, match="not mapped"):
        packed_vring_from_addrs(base, 0, base + lay.device_offset, num)
    with pytest.raises(ValueError, match="packed queue size"):
        packed_vring_from_addrs(base, base + lay.driver_offset, base + lay.device_offset, 0)
    with pytest.raises(ValueError, match="needs"):
        packed_vring_from_buffer(buf[:100], num)
    with pytest.raises(ValueError, match="aligned"):
        packed_vring_from_buffer(aligned(4096 + 64)[8:], 3)


def test_base_get_set():
    st = packed_dev_state(100)
    assert packed_dev_get_base(st) == 0x8000 and packed_dev_get_used_base(st) == 0x8000
    packed_dev_set_base(st, 99)  # slot 99, wrap 0
    assert st[STATE_LAST_AVAIL] == 99 and st[STATE_AVAIL_WRAP] == 0
    assert packed_dev_get_base(st) == 99 and packed_dev_get_used_base(st) == 99
    packed_dev_set_base(st, 0x8000 | 42, 0x8000 | 40)
    assert packed_dev_get_base(st) == 0x8000 | 42 and packed_dev_get_used_base(st) == 0x8000 | 40
    for bad in (100, 0x8000 | 100, 0x7FFF):
        with pytest.raises(ValueError):
            packed_dev_set_base(st, bad)
    with pytest.raises(ValueError):
        packed_dev_set_base(st, 5, 0x8000 | 1000)
    with pytest.raises(ValueError):
        packed_dev_state(100, base=100)
    assert packed_dev_state(100, base=0x8000 | 7)[STATE_LAST_AVAIL] == 7
    assert STATE_SLOTS == packed_dev_state(1).shape[0]


def test_base_follows_fetch_across_wrap():
    p = Pair(3)
    for _ in range(4):
        p.add([(DATA_GPA, 10, 0)])
        p.fetch()
        p.complete([0], [0])
        p.flush()
        p.harvest(4)
        p.check()
    # 4 single buffers in a ring of 3: slot 1, wrap 0; GET_VRING_BASE says so
    assert packed_dev_get_base(p.st) == 1 and packed_dev_get_used_base(p.st) == 1


# ---------------------------------------------------------------------------
# random op sequences against the model
# ---------------------------------------------------------------------------


def gen_segs(rng, nseg, shape):
    """Elements for one add: readable first, then writable; ``shape`` injects faults."""
    nw = rng.randint(0, nseg)
    segs = []
    for i in range(nseg):
        ln = rng.choice((0, 1, 14, 64, 1500, rng.randint(0, 4096)))
        gpa = DATA_GPA + rng.randrange(0, DATA_SIZE - 4096)
        segs.append((gpa, ln, 1 if i >= nseg - nw else 0))
    if shape == 7:  # an unmapped element
        j = rng.randrange(nseg)
        segs[j] = (rng.choice((0, 0x2000_0000, DATA_GPA - 1, 0xFFFF_FFFF_FFFF_F000)), 16, segs[j][2])
    elif shape == 8 and nseg >= 2:  # writable before readable
        segs[0] = (segs[0][0], segs[0][1], 1)
        segs[-1] = (segs[-1][0], segs[-1][1], 0)
    elif shape == 9:  # straddles the end of the region
        j = rng.randrange(nseg)
        segs[j] = (DATA_GPA + DATA_SIZE - 8, 64, segs[j][2])
    return segs


def _lengths(rng, picks):
    out = []
    for i in picks:
        out.append(rng.choice((0, 1, 60, 1514, rng.randint(0, 0xFFFFFFFF))))
    return out


def run_ops(p: Pair, ops, indirect_ok):
    for op in ops:
        kind = op[0]
        if kind == "add":
            _, nseg, ind, seed, shape = op
            rng = random.Random(seed)
            p.add(gen_segs(rng, nseg, shape), indirect=ind and (indirect_ok or shape == 6))
        elif kind == "kick":
            p.kick()
        elif kind == "fetch":
            _, mc, seg_cap = op
            p.fetch(mc, seg_cap)
        elif kind == "complete":
            _, k, seed, merge = op
            if not p.inflight:
                continue
            rng = random.Random(seed)
            k = min(k, len(p.inflight))
            if p.features & FEAT_IN_ORDER:
                picks = list(range(k))
            else:
                picks = rng.sample(range(len(p.inflight)), k)
            p.complete(picks, _lengths(rng, picks), inorder_merge=merge)
        elif kind == "flush":
            p.flush()
        elif kind == "harvest":
            p.harvest(op[1])
        elif kind == "intr":
            p.intr(op[1])
        elif kind == "notify":
            p.notify(op[1])
        elif kind == "cycle":
            cycle(p, random.Random(op[1]), indirect_ok)
        elif kind == "burst":
            _, k, seed, merge = op
            rng = random.Random(seed)
            for _ in range(k):
                p.add(gen_segs(rng, rng.choice((1, 1, 2, 3)), rng.randint(0, 9)), indirect=indirect_ok and rng.random() < 0.3)
            while p.fetch(rng.randint(1, 40)):
                pass
            if p.inflight:
                if p.features & FEAT_IN_ORDER:
                    picks = list(range(len(p.inflight)))
                else:
                    picks = rng.sample(range(len(p.inflight)), len(p.inflight))
                p.complete(picks, _lengths(rng, picks), inorder_merge=merge)
                if rng.random() < 0.5:
                    p.flush()
                    p.harvest(rng.randint(1, 3))
        p.check()


def cycle(p: Pair, rng, indirect_ok):
    """About one lap: fill the ring, fetch it all, complete it all, harvest it all."""
    for _ in range(p.num + 1):
        nseg = rng.choice((1, 1, 1, 2, 3, 4))
        if p.add(gen_segs(rng, nseg, 0), indirect=indirect_ok and rng.random() < 0.3) < 0:
            break
    p.kick()
    while p.fetch(rng.randint(1, 64)):
        pass
    p.check()
    if p.features & FEAT_IN_ORDER:
        picks = list(range(len(p.inflight)))
    else:
        picks = rng.sample(range(len(p.inflight)), len(p.inflight))
    p.complete(picks, _lengths(rng, picks), inorder_merge=rng.random() < 0.5)
    p.flush()
    p.check()
    while p.harvest(rng.randint(1, 64)):
        pass


op_strategy = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 9), st.booleans(), st.integers(0, 2**32), st.integers(0, 9)),
    st.tuples(st.just("kick")),
    st.tuples(st.just("fetch"), st.integers(1, 40), st.sampled_from([None, None, 1, 3, 8, 40])),
    st.tuples(st.just("complete"), st.integers(1, 40), st.integers(0, 2**32), st.booleans()),
    st.tuples(st.just("flush")),
    st.tuples(st.just("harvest"), st.one_of(st.integers(1, 4), st.integers(1, 40))),
    st.tuples(st.just("burst"), st.integers(1, 16), st.integers(0, 2**32), st.booleans()),
    st.tuples(st.just("intr"), st.booleans()),
    st.tuples(st.just("notify"), st.booleans()),
    st.tuples(st.just("cycle"), st.integers(0, 2**32)),
)


@st.composite
def configs(draw):
    num = draw(st.sampled_from(SIZES))
    feats = draw(st.sampled_from(FEATURE_SETS))
    start = draw(st.one_of(st.just(0), st.integers(0, num - 1), st.integers(max(0, num - 12), num - 1)))
    no_batch = draw(st.booleans())
    return num, feats, start, no_batch


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(cfg=configs(), ops=st.lists(op_strategy, min_size=1, max_size=60))
def test_random_ops_match_model(cfg, ops):
    num, feats, start, no_batch = cfg
    p = Pair(num, feats, start=start, no_batch=no_batch)
    p.check()
    run_ops(p, ops, bool(feats & FEAT_INDIRECT))
    # drain: everything the driver added comes back exactly once
    for _ in range(3):
        cycle(p, random.Random(len(ops)), bool(feats & FEAT_INDIRECT))
        p.check()


@pytest.mark.parametrize("num", [1, 3, 5, 7, 100, 255, 256, 1000, 1024])
@pytest.mark.parametrize("feats", [0, FEAT_IN_ORDER | FEAT_EVENT_IDX | FEAT_INDIRECT])
def test_many_wraps(num, feats):
    """Several laps of the ring in both wrap states, all ops checked against the model."""
    p = Pair(num, feats)
    rng = random.Random(num * 7 + feats)
    toggles = 0
    for _ in range(7):
        w = p.drv.avail_wrap
        cycle(p, rng, bool(feats & FEAT_INDIRECT))
        p.check()
        toggles += p.drv.avail_wrap != w
    assert toggles >= 4
    assert p.drv.added == p.drv.completed and p.drv.added > 0


# ---------------------------------------------------------------------------
# 4-descriptor batch path
# ---------------------------------------------------------------------------


def _fill_singles(p, n, rng, bad=()):
    for i in range(n):
        if i in bad:
            segs = [(0x2000_0000, 10, 0)]  # unmapped -> ERR_ADDR
        else:
            segs = [(DATA_GPA + rng.randrange(0, 65536), rng.randint(0, 2000), rng.randint(0, 1))]
        assert p.add(segs) >= 0


def _rel(p, chains):
    """Chains with element addresses relative to the pair's data region (pairs have separate memory)."""
    base = p.data.ctypes.data
    return [(c.id, c.ndesc, c.status, [(a - base, ln, w) for a, ln, w in c.segs], c.total) for c in chains]


@pytest.mark.parametrize("num", [4, 5, 8, 13, 64, 255, 256])
def test_batch_path_matches_slow_path_and_model(num):
    fast = Pair(num)
    slow = Pair(num, no_batch=True)
    total_batched = 0
    for rnd in range(6):
        for p in (fast, slow):
            r = random.Random(rnd * 1000 + num)
            k = num if rnd == 0 else r.randint(1, num)
            _fill_singles(p, k, r, bad={r.randrange(k)} if rnd % 2 else ())
            # a multi-descriptor chain now and then breaks the alignment
            if rnd % 3 == 2 and p.drv.num_free >= 2:
                p.add([(DATA_GPA, 10, 0), (DATA_GPA + 64, 10, 1)])
        for mc in ((64, 3) if rnd % 2 == 0 else (3, 64)):
            a = fast.fetch(mc)
            b = slow.fetch(mc)
            assert _rel(fast, a) == _rel(slow, b)
        while True:
            a = fast.fetch(64)
            assert _rel(fast, a) == _rel(slow, slow.fetch(64))
            if not a:
                break
        for p in (fast, slow):
            p.complete(list(range(len(p.inflight))), [0] * len(p.inflight))
            p.flush()
            p.harvest(1000)
            p.check()
        total_batched = int(fast.st[PACKED_DEV_BATCHED])
        assert int(slow.st[PACKED_DEV_BATCHED]) == 0
        assert bytes(fast.buf) == bytes(slow.buf)
    assert total_batched > 0, "the batch path never ran"


def test_batch_path_flags_checked_together():
    """Four aligned singles -> one batch; a NEXT/INDIRECT/unavailable one in the group -> slow path."""
    p = Pair(8, FEAT_INDIRECT)
    for i in range(4):
        p.add([(DATA_GPA + 64 * i, 64, 0)])
    p.fetch(64)
    assert p.st[PACKED_DEV_BATCHED] == 4
    p.complete([0, 1, 2, 3], [0, 0, 0, 0])
    p.flush()
    p.harvest(8)
    # slots 4..7: single, single, chain of 2 -> no batch
    p.add([(DATA_GPA, 1, 0)])
    p.add([(DATA_GPA, 2, 0)])
    p.add([(DATA_GPA, 3, 0), (DATA_GPA, 4, 1)])
    p.fetch(64)
    assert p.st[PACKED_DEV_BATCHED] == 4
    p.check()
    # only 3 of 4 available at slot 0 (wrap 0 now) -> no batch, all 3 still fetched
    p.complete([0, 1, 2], [0, 0, 0])
    p.flush()
    p.harvest(8)
    for i in range(3):
        p.add([(DATA_GPA, 5 + i, 0)])
    assert len(p.fetch(64)) == 3
    assert p.st[PACKED_DEV_BATCHED] == 4
    p.check()


def test_batch_path_errors_per_chain():
    """A bad address or an out-of-range id inside a batch fails that chain only."""
    p = Pair(8)
    p.add([(DATA_GPA, 10, 0)])
    p.add([(0x9000_0000, 10, 0)])
    p.add([(DATA_GPA, 30, 1)])
    p.add([(DATA_GPA, 40, 0)])
    p.vr.desc_u16[8 * 3 + 6] = 200  # hostile id in slot 3
    p.ring.desc[3].id = 200
    ch = p.fetch(64)
    assert p.st[PACKED_DEV_BATCHED] == 4
    assert [c.status for c in ch] == [0, ERR_ADDR, 0, ERR_DESC_INDEX]
    p.check()


def test_fetch_respects_max_chains_and_seg_capacity():
    p = Pair(16, chain_cap=8, seg_cap=6)
    for i in range(6):
        p.add([(DATA_GPA, 10, 0), (DATA_GPA + 100, 20, 1)])  # 2 segs each
    assert len(p.fetch(2)) == 2
    assert len(p.fetch(64)) == 3  # 6 segs fit: the 4th chain waits for the next burst
    assert len(p.fetch(64)) == 1
    assert p.fetch(64) == []
    p.check()


def test_chains_arrays_directly():
    """The Chains bundle as a kernel caller sees it (no harness)."""
    p = Pair(7)
    p.add([(DATA_GPA + 0x100, 100, 0), (DATA_GPA + 0x200, 200, 1)])
    ch = make_chains(4, 16)
    n = packed_dev_fetch(p.vr, p.st, p.regions, ch, 4)
    assert n == 1
    got = kernel_chains(ch, n)
    base = p.data.ctypes.data
    assert got == [(0, 2, 0, [(base + 0x100, 100, 0), (base + 0x200, 200, 1)], 300)]


# ---------------------------------------------------------------------------
# driver batches: packed_drv_add1_batch + packed_drv_publish
# ---------------------------------------------------------------------------


def _twin(num, feats, start):
    """Two pairs at the same position; ``a`` adds with add1, ``b`` with add1_batch."""
    return Pair(num, feats, start=start, chain_cap=num), Pair(num, feats, start=start, chain_cap=num)


@pytest.mark.parametrize("num", [1, 3, 4, 5, 8, 13, 256])
@pytest.mark.parametrize("feats", [0, FEAT_IN_ORDER | FEAT_EVENT_IDX])
def test_add1_batch_is_invisible_until_published_then_same_as_add1(num, feats):
    """A batch shows nothing to the device before the publish, and after it the ring
    holds exactly what add1 one buffer at a time writes (every byte, every lap)."""
    for start in sorted({0, num // 2, num - 1}):
        a, b = _twin(num, feats, start)
        rng = random.Random(num * 31 + start)
        for lap in range(3 * num + 3):
            k = rng.randint(1, num)
            added = 0
            for i in range(k):
                gpa = np.uint64(DATA_GPA + rng.randrange(0, 65536))
                ln, wr = rng.randint(0, 2000), rng.randint(0, 1)
                ia = packed_drv_add1(a.vr, a.ds, i + 1, gpa, ln, wr)
                ib = packed_drv_add1_batch(b.vr, b.ds, i + 1, gpa, ln, wr)
                assert ia == ib and ia >= 0  # everything was harvested: there is room
                added += 1
            # before the publish the device finds nothing in b
            assert packed_dev_fetch(b.vr, b.st, b.regions, b.chains, num) == 0
            assert (b.ds.state[DRV_BATCH_HEAD] >= 0) == (added > 0)
            if rng.random() < 0.5:
                packed_drv_publish(b.vr, b.ds)
                assert b.ds.state[DRV_BATCH_HEAD] == -1
            # the kick decision publishes a pending batch first, and decides the same
            assert packed_drv_need_kick(a.vr, a.ds) == packed_drv_need_kick(b.vr, b.ds)
            assert b.ds.state[DRV_BATCH_HEAD] == -1
            assert bytes(a.buf) == bytes(b.buf), f"lap {lap}: ring memory differs after the publish"
            na = packed_dev_fetch(a.vr, a.st, a.regions, a.chains, num)
            nb = packed_dev_fetch(b.vr, b.st, b.regions, b.chains, num)
            assert na == nb == added and kernel_chains(a.chains, na) == [
                (h, nd, s, [(x - b.data.ctypes.data + a.data.ctypes.data, ln, w) for x, ln, w in segs], t)
                for h, nd, s, segs, t in kernel_chains(b.chains, nb)
            ]
            for p, n in ((a, na), (b, nb)):
                for c in range(n):
                    packed_dev_push_used(p.vr, p.st, p.chains.head[c], 0, p.chains.ndesc[c])
                packed_dev_flush_used(p.vr, p.st)
                assert packed_drv_get_used(p.vr, p.ds, p.out_cookies, p.out_lens, 4096) == n
            assert bytes(a.buf) == bytes(b.buf)
            assert np.array_equal(a.ds.state[:DRV_BATCH_HEAD + 1], b.ds.state[:DRV_BATCH_HEAD + 1])  # BATCH_FLAGS: stale when no batch


def test_add1_batch_then_add_keeps_ring_order():
    """add (chains, indirect) and add1 after an unpublished batch hide behind its first slot."""
    p = Pair(16, FEAT_INDIRECT)
    assert packed_drv_add1_batch(p.vr, p.ds, 1, np.uint64(DATA_GPA), 64, 0) == 0
    gpa = np.array([DATA_GPA + 4096, DATA_GPA + 8192], np.uint64)
    ln = np.array([100, 200], np.uint32)
    wr = np.array([0, 1], np.uint8)
    assert packed_drv_add(p.vr, p.ds, 2, gpa, ln, wr, 2, 0, 0) == 1
    assert packed_drv_add1(p.vr, p.ds, 3, np.uint64(DATA_GPA + 64), 64, 1) == 2
    assert packed_dev_fetch(p.vr, p.st, p.regions, p.chains, 64) == 0
    packed_drv_publish(p.vr, p.ds)
    packed_drv_publish(p.vr, p.ds)  # nothing pending: no-op
    assert packed_dev_fetch(p.vr, p.st, p.regions, p.chains, 64) == 3
    got = kernel_chains(p.chains, 3)
    assert [(h, nd, s) for h, nd, s, _, _ in got] == [(0, 1, 0), (1, 2, 0), (2, 1, 0)]
    assert got[1][4] == 300 and got[2][3][0][2] == 1


def test_add1_batch_full_ring_and_broken():
    p = Pair(4)
    for i in range(4):
        assert packed_drv_add1_batch(p.vr, p.ds, i + 1, np.uint64(DATA_GPA), 8, 0) == i
    assert packed_drv_add1_batch(p.vr, p.ds, 9, np.uint64(DATA_GPA), 8, 0) == -1  # no room
    packed_drv_need_kick(p.vr, p.ds)
    assert packed_dev_fetch(p.vr, p.st, p.regions, p.chains, 64) == 4
    p.ds.state[DRV_BROKEN] = 1
    assert packed_drv_add1_batch(p.vr, p.ds, 9, np.uint64(DATA_GPA), 8, 0) == -1


@pytest.mark.parametrize("num", [1, 5, 256])
def test_prefetch_avail_changes_nothing(num):
    """A hint only: ring memory and driver state stay as they were, at any position and count."""
    p = Pair(num, start=num - 1)
    for n in (0, 1, 5, num, num + 10, -3):
        before = (bytes(p.buf), p.ds.state.copy())
        packed_drv_prefetch_avail(p.vr, p.ds, n)
        assert bytes(p.buf) == before[0] and np.array_equal(p.ds.state, before[1])
        packed_drv_add1_batch(p.vr, p.ds, 1, np.uint64(DATA_GPA), 8, 0)
    packed_drv_need_kick(p.vr, p.ds)
    assert packed_dev_fetch(p.vr, p.st, p.regions, p.chains, 64) == min(num, 6)
