"""vdpasim_blk's hardware (dataplane.vdpa.sim): a RAM disk behind the guest's virtqueues, with vdpasim's request rules.

One hardware process (a small disk) serves the module; each test attaches its own guest.
"""

from __future__ import annotations

import os
import struct

import pytest

from dataplane.testing.blk_driver import STATUS_UNSET
from dataplane.testing.vdpa_sim_guest import SimGuest
from dataplane.vdpa.sim import SimHardware
from dataplane.vdpa.sim.spec import VDPASIM_BLK_FEATURES

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
CAPACITY = 2048  # sectors: 1 MiB
FEATURES = VDPASIM_BLK_FEATURES


@pytest.fixture(scope="module")
def hw():
    h = SimHardware("blk", f"tsimblk{os.getpid()}", capacity=CAPACITY)
    h.start()
    yield h
    h.close()


@pytest.fixture
def guest(hw, request):
    kw = getattr(request, "param", {}) or {}
    qids = kw.pop("qids", [0])
    kw.setdefault("max_data", 1 << 16)
    g = SimGuest(qids, **kw)
    hw.attach(*g.attach_args(FEATURES))
    hw.sync()  # the run an attach starts is over: each kick of the test makes exactly one run
    try:
        yield g
    finally:
        if hw.alive():
            hw.detach()
        g.close()


def run(q, *reqs):
    """Submit requests ``(type, sector, data | read_len[, nsegs])``, kick, wait; returns [(slot, used len)] in order."""
    slots = []
    for r in reqs:
        rtype, sector, x = r[:3]
        kw = dict(nsegs=r[3]) if len(r) > 3 else {}
        if isinstance(x, (bytes, bytearray)):
            slots.append(q.drv.submit(rtype, sector, data=x, **kw))
        else:
            slots.append(q.drv.submit(rtype, sector, read_len=x, **kw))
    q.kick()
    used = dict(q.wait_used(len(slots)))
    return [(s, used[s]) for s in slots]


def dwz(sector: int, num: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, num, flags)


def test_out_in_round_trip(guest):
    q = guest.q[0]
    data = os.urandom(8192)
    [(w, wlen)] = run(q, (T_OUT, 100, data, 3))
    assert (q.drv.status(w), wlen) == (S_OK, 1)
    [(r, rlen)] = run(q, (T_IN, 100, 8192, 4))
    assert (q.drv.status(r), rlen) == (S_OK, 8193)  # data + status byte
    assert q.drv.data(r, 8192) == data
    [(z, _)] = run(q, (T_IN, 0, 512))  # untouched sectors read zero
    assert q.drv.data(z, 512) == bytes(512)
    assert q.wait_call(10) >= 1


def test_data_and_status_in_one_descriptor(guest):
    q = guest.q[0]
    run(q, (T_OUT, 7, b"\x5a" * 512))
    d = q.drv
    slot = d.alloc_slot()
    d.write_header(slot, T_IN, 7)
    d.add([(d.hdr_gpa(slot), 16, False), (d.data_gpa(slot), 513, True)], slot)
    q.kick()
    assert q.wait_used(1) == [(slot, 513)]
    assert d.data(slot, 513) == b"\x5a" * 512 + b"\x00"


def test_get_id(guest):
    q = guest.q[0]
    [(s, n)] = run(q, (T_GET_ID, 0, 20))
    assert (q.drv.status(s), n) == (S_OK, 21)
    assert q.drv.read_id(s) == b"vdpa_blk_sim" + bytes(8)


def test_flush(guest):
    q = guest.q[0]
    [(s, n)] = run(q, (T_FLUSH, 0, 0))
    assert (q.drv.status(s), n) == (S_OK, 1)


@pytest.mark.parametrize("rtype", [T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 99])
def test_sector_must_be_0_except_for_in_and_out(guest, rtype):
    q = guest.q[0]
    x = 20 if rtype == T_GET_ID else (dwz(0, 1) if rtype in (T_DISCARD, T_WRITE_ZEROES) else 0)
    [(s, n)] = run(q, (rtype, 5, x))
    assert (q.drv.status(s), n) == (S_IOERR, 1)


def test_unknown_type_is_ioerr(guest):
    q = guest.q[0]
    [(s, n)] = run(q, (99, 0, 0))
    assert (q.drv.status(s), n) == (S_IOERR, 1)
    [(s, n)] = run(q, (2, 0, 512))  # VIRTIO_BLK_T_SCSI_CMD: unknown here too; data skipped, status last
    assert (q.drv.status(s), n) == (S_IOERR, 1)


def test_write_zeroes_and_discard(guest):
    q = guest.q[0]
    run(q, (T_OUT, 10, b"\xff" * 2048))
    [(s, n)] = run(q, (T_WRITE_ZEROES, 0, dwz(11, 2)))
    assert (q.drv.status(s), n) == (S_OK, 1)
    [(r, _)] = run(q, (T_IN, 10, 2048))
    assert q.drv.data(r, 2048) == b"\xff" * 512 + bytes(1024) + b"\xff" * 512
    [(s, _)] = run(q, (T_WRITE_ZEROES, 0, dwz(10, 1, 1)))  # UNMAP is allowed
    assert q.drv.status(s) == S_OK
    [(s, _)] = run(q, (T_DISCARD, 0, dwz(13, 1)))  # DISCARD answers OK and changes nothing
    assert q.drv.status(s) == S_OK
    [(r, _)] = run(q, (T_IN, 10, 2048))
    assert q.drv.data(r, 2048) == bytes(1536) + b"\xff" * 512


@pytest.mark.parametrize("rtype,payload,status", [
    (T_DISCARD, dwz(0, 1, 1), S_UNSUPP),  # DISCARD: no flag at all
    (T_WRITE_ZEROES, dwz(0, 1, 2), S_UNSUPP),  # WRITE_ZEROES: only UNMAP
    (T_WRITE_ZEROES, dwz(0, 1) * 2, S_IOERR),  # exactly one 16-byte segment
    (T_DISCARD, dwz(0, 1)[:12], S_IOERR),
    (T_WRITE_ZEROES, dwz(CAPACITY - 1, 2), S_IOERR),  # past the end
    (T_WRITE_ZEROES, dwz(CAPACITY, 0), S_OK),  # empty at the end: in range
    (T_DISCARD, dwz(CAPACITY + 1, 0), S_IOERR),  # start past the capacity: refused (Linux wraps)
    (T_WRITE_ZEROES, dwz(2**64 - 1, 1), S_IOERR),
])
def test_discard_write_zeroes_rules(guest, rtype, payload, status):
    q = guest.q[0]
    [(s, n)] = run(q, (rtype, 0, payload))
    assert (q.drv.status(s), n) == (status, 1)


@pytest.mark.parametrize("rtype,sector,nbytes", [
    (T_IN, CAPACITY - 1, 1024),
    (T_OUT, CAPACITY - 1, 1024),
    (T_IN, CAPACITY, 512),
    (T_IN, CAPACITY + 5, 0),  # start past the capacity: refused even for no data
    (T_IN, CAPACITY - 1, 513),  # a partial sector past the end (Linux checks whole sectors only)
    (T_OUT, 2**63, 512),
])
def test_out_of_range_is_ioerr(guest, rtype, sector, nbytes):
    q = guest.q[0]
    x = nbytes if rtype == T_IN else b"\x11" * nbytes
    [(s, n)] = run(q, (rtype, sector, x))
    assert (q.drv.status(s), n) == (S_IOERR, 1)
    if rtype == T_IN and nbytes:
        assert q.drv.data(s, nbytes) == b"\xa5" * nbytes  # nothing written before the status


def test_last_sector_in_range(guest):
    q = guest.q[0]
    [(w, _)] = run(q, (T_OUT, CAPACITY - 1, b"\x42" * 512))
    [(r, n)] = run(q, (T_IN, CAPACITY - 1, 512))
    assert (q.drv.status(w), q.drv.status(r), n) == (S_OK, S_OK, 513)
    assert q.drv.data(r, 512) == b"\x42" * 512


@pytest.mark.parametrize("shape", ["no_writable", "no_readable", "empty_last", "short_header"])
def test_malformed_chain_completed_with_0_and_run_stops(hw, guest, shape):
    q = guest.q[0]
    d = q.drv
    slot = d.alloc_slot()
    d.write_header(slot, T_IN, 0)
    st = d.status_gpa(slot)
    d.view(st, 1)[0] = STATUS_UNSET
    segs = {
        "no_writable": [(d.hdr_gpa(slot), 16, False), (d.data_gpa(slot), 512, False)],
        "no_readable": [(d.data_gpa(slot), 512, True), (st, 1, True)],
        "empty_last": [(d.hdr_gpa(slot), 16, False), (d.data_gpa(slot), 512, True), (st, 0, True)],
        "short_header": [(d.hdr_gpa(slot), 15, False), (st, 1, True)],
    }[shape]
    d.add(segs, slot)
    good = d.submit(T_FLUSH)
    q.kick()
    assert q.wait_used(1) == [(slot, 0)]
    assert d.status(slot) == STATUS_UNSET
    hw.sync()
    assert q.harvest() == []  # the run stopped: the next request waits for the next kick
    assert hw.queue_counters(0)["malformed"] >= 1
    q.notify()
    assert q.wait_used(1) == [(good, 1)] and d.status(good) == S_OK
    assert hw.queue_errors() == {}


@pytest.mark.parametrize("guest", [dict(packed=True)], indirect=True)
def test_packed_ring(guest):
    q = guest.q[0]
    for i in range(80):  # more than the ring size: wraps
        data = bytes([i]) * 1024
        [(w, _), (r, n)] = run(q, (T_OUT, 2 * i, data), (T_IN, 2 * i, 1024, 2))
        assert (q.drv.status(w), q.drv.status(r), n) == (S_OK, S_OK, 1025)
        assert q.drv.data(r, 1024) == data


@pytest.mark.parametrize("guest", [dict(qids=[0, 1])], indirect=True)
def test_hostile_queue_stopped_other_queue_serves(hw, guest):
    q0, q1 = guest.q[0], guest.q[1]
    d = q0.drv
    slot = d.alloc_slot()
    d.add([(d.hdr_gpa(slot), 16, False), (d.data_gpa(slot), 512, True), (d.status_gpa(slot), 1, True)], slot)
    head = int(d.vr.avail[2])
    d.vr.desc_u16[8 * (head + 2) + 6] |= 1  # the status descriptor chains back to the data one: a loop
    d.vr.desc_u16[8 * (head + 2) + 7] = head + 1
    q0.kick()
    hw.sync()
    assert hw.queue_errors() == {0: "chain_loop"}
    assert hw.alive()
    [(s, n)] = run(q1, (T_GET_ID, 0, 20))
    assert (q1.drv.status(s), n) == (S_OK, 21)
    q0.drv.submit(T_FLUSH)  # the stopped queue stays stopped
    q0.kick()
    hw.sync()
    assert q0.harvest() == []


@pytest.mark.parametrize("guest", [dict(qids=[0, 1], features=1 << 28)], indirect=True)
def test_hostile_descriptor_outside_memory_and_indirect(hw, guest):
    q0, q1 = guest.q[0], guest.q[1]
    q0.drv.add([(q0.drv.hdr_gpa(0), 16, False), ((1 << 40) - 8, 16, True)])
    q0.kick()
    d = q1.drv
    slot = d.alloc_slot()
    d.write_header(slot, T_FLUSH, 0)
    d.add([(d.hdr_gpa(slot), 16, False), (d.status_gpa(slot), 1, True)], slot, indirect=True)
    head = int(d.vr.avail[2])
    d.vr.desc_u32[4 * head + 2] = 24  # indirect table length not a multiple of 16
    q1.kick()
    hw.sync()
    assert hw.queue_errors() == {0: "bad_address", 1: "bad_indirect"}
    assert hw.queue_counters(0)["faults"] == 1
    assert hw.alive()


@pytest.mark.parametrize("guest", [dict(features=1 << 28)], indirect=True)  # the driver uses INDIRECT_DESC
def test_indirect_chain_served(guest):
    q = guest.q[0]
    data = os.urandom(4096)
    w = q.drv.submit(T_OUT, 64, data=data, nsegs=4, indirect=True)
    q.kick()
    q.wait_used(1)
    r = q.drv.submit(T_IN, 64, read_len=4096, nsegs=3, indirect=True)
    q.kick()
    assert q.wait_used(1) == [(r, 4097)]
    assert q.drv.status(w) == S_OK and q.drv.data(r, 4096) == data


def test_detach_returns_indices_and_reattach_resumes(hw, guest):
    q = guest.q[0]
    data = os.urandom(1024)
    run(q, (T_OUT, 3, data), (T_FLUSH, 0, 0), (T_GET_ID, 0, 20))
    idx = hw.detach()
    assert idx == {0: (3, 0, 3, 0)}
    r = q.drv.submit(T_IN, 3, read_len=1024)  # made available while detached
    q.kick()
    hw.attach(*guest.attach_args(FEATURES, indices=idx))
    assert q.wait_used(1) == [(r, 1025)]
    assert q.drv.data(r, 1024) == data  # the disk outlives the attachment


def test_blk_has_no_stats_and_its_config(hw):
    with pytest.raises(ValueError):
        hw.stats(0)
    cfg = hw.config_space()
    assert len(cfg) == 96
    assert struct.unpack_from("<QII", cfg, 0) == (CAPACITY, 4096, 32)
    assert struct.unpack_from("<I", cfg, 20)[0] == 512
    assert struct.unpack_from("<HIBBH", cfg, 26) == (1, 1, 0, 0, 1)
    assert struct.unpack_from("<IIIII", cfg, 36) == (0xFFFFFFFF, 1, 512, 0xFFFFFFFF, 1)
    assert cfg[56:] == bytes(40) and cfg[16:20] == bytes(4) and cfg[24:26] == bytes(2)


def test_event_idx_if_negotiated(hw):
    """vdpasim offers no EVENT_IDX; a driver that negotiated it anyway still gets its kicks and interrupts."""
    guest = SimGuest([0], features=1 << 29)
    try:
        hw.attach(*guest.attach_args(FEATURES | 1 << 29))
        q = guest.q[0]
        for i in range(150):  # past the ring size: avail_event and used_event wrap around the ring
            [(s, n)] = run(q, (T_FLUSH, 0, 0))
            assert (q.drv.status(s), n) == (S_OK, 1)
        assert q.calls() >= 1
    finally:
        hw.detach()
        guest.close()


@pytest.mark.parametrize("guest", [dict(num=64)], indirect=True)
@pytest.mark.parametrize("rtype", [T_OUT, T_IN])
def test_request_stream_from_a_numba_driver(hw, guest, rtype):
    """A numba driver loop keeping 32 requests in flight (the measurement harness): all answered OK."""
    from dataplane.testing.blk_driver import RequestStream

    before = hw.queue_counters(0)
    rs = RequestStream(guest.q[0].drv, depth=32, rtype=rtype, nbytes=4096, disk_bytes=CAPACITY * 512)
    got = rs.run(5000)
    got += rs.drain()
    rs.close()
    assert got >= 5000 and rs.bad == 0
    after = hw.queue_counters(0)
    assert after["ok"] - before["ok"] == got and after["ioerr"] == before["ioerr"]


def test_hostile_head_index(hw, guest):
    q = guest.q[0]
    q.drv.submit(T_FLUSH)
    q.drv.vr.avail[2] = 999  # the avail ring names a descriptor past the ring
    q.kick()
    hw.sync()
    assert hw.queue_errors() == {0: "desc_index"}
    assert hw.alive()


def test_in_out_limit_is_131072_sectors():
    """IN / OUT of more than size_max * seg_max = 131072 sectors is IOERR even inside the disk."""
    with SimHardware("blk", f"tsimbig{os.getpid()}") as big:  # the default 128 MiB disk
        big.start()
        g = SimGuest([0], memory_size=80 << 20, num=8, max_data=4096)
        try:
            big.attach(*g.attach_args(FEATURES))
            q = g.q[0]
            d = q.drv
            area = g.memory.alloc((64 << 20) + 1024, 4096)
            for nsect, status in ((131073, S_IOERR), (131072, S_OK)):
                slot = d.alloc_slot()
                d.write_header(slot, T_IN, 1)
                d.add([(d.hdr_gpa(slot), 16, False), (area, nsect * 512 + 1, True)], slot)
                q.kick()
                [(s, n)] = q.wait_used(1)
                st = g.memory.view(area + nsect * 512, 1)[0]
                assert (s, st, n) == (slot, status, 1 if status else nsect * 512 + 1)
        finally:
            big.detach()
            g.close()


@pytest.mark.parametrize("guest", [dict(num=2048, max_data=4096)], indirect=True)
def test_hostile_chain_too_long(hw, guest):
    """A chain of more segments than the hardware takes (1024) stops the queue; nothing of it is touched."""
    from dataplane.vdpa.sim.kernels import MAX_SEGS

    q = guest.q[0]
    d = q.drv
    slot = d.alloc_slot()
    d.write_header(slot, T_OUT, 0)
    segs = [(d.hdr_gpa(slot), 16, False)] + [(d.data_gpa(slot) + i, 1, False) for i in range(MAX_SEGS + 50)]
    d.add(segs + [(d.status_gpa(slot), 1, True)], slot)
    d.view(d.status_gpa(slot), 1)[0] = STATUS_UNSET
    q.kick()
    hw.sync()
    assert hw.queue_errors() == {0: "too_many_segments"}
    assert d.status(slot) == STATUS_UNSET and q.harvest() == []


@pytest.mark.parametrize("guest", [dict(packed=True)], indirect=True)
def test_hostile_packed_ring(hw, guest):
    q = guest.q[0]
    run(q, (T_FLUSH, 0, 0))
    q.drv.add([(q.drv.hdr_gpa(0), 16, False), (1 << 45, 1, True)])
    q.kick()
    hw.sync()
    assert hw.queue_errors() == {0: "bad_address"}
    assert hw.alive()


@pytest.mark.parametrize("guest", [dict(packed=True, num=16)], indirect=True)
def test_packed_detach_wraps_and_reattach(hw, guest):
    q = guest.q[0]
    for i in range(20):  # 20 x (3 + 2) = 100 descriptors in a 16-entry ring: 6 laps and 4
        run(q, (T_OUT, i, bytes([i]) * 512), (T_FLUSH, 0, 0))
    idx = hw.detach()
    avail, awrap, used, uwrap = idx[0]
    assert (avail, used) == (4, 4) and awrap == uwrap == (1 + 6) % 2
    r = q.drv.submit(T_IN, 19, read_len=512)
    q.kick()
    hw.attach(*guest.attach_args(FEATURES, indices=idx))
    assert q.wait_used(1) == [(r, 513)] and q.drv.data(r, 512) == bytes([19]) * 512
