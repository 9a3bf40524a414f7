"""One port queue as a forwarding loop sees it, whatever the port kind (``rte_eth_rx_burst`` / ``tx_burst``).

A forwarding lcore serves streams of several port kinds in ONE numba loop.
numba needs one type for all of them, so a :data:`PortQueue` carries a slot
for every kind (the unused ones hold small dummies) and a ``kind`` tag that
:func:`port_rx_burst` / :func:`port_tx_burst` dispatch on:

* :data:`KIND_NONE` -- a stopped or not-yet-connected queue: bursts do nothing.
* :data:`KIND_VHOST` -- ``vhost``: a :class:`~dataplane.vhost.virtio_net.VhostQueueCtx`
  (Rx: the guest's Tx vring; Tx: its Rx vring).
* :data:`KIND_RING` -- ``ring_rx`` / ``ring_tx``: ``(hdr, slots)`` of two shared
  :mod:`~dataplane.rings.ring` rings carrying mbuf indices.
* :data:`KIND_VIRTIO` -- ``virtio``: a :data:`~dataplane.virtio.handoff.VirtioQueueCtx`
  (a virtio-user port's Rx or Tx queue).

Each driver of :mod:`dataplane.ethdev.registry` names its tag, and its
:class:`~dataplane.ethdev.port.LcorePort` builds its queues with
:func:`make_port_queue`.

``counters`` (int64, :data:`Q_*` slots, usually shared memory) is counted
here for every kind, so port statistics do not depend on the kind:
packets and bytes each way, Tx packets the port could not take (freed by the
loop: ``tx_dropped``), Rx bursts cut short by an empty pool.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from dataplane.rings.jit import describe, entry_address, inline_kernel, kernel, row_reader
from dataplane.rings.ring import ring_dequeue_burst, ring_enqueue_burst
from dataplane.vhost.handoff import dummy_ctx as vhost_dummy_ctx, vhost_rx_burst, vhost_tx_burst
from dataplane.virtio.handoff import (
    V_PACKED,
    dummy_ctx as virtio_dummy_ctx,
    virtio_packed_rx_burst,
    virtio_packed_tx_burst,
    virtio_rx_burst,
    virtio_split_rx_burst,
    virtio_split_tx_burst,
    virtio_tx_burst,
)

__all__ = [
    "PortQueue",
    "KIND_NONE",
    "KIND_VHOST",
    "KIND_RING",
    "KIND_VIRTIO",
    "Q_RX_PACKETS",
    "Q_RX_BYTES",
    "Q_TX_PACKETS",
    "Q_TX_BYTES",
    "Q_TX_DROPPED",
    "Q_SLOTS",
    "Q_NAMES",
    "port_rx_burst",
    "port_tx_burst",
    "make_port_queue",
    "port_queue_type",
    "port_queue_row",
    "entry_key",
    "entry_addresses",
    "queue_entry",
    "ENTRY_VIRTIO_PACKED",
    "ENTRY_KEYS",
]

KIND_NONE = 0
KIND_VHOST = 1
KIND_RING = 2
KIND_VIRTIO = 3

Q_NAMES = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_dropped")
Q_RX_PACKETS, Q_RX_BYTES, Q_TX_PACKETS, Q_TX_BYTES, Q_TX_DROPPED = range(len(Q_NAMES))
Q_SLOTS = 8

PortQueue = namedtuple(
    "PortQueue",
    [
        "kind",  # int64 array [2]: KIND_*, port id (an array so the tuple type never depends on a value)
        "port_up",  # int64 array (shared): port_up[port id] == 0 -> port stopped, bursts do nothing
        "vhost",  # VhostQueueCtx
        "virtio",  # VirtioQueueCtx
        "ring_rx_hdr",
        "ring_rx_slots",
        "ring_tx_hdr",
        "ring_tx_slots",
        "scratch",  # uint64[>= burst]: ring handles
        "counters",  # int64[Q_SLOTS]
    ],
)

_DUMMY: dict = {}


def _dummies():
    if not _DUMMY:
        _DUMMY["vhost"] = vhost_dummy_ctx()
        _DUMMY["virtio"] = virtio_dummy_ctx()
        _DUMMY["hdr"] = np.zeros(128, np.uint32)
        _DUMMY["slots"] = np.zeros(1, np.uint64)
    return _DUMMY


def make_port_queue(kind: int, *, vhost=None, virtio=None, ring_rx=None, ring_tx=None, counters=None,
                    burst: int = 512, port_id: int = 0, port_up=None) -> PortQueue:
    """A :data:`PortQueue`; ``ring_rx`` / ``ring_tx`` are :class:`~dataplane.rings.ring.Ring` objects;
    ``port_up`` a shared int64 array of port states (default: always up)."""
    d = _dummies()
    if port_up is None:
        port_up = np.ones(port_id + 1, np.int64)
    return PortQueue(
        kind=np.array([kind, port_id], np.int64),
        port_up=port_up,
        vhost=d["vhost"] if vhost is None else vhost,
        virtio=d["virtio"] if virtio is None else virtio,
        ring_rx_hdr=d["hdr"] if ring_rx is None else ring_rx.hdr,
        ring_rx_slots=d["slots"] if ring_rx is None else ring_rx.slots,
        ring_tx_hdr=d["hdr"] if ring_tx is None else ring_tx.hdr,
        ring_tx_slots=d["slots"] if ring_tx is None else ring_tx.slots,
        scratch=np.zeros(max(burst, 64), np.uint64),
        counters=np.zeros(Q_SLOTS, np.int64) if counters is None else counters,
    )


@inline_kernel
def _count_bytes(mp, pkts, frm, n):
    b = np.int64(0)
    for i in range(frm, n):
        b += np.int64(mp.mbufs[pkts[i]].pkt_len)
    return b


@inline_kernel
def port_rx_burst(q, mp, lcore, pkts, n):
    """Receive up to ``n`` packets into ``pkts``; returns how many."""
    k = q.kind[0]
    if q.port_up[q.kind[1]] == 0:
        return 0
    got = 0
    if k == KIND_VHOST:
        got = vhost_rx_burst(q.vhost, mp, lcore, pkts, n)
    elif k == KIND_VIRTIO:
        got = virtio_rx_burst(q.virtio, mp, lcore, pkts, n)
    elif k == KIND_RING:
        got = ring_dequeue_burst(q.ring_rx_hdr, q.ring_rx_slots, q.scratch, n, True)
        for i in range(got):
            pkts[i] = np.uint32(q.scratch[i])
    if got > 0:
        q.counters[Q_RX_PACKETS] += got
        q.counters[Q_RX_BYTES] += _count_bytes(mp, pkts, 0, got)
    return got


@inline_kernel
def port_tx_burst(q, mp, lcore, pkts, n):
    """Send ``pkts[:n]``; returns how many the port took (they are its now: copied and
    freed, or queued).  ``pkts[sent:n]`` stay with the caller."""
    k = q.kind[0]
    if n <= 0:
        return 0
    if q.port_up[q.kind[1]] == 0:
        q.counters[Q_TX_DROPPED] += n
        return 0
    b = _count_bytes(mp, pkts, 0, n)
    sent = 0
    if k == KIND_VHOST:
        sent = vhost_tx_burst(q.vhost, mp, lcore, pkts, n)
    elif k == KIND_VIRTIO:
        sent = virtio_tx_burst(q.virtio, mp, lcore, pkts, n)
    elif k == KIND_RING:
        for i in range(n):
            q.scratch[i] = np.uint64(pkts[i])
        sent = ring_enqueue_burst(q.ring_tx_hdr, q.ring_tx_slots, q.scratch, n, True)
    if sent > 0:
        q.counters[Q_TX_PACKETS] += sent
        q.counters[Q_TX_BYTES] += b if sent == n else b - _count_bytes(mp, pkts, sent, n)
    if sent < n:
        q.counters[Q_TX_DROPPED] += n - sent
    return sent


# -----------------------------------------------------------------------------
# the loop's view: a queue as a row of words, its bursts called through an address
# -----------------------------------------------------------------------------
# A forwarding loop takes each of its queues as a row (``dataplane.rings.jit.describe`` of its
# PortQueue: one numba type for every kind and count) and calls the Rx / Tx entry of the queue's
# kind through the address :func:`queue_entry` gives (``call_entry``).  Each entry is compiled
# on its own, once, and only for the kinds an engine has (and a virtio-user queue's ring layout):
# no code of a port kind is linked into the loop, nor into another kind's entry (the cold
# start's cost, docs/performance.md, "Where a cold start's time goes").

#: Entry keys: the KIND_* tags, and a virtio-user queue on packed rings.
ENTRY_VIRTIO_PACKED = 4
ENTRY_KEYS = (KIND_NONE, KIND_VHOST, KIND_RING, KIND_VIRTIO, ENTRY_VIRTIO_PACKED)

_TYPE: list = []


def port_queue_type():
    """The numba type of every :data:`PortQueue` (whatever its kind)."""
    if not _TYPE:
        from numba import typeof

        _TYPE.append(typeof(make_port_queue(KIND_NONE)))
    return _TYPE[0]


def port_queue_row(q: PortQueue) -> np.ndarray:
    """``q`` as a row of words (uint64) for the entries; ``q`` must outlive the row's use."""
    from numba import typeof

    if typeof(q) != port_queue_type():
        raise TypeError(f"a PortQueue of another type: {typeof(q)}")
    return describe(q)


def entry_key(q: PortQueue) -> int:
    """Which entry serves ``q``: its kind, or :data:`ENTRY_VIRTIO_PACKED`."""
    k = int(q.kind[0])
    if k == KIND_VIRTIO and q.virtio.cfg[V_PACKED] != 0:
        return ENTRY_VIRTIO_PACKED
    return k


_read_queue = row_reader(port_queue_type)


@inline_kernel
def _rx_up(q):
    return q.port_up[q.kind[1]] != 0


@inline_kernel
def _rx_done(q, mp, pkts, got):
    if got > 0:
        q.counters[Q_RX_PACKETS] += got
        q.counters[Q_RX_BYTES] += _count_bytes(mp, pkts, 0, got)
    return np.int64(got)


@inline_kernel
def _tx_up(q, n):
    """Whether a Tx burst of ``n`` goes to the port (counts it dropped when the port is stopped)."""
    if n <= 0:
        return False
    if q.port_up[q.kind[1]] == 0:
        q.counters[Q_TX_DROPPED] += n
        return False
    return True


@inline_kernel
def _tx_done(q, mp, pkts, n, b, sent):
    if sent > 0:
        q.counters[Q_TX_PACKETS] += sent
        q.counters[Q_TX_BYTES] += b if sent == n else b - _count_bytes(mp, pkts, sent, n)
    if sent < n:
        q.counters[Q_TX_DROPPED] += n - sent
    return np.int64(sent)


@kernel
def _none_rx(qrow, mp, lcore, pkts, n):
    return np.int64(0)


@kernel
def _none_tx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _tx_up(q, n):
        return np.int64(0)
    return _tx_done(q, mp, pkts, n, _count_bytes(mp, pkts, 0, n), 0)


@kernel
def _vhost_rx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _rx_up(q):
        return np.int64(0)
    return _rx_done(q, mp, pkts, vhost_rx_burst(q.vhost, mp, lcore, pkts, n))


@kernel
def _vhost_tx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _tx_up(q, n):
        return np.int64(0)
    b = _count_bytes(mp, pkts, 0, n)
    return _tx_done(q, mp, pkts, n, b, vhost_tx_burst(q.vhost, mp, lcore, pkts, n))


@kernel
def _ring_rx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _rx_up(q):
        return np.int64(0)
    got = ring_dequeue_burst(q.ring_rx_hdr, q.ring_rx_slots, q.scratch, n, True)
    for i in range(got):
        pkts[i] = np.uint32(q.scratch[i])
    return _rx_done(q, mp, pkts, got)


@kernel
def _ring_tx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _tx_up(q, n):
        return np.int64(0)
    b = _count_bytes(mp, pkts, 0, n)
    for i in range(n):
        q.scratch[i] = np.uint64(pkts[i])
    return _tx_done(q, mp, pkts, n, b, ring_enqueue_burst(q.ring_tx_hdr, q.ring_tx_slots, q.scratch, n, True))


@kernel
def _virtio_split_rx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _rx_up(q):
        return np.int64(0)
    c = q.virtio
    return _rx_done(q, mp, pkts, virtio_split_rx_burst(c, mp, lcore, pkts, n))


@kernel
def _virtio_split_tx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _tx_up(q, n):
        return np.int64(0)
    b = _count_bytes(mp, pkts, 0, n)
    return _tx_done(q, mp, pkts, n, b, virtio_split_tx_burst(q.virtio, mp, lcore, pkts, n))


@kernel
def _virtio_packed_rx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _rx_up(q):
        return np.int64(0)
    return _rx_done(q, mp, pkts, virtio_packed_rx_burst(q.virtio, mp, lcore, pkts, n))


@kernel
def _virtio_packed_tx(qrow, mp, lcore, pkts, n):
    q = _read_queue(qrow)
    if not _tx_up(q, n):
        return np.int64(0)
    b = _count_bytes(mp, pkts, 0, n)
    return _tx_done(q, mp, pkts, n, b, virtio_packed_tx_burst(q.virtio, mp, lcore, pkts, n))


_ENTRIES = {
    KIND_NONE: (_none_rx, _none_tx),
    KIND_VHOST: (_vhost_rx, _vhost_tx),
    KIND_RING: (_ring_rx, _ring_tx),
    KIND_VIRTIO: (_virtio_split_rx, _virtio_split_tx),
    ENTRY_VIRTIO_PACKED: (_virtio_packed_rx, _virtio_packed_tx),
}
_ADDRS: dict = {}


def entry_addresses(key: int, mp, pkts, roles=(0, 1)) -> tuple[int, ...]:
    """The entry addresses of entry ``key`` for ``roles`` (0: Rx, 1: Tx) compiled for a pool's
    arrays ``mp`` and a burst array ``pkts`` (uint32) as a loop passes them; compiled, or loaded
    from the cache, the first time.  Valid in this process."""
    from numba import typeof, types

    argtypes = (types.Array(types.uint64, 1, "C"), typeof(mp), types.int64, typeof(pkts), types.int64)
    out = []
    for role in roles:
        k = (key, role, argtypes)
        if k not in _ADDRS:
            _ADDRS[k] = entry_address(_ENTRIES[key][role], argtypes)
        out.append(_ADDRS[k])
    return tuple(out)


def queue_entry(q: PortQueue, role: int, mp, pkts) -> int:
    """The address of ``q``'s Rx (``role`` 0) or Tx (1) entry (see :func:`entry_addresses`)."""
    return entry_addresses(entry_key(q), mp, pkts, (role,))[0]
