#!/usr/bin/env python3
"""Live-migration figures: a QEMU guest under TCP load moved between two of our back-ends, against
the same guest moved between two ``dpdk-testpmd`` back-ends, in one harness and one run.

Usage::

    python bench/migration.py [--rounds N] [--mib 4] [--packed]

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
whole set-up, not of a back-end alone. Two rows, total time and downtime, each with
``ratio`` = testpmd's median ÷ ours (above 1: ours migrates faster; bench/bench_common.py).
The line before the last names the worst of the two (``worst_row=downtime ms``), the LAST
line is ``speed_ratio=<its ratio>``: the minimum over the rows.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_common  # noqa: E402  (this script's directory is first on sys.path)
from dataplane.testing.linux_guest import guest_image, net_migration  # noqa: E402
from dataplane.testing.testpmd import TESTPMD  # noqa: E402

KINDS = ("dataplane", "testpmd")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", "--runs", type=int, default=3,
                    help="migrations per back-end kind, alternated (default 3)")
    ap.add_argument("--mib", type=int, default=4, help="MiB per TCP round (default 4)")
    ap.add_argument("--packed", action="store_true", help="packed ring (testpmd's packed migration is unreliable)")
    args = ap.parse_args(argv)
    if TESTPMD is None:
        print("dpdk-testpmd is not installed (Debian package dpdk)", file=sys.stderr)
        return 2
    image = guest_image()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    # ours is dataplane, the reference testpmd; times are costs (ratio = testpmd ÷ ours)
    total = bench_common.Row("total ms", higher_is_better=False)
    downtime = bench_common.Row("downtime ms", higher_is_better=False)
    print(f"{'run':>3} {'back-end':<10} {'status':<10} {'total ms':>9} {'downtime ms':>12} {'rounds':>6}")
    for i in range(args.rounds):
        for kind in KINDS:
            n = net_migration(image, kind, packed=args.packed, mib=args.mib)
            m, r = n.migration, n.result
            ok = m.status == "completed" and r.passed
            print(f"{i + 1:>3} {kind:<10} {m.status:<10} {m.total_ms!s:>9} {m.downtime_ms!s:>12} "
                  f"{r.values.get('rounds', '?'):>6}" + ("" if ok else f"  FAILED: {r.line}"), flush=True)
            if ok and m.total_ms is not None and m.downtime_ms is not None:
                side = "ours" if kind == "dataplane" else "ref"
                getattr(total, side).append(float(m.total_ms))
                getattr(downtime, side).append(float(m.downtime_ms))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"runs completed: dataplane {len(total.ours)}/{args.rounds}, testpmd {len(total.ref)}/{args.rounds}")
    print()
    rows = [total, downtime]
    bench_common.print_table(rows, unit="", ours_label="dataplane", ref_label="testpmd", digits=0)
    bench_common.print_headline(rows)
    return 0 if total.ours and total.ref else 1

if __name__ == "__main__":
    sys.exit(main())
