"""The virtio *split* virtqueue (virtio 1.1 §2.7): layout and numba kernels for both sides.

Memory layout (all little endian; legacy-contiguous form from
:func:`split_layout`, or three separate areas from ``SET_VRING_ADDR``)::

    desc[num]   16 B each: addr u64 | len u32 | flags u16 | next u16   (16-aligned)
    avail       flags u16 | idx u16 | ring[num] u16 | used_event u16   (2-aligned)
    used        flags u16 | idx u16 | ring[num] {id u32, len u32} | avail_event u16  (4-aligned)

Kernels work on a :class:`SplitVring`, a namedtuple of integer views over that
memory (see the field comments below), so one compiled kernel serves a ring in
a numpy buffer and a ring in guest memory mapped by vhost.

Ordering rules (DESIGN.md §3/§5): each side reads the peer's index with
:func:`load_acquire` and publishes its own with :func:`store_release`, *once
per burst*.  Every field the peer writes (indices, flags, event indices) is
read with an atomic load so LLVM can never hoist it out of a caller's poll
loop; fields we write for the peer outside the index (flags, event indices)
are written with relaxed atomic stores for the same reason.  A full fence
separates "publish my index" from "read the peer's suppression field" (and
"write my event index" from "re-check the peer's index"), as the spec
requires to never lose a notification.

Device side (consumer of available buffers: the vhost library, emulated vDPA devices)
----------------------------------------------------------------------------------------
State is one ``int64`` array from :func:`split_dev_state` (``STATE_*`` slots of
:mod:`dataplane.rings.virtqueue` plus split-specific slots here, followed by
the *shadow used ring*: ``2 * num`` int64 words, entry ``k`` at
``SPLIT_DEV_SHADOW_BASE + 2k`` = ``id | count << 32`` and ``+1`` = ``len``).
It can live in shared memory so the control plane can read it
(``GET_VRING_BASE``) while an lcore runs.  A burst::

    n = split_dev_fetch(vr, state, regions, chains, 32)    # acquire avail idx, walk chains
    for c in range(n):
        ... copy using chains.seg_* (status != 0: touch nothing, len 0) ...
        split_dev_push_used(vr, state, chains.head[c], written)   # shadow only
    if split_dev_flush_used(vr, state):    # entries + ONE release store of used idx
        kick the call eventfd
    # before sleeping on the kick fd:
    if split_dev_enable_notify(vr, state, True): keep polling (entries arrived meanwhile)

Driver side (producer: the virtio-user PMD)
-------------------------------------------
State is a :class:`SplitDrvState` namedtuple from :func:`split_drv_state`:
``state`` (``int64``, ``DRV_*`` slots), per-id ``cookie`` (uint64), ``ndesc``
(uint16, 0 = descriptor not a busy head), ``wlen`` (uint32: device-writable
bytes of the chain) and ``dnext`` (uint16): the free list.  The free list is
chained through ``dnext``, a *private* copy of each descriptor's next index
(as Linux's ``desc_extra`` does) rather than through ``desc.next`` in shared
memory, so a device scribbling on the descriptor table cannot corrupt it.
Descriptors written for a chain carry ``next = dnext[i]``.  A burst::

    for each packet: head = split_drv_add(vr, ds, cookie, gpa[:k], len[:k], wr[:k], k, 0, 0)
                     (or split_drv_add1(vr, ds, cookie, gpa, len, write))
    if split_drv_publish(vr, ds):      # ONE release store of avail idx + kick decision
        kick the kick eventfd
    ...
    n = split_drv_get_used(vr, ds, cookies_out, lens_out, 32)   # acquire used idx, free chains

With IN_ORDER the driver allocates descriptors in ring order (``next = x + 1``,
0 after the last) and the device may complete a batch with one used entry
(:func:`split_dev_push_used_inorder`): ``id`` = head of the batch's last
chain, used idx advanced by the batch size.

Features are the compact ``FEAT_*`` mask of :mod:`dataplane.rings.virtqueue`
(EVENT_IDX, IN_ORDER, INDIRECT), fixed at init.  Each side is single-threaded:
one lcore owns the device side of a ring, one owns the driver side.

Kernels are ``njit(cache=True, _nrt=False)`` (:data:`dataplane.rings.jit.kernel`);
call them from plain Python (control plane, tests) or, for speed, from your
own njit burst loop.  The test suite checks them operation by operation
against the plain Python model in :mod:`dataplane.testing.virtq_split_model`.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from dataplane.rings.atomics import fence, load_acquire, store_relaxed, store_release
from dataplane.rings.jit import always_inline, inline_kernel, kernel
from dataplane.rings.mem import load_u64, prefetch, store_u64
from dataplane.rings.regions import host_u16, host_u32, host_u64, translate
from dataplane.rings.virtqueue import (
    DESC_SIZE,
    ERR_ADDR,
    ERR_AVAIL_IDX,
    ERR_CHAIN_LOOP,
    ERR_DESC_INDEX,
    ERR_INDIRECT,
    ERR_LAYOUT,
    ERR_TOO_MANY_SEGS,
    FEAT_EVENT_IDX,
    FEAT_IN_ORDER,
    FEAT_INDIRECT,
    MAX_QUEUE_SIZE,
    N_ERR,
    OK,
    STATE_BROKEN,
    STATE_CHAINS,
    STATE_ERR_BASE,
    STATE_FEATURES,
    STATE_LAST_AVAIL,
    STATE_LAST_USED,
    STATE_SHADOW_N,
    STATE_SIGNALLED_USED,
    STATE_SIZE,
    STATE_SLOTS,
    STATE_USED,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    count_error,
    vring_need_event,
)

__all__ = [
    "SplitLayout",
    "SplitVring",
    "SplitDrvState",
    "split_layout",
    "check_queue_size",
    "split_vring_from_buffer",
    "split_vring_from_addrs",
    # device
    "SPLIT_DEV_SIGNALLED_VALID",
    "SPLIT_DEV_SHADOW_BASE",
    "split_dev_state_size",
    "split_dev_state",
    "split_dev_init",
    "split_dev_fetch",
    "split_dev_walk",
    "split_dev_push_used",
    "split_dev_push_used_inorder",
    "split_dev_flush_used",
    "split_dev_enable_notify",
    "split_dev_avail_count",
    "split_dev_get_base",
    "split_dev_set_base",
    "split_dev_sync_from_used",
    # driver
    "DRV_SIZE",
    "DRV_FEATURES",
    "DRV_FREE_HEAD",
    "DRV_NUM_FREE",
    "DRV_AVAIL_IDX",
    "DRV_KICKED_AVAIL",
    "DRV_LAST_USED",
    "DRV_OLDEST",
    "DRV_BATCH_ID",
    "DRV_BATCH_LEN",
    "DRV_BROKEN",
    "DRV_ADDED",
    "DRV_COMPLETED",
    "DRV_BAD_USED",
    "DRV_INTR_ENABLED",
    "DRV_SLOTS",
    "split_drv_state",
    "split_drv_init",
    "split_drv_add",
    "split_drv_add1",
    "split_drv_publish",
    "split_drv_get_used",
    "split_drv_enable_interrupt",
    "split_drv_free_count",
]

# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------

SplitLayout = namedtuple(
    "SplitLayout",
    [
        "num",
        "align",
        "desc_offset",
        "desc_size",
        "avail_offset",
        "avail_size",
        "used_offset",
        "used_size",
        "total_size",
    ],
)

SplitVring = namedtuple(
    "SplitVring",
    [
        "desc_u64",  # uint64[2*num]: addr at [2i]; [2i+1] = len | flags<<32 | next<<48
        "desc_u32",  # uint32[4*num]: len at [4i+2]
        "desc_u16",  # uint16[8*num]: flags at [8i+6], next at [8i+7]
        "avail",  # uint16[3+num]: flags [0], idx [1], ring [2+i], used_event [2+num]
        "used_u16",  # uint16[3+4*num]: flags [0], idx [1], avail_event [2+4*num]
        "used_u32",  # uint32[1+2*num]: ring[i].id at [1+2i], ring[i].len at [2+2i]
    ],
)


def check_queue_size(num) -> int:
    """``num`` as an int if it is a valid split queue size (power of two, 1..32768)."""
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)):
        raise ValueError(f"split queue size must be an integer, got {num!r}")
    num = int(num)
    if num < 1 or num > MAX_QUEUE_SIZE or num & (num - 1):
        raise ValueError(f"split queue size must be a power of two in 1..{MAX_QUEUE_SIZE}, got {num}")
    return num


def _desc_bytes(num):
    return DESC_SIZE * num


def _avail_bytes(num):
    return 2 * (3 + num)


def _used_bytes(num):
    return 2 * 3 + 8 * num


def split_layout(num, align=4096) -> SplitLayout:
    """Byte offsets and sizes of the legacy contiguous split ring (virtio 1.1 §2.7.2).

    The used ring starts at the first multiple of ``align`` after the avail
    ring; ``total_size`` is the spec's ``vring_size`` (no tail padding).
    """
    num = check_queue_size(num)
    if isinstance(align, bool) or not isinstance(align, (int, np.integer)) or align < 4 or align & (align - 1):
        raise ValueError(f"split ring alignment must be a power of two >= 4, got {align!r}")
    align = int(align)
    desc_size = _desc_bytes(num)
    avail_off = desc_size
    avail_size = _avail_bytes(num)
    used_off = (avail_off + avail_size + align - 1) & ~(align - 1)
    used_size = _used_bytes(num)
    return SplitLayout(num, align, 0, desc_size, avail_off, avail_size, used_off, used_size, used_off + used_size)


def split_vring_from_buffer(buf, num, offset=0, align=4096) -> SplitVring:
    """Views of a contiguous split ring at ``offset`` in ``buf`` (uint8 ndarray or buffer)."""
    lay = split_layout(num, align)
    num = lay.num
    if not isinstance(buf, np.ndarray):
        buf = np.frombuffer(buf, dtype=np.uint8)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        buf = buf.reshape(-1).view(np.uint8)
    offset = int(offset)
    if offset < 0 or offset + lay.total_size > buf.shape[0]:
        raise ValueError(f"split ring of {lay.total_size} bytes at offset {offset} does not fit a {buf.shape[0]}-byte buffer")
    base = buf.ctypes.data + offset
    if base % 16:
        raise ValueError(f"split ring must start 16-byte aligned (address {base:#x})")
    if not buf.flags.writeable:
        raise ValueError("split ring buffer must be writable")
    o = offset
    desc = buf[o + lay.desc_offset : o + lay.desc_offset + lay.desc_size]
    avail = buf[o + lay.avail_offset : o + lay.avail_offset + lay.avail_size].view(np.uint16)
    used8 = buf[o + lay.used_offset : o + lay.used_offset + lay.used_size]
    used_u16 = used8.view(np.uint16)
    used_u32 = used8[: 4 + 8 * num].view(np.uint32)
    return SplitVring(
        desc_u64=desc.view(np.uint64),
        desc_u32=desc.view(np.uint32),
        desc_u16=desc.view(np.uint16),
        avail=avail,
        used_u16=used_u16,
        used_u32=used_u32,
    )


def split_vring_from_addrs(desc_hva, avail_hva, used_hva, num) -> SplitVring:
    """Views of a split ring whose three areas live at host addresses (vhost ``SET_VRING_ADDR``).

    The addresses must already be translated (:func:`~dataplane.rings.regions.translate`)
    and the mapping must outlive the views.  Alignment is the spec's: desc 16,
    avail 2, used 4.
    """
    num = check_queue_size(num)
    desc_hva, avail_hva, used_hva = int(desc_hva), int(avail_hva), int(used_hva)
    if not desc_hva or not avail_hva or not used_hva:
        raise ValueError("split ring addresses must be nonzero (translated) host addresses")
    if desc_hva % 16 or avail_hva % 2 or used_hva % 4:
        raise ValueError(
            f"split ring misaligned: desc {desc_hva:#x} (16), avail {avail_hva:#x} (2), used {used_hva:#x} (4)"
        )
    return SplitVring(
        desc_u64=host_u64(desc_hva, 2 * num),
        desc_u32=host_u32(desc_hva, 4 * num),
        desc_u16=host_u16(desc_hva, 8 * num),
        avail=host_u16(avail_hva, 3 + num),
        used_u16=host_u16(used_hva, 3 + 4 * num),
        used_u32=host_u32(used_hva, 1 + 2 * num),
    )


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------

# The kernels are compiled without the numba runtime (``kernel`` of
# :mod:`dataplane.rings.jit`, which says why): with NRT every call from a
# caller's poll loop did ~12 atomic incref/decref calls (one per array of a
# SplitVring/SplitDrvState), 25-40 ns per call instead of ~2 ns.  Helpers
# the kernels call are either NRT-free too or inlined at the numba IR level
# (``inline_kernel``: translate, host_u*, vring_need_event, count_error).
# Indirect tables live at translated host addresses: ``carray``
# (regions.host_u64) needs NRT, so the kernels read and write table words
# with ``load_u64`` / ``store_u64``.

_U32 = np.uint64(0xFFFFFFFF)
_U16 = np.uint64(0xFFFF)
_S32 = np.uint64(32)
_S48 = np.uint64(48)
_S33 = np.uint64(33)  # VRING_DESC_F_WRITE's bit in the second descriptor word
_CHAIN_BITS = np.uint64((VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT) << 32)


@inline_kernel
def _desc_word(length, flags, nxt):
    """Second u64 of a descriptor: len | flags << 32 | next << 48."""
    return (
        (np.uint64(length) & _U32)
        | ((np.uint64(flags) & _U16) << _S32)
        | ((np.uint64(nxt) & _U16) << _S48)
    )


# ---------------------------------------------------------------------------
# Device side
# ---------------------------------------------------------------------------

# split-specific device slots (after the per-code error counters)
SPLIT_DEV_SIGNALLED_VALID = STATE_ERR_BASE + N_ERR  # 0 until the first interrupt decision
SPLIT_DEV_SHADOW_BASE = STATE_SLOTS  # shadow used ring: 2 int64 words per entry


def split_dev_state_size(num) -> int:
    return SPLIT_DEV_SHADOW_BASE + 2 * check_queue_size(num)


def split_dev_init(state, num, features=0, base=0):
    """Initialise a device state array in place (control plane)."""
    num = check_queue_size(num)
    if state.dtype != np.int64 or state.shape[0] < split_dev_state_size(num):
        raise ValueError(f"device state must be int64[{split_dev_state_size(num)}]")
    state[:] = 0
    state[STATE_SIZE] = num
    state[STATE_FEATURES] = int(features) & (FEAT_EVENT_IDX | FEAT_IN_ORDER | FEAT_INDIRECT)
    split_dev_set_base(state, base)
    return state


def split_dev_state(num, features=0, base=0) -> np.ndarray:
    """A fresh device state array for a queue of ``num`` entries."""
    return split_dev_init(np.zeros(split_dev_state_size(num), np.int64), num, features, base)


@kernel
def split_dev_get_base(state):
    """``last_avail_idx`` for GET_VRING_BASE (does not stop or reset anything)."""
    return state[STATE_LAST_AVAIL]


@kernel
def split_dev_set_base(state, idx):
    """SET_VRING_BASE: ``last_avail_idx = last_used_idx = idx``; drops the shadow, clears BROKEN."""
    idx = np.int64(idx) & 0xFFFF
    state[STATE_LAST_AVAIL] = idx
    state[STATE_LAST_USED] = idx
    state[STATE_SIGNALLED_USED] = idx
    state[SPLIT_DEV_SIGNALLED_VALID] = 0
    state[STATE_SHADOW_N] = 0
    state[STATE_BROKEN] = 0


@kernel
def split_dev_sync_from_used(vr, state):
    """Reconnect without inflight tracking (DPDK's rule): when our last_used_idx
    differs from the ring's used idx, resume both indices from the ring's used idx
    (chains that were fetched but never completed are offered again).  Returns
    True when the indices were changed.  Call before the ring runs."""
    u = np.int64(load_acquire(vr.used_u16, 1))
    if u == state[STATE_LAST_USED]:
        return False
    split_dev_set_base(state, u)
    return True


@kernel
def split_dev_avail_count(vr, state):
    """Chains the driver has made available that we have not fetched yet (0 if broken)."""
    if state[STATE_BROKEN]:
        return 0
    n = (np.int64(load_acquire(vr.avail, 1)) - state[STATE_LAST_AVAIL]) & 0xFFFF
    if n > state[STATE_SIZE]:
        return 0
    return n


@inline_kernel
def _dev_buffer(regions, addr, length, flags, seen_write, seg_addr, seg_len, seg_write, s, smax):
    """Checks and records one buffer; returns (status, seen_write)."""
    if flags & VRING_DESC_F_WRITE:
        seen_write = True
    elif seen_write:
        return ERR_LAYOUT, seen_write
    if s >= smax:
        return ERR_TOO_MANY_SEGS, seen_write
    hva = translate(regions, addr, length)
    if hva == 0:
        return ERR_ADDR, seen_write
    seg_addr[s] = hva
    seg_len[s] = length
    seg_write[s] = 1 if flags & VRING_DESC_F_WRITE else 0
    return OK, seen_write


@kernel
def _dev_walk(vr, regions, num, feats, head, seg_addr, seg_len, seg_write, s0, smax):
    """Walks the chain at ``head``; returns (status, ring descriptors, segments, total bytes).

    Segments go to ``seg_*[s0:smax]``.  Bounded: at most ``num`` ring
    descriptors and ``table length / 16`` indirect ones are visited.
    """
    ndesc = 0
    s = s0
    total = np.uint64(0)
    seen_write = False
    idx = np.int64(head)
    while True:
        if idx >= num:
            return ERR_DESC_INDEX, ndesc, s - s0, total
        ndesc += 1
        if ndesc > num:
            return ERR_CHAIN_LOOP, ndesc, s - s0, total
        addr = vr.desc_u64[2 * idx]
        w = vr.desc_u64[2 * idx + 1]
        length = np.int64(w & _U32)
        flags = np.int64((w >> _S32) & _U16)
        if flags & VRING_DESC_F_INDIRECT:
            # One level of indirection, always the last ring descriptor (NEXT is forbidden).
            if (flags & VRING_DESC_F_NEXT) or not (feats & FEAT_INDIRECT):
                return ERR_INDIRECT, ndesc, s - s0, total
            if length == 0 or (length & (DESC_SIZE - 1)):
                return ERR_INDIRECT, ndesc, s - s0, total
            thva = translate(regions, addr, length)
            if thva == 0:
                return ERR_INDIRECT, ndesc, s - s0, total
            tn = length >> 4
            j = np.int64(0)
            seen = 0
            while True:
                if j >= tn:
                    return ERR_DESC_INDEX, ndesc, s - s0, total
                seen += 1
                if seen > tn:
                    return ERR_CHAIN_LOOP, ndesc, s - s0, total
                taddr = load_u64(thva, 2 * j)
                tw = load_u64(thva, 2 * j + 1)
                tlen = np.int64(tw & _U32)
                tflags = np.int64((tw >> _S32) & _U16)
                if tflags & VRING_DESC_F_INDIRECT:
                    return ERR_INDIRECT, ndesc, s - s0, total
                st, seen_write = _dev_buffer(
                    regions, taddr, tlen, tflags, seen_write, seg_addr, seg_len, seg_write, s, smax
                )
                if st != OK:
                    return st, ndesc, s - s0, total
                s += 1
                total += np.uint64(tlen)
                if not (tflags & VRING_DESC_F_NEXT):
                    return OK, ndesc, s - s0, total
                j = np.int64(tw >> _S48)
        st, seen_write = _dev_buffer(regions, addr, length, flags, seen_write, seg_addr, seg_len, seg_write, s, smax)
        if st != OK:
            return st, ndesc, s - s0, total
        s += 1
        total += np.uint64(length)
        if not (flags & VRING_DESC_F_NEXT):
            return OK, ndesc, s - s0, total
        idx = np.int64(w >> _S48)


#: Walk the chain at a given head (public name of :func:`_dev_walk`): a device that
#: resubmits a chain it fetched before (inflight tracking) parses it again from the table.
split_dev_walk = _dev_walk


@kernel
def split_dev_fetch(vr, state, regions, chains, max_chains):
    """Fetches up to ``max_chains`` available chains into ``chains``; returns how many.

    One acquire load of avail idx.  A chain that fails a check is still
    returned, with ``status[c] = ERR_*`` and no segments, and is counted with
    :func:`count_error`: the caller completes it with length 0.  When the
    driver's avail idx is more than ``num`` ahead of ``last_avail_idx`` the
    queue is broken (``ERR_AVAIL_IDX``, ``STATE_BROKEN``): 0 until
    :func:`split_dev_set_base` / re-init.

    A chain that does not fit the *remaining* segment space ends the burst
    early (it is fetched next time); only a chain with more segments than
    the whole ``chains.seg_*`` arrays fails with ``ERR_TOO_MANY_SEGS``.
    """
    if state[STATE_BROKEN]:
        return 0
    num = state[STATE_SIZE]
    mask = num - 1
    feats = state[STATE_FEATURES]
    last = state[STATE_LAST_AVAIL]
    n = (np.int64(load_acquire(vr.avail, 1)) - last) & 0xFFFF
    if n == 0:
        return 0
    if n > num:
        state[STATE_BROKEN] = 1
        count_error(state, ERR_AVAIL_IDX)
        return 0
    if n > max_chains:
        n = max_chains
    if n > chains.head.shape[0]:
        n = chains.head.shape[0]
    smax = chains.seg_addr.shape[0]
    if chains.seg_len.shape[0] < smax:
        smax = chains.seg_len.shape[0]
    if chains.seg_write.shape[0] < smax:
        smax = chains.seg_write.shape[0]
    # The descriptors of the burst were written by the driver's cpu: each is a cross-cpu miss, and
    # the walk below reaches them one after the other behind its checks.  Asked for together up
    # front, the misses overlap (as the packed fetch does with its ring lines).
    dbase = np.uint64(vr.desc_u64.ctypes.data)
    for c in range(n):
        h = np.int64(vr.avail[2 + ((last + c) & mask)])
        if h < num:
            prefetch(dbase + np.uint64(16 * h))
    s = 0
    c = 0
    while c < n:
        head = np.int64(vr.avail[2 + ((last + c) & mask)])
        # Fast path: a single direct descriptor (the common Rx/Tx buffer).
        hva = np.uint64(0)
        if head < num and s < smax:
            w = vr.desc_u64[2 * head + 1]
            if (w & _CHAIN_BITS) == 0:
                length = w & _U32
                hva = translate(regions, vr.desc_u64[2 * head], length)
        if hva != 0:
            chains.seg_addr[s] = hva
            chains.seg_len[s] = length
            chains.seg_write[s] = np.uint8((w >> _S33) & np.uint64(1))
            st, nd, ns, total = OK, 1, 1, length
        else:
            st, nd, ns, total = _dev_walk(
                vr, regions, num, feats, head, chains.seg_addr, chains.seg_len, chains.seg_write, s, smax
            )
        if st == ERR_TOO_MANY_SEGS and s > 0:
            break  # retry this chain with the whole seg space next burst
        chains.head[c] = head
        chains.ndesc[c] = nd
        chains.seg_start[c] = s
        chains.status[c] = st
        if st == OK:
            chains.seg_count[c] = ns
            chains.total_len[c] = total
            s += ns
        else:
            chains.seg_count[c] = 0
            chains.total_len[c] = 0
            count_error(state, st)
        c += 1
    state[STATE_LAST_AVAIL] = (last + c) & 0xFFFF
    state[STATE_CHAINS] += c
    return c


@kernel
def _dev_write_shadow(vr, state):
    """Copies the shadow entries to the used ring and release-stores used idx once."""
    k = state[STATE_SHADOW_N]
    if k == 0:
        return
    mask = state[STATE_SIZE] - 1
    u = state[STATE_LAST_USED]
    done = 0
    for e in range(k):
        word = state[SPLIT_DEV_SHADOW_BASE + 2 * e]
        slot = u & mask
        vr.used_u32[1 + 2 * slot] = word & 0xFFFFFFFF
        vr.used_u32[2 + 2 * slot] = state[SPLIT_DEV_SHADOW_BASE + 2 * e + 1]
        cnt = word >> 32
        u += cnt
        done += cnt
    u &= 0xFFFF
    store_release(vr.used_u16, 1, u)
    state[STATE_LAST_USED] = u
    state[STATE_USED] += done
    state[STATE_SHADOW_N] = 0


@inline_kernel
def _dev_shadow_add(vr, state, head, length, count):
    k = state[STATE_SHADOW_N]
    if k >= state[STATE_SIZE]:
        _dev_write_shadow(vr, state)  # full: publish now; the interrupt decision stays for flush
        k = 0
    state[SPLIT_DEV_SHADOW_BASE + 2 * k] = (np.int64(head) & 0xFFFFFFFF) | (np.int64(count) << 32)
    state[SPLIT_DEV_SHADOW_BASE + 2 * k + 1] = np.int64(length) & 0xFFFFFFFF
    state[STATE_SHADOW_N] = k + 1


@kernel
def split_dev_push_used(vr, state, head, length):
    """Queues a used entry ``{head, length}`` in the shadow used ring (not visible yet)."""
    _dev_shadow_add(vr, state, head, length, 1)


@kernel
def split_dev_push_used_inorder(vr, state, head, length, count):
    """IN_ORDER batch: one used entry for ``count`` chains completed in ring order.

    ``head`` is the head of the *last* chain of the batch and ``length`` its
    used length; the used idx advances by ``count`` (virtio 1.1 §2.7.9: the
    device skips forward in the used ring by the size of the batch).  The
    driver takes the skipped chains' lengths to be their device-writable size.
    """
    if count <= 0:
        return
    _dev_shadow_add(vr, state, head, length, count)


@kernel
def split_dev_flush_used(vr, state):
    """Publishes the shadow used entries (one release store); returns whether to interrupt.

    EVENT_IDX: ``vring_need_event(used_event, new, old)`` where ``old`` is the
    used idx at the previous decision (the first decision with new entries
    after init / SET_VRING_BASE always interrupts: the driver's used_event
    may predate the base).  Otherwise: interrupt unless the driver set
    ``VRING_AVAIL_F_NO_INTERRUPT``.  No new used entries since the last
    decision: no interrupt.
    """
    _dev_write_shadow(vr, state)
    new = state[STATE_LAST_USED]
    old = state[STATE_SIGNALLED_USED]
    valid = state[SPLIT_DEV_SIGNALLED_VALID]
    if new == old:
        return False
    state[STATE_SIGNALLED_USED] = new
    state[SPLIT_DEV_SIGNALLED_VALID] = 1
    fence()  # used idx store before the load of the driver's suppression field
    if state[STATE_FEATURES] & FEAT_EVENT_IDX:
        if not valid:
            return True
        ev = np.int64(load_acquire(vr.avail, 2 + state[STATE_SIZE]))
        return vring_need_event(ev, new, old)
    return (np.int64(load_acquire(vr.avail, 0)) & VRING_AVAIL_F_NO_INTERRUPT) == 0


@kernel
def split_dev_enable_notify(vr, state, enable):
    """Asks the driver for kicks (``enable``) or not; returns True when chains are pending.

    Without EVENT_IDX this sets/clears ``VRING_USED_F_NO_NOTIFY``.  With
    EVENT_IDX, enabling writes ``avail_event = last_avail_idx`` and disabling
    writes nothing (the driver then kicks at most once more).  After
    enabling, a full fence and a re-read of avail idx: a True result means
    the driver added chains before it could see our request, so keep polling
    instead of sleeping.
    """
    num = state[STATE_SIZE]
    if state[STATE_FEATURES] & FEAT_EVENT_IDX:
        if enable:
            store_relaxed(vr.used_u16, 2 + 4 * num, state[STATE_LAST_AVAIL])
    else:
        flags = np.int64(load_acquire(vr.used_u16, 0))
        if enable:
            flags &= ~VRING_USED_F_NO_NOTIFY
        else:
            flags |= VRING_USED_F_NO_NOTIFY
        store_relaxed(vr.used_u16, 0, flags)
    if not enable:
        return False
    fence()
    return split_dev_avail_count(vr, state) != 0


# ---------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------

SplitDrvState = namedtuple("SplitDrvState", ["state", "cookie", "ndesc", "wlen", "dnext"])

DRV_SIZE = 0  # queue size
DRV_FEATURES = 1  # FEAT_* mask
DRV_FREE_HEAD = 2  # first free descriptor (IN_ORDER: next descriptor in ring order)
DRV_NUM_FREE = 3  # free descriptors
DRV_AVAIL_IDX = 4  # avail idx shadow (u16, published by split_drv_publish)
DRV_KICKED_AVAIL = 5  # avail idx at the last publish (EVENT_IDX "old")
DRV_LAST_USED = 6  # next used ring entry to read (u16)
DRV_OLDEST = 7  # IN_ORDER: head of the oldest outstanding chain
DRV_BATCH_ID = 8  # IN_ORDER: id of the pending batch entry, -1 if none
DRV_BATCH_LEN = 9  # IN_ORDER: its length
DRV_BROKEN = 10  # nonzero: the device returned an impossible used entry / idx
DRV_ADDED = 11  # chains added (counter)
DRV_COMPLETED = 12  # chains harvested (counter)
DRV_BAD_USED = 13  # bad used entries / used idx jumps seen (counter)
DRV_INTR_ENABLED = 14  # last split_drv_enable_interrupt request
DRV_SLOTS = 16


def split_drv_state(num, features=0) -> SplitDrvState:
    """Fresh (uninitialised) driver state arrays for a queue of ``num`` entries."""
    num = check_queue_size(num)
    return SplitDrvState(
        state=np.zeros(DRV_SLOTS, np.int64),
        cookie=np.zeros(num, np.uint64),
        ndesc=np.zeros(num, np.uint16),
        wlen=np.zeros(num, np.uint32),
        dnext=np.zeros(num, np.uint16),
    )


def split_drv_init(vr: SplitVring, ds: SplitDrvState, num, features=0):
    """Driver-side reset: zeroes the whole ring memory and builds the free list.

    The driver owns the ring memory; call this before handing the ring's
    addresses to the device.  Interrupts start enabled (flags 0, used_event 0).
    """
    num = check_queue_size(num)
    if vr.avail.shape[0] != 3 + num or ds.cookie.shape[0] != num:
        raise ValueError("ring views / driver state do not match the queue size")
    vr.desc_u64[:] = 0
    vr.avail[:] = 0
    vr.used_u16[:] = 0
    st = ds.state
    st[:] = 0
    st[DRV_SIZE] = num
    st[DRV_FEATURES] = int(features) & (FEAT_EVENT_IDX | FEAT_IN_ORDER | FEAT_INDIRECT)
    st[DRV_NUM_FREE] = num
    st[DRV_BATCH_ID] = -1
    st[DRV_INTR_ENABLED] = 1
    ds.cookie[:] = 0
    ds.ndesc[:] = 0
    ds.wlen[:] = 0
    ds.dnext[:] = (np.arange(num) + 1) & (num - 1)
    return ds


@kernel
def split_drv_free_count(ds):
    always_inline()  # called once per packet from the virtio-user bursts
    return ds.state[DRV_NUM_FREE]


@kernel
def split_drv_add(vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg, ind_gpa, ind_hva):
    """Adds one buffer chain; returns its head (the id used-ring entries name) or -1.

    ``seg_gpa/seg_len/seg_write[:nseg]`` describe the buffers (device-readable
    ones first).  ``ind_gpa != 0``: build an indirect table of ``nseg``
    entries at ``ind_hva`` (caller memory, ``16 * nseg`` bytes, whose
    guest-physical address is ``ind_gpa``) and use one ring descriptor.
    Not visible to the device until :func:`split_drv_publish`.  -1 when
    there are not enough free descriptors, ``nseg < 1``, an indirect table
    is asked for without FEAT_INDIRECT, or the ring is broken.
    """
    always_inline()  # called once per packet from the virtio-user bursts
    st = ds.state
    if nseg < 1 or st[DRV_BROKEN]:
        return -1
    indirect = ind_gpa != 0
    if indirect and not (st[DRV_FEATURES] & FEAT_INDIRECT):
        return -1
    need = 1 if indirect else np.int64(nseg)
    if need > st[DRV_NUM_FREE]:
        return -1
    head = st[DRV_FREE_HEAD]
    wl = np.uint64(0)
    if indirect:
        for j in range(nseg):
            f = VRING_DESC_F_NEXT if j < nseg - 1 else 0
            if seg_write[j]:
                f |= VRING_DESC_F_WRITE
                wl += np.uint64(seg_len[j])
            store_u64(ind_hva, 2 * j, np.uint64(seg_gpa[j]))
            store_u64(ind_hva, 2 * j + 1, _desc_word(seg_len[j], f, j + 1 if j < nseg - 1 else 0))
        vr.desc_u64[2 * head] = np.uint64(ind_gpa)
        vr.desc_u64[2 * head + 1] = _desc_word(DESC_SIZE * nseg, VRING_DESC_F_INDIRECT, ds.dnext[head])
        last = head
    else:
        i = head
        last = head
        for j in range(nseg):
            f = VRING_DESC_F_NEXT if j < nseg - 1 else 0
            if seg_write[j]:
                f |= VRING_DESC_F_WRITE
                wl += np.uint64(seg_len[j])
            vr.desc_u64[2 * i] = np.uint64(seg_gpa[j])
            vr.desc_u64[2 * i + 1] = _desc_word(seg_len[j], f, ds.dnext[i])
            last = i
            i = np.int64(ds.dnext[i])
    st[DRV_FREE_HEAD] = ds.dnext[last]
    st[DRV_NUM_FREE] -= need
    ds.cookie[head] = cookie
    ds.ndesc[head] = need
    ds.wlen[head] = wl if wl < np.uint64(0xFFFFFFFF) else np.uint64(0xFFFFFFFF)
    a = st[DRV_AVAIL_IDX]
    vr.avail[2 + (a & (st[DRV_SIZE] - 1))] = head
    st[DRV_AVAIL_IDX] = (a + 1) & 0xFFFF
    st[DRV_ADDED] += 1
    return head


@kernel
def split_drv_add1(vr, ds, cookie, gpa, length, write):
    """Adds a single-descriptor buffer; returns its head or -1 (the hot Rx/Tx case)."""
    always_inline()  # called once per packet from the virtio-user bursts
    st = ds.state
    if st[DRV_NUM_FREE] < 1 or st[DRV_BROKEN]:
        return -1
    head = st[DRV_FREE_HEAD]
    f = VRING_DESC_F_WRITE if write else 0
    vr.desc_u64[2 * head] = np.uint64(gpa)
    vr.desc_u64[2 * head + 1] = _desc_word(length, f, ds.dnext[head])
    st[DRV_FREE_HEAD] = ds.dnext[head]
    st[DRV_NUM_FREE] -= 1
    ds.cookie[head] = cookie
    ds.ndesc[head] = 1
    ds.wlen[head] = length if write else 0
    a = st[DRV_AVAIL_IDX]
    vr.avail[2 + (a & (st[DRV_SIZE] - 1))] = head
    st[DRV_AVAIL_IDX] = (a + 1) & 0xFFFF
    st[DRV_ADDED] += 1
    return head


@kernel
def split_drv_publish(vr, ds):
    """Makes the added chains visible (ONE release store of avail idx); returns need_kick.

    EVENT_IDX: kick iff the device's ``avail_event`` lies in the published
    range (``vring_need_event``); otherwise kick unless the device set
    ``VRING_USED_F_NO_NOTIFY``.  Nothing new since the last publish: False.
    """
    always_inline()  # called once per packet from the virtio-user bursts
    st = ds.state
    new = st[DRV_AVAIL_IDX]
    old = st[DRV_KICKED_AVAIL]
    if new == old:
        return False
    store_release(vr.avail, 1, new)
    st[DRV_KICKED_AVAIL] = new
    fence()  # avail idx store before the load of the device's suppression field
    if st[DRV_FEATURES] & FEAT_EVENT_IDX:
        ev = np.int64(load_acquire(vr.used_u16, 2 + 4 * st[DRV_SIZE]))
        return vring_need_event(ev, new, old)
    return (np.int64(load_acquire(vr.used_u16, 0)) & VRING_USED_F_NO_NOTIFY) == 0


@inline_kernel
def _drv_free_chain(ds, head):
    st = ds.state
    nd = np.int64(ds.ndesc[head])
    tail = head
    for _ in range(nd - 1):
        tail = np.int64(ds.dnext[tail])
    ds.dnext[tail] = st[DRV_FREE_HEAD]
    st[DRV_FREE_HEAD] = head
    st[DRV_NUM_FREE] += nd
    ds.ndesc[head] = 0


@kernel
def _drv_broken(st):
    st[DRV_BROKEN] = 1
    st[DRV_BAD_USED] += 1


@kernel
def split_drv_get_used(vr, ds, out_cookies, out_lens, n):
    """Harvests up to ``n`` used chains: cookies and used lengths out; returns the count.

    One acquire load of used idx; each chain's descriptors go back to the
    free list.  A used idx more than ``num`` ahead, an id that is not an
    outstanding head, or an IN_ORDER batch id that cannot be reached marks
    the queue broken (``DRV_BROKEN``; counted in ``DRV_BAD_USED``) and
    returns what was harvested before.  IN_ORDER: a used entry may stand
    for a batch (see :func:`split_dev_push_used_inorder`); chains before
    its id are reported with their device-writable size.
    """
    always_inline()  # called once per packet from the virtio-user bursts
    st = ds.state
    if st[DRV_BROKEN]:
        return 0
    num = st[DRV_SIZE]
    mask = num - 1
    last = st[DRV_LAST_USED]
    pending = (np.int64(load_acquire(vr.used_u16, 1)) - last) & 0xFFFF
    if pending == 0:
        return 0
    if pending > num:
        _drv_broken(st)
        return 0
    if n > pending:
        n = pending
    if n > out_cookies.shape[0]:
        n = out_cookies.shape[0]
    if n > out_lens.shape[0]:
        n = out_lens.shape[0]
    c = 0
    if st[DRV_FEATURES] & FEAT_IN_ORDER:
        while c < n:
            if st[DRV_BATCH_ID] < 0:
                slot = (last + c) & mask
                bid = np.int64(vr.used_u32[1 + 2 * slot])
                if bid >= num or ds.ndesc[bid] == 0:
                    _drv_broken(st)
                    break
                st[DRV_BATCH_ID] = bid
                st[DRV_BATCH_LEN] = vr.used_u32[2 + 2 * slot]
            if st[DRV_NUM_FREE] == num:
                _drv_broken(st)  # used idx covers more chains than are outstanding
                break
            head = st[DRV_OLDEST]
            if head == st[DRV_BATCH_ID]:
                out_lens[c] = st[DRV_BATCH_LEN]
                st[DRV_BATCH_ID] = -1
            else:
                out_lens[c] = ds.wlen[head]
            out_cookies[c] = ds.cookie[head]
            nd = np.int64(ds.ndesc[head])
            ds.ndesc[head] = 0
            st[DRV_NUM_FREE] += nd
            st[DRV_OLDEST] = (head + nd) & mask
            c += 1
    else:
        while c < n:
            slot = (last + c) & mask
            head = np.int64(vr.used_u32[1 + 2 * slot])
            if head >= num or ds.ndesc[head] == 0:
                _drv_broken(st)
                break
            out_cookies[c] = ds.cookie[head]
            out_lens[c] = vr.used_u32[2 + 2 * slot]
            _drv_free_chain(ds, head)
            c += 1
    st[DRV_LAST_USED] = (last + c) & 0xFFFF
    st[DRV_COMPLETED] += c
    return c


@kernel
def split_drv_enable_interrupt(vr, ds, enable):
    """Asks the device for used-buffer interrupts (``enable``) or not; returns True if used entries are pending.

    Without EVENT_IDX this clears/sets ``VRING_AVAIL_F_NO_INTERRUPT``.  With
    EVENT_IDX, enabling writes ``used_event = last_used_idx`` and disabling
    writes nothing (at most one more interrupt).  After enabling: a full
    fence and a re-read of used idx; True means harvest again before
    sleeping.
    """
    st = ds.state
    num = st[DRV_SIZE]
    if st[DRV_FEATURES] & FEAT_EVENT_IDX:
        if enable:
            store_relaxed(vr.avail, 2 + num, st[DRV_LAST_USED])
    else:
        flags = np.int64(load_acquire(vr.avail, 0))
        if enable:
            flags &= ~VRING_AVAIL_F_NO_INTERRUPT
        else:
            flags |= VRING_AVAIL_F_NO_INTERRUPT
        store_relaxed(vr.avail, 0, flags)
    st[DRV_INTR_ENABLED] = 1 if enable else 0
    if not enable:
        return False
    fence()
    return ((np.int64(load_acquire(vr.used_u16, 1)) - st[DRV_LAST_USED]) & 0xFFFF) != 0
