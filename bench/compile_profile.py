"""Where a cold compile's time goes: per numba dispatcher, inclusive and own time, time in LLVM.

Usage::

    NUMBA_CACHE_DIR=$(mktemp -d) python bench/compile_profile.py run --duration 1

runs ``dataplane <args>`` (here the default configuration for one second) in this process with
listeners on numba's ``numba:compile`` and ``numba:llvm_lock`` events and timers around numba's
LLVM steps (``CPUCodeLibrary._optimize_functions``: function passes on a kernel's own code;
``_optimize_final_module``: module passes over it and everything linked into it;
``_finalize_final_module``: machine code).  At exit it prints the 40 dispatchers with the most
own time (inclusive minus their callees' compiles) and the largest LLVM steps, to stderr, and
writes them as JSON to ``$PROF_OUT`` if set.  Only compiles in this process are seen (the
forwarding lcores compile their share of a cold cache in their own processes).  Use a fresh
``NUMBA_CACHE_DIR`` for a cold compile.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import time

from numba.core import codegen as _cg
from numba.core import event as ev

_stack: list = []  # [name, t0, time in callees]
_incl: dict = collections.defaultdict(float)
_own: dict = collections.defaultdict(float)
_llvm: dict = collections.defaultdict(float)
_steps: dict = collections.defaultdict(float)
_count: collections.Counter = collections.Counter()
_llvm_t0 = [0.0]
_T0 = time.perf_counter()


def _name(e) -> str:
    fn = getattr((e.data or {}).get("dispatcher"), "py_func", None)
    mod = (getattr(fn, "__module__", None) or "?").replace("dataplane.", "")
    return f"{mod}.{getattr(fn, '__qualname__', None) or '?'}"


class _Compile(ev.Listener):
    def on_start(self, e):
        _stack.append([_name(e), time.perf_counter(), 0.0])

    def on_end(self, e):
        name, t0, callees = _stack.pop()
        dt = time.perf_counter() - t0
        _incl[name] += dt
        _own[name] += dt - callees
        _count[name] += 1
        if _stack:
            _stack[-1][2] += dt


class _Llvm(ev.Listener):
    def on_start(self, e):
        _llvm_t0[0] = time.perf_counter()

    def on_end(self, e):
        _llvm[_stack[-1][0] if _stack else "<none>"] += time.perf_counter() - _llvm_t0[0]


def _timed(cls, method: str) -> None:
    orig = getattr(cls, method)

    def wrapper(self, *a, **k):
        t = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            _steps[(_stack[-1][0] if _stack else "<none>", method)] += time.perf_counter() - t

    setattr(cls, method, wrapper)


def _report() -> None:
    out = sys.stderr
    total = time.perf_counter() - _T0
    print(f"\n=== {total:.1f} s, load {os.getloadavg()}, {sum(_count.values())} compiles, "
          f"{sum(_llvm.values()):.1f} s in LLVM", file=out)
    for n in sorted(_own, key=lambda n: -_own[n])[:40]:
        print(f"own {_own[n]:7.1f}  incl {_incl[n]:7.1f}  llvm {_llvm[n]:6.1f}  n={_count[n]:3d}  {n}", file=out)
    for (f, m), v in sorted(_steps.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {m:24s} {v:6.1f}  {f}", file=out)
    if os.environ.get("PROF_OUT"):
        with open(os.environ["PROF_OUT"], "w") as f:
            json.dump(dict(total=total, own=_own, incl=_incl, llvm=_llvm, count=_count,
                           steps={f"{k[0]} {k[1]}": v for k, v in _steps.items()}), f)


def main() -> int:
    if not os.environ.get("NUMBA_CACHE_DIR"):
        print("set NUMBA_CACHE_DIR (a fresh directory for a cold compile)", file=sys.stderr)
        return 2
    for method in ("_optimize_functions", "_optimize_final_module", "_finalize_final_module"):
        _timed(_cg.CPUCodeLibrary, method)
    ev.register("numba:compile", _Compile())
    ev.register("numba:llvm_lock", _Llvm())
    atexit.register(_report)
    from dataplane.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
