"""A register-level test driver for an emulated IFC VF (``dataplane-nic``).

It does what a driver does with a real function and nothing more: it
connects to the VF's control channel (``vfio.sock``), asks where the regions
are, maps the BAR files, walks the capability list in config space, DMA-maps
guest memory (memfd regions of a :class:`~dataplane.testing.vhost_frontend.GuestMemoryLayout`,
IOVA = GPA), binds MSI-X vectors to eventfds and programs queues through the
common cfg in the order ifcvf's start sequence uses (VDPA-FACTS §2.3).
Rings are built with the rings' driver kernels (through
:class:`~dataplane.testing.blk_driver.BlkDriver`, one data slot per chain);
kicks are 16-bit writes of the queue index into the queue's doorbell page.

Every register write whose effect the driver relies on is followed by a
:meth:`NicDriver.flush` (the card's posted-write flush: bump ``WRITE_SEQ``,
wait for ``ACK_SEQ``)::

    drv = NicDriver(vf_dir)
    mem = GuestMemoryLayout.simple(8 << 20)
    drv.dma_map_memory(mem)
    drv.set_irqs(drv.num_irqs)                  # an eventfd per vector
    drv.start({0: rx, 1: tx}, features)         # NicQueue objects, status up to DRIVER_OK
    tx.send(frame); tx.kick()
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time

from dataplane.nic.pci import (  # the register map is the card's public face: the driver side reads the same facts
    ACK_SEQ,
    CAP_PTR,
    CC,
    COMMON_CFG,
    DEVICE_CFG,
    ISR_CFG,
    LM,
    NO_VECTOR,
    NOTIFY_CFG,
    PCI_CAP_ID_VNDR,
    S_ACK,
    S_DRIVER,
    S_DRIVER_OK,
    S_FEATURES_OK,
    WRITE_SEQ,
    BarFile,
    ring_state_off,
)
from dataplane.testing.blk_driver import BlkDriver
from dataplane.testing.vhost_frontend import GuestMemoryLayout, eventfd_count

__all__ = ["VfioClient", "NicDriver", "NicQueue", "NicError", "net_frame"]


class NicError(Exception):
    """The card refused a control request."""


def net_frame(dst: bytes, src: bytes, payload: bytes, ethertype: int = 0x88B5) -> bytes:
    """virtio-net header (12 zero bytes) + an Ethernet frame."""
    return bytes(12) + dst + src + struct.pack(">H", ethertype) + payload


class NicQueue:
    """The driver side of queue ``qid`` in ``memory`` (split or packed; ``features``: the negotiated
    bits the ring uses, EVENT_IDX and INDIRECT_DESC)."""

    def __init__(self, drv: "NicDriver", memory: GuestMemoryLayout, qid: int, *, num: int = 64,
                 packed: bool = False, max_data: int = 2048, features: int = 0):
        self.drv = drv
        self.qid = qid
        self.ring = BlkDriver(memory, num, packed=packed, max_data=max_data, features=features)
        self.used: list[tuple[int, int]] = []

    @property
    def num(self) -> int:
        return self.ring.num

    def send(self, frame: bytes) -> int:
        slot = self.ring.alloc_slot()
        g = self.ring.data_gpa(slot)
        self.ring.view(g, len(frame))[:] = list(frame)
        return self.ring.add([(g, len(frame), False)], slot)

    def post_rx(self, n: int = 2048) -> int:
        slot = self.ring.alloc_slot()
        g = self.ring.data_gpa(slot)
        self.ring.view(g, n)[:] = 0xA5
        return self.ring.add([(g, n, True)], slot)

    def data(self, slot: int, n: int) -> bytes:
        return self.ring.data(slot, n)

    def kick(self, force: bool = False) -> bool:
        """Publish the added chains and ring the doorbell if the card wants kicks (or ``force``)."""
        need = self.ring.publish()
        if need or force:
            self.drv.doorbell(self.qid)
        return need

    def harvest(self) -> list[tuple[int, int]]:
        got = self.ring.harvest()
        self.used.extend(got)
        return got

    def wait_used(self, count: int, timeout: float = 20.0) -> list[tuple[int, int]]:
        deadline = time.monotonic() + timeout
        while len(self.used) < count:
            self.harvest()
            if len(self.used) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {self.qid}: {len(self.used)} of {count} chains used after {timeout} s")
            fd = self.drv.irq_fd(self.drv.vector_of(self.qid))
            if fd >= 0:
                select.select([fd], [], [], 0.005)
            else:
                time.sleep(0.001)
        out, self.used = self.used[:count], self.used[count:]
        return out


class VfioClient:
    """The driver's end of a function's control channel ``vfio.sock`` (any card): requests, the DMA
    map of guest memory, MSI-X vectors bound to eventfds."""

    def __init__(self, vf_dir: str, timeout: float = 10.0):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout)
        self.sock.connect(os.path.join(vf_dir, "vfio.sock"))
        self.irqs: list[int] = []
        self.queue_vectors: dict[int, int] = {}

    # -- control channel ---------------------------------------------------------------
    def request(self, op: str, fds=(), **kw) -> dict:
        msg = json.dumps({"op": op, **kw}).encode()
        if fds:
            socket.send_fds(self.sock, [msg], list(fds))
        else:
            self.sock.send(msg)
        data = self.sock.recv(65536)
        if not data:
            raise NicError("the card closed the channel")
        reply = json.loads(data)
        if not reply.get("ok"):
            raise NicError(reply.get("error", "refused"))
        return reply

    def dma_map(self, iova: int, size: int, fd: int, offset: int = 0) -> None:
        self.request("dma_map", [fd], iova=iova, size=size, offset=offset)

    def dma_unmap(self, iova: int, size: int) -> list[int]:
        return self.request("dma_unmap", iova=iova, size=size)["unmapped"]

    def dma_map_memory(self, mem: GuestMemoryLayout) -> None:
        for r in mem.regions:
            self.dma_map(r.gpa, r.size, r.fd, r.mmap_offset)

    def set_irqs(self, n: int) -> list[int]:
        """An eventfd for each of vectors ``0..n-1`` (0: config, i+1: queue i as ifcvf binds them)."""
        fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(n)]
        try:
            self.request("set_irqs", fds, vectors=list(range(n)))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self._close_irqs()
        self.irqs = fds
        return fds

    @property
    def num_irqs(self) -> int:
        return int(self.info["num_irqs"])

    def irq_fd(self, vector: int) -> int:
        return self.irqs[vector] if 0 <= vector < len(self.irqs) else -1

    def vector_of(self, qid: int) -> int:
        return self.queue_vectors.get(qid, NO_VECTOR)

    def interrupts(self, qid: int) -> int:
        """Interrupts of queue ``qid`` since last asked (reads its vector's eventfd)."""
        fd = self.irq_fd(self.vector_of(qid))
        return eventfd_count(fd) if fd >= 0 else 0

    def _close_irqs(self) -> None:
        for fd in self.irqs:
            os.close(fd)
        self.irqs = []

    def close(self) -> None:
        """Close the channel (the card drops the DMA maps and irqs and resets the function)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._close_irqs()


class NicDriver(VfioClient):
    """A driver bound to the VF in directory ``vf_dir`` (see the module doc)."""

    def __init__(self, vf_dir: str, timeout: float = 10.0):
        super().__init__(vf_dir, timeout)
        self.bar0 = self.bar4 = None
        try:
            self.info = self.request("get_device_info")
            self.config = open(self.request("get_region_info", bar="config")["path"], "rb").read()
            self.bar0 = BarFile(self.request("get_region_info", bar=0)["path"])
            self.bar4 = BarFile(self.request("get_region_info", bar=4)["path"])
        except BaseException:
            self.close()
            raise
        self.seq = self.bar0.r32(WRITE_SEQ)
        self.caps = self.walk_caps()
        for t in (COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG):
            if t not in self.caps:
                raise NicError("capability incomplete")
        self.common = self.caps[COMMON_CFG]["offset"]
        self.notify_base = self.caps[NOTIFY_CFG]["offset"]
        self.notify_mult = self.caps[NOTIFY_CFG]["multiplier"]
        self.device = self.caps[DEVICE_CFG]["offset"]

    # -- config space ------------------------------------------------------------------
    def walk_caps(self) -> dict:
        """The vendor capabilities by cfg_type: {type: {pos, bar, offset, length[, multiplier]}}."""
        cs = self.config
        out = {}
        pos = cs[CAP_PTR]
        seen = set()
        while pos and pos not in seen and pos + 16 <= len(cs):
            seen.add(pos)
            cap_id, nxt, _clen, cfg_type, bar = cs[pos], cs[pos + 1], cs[pos + 2], cs[pos + 3], cs[pos + 4]
            if cap_id == PCI_CAP_ID_VNDR:
                off, length = struct.unpack_from("<II", cs, pos + 8)
                d = {"pos": pos, "bar": bar, "offset": off, "length": length}
                if cfg_type == NOTIFY_CFG:
                    d["multiplier"] = struct.unpack_from("<I", cs, pos + 16)[0]
                out[cfg_type] = d
            else:
                out.setdefault("other", []).append((pos, cap_id))
            pos = nxt
        return out

    # -- registers -----------------------------------------------------------------------
    def flush(self) -> None:
        """The posted-write flush: every register write before it has taken effect when it returns."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.bar0.w32(WRITE_SEQ, self.seq)
        deadline = time.monotonic() + self.timeout
        while self.bar0.r32(ACK_SEQ) != self.seq:
            if time.monotonic() > deadline:
                raise TimeoutError("the card did not acknowledge the register flush")
            time.sleep(0.0001)

    def r8(self, off): return self.bar0.r8(self.common + off)  # noqa: E704
    def r16(self, off): return self.bar0.r16(self.common + off)  # noqa: E704
    def r32(self, off): return self.bar0.r32(self.common + off)  # noqa: E704
    def w8(self, off, v): self.bar0.w8(self.common + off, v)  # noqa: E704
    def w16(self, off, v): self.bar0.w16(self.common + off, v)  # noqa: E704
    def w32(self, off, v): self.bar0.w32(self.common + off, v)  # noqa: E704

    @property
    def status(self) -> int:
        return self.r8(CC.DEVICE_STATUS)

    def reset(self) -> None:
        self.w8(CC.DEVICE_STATUS, 0)
        self.flush()
        deadline = time.monotonic() + self.timeout
        while self.status != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("reset did not complete")
            time.sleep(0.001)

    def add_status(self, s: int) -> int:
        self.w8(CC.DEVICE_STATUS, self.status | s)
        self.flush()
        return self.status

    def device_features(self) -> int:
        self.w32(CC.DEVICE_FEATURE_SELECT, 0)
        self.flush()
        lo = self.r32(CC.DEVICE_FEATURE)
        self.w32(CC.DEVICE_FEATURE_SELECT, 1)
        self.flush()
        return lo | self.r32(CC.DEVICE_FEATURE) << 32

    def write_guest_features(self, features: int) -> None:
        self.w32(CC.GUEST_FEATURE_SELECT, 0)
        self.flush()
        self.w32(CC.GUEST_FEATURE, features & 0xFFFFFFFF)
        self.w32(CC.GUEST_FEATURE_SELECT, 1)
        self.flush()
        self.w32(CC.GUEST_FEATURE, features >> 32)
        self.flush()

    def negotiate(self, features: int) -> bool:
        """ACK, DRIVER, guest features, FEATURES_OK; True when the card kept FEATURES_OK."""
        self.add_status(S_ACK)
        self.add_status(S_DRIVER)
        self.write_guest_features(features & self.device_features())
        return bool(self.add_status(S_FEATURES_OK) & S_FEATURES_OK)

    def select(self, qid: int) -> None:
        self.w16(CC.QUEUE_SELECT, qid)
        self.flush()

    def program_queue(self, q: NicQueue, *, vector: int | None = None, last_avail: int | None = None,
                      last_used: int | None = None, enable: bool = True, addrs: tuple[int, int, int] | None = None,
                      size: int | None = None) -> None:
        """ifcvf's per-ring steps: addresses, size, the BAR4 ring state, the vector, enable (then a flush).

        The ring state defaults to a fresh ring's: 0, or for a packed ring offset 0 with wrap counter 1
        (bit 15) in both halves."""
        qid = q.qid
        fresh = 0x8000 if q.ring.packed else 0
        last_avail = fresh if last_avail is None else last_avail
        last_used = fresh if last_used is None else last_used
        self.select(qid)
        d, a, u = addrs if addrs is not None else (q.ring.desc_gpa, q.ring.avail_gpa, q.ring.used_gpa)
        for off, v in ((CC.QUEUE_DESC_LO, d), (CC.QUEUE_AVAIL_LO, a), (CC.QUEUE_USED_LO, u)):
            self.w32(off, v & 0xFFFFFFFF)
            self.w32(off + 4, v >> 32)
        self.w16(CC.QUEUE_SIZE, q.num if size is None else size)
        self.bar4.w32(ring_state_off(qid), (last_avail & 0xFFFF) | (last_used & 0xFFFF) << 16)
        vec = qid + 1 if vector is None else vector
        self.w16(CC.QUEUE_MSIX_VECTOR, vec)
        self.queue_vectors[qid] = vec
        if enable:
            self.w16(CC.QUEUE_ENABLE, 1)
        self.flush()

    def queue_enabled(self, qid: int) -> bool:
        self.select(qid)
        return bool(self.r16(CC.QUEUE_ENABLE))

    def notify_off(self, qid: int) -> int:
        self.select(qid)
        return self.r16(CC.QUEUE_NOTIFY_OFF)

    def doorbell(self, qid: int) -> None:
        """The kick: a 16-bit write of the queue index at the queue's notify address."""
        off = self.notify_base + qid * self.notify_mult  # notify_off == qid on this card (checked by tests)
        self.bar0.w16(off, qid)

    def set_mq(self, pairs: int) -> None:
        self.bar4.w32(LM.MQ_CFG, pairs)

    def start(self, queues: dict, features: int) -> None:
        """Reset, negotiate, msix_config 0, mq_cfg, program every queue, DRIVER_OK (VDPA-FACTS §2.3)."""
        self.reset()
        if not self.negotiate(features):
            raise NicError("FEATURES_OK refused")
        self.w16(CC.MSIX_CONFIG, 0)
        self.flush()
        if self.r16(CC.MSIX_CONFIG) == NO_VECTOR:
            raise NicError("msix_config refused")
        self.set_mq(max(1, len(queues) // 2))
        for q in queues.values():
            self.program_queue(q)
        self.add_status(S_DRIVER_OK)

    def stop_queue(self, qid: int) -> int:
        """queue_enable = 0, then the BAR4 ring state (the card wrote it when it stopped)."""
        self.select(qid)
        self.w16(CC.QUEUE_ENABLE, 0)
        self.w16(CC.QUEUE_MSIX_VECTOR, NO_VECTOR)
        self.flush()
        return self.bar4.r32(ring_state_off(qid))

    def log_start(self, base: int, size: int) -> None:
        self.bar4.w32(LM.BASE_ADDR_LOW, base & 0xFFFFFFFF)
        self.bar4.w32(LM.BASE_ADDR_HIGH, base >> 32)
        end = base + size
        self.bar4.w32(LM.END_ADDR_LOW, end & 0xFFFFFFFF)
        self.bar4.w32(LM.END_ADDR_HIGH, end >> 32)
        self.bar4.w32(LM.LOGGING_CTRL, LM.ENABLE_VF)
        self.flush()

    def log_stop(self) -> None:
        self.bar4.w32(LM.LOGGING_CTRL, 0)
        self.flush()

    def close(self) -> None:
        """Close the channel (the card drops the DMA maps and irqs and resets the function)."""
        super().close()
        for b in (self.bar0, self.bar4):
            if b is not None:
                b.close()
        self.bar0 = self.bar4 = None
