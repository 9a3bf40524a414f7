"""Byte sizes: parsing ``1G`` / ``512M`` / ``2048kB`` and printing them back."""

from __future__ import annotations

import re

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_SUFFIX = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse a size such as ``1G``, ``512M``, ``2048kB``, ``2MiB`` or ``4096``.

    Suffixes are binary (``1K`` = 1024 bytes) and case-insensitive, optionally
    followed by ``B`` or ``iB``. A bare number is a byte count.
    Raises ValueError on anything else or on a negative number.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r} (expected e.g. 4096, 2M, 512MB, 1G)")
    return int(m.group(1)) * _SUFFIX[m.group(2).lower()]


def format_size(n: int) -> str:
    """Print a byte count with the largest binary unit that divides it exactly
    (``2 MiB``, ``1 GiB``, ``1536 KiB``, ``100 B``)."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


def align_up(n: int, align: int) -> int:
    """Round ``n`` up to a multiple of ``align`` (any positive integer)."""
    return -(-n // align) * align


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0


def short_size(n: int) -> str:
    """A byte count the way command lines take it: ``2M``, ``1G``, ``1536K``."""
    return format_size(n).replace(" ", "").replace("iB", "").replace("B", "")
