"""Leak checks shared by the test suites: open fds and guest-memory mappings of this process."""

from __future__ import annotations

import collections
import os

__all__ = ["fd_targets", "leaked_fds", "memfd_maps", "process_tree", "tree_memfd_maps"]


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


def memfd_maps(pid: int | str = "self") -> collections.Counter:
    """Mappings of memfds (guest memory) of process ``pid`` (default: this one), counted by file name."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return collections.Counter(line.split(None, 5)[5].strip() for line in f if "/memfd:" in line)
    except (FileNotFoundError, ProcessLookupError):
        return collections.Counter()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (e.g. an app and its lcore worker processes)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_memfd_maps(pid: int, name: str) -> dict[int, int]:
    """Per process of ``pid``'s tree: how many mappings of memfd ``name`` it has (only those with any)."""
    out = {}
    for p in process_tree(pid):
        n = sum(c for k, c in memfd_maps(p).items() if k.startswith(f"/memfd:{name}"))
        if n:
            out[p] = n
    return out
