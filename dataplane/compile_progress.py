"""What numba is compiling, shown while it compiles (a cold start is minutes of work).

numba broadcasts a ``numba:compile`` event when a dispatcher starts and ends
compiling a signature, nested for the kernels a kernel calls (a kernel loaded
from the disk cache broadcasts nothing).  :func:`show_compile_progress`
listens and, once a compile has run for a moment, prints a line that
says which entry point is being compiled, how many kernels are done (of how
many the last compile of that entry point took, when this cache has seen one),
what is being compiled now, and for how long.  On a terminal the line is
rewritten in place; otherwise a line is printed every ``period`` seconds.

A compile that ends quickly (or a kernel loaded from the disk cache, which
broadcasts nothing) prints nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

__all__ = ["CompileProgress", "show_compile_progress"]

_RECORD = "compile-counts.json"  # in the numba cache directory: kernels each entry point took last time


def _name(event) -> str:
    disp = (event.data or {}).get("dispatcher")
    fn = getattr(disp, "py_func", None)
    return getattr(fn, "__qualname__", None) or "?"


class CompileProgress:
    """The numba listeners and the ticker; see :func:`show_compile_progress`."""

    def __init__(self, stream=None, period: float = 5.0, quiet_for: float = 2.0, record_dir: str | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.period = period
        self.quiet_for = quiet_for  # compiles shorter than this print nothing
        self.record_dir = record_dir if record_dir is not None else os.environ.get("NUMBA_CACHE_DIR", "")
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._stack: list[str] = []
        self._done = 0
        self._expected = 0
        self._t0 = 0.0
        self._shown = False
        self._wake = threading.Event()
        self._ticker: threading.Thread | None = None
        self.lines = 0  # progress lines printed (bench/startup.py counts them)

    # -- numba listeners (called in the compiling thread) -------------------------------
    def compile_start(self, event) -> None:
        with self._lock:
            name = _name(event)
            if not self._stack:
                self._done, self._t0, self._shown = 0, time.monotonic(), False
                self._expected = self._counts().get(name, 0)
                self._wake.clear()
                self._ticker = threading.Thread(target=self._tick, name="compile-progress", daemon=True)
                self._ticker.start()
            self._stack.append(name)

    def compile_end(self, event) -> None:
        with self._lock:
            if not self._stack:
                return
            top = self._stack[0]
            self._stack.pop()
            self._done += 1
            if self._stack:
                return
            self._wake.set()
            elapsed = time.monotonic() - self._t0
            if self._shown:
                self._emit(f"compiled {top}: {self._done} kernels in {elapsed:.0f} s (kept in the cache)", final=True)
            if self._done > 1:
                self._store(top, self._done)

    # -- the ticker -------------------------------------------------------------------
    def _tick(self) -> None:
        wait = self.quiet_for
        while not self._wake.wait(wait):
            with self._lock:
                if not self._stack:
                    return
                self._shown = True
                self._emit(self.status())
            wait = 0.5 if self.tty else self.period

    def status(self) -> str:
        """The progress line now (call with the lock held or from the ticker)."""
        top, now = self._stack[0], self._stack[-1]
        # "of N" only while callees are being compiled: when they came from the cache, only the entry point is
        of = f"/{self._expected}" if 0 < self._done <= self._expected else ""
        what = now if now != top else f"{top} itself"
        return (f"compiling {top} (first run of this code; cached afterwards): {self._done}{of} kernels done, "
                f"now {what}, {time.monotonic() - self._t0:.0f} s")

    def _emit(self, text: str, final: bool = False) -> None:
        self.lines += 1
        try:
            if self.tty:
                self.stream.write("\r\x1b[K" + "dataplane: " + text + ("\n" if final else ""))
            else:
                self.stream.write("dataplane: " + text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    # -- how many kernels an entry point took last time ----------------------------------
    def _counts(self) -> dict:
        try:
            with open(os.path.join(self.record_dir, _RECORD)) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _store(self, top: str, count: int) -> None:
        if not self.record_dir:
            return
        counts = self._counts()
        counts[top] = count
        path = os.path.join(self.record_dir, _RECORD)
        try:
            os.makedirs(self.record_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(counts, f)
            os.replace(tmp, path)
        except OSError:
            pass


class _Listener:
    """A numba event listener that calls two functions."""

    def __new__(cls, start, end):
        from numba.core import event as ev

        class L(ev.Listener):
            def on_start(self, event):
                start(event)

            def on_end(self, event):
                end(event)

        return L()


@contextlib.contextmanager
def show_compile_progress(stream=None, period: float = 5.0, quiet_for: float = 2.0):
    """Show compile progress on ``stream`` (stderr) while the block runs; yields the :class:`CompileProgress`."""
    from numba.core import event as ev

    progress = CompileProgress(stream, period, quiet_for)
    listeners = [("numba:compile", _Listener(progress.compile_start, progress.compile_end))]
    for kind, listener in listeners:
        ev.register(kind, listener)
    try:
        yield progress
    finally:
        for kind, listener in listeners:
            ev.unregister(kind, listener)
        progress._wake.set()
