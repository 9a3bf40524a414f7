"""The virtio-net header and the offloads it carries (virtio 1.2 §5.1.6), both directions.

Layout (little endian)::

    0  flags u8        NEEDS_CSUM 1, DATA_VALID 2, RSC_INFO 4
    1  gso_type u8     NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5, | ECN 0x80
    2  hdr_len u16     bytes of headers (GSO)
    4  gso_size u16    MSS
    6  csum_start u16  where checksumming starts
    8  csum_offset u16 where (from csum_start) the checksum goes
    10 num_buffers u16 only in the 12-byte header (MRG_RXBUF, VERSION_1 or RING_PACKED)

In numba code the header travels as two words: ``lo`` = bytes 0..7 and
``hi`` = bytes 8..11 (``csum_offset | num_buffers << 16``), built by
:func:`hdr_words` and read by :func:`hdr_flags` & co.

Offloads, after DPDK's lib/vhost (``virtio_enqueue_offload``,
``vhost_dequeue_offload[_legacy]``, ``parse_headers``):

* **mbuf → header** (:func:`mbuf_to_hdr`, vhost enqueue = guest Rx; also the
  virtio-user PMD's Tx): ``TX_{TCP,UDP,SCTP}_CKSUM`` (or TSO) → NEEDS_CSUM with
  ``csum_start = l2_len + l3_len`` and the L4 checksum field's offset, after
  writing the pseudo-header checksum into the packet (``rte_net_intel_cksum_prepare``);
  ``TX_IP_CKSUM`` → the IPv4 header checksum is computed here in software
  (virtio cannot offload it); ``TX_TCP_SEG`` → GSO TCPV4/TCPV6 with
  ``gso_size = tso_segsz`` and ``hdr_len = l2+l3+l4``, plus the ECN bit when
  the TCP header carries CWR and the guest negotiated GUEST_ECN (virtio 1.2
  §5.1.6.4.1; without it the enqueue cuts such a packet in software, as it
  does for a guest without GUEST_TSO4/6).  UFO is not offered: GSO UDP is
  never written (a ``TX_UDP_SEG`` request goes in as one datagram with its
  checksum request).  When the guest did not negotiate GUEST_CSUM, an L4
  checksum request (without TSO) is completed in software instead (DPDK's
  vhost PMD ``tx_sw_csum``).
* **header → mbuf** (:func:`hdr_to_mbuf`, vhost dequeue = guest Tx): nothing
  to do when flags and gso_type are 0.  Otherwise the Ethernet (+ one VLAN
  tag) / IPv4 / IPv6 / TCP / UDP / SCTP headers of the first segment are
  parsed.  *Legacy* mode (DPDK's default, and the vhost PMD's): Tx flags for a
  forwarding application — ``l2_len``/``l3_len`` (+ ``l4_len``), ``TX_IPV4`` /
  ``TX_IPV6``, ``TX_{TCP,UDP,SCTP}_CKSUM`` for NEEDS_CSUM whose ``csum_start``
  is the L4 header, ``TX_TCP_SEG`` + ``tso_segsz`` for GSO TCPV4/TCPV6;
  anything inconsistent clears ``l2_len``, ``l3_len`` and ``ol_flags``.  GSO
  UDP (HOST_UFO, not offered) is inconsistent, and so is the ECN bit unless
  HOST_ECN was negotiated (the CWR flag it announces is in the packet; software
  segmentation keeps it on the first frame only, as Linux and DPDK do).
  *Compliant* mode (``RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS``): Rx flags —
  ``packet_type``, ``RX_L4_CKSUM_NONE`` when the checksum may be left to the
  next hop, or the checksum completed in software when the L4 protocol is
  unknown; GSO TCP → ``RX_LRO`` + ``tso_segsz``.

Packet formats, checksums and the header walk come from :mod:`dataplane.net`,
raw-address access from :mod:`dataplane.rings.mem`; :class:`NetHdr` serves
tests and control code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from dataplane.memory.mbuf import (
    RTE_MBUF_F_RX_L4_CKSUM_NONE,
    RTE_MBUF_F_RX_LRO,
    RTE_MBUF_F_TX_IP_CKSUM,
    RTE_MBUF_F_TX_IPV4,
    RTE_MBUF_F_TX_IPV6,
    RTE_MBUF_F_TX_L4_MASK,
    RTE_MBUF_F_TX_SCTP_CKSUM,
    RTE_MBUF_F_TX_TCP_CKSUM,
    RTE_MBUF_F_TX_TCP_SEG,
    RTE_MBUF_F_TX_UDP_CKSUM,
    RTE_MBUF_F_TX_UDP_SEG,
)
from dataplane.memory.mempool import seg_addr
from dataplane.net.cksum import fold, ipv4_hdr_cksum, mbuf_cksum, phdr_sum_v4, phdr_sum_v6
from dataplane.net.ip import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP
from dataplane.net.l4 import (
    SCTP_CKSUM_OFF,
    TCP_CKSUM_OFF,
    TCP_CWR,
    TCP_FIN,
    TCP_FLAGS_OFF,
    TCP_PSH,
    UDP_CKSUM_OFF,
)
from dataplane.net.ptype import parse_headers
from dataplane.rings.jit import inline_kernel, kernel
from dataplane.rings.mem import be16, be32, bswap16, ld8, st8, st16, st_be32
from dataplane.vhost_user.features import VirtioFeature as VF, bit

__all__ = [
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_F_RSC_INFO",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VIRTIO_NET_HDR_GSO_UDP_L4",
    "VIRTIO_NET_HDR_GSO_ECN",
    "NET_HDR_LEN",
    "NET_HDR_MRG_LEN",
    "F_CSUM",
    "F_GUEST_CSUM",
    "F_GUEST_TSO4",
    "F_GUEST_TSO6",
    "F_GUEST_ECN",
    "F_HOST_TSO4",
    "F_HOST_TSO6",
    "F_HOST_ECN",
    "F_HOST_UFO",
    "F_MRG_RXBUF",
    "F_INDIRECT_DESC",
    "F_EVENT_IDX",
    "F_VERSION_1",
    "F_RING_PACKED",
    "F_IN_ORDER",
    "F_HOST_OFFLOAD",
    "net_hdr_len",
    "NetHdr",
    "hdr_words",
    "mbuf_to_hdr",
    "hdr_to_mbuf",
    "tso_frames",
    "tso_first",
    "tso_frame_hdr",
    "tso_cwr",
]

_U64 = np.uint64

# -- header values ------------------------------------------------------------
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_F_RSC_INFO = 4
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

NET_HDR_LEN = 10  # struct virtio_net_hdr
NET_HDR_MRG_LEN = 12  # struct virtio_net_hdr_mrg_rxbuf (num_buffers)

# -- virtio feature bits (bit numbers: VirtioFeature) ----------------------------
F_CSUM = bit(VF.VIRTIO_NET_F_CSUM)
F_GUEST_CSUM = bit(VF.VIRTIO_NET_F_GUEST_CSUM)
F_GUEST_TSO4 = bit(VF.VIRTIO_NET_F_GUEST_TSO4)
F_GUEST_TSO6 = bit(VF.VIRTIO_NET_F_GUEST_TSO6)
F_GUEST_ECN = bit(VF.VIRTIO_NET_F_GUEST_ECN)
F_HOST_TSO4 = bit(VF.VIRTIO_NET_F_HOST_TSO4)
F_HOST_TSO6 = bit(VF.VIRTIO_NET_F_HOST_TSO6)
F_HOST_ECN = bit(VF.VIRTIO_NET_F_HOST_ECN)
F_HOST_UFO = bit(VF.VIRTIO_NET_F_HOST_UFO)
F_MRG_RXBUF = bit(VF.VIRTIO_NET_F_MRG_RXBUF)
F_INDIRECT_DESC = bit(VF.VIRTIO_RING_F_INDIRECT_DESC)
F_EVENT_IDX = bit(VF.VIRTIO_RING_F_EVENT_IDX)
F_VERSION_1 = bit(VF.VIRTIO_F_VERSION_1)
F_RING_PACKED = bit(VF.VIRTIO_F_RING_PACKED)
F_IN_ORDER = bit(VF.VIRTIO_F_IN_ORDER)
#: DPDK's virtio_net_with_host_offload(): the guest may send offload requests
F_HOST_OFFLOAD = F_CSUM | F_HOST_ECN | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_UFO


def net_hdr_len(features: int) -> int:
    """12 with MRG_RXBUF, VERSION_1 or RING_PACKED negotiated, else 10 (DESIGN §3)."""
    return NET_HDR_MRG_LEN if int(features) & (F_MRG_RXBUF | F_VERSION_1 | F_RING_PACKED) else NET_HDR_LEN


# =============================================================================
# Python side: the header as an object
# =============================================================================


@dataclass
class NetHdr:
    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    def pack(self, length: int = NET_HDR_MRG_LEN) -> bytes:
        b = struct.pack(
            "<BBHHHHH",
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        )
        return b[:length]

    @classmethod
    def unpack(cls, data: bytes, length: int = NET_HDR_MRG_LEN) -> "NetHdr":
        b = bytes(data[:length]).ljust(NET_HDR_MRG_LEN, b"\0")
        return cls(*struct.unpack("<BBHHHHH", b))


# =============================================================================
# header words
# =============================================================================


@inline_kernel
def hdr_words(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers):
    """(lo, hi) words of a header: lo = bytes 0..7, hi = bytes 8..11."""
    lo = (
        (_U64(flags) & _U64(0xFF))
        | ((_U64(gso_type) & _U64(0xFF)) << _U64(8))
        | ((_U64(hdr_len) & _U64(0xFFFF)) << _U64(16))
        | ((_U64(gso_size) & _U64(0xFFFF)) << _U64(32))
        | ((_U64(csum_start) & _U64(0xFFFF)) << _U64(48))
    )
    hi = (_U64(csum_offset) & _U64(0xFFFF)) | ((_U64(num_buffers) & _U64(0xFFFF)) << _U64(16))
    return lo, hi


# =============================================================================
# mbuf -> header (vhost enqueue, virtio Tx)
# =============================================================================

_TX_HDR_FLAGS = _U64(RTE_MBUF_F_TX_L4_MASK | RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_UDP_SEG | RTE_MBUF_F_TX_IP_CKSUM)
_L4_MASK = _U64(RTE_MBUF_F_TX_L4_MASK)
_L4_TCP = _U64(RTE_MBUF_F_TX_TCP_CKSUM)
_L4_UDP = _U64(RTE_MBUF_F_TX_UDP_CKSUM)
_L4_SCTP = _U64(RTE_MBUF_F_TX_SCTP_CKSUM)
_TSO = _U64(RTE_MBUF_F_TX_TCP_SEG)
_USO = _U64(RTE_MBUF_F_TX_UDP_SEG)
_IPV4 = _U64(RTE_MBUF_F_TX_IPV4)
_IPV6 = _U64(RTE_MBUF_F_TX_IPV6)
_IPCK = _U64(RTE_MBUF_F_TX_IP_CKSUM)


@kernel
def mbuf_to_hdr(mp, m, guest_csum, guest_ecn):
    """The virtio-net header (lo, hi without num_buffers) for sending packet ``m`` to a guest.

    May write into the packet (pseudo-header checksum, IPv4 header checksum,
    software L4 checksum when ``guest_csum`` is False) and clear the L4
    checksum request it completed, like DPDK.  Headers must be in the first
    segment; otherwise the offload fields are left empty.  A TSO request whose
    TCP header has CWR gets the ECN bit in ``gso_type`` when ``guest_ecn``
    (GUEST_ECN negotiated).  A UDP segmentation request is sent as one datagram
    with a UDP checksum request (GUEST_UFO is never offered).
    """
    mb = mp.mbufs[m]
    ol = _U64(mb.ol_flags)
    if (ol & _TX_HDR_FLAGS) == _U64(0):
        return _U64(0), _U64(0)
    if (ol & _USO) != _U64(0):
        ol = (ol & ~(_USO | _L4_MASK)) | _L4_UDP
    l2 = np.int64(mb.l2_len)
    l3 = np.int64(mb.l3_len)
    l4h = np.int64(mb.l4_len)
    dl = np.int64(mb.data_len)
    base = seg_addr(mp, m)
    ip = base + _U64(l2)
    tso = (ol & _TSO) != _U64(0)
    csum_l4 = ol & _L4_MASK
    if tso:
        csum_l4 = _L4_TCP
    hdr_ok = l2 + l3 + 8 <= dl and l3 >= 20
    if (ol & _IPCK) != _U64(0) and (ol & _IPV4) != _U64(0) and hdr_ok:
        ipv4_hdr_cksum(ip)
    flags = 0
    gso_type = 0
    hdr_len = 0
    gso_size = 0
    cs_start = 0
    cs_off = 0
    if csum_l4 != _U64(0) and hdr_ok:
        if csum_l4 == _L4_TCP:
            cs_off = TCP_CKSUM_OFF
        elif csum_l4 == _L4_UDP:
            cs_off = UDP_CKSUM_OFF
        else:
            cs_off = SCTP_CKSUM_OFF
        cs_start = l2 + l3
        l4 = ip + _U64(l3)
        is4 = (ol & _IPV4) != _U64(0)
        is6 = (ol & _IPV6) != _U64(0)
        if csum_l4 != _L4_SCTP and (is4 or is6) and cs_start + cs_off + 2 <= dl:
            pkt_l4_len = np.int64(mb.pkt_len) - cs_start
            plen = 0 if tso else pkt_l4_len
            if is4:
                ph = phdr_sum_v4(ip, plen)
            else:
                ph = phdr_sum_v6(ip, plen, ld8(ip + _U64(6)))
            if not guest_csum and not tso:
                # the guest cannot take a partial checksum: complete it here
                st16(l4 + _U64(cs_off), 0)
                full = mbuf_cksum(mp, m, cs_start, pkt_l4_len)
                if full >= 0:
                    c = ~fold(_U64(full) + ph) & _U64(0xFFFF)
                    if c == _U64(0) and csum_l4 == _L4_UDP:
                        c = _U64(0xFFFF)
                    st16(l4 + _U64(cs_off), c)
                    mb.ol_flags = ol & ~_L4_MASK
                cs_start = 0
                cs_off = 0
            else:
                st16(l4 + _U64(cs_off), fold(ph))
                flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        elif guest_csum or tso:
            flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        else:
            cs_start = 0
            cs_off = 0
    if tso:
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if (ol & _IPV4) != _U64(0) else VIRTIO_NET_HDR_GSO_TCPV6
        gso_size = np.int64(mb.tso_segsz)
        hdr_len = l2 + l3 + l4h
        if guest_ecn and l2 + l3 + TCP_FLAGS_OFF < dl and (ld8(ip + _U64(l3 + TCP_FLAGS_OFF)) & TCP_CWR) != 0:
            gso_type |= VIRTIO_NET_HDR_GSO_ECN
    return hdr_words(flags, gso_type, hdr_len, gso_size, cs_start, cs_off, 0)


# =============================================================================
# TCP segmentation in software (a TSO request for a guest without GUEST_TSO4/6)
# =============================================================================


@kernel
def tso_frames(mp, m):
    """How many frames software segmentation cuts the TSO packet ``m`` into (0: it cannot:
    headers not in the first segment, not TCP over IPv4/IPv6, no MSS, or nothing to cut)."""
    mb = mp.mbufs[m]
    ol = _U64(mb.ol_flags)
    l2 = np.int64(mb.l2_len)
    l3 = np.int64(mb.l3_len)
    l4 = np.int64(mb.l4_len)
    mss = np.int64(mb.tso_segsz)
    hl = l2 + l3 + l4
    payload = np.int64(mb.pkt_len) - hl
    v4 = (ol & _IPV4) != _U64(0)
    if (ol & _TSO) == _U64(0) or mss <= 0 or payload <= 0 or l4 < 20 or hl > np.int64(mb.data_len):
        return np.int64(0)
    if (v4 and l3 < 20) or (not v4 and ((ol & _IPV6) == _U64(0) or l3 < 40)):
        return np.int64(0)
    return (payload + mss - 1) // mss


@kernel
def tso_frame_hdr(mp, m, f, nframes, seq0, id0, flags0, guest_csum):
    """Rewrite the headers of TSO packet ``m`` (in its first segment) as those of frame ``f``
    of ``nframes`` and return the frame's virtio-net header words (lo, hi).

    ``seq0``/``id0``/``flags0``: the original TCP sequence number, IPv4 id and TCP flags
    (:func:`tso_first`). Each frame carries ``tso_segsz`` payload bytes (the last the
    rest): IP length, IPv4 id and header checksum, TCP sequence number, and FIN/PSH only
    on the last frame, CWR only on the first. The TCP checksum is left partial with
    NEEDS_CSUM for a guest with GUEST_CSUM, else completed here over the frame's bytes.
    """
    mb = mp.mbufs[m]
    l2 = np.int64(mb.l2_len)
    l3 = np.int64(mb.l3_len)
    l4 = np.int64(mb.l4_len)
    mss = np.int64(mb.tso_segsz)
    hl = l2 + l3 + l4
    poff = hl + f * mss
    sl = min(mss, np.int64(mb.pkt_len) - poff)
    ip = seg_addr(mp, m) + _U64(l2)
    tcp = ip + _U64(l3)
    v4 = (_U64(mb.ol_flags) & _IPV4) != _U64(0)
    if v4:
        st16(ip + _U64(2), bswap16(l3 + l4 + sl))
        st16(ip + _U64(4), bswap16((np.int64(id0) + f) & 0xFFFF))
        ipv4_hdr_cksum(ip)
    else:
        st16(ip + _U64(4), bswap16(l3 - 40 + l4 + sl))
    seq = (np.int64(seq0) + f * mss) & 0xFFFFFFFF
    st_be32(tcp + _U64(4), seq)
    fl = np.int64(flags0)
    if f != nframes - 1:
        fl &= ~(TCP_FIN | TCP_PSH)
    if f != 0:
        fl &= ~TCP_CWR
    st8(tcp + _U64(TCP_FLAGS_OFF), fl)
    if v4:
        ph = phdr_sum_v4(ip, l4 + sl)
    else:
        ph = phdr_sum_v6(ip, l4 + sl, IPPROTO_TCP)
    if guest_csum:
        st16(tcp + _U64(TCP_CKSUM_OFF), fold(ph))
        return hdr_words(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, l2 + l3, TCP_CKSUM_OFF, 0)
    st16(tcp + _U64(TCP_CKSUM_OFF), 0)
    # the TCP header is 4-byte aligned in length: its sum and the payload's add as they are
    c = _U64(mbuf_cksum(mp, m, l2 + l3, l4)) + _U64(mbuf_cksum(mp, m, poff, sl)) + ph
    st16(tcp + _U64(TCP_CKSUM_OFF), ~fold(c) & _U64(0xFFFF))
    return hdr_words(0, 0, 0, 0, 0, 0, 0)


@kernel
def tso_cwr(mp, m):
    """Whether the TCP header of TSO packet ``m`` (in its first segment) has CWR set: a guest
    without GUEST_ECN must not get it as one GSO packet (virtio 1.2 §5.1.6.4.1)."""
    mb = mp.mbufs[m]
    off = np.int64(mb.l2_len) + np.int64(mb.l3_len) + TCP_FLAGS_OFF
    if off >= np.int64(mb.data_len):
        return False
    return (ld8(seg_addr(mp, m) + _U64(off)) & TCP_CWR) != 0


@kernel
def tso_first(mp, m):
    """The original (TCP sequence number, IPv4 id, TCP flags) of TSO packet ``m``, for :func:`tso_frame_hdr`."""
    mb = mp.mbufs[m]
    ip = seg_addr(mp, m) + _U64(mb.l2_len)
    tcp = ip + _U64(mb.l3_len)
    seq = np.int64(be32(tcp + _U64(4)))
    ident = np.int64(be16(ip + _U64(4))) if (_U64(mb.ol_flags) & _IPV4) != _U64(0) else np.int64(0)
    return seq, ident, np.int64(ld8(tcp + _U64(TCP_FLAGS_OFF)))


# =============================================================================
# header -> mbuf (vhost dequeue, virtio Rx)
# =============================================================================


@inline_kernel
def _complete_csum(mp, m, base, cs_start, cs_off):
    """Finish a NEEDS_CSUM request in software: the ones' complement of the sum from
    ``cs_start`` to the end (the guest left the pseudo-header sum in the field) goes
    to ``cs_start + cs_off``. Out-of-range offsets leave the packet as it is."""
    plen = np.int64(mp.mbufs[m].pkt_len)
    off = cs_start + cs_off
    if cs_start < plen and off + 2 <= np.int64(mp.mbufs[m].data_len):
        c = mbuf_cksum(mp, m, cs_start, plen - cs_start)
        if c >= 0:
            c = np.int64(c)
            if c != 0xFFFF:
                c = ~c & 0xFFFF
            st16(base + _U64(off), c)


@kernel
def hdr_to_mbuf(mp, m, lo, hi, legacy, host_ecn):
    """Apply a guest's Tx header (``lo``/``hi`` words) to the new packet ``m``.

    Returns False when the header was inconsistent with the packet (legacy
    mode: offload fields cleared, as DPDK does, but a checksum request that
    cannot be expressed as Tx flags is completed in software first, so the
    packet that goes on is valid).  ``host_ecn``: HOST_ECN was negotiated, so
    a GSO type with the ECN bit is accepted; GSO UDP never is (no HOST_UFO).
    """
    lo = _U64(lo)
    hi = _U64(hi)
    flags = np.int64(lo & _U64(0xFF))
    gso_type = np.int64((lo >> _U64(8)) & _U64(0xFF))
    if flags == 0 and gso_type == VIRTIO_NET_HDR_GSO_NONE:
        return True
    gso_size = np.int64((lo >> _U64(32)) & _U64(0xFFFF))
    cs_start = np.int64((lo >> _U64(48)) & _U64(0xFFFF))
    cs_off = np.int64(hi & _U64(0xFFFF))
    mb = mp.mbufs[m]
    base = seg_addr(mp, m)
    ok, l2, l3, l4, proto, v6, ptype = parse_headers(base, np.int64(mb.data_len))
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    ecn_ok = host_ecn or (gso_type & VIRTIO_NET_HDR_GSO_ECN) == 0
    if legacy:
        if not ok:
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                _complete_csum(mp, m, base, cs_start, cs_off)
            mb.l2_len = 0
            mb.l3_len = 0
            mb.ol_flags = _U64(0)
            return False
        ol = _IPV6 if v6 else _IPV4
        good = True
        if flags == VIRTIO_NET_HDR_F_NEEDS_CSUM:
            if cs_start != l2 + l3:
                good = False
            elif cs_off == TCP_CKSUM_OFF and proto == IPPROTO_TCP:
                ol |= _L4_TCP
            elif cs_off == UDP_CKSUM_OFF and proto == IPPROTO_UDP:
                ol |= _L4_UDP
            elif cs_off == SCTP_CKSUM_OFF and proto == IPPROTO_SCTP:
                ol |= _L4_SCTP
            else:
                good = False
        if good and gso_type != VIRTIO_NET_HDR_GSO_NONE:
            if (gso == VIRTIO_NET_HDR_GSO_TCPV4 or gso == VIRTIO_NET_HDR_GSO_TCPV6) and proto == IPPROTO_TCP and ecn_ok:
                ol |= _TSO
                mb.tso_segsz = gso_size
            else:
                good = False
        if not good:
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                _complete_csum(mp, m, base, cs_start, cs_off)
            mb.l2_len = 0
            mb.l3_len = 0
            mb.ol_flags = _U64(0)
            return False
        mb.l2_len = l2
        mb.l3_len = l3
        mb.l4_len = l4
        mb.ol_flags = _U64(mb.ol_flags) | ol
        return True
    # compliant: Rx flags
    mb.packet_type = ptype
    ol = _U64(0)
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        if ok and cs_start <= l2 + l3 + l4:
            ol |= _U64(RTE_MBUF_F_RX_L4_CKSUM_NONE)
        else:
            # unknown protocol or tunnel: complete the checksum in software
            _complete_csum(mp, m, base, cs_start, cs_off)
    if gso_type != VIRTIO_NET_HDR_GSO_NONE and gso_size != 0:
        tcp_gso = gso == VIRTIO_NET_HDR_GSO_TCPV4 or gso == VIRTIO_NET_HDR_GSO_TCPV6
        if tcp_gso and proto == IPPROTO_TCP and ok and ecn_ok:
            ol |= _U64(RTE_MBUF_F_RX_LRO | RTE_MBUF_F_RX_L4_CKSUM_NONE)
            mb.tso_segsz = gso_size
    if ok:
        mb.l2_len = l2
        mb.l3_len = l3
        mb.l4_len = l4
    mb.ol_flags = _U64(mb.ol_flags) | ol
    return True
