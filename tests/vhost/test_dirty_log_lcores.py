"""Dirty logging across processes: ``vhost_echo`` (its lcore in a worker process) against the scripted front-end.

The front-end starts and stops logging in QEMU's order (SET_LOG_BASE,
SET_FEATURES with LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG) while
traffic runs; the guest test double knows which pages the device wrote
for what it harvested, and the log must hold exactly those.  Then: a log
too small (counted, reported, nothing written outside it), a log replaced
mid-run, logging stopped and started again, the log unmapped in every
process when the device stops, and a second connection resuming from the
GET_VRING_BASE values (a migration destination).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pytest

from dataplane.testing.guest_net import GuestMemory, GuestNet
from dataplane.testing.leaks import tree_memfd_maps
from dataplane.testing.vhost_echo_proc import EchoProcess
from dataplane.testing.vhost_frontend import FrontendLog, GuestMemoryLayout, GuestRegion, VhostUserFrontend
from dataplane.testing.vhost_support import wait_until
from dataplane.vhost.net_hdr import F_MRG_RXBUF, F_VERSION_1
from dataplane.vhost_user.features import VirtioFeature as VF, bit

pytestmark = pytest.mark.timeout(900)

GPA = 0x1_0000_0000
MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")


@pytest.fixture(scope="module")
def echo():
    d = tempfile.mkdtemp(prefix="vhl", dir="/tmp")
    sock = os.path.join(d, "vhost.sock")
    with EchoProcess([f"net_vhost0,iface={sock},queues=1"]) as e:
        e.sock = sock
        yield e
    os.rmdir(d)


def frame(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(size * 7 + seed)
    return MAC_B + MAC_A + b"\x08\x00" + rng.integers(0, 256, size - 14, dtype=np.uint8).tobytes()


def traffic_round(g: GuestNet, seed: int, sizes=(60, 700, 1500, 3000, 9000, 64), timeout: float = 300.0) -> int:
    """Send ``sizes`` through the echo and take them all back (device_writes cleared first); returns the count."""
    g.rx.device_writes.clear()
    g.tx.device_writes.clear()
    pkts = [frame(s, seed + i) for i, s in enumerate(sizes)]
    assert g.send(pkts) == len(pkts)
    got, reclaimed = [], 0
    deadline = time.monotonic() + timeout
    while len(got) < len(pkts) or reclaimed < len(pkts):
        got += [r.data for r in g.recv()]
        reclaimed += len(g.tx_reclaim())
        assert time.monotonic() < deadline, f"{len(got)} of {len(pkts)} echoed, {reclaimed} reclaimed"
        time.sleep(0.001)
    assert got == pkts
    g.post_rx(len(got) * 5, 2048)  # give back what the round took (mergeable 2 KiB buffers)
    return len(pkts)


def expect_log(log: FrontendLog, want: set[int], timeout: float = 60.0) -> None:
    """The log's pages become exactly ``want`` (the lcore marks them right after publishing the used entries)."""
    wait_until(lambda: log.pages() >= want, timeout)
    assert log.pages() == want, f"missing {sorted(want - log.pages())[:8]}, extra {sorted(log.pages() - want)[:8]}"
    assert log.slack_untouched()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_lcores_log_exactly_what_they_write(echo, packed):
    layout = GuestMemoryLayout([GuestRegion(GPA, 16 << 20)])
    region = layout.regions[0]
    g = GuestNet(packed=packed, features=F_VERSION_1 | F_MRG_RXBUF, memory=GuestMemory.over(region.mem, region.gpa))
    logs = [FrontendLog(layout) for _ in range(3)]
    small = FrontendLog(size=8)  # covers GPAs below 256 KiB: none of this guest
    fe = fe2 = None
    try:
        fe = VhostUserFrontend.connect(echo.sock, memory=layout, timeout=30)
        fe.vrings.update(g.frontend_vrings())
        fe.start(queue_size=g.rx.size, features=g.features | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES))
        g.post_rx(128, 2048)
        sent = traffic_round(g, 0)  # logging off: nothing to log into
        # start logging (QEMU's order); the rings restart with the log flag on
        fe.set_logging(True, logs[0])
        sent += traffic_round(g, 10)
        expect_log(logs[0], g.rx.device_writes | g.tx.device_writes | g.notify_area_pages())
        # a log too small for this guest replaces it mid-run: nothing marked, nothing written outside, reported
        logs[0].clear()
        fe.set_log_base(small)
        sent += traffic_round(g, 20)
        assert wait_until(lambda: "not marked in the dirty log" in echo.output, 60), echo.output[-3000:]
        assert not small.bitmap.any() and small.slack_untouched()
        assert not logs[0].pages()  # the replaced log is no longer written
        # a good log replaces it
        fe.set_log_base(logs[1])
        sent += traffic_round(g, 30)
        expect_log(logs[1], g.rx.device_writes | g.tx.device_writes | g.notify_area_pages())
        # migration failed: logging stops, the rings keep running and mark nothing
        fe.set_logging(False)
        logs[1].clear()
        sent += traffic_round(g, 40)
        assert not logs[1].pages()
        # ... and starts again
        fe.set_logging(True, logs[2])
        sent += traffic_round(g, 50)
        expect_log(logs[2], g.rx.device_writes | g.tx.device_writes | g.notify_area_pages())
        # LOG_ALL alone, off and on again (no ring restarts): the lcore follows the shared flag
        log_all = bit(VF.VHOST_F_LOG_ALL)
        assert fe.set_features(fe.features & ~log_all, ack=True) == 0
        logs[2].clear()
        sent += traffic_round(g, 70)
        assert not logs[2].pages()
        assert fe.set_features(fe.features | log_all, ack=True) == 0
        sent += traffic_round(g, 80)
        expect_log(logs[2], g.rx.device_writes | g.tx.device_writes)  # no restart: no notification writes
        assert tree_memfd_maps(echo.proc.pid, "vhost-log")  # mapped by the echo (main and lcore) meanwhile
        # the source stops: GET_VRING_BASE says what was consumed, and the log is unmapped everywhere
        tx_base = fe.get_vring_base(1)
        rx_base = fe.get_vring_base(0)
        if packed:
            assert tx_base & 0x7FFF == sent % g.tx.size and tx_base >> 15 & 1 == (1 ^ (sent // g.tx.size) & 1)
        else:
            assert tx_base == sent
        assert wait_until(lambda: not tree_memfd_maps(echo.proc.pid, "vhost-log"), 30), \
            tree_memfd_maps(echo.proc.pid, "vhost-log")
        fe.close()
        # the destination resumes from those bases (same guest memory and driver state)
        fe2 = VhostUserFrontend.connect(echo.sock, memory=layout, timeout=30)
        fe2.vrings.update(g.frontend_vrings())
        fe2.start(queue_size=g.rx.size, features=g.features | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES),
                  bases={0: rx_base, 1: tx_base})
        traffic_round(g, 60)
        assert fe2.get_vring_base(1) & 0x7FFF == (sent + 6) % (g.tx.size if packed else 1 << 16)
    finally:
        for f in (fe, fe2):
            if f is not None:
                f.close()
        g.rx.close()
        g.tx.close()
        for lg in logs + [small]:
            lg.close()
        layout.close()
