"""The back-end's side of a vDPA device attached to a vhost-user socket (DPDK lib/vhost's vdpa hooks).

A vDPA device walks the guest rings itself: the back-end only negotiates,
and tells the device's driver what happened through DPDK's ops
(``rte_vdpa_dev_ops``).  This module is what the state machine
(:class:`~dataplane.vhost.device.VhostUserDevice`) needs for that; the
registry, the ops base class and the drivers live above, in
:mod:`dataplane.vdpa`.  The back-end sees a vDPA device only as an object
with ``name``, ``type`` (:data:`VDPA_DEVICE_TYPE_NET` or
:data:`VDPA_DEVICE_TYPE_BLK`) and ``ops`` (the driver's ops object; a
missing optional op is None or absent).

**Attaching** (``VhostLibrary.driver_attach_vdpa_device``) gives the socket
a :class:`VdpaDeviceClass`, the device class that stands for the device:

* virtio features = the device's ``get_features`` AND what the vhost-user
  transport can carry for a device that walks its own rings
  (:data:`VDPA_SOCKET_FEATURES`: every device-specific bit, the ring
  layout bits, LOG_ALL, PROTOCOL_FEATURES; never ACCESS_PLATFORM, as this
  back-end has no IOTLB);
* protocol features = this back-end's default ones AND the device's
  ``get_protocol_features``.  CONFIG is implemented only when the driver has
  ``get_config``, RARP only when it has ``migration_done``;
* GET_QUEUE_NUM = min(128, ``get_queue_num``) (queue pairs for net).

SET_FEATURES and SET_PROTOCOL_FEATURES are checked against these, as DPDK
checks them against the socket's ANDed values.

**When the ops are called** (DPDK 22.11 vhost_user.c), see the state machine:

* ``set_features(vid)`` after every accepted SET_FEATURES (while running only
  LOG_ALL may change; an unchanged set while running calls nothing);
* ``set_vring_state(vid, vring, enable)`` whenever a vring's readiness flips
  (after guest notifications are set up, before the application's
  ``vring_state_changed``);
* ``dev_conf(vid)`` at the end of a message once the device is ready and not
  yet configured (net: vrings 0 and 1 ready; blk: vring 0, and only while
  handling SET_VRING_CALL of the last vring as in DPDK, or SET_VRING_ENABLE /
  SET_STATUS once every vring is ready, QEMU's order); 0 = configured;
* ``dev_close(vid)`` when the running (or configured) device stops: on
  GET_VRING_BASE, RESET_OWNER / RESET_DEVICE and disconnection, and on a
  SET_MEM_TABLE that changes the table while configured (the next message
  finds the device ready and calls ``dev_conf`` again).  The driver saves
  the ring indices it reached with ``set_vring_base`` before returning;
* ``dev_cleanup(vid)`` when the connection is torn down or reset, before the
  guest memory is unmapped;
* ``migration_done(vid)`` on SEND_RARP;
* ``get_config(vid, size) -> bytes`` / ``set_config(vid, data, offset, flags)``
  on GET_CONFIG / SET_CONFIG.

The device's vrings are never handed to a data path: :class:`VdpaDeviceClass`
has none and refuses one.
"""

from __future__ import annotations

from typing import Any, Callable

from dataplane.vhost.blk.spec import VirtioBlkFeature
from dataplane.vhost.device import VHOST_MAX_VRING, RequestError
from dataplane.vhost.device_class import DeviceClass
from dataplane.vhost_user.features import (
    VhostUserProtocolFeature as PF,
    VirtioFeature as VF,
    bit,
)
from dataplane.vhost_user.messages import VhostUserRequest as R
from dataplane.vhost.vdpa_ops import MANDATORY_OPS, OPTIONAL_OPS, VDPA_DEVICE_TYPE_BLK, VDPA_DEVICE_TYPE_NET, call_op, op

__all__ = [
    "VDPA_DEVICE_TYPE_NET",
    "VDPA_DEVICE_TYPE_BLK",
    "VHOST_MAX_QUEUE_PAIRS",
    "VDPA_SOCKET_FEATURES",
    "MANDATORY_OPS",
    "OPTIONAL_OPS",
    "VdpaDeviceClass",
    "call_op",
]

#: GET_QUEUE_NUM never answers more than this (DPDK's VHOST_MAX_QUEUE_PAIRS).
VHOST_MAX_QUEUE_PAIRS = 0x80

#: What the back-end can carry for a device that walks its own rings: all device-specific
#: bits (0-23: the device implements them), the ring layout bits and the vhost bits.  Not
#: ACCESS_PLATFORM: this back-end has no IOTLB (it refuses IOMMU_SUPPORT).
VDPA_SOCKET_FEATURES = ((1 << 24) - 1) | sum(
    bit(f)
    for f in (
        VF.VHOST_F_LOG_ALL,
        VF.VIRTIO_F_ANY_LAYOUT,
        VF.VIRTIO_RING_F_INDIRECT_DESC,
        VF.VIRTIO_RING_F_EVENT_IDX,
        VF.VHOST_USER_F_PROTOCOL_FEATURES,
        VF.VIRTIO_F_VERSION_1,
        VF.VIRTIO_F_RING_PACKED,
        VF.VIRTIO_F_IN_ORDER,
    )
)

class VdpaDeviceClass(DeviceClass):
    """The device class of a socket with vDPA device ``vdev`` attached (see the module docstring)."""

    def __init__(self, vdev: Any):
        super().__init__(datapath=None)
        self.vdev = vdev
        self.blk = vdev.type == VDPA_DEVICE_TYPE_BLK
        self.name = f"vdpa-{'blk' if self.blk else 'net'}:{vdev.name}"
        self.device_type = 2 if self.blk else 1
        self.feature_names = VirtioBlkFeature if self.blk else VF
        self.ready_vrings = 1 if self.blk else 2
        pf = bit(PF.VHOST_USER_PROTOCOL_F_MQ)
        if op(vdev, "get_config") is not None:
            pf |= bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)
        if op(vdev, "migration_done") is not None and not self.blk:
            pf |= bit(PF.VHOST_USER_PROTOCOL_F_RARP)
        self.protocol_features = pf

    @property
    def datapath(self) -> None:  # type: ignore[override]
        return None

    @datapath.setter
    def datapath(self, hooks: Any) -> None:
        if hooks is not None:
            raise ValueError(f"{self.name}: a vDPA device walks its own rings; its queues are never "
                             "handed to a data path")

    def offered_features(self, flags: int) -> int:
        return VDPA_SOCKET_FEATURES

    def implemented_features(self, flags: int) -> int:
        return VDPA_SOCKET_FEATURES

    def max_vrings(self, config: Any) -> int:
        if self.blk:
            return min(config.queue_num, VHOST_MAX_VRING)
        return min(2 * config.queue_num + 1, VHOST_MAX_VRING)  # + the control queue

    def config_space(self, dev: Any) -> bytes | None:
        if op(self.vdev, "get_config") is None:
            return None
        data = call_op(self.vdev, "get_config", dev.vid, 256, vid=dev.vid)
        if not isinstance(data, (bytes, bytearray)):
            raise RequestError(f"vDPA device {self.vdev.name}: get_config failed ({data!r})")
        return bytes(data)

    def set_config(self, dev: Any, offset: int, data: bytes, flags: int) -> None:
        if op(self.vdev, "set_config") is None:
            raise RequestError(f"vDPA device {self.vdev.name} has no writable config space (no set_config op)")
        rc = call_op(self.vdev, "set_config", dev.vid, bytes(data), offset, flags, vid=dev.vid)
        if rc not in (0, None):
            raise RequestError(f"vDPA device {self.vdev.name}: set_config refused ({rc})")

    def requests(self) -> dict[int, Callable[[Any, Any, Any], Any]]:
        if self.protocol_features & bit(PF.VHOST_USER_PROTOCOL_F_RARP):
            return {R.VHOST_USER_SEND_RARP: self._send_rarp}
        return {}

    def _send_rarp(self, dev: Any, msg: Any, p: Any) -> None:
        call_op(self.vdev, "migration_done", dev.vid, vid=dev.vid)
        return None
