"""The PCI face of an emulated IFC VF: config space, BAR0, BAR4, as files a driver maps.

Each VF is a directory ``<card dir>/<bdf>/`` holding, like
``/sys/bus/pci/devices/<bdf>/``:

* ``config`` -- 256 bytes of PCI config space (type 0 header, capability list);
* ``resource0`` -- BAR0 (:data:`BAR0_SIZE` bytes): virtio common cfg, ISR,
  device cfg, the card's register-flush pair, the MSI-X table/PBA (present,
  unused: vectors are bound to eventfds over the control channel), and the
  notify area, one 4 KiB page per queue;
* ``resource4`` -- BAR4 (:data:`BAR4_SIZE` bytes): IFCVF's live-migration registers;
* ``vfio.sock`` -- the control channel (:mod:`dataplane.nic.vfio`).

Layout facts follow VDPA-FACTS §2.2 / §2.4 (virtio-pci modern, IFCVF).

BAR0 map::

    0x0000  common cfg (0x38 bytes)           cap COMMON_CFG  (type 1)
    0x0040  ISR (4 bytes; bit0 queue, bit1 config) cap ISR_CFG (type 3)
    0x0080  device cfg: mac[6] @0, status u16 @6, max_virtqueue_pairs u16 @8,
            mtu u16 @10 (0x10 bytes)           cap DEVICE_CFG  (type 4)
    0x00C0  WRITE_SEQ u32 (driver), 0x00C4 ACK_SEQ u32 (card): the register flush
    0x0800  MSI-X table (16 bytes a vector), 0x0C00 MSI-X PBA
    0x1000  notify: queue q's doorbell at 0x1000 + q * 0x1000 (notify_off = q,
            notify_off_multiplier = 0x1000)   cap NOTIFY_CFG  (type 2)

The card polls these files (it cannot trap a write): see :mod:`dataplane.nic.card`
for the polling scheme and the flush rule.
"""

from __future__ import annotations

import mmap
import os
import re
import struct

import numpy as np

__all__ = [
    "VENDOR_ID", "DEVICE_ID", "SUBSYS_VENDOR_ID", "SUBSYS_DEVICE_ID",
    "CAP_PTR", "PCI_CAP_ID_VNDR", "PCI_CAP_ID_MSIX",
    "COMMON_CFG", "NOTIFY_CFG", "ISR_CFG", "DEVICE_CFG",
    "COMMON_OFF", "COMMON_LEN", "ISR_OFF", "DEVICE_OFF", "DEVICE_LEN", "WRITE_SEQ", "ACK_SEQ",
    "MSIX_TABLE_OFF", "MSIX_PBA_OFF", "NOTIFY_OFF", "NOTIFY_MULT", "BAR0_SIZE", "BAR4_SIZE", "CONFIG_SIZE",
    "CC", "LM", "NO_VECTOR", "DOORBELL_IDLE",
    "S_ACK", "S_DRIVER", "S_DRIVER_OK", "S_FEATURES_OK", "S_NEEDS_RESET", "S_FAILED",
    "build_config", "config_header", "parse_bdf", "vf_bdf", "ring_state_off", "BarFile", "MAX_PAIRS",
]

VENDOR_ID = 0x1AF4
DEVICE_ID = 0x1041  # modern virtio-net
SUBSYS_VENDOR_ID = 0x8086
SUBSYS_DEVICE_ID = 0x001A
CLASS_NET = 0x020000

CONFIG_SIZE = 256
CAP_PTR = 0x34
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_MSIX = 0x11
COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG = 1, 2, 3, 4

# -- BAR0 ----------------------------------------------------------------------------
COMMON_OFF, COMMON_LEN = 0x0000, 0x38
ISR_OFF, ISR_LEN = 0x0040, 4
DEVICE_OFF, DEVICE_LEN = 0x0080, 0x10
WRITE_SEQ = 0x00C0
ACK_SEQ = 0x00C4
MSIX_TABLE_OFF = 0x0800
MSIX_PBA_OFF = 0x0C00
NOTIFY_OFF = 0x1000
NOTIFY_MULT = 0x1000
#: IFCVF_MAX_QUEUES: queue pairs a VF may have.
MAX_PAIRS = 32


class CC:
    """Common cfg offsets (VDPA-FACTS §2.2)."""

    DEVICE_FEATURE_SELECT = 0x00
    DEVICE_FEATURE = 0x04
    GUEST_FEATURE_SELECT = 0x08
    GUEST_FEATURE = 0x0C
    MSIX_CONFIG = 0x10
    NUM_QUEUES = 0x12
    DEVICE_STATUS = 0x14
    CONFIG_GENERATION = 0x15
    QUEUE_SELECT = 0x16
    QUEUE_SIZE = 0x18
    QUEUE_MSIX_VECTOR = 0x1A
    QUEUE_ENABLE = 0x1C
    QUEUE_NOTIFY_OFF = 0x1E
    QUEUE_DESC_LO = 0x20
    QUEUE_DESC_HI = 0x24
    QUEUE_AVAIL_LO = 0x28
    QUEUE_AVAIL_HI = 0x2C
    QUEUE_USED_LO = 0x30
    QUEUE_USED_HI = 0x34


class LM:
    """BAR4 live-migration registers (VDPA-FACTS §2.4)."""

    LOGGING_CTRL = 0x00
    BASE_ADDR_LOW = 0x10
    BASE_ADDR_HIGH = 0x14
    END_ADDR_LOW = 0x18
    END_ADDR_HIGH = 0x1C
    RING_STATE = 0x20
    MQ_CFG = 0x28
    CFG_SIZE = 0x40
    ENABLE_VF = 0x1
    ENABLE_PF = 0x3


BAR4_SIZE = 0x1000
NO_VECTOR = 0xFFFF
#: What a doorbell word holds when no kick is pending (a kick writes the queue index).
DOORBELL_IDLE = 0xFFFF

S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET, S_FAILED = 0x01, 0x02, 0x04, 0x08, 0x40, 0x80


def bar0_size(num_queues: int) -> int:
    """BAR0 bytes for ``num_queues`` doorbell pages (a power of two, as BARs are)."""
    need = NOTIFY_OFF + num_queues * NOTIFY_MULT
    size = 0x1000
    while size < need:
        size <<= 1
    return size


BAR0_SIZE = bar0_size(2 * MAX_PAIRS + 1)


def ring_state_off(qid: int) -> int:
    """BAR4 offset of net queue ``qid``'s ring state: 0x20 + (qid/2)*0x40 + (qid%2)*4."""
    return LM.RING_STATE + (qid // 2) * LM.CFG_SIZE + (qid % 2) * 4


def _vndr_cap(nxt: int, cfg_type: int, bar: int, off: int, length: int, extra: bytes = b"") -> bytes:
    cap_len = 16 + len(extra)
    return struct.pack("<BBBBB3xII", PCI_CAP_ID_VNDR, nxt, cap_len, cfg_type, bar, off, length) + extra


def config_header(vendor: int, device: int, subsys_vendor: int, subsys_device: int, revision: int,
                  nvectors: int, *, msix_table: int, msix_pba: int, next_cap: int) -> bytearray:
    """A function's 256-byte config space: the type 0 header (a network controller, BAR0 and BAR4
    32-bit memory, bus master on) and the MSI-X capability at 0x40 (``nvectors``, table and PBA
    in BAR0), whose next pointer is ``next_cap``."""
    cs = bytearray(CONFIG_SIZE)
    struct.pack_into("<HH", cs, 0x00, vendor, device)
    struct.pack_into("<HH", cs, 0x04, 0x0006, 0x0010)  # command: memory + bus master; status: capability list
    cs[0x08] = revision
    cs[0x09:0x0C] = CLASS_NET.to_bytes(3, "little")
    cs[0x0E] = 0x00  # header type 0
    struct.pack_into("<I", cs, 0x10, 0xFE000000)  # BAR0: 32-bit memory (addresses are symbolic here)
    struct.pack_into("<I", cs, 0x20, 0xFD000000)  # BAR4
    struct.pack_into("<HH", cs, 0x2C, subsys_vendor, subsys_device)
    cs[CAP_PTR] = 0x40
    # MSI-X: id, next, message control (table size - 1), table offset|BIR, PBA offset|BIR
    struct.pack_into("<BBHII", cs, 0x40, PCI_CAP_ID_MSIX, next_cap, (nvectors - 1) & 0x7FF, msix_table | 0,
                     msix_pba | 0)
    return cs


def build_config(num_queues: int, nvectors: int) -> bytes:
    """The VF's 256-byte config space (capability list at 0x40: MSI-X, COMMON, NOTIFY, ISR, DEVICE)."""
    cs = config_header(VENDOR_ID, DEVICE_ID, SUBSYS_VENDOR_ID, SUBSYS_DEVICE_ID, 0x01, nvectors,
                       msix_table=MSIX_TABLE_OFF, msix_pba=MSIX_PBA_OFF, next_cap=0x4C)
    caps = [
        (0x4C, 0x5C, COMMON_CFG, COMMON_OFF, COMMON_LEN, b""),
        (0x5C, 0x70, NOTIFY_CFG, NOTIFY_OFF, num_queues * NOTIFY_MULT, struct.pack("<I", NOTIFY_MULT)),
        (0x70, 0x80, ISR_CFG, ISR_OFF, ISR_LEN, b""),
        (0x80, 0x00, DEVICE_CFG, DEVICE_OFF, DEVICE_LEN, b""),
    ]
    for pos, nxt, t, off, length, extra in caps:
        blob = _vndr_cap(nxt, t, 0, off, length, extra)
        cs[pos : pos + len(blob)] = blob
    return bytes(cs)


_BDF_RE = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def parse_bdf(bdf: str) -> tuple[int, int, int, int]:
    """``DDDD:BB:DD.F`` -> (domain, bus, device, function); ValueError otherwise."""
    m = _BDF_RE.match(bdf or "")
    if not m:
        raise ValueError(f"bad PCI address {bdf!r}: expected DDDD:BB:DD.F")
    return int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))


def vf_bdf(pf: str, i: int) -> str:
    """The BDF of VF ``i`` (0-based) of PF ``pf``: the functions after the PF's, then the next devices."""
    dom, bus, dev, fn = parse_bdf(pf)
    n = dev * 8 + fn + 1 + i
    if n >= 32 * 8:
        raise ValueError(f"too many VFs after {pf}")
    return f"{dom:04x}:{bus:02x}:{n // 8:02x}.{n % 8}"


class BarFile:
    """A file of ``size`` bytes mapped shared; ``u8`` / ``u16`` / ``u32`` views over it.

    ``create=True`` makes (truncates) the file; else it is opened as it is.
    """

    def __init__(self, path: str, size: int | None = None, *, create: bool = False):
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            elif size is None:
                size = os.fstat(fd).st_size
            self.size = int(size)
            self.mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.u8 = np.frombuffer(self.mm, np.uint8)
        self.u16 = self.u8.view(np.uint16)
        self.u32 = self.u8.view(np.uint32)

    def r8(self, off: int) -> int:
        return int(self.u8[off])

    def r16(self, off: int) -> int:
        return int(self.u16[off >> 1])

    def r32(self, off: int) -> int:
        return int(self.u32[off >> 2])

    def w8(self, off: int, v: int) -> None:
        self.u8[off] = v & 0xFF

    def w16(self, off: int, v: int) -> None:
        self.u16[off >> 1] = v & 0xFFFF

    def w32(self, off: int, v: int) -> None:
        self.u32[off >> 2] = v & 0xFFFFFFFF

    def close(self) -> None:
        self.u8 = self.u16 = self.u32 = None  # type: ignore[assignment]
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a view still exported: the mapping goes with the process
                pass
            self.mm = None
