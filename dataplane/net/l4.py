"""TCP (RFC 9293), UDP (RFC 768), SCTP (RFC 9260) and ICMP (RFC 792) headers."""

from __future__ import annotations

__all__ = [
    "TCP_MIN_HDR_LEN",
    "TCP_SPORT_OFF",
    "TCP_DPORT_OFF",
    "TCP_DOFF_OFF",
    "TCP_CKSUM_OFF",
    "TCP_FLAGS_OFF",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_CWR",
    "UDP_HDR_LEN",
    "UDP_SPORT_OFF",
    "UDP_DPORT_OFF",
    "UDP_LEN_OFF",
    "UDP_CKSUM_OFF",
    "SCTP_CKSUM_OFF",
    "ICMP_HDR_LEN",
    "ICMP_CKSUM_OFF",
    "ICMP_ECHO_REQUEST",
    "ICMP_ECHO_REPLY",
]

TCP_MIN_HDR_LEN = 20
TCP_SPORT_OFF = 0
TCP_DPORT_OFF = 2
TCP_DOFF_OFF = 12  # data offset, in the high nibble (32-bit words)
TCP_CKSUM_OFF = 16
TCP_FLAGS_OFF = 13
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80

UDP_HDR_LEN = 8
UDP_SPORT_OFF = 0
UDP_DPORT_OFF = 2
UDP_LEN_OFF = 4
UDP_CKSUM_OFF = 6

SCTP_CKSUM_OFF = 8

ICMP_HDR_LEN = 8  # type, code, checksum, identifier, sequence
ICMP_CKSUM_OFF = 2
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
