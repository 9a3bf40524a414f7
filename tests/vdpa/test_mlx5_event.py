"""The mlx5 event thread's policy and CQ arithmetic (facts §3.6), on a fake clock."""

import pytest

from dataplane.testing.clock import ManualClock
from dataplane.vdpa.mlx5.event import (
    Action,
    EventCq,
    EventHooks,
    InterruptPolicy,
    TimerPolicy,
    WQE_COUNTER_INIT,
    delay_summary,
    make_policy,
    run_event_thread,
)


def test_cq_size_and_initial_records():
    cq = EventCq(100, cq_id=7)
    assert cq.cq_size == 128 and cq.log_desc_n == 7
    assert cq.sw_qp_dbr == 128 and cq.cq_dbr == 0
    assert EventCq(256).cq_size == 256 and EventCq(1).cq_size == 1
    assert cq.poll(WQE_COUNTER_INIT) == 0  # (u16)(0xFFFF + 1 - 0)
    assert cq.sw_qp_dbr == 128


def test_completion_arithmetic_and_doorbell_records():
    cq = EventCq(256)
    assert cq.poll(2) == 3  # wqe_counter 2: entries 0, 1, 2
    assert (cq.cq_ci, cq.qp_pi, cq.cq_dbr, cq.sw_qp_dbr) == (3, 3, 3, 3 + 256)
    assert cq.poll(2) == 0  # nothing new: records unchanged
    assert (cq.cq_dbr, cq.sw_qp_dbr) == (3, 259)
    assert cq.poll(9) == 7
    assert (cq.cq_ci, cq.qp_pi, cq.sw_qp_dbr) == (10, 10, 266)


def test_completion_wraps_at_16_bits():
    cq = EventCq(64)
    cq.qp_pi = 0xFFFE
    assert cq.completions(0x0001) == 4  # 0xFFFE, 0xFFFF, 0, 1
    assert cq.poll(0x0001) == 4
    assert cq.qp_pi == 2 and cq.sw_qp_dbr == 2 + 64


def test_qp_doorbell_record_is_not_wrapped_at_16_bits():
    cq = EventCq(1024)
    cq.qp_pi = 0xFFF0
    cq.poll(0xFFF4)
    assert cq.qp_pi == 0xFFF5 and cq.sw_qp_dbr == 0xFFF5 + 1024


def test_cq_ci_is_24_bits():
    cq = EventCq(16)
    cq.cq_ci = 0xFFFFFE
    cq.poll(3)
    assert cq.cq_ci == 2 and cq.cq_dbr == 2


def test_arm_doorbell_and_sequence():
    cq = EventCq(16, cq_id=0x1234)
    cq.poll(4)
    db, rec = cq.arm()
    assert rec == 5 and db == (5 << 32) | 0x1234 and cq.armed
    for sn in (1, 2, 3, 0):
        _, rec = cq.arm()
        assert rec >> 28 == sn and rec & 0xFFFFFF == 5
    cq.poll(5)
    assert not cq.armed  # a completion leaves it unarmed


def test_errors_quirk_counts_non_error_opcodes():
    cq = EventCq(16)
    cq.poll(0, opcode=0x0)  # a good completion: counted (DPDK's quirk)
    cq.poll(1, opcode=0xD)
    cq.poll(2, opcode=0xE)
    assert cq.errors == 1


def test_drain_reset():
    cq = EventCq(32)
    cq.poll(4)
    db, rec = cq.drain_reset(wqe_counter=9)
    assert cq.qp_pi == 0 and cq.cq_ci == 10 and rec & 0xFFFFFF == 10
    assert cq.poll(WQE_COUNTER_INIT) == 0  # the driver rewrote wqe_counter to 0xFFFF


def test_dynamic_timer_delays():
    p = TimerPolicy(0, event_us=10, no_traffic_max=100, clock=ManualClock())
    assert p.delay_us == 10
    assert p.after_poll(0) == Action("sleep", 20)
    assert p.after_poll(0) == Action("sleep", 30)
    assert p.after_poll(1) == Action("sleep", 30)
    assert p.after_poll(4) == Action("sleep", 7)  # 30 // 4
    assert p.after_poll(8) == Action("yield")  # 7 // 8 == 0
    assert p.after_poll(0) == Action("sleep", 10)


def test_fixed_timer_delay_and_yield():
    p = TimerPolicy(1, event_us=50, no_traffic_max=100)
    assert [p.after_poll(m) for m in (0, 1, 7, 0)] == [Action("sleep", 50)] * 4
    p = TimerPolicy(1, event_us=0, no_traffic_max=100)
    assert p.after_poll(3) == Action("yield")


def test_no_traffic_counting_blocks_after_max_plus_one_empty_polls():
    p = TimerPolicy(1, event_us=5, no_traffic_max=3)
    assert [p.after_poll(0).kind for _ in range(3)] == ["sleep"] * 3
    assert p.after_poll(0) == Action("arm_and_wait")
    assert p.blocks == 1
    # traffic resets the counter
    p = TimerPolicy(1, event_us=5, no_traffic_max=3)
    for m in (0, 0, 0, 2, 0, 0, 0):
        assert p.after_poll(m).kind == "sleep"
    assert p.after_poll(0).kind == "arm_and_wait"


def test_no_traffic_time_zero_blocks_on_the_first_empty_poll():
    p = TimerPolicy(1, event_us=5, no_traffic_max=0)
    assert p.after_poll(0) == Action("arm_and_wait")


def test_wake_resets_delay_and_counter_then_sleeps_with_max_0():
    p = TimerPolicy(0, event_us=10, no_traffic_max=1)
    p.after_poll(0)
    p.after_poll(0)  # delay 30
    assert p.after_poll(0) == Action("arm_and_wait")
    assert p.woken() == Action("sleep", 20)  # reset to 10, then += 10 (the poll before the block saw 0)
    assert p.no_traffic_counter == 0
    f = TimerPolicy(1, event_us=10, no_traffic_max=0)
    assert f.after_poll(0).kind == "arm_and_wait" and f.woken() == Action("sleep", 10)


def test_policy_uses_the_injected_clock():
    clock = ManualClock(100.0)
    p = TimerPolicy(1, event_us=250, no_traffic_max=5, clock=clock)
    p.after_poll(1)
    assert p.next_poll_at == pytest.approx(100.00025)


def test_make_policy():
    assert isinstance(make_policy(2, 0, 16), InterruptPolicy)
    assert make_policy(0, 1, 16).mode == 0 and make_policy(1, 0, 16).mode == 1
    with pytest.raises(ValueError):
        TimerPolicy(2, 0, 0)


class FakeVirtqs:
    """A card double reduced to event CQs: ``traffic[t]`` completions appear on virtq 0 at poll t."""

    def __init__(self, clock, traffic, wake_after=None):
        self.clock = clock
        self.cqs = [EventCq(256, cq_id=i) for i in range(2)]
        self.hw = [WQE_COUNTER_INIT, WQE_COUNTER_INIT]
        self.traffic = list(traffic)
        self.calls = [0, 0]  # guest interrupts (callfd writes)
        self.polls = self.sleeps = self.yields = self.arms = self.waits = 0
        self.wake_after = wake_after
        self.log = []

    def hw_complete(self, q, n):
        self.hw[q] = (self.hw[q] + n) & 0xFFFF

    def complete(self, q):
        comp = self.cqs[q].poll(self.hw[q])
        if comp:
            self.calls[q] += 1
        return comp

    def poll_all(self):
        if self.polls < len(self.traffic) and self.traffic[self.polls]:
            self.hw_complete(0, self.traffic[self.polls])
        self.polls += 1
        return max(self.complete(q) for q in range(2))

    def arm_all(self):
        self.arms += 1
        for cq in self.cqs:
            cq.arm()
        self.log.append(("block", self.clock()))

    def wait(self):
        self.waits += 1
        self.clock.advance(self.wake_after)
        self.hw_complete(1, 3)
        return 1

    def hooks(self, max_polls):
        return EventHooks(poll_all=self.poll_all, arm_all=self.arm_all, wait=self.wait,
                          complete=self.complete, arm=lambda q: self.cqs[q].arm(),
                          sleep_us=lambda us: (self.clock.advance(us / 1e6), setattr(self, "sleeps", self.sleeps + 1)),
                          yield_cpu=lambda: setattr(self, "yields", self.yields + 1),
                          stop=lambda: self.polls >= max_polls)


def test_timer_loop_interrupts_the_guest_and_falls_back_to_interrupt_wait():
    clock = ManualClock()
    card = FakeVirtqs(clock, traffic=[2, 0, 1, 0, 0, 0, 0], wake_after=5.0)
    policy = TimerPolicy(1, event_us=100, no_traffic_max=3, clock=clock)
    run_event_thread(policy, card.hooks(max_polls=9))
    assert card.calls[0] == 2  # one guest interrupt per poll that found completions
    # polls 3..6 are empty: the 4th empty one (no_traffic_time 3) arms and blocks
    assert card.arms == 1 and card.log[0][1] == pytest.approx(6 * 100e-6)
    assert card.calls[1] == 1 and card.cqs[1].qp_pi == 3  # the virtq that woke it was completed
    assert policy.no_traffic_counter == 2  # reset on wake, then polls 8 and 9 were empty
    assert clock() == pytest.approx(5.0 + 9 * 100e-6)


def test_timer_loop_keeps_waiting_while_events_bring_no_completion():
    clock = ManualClock()
    card = FakeVirtqs(clock, traffic=[], wake_after=1.0)
    seen = []

    def wait():
        seen.append(clock())
        clock.advance(1.0)
        if len(seen) == 3:
            card.hw_complete(0, 1)
            return 0
        return 0  # an event, but virtq 0 shows nothing yet

    hooks = card.hooks(max_polls=2)
    hooks.wait = wait
    policy = TimerPolicy(0, event_us=1, no_traffic_max=0, clock=clock)
    run_event_thread(policy, hooks)
    assert len(seen) == 3 and card.calls[0] == 1


def test_interrupt_mode_completes_and_rearms():
    clock = ManualClock()
    card = FakeVirtqs(clock, traffic=[], wake_after=0.5)
    arms = []
    n = {"w": 0}

    def wait():
        n["w"] += 1
        clock.advance(0.5)
        if n["w"] == 2:
            return None  # a channel error: nothing to do
        card.hw_complete(1, 2)
        return 1

    hooks = card.hooks(max_polls=0)
    hooks.wait = wait
    hooks.arm = lambda q: arms.append(q)
    hooks.stop = lambda: n["w"] >= 4
    policy = InterruptPolicy(clock)
    run_event_thread(policy, hooks)
    assert policy.events == 3 and arms == [1, 1, 1] and card.calls[1] == 3
    assert card.polls == 0 and card.sleeps == 0  # no timer at all in mode 2


def test_delay_summary_in_microseconds():
    assert delay_summary([]) == {"n": 0}
    d = delay_summary([i * 1000 for i in range(1, 101)])  # 1..100 µs
    assert d == {"n": 100, "median": 51.0, "p90": 91.0, "p99": 100.0, "max": 100.0}


@pytest.mark.parametrize("told", [True, False])
def test_interrupt_mode_rearms_after_an_event_whose_poll_finds_nothing(told):
    """Mode 2 against a card that keeps the arm sequence number (an event only for an arm carrying the CQ's sn,
    which then moves on): an event whose poll finds nothing new (here: read before its completion shows) still
    disarmed the CQ on the card, so the driver must arm again -- skipping that arm as "already armed" leaves the CQ silent
    for good, every later completion without an interrupt."""
    clock = ManualClock()
    card = FakeVirtqs(clock, traffic=[], wake_after=0.0)
    cq = card.cqs[0]
    state = {"sn": 0, "armed_sn": None, "ci": 0, "produced": 0, "events": 0}

    def card_arm(q):
        if cq.armed:  # the driver's rule: no second arm while armed (it would carry an sn the card is not at)
            return
        cq.arm()
        state["armed_sn"], state["ci"] = (cq.arm_sn - 1) & 3, cq.cq_ci

    def card_event():
        """The card's side: an event for an arm with the CQ's sn and completions the arm's ci has not reached."""
        if state["armed_sn"] == state["sn"] and state["produced"] != state["ci"]:
            state["sn"] = (state["sn"] + 1) & 3
            state["armed_sn"] = None
            state["events"] += 1
            return True
        return False

    def wait():
        # the first event is read before its completion shows in cqes[0] (the poll after it finds nothing); each
        # later completion wants an event of its own
        for _ in range(3):
            state["produced"] += 1
            if n["w"] > 0:
                card.hw_complete(0, state["produced"] - ((card.hw[0] + 1) & 0xFFFF))
            if card_event():
                n["w"] += 1
                return 0
        n["w"] += 1
        return None

    n = {"w": 0}
    hooks = card.hooks(max_polls=0)
    hooks.wait = wait
    hooks.arm = card_arm
    hooks.disarmed = (lambda q: setattr(card.cqs[q], "armed", False)) if told else None
    hooks.stop = lambda: n["w"] >= 6
    cq.arm()
    state["armed_sn"] = 0
    run_event_thread(InterruptPolicy(clock), hooks)
    if told:
        assert state["events"] >= 4, state  # the CQ kept giving events after the empty one
        assert card.calls[0] >= 4
    else:  # without being told of the event, the driver skips the arm: one event, then silence
        assert state["events"] == 1, state
