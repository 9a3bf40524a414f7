"""The runtime directory: one live instance per file prefix, stale runs cleaned."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from structlog.testing import capture_logs

from dataplane.memory import Memory, RuntimeDir, RuntimeDirBusy, hugepages
from dataplane.memory.units import MiB


def test_lock_file_holds_pid_and_dir_removed_on_close(no_leaks):
    mem = Memory(1 * MiB, huge=False, file_prefix="alpha")
    rundir = no_leaks / "alpha"
    assert (rundir / "lock").read_text().strip() == str(os.getpid())
    mem.close()
    assert not rundir.exists()
    mem.close()  # idempotent


def test_runtime_dir_defaults(monkeypatch):
    monkeypatch.delenv("DATAPLANE_RUNTIME_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert RuntimeDir("x").path == "/var/run/dataplane/x"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert RuntimeDir("x").path == "/run/user/1000/dataplane/x"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert RuntimeDir("x").path == "/tmp/dataplane/x"


_EXIT_WITHOUT_CLOSE = """
import sys
from dataplane.memory import Memory
kwargs = eval(sys.argv[1])
mem = Memory(2 << 20, file_prefix="atexit", **kwargs)
mem.memzone_reserve("z", 64)
print("PATHS", mem.runtime.path, *[s.path for s in mem.segments if s.path])
"""


@pytest.mark.parametrize("kind", ["no-huge", "hugepages"])
def test_normal_exit_without_close_cleans_up(kind, request, no_leaks):
    kwargs = {"huge": False}
    if kind == "hugepages":
        kwargs = {"huge": True, "huge_dir": request.getfixturevalue("huge_dir")}
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_CLOSE, repr(kwargs)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    paths = next(line for line in proc.stdout.splitlines() if line.startswith("PATHS ")).split()[1:]
    assert paths[0] == str(no_leaks / "atexit")
    for path in paths:
        assert not os.path.exists(path)


@pytest.mark.parametrize("prefix", ["", "a/b", "..", "sp ace"])
def test_bad_prefix_refused(prefix):
    with pytest.raises(ValueError, match="invalid file prefix"):
        RuntimeDir(prefix)


def test_second_instance_in_same_process_refused(no_leaks):
    with Memory(1 * MiB, huge=False, file_prefix="solo"):
        with pytest.raises(RuntimeDirBusy) as info:
            Memory(1 * MiB, huge=False, file_prefix="solo")
        lock = no_leaks / "solo" / "lock"
        assert str(info.value).startswith(f"file prefix 'solo' is in use by pid {os.getpid()} (lock {lock})")
        with Memory(1 * MiB, huge=False, file_prefix="other"):
            pass  # another prefix is fine


def _hold_prefix(conn, prefix):
    with Memory(1 * MiB, huge=False, file_prefix=prefix):
        conn.send("ready")
        conn.recv()  # until told to go
    return True


def test_second_instance_in_other_process_refused(fork, no_leaks):
    child = fork(_hold_prefix, "shared")
    assert child.recv() == "ready"
    with pytest.raises(RuntimeDirBusy, match=rf"file prefix 'shared' is in use by pid {child.pid} \(lock "):
        Memory(1 * MiB, huge=False, file_prefix="shared")
    child.send("go")
    assert child.join()
    with Memory(1 * MiB, huge=False, file_prefix="shared"):
        pass  # free again once the holder exited


def _acquire_in_thread(prefix):
    """Memory(prefix) in a thread; returns (thread, box) with box["mem"] or box["error"] when done."""
    box = {}

    def run():
        try:
            box["mem"] = Memory(1 * MiB, huge=False, file_prefix=prefix)
        except Exception as e:
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, box


def _await_event(logs, event, thread, box, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not any(e["event"] == event for e in logs):
        assert thread.is_alive(), f"the successor returned without waiting: {box}"
        assert time.monotonic() < deadline, f"no {event!r} within {timeout} s"
        time.sleep(0.01)
    return next(e for e in logs if e["event"] == event)


_WAITING = "waiting for the previous owner of the file prefix to exit"


def _hold_prefix_exiting(conn, prefix):
    with Memory(1 * MiB, huge=False, file_prefix=prefix) as mem:
        mem.runtime.mark_exiting()  # what Eal.close() does first on quit
        conn.send("exiting")
        conn.recv()  # still tearing down until told to go
    return True


def test_successor_waits_for_an_owner_that_is_exiting(fork, no_leaks):
    """A back-end restarted right after ``quit`` with the same prefix starts: it waits
    for the old instance, which marked its lock ``exiting``, instead of being refused."""
    child = fork(_hold_prefix_exiting, "relay")
    assert child.recv() == "exiting"
    assert (no_leaks / "relay" / "lock").read_text() == f"{child.pid} exiting\n"
    with capture_logs() as logs:
        thread, box = _acquire_in_thread("relay")
        waiting = _await_event(logs, _WAITING, thread, box)
        assert (waiting["old_pid"], waiting["exiting"]) == (child.pid, True)
        child.send("go")
        assert child.join()
        thread.join(60)
    assert "error" not in box, box
    with box["mem"] as mem:
        assert (no_leaks / "relay" / "lock").read_text().strip() == str(os.getpid())
        assert mem.runtime.acquired


def test_lock_does_not_outlive_its_owner_through_forked_workers(no_leaks):
    """The owner exited (without releasing) while a process it forked, e.g. an lcore
    worker, still runs: the successor starts at once, without waiting for that process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the owner: takes the prefix, forks a "worker", dies without releasing
        try:
            os.close(w)
            mem = Memory(1 * MiB, huge=False, file_prefix="orphan")  # noqa: F841 (kept: its lock)
            if os.fork() == 0:
                os.read(r, 1)  # the worker lives on until the test lets it go
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(r)
    try:
        assert os.waitpid(pid, 0)[1] == 0
        with capture_logs() as logs:
            mem = Memory(1 * MiB, huge=False, file_prefix="orphan")  # the worker still runs
        with mem:
            assert not any(e["event"] == _WAITING for e in logs)
            assert any(e["event"] == "removing stale files of a dead run" and e["old_pid"] == pid for e in logs)
    finally:
        os.close(w)


def test_forked_child_holds_no_lock_fd(no_leaks):
    """A process forked from the owner closes its copy of the lock fd at once; the owner keeps the lock."""
    with Memory(1 * MiB, huge=False, file_prefix="forked") as mem:
        lock = os.path.realpath(mem.runtime.lock_path)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                held = [n for n in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{n}") == lock]
                os.write(w, b"%d %d" % (len(held), mem.runtime.acquired))
            finally:
                os._exit(0)
        os.close(w)
        held, acquired = map(int, os.read(r, 64).split())
        os.close(r)
        assert os.waitpid(pid, 0)[1] == 0
        assert (held, acquired) == (0, 0)
        assert mem.runtime.acquired
        with pytest.raises(RuntimeDirBusy):  # still ours
            RuntimeDir("forked").acquire()


def test_in_memory_creates_no_runtime_dir(no_leaks):
    with Memory(1 * MiB, huge=False, in_memory=True, file_prefix="mem"):
        with Memory(1 * MiB, huge=False, in_memory=True, file_prefix="mem"):
            assert not no_leaks.exists() or not any(no_leaks.iterdir())


def _start_and_get_killed(conn, prefix, kwargs):
    mem = Memory(6 * MiB, file_prefix=prefix, **kwargs)
    mem.memzone_reserve("doomed", 4096)
    with open(os.path.join(mem.runtime.path, "junk"), "w") as f:
        f.write("left behind")
    conn.send(("ready", mem.runtime.path, [s.path for s in mem.segments]))
    time.sleep(120)


def _kill_run(fork, prefix, kwargs):
    child = fork(_start_and_get_killed, prefix, kwargs)
    _, rundir, seg_paths = child.recv()
    child.kill()
    return child.pid, rundir, seg_paths


def test_stale_files_of_killed_run_removed_no_huge(fork, no_leaks):
    child_pid, rundir, _ = _kill_run(fork, "stale", {"huge": False})
    assert {"junk", "lock"} <= set(os.listdir(rundir))
    assert open(os.path.join(rundir, "lock")).read().strip() == str(child_pid)
    with capture_logs() as logs:
        mem = Memory(1 * MiB, huge=False, file_prefix="stale")
    with mem:
        stale = [e for e in logs if e["event"] == "removing stale files of a dead run"]
        assert stale and stale[0]["old_pid"] == child_pid and "junk" in stale[0]["files"]
        assert stale[0]["log_level"] == "warning"
        assert not os.path.exists(os.path.join(rundir, "junk"))
        assert open(os.path.join(rundir, "lock")).read().strip() == str(os.getpid())
        with pytest.raises(KeyError):
            mem.memzone_lookup("doomed")  # fresh memory, nothing of the dead run
    assert not os.path.exists(rundir)


def test_stale_files_of_killed_run_removed_hugepages(fork, huge_dir):
    kwargs = {"huge": True, "huge_dir": huge_dir, "segment_size": 2 * MiB}
    child_pid, rundir, seg_paths = _kill_run(fork, "hstale", kwargs)
    assert sorted(os.listdir(huge_dir)) == ["hstalemap_0", "hstalemap_1", "hstalemap_2"]
    pool = hugepages.page_size_info(2 * MiB)
    assert pool.nr - pool.free >= 3  # the dead run's files still hold pages
    with capture_logs() as logs:
        mem = Memory(2 * MiB, huge=True, huge_dir=huge_dir, file_prefix="hstale")
    with mem:
        assert [e["old_pid"] for e in logs if e["event"] == "removing stale files of a dead run"] == [child_pid]
        assert sorted(os.listdir(huge_dir)) == ["hstalemap_0"]  # our own, freshly made
        assert os.stat(seg_paths[0]).st_ino == os.fstat(mem.segments[0].fd).st_ino
        assert not os.path.exists(os.path.join(rundir, "junk"))
    assert os.listdir(huge_dir) == []


def test_unused_hugepage_files_without_runtime_dir_removed(huge_dir):
    """Files ``<prefix>map_*`` nobody uses are cleared even when the runtime
    directory of their run is gone; files in use are kept."""
    stray = os.path.join(huge_dir, "straymap_7")
    open(stray, "w").close()
    other = os.path.join(huge_dir, "othermap_0")
    open(other, "w").close()
    with Memory(2 * MiB, huge_dir=huge_dir, file_prefix="stray") as mem:
        assert not os.path.exists(stray)
        assert os.path.exists(other)  # another prefix: not ours to remove
        assert hugepages.clear_files(huge_dir, "stray") == []  # ours is locked: kept
        assert os.path.exists(mem.segments[0].path)
    os.unlink(other)


def test_a_zombie_owner_is_dead(no_leaks):
    """An owner that exited but is not reaped yet (a zombie) holds nothing: its successor starts."""
    from dataplane.memory.runtime import _alive

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while _alive(pid):  # a zombie as soon as it exited; we have not reaped it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.waitpid(pid, os.WNOHANG)[0] == pid  # it was a zombie, not gone
    finally:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    assert _alive(os.getpid())
