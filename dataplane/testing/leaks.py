"""Leak checks shared by the test suites: open fds and guest-memory mappings of this process."""

from __future__ import annotations

import collections
import os

__all__ = ["fd_targets", "leaked_fds", "memfd_maps"]


def fd_targets() -> dict[int, str]:
    """This process's open fds and what they point at (``/proc/self/fd``)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return out


def leaked_fds(before: dict[int, str], kinds=("anon_inode:[eventfd]", "socket:")) -> dict[int, str]:
    """The fds of the given kinds opened since ``before`` (a :func:`fd_targets` result) and still open."""
    return {fd: t for fd, t in fd_targets().items() if before.get(fd) != t and t.startswith(tuple(kinds))}


def memfd_maps() -> collections.Counter:
    """Mappings of memfds (guest memory), counted by file name."""
    with open("/proc/self/maps") as f:
        return collections.Counter(line.split(None, 5)[5].strip() for line in f if "/memfd:" in line)
