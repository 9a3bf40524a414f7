"""What every emulated PCI function shares, whatever the card: its directory, DMA map, MSI-X
eventfds and the control channel ``vfio.sock``.

**The control channel** (a SOCK_SEQPACKET unix socket in the function's directory, one driver
at a time: a second connection gets its first request answered with a refusal, then is
closed).  Requests are JSON objects; fds ride along with SCM_RIGHTS:

* ``{"op": "dma_map", "iova", "size", "offset"}`` + one memory fd: the card maps the fd itself;
* ``{"op": "dma_unmap", "iova", "size"}``: every mapping wholly inside goes (queues whose
  rings lay there stop with a counted fault first; the card decides, :meth:`Function.dma_unmap`);
* ``{"op": "set_irqs", "vectors": [i or -1, ...]}`` + fds: vector ``v`` is bound to fd
  ``vectors[v]`` (an eventfd the card writes for that vector's interrupts);
* ``{"op": "get_region_info", "bar": 0 | 4 | "config"}``: the file of a region and its size;
* ``{"op": "get_device_info"}``: the BDF, the number of vectors and queues, region sizes
  (and whatever the card adds, :meth:`Function.device_info`);
* ``{"op": "reset"}``: the function resets (the DMA map and eventfds stay, as VFIO keeps them).

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``; a bad request is counted
(``bad_requests``), never fatal.  When the driver closes the channel its DMA maps and eventfds are
dropped and the function is reset.

A card's function class (:class:`dataplane.nic.card.VF`, :class:`dataplane.nic.mlx5.card.Mlx5Function`)
adds its registers, queues and datapath hooks: :meth:`poll_registers`, :meth:`poll_doorbells`,
:meth:`reset`, :meth:`dma_unmap`, :meth:`drop_driver`, :meth:`bind_irqs`, and for the switch
(:mod:`dataplane.nic.cardproc`) :meth:`tx_queues`, :meth:`rx_ctx`, :meth:`switch_active`.
"""

from __future__ import annotations

import json
import os
import socket

from dataplane import log as dplog

from .dma import DmaMap, RequestError, close_fds
from .shm import V_BAD_REQUESTS, V_CONNECTED, V_DMA_MAPS, V_DRIVERS, V_IRQS_SET, V_MAC

__all__ = ["Function", "MAX_MSG"]

log = dplog.get_logger("dataplane.nic")

MAX_MSG = 65536


class Function:
    """One PCI function ``bdf`` (index ``index``) of ``card``: its directory and control channel."""

    #: the card model, in log lines
    model = "nic"

    def __init__(self, card, index: int, bdf: str, mac: bytes, nvec: int):
        self.card = card
        self.index = index
        self.bdf = bdf
        self.mac = mac
        self.nvec = nvec
        self.dir = os.path.join(card.dir, bdf)
        os.makedirs(self.dir, exist_ok=True)
        self.rows = card.shm.queues[index]
        self.vrow = card.shm.vf[index]
        self.vrow[V_MAC] = int.from_bytes(mac, "big")
        self.dma = DmaMap()
        self.irqs: list[int] = []  # eventfd per vector, -1: none
        self.conn: socket.socket | None = None
        self.rejects: list[socket.socket] = []
        self.link_up = True
        self.sock_path = os.path.join(self.dir, "vfio.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.sock_path)
        self.listener.listen(4)
        self.listener.setblocking(False)

    # -- what a card's function provides ---------------------------------------------------
    def region_files(self) -> dict:
        """``{region: file name in the function's directory}`` (regions: 0, 4, "config")."""
        raise NotImplementedError

    def device_info(self) -> dict:
        """What ``get_device_info`` answers."""
        raise NotImplementedError

    def poll_registers(self) -> bool:
        """One look at what the driver wrote; True when something was."""
        raise NotImplementedError

    def poll_doorbells(self) -> None:
        """Take the pending doorbells (counted, their queues marked busy)."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def dma_unmap(self, iova: int, size: int) -> list[int]:
        """Unmap every mapping wholly in ``[iova, iova+size)`` (queues over them stopped first); the IOVAs gone."""
        raise NotImplementedError

    def drop_driver(self) -> None:
        """The driver is gone or the card stops: queues stop, the function forgets its programming."""
        raise NotImplementedError

    def bind_irqs(self) -> None:
        """The eventfds changed: rebind the running queues' interrupt fds."""
        raise NotImplementedError

    def set_link(self, up: bool) -> None:
        raise NotImplementedError

    def tx_queues(self):
        """The queues the switch serves (objects with ``qid``, ``ctx``, ``busy``, ``running``)."""
        raise NotImplementedError

    def rx_ctx(self, pair: int):
        """The context of the RX queue that takes frames sent on queue pair ``pair``, or None."""
        raise NotImplementedError

    def switch_active(self) -> bool:
        """True when the switch may deliver to this function (link up, an RX queue running)."""
        raise NotImplementedError

    #: True when this function picks an RX queue per frame (:meth:`deliver`), not per queue pair
    steered = False

    def deliver(self, pair: int, bit: int, stage, slen, smask, n: int, idle) -> int:
        """Write the staged frames ``[0, n)`` whose mask has ``bit`` (sent on queue pair ``pair``) into
        this function's RX queues; the frames written.  By default all into :meth:`rx_ctx`."""
        from . import kernels as K

        ctx = self.rx_ctx(pair)
        return K.rx_deliver(ctx if ctx is not None else idle, bit, stage, slen, smask, n)

    # -- interrupts -------------------------------------------------------------------------
    def irq_fd(self, vector: int) -> int:
        if vector < 0 or vector >= len(self.irqs):
            return -1
        return self.irqs[vector]

    def set_irqs(self, fds: list[int]) -> None:
        old = self.irqs
        self.irqs = fds
        self.bind_irqs()
        close_fds(old)
        self.vrow[V_IRQS_SET] = sum(1 for f in fds if f >= 0)

    # -- control channel --------------------------------------------------------------------
    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        if self.conn is not None:  # its first request is answered with the refusal, then it is closed
            self.rejects.append(conn)
            return
        self.conn = conn
        self.vrow[V_CONNECTED] = 1
        self.vrow[V_DRIVERS] += 1
        log.info(f"{self.model}: driver connected", vf=self.bdf)

    def reject(self, conn: socket.socket) -> None:
        try:
            _data, fds, _fl, _ad = socket.recv_fds(conn, MAX_MSG, 256)
            close_fds(fds)
            conn.send(json.dumps({"ok": False, "error": f"{self.bdf} is in use by another driver"}).encode())
        except OSError:
            pass
        self.rejects.remove(conn)
        conn.close()

    def disconnect(self) -> None:
        """The driver went away: its DMA maps and irqs are dropped and the function is reset."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.drop_driver()
        self.dma.clear()
        self.set_irqs([])
        self.vrow[V_CONNECTED] = 0
        self.vrow[V_DMA_MAPS] = 0
        log.info(f"{self.model}: driver gone: DMA maps and interrupts dropped, function reset", vf=self.bdf)

    def serve(self) -> None:
        """Answer the queued requests of the connected driver."""
        while self.conn is not None:
            try:
                data, fds, _fl, _ad = socket.recv_fds(self.conn, MAX_MSG, 256)
            except BlockingIOError:
                return
            except OSError:
                self.disconnect()
                return
            if not data:
                close_fds(fds)
                self.disconnect()
                return
            try:
                out = self._request(data, list(fds))
                reply = {"ok": True, **out}
            except RequestError as e:
                self.vrow[V_BAD_REQUESTS] += 1
                log.error(f"{self.model}: request refused", vf=self.bdf, error=str(e))
                reply = {"ok": False, "error": str(e)}
            except Exception as e:  # a request the checks above missed: refused, never fatal
                self.vrow[V_BAD_REQUESTS] += 1
                log.exception(f"{self.model}: request failed", vf=self.bdf, error=repr(e))
                reply = {"ok": False, "error": f"internal error: {e!r}"}
            try:
                self.conn.send(json.dumps(reply).encode())
            except OSError:
                self.disconnect()
                return

    def _request(self, data: bytes, fds: list[int]) -> dict:
        try:
            msg = json.loads(data)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
            op = msg.get("op")
        except ValueError as e:
            close_fds(fds)
            raise RequestError(f"malformed request: {e}") from None

        def num(key):
            v = msg.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 64:
                raise RequestError(f"{op}: {key} must be an unsigned 64-bit integer")
            return v

        try:
            if op == "dma_map":
                if len(fds) != 1:
                    raise RequestError(f"dma_map: one fd expected, {len(fds)} given")
                iova, size, offset = num("iova"), num("size"), num("offset")
                fd = fds.pop()
                self.dma.map(iova, size, fd, offset)
                self.vrow[V_DMA_MAPS] = len(self.dma)
                return {}
            if op == "dma_unmap":
                gone = self.dma_unmap(num("iova"), num("size"))
                self.vrow[V_DMA_MAPS] = len(self.dma)
                return {"unmapped": gone}
            if op == "set_irqs":
                vecs = msg.get("vectors")
                if not isinstance(vecs, list) or len(vecs) > self.nvec:
                    raise RequestError(f"set_irqs: vectors must be a list of at most {self.nvec} entries")
                if any(not isinstance(v, int) or isinstance(v, bool) or v < -1 or v >= len(fds) for v in vecs):
                    raise RequestError("set_irqs: each vector is -1 or the index of an fd sent")
                for fd in fds:
                    try:
                        os.fstat(fd)
                    except OSError:
                        raise RequestError("set_irqs: bad fd") from None
                own = [os.dup(fds[v]) if v >= 0 else -1 for v in vecs]
                self.set_irqs(own)
                return {}
            if op == "get_region_info":
                bar = msg.get("bar")
                files = self.region_files()
                if bar not in files or isinstance(bar, bool):
                    raise RequestError(f"get_region_info: no region {bar!r} ({', '.join(map(repr, files))})")
                path = os.path.join(self.dir, files[bar])
                return {"path": path, "size": os.path.getsize(path)}
            if op == "get_device_info":
                return {"bdf": self.bdf, "num_irqs": self.nvec, **self.device_info()}
            if op == "reset":
                self.reset()
                return {}
            raise RequestError(f"unknown request {op!r}")
        finally:
            close_fds(fds)

    def close(self) -> None:
        if self.conn is not None:
            self.disconnect()
        else:
            self.drop_driver()
            self.dma.clear()
            self.set_irqs([])
        for c in list(self.rejects):
            c.close()
        self.rejects = []
        self.listener.close()
