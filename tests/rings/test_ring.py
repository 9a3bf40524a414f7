"""The rte_ring-like ring: semantics against a model, layout, and multi-process stress."""

from __future__ import annotations

import collections
import mmap
import os
import signal
import time
import traceback

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from dataplane.rings.atomics import cpu_relax, fetch_add, load_acquire
from dataplane.rings.ring import (
    HDR_BYTES,
    HDR_CAPACITY,
    HDR_CONS_HEAD,
    HDR_CONS_TAIL,
    HDR_FLAGS,
    HDR_MASK,
    HDR_PROD_HEAD,
    HDR_PROD_TAIL,
    HDR_SIZE,
    RING_F_EXACT_SZ,
    RING_F_SC_DEQ,
    RING_F_SP_ENQ,
    Ring,
    ring_count,
    ring_create,
    ring_dequeue_bulk,
    ring_dequeue_burst,
    ring_enqueue_bulk,
    ring_enqueue_burst,
    ring_free_count,
    ring_lookup,
    ring_memsize,
    sched_yield,
)

SPSC = RING_F_SP_ENQ | RING_F_SC_DEQ
U64 = (1 << 64) - 1


# --------------------------------------------------------------------------
# helpers


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    raw = np.zeros(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + nbytes]


def _ring(count, flags=0, start=None) -> Ring:
    r = Ring(_aligned(ring_memsize(count, flags)), count, flags)
    if start is not None:
        _set_indices(r, start)
    return r


def _set_indices(r: Ring, start: int) -> None:
    for i in (HDR_PROD_HEAD, HDR_PROD_TAIL, HDR_CONS_HEAD, HDR_CONS_TAIL):
        r.hdr[i] = start


def _shared(nbytes: int):
    """Anonymous MAP_SHARED memory (survives fork, shared with children)."""
    m = mmap.mmap(-1, max(nbytes, mmap.PAGESIZE))
    return m, np.frombuffer(m, np.uint8)


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return []


def _spawn(fn, cpu=None) -> int:
    """fork a child running fn(); the child always leaves through os._exit."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _run_children(fns_cpus, timeout_s: float) -> list[int]:
    """Run each (fn, cpu) in its own child, wait for all; kill everything on timeout."""
    pids = []
    codes: dict[int, int] = {}
    try:
        for fn, cpu in fns_cpus:
            pids.append(_spawn(fn, cpu))
        deadline = time.monotonic() + timeout_s
        while len(codes) < len(pids):
            for pid in pids:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
    finally:
        left = [p for p in pids if p not in codes]
        _kill_all(left)
    if len(codes) < len(pids):
        pytest.fail(f"ring stress: {len(pids) - len(codes)} children still running after {timeout_s}s (killed)")
    return [codes[p] for p in pids]


class _Model:
    """A plain Python bounded FIFO: what the ring must behave like."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.q = collections.deque()

    def free(self):
        return self.capacity - len(self.q)

    def enqueue(self, vals, bulk):
        k = len(vals)
        if bulk and k > self.free():
            return 0
        k = min(k, self.free())
        self.q.extend(vals[:k])
        return k

    def dequeue(self, n, bulk):
        if bulk and n > len(self.q):
            return []
        return [self.q.popleft() for _ in range(min(n, len(self.q)))]


# --------------------------------------------------------------------------
# geometry, layout, validation


def test_memsize_and_geometry():
    assert ring_memsize(2) == HDR_BYTES + 16
    assert ring_memsize(1024) == HDR_BYTES + 1024 * 8
    assert ring_memsize(1024) % 64 == 0
    assert ring_memsize(1000, RING_F_EXACT_SZ) == HDR_BYTES + 1024 * 8
    assert ring_memsize(1024, RING_F_EXACT_SZ) == HDR_BYTES + 2048 * 8
    for bad in (0, 1, 3, 1000, -4):
        with pytest.raises(ValueError):
            ring_memsize(bad)
    with pytest.raises(ValueError):
        ring_memsize(0, RING_F_EXACT_SZ)
    with pytest.raises(ValueError):
        ring_memsize(16, 0x100)

    r = _ring(16)
    assert (r.size, r.capacity, r.flags) == (16, 15, 0)
    r = _ring(10, RING_F_EXACT_SZ | SPSC)
    assert (r.size, r.capacity, r.flags) == (16, 10, RING_F_EXACT_SZ | SPSC)
    r = _ring(16, RING_F_EXACT_SZ)
    assert (r.size, r.capacity) == (32, 16)


def test_header_layout():
    r = _ring(64, SPSC)
    h = r.hdr
    assert h.dtype == np.uint32 and r.slots.dtype == np.uint64
    assert (int(h[HDR_SIZE]), int(h[HDR_MASK]), int(h[HDR_CAPACITY]), int(h[HDR_FLAGS])) == (64, 63, 63, SPSC)
    assert (HDR_PROD_HEAD, HDR_PROD_TAIL, HDR_CONS_HEAD, HDR_CONS_TAIL) == (0, 16, 32, 48)
    assert (HDR_SIZE, HDR_MASK, HDR_CAPACITY, HDR_FLAGS) == (64, 65, 66, 67)
    assert r.slots.ctypes.data - r.hdr.ctypes.data == HDR_BYTES
    assert r.enqueue_bulk(np.arange(5, dtype=np.uint64) + 100) == 5
    assert (int(h[0]), int(h[16]), int(h[32]), int(h[48])) == (5, 5, 0, 0)
    out = np.zeros(2, np.uint64)
    assert r.dequeue_bulk(out) == 2
    assert (int(h[0]), int(h[16]), int(h[32]), int(h[48])) == (5, 5, 2, 2)
    assert list(r.slots[:5]) == [100, 101, 102, 103, 104]


def test_memory_validation():
    n = ring_memsize(16)
    with pytest.raises(ValueError):
        Ring(_aligned(n + 64)[8 : 8 + n], 16)  # misaligned
    with pytest.raises(ValueError):
        Ring(_aligned(n - 8), 16)  # too small
    ro = _aligned(n)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        Ring(ro, 16)
    with pytest.raises(TypeError):
        Ring(_aligned(n).view(np.uint32), 16)
    with pytest.raises(ValueError):
        Ring(_aligned(n), 12)


def test_attach_existing_ring():
    mem = _aligned(ring_memsize(32))
    with pytest.raises(ValueError):
        Ring(mem, 32, init=False)  # nothing there yet
    a = Ring(mem, 32, SPSC)
    a.enqueue_bulk([1, 2, 3])
    b = Ring(mem, 32, init=False)
    assert b.flags == SPSC and b.capacity == 31 and b.count() == 3
    assert b.dequeue() == 1
    assert a.count() == 2
    with pytest.raises(ValueError):
        Ring(mem, 64, init=False)
    with pytest.raises(ValueError):
        Ring(mem, 32, RING_F_SP_ENQ, init=False)


class _FakeMemzone:
    def __init__(self, size):
        self._buf = _aligned(size)

    def view(self, dtype=np.uint8):
        return self._buf.view(dtype)


class _FakeMemory:
    """Stand-in for dataplane.memory's Memory: memzone_reserve / memzone_lookup."""

    def __init__(self):
        self.zones = {}
        self.reserved = []

    def memzone_reserve(self, name, size, align=64):
        assert name not in self.zones and align == 64
        self.reserved.append((name, size))
        self.zones[name] = _FakeMemzone(size)
        return self.zones[name]

    def memzone_lookup(self, name):
        return self.zones.get(name)


def test_create_and_lookup_by_name():
    mem = _FakeMemory()
    r = ring_create(mem, "rx0", 1000, RING_F_EXACT_SZ | RING_F_SC_DEQ)
    assert mem.reserved == [("RG_rx0", ring_memsize(1000, RING_F_EXACT_SZ))]
    assert r.capacity == 1000 and r.name == "rx0"
    assert r.enqueue_burst(np.arange(1200, dtype=np.uint64)) == 1000
    assert r.full()
    s = ring_lookup(mem, "rx0")
    assert s.flags == RING_F_EXACT_SZ | RING_F_SC_DEQ and s.capacity == 1000 and s.count() == 1000
    out = np.empty(1000, np.uint64)
    assert s.dequeue_bulk(out) == 1000
    assert np.array_equal(out, np.arange(1000, dtype=np.uint64))
    assert r.empty()
    ring_create(mem, "tx", 8)
    assert ring_lookup(mem, "tx").capacity == 7
    with pytest.raises(KeyError):
        ring_lookup(mem, "nope")


def test_python_api_basics():
    r = _ring(8)
    assert r.empty() and not r.full() and r.count() == 0 and r.free_count() == 7
    assert r.dequeue() is None
    assert r.enqueue(U64) and r.enqueue(0)
    assert r.enqueue_bulk([1, 2, 3, 4, 5, 6]) == 0  # all or nothing
    assert r.enqueue_burst([1, 2, 3, 4, 5, 6]) == 5
    assert r.full() and r.free_count() == 0 and len(r) == 7
    assert not r.enqueue(9)
    assert r.dequeue() == U64 and r.dequeue() == 0
    out = np.zeros(6, np.uint64)
    assert r.dequeue_bulk(out) == 0  # only 5 there
    assert r.dequeue_burst(out) == 5 and list(out[:5]) == [1, 2, 3, 4, 5]
    assert r.dequeue_bulk(np.zeros(0, np.uint64)) == 0
    assert r.enqueue_bulk([]) == 0
    assert r.enqueue_bulk(np.arange(8, dtype=np.uint64)) == 0  # more than capacity
    assert r.enqueue_burst(np.arange(100, dtype=np.uint64)) == 7
    r.reset()
    assert r.empty() and r.free_count() == 7
    with pytest.raises(TypeError):
        r.dequeue_bulk(np.zeros(4, np.int64))
    with pytest.raises(TypeError):
        r.enqueue_bulk([1.5])
    with pytest.raises(ValueError):
        r.enqueue_bulk([1, -1])
    assert r.enqueue_bulk(np.array([3, 4], np.int32)) == 2 and r.dequeue() == 3


@njit(cache=False)
def _kernel_roundtrip(hdr, slots, objs, out, single):
    a = ring_enqueue_bulk(hdr, slots, objs, 3, single)  # n < len(objs)
    b = ring_enqueue_burst(hdr, slots, objs[3:], objs.shape[0] - 3, single)
    c = ring_count(hdr)
    d = ring_free_count(hdr)
    e = ring_dequeue_bulk(hdr, slots, out, 2, single)
    f = ring_dequeue_burst(hdr, slots, out[2:], out.shape[0] - 2, single)
    return a, b, c, d, e, f


@pytest.mark.parametrize("single", [True, False])
def test_kernels_from_jitted_code(single):
    r = _ring(8, start=0xFFFFFFFE)
    objs = np.arange(10, dtype=np.uint64) + (1 << 63)
    out = np.zeros(10, np.uint64)
    assert _kernel_roundtrip(r.hdr, r.slots, objs, out, single) == (3, 4, 7, 0, 2, 5)
    assert np.array_equal(out[:7], objs[:7])


def test_index_wraparound_near_2_32():
    r = _ring(16, start=0xFFFFFF00)
    expect = collections.deque()
    nxt = 0
    out = np.empty(16, np.uint64)
    rng = np.random.default_rng(1)
    for _ in range(200):  # ~1500 elements through: heads and tails cross 2**32
        k = int(rng.integers(1, 16))
        vals = np.arange(nxt, nxt + k, dtype=np.uint64)
        got = r.enqueue_burst(vals)
        expect.extend(range(nxt, nxt + got))
        nxt += got
        assert r.count() == len(expect)
        k = int(rng.integers(1, 16))
        got = r.dequeue_burst(out[:k])
        assert list(out[:got]) == [expect.popleft() for _ in range(got)]
    assert int(r.hdr[HDR_PROD_TAIL]) < 0xFFFFFF00  # really wrapped
    assert nxt > 256


# --------------------------------------------------------------------------
# single process: random operation sequences against the model

_geometries = st.sampled_from(
    [(2, 0), (4, 0), (8, 0), (16, 0), (64, 0), (1, RING_F_EXACT_SZ), (3, RING_F_EXACT_SZ), (10, RING_F_EXACT_SZ)]
)
_ops = st.lists(
    st.tuples(st.sampled_from(["enq_bulk", "enq_burst", "deq_bulk", "deq_burst", "enq1", "deq1"]), st.integers(0, 70)),
    max_size=60,
)
_starts = st.one_of(
    st.just(0), st.just(0xFFFFFF00), st.integers(0xFFFFFFC0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(geom=_geometries, single=st.booleans(), start=_starts, ops=_ops)
def test_ring_matches_model(geom, single, start, ops):
    count, flags = geom
    flags |= SPSC if single else 0
    r = _ring(count, flags, start=start)
    model = _Model(r.capacity)
    nxt = 0

    def vals(k):
        nonlocal nxt
        # distinct values spread over the whole u64 range
        v = [((nxt + i) * 0x9E3779B97F4A7C15) & U64 for i in range(k)]
        nxt += k
        return v

    for op, k in ops:
        if op in ("enq_bulk", "enq_burst"):
            v = vals(k)
            bulk = op == "enq_bulk"
            got = (r.enqueue_bulk if bulk else r.enqueue_burst)(np.array(v, dtype=np.uint64))
            assert got == model.enqueue(v, bulk)
            if bulk:
                assert got in (0, k)
        elif op == "enq1":
            v = vals(1)
            assert r.enqueue(v[0]) == (model.enqueue(v, True) == 1)
        elif op in ("deq_bulk", "deq_burst"):
            bulk = op == "deq_bulk"
            out = np.full(k, 0xDEAD, np.uint64)
            got = (r.dequeue_bulk if bulk else r.dequeue_burst)(out)
            want = model.dequeue(k, bulk)
            assert got == len(want)
            assert [int(x) for x in out[:got]] == want
            assert all(x == 0xDEAD for x in out[got:])  # untouched beyond n
        else:
            want = model.dequeue(1, True)
            assert r.dequeue() == (want[0] if want else None)
        assert r.count() == len(model.q)
        assert r.free_count() == model.free()
        assert r.empty() == (len(model.q) == 0)
        assert r.full() == (model.free() == 0)
    # drain: FIFO order of everything still inside
    out = np.empty(r.capacity, np.uint64)
    got = r.dequeue_burst(out)
    assert [int(x) for x in out[:got]] == list(model.q)


# --------------------------------------------------------------------------
# multi-process stress (fork; workers compiled before forking)

YIELD_EVERY = 64  # a waiting worker yields its CPU after this many failed tries


@njit(cache=False)
def _mp_producer(hdr, slots, pid, n, seed, max_burst):
    np.random.seed(seed)
    buf = np.empty(max_burst, np.uint64)
    base = np.uint64(pid) << np.uint64(48)
    seq = 0
    fails = 0
    while seq < n:
        k = np.random.randint(1, max_burst + 1)
        if k > n - seq:
            k = n - seq
        for i in range(k):
            buf[i] = base | np.uint64(seq + i)
        if np.random.randint(0, 2) == 0:
            got = ring_enqueue_bulk(hdr, slots, buf, k, False)
        else:
            got = ring_enqueue_burst(hdr, slots, buf, k, False)
        if got:
            seq += got
            fails = 0
        else:
            cpu_relax()
            fails += 1
            if fails >= YIELD_EVERY:
                sched_yield()
                fails = 0
    return seq


@njit(cache=False)
def _mp_consumer(hdr, slots, rec, done, total, seed, max_burst):
    np.random.seed(seed)
    buf = np.empty(max_burst, np.uint64)
    got_total = 0
    fails = 0
    while True:
        k = np.random.randint(1, max_burst + 1)
        if np.random.randint(0, 2) == 0:
            got = ring_dequeue_bulk(hdr, slots, buf, k, False)
        else:
            got = ring_dequeue_burst(hdr, slots, buf, k, False)
        if got:
            for i in range(got):
                rec[got_total + i] = buf[i]
            got_total += got
            fetch_add(done, 0, got)
            fails = 0
        else:
            if load_acquire(done, 0) >= total:
                break
            cpu_relax()
            fails += 1
            if fails >= YIELD_EVERY:
                sched_yield()
                fails = 0
    return got_total


@pytest.mark.parametrize(
    "count,per_producer",
    [(1024, 2_000_000), (8, 200_000)],  # a roomy ring, and a tiny one that is always full or empty
)
def test_mpmc_stress_across_processes(count, per_producer):
    nprod, ncons, max_burst = 2, 2, 32
    total = nprod * per_producer
    ring_bytes = ring_memsize(count)
    rec_bytes = ncons * total * 8
    m, mem = _shared(ring_bytes + rec_bytes + 4096)
    ring = Ring(mem[:ring_bytes], count)  # MP/MC
    _set_indices(ring, 0xFFFFF000)  # cross 2**32 during the run
    rec = mem[ring_bytes : ring_bytes + rec_bytes].view(np.uint64).reshape(ncons, total)
    ctl = mem[ring_bytes + rec_bytes : ring_bytes + rec_bytes + 64].view(np.uint64)  # [done, got0, got1]
    rec[:] = 0

    # compile before forking
    scratch = _ring(8)
    _mp_producer(scratch.hdr, scratch.slots, 0, 0, 0, max_burst)
    _mp_consumer(scratch.hdr, scratch.slots, np.zeros(1, np.uint64), np.zeros(1, np.uint64), 0, 0, max_burst)

    cpus = _cpus()

    def cpu(i):
        return cpus[i % 2] if len(cpus) >= 2 else None

    def producer(p):
        return lambda: _mp_producer(ring.hdr, ring.slots, p + 1, per_producer, 100 + p, max_burst)

    def consumer(c):
        def run():
            ctl[1 + c] = _mp_consumer(ring.hdr, ring.slots, rec[c], ctl[0:1], total, 200 + c, max_burst)

        return run

    t0 = time.monotonic()
    codes = _run_children(
        [(producer(p), cpu(p)) for p in range(nprod)] + [(consumer(c), cpu(c + 1)) for c in range(ncons)],
        timeout_s=60,
    )
    elapsed = time.monotonic() - t0
    assert codes == [0] * (nprod + ncons)

    got = [rec[c, : int(ctl[1 + c])] for c in range(ncons)]
    assert sum(len(g) for g in got) == total, "elements lost or duplicated"
    assert int(ctl[0]) == total
    everything = np.concatenate(got)
    seq_mask = np.uint64((1 << 48) - 1)
    for p in range(nprod):
        pid = np.uint64(p + 1)
        mine = everything[(everything >> np.uint64(48)) == pid] & seq_mask
        # nothing lost, nothing duplicated: exactly 0..per_producer-1
        assert np.array_equal(np.sort(mine), np.arange(per_producer, dtype=np.uint64)), f"producer {p}"
        for c in range(ncons):
            g = got[c]
            seen = g[(g >> np.uint64(48)) == pid] & seq_mask
            # each consumer sees each producer's values in increasing order
            assert np.all(np.diff(seen.astype(np.int64)) > 0), f"producer {p} out of order at consumer {c}"
    assert np.all((everything >> np.uint64(48)) >= 1) and np.all((everything >> np.uint64(48)) <= nprod)
    assert ring.empty()
    print(f"mpmc count={count}: {total} elements in {elapsed:.2f}s")


@njit(cache=False)
def _sp_producer(hdr, slots, n, seed, max_burst):
    np.random.seed(seed)
    buf = np.empty(max_burst, np.uint64)
    seq = 0
    fails = 0
    while seq < n:
        k = np.random.randint(1, max_burst + 1)
        if k > n - seq:
            k = n - seq
        for i in range(k):
            buf[i] = np.uint64(seq + i) * np.uint64(0x9E3779B97F4A7C15)
        if np.random.randint(0, 2) == 0:
            got = ring_enqueue_bulk(hdr, slots, buf, k, True)
        else:
            got = ring_enqueue_burst(hdr, slots, buf, k, True)
        if got:
            seq += got
            fails = 0
        else:
            cpu_relax()
            fails += 1
            if fails >= YIELD_EVERY:
                sched_yield()
                fails = 0
    return seq


@njit(cache=False)
def _sc_consumer(hdr, slots, n, seed, max_burst, res):
    """Checks the sequence itself: res = [received, errors, first bad index]."""
    np.random.seed(seed)
    buf = np.empty(max_burst, np.uint64)
    seq = 0
    errors = 0
    first_bad = -1
    fails = 0
    while seq < n:
        k = np.random.randint(1, max_burst + 1)
        if np.random.randint(0, 2) == 0:
            got = ring_dequeue_bulk(hdr, slots, buf, k, True)
        else:
            got = ring_dequeue_burst(hdr, slots, buf, k, True)
        if got:
            for i in range(got):
                if buf[i] != np.uint64(seq + i) * np.uint64(0x9E3779B97F4A7C15):
                    errors += 1
                    if first_bad < 0:
                        first_bad = seq + i
            seq += got
            fails = 0
        else:
            cpu_relax()
            fails += 1
            if fails >= YIELD_EVERY:
                sched_yield()
                fails = 0
    res[0] = seq
    res[1] = errors
    res[2] = first_bad


@pytest.mark.parametrize("count,flags", [(64, SPSC), (1000, SPSC | RING_F_EXACT_SZ)])
def test_spsc_stress_across_processes(count, flags):
    n, max_burst = 4_000_000, 48
    ring_bytes = ring_memsize(count, flags)
    m, mem = _shared(ring_bytes + 4096)
    ring = Ring(mem[:ring_bytes], count, flags)
    _set_indices(ring, 0xFFFFF000)
    res = mem[ring_bytes : ring_bytes + 64].view(np.int64)
    res[:3] = -7

    scratch = _ring(8)
    _sp_producer(scratch.hdr, scratch.slots, 0, 0, max_burst)
    _sc_consumer(scratch.hdr, scratch.slots, 0, 0, max_burst, np.zeros(3, np.int64))

    cpus = _cpus()
    c0, c1 = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    codes = _run_children(
        [
            (lambda: _sp_producer(ring.hdr, ring.slots, n, 7, max_burst), c0),
            (lambda: _sc_consumer(ring.hdr, ring.slots, n, 8, max_burst, res), c1),
        ],
        timeout_s=60,
    )
    assert codes == [0, 0]
    assert int(res[0]) == n
    assert int(res[1]) == 0, f"{int(res[1])} wrong values, first at seq {int(res[2])}"
    assert ring.empty()
    assert int(ring.hdr[HDR_PROD_TAIL]) == (0xFFFFF000 + n) & 0xFFFFFFFF
