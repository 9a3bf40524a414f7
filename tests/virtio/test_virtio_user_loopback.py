"""The driver against an in-process device double: our vhost data path (``dataplane.vhost.virtio_net``)
over the very rings the driver built, looping Tx back to Rx.

The control plane is the scripted :class:`~dataplane.testing.vhost_backend.ScriptedBackend`, so the feature set is
ours to choose: this is where the legacy 10-byte header (no VERSION_1, no
MRG_RXBUF) and the other layouts DPDK's back-end always upgrades are proven.
DPDK's back-end (test_virtio_user_dpdk.py) remains the reference.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dataplane.memory import Memory
from dataplane.memory.mempool import mempool_create, pktmbuf_from_bytes, pktmbuf_to_bytes
from dataplane.memory.units import MiB
from dataplane.rings.regions import make_regions
from dataplane.vhost_user import VirtioFeature as VF, bit
from dataplane.vhost.virtio_net import VhostQueue
from dataplane.virtio import VirtioUser

from dataplane.testing.vhost_backend import DEFAULT_PF, ScriptedBackend
from _virtio_support import make_packet

PF_FEAT = bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
V1 = bit(VF.VIRTIO_F_VERSION_1)
MRG = bit(VF.VIRTIO_NET_F_MRG_RXBUF)
IO = bit(VF.VIRTIO_F_IN_ORDER)
PK = bit(VF.VIRTIO_F_RING_PACKED)
EV = bit(VF.VIRTIO_RING_F_EVENT_IDX)

CASES = [
    # offered features, expected header length, expected (rx, tx) paths
    (PF_FEAT, 10, "virtio_recv_pkts", "virtio_xmit_pkts"),  # legacy: 10-byte header
    (PF_FEAT | MRG, 12, "virtio_recv_mergeable_pkts", "virtio_xmit_pkts"),  # legacy + mergeable
    (PF_FEAT | V1 | EV, 12, "virtio_recv_pkts", "virtio_xmit_pkts"),
    (PF_FEAT | V1 | IO | EV, 12, "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),
    (PF_FEAT | V1 | MRG | IO, 12, "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),
    (PF_FEAT | V1 | PK | MRG | EV, 12, "virtio_recv_mergeable_pkts_packed", "virtio_xmit_pkts_packed"),
    (PF_FEAT | V1 | PK | IO, 12, "virtio_recv_pkts_packed", "virtio_xmit_pkts_packed"),
    (0, 10, "virtio_recv_pkts", "virtio_xmit_pkts"),  # no PROTOCOL_FEATURES at all: rings enabled by KICK
]


@pytest.fixture
def memory():
    with Memory(96 * MiB, huge=False, file_prefix=f"vul{os.getpid()}") as m:
        yield m


@pytest.mark.parametrize("offered,hdr_len,rx_path,tx_path", CASES, ids=[f"{c[0]:#x}" for c in CASES])
def test_loopback_through_our_vhost_data_path(tmp_path, memory, offered, hdr_len, rx_path, tx_path):
    be = ScriptedBackend(str(tmp_path / "be.sock"), features=offered, protocol_features=DEFAULT_PF)
    packed = bool(offered & PK)
    mp = mempool_create(memory, "vul", 4096, cache_size=0)
    dev_mp = mempool_create(memory, "vuldev", 2048, cache_size=0)
    vu = VirtioUser.probe(f"net_virtio_user0,path={be.path}" + (",packed_vq=1" if packed else ""), memory, mp,
                          max_rx_pkt_len=1518 if packed else 9000)
    try:
        vu.start()
        assert vu.hdr_len == hdr_len and (vu.paths.rx, vu.paths.tx) == (rx_path, tx_path)
        if not offered & PF_FEAT:
            assert "VHOST_USER_SET_VRING_ENABLE" not in be.received
        # the device double: same process, so guest-physical = iova = our address
        regions = make_regions([(s.iova, s.size, s.addr) for s in memory.segments])
        rxq, txq = vu._rxq[0], vu._txq[0]
        feats = vu.features
        rx_dev = VhostQueue(rxq.desc_addr, rxq.avail_addr, rxq.used_addr, rxq.num, regions=regions, packed=packed,
                            features=feats)
        tx_dev = VhostQueue(txq.desc_addr, txq.avail_addr, txq.used_addr, txq.num, regions=regions, packed=packed,
                            features=feats, read_only=True)
        assert rx_dev.hdr_len == tx_dev.hdr_len == hdr_len
        sizes = [64, 128, 256, 512, 1024, 1518] + ([] if packed and not offered & MRG else [8000])
        frames = [make_packet(s, i) for i, s in enumerate(sizes * 6)]
        got: list[bytes] = []
        k = 0
        out = np.empty(32, np.uint32)
        deadline = time.monotonic() + 120  # generous: the first bursts may wait for a numba compile
        while len(got) < len(frames) and time.monotonic() < deadline:
            if k < len(frames) and k - len(got) < 16:
                m = pktmbuf_from_bytes(mp, -1, frames[k], 2048)
                k += vu.tx_burst(0, np.array([m], np.uint32))
            pk = tx_dev.dequeue(dev_mp, 32)
            if len(pk):
                assert rx_dev.enqueue(dev_mp, pk) == len(pk)
                dev_mp.free(pk)
            n = vu.rx_burst_into(0, out)
            for i in range(n):
                got.append(pktmbuf_to_bytes(mp, int(out[i])))
                mp.free(int(out[i]))
        assert got == frames
        assert rx_dev.stats()["errors"] == tx_dev.stats()["errors"] == 0
        assert vu.stats()["ierrors"] == vu.stats()["oerrors"] == 0
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n and dev_mp.avail_count() == dev_mp.n


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_software_vlan_insert_and_strip(tmp_path, memory, packed):
    """TX_VLAN mbufs leave with an 802.1Q tag; with VLAN strip on, Rx moves it into vlan_tci."""
    from dataplane.memory.mbuf import RTE_MBUF_F_RX_VLAN, RTE_MBUF_F_RX_VLAN_STRIPPED, RTE_MBUF_F_TX_VLAN

    be = ScriptedBackend(str(tmp_path / "be.sock"))
    mp = mempool_create(memory, "vuv", 1024, cache_size=0)
    dev_mp = mempool_create(memory, "vuvdev", 1024, cache_size=0)
    vu = VirtioUser.probe(f"net_virtio_user0,path={be.path}" + (",packed_vq=1" if packed else ""), memory, mp)
    try:
        vu.start()
        regions = make_regions([(s.iova, s.size, s.addr) for s in memory.segments])
        rxq, txq = vu._rxq[0], vu._txq[0]
        rx_dev = VhostQueue(rxq.desc_addr, rxq.avail_addr, rxq.used_addr, rxq.num, regions=regions, packed=packed,
                            features=vu.features)
        tx_dev = VhostQueue(txq.desc_addr, txq.avail_addr, txq.used_addr, txq.num, regions=regions, packed=packed,
                            features=vu.features, read_only=True)

        def loop(frame: bytes, tci: int | None, strip: bool):
            vu.set_vlan_strip(strip)
            m = pktmbuf_from_bytes(mp, -1, frame)
            if tci is not None:
                mp.mbufs[m]["ol_flags"] = RTE_MBUF_F_TX_VLAN
                mp.mbufs[m]["vlan_tci"] = tci
            assert vu.tx_burst(0, np.array([m], np.uint32)) == 1
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                pk = tx_dev.dequeue(dev_mp, 32)
                if len(pk):
                    assert rx_dev.enqueue(dev_mp, pk) == len(pk)
                    dev_mp.free(pk)
                got = vu.rx_burst(0)
                if len(got):
                    r = int(got[0])
                    rec = mp.mbufs[r]
                    res = (pktmbuf_to_bytes(mp, r), int(rec["vlan_tci"]), int(rec["ol_flags"]))
                    mp.free(r)
                    return res
            raise AssertionError("frame did not come back")

        frame = make_packet(200, 1)
        tagged = frame[:12] + b"\x81\x00\x01\x23" + frame[12:]
        data, _tci, flags = loop(frame, 0x123, strip=False)
        assert data == tagged and not flags & RTE_MBUF_F_RX_VLAN
        data, tci, flags = loop(frame, 0x123, strip=True)
        assert data == frame and tci == 0x123
        assert flags & RTE_MBUF_F_RX_VLAN and flags & RTE_MBUF_F_RX_VLAN_STRIPPED
        data, _tci, flags = loop(frame, None, strip=True)  # untagged: untouched
        assert data == frame and not flags & RTE_MBUF_F_RX_VLAN
        # no headroom for the tag: dropped and counted (DPDK's rte_vlan_insert fails the same way)
        m = pktmbuf_from_bytes(mp, -1, frame)
        mp.mbufs[m]["data_off"] = 2
        mp.mbufs[m]["ol_flags"] = RTE_MBUF_F_TX_VLAN
        assert vu.tx_burst(0, np.array([m], np.uint32)) == 1 and vu.stats()["oerrors"] == 1
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n and dev_mp.avail_count() == dev_mp.n


def _kicks(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "no_event_idx"])
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_kicks_follow_the_device_s_notification_requests(tmp_path, memory, packed, event_idx):
    """Tx kicks the back-end exactly when the ring says so: EVENT_IDX (avail_event / off_wrap)
    or the NO_NOTIFY / event flags the device sets."""
    offered = PF_FEAT | V1 | MRG | (PK if packed else 0) | (EV if event_idx else 0)
    be = ScriptedBackend(str(tmp_path / "be.sock"), features=offered)
    mp = mempool_create(memory, "vuk", 1024, cache_size=0)
    dev_mp = mempool_create(memory, "vukdev", 1024, cache_size=0)
    vu = VirtioUser.probe(f"net_virtio_user0,path={be.path}" + (",packed_vq=1" if packed else ""), memory, mp)
    try:
        vu.start()
        assert bool(vu.features & EV) == event_idx
        regions = make_regions([(s.iova, s.size, s.addr) for s in memory.segments])
        txq = vu._txq[0]
        tx_dev = VhostQueue(txq.desc_addr, txq.avail_addr, txq.used_addr, txq.num, regions=regions, packed=packed,
                            features=vu.features, read_only=True)

        def send():
            m = pktmbuf_from_bytes(mp, -1, make_packet(64, 0))
            assert vu.tx_burst(0, np.array([m], np.uint32)) == 1

        def drain_device():
            dev_mp.free(tx_dev.dequeue(dev_mp, 32))

        send()
        drain_device()
        _kicks(txq.kick_fd)
        assert tx_dev.enable_notify(True) is False  # "kick me at the next buffer"
        send()
        assert _kicks(txq.kick_fd) == 1, "no kick although the device asked for one"
        send()  # the device has not looked again
        assert _kicks(txq.kick_fd) == (0 if event_idx else 1)
        drain_device()
        tx_dev.enable_notify(False)
        send()
        assert _kicks(txq.kick_fd) == 0, "kicked a device that asked not to be"
        drain_device()
        vu.tx_burst(0, np.zeros(0, np.uint32))  # reclaims the completed chains
        assert vu.stats()["kicks"] >= 2
    finally:
        vu.close()
        be.close()
    assert mp.avail_count() == mp.n and dev_mp.avail_count() == dev_mp.n
