"""``vhost_echo``: net_vhost ports served from lcore poll loops that echo (io) or sink (rxonly) packets.

The smallest complete vhost application (the forwarding engine builds on
the same pieces)::

    python3 -m dataplane.apps.vhost_echo -l 0-1 --no-huge -m 256 \\
        --vdev 'net_vhost0,iface=/tmp/vh0.sock,queues=2' -- --mode io --check txonly

Each worker lcore polls the queues placed on it (round-robin over the
workers; the main lcore runs the control plane): it receives a burst from
the guest's Tx vring, optionally checks every packet, and in ``io`` mode
transmits it back on the same queue (``rxonly``: frees it).  Nothing per
packet runs in Python: one numba loop per lcore, which returns to Python only
when the control plane hands over or takes back a ring, or on stop.

``--check txonly`` verifies the packets DPDK testpmd's txonly engine builds:
Ethernet/IPv4/UDP, IPv4 header checksum, IP and UDP lengths matching the
frame length, and a consistent segment chain (``pkt_len`` = sum of
``data_len``, ``nb_segs`` = chain length).  Results count in ``checked`` /
``bad``.

``--stats-file F`` writes the port statistics and check counters as JSON to
``F`` every 0.2 s (and at exit); SIGINT/SIGTERM stop cleanly, the final
figures go to stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dataplane import log as dplog
from dataplane.perf_map import write_perf_map_if_wanted
from dataplane.lcores.usage import UsageParser
from dataplane.apps.eal_app import eal_main, stop_lcores, wait_for_stop
from dataplane.ethdev import EthdevError
from dataplane.ethdev.vhost import DRIVER_NAME, VhostPort, lcore_queues
from dataplane.lcores import launch
from dataplane.memory.mempool import mempool_create, mempool_lookup, pktmbuf_free, pktmbuf_free_bulk, seg_addr
from dataplane.rings.atomics import load_acquire
from dataplane.rings.jit import inline_kernel, loop_kernel
from dataplane.vhost.handoff import vhost_rx_burst, vhost_tx_burst, vrings_changed
from dataplane.rings.mem import be16, ld8

log = dplog.get_logger("dataplane.apps")

MODE_IO, MODE_RXONLY = 0, 1
MODES = {"io": MODE_IO, "rxonly": MODE_RXONLY}
CHECK_NONE, CHECK_TXONLY = 0, 1
CHECKS = {"none": CHECK_NONE, "txonly": CHECK_TXONLY}
# per-lcore check counters (int64 row)
K_CHECKED, K_BAD, K_BAD_CHAIN, K_SLOTS = 0, 1, 2, 8
MAX_LCORES = 128
_STATS_ZONE = "vhost_echo_checks"
_POOL = "vhost_echo_pool"

_U64 = np.uint64


@inline_kernel
def _check_chain(mp, m):
    """pkt_len == sum(data_len) and nb_segs == number of segments."""
    head = mp.mbufs[m]
    total = np.int64(0)
    segs = 0
    s = m
    while True:
        total += np.int64(mp.mbufs[s].data_len)
        segs += 1
        nxt = mp.mbufs[s].next
        if nxt == np.uint32(0xFFFFFFFF) or segs > 4096:
            break
        s = nxt
    return total == np.int64(head.pkt_len) and segs == np.int64(head.nb_segs)


@inline_kernel
def _check_txonly(mp, m):
    """True if ``m`` looks like a testpmd txonly frame (Ether/IPv4/UDP, valid IP checksum, lengths)."""
    plen = np.int64(mp.mbufs[m].pkt_len)
    if np.int64(mp.mbufs[m].data_len) < 42 or plen < 42:
        return False
    a = seg_addr(mp, m)
    if be16(a + _U64(12)) != 0x0800 or ld8(a + _U64(14)) != 0x45 or ld8(a + _U64(23)) != 17:
        return False
    if be16(a + _U64(16)) != plen - 14 or be16(a + _U64(38)) != plen - 34:
        return False
    s = np.int64(0)
    for i in range(10):
        s += be16(a + _U64(14 + 2 * i))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


@loop_kernel
def echo_loop(ctxs, mp, lcore, stop, ctl, qids, gens, pkts, burst, mode, check, chk):
    """Poll ``ctxs`` (pairs: ``[2i]`` Tx, ``[2i+1]`` Rx) until stop (returns 1), a ring request
    (returns 0) or 2**20 turns (returns 2: time for the Python side's housekeeping)."""
    nq = len(ctxs) // 2
    turn = 0
    while True:
        turn += 1
        if (turn & 15) == 0:
            if load_acquire(stop, 0) != 0:
                return 1
            if vrings_changed(ctl, qids, gens):
                return 0
            if (turn & 0xFFFFF) == 0:
                return 2
        for i in range(nq):
            n = vhost_rx_burst(ctxs[2 * i + 1], mp, lcore, pkts, burst)
            if n == 0:
                continue
            if check == CHECK_TXONLY:
                for k in range(n):
                    chk[K_CHECKED] += 1
                    if not _check_chain(mp, pkts[k]):
                        chk[K_BAD_CHAIN] += 1
                        chk[K_BAD] += 1
                    elif not _check_txonly(mp, pkts[k]):
                        chk[K_BAD] += 1
            if mode == MODE_IO:
                sent = vhost_tx_burst(ctxs[2 * i], mp, lcore, pkts, n)
                for k in range(sent, n):  # the guest had no room: dropped (counted as tx missed)
                    pktmbuf_free(mp, lcore, pkts[k])
            else:
                pktmbuf_free_bulk(mp, lcore, pkts, n)


def _lcore_main(arg):
    """Worker: poll the queues of each port placed here until the stop flag."""
    port_queues, port_ids, mode, check, burst = arg
    from dataplane.lcores.eal import current_memory

    mem = current_memory()
    mp = mempool_lookup(mem, _POOL)
    lcore = launch.lcore_id()
    chk = mem.memzone_lookup(_STATS_ZONE).view(np.int64).reshape(MAX_LCORES, K_SLOTS)[lcore]
    stop = launch.stop_flag()
    (name, queues), = port_queues.items()  # one port per lcore loop for now
    lv = lcore_queues(name, queues, port_id=port_ids[name], memory=mem)
    pkts = np.zeros(max(burst, 64) * 2, np.uint32)
    mapped = False
    try:
        while True:
            rc = echo_loop(lv.ctxs, mp.arrays, lcore, stop, lv.ctl, lv.qids_arr, lv.gens, pkts, burst, mode, check, chk)
            if not mapped:  # the loop and its kernels are loaded now
                write_perf_map_if_wanted()
                mapped = True
            if rc == 1:
                return True
            lv.report_errors()
            if rc == 0:
                lv.service(wait=0.001)
    finally:
        lv.close()


def _warm_up(mp, queue_counts, opts) -> None:
    """Compile the loop for each tuple size here, once (workers then load it from the disk cache)."""
    from dataplane.vhost.handoff import dummy_ctx, warm_up

    warm_up()
    ctx = dummy_ctx()
    stop = np.ones(16, np.uint32)
    for nq in sorted(queue_counts):
        echo_loop(tuple(ctx for _ in range(2 * nq)), mp.arrays, 0, stop, np.zeros(8, np.int64),
                  np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(64, np.uint32), opts.burst,
                  MODES[opts.mode], CHECKS[opts.check], np.zeros(K_SLOTS, np.int64))


def _parser() -> argparse.ArgumentParser:
    p = UsageParser("vhost_echo", eal=True, description="vhost-user ports that send back what they receive")
    p.add_argument("--mode", choices=sorted(MODES), default="io", help="how a packet is sent back")
    p.add_argument("--check", choices=sorted(CHECKS), default="none", help="what is checked in each packet")
    p.add_argument("--burst", type=int, default=32, help="packets per burst")
    p.add_argument("--total-num-mbufs", type=int, default=8192, help="mbufs in the pool")
    p.add_argument("--stats-file", default=None, help="write the counters there as JSON while running")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until SIGINT/SIGTERM)")
    return p


def snapshot(ports, checks) -> dict:
    out = {"time": time.monotonic(), "ports": {}, "checked": int(checks[:, K_CHECKED].sum()), "bad": int(checks[:, K_BAD].sum()),
           "bad_chain": int(checks[:, K_BAD_CHAIN].sum())}
    for p in ports:
        out["ports"][p.name] = dict(link=p.link_up, stats=p.stats(), xstats=p.xstats())
    return out


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def run(eal, opts) -> int:
    vdevs = [d for d in eal.cfg.vdevs if d.name.startswith(DRIVER_NAME)]
    if not vdevs:
        print("vhost_echo: no --vdev net_vhostN,iface=... given", file=sys.stderr)
        return 2
    workers = eal.launcher.worker_ids
    if not workers:
        print("vhost_echo: needs at least one worker lcore (e.g. -l 0-1)", file=sys.stderr)
        return 2
    if len(vdevs) > len(workers):
        print(f"vhost_echo: {len(vdevs)} ports need as many worker lcores (have {len(workers)})", file=sys.stderr)
        return 2
    mem = eal.memory
    mp = mempool_create(mem, _POOL, opts.total_num_mbufs, cache_size=256)
    checks = mem.memzone_reserve(_STATS_ZONE, MAX_LCORES * K_SLOTS * 8).view(np.int64).reshape(MAX_LCORES, K_SLOTS)
    checks[:] = 0
    ports: list[VhostPort] = []
    try:
        plan: dict[int, dict] = {w: {} for w in workers}
        for pid, d in enumerate(vdevs):
            port = VhostPort(d, pid, memory=mem, launcher=eal.launcher)
            ports.append(port)
            # ports spread over workers; a port's queues round-robin over the workers left for it
            mine = workers[pid:] [:: len(vdevs)] or [workers[pid % len(workers)]]
            for q in range(port.nb_queues):
                lc = mine[q % len(mine)]
                port.place(q, lc)
                plan[lc].setdefault(port.name, []).append(q)
        port_ids = {p.name: p.port_id for p in ports}
        _warm_up(mp, {len(q) for pq in plan.values() for q in pq.values()}, opts)
        for lc, pq in plan.items():
            if pq:
                eal.launcher.remote_launch(_lcore_main, (pq, port_ids, MODES[opts.mode], CHECKS[opts.check], opts.burst), lc)
        for p in ports:
            p.start()
        print(f"vhost_echo: {len(ports)} port(s) up, mode {opts.mode}", flush=True)
        tick = (lambda: _write_json(opts.stats_file, snapshot(ports, checks))) if opts.stats_file else None
        wait_for_stop(eal, opts.duration, every=0.2, tick=tick)
    except KeyboardInterrupt:
        pass
    except EthdevError as e:
        print(f"vhost_echo: {e}", file=sys.stderr)
        return 2
    finally:
        for p in ports:
            p.stop()  # lcores give their rings back (they are still polling)
        stop_lcores(eal)
        final = snapshot(ports, checks)
        if opts.stats_file:
            _write_json(opts.stats_file, final)
        for p in ports:
            p.close()
    print(json.dumps(final), flush=True)
    return 1 if eal.launcher.failures else 0


def main(argv: list[str] | None = None) -> int:
    return eal_main("vhost_echo", _parser(), run, argv)


if __name__ == "__main__":
    # Run the importable module, not __main__: functions sent to lcores then pickle by
    # reference and their numba kernels load from the disk cache instead of compiling again.
    from dataplane.apps import vhost_echo

    sys.exit(vhost_echo.main())
