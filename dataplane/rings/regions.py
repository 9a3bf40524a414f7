"""Guest-physical → host address translation, as an input to the ring kernels.

A *region table* is a small ``uint64[R, 3]`` array, one row per mapped region:
``(guest_phys_start, length, host_virt_start)``.  It is built by the control
plane (from a vhost-user mem table, from our own memory segments, or from test
memory) and handed to every kernel that touches buffers; nothing is global.

Translation is strict: an address range must lie wholly inside one region,
otherwise :func:`translate` returns 0 and the caller treats the chain as an
error.  That check is what keeps a hostile descriptor from making us read or
write outside a mapping.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

REGION_GPA = 0
REGION_LEN = 1
REGION_HVA = 2


def make_regions(rows) -> np.ndarray:
    """A region table from ``[(gpa, length, hva), ...]``."""
    t = np.zeros((max(len(rows), 0), 3), dtype=np.uint64)
    for i, (gpa, length, hva) in enumerate(rows):
        t[i] = (gpa, length, hva)
    return t


def array_region(gpa: int, buf: np.ndarray) -> tuple[int, int, int]:
    """A region row for a numpy array (test memory, a memzone view)."""
    return (gpa, buf.nbytes, buf.ctypes.data)


@njit(cache=True, inline="always")
def translate(regions, gpa, length):
    """Host virtual address of ``[gpa, gpa + length)``, or 0 if not wholly mapped."""
    gpa = np.uint64(gpa)
    length = np.uint64(length)
    for r in range(regions.shape[0]):
        start = regions[r, REGION_GPA]
        size = regions[r, REGION_LEN]
        if gpa >= start and gpa - start < size:
            # length may be up to 4 GiB; compare without overflow.
            if length > size - (gpa - start):
                return np.uint64(0)
            return regions[r, REGION_HVA] + (gpa - start)
    return np.uint64(0)


@njit(cache=True, inline="always")
def translate_max(regions, gpa):
    """(host address, bytes contiguous from there) for ``gpa``; (0, 0) if unmapped."""
    gpa = np.uint64(gpa)
    for r in range(regions.shape[0]):
        start = regions[r, REGION_GPA]
        size = regions[r, REGION_LEN]
        if gpa >= start and gpa - start < size:
            return regions[r, REGION_HVA] + (gpa - start), size - (gpa - start)
    return np.uint64(0), np.uint64(0)


@intrinsic
def _as_voidptr(typingctx, addr):
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return types.voidptr(addr), codegen


@njit(cache=True, inline="always")
def host_u8(hva, length):
    """A uint8 array over host memory at ``hva`` (an address from :func:`translate`)."""
    return carray(_as_voidptr(hva), (length,), dtype=np.uint8)


@njit(cache=True, inline="always")
def host_u16(hva, count):
    return carray(_as_voidptr(hva), (count,), dtype=np.uint16)


@njit(cache=True, inline="always")
def host_u32(hva, count):
    return carray(_as_voidptr(hva), (count,), dtype=np.uint32)


@njit(cache=True, inline="always")
def host_u64(hva, count):
    return carray(_as_voidptr(hva), (count,), dtype=np.uint64)
