"""A perf map of this process's compiled kernels (``/tmp/perf-<pid>.map``), so that perf names numba code.

numba's LLVM registers no perf JIT listener, so ``perf report`` shows the samples in jitted code
as bare addresses (a forwarding lcore's profile is then 97 % "unknown").  :func:`write_perf_map`
lists every function of every compiled overload in the process, in perf's map format (``START
SIZE NAME``, hex): the start address from the JIT, the size up to the next function's start.

With ``DATAPLANE_PERF_MAP=1`` in the environment, the processes that run datapath loops write
it once their kernels are loaded: the forwarding lcores (before they attach their queues) and
the emulated cards (before their main loop).  Then::

    perf record -g -p PID -- sleep 5
    perf report --sort symbol

perf reads the map of the pid it sampled; the names are numba's mangled ones (perf demangles
them: ``dataplane::vhost::virtio_net::enqueue_burst[abi:...]``).
"""

from __future__ import annotations

import gc
import os

from dataplane import log as dplog

__all__ = ["write_perf_map", "write_perf_map_if_wanted", "perf_map_wanted", "ENV"]

log = dplog.get_logger("dataplane.perf_map")

#: The environment variable that asks the datapath processes for their map.
ENV = "DATAPLANE_PERF_MAP"

#: A function is taken to end at the next one's start, and at most this far after its own.
_MAX_SIZE = 1 << 20


def perf_map_wanted() -> bool:
    """Whether ``DATAPLANE_PERF_MAP`` asks for a map."""
    return os.environ.get(ENV, "") not in ("", "0")


def _functions(lib) -> set[str]:
    names = set()
    for attr in ("_final_module", "_shared_module"):
        mod = getattr(lib, attr, None)
        if mod is None:
            continue
        try:
            names.update(f.name for f in mod.functions if not f.is_declaration)
        except Exception:  # a module numba has already released
            continue
    return names


def write_perf_map(path: str | None = None) -> int:
    """Write the map of every compiled function in this process (default ``/tmp/perf-<pid>.map``);
    returns how many functions it lists."""
    from numba.core.dispatcher import Dispatcher

    addrs: dict[int, str] = {}
    for obj in gc.get_objects():
        if not isinstance(obj, Dispatcher):
            continue
        for cres in list(obj.overloads.values()):
            lib = getattr(cres, "library", None)
            if lib is None:
                continue
            for name in _functions(lib):
                try:
                    a = int(lib.get_pointer_to_function(name))
                except Exception:
                    continue
                if a:
                    addrs.setdefault(a, name)
    starts = sorted(addrs)
    path = path or f"/tmp/perf-{os.getpid()}.map"
    with open(path, "w") as f:
        for i, a in enumerate(starts):
            size = min((starts[i + 1] - a) if i + 1 < len(starts) else _MAX_SIZE, _MAX_SIZE)
            f.write(f"{a:x} {size:x} {addrs[a]}\n")
    log.info("perf map written", path=path, functions=len(starts))
    return len(starts)


def write_perf_map_if_wanted() -> bool:
    """:func:`write_perf_map` when ``DATAPLANE_PERF_MAP`` asks for it (what the datapath processes call once their
    kernels are loaded); whether it wrote one."""
    if not perf_map_wanted():
        return False
    write_perf_map()
    return True
