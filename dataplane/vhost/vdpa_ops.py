"""DPDK's ``rte_vdpa_dev_ops``, as the vhost back-end calls them (see :mod:`~dataplane.vhost.vdpa`).

Only names and the calling convention: the state machine calls a driver's op
through :func:`call_op`, so that a driver's bug is logged, never raised into
the vhost-user connection.
"""

from __future__ import annotations

from typing import Any, Callable

from dataplane import log as dplog

__all__ = ["VDPA_DEVICE_TYPE_NET", "VDPA_DEVICE_TYPE_BLK", "RTE_VHOST_QUEUE_ALL", "MANDATORY_OPS", "OPTIONAL_OPS", "op", "call_op"]

log = dplog.get_logger("dataplane.vhost")

#: ``RTE_VHOST_VDPA_DEVICE_TYPE_NET`` / ``_BLK``.
VDPA_DEVICE_TYPE_NET = 0
VDPA_DEVICE_TYPE_BLK = 1
#: ``RTE_VHOST_QUEUE_ALL``: every vring (host notifier control, stats).
RTE_VHOST_QUEUE_ALL = 0xFFFF

#: ``rte_vdpa_dev_ops`` members a driver must have (registration refuses it otherwise).
MANDATORY_OPS = ("get_queue_num", "get_features", "get_protocol_features", "dev_conf", "dev_close",
                 "set_vring_state", "set_features")
#: The optional members (None or absent = not implemented).
OPTIONAL_OPS = ("dev_cleanup", "migration_done", "get_vfio_group_fd", "get_vfio_device_fd", "get_notify_area",
                "get_stats_names", "get_stats", "reset_stats", "get_config", "set_config", "get_dev_type")


def op(vdev: Any, name: str) -> Callable[..., Any] | None:
    """The driver's op ``name``, or None when it does not implement it."""
    return getattr(vdev.ops, name, None)


def call_op(vdev: Any, name: str, *args: Any, vid: int = -1) -> Any:
    """Call op ``name``; None if it is not implemented.  What it raises is logged and returned as -1
    (a driver's bug must not take the vhost-user connection down)."""
    fn = op(vdev, name)
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception:
        log.exception("vDPA op raised", op=name, device=vdev.name, vid=vid)
        return -1


