"""The virtio-net device class of the vhost-user back-end (DPDK's builtin net device).

What a network device adds to the generic state machine (see
:mod:`~dataplane.vhost.device_class` for the interface):

* the virtio features it offers (:data:`NET_FEATURES`): DPDK's vhost
  library's net set minus what is not implemented here, which is refused by
  name when asked for (:data:`NOT_IMPLEMENTED`: CTRL_VQ, CTRL_RX, GSO,
  HOST_UFO, GUEST_UFO).  HOST_ECN goes with the host TSO offloads
  (:data:`HOST_TSO_FEATURES`): with ``LINEARBUF_SUPPORT`` but not
  ``EXTBUF_SUPPORT`` they are withdrawn, as DPDK does;
* the protocol features MQ, RARP, MTU and CONFIG (CONFIG offered only when
  enabled: QEMU's virtio-net takes its config space from QEMU, never from
  the back-end, and warns about the offer; a front-end that wants the
  back-end's -- a vDPA-style one -- gets it with ``driver_set_protocol_features``);
* queue pairs: ``GET_QUEUE_NUM`` answers the pairs, vrings ``2n`` (guest
  Rx) and ``2n + 1`` (guest Tx) per pair (no control queue: CTRL_VQ is not
  offered; QEMU serves the guest's control queue itself); without MQ
  negotiated only the first pair is kept;
* the config space ``mac, status, max_virtqueue_pairs, mtu, speed, duplex``
  (GET_CONFIG; SET_CONFIG may write the mac, or everything for a migration);
* ``SEND_RARP`` (the next dequeue injects a RARP: the data path's
  ``on_send_rarp`` hook is told) and ``NET_SET_MTU``.

Per connection, ``dev.device_state`` is a :class:`NetState`: ``mac``,
``mtu`` and ``broadcast_rarp``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from dataplane import log as dplog
from dataplane.vhost.device import (
    RTE_VHOST_USER_EXTBUF_SUPPORT,
    RTE_VHOST_USER_LINEARBUF_SUPPORT,
    VHOST_MAX_VRING,
    DataPathHooks,
    RequestError,
)
from dataplane.vhost.device_class import DeviceClass
from dataplane.vhost.net_hdr import net_hdr_len
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit
from dataplane.vhost_user.messages import Message, VhostUserRequest as R
from dataplane.vhost_user.payloads import Config, U64

__all__ = [
    "VIRTIO_ID_NET",
    "VHOST_MAX_QUEUE_PAIRS",
    "VIRTIO_MIN_MTU",
    "VIRTIO_MAX_MTU",
    "VIRTIO_NET_S_LINK_UP",
    "NET_FEATURES",
    "HOST_TSO_FEATURES",
    "NOT_IMPLEMENTED",
    "NetDataPathHooks",
    "NetState",
    "NetDevice",
    "net_hdr_len",
]

log = dplog.get_logger("dataplane.vhost")

VIRTIO_ID_NET = 1
#: DPDK's limit for the builtin net device: 128 queue pairs.
VHOST_MAX_QUEUE_PAIRS = 128
VIRTIO_MIN_MTU = 68
VIRTIO_MAX_MTU = 65535
#: virtio-net config space status bit.
VIRTIO_NET_S_LINK_UP = 1

#: The host segmentation offloads, offered together (the ``net_vhost`` port's ``tso``
#: devarg, and withdrawn together under LINEARBUF_SUPPORT without EXTBUF_SUPPORT):
#: HOST_ECN is meaningful only with HOST_TSO4/6 (virtio 1.2 §5.1.3.1).
HOST_TSO_FEATURES = bit(VF.VIRTIO_NET_F_HOST_TSO4) | bit(VF.VIRTIO_NET_F_HOST_TSO6) | bit(VF.VIRTIO_NET_F_HOST_ECN)

#: DPDK's VHOST_USER_NET_SUPPORTED_FEATURES minus what is not implemented here
#: (:data:`NOT_IMPLEMENTED`) and ACCESS_PLATFORM (no IOMMU support).  Each bit is
#: exercised by a test: ``tests/vhost/test_offered_bits.py`` lists them.
NET_FEATURES = HOST_TSO_FEATURES | sum(
    bit(f)
    for f in (
        VF.VIRTIO_NET_F_MRG_RXBUF,
        VF.VIRTIO_F_ANY_LAYOUT,
        VF.VIRTIO_NET_F_GUEST_ANNOUNCE,
        VF.VIRTIO_NET_F_MQ,
        VF.VIRTIO_F_VERSION_1,
        VF.VHOST_F_LOG_ALL,
        VF.VHOST_USER_F_PROTOCOL_FEATURES,
        VF.VIRTIO_NET_F_CSUM,
        VF.VIRTIO_NET_F_GUEST_CSUM,
        VF.VIRTIO_NET_F_GUEST_TSO4,
        VF.VIRTIO_NET_F_GUEST_TSO6,
        VF.VIRTIO_NET_F_GUEST_ECN,
        VF.VIRTIO_RING_F_INDIRECT_DESC,
        VF.VIRTIO_RING_F_EVENT_IDX,
        VF.VIRTIO_F_IN_ORDER,
        VF.VIRTIO_F_RING_PACKED,
        VF.VIRTIO_NET_F_MTU,
    )
)

#: Net bits an earlier version offered (as DPDK's vhost library does, but for GSO)
#: that this back-end does not implement, and why: never offered, and refused by
#: name when asked for (``driver_set_features`` / ``driver_enable_features``).
NOT_IMPLEMENTED = {
    VF.VIRTIO_NET_F_CTRL_VQ: "no control virtqueue (QEMU and virtio-user serve the guest's control queue themselves)",
    VF.VIRTIO_NET_F_CTRL_RX: "no control virtqueue, so no Rx mode commands (and no Rx filtering)",
    VF.VIRTIO_NET_F_GSO: "only TCP segmentation is implemented (HOST_TSO4/HOST_TSO6), not any GSO type",
    VF.VIRTIO_NET_F_HOST_UFO: "UDP fragmentation offload is not implemented (a GSO UDP header is refused)",
    VF.VIRTIO_NET_F_GUEST_UFO: "UDP fragmentation offload is not implemented (GSO UDP is never sent to a guest)",
}


class NetDataPathHooks(DataPathHooks):
    """The net data path's hooks: the generic ones plus :meth:`on_send_rarp`."""

    def on_send_rarp(self, dev: Any) -> None:
        """``SEND_RARP`` arrived: ``dev.device_state.broadcast_rarp`` is set and
        ``dev.device_state.mac`` holds the guest MAC; the next dequeue should
        inject a RARP and clear the flag."""


@dataclass
class NetState:
    """One connection's net device state."""

    mac: bytes = bytes(6)
    mtu: int = 0
    broadcast_rarp: bool = False


class NetDevice(DeviceClass):
    """A virtio-net device; ``mac`` is the config-space MAC of new connections (``driver_set_mac``)."""

    name = "net"
    device_type = VIRTIO_ID_NET
    feature_names = VF
    not_implemented = NOT_IMPLEMENTED
    postcopy_support = True  # vhost.handoff.map_vring registers the lcores' mappings with the relay
    protocol_features = sum(
        bit(f)
        for f in (
            PF.VHOST_USER_PROTOCOL_F_MQ,
            PF.VHOST_USER_PROTOCOL_F_RARP,
            PF.VHOST_USER_PROTOCOL_F_MTU,
            PF.VHOST_USER_PROTOCOL_F_CONFIG,
        )
    )
    optional_protocol_features = bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)
    max_queues = VHOST_MAX_QUEUE_PAIRS
    ready_vrings = 2

    def __init__(self, datapath: DataPathHooks | None = None, mac: bytes = bytes(6)):
        super().__init__(datapath)
        self.mac = bytes(mac)

    def offered_features(self, flags: int) -> int:
        features = NET_FEATURES
        if flags & RTE_VHOST_USER_LINEARBUF_SUPPORT and not flags & RTE_VHOST_USER_EXTBUF_SUPPORT:
            features &= ~HOST_TSO_FEATURES  # DPDK: large TSO frames would not fit a linear mbuf
        return features

    def implemented_features(self, flags: int) -> int:
        return NET_FEATURES  # the LINEARBUF withdrawal is DPDK's default offer, not a missing offload

    def max_vrings(self, config: Any) -> int:
        """Two per queue pair, within DPDK's VHOST_MAX_VRING (256)."""
        return min(2 * config.queue_num, VHOST_MAX_VRING)

    def new_state(self) -> NetState:
        return NetState(mac=self.mac)

    def features_negotiated(self, dev: Any) -> None:
        if not dev.has_feature(VF.VIRTIO_NET_F_MQ):
            dev.truncate_vrings(2)  # only the first pair without MQ (DPDK)

    # -- config space ---------------------------------------------------------------

    def config_space(self, dev: Any) -> bytes:
        """mac, status (link up while running), max_virtqueue_pairs, mtu, speed, duplex."""
        st: NetState = dev.device_state
        status = VIRTIO_NET_S_LINK_UP if dev.running else 0
        return (
            bytes(st.mac)
            + struct.pack("<HHH", status, dev.config.queue_num, st.mtu)
            + struct.pack("<IB", 0xFFFFFFFF, 0xFF)  # speed, duplex: unknown
        )

    def set_config(self, dev: Any, offset: int, data: bytes, flags: int) -> None:
        end = offset + len(data)
        if flags == Config.WRITABLE_FIELDS and end > 6:
            raise RequestError(f"config bytes {offset}..{end} are read-only (only the mac is writable)")
        space = bytearray(self.config_space(dev))
        space[offset:end] = data
        st: NetState = dev.device_state
        st.mac = bytes(space[:6])
        if flags == Config.MIGRATION:
            st.mtu = struct.unpack_from("<H", space, 10)[0]

    # -- net requests ---------------------------------------------------------------

    def requests(self) -> dict:
        return {R.VHOST_USER_SEND_RARP: self._send_rarp, R.VHOST_USER_NET_SET_MTU: self._net_set_mtu}

    def _send_rarp(self, dev: Any, msg: Message, p: U64) -> None:
        st: NetState = dev.device_state
        st.mac = struct.pack("<Q", p.u64)[:6]
        st.broadcast_rarp = True
        log.info("RARP requested", path=dev.ifname, vid=dev.vid, mac=st.mac.hex(":"))
        dev.hook("on_send_rarp")

    def _net_set_mtu(self, dev: Any, msg: Message, p: U64) -> None:
        if not VIRTIO_MIN_MTU <= p.u64 <= VIRTIO_MAX_MTU:
            raise RequestError(f"invalid MTU {p.u64} ({VIRTIO_MIN_MTU}..{VIRTIO_MAX_MTU})")
        dev.device_state.mtu = p.u64
