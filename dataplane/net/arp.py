"""The ARP packet for Ethernet / IPv4 (RFC 826): 28 bytes after the Ethernet header."""

from __future__ import annotations

__all__ = [
    "ARP_HDR_LEN",
    "ARP_HRD_OFF",
    "ARP_PRO_OFF",
    "ARP_HLN_OFF",
    "ARP_PLN_OFF",
    "ARP_OP_OFF",
    "ARP_SHA_OFF",
    "ARP_SIP_OFF",
    "ARP_THA_OFF",
    "ARP_TIP_OFF",
    "ARP_HRD_ETHER",
    "ARP_OP_REQUEST",
    "ARP_OP_REPLY",
]

ARP_HDR_LEN = 28  # Ethernet / IPv4 ARP
ARP_HRD_OFF = 0  # hardware type
ARP_PRO_OFF = 2  # protocol type (an ethertype)
ARP_HLN_OFF = 4  # hardware address length
ARP_PLN_OFF = 5  # protocol address length
ARP_OP_OFF = 6
ARP_SHA_OFF = 8  # sender hardware address
ARP_SIP_OFF = 14  # sender IP
ARP_THA_OFF = 18  # target hardware address
ARP_TIP_OFF = 24  # target IP
ARP_HRD_ETHER = 1
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
