"""A scripted vhost-user back-end (server) for hostile-input tests of front-ends.

It answers like a polite back-end by default: GET_FEATURES,
GET_PROTOCOL_FEATURES and GET_QUEUE_NUM with what it was given, a REPLY_ACK
0 to anything with NEED_REPLY.  ``misbehave(request) -> action`` can replace
the answer to one request: ``"close"`` (drop the connection), ``"silence"``
(never answer again), or raw bytes to send instead (:func:`reply` builds a
reply with any flags).  Every request received is recorded by name
(``received``) and with its payload (``messages``); received fds are closed.
"""

from __future__ import annotations

import os
import select
import socket
import threading

from dataplane.vhost_user.endpoint import Endpoint
from dataplane.vhost_user.errors import EndpointTimeout, VhostUserError
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit
from dataplane.vhost_user.messages import (
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    Message,
    VhostUserRequest as R,
    request_name,
)
from dataplane.vhost_user.payloads import U64, Memory, MemoryRegion

__all__ = ["ScriptedBackend", "reply", "DEFAULT_FEATURES", "DEFAULT_PF"]

REPLY = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK
#: A net back-end's offer: VERSION_1, MRG_RXBUF, IN_ORDER, RING_PACKED, PROTOCOL_FEATURES, EVENT_IDX.
DEFAULT_FEATURES = (
    bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VIRTIO_NET_F_MRG_RXBUF) | bit(VF.VIRTIO_F_IN_ORDER) | bit(VF.VIRTIO_F_RING_PACKED)
    | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES) | bit(VF.VIRTIO_RING_F_EVENT_IDX)
)
#: MQ, REPLY_ACK, STATUS.
DEFAULT_PF = bit(PF.VHOST_USER_PROTOCOL_F_MQ) | bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_STATUS)


def reply(request: int, payload: bytes, flags: int = REPLY) -> bytes:
    """The bytes of a reply to ``request`` with any ``flags`` (malformed on purpose if asked)."""
    return Message(int(request), flags, bytes(payload)).encode()


class ScriptedBackend:
    """Listens on ``path`` (one connection at a time) in a thread until :meth:`close`."""

    def __init__(self, path: str, features: int = DEFAULT_FEATURES, protocol_features: int = DEFAULT_PF,
                 queue_num: int = 8, misbehave=None):
        self.path = path
        self.features = features
        self.protocol_features = protocol_features
        self.queue_num = queue_num
        self.misbehave = misbehave or (lambda req: None)
        self.received: list[str] = []
        self.messages: list[tuple[str, bytes]] = []
        self.mem_regions: list[MemoryRegion] = []
        self.ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ls.bind(path)
        self.ls.listen(1)
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self.ls], [], [], 0.05)
            if not r:
                continue
            s, _ = self.ls.accept()
            self._conn = s
            ep = Endpoint(s)
            try:
                self._serve(ep)
            except VhostUserError:
                pass  # the front-end went away (or sent garbage): wait for the next one
            finally:
                self._conn = None
                ep.close()

    def _answer(self, msg: Message) -> Message | None:
        req = msg.request
        if req == R.VHOST_USER_GET_FEATURES:
            return Message.build(req, U64(self.features), reply=True)
        if req == R.VHOST_USER_GET_PROTOCOL_FEATURES:
            return Message.build(req, U64(self.protocol_features), reply=True)
        if req == R.VHOST_USER_GET_QUEUE_NUM:
            return Message.build(req, U64(self.queue_num), reply=True)
        if msg.need_reply:
            return Message.build(req, U64(0), reply=True)
        return None

    def _serve(self, ep: Endpoint) -> None:
        silent = False
        while not self._stop.is_set():
            try:
                msg = ep.recv(timeout=0.05)
            except EndpointTimeout:
                continue
            msg.close_fds()
            name = request_name(msg.request)
            self.received.append(name)
            self.messages.append((name, msg.payload))
            if msg.request == R.VHOST_USER_SET_MEM_TABLE:
                self.mem_regions = Memory.parse(msg.payload).regions
            if silent:
                continue
            action = self.misbehave(msg.request)
            if action == "close":
                return
            if action == "silence":
                silent = True
                continue
            if isinstance(action, (bytes, bytearray)):
                ep.send_bytes(action)
                continue
            answer = self._answer(msg)
            if answer is not None:
                ep.send(answer)

    def drop_connection(self) -> None:
        c = self._conn
        if c is not None:
            c.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.ls.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
