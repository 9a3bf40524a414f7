"""EAL: memzones shared between lcore processes, with and without hugepages; cleanup."""

import os

import numpy as np
import pytest

from dataplane.lcores import launch
from dataplane.lcores.eal import Eal, current_memory, eal_init
from dataplane.memory.errors import RuntimeDirBusy
from dataplane.testing.hugepages import HugepagesUnavailable, hugepages_mounted

CPUS = sorted(os.sched_getaffinity(0))
LCORES = f"{CPUS[0]}-{CPUS[-1]}" if len(CPUS) > 1 else str(CPUS[0])


@pytest.fixture(autouse=True)
def runtime_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAPLANE_RUNTIME_DIR", str(tmp_path / "run"))
    yield tmp_path / "run"
    assert not any((tmp_path / "run").glob("*/*")), "runtime dir not cleaned"


def _write_zone(args):
    name, size = args
    zone = current_memory().memzone_reserve(name, size)
    v = zone.view(np.uint32)
    v[:] = np.arange(v.size, dtype=np.uint32) ^ launch.lcore_id()
    return zone.iova


def _read_zone(name):
    v = current_memory().memzone_lookup(name).view(np.uint32)
    return int(v[0]), int(v[-1]), v.size


def _exchange(eal):
    """lcore 1 writes a memzone reserved after the fork; the main lcore and lcore 1 read each other's."""
    la = eal.launcher
    worker = la.worker_ids[0]
    la.remote_launch(_write_zone, ("from_worker", 1 << 20), worker)
    iova = la.wait_lcore(worker, timeout=30)
    zone = eal.memory.memzone_lookup("from_worker")
    assert zone.iova == iova
    v = zone.view(np.uint32)
    assert (v == (np.arange(v.size, dtype=np.uint32) ^ worker)).all()
    _write_zone(("from_main", 4096))
    la.remote_launch(_read_zone, "from_main", worker)
    assert la.wait_lcore(worker, timeout=30) == (0 ^ eal.cfg.main_lcore, 1023 ^ eal.cfg.main_lcore, 1024)


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cpus")
def test_memzone_shared_between_lcores_no_huge():
    with eal_init(["-l", LCORES, "--no-huge", "-m", "64", "--file-prefix", "ealnh"], handle_signals=False) as eal:
        assert not eal.memory.hugepage
        _exchange(eal)


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cpus")
def test_memzone_shared_between_lcores_hugepages():
    try:
        ctx = hugepages_mounted(nr=40)
        huge_dir = ctx.__enter__()
    except HugepagesUnavailable as exc:
        pytest.skip(f"no hugepages: {exc}")
    try:
        with eal_init(["-l", LCORES, "-m", "64", "--huge-dir", huge_dir, "--file-prefix", "ealhp"],
                      handle_signals=False) as eal:
            assert eal.memory.hugepage and eal.memory.page_size == 2 << 20
            assert os.listdir(huge_dir) == ["ealhpmap_0"]
            _exchange(eal)
        assert os.listdir(huge_dir) == []
    finally:
        ctx.__exit__(None, None, None)


def test_second_instance_with_same_prefix_is_refused():
    with eal_init(["-l", str(CPUS[0]), "--no-huge", "-m", "8", "--file-prefix", "twice"], handle_signals=False):
        with pytest.raises(RuntimeError):  # only one EAL per process
            eal_init(["-l", str(CPUS[0]), "--no-huge", "-m", "8", "--file-prefix", "twice"], handle_signals=False)
        pid = os.fork()
        if pid == 0:  # another process, same prefix: refused with the clear error
            code = 3
            try:
                from dataplane.lcores import eal as eal_mod

                eal_mod._CURRENT = None
                from dataplane.memory.memory import Memory

                Memory(8 << 20, huge=False, file_prefix="twice")
            except RuntimeDirBusy as exc:
                code = 0 if "in use by pid" in str(exc) else 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def _fds_on(pid, path):
    """The fds of process ``pid`` open on ``path``."""
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.path.realpath(f"/proc/{pid}/fd/{n}") == path:
                out.append(int(n))
        except OSError:
            pass
    return out


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cpus")
def test_lcore_workers_hold_no_fd_of_the_prefix_lock():
    """Only the main process holds the prefix lock: it cannot outlive it through a worker."""
    with eal_init(["-l", LCORES, "--no-huge", "-m", "16", "--file-prefix", "lockfd"], handle_signals=False) as eal:
        lock = os.path.realpath(eal.memory.runtime.lock_path)
        workers = [eal.launcher.lcores[i].pid for i in eal.launcher.worker_ids]
        assert workers and all(_fds_on(pid, lock) == [] for pid in workers)
        assert len(_fds_on(os.getpid(), lock)) == 1
