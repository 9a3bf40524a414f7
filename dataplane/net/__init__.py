"""Packet formats and checksums, like DPDK's lib/net.

=============  ================================================================
module         what it holds
=============  ================================================================
``ether``      Ethernet and VLAN header layout, ethertypes, MAC address helpers
``arp``        the Ethernet/IPv4 ARP packet layout
``ip``         IPv4 / IPv6 header layout, IP protocol numbers
``l4``         TCP, UDP, SCTP and ICMP header layout (checksum field offsets)
``cksum``      Internet checksums: raw sums, pseudo-headers, IPv4 header, L4 over mbuf chains
``ptype``      the header walk that finds l2/l3/l4 lengths and the packet type
=============  ================================================================

Offsets are from the start of their header; multi-byte fields are in network
byte order on the wire (read them with :func:`dataplane.rings.mem.be16` & co).
Kernels here follow :mod:`dataplane.rings.jit` (NRT-free, cacheable) and
work on host addresses or on mbufs of :mod:`dataplane.memory.mempool`.
"""
