"""The IOMMU of an emulated PCI function: the DMA map a driver builds over the control channel.

Generic to every emulated card (the IFC card's VFs, the mlx5 card's functions): the driver
gives memory fds and the IOVAs to map them at; the card maps each fd itself and keeps a
region table (:mod:`dataplane.rings.regions` form: IOVA, length, the card's address) that the
numba kernels read.  An access outside the map is refused (the caller counts a fault).
"""

from __future__ import annotations

import os
import stat

import numpy as np

from dataplane.rings.regions import REGION_GPA, REGION_HVA, REGION_LEN
from dataplane.vhost.guest_memory import map_shared, unmap

__all__ = ["DmaMap", "RequestError", "close_fds", "MAX_DMA_MAPS", "PAGE"]

MAX_DMA_MAPS = 64
PAGE = 4096


def close_fds(fds) -> None:
    """Close every fd of ``fds`` that is an fd (None and negative values are skipped), ignoring errors."""
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class RequestError(Exception):
    """A control-channel request refused (answered with the message, never fatal)."""


# =============================================================================
# the IOMMU: a VF's DMA map
# =============================================================================


class DmaMap:
    """IOVA -> the card's own mapping of the fds the driver gave (a region table the kernels read)."""

    def __init__(self):
        self.table = np.zeros((MAX_DMA_MAPS, 3), np.uint64)  # (iova, len, hva); len 0 = unused
        self.maps: dict[int, tuple[int, int, int, int]] = {}  # iova -> (size, hva, fd, row)

    def __len__(self) -> int:
        return len(self.maps)

    def map(self, iova: int, size: int, fd: int, offset: int) -> None:
        """Map ``size`` bytes of ``fd`` at ``offset`` at ``iova``; takes ``fd`` (closed on refusal too)."""
        try:
            if size <= 0:
                raise RequestError("dma_map: size must be > 0")
            if iova < 0 or offset < 0 or iova % PAGE or size % PAGE or offset % PAGE:
                raise RequestError("dma_map: iova, size and offset must be 4 KiB aligned")
            if iova + size > 1 << 64:
                raise RequestError("dma_map: iova + size wraps")
            for o_iova, (o_size, _h, _f, _r) in self.maps.items():
                if iova < o_iova + o_size and o_iova < iova + size:
                    raise RequestError(f"dma_map: [{iova:#x}, +{size:#x}) overlaps the map at {o_iova:#x}")
            free = [r for r in range(MAX_DMA_MAPS) if self.table[r, REGION_LEN] == 0]
            if not free:
                raise RequestError(f"dma_map: no more than {MAX_DMA_MAPS} mappings")
            try:
                st = os.fstat(fd)
            except OSError as e:
                raise RequestError(f"dma_map: bad fd: {e}") from None
            if not stat.S_ISREG(st.st_mode):
                raise RequestError("dma_map: the fd is not a memory file")
            if offset + size > (st.st_size + PAGE - 1) & ~(PAGE - 1):  # the file's last page may be partial
                raise RequestError(f"dma_map: offset {offset:#x} + size {size:#x} is past the file's end "
                                   f"({st.st_size:#x})")
            try:
                hva = map_shared(fd, size, offset)
            except OSError as e:
                raise RequestError(f"dma_map: mmap failed: {e}") from None
        except BaseException:
            close_fds([fd])
            raise
        row = free[0]
        self.table[row, REGION_GPA] = iova
        self.table[row, REGION_HVA] = hva
        self.table[row, REGION_LEN] = size  # last: the row is live once its length is set
        self.maps[iova] = (size, hva, fd, row)

    def covered(self, iova: int, size: int) -> list[int]:
        """The IOVAs of the mappings ``[iova, iova+size)`` covers wholly; RequestError if it cuts one."""
        if size <= 0:
            raise RequestError("dma_unmap: size must be > 0")
        out = []
        for o_iova, (o_size, _h, _f, _r) in self.maps.items():
            if iova < o_iova + o_size and o_iova < iova + size:
                if o_iova < iova or o_iova + o_size > iova + size:
                    raise RequestError(f"dma_unmap: [{iova:#x}, +{size:#x}) cuts the map at {o_iova:#x}")
                out.append(o_iova)
        if not out:
            raise RequestError(f"dma_unmap: nothing is mapped in [{iova:#x}, +{size:#x})")
        return out

    def hit_test(self, iovas: list[int]):
        """A test ``hit(addr, length)``: does ``[addr, addr+length)`` touch one of the mappings at ``iovas``?"""
        spans = [(i, self.maps[i][0]) for i in iovas]

        def hit(a: int, ln: int) -> bool:
            return any(a < i + s and i < a + ln for i, s in spans)

        return hit

    def unmap(self, iova: int) -> None:
        self.release(self.detach(iova))

    def detach(self, iova: int) -> tuple[int, int, int]:
        """Take the mapping at ``iova`` out of the map (no translation reaches it any more) but keep its
        memory mapped until :meth:`release`: what a card does while it rebuilds tables that point there."""
        size, hva, fd, row = self.maps.pop(iova)
        self.table[row, REGION_LEN] = 0
        self.table[row, REGION_GPA] = 0
        self.table[row, REGION_HVA] = 0
        return size, hva, fd

    @staticmethod
    def release(detached: tuple[int, int, int]) -> None:
        size, hva, fd = detached
        unmap(hva, size)
        close_fds([fd])

    def find(self, iova: int, length: int) -> tuple[int, int] | None:
        """(the IOVA of the mapping that holds ``[iova, iova+length)`` wholly, offset in it), or None."""
        if length <= 0:
            return None
        for o_iova, (o_size, _h, _f, _r) in self.maps.items():
            if o_iova <= iova and iova + length <= o_iova + o_size:
                return o_iova, iova - o_iova
        return None

    def mapping_at(self, iova: int) -> tuple[int, int, int] | None:
        """(IOVA, size, the card's address) of the mapping holding byte ``iova``, or None."""
        for o_iova, (o_size, hva, _f, _r) in self.maps.items():
            if o_iova <= iova < o_iova + o_size:
                return o_iova, o_size, hva
        return None

    def translate(self, iova: int, length: int) -> int:
        for o_iova, (o_size, hva, _f, _r) in self.maps.items():
            if o_iova <= iova and iova + length <= o_iova + o_size:
                return hva + (iova - o_iova)
        return 0

    def clear(self) -> None:
        for iova in list(self.maps):
            self.unmap(iova)
