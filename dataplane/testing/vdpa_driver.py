"""A recording vDPA driver: DPDK's ops that remember every call, for the back-end's lifecycle tests.

:class:`RecordingVdpaOps` has every op.  It walks no ring: ``dev_close`` saves
the indices the test says the "hardware" reached (``consumed``, else what
the back-end holds) with ``set_vring_base``, as a driver must.  ``calls`` is
the ordered list of ``(op, *args)``; ``wait`` blocks until a call shows up.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dataplane.vdpa.device import VDPA_DEVICE_TYPE_NET, VdpaDevOps, VdpaDevice

__all__ = ["RecordingVdpaOps"]


class RecordingVdpaOps(VdpaDevOps):
    """Every DPDK vDPA op, recorded.  ``lib`` is the :class:`~dataplane.vhost.library.VhostLibrary` serving the device."""

    def __init__(self, lib: Any, *, features: int, protocol_features: int, queue_num: int = 1,
                 dev_type: int = VDPA_DEVICE_TYPE_NET, config: bytes = b"", dev_conf_result: int = 0,
                 notify_fd: int | None = None):
        self.lib = lib
        self.features = features
        self.protocol_features = protocol_features
        self.queue_num = queue_num
        self.dev_type = dev_type
        self.config = bytearray(config)
        self.dev_conf_result = dev_conf_result
        self.notify_fd = notify_fd
        self.consumed: dict[int, tuple[int, int]] = {}
        self.calls: list[tuple] = []
        self.negotiated: list[int] = []
        self._cond = threading.Condition()

    def _record(self, *call: Any) -> None:
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def wait(self, call: tuple, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while call not in self.calls:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{call} was not called; calls: {self.calls}")
                self._cond.wait(left)

    def names(self) -> list[str]:
        """The ops called, in order."""
        return [c[0] for c in self.calls]

    # -- mandatory ---------------------------------------------------------------

    def get_queue_num(self, vdev: VdpaDevice) -> int:
        return self.queue_num

    def get_features(self, vdev: VdpaDevice) -> int:
        return self.features

    def get_protocol_features(self, vdev: VdpaDevice) -> int:
        return self.protocol_features

    def dev_conf(self, vid: int) -> int:
        self._record("dev_conf", vid)
        return self.dev_conf_result

    def dev_close(self, vid: int) -> int:
        for q in range(self.lib.get_vring_num(vid)):
            if q in self.consumed:
                self.lib.set_vring_base(vid, q, *self.consumed[q])
        self._record("dev_close", vid)
        return 0

    def set_vring_state(self, vid: int, vring: int, state: int) -> int:
        self._record("set_vring_state", vid, vring, state)
        return 0

    def set_features(self, vid: int) -> int:
        self.negotiated.append(self.lib.get_negotiated_features(vid))
        self._record("set_features", vid)
        return 0

    # -- optional ----------------------------------------------------------------

    def dev_cleanup(self, vid: int) -> int:
        self._record("dev_cleanup", vid)
        return 0

    def migration_done(self, vid: int) -> int:
        self._record("migration_done", vid)
        return 0

    def get_dev_type(self, vdev: VdpaDevice) -> int:
        return self.dev_type

    def get_config(self, vid: int, size: int) -> bytes:
        self._record("get_config", vid, size)
        return bytes(self.config[:size])

    def set_config(self, vid: int, data: bytes, offset: int, flags: int) -> int:
        self._record("set_config", vid, bytes(data), offset, flags)
        self.config[offset:offset + len(data)] = data
        return 0

    def get_vfio_device_fd(self, vid: int) -> int:
        return -1 if self.notify_fd is None else self.notify_fd

    def get_notify_area(self, vid: int, qid: int) -> tuple[int, int]:
        return (qid * 4096, 4096)

    def get_stats_names(self, vdev: VdpaDevice) -> list[str]:
        return ["calls"]

    def get_stats(self, vdev: VdpaDevice, qid: int) -> list[tuple[int, int]]:
        return [(0, len(self.calls))]

    def reset_stats(self, vdev: VdpaDevice, qid: int) -> int:
        self.calls.clear()
        return 0
