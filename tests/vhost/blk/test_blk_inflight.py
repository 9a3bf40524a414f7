"""Inflight I/O tracking on virtio-blk queues: a back-end that dies mid-request loses nothing and
repeats nothing once a new instance gets the area back -- in this process at each point of a
burst, and with ``dataplane-vhost-blk`` killed by SIGKILL under load (split and packed)."""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest

from dataplane.rings.packed import WRAP_BIT
from dataplane.testing.blk_driver import STATUS_UNSET, BlkDriver
from dataplane.testing.inflight_crash import STAGE_DONE, STAGE_FETCHED, STAGE_PUBLISHED, STAGE_PUSHED, burst_until
from dataplane.testing.vhost_blk_proc import BlkProcess
from dataplane.testing.vhost_frontend import GuestMemoryLayout, GuestRegion, VhostUserFrontend
from dataplane.vhost.blk.requests import BlkQueue
from dataplane.vhost.blk.spec import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from dataplane.vhost.inflight import InflightArea, make_inflight, packed_inflight_heads, split_inflight_heads
from dataplane.vhost_user import VhostUserProtocolFeature as PF, VirtioDeviceStatus as S, VirtioFeature as VF

from _blk_support import ALL_FEATURES, DISK_SIZE, LIMITS, SERIAL

NUM = 32


def _data(i):
    return np.random.default_rng(100 + i).integers(0, 256, 4096, dtype=np.uint8).tobytes()


class _Local:
    """A blk ring in guest memory, its driver, a RAM disk and an inflight area, served in this process."""

    def __init__(self, packed):
        self.packed = packed
        self.mem = GuestMemoryLayout([GuestRegion(0, 8 << 20)])
        self.drv = BlkDriver(self.mem, NUM, packed=packed, features=ALL_FEATURES)
        self.disk = np.zeros(DISK_SIZE, np.uint8)
        self.area = InflightArea.allocate(1, NUM, packed)

    def queue(self, **kw):
        return BlkQueue(*self.drv.device_addrs(), NUM, regions=self.drv.region_table(), disk=self.disk,
                        packed=self.packed, features=ALL_FEATURES, serial=SERIAL, limits=LIMITS,
                        inflight=make_inflight(self.area.queue_region(0), NUM, self.packed), **kw)

    def restarted(self):
        """A new back-end instance, with the SET_VRING_BASE QEMU sends after a crash: split, the
        used idx it restores from the ring; packed, the stale value of the previous start."""
        if self.packed:
            return self.queue(last_avail_idx=WRAP_BIT, last_used_idx=WRAP_BIT)
        return self.queue(last_avail_idx=int(self.drv.vr.used_u16[1]))

    def in_flight(self, q):
        infl = q.ctx.inflight
        return packed_inflight_heads(infl) if self.packed else split_inflight_heads(infl)

    def close(self):
        self.drv = None
        gc.collect()
        self.area.unmap()
        self.mem.close()


@pytest.fixture
def local(packed):
    b = _Local(packed)
    yield b
    b.close()


def test_a_whole_burst_leaves_nothing_in_flight(local):
    q = local.queue()
    slots = [local.drv.submit(VIRTIO_BLK_T_OUT, 8 * i, data=_data(i), nsegs=2) for i in range(5)]
    local.drv.publish()
    assert q.burst(64) == 5
    assert sorted(s for s, _ in local.drv.harvest()) == sorted(slots)
    assert local.in_flight(q) == []
    assert local.restarted().resubmit == 0


@pytest.mark.parametrize("stage", [STAGE_FETCHED, STAGE_PUSHED, STAGE_PUBLISHED, STAGE_DONE],
                         ids=["fetched", "pushed", "published", "done"])
def test_killed_mid_burst_the_new_instance_resubmits_in_order_exactly_once(local, stage):
    q = local.queue()
    slots = [local.drv.submit(VIRTIO_BLK_T_OUT, 8 * i, data=_data(i), nsegs=1 + i % 3, indirect=i == 5)
             for i in range(8)]
    local.drv.publish()
    taken = burst_until(q.ctx, local.packed, 6, stage)  # six requests fetched, then the back-end dies
    assert len(taken) == 6
    lost = stage in (STAGE_FETCHED, STAGE_PUSHED)  # completions the driver never saw
    assert local.in_flight(q) != [] if lost else True
    before = local.drv.harvest()
    assert len(before) == (0 if lost else 6)
    q2 = local.restarted()
    assert q2.resubmit == (6 if lost else 0)
    assert q2.burst(64) == (6 if lost else 2)  # the resubmitted requests come alone, first
    after = local.drv.harvest()
    if lost:
        assert [s for s, _ in after] == slots[:6]  # in the order they were fetched
    q2.burst(64)
    after += local.drv.harvest()
    done = [s for s, _ in before + after]
    assert sorted(done) == sorted(slots), done  # every request completed exactly once
    served = {s for s, _ in after}
    for i, s in enumerate(slots):
        if s in served:
            assert local.drv.status(s) == VIRTIO_BLK_S_OK
            assert bytes(local.disk[8 * i * 512 : 8 * i * 512 + 4096]) == _data(i)
        else:  # completed by the dead instance (our stand-in completes without doing the I/O)
            assert local.drv.status(s) == STATUS_UNSET
    assert local.in_flight(q2) == []
    # and the ring goes on as usual
    s = local.drv.submit(VIRTIO_BLK_T_IN, 0, read_len=4096)
    local.drv.publish()
    assert q2.burst(64) == 1 and [x for x, _ in local.drv.harvest()] == [s]
    assert local.drv.status(s) == VIRTIO_BLK_S_OK


def test_a_region_for_another_ring_size_is_reinitialised_not_trusted(local):
    q = local.queue()
    local.drv.submit(VIRTIO_BLK_T_OUT, 0, data=_data(0))
    local.drv.publish()
    burst_until(q.ctx, local.packed, 4, STAGE_FETCHED)
    local.area.queue_region(0).view(np.uint16)[5] = NUM * 2  # desc_num corrupted
    q2 = local.restarted()
    assert q2.resubmit == 0
    assert local.area.queue_region(0).view(np.uint16)[5] == NUM


# -- the back-end process killed under load -------------------------------------------------

INFLIGHT = 1 << PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD


def _bring_up(fe, packed, info=None, fd=-1, first=True):
    """QEMU's vhost-user-blk start: SET_FEATURES, GET_INFLIGHT_FD (first start), SET_INFLIGHT_FD,
    then the mem table and the ring (kept in guest memory across the restart)."""
    want = fe.get_features() & ~(1 << VF.VHOST_F_LOG_ALL)
    if not packed:
        want &= ~(1 << VF.VIRTIO_F_RING_PACKED)
    fe.negotiate(want)
    assert fe.protocol_features & INFLIGHT
    if info is None:
        info, fd = fe.get_inflight_fd(1, NUM)
    assert fe.set_inflight_fd(info, fd, ack=True) == 0
    st = S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK
    if fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_STATUS & 1:
        fe.set_status(st)
    fe.set_mem_table()
    return info, fd


def _start_ring(fe, base):
    fe.setup_vring(0, NUM, base=base)
    if fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_STATUS & 1:
        fe.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    fe.sync()


def _big(k):
    return np.random.default_rng(1000 + k).integers(0, 256, BIG, dtype=np.uint8).tobytes()


BIG = 1 << 16
ROUNDS = 8


def _marks(fd, info, packed) -> int:
    """Requests marked in flight in the (one-queue) area."""
    import mmap

    with mmap.mmap(fd, info.mmap_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=info.mmap_offset) as m:
        raw = np.frombuffer(m, np.uint8).copy()
    if packed:
        return int(raw[32 : 32 + 32 * NUM : 32].sum())
    return int(raw[16 : 16 + 16 * NUM : 16].sum())


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_backend_sigkilled_under_load_resubmits_after_restart(tmp_path, packed):
    """Rounds of: 32 writes of 64 KiB in flight, SIGKILL a moment after the kick, a new back-end on
    the same socket gets the area back.  Every round: each request completes exactly once and its
    data is on the disk.  At least one round must have caught requests in flight."""
    sock = str(tmp_path / "blk.sock")
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(ROUNDS * NUM * BIG))
    guest = GuestMemoryLayout.simple(16 << 20)
    fd = -1
    info = None
    p = BlkProcess(sock, file=str(img))
    fe = None
    drv = None
    vr = None
    caught = 0
    rng = np.random.default_rng(7)
    try:
        k = 0
        for rnd in range(ROUNDS):
            fe = VhostUserFrontend.connect(sock, memory=guest, timeout=30)
            if vr is not None:  # the same ring in guest memory, with new eventfds
                vr.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                vr.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                fe.vrings[0] = vr
            info, fd = _bring_up(fe, packed, info, fd)
            # QEMU after a crash: split restores last_avail_idx from the used ring; packed cannot
            if drv is None:
                base = None
            else:
                base = (1 << 15 | 1 << 31) if packed else int(drv.vr.used_u16[1])
            _start_ring(fe, base)
            vr = fe.vrings[0]
            if drv is None:
                drv = BlkDriver(guest, vring=vr, features=fe.features, max_data=BIG, max_segs=16)
            drv.kick_fd = vr.kick_fd
            # the lcore has the ring once a first request is served
            w = drv.submit(VIRTIO_BLK_T_IN, 0, read_len=512)
            drv.kick()
            deadline = time.monotonic() + 60
            while not drv.harvest():
                assert time.monotonic() < deadline, "the back-end serves nothing"
                time.sleep(0.001)
            want = {}
            while drv.free:  # writes, each followed by a FLUSH (an fdatasync: the burst takes a while)
                if k % 2:
                    want[drv.submit(VIRTIO_BLK_T_FLUSH, 0, indirect=True)] = k
                else:
                    want[drv.submit(VIRTIO_BLK_T_OUT, (BIG // 512) * k, data=_big(k), nsegs=16, indirect=True)] = k
                k += 1
            first = min(want.values())
            drv.kick()
            time.sleep(float(rng.uniform(0, 0.01)))
            p.proc.send_signal(signal.SIGKILL)  # mid-I/O, with luck
            p.kill()
            in_flight = _marks(fd, info, packed)
            caught += in_flight > 0
            done = [want.pop(s) for s, _ in drv.harvest()]
            fe.close()
            p = BlkProcess(sock, file=str(img))
            fe = VhostUserFrontend.connect(sock, memory=guest, timeout=30)
            vr.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            vr.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            fe.vrings[0] = vr
            _bring_up(fe, packed, info, fd)
            _start_ring(fe, (1 << 15 | 1 << 31) if packed else int(drv.vr.used_u16[1]))
            drv.kick_fd = vr.kick_fd
            os.eventfd_write(drv.kick_fd, 1)  # the guest's next kick
            deadline = time.monotonic() + 60
            while want:
                done += [want.pop(s) for s, _ in drv.harvest()]
                assert time.monotonic() < deadline, f"round {rnd}: {len(want)} requests never completed"
                time.sleep(0.002)
            assert sorted(done) == list(range(first, k)), f"round {rnd}: not each request exactly once"
            if in_flight:
                assert "inflight requests to resubmit" in p.output
            fe.close()
            fe = None
            if caught >= 2:
                break
        p.stop()
        raw = img.read_bytes()
        for j in range(0, k, 2):
            assert raw[BIG * j : BIG * (j + 1)] == _big(j), f"request {j}: data not on the disk"
        assert caught, "no round caught requests in flight (the test proved nothing)"
    finally:
        if fe is not None:
            fe.close()
        p.close()
        if fd >= 0:
            os.close(fd)
        if vr is not None:
            vr.close_fds()
        drv = None
        gc.collect()
        guest.close()


def test_a_queue_resumed_from_a_previous_instance_interrupts_the_driver_once(local):
    """The dead back-end may have published completions and died before signalling them: the new
    one interrupts once (nothing when the area is fresh)."""
    call = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        q = local.queue(callfd=call)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(call)  # a fresh area: no interrupt
        local.drv.submit(VIRTIO_BLK_T_OUT, 0, data=_data(0))
        local.drv.publish()
        burst_until(q.ctx, local.packed, 4, STAGE_DONE)  # published; the interrupt never sent
        if local.packed:
            local.queue(callfd=call, last_avail_idx=WRAP_BIT, last_used_idx=WRAP_BIT)
        else:
            local.queue(callfd=call, last_avail_idx=int(local.drv.vr.used_u16[1]))
        assert os.eventfd_read(call) == 1
    finally:
        os.close(call)
