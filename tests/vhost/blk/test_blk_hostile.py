"""Hostile virtio-blk requests: each answered with the right status, or counted with the queue stopped.

Never a crash, never a byte touched outside the guest's buffers and the disk.
"""

from __future__ import annotations

import struct

import pytest

from dataplane.rings.virtqueue import ERR_ADDR, ERR_LAYOUT, STATE_ERR_BASE
from dataplane.testing.blk_driver import STATUS_UNSET
from dataplane.testing.vhost_frontend import GuestRegion
from dataplane.vhost.blk.spec import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)

from _blk_support import DISK_SIZE, LIMITS

SECTORS = DISK_SIZE // 512
BIG_GPA = 1 << 40  # a sparse region of 8 GiB: descriptors of 4 GiB fit in guest memory


def _seg(sector, num, flags=0):
    return struct.pack("<QII", sector, num, flags)


def _stopped(b, counter):
    """The queue stopped on a request it could not answer: nothing completed, counted, later requests wait."""
    assert b.q.broken
    assert b.q.stats()[counter] == 1
    b.drv.submit(VIRTIO_BLK_T_IN, 0, read_len=512)
    assert b.run() == []


def test_unreadable_header_stops_the_queue(make_blk):
    b = make_blk()
    d = b.drv
    slot = d.alloc_slot()
    d.add([(0x7000_0000_0000, 16, False), (d.status_gpa(slot), 1, True)], slot)
    d.view(d.status_gpa(slot), 1)[0] = STATUS_UNSET
    assert b.run() == []
    assert d.status(slot) == STATUS_UNSET  # nothing in a refused chain is touched
    assert b.q.ctx.state[STATE_ERR_BASE + ERR_ADDR] == 1
    _stopped(b, "bad_chains")


@pytest.mark.parametrize("hdr_len", [0, 1, 8, 15])
def test_short_header_is_an_ioerr(make_blk, hdr_len):
    b = make_blk()
    d = b.drv
    slot = d.alloc_slot()
    d.write_header(slot, VIRTIO_BLK_T_OUT, 0)
    segs = [(d.hdr_gpa(slot), hdr_len, False)] if hdr_len else []
    d.add(segs + [(d.status_gpa(slot), 1, True)], slot)
    assert b.run() == [(slot, 1)]
    assert d.status(slot) == VIRTIO_BLK_S_IOERR
    assert not b.q.broken


def test_header_in_a_write_descriptor_is_an_ioerr(make_blk):
    b = make_blk()
    d = b.drv
    b.disk[:512] = 9
    slot = d.alloc_slot()
    d.write_header(slot, VIRTIO_BLK_T_OUT, 0)
    d.add([(d.hdr_gpa(slot), 16, True), (d.status_gpa(slot), 1, True)], slot)
    assert b.run() == [(slot, 1)]
    assert d.status(slot) == VIRTIO_BLK_S_IOERR
    assert (b.disk[:512] == 9).all()


@pytest.mark.parametrize("status_len", [0, 1])
def test_status_not_writable_or_empty_stops_the_queue(make_blk, status_len):
    b = make_blk()
    d = b.drv
    slot = d.alloc_slot()
    d.write_header(slot, VIRTIO_BLK_T_OUT, 0)
    d.view(d.data_gpa(slot), 512)[:] = 1
    writable = status_len == 0  # an empty writable descriptor, or a one-byte readable one
    d.add([(d.hdr_gpa(slot), 16, False), (d.data_gpa(slot), 512, False), (d.status_gpa(slot), status_len, writable)],
          slot)
    assert b.run() == []
    assert not b.disk.any()
    _stopped(b, "no_status")


def test_readable_after_writable_stops_the_queue(make_blk):
    b = make_blk()
    d = b.drv
    slot = d.alloc_slot()
    d.write_header(slot, VIRTIO_BLK_T_OUT, 0)
    d.add([(d.hdr_gpa(slot), 16, False), (d.status_gpa(slot), 1, True), (d.data_gpa(slot), 512, False)], slot)
    assert b.run() == []
    assert b.q.ctx.state[STATE_ERR_BASE + ERR_LAYOUT] == 1
    _stopped(b, "bad_chains")


@pytest.mark.parametrize(
    "rtype, sector, nbytes",
    [
        (VIRTIO_BLK_T_IN, SECTORS, 512),  # just past the end
        (VIRTIO_BLK_T_IN, SECTORS - 1, 1024),  # straddles the end
        (VIRTIO_BLK_T_OUT, SECTORS - 1, 1024),
        (VIRTIO_BLK_T_OUT, 2**64 - 1, 512),  # sector * 512 wraps
        (VIRTIO_BLK_T_OUT, 2**55, 512),  # sector * 512 == 2**64: wraps to offset 0
        (VIRTIO_BLK_T_IN, 2**64 - 8, 4096),
        (VIRTIO_BLK_T_IN, 0, 100),  # not whole sectors
        (VIRTIO_BLK_T_OUT, 0, 513),
    ],
)
def test_out_of_range_or_partial_sectors_are_ioerr(make_blk, rtype, sector, nbytes):
    b = make_blk()
    b.disk[:] = 3
    kw = dict(data=bytes(nbytes)) if rtype == VIRTIO_BLK_T_OUT else dict(read_len=nbytes)
    slot, used, status = b.one(rtype, sector, **kw)
    assert (used, status) == (1, VIRTIO_BLK_S_IOERR)
    assert (b.disk == 3).all()
    if rtype == VIRTIO_BLK_T_IN:
        assert b.drv.data(slot, nbytes) == b"\xa5" * nbytes  # the guest's buffer untouched
    assert b.q.stats()["ioerr"] == 1


@pytest.fixture
def big_region():
    r = GuestRegion(BIG_GPA, 8 << 30)  # sparse: nothing is touched but the pages a test writes
    yield r


@pytest.mark.parametrize("lens", [[0xFFFFFE00], [0xFFFFFFFF], [0x80000000, 0x80000000], [0xFFFFFE00, 0xFFFFFE00, 0x400]])
@pytest.mark.parametrize("rtype", [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT])
def test_four_gib_lengths_are_ioerr(make_blk, big_region, rtype, lens):
    """Data descriptors up to 4 GiB each (sums past 2**32: no u32 arithmetic anywhere)."""
    b = make_blk(extra_regions=[big_region])
    d = b.drv
    b.disk[:] = 5
    slot = d.alloc_slot()
    d.write_header(slot, rtype, 0)
    segs, gpa = [(d.hdr_gpa(slot), 16, False)], BIG_GPA
    for n in lens:
        segs.append((gpa, n, rtype == VIRTIO_BLK_T_IN))
        gpa += n
    d.add(segs + [(d.status_gpa(slot), 1, True)], slot)
    assert b.run() == [(slot, 1)]
    assert d.status(slot) == VIRTIO_BLK_S_IOERR
    assert (b.disk == 5).all()


@pytest.mark.parametrize("rtype", [2, 3, 5, 7, 9, 10, 12, 14, 99, 0x80000000, 0xFFFFFFFF])
def test_unknown_request_types_are_unsupported(make_blk, rtype):
    b = make_blk()
    _, used, status = b.one(rtype, 0, read_len=512)
    assert (used, status) == (1, VIRTIO_BLK_S_UNSUPP)
    assert not b.disk.any()
    assert b.q.stats()["unsupp"] == 1


@pytest.mark.parametrize(
    "rtype, payload, expect",
    [
        (VIRTIO_BLK_T_DISCARD, _seg(0, 8, 1), VIRTIO_BLK_S_UNSUPP),  # UNMAP is for WRITE_ZEROES only
        (VIRTIO_BLK_T_WRITE_ZEROES, _seg(0, 8, 2), VIRTIO_BLK_S_UNSUPP),  # undefined flag
        (VIRTIO_BLK_T_DISCARD, _seg(0, LIMITS.max_discard_sectors + 1), VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, _seg(0, LIMITS.max_write_zeroes_sectors + 1), VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, _seg(0, 8) * (LIMITS.max_write_zeroes_seg + 1), VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, _seg(SECTORS - 1, 2), VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, _seg(2**64 - 1, 2), VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, _seg(0, 8) + _seg(SECTORS, 1), VIRTIO_BLK_S_IOERR),  # all or nothing
        (VIRTIO_BLK_T_WRITE_ZEROES, _seg(0, 8)[:12], VIRTIO_BLK_S_IOERR),  # a partial segment
        (VIRTIO_BLK_T_DISCARD, b"", VIRTIO_BLK_S_IOERR),  # no segment at all
    ],
)
def test_bad_discard_and_write_zeroes_segments(make_blk, rtype, payload, expect):
    b = make_blk()
    b.disk[:] = 4
    if payload:
        status = b.one(rtype, 0, data=payload)[2]
    else:
        status = b.one(rtype, 0)[2]
    assert status == expect
    assert (b.disk == 4).all()
    assert not b.q.broken
