"""The vhost-user front-end of the virtio-user PMD: one connection to a back-end.

Wire format comes from :mod:`dataplane.vhost.protocol` (the one definition of
the message table and payloads); this module only sequences requests and
checks replies.  The back-end is untrusted: a short, oversized, mis-numbered
or unflagged reply, a disconnect or a timeout is a :class:`BackendError`
naming the request, never a hang (every receive has a deadline).

The sequence (DPDK's virtio-user, ``virtio_user_dev_start``)::

    SET_OWNER, GET_FEATURES, [GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM]
    SET_FEATURES, [SET_STATUS ACK|DRIVER|FEATURES_OK]
    SET_MEM_TABLE (our memory segments: fd, mmap_offset, gpa = uva = iova)
    SET_VRING_CALL for every ring, then per ring NUM, BASE, ADDR, KICK
    SET_VRING_ENABLE for every ring (when PROTOCOL_FEATURES is negotiated)
    [SET_STATUS ... | DRIVER_OK]

Requests without a reply body carry NEED_REPLY when REPLY_ACK is negotiated,
so a back-end that rejects one (a bad mem table, a ring it cannot map) is
caught at once.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from dataplane import log as dplog
from dataplane.vhost import protocol as P
from dataplane.vhost.protocol import (
    FRONTEND_REQUESTS,
    VHOST_MEMORY_BASELINE_NREGIONS,
    VHOST_USER_HDR_SIZE,
    VHOST_USER_MAX_PAYLOAD,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    VHOST_USER_VERSION_MASK,
    Message,
    VhostUserProtocolFeature as PF,
    VhostUserRequest as R,
    VirtioDeviceStatus as S,
    bit,
)
from dataplane.vhost.transport import send_message

log = dplog.get_logger("dataplane.virtio")

__all__ = ["BackendError", "VringSetup", "VhostUserChannel", "WANTED_PROTOCOL_FEATURES"]

#: protocol features the driver uses when offered
WANTED_PROTOCOL_FEATURES = bit(PF.VHOST_USER_PROTOCOL_F_MQ) | bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_STATUS)


class BackendError(ConnectionError):
    """The back-end misbehaved or went away; ``request`` names the request in flight."""

    def __init__(self, request: str, reason: str):
        super().__init__(f"{request}: {reason}")
        self.request = request
        self.reason = reason


@dataclass
class VringSetup:
    """What the back-end needs of one virtqueue."""

    index: int
    num: int
    base: int  # split: 0..65535; packed: last_avail_idx | wrap << 15
    desc_addr: int
    avail_addr: int  # packed: driver event area
    used_addr: int  # packed: device event area
    kick_fd: int
    call_fd: int


class VhostUserChannel:
    """One connected vhost-user socket, front-end side (blocking, with a deadline per reply)."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.sock.setblocking(True)
        self.timeout = timeout
        self.protocol_features = 0
        self.offered_features = 0
        self.offered_protocol_features = 0
        self.features = 0
        self.queue_num = 0
        self.status = 0

    # -- framing ----------------------------------------------------------------

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def reply_ack(self) -> bool:
        return bool(self.protocol_features & bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK))

    def _send(self, request: int, payload: P.Payload | bytes = b"", fds=(), need_reply: bool = False) -> None:
        data = payload if isinstance(payload, (bytes, bytearray)) else payload.pack()
        flags = VHOST_USER_VERSION | (VHOST_USER_NEED_REPLY_MASK if need_reply else 0)
        try:
            send_message(self.sock, Message(int(request), flags, bytes(data), list(fds)), timeout=self.timeout)
        except (OSError, TimeoutError) as e:
            raise BackendError(P.request_name(request), f"send failed: {e}") from None

    def _recv_exact(self, n: int, deadline: float, name: str, with_fds: bool = False) -> tuple[bytes, list[int]]:
        buf = b""
        fds: list[int] = []
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                for fd in fds:
                    os.close(fd)
                raise BackendError(name, f"no reply within {self.timeout:.1f}s")
            try:
                if with_fds:
                    data, got, _, _ = socket.recv_fds(self.sock, n - len(buf), VHOST_MEMORY_BASELINE_NREGIONS)
                    fds += got
                else:
                    data = self.sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            except OSError as e:
                raise BackendError(name, f"receive failed: {e}") from None
            if not data:
                for fd in fds:
                    os.close(fd)
                raise BackendError(name, "back-end closed the connection")
            buf += data
        return buf, fds

    def _reply(self, request: int) -> bytes:
        """The payload of the reply to ``request``, checked against the message table."""
        name = P.request_name(request)
        deadline = time.monotonic() + self.timeout
        hdr, fds = self._recv_exact(VHOST_USER_HDR_SIZE, deadline, name, with_fds=True)
        for fd in fds:  # no reply we ask for carries fds
            os.close(fd)
        req, flags, size = struct.unpack("=III", hdr)
        if size > VHOST_USER_MAX_PAYLOAD:
            raise BackendError(name, f"reply payload size {size} > {VHOST_USER_MAX_PAYLOAD}: stream unusable")
        payload, _ = self._recv_exact(size, deadline, name) if size else (b"", [])
        if req != int(request):
            raise BackendError(name, f"reply is for {P.request_name(req)}")
        if not flags & VHOST_USER_REPLY_MASK or (flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION:
            raise BackendError(name, f"reply flags {flags:#x} lack REPLY / version 1")
        return payload

    def get_u64(self, request: int) -> int:
        self._send(request)
        data = self._reply(request)
        try:
            return P.U64.parse(data, P.request_name(request)).u64
        except P.ProtocolError as e:
            raise BackendError(P.request_name(request), f"bad reply: {e.reason}") from None

    def request(self, request: int, payload: P.Payload | bytes = b"", fds=()) -> None:
        """A request without reply body; acknowledged (and checked) when REPLY_ACK is negotiated."""
        spec = FRONTEND_REQUESTS[int(request)]
        ack = self.reply_ack and spec.reply is None
        self._send(request, payload, fds, need_reply=ack)
        if ack:
            data = self._reply(request)
            try:
                status = P.U64.parse(data, spec.name).u64
            except P.ProtocolError as e:
                raise BackendError(spec.name, f"bad REPLY_ACK: {e.reason}") from None
            if status != 0:
                raise BackendError(spec.name, f"back-end refused it (REPLY_ACK status {status})")

    # -- the sequence -------------------------------------------------------------

    def negotiate(self, wanted_features: int, queue_pairs: int) -> int:
        """SET_OWNER, features and protocol features; returns the negotiated feature mask."""
        self.request(R.VHOST_USER_SET_OWNER)
        self.offered_features = self.get_u64(R.VHOST_USER_GET_FEATURES)
        features = self.offered_features & wanted_features
        if self.offered_features & bit(P.VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES):
            features |= bit(P.VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES)
            self.offered_protocol_features = self.get_u64(R.VHOST_USER_GET_PROTOCOL_FEATURES)
            pf = self.offered_protocol_features & WANTED_PROTOCOL_FEATURES
            self._send(R.VHOST_USER_SET_PROTOCOL_FEATURES, P.U64(pf))  # never acked: REPLY_ACK not in force yet
            self.protocol_features = pf
        if queue_pairs > 1:
            if not self.protocol_features & bit(PF.VHOST_USER_PROTOCOL_F_MQ):
                raise BackendError("VHOST_USER_GET_PROTOCOL_FEATURES", f"queues={queue_pairs} but the back-end does not offer MQ")
            self.queue_num = self.get_u64(R.VHOST_USER_GET_QUEUE_NUM)
            if self.queue_num < queue_pairs:
                raise BackendError("VHOST_USER_GET_QUEUE_NUM", f"back-end supports {self.queue_num} queue pairs, queues={queue_pairs} asked")
        self.features = features
        return features

    @property
    def has_status(self) -> bool:
        return bool(self.protocol_features & bit(PF.VHOST_USER_PROTOCOL_F_STATUS))

    def set_status(self, status: int) -> None:
        if self.has_status:
            self.request(R.VHOST_USER_SET_STATUS, P.U64(status))
        self.status = status

    def start(self, memory_table: list[tuple[int, int, int, int]], vrings: list[VringSetup]) -> None:
        """SET_FEATURES through DRIVER_OK; ``memory_table`` rows are ``(fd, offset, size, iova)``."""
        self.request(R.VHOST_USER_SET_FEATURES, P.U64(self.features))
        self.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        if len(memory_table) > VHOST_MEMORY_BASELINE_NREGIONS:
            raise BackendError("VHOST_USER_SET_MEM_TABLE", f"{len(memory_table)} memory segments > {VHOST_MEMORY_BASELINE_NREGIONS} regions")
        regions = [P.MemoryRegion(iova, size, iova, offset) for (_fd, offset, size, iova) in memory_table]
        self.request(R.VHOST_USER_SET_MEM_TABLE, P.Memory(regions), [fd for (fd, *_rest) in memory_table])
        for vq in vrings:
            self.request(R.VHOST_USER_SET_VRING_CALL, P.U64(vq.index), [vq.call_fd])
        for vq in vrings:
            self.request(R.VHOST_USER_SET_VRING_NUM, P.VringState(vq.index, vq.num))
            self.request(R.VHOST_USER_SET_VRING_BASE, P.VringState(vq.index, vq.base))
            self.request(R.VHOST_USER_SET_VRING_ADDR, P.VringAddr(vq.index, 0, vq.desc_addr, vq.used_addr, vq.avail_addr, 0))
            self.request(R.VHOST_USER_SET_VRING_KICK, P.U64(vq.index), [vq.kick_fd])
        if self.features & bit(P.VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES):
            for vq in vrings:
                self.request(R.VHOST_USER_SET_VRING_ENABLE, P.VringState(vq.index, 1))
        self.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)

    def set_vring_enable(self, index: int, enable: bool) -> None:
        """SET_VRING_ENABLE (only meaningful with PROTOCOL_FEATURES: otherwise rings are always enabled)."""
        if self.features & bit(P.VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES):
            self.request(R.VHOST_USER_SET_VRING_ENABLE, P.VringState(index, 1 if enable else 0))

    def peer_closed(self) -> bool:
        """Non-blocking check: has the back-end closed the socket (or sent something unasked)?"""
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not r:
            return False
        try:
            data = self.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if data:
            log.error("virtio_user: unexpected data from the back-end; closing", bytes=len(data))
        return True
