"""testpmd forwarding-mode kernels (dataplane.apps.fwd_modes) checked with scapy.

Each test builds frames with scapy, puts them into mbufs of a real mempool
(``Mempool.from_bytes``, chained when asked), runs the kernel on the burst,
reads the mbufs back (``Mempool.to_bytes``) and parses the result with scapy:
fields, checksums (against scapy's own recomputation), segment chains.  The
pool is audited after every test: nothing leaked, nothing freed twice.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from dataplane.apps import fwd_modes as F
from dataplane.memory import Memory
from dataplane.memory import mbuf as MB
from dataplane.memory.mempool import mempool_create, mempool_free
from dataplane.memory.units import MiB
from dataplane.net.ether import mac_to_int
from dataplane.rings.jit import kernel

PORT_MAC = "52:54:00:12:34:56"
PEER_MAC = "02:00:00:00:00:02"
HOST_MAC = "52:54:00:aa:bb:cc"
LCORE = 1


@pytest.fixture(scope="module")
def mem():
    with Memory(64 * MiB, huge=False, file_prefix=f"fwdm{os.getpid()}") as m:
        yield m


_pool_ids = itertools.count()


@pytest.fixture
def mp(mem):
    """A pool for one test (with per-lcore caches), checked to be whole again after it."""
    pool = mempool_create(mem, f"fwd{next(_pool_ids)}", 2048, cache_size=32)
    try:
        yield pool
        pool.cache_flush()
        a = pool.audit()
        assert a.in_use == 0, f"mbufs leaked: {a.out[:10]}"
    finally:
        mempool_free(mem, pool)


def burst(mp, frames, seg_size=0):
    """Frames (scapy packets or bytes) into mbufs: the uint32 handle array."""
    return np.array([mp.from_bytes(bytes(f), seg_size=seg_size) for f in frames], np.uint32)


def read(mp, pkts, n=None):
    return [mp.to_bytes(int(m)) for m in pkts[: len(pkts) if n is None else n]]


def free(mp, pkts, n=None):
    mp.free(pkts[: len(pkts) if n is None else n])


def with_fresh_checksums(raw: bytes) -> bytes:
    """``raw`` with every IP/TCP/UDP/ICMP checksum recomputed by scapy."""
    p = Ether(raw)
    for layer in (IP, TCP, UDP, ICMP):
        if layer in p:
            del p[layer].chksum
    return bytes(p)


def eth(**kw):
    """An Ethernet header with explicit addresses (scapy would otherwise resolve them)."""
    kw.setdefault("src", PEER_MAC)
    kw.setdefault("dst", HOST_MAC)
    return Ether(**kw)


def udp_payload(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# -----------------------------------------------------------------------------
# Python helpers
# -----------------------------------------------------------------------------


def test_csum_counters():
    c = F.csum_counters()
    assert c.dtype == np.int64 and c.shape == (F.CSUM_NB_COUNTERS,) and not c.any()


# -----------------------------------------------------------------------------
# mac / macswap
# -----------------------------------------------------------------------------


def sample_frames():
    return [
        Ether(dst=HOST_MAC, src=PEER_MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(udp_payload(30)),
        Ether(dst="ff:ff:ff:ff:ff:ff", src=HOST_MAC) / ARP(psrc="10.0.0.1", pdst="10.0.0.9"),
        Ether(dst=HOST_MAC, src=PEER_MAC) / Dot1Q(vlan=7) / IPv6() / TCP() / Raw(udp_payload(200, 1)),
    ]


def test_fwd_mac(mp):
    frames = sample_frames()
    pkts = burst(mp, frames)
    pkts = np.concatenate([pkts, burst(mp, [b"\x01" * 10])])  # runt: untouched
    F.fwd_mac(mp.arrays, pkts, len(pkts), mac_to_int(PEER_MAC), mac_to_int(PORT_MAC))
    out = read(mp, pkts)
    for f, raw in zip(frames, out):
        p = Ether(raw)
        assert p.dst == PEER_MAC and p.src == PORT_MAC
        assert raw[12:] == bytes(f)[12:]
    assert out[-1] == b"\x01" * 10
    free(mp, pkts)


def test_fwd_mac_only_first_n(mp):
    frames = sample_frames()
    pkts = burst(mp, frames)
    F.fwd_mac(mp.arrays, pkts, 1, mac_to_int(PEER_MAC), mac_to_int(PORT_MAC))
    out = read(mp, pkts)
    assert Ether(out[0]).dst == PEER_MAC
    assert out[1:] == [bytes(f) for f in frames[1:]]
    free(mp, pkts)


def test_fwd_macswap(mp):
    frames = sample_frames()
    pkts = burst(mp, frames, seg_size=60)  # chained: only the first segment changes
    F.fwd_macswap(mp.arrays, pkts, len(pkts))
    for f, raw in zip(frames, read(mp, pkts)):
        p = Ether(raw)
        assert (p.dst, p.src) == (f.src, f.dst)
        assert raw[12:] == bytes(f)[12:]
    # twice is the identity
    F.fwd_macswap(mp.arrays, pkts, len(pkts))
    assert read(mp, pkts) == [bytes(f) for f in frames]
    free(mp, pkts)


# -----------------------------------------------------------------------------
# 5tswap
# -----------------------------------------------------------------------------


def swapped(frame):
    """What testpmd's 5tswap makes of ``frame``: scapy's own swap of every layer it knows."""
    p = Ether(bytes(frame))
    p.src, p.dst = p.dst, p.src
    for layer in (IP, IPv6):
        if layer in p:
            p[layer].src, p[layer].dst = p[layer].dst, p[layer].src
    for layer in (TCP, UDP):
        if layer in p:
            p[layer].sport, p[layer].dport = p[layer].dport, p[layer].sport
    return bytes(p)


def five_tuple_frames():
    """(frame, l2_len, l3_len, l4_len) that 5tswap parses to the end."""
    return [
        (eth() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=5001, flags="S"), 14, 20, 20),
        (eth() / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01" * 8) / UDP(sport=7, dport=9) / Raw(b"x" * 30),
         14, 28, 8),
        (eth() / Dot1Q(vlan=7) / IPv6(src="fd00::1", dst="fd00::2:3") / TCP(sport=1, dport=2, options=[("MSS", 1460)])
         / Raw(udp_payload(300)), 18, 40, 24),
        (eth(type=0x88A8) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IPv6(src="2001:db8::a", dst="2001:db8::b") / UDP(sport=53,
         dport=5353), 22, 40, 8),
    ]


def test_fwd_5tswap_swaps_mac_ip_and_ports(mp):
    cases = five_tuple_frames()
    for c in cases:  # every case really has distinct sources and destinations
        assert swapped(c[0]) != bytes(c[0])
    pkts = burst(mp, [c[0] for c in cases], seg_size=80)  # chained: headers in the first segment
    F.fwd_5tswap(mp.arrays, pkts, len(pkts))
    for (frame, l2, l3, l4), m, raw in zip(cases, pkts, read(mp, pkts)):
        assert raw == swapped(frame), Ether(raw).show2(dump=True)
        check_checksums(raw)  # swaps keep every checksum right
        mb = mp.mbufs[int(m)]
        assert (mb["l2_len"], mb["l3_len"], mb["l4_len"]) == (l2, l3, l4)
    F.fwd_5tswap(mp.arrays, pkts, len(pkts))  # twice is the identity
    assert read(mp, pkts) == [bytes(c[0]) for c in cases]
    free(mp, pkts)


def test_fwd_5tswap_stops_at_the_first_layer_it_does_not_know(mp):
    """ARP: MACs only; ICMP: MACs and addresses; IPv6 extension headers are not walked (testpmd neither)."""
    from scapy.layers.inet6 import IPv6ExtHdrHopByHop

    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src=HOST_MAC) / ARP(psrc="10.0.0.1", pdst="10.0.0.9")
    icmp = eth() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / Raw(b"p" * 20)
    hbh = eth() / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2)
    frames = [arp, icmp, hbh]
    pkts = burst(mp, frames)
    F.fwd_5tswap(mp.arrays, pkts, len(pkts))
    out = [Ether(r) for r in read(mp, pkts)]
    assert (out[0].dst, out[0].src) == (HOST_MAC, "ff:ff:ff:ff:ff:ff") and bytes(out[0])[12:] == bytes(arp)[12:]
    assert bytes(out[1]) == swapped(icmp)
    assert (out[2][IPv6].src, out[2][IPv6].dst) == ("fd00::2", "fd00::1")
    assert (out[2][UDP].sport, out[2][UDP].dport) == (1, 2)  # behind the extension header: untouched
    free(mp, pkts)


def test_fwd_5tswap_leaves_what_is_not_in_the_frame(mp):
    """Where testpmd reads past a short frame, the kernel stops: truncated tags, IP and L4 headers,
    and the payload of a later IPv4 fragment (its first bytes are not ports)."""
    full = eth() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=2000)
    v6 = eth() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2)
    frag = eth() / IP(src="10.0.0.1", dst="10.0.0.2", frag=100, proto=17) / Raw(b"\x11\x11\x22\x22" * 4)
    first = eth() / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP(sport=5, dport=6) / Raw(b"z" * 16)
    cases = [
        (b"\x01" * 10, b"\x01" * 10),  # runt: untouched
        (bytes(eth(type=0x8100)) + b"\x00", None),  # tag cut short: MACs only
        (bytes(full)[:14 + 19], None),  # IP header cut short: MACs only
        (bytes(full)[:14 + 20 + 19], "ip"),  # TCP header cut short: MACs and addresses
        (bytes(v6)[:14 + 39], None),
        (bytes(frag), "ip"),
        (bytes(first), "all"),
    ]
    pkts = burst(mp, [c[0] for c in cases])
    F.fwd_5tswap(mp.arrays, pkts, len(pkts))
    out = read(mp, pkts)
    assert out[0] == cases[0][1]
    for (raw_in, what), raw in zip(cases[1:], out[1:]):
        assert len(raw) == len(raw_in)
        assert raw[:6] == raw_in[6:12] and raw[6:12] == raw_in[:6]
        if what is None:
            assert raw[12:] == raw_in[12:]
        elif what == "ip":
            assert raw[26:30] == raw_in[30:34] and raw[30:34] == raw_in[26:30]
            assert raw[34:] == raw_in[34:]
        else:
            assert raw == swapped(raw_in)
    free(mp, pkts)


# -----------------------------------------------------------------------------
# csum
# -----------------------------------------------------------------------------


def corrupt(frame, layer, value=0x1234):
    """``frame`` built with a wrong checksum in ``layer`` (others correct)."""
    p = Ether(bytes(frame))
    p[layer].chksum = value
    return p


def csum_cases():
    """(name, frame, expect_bad_ip, expect_bad_l4) tuples."""
    pl = udp_payload
    v4udp = Ether(src=PEER_MAC, dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=5, dport=6) / Raw(pl(50))
    v4tcp = Ether(src=PEER_MAC, dst=HOST_MAC) / IP(src="10.1.0.1", dst="10.1.0.2") / TCP(sport=7, dport=8) / Raw(pl(77, 2))
    v6tcp = eth() / IPv6(src="fd00::1", dst="fd00::2") / TCP() / Raw(pl(33, 3))
    v6udp = eth() / IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(pl(20, 4))
    vlan_tcp = eth() / Dot1Q(vlan=100) / IP(src="1.2.3.4", dst="5.6.7.8") / TCP() / Raw(pl(41, 5))
    qinq_udp = eth() / Dot1Q(type=0x8100, vlan=2) / Dot1Q(vlan=3) / IP() / UDP() / Raw(pl(9, 6))
    opts = eth() / IP(options=b"\x01\x01\x01\x00") / UDP() / Raw(pl(15, 7))
    return [
        ("v4udp ok", v4udp, 0, 0),
        ("v4udp bad ip", corrupt(v4udp, IP), 1, 0),
        ("v4udp bad l4", corrupt(v4udp, UDP), 0, 1),
        ("v4udp bad both", corrupt(corrupt(v4udp, IP), UDP), 1, 1),
        ("v4tcp bad l4", corrupt(v4tcp, TCP, 0), 0, 1),
        ("v4tcp ok", v4tcp, 0, 0),
        ("v6tcp bad", corrupt(v6tcp, TCP), 0, 1),
        ("v6udp ok", v6udp, 0, 0),
        ("vlan tcp bad ip+l4", corrupt(corrupt(vlan_tcp, IP), TCP), 1, 1),
        ("qinq udp bad l4", corrupt(qinq_udp, UDP, 0xBEEF), 0, 1),
        ("ip options bad ip", corrupt(opts, IP), 1, 0),
    ]


def check_checksums(raw):
    assert raw == with_fresh_checksums(raw), Ether(raw).show2(dump=True)


def test_fwd_csum_single_segment(mp):
    cases = csum_cases()
    pkts = burst(mp, [c[1] for c in cases])
    counters = F.csum_counters()
    F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
    for (name, frame, _bi, _bl), m, raw in zip(cases, pkts, read(mp, pkts)):
        check_checksums(raw)
        before, after = Ether(bytes(frame)), Ether(raw)
        # only checksums change
        for layer in (IP, TCP, UDP):
            if layer in before:
                before[layer].chksum = after[layer].chksum
        assert bytes(before) == raw, name
        mb = mp.mbuf(int(m))
        v6 = IPv6 in after
        assert int(mb["ol_flags"]) == (MB.RTE_MBUF_F_TX_IPV6 if v6 else MB.RTE_MBUF_F_TX_IPV4), name
        assert int(mb["l2_len"]) == 14 + 4 * after.layers().count(Dot1Q), name
        l3 = after[IPv6] if v6 else after[IP]
        assert int(mb["l3_len"]) == (40 if v6 else l3.ihl * 4), name
        assert int(mb["l4_len"]) == (after[TCP].dataofs * 4 if TCP in after else 8), name
    assert counters[F.CSUM_BAD_IP] == sum(c[2] for c in cases)
    assert counters[F.CSUM_BAD_L4] == sum(c[3] for c in cases)
    assert counters[F.CSUM_IPV6] == 2
    assert counters[F.CSUM_IPV4] == len(cases) - 2
    assert counters[F.CSUM_TCP] + counters[F.CSUM_UDP] == len(cases)
    assert counters[F.CSUM_NOT_PARSED] == 0
    # a second pass finds everything correct and changes nothing
    out = read(mp, pkts)
    counters[:] = 0
    F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
    assert read(mp, pkts) == out
    assert counters[F.CSUM_BAD_IP] == 0 and counters[F.CSUM_BAD_L4] == 0
    free(mp, pkts)


def test_fwd_csum_l2_lengths(mp):
    frames = [
        eth() / IP() / UDP(),
        eth() / Dot1Q() / IP() / UDP(),
        eth() / Dot1Q(type=0x8100) / Dot1Q() / IP() / UDP(),
    ]
    pkts = burst(mp, frames)
    F.fwd_csum(mp.arrays, pkts, len(pkts), F.csum_counters())
    assert [int(mp.mbuf(int(m))["l2_len"]) for m in pkts] == [14, 18, 22]
    free(mp, pkts)


@pytest.mark.parametrize("seg_size", [100, 101, 7, 64])
def test_fwd_csum_chained(mp, seg_size):
    """The L4 checksum covers a payload spread over many segments (odd sizes too)."""
    hdr = Ether(src=PEER_MAC, dst=HOST_MAC) / IP(src="192.168.1.1", dst="192.168.1.2")
    frames = [
        corrupt(hdr / UDP(sport=1, dport=2) / Raw(udp_payload(1401, 8)), UDP),
        corrupt(hdr / TCP() / Raw(udp_payload(999, 9)), TCP, 0xFFFF),
        hdr / UDP() / Raw(udp_payload(500, 10)),
    ]
    if seg_size < 60:
        # headers must be in the first segment: a tiny first segment is left alone
        pkts = burst(mp, frames, seg_size=seg_size)
        counters = F.csum_counters()
        F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
        assert counters[F.CSUM_NOT_PARSED] == len(frames)
        assert read(mp, pkts) == [bytes(f) for f in frames]
        free(mp, pkts)
        return
    pkts = burst(mp, frames, seg_size=seg_size)
    assert all(len(mp.segments(int(m))) > 5 for m in pkts)
    counters = F.csum_counters()
    F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
    assert counters[F.CSUM_BAD_L4] == 2 and counters[F.CSUM_BAD_IP] == 0
    for raw in read(mp, pkts):
        check_checksums(raw)
    assert [len(mp.segments(int(m))) for m in pkts] == [
        -(-len(bytes(f)) // seg_size) for f in frames
    ]
    free(mp, pkts)


@pytest.mark.parametrize("seed", [2211, 7, 42])
def test_fwd_csum_random(mp, seed):
    """Random IPv4/IPv6 TCP/UDP frames, sizes, chains and corruptions against scapy."""
    rng = np.random.default_rng(seed)
    frames, bad_ip, bad_l4, seg_sizes = [], 0, 0, []
    for i in range(60):
        v6 = bool(rng.integers(2))
        l3 = IPv6(src=f"fd00::{i + 1:x}", dst="fd00::99") if v6 else IP(src=f"10.2.{i}.1", dst="10.3.0.1", ttl=int(rng.integers(1, 255)))
        l4 = TCP(sport=int(rng.integers(1, 65535)), seq=int(rng.integers(0, 2**32))) if rng.integers(2) else UDP(sport=int(rng.integers(1, 65535)))
        f = Ether(bytes(eth() / l3 / l4 / Raw(udp_payload(int(rng.integers(0, 3000)), i))))
        if not v6 and rng.integers(2):
            f[IP].chksum ^= 0x0101
            bad_ip += 1
        layer = TCP if TCP in f else UDP
        if rng.integers(2):
            f[layer].chksum ^= int(rng.integers(1, 0xFFFF)) or 1
            # a UDP/IPv4 checksum turned 0 means "none": not bad, left alone
            bad_l4 += not (layer is UDP and not v6 and f[layer].chksum == 0)
        frames.append(f)
        seg_sizes.append(int(rng.choice([0, 80, 101, 200, 999])))  # headers fit in segment 0
    pkts = np.array([mp.from_bytes(bytes(f), seg_size=s) for f, s in zip(frames, seg_sizes)], np.uint32)
    counters = F.csum_counters()
    F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
    assert (counters[F.CSUM_BAD_IP], counters[F.CSUM_BAD_L4]) == (bad_ip, bad_l4)
    for f, raw in zip(frames, read(mp, pkts)):
        if UDP in f and IP in f and f[UDP].chksum == 0:
            assert Ether(raw)[UDP].chksum == 0
            continue
        check_checksums(raw)
    free(mp, pkts)


def test_fwd_csum_passes_others_unchanged(mp):
    v4 = eth() / IP(src="10.9.9.1", dst="10.9.9.2")
    frames = [
        eth() / ARP(),  # not IP
        b"\x00" * 8,  # runt
        eth(type=0x88B5) / Raw(b"junk" * 10),  # unknown ethertype
        bytes(eth() / IP() / UDP())[:30],  # IPv4 header cut short
        eth() / Dot1Q(type=0x8100),  # tags without payload
    ]
    pkts = burst(mp, frames)
    counters = F.csum_counters()
    F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
    assert read(mp, pkts) == [bytes(f) for f in frames]
    assert counters[F.CSUM_NOT_PARSED] == len(frames)
    assert counters[F.CSUM_BAD_IP] == counters[F.CSUM_BAD_L4] == 0
    free(mp, pkts)

    # UDP checksum 0 on IPv4 = "no checksum": kept (testpmd); the IP header is still fixed
    no_ck = Ether(bytes(v4 / UDP(chksum=0) / Raw(b"x" * 20)))
    icmp = corrupt(v4 / ICMP(), IP)
    frag = corrupt(eth() / IP(flags="MF", frag=0) / UDP() / Raw(b"y" * 40), IP)
    v6zero = Ether(bytes(eth() / IPv6() / UDP(chksum=0) / Raw(b"z" * 12)))
    frames = [no_ck, icmp, frag, v6zero]
    pkts = burst(mp, frames)
    counters[:] = 0
    F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
    out = [Ether(r) for r in read(mp, pkts)]
    assert out[0][UDP].chksum == 0 and bytes(out[0]) == bytes(no_ck)
    assert bytes(out[1]) == with_fresh_checksums(bytes(icmp))  # ICMP itself untouched, IP fixed
    assert out[1][ICMP].chksum == icmp[ICMP].chksum
    assert out[2][UDP].chksum == frag[UDP].chksum  # a fragment: L4 left alone
    assert out[2][IP].chksum == Ether(with_fresh_checksums(bytes(frag)))[IP].chksum
    check_checksums(bytes(out[3]))  # IPv6 UDP checksum 0 is invalid: rewritten
    assert out[3][UDP].chksum != 0
    assert counters[F.CSUM_BAD_IP] == 2 and counters[F.CSUM_BAD_L4] == 1
    free(mp, pkts)


def test_fwd_csum_ip_length_past_frame(mp):
    f = Ether(bytes(eth() / IP(len=400) / UDP() / Raw(b"q" * 30)))
    pkts = burst(mp, [f])
    counters = F.csum_counters()
    F.fwd_csum(mp.arrays, pkts, 1, counters)
    out = Ether(read(mp, pkts)[0])
    assert out[UDP].chksum == f[UDP].chksum  # L4 untouched
    assert counters[F.CSUM_NOT_PARSED] == 1
    free(mp, pkts)


def test_fwd_csum_rx_flags(mp):
    """Rx flags decide before software: BAD counts, GOOD is trusted, a pending
    Tx checksum request (partial sum from a guest) is completed, not counted."""
    good = eth() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(b"a" * 31)
    partial = corrupt(good, TCP, 0x4242)
    pkts = burst(mp, [good, partial, partial, good])
    flags = [
        MB.RTE_MBUF_F_RX_IP_CKSUM_BAD | MB.RTE_MBUF_F_RX_L4_CKSUM_BAD,  # hardware said bad
        MB.RTE_MBUF_F_TX_TCP_CKSUM | MB.RTE_MBUF_F_TX_IPV4,  # legacy vhost: NEEDS_CSUM
        MB.RTE_MBUF_F_RX_L4_CKSUM_NONE,  # compliant vhost: NEEDS_CSUM
        MB.RTE_MBUF_F_RX_IP_CKSUM_GOOD | MB.RTE_MBUF_F_RX_L4_CKSUM_GOOD,
    ]
    for m, fl in zip(pkts, flags):
        mp.mbuf(int(m))["ol_flags"] = fl
    counters = F.csum_counters()
    F.fwd_csum(mp.arrays, pkts, len(pkts), counters)
    assert counters[F.CSUM_BAD_IP] == 1 and counters[F.CSUM_BAD_L4] == 1
    for m, raw in zip(pkts, read(mp, pkts)):
        check_checksums(raw)
        assert int(mp.mbuf(int(m))["ol_flags"]) == MB.RTE_MBUF_F_TX_IPV4
    free(mp, pkts)


# -----------------------------------------------------------------------------
# icmpecho
# -----------------------------------------------------------------------------


def test_fwd_icmpecho(mp):
    ping = (
        Ether(src=HOST_MAC, dst=PORT_MAC)
        / IP(src="192.168.0.10", dst="192.168.0.1", ttl=61, id=77)
        / ICMP(type=8, id=0x1234, seq=5)
        / Raw(udp_payload(56, 11))
    )
    arp_req = Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=HOST_MAC, psrc="192.168.0.10", hwdst="00:00:00:00:00:00", pdst="192.168.0.77"
    )
    vlan_ping = (
        Ether(src=HOST_MAC, dst=PORT_MAC) / Dot1Q(vlan=9) / IP(src="10.0.0.5", dst="10.0.0.6") / ICMP(seq=1)
    )
    mcast_ping = Ether(src=HOST_MAC, dst="01:00:5e:00:00:01") / IP(src="10.0.0.5", dst="224.0.0.1") / ICMP()
    mcast_ping2 = Ether(src=HOST_MAC, dst="01:00:5e:00:00:01") / IP(src="10.0.0.9", dst="239.1.2.3") / ICMP()
    junk = [
        Ether(src=HOST_MAC, dst=PORT_MAC) / IP() / ICMP(type=0),  # echo reply
        Ether(src=HOST_MAC, dst=PORT_MAC) / IP() / ICMP(type=8, code=1),  # bad code
        Ether(src=HOST_MAC, dst=PORT_MAC) / IP() / UDP() / Raw(b"junk"),
        Ether(src=HOST_MAC, dst=PORT_MAC) / IPv6() / Raw(b"\x80" * 8),
        Ether(src=HOST_MAC, dst=PORT_MAC) / ARP(op=2),  # ARP reply
        bytes(arp_req)[:16] + b"\x86\xdd" + bytes(arp_req)[18:],  # not Ethernet/IPv4 ARP
        Ether(src=HOST_MAC, dst=PORT_MAC, type=0x88B5) / Raw(b"x" * 50),
        b"\x01\x02\x03",  # runt
        bytes(arp_req)[:30],  # truncated ARP
    ]
    frames = [junk[0], ping, junk[1], junk[2], arp_req, junk[3], junk[4], vlan_ping, junk[5],
              mcast_ping, junk[6], junk[7], mcast_ping2, junk[8]]
    answered = [ping, arp_req, vlan_ping, mcast_ping, mcast_ping2]
    pkts = burst(mp, frames)
    keep = [int(pkts[i]) for i, f in enumerate(frames) if any(f is a for a in answered)]
    in_use = mp.in_use_count()
    n = F.fwd_icmpecho(mp.arrays, LCORE, pkts, len(pkts), mac_to_int(PORT_MAC))
    assert n == len(answered)
    assert [int(m) for m in pkts[:n]] == keep  # compacted, in order
    mp.cache_flush()
    assert mp.in_use_count() == in_use - (len(frames) - n)  # the rest went back to the pool
    out = [Ether(r) for r in read(mp, pkts, n)]

    r = out[0]  # echo reply
    assert (r.src, r.dst) == (PORT_MAC, HOST_MAC)
    assert (r[IP].src, r[IP].dst) == ("192.168.0.1", "192.168.0.10")
    assert r[IP].ttl == 61 and r[IP].id == 77
    assert (r[ICMP].type, r[ICMP].code, r[ICMP].id, r[ICMP].seq) == (0, 0, 0x1234, 5)
    assert bytes(r[ICMP].payload) == bytes(ping[ICMP].payload)
    check_checksums(bytes(r))

    a = out[1]  # ARP reply: any target IP is answered, from the port MAC
    assert (a.src, a.dst) == (PORT_MAC, HOST_MAC)
    assert a[ARP].op == 2
    assert (a[ARP].hwsrc, a[ARP].psrc) == (PORT_MAC, "192.168.0.77")
    assert (a[ARP].hwdst, a[ARP].pdst) == (HOST_MAC, "192.168.0.10")

    v = out[2]
    assert v[Dot1Q].vlan == 9 and (v.src, v.dst) == (PORT_MAC, HOST_MAC)
    assert (v[IP].src, v[IP].dst) == ("10.0.0.6", "10.0.0.5") and v[ICMP].type == 0
    check_checksums(bytes(v))

    # multicast destination: source = asker's address with the low two bits changed
    m1, m2 = out[3], out[4]
    assert (m1[IP].src, m1[IP].dst) == ("10.0.0.6", "10.0.0.5")  # .5 (low bits 01) -> .6
    assert (m2[IP].src, m2[IP].dst) == ("10.0.0.9".rsplit(".", 1)[0] + ".10", "10.0.0.9")  # .9 -> .10
    assert m1.src == "01:00:5e:00:00:01" and m1.dst == HOST_MAC  # MACs swapped, as testpmd
    check_checksums(bytes(m1))
    check_checksums(bytes(m2))
    free(mp, pkts, n)


def test_fwd_icmpecho_all_dropped_and_chained(mp):
    ping = Ether(src=HOST_MAC, dst=PORT_MAC) / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP() / Raw(udp_payload(1000, 12))
    pkts = burst(mp, [ping], seg_size=128)  # a chained request: header in segment 0
    n = F.fwd_icmpecho(mp.arrays, LCORE, pkts, 1, mac_to_int(PORT_MAC))
    assert n == 1
    check_checksums(read(mp, pkts, 1)[0])
    free(mp, pkts, 1)

    pkts = burst(mp, [eth() / IP() / UDP()] * 3, seg_size=20)  # chains freed whole
    assert F.fwd_icmpecho(mp.arrays, LCORE, pkts, 3, mac_to_int(PORT_MAC)) == 0


# -----------------------------------------------------------------------------
# txonly
# -----------------------------------------------------------------------------


def run_txonly(mp, n, seg_lens, multi_flow=False, state=None, lcore=LCORE):
    pkts = np.zeros(n, np.uint32)
    lens = np.array(seg_lens, np.int64)
    state = np.zeros(1, np.int64) if state is None else state
    got = F.build_txonly(
        mp.arrays, lcore, pkts, n, lens, len(lens), mac_to_int(PORT_MAC), mac_to_int(PEER_MAC), multi_flow, state
    )
    return pkts, got, state


def check_txonly_frame(raw, total, src_ip="198.18.0.1"):
    p = Ether(raw)
    assert len(raw) == total
    assert (p.src, p.dst, p.type) == (PORT_MAC, PEER_MAC, 0x0800)
    ip = p[IP]
    assert (ip.version, ip.ihl, ip.tos, ip.id, ip.flags, ip.frag, ip.ttl, ip.proto) == (4, 5, 0, 0, 0, 0, 64, 17)
    assert (ip.src, ip.dst) == (src_ip, "198.18.0.2")
    assert ip.len == total - 14
    u = p[UDP]
    assert (u.sport, u.dport, u.len, u.chksum) == (9, 9, total - 34, 0)
    assert Ether(with_fresh_checksums(raw))[IP].chksum == ip.chksum


def test_txonly_64(mp):
    pkts, got, _ = run_txonly(mp, 32, [64])
    assert got == 32
    for m, raw in zip(pkts, read(mp, pkts)):
        check_txonly_frame(raw, 64)
        mb = mp.mbuf(int(m))
        assert (int(mb["nb_segs"]), int(mb["l2_len"]), int(mb["l3_len"])) == (1, 14, 20)
        assert int(mb["ol_flags"]) == 0
    free(mp, pkts)


@pytest.mark.parametrize("seg_lens", [[2000, 2000, 2000, 2000], [20, 10, 30, 100], [1, 41, 22], [60, 4]])
def test_txonly_segments(mp, seg_lens):
    """``--txpkts 2000,2000,2000,2000`` and layouts whose headers span segments."""
    pkts, got, _ = run_txonly(mp, 8, seg_lens)
    assert got == 8
    for m, raw in zip(pkts, read(mp, pkts)):
        check_txonly_frame(raw, sum(seg_lens))
        segs = mp.segments(int(m))
        assert [int(mp.mbuf(s)["data_len"]) for s in segs] == seg_lens
        assert int(mp.mbuf(int(m))["nb_segs"]) == len(seg_lens)
        assert int(mp.mbuf(int(m))["pkt_len"]) == sum(seg_lens)
    free(mp, pkts)


def test_txonly_multi_flow(mp):
    state = np.array([250], np.int64)
    pkts, got, state = run_txonly(mp, 10, [128], multi_flow=True, state=state, lcore=3)
    assert got == 10
    srcs = [Ether(r)[IP].src for r in read(mp, pkts)]
    # (198.18.0.2 | ip_var << 8) + lcore, ip_var a byte that wraps
    assert srcs == [f"198.18.{(250 + i) % 256}.5" for i in range(10)]
    for r, s in zip(read(mp, pkts), srcs):
        check_txonly_frame(r, 128, src_ip=s)
    assert state[0] == (250 + 10) % 256
    F.txonly_backout(state, 7)
    assert state[0] == (260 - 7) % 256
    free(mp, pkts)


def test_txonly_invalid_layouts(mp):
    for lens in ([41], [20, 21], [0, 64], [5000], [-1, 100]):
        pkts, got, _ = run_txonly(mp, 4, lens)
        assert got == 0, lens
    pkts, got, _ = run_txonly(mp, 0, [64])
    assert got == 0
    # nseg beyond seg_lens, n beyond pkts: refused / clamped, never out of bounds
    pkts = np.zeros(4, np.uint32)
    args = (mac_to_int(PORT_MAC), mac_to_int(PEER_MAC), False, np.zeros(1, np.int64))
    assert F.build_txonly(mp.arrays, LCORE, pkts, 4, np.array([64], np.int64), 2, *args) == 0
    assert F.build_txonly(mp.arrays, LCORE, pkts, 9, np.array([64], np.int64), 1, *args) == 4
    free(mp, pkts)


def test_txonly_pool_short(mem):
    """An empty pool builds nothing; a short one as many as it can, leaking nothing."""
    small = mempool_create(mem, f"fwds{next(_pool_ids)}", 16, cache_size=0)
    held = small.alloc_bulk(16)
    pkts, got, _ = run_txonly(small, 8, [64])
    assert got == 0
    small.free(held[:5])  # 5 free mbufs
    pkts, got, _ = run_txonly(small, 8, [64])
    assert got == 5  # one by one when the bulk get fails, like testpmd
    for raw in read(small, pkts, got):
        check_txonly_frame(raw, 64)
    small.free(pkts[:got])
    # 5 free: three heads, then segments for two packets; the third head goes back
    pkts, got, _ = run_txonly(small, 3, [64, 64])
    assert got == 2
    assert small.in_use_count() == 11 + 4
    small.free(pkts[:got])
    small.free(held[5:])
    assert small.audit().in_use == 0
    mempool_free(mem, small)


# -----------------------------------------------------------------------------
# flowgen
# -----------------------------------------------------------------------------


def run_flowgen(mp, n, length, nb_flows, state, udp_csum=False, src=None, dst=None):
    pkts = np.zeros(n, np.uint32)
    src = F.FLOWGEN_ETHER_SRC if src is None else src
    dst = F.FLOWGEN_ETHER_DST if dst is None else dst
    got = F.build_flowgen(mp.arrays, LCORE, pkts, n, length, src, dst, nb_flows, state, udp_csum)
    return pkts, got


def test_flowgen(mp):
    state = np.zeros(1, np.int64)
    pkts, got = run_flowgen(mp, 32, 64, 5, state)
    assert got == 32
    for i, (m, raw) in enumerate(zip(pkts, read(mp, pkts))):
        assert len(raw) == 60  # testpmd takes the 4-byte FCS off --txpkts
        p = Ether(raw)
        assert (p.src, p.dst) == ("00:01:02:03:04:00", "00:01:02:03:04:01")
        assert (p[IP].src, p[IP].dst) == ("10.254.0.0", f"10.253.0.{i % 5}")
        assert (p[IP].ttl, p[IP].proto, p[IP].len) == (64, 17, 46)
        assert (p[UDP].sport, p[UDP].dport, p[UDP].len, p[UDP].chksum) == (1000, 1001, 26, 0)
        assert Ether(with_fresh_checksums(raw))[IP].chksum == p[IP].chksum
        assert (int(mp.mbuf(int(m))["l2_len"]), int(mp.mbuf(int(m))["l3_len"])) == (14, 20)
    assert state[0] == 32 % 5
    F.flowgen_backout(state, 4, 5)
    assert state[0] == (32 - 4) % 5
    free(mp, pkts)


def test_flowgen_default_flows_and_udp_checksum(mp):
    state = np.array([1020], np.int64)
    pkts, got = run_flowgen(
        mp, 8, 1518, F.FLOWGEN_DEFAULT_FLOWS, state, udp_csum=True,
        src=mac_to_int(PORT_MAC), dst=mac_to_int(PEER_MAC),
    )
    assert got == 8
    dsts = []
    for raw in read(mp, pkts):
        assert len(raw) == 1514
        p = Ether(raw)
        assert (p.src, p.dst) == (PORT_MAC, PEER_MAC)
        dsts.append(p[IP].dst)
        assert p[UDP].chksum != 0
        check_checksums(raw)
    # 10.253.0.0 + flow: flows 1020..1023 are 10.253.3.252..255, then it wraps
    assert dsts == ["10.253.3.252", "10.253.3.253", "10.253.3.254", "10.253.3.255",
                    "10.253.0.0", "10.253.0.1", "10.253.0.2", "10.253.0.3"]
    assert state[0] == 4
    free(mp, pkts)


def test_flowgen_invalid(mp):
    state = np.zeros(1, np.int64)
    for length, flows in ((45, 10), (5000, 10), (64, 0)):
        pkts, got = run_flowgen(mp, 4, length, flows, state)
        assert got == 0


# -----------------------------------------------------------------------------
# inside an NRT-free loop, as the engine calls them
# -----------------------------------------------------------------------------


@kernel
def _engine_like(mp, lcore, pkts, n, counters, port_mac):
    """What an lcore loop does: mode kernels called on a burst from jitted, NRT-free code."""
    F.fwd_macswap(mp, pkts, n)
    F.fwd_5tswap(mp, pkts, n)
    F.fwd_csum(mp, pkts, n, counters)
    k = F.fwd_icmpecho(mp, lcore, pkts, n, port_mac)
    F.fwd_mac(mp, pkts, k, port_mac, port_mac)
    return k


def test_kernels_compose_in_a_jitted_loop(mp):
    ping = eth() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / Raw(b"p" * 20)
    frames = [ping, eth() / IP() / UDP(), ping]
    pkts = burst(mp, frames)
    counters = F.csum_counters()
    k = _engine_like(mp.arrays, LCORE, pkts, len(pkts), counters, mac_to_int(PORT_MAC))
    assert k == 2 and counters[F.CSUM_IPV4] == 3
    for raw in read(mp, pkts, k):
        p = Ether(raw)
        assert p[ICMP].type == 0 and p.src == p.dst == PORT_MAC
        check_checksums(raw)
    free(mp, pkts, k)
