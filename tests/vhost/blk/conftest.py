"""Fixtures of the vhost-user-blk data-path tests.

``make_blk(packed=..., ...)`` builds a :class:`BlkDriver` (the guest side, a
ring in front-end guest memory) and a :class:`BlkQueue` (our device side)
over the same ring, in this process, with a RAM disk as a numpy array.
``log``: the queue's dirty log, or a function of the driver that makes it
(its ring GPAs are known once the driver laid the ring out).
Everything is released after the test.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np
import pytest

from dataplane.testing.blk_driver import BlkDriver
from dataplane.testing.vhost_frontend import GuestMemoryLayout, GuestRegion
from dataplane.vhost.blk.requests import BlkQueue

from _blk_support import ALL_FEATURES, DISK_SIZE, LIMITS, SERIAL



@dataclass
class Blk:
    drv: BlkDriver
    q: BlkQueue
    disk: np.ndarray
    mem: GuestMemoryLayout

    def run(self, *, want: int = 64) -> list[tuple[int, int]]:
        """Publish, serve one burst, harvest."""
        self.drv.publish()
        self.q.burst(want)
        return self.drv.harvest()

    def one(self, *args, **kw) -> tuple[int, int, int]:
        """Submit one request and serve it: (slot, used length, status)."""
        slot = self.drv.submit(*args, **kw)
        done = self.run()
        assert [s for s, _ in done] == [slot]
        return slot, done[0][1], self.drv.status(slot)


@pytest.fixture(params=[False, True], ids=["split", "packed"])
def packed(request):
    return request.param


@pytest.fixture
def make_blk(packed):
    made = []

    def make(*, features=ALL_FEATURES, readonly=False, disk_size=DISK_SIZE, num=32, sync_fd=-1,
             extra_regions=(), mem_size=8 << 20, callfd=-1, disk=None, log=None, max_segs=8):
        mem = GuestMemoryLayout([GuestRegion(0, mem_size), *extra_regions])
        drv = BlkDriver(mem, num, packed=packed, features=features, max_segs=max_segs)
        disk = np.zeros(disk_size, np.uint8) if disk is None else disk
        q = BlkQueue(*drv.device_addrs(), drv.num, regions=drv.region_table(), disk=disk, packed=packed,
                     features=features, readonly=readonly, sync_fd=sync_fd, serial=SERIAL, limits=LIMITS,
                     callfd=callfd, log=log(drv) if callable(log) else log)
        b = Blk(drv, q, disk, mem)
        made.append(b)
        return b

    yield make
    for b in made:
        b.drv = b.q = None
        mem = b.mem
        b.mem = None
        gc.collect()
        mem.close()
