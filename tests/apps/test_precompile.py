"""``dataplane precompile``: the loop's common shapes go into the cache; a second run compiles nothing."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _precompile(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "dataplane.cli", "precompile", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.timeout(3000)  # a cold cache compiles the loop (minutes); .ci/setup has already run it
def test_precompile_fills_the_cache_and_a_second_run_compiles_nothing():
    first = _precompile("--queues", "1,2")
    assert first.returncode == 0, first.stdout + first.stderr
    for q in ("2 ports x 1 queue: ready", "2 ports x 2 queues: ready"):
        assert q in first.stdout, first.stdout
    again = _precompile("--queues", "1,2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "dataplane: compiling" not in again.stderr and "dataplane: compiled" not in again.stderr, again.stderr
    assert "2 ports x 2 queues: ready" in again.stdout


@pytest.mark.parametrize("queues", ["0", "x", "1,,2", "65"])
def test_bad_queue_counts_are_refused(queues):
    r = _precompile("--queues", queues, timeout=120)
    assert r.returncode == 2 and "--queues" in r.stderr and "1..64" in r.stderr, r.stderr
