"""The forwarding lcore's poll loop: every stream of the lcore, one numba function, no Python per burst.

A *stream* (testpmd's ``fwd_stream``) receives from one port queue and
transmits on another.  :func:`fwd_loop` turns over all streams of its lcore
until the stop flag, a vhost ring hand-over (see
:mod:`dataplane.vhost.handoff`) or a housekeeping tick, and returns a code
saying which:

* :data:`LOOP_STOP` -- the shared stop flag is up (or the engine's ``run`` flag down);
* :data:`LOOP_RINGS` -- a vhost port changed the rings of this lcore: the
  Python side services the hand-over and calls again;
* :data:`LOOP_TICK` -- about every 2**20 turns, for housekeeping (error reports).

Per stream, the forwarding mode (``cfg[CFG_MODE]``, testpmd's names) decides
what happens to a received burst:

``io``       transmit unchanged
``mac``      set Ethernet source to the Tx port's MAC and destination to its peer MAC
``macswap``  swap source and destination MAC
``rxonly``   free

Packets the Tx port does not take are freed and counted (``S_FWD_DROPPED``),
as testpmd does.  Stream counters (:data:`S_*` slots) live in shared memory.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from dataplane.ethdev.queue import port_rx_burst, port_tx_burst
from dataplane.memory.mempool import pktmbuf_free, pktmbuf_free_bulk
from dataplane.rings.atomics import load_acquire
from dataplane.rings.jit import inline_kernel, loop_kernel
from dataplane.vhost.handoff import vrings_changed
from dataplane.vhost.net_hdr import ld16, ld32, seg_addr, st16, st32

__all__ = [
    "Stream",
    "RingWatch",
    "fwd_loop",
    "MODES",
    "LOOP_STOP",
    "LOOP_RINGS",
    "LOOP_TICK",
    "S_NAMES",
    "S_SLOTS",
]

# forwarding modes (testpmd's names)
MODE_IO, MODE_MAC, MODE_MACSWAP, MODE_RXONLY = 0, 1, 2, 3
MODES = {"io": MODE_IO, "mac": MODE_MAC, "macswap": MODE_MACSWAP, "rxonly": MODE_RXONLY}

# cfg slots (int64 array, one per lcore loop)
CFG_MODE = 0
CFG_BURST = 1
CFG_SLOTS = 16

# stream counter slots (int64 array per stream, shared memory)
S_NAMES = ("rx_packets", "tx_packets", "fwd_dropped", "rx_bad_ip_csum", "rx_bad_l4_csum")
S_RX, S_TX, S_FWD_DROPPED, S_BAD_IP_CSUM, S_BAD_L4_CSUM = range(len(S_NAMES))
S_SLOTS = 8

# per-stream parameters (int64 array)
P_SRC_MAC = 0  # Tx port's MAC (48 bits, first byte highest)
P_DST_MAC = 1  # the Tx port's peer MAC (--eth-peer)
P_SLOTS = 8

LOOP_STOP, LOOP_RINGS, LOOP_TICK = 1, 2, 3

Stream = namedtuple("Stream", ["rx", "tx", "stats", "params"])
#: The hand-over control of one vhost port for this lcore: (ctl, qids, gens) of a
#: :class:`~dataplane.vhost.handoff.LcoreVrings`.
RingWatch = namedtuple("RingWatch", ["ctl", "qids", "gens"])

_U64 = np.uint64


@inline_kernel
def _put_mac(a, mac):
    # 48-bit MAC, first byte highest, stored in network order at a
    st16(a, np.uint16(((mac >> 40) & 0xFF) | (((mac >> 32) & 0xFF) << 8)))
    st32(a + _U64(2), np.uint32(((mac >> 24) & 0xFF) | (((mac >> 16) & 0xFF) << 8) | (((mac >> 8) & 0xFF) << 16)
                                | ((mac & 0xFF) << 24)))


@inline_kernel
def _mac_fwd(mp, pkts, n, src, dst):
    for i in range(n):
        m = pkts[i]
        if mp.mbufs[m].data_len >= 12:
            a = seg_addr(mp, m)
            _put_mac(a, dst)
            _put_mac(a + _U64(6), src)


@inline_kernel
def _mac_swap(mp, pkts, n):
    for i in range(n):
        m = pkts[i]
        if mp.mbufs[m].data_len >= 12:
            a = seg_addr(mp, m)
            d0 = ld32(a)
            d1 = ld16(a + _U64(4))
            st32(a, ld32(a + _U64(6)))
            st16(a + _U64(4), ld16(a + _U64(10)))
            st32(a + _U64(6), d0)
            st16(a + _U64(10), d1)


@loop_kernel
def fwd_loop(streams, watches, mp, lcore, stop, run, cfg, pkts):
    """Forward on every stream until stop / ring change / tick (returns ``LOOP_*``).

    ``run`` (uint32[1+]) is the engine's start/stop switch (0: stop
    forwarding), ``stop`` the EAL's shared stop flag.
    """
    mode = cfg[CFG_MODE]
    burst = cfg[CFG_BURST]
    turn = 0
    while True:
        turn += 1
        if (turn & 15) == 0:
            if load_acquire(stop, 0) != 0 or load_acquire(run, 0) == 0:
                return LOOP_STOP
            for w in range(len(watches)):
                if vrings_changed(watches[w].ctl, watches[w].qids, watches[w].gens):
                    return LOOP_RINGS
            if (turn & 0xFFFFF) == 0:
                return LOOP_TICK
        for si in range(len(streams)):
            s = streams[si]
            n = port_rx_burst(s.rx, mp, lcore, pkts, burst)
            if n == 0:
                continue
            s.stats[S_RX] += n
            if mode == MODE_RXONLY:
                pktmbuf_free_bulk(mp, lcore, pkts, n)
                continue
            if mode == MODE_MAC:
                _mac_fwd(mp, pkts, n, s.params[P_SRC_MAC], s.params[P_DST_MAC])
            elif mode == MODE_MACSWAP:
                _mac_swap(mp, pkts, n)
            sent = port_tx_burst(s.tx, mp, lcore, pkts, n)
            s.stats[S_TX] += sent
            if sent < n:
                s.stats[S_FWD_DROPPED] += n - sent
                for k in range(sent, n):
                    pktmbuf_free(mp, lcore, pkts[k])
