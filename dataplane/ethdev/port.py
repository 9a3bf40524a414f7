"""The port interface: what every port kind gives the engine, in the main process and in its lcores.

A port kind (a *driver*, registered in :mod:`dataplane.ethdev.registry`) has two halves:

* :class:`Port`, in the main process (DPDK's ``rte_eth_dev`` and its
  ``eth_dev_ops``): built by :meth:`Port.probe` from ``--vdev`` devargs;
  :meth:`~Port.configure` (queue counts), :meth:`~Port.start`,
  :meth:`~Port.stop`, :meth:`~Port.close`; ``nb_rx_queues`` /
  ``nb_tx_queues``; link (:attr:`~Port.link_up`, :meth:`~Port.link_status`);
  MAC (:attr:`~Port.mac`); statistics (:meth:`~Port.stats`,
  :meth:`~Port.xstats`, :meth:`~Port.reset_stats`).  Its lcore hook on this
  side is :meth:`~Port.place_queue`: before start, put a queue on the lcore
  that will poll it.
* :class:`LcorePort`, in a forwarding lcore: built from the picklable
  :meth:`Port.lcore_info` and the (queue, role) pairs the lcore's streams use.
  It hands the port's queues to the lcore's loop as
  :data:`~dataplane.ethdev.queue.PortQueue` values (:meth:`~LcorePort.port_queue`,
  tagged with the driver's queue kind), keeps them current while the control
  plane hands rings over and takes them back (:attr:`~LcorePort.watch`,
  :meth:`~LcorePort.changed`, :meth:`~LcorePort.service`), and gives them
  back when the loop ends (:meth:`~LcorePort.close`).

Ports whose queues are virtqueues negotiated in the main process (vhost,
virtio-user) share :class:`HandoffPort` / :class:`HandoffLcorePort`: their
rings travel through :mod:`dataplane.rings.handoff`.

Packets and bytes are counted at the port queues for every kind
(:mod:`dataplane.ethdev.queue`); a kind lists in :attr:`Port.stats_fields`
the ``rte_eth_stats`` fields it counts itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from dataplane.ethdev.errors import EthdevError
from dataplane.ethdev.queue import KIND_NONE, PortQueue, make_port_queue
from dataplane.lcores.eal_args import Devargs, parse_devargs

__all__ = ["RX", "TX", "PortEnv", "Port", "HandoffPort", "LcorePort", "HandoffLcorePort", "devargs_of"]

#: A queue's role in a stream: the port receives on it, or transmits.
RX, TX = "rx", "tx"


@dataclass
class PortEnv:
    """What a driver may use to build a port: the EAL's memory and launcher, the engine's mempool."""

    memory: Any = None
    mempool: Any = None
    launcher: Any = None
    max_rx_pkt_len: int = 1518


class Port:
    """One port, in the main process.  Subclasses set ``name``, ``port_id``, ``devargs``, ``mac``
    (48-bit int, first byte highest), ``nb_queues`` (queue pairs) and ``kind``."""

    #: The short kind name logs and lcores use ("vhost", "virtio", "ring").
    kind = ""
    #: The devarg naming the port's unix socket, or None for a port without one.
    socket_devarg: str | None = None
    #: ``rte_eth_stats`` fields the port counts itself (beyond the queues' packets and bytes).
    stats_fields: tuple[str, ...] = ()

    name: str
    port_id: int
    devargs: Devargs
    mac: int
    nb_queues: int

    @classmethod
    def probe(cls, devargs: Devargs | str, port_id: int, env: PortEnv) -> "Port":
        """Build the port of ``devargs`` (DPDK's vdev ``probe``).  Errors: :class:`EthdevError`."""
        raise NotImplementedError

    @staticmethod
    def listens(args: Mapping[str, str]) -> bool:
        """Whether a port with devargs ``args`` listens on its socket (rather than connecting)."""
        return False

    @property
    def listening(self) -> bool:
        return self.listens(self.devargs.args)

    # -- configuration ------------------------------------------------------------
    @property
    def nb_rx_queues(self) -> int:
        return self.nb_queues

    @property
    def nb_tx_queues(self) -> int:
        return self.nb_queues

    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        """``rte_eth_dev_configure``: the queue counts streams will use; more than the port has is refused."""
        want = max(nb_rxq, nb_txq)
        if self.nb_rx_queues < nb_rxq or self.nb_tx_queues < nb_txq:
            raise EthdevError(f"{self.name}: queues={self.nb_queues} but --rxq/--txq ask for {want}")

    def bind(self, ports: Mapping[str, "Port"]) -> None:
        """After every port is probed: resolve references to other ports by name (none by default)."""

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- link -------------------------------------------------------------------------
    @property
    def link_up(self) -> bool:
        raise NotImplementedError

    def link_status(self) -> dict:
        """``rte_eth_link``: link_status, link_speed (Mbps), link_duplex, link_autoneg."""
        raise NotImplementedError

    # -- statistics -------------------------------------------------------------------
    def stats(self) -> dict:
        """The port's own ``rte_eth_stats`` (at least :attr:`stats_fields`)."""
        return {}

    def xstats(self) -> dict[str, int]:
        """Extended statistics by name; empty when the kind has none beyond the generic ones."""
        return {}

    def reset_stats(self) -> None:
        """``port stats clear`` for the counters :meth:`stats` and :meth:`xstats` read."""

    # -- lcores -------------------------------------------------------------------------
    def place_queue(self, queue: int, role: str, lcore: int) -> None:
        """Before start: queue ``queue`` in direction ``role`` (:data:`RX`/:data:`TX`) is polled by ``lcore``."""

    def lcore_info(self) -> dict:
        """What the port's :class:`LcorePort` needs, picklable (it is sent to the lcore)."""
        return dict(name=self.name, port_id=self.port_id)


class LcorePort:
    """One port as a forwarding lcore sees it: its :class:`~dataplane.ethdev.queue.PortQueue` values.

    ``driver`` is the port's :class:`~dataplane.ethdev.registry.Driver`; ``info``
    is :meth:`Port.lcore_info`; ``uses`` the (queue, role) pairs this lcore polls.
    """

    #: Whether the loop watches the port for hand-overs (then :attr:`watch` is set).
    watch_handoffs = False
    #: (ctl, qids, gens) of the hand-over control block the loop watches, or None
    watch = None

    def __init__(self, driver, info: dict, uses, memory):
        self.driver = driver
        self.info = info
        self.uses = sorted(set(uses))
        self.memory = memory

    @classmethod
    def warm_up(cls) -> None:
        """Compile (or load from the disk cache) the kernels the lcore side runs, in this process."""

    def port_queue(self, queue: int, role: str, **common) -> PortQueue:
        """The loop's view of (``queue``, ``role``); ``common`` goes to :func:`make_port_queue`."""
        raise NotImplementedError

    def changed(self) -> bool:
        """A hand-over is pending (the control plane started or stopped a queue)."""
        return False

    def service(self, wait: float = 0.0) -> bool:
        """Apply pending hand-overs; True when the loop must rebuild its queues."""
        return False

    def report_errors(self) -> None:
        """Log what the data path counted as broken since the last call."""

    def close(self) -> None:
        """The loop has ended: give the queues back."""


class HandoffPort(Port):
    """A port whose queues are virtqueues handed to lcores by ``self.handoff``
    (a :class:`~dataplane.rings.handoff.QueueHandoff`); :meth:`vring` numbers them."""

    handoff: Any

    @staticmethod
    def vring(queue: int, role: str) -> int:
        """The vring of port queue ``queue`` in direction ``role``."""
        raise NotImplementedError

    def place_queue(self, queue: int, role: str, lcore: int) -> None:
        self.handoff.place(self.vring(queue, role), lcore)


class HandoffLcorePort(LcorePort):
    """Lcore side of a :class:`HandoffPort`: an :class:`~dataplane.rings.handoff.LcoreQueues`
    over the vrings this lcore uses (:meth:`open_queues`), watched by the loop."""

    watch_handoffs = True
    #: the :data:`PortQueue` field its queue contexts go in
    ctx_field = ""

    def __init__(self, driver, info: dict, uses, memory):
        super().__init__(driver, info, uses, memory)
        vring = driver.port_class.vring
        self.lq = self.open_queues(info, sorted({vring(q, role) for q, role in self.uses}), memory)
        self.watch = (self.lq.ctl, self.lq.qids_arr, self.lq.gens)

    def open_queues(self, info: dict, qids: list[int], memory):
        """The :class:`~dataplane.rings.handoff.LcoreQueues` of vrings ``qids``."""
        raise NotImplementedError

    def port_queue(self, queue: int, role: str, **common) -> PortQueue:
        i = self.lq.qids.index(self.driver.port_class.vring(queue, role))
        if not self.lq.attached[i]:
            return make_port_queue(KIND_NONE, **common)
        return make_port_queue(self.driver.queue_kind, **{self.ctx_field: self.lq.ctxs[i]}, **common)

    def changed(self) -> bool:
        return self.lq.changed()

    def service(self, wait: float = 0.0) -> bool:
        return self.lq.service(wait=wait)

    def report_errors(self) -> None:
        self.lq.report_errors()

    def close(self) -> None:
        self.lq.close()


def devargs_of(devargs: Devargs | str) -> Devargs:
    """``devargs`` parsed, if it is still text."""
    return devargs if isinstance(devargs, Devargs) else parse_devargs(str(devargs))
