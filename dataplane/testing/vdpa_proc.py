"""Run ``dataplane-vdpa`` (``python3 -m dataplane.apps.vdpa``) as a child process, and its management tool."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from dataplane.testing.app_process import AppProcess

__all__ = ["VdpaProcess"]

#: A structlog line (the app's stderr goes to the same file as its stdout).
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class VdpaProcess(AppProcess):
    """The vDPA app with ``vdevs`` (``["vdpasim_net0,mac=...", ...]``) and sockets ``<dir>/vdpa<n>``.

    Up when the constructor returns (its devices probed, its sockets and management service
    up); :meth:`tool` runs ``dataplane vdpa --file-prefix <its prefix> ARGS``; :meth:`shell`
    sends a line to its ``-i`` shell and returns what it printed for it; :meth:`stop`
    returns its final figures ``{"devices": {name: {"qidx": [[name, value], ...]}}}``.
    """

    name = "dataplane-vdpa"
    PROMPT = "vdpa> "

    def __init__(self, vdevs: list[str] = (), *, iface: bool = True, client: bool = False, timeout: float = 240.0,
                 extra: list[str] = (), allow: list[str] = ()):
        """``allow``: ``-a`` devargs (PCI functions, e.g. ``"0000:00:05.1,vdpa=1"`` for the ifcvf driver)."""
        eal = [a for v in vdevs for a in ("--vdev", v)] + [a for d in allow for a in ("-a", d)]
        args = ["-i"]
        import tempfile

        workdir = tempfile.mkdtemp(prefix="vdpa")
        if iface:
            args += ["--iface", os.path.join(workdir, "vdpa")]
        if client:
            args.append("--client")
        super().__init__("dataplane.apps.vdpa", [*args, *extra], ready="vdpa: ready", lcores="0", memory_mb=64,
                         eal_extra=eal, timeout=timeout, prefix="vdpa", workdir=workdir, stdin=True)

    def socket(self, n: int) -> str:
        """The path of socket ``n`` (``--iface``)."""
        return os.path.join(self.dir, f"vdpa{n}")

    def shell(self, line: str, timeout: float = 60.0) -> str:
        """One line in its shell; what it printed for it (up to the next prompt), without the log lines
        (stderr shares the output file)."""
        start = len(self.output)
        self.command(line)
        out = self.wait_output(self.PROMPT, timeout, start)[start:]
        out = out[: out.index(self.PROMPT)]
        return "".join(ln for ln in out.splitlines(keepends=True) if not _LOG_LINE.match(ln))

    def follow_guest_mac(self, qmp_socket: str, nics: dict[str, str], timeout: float = 60.0) -> subprocess.Popen:
        """Start ``dataplane vdpa follow-guest-mac`` (QEMU NIC id -> device) on a guest's QMP socket;
        returns once it has synced every NIC (its ``following`` line).  The caller ends it."""
        import select
        import time

        cmd = [sys.executable, "-m", "dataplane.cli", "vdpa", "--file-prefix", self.prefix, "follow-guest-mac",
               "--qmp", qmp_socket, *(f"{n}={d}" for n, d in nics.items())]
        deadline = time.monotonic() + timeout
        while not os.path.exists(qmp_socket):  # QEMU creates it as it starts
            if time.monotonic() > deadline:
                raise RuntimeError(f"no QMP socket {qmp_socket}")
            time.sleep(0.05)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        while time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
                lines.append(line)
                if line.startswith("following ") or not line:
                    break
        if not lines or not lines[-1].startswith("following "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"follow-guest-mac did not start: {''.join(lines)}")
        return proc

    def tool(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """``dataplane vdpa --file-prefix P ARGS`` against this process (text output)."""
        cmd = [sys.executable, "-m", "dataplane.cli", "vdpa", "--file-prefix", self.prefix, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stdout}{r.stderr}")
        return r
