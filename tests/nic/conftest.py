"""A running emulated IFC card per test (``python -m dataplane.nic start ifcvf`` in the foreground)."""

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PF = "0000:00:05.0"


class CardProc:
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


@pytest.fixture
def runtime():
    """A short runtime parent (unix socket paths are limited to 108 bytes; pytest's tmp_path is long)."""
    d = tempfile.mkdtemp(prefix="nic", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def card(runtime):
    c = CardProc(runtime)
    try:
        yield c
    finally:
        c.stop()
    assert not os.path.exists(c.dir), "the card left its directory"
