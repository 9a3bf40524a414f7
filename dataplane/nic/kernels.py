"""The card's datapath in numba: doorbells, TX rings into the switch, the switch into RX rings.

A queue is a :class:`NicQueueCtx`: the ring views of :mod:`dataplane.vhost.dev_ring`
(split or packed, chosen at run time) over the card's own mappings of the
driver's DMA map, the region table that *is* the IOMMU (IOVA, length, the
card's address; a row of length 0 is unused), a chain scratch, config slots,
the queue's counter row (shared memory, :mod:`dataplane.nic.shm`) and a dirty
log (:mod:`dataplane.vhost.dirty_log`) over the log the driver mapped at an IOVA.

One switching round is, per busy TX queue:

1. :func:`tx_pull` takes up to ``budget`` TX chains into a staging area
   (one 2 KiB slot a frame, header included), learns each source MAC in the
   forwarding table (:data:`FDB_SIZE` entries, MAC -> VF), decides each
   frame's destination set (a bit per VF: a known unicast MAC's VF; unknown
   unicast, broadcast and multicast go to every other active VF; never back
   to the sender), completes the chains (used length 0) and interrupts the
   sender if it wants;
2. :func:`rx_deliver`, once per destination VF, writes the frames whose bit
   is set into that VF's RX ring (a fresh 12-byte virtio-net header,
   ``num_buffers`` = 1, then the frame), drops a frame when the ring has no
   buffer (``Q_NOBUF``) or the buffer is too small (``Q_ERRORS``), and
   interrupts.

Python calls each kernel once per burst; nothing runs per packet in Python.
A chain the ring kernels refuse (a buffer outside the DMA map, a bad
descriptor index, a loop...) is a fault: its code goes in the row's ``Q_ERR``
(the first one is kept), ``Q_FAULTS`` counts them, and the queue stops
(``CFG_RUNNING`` = 0) until the driver enables it anew.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from dataplane.rings.atomics import exchange, load_relaxed
from dataplane.rings.chain_copy import chain_gather, chain_prefetch, chain_scatter
from dataplane.rings.jit import eventfd_signal, inline_kernel, kernel
from dataplane.rings.mem import copy_bytes, ld8, st8, st32, st64
from dataplane.rings.virtqueue import ERR_AVAIL_IDX, ERR_NAMES, STATE_BROKEN, make_chains
from dataplane.vhost.dev_ring import (
    dummy_vrings,
    ring_enable_notify,
    ring_fetch,
    ring_fetch_one,
    ring_flush_used,
    ring_push_used,
)
from dataplane.vhost.dirty_log import (
    log_burst_start,
    log_enabled,
    log_notify_write,
    log_sync,
    log_used,
    log_write_hva,
    no_log,
)
from dataplane.vhost.inflight import no_inflight
from dataplane.vhost.net_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM

from .offload import GSO_HDR_MAX, GSO_MAX_LEN, GSO_MAX_SEGS, OFF_TSO4, OFF_TSO6, OFF_TX, rx_flags, tx_offload

__all__ = [
    "NicQueueCtx", "FastCall", "make_queue_ctx", "open_queue", "queue_used_index", "ring_area_sizes", "idle_queue_ctx",
    "tx_pull", "rx_deliver", "tx_serve", "tx_switch", "switch_window", "switch_scratch", "SW_SERVE", "SW_MOVED",
    "poll_doorbells", "poll_var_doorbell",
    "set_notify", "VAR_IDLE",
    "warm_up",
    "SLOT", "BURST", "FETCH", "FDB_SIZE", "HDR_LEN", "MAX_SEGS", "STAGE_ROWS", "stage_arrays",
    "CFG_PACKED", "CFG_CALLFD", "CFG_RUNNING", "CFG_OFFLOADS",
    "Q_PACKETS", "Q_BYTES", "Q_ERRORS", "Q_DROPS", "Q_KICKS", "Q_IRQS", "Q_FAULTS", "Q_ERR", "Q_FLOODED",
    "Q_NOBUF", "Q_RUNNING", "Q_POLLED", "Q_LOGGED", "Q_TSO", "Q_TSO_SEGS", "Q_CSUM", "Q_WORDS", "QUEUE_COUNTER_NAMES",
    "ERR_RING_ZERO", "ERR_QUEUE_SIZE", "ERR_RING_DMA", "ERR_BASE", "fault_name",
]

#: Bytes of one staged frame (virtio-net header included): frames up to MTU 1500 + VLAN fit.
SLOT = 2048
#: Frames one TX pull stages.
BURST = 256
#: Rows of the stage: a burst, and room for the frames the last frame's TSO makes.
STAGE_ROWS = BURST + GSO_MAX_SEGS
#: Chains one ring fetch of :func:`tx_switch` takes (TX, and RX per destination); a queue's chain
#: scratch holds this many.
FETCH = 128
#: Forwarding table entries (open addressing; a source MAC is learnt per frame).
FDB_SIZE = 1024
_FDB_PROBE = 8
#: virtio-net header: VERSION_1 is required, so always 12 bytes.
HDR_LEN = 12
#: Segments a queue's chain scratch holds: a burst's chains together, and the most one chain may
#: have (a longer chain is refused with ERR_TOO_MANY_SEGS, a fault).
MAX_SEGS = 128
_MIN_FRAME = HDR_LEN + 14

# config slots (int64, the card's private memory)
CFG_PACKED = 0
CFG_CALLFD = 1  # the eventfd of the queue's MSI-X vector, -1: none
CFG_RUNNING = 2
CFG_OFFLOADS = 3  # the virtq's offload bits (:mod:`.offload`)
CFG_SLOTS = 4

# counter row of a queue (int64, shared)
(Q_PACKETS, Q_BYTES, Q_ERRORS, Q_DROPS, Q_KICKS, Q_IRQS, Q_FAULTS, Q_ERR, Q_FLOODED, Q_NOBUF, Q_RUNNING,
 Q_POLLED, Q_LOGGED, Q_TSO, Q_TSO_SEGS, Q_CSUM) = range(16)
Q_WORDS = 16
#: ``logged``: dirty-log bytes the queue ORed into a driver's bitmap (mlx5 DIRTY_BITMAP_DUMP_ENABLE);
#: ``tso_frames`` / ``tso_segments``: TSO frames a TX queue took / the frames the card cut them into;
#: ``csum_done``: checksums the card completed for a TX queue's NEEDS_CSUM frames
QUEUE_COUNTER_NAMES = ("packets", "bytes", "errors", "drops", "kicks", "irqs", "faults", "error_code", "flooded",
                       "no_buffer", "running", "polled", "logged", "tso_frames", "tso_segments", "csum_done")

# fault codes beyond the rings' ERR_* codes
ERR_BASE = 32
ERR_RING_ZERO = 32  # a ring address of 0
ERR_QUEUE_SIZE = 33  # split size not a power of two (or 0, or above the maximum)
ERR_RING_DMA = 34  # a ring area outside the DMA map
ERR_RING_STATE = 35  # the BAR4 ring state does not fit the queue (packed offset >= size)
_FAULT_NAMES = {ERR_RING_ZERO: "ring_address_zero", ERR_QUEUE_SIZE: "queue_size", ERR_RING_DMA: "ring_dma",
                ERR_RING_STATE: "ring_state"}


def fault_name(code: int) -> str:
    code = int(code)
    if code in _FAULT_NAMES:
        return _FAULT_NAMES[code]
    if code in ERR_NAMES:
        return "dma_" + ERR_NAMES[code] if code == 3 else ERR_NAMES[code]
    return f"error_{code}"


NicQueueCtx = namedtuple("NicQueueCtx", ["split", "packed", "state", "regions", "chains", "cfg", "counters",
                                         "inflight", "log"])

_U64 = np.uint64
_Z = _U64(0)
_SLOT = _U64(SLOT)


# =============================================================================
# helpers
# =============================================================================


@inline_kernel
def _fault(q, code):
    if q.counters[Q_ERR] == 0:
        q.counters[Q_ERR] = code
    q.counters[Q_FAULTS] += 1
    q.cfg[CFG_RUNNING] = 0
    q.counters[Q_RUNNING] = 0


@inline_kernel
def _usable(q):
    return q.cfg[CFG_RUNNING] != 0 and q.counters[Q_ERR] == 0 and q.state[STATE_BROKEN] == 0


@inline_kernel
def _fetch1(q):
    """One chain into slot 0: 1; none: 0; a fault (recorded, queue stopped): -1."""
    r = ring_fetch_one(q.cfg[CFG_PACKED] != 0, q.split, q.packed, q.state, q.regions, q.chains, q.inflight)
    if r < 0:
        _fault(q, -r)
        return -1
    return r


@inline_kernel
def _push(q, head, length, ndesc):
    ring_push_used(q.cfg[CFG_PACKED] != 0, q.split, q.packed, q.state, np.int64(head), np.int64(length),
                   np.int64(ndesc), q.inflight)


@inline_kernel
def _flush(q, logging):
    """Publish the used entries (marking their pages first when logging); interrupt if the driver wants."""
    packed = q.cfg[CFG_PACKED] != 0
    if logging:
        log_used(q.log, packed, q.state)
    need = ring_flush_used(packed, q.split, q.packed, q.state, q.inflight)
    if logging:
        log_sync(q.log)
    if need:
        fd = q.cfg[CFG_CALLFD]
        if fd >= 0:
            eventfd_signal(fd)
            q.counters[Q_IRQS] += 1


@inline_kernel
def _tx_room(ch, s0, s_end):
    """(a writable segment among ``[s0, s_end)``?, their bytes): a TX chain's check."""
    rlen = _Z
    wr = False
    for s in range(s0, s_end):
        if ch.seg_write[s] != 0:
            wr = True
        rlen += _U64(ch.seg_len[s])
    return wr, rlen


@inline_kernel
def _rx_room(ch, s0, s_end):
    """(a readable segment among ``[s0, s_end)``?, their bytes): an RX chain's check."""
    cap = _Z
    ro = False
    for s in range(s0, s_end):
        if ch.seg_write[s] == 0:
            ro = True
        cap += _U64(ch.seg_len[s])
    return ro, cap


@inline_kernel
def _log_rx(q, ch, s0, s_end, ln):
    """Mark the pages of the first ``ln`` bytes of RX segments ``[s0, s_end)`` in ``q``'s dirty log."""
    left = ln
    s = s0
    while s < s_end and left > _Z:
        take = _U64(ch.seg_len[s])
        if take > left:
            take = left
        log_write_hva(q.log, q.regions, ch.seg_addr[s], np.int64(take))
        left -= take
        s += 1


@inline_kernel
def _mac_at(buf, off):
    v = np.int64(0)
    for i in range(6):
        v = (v << 8) | np.int64(buf[off + i])
    return v


@inline_kernel
def _fdb_slot(mac):
    h = (np.uint64(mac) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return np.int64(h) & (FDB_SIZE - 1)


@inline_kernel
def _fdb_lookup(fdb, mac):
    key = mac + 1
    s = _fdb_slot(mac)
    for k in range(_FDB_PROBE):
        i = (s + k) & (FDB_SIZE - 1)
        if fdb[i, 0] == key:
            return fdb[i, 1]
        if fdb[i, 0] == 0:
            return -1
    return -1


@inline_kernel
def _fdb_learn(fdb, mac, vf):
    key = mac + 1
    s = _fdb_slot(mac)
    for k in range(_FDB_PROBE):
        i = (s + k) & (FDB_SIZE - 1)
        if fdb[i, 0] == key:
            if fdb[i, 1] != vf:  # a station that moved; else no write (the table is shared memory)
                fdb[i, 1] = vf
            return
        if fdb[i, 0] == 0:
            fdb[i, 1] = vf
            fdb[i, 0] = key
            return
    fdb[s, 0] = key  # the probe window is full: the oldest home slot is taken over
    fdb[s, 1] = vf


# =============================================================================
# kernels
# =============================================================================


@kernel
def poll_doorbells(db16, nq, stride, rows, kicked):
    """Take the pending doorbells of queues ``0..nq-1`` (word ``q * stride`` of ``db16``): each one not
    :data:`~dataplane.nic.pci.DOORBELL_IDLE` is swapped back atomically (a kick that lands meanwhile is
    taken next time, never lost), counted in ``rows[q, Q_KICKS]`` and flagged in ``kicked[q]``.
    Returns the number of queues kicked."""
    got = 0
    for q in range(nq):
        i = q * stride
        if load_relaxed(db16, i) != 0xFFFF:
            exchange(db16, i, 0xFFFF)
            rows[q, Q_KICKS] += 1
            kicked[q] = 1
            got += 1
    return got


#: What the VAR doorbell word holds when no kick is pending (a kick writes a queue index).
VAR_IDLE = 0xFFFFFFFF


@kernel
def poll_var_doorbell(db32, nq, rows):
    """Take the pending write of a VAR doorbell (word 0 of ``db32``, uint32; mlx5, facts §3.5): the word
    is swapped back to :data:`VAR_IDLE` atomically.  A queue index below ``nq`` is a kick, counted in
    ``rows[index, Q_KICKS]``, and returned; -1: no write pending; -2: a value that is no queue index
    (a write narrower than 32 bits leaves the idle bits above it, so it never names a queue: the
    hardware detects only 4-byte doorbell writes)."""
    if load_relaxed(db32, 0) == VAR_IDLE:
        return -1
    v = np.int64(exchange(db32, 0, VAR_IDLE))
    if v < nq:
        rows[v, Q_KICKS] += 1
        return v
    return -2


@kernel
def set_notify(q, enable):
    """Ask the driver for kicks (``enable``) or not (used->flags NO_NOTIFY / the packed device event
    area), marking that write in the dirty log when logging; True when chains are pending (keep polling)."""
    packed = q.cfg[CFG_PACKED] != 0
    pending = ring_enable_notify(packed, q.split, q.packed, q.state, enable)
    log_notify_write(q.log, packed, q.state, enable)
    q.counters[Q_POLLED] = 0 if enable else 1  # 1: polled by the card, kicks not wanted
    return pending


@kernel
def tx_pull(q, vf, fdb, active, stage, slen, smask, budget):
    """Stage up to ``budget`` TX chains of queue ``q`` (VF ``vf``) and switch them (see the module doc).

    ``active``: bit per VF whose datapath runs; ``stage``: uint8[rows, SLOT] (:func:`stage_arrays`);
    ``slen``: int64[rows] staged bytes; ``smask``: int64[rows] destination bits.  A frame whose
    header asks for a checksum or TSO (:func:`~dataplane.nic.offload.tx_offload`) may become several
    rows, so more than ``budget`` rows may be staged (never more than the stage has).
    Returns the rows staged (a frame with no destination is staged with mask 0)."""
    n = 0
    if not _usable(q):
        return 0
    offl = q.cfg[CFG_OFFLOADS] & OFF_TX  # without TX offloads the header is not read (the direct path's way)
    maxlen = _U64(GSO_MAX_LEN) if offl & (OFF_TSO4 | OFF_TSO6) != 0 else _SLOT
    rows = stage.shape[0]
    logging = log_enabled(q.log)
    if logging:
        log_burst_start(q.log, q.state)
    base = _U64(stage.ctypes.data)
    me = np.int64(1) << vf
    others = active & ~me
    took = 0
    while n < budget:
        r = _fetch1(q)
        if r <= 0:
            break
        took += 1
        ch = q.chains
        head = ch.head[0]
        nd = ch.ndesc[0]
        s0 = np.int64(ch.seg_start[0])
        s_end = s0 + np.int64(ch.seg_count[0])
        wr, rlen = _tx_room(ch, s0, s_end)
        if wr or rlen < _U64(_MIN_FRAME) or rlen > maxlen:
            q.counters[Q_ERRORS] += 1  # a writable buffer in a TX chain, a runt, a frame over the slot
            _push(q, head, 0, nd)
            continue
        dst = base + _U64(n) * _SLOT
        chain_gather(ch, s0, s_end, _Z, dst, rlen if rlen <= _SLOT else _U64(GSO_HDR_MAX))
        row = stage[n]
        k = 1
        gso = row[1]
        if offl != 0 and (row[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 or gso != 0 or rlen > _SLOT):
            k = tx_offload(ch, s0, s_end, np.int64(rlen), base, SLOT, n, rows, slen, offl)
            if k <= 0:
                q.counters[Q_ERRORS] += 1  # not negotiated, headers that do not parse, no room
                _push(q, head, 0, nd)
                continue
            if gso != 0:
                q.counters[Q_TSO] += 1
                q.counters[Q_TSO_SEGS] += k
            else:
                q.counters[Q_CSUM] += 1
        else:
            for b in range(HDR_LEN):
                row[b] = 0
            row[10] = 1  # num_buffers
            slen[n] = np.int64(rlen)
        dmac = _mac_at(row, HDR_LEN)
        smac = _mac_at(row, HDR_LEN + 6)
        if row[HDR_LEN + 6] & 1 == 0:
            _fdb_learn(fdb, smac, vf)
        if row[HDR_LEN] & 1:
            mask = others
            q.counters[Q_FLOODED] += 1
        else:
            d = _fdb_lookup(fdb, dmac)
            if d < 0:
                mask = others
                q.counters[Q_FLOODED] += 1
            elif d == vf:
                mask = 0
            else:
                mask = (np.int64(1) << d) & active
        if mask == 0:
            q.counters[Q_DROPS] += 1
        for i in range(n, n + k):
            smask[i] = mask
        q.counters[Q_PACKETS] += 1
        q.counters[Q_BYTES] += np.int64(rlen) - HDR_LEN
        _push(q, head, 0, nd)
        n += k
    if took > 0:
        _flush(q, logging)
    return n


@kernel
def rx_deliver(q, bit, stage, slen, smask, n):
    """Write the staged frames ``[0, n)`` whose mask has ``bit`` into RX queue ``q``; returns the frames written."""
    done = 0
    if not _usable(q):
        for i in range(n):
            if smask[i] & bit:
                q.counters[Q_DROPS] += 1
        return 0
    logging = log_enabled(q.log)
    if logging:
        log_burst_start(q.log, q.state)
    base = _U64(stage.ctypes.data)
    rxf = np.uint8(rx_flags(q.cfg[CFG_OFFLOADS]))
    took = 0
    for i in range(n):
        if smask[i] & bit == 0:
            continue
        r = _fetch1(q)
        if r < 0:
            q.counters[Q_DROPS] += 1
            break
        if r == 0:
            q.counters[Q_NOBUF] += 1
            continue
        took += 1
        ch = q.chains
        head = ch.head[0]
        nd = ch.ndesc[0]
        s0 = np.int64(ch.seg_start[0])
        s_end = s0 + np.int64(ch.seg_count[0])
        ro, cap = _rx_room(ch, s0, s_end)
        ln = _U64(slen[i])
        if ro or cap < ln:
            q.counters[Q_ERRORS] += 1  # a readable buffer in an RX chain, or a buffer too small
            _push(q, head, 0, nd)
            continue
        f = stage[i, 0]  # DATA_VALID: the card computed the checksum; said only to a GUEST_CSUM virtq
        if f != 0:
            stage[i, 0] = f & rxf
        chain_scatter(ch, s0, s_end, base + _U64(i) * _SLOT, ln)
        stage[i, 0] = f
        if logging:
            _log_rx(q, ch, s0, s_end, ln)
        _push(q, head, np.int64(ln), nd)
        q.counters[Q_PACKETS] += 1
        q.counters[Q_BYTES] += np.int64(ln) - HDR_LEN
        done += 1
    if took > 0:
        _flush(q, logging)
    return done


@kernel
def tx_serve(q, vf, fdb, active, rxqs, stage, slen, smask, budget, spin):
    """A busy window of TX queue ``q``: :func:`tx_pull` and :func:`rx_deliver` into ``rxqs`` (a tuple,
    the destination RX queue of each VF by VF index; an idle context where none) again and again, until
    ``budget`` frames or ``spin`` pulls in a row found nothing.  Returns the frames staged."""
    total = 0
    idle = 0
    while total < budget:
        want = budget - total
        if want > BURST:
            want = BURST
        n = tx_pull(q, vf, fdb, active, stage, slen, smask, want)
        if n == 0:
            idle += 1
            if idle >= spin or not _usable(q):
                break
            continue
        idle = 0
        total += n
        dests = np.int64(0)
        for i in range(n):
            dests |= smask[i]
        for d in range(len(rxqs)):
            bit = np.int64(1) << d
            if dests & bit:
                rx_deliver(rxqs[d], bit, stage, slen, smask, n)
    return total


# -- the direct switch: TX chain -> RX chain, no staging ----------------------------------------


@inline_kernel
def _chain_mac(ch, s, s_end, off):
    """The 6 bytes at ``off`` of segments ``[s, s_end)`` as a big-endian int (the forwarding table's key;
    -1: the chain is shorter)."""
    while s < s_end and off >= np.int64(ch.seg_len[s]):
        off -= np.int64(ch.seg_len[s])
        s += 1
    if s < s_end and off + 6 <= np.int64(ch.seg_len[s]):  # the common case: in one segment
        a = ch.seg_addr[s] + _U64(off)
        v = np.int64(0)
        for i in range(6):
            v = (v << 8) | np.int64(ld8(a + _U64(i)))
        return v
    v = np.int64(0)
    got = 0
    while s < s_end and got < 6:
        ln = np.int64(ch.seg_len[s])
        while off < ln and got < 6:
            v = (v << 8) | np.int64(ld8(ch.seg_addr[s] + _U64(off)))
            off += 1
            got += 1
        off = 0
        s += 1
    return v if got == 6 else np.int64(-1)


@inline_kernel
def _stream_copy(sch, s, s_end, soff, dch, d, d_end, doff, n):
    """Copy ``n`` bytes from offset ``soff`` of segments ``[s, s_end)`` of chains ``sch`` to offset ``doff``
    of segments ``[d, d_end)`` of ``dch`` (both already translated and bounds-checked by the fetch)."""
    while s < s_end and soff >= _U64(sch.seg_len[s]):
        soff -= _U64(sch.seg_len[s])
        s += 1
    while d < d_end and doff >= _U64(dch.seg_len[d]):
        doff -= _U64(dch.seg_len[d])
        d += 1
    done = _Z
    while done < n and s < s_end and d < d_end:
        take = _U64(sch.seg_len[s]) - soff
        dl = _U64(dch.seg_len[d]) - doff
        if dl < take:
            take = dl
        if n - done < take:
            take = n - done
        copy_bytes(dch.seg_addr[d] + doff, sch.seg_addr[s] + soff, take)
        done += take
        soff += take
        doff += take
        if soff >= _U64(sch.seg_len[s]):
            s += 1
            soff = _Z
        if doff >= _U64(dch.seg_len[d]):
            d += 1
            doff = _Z
    return done


@inline_kernel
def _put_frame(tch, ts, ts_end, rch, rs, rs_end, ln):
    """Write a received frame of ``ln`` bytes (header included) into RX segments ``[rs, rs_end)``: a fresh
    virtio-net header (``num_buffers`` = 1), then the TX chain's bytes after its header."""
    if np.int64(rch.seg_len[rs]) >= HDR_LEN:
        a = rch.seg_addr[rs]
        st64(a, _Z)
        st32(a + _U64(8), np.uint32(1 << 16))  # bytes 8-11: csum_offset 0, num_buffers 1 (little-endian)
        if ts_end - ts == 1 and _U64(rch.seg_len[rs]) >= ln:  # one segment each way: one copy
            copy_bytes(a + _U64(HDR_LEN), tch.seg_addr[ts] + _U64(HDR_LEN), ln - _U64(HDR_LEN))
            return
    else:  # a header split over RX segments
        k = 0
        d = rs
        off = 0
        while k < HDR_LEN and d < rs_end:
            if off < np.int64(rch.seg_len[d]):
                st8(rch.seg_addr[d] + _U64(off), np.uint8(1 if k == 10 else 0))
                off += 1
                k += 1
            else:
                d += 1
                off = 0
    _stream_copy(tch, ts, ts_end, _U64(HDR_LEN), rch, rs, rs_end, _U64(HDR_LEN), ln - _U64(HDR_LEN))


_SW_MASK, _SW_WANT = 0, 1
#: rows of the scratch :func:`switch_window` reads (which VFs to serve) and fills (chains each took)
SW_SERVE, SW_MOVED = 2, 3


def switch_scratch() -> np.ndarray:
    """The scratch :func:`tx_switch` works in (per burst: each TX frame's destinations; per VF: frames coming)."""
    return np.zeros((4, max(FETCH, 64)), np.int64)


@inline_kernel
def _switch_burst(q, vf, fdb, active, rxqs, mask, want, w):
    """One burst of :func:`tx_switch`: up to ``w`` chains of TX queue ``q``.  Returns the chains taken;
    0: none available; -1: the queue does not run (stopped, or it faulted now)."""
    if not _usable(q):
        return -1
    packed = q.cfg[CFG_PACKED] != 0
    logging = log_enabled(q.log)
    if logging:
        log_burst_start(q.log, q.state)
    n = ring_fetch(packed, q.split, q.packed, q.state, q.regions, q.chains, w, q.inflight)
    if n == 0:
        if q.state[STATE_BROKEN] != 0:
            _fault(q, ERR_AVAIL_IDX)
            return -1
        return 0
    nvf = len(rxqs)
    me = np.int64(1) << vf
    others = active & ~me
    ch = q.chains
    chain_prefetch(ch, 0, n, False)  # each frame's first two lines (header, MACs: the driver wrote them on its cpu)
    # 1. check, learn, decide
    last_src = np.int64(-1)
    last_dst = np.int64(-1)
    last_m = np.int64(0)
    last_fl = 0
    ntx = n
    fault = False
    dests = np.int64(0)
    errs = 0
    flooded = 0
    drops = 0
    nbytes = 0
    for c in range(n):
        st = np.int64(ch.status[c])
        if st != 0:
            _fault(q, st)
            ntx = c
            fault = True
            break
        s0 = np.int64(ch.seg_start[c])
        s_end = s0 + np.int64(ch.seg_count[c])
        wr, rlen = _tx_room(ch, s0, s_end)
        if wr or rlen < _U64(_MIN_FRAME) or rlen > _SLOT:
            errs += 1  # a writable buffer in a TX chain, a runt, a frame over the slot
            mask[c] = -1
            continue
        dmac = _chain_mac(ch, s0, s_end, HDR_LEN)
        smac = _chain_mac(ch, s0, s_end, HDR_LEN + 6)
        if smac != last_src:  # a burst mostly carries one flow: learn and look up once per run of frames
            if (smac >> 40) & 1 == 0:
                _fdb_learn(fdb, smac, vf)
            last_src = smac
            last_dst = np.int64(-1)  # a learn may move or evict any entry
        if dmac != last_dst:
            last_fl = 0
            if (dmac >> 40) & 1:
                last_m = others
                last_fl = 1
            else:
                d = _fdb_lookup(fdb, dmac)
                if d < 0:
                    last_m = others
                    last_fl = 1
                elif d == vf:
                    last_m = np.int64(0)
                else:
                    last_m = (np.int64(1) << d) & active
            last_dst = dmac
        m = last_m
        flooded += last_fl
        if m == 0:
            drops += 1
        mask[c] = m
        dests |= m
        nbytes += np.int64(rlen) - HDR_LEN
        b = 0
        while m != 0:
            if m & 1:
                want[b] += 1
            m >>= 1
            b += 1
    # 2. per destination: its RX chains in one fetch, the copies, one publication
    for d in range(nvf):
        if (dests >> d) & 1 == 0:
            continue
        rq = rxqs[d]  # once per destination and burst (indexing the tuple copies a whole context)
        bit = np.int64(1) << d
        k = want[d]
        want[d] = 0
        if not _usable(rq):
            rq.counters[Q_DROPS] += k
            continue
        rl = log_enabled(rq.log)
        if rl:
            log_burst_start(rq.log, rq.state)
        got = ring_fetch(rq.cfg[CFG_PACKED] != 0, rq.split, rq.packed, rq.state, rq.regions, rq.chains, k,
                         rq.inflight)
        if got == 0 and rq.state[STATE_BROKEN] != 0:
            _fault(rq, ERR_AVAIL_IDX)
            rq.counters[Q_DROPS] += 1  # the frame that found the ring broken (the old path stopped there)
            continue
        rch = rq.chains
        chain_prefetch(rch, 0, got, True)  # the RX buffers' first two lines, about to be written
        j = 0
        rpk = 0
        rby = 0
        for c in range(ntx):
            if mask[c] <= 0 or mask[c] & bit == 0:
                continue
            if j >= got:
                rq.counters[Q_NOBUF] += 1
                continue
            rst = np.int64(rch.status[j])
            if rst != 0:
                _fault(rq, rst)
                rq.counters[Q_DROPS] += 1  # the old path stopped counting at the fault
                break
            r0 = np.int64(rch.seg_start[j])
            r_end = r0 + np.int64(rch.seg_count[j])
            rhead = rch.head[j]
            rnd = rch.ndesc[j]
            j += 1
            ln = _U64(np.int64(ch.total_len[c]))
            ro, cap = _rx_room(rch, r0, r_end)
            if ro or cap < ln:
                rq.counters[Q_ERRORS] += 1  # a readable buffer in an RX chain, or a buffer too small
                _push(rq, rhead, 0, rnd)
                continue
            s0 = np.int64(ch.seg_start[c])
            _put_frame(ch, s0, s0 + np.int64(ch.seg_count[c]), rch, r0, r_end, ln)
            if rl:
                _log_rx(rq, rch, r0, r_end, ln)
            _push(rq, rhead, np.int64(ln), rnd)
            rpk += 1
            rby += np.int64(ln) - HDR_LEN
        rq.counters[Q_PACKETS] += rpk
        rq.counters[Q_BYTES] += rby
        if got > 0:
            _flush(rq, rl)
    # 3. the TX chains complete (used length 0), in the order taken; the counters first, so that a driver
    # that sees its chains used reads counters that include them
    q.counters[Q_ERRORS] += errs
    q.counters[Q_FLOODED] += flooded
    q.counters[Q_DROPS] += drops
    q.counters[Q_PACKETS] += ntx - errs
    q.counters[Q_BYTES] += nbytes
    for c in range(ntx):
        _push(q, ch.head[c], 0, ch.ndesc[c])
    if ntx > 0:
        _flush(q, logging)
    if fault:
        return -1
    return ntx


@kernel
def tx_switch(q, vf, fdb, active, rxqs, sw, budget, spin):
    """A busy window of TX queue ``q`` (VF ``vf``) that copies each frame straight from its TX chain into
    the RX chain of each destination, with no staging.  ``rxqs``: the destination RX queue of each VF
    by VF index (an idle context where none); ``sw``: the scratch of :func:`switch_scratch`.

    Per burst of up to :data:`FETCH` TX chains (one ring fetch):

    1. the chains are checked, their source MACs learnt and their destination sets decided as
       :func:`tx_pull` does, reading the MACs in the guest's buffer;
    2. per destination VF: its RX ring gives as many chains as it has frames coming, in one fetch;
       each frame is written into its chain (a fresh header, then the frame); that ring's used
       entries are published once (one interrupt decision);
    3. the TX chains complete (used length 0), published once.

    A frame flooded to several VFs is copied from its TX buffer into each (the TX chain completes
    after the last copy).  Counters, drops, faults and dirty-page marks are those of
    :func:`tx_pull` + :func:`rx_deliver`.  Runs until ``budget`` frames or ``spin`` empty fetches in
    a row; returns the chains taken."""
    mask = sw[_SW_MASK]
    want = sw[_SW_WANT]
    for d in range(len(rxqs)):
        want[d] = 0
    total = 0
    idle = 0
    while total < budget:
        w = budget - total
        if w > FETCH:
            w = FETCH
        n = _switch_burst(q, vf, fdb, active, rxqs, mask, want, w)
        if n < 0:
            break
        if n == 0:
            idle += 1
            if idle >= spin:
                break
            continue
        idle = 0
        total += n
    return total


@kernel
def switch_window(txqs, fdb, active, rxqs, sw, budget, spin):
    """The busy window of every TX queue of one queue pair, in one call: ``txqs`` the pair's TX queue
    of each VF by VF index (an idle context where none), served round-robin a burst each
    (:func:`tx_switch`'s bursts) into ``rxqs`` (the pair's destination RX queues by VF index).  Row
    ``SW_SERVE`` of ``sw`` says which VFs' TX queues to serve (nonzero), row ``SW_MOVED`` gets the
    chains each took.  Runs until ``budget`` chains in all, or ``spin`` rounds in a row found nothing
    (or no queue runs); returns the chains taken."""
    mask = sw[_SW_MASK]
    want = sw[_SW_WANT]
    serve = sw[SW_SERVE]
    moved = sw[SW_MOVED]
    nvf = len(txqs)
    for d in range(len(rxqs)):
        want[d] = 0
    for v in range(nvf):
        moved[v] = 0
    total = 0
    idle = 0
    while total < budget:
        got = 0
        live = 0
        for v in range(nvf):
            if serve[v] == 0:
                continue
            n = _switch_burst(txqs[v], v, fdb, active, rxqs, mask, want, FETCH)
            if n < 0:
                serve[v] = 0
                continue
            live += 1
            moved[v] += n
            got += n
        if live == 0:
            break
        if got == 0:
            idle += 1
            if idle >= spin:
                break
            continue
        idle = 0
        total += got
    return total


# =============================================================================
# plain-Python side
# =============================================================================

class FastCall:
    """Calls kernel ``disp`` straight into its compiled code for the argument types it has seen.

    The dispatcher resolves the types of every argument on every call; for a queue context (a
    namedtuple of namedtuples of arrays) that is most of a call's cost (about 20 of 25 µs for
    :func:`switch_window` on two VFs), paid each card turn.  Here each object argument's numba
    type is worked out once per object (contexts, tables and scratch live as long as their queue;
    a reference is kept, so an id is never reused while cached) and the signature picks the
    compiled overload, whose entry point is what the dispatcher itself would call.  A signature
    the dispatcher has not compiled goes through it once (compiling or loading it); a call whose
    signature is still unknown after that always goes through the dispatcher."""

    _MAX_CACHED = 4096

    def __init__(self, disp):
        self.disp = disp
        self._types: dict = {}  # id(obj) -> (obj, numba type)
        self._entries: dict = {}  # the arguments' tokens -> entry point

    def _token(self, obj):
        """What identifies ``obj``'s numba type: "i" an int64, "b" a bool, a tuple of its members'
        tokens, else the object's id (cached with its type, and a reference)."""
        t = type(obj)
        if t is int:
            return "i" if -(1 << 63) <= obj < 1 << 63 else "I"
        if t is bool:
            return "b"
        if t is tuple:
            return tuple([self._token(x) for x in obj])
        hit = self._types.get(id(obj))
        if hit is None or hit[0] is not obj:
            if len(self._types) >= self._MAX_CACHED:
                self._types.clear()
                self._entries.clear()
            self._types[id(obj)] = (obj, self.disp.typeof_pyval(obj))
        return id(obj)

    def _type(self, obj):
        if type(obj) is tuple:
            return _nb_tuple_type(tuple(self._type(x) for x in obj))
        if type(obj) in (int, bool):
            return self.disp.typeof_pyval(obj)
        return self._types[id(obj)][1]

    def __call__(self, *args):
        key = tuple([self._token(a) for a in args])
        ep = self._entries.get(key)
        if ep is not None:
            return ep(*args)
        r = self.disp(*args)
        if "I" not in key:
            ovl = self.disp.overloads.get(tuple(self._type(a) for a in args))
            if ovl is not None:
                self._entries[key] = ovl.entry_point
        return r


def _nb_tuple_type(ts):
    from numba.core import types

    return types.BaseTuple.from_types(ts)


_IDLE: dict = {}


def make_queue_ctx(split, packed, state, regions, *, is_packed: bool, callfd: int, counters: np.ndarray,
                   log=None, offloads: int = 0) -> NicQueueCtx:
    """A queue context (``regions``: the VF's DMA map table, shared by its queues and changed in place;
    ``offloads``: its :mod:`~dataplane.nic.offload` bits)."""
    cfg = np.zeros(CFG_SLOTS, np.int64)
    cfg[CFG_PACKED] = int(bool(is_packed))
    cfg[CFG_CALLFD] = int(callfd)
    cfg[CFG_OFFLOADS] = int(offloads)
    return NicQueueCtx(split=split, packed=packed, state=state, regions=regions, chains=make_chains(FETCH, MAX_SEGS),
                       cfg=cfg, counters=counters, inflight=no_inflight(), log=no_log() if log is None else log)


def ring_area_sizes(size: int, packed: bool) -> tuple[int, int, int]:
    """Bytes of a ring's three areas: descriptors, driver area, device area (split: avail and used
    rings with their event words; packed: the 4-byte event suppression areas)."""
    return (16 * size, 4, 4) if packed else (16 * size, 6 + 2 * size, 6 + 8 * size)


def open_queue(addrs, size: int, *, packed: bool, feat: int, last_avail: int, last_used: int, regions,
               callfd: int, counters: np.ndarray, log=None, offloads: int = 0) -> NicQueueCtx:
    """A running queue over the ring areas at the card's addresses ``addrs`` (desc, driver area, device
    area), from the indices ``last_avail`` / ``last_used`` (packed: offset | wrap counter << 15);
    ``regions``: the table its buffers translate through.  ValueError if the indices do not fit.

    Its counter row's error code is cleared and it is marked running; kicks are turned off (an RX queue
    never needs them: the card looks for buffers when a frame arrives; a TX queue starts busy, polled)."""
    from dataplane.rings.virtqueue import STATE_LAST_USED, STATE_SIGNALLED_USED
    from dataplane.vhost.dev_ring import queue_rings

    if packed:
        sp, pk, st = queue_rings(*addrs, size, packed=True, feat=feat, last_avail_idx=last_avail,
                                 last_used_idx=last_used)
    else:
        sp, pk, st = queue_rings(*addrs, size, packed=False, feat=feat, last_avail_idx=last_avail)
        st[STATE_LAST_USED] = st[STATE_SIGNALLED_USED] = last_used
    counters[Q_ERR] = 0
    q = make_queue_ctx(sp, pk, st, regions, is_packed=packed, callfd=callfd, counters=counters, log=log,
                       offloads=offloads)
    q.cfg[CFG_RUNNING] = 1
    counters[Q_RUNNING] = 1
    set_notify(q, False)
    return q


def queue_used_index(q: NicQueueCtx) -> int:
    """The queue's used index (packed: offset | wrap counter << 15).  The card completes every chain it
    takes within the burst that took it, so it is also where the next chain will be taken from."""
    from dataplane.rings.packed import packed_dev_get_used_base
    from dataplane.rings.virtqueue import STATE_LAST_USED

    if q.cfg[CFG_PACKED]:
        return int(packed_dev_get_used_base(q.state)) & 0xFFFF
    return int(q.state[STATE_LAST_USED]) & 0xFFFF


def idle_queue_ctx() -> NicQueueCtx:
    """A context that never runs."""
    if "ctx" not in _IDLE:
        from dataplane.rings.split import split_dev_state

        dsplit, dpacked = dummy_vrings()
        _IDLE["ctx"] = make_queue_ctx(dsplit, dpacked, split_dev_state(1), np.zeros((1, 3), np.uint64),
                                      is_packed=False, callfd=-1, counters=np.zeros(Q_WORDS, np.int64))
    return _IDLE["ctx"]


def stage_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The staging area of :func:`tx_pull` / :func:`rx_deliver`: ``stage`` uint8[STAGE_ROWS, SLOT],
    ``slen`` and ``smask`` int64[STAGE_ROWS]."""
    return np.zeros((STAGE_ROWS, SLOT), np.uint8), np.zeros(STAGE_ROWS, np.int64), np.zeros(STAGE_ROWS, np.int64)


def warm_up() -> None:
    """Compile (or load from the cache) the datapath kernels in this process."""
    d = idle_queue_ctx()
    stage, slen, smask = stage_arrays()
    fdb = np.zeros((FDB_SIZE, 2), np.int64)
    tx_pull(d, 0, fdb, 0, stage, slen, smask, 1)
    rx_deliver(d, 1, stage, slen, smask, 0)
    set_notify(d, False)


def warm_up_switch(nvfs: int) -> None:
    """Compile (or load) :func:`switch_window` for a card of ``nvfs`` VFs (one specialisation per tuple
    length; :func:`tx_serve` and :func:`tx_switch`, which the card does not call, are left out)."""
    d = idle_queue_ctx()
    fdb = np.zeros((FDB_SIZE, 2), np.int64)
    switch_window((d,) * nvfs, fdb, 0, (d,) * nvfs, switch_scratch(), 1, 1)
    db = np.full(2048, 0xFFFF, np.uint16)
    poll_doorbells(db, 1, 2048, np.zeros((1, Q_WORDS), np.int64), np.zeros(1, np.uint8))
    poll_var_doorbell(np.full(1024, VAR_IDLE, np.uint32), 1, np.zeros((1, Q_WORDS), np.int64))


