"""The ops of a driver whose device object does the work (ifcvf, mlx5): DPDK's ops delegated to the device.

:class:`CardDeviceOps` turns the device's methods into the ops' return codes: ``conf(vid)``,
``close_dev(vid)``, ``vring_state(vid, vring, state)`` (its return code), ``features_changed(vid)``;
it reads ``features``, ``protocol_features`` and ``_fd0`` (the fd host notifiers map).  A failure
of dev_conf or set_features is logged on the driver's logger as ``<driver>: <op> failed`` and
returns -1.  Subclasses add get_queue_num, get_notify_area and what else they have.
"""

from __future__ import annotations

from typing import Any

from dataplane.vdpa.device import VDPA_DEVICE_TYPE_NET, VdpaDevOps, VdpaDevice

__all__ = ["CardDeviceOps"]


class CardDeviceOps(VdpaDevOps):
    driver = ""
    log: Any = None

    def __init__(self, dev: Any):
        self.dev = dev

    def _run(self, op: str, fn, vid: int) -> int:
        try:
            fn(vid)
        except Exception as e:
            self.log.error(f"{self.driver}: {op} failed", bdf=self.dev.bdf, vid=vid, error=str(e))
            return -1
        return 0

    def get_features(self, vdev: VdpaDevice) -> int:
        return self.dev.features

    def get_protocol_features(self, vdev: VdpaDevice) -> int:
        return self.dev.protocol_features

    def get_dev_type(self, vdev: VdpaDevice) -> int:
        return VDPA_DEVICE_TYPE_NET

    def dev_conf(self, vid: int) -> int:
        return self._run("dev_conf", self.dev.conf, vid)

    def dev_close(self, vid: int) -> int:
        self.dev.close_dev(vid)
        return 0

    def set_vring_state(self, vid: int, vring: int, state: int) -> int:
        return self.dev.vring_state(vid, vring, state)

    def set_features(self, vid: int) -> int:
        return self._run("set_features", self.dev.features_changed, vid)

    def get_vfio_device_fd(self, vid: int) -> int:
        return self.dev._fd0
