"""Hostile packed rings: every fault is detected with its code, counted, returned, survived.

Each case runs on the kernels and the model (``Pair.fetch`` compares them),
then checks the expected code explicitly and that the ring keeps working.
The fuzz cases fill the ring and the indirect tables with garbage.
"""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.rings.packed import DRV_BAD_USED, DRV_BROKEN, packed_dev_fetch
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
    STATE_CHAINS,
    STATE_ERR_BASE,
    STATE_ERRORS,
)
from dataplane.testing import virtq_packed_model as M
from dataplane.testing.virtq_packed_harness import DATA_GPA, DATA_SIZE, TBL_GPA, Pair

NEXT, WRITE, INDIRECT, AVAIL, USED = M.NEXT, M.WRITE, M.INDIRECT, M.AVAIL, M.USED
A1 = AVAIL  # available in lap 1 (a fresh ring)
A0 = USED  # available in lap 0

HUGE_GPA = 1 << 40
HUGE_SIZE = 1 << 34  # 16 GiB region that is never dereferenced (buffers are only described)
TOP_GPA = (1 << 64) - (1 << 16)  # a region ending at the top of the address space
FAKE_HVA = 0x7F00_0000_0000
FAKE_ROWS = ((HUGE_GPA, HUGE_SIZE, FAKE_HVA), (TOP_GPA, 1 << 16, FAKE_HVA + HUGE_SIZE))


def one(p, max_chains=64, seg_cap=None):
    ch = p.fetch(max_chains, seg_cap)
    assert len(ch) == 1, ch
    return ch[0]


def finish(p):
    """Completes everything in flight with length 0 and checks the ring still works after it."""
    p.complete(list(range(len(p.inflight))), [0] * len(p.inflight))
    p.flush()
    p.check()


def still_works(p):
    """A hand-written valid descriptor at the device's next slot is fetched fine."""
    slot, wrap = p.dev.last_avail, p.dev.avail_wrap
    p.write_desc(slot, DATA_GPA + 64, 100, 0, AVAIL if wrap else USED)
    c = one(p)
    assert c.status == OK and c.segs[0][1] == 100
    finish(p)


def assert_counted(p, code, times=1):
    assert p.st[STATE_ERR_BASE + code] == times
    assert p.st[STATE_ERRORS] >= times


# ---------------------------------------------------------------------------
# chains
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num", [1, 2, 5, 8, 100])
def test_chain_longer_than_ring(num):
    """NEXT on every slot (the packed equivalent of a cycle): ERR_CHAIN_LOOP after num slots, no hang."""
    p = Pair(num)
    for i in range(num):
        p.write_desc(i, DATA_GPA, 10, i, A1 | NEXT)
    c = one(p)
    assert (c.status, c.ndesc, c.segs, c.id) == (ERR_CHAIN_LOOP, num, [], num - 1)
    assert_counted(p, ERR_CHAIN_LOOP)
    assert p.dev.last_avail == 0 and p.dev.avail_wrap == 0
    finish(p)
    still_works(p)


def test_chain_loop_overrides_earlier_errors_and_spans_wrap():
    p = Pair(6)
    p.set_dev_base(4, 1)
    for i in (4, 5):
        p.write_desc(i, 0xDEAD_0000, 10, 1, A1 | NEXT)  # unmapped too
    for i in range(4):
        p.write_desc(i, DATA_GPA, 10, 1, A0 | NEXT)
    c = one(p)
    assert c.status == ERR_CHAIN_LOOP and c.ndesc == 6
    assert_counted(p, ERR_CHAIN_LOOP)
    assert p.st[STATE_ERR_BASE + ERR_ADDR] == 0


@pytest.mark.parametrize("num", [1, 3, 7, 16])
def test_chain_of_exactly_num_is_fine(num):
    p = Pair(num)
    segs = [(DATA_GPA + 100 * i, 10 + i, 0) for i in range(num)]
    assert p.add(segs) == 0
    c = one(p)
    assert c.status == OK and c.ndesc == num and len(c.segs) == num
    finish(p)
    assert p.harvest(4) == [(1, 0)]


def test_chain_wraps_around_the_ring_end():
    p = Pair(5)
    p.set_dev_base(3, 1)
    p.drv.avail_idx = p.drv.used_idx = 3
    p.ds.state[2] = p.ds.state[4] = 3  # DRV_AVAIL_IDX, DRV_USED_IDX
    for i in range(3):
        p.write_desc(i, 0, 0, 0, AVAIL | USED)  # lap-1 used leftovers
    p.add([(DATA_GPA, 1, 0), (DATA_GPA, 2, 0), (DATA_GPA, 3, 1), (DATA_GPA, 4, 1)])  # slots 3,4,0,1
    assert p.vr.desc_u16[8 * 0 + 7] & (AVAIL | USED) == USED  # lap 0 bits after the wrap
    c = one(p)
    assert c.status == OK and c.ndesc == 4 and [s[1] for s in c.segs] == [1, 2, 3, 4]
    assert p.dev.last_avail == 2 and p.dev.avail_wrap == 0
    finish(p)
    assert p.harvest(4) == [(1, 0)]
    p.check()


def test_readable_after_writable():
    p = Pair(8)
    p.add([(DATA_GPA, 10, 1), (DATA_GPA, 10, 0)])
    c = one(p)
    assert (c.status, c.ndesc, c.segs, c.total) == (ERR_LAYOUT, 2, [], 0)
    assert_counted(p, ERR_LAYOUT)
    finish(p)
    still_works(p)


def test_buffer_id_out_of_range():
    p = Pair(8)
    p.write_desc(0, DATA_GPA, 10, 8, A1 | NEXT)
    p.write_desc(1, DATA_GPA, 10, 9, A1)  # the id that counts is the last descriptor's
    c = one(p)
    assert (c.status, c.id, c.ndesc) == (ERR_DESC_INDEX, 9, 2)
    p.write_desc(2, DATA_GPA, 10, 65535, A1)
    c = one(p)
    assert (c.status, c.id) == (ERR_DESC_INDEX, 65535)
    assert_counted(p, ERR_DESC_INDEX, 2)


def test_id_taken_from_last_descriptor():
    p = Pair(8)
    p.write_desc(0, DATA_GPA, 10, 5, A1 | NEXT)
    p.write_desc(1, DATA_GPA, 10, 6, A1 | NEXT)
    p.write_desc(2, DATA_GPA, 10, 3, A1)
    c = one(p)
    assert (c.status, c.id, c.ndesc) == (OK, 3, 3)


# ---------------------------------------------------------------------------
# addresses and lengths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr,length",
    [
        (0, 1),  # below every region
        (DATA_GPA - 1, 2),  # starts before the region
        (DATA_GPA + DATA_SIZE, 1),  # just after
        (DATA_GPA + DATA_SIZE - 8, 9),  # straddles the end
        (DATA_GPA, DATA_SIZE + 1),
        (DATA_GPA, 0xFFFF_FFFF),  # 4 GiB - 1 from a 1 MiB region
        (0xFFFF_FFFF_FFFF_FFF0, 0x20),  # gpa + len overflows 64 bits
        ((1 << 64) - 16, 0xFFFF_FFFF),  # inside the top region, length runs off the end of the address space
        (TBL_GPA - 16, 32),  # between regions
    ],
)
def test_address_outside_regions(addr, length):
    p = Pair(4, extra_rows=FAKE_ROWS)
    p.write_desc(0, addr, length, 0, A1)
    c = one(p)
    assert (c.status, c.segs) == (ERR_ADDR, [])
    assert_counted(p, ERR_ADDR)
    finish(p)
    still_works(p)


def test_lengths_up_to_4gib_do_not_overflow():
    p = Pair(8, extra_rows=FAKE_ROWS)
    big = 0xFFFF_FFFF
    p.add([(HUGE_GPA, big, 0), (HUGE_GPA + big, big, 1), (HUGE_GPA + 2 * big, big, 1)])
    c = one(p)
    assert c.status == OK
    assert [s[1] for s in c.segs] == [big] * 3
    assert c.total == 3 * big and p.chains.total_len[0] == 3 * big
    assert c.segs[2][0] == FAKE_HVA + 2 * big
    # a zero-length element at the very last byte of the top region is fine
    p.write_desc(3, (1 << 64) - 1, 0, 1, A1)
    assert one(p).status == OK
    # used length of 4 GiB - 1 survives the round trip
    p.complete([0], [big])
    p.flush()
    assert p.harvest(4) == [(1, big)]
    p.check()


# ---------------------------------------------------------------------------
# indirect
# ---------------------------------------------------------------------------

T0 = TBL_GPA + 0x100


@pytest.mark.parametrize(
    "flags,addr,length,entries",
    [
        (A1 | INDIRECT, 0x3000_0000, 32, None),  # table not mapped
        (A1 | INDIRECT, TBL_GPA - 16, 32, None),  # table starts before the region
        (A1 | INDIRECT, T0, 0, None),  # empty table
        (A1 | INDIRECT, T0, 24, None),  # not a multiple of 16
        (A1 | INDIRECT, T0, 8, None),
        (A1 | INDIRECT, T0, 0xFFFF_FFF0, None),  # huge: not wholly mapped
        (A1 | INDIRECT | NEXT, T0, 32, [(DATA_GPA, 10, 0, 0)] * 2),  # INDIRECT with NEXT
        (A1 | INDIRECT, T0, 32, [(DATA_GPA, 10, 0, 0), (T0, 16, 0, INDIRECT)]),  # nested
    ],
)
def test_bad_indirect(flags, addr, length, entries):
    p = Pair(8, FEAT_INDIRECT)
    if entries:
        p.write_table(T0, entries)
    p.write_desc(0, addr, length, 0, flags)
    if flags & NEXT:
        p.write_desc(1, DATA_GPA, 10, 0, A1)
    c = one(p)
    assert c.status == ERR_INDIRECT and c.segs == []
    assert c.ndesc == (2 if flags & NEXT else 1)
    assert_counted(p, ERR_INDIRECT)
    finish(p)
    still_works(p)


def test_indirect_inside_a_next_list():
    p = Pair(8, FEAT_INDIRECT)
    p.write_table(T0, [(DATA_GPA, 10, 0, 0)])
    p.write_desc(0, DATA_GPA, 10, 0, A1 | NEXT)
    p.write_desc(1, T0, 16, 0, A1 | INDIRECT)
    c = one(p)
    assert (c.status, c.ndesc) == (ERR_INDIRECT, 2)


def test_indirect_without_the_feature():
    p = Pair(8, 0)
    p.write_table(T0, [(DATA_GPA, 10, 0, 0)])
    p.write_desc(0, T0, 16, 0, A1 | INDIRECT)
    assert one(p).status == ERR_INDIRECT
    still_works(p)


def test_indirect_table_contents():
    p = Pair(8, FEAT_INDIRECT)
    # flags other than WRITE are ignored in the table (NEXT here), ids too; WRITE of the ring descriptor too
    p.write_table(T0, [(DATA_GPA, 10, 77, NEXT), (DATA_GPA + 10, 20, 99, NEXT | WRITE | AVAIL), (DATA_GPA + 30, 30, 0, WRITE)])
    p.write_desc(0, T0, 48, 3, A1 | INDIRECT | WRITE)
    c = one(p)
    assert (c.status, c.id, c.ndesc, c.total) == (OK, 3, 1, 60)
    assert [(s[1], s[2]) for s in c.segs] == [(10, 0), (20, 1), (30, 1)]
    # an element out of range inside the table: ERR_ADDR; readable after writable: ERR_LAYOUT
    p.write_table(T0 + 0x100, [(DATA_GPA, 10, 0, 0), (0x3000_0000, 10, 0, 0)])
    p.write_desc(1, T0 + 0x100, 32, 4, A1 | INDIRECT)
    p.write_table(T0 + 0x200, [(DATA_GPA, 10, 0, WRITE), (DATA_GPA, 10, 0, 0)])
    p.write_desc(2, T0 + 0x200, 32, 5, A1 | INDIRECT)
    assert [c.status for c in p.fetch()] == [ERR_ADDR, ERR_LAYOUT]
    finish(p)


def test_indirect_table_larger_than_seg_arrays():
    p = Pair(8, FEAT_INDIRECT, seg_cap=4)
    p.write_table(T0, [(DATA_GPA + i, 1, 0, 0) for i in range(5)])
    p.write_desc(0, DATA_GPA, 1, 0, A1)
    p.write_desc(1, T0, 5 * 16, 1, A1 | INDIRECT)
    first = p.fetch()  # chain 1 would overflow this burst's arrays: it waits
    assert [c.status for c in first] == [OK]
    c = one(p)  # alone it still does not fit: an error, not a hang
    assert (c.status, c.ndesc) == (ERR_TOO_MANY_SEGS, 1)
    assert_counted(p, ERR_TOO_MANY_SEGS)
    finish(p)
    still_works(p)


def test_direct_chain_larger_than_seg_arrays():
    p = Pair(16, seg_cap=3)
    p.add([(DATA_GPA, 1, 0)] * 5)
    c = one(p)
    assert (c.status, c.ndesc, c.segs) == (ERR_TOO_MANY_SEGS, 5, [])
    finish(p)
    assert p.harvest(4) == [(1, 0)]
    p.check()


# ---------------------------------------------------------------------------
# hostile device (driver side)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [8, 65535, 3])  # out of range, out of range, not outstanding
def test_driver_survives_bad_used_entries(bad_id):
    p = Pair(8)
    p.add([(DATA_GPA, 10, 0)])
    p.add([(DATA_GPA, 10, 0)])
    p.fetch()
    p.push(bad_id, 5, 1)
    p.flush()
    assert p.harvest(8) == []
    assert p.ds.state[DRV_BROKEN] == 1 and p.ds.state[DRV_BAD_USED] == 1
    assert p.add([(DATA_GPA, 10, 0)]) == -1
    assert p.harvest(8) == []
    p.check()


# ---------------------------------------------------------------------------
# garbage fuzz
# ---------------------------------------------------------------------------

ADDRS = [DATA_GPA, DATA_GPA + 4096, DATA_GPA + DATA_SIZE - 16, 0, 0x2000_0000, TBL_GPA, TBL_GPA + 0x40, TBL_GPA + 0x80, (1 << 64) - 16]
LENS = [0, 1, 16, 24, 32, 48, 64, 4096, 0xFFFF_FFFF]
FLAG_BITS = [NEXT, WRITE, INDIRECT]


def garbage(p, rng, feats):
    num = p.num
    pos, wrap = rng.randrange(num), rng.randint(0, 1)
    p.set_dev_base(pos, wrap)
    for i in range(num):
        flags = 0
        for b in FLAG_BITS:
            if rng.random() < (0.35 if b == NEXT else 0.2):
                flags |= b
        lap = wrap if i >= pos else wrap ^ 1
        r = rng.random()
        if r < 0.8:
            flags |= M.avail_flags(lap)
        elif r < 0.9:
            flags |= M.used_flags(lap)
        else:
            flags |= rng.choice((0, AVAIL, USED, AVAIL | USED))
        p.write_desc(i, rng.choice(ADDRS), rng.choice(LENS), rng.randrange(num + 3), flags)
    entries = []
    for _ in range(rng.randint(0, 24)):
        f = WRITE if rng.random() < 0.5 else 0
        if rng.random() < 0.1:
            f |= INDIRECT
        if rng.random() < 0.2:
            f |= NEXT
        entries.append((rng.choice(ADDRS[:5]), rng.choice(LENS), rng.randrange(65536), f))
    if entries:
        p.write_table(TBL_GPA, entries)


def fuzz_round(seed, num, feats, seg_cap):
    rng = random.Random(seed)
    p = Pair(num, feats, seg_cap=seg_cap or 512)
    garbage(p, rng, feats)
    p.check()
    for _ in range(6):
        got = p.fetch(rng.randint(1, 70))
        for c in got:
            assert c.status in (OK, ERR_ADDR, ERR_CHAIN_LOOP, ERR_INDIRECT, ERR_LAYOUT, ERR_TOO_MANY_SEGS, ERR_DESC_INDEX)
            assert 1 <= c.ndesc <= num
        if not got:
            break
    assert p.st[STATE_CHAINS] == p.dev.chains
    p.check()
    if p.inflight:
        picks = rng.sample(range(len(p.inflight)), len(p.inflight))
        p.complete(picks, [rng.randint(0, 100) for _ in picks], inorder_merge=bool(feats & FEAT_IN_ORDER))
        p.flush()
        p.check()
    return p


@settings(max_examples=int(os.environ.get("PACKED_GARBAGE_EXAMPLES", "1000")), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 2**32),
    num=st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 16, 33]),
    feats=st.sampled_from([0, FEAT_INDIRECT, FEAT_INDIRECT | FEAT_EVENT_IDX | FEAT_IN_ORDER]),
    seg_cap=st.sampled_from([None, 1, 2, 5, 64]),
)
def test_garbage_rings_match_model(seed, num, feats, seg_cap):
    fuzz_round(seed, num, feats, seg_cap)


def _hostile_battery():
    test_chain_longer_than_ring(1)
    test_chain_longer_than_ring(100)
    test_chain_loop_overrides_earlier_errors_and_spans_wrap()
    test_readable_after_writable()
    test_buffer_id_out_of_range()
    for addr, length in ((0, 1), (DATA_GPA, 0xFFFF_FFFF), (0xFFFF_FFFF_FFFF_FFF0, 0x20), ((1 << 64) - 16, 0xFFFF_FFFF)):
        test_address_outside_regions(addr, length)
    test_lengths_up_to_4gib_do_not_overflow()
    test_bad_indirect(A1 | INDIRECT, 0x3000_0000, 32, None)
    test_bad_indirect(A1 | INDIRECT, T0, 24, None)
    test_bad_indirect(A1 | INDIRECT, T0, 0xFFFF_FFF0, None)
    test_bad_indirect(A1 | INDIRECT, T0, 32, [(DATA_GPA, 10, 0, 0), (T0, 16, 0, INDIRECT)])
    test_indirect_table_larger_than_seg_arrays()
    test_driver_survives_bad_used_entries(65535)
    for seed in range(300):
        fuzz_round(seed, [1, 3, 7, 16, 33][seed % 5], [0, FEAT_INDIRECT][seed % 2], [None, 2][seed % 3 == 0])


def test_hostile_rings_in_a_forked_child():
    """The whole battery in a child process: it must exit 0 (no crash, no hang, all checks hold)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            _hostile_battery()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        os._exit(code)
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("hostile battery hung")
    assert os.WIFEXITED(status), f"child died by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else '?'}"
    assert os.WEXITSTATUS(status) == 0


def test_kernels_directly_on_garbage_without_harness():
    """Raw kernel calls on pure random bytes (ring and tables), many rounds: bounded results only."""
    rng = np.random.default_rng(1)
    from dataplane.rings.packed import packed_dev_state, packed_vring_alloc
    from dataplane.rings.regions import make_regions
    from dataplane.rings.virtqueue import make_chains

    num = 64
    buf, vr = packed_vring_alloc(num)
    tables = np.zeros(1 << 16, np.uint8)
    regions = make_regions([(0x1000, tables.nbytes, tables.ctypes.data)])
    ch = make_chains(32, 64)
    for r in range(300):
        buf[:] = rng.integers(0, 256, buf.shape[0], dtype=np.uint8)
        tables[:] = rng.integers(0, 256, tables.shape[0], dtype=np.uint8)
        # point some addresses into the mapped area so indirect tables get read
        for i in range(0, num, 3):
            vr.desc_u64[2 * i] = 0x1000 + int(rng.integers(0, 1 << 15)) * 2
            vr.desc_u32[4 * i + 2] = int(rng.integers(0, 64)) * 16
        st = packed_dev_state(num, FEAT_INDIRECT, base=int(rng.integers(0, num)) | (int(rng.integers(0, 2)) << 15))
        total = 0
        for _ in range(8):
            n = packed_dev_fetch(vr, st, regions, ch, 32)
            assert 0 <= n <= 32
            assert all(1 <= ch.ndesc[c] <= num for c in range(n))
            total += n
            if n == 0:
                break
        assert st[STATE_CHAINS] == total
