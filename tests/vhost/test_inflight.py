"""Inflight I/O tracking: the area's layout, GET/SET_INFLIGHT_FD (and hostile sizes), and the
records net bursts keep, recovered after a back-end dies mid-burst (split and packed).

The blk data path's crash and resubmission tests are in tests/vhost/blk/test_blk_inflight.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataplane.rings.packed import WRAP_BIT
from dataplane.rings.split import split_drv_add1, split_drv_publish
from dataplane.rings.packed import packed_drv_add
from dataplane.testing.inflight_crash import STAGE_DONE, STAGE_FETCHED, STAGE_PUBLISHED, STAGE_PUSHED, burst_until
from dataplane.testing.vhost_frontend import GuestMemoryLayout
from dataplane.testing.blk_driver import BlkDriver
from dataplane.vhost.inflight import (
    PACKED_DESC_SIZE,
    PACKED_HDR_SIZE,
    SPLIT_DESC_SIZE,
    SPLIT_HDR_SIZE,
    InflightArea,
    InflightError,
    make_inflight,
    packed_inflight_heads,
    queue_region_size,
    split_inflight_heads,
)
from dataplane.vhost.virtio_net import VhostQueue
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit
from dataplane.vhost_user.messages import VhostUserRequest as R

# the spec's structures, C layout (natural alignment), to check our offsets and sizes against
DESC_STATE_SPLIT = np.dtype({"names": ["inflight", "padding", "next", "counter"],
                             "formats": ["u1", ("u1", 5), "<u2", "<u8"], "offsets": [0, 1, 6, 8], "itemsize": 16})
QUEUE_REGION_SPLIT_HDR = np.dtype({"names": ["features", "version", "desc_num", "last_batch_head", "used_idx"],
                                   "formats": ["<u8", "<u2", "<u2", "<u2", "<u2"], "offsets": [0, 8, 10, 12, 14],
                                   "itemsize": 16})
DESC_STATE_PACKED = np.dtype({"names": ["inflight", "padding", "next", "last", "num", "counter", "id", "flags", "len",
                                        "addr"],
                              "formats": ["u1", "u1", "<u2", "<u2", "<u2", "<u8", "<u2", "<u2", "<u4", "<u8"],
                              "offsets": [0, 1, 2, 4, 6, 8, 16, 18, 20, 24], "itemsize": 32})
QUEUE_REGION_PACKED_HDR = np.dtype({"names": ["features", "version", "desc_num", "free_head", "old_free_head",
                                              "used_idx", "old_used_idx", "used_wrap_counter", "old_used_wrap_counter"],
                                    "formats": ["<u8", "<u2", "<u2", "<u2", "<u2", "<u2", "<u2", "u1", "u1"],
                                    "offsets": [0, 8, 10, 12, 14, 16, 18, 20, 21], "itemsize": 32})


def _split_view(region):
    return (region[:SPLIT_HDR_SIZE].view(QUEUE_REGION_SPLIT_HDR)[0],
            region[SPLIT_HDR_SIZE:].view(DESC_STATE_SPLIT) if len(region) > SPLIT_HDR_SIZE else None)


def _packed_view(region, num):
    return (region[:PACKED_HDR_SIZE].view(QUEUE_REGION_PACKED_HDR)[0],
            region[PACKED_HDR_SIZE : PACKED_HDR_SIZE + PACKED_DESC_SIZE * num].view(DESC_STATE_PACKED))


# -- layout ------------------------------------------------------------------------


def test_structures_have_the_spec_sizes():
    assert (DESC_STATE_SPLIT.itemsize, SPLIT_DESC_SIZE, SPLIT_HDR_SIZE) == (16, 16, 16)
    assert (DESC_STATE_PACKED.itemsize, PACKED_DESC_SIZE) == (32, 32)
    assert PACKED_HDR_SIZE == 32  # 29 bytes of fields + padding[7] would be 29; the array is 8-aligned


@pytest.mark.parametrize("num", [1, 2, 3, 64, 128, 256, 1024, 32768])
def test_queue_region_sizes_round_to_64_bytes_as_dpdk(num):
    # DPDK: ALIGN_MUL_CEIL(desc * n + u64 + 4 x u16, 64) split; (desc * n + u64 + 6 x u16 + 9 x u8) packed
    split = -(-(16 * num + 8 + 8) // 64) * 64
    packed = -(-(32 * num + 8 + 12 + 9) // 64) * 64
    assert queue_region_size(num, False) == split
    assert queue_region_size(num, True) == packed
    assert split >= SPLIT_HDR_SIZE + SPLIT_DESC_SIZE * num
    assert packed >= PACKED_HDR_SIZE + PACKED_DESC_SIZE * num


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_allocated_area_is_zeroed_and_sized_per_queue(packed):
    a = InflightArea.allocate(3, 256, packed)
    try:
        assert a.mmap_size == 3 * queue_region_size(256, packed) == os.fstat(a.fd).st_size
        if packed:  # a fresh packed region has every entry on the free list (as DPDK sets it up)
            hdr, desc = _packed_view(a.queue_region(2), 256)
            assert hdr["version"] == 0 and hdr["used_wrap_counter"] == 1 == hdr["old_used_wrap_counter"]
            assert list(desc["next"][:4]) == [1, 2, 3, 4] and not desc["inflight"].any()
        else:
            assert not a.buf.any()
    finally:
        a.unmap()


# -- control plane: GET / SET_INFLIGHT_FD through the device -------------------------

INFLIGHT = bit(PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)
REPLY_ACK = bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK)
BASE = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_get_inflight_fd_gives_a_zeroed_area_in_the_negotiated_layout(lib, server, connect, guest, packed):
    assert lib.driver_get_protocol_features(server) & INFLIGHT
    fe = connect(guest)
    fe.negotiate(BASE | (bit(VF.VIRTIO_F_RING_PACKED) if packed else 0))
    assert fe.protocol_features & INFLIGHT
    info, fd = fe.get_inflight_fd(2, 128)
    try:
        assert (info.mmap_size, info.mmap_offset, info.num_queues, info.queue_size) == (
            2 * queue_region_size(128, packed), 0, 2, 128)
        assert os.fstat(fd).st_size == info.mmap_size
        dev = lib.get_device(0)
        assert dev.inflight is not None and dev.inflight.packed == packed
        # handing it back (what QEMU does before every start) is accepted
        assert fe.set_inflight_fd(info, fd, ack=True) == 0
    finally:
        os.close(fd)


def _memfd(size):
    fd = os.memfd_create("hostile-inflight")
    os.ftruncate(fd, size)
    return fd


@pytest.mark.parametrize("case", ["no_queues", "queue_too_big", "too_small", "pipe", "file_too_small",
                                  "unaligned_offset", "overflow"])
def test_hostile_inflight_descriptions_are_refused_and_the_connection_stays(lib, server, connect, guest, case):
    fe = connect(guest)
    fe.negotiate(BASE, INFLIGHT | REPLY_ACK)
    ok = queue_region_size(64, False)
    if case == "no_queues":
        fe.send(R.VHOST_USER_GET_INFLIGHT_FD, P.Inflight(0, 0, 0, 64), need_reply=True)
        assert P.U64.parse(fe.reply(R.VHOST_USER_GET_INFLIGHT_FD).payload).u64 == 1
    elif case == "queue_too_big":
        fe.send(R.VHOST_USER_GET_INFLIGHT_FD, P.Inflight(0, 0, 1, 40000), need_reply=True)
        assert P.U64.parse(fe.reply(R.VHOST_USER_GET_INFLIGHT_FD).payload).u64 == 1
    else:
        size, offset, fd = {
            "too_small": (ok - 64, 0, None),
            "file_too_small": (ok, 0, "short"),
            "unaligned_offset": (ok, 100, None),
            "overflow": (ok, (1 << 64) - 4096, None),
            "pipe": (ok, 0, "pipe"),
        }[case]
        close = []
        if fd is None:
            fd = _memfd(ok)
        elif fd == "short":
            fd = _memfd(ok - 1)
        elif fd == "pipe":
            r, w = os.pipe()
            fd = r
            close.append(w)
        close.append(fd)
        try:
            assert fe.set_inflight_fd(P.Inflight(size, offset, 1, 64), fd, ack=True) == 1
        finally:
            for f in close:
                os.close(f)
    dev = lib.get_device(0)
    assert dev.inflight is None
    assert "INFLIGHT_FD" in dev.last_error
    assert fe.get_features()  # still connected


def test_inflight_requests_are_refused_without_the_protocol_feature(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE, REPLY_ACK)
    fe.send(R.VHOST_USER_GET_INFLIGHT_FD, P.Inflight(0, 0, 1, 64), need_reply=True)
    assert P.U64.parse(fe.reply(R.VHOST_USER_GET_INFLIGHT_FD).payload).u64 == 1
    assert "INFLIGHT_SHMFD" in lib.get_device(0).last_error


# -- net data path: marks set and cleared by the bursts; crash and resubmission --------


class _Ring:
    """A net Tx ring (guest -> device) in guest memory, driven from here, and its inflight area."""

    def __init__(self, packed, num=16):
        self.mem = GuestMemoryLayout.simple(4 << 20)
        self.drv = BlkDriver(self.mem, num, packed=packed)  # only its ring and driver state are used
        self.packed = packed
        self.num = num
        self.area = InflightArea.allocate(1, num, packed)
        self.bufs = self.mem.alloc(2 * num * 2048, 4096)
        self.cookies = np.zeros(num, np.uint64)
        self.lens = np.zeros(num, np.uint32)

    def queue(self, **kw):
        d, a, u = self.drv.device_addrs()
        return VhostQueue(d, a, u, self.num, regions=self.drv.region_table(), packed=self.packed,
                          features=bit(VF.VIRTIO_F_VERSION_1), read_only=True,
                          inflight=make_inflight(self.area.queue_region(0), self.num, self.packed), **kw)

    def send(self, k, first=0):
        """Post ``k`` frames (12-byte header + 60 bytes whose first byte is the frame number)."""
        for i in range(first, first + k):
            gpa = self.bufs + 2048 * i
            view = self.mem.view(gpa, 72)
            view[:] = 0
            view[12] = i
            if self.packed:
                r = packed_drv_add(self.drv.vr, self.drv.ds, i, np.array([gpa], np.uint64), np.array([72], np.uint32),
                                   np.zeros(1, np.uint8), 1, 0, 0)
            else:
                r = split_drv_add1(self.drv.vr, self.drv.ds, i, gpa, 72, False)
            assert r >= 0
        self.drv.publish() if self.packed else split_drv_publish(self.drv.vr, self.drv.ds)

    def harvest(self):
        return [c for c, _ in self.drv.harvest()]

    def heads(self, q):
        infl = q.ctx.inflight
        return packed_inflight_heads(infl) if self.packed else split_inflight_heads(infl)

    def close(self):
        self.area.unmap()
        self.mem.close()


@pytest.fixture(params=[False, True], ids=["split", "packed"])
def ring(request):
    r = _Ring(request.param)
    yield r
    r.close()


def test_fetch_marks_and_the_flush_clears_in_the_region(ring):
    q = ring.queue()
    ring.send(4)
    heads = burst_until(q.ctx, ring.packed, 3, STAGE_FETCHED)
    assert len(heads) == 3
    region = ring.area.queue_region(0)
    if ring.packed:
        hdr, desc = _packed_view(region, ring.num)
        assert hdr["version"] == 1 and hdr["free_head"] == hdr["old_free_head"] == 3
        assert list(desc["inflight"][:4]) == [1, 1, 1, 0]
        assert list(desc["counter"][:3]) == [0, 1, 2] and list(desc["num"][:3]) == [1, 1, 1]
        assert list(desc["id"][:3]) == heads and list(desc["len"][:3]) == [72] * 3  # copies of the ring descriptors
    else:
        hdr, desc = _split_view(region)
        assert hdr["version"] == 1 and hdr["desc_num"] == ring.num
        assert sorted(np.nonzero(desc["inflight"])[0]) == sorted(heads)
        assert [int(desc["counter"][h]) for h in heads] == [0, 1, 2]
    assert ring.heads(q) == ([0, 1, 2] if ring.packed else heads)
    # the rest of a burst: completed, published, the marks gone, the used position recorded
    burst_until(q.ctx, ring.packed, 0, STAGE_DONE)  # flush of nothing fetched: no change
    q2 = ring.queue()  # a restart with nothing lost: the three are resubmitted
    assert q2.resubmit == 3


@pytest.mark.parametrize("stage", [STAGE_FETCHED, STAGE_PUSHED, STAGE_PUBLISHED, STAGE_DONE],
                         ids=["fetched", "pushed", "published", "done"])
def test_backend_dies_mid_burst_nothing_lost_nothing_repeated(ring, pool, stage):
    q = ring.queue()
    ring.send(6)
    first = burst_until(q.ctx, ring.packed, 4, stage)  # then the back-end dies
    assert len(first) == 4
    done_before = ring.harvest()
    assert len(done_before) == (4 if stage in (STAGE_PUBLISHED, STAGE_DONE) else 0)
    # a new back-end instance: the front-end's SET_VRING_BASE is what it knows (split: the used idx it
    # restored from the ring; packed: the stale base of the previous start)
    if ring.packed:
        q = ring.queue(last_avail_idx=WRAP_BIT, last_used_idx=WRAP_BIT)
    else:
        q = ring.queue(last_avail_idx=int(ring.drv.vr.used_u16[1]))
    assert q.resubmit == (0 if stage in (STAGE_PUBLISHED, STAGE_DONE) else 4)
    # the chains in flight first (a burst of their own), then the ones never fetched: each frame once
    n = 0
    for _ in range(3):
        out = q.dequeue(pool, 32)
        n += len(out)
        pool.free(out)
    assert n == (2 if stage in (STAGE_PUBLISHED, STAGE_DONE) else 6)
    completed = done_before + ring.harvest()
    assert sorted(completed) == list(range(6)), completed  # every frame completed exactly once
    assert not ring.heads(q)  # nothing left in flight
    assert q.dequeue(pool, 32).shape[0] == 0


def test_a_region_scribbled_over_while_running_stops_tracking_not_the_ring(ring, pool, capsys):
    from dataplane.vhost.inflight import Q_BAD, Q_ON, report_inflight

    q = ring.queue()
    ring.send(2)
    out = q.dequeue(pool, 32)
    assert len(out) == 2
    pool.free(out)
    r16 = ring.area.queue_region(0).view(np.uint16)
    if ring.packed:
        r16[6] = r16[7] = 0xFFFF  # free_head, old_free_head beyond the array
    else:
        r16[6] = 0xFFFF  # last_batch_head
    ring.harvest()
    ring.send(3, first=2)
    out = q.dequeue(pool, 32)
    assert len(out) == 3  # served all the same, nothing written out of bounds
    pool.free(out)
    assert sorted(ring.harvest()) == [2, 3, 4]
    if ring.packed:
        assert q.ctx.inflight.q[Q_BAD] == 1 and q.ctx.inflight.q[Q_ON] == 0
        report_inflight(q, port="p0", qid=1)
        assert "tracking stopped" in capsys.readouterr().err


def test_a_published_batch_the_driver_already_reused_is_not_resubmitted(ring, pool):
    """Killed after publishing a batch, before retiring its records; the driver took the completions
    and posted new buffers in their slots (next lap) before the new back-end came: the batch counts
    as completed (packed: the head slot no longer holds the buffer made available in the old lap)."""
    q = ring.queue()
    ring.send(ring.num)  # the whole ring
    assert len(burst_until(q.ctx, ring.packed, 4, STAGE_PUBLISHED)) == 4
    done = ring.harvest()
    assert sorted(done) == [0, 1, 2, 3]
    ring.send(4, first=ring.num)  # reuses the four slots (packed: flags of the next lap)
    if ring.packed:
        q = ring.queue(last_avail_idx=WRAP_BIT, last_used_idx=WRAP_BIT)
    else:
        q = ring.queue(last_avail_idx=int(ring.drv.vr.used_u16[1]))
    assert q.resubmit == 0
    n = 0
    for _ in range(4):
        out = q.dequeue(pool, 32)
        n += len(out)
        pool.free(out)
    done += ring.harvest()
    assert n == ring.num
    assert sorted(done) == list(range(ring.num + 4)), done  # every buffer once
