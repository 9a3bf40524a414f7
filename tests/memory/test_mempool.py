"""Mempools: layout in one memzone, get/put with per-lcore caches, pktmbuf
alloc/free/chains/clones, data access, jitted callers and forked users."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from dataplane.memory import Memory, MemzoneExists
from dataplane.memory import mbuf as mb
from dataplane.memory import mempool as mpl
from dataplane.memory.mempool import (
    MempoolCorrupt,
    MempoolEmpty,
    mempool_create,
    mempool_free,
    mempool_lookup,
)
from dataplane.memory.units import MiB

_names = itertools.count()


@pytest.fixture
def mem():
    with Memory(48 * MiB, huge=False, file_prefix=f"mpt{os.getpid()}") as m:
        yield m


def pool(mem, n=256, cache_size=32, **kw):
    return mempool_create(mem, f"p{next(_names)}", n, cache_size=cache_size, **kw)


# --------------------------------------------------------------------------
# creation, layout, lookup


def test_create_layout_and_initial_mbufs(mem):
    mp = pool(mem, n=100, cache_size=16, priv_size=16)
    assert (mp.n, mp.buf_len, mp.headroom, mp.data_room) == (100, 2176, 128, 2048)
    assert (mp.cache_size, mp.flush_thresh, mp.max_lcores, mp.priv_size) == (16, 24, 128, 16)
    assert mp.memzone.name == f"MP_{mp.name}"
    # everything lives in the memzone
    lo, hi = mp.memzone.addr, mp.memzone.addr + mp.memzone.size
    for a in (mp.info, mp.ring.hdr, mp.ring.slots, mp.cache, mp.mbufs, mp.mbuf_u16, mp.data, mp.priv):
        assert lo <= a.ctypes.data and a.ctypes.data + a.nbytes <= hi
    assert mp.mbufs.ctypes.data % 128 == 0 and mp.data.ctypes.data % 4096 == 0
    assert mp.cache.shape == (128, mp.cache.shape[1]) and (mp.cache.strides[0] % 128) == 0
    assert mp.priv.shape == (100, 16)
    m = mp.mbufs
    idx = np.arange(100)
    assert (m["index"] == idx).all()
    assert (m["buf_off"] == idx * mp.buf_stride).all()
    assert (m["buf_iova"] == mp.iova + m["buf_off"]).all()
    assert mp.iova == mp.memzone.iova + (mp.data.ctypes.data - mp.memzone.addr)
    assert (m["buf_len"] == 2176).all() and (m["data_off"] == 128).all()
    assert (m["refcnt"] == 1).all() and (m["nb_segs"] == 1).all()
    assert (m["next"] == mb.MBUF_NEXT_NONE).all() and (m["port"] == mb.MBUF_PORT_INVALID).all()
    assert (m["pool_id"] == mp.pool_id).all() and (m["priv_size"] == 16).all()
    a = mp.audit()
    assert (a.n, a.in_ring, a.in_caches, a.in_use) == (100, 100, 0, 0)
    assert mp.avail_count() == 100 and mp.in_use_count() == 0 and mp.full()


def test_buffers_are_addressable_by_iova(mem):
    mp = pool(mem, n=8, cache_size=0)
    for i in range(8):
        iova = int(mp.mbufs[i]["buf_iova"])
        addr = mem.iova_to_virt(iova)
        assert addr == mp.data.ctypes.data + int(mp.mbufs[i]["buf_off"])


def test_lookup_parses_the_header(mem):
    mp = pool(mem, n=300, cache_size=64, data_room_size=1024, priv_size=8, max_lcores=4)
    other = mempool_lookup(mem, mp.name)
    for attr in ("name", "n", "buf_len", "buf_stride", "headroom", "cache_size", "flush_thresh",
                 "max_lcores", "priv_size", "pool_id", "iova"):
        assert getattr(other, attr) == getattr(mp, attr), attr
    assert other.mbufs.ctypes.data == mp.mbufs.ctypes.data
    got = other.get_bulk(5, lcore=1)
    assert mp.in_use_count() == 5 and mp.cache_count(1) == other.cache_count(1)
    mp.put_bulk(got, lcore=2)
    assert mp.audit().in_use == 0


def test_small_data_room_and_stride(mem):
    mp = pool(mem, n=10, cache_size=0, data_room_size=100)
    assert mp.buf_len == 100 and mp.headroom == 100 and mp.data_room == 0 and mp.buf_stride == 128
    mp2 = pool(mem, n=10, cache_size=0, data_room_size=1000)
    assert mp2.headroom == 128 and mp2.data_room == 872 and mp2.buf_stride == 1024


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"n": 0}, "n must be"),
        ({"cache_size": 513, "n": 4096}, "cache_size"),
        ({"cache_size": 256, "n": 300}, "flush threshold"),
        ({"data_room_size": 70000}, "data_room_size"),
        ({"priv_size": 5}, "priv_size"),
    ],
)
def test_bad_parameters(mem, kw, msg):
    args = {"n": 64, "cache_size": 0} | kw
    with pytest.raises(ValueError, match=msg):
        mempool_create(mem, "bad", **args)


def test_names(mem):
    with pytest.raises(ValueError, match="invalid mempool name"):
        mempool_create(mem, "x" * 29, 8, cache_size=0)
    mempool_create(mem, "x" * 28, 8, cache_size=0)
    with pytest.raises(MemzoneExists):
        mempool_create(mem, "x" * 28, 8, cache_size=0)
    with pytest.raises(KeyError):
        mempool_lookup(mem, "nope")


def test_lookup_refuses_a_foreign_memzone(mem):
    mem.memzone_reserve("MP_fake", 4096)
    with pytest.raises(ValueError, match="bad magic"):
        mempool_lookup(mem, "fake")


def test_free_releases_the_memzone(mem):
    mp = pool(mem, n=64, cache_size=0)
    name = mp.name
    mempool_free(mem, mp)
    with pytest.raises(KeyError):
        mempool_lookup(mem, name)


# --------------------------------------------------------------------------
# get / put


def test_get_put_without_cache_all_or_nothing(mem):
    mp = pool(mem, n=64, cache_size=0)
    a = mp.get_bulk(60)
    assert a.dtype == np.uint32 and len(set(a.tolist())) == 60
    with pytest.raises(MempoolEmpty):
        mp.get_bulk(5)
    assert mp.ring_count() == 4  # nothing taken by the failed get
    b = mp.get_bulk(4)
    with pytest.raises(MempoolEmpty):
        mp.get()
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(64))
    assert mp.audit().in_use == 64 and mp.empty()
    mp.put_bulk(a)
    mp.put_bulk(b)
    assert mp.audit().in_use == 0


def test_cache_refill_flush_and_bypass(mem):
    mp = pool(mem, n=256, cache_size=32)  # flush threshold 48
    assert mp.flush_thresh == 48
    held = list(mp.get_bulk(1, lcore=0))
    # refilled so that cache_size objects remain after the get
    assert mp.cache_count(0) == 32 and mp.ring_count() == 256 - 33
    mp.put_bulk(held, lcore=0)
    assert mp.cache_count(0) == 33
    more = mp.get_bulk(20, lcore=0)  # served from the cache
    assert mp.cache_count(0) == 13 and mp.ring_count() == 256 - 33
    mp.put_bulk(more, lcore=0)  # 33 again
    extra = mp.get_bulk(20, lcore=-1)
    mp.put_bulk(extra, lcore=0)  # 53 > 48: trimmed back to cache_size, 21 to the ring
    assert mp.cache_count(0) == 32 and mp.ring_count() == 256 - 32
    # a get larger than the cache: the cache's objects plus the rest from the ring
    big = mp.get_bulk(40, lcore=0)
    assert mp.cache_count(0) == 0 and mp.ring_count() == 256 - 40
    # a put larger than the threshold goes to the ring directly
    mp.put_bulk(big[:5], lcore=0)
    assert mp.cache_count(0) == 5
    huge = mp.get_bulk(100, lcore=-1)
    mp.put_bulk(np.concatenate([big[5:], huge]), lcore=0)  # 135 objects
    assert mp.cache_count(0) == 5 and mp.ring_count() == 251
    # lcore -1 and lcore >= max_lcores never touch a cache
    x = mp.get_bulk(7, lcore=-1)
    y = mp.get_bulk(7, lcore=mp.max_lcores)
    mp.put_bulk(x, lcore=mp.max_lcores + 5)
    mp.put_bulk(y, lcore=-3)
    assert mp.cache_count(0) == 5 and (mp.cache[1:, 0] == 0).all()
    a = mp.audit()
    assert (a.in_ring, a.in_caches, a.in_use) == (251, 5, 0)
    mp.cache_flush()
    assert mp.cache_count(0) == 0 and mp.ring_count() == 256


def test_get_when_the_ring_is_short(mem):
    mp = pool(mem, n=64, cache_size=32)
    others = mp.get_bulk(40)  # ring: 24 left
    got = mp.get_bulk(20, lcore=0)  # refill of 48 impossible: only what is missing
    assert mp.cache_count(0) == 0 and mp.ring_count() == 4
    with pytest.raises(MempoolEmpty):
        mp.get_bulk(5, lcore=0)
    assert mp.ring_count() == 4 and mp.cache_count(0) == 0
    mp.put_bulk(got[:10], lcore=0)  # cache 10, ring 4
    again = mp.get_bulk(12, lcore=0)  # 10 from the cache + 2 from the ring
    assert mp.cache_count(0) == 0 and mp.ring_count() == 2
    with pytest.raises(MempoolEmpty):
        mp.get_bulk(40, lcore=0)  # larger than the cache, not enough anywhere
    mp.put_bulk(others)
    mp.put_bulk(got[10:])
    mp.put_bulk(again, lcore=1)
    assert mp.audit().in_use == 0


def test_objects_in_other_caches_are_not_available(mem):
    """As in DPDK: an lcore's cache hides its objects from the others."""
    mp = pool(mem, n=48, cache_size=32)
    a = mp.get_bulk(48)
    mp.put_bulk(a, lcore=3)  # 48 <= threshold: all cached on lcore 3
    assert mp.ring_count() == 0 and mp.avail_count() == 48
    with pytest.raises(MempoolEmpty):
        mp.get(lcore=0)
    assert len(mp.get_bulk(48, lcore=3)) == 48


def test_single_get_put(mem):
    mp = pool(mem, n=128, cache_size=16)  # threshold 24
    first = mp.get(lcore=2)
    assert mp.cache_count(2) == 16
    objs = [first] + [mp.get(lcore=2) for _ in range(30)]
    assert len(set(objs)) == 31
    for o in objs:
        mp.put(o, lcore=2)
        assert mp.cache_count(2) <= mp.flush_thresh
    assert mp.cache_count(2) == 16  # trimmed back to cache_size at each overflow
    b = mp.get(lcore=-1)
    mp.put(b, lcore=-1)
    assert mp.audit().in_use == 0


def test_double_free_is_caught_by_audit(mem):
    mp = pool(mem, n=32, cache_size=0)
    o, _other = mp.get(), mp.get()
    mp.put(o)
    mp.put(o)  # the ring still has room for it
    with pytest.raises(MempoolCorrupt, match="more than once"):
        mp.audit()


def test_ring_overflow_is_reported(mem):
    mp = pool(mem, n=16, cache_size=0)
    with pytest.raises(MempoolCorrupt, match="double free"):
        mp.put(3)


def test_put_accepts_any_integer_array(mem):
    mp = pool(mem, n=64, cache_size=16)
    for dt in (np.uint32, np.int64, np.uint64):
        a = mp.get_bulk(10, lcore=1).astype(dt)
        mp.put_bulk(a, lcore=1)
        mp.put_bulk(mp.get_bulk(3).astype(dt))
    assert mp.audit().in_use == 0


# --------------------------------------------------------------------------
# pktmbuf


def test_alloc_resets_metadata(mem):
    mp = pool(mem, n=64, cache_size=16)
    m = mp.alloc(lcore=0)
    r = mp.mbufs[m]
    r["data_off"] = 3
    r["data_len"] = 99
    r["pkt_len"] = 99
    r["ol_flags"] = mb.RTE_MBUF_F_RX_VLAN | mb.RTE_MBUF_F_TX_IPV4
    r["port"] = 4
    r["packet_type"] = 0x211
    r["vlan_tci"] = 7
    r["l2_len"] = 14
    r["tso_segsz"] = 1400
    r["hash"] = 5
    mp.free(m, lcore=0)
    assert mp.alloc(lcore=0) == m  # the cache is LIFO
    r = mp.mbufs[m]
    assert (r["data_off"], r["data_len"], r["pkt_len"], r["nb_segs"], r["refcnt"]) == (128, 0, 0, 1, 1)
    assert (r["ol_flags"], r["port"], r["packet_type"], r["vlan_tci"]) == (0, 0xFFFF, 0, 0)
    assert (r["l2_len"], r["tso_segsz"], r["hash"], r["next"]) == (0, 0, 0, mb.MBUF_NEXT_NONE)
    many = mp.alloc_bulk(20, lcore=0)
    assert (mp.mbufs[many]["refcnt"] == 1).all() and (mp.mbufs[many]["data_off"] == 128).all()
    mp.free(many, lcore=0)
    mp.free(m, lcore=0)
    assert mp.audit().in_use == 0


def test_alloc_bulk_fails_whole(mem):
    mp = pool(mem, n=16, cache_size=0)
    with pytest.raises(MempoolEmpty):
        mp.alloc_bulk(17)
    assert mp.avail_count() == 16


def test_free_whole_chain(mem):
    mp = pool(mem, n=64, cache_size=16)
    payload = bytes(range(256)) * 10  # 2560 bytes
    h = mp.from_bytes(payload, seg_size=1000, lcore=1)
    segs = mp.segments(h)
    assert len(segs) == 3
    assert mp.mbufs[h]["nb_segs"] == 3 and mp.mbufs[h]["pkt_len"] == 2560
    assert [int(mp.mbufs[s]["data_len"]) for s in segs] == [1000, 1000, 560]
    assert mp.to_bytes(h) == payload
    assert mp.audit().in_use == 3
    mp.free(h, lcore=1)
    a = mp.audit()
    assert a.in_use == 0
    assert (mp.mbufs[segs]["next"] == mb.MBUF_NEXT_NONE).all() and (mp.mbufs[segs]["nb_segs"] == 1).all()


def test_free_bulk_of_many_chains_batches(mem):
    mp = pool(mem, n=1024, cache_size=64)
    heads = np.array([mp.from_bytes(b"x" * 500, seg_size=7, lcore=-1) for _ in range(10)], np.uint32)
    assert mp.in_use_count() == 10 * 72  # more segments than one scratch batch
    mp.free(heads, lcore=5)
    assert mp.audit().in_use == 0
    heads = np.array([mp.from_bytes(b"y" * 100, seg_size=10) for _ in range(10)], np.uint32)
    mp.free(heads, lcore=-1)
    assert mp.audit().in_use == 0


def test_refcnt(mem):
    mp = pool(mem, n=32, cache_size=0)
    a = mp.arrays
    m = mp.alloc()
    assert mpl.pktmbuf_refcnt_update(a, m, 2) == 3
    assert mpl.pktmbuf_refcnt_read(a, m) == 3
    mp.free(m)
    mp.free(m)
    assert mp.audit().in_use == 1 and mpl.pktmbuf_refcnt_read(a, m) == 1
    mp.free(m)
    assert mp.audit().in_use == 0


def test_refcnt_on_a_segment_of_a_chain(mem):
    mp = pool(mem, n=32, cache_size=8)
    h = mp.from_bytes(b"a" * 30, seg_size=10)
    mid = mp.segments(h)[1]
    mpl.pktmbuf_refcnt_update(mp.arrays, mid, 1)
    mp.free(h)
    assert mp.audit().out.tolist() == [mid]
    mpl.pktmbuf_free_seg(mp.arrays, -1, mid)
    assert mp.audit().in_use == 0


def test_clone_shares_buffers(mem):
    mp = pool(mem, n=64, cache_size=16)
    payload = bytes(range(200)) * 9
    h = mp.from_bytes(payload, seg_size=700)
    c = mp.clone(h, lcore=0)
    assert mp.to_bytes(c) == payload
    cs, hs = mp.segments(c), mp.segments(h)
    assert len(cs) == len(hs) == 3 and not set(cs) & set(hs)
    assert (mp.mbufs[hs]["refcnt"] == 2).all()
    assert all(mp.mbufs[s]["ol_flags"] & mb.RTE_MBUF_F_INDIRECT for s in cs)
    assert mpl.mbuf_data_iova(mp.arrays, cs[0]) == mpl.mbuf_data_iova(mp.arrays, hs[0])
    mp.data_of(hs[0])[:4] = [9, 9, 9, 9]  # shared buffer: visible in the clone
    assert mp.to_bytes(c)[:4] == b"\x09\x09\x09\x09"
    c2 = mp.clone(c)  # a clone of a clone points at the direct mbufs
    assert (mp.mbufs[hs]["refcnt"] == 3).all()
    mp.free(h, lcore=0)
    assert mp.in_use_count() == 9  # the direct mbufs live on in the clones
    mp.free(c, lcore=0)
    assert mp.in_use_count() == 6
    mp.free(c2, lcore=-1)
    assert mp.audit().in_use == 0
    # detached indirect mbufs got their own buffers back
    for s in cs:
        r = mp.mbufs[s]
        assert r["buf_off"] == s * mp.buf_stride and r["ol_flags"] == 0


def test_clone_fails_cleanly_when_empty(mem):
    mp = pool(mem, n=8, cache_size=0)
    h = mp.from_bytes(b"z" * 50, seg_size=10)  # 5 segments, 3 left
    with pytest.raises(MempoolEmpty):
        mp.clone(h)
    assert mp.in_use_count() == 5 and (mp.mbufs[mp.segments(h)]["refcnt"] == 1).all()
    mp.free(h)
    assert mp.audit().in_use == 0


def test_append_prepend_adj_trim(mem):
    mp = pool(mem, n=16, cache_size=0, data_room_size=512)  # 128 headroom + 384
    a = mp.arrays
    m = mp.alloc()
    assert mpl.pktmbuf_headroom(a, m) == 128 and mpl.pktmbuf_tailroom(a, m) == 384
    off = mpl.pktmbuf_append(a, m, 100)
    assert off == mp.mbufs[m]["buf_off"] + 128
    mp.data[off : off + 100] = 1
    assert mpl.pktmbuf_append(a, m, 285) == -1  # one byte too many
    assert mpl.pktmbuf_append(a, m, -1) == -1
    off2 = mpl.pktmbuf_prepend(a, m, 14)
    assert off2 == off - 14 and mpl.pktmbuf_headroom(a, m) == 114
    mp.data[off2 : off2 + 14] = 2
    assert mpl.pktmbuf_prepend(a, m, 115) == -1
    r = mp.mbufs[m]
    assert (r["data_len"], r["pkt_len"]) == (114, 114)
    assert mp.to_bytes(m) == b"\x02" * 14 + b"\x01" * 100
    assert mpl.pktmbuf_adj(a, m, 14) == off and mp.to_bytes(m) == b"\x01" * 100
    assert mpl.pktmbuf_adj(a, m, 101) == -1
    assert mpl.pktmbuf_trim(a, m, 40) == 0 and mp.to_bytes(m) == b"\x01" * 60
    assert mpl.pktmbuf_trim(a, m, 61) == -1
    # on a chain: append goes to the last segment
    h = mp.from_bytes(b"abcdefghij", seg_size=4)
    last = mp.segments(h)[-1]
    o = mpl.pktmbuf_append(a, h, 3)
    assert o == mpl.mbuf_data_offset(a, last) + 2
    mp.data[o : o + 3] = np.frombuffer(b"XYZ", np.uint8)
    assert mp.to_bytes(h) == b"abcdefghijXYZ" and mpl.pktmbuf_lastseg(a, h) == last
    assert mpl.pktmbuf_trim(a, h, 5) == 0 and mp.to_bytes(h) == b"abcdefghijXYZ"[:8]
    mp.free([m, h])
    assert mp.audit().in_use == 0


def test_chain(mem):
    mp = pool(mem, n=32, cache_size=0)
    a = mp.arrays
    h = mp.from_bytes(b"head-", seg_size=3)
    t = mp.from_bytes(b"tail!", seg_size=2)
    assert mpl.pktmbuf_chain(a, h, t) == 0
    assert mp.to_bytes(h) == b"head-tail!"
    r = mp.mbufs[h]
    assert (r["nb_segs"], r["pkt_len"]) == (5, 10)
    assert (mp.mbufs[t]["nb_segs"], mp.mbufs[t]["pkt_len"]) == (1, 2)
    t2 = mp.alloc()
    mp.mbufs[h]["nb_segs"] = 0xFFFF
    assert mpl.pktmbuf_chain(a, h, t2) == -1
    mp.mbufs[h]["nb_segs"] = 5
    mp.free([h, t2])
    assert mp.audit().in_use == 0


def test_empty_packet_and_zero_data_room(mem):
    mp = pool(mem, n=8, cache_size=0)
    h = mp.from_bytes(b"")
    assert mp.to_bytes(h) == b"" and mp.mbufs[h]["nb_segs"] == 1
    mp.free(h)
    tiny = pool(mem, n=4, cache_size=0, data_room_size=64)  # all headroom
    with pytest.raises(MempoolEmpty):
        tiny.from_bytes(b"x")
    assert tiny.audit().in_use == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(min_size=0, max_size=5000),
    seg_size=st.integers(min_value=10, max_value=2100),
    window=st.tuples(st.integers(0, 5000), st.integers(0, 5000)),
    lcore=st.sampled_from([-1, 0, 7]),
)
def test_bytes_roundtrip_read_write(mem, payload, seg_size, window, lcore):
    mp = mpl.mempool_lookup(mem, "hyp") if _has(mem, "MP_hyp") else mempool_create(mem, "hyp", 1024, cache_size=32)
    a = mp.arrays
    h = mp.from_bytes(payload, seg_size=seg_size, lcore=lcore)
    try:
        assert mp.to_bytes(h) == payload
        nseg = len(mp.segments(h))
        assert nseg == max(1, -(-len(payload) // min(seg_size, 2048)))
        lo, hi = sorted(window)
        lo, hi = min(lo, len(payload)), min(hi, len(payload))
        dst = np.zeros(hi - lo, np.uint8)
        assert mpl.pktmbuf_read(a, h, lo, dst) == hi - lo
        assert dst.tobytes() == payload[lo:hi]
        assert mpl.pktmbuf_read(a, h, lo, np.zeros(len(payload) - lo + 1, np.uint8)) == -1
        patch = (np.arange(hi - lo) % 251).astype(np.uint8)
        assert mpl.pktmbuf_write(a, h, lo, patch) == hi - lo
        expect = payload[:lo] + patch.tobytes() + payload[hi:]
        assert mp.to_bytes(h) == expect
        assert mpl.pktmbuf_write(a, h, len(payload), np.zeros(1, np.uint8)) == -1
    finally:
        mp.free(h, lcore=lcore)
    assert mp.audit().in_use == 0


def _has(mem, zone):
    try:
        mem.memzone_lookup(zone)
        return True
    except KeyError:
        return False


def test_mbuf_data_views(mem):
    mp = pool(mem, n=16, cache_size=0)
    a = mp.arrays
    m = mp.from_bytes(b"hello world")
    d = mpl.mbuf_data(a, m)
    assert d.tobytes() == b"hello world"
    assert d.ctypes.data == mp.data.ctypes.data + int(mp.mbufs[m]["buf_off"]) + 128
    d[0] = ord("J")
    assert mp.to_bytes(m) == b"Jello world"  # a view, not a copy
    buf = mpl.mbuf_buf(a, m)
    assert buf.shape == (2176,) and buf.ctypes.data == d.ctypes.data - 128
    iova = mpl.mbuf_data_iova(a, m)
    assert iova == int(mp.mbufs[m]["buf_iova"]) + 128
    assert mem.iova_to_virt(int(iova)) == d.ctypes.data
    assert (mp.data2d[m, 128:139] == d).all()
    mp.free(m)


# --------------------------------------------------------------------------
# jitted callers (namedtuple of arrays, cache=True)


@njit(cache=True)
def _jit_alloc_fill_free(mp, lcore, rounds, burst):
    """An rx/tx-like loop: alloc a burst, write each packet, sum, free."""
    pkts = np.empty(32, np.uint32)
    total = 0
    for r in range(rounds):
        if mpl.pktmbuf_alloc_bulk(mp, lcore, pkts, burst) != 0:
            return -1
        for i in range(burst):
            m = pkts[i]
            off = mpl.pktmbuf_append(mp, m, 64)
            d = mpl.mbuf_data(mp, m)
            for j in range(d.shape[0]):
                d[j] = (j + r) & 0xFF
            total += mp.data[off + 63] + mp.mbufs[m].pkt_len
        mpl.pktmbuf_free_bulk(mp, lcore, pkts, burst)
    return total


def test_jitted_code_takes_the_arrays_namedtuple(mem):
    mp = pool(mem, n=128, cache_size=32)
    rounds, burst = 50, 32
    expect = sum(((63 + r) & 0xFF) + 64 for r in range(rounds)) * burst
    assert _jit_alloc_fill_free(mp.arrays, 0, rounds, burst) == expect
    assert _jit_alloc_fill_free(mp.arrays, -1, rounds, burst) == expect
    other = mempool_lookup(mem, mp.name)
    assert _jit_alloc_fill_free(other.arrays, 1, rounds, burst) == expect
    assert mp.audit().in_use == 0


# --------------------------------------------------------------------------
# other processes


def _child_uses_pool(conn, mem, name):
    mp = mempool_lookup(mem, name)  # found by name from the child
    ms = mp.alloc_bulk(10, lcore=1)
    for i, m in enumerate(ms):
        mpl.pktmbuf_append(mp.arrays, m, 32)
        mp.data_of(m)[:] = i + 1
    mp.free(ms[5:], lcore=1)
    mp.cache_flush(1)
    return ms[:5].tolist()


def test_lookup_and_use_from_forked_child(mem, fork):
    mp = pool(mem, n=64, cache_size=16)
    _jit_warm = mp.alloc_bulk(1, lcore=1)  # compile before forking
    mp.free(_jit_warm, lcore=1)
    mp.cache_flush()
    kept = fork(_child_uses_pool, mem, mp.name).join(timeout=60)
    a = mp.audit()
    assert sorted(a.out.tolist()) == sorted(kept) and a.in_caches == 0
    for i, m in enumerate(kept):
        assert mp.to_bytes(m) == bytes([i + 1]) * 32
    mp.free(np.array(kept))
    assert mp.audit().in_use == 0


def _child_creates_pool(conn, mem, name):
    mp = mempool_create(mem, name, 32, cache_size=8)
    m = mp.from_bytes(b"from the child", lcore=0)
    mp.cache_flush(0)
    return m


def test_pool_created_after_fork_is_visible(mem, fork):
    name = f"late{next(_names)}"
    m = fork(_child_creates_pool, mem, name).join(timeout=60)
    mp = mempool_lookup(mem, name)
    assert mp.to_bytes(m) == b"from the child"
    assert mp.audit().out.tolist() == [m]
    mp.free(m)
    assert mp.audit().in_use == 0
