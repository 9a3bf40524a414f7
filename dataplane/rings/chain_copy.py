"""Copies between a fetched chain's segments and flat memory (inlined into the device-side bursts).

A chain fetched by the rings' device kernels is a run of segments ``[s, s_end)``
in a :class:`~dataplane.rings.virtqueue.Chains` scratch (``seg_addr`` host
addresses, ``seg_len`` lengths, already translated and bounds-checked).  These
walk such a run as one byte stream: the blk back-end and the vDPA simulators
read request headers and move payloads with them.
"""

from __future__ import annotations

import numpy as np

from dataplane.rings.jit import inline_kernel
from dataplane.rings.mem import copy_bytes, ld8, prefetch, prefetchw

__all__ = ["chain_gather", "chain_scatter", "chain_load_le", "chain_prefetch"]

_U64 = np.uint64
_Z = _U64(0)
_ONE = _U64(1)
_EIGHT = _U64(8)


@inline_kernel
def chain_gather(ch, s, s_end, skip, dst, n):
    """Copy ``n`` bytes of segments ``[s, s_end)``, from ``skip`` bytes in, to address ``dst``; returns the bytes copied."""
    done = _Z
    while s < s_end and done < n:
        length = _U64(ch.seg_len[s])
        if skip >= length:
            skip -= length
        else:
            take = length - skip
            if take > n - done:
                take = n - done
            copy_bytes(dst + done, ch.seg_addr[s] + skip, take)
            done += take
            skip = _Z
        s += 1
    return done


@inline_kernel
def chain_scatter(ch, s, s_end, src, n):
    """Copy ``n`` bytes from address ``src`` into segments ``[s, s_end)`` from their start; returns the bytes copied."""
    done = _Z
    while s < s_end and done < n:
        take = _U64(ch.seg_len[s])
        if take > n - done:
            take = n - done
        copy_bytes(ch.seg_addr[s], src + done, take)
        done += take
        s += 1
    return done


@inline_kernel
def chain_load_le(ch, s, s_end, skip, nbytes):
    """The little-endian integer of ``nbytes`` bytes at offset ``skip`` of segments ``[s, s_end)`` (missing bytes read 0)."""
    v = _Z
    got = _Z
    while s < s_end and got < nbytes:
        length = _U64(ch.seg_len[s])
        if skip >= length:
            skip -= length
        else:
            a = ch.seg_addr[s]
            while skip < length and got < nbytes:
                v |= _U64(ld8(a + skip)) << (got * _EIGHT)
                skip += _ONE
                got += _ONE
            skip = _Z
        s += 1
    return v


@inline_kernel
def chain_prefetch(ch, k0, k1, write):
    """Ask for the first two lines of the first segment of chains ``[k0, k1)`` at once (``write``:
    for writing, exclusive).  The driver's cpu wrote them last: copied one after the other, each
    chain would wait for its own misses; asked for together, they overlap.  A prefetch never faults,
    so a line past a segment's end is harmless."""
    for k in range(k0, k1):
        if ch.seg_count[k] != 0:
            a = ch.seg_addr[np.int64(ch.seg_start[k])]
            if write:
                prefetchw(a)
                prefetchw(a + np.uint64(64))
            else:
                prefetch(a)
                prefetch(a + np.uint64(64))
