"""Dirty logging in the vhost-user-blk data path: exactly the pages a burst wrote are marked.

The blk driver test double records what the device must have written for
each request it harvests (IN / GET_ID data up to the used length, the status
byte, the used entries); the log must hold exactly those pages.
"""

from __future__ import annotations

import numpy as np

from dataplane.testing.guest_net import log_pages
from dataplane.vhost.blk.spec import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)
from dataplane.vhost.dirty_log import LOG_CTL_UNLOGGED, make_log, set_log_on

from _blk_support import DISK_SIZE

MEM = 8 << 20


def _logged(make_blk, bitmap=None, on=True):
    bitmap = np.zeros(MEM // 4096 // 8, np.uint8) if bitmap is None else bitmap
    b = make_blk(mem_size=MEM, log=lambda drv: make_log(bitmap, desc_gpa=drv.desc_gpa, used_gpa=drv.used_gpa, on=on))
    return b, bitmap, b.q.ctx.log


def test_exactly_the_written_pages_are_logged(make_blk, packed):
    b, bitmap, lg = _logged(make_blk)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 3 * 16384, dtype=np.uint8).tobytes()
    w = [b.drv.submit(VIRTIO_BLK_T_OUT, 32 * i, data=data[i * 16384 : (i + 1) * 16384], nsegs=3) for i in range(3)]
    done = b.run()
    assert len(done) == 3 and [b.drv.status(s) for s in w] == [VIRTIO_BLK_S_OK] * 3
    # OUT: the device wrote only status bytes and used entries, not the 48 KiB it read
    assert log_pages(bitmap) == b.drv.device_writes
    bitmap[:] = 0
    b.drv.device_writes.clear()
    r = b.drv.submit(VIRTIO_BLK_T_IN, 0, read_len=40960, nsegs=4)  # a chain over many pages
    ri = b.drv.submit(VIRTIO_BLK_T_IN, 32, read_len=8192, nsegs=2, indirect=True)
    i = b.drv.submit(VIRTIO_BLK_T_GET_ID, 0, read_len=4096)  # GET_ID writes 20 of the 4096 bytes
    f = b.drv.submit(VIRTIO_BLK_T_FLUSH, 0)
    e = b.drv.submit(VIRTIO_BLK_T_IN, DISK_SIZE // 512, read_len=4096)  # beyond the disk: status only
    done = b.run()
    assert len(done) == 5
    assert [b.drv.status(s) for s in (r, ri, i, f, e)] == [VIRTIO_BLK_S_OK] * 4 + [VIRTIO_BLK_S_IOERR]
    assert b.drv.data(r, 16384) == data[:16384]
    want = b.drv.device_writes
    assert len(want) >= 12  # the IN data's pages, and not GET_ID's or the failed read's buffers
    assert log_pages(bitmap) == want
    assert lg.ctl[LOG_CTL_UNLOGGED] == 0


def test_logging_toggled_between_bursts(make_blk, packed):
    b, bitmap, lg = _logged(make_blk, on=False)
    for on in (False, True, False, True):
        set_log_on(lg.ctl, on)
        bitmap[:] = 0
        b.drv.device_writes.clear()
        s = b.drv.submit(VIRTIO_BLK_T_IN, 8, read_len=12288, nsegs=2)
        assert len(b.run()) == 1 and b.drv.status(s) == VIRTIO_BLK_S_OK
        assert log_pages(bitmap) == (b.drv.device_writes if on else set())


def test_log_too_small_counts_and_writes_nothing_outside(make_blk, packed):
    backing = np.full(48, 0x5A, np.uint8)
    bitmap = backing[16:24]  # 64 pages: the first 256 KiB of the guest
    bitmap[:] = 0
    b, _, lg = _logged(make_blk, bitmap)
    slots = [b.drv.submit(VIRTIO_BLK_T_IN, 0, read_len=4096) for _ in range(8)]
    assert len(b.run()) == 8 and all(b.drv.status(s) == VIRTIO_BLK_S_OK for s in slots)
    want = b.drv.device_writes
    inside = {p for p in want if p < 64}
    assert inside and want - inside  # some pages fit in the log, some do not
    assert log_pages(bitmap) == inside
    assert lg.ctl[LOG_CTL_UNLOGGED] > 0
    assert (backing[:16] == 0x5A).all() and (backing[24:] == 0x5A).all()
