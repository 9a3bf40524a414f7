"""A vDPA driver's side of an emulated card's function (docs/nic.md): its files, BARs and control channel.

Shared by the ifcvf and mlx5 drivers:

* :func:`find_vf_dir` -- the directory of PCI function ``BDF`` (``<runtime parent>[/<prefix>]/nic-<pf>/<bdf>``);
* :class:`Bar` -- a BAR file (``resourceN``) mapped shared, with aligned 8/16/32-bit accesses;
* :class:`VfioChannel` -- the VFIO-like control channel ``vfio.sock``: JSON requests (fds in
  SCM_RIGHTS), the DMA map, MSI-X vectors bound to eventfds.

Each driver names its own exception class (``error``), a subclass of :class:`VfioError`.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import socket

import numpy as np

__all__ = ["VfioError", "Bar", "VfioChannel", "find_vf_dir"]


class VfioError(Exception):
    """The function could not be found or reached, or the card refused a request."""


def find_vf_dir(bdf: str, parent: str | None = None, error: type[Exception] = VfioError) -> str:
    """The directory of PCI function ``bdf`` (``error`` when no card, or more than one, has it)."""
    if parent is None:
        from dataplane.memory.runtime import runtime_parent

        parent = runtime_parent()
    found = sorted(set(glob.glob(os.path.join(glob.escape(parent), "nic-*", bdf))
                       + glob.glob(os.path.join(glob.escape(parent), "*", "nic-*", bdf))))
    found = [d for d in found if os.path.exists(os.path.join(d, "vfio.sock"))]
    if not found:
        raise error(f"{bdf}: no such PCI function (no card directory nic-*/{bdf} under {parent})")
    if len(found) > 1:
        raise error(f"{bdf}: more than one card has this function: {', '.join(found)}")
    return found[0]


class Bar:
    """A BAR file mapped shared (``resourceN``): aligned 8/16/32/64-bit accesses, each one store/load."""

    def __init__(self, path: str):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.size = os.fstat(fd).st_size
            self.mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.u8 = np.frombuffer(self.mm, np.uint8)
        self.u16 = np.frombuffer(self.mm, np.uint16, self.size // 2)
        self.u32 = np.frombuffer(self.mm, np.uint32, self.size // 4)
        self.u64 = np.frombuffer(self.mm, np.uint64, self.size // 8)

    def r8(self, off: int) -> int: return int(self.u8[off])  # noqa: E704
    def r16(self, off: int) -> int: return int(self.u16[off >> 1])  # noqa: E704
    def r32(self, off: int) -> int: return int(self.u32[off >> 2])  # noqa: E704
    def w8(self, off: int, v: int) -> None: self.u8[off] = v & 0xFF  # noqa: E704
    def w16(self, off: int, v: int) -> None: self.u16[off >> 1] = v & 0xFFFF  # noqa: E704
    def w32(self, off: int, v: int) -> None: self.u32[off >> 2] = v & 0xFFFFFFFF  # noqa: E704
    def w64(self, off: int, v: int) -> None: self.u64[off >> 3] = v & 0xFFFFFFFFFFFFFFFF  # noqa: E704

    def close(self) -> None:
        self.u8 = self.u16 = self.u32 = self.u64 = None  # type: ignore[assignment]
        try:
            self.mm.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with it
            pass


class VfioChannel:
    """The control channel of one function (``bdf`` in ``vf_dir``); :meth:`connect` opens it."""

    error: type[Exception] = VfioError

    def __init__(self, bdf: str, vf_dir: str, timeout: float = 10.0):
        self.bdf = bdf
        self.dir = vf_dir
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.path.join(self.dir, "vfio.sock"))
        except OSError as e:
            sock.close()
            raise self.error(f"{self.bdf}: control channel: {e}") from None
        self.sock = sock

    def request(self, op: str, fds=(), **kw) -> dict:
        if self.sock is None:
            raise self.error(f"{self.bdf}: control channel closed")
        msg = json.dumps({"op": op, **kw}).encode()
        try:
            if fds:
                socket.send_fds(self.sock, [msg], list(fds))
            else:
                self.sock.send(msg)
            data = self.sock.recv(65536)
        except OSError as e:
            raise self.error(f"{self.bdf}: control channel: {op}: {e}") from None
        if not data:
            raise self.error(f"{self.bdf}: the card closed the control channel")
        reply = json.loads(data)
        if not reply.get("ok"):
            raise self.error(f"{self.bdf}: {op} refused: {reply.get('error', 'refused')}")
        return reply

    def region_path(self, bar) -> str:
        return self.request("get_region_info", bar=bar)["path"]

    def dma_map(self, iova: int, size: int, fd: int, offset: int) -> None:
        self.request("dma_map", [fd], iova=iova, size=size, offset=offset)

    def dma_unmap(self, iova: int, size: int) -> list[int]:
        return self.request("dma_unmap", iova=iova, size=size)["unmapped"]

    def set_irqs(self, fds: list[int]) -> None:
        """MSI-X: vector v -> ``fds[v]`` (-1: none); ``[]`` disables all."""
        used = [fd for fd in fds if fd >= 0]
        vectors = [used.index(fd) if fd >= 0 else -1 for fd in fds]
        self.request("set_irqs", used, vectors=vectors if used else [])

    def close_channel(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
