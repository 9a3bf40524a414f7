"""A running emulated IFC card per test (dataplane.testing.nic_card.CardProc)."""

import os
import shutil
import tempfile

import pytest

from dataplane.testing.nic_card import CardProc


@pytest.fixture
def runtime():
    """A short runtime parent (unix socket paths are limited to 108 bytes; pytest's tmp_path is long)."""
    d = tempfile.mkdtemp(prefix="nic", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def card(request, runtime):
    """The card: the IFC one, or the model a test module names in ``CARD_MODEL``."""
    c = CardProc(runtime, model=getattr(request.module, "CARD_MODEL", "ifcvf"))
    try:
        yield c
    finally:
        c.stop()
    assert not os.path.exists(c.dir), "the card left its directory"


@pytest.fixture
def on_vf(card):
    """``make(cls, i, **kw)``: ``cls(card.vf_dir(i), **kw)`` (a test's driver-side object of VF ``i``);
    each one made is closed when the test ends."""
    made = []

    def make(cls, i, **kw):
        o = cls(card.vf_dir(i), **kw)
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


class Mlx5Fw:
    """The mlx5 card's firmware in-process: a BAR file with the command slot, a DMA map, and the
    test driver (its own mapping of the BAR) that calls the card's poll after each doorbell."""

    def __init__(self, d: str):
        from dataplane.nic.dma import DmaMap
        from dataplane.nic.mlx5.mailbox import BAR_SIZE, CommandSlot
        from dataplane.nic.mlx5.objects import Hca
        from dataplane.nic.pci import BarFile
        from dataplane.testing.mlx5_cmd import Mlx5Cmd

        self.path = os.path.join(d, "resource0")
        self.card_bar = BarFile(self.path, BAR_SIZE, create=True)
        self.dma = DmaMap()
        self.hca = Hca(self.dma)
        self.slot = CommandSlot(self.card_bar, self.hca)
        self.fw = Mlx5Cmd(self.path, poll=self.slot.poll)
        self.fds: list[int] = []

    def map_memory(self, iova: int, size: int) -> int:
        """DMA-map a fresh (sparse) memory file of ``size`` bytes at ``iova``; returns an fd of it for the test."""
        fd = os.memfd_create("mlx5test")
        os.ftruncate(fd, size)
        self.dma.map(iova, size, os.dup(fd), 0)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        self.fw.close()
        self.dma.clear()
        self.card_bar.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def mlx5(runtime):
    f = Mlx5Fw(runtime)
    try:
        yield f
    finally:
        f.close()
