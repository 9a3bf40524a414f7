"""The virtio-user port object: probe from devargs, start, bursts, link state, stats, close.

::

    vu = VirtioUser.probe("net_virtio_user0,path=/tmp/vhost.sock,queues=2", memory, mempool)
    vu.start()                      # client: connect + negotiate now; server=1: listen, link up on accept
    vu.wait_link(True, timeout=10)
    sent = vu.tx_burst(0, mbufs)    # mbuf head indices (uint32); returns how many were taken
    got = vu.rx_burst(0, 32)        # array of mbuf head indices now owned by the caller
    vu.stats(); vu.close()

Each burst is ONE numba call (:mod:`dataplane.virtio.rxtx`); the Python
wrapper adds a non-blocking lock and a link check around it.

Threads: a small control thread watches the vhost-user socket, takes the
link down when the back-end goes away (or corrupts a ring) and, with
``server=1``, accepts the back-end's reconnection and sets everything up
again (the rings are reset: buffers the back-end held are freed, Rx rings
refilled).  Bursts and the control thread share one port lock; a burst never
waits for it: while the port is being reconfigured (or another thread is in
a burst of this port) a burst returns 0.

Processes: every queue's ring, driver state and counters live in one
memzone of ``memory`` (:mod:`dataplane.virtio.queue`), so an lcore process
sharing the memory can run the kernels itself (:meth:`VirtioUser.queue_info`,
:meth:`~dataplane.virtio.queue.VirtQueue.attach`); coordinating it with
reconnections (a hand-off like the vhost one) is the wrapper's job.

Memory: SET_MEM_TABLE announces every segment of ``memory`` (iova = virtual
address, as DPDK's virtio-user with ``--iova-mode=va``), so the mempool must
live in the same ``memory``, and every mbuf given to :meth:`tx_burst` must
come from the port's mempool.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import threading
import time
from typing import Callable

import numpy as np

from dataplane import log as dplog
from dataplane.rings import packed as pk
from dataplane.rings import split as sp
from dataplane.rings.virtqueue import FEAT_EVENT_IDX, FEAT_IN_ORDER
from dataplane.vhost.net_hdr import net_hdr_len
from dataplane.vhost_user.endpoint import prepare_server_path
from dataplane.vhost_user.errors import TransportError, VhostUserError
from dataplane.vhost_user.features import VirtioFeature as VF, bit, features_str
from dataplane.virtio import rxtx
from dataplane.virtio.devargs import DevargsError, VirtioUserArgs, parse_virtio_user_devargs
from dataplane.virtio.paths import RxTxPaths, select_paths
from dataplane.virtio.queue import VirtQueue
from dataplane.virtio.vhost_user import VhostUserChannel

log = dplog.get_logger("dataplane.virtio")

__all__ = ["VirtioUser", "VirtioUserError"]

_ids = itertools.count()
NET_HDR_MAX = 12


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


class VirtioUserError(RuntimeError):
    """A virtio-user port cannot do what was asked (no back-end, bad state)."""


def wanted_features(args: VirtioUserArgs) -> int:
    """The virtio feature bits the driver asks for, from its devargs."""
    f = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VIRTIO_RING_F_EVENT_IDX) | bit(VF.VIRTIO_F_ANY_LAYOUT)
    if args.mrg_rxbuf:
        f |= bit(VF.VIRTIO_NET_F_MRG_RXBUF)
    if args.in_order:
        f |= bit(VF.VIRTIO_F_IN_ORDER)
    if args.packed_vq:
        f |= bit(VF.VIRTIO_F_RING_PACKED)
    return f


class VirtioUser:
    """A virtio-user network port over a vhost-user back-end (see the module doc)."""

    def __init__(self, args: VirtioUserArgs, memory, mempool, *, max_rx_pkt_len: int = 1518,
                 lcore: int = -1, port_id: int = 0, timeout: float = 5.0):
        self.args = args
        self.memory = memory
        self.mempool = mempool
        self.lcore = int(lcore)
        self.port_id = int(port_id)
        self.timeout = timeout
        self.max_rx_pkt_len = int(max_rx_pkt_len)
        self.features = 0
        self.paths: RxTxPaths | None = None
        self.hdr_len = NET_HDR_MAX
        self.rx_segs = 1
        self._uid = f"vu{os.getpid() % 100000}_{next(_ids)}"
        self._rxq: list[VirtQueue] = []
        self._txq: list[VirtQueue] = []
        self._chan: VhostUserChannel | None = None
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link = False
        self._started = False
        self._callbacks: list[Callable[["VirtioUser", bool], None]] = []
        self.link_changes = 0
        self.connects = 0
        self.active_pairs = args.queues
        self.vlan_strip = False  # Rx offload VLAN_STRIP (software, seed 003)
        self.promisc = True
        self.allmulti = False
        self._mac = args.mac
        #: Data-path hooks for lcores that poll the queues from other processes
        #: (:class:`~dataplane.virtio.handoff.VirtioHandoff`): ``on_queues_start(port)``
        #: once the rings are fresh and the link comes up, ``on_queues_stop(port)``
        #: before anything resets or frees them (it returns once no lcore touches them).
        self.datapath = None

    def _datapath(self, what: str) -> None:
        hooks = self.datapath
        if hooks is None:
            return
        try:
            getattr(hooks, what)(self)
        except Exception as e:  # the control thread must survive a data-path bug
            log.error("virtio_user data-path hook failed", port=self.args.name, hook=what, error=repr(e))

    # -- probe ------------------------------------------------------------------------

    @classmethod
    def probe(cls, devargs: str, memory, mempool, **kw) -> "VirtioUser":
        """Check ``devargs`` and the mempool; nothing is connected yet (see :meth:`start`).

        Keyword options: ``max_rx_pkt_len`` (largest packet to receive without
        mergeable buffers: Rx buffers become chains of mbufs when it does not
        fit one), ``lcore`` (mempool cache to use, -1 none), ``port_id``
        (written into received mbufs), ``timeout`` (seconds per back-end reply).
        Raises :class:`~dataplane.virtio.devargs.DevargsError` on bad devargs.
        """
        args = parse_virtio_user_devargs(devargs)
        if mempool.headroom < NET_HDR_MAX:
            raise DevargsError(
                f"virtio_user: mempool {mempool.name!r} headroom {mempool.headroom} < {NET_HDR_MAX} "
                "(the virtio-net header goes there, seed 003)"
            )
        if mempool.data_room < 64:
            raise DevargsError(f"virtio_user: mempool {mempool.name!r} data room {mempool.data_room} is too small")
        self = cls(args, memory, mempool, **kw)
        if args.packed_vq and not args.mrg_rxbuf and self.max_rx_pkt_len > mempool.data_room:
            raise DevargsError(
                f"virtio_user: packed_vq=1,mrg_rxbuf=0 needs max_rx_pkt_len ({self.max_rx_pkt_len}) to fit one mbuf "
                f"(data room {mempool.data_room}): DPDK's vhost cannot fill chained Rx buffers of a packed ring",
                "mrg_rxbuf",
            )
        log.info("virtio_user probed", port=args.name, path=args.path, queues=args.queues, queue_size=args.queue_size,
                 server=args.server, packed_vq=args.packed_vq, mrg_rxbuf=args.mrg_rxbuf, in_order=args.in_order)
        return self

    # -- link ---------------------------------------------------------------------------

    @property
    def link_up(self) -> bool:
        return self._link

    def link(self) -> dict:
        """rte_eth_link-like: ``{"link_status", "link_speed", "link_duplex"}``."""
        return {"link_status": int(self._link), "link_speed": self.args.speed if self._link else 0, "link_duplex": "full"}

    def on_link_change(self, cb: Callable[["VirtioUser", bool], None]) -> None:
        """Call ``cb(port, up)`` on every link change (LSC), from the thread that saw it
        (the control thread; :meth:`start` in client mode)."""
        self._callbacks.append(cb)

    def wait_link(self, up: bool = True, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._link != up:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _set_link(self, up: bool) -> None:
        if self._link == up:
            return
        self._link = up
        self.link_changes += 1
        log.info("virtio_user link " + ("up" if up else "down"), port=self.args.name)
        for cb in list(self._callbacks):
            try:
                cb(self, up)
            except Exception as e:  # a user callback must not kill the control thread
                log.error("virtio_user link callback failed", port=self.args.name, error=str(e))

    # -- start / stop -------------------------------------------------------------------

    def start(self) -> None:
        """Client mode: connect and negotiate now (:class:`VirtioUserError` if that fails).
        ``server=1``: listen on ``path``; the link comes up when a back-end connects."""
        if self._started:
            return
        if self.args.server:
            try:
                prepare_server_path(self.args.path)
            except TransportError as e:
                raise VirtioUserError(f"virtio_user {self.args.name}: {e}") from None
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                ls.bind(self.args.path)
                ls.listen(1)
            except OSError as e:
                ls.close()
                raise VirtioUserError(f"virtio_user {self.args.name}: cannot listen on {self.args.path}: {e}") from None
            self._listener = ls
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.settimeout(self.timeout)
                s.connect(self.args.path)
            except OSError as e:
                s.close()
                raise VirtioUserError(f"virtio_user {self.args.name}: cannot connect to {self.args.path}: {e}") from None
            if not self._connected(s):
                raise VirtioUserError(f"virtio_user {self.args.name}: set-up with the back-end at {self.args.path} failed (see log)")
        self._started = True
        self._thread = threading.Thread(target=self._control_loop, name=f"virtio_user:{self.args.name}", daemon=True)
        self._thread.start()

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            chan = self._chan
            if chan is None:
                if self._listener is None:
                    self._stop.wait(0.1)  # client mode: no reconnection
                    continue
                try:
                    r, _, _ = select.select([self._listener], [], [], 0.1)
                except (OSError, ValueError):
                    return
                if not r or self._stop.is_set():
                    continue
                try:
                    s, _ = self._listener.accept()
                except OSError:
                    continue
                self._connected(s)
            else:
                try:
                    r, _, _ = select.select([chan.sock], [], [], 0.1)
                except (OSError, ValueError):
                    r = [chan.sock]
                if r:
                    # a request/reply from another thread (set_queue_pairs) holds the lock
                    # until its reply is read: only then is readable data unasked-for
                    with self._lock:
                        closed = self._chan is chan and chan.peer_closed()
                    if closed:
                        log.warning("virtio_user: back-end disconnected", port=self.args.name)
                        self._disconnect()
                        continue
                broken = [q.index for q in self._rxq + self._txq if q.broken]
                if broken:
                    # an impossible used entry (unknown id, used idx jump): the ring cannot be trusted
                    log.error("virtio_user: back-end corrupted virtqueues; dropping the connection",
                              port=self.args.name, vrings=broken)
                    self._disconnect()

    def _make_queues(self, packed: bool) -> None:
        if self._rxq and self._rxq[0].packed == packed:
            return
        self._free_queues()
        n = self.args.queue_size
        for i in range(self.args.queues):
            self._rxq.append(VirtQueue(self.memory, f"{self._uid}_{2 * i}", 2 * i, n, packed))
            self._txq.append(VirtQueue(self.memory, f"{self._uid}_{2 * i + 1}", 2 * i + 1, n, packed))

    def _free_queues(self) -> None:
        for q in self._rxq + self._txq:
            q.release_buffers(self.mempool)
            q.close()
        self._rxq, self._txq = [], []

    def _connected(self, sock: socket.socket) -> bool:
        """Negotiate and start on a fresh connection; False (socket closed, link down) on failure."""
        self._datapath("on_queues_stop")  # the rings are about to be reset
        chan = VhostUserChannel(sock, self.timeout)
        with self._lock:
            try:
                features = chan.negotiate(wanted_features(self.args), self.args.queues)
                packed = bool(features & bit(VF.VIRTIO_F_RING_PACKED))
                if self.args.packed_vq and not packed:
                    log.warning("virtio_user: back-end does not offer packed virtqueues; using split", port=self.args.name)
                paths = select_paths(features, self.args.vectorized)
                self.features = features
                self.paths = paths
                self.hdr_len = net_hdr_len(features)
                room = self.mempool.data_room
                self.rx_segs = 1 if paths.mergeable else max(1, -(-self.max_rx_pkt_len // room))
                if self.rx_segs > self.args.queue_size or self.rx_segs > 64:
                    raise VirtioUserError(f"max_rx_pkt_len {self.max_rx_pkt_len} needs {self.rx_segs} mbufs per Rx buffer")
                if packed and self.rx_segs > 1:
                    # DPDK's vhost (22.11) enqueues into packed rings 4 descriptors at a time
                    # ignoring NEXT, so chained Rx buffers get corrupted: refuse them.
                    raise VirtioUserError(
                        f"packed ring without mergeable buffers: max_rx_pkt_len {self.max_rx_pkt_len} does not fit one "
                        f"mbuf (data room {room}); use mrg_rxbuf=1 or a mempool with a larger data room",
                    )
                self._make_queues(packed)
                fmask = (FEAT_EVENT_IDX if features & bit(VF.VIRTIO_RING_F_EVENT_IDX) else 0) | (
                    FEAT_IN_ORDER if paths.in_order else 0
                )
                for q in self._rxq + self._txq:
                    q.release_buffers(self.mempool)
                    q.init(fmask)
                for q in self._rxq:
                    self._refill(q)
                chan.start(self.memory.segments_table(), [q.setup() for q in self._ring_order()])
                if self.active_pairs < self.args.queues:
                    self._apply_pairs(chan)
            except Exception as e:  # the back-end's fault, or our own (no memory for rings): link stays down
                if isinstance(e, VhostUserError):
                    log.error("virtio_user: back-end set-up failed", port=self.args.name, request=e.request, reason=e.reason)
                else:
                    log.error("virtio_user: back-end set-up failed", port=self.args.name, request="setup",
                              reason=f"{type(e).__name__}: {e}")
                chan.close()
                for q in self._rxq + self._txq:
                    q.release_buffers(self.mempool)
                return False
            self._chan = chan
            self.connects += 1
        log.info("virtio_user connected", port=self.args.name, features=features_str(features), rx_path=paths.rx,
                 tx_path=paths.tx, hdr_len=self.hdr_len, protocol_features=hex(chan.protocol_features))
        self._datapath("on_queues_start")
        self._set_link(True)
        return True

    def _ring_order(self) -> list[VirtQueue]:
        out = []
        for rx, tx in zip(self._rxq, self._txq):
            out += [rx, tx]
        return out

    def _disconnect(self) -> None:
        self._datapath("on_queues_stop")
        with self._lock:
            chan, self._chan = self._chan, None
            if chan is not None:
                chan.close()
            for q in self._rxq + self._txq:
                q.release_buffers(self.mempool)
        self._set_link(False)

    def close(self) -> None:
        """Disconnect, stop the control thread, free rings and buffers; the port is unusable after."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._chan is not None:
            self._disconnect()
        self._datapath("on_queues_stop")
        with self._lock:
            self._free_queues()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.args.path)
            except OSError:
                pass
        self._started = False

    def __enter__(self) -> "VirtioUser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- data path ------------------------------------------------------------------------

    def _refill(self, q: VirtQueue) -> int:
        return int(
            rxtx.rx_refill_kernel(q.vr, q.ds, self.mempool.arrays, self.lcore, self.hdr_len, self.rx_segs, q.kick_fd,
                                  q.counters, q.sg_gpa, q.sg_len, q.sg_wr)
        )

    def rx_burst_into(self, qid: int, out: np.ndarray, n: int | None = None) -> int:
        """Receive up to ``n`` packets into ``out`` (uint32 mbuf heads); returns the count."""
        n = out.shape[0] if n is None else min(int(n), out.shape[0])
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            if self._chan is None or qid >= self.active_pairs:
                return 0
            q = self._rxq[qid]
            return int(
                rxtx.rx_burst_kernel(q.vr, q.ds, self.mempool.arrays, self.lcore, out, n, self.hdr_len,
                                     self.paths.mergeable, self.rx_segs, self.port_id, self.vlan_strip, q.kick_fd, q.counters,
                                     q.ck, q.ln, q.sg_gpa, q.sg_len, q.sg_wr)
            )
        finally:
            self._lock.release()

    def rx_burst(self, qid: int, n: int = 32) -> np.ndarray:
        """Up to ``n`` received packets (uint32 mbuf heads, now the caller's)."""
        out = np.empty(int(n), np.uint32)
        return out[: self.rx_burst_into(qid, out, n)]

    def tx_burst(self, qid: int, mbufs, n: int | None = None) -> int:
        """Queue packets (uint32 mbuf heads) for sending; returns how many were taken (the first k).

        Taken mbufs belong to the port (freed when the back-end is done); the
        rest stay the caller's.  Link down: 0.
        """
        pkts = mbufs if isinstance(mbufs, np.ndarray) and mbufs.dtype == np.uint32 else np.asarray(mbufs, np.uint32)
        n = pkts.shape[0] if n is None else min(int(n), pkts.shape[0])
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            if self._chan is None or qid >= self.active_pairs:
                return 0
            q = self._txq[qid]
            return int(
                rxtx.tx_burst_kernel(q.vr, q.ds, self.mempool.arrays, self.lcore, pkts, n, self.hdr_len, q.hdr_hva,
                                     q.hdr_iova, q.kick_fd, q.counters, q.ck, q.ln, q.sg_gpa, q.sg_len, q.sg_wr)
            )
        finally:
            self._lock.release()

    # -- Rx interrupts (seed 003: 1:1 queue/interrupt mapping) ------------------------------

    def rx_intr_fd(self, qid: int) -> int:
        """The eventfd that becomes readable when Rx queue ``qid`` has packets, once enabled
        (the queue's call fd: the back-end writes it)."""
        return self._rxq[qid].call_fd

    def rx_intr_enable(self, qid: int) -> bool:
        """Ask the back-end to signal :meth:`rx_intr_fd` on the next used buffer.

        Returns True when packets are already waiting (do not sleep: poll).
        Stale signals are drained first, so a readable fd afterwards means new traffic.
        """
        with self._lock:
            q = self._rxq[qid]
            _drain(q.call_fd)
            fn = pk.packed_drv_enable_interrupt if q.packed else sp.split_drv_enable_interrupt
            return bool(fn(q.vr, q.ds, True))

    def rx_intr_disable(self, qid: int) -> None:
        """Back to pure polling: no more signals for Rx queue ``qid``; drains its fd."""
        with self._lock:
            q = self._rxq[qid]
            fn = pk.packed_drv_enable_interrupt if q.packed else sp.split_drv_enable_interrupt
            fn(q.vr, q.ds, False)
            _drain(q.call_fd)

    # -- control queue (cq=1), emulated in the driver -------------------------------------
    #
    # vhost-user back-ends (DPDK's included) have no control virtqueue; DPDK's
    # virtio-user answers the control commands itself (virtio_user_handle_cq)
    # and turns VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET into SET_VRING_ENABLE.  So do we.

    def _need_cq(self, what: str) -> None:
        if not self.args.cq:
            raise VirtioUserError(f"virtio_user {self.args.name}: {what} needs the control queue (cq=1)")

    def set_queue_pairs(self, n: int) -> None:
        """VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: use queue pairs ``0..n-1`` only (the others are
        disabled at the back-end; bursts on them return 0).  Applied again after a reconnection."""
        self._need_cq("MQ_VQ_PAIRS_SET")
        n = int(n)
        if not 1 <= n <= self.args.queues:
            raise VirtioUserError(f"virtio_user {self.args.name}: queue pairs {n} not in 1..{self.args.queues}")
        with self._lock:
            self.active_pairs = n
            if self._chan is not None:
                try:
                    self._apply_pairs(self._chan)
                except VhostUserError as e:
                    log.error("virtio_user: SET_VRING_ENABLE failed", port=self.args.name, reason=e.reason)
                    raise VirtioUserError(f"virtio_user {self.args.name}: {e}") from None

    def _apply_pairs(self, chan: VhostUserChannel) -> None:
        for i in range(self.args.queues):
            on = i < self.active_pairs
            chan.set_vring_enable(2 * i, on)
            chan.set_vring_enable(2 * i + 1, on)

    def set_vlan_strip(self, on: bool) -> None:
        """Rx VLAN stripping (software): tags move into ``vlan_tci`` with RX_VLAN | RX_VLAN_STRIPPED.
        (Tx insertion is always on: mbufs flagged TX_VLAN get their ``vlan_tci`` inserted.)"""
        self.vlan_strip = bool(on)

    def set_promisc(self, on: bool) -> None:
        """VIRTIO_NET_CTRL_RX_PROMISC (best effort, seed 003: the back-end filters nothing here)."""
        self._need_cq("CTRL_RX_PROMISC")
        self.promisc = bool(on)

    def set_allmulti(self, on: bool) -> None:
        """VIRTIO_NET_CTRL_RX_ALLMULTI (best effort)."""
        self._need_cq("CTRL_RX_ALLMULTI")
        self.allmulti = bool(on)

    def set_mac(self, mac: bytes | str) -> None:
        """VIRTIO_NET_CTRL_MAC_ADDR_SET: the port's MAC (what :attr:`mac` reports)."""
        self._need_cq("CTRL_MAC_ADDR_SET")
        if isinstance(mac, str):
            from dataplane.virtio.devargs import _mac

            mac = _mac(mac)
        if len(mac) != 6 or mac[0] & 1:
            raise VirtioUserError(f"virtio_user {self.args.name}: {bytes(mac).hex(':')} is not a unicast MAC address")
        self._mac = bytes(mac)

    def queue_info(self) -> dict:
        """What another process needs to run this port's bursts on its own (see
        :meth:`~dataplane.virtio.queue.VirtQueue.attach`): the memzone of each
        Rx and Tx queue, the kernels' scalar arguments and this process's kick fds.
        Valid while the link is up; a reconnection re-initialises the rings."""
        return {
            "rx_zones": [q.zone_name for q in self._rxq],
            "tx_zones": [q.zone_name for q in self._txq],
            "rx_kick_fds": [q.kick_fd for q in self._rxq],
            "tx_kick_fds": [q.kick_fd for q in self._txq],
            "hdr_len": self.hdr_len,
            "mergeable": bool(self.paths.mergeable) if self.paths else False,
            "rx_segs": self.rx_segs,
            "vlan_strip": self.vlan_strip,
            "packed": bool(self.paths.packed) if self.paths else False,
            "rx_path": self.paths.rx if self.paths else None,
            "tx_path": self.paths.tx if self.paths else None,
        }

    @property
    def mac(self) -> bytes:
        """The port's MAC address (devargs ``mac``, else random locally administered; :meth:`set_mac`)."""
        return self._mac

    # -- stats ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """ethdev-like totals plus per-queue lists (``q_ipackets`` ...)."""
        rx = [q.counters.copy() for q in self._rxq]
        tx = [q.counters.copy() for q in self._txq]

        def tot(lst, k):
            return int(sum(int(c[k]) for c in lst))

        return {
            "ipackets": tot(rx, rxtx.Q_PACKETS),
            "ibytes": tot(rx, rxtx.Q_BYTES),
            "ierrors": tot(rx, rxtx.Q_ERRORS),
            "rx_nombuf": tot(rx, rxtx.Q_NOMBUF),
            "opackets": tot(tx, rxtx.Q_PACKETS),
            "obytes": tot(tx, rxtx.Q_BYTES),
            "oerrors": tot(tx, rxtx.Q_ERRORS),
            "tx_full": tot(tx, rxtx.Q_DROPS),
            "q_ipackets": [int(c[rxtx.Q_PACKETS]) for c in rx],
            "q_ibytes": [int(c[rxtx.Q_BYTES]) for c in rx],
            "q_opackets": [int(c[rxtx.Q_PACKETS]) for c in tx],
            "q_obytes": [int(c[rxtx.Q_BYTES]) for c in tx],
            "q_errors": [int(c[rxtx.Q_ERRORS]) for c in rx + tx],
            "kicks": tot(rx + tx, rxtx.Q_KICKS),
            "bad_used": sum(q.bad_used for q in self._rxq + self._txq),
        }

    def reset_stats(self) -> None:
        for q in self._rxq + self._txq:
            q.counters[:] = 0
