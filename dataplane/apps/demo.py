"""The launcher demo: every lcore reports its pinned cpus and adds to a shared counter.

The counter lives in a memzone; each worker adds to it with an atomic
fetch-add inside a numba loop, so the total proves the workers share memory.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit

from dataplane.lcores import launch
from dataplane.rings.atomics import fetch_add, load_acquire


@njit(cache=True, nogil=True)  # nogil: the main lcore's control threads must keep running
def _count(counter, n, stop):
    """Add 1 to the shared counter n times; returns how many, fewer if stopped."""
    for i in range(n):
        if (i & 1023) == 0 and load_acquire(stop, 0) != 0:
            return i
        fetch_add(counter, 0, 1)
    return n


def _worker(args):
    zone_name, n = args
    from dataplane.lcores.eal import current_memory

    counter = current_memory().memzone_lookup(zone_name).view(np.uint64)
    done = _count(counter, n, launch.stop_flag())
    return launch.lcore_id(), os.getpid(), sorted(os.sched_getaffinity(0)), done


def run_demo(eal, count: int) -> int:
    zone = eal.memory.memzone_reserve("demo_counter", 64)
    counter = zone.view(np.uint64)
    _count(np.zeros(1, np.uint64), 1, np.zeros(1, np.uint32))  # compile once, before the workers need it
    la = eal.launcher
    mine = la.mp_remote_launch(_worker, ("demo_counter", count), launch.CALL_MAIN)
    results = la.mp_wait_lcore()
    results[la.main_lcore] = mine
    if la.stop_flag[0]:
        raise KeyboardInterrupt("stopped")
    for lcore in sorted(results):
        lid, pid, cpus, done = results[lcore]
        role = "main" if lcore == la.main_lcore else "worker"
        print(f"lcore {lid} ({role}, pid {pid}) pinned to cpus {','.join(map(str, cpus))}: added {done}")
    total, expected = int(counter[0]), count * len(results)
    print(f"shared counter = {total} (expected {expected}) in memzone {zone.name} at iova {zone.iova:#x}")
    eal.memory.memzone_free("demo_counter")
    return 0 if total == expected else 1
