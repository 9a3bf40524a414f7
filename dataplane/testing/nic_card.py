"""A running emulated card (``python -m dataplane.nic start ifcvf|mlx5`` in the foreground), for tests."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

from dataplane.testing.app_process import end_process

__all__ = ["CardProc", "PF", "MLX5_PF", "ROOT", "card_in_runtime", "wait_for"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PF = "0000:00:05.0"
MLX5_PF = "0000:00:06.0"


def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond()`` every 2 ms until it is true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


class CardProc:
    """``dataplane-nic start MODEL --pf PF --vfs N`` with ``DATAPLANE_RUNTIME_DIR=runtime``; waits for ``ready``
    (``pf`` defaults to :data:`PF` for ifcvf, :data:`MLX5_PF` for mlx5)."""

    def __init__(self, runtime: str, vfs: int = 2, pf: str | None = None, extra=(), model: str = "ifcvf"):
        self.runtime = runtime
        pf = pf or (MLX5_PF if model == "mlx5" else PF)
        self.pf = pf
        self.model = model
        env = dict(os.environ, DATAPLANE_RUNTIME_DIR=runtime, PYTHONPATH=ROOT)
        self.env = env
        self.proc = subprocess.Popen([sys.executable, "-m", "dataplane.nic", "start", model, "--pf", pf,
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

    def counters(self):
        """The card's counters file (:class:`dataplane.nic.shm.CardShm`; close it when done)."""
        from dataplane.nic.shm import CardShm

        return CardShm(os.path.join(self.dir, "counters"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        end_process(self.proc, 20)


@contextlib.contextmanager
def card_in_runtime(vfs: int = 2, prefix: str = "nicrt", **kwargs):
    """A card in a fresh runtime directory under /tmp (short socket paths) that this process's
    ``DATAPLANE_RUNTIME_DIR`` points at while it runs, so the drivers and apps started meanwhile
    find it; the variable, the card and the directory are put back or removed on exit."""
    rt = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    old = os.environ.get("DATAPLANE_RUNTIME_DIR")
    os.environ["DATAPLANE_RUNTIME_DIR"] = rt  # the card's files, and the apps' runtime directory
    card = None
    try:
        card = CardProc(rt, vfs=vfs, **kwargs)
        yield card
    finally:
        if card is not None:
            card.stop()
        if old is None:
            os.environ.pop("DATAPLANE_RUNTIME_DIR", None)
        else:
            os.environ["DATAPLANE_RUNTIME_DIR"] = old
        shutil.rmtree(rt, ignore_errors=True)
