"""``dataplane.perf_map``: perf's map of the compiled kernels, so that ``perf report`` names numba code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import dataplane

ROOT = os.path.dirname(os.path.dirname(dataplane.__file__))


def test_the_map_covers_a_compiled_kernel_under_its_name(tmp_path):
    out = tmp_path / "perf.map"
    code = textwrap.dedent(f"""
        import numba, numpy as np
        from dataplane.perf_map import write_perf_map

        @numba.njit
        def perf_map_probe_kernel(a):
            s = 0
            for x in a:
                s += x * 3
            return s

        perf_map_probe_kernel(np.arange(10))
        cres = next(iter(perf_map_probe_kernel.overloads.values()))
        print(write_perf_map({str(out)!r}), cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    n, addr = (int(x) for x in r.stdout.split())
    rows = [line.split(" ", 2) for line in out.read_text().splitlines()]
    assert len(rows) == n > 0
    starts = [int(a, 16) for a, _s, _n in rows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    hit = [name for a, s, name in rows if int(a, 16) <= addr < int(a, 16) + int(s, 16)]
    assert len(hit) == 1 and "perf_map_probe_kernel" in hit[0], hit


def test_only_a_set_nonzero_variable_asks_for_it(monkeypatch):
    from dataplane import perf_map

    monkeypatch.delenv(perf_map.ENV, raising=False)
    assert not perf_map.perf_map_wanted()
    monkeypatch.setenv(perf_map.ENV, "0")
    assert not perf_map.perf_map_wanted()
    monkeypatch.setenv(perf_map.ENV, "1")
    assert perf_map.perf_map_wanted()


def test_write_if_wanted_writes_only_when_asked(monkeypatch, tmp_path):
    from dataplane import perf_map

    written = []
    monkeypatch.setattr(perf_map, "write_perf_map", lambda path=None: written.append(path) or 1)
    monkeypatch.delenv(perf_map.ENV, raising=False)
    assert perf_map.write_perf_map_if_wanted() is False and written == []
    monkeypatch.setenv(perf_map.ENV, "1")
    assert perf_map.write_perf_map_if_wanted() is True and written == [None]
