"""Handing a blk device's vrings to the lcores that serve them (see :mod:`dataplane.rings.handoff`).

Main side, :class:`BlkVringHandoff` (the device's data path hooks): when a
vring is ready it posts the generic vring description
(:func:`~dataplane.vhost.handoff.vring_spec`) plus what a disk queue needs
-- the disk fd and how to map it, read-only, serial, DISCARD /
WRITE_ZEROES limits -- and the kick fd, to the lcore placed on the vring.

Lcore side, :class:`LcoreBlkQueues`: maps guest memory and the disk from the
fds it was sent and builds a :class:`~dataplane.vhost.blk.requests.BlkQueue`
per vring.  :func:`blk_loop` is the poll loop (numba, whole bursts); when no
request came for a while it returns, and :meth:`LcoreBlkQueues.sleep` asks
the guest for kicks and blocks on the kick fds (a busy guest is served by
polling with notifications off, an idle one costs no cpu).

Per-vring counters (:data:`~dataplane.vhost.blk.requests.COUNTER_NAMES`)
live in memzone ``vhost_blk_<name>``, so the main process reads them while
lcores run.  Dirty logging is handed over as for net vrings (the log fd in the
hand-over, the flag in memzone ``vhost_log_<name>``; see
:mod:`~dataplane.vhost.handoff`).
"""

from __future__ import annotations

import os
import select

import numpy as np

from dataplane import log as dplog
from dataplane.lcores import launch
from dataplane.rings import handoff as H
from dataplane.rings.atomics import load_acquire
from dataplane.rings.handoff import close_fds, queues_changed
from dataplane.rings.jit import loop_kernel
from dataplane.rings.virtqueue import ERR_NAMES, STATE_ERR_BASE
from dataplane.vhost.device import DataPathHooks
from dataplane.vhost.dirty_log import LOG_CTL_UNLOGGED, LogControl, lookup_log_ctl, map_queue_log, report_unlogged, take_log_fd
from dataplane.vhost.handoff import map_vring, restore_indices, vring_spec
from dataplane.vhost.inflight import report_inflight, map_queue_inflight, take_inflight_fd

from .requests import COUNTER_NAMES, N_COUNTERS, BlkLimits, BlkQueue, blk_burst, disabled_queue_ctx
from .storage import Storage, map_disk

__all__ = ["BlkVringHandoff", "LcoreBlkQueues", "blk_loop", "serve_queues", "counters_zone", "warm_up"]

log = dplog.get_logger("dataplane.vhost.blk")

# blk_loop's return codes
LOOP_STOP = 1  # the stop flag is up
LOOP_SERVICE = 0  # the main process posted a queue request
LOOP_HOUSEKEEPING = 2  # 2**20 turns: report errors
LOOP_IDLE = 3  # no request for ``idle_turns`` turns: sleep on the kick fds

#: Polling turns without a request before the lcore sleeps on the kick fds.
IDLE_TURNS = 20000
#: Longest sleep on the kick fds (the stop flag and queue requests are seen after it).
SLEEP_S = 0.05


def counters_zone(name: str) -> str:
    return f"vhost_blk_{name}"


class BlkVringHandoff(H.QueueHandoff, DataPathHooks):
    """Main-process side: hands the ready vrings of blk device ``name`` (``nvrings`` of them) to their lcores.

    ``storage`` is the disk, ``readonly`` / ``serial`` / ``limits`` what the
    queues enforce and answer.  Vrings are placed on lcores with :meth:`place`.
    ``counters`` (int64 ``[nvrings, N_COUNTERS]``) is shared with the lcores.
    """

    def __init__(self, name: str, nvrings: int, storage: Storage, *, readonly: bool, serial: bytes,
                 limits: BlkLimits, memory=None, launcher=None, stop_timeout: float = 5.0):
        super().__init__(name, nvrings, memory=memory, launcher=launcher, stop_timeout=stop_timeout)
        self.storage = storage
        self.readonly = bool(readonly)
        self.serial = bytes(serial)
        self.limits = limits
        try:
            self._cz = self.memory.memzone_reserve(counters_zone(name), self.nqueues * N_COUNTERS * 8)
        except BaseException:
            super().close()
            raise
        self.counters = self._cz.view(np.int64).reshape(self.nqueues, N_COUNTERS)
        self.counters[:] = 0
        try:
            self.log_control = LogControl(self.memory, name, self.nqueues)
        except BaseException:
            self.close()
            raise

    def on_queue_start(self, dev, qid: int) -> None:
        if qid >= self.nqueues:
            log.warning("vring beyond the device's queues is not served", port=self.name, vid=dev.vid, qid=qid)
            return
        spec, fds = vring_spec(dev, qid)
        vq = dev.vrings[qid]
        s = self.storage
        spec.update(has_kick=vq.kick_fd >= 0, disk_map_size=s.map_size, disk_size=s.size, disk_private=s.private,
                    disk_sync=s.file_backed, readonly=self.readonly, serial=self.serial, limits=tuple(self.limits))
        fds = fds + ([vq.kick_fd] if vq.kick_fd >= 0 else []) + [s.fd]
        self.log_control.queue_started(dev, qid)
        self.start_queue(qid, spec, fds)

    def on_queue_stop(self, dev, qid: int) -> None:
        if qid < self.nqueues:
            restore_indices(dev.vrings[qid], self.stop_queue(qid))

    def on_log_all(self, dev, enable: bool) -> None:
        self.log_control.set_all(enable, [vq.index for vq in dev.vrings if vq.started])

    def stats(self) -> list[dict]:
        """Per-vring counters."""
        return [{n: int(row[i]) for i, n in enumerate(COUNTER_NAMES)} for row in self.counters]

    def close(self) -> None:
        if getattr(self, "log_control", None) is not None:
            self.log_control.close()
            self.log_control = None
        if getattr(self, "_cz", None) is not None:
            try:
                self.memory.memzone_free(self._cz.name)
            except Exception:
                pass
            self._cz = None
        super().close()


class LcoreBlkQueues(H.LcoreQueues):
    """Lcore side: the vrings ``qids`` of blk device ``name`` this lcore serves (``ctxs``: BlkQueueCtx)."""

    def __init__(self, name: str, qids, *, memory=None):
        self.dummy_ctx = disabled_queue_ctx()
        super().__init__(name, qids, memory=memory)
        cz = self.memory.memzone_lookup(counters_zone(name))
        self.counters = cz.view(np.int64).reshape(-1, N_COUNTERS)
        self.log_ctl = lookup_log_ctl(self.memory, name)
        n = len(self.qids)
        self._unlogged_seen = [0] * n
        self.queues: list[BlkQueue | None] = [None] * n
        self._held: list[tuple | None] = [None] * n  # (guest memory, disk mapping, fds kept open, log mapping, inflight mapping)
        self._kick: list[int] = [-1] * n
        self._reported = [False] * n

    def attach_queue(self, i: int, spec: dict, fds: list[int], resume):
        qid = self.qids[i]
        if resume is not None:
            spec = dict(spec, base=resume[0], used_base=resume[1] if spec["packed"] else -1)
        nreg = len(spec["regions"])
        logfd, fds = take_log_fd(spec, fds)
        inflfd, fds = take_inflight_fd(spec, fds)
        extra = list(fds[nreg:])
        callfd = extra.pop(0) if spec["has_call"] else -1
        kickfd = extra.pop(0) if spec["has_kick"] else -1
        diskfd = extra.pop(0)
        keep = [fd for fd in (callfd, kickfd) if fd >= 0]
        try:
            lg, lr = map_queue_log(spec, logfd, self.log_ctl[qid])
        except BaseException:
            close_fds(fds + ([inflfd] if inflfd >= 0 else []))
            raise
        infl, ia = map_queue_inflight(spec, inflfd, qid, port=self.name)
        try:
            mem, addrs = map_vring(spec, fds[:nreg])
        except BaseException:
            close_fds(keep + [diskfd] + extra)
            if lr is not None:
                lr.unmap()
            if ia is not None:
                ia.unmap()
            raise
        disk = None
        try:
            disk = map_disk(diskfd, spec["disk_map_size"], private=spec["disk_private"])
            q = BlkQueue(
                *addrs,
                spec["size"],
                regions=mem.region_table(),
                disk=disk.array[: spec["disk_size"]],
                packed=spec["packed"],
                features=spec["features"],
                readonly=spec["readonly"],
                sync_fd=diskfd if spec["disk_sync"] else -1,
                serial=spec["serial"],
                limits=BlkLimits(*spec["limits"]),
                last_avail_idx=spec["base"],
                last_used_idx=None if spec["used_base"] < 0 else spec["used_base"],
                callfd=callfd,
                counters=self.counters[qid],
                log=lg,
                inflight=infl,
                keepalive=(mem, disk),
            )
            q.enable_notify(False)  # polled from now on; the loop asks for kicks before it sleeps
        except BaseException:
            if disk is not None:
                disk.close()
            mem.unmap()
            if lr is not None:
                lr.unmap()
            if ia is not None:
                ia.unmap()
            close_fds(keep + [diskfd] + extra)
            raise
        close_fds(extra)
        if spec["disk_sync"]:
            keep.append(diskfd)  # FLUSH fdatasyncs it
        else:
            close_fds([diskfd])  # the mapping holds the memory
        self.queues[i] = q
        self._held[i] = (mem, disk, keep, lr, ia)
        self._unlogged_seen[i] = int(lg.ctl[LOG_CTL_UNLOGGED])
        self._kick[i] = kickfd
        self._reported[i] = False
        return q.ctx

    def detach_queue(self, i: int):
        q = self.queues[i]
        self._report(i, q)
        idx = q.get_base(), q.get_used_base()
        self.queues[i] = None
        q.ctx = None
        mem, disk, keep, lr, ia = self._held[i]
        self._held[i] = None
        self._kick[i] = -1
        disk.close()
        mem.unmap()
        if lr is not None:
            lr.unmap()
        if ia is not None:
            ia.unmap()
        close_fds(keep)
        return idx

    def _report(self, i: int, q: BlkQueue) -> None:
        if q.broken and not self._reported[i]:
            self._reported[i] = True
            st = q.stats()
            errors = {name: int(q.ctx.state[STATE_ERR_BASE + code]) for code, name in ERR_NAMES.items()
                      if q.ctx.state[STATE_ERR_BASE + code]}
            log.error("virtio-blk queue stopped: a request could not be answered (the front-end must reset the ring)",
                      port=self.name, qid=self.qids[i], bad_chains=st["bad_chains"], no_status=st["no_status"],
                      ring_errors=errors)

    def report_errors(self) -> None:
        for i, q in enumerate(self.queues):
            if q is not None:
                self._report(i, q)
                self._unlogged_seen[i] = report_unlogged(q.ctx.log.ctl, self._unlogged_seen[i], port=self.name,
                                                         qid=self.qids[i])
                report_inflight(q, port=self.name, qid=self.qids[i])

    def sleep(self, timeout: float = SLEEP_S) -> None:
        """Ask every served vring for kicks, then block on their kick fds (at most ``timeout``)."""
        live = [(q, self._kick[i]) for i, q in enumerate(self.queues) if q is not None and not q.broken]
        if any(kick < 0 for _, kick in live):
            return  # a vring without a kick fd is polled: never sleep
        pending = False
        for q, _ in live:
            pending |= q.enable_notify(True)
        if not pending:
            ready, _, _ = select.select([k for _, k in live], [], [], timeout)
            for fd in ready:
                try:
                    os.eventfd_read(fd)
                except (BlockingIOError, OSError):
                    pass
        for q, _ in live:
            q.enable_notify(False)


@loop_kernel
def blk_loop(ctxs, stop, ctl, qids, gens, burst, idle_turns):
    """Serve the vrings ``ctxs`` until the stop flag (LOOP_STOP), a queue request (LOOP_SERVICE),
    2**20 turns (LOOP_HOUSEKEEPING) or ``idle_turns`` turns without a request (LOOP_IDLE; 0: never)."""
    turn = 0
    idle = 0
    while True:
        turn += 1
        if (turn & 15) == 0:
            if load_acquire(stop, 0) != 0:
                return LOOP_STOP
            if queues_changed(ctl, qids, gens):
                return LOOP_SERVICE
            if (turn & 0xFFFFF) == 0:
                return LOOP_HOUSEKEEPING
        got = 0
        for i in range(len(ctxs)):
            got += blk_burst(ctxs[i], burst)
        if got:
            idle = 0
        else:
            idle += 1
            if idle_turns > 0 and idle >= idle_turns:
                return LOOP_IDLE


def serve_queues(arg) -> bool:
    """Lcore function: serve vrings ``qids`` of blk device ``name`` until the stop flag.  ``arg`` = (name, qids, burst)."""
    name, qids, burst = arg
    stop = launch.stop_flag()
    lv = LcoreBlkQueues(name, qids)
    try:
        while True:
            rc = blk_loop(lv.ctxs, stop, lv.ctl, lv.qids_arr, lv.gens, burst, IDLE_TURNS)
            if rc == LOOP_STOP:
                return True
            lv.report_errors()
            if rc == LOOP_SERVICE:
                lv.service(wait=0.001)
            elif rc == LOOP_IDLE:
                lv.sleep()
    finally:
        lv.close()


def warm_up(nqueues_per_lcore=(1,), burst: int = 32) -> None:
    """Compile (or load) the loop and the queue kernels here, before lcores need them."""
    H.warm_up()
    ctx = disabled_queue_ctx()
    stop = np.ones(16, np.uint32)
    for n in sorted(set(nqueues_per_lcore)):
        blk_loop(tuple(ctx for _ in range(n)), stop, np.zeros(8, np.int64), np.zeros(0, np.int64),
                 np.zeros(0, np.int64), burst, IDLE_TURNS)
