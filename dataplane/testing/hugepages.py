"""Real hugepages for tests: reserve a pool, mount hugetlbfs, give it all back.

``hugepages_mounted(nr=64, page_size=2 MiB)`` adds ``nr`` pages to the
kernel pool, mounts a private hugetlbfs in a temporary directory and yields
that directory. On exit it removes any file left in the mount, unmounts it
(lazily if something still maps it), removes the directory and gives the
``nr`` pages back, so ``nr_hugepages`` is what it was before (pages another
user added meanwhile stay theirs). Needs root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Iterator

from dataplane import log as dplog

from dataplane.memory import hugepages
from dataplane.memory.units import MiB, format_size

log = dplog.get_logger("dataplane.memory")


class HugepagesUnavailable(RuntimeError):
    """The system cannot give the test its hugepages (not root, page size
    unsupported, memory too fragmented). Tests usually skip on it."""


@contextlib.contextmanager
def hugepages_mounted(nr: int = 64, page_size: int = 2 * MiB) -> Iterator[str]:
    """Reserve ``nr`` more hugepages of ``page_size``, mount a hugetlbfs for
    them in a fresh temporary directory and yield its path; restore the
    system on exit (see module doc). Raises HugepagesUnavailable when the
    pages or the mount cannot be had."""
    if os.geteuid() != 0:
        raise HugepagesUnavailable("reserving hugepages needs root")
    try:
        before = hugepages.page_size_info(page_size).persistent
    except ValueError as e:
        raise HugepagesUnavailable(str(e)) from None
    added = 0
    mount_dir = None
    mounted = False
    try:
        got = hugepages.reserve(before + nr, page_size)
        added = got - before
        if got < before + nr:
            raise HugepagesUnavailable(
                f"asked the kernel for {nr} more {format_size(page_size)} hugepages, got {added}"
            )
        mount_dir = tempfile.mkdtemp(prefix="dataplane-huge-")
        try:
            hugepages.mount(mount_dir, page_size)
        except OSError as e:
            raise HugepagesUnavailable(f"cannot mount hugetlbfs: {e}") from None
        mounted = True
        yield mount_dir
    finally:
        if mounted:
            _clear_dir(mount_dir)
            try:
                hugepages.umount(mount_dir)
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                log.warning("hugetlbfs still busy, detaching it lazily", path=mount_dir)
                hugepages.umount(mount_dir, lazy=True)
        if mount_dir is not None:
            os.rmdir(mount_dir)
        if added:
            now = hugepages.page_size_info(page_size).persistent
            hugepages.reserve(max(0, now - added), page_size)


def _clear_dir(path: str) -> None:
    """Remove every file in the hugetlbfs mounted at ``path``."""
    for name in os.listdir(path):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(os.path.join(path, name))
