"""Handing vrings from the vhost control plane to the lcore processes that poll them.

The vhost-events thread of the main process negotiates a device; the rings
are polled by lcores, which are other processes.  This module carries a
ready vring across (the design's step "hand configured queues to forwarding
workers") and takes it back before the control plane changes or tears down
anything the lcore uses.

Shared state (one memzone per port, ``vhost_<name>``): per vring a control
block ``ctl[qid, CTL_*]`` and a counter block (the data path's ``C_*``
slots, so the main process reads statistics while lcores run), and the
device's SEND_RARP array.

Main side, :class:`VringHandoff` (a :class:`~dataplane.vhost.device.DataPathHooks`):

* ``on_queue_start``: posts the ring's description (region fds and layout,
  ring GPAs, size, features, indices, call fd) to the lcore placed on that
  vring (:meth:`VringHandoff.place`) through the launcher mailbox (the main
  lcore gets it in-process), then publishes ``REQ = RUN`` with a new
  generation number.  It does not wait.
* ``on_queue_stop``: publishes ``REQ = STOP`` with a new generation (atomic
  exchange), then, if the lcore has the ring attached, waits until the lcore
  acknowledges that generation.  The lcore detaches only between bursts and
  writes the ring's device indices into the control block first; they are
  copied back into the :class:`~dataplane.vhost.device.Vring` (so
  ``GET_VRING_BASE`` returns what the lcore really consumed).

Lcore side, :class:`LcoreVrings`: a fixed set of vring slots with one
:class:`~dataplane.vhost.virtio_net.VhostQueueCtx` each (a disabled dummy
while the ring is not running).  A poll loop compares ``ctl[qid, REQ_GEN]``
with the generation it runs (:func:`vrings_changed`, a numba function, once
per loop turn) and returns to Python when they differ; then
:meth:`LcoreVrings.service` applies the request: maps the guest memory
itself (from the fds it was sent), builds the queue, or detaches it and
unmaps.

The attach/stop race is closed Dekker-style: the lcore sets ``ATTACHED``
(exchange) and then re-reads ``REQ_GEN``; the main process exchanges
``REQ_GEN`` and then reads ``ATTACHED``.  Either the main process sees the
ring attached and waits, or the lcore sees the newer request and never
touches the ring.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import numpy as np

from dataplane import log as dplog
from dataplane.lcores import launch
from dataplane.rings.atomics import exchange, load_acquire, py_load_acquire, py_store_release
from dataplane.rings.jit import kernel
from dataplane.rings.packed import packed_dev_get_used_base
from dataplane.rings.virtqueue import ERR_NAMES, STATE_BROKEN, STATE_ERR_BASE, STATE_ERRORS
from dataplane.vhost.device import DataPathHooks
from dataplane.vhost.guest_memory import GuestMemory, GuestMemoryError
from dataplane.vhost.library import RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS
from dataplane.vhost.protocol import MemoryRegion
from dataplane.vhost.virtio_net import N_COUNTERS, RARP_FLAG, RARP_MAC, VhostQueue, _mac_int

__all__ = [
    "CTL_SLOTS",
    "REQ_RUN",
    "REQ_STOP",
    "VringHandoff",
    "LcoreVrings",
    "vrings_changed",
    "memzone_name",
]

log = dplog.get_logger("dataplane.vhost")

# -- control block slots (int64) ---------------------------------------------------
CTL_REQ_GEN = 0  # main: generation of the latest request
CTL_REQ = 1  # main: REQ_RUN / REQ_STOP
CTL_ACK_GEN = 2  # lcore: the generation it has acted on
CTL_ATTACHED = 3  # lcore: 1 while its loop may touch the ring
CTL_BASE = 4  # lcore, at detach: last_avail_idx (packed: | wrap << 15)
CTL_USED = 5  # lcore, at detach: packed last_used | wrap << 15 (split: = BASE)
CTL_BASE_GEN = 6  # lcore, at detach: the RUN generation BASE/USED belong to
CTL_LCORE = 7  # main: lcore the ring is placed on (-1: none)
CTL_SLOTS = 8

REQ_STOP = 0
REQ_RUN = 1



def memzone_name(name: str) -> str:
    return f"vhost_{name}"


def _layout(nvrings: int) -> tuple[int, int, int]:
    ctl = nvrings * CTL_SLOTS * 8
    counters = nvrings * N_COUNTERS * 8
    return ctl, counters, ctl + counters + 2 * 8


def _views(buf: np.ndarray, nvrings: int):
    ctl_b, cnt_b, total = _layout(nvrings)
    raw = buf[:total].view(np.int64)
    ctl = raw[: nvrings * CTL_SLOTS]
    counters = raw[nvrings * CTL_SLOTS : nvrings * CTL_SLOTS + nvrings * N_COUNTERS].reshape(nvrings, N_COUNTERS)
    rarp = raw[nvrings * CTL_SLOTS + nvrings * N_COUNTERS :]
    return ctl, counters, rarp


@kernel
def _xchg(ary, idx, val):
    return exchange(ary, idx, val)


@kernel
def vrings_changed(ctl, qids, gens):
    """True when the main process posted a request for one of the slots (``ctl[qid].REQ_GEN != gens[i]``).

    Poll loops call this once per turn and return to Python when it is true.
    """
    for i in range(qids.shape[0]):
        if load_acquire(ctl, qids[i] * CTL_SLOTS + CTL_REQ_GEN) != gens[i]:
            return True
    return False


# In-process "mailbox" for vrings placed on the main lcore: (name, qid, gen, spec, fds).
_LOCAL = collections.deque()
# Received but not yet applied start messages: (name, qid) -> (gen, spec, fds).
_PENDING: dict[tuple[str, int], tuple[int, dict, list[int]]] = {}
_PENDING_LOCK = threading.Lock()


def _close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _stash(msg, fds) -> None:
    if not (isinstance(msg, tuple) and len(msg) == 5 and msg[0] == "vring"):
        log.warning("mailbox message ignored (not a vring hand-over)", message=repr(msg)[:80])
        _close_fds(fds)
        return
    _, name, qid, gen, spec = msg
    with _PENDING_LOCK:
        old = _PENDING.pop((name, qid), None)
        if old is not None and old[0] > gen:  # keep the newer one
            _PENDING[(name, qid)] = old
            _close_fds(fds)
            return
        if old is not None:
            _close_fds(old[2])
        _PENDING[(name, qid)] = (gen, spec, list(fds))


def _drain_inbox(wait: float = 0.0) -> None:
    """Move every delivered message (mailbox of this worker, or the local deque) to ``_PENDING``."""
    while _LOCAL:
        try:
            name, qid, gen, spec, fds = _LOCAL.popleft()
        except IndexError:
            break
        _stash(("vring", name, qid, gen, spec), fds)
    if launch._WORKER is None:
        return
    first = True
    while True:
        got = launch.mailbox_recv(wait if first else 0.0)
        first = False
        if got is None:
            return
        _stash(*got)


class VringHandoff(DataPathHooks):
    """Main-process side: hands a device's ready vrings to their lcores and takes them back.

    ``name`` names the shared memzone (one per port); ``nvrings`` is the
    number of vrings the port may use (2 per queue pair).  ``memory`` and
    ``launcher`` default to the running EAL's.  Vrings are placed on lcores
    with :meth:`place`; a vring with no lcore is never started.
    """

    def __init__(self, name: str, nvrings: int, *, memory=None, launcher=None, stop_timeout: float = 5.0):
        if memory is None or launcher is None:
            from dataplane.lcores import eal as _eal

            e = _eal.current()
            memory = memory or e.memory
            launcher = launcher or e.launcher
        self.name = name
        self.nvrings = int(nvrings)
        self.memory = memory
        self.launcher = launcher
        self.stop_timeout = stop_timeout
        self._mz = memory.memzone_reserve(memzone_name(name), _layout(self.nvrings)[2])
        buf = self._mz.view()
        buf[:] = 0
        self.ctl, self.counters, self.rarp = _views(buf, self.nvrings)
        for q in range(self.nvrings):
            self.ctl[q * CTL_SLOTS + CTL_LCORE] = -1
        self._gen = np.zeros(self.nvrings, np.int64)
        self._run_gen = np.full(self.nvrings, -1, np.int64)
        self._lock = threading.Lock()

    # -- placement --------------------------------------------------------------
    def place(self, qid: int, lcore: int | None) -> None:
        """Put vring ``qid`` on ``lcore`` (None: nowhere).  Takes effect at the next start."""
        self._check_qid(qid)
        self.ctl[qid * CTL_SLOTS + CTL_LCORE] = -1 if lcore is None else int(lcore)

    def lcore_of(self, qid: int) -> int | None:
        v = int(self.ctl[qid * CTL_SLOTS + CTL_LCORE])
        return None if v < 0 else v

    def attached(self, qid: int) -> bool:
        return bool(py_load_acquire(self.ctl, qid * CTL_SLOTS + CTL_ATTACHED))

    def running(self, qid: int) -> bool:
        """A RUN request is current for ``qid`` (the lcore may not have attached yet)."""
        return int(self.ctl[qid * CTL_SLOTS + CTL_REQ]) == REQ_RUN

    def _check_qid(self, qid: int) -> None:
        if not 0 <= qid < self.nvrings:
            raise ValueError(f"vring {qid} out of range: port {self.name!r} has {self.nvrings} vrings")

    # -- DataPathHooks ------------------------------------------------------------
    def on_queue_start(self, dev, qid: int) -> None:
        if qid >= self.nvrings:
            log.warning("vring beyond the port's queues is not polled", port=self.name, vid=dev.vid, qid=qid)
            return
        lcore = self.lcore_of(qid)
        if lcore is None:
            log.info("vring has no lcore; not polled", port=self.name, vid=dev.vid, qid=qid)
            return
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
            legacy_ol_flags=not (dev.config.flags & RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS),
        )
        fds = [r["fd"] for r in regions] + ([vq.call_fd] if vq.call_fd >= 0 else [])
        with self._lock:
            gen = int(self._gen[qid]) + 1
            self._gen[qid] = gen
            self._run_gen[qid] = gen
            if self.launcher is None or lcore == self.launcher.main_lcore:
                _LOCAL.append((self.name, qid, gen, spec, [os.dup(fd) for fd in fds]))
            else:
                try:
                    self.launcher.post(lcore, ("vring", self.name, qid, gen, spec), fds)
                except (OSError, KeyError) as e:
                    log.error("cannot hand the vring to its lcore", port=self.name, qid=qid, lcore=lcore, error=str(e))
                    return
            c = self.ctl
            c[qid * CTL_SLOTS + CTL_REQ] = REQ_RUN
            py_store_release(c, qid * CTL_SLOTS + CTL_REQ_GEN, gen)
        log.debug("vring handed to lcore", port=self.name, vid=dev.vid, qid=qid, lcore=lcore, gen=gen)

    def on_queue_stop(self, dev, qid: int) -> None:
        if qid >= self.nvrings:
            return
        with self._lock:
            gen = int(self._gen[qid]) + 1
            self._gen[qid] = gen
            c = self.ctl
            base_i = qid * CTL_SLOTS
            c[base_i + CTL_REQ] = REQ_STOP
            _xchg(c, base_i + CTL_REQ_GEN, gen)
            if py_load_acquire(c, base_i + CTL_ATTACHED):
                self._wait_ack(qid, gen)
            run_gen = int(self._run_gen[qid])
            self._run_gen[qid] = -1
            if run_gen >= 0 and int(py_load_acquire(c, base_i + CTL_BASE_GEN)) == run_gen:
                vq = dev.vrings[qid]
                base, used = int(c[base_i + CTL_BASE]), int(c[base_i + CTL_USED])
                if vq.packed:
                    vq.last_avail_idx, vq.avail_wrap_counter = base & 0x7FFF, base >> 15 & 1
                    vq.last_used_idx, vq.used_wrap_counter = used & 0x7FFF, used >> 15 & 1
                else:
                    vq.last_avail_idx, vq.last_used_idx = base & 0xFFFF, used & 0xFFFF

    def _wait_ack(self, qid: int, gen: int) -> None:
        lcore = self.lcore_of(qid)
        deadline = time.monotonic() + self.stop_timeout
        i = qid * CTL_SLOTS
        while int(py_load_acquire(self.ctl, i + CTL_ACK_GEN)) < gen and py_load_acquire(self.ctl, i + CTL_ATTACHED):
            if self._lcore_gone(lcore):
                log.warning("lcore polling the vring is gone", port=self.name, qid=qid, lcore=lcore)
                return
            if time.monotonic() > deadline:
                log.error("lcore did not release the vring in time", port=self.name, qid=qid, lcore=lcore,
                          timeout=self.stop_timeout)
                return
            time.sleep(0.0002)

    def _lcore_gone(self, lcore) -> bool:
        if self.launcher is None or lcore is None or lcore == self.launcher.main_lcore:
            return False
        try:
            return self.launcher.get_state(lcore) is launch.LcoreState.DEAD
        except Exception:
            return True

    def on_send_rarp(self, dev) -> None:
        self.rarp[RARP_MAC] = _mac_int(dev.mac)
        py_store_release(self.rarp, RARP_FLAG, 1)

    def on_guest_notification(self, dev, qid: int, enable: bool) -> None:
        pass  # applied by the lcore from the spec at the next start (``Vring.guest_notification``)

    def close(self) -> None:
        """Free the memzone (every vring must be stopped)."""
        if self._mz is not None:
            try:
                self.memory.memzone_free(self._mz.name)
            except Exception:
                pass
            self._mz = None


class LcoreVrings:
    """Lcore side: the vrings of port ``name`` this lcore polls (``qids``), as queue contexts.

    ``ctxs[i]`` is the :class:`~dataplane.vhost.virtio_net.VhostQueueCtx`
    of ``qids[i]`` (a disabled dummy while that ring is not running);
    ``ctl``, ``qids_arr`` and ``gens`` are what :func:`vrings_changed` takes.
    Call :meth:`service` when it says so, and :meth:`close` before the loop's
    function returns (it detaches every ring).
    """

    def __init__(self, name: str, qids, *, memory=None, nvrings: int | None = None, port: int = 0xFFFF):
        if memory is None:
            from dataplane.lcores import eal as _eal

            memory = _eal.current_memory()
        mz = memory.memzone_lookup(memzone_name(name))
        if nvrings is None:
            nvrings = _nvrings_of(mz.size)
        self.name = name
        self.ctl, self.counters, self.rarp = _views(mz.view(), nvrings)
        self._mz = mz
        self.qids = [int(q) for q in qids]
        self.qids_arr = np.array(self.qids, np.int64)
        self.gens = np.zeros(len(self.qids), np.int64)  # generation 0 = "nothing asked yet"
        self.port = port
        self.queues: list[VhostQueue | None] = [None] * len(self.qids)
        self._memories: list[GuestMemory | None] = [None] * len(self.qids)
        self._callfds: list[int] = [-1] * len(self.qids)
        self._run_gens: list[int] = [-1] * len(self.qids)
        self._errors_seen = [0] * len(self.qids)
        self._broken_seen = [False] * len(self.qids)
        self._kept: list = [None] * len(self.qids)  # (gen, spec, fds) of each attached ring
        self._dummy = _disabled_queue()
        self.ctxs = tuple(self._dummy.ctx for _ in self.qids)

    def changed(self) -> bool:
        return bool(vrings_changed(self.ctl, self.qids_arr, self.gens))

    def service(self, wait: float = 0.0) -> bool:
        """Apply pending requests; True when ``ctxs`` changed.  Only between bursts."""
        _drain_inbox(wait)
        changed = False
        ctxs = list(self.ctxs)
        for i, qid in enumerate(self.qids):
            b = qid * CTL_SLOTS
            gen = int(py_load_acquire(self.ctl, b + CTL_REQ_GEN))
            if gen == self.gens[i]:
                continue
            if self.queues[i] is not None:
                self._detach(i)
                ctxs[i] = self._dummy.ctx
                changed = True
            if self._kept[i] is not None:  # superseded by this request
                _close_fds(self._kept[i][2])
                self._kept[i] = None
            if int(self.ctl[b + CTL_REQ]) == REQ_RUN:
                with _PENDING_LOCK:
                    item = _PENDING.get((self.name, qid))
                    if item is not None and item[0] <= gen:
                        del _PENDING[(self.name, qid)]
                    else:
                        item = None
                if item is None:
                    continue  # the message is still on its way: look again next turn
                mgen, spec, fds = item
                if mgen != gen:  # a stale start (a newer request overtook it)
                    _close_fds(fds)
                    continue
                _xchg(self.ctl, b + CTL_ATTACHED, 1)
                if int(py_load_acquire(self.ctl, b + CTL_REQ_GEN)) != gen:  # stopped meanwhile
                    py_store_release(self.ctl, b + CTL_ATTACHED, 0)
                    _close_fds(fds)
                    continue
                try:
                    self._attach(i, gen, spec, fds)
                    ctxs[i] = self.queues[i].ctx
                    changed = True
                except (GuestMemoryError, ValueError) as e:
                    log.error("cannot attach vring", port=self.name, qid=qid, error=str(e))
                    py_store_release(self.ctl, b + CTL_ATTACHED, 0)
            self.gens[i] = gen
            py_store_release(self.ctl, b + CTL_ACK_GEN, gen)
        self.ctxs = tuple(ctxs)
        return changed

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

    def _attach(self, i: int, gen: int, spec: dict, fds: list[int]) -> None:
        qid = self.qids[i]
        b = qid * CTL_SLOTS
        keep = [os.dup(fd) for fd in fds]  # to hand the ring to a later loop of this process (close())
        if int(py_load_acquire(self.ctl, b + CTL_BASE_GEN)) == gen:
            # this run was attached before (an earlier loop): resume where it stopped
            spec = dict(spec, base=int(self.ctl[b + CTL_BASE]),
                        used_base=int(self.ctl[b + CTL_USED]) if spec["packed"] else -1)
        try:
            self._attach_mapped(i, gen, spec, fds)
        except BaseException:
            _close_fds(keep)
            raise
        self._kept[i] = (gen, spec, keep)

    def _attach_mapped(self, i: int, gen: int, spec: dict, fds: list[int]) -> None:
        qid = self.qids[i]
        nreg = len(spec["regions"])
        region_fds, extra = fds[:nreg], fds[nreg:]
        callfd = extra[0] if spec["has_call"] and extra else -1
        try:
            mem = GuestMemory.map_table([MemoryRegion(*r) for r in spec["regions"]], region_fds,
                                        max_regions=max(nreg, 1))
        except BaseException:
            _close_fds(extra)
            raise
        try:
            sizes = _ring_sizes(spec)
            addrs = []
            for gpa, ln in zip((spec["desc_gpa"], spec["avail_gpa"], spec["used_gpa"]), sizes):
                hva = mem.gpa_to_hva(gpa, ln)
                if not hva:
                    raise ValueError(f"ring area {gpa:#x}+{ln:#x} is outside the guest memory")
                addrs.append(hva)
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
                keepalive=mem,
            )
            if spec.get("guest_notification") is not None:
                q.enable_notify(bool(spec["guest_notification"]))
        except BaseException:
            mem.unmap()
            _close_fds(extra)
            raise
        _close_fds(extra[1:])
        self.queues[i] = q
        self._errors_seen[i] = 0
        self._broken_seen[i] = False
        self._memories[i] = mem
        self._callfds[i] = callfd
        self._run_gens[i] = gen
        log.debug("vring attached", port=self.name, qid=qid, gen=gen, lcore=launch.lcore_id())

    def _detach(self, i: int) -> None:
        q = self.queues[i]
        b = self.qids[i] * CTL_SLOTS
        errors = {name: int(q.ctx.state[STATE_ERR_BASE + code]) for code, name in ERR_NAMES.items()
                  if q.ctx.state[STATE_ERR_BASE + code]}
        if errors:
            log.warning("vring had bad descriptor chains", port=self.name, qid=self.qids[i], errors=errors)
        base = q.get_base()
        used = int(packed_dev_get_used_base(q.ctx.state)) if q.packed else base
        self.ctl[b + CTL_BASE] = base
        self.ctl[b + CTL_USED] = used
        py_store_release(self.ctl, b + CTL_BASE_GEN, self._run_gens[i])
        self.queues[i] = None
        py_store_release(self.ctl, b + CTL_ATTACHED, 0)
        mem, self._memories[i] = self._memories[i], None
        if mem is not None:
            mem.unmap()
        if self._callfds[i] >= 0:
            _close_fds([self._callfds[i]])
            self._callfds[i] = -1
        log.debug("vring detached", port=self.name, qid=self.qids[i], base=base)

    def close(self) -> None:
        """Detach every ring (writing its indices back) and acknowledge pending requests.

        A ring that is still meant to run is handed back to this process's
        pending hand-overs, so the next loop on this lcore (e.g. after testpmd's
        ``stop`` / ``start``) attaches it again where it stopped.
        """
        for i, qid in enumerate(self.qids):
            if self.queues[i] is not None:
                self._detach(i)
            b = qid * CTL_SLOTS
            gen = int(py_load_acquire(self.ctl, b + CTL_REQ_GEN))
            kept, self._kept[i] = self._kept[i], None
            if kept is not None:
                if kept[0] == gen and int(self.ctl[b + CTL_REQ]) == REQ_RUN:
                    _stash(("vring", self.name, qid, kept[0], kept[1]), kept[2])
                else:
                    _close_fds(kept[2])
            self.gens[i] = gen
            py_store_release(self.ctl, b + CTL_ACK_GEN, gen)
        self.ctxs = tuple(self._dummy.ctx for _ in self.qids)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _nvrings_of(size: int) -> int:
    per = (CTL_SLOTS + N_COUNTERS) * 8
    return (size - 16) // per


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
    ctl = np.zeros(CTL_SLOTS, np.int64)
    _xchg(ctl, 0, 0)
    py_store_release(ctl, 0, py_load_acquire(ctl, 0))
    vrings_changed(ctl, np.zeros(1, np.int64), np.zeros(1, np.int64))
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
