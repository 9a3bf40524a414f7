"""Ethernet (IEEE 802.3) and VLAN (802.1Q / 802.1ad) headers, and MAC addresses.

In kernels a MAC address is an int64 holding the 48-bit address with the
first wire byte highest (``0x525400000001`` is ``52:54:00:00:00:01``);
:func:`mac_to_int` / :func:`int_to_mac` convert, :func:`mac_le` turns it
into the little-endian word :func:`st_mac` stores.
"""

from __future__ import annotations

import numpy as np

from dataplane.rings.jit import inline_kernel
from dataplane.rings.mem import ld16, ld32, st16, st32

__all__ = [
    "ETHER_ADDR_LEN",
    "ETHER_HDR_LEN",
    "ETHER_CRC_LEN",
    "ETH_DST_OFF",
    "ETH_SRC_OFF",
    "ETH_TYPE_OFF",
    "VLAN_HDR_LEN",
    "VLAN_PROTO_OFF",
    "ETHER_TYPE_IPV4",
    "ETHER_TYPE_IPV6",
    "ETHER_TYPE_ARP",
    "ETHER_TYPE_RARP",
    "ETHER_TYPE_VLAN",
    "ETHER_TYPE_QINQ",
    "mac_to_int",
    "int_to_mac",
    "mac_le",
    "st_mac",
    "ld_mac",
    "copy_mac",
]

ETHER_ADDR_LEN = 6
ETHER_HDR_LEN = 14  # dst, src, ethertype
ETHER_CRC_LEN = 4  # the FCS
ETH_DST_OFF = 0
ETH_SRC_OFF = 6
ETH_TYPE_OFF = 12
VLAN_HDR_LEN = 4  # TCI, then the inner ethertype at +2
VLAN_PROTO_OFF = 2

ETHER_TYPE_IPV4 = 0x0800
ETHER_TYPE_IPV6 = 0x86DD
ETHER_TYPE_ARP = 0x0806
ETHER_TYPE_RARP = 0x8035
ETHER_TYPE_VLAN = 0x8100
ETHER_TYPE_QINQ = 0x88A8


def mac_to_int(mac) -> int:
    """``"52:54:00:00:00:01"`` or 6 bytes -> ``0x525400000001`` (first byte highest)."""
    if isinstance(mac, str):
        parts = mac.replace("-", ":").split(":")
        if len(parts) != 6:
            raise ValueError(f"not a MAC address: {mac!r}")
        return int("".join(f"{int(p, 16):02x}" for p in parts), 16)
    b = bytes(mac)
    if len(b) != 6:
        raise ValueError(f"a MAC address has 6 bytes, got {len(b)}")
    return int.from_bytes(b, "big")


def int_to_mac(v: int) -> str:
    """``0x525400000001`` -> ``"52:54:00:00:00:01"``."""
    return ":".join(f"{b:02x}" for b in int(v).to_bytes(6, "big"))


@inline_kernel
def mac_le(mac):
    """A 48-bit MAC (first byte highest) as the little-endian word whose bytes are its wire bytes."""
    mac = np.int64(mac)
    le = np.int64(0)
    for k in range(ETHER_ADDR_LEN):
        le |= ((mac >> (8 * (ETHER_ADDR_LEN - 1 - k))) & 0xFF) << (8 * k)
    return le


@inline_kernel
def st_mac(addr, le):
    """Store a MAC given as :func:`mac_le` at ``addr``."""
    st32(addr, le & 0xFFFFFFFF)
    st16(addr + np.uint64(4), (le >> 32) & 0xFFFF)


@inline_kernel
def ld_mac(addr):
    """The 6 bytes at ``addr`` as a little-endian word (inverse of :func:`st_mac`)."""
    return np.int64(ld32(addr)) | (np.int64(ld16(addr + np.uint64(4))) << 32)


@inline_kernel
def copy_mac(dst, src):
    st_mac(dst, ld_mac(src))
