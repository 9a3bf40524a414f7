"""The mlx5 card's event objects (facts §3.6, §3.10): a virtq in QP mode completes into a CQ through its FW QP
and the SW QP peer; an armed CQ gets one event (a record in the completion event ring, the CQ's MSI-X eventfd),
then is disarmed until the driver arms it with the next sn; a virtq going ERROR gives a subscribed OBJECT_CHANGE
error event."""

from __future__ import annotations

import struct
import time

from dataplane.hwspec.mlx5_prm import (
    CQE_OP_OWN,
    CQE_WQE_COUNTER,
    DBR_ARM,
    EQ_ENTRIES,
    EQ_NENT,
    EQ_PROD,
    EQ_SLOTS,
    ERRQ_OFF,
    EVQ_OFF,
    UAR_CQ_DB,
    UAR_OFF,
    EventMode,
    EventType,
    ObjType,
    Op,
    QpState,
    QState,
    Status,
    Syn,
)
from dataplane.nic.kernels import ERR_RING_DMA
from dataplane.testing.mlx5_cmd import Mlx5Driver, Mlx5Vf
from dataplane.testing.nic_card import wait_for
from dataplane.testing.nic_driver import NicQueue, net_frame
from dataplane.testing.vhost_frontend import GuestMemoryLayout, eventfd_count

CARD_MODEL = "mlx5"
BCAST = b"\xff" * 6
SRC = b"\x02\x00\x00\x00\x00\x01"
CQ_VEC, ERR_VEC = 2, 3
COOKIE = 0xC0FFEE0000000001


class EvVf(Mlx5Vf):
    """A VF whose RX virtq 0 runs in QP mode: CQ (64 entries, use_first_only), SW QP on it, FW QP (Mlx5Vf's
    ready and close)."""

    def __init__(self, vf_dir, *, qp_mode=True):  # the base's queues, made here around the event objects
        self.mem = GuestMemoryLayout.simple(8 << 20, gpa=1 << 20)
        self.drv = Mlx5Driver(vf_dir, self.mem)
        self.fw = self.drv.fw
        self.drv.set_irqs(4)
        self.rx = NicQueue(self.drv, self.mem, 0, num=64)
        self.tx = NicQueue(self.drv, self.mem, 1, num=64)
        self.cqe_gpa = self.mem.alloc(64 * 64, 4096)
        self.dbr_gpa = self.mem.alloc(64, 64)
        self.cqes = self.mem.view(self.cqe_gpa, 64 * 64)
        struct.pack_into(">H", self.cqes, CQE_WQE_COUNTER, 0xFFFF)  # HW ownership, as the driver starts it
        self.cqes[CQE_OP_OWN] = 1
        if qp_mode:
            ok = self.drv.ok
            self.cqn = ok(self.fw.create_cq(log_cq_size=6, vector=CQ_VEC, cqe_iova=self.cqe_gpa, dbr_iova=self.dbr_gpa,
                                            cookie=COOKIE)).fields["cqn"]
            self.sw = ok(self.fw.create_qp(self.cqn, log_rq_size=6)).fields["qpn"]
            self.fwqp = ok(self.fw.create_qp()).fields["qpn"]
        self.rxq = self.drv.create_virtq(self.rx, event_mode=EventMode.QP if qp_mode else EventMode.NO_MSIX,
                                         qp_id=self.fwqp if qp_mode else 0)
        self.txq = self.drv.create_virtq(self.tx)

    def connect(self):
        for a, b in ((self.fwqp, self.sw), (self.sw, self.fwqp)):
            for op in (Op.RST2INIT_QP, Op.INIT2RTR_QP, Op.RTR2RTS_QP):
                self.drv.ok(self.fw.move_qp(op, a, b))

    def arm(self, sn, ci=0):
        """DPDK's arm: the arm word (sn, CMD_ALL, ci) in the doorbell record, then the UAR CQ doorbell."""
        word = sn << 28 | 0 << 24 | ci
        struct.pack_into(">I", self.mem.view(self.dbr_gpa, 8), DBR_ARM, word)
        self.drv.bar0.u8[UAR_OFF + UAR_CQ_DB : UAR_OFF + UAR_CQ_DB + 8] = \
            memoryview(struct.pack("<Q", word << 32 | self.cqn))

    def wqe_counter(self):
        return struct.unpack_from(">H", self.cqes, CQE_WQE_COUNTER)[0]

    def ring(self, base):
        bar = self.drv.bar0
        prod = bar.r32(base + EQ_PROD)
        assert bar.r32(base + EQ_NENT) == EQ_SLOTS
        return [struct.unpack_from("<QQ", bar.u8, base + EQ_ENTRIES + 16 * (i % EQ_SLOTS)) for i in range(prod)]



class Sender(EvVf):
    def __init__(self, vf_dir):
        super().__init__(vf_dir, qp_mode=False)


def _send(a, b, n):
    for _ in range(n):
        b.rx.post_rx()
    b.rx.kick(force=True)
    for i in range(n):
        a.tx.send(net_frame(BCAST, SRC, bytes([i]) * 60))
    a.tx.kick(force=True)
    a.tx.wait_used(n)
    return b.rx.wait_used(n)


def _armed_pair(on_vf):
    """A sender VF and a QP-mode VF whose CQ is armed with sn 0; and that CQ's event eventfd."""
    a, b = on_vf(Sender, 0), on_vf(EvVf, 1)
    b.connect()
    a.ready()
    b.ready()
    ev = b.drv.irq_fd(CQ_VEC)
    b.arm(0)
    return a, b, ev


def _first_event(on_vf):
    """:func:`_armed_pair` after 3 completions and the event they gave."""
    a, b, ev = _armed_pair(on_vf)
    _send(a, b, 3)
    wait_for(lambda: len(b.ring(EVQ_OFF)) == 1, what="the first event")
    assert eventfd_count(ev) == 1
    return a, b, ev


def test_qp_states_and_refusals(card, on_vf):
    v = on_vf(EvVf, 0)
    # the virtq names its FW QP: RDY needs it RTS and connected to a QP with a CQ
    r = v.drv.set_state(v.rxq, QState.RDY)
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.EVENT_TARGET)
    r = v.fw.move_qp(Op.RTR2RTS_QP, v.fwqp)
    assert (r.status, r.syndrome) == (Status.BAD_RES_STATE, Syn.QP_STATE)
    r = v.fw.move_qp(Op.INIT2RTR_QP, v.fwqp, v.sw)
    assert (r.status, r.syndrome) == (Status.BAD_RES_STATE, Syn.QP_STATE)
    v.drv.ok(v.fw.move_qp(Op.RST2INIT_QP, v.fwqp))
    r = v.fw.move_qp(Op.INIT2RTR_QP, v.fwqp, 999)
    assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_QP)
    assert v.drv.ok(v.fw.query_qp(v.fwqp)).fields["state"] == QpState.INIT
    v.drv.ok(v.fw.move_qp(Op.INIT2RTR_QP, v.fwqp, v.sw))
    v.drv.ok(v.fw.move_qp(Op.RTR2RTS_QP, v.fwqp))
    q = v.drv.ok(v.fw.query_qp(v.fwqp)).fields
    assert (q["state"], q["remote_qpn"], q["cqn"]) == (QpState.RTS, v.sw, 0)
    assert v.drv.ok(v.fw.query_qp(v.sw)).fields["cqn"] == v.cqn
    assert v.drv.set_state(v.rxq, QState.RDY).status == Status.OK
    # hostile: bad CQ sizes, vectors, memory; objects in use
    for kw, syn in ((dict(log_cq_size=0), Syn.CQ_SIZE), (dict(log_cq_size=16), Syn.CQ_SIZE),
                    (dict(log_cq_size=6, vector=40), Syn.EVENT_VECTOR),
                    (dict(log_cq_size=6, cqe_iova=0x7000_0000), Syn.UNMAPPED),
                    (dict(log_cq_size=6, cqe_iova=v.cqe_gpa + 8), Syn.NOT_ALIGNED)):
        kw = dict(dict(cqe_iova=v.cqe_gpa, dbr_iova=v.dbr_gpa), **kw)
        r = v.fw.create_cq(**kw)
        assert (r.status, r.syndrome) == (Status.BAD_PARAM, syn), kw
    r = v.fw.create_qp(999)
    assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_CQ)
    r = v.fw.destroy_cq(v.cqn)
    assert (r.status, r.syndrome) == (Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    r = v.fw.destroy_qp(v.fwqp)
    assert (r.status, r.syndrome) == (Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    r = v.fw.subscribe(v.rxq, vector=0, cookie=0, obj_type=ObjType.VIRTIO_Q_COUNTERS)
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.EVENT_TYPE)
    # torn down in order: virtq, FW QP, SW QP, CQ
    assert v.drv.set_state(v.rxq, QState.SUSPEND).status == Status.OK
    v.drv.ok(v.fw.destroy_virtq(v.rxq))
    for r in (v.fw.destroy_qp(v.fwqp), v.fw.destroy_qp(v.sw), v.fw.destroy_cq(v.cqn)):
        v.drv.ok(r)


def test_completions_write_the_cqe_and_an_armed_cq_signals_once(card, on_vf):
    a, b, ev = _armed_pair(on_vf)
    _send(a, b, 3)
    wait_for(lambda: b.wqe_counter() == 2, what="wqe_counter 0xFFFF + 3")
    wait_for(lambda: b.ring(EVQ_OFF), what="the completion event")
    assert b.ring(EVQ_OFF) == [(COOKIE, b.cqn)]
    assert eventfd_count(ev) == 1
    assert b.cqes[CQE_OP_OWN] >> 4 == 0  # a requester completion
    # disarmed: more completions advance the counter, no event
    _send(a, b, 2)
    wait_for(lambda: b.wqe_counter() == 4, what="wqe_counter advanced by 2")
    time.sleep(0.05)
    assert eventfd_count(ev) == 0 and len(b.ring(EVQ_OFF)) == 1
    # an arm with the old sn is stale: still nothing
    b.arm(0)
    _send(a, b, 1)
    wait_for(lambda: b.wqe_counter() == 5, what="wqe_counter 5")
    time.sleep(0.05)
    assert eventfd_count(ev) == 0
    # armed with the next sn and a consumer index at the last completion: the next completion signals, once
    b.arm(1, ci=6)  # 3 + 2 + 1 consumed
    time.sleep(0.05)
    assert eventfd_count(ev) == 0  # arming with nothing unconsumed is no event
    _send(a, b, 4)
    wait_for(lambda: b.wqe_counter() == 9, what="wqe_counter 9")
    wait_for(lambda: len(b.ring(EVQ_OFF)) == 2, what="the second event")
    assert eventfd_count(ev) == 1
    # armed with a consumer index behind the completions (the driver consumed 6 of 10: 4 came between its
    # poll and its arm): an event at once, without a new completion
    b.arm(2, ci=6)
    wait_for(lambda: len(b.ring(EVQ_OFF)) == 3, what="the event of the arm behind the completions")
    assert eventfd_count(ev) == 1 and b.wqe_counter() == 9
    time.sleep(0.05)
    assert len(b.ring(EVQ_OFF)) == 3  # once: disarmed again
    # the driver's drain resets the counter: the card counts on from what is there
    struct.pack_into(">H", b.cqes, CQE_WQE_COUNTER, 0xFFFF)
    _send(a, b, 2)
    wait_for(lambda: b.wqe_counter() == 1, what="wqe_counter from 0xFFFF")
    assert b.drv.counters(b.rxq)["error_cqes"] == 0
    assert b.drv.counters(b.rxq)["completed_desc"] == 12


def test_arming_a_cq_with_unconsumed_completions_signals_at_once(card, on_vf):
    """Completions written between the driver's last poll and its arm are not lost: the arm word's consumer
    index is behind what the card wrote, so the arm itself gives the event (as on the hardware: DPDK's event
    thread arms after an empty poll and then blocks, with no poll in between)."""
    a, b, ev = _first_event(on_vf)
    _send(a, b, 2)  # disarmed: 5 written, no event
    wait_for(lambda: b.wqe_counter() == 4, what="wqe_counter 4")
    b.arm(1, ci=5)  # the driver consumed all 5: nothing owed, arming is no event
    time.sleep(0.05)
    assert eventfd_count(ev) == 0 and len(b.ring(EVQ_OFF)) == 1
    _send(a, b, 1)  # the armed CQ signals
    wait_for(lambda: len(b.ring(EVQ_OFF)) == 2, what="the second event")
    assert eventfd_count(ev) == 1
    _send(a, b, 2)  # disarmed: 8 written, the driver consumed 6 of them
    wait_for(lambda: b.wqe_counter() == 7, what="wqe_counter 7")
    time.sleep(0.05)
    assert eventfd_count(ev) == 0
    b.arm(2, ci=6)  # armed behind the producer: the event comes with no new completion
    wait_for(lambda: len(b.ring(EVQ_OFF)) == 3, what="the event the arm owes")
    assert eventfd_count(ev) == 1 and b.ring(EVQ_OFF)[2] == (COOKIE, b.cqn)
    b.arm(2, ci=8)  # the used sn again: ignored
    time.sleep(0.05)
    assert eventfd_count(ev) == 0 and len(b.ring(EVQ_OFF)) == 3


def test_an_arm_replaced_before_the_card_read_it_does_not_silence_the_cq(card, on_vf):
    """A timer-mode driver arms (sn s), then polls completions that came after that arm and arms again (sn s+1),
    all before the card looked at the doorbell record: the card never saw the arm with sn s.  The hardware takes
    each doorbell as it comes, so arm s gave its event and arm s+1 stands; the card must do the same, or it
    waits for sn s forever and the CQ never signals again (the guest's interrupts stop: seconds-long stalls in
    bench/mlx5_event_modes.py with event_mode=1,event_us=100)."""
    a, b, ev = _first_event(on_vf)
    # the card's sn is 1 now; the driver's arm with sn 1 is overwritten by its arm with sn 2 before the card
    # reads it (here: sn 1 is never written at all), with everything consumed
    _send(a, b, 2)
    wait_for(lambda: b.wqe_counter() == 4, what="wqe_counter 4")
    b.arm(2, ci=5)
    time.sleep(0.05)
    assert eventfd_count(ev) == 0  # nothing unconsumed: no event for the arm that stands
    _send(a, b, 1)
    wait_for(lambda: len(b.ring(EVQ_OFF)) == 2, what="the event of the arm that replaced the one never seen")
    assert eventfd_count(ev) == 1 and b.ring(EVQ_OFF)[1] == (COOKIE, b.cqn)
    # and the sequence goes on from there: the next arm carries sn 3
    b.arm(3, ci=6)
    _send(a, b, 1)
    wait_for(lambda: len(b.ring(EVQ_OFF)) == 3, what="the event of the next arm")
    b.arm(3, ci=7)  # that sn again: stale, ignored
    _send(a, b, 1)
    wait_for(lambda: b.wqe_counter() == 7, what="wqe_counter 7")
    time.sleep(0.05)
    assert len(b.ring(EVQ_OFF)) == 3


def test_a_dma_fault_gives_the_subscribed_error_event(card, on_vf):
    a, b = on_vf(Sender, 0), on_vf(Sender, 1)
    a.ready()
    b.ready()
    r = b.fw.subscribe(999, vector=ERR_VEC, cookie=1)
    assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT)
    cookie = 1 << 32 | 0  # DPDK's (version << 32) | index
    r = b.fw.subscribe(b.rxq, vector=ERR_VEC + 40, cookie=cookie)
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.EVENT_VECTOR)
    b.drv.ok(b.fw.subscribe(b.rxq, vector=ERR_VEC, cookie=cookie))
    _send(a, b, 1)
    assert b.ring(ERRQ_OFF) == []
    b.drv.dma_unmap(b.mem.regions[0].gpa, b.mem.regions[0].size)  # the rings go: a fault, ERROR
    wait_for(lambda: b.ring(ERRQ_OFF), what="the error event")
    (ck, info), = b.ring(ERRQ_OFF)[:1]
    assert ck == cookie
    assert info >> 56 == EventType.OBJECT_CHANGE
    assert (info >> 48) & 0xFF == ERR_RING_DMA
    assert (info >> 32) & 0xFFFF == 0 and info & 0xFFFFFFFF == b.rxq
    assert eventfd_count(b.drv.irq_fd(ERR_VEC)) >= 1
    q = b.drv.query(b.rxq)
    assert (q["state"], q["error_type"]) == (QState.ERROR, ERR_RING_DMA)
