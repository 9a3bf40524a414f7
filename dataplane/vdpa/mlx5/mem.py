"""The indirect mkey over guest memory (facts §3.3): which entries, in which mode.

The driver registers one direct mkey per vhost memory region (HVA -> GPA) and one
**indirect** mkey over [first GPA, last GPA + size) whose entries point at the direct
mkeys, the holes between regions pointing at the null mkey.  Every virtq gets that indirect
mkey, so the card addresses guest memory by GPA.  This module computes the layout, as pure
functions; creating the mkeys is the card wiring's job.

Rules (DPDK 22.11 ``mlx5_vdpa_mem.c``):

1. sort the regions by GPA; ``mem_size`` = last GPA + its size - first GPA;
2. ``gcd`` of every region size and every hole size (a hole of 0 changes nothing); above
   2 GiB it becomes ``gcd(gcd, 2 GiB)``; if it is not a power of 2 it becomes the largest
   power of 2 dividing it (DPDK starts from the power of 2 below and halves until it
   divides: a "round down" that keeps the entries aligned);
3. KLM entries = each region and hole split in 2 GiB pieces (``ceil(size / 2 GiB)``);
   KLM_FBS entries = ``mem_size // gcd``;
4. mode **KLM** when ``gcd < 4 KiB``, or the FBS entries exceed the maximum, or the KLM
   entries fit in one cache line and the FBS entries do not; otherwise **KLM_FBS**;
5. more entries than the maximum in the chosen mode: "memory is too fragmented";
6. the number of regions must be 1..0xFFFE ("Invalid number of memory regions.");
7. a layout equal to the previous one (same count, same GPA and size, in GPA order) is
   reused: no new mkeys (:func:`same_layout`).

Constants, and where they come from:

* :data:`MAX_KLM_BYTE_COUNT` = 0x80000000 -- MLX5_MAX_KLM_BYTE_COUNT (mlx5_prm.h): one KLM
  entry covers at most 2 GiB.
* :data:`MIN_KLM_FIXED_BUFFER_SIZE` = 0x1000 -- MLX5_MIN_KLM_FIXED_BUFFER_SIZE (mlx5_prm.h).
* :data:`KLM_ENTRY_SIZE` = 16 -- ``struct mlx5_klm`` (byte_count u32, mkey u32, address u64).
* :data:`CACHE_LINE_SIZE` = 64 -- RTE_CACHE_LINE_SIZE on x86-64: "fits in one cache line"
  means at most 4 entries.
* :data:`DEVX_MAX_KLM_ENTRIES` = 4078 -- MLX5_DEVX_MAX_KLM_ENTRIES (mlx5_devx_cmds.h): the
  command length is a u16 in libibverbs, so (0xFFFF - 272) // 16, 272 bytes being
  CREATE_MKEY's input before the entries (``create_mkey_in``: 0x880 bits in mlx5_prm.h).
  DPDK does not look at the card's ``log_max_klm_list_size``; a caller may pass a smaller
  ``max_entries`` (e.g. the card's limit) to :func:`mkey_layout`.
* :data:`MAX_MRS` = 0xFFFF -- MLX5_VDPA_MAX_MRS: the regions plus the indirect mkey.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from dataplane import log as dplog

__all__ = [
    "MAX_KLM_BYTE_COUNT",
    "MIN_KLM_FIXED_BUFFER_SIZE",
    "KLM_ENTRY_SIZE",
    "CACHE_LINE_SIZE",
    "DEVX_MAX_KLM_ENTRIES",
    "MAX_MRS",
    "MODE_KLM",
    "MODE_KLM_FBS",
    "MemLayoutError",
    "Region",
    "KlmEntry",
    "MkeyLayout",
    "sort_regions",
    "layout_gcd",
    "choose_mode",
    "mkey_layout",
    "same_layout",
]

log = dplog.get_logger("dataplane.vdpa.mlx5")

MAX_KLM_BYTE_COUNT = 0x80000000
MIN_KLM_FIXED_BUFFER_SIZE = 0x1000
KLM_ENTRY_SIZE = 16
CACHE_LINE_SIZE = 64
DEVX_MAX_KLM_ENTRIES = (0xFFFF - 0x880 // 8) // KLM_ENTRY_SIZE
MAX_MRS = 0xFFFF

#: mkey access modes (mlx5_prm.h MLX5_MKC_ACCESS_MODE_*)
MODE_KLM = 0x2
MODE_KLM_FBS = 0x3


class MemLayoutError(ValueError):
    """Guest memory the indirect mkey cannot cover."""


class Region(NamedTuple):
    """One vhost memory region, as much of it as the layout needs; ``index`` is its place in the caller's table."""

    gpa: int
    size: int
    index: int


class KlmEntry(NamedTuple):
    """One entry of the indirect mkey: ``kind`` "direct" (region ``region``'s mkey) or "null" (a hole, region None)."""

    kind: str
    gpa: int
    size: int
    region: int | None


@dataclass(frozen=True)
class MkeyLayout:
    """The indirect mkey: mode, start, length, log_entity_size (KLM_FBS; 0 for KLM) and the entries."""

    mode: int
    start: int
    mem_size: int
    gcd: int
    log_entity_size: int
    entries: tuple
    regions: tuple  # sorted by GPA

    @property
    def mode_name(self) -> str:
        return "KLM" if self.mode == MODE_KLM else "KLM_FBS"


def _pieces(size: int) -> int:
    return -(-size // MAX_KLM_BYTE_COUNT)


def sort_regions(regions: Iterable) -> tuple:
    """Regions sorted by GPA.  Each is a ``(gpa, size)`` pair or a mapping with ``guest_phys_addr`` and ``size``."""
    out = []
    for i, r in enumerate(regions):
        if isinstance(r, dict):
            gpa, size = r["guest_phys_addr"], r["size"]
        else:
            gpa, size = r[0], r[1]
        out.append(Region(int(gpa), int(size), i))
    out.sort(key=lambda r: r.gpa)  # a stable sort, as qsort's order of equal GPAs does not matter here
    for a, b in zip(out, out[1:]):
        if a.gpa + a.size > b.gpa:
            raise MemLayoutError(f"regions {a.index} and {b.index} overlap")
    return tuple(out)


def _holes(regions: tuple) -> list[int]:
    return [b.gpa - (a.gpa + a.size) for a, b in zip(regions, regions[1:])]


def layout_gcd(regions: tuple) -> int:
    """Step 2: the gcd of the region and hole sizes, capped at 2 GiB, then the largest power of 2 dividing it."""
    g = 0
    for s in [r.size for r in regions] + _holes(regions):
        g = math.gcd(g, s)
    if g > MAX_KLM_BYTE_COUNT:
        g = math.gcd(g, MAX_KLM_BYTE_COUNT)
    if g & (g - 1):
        g &= -g  # the lowest set bit: the largest power of 2 that divides g
    return g


def choose_mode(gcd: int, klm_entries: int, fbs_entries: int, max_entries: int = DEVX_MAX_KLM_ENTRIES) -> int:
    """Step 4: KLM or KLM_FBS."""
    one_line = CACHE_LINE_SIZE // KLM_ENTRY_SIZE
    if gcd < MIN_KLM_FIXED_BUFFER_SIZE or fbs_entries > max_entries or (klm_entries <= one_line < fbs_entries):
        return MODE_KLM
    return MODE_KLM_FBS


def mkey_layout(regions: Iterable, max_entries: int = DEVX_MAX_KLM_ENTRIES) -> MkeyLayout:
    """The indirect mkey over ``regions`` (vhost memory regions, any order); MemLayoutError when impossible."""
    regs = sort_regions(regions)
    if not regs:
        log.error("Invalid number of memory regions.", regions=0)
        raise MemLayoutError("Invalid number of memory regions.")
    if any(r.size <= 0 for r in regs):
        raise MemLayoutError("a memory region of size 0")
    start = regs[0].gpa
    mem_size = regs[-1].gpa + regs[-1].size - start
    gcd = layout_gcd(regs)
    klm_entries = sum(_pieces(r.size) for r in regs) + sum(_pieces(h) for h in _holes(regs))
    fbs_entries = mem_size // gcd
    mode = choose_mode(gcd, klm_entries, fbs_entries, max_entries)
    n = klm_entries if mode == MODE_KLM else fbs_entries
    if n > max_entries:
        log.error("Failed to prepare memory - memory is too fragmented.", entries=n, max_entries=max_entries,
                  mode="KLM" if mode == MODE_KLM else "KLM_FBS")
        raise MemLayoutError(f"memory is too fragmented ({n} entries, at most {max_entries})")
    if not 1 <= len(regs) < MAX_MRS:
        log.error("Invalid number of memory regions.", regions=len(regs))
        raise MemLayoutError("Invalid number of memory regions.")
    entries: list[KlmEntry] = []

    def cover(kind: str, gpa: int, size: int, region: int | None) -> None:
        step = min(size, MAX_KLM_BYTE_COUNT) if mode == MODE_KLM else gcd
        for off in range(0, size, step):
            entries.append(KlmEntry(kind, gpa + off, min(step, size - off), region))

    for i, r in enumerate(regs):
        if i:
            prev = regs[i - 1]
            hole = r.gpa - (prev.gpa + prev.size)
            if hole:
                cover("null", prev.gpa + prev.size, hole, None)
        cover("direct", r.gpa, r.size, r.index)
    log_entity = gcd.bit_length() - 1 if mode == MODE_KLM_FBS else 0
    log.debug("mkey layout", mode="KLM" if mode == MODE_KLM else "KLM_FBS", regions=len(regs), mem_size=hex(mem_size),
              gcd=hex(gcd), klm_entries=klm_entries, fbs_entries=fbs_entries)
    return MkeyLayout(mode, start, mem_size, gcd, log_entity, tuple(entries), regs)


def same_layout(previous: Iterable | None, regions: Iterable) -> bool:
    """Step 7: True when ``regions`` has the previous table's count, GPAs and sizes (in GPA order): reuse the mkeys."""
    if previous is None:
        return False
    a = [(r.gpa, r.size) for r in sort_regions(previous)]
    b = [(r.gpa, r.size) for r in sort_regions(regions)]
    return a == b
