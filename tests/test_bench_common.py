"""bench/bench_common.py: alternation order, medians, ratio of medians, the worst row and the headline."""

from __future__ import annotations

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))

import bench_common as bc  # noqa: E402


def test_alternate_runs_ours_then_reference_each_round():
    calls = []
    ours_figs = iter([10.0, 30.0, 20.0])
    ref_figs = iter([5.0, 100.0, 10.0])

    def ours():
        calls.append("ours")
        return next(ours_figs)

    def ref():
        calls.append("ref")
        return next(ref_figs)

    row = bc.alternate("io packed 64B", ours, ref, 3, out=lambda line: None)
    assert calls == ["ours", "ref", "ours", "ref", "ours", "ref"]
    assert row.ours == [10.0, 30.0, 20.0] and row.ref == [5.0, 100.0, 10.0]
    # medians, not means: the 100 outlier does not decide the row
    assert row.ours_median == 20.0 and row.ref_median == 10.0
    assert row.ratio == 2.0


def test_alternate_without_reference_and_bad_rounds():
    row = bc.alternate("x", lambda: 1.0, None, 2, out=lambda line: None)
    assert row.ours == [1.0, 1.0] and row.ref == []
    assert math.isnan(row.ratio)
    with pytest.raises(ValueError):
        bc.alternate("x", lambda: 1.0, None, 0)


def test_cost_rows_invert_the_ratio():
    row = bc.Row("total ms", ours=[200.0, 100.0, 300.0], ref=[400.0, 400.0, 100.0], higher_is_better=False)
    assert row.ratio == 2.0  # reference 400 ms ÷ ours 200 ms: ours twice as fast


def test_worst_row_is_the_minimum_ratio_and_names_it():
    rows = [
        bc.Row("rxonly split 64B", ours=[1.08], ref=[1.0]),
        bc.Row("rxonly packed 64B", ours=[0.53], ref=[1.0]),
        bc.Row("io split 1518B", ours=[1.34], ref=[1.0]),
    ]
    assert bc.worst(rows).name == "rxonly packed 64B"
    assert bc.headline_lines(rows) == ["worst_row=rxonly packed 64B", "speed_ratio=0.530"]
    assert bc.read_headline("table\n" + "\n".join(bc.headline_lines(rows)) + "\n") == ("rxonly packed 64B", 0.53)


def test_a_row_without_a_figure_is_the_worst():
    rows = [bc.Row("a", ours=[2.0], ref=[1.0]), bc.Row("b", ours=[2.0], ref=[0.0]), bc.Row("c", ours=[0.1], ref=[1.0])]
    assert bc.worst(rows).name == "b"
    assert bc.headline_lines(rows) == ["worst_row=b", "speed_ratio=nan"]
    assert bc.headline_lines([]) == ["worst_row=none", "speed_ratio=nan"]
    with pytest.raises(ValueError):
        bc.read_headline("speed_ratio=1.0\n")


def test_table_has_every_row_with_runs_medians_ratio_and_extra_columns():
    rows = [
        bc.Row("split 64B", ours=[3.0, 1.0, 2.0], ref=[1.0, 1.0, 1.0], extra={"cpu": "0.07"}),
        bc.Row("packed 64B", ours=[1.0], ref=[4.0]),
    ]
    lines = bc.table_lines(rows, unit="Mpps")
    assert lines[0] == "| row | ours runs | ours median Mpps | DPDK runs | DPDK median Mpps | ratio | cpu |"
    assert lines[2] == "| split 64B | 3.00 1.00 2.00 | 2.00 | 1.00 1.00 1.00 | 1.00 | 2.00 | 0.07 |"
    assert lines[3] == "| packed 64B | 1.00 | 1.00 | 4.00 | 4.00 | 0.25 |  |"
    assert "above 1" in lines[-1]


def test_interleave_takes_every_row_once_per_round():
    calls = []

    def f(tag, value):
        def g():
            calls.append(tag)
            return value
        return g

    rows = bc.interleave([("split", f("s", 10.0), f("S", 5.0)), ("packed", f("p", 9.0), None)], 2,
                         out=lambda line: None)
    assert calls == ["s", "S", "p", "s", "S", "p"]
    assert [r.name for r in rows] == ["split", "packed"]
    assert rows[0].ours == [10.0, 10.0] and rows[0].ref == [5.0, 5.0] and rows[0].ratio == 2.0
    assert rows[1].ours == [9.0, 9.0] and rows[1].ref == []
    with pytest.raises(ValueError):
        bc.interleave([("x", f("x", 1.0), None)], 0)
