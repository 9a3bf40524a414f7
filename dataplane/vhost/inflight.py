"""Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): requests survive a back-end crash.

A back-end that dies between fetching a descriptor chain and publishing its
used entry loses the request: the front-end cannot tell which chains were
taken.  With inflight tracking the back-end keeps, in shared memory the
front-end holds on to (QEMU keeps the fd across reconnects), a record of
every chain it fetched and has not completed; the next back-end instance
gets the area back (``VHOST_USER_SET_INFLIGHT_FD``) and resubmits those
chains, oldest first, before it takes new ones.

**The area** (spec: QEMU docs/interop/vhost-user.rst, "Inflight I/O
tracking"): one region per queue, each rounded up to 64 bytes (DPDK's
``INFLIGHT_ALIGNMENT``), in the split or the packed layout as
``VIRTIO_F_RING_PACKED`` is negotiated:

* split, ``QueueRegionSplit``: ``features u64, version u16, desc_num u16,
  last_batch_head u16, used_idx u16`` then ``desc_num`` × ``DescStateSplit``
  (16 bytes: ``inflight u8, padding[5], next u16, counter u64``) indexed by
  head descriptor;
* packed, ``QueueRegionPacked``: ``features u64, version u16, desc_num u16,
  free_head u16, old_free_head u16, used_idx u16, old_used_idx u16,
  used_wrap_counter u8, old_used_wrap_counter u8, padding[7]`` (the array
  starts at byte 32) then ``desc_num`` × ``DescStatePacked`` (32 bytes:
  ``inflight u8, padding u8, next u16, last u16, num u16, counter u64, id u16,
  flags u16, len u32, addr u64``): copies of the fetched ring descriptors
  kept on a free list, because the driver may overwrite the ring slots of a
  chain that is still in flight.

``version`` 0 means a fresh area: the first queue start initialises it
(version 1) instead of recovering from it.

**Control plane** (:class:`InflightArea`): ``GET_INFLIGHT_FD`` allocates a
zeroed memfd of ``num_queues × per-queue size`` and replies with it
(``mmap_size``, offset 0); ``SET_INFLIGHT_FD`` maps the front-end's fd.
Sizes are validated (:class:`InflightError`: a clear reason, nothing mapped).
The fd stays open so that each lcore maps the area itself; the queue's
slice (:func:`map_queue_inflight`) is used only when the vring's size is the
area's ``queue_size``.

**Data path** (:class:`Inflight`, a field of every vhost queue context;
these kernels are inlined into the ring helpers of
:mod:`~dataplane.vhost.dev_ring`), in the spec's order so that a crash at
any instruction is recoverable:

* fetch (:func:`inflight_fetched`): split ``desc[head].counter = counter++``
  then ``inflight = 1``; packed: the chain's ring descriptors are copied to
  entries taken from the free list, then ``old_free_head`` advances;
* push (:func:`inflight_pushed`): split links the head into the batch list
  (``desc[head].next = last_batch_head; last_batch_head = head``); packed
  remembers the entry (it goes back to the free list at the flush, so a
  fetch between a push and the flush cannot commit it early);
* flush (:func:`inflight_flush_begin` / :func:`inflight_flush_end` around
  the ring's own flush): split: used idx published, then ``inflight = 0``
  for the batch, then ``used_idx``; packed: the batch's entries go back to
  the free list and ``used_idx`` / ``used_wrap_counter`` advance, the ring's
  used flags are published, ``inflight = 0``, then the ``old_*`` fields commit.

**Reconnect** (:func:`inflight_recover`, at every queue start, Python; then
:func:`signal_if_recovered` interrupts the driver once, since the previous
back-end may have died between publishing completions and signalling them):
the spec's recovery (split: a last batch whose ``used_idx`` lags the used
ring is cleared through the ``last_batch_head`` list; packed: an
in-progress batch is committed if the slot at ``old_used_idx`` no longer
holds the buffer made available there in lap ``old_used_wrap_counter``,
else rolled back, and the free list's entries are cleared), then the heads
still marked inflight are queued for resubmission in counter order, the
device's used position is the ring's (split ``used->idx``; packed
``old_used_idx``), and its avail position is that plus what is in flight.
:func:`inflight_resubmit` hands the queued chains out (split: walked from the
descriptor table, which the driver leaves alone while a chain is in flight;
packed: walked from the copies) before any new avail entry.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections import namedtuple

import numpy as np

from dataplane import log as dplog
from dataplane.rings.atomics import store_release
from dataplane.rings.jit import inline_kernel, kernel
from dataplane.rings.mem import load_u16, load_u32, load_u64
from dataplane.rings.packed import WRAP_BIT, packed_dev_set_base
from dataplane.rings.regions import translate
from dataplane.rings.split import split_dev_set_base, split_dev_walk
from dataplane.rings.virtqueue import (
    ERR_ADDR,
    ERR_CHAIN_LOOP,
    ERR_DESC_INDEX,
    ERR_INDIRECT,
    ERR_LAYOUT,
    ERR_TOO_MANY_SEGS,
    FEAT_INDIRECT,
    FEAT_READ_ONLY,
    OK,
    STATE_AVAIL_WRAP,
    STATE_CHAINS,
    STATE_FEATURES,
    STATE_LAST_AVAIL,
    STATE_LAST_USED,
    STATE_SIZE,
    STATE_USED_WRAP,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_PACKED_DESC_F_AVAIL,
    VRING_PACKED_DESC_F_USED,
)
from dataplane.vhost.guest_memory import map_shared, unmap

__all__ = [
    "INFLIGHT_ALIGNMENT",
    "INFLIGHT_VERSION",
    "SPLIT_HDR_SIZE",
    "SPLIT_DESC_SIZE",
    "PACKED_HDR_SIZE",
    "PACKED_DESC_SIZE",
    "queue_region_size",
    "InflightError",
    "InflightArea",
    "Inflight",
    "make_inflight",
    "no_inflight",
    "inflight_recover",
    "inflight_fetched",
    "inflight_unfetched",
    "inflight_pushed",
    "inflight_flush_begin",
    "inflight_flush_end",
    "inflight_resubmit",
    "inflight_spec",
    "take_inflight_fd",
    "map_queue_inflight",
    "split_inflight_heads",
    "packed_inflight_heads",
    "report_inflight",
    "signal_if_recovered",
]

log = dplog.get_logger("dataplane.vhost")

#: Each queue region is rounded up to this many bytes (DPDK's INFLIGHT_ALIGNMENT).
INFLIGHT_ALIGNMENT = 64
#: The region version this back-end writes (0: a fresh area).
INFLIGHT_VERSION = 1
SPLIT_HDR_SIZE = 16
SPLIT_DESC_SIZE = 16
PACKED_HDR_SIZE = 32  # 29 bytes of fields, the DescStatePacked array 8-aligned
PACKED_DESC_SIZE = 32
_MAX_QUEUE_SIZE = 32768
_MAX_QUEUES = 256
_U64_MAX = (1 << 64) - 1


def queue_region_size(queue_size: int, packed: bool) -> int:
    """Bytes of one queue's region for ``queue_size`` descriptors (DPDK's sizes, 64-byte rounded)."""
    if packed:
        raw = PACKED_DESC_SIZE * queue_size + 8 + 2 * 6 + 9
    else:
        raw = SPLIT_DESC_SIZE * queue_size + 8 + 2 * 4
    return -(-raw // INFLIGHT_ALIGNMENT) * INFLIGHT_ALIGNMENT


class InflightError(Exception):
    """An inflight area cannot be allocated or mapped (the message says why)."""


# =============================================================================
# control plane: the area
# =============================================================================


def _check_geometry(num_queues: int, queue_size: int) -> None:
    if not 1 <= num_queues <= _MAX_QUEUES:
        raise InflightError(f"num_queues {num_queues} out of range (1..{_MAX_QUEUES})")
    if not 1 <= queue_size <= _MAX_QUEUE_SIZE:
        raise InflightError(f"queue_size {queue_size} out of range (1..{_MAX_QUEUE_SIZE})")


class InflightArea:
    """A mapped inflight area: ``fd`` (kept open for the lcores), ``mmap_size``, ``mmap_offset``,
    ``num_queues``, ``queue_size``, ``packed`` (layout), ``region_size`` (bytes per queue),
    ``addr`` (the mapping), ``buf`` (uint8 view of the whole area)."""

    def __init__(self, fd: int, mmap_size: int, mmap_offset: int, num_queues: int, queue_size: int, packed: bool,
                 addr: int):
        self.fd = fd
        self.mmap_size = mmap_size
        self.mmap_offset = mmap_offset
        self.num_queues = num_queues
        self.queue_size = queue_size
        self.packed = bool(packed)
        self.region_size = queue_region_size(queue_size, packed)
        self.addr = addr
        self.buf = np.frombuffer((ctypes.c_uint8 * mmap_size).from_address(addr), np.uint8)

    @classmethod
    def allocate(cls, num_queues: int, queue_size: int, packed: bool, name: str = "vhost-inflight") -> "InflightArea":
        """GET_INFLIGHT_FD: a zeroed memfd for ``num_queues`` regions of ``queue_size`` descriptors."""
        _check_geometry(num_queues, queue_size)
        size = num_queues * queue_region_size(queue_size, packed)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            addr = map_shared(fd, size, 0)
        except OSError as e:
            os.close(fd)
            raise InflightError(f"cannot allocate the {size:#x}-byte inflight area: {e.strerror}") from None
        area = cls(fd, size, 0, num_queues, queue_size, packed, addr)
        if packed:  # a fresh packed region: every entry on the free list, wrap counters 1 (as DPDK)
            for q in range(num_queues):
                _packed_init(area.queue_region(q), queue_size, 0, 1, version=0)
        return area

    @classmethod
    def map(cls, fd: int, mmap_size: int, mmap_offset: int, num_queues: int, queue_size: int,
            packed: bool) -> "InflightArea":
        """SET_INFLIGHT_FD: map the front-end's area (takes ``fd``; closed on failure).

        Refused (:class:`InflightError`): a queue count or size out of range, an
        area smaller than ``num_queues`` regions of ``queue_size`` in the
        negotiated layout, an offset not page-aligned, a size + offset that
        overflows, an fd that is not a file or memfd, a file smaller than
        ``mmap_offset + mmap_size``, a failing mmap.
        """
        try:
            _check_geometry(num_queues, queue_size)
            need = num_queues * queue_region_size(queue_size, packed)
            if mmap_size < need:
                raise InflightError(f"mmap_size {mmap_size:#x} is smaller than {num_queues} queue regions of "
                                    f"{queue_size} {'packed' if packed else 'split'} descriptors ({need:#x} bytes)")
            if mmap_offset > _U64_MAX - mmap_size:
                raise InflightError(f"mmap_offset {mmap_offset:#x} + mmap_size {mmap_size:#x} overflows 64 bits")
            if mmap_offset % os.sysconf("SC_PAGE_SIZE"):
                raise InflightError(f"mmap_offset {mmap_offset:#x} is not page-aligned")
            try:
                st = os.fstat(fd)
            except OSError as e:
                raise InflightError(f"bad inflight fd {fd}: {e.strerror}") from None
            if not stat.S_ISREG(st.st_mode):
                raise InflightError("inflight fd cannot be mapped as memory (not a file or memfd)")
            if st.st_size < mmap_offset + mmap_size:
                raise InflightError(f"inflight file is {st.st_size:#x} bytes, smaller than mmap_offset + mmap_size = "
                                    f"{mmap_offset + mmap_size:#x}")
            try:
                addr = map_shared(fd, mmap_size, mmap_offset)
            except OSError as e:
                raise InflightError(f"mmap of the {mmap_size:#x}-byte inflight area failed: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, mmap_size, mmap_offset, num_queues, queue_size, packed, addr)

    def queue_region(self, qid: int) -> np.ndarray:
        """uint8 view of queue ``qid``'s region."""
        if not 0 <= qid < self.num_queues:
            raise IndexError(f"queue {qid} has no inflight region ({self.num_queues} queues)")
        return self.buf[qid * self.region_size : (qid + 1) * self.region_size]

    def unmap(self) -> None:
        """munmap and close the fd (idempotent)."""
        self.buf = np.zeros(0, np.uint8)
        if self.addr:
            unmap(self.addr, self.mmap_size)
            self.addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def describe(self) -> dict:
        return dict(mmap_size=self.mmap_size, mmap_offset=self.mmap_offset, num_queues=self.num_queues,
                    queue_size=self.queue_size, layout="packed" if self.packed else "split")

    def __repr__(self) -> str:
        return (f"InflightArea(fd={self.fd}, mmap_size={self.mmap_size:#x}, num_queues={self.num_queues}, "
                f"queue_size={self.queue_size}, {'packed' if self.packed else 'split'})")


# -- hand-over to lcores ------------------------------------------------------------


def inflight_spec(dev, vq) -> tuple[dict, list[int]]:
    """The inflight part of vring ``vq``'s hand-over: spec entry and the area's fd (if any)."""
    a = getattr(dev, "inflight", None)
    if a is None:
        return dict(inflight=None), []
    return dict(inflight=(a.mmap_size, a.mmap_offset, a.num_queues, a.queue_size, a.packed)), [a.fd]


def take_inflight_fd(spec: dict, fds: list[int]) -> tuple[int, list[int]]:
    """Split a hand-over's fds (after :func:`~dataplane.vhost.dirty_log.take_log_fd`): the inflight
    fd (right after the region fds, when ``spec["inflight"]`` is set; else -1) and the others."""
    if not spec.get("inflight"):
        return -1, list(fds)
    nreg = len(spec["regions"])
    return fds[nreg], list(fds[:nreg]) + list(fds[nreg + 1 :])


def map_queue_inflight(spec: dict, fd: int, qid: int, **where) -> tuple["Inflight", InflightArea | None]:
    """Lcore side: map the area of a hand-over (``fd`` taken over) and build queue ``qid``'s
    :class:`Inflight`.  A queue the area does not cover (index, size or layout) runs untracked,
    with an error logged; an area that cannot be mapped likewise."""
    if fd < 0:
        return no_inflight(), None
    mmap_size, mmap_offset, nq, qsize, packed = spec["inflight"]
    try:
        area = InflightArea.map(fd, mmap_size, mmap_offset, nq, qsize, packed)
    except InflightError as e:
        log.error("inflight area not usable: queue runs without inflight tracking", qid=qid, reason=str(e), **where)
        return no_inflight(), None
    why = None
    if qid >= nq:
        why = f"the area covers {nq} queues"
    elif spec["size"] != qsize:
        why = f"vring size {spec['size']} differs from the area's queue_size {qsize}"
    elif bool(spec["packed"]) != bool(packed):
        why = "the area's layout differs from the ring's"
    if why is not None:
        log.error("inflight area does not cover this vring: it runs without inflight tracking", qid=qid, reason=why,
                  **where)
        area.unmap()
        return no_inflight(), None
    return make_inflight(area.queue_region(qid), qsize, packed), area


# =============================================================================
# data-path state
# =============================================================================

Inflight = namedtuple("Inflight", ["r8", "r16", "r32", "r64", "q"])
Inflight.__doc__ = """A queue's inflight region as views (``r8``/``r16``/``r32``/``r64``; empty when the
queue is not tracked) and ``q``: private int64 slots (:data:`Q_*`), then per-descriptor arrays
(packed id → entry, the resubmit list, the packed batch, the entries of the last fetch)."""

Q_ON = 0  # 1: tracking
Q_NUM = 1  # desc_num (the vring size)
Q_COUNTER = 2  # the global counter (next value)
Q_BATCH = 3  # pushes since the last flush
Q_RS_N = 4  # chains queued for resubmission
Q_RS_POS = 5  # next one to hand out
Q_LAST_RS = 6  # chains the latest fetch took from the resubmit list (0: from the ring)
Q_BAD = 7  # region entries found out of range (counter; tracking stops)
Q_RECOVERED = 8  # 1: the queue started from a region a previous back-end left (a reconnect)
Q_SLOTS = 9

# split header (u16 indices) and DescStateSplit fields
_S_VERSION = 4
_S_DESC_NUM = 5
_S_LBH = 6
_S_USED = 7
# packed header: u16 indices, u8 offsets
_P_VERSION = 4
_P_DESC_NUM = 5
_P_FREE = 6
_P_OLD_FREE = 7
_P_USED = 8
_P_OLD_USED = 9
_P_WRAP = 20
_P_OLD_WRAP = 21

_F_AU = VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED


def make_inflight(region: np.ndarray, num: int, packed: bool) -> "Inflight":
    """A tracked queue's :class:`Inflight` over its ``region`` (uint8 view, 8-aligned) for a ring of ``num``."""
    size = queue_region_size(num, packed)
    if region.shape[0] < size:
        raise ValueError(f"inflight region is {region.shape[0]} bytes, needs {size}")
    r = region[:size]
    q = np.zeros(Q_SLOTS + 4 * num, np.int64)
    q[Q_ON] = 1
    q[Q_NUM] = num
    return Inflight(r, r.view(np.uint16), r.view(np.uint32), r.view(np.uint64), q)


_NONE: list = []


def no_inflight() -> "Inflight":
    """A queue without tracking (nothing is recorded)."""
    if not _NONE:
        r = np.zeros(64, np.uint8)
        _NONE.append(Inflight(r, r.view(np.uint16), r.view(np.uint32), r.view(np.uint64), np.zeros(Q_SLOTS, np.int64)))
    r8, r16, r32, r64, _ = _NONE[0]
    return Inflight(r8, r16, r32, r64, np.zeros(Q_SLOTS, np.int64))


# private per-descriptor arrays in q
@inline_kernel
def _idmap(num):
    return Q_SLOTS


@inline_kernel
def _rs(num):
    return Q_SLOTS + num


@inline_kernel
def _pbatch(num):
    return Q_SLOTS + 2 * num


@inline_kernel
def _fent(num):
    return Q_SLOTS + 3 * num


# split field indices
@inline_kernel
def _s_infl(i):
    return SPLIT_HDR_SIZE + SPLIT_DESC_SIZE * i


@inline_kernel
def _s_next(i):
    return 11 + 8 * i


@inline_kernel
def _s_counter(i):
    return 3 + 2 * i


# packed field indices
@inline_kernel
def _p_infl(e):
    return PACKED_HDR_SIZE + PACKED_DESC_SIZE * e


@inline_kernel
def _p16(e, k):
    """u16 index of DescStatePacked ``e``'s field at byte ``2k``: next 1, last 2, num 3, id 8, flags 9."""
    return 16 + 16 * e + k


@inline_kernel
def _p_counter(e):
    return 5 + 4 * e


@inline_kernel
def _p_len(e):
    return 13 + 8 * e


@inline_kernel
def _p_addr(e):
    return 7 + 4 * e


@inline_kernel
def _stop_tracking(infl):
    infl.q[Q_BAD] += 1
    infl.q[Q_ON] = 0


# =============================================================================
# data path (numba; inlined into the ring helpers)
# =============================================================================


@kernel
def inflight_fetched(is_packed, pvr, state, chains, n, idx0, wrap0, infl):
    """Record chains ``[0, n)`` just fetched (the packed ring's fetch started at slot ``idx0``)."""
    q = infl.q
    num = q[Q_NUM]
    q[Q_LAST_RS] = 0
    if not is_packed:
        for c in range(n):
            h = np.int64(chains.head[c])
            if h < num:
                infl.r64[_s_counter(h)] = np.uint64(q[Q_COUNTER])
                q[Q_COUNTER] += 1
                store_release(infl.r8, _s_infl(h), 1)
        return
    ring_num = state[STATE_SIZE]
    idx = idx0
    fent = _fent(num)
    for c in range(n):
        nd = np.int64(chains.ndesc[c])
        e = np.int64(infl.r16[_P_OLD_FREE])
        if e >= num:
            _stop_tracking(infl)
            return
        infl.r16[_p16(e, 3)] = 0
        infl.r64[_p_counter(e)] = np.uint64(q[Q_COUNTER])
        q[Q_COUNTER] += 1
        store_release(infl.r8, _p_infl(e), 1)
        f = e
        for j in range(nd):
            slot = idx + j
            if slot >= ring_num:
                slot -= ring_num
            f = np.int64(infl.r16[_P_FREE])
            if f >= num:
                _stop_tracking(infl)
                return
            infl.r64[_p_addr(f)] = pvr.desc_u64[2 * slot]
            infl.r32[_p_len(f)] = pvr.desc_u32[4 * slot + 2]
            infl.r16[_p16(f, 8)] = pvr.desc_u16[8 * slot + 6]
            infl.r16[_p16(f, 9)] = pvr.desc_u16[8 * slot + 7]
            if j == nd - 1:
                infl.r16[_p16(e, 2)] = f
            infl.r16[_p16(e, 3)] = j + 1
            store_release(infl.r16, _P_FREE, infl.r16[_p16(f, 1)])
        store_release(infl.r16, _P_OLD_FREE, infl.r16[_P_FREE])
        bid = np.int64(chains.head[c])
        if bid < num:
            q[_idmap(num) + bid] = e
        if c < num:
            q[fent + c] = e
        idx += nd
        if idx >= ring_num:
            idx -= ring_num


@kernel
def inflight_unfetched(is_packed, chains, frm, nc, infl):
    """Chains ``[frm, nc)`` of the latest fetch are given back (not used): forget them.  Returns True
    when they came from the resubmit list (the ring's avail position must not move back)."""
    q = infl.q
    if nc <= frm:
        return False
    if q[Q_LAST_RS] > 0:
        back = min(nc - frm, q[Q_LAST_RS])
        q[Q_RS_POS] -= back
        q[Q_LAST_RS] -= back
        return True
    num = q[Q_NUM]
    if not is_packed:
        for c in range(frm, nc):
            h = np.int64(chains.head[c])
            if h < num:
                store_release(infl.r8, _s_infl(h), 0)
        return False
    if frm >= num:
        return False
    fent = _fent(num)
    e0 = q[fent + frm]
    # the entries were taken from the free list in order: put its head back first (a crash
    # now leaves them on the free list, where recovery clears their marks)
    store_release(infl.r16, _P_OLD_FREE, e0)
    store_release(infl.r16, _P_FREE, e0)
    for c in range(frm, min(nc, num)):
        store_release(infl.r8, _p_infl(q[fent + c]), 0)
    return False


@kernel
def inflight_pushed(is_packed, head, infl):
    """A used entry for chain ``head`` (packed: buffer id) was queued: add it to the batch."""
    q = infl.q
    num = q[Q_NUM]
    h = np.int64(head)
    if h < 0 or h >= num:
        return
    if not is_packed:
        infl.r16[_s_next(h)] = infl.r16[_S_LBH]
        store_release(infl.r16, _S_LBH, h)
        q[Q_BATCH] += 1
        return
    b = q[Q_BATCH]
    if b < num:
        q[_pbatch(num) + b] = q[_idmap(num) + h]
        q[Q_BATCH] = b + 1


@kernel
def inflight_flush_begin(is_packed, state, used_idx, used_wrap, infl):
    """Before the ring's flush (packed): the batch's entries back on the free list, then
    ``used_idx`` / ``used_wrap_counter`` = the position after the batch (``used_idx``, ``used_wrap``)."""
    q = infl.q
    if not is_packed or q[Q_BATCH] == 0:
        return
    num = q[Q_NUM]
    pb = _pbatch(num)
    for k in range(q[Q_BATCH]):
        e = q[pb + k]
        last = np.int64(infl.r16[_p16(e, 2)])
        if last >= num:
            _stop_tracking(infl)
            return
        infl.r16[_p16(last, 1)] = infl.r16[_P_FREE]
        store_release(infl.r16, _P_FREE, e)
    infl.r16[_P_USED] = used_idx
    store_release(infl.r8, _P_WRAP, used_wrap)


@kernel
def inflight_flush_end(is_packed, state, infl):
    """After the ring's flush published the batch: clear its marks, then commit the position."""
    q = infl.q
    nb = q[Q_BATCH]
    if nb == 0:
        return
    num = q[Q_NUM]
    q[Q_BATCH] = 0
    if not is_packed:
        h = np.int64(infl.r16[_S_LBH])
        for k in range(nb):
            if h >= num:
                break
            store_release(infl.r8, _s_infl(h), 0)
            h = np.int64(infl.r16[_s_next(h)])
        store_release(infl.r16, _S_USED, state[STATE_LAST_USED])
        return
    pb = _pbatch(num)
    for k in range(nb):
        store_release(infl.r8, _p_infl(q[pb + k]), 0)
    infl.r16[_P_OLD_FREE] = infl.r16[_P_FREE]
    infl.r16[_P_OLD_USED] = infl.r16[_P_USED]
    store_release(infl.r8, _P_OLD_WRAP, infl.r8[_P_WRAP])


@inline_kernel
def _seg(regions, chains, addr, length, wflag, seen_write, s, smax):
    """One buffer of a resubmitted chain; returns (status, seen_write)."""
    if wflag:
        seen_write = True
    elif seen_write:
        return ERR_LAYOUT, seen_write
    if s >= smax:
        return ERR_TOO_MANY_SEGS, seen_write
    hva = translate(regions, addr, length)
    if hva == np.uint64(0):
        return ERR_ADDR, seen_write
    chains.seg_addr[s] = hva
    chains.seg_len[s] = length
    chains.seg_write[s] = 1 if wflag else 0
    return OK, seen_write


@kernel
def _packed_walk_copies(infl, regions, chains, feats, e, s0, smax):
    """Walk the copied descriptors of entry ``e``; returns (status, ndesc, segs, total, buffer id)."""
    num = infl.q[Q_NUM]
    nd = np.int64(infl.r16[_p16(e, 3)])
    wmask = np.int64(0) if (feats & FEAT_READ_ONLY) else np.int64(VRING_DESC_F_WRITE)
    s = s0
    total = np.int64(0)
    seen_write = False
    status = OK
    f = e
    bid = np.int64(0)
    if nd == 0 or nd > num:
        return ERR_CHAIN_LOOP, max(nd, np.int64(1)), 0, 0, np.int64(infl.r16[_p16(e, 8)])
    for j in range(nd):
        if f >= num:
            return ERR_DESC_INDEX, nd, 0, 0, bid
        addr = infl.r64[_p_addr(f)]
        length = np.int64(infl.r32[_p_len(f)])
        fl = np.int64(infl.r16[_p16(f, 9)])
        bid = np.int64(infl.r16[_p16(f, 8)])
        if status == OK:
            if fl & VRING_DESC_F_INDIRECT:
                if (feats & FEAT_INDIRECT) == 0 or (fl & VRING_DESC_F_NEXT) or j > 0 or length == 0 or (length & 15):
                    status = ERR_INDIRECT
                else:
                    thva = translate(regions, addr, length)
                    if thva == np.uint64(0):
                        status = ERR_INDIRECT
                    else:
                        for t in range(length >> 4):
                            ea = thva + np.uint64(16 * t)
                            ef = np.int64(load_u16(ea + np.uint64(14), 0))
                            if ef & VRING_DESC_F_INDIRECT:
                                status = ERR_INDIRECT
                                break
                            tl = np.int64(load_u32(ea + np.uint64(8), 0))
                            status, seen_write = _seg(regions, chains, load_u64(ea, 0), tl, ef & wmask, seen_write, s,
                                                      smax)
                            if status != OK:
                                break
                            s += 1
                            total += tl
            else:
                status, seen_write = _seg(regions, chains, addr, length, fl & wmask, seen_write, s, smax)
                if status == OK:
                    s += 1
                    total += length
        f = np.int64(infl.r16[_p16(f, 1)])
    if status == OK and bid >= num:
        status = ERR_DESC_INDEX
    if status != OK:
        return status, nd, 0, 0, bid
    return OK, nd, s - s0, total, bid


@kernel
def inflight_resubmit(is_packed, svr, state, regions, chains, want, infl):
    """Hand out up to ``want`` chains of the resubmit list (oldest first) as a fetch would; returns how many."""
    q = infl.q
    num = q[Q_NUM]
    rs = _rs(num)
    n = min(np.int64(want), np.int64(chains.head.shape[0]), q[Q_RS_N] - q[Q_RS_POS])
    smax = min(chains.seg_addr.shape[0], chains.seg_len.shape[0], chains.seg_write.shape[0])
    feats = state[STATE_FEATURES]
    s = np.int64(0)
    c = np.int64(0)
    while c < n:
        h = q[rs + q[Q_RS_POS] + c]
        if is_packed:
            st, nd, ns, total, head = _packed_walk_copies(infl, regions, chains, feats, h, s, smax)
        else:
            st, nd, ns, total = split_dev_walk(svr, regions, num, feats, h, chains.seg_addr, chains.seg_len,
                                               chains.seg_write, s, smax)
            head = h
        if st == ERR_TOO_MANY_SEGS and s > 0:
            break
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
        c += 1
    q[Q_RS_POS] += c
    q[Q_LAST_RS] = c
    state[STATE_CHAINS] += c
    return c


def report_inflight(queue, **where) -> None:
    """Log (once) that a queue's tracking stopped because its region held an entry out of range
    (``queue``: a BlkQueue / VhostQueue; its ``ctx.inflight``)."""
    q = queue.ctx.inflight.q
    if q[Q_BAD] and not getattr(queue, "_inflight_reported", False):
        queue._inflight_reported = True
        log.error("inflight region holds an entry out of range: tracking stopped for this vring "
                  "(requests in flight are no longer recorded)", **where)


def signal_if_recovered(infl: "Inflight", callfd: int) -> bool:
    """After :func:`inflight_recover`: interrupt the driver once if the queue resumed from a previous
    back-end's region (its last completions may never have been signalled).  Returns whether it did."""
    if not infl.q[Q_ON] or infl.q.shape[0] <= Q_RECOVERED or not infl.q[Q_RECOVERED] or callfd < 0:
        return False
    try:
        os.eventfd_write(callfd, 1)
    except OSError:
        return False
    return True


# =============================================================================
# reconnect (control side of the lcore: once per queue start)
# =============================================================================


def _packed_init(r8: np.ndarray, num: int, used: int, wrap: int, version: int = INFLIGHT_VERSION) -> None:
    r16 = r8.view(np.uint16)
    r8[:] = 0
    r16[_P_DESC_NUM] = num
    for e in range(num):
        r16[16 + 16 * e + 1] = e + 1
    r16[_P_USED] = r16[_P_OLD_USED] = used
    r8[_P_WRAP] = r8[_P_OLD_WRAP] = wrap
    r16[_P_VERSION] = version


def split_inflight_heads(infl: "Inflight") -> list[int]:
    """Heads marked inflight in a split region, in counter order."""
    num = int(infl.q[Q_NUM])
    marks = np.nonzero(infl.r8[SPLIT_HDR_SIZE : SPLIT_HDR_SIZE + SPLIT_DESC_SIZE * num : SPLIT_DESC_SIZE])[0]
    counters = infl.r64[3 : 3 + 2 * num : 2]
    return [int(h) for h in sorted(marks, key=lambda h: int(counters[h]))]


def packed_inflight_heads(infl: "Inflight") -> list[int]:
    """Entries marked inflight in a packed region, in counter order."""
    num = int(infl.q[Q_NUM])
    marks = np.nonzero(infl.r8[PACKED_HDR_SIZE : PACKED_HDR_SIZE + PACKED_DESC_SIZE * num : PACKED_DESC_SIZE])[0]
    counters = infl.r64[5 : 5 + 4 * num : 4]
    return [int(e) for e in sorted(marks, key=lambda e: int(counters[e]))]


def inflight_recover(infl: "Inflight", is_packed: bool, split_vr, packed_vr, state: np.ndarray, **where) -> int:
    """Queue start: initialise a fresh region, or recover from it (the spec's reconnect steps) and
    set the device's ring positions and resubmit list.  Returns the chains queued for resubmission."""
    q = infl.q
    if not q[Q_ON]:
        return 0
    num = int(q[Q_NUM])
    r8, r16 = infl.r8, infl.r16
    q[Q_COUNTER] = q[Q_BATCH] = q[Q_RS_N] = q[Q_RS_POS] = q[Q_LAST_RS] = 0
    version = int(r16[_S_VERSION])
    if version != 0 and int(r16[_S_DESC_NUM]) != num:
        log.error("inflight region's desc_num differs from the vring size: reinitialised, nothing resubmitted",
                  desc_num=int(r16[_S_DESC_NUM]), size=num, **where)
        version = 0
    # a previous back-end may have died between publishing used entries and signalling the driver:
    # the queue's starter interrupts it once (harmless when nothing was missed)
    q[Q_RECOVERED] = 1 if version != 0 else 0
    if not is_packed:
        used = int(split_vr.used_u16[1])
        if version == 0:
            r8[:] = 0
            r16[_S_DESC_NUM] = num
            r16[_S_USED] = used
            r16[_S_VERSION] = INFLIGHT_VERSION
            return 0
        if int(r16[_S_USED]) != used:  # the last batch was published, its marks not all cleared
            batch = min((used - int(r16[_S_USED])) & 0xFFFF, num)
            h = int(r16[_S_LBH])
            for _ in range(batch):
                if h >= num:
                    break
                r8[SPLIT_HDR_SIZE + SPLIT_DESC_SIZE * h] = 0
                h = int(r16[11 + 8 * h])
            r16[_S_USED] = used
        heads = split_inflight_heads(infl)
        split_dev_set_base(state, used)
        state[STATE_LAST_AVAIL] = (used + len(heads)) & 0xFFFF
        counters = infl.r64[3 : 3 + 2 * num : 2]
    else:
        if version == 0:
            _packed_init(r8, num, int(state[STATE_LAST_USED]), int(state[STATE_USED_WRAP]))
            return 0
        if r16[_P_USED] != r16[_P_OLD_USED] or r8[_P_WRAP] != r8[_P_OLD_WRAP]:
            slot = int(r16[_P_OLD_USED])
            if slot < num:
                # the batch's first used entry goes where the driver had made a buffer available in
                # lap old_used_wrap_counter: if that slot holds anything else now (the used entry, or
                # a buffer the driver posted there since, in the next lap), the batch was published
                flags = int(packed_vr.desc_u16[8 * slot + 7])
                avail = VRING_PACKED_DESC_F_AVAIL if r8[_P_OLD_WRAP] & 1 else VRING_PACKED_DESC_F_USED
                if (flags & _F_AU) != avail:  # the batch reached the ring before the crash: commit it
                    r16[_P_OLD_FREE] = r16[_P_FREE]
                    r16[_P_OLD_USED] = r16[_P_USED]
                    r8[_P_OLD_WRAP] = r8[_P_WRAP]
        r16[_P_FREE] = r16[_P_OLD_FREE]
        r16[_P_USED] = r16[_P_OLD_USED]
        r8[_P_WRAP] = r8[_P_OLD_WRAP]
        e = int(r16[_P_FREE])
        for _ in range(num):  # what is on the free list is not in flight
            if e >= num:
                break
            r8[PACKED_HDR_SIZE + PACKED_DESC_SIZE * e] = 0
            e = int(r16[16 + 16 * e + 1])
        heads = packed_inflight_heads(infl)
        used, wrap = int(r16[_P_USED]), int(r8[_P_WRAP]) & 1
        if used >= num:
            log.error("inflight region's used_idx is beyond the vring: reinitialised, nothing resubmitted",
                      used_idx=used, size=num, **where)
            _packed_init(r8, num, int(state[STATE_LAST_USED]), int(state[STATE_USED_WRAP]))
            return 0
        slots = 0
        idmap = q[Q_SLOTS : Q_SLOTS + num]
        for e in heads:
            slots += int(r16[16 + 16 * e + 3])
            last = int(r16[16 + 16 * e + 2])
            bid = int(r16[16 + 16 * last + 8]) if last < num else num
            if bid < num:
                idmap[bid] = e
        avail, awrap = used + slots % num, wrap
        if slots > num:
            log.error("inflight region records more descriptors than the vring holds", slots=slots, size=num, **where)
        if avail >= num:
            avail -= num
            awrap ^= 1
        packed_dev_set_base(state, avail | (awrap * WRAP_BIT), used | (wrap * WRAP_BIT))
        counters = infl.r64[5 : 5 + 4 * num : 4]
    q[Q_SLOTS + num : Q_SLOTS + num + len(heads)] = heads
    q[Q_RS_N] = len(heads)
    q[Q_COUNTER] = int(max((int(counters[h]) for h in heads), default=-1)) + 1
    if heads:
        log.info("inflight requests to resubmit", count=len(heads), layout="packed" if is_packed else "split",
                 used_idx=used, last_avail_idx=int(state[STATE_LAST_AVAIL]), **where)
    return len(heads)
