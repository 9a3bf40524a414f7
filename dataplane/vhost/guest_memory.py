"""Guest memory of one vhost-user device: mapping a mem table and translating addresses.

A front-end describes its memory as regions (``SET_MEM_TABLE`` or one by one
with ``ADD_MEM_REG``), each with an fd in the ancillary data:

* ``guest_phys_addr`` (GPA): where the region sits in guest-physical space;
  descriptor buffers are GPAs.
* ``userspace_addr`` (QVA): where the front-end process maps it; ring
  addresses in ``SET_VRING_ADDR`` are QVAs.
* ``mmap_offset``: where the region starts in the fd.

We map each region as DPDK does: ``mmap(NULL, align_up(memory_size +
mmap_offset, block_size), PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`` where
``block_size`` is the file system block size of the fd (fstatfs: the huge
page size on hugetlbfs, 4 KiB on tmpfs/memfd), so hugetlbfs fds get a length
they accept.  The region's host address is ``map base + mmap_offset``.  The
fd stays open (a data path in another process can be sent it and map the
region itself); :meth:`GuestMemory.unmap` munmaps and closes everything.

Validation (each failure is a :class:`GuestMemoryError` naming the region):
zero sizes, address ranges that wrap 2**64, overlapping GPA or QVA ranges,
too many regions, fds that cannot be memory (pipes, sockets, eventfds),
files smaller than ``mmap_offset + memory_size`` (touching such a mapping
would SIGBUS the whole process), and a failing ``mmap``.

Mappings use libc ``mmap``/``munmap`` directly (not Python's :mod:`mmap`)
so that unmapping is immediate and does not depend on views being
garbage-collected: after :meth:`GuestMemory.unmap` every address handed out
is invalid, which is why the device stops the data path first.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from dataplane.rings.regions import make_regions
from dataplane.vhost_user.payloads import VHOST_MEMORY_BASELINE_NREGIONS, MemoryRegion

__all__ = [
    "GuestMemoryError",
    "MappedRegion",
    "GuestMemory",
    "map_shared",
    "unmap",
    "fd_block_size",
    "read_u16",
]

_U64 = 1 << 64
_PAGE = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.memcpy.restype = ctypes.c_void_p
_libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_PROT_RW = 0x1 | 0x2
_MAP_SHARED = 0x01


class GuestMemoryError(Exception):
    """A mem table or region cannot be accepted or mapped (the message says which and why)."""


def map_shared(fd: int, length: int, offset: int = 0) -> int:
    """``mmap(NULL, length, RW, MAP_SHARED, fd, offset)``; returns the address, raises OSError."""
    addr = _libc.mmap(None, length, _PROT_RW, _MAP_SHARED, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(addr)


def unmap(addr: int, length: int) -> None:
    """``munmap(addr, length)``; raises OSError."""
    if _libc.munmap(addr, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def read_u16(addr: int) -> int:
    """The u16 at ``addr`` (a ring index in guest memory), read through libc with the GIL released:
    during postcopy the read may wait for its page to arrive, and the process's other threads
    must keep running meanwhile (:mod:`~dataplane.vhost.postcopy`)."""
    v = ctypes.c_uint16()
    _libc.memcpy(ctypes.byref(v), addr, 2)
    return v.value


def read_into(addr: int, out: np.ndarray) -> np.ndarray:
    """Copy ``out.nbytes`` bytes at ``addr`` into ``out`` (contiguous) with the GIL released, as
    :func:`read_u16` does; returns ``out``."""
    _libc.memcpy(out.ctypes.data, addr, out.nbytes)
    return out


def fd_block_size(fd: int) -> int:
    """The mapping granularity of the file behind ``fd`` (huge page size on hugetlbfs)."""
    try:
        size = os.fstatvfs(fd).f_bsize
    except OSError:
        size = os.fstat(fd).st_blksize
    if size < _PAGE or size & (size - 1):
        return _PAGE
    return size


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _fd_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a file (an anonymous inode such as an eventfd?)"


@dataclass
class MappedRegion:
    """One mapped region.  Addresses are plain ints.

    ``host_user_addr`` is where the region's first byte is in this process
    (``mmap_addr + mmap_offset``); ``fd`` stays open until :meth:`unmap`.
    """

    guest_phys_addr: int
    size: int
    userspace_addr: int
    mmap_offset: int
    fd: int
    mmap_addr: int
    mmap_size: int
    block_size: int

    @property
    def host_user_addr(self) -> int:
        return self.mmap_addr + self.mmap_offset

    def spec(self) -> MemoryRegion:
        return MemoryRegion(self.guest_phys_addr, self.size, self.userspace_addr, self.mmap_offset)

    def same_layout(self, r: MemoryRegion) -> bool:
        """DPDK's "unchanged" test: same GPA, size and user address (fd and offset not compared)."""
        return (r.guest_phys_addr, r.memory_size, r.userspace_addr) == (self.guest_phys_addr, self.size, self.userspace_addr)

    def unmap(self) -> None:
        """munmap and close the fd (idempotent)."""
        if self.mmap_addr:
            unmap(self.mmap_addr, self.mmap_size)
            self.mmap_addr = 0
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def __repr__(self) -> str:
        return (
            f"MappedRegion(gpa={self.guest_phys_addr:#x}, size={self.size:#x}, qva={self.userspace_addr:#x}, "
            f"off={self.mmap_offset:#x}, hva={self.host_user_addr:#x}, fd={self.fd})"
        )


def _check_region(i: int, r: MemoryRegion) -> None:
    if r.memory_size == 0:
        raise GuestMemoryError(f"region {i}: memory_size is 0")
    for name, base in (("guest_phys_addr", r.guest_phys_addr), ("userspace_addr", r.userspace_addr), ("mmap_offset", r.mmap_offset)):
        if base + r.memory_size > _U64:
            raise GuestMemoryError(f"region {i}: {name} {base:#x} + memory_size {r.memory_size:#x} overflows 64 bits")


def _check_overlaps(regions: Sequence[tuple[int, MemoryRegion]]) -> None:
    """Reject overlapping GPA ranges and overlapping QVA ranges (pairs of (index, region))."""
    for attr, what in (("guest_phys_addr", "guest physical"), ("userspace_addr", "user (QVA)")):
        ordered = sorted(regions, key=lambda ir: getattr(ir[1], attr))
        for (ia, a), (ib, b) in zip(ordered, ordered[1:]):
            if getattr(a, attr) + a.memory_size > getattr(b, attr):
                raise GuestMemoryError(
                    f"regions {ia} and {ib} overlap in {what} addresses: "
                    f"[{getattr(a, attr):#x}, +{a.memory_size:#x}) and [{getattr(b, attr):#x}, +{b.memory_size:#x})"
                )


def _map_region(i: int, r: MemoryRegion, fd: int) -> MappedRegion:
    """Map one region from ``fd`` (which it then owns); the caller closes ``fd`` on failure."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise GuestMemoryError(f"region {i}: bad fd {fd}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        need = r.mmap_offset + r.memory_size
        if st.st_size < need:
            raise GuestMemoryError(
                f"region {i}: file is {st.st_size:#x} bytes, smaller than mmap_offset + memory_size = {need:#x}"
            )
    elif not stat.S_ISCHR(st.st_mode):
        raise GuestMemoryError(f"region {i}: fd cannot be mapped as memory: {_fd_kind(st.st_mode)}")
    block = fd_block_size(fd)
    length = _align_up(r.memory_size + r.mmap_offset, block)
    try:
        addr = map_shared(fd, length, 0)
    except OSError as e:
        raise GuestMemoryError(f"region {i}: mmap of {length:#x} bytes failed: {e.strerror}") from None
    return MappedRegion(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset, fd, addr, length, block)


class GuestMemory:
    """The mapped regions of one device, and address translation over them.

    Build with :meth:`map_table` (a whole ``SET_MEM_TABLE``) or start empty
    and :meth:`add_region` (``ADD_MEM_REG``).  Translations return 0 when a
    range is not wholly inside one region.
    """

    def __init__(self, regions: Iterable[MappedRegion] = ()):
        self.regions: list[MappedRegion] = list(regions)

    # -- building -----------------------------------------------------------

    @classmethod
    def map_table(
        cls, regions: Sequence[MemoryRegion], fds: Sequence[int], max_regions: int = VHOST_MEMORY_BASELINE_NREGIONS
    ) -> "GuestMemory":
        """Validate and map a whole table.  Takes ownership of ``fds`` (one per region).

        All or nothing: on any error everything mapped so far is unmapped,
        every fd is closed and :class:`GuestMemoryError` is raised.
        """
        fds = list(fds)
        mapped: list[MappedRegion] = []
        try:
            if len(fds) != len(regions):
                raise GuestMemoryError(f"{len(regions)} regions but {len(fds)} fds")
            if len(regions) > max_regions:
                raise GuestMemoryError(f"too many regions: {len(regions)} > {max_regions}")
            for i, r in enumerate(regions):
                _check_region(i, r)
            _check_overlaps(list(enumerate(regions)))
            for i, (r, fd) in enumerate(zip(regions, fds)):
                mapped.append(_map_region(i, r, fd))
                fds[i] = -1
        except BaseException:
            for m in mapped:
                m.unmap()
            for fd in fds:
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            raise
        return cls(mapped)

    def add_region(self, r: MemoryRegion, fd: int, max_regions: int) -> MappedRegion:
        """Validate and map one more region (``ADD_MEM_REG``); takes ownership of ``fd``."""
        try:
            i = len(self.regions)
            if i >= max_regions:
                raise GuestMemoryError(f"no free memory slot: {i} regions mapped, maximum {max_regions}")
            _check_region(i, r)
            _check_overlaps([(k, m.spec()) for k, m in enumerate(self.regions)] + [(i, r)])
            mapped = _map_region(i, r, fd)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        self.regions.append(mapped)
        return mapped

    def remove_region(self, r: MemoryRegion) -> None:
        """Unmap the region with ``r``'s GPA, user address and size (``REM_MEM_REG``)."""
        for k, m in enumerate(self.regions):
            if m.same_layout(r):
                del self.regions[k]
                m.unmap()
                return
        raise GuestMemoryError(
            f"no region with guest_phys_addr {r.guest_phys_addr:#x}, userspace_addr {r.userspace_addr:#x}, "
            f"memory_size {r.memory_size:#x}"
        )

    def same_table(self, regions: Sequence[MemoryRegion]) -> bool:
        """True if ``regions`` describes exactly this table (DPDK: GPA, size and user address per slot)."""
        return len(regions) == len(self.regions) and all(m.same_layout(r) for m, r in zip(self.regions, regions))

    def unmap(self) -> None:
        """munmap every region and close every fd."""
        regions, self.regions = self.regions, []
        for m in regions:
            m.unmap()

    # -- translation --------------------------------------------------------

    def _find(self, attr: str, addr: int, length: int) -> MappedRegion | None:
        for m in self.regions:
            start = getattr(m, attr)
            if start <= addr < start + m.size:
                return m if length <= start + m.size - addr else None
        return None

    def qva_to_hva(self, qva: int, length: int) -> int:
        """Host address of front-end user range ``[qva, qva + length)``, or 0 if not in one region."""
        m = self._find("userspace_addr", qva, length)
        return 0 if m is None else m.host_user_addr + (qva - m.userspace_addr)

    def qva_to_gpa(self, qva: int, length: int) -> int:
        """Guest-physical address of a front-end user range, or 0 if not in one region."""
        m = self._find("userspace_addr", qva, length)
        return 0 if m is None else m.guest_phys_addr + (qva - m.userspace_addr)

    def gpa_to_hva(self, gpa: int, length: int) -> int:
        """Host address of guest-physical range ``[gpa, gpa + length)``, or 0 if not in one region."""
        m = self._find("guest_phys_addr", gpa, length)
        return 0 if m is None else m.host_user_addr + (gpa - m.guest_phys_addr)

    def region_table(self) -> np.ndarray:
        """The ``uint64[R, 3]`` (gpa, length, hva) table the ring kernels translate with."""
        return make_regions([(m.guest_phys_addr, m.size, m.host_user_addr) for m in self.regions])

    def describe(self) -> list[dict]:
        """Per region: gpa, size, qva, mmap_offset, mmap_size and fd (for mapping it in another process)."""
        return [
            dict(
                guest_phys_addr=m.guest_phys_addr,
                size=m.size,
                userspace_addr=m.userspace_addr,
                mmap_offset=m.mmap_offset,
                mmap_size=m.mmap_size,
                host_user_addr=m.host_user_addr,
                fd=m.fd,
            )
            for m in self.regions
        ]

    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self):
        return iter(self.regions)

    def __repr__(self) -> str:
        return f"GuestMemory({self.regions!r})"
