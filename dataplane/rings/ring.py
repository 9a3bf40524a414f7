"""A lock-free ring of u64 handles in shared memory, after DPDK's ``rte_ring``.

Layout of the ring memory (``ring_memsize(count)`` bytes, 64-byte aligned)::

    bytes   0..63    prod.head  (u32 index 0 of ``hdr``)
    bytes  64..127   prod.tail  (u32 index 16)
    bytes 128..191   cons.head  (u32 index 32)
    bytes 192..255   cons.tail  (u32 index 48)
    bytes 256..319   size, mask, capacity, flags, magic (u32 indices 64..68)
    bytes 320..383   padding (keeps the slots off the config line pair)
    bytes 384..      ``size`` u64 slots

Protocol (the rte_ring head/tail scheme):

* A producer *reserves* slots by moving ``prod.head`` forward (a plain store
  for a single producer, a CAS for multi-producer), copies its handles into
  ``slots[(head + i) & mask]``, then *publishes* them by moving
  ``prod.tail`` with a release store.  A multi-producer first waits until
  ``prod.tail`` has reached its own old head, so tails move in reservation
  order.  Consumers do the same with ``cons.head`` / ``cons.tail``.
* Free space is ``capacity + cons.tail - prod.head`` and available entries
  are ``prod.tail - cons.head``, both computed modulo 2**32: indices are
  free-running u32 and only masked when a slot is addressed.
* The other side's tail is read with an acquire load, ours is published
  with a release store (DESIGN.md §5).

``capacity`` is ``count - 1`` (``count`` a power of two), or exactly
``count`` with :data:`RING_F_EXACT_SZ` (slots rounded up to the next power
of two above ``count``).

Hot paths are the numba kernels :func:`ring_enqueue_bulk`,
:func:`ring_enqueue_burst`, :func:`ring_dequeue_bulk`,
:func:`ring_dequeue_burst`, :func:`ring_count` and :func:`ring_free_count`
(``njit(cache=True)``, callable from other jitted code with
``(ring.hdr, ring.slots, ...)``).  ``objs``/``out`` are 1-d u64 arrays
with at least ``n`` elements (not checked, as numba does no bounds checks);
``single`` is True for the SP/SC path and must then be honoured by every
user of that side.  The kernels are inlined into their caller; note that
numba's on-disk cache of a *caller* is not invalidated when this file
changes.  The :class:`Ring` methods are thin Python wrappers around them for
the control plane and tests.

A multi-producer/consumer that is preempted between its reservation and its
tail update stalls the others of its side (inherent to rte_ring).  Waiters
spin with ``pause`` and call ``sched_yield`` every
:data:`YIELD_AFTER_SPINS` spins so an oversubscribed machine still makes
progress.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dataplane.rings.atomics import (
    cas,
    cpu_relax,
    load_acquire,
    load_relaxed,
    store_relaxed,
    store_release,
)
from dataplane.rings.jit import always_inline, kernel, sched_yield  # sched_yield: re-exported

__all__ = [
    "RING_F_SP_ENQ",
    "RING_F_SC_DEQ",
    "RING_F_EXACT_SZ",
    "RING_SZ_MASK",
    "HDR_PROD_HEAD",
    "HDR_PROD_TAIL",
    "HDR_CONS_HEAD",
    "HDR_CONS_TAIL",
    "HDR_SIZE",
    "HDR_MASK",
    "HDR_CAPACITY",
    "HDR_FLAGS",
    "HDR_MAGIC",
    "HDR_BYTES",
    "RING_MAGIC",
    "YIELD_AFTER_SPINS",
    "ring_memsize",
    "Ring",
    "ring_create",
    "ring_lookup",
    "ring_enqueue_bulk",
    "ring_enqueue_burst",
    "ring_dequeue_bulk",
    "ring_dequeue_burst",
    "ring_count",
    "ring_free_count",
    "sched_yield",
]

RING_F_SP_ENQ = 0x1  # single producer
RING_F_SC_DEQ = 0x2  # single consumer
RING_F_EXACT_SZ = 0x4  # capacity is exactly the requested count
_KNOWN_FLAGS = RING_F_SP_ENQ | RING_F_SC_DEQ | RING_F_EXACT_SZ

RING_SZ_MASK = 0x7FFFFFFF  # largest slot count (as in rte_ring)

# u32 indices into the header
HDR_PROD_HEAD = 0
HDR_PROD_TAIL = 16
HDR_CONS_HEAD = 32
HDR_CONS_TAIL = 48
HDR_SIZE = 64
HDR_MASK = 65
HDR_CAPACITY = 66
HDR_FLAGS = 67
HDR_MAGIC = 68

HDR_BYTES = 384  # slots start here (a multiple of 128: adjacent-line prefetch pairs)
RING_MAGIC = 0x52474E31  # "RGN1", written last by init

YIELD_AFTER_SPINS = 256  # a waiter calls sched_yield after this many pauses

# --------------------------------------------------------------------------
# numba kernels


@kernel
def _wait_tail(hdr, tail_idx, old):
    """Wait until ``hdr[tail_idx]`` reaches ``old`` (multi-producer/consumer)."""
    spins = 0
    while load_acquire(hdr, tail_idx) != old:
        cpu_relax()
        spins += 1
        if spins >= YIELD_AFTER_SPINS:
            sched_yield()
            spins = 0


# How the hot path stays cheap (measured, see bench/ring_perf.py; the
# decorator and the intrinsics are explained in dataplane.rings.jit):
# * every kernel is compiled with ``_nrt=False`` (``kernel``): numba
#   otherwise increfs and decrefs each array argument around the branches (an
#   atomic op and an indirect call each, ~5 ns; they were 80% of the cost),
#   and numba's IR inlining (``inline="always"``) brings the same refcounts
#   along;
# * every kernel marks itself ``alwaysinline`` for LLVM (``always_inline()``),
#   so the whole ring operation is inlined into the caller's loop (with
#   ``single``/``is_bulk`` constant-folded when the caller passes literals),
#   as rte_ring's ``__rte_always_inline`` does; an out-of-line call passing
#   three arrays costs ~15 cycles of argument copying;
# * slot indices are u64 (no wraparound checks), so the copy loops vectorise.
# Only the multi-producer tail wait (_wait_tail) is out of line.


@kernel
def _enqueue(hdr, slots, objs, n, is_bulk, single):
    always_inline()
    capacity = hdr[HDR_CAPACITY]
    if n <= 0:
        return 0
    if n > capacity:
        if is_bulk:
            return 0
        req = np.uint32(capacity)
    else:
        req = np.uint32(n)
    # reserve: move prod.head
    if single:
        old = load_relaxed(hdr, HDR_PROD_HEAD)
        free = np.uint32(capacity + load_acquire(hdr, HDR_CONS_TAIL) - old)
        m = req
        if m > free:
            if is_bulk:
                return 0
            m = free
            if m == 0:
                return 0
        store_relaxed(hdr, HDR_PROD_HEAD, np.uint32(old + m))
    else:
        while True:
            old = load_acquire(hdr, HDR_PROD_HEAD)
            free = np.uint32(capacity + load_acquire(hdr, HDR_CONS_TAIL) - old)
            m = req
            if m > free:
                if is_bulk:
                    return 0
                m = free
                if m == 0:
                    return 0
            if cas(hdr, HDR_PROD_HEAD, old, np.uint32(old + m)):
                break
    # copy objs[:m] into slots[old & mask ...], wrapping at size (u64 indices:
    # no wraparound checks, the loops vectorise)
    size = np.uint64(hdr[HDR_SIZE])
    idx = np.uint64(old & hdr[HDR_MASK])
    cnt = np.uint64(m)
    first = size - idx
    if cnt <= first:
        for i in range(cnt):
            slots[idx + i] = objs[i]
    else:
        for i in range(first):
            slots[idx + i] = objs[i]
        for i in range(cnt - first):
            slots[i] = objs[first + i]
    # publish: move prod.tail (in reservation order when multi-producer)
    if not single:
        _wait_tail(hdr, HDR_PROD_TAIL, old)
    store_release(hdr, HDR_PROD_TAIL, np.uint32(old + m))
    return np.int64(m)


@kernel
def _dequeue(hdr, slots, out, n, is_bulk, single):
    always_inline()
    capacity = hdr[HDR_CAPACITY]
    if n <= 0:
        return 0
    if n > capacity:
        if is_bulk:
            return 0
        req = np.uint32(capacity)
    else:
        req = np.uint32(n)
    # reserve: move cons.head
    if single:
        old = load_relaxed(hdr, HDR_CONS_HEAD)
        avail = np.uint32(load_acquire(hdr, HDR_PROD_TAIL) - old)
        m = req
        if m > avail:
            if is_bulk:
                return 0
            m = avail
            if m == 0:
                return 0
        store_relaxed(hdr, HDR_CONS_HEAD, np.uint32(old + m))
    else:
        while True:
            old = load_acquire(hdr, HDR_CONS_HEAD)
            avail = np.uint32(load_acquire(hdr, HDR_PROD_TAIL) - old)
            m = req
            if m > avail:
                if is_bulk:
                    return 0
                m = avail
                if m == 0:
                    return 0
            if cas(hdr, HDR_CONS_HEAD, old, np.uint32(old + m)):
                break
    size = np.uint64(hdr[HDR_SIZE])
    idx = np.uint64(old & hdr[HDR_MASK])
    cnt = np.uint64(m)
    first = size - idx
    if cnt <= first:
        for i in range(cnt):
            out[i] = slots[idx + i]
    else:
        for i in range(first):
            out[i] = slots[idx + i]
        for i in range(cnt - first):
            out[first + i] = slots[i]
    if not single:
        _wait_tail(hdr, HDR_CONS_TAIL, old)
    store_release(hdr, HDR_CONS_TAIL, np.uint32(old + m))
    return np.int64(m)


@kernel
def ring_enqueue_bulk(hdr, slots, objs, n, single):
    """Enqueue exactly ``n`` handles from ``objs[:n]`` or none: returns n or 0.

    ``single`` selects the single-producer path (no CAS); only one process may
    then enqueue at a time.
    """
    always_inline()
    return _enqueue(hdr, slots, objs, n, True, single)


@kernel
def ring_enqueue_burst(hdr, slots, objs, n, single):
    """Enqueue as many of ``objs[:n]`` as fit: returns how many."""
    always_inline()
    return _enqueue(hdr, slots, objs, n, False, single)


@kernel
def ring_dequeue_bulk(hdr, slots, out, n, single):
    """Dequeue exactly ``n`` handles into ``out[:n]`` or none: returns n or 0."""
    always_inline()
    return _dequeue(hdr, slots, out, n, True, single)


@kernel
def ring_dequeue_burst(hdr, slots, out, n, single):
    """Dequeue up to ``n`` handles into ``out[:n]``: returns how many."""
    always_inline()
    return _dequeue(hdr, slots, out, n, False, single)


@kernel
def ring_count(hdr):
    """Entries in the ring (a snapshot when others are active)."""
    always_inline()
    cons_tail = load_acquire(hdr, HDR_CONS_TAIL)  # first: prod.tail can only be ahead of it
    prod_tail = load_acquire(hdr, HDR_PROD_TAIL)
    c = np.uint32(prod_tail - cons_tail)
    capacity = hdr[HDR_CAPACITY]
    if c > capacity:
        c = capacity
    return np.int64(c)


@kernel
def ring_free_count(hdr):
    """Free entries in the ring (a snapshot when others are active)."""
    always_inline()
    return np.int64(hdr[HDR_CAPACITY]) - ring_count(hdr)


@njit(cache=True)
def _enqueue_one(hdr, slots, obj, single):
    buf = np.empty(1, np.uint64)
    buf[0] = obj
    return _enqueue(hdr, slots, buf, 1, True, single) == 1


@njit(cache=True)
def _dequeue_one(hdr, slots, single):
    buf = np.zeros(1, np.uint64)
    ok = _dequeue(hdr, slots, buf, 1, True, single) == 1
    return ok, buf[0]


# --------------------------------------------------------------------------
# Python side


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _geometry(count: int, flags: int) -> tuple[int, int]:
    """(slots, capacity) for ``count`` and ``flags``; ValueError if invalid."""
    count = int(count)
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"unknown ring flags {flags:#x}")
    if flags & RING_F_EXACT_SZ:
        if count < 1:
            raise ValueError(f"ring count must be >= 1, got {count}")
        size = 1 << count.bit_length()  # next power of two above count
        if size > RING_SZ_MASK + 1 or count > RING_SZ_MASK:
            raise ValueError(f"ring count {count} too large")
        return size, count
    if not _is_pow2(count) or count < 2:
        raise ValueError(f"ring count must be a power of two >= 2 (or use RING_F_EXACT_SZ), got {count}")
    if count > RING_SZ_MASK:
        raise ValueError(f"ring count {count} exceeds {RING_SZ_MASK:#x}")
    return count, count - 1


def ring_memsize(count: int, flags: int = 0) -> int:
    """Bytes needed for a ring of ``count`` slots (a multiple of 64).

    ``count`` must be a power of two (capacity ``count - 1``), unless ``flags``
    has :data:`RING_F_EXACT_SZ`, in which case ``count`` is the capacity.
    """
    size, _ = _geometry(count, flags)
    return HDR_BYTES + size * 8


def _check_mem(mem) -> np.ndarray:
    if not isinstance(mem, np.ndarray):
        raise TypeError(f"ring memory must be a numpy array, got {type(mem).__name__}")
    if mem.dtype != np.uint8 or mem.ndim != 1:
        raise TypeError(f"ring memory must be a 1-d uint8 array, got {mem.dtype} ndim={mem.ndim}")
    if not mem.flags.c_contiguous:
        raise ValueError("ring memory must be contiguous")
    if not mem.flags.writeable:
        raise ValueError("ring memory must be writable")
    if mem.ctypes.data % 64:
        raise ValueError(f"ring memory must be 64-byte aligned (address {mem.ctypes.data:#x})")
    return mem


def _as_u64(objs) -> np.ndarray:
    if isinstance(objs, np.ndarray) and objs.dtype == np.uint64 and objs.ndim == 1:
        return objs
    a = np.asarray(objs)
    if a.ndim != 1:
        a = a.reshape(-1)
    if a.dtype != np.uint64:
        if a.size and a.dtype.kind not in "ui":
            raise TypeError(f"ring handles must be integers, got {a.dtype}")
        if a.size and a.dtype.kind == "i" and a.min() < 0:
            raise ValueError("ring handles must be non-negative")
        a = a.astype(np.uint64)
    return a


def _check_out(out) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.uint64 or out.ndim != 1:
        raise TypeError("out must be a 1-d uint64 numpy array")
    if not out.flags.writeable:
        raise ValueError("out must be writable")
    return out


class Ring:
    """A ring in ``mem`` (created with ``init=True``, attached with ``init=False``).

    ``hdr`` (u32) and ``slots`` (u64) are views of ``mem``: pass them to the
    ``ring_*`` kernels from jitted code.
    """

    def __init__(self, mem: np.ndarray, count: int, flags: int = 0, *, init: bool = True):
        mem = _check_mem(mem)
        if init:
            flags = int(flags)
            size, capacity = _geometry(count, flags)
        else:
            if mem.nbytes < HDR_BYTES:
                raise ValueError(f"ring memory too small: {mem.nbytes} bytes")
            hdr = mem[:HDR_BYTES].view(np.uint32)
            if int(hdr[HDR_MAGIC]) != RING_MAGIC:
                raise ValueError("no initialised ring in this memory (bad magic)")
            stored = int(hdr[HDR_FLAGS])
            if flags and int(flags) != stored:
                raise ValueError(f"ring was created with flags {stored:#x}, not {int(flags):#x}")
            flags = stored
            size, capacity = _geometry(count, flags)
            if int(hdr[HDR_SIZE]) != size or int(hdr[HDR_CAPACITY]) != capacity:
                raise ValueError(
                    f"ring geometry mismatch: memory has size={int(hdr[HDR_SIZE])} "
                    f"capacity={int(hdr[HDR_CAPACITY])}, count={count} asks size={size} capacity={capacity}"
                )
        need = HDR_BYTES + size * 8
        if mem.nbytes < need:
            raise ValueError(f"ring memory too small: {mem.nbytes} bytes < {need}")
        self.mem = mem
        self.hdr = mem[:HDR_BYTES].view(np.uint32)
        self.slots = mem[HDR_BYTES:need].view(np.uint64)
        self.size = size
        self.mask = size - 1
        self.capacity = capacity
        self.flags = flags
        self.name: str | None = None
        self.memzone = None
        self._sp = bool(flags & RING_F_SP_ENQ)
        self._sc = bool(flags & RING_F_SC_DEQ)
        if init:
            hdr = self.hdr
            hdr[:] = 0  # magic too: attachers wait for _publish_magic
            hdr[HDR_SIZE] = size
            hdr[HDR_MASK] = size - 1
            hdr[HDR_CAPACITY] = capacity
            hdr[HDR_FLAGS] = flags
            _publish_magic(hdr)

    # -- data path (thin wrappers over the kernels) --------------------------
    def enqueue_bulk(self, objs) -> int:
        a = _as_u64(objs)
        return ring_enqueue_bulk(self.hdr, self.slots, a, a.shape[0], self._sp)

    def enqueue_burst(self, objs) -> int:
        a = _as_u64(objs)
        return ring_enqueue_burst(self.hdr, self.slots, a, a.shape[0], self._sp)

    def dequeue_bulk(self, out) -> int:
        out = _check_out(out)
        return ring_dequeue_bulk(self.hdr, self.slots, out, out.shape[0], self._sc)

    def dequeue_burst(self, out) -> int:
        out = _check_out(out)
        return ring_dequeue_burst(self.hdr, self.slots, out, out.shape[0], self._sc)

    def enqueue(self, obj) -> bool:
        return _enqueue_one(self.hdr, self.slots, np.uint64(obj), self._sp)

    def dequeue(self) -> int | None:
        ok, obj = _dequeue_one(self.hdr, self.slots, self._sc)
        return int(obj) if ok else None

    # -- state ---------------------------------------------------------------
    def count(self) -> int:
        return ring_count(self.hdr)

    def free_count(self) -> int:
        return ring_free_count(self.hdr)

    def empty(self) -> bool:
        return ring_count(self.hdr) == 0

    def full(self) -> bool:
        return ring_free_count(self.hdr) == 0

    def reset(self) -> None:
        """Empty the ring.  Not safe while anyone else uses it (as rte_ring_reset)."""
        hdr = self.hdr
        hdr[HDR_PROD_HEAD] = 0
        hdr[HDR_PROD_TAIL] = 0
        hdr[HDR_CONS_HEAD] = 0
        hdr[HDR_CONS_TAIL] = 0

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        h = self.hdr
        return (
            f"Ring(name={self.name!r}, size={self.size}, capacity={self.capacity}, flags={self.flags:#x}, "
            f"prod={int(h[HDR_PROD_HEAD])}/{int(h[HDR_PROD_TAIL])}, "
            f"cons={int(h[HDR_CONS_HEAD])}/{int(h[HDR_CONS_TAIL])})"
        )


@njit(cache=True)
def _publish_magic(hdr):
    store_release(hdr, HDR_MAGIC, RING_MAGIC)


def _memzone_name(name: str) -> str:
    return f"RG_{name}"


def ring_create(memory, name: str, count: int, flags: int = 0) -> Ring:
    """Reserve memzone ``RG_<name>`` in ``memory`` and build a ring in it."""
    size = ring_memsize(count, flags)
    mz = memory.memzone_reserve(_memzone_name(name), size, align=64)
    ring = Ring(mz.view(dtype=np.uint8), count, flags)
    ring.name = name
    ring.memzone = mz
    return ring


def ring_lookup(memory, name: str) -> Ring:
    """Attach to the ring ``name`` created (by any process) with :func:`ring_create`.

    Raises KeyError when no such memzone exists.
    """
    mz = memory.memzone_lookup(_memzone_name(name))
    if mz is None:
        raise KeyError(f"no ring named {name!r}")
    mem = mz.view(dtype=np.uint8)
    if mem.nbytes < HDR_BYTES:
        raise ValueError(f"memzone {_memzone_name(name)!r} is too small for a ring")
    hdr = mem[:HDR_BYTES].view(np.uint32)
    if int(hdr[HDR_MAGIC]) != RING_MAGIC:
        raise ValueError(f"memzone {_memzone_name(name)!r} holds no initialised ring")
    flags = int(hdr[HDR_FLAGS])
    count = int(hdr[HDR_CAPACITY]) if flags & RING_F_EXACT_SZ else int(hdr[HDR_SIZE])
    ring = Ring(mem, count, flags, init=False)
    ring.name = name
    ring.memzone = mz
    return ring
