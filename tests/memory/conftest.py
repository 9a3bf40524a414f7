"""Fixtures of the memory-layer tests.

- ``no_leaks`` (autouse): points DATAPLANE_RUNTIME_DIR at a private
  directory and, after the test, asserts that no file was left in it, in
  /dev/shm or in any pre-existing hugetlbfs mount, that no memfd, hugepage
  file or runtime-dir file is still open, and
  that the hugepage pools and the hugetlbfs mounts are as they were.
- ``huge_dir``: a private hugetlbfs mount with 16 reserved 2 MiB pages
  (skips when the system cannot provide them); asserts the test left no file
  in it before the system is restored.
- ``fork``: runs a function in a forked child, with a message pipe.
- ``backend``: Memory keyword arguments for every kind of backing memory.
- ``fake_system``: points the hugepages module at a fake sysfs and /proc.
"""

from __future__ import annotations

import os
import signal
import traceback
from multiprocessing.connection import Connection, Pipe

import pytest

from dataplane.memory import hugepages
from dataplane.testing.hugepages import HugepagesUnavailable, hugepages_mounted


def _pools() -> dict[str, int]:
    """nr_hugepages per pool, read from the real sysfs (tests may point the
    module at a fake one)."""
    root = "/sys/kernel/mm/hugepages"
    names = os.listdir(root) if os.path.isdir(root) else []
    return {n: int(open(f"{root}/{n}/nr_hugepages").read()) for n in names}


def _mounts() -> list[str]:
    """Mount points of every hugetlbfs, read from the real /proc/mounts."""
    with open("/proc/mounts") as f:
        return sorted(line.split()[1] for line in f if line.split()[2:3] == ["hugetlbfs"])


def _files(d: str) -> set[str]:
    try:
        return set(os.listdir(d))
    except FileNotFoundError:
        return set()


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leaks(tmp_path, monkeypatch):
    """Give the test a private runtime parent and check it cleaned up."""
    runtime_parent = tmp_path / "run"
    monkeypatch.setenv("DATAPLANE_RUNTIME_DIR", str(runtime_parent))
    shm_before = _files("/dev/shm")
    mounts_before = _mounts()
    huge_before = {d: _files(d) for d in mounts_before}
    pools_before = _pools()
    fds_before = _open_fds()
    yield runtime_parent
    leftovers = {str(p.relative_to(runtime_parent)) for p in runtime_parent.rglob("*")} if runtime_parent.exists() else set()
    assert not leftovers, f"files left in the runtime dir: {sorted(leftovers)}"
    assert _files("/dev/shm") - shm_before == set(), "files left in /dev/shm"
    for d, before in huge_before.items():
        assert _files(d) - before == set(), f"files left in {d}"
    assert _mounts() == mounts_before, "hugetlbfs mounts changed"
    assert _pools() == pools_before, "nr_hugepages not restored"
    leaked = sorted((fd, _readlink(fd)) for fd in _open_fds() - fds_before)
    leaked = [(fd, target) for fd, target in leaked if _is_memory_fd(target, runtime_parent)]
    assert not leaked, f"memory fds leaked (segments or locks not closed): {leaked}"


def _is_memory_fd(target: str, runtime_parent) -> bool:
    """Whether an fd points at something the memory layer opens: a memfd, a
    hugetlbfs file or a file of the runtime directory."""
    huge_dirs = [m + "/" for m in _mounts()]
    return (
        target.startswith("/memfd:")
        or target.startswith(str(runtime_parent) + "/")
        or any(target.startswith(d) for d in huge_dirs)
    )


def _readlink(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture
def huge_dir():
    """A private hugetlbfs mount with 16 more 2 MiB pages in the pool."""
    try:
        ctx = hugepages_mounted(nr=16)
        path = ctx.__enter__()
    except HugepagesUnavailable as e:
        pytest.skip(f"no hugepages: {e}")
    try:
        yield path
        leftovers = sorted(os.listdir(path))
        open_files = sorted(t for t in map(_readlink, _open_fds()) if t.startswith(path + "/"))
    finally:
        ctx.__exit__(None, None, None)
    assert not leftovers, f"files left in the huge dir: {leftovers}"
    assert not open_files, f"hugepage files still open: {open_files}"


class Forked:
    """A forked child running ``fn(conn, *args)``; ``conn`` is its end of a
    duplex pipe. The parent talks with ``send`` / ``recv`` and collects the
    return value (or the child's traceback, as an AssertionError) with
    ``join``."""

    def __init__(self, fn, *args):
        parent_end, child_end = Pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child
            parent_end.close()
            status = 0
            try:
                result = ("ok", fn(child_end, *args))
            except BaseException:
                result = ("error", traceback.format_exc())
                status = 1
            try:
                child_end.send(result)
            except Exception:
                child_end.send(("error", f"cannot send the result: {traceback.format_exc()}"))
            os._exit(status)
        child_end.close()
        self.conn: Connection = parent_end
        self.status: int | None = None

    def send(self, obj) -> None:
        self.conn.send(obj)

    def recv(self, timeout: float = 30.0):
        if not self.conn.poll(timeout):
            raise AssertionError(f"child {self.pid} sent nothing for {timeout}s")
        msg = self.conn.recv()
        if isinstance(msg, tuple) and msg and msg[0] == "error":
            self.join()
            raise AssertionError(f"child {self.pid} failed:\n{msg[1]}")
        return msg

    def join(self, timeout: float = 30.0):
        """Wait for the child's result and exit."""
        if not self.conn.poll(timeout):
            self.kill()
            raise AssertionError(f"child {self.pid} did not finish in {timeout}s")
        try:
            kind, value = self.conn.recv()
        except EOFError:
            kind, value = "error", "child died without a result"
        self._wait()
        if kind != "ok":
            raise AssertionError(f"child {self.pid} failed:\n{value}")
        return value

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            self._wait()

    def _wait(self) -> None:
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
            self.conn.close()


@pytest.fixture
def fork():
    """``fork(fn, *args) -> Forked``; children still alive at the end are killed."""
    children: list[Forked] = []

    def start(fn, *args) -> Forked:
        child = Forked(fn, *args)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


@pytest.fixture(params=["no-huge", "hugepages", "in-memory", "in-memory-huge"])
def backend(request) -> dict:
    """Memory keyword arguments for each kind of backing memory."""
    if request.param == "no-huge":
        return {"huge": False}
    if request.param == "in-memory":
        return {"huge": False, "in_memory": True}
    huge_dir = request.getfixturevalue("huge_dir")
    if request.param == "hugepages":
        return {"huge": True, "huge_dir": huge_dir}
    return {"huge": True, "in_memory": True}


SAMPLE_MOUNTS = """\
sysfs /sys sysfs rw,nosuid 0 0
hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0
none /mnt/huge\\0401G hugetlbfs rw,relatime,pagesize=1024M 0 0
nodev /mnt/default hugetlbfs rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
"""


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """``fake_system(pools, mounts=SAMPLE_MOUNTS, default_kb=2048) -> sysfs``
    points the hugepages module at a fake sysfs (``pools``: {kB: (nr, free,
    resv, surplus)}), /proc/mounts and /proc/meminfo. SAMPLE_MOUNTS has
    /dev/hugepages (2M), "/mnt/huge 1G" (1G) and /mnt/default (no option)."""

    def make(pools: dict, mounts: str = SAMPLE_MOUNTS, default_kb: int = 2048):
        sysfs = tmp_path / "fake-sys"
        for kb, values in pools.items():
            d = sysfs / f"hugepages-{kb}kB"
            d.mkdir(parents=True)
            names = ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages")
            for name, v in zip(names, values):
                (d / name).write_text(f"{v}\n")
        (sysfs / "not-a-pool").mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake-mounts").write_text(mounts)
        (tmp_path / "fake-meminfo").write_text(f"MemTotal: 24000000 kB\nHugepagesize: {default_kb} kB\n")
        monkeypatch.setattr(hugepages, "SYSFS_HUGEPAGES", str(sysfs))
        monkeypatch.setattr(hugepages, "PROC_MOUNTS", str(tmp_path / "fake-mounts"))
        monkeypatch.setattr(hugepages, "PROC_MEMINFO", str(tmp_path / "fake-meminfo"))
        return sysfs

    return make
