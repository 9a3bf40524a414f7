"""Error recovery of virtqs (facts §3.10): which OBJECT_CHANGE error events to act on, recover or give up.

The error channel delivers events whose cookie is ``version << 32 | queue index`` (the
version the virtq had when it subscribed).  :class:`RecoveryPolicy` decides, per event:

* **ignore**: an index beyond the virtqs ("Invalid device %s error event virtq %d."), a
  stale version, a disabled queue, or any event in the first 3 s after boot (DPDK compares
  the TSC in whole seconds: ``now < 3``);
* otherwise the queue is stopped, queried and disabled, and then:
  **recover** (re-enable, "Recover virtq %d: %u." with the retry count) when the oldest of the
  last 3 error times is more than 3 s ago -- whole seconds again: ``int(now - oldest) > 3``
  --, else **give up** ("Device %s virtq %d failed to recover.").  The queue's error times
  start at 0 (boot), so the first errors recover.  Every acted-on event then shifts its time
  into the queue's last-3 log.

Times come from the injected clock, in seconds since boot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from dataplane import log as dplog

__all__ = ["ERROR_TIME_SEC", "ERROR_HISTORY", "IGNORE", "RECOVER", "GIVE_UP", "VirtqErrorState", "RecoveryPolicy",
           "split_cookie", "make_cookie"]

log = dplog.get_logger("dataplane.vdpa.mlx5")

#: MLX5_VDPA_ERROR_TIME_SEC
ERROR_TIME_SEC = 3
#: errors remembered per virtq (``err_time[3]``)
ERROR_HISTORY = 3

IGNORE, RECOVER, GIVE_UP = "ignore", "recover", "give_up"


def make_cookie(version: int, index: int) -> int:
    return (version & 0xFFFFFFFF) << 32 | (index & 0xFFFFFFFF)


def split_cookie(cookie: int) -> tuple[int, int]:
    """``(version, index)`` of an error event's cookie."""
    return cookie >> 32 & 0xFFFFFFFF, cookie & 0xFFFFFFFF


@dataclass
class VirtqErrorState:
    version: int = 0
    enabled: bool = False
    stopped: bool = False
    n_retry: int = 0
    err_time: list = field(default_factory=lambda: [0.0] * ERROR_HISTORY)


class RecoveryPolicy:
    """The error handler's decisions for one device's virtqs."""

    def __init__(self, device: str, nr_virtqs: int, clock: Callable[[], float] = time.monotonic):
        self.device = device
        self.clock = clock
        self.virtqs = [VirtqErrorState() for _ in range(nr_virtqs)]

    def subscribe(self, index: int) -> int:
        """The virtq was set up and enabled: a new version; returns the cookie its error events will carry."""
        vq = self.virtqs[index]
        vq.version = (vq.version + 1) & 0xFFFFFFFF
        vq.enabled = True
        vq.stopped = False
        return make_cookie(vq.version, index)

    def disable(self, index: int) -> None:
        """The virtq was disabled (set_vring_state 0, dev_close)."""
        self.virtqs[index].enabled = False

    def on_error(self, cookie: int) -> str:
        """Decide for one error event: IGNORE, RECOVER or GIVE_UP (the caller disables, and re-enables on RECOVER)."""
        version, index = split_cookie(cookie)
        if index >= len(self.virtqs):
            log.error(f"Invalid device {self.device} error event virtq {index}.")
            return IGNORE
        vq = self.virtqs[index]
        if not vq.enabled or vq.version != version:
            return IGNORE
        now = self.clock()
        if int(now) < ERROR_TIME_SEC:
            return IGNORE
        vq.stopped = True
        if int(now - vq.err_time[0]) > ERROR_TIME_SEC:
            vq.n_retry += 1
            log.warning(f"Recover virtq {index}: {vq.n_retry}.")
            decision = RECOVER
        else:
            log.error(f"Device {self.device} virtq {index} failed to recover.")
            vq.enabled = False
            decision = GIVE_UP
        vq.err_time = vq.err_time[1:] + [now]
        return decision
