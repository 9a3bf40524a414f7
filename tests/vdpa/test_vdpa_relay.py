"""``relay_vring_used``: used entries copied from a mediated ring to the guest, written buffers logged (facts §1.6)."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

from dataplane.rings.split import split_vring_from_buffer
from dataplane.testing.vdpa_driver import RecordingVdpaOps
from dataplane.testing.vhost_frontend import FrontendLog, GuestMemoryLayout, VhostUserFrontend
from dataplane.vdpa.device import register_device, unregister_device
from dataplane.vdpa.relay import relay_vring_used
from dataplane.vhost.library import VhostLibrary
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

NEXT, WRITE, INDIRECT = 1, 2, 4
QSIZE = 64
FEATURES = (bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES) | bit(VF.VHOST_F_LOG_ALL)
            | bit(VF.VIRTIO_RING_F_INDIRECT_DESC) | bit(VF.VIRTIO_RING_F_EVENT_IDX))
PROTOCOL = bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD)


@pytest.fixture
def setup():
    """A vDPA device on a socket, a front-end with rings 0/1 up and logging on, and a mediated ring for vring 0."""
    d = tempfile.mkdtemp(prefix="vr")
    path = os.path.join(d, "vdpa.sock")
    lib = VhostLibrary()
    ops = RecordingVdpaOps(lib, features=FEATURES, protocol_features=PROTOCOL)
    vdev = register_device(f"relay-{os.getpid()}", ops)
    lib.driver_register(path, 0)
    lib.driver_attach_vdpa_device(path, vdev)
    lib.driver_start(path)
    guest = GuestMemoryLayout.simple(4 << 20)
    fe = VhostUserFrontend.connect(path, memory=guest)
    fe.start(num_queues=1, queue_size=QSIZE)
    ops.wait(("dev_conf", 0))
    log = FrontendLog(guest)
    fe.set_logging(True, log)
    buf = np.zeros(3 * 4096, np.uint8)
    med = split_vring_from_buffer(buf, QSIZE)
    yield lib, fe, guest, log, med
    fe.close()
    lib.close()
    unregister_device(vdev)
    log.close()
    guest.close()
    shutil.rmtree(d, ignore_errors=True)


def _desc(ring_desc: np.ndarray, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
    words = ring_desc.view(np.uint64)
    words[2 * i] = addr
    words[2 * i + 1] = length | flags << 32 | nxt << 48


def _used(med, entries) -> None:
    idx = int(med.used_u16[1])
    for head, length in entries:
        slot = idx % QSIZE
        med.used_u32[1 + 2 * slot] = head
        med.used_u32[2 + 2 * slot] = length
        idx = (idx + 1) & 0xFFFF
    med.used_u16[1] = idx


def _guest_used(vr) -> list[tuple[int, int]]:
    u32 = vr.used[: 4 + 8 * QSIZE].view(np.uint32)
    return [(int(u32[1 + 2 * (i % QSIZE)]), int(u32[2 + 2 * (i % QSIZE)])) for i in range(vr.used_idx)]


def test_relays_entries_and_logs_only_written_buffers(setup):
    lib, fe, guest, log, med = setup
    vr = fe.vrings[0]
    table = guest.alloc(3 * 16)
    _desc(vr.desc, 0, 0x100000, 4096, WRITE)  # one written page
    _desc(vr.desc, 1, 0x180000, 100, NEXT, nxt=2)  # read-only head ...
    _desc(vr.desc, 2, 0x1C0000, 8192, WRITE)  # ... written tail, two pages
    _desc(vr.desc, 3, table, 3 * 16, INDIRECT)  # indirect table: read, written, written
    _desc(guest.view(table, 48), 0, 0x200000, 64, NEXT, nxt=1)
    _desc(guest.view(table, 48), 1, 0x240000, 64, WRITE | NEXT, nxt=2)
    _desc(guest.view(table, 48), 2, 0x280000, 64, WRITE)
    log.clear()
    _used(med, [(0, 4096), (1, 8192), (3, 128)])
    assert relay_vring_used(0, 0, med, lib=lib) == 3
    assert vr.used_idx == 3
    assert _guest_used(vr) == [(0, 4096), (1, 8192), (3, 128)]
    assert log.pages() == {0x100, 0x1C0, 0x1C1, 0x240, 0x280}
    assert int(med.avail[2 + QSIZE]) == 3  # EVENT_IDX: the mediated ring's used_event follows
    assert relay_vring_used(0, 0, med, lib=lib) == 0  # nothing new
    assert log.slack_untouched()


def test_nothing_is_logged_without_log_all(setup):
    lib, fe, guest, log, med = setup
    fe.set_logging(False)
    vr = fe.vrings[0]
    _desc(vr.desc, 0, 0x100000, 4096, WRITE)
    log.clear()
    _used(med, [(0, 4096)])
    assert relay_vring_used(0, 0, med, lib=lib) == 1
    assert vr.used_idx == 1 and log.pages() == set()


@pytest.mark.parametrize("bad", ["id_beyond_ring", "chain_loop", "indirect_outside_memory", "indirect_too_long",
                                 "nested_indirect"])
def test_hostile_chains_return_minus_one_and_publish_nothing(setup, bad):
    lib, fe, guest, log, med = setup
    vr = fe.vrings[0]
    head = 0
    if bad == "id_beyond_ring":
        head = QSIZE
    elif bad == "chain_loop":
        _desc(vr.desc, 0, 0x100000, 64, WRITE | NEXT, nxt=1)
        _desc(vr.desc, 1, 0x100000, 64, WRITE | NEXT, nxt=0)
    elif bad == "indirect_outside_memory":
        _desc(vr.desc, 0, 1 << 40, 32, INDIRECT)
    elif bad == "indirect_too_long":
        _desc(vr.desc, 0, guest.alloc(16 * (QSIZE + 1)), 16 * (QSIZE + 1), INDIRECT)
    else:
        table = guest.alloc(32)
        _desc(vr.desc, 0, table, 32, INDIRECT)
        _desc(guest.view(table, 32), 0, table, 32, INDIRECT)
    _used(med, [(head, 64)])
    assert relay_vring_used(0, 0, med, lib=lib) == -1
    assert vr.used_idx == 0


def test_no_device_or_ring_is_minus_one(setup):
    lib, fe, guest, log, med = setup
    assert relay_vring_used(0, 0, None, lib=lib) == -1
    assert relay_vring_used(9, 0, med, lib=lib) == -1
    assert relay_vring_used(0, 7, med, lib=lib) == -1
