"""The ``net_ring`` port: queues that are shared-memory rings of mbuf indices (tests, loopbacks).

::

    --vdev net_ring0                      # alone: what it sends it receives (loopback)
    --vdev net_ring0 --vdev net_ring1,peer=net_ring0   # a cable: 0 sends to 1, 1 to 0

Devargs: ``queues`` (default 1), ``size`` (ring entries, power of two, default
1024), ``peer`` (the port at the other end; a peer names us back implicitly).
Port ``P`` queue ``q`` receives from ring ``<P>_rx<q>`` and sends into its
peer's ``<peer>_rx<q>``.  The link is always up.  Mbufs travel by index, so
both ends must use the same mempool (one engine does).
"""

from __future__ import annotations

from dataplane.ethdev.errors import EthdevError
from dataplane.lcores.eal_args import Devargs, parse_devargs
from dataplane.rings.ring import RING_F_SC_DEQ, RING_F_SP_ENQ, ring_create, ring_lookup

__all__ = ["RingPort", "DRIVER_NAME"]

DRIVER_NAME = "net_ring"
_KEYS = ("queues", "size", "peer")


class RingPort:
    """A ``net_ring`` port: creates its Rx rings in shared memory."""

    kind = "ring"

    def __init__(self, devargs: Devargs | str, port_id: int = 0, *, memory=None):
        if isinstance(devargs, str):
            devargs = parse_devargs(devargs)
        self.name = devargs.name
        self.port_id = int(port_id)
        self.mac = 0x027063617000 + self.port_id  # locally administered, per port
        unknown = sorted(set(devargs.args) - set(_KEYS))
        if unknown:
            raise EthdevError(f"{self.name}: unknown devarg(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
        try:
            self.nb_queues = int(devargs.args.get("queues", "1"), 0)
            self.size = int(devargs.args.get("size", "1024"), 0)
        except ValueError as e:
            raise EthdevError(f"{self.name}: {e}") from None
        if not 1 <= self.nb_queues <= 64:
            raise EthdevError(f"{self.name}: queues={self.nb_queues} out of range 1..64")
        if self.size < 2 or self.size & (self.size - 1) or self.size > 1 << 20:
            raise EthdevError(f"{self.name}: size={self.size} must be a power of two in 2..1048576")
        self.peer = devargs.args.get("peer") or self.name
        if memory is None:
            from dataplane.lcores.eal import current_memory

            memory = current_memory()
        self.memory = memory
        self.rings = [ring_create(memory, self.ring_name(self.name, q), self.size, RING_F_SP_ENQ | RING_F_SC_DEQ)
                      for q in range(self.nb_queues)]
        self.link_up = True

    @staticmethod
    def ring_name(port: str, queue: int) -> str:
        return f"{port}_rx{queue}"

    def rx_ring(self, queue: int, memory=None):
        """The ring queue ``queue`` receives from (attach in any process)."""
        return ring_lookup(memory or self.memory, self.ring_name(self.name, queue))

    def tx_ring(self, queue: int, memory=None):
        """The ring queue ``queue`` sends into: the peer's Rx ring."""
        try:
            return ring_lookup(memory or self.memory, self.ring_name(self.peer, queue))
        except KeyError:
            raise EthdevError(f"{self.name}: peer {self.peer!r} has no queue {queue}") from None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        for r in self.rings:
            try:
                self.memory.memzone_free(r.memzone.name)
            except Exception:
                pass
        self.rings = []

    def link_status(self) -> dict:
        return dict(link_status="up", link_speed=10000, link_duplex="full-duplex", link_autoneg="fixed")
