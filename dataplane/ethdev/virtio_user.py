"""The ``net_virtio_user`` port: a :class:`~dataplane.virtio.VirtioUser` whose queues lcores poll.

::

    --vdev 'net_virtio_user0,path=/tmp/vhost0.sock,queues=1[,server=1,packed_vq=1,mrg_rxbuf=0,in_order=0,...]'

Devargs are seed 003's (:mod:`dataplane.virtio.devargs`).  The port object
lives in the main process (its control thread negotiates and reconnects);
each queue is handed to the lcore of the stream that uses it
(:class:`~dataplane.virtio.handoff.VirtioHandoff`): queue ``q`` receives on
vring ``2q`` and transmits on vring ``2q+1``.  Client mode connects when the
port starts (the back-end must be listening); ``server=1`` listens and the
link comes up when a back-end connects.
"""

from __future__ import annotations

from dataplane.ethdev.errors import EthdevError
from dataplane.ethdev.port import RX, HandoffLcorePort, HandoffPort, PortEnv, devargs_of
from dataplane.ethdev.queue import ENTRY_VIRTIO_PACKED, KIND_VIRTIO
from dataplane.ethdev.registry import Driver, register
from dataplane.lcores.eal_args import Devargs
from dataplane.virtio import VirtioUser, VirtioUserError
from dataplane.virtio.devargs import DevargsError
from dataplane.virtio.handoff import LcoreVirtioQueues, VirtioHandoff

__all__ = ["VirtioUserPort", "VirtioUserLcorePort", "DRIVER_NAME"]

DRIVER_NAME = "net_virtio_user"


class VirtioUserPort(HandoffPort):
    """A ``net_virtio_user`` port of an engine (mbufs come from, and go back to, ``mempool``)."""

    kind = "virtio"
    socket_devarg = "path"

    def __init__(self, devargs: Devargs | str, port_id: int, *, memory, mempool, launcher=None,
                 max_rx_pkt_len: int = 1518):
        self.devargs = devargs_of(devargs)
        try:
            self.vu = VirtioUser.probe(str(self.devargs), memory, mempool, port_id=port_id,
                                       max_rx_pkt_len=max_rx_pkt_len)
        except (DevargsError, VirtioUserError, ValueError) as e:
            raise EthdevError(str(e)) from None
        self.name = self.vu.args.name
        self.port_id = port_id
        self.nb_queues = self.vu.args.queues
        self.handoff = VirtioHandoff(self.name, 2 * self.nb_queues, port_id=port_id, memory=memory,
                                     launcher=launcher)
        self.vu.datapath = self.handoff
        self.mac = int.from_bytes(bytes(self.vu.mac), "big")

    @classmethod
    def probe(cls, devargs, port_id: int, env: PortEnv) -> "VirtioUserPort":
        return cls(devargs, port_id, memory=env.memory, mempool=env.mempool, launcher=env.launcher,
                   max_rx_pkt_len=env.max_rx_pkt_len)

    @staticmethod
    def listens(args) -> bool:
        return args.get("server", "0") == "1"

    @staticmethod
    def vring(queue: int, role: str) -> int:
        """The port is the guest: it receives on vring ``2q`` and sends on ``2q+1``."""
        return 2 * queue if role == RX else 2 * queue + 1

    def entry_keys(self) -> tuple[int, ...]:
        """The loop's burst entries for this port's queues (compiled before forwarding): the
        packed one when ``packed_vq=1`` asks for packed rings."""
        return (ENTRY_VIRTIO_PACKED if self.vu.args.packed_vq else KIND_VIRTIO,)

    def start(self) -> None:
        try:
            self.vu.start()
        except VirtioUserError as e:
            raise EthdevError(str(e)) from None

    def stop(self) -> None:
        pass

    @property
    def link_up(self) -> bool:
        return self.vu.link_up

    def link_status(self) -> dict:
        up = self.vu.link_up
        return dict(link_status="up" if up else "down", link_speed=self.vu.args.speed if up else 0,
                    link_duplex="full-duplex", link_autoneg="fixed")

    def stats(self) -> dict:
        return self.vu.stats()

    def close(self) -> None:
        try:
            self.vu.close()
        finally:
            self.handoff.close()


class VirtioUserLcorePort(HandoffLcorePort):
    """A ``net_virtio_user`` port in a forwarding lcore: its queues (:class:`~dataplane.virtio.handoff.LcoreVirtioQueues`)."""

    ctx_field = "virtio"

    def open_queues(self, info: dict, qids: list[int], memory) -> LcoreVirtioQueues:
        return LcoreVirtioQueues(info["name"], qids, memory=memory)


register(Driver(DRIVER_NAME, VirtioUserPort, KIND_VIRTIO, VirtioUserLcorePort))
