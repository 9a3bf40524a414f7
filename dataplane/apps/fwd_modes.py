"""The packet work of testpmd's forwarding engines, as NRT-free numba kernels.

Each kernel does to one burst of mbufs (``pkts``: an array of mbuf indices of
the mempool ``mp`` = :attr:`Mempool.arrays`) what DPDK 22.11 testpmd's engine
does between ``rte_eth_rx_burst`` and ``rte_eth_tx_burst``; the engine's
lcore loop calls it once per burst (the loops are inside):

================  ==========================================================
testpmd engine    kernel
================  ==========================================================
``mac``           :func:`fwd_mac` (macfwd.c): dst MAC = ``--eth-peer``, src = port MAC
``macswap``       :func:`fwd_macswap` (macswap.c): swap dst and src MAC
``5tswap``        :func:`fwd_5tswap` (5tswap.c): swap MACs, IPv4/IPv6
                  addresses and TCP/UDP ports
``csum``          :func:`fwd_csum` (csumonly.c, no HW offload): parse
                  Ether [+VLAN/QinQ] / IPv4|IPv6 / TCP|UDP, count bad
                  checksums, rewrite correct ones in software
``icmpecho``      :func:`fwd_icmpecho` (icmpecho.c): answer ARP requests and
                  ICMP echo requests, free everything else, compact the burst
``txonly``        :func:`build_txonly` (txonly.c): allocate and build
                  Ether/IPv4/UDP frames laid out as ``--txpkts``
``flowgen``       :func:`build_flowgen` (flowgen.c): allocate UDP frames
                  cycling the IPv4 destination over ``nb_flows`` flows
================  ==========================================================

``io`` and ``rxonly`` touch no packet bytes and need no kernel.

Conventions: MAC addresses are int64 holding the 48-bit address with the
first wire byte highest (``0x525400000001`` is ``52:54:00:00:00:01``;
:func:`dataplane.net.ether.mac_to_int` converts); IPv4 addresses are
host-order ints (:func:`dataplane.net.ip.ipv4`).  Headers must be in the
first segment (DPDK's assumption); payloads may span segments.  Header
layouts come from :mod:`dataplane.net`; testpmd's default addresses are the
named data below.

Kernels follow :mod:`dataplane.rings.jit`: ``_nrt=False``, no allocation
(scratch space from ``stack_array_u32``), packet bytes through the
raw-address loads and stores of :mod:`dataplane.rings.mem`, ones' complement
sums with :mod:`dataplane.net.cksum` (``raw_sum``, ``mbuf_cksum``).
"""

from __future__ import annotations

import numpy as np

from dataplane.memory.mbuf import (
    MBUF_NEXT_NONE,
    RTE_MBUF_F_EXTERNAL,
    RTE_MBUF_F_INDIRECT,
    RTE_MBUF_F_RX_IP_CKSUM_BAD,
    RTE_MBUF_F_RX_IP_CKSUM_MASK,
    RTE_MBUF_F_RX_IP_CKSUM_UNKNOWN,
    RTE_MBUF_F_RX_L4_CKSUM_BAD,
    RTE_MBUF_F_RX_L4_CKSUM_MASK,
    RTE_MBUF_F_RX_L4_CKSUM_UNKNOWN,
    RTE_MBUF_F_TX_IPV4,
    RTE_MBUF_F_TX_IPV6,
    RTE_MBUF_F_TX_L4_MASK,
    RTE_MBUF_F_TX_TCP_SEG,
    RTE_MBUF_F_TX_UDP_SEG,
)
from dataplane.memory.mempool import (
    I_BUF_LEN,
    I_HEADROOM,
    pktmbuf_alloc,
    pktmbuf_alloc_bulk,
    pktmbuf_free,
    seg_addr,
)
from dataplane.net.arp import (
    ARP_HDR_LEN,
    ARP_HLN_OFF,
    ARP_HRD_ETHER,
    ARP_HRD_OFF,
    ARP_OP_OFF,
    ARP_OP_REPLY,
    ARP_OP_REQUEST,
    ARP_PLN_OFF,
    ARP_PRO_OFF,
    ARP_SHA_OFF,
    ARP_SIP_OFF,
    ARP_THA_OFF,
    ARP_TIP_OFF,
)
from dataplane.net.cksum import fold, mbuf_cksum, phdr_sum_v4, phdr_sum_v6, raw_sum
from dataplane.net.ether import (
    ETH_DST_OFF,
    ETH_SRC_OFF,
    ETH_TYPE_OFF,
    ETHER_ADDR_LEN,
    ETHER_CRC_LEN,
    ETHER_HDR_LEN,
    ETHER_TYPE_ARP,
    ETHER_TYPE_IPV4,
    ETHER_TYPE_IPV6,
    ETHER_TYPE_QINQ,
    ETHER_TYPE_VLAN,
    VLAN_HDR_LEN,
    VLAN_PROTO_OFF,
    copy_mac,
    ld_mac,
    mac_le,
    st_mac,
)
from dataplane.net.ip import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_ADDR_LEN,
    IPV4_CKSUM_OFF,
    IPV4_DST_OFF,
    IPV4_FRAG_MASK,
    IPV4_FRAG_OFF,
    IPV4_FRAG_OFFSET_MASK,
    IPV4_MCAST_MASK,
    IPV4_MCAST_NET,
    IPV4_MIN_HDR_LEN,
    IPV4_PROTO_OFF,
    IPV4_SRC_OFF,
    IPV4_TOTLEN_OFF,
    IPV4_TTL_OFF,
    IPV4_VHL_DEF,
    IPV6_DST_OFF,
    IPV6_HDR_LEN,
    IPV6_NXT_OFF,
    IPV6_PLEN_OFF,
    IPV6_SRC_OFF,
    ipv4,
)
from dataplane.net.l4 import (
    ICMP_CKSUM_OFF,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_HDR_LEN,
    TCP_CKSUM_OFF,
    TCP_DOFF_OFF,
    TCP_DPORT_OFF,
    TCP_MIN_HDR_LEN,
    TCP_SPORT_OFF,
    UDP_CKSUM_OFF,
    UDP_DPORT_OFF,
    UDP_HDR_LEN,
    UDP_LEN_OFF,
    UDP_SPORT_OFF,
)
from dataplane.rings.jit import always_inline, inline_kernel, kernel, stack_array_u32
from dataplane.rings.mem import (
    be16, be32, bswap32, copy_bytes, ld8, ld16, ld32, ld64, st8, st16, st32, st64, st_be16, st_be32,
)

__all__ = [
    "fwd_mac",
    "fwd_macswap",
    "fwd_5tswap",
    "fwd_csum",
    "fwd_icmpecho",
    "build_txonly",
    "build_flowgen",
    "txonly_backout",
    "flowgen_backout",
    "csum_counters",
    "CSUM_BAD_IP",
    "CSUM_BAD_L4",
    "CSUM_IPV4",
    "CSUM_IPV6",
    "CSUM_TCP",
    "CSUM_UDP",
    "CSUM_NOT_PARSED",
    "CSUM_NB_COUNTERS",
    "CSUM_COUNTER_NAMES",
]


# =============================================================================
# the frames txonly and flowgen build (header layouts: dataplane.net)
# =============================================================================

IP_DEFTTL = 64  # testpmd's IP_DEFTTL (RFC 1340)
#: Ether + IPv4 + UDP: the headers txonly and flowgen write
GEN_HDR_LEN = ETHER_HDR_LEN + IPV4_MIN_HDR_LEN + UDP_HDR_LEN  # 42
GEN_IP_OFF = ETHER_HDR_LEN
GEN_UDP_OFF = ETHER_HDR_LEN + IPV4_MIN_HDR_LEN
GEN_MAX_IP_LEN = 0xFFFF

# =============================================================================
# testpmd 22.11 defaults
# =============================================================================

# txonly.c: RFC 5735 / RFC 2544 test addresses, RFC 863 discard port
TXONLY_IP_SRC = ipv4(198, 18, 0, 1)
TXONLY_IP_DST = ipv4(198, 18, 0, 2)
TXONLY_UDP_SRC_PORT = 9
TXONLY_UDP_DST_PORT = 9
TXONLY_DEF_PACKET_LEN = 64  # --txpkts default
RTE_MAX_SEGS_PER_PKT = 255  # --txpkts takes at most this many segments
_SEG_SCRATCH = 256  # stack slots for the extra segments of one packet

# flowgen.c: fixed addresses; the destination IP is cfg_ip_dst + flow
FLOWGEN_IP_SRC = ipv4(10, 254, 0, 0)
FLOWGEN_IP_DST = ipv4(10, 253, 0, 0)
FLOWGEN_UDP_SRC_PORT = 1000
FLOWGEN_UDP_DST_PORT = 1001
FLOWGEN_ETHER_SRC = 0x000102030400  # cfg_ether_src (testpmd ignores the port MACs here)
FLOWGEN_ETHER_DST = 0x000102030401  # cfg_ether_dst
FLOWGEN_DEFAULT_FLOWS = 1024  # --flowgen-flows default

# =============================================================================
# csum engine counters (an int64 array the caller owns; testpmd's fwd_stream
# rx_bad_ip_csum / rx_bad_l4_csum plus what the parser saw)
# =============================================================================

CSUM_BAD_IP = 0  # IPv4 header checksum wrong on arrival (or flagged bad by Rx)
CSUM_BAD_L4 = 1  # TCP/UDP checksum wrong on arrival (or flagged bad by Rx)
CSUM_IPV4 = 2  # IPv4 packets (header checksum rewritten)
CSUM_IPV6 = 3  # IPv6 packets
CSUM_TCP = 4  # TCP checksums rewritten
CSUM_UDP = 5  # UDP checksums rewritten
CSUM_NOT_PARSED = 6  # not IP, or headers truncated / IP length past the frame: L4 (and for non-IP everything) untouched
CSUM_NB_COUNTERS = 7
CSUM_COUNTER_NAMES = ("bad_ip_csum", "bad_l4_csum", "ipv4", "ipv6", "tcp", "udp", "not_parsed")
assert len(CSUM_COUNTER_NAMES) == CSUM_NB_COUNTERS


def csum_counters() -> np.ndarray:
    """A zeroed counter array for :func:`fwd_csum` (index with ``CSUM_*``)."""
    return np.zeros(CSUM_NB_COUNTERS, np.int64)


# =============================================================================
# small helpers (inlined into the kernels)
# =============================================================================

_U64 = np.uint64
_M16 = _U64(0xFFFF)
_KEEP_FLAGS = _U64(RTE_MBUF_F_INDIRECT | RTE_MBUF_F_EXTERNAL)  # survive a forward (testpmd)
_IP_RX_MASK = _U64(RTE_MBUF_F_RX_IP_CKSUM_MASK)
_IP_RX_BAD = _U64(RTE_MBUF_F_RX_IP_CKSUM_BAD)
_IP_RX_UNKNOWN = _U64(RTE_MBUF_F_RX_IP_CKSUM_UNKNOWN)
_L4_RX_MASK = _U64(RTE_MBUF_F_RX_L4_CKSUM_MASK)
_L4_RX_BAD = _U64(RTE_MBUF_F_RX_L4_CKSUM_BAD)
_L4_RX_UNKNOWN = _U64(RTE_MBUF_F_RX_L4_CKSUM_UNKNOWN)
# a sender asked for the L4 checksum to be completed later: the field holds a partial sum
_L4_PENDING = _U64(RTE_MBUF_F_TX_L4_MASK | RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_UDP_SEG)
_TX_IPV4 = _U64(RTE_MBUF_F_TX_IPV4)
_TX_IPV6 = _U64(RTE_MBUF_F_TX_IPV6)


@inline_kernel
def _ipv4_cksum_rewrite(ip, ihl):
    """Rewrite the IPv4 header checksum (rte_ipv4_cksum); True if the old one verified.

    One pass: the sum with the old checksum in place verifies it, and that
    sum minus the old field (ones' complement) is the sum a zeroed field gives.
    """
    s = fold(raw_sum(ip, ihl))
    old = _U64(ld16(ip + _U64(IPV4_CKSUM_OFF)))
    st16(ip + _U64(IPV4_CKSUM_OFF), ~fold(s + (~old & _M16)) & _M16)
    return s == _M16


@inline_kernel
def _ipv4_set_addr(ip, off, addr, base):
    """Write IPv4 address ``addr`` (host order) at ``ip + off`` and the header
    checksum, from ``base`` = the unfolded sum of the header with that address
    and the checksum zeroed (one template sum per burst, not per packet)."""
    a = _U64(bswap32(addr))
    st32(ip + _U64(off), a)
    s = base + (a & _M16) + (a >> _U64(16))
    st16(ip + _U64(IPV4_CKSUM_OFF), ~fold(s) & _M16)


# =============================================================================
# mac / macswap
# =============================================================================


@kernel
def fwd_mac(mp, pkts, n, dst_mac, src_mac):
    """testpmd ``mac`` (macfwd.c): Ethernet dst := ``dst_mac`` (the ``--eth-peer``
    of the Tx port), src := ``src_mac`` (the Tx port's MAC) in ``pkts[:n]``.

    Packets shorter than an Ethernet header are left alone.  Unlike testpmd,
    ``ol_flags`` are kept (testpmd replaces them with its configured Tx
    offloads, none here), so a checksum request a guest made still reaches
    the next port.
    """
    d = mac_le(dst_mac)
    s = mac_le(src_mac)
    for i in range(n):
        m = np.int64(pkts[i])
        if np.int64(mp.mbufs[m].data_len) < ETHER_HDR_LEN:
            continue
        eth = seg_addr(mp, m)
        st_mac(eth + _U64(ETH_DST_OFF), d)
        st_mac(eth + _U64(ETH_SRC_OFF), s)


@kernel
def fwd_macswap(mp, pkts, n):
    """testpmd ``macswap`` (macswap.c): swap the Ethernet dst and src MACs of ``pkts[:n]``.

    Packets shorter than an Ethernet header are left alone; ``ol_flags`` kept
    (see :func:`fwd_mac`).
    """
    for i in range(n):
        m = np.int64(pkts[i])
        if np.int64(mp.mbufs[m].data_len) < ETHER_HDR_LEN:
            continue
        eth = seg_addr(mp, m)
        d = ld_mac(eth + _U64(ETH_DST_OFF))
        s = ld_mac(eth + _U64(ETH_SRC_OFF))
        st_mac(eth + _U64(ETH_DST_OFF), s)
        st_mac(eth + _U64(ETH_SRC_OFF), d)


# =============================================================================
# 5tswap
# =============================================================================


@inline_kernel
def _swap16(a, b):
    """Swap the 16-bit words at host addresses ``a`` and ``b``."""
    x = ld16(a)
    st16(a, ld16(b))
    st16(b, x)


@inline_kernel
def _swap32(a, b):
    x = ld32(a)
    st32(a, ld32(b))
    st32(b, x)


@inline_kernel
def _swap64(a, b):
    x = ld64(a)
    st64(a, ld64(b))
    st64(b, x)


@kernel
def _5tswap_one(mp, m):
    always_inline()
    mb = mp.mbufs[m]
    dl = np.int64(mb.data_len)
    if dl < ETHER_HDR_LEN:
        return
    eth = seg_addr(mp, m)
    d = ld_mac(eth + _U64(ETH_DST_OFF))
    st_mac(eth + _U64(ETH_DST_OFF), ld_mac(eth + _U64(ETH_SRC_OFF)))
    st_mac(eth + _U64(ETH_SRC_OFF), d)
    l2 = np.int64(ETHER_HDR_LEN)
    et = be16(eth + _U64(ETH_TYPE_OFF))
    while et == ETHER_TYPE_VLAN or et == ETHER_TYPE_QINQ:
        if l2 + VLAN_HDR_LEN > dl:
            return
        et = be16(eth + _U64(l2 + VLAN_PROTO_OFF))
        l2 += VLAN_HDR_LEN
    mb.l2_len = l2
    ip = eth + _U64(l2)
    if et == ETHER_TYPE_IPV4:
        if l2 + IPV4_MIN_HDR_LEN > dl:
            return
        # the header checksum is a sum of 16-bit words: swapping two addresses keeps it
        _swap32(ip + _U64(IPV4_SRC_OFF), ip + _U64(IPV4_DST_OFF))
        l3 = (np.int64(ld8(ip)) & 0xF) * 4
        mb.l3_len = l3
        if l3 < IPV4_MIN_HDR_LEN:
            return
        if (be16(ip + _U64(IPV4_FRAG_OFF)) & IPV4_FRAG_OFFSET_MASK) != 0:
            return  # a later fragment: its first bytes are payload, not ports
        proto = np.int64(ld8(ip + _U64(IPV4_PROTO_OFF)))
    elif et == ETHER_TYPE_IPV6:
        l3 = np.int64(IPV6_HDR_LEN)
        if l2 + l3 > dl:
            return
        _swap64(ip + _U64(IPV6_SRC_OFF), ip + _U64(IPV6_DST_OFF))
        _swap64(ip + _U64(IPV6_SRC_OFF + 8), ip + _U64(IPV6_DST_OFF + 8))
        mb.l3_len = l3
        proto = np.int64(ld8(ip + _U64(IPV6_NXT_OFF)))  # no extension header walk (testpmd neither)
    else:
        return
    th = ip + _U64(l3)
    # the ports are summed into the L4 checksum the same way: it stays right
    if proto == IPPROTO_UDP:
        if l2 + l3 + UDP_HDR_LEN <= dl:
            _swap16(th + _U64(UDP_SPORT_OFF), th + _U64(UDP_DPORT_OFF))
            mb.l4_len = UDP_HDR_LEN
    elif proto == IPPROTO_TCP:
        if l2 + l3 + TCP_MIN_HDR_LEN <= dl:
            _swap16(th + _U64(TCP_SPORT_OFF), th + _U64(TCP_DPORT_OFF))
            mb.l4_len = (np.int64(ld8(th + _U64(TCP_DOFF_OFF))) & 0xF0) >> 2


@kernel
def fwd_5tswap(mp, pkts, n):
    """testpmd ``5tswap`` (5tswap.c): swap source and destination at layers 2, 3 and 4 of ``pkts[:n]``.

    Ethernet dst/src MACs; past any number of VLAN/QinQ tags, IPv4 or IPv6
    src/dst addresses; then TCP or UDP src/dst ports.  Parsing stops at the
    first layer that is none of these (ARP: MACs only; SCTP, ICMP: MACs and
    addresses), as in testpmd.  ``l2_len``, ``l3_len`` and ``l4_len`` are set
    for the layers found.  No checksum changes: each swap exchanges words of
    the same sums.

    Where testpmd trusts the frame, this stops instead: at a header that does
    not fit the first segment (a runt, a truncated tag, IP or L4 header), and
    before the ports of an IPv4 fragment other than the first.  ``ol_flags``
    are kept (see :func:`fwd_mac`).
    """
    for i in range(n):
        _5tswap_one(mp, np.int64(pkts[i]))


# =============================================================================
# csum
# =============================================================================


@kernel
def _l4_cksum_rewrite(mp, m, ol, l4_off, l4_len, phdr, field, is_udp, is_v6, counters):
    """Verify (unless the Rx flags say otherwise) and rewrite one TCP/UDP checksum.

    ``l4_off``/``l4_len``: the L4 segment in the packet (may span mbuf
    segments); ``field``: host address of the checksum field (first segment);
    ``phdr``: the pseudo-header sum.
    """
    always_inline()
    old = _U64(ld16(field))
    if is_udp and not is_v6 and old == _U64(0):
        return  # IPv4 UDP without checksum: testpmd leaves it so
    data = mbuf_cksum(mp, m, l4_off, l4_len)
    if data < 0:
        counters[CSUM_NOT_PARSED] += 1
        return
    total = fold(_U64(data) + phdr)
    rx = ol & _L4_RX_MASK
    if rx == _L4_RX_BAD:
        counters[CSUM_BAD_L4] += 1
    elif rx == _L4_RX_UNKNOWN and (ol & _L4_PENDING) == _U64(0):
        # nobody checked it yet and no sender left it partial: check it here
        # (a zero field can be right for TCP, whose sum may be -0; not for UDP)
        if total != _M16 or (is_udp and old == _U64(0)):
            counters[CSUM_BAD_L4] += 1
    c = ~fold(total + (~old & _M16)) & _M16
    if is_udp and c == _U64(0):
        c = _M16  # 0 means "no checksum" in UDP (rte_ipv4_udptcp_cksum)
    st16(field, c)
    if is_udp:
        counters[CSUM_UDP] += 1
    else:
        counters[CSUM_TCP] += 1


@kernel
def _csum_one(mp, m, counters):
    always_inline()
    mb = mp.mbufs[m]
    ol = _U64(mb.ol_flags)
    dl = np.int64(mb.data_len)
    pl = np.int64(mb.pkt_len)
    base = seg_addr(mp, m)
    # testpmd: the forwarded packet carries only the Tx flags the engine sets
    keep = ol & _KEEP_FLAGS
    mb.ol_flags = keep
    if dl < ETHER_HDR_LEN:
        counters[CSUM_NOT_PARSED] += 1
        return
    # parse_ethernet: any number of VLAN / QinQ tags
    l2 = np.int64(ETHER_HDR_LEN)
    et = be16(base + _U64(ETH_TYPE_OFF))
    while et == ETHER_TYPE_VLAN or et == ETHER_TYPE_QINQ:
        if l2 + VLAN_HDR_LEN > dl:
            counters[CSUM_NOT_PARSED] += 1
            return
        et = be16(base + _U64(l2 + VLAN_PROTO_OFF))
        l2 += VLAN_HDR_LEN
    mb.l2_len = l2
    mb.l3_len = 0
    mb.l4_len = 0
    ip = base + _U64(l2)
    if et == ETHER_TYPE_IPV4:
        if l2 + IPV4_MIN_HDR_LEN > dl:
            counters[CSUM_NOT_PARSED] += 1
            return
        l3 = (np.int64(ld8(ip)) & 0xF) * 4
        if l3 < IPV4_MIN_HDR_LEN or l2 + l3 > dl:
            counters[CSUM_NOT_PARSED] += 1
            return
        counters[CSUM_IPV4] += 1
        mb.l3_len = l3
        mb.ol_flags = keep | _TX_IPV4
        ok = _ipv4_cksum_rewrite(ip, l3)
        rx = ol & _IP_RX_MASK
        if rx == _IP_RX_BAD or (rx == _IP_RX_UNKNOWN and not ok):
            counters[CSUM_BAD_IP] += 1
        proto = np.int64(ld8(ip + _U64(IPV4_PROTO_OFF)))
        if (be16(ip + _U64(IPV4_FRAG_OFF)) & IPV4_FRAG_MASK) != 0:
            return  # a fragment: the L4 checksum covers the whole datagram
        l4_len = be16(ip + _U64(IPV4_TOTLEN_OFF)) - l3
        v6 = False
    elif et == ETHER_TYPE_IPV6:
        l3 = np.int64(IPV6_HDR_LEN)
        if l2 + l3 > dl:
            counters[CSUM_NOT_PARSED] += 1
            return
        counters[CSUM_IPV6] += 1
        mb.l3_len = l3
        mb.ol_flags = keep | _TX_IPV6
        # like testpmd's parse_ipv6: no extension header walk
        proto = np.int64(ld8(ip + _U64(IPV6_NXT_OFF)))
        l4_len = be16(ip + _U64(IPV6_PLEN_OFF))
        v6 = True
    else:
        counters[CSUM_NOT_PARSED] += 1
        return
    l4_off = l2 + l3
    th = ip + _U64(l3)
    if proto == IPPROTO_TCP:
        hl = TCP_MIN_HDR_LEN
        field = th + _U64(TCP_CKSUM_OFF)
    elif proto == IPPROTO_UDP:
        hl = UDP_HDR_LEN
        field = th + _U64(UDP_CKSUM_OFF)
    else:
        return  # other L4: only the IPv4 header checksum is ours
    if l4_off + hl > dl or l4_len < hl or l4_off + l4_len > pl:
        counters[CSUM_NOT_PARSED] += 1
        return
    if proto == IPPROTO_TCP:
        mb.l4_len = (np.int64(ld8(th + _U64(TCP_DOFF_OFF))) & 0xF0) >> 2
    else:
        mb.l4_len = UDP_HDR_LEN
    if v6:
        phdr = phdr_sum_v6(ip, l4_len, proto)
    else:
        phdr = phdr_sum_v4(ip, l4_len)
    _l4_cksum_rewrite(mp, m, ol, l4_off, l4_len, phdr, field, proto == IPPROTO_UDP, v6, counters)


@kernel
def fwd_csum(mp, pkts, n, counters):
    """testpmd ``csum`` (csumonly.c) without hardware offloads, on ``pkts[:n]``.

    Parses Ether (+ VLAN/QinQ tags) / IPv4 or IPv6 / TCP or UDP in the first
    segment; for IPv4 verifies and rewrites the header checksum; for TCP and
    UDP verifies and rewrites the L4 checksum over the whole L4 length
    (IPv4 total length / IPv6 payload length), across segments.  Bad ones on
    arrival are counted in ``counters`` (int64, :data:`CSUM_NB_COUNTERS`
    slots, see ``CSUM_*``; :func:`csum_counters` makes one).

    * A checksum the Rx flags already judged (``RX_*_CKSUM_GOOD/BAD``) is not
      re-verified: BAD counts, as in testpmd.  ``RX_L4_CKSUM_NONE`` or a
      pending Tx checksum request (a guest's NEEDS_CSUM: the field holds a
      partial sum) is not counted bad; it is completed.
    * IPv4 UDP with checksum 0 stays 0 (testpmd); IPv6 UDP checksum 0 is
      invalid: counted and rewritten.  IPv4 fragments get only the header
      checksum.  Other L4 protocols: IPv4 header checksum only.
    * Non-IP packets, truncated headers, or an IP length past the end of the
      packet: bytes untouched (``CSUM_NOT_PARSED``).
    * Metadata as testpmd leaves it: ``l2_len``/``l3_len``/``l4_len`` set,
      ``ol_flags`` = ``TX_IPV4`` or ``TX_IPV6`` (plus INDIRECT/EXTERNAL),
      every other flag cleared: the checksums are complete.
    """
    for i in range(n):
        _csum_one(mp, np.int64(pkts[i]), counters)


# =============================================================================
# icmpecho
# =============================================================================


@kernel
def _arp_reply(mp, eth, arp, dl, port_le):
    """Turn an ARP request into its reply in place: True, or False to drop."""
    always_inline()
    if be16(arp + _U64(ARP_HRD_OFF)) != ARP_HRD_ETHER:
        return False
    if be16(arp + _U64(ARP_PRO_OFF)) != ETHER_TYPE_IPV4:
        return False
    if np.int64(ld8(arp + _U64(ARP_HLN_OFF))) != ETHER_ADDR_LEN:
        return False
    if np.int64(ld8(arp + _U64(ARP_PLN_OFF))) != IPV4_ADDR_LEN:
        return False
    if be16(arp + _U64(ARP_OP_OFF)) != ARP_OP_REQUEST:
        return False
    # Ethernet: back to the asker, from the port
    copy_mac(eth + _U64(ETH_DST_OFF), eth + _U64(ETH_SRC_OFF))
    st_mac(eth + _U64(ETH_SRC_OFF), port_le)
    # ARP: whatever IP was asked for is "ours" (testpmd answers any target)
    st_be16(arp + _U64(ARP_OP_OFF), ARP_OP_REPLY)
    copy_mac(arp + _U64(ARP_THA_OFF), arp + _U64(ARP_SHA_OFF))
    st_mac(arp + _U64(ARP_SHA_OFF), port_le)
    sip = ld32(arp + _U64(ARP_SIP_OFF))
    st32(arp + _U64(ARP_SIP_OFF), ld32(arp + _U64(ARP_TIP_OFF)))
    st32(arp + _U64(ARP_TIP_OFF), sip)
    return True


@kernel
def _icmp_echo_reply(mp, eth, ip, dl, l2):
    """Turn an ICMP echo request into its reply in place: True, or False to drop."""
    always_inline()
    if np.int64(ld8(ip + _U64(IPV4_PROTO_OFF))) != IPPROTO_ICMP:
        return False
    ihl = (np.int64(ld8(ip)) & 0xF) * 4
    if ihl < IPV4_MIN_HDR_LEN or l2 + ihl + ICMP_HDR_LEN > dl:
        return False
    icmp = ip + _U64(ihl)
    w_old = _U64(ld16(icmp))  # type | code << 8
    if w_old != _U64(ICMP_ECHO_REQUEST):  # type 8, code 0
        return False
    # swap the Ethernet addresses
    d = ld_mac(eth + _U64(ETH_DST_OFF))
    copy_mac(eth + _U64(ETH_DST_OFF), eth + _U64(ETH_SRC_OFF))
    st_mac(eth + _U64(ETH_SRC_OFF), d)
    src = be32(ip + _U64(IPV4_SRC_OFF))
    dst = be32(ip + _U64(IPV4_DST_OFF))
    if (dst & IPV4_MCAST_MASK) == IPV4_MCAST_NET:
        # to a multicast group: reply from a unicast neighbour of the asker
        # (testpmd's rule), and the header checksum changes
        if (src & 3) == 1:
            new_src = (src & 0xFFFFFFFC) | 2
        else:
            new_src = (src & 0xFFFFFFFC) | 1
        st_be32(ip + _U64(IPV4_SRC_OFF), new_src)
        st_be32(ip + _U64(IPV4_DST_OFF), src)
        _ipv4_cksum_rewrite(ip, ihl)
    else:
        # a swap leaves the header checksum as it is
        st_be32(ip + _U64(IPV4_SRC_OFF), dst)
        st_be32(ip + _U64(IPV4_DST_OFF), src)
    # type 8 -> 0: incremental checksum update (RFC 1624), echo data untouched
    w_new = (w_old & _U64(0xFF00)) | _U64(ICMP_ECHO_REPLY)
    c = ~_U64(ld16(icmp + _U64(ICMP_CKSUM_OFF))) & _M16
    c += (~w_old & _M16) + w_new
    c = ~fold(c) & _M16
    if c == _U64(0):
        # the update cannot tell a +0 sum (an all-zero message: only 0xFFFF
        # verifies) from -0 (both verify): 0xFFFF is right either way
        c = _M16
    st16(icmp, w_new)
    st16(icmp + _U64(ICMP_CKSUM_OFF), c)
    return True


@kernel
def fwd_icmpecho(mp, lcore, pkts, n, port_mac):
    """testpmd ``icmpecho`` (icmpecho.c) on ``pkts[:n]``: the number of
    replies, compacted (in order) at the front of ``pkts``.

    * ARP request (Ethernet/IPv4, optionally one VLAN tag), whatever the
      target IP: becomes the reply — Ethernet dst = asker, src = ``port_mac``;
      op 2; tha = sha, sha = ``port_mac``; sip and tip swapped.
    * ICMP echo request (IPv4, type 8 code 0): becomes the echo reply —
      Ethernet addresses swapped, IP addresses swapped (to a multicast
      destination: the reply source is the asker's address with its low two
      bits changed, header checksum recomputed), type 0, ICMP checksum updated.
    * Everything else (other ARP, other ICMP, other IP, IPv6, non-IP,
      truncated) is freed with ``pktmbuf_free`` to ``lcore``'s cache.
    """
    port_le = mac_le(port_mac)
    k = 0
    for i in range(n):
        m = np.int64(pkts[i])
        dl = np.int64(mp.mbufs[m].data_len)
        eth = seg_addr(mp, m)
        keep = False
        if dl >= ETHER_HDR_LEN:
            l2 = np.int64(ETHER_HDR_LEN)
            et = be16(eth + _U64(ETH_TYPE_OFF))
            if et == ETHER_TYPE_VLAN and dl >= ETHER_HDR_LEN + VLAN_HDR_LEN:
                et = be16(eth + _U64(ETHER_HDR_LEN + VLAN_PROTO_OFF))
                l2 += VLAN_HDR_LEN
            if et == ETHER_TYPE_ARP:
                if l2 + ARP_HDR_LEN <= dl:
                    keep = _arp_reply(mp, eth, eth + _U64(l2), dl, port_le)
            elif et == ETHER_TYPE_IPV4:
                if l2 + IPV4_MIN_HDR_LEN <= dl:
                    keep = _icmp_echo_reply(mp, eth, eth + _U64(l2), dl, l2)
        if keep:
            pkts[k] = m
            k += 1
        else:
            pktmbuf_free(mp, lcore, m)
    return k


# =============================================================================
# txonly / flowgen
# =============================================================================


@inline_kernel
def _gen_template(t, src_le, dst_le, ip_src, ip_dst, ip_len, sport, dport):
    """Write Ether/IPv4/UDP headers (checksums 0) at host address ``t``."""
    st_mac(t + _U64(ETH_DST_OFF), dst_le)
    st_mac(t + _U64(ETH_SRC_OFF), src_le)
    st_be16(t + _U64(ETH_TYPE_OFF), ETHER_TYPE_IPV4)
    ip = t + _U64(GEN_IP_OFF)
    st8(ip, IPV4_VHL_DEF)
    st8(ip + _U64(1), 0)  # type of service
    st_be16(ip + _U64(IPV4_TOTLEN_OFF), ip_len)
    st16(ip + _U64(4), 0)  # packet id
    st16(ip + _U64(IPV4_FRAG_OFF), 0)
    st8(ip + _U64(IPV4_TTL_OFF), IP_DEFTTL)
    st8(ip + _U64(IPV4_PROTO_OFF), IPPROTO_UDP)
    st16(ip + _U64(IPV4_CKSUM_OFF), 0)
    st_be32(ip + _U64(IPV4_SRC_OFF), ip_src)
    st_be32(ip + _U64(IPV4_DST_OFF), ip_dst)
    udp = t + _U64(GEN_UDP_OFF)
    st_be16(udp + _U64(UDP_SPORT_OFF), sport)
    st_be16(udp + _U64(UDP_DPORT_OFF), dport)
    st_be16(udp + _U64(UDP_LEN_OFF), ip_len - IPV4_MIN_HDR_LEN)
    st16(udp + _U64(UDP_CKSUM_OFF), 0)


@kernel
def _write_front(mp, m, src, length):
    """Copy ``length`` bytes from host address ``src`` to the start of packet
    ``m``, across its segments (testpmd's copy_buf_to_pkt)."""
    always_inline()
    seg = np.int64(m)
    done = np.int64(0)
    while done < length and seg != MBUF_NEXT_NONE:
        mb = mp.mbufs[seg]
        k = min(np.int64(mb.data_len), length - done)
        copy_bytes(seg_addr(mp, seg), src + _U64(done), k)
        done += k
        seg = np.int64(mb.next)


@kernel
def _alloc_heads(mp, lcore, pkts, n):
    """``n`` fresh mbufs into ``pkts``, in bulk, or one by one when the pool
    is short (testpmd txonly): how many."""
    always_inline()
    if pktmbuf_alloc_bulk(mp, lcore, pkts, n) == 0:
        return n
    got = 0
    while got < n:
        m = pktmbuf_alloc(mp, lcore)
        if m < 0:
            break
        pkts[got] = m
        got += 1
    return got


@kernel
def build_txonly(mp, lcore, pkts, n, seg_lens, nseg, src_mac, dst_mac, multi_flow, flow_state):
    """testpmd ``txonly`` (txonly.c): allocate up to ``n`` packets into
    ``pkts[:n]`` and build them; returns how many were built (0 if the pool is
    empty or the layout is invalid).

    Frame: Ether(dst=``dst_mac`` (peer), src=``src_mac`` (port), IPv4) /
    IPv4(198.18.0.1 -> 198.18.0.2, ttl 64, id 0, UDP, header checksum) /
    UDP(9 -> 9, checksum 0); total length ``sum(seg_lens[:nseg])`` (>= 42, IP
    length <= 65535), laid out over ``nseg`` chained segments of
    ``seg_lens[i]`` bytes (``--txpkts``; each at most the data room; headers
    may span segments).  The payload bytes are not written (testpmd neither).
    ``l2_len``/``l3_len`` are set, ``ol_flags`` cleared but EXTERNAL.

    ``multi_flow`` (``--txonly-multi-flow``): the IP source of each packet is
    ``(198.18.0.2 | ip_var << 8) + lcore`` with the per-lcore byte ``ip_var``
    kept in ``flow_state[0]`` and incremented per packet (mod 256); the
    header checksum is recomputed.  After a partial Tx, call
    :func:`txonly_backout` so the unsent flows come again (testpmd does).

    Packets whose extra segments cannot be allocated are not built; their
    heads go back to the pool.
    """
    n = min(np.int64(n), np.int64(pkts.shape[0]))
    if n <= 0 or nseg < 1 or nseg > RTE_MAX_SEGS_PER_PKT or nseg > seg_lens.shape[0]:
        return 0
    room = mp.info[I_BUF_LEN] - mp.info[I_HEADROOM]
    total = np.int64(0)
    for s in range(nseg):
        ln = np.int64(seg_lens[s])
        if ln <= 0 or ln > room:
            return 0
        total += ln
    ip_len = total - ETHER_HDR_LEN
    if total < GEN_HDR_LEN or ip_len > GEN_MAX_IP_LEN:
        return 0
    tmpl_words = stack_array_u32(12)  # 48 bytes >= GEN_HDR_LEN
    t = _U64(tmpl_words.ctypes.data)
    _gen_template(
        t, mac_le(src_mac), mac_le(dst_mac), TXONLY_IP_SRC, TXONLY_IP_DST, ip_len,
        TXONLY_UDP_SRC_PORT, TXONLY_UDP_DST_PORT,
    )
    tip = t + _U64(GEN_IP_OFF)
    lc = max(np.int64(lcore), np.int64(0))
    st32(tip + _U64(IPV4_SRC_OFF), 0)
    base = raw_sum(tip, IPV4_MIN_HDR_LEN)  # the multi-flow source varies per packet
    _ipv4_set_addr(tip, IPV4_SRC_OFF, TXONLY_IP_SRC, base)
    ip_var = np.int64(flow_state[0]) & 0xFF
    got = _alloc_heads(mp, lcore, pkts, n)
    segs = stack_array_u32(_SEG_SCRATCH)
    built = np.int64(0)
    while built < got:
        head = np.int64(pkts[built])
        if nseg > 1 and pktmbuf_alloc_bulk(mp, lcore, segs, nseg - 1) != 0:
            break
        mb = mp.mbufs[head]
        mb.data_len = seg_lens[0]
        mb.l2_len = ETHER_HDR_LEN
        mb.l3_len = IPV4_MIN_HDR_LEN
        prev = head
        for s in range(1, nseg):
            sm = np.int64(segs[s - 1])
            sb = mp.mbufs[sm]
            sb.data_len = seg_lens[s]
            sb.pkt_len = seg_lens[s]
            mp.mbufs[prev].next = sm
            prev = sm
        mb.nb_segs = nseg
        mb.pkt_len = total
        if multi_flow:
            _ipv4_set_addr(tip, IPV4_SRC_OFF, ((TXONLY_IP_DST | (ip_var << 8)) + lc) & 0xFFFFFFFF, base)
            ip_var = (ip_var + 1) & 0xFF
        _write_front(mp, head, t, GEN_HDR_LEN)
        built += 1
    for i in range(built, got):
        pktmbuf_free(mp, lcore, np.int64(pkts[i]))
    flow_state[0] = ip_var
    return built


@kernel
def build_flowgen(mp, lcore, pkts, n, tx_pkt_length, src_mac, dst_mac, nb_flows, flow_state, udp_csum):
    """testpmd ``flowgen`` (flowgen.c): allocate up to ``n`` one-segment UDP
    packets into ``pkts[:n]``; returns how many were built (0 if the pool is
    empty or the size is invalid).

    Frame size ``tx_pkt_length - 4`` (testpmd takes the FCS off the
    ``--txpkts`` total), at least 42 bytes and within one mbuf.
    Ether(dst=``dst_mac``, src=``src_mac``, IPv4) / IPv4(10.254.0.0 ->
    10.253.0.0 + flow, ttl 64, header checksum) / UDP(1000 -> 1001).  testpmd
    22.11 uses the fixed MACs :data:`FLOWGEN_ETHER_SRC` /
    :data:`FLOWGEN_ETHER_DST`; pass them to behave exactly so.  ``flow``
    is ``flow_state[0]``, advanced per packet and wrapped at ``nb_flows``
    (``--flowgen-flows``, default 1024); after a partial Tx call
    :func:`flowgen_backout`.  UDP checksum: 0 as in testpmd, or with
    ``udp_csum`` a correct checksum over the (unwritten) payload.
    """
    n = min(np.int64(n), np.int64(pkts.shape[0]))
    if n <= 0 or nb_flows <= 0:
        return 0
    size = np.int64(tx_pkt_length) - ETHER_CRC_LEN
    room = mp.info[I_BUF_LEN] - mp.info[I_HEADROOM]
    if size < GEN_HDR_LEN or size > room:
        return 0
    ip_len = size - ETHER_HDR_LEN
    tmpl_words = stack_array_u32(12)
    t = _U64(tmpl_words.ctypes.data)
    _gen_template(
        t, mac_le(src_mac), mac_le(dst_mac), FLOWGEN_IP_SRC, FLOWGEN_IP_DST, ip_len,
        FLOWGEN_UDP_SRC_PORT, FLOWGEN_UDP_DST_PORT,
    )
    tip = t + _U64(GEN_IP_OFF)
    st32(tip + _U64(IPV4_DST_OFF), 0)
    base = raw_sum(tip, IPV4_MIN_HDR_LEN)
    flow = np.int64(flow_state[0])
    if flow < 0 or flow >= nb_flows:
        flow = 0
    got = _alloc_heads(mp, lcore, pkts, n)
    for i in range(got):
        m = np.int64(pkts[i])
        mb = mp.mbufs[m]
        mb.data_len = size
        mb.pkt_len = size
        mb.l2_len = ETHER_HDR_LEN
        mb.l3_len = IPV4_MIN_HDR_LEN
        _ipv4_set_addr(tip, IPV4_DST_OFF, (FLOWGEN_IP_DST + flow) & 0xFFFFFFFF, base)
        p = seg_addr(mp, m)
        copy_bytes(p, t, GEN_HDR_LEN)
        if udp_csum:
            ipp = p + _U64(GEN_IP_OFF)
            ul = ip_len - IPV4_MIN_HDR_LEN
            c = ~fold(raw_sum(p + _U64(GEN_UDP_OFF), ul) + phdr_sum_v4(ipp, ul)) & _M16
            if c == _U64(0):
                c = _M16
            st16(p + _U64(GEN_UDP_OFF + UDP_CKSUM_OFF), c)
        flow += 1
        if flow >= nb_flows:
            flow = 0
    flow_state[0] = flow
    return got


@kernel
def txonly_backout(flow_state, nb_unsent):
    """After a Tx burst left ``nb_unsent`` txonly packets unsent (and freed),
    step the multi-flow counter back so those flows come again (testpmd)."""
    flow_state[0] = (np.int64(flow_state[0]) - np.int64(nb_unsent)) & 0xFF


@kernel
def flowgen_backout(flow_state, nb_unsent, nb_flows):
    """After a Tx burst left ``nb_unsent`` flowgen packets unsent (and freed),
    step the flow counter back (testpmd's "back out the flow counter")."""
    if nb_flows > 0:
        flow_state[0] = (np.int64(flow_state[0]) - np.int64(nb_unsent)) % np.int64(nb_flows)
