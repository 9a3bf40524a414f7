"""An untrusted back-end: bad replies, silence, disconnects give a clear error, never a hang or a leak."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dataplane.memory import Memory
from dataplane.memory.mempool import mempool_create
from dataplane.memory.units import MiB
from dataplane.vhost_user import VhostUserProtocolFeature as PF, VhostUserRequest as R, bit
from dataplane.virtio import DevargsError, VirtioUser, VirtioUserError

from dataplane.testing.vhost_backend import ScriptedBackend, reply


@pytest.fixture
def memory():
    with Memory(32 * MiB, huge=False, file_prefix=f"vuh{os.getpid()}") as m:
        yield m


@pytest.fixture
def mp(memory):
    return mempool_create(memory, "vuh", 2048, cache_size=0)


@pytest.fixture(scope="module", autouse=True)
def warm_kernels(tmp_path_factory):
    """One polite set-up first, so the Rx refill kernel is compiled before the tests time anything."""
    with Memory(32 * MiB, huge=False, file_prefix=f"vuw{os.getpid()}") as mem:
        pool = mempool_create(mem, "vuw", 1024, cache_size=0)
        be = ScriptedBackend(str(tmp_path_factory.mktemp("warm") / "be.sock"))
        vu = VirtioUser.probe(f"net_virtio_user0,path={be.path}", mem, pool)
        try:
            vu.start()
        finally:
            vu.close()
            be.close()


def _open_fds() -> set[int]:
    return {int(f) for f in os.listdir("/proc/self/fd")}


def _probe(path, memory, mp, extra=""):
    return VirtioUser.probe(f"net_virtio_user0,path={path}{extra}", memory, mp, timeout=0.5)


def test_polite_backend_sees_the_whole_sequence(tmp_path, memory, mp):
    be = ScriptedBackend(str(tmp_path / "be.sock"))
    vu = _probe(be.path, memory, mp, ",queues=2")
    try:
        vu.start()
        assert vu.link_up
        names = [n.replace("VHOST_USER_", "") for n in be.received]
        assert names[:6] == ["SET_OWNER", "GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES",
                             "GET_QUEUE_NUM", "SET_FEATURES"]
        assert names.count("SET_VRING_KICK") == names.count("SET_VRING_CALL") == names.count("SET_VRING_ENABLE") == 4
        assert names[-1] == "SET_STATUS" and "SET_MEM_TABLE" in names
        # the mem table is our memory: gpa = uva = iova of each segment
        segs = memory.segments_table()
        assert [(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset) for r in be.mem_regions] == [
            (iova, size, iova, off) for (_fd, off, size, iova) in segs
        ]
        # the back-end goes away: link down, buffers back in the pool
        be.drop_connection()
        assert vu.wait_link(False, 5)
        assert mp.avail_count() == mp.n
    finally:
        vu.close()
        be.close()


@pytest.mark.parametrize(
    "request_,action,reason",
    [
        (R.VHOST_USER_GET_FEATURES, "close", "closed the connection"),
        (R.VHOST_USER_GET_FEATURES, "silence", "no reply"),
        (R.VHOST_USER_GET_FEATURES, reply(R.VHOST_USER_GET_PROTOCOL_FEATURES, bytes(8)), "reply is for"),
        (R.VHOST_USER_GET_FEATURES, reply(R.VHOST_USER_GET_FEATURES, bytes(4)), "payload size 4"),
        (R.VHOST_USER_GET_FEATURES, reply(R.VHOST_USER_GET_FEATURES, bytes(8), flags=1), "lack REPLY"),
        (R.VHOST_USER_GET_FEATURES, reply(R.VHOST_USER_GET_FEATURES, b"")[:8] + (1 << 30).to_bytes(4, "little"), "stream unusable"),
        (R.VHOST_USER_SET_MEM_TABLE, reply(R.VHOST_USER_SET_MEM_TABLE, (1).to_bytes(8, "little")), "refused"),
        (R.VHOST_USER_SET_VRING_ADDR, "close", "closed the connection"),
        (R.VHOST_USER_SET_STATUS, "silence", "no reply"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_backend_gives_a_clear_error(tmp_path, memory, mp, request_, action, reason, capsys):
    be = ScriptedBackend(str(tmp_path / "be.sock"), misbehave=lambda req: action if req == request_ else None)
    before = _open_fds()
    vu = _probe(be.path, memory, mp)
    try:
        t0 = time.monotonic()
        with pytest.raises(VirtioUserError, match="set-up with the back-end"):
            vu.start()
        assert time.monotonic() - t0 < 3, "the front-end waited too long"
        assert not vu.link_up
        err = capsys.readouterr().err
        assert "back-end set-up failed" in err and reason in err
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n
    assert _open_fds() <= before, "fds leaked"


def test_multiqueue_needs_backend_support(tmp_path, memory, mp, capsys):
    be = ScriptedBackend(str(tmp_path / "be.sock"), queue_num=1)
    vu = _probe(be.path, memory, mp, ",queues=2")
    try:
        with pytest.raises(VirtioUserError):
            vu.start()
        assert "back-end supports 1 queue pairs" in capsys.readouterr().err
    finally:
        vu.close()
        be.close()
    be = ScriptedBackend(str(tmp_path / "be2.sock"), protocol_features=bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK))
    vu = _probe(be.path, memory, mp, ",queues=2")
    try:
        with pytest.raises(VirtioUserError):
            vu.start()
        assert "does not offer MQ" in capsys.readouterr().err
    finally:
        vu.close()
        be.close()


def test_no_backend_and_busy_server_path(tmp_path, memory, mp):
    vu = _probe(str(tmp_path / "nobody.sock"), memory, mp)
    with pytest.raises(VirtioUserError, match="cannot connect"):
        vu.start()
    vu.close()
    be = ScriptedBackend(str(tmp_path / "live.sock"))
    vu = _probe(be.path, memory, mp, ",server=1")
    try:
        with pytest.raises(VirtioUserError, match="in use"):
            vu.start()
    finally:
        vu.close()
        be.close()


def test_probe_checks_the_mempool(memory):
    small = mempool_create(memory, "nohr", 64, cache_size=0, data_room_size=8)
    with pytest.raises(DevargsError, match="headroom"):
        VirtioUser.probe("net_virtio_user0,path=/tmp/x", memory, small)
    mp = mempool_create(memory, "std", 64, cache_size=0)
    with pytest.raises(DevargsError, match="mrg_rxbuf"):
        VirtioUser.probe("net_virtio_user0,path=/tmp/x,packed_vq=1,mrg_rxbuf=0", memory, mp, max_rx_pkt_len=9000)


def _device_writes_used(q, slot: int, head: int, length: int) -> None:
    """Play a lying device on split ring ``q``: used entry ``slot`` = {head, length}, used idx = slot + 1."""
    q.vr.used_u32[1 + 2 * slot] = head
    q.vr.used_u32[2 + 2 * slot] = length
    q.vr.used_u16[1] = slot + 1


def _set_num_buffers(mp, m: int, hdr_len: int, value: int) -> None:
    mb = mp.mbufs[m]
    at = int(mb["buf_off"]) + mp.headroom - hdr_len + 10
    mp.data[at : at + 2] = np.frombuffer(int(value).to_bytes(2, "little"), np.uint8)


def test_lying_device_on_the_rx_ring(tmp_path, memory, mp, capsys):
    be = ScriptedBackend(str(tmp_path / "be.sock"))
    vu = _probe(be.path, memory, mp, ",in_order=0")
    try:
        vu.start()
        q = vu._rxq[0]
        heads = [int(h) for h in q.vr.avail[2 : 2 + 4]]
        hdr = vu.hdr_len
        # 1: longer than the buffer we posted
        _set_num_buffers(mp, int(q.ds.cookie[heads[0]]), hdr, 1)
        _device_writes_used(q, 0, heads[0], 100_000)
        assert len(vu.rx_burst(0)) == 0
        assert vu.stats()["ierrors"] == 1
        # 2: num_buffers larger than the ring
        _set_num_buffers(mp, int(q.ds.cookie[heads[1]]), hdr, 1000)
        _device_writes_used(q, 1, heads[1], hdr + 60)
        assert len(vu.rx_burst(0)) == 0
        assert vu.stats()["ierrors"] == 2
        # 3: an honest packet still gets through
        m = int(q.ds.cookie[heads[2]])
        _set_num_buffers(mp, m, hdr, 1)
        _device_writes_used(q, 2, heads[2], hdr + 60)
        got = vu.rx_burst(0)
        assert list(got) == [m] and int(mp.mbufs[m]["pkt_len"]) == 60
        mp.free(m)
        # 4: an id that is not outstanding: the ring is broken, nothing more is taken
        _device_writes_used(q, 3, 4000, hdr + 60)
        assert len(vu.rx_burst(0)) == 0
        assert q.broken and vu.stats()["bad_used"] == 1
        assert vu.wait_link(False, 5), "a corrupted ring must take the link down"
        assert "corrupted virtqueues" in capsys.readouterr().err
        assert mp.avail_count() == mp.n
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n


def test_queue_state_lives_in_shared_memzones(tmp_path, memory, mp):
    """Another process sharing the memory can attach to every queue: ring, driver state and counters."""
    from dataplane.virtio.queue import VirtQueue

    be = ScriptedBackend(str(tmp_path / "be.sock"))
    vu = _probe(be.path, memory, mp, ",queues=2,packed_vq=1")
    try:
        vu.start()
        info = vu.queue_info()
        assert info["packed"] and info["rx_path"] == "virtio_recv_mergeable_pkts_packed" and info["hdr_len"] == 12
        for i, name in enumerate(info["rx_zones"] + info["tx_zones"]):
            own = (vu._rxq + vu._txq)[i]
            q = VirtQueue.attach(memory, name)
            assert (q.index, q.num, q.packed, q.kick_fd) == (own.index, own.num, True, -1)
            assert q.desc_addr == own.desc_addr and q.ds.state.ctypes.data == own.ds.state.ctypes.data
            q.counters[0] += 7
            assert own.counters[0] == 7
            q.close()  # an attached queue does not free the memzone
        assert vu.stats()["q_ipackets"] == [7, 7] and vu.stats()["q_opackets"] == [7, 7]
        with pytest.raises(ValueError, match="no virtio-user queue"):
            VirtQueue.attach(memory, "MP_vuh")
    finally:
        vu.close()
        be.close()


def test_tx_of_a_chain_longer_than_a_packet_may_be(tmp_path, memory, mp):
    """A packet of more segments than a Tx chain may have is consumed, freed and counted, not sent."""
    from dataplane.memory.mempool import pktmbuf_from_bytes

    be = ScriptedBackend(str(tmp_path / "be.sock"))
    vu = _probe(be.path, memory, mp)
    try:
        vu.start()
        long_chain = pktmbuf_from_bytes(mp, -1, bytes(70 * 16), 16)  # 70 segments
        ok = pktmbuf_from_bytes(mp, -1, bytes(100))
        assert vu.tx_burst(0, np.array([long_chain, ok], np.uint32)) == 2
        st = vu.stats()
        assert st["oerrors"] == 1 and st["opackets"] == 1
        assert vu._txq[0].outstanding() == 1
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n


def test_control_queue_is_emulated_locally(tmp_path, memory, mp):
    """cq=1: MQ_VQ_PAIRS_SET becomes SET_VRING_ENABLE (also after a reconnection); RX mode and MAC are local."""
    from dataplane.vhost_user import VringState

    be = ScriptedBackend(str(tmp_path / "be.sock"))
    vu = _probe(be.path, memory, mp, ",queues=2")
    try:
        vu.start()
        with pytest.raises(VirtioUserError, match="cq=1"):
            vu.set_queue_pairs(1)
        with pytest.raises(VirtioUserError, match="cq=1"):
            vu.set_promisc(False)
    finally:
        vu.close()
        be.close()
    be = ScriptedBackend(str(tmp_path / "be2.sock"))
    vu = _probe(be.path, memory, mp, ",queues=2,cq=1,server=0")
    try:
        vu.start()
        del be.messages[:]
        vu.set_queue_pairs(1)
        enables = [VringState.parse(p) for n, p in be.messages if n == "VHOST_USER_SET_VRING_ENABLE"]
        assert [(e.index, e.num) for e in enables] == [(0, 1), (1, 1), (2, 0), (3, 0)]
        m = mp.alloc()
        assert vu.tx_burst(1, np.array([m], np.uint32)) == 0  # pair 1 is off: the mbuf stays ours
        mp.free(m)
        assert len(vu.rx_burst(1)) == 0
        with pytest.raises(VirtioUserError):
            vu.set_queue_pairs(3)
        vu.set_promisc(False)
        vu.set_allmulti(True)
        assert (vu.promisc, vu.allmulti) == (False, True)
        vu.set_mac("02:11:22:33:44:55")
        assert vu.mac == bytes.fromhex("021122334455")
        with pytest.raises(VirtioUserError, match="unicast"):
            vu.set_mac(b"\x01\x00\x5e\x00\x00\x01")
        vu.set_queue_pairs(2)
        enables = [VringState.parse(p) for n, p in be.messages if n == "VHOST_USER_SET_VRING_ENABLE"]
        assert [(e.index, e.num) for e in enables[-4:]] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n


def test_tx_of_a_looping_mbuf_chain_does_not_hang(tmp_path, memory, mp):
    """Corrupt application mbufs (a chain whose next points back): counted, skipped, never spun on."""
    from dataplane.memory.mempool import pktmbuf_from_bytes

    be = ScriptedBackend(str(tmp_path / "be.sock"))
    vu = _probe(be.path, memory, mp)
    try:
        vu.start()
        m = pktmbuf_from_bytes(mp, -1, bytes(64 * 3), 64)
        segs = mp.segments(m)
        mp.mbufs[segs[-1]]["next"] = segs[1]  # loop
        mp.mbufs[segs[1]]["data_len"] = 0
        mp.mbufs[segs[2]]["data_len"] = 0
        t0 = time.monotonic()
        assert vu.tx_burst(0, np.array([m], np.uint32)) == 1
        assert time.monotonic() - t0 < 5 and vu.stats()["oerrors"] == 1
        mp.mbufs[segs[-1]]["next"] = 0xFFFFFFFF  # repair, so the pool can be audited
        mp.free(m)
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n
