"""Mempools of mbufs with per-lcore caches, in one shared memzone.

A mempool is ``n`` mbufs (metadata records of :data:`~dataplane.memory.mbuf.MBUF_DTYPE`
plus one data buffer each), a multi-producer/multi-consumer ring holding the
indices of the free mbufs, and one object cache per lcore (DPDK's
``rte_mempool`` with ``rte_mempool_cache``).  Everything lives in ONE memzone
named ``MP_<name>``, so any process sharing the memory finds the pool with
:func:`mempool_lookup`; lcore workers forked after :func:`mempool_create`
simply keep using the :class:`Mempool` they inherited.

Memzone layout (offsets are kept in the header, so readers never guess)::

    0      header: int64 info[64] (magic, geometry, offsets), pool name
    ...    free ring (rte_ring-like, EXACT_SZ capacity n, MP/MC)
    ...    per-lcore caches: uint32 [max_lcores, cache_stride]; word 0 is the
           cache length, objects start at word CACHE_OBJS (own 128-byte lines
           per lcore, no false sharing)
    ...    mbuf metadata: MBUF_DTYPE [n] (128 bytes each)
    ...    private areas: uint8 [n, priv_stride]
    ...    data buffers: uint8 [n * buf_stride], page aligned

Handles are mbuf *indices* in their pool (``np.uint32`` arrays are the
convention; every kernel accepts any integer array).  The jitted API takes
``mp`` = :attr:`Mempool.arrays`, a :class:`MempoolArrays` namedtuple of numpy
arrays (numba accepts it, also from ``cache=True`` functions), and an lcore
id.  ``lcore < 0`` or ``lcore >= max_lcores`` bypasses the caches (like a
non-EAL thread in DPDK); a cache is owned by one thread of one process at a
time, the ring is shared by all.

Cache semantics (after DPDK): ``get`` serves from the top of the cache; when
the cache is short and ``n <= cache_size`` it refills from the ring in one
bulk so that ``cache_size`` objects remain after the get; larger requests (or
a ring too short for the refill) take what the cache has plus the rest from
the ring.  Gets are all-or-nothing.  ``put`` appends to the cache; above the
flush threshold (1.5 x cache_size) the cache is trimmed back to
``cache_size`` objects with one bulk enqueue; a put larger than the threshold
goes to the ring directly.  A pool therefore can look empty while other
lcores' caches still hold objects: :meth:`Mempool.avail_count` counts both.

The numba kernels (all ``njit(cache=True)``):

* pool: :func:`mempool_get_bulk`, :func:`mempool_put_bulk`,
  :func:`mempool_get`, :func:`mempool_put`, :func:`mempool_cache_flush`,
  :func:`mempool_cache_count`, :func:`mempool_avail_count`
* mbufs: :func:`pktmbuf_alloc`, :func:`pktmbuf_alloc_bulk`,
  :func:`pktmbuf_reset`, :func:`pktmbuf_free`, :func:`pktmbuf_free_seg`,
  :func:`pktmbuf_free_bulk`, :func:`pktmbuf_refcnt_read`,
  :func:`pktmbuf_refcnt_update`, :func:`pktmbuf_clone`,
  :func:`pktmbuf_attach`, :func:`pktmbuf_detach`
* data: :func:`mbuf_data`, :func:`mbuf_buf`, :func:`mbuf_data_offset`, :func:`seg_addr`,
  :func:`mbuf_data_iova`, :func:`pktmbuf_headroom`,
  :func:`pktmbuf_tailroom`, :func:`pktmbuf_lastseg`, :func:`pktmbuf_append`,
  :func:`pktmbuf_prepend`, :func:`pktmbuf_adj`, :func:`pktmbuf_trim`,
  :func:`pktmbuf_chain`, :func:`pktmbuf_read`, :func:`pktmbuf_write`,
  :func:`pktmbuf_alloc_from`

Data access is by slice views of ``mp.data``.  To copy bytes in jitted
code, loop over views (``for j in range(n): dst[j] = src[j]``): numba's slice
assignment ``dst[a:b] = src`` is ~20x slower (see the hot-path notes below
and DESIGN.md section 5).

The kernels inline the ring kernels of :mod:`dataplane.rings.ring`; numba's
cache only watches this file, so after a change of the ring's protocol the
cached ``mempool.*.nbi/nbc`` files in ``__pycache__`` must be deleted.
"""

from __future__ import annotations

import collections
import zlib

import numpy as np
from numba import njit

from dataplane.rings.atomics import fetch_add, load_relaxed
from dataplane.rings.jit import always_inline, inline_kernel, kernel, stack_array_u32
from dataplane.rings.ring import (
    HDR_CONS_HEAD,
    HDR_CONS_TAIL,
    HDR_MASK,
    HDR_PROD_HEAD,
    HDR_PROD_TAIL,
    RING_F_EXACT_SZ,
    Ring,
    ring_count,
    ring_dequeue_bulk,
    ring_enqueue_bulk,
    ring_memsize,
)

from .mbuf import (
    MBUF_DTYPE,
    MBUF_DYNFIELD_WORDS,
    MBUF_MAX_NB_SEGS,
    MBUF_NEXT_NONE,
    MBUF_PORT_INVALID,
    MBUF_REFCNT_U16,
    MBUF_SIZE,
    MBUF_U16_WORDS,
    RTE_MBUF_DEFAULT_BUF_SIZE,
    RTE_MBUF_F_EXTERNAL,
    RTE_MBUF_F_INDIRECT,
    RTE_PKTMBUF_HEADROOM,
)

__all__ = [
    "MempoolArrays",
    "Mempool",
    "MempoolEmpty",
    "MempoolCorrupt",
    "MempoolAudit",
    "mempool_create",
    "mempool_lookup",
    "mempool_free",
    "MEMPOOL_CACHE_MAX_SIZE",
    "MBUF_IDX_DTYPE",
    # kernels
    "mempool_get_bulk",
    "mempool_put_bulk",
    "mempool_get",
    "mempool_put",
    "mempool_cache_flush",
    "mempool_cache_count",
    "mempool_avail_count",
    "pktmbuf_reset",
    "pktmbuf_alloc",
    "pktmbuf_alloc_bulk",
    "pktmbuf_free",
    "pktmbuf_free_seg",
    "pktmbuf_free_bulk",
    "pktmbuf_refcnt_read",
    "pktmbuf_refcnt_update",
    "pktmbuf_attach",
    "pktmbuf_detach",
    "pktmbuf_clone",
    "mbuf_data",
    "mbuf_buf",
    "mbuf_data_offset",
    "seg_addr",
    "mbuf_data_iova",
    "pktmbuf_headroom",
    "pktmbuf_tailroom",
    "pktmbuf_lastseg",
    "pktmbuf_append",
    "pktmbuf_prepend",
    "pktmbuf_adj",
    "pktmbuf_trim",
    "pktmbuf_chain",
    "pktmbuf_read",
    "pktmbuf_write",
    "pktmbuf_alloc_from",
    "pktmbuf_from_bytes",
    "pktmbuf_to_bytes",
]

MBUF_IDX_DTYPE = np.uint32  # the conventional dtype of mbuf handle arrays

MEMPOOL_CACHE_MAX_SIZE = 512  # RTE_MEMPOOL_CACHE_MAX_SIZE
MEMPOOL_MAGIC = 0x314C4F4F50504D44  # "DMPPOOL1" little endian
MEMPOOL_VERSION = 1
MEMPOOL_NAMESIZE = 28  # memzone names are 31 bytes; "MP_" takes 3
MBUF_PRIV_ALIGN = 8  # RTE_MBUF_PRIV_ALIGN

HEADER_BYTES = 1024
NAME_OFF = 512  # pool name bytes in the header
CACHE_OBJS = 16  # u32 words before the objects of a cache row (word 0 = len)
_LINE = 128

# int64 info[] indices (the header)
I_MAGIC = 0
I_VERSION = 1
I_N = 2
I_BUF_LEN = 3  # data room incl. headroom (rte_pktmbuf data_room_size)
I_BUF_STRIDE = 4  # bytes between two buffers in data
I_HEADROOM = 5
I_CACHE_SIZE = 6
I_FLUSH_THRESH = 7
I_CACHE_CAP = 8  # objects a cache row can hold
I_CACHE_STRIDE = 9  # u32 words per cache row
I_MAX_LCORES = 10
I_PRIV_SIZE = 11
I_PRIV_STRIDE = 12
I_POOL_ID = 13
I_RING_OFF = 14
I_RING_COUNT = 15
I_RING_FLAGS = 16
I_RING_BYTES = 17
I_CACHE_OFF = 18
I_MBUF_OFF = 19
I_PRIV_OFF = 20
I_DATA_OFF = 21
I_TOTAL = 22
I_DATA_IOVA = 23  # iova of data[0] (creator's, IOVA-as-VA)
I_MBUF_SIZE = 24
I_NAME_LEN = 25
I_INFO_WORDS = 64

_NONE = MBUF_NEXT_NONE
_F_INDIRECT = np.uint64(RTE_MBUF_F_INDIRECT)
_F_KEEP_ON_RESET = np.uint64(RTE_MBUF_F_EXTERNAL)
_F_NOT_ATTACHED = np.uint64(~(RTE_MBUF_F_INDIRECT | RTE_MBUF_F_EXTERNAL) & 0xFFFFFFFFFFFFFFFF)
_U64_ZERO = np.uint64(0)


MempoolArrays = collections.namedtuple(
    "MempoolArrays",
    ["info", "ring_hdr", "ring_slots", "cache", "mbufs", "mbuf_u16", "data", "priv"],
)
MempoolArrays.__doc__ = """The numpy arrays of a mempool, as jitted code takes them.

- ``info``: int64[64], the header (geometry; ``I_*`` indices)
- ``ring_hdr`` (uint32) / ``ring_slots`` (uint64): the free ring
- ``cache``: uint32[max_lcores, cache_stride]; ``[l, 0]`` = length,
  ``[l, CACHE_OBJS:]`` = cached mbuf indices of lcore ``l``
- ``mbufs``: MBUF_DTYPE[n], the metadata
- ``mbuf_u16``: uint16[n * 64], the same bytes (atomic refcnt updates)
- ``data``: uint8[n * buf_stride], every buffer, flat
- ``priv``: uint8[n, priv_stride], per-mbuf private areas
"""


class MempoolEmpty(Exception):
    """Not enough free objects (ENOENT); nothing was taken."""


class MempoolCorrupt(AssertionError):
    """:meth:`Mempool.audit` found an object twice, or an invalid index."""


MempoolAudit = collections.namedtuple("MempoolAudit", ["n", "in_ring", "in_caches", "in_use", "out"])
MempoolAudit.__doc__ = """Result of :meth:`Mempool.audit`: counts, and ``out`` = sorted
indices of the mbufs neither in the ring nor in a cache (in use)."""


# ==========================================================================
# pool kernels
# ==========================================================================


# Hot-path rules for these kernels (measured on this VM, numba 0.68):
#
# * Every kernel that neither allocates nor returns an array is compiled
#   without NRT reference counting (``kernel`` of :mod:`dataplane.rings.jit`,
#   which says why and what that forbids).  Numba otherwise increfs and
#   decrefs each array of the ``mp`` namedtuple (8 atomic pairs) around
#   branches and calls: a 32-object get+put cost ~17 ns per object instead of
#   ~1 ns.  Scratch space comes from ``stack_array_u32(SCRATCH_OBJS)``;
#   ``mbuf_data`` / ``mbuf_buf`` / ``pktmbuf_alloc_from`` return array views
#   and keep NRT.  Callees inherit the caller's NRT setting, so nothing below
#   may call an allocating function either.
# * No short-circuit ``and`` / ``or``: each one cost ~100 ns per call (the
#   same refcounting, per branch); comparisons are combined with ``&`` / ``|``.
# * No slice assignment ``a[i:j] = b[k:l]``: ~20x slower than the loop over
#   views in :func:`_copy` (1518 B: 550 vs 30 ns).
# * Small kernels mark themselves ``alwaysinline`` (``always_inline()``): an
#   out-of-line call copies the 57 machine words of ``mp`` onto the stack.

SCRATCH_OBJS = 64  # stack scratch entries (batching of frees)


@kernel
def _copy(dst, src, n):
    """dst[:n] = src[:n], as a loop over views (vectorised)."""
    always_inline()
    for j in range(n):
        dst[j] = src[j]


@kernel
def _has_cache(mp, lcore):
    always_inline()
    return (lcore >= 0) & (lcore < mp.info[I_MAX_LCORES]) & (mp.info[I_CACHE_SIZE] > 0)


@kernel
def mempool_get_bulk(mp, lcore, out, n):
    """Take ``n`` free mbuf indices into ``out[:n]``: 0, or -1 (ENOENT, nothing taken)."""
    always_inline()
    n = np.int64(n)
    if n <= 0:
        return 0
    if not _has_cache(mp, lcore):
        if ring_dequeue_bulk(mp.ring_hdr, mp.ring_slots, out, n, False) == n:
            return 0
        return -1
    c = mp.cache[lcore]
    length = np.int64(c[0])
    if n > length:
        size = mp.info[I_CACHE_SIZE]
        refilled = False
        if n <= size:
            # refill so that ``size`` objects stay in the cache after the get
            target = min(mp.info[I_CACHE_CAP], size + n)
            req = target - length
            if ring_dequeue_bulk(mp.ring_hdr, mp.ring_slots, c[CACHE_OBJS + length :], req, False) == req:
                length = target
                refilled = True
            else:
                req = n - length  # the ring is short: just what is missing
                if ring_dequeue_bulk(mp.ring_hdr, mp.ring_slots, c[CACHE_OBJS + length :], req, False) == req:
                    length = n
                    refilled = True
        if not refilled:
            # everything the cache has, the rest straight from the ring
            rest = n - length
            if ring_dequeue_bulk(mp.ring_hdr, mp.ring_slots, out[length:], rest, False) != rest:
                return -1
            _copy(out, c[CACHE_OBJS:], length)
            c[0] = 0
            return 0
    lo = CACHE_OBJS + length - n
    _copy(out, c[lo:], n)
    c[0] = length - n
    return 0


@kernel
def mempool_put_bulk(mp, lcore, objs, n):
    """Return ``objs[:n]`` to the pool: 0, or -1 if the ring overflowed (a
    double free: more objects returned than the pool has)."""
    always_inline()
    n = np.int64(n)
    if n <= 0:
        return 0
    if not _has_cache(mp, lcore):
        if ring_enqueue_bulk(mp.ring_hdr, mp.ring_slots, objs, n, False) == n:
            return 0
        return -1
    c = mp.cache[lcore]
    length = np.int64(c[0])
    thresh = mp.info[I_FLUSH_THRESH]
    if length + n <= thresh:
        _copy(c[CACHE_OBJS + length :], objs, n)
        c[0] = length + n
        return 0
    if n > thresh:
        if ring_enqueue_bulk(mp.ring_hdr, mp.ring_slots, objs, n, False) == n:
            return 0
        return -1
    # flush the cache down so that it holds cache_size objects after the put
    keep = max(mp.info[I_CACHE_SIZE] - n, 0)
    k = length - keep
    if ring_enqueue_bulk(mp.ring_hdr, mp.ring_slots, c[CACHE_OBJS + keep :], k, False) != k:
        return -1
    _copy(c[CACHE_OBJS + keep :], objs, n)
    c[0] = keep + n
    return 0


@kernel
def mempool_get(mp, lcore):
    """Take one free mbuf index: the index, or -1 (ENOENT)."""
    always_inline()
    if _has_cache(mp, lcore):
        c = mp.cache[lcore]
        length = np.int64(c[0])
        if length == 0:
            # refill as a bulk get of one would
            target = min(mp.info[I_CACHE_CAP], mp.info[I_CACHE_SIZE] + 1)
            if ring_dequeue_bulk(mp.ring_hdr, mp.ring_slots, c[CACHE_OBJS:], target, False) == target:
                length = target
            elif ring_dequeue_bulk(mp.ring_hdr, mp.ring_slots, c[CACHE_OBJS:], 1, False) == 1:
                length = 1
            else:
                return np.int64(-1)
        length -= 1
        c[0] = length
        return np.int64(c[CACHE_OBJS + length])
    tmp = stack_array_u32(SCRATCH_OBJS)
    if ring_dequeue_bulk(mp.ring_hdr, mp.ring_slots, tmp, 1, False) == 1:
        return np.int64(tmp[0])
    return np.int64(-1)


@kernel
def mempool_put(mp, lcore, obj):
    """Return one mbuf index to the pool: 0, or -1 (ring overflow)."""
    always_inline()
    if _has_cache(mp, lcore):
        c = mp.cache[lcore]
        length = np.int64(c[0])
        if length >= mp.info[I_FLUSH_THRESH]:
            # flush down so that cache_size objects remain after the put
            keep = max(mp.info[I_CACHE_SIZE] - 1, 0)
            k = length - keep
            if ring_enqueue_bulk(mp.ring_hdr, mp.ring_slots, c[CACHE_OBJS + keep :], k, False) != k:
                return -1
            length = keep
        c[CACHE_OBJS + length] = obj
        c[0] = length + 1
        return 0
    tmp = stack_array_u32(SCRATCH_OBJS)
    tmp[0] = obj
    if ring_enqueue_bulk(mp.ring_hdr, mp.ring_slots, tmp, 1, False) == 1:
        return 0
    return -1


@kernel
def mempool_cache_flush(mp, lcore):
    """Move every object of ``lcore``'s cache to the ring: 0, or -1."""
    if not _has_cache(mp, lcore):
        return 0
    c = mp.cache[lcore]
    length = np.int64(c[0])
    if length > 0:
        if ring_enqueue_bulk(mp.ring_hdr, mp.ring_slots, c[CACHE_OBJS:], length, False) != length:
            return -1
        c[0] = 0
    return 0


@kernel
def mempool_cache_count(mp, lcore):
    """Objects in ``lcore``'s cache (0 for cache-less lcores)."""
    if not _has_cache(mp, lcore):
        return np.int64(0)
    return np.int64(load_relaxed(mp.cache[lcore], 0))


@kernel
def mempool_avail_count(mp):
    """Free objects: ring plus every cache (a snapshot while lcores run)."""
    total = ring_count(mp.ring_hdr)
    if mp.info[I_CACHE_SIZE] > 0:
        for lc in range(mp.info[I_MAX_LCORES]):
            total += np.int64(load_relaxed(mp.cache[lc], 0))
    return total


# ==========================================================================
# mbuf kernels
# ==========================================================================


@kernel
def pktmbuf_reset(mp, m):
    """Reset the packet fields of mbuf ``m`` (rte_pktmbuf_reset); refcnt untouched."""
    always_inline()
    mb = mp.mbufs[m]
    mb.next = _NONE
    mb.pkt_len = 0
    mb.l2_len = 0
    mb.l3_len = 0
    mb.l4_len = 0
    mb.tso_segsz = 0
    mb.outer_l2_len = 0
    mb.outer_l3_len = 0
    mb.vlan_tci = 0
    mb.vlan_tci_outer = 0
    mb.nb_segs = 1
    mb.port = MBUF_PORT_INVALID
    mb.ol_flags = mb.ol_flags & _F_KEEP_ON_RESET
    mb.packet_type = 0
    mb.hash = 0
    mb.hash_hi = 0
    mb.data_off = min(mp.info[I_HEADROOM], np.int64(mb.buf_len))
    mb.data_len = 0


@kernel
def pktmbuf_alloc_bulk(mp, lcore, out, n):
    """Allocate ``n`` reset mbufs into ``out[:n]``: 0, or -1 (none allocated)."""
    always_inline()
    if mempool_get_bulk(mp, lcore, out, n) != 0:
        return -1
    for i in range(n):
        m = out[i]
        pktmbuf_reset(mp, m)
        mp.mbufs[m].refcnt = 1
    return 0


@kernel
def pktmbuf_alloc(mp, lcore):
    """Allocate one reset mbuf: its index, or -1."""
    always_inline()
    m = mempool_get(mp, lcore)
    if m >= 0:
        pktmbuf_reset(mp, m)
        mp.mbufs[m].refcnt = 1
    return m


@kernel
def pktmbuf_refcnt_read(mp, m):
    always_inline()
    return np.int64(mp.mbufs[m].refcnt)


@kernel
def pktmbuf_refcnt_update(mp, m, v):
    """Add ``v`` to the refcnt of ``m``; returns the new value.  Atomic unless
    the caller is the only owner (refcnt 1), as in DPDK."""
    always_inline()
    mb = mp.mbufs[m]
    if mb.refcnt == 1:
        nv = np.int64(1) + v
        mb.refcnt = nv
        return nv & 0xFFFF
    old = fetch_add(mp.mbuf_u16, np.int64(m) * MBUF_U16_WORDS + MBUF_REFCNT_U16, v)
    return (np.int64(old) + v) & 0xFFFF


@kernel
def _direct_of(mp, m):
    """Index of the mbuf owning the buffer that ``m`` points at."""
    always_inline()
    return np.int64(mp.mbufs[m].buf_off) // mp.info[I_BUF_STRIDE]


@kernel
def pktmbuf_attach(mp, mi, m):
    """Make ``mi`` an indirect mbuf sharing segment ``m``'s buffer (rte_pktmbuf_attach).

    ``mi`` must be a fresh (reset, refcnt 1) direct mbuf of the same pool.
    """
    src = mp.mbufs[m]
    md = m
    if src.ol_flags & _F_INDIRECT:
        md = _direct_of(mp, m)
    pktmbuf_refcnt_update(mp, md, 1)
    a = mp.mbufs[mi]
    a.buf_iova = src.buf_iova
    a.buf_off = src.buf_off
    a.buf_len = src.buf_len
    a.data_off = src.data_off
    a.data_len = src.data_len
    a.port = src.port
    a.vlan_tci = src.vlan_tci
    a.vlan_tci_outer = src.vlan_tci_outer
    a.hash = src.hash
    a.hash_hi = src.hash_hi
    a.packet_type = src.packet_type
    a.l2_len = src.l2_len
    a.l3_len = src.l3_len
    a.l4_len = src.l4_len
    a.tso_segsz = src.tso_segsz
    a.outer_l2_len = src.outer_l2_len
    a.outer_l3_len = src.outer_l3_len
    a.seqn = src.seqn
    a.udata64 = src.udata64
    for i in range(MBUF_DYNFIELD_WORDS):
        a.dynfield[i] = src.dynfield[i]
    a.ol_flags = (src.ol_flags & _F_NOT_ATTACHED) | _F_INDIRECT
    a.next = _NONE
    a.pkt_len = src.data_len
    a.nb_segs = 1


@kernel
def pktmbuf_detach(mp, lcore, mi):
    """Give indirect mbuf ``mi`` its own buffer back and drop its reference
    on the direct one, freeing that when it was the last (rte_pktmbuf_detach)."""
    a = mp.mbufs[mi]
    if not (a.ol_flags & _F_INDIRECT):
        return
    md = _direct_of(mp, mi)
    own = np.int64(mi) * mp.info[I_BUF_STRIDE]
    a.buf_off = own
    a.buf_iova = mp.info[I_DATA_IOVA] + own
    a.buf_len = mp.info[I_BUF_LEN]
    a.data_off = min(mp.info[I_HEADROOM], mp.info[I_BUF_LEN])
    a.data_len = 0
    a.ol_flags = _U64_ZERO
    if pktmbuf_refcnt_update(mp, md, -1) == 0:
        d = mp.mbufs[md]
        d.next = _NONE
        d.nb_segs = 1
        d.refcnt = 1
        mempool_put(mp, lcore, md)


@kernel
def _prefree_seg(mp, lcore, m):
    """Drop one reference on segment ``m``: True when it must go back to the pool."""
    always_inline()
    mb = mp.mbufs[m]
    if mb.refcnt == 1:
        if mb.ol_flags & _F_INDIRECT:
            pktmbuf_detach(mp, lcore, m)
        mb.next = _NONE
        mb.nb_segs = 1
        return True
    old = fetch_add(mp.mbuf_u16, np.int64(m) * MBUF_U16_WORDS + MBUF_REFCNT_U16, 0xFFFF)
    if old != 1:
        return False
    mb.refcnt = 1
    if mb.ol_flags & _F_INDIRECT:
        pktmbuf_detach(mp, lcore, m)
    mb.next = _NONE
    mb.nb_segs = 1
    return True


@kernel
def pktmbuf_free_seg(mp, lcore, m):
    """Free one segment (its ``next`` is ignored), honouring refcnt."""
    always_inline()
    if _prefree_seg(mp, lcore, m):
        mempool_put(mp, lcore, m)


@kernel
def _free_chain(mp, lcore, m, buf, k):
    """Drop a reference on every segment of chain ``m``; segments to free
    are batched in ``buf[k:]`` (flushed to the pool when full).  Returns the
    new fill level of ``buf``."""
    always_inline()
    seg = np.int64(m)
    while seg != _NONE:
        nxt = np.int64(mp.mbufs[seg].next)
        if _prefree_seg(mp, lcore, seg):
            if k == SCRATCH_OBJS:
                mempool_put_bulk(mp, lcore, buf, k)
                k = 0
            buf[k] = seg
            k += 1
        seg = nxt
    return k


@kernel
def pktmbuf_free(mp, lcore, m):
    """Free the whole chain starting at ``m`` (rte_pktmbuf_free)."""
    always_inline()
    buf = stack_array_u32(SCRATCH_OBJS)
    k = _free_chain(mp, lcore, m, buf, 0)
    if k > 0:
        mempool_put_bulk(mp, lcore, buf, k)


@kernel
def pktmbuf_free_bulk(mp, lcore, objs, n):
    """Free the ``n`` chains whose heads are ``objs[:n]``, returning their
    segments to the pool in bulk (rte_pktmbuf_free_bulk)."""
    buf = stack_array_u32(SCRATCH_OBJS)
    k = 0
    for i in range(n):
        k = _free_chain(mp, lcore, objs[i], buf, k)
    if k > 0:
        mempool_put_bulk(mp, lcore, buf, k)


@kernel
def pktmbuf_clone(mp, lcore, m):
    """An indirect copy of packet ``m`` sharing its buffers: the new head, or -1."""
    head = np.int64(-1)
    prev = np.int64(-1)
    seg = np.int64(m)
    while seg != _NONE:
        mi = pktmbuf_alloc(mp, lcore)
        if mi < 0:
            if head >= 0:
                pktmbuf_free(mp, lcore, head)
            return np.int64(-1)
        pktmbuf_attach(mp, mi, seg)
        if prev >= 0:
            mp.mbufs[prev].next = mi
        else:
            head = mi
        prev = mi
        seg = np.int64(mp.mbufs[seg].next)
    h = mp.mbufs[head]
    src = mp.mbufs[m]
    h.nb_segs = src.nb_segs
    h.pkt_len = src.pkt_len
    return head


# ==========================================================================
# data access kernels
# ==========================================================================


@kernel
def mbuf_data_offset(mp, m):
    """Offset in ``mp.data`` of segment ``m``'s first data byte."""
    always_inline()
    mb = mp.mbufs[m]
    return np.int64(mb.buf_off) + np.int64(mb.data_off)


@inline_kernel
def seg_addr(mp, m):
    """Host address of segment ``m``'s first data byte (rte_pktmbuf_mtod)."""
    mb = mp.mbufs[m]
    return np.uint64(mp.data.ctypes.data) + np.uint64(mb.buf_off) + np.uint64(mb.data_off)


@njit(cache=True)
def mbuf_data(mp, m):
    """The data of segment ``m`` (``data_len`` bytes), a view of ``mp.data``."""
    mb = mp.mbufs[m]
    o = np.int64(mb.buf_off) + np.int64(mb.data_off)
    return mp.data[o : o + np.int64(mb.data_len)]


@njit(cache=True)
def mbuf_buf(mp, m):
    """The whole buffer of ``m`` (``buf_len`` bytes, headroom included)."""
    mb = mp.mbufs[m]
    o = np.int64(mb.buf_off)
    return mp.data[o : o + np.int64(mb.buf_len)]


@kernel
def mbuf_data_iova(mp, m):
    """IOVA of segment ``m``'s first data byte (rte_pktmbuf_iova)."""
    always_inline()
    mb = mp.mbufs[m]
    return np.uint64(mb.buf_iova) + np.uint64(mb.data_off)


@kernel
def pktmbuf_headroom(mp, m):
    always_inline()
    return np.int64(mp.mbufs[m].data_off)


@kernel
def pktmbuf_tailroom(mp, m):
    always_inline()
    mb = mp.mbufs[m]
    return np.int64(mb.buf_len) - np.int64(mb.data_off) - np.int64(mb.data_len)


@kernel
def pktmbuf_lastseg(mp, m):
    always_inline()
    seg = np.int64(m)
    while True:
        nxt = np.int64(mp.mbufs[seg].next)
        if nxt == _NONE:
            return seg
        seg = nxt


@kernel
def pktmbuf_append(mp, m, length):
    """Grow packet ``m`` by ``length`` bytes at the end of its last segment:
    the ``mp.data`` offset of the new bytes, or -1 (not enough tailroom)."""
    always_inline()
    length = np.int64(length)
    last = pktmbuf_lastseg(mp, m)
    if (length < 0) | (length > pktmbuf_tailroom(mp, last)):
        return np.int64(-1)
    lm = mp.mbufs[last]
    off = np.int64(lm.buf_off) + np.int64(lm.data_off) + np.int64(lm.data_len)
    lm.data_len = np.int64(lm.data_len) + length
    h = mp.mbufs[m]
    h.pkt_len = np.int64(h.pkt_len) + length
    return off


@kernel
def pktmbuf_prepend(mp, m, length):
    """Grow packet ``m`` by ``length`` bytes in front (into the headroom):
    the ``mp.data`` offset of the new first byte, or -1."""
    always_inline()
    length = np.int64(length)
    h = mp.mbufs[m]
    if (length < 0) | (length > np.int64(h.data_off)):
        return np.int64(-1)
    h.data_off = np.int64(h.data_off) - length
    h.data_len = np.int64(h.data_len) + length
    h.pkt_len = np.int64(h.pkt_len) + length
    return np.int64(h.buf_off) + np.int64(h.data_off)


@kernel
def pktmbuf_adj(mp, m, length):
    """Remove ``length`` bytes from the front of the first segment: the new
    data offset in ``mp.data``, or -1."""
    always_inline()
    length = np.int64(length)
    h = mp.mbufs[m]
    if (length < 0) | (length > np.int64(h.data_len)):
        return np.int64(-1)
    h.data_off = np.int64(h.data_off) + length
    h.data_len = np.int64(h.data_len) - length
    h.pkt_len = np.int64(h.pkt_len) - length
    return np.int64(h.buf_off) + np.int64(h.data_off)


@kernel
def pktmbuf_trim(mp, m, length):
    """Remove ``length`` bytes from the end of the last segment: 0, or -1."""
    always_inline()
    length = np.int64(length)
    last = pktmbuf_lastseg(mp, m)
    lm = mp.mbufs[last]
    if (length < 0) | (length > np.int64(lm.data_len)):
        return -1
    lm.data_len = np.int64(lm.data_len) - length
    h = mp.mbufs[m]
    h.pkt_len = np.int64(h.pkt_len) - length
    return 0


@kernel
def pktmbuf_chain(mp, head, tail):
    """Append packet ``tail`` to packet ``head``: 0, or -1 (too many segments)."""
    always_inline()
    h = mp.mbufs[head]
    t = mp.mbufs[tail]
    if np.int64(h.nb_segs) + np.int64(t.nb_segs) > MBUF_MAX_NB_SEGS:
        return -1
    last = pktmbuf_lastseg(mp, head)
    mp.mbufs[last].next = tail
    h.nb_segs = np.int64(h.nb_segs) + np.int64(t.nb_segs)
    h.pkt_len = np.int64(h.pkt_len) + np.int64(t.pkt_len)
    t.pkt_len = t.data_len
    t.nb_segs = 1
    return 0


@kernel
def pktmbuf_read(mp, m, off, dst):
    """Copy ``len(dst)`` packet bytes from packet offset ``off`` into ``dst``,
    across segments: the number of bytes, or -1 if out of range."""
    always_inline()
    off = np.int64(off)
    want = np.int64(dst.shape[0])
    if (off < 0) | (off + want > np.int64(mp.mbufs[m].pkt_len)):
        return np.int64(-1)
    seg = np.int64(m)
    pos = np.int64(0)  # packet offset of seg's first byte
    done = np.int64(0)
    while (done < want) & (seg != _NONE):
        mb = mp.mbufs[seg]
        dl = np.int64(mb.data_len)
        start = off + done - pos
        if start < dl:
            k = min(dl - start, want - done)
            o = np.int64(mb.buf_off) + np.int64(mb.data_off) + start
            _copy(dst[done:], mp.data[o:], k)
            done += k
        pos += dl
        seg = np.int64(mb.next)
    return done


@kernel
def pktmbuf_write(mp, m, off, src):
    """Copy ``src`` over the packet bytes from packet offset ``off`` (within
    ``pkt_len``), across segments: the number of bytes, or -1."""
    always_inline()
    off = np.int64(off)
    want = np.int64(src.shape[0])
    if (off < 0) | (off + want > np.int64(mp.mbufs[m].pkt_len)):
        return np.int64(-1)
    seg = np.int64(m)
    pos = np.int64(0)
    done = np.int64(0)
    while (done < want) & (seg != _NONE):
        mb = mp.mbufs[seg]
        dl = np.int64(mb.data_len)
        start = off + done - pos
        if start < dl:
            k = min(dl - start, want - done)
            o = np.int64(mb.buf_off) + np.int64(mb.data_off) + start
            _copy(mp.data[o:], src[done:], k)
            done += k
        pos += dl
        seg = np.int64(mb.next)
    return done


@njit(cache=True)
def pktmbuf_alloc_from(mp, lcore, src, seg_size):
    """A new packet holding the bytes of ``src``, in segments of at most
    ``seg_size`` data bytes (<= 0: as large as the buffers allow): the head
    index, or -1 (no mbufs / bad seg_size / more than 65535 segments)."""
    room = mp.info[I_BUF_LEN] - min(mp.info[I_HEADROOM], mp.info[I_BUF_LEN])
    seg_size = np.int64(seg_size)
    if (seg_size <= 0) | (seg_size > room):
        seg_size = room
    if seg_size <= 0:
        return np.int64(-1)
    total = np.int64(src.shape[0])
    nseg = max(np.int64(1), (total + seg_size - 1) // seg_size)
    if nseg > MBUF_MAX_NB_SEGS:
        return np.int64(-1)
    segs = np.empty(nseg, np.uint32)
    if pktmbuf_alloc_bulk(mp, lcore, segs, nseg) != 0:
        return np.int64(-1)
    pos = np.int64(0)
    for i in range(nseg):
        s = np.int64(segs[i])
        mb = mp.mbufs[s]
        k = min(seg_size, total - pos)
        o = np.int64(mb.buf_off) + np.int64(mb.data_off)
        _copy(mp.data[o:], src[pos:], k)
        mb.data_len = k
        mb.pkt_len = k
        if i + 1 < nseg:
            mb.next = segs[i + 1]
        pos += k
    h = mp.mbufs[np.int64(segs[0])]
    h.nb_segs = nseg
    h.pkt_len = total
    return np.int64(segs[0])


# ==========================================================================
# Python side
# ==========================================================================


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _memzone_name(name: str) -> str:
    return f"MP_{name}"


def _layout(n, buf_len, cache_size, max_lcores, priv_size):
    """Offsets and sizes of every part; returns a dict of info values."""
    flush = cache_size * 3 // 2
    cache_cap = flush
    cache_stride = _align(CACHE_OBJS + cache_cap, _LINE // 4) if cache_size else CACHE_OBJS
    buf_stride = _align(buf_len, 64)
    priv_stride = _align(priv_size, MBUF_PRIV_ALIGN)
    ring_flags = RING_F_EXACT_SZ
    ring_bytes = ring_memsize(n, ring_flags)
    off = HEADER_BYTES
    ring_off = off
    off = _align(off + ring_bytes, _LINE)
    cache_off = off
    off = _align(off + max_lcores * cache_stride * 4, _LINE)
    mbuf_off = off
    off = _align(off + n * MBUF_SIZE, _LINE)
    priv_off = off
    off = _align(off + n * priv_stride, 4096)
    data_off = off
    total = data_off + n * buf_stride
    return {
        I_N: n,
        I_BUF_LEN: buf_len,
        I_BUF_STRIDE: buf_stride,
        I_HEADROOM: min(RTE_PKTMBUF_HEADROOM, buf_len),
        I_CACHE_SIZE: cache_size,
        I_FLUSH_THRESH: flush,
        I_CACHE_CAP: cache_cap,
        I_CACHE_STRIDE: cache_stride,
        I_MAX_LCORES: max_lcores,
        I_PRIV_SIZE: priv_size,
        I_PRIV_STRIDE: priv_stride,
        I_RING_OFF: ring_off,
        I_RING_COUNT: n,
        I_RING_FLAGS: ring_flags,
        I_RING_BYTES: ring_bytes,
        I_CACHE_OFF: cache_off,
        I_MBUF_OFF: mbuf_off,
        I_PRIV_OFF: priv_off,
        I_DATA_OFF: data_off,
        I_TOTAL: total,
        I_MBUF_SIZE: MBUF_SIZE,
    }


class Mempool:
    """A mempool in its memzone; build with :func:`mempool_create` or
    :func:`mempool_lookup`.

    Attributes: ``name``, ``memzone``, ``n``, ``buf_len`` (= data room size,
    headroom included), ``headroom``, ``data_room`` (``buf_len - headroom``),
    ``cache_size``, ``flush_thresh``, ``max_lcores``, ``priv_size``,
    ``pool_id``, ``iova`` (of ``data[0]``), ``ring`` (the free :class:`Ring`),
    the arrays ``info``, ``cache``, ``mbufs``, ``mbuf_u16``, ``data``,
    ``priv``, and ``arrays`` (:class:`MempoolArrays`) for jitted code.
    """

    def __init__(self, memzone, *, _init: dict | None = None):
        mem = memzone.view(dtype=np.uint8)
        info = mem[: I_INFO_WORDS * 8].view(np.int64)
        if _init is None:
            if int(info[I_MAGIC]) != MEMPOOL_MAGIC:
                raise ValueError(f"memzone {memzone.name!r} holds no initialised mempool (bad magic)")
            if int(info[I_VERSION]) != MEMPOOL_VERSION or int(info[I_MBUF_SIZE]) != MBUF_SIZE:
                raise ValueError(
                    f"mempool {memzone.name!r} has version {int(info[I_VERSION])} / mbuf size "
                    f"{int(info[I_MBUF_SIZE])}, this code knows {MEMPOOL_VERSION} / {MBUF_SIZE}"
                )
            if int(info[I_TOTAL]) > mem.nbytes:
                raise ValueError(f"mempool {memzone.name!r}: memzone smaller than its header says")
        self.memzone = memzone
        self.info = info
        if _init is not None:
            for k, v in _init.items():
                info[k] = v
        g = {k: int(info[k]) for k in range(I_INFO_WORDS)}
        n = g[I_N]
        self.n = n
        self.buf_len = g[I_BUF_LEN]
        self.buf_stride = g[I_BUF_STRIDE]
        self.headroom = g[I_HEADROOM]
        self.data_room = self.buf_len - self.headroom
        self.cache_size = g[I_CACHE_SIZE]
        self.flush_thresh = g[I_FLUSH_THRESH]
        self.cache_cap = g[I_CACHE_CAP]
        self.max_lcores = g[I_MAX_LCORES]
        self.priv_size = g[I_PRIV_SIZE]
        self.pool_id = g[I_POOL_ID]
        ring_mem = mem[g[I_RING_OFF] : g[I_RING_OFF] + g[I_RING_BYTES]]
        self.ring = Ring(ring_mem, g[I_RING_COUNT], g[I_RING_FLAGS], init=_init is not None)
        self.cache = (
            mem[g[I_CACHE_OFF] : g[I_CACHE_OFF] + self.max_lcores * g[I_CACHE_STRIDE] * 4]
            .view(np.uint32)
            .reshape(self.max_lcores, g[I_CACHE_STRIDE])
        )
        self.mbufs = mem[g[I_MBUF_OFF] : g[I_MBUF_OFF] + n * MBUF_SIZE].view(MBUF_DTYPE)
        self.mbuf_u16 = mem[g[I_MBUF_OFF] : g[I_MBUF_OFF] + n * MBUF_SIZE].view(np.uint16)
        ps = g[I_PRIV_STRIDE]
        self.priv = mem[g[I_PRIV_OFF] : g[I_PRIV_OFF] + n * ps].reshape(n, ps)
        self.data = mem[g[I_DATA_OFF] : g[I_DATA_OFF] + n * self.buf_stride]
        self.iova = memzone.iova + g[I_DATA_OFF]
        self.arrays = MempoolArrays(
            info=self.info,
            ring_hdr=self.ring.hdr,
            ring_slots=self.ring.slots,
            cache=self.cache,
            mbufs=self.mbufs,
            mbuf_u16=self.mbuf_u16,
            data=self.data,
            priv=self.priv,
        )
        if _init is not None:
            self._initialise(_init)
        self.name = bytes(mem[NAME_OFF : NAME_OFF + g[I_NAME_LEN]]).decode()

    def _initialise(self, init: dict) -> None:
        n = self.n
        idx = np.arange(n, dtype=np.uint64)
        mb = self.mbufs
        mb["buf_off"] = idx * np.uint64(self.buf_stride)
        mb["buf_iova"] = mb["buf_off"] + np.uint64(self.iova)
        mb["buf_len"] = self.buf_len
        mb["data_off"] = self.headroom
        mb["refcnt"] = 1
        mb["nb_segs"] = 1
        mb["port"] = MBUF_PORT_INVALID
        mb["next"] = MBUF_NEXT_NONE
        mb["index"] = idx
        mb["pool_id"] = self.pool_id
        mb["priv_size"] = self.priv_size
        self.cache[:] = 0
        if self.ring.enqueue_bulk(idx) != n:
            raise RuntimeError("mempool ring refused the initial objects")

    # -- geometry -------------------------------------------------------------

    @property
    def data2d(self) -> np.ndarray:
        """``data`` as ``[n, buf_stride]`` (row i = buffer of mbuf i)."""
        return self.data.reshape(self.n, self.buf_stride)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (
            f"Mempool({self.name!r}, n={self.n}, buf_len={self.buf_len}, cache_size={self.cache_size}, "
            f"avail={self.avail_count()})"
        )

    # -- objects ----------------------------------------------------------------

    def get_bulk(self, n: int, lcore: int = -1) -> np.ndarray:
        """``n`` raw objects (indices, uint32); MempoolEmpty if not available."""
        out = np.empty(int(n), MBUF_IDX_DTYPE)
        if mempool_get_bulk(self.arrays, int(lcore), out, int(n)) != 0:
            raise MempoolEmpty(f"mempool {self.name!r}: cannot get {n} objects")
        return out

    def put_bulk(self, objs, lcore: int = -1) -> None:
        objs = self._idx_array(objs)
        if mempool_put_bulk(self.arrays, int(lcore), objs, objs.shape[0]) != 0:
            raise MempoolCorrupt(f"mempool {self.name!r}: ring overflow on put (double free?)")

    def get(self, lcore: int = -1) -> int:
        m = mempool_get(self.arrays, int(lcore))
        if m < 0:
            raise MempoolEmpty(f"mempool {self.name!r} is empty")
        return int(m)

    def put(self, obj: int, lcore: int = -1) -> None:
        if mempool_put(self.arrays, int(lcore), int(obj)) != 0:
            raise MempoolCorrupt(f"mempool {self.name!r}: ring overflow on put (double free?)")

    def alloc(self, lcore: int = -1) -> int:
        """One reset mbuf (rte_pktmbuf_alloc); MempoolEmpty if none."""
        m = pktmbuf_alloc(self.arrays, int(lcore))
        if m < 0:
            raise MempoolEmpty(f"mempool {self.name!r} is empty")
        return int(m)

    def alloc_bulk(self, n: int, lcore: int = -1) -> np.ndarray:
        """``n`` reset mbufs (uint32 indices); MempoolEmpty if not available."""
        out = np.empty(int(n), MBUF_IDX_DTYPE)
        if pktmbuf_alloc_bulk(self.arrays, int(lcore), out, int(n)) != 0:
            raise MempoolEmpty(f"mempool {self.name!r}: cannot allocate {n} mbufs")
        return out

    def free(self, m, lcore: int = -1) -> None:
        """Free one packet (an index) or many (an array of heads), whole chains."""
        if np.ndim(m) == 0:
            pktmbuf_free(self.arrays, int(lcore), int(m))
        else:
            objs = self._idx_array(m)
            pktmbuf_free_bulk(self.arrays, int(lcore), objs, objs.shape[0])

    def clone(self, m: int, lcore: int = -1) -> int:
        c = pktmbuf_clone(self.arrays, int(lcore), int(m))
        if c < 0:
            raise MempoolEmpty(f"mempool {self.name!r}: cannot clone")
        return int(c)

    def cache_flush(self, lcore: int | None = None) -> None:
        """Return the cached objects of ``lcore`` (None: of every lcore) to the ring.
        Only while that lcore does not run."""
        lcores = range(self.max_lcores) if lcore is None else [int(lcore)]
        for lc in lcores:
            if mempool_cache_flush(self.arrays, lc) != 0:
                raise MempoolCorrupt(f"mempool {self.name!r}: ring overflow on cache flush")

    def cache_count(self, lcore: int) -> int:
        return int(mempool_cache_count(self.arrays, int(lcore)))

    def ring_count(self) -> int:
        return int(ring_count(self.ring.hdr))

    def avail_count(self) -> int:
        """Free objects: in the ring and in every lcore cache."""
        return int(mempool_avail_count(self.arrays))

    def in_use_count(self) -> int:
        return self.n - self.avail_count()

    def full(self) -> bool:
        return self.avail_count() == self.n

    def empty(self) -> bool:
        return self.avail_count() == 0

    # -- mbufs ------------------------------------------------------------------

    def mbuf(self, m: int):
        """The metadata record of mbuf ``m`` (a writable numpy record)."""
        return self.mbufs[int(m)]

    def data_of(self, m: int) -> np.ndarray:
        """The data bytes of segment ``m`` (a view)."""
        return mbuf_data(self.arrays, int(m))

    def segments(self, m: int) -> list[int]:
        """Indices of the segments of packet ``m``, in order."""
        out = []
        seg = int(m)
        while seg != MBUF_NEXT_NONE:
            out.append(seg)
            if len(out) > self.n:
                raise MempoolCorrupt(f"mbuf chain from {m} loops")
            seg = int(self.mbufs[seg]["next"])
        return out

    def from_bytes(self, data, seg_size: int = 0, lcore: int = -1) -> int:
        return pktmbuf_from_bytes(self, lcore, data, seg_size)

    def to_bytes(self, m: int) -> bytes:
        return pktmbuf_to_bytes(self, m)

    # -- checks -------------------------------------------------------------------

    def ring_contents(self) -> np.ndarray:
        """The indices in the free ring (uint64), oldest first.  Only
        meaningful while nobody uses the pool."""
        hdr = self.ring.hdr
        if int(hdr[HDR_PROD_HEAD]) != int(hdr[HDR_PROD_TAIL]) or int(hdr[HDR_CONS_HEAD]) != int(
            hdr[HDR_CONS_TAIL]
        ):
            raise RuntimeError(f"mempool {self.name!r}: ring has operations in flight")
        tail = int(hdr[HDR_CONS_TAIL])
        cnt = (int(hdr[HDR_PROD_TAIL]) - tail) & 0xFFFFFFFF
        mask = int(hdr[HDR_MASK])
        pos = (tail + np.arange(cnt, dtype=np.int64)) & mask
        return self.ring.slots[pos].copy()

    def audit(self, check_free_mbufs: bool = True) -> MempoolAudit:
        """Check that every index is in exactly one of: the ring, one lcore
        cache, or out (in use); raise MempoolCorrupt otherwise.  With
        ``check_free_mbufs`` also check the free mbufs' invariant fields
        (refcnt 1, own buffer, index).  Only while nobody uses the pool."""
        n = self.n
        problems = []
        ring_objs = self.ring_contents()
        parts = [ring_objs.astype(np.int64)]
        in_caches = 0
        if self.cache_size:
            for lc in range(self.max_lcores):
                ln = int(self.cache[lc, 0])
                if ln > self.cache_cap:
                    problems.append(f"lcore {lc} cache length {ln} > capacity {self.cache_cap}")
                    ln = self.cache_cap
                parts.append(self.cache[lc, CACHE_OBJS : CACHE_OBJS + ln].astype(np.int64))
                in_caches += ln
        allobjs = np.concatenate(parts)
        bad = allobjs[(allobjs < 0) | (allobjs >= n)]
        if len(bad):
            problems.append(f"invalid indices {bad[:10].tolist()}")
        counts = np.bincount(allobjs[(allobjs >= 0) & (allobjs < n)], minlength=n)
        dups = np.flatnonzero(counts > 1)
        if len(dups):
            problems.append(f"{len(dups)} objects free more than once, e.g. {dups[:10].tolist()}")
        out = np.flatnonzero(counts == 0)
        if check_free_mbufs:
            free = np.flatnonzero(counts >= 1)
            mb = self.mbufs[free]
            wrong = free[
                (mb["refcnt"] != 1)
                | (mb["index"] != free)
                | (mb["buf_off"] != free.astype(np.uint64) * np.uint64(self.buf_stride))
                | (mb["buf_len"] != self.buf_len)
                | (mb["pool_id"] != self.pool_id)
            ]
            if len(wrong):
                problems.append(f"{len(wrong)} free mbufs with bad metadata, e.g. {wrong[:10].tolist()}")
        if problems:
            raise MempoolCorrupt(f"mempool {self.name!r}: " + "; ".join(problems))
        return MempoolAudit(n=n, in_ring=len(ring_objs), in_caches=in_caches, in_use=len(out), out=out)

    # -- helpers ------------------------------------------------------------------

    @staticmethod
    def _idx_array(objs) -> np.ndarray:
        a = np.asarray(objs)
        if a.ndim != 1:
            a = a.reshape(-1)
        if a.dtype.kind not in "ui":
            if a.size:
                raise TypeError(f"mbuf indices must be integers, got {a.dtype}")
            a = a.astype(MBUF_IDX_DTYPE)
        return np.ascontiguousarray(a)


def mempool_create(
    memory,
    name: str,
    n: int,
    cache_size: int = 256,
    data_room_size: int = RTE_MBUF_DEFAULT_BUF_SIZE,
    priv_size: int = 0,
    max_lcores: int = 128,
    pool_id: int | None = None,
) -> Mempool:
    """Create a pktmbuf pool of ``n`` mbufs in memzone ``MP_<name>``
    (rte_pktmbuf_pool_create).  ``data_room_size`` includes the 128-byte
    headroom.  ``cache_size`` <= 512 and 1.5 x cache_size <= n (0 = no
    caches); ``priv_size`` a multiple of 8.  ``pool_id`` (stored in every
    mbuf) defaults to a hash of the name."""
    n = int(n)
    cache_size = int(cache_size)
    if not isinstance(name, str) or not name or len(name.encode()) > MEMPOOL_NAMESIZE:
        raise ValueError(f"invalid mempool name {name!r}: 1 to {MEMPOOL_NAMESIZE} bytes")
    if n < 1 or n >= MBUF_NEXT_NONE:
        raise ValueError(f"mempool {name!r}: n must be in 1..{MBUF_NEXT_NONE - 1}, got {n}")
    if cache_size < 0 or cache_size > MEMPOOL_CACHE_MAX_SIZE:
        raise ValueError(f"mempool {name!r}: cache_size must be 0..{MEMPOOL_CACHE_MAX_SIZE}, got {cache_size}")
    if cache_size * 3 // 2 > n:
        raise ValueError(
            f"mempool {name!r}: cache flush threshold {cache_size * 3 // 2} exceeds the pool size {n}"
        )
    if not 0 < data_room_size <= 0xFFFF:
        raise ValueError(f"mempool {name!r}: data_room_size must be 1..65535, got {data_room_size}")
    if priv_size < 0 or priv_size % MBUF_PRIV_ALIGN or priv_size > 0xFFFF:
        raise ValueError(f"mempool {name!r}: priv_size must be a multiple of {MBUF_PRIV_ALIGN}, got {priv_size}")
    if max_lcores < 0:
        raise ValueError(f"mempool {name!r}: max_lcores must be >= 0")
    if pool_id is None:
        pool_id = zlib.crc32(name.encode()) & 0xFFFF
    if not 0 <= pool_id <= 0xFFFF:
        raise ValueError(f"pool_id must be a u16, got {pool_id}")
    lay = _layout(n, int(data_room_size), cache_size, int(max_lcores), int(priv_size))
    mz = memory.memzone_reserve(_memzone_name(name), lay[I_TOTAL], align=4096)
    try:
        raw = mz.view(dtype=np.uint8)
        encoded = name.encode()
        raw[NAME_OFF : NAME_OFF + len(encoded)] = np.frombuffer(encoded, np.uint8)
        lay[I_NAME_LEN] = len(encoded)
        lay[I_POOL_ID] = pool_id
        lay[I_VERSION] = MEMPOOL_VERSION
        lay[I_DATA_IOVA] = mz.iova + lay[I_DATA_OFF]
        mp = Mempool(mz, _init=lay)
        mp.info[I_MAGIC] = MEMPOOL_MAGIC  # published last: lookups see a complete pool
    except BaseException:
        try:
            memory.memzone_free(_memzone_name(name))
        except Exception:
            pass
        raise
    return mp


def mempool_lookup(memory, name: str) -> Mempool:
    """Attach to the mempool ``name`` created by any process sharing ``memory``.
    Raises KeyError (MemzoneNotFound) if there is none."""
    mz = memory.memzone_lookup(_memzone_name(name))
    return Mempool(mz)


def mempool_free(memory, mp: Mempool) -> None:
    """Release the pool's memzone (rte_mempool_free).  Nobody may use it after."""
    memory.memzone_free(mp.memzone.name)


def _arrays(mp) -> MempoolArrays:
    return mp.arrays if isinstance(mp, Mempool) else mp


def pktmbuf_from_bytes(mp, lcore: int, data, seg_size: int = 0) -> int:
    """A new packet with the bytes of ``data``, ``seg_size`` data bytes per
    segment (0 = as many as fit): the head index.  MempoolEmpty if no mbufs."""
    src = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    src = np.ascontiguousarray(src, dtype=np.uint8)
    m = pktmbuf_alloc_from(_arrays(mp), int(lcore), src, int(seg_size))
    if m < 0:
        raise MempoolEmpty("cannot allocate the mbufs of a packet")
    return int(m)


def pktmbuf_to_bytes(mp, m: int) -> bytes:
    """The ``pkt_len`` bytes of packet ``m``, gathered from its segments."""
    arrays = _arrays(mp)
    out = np.empty(int(arrays.mbufs[int(m)]["pkt_len"]), np.uint8)
    got = pktmbuf_read(arrays, int(m), 0, out)
    if got != out.shape[0]:
        raise MempoolCorrupt(f"packet {m}: segments hold {got} bytes, pkt_len says {out.shape[0]}")
    return out.tobytes()
