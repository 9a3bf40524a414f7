"""The memory subsystem: preallocated shared segments and named memzones.

``Memory(size, ...)`` is the EAL's ``-m``: it allocates ``size`` bytes up front
in one or more segments (hugetlbfs files ``<huge_dir>/<prefix>map_<n>``, or
memfds with ``--no-huge`` / ``--in-memory``). Lcore processes forked after it
inherit every mapping at the same address.

Memzones are named, contiguous, zeroed blocks carved out of the segments.
Their table lives in the shared memory itself (at the start of segment 0), so
a memzone reserved by any process sharing the mappings, before or after a
fork, is visible to all of them. Table operations are serialised across
processes and threads by an flock taken on a freshly opened file description
for each operation: the runtime directory's ``memzone.lock``, or in
``--in-memory`` mode segment 0's memfd reopened through /proc/self/fd.

Table layout (little endian): a 64-byte header ``magic u64, version u32,
max_zones u32, nsegments u32, pad u32, heap_start u64, reserved[32]``
followed by ``max_zones`` 64-byte entries ``name[32], segment u32,
flags u32, offset u64, size u64, align u64``. Blocks are placed first fit,
each occupying its size rounded up to a cache line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from dataplane import log as dplog

from . import hugepages
from .errors import MemoryLayerError, MemzoneExists, MemzoneNotFound, NoHugepages, OutOfMemory
from .runtime import RuntimeDir, validate_prefix
from .segment import SMALL_PAGE_SIZE, Segment
from .units import align_up, format_size, is_power_of_two, short_size

log = dplog.get_logger("dataplane.memory")

CACHE_LINE = 64
MEMZONE_NAMESIZE = 32  # bytes, including the terminating NUL
MAX_MEMZONES = 2560
TABLE_MAGIC = 0x454E4F5A4D454D44  # "DMEMZONE" little endian
TABLE_VERSION = 1
ZONE_USED = 1
MEMZONE_LOCK_NAME = "memzone.lock"

HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u8"),
        ("version", "<u4"),
        ("max_zones", "<u4"),
        ("nsegments", "<u4"),
        ("pad", "<u4"),
        ("heap_start", "<u8"),
        ("reserved", "V32"),
    ]
)
ENTRY_DTYPE = np.dtype(
    [
        ("name", f"S{MEMZONE_NAMESIZE}"),
        ("segment", "<u4"),
        ("flags", "<u4"),
        ("offset", "<u8"),
        ("size", "<u8"),
        ("align", "<u8"),
    ]
)
assert HEADER_DTYPE.itemsize == CACHE_LINE and ENTRY_DTYPE.itemsize == CACHE_LINE


def table_size(max_zones: int = MAX_MEMZONES) -> int:
    """Bytes at the start of segment 0 taken by the memzone table (page aligned)."""
    return align_up(HEADER_DTYPE.itemsize + max_zones * ENTRY_DTYPE.itemsize, SMALL_PAGE_SIZE)


@dataclass(frozen=True, repr=False)
class Memzone:
    """A named block of shared memory: ``size`` bytes at ``offset`` in
    ``segment``, at ``addr`` in this process and ``iova`` for devices."""

    name: str
    size: int
    iova: int
    addr: int
    offset: int
    segment: Segment = field(compare=False)

    def view(self, dtype=np.uint8, shape=None) -> np.ndarray:
        """A writable numpy array over the memzone (shared with every process
        mapping it). Without ``shape`` it covers the whole memzone, whose size
        must then be a multiple of the item size; with ``shape`` it covers the
        first ``prod(shape) * itemsize`` bytes."""
        if self.segment.array is None:
            raise ValueError(f"memzone {self.name!r}: its memory has been released")
        dtype = np.dtype(dtype)
        if shape is None:
            if self.size % dtype.itemsize:
                raise ValueError(
                    f"memzone {self.name!r} of {self.size} bytes is not a whole number of {dtype} items"
                )
            shape = (self.size // dtype.itemsize,)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.size:
            raise ValueError(
                f"memzone {self.name!r}: a {shape} array of {dtype} needs {nbytes} bytes, "
                f"the memzone has {self.size}"
            )
        raw = self.segment.array[self.offset : self.offset + nbytes]
        return raw.view(dtype).reshape(shape)

    def __repr__(self) -> str:
        return (
            f"Memzone(name={self.name!r}, size={self.size}, iova={self.iova:#x}, "
            f"addr={self.addr:#x}, offset={self.offset:#x})"
        )


class Memory:
    """The memory subsystem of one dataplane instance (see module doc).

    ``Memory(size, *, huge=True, huge_dir=None, page_size=None,
    file_prefix="dataplane", in_memory=False, segment_size=None)``

    - ``huge``: hugepage memory; ``False`` is ``--no-huge`` (tmpfs memfds).
    - ``huge_dir``: a hugetlbfs mount point (default: discovered for
      ``page_size``, itself defaulting to the kernel's default size).
    - ``file_prefix``: names the runtime directory and the hugepage files.
    - ``in_memory``: no runtime directory and no named files; segments are
      memfds (MFD_HUGETLB when ``huge``).
    - ``segment_size``: split the memory into segments of at most this size
      (default: one segment).

    Raises NoHugepages when hugepages are asked for but not available, and
    RuntimeDirBusy when the file prefix is in use by a live process.
    """

    def __init__(
        self,
        size: int,
        *,
        huge: bool = True,
        huge_dir: str | None = None,
        page_size: int | None = None,
        file_prefix: str = "dataplane",
        in_memory: bool = False,
        segment_size: int | None = None,
        max_memzones: int = MAX_MEMZONES,
    ):
        if size <= 0:
            raise ValueError(f"memory size must be positive, got {size}")
        self.file_prefix = validate_prefix(file_prefix)
        self.in_memory = in_memory
        self.hugepage = huge
        self.max_memzones = max_memzones
        self.segments: list[Segment] = []
        self.runtime: RuntimeDir | None = None
        self._zones = None  # the memzone entries, a view of segment 0

        if huge:
            self.page_size, self.huge_dir = _hugepage_source(huge_dir, page_size, in_memory)
        else:
            if huge_dir is not None:
                raise ValueError("huge_dir makes no sense with huge=False (--no-huge)")
            self.page_size, self.huge_dir = SMALL_PAGE_SIZE, None
            log.warning("hugepages disabled (--no-huge): using memfd (tmpfs) memory with normal pages", size=size)
        self.size = align_up(size, self.page_size)
        sizes = _split(self.size, segment_size, self.page_size)
        self._heap_start = table_size(max_memzones)
        if sizes[0] < self._heap_start + CACHE_LINE:
            raise ValueError(
                f"memory size {format_size(self.size)} is too small: the memzone table alone takes "
                f"{format_size(self._heap_start)}"
            )
        if not in_memory:
            self.runtime = RuntimeDir(self.file_prefix).acquire()  # cleans a dead run's files
        self._finalizer = weakref.finalize(self, _release, self.segments, self.runtime)
        try:
            if huge and not in_memory:
                self.runtime.add_huge_dir(self.huge_dir)
                hugepages.clear_files(self.huge_dir, self.file_prefix)
            if huge:
                _check_free_pages(self.page_size, self.size // self.page_size)
            for i, seg_size in enumerate(sizes):
                self.segments.append(self._create_segment(i, seg_size))
            self._init_table()
        except BaseException:
            self.close()
            raise
        log.info(
            "memory ready",
            size=self.size,
            segments=len(self.segments),
            page_size=self.page_size,
            hugepage=huge,
            huge_dir=self.huge_dir,
            in_memory=in_memory,
            file_prefix=self.file_prefix,
        )

    # -- setup ----------------------------------------------------------------------

    def _create_segment(self, index: int, size: int) -> Segment:
        name = f"{self.file_prefix}map_{index}"
        try:
            if self.in_memory or not self.hugepage:
                return Segment.create_memfd(name, size, hugetlb=self.hugepage, page_size=self.page_size)
            return Segment.create_hugetlbfs(self.huge_dir, name, size, self.page_size)
        except FileExistsError:
            raise MemoryLayerError(
                f"hugepage file {os.path.join(self.huge_dir, name)} exists and is in use by another "
                f"process; stop it or use another --file-prefix"
            ) from None
        except OSError as e:
            if self.hugepage and e.errno in (errno.ENOSPC, errno.ENOMEM):
                raise NoHugepages(
                    f"cannot allocate {format_size(size)} of {format_size(self.page_size)} hugepages "
                    f"for segment {index}: {os.strerror(e.errno)}; "
                    f"reserve more with `dataplane-hugepages reserve` or run with --no-huge"
                ) from None
            raise

    def _init_table(self) -> None:
        """Write the memzone table header and map the (zeroed) entries."""
        arr = self.segments[0].array
        end = HEADER_DTYPE.itemsize + self.max_memzones * ENTRY_DTYPE.itemsize
        self._zones = arr[HEADER_DTYPE.itemsize : end].view(ENTRY_DTYPE)
        arr[: HEADER_DTYPE.itemsize].view(HEADER_DTYPE)[0] = (
            TABLE_MAGIC, TABLE_VERSION, self.max_memzones, len(self.segments), 0, self._heap_start, b""
        )

    # -- addresses --------------------------------------------------------------------

    def segment_of(self, addr: int) -> Segment | None:
        """The segment whose mapping contains the virtual address, or None."""
        for seg in self.segments:
            if seg.contains_addr(addr):
                return seg
        return None

    def iova_to_virt(self, iova: int) -> int:
        """The virtual address of an IO virtual address; ValueError if no
        segment contains it."""
        for seg in self.segments:
            if seg.contains_iova(iova):
                return seg.addr + (iova - seg.iova)
        raise ValueError(f"iova {iova:#x} is not in any memory segment")

    def virt_to_iova(self, addr: int) -> int:
        """The IO virtual address of a virtual address; ValueError if no
        segment contains it."""
        seg = self.segment_of(addr)
        if seg is None:
            raise ValueError(f"address {addr:#x} is not in any memory segment")
        return seg.iova + (addr - seg.addr)

    def segments_table(self) -> list[tuple[int, int, int, int]]:
        """``(fd, offset, size, iova)`` of every segment: what a vhost-user
        SET_MEM_TABLE needs (fd to send, mmap_offset, memory_size,
        guest_phys_addr / userspace_addr)."""
        return [(s.fd, s.offset, s.size, s.iova) for s in self.segments]

    # -- memzones ---------------------------------------------------------------------

    # Views of the table are never kept in locals of these methods: a frame
    # kept alive by a traceback would pin the mapping after close().

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cross-process memzone lock (a fresh open file description
        per operation, so threads and forked processes exclude each other)."""
        if self._zones is None:
            raise ValueError("memory is closed")
        if self.runtime is not None:
            fd = os.open(self.runtime.file(MEMZONE_LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        else:
            fd = os.open(f"/proc/self/fd/{self.segments[0].fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def _used(self) -> tuple[np.ndarray, np.ndarray]:
        """Slots of the reserved memzones and a copy of their entries."""
        slots = np.flatnonzero(self._zones["flags"] & ZONE_USED)
        return slots, self._zones[slots]

    def _find(self, key: bytes) -> int | None:
        """Slot of the memzone named ``key``, or None."""
        slots, entries = self._used()
        hits = slots[entries["name"] == key]
        return int(hits[0]) if len(hits) else None

    def _memzone(self, entry) -> Memzone:
        seg = self.segments[int(entry["segment"])]
        off = int(entry["offset"])
        return Memzone(
            name=entry["name"].decode(),
            size=int(entry["size"]),
            iova=seg.iova + off,
            addr=seg.addr + off,
            offset=off,
            segment=seg,
        )

    def memzone_reserve(self, name: str, size: int, align: int = CACHE_LINE) -> Memzone:
        """Reserve a zeroed memzone of ``size`` bytes whose iova is a multiple
        of ``align`` (a power of two). Names are at most 31 bytes of UTF-8.

        Raises MemzoneExists for a taken name and OutOfMemory when no free
        block or table entry is left.
        """
        key = _encode_name(name)
        if size <= 0:
            raise ValueError(f"memzone {name!r}: size must be positive, got {size}")
        if not is_power_of_two(align):
            raise ValueError(f"memzone {name!r}: align must be a power of two, got {align}")
        align = max(align, CACHE_LINE)
        extent = align_up(size, CACHE_LINE)
        with self._locked():
            if self._find(key) is not None:
                raise MemzoneExists(f"memzone {name!r} already exists")
            free_slots = np.flatnonzero((self._zones["flags"] & ZONE_USED) == 0)
            if not len(free_slots):
                raise OutOfMemory(
                    f"cannot reserve memzone {name!r}: the memzone table is full ({self.max_memzones} entries)"
                )
            place, largest = self._first_fit(extent, align)
            if place is None:
                raise OutOfMemory(
                    f"cannot reserve memzone {name!r} of {size} bytes (align {align}): no free block "
                    f"large enough; the largest free block is {largest} bytes of {format_size(self.size)} "
                    f"total (give the dataplane more memory with -m)"
                )
            seg_index, offset = place
            self.segments[seg_index].array[offset : offset + extent] = 0
            slot = int(free_slots[0])
            self._zones[slot] = (key, seg_index, 0, offset, size, align)
            self._zones["flags"][slot] = ZONE_USED
            mz = self._memzone(self._zones[slot])
        log.debug("memzone reserved", name=name, size=size, align=align, segment=seg_index, offset=offset)
        return mz

    def _first_fit(self, extent: int, align: int) -> tuple[tuple[int, int] | None, int]:
        """First free block of ``extent`` bytes aligned to ``align`` (in iova):
        ``((segment, offset) or None, largest free block seen)``."""
        _, used = self._used()
        largest = 0
        for si, seg in enumerate(self.segments):
            mine = np.sort(used[used["segment"] == si], order="offset")
            blocks = [(int(o), int(o) + align_up(int(n), CACHE_LINE)) for o, n in zip(mine["offset"], mine["size"])]
            blocks.append((seg.size, seg.size))
            cursor = self._heap_start if si == 0 else 0
            for start, end in blocks:
                largest = max(largest, start - cursor)
                candidate = align_up(seg.iova + cursor, align) - seg.iova
                if candidate + extent <= start:
                    return (si, candidate), largest
                cursor = max(cursor, end)
        return None, largest

    def memzone_lookup(self, name: str) -> Memzone:
        """The memzone called ``name``, whichever process reserved it;
        MemzoneNotFound (a KeyError) if there is none."""
        key = _encode_name(name)
        with self._locked():
            slot = self._find(key)
            if slot is not None:
                return self._memzone(self._zones[slot])
        raise MemzoneNotFound(f"no memzone named {name!r}")

    def memzone_free(self, name: str) -> None:
        """Release the memzone called ``name`` (MemzoneNotFound if none). Views
        of it must no longer be used: the block can be handed out again."""
        key = _encode_name(name)
        with self._locked():
            slot = self._find(key)
            if slot is not None:
                self._zones["flags"][slot] = 0
                self._zones["name"][slot] = b""
        if slot is None:
            raise MemzoneNotFound(f"cannot free memzone {name!r}: no memzone has that name")
        log.debug("memzone freed", name=name)

    def memzones(self) -> list[Memzone]:
        """Every reserved memzone, ordered by segment and offset."""
        with self._locked():
            _, used = self._used()
        return [self._memzone(e) for e in np.sort(used, order=["segment", "offset"])]

    # -- lifetime ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once close() ran."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Unmap and release every segment, remove the hugepage files and the
        runtime directory. Idempotent. In a forked child it only drops the
        child's own mappings; the files stay with the primary process."""
        self._zones = None
        self._finalizer()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "in-memory" if self.in_memory else f"prefix {self.file_prefix!r}"
        kind = f"{format_size(self.page_size)} hugepages" if self.hugepage else "normal pages"
        state = " closed" if self.closed else ""
        return f"<Memory {format_size(self.size)} in {len(self.segments)} segment(s) of {kind}, {mode}{state}>"


def _release(segments: list[Segment], runtime: RuntimeDir | None) -> None:
    """Finalizer of a Memory: close the segments, then the runtime dir."""
    for seg in segments:
        seg.close()
    if runtime is not None:
        runtime.release()


def _encode_name(name: str) -> bytes:
    key = name.encode() if isinstance(name, str) else b""
    if not key or len(key) >= MEMZONE_NAMESIZE or b"\0" in key:
        raise ValueError(
            f"invalid memzone name {name!r}: must be 1 to {MEMZONE_NAMESIZE - 1} bytes, without NUL"
        )
    return key


def _split(total: int, segment_size: int | None, page_size: int) -> list[int]:
    """Sizes of the segments holding ``total`` bytes, at most ``segment_size`` each."""
    if segment_size is None:
        return [total]
    if segment_size <= 0:
        raise ValueError(f"segment_size must be positive, got {segment_size}")
    step = align_up(segment_size, page_size)
    return [min(step, total - start) for start in range(0, total, step)]


def _hugepage_source(huge_dir: str | None, page_size: int | None, in_memory: bool) -> tuple[int, str | None]:
    """Validate the hugepage configuration: ``(page_size, huge_dir)``. In
    in-memory mode the huge dir is None (a given one only sets the page
    size). Raises NoHugepages."""
    if huge_dir is not None:
        mnt = hugepages.mount_of(huge_dir)
        if mnt is None:
            raise NoHugepages(
                f"huge dir {huge_dir} is not a hugetlbfs mount point; mount one with "
                f"`dataplane-hugepages mount {huge_dir}` or run with --no-huge"
            )
        if page_size is not None and page_size != mnt.page_size:
            raise ValueError(
                f"huge dir {huge_dir} has {format_size(mnt.page_size)} pages, "
                f"not the {format_size(page_size)} asked for"
            )
        return mnt.page_size, None if in_memory else huge_dir
    if page_size is None:
        try:
            page_size = hugepages.default_page_size()
        except ValueError:
            raise NoHugepages("this kernel has no hugepage support; run with --no-huge") from None
    try:
        hugepages.page_size_info(page_size)
    except ValueError as e:
        raise NoHugepages(f"{e}; run with --no-huge or pick a supported page size") from None
    if in_memory:
        return page_size, None
    found = hugepages.find_huge_dir(page_size)
    if found is None:
        pool = hugepages.page_size_info(page_size)
        pages = "" if pool.available else (
            f" and reserve pages (none of {format_size(page_size)} is free) with "
            f"`dataplane-hugepages reserve SIZE -p {short_size(page_size)}`"
        )
        raise NoHugepages(
            f"no hugetlbfs mount for {format_size(page_size)} pages; mount one with "
            f"`dataplane-hugepages mount -p {short_size(page_size)}` (or pass --huge-dir){pages}, "
            f"or run with --no-huge"
        )
    return page_size, found


def _check_free_pages(page_size: int, needed: int) -> None:
    """NoHugepages unless ``needed`` pages of ``page_size`` are free."""
    pool = hugepages.page_size_info(page_size)
    if pool.available < needed:
        enough = (pool.nr - pool.available + needed) * page_size
        raise NoHugepages(
            f"not enough free {format_size(page_size)} hugepages: need {needed} "
            f"({format_size(needed * page_size)}) but only {pool.available} of {pool.nr} are free; "
            f"reserve more with `dataplane-hugepages reserve {short_size(enough)} -p {short_size(page_size)}` "
            f"or run with --no-huge"
        )
