"""Exceptions raised by the memory layer."""

from __future__ import annotations


class MemoryLayerError(Exception):
    """Base class of every error the memory layer raises on purpose."""


class NoHugepages(MemoryLayerError):
    """Hugepage memory was requested but the system cannot provide it
    (no page size, no hugetlbfs mount, or not enough free pages)."""


class RuntimeDirBusy(MemoryLayerError):
    """Another live process owns the runtime directory of this file prefix."""


class MemzoneError(MemoryLayerError):
    """Base class of the memzone errors."""


class MemzoneExists(MemzoneError):
    """A memzone with this name is already reserved."""


class MemzoneNotFound(MemzoneError, KeyError):
    """No memzone has this name. A KeyError, printed without quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OutOfMemory(MemzoneError):
    """No free block (or no free memzone table entry) is large enough."""
