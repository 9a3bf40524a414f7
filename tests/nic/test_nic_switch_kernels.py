"""The card's switch kernels in this process: the direct path (``switch_window`` / ``tx_switch``: TX
chain straight into RX chain) does what the staged path (``tx_serve``: staging slot, then
``rx_deliver``) does, frame for frame and counter for counter, on split and packed rings.

Three VFs with rings in test memory (dataplane.testing.blk_driver's driver side); the card side is
``open_queue`` over the same memory, as the card process opens a queue."""

import numpy as np
import pytest

from dataplane.nic import kernels as K
from dataplane.rings.virtqueue import ERR_ADDR
from dataplane.testing.nic_rings import VfRings as Vf

MACS = [bytes([2, 0, 0, 0, 0, i + 1]) for i in range(3)]
BCAST = b"\xff" * 6
HDR = bytes(range(1, 13))  # a TX header the card must not pass on
FRESH = bytes(10) + b"\x01\x00"  # what the card writes: num_buffers 1


def frame(dst: bytes, src: bytes, n: int, tag: int) -> bytes:
    return HDR + dst + src + b"\x08\x00" + bytes((tag + i) & 0xFF for i in range(n - 14))


def scenario(mode: str, packed: bool):
    """VF1 broadcasts (the switch learns it), then VF0 sends, in one burst: a unicast to VF1 cut in
    three TX segments into an RX chain whose header spans two segments; an unknown unicast (flooded);
    a runt; a unicast to VF1 whose RX buffer is too small; a broadcast while VF2 has no buffer left;
    a frame to its own MAC.  Returns every VF's counter rows and received bytes."""
    vfs = [Vf(i, packed) for i in range(3)]
    try:
        fdb = np.zeros((K.FDB_SIZE, 2), np.int64)
        stage = np.zeros((K.BURST, K.SLOT), np.uint8)
        slen = np.zeros(K.BURST, np.int64)
        smask = np.zeros(K.BURST, np.int64)
        sw = K.switch_scratch()
        active = 0b111
        rxqs = tuple(v.ctx[0] for v in vfs)
        txqs = tuple(v.ctx[1] for v in vfs)

        def serve(v: int) -> int:
            if mode == "serve":
                return K.tx_serve(txqs[v], v, fdb, active, rxqs, stage, slen, smask, 4096, 2)
            if mode == "switch":
                return K.tx_switch(txqs[v], v, fdb, active, rxqs, sw, 4096, 2)
            sw[K.SW_SERVE, :3] = 0
            sw[K.SW_SERVE, v] = 1
            n = K.switch_window(txqs, fdb, active, rxqs, sw, 4096, 2)
            assert sw[K.SW_MOVED, v] == n
            return n

        vfs[0].post_rx(2048)
        vfs[2].post_rx(2048)
        vfs[2].post_rx(2048)
        vfs[1].send(frame(BCAST, MACS[1], 60, 1))
        serve(1)
        vfs[0].send(frame(MACS[2], MACS[0], 60, 9))  # VF0 is learnt too (VF2 is not: flooded to VF1 and 2)
        vfs[1].post_rx(2048)
        serve(0)

        vfs[1].post_rx(4, 30, 2048)
        vfs[1].post_rx(2048)
        vfs[1].post_rx(40)
        vfs[1].post_rx(2048)
        vfs[0].send(frame(MACS[1], MACS[0], 200, 2), cuts=(12, 32))
        vfs[0].send(frame(b"\x02\x00\x00\x00\x00\x99", MACS[0], 64, 3))
        vfs[0].send(HDR + MACS[1] + MACS[0])  # a runt
        vfs[0].send(frame(MACS[1], MACS[0], 100, 4))
        vfs[0].send(frame(BCAST, MACS[0], 1514, 5))
        vfs[0].send(frame(MACS[0], MACS[0], 64, 6))
        serve(0)
        return [v.rows.copy() for v in vfs], [v.received() for v in vfs]
    finally:
        for v in vfs:
            v.close()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_direct_path_matches_the_staged_path(packed):
    ref_rows, ref_rx = scenario("serve", packed)
    for mode in ("switch", "window"):
        rows, rx = scenario(mode, packed)
        assert rx == ref_rx, mode
        for v in range(3):
            assert rows[v].tolist() == ref_rows[v].tolist(), (mode, v)

    rx0, rx1, rx2 = ref_rx
    assert rx0 == [FRESH + frame(BCAST, MACS[1], 60, 1)[12:]]
    assert rx1 == [FRESH + frame(MACS[2], MACS[0], 60, 9)[12:],  # flooded: VF2 unknown
                   FRESH + frame(MACS[1], MACS[0], 200, 2)[12:],  # TX in 3 segments, RX header over 2
                   FRESH + frame(b"\x02\x00\x00\x00\x00\x99", MACS[0], 64, 3)[12:],
                   b"",  # the 40-byte buffer: too small, completed with length 0
                   FRESH + frame(BCAST, MACS[0], 1514, 5)[12:]]
    assert rx2 == [FRESH + frame(BCAST, MACS[1], 60, 1)[12:], FRESH + frame(MACS[2], MACS[0], 60, 9)[12:]]
    (r0, t0), (r1, t1), (r2, t2) = ref_rows
    # VF0's TX: 7 chains, the runt an error, the frame to itself dropped; 3 flooded (unknown x2, broadcast)
    assert t0[K.Q_PACKETS] == 6 and t0[K.Q_ERRORS] == 1 and t0[K.Q_DROPS] == 1 and t0[K.Q_FLOODED] == 3
    assert t0[K.Q_BYTES] == 60 + 200 + 64 + 100 + 1514 + 64  # frame bytes, the virtio-net header not
    assert r1[K.Q_PACKETS] == 4 and r1[K.Q_ERRORS] == 1 and r1[K.Q_NOBUF] == 0
    assert r2[K.Q_PACKETS] == 2 and r2[K.Q_NOBUF] == 2  # the unknown unicast and the broadcast found no buffer
    assert r1[K.Q_BYTES] == 60 + 200 + 64 + 1514
    assert t1[K.Q_FLOODED] == 1 and r0[K.Q_PACKETS] == 1


@pytest.mark.parametrize("mode", ["serve", "window"])
def test_an_rx_buffer_outside_the_dma_map_is_a_fault_not_a_write(mode):
    vfs = [Vf(i, False) for i in range(2)]
    try:
        fdb = np.zeros((K.FDB_SIZE, 2), np.int64)
        sw = K.switch_scratch()
        rxqs = tuple(v.ctx[0] for v in vfs)
        d = vfs[1].q[0]
        d.add([(0x7000_0000_0000, 2048, True)], d.alloc_slot())  # no mapping there
        d.publish()
        vfs[1].post_rx(2048)
        vfs[0].send(frame(BCAST, MACS[0], 60, 1))
        vfs[0].send(frame(BCAST, MACS[0], 60, 2))
        if mode == "serve":
            stage = np.zeros((K.BURST, K.SLOT), np.uint8)
            K.tx_serve(vfs[0].ctx[1], 0, fdb, 0b11, rxqs, stage, np.zeros(K.BURST, np.int64),
                       np.zeros(K.BURST, np.int64), 64, 2)
        else:
            sw[K.SW_SERVE, :2] = [1, 0]
            K.switch_window(tuple(v.ctx[1] for v in vfs), fdb, 0b11, rxqs, sw, 64, 2)
        r1 = vfs[1].rows[0]
        assert r1[K.Q_FAULTS] == 1 and r1[K.Q_ERR] == ERR_ADDR and r1[K.Q_RUNNING] == 0
        assert r1[K.Q_PACKETS] == 0 and r1[K.Q_DROPS] == 1
        assert vfs[1].received() == []  # nothing written, nothing completed
        t0 = vfs[0].rows[1]
        assert t0[K.Q_PACKETS] == 2 and t0[K.Q_FAULTS] == 0  # the sender is not at fault
        assert len(vfs[0].q[1].harvest()) == 2
    finally:
        for v in vfs:
            v.close()


@pytest.mark.parametrize("mode", ["serve", "window"])
def test_a_station_learnt_mid_burst_steers_the_rest_of_the_burst(mode):
    """One burst from VF0: MAC0 -> X (X unknown: flooded to VF1), then X -> X (X now learnt on VF0
    itself: dropped), then MAC0 -> X again (dropped too): the direct path's per-burst lookup cache
    follows what the burst learnt."""
    x = b"\x02\x00\x00\x00\x00\x77"
    vfs = [Vf(i, False) for i in range(2)]
    try:
        fdb = np.zeros((K.FDB_SIZE, 2), np.int64)
        rxqs = tuple(v.ctx[0] for v in vfs)
        vfs[1].post_rx(2048)
        vfs[1].post_rx(2048)
        vfs[0].send(frame(x, MACS[0], 64, 1))
        vfs[0].send(frame(x, x, 64, 2))
        vfs[0].send(frame(x, MACS[0], 64, 3))
        if mode == "serve":
            stage = np.zeros((K.BURST, K.SLOT), np.uint8)
            K.tx_serve(vfs[0].ctx[1], 0, fdb, 0b11, rxqs, stage, np.zeros(K.BURST, np.int64),
                       np.zeros(K.BURST, np.int64), 64, 2)
        else:
            sw = K.switch_scratch()
            sw[K.SW_SERVE, :2] = [1, 0]
            K.switch_window(tuple(v.ctx[1] for v in vfs), fdb, 0b11, rxqs, sw, 64, 2)
        t0 = vfs[0].rows[1]
        assert t0[K.Q_PACKETS] == 3 and t0[K.Q_FLOODED] == 1 and t0[K.Q_DROPS] == 2
        assert vfs[1].received() == [FRESH + frame(x, MACS[0], 64, 1)[12:]]
    finally:
        for v in vfs:
            v.close()
