"""Packed ring notification suppression, both ways: ENABLE / DISABLE / DESC (EVENT_IDX).

Scenario tests run on kernels + model (``Pair``); the property tests check
the wrap-adjusted ``vring_need_event`` arithmetic of both decisions against
a brute-force reading of the spec: "notify iff the descriptor at
(offset, wrap) was made available/used since the previous decision".
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.rings.packed import (
    packed_dev_flush_used,
    packed_dev_push_used,
    packed_dev_state,
    packed_drv_init,
    packed_drv_need_kick,
    packed_drv_state,
    packed_vring_alloc,
)
from dataplane.rings.virtqueue import (
    FEAT_EVENT_IDX,
    FEAT_IN_ORDER,
    STATE_SIGNALLED_USED,
    VRING_PACKED_EVENT_FLAG_DESC,
    VRING_PACKED_EVENT_FLAG_DISABLE,
    VRING_PACKED_EVENT_FLAG_ENABLE,
)
from dataplane.testing.virtq_packed_harness import DATA_GPA, Pair

ENABLE, DISABLE, DESC = VRING_PACKED_EVENT_FLAG_ENABLE, VRING_PACKED_EVENT_FLAG_DISABLE, VRING_PACKED_EVENT_FLAG_DESC


def seg(i=0):
    return [(DATA_GPA + 64 * i, 64, 0)]


def serve(p, k=None):
    """Device: fetch everything, complete ``k`` (all) in order, no flush."""
    while p.fetch():
        pass
    k = len(p.inflight) if k is None else k
    p.complete(list(range(k)), [0] * k)


def set_driver_event(p, off, wrap, flags=DESC):
    p.vr.driver_event[:] = (off | (wrap << 15), flags)
    p.ring.driver_event[:] = [off | (wrap << 15), flags]


def set_device_event(p, off, wrap, flags=DESC):
    p.vr.device_event[:] = (off | (wrap << 15), flags)
    p.ring.device_event[:] = [off | (wrap << 15), flags]


# ---------------------------------------------------------------------------
# device -> driver (used buffer interrupts)
# ---------------------------------------------------------------------------


def test_interrupts_enable_disable():
    p = Pair(8)
    p.add(seg())
    serve(p)
    assert p.flush() is True  # ENABLE (zeroed area) -> interrupt
    assert p.intr(False) is False
    assert tuple(p.vr.driver_event) == (0, DISABLE)
    p.add(seg())
    serve(p)
    assert p.flush() is False
    assert p.intr(True) is True  # a used buffer is waiting: do not sleep
    assert tuple(p.vr.driver_event) == (0, ENABLE)
    p.harvest(8)
    assert p.intr(True) is False
    p.add(seg())
    serve(p)
    assert p.flush() is True
    assert p.flush() is False  # nothing new: no interrupt
    p.check()


def test_interrupt_desc_without_event_idx_is_just_enabled():
    p = Pair(8)  # EVENT_IDX not negotiated: DESC is only "not disabled"
    set_driver_event(p, 5, 0)
    p.add(seg())
    serve(p)
    assert p.flush() is True


def test_interrupt_event_idx():
    p = Pair(8, FEAT_EVENT_IDX)
    assert p.intr(True) is False
    assert tuple(p.vr.driver_event) == (0x8000, DESC)  # next used slot 0, wrap 1
    p.add(seg())
    serve(p)
    assert p.flush() is True  # first decision, and slot 0 was written
    p.add(seg())
    serve(p)
    assert p.flush() is False  # event (slot 0) already passed, driver did not re-arm
    assert p.harvest(8) == [(1, 0), (2, 0)]
    assert p.intr(True) is False
    assert tuple(p.vr.driver_event) == (0x8000 | 2, DESC)
    p.add(seg())
    serve(p)
    assert p.flush() is True  # slot 2 written
    p.check()


def test_interrupt_event_idx_counts_positions_written():
    p = Pair(8, FEAT_EVENT_IDX)
    p.intr(True)
    for i in range(5):
        p.add(seg(i))
    while p.fetch():
        pass
    p.complete([0], [0])
    assert p.flush() is True  # first decision
    set_driver_event(p, 3, 1)  # interrupt when slot 3 is used
    p.complete([0], [0])  # slot 1
    assert p.flush() is False
    p.complete([0], [0])  # slot 2
    assert p.flush() is False
    p.complete([0], [0])  # slot 3
    assert p.flush() is True
    p.complete([0], [0])  # slot 4
    assert p.flush() is False
    p.check()


def test_interrupt_event_idx_batch_and_wrap():
    p = Pair(4, FEAT_EVENT_IDX)
    p.intr(True)
    for r in range(3):
        for i in range(3):
            p.add(seg(i))
        serve(p)
        p.flush()
        p.harvest(8)
    # 9 slots used in a ring of 4: used position is slot 1 of the third lap (wrap 1 again)
    assert (p.dev.used_idx, p.dev.used_wrap) == (1, 1)
    set_driver_event(p, 0, 0)  # slot 0 of the NEXT lap
    for i in range(4):
        p.add(seg(i))
    while p.fetch():
        pass
    p.complete([0, 1], [0, 0])  # slots 1, 2 (wrap 1)
    assert p.flush() is False
    p.complete([0, 1], [0, 0])  # slots 3 (wrap 1), 0 (wrap 0): one flush passes the event
    assert p.flush() is True
    p.check()


def test_interrupt_event_idx_in_order_single_entry():
    """IN_ORDER batch: one used descriptor for 3 buffers moves the used position by 3 slots."""
    p = Pair(8, FEAT_EVENT_IDX | FEAT_IN_ORDER)
    p.intr(True)
    p.add(seg())
    serve(p)
    p.flush()
    p.harvest(8)
    set_driver_event(p, 3, 1)
    for i in range(3):
        p.add(seg(i))
    while p.fetch():
        pass
    p.complete([0, 1, 2], [0, 0, 0], inorder_merge=True)
    assert p.dev.pending and len(p.dev.pending) == 1
    assert p.flush() is True  # positions 1..3 passed
    assert p.harvest(8) == [(2, 0), (3, 0), (4, 0)]
    p.check()


def test_interrupt_disable_wins_with_event_idx():
    p = Pair(8, FEAT_EVENT_IDX)
    p.intr(False)
    p.add(seg())
    serve(p)
    assert p.flush() is False
    p.check()


# ---------------------------------------------------------------------------
# driver -> device (available buffer kicks)
# ---------------------------------------------------------------------------


def test_kicks_enable_disable():
    p = Pair(8)
    p.add(seg())
    assert p.kick() is True
    assert p.notify(False) is False
    assert tuple(p.vr.device_event) == (0, DISABLE)
    p.add(seg())
    assert p.kick() is False
    assert p.notify(True) is True  # two buffers already waiting
    assert tuple(p.vr.device_event) == (0, ENABLE)
    while p.fetch():
        pass
    assert p.notify(True) is False
    p.add(seg())
    assert p.kick() is True
    assert p.kick() is True  # ENABLE: a kick even with nothing new (Linux behaviour)
    p.check()


def test_kicks_event_idx():
    p = Pair(8, FEAT_EVENT_IDX)
    assert p.notify(True) is False
    assert tuple(p.vr.device_event) == (0x8000, DESC)
    p.add(seg())
    assert p.kick() is True  # slot 0 made available
    p.add(seg())
    assert p.kick() is False  # device did not ask again
    assert p.kick() is False  # nothing new
    p.fetch()
    assert p.notify(True) is False
    assert tuple(p.vr.device_event) == (0x8000 | 2, DESC)
    p.add(seg())
    p.add(seg())
    assert p.kick() is True  # one decision for both
    p.check()


def test_kicks_event_idx_far_event_and_wrap():
    p = Pair(5, FEAT_EVENT_IDX)
    set_device_event(p, 1, 0)  # slot 1 of the second lap
    for i in range(5):
        p.add(seg(i))
        assert p.kick() is False
    serve(p)
    p.flush()
    p.harvest(8)
    p.add(seg())  # slot 0 lap 0
    assert p.kick() is False
    p.add(seg())  # slot 1 lap 0
    assert p.kick() is True
    p.check()


def test_kick_after_more_than_a_ring():
    """More slots added than the ring holds since the last decision: always kick (unless DISABLE)."""
    p = Pair(4, FEAT_EVENT_IDX)
    set_device_event(p, 3, 0)
    for r in range(2):
        for i in range(3):
            p.add(seg(i))
        serve(p)
        p.flush()
        p.harvest(8)
    assert p.drv.num_added == 6
    assert p.kick() is True
    p.check()


# ---------------------------------------------------------------------------
# arithmetic against the spec's meaning
# ---------------------------------------------------------------------------


def passed(num, start, wrap, k, off, ewrap):
    """Did positions start.. (k of them, from lap ``wrap``) include slot ``off`` of lap ``ewrap``?"""
    period = 2 * num
    a0 = start + (0 if wrap else num)
    e = off + (0 if ewrap else num)
    return (e - a0) % period < k


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    num=st.sampled_from([1, 2, 3, 5, 8, 100, 255, 256, 1000, 32768]),
    data=st.data(),
)
def test_flush_decision_is_the_spec_meaning(num, data):
    start = data.draw(st.integers(0, num - 1))
    wrap = data.draw(st.integers(0, 1))
    k = data.draw(st.integers(1, num))
    off = data.draw(st.integers(0, num - 1))
    ewrap = data.draw(st.integers(0, 1))
    buf, vr = packed_vring_alloc(num)
    stt = packed_dev_state(num, FEAT_EVENT_IDX, base=start | (wrap << 15))
    stt[STATE_SIGNALLED_USED] = start  # a previous decision at this position
    # k slots of used entries, in chunks of random size
    left = k
    while left:
        nd = data.draw(st.integers(1, left))
        packed_dev_push_used(vr, stt, 0, 0, nd)
        left -= nd
    vr.driver_event[:] = (off | (ewrap << 15), DESC)
    assert bool(packed_dev_flush_used(vr, stt)) == passed(num, start, wrap, k, off, ewrap)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    num=st.sampled_from([1, 2, 3, 5, 8, 100, 255, 256, 1000]),
    data=st.data(),
)
def test_kick_decision_is_the_spec_meaning(num, data):
    buf, vr = packed_vring_alloc(num)
    ds = packed_drv_state(num)
    packed_drv_init(vr, ds, num, FEAT_EVENT_IDX)
    start = data.draw(st.integers(0, num - 1))
    wrap = data.draw(st.integers(0, 1))
    k = data.draw(st.integers(0, num))
    off = data.draw(st.integers(0, num - 1))
    ewrap = data.draw(st.integers(0, 1))
    # the driver made k slots available since the last decision, starting at (start, wrap)
    end, ewr = start + k, wrap
    if end >= num:
        end -= num
        ewr ^= 1
    ds.state[2], ds.state[3], ds.state[9] = end, ewr, k  # DRV_AVAIL_IDX, DRV_AVAIL_WRAP, DRV_NUM_ADDED
    vr.device_event[:] = (off | (ewrap << 15), DESC)
    got = bool(packed_drv_need_kick(vr, ds))
    want = passed(num, start, wrap, k, off, ewrap)
    if k < num:
        assert got == want
    else:
        assert got  # a whole ring since the last decision: kick regardless
