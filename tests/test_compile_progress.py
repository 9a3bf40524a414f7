"""The compile progress line: what is compiling, how many kernels are done (of how many last time), for how long."""

import io
import json
import os
import types

import numba

from dataplane.compile_progress import CompileProgress, show_compile_progress


def _fresh_kernels():
    """A new two-level kernel (never cached, so numba compiles it now)."""

    @numba.njit
    def inner(x):
        return x * 3 + 1

    @numba.njit
    def outer_entry(n):
        s = 0
        for i in range(n):
            s += inner(i)
        return s

    return outer_entry


def test_progress_names_the_entry_point_counts_kernels_and_records_the_count(tmp_path):
    out = io.StringIO()
    with show_compile_progress(out, period=0.01, quiet_for=0.0) as progress:
        progress.record_dir = str(tmp_path)
        assert _fresh_kernels()(4) == 22
    text = out.getvalue()
    assert "compiling _fresh_kernels.<locals>.outer_entry" in text, text
    assert "kernels done" in text
    assert text.rstrip().splitlines()[-1].startswith("dataplane: compiled _fresh_kernels.<locals>.outer_entry: 2 kernels")
    assert progress.lines >= 2
    with open(os.path.join(tmp_path, "compile-counts.json")) as f:
        assert json.load(f) == {"_fresh_kernels.<locals>.outer_entry": 2}

    # the next compile of that entry point knows how many kernels to expect
    progress = CompileProgress(io.StringIO(), quiet_for=60.0, record_dir=str(tmp_path))
    top, inner = _event("_fresh_kernels.<locals>.outer_entry"), _event("_fresh_kernels.<locals>.inner")
    progress.compile_start(top)
    assert "0 kernels done, now _fresh_kernels.<locals>.outer_entry itself" in progress.status()
    progress.compile_start(inner)
    assert "now _fresh_kernels.<locals>.inner" in progress.status()
    progress.compile_end(inner)
    assert "1/2 kernels done" in progress.status()
    progress.compile_end(top)


def _event(qualname):
    """What numba's ``numba:compile`` event carries that the progress reads: the dispatcher's py_func."""
    fn = types.SimpleNamespace(__qualname__=qualname)
    return types.SimpleNamespace(data={"dispatcher": types.SimpleNamespace(py_func=fn)})


def test_a_quick_compile_prints_nothing_and_listeners_are_removed(tmp_path):
    out = io.StringIO()
    with show_compile_progress(out, quiet_for=60.0) as progress:
        progress.record_dir = str(tmp_path)
        _fresh_kernels()(3)
    assert out.getvalue() == "" and progress.lines == 0
    _fresh_kernels()(3)  # outside the block: not counted
    assert progress.lines == 0
