"""The reference RSS of the mlx5 vDPA steering (facts §3.7): Toeplitz vectors, symmetry, the 7 flows, the RQT."""

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from dataplane.vdpa.mlx5.rss import (
    FLOW_IPV4,
    FLOW_IPV4_TCP,
    FLOW_IPV4_UDP,
    FLOW_IPV6,
    FLOW_IPV6_TCP,
    FLOW_IPV6_UDP,
    FLOW_OTHER,
    MLX5_VDPA_RSS_KEY,
    MS_RSS_KEY,
    Flow,
    classify,
    hash_input,
    ip_bytes,
    predict,
    rqt_table,
    rss_hash,
    rx_vrings,
    toeplitz,
)

# Microsoft RSS verification suite (standard key): (src, sport, dst, dport, IP-only hash, IP+TCP hash)
MS_V4 = [
    ("66.9.149.187", 2794, "161.142.100.80", 1766, 0x323E8FC2, 0x51CCC178),
    ("199.92.111.2", 14230, "65.69.140.83", 4739, 0xD718262A, 0xC626B0EA),
    ("24.19.198.95", 12898, "12.22.207.184", 38024, 0xD2D0A5DE, 0x5C2B394A),
    ("38.27.205.30", 48228, "209.142.163.6", 2217, 0x82989176, 0xAFC7327F),
    ("153.39.163.191", 44251, "202.188.127.2", 1303, 0x5D1809C5, 0x10E828A2),
]
MS_V6 = [
    ("3ffe:2501:200:1fff::7", 2794, "3ffe:2501:200:3::1", 1766, 0x2CC18CD5, 0x40207D3D),
    ("3ffe:501:8::260:97ff:fe40:efab", 14230, "ff02::1", 4739, 0x0F0C461C, 0xDDE51BBF),
    ("3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, "fe80::200:f8ff:fe21:67cf", 38024, 0x4B61E985, 0x02D1FEEF),
]


@pytest.mark.parametrize("src, sport, dst, dport, h_ip, h_tcp", MS_V4 + MS_V6)
def test_toeplitz_microsoft_vectors(src, sport, dst, dport, h_ip, h_tcp):
    ips = ip_bytes(src) + ip_bytes(dst)
    assert toeplitz(MS_RSS_KEY, ips) == h_ip
    assert toeplitz(MS_RSS_KEY, ips + struct.pack("!HH", sport, dport)) == h_tcp


@pytest.mark.parametrize("src, sport, dst, dport, h_ip, h_tcp", MS_V4 + MS_V6)
def test_asymmetric_frames_reproduce_the_vectors(src, sport, dst, dport, h_ip, h_tcp):
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    frame = bytes(Ether() / ip / TCP(sport=sport, dport=dport))
    assert rss_hash(frame, MS_RSS_KEY, transform="none") == h_tcp
    assert rss_hash(bytes(Ether() / ip / ICMP()) if ":" not in src else bytes(Ether() / ip / ICMPv6EchoRequest()),
                    MS_RSS_KEY, transform="none") == h_ip


def test_key_length_checked():
    with pytest.raises(ValueError):
        toeplitz(b"\x00" * 39, b"\x00" * 36)
    assert len(MLX5_VDPA_RSS_KEY) == 40 and MLX5_VDPA_RSS_KEY[:4] == bytes.fromhex("2cc681d1")


def test_or_xor_input():
    f = Flow(FLOW_IPV4_TCP, ip_bytes("10.0.0.1"), ip_bytes("10.0.0.2"), 1000, 80)
    assert hash_input(f) == (ip_bytes("10.0.0.3") + ip_bytes("0.0.0.3")
                             + struct.pack("!HH", 1000 | 80, 1000 ^ 80))
    assert hash_input(f, "xor") == ip_bytes("0.0.0.3") * 2 + struct.pack("!H", 1000 ^ 80) * 2
    assert hash_input(f, "none") == ip_bytes("10.0.0.1") + ip_bytes("10.0.0.2") + struct.pack("!HH", 1000, 80)
    assert hash_input(Flow(FLOW_IPV4, ip_bytes("1.2.3.4"), ip_bytes("1.2.3.5"))) == (ip_bytes("1.2.3.5")
                                                                                      + ip_bytes("0.0.0.1"))
    with pytest.raises(ValueError):
        hash_input(f, "sort")


@pytest.mark.parametrize("l3, l4", [
    (IP(src="192.168.1.10", dst="192.168.2.20"), TCP(sport=40000, dport=443)),
    (IP(src="192.168.1.10", dst="192.168.2.20"), UDP(sport=5353, dport=53)),
    (IPv6(src="fd00::1", dst="fd00::2:3"), TCP(sport=12345, dport=22)),
    (IPv6(src="fd00::1", dst="fd00::2:3"), UDP(sport=1, dport=2)),
])
@pytest.mark.parametrize("transform", ["or-xor", "xor"])
def test_symmetric_both_directions_hash_alike(l3, l4, transform):
    fwd = bytes(Ether() / l3 / l4)
    r3 = l3.copy()
    r3.src, r3.dst = l3.dst, l3.src
    r4 = l4.copy()
    r4.sport, r4.dport = l4.dport, l4.sport
    rev = bytes(Ether() / r3 / r4)
    assert rss_hash(fwd, transform=transform) == rss_hash(rev, transform=transform)
    assert rss_hash(fwd, transform="none") != rss_hash(rev, transform="none")


def test_or_xor_tells_apart_what_xor_cannot():
    # same src^dst and sport^dport, different flows: XOR collides, OR-XOR does not
    a = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2))
    b = bytes(Ether() / IP(src="10.0.0.5", dst="10.0.0.6") / TCP(sport=5, dport=6))
    assert rss_hash(a, transform="xor") == rss_hash(b, transform="xor")
    assert rss_hash(a) != rss_hash(b)


@pytest.mark.parametrize("pkt, flow", [
    (Ether() / IP() / TCP(), FLOW_IPV4_TCP),
    (Ether() / IP() / UDP(), FLOW_IPV4_UDP),
    (Ether() / IPv6() / TCP(), FLOW_IPV6_TCP),
    (Ether() / IPv6() / UDP(), FLOW_IPV6_UDP),
    (Ether() / IP() / ICMP(), FLOW_IPV4),
    (Ether() / IPv6() / ICMPv6EchoRequest(), FLOW_IPV6),
    (Ether() / ARP(), FLOW_OTHER),
    (Ether() / Dot1Q(vlan=5) / IP() / UDP(), FLOW_IPV4_UDP),
    (Ether() / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IPv6() / TCP(), FLOW_IPV6_TCP),
    (Ether() / IP(flags="MF", frag=0) / UDP(), FLOW_IPV4_UDP),  # the first fragment has the ports
    (Ether() / IP(frag=100, proto=17) / (b"x" * 16), FLOW_IPV4),  # a later one has none
])
def test_flow_classes(pkt, flow):
    f = classify(bytes(pkt))
    assert f.flow == flow
    assert f.hashed == (flow != FLOW_OTHER)


def test_classify_fields():
    f = classify(bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=7, dport=9)))
    assert f == Flow(FLOW_IPV4_UDP, ip_bytes("1.1.1.1"), ip_bytes("2.2.2.2"), 7, 9)
    assert classify(b"\x00" * 10).flow == FLOW_OTHER


def test_rx_vrings_and_rqt():
    assert rx_vrings(4) == [0, 2]
    assert rx_vrings(5) == [0, 2]  # vring 4 is the control vq
    assert rx_vrings(5, enabled=[2, 3]) == [2]
    t = rqt_table([0, 2])
    assert len(t) == 512 and t[:4] == [0, 2, 0, 2]
    assert rqt_table([0, 2, 4], log_max_rqt_size=2) == [0, 2, 4, 0]
    assert len(rqt_table([0], log_max_rqt_size=11)) == 512
    assert rqt_table([]) == []


def test_predict_spreads_flows_and_keeps_both_directions_together():
    table = rqt_table(rx_vrings(4))
    seen = set()
    for port in range(40000, 40032):
        fwd = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=port, dport=5201))
        rev = bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=5201, dport=port))
        q = predict(fwd, table)
        assert q == predict(rev, table) == table[rss_hash(fwd) & 511]
        seen.add(q)
    assert seen == {0, 2}
    assert predict(bytes(Ether() / ARP()), [2, 0, 2, 0]) == 2  # flow 0: the first RQT entry
    with pytest.raises(ValueError):
        predict(bytes(Ether() / ARP()), [])
