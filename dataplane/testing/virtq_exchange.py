"""Two-process virtqueue exchange: a driver and a device on two pinned cpus, over shared memory.

Used by ``tests/rings/test_virtq_exchange.py`` (correctness: no loss,
duplication or reordering over millions of buffers) and
``bench/virtqueue_perf.py`` (throughput against DPDK's virtio-user → vhost).

Topology (the shape of DPDK's ``testpmd`` txonly on ``net_virtio_user`` into
rxonly on ``net_vhost``, i.e. a vhost *dequeue*)::

    driver process (cpu A)                         device process (cpu B)
    ----------------------                         ----------------------
    buffers "vq_bufs" (shared, the guest memory)
      seq u64 written at the start of buffer s%Q
    add1(gpa, payload, readable) x burst  --ring-->  fetch(burst)
    publish / need_kick (suppressed: no kicks)       for each chain: COPY payload into
                                                       its own buffer area (private,
                                                       like mbufs), check seq == expected
    get_used(burst): cookies in order     <--ring--  push_used(len 0) ..., flush ONCE per burst
                                                     (interrupts suppressed)

The ring (split or packed, ``queue_size`` entries), the driver's buffer area
and a small control/result block live in memzones of one
:class:`~dataplane.memory.memory.Memory` (``in_memory``, ``--no-huge``: memfd
segments, no file anywhere).  Both processes are forked after everything is
set up (and after the loops are compiled), so they inherit the mappings.
Each loop is ONE numba call (``njit(cache=True, _nrt=False)``) that runs
until ``count`` buffers have been exchanged: no Python per burst.

Checks:

* device: every buffer's sequence number, read from the *copy*, must be the
  previous one + 1 (starting at 0); a jump forward (loss / reordering) and a
  jump backward (duplicate / reordering) are counted separately and the
  expectation resyncs, so the counts are numbers of discontinuities.  Chains
  with an error status or an unexpected length are counted too.
* driver: each harvested cookie (= the buffer's sequence number) must be the
  next one in posting order, with used length 0 (device-readable buffers).

Notification suppression: the device disables kicks and the driver disables
interrupts before the run; both still make the decisions each burst
(``publish`` / ``need_kick`` / ``flush_used``) and count the positive ones,
which must stay 0.

The copy: a vectorised loop over ``uint64`` indices for up to
:data:`SMALL_COPY` bytes (4 ns for 64 B here), ``llvm.memcpy`` (glibc's
``memcpy``) above (34 ns vs 42 ns for the loop at 1518 B).  Numba's slice
assignment ``dst[a:b] = src[c:d]`` is NOT used: it goes through the generic
``fancy_setslice`` (28 ns for 64 B, 415 ns for 1518 B) and needs NRT for its
overlap copy.

Cross-cpu cache misses, not instructions, bound the loops (one core doing
both sides costs ~20 ns per buffer in all): every payload line the driver
wrote is a miss for the device, and every line the device read is an
ownership miss for the driver's next write.  So the device prefetches the
first line of every payload of a burst right after the fetch
(``prefetch_lines``; +40-50 % at 64 B: the misses overlap instead of queueing
behind the copy of the previous buffer) and the driver ``prefetchw``-es the
buffers of its next burst (``driver_prefetchw``; +25 % on packed rings).
With IN_ORDER the device completes a burst with ONE used entry (split:
``split_dev_push_used_inorder(.., count)``; packed: one
``packed_dev_push_used_inorder`` covering the burst's slots).

``fault_at`` / ``fault_delta`` make the driver write a wrong sequence number
from one buffer on (tests prove the device's check catches a lost or a
repeated buffer at the right place).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from dataplane.memory.memory import Memory
from dataplane.rings.atomics import cpu_relax, load_acquire
from dataplane.rings.mem import memcpy, prefetch, prefetchw
from dataplane.rings.packed import DRV_BROKEN as PACKED_DRV_BROKEN
from dataplane.rings.packed import (
    PACKED_DEV_BATCHED,
    PACKED_FEAT_NO_PREFETCH,
    packed_dev_enable_notify,
    packed_dev_fetch,
    packed_dev_flush_used,
    packed_dev_push_used,
    packed_dev_push_used_inorder,
    packed_dev_state,
    packed_drv_add1,
    packed_drv_add1_batch,
    packed_drv_prefetch_avail,
    packed_drv_enable_interrupt,
    packed_drv_free_count,
    packed_drv_get_used,
    packed_drv_init,
    packed_drv_need_kick,
    packed_drv_state,
    packed_layout,
    packed_vring_from_buffer,
)
from dataplane.rings.regions import make_regions
from dataplane.rings.split import DRV_BROKEN as SPLIT_DRV_BROKEN
from dataplane.rings.split import (
    split_dev_enable_notify,
    split_dev_fetch,
    split_dev_flush_used,
    split_dev_push_used,
    split_dev_push_used_inorder,
    split_dev_state,
    split_drv_add1,
    split_drv_enable_interrupt,
    split_drv_free_count,
    split_drv_get_used,
    split_drv_init,
    split_drv_publish,
    split_drv_state,
    split_layout,
    split_vring_from_buffer,
)
from dataplane.rings.virtqueue import FEAT_IN_ORDER, OK, STATE_ERRORS, make_chains

__all__ = [
    "SPLIT",
    "PACKED",
    "SMALL_COPY",
    "ExchangeConfig",
    "ExchangeResult",
    "ExchangeError",
    "ExchangeTimeout",
    "run_exchange",
    "compile_loops",
    "copy_bytes",
    "split_driver_loop",
    "split_device_loop",
    "packed_driver_loop",
    "packed_device_loop",
]

SPLIT = "split"
PACKED = "packed"
SMALL_COPY = 256  # bytes: up to this the copy is an inline vectorised loop, above llvm.memcpy

# -- control / result block (int64 words of the "vq_ctl" memzone) -------------------
# control line
CTL_GO = 0  # set by the parent once both children are ready
CTL_ABORT = 1  # set by the parent on timeout: loops return at their next iteration
CTL_READY_DRV = 2
CTL_READY_DEV = 3
# driver results (own cache lines)
R_DRV = 16
DRV_POSTED = R_DRV + 0
DRV_HARVESTED = R_DRV + 1
DRV_COOKIE_ERR = R_DRV + 2  # harvested cookie not the next in posting order
DRV_FIRST_BAD = R_DRV + 3  # harvest index of the first bad cookie (-1: none)
DRV_LEN_ERR = R_DRV + 4  # used length != 0
DRV_ADD_FAIL = R_DRV + 5  # add1 returned -1 with free descriptors available
DRV_KICKS = R_DRV + 6  # kick decisions that said "kick" (suppressed: 0)
DRV_EMPTY_POLLS = R_DRV + 7  # iterations that neither harvested nor posted
DRV_ELAPSED_NS = R_DRV + 8
DRV_BROKEN = R_DRV + 9  # the driver state's BROKEN flag at the end
DRV_DONE = R_DRV + 10  # 1: the loop returned normally (not aborted)
# device results
R_DEV = 48
DEV_CHAINS = R_DEV + 0
DEV_SEQ_FWD = R_DEV + 1  # seq jumped forward (loss, or reordering)
DEV_SEQ_BACK = R_DEV + 2  # seq jumped backward (duplicate, or reordering)
DEV_FIRST_BAD = R_DEV + 3  # chain index of the first bad seq (-1: none)
DEV_BAD_SEQ = R_DEV + 4  # the seq seen there
DEV_STATUS_ERR = R_DEV + 5  # chains fetched with an error status
DEV_LEN_ERR = R_DEV + 6  # chains whose length is not the payload size
DEV_BYTES = R_DEV + 7  # payload bytes copied
DEV_INTERRUPTS = R_DEV + 8  # interrupt decisions that said "interrupt" (suppressed: 0)
DEV_EMPTY_POLLS = R_DEV + 9
DEV_ELAPSED_NS = R_DEV + 10
DEV_RING_ERRORS = R_DEV + 11  # the device state's error counter at the end
DEV_DONE = R_DEV + 12
DEV_BATCHED = R_DEV + 13  # packed: chains taken by the 4-descriptor batch path
DRV_CPU_NS = R_DRV + 11  # cpu time the driver's thread got during its loop (CLOCK_THREAD_CPUTIME_ID)
DEV_CPU_NS = R_DEV + 14
CTL_WORDS = 128

_LOOP = dict(cache=True, _nrt=False)
_INLINE = dict(cache=True, _nrt=False, inline="always")


# ---------------------------------------------------------------------------
# the copy


@njit(**_INLINE)
def _prefetch_burst(chains, n, lines):
    """Prefetches the first ``lines`` cache lines of each fetched chain's first segment.

    The payloads were just written by the driver on the other cpu: every one
    is a cache miss.  Issuing them all before the copies overlaps the misses
    (DPDK's vhost does the same with ``rte_prefetch0``).
    """
    for c in range(n):
        a = chains.seg_addr[chains.seg_start[c]]
        for j in range(lines):
            prefetch(a + np.uint64(64 * j))


@njit(**_INLINE)
def copy_bytes(dst, doff, src, soff, n):
    """``dst[doff:doff+n] = src[soff:soff+n]`` (uint8 arrays, caller-checked bounds), vectorised.

    Indices are uint64 so LLVM drops numba's negative-index wraparound and
    vectorises the loop (DESIGN §5); long copies go to ``llvm.memcpy``.
    """
    d = np.uint64(doff)
    s = np.uint64(soff)
    k = np.uint64(n)
    if k <= np.uint64(SMALL_COPY):
        for j in range(k):
            dst[d + j] = src[s + j]
    else:
        memcpy(np.uint64(dst.ctypes.data) + d, np.uint64(src.ctypes.data) + s, k)


@njit(**_INLINE)
def _consume(chains, c, src, src_hva, dst, dst64, dslot, dst_stride, payload, expect, res, got):
    """Copies chain ``c`` into destination slot ``dslot`` and checks its seq; returns the next expected seq."""
    if chains.status[c] != OK:
        res[DEV_STATUS_ERR] += 1
        return expect
    if np.int64(chains.total_len[c]) != payload:
        res[DEV_LEN_ERR] += 1
    d0 = np.uint64(dslot) * np.uint64(dst_stride)
    d = d0
    dend = d0 + np.uint64(dst_stride)
    s0 = np.int64(chains.seg_start[c])
    for s in range(s0, s0 + np.int64(chains.seg_count[c])):
        ln = np.uint64(chains.seg_len[s])
        if ln > dend - d:
            ln = dend - d  # a longer buffer than a destination slot: truncate (counted as LEN_ERR)
        copy_bytes(dst, d, src, chains.seg_addr[s] - src_hva, ln)
        d += ln
    res[DEV_BYTES] += np.int64(d - d0)
    if d - d0 < np.uint64(8):
        res[DEV_LEN_ERR] += 1
        return expect
    seq = np.int64(dst64[d0 >> np.uint64(3)])
    if seq != expect:
        if seq > expect:
            res[DEV_SEQ_FWD] += 1
        else:
            res[DEV_SEQ_BACK] += 1
        if res[DEV_FIRST_BAD] < 0:
            res[DEV_FIRST_BAD] = got + c
            res[DEV_BAD_SEQ] = seq
    return seq + 1


@njit(**_INLINE)
def _check_harvest(res, cookies, lens, k, expect):
    for i in range(k):
        ck = np.int64(cookies[i])
        if ck != expect:
            res[DRV_COOKIE_ERR] += 1
            if res[DRV_FIRST_BAD] < 0:
                res[DRV_FIRST_BAD] = res[DRV_HARVESTED] + i
        if lens[i] != 0:
            res[DRV_LEN_ERR] += 1
        expect = ck + 1
    res[DRV_HARVESTED] += k
    return expect


# ---------------------------------------------------------------------------
# split ring loops


@njit(**_LOOP)
def split_driver_loop(vr, ds, bufs64, buf_gpa, buf_stride, buf_mask, payload, total, burst, cookies, lens, pfw, fault_at, fault_delta, ctl):
    """Posts ``total`` buffers (seq s in buffer ``s & buf_mask``) in bursts and harvests them all."""
    res = ctl
    posted = np.int64(0)
    expect = np.int64(0)
    w_stride = np.int64(buf_stride) >> 3
    buf_hva = np.uint64(bufs64.ctypes.data)
    seq_off = np.int64(0)
    while res[DRV_HARVESTED] < total:
        if load_acquire(ctl, CTL_ABORT) != 0:
            return
        k = split_drv_get_used(vr, ds, cookies, lens, burst)
        if k > 0:
            expect = _check_harvest(res, cookies, lens, k, expect)
        m = total - posted
        if m > burst:
            m = burst
        free = split_drv_free_count(ds)
        if m > free:
            m = free
        if pfw:
            for j in range(m):
                prefetchw(buf_hva + np.uint64(((posted + j) & buf_mask) * buf_stride))
        for _ in range(m):
            slot = posted & buf_mask
            if posted == fault_at:
                seq_off += fault_delta  # fault injection (tests of the checker): a lost / repeated seq
            bufs64[slot * w_stride] = posted + seq_off
            if split_drv_add1(vr, ds, posted, buf_gpa + slot * buf_stride, payload, False) < 0:
                res[DRV_ADD_FAIL] += 1
                break
            posted += 1
        if m > 0:
            if split_drv_publish(vr, ds):
                res[DRV_KICKS] += 1
        elif k == 0:
            res[DRV_EMPTY_POLLS] += 1
            cpu_relax()
    res[DRV_POSTED] = posted
    res[DRV_BROKEN] = ds.state[SPLIT_DRV_BROKEN]
    res[DRV_DONE] = 1


@njit(**_LOOP)
def split_device_loop(vr, state, regions, chains, src, src_hva, dst, dst64, dst_stride, dst_mask, payload, total, burst, inorder, pf_lines, ctl):
    """Fetches ``total`` chains in bursts, copying and checking each, one flush per burst."""
    res = ctl
    got = np.int64(0)
    expect = np.int64(0)
    dslot = np.int64(0)
    while got < total:
        if load_acquire(ctl, CTL_ABORT) != 0:
            return
        n = split_dev_fetch(vr, state, regions, chains, burst)
        if n == 0:
            res[DEV_EMPTY_POLLS] += 1
            cpu_relax()
            continue
        _prefetch_burst(chains, n, pf_lines)
        for c in range(n):
            expect = _consume(chains, c, src, src_hva, dst, dst64, dslot, dst_stride, payload, expect, res, got)
            dslot = (dslot + 1) & dst_mask
            if not inorder:
                split_dev_push_used(vr, state, chains.head[c], 0)
        if inorder:
            split_dev_push_used_inorder(vr, state, chains.head[n - 1], 0, n)
        if split_dev_flush_used(vr, state):
            res[DEV_INTERRUPTS] += 1
        got += n
    res[DEV_CHAINS] = got
    res[DEV_RING_ERRORS] = state[STATE_ERRORS]
    res[DEV_DONE] = 1


# ---------------------------------------------------------------------------
# packed ring loops


@njit(**_LOOP)
def packed_driver_loop(vr, ds, bufs64, buf_gpa, buf_stride, buf_mask, payload, total, burst, cookies, lens, pfw, fault_at, fault_delta, ctl, batch, ring_pf):
    """As :func:`split_driver_loop` on a packed ring, one kick decision per burst.

    ``batch``: the burst is added with ``packed_drv_add1_batch`` and becomes
    visible at once, at the kick decision (like split's avail idx); else each
    add is visible when it returns (DPDK's and Linux's drivers).  ``ring_pf``:
    prefetchw the ring lines the burst will fill.
    """
    res = ctl
    posted = np.int64(0)
    expect = np.int64(0)
    w_stride = np.int64(buf_stride) >> 3
    buf_hva = np.uint64(bufs64.ctypes.data)
    seq_off = np.int64(0)
    while res[DRV_HARVESTED] < total:
        if load_acquire(ctl, CTL_ABORT) != 0:
            return
        k = packed_drv_get_used(vr, ds, cookies, lens, burst)
        if k > 0:
            expect = _check_harvest(res, cookies, lens, k, expect)
        m = total - posted
        if m > burst:
            m = burst
        free = packed_drv_free_count(ds)
        if m > free:
            m = free
        if pfw:
            for j in range(m):
                prefetchw(buf_hva + np.uint64(((posted + j) & buf_mask) * buf_stride))
        if ring_pf:
            packed_drv_prefetch_avail(vr, ds, m)
        for _ in range(m):
            slot = posted & buf_mask
            if posted == fault_at:
                seq_off += fault_delta  # fault injection (tests of the checker): a lost / repeated seq
            bufs64[slot * w_stride] = posted + seq_off
            if batch:
                bid = packed_drv_add1_batch(vr, ds, posted, buf_gpa + slot * buf_stride, payload, False)
            else:
                bid = packed_drv_add1(vr, ds, posted, buf_gpa + slot * buf_stride, payload, False)
            if bid < 0:
                res[DRV_ADD_FAIL] += 1
                break
            posted += 1
        if m > 0:
            if packed_drv_need_kick(vr, ds):
                res[DRV_KICKS] += 1
        elif k == 0:
            res[DRV_EMPTY_POLLS] += 1
            cpu_relax()
    res[DRV_POSTED] = posted
    res[DRV_BROKEN] = ds.state[PACKED_DRV_BROKEN]
    res[DRV_DONE] = 1


@njit(**_LOOP)
def packed_device_loop(vr, state, regions, chains, src, src_hva, dst, dst64, dst_stride, dst_mask, payload, total, burst, inorder, pf_lines, ctl):
    """As :func:`split_device_loop` on a packed ring (IN_ORDER: the burst folds into one used descriptor)."""
    res = ctl
    got = np.int64(0)
    expect = np.int64(0)
    dslot = np.int64(0)
    while got < total:
        if load_acquire(ctl, CTL_ABORT) != 0:
            return
        n = packed_dev_fetch(vr, state, regions, chains, burst)
        if n == 0:
            res[DEV_EMPTY_POLLS] += 1
            cpu_relax()
            continue
        _prefetch_burst(chains, n, pf_lines)
        slots = np.int64(0)
        for c in range(n):
            expect = _consume(chains, c, src, src_hva, dst, dst64, dslot, dst_stride, payload, expect, res, got)
            dslot = (dslot + 1) & dst_mask
            if inorder:
                slots += np.int64(chains.ndesc[c])
            else:
                packed_dev_push_used(vr, state, chains.head[c], 0, chains.ndesc[c])
        if inorder:
            # ONE used descriptor for the burst: the id of its last buffer, covering every slot
            # of the burst.  Same ring contents as folding chain by chain with
            # packed_dev_push_used_inorder, but that rewrites id/len of the pending entry --
            # in the line the driver is polling -- once per chain (a cache-line ping-pong each).
            packed_dev_push_used_inorder(vr, state, chains.head[n - 1], 0, slots)
        if packed_dev_flush_used(vr, state):
            res[DEV_INTERRUPTS] += 1
        got += n
    res[DEV_CHAINS] = got
    res[DEV_RING_ERRORS] = state[STATE_ERRORS]
    res[DEV_BATCHED] = state[PACKED_DEV_BATCHED]
    res[DEV_DONE] = 1


# ---------------------------------------------------------------------------
# the two-process run


class ExchangeError(RuntimeError):
    """A child failed (raised, died) during the exchange."""


class ExchangeTimeout(ExchangeError):
    """The exchange did not finish in time; both children were killed and reaped."""


@dataclass
class ExchangeConfig:
    kind: str = SPLIT  # SPLIT or PACKED
    count: int = 1_000_000  # buffers to exchange
    payload: int = 64  # bytes per buffer (>= 8: the seq)
    burst: int = 32
    queue_size: int = 256  # DPDK virtio-user's default
    in_order: bool = False
    buf_stride: int = 2048  # bytes between buffers (driver area and device area)
    prefetch_lines: int = 1  # device: cache lines of each payload prefetched right after the fetch (0: none)
    driver_prefetchw: bool = True  # driver: prefetchw the burst's buffers before writing their seqs (the device read them last)
    packed_batch: bool = True  # packed driver: a burst becomes visible at once (add1_batch, published at the kick decision)
    ring_prefetch: bool = True  # packed: the device prefetches the burst's ring lines, the driver the lines it fills
    dst_slots: int = 64  # device destination buffers (power of two), reused round robin like an mbuf cache
    driver_cpu: int | None = None  # default: the second cpu of our affinity set (the first if only one)
    device_cpu: int | None = None  # default: the first cpu
    fault_at: int = -1  # tests of the checker: from buffer fault_at on, the driver writes seq + fault_delta
    fault_delta: int = 0  # (+1: one seq lost, -1: one seq repeated; cookies stay right)
    timeout: float = 60.0  # seconds for the exchange itself (after both children are ready)
    stall_timeout: float | None = None  # also give up after this long without a buffer harvested (a hang)
    start_timeout: float = 30.0  # seconds for the children to get ready


@dataclass
class ExchangeResult:
    config: ExchangeConfig
    driver: dict = field(default_factory=dict)
    device: dict = field(default_factory=dict)

    @property
    def elapsed_ns(self) -> int:
        """Wall time of the exchange: the longer of the two loops (from GO to the last buffer)."""
        return max(self.driver["elapsed_ns"], self.device["elapsed_ns"])

    @property
    def mpps(self) -> float:
        return self.config.count / self.elapsed_ns * 1e3

    @property
    def cpu_share(self) -> float:
        """The smaller of the two children's cpu time / wall time: < 1 when something else ran on their cpus."""
        return min(
            self.driver["cpu_ns"] / max(1, self.driver["elapsed_ns"]),
            self.device["cpu_ns"] / max(1, self.device["elapsed_ns"]),
        )

    @property
    def errors(self) -> dict:
        """Every error counter that must be 0 (name -> value), nonzero ones only."""
        d, v = self.driver, self.device
        errs = {
            "driver_cookie_err": d["cookie_err"],
            "driver_len_err": d["len_err"],
            "driver_add_fail": d["add_fail"],
            "driver_broken": d["broken"],
            "device_seq_fwd": v["seq_fwd"],
            "device_seq_back": v["seq_back"],
            "device_status_err": v["status_err"],
            "device_len_err": v["len_err"],
            "device_ring_errors": v["ring_errors"],
            "kicks": d["kicks"],
            "interrupts": v["interrupts"],
        }
        if d["harvested"] != self.config.count:
            errs["driver_harvested_short"] = self.config.count - d["harvested"]
        if d["posted"] != self.config.count:
            errs["driver_posted_short"] = self.config.count - d["posted"]
        if v["chains"] != self.config.count:
            errs["device_chains_short"] = self.config.count - v["chains"]
        return {k: int(x) for k, x in errs.items() if x}


_DRV_NAMES = {
    "posted": DRV_POSTED,
    "harvested": DRV_HARVESTED,
    "cookie_err": DRV_COOKIE_ERR,
    "first_bad": DRV_FIRST_BAD,
    "len_err": DRV_LEN_ERR,
    "add_fail": DRV_ADD_FAIL,
    "kicks": DRV_KICKS,
    "empty_polls": DRV_EMPTY_POLLS,
    "elapsed_ns": DRV_ELAPSED_NS,
    "broken": DRV_BROKEN,
    "done": DRV_DONE,
    "cpu_ns": DRV_CPU_NS,
}
_DEV_NAMES = {
    "chains": DEV_CHAINS,
    "seq_fwd": DEV_SEQ_FWD,
    "seq_back": DEV_SEQ_BACK,
    "first_bad": DEV_FIRST_BAD,
    "bad_seq": DEV_BAD_SEQ,
    "status_err": DEV_STATUS_ERR,
    "len_err": DEV_LEN_ERR,
    "bytes": DEV_BYTES,
    "interrupts": DEV_INTERRUPTS,
    "empty_polls": DEV_EMPTY_POLLS,
    "elapsed_ns": DEV_ELAPSED_NS,
    "ring_errors": DEV_RING_ERRORS,
    "done": DEV_DONE,
    "batched": DEV_BATCHED,
    "cpu_ns": DEV_CPU_NS,
}


class _Setup:
    """Everything both children inherit: memory, ring views, both sides' private state."""

    def __init__(self, cfg: ExchangeConfig, file_prefix: str):
        if cfg.kind not in (SPLIT, PACKED):
            raise ValueError(f"kind must be {SPLIT!r} or {PACKED!r}, got {cfg.kind!r}")
        q = cfg.queue_size
        if q & (q - 1) or q < 1:
            raise ValueError("queue_size must be a power of two (the driver indexes its buffers by seq % queue_size)")
        if cfg.payload < 8 or cfg.payload > cfg.buf_stride or cfg.buf_stride % 8:
            raise ValueError("need 8 <= payload <= buf_stride and buf_stride a multiple of 8")
        if cfg.dst_slots & (cfg.dst_slots - 1) or cfg.dst_slots < 1:
            raise ValueError("dst_slots must be a power of two")
        self.cfg = cfg
        feats = FEAT_IN_ORDER if cfg.in_order else 0
        if cfg.kind == SPLIT:
            ring_bytes = split_layout(q).total_size
        else:
            ring_bytes = packed_layout(q).total_size
        bufs_bytes = q * cfg.buf_stride
        size = ring_bytes + bufs_bytes + 8 * CTL_WORDS + (4 << 20)  # + memzone table and alignment
        self.mem = Memory(size, huge=False, in_memory=True, file_prefix=file_prefix)
        try:
            rz = self.mem.memzone_reserve("vq_ring", ring_bytes, 4096)
            bz = self.mem.memzone_reserve("vq_bufs", bufs_bytes, 4096)
            cz = self.mem.memzone_reserve("vq_ctl", 8 * CTL_WORDS, 4096)
            self.ctl = cz.view(np.int64)
            self.ctl[:] = 0
            self.ctl[DRV_FIRST_BAD] = -1
            self.ctl[DEV_FIRST_BAD] = -1
            self.bufs = bz.view(np.uint8)
            self.bufs64 = bz.view(np.uint64)
            self.buf_gpa = int(bz.iova)
            self.regions = make_regions([(self.buf_gpa, bufs_bytes, bz.addr)])
            ring = rz.view(np.uint8)
            if cfg.kind == SPLIT:
                self.vr = split_vring_from_buffer(ring, q)
                self.ds = split_drv_state(q, feats)
                split_drv_init(self.vr, self.ds, q, feats)
                self.dev_state = split_dev_state(q, feats)
                split_dev_enable_notify(self.vr, self.dev_state, False)
                split_drv_enable_interrupt(self.vr, self.ds, False)
            else:
                self.vr = packed_vring_from_buffer(ring, q)
                self.ds = packed_drv_state(q, feats)
                packed_drv_init(self.vr, self.ds, q, feats)
                self.dev_state = packed_dev_state(q, feats | (0 if cfg.ring_prefetch else PACKED_FEAT_NO_PREFETCH))
                packed_dev_enable_notify(self.vr, self.dev_state, False)
                packed_drv_enable_interrupt(self.vr, self.ds, False)
            self.chains = make_chains(cfg.burst, 4 * cfg.burst)
            self.cookies = np.zeros(cfg.burst, np.uint64)
            self.lens = np.zeros(cfg.burst, np.uint32)
        except BaseException:
            self.mem.close()
            raise

    def close(self):
        self.mem.close()

    # -- the two sides (run in the children; also called with total 0 to compile)
    def run_driver(self, total: int) -> None:
        cfg = self.cfg
        args = (
            self.vr, self.ds, self.bufs64, np.int64(self.buf_gpa), np.int64(cfg.buf_stride),
            np.int64(cfg.queue_size - 1), np.int64(cfg.payload), np.int64(total), np.int64(cfg.burst),
            self.cookies, self.lens, bool(cfg.driver_prefetchw), np.int64(cfg.fault_at), np.int64(cfg.fault_delta),
            self.ctl,
        )
        if cfg.kind == SPLIT:
            split_driver_loop(*args)
        else:
            packed_driver_loop(*args, bool(cfg.packed_batch), bool(cfg.ring_prefetch))

    def make_dst(self) -> np.ndarray:
        dst = np.empty(self.cfg.dst_slots * self.cfg.buf_stride + 64, np.uint8)
        off = (-dst.ctypes.data) % 64
        dst = dst[off : off + self.cfg.dst_slots * self.cfg.buf_stride]
        dst.fill(0)  # fault it in
        return dst

    def run_device(self, total: int, dst: np.ndarray) -> None:
        cfg = self.cfg
        loop = split_device_loop if cfg.kind == SPLIT else packed_device_loop
        loop(
            self.vr, self.dev_state, self.regions, self.chains, self.bufs, np.uint64(self.bufs.ctypes.data),
            dst, dst.view(np.uint64), np.int64(cfg.buf_stride), np.int64(cfg.dst_slots - 1),
            np.int64(cfg.payload), np.int64(total), np.int64(cfg.burst), cfg.in_order, np.int64(cfg.prefetch_lines),
            self.ctl,
        )


def compile_loops(kind: str = SPLIT) -> None:
    """Compiles (or loads from the cache) the loops of ``kind`` for the types run_exchange uses."""
    s = _Setup(ExchangeConfig(kind=kind, count=0, queue_size=64, burst=32), "vqx_compile")
    try:
        s.run_driver(0)
        s.run_device(0, s.make_dst())
    finally:
        s.close()


_PR_SET_PDEATHSIG = 1


def _child(role: str, setup: _Setup, cpu: int) -> int:
    """Body of a child process: pin, get ready, wait for GO, run the loop once, record the time."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
        os.sched_setaffinity(0, {cpu})
        ctl = setup.ctl
        cfg = setup.cfg
        # fault in the shared mappings (fork does not copy page tables of shared mappings)
        int(setup.bufs[::4096].sum())
        dst = setup.make_dst() if role == "device" else None
        ctl[CTL_READY_DRV if role == "driver" else CTL_READY_DEV] = 1
        while ctl[CTL_GO] == 0:
            if ctl[CTL_ABORT]:
                return 3
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        if role == "driver":
            setup.run_driver(cfg.count)
            ctl[DRV_ELAPSED_NS] = time.perf_counter_ns() - t0
            ctl[DRV_CPU_NS] = time.thread_time_ns() - c0
        else:
            setup.run_device(cfg.count, dst)
            ctl[DEV_ELAPSED_NS] = time.perf_counter_ns() - t0
            ctl[DEV_CPU_NS] = time.thread_time_ns() - c0
        return 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1


def _fork(role, setup, cpu) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(role, setup, cpu)
        finally:
            os._exit(code)
    return pid


def _default_cpus(cfg: ExchangeConfig) -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    dev = cfg.device_cpu if cfg.device_cpu is not None else cpus[0]
    drv = cfg.driver_cpu if cfg.driver_cpu is not None else (cpus[1] if len(cpus) > 1 else cpus[0])
    return drv, dev


def _reap(pids: dict, deadline: float, statuses: dict) -> None:
    """Reaps the children in ``pids`` that exit before ``deadline`` (at least one pass)."""
    while True:
        for role, pid in list(pids.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses[role] = status
                del pids[role]
        if not pids or time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def _await_exchange(cfg: ExchangeConfig, ctl, pids: dict, statuses: dict) -> None:
    """Reaps both children; raises ExchangeTimeout after ``cfg.timeout`` s, or after
    ``cfg.stall_timeout`` s in which the driver harvested nothing (on a loaded machine a slow
    exchange is not a hung one: only the lack of progress says it hangs)."""
    start = time.monotonic()
    seen, progress_at = int(ctl[DRV_HARVESTED]), start
    while pids:
        now = time.monotonic()
        _reap(pids, min(now + 0.5, start + cfg.timeout), statuses)
        now = time.monotonic()
        harvested = int(ctl[DRV_HARVESTED])
        if harvested != seen:
            seen, progress_at = harvested, now
        if not pids:
            return
        if now >= start + cfg.timeout:
            why = f"not done after {cfg.timeout} s"
        elif cfg.stall_timeout is not None and now - progress_at >= cfg.stall_timeout:
            why = f"stalled: nothing harvested for {cfg.stall_timeout} s"
        else:
            continue
        raise ExchangeTimeout(f"{cfg.kind} exchange of {cfg.count} buffers {why} (driver harvested {harvested})")


def run_exchange(cfg: ExchangeConfig, file_prefix: str = "vq_exchange") -> ExchangeResult:
    """Runs one exchange in two forked, pinned processes; returns both sides' counters.

    Raises :class:`ExchangeTimeout` (after killing and reaping both children)
    when it does not finish in ``cfg.timeout`` seconds, :class:`ExchangeError`
    when a child fails.  Never leaves a child or a file behind.
    """
    drv_cpu, dev_cpu = _default_cpus(cfg)
    setup = _Setup(cfg, file_prefix)
    pids: dict[str, int] = {}
    statuses: dict[str, int] = {}
    try:
        setup.run_driver(0)  # compile / load from cache before forking: children inherit the code
        setup.run_device(0, setup.make_dst())
        ctl = setup.ctl
        pids["device"] = _fork("device", setup, dev_cpu)
        pids["driver"] = _fork("driver", setup, drv_cpu)
        deadline = time.monotonic() + cfg.start_timeout
        while not (ctl[CTL_READY_DRV] and ctl[CTL_READY_DEV]):
            _reap(pids, 0, statuses)
            if statuses:
                raise ExchangeError(f"child exited before the start: {statuses}")
            if time.monotonic() > deadline:
                raise ExchangeTimeout(f"children not ready after {cfg.start_timeout} s")
            time.sleep(0.002)
        ctl[CTL_GO] = 1
        _await_exchange(cfg, ctl, pids, statuses)
        bad = {r: s for r, s in statuses.items() if s != 0}
        if bad:
            raise ExchangeError(f"child failed: {bad}")
        res = ExchangeResult(
            cfg,
            driver={k: int(ctl[i]) for k, i in _DRV_NAMES.items()},
            device={k: int(ctl[i]) for k, i in _DEV_NAMES.items()},
        )
        return res
    finally:
        if pids:
            setup.ctl[CTL_ABORT] = 1  # ask first: loops return at their next iteration
            _reap(pids, time.monotonic() + 1.0, statuses)
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids.values():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        setup.close()
