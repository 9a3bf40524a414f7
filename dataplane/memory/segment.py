"""Memory segments: one contiguous MAP_SHARED mapping of one file descriptor.

A segment is backed by a hugetlbfs file, a memfd (tmpfs, or hugetlb with
MFD_HUGETLB) or any fd received from another process. Its memory is allocated
up front with fallocate, so a shortage of hugepages is an exception at
creation time and never a SIGBUS on first touch.

IOVA mode is "VA": a segment's iova is the virtual address of the mapping in
the process that created it. Forked processes inherit the mapping at the same
address, so there the iova is the address; a process that attaches the fd
gets its own address and keeps the creator's iova.

The fd is opened close-on-exec (Python's default): forked workers inherit it
anyway, and exec'd programs get it through ``subprocess(pass_fds=...)`` or
SCM_RIGHTS (``socket.send_fds``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os

import numpy as np
from dataplane import log as dplog

from .units import align_up, format_size, is_power_of_two

log = dplog.get_logger("dataplane.memory")

HUGETLBFS_MAGIC = 0x958458F6
SMALL_PAGE_SIZE = mmap.PAGESIZE

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _fs_info(fd: int) -> tuple[int, int]:
    """(file system magic, block size) of the file behind ``fd`` (fstatfs)."""
    buf = (ctypes.c_long * 16)()  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf[0] & 0xFFFFFFFF, buf[1]


def _fallocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of backing memory for ``fd`` now."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        raise OSError(e.errno, f"cannot allocate {format_size(size)}: {os.strerror(e.errno)}") from None


class Segment:
    """One contiguous shared mapping.

    Attributes: ``fd`` (open; can be sent with SCM_RIGHTS), ``offset`` (file
    offset of the mapping, huge-page aligned for hugetlb), ``size``, ``iova``,
    ``addr`` (virtual address in this process), ``page_size``, ``path`` (file
    path, None for a memfd or an attached fd), ``hugepage``, ``buf`` (the
    ``mmap.mmap``) and ``array`` (a uint8 numpy view of the whole mapping).

    Build one with :meth:`create_hugetlbfs`, :meth:`create_memfd` or
    :meth:`attach`; release it with :meth:`close` (or ``with``).
    """

    def __init__(
        self,
        fd: int,
        size: int,
        *,
        offset: int = 0,
        page_size: int,
        hugepage: bool,
        path: str | None = None,
        owns_file: bool = False,
        iova: int | None = None,
    ):
        """Map ``size`` bytes of ``fd`` from ``offset``. The segment owns ``fd``
        (closes it) and, with ``owns_file``, unlinks ``path`` when closed. Use the
        class-method constructors rather than this."""
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        if offset % page_size:
            raise ValueError(
                f"mapping offset {offset:#x} is not aligned to the page size {format_size(page_size)}"
            )
        self.fd = fd
        self.offset = offset
        self.size = size
        self.page_size = page_size
        self.hugepage = hugepage
        self.path = path
        self._owns_file = owns_file
        self._owner_pid = os.getpid()
        self.buf: mmap.mmap | None = mmap.mmap(
            fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
        )
        anchor = ctypes.c_char.from_buffer(self.buf)
        self.addr: int = ctypes.addressof(anchor)
        del anchor  # release the buffer export so the mmap can be closed later
        self.iova: int = self.addr if iova is None else iova
        self.array: np.ndarray | None = np.frombuffer(self.buf, dtype=np.uint8)
        self.closed = False

    # -- constructors -------------------------------------------------------------

    @classmethod
    def create_hugetlbfs(cls, huge_dir: str, name: str, size: int, page_size: int) -> "Segment":
        """Create the file ``<huge_dir>/<name>`` (it must not exist), allocate
        ``size`` rounded up to ``page_size`` in hugepages and map it.

        The segment holds a shared flock on the file while it lives, so that
        :func:`dataplane.memory.hugepages.clear_files` leaves it alone. Raises
        OSError (errno ENOSPC / ENOMEM) when the hugepages are not available.
        """
        if not is_power_of_two(page_size):
            raise ValueError(f"page size must be a power of two, got {page_size}")
        size = align_up(size, page_size)
        path = os.path.join(huge_dir, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            magic, _ = _fs_info(fd)
            if magic != HUGETLBFS_MAGIC:
                raise OSError(errno.EINVAL, f"{huge_dir} is not a hugetlbfs mount")
            _fallocate(fd, size)
            seg = cls(fd, size, page_size=page_size, hugepage=True, path=path, owns_file=True)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        log.debug("segment created", kind="hugetlbfs", path=path, size=size, page_size=page_size, addr=hex(seg.addr))
        return seg

    @classmethod
    def create_memfd(
        cls, name: str, size: int, hugetlb: bool = False, page_size: int | None = None
    ) -> "Segment":
        """Create an anonymous memfd named ``name`` (no file anywhere), allocate
        ``size`` bytes rounded up to the page size and map it.

        With ``hugetlb`` the memfd is backed by hugepages of ``page_size``
        (MFD_HUGETLB; default: the kernel's default size); otherwise by tmpfs
        with the normal page size.
        """
        if hugetlb:
            flags = os.MFD_CLOEXEC | os.MFD_HUGETLB
            if page_size is not None:
                if not is_power_of_two(page_size):
                    raise ValueError(f"page size must be a power of two, got {page_size}")
                flags |= (page_size.bit_length() - 1) << os.MFD_HUGE_SHIFT
        else:
            flags = os.MFD_CLOEXEC
            page_size = SMALL_PAGE_SIZE
        fd = os.memfd_create(name, flags)
        try:
            if page_size is None:
                page_size = _fs_info(fd)[1]
            size = align_up(size, page_size)
            _fallocate(fd, size)
            seg = cls(fd, size, page_size=page_size, hugepage=hugetlb)
        except BaseException:
            os.close(fd)
            raise
        log.debug("segment created", kind="memfd", name=name, size=size, page_size=page_size, addr=hex(seg.addr))
        return seg

    @classmethod
    def attach(
        cls, fd: int, size: int | None = None, offset: int = 0, *, iova: int | None = None
    ) -> "Segment":
        """Map an fd received from elsewhere (SCM_RIGHTS, inheritance).

        The segment takes ownership of ``fd`` (pass ``os.dup(fd)`` to keep
        yours). ``size`` defaults to the rest of the file after ``offset``;
        ``iova`` defaults to the new local address. The page size and whether
        it is hugepage memory are read from the fd's file system.
        """
        magic, bsize = _fs_info(fd)
        hugepage = magic == HUGETLBFS_MAGIC
        page_size = bsize if hugepage else SMALL_PAGE_SIZE
        if size is None:
            size = os.fstat(fd).st_size - offset
        return cls(fd, size, offset=offset, page_size=page_size, hugepage=hugepage, iova=iova)

    # -- addresses ------------------------------------------------------------------

    def contains_addr(self, addr: int) -> bool:
        """True if the virtual address lies in this mapping."""
        return self.addr <= addr < self.addr + self.size

    def contains_iova(self, iova: int) -> bool:
        """True if the IO virtual address lies in this segment."""
        return self.iova <= iova < self.iova + self.size

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Unmap, close the fd and unlink the file if this segment created it.

        Idempotent. In a forked child only the child's own mapping and fd go;
        the file belongs to the creating process. If numpy views of the memory
        are still alive the mapping is left to be unmapped when the last one is
        garbage collected (unmapping under them would crash the process).
        """
        if self.closed:
            return
        self.closed = True
        self.array = None
        buf, self.buf = self.buf, None
        try:
            buf.close()
        except BufferError:
            log.debug("segment unmap deferred: numpy views still alive", addr=hex(self.addr))
        os.close(self.fd)
        if self._owns_file and self.path and os.getpid() == self._owner_pid:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "hugepage" if self.hugepage else "normal"
        where = self.path or f"fd {self.fd}"
        state = " closed" if self.closed else ""
        return (
            f"<Segment {where} {format_size(self.size)} {kind} pages of {format_size(self.page_size)}"
            f" addr={self.addr:#x} iova={self.iova:#x}{state}>"
        )
