"""A service thread's kernel-side settings (dataplane.lcores.threads): its name, seen from /proc, and its timer
slack."""

import ctypes
import threading

from dataplane.lcores.threads import COMM_LEN, set_thread_name, set_timer_slack_ns, thread_name

_PR_GET_TIMERSLACK = 30


def _in_thread(fn):
    out = {}

    def run():
        out["tid"] = threading.get_native_id()
        out["value"] = fn()
        out["comm"] = thread_name()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


def test_the_kernel_knows_the_thread_by_its_name_truncated_to_15_bytes():
    main = thread_name()
    r = _in_thread(lambda: set_thread_name("vDPA-mlx5-0"))
    assert r["value"] is True and r["comm"] == "vDPA-mlx5-0"
    r = _in_thread(lambda: set_thread_name("vDPA-mlx5-123456789"))
    assert r["comm"] == "vDPA-mlx5-123456789"[:COMM_LEN] and len(r["comm"]) == 15
    assert thread_name() == main  # only the calling thread is renamed


def test_timer_slack_is_per_thread():
    libc = ctypes.CDLL(None)
    before = libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
    r = _in_thread(lambda: (set_timer_slack_ns(1), libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)))
    assert r["value"] == (True, 1)
    r = _in_thread(lambda: (set_timer_slack_ns(0), libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)))
    assert r["value"] == (True, 1)  # 0 would mean "the default": at least 1 ns
    assert libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0) == before
