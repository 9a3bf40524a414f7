"""The header walk of a received packet: l2/l3/l4 lengths and the packet type.

After DPDK's ``parse_headers`` in lib/vhost and ``rte_net_get_ptype``:
Ethernet (+ one VLAN or QinQ tag) / IPv4 or IPv6 / TCP, UDP or SCTP in the
first ``data_len`` contiguous bytes.
"""

from __future__ import annotations

import numpy as np

from dataplane.memory.mbuf import (
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
from dataplane.net.ether import ETHER_TYPE_IPV4, ETHER_TYPE_IPV6, ETHER_TYPE_QINQ, ETHER_TYPE_VLAN
from dataplane.net.ip import IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP
from dataplane.rings.jit import kernel
from dataplane.rings.mem import be16, ld8

__all__ = ["parse_headers"]

_U64 = np.uint64


@kernel
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
