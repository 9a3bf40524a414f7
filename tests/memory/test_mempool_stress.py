"""Acceptance stress: two processes pinned to cpu 0 and cpu 1 get and put
mbufs concurrently through their lcore caches and the shared MP/MC ring;
afterwards every mbuf is back exactly once.

Each process runs a numba loop: get a burst of 1..32 objects (xorshift
sizes, 1 in 16 bursts bypassing the cache like a non-EAL thread), claim each
object in a shared ``owner`` array with a CAS (a double allocation across the
processes fails the CAS), hold up to HOLD objects, and put random held ones
back.  The pool is small enough that the caches and the held objects drain
the ring, so the ENOENT path runs too.
"""

from __future__ import annotations

import os
import time

import numpy as np
from numba import njit

from dataplane.memory import Memory
from dataplane.memory import mempool as mpl
from dataplane.memory.units import MiB
from dataplane.rings.atomics import cas

N_MBUFS = 2048
CACHE_SIZE = 256  # flush threshold 384: the caches and 2 x HOLD exceed N_MBUFS
HOLD = 900
PER_PROCESS = 10_000_000  # objects each process gets (and puts): 20 M + 20 M in all
TIMEOUT = 60.0

# result words per process
R_GOT, R_PUT, R_FAILS, R_ERRS, R_BYPASS, R_T0, R_T1 = range(7)


@njit(cache=True)
def _stress(mp, lcore, owner, target, seed, res):
    held = np.empty(HOLD + 64, np.uint32)
    tmp = np.empty(64, np.uint32)
    nheld = 0
    me = np.uint32(lcore + 1)
    x = np.uint64(seed) | np.uint64(1)
    got = 0
    put = 0
    fails = 0
    errs = 0
    bypass = 0
    while got < target:
        x ^= x << np.uint64(13)
        x ^= x >> np.uint64(7)
        x ^= x << np.uint64(17)
        k = np.int64(x & np.uint64(31)) + 1
        lc = lcore
        if ((x >> np.uint64(8)) & np.uint64(15)) == 0:
            lc = -1
            bypass += 1
        do_get = ((x >> np.uint64(16)) & np.uint64(3)) != 0
        if nheld + k > HOLD:
            do_get = False
        if do_get:
            if mpl.mempool_get_bulk(mp, lc, tmp, k) == 0:
                for i in range(k):
                    o = tmp[i]
                    if not cas(owner, o, 0, me):
                        errs += 1
                    held[nheld] = o
                    nheld += 1
                got += k
                continue
            fails += 1
        kk = min(k, nheld)
        if kk == 0:
            continue
        # put back kk held objects picked at pseudo-random positions
        y = x
        for i in range(kk):
            y ^= y << np.uint64(13)
            y ^= y >> np.uint64(7)
            y ^= y << np.uint64(17)
            j = np.int64(y % np.uint64(nheld))
            o = held[j]
            nheld -= 1
            held[j] = held[nheld]
            if not cas(owner, o, me, 0):
                errs += 1
            tmp[i] = o
        if mpl.mempool_put_bulk(mp, lc, tmp, kk) != 0:
            errs += 1
        put += kk
    while nheld > 0:
        kk = min(32, nheld)
        for i in range(kk):
            nheld -= 1
            o = held[nheld]
            if not cas(owner, o, me, 0):
                errs += 1
            tmp[i] = o
        if mpl.mempool_put_bulk(mp, lcore, tmp, kk) != 0:
            errs += 1
        put += kk
    res[R_GOT] = got
    res[R_PUT] = put
    res[R_FAILS] = fails
    res[R_ERRS] = errs
    res[R_BYPASS] = bypass


def _worker(conn, mem, pool_name, lcore, cpu, use_lookup, flush_at_end):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if use_lookup:
        mp = mpl.mempool_lookup(mem, pool_name)
    else:
        mp = _inherited[pool_name]
    owner = mem.memzone_lookup(f"{pool_name}_own").view(np.uint32)
    res = mem.memzone_lookup(f"{pool_name}_res").view(np.int64).reshape(2, 8)[lcore]
    conn.send("ready")
    if conn.recv() != "go":
        return None
    res[R_T0] = time.monotonic_ns()
    _stress(mp.arrays, lcore, owner, PER_PROCESS, 0x1E3779B97F4A7C15 ^ (lcore * 7919 + 1), res)
    res[R_T1] = time.monotonic_ns()
    if flush_at_end:
        mp.cache_flush(lcore)
    return os.sched_getaffinity(0)


_inherited: dict = {}


def test_two_pinned_processes_get_and_put_concurrently(fork):
    cpus = sorted(os.sched_getaffinity(0))
    pin = [cpus[0], cpus[1]] if len(cpus) >= 2 else [None, None]
    with Memory(32 * MiB, huge=False, file_prefix=f"mpstress{os.getpid()}") as mem:
        name = "stress"
        mp = mpl.mempool_create(mem, name, N_MBUFS, cache_size=CACHE_SIZE)
        owner = mem.memzone_reserve(f"{name}_own", N_MBUFS * 4).view(np.uint32)
        res = mem.memzone_reserve(f"{name}_res", 2 * 8 * 8).view(np.int64).reshape(2, 8)
        _inherited[name] = mp
        try:
            # compile (or load) everything before forking: a short run on lcore 5
            warm = np.zeros(8, np.int64)
            _stress(mp.arrays, 5, owner, 10_000, 12345, warm)
            assert warm[R_ERRS] == 0
            mp.cache_flush(5)
            assert mp.audit().in_use == 0 and not owner.any()

            start = time.monotonic()
            # lcore 0 is inherited and flushes its cache at the end; lcore 1
            # finds the pool by name and leaves its cache full (audit counts it)
            kids = [
                fork(_worker, mem, name, 0, pin[0], False, True),
                fork(_worker, mem, name, 1, pin[1], True, False),
            ]
            for k in kids:
                assert k.recv(timeout=60) == "ready"
            for k in kids:
                k.send("go")
            affinities = [k.join(timeout=max(1.0, TIMEOUT - (time.monotonic() - start))) for k in kids]
            elapsed = time.monotonic() - start
        finally:
            _inherited.clear()

        if pin[0] is not None:
            assert affinities == [{pin[0]}, {pin[1]}]
        got = res[:, R_GOT]
        assert (got >= PER_PROCESS).all() and got.sum() >= 10_000_000
        assert (res[:, R_PUT] == got).all()
        assert (res[:, R_ERRS] == 0).all(), f"double allocations or put errors: {res[:, R_ERRS]}"
        # the two runs really overlapped
        t0, t1 = res[:, R_T0], res[:, R_T1]
        assert max(t0) < min(t1)

        a = mp.audit()  # raises on an index found twice
        assert a.in_use == 0 and a.in_ring + a.in_caches == N_MBUFS
        assert mp.cache_count(0) == 0 and a.in_caches == mp.cache_count(1)
        assert mp.avail_count() == N_MBUFS
        assert not owner.any()
        print(
            f"\nstress: {int(got.sum())} gets + {int(res[:, R_PUT].sum())} puts in {elapsed:.1f}s; "
            f"ENOENT {res[:, R_FAILS].tolist()}, bypass bursts {res[:, R_BYPASS].tolist()}, "
            f"cache of lcore 1 left with {a.in_caches}"
        )
        del mp, owner, res
