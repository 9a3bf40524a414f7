"""A back-end that dies at a chosen point of a burst, for inflight-tracking tests.

:func:`burst_until` runs the steps a blk or net burst runs on a vhost queue
context (the ring helpers of :mod:`dataplane.vhost.dev_ring`, with their
inflight bookkeeping) and stops after ``stage``, leaving the shared ring and
the inflight region exactly as a back-end killed there would:

* :data:`STAGE_FETCHED` -- chains fetched (and recorded), nothing completed;
* :data:`STAGE_PUSHED` -- used entries queued for every fetched chain, nothing published;
* :data:`STAGE_PUBLISHED` -- the ring's used idx / flags published, the inflight
  records not yet retired (the window the spec's last-batch rules cover);
* :data:`STAGE_DONE` -- a whole burst.

The chains are completed with used length 0 (what a request's completion
writes is not the point: which chains come back, and how often, is).
"""

from __future__ import annotations

import numpy as np

from dataplane.rings.jit import kernel
from dataplane.rings.packed import PACKED_DEV_SHADOW_IDX, PACKED_DEV_SHADOW_WRAP, packed_dev_flush_used
from dataplane.rings.split import split_dev_flush_used
from dataplane.vhost.dev_ring import ring_fetch, ring_flush_used, ring_push_used
from dataplane.vhost.inflight import Q_ON, inflight_flush_begin

__all__ = ["STAGE_FETCHED", "STAGE_PUSHED", "STAGE_PUBLISHED", "STAGE_DONE", "burst_until"]

STAGE_FETCHED = 0
STAGE_PUSHED = 1
STAGE_PUBLISHED = 2
STAGE_DONE = 3


@kernel
def _burst_until(q, is_packed, want, stage, heads):
    n = ring_fetch(is_packed, q.split, q.packed, q.state, q.regions, q.chains, want, q.inflight)
    for c in range(n):
        heads[c] = q.chains.head[c]
    if stage == STAGE_FETCHED or n == 0:
        return n
    for c in range(n):
        ring_push_used(is_packed, q.split, q.packed, q.state, np.int64(q.chains.head[c]), 0,
                       np.int64(q.chains.ndesc[c]), q.inflight)
    if stage == STAGE_PUSHED:
        return n
    if stage == STAGE_PUBLISHED:
        if q.inflight.q[Q_ON] != 0:
            inflight_flush_begin(is_packed, q.state, q.state[PACKED_DEV_SHADOW_IDX], q.state[PACKED_DEV_SHADOW_WRAP],
                                 q.inflight)
        if is_packed:
            packed_dev_flush_used(q.packed, q.state)
        else:
            split_dev_flush_used(q.split, q.state)
        return n
    ring_flush_used(is_packed, q.split, q.packed, q.state, q.inflight)
    return n


def burst_until(ctx, packed: bool, want: int, stage: int) -> list[int]:
    """Run one burst of up to ``want`` chains on queue context ``ctx`` up to ``stage``; returns
    the heads (packed: buffer ids) it fetched."""
    heads = np.zeros(max(int(want), 1), np.int64)
    n = int(_burst_until(ctx, bool(packed), int(want), int(stage), heads))
    return [int(h) for h in heads[:n]]
