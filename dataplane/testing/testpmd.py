"""Drive a real ``dpdk-testpmd`` from tests and benchmarks (interactive mode over a pipe).

::

    with Testpmd(["--vdev", "net_virtio_user0,path=/tmp/s.sock"], cpus="1") as tp:
        tp.wait_link(0)
        tp.cmd("set fwd rxonly")
        tp.cmd("start tx_first 4")
        fwd = tp.stop()                 # parsed forward statistics of the "stop" block
        stats = tp.port_stats(0)        # parsed "show port stats 0"

Each instance gets its own ``--file-prefix`` and removes ``/var/run/dpdk/<prefix>``
when closed; the process is ended by ``quit``, then SIGTERM, then SIGKILL
(only this pid).  Output is collected by a reader thread (``tp.output``).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

__all__ = ["TESTPMD", "Testpmd", "TestpmdError", "dataplane_shell", "swap_backend"]

TESTPMD = shutil.which("dpdk-testpmd")
PROMPT = "testpmd> "
# testpmd prints with stdio, fully buffered into a pipe: unbuffer it so each command's
# output arrives before the next prompt.
_STDBUF = ["stdbuf", "-o0"] if shutil.which("stdbuf") else []
_SEQ = itertools.count()


class TestpmdError(RuntimeError):
    pass


def dataplane_shell(eal: list[str], app: list[str] = (), *, lcores: str = "0-1", memory_mb: int = 256,
                    mbufs: int = 8192, wait: bool = True, timeout: float = 240.0) -> "Testpmd":
    """The same driver over ``dataplane -i`` (our testpmd-compatible shell) instead of dpdk-testpmd.

    ``lcores`` is passed as ``--lcores``; the first start may compile the
    numba kernels (hence the long ``timeout``).
    """
    return Testpmd(eal, app, cpus=lcores, memory_mb=memory_mb, mbufs=mbufs, wait=wait, timeout=timeout,
                   program=[sys.executable, "-m", "dataplane.cli"])


def swap_backend(kind: str, sock: str, *, cpus: str = "1", devargs: str = "", timeout: float = 900.0) -> "Testpmd":
    """A vhost-user net back-end for one guest that sends every frame back with its 5-tuple swapped
    (``--forward-mode=5tswap``), forwarding started: ``kind`` ``"testpmd"`` (dpdk-testpmd's
    ``net_vhost0,iface=sock,client=0``) or ``"dataplane"`` (ours, the same devargs).

    ``cpus``: where dpdk-testpmd runs, or our ``--lcores``; ``timeout`` covers a first
    start that compiles.
    """
    eal = ["--vdev", f"net_vhost0,iface={sock},client=0{devargs}"]
    app = ["--forward-mode=5tswap"]
    if kind == "testpmd":
        tp = Testpmd(eal, app, cpus=cpus, mbufs=8192)
    elif kind == "dataplane":
        tp = dataplane_shell(eal, app, lcores=cpus, timeout=timeout)
    else:
        raise ValueError(f"unknown back-end kind {kind!r} (testpmd, dataplane)")
    try:
        tp.cmd("start", timeout=timeout)
    except BaseException:
        tp.close()
        raise
    return tp


class Testpmd:
    """One interactive ``dpdk-testpmd`` process.

    ``eal`` are extra EAL arguments (e.g. ``--vdev ...``); ``app`` extra
    application arguments (after ``-- -i``).  ``cpus`` is where both its
    lcores run (``"1"``: ``--lcores 0@1,1@1``).  ``memory_mb`` and
    ``mbufs`` size its ``--no-huge`` memory and pool.
    """

    __test__ = False  # not a pytest class

    def __init__(self, eal: list[str], app: list[str] = (), *, cpus: str = "1", memory_mb: int = 512,
                 mbufs: int = 2048, prefix: str | None = None, timeout: float = 30.0, wait: bool = True,
                 program: list[str] | None = None):
        if program is None and TESTPMD is None:
            raise TestpmdError("dpdk-testpmd is not installed (Debian package dpdk)")
        self.prefix = prefix or f"tp{os.getpid()}_{next(_SEQ)}"
        self.runtime_dir = "/var/run/dpdk" if program is None else "/var/run/dataplane"
        self.cmdline = [
            *(program or [*_STDBUF, TESTPMD]), "--no-huge", "-m", str(memory_mb), "--no-pci",
            "--lcores", f"0@{cpus},1@{cpus}" if program is None else cpus,
            "--file-prefix", self.prefix, *eal, "--", "-i", f"--total-num-mbufs={mbufs}", *app,
        ]
        self.proc = subprocess.Popen(self.cmdline, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="testpmd-out", daemon=True)
        self._reader.start()
        self._mark = 0
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the first prompt (a virtio-user ``server=1`` port blocks testpmd's start
        until a back-end connects: construct with ``wait=False``, start the back-end, then call this)."""
        try:
            self._wait_prompt(timeout)
        except BaseException:
            self.close()
            raise

    # -- output ---------------------------------------------------------------
    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if chunk:
                    self._buf += chunk
                self._cond.notify_all()
            if not chunk:
                return

    @property
    def output(self) -> str:
        with self._cond:
            return self._buf.decode(errors="replace")

    def _wait_prompt(self, timeout: float) -> str:
        """Wait for the next prompt after ``self._mark``; returns the text before it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                i = self._buf.find(PROMPT.encode(), self._mark)
                if i >= 0:
                    text = self._buf[self._mark : i].decode(errors="replace")
                    self._mark = i + len(PROMPT)
                    return text
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise TestpmdError(f"testpmd exited ({self.proc.returncode}):\n{self.output[-4000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestpmdError(f"no testpmd prompt within {timeout} s:\n{self.output[-4000:]}")
                self._cond.wait(min(left, 0.2))

    def cmd(self, line: str, timeout: float = 30.0) -> str:
        """Send one command; returns its output (up to the next prompt)."""
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise TestpmdError(f"testpmd is gone ({e}):\n{self.output[-4000:]}") from None
        return self._wait_prompt(timeout)

    # -- parsed commands -------------------------------------------------------
    def port_stats(self, port: int = 0) -> dict[str, int]:
        """``show port stats N`` as {RX-packets, RX-missed, RX-bytes, RX-errors, RX-nombuf, TX-packets, TX-errors, TX-bytes}."""
        text = self.cmd(f"show port stats {port}")
        return {k: int(v) for k, v in re.findall(r"([RT]X-[a-z]+):\s+(\d+)", text)}

    def port_xstats(self, port: int = 0) -> dict[str, int]:
        """``show port xstats N`` as {name: value}."""
        out = {}
        for line in self.cmd(f"show port xstats {port}").splitlines():
            k, _, v = line.partition(":")
            if v.strip().isdigit():
                out[k.strip()] = int(v)
        return out

    def stop(self) -> dict[str, int]:
        """``stop``: the accumulated forward statistics (RX-packets, RX-dropped, TX-packets, TX-dropped, ...)."""
        text = self.cmd("stop")
        block = text.split("Accumulated forward statistics", 1)[-1]
        return {k: int(v) for k, v in re.findall(r"([RT]X-[a-z]+):\s+(\d+)", block)}

    def link_up(self, port: int = 0) -> bool:
        text = self.cmd(f"show port info {port}")
        m = re.search(r"Link status:\s+(\w+)", text)
        return bool(m and m.group(1) == "up")

    def mark(self) -> int:
        """Where the output is now, for :meth:`wait_text`."""
        with self._cond:
            return len(self._buf)

    def wait_text(self, text: str, since: int = 0, timeout: float = 20.0) -> None:
        """Wait until testpmd prints ``text`` after output offset ``since`` (no command sent: for events
        such as a link change, during which a command may block in DPDK)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._buf.find(text.encode(), since) < 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestpmdError(f"{text!r} not printed within {timeout} s:\n{self.output[-4000:]}")
                self._cond.wait(min(left, 0.5))

    def wait_link(self, port: int = 0, up: bool = True, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.link_up(port) != up:
            if time.monotonic() > deadline:
                raise TestpmdError(f"port {port} link not {'up' if up else 'down'} after {timeout} s")
            time.sleep(0.1)

    # -- lifecycle ---------------------------------------------------------------
    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the process abruptly (a crashed peer)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)
        self._cleanup()

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        self._cleanup()

    def _cleanup(self) -> None:
        self._reader.join(2)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass
        shutil.rmtree(f"{self.runtime_dir}/{self.prefix}", ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
