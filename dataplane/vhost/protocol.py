"""The vhost-user protocol as data: request numbers, feature bits, payload types, framing.

Everything here is pure data and parsing; no sockets, no device state.  The
facts come from the spec (QEMU ``docs/interop/vhost-user.rst``) and DPDK's
``lib/vhost``; DESIGN.md §3 lists them too.

**Framing.**  A message is a 12-byte header ``request u32 | flags u32 |
size u32`` (native byte order) followed by ``size`` payload bytes.  Flags:
version ``0x1`` in the low two bits (:data:`VHOST_USER_VERSION_MASK`),
:data:`VHOST_USER_REPLY_MASK` on every reply from the back-end,
:data:`VHOST_USER_NEED_REPLY_MASK` when the front-end wants a REPLY_ACK.
File descriptors travel as ``SCM_RIGHTS`` ancillary data attached to the
first byte of the header.

**Requests.**  :data:`FRONTEND_REQUESTS` and :data:`BACKEND_REQUESTS` map each
request number to a :class:`RequestSpec`: name, request payload type, reply
payload type and the rule for how many fds it carries.  :func:`parse_request`
checks a received message against its spec and returns the payload object;
every failure is a :class:`ProtocolError` naming the request and what was
wrong.

**Payloads.**  Small classes (:class:`U64`, :class:`VringState`,
:class:`VringAddr`, :class:`Memory`, :class:`MemRegMsg`, :class:`Log`,
:class:`IotlbMsg`, :class:`Config`, :class:`VringArea`, :class:`Inflight`,
:class:`Shared`, :class:`DeviceStateParams`, :class:`Opaque`) that parse and
validate themselves from bytes (``parse``) and serialise (``pack``).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import struct
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "VHOST_USER_HDR_SIZE",
    "VHOST_USER_VERSION",
    "VHOST_USER_VERSION_MASK",
    "VHOST_USER_REPLY_MASK",
    "VHOST_USER_NEED_REPLY_MASK",
    "VHOST_USER_VRING_IDX_MASK",
    "VHOST_USER_VRING_NOFD_MASK",
    "VHOST_MEMORY_BASELINE_NREGIONS",
    "VHOST_USER_MAX_RAM_SLOTS",
    "VHOST_USER_MAX_CONFIG_SIZE",
    "VHOST_USER_MAX_FDS",
    "VHOST_USER_MAX_PAYLOAD",
    "VHOST_VRING_F_LOG",
    "VhostUserRequest",
    "VhostUserBackendRequest",
    "VhostUserProtocolFeature",
    "VirtioFeature",
    "VirtioDeviceStatus",
    "FdRule",
    "RequestSpec",
    "FRONTEND_REQUESTS",
    "BACKEND_REQUESTS",
    "ProtocolError",
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
    "Header",
    "Message",
    "bit",
    "features_str",
    "request_name",
    "parse_request",
]

# ---------------------------------------------------------------------------
# Header and general limits
# ---------------------------------------------------------------------------

#: Size of the message header (request, flags, size: three u32).
VHOST_USER_HDR_SIZE = 12
#: The protocol version we speak, in the low two bits of ``flags``.
VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0x3
#: Set on every reply sent by the back-end.
VHOST_USER_REPLY_MASK = 0x4
#: Set by the front-end to ask for a u64 0 (success) / non-zero (failure) reply.
VHOST_USER_NEED_REPLY_MASK = 0x8
#: Flag bits a front-end request may carry.
VHOST_USER_REQUEST_FLAGS = VHOST_USER_VERSION_MASK | VHOST_USER_NEED_REPLY_MASK

#: In the u64 payload of SET_VRING_KICK/CALL/ERR: bits 0-7 are the vring index,
#: bit 8 means "no fd in the ancillary data: poll instead".
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 0x100

#: SET_MEM_TABLE carries at most this many regions (QEMU's
#: VHOST_MEMORY_BASELINE_NREGIONS, DPDK's VHOST_MEMORY_MAX_NREGIONS).
VHOST_MEMORY_BASELINE_NREGIONS = 8
#: What we answer to GET_MAX_MEM_SLOTS (regions added one by one with ADD_MEM_REG).
VHOST_USER_MAX_RAM_SLOTS = 32
#: GET/SET_CONFIG carry at most this many bytes of device config space.
VHOST_USER_MAX_CONFIG_SIZE = 256
#: The most fds any request legitimately carries (SET_MEM_TABLE: one per region).
VHOST_USER_MAX_FDS = VHOST_MEMORY_BASELINE_NREGIONS
#: Payloads larger than this are garbage (the largest real one, a crypto
#: session, is under 2 KiB): the stream cannot be trusted, close it.
VHOST_USER_MAX_PAYLOAD = 4096

#: Bit of VringAddr.flags asking the back-end to log used-ring writes.
VHOST_VRING_F_LOG = 0


def bit(n: int) -> int:
    """``1 << n`` (a feature mask from a bit number)."""
    return 1 << int(n)


# ---------------------------------------------------------------------------
# Request numbers
# ---------------------------------------------------------------------------


class VhostUserRequest(enum.IntEnum):
    """Front-end → back-end requests (the spec's "front-end message types")."""

    VHOST_USER_GET_FEATURES = 1
    VHOST_USER_SET_FEATURES = 2
    VHOST_USER_SET_OWNER = 3
    VHOST_USER_RESET_OWNER = 4
    VHOST_USER_SET_MEM_TABLE = 5
    VHOST_USER_SET_LOG_BASE = 6
    VHOST_USER_SET_LOG_FD = 7
    VHOST_USER_SET_VRING_NUM = 8
    VHOST_USER_SET_VRING_ADDR = 9
    VHOST_USER_SET_VRING_BASE = 10
    VHOST_USER_GET_VRING_BASE = 11
    VHOST_USER_SET_VRING_KICK = 12
    VHOST_USER_SET_VRING_CALL = 13
    VHOST_USER_SET_VRING_ERR = 14
    VHOST_USER_GET_PROTOCOL_FEATURES = 15
    VHOST_USER_SET_PROTOCOL_FEATURES = 16
    VHOST_USER_GET_QUEUE_NUM = 17
    VHOST_USER_SET_VRING_ENABLE = 18
    VHOST_USER_SEND_RARP = 19
    VHOST_USER_NET_SET_MTU = 20
    VHOST_USER_SET_BACKEND_REQ_FD = 21
    VHOST_USER_IOTLB_MSG = 22
    VHOST_USER_SET_VRING_ENDIAN = 23
    VHOST_USER_GET_CONFIG = 24
    VHOST_USER_SET_CONFIG = 25
    VHOST_USER_CREATE_CRYPTO_SESSION = 26
    VHOST_USER_CLOSE_CRYPTO_SESSION = 27
    VHOST_USER_POSTCOPY_ADVISE = 28
    VHOST_USER_POSTCOPY_LISTEN = 29
    VHOST_USER_POSTCOPY_END = 30
    VHOST_USER_GET_INFLIGHT_FD = 31
    VHOST_USER_SET_INFLIGHT_FD = 32
    VHOST_USER_GPU_SET_SOCKET = 33
    VHOST_USER_RESET_DEVICE = 34
    VHOST_USER_VRING_KICK = 35
    VHOST_USER_GET_MAX_MEM_SLOTS = 36
    VHOST_USER_ADD_MEM_REG = 37
    VHOST_USER_REM_MEM_REG = 38
    VHOST_USER_SET_STATUS = 39
    VHOST_USER_GET_STATUS = 40
    VHOST_USER_GET_SHARED_OBJECT = 41
    VHOST_USER_SET_DEVICE_STATE_FD = 42
    VHOST_USER_CHECK_DEVICE_STATE = 43


class VhostUserBackendRequest(enum.IntEnum):
    """Back-end → front-end requests, sent on the SET_BACKEND_REQ_FD channel."""

    VHOST_USER_BACKEND_IOTLB_MSG = 1
    VHOST_USER_BACKEND_CONFIG_CHANGE_MSG = 2
    VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG = 3
    VHOST_USER_BACKEND_VRING_CALL = 4
    VHOST_USER_BACKEND_VRING_ERR = 5
    VHOST_USER_BACKEND_SHARED_OBJECT_ADD = 6
    VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE = 7
    VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP = 8


# The spec names as module constants: protocol.VHOST_USER_SET_VRING_ADDR, ...
globals().update(VhostUserRequest.__members__)
globals().update(VhostUserBackendRequest.__members__)


class VhostUserProtocolFeature(enum.IntEnum):
    """Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES)."""

    VHOST_USER_PROTOCOL_F_MQ = 0
    VHOST_USER_PROTOCOL_F_LOG_SHMFD = 1
    VHOST_USER_PROTOCOL_F_RARP = 2
    VHOST_USER_PROTOCOL_F_REPLY_ACK = 3
    VHOST_USER_PROTOCOL_F_MTU = 4
    VHOST_USER_PROTOCOL_F_BACKEND_REQ = 5
    VHOST_USER_PROTOCOL_F_CROSS_ENDIAN = 6
    VHOST_USER_PROTOCOL_F_CRYPTO_SESSION = 7
    VHOST_USER_PROTOCOL_F_PAGEFAULT = 8
    VHOST_USER_PROTOCOL_F_CONFIG = 9
    VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD = 10
    VHOST_USER_PROTOCOL_F_HOST_NOTIFIER = 11
    VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 12
    VHOST_USER_PROTOCOL_F_RESET_DEVICE = 13
    VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS = 14
    VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15
    VHOST_USER_PROTOCOL_F_STATUS = 16
    VHOST_USER_PROTOCOL_F_XEN_MMAP = 17
    VHOST_USER_PROTOCOL_F_SHARED_OBJECT = 18
    VHOST_USER_PROTOCOL_F_DEVICE_STATE = 19


globals().update(VhostUserProtocolFeature.__members__)


class VirtioFeature(enum.IntEnum):
    """Virtio (net) feature bit numbers used here, plus the two vhost-specific ones."""

    VIRTIO_NET_F_CSUM = 0
    VIRTIO_NET_F_GUEST_CSUM = 1
    VIRTIO_NET_F_MTU = 3
    VIRTIO_NET_F_MAC = 5
    VIRTIO_NET_F_GSO = 6
    VIRTIO_NET_F_GUEST_TSO4 = 7
    VIRTIO_NET_F_GUEST_TSO6 = 8
    VIRTIO_NET_F_GUEST_ECN = 9
    VIRTIO_NET_F_GUEST_UFO = 10
    VIRTIO_NET_F_HOST_TSO4 = 11
    VIRTIO_NET_F_HOST_TSO6 = 12
    VIRTIO_NET_F_HOST_ECN = 13
    VIRTIO_NET_F_HOST_UFO = 14
    VIRTIO_NET_F_MRG_RXBUF = 15
    VIRTIO_NET_F_STATUS = 16
    VIRTIO_NET_F_CTRL_VQ = 17
    VIRTIO_NET_F_CTRL_RX = 18
    VIRTIO_NET_F_CTRL_VLAN = 19
    VIRTIO_NET_F_GUEST_ANNOUNCE = 21
    VIRTIO_NET_F_MQ = 22
    VIRTIO_NET_F_CTRL_MAC_ADDR = 23
    VHOST_F_LOG_ALL = 26
    VIRTIO_F_ANY_LAYOUT = 27
    VIRTIO_RING_F_INDIRECT_DESC = 28
    VIRTIO_RING_F_EVENT_IDX = 29
    VHOST_USER_F_PROTOCOL_FEATURES = 30
    VIRTIO_F_VERSION_1 = 32
    VIRTIO_F_ACCESS_PLATFORM = 33  # a.k.a. VIRTIO_F_IOMMU_PLATFORM
    VIRTIO_F_RING_PACKED = 34
    VIRTIO_F_IN_ORDER = 35
    VIRTIO_F_ORDER_PLATFORM = 36


globals().update(VirtioFeature.__members__)
VIRTIO_F_IOMMU_PLATFORM = VirtioFeature.VIRTIO_F_ACCESS_PLATFORM


class VirtioDeviceStatus(enum.IntFlag):
    """The virtio device status byte (SET_STATUS / GET_STATUS)."""

    RESET = 0
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


def features_str(mask: int, names: type[enum.IntEnum] = VirtioFeature) -> str:
    """``"VIRTIO_F_VERSION_1|VIRTIO_NET_F_MQ|bit40"`` for a feature mask (logs, errors)."""
    parts = []
    for n in range(64):
        if mask >> n & 1:
            try:
                parts.append(names(n).name)
            except ValueError:
                parts.append(f"bit{n}")
    return "|".join(parts) or "0"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ProtocolError(Exception):
    """A message does not follow the protocol.

    ``request`` is the request's spec name (or ``"request N"`` for unknown
    numbers), ``reason`` says what was wrong, e.g. ``"payload size 4, expected 8"``.
    """

    def __init__(self, request: str, reason: str):
        super().__init__(f"{request}: {reason}")
        self.request = request
        self.reason = reason


# ---------------------------------------------------------------------------
# Payload types
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The request table
# ---------------------------------------------------------------------------


class FdRule(enum.Enum):
    """How many fds a request carries in its ancillary data."""

    NONE = "none"  # exactly 0
    ONE = "one"  # exactly 1
    VRING_FILE = "vring-file"  # 1, or 0 when the u64 payload has VHOST_USER_VRING_NOFD_MASK
    PER_REGION = "per-region"  # one per memory region of a Memory payload
    OPTIONAL_ONE = "optional-one"  # 0 or 1 (REM_MEM_REG: MAY carry one, which MUST be closed)


@dataclass(frozen=True)
class RequestSpec:
    """One request: number, spec name, request/reply payload types, fd rule.

    ``reply`` is the payload type of the reply the request always gets
    (``None``: no reply unless NEED_REPLY asks for a REPLY_ACK u64).
    ``reply_fds`` says whether that reply may carry an fd.
    """

    number: int
    name: str
    payload: type[Payload]
    reply: type[Payload] | None = None
    fds: FdRule = FdRule.NONE
    reply_fds: bool = False

    def expected_fds(self, payload: Payload) -> tuple[int, int]:
        """``(min, max)`` number of fds this request must carry, given its parsed payload."""
        if self.fds is FdRule.NONE:
            return 0, 0
        if self.fds is FdRule.ONE:
            return 1, 1
        if self.fds is FdRule.OPTIONAL_ONE:
            return 0, 1
        if self.fds is FdRule.VRING_FILE:
            n = 0 if payload.u64 & VHOST_USER_VRING_NOFD_MASK else 1  # type: ignore[attr-defined]
            return n, n
        n = len(payload.regions)  # type: ignore[attr-defined]  # PER_REGION
        return n, n


R = VhostUserRequest
_F = FdRule
_FRONTEND: list[RequestSpec] = [
    RequestSpec(R.VHOST_USER_GET_FEATURES, "VHOST_USER_GET_FEATURES", Empty, U64),
    RequestSpec(R.VHOST_USER_SET_FEATURES, "VHOST_USER_SET_FEATURES", U64),
    RequestSpec(R.VHOST_USER_SET_OWNER, "VHOST_USER_SET_OWNER", Empty),
    RequestSpec(R.VHOST_USER_RESET_OWNER, "VHOST_USER_RESET_OWNER", Empty),
    RequestSpec(R.VHOST_USER_SET_MEM_TABLE, "VHOST_USER_SET_MEM_TABLE", Memory, None, _F.PER_REGION),
    RequestSpec(R.VHOST_USER_SET_LOG_BASE, "VHOST_USER_SET_LOG_BASE", Log, Empty, _F.ONE),
    RequestSpec(R.VHOST_USER_SET_LOG_FD, "VHOST_USER_SET_LOG_FD", Empty, None, _F.ONE),
    RequestSpec(R.VHOST_USER_SET_VRING_NUM, "VHOST_USER_SET_VRING_NUM", VringState),
    RequestSpec(R.VHOST_USER_SET_VRING_ADDR, "VHOST_USER_SET_VRING_ADDR", VringAddr),
    RequestSpec(R.VHOST_USER_SET_VRING_BASE, "VHOST_USER_SET_VRING_BASE", VringState),
    RequestSpec(R.VHOST_USER_GET_VRING_BASE, "VHOST_USER_GET_VRING_BASE", VringState, VringState),
    RequestSpec(R.VHOST_USER_SET_VRING_KICK, "VHOST_USER_SET_VRING_KICK", U64, None, _F.VRING_FILE),
    RequestSpec(R.VHOST_USER_SET_VRING_CALL, "VHOST_USER_SET_VRING_CALL", U64, None, _F.VRING_FILE),
    RequestSpec(R.VHOST_USER_SET_VRING_ERR, "VHOST_USER_SET_VRING_ERR", U64, None, _F.VRING_FILE),
    RequestSpec(R.VHOST_USER_GET_PROTOCOL_FEATURES, "VHOST_USER_GET_PROTOCOL_FEATURES", Empty, U64),
    RequestSpec(R.VHOST_USER_SET_PROTOCOL_FEATURES, "VHOST_USER_SET_PROTOCOL_FEATURES", U64),
    RequestSpec(R.VHOST_USER_GET_QUEUE_NUM, "VHOST_USER_GET_QUEUE_NUM", Empty, U64),
    RequestSpec(R.VHOST_USER_SET_VRING_ENABLE, "VHOST_USER_SET_VRING_ENABLE", VringState),
    RequestSpec(R.VHOST_USER_SEND_RARP, "VHOST_USER_SEND_RARP", U64),
    RequestSpec(R.VHOST_USER_NET_SET_MTU, "VHOST_USER_NET_SET_MTU", U64),
    RequestSpec(R.VHOST_USER_SET_BACKEND_REQ_FD, "VHOST_USER_SET_BACKEND_REQ_FD", Empty, None, _F.ONE),
    RequestSpec(R.VHOST_USER_IOTLB_MSG, "VHOST_USER_IOTLB_MSG", IotlbMsg, U64),
    RequestSpec(R.VHOST_USER_SET_VRING_ENDIAN, "VHOST_USER_SET_VRING_ENDIAN", VringState),
    RequestSpec(R.VHOST_USER_GET_CONFIG, "VHOST_USER_GET_CONFIG", Config, Config),
    RequestSpec(R.VHOST_USER_SET_CONFIG, "VHOST_USER_SET_CONFIG", Config),
    RequestSpec(R.VHOST_USER_CREATE_CRYPTO_SESSION, "VHOST_USER_CREATE_CRYPTO_SESSION", Opaque, Opaque),
    RequestSpec(R.VHOST_USER_CLOSE_CRYPTO_SESSION, "VHOST_USER_CLOSE_CRYPTO_SESSION", U64),
    RequestSpec(R.VHOST_USER_POSTCOPY_ADVISE, "VHOST_USER_POSTCOPY_ADVISE", Empty, Empty, _F.NONE, reply_fds=True),
    RequestSpec(R.VHOST_USER_POSTCOPY_LISTEN, "VHOST_USER_POSTCOPY_LISTEN", Empty),
    RequestSpec(R.VHOST_USER_POSTCOPY_END, "VHOST_USER_POSTCOPY_END", Empty, U64),
    RequestSpec(R.VHOST_USER_GET_INFLIGHT_FD, "VHOST_USER_GET_INFLIGHT_FD", Inflight, Inflight, reply_fds=True),
    RequestSpec(R.VHOST_USER_SET_INFLIGHT_FD, "VHOST_USER_SET_INFLIGHT_FD", Inflight, None, _F.ONE),
    RequestSpec(R.VHOST_USER_GPU_SET_SOCKET, "VHOST_USER_GPU_SET_SOCKET", Empty, None, _F.ONE),
    RequestSpec(R.VHOST_USER_RESET_DEVICE, "VHOST_USER_RESET_DEVICE", Empty),
    RequestSpec(R.VHOST_USER_VRING_KICK, "VHOST_USER_VRING_KICK", VringState),
    RequestSpec(R.VHOST_USER_GET_MAX_MEM_SLOTS, "VHOST_USER_GET_MAX_MEM_SLOTS", Empty, U64),
    RequestSpec(R.VHOST_USER_ADD_MEM_REG, "VHOST_USER_ADD_MEM_REG", MemRegMsg, None, _F.ONE),
    RequestSpec(R.VHOST_USER_REM_MEM_REG, "VHOST_USER_REM_MEM_REG", MemRegMsg, None, _F.OPTIONAL_ONE),
    RequestSpec(R.VHOST_USER_SET_STATUS, "VHOST_USER_SET_STATUS", U64),
    RequestSpec(R.VHOST_USER_GET_STATUS, "VHOST_USER_GET_STATUS", Empty, U64),
    RequestSpec(R.VHOST_USER_GET_SHARED_OBJECT, "VHOST_USER_GET_SHARED_OBJECT", Shared, U64, reply_fds=True),
    RequestSpec(R.VHOST_USER_SET_DEVICE_STATE_FD, "VHOST_USER_SET_DEVICE_STATE_FD", DeviceStateParams, U64, _F.ONE, reply_fds=True),
    RequestSpec(R.VHOST_USER_CHECK_DEVICE_STATE, "VHOST_USER_CHECK_DEVICE_STATE", Empty, U64),
]
del R

B = VhostUserBackendRequest
_BACKEND: list[RequestSpec] = [
    RequestSpec(B.VHOST_USER_BACKEND_IOTLB_MSG, "VHOST_USER_BACKEND_IOTLB_MSG", IotlbMsg),
    RequestSpec(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG", Empty),
    RequestSpec(B.VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG, "VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG", VringArea, None, _F.VRING_FILE),
    RequestSpec(B.VHOST_USER_BACKEND_VRING_CALL, "VHOST_USER_BACKEND_VRING_CALL", VringState),
    RequestSpec(B.VHOST_USER_BACKEND_VRING_ERR, "VHOST_USER_BACKEND_VRING_ERR", VringState),
    RequestSpec(B.VHOST_USER_BACKEND_SHARED_OBJECT_ADD, "VHOST_USER_BACKEND_SHARED_OBJECT_ADD", Shared),
    RequestSpec(B.VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE, "VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE", Shared),
    RequestSpec(B.VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP, "VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP", Shared, U64, reply_fds=True),
]
del B, _F

#: request number -> spec, for front-end → back-end requests (1..43).
FRONTEND_REQUESTS: dict[int, RequestSpec] = {s.number: s for s in _FRONTEND}
#: request number -> spec, for back-end → front-end requests (1..8).
BACKEND_REQUESTS: dict[int, RequestSpec] = {s.number: s for s in _BACKEND}


def request_name(number: int, table: dict[int, RequestSpec] = FRONTEND_REQUESTS) -> str:
    """The spec name of a request number, or ``"request N"`` for an unknown one."""
    spec = table.get(number)
    return spec.name if spec is not None else f"request {number}"


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The 12-byte message header."""

    request: int
    flags: int
    size: int

    FORMAT: ClassVar[str] = "=III"

    @classmethod
    def parse(cls, data: bytes) -> "Header":
        if len(data) != VHOST_USER_HDR_SIZE:
            raise ProtocolError("header", f"{len(data)} bytes, expected {VHOST_USER_HDR_SIZE}")
        return cls(*struct.unpack(cls.FORMAT, data))

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, self.request, self.flags, self.size)

    @property
    def version(self) -> int:
        return self.flags & VHOST_USER_VERSION_MASK

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_NEED_REPLY_MASK)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_REPLY_MASK)


@dataclass
class Message:
    """A message: request number, flags, raw payload bytes and the fds that came with it.

    Received fds are owned by the message until a handler takes one with
    :meth:`take_fd`; :meth:`close_fds` closes those left (the receive loop
    always calls it), so no fd leaks on any path.
    """

    request: int
    flags: int = VHOST_USER_VERSION
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def header(self) -> Header:
        return Header(self.request, self.flags, len(self.payload))

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_NEED_REPLY_MASK)

    def encode(self) -> bytes:
        """Header + payload bytes (fds are sent separately as ancillary data)."""
        return self.header.pack() + bytes(self.payload)

    def take_fd(self, i: int = 0) -> int:
        """Take ownership of fd ``i`` (the caller now closes it); -1 if absent."""
        if i >= len(self.fds):
            return -1
        fd, self.fds[i] = self.fds[i], -1
        return fd

    def close_fds(self) -> None:
        """Close every fd not taken."""
        for i, fd in enumerate(self.fds):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                self.fds[i] = -1


def parse_request(msg: Message, table: dict[int, RequestSpec] = FRONTEND_REQUESTS) -> tuple[RequestSpec, Payload]:
    """Check ``msg`` against its request spec: known number, flags, payload, fd count.

    Returns ``(spec, payload object)``.  Raises :class:`ProtocolError` (with the
    request's name and the reason) on an unknown request, a reply flag on a
    request, a malformed payload, or a wrong number of fds.
    """
    spec = table.get(msg.request)
    name = request_name(msg.request, table)
    if spec is None:
        raise ProtocolError(name, "unknown request number")
    if msg.flags & VHOST_USER_REPLY_MASK:
        raise ProtocolError(name, f"reply flag set on a request (flags {msg.flags:#x})")
    if msg.flags & ~VHOST_USER_REQUEST_FLAGS:
        raise ProtocolError(name, f"undefined flag bits {msg.flags & ~VHOST_USER_REQUEST_FLAGS:#x}")
    payload = spec.payload.parse(msg.payload, name)
    lo, hi = spec.expected_fds(payload)
    n = len(msg.fds)
    if not lo <= n <= hi:
        want = str(lo) if lo == hi else f"{lo}..{hi}"
        raise ProtocolError(name, f"fd count mismatch: got {n}, expected {want}")
    return spec, payload


#: For tests and tools: a request's payload type, reply type and fd rule by name.
SPEC_BY_NAME: dict[str, RequestSpec] = {s.name: s for s in _FRONTEND}

# Checked at import: the table covers 1..43 and 1..8 exactly.
assert sorted(FRONTEND_REQUESTS) == list(range(1, 44))
assert sorted(BACKEND_REQUESTS) == list(range(1, 9))

