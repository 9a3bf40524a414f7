"""vdpasim_net's hardware (dataplane.vdpa.sim): TX looped to RX through the receive filter, the cvq, counters.

One hardware process serves the module; each test attaches its own guest
(memory, rings, eventfds) and detaches it.  Counters are cumulative, so tests
compare before/after.
"""

from __future__ import annotations

import os
import struct

import pytest

from dataplane.rings.virtqueue import VRING_AVAIL_F_NO_INTERRUPT
from dataplane.testing.vdpa_sim_guest import SimGuest
from dataplane.vdpa.sim import SimHardware
from dataplane.vdpa.sim.spec import F_CTRL_VQ, F_VERSION_1, NET_STATS_NAMES, VDPASIM_NET_FEATURES

MAC = bytes.fromhex("00e0c0a80001")
SRC = bytes.fromhex("02aabbccddee")
BCAST = b"\xff" * 6
FEATURES = VDPASIM_NET_FEATURES


def frame(dst: bytes, payload: bytes = b"p" * 46, hdr_len: int = 12) -> bytes:
    return bytes(range(1, hdr_len + 1)) + dst + SRC + b"\x08\x00" + payload


@pytest.fixture(scope="module")
def hw():
    h = SimHardware("net", f"tsimnet{os.getpid()}", mac=MAC, mtu=9000)
    h.start()
    yield h
    h.close()


class Dev:
    """The module's hardware with a freshly attached guest, and counter deltas since the attach."""

    def __init__(self, hw: SimHardware, guest: SimGuest, features: int):
        self.hw, self.guest, self.features = hw, guest, features
        self.rx, self.tx = guest.q[0], guest.q[1]
        self.cvq = guest.q.get(2)
        self.base = {q: dict(hw.stats(q)) for q in NET_STATS_NAMES}

    def delta(self, qidx: int) -> dict[str, int]:
        return {k: v - self.base[qidx][k] for k, v in self.hw.stats(qidx)}

    def loop(self, frame_: bytes, rx_len: int = 2048):
        """Post an RX buffer, send ``frame_``; returns (rx used, tx used)."""
        s = self.rx.post_rx(rx_len)
        self.rx.kick()
        self.tx.send(frame_)
        self.tx.kick()
        return s


@pytest.fixture
def dev(hw, request):
    kw = getattr(request, "param", {}) or {}
    features = kw.pop("features", FEATURES)
    qids = kw.pop("qids", [0, 1, 2])
    hw.set_mac(MAC)
    guest = SimGuest(qids, **kw)
    hw.attach(*guest.attach_args(features))
    hw.sync()  # the run an attach starts is over: each kick of the test makes exactly one run
    d = Dev(hw, guest, features)
    try:
        yield d
    finally:
        if hw.alive():
            hw.detach()
        guest.close()


def test_loopback_to_own_mac(dev):
    f = frame(MAC)
    s = dev.loop(f)
    [(slot, n)] = dev.rx.wait_used(1)
    [(_, tx_len)] = dev.tx.wait_used(1)
    assert (slot, n, tx_len) == (s, len(f), 0)
    assert dev.rx.data(slot, n) == f  # header included, bytes equal
    assert dev.delta(0) == {"rx packets": 1, "rx bytes": len(f), "rx errors": 0, "rx overruns": 0, "rx drops": 0}
    assert dev.delta(1) == {"tx packets": 1, "tx bytes": len(f), "tx errors": 0, "tx drops": 0}
    # both completions interrupted the driver
    assert dev.rx.wait_call(10) >= 1 and dev.tx.wait_call(10) >= 1


def test_other_mac_dropped_and_counted(dev):
    s = dev.loop(frame(bytes.fromhex("02e0c0a80001")))
    [(_, tx_len)] = dev.tx.wait_used(1)
    assert tx_len == 0
    assert dev.delta(0)["rx drops"] == 1 and dev.delta(0)["rx packets"] == 0
    assert dev.delta(1)["tx packets"] == 1
    assert dev.rx.harvest() == []  # the RX buffer stays with the device
    f = frame(MAC)  # ... and takes the next good frame
    dev.tx.send(f)
    dev.tx.kick()
    assert dev.rx.wait_used(1) == [(s, len(f))]


@pytest.mark.parametrize("dst", [BCAST, bytes.fromhex("01005e000001"), bytes.fromhex("333300000001")])
def test_broadcast_and_multicast_pass(dev, dst):
    f = frame(dst)
    dev.loop(f)
    [(slot, n)] = dev.rx.wait_used(1)
    assert dev.rx.data(slot, n) == f
    assert dev.delta(0)["rx packets"] == 1


@pytest.mark.parametrize("mac,dst,passes", [
    (bytes.fromhex("001122334455"), bytes.fromhex("009999999999"), True),   # stops at the shared 0x00
    (bytes.fromhex("001122334455"), bytes.fromhex("001122334456"), True),
    (bytes.fromhex("001122334455"), bytes.fromhex("021122334455"), False),
    (bytes.fromhex("aa0022334455"), bytes.fromhex("aa00ffffffff"), True),   # a 0x00 in the middle
    (bytes.fromhex("aa0122334455"), bytes.fromhex("aa0122334466"), False),  # no 0x00: all 6 bytes compared
    (bytes(6), bytes.fromhex("00abcdef0123"), True),                        # default all-zero MAC
    (bytes(6), bytes.fromhex("02abcdef0123"), False),
])
def test_receive_filter_compares_like_strncmp(dev, mac, dst, passes):
    dev.hw.set_mac(mac)
    dev.loop(frame(dst))
    dev.tx.wait_used(1)
    d = dev.delta(0)
    assert (d["rx packets"], d["rx drops"]) == ((1, 0) if passes else (0, 1))


def test_short_frame_dropped(dev):
    dev.loop(bytes(12) + MAC[:5])  # 17 bytes < 6 + 12
    assert dev.tx.wait_used(1)[0][1] == 0
    assert dev.delta(0)["rx drops"] == 1


@pytest.mark.parametrize("dev", [dict(features=FEATURES & ~(1 << F_VERSION_1))], indirect=True)
def test_header_is_10_bytes_without_version_1(dev):
    f = frame(MAC, hdr_len=10)  # with a 12-byte header the filter would read 0x0304.. as the destination
    dev.loop(f)
    [(slot, n)] = dev.rx.wait_used(1)
    assert dev.rx.data(slot, n) == f
    dev.loop(bytes(10) + MAC[:5])  # 15 < 6 + 10: dropped
    dev.tx.wait_used(2)
    assert dev.delta(0)["rx drops"] == 1


def test_overrun_counted_and_stops(dev):
    dev.tx.send(frame(MAC))
    dev.tx.send(frame(MAC, b"q" * 60))
    dev.tx.kick()
    [(_, tx_len)] = dev.tx.wait_used(1)
    assert tx_len == 0
    assert dev.delta(0)["rx overruns"] == 1
    assert dev.delta(1)["tx packets"] == 1  # the loop stopped: the second chain waits for the next kick
    s = dev.rx.post_rx()
    dev.rx.kick()
    [(slot, n)] = dev.rx.wait_used(1)
    assert (slot, n) == (s, len(frame(MAC, b"q" * 60)))
    assert dev.delta(1)["tx packets"] == 2 and dev.delta(0)["rx packets"] == 1


def test_rx_buffer_shorter_than_frame(dev):
    f = frame(MAC, b"z" * 200)
    s = dev.loop(f, rx_len=64)
    [(slot, n)] = dev.rx.wait_used(1)
    assert (slot, n) == (s, 64) and dev.rx.data(slot, 64) == f[:64]
    assert dev.delta(0)["rx bytes"] == 64 and dev.delta(1)["tx bytes"] == len(f)


def test_tx_pulls_at_most_4096_bytes(dev):
    f = frame(MAC, b"j" * 6000)
    dev.loop(f, rx_len=8192)
    [(slot, n)] = dev.rx.wait_used(1)
    assert n == 4096 and dev.rx.data(slot, n) == f[:4096]
    assert dev.delta(1)["tx bytes"] == 4096 and dev.delta(0)["rx bytes"] == 4096


def test_burst_many_frames(dev):
    frames = [frame(MAC, bytes([i]) * (46 + i)) for i in range(40)]
    for _ in frames:
        dev.rx.post_rx()
    dev.rx.kick()
    for f in frames:
        dev.tx.send(f)
    dev.tx.kick()
    got = dev.rx.wait_used(len(frames))
    assert [dev.rx.data(s, n) for s, n in got] == frames
    assert dev.delta(0)["rx packets"] == 40 and dev.delta(0)["rx bytes"] == sum(map(len, frames))


def test_cvq_mac_addr_set(dev):
    new = bytes.fromhex("021122334455")
    s = dev.cvq.ctrl(1, 1, new)
    dev.cvq.kick()
    assert dev.cvq.wait_used(1) == [(s, 1)]
    assert dev.cvq.ack(s) == 0
    assert dev.hw.mac == new and dev.hw.config_space()[:6] == new
    assert dev.delta(2) == {"cvq requests": 1, "cvq successes": 1, "cvq errors": 0}
    assert dev.cvq.wait_call(10) >= 1
    dev.loop(frame(new))  # the filter uses the new MAC at once
    assert dev.rx.wait_used(1)[0][1] == len(frame(new))


@pytest.mark.parametrize("cls,cmd,data", [(1, 2, bytes(6)), (0, 0, b"\x01"), (2, 1, b""), (1, 1, bytes(5))])
def test_cvq_other_commands_answer_err(dev, cls, cmd, data):
    s = dev.cvq.ctrl(cls, cmd, data)
    dev.cvq.kick()
    assert dev.cvq.wait_used(1) == [(s, 1)]
    assert dev.cvq.ack(s) == 1
    assert dev.delta(2) == {"cvq requests": 1, "cvq successes": 0, "cvq errors": 1}
    if (cls, cmd) != (1, 1):
        assert dev.hw.mac == MAC


def test_cvq_short_header_counted_not_completed(dev):
    d = dev.cvq.drv
    slot = d.alloc_slot()
    d.add([(d.data_gpa(slot), 1, False), (d.status_gpa(slot), 1, True)], slot)
    ok = dev.cvq.ctrl(1, 1, bytes.fromhex("021122334455"))
    dev.cvq.kick()
    dev.hw.sync()
    assert dev.delta(2) == {"cvq requests": 1, "cvq successes": 0, "cvq errors": 1}
    assert dev.cvq.harvest() == []
    dev.cvq.notify()  # the next kick goes on with the next request
    assert dev.cvq.wait_used(1) == [(ok, 1)]


@pytest.mark.parametrize("dev", [dict(features=FEATURES & ~(1 << F_CTRL_VQ))], indirect=True)
def test_cvq_not_served_without_ctrl_vq(dev):
    dev.cvq.ctrl(1, 1, bytes.fromhex("021122334455"))
    dev.cvq.kick()
    dev.loop(frame(MAC))  # the device runs (TX served) but the cvq is left alone
    dev.rx.wait_used(1)
    assert dev.cvq.harvest() == [] and dev.hw.mac == MAC
    assert dev.delta(2)["cvq requests"] == 0


def test_nothing_moves_while_a_ring_is_disabled(dev):
    dev.hw.set_vring_state(0, False)
    f = frame(MAC)
    dev.loop(f)
    dev.hw.sync()
    assert dev.delta(1)["tx packets"] == 0 and dev.tx.harvest() == []
    dev.hw.set_vring_state(0, True)
    [(slot, n)] = dev.rx.wait_used(1)
    assert dev.rx.data(slot, n) == f


def test_interrupt_suppressed_when_driver_asks(dev):
    dev.rx.drv.vr.avail[0] = VRING_AVAIL_F_NO_INTERRUPT
    dev.loop(frame(MAC))
    dev.rx.wait_used(1)
    dev.tx.wait_used(1)
    assert dev.tx.wait_call(10) >= 1
    assert dev.rx.calls() == 0


@pytest.mark.parametrize("dev", [dict(kick=False, call=False)], indirect=True)
def test_queues_without_eventfds_are_polled(dev):
    f = frame(MAC)
    dev.loop(f)
    [(slot, n)] = dev.rx.wait_used(1)
    assert dev.rx.data(slot, n) == f


@pytest.mark.parametrize("dev", [dict(packed=True)], indirect=True)
def test_packed_rings(dev):
    frames = [frame(MAC, bytes([i]) * 50) for i in range(100)]  # more than the ring: wraps
    got = []
    for i in range(0, 100, 25):
        for f in frames[i : i + 25]:
            dev.rx.post_rx()
            dev.tx.send(f)
        dev.rx.kick()
        dev.tx.kick()
        got += [dev.rx.data(s, n) for s, n in dev.rx.wait_used(25)]  # before the slots are used again
        dev.tx.wait_used(25)
    assert got == frames
    s = dev.cvq.ctrl(1, 1, MAC)
    dev.cvq.kick()
    assert dev.cvq.wait_used(1) == [(s, 1)] and dev.cvq.ack(s) == 0


def test_detach_returns_indices_and_reattach_resumes(dev):
    for i in range(3):
        dev.loop(frame(MAC, bytes([i]) * 50))
    dev.rx.wait_used(3)
    dev.tx.send(frame(bytes.fromhex("02e0c0a80001")))  # dropped: consumed, completed
    dev.tx.kick()
    dev.tx.wait_used(4)
    idx = dev.hw.detach()
    assert idx[0] == (3, 0, 3, 0) and idx[1] == (4, 0, 4, 0) and idx[2] == (0, 0, 0, 0)
    f = frame(MAC, b"after")
    dev.loop(f)  # while detached nothing is served
    dev.hw.attach(*dev.guest.attach_args(FEATURES, indices=idx))
    [(slot, n)] = dev.rx.wait_used(1)
    assert dev.rx.data(slot, n) == f
    assert dev.hw.detach()[1] == (5, 0, 5, 0)
    # attached again for the fixture's detach
    dev.hw.attach(*dev.guest.attach_args(FEATURES, indices={0: (4, 0, 4, 0), 1: (5, 0, 5, 0)}))


def test_hostile_tx_ring_stops_tx_only(dev):
    d = dev.tx.drv
    d.add([(1 << 40, 64, False)])  # a buffer outside guest memory
    dev.tx.kick()
    dev.hw.sync()
    assert dev.hw.queue_errors() == {1: "bad_address"}
    assert dev.delta(1)["tx errors"] == 1
    assert dev.hw.alive()
    s = dev.cvq.ctrl(1, 1, bytes.fromhex("02aa00000001"))  # the device still serves its cvq
    dev.cvq.kick()
    assert dev.cvq.wait_used(1) == [(s, 1)]
    assert dev.hw.mac == bytes.fromhex("02aa00000001")


def test_hostile_rx_ring_descriptor_loop(dev):
    d = dev.rx.drv
    slot = d.alloc_slot()
    d.add([(d.data_gpa(slot), 64, True), (d.data_gpa(slot) + 64, 64, True)], slot)
    head = int(d.vr.avail[2])
    d.vr.desc_u16[8 * (head + 1) + 6] |= 1  # the second descriptor chains ...
    d.vr.desc_u16[8 * (head + 1) + 7] = head  # ... back to the first: a loop
    dev.rx.kick()
    dev.tx.send(frame(MAC))
    dev.tx.kick()
    assert dev.tx.wait_used(1)[0][1] == 0  # completed with 0, as for a missing buffer
    assert dev.hw.queue_errors() == {0: "chain_loop"}
    assert dev.delta(0)["rx overruns"] == 1
    assert dev.hw.alive()
    dev.tx.send(frame(MAC))  # TX is left alone while RX is stopped
    dev.tx.kick()
    dev.hw.sync()
    assert dev.tx.harvest() == [] and dev.delta(1)["tx packets"] == 1


def test_avail_index_jump(dev):
    dev.tx.drv.vr.avail[1] = 1000  # more than the ring size ahead
    dev.tx.notify()
    dev.hw.sync()
    assert dev.hw.queue_errors() == {1: "avail_idx_jump"}
    assert dev.hw.alive()


def test_stats_names_and_errors(hw):
    assert [n for n, _ in hw.stats(0)] == ["rx packets", "rx bytes", "rx errors", "rx overruns", "rx drops"]
    assert [n for n, _ in hw.stats(1)] == ["tx packets", "tx bytes", "tx errors", "tx drops"]
    assert [n for n, _ in hw.stats(2)] == ["cvq requests", "cvq successes", "cvq errors"]
    for bad in (3, -1, 0x8000):
        with pytest.raises(ValueError):
            hw.stats(bad)


def test_config_space(hw):
    hw.set_mac(MAC)
    cfg = hw.config_space()
    assert cfg[:6] == MAC
    status, max_vqp, mtu = struct.unpack_from("<HHH", cfg, 6)
    assert (status, max_vqp, mtu) == (1, 0, 9000)
    assert len(cfg) == 24 and cfg[12:] == bytes(12)


def test_disable_returns_indices_and_enable_reprograms(dev):
    dev.loop(frame(MAC))
    dev.rx.wait_used(1)
    dev.tx.wait_used(1)
    assert dev.hw.set_vring_state(0, False) == (1, 0, 1, 0)
    assert dev.hw.set_vring_state(0, True) is None
    # a cvq that was not in the attach, programmed when it becomes ready
    dev.hw.detach()
    guest = dev.guest
    features, regions, fds, queues = guest.attach_args(FEATURES)
    dev.hw.attach(features, regions, fds, [q for q in queues if q["qid"] != 2])
    s = dev.cvq.ctrl(1, 1, bytes.fromhex("02000000cafe"))
    dev.cvq.kick()
    dev.hw.sync()
    assert dev.cvq.harvest() == []  # not attached: not served
    dev.hw.set_vring_state(2, True, queue=dev.cvq.spec())
    assert dev.cvq.wait_used(1) == [(s, 1)] and dev.hw.mac == bytes.fromhex("02000000cafe")
    # RX moved to new indices while disabled (the front-end's SET_VRING_BASE): resumes from them
    idx = dev.hw.set_vring_state(0, False)
    assert idx == (1, 0, 1, 0)
    dev.hw.set_vring_state(0, True, queue=dev.rx.spec(indices=idx))
    dev.hw.set_mac(MAC)
    f = frame(MAC, b"again")
    dev.loop(f)
    [(slot, n)] = dev.rx.wait_used(1)
    assert dev.rx.data(slot, n) == f
    with pytest.raises(ValueError):
        dev.hw.set_vring_state(1, True, queue=dict(dev.tx.spec(), used_gpa=1 << 40))


@pytest.mark.parametrize("dev", [dict(num=256)], indirect=True)
def test_numba_driver_loop_streams_through(dev):
    """Frames kept in flight by a numba driver loop (the measurement harness) all arrive intact and counted."""
    from dataplane.testing.vdpa_sim_guest import NetLoopStream

    f = frame(MAC, b"s" * 50)
    ls = NetLoopStream(dev.guest, f)
    got = ls.run(20000)
    assert got >= 20000 and ls.bad == 0
    dev.hw.sync()
    d0, d1 = dev.delta(0), dev.delta(1)
    assert d0["rx packets"] >= got and d0["rx bytes"] == d0["rx packets"] * len(f)
    assert d1["tx packets"] == d0["rx packets"] + d0["rx overruns"]  # every frame pulled: delivered or overrun
    assert d0["rx drops"] == d0["rx errors"] == d1["tx errors"] == 0
