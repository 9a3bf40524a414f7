"""Dirty-page logging for live migration (VHOST_F_LOG_ALL with VHOST_USER_PROTOCOL_F_LOG_SHMFD).

While the front-end migrates a guest it must know every guest page the
back-end wrote.  It hands the back-end a **log**: shared memory holding one
bit per 4 KiB page of guest-physical address (bit ``page % 8`` of byte
``page // 8``), sent with ``VHOST_USER_SET_LOG_BASE`` (payload ``mmap_size``,
``mmap_offset``; the fd in the ancillary data), and turns logging on by
negotiating ``VHOST_F_LOG_ALL`` (a ``SET_FEATURES`` while the device runs,
the one feature change allowed then).  The back-end then sets, with an
atomic OR, the bit of every page it writes: Rx payloads and virtio-net
headers, descriptor chains of any shape (mergeable, chained, indirect),
virtio-blk data, ids and status bytes, and the used ring (split: entries and
``used->idx``; packed: the descriptors written back).  The front-end reads
and clears the bits (atomically too) and copies those pages again.

**Control plane** (:class:`LogRegion`): the log is mapped as DPDK maps it,
``mmap(NULL, mmap_size + mmap_offset, RW, MAP_SHARED, fd, 0)`` with the
bitmap at ``mmap_offset``; the reply is a ``SET_LOG_BASE`` with an empty
payload (what QEMU's ``vhost_user_set_log_base`` reads back).  The fd stays
open so that lcore processes map the same log themselves
(:func:`take_log_fd`, :meth:`LogRegion.map`).  A new ``SET_LOG_BASE``
replaces the log: the device takes its rings back from the lcores, swaps
the log and hands them out again, so no lcore writes into a log that is
gone.  The log is unmapped when the device stops, resets or disconnects
(QEMU sends ``SET_LOG_BASE`` again whenever it starts a device with logging on).

**Data path** (:class:`DirtyLog`, one per queue, a field of every vhost
queue context): ``bitmap`` is this process's view of the log (empty when
there is none), ``ctl`` the queue's row of shared control slots
(``LOG_CTL_*``: the on/off flag the main process flips when LOG_ALL changes,
counters the lcore keeps), ``q`` private slots: the guest-physical addresses
used-ring writes are logged at and a small cache of log bytes.

A burst reads the flag once (:func:`log_enabled`); when it is off nothing
else happens.  A burst that began before the flag changed finishes as it
began, so the main process waits until each running ring has acknowledged
the change (its next burst writes the value it read to ``LOG_CTL_SEEN``;
DPDK instead holds every vring's lock during SET_FEATURES) before the
reply goes out; a ring that runs no burst for :data:`LOG_FLAG_WAIT_S`
writes nothing meanwhile and is not waited for longer.  When on, each write adds its pages to the cache
(:func:`log_write_hva` for buffers: their host address is translated back
through the region table; :func:`log_write_gpa` for ring areas, whose GPAs
the control plane translated once), and :func:`log_sync` ORs the cache into
the log after the burst's writes are done (DPDK's log cache: a page is
marked after it is written, never before).  Every mark is bounds-checked
against the log: a page beyond it is not marked but counted
(``LOG_CTL_UNLOGGED``, the last such page in ``LOG_CTL_BAD_PAGE``), and the
lcore's error report logs it.

Used-ring writes are logged at ``log_guest_addr`` when ``SET_VRING_ADDR``
had ``VHOST_VRING_F_LOG`` (QEMU gives the used ring's GPA there), else at
the used ring's GPA translated from its user address.  The notification
fields the device writes when it asks for kicks (split: ``used->flags`` or
``avail_event``; packed: the device event area) are logged too
(:func:`log_notify_write`).
"""

from __future__ import annotations

import ctypes
import os
import stat
import time
from collections import namedtuple

import numpy as np

from dataplane import log as dplog
from dataplane.rings.atomics import fetch_or, load_relaxed, py_load_acquire, py_store_release, store_release
from dataplane.rings.jit import inline_kernel, kernel
from dataplane.rings.packed import PACKED_DEV_SHADOW_LAST
from dataplane.rings.regions import REGION_GPA, REGION_HVA, REGION_LEN
from dataplane.rings.split import SPLIT_DEV_SHADOW_BASE
from dataplane.rings.virtqueue import FEAT_EVENT_IDX, STATE_FEATURES, STATE_LAST_USED, STATE_SHADOW_N, STATE_SIZE
from dataplane.vhost.guest_memory import map_shared, unmap

__all__ = [
    "VHOST_LOG_PAGE",
    "VHOST_VRING_F_LOG",
    "LOG_CTL_ON",
    "LOG_CTL_SYNCED",
    "LOG_CTL_UNLOGGED",
    "LOG_CTL_BAD_PAGE",
    "LOG_CTL_SEEN",
    "LOG_CTL_SLOTS",
    "LOG_FLAG_WAIT_S",
    "LOG_CACHE_NR",
    "LogError",
    "LogRegion",
    "DirtyLog",
    "make_log",
    "no_log",
    "log_used_gpa",
    "log_enabled",
    "log_burst_start",
    "log_write_gpa",
    "log_write_hva",
    "log_used",
    "log_sync",
    "log_notify_write",
    "log_zone_name",
    "LogControl",
    "lookup_log_ctl",
    "take_log_fd",
    "map_queue_log",
    "set_log_on",
    "report_unlogged",
    "mark_dirty",
]

log = dplog.get_logger("dataplane.vhost")

#: One log bit covers this many bytes of guest-physical memory.
VHOST_LOG_PAGE = 4096
_PAGE_SHIFT = 12
#: SET_VRING_ADDR flag bit: ``log_guest_addr`` is valid (used-ring writes are logged there).
VHOST_VRING_F_LOG = 0

# -- shared control slots, one int64 row per vring ------------------------------------
LOG_CTL_ON = 0  # main: 1 while VHOST_F_LOG_ALL is negotiated (read once per burst)
LOG_CTL_SYNCED = 1  # lcore: log bytes ORed into the log (counter)
LOG_CTL_UNLOGGED = 2  # lcore: writes whose page is beyond the log or unknown (counter)
LOG_CTL_BAD_PAGE = 3  # lcore: the last page that could not be logged (-1: address not in guest memory)
LOG_CTL_SEEN = 4  # lcore: the flag as its latest burst read it (the main process waits for it)
LOG_CTL_SLOTS = 8
#: How long a flag change waits for a ring's next burst (an idle ring never runs one: no write to miss).
LOG_FLAG_WAIT_S = 0.05

# -- private per-queue slots --------------------------------------------------------
_Q_DESC_GPA = 0  # descriptor ring GPA (packed write-backs)
_Q_USED_GPA = 1  # used ring (split) / device event area (packed) GPA for logging
_Q_USED_START = 2  # split: used idx when the burst started
_Q_N = 3  # entries in the cache
_Q_CACHE = 4  # cache: (log byte index, bits) pairs
#: Log bytes a queue gathers before it must OR them into the log (DPDK: VHOST_LOG_CACHE_NR).
LOG_CACHE_NR = 32
_Q_SLOTS = _Q_CACHE + 2 * LOG_CACHE_NR

DirtyLog = namedtuple("DirtyLog", ["bitmap", "ctl", "q"])
DirtyLog.__doc__ = """A queue's dirty log: ``bitmap`` (uint8 view of the log in this process, empty
when there is none), ``ctl`` (int64[LOG_CTL_SLOTS], shared: flag and counters), ``q`` (private slots)."""

_U64 = np.uint64
_U64_MAX = (1 << 64) - 1
_U64_TOP = np.uint64(_U64_MAX)
_I64_MAX = np.uint64((1 << 63) - 1)
_RING_GPA_LIMIT = 1 << 62


class LogError(Exception):
    """A log cannot be mapped (the message says why)."""


# =============================================================================
# control plane: the log mapping
# =============================================================================


class LogRegion:
    """One mapped log: ``fd`` (kept open for the lcores), ``mmap_size``, ``mmap_offset``,
    ``addr`` (the mapping), ``bitmap`` (uint8 view of its ``mmap_size`` log bytes)."""

    def __init__(self, fd: int, mmap_size: int, mmap_offset: int, addr: int, length: int):
        self.fd = fd
        self.mmap_size = mmap_size
        self.mmap_offset = mmap_offset
        self.addr = addr
        self.length = length
        buf = (ctypes.c_uint8 * mmap_size).from_address(addr + mmap_offset) if mmap_size else bytearray()
        self.bitmap = np.frombuffer(buf, np.uint8)

    @classmethod
    def map(cls, fd: int, mmap_size: int, mmap_offset: int) -> "LogRegion":
        """Map a log as DPDK does: ``mmap_size + mmap_offset`` bytes from file offset 0.

        Takes ownership of ``fd`` (closed on failure).  Refused (:class:`LogError`):
        a zero size, a size + offset that overflows, an fd that is not memory (pipe,
        socket, eventfd...), a file smaller than ``mmap_offset + mmap_size`` (touching
        such a mapping would SIGBUS the process), a failing mmap.
        """
        try:
            if mmap_size == 0:
                raise LogError("mmap_size is 0")
            if mmap_offset > _U64_MAX - mmap_size:
                raise LogError(f"mmap_offset {mmap_offset:#x} + mmap_size {mmap_size:#x} overflows 64 bits")
            try:
                st = os.fstat(fd)
            except OSError as e:
                raise LogError(f"bad log fd {fd}: {e.strerror}") from None
            need = mmap_offset + mmap_size
            if not stat.S_ISREG(st.st_mode):
                raise LogError("log fd cannot be mapped as memory (not a file or memfd)")
            if st.st_size < need:
                raise LogError(f"log file is {st.st_size:#x} bytes, smaller than mmap_offset + mmap_size = {need:#x}")
            try:
                addr = map_shared(fd, need, 0)
            except OSError as e:
                raise LogError(f"mmap of the {need:#x}-byte log failed: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, mmap_size, mmap_offset, addr, need)

    @property
    def pages(self) -> int:
        """Guest pages the log covers (GPAs below ``pages * 4096`` can be logged)."""
        return self.mmap_size * 8

    def unmap(self) -> None:
        """munmap and close the fd (idempotent); every view of the bitmap is invalid after."""
        self.bitmap = np.zeros(0, np.uint8)
        if self.addr:
            unmap(self.addr, self.length)
            self.addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"LogRegion(fd={self.fd}, mmap_size={self.mmap_size:#x}, mmap_offset={self.mmap_offset:#x})"


def log_used_gpa(vq) -> int:
    """Where vring ``vq``'s used-ring writes are logged: ``log_guest_addr`` when SET_VRING_ADDR
    had VHOST_VRING_F_LOG, else the used ring's (packed: device area's) translated GPA."""
    if vq.addr_flags >> VHOST_VRING_F_LOG & 1:
        return int(vq.log_guest_addr)
    return int(vq.used_gpa)


def make_log(bitmap: np.ndarray | None = None, ctl: np.ndarray | None = None, *, desc_gpa: int = 0,
             used_gpa: int = 0, on: bool | None = None) -> DirtyLog:
    """A queue's :class:`DirtyLog` over ``bitmap`` (none: nothing can be logged) and the shared
    ``ctl`` row (default: a private one); ``desc_gpa`` / ``used_gpa`` locate the ring areas
    (see :func:`log_used_gpa`); ``on`` sets the flag."""
    if bitmap is None:
        bitmap = np.zeros(0, np.uint8)
    if ctl is None:
        ctl = np.zeros(LOG_CTL_SLOTS, np.int64)
    q = np.zeros(_Q_SLOTS, np.int64)
    # a ring area at or above 2**62 cannot be a guest address (and could wrap): its writes are counted, not logged
    q[_Q_DESC_GPA] = desc_gpa if 0 <= desc_gpa < _RING_GPA_LIMIT else -1
    q[_Q_USED_GPA] = used_gpa if 0 <= used_gpa < _RING_GPA_LIMIT else -1
    lg = DirtyLog(bitmap=bitmap, ctl=ctl, q=q)
    if on is not None:
        set_log_on(ctl, on)
    return lg


def no_log() -> DirtyLog:
    """A queue that never logs (flag off, no log)."""
    return make_log()


def set_log_on(ctl: np.ndarray, on: bool) -> None:
    """Flip the logging flag of one ``ctl`` row, or of every row of a 2-d block (seen at the next burst)."""
    rows = ctl.reshape(-1, LOG_CTL_SLOTS)
    for r in rows:
        py_store_release(r, LOG_CTL_ON, 1 if on else 0)


# -- hand-over to lcores: shared control rows in memzone vhost_log_<port> -------------


def log_zone_name(name: str) -> str:
    return f"vhost_log_{name}"


class LogControl:
    """Main side: the ``int64[nvrings, LOG_CTL_SLOTS]`` control rows of a port's vrings
    (memzone ``vhost_log_<name>``), shared with the lcores that serve them.

    A vring hand-over carries the log (:meth:`spec`); :meth:`queue_started`
    sets the ring's flag from the device's LOG_ALL, :meth:`set_all` flips
    every ring's flag while they run (seen at their next burst).
    """

    def __init__(self, memory, name: str, nvrings: int):
        self.memory = memory
        self._zone = memory.memzone_reserve(log_zone_name(name), nvrings * LOG_CTL_SLOTS * 8)
        self.ctl = self._zone.view(np.int64).reshape(nvrings, LOG_CTL_SLOTS)
        self.ctl[:] = 0

    @staticmethod
    def spec(dev, vq) -> tuple[dict, list[int]]:
        """The log part of vring ``vq``'s hand-over: spec entries and the log fd (if a log is mapped)."""
        lr = dev.dirty_log
        spec = dict(log=None if lr is None else (lr.mmap_size, lr.mmap_offset), log_desc_gpa=int(vq.desc_gpa),
                    log_used_gpa=log_used_gpa(vq))
        return spec, ([] if lr is None else [lr.fd])

    def queue_started(self, dev, qid: int) -> None:
        set_log_on(self.ctl[qid], dev.log_all)

    def set_all(self, on: bool, qids=()) -> None:
        """Flip every ring's flag, then wait (at most :data:`LOG_FLAG_WAIT_S`) until the rings
        ``qids`` (those running) have started a burst that read it: a burst that began before the
        change has then finished, so every guest write after this returns follows the new flag."""
        set_log_on(self.ctl, on)
        want = 1 if on else 0
        deadline = time.monotonic() + LOG_FLAG_WAIT_S
        pending = [q for q in qids if q < len(self.ctl)]
        while pending and time.monotonic() < deadline:
            pending = [q for q in pending if py_load_acquire(self.ctl[q], LOG_CTL_SEEN) != want]
            if pending:
                time.sleep(0.0002)

    def close(self) -> None:
        if self._zone is not None:
            try:
                self.memory.memzone_free(self._zone.name)
            except Exception:
                pass
            self._zone = None


def lookup_log_ctl(memory, name: str) -> np.ndarray:
    """Lcore side: the port's control rows (see :class:`LogControl`)."""
    mz = memory.memzone_lookup(log_zone_name(name))
    return mz.view(np.int64).reshape(-1, LOG_CTL_SLOTS)


def take_log_fd(spec: dict, fds: list[int]) -> tuple[int, list[int]]:
    """Split a vring hand-over's fds (:func:`~dataplane.vhost.handoff.vring_spec`): the log fd
    (right after the region fds, when ``spec["log"]`` is set; else -1) and the other fds."""
    if not spec.get("log"):
        return -1, list(fds)
    nreg = len(spec["regions"])
    return fds[nreg], list(fds[:nreg]) + list(fds[nreg + 1 :])


def map_queue_log(spec: dict, log_fd: int, ctl_row: np.ndarray) -> tuple[DirtyLog, LogRegion | None]:
    """Lcore side: map the log of a vring hand-over in this process (``log_fd`` taken over) and
    build the queue's :class:`DirtyLog`; returns it and the mapping to unmap at detach.
    Raises ValueError when the log cannot be mapped."""
    lr = None
    if log_fd >= 0:
        try:
            lr = LogRegion.map(log_fd, *spec["log"])
        except LogError as e:
            raise ValueError(f"dirty log: {e}") from None
    bitmap = None if lr is None else lr.bitmap
    return make_log(bitmap, ctl_row, desc_gpa=spec.get("log_desc_gpa", 0), used_gpa=spec.get("log_used_gpa", 0)), lr


def mark_dirty(bitmap: np.ndarray, gpa: int, length: int) -> int:
    """Control plane: mark ``[gpa, gpa + length)`` in ``bitmap`` now (atomically, as the bursts do);
    returns how many pages could not be logged (beyond the log)."""
    lg = make_log(bitmap, on=True)
    log_write_gpa(lg, gpa & _U64_MAX, length)
    log_sync(lg)
    return int(lg.ctl[LOG_CTL_UNLOGGED])


def report_unlogged(ctl_row: np.ndarray, seen: int, **where) -> int:
    """Log an error when writes could not be logged since ``seen``; returns the new count."""
    n = int(ctl_row[LOG_CTL_UNLOGGED])
    if n != seen:
        page = int(ctl_row[LOG_CTL_BAD_PAGE])
        log.error("guest writes not marked in the dirty log: their page is beyond the log (or unknown)",
                  new=n - seen, total=n, last_page=page, last_gpa=hex(page * VHOST_LOG_PAGE) if page >= 0 else None,
                  **where)
    return n


# =============================================================================
# data path (numba; inlined into the bursts)
# =============================================================================


@inline_kernel
def log_enabled(lg):
    """The burst's one check: is logging on?  (Acknowledged in ``LOG_CTL_SEEN`` when it changed.)"""
    on = load_relaxed(lg.ctl, LOG_CTL_ON)
    if on != lg.ctl[LOG_CTL_SEEN]:
        store_release(lg.ctl, LOG_CTL_SEEN, on)
    return on != 0


@inline_kernel
def _unlogged(lg, page):
    lg.ctl[LOG_CTL_UNLOGGED] += 1
    lg.ctl[LOG_CTL_BAD_PAGE] = page


@kernel
def log_sync(lg):
    """OR the cached log bytes into the log (atomically: other queues and the front-end
    share it) and empty the cache.  Called once the burst's writes are done."""
    q = lg.q
    n = q[_Q_N]
    bm = lg.bitmap
    for i in range(n):
        fetch_or(bm, q[_Q_CACHE + 2 * i], np.uint8(q[_Q_CACHE + 2 * i + 1]))
    lg.ctl[LOG_CTL_SYNCED] += n
    q[_Q_N] = 0


@inline_kernel
def _log_page(lg, page):
    """Cache the bit of ``page`` (a uint64 page number), bounds-checked against the log."""
    if page >= _U64(lg.bitmap.shape[0]) * _U64(8):
        if page > _I64_MAX:
            _unlogged(lg, np.int64(-1))
        else:
            _unlogged(lg, np.int64(page))
        return
    p = np.int64(page)
    byte = p >> 3
    bit = np.int64(1) << (p & 7)
    q = lg.q
    n = q[_Q_N]
    i = n - 1
    while i >= 0:  # newest first: consecutive writes share pages
        if q[_Q_CACHE + 2 * i] == byte:
            q[_Q_CACHE + 2 * i + 1] |= bit
            return
        i -= 1
    if n == LOG_CACHE_NR:
        log_sync(lg)
        n = 0
    q[_Q_CACHE + 2 * n] = byte
    q[_Q_CACHE + 2 * n + 1] = bit
    q[_Q_N] = n + 1


@kernel
def log_write_gpa(lg, gpa, length):
    """Mark the pages of guest-physical range ``[gpa, gpa + length)`` (cached until :func:`log_sync`)."""
    if length <= 0:
        return
    g = _U64(gpa)
    ln = _U64(length)
    if g > _U64_TOP - (ln - _U64(1)):
        _unlogged(lg, np.int64(-1))
        return
    first = g >> _U64(_PAGE_SHIFT)
    last = (g + ln - _U64(1)) >> _U64(_PAGE_SHIFT)
    page = first
    while page <= last:
        _log_page(lg, page)
        page += _U64(1)


@kernel
def log_write_hva(lg, regions, hva, length):
    """Mark the pages of a write at host address ``hva`` (inside one guest region: a
    descriptor buffer as fetched), translated back to its GPA through the region table."""
    if length <= 0:
        return
    a = _U64(hva)
    for r in range(regions.shape[0]):
        h = regions[r, REGION_HVA]
        if a >= h and a - h < regions[r, REGION_LEN]:
            log_write_gpa(lg, regions[r, REGION_GPA] + (a - h), length)
            return
    _unlogged(lg, np.int64(-1))


@inline_kernel
def log_burst_start(lg, state):
    """Remember where this burst's used entries start (split: the published used idx)."""
    lg.q[_Q_USED_START] = state[STATE_LAST_USED]


@inline_kernel
def _log_slots(lg, base, first, count, num, stride, offset, length):
    """Mark ``count`` ring slots from ``first`` (mod ``num``): bytes ``[offset, offset + length)``
    of each ``stride``-byte slot of the array at ``base``, as at most two ranges."""
    if count <= 0:
        return
    if count > num:
        count = num
    end = first + count
    if end <= num:
        log_write_gpa(lg, base + stride * first + offset, stride * (count - 1) + length)
    else:
        log_write_gpa(lg, base + stride * first + offset, stride * (num - first - 1) + length)
        log_write_gpa(lg, base + offset, stride * (end - num - 1) + length)


@kernel
def log_used(lg, is_packed, state):
    """Cache the used-ring pages this burst wrote; call it just before the flush that publishes them.

    Split: the entries from the used idx at :func:`log_burst_start` up to the
    last shadow entry, and ``used->idx``.  Packed: the descriptors written back
    (id, len, flags: bytes 8-15), from the head slot to the last pushed one.
    """
    q = lg.q
    num = state[STATE_SIZE]
    k = state[STATE_SHADOW_N]
    if is_packed:
        if k == 0:
            return
        if q[_Q_DESC_GPA] < 0:
            _unlogged(lg, np.int64(-1))
            return
        head = state[STATE_LAST_USED]
        last = state[PACKED_DEV_SHADOW_LAST]
        count = last - head + 1
        if count <= 0:
            count += num
        _log_slots(lg, q[_Q_DESC_GPA], head, count, num, 16, 8, 8)
        return
    u0 = q[_Q_USED_START]
    u = state[STATE_LAST_USED]
    if k == 0 and u == u0:
        return
    # entries published early in this burst (a full shadow), then the shadow's entries,
    # which sit at the used idx of each (IN_ORDER batches skip slots)
    last = u
    for e in range(k):
        last = u
        u += state[SPLIT_DEV_SHADOW_BASE + 2 * e] >> 32
    span = ((last - u0) & 0xFFFF) + 1 if k > 0 else (u - u0) & 0xFFFF
    used = q[_Q_USED_GPA]
    if used < 0:
        _unlogged(lg, np.int64(-1))
        return
    _log_slots(lg, used + 4, u0 & (num - 1), span, num, 8, 0, 8)
    log_write_gpa(lg, used + 2, 2)


@kernel
def log_notify_write(lg, is_packed, state, enable):
    """Mark (and sync) the notification field a ``ring_enable_notify(enable)`` wrote, if logging is on."""
    if not log_enabled(lg):
        return
    used = lg.q[_Q_USED_GPA]
    if used < 0:
        _unlogged(lg, np.int64(-1))
        return
    if is_packed:
        log_write_gpa(lg, used, 4)  # device event area: off_wrap and flags
    elif state[STATE_FEATURES] & FEAT_EVENT_IDX:
        if not enable:
            return  # nothing written
        log_write_gpa(lg, used + 4 + 8 * state[STATE_SIZE], 2)  # avail_event
    else:
        log_write_gpa(lg, used, 2)  # used->flags
    log_sync(lg)
