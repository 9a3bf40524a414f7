"""``dataplane precompile``: compile the forwarding loop and every port kind's burst entries into the cache, now.

The loop takes its queues as rows of arrays (:func:`~dataplane.apps.fwd_loop.loop_args`): one
compiled loop for every count of ports, queues and streams.  Each port kind's Rx and Tx bursts
are entries of their own (:mod:`dataplane.ethdev.queue`), which an engine compiles for the kinds
its ports use.  This command builds an engine of two ``net_ring`` ports (1 and then 2 queues:
the second only checks that a new shape compiles nothing) and compiles the entries of every
kind, so that afterwards any configuration of known port kinds starts in seconds.  Then the
emulated cards' and the vDPA simulators' kernels (:func:`precompile_devices`; ``--no-cards``
leaves them out).
It also writes the bytecode of every dataplane module (:func:`dataplane._jitcache.compile_bytecode`).  ``.ci/setup`` runs
it.  It shows compile progress; when everything is cached it takes about a second per shape.
"""

from __future__ import annotations

import os
import sys
import time

from dataplane.lcores.usage import UsageParser

__all__ = ["main", "QUEUES", "CARD_VFS", "precompile_devices"]

#: Queues per port of the shapes compiled: 2 ports x 1 queue (2 streams), 2 ports x 2 queues (4 streams).
QUEUES = (1, 2)
#: VF counts of the emulated cards whose switch is compiled (``dataplane-nic start ... --vfs N``).
CARD_VFS = (1, 2, 3, 4)

_CONFIG = """
[eal]
lcores = "0@{cpu},1@{cpu2}"
no_huge = true
memory_mb = 256
file_prefix = "dataplane_precompile_{pid}"

[[port]]
vdev = "net_ring0,queues={q}"

[[port]]
vdev = "net_ring1,queues={q}"

[forward]
mode = "io"
rxq = {q}
txq = {q}
"""


def main(argv: list[str] | None = None) -> int:
    p = UsageParser("dataplane precompile", head="[options]",
                    description="Compile the forwarding loop and every port kind's and forwarding mode's entries into the numba cache.")
    p.add_argument("--queues", default=",".join(map(str, QUEUES)), metavar="N[,N...]",
                   help="queues per port of the shapes to compile (default: %(default)s)")
    p.add_argument("--no-cards", dest="cards", action="store_false",
                   help="leave out the emulated cards' (dataplane-nic) and the vDPA simulators' kernels")
    try:
        opts = p.parse_args(list(sys.argv[1:] if argv is None else argv))
        queues = [int(q) for q in opts.queues.split(",")]
        if not all(1 <= q <= 64 for q in queues):
            raise ValueError
    except SystemExit as e:
        return int(e.code or 0)
    except ValueError:
        print(f"dataplane precompile: --queues {opts.queues!r}: give numbers 1..64, comma separated", file=sys.stderr)
        return 2
    from dataplane._jitcache import compile_bytecode

    n = compile_bytecode()
    print(f"dataplane precompile: bytecode of {n} modules written", flush=True)
    from dataplane.apps import engine as engine_mod
    from dataplane.apps.embedded import Engine
    from dataplane.ethdev.queue import ENTRY_KEYS
    from dataplane.compile_progress import show_compile_progress
    from dataplane.config import load_config

    cpus = sorted(os.sched_getaffinity(0))
    for q in queues:
        cfg = load_config(_CONFIG.format(cpu=cpus[0], cpu2=cpus[-1], pid=os.getpid(), q=q))
        t0 = time.monotonic()
        with show_compile_progress():
            eng = Engine(cfg)
            try:
                engine_mod.warm_up_entries(ENTRY_KEYS)
            finally:
                eng.close()
        print(f"dataplane precompile: 2 ports x {q} queue{'s' if q > 1 else ''}: ready in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
    if opts.cards:
        t0 = time.monotonic()
        with show_compile_progress():
            precompile_devices()
        print(f"dataplane precompile: emulated cards ({', '.join(map(str, CARD_VFS))} VFs) and vDPA simulators: "
              f"ready in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


def precompile_devices() -> None:
    """Compile (or load) what ``dataplane-nic`` and the vDPA simulators compile at their start: the
    card's kernels, its switch for :data:`CARD_VFS` VFs (one specialisation per VF count), the mlx5
    card's RSS selection, and vdpasim_net's and vdpasim_blk's kernels."""
    from dataplane.nic import kernels as nic_kernels
    from dataplane.nic.mlx5.steer import warm_up_steer
    from dataplane.vdpa.sim.kernels import warm_up as sim_warm_up

    nic_kernels.warm_up()
    for nvfs in CARD_VFS:
        nic_kernels.warm_up_switch(nvfs)
    warm_up_steer()
    for kind in ("net", "blk"):
        sim_warm_up(kind)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
