"""The main-process handle of one simulator device's hardware process (vdpasim_net / vdpasim_blk).

:class:`SimHardware` is what the simulator driver's DPDK-style ops call: the
device's "card".  Its hardware runs in a separate process
(:mod:`~dataplane.vdpa.sim.worker`, started with :mod:`subprocess`, so a
threaded parent is safe) that maps the guest memory from the region fds it
is sent, walks the guest's virtqueues with the rings' numba kernels, wakes
on kicks and writes the call eventfds.  Counters, the queues' fault codes
and the MAC sit in a shared-memory block (:mod:`~dataplane.vdpa.sim.shm`)
this process reads while the hardware runs::

    hw = SimHardware("net", "vdpa0", mac=bytes.fromhex("00e0c0a80001"))
    hw.start()
    hw.attach(features, regions, region_fds, queues)     # dev_conf
    hw.stats(0)        # [("rx packets", n), ("rx bytes", n), ...]
    idx = hw.detach()  # dev_close: {qid: (last_avail_idx, avail_wrap, last_used_idx, used_wrap)}
    hw.close()

Requests to the hardware (attach, set_vring_state, detach, sync) wait for
its answer: when they return, the hardware has done it (after ``detach`` it
no longer touches guest memory).  A refused request raises ValueError with
the hardware's reason; a hardware process that died raises
:class:`SimHardwareError`.

Beyond the driver interface: :meth:`SimHardware.sync` (a barrier: every kick
made before it has been served), :meth:`SimHardware.queue_counters` (blk's
request counters, interrupts, kicks, faults per queue),
:attr:`SimHardware.pid`, and :meth:`SimHardware.set_vring_state`'s optional
``queue`` (reprogram a ring) and its return value on disable (the indices).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

from dataplane import log as dplog

from .kernels import BLK_COUNTER_NAMES, queue_error_name
from .shm import MAX_QUEUES, ROW_ERR, ROW_ERR_COUNT, ROW_IRQS, ROW_KICKS, SimShm
from .spec import (
    NET_STATS_NAMES,
    VDPASIM_BLK_CAPACITY,
    blk_config_space,
    net_config_space,
)

__all__ = ["SimHardware", "SimHardwareError", "READY_TIMEOUT", "REQUEST_TIMEOUT"]

log = dplog.get_logger("dataplane.vdpa.sim")

#: How long the first request waits for the hardware to come up (it may compile its kernels).
READY_TIMEOUT = 600.0
#: How long a request waits for its answer once the hardware is up.
REQUEST_TIMEOUT = 30.0
_MAX_FDS = 250
_ROOT = os.path.dirname(os.path.abspath(__file__)).rsplit(os.sep, 3)[0]  # .../dataplane/vdpa/sim -> the tree


class SimHardwareError(RuntimeError):
    """The hardware process is not running (never started, died, or did not answer)."""


class SimHardware:
    """One simulator device's hardware (see the module doc).

    ``kind``: ``"net"`` (vdpasim_net: queues 0 rx, 1 tx, 2 cvq) or ``"blk"``
    (vdpasim_blk: queue 0, more allowed, up to 64).  ``name``: the device's
    name (logs, the shared-memory file's name).  ``mac`` / ``mtu``: the net
    config; ``capacity``: the blk RAM disk in 512-byte sectors (zeroed).
    """

    def __init__(self, kind: str, name: str, *, mac: bytes = bytes(6), mtu: int = 1500,
                 capacity: int = VDPASIM_BLK_CAPACITY):
        if kind not in ("net", "blk"):
            raise ValueError(f"kind must be 'net' or 'blk', got {kind!r}")
        mac = bytes(mac)
        if len(mac) != 6:
            raise ValueError(f"mac must be 6 bytes, got {len(mac)}")
        if not 68 <= int(mtu) <= 0xFFFF:
            raise ValueError(f"mtu must be in 68..65535, got {mtu}")
        if not 0 < int(capacity) < 1 << 40:
            raise ValueError(f"capacity must be a positive number of sectors, got {capacity}")
        self.kind = kind
        self.name = str(name)
        self.mtu = int(mtu)
        self.capacity = int(capacity)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._ready = False
        self._closed = False
        self._seq = 0
        self._shm = SimShm.create(self.name)
        self._shm.mac[:] = list(mac)

    # -- process ------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the hardware process (idempotent while it runs; a dead one is replaced)."""
        with self._lock:
            self._check_open()
            if self._proc is not None:
                if self._proc.poll() is None:
                    return
                self._reap()
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            root = _ROOT  # the worker imports this tree's dataplane, whatever the caller's sys.path
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
            cmd = [sys.executable, "-m", "dataplane.vdpa.sim.worker", "--sock", str(b.fileno()),
                   "--shm", str(self._shm.fd), "--kind", self.kind, "--name", self.name,
                   "--capacity", str(self.capacity)]
            try:
                self._proc = subprocess.Popen(cmd, pass_fds=(b.fileno(), self._shm.fd), stdin=subprocess.DEVNULL,
                                              env=env)
            except BaseException:
                a.close()
                raise
            finally:
                b.close()
            self._sock = a
            self._ready = False
            log.info("vdpasim hardware started", device=self.name, kind=self.kind, pid=self._proc.pid)

    @property
    def pid(self) -> int | None:
        """The hardware process's pid (None before :meth:`start`)."""
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        """The hardware process runs."""
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop and reap the hardware process, free the shared memory (idempotent)."""
        with self._lock:
            if self._closed:
                return
            if self.alive() and self._sock is not None:
                try:
                    self._send({"op": "stop"})
                    self._recv(5.0 if self._ready else 0.5, ignore_ready=True)
                except (OSError, SimHardwareError, ValueError):
                    pass
            self._reap()
            self._shm.close()
            self._closed = True

    def _reap(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the hardware sees EOF and exits
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._ready = False

    def __enter__(self) -> "SimHardware":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SimHardwareError(f"{self.name}: closed")

    def _send(self, msg: dict, fds=()) -> None:
        data = json.dumps(msg).encode()
        if fds:
            socket.send_fds(self._sock, [data], list(fds))
        else:
            self._sock.send(data)

    def _recv(self, timeout: float, ignore_ready: bool = False) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimHardwareError(f"{self.name}: the hardware did not answer within {timeout:.0f} s")
            p = select.poll()
            p.register(self._sock.fileno(), select.POLLIN)
            r = p.poll(min(left, 0.2) * 1000)
            if not r:
                if self._proc.poll() is not None:
                    raise SimHardwareError(f"{self.name}: the hardware process exited ({self._proc.returncode})")
                continue
            data = self._sock.recv(1 << 20)
            if not data:
                raise SimHardwareError(f"{self.name}: the hardware process closed its socket")
            msg = json.loads(data)
            if msg.get("op") == "ready":
                self._ready = True
                if ignore_ready:
                    continue
            return msg

    def _request(self, msg: dict, fds=()) -> dict:
        with self._lock:
            self._check_open()
            if not self.alive():
                raise SimHardwareError(f"{self.name}: the hardware process is not running")
            if not self._ready:
                got = self._recv(READY_TIMEOUT)
                if got.get("op") != "ready":
                    raise SimHardwareError(f"{self.name}: unexpected first message {got!r}")
            self._seq += 1
            self._send(dict(msg, seq=self._seq), fds)
            while True:  # an answer to an earlier request that timed out is not this one's
                reply = self._recv(REQUEST_TIMEOUT, ignore_ready=True)
                if reply.get("seq") == self._seq:
                    break
            if not reply.get("ok"):
                raise ValueError(f"{self.name}: {reply.get('error', 'refused')}")
            return reply

    @staticmethod
    def _queue_msg(q: dict, extra: list[int]) -> dict:
        """The wire form of a queue dict; its eventfds are appended to ``extra`` (indices in the dict)."""
        d = {k: (bool(q[k]) if k in ("packed", "enabled") else int(q[k]))
             for k in ("qid", "size", "packed", "desc_gpa", "avail_gpa", "used_gpa", "last_avail_idx",
                       "avail_wrap", "last_used_idx", "used_wrap", "enabled")}
        for key, fdkey in (("kick", "kick_fd"), ("call", "call_fd")):
            fd = int(q.get(fdkey, -1))
            if fd >= 0:
                d[key] = len(extra)
                extra.append(fd)
            else:
                d[key] = -1
        return d

    def attach(self, features: int, regions: list[dict], region_fds: list[int], queues: list[dict]) -> None:
        """dev_conf: map guest memory and start the queues.

        ``regions``: ``[dict(guest_phys_addr, size, userspace_addr, mmap_offset)]``
        (:meth:`~dataplane.vhost.guest_memory.GuestMemory.describe`; other keys
        ignored), ``region_fds`` parallel to it (the caller keeps its fds: the
        hardware gets its own copies).  ``queues``: ``[dict(qid, size, packed,
        desc_gpa, avail_gpa, used_gpa, last_avail_idx, avail_wrap,
        last_used_idx, used_wrap, kick_fd, call_fd, enabled)]``; ``kick_fd``
        -1: the queue is polled; ``call_fd`` -1: no interrupts.  Net: qid 0 rx,
        1 tx, 2 cvq (served only with CTRL_VQ in ``features``).  An enabled
        queue whose ring areas are outside the memory refuses the whole attach
        (ValueError); a disabled one refuses its enabling later.
        """
        if len(regions) != len(region_fds):
            raise ValueError(f"{len(regions)} regions but {len(region_fds)} fds")
        fds = [int(fd) for fd in region_fds]
        extra: list[int] = []
        qs = [self._queue_msg(q, extra) for q in queues]
        if len(fds) + len(extra) > _MAX_FDS:
            raise ValueError(f"too many fds for one attach: {len(fds) + len(extra)} > {_MAX_FDS}")
        rs = [{k: int(r[k]) for k in ("guest_phys_addr", "size", "userspace_addr", "mmap_offset")} for r in regions]
        self._request({"op": "attach", "features": int(features), "regions": rs, "queues": qs}, fds + extra)

    def set_vring_state(self, qid: int, enable: bool, queue: dict | None = None) -> tuple[int, int, int, int] | None:
        """A ring's readiness flipped while attached: the hardware starts or stops serving it.

        Disabling returns the ring's ``(last_avail_idx, avail_wrap, last_used_idx, used_wrap)``
        (the hardware stopped touching it).  ``queue`` (an :meth:`attach` queue dict, with
        ``enable``): program the ring anew from it first -- new addresses, indices or eventfds
        (the caller keeps its fds), or a ring that was not in the attach (e.g. a cvq that
        became ready later).  ValueError for a ring not attached or one outside guest memory.
        """
        msg = {"op": "vring_state", "qid": int(qid), "enable": bool(enable)}
        extra: list[int] = []
        if queue is not None:
            msg["queue"] = self._queue_msg(dict(queue, qid=int(queue.get("qid", qid))), extra)
        reply = self._request(msg, extra)
        idx = reply.get("indices")
        return None if idx is None else tuple(int(x) for x in idx)

    def sync(self) -> None:
        """Return once the hardware has served every kick made before the call (and whatever
        a polled queue holds): a barrier for tests and for callers that must see the counters settle."""
        self._request({"op": "sync"})

    def detach(self) -> dict[int, tuple[int, int, int, int]]:
        """dev_close: stop touching guest memory, unmap; returns per queue
        ``(last_avail_idx, avail_wrap, last_used_idx, used_wrap)`` (split: wraps 0).
        Queues never started (ring areas outside memory) are not in it."""
        reply = self._request({"op": "detach"})
        return {int(q): tuple(int(x) for x in v) for q, v in reply["indices"].items()}

    # -- shared state -------------------------------------------------------------
    def _rows(self):
        self._check_open()
        return self._shm.rows

    def stats(self, qidx: int) -> list[tuple[str, int]]:
        """vdpasim_net's vendor statistics of queue ``qidx`` as (name, value), in order (VDPA-FACTS §4.2).

        ValueError for a blk device (it has none) and for a queue index other than 0, 1, 2.
        """
        if self.kind != "net":
            raise ValueError("vdpasim_blk has no vendor statistics")
        names = NET_STATS_NAMES.get(int(qidx)) if not isinstance(qidx, bool) else None
        if names is None:
            raise ValueError(f"queue index {qidx}: vdpasim_net has queues 0 (rx), 1 (tx), 2 (cvq)")
        row = self._rows()[int(qidx)]
        return [(n, int(row[i])) for i, n in enumerate(names)]

    def queue_counters(self, qid: int) -> dict[str, int]:
        """Everything counted for queue ``qid`` (beyond vdpasim: blk's request counters, interrupts, kicks)."""
        if not 0 <= int(qid) < MAX_QUEUES:
            raise ValueError(f"queue index {qid} out of range")
        row = self._rows()[int(qid)]
        names = NET_STATS_NAMES.get(int(qid), ()) if self.kind == "net" else BLK_COUNTER_NAMES
        out = {n: int(row[i]) for i, n in enumerate(names)}
        out.update(interrupts=int(row[ROW_IRQS]), kicks=int(row[ROW_KICKS]), faults=int(row[ROW_ERR_COUNT]))
        return out

    def queue_errors(self) -> dict[int, str]:
        """Queues the hardware stopped because their ring is broken: qid -> reason (the first fault).

        Reasons are the rings' error names (``desc_index``, ``chain_loop``,
        ``bad_address``, ``bad_indirect``, ``avail_idx_jump``,
        ``too_many_segments``, ``bad_layout``) or ``ring_address``.  Cleared by
        the next attach.
        """
        rows = self._rows()
        return {q: queue_error_name(int(rows[q][ROW_ERR])) for q in range(MAX_QUEUES) if rows[q][ROW_ERR]}

    def config_space(self) -> bytes:
        """net: ``struct virtio_net_config`` (24 bytes: mac, status LINK_UP, max_virtqueue_pairs 0,
        mtu, then zeros); blk: the 96-byte ``struct virtio_blk_config`` with this capacity."""
        if self.kind == "net":
            return net_config_space(self.mac, self.mtu)
        return blk_config_space(self.capacity)

    @property
    def mac(self) -> bytes:
        """The net device's MAC as the hardware has it (the cvq's MAC_ADDR_SET changes it)."""
        self._check_open()
        return bytes(self._shm.mac)

    def set_mac(self, mac: bytes) -> None:
        """Set the MAC (``vdpa dev set ... mac``); the hardware's receive filter uses it at once."""
        mac = bytes(mac)
        if len(mac) != 6:
            raise ValueError(f"mac must be 6 bytes, got {len(mac)}")
        self._check_open()
        self._shm.mac[:] = list(mac)

    def __repr__(self) -> str:
        return f"SimHardware({self.kind!r}, {self.name!r}, pid={self.pid}, alive={self.alive()})"
