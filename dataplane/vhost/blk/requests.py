"""The vhost-user-blk data path: one numba call serves a burst of virtio-blk requests.

:func:`blk_burst` ``(q, want) -> chains`` fetches up to ``want`` chains from
the queue (split or packed, the ring kernels of :mod:`dataplane.rings`),
and for each one parses the request, checks it, copies between the guest's
buffers and the disk, writes the status byte, and queues the used entry;
the used entries are published once per burst and the guest is interrupted
when it asks for it.

A chain is read as the spec says, without assuming any framing (VERSION_1):
its device-readable bytes start with the 16-byte header and go on with the
OUT / DISCARD / WRITE_ZEROES payload; its device-writable bytes hold the IN
/ GET_ID data and end with the status byte (the last writable byte).  So a
header split over descriptors, or data and status in one descriptor, work.

Answers (status byte, ``C_*`` counters):

* IOERR: a header shorter than 16 readable bytes (or in writable
  descriptors), sectors past the end of the disk (checked in 64-bit
  arithmetic that cannot overflow: data lengths reach 4 GiB and beyond),
  data not a whole number of sectors, a write to a read-only disk,
  DISCARD / WRITE_ZEROES segments that are malformed or over the advertised
  limits, a FLUSH whose ``fdatasync`` failed.
* UNSUPP: unknown request types; DISCARD / WRITE_ZEROES when their feature
  was not negotiated or with flags the spec does not allow.
* No answer possible -- a chain the ring kernels refused (address outside
  guest memory, loop, bad indirect table, readable after writable: nothing
  in it may be touched) or a chain with no writable byte for the status:
  it is not completed (a guest reading a status nobody wrote would take
  garbage for success), it is counted (``C_BAD_CHAINS`` / ``C_NO_STATUS``
  and the ring's per-code error counters) and the queue stops
  (``STATE_BROKEN``) until the front-end resets the ring.

Every byte the kernel touches is inside a segment the ring kernels
translated and bounds-checked, or inside the disk after the range check.

Dirty logging (:mod:`~dataplane.vhost.dirty_log`): with the queue's log flag
on, the guest bytes a request wrote (IN data, GET_ID data, the status byte)
and the used-ring writes are marked in the log at the end of the burst.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from dataplane.rings.chain_copy import chain_gather, chain_load_le, chain_scatter
from dataplane.rings.jit import eventfd_signal, inline_kernel, kernel
from dataplane.rings.mem import load_u32, load_u64, st8
from dataplane.rings.packed import packed_dev_get_used_base
from dataplane.rings.virtqueue import STATE_BROKEN, make_chains
from dataplane.vhost.dev_ring import (
    QUEUE_CTX_FIELDS,
    queue_rings,
    ring_enable_notify,
    ring_fetch,
    ring_flush_used,
    ring_get_base,
    ring_push_used,
)
from dataplane.vhost.inflight import inflight_recover, no_inflight, signal_if_recovered
from dataplane.vhost.dirty_log import (
    log_burst_start,
    log_enabled,
    log_notify_write,
    log_sync,
    log_used,
    log_write_hva,
    no_log,
)
from dataplane.vhost.virtio_net import ring_feat_mask

from .spec import (
    DWZ_SEG_SIZE,
    REQ_HDR_SIZE,
    SECTOR_SHIFT,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    VirtioBlkFeature as BF,
)

__all__ = [
    "BlkQueueCtx",
    "BlkQueue",
    "BlkLimits",
    "blk_burst",
    "blk_enable_notify",
    "COUNTER_NAMES",
    "N_COUNTERS",
]

# -- config slots (int64) ----------------------------------------------------------
CFG_PACKED = 0  # 1: packed ring
CFG_CALLFD = 1  # call eventfd, -1: none (polling guest)
CFG_ENABLED = 2  # 0: the burst does nothing
CFG_READONLY = 3  # OUT / DISCARD / WRITE_ZEROES get IOERR
CFG_SECTORS = 4  # capacity in 512-byte sectors
CFG_DISK_ADDR = 5  # the disk's address in this process
CFG_SYNC_FD = 6  # fd FLUSH fdatasyncs, -1: nothing to sync (RAM disk)
CFG_DISCARD = 7  # VIRTIO_BLK_F_DISCARD negotiated
CFG_WRITE_ZEROES = 8  # VIRTIO_BLK_F_WRITE_ZEROES negotiated
CFG_MAX_DISCARD_SECTORS = 9
CFG_MAX_DISCARD_SEG = 10
CFG_MAX_WZ_SECTORS = 11
CFG_MAX_WZ_SEG = 12
CFG_SLOTS = 16

# -- counters (int64, per queue) ----------------------------------------------------
COUNTER_NAMES = (
    "requests",  # requests answered (a status byte written)
    "reads",  # IN answered OK
    "writes",  # OUT answered OK
    "flushes",  # FLUSH answered OK
    "get_ids",  # GET_ID answered OK
    "discards",  # DISCARD answered OK
    "write_zeroes",  # WRITE_ZEROES answered OK
    "read_bytes",
    "written_bytes",  # OUT bytes (zeroed bytes not counted)
    "ioerr",  # answered VIRTIO_BLK_S_IOERR
    "unsupp",  # answered VIRTIO_BLK_S_UNSUPP
    "bad_chains",  # chains the ring kernels refused: not completed, queue stopped
    "no_status",  # chains without a writable status byte: not completed, queue stopped
    "interrupts",  # call eventfd notifications the guest asked for
)
N_COUNTERS = len(COUNTER_NAMES)
(
    C_REQUESTS,
    C_READS,
    C_WRITES,
    C_FLUSHES,
    C_GET_IDS,
    C_DISCARDS,
    C_WRITE_ZEROES,
    C_READ_BYTES,
    C_WRITTEN_BYTES,
    C_IOERR,
    C_UNSUPP,
    C_BAD_CHAINS,
    C_NO_STATUS,
    C_INTERRUPTS,
) = range(N_COUNTERS)

BlkQueueCtx = namedtuple(
    "BlkQueueCtx",
    [
        *QUEUE_CTX_FIELDS,  # cfg: int64[CFG_SLOTS], counters: int64[N_COUNTERS]
        "disk",  # uint8[capacity * 512]: the disk in this process
        "serial",  # uint8[20]: what GET_ID returns
    ],
)

#: DISCARD / WRITE_ZEROES limits the device advertises (and enforces).
BlkLimits = namedtuple("BlkLimits", ["max_discard_sectors", "max_discard_seg", "max_write_zeroes_sectors",
                                     "max_write_zeroes_seg"])

_U64 = np.uint64
_HDR = _U64(REQ_HDR_SIZE)
_SEG = _U64(DWZ_SEG_SIZE)
_SHIFT = _U64(SECTOR_SHIFT)
_SECTOR_MASK = _U64((1 << SECTOR_SHIFT) - 1)


@intrinsic
def fdatasync(typingctx, fd):
    """libc ``fdatasync(fd)``; returns its result (0 or -1).  An external symbol, so callers cache."""
    if not isinstance(fd, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32]), "fdatasync")
        fdv = builder.trunc(context.cast(builder, args[0], sig.args[0], types.int64), i32)
        return builder.sext(builder.call(fn, [fdv]), ir.IntType(64))

    return types.int64(fd), codegen


# =============================================================================
# ring helpers (split / packed chosen at run time from cfg)
# =============================================================================


@inline_kernel
def _flush(q, logging):
    """Publish the used entries (their pages logged when ``logging``); signal the call fd when the guest wants it."""
    packed = q.cfg[CFG_PACKED] != 0
    if logging:
        log_used(q.log, packed, q.state)
    need = ring_flush_used(packed, q.split, q.packed, q.state, q.inflight)
    if logging:
        log_sync(q.log)  # after every write of the burst
    if need:
        q.counters[C_INTERRUPTS] += 1
        fd = q.cfg[CFG_CALLFD]
        if fd >= 0:
            eventfd_signal(fd)


@kernel
def blk_enable_notify(q, enable):
    """Ask the guest for kicks (``enable``) or not; True when chains are pending (keep polling)."""
    packed = q.cfg[CFG_PACKED] != 0
    pending = ring_enable_notify(packed, q.split, q.packed, q.state, enable)
    log_notify_write(q.log, packed, q.state, enable)
    return pending


# =============================================================================
# scatter / gather over a chain's segments
# =============================================================================


@inline_kernel
def _in_range(sector, nbytes, sectors):
    """``[sector * 512, + nbytes)`` lies on a disk of ``sectors`` sectors (no u64 overflow: capacity < 2**55)."""
    if sector > sectors:
        return False
    return nbytes <= ((sectors - sector) << _SHIFT)


# =============================================================================
# requests
# =============================================================================


@inline_kernel
def _answer(q, status_addr, status, used):
    """Write the status byte; returns the used length."""
    st8(status_addr, status)
    q.counters[C_REQUESTS] += 1
    if status == VIRTIO_BLK_S_IOERR:
        q.counters[C_IOERR] += 1
    elif status == VIRTIO_BLK_S_UNSUPP:
        q.counters[C_UNSUPP] += 1
    return used


@kernel
def _discard_write_zeroes(q, ch, s0, w0, dlen, zeroes):
    """DISCARD / WRITE_ZEROES: check every segment, then zero them all; returns the status."""
    cfg = q.cfg
    if zeroes:
        if cfg[CFG_WRITE_ZEROES] == 0:
            return VIRTIO_BLK_S_UNSUPP
        max_seg, max_sectors = cfg[CFG_MAX_WZ_SEG], cfg[CFG_MAX_WZ_SECTORS]
    else:
        if cfg[CFG_DISCARD] == 0:
            return VIRTIO_BLK_S_UNSUPP
        max_seg, max_sectors = cfg[CFG_MAX_DISCARD_SEG], cfg[CFG_MAX_DISCARD_SECTORS]
    if cfg[CFG_READONLY] != 0:
        return VIRTIO_BLK_S_IOERR
    if dlen == 0 or dlen % _SEG != 0 or dlen // _SEG > _U64(max_seg):
        return VIRTIO_BLK_S_IOERR
    nseg = dlen // _SEG
    sectors = _U64(cfg[CFG_SECTORS])
    allowed = _U64(VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) if zeroes else _U64(0)
    for i in range(nseg):
        off = _HDR + _U64(i) * _SEG
        sector = chain_load_le(ch, s0, w0, off, _U64(8))
        num = chain_load_le(ch, s0, w0, off + _U64(8), _U64(4))
        flags = chain_load_le(ch, s0, w0, off + _U64(12), _U64(4))
        if flags & ~allowed:
            return VIRTIO_BLK_S_UNSUPP
        if num > _U64(max_sectors) or not _in_range(sector, num << _SHIFT, sectors):
            return VIRTIO_BLK_S_IOERR
    for i in range(nseg):
        off = _HDR + _U64(i) * _SEG
        start = np.int64(chain_load_le(ch, s0, w0, off, _U64(8)) << _SHIFT)
        end = start + np.int64(chain_load_le(ch, s0, w0, off + _U64(8), _U64(4)) << _SHIFT)
        q.disk[start:end] = 0
    return VIRTIO_BLK_S_OK


@kernel
def _request(q, c):
    """Serve chain ``c`` of the scratch; returns its used length, or -1 when it cannot be answered."""
    ch = q.chains
    cfg = q.cfg
    s0 = np.int64(ch.seg_start[c])
    s_end = s0 + np.int64(ch.seg_count[c])
    # Readable segments come first (the ring kernels refuse a readable one after a writable one).
    w0 = s0
    rlen = _U64(0)
    while w0 < s_end and ch.seg_write[w0] == 0:
        rlen += _U64(ch.seg_len[w0])
        w0 += 1
    wlen = _U64(0)
    status_addr = _U64(0)
    for k in range(w0, s_end):
        length = _U64(ch.seg_len[k])
        if length != 0:
            wlen += length
            status_addr = ch.seg_addr[k] + length - _U64(1)
    if wlen == 0:
        return -1
    if rlen < _HDR:
        return _answer(q, status_addr, VIRTIO_BLK_S_IOERR, 1)
    if _U64(ch.seg_len[s0]) >= _HDR:  # the usual layout: the header in its own descriptor
        a = ch.seg_addr[s0]
        rtype = _U64(load_u32(a, 0))
        sector = load_u64(a, 1)
    else:
        rtype = chain_load_le(ch, s0, w0, _U64(0), _U64(4))
        sector = chain_load_le(ch, s0, w0, _U64(8), _U64(8))
    din = wlen - _U64(1)  # writable bytes before the status byte
    dout = rlen - _HDR  # readable bytes after the header
    sectors = _U64(cfg[CFG_SECTORS])
    disk = _U64(cfg[CFG_DISK_ADDR])
    if rtype == VIRTIO_BLK_T_IN:
        if din & _SECTOR_MASK or not _in_range(sector, din, sectors):
            return _answer(q, status_addr, VIRTIO_BLK_S_IOERR, 1)
        chain_scatter(ch, w0, s_end, disk + (sector << _SHIFT), din)
        q.counters[C_READS] += 1
        q.counters[C_READ_BYTES] += np.int64(din)
        return _answer(q, status_addr, VIRTIO_BLK_S_OK, np.int64(din) + 1)
    if rtype == VIRTIO_BLK_T_OUT:
        if cfg[CFG_READONLY] != 0 or dout & _SECTOR_MASK or not _in_range(sector, dout, sectors):
            return _answer(q, status_addr, VIRTIO_BLK_S_IOERR, 1)
        chain_gather(ch, s0, w0, _HDR, disk + (sector << _SHIFT), dout)
        q.counters[C_WRITES] += 1
        q.counters[C_WRITTEN_BYTES] += np.int64(dout)
        return _answer(q, status_addr, VIRTIO_BLK_S_OK, 1)
    if rtype == VIRTIO_BLK_T_FLUSH:
        fd = cfg[CFG_SYNC_FD]
        if fd >= 0 and fdatasync(fd) != 0:
            return _answer(q, status_addr, VIRTIO_BLK_S_IOERR, 1)
        q.counters[C_FLUSHES] += 1
        return _answer(q, status_addr, VIRTIO_BLK_S_OK, 1)
    if rtype == VIRTIO_BLK_T_GET_ID:
        n = din if din < _U64(VIRTIO_BLK_ID_BYTES) else _U64(VIRTIO_BLK_ID_BYTES)
        chain_scatter(ch, w0, s_end, _U64(q.serial.ctypes.data), n)
        q.counters[C_GET_IDS] += 1
        return _answer(q, status_addr, VIRTIO_BLK_S_OK, np.int64(n) + 1)
    if rtype == VIRTIO_BLK_T_DISCARD or rtype == VIRTIO_BLK_T_WRITE_ZEROES:
        zeroes = rtype == VIRTIO_BLK_T_WRITE_ZEROES
        status = _discard_write_zeroes(q, ch, s0, w0, dout, zeroes)
        if status == VIRTIO_BLK_S_OK:
            q.counters[C_WRITE_ZEROES if zeroes else C_DISCARDS] += 1
        return _answer(q, status_addr, status, 1)
    return _answer(q, status_addr, VIRTIO_BLK_S_UNSUPP, 1)


@inline_kernel
def _log_request(q, c, used):
    """Log what answering chain ``c`` wrote: the first ``used - 1`` writable bytes (IN data,
    GET_ID) and the status byte (the last writable byte)."""
    ch = q.chains
    s0 = np.int64(ch.seg_start[c])
    left = np.int64(used) - 1
    last_a = _U64(0)
    last_n = np.int64(0)
    for s in range(s0, s0 + np.int64(ch.seg_count[c])):
        if ch.seg_write[s] == 0:
            continue
        n = np.int64(ch.seg_len[s])
        if n == 0:
            continue
        last_a = ch.seg_addr[s]
        last_n = n
        if left > 0:
            log_write_hva(q.log, q.regions, last_a, min(n, left))
            left -= n
    log_write_hva(q.log, q.regions, last_a + _U64(last_n - 1), 1)


@kernel
def blk_burst(q, want):
    """Serve up to ``want`` requests of queue ``q`` (a :class:`BlkQueueCtx`); returns the chains fetched."""
    logging = log_enabled(q.log)  # read once per burst (LOG_ALL may change while running)
    if q.cfg[CFG_ENABLED] == 0 or q.state[STATE_BROKEN] != 0:
        return 0
    packed = q.cfg[CFG_PACKED] != 0
    if logging:
        log_burst_start(q.log, q.state)
    n = ring_fetch(packed, q.split, q.packed, q.state, q.regions, q.chains, want, q.inflight)
    if n == 0:
        return 0
    ch = q.chains
    stop = False
    for c in range(n):
        if ch.status[c] != 0:
            q.counters[C_BAD_CHAINS] += 1
            stop = True
            continue
        used = _request(q, c)
        if used < 0:
            q.counters[C_NO_STATUS] += 1
            stop = True
            continue
        if logging:
            _log_request(q, c, used)
        ring_push_used(packed, q.split, q.packed, q.state, np.int64(ch.head[c]), used, np.int64(ch.ndesc[c]), q.inflight)
    _flush(q, logging)
    if stop:
        q.state[STATE_BROKEN] = 1
    return n


# =============================================================================
# plain-Python side
# =============================================================================

_DUMMY: dict = {}


class BlkQueue:
    """One virtqueue of a vhost-user-blk device, ready for :func:`blk_burst`.

    ``desc``, ``avail``, ``used`` are the ring areas' host addresses (packed:
    descriptor ring, driver area, device area), ``size`` the queue size,
    ``features`` the negotiated virtio feature bits (the ring's EVENT_IDX and
    INDIRECT_DESC, the blk DISCARD and WRITE_ZEROES), ``regions`` the region
    table, ``disk`` the disk's bytes in this process (a whole number of
    sectors), ``sync_fd`` the fd FLUSH syncs (-1: none), ``serial`` up to 20
    bytes.  ``counters`` may be passed in (shared memory).  ``log``: the
    queue's :class:`~dataplane.vhost.dirty_log.DirtyLog` (default: never
    logs).  ``inflight``: the queue's :class:`~dataplane.vhost.inflight.Inflight` (default: not
    tracked); a tracked queue recovers from its region here (``resubmit``: chains it will
    serve again first).  ``ctx`` is what the kernels take.
    """

    def __init__(
        self,
        desc: int,
        avail: int,
        used: int,
        size: int,
        *,
        regions: np.ndarray,
        disk: np.ndarray,
        packed: bool = False,
        features: int = 0,
        readonly: bool = False,
        sync_fd: int = -1,
        serial: bytes = b"",
        limits: BlkLimits = BlkLimits(0, 0, 0, 0),
        last_avail_idx: int | None = None,
        last_used_idx: int | None = None,
        callfd: int = -1,
        max_chains: int = 64,
        max_segs: int = 64 * 130,
        counters: np.ndarray | None = None,
        enabled: bool = True,
        log=None,
        inflight=None,
        keepalive=None,
    ):
        features = int(features)
        self.packed = bool(packed)
        self.size = int(size)
        self.keepalive = keepalive
        if disk.dtype != np.uint8 or disk.ndim != 1 or disk.shape[0] % 512:
            raise ValueError("disk must be a uint8 array of whole 512-byte sectors")
        serial = bytes(serial)
        if len(serial) > VIRTIO_BLK_ID_BYTES:
            raise ValueError(f"serial is at most {VIRTIO_BLK_ID_BYTES} bytes, got {len(serial)}")
        feat = ring_feat_mask(features)
        vr_split, vr_packed, state = queue_rings(desc, avail, used, self.size, packed=self.packed, feat=feat,
                                                 last_avail_idx=last_avail_idx, last_used_idx=last_used_idx)
        cfg = np.zeros(CFG_SLOTS, np.int64)
        cfg[CFG_PACKED] = int(self.packed)
        cfg[CFG_CALLFD] = int(callfd)
        cfg[CFG_ENABLED] = int(bool(enabled))
        cfg[CFG_READONLY] = int(bool(readonly))
        cfg[CFG_SECTORS] = disk.shape[0] >> SECTOR_SHIFT
        cfg[CFG_DISK_ADDR] = disk.ctypes.data
        cfg[CFG_SYNC_FD] = int(sync_fd)
        cfg[CFG_DISCARD] = features >> BF.VIRTIO_BLK_F_DISCARD & 1
        cfg[CFG_WRITE_ZEROES] = features >> BF.VIRTIO_BLK_F_WRITE_ZEROES & 1
        cfg[CFG_MAX_DISCARD_SECTORS] = limits.max_discard_sectors
        cfg[CFG_MAX_DISCARD_SEG] = limits.max_discard_seg
        cfg[CFG_MAX_WZ_SECTORS] = limits.max_write_zeroes_sectors
        cfg[CFG_MAX_WZ_SEG] = limits.max_write_zeroes_seg
        if counters is None:
            counters = np.zeros(N_COUNTERS, np.int64)
        elif counters.dtype != np.int64 or counters.shape[0] < N_COUNTERS:
            raise ValueError(f"counters must be int64[{N_COUNTERS}]")
        sn = np.zeros(VIRTIO_BLK_ID_BYTES, np.uint8)
        sn[: len(serial)] = np.frombuffer(serial, np.uint8)
        self.ctx = BlkQueueCtx(
            split=vr_split,
            packed=vr_packed,
            state=state,
            regions=np.ascontiguousarray(regions, dtype=np.uint64),
            chains=make_chains(max_chains, max_segs),
            cfg=cfg,
            counters=counters,
            log=no_log() if log is None else log,
            inflight=no_inflight() if inflight is None else inflight,
            disk=disk,
            serial=sn,
        )
        self.resubmit = inflight_recover(self.ctx.inflight, self.packed, vr_split, vr_packed, state)
        signal_if_recovered(self.ctx.inflight, int(callfd))

    def burst(self, want: int = 32) -> int:
        """Serve up to ``want`` requests (one numba call)."""
        return int(blk_burst(self.ctx, int(want)))

    def enable_notify(self, enable: bool) -> bool:
        return bool(blk_enable_notify(self.ctx, bool(enable)))

    def get_base(self) -> int:
        """GET_VRING_BASE value (packed: bit 15 = wrap counter)."""
        return ring_get_base(self.packed, self.ctx.state)

    def get_used_base(self) -> int:
        return int(packed_dev_get_used_base(self.ctx.state)) if self.packed else self.get_base()

    @property
    def broken(self) -> bool:
        return bool(self.ctx.state[STATE_BROKEN])

    def stats(self) -> dict:
        return {name: int(self.ctx.counters[i]) for i, name in enumerate(COUNTER_NAMES)}


def disabled_queue_ctx() -> BlkQueueCtx:
    """The context of a queue that is not running (bursts on it do nothing): lcore slots without a ring."""
    if "queue" not in _DUMMY:
        buf = np.zeros(4096, np.uint8)
        a = buf.ctypes.data
        _DUMMY["queue"] = BlkQueue(a, a + 64, a + 128, 1, regions=np.zeros((1, 3), np.uint64),
                                   disk=np.zeros(512, np.uint8), enabled=False, keepalive=buf)
    return _DUMMY["queue"].ctx
