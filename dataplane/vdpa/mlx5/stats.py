"""The mlx5 vDPA virtq counters (facts §3.9): DPDK's six names and the snapshot/reset semantics.

:data:`STATS_NAMES` are DPDK's exact strings, spaces included.  Behind them the card's
VIRTIO_Q_COUNTERS object reports ``received_desc``, ``completed_desc`` (u64) and
``bad_desc_errors``, ``exceed_max_chain``, ``invalid_buffer``, ``error_cqes`` (u32):
:data:`COUNTER_FIELDS`, in the same order.

:class:`Mlx5VdpaStats` is fed those raw values: a stat is the current value minus the snapshot
taken at the last reset, wrapping like the C field (64 or 32 bits).  Errors, as VdpaError
with DPDK's errno: ENODEV (no such device: the caller's), E2BIG (qid >= the queues the caps
allow), ENOTSUP (no counters capability, "Virtq statistics is not supported for device
%s."), EINVAL (the virtq has no counters object, "virtq is invalid").  reset on a virtq
without counters does nothing and succeeds.  Counters objects and snapshots persist across
reconfigurations until the device goes away.
"""

from __future__ import annotations

import errno

from dataplane import log as dplog
from dataplane.vdpa.device import VdpaError

__all__ = ["STATS_NAMES", "COUNTER_FIELDS", "COUNTER_BITS", "Mlx5VdpaStats"]

log = dplog.get_logger("dataplane.vdpa.mlx5")

STATS_NAMES = ("received_descriptors", "completed_descriptors", "bad descriptor errors", "exceed max chain",
               "invalid buffer", "completion errors")
COUNTER_FIELDS = ("received_desc", "completed_desc", "bad_desc_errors", "exceed_max_chain", "invalid_buffer",
                  "error_cqes")
COUNTER_BITS = (64, 64, 32, 32, 32, 32)


class Mlx5VdpaStats:
    """The stats ops of one device: ``max_queues`` from the caps, ``counters_valid`` the counters capability."""

    def __init__(self, device: str, max_queues: int, counters_valid: bool):
        self.device = device
        self.max_queues = max_queues
        self.counters_valid = counters_valid
        self._has_counters: set[int] = set()
        self._reset: dict[int, tuple] = {}

    def names(self, size: int | None = None) -> list[str]:
        """``get_stats_names``: all six, or the first ``min(size, 6)``."""
        n = len(STATS_NAMES) if size is None else min(size, len(STATS_NAMES))
        return list(STATS_NAMES[:n])

    def counters_created(self, qid: int) -> None:
        """The virtq got its counters object (at its first setup; kept afterwards); the snapshot starts at 0."""
        self._has_counters.add(qid)
        self._reset.setdefault(qid, (0,) * len(COUNTER_FIELDS))

    def _check(self, qid: int) -> None:
        if qid >= self.max_queues:
            log.error(f"Too big vring id: {qid} for device {self.device}.")
            raise VdpaError(f"Too big vring id: {qid} for device {self.device}.", errno.E2BIG)
        if not self.counters_valid:
            log.error(f"Virtq statistics is not supported for device {self.device}.")
            raise VdpaError(f"Virtq statistics is not supported for device {self.device}.", errno.ENOTSUP)

    @staticmethod
    def _raw(raw) -> tuple:
        if isinstance(raw, dict):
            return tuple(int(raw[f]) for f in COUNTER_FIELDS)
        return tuple(int(v) for v in raw)

    def get(self, qid: int, raw, n: int = len(STATS_NAMES)) -> list[tuple[int, int]]:
        """``get_stats``: ``[(id, value)]`` for the first ``min(n, 6)`` counters, from the raw HW values."""
        self._check(qid)
        if qid not in self._has_counters:
            log.error(f"Failed to read virtq {qid} statistics - virtq is invalid.")
            raise VdpaError(f"Failed to read virtq {qid} statistics - virtq is invalid.", errno.EINVAL)
        cur, base = self._raw(raw), self._reset[qid]
        count = min(n, len(STATS_NAMES))
        return [(i, (cur[i] - base[i]) & ((1 << COUNTER_BITS[i]) - 1)) for i in range(count)]

    def reset(self, qid: int, raw) -> int:
        """``reset_stats``: snapshot the raw values; 0 (nothing done) for a virtq without counters."""
        self._check(qid)
        if qid not in self._has_counters:
            return 0
        self._reset[qid] = self._raw(raw)
        return 0
