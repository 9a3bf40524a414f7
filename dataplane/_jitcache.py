"""Where numba keeps compiled code, and when a cached kernel is stale.

numba's on-disk cache stamps an entry with a hash of the one file that defines
the function.  A kernel that inlines kernels from other modules (rings into
mempools, mempools into poll loops) would then run old code after an edit to
one of those modules.  So dataplane stamps each entry with a hash of the
defining file *and every dataplane module it imports, transitively*: an edit
recompiles exactly the kernels that can see it, and nothing else.

The import graph is read from the source (``ast``), including imports inside
functions, so the stamp does not depend on what happens to be imported at run
time.  Files are hashed by content.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time

_PKG = "dataplane"
_ROOT = os.path.dirname(os.path.abspath(__file__))  # .../dataplane
_PARENT = os.path.dirname(_ROOT)
_CACHE_SUBDIR = "closure-v1"


def _module_path(modname: str) -> str | None:
    """The source file of a dataplane module, or None when it is not one."""
    parts = modname.split(".")
    if parts[0] != _PKG:
        return None
    base = os.path.join(_PARENT, *parts)
    for cand in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(cand):
            return cand
    return None


def _package_of(path: str) -> list[str]:
    """Dotted package of a file under dataplane (``[]`` when outside it)."""
    rel = os.path.relpath(os.path.abspath(path), _PARENT)
    if rel.startswith(".."):
        return []
    parts = rel[:-3].split(os.sep) if rel.endswith(".py") else rel.split(os.sep)
    if parts[-1] == "__init__":
        return parts[:-1]
    return parts[:-1]


@functools.lru_cache(maxsize=None)
def _file_facts(path: str, mtime_ns: int, size: int) -> tuple[bytes, tuple[str, ...]]:
    """(content hash, dataplane files it imports) of one source file."""
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).digest()
    try:
        tree = ast.parse(data, filename=path)
    except SyntaxError:
        return digest, ()
    pkg = _package_of(path)
    deps: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not pkg:
                    continue
                anchor = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # "from X import a": the module X.a when a is one, else X itself
            for a in node.names:
                sub = _module_path(f"{base}.{a.name}")
                dep = sub if sub is not None else _module_path(base)
                if dep is not None:
                    deps.add(dep)
            continue
        for name in names:
            # a package's __init__ is a facade: follow only the module named
            p = _module_path(name)
            if p is not None:
                deps.add(p)
    deps.discard(path)
    return digest, tuple(sorted(deps))


_FACTS_FILE = "source-facts.json"  # in the cache directory: each file's facts, by (mtime, size)
_store: dict | None = None  # path -> [mtime_ns, size, sha256 hex, deps]; loaded on first use
_store_dirty = False


def _facts_store() -> dict:
    """The facts of earlier runs, so a warm start reads one file instead of parsing every module
    (about half a second at import time: numba asks for every cached kernel's stamp)."""
    global _store
    if _store is None:
        _store = {}
        base = os.environ.get("NUMBA_CACHE_DIR")
        if base:
            try:
                with open(os.path.join(base, _FACTS_FILE)) as f:
                    data = json.load(f)
                if isinstance(data, dict):
                    _store = data
            except (OSError, ValueError):
                pass
            atexit.register(_save_facts)
    return _store


def _save_facts() -> None:
    base = os.environ.get("NUMBA_CACHE_DIR")
    if not (_store_dirty and base and _store is not None):
        return
    path = os.path.join(base, _FACTS_FILE)
    tmp = f"{path}.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(_store, f)
        os.replace(tmp, path)
    except OSError:
        pass


def _facts(path: str) -> tuple[bytes, tuple[str, ...]]:
    global _store_dirty
    st = os.stat(path)
    store = _facts_store()
    known = store.get(path)
    if isinstance(known, list) and len(known) == 4 and known[0] == st.st_mtime_ns and known[1] == st.st_size:
        try:
            return bytes.fromhex(known[2]), tuple(known[3])
        except (TypeError, ValueError):
            pass
    digest, deps = _file_facts(path, st.st_mtime_ns, st.st_size)
    store[path] = [st.st_mtime_ns, st.st_size, digest.hex(), list(deps)]
    _store_dirty = True
    return digest, deps


def closure_files(path: str) -> dict[str, bytes]:
    """``path`` and every dataplane module it imports, transitively: file -> content hash."""
    seen: dict[str, bytes] = {}
    todo = [os.path.abspath(path)]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        digest, deps = _facts(p)
        seen[p] = digest
        todo.extend(d for d in deps if d not in seen)
    return seen


def closure_stamp(path: str) -> str:
    """Hash of ``path`` and of every dataplane module it imports, transitively."""
    h = hashlib.sha256()
    for p, digest in sorted(closure_files(path).items()):
        h.update(os.path.relpath(p, _PARENT).encode())
        h.update(digest)
    return h.hexdigest()


def _install_locator() -> None:
    from numba.core import caching

    if getattr(caching, "_dataplane_locator", None) is not None:
        return

    class ClosureStampLocator(caching.UserProvidedCacheLocator):
        """numba's user-directory locator, stamped with the import closure."""

        def get_source_stamp(self):
            return closure_stamp(self._py_file)

    caching.CacheImpl._locator_classes.insert(0, ClosureStampLocator)
    caching._dataplane_locator = ClosureStampLocator


def _prune(base: str, keep: str) -> None:
    """Remove the per-tree-hash directories of earlier versions (unused for an hour)."""
    try:
        now = time.time()
        for d in os.listdir(base):
            p = os.path.join(base, d)
            if p != keep and os.path.isdir(p) and now - os.stat(p).st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)
    except OSError:
        pass


def configure() -> None:
    """Point NUMBA_CACHE_DIR at dataplane's cache (unless the user set it) and
    stamp cache entries with their import closure."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dataplane-numba")
        path = os.path.join(base, _CACHE_SUBDIR)
        try:
            os.makedirs(path, exist_ok=True)
            os.utime(path)
            _prune(base, path)
            os.environ["NUMBA_CACHE_DIR"] = path
        except OSError:
            pass  # unwritable home: numba falls back to __pycache__
    if "numba" in sys.modules:  # imported before us: make it re-read the environment
        from numba.core import config

        config.reload_config()
    _install_locator()


def compile_bytecode() -> int:
    """Write the bytecode (``__pycache__/*.pyc``) of every module of the dataplane package; returns how many
    modules it holds.  Python reads bytecode it finds, but where ``PYTHONDONTWRITEBYTECODE`` is set it never
    writes any, and then every start compiles dataplane's modules from source (0.15-0.3 s).
    ``dataplane precompile`` calls it."""
    import compileall

    root = os.path.dirname(os.path.abspath(__file__))
    compileall.compile_dir(root, quiet=2)
    return sum(1 for _d, _s, files in os.walk(root) for f in files if f.endswith(".py"))


_BLAS_PROBE = "scipy.linalg.cython_blas"


def init_target() -> None:
    """Load numba's CPU target now: its typing and lowering registries (numba imports some 40 modules
    for them) and its runtime, which a process otherwise pays at its first kernel load.  The EAL
    calls it before it forks the lcores, so that they inherit the target instead of each loading it
    again while the start waits for them; the emulated cards and the vDPA simulators' workers call
    it before their kernels.

    Loading the registries, numba probes for scipy's BLAS (``numba.np.arraymath._HAVE_BLAS``) by
    importing ``scipy.linalg``: 0.2 s of the 0.35 s, for kernels that use no BLAS.  The probe is
    made to fail (scipy stays importable afterwards).  What that changes: numba's ``np.correlate``
    and ``np.convolve`` use their plain loop instead of ``np.dot``; ``np.dot`` and ``np.linalg``
    still work in jitted code (they import scipy themselves when first typed)."""
    from numba.core.registry import cpu_target

    probe = _BLAS_PROBE not in sys.modules and "numba.np.arraymath" not in sys.modules
    if probe:
        sys.modules[_BLAS_PROBE] = None  # type: ignore[assignment]  # an import of it fails at once
    try:
        cpu_target.target_context.refresh()
    finally:
        if probe and sys.modules.get(_BLAS_PROBE, 0) is None:
            del sys.modules[_BLAS_PROBE]


class WouldCompile(Exception):
    """Raised inside :func:`load_only` for a kernel that is not in the disk cache."""


@contextlib.contextmanager
def load_only():
    """Within the block a kernel is loaded from the disk cache or not at all: one that numba would
    compile raises :class:`WouldCompile` instead (a process preloading kernels beside another that
    compiles them must not compile them a second time)."""
    from numba.core import event as ev

    class Refuse(ev.Listener):
        def on_start(self, event):
            fn = getattr((event.data or {}).get("dispatcher"), "py_func", None)
            raise WouldCompile(getattr(fn, "__qualname__", "a kernel"))

        def on_end(self, event):
            pass

    listener = Refuse()
    ev.register("numba:compile", listener)
    try:
        yield
    finally:
        ev.unregister("numba:compile", listener)
