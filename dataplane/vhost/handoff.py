"""Handing a vhost device's vrings to the lcore processes that poll them (see :mod:`dataplane.rings.handoff`).

Main side, :class:`VringHandoff` (a :class:`~dataplane.vhost.net.NetDataPathHooks`):
``on_queue_start`` posts the ring's description (region fds and layout, ring
GPAs, size, features, indices, call fd) to the lcore placed on that vring;
``on_queue_stop`` takes it back and copies the indices the lcore reached
into the :class:`~dataplane.vhost.device.Vring` (so ``GET_VRING_BASE``
returns what the lcore really consumed).

Lcore side, :class:`LcoreVrings`: maps the guest memory itself from the fds it
was sent and builds a :class:`~dataplane.vhost.virtio_net.VhostQueueCtx` per
vring (a disabled dummy, :func:`dummy_ctx`, while the ring is not running);
:func:`vhost_rx_burst` / :func:`vhost_tx_burst` run the data path on them
(the vhost PMD's ``eth_vhost_rx`` / ``eth_vhost_tx``).

Per-vring counters (the data path's ``C_*`` slots) and the device's
SEND_RARP array live in memzone ``vhost_<name>``, so the main process reads
statistics while lcores run.

Dirty logging: the hand-over carries the log fd (the lcore maps the log
itself) and each vring's logging flag sits in memzone ``vhost_log_<name>``
(:class:`~dataplane.vhost.dirty_log.LogControl`): ``on_log_all`` flips it
while the rings run.
"""

from __future__ import annotations

import numpy as np

from dataplane import log as dplog
from dataplane.memory.mempool import pktmbuf_free_bulk
from dataplane.net.ether import mac_to_int
from dataplane.rings import handoff as H
from dataplane.rings.atomics import py_store_release
from dataplane.rings.handoff import CTL_SLOTS, REQ_RUN, REQ_STOP, close_fds, queues_changed
from dataplane.rings.jit import inline_kernel
from dataplane.rings.packed import packed_dev_get_used_base
from dataplane.rings.virtqueue import ERR_NAMES, STATE_BROKEN, STATE_ERR_BASE, STATE_ERRORS
from dataplane.vhost.dirty_log import LOG_CTL_UNLOGGED, LogControl, lookup_log_ctl, map_queue_log, report_unlogged, take_log_fd
from dataplane.vhost.guest_memory import GuestMemory, GuestMemoryError
from dataplane.vhost.inflight import report_inflight, inflight_spec, map_queue_inflight, take_inflight_fd
from dataplane.vhost.postcopy import register_client
from dataplane.vhost.device import RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS
from dataplane.vhost.net import NetDataPathHooks
from dataplane.vhost_user.payloads import MemoryRegion
from dataplane.vhost.virtio_net import N_COUNTERS, RARP_FLAG, RARP_MAC, VhostQueue, dequeue_burst, enqueue_burst

__all__ = [
    "CTL_SLOTS",
    "REQ_RUN",
    "REQ_STOP",
    "VringHandoff",
    "LcoreVrings",
    "vrings_changed",
    "memzone_name",
    "map_vring",
    "vring_spec",
    "restore_indices",
    "dummy_ctx",
    "vhost_rx_burst",
    "vhost_tx_burst",
]

log = dplog.get_logger("dataplane.vhost")

#: The poll loops' check (the generic :func:`~dataplane.rings.handoff.queues_changed`).
vrings_changed = queues_changed


def memzone_name(name: str) -> str:
    return f"vhost_{name}"


def _views(buf: np.ndarray, nvrings: int):
    raw = buf[: (nvrings * N_COUNTERS + 2) * 8].view(np.int64)
    counters = raw[: nvrings * N_COUNTERS].reshape(nvrings, N_COUNTERS)
    rarp = raw[nvrings * N_COUNTERS :]
    return counters, rarp


class VringHandoff(H.QueueHandoff, NetDataPathHooks):
    """Main-process side: hands a device's ready vrings to their lcores and takes them back.

    ``name`` names the port (its memzones); ``nvrings`` is the number of
    vrings the port may use (2 per queue pair).  Vrings are placed on lcores
    with :meth:`place`; a vring with no lcore is never started.
    """

    def __init__(self, name: str, nvrings: int, *, memory=None, launcher=None, stop_timeout: float = 5.0):
        super().__init__(name, nvrings, memory=memory, launcher=launcher, stop_timeout=stop_timeout)
        self.nvrings = self.nqueues
        try:
            self._vz = self.memory.memzone_reserve(memzone_name(name), (self.nvrings * N_COUNTERS + 2) * 8)
        except BaseException:
            super().close()
            raise
        buf = self._vz.view()
        buf[:] = 0
        self.counters, self.rarp = _views(buf, self.nvrings)
        try:
            self.log_control = LogControl(self.memory, name, self.nvrings)
        except BaseException:
            self.close()
            raise

    def on_queue_start(self, dev, qid: int) -> None:
        if qid >= self.nvrings:
            log.warning("vring beyond the port's queues is not polled", port=self.name, vid=dev.vid, qid=qid)
            return
        spec, fds = vring_spec(dev, qid)
        spec["legacy_ol_flags"] = not (dev.config.flags & RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS)
        self.log_control.queue_started(dev, qid)
        self.start_queue(qid, spec, fds)

    def on_queue_stop(self, dev, qid: int) -> None:
        if qid >= self.nvrings:
            return
        restore_indices(dev.vrings[qid], self.stop_queue(qid))

    def on_send_rarp(self, dev) -> None:
        self.rarp[RARP_MAC] = mac_to_int(dev.device_state.mac)
        py_store_release(self.rarp, RARP_FLAG, 1)

    def on_guest_notification(self, dev, qid: int, enable: bool) -> None:
        pass  # applied by the lcore from the spec at the next start (``Vring.guest_notification``)

    def on_log_all(self, dev, enable: bool) -> None:
        self.log_control.set_all(enable, [vq.index for vq in dev.vrings if vq.started])

    def close(self) -> None:
        """Free the memzones (every vring must be stopped)."""
        if getattr(self, "log_control", None) is not None:
            self.log_control.close()
            self.log_control = None
        if getattr(self, "_vz", None) is not None:
            try:
                self.memory.memzone_free(self._vz.name)
            except Exception:
                pass
            self._vz = None
        super().close()


class LcoreVrings(H.LcoreQueues):
    """Lcore side: the vrings of port ``name`` this lcore polls (``qids``), as
    :class:`~dataplane.vhost.virtio_net.VhostQueueCtx` contexts (``ctxs``)."""

    def __init__(self, name: str, qids, *, memory=None, nvrings: int | None = None, port: int = 0xFFFF):
        self.dummy_ctx = dummy_ctx()
        super().__init__(name, qids, memory=memory)
        mz = self.memory.memzone_lookup(memzone_name(name))
        if nvrings is None:
            nvrings = (mz.size // 8 - 2) // N_COUNTERS
        self.counters, self.rarp = _views(mz.view(), nvrings)
        self.log_ctl = lookup_log_ctl(self.memory, name)
        self.port = port
        self.queues: list[VhostQueue | None] = [None] * len(self.qids)
        self._memories: list[GuestMemory | None] = [None] * len(self.qids)
        self._logs: list = [None] * len(self.qids)
        self._inflights: list = [None] * len(self.qids)
        self._unlogged_seen = [0] * len(self.qids)
        self._callfds: list[int] = [-1] * len(self.qids)
        self._errors_seen = [0] * len(self.qids)
        self._broken_seen = [False] * len(self.qids)

    def report_errors(self) -> None:
        """Log what the guest did wrong since the last call (poll loops call this now and then).

        Per ring: new bad chains by kind (descriptor loops, bad indirect
        tables, addresses outside the guest memory, ...; they are also counted
        in the port's ``rx_errors``/``tx_errors``), and once, a ring the data
        path stopped because it is broken (the avail index jumped by more
        than the ring size).
        """
        for i, q in enumerate(self.queues):
            if q is None:
                continue
            st = q.ctx.state
            n = int(st[STATE_ERRORS])
            if n != self._errors_seen[i]:
                errors = {name: int(st[STATE_ERR_BASE + code]) for code, name in ERR_NAMES.items()
                          if st[STATE_ERR_BASE + code]}
                log.warning("bad descriptor chains in a live ring", port=self.name, qid=self.qids[i],
                            new=n - self._errors_seen[i], errors=errors)
                self._errors_seen[i] = n
            if st[STATE_BROKEN] and not self._broken_seen[i]:
                self._broken_seen[i] = True
                log.error("vring is broken (avail index jumped past the ring size): queue stopped",
                          port=self.name, qid=self.qids[i])
            self._unlogged_seen[i] = report_unlogged(q.ctx.log.ctl, self._unlogged_seen[i], port=self.name,
                                                     qid=self.qids[i])
            report_inflight(q, port=self.name, qid=self.qids[i])

    def attach_queue(self, i: int, spec: dict, fds: list[int], resume):
        qid = self.qids[i]
        if resume is not None:  # this run was attached before (an earlier loop): resume where it stopped
            spec = dict(spec, base=resume[0], used_base=resume[1] if spec["packed"] else -1)
        nreg = len(spec["regions"])
        logfd, fds = take_log_fd(spec, fds)
        inflfd, fds = take_inflight_fd(spec, fds)
        extra = fds[nreg:]
        callfd = extra[0] if spec["has_call"] and extra else -1
        try:
            lg, lr = map_queue_log(spec, logfd, self.log_ctl[qid])
        except BaseException:
            close_fds(fds + ([inflfd] if inflfd >= 0 else []))
            raise
        infl, ia = map_queue_inflight(spec, inflfd, qid, port=self.name)
        try:
            mem, addrs = map_vring(spec, fds[:nreg])
        except BaseException:
            close_fds(extra)
            if lr is not None:
                lr.unmap()
            if ia is not None:
                ia.unmap()
            raise
        try:
            q = VhostQueue(
                *addrs,
                spec["size"],
                regions=mem.region_table(),
                packed=spec["packed"],
                features=spec["features"],
                last_avail_idx=spec["base"],
                last_used_idx=None if spec["used_base"] < 0 else spec["used_base"],
                callfd=callfd,
                rarp=self.rarp,
                legacy_ol_flags=spec["legacy_ol_flags"],
                port=self.port,
                counters=self.counters[qid],
                read_only=qid % 2 == 1,  # a net device's odd vrings are guest Tx: only dequeued
                log=lg,
                inflight=infl,
                keepalive=mem,
            )
            if spec.get("guest_notification") is not None:
                q.enable_notify(bool(spec["guest_notification"]))
        except BaseException:
            mem.unmap()
            if lr is not None:
                lr.unmap()
            if ia is not None:
                ia.unmap()
            close_fds(extra)
            raise
        close_fds(extra[1:])
        self._inflights[i] = ia
        self.queues[i] = q
        self._errors_seen[i] = 0
        self._broken_seen[i] = False
        self._memories[i] = mem
        self._logs[i] = lr
        self._unlogged_seen[i] = int(lg.ctl[LOG_CTL_UNLOGGED])
        self._callfds[i] = callfd
        return q.ctx

    def detach_queue(self, i: int):
        q = self.queues[i]
        errors = {name: int(q.ctx.state[STATE_ERR_BASE + code]) for code, name in ERR_NAMES.items()
                  if q.ctx.state[STATE_ERR_BASE + code]}
        if errors:
            log.warning("vring had bad descriptor chains", port=self.name, qid=self.qids[i], errors=errors)
        base = q.get_base()
        used = int(packed_dev_get_used_base(q.ctx.state)) if q.packed else base
        self.queues[i] = None
        mem, self._memories[i] = self._memories[i], None
        if mem is not None:
            mem.unmap()
        lr, self._logs[i] = self._logs[i], None
        if lr is not None:
            lr.unmap()
        ia, self._inflights[i] = self._inflights[i], None
        if ia is not None:
            ia.unmap()
        if self._callfds[i] >= 0:
            close_fds([self._callfds[i]])
            self._callfds[i] = -1
        return base, used


def vring_spec(dev, qid: int) -> tuple[dict, list[int]]:
    """The device-generic part of vring ``qid``'s hand-over: ``(spec, fds)``.

    ``spec``: vid, size, packed, features, the ring GPAs, ``base`` /
    ``used_base`` (packed: index | wrap << 15; split ``used_base`` -1), the
    regions (gpa, size, user address, mmap offset), ``has_call``,
    ``guest_notification``, the dirty log's ``log`` / ``log_desc_gpa`` /
    ``log_used_gpa`` (:meth:`~dataplane.vhost.dirty_log.LogControl.spec`) and
    ``postcopy`` (where to register the mapping while postcopy is on, else None:
    :mod:`~dataplane.vhost.postcopy`).  ``fds``: one per region, the log fd if a
    log is mapped (:func:`~dataplane.vhost.dirty_log.take_log_fd`), the inflight area's fd if one is
    mapped (``inflight``: :func:`~dataplane.vhost.inflight.take_inflight_fd`), then the call fd if any.
    A device class adds its own entries (and fds after these).
    """
    vq = dev.vrings[qid]
    regions = dev.memory.describe()
    spec = dict(
        vid=dev.vid,
        size=vq.size,
        packed=vq.packed,
        features=int(dev.features),
        desc_gpa=vq.desc_gpa,
        avail_gpa=vq.avail_gpa,
        used_gpa=vq.used_gpa,
        base=vq.base_value() & 0xFFFF,
        used_base=((vq.last_used_idx & 0x7FFF) | (vq.used_wrap_counter & 1) << 15) if vq.packed else -1,
        regions=[(r["guest_phys_addr"], r["size"], r["userspace_addr"], r["mmap_offset"]) for r in regions],
        has_call=vq.call_fd >= 0,
        guest_notification=vq.guest_notification,
        postcopy=dev.postcopy.client_address,
    )
    log_spec, log_fds = LogControl.spec(dev, vq)
    spec.update(log_spec)
    infl_spec, infl_fds = inflight_spec(dev, vq)
    spec.update(infl_spec)
    return spec, [r["fd"] for r in regions] + log_fds + infl_fds + ([vq.call_fd] if vq.call_fd >= 0 else [])


def restore_indices(vq, idx: tuple[int, int] | None) -> None:
    """Write the indices an lcore handed back (:meth:`QueueHandoff.stop_queue`) into the :class:`Vring`."""
    if idx is None:
        return
    base, used = idx
    if vq.packed:
        vq.last_avail_idx, vq.avail_wrap_counter = base & 0x7FFF, base >> 15 & 1
        vq.last_used_idx, vq.used_wrap_counter = used & 0x7FFF, used >> 15 & 1
    else:
        vq.last_avail_idx, vq.last_used_idx = base & 0xFFFF, used & 0xFFFF


def map_vring(spec: dict, region_fds: list[int]) -> tuple[GuestMemory, list[int]]:
    """Map the guest memory of a vring's hand-over ``spec`` from its region fds (taken over) and
    translate the ring's three areas; returns ``(memory, [desc, avail, used] host addresses)``.

    While postcopy is on (``spec["postcopy"]``) the mapping is registered with the
    fault relay before anything touches it; if that fails it is not used.

    Raises ValueError when the table cannot be mapped or registered, or a ring area is outside it.
    """
    nreg = len(spec["regions"])
    try:
        mem = GuestMemory.map_table([MemoryRegion(*r) for r in spec["regions"]], region_fds, max_regions=max(nreg, 1))
    except GuestMemoryError as e:
        raise ValueError(str(e)) from None
    if spec.get("postcopy"):
        try:
            register_client(mem, spec["postcopy"])
        except OSError as e:
            mem.unmap()
            raise ValueError(f"postcopy: guest memory not registered with the fault relay, not used: {e}") from None
    try:
        addrs = []
        for gpa, ln in zip((spec["desc_gpa"], spec["avail_gpa"], spec["used_gpa"]), _ring_sizes(spec)):
            hva = mem.gpa_to_hva(gpa, ln)
            if not hva:
                raise ValueError(f"ring area {gpa:#x}+{ln:#x} is outside the guest memory")
            addrs.append(hva)
    except BaseException:
        mem.unmap()
        raise
    return mem, addrs


def _ring_sizes(spec: dict) -> tuple[int, int, int]:
    n = spec["size"]
    if spec["packed"]:
        return 16 * n, 4, 4
    return 16 * n, 6 + 2 * n, 6 + 8 * n


_DISABLED: list = []


def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel the lcore side uses, in this process.

    Call it in the main process before launching lcores: a worker pinned to
    a busy cpu can take many seconds to compile, and meanwhile its rings are
    not polled.
    """
    H.warm_up()
    buf = np.zeros(1 << 14, np.uint8)
    a = (buf.ctypes.data + 4095) & ~4095
    for packed in (False, True):
        q = VhostQueue(a, a + 4096, a + 8192, 4, regions=np.zeros((1, 3), np.uint64), packed=packed, keepalive=buf)
        q.get_base()
        q.enable_notify(True)
        packed_dev_get_used_base(q.ctx.state)


def _disabled_queue() -> VhostQueue:
    """A split queue of size 1 over a private buffer, disabled: bursts on it do nothing."""
    if not _DISABLED:
        buf = np.zeros(4096, np.uint8)
        a = buf.ctypes.data
        q = VhostQueue(a, a + 64, a + 128, 1, regions=np.zeros((1, 3), np.uint64), enabled=False, keepalive=buf)
        _DISABLED.append(q)
    return _DISABLED[0]


def dummy_ctx():
    """The context of a vring that is not running: bursts on it do nothing."""
    return _disabled_queue().ctx


# inlined (numba IR) into their callers: the loop's vhost entries are then one level above the
# data path kernels, whose code LLVM optimises and emits once more at each level that links it
@inline_kernel
def vhost_rx_burst(ctx, mp, lcore, pkts, n):
    """``rte_eth_rx_burst``: up to ``n`` packets from the guest's Tx vring into ``pkts``; returns the count."""
    return dequeue_burst(ctx, mp, lcore, pkts, n)


@inline_kernel
def vhost_tx_burst(ctx, mp, lcore, pkts, n):
    """``rte_eth_tx_burst``: copy ``pkts[:n]`` into the guest's Rx vring; returns how many went.

    The mbufs that went are freed (the copy is in the guest); ``pkts[sent:n]``
    stay with the caller (free or retry them).
    """
    sent = enqueue_burst(ctx, mp, pkts, n)
    if sent > 0:
        pktmbuf_free_bulk(mp, lcore, pkts, sent)
    return sent
