"""vm2vm through our forwarding engine, in the shape of DPDK DTS's ``vm2vm_virtio_user`` plan.

::

    virtio-user0 --> vhost0 (port 0) --> forwarding lcore (io) --> vhost1 (port 1) --> virtio-user1

The middle is ``python3 -m dataplane.cli ... --vdev net_vhost0,iface=S0 --vdev
net_vhost1,iface=S1 -- -i --forward-mode=io`` run as a real program (driven
over its prompt by :func:`~dataplane.testing.testpmd.dataplane_shell`); the
two ends are :class:`~dataplane.virtio.VirtioUser` ports in this process.

virtio-user0 sends a numbered sequence (64..1518 B frames and 8000 B frames
built as chains of 2 KiB mbufs); virtio-user1 must receive exactly that
sequence: nothing lost, nothing extra, in order, byte for byte (headers
included).  The vhost ports of the engine may drop in the first moments after
link-up (like DPDK's), so marker frames of another ethertype are sent first,
until one comes through; the exact sequence starts only after that.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from dataplane.memory import Memory
from dataplane.memory.mempool import mempool_create, pktmbuf_from_bytes, pktmbuf_to_bytes
from dataplane.memory.units import MiB
from dataplane.testing.testpmd import dataplane_shell
from dataplane.virtio import VirtioUser

from _virtio_support import JUMBO, SIZES, WARMUP_TYPE, make_packet

# devargs of both virtio-user ends: the DTS plan's mergeable and non-mergeable paths,
# split and packed, in-order or not (8000 B frames on every one).
CASES = [
    "mrg_rxbuf=1,in_order=0",               # split, mergeable
    "mrg_rxbuf=1,in_order=1",               # split, in-order mergeable
    "mrg_rxbuf=0,in_order=0",               # split, non-mergeable (chained Rx buffers)
    "packed_vq=1,mrg_rxbuf=1,in_order=0",   # packed, mergeable
    "packed_vq=1,mrg_rxbuf=1,in_order=1",   # packed, in-order mergeable
    "packed_vq=1,mrg_rxbuf=0,in_order=0",   # packed, non-mergeable (big Rx mbufs)
]
REPS = 12
WINDOW = 24  # frames in flight: io forwarding drops (no retry) what virtio-user1's ring cannot take


@pytest.fixture
def memory():
    with Memory(192 * MiB, huge=False, file_prefix=f"vuvm{os.getpid()}") as m:
        yield m


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vm2vm", dir="/tmp")  # short: AF_UNIX paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cpu0():
    """Call to run this thread's poll loops on cpu 0 (the engine's forwarding lcore busy-polls
    cpu 1) once the engine is started (children inherit the mask); restored at the end."""
    old = os.sched_getaffinity(0)
    yield lambda: os.sched_setaffinity(0, {0})
    os.sched_setaffinity(0, old)


def _drain(vu, mp, out, seconds: float) -> int:
    n_all = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n = vu.rx_burst_into(0, out)
        for i in range(n):
            mp.free(int(out[i]))
        n_all += n
        if not n:
            time.sleep(0.001)
    return n_all


def _first_marker_through(vu0, mp0, vu1, mp1, timeout: float) -> None:
    """Send marker frames (ethertype 0x88b6) from virtio-user0 every 50 ms until one reaches
    virtio-user1, then let the ones in flight arrive and drop them."""
    marker = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x09" + WARMUP_TYPE + bytes(50)
    out = np.empty(32, np.uint32)
    deadline = time.monotonic() + timeout
    last = 0.0
    while True:
        assert time.monotonic() < deadline, "no marker frame went through vhost0 -> engine -> vhost1"
        now = time.monotonic()
        if now - last > 0.05:
            last = now
            m = pktmbuf_from_bytes(mp0, -1, marker)
            if vu0.tx_burst(0, np.array([m], np.uint32)) != 1:
                mp0.free(m)
        n = vu1.rx_burst_into(0, out)
        got = [pktmbuf_to_bytes(mp1, int(out[i])) for i in range(n)]
        for i in range(n):
            mp1.free(int(out[i]))
        assert all(g == marker for g in got), "something other than a marker arrived during warm-up"
        if n:
            break
        time.sleep(0.001)
    _drain(vu1, mp1, out, 0.5)
    assert _drain(vu0, mp0, out, 0.05) == 0, "the engine sent something back to virtio-user0"


def _sequence() -> list[bytes]:
    out = []
    for _ in range(REPS):
        for s in SIZES + [JUMBO]:
            out.append(make_packet(s, len(out)))
    return out


def _send_sequence(vu0, mp0, vu1, mp1, frames: list[bytes], timeout: float = 60.0) -> list[bytes]:
    """virtio-user0 sends ``frames`` (at most WINDOW in flight), virtio-user1 collects; then
    0.5 s more of listening, so extra frames would be seen too."""
    pending = [pktmbuf_from_bytes(mp0, -1, f, 2048) for f in frames]
    sent = 0
    got: list[bytes] = []
    out = np.empty(32, np.uint32)
    deadline = time.monotonic() + timeout
    try:
        while len(got) < len(frames) and time.monotonic() < deadline:
            room = WINDOW - (sent - len(got))
            if sent < len(frames) and room > 0:
                k = vu0.tx_burst(0, np.asarray(pending[sent : sent + min(32, room)], np.uint32))
                sent += k
            n = vu1.rx_burst_into(0, out)
            for i in range(n):
                m = int(out[i])
                got.append(pktmbuf_to_bytes(mp1, m))
                mp1.free(m)
            if not n:
                time.sleep(0.0002)
    finally:
        for m in pending[sent:]:
            mp0.free(m)
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        n = vu1.rx_burst_into(0, out)
        for i in range(n):
            m = int(out[i])
            got.append(pktmbuf_to_bytes(mp1, m))
            mp1.free(m)
        time.sleep(0.001)
    return got


@pytest.mark.parametrize("devargs", CASES)
def test_vm2vm_chain_through_engine_keeps_sequence(memory, sockdir, cpu0, devargs):
    s0, s1 = os.path.join(sockdir, "s0.sock"), os.path.join(sockdir, "s1.sock")
    packed_nonmrg = "packed_vq=1" in devargs and "mrg_rxbuf=0" in devargs
    # DPDK-style packed rings without mergeable buffers take jumbo frames in one big mbuf (see
    # round_trip_matrix); the others receive into chains of 2 KiB mbufs.
    room = 9216 + 128 if packed_nonmrg else 2048 + 128
    mp0 = mempool_create(memory, "vm0", 4096, cache_size=0)
    mp1 = mempool_create(memory, "vm1", 4096, cache_size=0, data_room_size=room)
    # dataplane_shell gives the engine its own --file-prefix (dp.prefix) and removes its run dir
    dp = dataplane_shell(["--vdev", f"net_vhost0,iface={s0},queues=1",
                          "--vdev", f"net_vhost1,iface={s1},queues=1"], ["--forward-mode=io"], memory_mb=256)
    vu0 = vu1 = None
    try:
        assert os.path.exists(s0) and os.path.exists(s1), dp.output[-3000:]
        dp.cmd("start")
        cpu0()
        vu1 = VirtioUser.probe(f"net_virtio_user1,path={s1},queues=1,{devargs}", memory, mp1, max_rx_pkt_len=9000,
                               port_id=1)
        vu0 = VirtioUser.probe(f"net_virtio_user0,path={s0},queues=1,{devargs}", memory, mp0)  # sends only
        vu1.start()
        vu0.start()
        assert vu0.link_up and vu1.link_up
        # the first frames may wait for the engine's vring hand-over and a numba compile
        _first_marker_through(vu0, mp0, vu1, mp1, timeout=300)

        dp.cmd("clear port stats all")
        vu0.reset_stats()
        vu1.reset_stats()
        sent = _sequence()
        got = _send_sequence(vu0, mp0, vu1, mp1, sent)

        assert len(got) == len(sent), f"{len(got)} of {len(sent)} frames arrived at virtio-user1"
        bad = [i for i, (a, b) in enumerate(zip(got, sent)) if a != b]
        assert not bad, f"frames differ or out of order from #{bad[0]} (of {len(bad)} differing)"
        assert _drain(vu0, mp0, np.empty(32, np.uint32), 0.05) == 0, "the engine sent something back to virtio-user0"

        nbytes = sum(len(f) for f in sent)
        p0, p1 = dp.port_stats(0), dp.port_stats(1)
        assert p0["RX-packets"] == len(sent) and p0["RX-bytes"] == nbytes and p0["TX-packets"] == 0, p0
        assert p1["TX-packets"] == len(sent) and p1["TX-bytes"] == nbytes and p1["RX-packets"] == 0, p1
        st0, st1 = vu0.stats(), vu1.stats()
        assert st0["opackets"] == len(sent) and st0["obytes"] == nbytes and st0["oerrors"] == 0, st0
        assert st1["ipackets"] == len(sent) and st1["ibytes"] == nbytes, st1
        assert st1["ierrors"] == 0 and st1["rx_nombuf"] == 0, st1

        fwd = dp.stop()  # accumulated since "start": the warm-up markers are in there too
        assert fwd["RX-packets"] >= len(sent) and fwd["TX-packets"] >= len(sent), fwd
    finally:
        for vu in (vu0, vu1):
            if vu is not None:
                vu.close()
        dp.close()
    assert "Traceback" not in dp.output, dp.output[-3000:]
    assert not os.path.exists(f"/var/run/dataplane/{dp.prefix}")
    assert mp0.avail_count() == mp0.n and mp1.avail_count() == mp1.n, "mbufs leaked"
