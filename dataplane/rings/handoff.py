"""Handing queues from the main process to the lcore processes that poll them, and taking them back.

The control plane (vhost-user negotiation, a virtio-user's connection) runs
in the main process; the rings are polled by lcores, which are other
processes.  This module is the protocol between the two, whatever the queue
kind; :mod:`dataplane.vhost.handoff` and :mod:`dataplane.virtio.handoff`
say what a queue is.

Shared state: a control block per queue (``ctl[qid, CTL_*]``, int64, in memzone
``qh_<name>``).  The main side (:class:`QueueHandoff`):

* :meth:`QueueHandoff.start_queue` posts the queue's description (a picklable
  ``spec`` and the fds it needs) to the lcore placed on it (launcher mailbox;
  in-process for the main lcore) and publishes ``REQ = RUN`` with a new
  generation.  It does not wait.
* :meth:`QueueHandoff.stop_queue` publishes ``REQ = STOP`` with a new
  generation (atomic exchange) and, if the lcore has the queue attached,
  waits until it acknowledges that generation.  The lcore detaches only
  between bursts and first writes the queue's indices into the control block;
  they are returned.

The lcore side (:class:`LcoreQueues`) holds one context per queue slot (a
dummy while the queue is not running).  Its poll loop compares
``ctl[qid, REQ_GEN]`` with the generation it runs (:func:`queues_changed`, a
numba function) and returns to Python when they differ; :meth:`LcoreQueues.service`
then applies the request through the subclass's ``attach_queue`` /
``detach_queue``.

The attach/stop race is closed Dekker-style: the lcore sets ``ATTACHED``
(exchange) and then re-reads ``REQ_GEN``; the main process exchanges
``REQ_GEN`` and then reads ``ATTACHED``.  Either the main process sees the
queue attached and waits, or the lcore sees the newer request and never
touches the queue.  A queue still meant to run when its loop ends
(:meth:`LcoreQueues.close`) is kept for the next loop of that process, which
resumes from the indices written at detach.
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

__all__ = [
    "CTL_SLOTS",
    "REQ_RUN",
    "REQ_STOP",
    "QueueHandoff",
    "LcoreQueues",
    "queues_changed",
    "close_fds",
]

log = dplog.get_logger("dataplane.handoff")

# -- control block slots (int64) ---------------------------------------------------
CTL_REQ_GEN = 0  # main: generation of the latest request
CTL_REQ = 1  # main: REQ_RUN / REQ_STOP
CTL_ACK_GEN = 2  # lcore: the generation it has acted on
CTL_ATTACHED = 3  # lcore: 1 while its loop may touch the queue
CTL_BASE = 4  # lcore, at detach: the queue's index (vhost: last_avail_idx, packed | wrap << 15)
CTL_USED = 5  # lcore, at detach: second index (vhost packed: last_used | wrap << 15)
CTL_BASE_GEN = 6  # lcore, at detach: the RUN generation BASE/USED belong to
CTL_LCORE = 7  # main: lcore the queue is placed on (-1: none)
CTL_SLOTS = 8

REQ_STOP = 0
REQ_RUN = 1


def _zone(name: str) -> str:
    return f"qh_{name}"


@kernel
def _xchg(ary, idx, val):
    return exchange(ary, idx, val)


@kernel
def queues_changed(ctl, qids, gens):
    """True when the main process posted a request for one of the slots (``ctl[qid].REQ_GEN != gens[i]``).

    Poll loops call this every few turns and return to Python when it is true.
    """
    for i in range(qids.shape[0]):
        if load_acquire(ctl, qids[i] * CTL_SLOTS + CTL_REQ_GEN) != gens[i]:
            return True
    return False


# In-process "mailbox" for queues placed on the main lcore: (name, qid, gen, spec, fds).
_LOCAL = collections.deque()
# Received but not yet applied start messages: (name, qid) -> (gen, spec, fds).
_PENDING: dict[tuple[str, int], tuple[int, dict, list[int]]] = {}
_PENDING_LOCK = threading.Lock()


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _stash(msg, fds) -> None:
    if not (isinstance(msg, tuple) and len(msg) == 5 and msg[0] == "queue"):
        log.warning("mailbox message ignored (not a queue hand-over)", message=repr(msg)[:80])
        close_fds(fds)
        return
    _, name, qid, gen, spec = msg
    with _PENDING_LOCK:
        old = _PENDING.pop((name, qid), None)
        if old is not None and old[0] > gen:  # keep the newer one
            _PENDING[(name, qid)] = old
            close_fds(fds)
            return
        if old is not None:
            close_fds(old[2])
        _PENDING[(name, qid)] = (gen, spec, list(fds))


def _drain_inbox(wait: float = 0.0) -> None:
    """Move every delivered message (mailbox of this worker, or the local deque) to ``_PENDING``."""
    while _LOCAL:
        try:
            name, qid, gen, spec, fds = _LOCAL.popleft()
        except IndexError:
            break
        _stash(("queue", name, qid, gen, spec), fds)
    if not launch.in_worker():
        return
    first = True
    while True:
        got = launch.mailbox_recv(wait if first else 0.0)
        first = False
        if got is None:
            return
        _stash(*got)


class QueueHandoff:
    """Main-process side: control blocks of ``nqueues`` queues of port ``name``.

    ``memory`` and ``launcher`` default to the running EAL's.  Queues are put
    on lcores with :meth:`place`; a queue with no lcore is never started.
    """

    def __init__(self, name: str, nqueues: int, *, memory=None, launcher=None, stop_timeout: float = 5.0):
        if memory is None or launcher is None:
            from dataplane.lcores import eal as _eal

            e = _eal.current()
            memory = memory or e.memory
            launcher = launcher or e.launcher
        self.name = name
        self.nqueues = int(nqueues)
        self.memory = memory
        self.launcher = launcher
        self.stop_timeout = stop_timeout
        self._mz = memory.memzone_reserve(_zone(name), self.nqueues * CTL_SLOTS * 8)
        self.ctl = self._mz.view(np.int64)
        self.ctl[:] = 0
        for q in range(self.nqueues):
            self.ctl[q * CTL_SLOTS + CTL_LCORE] = -1
        self._gen = np.zeros(self.nqueues, np.int64)
        self._run_gen = np.full(self.nqueues, -1, np.int64)
        self._lock = threading.Lock()

    def place(self, qid: int, lcore: int | None) -> None:
        """Put queue ``qid`` on ``lcore`` (None: nowhere).  Takes effect at the next start."""
        if not 0 <= qid < self.nqueues:
            raise ValueError(f"queue {qid} out of range: port {self.name!r} has {self.nqueues}")
        self.ctl[qid * CTL_SLOTS + CTL_LCORE] = -1 if lcore is None else int(lcore)

    def lcore_of(self, qid: int) -> int | None:
        v = int(self.ctl[qid * CTL_SLOTS + CTL_LCORE])
        return None if v < 0 else v

    def attached(self, qid: int) -> bool:
        return bool(py_load_acquire(self.ctl, qid * CTL_SLOTS + CTL_ATTACHED))

    def running(self, qid: int) -> bool:
        """A RUN request is current for ``qid`` (the lcore may not have attached yet)."""
        return int(self.ctl[qid * CTL_SLOTS + CTL_REQ]) == REQ_RUN

    def start_queue(self, qid: int, spec: dict, fds) -> bool:
        """Hand queue ``qid`` (described by ``spec`` and ``fds``, which stay the caller's) to its lcore."""
        lcore = self.lcore_of(qid)
        if lcore is None:
            log.info("queue has no lcore; not polled", port=self.name, qid=qid)
            return False
        with self._lock:
            gen = int(self._gen[qid]) + 1
            self._gen[qid] = gen
            self._run_gen[qid] = gen
            if self.launcher is None or lcore == self.launcher.main_lcore:
                _LOCAL.append((self.name, qid, gen, spec, [os.dup(fd) for fd in fds]))
            else:
                try:
                    self.launcher.post(lcore, ("queue", self.name, qid, gen, spec), list(fds))
                except (OSError, KeyError) as e:
                    log.error("cannot hand the queue to its lcore", port=self.name, qid=qid, lcore=lcore, error=str(e))
                    return False
            b = qid * CTL_SLOTS
            self.ctl[b + CTL_REQ] = REQ_RUN
            py_store_release(self.ctl, b + CTL_REQ_GEN, gen)
        log.debug("queue handed to lcore", port=self.name, qid=qid, to_lcore=lcore, gen=gen)
        return True

    def stop_queue(self, qid: int) -> tuple[int, int] | None:
        """Take queue ``qid`` back; returns once no lcore touches it.

        Returns the indices ``(base, used)`` the lcore wrote when it let go of
        the run being stopped, or None (it never attached, or was not running).
        """
        with self._lock:
            gen = int(self._gen[qid]) + 1
            self._gen[qid] = gen
            b = qid * CTL_SLOTS
            self.ctl[b + CTL_REQ] = REQ_STOP
            _xchg(self.ctl, b + CTL_REQ_GEN, gen)
            if py_load_acquire(self.ctl, b + CTL_ATTACHED):
                self._wait_ack(qid, gen)
            run_gen = int(self._run_gen[qid])
            self._run_gen[qid] = -1
            if run_gen >= 0 and int(py_load_acquire(self.ctl, b + CTL_BASE_GEN)) == run_gen:
                return int(self.ctl[b + CTL_BASE]), int(self.ctl[b + CTL_USED])
            return None

    def _wait_ack(self, qid: int, gen: int) -> None:
        lcore = self.lcore_of(qid)
        deadline = time.monotonic() + self.stop_timeout
        i = qid * CTL_SLOTS
        while int(py_load_acquire(self.ctl, i + CTL_ACK_GEN)) < gen and py_load_acquire(self.ctl, i + CTL_ATTACHED):
            if self._lcore_gone(lcore):
                log.warning("lcore polling the queue is gone", port=self.name, qid=qid, lcore=lcore)
                return
            if time.monotonic() > deadline:
                log.error("lcore did not release the queue in time", port=self.name, qid=qid, lcore=lcore,
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

    def close(self) -> None:
        """Free the control blocks (every queue must be stopped)."""
        if self._mz is not None:
            try:
                self.memory.memzone_free(self._mz.name)
            except Exception:
                pass
            self._mz = None


class LcoreQueues:
    """Lcore side: the queues ``qids`` of port ``name`` this lcore polls, one context each.

    Subclasses say what a queue is: :meth:`attach_queue` builds the context
    from a spec (and may raise ValueError), :meth:`detach_queue` lets go and
    returns the indices to hand back (or None); :attr:`dummy_ctx` is the
    context of a queue that is not running (its bursts must do nothing).

    ``ctxs[i]`` is the context of ``qids[i]``; ``ctl``, ``qids_arr`` and
    ``gens`` are what :func:`queues_changed` takes.  Call :meth:`service` when
    it says so, and :meth:`close` before the loop's function returns.
    """

    dummy_ctx = None

    def __init__(self, name: str, qids, *, memory=None):
        if memory is None:
            from dataplane.lcores import eal as _eal

            memory = _eal.current_memory()
        self.memory = memory
        self.name = name
        self.ctl = memory.memzone_lookup(_zone(name)).view(np.int64)
        self.qids = [int(q) for q in qids]
        self.qids_arr = np.array(self.qids, np.int64)
        self.gens = np.zeros(len(self.qids), np.int64)  # generation 0 = "nothing asked yet"
        self.attached = [False] * len(self.qids)
        self._run_gens: list[int] = [-1] * len(self.qids)
        self._kept: list = [None] * len(self.qids)  # (gen, spec, fds) of each attached queue
        self.ctxs = tuple(self.dummy_ctx for _ in self.qids)

    # -- subclass interface ---------------------------------------------------------
    def attach_queue(self, i: int, spec: dict, fds: list[int], resume: tuple[int, int] | None):
        """Build and return the context of slot ``i``; takes ownership of ``fds``.
        ``resume``: the indices this run stopped at in an earlier loop of this process."""
        raise NotImplementedError

    def detach_queue(self, i: int) -> tuple[int, int] | None:
        """Let go of slot ``i`` (its context is no longer used); returns the indices to hand back."""
        raise NotImplementedError

    def report_errors(self) -> None:
        """Log what went wrong on the attached queues since the last call (poll loops call this now and then)."""

    # -- protocol ---------------------------------------------------------------------
    def changed(self) -> bool:
        return bool(queues_changed(self.ctl, self.qids_arr, self.gens))

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
            if self.attached[i]:
                self._detach(i)
                ctxs[i] = self.dummy_ctx
                changed = True
            if self._kept[i] is not None:  # superseded by this request
                close_fds(self._kept[i][2])
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
                    close_fds(fds)
                    continue
                _xchg(self.ctl, b + CTL_ATTACHED, 1)
                if int(py_load_acquire(self.ctl, b + CTL_REQ_GEN)) != gen:  # stopped meanwhile
                    py_store_release(self.ctl, b + CTL_ATTACHED, 0)
                    close_fds(fds)
                    continue
                keep = [os.dup(fd) for fd in fds]
                resume = None
                if int(py_load_acquire(self.ctl, b + CTL_BASE_GEN)) == gen:
                    resume = (int(self.ctl[b + CTL_BASE]), int(self.ctl[b + CTL_USED]))
                try:
                    ctxs[i] = self.attach_queue(i, spec, fds, resume)
                except ValueError as e:
                    log.error("cannot attach queue", port=self.name, qid=qid, error=str(e))
                    close_fds(keep)
                    py_store_release(self.ctl, b + CTL_ATTACHED, 0)
                else:
                    self.attached[i] = True
                    self._run_gens[i] = gen
                    self._kept[i] = (gen, spec, keep)
                    changed = True
                    log.debug("queue attached", port=self.name, qid=qid, gen=gen)
            self.gens[i] = gen
            py_store_release(self.ctl, b + CTL_ACK_GEN, gen)
        self.ctxs = tuple(ctxs)
        return changed

    def _detach(self, i: int) -> None:
        b = self.qids[i] * CTL_SLOTS
        idx = self.detach_queue(i)
        if idx is not None:
            self.ctl[b + CTL_BASE], self.ctl[b + CTL_USED] = idx
            py_store_release(self.ctl, b + CTL_BASE_GEN, self._run_gens[i])
        self.attached[i] = False
        py_store_release(self.ctl, b + CTL_ATTACHED, 0)
        log.debug("queue detached", port=self.name, qid=self.qids[i], indices=idx)

    def close(self) -> None:
        """Detach every queue (writing its indices back) and acknowledge pending requests.

        A queue that is still meant to run goes back to this process's pending
        hand-overs, so the next loop on this lcore (e.g. after testpmd's
        ``stop`` / ``start``) attaches it again where it stopped.
        """
        for i, qid in enumerate(self.qids):
            if self.attached[i]:
                self._detach(i)
            b = qid * CTL_SLOTS
            gen = int(py_load_acquire(self.ctl, b + CTL_REQ_GEN))
            kept, self._kept[i] = self._kept[i], None
            if kept is not None:
                if kept[0] == gen and int(self.ctl[b + CTL_REQ]) == REQ_RUN:
                    _stash(("queue", self.name, qid, kept[0], kept[1]), kept[2])
                else:
                    close_fds(kept[2])
            self.gens[i] = gen
            py_store_release(self.ctl, b + CTL_ACK_GEN, gen)
        self.ctxs = tuple(self.dummy_ctx for _ in self.qids)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def warm_up() -> None:
    """Compile (or load) the protocol's kernels in this process (before lcores need them)."""
    ctl = np.zeros(CTL_SLOTS, np.int64)
    _xchg(ctl, 0, 0)
    py_store_release(ctl, 0, py_load_acquire(ctl, 0))
    queues_changed(ctl, np.zeros(1, np.int64), np.zeros(1, np.int64))
