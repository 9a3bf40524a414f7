"""``dataplane-vhost-blk`` as a process, driven over its socket by the scripted front-end and a blk driver.

The front-end (:class:`VhostUserFrontend`) negotiates and sets up the rings
in its guest memory; :class:`BlkDriver` puts requests in them; the back-end's
lcore serves them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from dataplane.testing.blk_driver import BlkDriver
from dataplane.testing.vhost_blk_proc import BlkProcess
from dataplane.testing.leaks import tree_memfd_maps
from dataplane.testing.vhost_frontend import FrontendLog, GuestMemoryLayout, VhostUserFrontend
from dataplane.testing.vhost_support import wait_until
from dataplane.vhost.blk.device import DEFAULT_LIMITS, DEFAULT_SEG_MAX
from dataplane.vhost.blk.spec import (
    VIRTIO_BLK_CONFIG,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VirtioBlkFeature as BF,
)
from dataplane.vhost_user import Config, VhostUserProtocolFeature as PF, VhostUserRequest as R, VirtioFeature as VF

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def sock(tmp_path):
    return str(tmp_path / "blk.sock")


@pytest.fixture
def guest():
    mem = GuestMemoryLayout.simple(16 << 20)
    yield mem
    mem.close()


def _connect(sock, guest, *, packed=False, queues=1):
    fe = VhostUserFrontend.connect(sock, memory=guest, timeout=30)
    want = fe.get_features() & ~(1 << VF.VHOST_F_LOG_ALL)
    if not packed:
        want &= ~(1 << VF.VIRTIO_F_RING_PACKED)
    fe.start(queue_size=64, features=want, nvrings=queues)
    return fe, [BlkDriver(guest, vring=fe.vrings[q], features=fe.features) for q in range(queues)]


def _wait_used(drv, n, timeout=60.0):
    done, deadline = [], time.monotonic() + timeout
    while len(done) < n:
        done += drv.harvest()
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(done)} of {n} requests completed")
        time.sleep(0.001)
    return done


def test_features_queue_count_and_config_space(sock, guest):
    with BlkProcess(sock, size="4M", queues=2, serial="sn-1") as p:
        fe = VhostUserFrontend.connect(sock, memory=guest, timeout=30)
        try:
            offered = fe.get_features()
            for b in (BF.VIRTIO_BLK_F_SEG_MAX, BF.VIRTIO_BLK_F_BLK_SIZE, BF.VIRTIO_BLK_F_FLUSH, BF.VIRTIO_BLK_F_MQ,
                      BF.VIRTIO_BLK_F_DISCARD, BF.VIRTIO_BLK_F_WRITE_ZEROES, VF.VIRTIO_F_VERSION_1,
                      VF.VIRTIO_F_RING_PACKED, VF.VHOST_USER_F_PROTOCOL_FEATURES, VF.VHOST_F_LOG_ALL):
                assert offered >> b & 1, b
            for b in (BF.VIRTIO_BLK_F_RO, BF.VIRTIO_BLK_F_SIZE_MAX, BF.VIRTIO_BLK_F_GEOMETRY, BF.VIRTIO_BLK_F_TOPOLOGY,
                      BF.VIRTIO_BLK_F_CONFIG_WCE):
                assert not offered >> b & 1, b
            fe.negotiate()
            assert fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_CONFIG & 1
            assert fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_MQ & 1
            assert fe.get_queue_num() == 2
            cfg = np.frombuffer(fe.get_config(0, VIRTIO_BLK_CONFIG.itemsize), VIRTIO_BLK_CONFIG)[0]
            assert cfg["capacity"] == (4 << 20) // 512
            assert (cfg["num_queues"], cfg["blk_size"], cfg["seg_max"]) == (2, 512, DEFAULT_SEG_MAX)
            assert cfg["max_discard_sectors"] == DEFAULT_LIMITS.max_discard_sectors
            assert cfg["max_write_zeroes_seg"] == DEFAULT_LIMITS.max_write_zeroes_seg
            # nothing is writable without CONFIG_WCE: refused, the connection stays
            assert fe.request(R.VHOST_USER_SET_CONFIG, Config(32, 1, 0, b"\x01"), ack=True) == 1
            assert fe.get_queue_num() == 2
        finally:
            fe.close()
        assert "vhost-blk: ready" in p.output


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_requests_served_by_the_lcore(sock, guest, packed):
    with BlkProcess(sock, size="4M", serial="disk-serial-7") as p:
        fe, (drv,) = _connect(sock, guest, packed=packed)
        try:
            data = np.random.default_rng(1).integers(0, 256, 65536, dtype=np.uint8).tobytes()
            w = [drv.submit(VIRTIO_BLK_T_OUT, 128 * i, data=data[i * 16384 : (i + 1) * 16384], nsegs=4)
                 for i in range(4)]
            drv.kick()
            _wait_used(drv, 4)
            assert [drv.status(s) for s in w] == [VIRTIO_BLK_S_OK] * 4
            r = drv.submit(VIRTIO_BLK_T_IN, 0, read_len=16384)
            i = drv.submit(VIRTIO_BLK_T_GET_ID, 0, read_len=20)
            f = drv.submit(VIRTIO_BLK_T_FLUSH, 0)
            e = drv.submit(VIRTIO_BLK_T_IN, (4 << 20) // 512, read_len=512)
            drv.kick()
            _wait_used(drv, 4)
            assert drv.data(r, 16384) == data[:16384]
            assert drv.read_id(i) == b"disk-serial-7".ljust(20, b"\0")
            assert (drv.status(r), drv.status(i), drv.status(f), drv.status(e)) == (0, 0, 0, VIRTIO_BLK_S_IOERR)
            # GET_VRING_BASE: what the lcore consumed (packed: descriptors, 4 x 6 + 3 + 3 + 2 + 3)
            assert fe.get_vring_base(0) & 0x7FFF == (35 if packed else 8)
        finally:
            fe.close()
        stats = p.stop()["queues"][0]
        assert (stats["writes"], stats["reads"], stats["get_ids"], stats["flushes"], stats["ioerr"]) == (4, 1, 1, 1, 1)
        assert stats["written_bytes"] == 65536


def test_file_disk_readonly(sock, guest, tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(b"\x42" * (1 << 20))
    with BlkProcess(sock, file=str(img), readonly=True) as p:
        fe, (drv,) = _connect(sock, guest)
        try:
            assert fe.features >> BF.VIRTIO_BLK_F_RO & 1
            w = drv.submit(VIRTIO_BLK_T_OUT, 0, data=bytes(4096))
            r = drv.submit(VIRTIO_BLK_T_IN, 8, read_len=4096)
            drv.kick()
            _wait_used(drv, 2)
            assert (drv.status(w), drv.status(r)) == (VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK)
            assert drv.data(r, 4096) == b"\x42" * 4096
        finally:
            fe.close()
        p.stop()
    assert img.read_bytes() == b"\x42" * (1 << 20)


def test_file_disk_keeps_what_was_written(sock, guest, tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    with BlkProcess(sock, file=str(img)) as p:
        fe, (drv,) = _connect(sock, guest)
        try:
            drv.submit(VIRTIO_BLK_T_OUT, 2040, data=b"\x99" * 4096)  # the last 8 sectors
            drv.submit(VIRTIO_BLK_T_FLUSH, 0)
            drv.kick()
            assert [drv.status(s) for s, _ in _wait_used(drv, 2)] == [VIRTIO_BLK_S_OK] * 2
        finally:
            fe.close()
        p.stop()
    raw = img.read_bytes()
    assert raw[-4096:] == b"\x99" * 4096 and not any(raw[:-4096])


def test_hostile_chain_stops_the_queue_not_the_backend(sock, guest):
    with BlkProcess(sock, size="1M") as p:
        fe, (drv,) = _connect(sock, guest)
        try:
            slot = drv.alloc_slot()
            drv.add([(0x7000_0000_0000, 16, False), (drv.status_gpa(slot), 1, True)], slot)
            drv.kick()
            deadline = time.monotonic() + 60
            while "virtio-blk queue stopped" not in p.output:
                assert time.monotonic() < deadline, p.output[-3000:]
                time.sleep(0.05)
            assert drv.harvest() == []
        finally:
            fe.close()
        # the back-end serves the next connection
        fe, (drv,) = _connect(sock, guest)
        try:
            s = drv.submit(VIRTIO_BLK_T_IN, 0, read_len=512)
            drv.kick()
            _wait_used(drv, 1)
            assert drv.status(s) == VIRTIO_BLK_S_OK
        finally:
            fe.close()
        stats = p.stop()["queues"][0]
        assert stats["bad_chains"] == 1 and stats["reads"] == 1


def test_client_mode_connects_to_the_front_end(sock, guest):
    with VhostUserFrontend.listen(sock) as listener, BlkProcess(sock, size="1M", client=True) as p:
        fe = listener.accept(memory=guest, timeout=60)
        try:
            fe.timeout = 30
            fe.start(queue_size=64, features=fe.get_features() & ~(1 << VF.VHOST_F_LOG_ALL), nvrings=1)
            drv = BlkDriver(guest, vring=fe.vrings[0], features=fe.features)
            s = drv.submit(VIRTIO_BLK_T_GET_ID, 0, read_len=20)
            drv.kick()
            _wait_used(drv, 1)
            assert drv.status(s) == VIRTIO_BLK_S_OK
        finally:
            fe.close()
        assert p.stop()["queues"][0]["get_ids"] == 1


def _capacity(fe) -> int:
    return int(np.frombuffer(fe.get_config(0, VIRTIO_BLK_CONFIG.itemsize), VIRTIO_BLK_CONFIG)[0]["capacity"])


def _io(drv, *requests):
    """Submit ``(type, sector, data | read_len)`` requests, wait for all; their slots and statuses."""
    slots = [drv.submit(t, sector, data=x) if isinstance(x, bytes) else drv.submit(t, sector, read_len=x)
             for t, sector, x in requests]
    drv.kick()
    _wait_used(drv, len(slots))
    return slots, [drv.status(s) for s in slots]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_resize_grows_the_disk_under_the_lcore_and_tells_the_front_end(sock, guest, packed):
    """``resize`` in the shell: the lcore serves the new end, the front-end gets CONFIG_CHANGE_MSG
    and, answering like QEMU (GET_CONFIG on the front channel before the ack), reads the new capacity."""
    with BlkProcess(sock, size="1M", interactive=True) as p:
        fe, (drv,) = _connect(sock, guest, packed=packed)
        try:
            assert fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ & 1 and fe.reply_ack
            assert fe.open_backend_channel() == 0
            assert _capacity(fe) == 2048
            _, st = _io(drv, (VIRTIO_BLK_T_OUT, 2047, b"\x11" * 512), (VIRTIO_BLK_T_OUT, 2048, b"\x22" * 512))
            assert st == [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR]  # beyond the end: refused, nothing touched
            start = len(p.output)
            p.command("resize 3M")
            spec, _, msg = fe.backend_recv(60)
            assert spec.name == "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG" and msg.need_reply
            assert _capacity(fe) == 6144  # read while the back-end waits for our ack
            fe.backend_ack(msg, 0)
            out = p.wait_output("config change acknowledged", 60, start)[start:]
            assert "vhost-blk: resized sectors=6144" in out and "vid=0 config change acknowledged" in out
            slots, st = _io(drv, (VIRTIO_BLK_T_OUT, 6143, b"\x33" * 512), (VIRTIO_BLK_T_IN, 2047, 1024),
                            (VIRTIO_BLK_T_IN, 6143, 512), (VIRTIO_BLK_T_IN, 6144, 512))
            assert st == [VIRTIO_BLK_S_OK] * 3 + [VIRTIO_BLK_S_IOERR]
            assert drv.data(slots[1], 1024) == b"\x11" * 512 + bytes(512)  # old data kept, new space zero
            assert drv.data(slots[2], 512) == b"\x33" * 512
            # refused: smaller, or nonsense; nothing is sent, the disk keeps its size and is served
            assert "cannot shrink" in p.resize("2M") and "resize failed" in p.resize("lots")
            assert fe.backend.peek() is None and _capacity(fe) == 6144
            assert _io(drv, (VIRTIO_BLK_T_IN, 6143, 512))[1] == [VIRTIO_BLK_S_OK]
        finally:
            fe.close()
        stats = p.stop()["queues"][0]
    assert stats["ioerr"] == 2 and stats["bad_chains"] == 0


def test_requests_at_the_new_end_during_the_resize_fail_then_succeed_never_worse(sock, guest):
    """A driver reads the new last sector in a loop while the disk grows: IOERR while the old size is
    served, OK once the new one is, never anything else, never back (the lcore never sees a half change)."""
    import threading

    with BlkProcess(sock, size="1M", interactive=True) as p:
        fe, (drv,) = _connect(sock, guest)
        statuses, stop = [], threading.Event()

        def reader():
            while not stop.is_set():
                statuses.append(_io(drv, (VIRTIO_BLK_T_IN, 4095, 512))[1][0])

        t = threading.Thread(target=reader)
        try:
            fe.open_backend_channel()
            t.start()
            deadline = time.monotonic() + 60
            while not statuses and time.monotonic() < deadline:  # served at the old size first
                time.sleep(0.01)
            start = len(p.output)
            p.command("resize 2M")
            _, _, msg = fe.backend_recv(60)
            fe.backend_ack(msg, 0)
            p.wait_output("config change acknowledged", 60, start)
            n = len(statuses)
            deadline = time.monotonic() + 60
            while len(statuses) < n + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            if t.is_alive():
                t.join(60)
            fe.close()
        stats = p.stop()["queues"][0]
    first_ok = statuses.index(VIRTIO_BLK_S_OK)
    assert first_ok > 0 and set(statuses[:first_ok]) == {VIRTIO_BLK_S_IOERR}, statuses
    assert set(statuses[first_ok:]) == {VIRTIO_BLK_S_OK}, statuses
    assert stats["ioerr"] == first_ok and stats["bad_chains"] == 0


def test_a_garbage_answer_to_the_config_change_is_reported_and_the_disk_still_grows(sock, guest):
    with BlkProcess(sock, size="1M", interactive=True) as p:
        fe, (drv,) = _connect(sock, guest)
        try:
            fe.open_backend_channel()
            start = len(p.output)
            p.command("resize 2M")
            _, _, msg = fe.backend_recv(60)
            fe.backend.send_bytes(b"\xff" * 12)  # not vhost-user: bad version bits
            out = p.wait_output("vid=0 config change failed", 60, start)[start:]
            assert "back-end channel closed" in out and "garbage from the front-end" in out
            assert fe.get_queue_num() == 1 and _capacity(fe) == 4096  # the front channel is untouched
            assert _io(drv, (VIRTIO_BLK_T_OUT, 4095, b"\x66" * 512))[1] == [VIRTIO_BLK_S_OK]
            out = p.resize("3M")  # grows; the closed channel cannot tell the front-end
            assert "resized sectors=6144" in out and "vid=0 config change failed" in out and "channel closed" in out
        finally:
            fe.close()
        p.stop()


def test_sighup_adopts_a_file_grown_from_outside(sock, guest, tmp_path):
    import signal

    img = tmp_path / "disk.img"
    img.write_bytes(b"\x44" * (1 << 20))
    with BlkProcess(sock, file=str(img)) as p:
        fe, (drv,) = _connect(sock, guest)
        try:
            fe.open_backend_channel()
            with open(img, "r+b") as f:
                f.truncate(2 << 20)
            start = len(p.output)
            p.proc.send_signal(signal.SIGHUP)
            _, _, msg = fe.backend_recv(60)
            fe.backend_ack(msg, 0)
            p.wait_output("config change acknowledged", 60, start)
            assert _capacity(fe) == 4096
            slots, st = _io(drv, (VIRTIO_BLK_T_OUT, 4095, b"\x55" * 512), (VIRTIO_BLK_T_IN, 2047, 1024))
            assert st == [VIRTIO_BLK_S_OK] * 2 and drv.data(slots[1], 1024) == b"\x44" * 512 + bytes(512)
        finally:
            fe.close()
        p.stop()
    raw = img.read_bytes()
    assert len(raw) == 2 << 20 and raw[-512:] == b"\x55" * 512


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_dirty_log_marked_by_the_lcore(sock, guest, packed):
    """Migration of a blk guest: with logging on, the lcore marks exactly the pages it wrote (in the log
    it mapped itself); off again, nothing; the log is unmapped everywhere once the device stops."""
    log = FrontendLog(guest)
    with BlkProcess(sock, size="4M") as p:
        fe, (drv,) = _connect(sock, guest, packed=packed)
        try:
            data = np.random.default_rng(2).integers(0, 256, 65536, dtype=np.uint8).tobytes()
            drv.submit(VIRTIO_BLK_T_OUT, 0, data=data, nsegs=4)
            drv.kick()
            _wait_used(drv, 1)
            fe.set_logging(True, log)  # QEMU's order: SET_LOG_BASE, LOG_ALL, the ring's address with F_LOG
            drv.device_writes.clear()
            r = [drv.submit(VIRTIO_BLK_T_IN, 16 * i, read_len=8192 + 4096 * i, nsegs=2) for i in range(4)]
            g = drv.submit(VIRTIO_BLK_T_GET_ID, 0, read_len=512)
            drv.kick()
            _wait_used(drv, 5)
            assert [drv.status(s) for s in r + [g]] == [VIRTIO_BLK_S_OK] * 5
            want = drv.device_writes | drv.notify_area_pages()
            assert wait_until(lambda: log.pages() >= want, 60)
            assert log.pages() == want and log.slack_untouched()
            fe.set_logging(False)
            log.clear()
            s = drv.submit(VIRTIO_BLK_T_IN, 0, read_len=4096)
            drv.kick()
            _wait_used(drv, 1)
            assert drv.data(s, 4096) == data[:4096] and not log.pages()
            assert tree_memfd_maps(p.proc.pid, "vhost-log")
            fe.get_vring_base(0)
            assert wait_until(lambda: not tree_memfd_maps(p.proc.pid, "vhost-log"), 30)
        finally:
            fe.close()
            log.close()
