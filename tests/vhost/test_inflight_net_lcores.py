"""Inflight tracking on net rings across processes: ``vhost_echo`` (its lcore in a worker) is killed
with SIGKILL while frames flow, a new one starts on the same socket, and the scripted front-end hands
the inflight area back as QEMU's vhost-user-blk does (QEMU's net device never sends it: this is the
only place the net path is driven through the lcore hand-over).

After the restart no Tx chain is lost or completed twice, no frame is echoed twice, and traffic
goes on -- for packed rings too, whose SET_VRING_BASE after a crash is stale (the front-end cannot
restore it from a used ring): the positions come from the inflight area.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time

import numpy as np
import pytest

from dataplane.testing.guest_net import GuestMemory, GuestNet
from dataplane.testing.vhost_echo_proc import EchoProcess
from dataplane.testing.vhost_frontend import GuestMemoryLayout, GuestRegion, VhostUserFrontend
from dataplane.vhost.net_hdr import F_MRG_RXBUF, F_VERSION_1
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioDeviceStatus as S
from dataplane.vhost_user.features import VirtioFeature as VF, bit

from test_dirty_log_lcores import frame

pytestmark = pytest.mark.timeout(900)

GPA = 0x1_0000_0000
KILLS = 3


def _start(fe, g, info=None, fd=-1, bases=None):
    """vhost-user-blk's order: SET_FEATURES, GET_INFLIGHT_FD (first time), SET_INFLIGHT_FD, then the
    mem table, the rings (from ``bases``) and DRIVER_OK."""
    fe.vrings.update(g.frontend_vrings())
    fe.negotiate(g.features | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES))
    assert fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD & 1
    if info is None:
        info, fd = fe.get_inflight_fd(2, g.rx.size)
    assert fe.set_inflight_fd(info, fd, ack=True) == 0
    status = fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_STATUS & 1
    if status:
        fe.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    fe.set_mem_table()
    for q in (0, 1):
        fe.setup_vring(q, g.rx.size, base=(bases or {}).get(q))
    if status:
        fe.set_status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    fe.sync()
    return info, fd


def _stale_bases(g):
    """What QEMU sends after a back-end crash: split, each ring's used idx; packed, the value of the
    previous start (here the first: slot 0, wrap counters 1)."""
    if g.packed:
        return {0: 1 << 15 | 1 << 31, 1: 1 << 15 | 1 << 31}
    return {0: int(g.rx.vr.used_u16[1]), 1: int(g.tx.vr.used_u16[1])}


class _Traffic:
    """Frames through the echo; every frame ever received is remembered: none may come twice."""

    def __init__(self, g):
        self.g = g
        self.seen: set[bytes] = set()
        self.late = 0  # frames of a round with a kill that came back after it

    def take(self):
        got = [r.data for r in self.g.recv()]
        for f in got:
            assert f not in self.seen, "a frame was echoed twice"
            self.seen.add(f)
        if got:
            self.g.post_rx(len(got) * 2, 2048)  # give back what they took (mergeable 2 KiB buffers)
        return got

    def round(self, seed, n=6, timeout=120.0):
        """A round with no kill: all ``n`` frames come back and every Tx chain too."""
        pkts = [frame(60 + 500 * i, seed + i) for i in range(n)]
        assert self.g.send(pkts) == n
        reclaimed = 0
        deadline = time.monotonic() + timeout
        while not set(pkts) <= self.seen or reclaimed < n:
            got = self.take()
            self.late += len([f for f in got if f not in pkts])
            reclaimed += len(self.g.tx_reclaim())
            assert time.monotonic() < deadline, f"{len(set(pkts) & self.seen)} of {n} echoed, {reclaimed} reclaimed"
            time.sleep(0.001)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_net_backend_killed_while_frames_flow_resumes_from_the_inflight_area(packed):
    d = tempfile.mkdtemp(prefix="vhi", dir="/tmp")
    sock = os.path.join(d, "vhost.sock")
    layout = GuestMemoryLayout([GuestRegion(GPA, 16 << 20)])
    region = layout.regions[0]
    g = GuestNet(packed=packed, features=F_VERSION_1 | F_MRG_RXBUF, memory=GuestMemory.over(region.mem, region.gpa))
    t = _Traffic(g)
    e = EchoProcess([f"net_vhost0,iface={sock},queues=1"])
    fe = None
    fd = -1
    try:
        fe = VhostUserFrontend.connect(sock, memory=layout, timeout=30)
        info, fd = _start(fe, g)
        g.post_rx(128, 2048)
        t.round(0)
        seed = 100
        for k in range(KILLS):
            # a burst of frames, and the back-end dies while it moves them
            pkts = [frame(64 + 100 * i, seed + i) for i in range(24)]
            seed += 100
            assert g.send(pkts) == len(pkts)
            time.sleep(0.0005 * k)
            e.proc.send_signal(signal.SIGKILL)
            e.kill()
            fe.close()
            got = t.take()
            reclaimed = len(g.tx_reclaim())
            e = EchoProcess([f"net_vhost0,iface={sock},queues=1"])
            fe = VhostUserFrontend.connect(sock, memory=layout, timeout=30)
            _start(fe, g, info, fd, bases=_stale_bases(g))
            deadline = time.monotonic() + 120
            while reclaimed < len(pkts):  # every Tx chain comes back, once
                got += t.take()
                reclaimed += len(g.tx_reclaim())
                assert time.monotonic() < deadline, f"kill {k}: {reclaimed} of {len(pkts)} Tx chains came back"
                time.sleep(0.002)
            assert not g.tx_reclaim()
            # frames the dead back-end held in its mbufs are lost (a network may drop); none made up
            assert set(got) <= set(pkts), f"kill {k}"
            t.round(seed)  # and the rings go on (late echoes of the killed burst may still come: once)
            seed += 100
        assert t.seen >= {frame(60 + 500 * i, i) for i in range(6)}
        fe.close()
        fe = None
        e.stop()
    finally:
        if fe is not None:
            fe.close()
        e.close()
        if fd >= 0:
            os.close(fd)
        g.rx.close()
        g.tx.close()
        layout.close()
        if os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
