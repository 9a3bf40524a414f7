"""Unix-socket transport for vhost-user: one event thread, servers, clients, framed messages.

* :class:`EventLoop` -- the process's single "vhost-events" thread (DPDK has
  one too): a selector over every listening socket and connection, plus
  timers (client reconnects).  Other threads run code in it with
  :meth:`EventLoop.call`.
* :class:`Connection` -- one accepted or connected socket, framed by a
  :class:`~dataplane.vhost_user.endpoint.Endpoint`: feeds complete messages
  to a handler, sends replies (with fds), closes once.
* :class:`ServerEndpoint` -- listens on a path (a stale socket file left by a
  dead process is removed; a live one or a non-socket file is an error), one
  :class:`Connection` per accepted front-end, the file unlinked on stop.
* :class:`ClientEndpoint` -- connects to a path; until it succeeds, retries
  every second (:data:`RECONNECT_INTERVAL`) unless reconnect is off; after
  the peer goes away, connects again.
"""

from __future__ import annotations

import concurrent.futures
import errno
import heapq
import itertools
import os
import selectors
import socket
import threading
import time
from typing import Any, Callable

from dataplane import log as dplog
from dataplane.vhost_user.endpoint import Endpoint, prepare_server_path
from dataplane.vhost_user.errors import FramingError, PeerClosed, TransportError, VhostUserError
from dataplane.vhost_user.messages import Message, request_name

__all__ = [
    "RECONNECT_INTERVAL",
    "EventLoop",
    "Connection",
    "ServerEndpoint",
    "ClientEndpoint",
]

log = dplog.get_logger("dataplane.vhost")

#: Seconds between two connection attempts of a client socket.
RECONNECT_INTERVAL = 1.0
#: How long a send may wait for a full socket buffer before the connection is dropped.
SEND_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# Event loop
# ---------------------------------------------------------------------------


class _Timer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], Any]):
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """A selector loop in one daemon thread ("vhost-events").

    Readers (``add_reader``), timers (``call_later``) and calls from other
    threads (``call``) all run in that thread, one at a time.  Exceptions in
    callbacks are logged and the loop goes on.
    """

    def __init__(self, name: str = "vhost-events", clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.clock = clock  # seconds; timers run by it (tests inject a clock they move by hand)
        self._sel = selectors.DefaultSelector()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake_fd, selectors.EVENT_READ, None)
        self._calls: list[tuple[Callable[[], Any], concurrent.futures.Future | None]] = []
        self._calls_lock = threading.Lock()
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- public -------------------------------------------------------------

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., Any], *args: Any, wait: bool = True, timeout: float | None = 30.0) -> Any:
        """Run ``fn(*args)`` in the loop thread; wait for and return its result (or raise its exception).

        From the loop thread itself the call runs immediately.
        """
        if self.in_loop():
            return fn(*args)
        fut: concurrent.futures.Future | None = concurrent.futures.Future() if wait else None
        with self._calls_lock:
            if self._stopping:
                raise RuntimeError(f"{self.name} loop is stopped")
            self._calls.append((lambda: fn(*args), fut))
        self._wake()
        return fut.result(timeout) if fut is not None else None

    def turn(self, timeout: float | None = 30.0) -> None:
        """Return after one full turn of the loop: every timer due by :attr:`clock` has run."""
        self.call(lambda: None, timeout=timeout)

    def add_reader(self, fileobj: Any, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` in the loop whenever ``fileobj`` is readable (loop thread only)."""
        self._sel.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        try:
            self._sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def call_later(self, delay: float, fn: Callable[[], Any]) -> _Timer:
        """Run ``fn()`` in the loop after ``delay`` seconds (loop thread only); returns a cancellable handle."""
        t = _Timer(self.clock() + delay, fn)
        heapq.heappush(self._timers, (t.when, next(self._seq), t))
        return t

    def stop(self) -> None:
        """Stop the thread and release the selector and the wakeup fd."""
        with self._calls_lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake()
        if not self.in_loop():
            self._thread.join(10)

    # -- internals ----------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def _timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self.clock())

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._sel.select(self._timeout()):
                    if key.data is None:
                        try:
                            os.eventfd_read(self._wake_fd)
                        except OSError:
                            pass
                        continue
                    self._guard(key.data)
                now = self.clock()
                while self._timers and (self._timers[0][2].cancelled or self._timers[0][0] <= now):
                    t = heapq.heappop(self._timers)[2]
                    if not t.cancelled:
                        self._guard(t.fn)
                with self._calls_lock:
                    calls, self._calls = self._calls, []
                for fn, fut in calls:
                    try:
                        result = fn()
                    except BaseException as e:  # handed to the caller
                        if fut is not None:
                            fut.set_exception(e)
                        else:
                            log.exception("vhost-events call raised")
                    else:
                        if fut is not None:
                            fut.set_result(result)
        finally:
            with self._calls_lock:
                self._stopping = True
                calls, self._calls = self._calls, []
            for _, fut in calls:
                if fut is not None:
                    fut.set_exception(RuntimeError(f"{self.name} loop stopped"))
            self._sel.close()
            os.close(self._wake_fd)

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.exception("vhost-events callback raised")


# ---------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------


class Connection:
    """One vhost-user connection served by the loop.

    ``on_message(conn, msg) -> bool`` handles a request (False: close);
    ``on_framing_error(conn, reason)`` is told about garbage before the close;
    ``on_closed(conn, reason)`` runs exactly once, whoever closes.
    """

    #: messages handled per readable event, so one busy peer cannot starve the others
    BATCH = 64

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        path: str,
        on_message: Callable[["Connection", Message], bool],
        on_closed: Callable[["Connection", str], None],
        on_framing_error: Callable[["Connection", str], None] | None = None,
    ):
        self.loop = loop
        self.sock = sock
        self.path = path
        self.closed = False
        self.on_message = on_message
        self.on_closed = on_closed
        self.on_framing_error = on_framing_error
        self.endpoint = Endpoint(sock, timeout=SEND_TIMEOUT)
        loop.add_reader(sock, self._readable)

    def _readable(self) -> None:
        for _ in range(self.BATCH):
            if self.closed:
                return
            try:
                msg = self.endpoint.read()
            except PeerClosed as e:
                self.close(str(e))
                return
            except FramingError as e:
                if self.on_framing_error is not None:
                    self.on_framing_error(self, str(e))
                self.close(f"protocol violation: {e}")
                return
            if msg is None:
                return
            try:
                keep = self.on_message(self, msg)
            finally:
                msg.close_fds()
            if not keep:
                self.close(f"{request_name(msg.request)} refused")
                return

    def send(self, msg: Message) -> None:
        """Send a message; a peer that is gone or does not read closes the connection."""
        if self.closed:
            return
        try:
            self.endpoint.send(msg)
        except VhostUserError as e:
            log.warning("vhost-user send failed", path=self.path, error=str(e))
            self.close(f"send failed: {e}")

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock)
        try:
            self.endpoint.close()
        finally:
            self.on_closed(self, reason)


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------


class ServerEndpoint:
    """Listen on ``path``; ``on_connection(sock)`` for every accepted front-end."""

    def __init__(self, loop: EventLoop, path: str, on_connection: Callable[[socket.socket], None]):
        self.loop = loop
        self.path = path
        self.on_connection = on_connection
        self.listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> None:
        prepare_server_path(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(self.path)
            s.listen(128)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise TransportError(f"cannot listen on {self.path}: {e.strerror or e}") from None
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self.listener = s
        self.loop.add_reader(s, self._accept)
        log.info("vhost-user server listening", path=self.path)

    def _accept(self) -> None:
        while self.listener is not None:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.error("vhost-user accept failed", path=self.path, error=e.strerror)
                return
            self.on_connection(conn)

    def stop(self) -> None:
        """Stop listening and remove the socket file (only if it is still ours)."""
        if self.listener is None:
            return
        self.loop.remove_reader(self.listener)
        self.listener.close()
        self.listener = None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


class ClientEndpoint:
    """Connect to ``path``; retry every :data:`RECONNECT_INTERVAL` s if ``reconnect``, also after a disconnect."""

    def __init__(self, loop: EventLoop, path: str, reconnect: bool, on_connection: Callable[[socket.socket], None]):
        self.loop = loop
        self.path = path
        self.reconnect = reconnect
        self.on_connection = on_connection
        self.stopped = False
        self.attempts = 0
        self._timer: _Timer | None = None
        self._logged_failure = False

    def _connect_once(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        return s

    def start(self) -> None:
        """First attempt; without reconnect a failure raises :class:`TransportError`."""
        self.stopped = False
        self._attempt(raise_on_failure=not self.reconnect)

    def _attempt(self, raise_on_failure: bool = False) -> None:
        self._timer = None
        if self.stopped:
            return
        self.attempts += 1
        try:
            sock = self._connect_once()
        except OSError as e:
            reason = errno.errorcode.get(e.errno or 0, str(e))
            if raise_on_failure:
                raise TransportError(f"cannot connect to {self.path}: {e.strerror or reason}") from None
            if not self._logged_failure:
                log.info("vhost-user client waiting for the server; retrying every second", path=self.path, error=reason)
                self._logged_failure = True
            else:
                log.debug("vhost-user client connect failed", path=self.path, error=reason, attempt=self.attempts)
            self._timer = self.loop.call_later(RECONNECT_INTERVAL, self._attempt)
            return
        self._logged_failure = False
        log.info("vhost-user client connected", path=self.path, attempt=self.attempts)
        self.on_connection(sock)

    def connection_lost(self) -> None:
        """The connection ended: connect again (now, then every second) if reconnect is on."""
        if self.reconnect and not self.stopped:
            self._attempt()

    def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
