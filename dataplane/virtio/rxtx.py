"""Rx and Tx bursts of the virtio-user PMD: one numba call per burst, no per-packet Python.

The kernels sit on the *driver side* ring kernels of :mod:`dataplane.rings.split`
and :mod:`dataplane.rings.packed` (free list / id FIFO, IN_ORDER, EVENT_IDX and
the kick decision live there) and on the mempool kernels of
:mod:`dataplane.memory.mempool`.  One source serves both ring layouts: the ring
operations below (``drv_*``) are numba overloads that pick the split or packed
kernel from the type of the driver state, so each burst kernel compiles once
per layout.

Buffers (as DPDK's virtio PMD lays them out)
--------------------------------------------
* **Rx**: each posted buffer is an mbuf whose descriptor starts ``hdr_len``
  bytes before its data room (``buf_iova + headroom - hdr_len``), so the
  device writes the virtio-net header into the headroom and the packet at
  ``data_off = headroom``.  Mergeable: one mbuf per descriptor; the header's
  ``num_buffers`` says how many used buffers make the packet, continuation
  buffers carry data from their first byte (``data_off = headroom - hdr_len``).
  Non-mergeable: a chain of ``rx_segs`` pre-linked mbufs per descriptor chain
  (``rx_segs`` > 1 only when the largest packet does not fit one mbuf), the
  unused tail segments are freed.
* **Tx**: the header goes into the headroom of the first segment when the mbuf
  is direct, not shared and has room (one descriptor for header + first data);
  otherwise into a per-descriptor slot of the queue's header area (a separate
  descriptor).  Every further segment is one more descriptor of the chain.
  Completed chains are reclaimed (their mbufs freed) at the start of each Tx
  burst.
* **VLAN** (seed 003: software strip and insert): Tx inserts the tag of
  mbufs flagged TX_VLAN in front of the data (a shared mbuf or one without
  4 bytes of headroom is dropped and counted, as DPDK does); Rx strips tags
  into ``vlan_tci`` when asked.

Counters (``int64`` per queue, ``Q_*`` slots) are updated by the kernels.
"""

from __future__ import annotations

import numpy as np
from numba.extending import overload

from dataplane.memory.mbuf import (
    MBUF_MAX_NB_SEGS,
    MBUF_NEXT_NONE,
    RTE_MBUF_F_EXTERNAL,
    RTE_MBUF_F_INDIRECT,
    RTE_MBUF_F_RX_VLAN,
    RTE_MBUF_F_RX_VLAN_STRIPPED,
    RTE_MBUF_F_TX_VLAN,
)
from dataplane.memory.mempool import I_HEADROOM, pktmbuf_alloc_bulk, pktmbuf_free, pktmbuf_free_bulk
from dataplane.rings import packed as _pk
from dataplane.rings import split as _sp
from dataplane.net.ether import ETHER_TYPE_VLAN
from dataplane.rings.jit import eventfd_signal, inline_kernel, kernel, stack_array_u32
from dataplane.rings.mem import be16, bswap16, ld16, ld32, ld64, st16, st32, st64

__all__ = [
    "Q_PACKETS",
    "Q_BYTES",
    "Q_ERRORS",
    "Q_DROPS",
    "Q_NOMBUF",
    "Q_KICKS",
    "Q_SLOTS",
    "rx_burst_kernel",
    "tx_burst_kernel",
    "tx_reclaim_kernel",
    "rx_refill_kernel",
    "drv_get_used",
    "drv_add1",
    "drv_add",
    "drv_kick_needed",
    "drv_free_count",
    "drv_next_id",
]

# -- per-queue counters (int64 array) ----------------------------------------
Q_PACKETS = 0
Q_BYTES = 1
Q_ERRORS = 2  # Rx: bad used entries / short packets; Tx: packets with too many segments
Q_DROPS = 3  # Tx: packets not sent because the ring was full (returned to the caller)
Q_NOMBUF = 4  # Rx: refills that found the mempool empty (rx_nombuf)
Q_KICKS = 5  # notifications sent to the back-end
Q_SLOTS = 8

_NONE = MBUF_NEXT_NONE
_NOT_DIRECT = np.uint64(RTE_MBUF_F_EXTERNAL | RTE_MBUF_F_INDIRECT)
_RX_VLAN_FLAGS = np.uint64(RTE_MBUF_F_RX_VLAN | RTE_MBUF_F_RX_VLAN_STRIPPED)
_TX_VLAN = np.uint64(RTE_MBUF_F_TX_VLAN)
_U64 = np.uint64
SCRATCH = 64  # mbufs allocated per refill step (stack array)

# ---------------------------------------------------------------------------
# ring operations, split or packed by the driver state's type
# ---------------------------------------------------------------------------


def _is_packed(ds) -> bool:
    cls = getattr(ds, "instance_class", None)
    if cls is _pk.PackedDrvState:
        return True
    if cls is _sp.SplitDrvState:
        return False
    raise TypeError(f"not a virtqueue driver state: {ds}")


def drv_get_used(vr, ds, out_cookies, out_lens, n):
    """Harvest up to ``n`` used buffers (split or packed)."""


def drv_add1(vr, ds, cookie, gpa, length, write):
    """Add a one-descriptor buffer; its id or -1.  Visible to the device at :func:`drv_kick_needed`
    (split: the avail idx; packed: ``packed_drv_add1_batch``, the burst's first flags written last)."""


def drv_add(vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg):
    """Add a chain of ``nseg`` descriptors; its id or -1."""


def drv_kick_needed(vr, ds):
    """Publish what was added (split: the avail idx) and say whether to kick."""


def drv_free_count(vr, ds):
    """Free descriptors."""


def drv_next_id(vr, ds):
    """The id the next add will return (to pick a Tx header slot before adding)."""


@overload(drv_get_used, inline="always")
def _ov_get_used(vr, ds, out_cookies, out_lens, n):
    if _is_packed(ds):
        return lambda vr, ds, out_cookies, out_lens, n: _pk.packed_drv_get_used(vr, ds, out_cookies, out_lens, n)
    return lambda vr, ds, out_cookies, out_lens, n: _sp.split_drv_get_used(vr, ds, out_cookies, out_lens, n)


@overload(drv_add1, inline="always")
def _ov_add1(vr, ds, cookie, gpa, length, write):
    if _is_packed(ds):
        # visible at drv_kick_needed, like split's avail idx: the device takes the burst at once
        return lambda vr, ds, cookie, gpa, length, write: _pk.packed_drv_add1_batch(vr, ds, cookie, gpa, length, write)
    return lambda vr, ds, cookie, gpa, length, write: _sp.split_drv_add1(vr, ds, cookie, gpa, length, write)


@overload(drv_add, inline="always")
def _ov_add(vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg):
    if _is_packed(ds):
        return lambda vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg: _pk.packed_drv_add(
            vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg, _U64(0), _U64(0)
        )
    return lambda vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg: _sp.split_drv_add(
        vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg, _U64(0), _U64(0)
    )


@overload(drv_kick_needed, inline="always")
def _ov_kick(vr, ds):
    if _is_packed(ds):
        return lambda vr, ds: _pk.packed_drv_need_kick(vr, ds)
    return lambda vr, ds: _sp.split_drv_publish(vr, ds)


@overload(drv_free_count, inline="always")
def _ov_free(vr, ds):
    if _is_packed(ds):
        return lambda vr, ds: ds.state[_pk.DRV_NUM_FREE]
    return lambda vr, ds: ds.state[_sp.DRV_NUM_FREE]


_PK_FREE_HEAD = _pk.DRV_FREE_HEAD
_SP_FREE_HEAD = _sp.DRV_FREE_HEAD


@overload(drv_next_id, inline="always")
def _ov_next_id(vr, ds):
    if _is_packed(ds):
        return lambda vr, ds: np.int64(ds.free_ids[ds.state[_PK_FREE_HEAD]])
    return lambda vr, ds: ds.state[_SP_FREE_HEAD]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@inline_kernel
def _buf_hva(mp, m):
    """Host address of mbuf ``m``'s buffer start."""
    return _U64(mp.data.ctypes.data) + _U64(mp.mbufs[m].buf_off)


@inline_kernel
def _zero_hdr(addr, hdr_len):
    st64(addr, 0)
    st16(addr + _U64(8), 0)
    if hdr_len > 10:
        st16(addr + _U64(10), 0)


@inline_kernel
def _kick(kickfd, cnt):
    if kickfd >= 0:
        eventfd_signal(kickfd)
    cnt[Q_KICKS] += 1


@inline_kernel
def _vlan_strip(mp, m):
    """Software VLAN strip (rte_vlan_strip): an 802.1Q tag moves into ``vlan_tci``."""
    mb = mp.mbufs[m]
    if mb.data_len < 18:
        return
    a = _buf_hva(mp, m) + _U64(mb.data_off)
    if be16(a + _U64(12)) != ETHER_TYPE_VLAN:
        return
    tci = be16(a + _U64(14))
    w0 = ld64(a)  # both MAC addresses (12 bytes) move 4 bytes up, over the tag
    w1 = ld32(a + _U64(8))
    st64(a + _U64(4), w0)
    st32(a + _U64(12), w1)
    mb.data_off = mb.data_off + 4
    mb.data_len = mb.data_len - 4
    mb.pkt_len = mb.pkt_len - 4
    mb.vlan_tci = tci
    mb.ol_flags = _U64(mb.ol_flags) | _RX_VLAN_FLAGS


@inline_kernel
def _vlan_insert(mp, m):
    """Software VLAN insert (rte_vlan_insert) for TX_VLAN; False when impossible (shared, no room)."""
    mb = mp.mbufs[m]
    if (mb.refcnt != 1) | ((_U64(mb.ol_flags) & _NOT_DIRECT) != _U64(0)) | (mb.data_off < 4) | (mb.data_len < 12):
        return False
    a = _buf_hva(mp, m) + _U64(mb.data_off)
    w0 = ld64(a)
    w1 = ld32(a + _U64(8))
    st64(a - _U64(4), w0)
    st32(a + _U64(4), w1)
    st16(a + _U64(8), bswap16(ETHER_TYPE_VLAN))
    st16(a + _U64(10), bswap16(mb.vlan_tci))
    mb.data_off = mb.data_off - 4
    mb.data_len = mb.data_len + 4
    mb.pkt_len = mb.pkt_len + 4
    mb.ol_flags = _U64(mb.ol_flags) & ~_TX_VLAN
    return True


# ---------------------------------------------------------------------------
# Rx
# ---------------------------------------------------------------------------


@kernel
def rx_refill_kernel(vr, ds, mp, lcore, hdr_len, rx_segs, kickfd, cnt, sg_gpa, sg_len, sg_wr):
    """Post fresh mbufs until the ring is full (``rx_segs`` mbufs per buffer chain); kick if needed.

    Returns the number of buffer chains posted.
    """
    tmp = stack_array_u32(SCRATCH)
    headroom = mp.info[I_HEADROOM]
    segs = np.int64(rx_segs)
    per = SCRATCH // segs
    posted = 0
    while True:
        k = drv_free_count(vr, ds) // segs
        if k <= 0:
            break
        if k > per:
            k = per
        if pktmbuf_alloc_bulk(mp, lcore, tmp, k * segs) != 0:
            cnt[Q_NOMBUF] += 1
            break
        bad = False
        for p in range(k):
            m = np.int64(tmp[p * segs])
            mb = mp.mbufs[m]
            room = np.int64(mb.buf_len) - headroom
            if segs == 1:
                r = drv_add1(vr, ds, _U64(m), _U64(mb.buf_iova) + _U64(headroom - hdr_len), room + hdr_len, True)
            else:
                for s in range(segs):
                    ms = np.int64(tmp[p * segs + s])
                    mbs = mp.mbufs[ms]
                    mbs.next = tmp[p * segs + s + 1] if s + 1 < segs else _NONE
                    if s == 0:
                        sg_gpa[s] = _U64(mbs.buf_iova) + _U64(headroom - hdr_len)
                        sg_len[s] = room + hdr_len
                    else:
                        sg_gpa[s] = _U64(mbs.buf_iova) + _U64(headroom)
                        sg_len[s] = np.int64(mbs.buf_len) - headroom
                    sg_wr[s] = 1
                mb.nb_segs = segs
                r = drv_add(vr, ds, _U64(m), sg_gpa, sg_len, sg_wr, segs)
            if r < 0:
                # cannot happen (room was counted); give back the rest and stop
                for q in range(p * segs, k * segs):
                    mp.mbufs[np.int64(tmp[q])].next = _NONE
                pktmbuf_free_bulk(mp, lcore, tmp[p * segs :], (k - p) * segs)
                bad = True
                break
            posted += 1
        if bad:
            break
    if posted > 0:
        if drv_kick_needed(vr, ds):
            _kick(kickfd, cnt)
    return posted


@inline_kernel
def _rx_drop(mp, lcore, m, cnt):
    pktmbuf_free(mp, lcore, m)
    cnt[Q_ERRORS] += 1


@kernel
def rx_burst_kernel(vr, ds, mp, lcore, out, n, hdr_len, mergeable, rx_segs, port, vlan_strip, kickfd, cnt, ck, ln,
                    sg_gpa, sg_len, sg_wr):
    """Receive up to ``n`` packets into ``out`` (mbuf head indices); refill the ring; returns the count.

    ``vlan_strip``: move 802.1Q tags into ``vlan_tci`` (RX_VLAN | RX_VLAN_STRIPPED).

    ``ck``/``ln`` are scratch arrays of at least the queue size (uint64 cookies,
    uint32 lengths), ``sg_*`` of at least ``rx_segs`` entries.
    """
    headroom = mp.info[I_HEADROOM]
    nb = 0
    nbytes = 0
    lim = min(np.int64(n), np.int64(out.shape[0]))
    # one harvest for the burst (one acquire of the used index); a mergeable
    # packet cut at the end of it takes its remaining buffers with a second one
    got = drv_get_used(vr, ds, ck, ln, lim)
    i = 0
    while i < got:
        m = np.int64(ck[i])
        total = np.int64(ln[i])
        i += 1
        mb = mp.mbufs[m]
        if total <= hdr_len:
            _rx_drop(mp, lcore, m, cnt)
            continue
        plen = total - hdr_len
        if mergeable:
            if total > np.int64(mb.buf_len) - headroom + hdr_len:
                _rx_drop(mp, lcore, m, cnt)  # longer than the buffer we posted: a lying device
                continue
            nbuf = np.int64(ld16(_buf_hva(mp, m) + _U64(headroom - hdr_len + 10)))
            mb.data_off = headroom
            mb.data_len = plen
            mb.next = _NONE
            mb.nb_segs = 1
            if nbuf > 1:
                need = nbuf - 1
                if need > ck.shape[0]:
                    _rx_drop(mp, lcore, m, cnt)
                    continue
                if got - i < need:
                    # the rest were published with the header: harvest them now (ck has
                    # room: no more buffers can be used than the ring holds)
                    got += drv_get_used(vr, ds, ck[got:], ln[got:], need - (got - i))
                take = min(need, got - i)
                prev = m
                bad_len = False
                for j in range(i, i + take):
                    s = np.int64(ck[j])
                    ms = mp.mbufs[s]
                    if np.int64(ln[j]) > np.int64(ms.buf_len) - headroom + hdr_len:
                        bad_len = True
                    ms.data_off = headroom - hdr_len
                    ms.data_len = ln[j]
                    ms.next = _NONE
                    mp.mbufs[prev].next = s
                    prev = s
                    plen += np.int64(ln[j])
                i += take
                mb.nb_segs = 1 + take
                if take < need or bad_len:
                    # the device published the header before its buffers: a broken device
                    _rx_drop(mp, lcore, m, cnt)
                    continue
        else:
            # a chain of rx_segs mbufs posted as one buffer; trim to what was written
            rem = plen
            seg = m
            prev = np.int64(-1)
            k = 0
            while seg != _NONE and rem > 0:
                ms = mp.mbufs[seg]
                room = np.int64(ms.buf_len) - headroom
                ms.data_off = headroom
                ms.data_len = rem if rem < room else room
                rem -= np.int64(ms.data_len)
                prev = seg
                seg = np.int64(ms.next)
                k += 1
            if seg != _NONE:
                mp.mbufs[prev].next = _NONE
                pktmbuf_free(mp, lcore, seg)
            mb.nb_segs = k
            if rem > 0:
                _rx_drop(mp, lcore, m, cnt)
                continue
        mb.pkt_len = plen
        mb.port = port
        mb.ol_flags = 0
        mb.packet_type = 0
        if vlan_strip:
            _vlan_strip(mp, m)
        out[nb] = m
        nb += 1
        nbytes += plen
    cnt[Q_PACKETS] += nb
    cnt[Q_BYTES] += nbytes
    rx_refill_kernel(vr, ds, mp, lcore, hdr_len, rx_segs, kickfd, cnt, sg_gpa, sg_len, sg_wr)
    return nb


# ---------------------------------------------------------------------------
# Tx
# ---------------------------------------------------------------------------


@kernel
def tx_reclaim_kernel(vr, ds, mp, lcore, ck, ln):
    """Free the mbufs of every completed Tx chain; returns how many chains."""
    total = 0
    while True:
        got = drv_get_used(vr, ds, ck, ln, ck.shape[0])
        if got == 0:
            break
        pktmbuf_free_bulk(mp, lcore, ck, got)
        total += got
    return total


@kernel
def tx_burst_kernel(vr, ds, mp, lcore, pkts, n, hdr_len, hdr_hva, hdr_iova, kickfd, cnt, ck, ln, sg_gpa, sg_len, sg_wr):
    """Send ``pkts[:n]`` (mbuf heads); returns how many were queued (the rest stay the caller's).

    Reclaims completed chains first.  ``hdr_hva``/``hdr_iova``: the queue's
    header area, 16 bytes per descriptor id.  ``sg_*`` bound the segments of
    one packet (a longer chain is an error: counted, freed, skipped).
    """
    tx_reclaim_kernel(vr, ds, mp, lcore, ck, ln)
    maxseg = sg_gpa.shape[0]
    sent = 0
    nbytes = 0
    i = 0
    while i < n:
        m = np.int64(pkts[i])
        mb = mp.mbufs[m]
        if (_U64(mb.ol_flags) & _TX_VLAN) != _U64(0):
            if not _vlan_insert(mp, m):
                pktmbuf_free(mp, lcore, m)  # DPDK drops it too (rte_vlan_insert failed)
                cnt[Q_ERRORS] += 1
                i += 1
                continue
        push = (
            (np.int64(mb.data_off) >= hdr_len)
            & (mb.refcnt == 1)
            & ((_U64(mb.ol_flags) & _NOT_DIRECT) == _U64(0))
        )
        k = 0
        if push:
            a = _buf_hva(mp, m) + _U64(mb.data_off) - _U64(hdr_len)
            _zero_hdr(a, hdr_len)
            sg_gpa[0] = _U64(mb.buf_iova) + _U64(mb.data_off) - _U64(hdr_len)
            sg_len[0] = np.int64(mb.data_len) + hdr_len
            sg_wr[0] = 0
            k = 1
            seg = np.int64(mb.next)
        else:
            slot = drv_next_id(vr, ds)
            _zero_hdr(hdr_hva + _U64(16 * slot), hdr_len)
            sg_gpa[0] = hdr_iova + _U64(16 * slot)
            sg_len[0] = hdr_len
            sg_wr[0] = 0
            k = 1
            seg = m
        too_long = False
        looping = False
        walked = 0
        while seg != _NONE:
            walked += 1
            if walked > MBUF_MAX_NB_SEGS:  # a looping chain (corrupt mbufs): never spin forever
                looping = True
                break
            ms = mp.mbufs[seg]
            if ms.data_len > 0:
                if k >= maxseg:
                    too_long = True
                    break
                sg_gpa[k] = _U64(ms.buf_iova) + _U64(ms.data_off)
                sg_len[k] = ms.data_len
                sg_wr[k] = 0
                k += 1
            seg = np.int64(ms.next)
        if too_long | looping:
            if not looping:  # a looping chain cannot be freed either: it is leaked, not walked again
                pktmbuf_free(mp, lcore, m)
            cnt[Q_ERRORS] += 1
            i += 1
            continue
        if k > drv_free_count(vr, ds):
            tx_reclaim_kernel(vr, ds, mp, lcore, ck, ln)
            if k > drv_free_count(vr, ds):
                break
        if k == 1:
            r = drv_add1(vr, ds, _U64(m), sg_gpa[0], sg_len[0], False)
        else:
            r = drv_add(vr, ds, _U64(m), sg_gpa, sg_len, sg_wr, k)
        if r < 0:
            break
        sent += 1
        nbytes += np.int64(mb.pkt_len)
        i += 1
    cnt[Q_PACKETS] += sent
    cnt[Q_BYTES] += nbytes
    cnt[Q_DROPS] += n - i
    if sent > 0:
        if drv_kick_needed(vr, ds):
            _kick(kickfd, cnt)
    return i
