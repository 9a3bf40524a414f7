"""Handing a virtio-user port's queues to the lcore processes that poll them (see :mod:`dataplane.rings.handoff`).

The :class:`~dataplane.virtio.virtio_user.VirtioUser` object stays in the
main process: its control thread connects, negotiates, reconnects and resets
the rings.  The rings, driver state and counters of every queue live in
shared memzones, so an lcore runs the burst kernels on them directly; what it
needs from the main process is the queue's memzone name, the negotiated
parameters and its kick eventfd (sent over the launcher mailbox).

Main side, :class:`VirtioHandoff`: the port's data-path hooks.
``on_queues_start`` (link up, rings fresh) hands every queue to its lcore;
``on_queues_stop`` (before a disconnect resets the rings, before close) takes
them all back and returns only when no lcore touches them.  Queue ids follow
the vring numbering: Rx of pair ``q`` is ``2q``, Tx ``2q+1``.

Lcore side, :class:`LcoreVirtioQueues`: one :data:`VirtioQueueCtx` per
queue; :func:`virtio_rx_burst` / :func:`virtio_tx_burst` run the kernels of
:mod:`dataplane.virtio.rxtx` on it from a poll loop.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from dataplane import log as dplog
from dataplane.rings import handoff as H
from dataplane.rings import packed as pk
from dataplane.rings import split as sp
from dataplane.rings.handoff import close_fds
from dataplane.rings.jit import inline_kernel
from dataplane.virtio import rxtx
from dataplane.virtio.queue import MAX_TX_SEGS, VirtQueue

__all__ = ["VirtioHandoff", "LcoreVirtioQueues", "VirtioQueueCtx", "virtio_rx_burst", "virtio_tx_burst",
           "virtio_split_rx_burst", "virtio_split_tx_burst", "virtio_packed_rx_burst", "virtio_packed_tx_burst"]

log = dplog.get_logger("dataplane.virtio")

# cfg slots of a VirtioQueueCtx (int64)
V_PACKED, V_HDR_LEN, V_MRG, V_RX_SEGS, V_PORT, V_VLAN_STRIP, V_KICKFD, V_HDR_HVA, V_HDR_IOVA = range(9)
V_SLOTS = 16

VirtioQueueCtx = namedtuple(
    "VirtioQueueCtx",
    ["split_vr", "split_ds", "packed_vr", "packed_ds", "cfg", "counters", "ck", "ln", "sg_gpa", "sg_len", "sg_wr"],
)

_DUMMY: dict = {}


def _dummies():
    """Small split and packed rings/driver states of the real ones' types (never run)."""
    if not _DUMMY:
        n = 1
        buf = np.zeros(3 * 4096, np.uint8)
        svr = sp.split_vring_from_buffer(buf, n, 0, 4096)
        sds = sp.SplitDrvState(np.zeros(sp.DRV_SLOTS, np.int64), np.zeros(n, np.uint64), np.zeros(n, np.uint16),
                               np.zeros(n, np.uint32), np.zeros(n, np.uint16))
        pbuf = np.zeros(4096, np.uint8)
        pvr = pk.packed_vring_from_buffer(pbuf, n)
        pds = pk.PackedDrvState(np.zeros(pk.DRV_SLOTS, np.int64), np.zeros(n, np.uint64), np.zeros(n, np.uint16),
                                np.zeros(n, np.uint16))
        _DUMMY.update(split_vr=svr, split_ds=sds, packed_vr=pvr, packed_ds=pds, keep=(buf, pbuf))
        cfg = np.zeros(V_SLOTS, np.int64)
        cfg[V_KICKFD] = -1
        _DUMMY["ctx"] = VirtioQueueCtx(svr, sds, pvr, pds, cfg, np.zeros(rxtx.Q_SLOTS, np.int64),
                                       np.zeros(n, np.uint64), np.zeros(n, np.uint32), np.zeros(MAX_TX_SEGS, np.uint64),
                                       np.zeros(MAX_TX_SEGS, np.uint32), np.zeros(MAX_TX_SEGS, np.uint8))
    return _DUMMY


def dummy_ctx() -> VirtioQueueCtx:
    return _dummies()["ctx"]


def queue_ctx(q: VirtQueue, cfg: np.ndarray) -> VirtioQueueCtx:
    """The context of a :class:`VirtQueue` (this process's views of its memzone)."""
    d = _dummies()
    return VirtioQueueCtx(
        split_vr=d["split_vr"] if q.packed else q.vr,
        split_ds=d["split_ds"] if q.packed else q.ds,
        packed_vr=q.vr if q.packed else d["packed_vr"],
        packed_ds=q.ds if q.packed else d["packed_ds"],
        cfg=cfg, counters=q.counters, ck=q.ck, ln=q.ln, sg_gpa=q.sg_gpa, sg_len=q.sg_len, sg_wr=q.sg_wr,
    )


@inline_kernel
def virtio_split_rx_burst(c, mp, lcore, pkts, n):
    """Receive up to ``n`` packets on a virtio-user Rx queue context on split rings."""
    cfg = c.cfg
    return rxtx.rx_burst_kernel(c.split_vr, c.split_ds, mp, lcore, pkts, n, cfg[V_HDR_LEN], cfg[V_MRG] != 0,
                                cfg[V_RX_SEGS], cfg[V_PORT], cfg[V_VLAN_STRIP] != 0, cfg[V_KICKFD], c.counters,
                                c.ck, c.ln, c.sg_gpa, c.sg_len, c.sg_wr)


@inline_kernel
def virtio_packed_rx_burst(c, mp, lcore, pkts, n):
    """Receive up to ``n`` packets on a virtio-user Rx queue context on packed rings."""
    cfg = c.cfg
    return rxtx.rx_burst_kernel(c.packed_vr, c.packed_ds, mp, lcore, pkts, n, cfg[V_HDR_LEN], cfg[V_MRG] != 0,
                                cfg[V_RX_SEGS], cfg[V_PORT], cfg[V_VLAN_STRIP] != 0, cfg[V_KICKFD], c.counters,
                                c.ck, c.ln, c.sg_gpa, c.sg_len, c.sg_wr)


@inline_kernel
def virtio_rx_burst(c, mp, lcore, pkts, n):
    """Receive up to ``n`` packets on a virtio-user Rx queue context; returns how many."""
    if c.cfg[V_PACKED] != 0:
        return virtio_packed_rx_burst(c, mp, lcore, pkts, n)
    return virtio_split_rx_burst(c, mp, lcore, pkts, n)


@inline_kernel
def virtio_split_tx_burst(c, mp, lcore, pkts, n):
    """Send ``pkts[:n]`` on a virtio-user Tx queue context on split rings; returns how many it took."""
    cfg = c.cfg
    return rxtx.tx_burst_kernel(c.split_vr, c.split_ds, mp, lcore, pkts, n, cfg[V_HDR_LEN], np.uint64(cfg[V_HDR_HVA]),
                                np.uint64(cfg[V_HDR_IOVA]), cfg[V_KICKFD], c.counters, c.ck, c.ln, c.sg_gpa,
                                c.sg_len, c.sg_wr)


@inline_kernel
def virtio_packed_tx_burst(c, mp, lcore, pkts, n):
    """Send ``pkts[:n]`` on a virtio-user Tx queue context on packed rings; returns how many it took."""
    cfg = c.cfg
    return rxtx.tx_burst_kernel(c.packed_vr, c.packed_ds, mp, lcore, pkts, n, cfg[V_HDR_LEN],
                                np.uint64(cfg[V_HDR_HVA]), np.uint64(cfg[V_HDR_IOVA]), cfg[V_KICKFD], c.counters,
                                c.ck, c.ln, c.sg_gpa, c.sg_len, c.sg_wr)


@inline_kernel
def virtio_tx_burst(c, mp, lcore, pkts, n):
    """Send ``pkts[:n]`` on a virtio-user Tx queue context; returns how many it took."""
    if c.cfg[V_PACKED] != 0:
        return virtio_packed_tx_burst(c, mp, lcore, pkts, n)
    return virtio_split_tx_burst(c, mp, lcore, pkts, n)


class VirtioHandoff(H.QueueHandoff):
    """Main side: a :class:`~dataplane.virtio.virtio_user.VirtioUser`'s data-path hooks."""

    def __init__(self, name: str, nqueues: int, *, port_id: int = 0, memory=None, launcher=None):
        super().__init__(name, nqueues, memory=memory, launcher=launcher)
        self.port_id = port_id

    def on_queues_start(self, vu) -> None:
        info = vu.queue_info()
        common = dict(packed=info["packed"], hdr_len=info["hdr_len"], mergeable=info["mergeable"],
                      rx_segs=info["rx_segs"], vlan_strip=info["vlan_strip"], port_id=self.port_id)
        for q, (zone, kick) in enumerate(zip(info["rx_zones"], info["rx_kick_fds"])):
            if 2 * q < self.nqueues:
                self.start_queue(2 * q, dict(common, zone=zone), [kick] if kick >= 0 else [])
        for q, (zone, kick) in enumerate(zip(info["tx_zones"], info["tx_kick_fds"])):
            if 2 * q + 1 < self.nqueues:
                self.start_queue(2 * q + 1, dict(common, zone=zone), [kick] if kick >= 0 else [])

    def on_queues_stop(self, vu) -> None:
        for qid in range(self.nqueues):
            if self.running(qid):
                self.stop_queue(qid)


class LcoreVirtioQueues(H.LcoreQueues):
    """Lcore side: the virtio-user queues ``qids`` of port ``name`` (``ctxs``: :data:`VirtioQueueCtx`)."""

    def __init__(self, name: str, qids, *, memory=None):
        self.dummy_ctx = dummy_ctx()
        super().__init__(name, qids, memory=memory)
        self.queues: list[VirtQueue | None] = [None] * len(self.qids)
        self._kicks = [-1] * len(self.qids)
        self._broken_seen = [False] * len(self.qids)

    def attach_queue(self, i: int, spec: dict, fds: list[int], resume):
        try:
            q = VirtQueue.attach(self.memory, spec["zone"])
        except (KeyError, ValueError) as e:
            close_fds(fds)
            raise ValueError(f"virtio-user queue {spec['zone']!r}: {e}") from None
        kick = fds[0] if fds else -1
        close_fds(fds[1:])
        cfg = np.zeros(V_SLOTS, np.int64)
        cfg[V_PACKED] = int(q.packed)
        cfg[V_HDR_LEN] = spec["hdr_len"]
        cfg[V_MRG] = int(spec["mergeable"])
        cfg[V_RX_SEGS] = spec["rx_segs"]
        cfg[V_PORT] = spec["port_id"]
        cfg[V_VLAN_STRIP] = int(spec["vlan_strip"])
        cfg[V_KICKFD] = kick
        cfg[V_HDR_HVA] = int(q.hdr_hva)
        cfg[V_HDR_IOVA] = int(q.hdr_iova)
        self.queues[i] = q
        self._kicks[i] = kick
        self._broken_seen[i] = False
        return queue_ctx(q, cfg)

    def report_errors(self) -> None:
        """Log, once per attach, a queue the back-end corrupted (the main process drops the connection)."""
        for i, q in enumerate(self.queues):
            if q is not None and q.broken and not self._broken_seen[i]:
                self._broken_seen[i] = True
                log.error("virtio-user queue broken by the back-end: stopped", port=self.name, qid=self.qids[i],
                          bad_used=q.bad_used)

    def detach_queue(self, i: int):
        self.queues[i] = None
        if self._kicks[i] >= 0:
            close_fds([self._kicks[i]])
            self._kicks[i] = -1
        return None  # the driver state lives in shared memory: nothing to hand back
