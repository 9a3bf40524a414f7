"""A scripted vhost-user back-end (server) for hostile-input tests of the virtio-user front-end.

It answers like a polite back-end by default; ``misbehave(request) ->
action`` can replace the answer to one request: ``"close"`` (drop the
connection), ``"silence"`` (never answer), or raw bytes to send instead.
Every request received is recorded by name; received fds are closed.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading

from dataplane.vhost import protocol as P
from dataplane.vhost.protocol import VhostUserProtocolFeature as PF, VhostUserRequest as R, VirtioFeature as VF, bit

REPLY = P.VHOST_USER_VERSION | P.VHOST_USER_REPLY_MASK
DEFAULT_FEATURES = (
    bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VIRTIO_NET_F_MRG_RXBUF) | bit(VF.VIRTIO_F_IN_ORDER) | bit(VF.VIRTIO_F_RING_PACKED)
    | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES) | bit(VF.VIRTIO_RING_F_EVENT_IDX)
)
DEFAULT_PF = bit(PF.VHOST_USER_PROTOCOL_F_MQ) | bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_STATUS)


def reply(request: int, payload: bytes, flags: int = REPLY) -> bytes:
    return struct.pack("=III", int(request), flags, len(payload)) + payload


class FakeBackend:
    def __init__(self, path: str, features: int = DEFAULT_FEATURES, protocol_features: int = DEFAULT_PF,
                 queue_num: int = 8, misbehave=None):
        self.path = path
        self.features = features
        self.protocol_features = protocol_features
        self.queue_num = queue_num
        self.misbehave = misbehave or (lambda req: None)
        self.received: list[str] = []
        self.messages: list[tuple[str, bytes]] = []
        self.mem_regions: list[P.MemoryRegion] = []
        self.ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ls.bind(path)
        self.ls.listen(1)
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv_exact(self, s, n, fds):
        buf = b""
        while len(buf) < n:
            data, got, _, _ = socket.recv_fds(s, n - len(buf), 8)
            fds += got
            if not data:
                return None
            buf += data
        return buf

    def _run(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.ls], [], [], 0.05)
            if not r:
                continue
            s, _ = self.ls.accept()
            self._conn = s
            self._serve(s)
            s.close()
            self._conn = None

    def _serve(self, s):
        silent = False
        while not self._stop.is_set():
            r, _, _ = select.select([s], [], [], 0.05)
            if not r:
                continue
            fds: list[int] = []
            hdr = self._recv_exact(s, 12, fds)
            if hdr is None:
                return
            req, flags, size = struct.unpack("=III", hdr)
            payload = self._recv_exact(s, size, fds) if size else b""
            for fd in fds:
                os.close(fd)
            if payload is None:
                return
            name = P.request_name(req)
            self.received.append(name)
            self.messages.append((name, payload))
            if req == R.VHOST_USER_SET_MEM_TABLE:
                self.mem_regions = P.Memory.parse(payload).regions
            if silent:
                continue
            action = self.misbehave(req)
            if action == "close":
                return
            if action == "silence":
                silent = True
                continue
            if isinstance(action, (bytes, bytearray)):
                s.sendall(action)
                continue
            if req == R.VHOST_USER_GET_FEATURES:
                s.sendall(reply(req, P.U64(self.features).pack()))
            elif req == R.VHOST_USER_GET_PROTOCOL_FEATURES:
                s.sendall(reply(req, P.U64(self.protocol_features).pack()))
            elif req == R.VHOST_USER_GET_QUEUE_NUM:
                s.sendall(reply(req, P.U64(self.queue_num).pack()))
            elif flags & P.VHOST_USER_NEED_REPLY_MASK:
                s.sendall(reply(req, P.U64(0).pack()))

    def drop_connection(self):
        c = self._conn
        if c is not None:
            c.shutdown(socket.SHUT_RDWR)

    def close(self):
        self._stop.set()
        self.thread.join(5)
        self.ls.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
