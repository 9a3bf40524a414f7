"""dataplane: a multiprocess, shared-memory packet dataplane in Python.

Layers call only downward: core -> memory -> lcores -> rings -> net -> vhost, virtio -> ethdev -> config
-> apps -> api (the table, enforced: tests/test_layers.py).
"""

from dataplane._version import __version__

from dataplane import _jitcache

_jitcache.configure()  # before anything imports numba


def __getattr__(name):
    # ``from dataplane import Engine`` without importing numba for every ``import dataplane``
    if name == "Engine":
        from dataplane.api import Engine

        return Engine
    raise AttributeError(f"module 'dataplane' has no attribute {name!r}")
