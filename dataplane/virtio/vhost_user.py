"""The vhost-user front-end of the virtio-user PMD: one connection to a back-end.

The wire is :mod:`dataplane.vhost_user`'s (the message table, payloads and an
:class:`~dataplane.vhost_user.endpoint.Endpoint` framing the socket); this
module only sequences requests and checks replies.  The back-end is
untrusted: a short, oversized, mis-numbered or unflagged reply, a disconnect
or a timeout is a :class:`~dataplane.vhost_user.errors.VhostUserError`
naming the request (``request``, ``reason``), never a hang (every receive has
a deadline).

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

import socket
from dataclasses import dataclass

from dataplane import log as dplog
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.endpoint import Endpoint
from dataplane.vhost_user.errors import EndpointTimeout, FramingError, PeerClosed, RequestError
from dataplane.vhost_user.features import (
    VhostUserProtocolFeature as PF,
    VirtioDeviceStatus as S,
    VirtioFeature as VF,
    bit,
)
from dataplane.vhost_user.messages import (
    FRONTEND_REQUESTS,
    Message,
    VhostUserRequest as R,
    parse_reply,
    request_name,
)
from dataplane.vhost_user.payloads import VHOST_MEMORY_BASELINE_NREGIONS

log = dplog.get_logger("dataplane.virtio")

__all__ = ["VringSetup", "VhostUserChannel", "WANTED_PROTOCOL_FEATURES"]

#: protocol features the driver uses when offered
WANTED_PROTOCOL_FEATURES = bit(PF.VHOST_USER_PROTOCOL_F_MQ) | bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_STATUS)


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
        self.endpoint = Endpoint(sock, timeout=timeout)
        self.timeout = timeout
        self.protocol_features = 0
        self.offered_features = 0
        self.offered_protocol_features = 0
        self.features = 0
        self.queue_num = 0
        self.status = 0

    # -- messages ---------------------------------------------------------------

    def close(self) -> None:
        self.endpoint.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def reply_ack(self) -> bool:
        return bool(self.protocol_features & bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK))

    def _send(self, request: int, payload: P.Payload | bytes = b"", fds=(), need_reply: bool = False) -> None:
        self.endpoint.send(Message.build(request, payload, fds, need_reply=need_reply))

    def _reply(self, request: int) -> P.Payload:
        """The reply to ``request``, checked against the message table (its fds, if any, closed)."""
        name = request_name(request)
        try:
            msg = self.endpoint.recv()
        except EndpointTimeout:
            raise EndpointTimeout(name, f"no reply within {self.timeout:.1f}s") from None
        except PeerClosed:
            raise PeerClosed(name, "back-end closed the connection") from None
        except FramingError as e:
            raise FramingError(name, f"reply {e.reason}") from None
        msg.close_fds()  # no reply we ask for carries fds
        return parse_reply(msg, request)

    def get_u64(self, request: int) -> int:
        self._send(request)
        return self._reply(request).u64  # type: ignore[attr-defined]

    def request(self, request: int, payload: P.Payload | bytes = b"", fds=()) -> None:
        """A request without reply body; acknowledged (and checked) when REPLY_ACK is negotiated."""
        spec = FRONTEND_REQUESTS[int(request)]
        ack = self.reply_ack and spec.reply is None
        self._send(request, payload, fds, need_reply=ack)
        if ack:
            status = self._reply(request).u64  # type: ignore[attr-defined]
            if status != 0:
                raise RequestError(spec.name, f"back-end refused it (REPLY_ACK status {status})")

    # -- the sequence -------------------------------------------------------------

    def negotiate(self, wanted_features: int, queue_pairs: int) -> int:
        """SET_OWNER, features and protocol features; returns the negotiated feature mask."""
        self.request(R.VHOST_USER_SET_OWNER)
        self.offered_features = self.get_u64(R.VHOST_USER_GET_FEATURES)
        features = self.offered_features & wanted_features
        if self.offered_features & bit(VF.VHOST_USER_F_PROTOCOL_FEATURES):
            features |= bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
            self.offered_protocol_features = self.get_u64(R.VHOST_USER_GET_PROTOCOL_FEATURES)
            pf = self.offered_protocol_features & WANTED_PROTOCOL_FEATURES
            self._send(R.VHOST_USER_SET_PROTOCOL_FEATURES, P.U64(pf))  # never acked: REPLY_ACK not in force yet
            self.protocol_features = pf
        if queue_pairs > 1:
            if not self.negotiated(R.VHOST_USER_GET_QUEUE_NUM):
                raise RequestError("VHOST_USER_GET_PROTOCOL_FEATURES", f"queues={queue_pairs} but the back-end does not offer MQ")
            self.queue_num = self.get_u64(R.VHOST_USER_GET_QUEUE_NUM)
            if self.queue_num < queue_pairs:
                raise RequestError("VHOST_USER_GET_QUEUE_NUM", f"back-end supports {self.queue_num} queue pairs, queues={queue_pairs} asked")
        self.features = features
        return features

    def negotiated(self, request: int) -> bool:
        """The protocol feature that gates ``request`` (its row's in the message table) is negotiated."""
        gate = FRONTEND_REQUESTS[int(request)].gate
        return gate is None or bool(self.protocol_features & bit(gate))

    def set_status(self, status: int) -> None:
        if self.negotiated(R.VHOST_USER_SET_STATUS):
            self.request(R.VHOST_USER_SET_STATUS, P.U64(status))
        self.status = status

    def start(self, memory_table: list[tuple[int, int, int, int]], vrings: list[VringSetup]) -> None:
        """SET_FEATURES through DRIVER_OK; ``memory_table`` rows are ``(fd, offset, size, iova)``."""
        self.request(R.VHOST_USER_SET_FEATURES, P.U64(self.features))
        self.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        if len(memory_table) > VHOST_MEMORY_BASELINE_NREGIONS:
            raise RequestError("VHOST_USER_SET_MEM_TABLE", f"{len(memory_table)} memory segments > {VHOST_MEMORY_BASELINE_NREGIONS} regions")
        regions = [P.MemoryRegion(iova, size, iova, offset) for (_fd, offset, size, iova) in memory_table]
        self.request(R.VHOST_USER_SET_MEM_TABLE, P.Memory(regions), [fd for (fd, *_rest) in memory_table])
        for vq in vrings:
            self.request(R.VHOST_USER_SET_VRING_CALL, P.U64(vq.index), [vq.call_fd])
        for vq in vrings:
            self.request(R.VHOST_USER_SET_VRING_NUM, P.VringState(vq.index, vq.num))
            self.request(R.VHOST_USER_SET_VRING_BASE, P.VringState(vq.index, vq.base))
            self.request(R.VHOST_USER_SET_VRING_ADDR, P.VringAddr(vq.index, 0, vq.desc_addr, vq.used_addr, vq.avail_addr, 0))
            self.request(R.VHOST_USER_SET_VRING_KICK, P.U64(vq.index), [vq.kick_fd])
        if self.features & bit(VF.VHOST_USER_F_PROTOCOL_FEATURES):
            for vq in vrings:
                self.request(R.VHOST_USER_SET_VRING_ENABLE, P.VringState(vq.index, 1))
        self.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)

    def set_vring_enable(self, index: int, enable: bool) -> None:
        """SET_VRING_ENABLE (only meaningful with PROTOCOL_FEATURES: otherwise rings are always enabled)."""
        if self.features & bit(VF.VHOST_USER_F_PROTOCOL_FEATURES):
            self.request(R.VHOST_USER_SET_VRING_ENABLE, P.VringState(index, 1 if enable else 0))

    def peer_closed(self) -> bool:
        """Non-blocking check: has the back-end closed the socket (or sent something unasked)?"""
        data = self.endpoint.peek()
        if data is None:
            return False
        if data:
            log.error("virtio_user: unexpected data from the back-end; closing", bytes=len(data))
        return True
