"""dataplane: a multiprocess, shared-memory packet dataplane in Python.

Layers call only downward: lcores/memory -> rings -> vhost, virtio, vdpa -> ethdev -> apps.
"""

__version__ = "0.1.0"

from dataplane import _jitcache

_jitcache.configure()  # before anything imports numba
