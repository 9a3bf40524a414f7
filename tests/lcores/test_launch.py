"""Launcher: pinned worker processes, launch/wait, failure detection, stop flag."""

import os
import signal
import time

import numpy as np
import pytest
from numba import njit

from dataplane.lcores import launch
from dataplane.lcores.launch import SKIP_MAIN, CALL_MAIN, Launcher, LcoreBusy, LcoreError, LcoreState
from dataplane.rings.atomics import cpu_relax, load_acquire

CPUS = sorted(os.sched_getaffinity(0))


def _lcore_map(n):
    """n lcores spread over the allowed cpus, lcore i on cpu CPUS[i % len]."""
    return {i: frozenset({CPUS[i % len(CPUS)]}) for i in range(n)}


def _allowed_list(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def _cpulist(text):
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _whoami(_arg):
    return launch.lcore_id(), os.getpid(), sorted(os.sched_getaffinity(0))


@pytest.fixture
def launcher():
    la = Launcher(_lcore_map(3), main_lcore=0)
    yield la
    la.close()
    for lc in la.lcores.values():
        if lc.pid:
            with pytest.raises(ProcessLookupError):
                os.kill(lc.pid, 0)


def test_workers_run_on_the_cpus_asked_for(launcher):
    for i in launcher.worker_ids:
        lc = launcher.lcores[i]
        assert _cpulist(_allowed_list(lc.pid)) == set(lc.cpus)
        launcher.remote_launch(_whoami, None, i)
        lid, pid, cpus = launcher.wait_lcore(i, timeout=10)
        assert (lid, pid, set(cpus)) == (i, lc.pid, set(lc.cpus))
    assert launch.lcore_id() == 0


def test_several_lcores_on_one_cpu_and_a_cpu_set():
    cpus = frozenset(CPUS)
    la = Launcher({0: frozenset({CPUS[0]}), 1: frozenset({CPUS[0]}), 2: cpus}, main_lcore=0)
    try:
        assert _cpulist(_allowed_list(la.lcores[1].pid)) == {CPUS[0]}
        assert _cpulist(_allowed_list(la.lcores[2].pid)) == set(cpus)
    finally:
        la.close()


def test_mp_launch_and_wait_returns_every_result(launcher):
    main_result = launcher.mp_remote_launch(lambda x: (launch.lcore_id(), x * 2), 21, CALL_MAIN)
    assert main_result == (0, 42)
    assert launcher.mp_wait_lcore(timeout=10) == {1: (1, 42), 2: (2, 42)}
    # The workers are waiting again and can be reused.
    launcher.mp_remote_launch(lambda x: x + launch.lcore_id(), 100, SKIP_MAIN)
    assert launcher.mp_wait_lcore(timeout=10) == {1: 101, 2: 102}


def test_launch_on_a_running_lcore_is_busy(launcher):
    launcher.remote_launch(time.sleep, 0.5, 1)
    with pytest.raises(LcoreBusy):
        launcher.remote_launch(time.sleep, 0.1, 1)
    launcher.wait_lcore(1, timeout=10)
    with pytest.raises(ValueError):
        launcher.remote_launch(time.sleep, 0, 0)  # the main lcore is not a worker


def _raise(arg):
    raise ValueError(f"bad thing {arg}")


def _loop_until_stop(_arg):
    while not launch.stop_requested():
        time.sleep(0.01)
    return "stopped"


def test_exception_in_worker_is_reported_and_others_stop(launcher):
    launcher.remote_launch(_loop_until_stop, None, 2)
    launcher.remote_launch(_raise, 7, 1)
    with pytest.raises(LcoreError) as exc:
        launcher.mp_wait_lcore(timeout=10)
    assert exc.value.lcore_id == 1
    assert "ValueError: bad thing 7" in str(exc.value)
    # lcore 2 saw the stop flag raised by the failure and returned.
    assert launcher.get_state(2) == LcoreState.WAIT
    assert launcher.stop_flag[0] == 1


@njit(cache=True)
def _numba_poll(stop, counter):
    n = 0
    while load_acquire(stop, 0) == 0:
        n += 1
        cpu_relax()
    counter[0] = n
    return n


def test_sigkill_is_detected_within_a_second_and_others_stop(launcher):
    counter = np.zeros(1, np.int64)
    _numba_poll(np.ones(16, np.uint32), counter)  # compile in the parent
    # Arguments travel pickled (copied): the worker uses its inherited shared flag.
    launcher.remote_launch(lambda _: _numba_poll(launch.stop_flag(), np.zeros(1, np.int64)), None, 2)
    launcher.remote_launch(time.sleep, 60, 1)
    time.sleep(0.2)
    victim = launcher.lcores[1].pid
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(LcoreError) as exc:
        launcher.wait_lcore(1, timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert exc.value.lcore_id == 1 and "SIGKILL" in exc.value.cause
    assert launcher.get_state(1) == LcoreState.DEAD
    # The numba loop on lcore 2 saw the shared stop flag and returned (else: TimeoutError).
    assert launcher.wait_lcore(2, timeout=5) >= 0
    assert [f.lcore_id for f in launcher.failures] == [1]
    with pytest.raises(LcoreError):
        launcher.remote_launch(time.sleep, 0, 1)


def test_mailbox_carries_objects_and_fds(launcher):
    r, w = os.pipe()
    os.write(w, b"hello")

    def reader(_):
        msg = launch.mailbox_recv(timeout=5)
        obj, fds = msg
        data = os.read(fds[0], 5)
        for fd in fds:
            os.close(fd)
        return obj, data

    launcher.remote_launch(reader, None, 1)
    launcher.post(1, {"queue": 3}, [r])
    assert launcher.wait_lcore(1, timeout=10) == ({"queue": 3}, b"hello")
    os.close(r)
    os.close(w)


def test_unpicklable_result_is_an_error_not_a_hang(launcher):
    import threading

    launcher.remote_launch(lambda _: threading.Lock(), None, 1)
    with pytest.raises(LcoreError):
        launcher.wait_lcore(1, timeout=10)
