"""Per-thread settings the kernel keeps for a service thread (DPDK's ``rte_thread_set_name`` and friends).

* :func:`set_thread_name` -- the kernel's name of the calling thread (``/proc/PID/task/TID/comm``,
  what ``top -H`` and ``ps -L`` show), at most 15 bytes; Python's ``threading`` name stays
  inside the interpreter (before 3.14), so a tool outside the process cannot find the thread
  by it.
* :func:`set_timer_slack_ns` -- the calling thread's timer slack: the kernel may delay a
  sleeping thread's wake-up by up to this much to batch timers (50 µs by default; a real-time
  thread has none).  A thread whose sleeps are its latency budget sets it to 1 ns.

Both are ``prctl`` calls on Linux and do nothing (return False) where that fails.
"""

from __future__ import annotations

import ctypes
import threading

__all__ = ["COMM_LEN", "set_thread_name", "set_timer_slack_ns", "thread_name"]

_PR_SET_NAME = 15
_PR_SET_TIMERSLACK = 29
#: TASK_COMM_LEN - 1: the bytes a thread name keeps.
COMM_LEN = 15

_libc = None


def _prctl(option: int, arg) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def set_thread_name(name: str) -> bool:
    """Name the calling thread for the kernel (truncated to :data:`COMM_LEN` bytes)."""
    return _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:COMM_LEN]))


def thread_name(tid: int | None = None) -> str:
    """The kernel's name of thread ``tid`` of this process (default: the calling thread)."""
    tid = threading.get_native_id() if tid is None else tid
    with open(f"/proc/self/task/{tid}/comm") as f:
        return f.read().rstrip("\n")


def set_timer_slack_ns(ns: int) -> bool:
    """The calling thread's timer slack in ns (at least 1: 0 would mean "the process default")."""
    return _prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(max(1, int(ns))))
