"""The mlx5 card's hardware dirty bitmap (facts §3.8): DIRTY_BITMAP_PARAMS and DIRTY_BITMAP_DUMP_ENABLE on a
running virtq; the card marks, in the vhost log format, exactly the guest pages it writes."""

from __future__ import annotations

import time

import pytest

from dataplane.hwspec.mlx5_prm import AccessMode, Modify, Status, Syn
from dataplane.nic.kernels import Q_LOGGED
from dataplane.testing.mlx5_cmd import Mlx5Vf
from dataplane.testing.nic_card import wait_for
from dataplane.testing.nic_driver import net_frame
from dataplane.testing.vhost_frontend import FrontendLog

CARD_MODEL = "mlx5"
BCAST = b"\xff" * 6
SRC = b"\x02\x00\x00\x00\x00\x01"
LOG_IOVA = 0x100000000000


def _bitmap_mkey(v, log):
    size = (log.size + 4095) & ~4095
    v.drv.dma_map(LOG_IOVA, size, log.fd, 0)
    return v.drv.ok(v.drv.fw.create_mkey(AccessMode.MTT, pd=v.drv.pd, start_addr=LOG_IOVA, len=size,
                                         mtt_iova=LOG_IOVA, local_write=1)).fields["mkey"]


def _send(a, b, n):
    for _ in range(n):
        b.rx.post_rx()
    b.rx.kick(force=True)
    frames = [net_frame(BCAST, SRC, bytes([i]) * 1200) for i in range(n)]
    for f in frames:
        a.tx.send(f)
    a.tx.kick(force=True)
    a.tx.wait_used(n)
    return b.rx.wait_used(n)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_dirty_bitmap_marks_exactly_the_written_pages(card, on_vf, packed):
    a, b = on_vf(Mlx5Vf, 0, packed=packed), on_vf(Mlx5Vf, 1, packed=packed)
    a.ready()
    b.ready()
    log = FrontendLog(b.mem)
    try:
        key = _bitmap_mkey(b, log)
        # hostile: a bitmap past its mkey, an unknown mkey
        r = b.drv.fw.modify_virtq(b.rxq, Modify.DIRTY_BITMAP_PARAMS, dirty_bitmap_mkey=key,
                                  dirty_bitmap_addr=LOG_IOVA + 0x1000, dirty_bitmap_size=log.size + 0x1000)
        assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.DIRTY_BITMAP)
        r = b.drv.fw.modify_virtq(b.rxq, Modify.DIRTY_BITMAP_PARAMS, dirty_bitmap_mkey=key + 0x100,
                                  dirty_bitmap_addr=LOG_IOVA, dirty_bitmap_size=log.size)
        assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY)
        # params alone: nothing is logged yet
        b.drv.ok(b.drv.fw.modify_virtq(b.rxq, Modify.DIRTY_BITMAP_PARAMS, dirty_bitmap_mkey=key,
                                       dirty_bitmap_addr=LOG_IOVA, dirty_bitmap_size=log.size))
        _send(a, b, 2)
        assert log.pages() == set()
        # dump enabled on the running RX virtq (allowed in RDY)
        b.drv.ok(b.drv.fw.modify_virtq(b.rxq, Modify.DIRTY_BITMAP_DUMP_ENABLE, dirty_bitmap_dump_enable=1))
        q = b.drv.query(b.rxq)
        assert q["dirty_bitmap_dump_enable"] == 1 and q["dirty_bitmap_mkey"] == key
        used = _send(a, b, 3)
        pages = set()
        for s, n in used:
            g = b.rx.ring.data_gpa(s)
            pages |= set(range(g >> 12, (g + n - 1 >> 12) + 1))
        ring = b.rx.ring
        if packed:  # the device writes the descriptors back in the descriptor ring
            pages |= {(ring.desc_gpa + 16 * s) >> 12 for s in range(2, 5)}
        else:
            pages.add((ring.used_gpa + 2) >> 12)
            pages |= {(ring.used_gpa + 4 + 8 * (i % ring.num)) >> 12 for i in range(2, 5)}
        assert log.pages() == pages  # exactly the written pages: no TX ring of A, no unwritten buffer
        assert log.slack_untouched()
        # the RX queue's ``logged`` counter: the log bytes it ORed (one a burst and page byte at least)
        shm = card.counters()
        try:
            wait_for(lambda: int(shm.queues[1][0][Q_LOGGED]) > 0, what="B's RX queue counting its log bytes")
            time.sleep(0.2)
            logged = int(shm.queues[1][0][Q_LOGGED])
            assert len({p >> 3 for p in pages}) <= logged <= 3 * len(pages)
            assert int(shm.queues[0][1][Q_LOGGED]) == 0  # A's TX queue logs nothing: no bitmap on it
            # dump disabled: the card stops marking
            b.drv.ok(b.drv.fw.modify_virtq(b.rxq, Modify.DIRTY_BITMAP_DUMP_ENABLE, dirty_bitmap_dump_enable=0))
            log.clear()
            _send(a, b, 2)
            assert log.pages() == set()
            time.sleep(0.2)
            assert int(shm.queues[1][0][Q_LOGGED]) == logged
        finally:
            shm.close()
    finally:
        log.close()


def test_a_bitmap_unmapped_under_the_card_stops_logging_counted(card, on_vf):
    from dataplane.nic.shm import V_DMA_FAULTS

    a, b = on_vf(Mlx5Vf, 0), on_vf(Mlx5Vf, 1)
    a.ready()
    b.ready()
    log = FrontendLog(b.mem)
    try:
        key = _bitmap_mkey(b, log)
        b.drv.ok(b.drv.fw.modify_virtq(b.rxq, Modify.DIRTY_BITMAP_PARAMS | Modify.DIRTY_BITMAP_DUMP_ENABLE,
                                       dirty_bitmap_mkey=key, dirty_bitmap_addr=LOG_IOVA, dirty_bitmap_size=log.size,
                                       dirty_bitmap_dump_enable=1))
        _send(a, b, 1)
        assert log.pages()
        shm = card.counters()
        before = int(shm.vf[1][V_DMA_FAULTS])
        b.drv.dma_unmap(LOG_IOVA, (log.size + 4095) & ~4095)
        assert int(shm.vf[1][V_DMA_FAULTS]) == before + 1
        log.clear()
        assert len(_send(a, b, 2)) == 2  # the datapath goes on, the card writes nothing into the old bitmap
        assert log.pages() == set()
        shm.close()
    finally:
        log.close()
