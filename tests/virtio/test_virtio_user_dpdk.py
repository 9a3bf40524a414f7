"""Our virtio-user against DPDK's vhost back-end (``dpdk-testpmd --vdev net_vhost0``, io forwarding).

Every Rx/Tx path of seed 003 (split: mergeable / non-mergeable / in-order of
both / vectorized; packed: the same) sends 64..1518 B frames and 8000 B
frames built as chains of 2 KiB mbufs on two queues; every frame must come
back on its queue, in order, byte for byte.  Then ``server=1`` with testpmd's
vhost as ``client=1``: killing testpmd takes our link down, restarting it
brings the link up and traffic resumes.
"""

from __future__ import annotations

import os
import time

import numpy as np

import pytest

from dataplane.memory import Memory
from dataplane.memory.mempool import mempool_create
from dataplane.memory.units import MiB
from dataplane.virtio import VirtioUser

from _virtio_support import PATHS, SIZES, TESTPMD, VhostTestpmd, make_packet, round_trip_matrix, send_and_receive, warm_up

pytestmark = pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd is not installed")

QUEUES = 2


@pytest.fixture(scope="module")
def testpmd_server(tmp_path_factory):
    sock = str(tmp_path_factory.mktemp("vu") / "vhost.sock")
    tp = VhostTestpmd(sock, f"vutp{os.getpid()}", queues=QUEUES).start()
    try:
        tp.wait_socket()
        yield tp
    finally:
        tp.stop()


@pytest.fixture
def memory():
    with Memory(192 * MiB, huge=False, file_prefix=f"vut{os.getpid()}") as m:
        yield m


@pytest.mark.parametrize("devargs,rx_path,tx_path", PATHS, ids=[p[0] for p in PATHS])
def test_every_path_round_trips_through_dpdk_vhost(testpmd_server, memory, devargs, rx_path, tx_path):
    round_trip_matrix(testpmd_server.sock, memory, devargs, rx_path, tx_path, QUEUES)
    assert testpmd_server.proc.poll() is None, testpmd_server.log()[-3000:]


def test_server_mode_link_follows_backend_restarts(tmp_path, memory):
    sock = str(tmp_path / "vu-server.sock")
    mp = mempool_create(memory, "vus", 4096, cache_size=0)
    vu = VirtioUser.probe(f"net_virtio_user0,path={sock},queues={QUEUES},server=1", memory, mp)
    events: list[bool] = []
    vu.on_link_change(lambda port, up: events.append(up))
    tp = VhostTestpmd(sock, f"vusv{os.getpid()}", queues=QUEUES, client=True)
    try:
        vu.start()
        assert os.path.exists(sock) and not vu.link_up
        for rnd in range(2):
            tp.start()
            assert vu.wait_link(True, 120), "link did not come up:\n" + tp.log()[-3000:]
            warm_up(vu, mp, range(QUEUES))
            sent = {q: [make_packet(s, i, q) for i, s in enumerate(SIZES * 3)] for q in range(QUEUES)}
            got = send_and_receive(vu, mp, sent)
            assert got == sent, f"round {rnd}: traffic did not resume"
            tp.stop(kill=True)
            assert vu.wait_link(False, 10), "link stayed up after testpmd was killed"
            assert vu.tx_burst(0, []) == 0 and len(vu.rx_burst(0)) == 0
            assert mp.avail_count() == mp.n, "buffers the back-end held were not reclaimed"
        assert events == [True, False, True, False]
        assert vu.connects == 2
    finally:
        tp.stop(kill=True)
        vu.close()
    assert not os.path.exists(sock)
    assert mp.avail_count() == mp.n


@pytest.mark.parametrize("devargs", ["in_order=1", "in_order=0", "packed_vq=1,in_order=1", "packed_vq=1,in_order=0"])
def test_tx_header_in_its_own_descriptor(testpmd_server, memory, devargs):
    """Mbufs with no headroom, and shared (cloned) mbufs, get the virtio-net header from the
    queue's header area in a separate descriptor; the frames still arrive intact."""
    from dataplane.memory.mempool import pktmbuf_clone, pktmbuf_from_bytes, pktmbuf_to_bytes

    mp = mempool_create(memory, "vuh", 4096, cache_size=0)
    vu = VirtioUser.probe(f"net_virtio_user0,path={testpmd_server.sock},queues=1,{devargs}", memory, mp)
    try:
        vu.start()
        warm_up(vu, mp, [0])
        frames = [make_packet(s, i) for i, s in enumerate(SIZES * 4 + [8000] * 4)]
        heads, originals = [], []
        for i, f in enumerate(frames):
            m = pktmbuf_from_bytes(mp, -1, f, 2048)
            if i % 2:
                # no headroom: move the first segment's data to the buffer start
                mb = mp.mbufs[m]
                off, dl = int(mb["buf_off"]), int(mb["data_len"])
                first = mp.data[off + int(mb["data_off"]) : off + int(mb["data_off"]) + dl].copy()
                mp.data[off : off + dl] = first
                mb["data_off"] = 0
                heads.append(m)
            else:
                c = pktmbuf_clone(mp.arrays, -1, m)  # indirect: refcnt of the data is 2
                assert c >= 0
                originals.append(m)
                heads.append(int(c))
        assert [pktmbuf_to_bytes(mp, m) for m in heads] == frames
        got = []
        out = np.empty(32, np.uint32)
        k = 0
        deadline = time.monotonic() + 120  # generous: the first bursts may wait for a numba compile
        while len(got) < len(frames) and time.monotonic() < deadline:
            if k < len(heads) and k - len(got) < 16:
                k += vu.tx_burst(0, np.asarray(heads[k : k + 8], np.uint32))
            n = vu.rx_burst_into(0, out)
            for i in range(n):
                got.append(pktmbuf_to_bytes(mp, int(out[i])))
                mp.free(int(out[i]))
        assert got == frames
        for m in originals:
            mp.free(m)
    finally:
        vu.close()
    assert mp.avail_count() == mp.n


@pytest.mark.parametrize("devargs", ["in_order=1", "in_order=0,mrg_rxbuf=0", "packed_vq=1"])
def test_rx_interrupt_wakes_on_traffic(testpmd_server, memory, devargs):
    """Interrupt mode: an idle queue's fd stays quiet; the first packet back makes it readable."""
    import select

    mp = mempool_create(memory, "vui", 2048, cache_size=0)
    vu = VirtioUser.probe(f"net_virtio_user0,path={testpmd_server.sock},queues=1,{devargs}", memory, mp)
    try:
        vu.start()
        warm_up(vu, mp, [0])
        fd = vu.rx_intr_fd(0)
        assert vu.rx_intr_enable(0) is False, "nothing should be pending after the drain"
        assert select.select([fd], [], [], 0.3)[0] == [], "woken with no traffic"
        frame = make_packet(128, 1)
        from dataplane.memory.mempool import pktmbuf_from_bytes, pktmbuf_to_bytes

        assert vu.tx_burst(0, np.array([pktmbuf_from_bytes(mp, -1, frame)], np.uint32)) == 1
        assert select.select([fd], [], [], 10)[0] == [fd], "no Rx interrupt for the packet"
        vu.rx_intr_disable(0)
        got = vu.rx_burst(0)
        assert len(got) == 1 and pktmbuf_to_bytes(mp, int(got[0])) == frame
        mp.free(int(got[0]))
    finally:
        vu.close()
    assert mp.avail_count() == mp.n
