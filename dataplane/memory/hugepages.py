"""Hugetlbfs discovery and administration.

Reads the kernel's hugepage pools from ``/sys/kernel/mm/hugepages`` and the
hugetlbfs mounts from ``/proc/mounts``; changes the pool size, mounts and
unmounts hugetlbfs and removes leftover hugepage files. The paths are module
attributes (``SYSFS_HUGEPAGES``, ``PROC_MOUNTS``, ``PROC_MEMINFO``), read at
each call, so tests can point them at a fake tree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
from dataclasses import dataclass

from dataplane import log as dplog

from .units import KiB, format_size, parse_size

log = dplog.get_logger("dataplane.memory")

SYSFS_HUGEPAGES = "/sys/kernel/mm/hugepages"
PROC_MOUNTS = "/proc/mounts"
PROC_MEMINFO = "/proc/meminfo"
DEFAULT_MOUNT_DIR = "/dev/hugepages"

_POOL_DIR_RE = re.compile(r"^hugepages-(\d+)kB$")
_MNT_DETACH = 2


@dataclass(frozen=True)
class PageSize:
    """One hugepage pool of the kernel (one ``hugepages-<N>kB`` directory).

    ``nr`` is ``nr_hugepages``: every page of the pool, surplus pages included;
    ``free`` the pages not in use, ``resv`` the free pages already promised to
    mappings and ``surplus`` the pages above the persistent pool (overcommit,
    or in-use pages left over after the pool was shrunk).
    """

    size: int
    nr: int
    free: int
    resv: int
    surplus: int

    @property
    def persistent(self) -> int:
        """The persistent pool size: what writing ``nr_hugepages`` sets."""
        return self.nr - self.surplus

    @property
    def available(self) -> int:
        """Pages a new allocation can still get: free minus reserved."""
        return max(0, self.free - self.resv)


@dataclass(frozen=True)
class HugeMount:
    """A mounted hugetlbfs: its directory, page size and mount options."""

    path: str
    page_size: int
    options: str


def _pool_dir(page_size: int) -> str:
    return os.path.join(SYSFS_HUGEPAGES, f"hugepages-{page_size // KiB}kB")


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def page_sizes() -> list[PageSize]:
    """The hugepage pools the kernel supports, smallest page size first.

    Empty when the kernel has no hugepage support.
    """
    try:
        names = os.listdir(SYSFS_HUGEPAGES)
    except FileNotFoundError:
        return []
    pools = []
    for name in names:
        m = _POOL_DIR_RE.match(name)
        if not m:
            continue
        d = os.path.join(SYSFS_HUGEPAGES, name)
        pools.append(
            PageSize(
                size=int(m.group(1)) * KiB,
                nr=_read_int(os.path.join(d, "nr_hugepages")),
                free=_read_int(os.path.join(d, "free_hugepages")),
                resv=_read_int(os.path.join(d, "resv_hugepages")),
                surplus=_read_int(os.path.join(d, "surplus_hugepages")),
            )
        )
    return sorted(pools, key=lambda p: p.size)


def page_size_info(page_size: int) -> PageSize:
    """The pool of one page size; ValueError naming the supported sizes if the
    kernel has no such pool."""
    for p in page_sizes():
        if p.size == page_size:
            return p
    supported = ", ".join(format_size(p.size) for p in page_sizes()) or "none"
    raise ValueError(
        f"hugepage size {format_size(page_size)} is not supported by this kernel "
        f"(supported: {supported})"
    )


def default_page_size() -> int:
    """The kernel's default hugepage size (``Hugepagesize`` in /proc/meminfo).

    Falls back to the smallest supported size, and raises ValueError when the
    kernel has no hugepages at all.
    """
    try:
        with open(PROC_MEMINFO) as f:
            for line in f:
                if line.startswith("Hugepagesize:"):
                    return int(line.split()[1]) * KiB
    except FileNotFoundError:
        pass
    pools = page_sizes()
    if not pools:
        raise ValueError("this kernel has no hugepage support")
    return pools[0].size


def _unescape_mount_field(s: str) -> str:
    """Undo the octal escapes (``\\040`` for space ...) of /proc/mounts."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts() -> list[HugeMount]:
    """The mounted hugetlbfs file systems, in /proc/mounts order.

    The page size comes from the ``pagesize=`` mount option, else it is the
    kernel's default hugepage size.
    """
    result = []
    with open(PROC_MOUNTS) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 4 or fields[2] != "hugetlbfs":
                continue
            options = fields[3]
            size = None
            for opt in options.split(","):
                if opt.startswith("pagesize="):
                    size = parse_size(opt.partition("=")[2])
            if size is None:
                size = default_page_size()
            result.append(HugeMount(_unescape_mount_field(fields[1]), size, options))
    return result


def find_huge_dir(page_size: int | None = None) -> str | None:
    """A writable hugetlbfs mount for ``page_size`` (default: the kernel's
    default size), or None when there is none. The first mount listed wins,
    like DPDK's pick of the first usable mount."""
    if page_size is None:
        page_size = default_page_size()
    for m in mounts():
        if m.page_size == page_size and os.access(m.path, os.W_OK | os.X_OK):
            return m.path
    return None


def mount_of(path: str) -> HugeMount | None:
    """The hugetlbfs mount whose root is ``path``, or None if ``path`` is not
    the root of a hugetlbfs mount."""
    real = os.path.realpath(path)
    found = None
    for m in mounts():
        if os.path.realpath(m.path) == real:
            found = m  # the last one listed is the visible one
    return found


def reserve(nr: int, page_size: int | None = None) -> int:
    """Set the persistent pool of ``page_size`` pages to ``nr`` pages
    (``nr_hugepages``); returns the persistent pool size the kernel actually
    reached, which can be lower when memory is fragmented. Needs root."""
    if nr < 0:
        raise ValueError(f"number of hugepages must not be negative: {nr}")
    if page_size is None:
        page_size = default_page_size()
    page_size_info(page_size)  # validates the size
    path = os.path.join(_pool_dir(page_size), "nr_hugepages")
    with open(path, "w") as f:
        f.write(f"{nr}\n")
    got = page_size_info(page_size).persistent
    log.info("hugepage pool resized", page_size=page_size, requested=nr, persistent=got)
    return got


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(path: str = DEFAULT_MOUNT_DIR, page_size: int | None = None) -> HugeMount:
    """Mount a hugetlbfs for ``page_size`` pages at ``path`` (created if
    missing) and return it. Needs root."""
    if page_size is None:
        page_size = default_page_size()
    page_size_info(page_size)
    os.makedirs(path, exist_ok=True)
    options = f"pagesize={page_size // KiB}K"
    rc = _libc().mount(b"nodev", os.fsencode(path), b"hugetlbfs", 0, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount hugetlbfs ({options}): {os.strerror(err)}", path)
    log.info("hugetlbfs mounted", path=path, page_size=page_size)
    return HugeMount(path, page_size, options)


def umount(path: str, *, lazy: bool = False) -> None:
    """Unmount the file system at ``path``. With ``lazy`` it is detached now
    and released when no longer busy (MNT_DETACH). Needs root."""
    rc = _libc().umount2(os.fsencode(path), _MNT_DETACH if lazy else 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot unmount: {os.strerror(err)}", path)
    log.info("hugetlbfs unmounted", path=path, lazy=lazy)


def _file_in_use(path: str) -> bool:
    """True if some process holds a flock on ``path`` (segments hold a shared
    one for as long as they exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def clear_files(huge_dir: str, prefix: str) -> list[str]:
    """Remove the hugepage files ``<huge_dir>/<prefix>map_<n>`` that no process
    uses any more (files still locked by a live segment are kept, like DPDK's
    clear_hugedir). Returns the removed paths."""
    removed = []
    try:
        names = sorted(os.listdir(huge_dir))
    except FileNotFoundError:
        return removed
    pattern = re.compile(re.escape(prefix) + r"map_\d+")
    for name in names:
        if not pattern.fullmatch(name):
            continue
        path = os.path.join(huge_dir, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        if _file_in_use(path):
            log.warning("hugepage file still in use, kept", path=path)
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    if removed:
        log.info("removed unused hugepage files", huge_dir=huge_dir, prefix=prefix, removed=removed)
    return removed
