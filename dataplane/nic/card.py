"""The emulated IFC card: its VFs' registers, control channels and datapath, in one process.

**The polling scheme.**  A driver writes the BAR files directly; the card
cannot trap a write, so its main loop polls every VF's registers and
compares them with what it saw last (its shadow):

* ``device_status``: 0 after a non-zero value resets the function (queues
  stopped, their state written to BAR4, registers back to their reset values;
  the DMA map and the MSI-X eventfds stay, as VFIO keeps them).  FEATURES_OK
  newly set is checked (the guest features must be a subset of the device's
  and include VERSION_1); when refused the card clears the bit again.
  DRIVER_OK newly set starts every queue whose ``queue_enable`` is 1.
* Select registers and their windows (``device_feature_select`` /
  ``device_feature``, ``guest_feature_select`` / ``guest_feature``,
  ``queue_select`` / the per-queue registers): when a select changed, the
  window's current values are committed to the *previously* selected item,
  then the window is loaded with the newly selected one.  So a driver writes a
  select, **flushes** (below), and only then reads or writes the window.
* ``queue_enable`` 0 -> 1 (window, DRIVER_OK set) starts the queue from the
  ring state in BAR4 (``last_avail | last_used << 16``); 1 -> 0 stops it and
  writes its state back (net: ``last_used`` in both halves: the card completes
  every chain it takes within the burst that took it, so none is in flight).
  A queue the card refuses (split size not a power of two, a ring address of
  0, a ring area outside the DMA map, a ring state that does not fit) is a
  counted fault: ``queue_enable`` reads back 0 and the queue's row holds the
  code.  ``queue_msix_vector`` / ``msix_config`` beyond the MSI-X table read
  back NO_VECTOR (0xFFFF).
* BAR4 ``LOGGING_CTRL`` 1 (ENABLE_VF) / 3 (ENABLE_PF) maps the log at IOVA
  ``[BASE, END)`` through the DMA map (outside it: a counted DMA fault, no
  logging) and every byte the card writes into guest memory marks its page;
  0 stops logging.  ``mq_cfg`` (BAR4 + 0x28) is the number of queue pairs the
  switch delivers to (RX queue = the sender's pair modulo it).
* **The flush** (the card's posted-write flush, what a PCI read does for a
  real device): BAR0 + 0xC0 ``WRITE_SEQ`` (driver) and + 0xC4 ``ACK_SEQ``
  (card).  The card reads WRITE_SEQ *before* it looks at the registers and
  writes it to ACK_SEQ after it has handled them, so once a driver that bumped
  WRITE_SEQ reads it back from ACK_SEQ, every register write it made before
  has taken effect (a queue stopped, its state in BAR4, a refused
  FEATURES_OK cleared...).

**Doorbells.**  A kick is a 16-bit write of the queue index at offset 0 of
the queue's notify page; the card swaps the word back to 0xFFFF atomically
(:func:`~dataplane.nic.kernels.poll_doorbells`), counts it in the queue's
``kicks`` and serves the queue.  The main loop, the busy/idle scheme and the
switch are every card's (:mod:`~dataplane.nic.cardproc`); the control channel
too (:mod:`~dataplane.nic.function`).

**Interrupts.**  The eventfd bound to a queue's MSI-X vector (control channel
``set_irqs``) is written when the driver wants an interrupt
(VRING_AVAIL_F_NO_INTERRUPT clear / the packed driver event area).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from dataplane import log as dplog
from dataplane.rings.virtqueue import FEAT_EVENT_IDX, FEAT_INDIRECT
from dataplane.vhost.dirty_log import LOG_CTL_SLOTS, make_log

from . import kernels as K
from .cardproc import BUSY_TURNS, FAST_S, SLOW_S, CardBase, card_dir, install_signals
from .dma import MAX_DMA_MAPS
from .function import Function
from .pci import (
    ACK_SEQ,
    BAR4_SIZE,
    CC,
    CONFIG_SIZE,
    DEVICE_OFF,
    DOORBELL_IDLE,
    ISR_OFF,
    LM,
    NO_VECTOR,
    NOTIFY_MULT,
    NOTIFY_OFF,
    S_DRIVER_OK,
    S_FEATURES_OK,
    WRITE_SEQ,
    BarFile,
    bar0_size,
    build_config,
    ring_state_off,
)
from .shm import (
    V_CONFIG_IRQS,
    V_DMA_FAULTS,
    V_FAULTS,
    V_FEATURES,
    V_FLUSHES,
    V_LOG_ON,
    V_RESETS,
    V_STATUS,
)

__all__ = ["Card", "VF", "DEVICE_FEATURES", "MAX_QUEUE_SIZE", "MAX_DMA_MAPS", "BUSY_TURNS", "FAST_S", "SLOW_S",
           "card_dir", "install_signals", "F"]

log = dplog.get_logger("dataplane.nic")


class F:
    """Virtio feature bits the card knows."""

    MTU = 3
    MAC = 5
    MRG_RXBUF = 15
    STATUS = 16
    CTRL_VQ = 17
    MQ = 22
    INDIRECT_DESC = 28
    EVENT_IDX = 29
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34


#: What a VF offers: VERSION_1, ACCESS_PLATFORM (it sits behind an IOMMU), MAC, STATUS, MTU, MQ (queue
#: pairs set through BAR4 mq_cfg: the card has no control queue, though num_queues counts one, as
#: IFCVF's does), INDIRECT_DESC, EVENT_IDX (used_event decides interrupts; avail_event is published
#: when a TX queue goes idle) and RING_PACKED.  Not offered: MRG_RXBUF (an RX frame takes one chain),
#: CTRL_VQ, offloads.
DEVICE_FEATURES = sum(1 << b for b in (F.VERSION_1, F.ACCESS_PLATFORM, F.MAC, F.STATUS, F.MTU, F.MQ,
                                       F.INDIRECT_DESC, F.EVENT_IDX, F.RING_PACKED))
MAX_QUEUE_SIZE = 32768
MTU = 1500
VIRTIO_NET_S_LINK_UP = 1
ISR_CONFIG = 0x2


# =============================================================================
# a queue
# =============================================================================


class Queue:
    __slots__ = ("qid", "size", "msix", "enable", "desc", "avail", "used", "ctx", "packed", "areas", "busy")

    def __init__(self, qid: int):
        self.qid = qid
        self.ctx = None
        self.packed = False
        self.areas: list[tuple[int, int]] = []
        self.busy = 0
        self.reset()

    def reset(self) -> None:
        self.size = MAX_QUEUE_SIZE
        self.msix = NO_VECTOR
        self.enable = 0
        self.desc = self.avail = self.used = 0

    @property
    def running(self) -> bool:
        return self.ctx is not None and self.ctx.cfg[K.CFG_RUNNING] != 0

    def window(self) -> tuple:
        return (self.size, self.msix, self.enable, self.desc, self.avail, self.used)


# =============================================================================
# a VF
# =============================================================================


class VF(Function):
    model = "ifcvf"

    def __init__(self, card: "Card", index: int, bdf: str, mac: bytes, pairs: int):
        self.pairs = pairs
        self.num_queues = 2 * pairs + 1  # IFCVF counts a control queue
        self.queues = [Queue(q) for q in range(self.num_queues)]
        super().__init__(card, index, bdf, mac, self.num_queues + 1)
        with open(os.path.join(self.dir, "config"), "wb") as f:
            f.write(build_config(self.num_queues, self.nvec))
        self.bar0 = BarFile(os.path.join(self.dir, "resource0"), bar0_size(self.num_queues), create=True)
        self.bar4 = BarFile(os.path.join(self.dir, "resource4"), BAR4_SIZE, create=True)
        self.db16 = self.bar0.u16[NOTIFY_OFF // 2 :]
        self.kicked = np.zeros(self.num_queues, np.uint8)
        self.log_ctl = np.zeros(LOG_CTL_SLOTS, np.int64)
        self.log_bitmap = np.zeros(0, np.uint8)
        self.log_on = False
        self._reset_registers()

    # -- registers ----------------------------------------------------------------------
    def _reset_registers(self) -> None:
        b = self.bar0
        b.u8[:WRITE_SEQ] = 0  # (the flush pair keeps counting across resets)
        b.u8[ACK_SEQ + 4 : NOTIFY_OFF] = 0
        b.w32(CC.DEVICE_FEATURE, DEVICE_FEATURES & 0xFFFFFFFF)
        b.w16(CC.MSIX_CONFIG, NO_VECTOR)
        b.w16(CC.NUM_QUEUES, self.num_queues)
        b.u8[DEVICE_OFF : DEVICE_OFF + 6] = np.frombuffer(self.mac, np.uint8)
        b.w16(DEVICE_OFF + 6, VIRTIO_NET_S_LINK_UP if self.link_up else 0)
        b.w16(DEVICE_OFF + 8, self.pairs)
        b.w16(DEVICE_OFF + 10, MTU)
        self.db16[: self.num_queues * (NOTIFY_MULT // 2) : NOTIFY_MULT // 2] = DOORBELL_IDLE
        for q in self.queues:
            q.reset()
        self.guest_features = [0, 0]
        self.status = 0
        self.dfs = 0
        self.gfs = 0
        self.sel = 0
        self.msix_config = NO_VECTOR
        self._load_window(0)
        b.w16(CC.QUEUE_SELECT, 0)
        self.vrow[V_STATUS] = 0
        self.vrow[V_FEATURES] = 0

    def _load_window(self, sel: int) -> None:
        b = self.bar0
        if sel < self.num_queues:
            q = self.queues[sel]
            vals = (q.size, q.msix, q.enable, sel, q.desc, q.avail, q.used)
        else:
            vals = (0, NO_VECTOR, 0, 0, 0, 0, 0)
        size, msix, enable, noff, desc, avail, used = vals
        b.w16(CC.QUEUE_SIZE, size)
        b.w16(CC.QUEUE_MSIX_VECTOR, msix)
        b.w16(CC.QUEUE_ENABLE, enable)
        b.w16(CC.QUEUE_NOTIFY_OFF, noff)
        for off, v in ((CC.QUEUE_DESC_LO, desc), (CC.QUEUE_AVAIL_LO, avail), (CC.QUEUE_USED_LO, used)):
            b.w32(off, v & 0xFFFFFFFF)
            b.w32(off + 4, v >> 32)

    def _read_window(self) -> tuple:
        b = self.bar0
        enable = b.r16(CC.QUEUE_ENABLE)  # first: the driver writes it last, so what it enables is read after it
        return (b.r16(CC.QUEUE_SIZE), b.r16(CC.QUEUE_MSIX_VECTOR), enable,
                b.r32(CC.QUEUE_DESC_LO) | b.r32(CC.QUEUE_DESC_HI) << 32,
                b.r32(CC.QUEUE_AVAIL_LO) | b.r32(CC.QUEUE_AVAIL_HI) << 32,
                b.r32(CC.QUEUE_USED_LO) | b.r32(CC.QUEUE_USED_HI) << 32)

    def _commit_window(self, qid: int, win: tuple, current: bool) -> None:
        """Apply the window values ``win`` to queue ``qid``; ``current``: the window still shows it."""
        if qid >= self.num_queues:
            return
        q = self.queues[qid]
        size, msix, enable, desc, avail, used = win
        q.size, q.desc, q.avail, q.used = size, desc, avail, used  # a running queue takes them at its next start
        if msix != q.msix:
            if msix != NO_VECTOR and msix >= self.nvec:
                msix = NO_VECTOR
                if current:
                    self.bar0.w16(CC.QUEUE_MSIX_VECTOR, NO_VECTOR)
            q.msix = msix
            self._bind_irq(q)
        if enable and not q.enable:
            q.enable = 1
            if self.status & S_DRIVER_OK and not self._start_queue(q):
                q.enable = 0
                if current:
                    self.bar0.w16(CC.QUEUE_ENABLE, 0)
        elif not enable and q.enable:
            q.enable = 0
            self._stop_queue(q)

    def poll_registers(self) -> bool:
        """One look at the registers (see the module doc); True when the driver wrote something."""
        b = self.bar0
        seq = b.r32(WRITE_SEQ)
        changed = False
        # status read first, the feature windows handled before it: a driver sets FEATURES_OK right after
        # writing its features, so what is read after the status holds them
        st = b.r8(CC.DEVICE_STATUS)
        dfs = b.r32(CC.DEVICE_FEATURE_SELECT)
        if dfs != self.dfs:
            self.dfs = dfs
            b.w32(CC.DEVICE_FEATURE, (DEVICE_FEATURES >> (32 * dfs)) & 0xFFFFFFFF if dfs < 2 else 0)
            changed = True
        gfs = b.r32(CC.GUEST_FEATURE_SELECT)
        gwin = b.r32(CC.GUEST_FEATURE)
        if gfs != self.gfs:
            if self.gfs < 2:
                self.guest_features[self.gfs] = gwin
            self.gfs = gfs
            b.w32(CC.GUEST_FEATURE, self.guest_features[gfs] if gfs < 2 else 0)
            changed = True
        elif gfs < 2 and gwin != self.guest_features[gfs]:
            self.guest_features[gfs] = gwin
            changed = True
        if st != self.status:
            changed = True
            self.card.active_changed = True
            if st == 0:
                self.reset()
            else:
                new = st & ~self.status
                if new & S_FEATURES_OK and not self._features_ok():
                    st &= ~S_FEATURES_OK
                    b.w8(CC.DEVICE_STATUS, st)
                self.status = st
                self.vrow[V_STATUS] = st
                if new & S_DRIVER_OK and st & S_FEATURES_OK:
                    for q in self.queues:
                        if q.enable and not q.running and not self._start_queue(q):
                            q.enable = 0
                            if q.qid == self.sel:
                                b.w16(CC.QUEUE_ENABLE, 0)
        mc = b.r16(CC.MSIX_CONFIG)
        if mc != self.msix_config:
            if mc != NO_VECTOR and mc >= self.nvec:
                mc = NO_VECTOR
                b.w16(CC.MSIX_CONFIG, NO_VECTOR)
            self.msix_config = mc
            changed = True
        sel = b.r16(CC.QUEUE_SELECT)
        win = self._read_window()
        if sel != self.sel:
            self._commit_window(self.sel, win, False)
            self.sel = sel
            self._load_window(sel)
            changed = True
        elif sel < self.num_queues and win != self.queues[sel].window():
            self._commit_window(sel, win, True)
            changed = True
        changed |= self._poll_bar4()
        if b.r32(ACK_SEQ) != seq:
            b.w32(ACK_SEQ, seq)
            self.vrow[V_FLUSHES] += 1
            changed = True
        return changed

    def _features_ok(self) -> bool:
        feats = self.guest_features[0] | self.guest_features[1] << 32
        ok = feats & ~DEVICE_FEATURES == 0 and feats >> F.VERSION_1 & 1
        if ok:
            self.vrow[V_FEATURES] = feats
        else:
            log.error("ifcvf: FEATURES_OK refused", vf=self.bdf, features=hex(feats), offered=hex(DEVICE_FEATURES))
        return bool(ok)

    @property
    def features(self) -> int:
        return int(self.vrow[V_FEATURES])

    # -- BAR4 -----------------------------------------------------------------------------
    def _poll_bar4(self) -> bool:
        ctrl = self.bar4.r32(LM.LOGGING_CTRL)
        want = ctrl in (LM.ENABLE_VF, LM.ENABLE_PF)
        if want == self.log_on:
            return False
        if want:
            base = self.bar4.r32(LM.BASE_ADDR_LOW) | self.bar4.r32(LM.BASE_ADDR_HIGH) << 32
            end = self.bar4.r32(LM.END_ADDR_LOW) | self.bar4.r32(LM.END_ADDR_HIGH) << 32
            hva = self.dma.translate(base, end - base) if end > base else 0
            if not hva:
                self.vrow[V_DMA_FAULTS] += 1
                self.vrow[V_FAULTS] += 1
                self.bar4.w32(LM.LOGGING_CTRL, 0)
                log.error("ifcvf: dirty log outside the DMA map", vf=self.bdf, base=hex(base), end=hex(end))
                return True
            self.log_bitmap = np.frombuffer((ctypes.c_uint8 * (end - base)).from_address(hva), np.uint8)
            self._set_log(True)
        else:
            self._set_log(False)
        return True

    def _set_log(self, on: bool) -> None:
        self.log_on = on
        self.vrow[V_LOG_ON] = int(on)
        if not on:
            self.log_bitmap = np.zeros(0, np.uint8)
        for q in self.queues:
            if q.ctx is not None:
                q.ctx = q.ctx._replace(log=self._queue_log(q))

    def _queue_log(self, q: Queue):
        if not self.log_on:
            return K.no_log()
        return make_log(self.log_bitmap, np.zeros(LOG_CTL_SLOTS, np.int64), desc_gpa=q.areas[0][0],
                        used_gpa=q.areas[2][0], on=True)

    def mq_pairs(self) -> int:
        n = self.bar4.r32(LM.MQ_CFG)
        return max(1, min(n, self.pairs))

    # -- queues ---------------------------------------------------------------------------
    def _fault(self, q: Queue, code: int, **info) -> bool:
        row = self.rows[q.qid]
        row[K.Q_ERR] = code  # why the latest enable was refused
        row[K.Q_FAULTS] += 1
        row[K.Q_RUNNING] = 0
        self.vrow[V_FAULTS] += 1
        log.error("ifcvf: queue refused", vf=self.bdf, qid=q.qid, fault=K.fault_name(code), **info)
        return False

    def _start_queue(self, q: Queue) -> bool:
        """Start ``q`` from its registers and its BAR4 ring state; False (a counted fault) if refused."""
        if q.qid >= 2 * self.pairs:
            return self._fault(q, K.ERR_QUEUE_SIZE, reason="the control queue is not served by the card")
        packed = bool(self.features >> F.RING_PACKED & 1)
        size = q.size
        if size == 0 or size > MAX_QUEUE_SIZE or (not packed and size & (size - 1)):
            return self._fault(q, K.ERR_QUEUE_SIZE, size=size)
        if q.desc == 0 or q.avail == 0 or q.used == 0:
            return self._fault(q, K.ERR_RING_ZERO, desc=hex(q.desc), avail=hex(q.avail), used=hex(q.used))
        addrs = []
        for iova, ln in zip((q.desc, q.avail, q.used), K.ring_area_sizes(size, packed)):
            hva = self.dma.translate(iova, ln)
            if not hva:
                return self._fault(q, K.ERR_RING_DMA, iova=hex(iova), length=ln)
            addrs.append(hva)
        rs = self.bar4.r32(ring_state_off(q.qid))
        last_avail, last_used = rs & 0xFFFF, rs >> 16
        feat = (FEAT_INDIRECT if self.features >> F.INDIRECT_DESC & 1 else 0) | \
            (FEAT_EVENT_IDX if self.features >> F.EVENT_IDX & 1 else 0)
        q.areas = list(zip((q.desc, q.avail, q.used), K.ring_area_sizes(size, packed)))
        try:
            q.ctx = K.open_queue(addrs, size, packed=packed, feat=feat, last_avail=last_avail, last_used=last_used,
                                 regions=self.dma.table, callfd=self._irq_fd(q.msix), counters=self.rows[q.qid],
                                 log=self._queue_log(q))
        except ValueError as e:
            return self._fault(q, K.ERR_RING_STATE, state=hex(rs), error=str(e))
        q.packed = packed
        q.busy = BUSY_TURNS if q.qid % 2 else 0
        self.card.active_changed = True
        log.info("ifcvf: queue started", vf=self.bdf, qid=q.qid, size=size, packed=packed,
                 last_avail=last_avail, last_used=last_used)
        return True

    def _ring_state(self, q: Queue) -> int:
        used = K.queue_used_index(q.ctx)
        return used | used << 16  # net: every taken chain is completed, last_avail == last_used

    def _stop_queue(self, q: Queue) -> None:
        """Stop ``q`` (if it ran) and write its ring state to BAR4; its context (and views) go."""
        if q.ctx is not None:
            q.ctx.cfg[K.CFG_RUNNING] = 0
            self.bar4.w32(ring_state_off(q.qid), self._ring_state(q))
            q.ctx = None
            self.rows[q.qid][K.Q_RUNNING] = 0
            self.rows[q.qid][K.Q_POLLED] = 0
            self.card.active_changed = True
            log.info("ifcvf: queue stopped", vf=self.bdf, qid=q.qid,
                     ring_state=hex(self.bar4.r32(ring_state_off(q.qid))))
        q.busy = 0

    def reset(self) -> None:
        for q in self.queues:
            self._stop_queue(q)
        self._set_log(False)
        self._reset_registers()
        self.vrow[V_RESETS] += 1
        log.info("ifcvf: function reset", vf=self.bdf)

    def set_link(self, up: bool) -> None:
        """Link up / down: the device cfg status changes, config_generation moves, ISR bit 1 is set
        and the config vector (``msix_config``) is signalled."""
        b = self.bar0
        # the generation moves first: a driver that sees the new status sees the new generation
        b.w8(CC.CONFIG_GENERATION, b.r8(CC.CONFIG_GENERATION) + 1)
        b.w16(DEVICE_OFF + 6, VIRTIO_NET_S_LINK_UP if up else 0)
        b.w8(ISR_OFF, b.r8(ISR_OFF) | ISR_CONFIG)
        fd = self._irq_fd(self.msix_config)
        if fd >= 0:
            os.eventfd_write(fd, 1)
            self.vrow[V_CONFIG_IRQS] += 1
        log.info("ifcvf: link " + ("up" if up else "down"), vf=self.bdf, config_irq=fd >= 0)

    # -- interrupts -------------------------------------------------------------------------
    def _irq_fd(self, vector: int) -> int:
        return -1 if vector == NO_VECTOR else self.irq_fd(vector)

    def _bind_irq(self, q: Queue) -> None:
        if q.ctx is not None:
            q.ctx.cfg[K.CFG_CALLFD] = self._irq_fd(q.msix)

    def bind_irqs(self) -> None:
        for q in self.queues:
            self._bind_irq(q)

    # -- DMA --------------------------------------------------------------------------------
    def dma_unmap(self, iova: int, size: int) -> list[int]:
        gone = self.dma.covered(iova, size)
        hit = self.dma.hit_test(gone)

        for q in self.queues:
            if q.ctx is not None and any(hit(a, ln) for a, ln in q.areas):
                self.rows[q.qid][K.Q_ERR] = K.ERR_RING_DMA
                self.rows[q.qid][K.Q_FAULTS] += 1
                self.vrow[V_FAULTS] += 1
                log.error("ifcvf: ring unmapped under a running queue", vf=self.bdf, qid=q.qid)
                self._stop_queue(q)
        if self.log_on:
            base = self.bar4.r32(LM.BASE_ADDR_LOW) | self.bar4.r32(LM.BASE_ADDR_HIGH) << 32
            end = self.bar4.r32(LM.END_ADDR_LOW) | self.bar4.r32(LM.END_ADDR_HIGH) << 32
            if hit(base, end - base):
                self._set_log(False)
                self.bar4.w32(LM.LOGGING_CTRL, 0)
        for i in gone:
            self.dma.unmap(i)
        return gone

    # -- the driver, the switch ----------------------------------------------------------------
    def region_files(self) -> dict:
        return {0: "resource0", 4: "resource4", "config": "config"}

    def device_info(self) -> dict:
        return {"num_queues": self.num_queues,
                "regions": {"0": self.bar0.size, "4": self.bar4.size, "config": CONFIG_SIZE}}

    def drop_driver(self) -> None:
        for q in self.queues:
            self._stop_queue(q)
        self._set_log(False)
        self.bar4.w32(LM.LOGGING_CTRL, 0)
        self._reset_registers()

    def poll_doorbells(self) -> None:
        self.kicked[:] = 0
        if K.poll_doorbells(self.db16, self.num_queues, NOTIFY_MULT // 2, self.rows, self.kicked):
            for k in np.flatnonzero(self.kicked[1 : 2 * self.pairs : 2]):
                self.card.kicked(self.queues[2 * int(k) + 1])  # TX; an RX kick (buffers) is only counted

    def tx_queues(self):
        return self.queues[1 : 2 * self.pairs : 2]

    def rx_ctx(self, pair: int):
        return self.queues[2 * (pair % self.mq_pairs())].ctx

    def switch_active(self) -> bool:
        return bool(self.link_up and self.status & S_DRIVER_OK
                    and any(q.running for q in self.queues[0 : 2 * self.pairs : 2]))

    def close(self) -> None:
        super().close()
        self.bar0.close()
        self.bar4.close()


# =============================================================================
# the card
# =============================================================================


class Card(CardBase):
    """An IFC card: ``nvfs`` VFs of PF ``pf`` under ``<parent>/nic-<pf>/``."""

    model = "ifcvf"

    def __init__(self, parent: str, pf: str, nvfs: int, *, mac_base: bytes, pairs: int = 4):
        super().__init__(parent, pf, nvfs, pairs=pairs)
        self._build(nvfs, mac_base, lambda i, bdf, mac: VF(self, i, bdf, mac, pairs))
