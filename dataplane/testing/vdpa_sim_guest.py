"""A guest for the vDPA simulators' hardware: guest memory, virtqueues and their eventfds, in test memory.

It plays the driver side of a :class:`~dataplane.vdpa.sim.hw.SimHardware`
device without any vhost-user in between: the memory is memfd regions
(:class:`~dataplane.testing.vhost_frontend.GuestMemoryLayout`), each queue
is a :class:`~dataplane.testing.blk_driver.BlkDriver` ring (split or packed,
built with the rings' driver kernels, one request slot per chain) with a
kick and a call eventfd::

    guest = SimGuest([0, 1, 2])                    # net: rx, tx, cvq
    hw.attach(*guest.attach_args(features))        # what dev_conf would pass
    rx, tx = guest.q[0], guest.q[1]
    slot = rx.post_rx(2048); rx.kick()
    tx.send(hdr + frame); tx.kick()
    [(slot, n)] = rx.wait_used(1)
    assert rx.data(slot, n) == hdr + frame

blk requests go through the queue's ``drv`` (:meth:`BlkDriver.submit`);
``drv.add`` adds any chain at all (hostile ones).
"""

from __future__ import annotations

import os
import select
import time

from dataplane.testing.blk_driver import BlkDriver
from dataplane.testing.vhost_frontend import GuestMemoryLayout, eventfd_count

__all__ = ["SimGuest", "SimGuestQueue", "NetLoopStream", "net_loop_split"]


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


class SimGuestQueue:
    """One guest virtqueue ``qid`` (see the module doc).  ``kick`` / ``call``: make the eventfd (else -1);
    ``features``: the ring features the driver uses (INDIRECT_DESC: indirect tables)."""

    def __init__(self, memory: GuestMemoryLayout, qid: int, *, num: int = 64, packed: bool = False,
                 kick: bool = True, call: bool = True, max_data: int = 8192, features: int = 0):
        self.qid = qid
        self.memory = memory
        self.drv = BlkDriver(memory, num, packed=packed, max_data=max_data, features=features)
        self.kick_fd = _eventfd() if kick else -1
        self.call_fd = _eventfd() if call else -1
        self.drv.kick_fd = self.kick_fd
        self.used: list[tuple[int, int]] = []  # harvested and not yet taken by wait_used

    @property
    def packed(self) -> bool:
        return self.drv.packed

    def spec(self, *, enabled: bool = True, indices: tuple[int, int, int, int] | None = None) -> dict:
        """The queue dict of :meth:`SimHardware.attach` (``indices``: what a detach returned)."""
        a, aw, u, uw = indices if indices is not None else (0, 1 if self.packed else 0, 0, 1 if self.packed else 0)
        d = self.drv
        return dict(qid=self.qid, size=d.num, packed=d.packed, desc_gpa=d.desc_gpa, avail_gpa=d.avail_gpa,
                    used_gpa=d.used_gpa, last_avail_idx=a, avail_wrap=aw, last_used_idx=u, used_wrap=uw,
                    kick_fd=self.kick_fd, call_fd=self.call_fd, enabled=enabled)

    # -- chains ---------------------------------------------------------------------
    def send(self, frame: bytes) -> int:
        """Add a TX chain: ``frame`` (virtio-net header included) in one readable descriptor."""
        slot = self.drv.alloc_slot()
        g = self.drv.data_gpa(slot)
        self.drv.view(g, len(frame))[:] = list(frame)
        return self.drv.add([(g, len(frame), False)], slot)

    def post_rx(self, n: int = 2048) -> int:
        """Add an RX chain: one writable buffer of ``n`` bytes (filled with 0xA5 first)."""
        slot = self.drv.alloc_slot()
        g = self.drv.data_gpa(slot)
        self.drv.view(g, n)[:] = 0xA5
        return self.drv.add([(g, n, True)], slot)

    def ctrl(self, cls: int, cmd: int, data: bytes = b"") -> int:
        """Add a control request: ``{class, cmd}`` and ``data`` readable, a 1-byte ack writable (at ``status_gpa``)."""
        slot = self.drv.alloc_slot()
        g = self.drv.data_gpa(slot)
        body = bytes([cls, cmd]) + bytes(data)
        self.drv.view(g, len(body))[:] = list(body)
        self.drv.view(self.drv.status_gpa(slot), 1)[0] = 0xEE
        return self.drv.add([(g, len(body), False), (self.drv.status_gpa(slot), 1, True)], slot)

    def ack(self, slot: int) -> int:
        return self.drv.status(slot)

    def data(self, slot: int, n: int) -> bytes:
        return self.drv.data(slot, n)

    def kick(self) -> bool:
        """Publish the added chains and kick (the simulators never suppress kicks)."""
        return self.drv.kick()

    def notify(self) -> None:
        """Write the kick eventfd whatever the ring says (a kick with nothing new published)."""
        os.eventfd_write(self.kick_fd, 1)

    # -- completions ------------------------------------------------------------------
    def harvest(self) -> list[tuple[int, int]]:
        got = self.drv.harvest()
        self.used.extend(got)
        return got

    def wait_used(self, count: int, timeout: float = 20.0) -> list[tuple[int, int]]:
        """Wait until ``count`` used chains are harvested; returns (and forgets) them.  TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.used) < count:
            self.harvest()
            if len(self.used) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {self.qid}: {len(self.used)} of {count} chains used after {timeout} s")
            if self.call_fd >= 0:
                select.select([self.call_fd], [], [], 0.01)
            else:
                time.sleep(0.001)
        out, self.used = self.used[:count], self.used[count:]
        return out

    def calls(self) -> int:
        """Interrupts since the last call (reads the call eventfd)."""
        return eventfd_count(self.call_fd) if self.call_fd >= 0 else 0

    def wait_call(self, timeout: float = 20.0) -> int:
        """Wait for an interrupt; returns the count read (0 on timeout)."""
        r, _, _ = select.select([self.call_fd], [], [], timeout)
        return self.calls() if r else 0

    def close(self) -> None:
        for name in ("kick_fd", "call_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class SimGuest:
    """Guest memory and queues ``qids`` (see the module doc); other keywords go to each :class:`SimGuestQueue`."""

    def __init__(self, qids, *, memory_size: int = 16 << 20, nregions: int = 1, **queue_kw):
        self.memory = GuestMemoryLayout.simple(memory_size, nregions=nregions)
        self.q: dict[int, SimGuestQueue] = {}
        try:
            for qid in qids:
                self.q[qid] = SimGuestQueue(self.memory, qid, **queue_kw)
        except BaseException:
            self.close()
            raise

    def regions(self) -> list[dict]:
        return [dict(guest_phys_addr=r.gpa, size=r.size, userspace_addr=r.qva, mmap_offset=r.mmap_offset)
                for r in self.memory.regions]

    def attach_args(self, features: int, *, enabled: bool = True, indices: dict | None = None) -> tuple:
        """``(features, regions, region_fds, queues)`` for :meth:`SimHardware.attach`."""
        queues = [q.spec(enabled=enabled, indices=None if indices is None else indices.get(qid))
                  for qid, q in self.q.items()]
        return features, self.regions(), self.memory.fds(), queues

    def close(self) -> None:
        for q in self.q.values():
            q.close()
        self.memory.close()


# -----------------------------------------------------------------------------------
# A numba driver loop for measurements: frames looped TX -> RX through the hardware
# -----------------------------------------------------------------------------------

import numpy as np  # noqa: E402

from dataplane.rings.jit import eventfd_signal, loop_kernel  # noqa: E402
from dataplane.rings.split import split_drv_add1, split_drv_get_used, split_drv_publish  # noqa: E402

# loop state slots (int64)
LOOP_RX_NFREE = 0  # free RX slots (their numbers at rx_free[:n])
LOOP_BAD = 1  # RX completions whose length was not the frame's
LOOP_DONE = 2  # frames received
LOOP_SENT = 3  # TX chains added
LOOP_SLOTS = 8


@loop_kernel
def net_loop_split(rx_vr, rx_ds, tx_vr, tx_ds, rx_kick, tx_kick, rx_gpa, rx_stride, rx_len, tx_gpa, frame_len,
                   want, st, rx_free, cookies, lens, spin_limit):
    """Keep the RX ring full of buffers and the TX ring full of one frame (at ``tx_gpa``); returns the
    frames received, once ``want`` arrived or ``spin_limit`` turns passed without any."""
    got = 0
    idle = 0
    while got < want and idle < spin_limit:
        added = False
        while st[LOOP_RX_NFREE] > 0:
            slot = rx_free[st[LOOP_RX_NFREE] - 1]
            if split_drv_add1(rx_vr, rx_ds, slot, np.uint64(rx_gpa) + np.uint64(slot) * np.uint64(rx_stride),
                              rx_len, True) < 0:
                break
            st[LOOP_RX_NFREE] -= 1
            added = True
        if added and split_drv_publish(rx_vr, rx_ds) and rx_kick >= 0:
            eventfd_signal(rx_kick)
        split_drv_get_used(tx_vr, tx_ds, cookies, lens, cookies.shape[0])
        added = False
        while split_drv_add1(tx_vr, tx_ds, 0, tx_gpa, frame_len, False) >= 0:
            st[LOOP_SENT] += 1
            added = True
        if added and split_drv_publish(tx_vr, tx_ds) and tx_kick >= 0:
            eventfd_signal(tx_kick)
        n = split_drv_get_used(rx_vr, rx_ds, cookies, lens, cookies.shape[0])
        for i in range(n):
            if lens[i] != frame_len:
                st[LOOP_BAD] += 1
            rx_free[st[LOOP_RX_NFREE]] = np.int64(cookies[i])
            st[LOOP_RX_NFREE] += 1
        got += n
        st[LOOP_DONE] += n
        idle = 0 if n else idle + 1
    return got


class NetLoopStream:
    """Frames looped through a net hardware by :func:`net_loop_split` on a guest's split queues 0 (rx) and 1 (tx)."""

    def __init__(self, guest: SimGuest, frame: bytes, rx_len: int = 2048):
        self.rx, self.tx = guest.q[0], guest.q[1]
        if self.rx.packed or self.tx.packed:
            raise ValueError("the loop drives split rings only")
        self.frame = bytes(frame)
        self.rx_len = int(rx_len)
        d = self.tx.drv
        self.tx_slot = d.alloc_slot()
        self.tx_gpa = d.data_gpa(self.tx_slot)
        d.view(self.tx_gpa, len(frame))[:] = np.frombuffer(self.frame, np.uint8)
        r = self.rx.drv
        if rx_len > r.max_data:
            raise ValueError(f"rx_len {rx_len} > max_data {r.max_data}")
        self.slots = np.array([r.alloc_slot() for _ in range(r.num)], np.int64)
        self.st = np.zeros(LOOP_SLOTS, np.int64)
        self.rx_free = self.slots.copy()
        self.st[LOOP_RX_NFREE] = len(self.slots)
        self.cookies = np.zeros(max(r.num, d.num), np.uint64)
        self.lens = np.zeros(max(r.num, d.num), np.uint32)

    def run(self, n: int, spin_limit: int = 50_000_000) -> int:
        r, t = self.rx.drv, self.tx.drv
        return int(net_loop_split(r.vr, r.ds, t.vr, t.ds, self.rx.kick_fd, self.tx.kick_fd, r.data_gpa(0),
                                  r.slot_size, self.rx_len, self.tx_gpa, len(self.frame), int(n), self.st,
                                  self.rx_free, self.cookies, self.lens, int(spin_limit)))

    @property
    def bad(self) -> int:
        return int(self.st[LOOP_BAD])
