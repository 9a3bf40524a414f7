"""What every bench that compares ours with a reference (DPDK, qemu-storage-daemon, ...) shares.

The rule (issue 15, "honest headlines and stable ratios"):

* A row is one configuration (for example ``io packed 64B``).  It is measured
  by alternating ours and the reference, ``rounds`` times each: ours, ref,
  ours, ref, ours, ref.  The row's figures are the *medians* of each side's
  runs and its ratio is the ratio of the medians, so one change of host
  placement (another job landing on a cpu for a minute) does not decide it.
* The ratio reads "above 1: ours is ahead": ours ÷ ref for a rate
  (packets/s, IOPS), ref ÷ ours for a cost (seconds, cycles).
* Every row's runs, medians and ratio are printed in one table.
* The last two lines are the headline: ``worst_row=<name>`` and
  ``speed_ratio=<the minimum of the rows' ratios>``.  A row whose ratio
  cannot be computed (a side measured nothing) is the worst: ``nan``.

Used by bench/vhost_perf.py, bench/virtio_user_perf.py, bench/pvp.py,
bench/virtqueue_perf.py, bench/blk_perf.py, bench/ring_perf.py and
bench/migration.py (they import it as ``bench_common``: a script's own
directory is first on ``sys.path``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable

NAN = float("nan")


def median(values: Iterable[float]) -> float:
    """The median, ``nan`` for no values."""
    values = list(values)
    return statistics.median(values) if values else NAN


@dataclass
class Row:
    """One configuration's figures: every run of ours and of the reference, in the order taken."""

    name: str
    ours: list[float] = field(default_factory=list)
    ref: list[float] = field(default_factory=list)
    higher_is_better: bool = True  # a rate (True) or a cost such as seconds or cycles (False)
    extra: dict[str, str] = field(default_factory=dict)  # more columns for the table, already formatted

    @property
    def ours_median(self) -> float:
        return median(self.ours)

    @property
    def ref_median(self) -> float:
        return median(self.ref)

    @property
    def ratio(self) -> float:
        """The medians' ratio, above 1 when ours is ahead; ``nan`` when either median is missing or not positive."""
        o, r = self.ours_median, self.ref_median
        if not (o > 0 and r > 0):  # also false for nan
            return NAN
        return o / r if self.higher_is_better else r / o


def alternate(
    name: str,
    ours: Callable[[], float],
    ref: Callable[[], float] | None,
    rounds: int,
    *,
    higher_is_better: bool = True,
    unit: str = "Mpps",
    ours_label: str = "ours",
    ref_label: str = "DPDK",
    out: Callable[[str], None] | None = None,
) -> Row:
    """Measures one row: ``ours()``, ``ref()``, ``ours()``, ``ref()``, ... ``rounds`` times each.

    Each call returns one figure (in ``unit``).  ``ref`` None measures ours
    only (a bench's ``--no-dpdk``).  Every figure is printed (``out``,
    default ``print`` flushed) as it is taken, so a long run shows progress.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    if out is None:
        def out(line: str) -> None:
            print(line, flush=True)
    row = Row(name, higher_is_better=higher_is_better)
    for i in range(rounds):
        row.ours.append(float(ours()))
        out(f"  {name}: round {i + 1}/{rounds}: {ours_label} {row.ours[-1]:.3f} {unit}")
        if ref is not None:
            row.ref.append(float(ref()))
            out(f"  {name}: round {i + 1}/{rounds}: {ref_label} {row.ref[-1]:.3f} {unit}")
    return row


def interleave(
    specs: list[tuple[str, Callable[[], float], Callable[[], float] | None]],
    rounds: int,
    *,
    higher_is_better: bool = True,
    unit: str = "Mpps",
    out: Callable[[str], None] | None = None,
) -> list[Row]:
    """Like :func:`alternate` for several rows whose *ours* are compared with one another too (split
    against packed): each round measures every row once (its ours, then its reference) before the
    next round starts, so the rows see the same host placement as often as ours sees the reference."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    rows = [Row(name, higher_is_better=higher_is_better) for name, _, _ in specs]
    for i in range(rounds):
        for row, (name, ours, ref) in zip(rows, specs):
            one = alternate(name, ours, ref, 1, higher_is_better=higher_is_better, unit=unit,
                            out=lambda line: None)
            row.ours += one.ours
            row.ref += one.ref
            line = f"  {name}: round {i + 1}/{rounds}: ours {row.ours[-1]:.3f} {unit}"
            if ref is not None:
                line += f", reference {row.ref[-1]:.3f} {unit}"
            (out or (lambda t: print(t, flush=True)))(line)
    return rows


def worst(rows: Iterable[Row]) -> Row | None:
    """The row with the least ratio (the first one whose ratio is ``nan``, if any); None without rows."""
    rows = list(rows)
    if not rows:
        return None
    for row in rows:
        if math.isnan(row.ratio):
            return row
    return min(rows, key=lambda r: r.ratio)


def _fmt(x: float, digits: int) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def table_lines(rows: Iterable[Row], *, unit: str = "Mpps", ours_label: str = "ours", ref_label: str = "DPDK",
                digits: int = 2) -> list[str]:
    """A Markdown table: per row, each side's runs and median, and the ratio of the medians."""
    rows = list(rows)
    extras: list[str] = []
    for row in rows:
        extras += [k for k in row.extra if k not in extras]
    head = ["row", f"{ours_label} runs", f"{ours_label} median {unit}".strip(), f"{ref_label} runs",
            f"{ref_label} median {unit}".strip(), "ratio", *extras]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row.name,
            " ".join(_fmt(x, digits) for x in row.ours) or "-",
            _fmt(row.ours_median, digits),
            " ".join(_fmt(x, digits) for x in row.ref) or "-",
            _fmt(row.ref_median, digits),
            _fmt(row.ratio, 2),
            *(row.extra.get(k, "") for k in extras),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    directions = {row.higher_is_better for row in rows}
    if directions == {True}:
        lines.append(f"(ratio: {ours_label} median ÷ {ref_label} median; above 1: {ours_label} ahead)")
    elif directions == {False}:
        lines.append(f"(ratio: {ref_label} median ÷ {ours_label} median, a cost; above 1: {ours_label} ahead)")
    elif directions:
        lines.append(f"(ratio of the medians, oriented so that above 1 means {ours_label} is ahead)")
    return lines


def headline_lines(rows: Iterable[Row]) -> list[str]:
    """The last two lines of a bench: ``worst_row=<name>`` and ``speed_ratio=<its ratio>``."""
    row = worst(rows)
    if row is None:
        return ["worst_row=none", "speed_ratio=nan"]
    return [f"worst_row={row.name}", f"speed_ratio={row.ratio:.3f}"]


def print_table(rows: Iterable[Row], **kw) -> None:
    print("\n".join(table_lines(rows, **kw)), flush=True)


def print_headline(rows: Iterable[Row]) -> None:
    """Prints the headline; call it last."""
    print("\n".join(headline_lines(rows)), flush=True)


def read_headline(text: str) -> tuple[str, float]:
    """(worst row, speed ratio) from a bench's output: its last two non-empty lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[-2].startswith("worst_row=") or not lines[-1].startswith("speed_ratio="):
        raise ValueError("the output does not end with worst_row=... and speed_ratio=...")
    return lines[-2].split("=", 1)[1], float(lines[-1].split("=", 1)[1])
