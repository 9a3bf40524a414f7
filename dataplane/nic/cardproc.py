"""What every emulated card's process shares: its directory, counters, management socket, the
embedded switch and the main loop.

A card is a directory ``<parent>/nic-<pf>/`` holding ``pid``, ``counters``
(:mod:`~dataplane.nic.shm`), ``card.sock`` (management: ``{"op": "link", "vf", "up"}``, what
``dataplane-nic link`` sends) and one directory per function
(:class:`~dataplane.nic.function.Function`).

**The main loop** (:meth:`CardBase.run`), one process, no threads: each turn every function
looks at its registers (:meth:`Function.poll_registers`; while queues are busy only every
:data:`REG_EVERY` turns, and so are the control sockets) and takes its doorbells
(:meth:`Function.poll_doorbells`), then the switch serves every busy TX queue
(:meth:`CardBase.switch_round`).  A served queue stays busy
(polled every turn) for :data:`BUSY_TURNS` turns without work, then idles until its next kick.
The loop sleeps (in ``poll()`` on the control sockets) only when every queue idles:
:data:`FAST_S` for :data:`ACTIVE_S` after the last activity, then :data:`SLOW_S`.

**The switch**: the busy TX queues of queue pair ``p`` are served together by one
:func:`~dataplane.nic.kernels.switch_window` call (through :class:`~dataplane.nic.kernels.FastCall`)
into, for each function the switch may deliver to (:meth:`Function.switch_active`), the RX queue
:meth:`Function.rx_ctx` names for ``p``, each frame copied from its TX chain straight into its
RX chain; the
forwarding table (MAC learning, flooding of unknown, broadcast and multicast) is the one in the
counters file.  A function that steers per frame (:attr:`Function.steered`: the mlx5 card's RSS)
takes each burst through :meth:`Function.deliver` instead.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import time

import numpy as np

from dataplane import log as dplog

from . import kernels as K
from .function import MAX_MSG
from .offload import OFF_TX
from .shm import HDR_LOOPS, HDR_PAIRS, HDR_PID, V_FAULTS, CardShm

__all__ = ["CardBase", "card_dir", "install_signals", "BUSY_TURNS", "FAST_S", "SLOW_S", "ACTIVE_S", "REG_EVERY",
           "SERVE_BUDGET", "SERVE_SPIN"]

log = dplog.get_logger("dataplane.nic")

BUSY_TURNS = 200
#: Frames one busy window of a TX queue may move (a window also ends after SERVE_SPIN empty pulls).
SERVE_BUDGET = 4096
SERVE_SPIN = 32
#: While queues are busy, the registers are polled every this many turns (always when idle).
REG_EVERY = 8
FAST_S = 0.0002
SLOW_S = 0.002
ACTIVE_S = 0.5


def card_dir(parent: str, pf: str) -> str:
    return os.path.join(parent, f"nic-{pf}")


class CardBase:
    """A card of ``nvfs`` functions of PF ``pf`` under ``<parent>/nic-<pf>/``; ``make_function(i, bdf, mac)``
    builds function ``i`` (called by :meth:`_build`)."""

    model = "ifcvf"

    def __init__(self, parent: str, pf: str, nvfs: int, *, pairs: int):
        if not 1 <= nvfs <= 63:
            raise ValueError("--vfs must be 1..63")
        if not 1 <= pairs <= 32:
            raise ValueError("--queue-pairs must be 1..32")
        self.pf = pf
        self.dir = card_dir(parent, pf)
        if os.path.exists(os.path.join(self.dir, "pid")):
            raise FileExistsError(f"card {pf} is running (or was killed): {self.dir} exists; "
                                  f"`dataplane-nic stop {pf}` cleans it")
        os.makedirs(self.dir, exist_ok=True)
        self.shm = CardShm(os.path.join(self.dir, "counters"), nvfs, model=self.model)
        self.shm.hdr[HDR_PAIRS] = pairs
        self.active_changed = True
        self.vfs: list = []
        self.mgmt = None
        self.stage, self.slen, self.smask = K.stage_arrays()
        self.sw = K.switch_scratch()
        self._window = K.FastCall(K.switch_window)
        self.fdb = self.shm.fdb
        self.stopping = False

    def _build(self, nvfs: int, mac_base: bytes, make_function) -> None:
        """Make the functions (VF ``i`` gets MAC ``mac_base + i``) and the management socket."""
        from .pci import vf_bdf

        base = int.from_bytes(mac_base, "big")
        try:
            for i in range(nvfs):
                mac = ((base + i) & ((1 << 48) - 1)).to_bytes(6, "big")
                self.vfs.append(make_function(i, vf_bdf(self.pf, i), mac))
            mgmt_path = os.path.join(self.dir, "card.sock")
            self.mgmt = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.mgmt.bind(mgmt_path)
            self.mgmt.listen(4)
            self.mgmt.setblocking(False)
        except BaseException:
            self.close()
            raise

    def write_pid(self) -> None:
        self.shm.hdr[HDR_PID] = os.getpid()
        with open(os.path.join(self.dir, "pid"), "w") as f:
            f.write(f"{os.getpid()}\n")

    # -- datapath ---------------------------------------------------------------------------
    def _active(self) -> int:
        m = 0
        for vf in self.vfs:
            if vf.switch_active():
                m |= 1 << vf.index
        return m

    def switch_round(self, active: int) -> bool:
        """Serve every busy TX queue once; True when any frame moved.

        Without a steering destination, the busy TX queues of each queue pair are served together,
        in one :func:`~dataplane.nic.kernels.switch_window` call (bursts round-robin, frames copied
        straight from TX chain to RX chain)."""
        moved = False
        idle = K.idle_queue_ctx()
        steered = any(dvf.steered for dvf in self.vfs if active >> dvf.index & 1)
        served: dict[int, list] = {}  # pair -> the busy TX queues of that pair
        for vf in self.vfs:
            for q in vf.tx_queues():
                if q.busy <= 0 or q.ctx is None:
                    continue
                if steered or q.ctx.cfg[K.CFG_OFFLOADS] & OFF_TX:  # TSO and checksums are done on staged frames
                    n = self._serve_steered(vf, q, q.qid // 2, active, idle)
                    self._account(q, n)
                    moved = moved or n > 0
                else:
                    served.setdefault(q.qid // 2, []).append((vf.index, q))
        for pair, queues in served.items():
            txqs = [idle] * len(self.vfs)
            serve = self.sw[K.SW_SERVE]
            serve[: len(self.vfs)] = 0
            for v, q in queues:
                txqs[v] = q.ctx
                serve[v] = 1
            rxqs = []
            for dvf in self.vfs:
                ctx = dvf.rx_ctx(pair) if active >> dvf.index & 1 else None
                rxqs.append(ctx if ctx is not None else idle)
            self._window(tuple(txqs), self.fdb, active, tuple(rxqs), self.sw, SERVE_BUDGET * len(queues),
                         SERVE_SPIN)
            took = self.sw[K.SW_MOVED]
            for v, q in queues:
                n = int(took[v])
                self._account(q, n)
                moved = moved or n > 0
        return moved

    def _account(self, q, n: int) -> None:
        """A busy window of TX queue ``q`` took ``n`` chains: it stays busy, or counts down to idle
        (then kicks are wanted again, unless chains came meanwhile)."""
        if n > 0:
            q.busy = BUSY_TURNS
            return
        q.busy -= 1
        if not q.running:
            q.busy = 0
        elif q.busy == 0 and K.set_notify(q.ctx, True):  # idle: kicks on; chains came meanwhile?
            K.set_notify(q.ctx, False)
            q.busy = BUSY_TURNS

    def _serve_steered(self, vf, q, pair: int, active: int, idle) -> int:
        """:func:`~dataplane.nic.kernels.tx_serve`'s busy window when a destination steers per frame: each
        burst pulled is handed to every destination's :meth:`Function.deliver`."""
        total = 0
        empty = 0
        while total < SERVE_BUDGET:
            n = K.tx_pull(q.ctx, vf.index, self.fdb, active, self.stage, self.slen, self.smask,
                          min(K.BURST, SERVE_BUDGET - total))
            if n == 0:
                empty += 1
                if empty >= SERVE_SPIN or not q.running:
                    break
                continue
            empty = 0
            total += n
            dests = int(np.bitwise_or.reduce(self.smask[:n]))
            for dvf in self.vfs:
                bit = 1 << dvf.index
                if dests & bit:
                    dvf.deliver(pair, bit, self.stage, self.slen, self.smask, n, idle)
        return total

    @staticmethod
    def kicked(q) -> None:
        """A kick for TX queue ``q``: busy (polled every turn), no kicks wanted meanwhile."""
        if q.busy <= 0 and q.ctx is not None and q.running:
            K.set_notify(q.ctx, False)
        q.busy = BUSY_TURNS

    def run(self) -> None:
        active = 0
        last_activity = time.monotonic()
        loops = 0
        was_busy = False
        while not self.stopping:
            loops += 1
            if loops & 0xFF == 0:
                self.shm.hdr[HDR_LOOPS] = loops
            busy = False
            regs = not was_busy or loops % REG_EVERY == 0
            for vf in self.vfs:
                try:
                    if regs and vf.poll_registers():
                        last_activity = time.monotonic()
                except Exception as e:  # registers no check foresaw: the function resets, the card lives on
                    log.exception(f"{self.model}: register handling failed: function reset", vf=vf.bdf,
                                  error=repr(e))
                    vf.vrow[V_FAULTS] += 1
                    vf.reset()
                vf.poll_doorbells()
            if self.active_changed:
                self.active_changed = False
                active = self._active()
            if self.switch_round(active):
                busy = True
            if not busy:
                busy = any(q.busy > 0 for vf in self.vfs for q in vf.tx_queues())
            was_busy = busy
            if busy:
                if not regs:
                    continue  # the control sockets, like the registers, every REG_EVERY busy turns
                last_activity = time.monotonic()
                timeout = 0.0
            else:
                timeout = FAST_S if time.monotonic() - last_activity < ACTIVE_S else SLOW_S
            self._wait(timeout)
        self.shm.hdr[HDR_LOOPS] = loops

    def _manage(self) -> None:
        """One management request on ``card.sock`` (the CLI's): ``{"op": "link", "vf": BDF, "up": bool}``."""
        try:
            conn, _ = self.mgmt.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                msg = json.loads(conn.recv(MAX_MSG))
                if msg.get("op") != "link":
                    raise ValueError(f"unknown request {msg.get('op')!r}")
                vfs = [v for v in self.vfs if v.bdf == msg.get("vf")]
                if not vfs:
                    raise ValueError(f"no VF {msg.get('vf')!r} on card {self.pf}")
                vfs[0].link_up = bool(msg.get("up"))
                vfs[0].set_link(vfs[0].link_up)
                self.active_changed = True  # a VF whose link is down gets no frames
                reply = {"ok": True}
            except (ValueError, AttributeError, TypeError) as e:
                reply = {"ok": False, "error": str(e)}
            except OSError:
                return
            try:
                conn.send(json.dumps(reply).encode())
            except OSError:
                pass

    def _wait(self, timeout: float) -> None:
        socks = {}
        socks[self.mgmt.fileno()] = (None, None)
        for vf in self.vfs:
            socks[vf.listener.fileno()] = (vf, False)
            if vf.conn is not None:
                socks[vf.conn.fileno()] = (vf, True)
            for c in vf.rejects:
                socks[c.fileno()] = (vf, c)
        p = select.poll()
        for fd in socks:
            p.register(fd, select.POLLIN)
        try:
            ready = p.poll(timeout * 1000)
        except InterruptedError:
            return
        for fd, _ev in ready:
            vf, is_conn = socks[fd]
            if vf is None:
                self._manage()
            elif isinstance(is_conn, socket.socket):
                vf.reject(is_conn)
            elif is_conn:
                vf.serve()
            else:
                vf.accept()

    def close(self) -> None:
        for vf in self.vfs:
            try:
                vf.close()
            except Exception as e:  # keep closing the others
                log.error(f"{self.model}: closing a VF failed", vf=vf.bdf, error=str(e))
        self.vfs = []
        if self.mgmt is not None:
            self.mgmt.close()
            self.mgmt = None
        self.shm.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def install_signals(card: CardBase) -> None:
    def stop(_sig, _frm):
        card.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
