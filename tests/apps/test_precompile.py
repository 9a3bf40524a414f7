"""``dataplane precompile``: the loop's common shapes go into the cache; a second run compiles nothing."""

from __future__ import annotations

import importlib.util
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


def test_precompile_writes_the_bytecode_of_every_module(tmp_path):
    """With PYTHONDONTWRITEBYTECODE set the interpreter never writes .pyc files, and every start compiled
    dataplane's modules from source; precompile writes them, and imports then find them current."""
    import shutil

    tree = tmp_path / "dataplane"
    shutil.copytree(ROOT / "dataplane", tree, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", "from dataplane._jitcache import compile_bytecode; print(compile_bytecode())"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sources = sorted(tree.rglob("*.py"))
    assert int(r.stdout.split()[-1]) == len(sources) > 100
    missing = [str(p) for p in sources if not os.path.exists(importlib.util.cache_from_source(str(p)))]
    assert not missing, missing
    # an import in a PYTHONDONTWRITEBYTECODE process loads them: no module compiled from source
    probe = ("import sys, importlib.machinery as m\n"
             "seen = []\n"
             "orig = m.SourceFileLoader.source_to_code\n"
             "m.SourceFileLoader.source_to_code = lambda self, *a, **k: (seen.append(self.name), orig(self, *a, **k))[1]\n"
             "import dataplane.apps.engine\n"
             "print([n for n in seen if n.startswith('dataplane')])")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


@pytest.mark.parametrize("queues", ["0", "x", "1,,2", "65"])
def test_bad_queue_counts_are_refused(queues):
    r = _precompile("--queues", queues, timeout=120)
    assert r.returncode == 2 and "--queues" in r.stderr and "1..64" in r.stderr, r.stderr
