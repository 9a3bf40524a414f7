"""Helpers for tests of a vDPA driver on an emulated card (ifcvf, mlx5): a probed VF on a vhost-user socket, a
scripted front-end's guest, one-descriptor chains, test frames.

::

    with served_vfs(probe, {"vdpa": "1"}) as make:
        path, dev = make("0000:00:05.1")
        guest, fe = connect_guest(path)
        post_chain(fe.vrings[0], guest.alloc(2048), 2048, WRITE)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

import numpy as np

from dataplane.testing.vhost_frontend import GuestMemoryLayout, VhostUserFrontend
from dataplane.vhost_user.features import VirtioFeature as VF, bit

__all__ = ["WRITE", "GUEST_GPA", "SPLIT", "served_vfs", "wait_until", "post_chain", "connect_guest", "vnet_frame",
           "send_frame"]

#: VIRTQ_DESC_F_WRITE
WRITE = 2
#: where the guest's memory starts (a ring at GPA 0 is refused by DPDK and by the cards)
GUEST_GPA = 0x100000
#: every feature but RING_PACKED and LOG_ALL (no LOG_ALL at start, as QEMU)
SPLIT = (1 << 64) - 1 & ~bit(VF.VIRTIO_F_RING_PACKED) & ~bit(VF.VHOST_F_LOG_ALL)


@contextlib.contextmanager
def served_vfs(probe, default_args: dict):
    """``make(bdf, args=None)``: ``probe(bdf, args or default_args, lib)`` on a fresh socket of a private vhost
    library; returns ``(socket path, device)``.  Everything is deleted on exit."""
    from dataplane.vhost.library import VhostLibrary

    d = tempfile.mkdtemp(prefix="vh")
    lib = VhostLibrary()
    made = []

    def make(bdf, args=None):
        dev = probe(bdf, args or default_args, lib)
        made.append(dev)
        path = os.path.join(d, f"{bdf}.sock")
        lib.driver_register(path, 0)
        lib.driver_attach_vdpa_device(path, dev.vdev)
        lib.driver_start(path)
        return path, dev

    try:
        yield make
    finally:
        lib.close()
        for dev in made:
            dev.delete()
        shutil.rmtree(d, ignore_errors=True)


def wait_until(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def post_chain(vr, addr: int, length: int, flags: int, kick: bool = True) -> None:
    """A one-descriptor chain at the next avail slot of split ring ``vr`` (head = slot)."""
    head = vr.avail_idx % vr.num
    words = vr.desc.view(np.uint64)
    words[2 * head] = addr
    words[2 * head + 1] = length | flags << 32
    vr.avail[2 + head] = head
    vr.avail_idx = vr.avail_idx + 1
    if kick:
        os.eventfd_write(vr.kick_fd, 1)


def connect_guest(path: str, bases=None, backend: bool = False, features: int = SPLIT, resume=None, pairs: int = 1,
                  queue_size: int = 64):
    """A 4 MiB guest at :data:`GUEST_GPA` and a front-end started on ``path`` (``pairs`` queue pairs).

    ``resume``: {vring: index}: the guest's rings already hold that many avail and used entries; ``backend``:
    the back-end channel is opened (host notifiers)."""
    guest = GuestMemoryLayout.simple(4 << 20, gpa=GUEST_GPA)
    fe = VhostUserFrontend.connect(path, memory=guest)
    for q, idx in (resume or {}).items():
        for r in range(2 * pairs):
            if r not in fe.vrings:
                fe.alloc_vring(r, queue_size, packed=False)
        vr = fe.vrings[q]
        vr.avail_idx = idx
        vr.used.view(np.uint16)[1] = idx
    if backend:
        fe.negotiate(features)
        fe.open_backend_channel()
    fe.start(num_queues=pairs, queue_size=queue_size, bases=bases, features=features)
    return guest, fe


def vnet_frame(src_last: int, payload: bytes) -> bytes:
    """A virtio-net header (12 bytes) and a broadcast frame from 02:00:00:00:00:<src_last>, EtherType 0x88B5."""
    return bytes(12) + b"\xff" * 6 + bytes([2, 0, 0, 0, 0, src_last]) + b"\x88\xb5" + payload




def send_frame(guest, vr, frame: bytes) -> int:
    """``frame`` copied into guest memory and posted (read-only) on ``vr``; its GPA."""
    src = guest.alloc(len(frame))
    guest.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
    post_chain(vr, src, len(frame), 0)
    return src
