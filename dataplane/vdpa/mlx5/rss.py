"""A reference RSS for the mlx5 vDPA steering (facts §3.7): Toeplitz, its symmetric input, the 7 flows, the RQT.

Plain Python, for tests to predict which receive queue a frame lands in -- not a datapath.

* :func:`toeplitz` -- the Toeplitz hash of a byte string under a key (at least len(data) + 4
  bytes): for every set input bit i (most significant bit of byte 0 first), XOR in the 32-bit
  window of the key starting at bit i.  Checked against the Microsoft RSS verification suite
  (standard key :data:`MS_RSS_KEY`) in the tests.
* :data:`MLX5_VDPA_RSS_KEY` -- the 40-byte key the driver puts in every TIR.
* Symmetric hashing (the TIRs set ``rx_hash_symmetric``): the source and destination fields
  are combined before the hash so both directions of a flow hash alike.  ConnectX hardware
  does it as "OR-XOR": the input is ``(SRC_IP | DST_IP, SRC_IP ^ DST_IP, SRC_PORT | DST_PORT,
  SRC_PORT ^ DST_PORT)`` instead of ``(SRC_IP, DST_IP, SRC_PORT, DST_PORT)``.  Source of that
  fact: Linux commit ecdff893384c "ethtool: Symmetric OR-XOR RSS hash" (NVIDIA, 2025: the
  transform mlx5 reports for its symmetric TIRs), and DPDK's mlx5 symmetric-hash patch noting
  that the hardware's algorithm differs from the plain XOR one.  :func:`hash_input` also
  offers "xor" (ethtool's symmetric-xor) and "none" (the asymmetric standard input).
* :func:`classify` -- which of the 7 flows a frame matches and the hash fields of that flow:

  ==  ========  ===============================  =============================
  #   priority  match                            hash fields
  ==  ========  ===============================  =============================
  0   7         everything else (ARP, ...)       none: the first RQT entry
  1   6         IPv4                             SRC_IP, DST_IP
  2   6         IPv6                             SRC_IP, DST_IP
  3   5         IPv4 + UDP                       SRC/DST IP + L4 SPORT/DPORT
  4   5         IPv4 + TCP                       same
  5   5         IPv6 + UDP                       same
  6   5         IPv6 + TCP                       same
  ==  ========  ===============================  =============================

  802.1Q / 802.1ad tags are skipped.  Taken as plain facts of this model (not checked
  against hardware): the IPv6 next header is read only from the fixed header (no extension
  headers walked); an IPv4 fragment other than the first carries no ports, so it falls in
  the IPv4 L3 flow (1).
* :func:`rqt_table` / :func:`predict` -- the RQT is min(512, 1 << log_max_rqt_size) entries:
  the enabled RX virtqs (even vring indices, the trailing control vq excluded) repeated
  round-robin; a hashed frame goes to ``table[hash & (size - 1)]`` (the hash's low bits
  index the table), an unhashed one to ``table[0]``.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Sequence

__all__ = [
    "MLX5_VDPA_RSS_KEY",
    "MS_RSS_KEY",
    "RQT_MAX_SIZE",
    "FLOW_OTHER",
    "FLOW_IPV4",
    "FLOW_IPV6",
    "FLOW_IPV4_UDP",
    "FLOW_IPV4_TCP",
    "FLOW_IPV6_UDP",
    "FLOW_IPV6_TCP",
    "FLOW_PRIORITY",
    "Flow",
    "toeplitz",
    "hash_input",
    "classify",
    "rss_hash",
    "rx_vrings",
    "rqt_table",
    "predict",
]

#: The key of every TIR the mlx5 vDPA driver creates (facts §3.7).
MLX5_VDPA_RSS_KEY = bytes.fromhex("2cc681d15bdbf4f7fca28319db1a3e946b9e38d92c9c03d1ad9944a7d9563d59063c25f3fc1fdc2a")
#: The key of Microsoft's RSS verification suite (its published test vectors use it).
MS_RSS_KEY = bytes.fromhex("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")
#: The driver's RQT never has more entries than this.
RQT_MAX_SIZE = 512

FLOW_OTHER, FLOW_IPV4, FLOW_IPV6, FLOW_IPV4_UDP, FLOW_IPV4_TCP, FLOW_IPV6_UDP, FLOW_IPV6_TCP = range(7)
#: flow -> steering priority (lower wins; the driver installs all 7)
FLOW_PRIORITY = (7, 6, 6, 5, 5, 5, 5)

_ETH_P_IPV4, _ETH_P_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8)
_TCP, _UDP = 6, 17


class Flow(NamedTuple):
    """A frame's flow class and the fields its hash reads (addresses as bytes, ports as ints or None)."""

    flow: int
    src_ip: bytes | None = None
    dst_ip: bytes | None = None
    src_port: int | None = None
    dst_port: int | None = None

    @property
    def hashed(self) -> bool:
        return self.flow != FLOW_OTHER


def toeplitz(key: bytes, data: bytes) -> int:
    """The 32-bit Toeplitz hash of ``data`` under ``key`` (``len(key) >= len(data) + 4``)."""
    if len(key) < len(data) + 4:
        raise ValueError(f"a {len(key)}-byte key hashes at most {len(key) - 4} bytes, not {len(data)}")
    k = int.from_bytes(key, "big")
    kbits = 8 * len(key)
    result = 0
    for i in range(8 * len(data)):
        if data[i // 8] >> (7 - i % 8) & 1:
            result ^= k >> (kbits - 32 - i) & 0xFFFFFFFF
    return result


def _or(a: bytes, b: bytes) -> bytes:
    return bytes(x | y for x, y in zip(a, b))


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def hash_input(flow: Flow, transform: str = "or-xor") -> bytes:
    """The bytes the hash reads for ``flow``: IPs then ports (network order), after the symmetric transform."""
    if not flow.hashed:
        return b""
    fields = [(flow.src_ip, flow.dst_ip)]
    if flow.flow in (FLOW_IPV4_UDP, FLOW_IPV4_TCP, FLOW_IPV6_UDP, FLOW_IPV6_TCP):
        fields.append((struct.pack("!H", flow.src_port), struct.pack("!H", flow.dst_port)))
    out = b""
    for s, d in fields:
        if transform == "or-xor":
            out += _or(s, d) + _xor(s, d)
        elif transform == "xor":
            out += _xor(s, d) * 2
        elif transform == "none":
            out += s + d
        else:
            raise ValueError(f"unknown transform {transform!r} (or-xor, xor, none)")
    return out


def classify(frame: bytes) -> Flow:
    """The flow class of an Ethernet frame and its hash fields."""
    if len(frame) < 14:
        return Flow(FLOW_OTHER)
    off = 12
    ethertype = struct.unpack_from("!H", frame, off)[0]
    while ethertype in _VLAN_TPIDS and len(frame) >= off + 6:
        off += 4
        ethertype = struct.unpack_from("!H", frame, off)[0]
    l3 = off + 2
    if ethertype == _ETH_P_IPV4 and len(frame) >= l3 + 20 and frame[l3] >> 4 == 4:
        ihl = (frame[l3] & 0xF) * 4
        proto = frame[l3 + 9]
        frag_off = struct.unpack_from("!H", frame, l3 + 6)[0] & 0x1FFF
        src, dst = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
        l4 = l3 + ihl
        if proto in (_TCP, _UDP) and frag_off == 0 and len(frame) >= l4 + 4:
            sp, dp = struct.unpack_from("!HH", frame, l4)
            return Flow(FLOW_IPV4_TCP if proto == _TCP else FLOW_IPV4_UDP, src, dst, sp, dp)
        return Flow(FLOW_IPV4, src, dst)
    if ethertype == _ETH_P_IPV6 and len(frame) >= l3 + 40 and frame[l3] >> 4 == 6:
        nh = frame[l3 + 6]
        src, dst = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]
        l4 = l3 + 40
        if nh in (_TCP, _UDP) and len(frame) >= l4 + 4:
            sp, dp = struct.unpack_from("!HH", frame, l4)
            return Flow(FLOW_IPV6_TCP if nh == _TCP else FLOW_IPV6_UDP, src, dst, sp, dp)
        return Flow(FLOW_IPV6, src, dst)
    return Flow(FLOW_OTHER)


def rss_hash(frame_or_flow, key: bytes = MLX5_VDPA_RSS_KEY, transform: str = "or-xor") -> int | None:
    """The RSS hash of a frame (or an already classified :class:`Flow`); None for flow 0 (not hashed)."""
    flow = frame_or_flow if isinstance(frame_or_flow, Flow) else classify(bytes(frame_or_flow))
    if not flow.hashed:
        return None
    return toeplitz(key, hash_input(flow, transform))


def rx_vrings(nr_vring: int, enabled: Sequence[int] | None = None) -> list[int]:
    """The receive vrings: even indices, the last vring excluded when it is the control vq (odd count)."""
    rx = [i for i in range(0, nr_vring, 2) if i != nr_vring - 1]
    return rx if enabled is None else [i for i in rx if i in set(enabled)]


def rqt_table(rx: Sequence[int], log_max_rqt_size: int = 9) -> list[int]:
    """The RQT: ``rx`` (enabled RX vrings, in index order) repeated round-robin over min(512, 1 << log) entries."""
    if not rx:
        return []
    size = min(RQT_MAX_SIZE, 1 << log_max_rqt_size)
    return [rx[j % len(rx)] for j in range(size)]


def predict(frame: bytes, table: Sequence[int], key: bytes = MLX5_VDPA_RSS_KEY, transform: str = "or-xor") -> int:
    """The RX vring a frame goes to under ``table`` (see :func:`rqt_table`)."""
    if not table:
        raise ValueError("no RX queue is enabled: steering is removed")
    h = rss_hash(frame, key, transform)
    return table[0] if h is None else table[h & (len(table) - 1)]


def ip_bytes(addr: str) -> bytes:
    """Helper for tests and tools: an IPv4 or IPv6 address as its network-order bytes."""
    return ipaddress.ip_address(addr).packed
