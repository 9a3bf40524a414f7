"""The packet buffer (mbuf) metadata layout, offload flags and packet types.

An mbuf is two things that live in one mempool memzone:

* 128 bytes of metadata (two cache lines, like ``struct rte_mbuf``): a record
  of :data:`MBUF_DTYPE` in the pool's ``mbufs`` array, addressed by the mbuf's
  *index* in its pool.  Indices are the handles that travel through rings,
  rx/tx bursts and the per-lcore caches.
* a data buffer of ``buf_len`` bytes in the pool's flat ``data`` array, found
  two ways: ``buf_off`` (byte offset into ``data``, for numba slice copies) and
  ``buf_iova`` (the I/O virtual address of the same byte, for virtio / vhost
  descriptors).  The packet bytes of a segment are
  ``data[buf_off + data_off : buf_off + data_off + data_len]`` and their IOVA
  is ``buf_iova + data_off``.

The first cache line holds what an Rx path writes (like DPDK's "rearm data"
and "rx descriptor fields"), the second what a Tx path reads (``l2_len`` ..
``tso_segsz``) plus user fields.  Offsets are part of the ABI between
processes: :data:`MBUF_FIELD_OFFSETS` is checked by the tests and must not
change without bumping the mempool header version.

Flag bit values are DPDK's (``RTE_MBUF_F_*`` of ``rte_mbuf_core.h``,
``RTE_PTYPE_*`` of ``rte_mbuf_ptype.h``), so code and logs read the same.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MBUF_DTYPE",
    "MBUF_SIZE",
    "MBUF_FIELD_OFFSETS",
    "MBUF_REFCNT_U16",
    "MBUF_NEXT_NONE",
    "MBUF_PORT_INVALID",
    "MBUF_MAX_NB_SEGS",
    "MBUF_DYNFIELD_WORDS",
    "RTE_PKTMBUF_HEADROOM",
    "RTE_MBUF_DEFAULT_DATAROOM",
    "RTE_MBUF_DEFAULT_BUF_SIZE",
    "ol_flags_str",
    "ptype_str",
]

# --------------------------------------------------------------------------
# sizes and sentinels
# --------------------------------------------------------------------------

RTE_PKTMBUF_HEADROOM = 128
RTE_MBUF_DEFAULT_DATAROOM = 2048
RTE_MBUF_DEFAULT_BUF_SIZE = RTE_MBUF_DEFAULT_DATAROOM + RTE_PKTMBUF_HEADROOM  # 2176

MBUF_NEXT_NONE = 0xFFFFFFFF  # ``next`` of the last segment
MBUF_PORT_INVALID = 0xFFFF  # RTE_MBUF_PORT_INVALID
MBUF_MAX_NB_SEGS = 0xFFFF  # RTE_MBUF_MAX_NB_SEGS
MBUF_DYNFIELD_WORDS = 8  # u32 words of free per-packet space (dynfield)

# --------------------------------------------------------------------------
# the metadata record
# --------------------------------------------------------------------------

_FIELDS = [
    # ---- cache line 0: Rx / fast-path fields ----
    ("buf_iova", np.uint64, 0),  # IOVA of the buffer start (headroom included)
    ("buf_off", np.uint64, 8),  # byte offset of the buffer start in pool.data
    ("data_off", np.uint16, 16),  # packet start, relative to the buffer start
    ("refcnt", np.uint16, 18),  # reference count (atomic when > 1)
    ("nb_segs", np.uint16, 20),  # segments in the chain (valid in the head)
    ("port", np.uint16, 22),  # input port
    ("ol_flags", np.uint64, 24),  # RTE_MBUF_F_* offload flags
    ("packet_type", np.uint32, 32),  # RTE_PTYPE_* (L2/L3/L4/tunnel/inner)
    ("pkt_len", np.uint32, 36),  # whole packet length (valid in the head)
    ("data_len", np.uint16, 40),  # bytes in this segment
    ("vlan_tci", np.uint16, 42),  # VLAN TCI (host order) when RX_VLAN / TX_VLAN
    ("hash", np.uint32, 44),  # RSS hash (RX_RSS_HASH) / fdir lo
    ("hash_hi", np.uint32, 48),  # fdir hi / scheduler / user
    ("vlan_tci_outer", np.uint16, 52),  # outer VLAN TCI (QinQ)
    ("buf_len", np.uint16, 54),  # buffer length (headroom + data room)
    ("next", np.uint32, 56),  # index of the next segment, MBUF_NEXT_NONE = last
    ("index", np.uint32, 60),  # this mbuf's own index in its pool
    # ---- cache line 1: Tx offload and user fields ----
    ("pool_id", np.uint16, 64),  # id of the owning pool (mempool header)
    ("priv_size", np.uint16, 66),  # bytes of the per-mbuf private area
    ("l2_len", np.uint16, 68),  # Tx offload: L2 header length
    ("l3_len", np.uint16, 70),  # Tx offload: L3 header length
    ("l4_len", np.uint16, 72),  # Tx offload: L4 header length
    ("tso_segsz", np.uint16, 74),  # Tx offload: TSO/UFO segment size (MSS)
    ("outer_l2_len", np.uint16, 76),  # Tx offload: tunnel outer L2 length
    ("outer_l3_len", np.uint16, 78),  # Tx offload: tunnel outer L3 length
    ("timesync", np.uint16, 80),  # IEEE1588 register index
    ("rsvd", np.uint16, 82),
    ("seqn", np.uint32, 84),  # sequence number (reorder, tests)
    ("udata64", np.uint64, 88),  # application data
    ("dynfield", (np.uint32, (MBUF_DYNFIELD_WORDS,)), 96),  # free dynamic space
]

MBUF_SIZE = 128

MBUF_DTYPE = np.dtype(
    {
        "names": [f[0] for f in _FIELDS],
        "formats": [f[1] for f in _FIELDS],
        "offsets": [f[2] for f in _FIELDS],
        "itemsize": MBUF_SIZE,
        "aligned": True,
    }
)

#: name -> byte offset; the cross-process ABI.
MBUF_FIELD_OFFSETS = {name: off for name, _fmt, off in _FIELDS}

#: index of ``refcnt`` in a uint16 view of one mbuf (for atomic updates)
MBUF_REFCNT_U16 = MBUF_FIELD_OFFSETS["refcnt"] // 2
#: uint16 words per mbuf
MBUF_U16_WORDS = MBUF_SIZE // 2

assert MBUF_DTYPE.itemsize == MBUF_SIZE
assert MBUF_DTYPE.isalignedstruct

# --------------------------------------------------------------------------
# ol_flags (rte_mbuf_core.h, DPDK 22.11)
# --------------------------------------------------------------------------

# ---- Rx ----
RTE_MBUF_F_RX_VLAN = 1 << 0
RTE_MBUF_F_RX_RSS_HASH = 1 << 1
RTE_MBUF_F_RX_FDIR = 1 << 2
RTE_MBUF_F_RX_L4_CKSUM_BAD = 1 << 3
RTE_MBUF_F_RX_IP_CKSUM_BAD = 1 << 4
RTE_MBUF_F_RX_OUTER_IP_CKSUM_BAD = 1 << 5
RTE_MBUF_F_RX_VLAN_STRIPPED = 1 << 6
RTE_MBUF_F_RX_IP_CKSUM_GOOD = 1 << 7
RTE_MBUF_F_RX_L4_CKSUM_GOOD = 1 << 8
RTE_MBUF_F_RX_IEEE1588_PTP = 1 << 9
RTE_MBUF_F_RX_IEEE1588_TMST = 1 << 10
RTE_MBUF_F_RX_FDIR_ID = 1 << 13
RTE_MBUF_F_RX_FDIR_FLX = 1 << 14
RTE_MBUF_F_RX_QINQ_STRIPPED = 1 << 15
RTE_MBUF_F_RX_LRO = 1 << 16
RTE_MBUF_F_RX_SEC_OFFLOAD = 1 << 18
RTE_MBUF_F_RX_SEC_OFFLOAD_FAILED = 1 << 19
RTE_MBUF_F_RX_QINQ = 1 << 20
RTE_MBUF_F_RX_OUTER_L4_CKSUM_BAD = 1 << 21
RTE_MBUF_F_RX_OUTER_L4_CKSUM_GOOD = 1 << 22

RTE_MBUF_F_RX_IP_CKSUM_MASK = RTE_MBUF_F_RX_IP_CKSUM_BAD | RTE_MBUF_F_RX_IP_CKSUM_GOOD
RTE_MBUF_F_RX_IP_CKSUM_UNKNOWN = 0
RTE_MBUF_F_RX_IP_CKSUM_NONE = RTE_MBUF_F_RX_IP_CKSUM_MASK
RTE_MBUF_F_RX_L4_CKSUM_MASK = RTE_MBUF_F_RX_L4_CKSUM_BAD | RTE_MBUF_F_RX_L4_CKSUM_GOOD
RTE_MBUF_F_RX_L4_CKSUM_UNKNOWN = 0
RTE_MBUF_F_RX_L4_CKSUM_NONE = RTE_MBUF_F_RX_L4_CKSUM_MASK
RTE_MBUF_F_RX_OUTER_L4_CKSUM_MASK = RTE_MBUF_F_RX_OUTER_L4_CKSUM_BAD | RTE_MBUF_F_RX_OUTER_L4_CKSUM_GOOD
RTE_MBUF_F_RX_OUTER_L4_CKSUM_UNKNOWN = 0
RTE_MBUF_F_RX_OUTER_L4_CKSUM_INVALID = RTE_MBUF_F_RX_OUTER_L4_CKSUM_MASK

RTE_MBUF_F_FIRST_FREE = 1 << 23
RTE_MBUF_F_LAST_FREE = 1 << 40

# ---- Tx ----
RTE_MBUF_F_TX_OUTER_UDP_CKSUM = 1 << 41
RTE_MBUF_F_TX_UDP_SEG = 1 << 42
RTE_MBUF_F_TX_SEC_OFFLOAD = 1 << 43
RTE_MBUF_F_TX_MACSEC = 1 << 44
RTE_MBUF_F_TX_TUNNEL_VXLAN = 0x1 << 45
RTE_MBUF_F_TX_TUNNEL_GRE = 0x2 << 45
RTE_MBUF_F_TX_TUNNEL_IPIP = 0x3 << 45
RTE_MBUF_F_TX_TUNNEL_GENEVE = 0x4 << 45
RTE_MBUF_F_TX_TUNNEL_MPLSINUDP = 0x5 << 45
RTE_MBUF_F_TX_TUNNEL_VXLAN_GPE = 0x6 << 45
RTE_MBUF_F_TX_TUNNEL_GTP = 0x7 << 45
RTE_MBUF_F_TX_TUNNEL_ESP = 0x8 << 45
RTE_MBUF_F_TX_TUNNEL_IP = 0xD << 45
RTE_MBUF_F_TX_TUNNEL_UDP = 0xE << 45
RTE_MBUF_F_TX_TUNNEL_MASK = 0xF << 45
RTE_MBUF_F_TX_QINQ = 1 << 49
RTE_MBUF_F_TX_TCP_SEG = 1 << 50
RTE_MBUF_F_TX_IEEE1588_TMST = 1 << 51
RTE_MBUF_F_TX_L4_NO_CKSUM = 0 << 52
RTE_MBUF_F_TX_TCP_CKSUM = 1 << 52
RTE_MBUF_F_TX_SCTP_CKSUM = 2 << 52
RTE_MBUF_F_TX_UDP_CKSUM = 3 << 52
RTE_MBUF_F_TX_L4_MASK = 3 << 52
RTE_MBUF_F_TX_IP_CKSUM = 1 << 54
RTE_MBUF_F_TX_IPV4 = 1 << 55
RTE_MBUF_F_TX_IPV6 = 1 << 56
RTE_MBUF_F_TX_VLAN = 1 << 57
RTE_MBUF_F_TX_OUTER_IP_CKSUM = 1 << 58
RTE_MBUF_F_TX_OUTER_IPV4 = 1 << 59
RTE_MBUF_F_TX_OUTER_IPV6 = 1 << 60

RTE_MBUF_F_TX_OFFLOAD_MASK = (
    RTE_MBUF_F_TX_OUTER_IPV6
    | RTE_MBUF_F_TX_OUTER_IPV4
    | RTE_MBUF_F_TX_OUTER_IP_CKSUM
    | RTE_MBUF_F_TX_VLAN
    | RTE_MBUF_F_TX_IPV6
    | RTE_MBUF_F_TX_IPV4
    | RTE_MBUF_F_TX_IP_CKSUM
    | RTE_MBUF_F_TX_L4_MASK
    | RTE_MBUF_F_TX_IEEE1588_TMST
    | RTE_MBUF_F_TX_TCP_SEG
    | RTE_MBUF_F_TX_QINQ
    | RTE_MBUF_F_TX_TUNNEL_MASK
    | RTE_MBUF_F_TX_MACSEC
    | RTE_MBUF_F_TX_SEC_OFFLOAD
    | RTE_MBUF_F_TX_UDP_SEG
    | RTE_MBUF_F_TX_OUTER_UDP_CKSUM
)

# ---- generic ----
RTE_MBUF_F_EXTERNAL = 1 << 61  # buffer is external (not this mbuf's own)
RTE_MBUF_F_INDIRECT = 1 << 62  # mbuf is a clone attached to another's buffer

# --------------------------------------------------------------------------
# packet types (rte_mbuf_ptype.h)
# --------------------------------------------------------------------------

RTE_PTYPE_UNKNOWN = 0x00000000
RTE_PTYPE_L2_ETHER = 0x00000001
RTE_PTYPE_L2_ETHER_TIMESYNC = 0x00000002
RTE_PTYPE_L2_ETHER_ARP = 0x00000003
RTE_PTYPE_L2_ETHER_LLDP = 0x00000004
RTE_PTYPE_L2_ETHER_NSH = 0x00000005
RTE_PTYPE_L2_ETHER_VLAN = 0x00000006
RTE_PTYPE_L2_ETHER_QINQ = 0x00000007
RTE_PTYPE_L2_MASK = 0x0000000F
RTE_PTYPE_L3_IPV4 = 0x00000010
RTE_PTYPE_L3_IPV4_EXT = 0x00000030
RTE_PTYPE_L3_IPV6 = 0x00000040
RTE_PTYPE_L3_IPV4_EXT_UNKNOWN = 0x00000090
RTE_PTYPE_L3_IPV6_EXT = 0x000000C0
RTE_PTYPE_L3_IPV6_EXT_UNKNOWN = 0x000000E0
RTE_PTYPE_L3_MASK = 0x000000F0
RTE_PTYPE_L4_TCP = 0x00000100
RTE_PTYPE_L4_UDP = 0x00000200
RTE_PTYPE_L4_FRAG = 0x00000300
RTE_PTYPE_L4_SCTP = 0x00000400
RTE_PTYPE_L4_ICMP = 0x00000500
RTE_PTYPE_L4_NONFRAG = 0x00000600
RTE_PTYPE_L4_IGMP = 0x00000700
RTE_PTYPE_L4_MASK = 0x00000F00
RTE_PTYPE_TUNNEL_IP = 0x00001000
RTE_PTYPE_TUNNEL_GRE = 0x00002000
RTE_PTYPE_TUNNEL_VXLAN = 0x00003000
RTE_PTYPE_TUNNEL_NVGRE = 0x00004000
RTE_PTYPE_TUNNEL_GENEVE = 0x00005000
RTE_PTYPE_TUNNEL_GRENAT = 0x00006000
RTE_PTYPE_TUNNEL_MASK = 0x0000F000
RTE_PTYPE_INNER_L2_ETHER = 0x00010000
RTE_PTYPE_INNER_L2_ETHER_VLAN = 0x00020000
RTE_PTYPE_INNER_L2_MASK = 0x000F0000
RTE_PTYPE_INNER_L3_IPV4 = 0x00100000
RTE_PTYPE_INNER_L3_IPV6 = 0x00300000
RTE_PTYPE_INNER_L3_MASK = 0x00F00000
RTE_PTYPE_INNER_L4_TCP = 0x01000000
RTE_PTYPE_INNER_L4_UDP = 0x02000000
RTE_PTYPE_INNER_L4_MASK = 0x0F000000
RTE_PTYPE_ALL_MASK = 0x0FFFFFFF

# --------------------------------------------------------------------------
# names, for logs and the testpmd-like "verbose" output
# --------------------------------------------------------------------------

_G = globals()

# (mask, value, name) triples; multi-bit fields first so they win.
_RX_FLAG_NAMES = [
    (RTE_MBUF_F_RX_IP_CKSUM_MASK, RTE_MBUF_F_RX_IP_CKSUM_NONE, "RTE_MBUF_F_RX_IP_CKSUM_NONE"),
    (RTE_MBUF_F_RX_IP_CKSUM_MASK, RTE_MBUF_F_RX_IP_CKSUM_BAD, "RTE_MBUF_F_RX_IP_CKSUM_BAD"),
    (RTE_MBUF_F_RX_IP_CKSUM_MASK, RTE_MBUF_F_RX_IP_CKSUM_GOOD, "RTE_MBUF_F_RX_IP_CKSUM_GOOD"),
    (RTE_MBUF_F_RX_L4_CKSUM_MASK, RTE_MBUF_F_RX_L4_CKSUM_NONE, "RTE_MBUF_F_RX_L4_CKSUM_NONE"),
    (RTE_MBUF_F_RX_L4_CKSUM_MASK, RTE_MBUF_F_RX_L4_CKSUM_BAD, "RTE_MBUF_F_RX_L4_CKSUM_BAD"),
    (RTE_MBUF_F_RX_L4_CKSUM_MASK, RTE_MBUF_F_RX_L4_CKSUM_GOOD, "RTE_MBUF_F_RX_L4_CKSUM_GOOD"),
    (
        RTE_MBUF_F_RX_OUTER_L4_CKSUM_MASK,
        RTE_MBUF_F_RX_OUTER_L4_CKSUM_INVALID,
        "RTE_MBUF_F_RX_OUTER_L4_CKSUM_INVALID",
    ),
    (RTE_MBUF_F_RX_OUTER_L4_CKSUM_MASK, RTE_MBUF_F_RX_OUTER_L4_CKSUM_BAD, "RTE_MBUF_F_RX_OUTER_L4_CKSUM_BAD"),
    (RTE_MBUF_F_RX_OUTER_L4_CKSUM_MASK, RTE_MBUF_F_RX_OUTER_L4_CKSUM_GOOD, "RTE_MBUF_F_RX_OUTER_L4_CKSUM_GOOD"),
] + [
    (_G[n], _G[n], n)
    for n in (
        "RTE_MBUF_F_RX_VLAN",
        "RTE_MBUF_F_RX_RSS_HASH",
        "RTE_MBUF_F_RX_FDIR",
        "RTE_MBUF_F_RX_OUTER_IP_CKSUM_BAD",
        "RTE_MBUF_F_RX_VLAN_STRIPPED",
        "RTE_MBUF_F_RX_IEEE1588_PTP",
        "RTE_MBUF_F_RX_IEEE1588_TMST",
        "RTE_MBUF_F_RX_FDIR_ID",
        "RTE_MBUF_F_RX_FDIR_FLX",
        "RTE_MBUF_F_RX_QINQ_STRIPPED",
        "RTE_MBUF_F_RX_LRO",
        "RTE_MBUF_F_RX_SEC_OFFLOAD",
        "RTE_MBUF_F_RX_SEC_OFFLOAD_FAILED",
        "RTE_MBUF_F_RX_QINQ",
    )
]

_TX_FLAG_NAMES = [
    (RTE_MBUF_F_TX_L4_MASK, RTE_MBUF_F_TX_TCP_CKSUM, "RTE_MBUF_F_TX_TCP_CKSUM"),
    (RTE_MBUF_F_TX_L4_MASK, RTE_MBUF_F_TX_SCTP_CKSUM, "RTE_MBUF_F_TX_SCTP_CKSUM"),
    (RTE_MBUF_F_TX_L4_MASK, RTE_MBUF_F_TX_UDP_CKSUM, "RTE_MBUF_F_TX_UDP_CKSUM"),
] + [
    (RTE_MBUF_F_TX_TUNNEL_MASK, _G[n], n)
    for n in (
        "RTE_MBUF_F_TX_TUNNEL_VXLAN",
        "RTE_MBUF_F_TX_TUNNEL_GRE",
        "RTE_MBUF_F_TX_TUNNEL_IPIP",
        "RTE_MBUF_F_TX_TUNNEL_GENEVE",
        "RTE_MBUF_F_TX_TUNNEL_MPLSINUDP",
        "RTE_MBUF_F_TX_TUNNEL_VXLAN_GPE",
        "RTE_MBUF_F_TX_TUNNEL_GTP",
        "RTE_MBUF_F_TX_TUNNEL_ESP",
        "RTE_MBUF_F_TX_TUNNEL_IP",
        "RTE_MBUF_F_TX_TUNNEL_UDP",
    )
] + [
    (_G[n], _G[n], n)
    for n in (
        "RTE_MBUF_F_TX_OUTER_UDP_CKSUM",
        "RTE_MBUF_F_TX_UDP_SEG",
        "RTE_MBUF_F_TX_SEC_OFFLOAD",
        "RTE_MBUF_F_TX_MACSEC",
        "RTE_MBUF_F_TX_QINQ",
        "RTE_MBUF_F_TX_TCP_SEG",
        "RTE_MBUF_F_TX_IEEE1588_TMST",
        "RTE_MBUF_F_TX_IP_CKSUM",
        "RTE_MBUF_F_TX_IPV4",
        "RTE_MBUF_F_TX_IPV6",
        "RTE_MBUF_F_TX_VLAN",
        "RTE_MBUF_F_TX_OUTER_IP_CKSUM",
        "RTE_MBUF_F_TX_OUTER_IPV4",
        "RTE_MBUF_F_TX_OUTER_IPV6",
        "RTE_MBUF_F_EXTERNAL",
        "RTE_MBUF_F_INDIRECT",
    )
]


def ol_flags_str(flags: int) -> str:
    """Space-separated names of the flags set in ``flags`` (Rx then Tx)."""
    flags = int(flags)
    names = []
    for mask, value, name in _RX_FLAG_NAMES + _TX_FLAG_NAMES:
        if value and (flags & mask) == value:
            names.append(name)
    return " ".join(names)


_PTYPE_FIELDS = [
    (RTE_PTYPE_L2_MASK, "L2_"),
    (RTE_PTYPE_L3_MASK, "L3_"),
    (RTE_PTYPE_L4_MASK, "L4_"),
    (RTE_PTYPE_TUNNEL_MASK, "TUNNEL_"),
    (RTE_PTYPE_INNER_L2_MASK, "INNER_L2_"),
    (RTE_PTYPE_INNER_L3_MASK, "INNER_L3_"),
    (RTE_PTYPE_INNER_L4_MASK, "INNER_L4_"),
]


def ptype_str(ptype: int) -> str:
    """Names of a packet type, e.g. ``"L2_ETHER L3_IPV4 L4_UDP"``."""
    ptype = int(ptype)
    out = []
    for mask, prefix in _PTYPE_FIELDS:
        v = ptype & mask
        if not v:
            continue
        for name, val in _G.items():
            if (
                name.startswith("RTE_PTYPE_" + prefix)
                and not name.endswith("_MASK")
                and val == v
            ):
                out.append(name[len("RTE_PTYPE_") :])
                break
        else:
            out.append(f"{prefix}0x{v:x}")
    return " ".join(out) if out else "UNKNOWN"
