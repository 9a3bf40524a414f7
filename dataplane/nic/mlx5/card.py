"""The emulated ConnectX-6 Dx card: its VFs' PCI face, command slot, VAR doorbell and datapath.

Every card's process, main loop, switch and control channel are shared with the IFC card
(:mod:`~dataplane.nic.cardproc`, :mod:`~dataplane.nic.function`); what is mlx5 here:

**The PCI face.**  A VF directory holds ``config`` (vendor 0x15b3 Mellanox, device 0x101e,
the ConnectX family's VF id a ConnectX-6 Dx VF shows; subsystem the same; class network; an
MSI-X capability of :attr:`Mlx5Function.nvec` vectors) and ``resource0``, BAR0::

    0x00000  the command slot (:mod:`~dataplane.nic.mlx5.mailbox`, SLOT_SIZE bytes)
    0x13000  MSI-X table, 0x14000 PBA (present; vectors are bound to eventfds over vfio.sock)
    0x20000  the VAR page (VAR_SIZE bytes): the doorbell, a u32 at offset 0

``get_device_info`` answers where the doorbell is (``doorbell: {bar, offset, size}``), the
number of virtqs and the regions.

**The VAR doorbell** (facts §3.5).  A kick is a 32-bit write of the virtq's queue index; the
card swaps the word back to 0xFFFFFFFF (:func:`~dataplane.nic.kernels.poll_var_doorbell`),
counts it in the queue's ``kicks`` and wakes the function's TX virtqs.  One word serves every
queue, so two writes between two looks leave only the last one counted; every TX virtq is
woken on any kick so no chain waits for a kick that was overwritten.  A write narrower than 32
bits leaves the high idle bits and is ignored (``doorbells_ignored``).

**The datapath.**  A VIRTIO_NET_Q that goes RDY runs: its rings (split or packed) are walked
by the IFC card's kernels through the region table of its mkey
(:meth:`~dataplane.nic.mlx5.mkey.MkeyStore.regions`: addresses are GPAs), from
``hw_available_index`` / ``hw_used_index``.  Going SUSPEND (or destroyed) stops it; the
indices it reached are written into the object, so QUERY returns them and a second RDY resumes
from there.  A TX virtq is an odd queue index, an RX virtq an even one (virtio-net); frames from
the TX virtq of pair p go through the switch to the RX virtq 2p of the destination VF (RX virtq 0
when that one does not run), or, on a VF with flow rules, to the RX virtq its RSS steering picks per
frame (:mod:`~dataplane.nic.mlx5.steer`).  A fault of the kernels (a buffer
outside the mkey or the DMA map, a bad descriptor, a chain too long) puts the virtq in ERROR
(:meth:`~dataplane.nic.mlx5.objects.Hca.virtq_error`, ``error_type`` = the fault code of
:func:`~dataplane.nic.kernels.fault_name`) and is counted (the function's ``faults``, and
``dma_faults`` for a buffer outside the memory).  A DMA unmap under a running virtq's rings is
the same fault (code ring_dma); otherwise the region tables of the running virtqs are rebuilt.

**Counters objects** (facts §3.9): the datapath's queue rows (``dataplane.nic.shm``) feed the
virtq's VIRTIO_Q_COUNTERS: received_desc and completed_desc count the chains taken (every one is
completed in the burst that took it), invalid_buffer the chains completed unused (a writable buffer
in a TX chain, a runt or oversized frame, a read-only or too small RX buffer) and the
bad-address faults, bad_desc_errors the descriptor faults (index, indirect, layout, avail index
jump), exceed_max_chain the chain faults (loop, too many segments).  error_cqes stays 0: the card
writes no error CQEs.

**Interrupts.**  event_mode NO_MSIX: none (the driver polls); MSIX: the eventfd bound to vector
``qp_id`` is written when the driver wants an interrupt.  QP: completions advance the event CQ's
cqes[0].wqe_counter (and its timestamp: CLOCK_MONOTONIC ns when the CQE was written) and an armed
CQ gets one event (:meth:`Mlx5Function._poll_events`), also when it is armed behind the completions
written; a
subscribed virtq going ERROR gets an error event (docs/nic.md, "Events").
"""

from __future__ import annotations

import ctypes
import os
import struct
import time

import numpy as np

from dataplane import log as dplog
from dataplane.vhost.dirty_log import LOG_CTL_SLOTS, LOG_CTL_SYNCED, make_log
from dataplane.rings.virtqueue import ERR_ADDR, ERR_AVAIL_IDX, ERR_CHAIN_LOOP, ERR_DESC_INDEX, ERR_INDIRECT, \
    ERR_LAYOUT, ERR_TOO_MANY_SEGS

from .. import kernels as K
from ..cardproc import BUSY_TURNS, CardBase
from ..function import Function
from ..offload import offload_bits
from ..pci import BarFile, config_header
from ..shm import V_DMA_FAULTS, V_DOORBELLS_IGNORED, V_FAULTS, V_RESETS
from dataplane.hwspec.mlx5_prm import BAR0_SIZE, DEVICE_ID, MSIX_PBA_OFF, MSIX_TABLE_OFF, VAR_OFF, VAR_SIZE, VENDOR_ID
from dataplane.hwspec.mlx5_prm import CQ_CI_MASK, CQE_TIMESTAMP
from dataplane.hwspec.mlx5_prm import (CQE_OP_OWN, CQE_OPCODE_REQ, CQE_SIZE, CQE_WQE_COUNTER, DBR_ARM, EQ_ENTRIES,
                                        EQ_NENT, EQ_PROD, EQ_SLOTS, EQE_SIZE, ERRQ_OFF, EVQ_OFF, UAR_CQ_DB, UAR_IDLE,
                                        UAR_OFF, EventType)
from dataplane.hwspec.mlx5_prm import COUNTER_NAMES, CmdError, EventMode, QState, QType, Status, Syn
from .mailbox import CommandSlot
from .objects import Caps, Hca, VirtQ, ring_areas
from .steer import rss_select, steering_table

__all__ = ["Mlx5Card", "Mlx5Function", "VENDOR_ID", "DEVICE_ID", "VAR_OFF", "VAR_SIZE", "BAR0_SIZE",
           "MSIX_TABLE_OFF", "MSIX_PBA_OFF", "DEFAULT_PF"]

log = dplog.get_logger("dataplane.nic.mlx5")

DEFAULT_PF = "0000:00:06.0"

_C = {n: i for i, n in enumerate(COUNTER_NAMES)}
#: the consumer index in a CQ arm word (its low 24 bits)
CQ_CI_MASK = 0xFFFFFF
#: which counters-object field a kernel fault code adds to
_FAULT_COUNTER = {ERR_DESC_INDEX: "bad_desc_errors", ERR_INDIRECT: "bad_desc_errors", ERR_LAYOUT: "bad_desc_errors",
                  ERR_AVAIL_IDX: "bad_desc_errors", ERR_CHAIN_LOOP: "exceed_max_chain",
                  ERR_TOO_MANY_SEGS: "exceed_max_chain", ERR_ADDR: "invalid_buffer"}


class Run:
    """A RDY virtq's datapath: queue ``qid`` (its queue_index), the object ``obj_id``."""

    __slots__ = ("qid", "obj_id", "ctx", "busy", "seen", "cq_seen")

    def __init__(self, qid: int, obj_id: int, ctx):
        self.qid = qid
        self.obj_id = obj_id
        self.ctx = ctx
        self.busy = BUSY_TURNS if qid % 2 else 0
        self.seen = (0, 0)  # (chains taken, chains completed unused) already added to the counters object
        self.cq_seen = 0  # chains completed already reported in the event CQ (QP mode)

    @property
    def running(self) -> bool:
        return self.ctx is not None and self.ctx.cfg[K.CFG_RUNNING] != 0


# The words the driver reads while the card writes them (and back) are accessed in one load or store each:
# struct's big-endian packing goes byte by byte, so the other side could read half an old and half a new value
# (a wqe_counter crossing a multiple of 256 read torn makes the driver consume ~64 Ki completions at once, and
# its consumer index is then never the card's again).
def _store_be16(addr: int, v: int) -> None:
    ctypes.c_uint16.from_address(addr).value = int.from_bytes(v.to_bytes(2, "big"), "little")


def _load_be16(addr: int) -> int:
    return int.from_bytes(ctypes.c_uint16.from_address(addr).value.to_bytes(2, "little"), "big")


def _load_be32(addr: int) -> int:
    return int.from_bytes(ctypes.c_uint32.from_address(addr).value.to_bytes(4, "little"), "big")


def _hva(regions: np.ndarray, addr: int, length: int) -> int:
    for a, n, h in regions:
        a, n, h = int(a), int(n), int(h)
        if a <= addr and addr + length <= a + n:
            return h + (addr - a)
    return 0


class Mlx5Function(Function):
    model = "mlx5"

    def __init__(self, card: "Mlx5Card", index: int, bdf: str, mac: bytes, pairs: int):
        self.nq = 2 * pairs
        self.caps = Caps(max_num_virtio_queues=self.nq)
        self.runs: dict[int, Run] = {}
        self.steer = None  # SteerTable while flow rules exist
        self.sel = np.zeros(K.STAGE_ROWS, np.int64)
        self.steer_tmp = np.zeros(64, np.uint8)
        #: per queue index, the log control row of its dirty bitmap (kept: its LOG_CTL_SYNCED count is Q_LOGGED)
        self.log_ctl = np.zeros((self.nq, LOG_CTL_SLOTS), np.int64)
        super().__init__(card, index, bdf, mac, self.caps.num_msix_vectors)
        with open(os.path.join(self.dir, "config"), "wb") as f:
            f.write(bytes(config_header(VENDOR_ID, DEVICE_ID, VENDOR_ID, DEVICE_ID, 0x00, self.nvec,
                                        msix_table=MSIX_TABLE_OFF, msix_pba=MSIX_PBA_OFF, next_cap=0)))
        self.bar0 = BarFile(os.path.join(self.dir, "resource0"), BAR0_SIZE, create=True)
        self.db32 = self.bar0.u32[VAR_OFF // 4 : (VAR_OFF + VAR_SIZE) // 4]
        self.db32[0] = K.VAR_IDLE
        self.uar64 = self.bar0.u8[UAR_OFF + UAR_CQ_DB : UAR_OFF + UAR_CQ_DB + 8].view(np.uint64)
        self.uar64[0] = UAR_IDLE
        for base in (EVQ_OFF, ERRQ_OFF):
            self.bar0.w32(base + EQ_NENT, EQ_SLOTS)
        self._new_firmware()

    def _new_firmware(self) -> None:
        """A fresh firmware (no objects): at start and at a function reset."""
        self.hca = Hca(self.dma, self.caps, name=self.bdf)
        self.hca.observer = self
        self.slot = CommandSlot(self.bar0, self.hca)
        self.steering_changed()

    # -- Function ----------------------------------------------------------------------------
    def region_files(self) -> dict:
        return {0: "resource0", "config": "config"}

    def device_info(self) -> dict:
        return {"num_queues": self.nq, "regions": {"0": self.bar0.size, "config": 256},
                "doorbell": {"bar": 0, "offset": VAR_OFF, "size": VAR_SIZE},
                "uar": {"bar": 0, "offset": UAR_OFF, "size": 0x1000},
                "event_rings": {"bar": 0, "completion": EVQ_OFF, "error": ERRQ_OFF}}

    def poll_registers(self) -> bool:
        for r in list(self.runs.values()):
            if not r.running:
                self._halted(r)
            else:
                self.rows[r.qid][K.Q_LOGGED] = self.log_ctl[r.qid, LOG_CTL_SYNCED]
        if self.hca.cqs:
            self._poll_events()
        if not self.slot.pending():
            return False
        self.slot.poll()
        return True

    def poll_doorbells(self) -> None:
        v = K.poll_var_doorbell(self.db32, self.nq, self.rows)
        if v == -1:
            return
        if v == -2:
            self.vrow[V_DOORBELLS_IGNORED] += 1
            return
        for r in self.tx_queues():
            self.card.kicked(r)

    def reset(self) -> None:
        self.drop_driver()
        self.vrow[V_RESETS] += 1
        log.info("mlx5: function reset", vf=self.bdf)

    def drop_driver(self) -> None:
        for r in list(self.runs.values()):
            self._stop(r)
        self._new_firmware()

    def bind_irqs(self) -> None:
        for r in self.runs.values():
            if r.ctx is not None:
                r.ctx.cfg[K.CFG_CALLFD] = self._callfd(self.hca.virtqs[r.obj_id].attrs)

    def set_link(self, up: bool) -> None:
        log.info("mlx5: link " + ("up" if up else "down"), vf=self.bdf)

    def tx_queues(self):
        return [r for r in self.runs.values() if r.qid % 2]

    def rx_ctx(self, pair: int):
        r = self.runs.get(2 * pair) or self.runs.get(0)
        return r.ctx if r is not None else None

    def steering_changed(self) -> None:
        """Flow rules, TIRs or RQTs changed: the arrays the switch reads are rebuilt."""
        self.steer = steering_table(self.hca)
        self.steered = self.steer is not None

    def deliver(self, pair: int, bit: int, stage, slen, smask, n: int, idle) -> int:
        t = self.steer
        if t is None:
            return super().deliver(pair, bit, stage, slen, smask, n, idle)
        sel = self.sel
        rss_select(stage, slen, smask, n, bit, t.rules, t.keys, t.rqt, t.rqt_len, t.n, self.steer_tmp, sel)
        done = 0
        for qi in np.unique(sel[:n]):
            if qi < 0:
                continue
            r = self.runs.get(int(qi))
            mask = np.where(sel[:n] == qi, smask[:n], 0)
            if r is None or r.ctx is None:  # steered to an RX virtq that does not run: dropped, counted there
                if int(qi) < len(self.rows):
                    self.rows[int(qi)][K.Q_DROPS] += int(np.count_nonzero(mask & bit))
                continue
            done += K.rx_deliver(r.ctx, bit, stage, slen, mask, n)
        return done

    def switch_active(self) -> bool:
        return self.link_up and any(r.running for q, r in self.runs.items() if q % 2 == 0)

    def dma_unmap(self, iova: int, size: int) -> list[int]:
        gone = self.dma.covered(iova, size)
        for r in list(self.runs.values()):
            a = self.hca.virtqs[r.obj_id].attrs
            for _name, addr, ln in ring_areas(a):
                t = self.hca.mkeys.translate(a["mkey"], addr, ln)
                if t is None or t[0] in gone:
                    self.rows[r.qid][K.Q_ERR] = K.ERR_RING_DMA
                    self.rows[r.qid][K.Q_FAULTS] += 1
                    self._halted(r)
                    break
        detached = [self.dma.detach(i) for i in gone]
        for r in self.runs.values():  # the memory leaves the region tables (and the bitmap) before it is unmapped
            a = self.hca.virtqs[r.obj_id].attrs
            r.ctx = r.ctx._replace(regions=self.hca.mkeys.regions(a["mkey"]), log=self._queue_log(a))
        for d in detached:
            self.dma.release(d)
        return gone

    # -- the Hca's observer: virtq state changes ---------------------------------------------------
    def virtq_modify(self, vq: VirtQ, new: dict) -> None:
        was, now = vq.state, new["state"]
        r = self.runs.get(vq.attrs["queue_index"])
        if was == QState.RDY and now != QState.RDY and r is not None:
            used = self._stop(r)
            new["hw_available_index"] = new["hw_used_index"] = used
        elif now == QState.RDY and was != QState.RDY:
            self._start(vq.obj_id, new)
        elif now == QState.RDY and r is not None and r.obj_id == vq.obj_id:  # dirty-bitmap bits while running
            r.ctx = r.ctx._replace(log=self._queue_log(new))
            r.ctx.cfg[K.CFG_OFFLOADS] = offload_bits(new)

    def virtq_destroy(self, vq: VirtQ) -> None:
        r = self.runs.get(vq.attrs["queue_index"])
        if r is not None and r.obj_id == vq.obj_id:
            self._stop(r)

    def counters_sync(self) -> None:
        for r in self.runs.values():
            self._sync(r)

    # -- the datapath ------------------------------------------------------------------------------
    def _callfd(self, a: dict) -> int:
        return self.irq_fd(a["qp_id"]) if a["event_mode"] == EventMode.MSIX else -1

    # -- events: completions into CQs, error events (facts §3.6, §3.10) ----------------------------
    def _push_event(self, base: int, vector: int, cookie: int, info: int) -> None:
        """A record in the event ring at ``base`` of BAR0, then the vector's eventfd."""
        prod = self.bar0.r32(base + EQ_PROD)
        struct.pack_into("<QQ", self.bar0.u8, base + EQ_ENTRIES + EQE_SIZE * (prod % EQ_SLOTS), cookie & (2**64 - 1),
                         info)
        self.bar0.w32(base + EQ_PROD, (prod + 1) & 0xFFFFFFFF)
        fd = self.irq_fd(vector)
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass

    def _poll_events(self) -> None:
        """QP-mode virtqs: new completions advance their CQ's cqes[0].wqe_counter; an armed CQ (its
        doorbell record's arm word carries the CQ's arm sn) with completions its consumer index (the
        arm word's low 24 bits) has not reached gets one event, then is disarmed.  As on the
        hardware, that includes completions written before the arm: a driver that arms after its
        last empty poll misses none."""
        if int(self.uar64[0]) != UAR_IDLE:  # the arm doorbell: taken; the arm words say which CQs
            self.uar64[0] = UAR_IDLE
        for r in self.runs.values():
            self._complete(r)

    def _complete(self, r: Run) -> None:
        """Report ``r``'s new completions in its event CQ (QP mode only), and the event an armed CQ owes."""
        a = self.hca.virtqs[r.obj_id].attrs
        if a["event_mode"] != EventMode.QP:
            return
        taken = self._taken(r)[0]
        delta = taken - r.cq_seen
        cq = self.hca.event_cq(a["qp_id"])
        if delta > 0:
            r.cq_seen = taken
        elif cq is None or cq.produced == cq.consumed:
            return  # nothing new, and the driver consumed all there was: no event can be owed
        if cq is None:
            return
        dbr = self.dma.translate(cq.dbr_iova, 8)
        if delta > 0:
            cqes = self.dma.translate(cq.cqe_iova, CQE_SIZE << cq.log_size)
            if not cqes or not dbr:
                self.vrow[V_DMA_FAULTS] += 1
                self.vrow[V_FAULTS] += 1
                log.error("mlx5: event CQ memory not in the DMA map", vf=self.bdf, cqn=cq.cqn, queue_index=r.qid)
                return
            mem = (ctypes.c_uint8 * (CQE_SIZE << cq.log_size)).from_address(cqes)
            wc = (_load_be16(cqes + CQE_WQE_COUNTER) + delta) & 0xFFFF
            slot = 0 if cq.first_only else wc % (1 << cq.log_size)
            now = time.monotonic_ns()  # the CQE's timestamp: the card's clock is the host's CLOCK_MONOTONIC, in ns
            struct.pack_into(">Q", mem, CQE_SIZE * slot + CQE_TIMESTAMP, now)
            _store_be16(cqes + CQE_SIZE * slot + CQE_WQE_COUNTER, wc)
            mem[CQE_SIZE * slot + CQE_OP_OWN] = CQE_OPCODE_REQ << 4 | (wc >> cq.log_size) & 1
            if slot:  # cqes[0] keeps the latest count (and its time) too
                struct.pack_into(">Q", mem, CQE_TIMESTAMP, now)
                _store_be16(cqes + CQE_WQE_COUNTER, wc)
            cq.produced = (cq.produced + delta) & CQ_CI_MASK
        elif not dbr:
            return
        arm = _load_be32(dbr + DBR_ARM)
        cq.consumed = arm & CQ_CI_MASK
        sn = (arm >> 28) & 3
        if sn == (cq.sn + 1) & 3:
            # The hardware takes every UAR doorbell as it is written; this card reads the doorbell record when
            # it looks, so an arm the driver replaced before then (it saw that arm's completions in a poll and
            # armed again) was never seen.  That arm was owed its event (the driver re-arms only after
            # completions past the arm's consumer index): it counts as given, and the new arm stands.  Without
            # this the card would wait for an sn the driver has left behind: no event on this CQ ever again.
            cq.sn = sn
            cq.missed_arms += 1
        if sn == cq.sn and cq.produced != cq.consumed:
            cq.sn = (cq.sn + 1) & 3
            cq.events += 1
            self._push_event(EVQ_OFF, cq.vector, cq.cookie, cq.cqn)

    def error_event(self, sub, vq: VirtQ) -> None:
        a = vq.attrs
        info = EventType.OBJECT_CHANGE << 56 | (a["error_type"] & 0xFF) << 48 | a["queue_index"] << 32 | vq.obj_id
        self._push_event(ERRQ_OFF, sub.vector, sub.cookie, info)
        log.info("mlx5: error event", vf=self.bdf, obj_id=vq.obj_id, queue_index=a["queue_index"])

    def _queue_log(self, a: dict):
        """The dirty log of a virtq with ``a``'s attributes: the vhost bitmap (1 bit per 4 KiB GPA page) at
        ``dirty_bitmap_addr`` in ``dirty_bitmap_mkey`` while DIRTY_BITMAP_DUMP_ENABLE is set; none (no
        logging: :func:`~dataplane.nic.kernels.no_log`) otherwise, or when the bitmap is no longer in one DMA mapping (counted, logged)."""
        if not a["dirty_bitmap_dump_enable"] or not a["dirty_bitmap_size"]:
            return K.no_log()
        size = a["dirty_bitmap_size"]
        hva = _hva(self.hca.mkeys.regions(a["dirty_bitmap_mkey"]), a["dirty_bitmap_addr"], size)
        if not hva:
            self.vrow[V_DMA_FAULTS] += 1
            self.vrow[V_FAULTS] += 1
            log.error("mlx5: dirty bitmap not in the DMA map: not logging", vf=self.bdf,
                      queue_index=a["queue_index"], addr=hex(a["dirty_bitmap_addr"]), size=size)
            return K.no_log()
        bitmap = np.frombuffer((ctypes.c_uint8 * size).from_address(hva), np.uint8)
        return make_log(bitmap, self.log_ctl[a["queue_index"]], desc_gpa=a["desc_addr"], used_gpa=a["used_addr"],
                        on=True)

    def _start(self, obj_id: int, a: dict) -> None:
        qid = a["queue_index"]
        packed = a["q_type"] == QType.PACKED
        regions = self.hca.mkeys.regions(a["mkey"])
        addrs = [_hva(regions, addr, ln) for _n, addr, ln in ring_areas(a)]
        if not all(addrs):  # the object model checked the mkey translates them: a ring across two mappings
            raise CmdError(Status.BAD_PARAM, Syn.RING_UNMAPPED, f"virtq {obj_id}: a ring area is not one mapping")
        try:
            ctx = K.open_queue(addrs, a["q_size"], packed=packed, feat=0, last_avail=a["hw_available_index"],
                               last_used=a["hw_used_index"], regions=regions, callfd=self._callfd(a),
                               counters=self.rows[qid], log=self._queue_log(a), offloads=offload_bits(a))
        except ValueError as e:
            raise CmdError(Status.BAD_PARAM, Syn.RING_INDEX, f"virtq {obj_id}: {e}") from None
        r = Run(qid, obj_id, ctx)
        r.seen = self._taken(r)
        r.cq_seen = r.seen[0]
        self.runs[qid] = r
        self.card.active_changed = True
        log.info("mlx5: virtq running", vf=self.bdf, obj_id=obj_id, queue_index=qid, size=a["q_size"],
                 packed=packed, hw_available_index=a["hw_available_index"], hw_used_index=a["hw_used_index"])

    def _stop(self, r: Run) -> int:
        """Stop ``r``'s datapath; the used index it reached."""
        r.ctx.cfg[K.CFG_RUNNING] = 0
        self._sync(r)
        self.rows[r.qid][K.Q_LOGGED] = self.log_ctl[r.qid, LOG_CTL_SYNCED]
        self._complete(r)  # the last completions reach the event CQ before the datapath goes
        used = K.queue_used_index(r.ctx)
        row = self.rows[r.qid]
        row[K.Q_RUNNING] = 0
        row[K.Q_POLLED] = 0
        del self.runs[r.qid]
        r.ctx = None
        r.busy = 0
        self.card.active_changed = True
        log.info("mlx5: virtq stopped", vf=self.bdf, obj_id=r.obj_id, queue_index=r.qid, used_index=used)
        return used

    def _halted(self, r: Run) -> None:
        """The kernels stopped ``r`` on a fault: the virtq goes to ERROR, the fault is counted."""
        code = int(self.rows[r.qid][K.Q_ERR])
        c = self._counters(r)
        if c is not None and code in _FAULT_COUNTER:
            c.values[_C[_FAULT_COUNTER[code]]] += 1
        used = self._stop(r)
        vq = self.hca.virtqs[r.obj_id]
        vq.attrs["hw_available_index"] = vq.attrs["hw_used_index"] = used
        self.hca.virtq_error(r.obj_id, code)
        self.vrow[V_FAULTS] += 1
        if code in (ERR_ADDR, K.ERR_RING_DMA):
            self.vrow[V_DMA_FAULTS] += 1
        log.error("mlx5: virtq fault: ERROR", vf=self.bdf, queue_index=r.qid, fault=K.fault_name(code))

    def _counters(self, r: Run):
        cid = self.hca.virtqs[r.obj_id].attrs["counters_obj_id"]
        return self.hca.counters.get(cid) if cid else None

    def _taken(self, r: Run) -> tuple[int, int]:
        row = self.rows[r.qid]
        return int(row[K.Q_PACKETS] + row[K.Q_ERRORS]), int(row[K.Q_ERRORS])

    def _sync(self, r: Run) -> None:
        """Add what the datapath did since the last look to the virtq's counters object."""
        now = self._taken(r)
        c = self._counters(r)
        if c is not None:
            taken, unused = now[0] - r.seen[0], now[1] - r.seen[1]
            c.values[_C["received_desc"]] += taken
            c.values[_C["completed_desc"]] += taken
            c.values[_C["invalid_buffer"]] += unused
        r.seen = now

    def close(self) -> None:
        super().close()
        self.db32 = self.uar64 = None
        self.bar0.close()


class Mlx5Card(CardBase):
    """A ConnectX-6 Dx card: ``nvfs`` VFs of PF ``pf``, each with ``pairs`` queue pairs (2 x pairs virtqs)."""

    model = "mlx5"

    def __init__(self, parent: str, pf: str, nvfs: int, *, mac_base: bytes, pairs: int = 16):
        super().__init__(parent, pf, nvfs, pairs=pairs)
        self._build(nvfs, mac_base, lambda i, bdf, mac: Mlx5Function(self, i, bdf, mac, pairs))
