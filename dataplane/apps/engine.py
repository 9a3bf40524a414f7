"""The forwarding engine: ports from ``--vdev``, streams on forwarding lcores, start/stop, statistics.

It does what testpmd's core does:

* **ports** from the EAL's ``--vdev`` list, numbered in order, each built by
  the driver its name selects (:mod:`dataplane.ethdev.registry`: ``net_vhost*``,
  ``net_virtio_user*``, ``net_ring*``, ...), through the port interface of
  :mod:`dataplane.ethdev.port` only;
* **port topology** (testpmd's ``--port-topology``): ``paired`` (the default)
  forwards port 0 to 1 and 1 to 0, 2 to 3, ..., an odd last port to itself;
  ``chained`` port i to i+1 and the last to 0; ``loop`` each port to itself;
* **streams**: one per (port, Rx queue), transmitting on the same queue
  number of the paired port (``q % txq``), spread over ``nb_cores``
  forwarding lcores in consecutive blocks (the worker lcores, in order);
* **start** launches :func:`~dataplane.apps.fwd_loop.fwd_loop` on each
  forwarding lcore; **stop** lowers the run flag and collects the forward
  statistics.

Counters are shared memory: per stream (rx, tx, dropped) and per port queue
(packets and bytes each way), so :meth:`Engine.port_stats` reads them while
lcores forward.  Each port queue is placed on the lcore of the stream that
uses it (:meth:`~dataplane.ethdev.port.Port.place_queue`); in that lcore the
driver's :class:`~dataplane.ethdev.port.LcorePort` hands it to the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dataplane import log as dplog
from dataplane.perf_map import write_perf_map_if_wanted
from dataplane.apps import fwd_loop as FL
from dataplane.apps.fwd_modes import FLOWGEN_DEFAULT_FLOWS, csum_counters
from dataplane.config import (FORWARD_MODES, MAX_MBUF_SIZE, MAX_PKT_LEN, MIN_MBUF_SIZE, MIN_PKT_LEN, PORT_TOPOLOGIES,
                              ForwardConfig)
from dataplane.ethdev import EthdevError, registry
from dataplane.ethdev.port import RX, TX, PortEnv
from dataplane.ethdev.queue import ENTRY_VIRTIO_PACKED, KIND_NONE, KIND_RING, KIND_VHOST, KIND_VIRTIO, entry_addresses, Q_SLOTS, Q_RX_BYTES, Q_RX_PACKETS, Q_TX_BYTES, Q_TX_DROPPED, Q_TX_PACKETS
from dataplane.lcores import launch
from dataplane.lcores.eal_args import MAX_LCORE
from dataplane.memory.mbuf import RTE_MBUF_DEFAULT_BUF_SIZE, RTE_PKTMBUF_HEADROOM
from dataplane.memory.mempool import mempool_create, mempool_free, mempool_lookup
from dataplane.rings.atomics import py_load_acquire
from dataplane.net.ether import mac_to_int

__all__ = ["FwdConfig", "Engine", "StreamSpec", "check_fwd", "warm_up_entries"]

log = dplog.get_logger("dataplane.engine")

_POOL = "engine_pool"
_QSTATS = "engine_qstats"
_FSTATS = "engine_fstats"
_RUN = "engine_run"
_PORTS = "engine_port_up"
MAX_QUEUES = 64
#: How long ``start`` waits for the forwarding lcores to be in their loops (they may
#: first load, or with a custom forwarding function compile, their numba code).
START_TIMEOUT = 300.0


def mac_str(v: int) -> str:
    """testpmd's way to print a MAC address: ``52:54:00:12:34:56`` in capitals."""
    return ":".join(f"{(v >> (40 - 8 * i)) & 0xFF:02X}" for i in range(6))


#: testpmd's forwarding options (the ``[forward]`` table of a config file).
FwdConfig = ForwardConfig


def check_fwd(fwd: FwdConfig) -> None:
    """What the engine can run: raises ValueError with the reason."""
    if fwd.mode not in FL.MODES:
        raise ValueError(f"forwarding mode {fwd.mode!r} is not available (available: {', '.join(sorted(FL.MODES))})"
                         if fwd.mode in FORWARD_MODES else
                         f"unknown forwarding mode {fwd.mode!r} (known: {', '.join(FORWARD_MODES)})")
    if not 1 <= fwd.burst <= 512:
        raise ValueError(f"burst {fwd.burst} out of range 1..512")
    for name in ("rxq", "txq"):
        v = getattr(fwd, name)
        if not 1 <= v <= MAX_QUEUES:
            raise ValueError(f"{name} {v} out of range 1..{MAX_QUEUES}")
    if fwd.port_topology not in PORT_TOPOLOGIES:
        raise ValueError(f"port topology {fwd.port_topology!r} is not one of {', '.join(PORT_TOPOLOGIES)}")
    if fwd.mbuf_size is not None:
        if not MIN_MBUF_SIZE <= fwd.mbuf_size <= MAX_MBUF_SIZE:
            raise ValueError(f"mbuf size {fwd.mbuf_size} out of range {MIN_MBUF_SIZE}..{MAX_MBUF_SIZE} "
                             f"(it includes the {RTE_PKTMBUF_HEADROOM}-byte headroom)")
        room = fwd.mbuf_size - RTE_PKTMBUF_HEADROOM
        if fwd.mode in ("txonly", "flowgen") and max(fwd.txpkts) > room:
            raise ValueError(f"txpkts segment of {max(fwd.txpkts)} bytes does not fit an mbuf of {fwd.mbuf_size} "
                             f"bytes ({room} after the headroom)")
    if fwd.max_pkt_len is not None and not MIN_PKT_LEN <= fwd.max_pkt_len <= MAX_PKT_LEN:
        raise ValueError(f"max packet length {fwd.max_pkt_len} out of range {MIN_PKT_LEN}..{MAX_PKT_LEN}")


@dataclass
class StreamSpec:
    """One stream: receive on (rx_port, rx_queue), transmit on (tx_port, tx_queue), on ``lcore``."""

    index: int
    rx_port: int
    rx_queue: int
    tx_port: int
    tx_queue: int
    lcore: int


class Engine:
    """Ports, streams and forwarding lcores of one running EAL (``eal``)."""

    def __init__(self, eal, fwd: FwdConfig, vdevs=None, *, fwd_fn=None):
        self.fwd_fn = fwd_fn
        if fwd_fn is None:
            check_fwd(fwd)
        self.eal = eal
        self.fwd = fwd
        self.memory = eal.memory
        self.launcher = eal.launcher
        vdevs = list(eal.cfg.vdevs if vdevs is None else vdevs)
        if not vdevs:
            raise EthdevError("no ports: give at least one --vdev (net_vhostN,iface=... or net_ringN)")
        self.pool = mempool_create(self.memory, _POOL, fwd.total_num_mbufs, cache_size=256,
                                   data_room_size=fwd.mbuf_size or RTE_MBUF_DEFAULT_BUF_SIZE)
        self.ports: list = []
        try:
            env = PortEnv(memory=self.memory, mempool=self.pool, launcher=self.launcher,
                          max_rx_pkt_len=fwd.max_pkt_len or max(1518, sum(fwd.txpkts)))
            self.port_env = env  # what every port was built with
            for pid, d in enumerate(vdevs):
                self.ports.append(self._make_port(d, pid, env))
            by_name = {p.name: p for p in self.ports}
            for p in self.ports:
                p.bind(by_name)
            self.nb_ports = len(self.ports)
            maxq = max(fwd.rxq, fwd.txq)
            self.qstats = self._zone(_QSTATS, self.nb_ports * maxq * Q_SLOTS).reshape(self.nb_ports, maxq, Q_SLOTS)
            self.streams = self._plan()
            self.fstats = self._zone(_FSTATS, max(1, len(self.streams)) * FL.S_SLOTS).reshape(-1, FL.S_SLOTS)
            self.run_flag = self.memory.memzone_reserve(_RUN, 4 * (FL.RUN_FORWARDING + MAX_LCORE)).view(np.uint32)
            self.run_flag[:] = 0
            self.port_up = self._zone(_PORTS, self.nb_ports)
            self.port_up[:] = 1
            if fwd_fn is None:  # compile before any port is up (a second start loads the cache)
                watched = [_watched(p.name) for p in self.ports]
                shapes = {lc: _loop_shapes([s for s in self.streams if s.lcore == lc], watched)
                          for lc in {s.lcore for s in self.streams}}
                keys = _entry_keys(self.ports)
                mode = FL.MODES.get(self.fwd.mode, FL.MODE_IO)
                # the lcores compile a share of a cold cache beside us (one cpu each), then load the
                # rest, so start need not wait; then we load what they compiled
                lcs = sorted(shapes)
                for idx, lc in enumerate(lcs):
                    self.launcher.remote_launch(_lcore_preload, ([shapes[lc]], keys, (idx + 1, len(lcs) + 1), mode), lc)
                loaded = []
                try:
                    _warm_up(list(shapes.values()), keys=keys, share=(0, len(lcs) + 1), mode=mode)
                finally:
                    for lc in lcs:
                        try:
                            loaded.append(self.launcher.wait_lcore(lc) is True)
                        except launch.LcoreError as e:  # start reports a dead lcore; a failed preload costs time only
                            log.warning("lcore preload failed", lcore=lc, error=str(e))
                            loaded.append(False)
                if not all(loaded):
                    # a cold cache: what the lcores did not compile, compile here (they load it at start).  When
                    # every lcore loaded everything, the cache is complete and this process, which runs no loop,
                    # needs none of it: a warm start does not wait for these loads.
                    _warm_up(list(shapes.values()), keys=keys, mode=mode)
            # listening sockets first: a port of this engine may connect to another port of it
            for p in sorted(self.ports, key=lambda p: not p.listening):
                p.start()
        except BaseException:
            self.close()
            raise
        self.running = False
        self._fstats_base = np.zeros_like(self.fstats)
        self._qstats_base = np.zeros_like(self.qstats)
        self._started_at = 0.0

    # -- construction -----------------------------------------------------------
    def _zone(self, name: str, n: int) -> np.ndarray:
        a = self.memory.memzone_reserve(name, n * 8).view(np.int64)
        a[:] = 0
        return a

    def _make_port(self, d, pid: int, env: PortEnv):
        port = registry.probe(d, pid, env)
        try:
            port.configure(self.fwd.rxq, self.fwd.txq)
        except BaseException:
            port.close()
            raise
        return port

    def fwd_peer(self, pid: int) -> int:
        """The port ``pid`` forwards to, after ``--port-topology`` (see the module doc)."""
        topology = self.fwd.port_topology
        if topology == "loop":
            return pid
        if topology == "chained":
            return (pid + 1) % self.nb_ports
        if pid % 2 == 0:
            return pid + 1 if pid + 1 < self.nb_ports else pid
        return pid - 1

    def fwd_lcores(self) -> list[int]:
        workers = self.launcher.worker_ids
        n = self.fwd.nb_cores or len(workers)
        if not 1 <= n <= len(workers):
            raise EthdevError(f"--nb-cores={n}: there are {len(workers)} worker lcores")
        return workers[:n]

    def _plan(self) -> list[StreamSpec]:
        lcores = self.fwd_lcores()
        pairs = [(p, q) for p in range(self.nb_ports) for q in range(self.fwd.rxq)]
        per, extra = divmod(len(pairs), len(lcores))
        out, i = [], 0
        for li, lc in enumerate(lcores):
            take = per + (1 if li < extra else 0)
            for p, q in pairs[i : i + take]:
                out.append(StreamSpec(len(out), p, q, self.fwd_peer(p), q % self.fwd.txq, lc))
            i += take
        for s in out:  # a port queue is polled by the lcore of the stream using it
            self.ports[s.rx_port].place_queue(s.rx_queue, RX, s.lcore)
            self.ports[s.tx_port].place_queue(s.tx_queue, TX, s.lcore)
        return out

    # -- forwarding -----------------------------------------------------------------
    def start(self, tx_first: int = 0) -> None:
        """testpmd ``start`` (``start tx_first N`` with ``tx_first=N``): launch the forwarding loops;
        with ``tx_first`` each stream first sends N bursts of ``--txpkts`` packets."""
        if self.running:
            raise RuntimeError("forwarding is already started")
        if self.fwd_fn is None:
            check_fwd(self.fwd)
        if len(self.fwd.txpkts) > 255 or sum(self.fwd.txpkts) > 0xFFFF:
            raise ValueError(f"txpkts {self.fwd.txpkts}: at most 255 segments and 65535 bytes")
        self._fstats_base = self.fstats.copy()
        self.run_flag[FL.RUN_FORWARDING:] = 0
        self.run_flag[FL.RUN_SWITCH] = 1
        cfg = np.zeros(FL.CFG_SLOTS, np.int64)
        cfg[FL.CFG_MODE] = FL.MODES.get(self.fwd.mode, FL.MODE_IO)
        cfg[FL.CFG_BURST] = self.fwd.burst
        cfg[FL.CFG_TX_FIRST] = int(tx_first)
        cfg[FL.CFG_NSEG] = len(self.fwd.txpkts)
        cfg[FL.CFG_MULTI_FLOW] = int(self.fwd.txonly_multi_flow)
        cfg[FL.CFG_NB_FLOWS] = FLOWGEN_DEFAULT_FLOWS
        cfg[FL.CFG_TX_PKT_LEN] = sum(self.fwd.txpkts)
        seg_lens = np.array(self.fwd.txpkts, np.int64)
        port_info = [dict(p.lcore_info(), mac=p.mac, peer_mac=self._peer_mac(p.port_id), entry_keys=_entry_keys([p]))
                     for p in self.ports]
        by_lcore: dict[int, list[StreamSpec]] = {}
        for s in self.streams:
            by_lcore.setdefault(s.lcore, []).append(s)
        for lc, specs in by_lcore.items():
            self.launcher.remote_launch(_lcore_main, (specs, port_info, cfg, seg_lens, self.qstats.shape[1], self.fwd_fn), lc)
        self.running = True
        self._started_at = time.monotonic()
        self._wait_forwarding(sorted(by_lcore))
        log.info("forwarding started", mode=self.fwd.mode if self.fwd_fn is None else "custom", streams=len(self.streams), lcores=sorted(by_lcore))

    def _wait_forwarding(self, lcores: list[int]) -> None:
        """Return once every lcore in ``lcores`` runs its loop, tx_first sent (testpmd's ``start``:
        traffic flows when the prompt is back).  An lcore that ends first is an error."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(lcores)
        while pending:
            pending = [lc for lc in pending if not py_load_acquire(self.run_flag, FL.RUN_FORWARDING + lc)]
            ended = [lc for lc in pending if self.launcher.get_state(lc) is not launch.LcoreState.RUNNING]
            if ended:
                self.stop()  # raises the failure of an lcore that failed
                raise RuntimeError(f"forwarding lcore(s) {ended} ended before forwarding")
            if pending and time.monotonic() > deadline:
                log.warning("forwarding lcores are not forwarding yet", lcores=pending, waited=START_TIMEOUT)
                return
            if pending:
                time.sleep(0.001)

    def stop(self) -> dict:
        """testpmd ``stop``: stop the loops, wait for them; returns the forward statistics."""
        if not self.running:
            return self.forward_stats()
        self.run_flag[FL.RUN_SWITCH] = 0
        try:
            self.launcher.mp_wait_lcore(timeout=60)
        finally:
            self.running = False
        return self.forward_stats()

    def peer_mac(self, pid: int) -> int:
        """The destination MAC the mac-rewriting modes put on frames sent on port ``pid`` (--eth-peer)."""
        return self._peer_mac(pid)

    def _peer_mac(self, pid: int) -> int:
        peer = self.fwd.eth_peer.get(pid)
        return mac_to_int(peer) if peer else mac_to_int("02:00:00:00:00:00") + pid

    # -- statistics ---------------------------------------------------------------------
    def forward_stats(self) -> dict:
        """Per stream and accumulated since the last start: RX-packets, TX-packets, TX-dropped."""
        f = self.fstats - self._fstats_base
        streams = [dict(stream=s.index, rx_port=s.rx_port, rx_queue=s.rx_queue, tx_port=s.tx_port,
                        tx_queue=s.tx_queue, rx=int(f[s.index, FL.S_RX]), tx=int(f[s.index, FL.S_TX]),
                        dropped=int(f[s.index, FL.S_FWD_DROPPED])) for s in self.streams]
        return dict(streams=streams, rx=sum(s["rx"] for s in streams), tx=sum(s["tx"] for s in streams),
                    dropped=sum(s["dropped"] for s in streams))

    def port_stats(self, pid: int) -> dict:
        q = self.qstats[pid] - self._qstats_base[pid]
        out = dict(ipackets=int(q[:, Q_RX_PACKETS].sum()), ibytes=int(q[:, Q_RX_BYTES].sum()),
                   opackets=int(q[:, Q_TX_PACKETS].sum()), obytes=int(q[:, Q_TX_BYTES].sum()),
                   imissed=0, ierrors=0, oerrors=int(q[:, Q_TX_DROPPED].sum()), rx_nombuf=0)
        port = self.ports[pid]
        if port.stats_fields:
            own = port.stats()
            out.update({k: own[k] for k in port.stats_fields})
        return out

    def clear_port_stats(self, pid: int | None = None) -> None:
        for p in range(self.nb_ports) if pid is None else [pid]:
            self._qstats_base[p] = self.qstats[p]
            self.ports[p].reset_stats()

    def xstats(self, pid: int) -> dict:
        x = self.ports[pid].xstats()
        if x:
            return x
        s = self.port_stats(pid)
        return {"rx_good_packets": s["ipackets"], "tx_good_packets": s["opackets"],
                "rx_good_bytes": s["ibytes"], "tx_good_bytes": s["obytes"]}

    def link_up(self, pid: int) -> bool:
        return bool(self.ports[pid].link_up) and bool(self.port_up[pid])

    def port_stop(self, pid: int) -> None:
        """testpmd ``port stop``: the port's queues stop receiving and sending (the vhost connection stays)."""
        self.port_up[pid] = 0

    def port_start(self, pid: int) -> None:
        self.port_up[pid] = 1

    def port_started(self, pid: int) -> bool:
        return bool(self.port_up[pid])

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "running", False):
            self.stop()
        for p in getattr(self, "ports", []):
            try:
                p.close()
            except Exception as e:
                log.warning("port close failed", port=p.name, error=str(e))
        self.ports = []
        for name in (_QSTATS, _FSTATS, _RUN, _PORTS):
            try:
                self.memory.memzone_free(name)
            except Exception:
                pass
        if getattr(self, "pool", None) is not None:
            mempool_free(self.memory, self.pool)
            self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _watched(name: str) -> bool:
    """Whether the loop watches port ``name`` for hand-overs (its lcore side has a control block)."""
    return registry.find_driver(name).lcore_port.watch_handoffs


def _loop_shapes(specs: list[StreamSpec], watched: list[bool]) -> tuple[int, int]:
    """(streams, watched ports) of one lcore.  The loop takes them as rows of arrays, so its numba
    type is the same for every count; a warm-up runs it with this many rows."""
    ports = {p for s in specs for p in (s.rx_port, s.tx_port) if watched[p]}
    return max(1, len(specs)), max(1, len(ports))


def _entry_keys(ports) -> tuple[int, ...]:
    """The burst entries (:data:`~dataplane.ethdev.queue.ENTRY_KEYS`) the loop calls for the queues of
    ``ports``: each port's queue kind, or what its ``entry_keys()`` says (virtio-user: the layout)."""
    keys = {KIND_NONE}
    for p in ports:
        own = getattr(p, "entry_keys", None)
        keys.update(own() if own is not None else (registry.find_driver(p.name).queue_kind,))
    return tuple(sorted(keys))


#: Rough cold compile cost of each warm-up job (seconds at load ~2, docs/performance.md): the loop
#: (None) and the (entry key, role: 0 Rx, 1 Tx) entries; for sharing them out among processes.
_JOB_COST = {None: 8, ("mode", FL.MODE_TXONLY): 6, (KIND_VHOST, 0): 24, (KIND_VHOST, 1): 30, (KIND_VIRTIO, 0): 18, (KIND_VIRTIO, 1): 10,
             (ENTRY_VIRTIO_PACKED, 0): 18, (ENTRY_VIRTIO_PACKED, 1): 10, (KIND_RING, 0): 3, (KIND_RING, 1): 3}


def _share(jobs: list, i: int, n: int) -> list:
    """The jobs of process ``i`` of ``n``: longest first, each to the least loaded process (the same
    answer in every process)."""
    load = [0.0] * n
    mine = []
    for job in sorted(jobs, key=lambda j: -_JOB_COST.get(j, 1)):
        p = load.index(min(load))
        load[p] += _JOB_COST.get(job, 1)
        if p == i:
            mine.append(job)
    return mine


def _warm_up(shapes, loop=None, keys=(KIND_NONE,), share=None, mode=FL.MODE_IO) -> None:
    """Run the loop once (stop flag up, no streams) and get the burst entries of ``keys`` and the
    entries of forwarding mode ``mode`` and of txonly (tx_first): compiles them, or loads them from
    the disk cache, here and now rather than while rings are attached.  Each entry is a compile
    of its own (one port kind's code, one direction; one mode's).  ``shapes`` is unused (the
    loop's type is the same for every shape).

    ``share`` = (i, n): only process i's share of these compile jobs (:func:`_share`), so n
    processes (the main one and its forwarding lcores, one cpu each) compile a cold cache in
    parallel; a last call without ``share`` then loads them all."""
    jobs = [None] + [(key, role) for key in keys for role in (0, 1)]
    jobs += [("mode", m) for m in sorted({FL.MODE_TXONLY, mode})]
    if share is not None:
        jobs = _share(jobs, *share)
    for drv in registry.drivers():
        drv.lcore_port.warm_up()
    loop = loop or FL.fwd_loop
    mp = mempool_lookup(_memory(), _POOL)
    pkts = np.zeros(1024, np.uint32)
    for job in jobs:
        if job is not None and job[0] == "mode":
            FL.mode_entry(job[1], mp.arrays, pkts)
        elif job is not None:
            entry_addresses(job[0], mp.arrays, pkts, (job[1],))
    if None not in jobs:
        return
    # the loop alone: no streams, no tx_first, the stop flag up (one type for every shape; the
    # entries are other jobs)
    cfg = np.zeros(FL.CFG_SLOTS, np.int64)
    cfg[FL.CFG_BURST] = 32
    cfg[FL.CFG_MODE] = mode
    a = FL.loop_args([], [], mp.arrays, pkts, mode, resolve=False)
    loop(a.qrows, a.srows, a.wrows, a.entries, mp.arrays, 0,
         np.ones(16, np.uint32), np.zeros(16, np.uint32), cfg, np.zeros(1, np.int64), csum_counters(), pkts)


def warm_up_entries(keys) -> None:
    """Compile (or load) the burst entries of ``keys`` (:data:`~dataplane.ethdev.queue.ENTRY_KEYS`)
    and every forwarding mode's entry for this EAL's pool, while an engine exists
    (``dataplane precompile``)."""
    mp = mempool_lookup(_memory(), _POOL)
    pkts = np.zeros(1024, np.uint32)
    for key in keys:
        entry_addresses(key, mp.arrays, pkts)
    for mode in sorted(FL.MODE_ENTRIES):
        FL.mode_entry(mode, mp.arrays, pkts)


def _lcore_preload(arg) -> bool:
    """On a forwarding lcore, while the main process warms up (``arg`` = (shapes, keys, share, mode)):
    compile the ``share`` of the compile jobs :func:`_warm_up` gives this lcore (the main process
    and the lcores compile a cold cache in parallel), then load the loop of ``shapes``, the burst
    entries of ``keys`` and the port drivers' lcore kernels from the disk cache without compiling
    the rest (the main process does; this lcore then loads them at ``start``).  True when
    everything was cached."""
    from dataplane._jitcache import WouldCompile, load_only

    shapes, keys, share, mode = arg
    if share is not None:
        _warm_up(shapes, keys=keys, share=share, mode=mode)
    try:
        with load_only():
            _warm_up(shapes, keys=keys, mode=mode)
    except WouldCompile as e:
        log.debug("lcore preload: not cached yet", kernel=str(e))
        return False
    return True


def _memory():
    from dataplane.lcores.eal import current_memory

    return current_memory()


def _lcore_main(arg):
    """A forwarding lcore: build its streams' port queues, run the loop, service queue hand-overs."""
    specs, ports, cfg, seg_lens, maxq, fwd_fn = arg
    loop = FL.fwd_loop if fwd_fn is None else FL.make_custom_loop(fwd_fn)
    mem = _memory()
    mp = mempool_lookup(mem, _POOL)
    lcore = launch.lcore_id()
    qstats = mem.memzone_lookup(_QSTATS).view(np.int64).reshape(len(ports), maxq, Q_SLOTS)
    port_up = mem.memzone_lookup(_PORTS).view(np.int64)
    fstats = mem.memzone_lookup(_FSTATS).view(np.int64).reshape(-1, FL.S_SLOTS)
    run = mem.memzone_lookup(_RUN).view(np.uint32)
    stop = launch.stop_flag()
    # the (queue, role) pairs this lcore uses, per port; each port's driver hands them to the loop
    uses: dict[int, list[tuple[int, str]]] = {}
    for s in specs:
        for p, q, role in ((s.rx_port, s.rx_queue, RX), (s.tx_port, s.tx_queue, TX)):
            uses.setdefault(p, []).append((q, role))
    lps = {}
    for p, u in uses.items():
        drv = registry.find_driver(ports[p]["name"])
        lps[p] = drv.lcore_port(drv, ports[p], u, mem)
    pkts = np.zeros(1024, np.uint32)
    csum = csum_counters()
    flows = {s.index: np.zeros(2, np.int64) for s in specs}

    def build():
        out = []
        for s in specs:
            rxq = lps[s.rx_port].port_queue(s.rx_queue, RX, counters=qstats[s.rx_port, s.rx_queue],
                                            port_id=s.rx_port, port_up=port_up)
            txq = lps[s.tx_port].port_queue(s.tx_queue, TX, counters=qstats[s.tx_port, s.tx_queue],
                                            port_id=s.tx_port, port_up=port_up)
            tp = ports[s.tx_port]
            params = np.zeros(FL.P_SLOTS, np.int64)
            params[FL.P_SRC_MAC] = tp["mac"]
            params[FL.P_DST_MAC] = tp["peer_mac"]
            out.append(FL.Stream(rx=rxq, tx=txq, stats=fstats[s.index], params=params, flow=flows[s.index]))
        watches = [FL.RingWatch(ctl=lp.watch[0], qids=lp.watch[1], gens=lp.watch[2])
                   for lp in lps.values() if lp.watch is not None]
        cfg[FL.CFG_NSTREAMS] = len(out)
        cfg[FL.CFG_NWATCHES] = len(watches)
        return FL.loop_args(out, watches, mp.arrays, pkts, int(cfg[FL.CFG_MODE]))  # rows: one type for any count

    keys = tuple(sorted({KIND_NONE}.union(*(p.get("entry_keys", ()) for p in ports))))
    _warm_up([_loop_shapes(specs, [_watched(p["name"]) for p in ports])], loop, keys,
             mode=int(cfg[FL.CFG_MODE]))  # before any ring is attached
    write_perf_map_if_wanted()
    # attach the queues already handed over (tx_first must find them); their messages were sent
    # before their requests were published, so this waits only for this process (a safety net)
    deadline = time.monotonic() + 30.0
    for lp in lps.values():
        while lp.changed() and time.monotonic() < deadline:
            lp.service(wait=0.01)
    a = build()
    try:
        while True:
            rc = loop(a.qrows, a.srows, a.wrows, a.entries, mp.arrays, lcore, stop, run, cfg, seg_lens, csum, pkts)
            if rc == FL.LOOP_STOP:
                return True
            for lp in lps.values():
                lp.report_errors()
            if rc == FL.LOOP_RINGS:
                changed = False
                for lp in lps.values():
                    changed |= lp.service(wait=0.001)
                if changed:
                    a = build()
    finally:
        for lp in lps.values():
            lp.close()
