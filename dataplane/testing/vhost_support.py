"""Helpers shared by the vhost tests: callback recorder, recording data path, polling."""

from __future__ import annotations

import threading
import time

from dataplane.vhost.net import NetDataPathHooks


class Recorder:
    """Application callbacks that record ``(name, *args)`` in order; ``wait`` blocks until one shows up."""

    NAMES = ("new_device", "destroy_device", "vring_state_changed", "features_changed", "new_connection", "destroy_connection")

    def __init__(self):
        self.events: list[tuple] = []
        self._cond = threading.Condition()
        for name in self.NAMES:
            setattr(self, name, self._make(name))

    def _make(self, name):
        def cb(*args):
            with self._cond:
                self.events.append((name, *args))
                self._cond.notify_all()
            return 0

        return cb

    def wait(self, event: tuple, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while event not in self.events:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{event} did not happen; events: {self.events}")
                self._cond.wait(left)

    def wait_count(self, event: tuple, count: int, timeout: float = 5.0) -> None:
        """Block until ``event`` has happened ``count`` times."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.events.count(event) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{event} did not happen {count} times; events: {self.events}")
                self._cond.wait(left)

    def names(self, vid: int | None = None) -> list[str]:
        return [e[0] for e in self.events if vid is None or e[1] == vid]

    def clear(self) -> None:
        with self._cond:
            self.events.clear()


class RecordingDataPath(NetDataPathHooks):
    """Data-path hooks that record calls and, on stop, write back indices from ``progress``."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.progress: dict[int, dict] = {}  # qid -> Vring attributes the "lcore" writes back on stop
        self.started: set[tuple[int, int]] = set()
        self.snapshots: dict[int, dict] = {}

    def on_queue_start(self, dev, qid):
        vq = dev.vrings[qid]
        self.calls.append(("start", dev.vid, qid))
        self.started.add((dev.vid, qid))
        self.snapshots[qid] = dict(desc_hva=vq.desc_hva, avail_hva=vq.avail_hva, used_hva=vq.used_hva,
                                   kick_fd=vq.kick_fd, call_fd=vq.call_fd, regions=dev.region_table.copy(),
                                   log=dev.dirty_log, log_all=dev.log_all)

    def on_queue_stop(self, dev, qid):
        self.calls.append(("stop", dev.vid, qid))
        self.started.discard((dev.vid, qid))
        for name, value in self.progress.pop(qid, {}).items():
            setattr(dev.vrings[qid], name, value)

    def on_send_rarp(self, dev):
        self.calls.append(("rarp", dev.vid, dev.device_state.mac))

    def on_guest_notification(self, dev, qid, enable):
        self.calls.append(("notify", dev.vid, qid, enable))

    def on_log_all(self, dev, enable):
        self.calls.append(("log_all", dev.vid, enable))


def wait_until(pred, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
