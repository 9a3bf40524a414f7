"""Contexts as rows of words and calls through an address (rings.jit): what the forwarding loop
uses to reach its port queues and modes without linking their code."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
from numba import typeof, types

from dataplane.rings.jit import call_entry, describe, entry_address, kernel, row_reader, row_words

Ctx = namedtuple("Ctx", ["a", "b", "inner"])
Inner = namedtuple("Inner", ["m", "k"])


def _ctx():
    return Ctx(np.arange(5, dtype=np.int64), np.zeros(3, np.uint32),
               Inner(np.arange(6, dtype=np.float64).reshape(2, 3), np.zeros(2, np.uint16)))


_TYPE = typeof(_ctx())
_read = row_reader(lambda: _TYPE)


@kernel
def _entry(row, mp, lcore, pkts, n):
    c = _read(row)
    c.b[0] = 7  # writes reach the original arrays
    c.inner.k[1] = np.uint16(lcore)
    return np.int64(c.a[4] + c.inner.m[1, 2] + c.a.shape[0] + c.inner.m.shape[1] + mp[0] + n + pkts[0])


@kernel
def _caller(rows, addr, mp, pkts):
    total = 0
    for i in range(rows.shape[0]):
        total += call_entry(addr, rows[i], mp, np.int64(i + 1), pkts, np.int64(100))
    return total


def test_a_row_rebuilds_the_arrays_and_a_call_through_the_address_reaches_the_kernel():
    ctxs = [_ctx(), _ctx()]
    rows = np.stack([describe(c) for c in ctxs])
    assert rows.dtype == np.uint64 and rows.shape[1] == row_words(_TYPE) == 3 * 4 + 6  # 1-D: addr, itemsize, shape, stride; 2-D: 6
    mp = np.array([1000], np.int64)
    pkts = np.array([3], np.uint32)
    addr = entry_address(_entry, (typeof(rows[0]), typeof(mp), types.int64, typeof(pkts), types.int64))
    assert addr != 0
    # per call: a[4]=4, m[1,2]=5, len(a)=5, m.shape[1]=3, 1000, n=100, pkts[0]=3
    assert _caller(rows, addr, mp, pkts) == 2 * (4 + 5 + 5 + 3 + 1000 + 100 + 3)
    assert [c.b[0] for c in ctxs] == [7, 7]
    assert [int(c.inner.k[1]) for c in ctxs] == [1, 2]


def test_a_row_of_another_shape_of_value_is_refused_by_the_queue_rows():
    from dataplane.ethdev.queue import KIND_NONE, make_port_queue, port_queue_row

    q = make_port_queue(KIND_NONE)
    assert port_queue_row(q).shape == (row_words(typeof(q)),)
    with pytest.raises(TypeError):
        port_queue_row(q._replace(counters=np.zeros(8, np.int32)))
