"""Internet checksums (RFC 1071): raw sums, pseudo-headers, the IPv4 header, L4 over mbuf chains.

Kernels sum little-endian 16-bit words; a ones' complement sum is byte-order
neutral, so the folded result stored back as a little-endian word is the
right checksum on the wire.  Sums are returned unfolded (``raw_sum``, the
pseudo-header sums) or folded to 16 bits and not inverted (:func:`fold`,
:func:`mbuf_cksum`), as DPDK's ``__rte_raw_cksum`` / ``rte_raw_cksum_mbuf``.
:func:`inet_checksum` is the same sum in Python, for tests and control code.
"""

from __future__ import annotations

import struct

import numpy as np

from dataplane.memory.mbuf import MBUF_NEXT_NONE
from dataplane.memory.mempool import seg_addr
from dataplane.rings.jit import inline_kernel, kernel
from dataplane.rings.mem import bswap16, ld8, ld16, ld32, st16

__all__ = [
    "inet_checksum",
    "fold",
    "raw_sum",
    "swap_sum",
    "mbuf_cksum",
    "phdr_sum_v4",
    "phdr_sum_v6",
    "ipv4_hdr_cksum",
]

_U64 = np.uint64


def inet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 ones' complement sum of ``data`` folded to 16 bits (NOT inverted)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@inline_kernel
def fold(s):
    """A 64-bit ones' complement sum folded to 16 bits."""
    s = _U64(s)
    s = (s & _U64(0xFFFFFFFF)) + (s >> _U64(32))
    s = (s & _U64(0xFFFFFFFF)) + (s >> _U64(32))
    s = (s & _U64(0xFFFF)) + (s >> _U64(16))
    s = (s & _U64(0xFFFF)) + (s >> _U64(16))
    s = (s & _U64(0xFFFF)) + (s >> _U64(16))
    return s


@kernel
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


@inline_kernel
def swap_sum(s):
    """A folded 16-bit sum as seen from the other byte parity."""
    s = fold(s)
    return ((s & _U64(0xFF)) << _U64(8)) | (s >> _U64(8))


@kernel
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
                s += swap_sum(part)
            else:
                s += part
            done += k
        pos += dl
        seg = np.int64(mb.next)
    if done != length:
        return np.int64(-1)
    return np.int64(fold(s))


@inline_kernel
def phdr_sum_v4(ip, l4_len):
    """IPv4 pseudo-header sum (LE words): addresses, protocol, L4 length."""
    s = _U64(ld32(ip + _U64(12))) + _U64(ld32(ip + _U64(16)))
    s += _U64(np.int64(ld8(ip + _U64(9))) << 8)
    s += _U64(bswap16(l4_len))
    return s


@inline_kernel
def phdr_sum_v6(ip, l4_len, proto):
    """IPv6 pseudo-header sum (LE words): addresses, upper-layer length, next header."""
    s = _U64(0)
    for k in range(8):
        s += _U64(ld32(ip + _U64(8 + 4 * k)))
    # 32-bit upper-layer length and next header, big endian
    s += _U64(bswap16((np.int64(l4_len) >> 16) & 0xFFFF)) + _U64(bswap16(np.int64(l4_len) & 0xFFFF))
    s += _U64(np.int64(proto) << 8)
    return s


@kernel
def ipv4_hdr_cksum(ip):
    """Recompute the IPv4 header checksum in place (rte_ipv4_cksum)."""
    ihl = (np.int64(ld8(ip)) & 0xF) * 4
    st16(ip + _U64(10), 0)
    c = fold(raw_sum(ip, ihl))
    c = ~c & _U64(0xFFFF)
    st16(ip + _U64(10), c)
