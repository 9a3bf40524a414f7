"""Payload types of vhost-user messages: each parses and validates itself, and packs itself.

``Type.parse(data, request)`` checks the size (and the type's own rules) and
raises :class:`~dataplane.vhost_user.errors.ProtocolError` naming
``request`` and what was wrong; ``pack()`` is its inverse.  Fixed-size types
declare ``FORMAT`` (a struct format, native byte order, as on the wire).

:class:`Empty`, :class:`U64`, :class:`VringState`, :class:`VringAddr`,
:class:`MemoryRegion`, :class:`Memory`, :class:`MemRegMsg`, :class:`Log`,
:class:`IotlbMsg`, :class:`Config`, :class:`VringArea`, :class:`Inflight`,
:class:`Shared`, :class:`DeviceStateParams`, :class:`Opaque`: the spec's
payload structures, by their spec names where they have one.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from dataplane.vhost_user.errors import ProtocolError

__all__ = [
    "VHOST_MEMORY_BASELINE_NREGIONS",
    "VHOST_USER_MAX_CONFIG_SIZE",
    "VHOST_USER_VRING_IDX_MASK",
    "VHOST_USER_VRING_NOFD_MASK",
    "VHOST_VRING_F_LOG",
    "Payload",
    "Empty",
    "U64",
    "VringState",
    "VringAddr",
    "MemoryRegion",
    "Memory",
    "MemRegMsg",
    "Log",
    "IotlbMsg",
    "Config",
    "VringArea",
    "Inflight",
    "Shared",
    "DeviceStateParams",
    "Opaque",
]

#: SET_MEM_TABLE carries at most this many regions (QEMU's
#: VHOST_MEMORY_BASELINE_NREGIONS, DPDK's VHOST_MEMORY_MAX_NREGIONS).
VHOST_MEMORY_BASELINE_NREGIONS = 8
#: GET/SET_CONFIG carry at most this many bytes of device config space.
VHOST_USER_MAX_CONFIG_SIZE = 256
#: In the u64 payload of SET_VRING_KICK/CALL/ERR (and VRING_HOST_NOTIFIER_MSG):
#: bits 0-7 are the vring index, bit 8 means "no fd in the ancillary data: poll instead".
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 0x100
#: Bit of VringAddr.flags asking the back-end to log used-ring writes.
VHOST_VRING_F_LOG = 0


class Payload:
    """Base of the payload types: fixed-size ones declare ``FORMAT`` (struct, native order).

    ``parse(data, request)`` checks the size (and the type's own rules) and
    raises :class:`ProtocolError` naming ``request``; ``pack()`` is its inverse.
    """

    FORMAT: ClassVar[str] = ""

    @classmethod
    def wire_size(cls) -> int:
        return struct.calcsize(cls.FORMAT)

    @classmethod
    def _check_size(cls, data: bytes, request: str) -> None:
        if len(data) != cls.wire_size():
            raise ProtocolError(request, f"payload size {len(data)}, expected {cls.wire_size()} ({cls.__name__})")

    @classmethod
    def parse(cls, data: bytes, request: str = "payload"):
        cls._check_size(data, request)
        return cls(*struct.unpack(cls.FORMAT, data))  # type: ignore[call-arg]

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, *self._fields())

    def _fields(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))  # type: ignore[arg-type]


@dataclass
class Empty(Payload):
    """No payload ("N/A" in the spec): size must be 0."""

    FORMAT: ClassVar[str] = "="


@dataclass
class U64(Payload):
    """A single 64-bit integer."""

    FORMAT: ClassVar[str] = "=Q"
    u64: int = 0


@dataclass
class VringState(Payload):
    """Vring state description: ``index u32, num u32``."""

    FORMAT: ClassVar[str] = "=II"
    index: int = 0
    num: int = 0


@dataclass
class VringAddr(Payload):
    """Vring address description.  Note the wire order: desc, used, avail, log.

    The three ring addresses are front-end *user* addresses (QVA) unless
    ACCESS_PLATFORM is negotiated (then IOVA, not supported here).  For a
    packed ring, ``avail_user_addr`` is the driver event area and
    ``used_user_addr`` the device event area.
    """

    FORMAT: ClassVar[str] = "=IIQQQQ"
    index: int = 0
    flags: int = 0
    desc_user_addr: int = 0
    used_user_addr: int = 0
    avail_user_addr: int = 0
    log_guest_addr: int = 0


@dataclass
class MemoryRegion(Payload):
    """One memory region: ``guest_phys_addr, memory_size, userspace_addr, mmap_offset`` (u64 each)."""

    FORMAT: ClassVar[str] = "=QQQQ"
    guest_phys_addr: int = 0
    memory_size: int = 0
    userspace_addr: int = 0
    mmap_offset: int = 0


_REGION_SIZE = MemoryRegion.wire_size()


@dataclass
class Memory(Payload):
    """Multiple memory regions description (SET_MEM_TABLE): ``nregions u32, padding u32, regions[]``.

    Front-ends send either exactly ``8 + 32 * nregions`` bytes (QEMU, DPDK) or
    the whole fixed-size struct (8 + 32 * 8); both are accepted.
    """

    FORMAT: ClassVar[str] = "=II"
    regions: list[MemoryRegion] = field(default_factory=list)
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes, request: str = "payload") -> "Memory":
        if len(data) < 8:
            raise ProtocolError(request, f"payload size {len(data)}, expected at least 8 (Memory header)")
        nregions, padding = struct.unpack_from("=II", data)
        if nregions > VHOST_MEMORY_BASELINE_NREGIONS:
            raise ProtocolError(request, f"too many memory regions: {nregions} > {VHOST_MEMORY_BASELINE_NREGIONS}")
        exact = 8 + _REGION_SIZE * nregions
        full = 8 + _REGION_SIZE * VHOST_MEMORY_BASELINE_NREGIONS
        if len(data) not in (exact, full):
            raise ProtocolError(request, f"payload size {len(data)}, expected {exact} for {nregions} regions")
        regions = [MemoryRegion.parse(data[8 + i * _REGION_SIZE : 8 + (i + 1) * _REGION_SIZE], request) for i in range(nregions)]
        return cls(regions, padding)

    def pack(self) -> bytes:
        return struct.pack("=II", len(self.regions), self.padding) + b"".join(r.pack() for r in self.regions)


@dataclass
class MemRegMsg(Payload):
    """Single memory region description (ADD/REM_MEM_REG): ``padding u64`` + one region."""

    FORMAT: ClassVar[str] = "=QQQQQ"
    region: MemoryRegion = field(default_factory=MemoryRegion)
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes, request: str = "payload") -> "MemRegMsg":
        cls._check_size(data, request)
        padding = struct.unpack_from("=Q", data)[0]
        return cls(MemoryRegion.parse(data[8:], request), padding)

    def pack(self) -> bytes:
        return struct.pack("=Q", self.padding) + self.region.pack()


@dataclass
class Log(Payload):
    """Log description (SET_LOG_BASE): ``mmap_size u64, mmap_offset u64``."""

    FORMAT: ClassVar[str] = "=QQ"
    mmap_size: int = 0
    mmap_offset: int = 0


@dataclass
class IotlbMsg(Payload):
    """``struct vhost_iotlb_msg``: iova, size, uaddr (u64), perm u8, type u8, padded to 32 bytes."""

    FORMAT: ClassVar[str] = "=QQQBB6x"
    iova: int = 0
    size: int = 0
    uaddr: int = 0
    perm: int = 0
    type: int = 0

    MISS: ClassVar[int] = 1
    UPDATE: ClassVar[int] = 2
    INVALIDATE: ClassVar[int] = 3
    ACCESS_FAIL: ClassVar[int] = 4


@dataclass
class Config(Payload):
    """Virtio device config space (GET/SET_CONFIG): ``offset u32, size u32, flags u32, payload[size]``.

    ``size`` is at most :data:`VHOST_USER_MAX_CONFIG_SIZE`; the message carries
    either exactly ``size`` payload bytes or the full 256-byte buffer.
    """

    FORMAT: ClassVar[str] = "=III"
    offset: int = 0
    size: int = 0
    flags: int = 0
    payload: bytes = b""

    #: flags: a write of the front-end's writable fields / a live-migration restore.
    WRITABLE_FIELDS: ClassVar[int] = 0
    MIGRATION: ClassVar[int] = 1

    @classmethod
    def parse(cls, data: bytes, request: str = "payload") -> "Config":
        if len(data) < 12:
            raise ProtocolError(request, f"payload size {len(data)}, expected at least 12 (Config header)")
        offset, size, flags = struct.unpack_from("=III", data)
        if size > VHOST_USER_MAX_CONFIG_SIZE:
            raise ProtocolError(request, f"config size {size} > {VHOST_USER_MAX_CONFIG_SIZE}")
        if len(data) not in (12 + size, 12 + VHOST_USER_MAX_CONFIG_SIZE):
            raise ProtocolError(request, f"payload size {len(data)}, expected {12 + size} for a {size}-byte config access")
        return cls(offset, size, flags, bytes(data[12 : 12 + size]))

    def pack(self) -> bytes:
        return struct.pack("=III", self.offset, self.size, self.flags) + bytes(self.payload)


@dataclass
class VringArea(Payload):
    """Vring area description (backend VRING_HOST_NOTIFIER_MSG): ``u64 (index | NOFD), size, offset``."""

    FORMAT: ClassVar[str] = "=QQQ"
    u64: int = 0
    size: int = 0
    offset: int = 0


@dataclass
class Inflight(Payload):
    """Inflight description: ``mmap_size u64, mmap_offset u64, num_queues u16, queue_size u16`` (24 bytes, C layout)."""

    FORMAT: ClassVar[str] = "=QQHH4x"
    mmap_size: int = 0
    mmap_offset: int = 0
    num_queues: int = 0
    queue_size: int = 0


@dataclass
class Shared(Payload):
    """VhostUserShared: a 16-byte UUID (shared objects)."""

    FORMAT: ClassVar[str] = "=16s"
    uuid: bytes = bytes(16)


@dataclass
class DeviceStateParams(Payload):
    """Device state transfer parameters: ``transfer_direction u32, migration_phase u32``."""

    FORMAT: ClassVar[str] = "=II"
    direction: int = 0
    phase: int = 0


@dataclass
class Opaque(Payload):
    """A payload we do not interpret (crypto sessions): any size up to the limit."""

    data: bytes = b""

    @classmethod
    def parse(cls, data: bytes, request: str = "payload") -> "Opaque":
        return cls(bytes(data))

    def pack(self) -> bytes:
        return bytes(self.data)
