"""virtio-blk requests served by the blk burst kernel, over split and packed rings in test memory."""

from __future__ import annotations

import os
import struct

import numpy as np

from dataplane.testing.blk_driver import STATUS_UNSET
from dataplane.vhost.blk.spec import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from dataplane.vhost_user import VirtioFeature as VF

from _blk_support import ALL_FEATURES, DISK_SIZE, SERIAL


def _pattern(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _seg(sector, num, flags=0):
    return struct.pack("<QII", sector, num, flags)


def test_write_then_read_back(make_blk):
    b = make_blk()
    data = _pattern(8192, 1)
    slot, used, status = b.one(VIRTIO_BLK_T_OUT, 24, data=data)
    assert (used, status) == (1, VIRTIO_BLK_S_OK)
    assert bytes(b.disk[24 * 512 : 24 * 512 + 8192]) == data
    slot, used, status = b.one(VIRTIO_BLK_T_IN, 24, read_len=8192)
    assert (used, status) == (8193, VIRTIO_BLK_S_OK)
    assert b.drv.data(slot, 8192) == data
    st = b.q.stats()
    assert (st["reads"], st["writes"], st["read_bytes"], st["written_bytes"]) == (1, 1, 8192, 8192)


def test_scattered_data_and_indirect_tables(make_blk):
    b = make_blk()
    data = _pattern(4096, 2)
    _, _, status = b.one(VIRTIO_BLK_T_OUT, 3, data=data, nsegs=7, indirect=True)
    assert status == VIRTIO_BLK_S_OK
    slot, used, status = b.one(VIRTIO_BLK_T_IN, 3, read_len=4096, nsegs=5)
    assert (used, status) == (4097, VIRTIO_BLK_S_OK)
    assert b.drv.data(slot, 4096) == data


def test_seg_max_data_segments_in_one_request(make_blk):
    """SEG_MAX: the config space promises DEFAULT_SEG_MAX data segments per request (QEMU's
    default); a write and a read of that many segments, in an indirect table, are served."""
    from dataplane.vhost.blk.device import DEFAULT_SEG_MAX

    b = make_blk(max_segs=DEFAULT_SEG_MAX)
    data = _pattern(DEFAULT_SEG_MAX * 512, 9)
    _, used, status = b.one(VIRTIO_BLK_T_OUT, 40, data=data, nsegs=DEFAULT_SEG_MAX, indirect=True)
    assert (used, status) == (1, VIRTIO_BLK_S_OK)
    assert bytes(b.disk[40 * 512 : 40 * 512 + len(data)]) == data
    slot, used, status = b.one(VIRTIO_BLK_T_IN, 40, read_len=len(data), nsegs=DEFAULT_SEG_MAX, indirect=True)
    assert (used, status) == (len(data) + 1, VIRTIO_BLK_S_OK)
    assert b.drv.data(slot, len(data)) == data


def test_any_layout_header_split_and_status_shared_with_data(make_blk):
    """VERSION_1: no framing assumptions -- a header over two descriptors, data and status in one."""
    b = make_blk()
    d = b.drv
    b.disk[512:1024] = np.frombuffer(_pattern(512, 3), np.uint8)
    slot = d.alloc_slot()
    d.write_header(slot, VIRTIO_BLK_T_IN, 1)
    h = d.hdr_gpa(slot)
    d.add([(h, 5, False), (h + 5, 11, False), (d.data_gpa(slot), 513, True)], slot)
    [(s, used)] = b.run()
    assert (s, used) == (slot, 513)
    assert d.data(slot, 512) == bytes(b.disk[512:1024])
    assert d.view(d.data_gpa(slot) + 512, 1)[0] == VIRTIO_BLK_S_OK


def test_get_id_returns_the_serial(make_blk):
    b = make_blk()
    slot, used, status = b.one(VIRTIO_BLK_T_GET_ID, 0, read_len=20)
    assert (used, status) == (21, VIRTIO_BLK_S_OK)
    assert b.drv.read_id(slot) == SERIAL.ljust(20, b"\0")


def test_flush_syncs_the_file(make_blk, tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(DISK_SIZE))
    fd = os.open(path, os.O_RDWR)
    try:
        b = make_blk(sync_fd=fd)
        _, used, status = b.one(VIRTIO_BLK_T_FLUSH, 0)
        assert (used, status) == (1, VIRTIO_BLK_S_OK)
        assert b.q.stats()["flushes"] == 1
    finally:
        os.close(fd)
    # a closed fd: fdatasync fails, the guest is told
    _, _, status = b.one(VIRTIO_BLK_T_FLUSH, 0)
    assert status == VIRTIO_BLK_S_IOERR


def test_write_zeroes_and_discard_zero_their_segments(make_blk):
    b = make_blk()
    b.disk[:] = 0xFF
    segs = _seg(0, 8) + _seg(100, 16, 1)  # UNMAP is allowed for WRITE_ZEROES
    _, _, status = b.one(VIRTIO_BLK_T_WRITE_ZEROES, 0, data=segs)
    assert status == VIRTIO_BLK_S_OK
    assert not b.disk[: 8 * 512].any() and b.disk[8 * 512] == 0xFF
    assert not b.disk[100 * 512 : 116 * 512].any() and b.disk[116 * 512] == 0xFF
    _, _, status = b.one(VIRTIO_BLK_T_DISCARD, 0, data=_seg(200, 4))
    assert status == VIRTIO_BLK_S_OK
    assert not b.disk[200 * 512 : 204 * 512].any() and b.disk[204 * 512] == 0xFF
    st = b.q.stats()
    assert (st["write_zeroes"], st["discards"]) == (1, 1)


def test_last_sector_is_usable(make_blk):
    b = make_blk()
    last = DISK_SIZE // 512 - 1
    data = _pattern(512, 4)
    assert b.one(VIRTIO_BLK_T_OUT, last, data=data)[2] == VIRTIO_BLK_S_OK
    slot, _, status = b.one(VIRTIO_BLK_T_IN, last, read_len=512)
    assert status == VIRTIO_BLK_S_OK and b.drv.data(slot, 512) == data


def test_readonly_disk_refuses_writes(make_blk):
    b = make_blk(readonly=True)
    b.disk[:4096] = 7
    assert b.one(VIRTIO_BLK_T_OUT, 0, data=bytes(4096))[2] == VIRTIO_BLK_S_IOERR
    assert b.one(VIRTIO_BLK_T_WRITE_ZEROES, 0, data=_seg(0, 8))[2] == VIRTIO_BLK_S_IOERR
    assert b.one(VIRTIO_BLK_T_DISCARD, 0, data=_seg(0, 8))[2] == VIRTIO_BLK_S_IOERR
    assert (b.disk[:4096] == 7).all()
    slot, _, status = b.one(VIRTIO_BLK_T_IN, 0, read_len=4096)
    assert status == VIRTIO_BLK_S_OK and b.drv.data(slot, 4096) == bytes([7]) * 4096
    assert b.q.stats()["ioerr"] == 3


def test_discard_and_write_zeroes_not_negotiated_are_unsupported(make_blk):
    b = make_blk(features=1 << VF.VIRTIO_F_VERSION_1)
    b.disk[:] = 1
    assert b.one(VIRTIO_BLK_T_DISCARD, 0, data=_seg(0, 8))[2] == VIRTIO_BLK_S_UNSUPP
    assert b.one(VIRTIO_BLK_T_WRITE_ZEROES, 0, data=_seg(0, 8))[2] == VIRTIO_BLK_S_UNSUPP
    assert (b.disk == 1).all()


def test_many_requests_in_one_burst_and_interrupts(make_blk):
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        b = make_blk(num=64, callfd=efd, features=ALL_FEATURES | 1 << VF.VIRTIO_RING_F_EVENT_IDX)
        slots = [b.drv.submit(VIRTIO_BLK_T_OUT, 8 * i, data=bytes([i]) * 4096) for i in range(20)]
        done = b.run()
        assert sorted(s for s, _ in done) == sorted(slots)
        assert all(b.drv.status(s) == VIRTIO_BLK_S_OK for s in slots)
        assert os.eventfd_read(efd) == 1
        assert all((b.disk[i * 4096 : (i + 1) * 4096] == i).all() for i in range(20))
        assert b.drv.status(slots[0]) != STATUS_UNSET
    finally:
        os.close(efd)
