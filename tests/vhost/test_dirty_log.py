"""Dirty logging in the vhost data path: after a burst with logging on, exactly the pages the device wrote are set.

The guest test double (:class:`~dataplane.testing.guest_net.GuestNet`) knows
which pages the device must have written for what it harvests (buffer bytes
up to the used length, used entries, used idx; packed: the descriptors
written back); the log must mark exactly those, no more, no fewer.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataplane.testing.guest_net import GuestNet, log_pages
from dataplane.testing.vhost_frontend import FrontendLog
from dataplane.vhost.dirty_log import (
    LOG_CTL_BAD_PAGE,
    LOG_CTL_ON,
    LOG_CTL_SEEN,
    LOG_CTL_UNLOGGED,
    LogError,
    LogRegion,
    make_log,
    set_log_on,
)
from dataplane.vhost.net_hdr import F_INDIRECT_DESC, F_MRG_RXBUF, F_VERSION_1
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF
from dataplane.vhost_user.messages import VhostUserRequest as R

MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")


def frame(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(size * 7 + seed)
    return MAC_B + MAC_A + b"\x08\x00" + rng.integers(0, 256, size - 14, dtype=np.uint8).tobytes()


def logged_guest(packed: bool, features: int, log_size: int | None = None, on: bool = True, **kw):
    """A guest, its Rx and Tx vhost queues sharing one log (a private bitmap) and the two logs."""
    g = GuestNet(packed=packed, features=features, **kw)
    bitmap = np.zeros(g.mem.log_size if log_size is None else log_size, np.uint8)
    logs = {}
    queues = {}
    for which, vq in (("rx", g.rx), ("tx", g.tx)):
        logs[which] = make_log(bitmap, desc_gpa=vq.desc_gpa, used_gpa=vq.used_gpa, on=on)
        queues[which] = g.vhost_queue(which, log=logs[which], read_only=which == "tx")
    return g, bitmap, queues, logs


SHAPES = [
    # (mergeable, Rx buffer size, descriptors per Rx buffer, indirect, packet sizes)
    ("mergeable", True, 2048, 1, False, [60, 1500, 5000, 9000, 64]),
    ("chained", False, 12000, 3, False, [60, 1500, 5000, 9000]),
    ("indirect", False, 12000, 4, True, [60, 1500, 5000, 9000]),
    ("big-buffers-small-packets", False, 16000, 1, False, [60, 100, 64]),
]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("name,mrg,buf,nseg,indirect,sizes", SHAPES, ids=[s[0] for s in SHAPES])
def test_exactly_the_written_pages_are_logged(pool, packed, name, mrg, buf, nseg, indirect, sizes):
    f = F_VERSION_1 | (F_MRG_RXBUF if mrg else 0) | (F_INDIRECT_DESC if indirect else 0)
    g, bitmap, q, _ = logged_guest(packed, f)
    with g:
        pkts = [frame(s, i) for i, s in enumerate(sizes)]
        assert g.send(pkts, nseg=2, indirect=indirect) == len(pkts)
        out = q["tx"].dequeue(pool, 32)
        assert len(out) == len(pkts)
        assert g.tx_reclaim() == [0] * len(pkts)
        # guest Tx: the device wrote only used entries
        assert log_pages(bitmap) == g.tx.device_writes
        bitmap[:] = 0
        assert g.post_rx(len(pkts) * 5 if mrg else len(pkts), buf, nseg=nseg, indirect=indirect) > 0
        assert q["rx"].enqueue(pool, out) == len(pkts)
        pool.free(out)
        got = g.recv()
        assert [r.data for r in got] == pkts
        expect = g.rx.device_writes
        # the posted buffers span far more pages than were written: the check has teeth
        assert len(expect) > 2
        assert log_pages(bitmap) == expect
        assert q["rx"].ctx.log.ctl[LOG_CTL_UNLOGGED] == 0


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_logging_off_marks_nothing_and_toggles_between_bursts(pool, packed):
    g, bitmap, q, logs = logged_guest(packed, F_VERSION_1 | F_MRG_RXBUF, on=False)
    with g:
        g.post_rx(64, 2048)
        for rnd, on in enumerate([False, True, False, True]):
            for lg in logs.values():
                set_log_on(lg.ctl, on)  # what the control plane does when LOG_ALL changes
                assert lg.ctl[LOG_CTL_ON] == int(on)
            g.rx.device_writes.clear()
            g.tx.device_writes.clear()
            bitmap[:] = 0
            pkts = [frame(100 + 50 * i, rnd) for i in range(4)]
            assert g.send(pkts) == 4
            out = q["tx"].dequeue(pool, 8)
            assert q["rx"].enqueue(pool, out) == 4
            pool.free(out)
            assert [r.data for r in g.recv()] == pkts
            g.tx_reclaim()
            g.post_rx(4, 2048)
            if on:
                assert log_pages(bitmap) == g.rx.device_writes | g.tx.device_writes
            else:
                assert not bitmap.any()
            # each queue's burst acknowledged the flag it read (the control plane waits for that)
            assert logs["rx"].ctl[LOG_CTL_SEEN] == logs["tx"].ctl[LOG_CTL_SEEN] == int(on)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_log_too_small_is_counted_and_nothing_written_outside(pool, packed):
    """A log covering only the first pages: pages beyond it are counted, never written."""
    # the guest sits at 4 GiB: a 16-byte log covers 128 pages (512 KiB) from GPA 0, none of the guest
    backing = np.full(64, 0xAA, np.uint8)
    bitmap = backing[16:32]
    bitmap[:] = 0
    g = GuestNet(packed=packed, features=F_VERSION_1 | F_MRG_RXBUF)
    lg = make_log(bitmap, desc_gpa=g.rx.desc_gpa, used_gpa=g.rx.used_gpa, on=True)
    qrx = g.vhost_queue("rx", log=lg)
    with g:
        g.post_rx(8, 2048)
        pkts = [frame(200, 1)]
        mb = pool.from_bytes(pkts[0])
        assert qrx.enqueue(pool, np.array([mb], np.uint32)) == 1
        pool.free(np.array([mb], np.uint32))
        assert [r.data for r in g.recv()] == pkts
    assert not bitmap.any()
    assert (backing[:16] == 0xAA).all() and (backing[32:] == 0xAA).all()
    # one page each: the buffer, and the used entry and used idx (split) / the descriptor written back (packed)
    assert lg.ctl[LOG_CTL_UNLOGGED] == (2 if packed else 3)
    assert lg.ctl[LOG_CTL_BAD_PAGE] >= (1 << 32) // 4096


@pytest.mark.parametrize("log_addr", [(1 << 64) - 4, (1 << 63) + 8, (1 << 62) - 4096], ids=["wraps-2^64", "above-2^63", "huge"])
def test_hostile_log_guest_addr_is_counted_never_written(pool, log_addr):
    """A front-end's log_guest_addr far beyond the log (or wrapping 2**64): the used-ring writes are
    counted as not logged, the buffer pages still marked, nothing written outside the log."""
    g = GuestNet(packed=False, features=F_VERSION_1 | F_MRG_RXBUF)
    backing = np.full(g.mem.log_size + 32, 0x3C, np.uint8)
    bitmap = backing[16:-16]
    bitmap[:] = 0
    lg = make_log(bitmap, desc_gpa=g.rx.desc_gpa, used_gpa=log_addr, on=True)
    qrx = g.vhost_queue("rx", log=lg)
    with g:
        g.post_rx(8, 2048)
        mb = pool.from_bytes(frame(300, 2))
        assert qrx.enqueue(pool, np.array([mb], np.uint32)) == 1
        pool.free(np.array([mb], np.uint32))
        (r,) = g.recv()
        written = g.rx.device_writes
    assert log_pages(bitmap) == written - {g.rx.used_gpa >> 12}
    assert lg.ctl[LOG_CTL_UNLOGGED] == (1 if log_addr >= 1 << 62 else 2)  # the used ring / its entry and idx
    assert (backing[:16] == 0x3C).all() and (backing[-16:] == 0x3C).all()


def test_log_region_maps_as_dpdk_and_refuses_bad_logs():
    fd = os.memfd_create("log")
    os.ftruncate(fd, 3 * 4096)
    r = LogRegion.map(fd, 4096, 8192)
    try:
        assert r.bitmap.shape == (4096,) and r.pages == 4096 * 8
        r.bitmap[0] = 1
        assert os.pread(r.fd, 1, 8192) == b"\x01"
    finally:
        r.unmap()
    assert r.fd == -1 and r.bitmap.size == 0
    for size, off, why in ((0, 0, "mmap_size is 0"), (4096, (1 << 64) - 1, "overflows"), (8192, 4096, "smaller than")):
        fd = os.memfd_create("log")
        os.ftruncate(fd, 8192)
        with pytest.raises(LogError, match=why):
            LogRegion.map(fd, size, off)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed on refusal
    rfd, wfd = os.pipe()
    with pytest.raises(LogError, match="cannot be mapped"):
        LogRegion.map(rfd, 4096, 0)
    os.close(wfd)


# -- control plane: SET_LOG_BASE / SET_LOG_FD / LOG_ALL through the state machine --------------------------

V1_PROTO_MRG = (1 << VF.VIRTIO_F_VERSION_1) | (1 << VF.VHOST_USER_F_PROTOCOL_FEATURES) | (1 << VF.VIRTIO_NET_F_MRG_RXBUF)
LOG_ALL = 1 << VF.VHOST_F_LOG_ALL


def test_set_log_base_maps_replies_and_replaces_the_log_under_running_rings(lib, server, connect, guest, datapath):
    fe = connect(guest)
    fe.start(features=V1_PROTO_MRG)
    dev = lib.get_device(0)
    assert dev.running and fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD & 1
    log1, log2 = FrontendLog(guest), FrontendLog(guest, mmap_offset=4096)
    try:
        datapath.calls.clear()
        reply = fe.set_log_base(log1)  # QEMU's vhost_user_set_log_base reads this reply
        assert reply.payload == b"" and not reply.fds
        assert dev.dirty_log.mmap_size == log1.size and dev.dirty_log.mmap_offset == 0
        # the running rings were taken back and handed out again with the log
        assert datapath.calls == [("stop", 0, 0), ("stop", 0, 1), ("start", 0, 0), ("start", 0, 1)]
        assert datapath.snapshots[0]["log"] is dev.dirty_log
        # the back-end's mapping is the front-end's log
        dev.dirty_log.bitmap[3] = 0x81
        assert log1.pages() == {24, 31}
        log1.clear()
        # QEMU's order: LOG_ALL, then the rings' addresses with VHOST_VRING_F_LOG (acked)
        datapath.calls.clear()
        fe.set_logging(True, log2)
        assert dev.dirty_log.mmap_offset == 4096 and dev.log_all and dev.running
        assert ("log_all", 0, True) in datapath.calls
        assert all(vq.addr_flags == 1 and vq.log_guest_addr == vq.used_gpa for vq in dev.vrings)
        assert datapath.snapshots[1]["log_all"]
        # the application's own guest writes (rte_vhost_log_write / rte_vhost_log_used_vring)
        gpa = guest.alloc(3 * 4096, 4096)
        assert lib.log_write(0, gpa + 100, 2 * 4096) == 0
        assert lib.log_used_vring(0, 1, 4, 8) == 0
        assert log2.pages() == {gpa // 4096, gpa // 4096 + 1, gpa // 4096 + 2, fe.vrings[1].used_gpa // 4096}
        assert lib.log_write(0, 1 << 40, 10) == 1  # beyond the log: counted
        fe.set_logging(False)
        assert ("log_all", 0, False) in datapath.calls and not dev.log_all and dev.running
        log2.clear()
        assert lib.log_write(0, gpa, 10) == 0 and not log2.pages()  # logging off: nothing
        # SET_LOG_FD: kept until the device goes
        efd = os.eventfd(0)
        fe.set_log_fd(efd)
        os.close(efd)
        fe.sync()
        assert dev.log_call_fd >= 0
        # the device stops (GET_VRING_BASE): the log is unmapped
        fe.get_vring_base(0)
        assert dev.dirty_log is None and not dev.running
    finally:
        fe.close()
        log1.close()
        log2.close()


def test_set_log_base_needs_log_shmfd_and_a_mappable_log(lib, server, connect, guest):
    fe = connect(guest)
    fe.start(features=V1_PROTO_MRG, protocol_features=1 << PF.VHOST_USER_PROTOCOL_F_REPLY_ACK)
    log = FrontendLog(guest)
    try:
        fe.send(R.VHOST_USER_SET_LOG_BASE, P.Log(log.size, 0), [log.fd], need_reply=True)
        assert P.U64.parse(fe.reply(R.VHOST_USER_SET_LOG_BASE).payload).u64 == 1
        dev = lib.get_device(0)
        assert "LOG_SHMFD protocol feature not negotiated" in dev.last_error and dev.dirty_log is None
    finally:
        fe.close()
        log.close()
