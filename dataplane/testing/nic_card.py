"""A running emulated IFC card (``python -m dataplane.nic start ifcvf`` in the foreground), for tests."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

__all__ = ["CardProc", "PF", "ROOT"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PF = "0000:00:05.0"


class CardProc:
    """``dataplane-nic start ifcvf --pf PF --vfs N`` with ``DATAPLANE_RUNTIME_DIR=runtime``; waits for ``ready``."""

    def __init__(self, runtime: str, vfs: int = 2, pf: str = PF, extra=()):
        self.runtime = runtime
        self.pf = pf
        env = dict(os.environ, DATAPLANE_RUNTIME_DIR=runtime, PYTHONPATH=ROOT)
        self.env = env
        self.proc = subprocess.Popen([sys.executable, "-m", "dataplane.nic", "start", "ifcvf", "--pf", pf,
                                      "--vfs", str(vfs), *extra], stdout=subprocess.PIPE, env=env, text=True)
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if r:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"the card did not start: {line!r}")
        self.dir = line.split(None, 1)[1].strip()

    def vf_dir(self, i: int) -> str:
        from dataplane.nic.pci import vf_bdf

        return os.path.join(self.dir, vf_bdf(self.pf, i))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
