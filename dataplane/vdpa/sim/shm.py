"""The shared-memory block of one simulator device: what the main process reads while the hardware runs.

One memfd (``vdpasim-<name>``, created by the main process, mapped by both)::

    int64 hdr[8]        @0    HDR_MAGIC, the hardware's pid
    uint8 mac[6]        @64   the net device's MAC: the cvq's MAC_ADDR_SET writes it,
                              :meth:`~dataplane.vdpa.sim.hw.SimHardware.set_mac` too
    int64 rows[64][16]  @128  one row per queue index:
                              [0:8]  counters (net: the vendor stats in order; blk: BLK_C_*)
                              [ROW_ERR]        0, or the code that stopped the queue (ERR_*)
                              [ROW_ERR_COUNT]  faults seen on the queue
                              [ROW_IRQS]       call eventfd writes
                              [ROW_KICKS]      kicks taken

The hardware writes the rows with plain 8-byte stores (whole words, so a
reader never sees a torn counter); the main process only reads them.
Unmapping is immediate (libc munmap): views handed out die with :meth:`SimShm.close`.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from dataplane.vhost.guest_memory import map_shared, unmap

__all__ = ["SimShm", "MAX_QUEUES", "ROW_WORDS", "ROW_ERR", "ROW_ERR_COUNT", "ROW_IRQS", "ROW_KICKS", "SHM_SIZE",
           "HDR_MAGIC", "HDR_PID", "MAGIC"]

MAX_QUEUES = 64
ROW_WORDS = 16
ROW_ERR = 8
ROW_ERR_COUNT = 9
ROW_IRQS = 10
ROW_KICKS = 11
HDR_MAGIC = 0
HDR_PID = 1
MAGIC = 0x5644504153494D31  # "VDPASIM1"
_MAC_OFF = 64
_ROWS_OFF = 128
SHM_SIZE = (_ROWS_OFF + MAX_QUEUES * ROW_WORDS * 8 + 4095) & ~4095


def _view(addr: int, nbytes: int, dtype) -> np.ndarray:
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(addr), np.uint8).view(dtype)


class SimShm:
    """The block mapped from ``fd`` (taken over: closed by :meth:`close`); :meth:`create` makes a new one."""

    def __init__(self, fd: int):
        self.fd = fd
        self.addr = map_shared(fd, SHM_SIZE, 0)
        self.hdr = _view(self.addr, 64, np.int64)
        self.mac = _view(self.addr + _MAC_OFF, 6, np.uint8)
        self.rows = _view(self.addr + _ROWS_OFF, MAX_QUEUES * ROW_WORDS * 8, np.int64).reshape(MAX_QUEUES, ROW_WORDS)

    @classmethod
    def create(cls, name: str) -> "SimShm":
        fd = os.memfd_create(f"vdpasim-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SHM_SIZE)
            shm = cls(fd)
        except BaseException:
            os.close(fd)
            raise
        shm.hdr[HDR_MAGIC] = MAGIC
        return shm

    @property
    def closed(self) -> bool:
        return self.addr == 0

    def close(self) -> None:
        """Unmap and close the fd (idempotent); the views are dead afterwards."""
        self.hdr = self.mac = self.rows = None  # type: ignore[assignment]
        if self.addr:
            unmap(self.addr, SHM_SIZE)
            self.addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
