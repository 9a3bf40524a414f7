"""Suite-wide guards: every test leaves no child process and no shared-memory file behind."""

import os
import time

import pytest


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d))
    return out


def _shm_files():
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_leftovers():
    """Fail a test that leaves a live child process or a new /dev/shm file."""
    before_children = set(_children(os.getpid()))
    before_shm = _shm_files()
    yield
    deadline = time.monotonic() + 2
    while True:
        left = set(_children(os.getpid())) - before_children
        shm = _shm_files() - before_shm
        if not (left or shm) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:  # end only our own children, then report
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert not left, f"test left child processes running: {sorted(left)}"
    assert not shm, f"test left files in /dev/shm: {sorted(shm)}"
