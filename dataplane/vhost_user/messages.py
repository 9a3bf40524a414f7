"""vhost-user messages: the header, the request numbers and the one message table.

**Header.**  A message is a 12-byte header ``request u32 | flags u32 |
size u32`` (native byte order) followed by ``size`` payload bytes.  Flags:
version ``0x1`` in the low two bits (:data:`VHOST_USER_VERSION_MASK`),
:data:`VHOST_USER_REPLY_MASK` on every reply, :data:`VHOST_USER_NEED_REPLY_MASK`
when the sender wants a REPLY_ACK.  File descriptors travel as
``SCM_RIGHTS`` ancillary data with the first byte of the header
(:mod:`~dataplane.vhost_user.endpoint` frames all of it).

**The message table.**  One :class:`MessageSpec` row per request, for
front-end requests 1-43 (:data:`FRONTEND_REQUESTS`) and back-end requests
1-8 (:data:`BACKEND_REQUESTS`): number, spec name, payload type (which
validates itself), reply payload type, the fds it may carry, the protocol
feature that gates it, and who handles it (:class:`Handler`) -- or that
it is unsupported, and why.  Handlers are bound by the side that serves the
request (the back-end's state machine, its device class); the row says
whether one exists.  :func:`parse_request` checks a received request
against its row.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from dataplane.vhost_user.errors import ProtocolError
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF
from dataplane.vhost_user.payloads import (
    VHOST_MEMORY_BASELINE_NREGIONS,
    VHOST_USER_VRING_NOFD_MASK,
    Config,
    DeviceStateParams,
    Empty,
    Inflight,
    IotlbMsg,
    Log,
    Memory,
    MemRegMsg,
    Opaque,
    Payload,
    Shared,
    U64,
    VringAddr,
    VringArea,
    VringState,
)

__all__ = [
    "VHOST_USER_HDR_SIZE",
    "VHOST_USER_VERSION",
    "VHOST_USER_VERSION_MASK",
    "VHOST_USER_REPLY_MASK",
    "VHOST_USER_NEED_REPLY_MASK",
    "VHOST_USER_MAX_FDS",
    "VHOST_USER_MAX_PAYLOAD",
    "VhostUserRequest",
    "VhostUserBackendRequest",
    "FdRule",
    "Handler",
    "MessageSpec",
    "FRONTEND_REQUESTS",
    "BACKEND_REQUESTS",
    "SPEC_BY_NAME",
    "Header",
    "Message",
    "request_name",
    "parse_request",
    "parse_reply",
]

# ---------------------------------------------------------------------------
# Header and general limits
# ---------------------------------------------------------------------------

#: Size of the message header (request, flags, size: three u32).
VHOST_USER_HDR_SIZE = 12
#: The protocol version we speak, in the low two bits of ``flags``.
VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0x3
#: Set on every reply.
VHOST_USER_REPLY_MASK = 0x4
#: Set by the sender to ask for a u64 0 (success) / non-zero (failure) reply.
VHOST_USER_NEED_REPLY_MASK = 0x8
#: Flag bits a request may carry.
VHOST_USER_REQUEST_FLAGS = VHOST_USER_VERSION_MASK | VHOST_USER_NEED_REPLY_MASK
#: The most fds any request legitimately carries (SET_MEM_TABLE: one per region).
VHOST_USER_MAX_FDS = VHOST_MEMORY_BASELINE_NREGIONS
#: Payloads larger than this are garbage (the largest real one, a crypto
#: session, is under 2 KiB): the stream cannot be trusted, close it.
VHOST_USER_MAX_PAYLOAD = 4096


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


# The spec names as module constants: messages.VHOST_USER_SET_VRING_ADDR, ...
globals().update(VhostUserRequest.__members__)
globals().update(VhostUserBackendRequest.__members__)


# ---------------------------------------------------------------------------
# The message table
# ---------------------------------------------------------------------------


class FdRule(enum.Enum):
    """How many fds a request carries in its ancillary data."""

    NONE = "none"  # exactly 0
    ONE = "one"  # exactly 1
    VRING_FILE = "vring-file"  # 1, or 0 when the u64 payload has VHOST_USER_VRING_NOFD_MASK
    PER_REGION = "per-region"  # one per memory region of a Memory payload
    OPTIONAL_ONE = "optional-one"  # 0 or 1 (REM_MEM_REG: MAY carry one, which MUST be closed)


class Handler(enum.Enum):
    """Who serves a request."""

    BACKEND = "back-end"  # the back-end's device-generic state machine
    DEVICE = "device class"  # the back-end's device class, when it has a handler for it
    UNSUPPORTED = "unsupported"  # refused; MessageSpec.why says why


@dataclass(frozen=True)
class MessageSpec:
    """One row of the message table.

    ``payload`` parses and validates the request's payload; ``reply`` is the
    payload type of the reply the request always gets (None: no reply unless
    NEED_REPLY asks for a REPLY_ACK u64), ``reply_fds`` whether that reply
    may carry an fd; ``fds`` the fds the request carries; ``gate`` the
    protocol feature that must be negotiated before the request is valid
    (None: none); ``handler`` who serves it, and for an unsupported one,
    ``why``.
    """

    number: int
    name: str
    payload: type[Payload]
    reply: type[Payload] | None = None
    fds: FdRule = FdRule.NONE
    reply_fds: bool = False
    gate: PF | None = None
    handler: Handler = Handler.BACKEND
    why: str = ""

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


def _unsupported(why: str) -> dict:
    return dict(handler=Handler.UNSUPPORTED, why=why)


R = VhostUserRequest
B = VhostUserBackendRequest
_F = FdRule
_DEVICE = dict(handler=Handler.DEVICE)
_NO_LOG = _unsupported("dirty logging is not implemented (LOG_SHMFD not offered)")
_NO_CRYPTO = _unsupported("not a crypto device")
_NO_DEVICE_STATE = _unsupported("DEVICE_STATE not offered")
_FRONTEND_END = _unsupported("the virtio-user front-end does not negotiate BACKEND_REQ")


def _row(number: enum.IntEnum, payload: type[Payload], reply: type[Payload] | None = None, fds: FdRule = _F.NONE,
         reply_fds: bool = False, gate: PF | None = None, **how) -> MessageSpec:
    return MessageSpec(int(number), number.name, payload, reply, fds, reply_fds, gate, **how)


_FRONTEND: list[MessageSpec] = [
    _row(R.VHOST_USER_GET_FEATURES, Empty, U64),
    _row(R.VHOST_USER_SET_FEATURES, U64),
    _row(R.VHOST_USER_SET_OWNER, Empty),
    _row(R.VHOST_USER_RESET_OWNER, Empty),
    _row(R.VHOST_USER_SET_MEM_TABLE, Memory, None, _F.PER_REGION),
    _row(R.VHOST_USER_SET_LOG_BASE, Log, Empty, _F.ONE, gate=PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD),
    _row(R.VHOST_USER_SET_LOG_FD, Empty, None, _F.ONE),
    _row(R.VHOST_USER_SET_VRING_NUM, VringState),
    _row(R.VHOST_USER_SET_VRING_ADDR, VringAddr),
    _row(R.VHOST_USER_SET_VRING_BASE, VringState),
    _row(R.VHOST_USER_GET_VRING_BASE, VringState, VringState),
    _row(R.VHOST_USER_SET_VRING_KICK, U64, None, _F.VRING_FILE),
    _row(R.VHOST_USER_SET_VRING_CALL, U64, None, _F.VRING_FILE),
    _row(R.VHOST_USER_SET_VRING_ERR, U64, None, _F.VRING_FILE),
    _row(R.VHOST_USER_GET_PROTOCOL_FEATURES, Empty, U64),
    _row(R.VHOST_USER_SET_PROTOCOL_FEATURES, U64),
    _row(R.VHOST_USER_GET_QUEUE_NUM, Empty, U64, gate=PF.VHOST_USER_PROTOCOL_F_MQ),
    _row(R.VHOST_USER_SET_VRING_ENABLE, VringState),
    _row(R.VHOST_USER_SEND_RARP, U64, gate=PF.VHOST_USER_PROTOCOL_F_RARP, **_DEVICE),
    _row(R.VHOST_USER_NET_SET_MTU, U64, gate=PF.VHOST_USER_PROTOCOL_F_MTU, **_DEVICE),
    _row(R.VHOST_USER_SET_BACKEND_REQ_FD, Empty, None, _F.ONE, gate=PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ),
    _row(R.VHOST_USER_IOTLB_MSG, IotlbMsg, U64, **_unsupported("IOTLB is not implemented (ACCESS_PLATFORM not offered)")),
    _row(R.VHOST_USER_SET_VRING_ENDIAN, VringState, gate=PF.VHOST_USER_PROTOCOL_F_CROSS_ENDIAN,
         **_unsupported("CROSS_ENDIAN not offered")),
    _row(R.VHOST_USER_GET_CONFIG, Config, Config, gate=PF.VHOST_USER_PROTOCOL_F_CONFIG),
    _row(R.VHOST_USER_SET_CONFIG, Config, gate=PF.VHOST_USER_PROTOCOL_F_CONFIG),
    _row(R.VHOST_USER_CREATE_CRYPTO_SESSION, Opaque, Opaque, gate=PF.VHOST_USER_PROTOCOL_F_CRYPTO_SESSION, **_NO_CRYPTO),
    _row(R.VHOST_USER_CLOSE_CRYPTO_SESSION, U64, gate=PF.VHOST_USER_PROTOCOL_F_CRYPTO_SESSION, **_NO_CRYPTO),
    _row(R.VHOST_USER_POSTCOPY_ADVISE, Empty, Empty, reply_fds=True, gate=PF.VHOST_USER_PROTOCOL_F_PAGEFAULT),
    _row(R.VHOST_USER_POSTCOPY_LISTEN, Empty, gate=PF.VHOST_USER_PROTOCOL_F_PAGEFAULT),
    _row(R.VHOST_USER_POSTCOPY_END, Empty, U64, gate=PF.VHOST_USER_PROTOCOL_F_PAGEFAULT),
    _row(R.VHOST_USER_GET_INFLIGHT_FD, Inflight, Inflight, reply_fds=True, gate=PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD),
    _row(R.VHOST_USER_SET_INFLIGHT_FD, Inflight, None, _F.ONE, gate=PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD),
    _row(R.VHOST_USER_GPU_SET_SOCKET, Empty, None, _F.ONE, **_unsupported("not a GPU device")),
    _row(R.VHOST_USER_RESET_DEVICE, Empty, gate=PF.VHOST_USER_PROTOCOL_F_RESET_DEVICE),
    _row(R.VHOST_USER_VRING_KICK, VringState, gate=PF.VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS,
         **_unsupported("in-band notifications not offered")),
    _row(R.VHOST_USER_GET_MAX_MEM_SLOTS, Empty, U64, gate=PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS),
    _row(R.VHOST_USER_ADD_MEM_REG, MemRegMsg, None, _F.ONE, gate=PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS),
    _row(R.VHOST_USER_REM_MEM_REG, MemRegMsg, None, _F.OPTIONAL_ONE, gate=PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS),
    _row(R.VHOST_USER_SET_STATUS, U64, gate=PF.VHOST_USER_PROTOCOL_F_STATUS),
    _row(R.VHOST_USER_GET_STATUS, Empty, U64, gate=PF.VHOST_USER_PROTOCOL_F_STATUS),
    _row(R.VHOST_USER_GET_SHARED_OBJECT, Shared, U64, reply_fds=True, gate=PF.VHOST_USER_PROTOCOL_F_SHARED_OBJECT,
         **_unsupported("SHARED_OBJECT not offered")),
    _row(R.VHOST_USER_SET_DEVICE_STATE_FD, DeviceStateParams, U64, _F.ONE, reply_fds=True,
         gate=PF.VHOST_USER_PROTOCOL_F_DEVICE_STATE, **_NO_DEVICE_STATE),
    _row(R.VHOST_USER_CHECK_DEVICE_STATE, Empty, U64, gate=PF.VHOST_USER_PROTOCOL_F_DEVICE_STATE, **_NO_DEVICE_STATE),
]

_BACKEND: list[MessageSpec] = [
    _row(B.VHOST_USER_BACKEND_IOTLB_MSG, IotlbMsg, **_FRONTEND_END),
    _row(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, Empty, gate=PF.VHOST_USER_PROTOCOL_F_CONFIG, **_FRONTEND_END),
    _row(B.VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG, VringArea, None, _F.VRING_FILE,
         gate=PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER, **_FRONTEND_END),
    _row(B.VHOST_USER_BACKEND_VRING_CALL, VringState, gate=PF.VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS, **_FRONTEND_END),
    _row(B.VHOST_USER_BACKEND_VRING_ERR, VringState, gate=PF.VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS, **_FRONTEND_END),
    _row(B.VHOST_USER_BACKEND_SHARED_OBJECT_ADD, Shared, gate=PF.VHOST_USER_PROTOCOL_F_SHARED_OBJECT, **_FRONTEND_END),
    _row(B.VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE, Shared, gate=PF.VHOST_USER_PROTOCOL_F_SHARED_OBJECT, **_FRONTEND_END),
    _row(B.VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP, Shared, U64, reply_fds=True, gate=PF.VHOST_USER_PROTOCOL_F_SHARED_OBJECT,
         **_FRONTEND_END),
]
del R, B, _F

#: request number -> row, for front-end → back-end requests (1..43).
FRONTEND_REQUESTS: dict[int, MessageSpec] = {s.number: s for s in _FRONTEND}
#: request number -> row, for back-end → front-end requests (1..8).
BACKEND_REQUESTS: dict[int, MessageSpec] = {s.number: s for s in _BACKEND}
#: For tests and tools: a front-end request's row by spec name.
SPEC_BY_NAME: dict[str, MessageSpec] = {s.name: s for s in _FRONTEND}

# Checked at import: the table covers 1..43 and 1..8 exactly.
assert sorted(FRONTEND_REQUESTS) == list(range(1, 44))
assert sorted(BACKEND_REQUESTS) == list(range(1, 9))


def request_name(number: int, table: dict[int, MessageSpec] = FRONTEND_REQUESTS) -> str:
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
    :meth:`take_fd`; :meth:`close_fds` closes those left (receivers always
    call it), so no fd leaks on any path.  ``fds_truncated``: the kernel
    dropped fds that did not fit (more than the receiver accepts).
    """

    request: int
    flags: int = VHOST_USER_VERSION
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)
    fds_truncated: bool = False

    @classmethod
    def build(cls, request: int, payload: Payload | bytes = b"", fds=(), *, reply: bool = False,
              need_reply: bool = False) -> "Message":
        """A well-formed message: version 1, REPLY / NEED_REPLY as asked, the payload packed."""
        flags = VHOST_USER_VERSION | (VHOST_USER_REPLY_MASK if reply else 0) | (VHOST_USER_NEED_REPLY_MASK if need_reply else 0)
        data = payload if isinstance(payload, (bytes, bytearray)) else payload.pack()
        return cls(int(request), flags, bytes(data), list(fds))

    @property
    def header(self) -> Header:
        return Header(self.request, self.flags, len(self.payload))

    need_reply = property(lambda self: self.header.need_reply, doc="NEED_REPLY is set.")
    is_reply = property(lambda self: self.header.is_reply, doc="REPLY is set.")

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


def parse_request(msg: Message, table: dict[int, MessageSpec] = FRONTEND_REQUESTS) -> tuple[MessageSpec, Payload]:
    """Check ``msg`` against its row: known number, flags, payload, fd count.

    Returns ``(row, payload object)``.  Raises :class:`ProtocolError` (with
    the request's name and the reason) on an unknown request, a reply flag on
    a request, a malformed payload, or a wrong number of fds.  (Gates and
    handlers are the serving side's to check: they depend on the negotiation.)
    """
    spec = table.get(msg.request)
    name = request_name(msg.request, table)
    if msg.fds_truncated:
        raise ProtocolError(name, "too many fds in the ancillary data (truncated)")
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


def parse_reply(msg: Message, request: int, table: dict[int, MessageSpec] = FRONTEND_REQUESTS) -> Payload:
    """Check ``msg`` as the reply to ``request`` and return its payload object.

    The reply must name the same request and carry the REPLY flag; its
    payload is the row's reply type, or the REPLY_ACK u64 when the row has
    none.  Raises :class:`ProtocolError` naming ``request`` otherwise.
    """
    name = request_name(request, table)
    if msg.request != int(request):
        raise ProtocolError(name, f"reply is for {request_name(msg.request, table)}")
    if not msg.is_reply or msg.flags & VHOST_USER_VERSION_MASK != VHOST_USER_VERSION:
        raise ProtocolError(name, f"reply flags {msg.flags:#x} lack REPLY / version 1")
    spec = table.get(int(request))
    reply_type = spec.reply if spec is not None and spec.reply is not None else U64
    try:
        return reply_type.parse(msg.payload, name)
    except ProtocolError as e:
        raise ProtocolError(name, f"bad reply: {e.reason}") from None
