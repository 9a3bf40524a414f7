"""A scripted QMP server (QEMU's side of a QMP socket) for tests of management agents.

It greets, accepts ``qmp_capabilities``, answers ``query-rx-filter`` from :attr:`filters`
(NIC id -> ``main-mac``, or a raw reply object to send instead) and sends what a test
queues with :meth:`event` or :meth:`raw`.  Every request is recorded in :attr:`requests`.
"""

from __future__ import annotations

import json
import os
import socket
import threading

__all__ = ["ScriptedQmp"]


class ScriptedQmp:
    def __init__(self, path: str):
        self.path = path
        self.filters: dict[str, object] = {}
        self.requests: list[dict] = []
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(path)
        self._srv.listen(1)
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _send(self, obj) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        self._conn.sendall(data)

    def _serve(self) -> None:
        try:
            self._conn, _ = self._srv.accept()
        except OSError:
            return
        self._send({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}}, "capabilities": []}})
        f = self._conn.makefile("rb")
        for line in f:
            req = json.loads(line)
            self.requests.append(req)
            if req.get("execute") == "query-rx-filter":
                name = req.get("arguments", {}).get("name")
                reply = self.filters.get(name)
                if isinstance(reply, str):
                    reply = {"return": [{"name": name, "main-mac": reply, "promiscuous": False}]}
                elif reply is None:
                    reply = {"error": {"class": "GenericError", "desc": f"invalid net client name: {name}"}}
                self._send(reply)
            else:
                self._send({"return": {}})

    def event(self, name: str, data: dict) -> None:
        """Send an event now (after the agent is connected)."""
        self._send({"event": name, "data": data, "timestamp": {"seconds": 0, "microseconds": 0}})

    def raw(self, data: bytes) -> None:
        self._send(data)

    def close(self) -> None:
        """Close the connection (QEMU quits) and the listening socket."""
        for s in (self._conn, self._srv):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._thread.join(5)
        if os.path.exists(self.path):
            os.unlink(self.path)
