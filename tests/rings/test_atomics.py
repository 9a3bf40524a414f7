"""Atomics: visibility across processes, CAS and fetch-add semantics."""

import mmap
import os
import signal

import numpy as np
import pytest
from numba import njit

from dataplane.rings.atomics import (
    cas,
    cpu_relax,
    fetch_add,
    load_acquire,
    py_cas,
    py_fetch_add,
    py_load_acquire,
    py_store_release,
    store_release,
)


@njit(cache=True)
def _wait_change(flags, old):
    n = 0
    while load_acquire(flags, 0) == old:
        cpu_relax()
        n += 1
    return n


@njit(cache=True)
def _ping_pong(flags, me, rounds):
    # Two processes alternate: each waits for its turn in flags[0], then hands it over.
    for r in range(rounds):
        while load_acquire(flags, 0) != me:
            cpu_relax()
        store_release(flags, 1, load_acquire(flags, 1) + 1)
        store_release(flags, 0, 1 - me)


@njit(cache=True)
def _add_many(ctr, n):
    for _ in range(n):
        fetch_add(ctr, 0, 1)


@njit(cache=True)
def _cas_many(ctr, n):
    done = 0
    while done < n:
        old = load_acquire(ctr, 0)
        if cas(ctr, 0, old, old + 1):
            done += 1


def _shared(n, dtype):
    m = mmap.mmap(-1, max(4096, n * np.dtype(dtype).itemsize))
    return m, np.frombuffer(m, dtype=dtype, count=n)


def _fork(fn, *args):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            fn(*args)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _join(pid, timeout_s=30):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("child did not finish: a load was hoisted out of a spin loop?")


def test_acquire_load_sees_peer_store_in_spin_loop():
    m, flags = _shared(8, np.uint64)
    _wait_change(np.ones(1, np.uint64), 0)  # compile before fork
    py_store_release(flags, 0, 0)
    # The child spins until the parent stores; a hoisted load would never return.
    pid = _fork(_wait_change, flags, 0)
    import time

    time.sleep(0.2)
    py_store_release(flags, 0, 1)
    assert _join(pid) == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_ping_pong_two_processes(dtype):
    m, flags = _shared(2, dtype)
    rounds = 2000  # each hand-over may wait for a time slice when the two processes share a cpu
    _ping_pong(np.array([0, 0], dtype), 0, 0)
    pid = _fork(_ping_pong, flags, 1, rounds)
    _ping_pong(flags, 0, rounds)
    assert _join(pid) == 0
    assert int(flags[1]) == (2 * rounds) % (np.iinfo(dtype).max + 1)


def test_fetch_add_across_processes_loses_nothing():
    m, ctr = _shared(1, np.uint64)
    _add_many(np.zeros(1, np.uint64), 1)
    pid = _fork(_add_many, ctr, 500_000)
    _add_many(ctr, 500_000)
    assert _join(pid) == 0
    assert int(ctr[0]) == 1_000_000


def test_cas_across_processes_loses_nothing():
    m, ctr = _shared(1, np.uint32)
    _cas_many(np.zeros(1, np.uint32), 1)
    pid = _fork(_cas_many, ctr, 200_000)
    _cas_many(ctr, 200_000)
    assert _join(pid) == 0
    assert int(ctr[0]) == 400_000


def test_cas_and_fetch_add_semantics():
    a = np.array([5, 0, 0xFFFF], dtype=np.uint16)
    assert py_cas(a, 0, 5, 7) and a[0] == 7
    assert not py_cas(a, 0, 5, 9) and a[0] == 7
    assert py_fetch_add(a, 1, 3) == 0 and a[1] == 3
    assert py_fetch_add(a, 2, 1) == 0xFFFF and a[2] == 0  # wraps like the ring indices
    py_store_release(a, 1, 42)
    assert py_load_acquire(a, 1) == 42
