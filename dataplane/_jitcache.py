"""Where numba keeps compiled code: a directory per version of dataplane's sources.

numba's on-disk cache checks only the timestamp of the file that defines a
function, not of the modules whose kernels it inlines (rings into mempools,
mempools into poll loops).  A stale entry then runs old code.  Keying the
whole cache on a hash of every source file makes any change start afresh;
directories unused for an hour are pruned, keeping the newest few.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time

_KEEP = 3


def _source_hash(root: str) -> str:
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def configure() -> None:
    """Point NUMBA_CACHE_DIR at this source version's directory (unless the user set it)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    root = os.path.dirname(os.path.abspath(__file__))
    base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dataplane-numba")
    path = os.path.join(base, _source_hash(root))
    try:
        os.makedirs(path, exist_ok=True)
        os.utime(path)
        others = sorted(
            (os.path.join(base, d) for d in os.listdir(base) if os.path.join(base, d) != path),
            key=lambda p: os.stat(p).st_mtime,
        )
        now = time.time()
        for old in others[: max(0, len(others) - (_KEEP - 1))]:
            if now - os.stat(old).st_mtime > 3600:  # not one another process may be using
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return  # unwritable home: numba falls back to __pycache__
    os.environ["NUMBA_CACHE_DIR"] = path
    import sys

    if "numba" in sys.modules:  # imported before us: make it re-read the environment
        from numba.core import config

        config.reload_config()
