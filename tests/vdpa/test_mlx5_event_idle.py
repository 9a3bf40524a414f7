"""The mlx5 event thread at idle, on the emulated ConnectX-6 Dx (facts §3.6), measured without timing thresholds:
the thread's wake-ups (its voluntary context switches, /proc) and CPU time against a polling thread's in the same
window.  Mode 2 sleeps until an event; a timer mode that never gives up polling (no_traffic_time huge) wakes every
event_us; a timer mode blocks once after its empty polls, stays blocked, and every completion wakes it again (no
lost event: the arm that precedes the block carries the CQ's sequence number and consumer index)."""

from __future__ import annotations

import pytest

from dataplane.lcores.threads import thread_name
from dataplane.testing.nic_card import card_in_runtime
from dataplane.testing.vdpa_card import WRITE, connect_guest, post_chain, send_frame, served_vfs, vnet_frame, wait_until
from dataplane.testing.vhost_frontend import eventfd_count
from dataplane.vdpa.mlx5.driver import probe

VF1, VF2 = "0000:00:06.1", "0000:00:06.2"


@pytest.fixture(scope="module")
def card():
    with card_in_runtime(vfs=2, prefix="m5q", model="mlx5") as c:
        yield c


@pytest.fixture
def served(card):
    with served_vfs(probe, {"class": "vdpa"}) as make:
        yield make


def _status(tid: int) -> dict[str, int]:
    """The thread's voluntary context switches (its wake-ups after blocking) and run time in ns."""
    with open(f"/proc/self/task/{tid}/status") as f:
        out = {k: int(v) for k, v in (ln.split(":", 1) for ln in f) if k == "voluntary_ctxt_switches"}
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        out["run_ns"] = int(f.read().split()[0])
    return out


def _tid(dev) -> int:
    assert wait_until(lambda: dev.configured and dev.ev_thread is not None and dev.ev_tid), "no event thread"
    return dev.ev_tid


def _pair(served, args1, args2):
    (p1, d1), (p2, d2) = served(VF1, args1), served(VF2, args2)
    return (p1, d1), (p2, d2)


def test_mode_2_blocks_at_idle_while_a_timer_that_never_gives_up_polls(card, served):
    (p1, quiet), (p2, busy) = _pair(
        served, {"class": "vdpa", "event_mode": "2"},
        {"class": "vdpa", "event_mode": "1", "event_us": "100", "no_traffic_time": "1000000000"})
    g1, fe1 = connect_guest(p1)
    g2, fe2 = connect_guest(p2)
    try:
        tq, tb = _tid(quiet), _tid(busy)
        # the kernel knows the threads by the driver's name (what top -H and the bench look for)
        assert thread_name(tq) == f"vDPA-mlx5-{quiet.vid}" and thread_name(tb) == f"vDPA-mlx5-{busy.vid}"
        q0, b0 = _status(tq), _status(tb)
        # the window: until the polling thread has woken 200 times (every event_us plus Python: well under a second)
        assert wait_until(lambda: _status(tb)["voluntary_ctxt_switches"] - b0["voluntary_ctxt_switches"] >= 200)
        q1, b1 = _status(tq), _status(tb)
        woke = q1["voluntary_ctxt_switches"] - q0["voluntary_ctxt_switches"]
        assert woke <= 2, woke  # blocked on the completion channel all along (its epoll times out every 5 s)
        ran_q, ran_b = q1["run_ns"] - q0["run_ns"], b1["run_ns"] - b0["run_ns"]
        assert ran_b > 0 and ran_q * 20 < ran_b, (ran_q, ran_b)
        assert busy.policy.blocks == 0 and quiet.policy.events == 0
    finally:
        for fe, g in ((fe1, g1), (fe2, g2)):
            fe.close()
            g.close()


@pytest.mark.parametrize("mode", [0, 1])
def test_a_timer_mode_blocks_once_at_idle_and_each_completion_wakes_it(card, served, mode):
    args = {"class": "vdpa", "event_mode": str(mode), "event_us": "100", "no_traffic_time": "4"}
    (p1, dev1), (p2, dev2) = _pair(served, args, args)
    g1, fe1 = connect_guest(p1)
    g2, fe2 = connect_guest(p2)
    try:
        t2 = _tid(dev2)
        _tid(dev1)
        rx, tx = fe2.vrings[0], fe1.vrings[1]
        for _ in range(8):
            post_chain(rx, g2.alloc(2048), 2048, WRITE)
        assert wait_until(lambda: dev2.policy.blocks >= 1), "the thread never fell back to the event channel"
        # blocked, it stays blocked: no wake-up, no new block, while the other VF's thread is as idle
        s0, blocks = _status(t2), dev2.policy.blocks
        assert not wait_until(lambda: _status(t2)["voluntary_ctxt_switches"] > s0["voluntary_ctxt_switches"] + 1,
                              timeout=1.0)
        assert dev2.policy.blocks == blocks
        eventfd_count(rx.call_fd)
        for n in range(1, 7):
            # a frame while the thread is blocked: its completion event wakes it, the guest gets its interrupt,
            # and after no_traffic_time + 1 empty polls it blocks again (arming only the CQs the wake disarmed)
            irq = dev2.interrupts
            send_frame(g1, tx, vnet_frame(1, bytes([n]) * 64))
            assert wait_until(lambda: rx.used_idx == n), f"frame {n} did not arrive"
            assert wait_until(lambda: dev2.interrupts > irq, timeout=5.0), f"no interrupt for frame {n}: a lost event"
            assert wait_until(lambda: eventfd_count(rx.call_fd) >= 1, timeout=5.0)
            assert wait_until(lambda: dev2.policy.blocks > blocks), f"no block after frame {n}"
            blocks = dev2.policy.blocks
        # each interrupt's delay from the card's CQE timestamp (the host's monotonic clock) was recorded
        delays = list(dev2.completion_delays_ns)
        assert len(delays) >= 6 and all(0 < d < 60e9 for d in delays), delays
        summary = dev2.figures()["completion_delay_us"]
        assert summary["n"] == len(delays) and 0 < summary["median"] <= summary["max"]
    finally:
        for fe, g in ((fe1, g1), (fe2, g2)):
            fe.close()
            g.close()
