"""Run ``dataplane.apps.vhost_echo`` as a child process (tests and benchmarks): start, read stats, stop, kill."""

from __future__ import annotations

import json
import os
import tempfile
import time

from dataplane.testing.app_process import AppProcess

__all__ = ["EchoProcess"]


class EchoProcess(AppProcess):
    """``python3 -m dataplane.apps.vhost_echo`` with ``vdevs``; ``stats()`` reads its live JSON."""

    name = "vhost_echo"

    def __init__(self, vdevs: list[str], *, mode: str = "io", check: str = "none", lcores: str = "0-1",
                 memory_mb: int = 256, extra: list[str] = (), timeout: float = 240.0):
        workdir = tempfile.mkdtemp(prefix="vhecho")
        self.stats_file = os.path.join(workdir, "stats.json")
        super().__init__("dataplane.apps.vhost_echo",
                         ["--mode", mode, "--check", check, "--stats-file", self.stats_file, *extra],
                         ready="port(s) up", lcores=lcores, memory_mb=memory_mb,
                         eal_extra=[a for v in vdevs for a in ("--vdev", v)], timeout=timeout, prefix="ve",
                         workdir=workdir)

    def stats(self) -> dict:
        """The latest snapshot: {"ports": {name: {link, stats, xstats}}, "checked", "bad", "bad_chain"}."""
        for _ in range(50):
            try:
                with open(self.stats_file) as f:
                    return json.load(f)
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.05)
        raise RuntimeError(f"no stats from vhost_echo:\n{self.output[-4000:]}")

    def wait_stats(self, pred, timeout: float = 20.0) -> dict:
        """Poll :meth:`stats` until ``pred(stats)`` holds; returns the snapshot (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"vhost_echo stats never matched: {s}")
            time.sleep(0.1)
