"""The device side of a vring whose kind, split or packed, is known only at run time.

A vhost queue context (net's :class:`~dataplane.vhost.virtio_net.VhostQueueCtx`,
blk's :class:`~dataplane.vhost.blk.requests.BlkQueueCtx`) carries both ring
views -- the kind not in use is a 1-entry dummy (:func:`dummy_vrings`) -- so
every queue context has one numba type and one lcore loop serves split and
packed queues alike.  These helpers pick the ring kernels of
:mod:`dataplane.rings.split` / :mod:`dataplane.rings.packed` by the
``is_packed`` flag; they are inlined into the callers' bursts.
"""

from __future__ import annotations

import numpy as np

from dataplane.rings.jit import inline_kernel, kernel
from dataplane.rings.packed import (
    PACKED_DEV_SHADOW_IDX,
    PACKED_DEV_SHADOW_WRAP,
    WRAP_BIT,
    packed_dev_enable_notify,
    packed_dev_fetch,
    packed_dev_flush_used,
    packed_dev_get_base,
    packed_dev_init,
    packed_dev_push_used,
    packed_dev_set_base,
    packed_vring_alloc,
    packed_vring_from_addrs,
)
from dataplane.rings.split import (
    split_dev_enable_notify,
    split_dev_fetch,
    split_dev_flush_used,
    split_dev_get_base,
    split_dev_init,
    split_dev_push_used,
    split_dev_state_size,
    split_layout,
    split_vring_from_addrs,
    split_vring_from_buffer,
)
from dataplane.rings.virtqueue import ERR_AVAIL_IDX, STATE_AVAIL_WRAP, STATE_BROKEN, STATE_LAST_AVAIL, STATE_SLOTS
from dataplane.vhost.inflight import (
    Q_LAST_RS,
    Q_ON,
    Q_RS_N,
    Q_RS_POS,
    inflight_fetched,
    inflight_flush_begin,
    inflight_flush_end,
    inflight_pushed,
    inflight_resubmit,
)

__all__ = ["QUEUE_CTX_FIELDS", "ring_fetch", "ring_fetch_one", "ring_push_used", "ring_flush_used", "ring_enable_notify", "ring_get_base", "dummy_vrings",
           "queue_rings"]


#: The fields every vhost queue context starts with (a device type's own follow):
#: ``split`` (SplitVring; a 1-entry dummy for a packed queue), ``packed`` (PackedVring;
#: a dummy for a split queue), ``state`` (int64 device ring state, the rings' STATE_*
#: slots), ``regions`` (uint64[R, 3] region table: gpa, len, hva), ``chains`` (the Chains
#: scratch of one burst), ``cfg`` (int64 config slots), ``counters`` (int64 counters),
#: ``log`` (the queue's :class:`~dataplane.vhost.dirty_log.DirtyLog`), ``inflight`` (the
#: queue's :class:`~dataplane.vhost.inflight.Inflight`).
QUEUE_CTX_FIELDS = ("split", "packed", "state", "regions", "chains", "cfg", "counters", "log", "inflight")


@inline_kernel
def ring_fetch(is_packed, split, packed, state, regions, chains, want, infl):
    """Fetch up to ``want`` chains into ``chains``; returns how many.

    With inflight tracking (:mod:`~dataplane.vhost.inflight`) the chains left
    in flight by a previous back-end come first, then each new chain is
    recorded as soon as it is fetched.
    """
    tracked = infl.q[Q_ON] != 0
    if tracked:
        if infl.q[Q_RS_POS] < infl.q[Q_RS_N]:
            return inflight_resubmit(is_packed, split, state, regions, chains, want, infl)
        infl.q[Q_LAST_RS] = 0
    idx0 = state[STATE_LAST_AVAIL]
    wrap0 = state[STATE_AVAIL_WRAP]
    if is_packed:
        n = packed_dev_fetch(packed, state, regions, chains, want)
    else:
        n = split_dev_fetch(split, state, regions, chains, want)
    if tracked and n > 0:
        inflight_fetched(is_packed, packed, state, chains, n, idx0, wrap0, infl)
    return n


@inline_kernel
def ring_fetch_one(is_packed, split, packed, state, regions, chains, infl):
    """Fetch one chain into slot 0 of ``chains`` (a device that takes chains one at a time):
    1; 0 when none is available; ``-code`` when the ring is faulty (``code`` a ring error:
    the chain's status, or ERR_AVAIL_IDX when the ring broke)."""
    n = ring_fetch(is_packed, split, packed, state, regions, chains, 1, infl)
    if n == 0:
        if state[STATE_BROKEN] != 0:
            return -ERR_AVAIL_IDX
        return 0
    st = np.int64(chains.status[0])
    if st != 0:
        return -st
    return 1


@inline_kernel
def ring_push_used(is_packed, split, packed, state, head, length, ndesc, infl):
    """Queue the used entry of a chain (published by :func:`ring_flush_used`)."""
    if is_packed:
        packed_dev_push_used(packed, state, head, length, ndesc)
    else:
        split_dev_push_used(split, state, head, length)
    if infl.q[Q_ON] != 0:
        inflight_pushed(is_packed, head, infl)


@inline_kernel
def ring_flush_used(is_packed, split, packed, state, infl):
    """Publish the queued used entries; returns whether the driver wants an interrupt.

    With inflight tracking the batch's records are retired around the ring's
    own publication, in the spec's order."""
    tracked = infl.q[Q_ON] != 0
    if tracked:
        inflight_flush_begin(is_packed, state, state[PACKED_DEV_SHADOW_IDX], state[PACKED_DEV_SHADOW_WRAP], infl)
    if is_packed:
        need = packed_dev_flush_used(packed, state)
    else:
        need = split_dev_flush_used(split, state)
    if tracked:
        inflight_flush_end(is_packed, state, infl)
    return need


@kernel
def ring_enable_notify(is_packed, split, packed, state, enable):
    """Ask the driver for kicks (``enable``) or not; True when chains are pending (keep polling)."""
    if is_packed:
        return packed_dev_enable_notify(packed, state, enable)
    return split_dev_enable_notify(split, state, enable)


_DUMMY: dict = {}


def dummy_vrings():
    """``(split, packed)``: 1-entry rings over private memory, for the ring kind a queue does not use."""
    if not _DUMMY:
        lay = split_layout(1)
        raw = np.zeros(lay.total_size + 64, np.uint8)
        off = (-raw.ctypes.data) % 16
        _DUMMY["split"] = split_vring_from_buffer(raw[off : off + lay.total_size], 1)
        _DUMMY["split_buf"] = raw
        buf, vr = packed_vring_alloc(1)
        _DUMMY["packed"] = vr
        _DUMMY["packed_buf"] = buf
    return _DUMMY["split"], _DUMMY["packed"]


def queue_rings(desc: int, avail: int, used: int, size: int, *, packed: bool, feat: int,
                last_avail_idx: int | None = None, last_used_idx: int | None = None, state: np.ndarray | None = None):
    """``(split, packed, state)`` of a queue whose ring areas are at host addresses ``desc``, ``avail``, ``used``.

    The kind not in use is a dummy; ``state`` (allocated if None) is
    initialised with the compact ``feat`` mask and the SET_VRING_BASE value
    ``last_avail_idx`` (packed: bit 15 = wrap counter; ``last_used_idx``
    likewise, default = avail).
    """
    dsplit, dpacked = dummy_vrings()
    if packed:
        if state is None:
            state = np.zeros(STATE_SLOTS, np.int64)
        base = WRAP_BIT if last_avail_idx is None else int(last_avail_idx)
        packed_dev_init(state, size, feat, base)
        if last_used_idx is not None:
            packed_dev_set_base(state, base, int(last_used_idx))
        return dsplit, packed_vring_from_addrs(desc, avail, used, size), state
    if state is None:
        state = np.zeros(split_dev_state_size(size), np.int64)
    split_dev_init(state, size, feat, 0 if last_avail_idx is None else int(last_avail_idx))
    return split_vring_from_addrs(desc, avail, used, size), dpacked, state


def ring_get_base(packed: bool, state: np.ndarray) -> int:
    """GET_VRING_BASE value of a queue's device state (packed: bit 15 = wrap counter)."""
    return int(packed_dev_get_base(state)) if packed else int(split_dev_get_base(state))
