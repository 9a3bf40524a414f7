"""The one error hierarchy of vhost-user, for both sides::

    VhostUserError                  request (spec name or ""), reason
    ├── ProtocolError               a message breaks the protocol: unknown request, wrong payload
    │   │                           size, wrong fd count, a reply that does not match its request
    │   └── FramingError            the byte stream is not vhost-user (bad version bits, payload over
    │                               the limit): nothing after it can be trusted, close the connection
    ├── TransportError              the socket failed: listen, connect, send
    │   ├── PeerClosed              the peer closed (or reset) the connection
    │   └── EndpointTimeout         no message (or no room to send) before the deadline
    └── RequestError                a well-formed request is refused: by the back-end's handler, or
        │                           by the back-end in its REPLY_ACK (front-end side)
        └── QueueError              (back-end) the request leaves one vring unusable; the
                                    connection is kept
"""

from __future__ import annotations

__all__ = [
    "VhostUserError",
    "ProtocolError",
    "FramingError",
    "TransportError",
    "PeerClosed",
    "EndpointTimeout",
    "RequestError",
    "QueueError",
]


class VhostUserError(Exception):
    """Base of every vhost-user failure.

    ``request`` names the request concerned (its spec name, ``"request N"``
    for an unknown number, or ``""`` when none is); ``reason`` says what was
    wrong.  ``str(e)`` is ``"REQUEST: reason"`` (or just the reason).
    """

    def __init__(self, request: str = "", reason: str = ""):
        if not reason:
            request, reason = "", request  # one argument: the reason alone
        super().__init__(f"{request}: {reason}" if request else reason)
        self.request = request
        self.reason = reason


class ProtocolError(VhostUserError):
    """A message does not follow the protocol."""


class FramingError(ProtocolError):
    """The byte stream is not vhost-user: the connection cannot be trusted any more."""


class TransportError(VhostUserError):
    """The socket failed (listen, connect, send)."""


class PeerClosed(TransportError):
    """The peer closed the connection (or reset it)."""


class EndpointTimeout(TransportError):
    """Nothing arrived (or nothing could be sent) before the deadline."""


class RequestError(VhostUserError):
    """A request is refused.  Back-end: with NEED_REPLY reply 1 and keep going, else close."""


class QueueError(RequestError):
    """A request leaves one vring unusable; the connection is kept either way."""
