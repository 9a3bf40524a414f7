"""A clock that moves only when a test moves it, for code that takes a ``clock`` callable.

::

    clock = ManualClock()
    loop = EventLoop(clock=clock)       # its timers now run on this clock
    loop.call_later(1.0, fn)
    clock.advance(1.0); loop.turn()     # fn has run

Intervals are then properties of the code under test, checked exactly,
never measured against the wall clock.
"""

from __future__ import annotations

import threading

__all__ = ["ManualClock"]


class ManualClock:
    """Monotonic seconds, starting at ``start``; :meth:`advance` is the only way time passes."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        with self._lock:
            self._now += seconds
