"""The card's TX offloads on a staged frame: checksum completion and TCP segmentation (TSO).

What a virtq may do is its offload bits (:data:`OFF_TX_CSUM`, :data:`OFF_TSO4`, :data:`OFF_TSO6`,
:data:`OFF_RX_CSUM`), which the card sets from the virtq's ``tx_csum`` / ``tso_ipv4`` /
``tso_ipv6`` / ``rx_csum`` (mlx5 facts §3.4: the driver sets them from the negotiated
CSUM, HOST_TSO4, HOST_TSO6 and GUEST_CSUM).  :func:`tx_offload` takes a TX frame whose
virtio-net header asks for work (virtio 1.2 §5.1.6.2):

* ``flags`` NEEDS_CSUM, ``gso_type`` NONE: the ones' complement of the sum from ``csum_start``
  to the end of the frame (the driver left the pseudo-header sum in the field) is stored at
  ``csum_start + csum_offset``;
* ``gso_type`` TCPV4 / TCPV6: the frame (Ethernet, an optional 802.1Q tag, IPv4 with options or
  IPv6 without extension headers, TCP) is cut into frames of ``gso_size`` payload bytes (the last
  the rest), each with its IP length, IPv4 id (+1 per frame) and header checksum, TCP sequence
  number, FIN/PSH on the last frame only, CWR on the first only, and its TCP checksum complete.

The frames it makes are staged rows with a fresh receive header whose ``flags`` is DATA_VALID
(the card computed the checksum): a receiving virtq with :data:`OFF_RX_CSUM` (GUEST_CSUM) gets
that flag, others get 0.  A request the virtq did not negotiate, headers that do not parse, an
offset outside the frame, no MSS, or more frames than the stage has room for are refused with a
negative code; the caller counts the frame as an error and completes it.
"""

from __future__ import annotations

import numpy as np

from dataplane.net.cksum import fold, phdr_sum_v4, phdr_sum_v6, raw_sum
from dataplane.net.ether import ETH_TYPE_OFF, ETHER_HDR_LEN, ETHER_TYPE_IPV4, ETHER_TYPE_IPV6, ETHER_TYPE_VLAN, VLAN_HDR_LEN
from dataplane.net.ip import (
    IPPROTO_TCP,
    IPV4_CKSUM_OFF,
    IPV4_FRAG_MASK,
    IPV4_FRAG_OFF,
    IPV4_MIN_HDR_LEN,
    IPV4_PROTO_OFF,
    IPV4_TOTLEN_OFF,
    IPV6_HDR_LEN,
    IPV6_NXT_OFF,
    IPV6_PLEN_OFF,
)
from dataplane.net.l4 import TCP_CKSUM_OFF, TCP_CWR, TCP_DOFF_OFF, TCP_FIN, TCP_FLAGS_OFF, TCP_MIN_HDR_LEN, TCP_PSH
from dataplane.rings.chain_copy import chain_gather
from dataplane.rings.jit import kernel
from dataplane.rings.mem import be16, be32, copy_bytes, ld8, ld16, st8, st16, st32, st64, st_be16, st_be32
from dataplane.vhost.net_hdr import (
    NET_HDR_MRG_LEN,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
)

__all__ = ["OFF_TX_CSUM", "OFF_TSO4", "OFF_TSO6", "OFF_RX_CSUM", "OFF_TX", "offload_bits", "GSO_MAX_SEGS",
           "GSO_HDR_MAX", "GSO_MAX_LEN", "ERR_OFFLOAD_NOT_NEGOTIATED", "ERR_OFFLOAD_HEADERS", "ERR_OFFLOAD_ROOM",
           "tx_offload", "rx_flags"]

#: a virtq's offload bits (the card's config slot of the queue)
OFF_TX_CSUM, OFF_TSO4, OFF_TSO6, OFF_RX_CSUM = 1, 2, 4, 8
OFF_TX = OFF_TX_CSUM | OFF_TSO4 | OFF_TSO6


def offload_bits(attrs) -> int:
    """A virtq's offload bits from its ``tx_csum`` / ``tso_ipv4`` / ``tso_ipv6`` / ``rx_csum`` fields."""
    return ((OFF_TX_CSUM if attrs.get("tx_csum") else 0) | (OFF_TSO4 if attrs.get("tso_ipv4") else 0)
            | (OFF_TSO6 if attrs.get("tso_ipv6") else 0) | (OFF_RX_CSUM if attrs.get("rx_csum") else 0))


HDR_LEN = NET_HDR_MRG_LEN
#: frames one TSO frame may become: a 64 KiB frame cut at Linux's smallest MSS (48) still fits
GSO_MAX_SEGS = 1408
#: the bytes gathered to parse a TSO frame: header, Ethernet + a VLAN tag, IPv4 with options, TCP with options
GSO_HDR_MAX = HDR_LEN + ETHER_HDR_LEN + VLAN_HDR_LEN + 60 + 60
#: the longest TSO frame: an IPv6 payload length (or IPv4 total length) of 0xFFFF
GSO_MAX_LEN = HDR_LEN + ETHER_HDR_LEN + VLAN_HDR_LEN + IPV6_HDR_LEN + 0xFFFF

ERR_OFFLOAD_NOT_NEGOTIATED = -1  # a checksum or TSO request the virtq did not negotiate (or UDP/ECN GSO)
ERR_OFFLOAD_HEADERS = -2  # headers that do not parse, offsets outside the frame, no MSS
ERR_OFFLOAD_ROOM = -3  # more frames than the stage has rows for

_U64 = np.uint64


@kernel
def _rx_header(row):
    """A staged row's receive header: flags DATA_VALID, gso NONE, num_buffers 1."""
    st64(row, _U64(0))
    st32(row + _U64(8), np.uint32(1 << 16))
    st8(row, np.uint8(VIRTIO_NET_HDR_F_DATA_VALID))


@kernel
def _complete(field, sum_from, n):
    """Store the checksum of the ``n`` bytes at ``sum_from`` (the field holding its seed) at ``field``."""
    c = np.int64(fold(raw_sum(sum_from, n)))
    if c != 0xFFFF:
        c = ~c & 0xFFFF
    st16(field, c)


@kernel
def _tcp_headers(frame):
    """(l2, l3, l4 lengths, IPv4?) of a TCP frame; l2 = -1: not Ethernet [VLAN] IPv4/IPv6 TCP as parsed."""
    l2 = np.int64(ETHER_HDR_LEN)
    et = np.int64(be16(frame + _U64(ETH_TYPE_OFF)))
    if et == ETHER_TYPE_VLAN:
        l2 += VLAN_HDR_LEN
        et = np.int64(be16(frame + _U64(ETH_TYPE_OFF + VLAN_HDR_LEN)))
    ip = frame + _U64(l2)
    v = np.int64(ld8(ip)) >> 4
    if et == ETHER_TYPE_IPV4 and v == 4:
        l3 = (np.int64(ld8(ip)) & 0xF) * 4
        if l3 < IPV4_MIN_HDR_LEN or np.int64(ld8(ip + _U64(IPV4_PROTO_OFF))) != IPPROTO_TCP or \
                np.int64(be16(ip + _U64(IPV4_FRAG_OFF))) & IPV4_FRAG_MASK != 0:  # a fragment
            return np.int64(-1), np.int64(0), np.int64(0), True
        v4 = True
    elif et == ETHER_TYPE_IPV6 and v == 6:
        l3 = np.int64(IPV6_HDR_LEN)
        if np.int64(ld8(ip + _U64(IPV6_NXT_OFF))) != IPPROTO_TCP:
            return np.int64(-1), np.int64(0), np.int64(0), False
        v4 = False
    else:
        return np.int64(-1), np.int64(0), np.int64(0), False
    l4 = (np.int64(ld8(ip + _U64(l3 + TCP_DOFF_OFF))) >> 4) * 4
    if l4 < TCP_MIN_HDR_LEN:
        return np.int64(-1), np.int64(0), np.int64(0), v4
    return l2, l3, l4, v4


@kernel
def tx_offload(ch, s0, s_end, rlen, base, slot, n, rows, slen, offl):
    """Do what the header of the TX frame staged at row ``n`` asks (see the module doc).

    The frame is chain ``ch``'s segments ``[s0, s_end)``, ``rlen`` bytes with its header; row
    ``n`` (at ``base + n * slot``) holds its first ``min(rlen, slot)`` bytes.  The frames made go
    into rows ``n, n+1, ...`` (``rows``: the stage's), their lengths into ``slen``.  Returns how
    many (>= 1), or a negative ``ERR_OFFLOAD_*``; ``offl``: the TX virtq's offload bits."""
    row = base + _U64(n) * _U64(slot)
    flags = np.int64(ld8(row))
    gso = np.int64(ld8(row + _U64(1)))
    gso_size = np.int64(ld16(row + _U64(4)))
    cs_start = np.int64(ld16(row + _U64(6)))
    cs_off = np.int64(ld16(row + _U64(8)))
    flen = np.int64(rlen) - HDR_LEN
    frame = row + _U64(HDR_LEN)
    if gso == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 or offl & OFF_TX_CSUM == 0 or np.int64(rlen) > slot:
            return ERR_OFFLOAD_NOT_NEGOTIATED
        if cs_start + cs_off + 2 > flen:
            return ERR_OFFLOAD_HEADERS
        _complete(frame + _U64(cs_start + cs_off), frame + _U64(cs_start), flen - cs_start)
        _rx_header(row)
        slen[n] = np.int64(rlen)
        return 1
    if not ((gso == VIRTIO_NET_HDR_GSO_TCPV4 and offl & OFF_TSO4 != 0)
            or (gso == VIRTIO_NET_HDR_GSO_TCPV6 and offl & OFF_TSO6 != 0)):
        return ERR_OFFLOAD_NOT_NEGOTIATED
    l2, l3, l4, v4 = _tcp_headers(frame)
    hl = l2 + l3 + l4
    avail = min(np.int64(rlen), np.int64(GSO_HDR_MAX)) - HDR_LEN
    if l2 < 0 or hl > avail or v4 != (gso == VIRTIO_NET_HDR_GSO_TCPV4):
        return ERR_OFFLOAD_HEADERS
    payload = flen - hl
    mss = gso_size
    if mss <= 0 or payload <= 0 or HDR_LEN + hl + mss > slot:
        return ERR_OFFLOAD_HEADERS
    nseg = (payload + mss - 1) // mss
    if nseg > rows - n:
        return ERR_OFFLOAD_ROOM
    ip0 = frame + _U64(l2)
    tcp0 = ip0 + _U64(l3)
    seq0 = np.int64(be32(tcp0 + _U64(4)))
    id0 = np.int64(be16(ip0 + _U64(4))) if v4 else np.int64(0)
    fl0 = np.int64(ld8(tcp0 + _U64(TCP_FLAGS_OFF)))
    # the last frame first: row n's headers are every frame's model, so it is rewritten last
    for f in range(nseg - 1, -1, -1):
        r = base + _U64(n + f) * _U64(slot)
        if f != 0:
            copy_bytes(r, row, _U64(HDR_LEN + hl))
        sl = min(mss, payload - f * mss)
        chain_gather(ch, s0, s_end, _U64(HDR_LEN + hl + f * mss), r + _U64(HDR_LEN + hl), _U64(sl))
        ip = r + _U64(HDR_LEN + l2)
        tcp = ip + _U64(l3)
        if v4:
            st_be16(ip + _U64(IPV4_TOTLEN_OFF), l3 + l4 + sl)
            st_be16(ip + _U64(4), (id0 + f) & 0xFFFF)
            st16(ip + _U64(IPV4_CKSUM_OFF), 0)
            st16(ip + _U64(IPV4_CKSUM_OFF), ~fold(raw_sum(ip, l3)) & _U64(0xFFFF))
            ph = phdr_sum_v4(ip, l4 + sl)
        else:
            st_be16(ip + _U64(IPV6_PLEN_OFF), l3 - IPV6_HDR_LEN + l4 + sl)
            ph = phdr_sum_v6(ip, l4 + sl, IPPROTO_TCP)
        st_be32(tcp + _U64(4), (seq0 + f * mss) & 0xFFFFFFFF)
        fl = fl0
        if f != nseg - 1:
            fl &= ~(TCP_FIN | TCP_PSH)
        if f != 0:
            fl &= ~TCP_CWR
        st8(tcp + _U64(TCP_FLAGS_OFF), np.uint8(fl))
        st16(tcp + _U64(TCP_CKSUM_OFF), 0)
        st16(tcp + _U64(TCP_CKSUM_OFF), ~fold(raw_sum(tcp, l4 + sl) + ph) & _U64(0xFFFF))
        _rx_header(r)
        slen[n + f] = HDR_LEN + hl + sl
    return nseg


@kernel
def rx_flags(offl):
    """The staged header flags a receiving virtq with offload bits ``offl`` may see."""
    return VIRTIO_NET_HDR_F_DATA_VALID if offl & OFF_RX_CSUM != 0 else 0
