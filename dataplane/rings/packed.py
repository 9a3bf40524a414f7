"""The virtio *packed* virtqueue (virtio 1.1 §2.8): layout and numba kernels for both sides.

Memory layout (little endian; contiguous form from :func:`packed_layout`, or
three separate areas from ``SET_VRING_ADDR``)::

    desc[num]       16 B each: addr u64 | len u32 | id u16 | flags u16   (16-aligned)
    driver area     off_wrap u16 | flags u16   driver event suppression  (4-aligned)
    device area     off_wrap u16 | flags u16   device event suppression  (4-aligned)

Any queue size 1..32768 is valid (no power-of-two rule for packed rings).
Both wrap counters start at 1 and the ring starts zeroed.  A descriptor is
*available* in lap ``w`` when ``AVAIL == w`` and ``USED != w``, *used* when
``AVAIL == USED == w``.  The flags word is the publication point: it is read
with :func:`load_acquire` and written with :func:`store_release`, and the
first descriptor of a chain (or of a batch of used entries) is always the
one written last.

Kernels work on a :class:`PackedVring`, a namedtuple of integer views of that
memory, so one compiled kernel serves a ring in a numpy buffer and a ring in
guest memory mapped by vhost.

Device side (vhost library, emulated vDPA devices)
---------------------------------------------------
State is one ``int64`` array from :func:`packed_dev_state` (the ``STATE_*``
slots of :mod:`dataplane.rings.virtqueue` plus the ``PACKED_DEV_*`` slots
below).  Used in it: ``STATE_SIZE``, ``STATE_FEATURES``, ``STATE_LAST_AVAIL``
+ ``STATE_AVAIL_WRAP`` (next slot to fetch and its lap), ``STATE_LAST_USED``
+ ``STATE_USED_WRAP`` (next used slot the driver can see), ``STATE_SHADOW_N``
(used entries pushed, not yet published), ``STATE_SIGNALLED_USED`` (used slot
at the last interrupt decision, -1 = none yet), ``STATE_CHAINS``,
``STATE_USED``, ``STATE_ERRORS``, ``STATE_ERR_BASE + code``, ``STATE_BROKEN``
(set only by the control plane; fetch returns 0 while it is set).  A burst::

    n = packed_dev_fetch(vr, state, regions, chains, 32)
    for c in range(n):
        ... copy using chains.seg_* (status != 0: touch nothing, complete with len 0) ...
        packed_dev_push_used(vr, state, chains.head[c], written, chains.ndesc[c])
        # IN_ORDER and lengths do not matter (Tx): packed_dev_push_used_inorder(...)
        # folds the burst into ONE used descriptor (id of the last buffer)
    if packed_dev_flush_used(vr, state):    # head entry's flags last, then the decision
        kick the call eventfd
    # before sleeping on the kick fd:
    if packed_dev_enable_notify(vr, state, True): keep polling

``push_used`` writes the entry's id and len into the ring at once, and its
flags too unless it is the first entry since the last flush (the *head*);
``flush`` writes the head's flags last with a release store.  The driver
polls only the head's slot, so it sees the whole batch at once (the spec's
"multi-buffer requests" rule; DPDK flushes its shadow the same way).

Driver side (virtio-user PMD)
-----------------------------
State is a :class:`PackedDrvState` namedtuple from :func:`packed_drv_state`:
``state`` (``int64``, ``DRV_*`` slots), per-id ``cookie`` (uint64) and
``ndesc`` (uint16, ring slots of the outstanding buffer; 0 = id is free) and
``free_ids`` (uint16 ring: the FIFO of free buffer ids).  Ids are handed out
in FIFO order, which with IN_ORDER makes them come out 0, 1, 2, ... so the
oldest outstanding buffer is always the id just behind the free FIFO's tail.
A burst::

    n = packed_drv_get_used(vr, ds, cookies_out, lens_out, 32)   # free old buffers
    for each packet: id = packed_drv_add1(vr, ds, cookie, gpa, len, write)
                     (or packed_drv_add(vr, ds, cookie, gpa[:k], len[:k], wr[:k], k, ind_gpa, ind_hva))
    if packed_drv_need_kick(vr, ds):
        kick the kick eventfd

Each add is visible to the device as soon as it returns (its head's flags
are its publication); the kick decision covers every add since the previous
decision.

Features are the compact ``FEAT_*`` mask of :mod:`dataplane.rings.virtqueue`
(EVENT_IDX, IN_ORDER, INDIRECT), fixed at init.

Performance notes
-----------------
* Kernels are compiled with ``_nrt=False`` (:mod:`dataplane.rings.jit`): no
  reference counting of the array arguments at each call, which otherwise
  costs more than the work itself.  They never allocate; indirect tables are read and
  written through raw loads/stores at translated addresses.
* The fetch has two fast paths with results identical to the chain walk
  (the tests compare all three against the model): DPDK's batch of four
  single descriptors at a 4-aligned slot (one test of the four flags words),
  and a single descriptor without NEXT/INDIRECT.
* Call the kernels from a numba loop; from Python each call costs the
  dispatcher's argument unboxing (microseconds).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from dataplane.rings.atomics import fence, load_acquire, store_relaxed, store_release
from dataplane.rings.jit import always_inline, inline_kernel, kernel
from dataplane.rings.mem import load_u16, load_u32, load_u64, prefetch, prefetchw, store_u16, store_u32, store_u64
from dataplane.rings.regions import host_u16, host_u32, host_u64, translate
from dataplane.rings.virtqueue import (
    DESC_SIZE,
    ERR_ADDR,
    ERR_CHAIN_LOOP,
    ERR_DESC_INDEX,
    ERR_INDIRECT,
    ERR_LAYOUT,
    ERR_TOO_MANY_SEGS,
    FEAT_EVENT_IDX,
    FEAT_IN_ORDER,
    FEAT_INDIRECT,
    FEAT_READ_ONLY,
    MAX_QUEUE_SIZE,
    N_ERR,
    OK,
    STATE_AVAIL_WRAP,
    STATE_BROKEN,
    STATE_CHAINS,
    STATE_ERR_BASE,
    STATE_ERRORS,
    STATE_FEATURES,
    STATE_LAST_AVAIL,
    STATE_LAST_USED,
    STATE_SHADOW_N,
    STATE_SIGNALLED_USED,
    STATE_SIZE,
    STATE_SLOTS,
    STATE_USED,
    STATE_USED_WRAP,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_PACKED_DESC_F_AVAIL,
    VRING_PACKED_DESC_F_USED,
    VRING_PACKED_EVENT_FLAG_DESC,
    VRING_PACKED_EVENT_FLAG_DISABLE,
    VRING_PACKED_EVENT_FLAG_ENABLE,
    VRING_PACKED_EVENT_F_WRAP_CTR,
    count_error,
    vring_need_event,
)

__all__ = [
    "packed_position_from_flags",
    "PackedLayout",
    "PackedVring",
    "PackedDrvState",
    "check_packed_size",
    "packed_layout",
    "packed_vring_from_buffer",
    "packed_vring_from_addrs",
    "packed_vring_alloc",
    # device
    "PACKED_DEV_SHADOW_IDX",
    "PACKED_DEV_SHADOW_WRAP",
    "PACKED_DEV_SHADOW_LAST",
    "PACKED_DEV_SHADOW_LAST_WRAP",
    "PACKED_DEV_HEAD_FLAGS",
    "PACKED_DEV_BATCHED",
    "PACKED_FEAT_NO_BATCH",
    "PACKED_FEAT_NO_PREFETCH",
    "packed_dev_state",
    "packed_dev_init",
    "packed_dev_get_base",
    "packed_dev_get_used_base",
    "packed_dev_set_base",
    "packed_dev_avail_pending",
    "packed_dev_fetch",
    "packed_dev_push_used",
    "packed_dev_push_used_inorder",
    "packed_dev_flush_used",
    "packed_dev_enable_notify",
    # driver
    "DRV_SIZE",
    "DRV_FEATURES",
    "DRV_AVAIL_IDX",
    "DRV_AVAIL_WRAP",
    "DRV_USED_IDX",
    "DRV_USED_WRAP",
    "DRV_NUM_FREE",
    "DRV_FREE_HEAD",
    "DRV_FREE_COUNT",
    "DRV_NUM_ADDED",
    "DRV_INORDER_SKIP",
    "DRV_BROKEN",
    "DRV_ADDED",
    "DRV_COMPLETED",
    "DRV_BAD_USED",
    "DRV_INTR_ENABLED",
    "DRV_BATCH_HEAD",
    "DRV_BATCH_FLAGS",
    "DRV_SLOTS",
    "packed_drv_state",
    "packed_drv_init",
    "packed_drv_free_count",
    "packed_drv_add",
    "packed_drv_add1",
    "packed_drv_add1_batch",
    "packed_drv_publish",
    "packed_drv_prefetch_avail",
    "packed_drv_need_kick",
    "packed_drv_used_pending",
    "packed_drv_get_used",
    "packed_drv_enable_interrupt",
]

F_NEXT = VRING_DESC_F_NEXT
F_WRITE = VRING_DESC_F_WRITE
F_INDIRECT = VRING_DESC_F_INDIRECT
F_AVAIL = VRING_PACKED_DESC_F_AVAIL
F_USED = VRING_PACKED_DESC_F_USED
F_AU = F_AVAIL | F_USED
# flags a descriptor must NOT have to take the 4-descriptor batch path
_SINGLE_MASK = F_AU | F_NEXT | F_INDIRECT
WRAP_BIT = 1 << VRING_PACKED_EVENT_F_WRAP_CTR  # 0x8000 in off_wrap / base values
OFF_MASK = WRAP_BIT - 1
EVENT_FLAGS_MASK = 3  # desc_event_flags is 2 bits; the rest is reserved

# Kernels are compiled without NRT (``kernel`` of :mod:`dataplane.rings.jit`,
# which says why): with NRT every call of a non-inlined kernel increfs and
# decrefs each array argument — 16 atomic read-modify-writes for
# packed_dev_fetch — which measured 0.1-0.6 us per call here (add1 56 ns,
# get_used 236 ns, fetch 600 ns on an empty ring; 5, 23 and ~30 ns without).
# Indirect tables (found at run time in guest memory) are read and written
# with the raw ``load_uNN`` / ``store_uNN`` of mem.py; their ordering comes
# from the acquire load of the ring descriptor.

# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------

PackedLayout = namedtuple(
    "PackedLayout",
    [
        "num",
        "desc_offset",  # 0
        "desc_size",  # 16 * num
        "driver_offset",  # driver event suppression (off_wrap u16, flags u16)
        "device_offset",  # device event suppression
        "event_size",  # 4
        "total_size",
    ],
)

PackedVring = namedtuple(
    "PackedVring",
    [
        "desc_u64",  # uint64[2*num]: addr at [2i]
        "desc_u32",  # uint32[4*num]: len at [4i+2]
        "desc_u16",  # uint16[8*num]: id at [8i+6], flags at [8i+7]
        "driver_event",  # uint16[2]: off_wrap [0], flags [1]  (written by the driver)
        "device_event",  # uint16[2]: off_wrap [0], flags [1]  (written by the device)
    ],
)


def check_packed_size(num) -> int:
    """``num`` as an int if it is a valid packed queue size (any integer in 1..32768)."""
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)):
        raise ValueError(f"packed queue size must be an integer, got {num!r}")
    num = int(num)
    if num < 1 or num > MAX_QUEUE_SIZE:
        raise ValueError(f"packed queue size must be in 1..{MAX_QUEUE_SIZE} (any value, not only powers of two), got {num}")
    return num


def packed_layout(num, event_align=64) -> PackedLayout:
    """Offsets of the three areas when the ring lives in one buffer.

    The two event suppression structures get a cache line each
    (``event_align``, at least the spec's 4) so the driver's and the device's
    writes do not share a line.
    """
    num = check_packed_size(num)
    if event_align < 4 or event_align & (event_align - 1):
        raise ValueError(f"event_align must be a power of two >= 4, got {event_align}")
    desc_size = DESC_SIZE * num
    drv = (desc_size + event_align - 1) & ~(event_align - 1)
    dev = drv + event_align
    return PackedLayout(num, 0, desc_size, drv, dev, 4, dev + event_align)


def packed_vring_from_buffer(buf, num, offset=0, event_align=64) -> PackedVring:
    """Views of a ring laid out by :func:`packed_layout` at ``buf[offset:]`` (a uint8 array)."""
    lay = packed_layout(num, event_align)
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
        raise ValueError("ring buffer must be a 1-d uint8 numpy array")
    if offset < 0 or offset + lay.total_size > buf.shape[0]:
        raise ValueError(f"ring of {lay.num} entries needs {lay.total_size} bytes at offset {offset}, buffer has {buf.shape[0]}")
    if (buf.ctypes.data + offset) % 16:
        raise ValueError("packed descriptor ring must be 16-byte aligned")
    desc = buf[offset : offset + lay.desc_size]
    return PackedVring(
        desc_u64=desc.view(np.uint64),
        desc_u32=desc.view(np.uint32),
        desc_u16=desc.view(np.uint16),
        driver_event=buf[offset + lay.driver_offset : offset + lay.driver_offset + 4].view(np.uint16),
        device_event=buf[offset + lay.device_offset : offset + lay.device_offset + 4].view(np.uint16),
    )


@njit(cache=True)  # returns arrays: needs NRT
def _vring_from_addrs(desc_hva, driver_hva, device_hva, num):
    return PackedVring(
        host_u64(desc_hva, 2 * num),
        host_u32(desc_hva, 4 * num),
        host_u16(desc_hva, 8 * num),
        host_u16(driver_hva, 2),
        host_u16(device_hva, 2),
    )


def packed_vring_from_addrs(desc_hva, driver_hva, device_hva, num) -> PackedVring:
    """Views of a ring in mapped memory (host addresses from translating SET_VRING_ADDR).

    The caller keeps the mapping alive as long as the views are used.
    """
    num = check_packed_size(num)
    for name, addr, align in (("descriptor ring", desc_hva, 16), ("driver area", driver_hva, 4), ("device area", device_hva, 4)):
        if not addr:
            raise ValueError(f"{name} address is 0 (not mapped)")
        if addr % align:
            raise ValueError(f"{name} address {addr:#x} is not {align}-byte aligned")
    return _vring_from_addrs(np.uint64(desc_hva), np.uint64(driver_hva), np.uint64(device_hva), np.int64(num))


def packed_vring_alloc(num, event_align=64):
    """A zeroed, page-aligned buffer holding a ring of ``num`` entries, and its views."""
    lay = packed_layout(num, event_align)
    raw = np.zeros(lay.total_size + 4096, np.uint8)
    off = (-raw.ctypes.data) % 4096
    buf = raw[off : off + lay.total_size]
    return buf, packed_vring_from_buffer(buf, num, 0, event_align)


# ---------------------------------------------------------------------------
# Device side
# ---------------------------------------------------------------------------

_P = STATE_ERR_BASE + N_ERR
PACKED_DEV_SHADOW_IDX = _P + 0  # slot where the next pushed used entry goes
PACKED_DEV_SHADOW_WRAP = _P + 1  # its lap
PACKED_DEV_SHADOW_LAST = _P + 2  # slot of the last pushed entry (in-order merge)
PACKED_DEV_SHADOW_LAST_WRAP = _P + 3  # its lap
PACKED_DEV_HEAD_FLAGS = _P + 4  # flags the head entry gets at flush
PACKED_DEV_BATCHED = _P + 5  # chains fetched through the 4-descriptor batch path (counter)
assert PACKED_DEV_BATCHED < STATE_SLOTS

# Test/diagnostic switch in the features word: never take the batch path.
PACKED_FEAT_NO_BATCH = 1 << 8
# Test/diagnostic switch: no prefetch of the burst's descriptor lines at the start of a fetch.
PACKED_FEAT_NO_PREFETCH = 1 << 9
_FEAT_MASK = FEAT_EVENT_IDX | FEAT_IN_ORDER | FEAT_INDIRECT | FEAT_READ_ONLY | PACKED_FEAT_NO_BATCH | PACKED_FEAT_NO_PREFETCH


def packed_dev_init(state, num, features=0, base=WRAP_BIT):
    """Initialise a device state array in place (control plane).

    ``base`` is the ``SET_VRING_BASE`` value (``last_avail | wrap << 15``);
    the default is a fresh ring: slot 0, wrap counter 1.
    """
    num = check_packed_size(num)
    if state.dtype != np.int64 or state.ndim != 1 or state.shape[0] < STATE_SLOTS:
        raise ValueError(f"device state must be int64[{STATE_SLOTS}]")
    state[:] = 0
    state[STATE_SIZE] = num
    state[STATE_FEATURES] = int(features) & _FEAT_MASK
    packed_dev_set_base(state, base)
    return state


def packed_dev_state(num, features=0, base=WRAP_BIT) -> np.ndarray:
    """A fresh device state array for a queue of ``num`` entries."""
    return packed_dev_init(np.zeros(STATE_SLOTS, np.int64), num, features, base)


@kernel
def packed_dev_get_base(state):
    """GET_VRING_BASE value: ``last_avail | avail_wrap << 15`` (nothing is stopped or reset)."""
    return state[STATE_LAST_AVAIL] | (state[STATE_AVAIL_WRAP] << VRING_PACKED_EVENT_F_WRAP_CTR)


@kernel
def packed_dev_get_used_base(state):
    """``last_used | used_wrap << 15`` (published used position; QEMU puts it in bits 16..31)."""
    return state[STATE_LAST_USED] | (state[STATE_USED_WRAP] << VRING_PACKED_EVENT_F_WRAP_CTR)


@kernel
def packed_dev_set_base(state, base, used_base=-1):
    """SET_VRING_BASE: fetch resumes at ``base & 0x7fff`` in lap ``base >> 15``.

    The used position is ``used_base`` (same encoding) or, when -1, the same
    as the avail position (no buffers in flight).  Drops unflushed used
    entries, forgets the last interrupt decision, clears BROKEN.  Raises
    ValueError if an offset is not below the queue size.
    """
    num = state[STATE_SIZE]
    base = np.int64(base) & 0xFFFF
    if used_base < 0:
        used_base = base
    used_base = np.int64(used_base) & 0xFFFF
    if (base & OFF_MASK) >= num or (used_base & OFF_MASK) >= num:
        raise ValueError("packed vring base offset not below the queue size")
    state[STATE_LAST_AVAIL] = base & OFF_MASK
    state[STATE_AVAIL_WRAP] = base >> VRING_PACKED_EVENT_F_WRAP_CTR
    state[STATE_LAST_USED] = used_base & OFF_MASK
    state[STATE_USED_WRAP] = used_base >> VRING_PACKED_EVENT_F_WRAP_CTR
    state[PACKED_DEV_SHADOW_IDX] = state[STATE_LAST_USED]
    state[PACKED_DEV_SHADOW_WRAP] = state[STATE_USED_WRAP]
    state[PACKED_DEV_SHADOW_LAST] = state[STATE_LAST_USED]
    state[PACKED_DEV_SHADOW_LAST_WRAP] = state[STATE_USED_WRAP]
    state[PACKED_DEV_HEAD_FLAGS] = 0
    state[STATE_SHADOW_N] = 0
    state[STATE_SIGNALLED_USED] = -1
    state[STATE_BROKEN] = 0


def packed_position_from_flags(flags: np.ndarray) -> tuple[int, int] | None:
    """Where the device stands on a packed ring, read from its descriptors' flags alone:
    ``(index, wrap counter)`` of the next slot to fetch, or None when the flags do not tell.

    For a device that lost its own state (a back-end restarted after a crash, told nothing
    better than the initial base): a packed ring keeps no index in memory. It works for rings
    whose chains each take one slot (Linux's virtio-net: single Rx buffers, Tx chains in indirect
    tables); a ring with NEXT in any slot gives None (two-slot chains are not detected). Then the
    slots the driver made available form one circular run starting at the device's position
    ``p``, each with ``AVAIL`` = its lap's wrap bit (``w`` from ``p`` to the end, ``not w`` past
    the end), and every other slot is used (``AVAIL == USED``), in the lap before its slot's:
    ``w`` below ``p``, ``not w`` from ``p`` on. A chain fetched but not marked
    used still looks available: fetching it again resubmits it. Flags that fit no such position
    (multi-slot chains, a torn ring) give None.
    """
    flags = np.asarray(flags, dtype=np.uint16)
    n = len(flags)
    if n == 0 or np.any(flags & VRING_DESC_F_NEXT):  # a chain of several slots went through
        return None
    avail = (flags >> 7) & 1                                    # VRING_PACKED_DESC_F_AVAIL
    used = (flags >> 15) & 1                                    # VRING_PACKED_DESC_F_USED
    is_avail = avail != used
    starts = np.flatnonzero(is_avail & ~np.roll(is_avail, 1))   # where a run of available slots begins
    if is_avail.all() or not is_avail.any():
        bit = avail                                             # the lap bit of every slot, one way or the other
        changes = np.flatnonzero(bit[1:] != bit[:-1]) + 1
        if len(changes) > 1:
            return None
        p = int(changes[0]) if len(changes) else 0
        w = int(bit[p]) if is_avail[0] else 1 - int(bit[p])
    elif len(starts) == 1:
        p = int(starts[0])
        w = int(avail[p])
    else:
        return None
    lap = np.where(np.arange(n) >= p, w, 1 - w)
    if not np.all(np.where(is_avail, avail == lap, used == 1 - lap)):
        return None
    return p, w


@inline_kernel
def _avail_expect(wrap):
    """``flags & (AVAIL|USED)`` of a descriptor made available in lap ``wrap``."""
    return F_AVAIL if wrap else F_USED


@inline_kernel
def _used_bits(wrap):
    """``flags & (AVAIL|USED)`` of a descriptor marked used in lap ``wrap``."""
    return F_AU if wrap else 0


@kernel
def packed_dev_avail_pending(vr, state):
    """True when the descriptor at the device's next slot is available (0 work if broken)."""
    if state[STATE_BROKEN]:
        return False
    f = np.int64(load_acquire(vr.desc_u16, 8 * state[STATE_LAST_AVAIL] + 7))
    return (f & F_AU) == _avail_expect(state[STATE_AVAIL_WRAP])


@inline_kernel
def _dev_seg(regions, chains, addr, length, wflag, status, seen_write, nseg, total, s0, seg_cap, n):
    """One buffer element of a chain.  Returns (status, seen_write, nseg, total, retry).

    ``retry``: the element does not fit in what is left of the burst's seg
    arrays (and the burst already holds chains): stop the burst before this
    chain so the next call takes it with empty arrays.
    """
    if status != OK:
        return status, seen_write, nseg, total, False
    if wflag:
        seen_write = True
    elif seen_write:
        return ERR_LAYOUT, seen_write, nseg, total, False
    hva = translate(regions, addr, length)
    if hva == np.uint64(0):
        return ERR_ADDR, seen_write, nseg, total, False
    s = s0 + nseg
    if s >= seg_cap:
        if n > 0:
            return status, seen_write, nseg, total, True
        return ERR_TOO_MANY_SEGS, seen_write, nseg, total, False
    chains.seg_addr[s] = hva
    chains.seg_len[s] = length
    chains.seg_write[s] = 1 if wflag else 0
    return status, seen_write, nseg + 1, total + length, False


@inline_kernel
def _dev_single(regions, chains, state, num, n, s, seg_cap, addr, length, bid, wflag):
    """A chain of one direct descriptor.  Returns segs used (0 or 1), or -1: no room, retry next burst.

    Same result as walking it: ERR_ADDR, then seg room, then the id.
    """
    status = OK
    hva = translate(regions, addr, length)
    if hva == np.uint64(0):
        status = ERR_ADDR
    elif s >= seg_cap:
        if n > 0:
            return -1
        status = ERR_TOO_MANY_SEGS
    elif bid >= num:
        status = ERR_DESC_INDEX
    chains.head[n] = bid
    chains.ndesc[n] = 1
    chains.seg_start[n] = s
    chains.status[n] = status
    if status != OK:
        chains.seg_count[n] = 0
        chains.total_len[n] = 0
        count_error(state, status)
        return 0
    chains.seg_addr[s] = hva
    chains.seg_len[s] = length
    chains.seg_write[s] = 1 if wflag else 0
    chains.seg_count[n] = 1
    chains.total_len[n] = length
    return 1


@inline_kernel
def _prefetch_slots(d16, idx, cnt, num, write):
    """Prefetches the cache lines of ring slots ``idx .. idx+cnt-1`` (circular), for reading or (``write``) owning.

    The other side wrote (or read) those lines last: each is a cross-cpu miss,
    and a loop that reaches them one after the other (a branch on every
    descriptor's flags) takes them one at a time.  Issued together up front
    they overlap.
    """
    if cnt > num:
        cnt = num
    base = np.uint64(d16.ctypes.data)
    a = base + np.uint64(16 * idx)
    end = idx + cnt
    if end > num:
        e1 = base + np.uint64(16 * num)
        e2 = base + np.uint64(16 * (end - num))
    else:
        e1 = base + np.uint64(16 * end)
        e2 = base
    a &= ~np.uint64(63)
    while a < e1:
        if write:
            prefetchw(a)
        else:
            prefetch(a)
        a += np.uint64(64)
    a = base
    while a < e2:
        if write:
            prefetchw(a)
        else:
            prefetch(a)
        a += np.uint64(64)


@inline_kernel
def _dev_prefetch_burst(d16, idx, wrap, cap, num):
    """Takes ownership of the burst's descriptor lines at once, when the driver is done with them.

    A fetch reads these lines (each a miss: the driver wrote them) and a push
    writes used entries into them (an upgrade each if they were only read), one
    after the other behind the branch on every flags word.  ``prefetchw`` of all
    of them first overlaps the misses and makes the used writes hits.  Only when
    the burst's head and its last slot are both available: then the driver has
    written every slot between (it writes in ring order and a chain's head,
    or a batch's, last); otherwise a driver that publishes descriptor by
    descriptor may still be writing those lines, and taking them from it would
    cost both sides a transfer more.
    """
    expect = _avail_expect(wrap)
    if (np.int64(load_acquire(d16, 8 * idx + 7)) & F_AU) != expect:
        return
    cnt = min(cap, num)
    last = idx + cnt - 1
    lwrap = wrap
    if last >= num:
        last -= num
        lwrap ^= 1
    if (np.int64(load_acquire(d16, 8 * last + 7)) & F_AU) != _avail_expect(lwrap):
        return
    _prefetch_slots(d16, idx, cnt, num, True)


@kernel
def packed_dev_fetch(vr, state, regions, chains, max_chains):
    """Takes up to ``max_chains`` available chains into ``chains``; returns how many.

    For chain ``c``: ``head[c]`` = buffer id (from the chain's last ring
    descriptor), ``ndesc[c]`` = ring slots it used (pass it back to
    :func:`packed_dev_push_used`), ``seg_*`` its translated elements,
    ``total_len[c]`` their byte sum, ``status[c]`` 0 or an ``ERR_*`` code
    (then ``seg_count`` = 0: complete it with length 0, touch nothing).

    Checks: chain longer than the queue (``ERR_CHAIN_LOOP``, ``ndesc`` = num),
    readable element after a writable one (``ERR_LAYOUT``), element not
    wholly inside one region (``ERR_ADDR``, lengths up to 4 GiB), indirect
    misuse — feature not negotiated, with NEXT, inside a NEXT list, table
    length 0 / not a multiple of 16 / not wholly mapped, INDIRECT inside the
    table (``ERR_INDIRECT``) —, more elements than the seg arrays hold
    (``ERR_TOO_MANY_SEGS``), buffer id >= num (``ERR_DESC_INDEX``).  Each
    error is counted in the state.  In an indirect table only WRITE is
    honoured; NEXT and the id are ignored (the spec reserves them there; an
    INDIRECT flag there is rejected as nesting); in the ring, WRITE of an
    INDIRECT descriptor is ignored.

    Fast path: four single (no NEXT/INDIRECT) available descriptors starting
    at a 4-aligned slot that do not wrap are checked with one test of their
    four flags words and then read (DPDK's batch; results are identical).
    """
    if state[STATE_BROKEN] != 0:
        return 0
    num = state[STATE_SIZE]
    feats = state[STATE_FEATURES]
    cap = min(np.int64(max_chains), np.int64(chains.head.shape[0]))
    seg_cap = min(chains.seg_addr.shape[0], chains.seg_len.shape[0], chains.seg_write.shape[0])
    batch_ok = (feats & PACKED_FEAT_NO_BATCH) == 0
    wmask = np.int64(0) if (feats & FEAT_READ_ONLY) else np.int64(F_WRITE)
    d16 = vr.desc_u16
    d32 = vr.desc_u32
    d64 = vr.desc_u64
    idx = state[STATE_LAST_AVAIL]
    wrap = state[STATE_AVAIL_WRAP]
    n = np.int64(0)
    s = np.int64(0)
    nbatch = np.int64(0)
    if cap > 1 and (feats & PACKED_FEAT_NO_PREFETCH) == 0:
        _dev_prefetch_burst(d16, idx, wrap, cap, num)
    while n < cap:
        expect = _avail_expect(wrap)
        if batch_ok and (idx & 3) == 0 and idx + 4 <= num and n + 4 <= cap and s + 4 <= seg_cap:
            b = 8 * idx
            f0 = np.int64(load_acquire(d16, b + 7))
            f1 = np.int64(load_acquire(d16, b + 15))
            f2 = np.int64(load_acquire(d16, b + 23))
            f3 = np.int64(load_acquire(d16, b + 31))
            if (
                ((f0 & _SINGLE_MASK) ^ expect)
                | ((f1 & _SINGLE_MASK) ^ expect)
                | ((f2 & _SINGLE_MASK) ^ expect)
                | ((f3 & _SINGLE_MASK) ^ expect)
            ) == 0:
                s += _dev_single(regions, chains, state, num, n, s, seg_cap, d64[2 * idx], np.int64(d32[4 * idx + 2]), np.int64(d16[b + 6]), f0 & wmask)
                s += _dev_single(regions, chains, state, num, n + 1, s, seg_cap, d64[2 * idx + 2], np.int64(d32[4 * idx + 6]), np.int64(d16[b + 14]), f1 & wmask)
                s += _dev_single(regions, chains, state, num, n + 2, s, seg_cap, d64[2 * idx + 4], np.int64(d32[4 * idx + 10]), np.int64(d16[b + 22]), f2 & wmask)
                s += _dev_single(regions, chains, state, num, n + 3, s, seg_cap, d64[2 * idx + 6], np.int64(d32[4 * idx + 14]), np.int64(d16[b + 30]), f3 & wmask)
                n += 4
                nbatch += 4
                idx += 4
                if idx >= num:
                    idx = 0
                    wrap ^= 1
                continue
        # -- one chain, descriptor by descriptor
        f = np.int64(load_acquire(d16, 8 * idx + 7))
        if (f & F_AU) != expect:
            break
        if (f & (F_NEXT | F_INDIRECT)) == 0:
            used = _dev_single(regions, chains, state, num, n, s, seg_cap, d64[2 * idx], np.int64(d32[4 * idx + 2]), np.int64(d16[8 * idx + 6]), f & wmask)
            if used < 0:
                break
            s += used
            n += 1
            idx += 1
            if idx >= num:
                idx = 0
                wrap ^= 1
            continue
        status = OK
        seen_write = False
        nseg = np.int64(0)
        total = np.int64(0)
        retry = False
        nd = np.int64(0)
        cur = idx
        bid = np.int64(0)
        while True:
            if nd > 0:
                f = np.int64(d16[8 * cur + 7])  # ordered by the head's acquire
            addr = d64[2 * cur]
            length = np.int64(d32[4 * cur + 2])
            bid = np.int64(d16[8 * cur + 6])
            nd += 1
            if f & F_INDIRECT:
                if status == OK:
                    if (feats & FEAT_INDIRECT) == 0 or (f & F_NEXT) or nd > 1:
                        status = ERR_INDIRECT
                    elif length == 0 or (length & 15) != 0:
                        status = ERR_INDIRECT
                    else:
                        thva = translate(regions, addr, length)
                        if thva == np.uint64(0):
                            status = ERR_INDIRECT
                        else:
                            cnt = length >> 4
                            for j in range(cnt):
                                ea = thva + np.uint64(16 * j)
                                ef = np.int64(load_u16(ea + np.uint64(14), 0))
                                if ef & F_INDIRECT:
                                    status = ERR_INDIRECT
                                    break
                                status, seen_write, nseg, total, retry = _dev_seg(
                                    regions, chains, load_u64(ea, 0), np.int64(load_u32(ea + np.uint64(8), 0)), ef & wmask,
                                    status, seen_write, nseg, total, s, seg_cap, n,
                                )
                                if status != OK or retry:
                                    break
            else:
                status, seen_write, nseg, total, retry = _dev_seg(
                    regions, chains, addr, length, f & wmask, status, seen_write, nseg, total, s, seg_cap, n
                )
            if retry or (f & F_NEXT) == 0:
                break
            if nd >= num:
                status = ERR_CHAIN_LOOP
                break
            cur += 1
            if cur >= num:
                cur = 0
        if retry:
            break
        if status == OK and bid >= num:
            status = ERR_DESC_INDEX
        chains.head[n] = bid
        chains.ndesc[n] = nd
        chains.seg_start[n] = s
        chains.status[n] = status
        if status == OK:
            chains.seg_count[n] = nseg
            chains.total_len[n] = total
            s += nseg
        else:
            chains.seg_count[n] = 0
            chains.total_len[n] = 0
            count_error(state, status)
        n += 1
        idx += nd
        if idx >= num:
            idx -= num
            wrap ^= 1
    state[STATE_LAST_AVAIL] = idx
    state[STATE_AVAIL_WRAP] = wrap
    state[STATE_CHAINS] += n
    state[PACKED_DEV_BATCHED] += nbatch
    return n


@kernel
def packed_dev_push_used(vr, state, buf_id, length, ndesc):
    """Queues a used entry for buffer ``buf_id`` that took ``ndesc`` (>= 1) ring slots.

    Writes id and len at the next used slot now (and its flags, unless it
    is the first entry since the last flush); nothing is visible to the
    driver before :func:`packed_dev_flush_used`.  ``length`` != 0 sets WRITE
    in the used flags (the spec's "data was written"; len is ignored without it).
    """
    num = state[STATE_SIZE]
    slot = state[PACKED_DEV_SHADOW_IDX]
    w = state[PACKED_DEV_SHADOW_WRAP]
    flags = _used_bits(w)
    if length != 0:
        flags |= F_WRITE
    vr.desc_u16[8 * slot + 6] = buf_id
    vr.desc_u32[4 * slot + 2] = length
    if state[STATE_SHADOW_N] == 0:
        state[PACKED_DEV_HEAD_FLAGS] = flags
    else:
        store_release(vr.desc_u16, 8 * slot + 7, flags)
    state[PACKED_DEV_SHADOW_LAST] = slot
    state[PACKED_DEV_SHADOW_LAST_WRAP] = w
    state[STATE_SHADOW_N] += 1
    slot += np.int64(ndesc)
    if slot >= num:
        slot -= num
        w ^= 1
    state[PACKED_DEV_SHADOW_IDX] = slot
    state[PACKED_DEV_SHADOW_WRAP] = w


@kernel
def packed_dev_push_used_inorder(vr, state, buf_id, length, ndesc):
    """IN_ORDER: folds buffer ``buf_id`` into the pending used entry (the spec's "in-order use of descriptors").

    The pending entry takes this buffer's id and length and covers
    ``ndesc`` more slots, so one used descriptor (the id of the last buffer)
    completes the whole batch; the driver takes the skipped buffers as fully
    used, so use it where their lengths do not matter (device-readable
    buffers).  Without a pending entry, or without IN_ORDER negotiated, it
    is :func:`packed_dev_push_used`.
    """
    if state[STATE_SHADOW_N] == 0 or (state[STATE_FEATURES] & FEAT_IN_ORDER) == 0:
        packed_dev_push_used(vr, state, buf_id, length, ndesc)
        return
    num = state[STATE_SIZE]
    last = state[PACKED_DEV_SHADOW_LAST]
    flags = _used_bits(state[PACKED_DEV_SHADOW_LAST_WRAP])
    if length != 0:
        flags |= F_WRITE
    vr.desc_u16[8 * last + 6] = buf_id
    vr.desc_u32[4 * last + 2] = length
    if state[STATE_SHADOW_N] == 1:
        state[PACKED_DEV_HEAD_FLAGS] = flags
    else:
        store_release(vr.desc_u16, 8 * last + 7, flags)
    slot = state[PACKED_DEV_SHADOW_IDX] + np.int64(ndesc)
    if slot >= num:
        slot -= num
        state[PACKED_DEV_SHADOW_WRAP] ^= 1
    state[PACKED_DEV_SHADOW_IDX] = slot


@kernel
def packed_dev_flush_used(vr, state):
    """Publishes the pushed used entries (head's flags last); returns whether to interrupt.

    Driver event suppression: DISABLE → no; ENABLE → yes; DESC (only with
    EVENT_IDX) → yes iff the used position moved past the driver's
    ``off_wrap`` (``vring_need_event`` on wrap-adjusted offsets, as
    DPDK/Linux); the first decision after init / SET_VRING_BASE is yes.
    Nothing pushed: no interrupt.
    """
    k = state[STATE_SHADOW_N]
    if k == 0:
        return False
    num = state[STATE_SIZE]
    store_release(vr.desc_u16, 8 * state[STATE_LAST_USED] + 7, state[PACKED_DEV_HEAD_FLAGS])
    new = state[PACKED_DEV_SHADOW_IDX]
    uwrap = state[PACKED_DEV_SHADOW_WRAP]
    state[STATE_LAST_USED] = new
    state[STATE_USED_WRAP] = uwrap
    state[PACKED_DEV_SHADOW_LAST] = new
    state[PACKED_DEV_SHADOW_LAST_WRAP] = uwrap
    state[STATE_SHADOW_N] = 0
    state[STATE_USED] += k
    old = state[STATE_SIGNALLED_USED]
    state[STATE_SIGNALLED_USED] = new
    fence()  # used flags store before the load of the driver's suppression flags
    ev_flags = np.int64(load_acquire(vr.driver_event, 1)) & EVENT_FLAGS_MASK
    if ev_flags == VRING_PACKED_EVENT_FLAG_DISABLE:
        return False
    if ev_flags != VRING_PACKED_EVENT_FLAG_DESC or (state[STATE_FEATURES] & FEAT_EVENT_IDX) == 0:
        return True
    if old < 0:
        return True
    if new <= old:
        old -= num
    off_wrap = np.int64(load_acquire(vr.driver_event, 0))
    off = off_wrap & OFF_MASK
    if (off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR) != uwrap:
        off -= num
    return vring_need_event(off, new, old)


@kernel
def packed_dev_enable_notify(vr, state, enable):
    """Asks the driver for kicks (``enable``) or not; returns True when a chain is pending.

    Disable: device area flags = DISABLE.  Enable: ENABLE, or with EVENT_IDX
    DESC with ``off_wrap = last_avail | avail_wrap << 15`` (kick me when the
    next descriptor I would fetch is made available).  After enabling, a
    full fence and a re-check of that descriptor: True means keep polling
    instead of sleeping.
    """
    if not enable:
        store_release(vr.device_event, 1, VRING_PACKED_EVENT_FLAG_DISABLE)
        return False
    if state[STATE_FEATURES] & FEAT_EVENT_IDX:
        store_relaxed(vr.device_event, 0, packed_dev_get_base(state))
        store_release(vr.device_event, 1, VRING_PACKED_EVENT_FLAG_DESC)
    else:
        store_release(vr.device_event, 1, VRING_PACKED_EVENT_FLAG_ENABLE)
    fence()
    return packed_dev_avail_pending(vr, state)


# ---------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------

PackedDrvState = namedtuple("PackedDrvState", ["state", "cookie", "ndesc", "free_ids"])

DRV_SIZE = 0  # queue size
DRV_FEATURES = 1  # FEAT_* mask
DRV_AVAIL_IDX = 2  # next slot to make available
DRV_AVAIL_WRAP = 3  # driver ring wrap counter
DRV_USED_IDX = 4  # next slot where a used descriptor is expected
DRV_USED_WRAP = 5  # lap of that slot
DRV_NUM_FREE = 6  # free ring slots
DRV_FREE_HEAD = 7  # free_ids FIFO: index of the next id to hand out
DRV_FREE_COUNT = 8  # free_ids FIFO: free ids
DRV_NUM_ADDED = 9  # slots made available since the last kick decision
DRV_INORDER_SKIP = 10  # IN_ORDER: slots of buffers already returned from the used entry at DRV_USED_IDX
DRV_BROKEN = 11  # nonzero: the device wrote an impossible used entry
DRV_ADDED = 12  # buffers added (counter)
DRV_COMPLETED = 13  # buffers harvested (counter)
DRV_BAD_USED = 14  # bad used entries seen (counter)
DRV_INTR_ENABLED = 15  # last packed_drv_enable_interrupt request
DRV_BATCH_HEAD = 16  # slot of the first buffer added by packed_drv_add1_batch since the last publish (-1: none)
DRV_BATCH_FLAGS = 17  # the flags that slot gets when the batch is published
DRV_SLOTS = 18


def packed_drv_state(num, features=0) -> PackedDrvState:
    """Fresh (uninitialised) driver state arrays for a queue of ``num`` entries."""
    num = check_packed_size(num)
    return PackedDrvState(
        state=np.zeros(DRV_SLOTS, np.int64),
        cookie=np.zeros(num, np.uint64),
        ndesc=np.zeros(num, np.uint16),
        free_ids=np.zeros(num, np.uint16),
    )


def packed_drv_init(vr: PackedVring, ds: PackedDrvState, num, features=0):
    """Driver-side reset: zeroes the ring memory and both event areas, builds the id FIFO.

    The driver owns the ring memory; call this before handing the ring's
    addresses to the device.  Used-buffer interrupts start enabled (flags 0).
    """
    num = check_packed_size(num)
    if vr.desc_u16.shape[0] != 8 * num or ds.cookie.shape[0] != num:
        raise ValueError("ring views / driver state do not match the queue size")
    vr.desc_u64[:] = 0
    vr.driver_event[:] = 0
    vr.device_event[:] = 0
    st = ds.state
    st[:] = 0
    st[DRV_SIZE] = num
    st[DRV_FEATURES] = int(features) & (FEAT_EVENT_IDX | FEAT_IN_ORDER | FEAT_INDIRECT)
    st[DRV_AVAIL_WRAP] = 1
    st[DRV_USED_WRAP] = 1
    st[DRV_NUM_FREE] = num
    st[DRV_FREE_COUNT] = num
    st[DRV_INTR_ENABLED] = 1
    st[DRV_BATCH_HEAD] = -1
    ds.cookie[:] = 0
    ds.ndesc[:] = 0
    ds.free_ids[:] = np.arange(num, dtype=np.uint16)
    return ds


@kernel
def packed_drv_free_count(ds):
    """Free ring slots (a chain of k direct descriptors needs k, an indirect one 1)."""
    always_inline()  # called once per packet from the virtio-user bursts
    return ds.state[DRV_NUM_FREE]


@inline_kernel
def _drv_alloc(st, ds, num, cookie, need):
    h = st[DRV_FREE_HEAD]
    bid = np.int64(ds.free_ids[h])
    h += 1
    if h >= num:
        h = 0
    st[DRV_FREE_HEAD] = h
    st[DRV_FREE_COUNT] -= 1
    ds.cookie[bid] = cookie
    ds.ndesc[bid] = need
    st[DRV_NUM_FREE] -= need
    st[DRV_NUM_ADDED] += need
    st[DRV_ADDED] += 1
    return bid


@kernel
def packed_drv_add(vr, ds, cookie, seg_gpa, seg_len, seg_write, nseg, ind_gpa, ind_hva):
    """Makes one buffer available; returns its id or -1 (no room, nseg < 1, broken).

    ``seg_gpa/seg_len/seg_write[:nseg]`` are its elements (device-readable
    first).  ``ind_hva != 0``: write an indirect table of ``nseg`` entries
    (flags WRITE or 0) at ``ind_hva`` (caller memory of ``16 * nseg`` bytes,
    guest-physical ``ind_gpa``, kept intact until the buffer is harvested)
    and use one ring slot.  Otherwise ``nseg`` consecutive slots linked by
    NEXT.  Every descriptor carries the id; the head's flags are written
    last with a release store, which makes the chain visible at once.
    """
    always_inline()  # called once per packet from the virtio-user bursts
    st = ds.state
    if st[DRV_BROKEN] != 0 or nseg < 1:
        return -1
    if nseg > seg_gpa.shape[0] or nseg > seg_len.shape[0] or nseg > seg_write.shape[0]:
        return -1
    num = st[DRV_SIZE]
    need = np.int64(1) if ind_hva != 0 else np.int64(nseg)
    if st[DRV_NUM_FREE] < need:
        return -1
    bid = _drv_alloc(st, ds, num, cookie, need)
    d16 = vr.desc_u16
    d32 = vr.desc_u32
    d64 = vr.desc_u64
    slot = st[DRV_AVAIL_IDX]
    w = st[DRV_AVAIL_WRAP]
    if ind_hva != 0:
        base = np.uint64(ind_hva)
        for i in range(nseg):
            ea = base + np.uint64(16 * i)
            store_u64(ea, 0, seg_gpa[i])
            store_u32(ea + np.uint64(8), 0, seg_len[i])
            store_u16(ea + np.uint64(12), 0, 0)
            store_u16(ea + np.uint64(14), 0, F_WRITE if seg_write[i] else 0)
        d64[2 * slot] = ind_gpa
        d32[4 * slot + 2] = 16 * nseg
        d16[8 * slot + 6] = bid
        store_release(d16, 8 * slot + 7, F_INDIRECT | _avail_expect(w))
        slot += 1
        if slot >= num:
            slot = 0
            w ^= 1
    else:
        head = slot
        hflags = np.int64(0)
        for i in range(nseg):
            d64[2 * slot] = seg_gpa[i]
            d32[4 * slot + 2] = seg_len[i]
            d16[8 * slot + 6] = bid
            f = _avail_expect(w)
            if seg_write[i]:
                f |= F_WRITE
            if i + 1 < nseg:
                f |= F_NEXT
            if i == 0:
                hflags = f
            else:
                d16[8 * slot + 7] = f
            slot += 1
            if slot >= num:
                slot = 0
                w ^= 1
        store_release(d16, 8 * head + 7, hflags)
    st[DRV_AVAIL_IDX] = slot
    st[DRV_AVAIL_WRAP] = w
    return bid


@inline_kernel
def _drv_add1(vr, ds, cookie, gpa, length, write, defer):
    st = ds.state
    if st[DRV_BROKEN] != 0 or st[DRV_NUM_FREE] < 1:
        return -1
    num = st[DRV_SIZE]
    bid = _drv_alloc(st, ds, num, cookie, 1)
    slot = st[DRV_AVAIL_IDX]
    w = st[DRV_AVAIL_WRAP]
    vr.desc_u64[2 * slot] = gpa
    vr.desc_u32[4 * slot + 2] = length
    vr.desc_u16[8 * slot + 6] = bid
    f = _avail_expect(w)
    if write:
        f |= F_WRITE
    if defer and st[DRV_BATCH_HEAD] < 0:
        st[DRV_BATCH_HEAD] = slot  # the batch's first flags: written by packed_drv_publish
        st[DRV_BATCH_FLAGS] = f
    else:
        store_release(vr.desc_u16, 8 * slot + 7, f)
    slot += 1
    if slot >= num:
        slot = 0
        st[DRV_AVAIL_WRAP] = w ^ 1
    st[DRV_AVAIL_IDX] = slot
    return bid


@kernel
def packed_drv_add1(vr, ds, cookie, gpa, length, write):
    """One buffer of one element (the fast path of a Tx/Rx burst); returns its id or -1.

    Visible to the device when it returns (unless it follows a
    :func:`packed_drv_add1_batch` not yet published: the device polls the
    batch's first slot before this one).
    """
    always_inline()  # called once per packet from the virtio-user bursts
    return _drv_add1(vr, ds, cookie, gpa, length, write, False)


@kernel
def packed_drv_add1_batch(vr, ds, cookie, gpa, length, write):
    """As :func:`packed_drv_add1`, but the buffers added this way since the last
    :func:`packed_drv_publish` (or :func:`packed_drv_need_kick`, which publishes)
    become visible together, at the publish.

    Every descriptor is written at once, except the flags of the batch's first
    one, which the publish writes last with a release store.  The device polls
    only the next slot in ring order (virtio 1.1 §2.8.4: writes may be
    reordered, each side polls one location), so it sees the whole batch or
    none of it: like split's avail idx, one publication per burst, and the
    device fetches the burst at once instead of chasing the driver slot by
    slot through lines it is still writing.
    """
    always_inline()  # called once per packet from the virtio-user bursts
    return _drv_add1(vr, ds, cookie, gpa, length, write, True)


@kernel
def packed_drv_prefetch_avail(vr, ds, n):
    """Prefetches for writing the ring lines of the next ``n`` slots to make available (at most the free ones)."""
    always_inline()
    st = ds.state
    n = min(np.int64(n), st[DRV_NUM_FREE])
    if n > 0:
        _prefetch_slots(vr.desc_u16, st[DRV_AVAIL_IDX], n, st[DRV_SIZE], True)


@kernel
def packed_drv_publish(vr, ds):
    """Makes the buffers of the pending :func:`packed_drv_add1_batch` batch visible (its first flags, release)."""
    always_inline()
    st = ds.state
    h = st[DRV_BATCH_HEAD]
    if h >= 0:
        store_release(vr.desc_u16, 8 * h + 7, st[DRV_BATCH_FLAGS])
        st[DRV_BATCH_HEAD] = -1


@kernel
def packed_drv_need_kick(vr, ds):
    """Whether to notify the device of the buffers added since the last call.

    After a full fence, from the device area: DISABLE → no; ENABLE → yes;
    DESC (with EVENT_IDX) → yes iff the descriptor at the device's
    ``off_wrap`` was made available since the last decision (Linux's wrap-
    adjusted ``vring_need_event``; more than a ring's worth added → yes).
    """
    always_inline()  # called once per packet from the virtio-user bursts
    packed_drv_publish(vr, ds)
    st = ds.state
    fence()  # descriptor flags stores before the load of the device's suppression flags
    added = st[DRV_NUM_ADDED]
    st[DRV_NUM_ADDED] = 0
    ev_flags = np.int64(load_acquire(vr.device_event, 1)) & EVENT_FLAGS_MASK
    if ev_flags == VRING_PACKED_EVENT_FLAG_DISABLE:
        return False
    if ev_flags != VRING_PACKED_EVENT_FLAG_DESC or (st[DRV_FEATURES] & FEAT_EVENT_IDX) == 0:
        return True
    num = st[DRV_SIZE]
    if added >= num:
        return True
    new = st[DRV_AVAIL_IDX]
    old = new - added
    off_wrap = np.int64(load_acquire(vr.device_event, 0))
    off = off_wrap & OFF_MASK
    if (off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR) != st[DRV_AVAIL_WRAP]:
        off -= num
    return vring_need_event(off, new, old)


@kernel
def packed_drv_used_pending(vr, ds):
    """True when a used descriptor waits at the driver's next used slot."""
    st = ds.state
    f = np.int64(load_acquire(vr.desc_u16, 8 * st[DRV_USED_IDX] + 7))
    return (f & F_AU) == _used_bits(st[DRV_USED_WRAP])


@inline_kernel
def _drv_release(st, ds, num, bid):
    """Puts id ``bid`` back at the tail of the free FIFO; returns its slot count."""
    k = np.int64(ds.ndesc[bid])
    ds.ndesc[bid] = 0
    t = st[DRV_FREE_HEAD] + st[DRV_FREE_COUNT]
    if t >= num:
        t -= num
    ds.free_ids[t] = bid
    st[DRV_FREE_COUNT] += 1
    st[DRV_COMPLETED] += 1
    return k


@inline_kernel
def _drv_prefetch_used(d16, idx, wrap, lim, num):
    """Prefetches the lines of the next ``lim`` used slots when the first and the last are both used.

    Each used entry is read behind the branch on the previous one's flags,
    so its line (written by the device: a miss) would be fetched one after
    the other; the device publishes a batch with its first flags last, so
    when the first and the last slot are used the lines between are done.
    """
    if (np.int64(load_acquire(d16, 8 * idx + 7)) & F_AU) != _used_bits(wrap):
        return
    cnt = min(lim, num)
    last = idx + cnt - 1
    lwrap = wrap
    if last >= num:
        last -= num
        lwrap ^= 1
    if (np.int64(load_acquire(d16, 8 * last + 7)) & F_AU) == _used_bits(lwrap):
        _prefetch_slots(d16, idx, cnt, num, False)


@kernel
def packed_drv_get_used(vr, ds, out_cookies, out_lens, n):
    """Harvests up to ``n`` completed buffers: their cookies and used lengths; returns the count.

    A used descriptor at the expected slot (acquire load of its flags,
    ``AVAIL == USED == used wrap``) names a buffer id; the driver then skips
    that buffer's ring slots.  Its length counts only with WRITE set (else
    0).  With IN_ORDER one used descriptor completes every outstanding buffer
    up to and including the named one (the skipped ones get length 0); when
    ``n`` runs out in the middle, the rest comes with the next call.  An id
    that is out of range or not outstanding marks the queue broken (nothing
    more is harvested or added).
    """
    always_inline()  # called once per packet from the virtio-user bursts
    st = ds.state
    if st[DRV_BROKEN] != 0:
        return 0
    num = st[DRV_SIZE]
    inorder = (st[DRV_FEATURES] & FEAT_IN_ORDER) != 0
    d16 = vr.desc_u16
    idx = st[DRV_USED_IDX]
    wrap = st[DRV_USED_WRAP]
    cnt = np.int64(0)
    lim = np.int64(n)
    lim = min(lim, np.int64(out_cookies.shape[0]), np.int64(out_lens.shape[0]))
    if not inorder and lim > 1:
        _drv_prefetch_used(d16, idx, wrap, lim, num)
    while cnt < lim:
        f = np.int64(load_acquire(d16, 8 * idx + 7))
        if (f & F_AU) != _used_bits(wrap):
            break
        bid = np.int64(d16[8 * idx + 6])
        length = np.int64(vr.desc_u32[4 * idx + 2]) if (f & F_WRITE) else np.int64(0)
        if bid >= num or ds.ndesc[bid] == 0:
            st[DRV_BROKEN] = 1
            st[DRV_BAD_USED] += 1
            break
        if inorder:
            skip = st[DRV_INORDER_SKIP]
            done = False
            while cnt < lim:
                # the oldest outstanding id sits just behind the free FIFO's tail
                t = st[DRV_FREE_HEAD] + st[DRV_FREE_COUNT]
                if t >= num:
                    t -= num
                cid = np.int64(ds.free_ids[t])
                out_cookies[cnt] = ds.cookie[cid]
                out_lens[cnt] = length if cid == bid else 0
                cnt += 1
                skip += _drv_release(st, ds, num, cid)
                if cid == bid:
                    done = True
                    break
            if not done:
                st[DRV_INORDER_SKIP] = skip  # slots stay owned until the whole entry is consumed
                break
            st[DRV_INORDER_SKIP] = 0
        else:
            out_cookies[cnt] = ds.cookie[bid]
            out_lens[cnt] = length
            cnt += 1
            skip = _drv_release(st, ds, num, bid)
        st[DRV_NUM_FREE] += skip
        idx += skip
        if idx >= num:
            idx -= num
            wrap ^= 1
    st[DRV_USED_IDX] = idx
    st[DRV_USED_WRAP] = wrap
    return cnt


@kernel
def packed_drv_enable_interrupt(vr, ds, enable):
    """Asks the device for used-buffer interrupts (``enable``) or not; returns True if used entries are pending.

    Disable: driver area flags = DISABLE.  Enable: ENABLE, or with EVENT_IDX
    DESC with ``off_wrap = used slot | used wrap << 15`` (interrupt me when
    the next used descriptor I expect is written).  After enabling, a full
    fence and a re-check: True means harvest again before sleeping.
    """
    st = ds.state
    st[DRV_INTR_ENABLED] = 1 if enable else 0
    if not enable:
        store_release(vr.driver_event, 1, VRING_PACKED_EVENT_FLAG_DISABLE)
        return False
    if st[DRV_FEATURES] & FEAT_EVENT_IDX:
        store_relaxed(vr.driver_event, 0, st[DRV_USED_IDX] | (st[DRV_USED_WRAP] << VRING_PACKED_EVENT_F_WRAP_CTR))
        store_release(vr.driver_event, 1, VRING_PACKED_EVENT_FLAG_DESC)
    else:
        store_release(vr.driver_event, 1, VRING_PACKED_EVENT_FLAG_ENABLE)
    fence()
    return packed_drv_used_pending(vr, ds)
