"""The embedding API: ``from dataplane import Engine``.

::

    from dataplane import Engine

    with Engine.from_toml("configs/loopback.toml") as eng:   # or Engine(config) / Engine(toml_text)
        eng.start()
        time.sleep(1)
        print(eng.stats())          # ports and forwarding counters, read live from shared memory
    # leaving the block stops forwarding and releases lcores, memory and sockets

An ``Engine`` owns one EAL (lcore processes and shared memory: one per
process), the ports of the config's ``[[port]]`` tables and the streams of
its ``[forward]`` table, exactly as ``dataplane run`` builds them.

A custom forwarding function replaces the mode::

    @numba.njit
    def fwd(mp, lcore, pkts, n, params):   # -> how many of pkts[:n] to transmit
        ...
    Engine(config, fwd_fn=fwd)

See :func:`dataplane.apps.fwd_loop.make_custom_loop` for the contract; the
function is compiled into the forwarding loop when forwarding starts.
"""

from __future__ import annotations

from dataplane.apps.embedded import Engine

__all__ = ["Engine"]
