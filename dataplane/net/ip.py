"""IPv4 (RFC 791) and IPv6 (RFC 8200) headers, and IP protocol numbers.

IPv4 addresses in kernels are host-order ints (:func:`ipv4`).
"""

from __future__ import annotations

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPPROTO_FRAGMENT",
    "IPPROTO_ICMPV6",
    "IPPROTO_SCTP",
    "IPV4_ADDR_LEN",
    "IPV4_MIN_HDR_LEN",
    "IPV4_VHL_DEF",
    "IPV4_TOTLEN_OFF",
    "IPV4_FRAG_OFF",
    "IPV4_FRAG_MASK",
    "IPV4_FRAG_OFFSET_MASK",
    "IPV4_TTL_OFF",
    "IPV4_PROTO_OFF",
    "IPV4_CKSUM_OFF",
    "IPV4_SRC_OFF",
    "IPV4_DST_OFF",
    "IPV4_MCAST_MASK",
    "IPV4_MCAST_NET",
    "IPV6_HDR_LEN",
    "IPV6_PLEN_OFF",
    "IPV6_NXT_OFF",
    "IPV6_SRC_OFF",
    "IPV6_DST_OFF",
    "IPV6_ADDR_LEN",
    "ipv4",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_FRAGMENT = 44  # IPv6 fragment extension header
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

IPV4_ADDR_LEN = 4
IPV4_MIN_HDR_LEN = 20
IPV4_VHL_DEF = 0x45  # version 4, 5 words (RTE_IPV4_VHL_DEF)
IPV4_TOTLEN_OFF = 2
IPV4_FRAG_OFF = 6
IPV4_FRAG_MASK = 0x3FFF  # MF flag and fragment offset
IPV4_FRAG_OFFSET_MASK = 0x1FFF  # fragment offset alone (0: the first fragment)
IPV4_TTL_OFF = 8
IPV4_PROTO_OFF = 9
IPV4_CKSUM_OFF = 10
IPV4_SRC_OFF = 12
IPV4_DST_OFF = 16
IPV4_MCAST_MASK = 0xF0000000  # 224.0.0.0/4
IPV4_MCAST_NET = 0xE0000000

IPV6_HDR_LEN = 40
IPV6_PLEN_OFF = 4
IPV6_NXT_OFF = 6
IPV6_SRC_OFF = 8
IPV6_DST_OFF = 24
IPV6_ADDR_LEN = 16


def ipv4(a: int, b: int, c: int, d: int) -> int:
    """The host-order int of IPv4 address a.b.c.d (RTE_IPV4)."""
    return (a << 24) | (b << 16) | (c << 8) | d
