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
    packed_dev_enable_notify,
    packed_dev_fetch,
    packed_dev_flush_used,
    packed_dev_push_used,
    packed_vring_alloc,
)
from dataplane.rings.split import (
    split_dev_enable_notify,
    split_dev_fetch,
    split_dev_flush_used,
    split_dev_push_used,
    split_layout,
    split_vring_from_buffer,
)

__all__ = ["ring_fetch", "ring_push_used", "ring_flush_used", "ring_enable_notify", "dummy_vrings"]


@inline_kernel
def ring_fetch(is_packed, split, packed, state, regions, chains, want):
    """Fetch up to ``want`` chains into ``chains``; returns how many."""
    if is_packed:
        return packed_dev_fetch(packed, state, regions, chains, want)
    return split_dev_fetch(split, state, regions, chains, want)


@inline_kernel
def ring_push_used(is_packed, split, packed, state, head, length, ndesc):
    """Queue the used entry of a chain (published by :func:`ring_flush_used`)."""
    if is_packed:
        packed_dev_push_used(packed, state, head, length, ndesc)
    else:
        split_dev_push_used(split, state, head, length)


@inline_kernel
def ring_flush_used(is_packed, split, packed, state):
    """Publish the queued used entries; returns whether the driver wants an interrupt."""
    if is_packed:
        return packed_dev_flush_used(packed, state)
    return split_dev_flush_used(split, state)


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
