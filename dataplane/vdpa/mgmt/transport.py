"""The management socket: netlink-like requests and replies as JSON lines.

The service listens on a unix stream socket (``vdpa.sock`` in the runtime
directory of a file prefix).  A client writes one request per line and reads
one reply line per request, in order::

    -> {"seq": 1, "cmd": 5, "dump": false, "attrs": [[4, "vdpa0"]]}
    <- {"seq": 1, "error": 0, "extack": null,
        "messages": [{"cmd": 3, "attrs": [[2, "vdpasim_net"], [4, "vdpa0"], ...]}]}

``cmd`` is a :class:`~.attrs.VdpaCmd`, attributes are ``[VdpaAttr id, value]``
pairs in order, binary values as hex strings.  ``error`` is 0 or a negative
errno and ``extack`` the extack message, as in a netlink ack.  A request that
is not valid JSON or not of this shape gets an error reply (``-EINVAL``) and
the connection stays usable; a line longer than :data:`MAX_LINE` closes it.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import threading

from dataplane import log as dplog

from .attrs import AttrError, VdpaCmd, decode_attrs, encode_attrs

log = dplog.get_logger("dataplane.vdpa.mgmt")

#: the longest request line the server accepts
MAX_LINE = 1 << 20
#: sun_path holds 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107


def encode_request(seq: int, cmd: int, attrs=(), dump: bool = False) -> bytes:
    req = {"seq": seq, "cmd": int(cmd), "dump": bool(dump), "attrs": encode_attrs(attrs)}
    return json.dumps(req, separators=(",", ":")).encode() + b"\n"


def encode_reply(seq, reply) -> bytes:
    out = {
        "seq": seq,
        "error": int(reply.error),
        "extack": reply.extack,
        "messages": [{"cmd": int(m.cmd), "attrs": encode_attrs(m.attrs)} for m in reply.messages],
    }
    return json.dumps(out, separators=(",", ":")).encode() + b"\n"


def decode_request(line: bytes):
    """``(seq, cmd, attrs, dump)`` from a request line; raises ValueError if malformed."""
    try:
        req = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(req, dict):
        raise ValueError("a request is a JSON object")
    seq = req.get("seq")
    cmd = req.get("cmd")
    if isinstance(cmd, bool) or not isinstance(cmd, int):
        raise _Malformed(seq, "'cmd' must be an integer")
    dump = req.get("dump", False)
    if not isinstance(dump, bool):
        raise _Malformed(seq, "'dump' must be true or false")
    try:
        attrs = decode_attrs(req.get("attrs", []))
    except AttrError as exc:
        raise _Malformed(seq, str(exc)) from None
    return seq, cmd, attrs, dump


class _Malformed(ValueError):
    def __init__(self, seq, message: str):
        super().__init__(message)
        self.seq = seq


def decode_reply(line: bytes):
    """An :class:`~.service.NlReply` from a reply line; raises ValueError if malformed."""
    from .service import NlMessage, NlReply

    try:
        data = json.loads(line)
        reply = NlReply(error=int(data["error"]), extack=data.get("extack"))
        for m in data["messages"]:
            reply.messages.append(NlMessage(VdpaCmd(m["cmd"]), decode_attrs(m["attrs"])))
    except (ValueError, KeyError, TypeError, AttrError) as exc:
        raise ValueError(f"malformed reply from the vdpa management service: {exc}") from None
    return reply, data.get("seq")


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""


class MgmtServer:
    """Serves ``handler(cmd, attrs, dump) -> NlReply`` on the unix socket ``path``
    from one thread (a selector loop over all connections)."""

    def __init__(self, path: str, handler):
        self.path = path
        self.handler = handler
        self._listen: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None
        self._made_dir = False
        self._conns: dict = {}

    def start(self) -> None:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise OSError(errno.ENAMETOOLONG, f"socket path longer than {MAX_SOCKET_PATH} bytes", self.path)
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._made_dir = True
        if os.path.exists(self.path):
            if _answers(self.path):
                raise OSError(errno.EADDRINUSE, "a vdpa management service already listens there", self.path)
            log.warning("removing a stale vdpa management socket", path=self.path)
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.setblocking(False)
            self._inode = os.stat(self.path).st_ino
        except BaseException:
            sock.close()
            raise
        self._listen = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="vdpa-mgmt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(10)
        if self._thread.is_alive():  # pragma: no cover - the loop never blocks elsewhere
            log.error("vdpa management thread did not stop")
        self._thread = None
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._conns.clear()
        for s in (self._listen, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._listen = self._wake_r = self._wake_w = None
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._made_dir:
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:  # not empty: someone else uses it now
                pass

    # ----------------------------------------------------------------- loop
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listen, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, mask in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "listen":
                        self._accept(sel)
                        continue
                    conn = key.data
                    try:
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        if conn.outbuf:
                            self._write(conn)
                    except (OSError, _Close) as exc:
                        if not isinstance(exc, _Close):
                            log.debug("vdpa management connection dropped", error=str(exc))
                        self._drop(sel, conn)
                        continue
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
                    if key.events != events:
                        sel.modify(conn.sock, events, conn)
        except Exception as exc:  # pragma: no cover - a bug; keep the process alive
            log.error("vdpa management loop failed", error=repr(exc))
        finally:
            sel.close()

    def _accept(self, sel) -> None:
        try:
            sock, _ = self._listen.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and the like: drop this one, keep listening
            log.warning("vdpa management accept failed", error=str(exc))
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self._conns[sock.fileno()] = conn
        sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, sel, conn: _Conn) -> None:
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            if conn.outbuf:  # the peer shut down writing; flush what it asked for
                conn.sock.setblocking(True)
                conn.sock.settimeout(1.0)
                conn.sock.sendall(conn.outbuf)
            raise _Close()
        conn.inbuf += data
        while b"\n" in conn.inbuf:
            line, conn.inbuf = conn.inbuf.split(b"\n", 1)
            if line.strip():
                conn.outbuf += self._answer(line)
        if len(conn.inbuf) > MAX_LINE:
            conn.outbuf += _error_line(None, errno.EMSGSIZE, "request line too long")
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(conn.outbuf)
            raise _Close()

    def _write(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        conn.outbuf = conn.outbuf[n:]

    def _answer(self, line: bytes) -> bytes:
        try:
            seq, cmd, attrs, dump = decode_request(line)
        except _Malformed as exc:
            log.warning("malformed vdpa management request", error=str(exc))
            return _error_line(exc.seq, errno.EINVAL, f"malformed request: {exc}")
        except ValueError as exc:
            log.warning("malformed vdpa management request", error=str(exc))
            return _error_line(None, errno.EINVAL, f"malformed request: {exc}")
        try:
            reply = self.handler(cmd, attrs, dump)
            return encode_reply(seq, reply)
        except Exception as exc:  # the handler never raises; be safe anyway
            log.error("vdpa management handler failed", error=repr(exc))
            return _error_line(seq, errno.EIO, f"internal error: {exc}")


class _Close(Exception):
    pass


def _error_line(seq, errno_: int, message: str) -> bytes:
    seq = seq if isinstance(seq, (int, str)) and not isinstance(seq, bool) else None
    out = {"seq": seq, "error": -errno_, "extack": message, "messages": []}
    return json.dumps(out, separators=(",", ":")).encode() + b"\n"


def _answers(path: str) -> bool:
    """True if something accepts connections on the unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class MgmtClient:
    """A connection to the service; ``request()`` has the same shape as
    :meth:`~.service.VdpaManagement.request`. Raises OSError if it cannot connect."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except BaseException:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")
        self._seq = 0

    def request(self, cmd: int, attrs=(), dump: bool = False):
        self._seq += 1
        self._sock.sendall(encode_request(self._seq, cmd, attrs, dump))
        line = self._file.readline(MAX_LINE * 16)
        if not line.endswith(b"\n"):
            raise ConnectionError("the vdpa management service closed the connection")
        reply, _seq = decode_reply(line)
        return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> "MgmtClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["MAX_LINE", "MgmtClient", "MgmtServer", "decode_reply", "decode_request", "encode_reply", "encode_request"]
