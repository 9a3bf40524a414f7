"""The disk behind a vhost-user-blk device: a RAM disk in a memfd segment, or a file mapped shared.

:class:`Storage` owns the backing fd and one mapping of it in this process.
Lcore processes map the same fd themselves (:func:`map_disk`; the fd travels
with each queue's hand-over), so every lcore and the main process see one
disk.  A RAM disk is a memfd (hugetlb pages when the EAL has hugepages,
tmpfs pages with ``--no-huge``), allocated up front so a shortage is an error
at start, never a SIGBUS on first touch.  A file is mapped ``MAP_SHARED``:
what the guest writes is in the page cache at once and reaches the file with
FLUSH (``fdatasync``); ``--readonly`` maps it ``MAP_PRIVATE`` from a
read-only fd, so not even a bug could change it.

Capacity is in 512-byte sectors (a file's size rounded down).

A disk can grow while it is served (:meth:`Storage.grow`): a RAM disk's
memfd is allocated further (``fallocate``: a shortage is an error now, not a
SIGBUS later), a file is extended (``ftruncate``; sparse) unless it is
already that large.  Existing mappings stay valid for the old size; whoever
maps the disk maps it again (the lcores get the new size when their queues
are handed out again, see ``VhostLibrary.driver_config_change``).  Shrinking
is refused: the guest may have data there.
"""

from __future__ import annotations

import mmap
import os
import stat

import numpy as np

from dataplane import log as dplog
from dataplane.memory.segment import Segment
from dataplane.memory.units import format_size

from .spec import SECTOR_SHIFT, SECTOR_SIZE

__all__ = ["Storage", "StorageError", "DiskMapping", "map_disk"]

log = dplog.get_logger("dataplane.vhost.blk")


class StorageError(ValueError):
    """The disk cannot be created or opened (size, path, permissions)."""


class DiskMapping:
    """One mapping of a disk fd: ``array`` (uint8 view), ``addr``, ``size``; :meth:`close` unmaps."""

    def __init__(self, fd: int, size: int, *, private: bool = False):
        flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED
        self.size = size
        self._mm: mmap.mmap | None = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.array: np.ndarray | None = np.frombuffer(self._mm, dtype=np.uint8)
        self.addr = self.array.ctypes.data

    def close(self) -> None:
        self.array = None
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still alive: unmapped when the last one goes
                log.debug("disk unmap deferred: views still alive")


def map_disk(fd: int, size: int, *, private: bool = False) -> DiskMapping:
    """Map ``size`` bytes of a disk fd received from the main process (lcore side)."""
    return DiskMapping(fd, size, private=private)


class Storage:
    """The disk of one vhost-user-blk device.

    Build it with :meth:`ram` or :meth:`open_file`; :meth:`close` releases it.
    ``fd`` is what lcores map (with ``map_size`` and ``private``),
    ``sectors`` the capacity, ``array`` this process's view, ``file_backed``
    whether FLUSH has anything to sync.
    """

    def __init__(self, fd: int, size: int, map_size: int, *, file_backed: bool, readonly: bool, path: str | None,
                 segment: Segment | None = None):
        self.fd = fd
        self.size = size
        self.sectors = size >> SECTOR_SHIFT
        self.map_size = map_size
        self.file_backed = file_backed
        self.readonly = readonly
        self.private = file_backed and readonly
        self.path = path
        self._segment = segment
        self.page_size = segment.page_size if segment is not None else mmap.PAGESIZE
        self._mapping: DiskMapping | None = None if segment is not None else DiskMapping(fd, map_size, private=self.private)

    @property
    def array(self) -> np.ndarray:
        """The disk's bytes (``size`` of them) in this process."""
        a = self._mapping.array if self._mapping is not None else self._segment.array
        return a[: self.size]

    def grow(self, size: int) -> None:
        """Grow the disk to ``size`` bytes (a multiple of 512; the current size: nothing to do).

        Raises :class:`StorageError` for a read-only disk, a smaller size, or
        memory / file space that cannot be had (the disk keeps its size).
        """
        size = int(size)
        if size <= 0 or size % SECTOR_SIZE:
            raise StorageError(f"disk size must be a positive multiple of {SECTOR_SIZE} bytes, got {size}")
        if size < self.size:
            raise StorageError(f"cannot shrink the disk from {format_size(self.size)} to {format_size(size)} "
                               "(the guest may have data there)")
        if size == self.size:
            return
        if self.readonly:
            raise StorageError("a read-only disk cannot grow")
        map_size = -(-size // self.page_size) * self.page_size if not self.file_backed else size
        try:
            if self.file_backed:
                if os.fstat(self.fd).st_size < size:
                    os.ftruncate(self.fd, size)
            else:
                os.posix_fallocate(self.fd, 0, map_size)
            mapping = DiskMapping(self.fd, map_size, private=self.private)
        except OSError as e:
            raise StorageError(f"cannot grow the disk to {format_size(size)}: {e.strerror or e}") from None
        old, self._mapping = self._mapping, mapping
        if old is not None:
            old.close()
        log.info("disk grown", old_size=self.size, size=size, path=self.path)
        self.size, self.sectors, self.map_size = size, size >> SECTOR_SHIFT, map_size

    def file_size(self) -> int:
        """The backing file's size now, in whole sectors' bytes (a file grown from outside; RAM disk: ``size``)."""
        if not self.file_backed:
            return self.size
        return os.fstat(self.fd).st_size & ~(SECTOR_SIZE - 1)

    @classmethod
    def ram(cls, size: int, *, hugepage: bool = False, page_size: int | None = None, readonly: bool = False,
            name: str = "vhost-blk-disk") -> "Storage":
        """A zeroed RAM disk of ``size`` bytes (a multiple of 512) in a memfd segment."""
        size = int(size)
        if size <= 0 or size % SECTOR_SIZE:
            raise StorageError(f"disk size must be a positive multiple of {SECTOR_SIZE} bytes, got {size}")
        try:
            seg = Segment.create_memfd(name, size, hugetlb=hugepage, page_size=page_size)
        except OSError as e:
            raise StorageError(f"cannot allocate a {format_size(size)} RAM disk: {e.strerror or e}") from None
        log.info("RAM disk ready", size=size, hugepage=hugepage, page_size=seg.page_size)
        return cls(seg.fd, size, seg.size, file_backed=False, readonly=readonly, path=None, segment=seg)

    @classmethod
    def open_file(cls, path: str, *, readonly: bool = False) -> "Storage":
        """An existing file as the disk (its size rounded down to whole sectors)."""
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise StorageError(f"cannot open disk file {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"disk file {path} is not a regular file")
            size = st.st_size & ~(SECTOR_SIZE - 1)
            if size == 0:
                raise StorageError(f"disk file {path} is smaller than one {SECTOR_SIZE}-byte sector")
            s = cls(fd, size, size, file_backed=True, readonly=readonly, path=path)
        except BaseException:
            os.close(fd)
            raise
        log.info("disk file mapped", path=path, size=size, readonly=readonly)
        return s

    def flush(self) -> None:
        """Make what was written durable (``fdatasync`` of a file; nothing for a RAM disk)."""
        if self.file_backed:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None
        if self._segment is not None:
            self._segment.close()  # closes the fd too
            self._segment = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
