"""The numba cache stamp: a kernel's entry goes stale exactly when a module it can see changes."""

import os
import textwrap

import pytest

import dataplane
from dataplane import _jitcache

ROOT = os.path.dirname(dataplane.__file__)


def rel(paths):
    return {os.path.relpath(p, ROOT) for p in paths}


def test_closure_follows_imports_but_not_the_package_facade():
    files = rel(_jitcache.closure_files(os.path.join(ROOT, "rings", "split.py")))
    assert {"rings/split.py", "rings/virtqueue.py", "rings/atomics.py", "rings/jit.py"} <= files
    # dataplane/__init__.py imports the whole engine; following it would make every edit global
    assert "__init__.py" not in files
    assert not any(f.startswith(("apps/", "vhost/", "virtio/")) for f in files)


@pytest.fixture
def scratch_pkg():
    """A throwaway subpackage of dataplane, removed afterwards."""
    d = os.path.join(ROOT, "_scratch_jitcache_test")
    os.makedirs(d)
    open(os.path.join(d, "__init__.py"), "w").close()
    try:
        yield d
    finally:
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)


def write(path, text):
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))


def test_stamp_changes_with_a_dependency_and_only_with_one(scratch_pkg):
    a, b, c = (os.path.join(scratch_pkg, n + ".py") for n in "abc")
    write(a, """
        from . import b
        def f():
            from dataplane._scratch_jitcache_test.c import g  # an import inside a function counts
            return g
    """)
    write(b, "X = 1\n")
    write(c, "def g(): return 1\n")
    unrelated = os.path.join(scratch_pkg, "d.py")
    write(unrelated, "Y = 1\n")

    assert rel(_jitcache.closure_files(a)) >= {"_scratch_jitcache_test/b.py", "_scratch_jitcache_test/c.py"}
    before = _jitcache.closure_stamp(a)
    write(unrelated, "Y = 2\n")
    assert _jitcache.closure_stamp(a) == before
    write(c, "def g(): return 2\n")
    assert _jitcache.closure_stamp(a) != before


def test_numba_uses_the_closure_stamp():
    from numba.core import caching

    locator = caching.CacheImpl._locator_classes[0]
    assert locator.get_source_stamp is not caching.UserProvidedCacheLocator.get_source_stamp
    assert os.environ["NUMBA_CACHE_DIR"].endswith(_jitcache._CACHE_SUBDIR)


def test_facts_are_kept_for_the_next_process_and_redone_when_a_file_changes(scratch_pkg, tmp_path, monkeypatch):
    import subprocess
    import sys

    a, b = (os.path.join(scratch_pkg, n + ".py") for n in "ab")
    write(a, "from . import b\n")
    write(b, "X = 1\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    stamp = (f"from dataplane import _jitcache; print(_jitcache.closure_stamp({a!r})); "
             "print(_jitcache._file_facts.cache_info().misses)")  # misses: files parsed in that process

    def run():
        out = subprocess.run([sys.executable, "-c", stamp], env=env, capture_output=True, text=True, check=True)
        s, misses = out.stdout.split()
        return s, int(misses)

    first, parsed = run()
    assert parsed >= 2 and os.path.isfile(tmp_path / _jitcache._FACTS_FILE)
    again, parsed = run()
    assert again == first and parsed == 0  # nothing parsed: the stored facts answered
    st = os.stat(b)
    write(b, "X = 2\n")  # same size, new content and mtime
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed, parsed = run()
    assert changed != first and parsed == 1


def test_init_target_loads_the_registries_without_scipy_and_jitted_dot_still_works():
    """The EAL loads numba's target before it forks the lcores; numba's BLAS probe (an import of scipy.linalg,
    most of the load's time) is skipped, and np.dot in a kernel still works (it imports scipy when typed)."""
    import subprocess
    import sys

    code = textwrap.dedent("""
        import importlib.util, sys
        from dataplane._jitcache import init_target
        init_target()
        import numba.np.arraymath as am
        print("registries", "numba.np.arrayobj" in sys.modules, "probe_left", "scipy.linalg.cython_blas" in sys.modules)
        print("scipy_linalg", "scipy.linalg" in sys.modules, "have_scipy", importlib.util.find_spec("scipy") is not None)
        import numba, numpy as np
        @numba.njit
        def f(a, b):
            return np.dot(a, b)
        print("dot", f(np.arange(3.0), np.arange(3.0)))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(dataplane.__file__))))
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[out.index("registries") + 1] == "True" and out[out.index("probe_left") + 1] == "False"
    assert out[out.index("scipy_linalg") + 1] == "False"
    if out[out.index("have_scipy") + 1] == "True":
        assert out[out.index("dot") + 1] == "5.0"
