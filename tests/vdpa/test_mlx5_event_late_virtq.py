"""Interrupt-only event mode (event_mode=2) with a queue pair enabled after the device is configured, as a Linux
guest's second queue pair is (QEMU enables its vrings when the guest sets the number of pairs): the virtq's CQ is
armed while the event thread already runs, so its first event can come before the virtq's set-up has finished.
That event must reach the guest (and the CQ be re-armed): a lost one leaves the CQ disarmed on the card while the
driver believes it armed -- no interrupt for that virtq ever again (an INTx guest then only sees its frames when
another queue interrupts: replies late in bursts, or lost)."""

from __future__ import annotations

import threading

import pytest

from dataplane.hwspec import mlx5_prm as P
from dataplane.testing.nic_card import card_in_runtime
from dataplane.testing.vdpa_card import SPLIT, WRITE, post_chain, send_frame, served_vfs, vnet_frame, wait_until
from dataplane.testing.vhost_frontend import GuestMemoryLayout, VhostUserFrontend, VirtioDeviceStatus, eventfd_count
from dataplane.vdpa.mlx5.driver import probe

VF1 = "0000:00:06.1"


@pytest.fixture(scope="module")
def card():
    with card_in_runtime(vfs=1, prefix="m5l", model="mlx5") as c:
        yield c


@pytest.fixture
def served(card):
    with served_vfs(probe, {"class": "vdpa", "event_mode": "2"}) as make:
        yield make


def _start_one_pair_of_two(path: str):
    """A guest with 2 queue pairs whose second pair is set up but not enabled at DRIVER_OK."""
    guest = GuestMemoryLayout.simple(4 << 20, gpa=0x100000)
    fe = VhostUserFrontend.connect(path, memory=guest)
    fe.negotiate(SPLIT)
    st = VirtioDeviceStatus
    fe.set_status(st.ACKNOWLEDGE | st.DRIVER | st.FEATURES_OK)
    fe.set_mem_table()
    for q in range(4):
        fe.setup_vring(q, 64, enable=q < 2)
    fe.set_status(st.ACKNOWLEDGE | st.DRIVER | st.FEATURES_OK | st.DRIVER_OK)
    fe.sync()
    return guest, fe


def test_the_first_event_of_a_virtq_enabled_while_the_event_thread_runs_is_not_lost(served):
    path, dev = served(VF1)
    guest, fe = _start_one_pair_of_two(path)
    try:
        assert wait_until(lambda: dev.configured and dev.ev_thread is not None), "not configured"
        assert sorted(q for q, v in dev.virtqs.items() if v.running) == [0, 1]
        tx = fe.vrings[3]
        send_frame(guest, tx, vnet_frame(1, b"\x01" * 64))  # pending when the virtq starts (its set-up rings it)
        # the window: the virtq is armed and running, its set-up not finished (the steering update comes next);
        # hold it until the card's event for the chain's completion has been read by the event thread
        prod0 = dev.hw.event_records(P.EVQ_OFF, 0)[0]
        held = threading.Event()
        steer = dev._steer_update

        def slow_steer_update():
            if 3 in dev.virtqs and dev.virtqs[3].running and not held.is_set():
                held.set()
                assert wait_until(lambda: dev.hw.event_records(P.EVQ_OFF, 0)[0] > prod0, timeout=5.0), "no event"
                assert wait_until(lambda: dev._ev_seen > prod0 and not dev._pending, timeout=5.0)
            steer()

        dev._steer_update = slow_steer_update
        eventfd_count(tx.call_fd)
        fe.set_vring_enable(2, True)
        fe.set_vring_enable(3, True)
        fe.sync()
        assert held.is_set(), "the window was not reached"
        assert wait_until(lambda: tx.used_idx == 1), "the pending chain was not taken"
        # every later completion of the virtq interrupts the guest: its CQ was re-armed after that first event
        for n in range(2, 6):
            eventfd_count(tx.call_fd)
            irq = dev.interrupts
            send_frame(guest, tx, vnet_frame(1, bytes([n]) * 64))
            assert wait_until(lambda: tx.used_idx == n), f"chain {n} not taken"
            assert wait_until(lambda: dev.interrupts > irq, timeout=5.0), f"no interrupt for chain {n}: a lost event"
            assert wait_until(lambda: eventfd_count(tx.call_fd) >= 1, timeout=5.0)
        # and the RX virtq enabled with it too
        rx = fe.vrings[2]
        post_chain(rx, guest.alloc(2048), 2048, WRITE)
        assert dev.virtqs[2].running and dev.virtqs[2].cq is not None
    finally:
        fe.close()
        guest.close()
