"""The back-end's request channel: back-end → front-end requests on the SET_BACKEND_REQ_FD socket.

The front-end gives the back-end one end of a socket pair with
``SET_BACKEND_REQ_FD`` (protocol feature BACKEND_REQ); the back-end sends its
own requests on it (:data:`~dataplane.vhost_user.messages.BACKEND_REQUESTS`):
``CONFIG_CHANGE_MSG`` (the config space changed, e.g. a disk grew) and
``VRING_HOST_NOTIFIER_MSG`` (map this page as vring N's doorbell, or withdraw
it).  :class:`BackendChannel` is that sender; every frame goes through the one
:class:`~dataplane.vhost_user.endpoint.Endpoint`.

**Replies.**  With REPLY_ACK negotiated every request carries NEED_REPLY and
the front-end answers a u64: 0 done, anything else refused.
:meth:`BackendChannel.send` returns a :class:`concurrent.futures.Future`
that ends with that answer (0), or fails with
:class:`~dataplane.vhost_user.errors.RequestError` (the front-end refused it),
:class:`~dataplane.vhost_user.errors.EndpointTimeout` (no answer within
``timeout``), :class:`~dataplane.vhost_user.errors.PeerClosed` (the channel
is gone) or :class:`~dataplane.vhost_user.errors.ProtocolError` (the answer
is garbage).  Without REPLY_ACK the future ends with 0 once the request is
written.

**Never wait on the vhost-events thread.**  QEMU serves this channel from
its main loop, and only when it is not itself blocked waiting for one of our
replies on the front channel; while it handles CONFIG_CHANGE_MSG it even
sends GET_CONFIG on the front channel and waits for our answer before it
acks.  A back-end that blocks on the ack (DPDK holds ``backend_req_lock``
and reads the reply in the calling thread) deadlocks when that thread is the
one serving the front channel.  Here the channel is one more reader of the
event loop: :meth:`~BackendChannel.send` only writes (never waiting for room:
a front-end that does not read loses its channel), answers are matched as
they arrive while front-end requests keep being served, and a timer bounds
each wait.  Callers on other threads wait on the future; callbacks on the
loop thread chain on it (``add_done_callback``) and must never block on it.

**Hostile front-ends.**  No answer within ``timeout``, an answer for another
request, an answer without the REPLY flag, a wrong payload, fds with an
answer, anything sent when nothing is pending, or garbage framing: the
channel is closed with a structlog error naming the device, the request and
the reason, and every pending request fails.  The front channel stays up:
only back-end requests are lost (QEMU itself drops its end of the channel
on any error).  Answers arrive in order on one stream, so once one is lost
nothing after it can be matched: closing is the only safe reaction.

The channel is closed on RESET_OWNER, on a new SET_BACKEND_REQ_FD and when
the connection ends (the device calls :meth:`BackendChannel.close`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from dataplane import log as dplog
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.endpoint import Endpoint
from dataplane.vhost_user.errors import (
    EndpointTimeout,
    FramingError,
    PeerClosed,
    ProtocolError,
    RequestError,
    VhostUserError,
)
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF
from dataplane.vhost_user.messages import (
    BACKEND_REQUESTS,
    Message,
    VhostUserBackendRequest as B,
    parse_reply,
    request_name,
)

__all__ = ["ACK_TIMEOUT", "MAX_PENDING", "BackendChannel", "completed"]

log = dplog.get_logger("dataplane.vhost")

#: Seconds the front-end has to answer a request sent with NEED_REPLY.
ACK_TIMEOUT = 10.0
#: Requests waiting for their answer at most; more are refused (a front-end that never answers).
MAX_PENDING = 64


def completed(result: Any = None, error: BaseException | None = None) -> concurrent.futures.Future:
    """A future that is already done (a request refused before it was sent, or one needing no answer)."""
    fut: concurrent.futures.Future = concurrent.futures.Future()
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
    return fut


@dataclass
class _Pending:
    request: int
    future: concurrent.futures.Future
    timer: Any = field(default=None)


class BackendChannel:
    """The back-end request channel of one device (see the module docstring).

    ``loop`` is the vhost-events :class:`~dataplane.vhost.transport.EventLoop`
    (every method runs on its thread); ``fd`` the socket the front-end sent
    (the channel owns it); ``dev`` the device, read for its name, vid and
    negotiated protocol features.
    """

    def __init__(self, loop: Any, fd: int, dev: Any, *, timeout: float | None = None):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            _close_fd(fd)
            raise RequestError(f"the back-end channel fd is not a socket: {e.strerror or e}") from None
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise RequestError("the back-end channel fd is not a unix stream socket")
        self.loop = loop
        self.dev = dev
        self.timeout = ACK_TIMEOUT if timeout is None else timeout
        # answers carry no fds: one more than that is seen (and refused) rather than silently truncated
        self.endpoint = Endpoint(sock, timeout=0.0, max_fds=1, table=BACKEND_REQUESTS)
        self.closed = False
        self.close_reason = ""
        self._pending: collections.deque[_Pending] = collections.deque()
        self.stats: collections.Counter[str] = collections.Counter()
        loop.add_reader(sock, self._readable)

    def fileno(self) -> int:
        return self.endpoint.fileno()

    @property
    def pending(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    # -- sending ------------------------------------------------------------------

    def send(self, request: int, payload: P.Payload | bytes = b"", fds: list[int] | tuple = ()) -> concurrent.futures.Future:
        """Send a back-end request (loop thread only); the future ends with the front-end's answer.

        ``fds`` are sent, not taken: the caller keeps (and closes) its own.
        Refusals (channel closed, the gating protocol feature or BACKEND_SEND_FD
        not negotiated, too many pending) come back as a failed future.
        """
        name = request_name(request, BACKEND_REQUESTS)
        error = self._refusal(request, name, fds)
        if error is not None:
            self.stats["refused"] += 1
            log.error("back-end request not sent", path=self.dev.ifname, vid=self.dev.vid, request=name, reason=error.reason)
            return completed(error=error)
        need_reply = self.dev.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK)
        msg = Message.build(request, payload, list(fds), need_reply=need_reply)
        try:
            self.endpoint.send(msg, timeout=0.0)  # never wait on the loop thread for room
        except VhostUserError as e:
            reason = "the front-end does not read it" if isinstance(e, EndpointTimeout) else e.reason
            self.close(f"sending {name} failed: {reason}")
            return completed(error=PeerClosed(name, f"back-end channel closed: {self.close_reason}"))
        self.stats["sent"] += 1
        log.info("back-end request sent", path=self.dev.ifname, vid=self.dev.vid, request=name, need_reply=need_reply)
        if not need_reply:
            return completed(0)
        p = _Pending(int(request), concurrent.futures.Future())
        p.timer = self.loop.call_later(self.timeout, lambda: self._expired(p))
        self._pending.append(p)
        return p.future

    def _refusal(self, request: int, name: str, fds) -> VhostUserError | None:
        if self.closed:
            return PeerClosed(name, f"back-end channel closed: {self.close_reason}")
        spec = BACKEND_REQUESTS.get(int(request))
        if spec is None:
            return RequestError(name, "not a back-end request")
        if spec.gate is not None and not self.dev.has_protocol_feature(spec.gate):
            return RequestError(name, f"{spec.gate.name.removeprefix('VHOST_USER_PROTOCOL_F_')} protocol feature not negotiated")
        if fds and not self.dev.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD):
            return RequestError(name, "BACKEND_SEND_FD protocol feature not negotiated: the channel cannot carry fds")
        if len(self._pending) >= MAX_PENDING:
            return RequestError(name, f"{MAX_PENDING} requests still wait for the front-end's answer")
        return None

    def config_change(self) -> concurrent.futures.Future:
        """CONFIG_CHANGE_MSG: the device's config space changed (the front-end reads it with GET_CONFIG)."""
        return self.send(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG)

    def vring_host_notifier(self, qid: int, fd: int | None, offset: int = 0, size: int = 0) -> concurrent.futures.Future:
        """VRING_HOST_NOTIFIER_MSG: map ``size`` bytes of ``fd`` at ``offset`` as vring ``qid``'s doorbell
        (QEMU wants one host page), or ``fd=None`` to withdraw it (NOFD).  ``fd`` stays the caller's."""
        name = B.VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG.name
        if not 0 <= qid <= P.VHOST_USER_VRING_IDX_MASK:
            return completed(error=RequestError(name, f"vring index {qid} out of range"))
        if fd is not None:
            try:  # a bad fd is the caller's mistake: refuse it rather than lose the channel in sendmsg
                os.fstat(fd)
            except (OSError, TypeError, ValueError) as e:
                return completed(error=RequestError(name, f"not an open fd: {fd!r} ({e})"))
            if size <= 0 or offset < 0:
                return completed(error=RequestError(name, f"bad area: offset {offset}, size {size}"))
        if fd is None:
            return self.send(B.VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG, P.VringArea(qid | P.VHOST_USER_VRING_NOFD_MASK, 0, 0))
        return self.send(B.VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG, P.VringArea(qid, size, offset), [fd])

    # -- answers ------------------------------------------------------------------

    def _readable(self) -> None:
        while not self.closed:
            try:
                msg = self.endpoint.read()
            except PeerClosed as e:
                self.close(f"the front-end closed it ({e.reason})")
                return
            except FramingError as e:
                self.close(f"garbage from the front-end: {e}")
                return
            if msg is None:
                return
            try:
                self._answer(msg)
            finally:
                msg.close_fds()

    def _answer(self, msg: Message) -> None:
        if not self._pending:
            self.close(f"unsolicited message from the front-end ({request_name(msg.request, BACKEND_REQUESTS)}, "
                       f"flags {msg.flags:#x}) while no request waits for an answer")
            return
        p = self._pending[0]
        name = request_name(p.request, BACKEND_REQUESTS)
        try:
            if msg.fds or msg.fds_truncated:
                raise ProtocolError(name, "fds sent with the answer")
            ack = parse_reply(msg, p.request, BACKEND_REQUESTS).u64  # type: ignore[attr-defined]
        except ProtocolError as e:
            self._fail_head(e, f"bad answer: {e}")
            return
        self._pending.popleft()
        p.timer.cancel()
        if ack == 0:
            self.stats["acked"] += 1
            log.info("back-end request acknowledged", path=self.dev.ifname, vid=self.dev.vid, request=name)
            p.future.set_result(0)
        else:
            self.stats["nacked"] += 1
            log.error("back-end request refused by the front-end", path=self.dev.ifname, vid=self.dev.vid,
                      request=name, status=ack)
            p.future.set_exception(RequestError(name, f"the front-end refused it (status {ack})"))

    def _expired(self, p: _Pending) -> None:
        if not self.closed and self._pending and self._pending[0] is p:
            name = request_name(p.request, BACKEND_REQUESTS)
            reason = f"no answer to {name} within {self.timeout:g} s"
            self._fail_head(EndpointTimeout(name, reason), reason)

    def _fail_head(self, error: VhostUserError, reason: str) -> None:
        """The oldest request failed with ``error``; the stream cannot be trusted after it: close."""
        p = self._pending.popleft()
        p.timer.cancel()
        self.close(reason)
        p.future.set_exception(error)

    # -- closing ------------------------------------------------------------------

    def close(self, reason: str = "") -> None:
        """Close the channel; pending requests fail.  ``reason`` (an error) is logged; none: a normal close."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason or "closed by the back-end"
        self.loop.remove_reader(self.endpoint.sock)
        self.endpoint.close()
        if reason:
            self.stats["errors"] += 1
            log.error("back-end channel closed", path=self.dev.ifname, vid=self.dev.vid, reason=reason,
                      pending=len(self._pending))
        while self._pending:
            p = self._pending.popleft()
            if p.timer is not None:
                p.timer.cancel()
            name = request_name(p.request, BACKEND_REQUESTS)
            p.future.set_exception(PeerClosed(name, f"back-end channel closed: {self.close_reason}"))


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
