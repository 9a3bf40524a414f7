"""A scripted vhost-user front-end (the "guest" side) for testing back-ends.

It plays QEMU / DPDK's virtio-user from a test: it owns guest memory
(memfd regions with a chosen GPA / QVA layout, visible as numpy arrays),
builds split or packed rings in it, and sends any message -- well-formed
through the helpers, or deliberately malformed through :meth:`send_raw`
(wrong sizes, unknown request numbers, bad / extra / missing fds, garbage
flags)::

    mem = GuestMemoryLayout([GuestRegion(gpa=0, size=2 << 20, qva=0x7F0000000000)])
    fe = VhostUserFrontend.connect(sock_path, memory=mem)
    fe.start(num_queues=1, queue_size=256)      # negotiation, mem table, vrings 0 and 1
    vq = fe.vrings[0]                            # desc/avail/used gpa + numpy views + kick/call eventfds
    ...
    fe.get_vring_base(0)
    fe.close(); mem.close()

Replies are checked (reply flag, request number); a back-end closing the
connection shows as :class:`~dataplane.vhost_user.errors.PeerClosed`.

The back-end's request channel: :meth:`VhostUserFrontend.open_backend_channel`
sends SET_BACKEND_REQ_FD with one end of a socket pair and keeps the other
(``fe.backend``, an Endpoint); :meth:`~VhostUserFrontend.backend_recv` reads
and checks one back-end request, :meth:`~VhostUserFrontend.backend_ack`
answers it (any status), and ``fe.backend.send_bytes`` sends anything
(hostile answers).  All
framing is an :class:`~dataplane.vhost_user.endpoint.Endpoint`'s.  The same class serves a
back-end in client mode: :meth:`VhostUserFrontend.listen` then
:meth:`VhostUserListener.accept`.

Views into guest memory (``GuestRegion.mem``, ``FrontendVring.*``) are
invalid once :meth:`GuestMemoryLayout.close` has run.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from dataplane.testing.guest_net import log_pages
from dataplane.vhost.guest_memory import map_shared, unmap
from dataplane.vhost.userfaultfd import Userfaultfd
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.endpoint import Endpoint
from dataplane.vhost_user.errors import EndpointTimeout, PeerClosed
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioDeviceStatus, VirtioFeature as VF, bit
from dataplane.vhost_user.messages import (
    BACKEND_REQUESTS,
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    Header,
    Message,
    MessageSpec,
    VhostUserRequest as R,
    parse_request,
    request_name,
)
from dataplane.vhost_user.payloads import VHOST_USER_VRING_NOFD_MASK

__all__ = [
    "GuestRegion",
    "GuestMemoryLayout",
    "FrontendVring",
    "VhostUserFrontend",
    "VhostUserListener",
    "PostcopyPager",
    "FrontendLog",
    "eventfd_count",
]

PAGE = os.sysconf("SC_PAGE_SIZE")
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
DEFAULT_QVA_BASE = 0x7F00_0000_0000


def _align(v: int, a: int) -> int:
    return (v + a - 1) & ~(a - 1)


def _view(addr: int, nbytes: int, dtype=np.uint8) -> np.ndarray:
    buf = (ctypes.c_uint8 * nbytes).from_address(addr)
    return np.frombuffer(buf, dtype=np.uint8).view(dtype)


def eventfd_count(fd: int) -> int:
    """Read (and reset) a non-blocking eventfd's counter; 0 if nothing was written."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


# ---------------------------------------------------------------------------
# Guest memory
# ---------------------------------------------------------------------------


class GuestRegion:
    """One region of guest memory: a memfd of ``mmap_offset + size`` bytes, mapped here.

    ``gpa``/``qva`` are what the front-end announces (the QVA need not be our
    real address: the back-end only uses it to translate ring addresses).
    ``mem`` is a uint8 view of the region (from ``mmap_offset``).
    """

    def __init__(self, gpa: int, size: int, qva: int | None = None, mmap_offset: int = 0, name: str = "vhost-frontend-guest"):
        self.gpa = gpa
        self.size = size
        self.qva = DEFAULT_QVA_BASE + gpa if qva is None else qva
        self.mmap_offset = mmap_offset
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.file_size = mmap_offset + size
        os.ftruncate(self.fd, self.file_size)
        self.map_size = _align(self.file_size, PAGE)
        self.map_addr = map_shared(self.fd, self.map_size, 0)
        self.addr = self.map_addr + mmap_offset
        self.mem = _view(self.addr, size)
        self._next = 0

    def spec(self) -> P.MemoryRegion:
        return P.MemoryRegion(self.gpa, self.size, self.qva, self.mmap_offset)

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.gpa + self.size

    def alloc(self, nbytes: int, align: int = 64) -> int:
        """Bump-allocate ``nbytes`` in this region; returns the GPA."""
        off = _align(self._next, align)
        if off + nbytes > self.size:
            raise MemoryError(f"guest region at {self.gpa:#x} is full")
        self._next = off + nbytes
        return self.gpa + off

    def close(self) -> None:
        self.mem = None  # type: ignore[assignment]
        if self.map_addr:
            unmap(self.map_addr, self.map_size)
            self.map_addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GuestMemoryLayout:
    """The front-end's guest memory: a list of :class:`GuestRegion`."""

    def __init__(self, regions: Sequence[GuestRegion] | None = None):
        self.regions = list(regions) if regions is not None else [GuestRegion(0, 4 << 20)]

    @classmethod
    def simple(cls, size: int = 4 << 20, nregions: int = 1, gpa: int = 0, gap: int = 1 << 30) -> "GuestMemoryLayout":
        """``nregions`` regions of ``size`` bytes, ``gap`` apart in GPA and QVA."""
        return cls([GuestRegion(gpa + i * gap, size) for i in range(nregions)])

    def region_of(self, gpa: int, length: int = 1) -> GuestRegion:
        for r in self.regions:
            if r.contains(gpa, length):
                return r
        raise ValueError(f"gpa range [{gpa:#x}, +{length:#x}) is not in guest memory")

    def qva(self, gpa: int) -> int:
        r = self.region_of(gpa)
        return r.qva + (gpa - r.gpa)

    def hva(self, gpa: int, length: int = 1) -> int:
        """Our own address of guest-physical ``gpa`` (for building rings and reading buffers)."""
        r = self.region_of(gpa, length)
        return r.addr + (gpa - r.gpa)

    def view(self, gpa: int, nbytes: int, dtype=np.uint8) -> np.ndarray:
        return _view(self.hva(gpa, nbytes), nbytes, dtype)

    def alloc(self, nbytes: int, align: int = 64, region: int = 0) -> int:
        return self.regions[region].alloc(nbytes, align)

    def table(self) -> list[P.MemoryRegion]:
        return [r.spec() for r in self.regions]

    def fds(self) -> list[int]:
        return [r.fd for r in self.regions]

    def discard(self, gpa: int, length: int = PAGE) -> None:
        """Punch the pages of ``[gpa, gpa + length)`` out of the memory file: they are missing again,
        as guest pages not yet migrated are on a postcopy destination."""
        r = self.region_of(gpa, length)
        off = r.mmap_offset + (gpa - r.gpa)
        if _libc.fallocate(r.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, off, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")

    def close(self) -> None:
        for r in self.regions:
            r.close()


class FrontendLog:
    """A dirty log as QEMU makes one for a vhost-user back-end: a memfd of one bit per
    4 KiB page of guest-physical address (``mmap_size`` a whole number of u64 words),
    mapped here; ``bitmap`` is its uint8 view, :meth:`pages` the marked pages.

    ``size`` defaults to what covers ``memory``; ``mmap_offset`` puts the bitmap that
    far into the file (the file is ``mmap_offset + size`` bytes, plus ``slack`` bytes
    after it that a correct back-end never touches: :meth:`slack_untouched`).
    """

    SLACK_FILL = 0xA5

    def __init__(self, memory: "GuestMemoryLayout | None" = None, size: int | None = None, mmap_offset: int = 0,
                 slack: int = PAGE):
        if size is None:
            end = max(r.gpa + r.size for r in memory.regions)
            size = _align((end + 4095) // 4096, 64) // 8
        self.size = size
        self.mmap_offset = mmap_offset
        self.slack = slack
        self._file = GuestRegion(0, size + slack, mmap_offset=mmap_offset, name="vhost-log")
        self.fd = self._file.fd
        self.raw = _view(self._file.map_addr, mmap_offset + size + slack)
        self.raw[:] = self.SLACK_FILL
        self.bitmap = self.raw[mmap_offset : mmap_offset + size]
        self.bitmap[:] = 0

    def pages(self) -> set[int]:
        """The marked pages (bit ``page % 8`` of byte ``page // 8``)."""
        return log_pages(self.bitmap)

    def clear(self) -> set[int]:
        """Read and clear the marked pages (as QEMU's log sync does; not atomic: quiesce the back-end first)."""
        got = self.pages()
        self.bitmap[:] = 0
        return got

    def slack_untouched(self) -> bool:
        """Nothing outside the log bytes was written (the file's bytes before and after it)."""
        before = self.raw[: self.mmap_offset]
        after = self.raw[self.mmap_offset + self.size :]
        return bool((before == self.SLACK_FILL).all() and (after == self.SLACK_FILL).all())

    def close(self) -> None:
        self.raw = self.bitmap = None  # type: ignore[assignment]
        self._file.close()
        self.fd = -1


# ---------------------------------------------------------------------------
# Rings
# ---------------------------------------------------------------------------


@dataclass
class FrontendVring:
    """A ring the front-end built in guest memory, with its eventfds.

    Split: ``desc`` (uint8, 16 bytes per entry), ``avail`` (uint16: flags,
    idx, ring[num], used_event), ``used`` (uint8; idx at bytes 2-3).
    Packed: ``desc`` and the two 4-byte event areas ``avail`` (driver) and
    ``used`` (device).
    """

    index: int
    num: int
    packed: bool
    desc_gpa: int
    avail_gpa: int
    used_gpa: int
    desc: np.ndarray
    avail: np.ndarray
    used: np.ndarray
    kick_fd: int = -1
    call_fd: int = -1
    err_fd: int = -1

    @property
    def avail_idx(self) -> int:
        return int(self.avail[1])

    @avail_idx.setter
    def avail_idx(self, v: int) -> None:
        self.avail[1] = v & 0xFFFF

    @property
    def used_idx(self) -> int:
        return int(self.used.view(np.uint16)[1])

    def close_fds(self) -> None:
        for name in ("kick_fd", "call_fd", "err_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _new_eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


# ---------------------------------------------------------------------------
# The front-end
# ---------------------------------------------------------------------------


class VhostUserFrontend:
    """One vhost-user connection, front-end side.  Blocking socket with a timeout."""

    def __init__(self, sock: socket.socket, memory: GuestMemoryLayout | None = None, timeout: float = 5.0):
        self.sock = sock
        self.endpoint = Endpoint(sock, timeout=timeout)
        self.timeout = timeout
        self.memory = memory
        self.features = 0
        self.protocol_features = 0
        self.offered_features = 0
        self.offered_protocol_features = 0
        self.vrings: dict[int, FrontendVring] = {}
        self.backend: Endpoint | None = None
        self.closed = False

    # -- connecting -----------------------------------------------------------

    @classmethod
    def connect(cls, path: str, memory: GuestMemoryLayout | None = None, timeout: float = 5.0,
                wait: float = 0.0) -> "VhostUserFrontend":
        """Connect to a back-end listening on ``path`` (retrying for up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return cls(s, memory, timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    @staticmethod
    def listen(path: str) -> "VhostUserListener":
        """Listen on ``path`` for a back-end in client mode."""
        return VhostUserListener(path)

    # -- raw messages ---------------------------------------------------------

    def send_raw(self, request: int, payload: bytes | P.Payload = b"", fds: Iterable[int] = (),
                 flags: int = VHOST_USER_VERSION, size: int | None = None) -> None:
        """Send exactly this message; ``size`` overrides the header's size field (malformed on purpose)."""
        data = payload if isinstance(payload, (bytes, bytearray)) else payload.pack()
        header = Header(int(request), flags, len(data) if size is None else size)
        self.endpoint.send_bytes(header.pack() + bytes(data), list(fds))

    def send_bytes(self, data: bytes, fds: Iterable[int] = ()) -> None:
        """Send arbitrary bytes (garbage, or a message in pieces) on the stream; fds with the first byte."""
        self.endpoint.send_bytes(data, list(fds))

    def send(self, request: int, payload: bytes | P.Payload = b"", fds: Iterable[int] = (), need_reply: bool = False) -> None:
        self.endpoint.send(Message.build(request, payload, fds, need_reply=need_reply))

    def recv(self, timeout: float | None = None) -> Message:
        """Receive one message (a reply); raises :class:`PeerClosed` when the back-end closed."""
        return self.endpoint.recv(timeout)

    def reply(self, request: int, timeout: float | None = None) -> Message:
        """Receive the reply to ``request`` and check its header."""
        msg = self.recv(timeout)
        if msg.request != int(request):
            raise AssertionError(f"reply to {request_name(msg.request)}, expected {request_name(request)}")
        if msg.flags != VHOST_USER_VERSION | VHOST_USER_REPLY_MASK:
            raise AssertionError(f"reply flags {msg.flags:#x}, expected {VHOST_USER_VERSION | VHOST_USER_REPLY_MASK:#x}")
        return msg

    def request(self, request: int, payload: bytes | P.Payload = b"", fds: Iterable[int] = (),
                ack: bool = False) -> int | None:
        """Send a request without a reply body; with ``ack`` set NEED_REPLY and return the u64 status."""
        self.send(request, payload, fds, need_reply=ack)
        if not ack:
            return None
        return P.U64.parse(self.reply(request).payload).u64

    def wait_closed(self, timeout: float = 2.0) -> bool:
        """True once the back-end has closed the connection (anything it sends meanwhile is dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.recv(max(0.0, deadline - time.monotonic())).close_fds()
            except PeerClosed:
                return True
            except EndpointTimeout:
                return False

    @property
    def reply_ack(self) -> bool:
        return bool(self.protocol_features >> PF.VHOST_USER_PROTOCOL_F_REPLY_ACK & 1)

    # -- standard requests ------------------------------------------------------

    def get_u64(self, request: int) -> int:
        self.send(request)
        return P.U64.parse(self.reply(request).payload).u64

    def get_features(self) -> int:
        self.offered_features = self.get_u64(R.VHOST_USER_GET_FEATURES)
        return self.offered_features

    def set_features(self, features: int, ack: bool = False) -> int | None:
        self.features = features
        return self.request(R.VHOST_USER_SET_FEATURES, P.U64(features), ack=ack)

    def get_protocol_features(self) -> int:
        self.offered_protocol_features = self.get_u64(R.VHOST_USER_GET_PROTOCOL_FEATURES)
        return self.offered_protocol_features

    def set_protocol_features(self, features: int) -> None:
        self.protocol_features = features
        self.request(R.VHOST_USER_SET_PROTOCOL_FEATURES, P.U64(features))

    def set_owner(self) -> None:
        self.request(R.VHOST_USER_SET_OWNER)

    def get_queue_num(self) -> int:
        return self.get_u64(R.VHOST_USER_GET_QUEUE_NUM)

    def get_status(self) -> int:
        return self.get_u64(R.VHOST_USER_GET_STATUS)

    def set_status(self, status: int, ack: bool | None = None) -> int | None:
        return self.request(R.VHOST_USER_SET_STATUS, P.U64(status), ack=self.reply_ack if ack is None else ack)

    def sync(self) -> None:
        """Round trip (GET_FEATURES): every message sent before has been handled."""
        self.send(R.VHOST_USER_GET_FEATURES)
        self.reply(R.VHOST_USER_GET_FEATURES)

    def set_mem_table(self, regions: Sequence[P.MemoryRegion] | None = None, fds: Sequence[int] | None = None,
                      ack: bool | None = None) -> int | None:
        """SET_MEM_TABLE of our guest memory (or the given table and fds)."""
        if regions is None:
            assert self.memory is not None, "no guest memory"
            regions, fds = self.memory.table(), self.memory.fds()
        return self.request(R.VHOST_USER_SET_MEM_TABLE, P.Memory(list(regions)), fds or [],
                            ack=self.reply_ack if ack is None else ack)

    def set_vring_num(self, index: int, num: int, ack: bool = False) -> int | None:
        return self.request(R.VHOST_USER_SET_VRING_NUM, P.VringState(index, num), ack=ack)

    def set_vring_base(self, index: int, num: int, ack: bool = False) -> int | None:
        return self.request(R.VHOST_USER_SET_VRING_BASE, P.VringState(index, num), ack=ack)

    def get_vring_base(self, index: int) -> int:
        self.send(R.VHOST_USER_GET_VRING_BASE, P.VringState(index, 0))
        st = P.VringState.parse(self.reply(R.VHOST_USER_GET_VRING_BASE).payload)
        assert st.index == index
        return st.num

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, flags: int = 0, log: int = 0,
                       ack: bool = False) -> int | None:
        """SET_VRING_ADDR with user addresses (QVAs); note the wire order desc, used, avail."""
        return self.request(R.VHOST_USER_SET_VRING_ADDR, P.VringAddr(index, flags, desc, used, avail, log), ack=ack)

    # -- inflight I/O tracking, as QEMU's vhost-user-blk does ----------------------

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> tuple[P.Inflight, int]:
        """GET_INFLIGHT_FD: the back-end's area description and its fd (ours to close)."""
        self.send(R.VHOST_USER_GET_INFLIGHT_FD, P.Inflight(0, 0, num_queues, queue_size))
        msg = self.reply(R.VHOST_USER_GET_INFLIGHT_FD)
        try:
            info = P.Inflight.parse(msg.payload)
            fd = msg.take_fd(0)
        finally:
            msg.close_fds()
        return info, fd

    def set_inflight_fd(self, info: P.Inflight, fd: int, ack: bool | None = None) -> int | None:
        """SET_INFLIGHT_FD: hand the area back (e.g. to a restarted back-end); ``fd`` stays ours."""
        return self.request(R.VHOST_USER_SET_INFLIGHT_FD, info, [fd], ack=self.reply_ack if ack is None else ack)

    # -- dirty logging (live migration), in QEMU's order ---------------------------

    def set_log_base(self, log: FrontendLog) -> Message:
        """SET_LOG_BASE with the log's fd; waits for the back-end's reply (QEMU does, with
        LOG_SHMFD) and returns it."""
        self.send(R.VHOST_USER_SET_LOG_BASE, P.Log(log.size, log.mmap_offset), [log.fd])
        return self.reply(R.VHOST_USER_SET_LOG_BASE)

    def set_log_fd(self, fd: int) -> None:
        self.request(R.VHOST_USER_SET_LOG_FD, b"", [fd])

    def set_logging(self, enable: bool, log: FrontendLog | None = None) -> None:
        """Start or stop dirty logging as QEMU's vhost_migration_log does.

        Start: SET_LOG_BASE (``log``), SET_FEATURES with VHOST_F_LOG_ALL, then
        SET_VRING_ADDR of every ring again with VHOST_VRING_F_LOG and
        ``log_guest_addr`` = the used ring's GPA.  Stop: SET_FEATURES without
        LOG_ALL, SET_VRING_ADDR without the flag.  Feature and ring changes ask
        for a REPLY_ACK when it is negotiated (and must get 0).
        """
        if enable:
            assert log is not None
            self.set_log_base(log)
        features = self.features | bit(VF.VHOST_F_LOG_ALL) if enable else self.features & ~bit(VF.VHOST_F_LOG_ALL)
        ack = self.reply_ack
        assert self.set_features(features, ack=ack) in (0, None)
        mem = self.memory
        for index, vr in sorted(self.vrings.items()):
            flags, used = (1, vr.used_gpa) if enable else (0, 0)
            assert self.set_vring_addr(index, mem.qva(vr.desc_gpa), mem.qva(vr.used_gpa), mem.qva(vr.avail_gpa),
                                       flags=flags, log=used, ack=ack) in (0, None)
        self.sync()

    def _vring_file(self, request: int, index: int, fd: int | None, ack: bool) -> int | None:
        if fd is None:
            return self.request(request, P.U64(index | VHOST_USER_VRING_NOFD_MASK), ack=ack)
        return self.request(request, P.U64(index), [fd], ack=ack)

    def set_vring_kick(self, index: int, fd: int | None, ack: bool = False) -> int | None:
        """fd None: NOFD (the back-end polls)."""
        return self._vring_file(R.VHOST_USER_SET_VRING_KICK, index, fd, ack)

    def set_vring_call(self, index: int, fd: int | None, ack: bool = False) -> int | None:
        return self._vring_file(R.VHOST_USER_SET_VRING_CALL, index, fd, ack)

    def set_vring_err(self, index: int, fd: int | None, ack: bool = False) -> int | None:
        return self._vring_file(R.VHOST_USER_SET_VRING_ERR, index, fd, ack)

    def set_vring_enable(self, index: int, enable: bool = True, ack: bool = False) -> int | None:
        return self.request(R.VHOST_USER_SET_VRING_ENABLE, P.VringState(index, int(enable)), ack=ack)

    def send_rarp(self, mac: bytes) -> None:
        self.request(R.VHOST_USER_SEND_RARP, P.U64(int.from_bytes(bytes(mac).ljust(8, b"\0"), "little")))

    def net_set_mtu(self, mtu: int, ack: bool = False) -> int | None:
        return self.request(R.VHOST_USER_NET_SET_MTU, P.U64(mtu), ack=ack)

    def get_config(self, offset: int, size: int) -> bytes:
        self.send(R.VHOST_USER_GET_CONFIG, P.Config(offset, size, 0, bytes(size)))
        payload = self.reply(R.VHOST_USER_GET_CONFIG).payload
        return P.Config.parse(payload).payload if payload else b""

    # -- postcopy (the destination QEMU's messages) ---------------------------------

    def postcopy_advise(self) -> int:
        """POSTCOPY_ADVISE; returns the back-end's userfaultfd (ours to close)."""
        self.send(R.VHOST_USER_POSTCOPY_ADVISE)
        msg = self.reply(R.VHOST_USER_POSTCOPY_ADVISE)
        if msg.payload or len(msg.fds) != 1:
            msg.close_fds()
            raise AssertionError(f"POSTCOPY_ADVISE reply: {len(msg.payload)} payload bytes, {len(msg.fds)} fds "
                                 "(expected none and one userfaultfd)")
        return msg.take_fd(0)

    def postcopy_listen(self) -> int:
        """POSTCOPY_LISTEN with NEED_REPLY (as QEMU sends it); the back-end's status."""
        return self.request(R.VHOST_USER_POSTCOPY_LISTEN, ack=True)  # type: ignore[return-value]

    def postcopy_end(self) -> int:
        """POSTCOPY_END with NEED_REPLY; the u64 of the reply (0: ended)."""
        return self.request(R.VHOST_USER_POSTCOPY_END, ack=True)  # type: ignore[return-value]

    def set_mem_table_postcopy(self, ack: int | None = 0) -> list[int]:
        """SET_MEM_TABLE while listening, QEMU's way: read the reply carrying the back-end's region
        addresses (returned, one per region), then acknowledge with ``ack`` (None: send nothing)."""
        assert self.memory is not None, "no guest memory"
        table = self.memory.table()
        self.send(R.VHOST_USER_SET_MEM_TABLE, P.Memory(table), self.memory.fds())
        reply = P.Memory.parse(self.reply(R.VHOST_USER_SET_MEM_TABLE).payload)
        got = [(r.guest_phys_addr, r.memory_size, r.mmap_offset) for r in reply.regions]
        want = [(r.guest_phys_addr, r.memory_size, r.mmap_offset) for r in table]
        if got != want:
            raise AssertionError(f"postcopy SET_MEM_TABLE reply describes {got}, expected {want}")
        if ack is not None:
            self.send(R.VHOST_USER_SET_MEM_TABLE, P.U64(ack))
        return [r.userspace_addr for r in reply.regions]
    # -- the back-end's request channel -------------------------------------------

    def open_backend_channel(self, ack: bool | None = None) -> int | None:
        """SET_BACKEND_REQ_FD with a new socket pair's far end; ours becomes ``self.backend``.
        ``ack`` (default: REPLY_ACK negotiated) asks for the u64 status, returned."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            status = self.request(R.VHOST_USER_SET_BACKEND_REQ_FD, b"", [theirs.fileno()],
                                  ack=self.reply_ack if ack is None else ack)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if self.backend is not None:
            self.backend.close()
        self.backend = Endpoint(ours, timeout=self.timeout, table=BACKEND_REQUESTS)
        return status

    def backend_recv(self, timeout: float | None = None) -> tuple[MessageSpec, P.Payload, Message]:
        """The next back-end request, checked against its row: ``(row, payload, message)``.
        The message's fds are the caller's (``msg.take_fd`` / ``msg.close_fds``)."""
        assert self.backend is not None, "no back-end channel (open_backend_channel)"
        msg = self.backend.recv(timeout)
        try:
            spec, payload = parse_request(msg, BACKEND_REQUESTS)
        except BaseException:
            msg.close_fds()
            raise
        return spec, payload, msg

    def backend_ack(self, msg: Message, status: int = 0) -> None:
        """Answer a back-end request that asked for it (NEED_REPLY) with the u64 ``status``."""
        assert self.backend is not None
        self.backend.send(Message.build(msg.request, P.U64(status), reply=True))

    # -- negotiation and rings ---------------------------------------------------

    def negotiate(self, features: int | None = None, protocol_features: int | None = None,
                  owner: bool = True) -> tuple[int, int]:
        """SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_FEATURES.

        ``features`` / ``protocol_features``: what we want (intersected with
        the offer); None takes the offer (minus VHOST_F_LOG_ALL).
        """
        if owner:
            self.set_owner()
        offered = self.get_features()
        want = offered & ~bit(VF.VHOST_F_LOG_ALL) if features is None else features & offered
        if want & bit(VF.VHOST_USER_F_PROTOCOL_FEATURES):
            poffered = self.get_protocol_features()
            pwant = poffered if protocol_features is None else protocol_features & poffered
            self.set_protocol_features(pwant)
        self.set_features(want)
        return self.features, self.protocol_features

    @property
    def packed(self) -> bool:
        return bool(self.features >> VF.VIRTIO_F_RING_PACKED & 1)

    def alloc_vring(self, index: int, num: int, packed: bool | None = None) -> FrontendVring:
        """Lay out a ring in guest memory (zeroed) and create its kick/call eventfds."""
        assert self.memory is not None, "no guest memory"
        packed = self.packed if packed is None else packed
        mem = self.memory
        if packed:
            desc = mem.alloc(16 * num, PAGE)
            drv = mem.alloc(4, 64)
            dev = mem.alloc(4, 64)
            vr = FrontendVring(index, num, True, desc, drv, dev, mem.view(desc, 16 * num),
                               mem.view(drv, 4, np.uint16), mem.view(dev, 4, np.uint16))
        else:
            desc = mem.alloc(16 * num, PAGE)
            avail = mem.alloc(6 + 2 * num, 64)
            used = mem.alloc(6 + 8 * num, PAGE)
            vr = FrontendVring(index, num, False, desc, avail, used, mem.view(desc, 16 * num),
                               mem.view(avail, 6 + 2 * num, np.uint16), mem.view(used, 6 + 8 * num))
        vr.desc[:] = 0
        vr.avail[:] = 0
        vr.used[:] = 0
        vr.kick_fd = _new_eventfd()
        vr.call_fd = _new_eventfd()
        old = self.vrings.get(index)
        if old is not None:
            old.close_fds()
        self.vrings[index] = vr
        return vr

    def setup_vring(self, index: int, num: int = 256, base: int | None = None, enable: bool | None = None,
                    kick: bool = True, call: bool = True, nofd: bool = False) -> FrontendVring:
        """SET_VRING_NUM / BASE / ADDR / CALL / KICK (and ENABLE with protocol features) for a new ring."""
        vr = self.vrings.get(index)
        if vr is None or vr.num != num:
            vr = self.alloc_vring(index, num)
        mem = self.memory
        assert mem is not None
        self.set_vring_num(index, num)
        if base is None:
            base = (1 << 15 | 1 << 31) if vr.packed else 0
        self.set_vring_base(index, base)
        self.set_vring_addr(index, mem.qva(vr.desc_gpa), mem.qva(vr.used_gpa), mem.qva(vr.avail_gpa))
        if call:
            self.set_vring_call(index, None if nofd else vr.call_fd)
        if kick:
            self.set_vring_kick(index, None if nofd else vr.kick_fd)
        if enable is None:
            enable = bool(self.features >> VF.VHOST_USER_F_PROTOCOL_FEATURES & 1)
        if enable:
            self.set_vring_enable(index, True)
        return vr

    def start(self, num_queues: int = 1, queue_size: int = 256, features: int | None = None,
              protocol_features: int | None = None, driver_ok: bool = True, nvrings: int | None = None,
              bases: dict[int, int] | None = None) -> None:
        """The standard bring-up: negotiate, SET_MEM_TABLE, rings 0 .. 2 * num_queues - 1, DRIVER_OK.

        ``nvrings``: set up that many rings instead (a device with one vring per queue, e.g. blk).
        ``bases``: SET_VRING_BASE values by ring (a migration destination resumes from the
        source's GET_VRING_BASE values); the others start at 0.
        """
        self.negotiate(features, protocol_features)
        status = VirtioDeviceStatus
        if self.protocol_features >> PF.VHOST_USER_PROTOCOL_F_STATUS & 1:
            self.set_status(status.ACKNOWLEDGE | status.DRIVER | status.FEATURES_OK)
        self.set_mem_table()
        for q in range(2 * num_queues if nvrings is None else nvrings):
            self.setup_vring(q, queue_size, base=(bases or {}).get(q))
        if driver_ok and self.protocol_features >> PF.VHOST_USER_PROTOCOL_F_STATUS & 1:
            self.set_status(status.ACKNOWLEDGE | status.DRIVER | status.FEATURES_OK | status.DRIVER_OK)
        self.sync()

    # -- teardown ----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and our eventfds (guest memory stays: close it separately)."""
        if self.closed:
            return
        self.closed = True
        self.endpoint.close()
        if self.backend is not None:
            self.backend.close()
        for vr in self.vrings.values():
            vr.close_fds()

    def __enter__(self) -> "VhostUserFrontend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PostcopyPager:
    """The destination QEMU's postcopy fault handling for one back-end.

    ``uffd``: the fd :meth:`VhostUserFrontend.postcopy_advise` returned (the
    pager owns it); ``bases``: the back-end's region addresses from
    :meth:`VhostUserFrontend.set_mem_table_postcopy`; ``memory``: our guest
    memory (same regions, same order).  :meth:`wait_fault` returns the next
    page the back-end touched that is missing; the test then fills it either
    with :meth:`place` (UFFDIO_COPY into the back-end's mapping, which also
    wakes) or, as QEMU does, by writing it through its own mapping and
    calling :meth:`wake`.
    """

    def __init__(self, uffd: int, memory: GuestMemoryLayout, bases: Sequence[int]):
        self.uffd = Userfaultfd(uffd)
        self.memory = memory
        self.bases = list(bases)
        self.faults: list[tuple[int, int, int]] = []  # every fault seen: (gpa, back-end address, flags)

    def gpa_of(self, address: int) -> int:
        for r, base in zip(self.memory.regions, self.bases):
            if base <= address < base + r.size:
                return r.gpa + address - base
        raise AssertionError(f"fault at {address:#x} is outside every region the back-end announced")

    def address_of(self, gpa: int) -> int:
        """The back-end's (announced) address of guest-physical ``gpa``."""
        for r, base in zip(self.memory.regions, self.bases):
            if r.contains(gpa):
                return base + gpa - r.gpa
        raise ValueError(f"gpa {gpa:#x} is not in guest memory")

    def wait_fault(self, timeout: float = 10.0) -> tuple[int, int]:
        """Block until the back-end faults; returns ``(gpa, address)`` of the faulting page."""
        deadline = time.monotonic() + timeout
        while True:
            faults = self.uffd.read_faults()
            if faults:
                address, flags = faults[0]
                address &= ~(PAGE - 1)
                gpa = self.gpa_of(address)
                self.faults.append((gpa, address, flags))
                return gpa, address
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.uffd], [], [], left)[0]:
                raise EndpointTimeout(f"no postcopy fault from the back-end within {timeout:.1f}s")

    def place(self, address: int, data: bytes) -> None:
        """UFFDIO_COPY one page of ``data`` at the back-end's ``address`` (page-aligned), waking its faulter."""
        buf = ctypes.create_string_buffer(bytes(data).ljust(PAGE, b"\0"), PAGE)
        self.uffd.copy(address & ~(PAGE - 1), ctypes.addressof(buf), PAGE)

    def wake(self, address: int) -> None:
        """UFFDIO_WAKE the back-end's page at ``address`` (already filled through another mapping)."""
        self.uffd.wake(address & ~(PAGE - 1), PAGE)

    def close(self) -> None:
        self.uffd.close()


class VhostUserListener:
    """A listening front-end socket, for back-ends in client mode."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)

    def accept(self, memory: GuestMemoryLayout | None = None, timeout: float = 5.0) -> VhostUserFrontend:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.setblocking(True)
        return VhostUserFrontend(conn, memory, timeout)

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "VhostUserListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
