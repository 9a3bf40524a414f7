"""The vhost data path: packets between mbufs and a guest's virtqueues (DPDK lib/vhost virtio_net.c).

Two kernels do the work, each one numba call per burst (no Python per packet):

* :func:`enqueue_burst` ``(q, mp, pkts, n) -> sent`` — rte_vhost_enqueue_burst:
  copies packets ``pkts[:n]`` (mbuf indices of pool ``mp``) into the guest's
  Rx buffers.  The caller keeps the mbufs (copy semantics: free them all
  after the call).  Returns how many of ``pkts[:n]`` (a prefix) went in; the
  rest did not fit and are counted in ``C_DROPS``.
* :func:`dequeue_burst` ``(q, mp, lcore, pkts, n) -> got`` — rte_vhost_dequeue_burst:
  copies up to ``n`` guest Tx packets into new mbufs of ``mp`` (allocated in
  bulk with ``lcore``'s cache) and stores their indices in ``pkts``.

``q`` is a :class:`VhostQueueCtx` (one per virtqueue, built by
:class:`VhostQueue`): both ring views (the unused one is a dummy, so every
queue context has the same numba type and one lcore loop can serve split and
packed queues), the device ring state, the region table, the chain scratch,
a config array and the counters.

Enqueue (guest Rx)
------------------
Per packet: reserve descriptor chains until their *writable* bytes hold
``pkt_len + hdr_len`` (mergeable: as many chains as needed, ``num_buffers``
= their count; otherwise exactly one chain).  Then write the virtio-net header
(:func:`~dataplane.vhost.net_hdr.mbuf_to_hdr` fills the offload fields) and
copy the mbuf segments across the chains' writable segments; one used entry
per chain with the bytes written into it.  Used entries are flushed once per
burst and the call eventfd is written only when the flush says the guest
wants an interrupt (EVENT_IDX ``used_event`` / NO_INTERRUPT flag / packed
event suppression) and a call fd is set — from numba, through a libc
``write`` intrinsic.

* A TSO request (``TX_TCP_SEG``) for a guest that did not negotiate
  GUEST_TSO4 (IPv4) / GUEST_TSO6 (IPv6) -- or one whose TCP header has CWR,
  for a guest without GUEST_ECN -- is done here in software: the packet
  is cut into ``tso_segsz`` frames, each written as a packet of its own with
  its headers rewritten (:func:`~dataplane.vhost.net_hdr.tso_frame_hdr`: IP
  length/id/checksum, TCP sequence and flags -- FIN/PSH on the last frame,
  CWR on the first only --, TCP checksum left to the guest with GUEST_CSUM,
  else completed). If the ring fills up after some of its
  frames went in, the packet counts as sent and its remaining frames as
  ``C_DROPS`` (a NIC doing TSO loses them the same way).
* Not enough buffers for a packet → the burst stops there (DPDK) and the
  chains reserved for it are given back to the ring ("unfetched": the ring
  indices move back; nothing was written).  Non-mergeable: a chain too small
  for the packet also stops the burst (DPDK; counted in ``C_OVERSIZE``).
* A bad chain (``status != 0``: unmapped address, loop, bad indirect table,
  ...) or one without writable bytes is completed with length 0 and counted
  in ``C_ERRORS``; at the start of a packet it is skipped, in the middle of a
  mergeable packet it is one of its ``num_buffers`` (with 0 bytes).

Dequeue (guest Tx)
------------------
Fetch up to ``n`` chains; per chain the readable bytes after the
``hdr_len``-byte header (which may sit in its own descriptor, share the first
one with data, or even straddle descriptors: ANY_LAYOUT) need
``ceil(len / data_room)`` mbufs (multi-segment mbufs for big packets).  All
mbufs of the burst are allocated with ONE bulk get; if the pool cannot give
them, the burst is halved until it can (the chains not taken go back to the
ring: nothing is lost; ``C_NO_MBUF`` counts the bursts cut short).  Offloads from
the header (only when a host offload feature is negotiated, as DPDK):
:func:`~dataplane.vhost.net_hdr.hdr_to_mbuf` (legacy Tx flags by default).
Used entries have length 0; with IN_ORDER one used entry completes the burst.
Bad chains and chains with no data after the header: completed, ``C_ERRORS``.

RARP: ``q.rarp`` is an ``int64[2]`` array shared by the queues of a device:
``[0]`` the SEND_RARP flag, ``[1]`` the MAC (48 bits, first byte highest).
The first dequeue that sees the flag clears it (compare-and-swap) and returns a
broadcast RARP frame (ethertype 0x8035, 60 bytes) from that MAC as its first
packet; if no mbuf is available the flag is set again.

Threading: one lcore owns a queue's context (no lock, like DPDK without
the vq access lock); the control plane may write ``cfg[CFG_CALLFD]`` /
``cfg[CFG_ENABLED]``, the RARP array and the dirty-log flag while it runs.
Not done here: IOTLB, async copy.

Dirty logging (:mod:`~dataplane.vhost.dirty_log`): each burst reads the
queue's log flag once; when on, every segment written (header and payload,
any chain shape) and the used-ring writes are marked in the log after the
burst's writes, before it returns.

Counters: ``q.counters``, an ``int64`` array with the ``C_*`` slots below
(:data:`COUNTER_NAMES`); size buckets and unicast/multicast/broadcast follow
DPDK's vhost PMD xstats (RFC 2819 buckets: 1024-1518 and 1519-max, by ``pkt_len``).  Enqueue
counts what went into the guest, dequeue what came out (RARP included).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from dataplane.memory.mbuf import MBUF_NEXT_NONE, MBUF_PORT_INVALID, RTE_MBUF_F_TX_IPV4, RTE_MBUF_F_TX_TCP_SEG
from dataplane.memory.mempool import I_BUF_LEN, I_HEADROOM, pktmbuf_alloc_bulk, seg_addr
from dataplane.rings.atomics import cas, load_relaxed, store_release
from dataplane.rings.jit import always_inline, eventfd_signal, inline_kernel, kernel
from dataplane.rings.packed import (
    packed_dev_push_used_inorder,
)
from dataplane.rings.split import (
    split_dev_push_used_inorder,
)
from dataplane.rings.virtqueue import (
    FEAT_EVENT_IDX,
    FEAT_IN_ORDER,
    FEAT_INDIRECT,
    FEAT_READ_ONLY,
    STATE_AVAIL_WRAP,
    STATE_BROKEN,
    STATE_CHAINS,
    STATE_ERR_BASE,
    STATE_ERRORS,
    STATE_LAST_AVAIL,
    STATE_SIZE,
    make_chains,
)
from dataplane.net.ether import mac_to_int
from dataplane.rings.chain_copy import chain_prefetch
from dataplane.rings.mem import copy_bytes, ld8, ld16, ld32, ld64, st8, st16, st32, st64
from dataplane.vhost.dirty_log import (
    log_burst_start,
    log_enabled,
    log_notify_write,
    log_sync,
    log_used,
    log_write_hva,
    no_log,
)
from dataplane.vhost.inflight import Q_ON as INFLIGHT_ON
from dataplane.vhost.inflight import (
    inflight_pushed,
    inflight_recover,
    inflight_unfetched,
    no_inflight,
    signal_if_recovered,
)
from dataplane.vhost.dev_ring import (
    QUEUE_CTX_FIELDS,
    queue_rings,
    ring_enable_notify,
    ring_fetch,
    ring_flush_used,
    ring_get_base,
    ring_push_used,
)
from dataplane.vhost.net_hdr import (
    _TX_HDR_FLAGS,
    F_EVENT_IDX,
    F_GUEST_CSUM,
    F_GUEST_ECN,
    F_GUEST_TSO4,
    F_GUEST_TSO6,
    F_HOST_ECN,
    F_HOST_OFFLOAD,
    F_IN_ORDER,
    F_INDIRECT_DESC,
    F_MRG_RXBUF,
    F_RING_PACKED,
    hdr_to_mbuf,
    mbuf_to_hdr,
    net_hdr_len,
    tso_cwr,
    tso_first,
    tso_frame_hdr,
    tso_frames,
)

__all__ = [
    "VhostQueueCtx",
    "VhostQueue",
    "enqueue_burst",
    "dequeue_burst",
    "make_rarp",
    "ring_feat_mask",
    "COUNTER_NAMES",
    "N_COUNTERS",
    "CFG_SLOTS",
    "RARP_FLAG",
    "RARP_MAC",
]

# -- config slots (int64 array; the control plane may change CALLFD / ENABLED live) ---
CFG_PACKED = 0  # 1: packed ring, 0: split
CFG_MRG = 1  # MRG_RXBUF negotiated
CFG_HDR_LEN = 2  # virtio-net header length, 10 or 12
CFG_CALLFD = 3  # call eventfd, -1 = none (polling guest)
CFG_FEATURES = 4  # negotiated virtio feature bits
CFG_LEGACY_OL = 5  # dequeue: legacy (Tx) offload flags, else compliant (Rx) flags
CFG_IN_ORDER = 6  # IN_ORDER negotiated
CFG_PORT = 7  # mbuf.port of dequeued packets
CFG_ENABLED = 8  # 0: the bursts do nothing (ring disabled/stopped)
CFG_HOST_OFFLOAD = 9  # the CSUM / HOST_TSO4/6 / HOST_ECN bits negotiated (non-zero: honour Tx headers)
CFG_GUEST_CSUM = 10  # GUEST_CSUM negotiated: the guest accepts NEEDS_CSUM
CFG_GUEST_TSO = 11  # the GUEST_TSO4 / GUEST_TSO6 / GUEST_ECN bits negotiated (else TSO requests are cut here)
CFG_SLOTS = 16

# -- counter slots (int64 array) --------------------------------------------------
COUNTER_NAMES = (
    "packets",  # packets moved (enqueued into the guest / dequeued from it)
    "bytes",  # their bytes (pkt_len, no virtio-net header)
    "drops",  # enqueue: packets not enqueued (no guest buffers / ring disabled)
    "errors",  # bad chains completed with length 0 (hostile/buggy guest)
    "no_mbuf",  # dequeue: bursts cut short because the pool could not give the mbufs (packets stay in the ring)
    "oversize",  # enqueue: packet larger than a non-mergeable buffer; dequeue: larger than the mbuf scratch
    "interrupts",  # call eventfd notifications the guest asked for
    "rarp",  # RARP frames injected
    "undersize_packets",  # < 64 B
    "size_64_packets",
    "size_65_to_127_packets",
    "size_128_to_255_packets",
    "size_256_to_511_packets",
    "size_512_to_1023_packets",
    "size_1024_to_1518_packets",
    "size_1519_to_max_packets",
    "unicast_packets",
    "multicast_packets",
    "broadcast_packets",
)
N_COUNTERS = len(COUNTER_NAMES)
(
    C_PACKETS,
    C_BYTES,
    C_DROPS,
    C_ERRORS,
    C_NO_MBUF,
    C_OVERSIZE,
    C_INTERRUPTS,
    C_RARP,
    C_UNDERSIZE,
    C_SIZE_64,
    C_SIZE_65_127,
    C_SIZE_128_255,
    C_SIZE_256_511,
    C_SIZE_512_1023,
    C_SIZE_1024_1518,
    C_SIZE_1519_MAX,
    C_UNICAST,
    C_MULTICAST,
    C_BROADCAST,
) = range(N_COUNTERS)
SIZE_BUCKET_MAX = 1518  # 1024_to_1518 / 1519_to_max

RARP_FLAG = 0  # q.rarp[RARP_FLAG]: SEND_RARP pending
RARP_MAC = 1  # q.rarp[RARP_MAC]: MAC, 48 bits, first byte in bits 47..40
RARP_FRAME_LEN = 60  # RTE_ETHER_MIN_LEN - CRC

VhostQueueCtx = namedtuple(
    "VhostQueueCtx",
    [
        *QUEUE_CTX_FIELDS,  # cfg: int64[CFG_SLOTS], counters: int64[N_COUNTERS]
        "mbuf_scratch",  # uint32[k]: mbufs of one dequeue burst
        "chain_scratch",  # int64[2 * max_chains]: per-chain sizes of one dequeue burst
        "rarp",  # int64[2]: SEND_RARP flag and MAC (shared by a device's queues)
    ],
)

_kernel = kernel
_inline = inline_kernel
_U64 = np.uint64
_NONE = MBUF_NEXT_NONE
_TSO = _U64(RTE_MBUF_F_TX_TCP_SEG)
_IPV4 = _U64(RTE_MBUF_F_TX_IPV4)


# =============================================================================
# ring helpers (split / packed chosen at run time from cfg)
# =============================================================================


@_inline
def _fetch(q, want):
    return ring_fetch(q.cfg[CFG_PACKED] != 0, q.split, q.packed, q.state, q.regions, q.chains, want, q.inflight)


@_inline
def _push(q, head, length, ndesc):
    ring_push_used(q.cfg[CFG_PACKED] != 0, q.split, q.packed, q.state, head, length, ndesc, q.inflight)


@_kernel
def _unfetch(q, frm, nc):
    """Give chains ``[frm, nc)`` of the scratch back to the ring (they were fetched, not used).

    Only the device's private indices move back; the per-code error counts of
    the ring state are taken back too, so a bad chain is counted once when
    fetched again.
    """
    if frm >= nc:
        return
    st = q.state
    ch = q.chains
    if q.inflight.q[INFLIGHT_ON] != 0 and inflight_unfetched(q.cfg[CFG_PACKED] != 0, ch, frm, nc, q.inflight):
        st[STATE_CHAINS] -= nc - frm  # resubmitted chains: back on the resubmit list, the ring untouched
        return
    slots = np.int64(0)
    for k in range(frm, nc):
        code = np.int64(ch.status[k])
        if code != 0:
            st[STATE_ERRORS] -= 1
            st[STATE_ERR_BASE + code] -= 1
        slots += np.int64(ch.ndesc[k])
    st[STATE_CHAINS] -= nc - frm
    if q.cfg[CFG_PACKED] != 0:
        num = st[STATE_SIZE]
        idx = st[STATE_LAST_AVAIL] - slots
        while idx < 0:
            idx += num
            st[STATE_AVAIL_WRAP] ^= 1
        st[STATE_LAST_AVAIL] = idx
    else:
        st[STATE_LAST_AVAIL] = (st[STATE_LAST_AVAIL] - (nc - frm)) & 0xFFFF


@_kernel
def _flush(q, logging):
    """Publish the used entries (their pages logged when ``logging``); signal the call fd
    when the guest wants it.  Returns that decision."""
    packed = q.cfg[CFG_PACKED] != 0
    if logging:
        log_used(q.log, packed, q.state)
    need = ring_flush_used(packed, q.split, q.packed, q.state, q.inflight)
    if logging:
        log_sync(q.log)  # after every write of the burst: a page is marked once written
    if need:
        q.counters[C_INTERRUPTS] += 1
        fd = q.cfg[CFG_CALLFD]
        if fd >= 0:
            eventfd_signal(fd)
    return need


# =============================================================================
# counters
# =============================================================================


@_inline
def _count_packet(cnt, addr, plen, dlen):
    cnt[C_PACKETS] += 1
    cnt[C_BYTES] += plen
    if plen < 64:
        cnt[C_UNDERSIZE] += 1
    elif plen == 64:
        cnt[C_SIZE_64] += 1
    elif plen < 128:
        cnt[C_SIZE_65_127] += 1
    elif plen < 256:
        cnt[C_SIZE_128_255] += 1
    elif plen < 512:
        cnt[C_SIZE_256_511] += 1
    elif plen < 1024:
        cnt[C_SIZE_512_1023] += 1
    elif plen <= SIZE_BUCKET_MAX:
        cnt[C_SIZE_1024_1518] += 1
    else:
        cnt[C_SIZE_1519_MAX] += 1
    if dlen >= 6 and (ld8(addr) & 1) != 0:
        if ld32(addr) == 0xFFFFFFFF and ld16(addr + _U64(4)) == 0xFFFF:
            cnt[C_BROADCAST] += 1
        else:
            cnt[C_MULTICAST] += 1
    else:
        cnt[C_UNICAST] += 1


# =============================================================================
# enqueue (mbufs -> guest Rx)
# =============================================================================


@_inline
def _writable_len(ch, k):
    """Writable bytes of chain ``k`` (0 for a bad chain)."""
    if ch.status[k] != 0:
        return np.int64(0)
    s0 = np.int64(ch.seg_start[k])
    w = np.int64(0)
    for s in range(s0, s0 + np.int64(ch.seg_count[k])):
        if ch.seg_write[s] != 0:
            w += np.int64(ch.seg_len[s])
    return w


@_inline
def _hdr_byte(lo, hi, i):
    if i < 8:
        return (lo >> _U64(8 * i)) & _U64(0xFF)
    return (hi >> _U64(8 * (i - 8))) & _U64(0xFF)


@_kernel
def _copy_to_chains(q, mp, m, k0, k1, lo, hi, hlen, plen, keep, gap, logging):
    """Header then ``plen`` bytes of packet ``m`` into the writable segments of chains
    ``[k0, k1)``; pushes their used entries. After the first ``keep`` bytes, ``gap``
    packet bytes are skipped (a software-TSO frame: the headers, then its payload).
    With ``logging`` the pages of every segment written are logged."""
    always_inline()
    ch = q.chains
    cnt = q.counters
    hoff = np.int64(0)
    left = np.int64(plen)
    keep = np.int64(keep)
    gap = np.int64(gap)
    mseg = np.int64(m)
    src = seg_addr(mp, mseg)
    sleft = np.int64(mp.mbufs[mseg].data_len)
    for k in range(k0, k1):
        head = np.int64(ch.head[k])
        nd = np.int64(ch.ndesc[k])
        w = np.int64(0)
        if ch.status[k] == 0:
            s0 = np.int64(ch.seg_start[k])
            for s in range(s0, s0 + np.int64(ch.seg_count[k])):
                if ch.seg_write[s] == 0:
                    continue
                if hoff >= hlen and left == 0:
                    break
                a = _U64(ch.seg_addr[s])
                slen = np.int64(ch.seg_len[s])
                pos = np.int64(0)
                if hoff < hlen:
                    if hoff == 0 and slen >= hlen:
                        st64(a, lo)
                        if hlen == 12:
                            st32(a + _U64(8), hi)
                        else:
                            st16(a + _U64(8), hi)
                        pos = hlen
                        hoff = hlen
                    else:
                        while hoff < hlen and pos < slen:
                            st8(a + _U64(pos), _hdr_byte(lo, hi, hoff))
                            pos += 1
                            hoff += 1
                while pos < slen and left > 0:
                    if sleft == 0:
                        mseg = np.int64(mp.mbufs[mseg].next)
                        if mseg == _NONE:
                            left = 0  # corrupt mbuf: pkt_len above its segments
                            break
                        src = seg_addr(mp, mseg)
                        sleft = np.int64(mp.mbufs[mseg].data_len)
                        continue
                    if keep == 0 and gap > 0:
                        x = min(sleft, gap)
                        src += _U64(x)
                        sleft -= x
                        gap -= x
                        continue
                    x = min(slen - pos, sleft, left)
                    if gap > 0:
                        x = min(x, keep)
                        keep -= x
                    copy_bytes(a + _U64(pos), src, x)
                    pos += x
                    src += _U64(x)
                    sleft -= x
                    left -= x
                if logging:
                    log_write_hva(q.log, q.regions, a, pos)
                w += pos
        if w == 0:
            cnt[C_ERRORS] += 1  # a bad / unwritable chain carried inside a mergeable packet
        _push(q, head, w, nd)


@_inline
def _reserve(q, c, nc, need, want, mrg):
    """Chains from the scratch (``c`` of ``nc`` fetched) with room for ``need`` bytes.

    Returns ``(ok, start, c, nc, nb)``: the packet goes to chains ``[start, c)``,
    ``nb`` buffers. When the scratch runs out it gives its unused chains back and
    fetches more (``want`` the first time), at most twice.
    """
    ch = q.chains
    cnt = q.counters
    cap = np.int64(ch.head.shape[0])
    start = c
    room = np.int64(0)
    nb = np.int64(0)
    tries = 0
    while True:
        if c == nc:
            if tries >= 2:
                break
            _unfetch(q, start, nc)
            nc = _fetch(q, want if (nb == 0 and tries == 0) else cap)
            chain_prefetch(ch, 0, nc, True)
            c = 0
            start = 0
            room = 0
            nb = 0
            tries += 1
            if nc == 0:
                break
            continue
        wl = _writable_len(ch, c)
        if wl == 0:
            if nb == 0:
                # a bad chain where a packet would start: complete it empty, go on
                _push(q, np.int64(ch.head[c]), 0, np.int64(ch.ndesc[c]))
                cnt[C_ERRORS] += 1
                c += 1
                start = c
                continue
            nb += 1  # mergeable: carried as an empty buffer of this packet
            c += 1
            continue
        room += wl
        nb += 1
        c += 1
        if room >= need:
            return True, start, c, nc, nb
        if not mrg:
            cnt[C_OVERSIZE] += 1
            break
    return False, start, c, nc, nb


@_kernel
def enqueue_burst(q, mp, pkts, n):
    """Copy packets ``pkts[:n]`` (mbufs of ``mp``) into the guest's Rx buffers; returns how many went in.

    The caller keeps (and frees) every mbuf.  The packets not enqueued are
    ``pkts[sent:n]``; they are counted in ``C_DROPS``.
    """
    cfg = q.cfg
    cnt = q.counters
    ch = q.chains
    logging = log_enabled(q.log)  # read once per burst (LOG_ALL may change while running)
    n = min(np.int64(n), np.int64(pkts.shape[0]))
    if n <= 0:
        return np.int64(0)
    if cfg[CFG_ENABLED] == 0 or q.state[STATE_BROKEN] != 0:
        cnt[C_DROPS] += n
        return np.int64(0)
    hlen = cfg[CFG_HDR_LEN]
    mrg = cfg[CFG_MRG] != 0
    if logging:
        log_burst_start(q.log, q.state)
    guest_csum = cfg[CFG_GUEST_CSUM] != 0
    guest_tso = cfg[CFG_GUEST_TSO]
    cap = np.int64(ch.head.shape[0])
    nc = np.int64(0)  # chains in the scratch
    c = np.int64(0)  # next unreserved chain
    sent = np.int64(0)
    for i in range(n):
        m = np.int64(pkts[i])
        plen = np.int64(mp.mbufs[m].pkt_len)
        ol = _U64(mp.mbufs[m].ol_flags)
        nfr = np.int64(0)
        if (ol & _TSO) != _U64(0):
            want = F_GUEST_TSO4 if (ol & _IPV4) != _U64(0) else F_GUEST_TSO6
            if (guest_tso & want) == 0 or ((guest_tso & F_GUEST_ECN) == 0 and tso_cwr(mp, m)):
                nfr = tso_frames(mp, m)
        if nfr > 0:
            # the guest cannot take the TSO request: cut the packet into frames here
            mb = mp.mbufs[m]
            hl = np.int64(mb.l2_len) + np.int64(mb.l3_len) + np.int64(mb.l4_len)
            mss = np.int64(mb.tso_segsz)
            seq0, id0, flags0 = tso_first(mp, m)
            f = np.int64(0)
            while f < nfr:
                sl = min(mss, plen - hl - f * mss)
                ok, start, c, nc, nb = _reserve(q, c, nc, hl + sl + hlen, min(cap, nfr - f + n - i - 1), mrg)
                if not ok:
                    c = start
                    break
                lo, hi = tso_frame_hdr(mp, m, f, nfr, seq0, id0, flags0, guest_csum)
                hi |= _U64(nb) << _U64(16)
                _copy_to_chains(q, mp, m, start, c, lo, hi, hlen, hl + sl, hl, f * mss, logging)
                _count_packet(cnt, seg_addr(mp, m), hl + sl, np.int64(mb.data_len))
                f += 1
            if f == 0:
                break
            sent += 1
            if f < nfr:
                cnt[C_DROPS] += nfr - f  # the ring filled up inside the packet: the rest is lost
                break
            continue
        ok, start, c, nc, nb = _reserve(q, c, nc, plen + hlen, min(cap, n - i), mrg)
        if not ok:
            c = start
            break
        lo = _U64(0)
        hi = _U64(0)
        if (ol & _TX_HDR_FLAGS) != _U64(0):
            lo, hi = mbuf_to_hdr(mp, m, guest_csum, (guest_tso & F_GUEST_ECN) != 0)
        hi |= _U64(nb) << _U64(16)
        _copy_to_chains(q, mp, m, start, c, lo, hi, hlen, plen, plen, 0, logging)
        _count_packet(cnt, seg_addr(mp, m), plen, np.int64(mp.mbufs[m].data_len))
        sent += 1
    _unfetch(q, c, nc)
    _flush(q, logging)
    cnt[C_DROPS] += n - sent
    return sent


# =============================================================================
# dequeue (guest Tx -> mbufs)
# =============================================================================


@_inline
def _readable_len(ch, k):
    s0 = np.int64(ch.seg_start[k])
    r = np.int64(0)
    for s in range(s0, s0 + np.int64(ch.seg_count[k])):
        if ch.seg_write[s] != 0:
            break
        r += np.int64(ch.seg_len[s])
    return r


@_kernel
def _copy_from_chain(q, mp, k, ms, mi, nm, hlen, room, rl, port):
    """Chain ``k`` (readable bytes ``rl``) into the ``nm`` mbufs ``ms[mi:mi+nm]``.

    Returns (head mbuf, header lo, header hi).
    """
    always_inline()
    ch = q.chains
    s = np.int64(ch.seg_start[k])
    src = _U64(ch.seg_addr[s])
    sleft = np.int64(ch.seg_len[s])
    # -- header (own descriptor, shared with data, or straddling descriptors)
    if sleft >= hlen:
        lo = ld64(src)
        if hlen == 12:
            hi = _U64(ld32(src + _U64(8)))
        else:
            hi = _U64(ld16(src + _U64(8)))
        src += _U64(hlen)
        sleft -= hlen
    else:
        lo = _U64(0)
        hi = _U64(0)
        got = np.int64(0)
        while got < hlen:
            if sleft == 0:
                s += 1
                src = _U64(ch.seg_addr[s])
                sleft = np.int64(ch.seg_len[s])
                continue
            b = _U64(ld8(src))
            if got < 8:
                lo |= b << _U64(8 * got)
            else:
                hi |= b << _U64(8 * (got - 8))
            got += 1
            src += _U64(1)
            sleft -= 1
    # -- data
    total = rl - hlen
    left = total
    j = np.int64(0)
    head = np.int64(ms[mi])
    cur = head
    dst = seg_addr(mp, cur)
    droom = room
    while left > 0:
        if sleft == 0:
            s += 1
            src = _U64(ch.seg_addr[s])
            sleft = np.int64(ch.seg_len[s])
            continue
        if droom == 0:
            mp.mbufs[cur].data_len = room
            j += 1
            nxt = np.int64(ms[mi + j])
            mp.mbufs[cur].next = nxt
            cur = nxt
            dst = seg_addr(mp, cur)
            droom = room
        x = min(sleft, droom, left)
        copy_bytes(dst, src, x)
        dst += _U64(x)
        src += _U64(x)
        sleft -= x
        droom -= x
        left -= x
    mp.mbufs[cur].data_len = room - droom
    hm = mp.mbufs[head]
    hm.pkt_len = total
    hm.nb_segs = nm
    hm.port = port
    return head, lo, hi


@_kernel
def _put_mac(a, mac):
    for b in range(6):
        st8(a + _U64(b), (np.int64(mac) >> (40 - 8 * b)) & 0xFF)


@_kernel
def _build_rarp(mp, m, mac, port):
    """A broadcast RARP request from ``mac`` in mbuf ``m`` (DPDK make_rarp_packet)."""
    a = seg_addr(mp, m)
    for j in range(7):
        st64(a + _U64(8 * j), 0)
    st32(a + _U64(56), 0)
    st32(a, 0xFFFFFFFF)
    st16(a + _U64(4), 0xFFFF)
    _put_mac(a + _U64(6), mac)
    st16(a + _U64(12), 0x3580)  # 0x8035, big endian
    st16(a + _U64(14), 0x0100)  # hardware type 1 (Ethernet)
    st16(a + _U64(16), 0x0008)  # protocol 0x0800
    st8(a + _U64(18), 6)
    st8(a + _U64(19), 4)
    st16(a + _U64(20), 0x0300)  # opcode 3: reverse request
    _put_mac(a + _U64(22), mac)  # sender hardware address
    _put_mac(a + _U64(32), mac)  # target hardware address
    mb = mp.mbufs[m]
    mb.data_len = RARP_FRAME_LEN
    mb.pkt_len = RARP_FRAME_LEN
    mb.port = port


@_kernel
def dequeue_burst(q, mp, lcore, pkts, n):
    """Up to ``n`` guest Tx packets into new mbufs of ``mp``; their indices in ``pkts``.  Returns the count."""
    cfg = q.cfg
    cnt = q.counters
    ch = q.chains
    sc = q.chain_scratch
    ms = q.mbuf_scratch
    logging = log_enabled(q.log)  # read once per burst (LOG_ALL may change while running)
    n = min(np.int64(n), np.int64(pkts.shape[0]), np.int64(ch.head.shape[0]), np.int64(sc.shape[0] // 2))
    if n <= 0 or cfg[CFG_ENABLED] == 0:
        return np.int64(0)
    hlen = cfg[CFG_HDR_LEN]
    room = mp.info[I_BUF_LEN] - mp.info[I_HEADROOM]
    port = cfg[CFG_PORT]
    mcap = np.int64(ms.shape[0])
    rarp = np.int64(0)
    if load_relaxed(q.rarp, RARP_FLAG) != 0:
        if cas(q.rarp, RARP_FLAG, 1, 0):
            rarp = 1
    if logging:
        log_burst_start(q.log, q.state)
    nf = np.int64(0)
    if n > rarp:
        nf = _fetch(q, n - rarp)
        chain_prefetch(ch, 0, nf, False)
    # -- sizes: mbufs per chain (-1: complete it empty)
    total = rarp
    k = np.int64(0)
    while k < nf:
        need = np.int64(-1)
        rl = np.int64(0)
        if ch.status[k] == 0:
            rl = _readable_len(ch, k)
            if rl > hlen:
                need = (rl - hlen + room - 1) // room
                if need > mcap:
                    need = -1
                    cnt[C_OVERSIZE] += 1
        if need > 0 and total + need > mcap:
            break  # not in this burst
        sc[2 * k] = rl
        sc[2 * k + 1] = need
        if need > 0:
            total += need
        k += 1
    _unfetch(q, k, nf)
    nf = k
    # -- one bulk allocation; halve the burst while the pool cannot serve it
    short = False
    while total > 0:
        if pktmbuf_alloc_bulk(mp, lcore, ms, total) == 0:
            break
        if not short:
            cnt[C_NO_MBUF] += 1
            short = True
        if nf == 0:
            if rarp:
                store_release(q.rarp, RARP_FLAG, 1)  # try again next time
                rarp = 0
            total = 0
            break
        keep = nf // 2
        _unfetch(q, keep, nf)
        nf = keep
        total = rarp
        for kk in range(nf):
            if sc[2 * kk + 1] > 0:
                total += sc[2 * kk + 1]
    out = np.int64(0)
    mi = np.int64(0)
    if rarp:
        m0 = np.int64(ms[0])
        _build_rarp(mp, m0, q.rarp[RARP_MAC], port)
        pkts[0] = m0
        out = 1
        mi = 1
        cnt[C_RARP] += 1
        _count_packet(cnt, seg_addr(mp, m0), RARP_FRAME_LEN, RARP_FRAME_LEN)
    if nf == 0:
        return out
    legacy = cfg[CFG_LEGACY_OL] != 0
    offload = cfg[CFG_HOST_OFFLOAD] != 0
    host_ecn = (cfg[CFG_HOST_OFFLOAD] & F_HOST_ECN) != 0
    inorder = cfg[CFG_IN_ORDER] != 0
    packed = cfg[CFG_PACKED] != 0
    for k in range(nf):
        need = sc[2 * k + 1]
        if need < 0:
            cnt[C_ERRORS] += 1
        else:
            m, lo, hi = _copy_from_chain(q, mp, k, ms, mi, need, hlen, room, sc[2 * k], port)
            mi += need
            if offload and (lo & _U64(0xFFFF)) != _U64(0):
                hdr_to_mbuf(mp, m, lo, hi, legacy, host_ecn)
            pkts[out] = m
            out += 1
            _count_packet(cnt, seg_addr(mp, m), np.int64(mp.mbufs[m].pkt_len), np.int64(mp.mbufs[m].data_len))
        if not inorder:
            _push(q, np.int64(ch.head[k]), 0, np.int64(ch.ndesc[k]))
    if inorder:
        # one used entry (the last buffer's id) completes the whole burst
        if q.inflight.q[INFLIGHT_ON] != 0:
            for k in range(nf):
                inflight_pushed(packed, np.int64(ch.head[k]), q.inflight)
        if packed:
            slots = np.int64(0)
            for k in range(nf):
                slots += np.int64(ch.ndesc[k])
            packed_dev_push_used_inorder(q.packed, q.state, np.int64(ch.head[nf - 1]), 0, slots)
        else:
            split_dev_push_used_inorder(q.split, q.state, np.int64(ch.head[nf - 1]), 0, nf)
    _flush(q, logging)
    return out


# =============================================================================
# plain-Python side
# =============================================================================


def ring_feat_mask(features: int) -> int:
    """The rings' compact ``FEAT_*`` mask from virtio feature bits."""
    f = int(features)
    m = 0
    if f & F_EVENT_IDX:
        m |= FEAT_EVENT_IDX
    if f & F_IN_ORDER:
        m |= FEAT_IN_ORDER
    if f & F_INDIRECT_DESC:
        m |= FEAT_INDIRECT
    return m


def make_rarp(mac=None) -> np.ndarray:
    """The SEND_RARP array a device's queues share: ``[flag, mac]``."""
    a = np.zeros(2, np.int64)
    if mac is not None:
        a[RARP_MAC] = mac_to_int(mac)
    return a




class VhostQueue:
    """One virtqueue of a vhost-user net device, ready for :func:`enqueue_burst` / :func:`dequeue_burst`.

    ``desc``, ``avail`` and ``used`` are the ring areas' HOST addresses
    (translated from SET_VRING_ADDR; packed: descriptor ring, driver area,
    device area), ``size`` the queue size, ``features`` the negotiated
    virtio feature bits, ``last_avail_idx`` the SET_VRING_BASE value (packed:
    bit 15 = wrap counter; ``last_used_idx`` likewise, default = avail),
    ``regions`` the region table, ``callfd`` the call eventfd (-1: none).
    ``rarp`` is the device's shared SEND_RARP array (:func:`make_rarp`).
    ``read_only``: a queue the device only reads (net Tx, dequeue only):
    descriptor WRITE flags are ignored, as DPDK's vhost does.
    ``log``: the queue's :class:`~dataplane.vhost.dirty_log.DirtyLog` (default: never logs).
    ``inflight``: the queue's :class:`~dataplane.vhost.inflight.Inflight` (default: not tracked);
    a tracked queue recovers from its region here (positions, chains to resubmit).
    ``state`` / ``counters`` may be passed in (e.g. shared memory) and are
    initialised here.  ``keepalive`` holds whatever owns the mappings.

    ``ctx`` is the :class:`VhostQueueCtx` to give the kernels.
    """

    def __init__(
        self,
        desc: int,
        avail: int,
        used: int,
        size: int,
        *,
        regions: np.ndarray,
        packed: bool | None = None,
        features: int = 0,
        last_avail_idx: int | None = None,
        last_used_idx: int | None = None,
        callfd: int = -1,
        rarp: np.ndarray | None = None,
        legacy_ol_flags: bool = True,
        port: int = MBUF_PORT_INVALID,
        max_chains: int = 256,
        max_segs: int = 4096,
        mbuf_scratch: int = 2048,
        state: np.ndarray | None = None,
        counters: np.ndarray | None = None,
        enabled: bool = True,
        read_only: bool = False,
        log=None,
        inflight=None,
        keepalive=None,
    ):
        features = int(features)
        if packed is None:
            packed = bool(features & F_RING_PACKED)
        self.packed = bool(packed)
        self.size = int(size)
        self.features = features
        self.keepalive = keepalive
        feat = ring_feat_mask(features) | (FEAT_READ_ONLY if read_only else 0)
        vr_split, vr_packed, state = queue_rings(desc, avail, used, self.size, packed=self.packed, feat=feat,
                                                 last_avail_idx=last_avail_idx, last_used_idx=last_used_idx,
                                                 state=state)
        cfg = np.zeros(CFG_SLOTS, np.int64)
        cfg[CFG_PACKED] = int(self.packed)
        cfg[CFG_MRG] = int(bool(features & F_MRG_RXBUF))
        cfg[CFG_HDR_LEN] = net_hdr_len(features | (F_RING_PACKED if self.packed else 0))
        cfg[CFG_CALLFD] = int(callfd)
        cfg[CFG_FEATURES] = features & 0x7FFFFFFFFFFFFFFF
        cfg[CFG_LEGACY_OL] = int(bool(legacy_ol_flags))
        cfg[CFG_IN_ORDER] = int(bool(features & F_IN_ORDER))
        cfg[CFG_PORT] = int(port)
        cfg[CFG_ENABLED] = int(bool(enabled))
        cfg[CFG_HOST_OFFLOAD] = features & F_HOST_OFFLOAD
        cfg[CFG_GUEST_CSUM] = int(bool(features & F_GUEST_CSUM))
        cfg[CFG_GUEST_TSO] = features & (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN)
        if counters is None:
            counters = np.zeros(N_COUNTERS, np.int64)
        elif counters.dtype != np.int64 or counters.shape[0] < N_COUNTERS:
            raise ValueError(f"counters must be int64[{N_COUNTERS}]")
        self.ctx = VhostQueueCtx(
            split=vr_split,
            packed=vr_packed,
            state=state,
            regions=np.ascontiguousarray(regions, dtype=np.uint64),
            chains=make_chains(max_chains, max_segs),
            cfg=cfg,
            counters=counters,
            log=no_log() if log is None else log,
            inflight=no_inflight() if inflight is None else inflight,
            mbuf_scratch=np.zeros(mbuf_scratch, np.uint32),
            chain_scratch=np.zeros(2 * max_chains, np.int64),
            rarp=make_rarp() if rarp is None else rarp,
        )
        self.resubmit = inflight_recover(self.ctx.inflight, self.packed, vr_split, vr_packed, state, port=int(port))
        signal_if_recovered(self.ctx.inflight, int(callfd))

    # -- bursts (from Python: one numba call each) ------------------------------
    def enqueue(self, mp, pkts, n: int | None = None) -> int:
        pkts = np.ascontiguousarray(pkts, dtype=np.uint32)
        return int(enqueue_burst(self.ctx, _arrays(mp), pkts, len(pkts) if n is None else int(n)))

    def dequeue(self, mp, n: int = 32, lcore: int = -1, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.zeros(n, np.uint32)
        got = int(dequeue_burst(self.ctx, _arrays(mp), int(lcore), out, int(n)))
        return out[:got]

    # -- control ---------------------------------------------------------------
    @property
    def cfg(self) -> np.ndarray:
        return self.ctx.cfg

    @property
    def state(self) -> np.ndarray:
        return self.ctx.state

    @property
    def counters(self) -> np.ndarray:
        return self.ctx.counters

    @property
    def hdr_len(self) -> int:
        return int(self.ctx.cfg[CFG_HDR_LEN])

    def set_callfd(self, fd: int) -> None:
        self.ctx.cfg[CFG_CALLFD] = int(fd)

    def set_enabled(self, enabled: bool) -> None:
        self.ctx.cfg[CFG_ENABLED] = int(bool(enabled))

    def get_base(self) -> int:
        """GET_VRING_BASE value (packed: bit 15 = wrap counter)."""
        return ring_get_base(self.packed, self.ctx.state)

    def enable_notify(self, enable: bool) -> bool:
        """Ask the guest for kicks or not; True when chains are pending (keep polling)."""
        pending = bool(ring_enable_notify(self.packed, self.ctx.split, self.ctx.packed, self.ctx.state, bool(enable)))
        log_notify_write(self.ctx.log, self.packed, self.ctx.state, bool(enable))
        return pending

    def send_rarp(self, mac) -> None:
        """SEND_RARP: the next dequeue (of any queue sharing ``ctx.rarp``) injects a RARP frame."""
        r = self.ctx.rarp
        r[RARP_MAC] = mac_to_int(mac)
        _store_release_py(r, RARP_FLAG, 1)

    def stats(self) -> dict:
        return {name: int(self.ctx.counters[i]) for i, name in enumerate(COUNTER_NAMES)}

    def reset_stats(self) -> None:
        self.ctx.counters[:] = 0


@kernel
def _store_release_py(ary, idx, val):
    store_release(ary, idx, val)


def _arrays(mp):
    return getattr(mp, "arrays", mp)
