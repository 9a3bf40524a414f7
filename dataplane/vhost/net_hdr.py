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
  (virtio cannot offload it); ``TX_TCP_SEG`` → GSO TCPV4/TCPV6, ``TX_UDP_SEG`` →
  GSO UDP, with ``gso_size = tso_segsz`` and ``hdr_len = l2+l3+l4``.  When the
  guest did not negotiate GUEST_CSUM, an L4 checksum request (without TSO) is
  completed in software instead (DPDK's vhost PMD ``tx_sw_csum``).
* **header → mbuf** (:func:`hdr_to_mbuf`, vhost dequeue = guest Tx): nothing
  to do when flags and gso_type are 0.  Otherwise the Ethernet (+ one VLAN
  tag) / IPv4 / IPv6 / TCP / UDP / SCTP headers of the first segment are
  parsed.  *Legacy* mode (DPDK's default, and the vhost PMD's): Tx flags for a
  forwarding application — ``l2_len``/``l3_len`` (+ ``l4_len``), ``TX_IPV4`` /
  ``TX_IPV6``, ``TX_{TCP,UDP,SCTP}_CKSUM`` for NEEDS_CSUM whose ``csum_start``
  is the L4 header, ``TX_TCP_SEG``/``TX_UDP_SEG`` + ``tso_segsz`` for GSO;
  anything inconsistent clears ``l2_len``, ``l3_len`` and ``ol_flags``.
  *Compliant* mode (``RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS``): Rx flags —
  ``packet_type``, ``RX_L4_CKSUM_NONE`` when the checksum may be left to the
  next hop, or the checksum completed in software when the L4 protocol is
  unknown; GSO → ``RX_LRO`` + ``tso_segsz``.

The module also holds the raw-address helpers the data path uses on top of
:mod:`dataplane.rings.jit` (byte loads/stores, ``llvm.memcpy``, an eventfd
``write`` intrinsic, ``copy_bytes``), usable from NRT-free kernels; Python helpers
(:class:`NetHdr`, :func:`inet_checksum`) serve tests and control code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from dataplane.memory.mbuf import (
    MBUF_NEXT_NONE,
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
    RTE_PTYPE_L2_ETHER,
    RTE_PTYPE_L2_ETHER_VLAN,
    RTE_PTYPE_L3_IPV4,
    RTE_PTYPE_L3_IPV4_EXT,
    RTE_PTYPE_L3_IPV6,
    RTE_PTYPE_L4_FRAG,
    RTE_PTYPE_L4_ICMP,
    RTE_PTYPE_L4_SCTP,
    RTE_PTYPE_L4_TCP,
    RTE_PTYPE_L4_UDP,
)
from dataplane.rings.jit import (
    inline_kernel,
    kernel,
    load_u16,
    load_u32,
    load_u64,
    store_u16,
    store_u32,
    store_u64,
)

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
    "VIRTIO_NET_F",
    "F_CSUM",
    "F_GUEST_CSUM",
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
    "inet_checksum",
    "hdr_words",
    "mbuf_to_hdr",
    "hdr_to_mbuf",
    "parse_headers",
    "mbuf_cksum",
]

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

# -- virtio-net feature bit numbers (DESIGN §3) --------------------------------
VIRTIO_NET_F = {
    "CSUM": 0,
    "GUEST_CSUM": 1,
    "MTU": 3,
    "MAC": 5,
    "GSO": 6,
    "GUEST_TSO4": 7,
    "GUEST_TSO6": 8,
    "GUEST_ECN": 9,
    "GUEST_UFO": 10,
    "HOST_TSO4": 11,
    "HOST_TSO6": 12,
    "HOST_ECN": 13,
    "HOST_UFO": 14,
    "MRG_RXBUF": 15,
    "STATUS": 16,
    "CTRL_VQ": 17,
    "CTRL_RX": 18,
    "CTRL_VLAN": 19,
    "GUEST_ANNOUNCE": 21,
    "MQ": 22,
    "CTRL_MAC_ADDR": 23,
    "LOG_ALL": 26,
    "ANY_LAYOUT": 27,
    "INDIRECT_DESC": 28,
    "EVENT_IDX": 29,
    "PROTOCOL_FEATURES": 30,
    "VERSION_1": 32,
    "ACCESS_PLATFORM": 33,
    "RING_PACKED": 34,
    "IN_ORDER": 35,
    "ORDER_PLATFORM": 36,
}
F_CSUM = 1 << VIRTIO_NET_F["CSUM"]
F_GUEST_CSUM = 1 << VIRTIO_NET_F["GUEST_CSUM"]
F_HOST_TSO4 = 1 << VIRTIO_NET_F["HOST_TSO4"]
F_HOST_TSO6 = 1 << VIRTIO_NET_F["HOST_TSO6"]
F_HOST_ECN = 1 << VIRTIO_NET_F["HOST_ECN"]
F_HOST_UFO = 1 << VIRTIO_NET_F["HOST_UFO"]
F_MRG_RXBUF = 1 << VIRTIO_NET_F["MRG_RXBUF"]
F_INDIRECT_DESC = 1 << VIRTIO_NET_F["INDIRECT_DESC"]
F_EVENT_IDX = 1 << VIRTIO_NET_F["EVENT_IDX"]
F_VERSION_1 = 1 << VIRTIO_NET_F["VERSION_1"]
F_RING_PACKED = 1 << VIRTIO_NET_F["RING_PACKED"]
F_IN_ORDER = 1 << VIRTIO_NET_F["IN_ORDER"]
#: DPDK's virtio_net_with_host_offload(): the guest may send offload requests
F_HOST_OFFLOAD = F_CSUM | F_HOST_ECN | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_UFO


def net_hdr_len(features: int) -> int:
    """12 with MRG_RXBUF, VERSION_1 or RING_PACKED negotiated, else 10 (DESIGN §3)."""
    return NET_HDR_MRG_LEN if int(features) & (F_MRG_RXBUF | F_VERSION_1 | F_RING_PACKED) else NET_HDR_LEN


# =============================================================================
# Python side: the header as an object, the Internet checksum
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


def inet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 ones' complement sum of ``data`` folded to 16 bits (NOT inverted)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


# =============================================================================
# raw memory intrinsics (host virtual addresses; no NRT needed)
# =============================================================================


def _mem_access_u8():
    @intrinsic
    def _load(typingctx, addr):
        if not isinstance(addr, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            a = context.cast(builder, args[0], sig.args[0], types.uint64)
            return builder.load(builder.inttoptr(a, ir.IntType(8).as_pointer()), align=1)

        return types.uint8(addr), codegen

    @intrinsic
    def _store(typingctx, addr, val):
        if not isinstance(addr, types.Integer) or not isinstance(val, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            a = context.cast(builder, args[0], sig.args[0], types.uint64)
            v = context.cast(builder, args[1], sig.args[1], types.uint8)
            builder.store(v, builder.inttoptr(a, ir.IntType(8).as_pointer()), align=1)
            return context.get_dummy_value()

        return types.void(addr, val), codegen

    return _load, _store


ld8, st8 = _mem_access_u8()


# Wider accesses come from dataplane.rings.jit (element idx 0 at an address).
@inline_kernel
def ld16(addr):
    return load_u16(addr, 0)


@inline_kernel
def ld32(addr):
    return load_u32(addr, 0)


@inline_kernel
def ld64(addr):
    return load_u64(addr, 0)


@inline_kernel
def st16(addr, v):
    store_u16(addr, 0, v)


@inline_kernel
def st32(addr, v):
    store_u32(addr, 0, v)


@inline_kernel
def st64(addr, v):
    store_u64(addr, 0, v)


@intrinsic
def memcpy(typingctx, dst, src, n):
    """``llvm.memcpy(dst, src, n)`` between integer addresses (must not overlap)."""
    if not all(isinstance(a, types.Integer) for a in (dst, src, n)):
        return None

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        d = builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.uint64), i8p)
        s = builder.inttoptr(context.cast(builder, args[1], sig.args[1], types.uint64), i8p)
        k = context.cast(builder, args[2], sig.args[2], types.uint64)
        cgutils.raw_memcpy(builder, d, s, k, 1)
        return context.get_dummy_value()

    return types.void(dst, src, n), codegen


@intrinsic
def eventfd_signal(typingctx, fd):
    """libc ``write(fd, &(u64)1, 8)``: signal an eventfd; returns write's result.

    Declared as an external symbol (not a ctypes pointer), so functions that
    call it can be cached (DESIGN §5: ~210 ns a call).
    """
    if not isinstance(fd, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i64, [i32, i8p, i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "write")
        buf = cgutils.alloca_once(builder, i64)
        builder.store(ir.Constant(i64, 1), buf)
        fdv = builder.trunc(context.cast(builder, args[0], sig.args[0], types.int64), i32)
        return builder.call(fn, [fdv, builder.bitcast(buf, i8p), ir.Constant(i64, 8)])

    return types.int64(fd), codegen


_kernel = kernel
_inline = inline_kernel

_U64 = np.uint64


@_inline
def copy_bytes(dst, src, n):
    """Copy ``n`` bytes between host addresses: 8-byte words inline up to 64 bytes, memcpy above."""
    n = _U64(n)
    if n <= _U64(64):
        k = _U64(0)
        while k + _U64(8) <= n:
            st64(dst + k, ld64(src + k))
            k += _U64(8)
        while k < n:
            st8(dst + k, ld8(src + k))
            k += _U64(1)
    else:
        memcpy(dst, src, n)


@_inline
def bswap16(v):
    v = np.int64(v) & 0xFFFF
    return ((v & 0xFF) << 8) | (v >> 8)


@_inline
def be16(addr):
    """Big-endian u16 at a host address (as int64)."""
    return bswap16(ld16(addr))


# =============================================================================
# checksums (ones' complement sums of little-endian words; byte-order neutral)
# =============================================================================


@_inline
def _fold(s):
    s = _U64(s)
    s = (s & _U64(0xFFFFFFFF)) + (s >> _U64(32))
    s = (s & _U64(0xFFFFFFFF)) + (s >> _U64(32))
    s = (s & _U64(0xFFFF)) + (s >> _U64(16))
    s = (s & _U64(0xFFFF)) + (s >> _U64(16))
    s = (s & _U64(0xFFFF)) + (s >> _U64(16))
    return s


@_kernel
def raw_sum(addr, n):
    """Sum of the little-endian u16 words of ``[addr, addr+n)`` (odd tail byte = low byte), unfolded."""
    addr = _U64(addr)
    n = _U64(n)
    s = _U64(0)
    k = _U64(0)
    while k + _U64(4) <= n:
        s += _U64(ld32(addr + k))
        k += _U64(4)
    if k + _U64(2) <= n:
        s += _U64(ld16(addr + k))
        k += _U64(2)
    if k < n:
        s += _U64(ld8(addr + k))
    return s


@_inline
def _swap_sum(s):
    """A folded 16-bit sum as seen from the other byte parity."""
    s = _fold(s)
    return ((s & _U64(0xFF)) << _U64(8)) | (s >> _U64(8))


@_inline
def seg_addr(mp, m):
    """Host address of segment ``m``'s first data byte."""
    mb = mp.mbufs[m]
    return _U64(mp.data.ctypes.data) + _U64(mb.buf_off) + _U64(mb.data_off)


@_kernel
def mbuf_cksum(mp, m, off, length):
    """Folded (not inverted) ones' complement sum of packet bytes ``[off, off+length)``
    across the segments of packet ``m``; -1 when the range is outside the packet."""
    off = np.int64(off)
    length = np.int64(length)
    if off < 0 or length < 0 or off + length > np.int64(mp.mbufs[m].pkt_len):
        return np.int64(-1)
    seg = np.int64(m)
    pos = np.int64(0)  # packet offset of seg's first byte
    done = np.int64(0)
    s = _U64(0)
    while done < length and seg != MBUF_NEXT_NONE:
        mb = mp.mbufs[seg]
        dl = np.int64(mb.data_len)
        start = off + done - pos
        if start < dl:
            k = min(dl - start, length - done)
            part = raw_sum(seg_addr(mp, seg) + _U64(start), k)
            if done & 1:
                s += _swap_sum(part)
            else:
                s += part
            done += k
        pos += dl
        seg = np.int64(mb.next)
    if done != length:
        return np.int64(-1)
    return np.int64(_fold(s))


@_inline
def _phdr_sum_v4(ip, l4_len):
    """IPv4 pseudo-header sum (LE words): addresses, protocol, L4 length."""
    s = _U64(ld32(ip + _U64(12))) + _U64(ld32(ip + _U64(16)))
    s += _U64(np.int64(ld8(ip + _U64(9))) << 8)
    s += _U64(bswap16(l4_len))
    return s


@_inline
def _phdr_sum_v6(ip, l4_len, proto):
    s = _U64(0)
    for k in range(8):
        s += _U64(ld32(ip + _U64(8 + 4 * k)))
    # 32-bit upper-layer length and next header, big endian
    s += _U64(bswap16((np.int64(l4_len) >> 16) & 0xFFFF)) + _U64(bswap16(np.int64(l4_len) & 0xFFFF))
    s += _U64(np.int64(proto) << 8)
    return s


# =============================================================================
# header words
# =============================================================================


@_inline
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
# header parsing (Ethernet / VLAN / IPv4 / IPv6 / TCP / UDP / SCTP)
# =============================================================================

ETHER_TYPE_IPV4 = 0x0800
ETHER_TYPE_IPV6 = 0x86DD
ETHER_TYPE_VLAN = 0x8100
ETHER_TYPE_QINQ = 0x88A8
ETHER_TYPE_RARP = 0x8035
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
IPPROTO_FRAGMENT = 44
TCP_CKSUM_OFF = 16
UDP_CKSUM_OFF = 6
SCTP_CKSUM_OFF = 8


@_kernel
def parse_headers(addr, data_len):
    """Parse the headers at ``addr`` (``data_len`` contiguous bytes).

    Returns ``(ok, l2_len, l3_len, l4_len, l4_proto, is_ipv6, ptype)``;
    ``ok`` is False when there is no complete L2/L3/L4 (TCP, UDP, SCTP) header
    chain, as DPDK's ``parse_headers`` requires for any offload.  ``ptype``
    is the ``RTE_PTYPE_*`` value of what was recognised (even when not ok).
    """
    addr = _U64(addr)
    dl = np.int64(data_len)
    l2 = np.int64(14)
    l3 = np.int64(0)
    l4 = np.int64(0)
    proto = np.int64(0)
    v6 = False
    if dl < 14:
        return False, np.int64(0), l3, l4, proto, v6, np.int64(0)
    ptype = np.int64(RTE_PTYPE_L2_ETHER)
    et = be16(addr + _U64(12))
    if et == ETHER_TYPE_VLAN or et == ETHER_TYPE_QINQ:
        if dl < 18:
            return False, np.int64(0), l3, l4, proto, v6, ptype
        l2 = 18
        ptype = np.int64(RTE_PTYPE_L2_ETHER_VLAN)
        et = be16(addr + _U64(16))
    ip = addr + _U64(l2)
    if et == ETHER_TYPE_IPV4:
        if dl < l2 + 20:
            return False, np.int64(0), l3, l4, proto, v6, ptype
        l3 = (np.int64(ld8(ip)) & 0xF) * 4
        if l3 < 20 or dl < l2 + l3:
            return False, np.int64(0), np.int64(0), l4, proto, v6, ptype
        ptype |= RTE_PTYPE_L3_IPV4 if l3 == 20 else RTE_PTYPE_L3_IPV4_EXT
        proto = np.int64(ld8(ip + _U64(9)))
        frag = be16(ip + _U64(6)) & 0x3FFF
        if frag != 0:
            ptype |= RTE_PTYPE_L4_FRAG
            return False, l2, l3, l4, proto, v6, ptype
    elif et == ETHER_TYPE_IPV6:
        if dl < l2 + 40:
            return False, np.int64(0), l3, l4, proto, v6, ptype
        l3 = np.int64(40)
        v6 = True
        ptype |= RTE_PTYPE_L3_IPV6
        proto = np.int64(ld8(ip + _U64(6)))
        if proto == IPPROTO_FRAGMENT:
            ptype |= RTE_PTYPE_L4_FRAG
            return False, l2, l3, l4, proto, v6, ptype
    else:
        return False, np.int64(0), np.int64(0), l4, proto, v6, ptype
    th = ip + _U64(l3)
    if proto == IPPROTO_TCP:
        if dl < l2 + l3 + 20:
            return False, l2, l3, l4, proto, v6, ptype
        l4 = (np.int64(ld8(th + _U64(12))) & 0xF0) >> 2
        ptype |= RTE_PTYPE_L4_TCP
    elif proto == IPPROTO_UDP:
        if dl < l2 + l3 + 8:
            return False, l2, l3, l4, proto, v6, ptype
        l4 = np.int64(8)
        ptype |= RTE_PTYPE_L4_UDP
    elif proto == IPPROTO_SCTP:
        if dl < l2 + l3 + 12:
            return False, l2, l3, l4, proto, v6, ptype
        l4 = np.int64(12)
        ptype |= RTE_PTYPE_L4_SCTP
    else:
        if proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6:
            ptype |= RTE_PTYPE_L4_ICMP
        return False, l2, l3, l4, proto, v6, ptype
    return True, l2, l3, l4, proto, v6, ptype


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


@_kernel
def _ipv4_hdr_cksum(ip):
    """Recompute the IPv4 header checksum in place (rte_ipv4_cksum)."""
    ihl = (np.int64(ld8(ip)) & 0xF) * 4
    st16(ip + _U64(10), 0)
    c = _fold(raw_sum(ip, ihl))
    c = ~c & _U64(0xFFFF)
    st16(ip + _U64(10), c)


@_kernel
def mbuf_to_hdr(mp, m, guest_csum):
    """The virtio-net header (lo, hi without num_buffers) for sending packet ``m`` to a guest.

    May write into the packet (pseudo-header checksum, IPv4 header checksum,
    software L4 checksum when ``guest_csum`` is False) and clear the L4
    checksum request it completed, like DPDK.  Headers must be in the first
    segment; otherwise the offload fields are left empty.
    """
    mb = mp.mbufs[m]
    ol = _U64(mb.ol_flags)
    if (ol & _TX_HDR_FLAGS) == _U64(0):
        return _U64(0), _U64(0)
    l2 = np.int64(mb.l2_len)
    l3 = np.int64(mb.l3_len)
    l4h = np.int64(mb.l4_len)
    dl = np.int64(mb.data_len)
    base = seg_addr(mp, m)
    ip = base + _U64(l2)
    tso = (ol & (_TSO | _USO)) != _U64(0)
    csum_l4 = ol & _L4_MASK
    if (ol & _TSO) != _U64(0):
        csum_l4 = _L4_TCP
    elif (ol & _USO) != _U64(0):
        csum_l4 = _L4_UDP
    hdr_ok = l2 + l3 + 8 <= dl and l3 >= 20
    if (ol & _IPCK) != _U64(0) and (ol & _IPV4) != _U64(0) and hdr_ok:
        _ipv4_hdr_cksum(ip)
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
                ph = _phdr_sum_v4(ip, plen)
            else:
                ph = _phdr_sum_v6(ip, plen, ld8(ip + _U64(6)))
            if not guest_csum and not tso:
                # the guest cannot take a partial checksum: complete it here
                st16(l4 + _U64(cs_off), 0)
                full = mbuf_cksum(mp, m, cs_start, pkt_l4_len)
                if full >= 0:
                    c = ~_fold(_U64(full) + ph) & _U64(0xFFFF)
                    if c == _U64(0) and csum_l4 == _L4_UDP:
                        c = _U64(0xFFFF)
                    st16(l4 + _U64(cs_off), c)
                    mb.ol_flags = ol & ~_L4_MASK
                cs_start = 0
                cs_off = 0
            else:
                st16(l4 + _U64(cs_off), _fold(ph))
                flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        elif guest_csum or tso:
            flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        else:
            cs_start = 0
            cs_off = 0
    if (ol & _TSO) != _U64(0):
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if (ol & _IPV4) != _U64(0) else VIRTIO_NET_HDR_GSO_TCPV6
        gso_size = np.int64(mb.tso_segsz)
        hdr_len = l2 + l3 + l4h
    elif (ol & _USO) != _U64(0):
        gso_type = VIRTIO_NET_HDR_GSO_UDP
        gso_size = np.int64(mb.tso_segsz)
        hdr_len = l2 + l3 + l4h
    return hdr_words(flags, gso_type, hdr_len, gso_size, cs_start, cs_off, 0)


# =============================================================================
# header -> mbuf (vhost dequeue, virtio Rx)
# =============================================================================


@_inline
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


@_kernel
def hdr_to_mbuf(mp, m, lo, hi, legacy):
    """Apply a guest's Tx header (``lo``/``hi`` words) to the new packet ``m``.

    Returns False when the header was inconsistent with the packet (legacy
    mode: offload fields cleared, as DPDK does, but a checksum request that
    cannot be expressed as Tx flags is completed in software first, so the
    packet that goes on is valid).
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
            if (gso == VIRTIO_NET_HDR_GSO_TCPV4 or gso == VIRTIO_NET_HDR_GSO_TCPV6) and proto == IPPROTO_TCP:
                ol |= _TSO
                mb.tso_segsz = gso_size
            elif gso == VIRTIO_NET_HDR_GSO_UDP and proto == IPPROTO_UDP:
                ol |= _USO
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
        if (gso == VIRTIO_NET_HDR_GSO_TCPV4 or gso == VIRTIO_NET_HDR_GSO_TCPV6) and proto == IPPROTO_TCP and ok:
            ol |= _U64(RTE_MBUF_F_RX_LRO | RTE_MBUF_F_RX_L4_CKSUM_NONE)
            mb.tso_segsz = gso_size
        elif gso == VIRTIO_NET_HDR_GSO_UDP and proto == IPPROTO_UDP and ok:
            ol |= _U64(RTE_MBUF_F_RX_LRO | RTE_MBUF_F_RX_L4_CKSUM_NONE)
            mb.tso_segsz = gso_size
    if ok:
        mb.l2_len = l2
        mb.l3_len = l3
        mb.l4_len = l4
    mb.ol_flags = _U64(mb.ol_flags) | ol
    return True
