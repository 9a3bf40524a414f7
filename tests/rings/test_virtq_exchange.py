"""Two pinned processes exchange >= 10 M buffers over a split / packed virtqueue in shared memory.

The driver posts buffers carrying sequence numbers, the device copies every
payload and checks each sequence number; the driver checks every cookie comes
back once, in order.  No loss, duplication or reordering; no kick and no
interrupt (notification suppression).  Bounded: a run that does not finish in
time is aborted, its children killed and reaped, and the test fails (the
suite's autouse fixture also checks for leftover children and /dev/shm files).
"""

from __future__ import annotations

import os
import time

import pytest

from dataplane.testing.virtq_exchange import (
    PACKED,
    SPLIT,
    ExchangeConfig,
    ExchangeTimeout,
    run_exchange,
)

COUNT = 10_000_000
# ~0.3-2 s when the machine is quiet; on a loaded one only a stall (no buffer harvested for
# STALL s) says the exchange hangs, and TIMEOUT bounds the whole run
TIMEOUT = 600.0
STALL = 20.0

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cpus")


def _check(res, count):
    d, v = res.driver, res.device
    # device: every buffer seen, each seq exactly the previous + 1 (read from the copy)
    assert v["chains"] == count
    assert v["seq_fwd"] == 0, f"loss/reorder at chain {v['first_bad']} (seq {v['bad_seq']})"
    assert v["seq_back"] == 0, f"duplicate/reorder at chain {v['first_bad']} (seq {v['bad_seq']})"
    assert v["status_err"] == 0 and v["len_err"] == 0 and v["ring_errors"] == 0
    assert v["bytes"] == count * res.config.payload  # every payload byte was copied
    # driver: every cookie back exactly once, in posting order, with used length 0
    assert d["posted"] == count and d["harvested"] == count
    assert d["cookie_err"] == 0, f"cookie out of order at harvest {d['first_bad']}"
    assert d["len_err"] == 0 and d["add_fail"] == 0 and d["broken"] == 0
    # poll mode with notification suppression: nobody asked for a kick or an interrupt
    assert d["kicks"] == 0 and v["interrupts"] == 0
    assert d["done"] == 1 and v["done"] == 1
    assert res.errors == {}


@pytest.mark.parametrize("kind", [SPLIT, PACKED])
def test_exchange_10m(kind):
    t0 = time.monotonic()
    res = run_exchange(ExchangeConfig(kind=kind, count=COUNT, payload=64, timeout=TIMEOUT, stall_timeout=STALL))
    _check(res, COUNT)
    print(f"{kind}: {res.mpps:.1f} Mpps, cpu share {res.cpu_share:.2f}, {time.monotonic() - t0:.1f} s in all")


@pytest.mark.parametrize("kind", [SPLIT, PACKED])
def test_exchange_in_order_1518(kind):
    """IN_ORDER (one used entry per burst) with full-size frames: same guarantees."""
    n = 500_000
    res = run_exchange(ExchangeConfig(kind=kind, count=n, payload=1518, in_order=True, timeout=TIMEOUT, stall_timeout=STALL))
    _check(res, n)


def test_timeout_kills_and_reaps():
    """A run that cannot finish in time fails with ExchangeTimeout and leaves nothing behind."""
    with pytest.raises(ExchangeTimeout):
        run_exchange(ExchangeConfig(kind=SPLIT, count=10**12, timeout=0.5))


@pytest.mark.parametrize("kind", [SPLIT, PACKED])
@pytest.mark.parametrize("delta, counter", [(1, "seq_fwd"), (-1, "seq_back")])
def test_checker_sees_lost_and_repeated_seq(kind, delta, counter):
    """The device's check is not vacuous: one lost (+1) or repeated (-1) seq is caught, where it happens."""
    n, at = 100_000, 54_321
    res = run_exchange(ExchangeConfig(kind=kind, count=n, fault_at=at, fault_delta=delta, timeout=TIMEOUT, stall_timeout=STALL))
    v = res.device
    assert v[counter] == 1
    assert v["seq_fwd"] + v["seq_back"] == 1
    assert v["first_bad"] == at and v["bad_seq"] == at + delta
    assert res.driver["cookie_err"] == 0 and res.driver["harvested"] == n
    assert set(res.errors) == {"device_" + counter}
