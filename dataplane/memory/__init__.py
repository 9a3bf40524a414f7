"""Memory layer: hugetlbfs discovery, shared segments, the runtime directory
and the memory subsystem with its named memzones.

Modules: ``hugepages`` (discovery and administration of hugetlbfs),
``segment`` (one shared mapping), ``runtime`` (the per-prefix runtime
directory and its lock), ``memory`` (``Memory`` and memzones), ``units``
(size parsing), ``errors``.
"""

from .errors import (
    MemoryLayerError,
    MemzoneError,
    MemzoneExists,
    MemzoneNotFound,
    NoHugepages,
    OutOfMemory,
    RuntimeDirBusy,
)
from .memory import Memory, Memzone
from .runtime import RuntimeDir
from .segment import Segment

__all__ = [
    "Memory",
    "MemoryLayerError",
    "Memzone",
    "MemzoneError",
    "MemzoneExists",
    "MemzoneNotFound",
    "NoHugepages",
    "OutOfMemory",
    "RuntimeDir",
    "RuntimeDirBusy",
    "Segment",
]
