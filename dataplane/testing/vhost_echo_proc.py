"""Run ``dataplane.apps.vhost_echo`` as a child process (tests and benchmarks): start, read stats, stop, kill."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["EchoProcess"]

_SEQ = itertools.count()


class EchoProcess:
    """``python3 -m dataplane.apps.vhost_echo`` with ``vdevs``; ``stats()`` reads its live JSON."""

    def __init__(self, vdevs: list[str], *, mode: str = "io", check: str = "none", lcores: str = "0-1",
                 memory_mb: int = 256, extra: list[str] = (), timeout: float = 240.0):
        self.dir = tempfile.mkdtemp(prefix="vhecho")
        self.stats_file = os.path.join(self.dir, "stats.json")
        self.log_file = os.path.join(self.dir, "out.log")
        self.prefix = f"ve{os.getpid()}_{next(_SEQ)}"
        cmd = [sys.executable, "-m", "dataplane.apps.vhost_echo", "-l", lcores, "--no-huge", "-m", str(memory_mb),
               "--file-prefix", self.prefix]
        for v in vdevs:
            cmd += ["--vdev", v]
        cmd += ["--", "--mode", mode, "--check", check, "--stats-file", self.stats_file, *extra]
        self._log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while "port(s) up" not in self.output:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vhost_echo exited ({self.proc.returncode}):\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"vhost_echo not up within {timeout} s:\n{self.output[-4000:]}")
            time.sleep(0.05)

    @property
    def output(self) -> str:
        with open(self.log_file, "rb") as f:
            return f.read().decode(errors="replace")

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

    def stop(self, timeout: float = 20.0) -> dict:
        """SIGINT, wait, and return the final JSON line it prints."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self._close()
        for line in reversed(self.output.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"vhost_echo printed no final stats (exit {self.proc.returncode}):\n{self.output[-4000:]}")

    def kill(self) -> None:
        """SIGKILL (a crashed back-end); its workers die with it (PDEATHSIG)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()
        shutil.rmtree(f"/var/run/dataplane/{self.prefix}", ignore_errors=True)

    def _close(self) -> None:
        if not self._log.closed:
            self._log.close()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
