"""The simulators' data path in numba: whole bursts of a device's work per call, no per-packet Python.

A queue is a :class:`SimQueueCtx` (the ring views of :mod:`dataplane.vhost.dev_ring`,
split or packed chosen at run time, a chain scratch, config slots and the
queue's row of counters in the device's shared memory, :mod:`~dataplane.vdpa.sim.shm`).
The hardware process (:mod:`~dataplane.vdpa.sim.worker`) calls

* :func:`net_work` ``(rx, tx, cvq, cvq_on, mac, buf, hdr_len, budget)`` -- vdpasim_net's
  work function: the control queue first, then TX chains looped back into RX
  buffers through the receive filter;
* :func:`blk_work` ``(q, disk, ident, budget)`` -- vdpasim_blk's: requests
  against the RAM disk ``disk``.

Both fetch one chain at a time (so a chain they must not take yet is left
in the ring, as vringh does), publish the used entries once per call and
write the queue's call eventfd when the driver wants an interrupt
(``VRING_AVAIL_F_NO_INTERRUPT`` clear; EVENT_IDX if it was negotiated).
They return the chains taken and flag ``CFG_STOPPED`` when they stopped
where Linux's work function stops (an overrun, a malformed request...):
such a queue waits for the next kick.  :func:`net_serve` / :func:`blk_serve`
call them again while chains keep coming (a short busy window, never past a
stop), so a burst costs one wake-up and one dispatch from Python (a call
from Python costs ~14 us of argument checking: the queue contexts hold ~30
arrays each).

Semantics (VDPA-FACTS §4.2 / §4.3) and where this departs from Linux:

* A chain the ring kernels refuse (descriptor index past the ring, a loop,
  a buffer outside guest memory, a bad indirect table, readable after
  writable, more segments than :data:`MAX_SEGS`) or an avail index that
  jumped past the ring size stops the queue: the code goes in the row's
  ``ROW_ERR`` slot (the first one is kept) and the queue is not touched
  again until it is attached anew.  Net counts it as vdpasim counts a
  getdesc error (TX: ``tx errors``; RX: ``rx overruns`` and the TX chain
  completed with length 0); nothing of such a chain is touched.
* A well-formed chain vringh's getdesc would refuse (a writable
  descriptor in a TX chain, a readable one in an RX chain) is counted as
  Linux counts it and left uncompleted, as Linux leaves it.
* blk: IN / OUT copy ``to_push`` / ``to_pull`` bytes as Linux does (not
  rounded to sectors), but also check those bytes lie on the disk (Linux
  checks only whole sectors and may run up to 511 bytes past its buffer);
  a start sector past the capacity is refused (Linux only logs it).
  GET_ID into fewer than 20 data bytes writes what fits, status last.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from dataplane.rings.chain_copy import chain_gather, chain_load_le, chain_scatter
from dataplane.rings.jit import eventfd_signal, inline_kernel, kernel
from dataplane.rings.mem import st8
from dataplane.rings.virtqueue import ERR_NAMES, STATE_BROKEN, make_chains
from dataplane.vhost.dev_ring import dummy_vrings, ring_fetch_one, ring_flush_used, ring_push_used
from dataplane.vhost.inflight import no_inflight

from .shm import ROW_ERR, ROW_ERR_COUNT, ROW_IRQS, ROW_WORDS
from .spec import (
    ETH_ALEN,
    TX_PULL_MAX,
    VDPASIM_BLK_DWZ_MAX_SECTORS,
    VDPASIM_BLK_IO_MAX_SECTORS,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
)

__all__ = [
    "SimQueueCtx",
    "make_queue_ctx",
    "disabled_queue_ctx",
    "net_work",
    "blk_work",
    "net_serve",
    "blk_serve",
    "MAX_SEGS",
    "CFG_PACKED",
    "CFG_CALLFD",
    "CFG_ENABLED",
    "RX_PACKETS", "RX_BYTES", "RX_ERRORS", "RX_OVERRUNS", "RX_DROPS",
    "TX_PACKETS", "TX_BYTES", "TX_ERRORS", "TX_DROPS",
    "CVQ_REQUESTS", "CVQ_SUCCESSES", "CVQ_ERRORS",
    "BLK_COUNTER_NAMES",
    "ERR_RING_ADDR",
    "queue_error_name",
]

#: Segments one chain may have (longer chains stop the queue: ERR_TOO_MANY_SEGS).
MAX_SEGS = 1024

# -- config slots (int64, private to the hardware process) ---------------------------
CFG_PACKED = 0
CFG_CALLFD = 1  # -1: no interrupt
CFG_ENABLED = 2
CFG_STOPPED = 3  # the last run stopped early as Linux's would (overrun, malformed request...): wait for a kick
CFG_SLOTS = 8

# -- counter slots of a queue's row (net: the vendor stats, in their order) -----------
RX_PACKETS, RX_BYTES, RX_ERRORS, RX_OVERRUNS, RX_DROPS = range(5)
TX_PACKETS, TX_BYTES, TX_ERRORS, TX_DROPS = range(4)
CVQ_REQUESTS, CVQ_SUCCESSES, CVQ_ERRORS = range(3)
#: blk keeps counters too (vdpasim_blk exports none: they are for tests and logs).
BLK_COUNTER_NAMES = ("requests", "ok", "ioerr", "unsupp", "malformed", "read_bytes", "written_bytes")
BLK_REQUESTS, BLK_OK, BLK_IOERR, BLK_UNSUPP, BLK_MALFORMED, BLK_READ_BYTES, BLK_WRITTEN_BYTES = range(7)

# blk protocol numbers
_T_IN, _T_OUT, _T_FLUSH, _T_GET_ID, _T_DISCARD, _T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
_S_OK, _S_IOERR, _S_UNSUPP = 0, 1, 2

#: A queue's fault code beyond the rings' ERR_* codes: its ring areas are outside guest memory.
ERR_RING_ADDR = 32


def queue_error_name(code: int) -> str:
    """The reason recorded for fault ``code`` (the rings' ERR_NAMES, plus ``ring_address``)."""
    if code == ERR_RING_ADDR:
        return "ring_address"
    return ERR_NAMES.get(int(code), f"error_{int(code)}")


SimQueueCtx = namedtuple("SimQueueCtx", ["split", "packed", "state", "regions", "chains", "cfg", "counters",
                                         "inflight"])

_U64 = np.uint64
_Z = _U64(0)
_ONE = _U64(1)
_EIGHT = _U64(8)
_SHIFT = _U64(9)
_HDR = _U64(16)
_DWZ = _U64(16)
_ID_BYTES = _U64(20)
_PULL_MAX = _U64(TX_PULL_MAX)
_IO_MAX = _U64(VDPASIM_BLK_IO_MAX_SECTORS)
_DWZ_MAX = _U64(VDPASIM_BLK_DWZ_MAX_SECTORS)


# =============================================================================
# queue helpers
# =============================================================================


@inline_kernel
def _fault(q, code):
    """Stop the queue: keep the first fault's code, count every one."""
    if q.counters[ROW_ERR] == 0:
        q.counters[ROW_ERR] = code
    q.counters[ROW_ERR_COUNT] += 1


@inline_kernel
def _usable(q):
    return q.cfg[CFG_ENABLED] != 0 and q.counters[ROW_ERR] == 0 and q.state[STATE_BROKEN] == 0


@inline_kernel
def _fetch1(q):
    """Take one chain into ``q.chains`` slot 0: 1; none: 0; a fault (recorded, queue stopped): -1."""
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
def _flush(q, force):
    """Publish the used entries; write the call eventfd if the driver wants it (or ``force``)."""
    need = ring_flush_used(q.cfg[CFG_PACKED] != 0, q.split, q.packed, q.state, q.inflight)
    if need or force:
        fd = q.cfg[CFG_CALLFD]
        if fd >= 0:
            eventfd_signal(fd)
            q.counters[ROW_IRQS] += 1


# =============================================================================
# segments of chain slot 0
# =============================================================================


@inline_kernel
def _readable(ch, s0, s_end):
    """(index of the first writable segment, readable bytes) -- readable segments come first."""
    w0 = s0
    rlen = _Z
    while w0 < s_end and ch.seg_write[w0] == 0:
        rlen += _U64(ch.seg_len[w0])
        w0 += 1
    return w0, rlen


@inline_kernel
def _seg_bytes(ch, s, s_end):
    n = _Z
    while s < s_end:
        n += _U64(ch.seg_len[s])
        s += 1
    return n


# =============================================================================
# vdpasim_net
# =============================================================================


@inline_kernel
def _accept(buf, n, hdr_len, mac):
    """vdpasim_net's receive filter over the pulled bytes ``buf[:n]``.

    Too short (< 6 + header): reject.  Destination broadcast / multicast:
    accept.  Else compare with the MAC as ``strncmp(dest, mac, 6)`` does: the
    comparison ends equal at the first 0x00 byte both share.
    """
    if n < hdr_len + ETH_ALEN:
        return False
    if buf[hdr_len] & 1:
        return True
    for i in range(ETH_ALEN):
        a = buf[hdr_len + i]
        if a != mac[i]:
            return False
        if a == 0:
            return True
    return True


@inline_kernel
def _cvq_work(q, mac, budget):
    """Serve control requests: class MAC / MAC_ADDR_SET with 6 bytes sets ``mac`` (OK); anything else ERR."""
    done = 0
    completed = 0
    q.cfg[CFG_STOPPED] = 0
    mac_addr = _U64(mac.ctypes.data)
    while done < budget:
        if _fetch1(q) <= 0:
            break
        ch = q.chains
        s0 = np.int64(ch.seg_start[0])
        s_end = s0 + np.int64(ch.seg_count[0])
        w0, rlen = _readable(ch, s0, s_end)
        q.counters[CVQ_REQUESTS] += 1
        done += 1
        if rlen < _U64(2):  # short header: an error, the chain is not completed, processing stops
            q.counters[CVQ_ERRORS] += 1
            q.cfg[CFG_STOPPED] = 1
            break
        cls = chain_load_le(ch, s0, w0, _Z, _ONE)
        cmd = chain_load_le(ch, s0, w0, _ONE, _ONE)
        status = VIRTIO_NET_ERR
        if cls == VIRTIO_NET_CTRL_MAC and cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET:
            take = rlen - _U64(2)
            if take > _U64(ETH_ALEN):
                take = _U64(ETH_ALEN)
            chain_gather(ch, s0, w0, _U64(2), mac_addr, take)  # what was there is pulled in, even if short
            if take == _U64(ETH_ALEN):
                status = VIRTIO_NET_OK
        if status == VIRTIO_NET_OK:
            q.counters[CVQ_SUCCESSES] += 1
        else:
            q.counters[CVQ_ERRORS] += 1
        written = 0
        for k in range(w0, s_end):  # the ack: the first writable byte
            if ch.seg_len[k] > 0:
                st8(ch.seg_addr[k], status)
                written = 1
                break
        _push(q, ch.head[0], written, ch.ndesc[0])
        completed += 1
    if completed > 0:
        _flush(q, True)  # vdpasim calls the cvq callback after every request
    return done


@kernel
def net_work(rx, tx, cvq, cvq_on, mac, buf, hdr_len, budget):
    """One run of vdpasim_net's work: the cvq (when ``cvq_on``), then up to ``budget`` TX chains.

    ``mac``: uint8[6] (shared memory); ``buf``: uint8[>= 4096] scratch for the
    pulled frame; ``hdr_len``: 12 with VERSION_1 else 10.  Returns the chains
    taken (cvq and TX).  TX is served only while RX and TX are both usable.
    """
    done = 0
    tx.cfg[CFG_STOPPED] = 0
    if cvq_on and _usable(cvq):
        done += _cvq_work(cvq, mac, budget)
    if not (_usable(rx) and _usable(tx)):
        return done
    bufa = _U64(buf.ctypes.data)
    pulled = 0
    while pulled < budget:
        r = _fetch1(tx)
        if r <= 0:
            if r < 0:
                tx.counters[TX_ERRORS] += 1
                tx.cfg[CFG_STOPPED] = 1
            break
        ch = tx.chains
        head = ch.head[0]
        nd = ch.ndesc[0]
        s0 = np.int64(ch.seg_start[0])
        s_end = s0 + np.int64(ch.seg_count[0])
        w0, rlen = _readable(ch, s0, s_end)
        if w0 != s_end:  # a writable descriptor in a TX chain: getdesc fails, the chain stays taken
            tx.counters[TX_ERRORS] += 1
            tx.cfg[CFG_STOPPED] = 1
            break
        n = rlen if rlen < _PULL_MAX else _PULL_MAX
        chain_gather(ch, s0, s_end, _Z, bufa, n)
        tx.counters[TX_PACKETS] += 1
        tx.counters[TX_BYTES] += np.int64(n)
        pulled += 1
        done += 1
        if not _accept(buf, np.int64(n), hdr_len, mac):
            rx.counters[RX_DROPS] += 1
            _push(tx, head, 0, nd)
            continue
        r = _fetch1(rx)
        if r <= 0:  # no RX buffer (or the RX ring is at fault)
            rx.counters[RX_OVERRUNS] += 1
            _push(tx, head, 0, nd)
            tx.cfg[CFG_STOPPED] = 1
            break
        rc = rx.chains
        r0 = np.int64(rc.seg_start[0])
        r_end = r0 + np.int64(rc.seg_count[0])
        rw0, _rr = _readable(rc, r0, r_end)
        if rw0 != r0:  # a readable descriptor in an RX chain: getdesc fails -> overrun
            rx.counters[RX_OVERRUNS] += 1
            _push(tx, head, 0, nd)
            tx.cfg[CFG_STOPPED] = 1
            break
        written = chain_scatter(rc, r0, r_end, bufa, n)
        if written == _Z:  # nothing could be pushed: neither chain is completed
            rx.counters[RX_ERRORS] += 1
            tx.cfg[CFG_STOPPED] = 1
            break
        rx.counters[RX_PACKETS] += 1
        rx.counters[RX_BYTES] += np.int64(written)
        _push(tx, head, 0, nd)
        _push(rx, rc.head[0], written, rc.ndesc[0])
    _flush(tx, False)
    _flush(rx, False)
    return done


# =============================================================================
# vdpasim_blk
# =============================================================================


@inline_kernel
def _range_ok(start, num, max_sectors, capacity):
    """vdpasim_blk's range check; a start past the capacity is refused (Linux only logs it and wraps)."""
    if start > capacity:
        return False
    if num > max_sectors:
        return False
    return num <= capacity - start


@inline_kernel
def _bytes_ok(start, nbytes, capacity):
    """``nbytes`` from sector ``start`` stay on the disk (start <= capacity already checked)."""
    return nbytes <= ((capacity - start) << _SHIFT)


@inline_kernel
def _blk_answer(q, status):
    q.counters[BLK_REQUESTS] += 1
    if status == _S_OK:
        q.counters[BLK_OK] += 1
    elif status == _S_IOERR:
        q.counters[BLK_IOERR] += 1
    else:
        q.counters[BLK_UNSUPP] += 1


@kernel
def blk_work(q, disk, ident, budget):
    """One run of vdpasim_blk's work on queue ``q``: up to ``budget`` requests against ``disk``.

    ``disk``: uint8[capacity * 512]; ``ident``: uint8[20], what GET_ID
    returns.  A malformed chain (no readable or no writable descriptor, an
    empty last writable descriptor, a header under 16 bytes) is completed
    with length 0 and ends the run (the next kick goes on).  Returns the
    chains taken.
    """
    done = 0
    q.cfg[CFG_STOPPED] = 0
    capacity = _U64(disk.shape[0]) >> _SHIFT
    diska = _U64(disk.ctypes.data)
    while done < budget:
        if _fetch1(q) <= 0:
            break
        ch = q.chains
        head = ch.head[0]
        nd = ch.ndesc[0]
        s0 = np.int64(ch.seg_start[0])
        s_end = s0 + np.int64(ch.seg_count[0])
        w0, rlen = _readable(ch, s0, s_end)
        done += 1
        if w0 == s0 or w0 == s_end or ch.seg_len[s_end - 1] == 0 or rlen < _HDR:
            q.counters[BLK_MALFORMED] += 1
            _push(q, head, 0, nd)
            q.cfg[CFG_STOPPED] = 1
            break
        to_push = _seg_bytes(ch, w0, s_end) - _ONE
        to_pull = rlen - _HDR
        rtype = chain_load_le(ch, s0, w0, _Z, _U64(4))
        sector = chain_load_le(ch, s0, w0, _U64(8), _EIGHT)
        status = _S_OK
        pushed = _Z
        if rtype != _T_IN and rtype != _T_OUT and sector != _Z:
            status = _S_IOERR
        elif rtype == _T_IN:
            if _range_ok(sector, to_push >> _SHIFT, _IO_MAX, capacity) and _bytes_ok(sector, to_push, capacity):
                pushed = chain_scatter(ch, w0, s_end, diska + (sector << _SHIFT), to_push)
                q.counters[BLK_READ_BYTES] += np.int64(pushed)
            else:
                status = _S_IOERR
        elif rtype == _T_OUT:
            if _range_ok(sector, to_pull >> _SHIFT, _IO_MAX, capacity) and _bytes_ok(sector, to_pull, capacity):
                got = chain_gather(ch, s0, w0, _HDR, diska + (sector << _SHIFT), to_pull)
                q.counters[BLK_WRITTEN_BYTES] += np.int64(got)
            else:
                status = _S_IOERR
        elif rtype == _T_GET_ID:
            n = to_push if to_push < _ID_BYTES else _ID_BYTES
            pushed = chain_scatter(ch, w0, s_end, _U64(ident.ctypes.data), n)
        elif rtype == _T_FLUSH:
            pass
        elif rtype == _T_DISCARD or rtype == _T_WRITE_ZEROES:
            if to_pull != _DWZ:
                status = _S_IOERR
            else:
                start = chain_load_le(ch, s0, w0, _HDR, _EIGHT)
                num = chain_load_le(ch, s0, w0, _HDR + _EIGHT, _U64(4))
                flags = chain_load_le(ch, s0, w0, _HDR + _U64(12), _U64(4))
                if rtype == _T_DISCARD and flags != _Z:
                    status = _S_UNSUPP
                elif rtype == _T_WRITE_ZEROES and (flags & ~_ONE) != _Z:
                    status = _S_UNSUPP
                elif not _range_ok(start, num, _DWZ_MAX, capacity):
                    status = _S_IOERR
                elif rtype == _T_WRITE_ZEROES:
                    a = np.int64(start << _SHIFT)
                    disk[a : a + np.int64(num << _SHIFT)] = 0
        else:
            status = _S_IOERR
        # the status: the last byte of the last writable descriptor (after an error the data is skipped)
        st8(ch.seg_addr[s_end - 1] + _U64(ch.seg_len[s_end - 1]) - _ONE, status)
        _blk_answer(q, status)
        _push(q, head, np.int64(pushed) + 1, nd)
    _flush(q, False)
    return done


# =============================================================================
# busy windows: keep serving while chains keep coming
# =============================================================================


@kernel
def net_serve(rx, tx, cvq, cvq_on, mac, buf, hdr_len, budget, spin):
    """:func:`net_work` again and again while chains keep coming: until ``budget`` chains, a run
    stopped as Linux's stops (it then waits for a kick), or ``spin`` turns without a chain.  The
    driver always kicks (no kick is ever suppressed), so serving its chains before the kick
    arrives changes nothing it can see; it saves a wake-up per burst.  Returns the chains taken."""
    total = 0
    idle = 0
    while total < budget:
        n = net_work(rx, tx, cvq, cvq_on, mac, buf, hdr_len, budget - total)
        total += n
        if tx.cfg[CFG_STOPPED] != 0 or cvq.cfg[CFG_STOPPED] != 0:
            break
        if n == 0:
            idle += 1
            if idle >= spin:
                break
        else:
            idle = 0
    return total


@kernel
def blk_serve(q, disk, ident, budget, spin):
    """:func:`blk_work` in a busy window, as :func:`net_serve`."""
    total = 0
    idle = 0
    while total < budget:
        n = blk_work(q, disk, ident, budget - total)
        total += n
        if q.cfg[CFG_STOPPED] != 0:
            break
        if n == 0:
            idle += 1
            if idle >= spin:
                break
        else:
            idle = 0
    return total


# =============================================================================
# plain-Python side
# =============================================================================

_DUMMY: dict = {}


def make_queue_ctx(split, packed, state, regions, *, is_packed: bool, callfd: int, enabled: bool,
                   counters: np.ndarray, max_segs: int = MAX_SEGS) -> SimQueueCtx:
    """A queue context over ring views and a device state (see :func:`dataplane.vhost.dev_ring.queue_rings`).

    ``counters``: the queue's int64[ROW_WORDS] row (shared memory).
    """
    if counters.dtype != np.int64 or counters.shape != (ROW_WORDS,) or not counters.flags.c_contiguous:
        raise ValueError(f"counters must be a contiguous int64[{ROW_WORDS}]")
    cfg = np.zeros(CFG_SLOTS, np.int64)
    cfg[CFG_PACKED] = int(bool(is_packed))
    cfg[CFG_CALLFD] = int(callfd)
    cfg[CFG_ENABLED] = int(bool(enabled))
    return SimQueueCtx(split=split, packed=packed, state=state, regions=np.ascontiguousarray(regions, np.uint64),
                       chains=make_chains(1, max_segs), cfg=cfg, counters=counters, inflight=no_inflight())


def disabled_queue_ctx() -> SimQueueCtx:
    """A context that never runs (absent queues: a net device without a cvq)."""
    if "ctx" not in _DUMMY:
        from dataplane.rings.split import split_dev_state

        dsplit, dpacked = dummy_vrings()
        _DUMMY["ctx"] = make_queue_ctx(dsplit, dpacked, split_dev_state(1), np.zeros((1, 3), np.uint64),
                                       is_packed=False, callfd=-1, enabled=False,
                                       counters=np.zeros(ROW_WORDS, np.int64), max_segs=1)
    return _DUMMY["ctx"]


def warm_up(kind: str) -> None:
    """Compile (or load from the cache) the kind's kernels in this process."""
    d = disabled_queue_ctx()
    if kind == "net":
        net_serve(d, d, d, True, np.zeros(6, np.uint8), np.zeros(TX_PULL_MAX, np.uint8), 12, 1, 1)
    else:
        blk_serve(d, np.zeros(512, np.uint8), np.zeros(20, np.uint8), 1, 1)
