"""packed_position_from_flags: the device's position on a packed ring read back from the flags alone,
checked against the device kernel's own state while the ring kernels run single-slot buffers."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane.rings.packed import packed_position_from_flags
from dataplane.rings.virtqueue import (
    STATE_AVAIL_WRAP,
    STATE_LAST_AVAIL,
    STATE_LAST_USED,
    STATE_SHADOW_N,
    STATE_USED_WRAP,
)
from dataplane.testing.virtq_packed_harness import DATA_GPA, Pair


def flags(p: Pair) -> np.ndarray:
    return p.vr.desc_u16[7::8].copy()


@pytest.mark.parametrize("num", [1, 2, 7, 64, 256])
def test_position_read_back_from_the_flags_at_every_step(num):
    """Random adds, fetches, completions and harvests over many laps: whenever the device holds no
    fetched chain, the flags give its fetch position and lap; with fetched chains not yet used,
    they give its used position (those chains would be fetched again)."""
    rng = np.random.default_rng(num)
    p = Pair(num)
    assert packed_position_from_flags(flags(p)) == (0, 1)  # a fresh ring: the initial base
    checked = 0
    for step in range(40 * num + 200):
        op = rng.integers(0, 4)
        if op == 0:
            for _ in range(int(rng.integers(1, num + 1))):
                if p.add([(DATA_GPA + 64 * int(rng.integers(0, 16)), 64, 1)]) < 0:
                    break
        elif op == 1:
            p.fetch(int(rng.integers(1, num + 1)))
        elif op == 2 and p.inflight:
            k = int(rng.integers(1, len(p.inflight) + 1))
            p.complete(list(range(k)), [64] * k)
            p.flush()
        else:
            p.harvest(num)
        st = p.st
        got = packed_position_from_flags(flags(p))
        if p.inflight:
            want = (int(st[STATE_LAST_USED]), int(st[STATE_USED_WRAP]))
        else:
            want = (int(st[STATE_LAST_AVAIL]), int(st[STATE_AVAIL_WRAP]))
        assert st[STATE_SHADOW_N] == 0  # every completion was flushed
        assert got == want, (step, got, want, flags(p))
        checked += 1
    assert checked > 10 * num


def test_chains_of_several_slots_and_torn_flags_give_no_position():
    p = Pair(16)
    p.add([(DATA_GPA, 10, 0), (DATA_GPA + 100, 20, 0), (DATA_GPA + 200, 30, 1)])  # NEXT in two slots
    assert packed_position_from_flags(flags(p)) is None
    f = np.zeros(8, np.uint16)
    f[[1, 5]] = 1 << 7  # two separate runs of available slots
    assert packed_position_from_flags(f) is None
    f = np.full(8, 1 << 7, np.uint16)
    f[3] = 1 << 15  # an available slot of lap 0 amid lap-1 ones: not one run of one lap pattern
    f[4] = 0
    assert packed_position_from_flags(f) is None
    assert packed_position_from_flags(np.zeros(0, np.uint16)) is None
