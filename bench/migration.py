#!/usr/bin/env python3
"""Live-migration figures: a QEMU guest under TCP load moved between two of our back-ends, against
the same guest moved between two ``dpdk-testpmd`` back-ends, in one harness and one run.

Usage::

    python bench/migration.py [--runs N] [--mib 4] [--packed]

Each run is :func:`~dataplane.testing.linux_guest.net_migration`: a Linux guest
(TCG) sends TCP data to itself through a ``5tswap`` back-end in md5-checked
rounds of ``--mib`` MiB; after round 2 QEMU live-migrates it (``migrate -d
unix:...``, max-bandwidth 4G) to a second QEMU on a second back-end. Kinds
alternate (ours, testpmd, ours, ...) so that a drift in machine load hits both.
QEMU's ``info migrate`` gives the total time and the downtime; a run whose
migration did not complete, or whose guest failed a round, is reported and left
out of the medians.

Our back-ends run on lcores 0-1 each; dpdk-testpmd on cpu 1 and 0. On a 2-cpu
machine the guest's TCG threads share those cpus, so the figures are of the
whole set-up, not of a back-end alone. The LAST line is
``speed_ratio=<testpmd median total time ÷ ours>`` (above 1: ours migrates faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane.testing.linux_guest import guest_image, net_migration  # noqa: E402
from dataplane.testing.testpmd import TESTPMD  # noqa: E402

KINDS = ("dataplane", "testpmd")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="migrations per back-end kind (default 3)")
    ap.add_argument("--mib", type=int, default=4, help="MiB per TCP round (default 4)")
    ap.add_argument("--packed", action="store_true", help="packed ring (testpmd's packed migration is unreliable)")
    args = ap.parse_args(argv)
    if TESTPMD is None:
        print("dpdk-testpmd is not installed (Debian package dpdk)", file=sys.stderr)
        return 2
    image = guest_image()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    figures = {k: [] for k in KINDS}
    print(f"{'run':>3} {'back-end':<10} {'status':<10} {'total ms':>9} {'downtime ms':>12} {'rounds':>6}")
    for i in range(args.runs):
        for kind in KINDS:
            n = net_migration(image, kind, packed=args.packed, mib=args.mib)
            m, r = n.migration, n.result
            ok = m.status == "completed" and r.passed
            print(f"{i + 1:>3} {kind:<10} {m.status:<10} {m.total_ms!s:>9} {m.downtime_ms!s:>12} "
                  f"{r.values.get('rounds', '?'):>6}" + ("" if ok else f"  FAILED: {r.line}"), flush=True)
            if ok and m.total_ms is not None and m.downtime_ms is not None:
                figures[kind].append((m.total_ms, m.downtime_ms))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    med = {}
    print(f"\n| back-end | runs ok | median total ms | median downtime ms |\n|---|---|---|---|")
    for kind in KINDS:
        f = figures[kind]
        if f:
            med[kind] = (statistics.median(t for t, _ in f), statistics.median(d for _, d in f))
            print(f"| {kind} | {len(f)}/{args.runs} | {med[kind][0]:.0f} | {med[kind][1]:.0f} |")
        else:
            print(f"| {kind} | 0/{args.runs} | - | - |")
    if len(med) < 2:
        print("speed_ratio=nan")
        return 1
    print(f"downtime ratio (testpmd ÷ ours): {med['testpmd'][1] / max(med['dataplane'][1], 1):.2f}")
    print(f"speed_ratio={med['testpmd'][0] / med['dataplane'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
