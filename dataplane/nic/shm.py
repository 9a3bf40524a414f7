"""The card's counters file ``<card dir>/counters``: what anyone may read while the card runs.

Layout (int64 words, little-endian)::

    hdr[16]                        HDR_MAGIC, HDR_PID, HDR_NVFS, HDR_PAIRS, HDR_LOOPS (main-loop turns),
                                   HDR_MODEL (an index of MODELS: the card model)
    per VF v (VF_BLOCK words each, from word 16):
        vf[16]                     V_* counters of the function
        queues[MAX_QUEUES][16]     the kernels' Q_* rows (dataplane.nic.kernels)
    fdb[FDB_SIZE][2]               the switch's forwarding table: (MAC + 1, VF), 0 = empty

The card writes whole words; readers only read.
"""

from __future__ import annotations

import numpy as np

from .kernels import FDB_SIZE, Q_WORDS
from .pci import BarFile, MAX_PAIRS

__all__ = ["CardShm", "MAX_QUEUES", "VF_WORDS", "HDR_MAGIC", "HDR_PID", "HDR_NVFS", "HDR_PAIRS", "HDR_LOOPS",
           "HDR_MODEL", "MODELS", "V_MAC", "V_DOORBELLS_IGNORED",
           "MAGIC", "V_FAULTS", "V_RESETS", "V_DMA_MAPS", "V_IRQS_SET", "V_CONNECTED", "V_BAD_REQUESTS",
           "V_DMA_FAULTS", "V_STATUS", "V_FEATURES", "V_FLUSHES", "V_LOG_ON", "V_DRIVERS", "V_CONFIG_IRQS", "VF_COUNTER_NAMES"]

MAX_QUEUES = 2 * MAX_PAIRS + 1
VF_WORDS = 16
HDR_WORDS = 16
HDR_MAGIC, HDR_PID, HDR_NVFS, HDR_PAIRS, HDR_LOOPS, HDR_MODEL = range(6)
#: card models by HDR_MODEL value
MODELS = ("ifcvf", "mlx5")
MAGIC = 0x49464356464E4943  # "IFCVFNIC"

(V_FAULTS, V_RESETS, V_DMA_MAPS, V_IRQS_SET, V_CONNECTED, V_BAD_REQUESTS, V_DMA_FAULTS, V_STATUS, V_FEATURES,
 V_FLUSHES, V_LOG_ON, V_DRIVERS, V_CONFIG_IRQS, V_DOORBELLS_IGNORED, V_MAC) = range(15)
#: names of the counter words (V_MAC, the function's MAC as an integer, is not a counter)
VF_COUNTER_NAMES = ("faults", "resets", "dma_maps", "irq_vectors", "connected", "bad_requests", "dma_faults",
                    "status", "features", "flushes", "log_on", "drivers", "config_irqs", "doorbells_ignored")
_VF_BLOCK = VF_WORDS + MAX_QUEUES * Q_WORDS


def _size(nvfs: int) -> int:
    return 8 * (HDR_WORDS + nvfs * _VF_BLOCK + FDB_SIZE * 2)


class CardShm:
    """The counters file at ``path`` (``nvfs`` given: created; else opened and sized from its header)."""

    def __init__(self, path: str, nvfs: int | None = None, model: str = "ifcvf"):
        if nvfs is not None:
            self.f = BarFile(path, _size(nvfs), create=True)
        else:
            self.f = BarFile(path)
        words = self.f.u8.view(np.int64)
        self.hdr = words[:HDR_WORDS]
        if nvfs is not None:
            self.hdr[HDR_MAGIC] = MAGIC
            self.hdr[HDR_NVFS] = nvfs
            self.hdr[HDR_MODEL] = MODELS.index(model)
        n = int(self.hdr[HDR_NVFS])
        self.nvfs = n
        m = int(self.hdr[HDR_MODEL])
        self.model = MODELS[m] if 0 <= m < len(MODELS) else f"model {m}"
        blocks = words[HDR_WORDS : HDR_WORDS + n * _VF_BLOCK].reshape(n, _VF_BLOCK) if n else np.zeros((0, _VF_BLOCK), np.int64)
        self.vf = [blocks[i, :VF_WORDS] for i in range(n)]
        self.queues = [blocks[i, VF_WORDS:].reshape(MAX_QUEUES, Q_WORDS) for i in range(n)]
        off = HDR_WORDS + n * _VF_BLOCK
        self.fdb = words[off : off + FDB_SIZE * 2].reshape(FDB_SIZE, 2)

    def fdb_entries(self) -> list[tuple[str, int]]:
        out = []
        for key, vf in self.fdb:
            if key:
                m = int(key) - 1
                out.append((":".join(f"{(m >> (8 * (5 - i))) & 0xFF:02x}" for i in range(6)), int(vf)))
        return sorted(out)

    def close(self) -> None:
        self.hdr = self.fdb = None  # type: ignore[assignment]
        self.vf = self.queues = []
        self.f.close()
