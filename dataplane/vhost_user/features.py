"""Feature bits both sides of vhost-user negotiate, defined once.

* :class:`VirtioFeature` -- virtio feature bit numbers (GET/SET_FEATURES):
  the transport bits, the net device's bits used here and the two
  vhost-specific ones (``VHOST_F_LOG_ALL``, ``VHOST_USER_F_PROTOCOL_FEATURES``).
* :class:`VhostUserProtocolFeature` -- protocol feature bit numbers
  (GET/SET_PROTOCOL_FEATURES).
* :class:`VirtioDeviceStatus` -- the virtio device status byte (SET/GET_STATUS).

The numbers are the spec's (QEMU ``docs/interop/vhost-user.rst``, virtio
1.2); DESIGN.md §3 lists them and ``tests/vhost_user`` checks them against it.
The spec names are module constants too (``features.VIRTIO_F_VERSION_1``).
"""

from __future__ import annotations

import enum

__all__ = [
    "VirtioFeature",
    "VhostUserProtocolFeature",
    "VirtioDeviceStatus",
    "VIRTIO_F_IOMMU_PLATFORM",
    "bit",
    "features_str",
]


def bit(n: int) -> int:
    """``1 << n`` (a feature mask from a bit number)."""
    return 1 << int(n)


class VirtioFeature(enum.IntEnum):
    """Virtio feature bit numbers used here (net device bits, transport bits, vhost bits)."""

    VIRTIO_NET_F_CSUM = 0
    VIRTIO_NET_F_GUEST_CSUM = 1
    VIRTIO_NET_F_MTU = 3
    VIRTIO_NET_F_MAC = 5
    VIRTIO_NET_F_GSO = 6
    VIRTIO_NET_F_GUEST_TSO4 = 7
    VIRTIO_NET_F_GUEST_TSO6 = 8
    VIRTIO_NET_F_GUEST_ECN = 9
    VIRTIO_NET_F_GUEST_UFO = 10
    VIRTIO_NET_F_HOST_TSO4 = 11
    VIRTIO_NET_F_HOST_TSO6 = 12
    VIRTIO_NET_F_HOST_ECN = 13
    VIRTIO_NET_F_HOST_UFO = 14
    VIRTIO_NET_F_MRG_RXBUF = 15
    VIRTIO_NET_F_STATUS = 16
    VIRTIO_NET_F_CTRL_VQ = 17
    VIRTIO_NET_F_CTRL_RX = 18
    VIRTIO_NET_F_CTRL_VLAN = 19
    VIRTIO_NET_F_GUEST_ANNOUNCE = 21
    VIRTIO_NET_F_MQ = 22
    VIRTIO_NET_F_CTRL_MAC_ADDR = 23
    VHOST_F_LOG_ALL = 26
    VIRTIO_F_ANY_LAYOUT = 27
    VIRTIO_RING_F_INDIRECT_DESC = 28
    VIRTIO_RING_F_EVENT_IDX = 29
    VHOST_USER_F_PROTOCOL_FEATURES = 30
    VIRTIO_F_VERSION_1 = 32
    VIRTIO_F_ACCESS_PLATFORM = 33  # a.k.a. VIRTIO_F_IOMMU_PLATFORM
    VIRTIO_F_RING_PACKED = 34
    VIRTIO_F_IN_ORDER = 35
    VIRTIO_F_ORDER_PLATFORM = 36


VIRTIO_F_IOMMU_PLATFORM = VirtioFeature.VIRTIO_F_ACCESS_PLATFORM


class VhostUserProtocolFeature(enum.IntEnum):
    """Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES)."""

    VHOST_USER_PROTOCOL_F_MQ = 0
    VHOST_USER_PROTOCOL_F_LOG_SHMFD = 1
    VHOST_USER_PROTOCOL_F_RARP = 2
    VHOST_USER_PROTOCOL_F_REPLY_ACK = 3
    VHOST_USER_PROTOCOL_F_MTU = 4
    VHOST_USER_PROTOCOL_F_BACKEND_REQ = 5
    VHOST_USER_PROTOCOL_F_CROSS_ENDIAN = 6
    VHOST_USER_PROTOCOL_F_CRYPTO_SESSION = 7
    VHOST_USER_PROTOCOL_F_PAGEFAULT = 8
    VHOST_USER_PROTOCOL_F_CONFIG = 9
    VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD = 10
    VHOST_USER_PROTOCOL_F_HOST_NOTIFIER = 11
    VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 12
    VHOST_USER_PROTOCOL_F_RESET_DEVICE = 13
    VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS = 14
    VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15
    VHOST_USER_PROTOCOL_F_STATUS = 16
    VHOST_USER_PROTOCOL_F_XEN_MMAP = 17
    VHOST_USER_PROTOCOL_F_SHARED_OBJECT = 18
    VHOST_USER_PROTOCOL_F_DEVICE_STATE = 19


class VirtioDeviceStatus(enum.IntFlag):
    """The virtio device status byte (SET_STATUS / GET_STATUS)."""

    RESET = 0
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


globals().update(VirtioFeature.__members__)
globals().update(VhostUserProtocolFeature.__members__)


def features_str(mask: int, names: type[enum.IntEnum] = VirtioFeature) -> str:
    """``"VIRTIO_F_VERSION_1|VIRTIO_NET_F_MQ|bit40"`` for a feature mask (logs, errors)."""
    parts = []
    for n in range(64):
        if mask >> n & 1:
            try:
                parts.append(names(n).name)
            except ValueError:
                parts.append(f"bit{n}")
    return "|".join(parts) or "0"
