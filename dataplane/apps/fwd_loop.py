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
``5tswap``   swap source and destination MAC, IP address and TCP/UDP port
``rxonly``   free
``txonly``   no Rx; build ``--txpkts`` UDP frames (:func:`~dataplane.apps.fwd_modes.build_txonly`) and send
``csum``     verify and rewrite IPv4/TCP/UDP checksums in software, count bad ones
``flowgen``  free what arrives; send UDP frames cycling over many flows
``icmpecho`` answer ARP and ICMP echo requests, drop the rest

The packet work of each mode is in :mod:`dataplane.apps.fwd_modes`.

Packets the Tx port does not take are freed and counted (``S_FWD_DROPPED``),
as testpmd does.  Stream counters (:data:`S_*` slots) live in shared memory.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from dataplane.config import FORWARD_MODES
from dataplane.ethdev.queue import port_queue_row, port_queue_type, queue_entry
from dataplane.memory.mempool import pktmbuf_free, pktmbuf_free_bulk
from dataplane.rings.atomics import load_acquire, store_release
from dataplane.rings.jit import call_entry, call_entry8, describe, entry_address, kernel, inline_kernel, loop_kernel, row_reader, row_words
from dataplane.vhost.handoff import vrings_changed
from dataplane.apps.fwd_modes import (
    CSUM_BAD_IP,
    CSUM_BAD_L4,
    build_flowgen,
    build_txonly,
    flowgen_backout,
    fwd_csum,
    fwd_icmpecho,
    fwd_mac,
    fwd_5tswap,
    fwd_macswap,
    txonly_backout,
)

__all__ = [
    "Stream",
    "RingWatch",
    "StreamArrays",
    "LoopArgs",
    "loop_args",
    "fwd_loop",
    "make_custom_loop",
    "MODES",
    "LOOP_STOP",
    "LOOP_RINGS",
    "LOOP_TICK",
    "RUN_SWITCH",
    "RUN_FORWARDING",
    "S_NAMES",
    "S_SLOTS",
]

# forwarding modes (testpmd's names)
MODE_IO, MODE_MAC, MODE_MACSWAP, MODE_RXONLY, MODE_TXONLY, MODE_CSUM, MODE_FLOWGEN, MODE_ICMPECHO, MODE_5TSWAP = range(9)
MODES = {"io": MODE_IO, "mac": MODE_MAC, "macswap": MODE_MACSWAP, "rxonly": MODE_RXONLY, "txonly": MODE_TXONLY,
         "csum": MODE_CSUM, "flowgen": MODE_FLOWGEN, "icmpecho": MODE_ICMPECHO, "5tswap": MODE_5TSWAP}
assert set(MODES) <= set(FORWARD_MODES)

# cfg slots (int64 array, one per lcore loop)
CFG_MODE = 0
CFG_BURST = 1
CFG_TX_FIRST = 2  # bursts of txonly packets each stream sends before forwarding (start tx_first N)
CFG_NSEG = 3  # --txpkts: number of segments (lengths in the seg_lens array)
CFG_MULTI_FLOW = 4  # --txonly-multi-flow
CFG_NB_FLOWS = 5  # flowgen flows
CFG_TX_PKT_LEN = 6  # flowgen frame size (sum of --txpkts)
CFG_NSTREAMS = 7  # srows[:n] (and qrows[:2n]) are the lcore's streams
CFG_NWATCHES = 8  # wrows[:n] likewise
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

# the ``run`` array (uint32, shared): [RUN_SWITCH] is the engine's start/stop switch; a loop
# sets [RUN_FORWARDING + lcore] once it forwards (its tx_first bursts sent), so a start
# returns with forwarding on, as testpmd's does
RUN_SWITCH = 0
RUN_FORWARDING = 1

Stream = namedtuple("Stream", ["rx", "tx", "stats", "params", "flow"])  # flow: int64[2] generator state
#: The hand-over control of one vhost port for this lcore: (ctl, qids, gens) of a
#: :class:`~dataplane.vhost.handoff.LcoreVrings`.
RingWatch = namedtuple("RingWatch", ["ctl", "qids", "gens"])
#: What the loop reads of a stream besides its queues.
StreamArrays = namedtuple("StreamArrays", ["stats", "params", "flow"])

_ROW_TYPES: dict = {}


def _stream_arrays_type():
    if "s" not in _ROW_TYPES:
        from numba import typeof

        _ROW_TYPES["s"] = typeof(StreamArrays(np.zeros(S_SLOTS, np.int64), np.zeros(P_SLOTS, np.int64),
                                              np.zeros(2, np.int64)))
    return _ROW_TYPES["s"]


def _watch_type():
    if "w" not in _ROW_TYPES:
        from numba import typeof

        _ROW_TYPES["w"] = typeof(RingWatch(np.zeros(8, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)))
    return _ROW_TYPES["w"]


_read_stream = row_reader(_stream_arrays_type)
_read_watch = row_reader(_watch_type)

LoopArgs = namedtuple("LoopArgs", ["qrows", "srows", "wrows", "entries", "keep"])

# -- the forwarding modes' packet work, called through addresses like the port bursts --------
# Each takes (stream row, mp, lcore, pkts, n, cfg, seg_lens, csum) and returns how many of
# pkts[:n] to send (txonly / flowgen: how many it built).  Its code is not linked into the loop:
# each mode is compiled once, on its own (a warm-up job), and only when an engine uses it.


@kernel
def _mode_mac(srow, mp, lcore, pkts, n, cfg, seg_lens, csum):
    s = _read_stream(srow)
    fwd_mac(mp, pkts, n, s.params[P_DST_MAC], s.params[P_SRC_MAC])
    return np.int64(n)


@kernel
def _mode_macswap(srow, mp, lcore, pkts, n, cfg, seg_lens, csum):
    fwd_macswap(mp, pkts, n)
    return np.int64(n)


@kernel
def _mode_5tswap(srow, mp, lcore, pkts, n, cfg, seg_lens, csum):
    fwd_5tswap(mp, pkts, n)
    return np.int64(n)


@kernel
def _mode_csum(srow, mp, lcore, pkts, n, cfg, seg_lens, csum):
    s = _read_stream(srow)
    fwd_csum(mp, pkts, n, csum)
    s.stats[S_BAD_IP_CSUM] += csum[CSUM_BAD_IP]
    s.stats[S_BAD_L4_CSUM] += csum[CSUM_BAD_L4]
    for c in range(csum.shape[0]):
        csum[c] = 0
    return np.int64(n)


@kernel
def _mode_icmpecho(srow, mp, lcore, pkts, n, cfg, seg_lens, csum):
    s = _read_stream(srow)
    return np.int64(fwd_icmpecho(mp, lcore, pkts, n, s.params[P_SRC_MAC]))


@kernel
def _mode_txonly(srow, mp, lcore, pkts, n, cfg, seg_lens, csum):
    s = _read_stream(srow)
    return np.int64(build_txonly(mp, lcore, pkts, n, seg_lens, cfg[CFG_NSEG], s.params[P_SRC_MAC],
                                 s.params[P_DST_MAC], cfg[CFG_MULTI_FLOW] != 0, s.flow))


@kernel
def _mode_flowgen(srow, mp, lcore, pkts, n, cfg, seg_lens, csum):
    s = _read_stream(srow)
    return np.int64(build_flowgen(mp, lcore, pkts, n, cfg[CFG_TX_PKT_LEN], s.params[P_SRC_MAC],
                                  s.params[P_DST_MAC], cfg[CFG_NB_FLOWS], s.flow, True))


#: The mode entries (io and rxonly have none); txonly's also sends ``tx_first`` bursts.
MODE_ENTRIES = {MODE_MAC: _mode_mac, MODE_MACSWAP: _mode_macswap, MODE_5TSWAP: _mode_5tswap, MODE_CSUM: _mode_csum,
                MODE_ICMPECHO: _mode_icmpecho, MODE_TXONLY: _mode_txonly, MODE_FLOWGEN: _mode_flowgen}
#: entries[qrows rows + MODE_SLOT_TXONLY]: txonly's builder (tx_first); [.. + MODE_SLOT_MODE]: the mode's
MODE_SLOT_TXONLY = 0
MODE_SLOT_MODE = 1
MODE_SLOTS = 2
_MODE_ADDRS: dict = {}


def mode_entry(mode: int, mp, pkts) -> int:
    """The address of mode ``mode``'s entry (0 for io / rxonly), compiled for ``mp`` / ``pkts`` (and
    int64 cfg, seg_lens, csum arrays), or loaded from the cache, the first time."""
    from numba import typeof, types

    if mode not in MODE_ENTRIES:
        return 0
    i64 = types.Array(types.int64, 1, "C")
    argtypes = (types.Array(types.uint64, 1, "C"), typeof(mp), types.int64, typeof(pkts), types.int64, i64, i64, i64)
    k = (mode, argtypes)
    if k not in _MODE_ADDRS:
        _MODE_ADDRS[k] = entry_address(MODE_ENTRIES[mode], argtypes)
    return _MODE_ADDRS[k]


def loop_args(streams, watches, mp, pkts, mode: int = MODE_IO, resolve: bool = True) -> LoopArgs:
    """The loop's first four arguments for ``streams`` (:data:`Stream`) and ``watches``
    (:data:`RingWatch`), as rows of words (one numba type for any kind and count of queues):

    * ``qrows`` (uint64, 2 rows per stream: Rx queue, Tx queue; :func:`~dataplane.ethdev.queue.port_queue_row`),
    * ``srows`` (a :data:`StreamArrays` row per stream), ``wrows`` (a row per watch),
    * ``entries`` (int64, one per row of ``qrows``): the address of the burst entry of that queue's
      kind (:func:`~dataplane.ethdev.queue.queue_entry`, compiled for ``mp`` / ``pkts``, or loaded
      from the cache, the first time a process asks); then (:data:`MODE_SLOTS`) the addresses of
      txonly's builder (``tx_first``) and of ``mode``'s entry (:func:`mode_entry`).

    ``keep`` holds the arrays the rows point into: keep the LoopArgs while the loop runs.  With
    ``resolve`` False the entries are left 0 (a loop run with no streams and no tx_first, to
    compile or load the loop alone, calls none)."""
    from numba import typeof

    streams, watches = list(streams), list(watches)
    qrows = np.zeros((max(1, 2 * len(streams)), row_words(port_queue_type())), np.uint64)
    srows = np.zeros((max(1, len(streams)), row_words(_stream_arrays_type())), np.uint64)
    wrows = np.zeros((max(1, len(watches)), row_words(_watch_type())), np.uint64)
    entries = np.zeros(qrows.shape[0] + MODE_SLOTS, np.int64)
    if resolve:
        entries[qrows.shape[0] + MODE_SLOT_TXONLY] = mode_entry(MODE_TXONLY, mp, pkts)
        entries[qrows.shape[0] + MODE_SLOT_MODE] = mode_entry(mode, mp, pkts)
    keep = []
    for i, s in enumerate(streams):
        qrows[2 * i] = port_queue_row(s.rx)
        qrows[2 * i + 1] = port_queue_row(s.tx)
        if resolve:
            entries[2 * i] = queue_entry(s.rx, 0, mp, pkts)
            entries[2 * i + 1] = queue_entry(s.tx, 1, mp, pkts)
        sa = StreamArrays(s.stats, s.params, s.flow)
        if typeof(sa) != _stream_arrays_type():
            raise TypeError(f"stream arrays of another type: {typeof(sa)}")
        describe(sa, srows[i])
        keep.append((s, sa))
    for i, w in enumerate(watches):
        w = RingWatch(*w)
        if typeof(w) != _watch_type():
            raise TypeError(f"a ring watch of another type: {typeof(w)}")
        describe(w, wrows[i])
        keep.append(w)
    return LoopArgs(qrows, srows, wrows, entries, keep)


@inline_kernel
def _rx(a, si, mp, lcore, pkts, n):
    """Receive up to ``n`` packets on stream ``si``'s Rx queue (through the port entry's address)."""
    return call_entry(a[3][2 * si], a[0][2 * si], mp, np.int64(lcore), pkts, np.int64(n))


@inline_kernel
def _send(a, si, stats, mp, lcore, pkts, n):
    """Transmit ``pkts[:n]`` on stream ``si``'s Tx queue; free and count what the port did not take."""
    sent = call_entry(a[3][2 * si + 1], a[0][2 * si + 1], mp, np.int64(lcore), pkts, np.int64(n))
    stats[S_TX] += sent
    if sent < n:
        stats[S_FWD_DROPPED] += n - sent
        for k in range(sent, n):
            pktmbuf_free(mp, lcore, pkts[k])
    return sent


@inline_kernel
def _call_mode(a, slot, si, mp, lcore, pkts, n, cfg, seg_lens, csum):
    """Call the mode entry in ``entries`` slot ``slot`` on stream ``si``'s arrays."""
    return call_entry8(a[3][a[0].shape[0] + slot], a[1][si], mp, np.int64(lcore), pkts, np.int64(n), cfg, seg_lens,
                       csum)


@inline_kernel
def _txonly_burst(a, si, mp, lcore, pkts, burst, seg_lens, cfg):
    s = _read_stream(a[1][si])
    built = _call_mode(a, MODE_SLOT_TXONLY, si, mp, lcore, pkts, burst, cfg, seg_lens, seg_lens)
    if built > 0:
        sent = _send(a, si, s.stats, mp, lcore, pkts, built)
        if sent < built:
            txonly_backout(s.flow, built - sent)


@inline_kernel
def _count(cfg, slot, rows):
    """How many rows of ``rows`` are real: ``cfg[slot]``, at most its row count."""
    n = cfg[slot]
    if n > rows.shape[0]:
        n = rows.shape[0]
    return n


@inline_kernel
def _tx_first(a, mp, lcore, pkts, burst, seg_lens, cfg):
    if cfg[CFG_TX_FIRST] > 0:
        for b in range(cfg[CFG_TX_FIRST]):
            for si in range(_count(cfg, CFG_NSTREAMS, a[1])):
                _txonly_burst(a, si, mp, lcore, pkts, burst, seg_lens, cfg)
        cfg[CFG_TX_FIRST] = 0


@inline_kernel
def _forwarding(run, lcore):
    """Tell the engine this lcore forwards (after its tx_first bursts)."""
    if 0 <= RUN_FORWARDING + lcore < run.shape[0]:
        store_release(run, RUN_FORWARDING + lcore, 1)


@inline_kernel
def _loop_control(turn, stop, run, wrows, nwatches):
    """Every 16 turns: LOOP_STOP / LOOP_RINGS / LOOP_TICK when due, else 0."""
    if (turn & 15) == 0:
        if load_acquire(stop, 0) != 0 or load_acquire(run, RUN_SWITCH) == 0:
            return LOOP_STOP
        for w in range(nwatches):
            watch = _read_watch(wrows[w])
            if vrings_changed(watch.ctl, watch.qids, watch.gens):
                return LOOP_RINGS
        if (turn & 0xFFFFF) == 0:
            return LOOP_TICK
    return 0


@loop_kernel
def fwd_loop(qrows, srows, wrows, entries, mp, lcore, stop, run, cfg, seg_lens, csum, pkts):
    """Forward on every stream until stop / ring change / tick (returns ``LOOP_*``).

    ``qrows``, ``srows``, ``wrows`` and ``entries`` are a :class:`LoopArgs`' (:func:`loop_args`):
    the streams' queues and arrays and the watched ports as rows of words, so the loop has one
    numba type for any count and kind of ports; ``cfg[CFG_NSTREAMS]`` and ``cfg[CFG_NWATCHES]``
    say how many rows are real.  Port bursts are calls through ``entries`` (each kind's compiled once,
    apart from the loop).

    ``run`` (uint32, :data:`RUN_SWITCH` / :data:`RUN_FORWARDING` slots) is the
    engine's start/stop switch (0: stop forwarding) and where the loop says it
    forwards; ``stop`` the EAL's shared stop flag.  ``seg_lens`` holds
    ``--txpkts``; ``csum`` is the csum engine's scratch counters.  A pending
    ``cfg[CFG_TX_FIRST]`` is sent first and then cleared.
    """
    a = (qrows, srows, wrows, entries)
    mode = cfg[CFG_MODE]
    burst = cfg[CFG_BURST]
    nstreams = _count(cfg, CFG_NSTREAMS, srows)
    nwatches = _count(cfg, CFG_NWATCHES, wrows)
    _tx_first(a, mp, lcore, pkts, burst, seg_lens, cfg)
    _forwarding(run, lcore)
    turn = 0
    while True:
        turn += 1
        rc = _loop_control(turn, stop, run, wrows, nwatches)
        if rc != 0:
            return rc
        for si in range(nstreams):
            if mode == MODE_TXONLY:
                _txonly_burst(a, si, mp, lcore, pkts, burst, seg_lens, cfg)
                continue
            s = _read_stream(srows[si])
            n = _rx(a, si, mp, lcore, pkts, burst)
            if mode == MODE_FLOWGEN:
                if n > 0:
                    s.stats[S_RX] += n
                    pktmbuf_free_bulk(mp, lcore, pkts, n)
                built = _call_mode(a, MODE_SLOT_MODE, si, mp, lcore, pkts, burst, cfg, seg_lens, csum)
                if built > 0:
                    sent = _send(a, si, s.stats, mp, lcore, pkts, built)
                    if sent < built:
                        flowgen_backout(s.flow, built - sent, cfg[CFG_NB_FLOWS])
                continue
            if n == 0:
                continue
            s.stats[S_RX] += n
            if mode == MODE_RXONLY:
                pktmbuf_free_bulk(mp, lcore, pkts, n)
                continue
            if mode != MODE_IO:
                n = _call_mode(a, MODE_SLOT_MODE, si, mp, lcore, pkts, n, cfg, seg_lens, csum)
                if n == 0:
                    continue
            _send(a, si, s.stats, mp, lcore, pkts, n)


def make_custom_loop(user_fn):
    """A loop like :func:`fwd_loop` (same arguments) that forwards with ``user_fn``.

    ``user_fn(mp, lcore, pkts, n, params) -> k`` is a numba-jitted function
    (``@numba.njit``; no Python objects, no allocation) called with each
    received burst ``pkts[:n]`` (mbuf indices of pool ``mp``, the
    :class:`~dataplane.memory.mempool.MempoolArrays`) and the stream's
    ``params`` (``params[P_SRC_MAC]`` = Tx port MAC, ``params[P_DST_MAC]`` =
    its peer MAC).  It may rewrite packets in place and reorder them; it
    returns ``k``: ``pkts[:k]`` are transmitted.  A packet it drops must be
    freed by it (``dataplane.memory.mempool.pktmbuf_free(mp, lcore, m)``).

    The user's code becomes part of the loop, so this loop is compiled when
    forwarding starts (no disk cache).
    """
    from numba import njit

    @njit(nogil=True, _nrt=False)
    def custom_loop(qrows, srows, wrows, entries, mp, lcore, stop, run, cfg, seg_lens, csum, pkts):
        a = (qrows, srows, wrows, entries)
        burst = cfg[CFG_BURST]
        nstreams = _count(cfg, CFG_NSTREAMS, srows)
        nwatches = _count(cfg, CFG_NWATCHES, wrows)
        _tx_first(a, mp, lcore, pkts, burst, seg_lens, cfg)
        _forwarding(run, lcore)
        turn = 0
        while True:
            turn += 1
            rc = _loop_control(turn, stop, run, wrows, nwatches)
            if rc != 0:
                return rc
            for si in range(nstreams):
                s = _read_stream(srows[si])
                n = _rx(a, si, mp, lcore, pkts, burst)
                if n == 0:
                    continue
                s.stats[S_RX] += n
                k = user_fn(mp, lcore, pkts, n, s.params)
                if k < n:
                    s.stats[S_FWD_DROPPED] += n - k
                if k > 0:
                    _send(a, si, s.stats, mp, lcore, pkts, k)

    return custom_loop
