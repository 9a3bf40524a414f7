"""vDPA devices: DPDK's ops set, the device registry and the stats API (``lib/vhost/vdpa.c``).

A driver describes a device with an ops object (:class:`VdpaDevOps`: DPDK's
``rte_vdpa_dev_ops``, with Python signatures that return values instead of
filling out-parameters) and registers it under a name
(:func:`register_device`); an application finds it by name
(:func:`find_device_by_name`) and attaches it to a vhost-user socket
(``VhostLibrary.driver_attach_vdpa_device(path, vdev)``, see
:mod:`dataplane.vhost.vdpa`, which also says when the back-end calls each op).

The ops (``vdev`` is the :class:`VdpaDevice`, ``vid`` the vhost connection):

========================  =======================================================  =========
op                        returns                                                  required
========================  =======================================================  =========
get_queue_num(vdev)       queue pairs (net) or queues (blk)                        yes
get_features(vdev)        virtio feature bits offered                              yes
get_protocol_features     vhost-user protocol feature bits offered                 yes
dev_conf(vid)             0 once the device walks the rings                        yes
dev_close(vid)            0; the ring indices were saved with set_vring_base       yes
set_vring_state(vid, q,   0                                                        yes
  enable)
set_features(vid)         0 (read the features with get_negotiated_features)       yes
dev_cleanup(vid)          -
migration_done(vid)       -
get_vfio_group_fd(vid)    fd
get_vfio_device_fd(vid)   the fd whose pages are the doorbells (host notifiers)
get_notify_area(vid, q)   ``(offset, size)`` of vring q's doorbell page in that fd
get_stats_names(vdev)     list of names (each < 64 bytes)
get_stats(vdev, q)        list of ``(id, value)``; ``stats[i].id == i``
reset_stats(vdev, q)      0
get_config(vid, size)     the config space, bytes
set_config(vid, data,     0
  offset, flags)
get_dev_type(vdev)        ``VDPA_DEVICE_TYPE_NET`` or ``VDPA_DEVICE_TYPE_BLK``
========================  =======================================================  =========

An op a driver does not implement stays None (the base class's value).
"""

from __future__ import annotations

import errno
import threading
from typing import Any

from dataplane import log as dplog
from dataplane.vhost.vdpa_ops import (
    MANDATORY_OPS,
    OPTIONAL_OPS,
    RTE_VHOST_QUEUE_ALL,
    VDPA_DEVICE_TYPE_BLK,
    VDPA_DEVICE_TYPE_NET,
)

__all__ = [
    "VDPA_DEVICE_TYPE_NET",
    "VDPA_DEVICE_TYPE_BLK",
    "RTE_VHOST_QUEUE_ALL",
    "RTE_DEV_NAME_MAX_LEN",
    "RTE_VDPA_STATS_NAME_SIZE",
    "VdpaError",
    "VdpaDevOps",
    "VdpaDevice",
    "register_device",
    "unregister_device",
    "find_device_by_name",
    "list_devices",
    "get_queue_num",
    "get_features",
    "get_protocol_features",
    "get_stats_names",
    "get_stats",
    "reset_stats",
]

log = dplog.get_logger("dataplane.vdpa")

#: Names are compared over at most this many bytes (RTE_DEV_NAME_MAX_LEN).
RTE_DEV_NAME_MAX_LEN = 64
#: A stat name is shorter than this (RTE_VDPA_STATS_NAME_SIZE).
RTE_VDPA_STATS_NAME_SIZE = 64


class VdpaError(Exception):
    """A vDPA call failed; ``errno`` is what DPDK returns (negated there)."""

    def __init__(self, message: str, err: int = errno.EINVAL):
        super().__init__(message)
        self.errno = err


class VdpaDevOps:
    """DPDK's ``rte_vdpa_dev_ops``: subclass it and define the ops your device has (see the module table).

    Every op is None here: a driver defines the seven mandatory ones and any optional ones.
    """


for _name in MANDATORY_OPS + OPTIONAL_OPS:
    setattr(VdpaDevOps, _name, None)


class VdpaDevice:
    """A registered vDPA device (``struct rte_vdpa_device``): ``name``, ``ops``, ``type``.

    ``driver`` names the driver (``"vdpasim_net"``, ``"ifcvf"``, ...); ``device`` is the
    driver's own object behind it (its ``rte_device``), if any.
    """

    def __init__(self, name: str, ops: VdpaDevOps, dev_type: int = VDPA_DEVICE_TYPE_NET, *, driver: str = "",
                 device: Any = None):
        self.name = name
        self.ops = ops
        self.type = dev_type
        self.driver = driver
        self.device = device

    def __repr__(self) -> str:
        kind = "blk" if self.type == VDPA_DEVICE_TYPE_BLK else "net"
        return f"VdpaDevice({self.name!r}, {kind}, driver={self.driver!r})"


_lock = threading.Lock()
_devices: list[VdpaDevice] = []


def _key(name: str) -> bytes:
    return name.encode()[:RTE_DEV_NAME_MAX_LEN]


def register_device(name: str, ops: VdpaDevOps, *, driver: str = "", device: Any = None) -> VdpaDevice:
    """Register a device under ``name`` (``rte_vdpa_register_device``).

    Refused (VdpaError) when ``ops`` is None, a mandatory op is missing ("Some mandatory vDPA
    ops aren't implemented") or the name is taken (EEXIST).  The type comes from
    ``get_dev_type`` if the driver has it, else net; when ``get_dev_type`` fails the device
    is returned but, as in DPDK, not listed.
    """
    if ops is None:
        raise VdpaError(f"{name}: no ops")
    missing = [op for op in MANDATORY_OPS if getattr(ops, op, None) is None]
    if missing:
        raise VdpaError(f"{name}: Some mandatory vDPA ops aren't implemented ({', '.join(missing)})")
    vdev = VdpaDevice(name, ops, driver=driver, device=device)
    with _lock:
        if any(_key(d.name) == _key(name) for d in _devices):
            raise VdpaError(f"{name}: a vDPA device with this name is already registered", errno.EEXIST)
        if ops.get_dev_type is not None:
            try:
                dev_type = ops.get_dev_type(vdev)
            except Exception:
                log.exception("get_dev_type raised", device=name)
                dev_type = None
            if dev_type not in (VDPA_DEVICE_TYPE_NET, VDPA_DEVICE_TYPE_BLK):
                log.error("get_dev_type failed: device not listed", device=name, result=dev_type)
                return vdev
            vdev.type = dev_type
        _devices.append(vdev)
    log.info("vDPA device registered", device=name, driver=driver, type="blk" if vdev.type else "net")
    return vdev


def unregister_device(vdev: VdpaDevice) -> None:
    """Remove ``vdev`` from the registry (``rte_vdpa_unregister_device``); VdpaError (ENODEV) if it is not there."""
    with _lock:
        for i, d in enumerate(_devices):
            if d is vdev:
                del _devices[i]
                break
        else:
            raise VdpaError(f"{vdev.name}: not a registered vDPA device", errno.ENODEV)
    log.info("vDPA device unregistered", device=vdev.name)


def find_device_by_name(name: str | None) -> VdpaDevice | None:
    """The registered device called ``name`` (first 64 bytes compared), or None."""
    if name is None:
        return None
    with _lock:
        return next((d for d in _devices if _key(d.name) == _key(name)), None)


def list_devices() -> list[VdpaDevice]:
    """Registered devices, in registration order (DPDK's ``class=vdpa`` iteration)."""
    with _lock:
        return list(_devices)


def _op(vdev: VdpaDevice | None, name: str):
    if vdev is None:
        raise VdpaError("no device", errno.EINVAL)
    fn = getattr(vdev.ops, name, None)
    if fn is None:
        raise VdpaError(f"{vdev.name}: the driver has no {name} op", errno.ENOTSUP)
    return fn


def get_queue_num(vdev: VdpaDevice) -> int:
    """``rte_vdpa_get_queue_num``: queue pairs (net) or queues (blk)."""
    return int(_op(vdev, "get_queue_num")(vdev))


def get_features(vdev: VdpaDevice) -> int:
    """``rte_vdpa_get_features``."""
    return int(_op(vdev, "get_features")(vdev))


def get_protocol_features(vdev: VdpaDevice) -> int:
    """``rte_vdpa_get_protocol_features``."""
    return int(_op(vdev, "get_protocol_features")(vdev))


def get_stats_names(vdev: VdpaDevice) -> list[str]:
    """``rte_vdpa_get_stats_names``: the names of the device's counters (ENOTSUP without the op)."""
    names = list(_op(vdev, "get_stats_names")(vdev))
    for n in names:
        if len(n.encode()) >= RTE_VDPA_STATS_NAME_SIZE:
            raise VdpaError(f"{vdev.name}: stat name {n!r} is {RTE_VDPA_STATS_NAME_SIZE} bytes or longer")
    return names


def get_stats(vdev: VdpaDevice, qid: int) -> list[tuple[int, int]]:
    """``rte_vdpa_get_stats``: ``[(id, value)]`` of vring ``qid``, ``id`` indexing :func:`get_stats_names`."""
    stats = [(int(i), int(v)) for i, v in _op(vdev, "get_stats")(vdev, qid)]
    for pos, (i, _) in enumerate(stats):
        if i != pos:
            raise VdpaError(f"{vdev.name}: get_stats broke the contract stats[i].id == i at {pos} (id {i})")
    return stats


def reset_stats(vdev: VdpaDevice, qid: int) -> None:
    """``rte_vdpa_reset_stats``."""
    rc = _op(vdev, "reset_stats")(vdev, qid)
    if rc not in (0, None):
        raise VdpaError(f"{vdev.name}: reset_stats({qid}) failed ({rc})")
