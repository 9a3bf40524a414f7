"""One end of a vhost-user connection: framing messages both ways over a unix stream socket.

:class:`Endpoint` is the only code that reads or writes the wire (rust-vmm's
``connection.rs``).  The back-end's event loop, the virtio-user front-end
and the test doubles all use it.

**Receiving.**  :meth:`Endpoint.read` is the non-blocking step (for event
loops): it reads at most the bytes still missing from the current message,
so the fds that arrive with a message's first header byte stay with that
message, and returns the message once complete (None: not yet).
:meth:`Endpoint.recv` blocks until a whole message arrives or the deadline
passes.  Garbage is refused, with the connection no longer trusted:

* a header whose version bits are not 1, or whose size exceeds
  ``max_payload`` (:class:`~dataplane.vhost_user.errors.FramingError`);
* the peer closing, also in the middle of a message
  (:class:`~dataplane.vhost_user.errors.PeerClosed`);
* more fds than ``max_fds`` with one message: the kernel truncates them and
  the message says so (``Message.fds_truncated``; the fds that did arrive
  are closed with the message);
* nothing before the deadline (:class:`~dataplane.vhost_user.errors.EndpointTimeout`).

**Sending.**  :meth:`Endpoint.send` writes a whole message, its fds as
``SCM_RIGHTS`` with the first byte, waiting at most ``timeout`` for room in
the socket buffer.  :meth:`Endpoint.send_bytes` writes anything (hostile
tests).

:func:`prepare_server_path` makes a path bindable for whichever side listens.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import time

from dataplane import log as dplog
from dataplane.vhost_user.errors import EndpointTimeout, FramingError, PeerClosed, TransportError
from dataplane.vhost_user.messages import (
    FRONTEND_REQUESTS,
    VHOST_USER_HDR_SIZE,
    VHOST_USER_MAX_FDS,
    VHOST_USER_MAX_PAYLOAD,
    VHOST_USER_VERSION,
    Header,
    Message,
    MessageSpec,
    request_name,
)

__all__ = ["Endpoint", "RECV_MAX_FDS", "DEFAULT_TIMEOUT", "prepare_server_path"]

log = dplog.get_logger("dataplane.vhost_user")

#: fds accepted with one message; more than the protocol's maximum so that
#: extra fds are seen (and refused) rather than silently truncated.
RECV_MAX_FDS = VHOST_USER_MAX_FDS + 2
#: Seconds a send may wait for room, and a blocking receive for a message, unless told otherwise.
DEFAULT_TIMEOUT = 5.0


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class Endpoint:
    """A vhost-user connection's socket, framed.  The socket becomes non-blocking; the endpoint owns it.

    ``table`` names requests in errors (front-end requests by default; a
    back-end request channel passes ``BACKEND_REQUESTS``).
    """

    def __init__(self, sock: socket.socket, *, timeout: float = DEFAULT_TIMEOUT,
                 max_payload: int = VHOST_USER_MAX_PAYLOAD, max_fds: int = RECV_MAX_FDS,
                 table: dict[int, MessageSpec] = FRONTEND_REQUESTS):
        self.sock = sock
        self.timeout = timeout
        self.max_payload = max_payload
        self.max_fds = max_fds
        self.table = table
        self.closed = False
        sock.setblocking(False)
        self._buf = bytearray()
        self._header: Header | None = None
        self._fds: list[int] = []
        self._truncated = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def name(self, request: int) -> str:
        return request_name(request, self.table)

    # -- receiving -------------------------------------------------------------

    def read(self) -> Message | None:
        """One non-blocking step: the next complete message, or None when the socket has no more for now.

        Raises :class:`PeerClosed` on EOF/reset and :class:`FramingError` on
        garbage (the partial message's fds are closed either way).
        """
        while True:
            need = (VHOST_USER_HDR_SIZE if self._header is None else self._header.size) - len(self._buf)
            if need == 0 and self._header is not None:
                return self._complete()
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, need, self.max_fds)
            except (BlockingIOError, InterruptedError):
                return None
            except (ConnectionResetError, BrokenPipeError) as e:
                self.discard()
                raise PeerClosed(f"peer reset the connection: {e}") from None
            except OSError as e:
                self.discard()
                raise PeerClosed(f"receive failed: {e}") from None
            self._fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                self._truncated = True
            if not data:
                pending = bool(self._buf) or self._header is not None
                self.discard()
                raise PeerClosed("peer closed the connection" + (" in the middle of a message" if pending else ""))
            self._buf += data
            if self._header is None and len(self._buf) == VHOST_USER_HDR_SIZE:
                self._start_message(Header.parse(bytes(self._buf)))

    def _start_message(self, header: Header) -> None:
        name = self.name(header.request)
        if header.version != VHOST_USER_VERSION:
            self.discard()
            raise FramingError(name, f"bad protocol version {header.version} in flags {header.flags:#x} (size {header.size})")
        if header.size > self.max_payload:
            self.discard()
            raise FramingError(name, f"payload size {header.size} > {self.max_payload} (stream unusable)")
        self._header = header
        self._buf = bytearray()

    def _complete(self) -> Message:
        assert self._header is not None
        msg = Message(self._header.request, self._header.flags, bytes(self._buf), self._fds, self._truncated)
        self._buf, self._header, self._fds, self._truncated = bytearray(), None, [], False
        return msg

    def recv(self, timeout: float | None = None) -> Message:
        """Block until a whole message arrives (:class:`EndpointTimeout` after ``timeout``, default the endpoint's)."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            msg = self.read()
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise EndpointTimeout(f"nothing received within {wait:.1f}s")

    def peek(self) -> bytes | None:
        """Without consuming anything: None when nothing is pending, b"" when the peer closed, else the pending bytes."""
        try:
            return self.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def discard(self) -> None:
        """Drop a partial message and close its fds."""
        _close_all(self._fds)
        self._buf, self._header, self._truncated = bytearray(), None, False

    # -- sending ----------------------------------------------------------------

    def send(self, msg: Message, timeout: float | None = None) -> None:
        """Send a whole message (fds with its first byte); :class:`EndpointTimeout` / :class:`PeerClosed` on failure."""
        self.send_bytes(msg.encode(), [fd for fd in msg.fds if fd >= 0], timeout, self.name(msg.request))

    def send_bytes(self, data: bytes, fds=(), timeout: float | None = None, what: str = "") -> None:
        """Send ``data`` as is (fds with its first byte)."""
        view = memoryview(bytes(data))
        fds = list(fds)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while view:
            try:
                n = socket.send_fds(self.sock, [view], fds) if fds else self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EndpointTimeout(what, "send timed out: peer does not read") from None
                select.select([], [self.sock], [], left)
                continue
            except OSError as e:
                raise PeerClosed(what, f"send failed: {e}") from None
            fds = []
            view = view[n:]

    def close(self) -> None:
        """Close the socket and drop a partial message (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.discard()
        try:
            self.sock.close()
        except OSError:
            pass


def prepare_server_path(path: str) -> None:
    """Make ``path`` bindable: remove a stale socket file; refuse a live socket or any other file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        log.info("removed stale vhost-user socket file", path=path)
        return
    except OSError as e:
        raise TransportError(f"{path}: cannot check the existing socket: {e.strerror or e}") from None
    finally:
        probe.close()
    raise TransportError(f"{path} is in use by a live server")
