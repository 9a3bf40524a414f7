"""The driver registry: one registration per port kind (DPDK's ``RTE_PMD_REGISTER_VDEV``).

A :class:`Driver` says everything the rest of dataplane needs to know about
a kind: the devargs prefix its ports are named by (``net_vhost`` for
``net_vhost0``), its :class:`~dataplane.ethdev.port.Port` class (probe,
control, link, statistics, and the main-process lcore hook
:meth:`~dataplane.ethdev.port.Port.place_queue`), the
:data:`~dataplane.ethdev.queue.PortQueue` kind tag its queues carry in the
forwarding loop, and its :class:`~dataplane.ethdev.port.LcorePort` class
(the lcore hook that hands queues to a forwarding loop and takes them back).

The configuration (``PORT_KINDS``, ``[[port]]`` checks) and the engine read
only this registry.  A driver module registers itself when imported
(``register(Driver(...))`` at its end); :data:`DRIVER_MODULES` names the
modules that hold the built-in drivers, imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from dataplane.ethdev.errors import EthdevError
from dataplane.ethdev.port import Port, PortEnv, devargs_of
from dataplane.lcores.eal_args import Devargs

__all__ = ["Driver", "DRIVER_MODULES", "register", "drivers", "port_kinds", "find_driver", "probe"]

#: The modules whose import registers the built-in drivers.
DRIVER_MODULES = ("dataplane.ethdev.vhost", "dataplane.ethdev.virtio_user", "dataplane.ethdev.ring")


@dataclass(frozen=True)
class Driver:
    """One port kind."""

    prefix: str  # devargs name prefix: ports are <prefix>N
    port_class: type  # a Port subclass
    queue_kind: int  # the KIND_* tag of its PortQueue values
    lcore_port: type  # an LcorePort subclass


_DRIVERS: dict[str, Driver] = {}


def register(driver: Driver) -> Driver:
    """Add a port kind; a prefix registers once."""
    if driver.prefix in _DRIVERS and _DRIVERS[driver.prefix] != driver:
        raise ValueError(f"port kind {driver.prefix!r} is already registered")
    if not issubclass(driver.port_class, Port):
        raise TypeError(f"{driver.prefix}: {driver.port_class.__name__} is not a Port")
    _DRIVERS[driver.prefix] = driver
    return driver


def drivers() -> tuple[Driver, ...]:
    """Every registered driver: the built-in ones in :data:`DRIVER_MODULES` order, then the others
    in registration order."""
    for m in DRIVER_MODULES:
        importlib.import_module(m)
    rank = {m: i for i, m in enumerate(DRIVER_MODULES)}
    return tuple(sorted(_DRIVERS.values(), key=lambda d: rank.get(d.port_class.__module__, len(rank))))


def port_kinds() -> tuple[str, ...]:
    """The devargs prefixes of every port kind."""
    return tuple(d.prefix for d in drivers())


def find_driver(name: str) -> Driver:
    """The driver of device ``name`` (``net_vhost0`` -> ``net_vhost``).  Errors: :class:`EthdevError`."""
    known = drivers()
    d = _DRIVERS.get(name.rstrip("0123456789"))
    if d is None:
        raise EthdevError(f"{name}: unknown device (known: {', '.join(k.prefix + 'N' for k in known)})")
    return d


def probe(devargs: Devargs | str, port_id: int, env: PortEnv) -> Port:
    """Build the port ``devargs`` names, with its driver."""
    devargs = devargs_of(devargs)
    return find_driver(devargs.name).port_class.probe(devargs, port_id, env)
