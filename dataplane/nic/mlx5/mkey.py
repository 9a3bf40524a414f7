"""Memory keys of the mlx5 card: direct (MTT) and indirect (KLM, KLM_FBS) mkeys, and translation.

An mkey is an address space ``[start_addr, start_addr + len)``:

* **direct** (access mode MTT): the range stands for the same number of bytes of the
  function's DMA map from ``mtt_iova`` (where the driver mapped the memory: for the
  vDPA driver, a direct MR per guest region, facts §3.3), wholly inside one mapping
  when it is created;
* **indirect KLM**: consecutive entries ``(byte_count, mkey, address)``, each at most
  2 GiB, adding up to ``len``; an entry points into a *direct* mkey's range, or at the
  **null mkey** (a hole: nothing is there, any access is refused);
* **indirect KLM_FBS**: every entry covers ``1 << log_entity_size`` bytes (the last one
  what is left of ``len``), ``byte_count`` is not read.

:meth:`MkeyStore.translate` turns an mkey address range into (the DMA mapping, offset
in it) or None (out of range, a hole, unmapped since); :meth:`MkeyStore.regions` gives
the same translation as a region table (:mod:`dataplane.rings.regions`: address in the
mkey's space, length, the card's host address) that the numba ring kernels take, with
neighbouring entries that continue the same memory merged (a buffer across a 2 GiB
KLM split translates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dma import DmaMap
from dataplane.hwspec.mlx5_prm import MAX_KLM_BYTE_COUNT, AccessMode, CmdError, Status, Syn

__all__ = ["Mkey", "MkeyStore", "NULL_MKEY", "MIN_LOG_ENTITY", "MAX_LOG_ENTITY"]

#: The null mkey (QUERY_SPECIAL_CONTEXTS): index 1, key byte 0.  Entries on it are holes.
NULL_MKEY = 0x100
MIN_LOG_ENTITY = 12
MAX_LOG_ENTITY = 31
_U64 = 1 << 64


@dataclass
class Mkey:
    key: int
    mode: int
    pd: int
    start: int
    length: int
    mtt_iova: int = 0
    log_entity_size: int = 0
    #: indirect: (offset in this mkey, bytes, target mkey, address in the target)
    entries: list[tuple[int, int, int, int]] = field(default_factory=list)
    users: int = 0  # indirect mkeys and objects that name this one

    @property
    def direct(self) -> bool:
        return self.mode == AccessMode.MTT


class MkeyStore:
    """The mkeys of one function, over its DMA map."""

    def __init__(self, dma: DmaMap, *, max_klm: int, max_mkeys: int = 4096):
        self.dma = dma
        self.max_klm = max_klm
        self.max_mkeys = max_mkeys
        self.mkeys: dict[int, Mkey] = {}
        self._next = 2  # index 1 is the null mkey
        self._keybyte: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.mkeys)

    def get(self, key: int, *, what: str = "mkey") -> Mkey:
        m = self.mkeys.get(key)
        if m is None:
            if key == NULL_MKEY:
                raise CmdError(Status.BAD_PARAM, Syn.NULL_MKEY, f"{what}: the null mkey has no memory")
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY, f"{what}: no mkey {key:#x}")
        return m

    # -- create / destroy --------------------------------------------------------------

    def create(self, ctx: dict, klms: list[dict]) -> int:
        """A new mkey from the CREATE_MKEY fields ``ctx`` and its KLM entries; CmdError if refused."""
        mode = ctx["access_mode"]
        start, length = ctx["start_addr"], ctx["len"]
        if length <= 0 or start + length > _U64:
            raise CmdError(Status.BAD_PARAM, Syn.BAD_LENGTH, f"mkey: len {length:#x} at {start:#x}")
        if len(self.mkeys) >= self.max_mkeys:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, f"mkey: at most {self.max_mkeys}")
        if mode == AccessMode.MTT:
            if klms:
                raise CmdError(Status.BAD_PARAM, Syn.KLM_COUNT, "mkey: a direct mkey has no KLM entries")
            if ctx["log_entity_size"]:
                raise CmdError(Status.BAD_PARAM, Syn.ENTITY_SIZE, "mkey: log_entity_size is for KLM_FBS")
            if self.dma.find(ctx["mtt_iova"], length) is None:
                raise CmdError(Status.BAD_PARAM, Syn.UNMAPPED,
                               f"mkey: [{ctx['mtt_iova']:#x}, +{length:#x}) is not inside one DMA mapping")
            m = Mkey(0, mode, ctx["pd"], start, length, mtt_iova=ctx["mtt_iova"])
        elif mode in (AccessMode.KLM, AccessMode.KLM_FBS):
            if ctx["mtt_iova"]:
                raise CmdError(Status.BAD_PARAM, Syn.BAD_ACCESS_MODE, "mkey: mtt_iova is for direct mkeys")
            m = Mkey(0, mode, ctx["pd"], start, length, log_entity_size=ctx["log_entity_size"],
                     entries=self._entries(mode, ctx, klms))
        else:
            raise CmdError(Status.BAD_PARAM, Syn.BAD_ACCESS_MODE, f"mkey: access mode {mode} not supported")
        index = self._next
        self._next += 1
        m.key = (index << 8) | (ctx["mkey_7_0"] & 0xFF)
        for _o, _n, t, _a in m.entries:
            if t != NULL_MKEY:
                self.mkeys[t].users += 1
        self.mkeys[m.key] = m
        return m.key

    def _entries(self, mode: int, ctx: dict, klms: list[dict]) -> list[tuple[int, int, int, int]]:
        length = ctx["len"]
        n = len(klms)
        if n == 0:
            raise CmdError(Status.BAD_PARAM, Syn.KLM_COUNT, "mkey: an indirect mkey needs KLM entries")
        if n > self.max_klm:
            raise CmdError(Status.EXCEED_LIM, Syn.KLM_COUNT, f"mkey: {n} KLM entries, at most {self.max_klm}")
        if mode == AccessMode.KLM:
            if ctx["log_entity_size"]:
                raise CmdError(Status.BAD_PARAM, Syn.ENTITY_SIZE, "mkey: KLM mode has log_entity_size 0")
            sizes = []
            for i, k in enumerate(klms):
                if not 0 < k["byte_count"] <= MAX_KLM_BYTE_COUNT:
                    raise CmdError(Status.BAD_PARAM, Syn.KLM_BYTE_COUNT,
                                   f"mkey: KLM {i} byte_count {k['byte_count']:#x} not in (0, 2 GiB]")
                sizes.append(k["byte_count"])
            if sum(sizes) != length:
                raise CmdError(Status.BAD_PARAM, Syn.KLM_BYTE_COUNT,
                               f"mkey: the KLM entries cover {sum(sizes):#x} bytes, len is {length:#x}")
        else:
            log = ctx["log_entity_size"]
            if not MIN_LOG_ENTITY <= log <= MAX_LOG_ENTITY:
                raise CmdError(Status.BAD_PARAM, Syn.ENTITY_SIZE,
                               f"mkey: log_entity_size {log} not in [{MIN_LOG_ENTITY}, {MAX_LOG_ENTITY}]")
            ent = 1 << log
            need = -(-length // ent)
            if n != need:
                raise CmdError(Status.BAD_PARAM, Syn.KLM_COUNT,
                               f"mkey: len {length:#x} takes {need} entities of {ent:#x}, {n} given")
            sizes = [min(ent, length - i * ent) for i in range(n)]
        out = []
        off = 0
        for i, (k, size) in enumerate(zip(klms, sizes)):
            t = k["mkey"]
            if t != NULL_MKEY:
                tm = self.mkeys.get(t)
                if tm is None:
                    raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY, f"mkey: KLM {i} names no mkey {t:#x}")
                if not tm.direct:
                    raise CmdError(Status.BAD_PARAM, Syn.KLM_TARGET, f"mkey: KLM {i} names an indirect mkey")
                if tm.pd != ctx["pd"]:
                    raise CmdError(Status.BAD_PARAM, Syn.KLM_TARGET, f"mkey: KLM {i} names an mkey of another pd")
                a = k["address"]
                if a < tm.start or a + size > tm.start + tm.length:
                    raise CmdError(Status.BAD_PARAM, Syn.KLM_TARGET,
                                   f"mkey: KLM {i} [{a:#x}, +{size:#x}) leaves mkey {t:#x} "
                                   f"[{tm.start:#x}, +{tm.length:#x})")
            out.append((off, size, t, k["address"]))
            off += size
        return out

    def destroy(self, key: int) -> None:
        if key == NULL_MKEY:
            raise CmdError(Status.BAD_PARAM, Syn.NULL_MKEY, "mkey: the null mkey cannot be destroyed")
        m = self.get(key)
        if m.users:
            raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"mkey {key:#x}: {m.users} users")
        for _o, _n, t, _a in m.entries:
            if t != NULL_MKEY:
                self.mkeys[t].users -= 1
        del self.mkeys[key]

    # -- translation -------------------------------------------------------------------

    def segments(self, key: int) -> list[tuple[int, int, int]]:
        """``[(address, length, dma iova), ...]`` of mkey ``key`` (holes left out), neighbours that
        continue the same IOVAs merged; [] for an unknown mkey or the null mkey."""
        m = self.mkeys.get(key)
        if m is None:
            return []
        if m.direct:
            return [(m.start, m.length, m.mtt_iova)]
        out: list[list[int]] = []
        for off, n, t, a in m.entries:
            if t == NULL_MKEY:
                continue
            tm = self.mkeys[t]
            addr, iova = m.start + off, tm.mtt_iova + (a - tm.start)
            if out and out[-1][0] + out[-1][1] == addr and out[-1][2] + out[-1][1] == iova:
                out[-1][1] += n
            else:
                out.append([addr, n, iova])
        return [tuple(s) for s in out]

    def translate(self, key: int, addr: int, length: int) -> tuple[int, int] | None:
        """(IOVA of the DMA mapping, offset in it) of ``[addr, addr+length)`` in mkey ``key``; None
        when the range is not wholly there (outside the mkey, in a hole, across memory that does
        not continue, or no longer DMA-mapped)."""
        if length <= 0:
            return None
        for s_addr, s_len, s_iova in self.segments(key):
            if s_addr <= addr < s_addr + s_len:
                if addr + length > s_addr + s_len:
                    return None
                return self.dma.find(s_iova + (addr - s_addr), length)
        return None

    def regions(self, key: int) -> np.ndarray:
        """Mkey ``key`` as a region table ``uint64[R, 3]`` (address, length, the card's address): what
        :func:`dataplane.rings.regions.translate` and the ring kernels take.  A segment whose memory
        is no longer DMA-mapped is left out (an access there is refused)."""
        rows = []
        for s_addr, s_len, s_iova in self.segments(key):
            # a segment lies in one mapping (a direct mkey does, when created); split at maps anyway
            pos = 0
            while pos < s_len:
                hit = self.dma.mapping_at(s_iova + pos)
                if hit is None:
                    break
                o_iova, o_size, hva = hit
                take = min(s_len - pos, o_iova + o_size - (s_iova + pos))
                rows.append((s_addr + pos, take, hva + (s_iova + pos - o_iova)))
                pos += take
        t = np.zeros((len(rows), 3), np.uint64)
        for i, r in enumerate(rows):
            t[i] = r
        return t
