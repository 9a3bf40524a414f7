"""The card's TX offloads (mlx5 tx_csum, tso_ipv4/6, rx_csum) on the staged path, checked with scapy.

A guest sends what Linux's virtio-net sends with CSUM and HOST_TSO4/6: a TSO frame (header
``gso_type`` TCPV4/TCPV6, ``gso_size`` the MSS, NEEDS_CSUM with the pseudo-header sum in the TCP
checksum field) cut over several descriptors, or a small frame with NEEDS_CSUM.  The receiving VF
gets MSS-sized frames whose lengths, ids, sequence numbers, flags and checksums scapy finds right
(scapy recomputes each checksum from scratch), with the payload in order."""

import struct

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from dataplane.nic import kernels as K
from dataplane.nic.offload import OFF_RX_CSUM, OFF_TSO4, OFF_TSO6, OFF_TX_CSUM
from dataplane.testing.nic_rings import VfRings

ALL = OFF_TX_CSUM | OFF_TSO4 | OFF_TSO6 | OFF_RX_CSUM
MAC0, MAC1 = "02:00:00:00:00:01", "02:00:00:00:00:02"
NEEDS_CSUM, DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6 = 0, 1, 3, 4
RX_BUF = 2048


def vnet_hdr(flags, gso_type, gso_size, csum_start, csum_offset, hdr_len=0):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def with_phdr_sum(pkt) -> bytes:
    """``pkt``'s bytes with its L4 checksum field holding the pseudo-header sum (Linux's CHECKSUM_PARTIAL)."""
    raw = bytearray(bytes(pkt))
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    l4_len = len(bytes(l4))
    start = len(raw) - l4_len
    proto = 6 if TCP in pkt else 17
    if IP in pkt:
        ph = bytes(pkt[IP])[12:20] + struct.pack("!BBH", 0, proto, l4_len)
    else:
        ph = bytes(pkt[IPv6])[8:40] + struct.pack("!I3xB", l4_len, proto)
    off = start + (16 if proto == 6 else 6)
    raw[off:off + 2] = struct.pack("!H", ones_sum(ph))
    return bytes(raw), start, off - start


def tcp_packet(v6: bool, payload: bytes, *, vlan=False, flags="PA", seq=1000, ipid=77):
    eth = Ether(src=MAC0, dst=MAC1)
    if vlan:
        eth = eth / Dot1Q(vlan=5)
    ip = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=ipid, flags="DF")
    return eth / ip / TCP(sport=40000, dport=5001, seq=seq, ack=1, flags=flags, window=500,
                          options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / payload


def tso_frame(pkt, gso_type: int, mss: int) -> tuple[bytes, list[int]]:
    """The TX chain bytes of a TSO request for ``pkt``, and cuts like Linux's (header, then page frags)."""
    raw, start, off = with_phdr_sum(pkt)
    hl = len(raw) - len(bytes(pkt[TCP].payload))
    data = vnet_hdr(NEEDS_CSUM, gso_type, mss, start, off, hdr_len=hl) + raw
    return data, [12 + hl] + list(range(12 + hl + 3000, len(data), 4096))


@pytest.fixture
def vfs():
    made = []

    def make(offloads, packed=False):
        v = VfRings(len(made), packed, offloads=offloads, size=128, max_data=72 * 1024, mem_size=24 << 20)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


def switch(vf0, vf1, rx_buffers: int) -> int:
    """VF1 is learnt (it broadcasts), then VF0's queued frames go through the staged path into VF1."""
    fdb = np.zeros((K.FDB_SIZE, 2), np.int64)
    stage, slen, smask = K.stage_arrays()
    rxqs = (vf0.ctx[0], vf1.ctx[0])
    vf0.post_rx(RX_BUF)
    vf1.send(bytes(12) + bytes(Ether(src=MAC1, dst="ff:ff:ff:ff:ff:ff") / IP() / (b"x" * 20)))
    K.tx_serve(vf1.ctx[1], 1, fdb, 0b11, rxqs, stage, slen, smask, 4096, 2)
    vf0.received()
    for _ in range(rx_buffers):
        vf1.post_rx(RX_BUF)
    return K.tx_serve(vf0.ctx[1], 0, fdb, 0b11, rxqs, stage, slen, smask, 4096, 2)


def rechecked(p):
    """``p`` rebuilt by scapy with its checksums recomputed."""
    q = p.copy()
    for layer in (IP, TCP, UDP):
        if layer in q:
            q[layer].chksum = None
    return Ether(bytes(q))


def check_segments(got, v6, payload, mss, *, flags0="PA", seq=1000, ipid=77, rx_flags=DATA_VALID):
    assert len(got) == -(-len(payload) // mss)
    data = b""
    for i, raw in enumerate(got):
        assert struct.unpack("<BBHHHHH", raw[:12]) == (rx_flags, GSO_NONE, 0, 0, 0, 0, 1)
        p = Ether(raw[12:])
        t = p[TCP]
        seg = bytes(t.payload)
        assert len(seg) == (mss if i < len(got) - 1 else len(payload) - mss * i), i
        if v6:
            assert p[IPv6].plen == len(bytes(t))
        else:
            assert p[IP].len == len(bytes(p[IP])) and p[IP].id == (ipid + i) & 0xFFFF
            assert p[IP].chksum == rechecked(p)[IP].chksum, i
        assert t.seq == seq + i * mss
        want = set(flags0)
        if i < len(got) - 1:
            want -= {"F", "P"}
        if i > 0:
            want -= {"C"}
        assert set(str(t.flags)) == want, i
        assert t.chksum == rechecked(p)[TCP].chksum, i
        data += seg
    assert data == payload


@pytest.mark.parametrize("v6,vlan", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["v4", "v6", "v4-vlan", "v6-vlan"])
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_tso_frame_is_cut_into_mss_frames_with_right_headers(vfs, v6, vlan, packed):
    payload = bytes(np.random.default_rng(7).integers(0, 256, 60000, np.uint8))
    mss = 1448
    vf0, vf1 = vfs(ALL, packed), vfs(ALL, packed)
    data, cuts = tso_frame(tcp_packet(v6, payload, vlan=vlan, flags="FPAC"), GSO_TCPV6 if v6 else GSO_TCPV4, mss)
    vf0.send(data, cuts=cuts)
    assert switch(vf0, vf1, 64) == 42  # rows staged: the frames made
    check_segments(vf1.received(), v6, payload, mss, flags0="FPAC")
    tx = vf0.rows[1]
    assert (tx[K.Q_TSO], tx[K.Q_TSO_SEGS], tx[K.Q_ERRORS], tx[K.Q_PACKETS]) == (1, 42, 0, 1)
    assert vf1.rows[0][K.Q_PACKETS] == 42 + 0 and vf1.rows[0][K.Q_NOBUF] == 0


def test_rx_without_guest_csum_gets_no_data_valid_and_a_short_ring_counts_no_buffer(vfs):
    payload = bytes(range(256)) * 20
    vf0, vf1 = vfs(ALL), vfs(OFF_TX_CSUM)
    data, cuts = tso_frame(tcp_packet(False, payload, ipid=0xFFFE), GSO_TCPV4, 1000)
    vf0.send(data, cuts=cuts)
    switch(vf0, vf1, 3)  # 6 frames made, 3 buffers
    got = vf1.received()
    check_segments(got + [b""] * 0, False, payload[:3000], 1000, flags0="A", ipid=0xFFFE, rx_flags=0)
    assert vf1.rows[0][K.Q_NOBUF] == 3


def test_needs_csum_frame_gets_its_checksum(vfs):
    vf0, vf1 = vfs(OFF_TX_CSUM), vfs(OFF_RX_CSUM)
    for pkt in (Ether(src=MAC0, dst=MAC1) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"u" * 333),
                tcp_packet(True, b"t" * 1001)):
        raw, start, off = with_phdr_sum(pkt)
        vf0.send(vnet_hdr(NEEDS_CSUM, GSO_NONE, 0, start, off) + raw, cuts=(12, 40))
    switch(vf0, vf1, 2)
    got = vf1.received()
    assert len(got) == 2 and vf0.rows[1][K.Q_CSUM] == 2
    for raw in got:
        assert raw[0] == DATA_VALID
        p = Ether(raw[12:])
        l4 = UDP if UDP in p else TCP
        assert p[l4].chksum == rechecked(p)[l4].chksum


BAD = {
    "tcpv6 on a tso4-only virtq": (OFF_TX_CSUM | OFF_TSO4, GSO_TCPV6, 1448, None),
    "udp gso (not offered)": (ALL, GSO_UDP, 1448, None),
    "ecn gso (HOST_ECN not offered)": (ALL, GSO_TCPV4 | 0x80, 1448, None),
    "no mss": (ALL, GSO_TCPV4, 0, None),
    "mss over a frame": (ALL, GSO_TCPV4, 4000, None),
    "an ipv4 fragment": (ALL, GSO_TCPV4, 1448, "frag"),
    "csum_start outside the frame": (OFF_TX_CSUM, GSO_NONE, 0, "start"),
    "frames past the stage": (ALL, GSO_TCPV4, 32, "many"),  # 2032 frames
}


@pytest.mark.parametrize("case", list(BAD))
def test_offload_requests_the_virtq_cannot_do_are_counted_errors(vfs, case):
    offl, gso, mss, how = BAD[case]
    vf0, vf1 = vfs(offl), vfs(ALL)
    payload = b"p" * (2 * 1024 if how != "many" else 65000)
    pkt = tcp_packet(False, payload)
    if how == "frag":
        pkt[IP].flags = "MF"
    raw, start, off = with_phdr_sum(pkt)
    if how == "start":
        payload = b"p" * 100
        raw, start, off = with_phdr_sum(tcp_packet(False, payload))
        start = len(raw) - 1
    if gso == GSO_NONE:
        raw = raw[:1514]
    vf0.send(vnet_hdr(NEEDS_CSUM, gso, mss, start, off) + raw)
    vf0.send(bytes(12) + bytes(tcp_packet(False, b"after")))  # the queue goes on
    switch(vf0, vf1, 4)
    got = vf1.received()
    assert len(got) == 1 and bytes(Ether(got[0][12:])[TCP].payload) == b"after"
    tx = vf0.rows[1]
    assert (tx[K.Q_ERRORS], tx[K.Q_TSO], tx[K.Q_CSUM], tx[K.Q_FAULTS]) == (1, 0, 0, 0)


def test_without_tx_offloads_the_header_is_not_read(vfs):
    """A virtq that negotiated no TX offload: the header's bytes are ignored, as the direct path does."""
    vf0, vf1 = vfs(0), vfs(0)
    pkt = bytes(tcp_packet(False, b"z" * 100))
    vf0.send(vnet_hdr(NEEDS_CSUM, GSO_TCPV4, 10, 1, 1) + pkt)
    switch(vf0, vf1, 1)
    assert vf1.received() == [bytes(10) + b"\x01\x00" + pkt]
