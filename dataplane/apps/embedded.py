"""An engine built from a :class:`~dataplane.config.Config`: its EAL, ports and streams, as one object.

This is what ``dataplane run`` runs and what :mod:`dataplane.api` gives a
Python program (``from dataplane import Engine``; see there for examples).
An ``Engine`` owns one EAL (lcore processes and shared memory: one per
process), the ports of the config's ``[[port]]`` tables and the streams of
its ``[forward]`` table.
"""

from __future__ import annotations

import os
import time

from dataplane.config import Config, load_config

__all__ = ["Engine"]


class Engine:
    """A running dataplane: EAL, ports and forwarding lcores from a :class:`~dataplane.config.Config`."""

    def __init__(self, config: Config | str | os.PathLike | None = None, *, fwd_fn=None, handle_signals: bool = False):
        from dataplane.apps.engine import Engine as _Engine
        from dataplane.lcores.eal import Eal

        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            config = load_config(config)
        self.config = config
        self.eal = Eal(config.eal, handle_signals=handle_signals)
        try:
            vdevs = list(config.eal.vdevs) + [p.vdev for p in config.port]
            self._engine = _Engine(self.eal, config.forward, vdevs, fwd_fn=fwd_fn)
        except BaseException:
            self.eal.close()
            raise
        self._t0 = None

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **kw) -> "Engine":
        """Load ``path`` (a TOML file; errors are :class:`~dataplane.config.ConfigError`) and build the engine."""
        return cls(load_config(path), **kw)

    # -- control -------------------------------------------------------------------
    def start(self, tx_first: int | None = None) -> None:
        """Start forwarding on every forwarding lcore (``tx_first``: bursts each stream sends first;
        default from ``[forward] tx_first``).  Returns once every lcore forwards, its tx_first sent."""
        if tx_first is None:
            tx_first = 1 if self.config.forward.tx_first else 0
        self._engine.start(tx_first=tx_first)
        self._t0 = time.monotonic()

    def stop(self) -> dict:
        """Stop forwarding; returns :meth:`stats`."""
        self._engine.stop()
        return self.stats()

    @property
    def running(self) -> bool:
        return self._engine.running

    @property
    def ports(self) -> list:
        return self._engine.ports

    def stats(self) -> dict:
        """Live counters: ``forward`` (rx, tx, dropped, per stream) and ``ports`` (per port: stats, link)."""
        e = self._engine
        return dict(
            forward=e.forward_stats(),
            ports=[dict(name=p.name, link=e.link_up(i), **e.port_stats(i)) for i, p in enumerate(e.ports)],
            seconds=0.0 if self._t0 is None else time.monotonic() - self._t0,
        )

    def xstats(self, port: int) -> dict[str, int]:
        return self._engine.xstats(port)

    def close(self) -> None:
        """Stop forwarding, close ports, stop lcores, release memory (idempotent)."""
        eng, self._engine = getattr(self, "_engine", None), None
        try:
            if eng is not None:
                eng.close()
        finally:
            if getattr(self, "eal", None) is not None:
                self.eal.close()
                self.eal = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
