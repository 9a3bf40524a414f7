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
from dataplane.ethdev.port import RX, LcorePort, Port, PortEnv, devargs_of
from dataplane.ethdev.queue import KIND_RING, PortQueue, make_port_queue
from dataplane.ethdev.registry import Driver, register
from dataplane.lcores.eal_args import Devargs
from dataplane.rings.ring import RING_F_SC_DEQ, RING_F_SP_ENQ, ring_create, ring_lookup

__all__ = ["RingPort", "RingLcorePort", "DRIVER_NAME"]

DRIVER_NAME = "net_ring"
_KEYS = ("queues", "size", "peer")


class RingPort(Port):
    """A ``net_ring`` port: creates its Rx rings in shared memory."""

    kind = "ring"
    link_up = True  # a cable that is always plugged in

    def __init__(self, devargs: Devargs | str, port_id: int = 0, *, memory=None):
        devargs = self.devargs = devargs_of(devargs)
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

    @classmethod
    def probe(cls, devargs, port_id: int, env: PortEnv) -> "RingPort":
        return cls(devargs, port_id, memory=env.memory)

    def bind(self, ports) -> None:
        """A peer that names no peer itself is cabled back to this port."""
        if self.peer == self.name:
            return
        other = ports.get(self.peer)
        if not isinstance(other, RingPort):
            raise EthdevError(f"{self.name}: peer {self.peer!r} is not a {DRIVER_NAME} port")
        if other.peer == other.name:
            other.peer = self.name

    def lcore_info(self) -> dict:
        return dict(super().lcore_info(), peer=self.peer)

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


class RingLcorePort(LcorePort):
    """A ``net_ring`` port in a forwarding lcore: Rx from its own rings, Tx into its peer's."""

    def __init__(self, driver, info: dict, uses, memory):
        super().__init__(driver, info, uses, memory)
        # Rx: the port's own ring; Tx: its peer's Rx ring (the other end of the cable)
        self.rings = {(q, role): ring_lookup(memory, RingPort.ring_name(info["name"] if role == RX else info["peer"], q))
                      for q, role in self.uses}

    def port_queue(self, queue: int, role: str, **common) -> PortQueue:
        r = self.rings[(queue, role)]
        if role == RX:
            return make_port_queue(self.driver.queue_kind, ring_rx=r, **common)
        return make_port_queue(self.driver.queue_kind, ring_tx=r, **common)


register(Driver(DRIVER_NAME, RingPort, KIND_RING, RingLcorePort))
