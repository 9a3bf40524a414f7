"""The forwarding engine over net_ring ports: streams, modes, counters (no external peer needed)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dataplane.apps.engine import Engine, FwdConfig
from dataplane.lcores.eal import Eal
from dataplane.lcores.eal_args import parse_eal_args
from dataplane.rings.ring import ring_lookup


@pytest.fixture
def eal():
    cfg = parse_eal_args(["-l", "0-1", "--no-huge", "-m", "128", "--file-prefix", f"eng{os.getpid()}"])
    e = Eal(cfg, handle_signals=False)
    yield e
    e.close()


def _frames(mp, n: int, size: int = 64) -> np.ndarray:
    hdr = bytes([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00])
    return np.array([mp.from_bytes(hdr + bytes([i & 0xFF]) * (size - 14)) for i in range(n)], np.uint64)


def test_rxonly_counts_and_frees_everything(eal):
    with Engine(eal, FwdConfig(mode="rxonly"), vdevs=parse_eal_args(["--vdev", "net_ring0"]).vdevs) as eng:
        mp = eng.pool
        free0 = mp.audit().in_ring + mp.audit().in_caches
        ring = ring_lookup(eal.memory, "net_ring0_rx0")
        ms = _frames(mp, 100)
        assert ring.enqueue_burst(ms.astype(np.uint64)) == 100
        eng.start()
        deadline = time.monotonic() + 30
        while eng.forward_stats()["rx"] < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        fs = eng.stop()
        assert fs["rx"] == 100 and fs["tx"] == 0 and fs["dropped"] == 0
        ps = eng.port_stats(0)
        assert ps["ipackets"] == 100 and ps["ibytes"] == 6400
        a = mp.audit()
        assert a.in_use == 0


def test_io_loopback_keeps_every_packet(eal):
    """net_ring0 alone is a loopback: io forwarding circulates the same 32 packets; none lost."""
    with Engine(eal, FwdConfig(mode="io"), vdevs=parse_eal_args(["--vdev", "net_ring0,size=64"]).vdevs) as eng:
        mp = eng.pool
        ring = ring_lookup(eal.memory, "net_ring0_rx0")
        assert ring.enqueue_burst(_frames(mp, 32)) == 32
        eng.start()
        deadline = time.monotonic() + 30
        while eng.forward_stats()["rx"] < 100_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        fs = eng.stop()
        assert fs["rx"] >= 100_000 and fs["rx"] - fs["tx"] == 0 and fs["dropped"] == 0
        assert len(ring) == 32 and mp.audit().in_use == 32
        out = np.zeros(32, np.uint64)
        assert ring.dequeue_burst(out) == 32
        assert sorted(mp.to_bytes(int(m))[14] for m in out) == list(range(32))  # payloads intact
        mp.free(out.astype(np.uint32))
        ps = eng.port_stats(0)
        assert ps["ipackets"] == ps["opackets"] == fs["rx"] and ps["obytes"] == 64 * fs["tx"]


def test_start_returns_with_forwarding_on(eal):
    """testpmd's ``start tx_first N``: when ``start`` returns, the lcores forward and their first
    N bursts are out (DTS scripts measure the rate right after start).  The first start also
    loads the loop's code in the lcore process, which takes seconds on a busy machine."""
    with Engine(eal, FwdConfig(mode="rxonly"), vdevs=parse_eal_args(["--vdev", "net_ring0,size=1024"]).vdevs) as eng:
        burst = eng.fwd.burst
        eng.start(tx_first=3)
        assert eng.port_stats(0)["opackets"] == 3 * burst  # read at once: no wait
        eng.stop()
        eng.start(tx_first=2)
        assert eng.port_stats(0)["opackets"] == 5 * burst
        eng.stop()


def test_bad_options_are_refused(eal):
    with pytest.raises(ValueError, match="unknown forwarding mode"):
        Engine(eal, FwdConfig(mode="bogus"), vdevs=parse_eal_args(["--vdev", "net_ring0"]).vdevs)
    from dataplane.ethdev import EthdevError

    with pytest.raises(EthdevError, match="unknown device"):
        Engine(eal, FwdConfig(), vdevs=parse_eal_args(["--vdev", "net_tap0"]).vdevs)
    assert eal.memory.memzones() == []  # a refused configuration leaves nothing behind


def test_txonly_through_the_engine_builds_testpmd_frames(eal):
    """txonly on a loopback port: nobody receives, the ring fills; its frames are testpmd's txonly
    frames (checked with scapy), chained as --txpkts says, and what did not fit is counted as dropped."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    fwd = FwdConfig(mode="txonly", txpkts=[2000, 2000], eth_peer={0: "02:00:00:00:00:09"})
    with Engine(eal, fwd, vdevs=parse_eal_args(["--vdev", "net_ring0,size=64"]).vdevs) as eng:
        mp = eng.pool
        eng.start()
        deadline = time.monotonic() + 30
        while eng.forward_stats()["dropped"] < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        fs = eng.stop()
        ring = ring_lookup(eal.memory, "net_ring0_rx0")
        n = ring.capacity
        assert len(ring) == n and fs["tx"] == n and fs["dropped"] >= 1000
        out = np.zeros(n, np.uint64)
        assert ring.dequeue_burst(out) == n
        for m in out:
            mb = mp.mbufs[int(m)]
            assert mb["nb_segs"] == 2 and mb["pkt_len"] == 4000 and mb["data_len"] == 2000
            pkt = Ether(mp.to_bytes(int(m)))
            assert pkt.src == "02:70:63:61:70:00" and pkt.dst == "02:00:00:00:00:09"
            assert pkt[IP].src == "198.18.0.1" and pkt[IP].dst == "198.18.0.2" and pkt[IP].len == 4000 - 14
            ip = pkt[IP].copy()
            del ip.chksum
            assert pkt[IP].chksum == IP(bytes(ip)).chksum
            assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (9, 9, 4000 - 34)
        mp.free(out.astype(np.uint32))
        assert mp.audit().in_use == 0


@pytest.mark.parametrize("topology, peers", [("paired", [1, 0]), ("chained", [1, 0]), ("loop", [0, 1])])
def test_port_topology_decides_where_each_port_forwards(eal, topology, peers):
    """testpmd's --port-topology over two loopback rings: with paired (and chained, on two
    ports) packets put on port 0 cross to port 1 and back; with loop they never leave port 0."""
    vdevs = parse_eal_args(["--vdev", "net_ring0,size=64", "--vdev", "net_ring1,size=64"]).vdevs
    with Engine(eal, FwdConfig(mode="io", port_topology=topology), vdevs=vdevs) as eng:
        assert [s.tx_port for s in eng.streams] == peers and [eng.fwd_peer(p) for p in (0, 1)] == peers
        ring = ring_lookup(eal.memory, "net_ring0_rx0")
        assert ring.enqueue_burst(_frames(eng.pool, 32)) == 32
        eng.start()
        deadline = time.monotonic() + 60
        while eng.forward_stats()["rx"] < 10_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        fs = eng.stop()
        assert fs["rx"] >= 10_000 and fs["dropped"] == 0
        p0, p1 = eng.port_stats(0), eng.port_stats(1)
        if topology == "loop":
            assert p0["ipackets"] == p0["opackets"] == fs["rx"] and p1["ipackets"] == p1["opackets"] == 0
        else:
            assert p0["opackets"] > 0 and p1["opackets"] > 0 and p0["opackets"] + p1["opackets"] == fs["tx"]


def test_chained_topology_forwards_to_the_next_port_and_the_last_to_the_first():
    vdevs = parse_eal_args(["--vdev", "net_ring0", "--vdev", "net_ring1", "--vdev", "net_ring2"]).vdevs
    eng = Engine.__new__(Engine)  # only the pairing rule: no ports, nothing compiled
    eng.fwd, eng.nb_ports = FwdConfig(port_topology="chained"), len(vdevs)
    assert [eng.fwd_peer(p) for p in range(3)] == [1, 2, 0]
    eng.fwd = FwdConfig(port_topology="paired")
    assert [eng.fwd_peer(p) for p in range(3)] == [1, 0, 2]  # an odd last port with itself


def test_mbuf_size_and_max_pkt_len_reach_the_pool_and_the_ports(eal):
    fwd = FwdConfig(mode="rxonly", mbuf_size=4096, max_pkt_len=9000)
    with Engine(eal, fwd, vdevs=parse_eal_args(["--vdev", "net_ring0"]).vdevs) as eng:
        assert eng.pool.buf_len == 4096 and eng.pool.data_room == 4096 - 128
        assert eng.port_env.max_rx_pkt_len == 9000
    with Engine(eal, FwdConfig(mode="rxonly"), vdevs=parse_eal_args(["--vdev", "net_ring0"]).vdevs) as eng:
        assert eng.pool.buf_len == 2176 and eng.port_env.max_rx_pkt_len == 1518  # testpmd's defaults


@pytest.mark.parametrize("fwd, error", [
    (FwdConfig(mbuf_size=128), "mbuf size 128 out of range 129..65535"),
    (FwdConfig(mode="txonly", txpkts=[3000], mbuf_size=2176), "txpkts segment of 3000 bytes does not fit"),
    (FwdConfig(max_pkt_len=63), "max packet length 63 out of range 64..65535"),
    (FwdConfig(port_topology="ring"), "port topology 'ring' is not one of paired, chained, loop"),
])
def test_bad_dts_options_are_refused(eal, fwd, error):
    with pytest.raises(ValueError, match=error):
        Engine(eal, fwd, vdevs=parse_eal_args(["--vdev", "net_ring0"]).vdevs)
    assert eal.memory.memzones() == []


@pytest.mark.parametrize("mode", ["mac", "macswap", "5tswap", "csum"])
def test_modes_called_through_their_entries_forward_every_packet(eal, mode):
    """Each mode's packet work is a kernel the loop calls through its address: on a loopback
    ring, the same 32 frames go round through it many times, none lost, none leaked."""
    with Engine(eal, FwdConfig(mode=mode), vdevs=parse_eal_args(["--vdev", "net_ring0,size=64"]).vdevs) as eng:
        mp = eng.pool
        ring = ring_lookup(eal.memory, "net_ring0_rx0")
        assert ring.enqueue_burst(_frames(mp, 32)) == 32
        eng.start()
        deadline = time.monotonic() + 60
        while eng.forward_stats()["rx"] < 10_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        fs = eng.stop()
        assert fs["rx"] >= 10_000 and fs["rx"] == fs["tx"] and fs["dropped"] == 0


def test_icmpecho_through_its_entry_drops_what_is_not_an_echo_request(eal):
    with Engine(eal, FwdConfig(mode="icmpecho"), vdevs=parse_eal_args(["--vdev", "net_ring0,size=64"]).vdevs) as eng:
        mp = eng.pool
        ring = ring_lookup(eal.memory, "net_ring0_rx0")
        assert ring.enqueue_burst(_frames(mp, 32)) == 32
        eng.start()
        deadline = time.monotonic() + 60
        while eng.forward_stats()["rx"] < 32 and time.monotonic() < deadline:
            time.sleep(0.05)
        fs = eng.stop()
        assert fs["rx"] == 32 and fs["tx"] == 0
        assert mp.audit().in_use == 0


def test_flowgen_through_its_entry_sends(eal):
    with Engine(eal, FwdConfig(mode="flowgen"), vdevs=parse_eal_args(["--vdev", "net_ring0,size=64"]).vdevs) as eng:
        eng.start()
        deadline = time.monotonic() + 60
        while eng.forward_stats()["tx"] < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        fs = eng.stop()
        assert fs["tx"] >= 1000 and fs["rx"] > 0
