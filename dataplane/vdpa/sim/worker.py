"""The hardware process of one simulator device: ``python3 -m dataplane.vdpa.sim.worker``.

Started by :class:`~dataplane.vdpa.sim.hw.SimHardware` with a SOCK_SEQPACKET
control socket and the device's shared-memory block (:mod:`~dataplane.vdpa.sim.shm`).
It compiles (or loads) its kernels, says ``ready``, then loops:

* ``select`` on the control socket and the kick eventfds of the enabled
  queues (timeout: ``POLL_S`` while a queue has no kick fd and is polled,
  else ``IDLE_S``; 0 while a run used its whole budget);
* control requests (JSON, fds in SCM_RIGHTS): ``attach`` (map guest memory
  from the region fds, build the queues), ``vring_state``, ``detach`` (stop,
  unmap, answer the ring indices), ``sync`` (serve the kicks already made,
  then answer), ``stop`` -- each answered ``{"ok": ...}``;
* a kick (or a polled queue, or a run cut by its budget) runs the device's
  work -- :func:`~dataplane.vdpa.sim.kernels.net_work` or
  :func:`~dataplane.vdpa.sim.kernels.blk_work` -- in numba;
* a queue the kernels stopped (a hostile ring) is logged once.

The control socket closing (the main process went away) ends the process.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import select
import signal
import socket
import sys

import numpy as np

from dataplane import log as dplog
from dataplane._jitcache import init_target
from dataplane.rings.packed import packed_dev_get_base, packed_dev_get_used_base
from dataplane.rings.virtqueue import (
    FEAT_EVENT_IDX,
    FEAT_INDIRECT,
    STATE_LAST_AVAIL,
    STATE_LAST_USED,
    STATE_SIGNALLED_USED,
)
from dataplane.vhost.dev_ring import queue_rings, ring_enable_notify
from dataplane.vhost.guest_memory import GuestMemory, GuestMemoryError
from dataplane.vhost_user.payloads import MemoryRegion

from . import kernels as K
from .shm import HDR_PID, MAX_QUEUES, ROW_ERR, ROW_ERR_COUNT, ROW_KICKS, SimShm
from .spec import F_CTRL_VQ, NET_CVQ, NET_RXQ, NET_TXQ, TX_PULL_MAX, VDPASIM_BLK_ID, net_hdr_len

__all__ = ["main", "BUDGET", "POLL_S", "IDLE_S", "ERR_RING_ADDR", "queue_error_name"]

log = dplog.get_logger("dataplane.vdpa.sim")

#: Chains one kernel call may take before the loop looks at its socket again.
BUDGET = 4096
#: Empty polls a busy window lasts after the last chain (a few microseconds: a burst's
#: next chains are served without waiting for their kick).
SPIN = 64
#: select timeout while a queue without a kick fd is polled.
POLL_S = 0.001
#: select timeout otherwise (kicks and requests wake it at once).
IDLE_S = 0.1
MAX_MSG = 1 << 20
F_EVENT_IDX_BIT = 29

ERR_RING_ADDR = K.ERR_RING_ADDR
queue_error_name = K.queue_error_name


class _Queue:
    __slots__ = ("qid", "packed", "ctx", "kick_fd", "call_fd", "bad_ring", "logged")

    def __init__(self, qid, packed, ctx, kick_fd, call_fd, bad_ring):
        self.qid = qid
        self.packed = packed
        self.ctx = ctx
        self.kick_fd = kick_fd
        self.call_fd = call_fd
        self.bad_ring = bad_ring  # the ring areas are outside guest memory: refuse to enable
        self.logged = False

    @property
    def enabled(self) -> bool:
        return bool(self.ctx.cfg[K.CFG_ENABLED])

    @property
    def running(self) -> bool:
        return self.enabled and self.ctx.counters[ROW_ERR] == 0

    def indices(self) -> list[int]:
        st = self.ctx.state
        if self.packed:
            a, u = int(packed_dev_get_base(st)), int(packed_dev_get_used_base(st))
            return [a & 0x7FFF, a >> 15 & 1, u & 0x7FFF, u >> 15 & 1]
        return [int(st[STATE_LAST_AVAIL]) & 0xFFFF, 0, int(st[STATE_LAST_USED]) & 0xFFFF, 0]


def _ring_sizes(size: int, packed: bool) -> tuple[int, int, int]:
    return (16 * size, 4, 4) if packed else (16 * size, 6 + 2 * size, 6 + 8 * size)


def _readable(fds, timeout: float) -> list:
    """The fds (ints or sockets) of ``fds`` readable within ``timeout`` seconds (poll: any fd number)."""
    if not fds:
        if timeout > 0:
            select.select([], [], [], timeout)
        return []
    p = select.poll()
    by_fd = {}
    for f in fds:
        n = f if isinstance(f, int) else f.fileno()
        by_fd[n] = f
        p.register(n, select.POLLIN)
    return [by_fd[n] for n, ev in p.poll(timeout * 1000) if ev & (select.POLLIN | select.POLLHUP | select.POLLERR)]


def _close(fds) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class Hardware:
    """One device's hardware state in this process (see the module doc)."""

    def __init__(self, kind: str, name: str, shm: SimShm, capacity: int):
        self.kind = kind
        self.name = name
        self.shm = shm
        self.mem: GuestMemory | None = None
        self.queues: dict[int, _Queue] = {}
        self.features = 0
        self.pending = False
        self.generation = 0  # attach / detach count: fds seen before a change are stale
        self.dummy = K.disabled_queue_ctx()
        if kind == "blk":
            self.disk = np.zeros(int(capacity) * 512, np.uint8)  # calloc: pages appear when touched
            self.ident = np.frombuffer(VDPASIM_BLK_ID, np.uint8).copy()
        else:
            self.buf = np.zeros(TX_PULL_MAX, np.uint8)

    @property
    def attached(self) -> bool:
        return self.mem is not None

    # -- control ------------------------------------------------------------------
    def _build_queue(self, qd: dict, extra: list[int], mem: GuestMemory, table, features: int) -> _Queue:
        """Queue ``qd`` (the attach dict; ``kick`` / ``call`` index ``extra``) over ``mem``; its row's
        fault is cleared.  ValueError when it cannot be built (an enabled ring outside the memory)."""
        qid = int(qd["qid"])
        limit = 3 if self.kind == "net" else MAX_QUEUES
        if not 0 <= qid < limit:
            raise ValueError(f"queue {qid}: a {self.kind} device has queues 0..{limit - 1}")
        feat = FEAT_INDIRECT | (FEAT_EVENT_IDX if features >> F_EVENT_IDX_BIT & 1 else 0)
        size, packed = int(qd["size"]), bool(qd["packed"])
        enabled = bool(qd["enabled"])
        addrs = []
        for gpa, ln in zip((qd["desc_gpa"], qd["avail_gpa"], qd["used_gpa"]), _ring_sizes(size, packed)):
            addrs.append(mem.gpa_to_hva(int(gpa), ln) if size > 0 else 0)
        bad = not all(addrs)
        if bad and enabled:
            raise ValueError(f"queue {qid}: ring areas {qd['desc_gpa']:#x}/{qd['avail_gpa']:#x}/"
                             f"{qd['used_gpa']:#x} (size {size}) are outside guest memory")
        kick = extra[qd["kick"]] if qd["kick"] >= 0 else -1
        call = extra[qd["call"]] if qd["call"] >= 0 else -1
        row = self.shm.rows[qid]
        if bad:
            ctx = self.dummy
        else:
            if packed:
                base = int(qd["last_avail_idx"]) & 0x7FFF | (int(qd["avail_wrap"]) & 1) << 15
                used = int(qd["last_used_idx"]) & 0x7FFF | (int(qd["used_wrap"]) & 1) << 15
                sp, pk, st = queue_rings(*addrs, size, packed=True, feat=feat, last_avail_idx=base,
                                         last_used_idx=used)
            else:
                sp, pk, st = queue_rings(*addrs, size, packed=False, feat=feat,
                                         last_avail_idx=int(qd["last_avail_idx"]) & 0xFFFF)
                st[STATE_LAST_USED] = st[STATE_SIGNALLED_USED] = int(qd["last_used_idx"]) & 0xFFFF
            ctx = K.make_queue_ctx(sp, pk, st, table, is_packed=packed, callfd=call, enabled=enabled, counters=row)
        row[ROW_ERR] = row[ROW_ERR_COUNT] = 0  # faults belong to the ring attached
        return _Queue(qid, packed, ctx, kick, call, bad)

    def attach(self, msg: dict, fds: list[int]) -> dict:
        if self.attached:
            _close(fds)
            raise ValueError("already attached: detach first")
        regions = msg["regions"]
        nreg = len(regions)
        if len(fds) < nreg:
            _close(fds)
            raise ValueError(f"{nreg} regions but {len(fds)} fds")
        extra = fds[nreg:]
        kept: set[int] = set()
        try:
            mem = GuestMemory.map_table(
                [MemoryRegion(int(r["guest_phys_addr"]), int(r["size"]), int(r["userspace_addr"]),
                              int(r["mmap_offset"])) for r in regions], fds[:nreg], max_regions=max(nreg, 1))
        except GuestMemoryError as e:
            _close(extra)
            raise ValueError(f"guest memory: {e}") from None
        features = int(msg["features"])
        self.shm.rows[:, ROW_ERR] = 0  # a new configuration: the faults of the previous one are history
        self.shm.rows[:, ROW_ERR_COUNT] = 0
        queues: dict[int, _Queue] = {}
        try:
            table = mem.region_table()
            for qd in msg["queues"]:
                qid = int(qd["qid"])
                if qid in queues:
                    raise ValueError(f"queue {qid} given twice")
                queues[qid] = self._build_queue(qd, extra, mem, table, features)
                kept.update(fd for fd in (queues[qid].kick_fd, queues[qid].call_fd) if fd >= 0)
        except BaseException:
            mem.unmap()
            _close(extra)
            raise
        _close(fd for fd in extra if fd not in kept)
        self.mem, self.queues, self.features = mem, queues, features
        self.generation += 1
        self.pending = True  # chains made available before the attach are served without a kick
        log.info("vdpasim attached", device=self.name, queues=sorted(queues), features=hex(features))
        return {}

    def vring_state(self, qid: int, enable: bool, qd: dict | None = None, fds: list[int] = ()) -> dict:
        """Start or stop serving ring ``qid``; ``qd`` (with ``enable``): program it anew first
        (addresses, indices, eventfds in ``fds``), which also adds a ring not attached before.
        Answers the ring's indices when it is disabled."""
        fds = list(fds)
        if not self.attached:
            _close(fds)
            raise ValueError("not attached")
        if qd is not None:
            if int(qd["qid"]) != qid:
                _close(fds)
                raise ValueError(f"queue dict of {qd['qid']} given for ring {qid}")
            try:
                nq = self._build_queue(dict(qd, enabled=False), fds, self.mem, self.mem.region_table(),
                                       self.features)
            except BaseException:
                _close(fds)
                raise
            _close(fd for fd in fds if fd not in (nq.kick_fd, nq.call_fd))
            old = self.queues.get(qid)
            if old is not None:
                _close(fd for fd in (old.kick_fd, old.call_fd) if fd not in (nq.kick_fd, nq.call_fd))
            self.queues[qid] = nq
            self.generation += 1  # its old kick fd may be closed
        else:
            _close(fds)
        q = self.queues.get(qid)
        if q is None:
            raise ValueError(f"queue {qid} is not attached")
        if enable and q.bad_ring:
            row = self.shm.rows[qid]
            if row[ROW_ERR] == 0:
                row[ROW_ERR] = ERR_RING_ADDR
            row[ROW_ERR_COUNT] += 1
            raise ValueError(f"queue {qid}: its ring areas are outside guest memory")
        out = {}
        if q.ctx is not self.dummy:
            if enable and not q.enabled:
                self.pending = True  # chains made available meanwhile are served without a kick
            q.ctx.cfg[K.CFG_ENABLED] = int(bool(enable))
            if not enable:
                out["indices"] = q.indices()
        return out

    def sync(self) -> dict:
        """Serve every kick already made and run the work until nothing is left to do at once."""
        kicks, polled = self.wait_set()
        if kicks:
            ready = _readable(kicks, 0)
            for fd in ready:
                self.take_kick(fd)
        if self.attached:
            if polled:
                self.pending = True
            while self.pending:
                self.pending = False
                self.pending = self.work()
            self.check_errors()
        return {}

    def detach(self) -> dict:
        if not self.attached:
            return {"indices": {}}
        self.check_errors()
        out = {}
        for qid, q in self.queues.items():
            if q.ctx is not self.dummy:
                out[str(qid)] = q.indices()
                q.ctx.cfg[K.CFG_ENABLED] = 0
            _close([q.kick_fd, q.call_fd])
        self.queues = {}
        self.generation += 1
        mem, self.mem = self.mem, None
        mem.unmap()
        self.pending = False
        log.info("vdpasim detached", device=self.name, indices=out)
        return {"indices": out}

    # -- data path ----------------------------------------------------------------
    def _ctx(self, qid: int):
        q = self.queues.get(qid)
        return self.dummy if q is None else q.ctx

    def work(self) -> bool:
        """One run of the device's work; True when a run used its whole budget (call again at once)."""
        if self.kind == "net":
            cvq_on = bool(self.features >> F_CTRL_VQ & 1) and NET_CVQ in self.queues
            n = K.net_serve(self._ctx(NET_RXQ), self._ctx(NET_TXQ), self._ctx(NET_CVQ), cvq_on, self.shm.mac,
                            self.buf, net_hdr_len(self.features), BUDGET, SPIN)
            more = n >= BUDGET
        else:
            more = False
            for q in self.queues.values():
                if q.running:
                    more |= K.blk_serve(q.ctx, self.disk, self.ident, BUDGET, SPIN) >= BUDGET
        if self.features >> F_EVENT_IDX_BIT & 1:
            # vdpasim offers no EVENT_IDX; if it was negotiated anyway, publish avail_event (the
            # driver kicks only past it) and run again for chains that came meanwhile
            for q in self.queues.values():
                if q.running and q.ctx is not self.dummy:
                    c = q.ctx
                    more |= bool(ring_enable_notify(q.packed, c.split, c.packed, c.state, True))
        return more

    def check_errors(self) -> None:
        for q in self.queues.values():
            code = int(self.shm.rows[q.qid][ROW_ERR])
            if code and not q.logged:
                q.logged = True
                log.error("vdpasim queue stopped: the driver's ring is broken", device=self.name, qid=q.qid,
                          reason=queue_error_name(code), faults=int(self.shm.rows[q.qid][ROW_ERR_COUNT]))

    def wait_set(self) -> tuple[list[int], bool]:
        """(kick fds to watch, whether a running queue has none and is polled)."""
        kicks, polled = [], False
        for q in self.queues.values():
            if q.running:
                if q.kick_fd >= 0:
                    kicks.append(q.kick_fd)
                else:
                    polled = True
        return kicks, polled

    def take_kick(self, fd: int) -> None:
        """Read a kick eventfd select found readable; a kick already taken (by a sync) is no kick."""
        if not any(q.kick_fd == fd for q in self.queues.values()):
            return
        r = _readable([fd], 0)  # eventfd_read on a blocking fd must not wait
        if not r:
            return
        try:
            os.eventfd_read(fd)
        except (BlockingIOError, OSError):
            return
        for q in self.queues.values():
            if q.kick_fd == fd:
                self.shm.rows[q.qid][ROW_KICKS] += 1
        self.pending = True


def _reply(sock: socket.socket, obj: dict) -> None:
    sock.send(json.dumps(obj).encode())


def _serve(hw: Hardware, sock: socket.socket) -> bool:
    """Handle the queued control requests; False when the process must end."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, 253)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            _close(fds)
            return False
        seq = None
        try:
            msg = json.loads(data)
            seq = msg.get("seq")
            op = msg.get("op")
            if op == "attach":
                out = hw.attach(msg, list(fds))
                fds = []
            elif op == "vring_state":
                out = hw.vring_state(int(msg["qid"]), bool(msg["enable"]), msg.get("queue"), list(fds))
                fds = []
            else:
                _close(fds)
                fds = []
                if op == "detach":
                    out = hw.detach()
                elif op == "sync":
                    out = hw.sync()
                elif op == "stop":
                    hw.detach()
                    _reply(sock, {"ok": True, "seq": seq})
                    return False
                else:
                    raise ValueError(f"unknown request {op!r}")
            _reply(sock, {"ok": True, "seq": seq, **out})
        except (ValueError, KeyError, TypeError) as e:
            _close(fds)
            log.error("vdpasim request refused", device=hw.name, error=str(e))
            _reply(sock, {"ok": False, "seq": seq, "error": str(e)})


def run(hw: Hardware, sock: socket.socket) -> None:
    sock.setblocking(False)
    while True:
        kicks, polled = hw.wait_set()
        timeout = 0 if hw.pending else (POLL_S if polled else IDLE_S)
        ready = _readable([sock, *kicks], timeout)
        if sock in ready:
            gen = hw.generation
            if not _serve(hw, sock):
                return
            if hw.generation != gen:  # detached / attached meanwhile: the fds found ready are not ours any more
                ready = []
        for fd in ready:
            if fd is not sock:
                hw.take_kick(fd)
        if hw.attached and (hw.pending or polled):
            hw.pending = False
            hw.pending = hw.work()
            hw.check_errors()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dataplane.vdpa.sim.worker")
    ap.add_argument("--sock", type=int, required=True)
    ap.add_argument("--shm", type=int, required=True)
    ap.add_argument("--kind", choices=("net", "blk"), required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--capacity", type=int, default=0)
    args = ap.parse_args(argv)
    faulthandler.enable()  # a crash of the data path shows where it was
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us (a terminal's ^C goes to it)
    sock = socket.socket(fileno=args.sock)
    shm = SimShm(args.shm)
    hw = None
    try:
        shm.hdr[HDR_PID] = os.getpid()
        init_target()  # numba's target without its BLAS probe (0.2 s of every simulator start)
        K.warm_up(args.kind)
        hw = Hardware(args.kind, args.name, shm, args.capacity)
        _reply(sock, {"op": "ready", "pid": os.getpid()})
        run(hw, sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        if hw is not None and hw.attached:
            hw.detach()
        sock.close()
        shm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
