"""The ``net_vhost`` port (DPDK's vhost PMD): a vhost-user socket as an ethdev port.

::

    --vdev 'net_vhost0,iface=/tmp/vhost0.sock,queues=2,client=0'

Devargs (DPDK's names; each ``0|1`` flag defaults to 0):

``iface``            socket path (required)
``queues``           queue pairs, 1..128 (default 1)
``client``           connect to the socket (the front-end listens) instead of listening
``tso``              offer HOST_TSO4/HOST_TSO6/HOST_ECN (otherwise withdrawn, as DPDK);
                     refused with ``linear-buffer=1`` unless ``ext-buffer=1``
``linear-buffer``    RTE_VHOST_USER_LINEARBUF_SUPPORT
``ext-buffer``       RTE_VHOST_USER_EXTBUF_SUPPORT
``iommu-support``    RTE_VHOST_USER_IOMMU_SUPPORT -- not implemented: refused with an error
``postcopy-support`` RTE_VHOST_USER_POSTCOPY_SUPPORT: offer PAGEFAULT (postcopy live migration)
``legacy-ol-flags``  1: lib/vhost's legacy offload flags, what this port always uses (see
                     Offloads below); 0 (DPDK's default: compliant Rx flags) is refused
                     with an error, as the Rx software checksum that goes with it is not
                     implemented

Queue ``q`` of the port is the guest's queue pair ``q``: the port receives
from vring ``2q+1`` (guest Tx) and transmits into vring ``2q`` (guest Rx).
Queues are polled by lcores: :meth:`VhostPort.place` puts a queue on an
lcore; the lcore's loop builds its contexts with :func:`lcore_queues`
(a :class:`~dataplane.vhost.handoff.LcoreVrings`) and calls
:func:`~dataplane.vhost.handoff.vhost_rx_burst` /
:func:`~dataplane.vhost.handoff.vhost_tx_burst` from numba.  In the engine,
:class:`VhostLcorePort` does that (the driver is registered as ``net_vhost``).

Offloads: a guest's checksum or GSO request (virtio-net header) becomes Tx
offload flags on the mbuf (lib/vhost's legacy flags, where DPDK's vhost PMD
uses the compliant Rx flags and completes checksums in software), so the port
that sends the packet on hands the request to its own peer, or completes the
checksum in software when that peer did not negotiate GUEST_CSUM (and cuts a
TSO request into frames in software when it lacks GUEST_TSO4/6, or GUEST_ECN
for a frame with CWR). HOST_TSO4/6 and HOST_ECN
(:data:`~dataplane.vhost.net.HOST_TSO_FEATURES`) are offered only with
``tso=1``; :meth:`VhostPortArgs.offered_features` is the port's whole offer.
Nothing else can be asked for by devargs: the net device's bits that are not
implemented (:data:`~dataplane.vhost.net.NOT_IMPLEMENTED`) are never offered.

Link: up while a device is running on the socket (``new_device`` ..
``destroy_device``); :meth:`VhostPort.on_link_change` registers a callback
(DPDK's LSC event).  Statistics live in shared memory (written by the
lcores): :meth:`VhostPort.stats` (``rte_eth_stats`` names) and
:meth:`VhostPort.xstats` (the ethdev generic names plus the vhost PMD's
``rx_*``/``tx_*`` and per-queue ``rx_q<N>_*``/``tx_q<N>_*``).
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from dataplane import log as dplog
from dataplane.ethdev.errors import EthdevError
from dataplane.ethdev.port import RX, HandoffLcorePort, HandoffPort, PortEnv, devargs_of
from dataplane.ethdev.queue import KIND_VHOST
from dataplane.ethdev.registry import Driver, register
from dataplane.lcores.eal_args import Devargs
from dataplane.vhost import library as vhost_lib
from dataplane.vhost.device import VhostDeviceOps
from dataplane.vhost import handoff as vhost_handoff
from dataplane.vhost.handoff import LcoreVrings, VringHandoff
from dataplane.vhost.net import HOST_TSO_FEATURES, VHOST_MAX_QUEUE_PAIRS, NetDevice
from dataplane.vhost_user.features import features_str
from dataplane.vhost.virtio_net import C_BYTES, C_DROPS, C_ERRORS, C_NO_MBUF, C_PACKETS, COUNTER_NAMES

__all__ = ["VhostPort", "VhostPortArgs", "VhostLcorePort", "lcore_queues", "DRIVER_NAME"]

log = dplog.get_logger("dataplane.ethdev")

DRIVER_NAME = "net_vhost"
_FLAGS = ("client", "tso", "linear-buffer", "ext-buffer", "iommu-support", "postcopy-support")
_KEYS = ("iface", "queues", "legacy-ol-flags") + _FLAGS
#: DPDK's vhost PMD MAC address (56:48:4F:53:54:xx, "VHOST" + port id).
VHOST_PMD_MAC = 0x56484F535400
#: DPDK's vhost PMD speed: 10 Gbit/s, full duplex.
LINK_SPEED_MBPS = 10000


class VhostPortArgs:
    """Parsed, validated ``net_vhost`` devargs."""

    def __init__(self, devargs: Devargs | str):
        devargs = devargs_of(devargs)
        self.name = devargs.name
        if not self.name.startswith(DRIVER_NAME):
            raise EthdevError(f"{self.name}: not a {DRIVER_NAME} device name")
        args = dict(devargs.args)
        unknown = sorted(set(args) - set(_KEYS))
        if unknown:
            raise EthdevError(f"{self.name}: unknown devarg(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
        self.iface = args.get("iface", "")
        if not self.iface:
            raise EthdevError(f"{self.name}: devarg iface=PATH is required")
        if len(self.iface.encode()) >= 108:
            raise EthdevError(f"{self.name}: iface path is too long for a unix socket ({len(self.iface)} > 107 bytes)")
        q = args.get("queues", "1")
        try:
            self.queues = int(q, 0)
        except ValueError:
            raise EthdevError(f"{self.name}: queues={q!r} is not a number") from None
        if not 1 <= self.queues <= VHOST_MAX_QUEUE_PAIRS:
            raise EthdevError(f"{self.name}: queues={self.queues} out of range 1..{VHOST_MAX_QUEUE_PAIRS}")
        for key in _FLAGS:
            v = args.get(key, "0")
            if v not in ("0", "1"):
                raise EthdevError(f"{self.name}: {key}={v!r} must be 0 or 1")
            setattr(self, key.replace("-", "_"), v == "1")
        legacy = args.get("legacy-ol-flags", "1")
        if legacy not in ("0", "1"):
            raise EthdevError(f"{self.name}: legacy-ol-flags={legacy!r} must be 0 or 1")
        if legacy == "0":
            raise EthdevError(
                f"{self.name}: legacy-ol-flags=0 (compliant Rx offload flags) is not implemented: this port "
                "hands a guest's checksum or GSO request on as Tx flags (legacy-ol-flags=1)"
            )
        if self.tso and self.linear_buffer and not self.ext_buffer:
            raise EthdevError(
                f"{self.name}: tso=1 cannot be offered with linear-buffer=1 unless ext-buffer=1: "
                f"{features_str(HOST_TSO_FEATURES)} need buffers a TSO frame fits in (DPDK withdraws them)"
            )

    def offered_features(self) -> int:
        """The virtio features the port's socket offers: the net device's for these
        flags, without :data:`~dataplane.vhost.net.HOST_TSO_FEATURES` unless ``tso=1``."""
        features = NetDevice().offered_features(self.flags())
        if not self.tso:
            features &= ~HOST_TSO_FEATURES
        return features

    def flags(self) -> int:
        # Legacy (Tx) offload flags, unlike DPDK's vhost PMD: a guest's checksum or GSO
        # request stays a Tx request on the mbuf, so the port that sends the packet on
        # hands it to its peer (or completes it in software) instead of losing it.
        f = 0
        if self.client:
            f |= vhost_lib.CLIENT
        if self.linear_buffer:
            f |= vhost_lib.LINEARBUF_SUPPORT
        if self.ext_buffer:
            f |= vhost_lib.EXTBUF_SUPPORT
        if self.iommu_support:
            f |= vhost_lib.IOMMU_SUPPORT
        if self.postcopy_support:
            f |= vhost_lib.POSTCOPY_SUPPORT
        return f


class VhostPort(HandoffPort):
    """A ``net_vhost`` port in the main process: the socket, its device, link state and statistics."""

    kind = "vhost"
    socket_devarg = "iface"
    stats_fields = ("ierrors", "rx_nombuf")

    def __init__(self, devargs: Devargs | str, port_id: int = 0, *, library=None, memory=None, launcher=None):
        self.devargs = devargs_of(devargs)
        self.args = VhostPortArgs(self.devargs)
        self.name = self.args.name
        self.port_id = int(port_id)
        self.mac = VHOST_PMD_MAC + self.port_id  # DPDK's vhost PMD address, per port
        self.nb_queues = self.args.queues
        self.library = library or vhost_lib.get_library()
        self.handoff = VringHandoff(self.name, 2 * self.nb_queues, memory=memory, launcher=launcher)
        self.vid: int | None = None
        self._link_cbs: list[Callable[["VhostPort", bool], None]] = []
        self._link = threading.Event()
        self._stats_base = np.zeros_like(self.handoff.counters)
        self._registered = False
        self.queue_state = [False] * (2 * self.nb_queues)

    @classmethod
    def probe(cls, devargs, port_id: int, env: PortEnv) -> "VhostPort":
        return cls(devargs, port_id, memory=env.memory, launcher=env.launcher)

    @staticmethod
    def listens(args) -> bool:
        return args.get("client", "0") != "1"

    @staticmethod
    def vring(queue: int, role: str) -> int:
        """The port receives from the guest's Tx vring ``2q+1`` and sends into its Rx vring ``2q``."""
        return 2 * queue + 1 if role == RX else 2 * queue

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Register and start the socket (listen, or connect in client mode).  Errors: :class:`EthdevError`."""
        if self._registered:
            return
        path = self.args.iface
        try:
            self.library.driver_register(path, self.args.flags())
        except vhost_lib.VhostError as e:
            raise EthdevError(f"{self.name}: {e}") from None
        self._registered = True
        try:
            self.library.driver_set_features(path, self.args.offered_features())
            self.library.driver_set_max_queue_num(path, self.nb_queues)
            self.library.driver_callback_register(
                path,
                VhostDeviceOps(
                    new_device=self._new_device,
                    destroy_device=self._destroy_device,
                    vring_state_changed=self._vring_state_changed,
                ),
            )
            self.library.driver_datapath_register(path, self.handoff)
            self.library.driver_start(path)
        except vhost_lib.VhostError as e:
            self.stop()
            raise EthdevError(f"{self.name}: {e}") from None
        log.info("port started", port=self.port_id, name=self.name, iface=path, queues=self.nb_queues,
                 client=self.args.client)

    def stop(self) -> None:
        """Unregister the socket: the device is destroyed, lcores give their rings back, the link goes down."""
        if self._registered:
            self._registered = False
            try:
                self.library.driver_unregister(self.args.iface)
            except vhost_lib.VhostError as e:
                log.warning("unregister failed", name=self.name, error=str(e))
        self._set_link(False)

    def close(self) -> None:
        self.stop()
        self.handoff.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- placement ---------------------------------------------------------------
    def place(self, queue: int, lcore: int | None) -> None:
        """Poll queue ``queue`` (both its vrings) on ``lcore``; before the device starts."""
        if not 0 <= queue < self.nb_queues:
            raise EthdevError(f"{self.name}: queue {queue} out of range (queues={self.nb_queues})")
        self.handoff.place(2 * queue, lcore)
        self.handoff.place(2 * queue + 1, lcore)

    # -- device callbacks (vhost-events thread) ------------------------------------
    def _new_device(self, vid: int) -> int:
        self.vid = vid
        self._set_link(True)
        return 0

    def _destroy_device(self, vid: int) -> None:
        if vid == self.vid:
            self._set_link(False)

    def _vring_state_changed(self, vid: int, qid: int, enable: int) -> None:
        if qid < len(self.queue_state):
            self.queue_state[qid] = bool(enable)
        if enable:
            # lcores poll every ring: ask the guest not to kick (DPDK's vhost PMD does the same at
            # new_device); otherwise a busy driver makes an eventfd write after every burst
            self.library.enable_guest_notification(vid, qid, False)

    # -- link --------------------------------------------------------------------
    def _set_link(self, up: bool) -> None:
        if self._link.is_set() == up:
            return
        if up:
            self._link.set()
        else:
            self._link.clear()
        log.info("link " + ("up" if up else "down"), port=self.port_id, name=self.name)
        for cb in list(self._link_cbs):
            try:
                cb(self, up)
            except Exception as e:  # a callback's bug must not break the control plane
                log.error("link callback failed", name=self.name, error=repr(e))

    @property
    def link_up(self) -> bool:
        return self._link.is_set()

    def wait_link(self, up: bool = True, timeout: float | None = None) -> bool:
        """Block until the link is ``up`` (or down); False on timeout."""
        if up:
            return self._link.wait(timeout)
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._link.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def link_status(self) -> dict:
        up = self.link_up
        return dict(link_status="up" if up else "down", link_speed=LINK_SPEED_MBPS if up else 0,
                    link_duplex="full-duplex", link_autoneg="fixed")

    def on_link_change(self, cb: Callable[["VhostPort", bool], None]) -> None:
        """Call ``cb(port, up)`` (on the vhost-events thread) whenever the link changes."""
        self._link_cbs.append(cb)

    # -- statistics ------------------------------------------------------------------
    def _counters(self) -> np.ndarray:
        return self.handoff.counters - self._stats_base

    def stats(self) -> dict:
        """``rte_eth_stats``: ipackets, opackets, ibytes, obytes, imissed, ierrors, oerrors, rx_nombuf, q_*."""
        c = self._counters()
        rx, tx = c[1::2], c[0::2]
        return dict(
            ipackets=int(rx[:, C_PACKETS].sum()),
            opackets=int(tx[:, C_PACKETS].sum()),
            ibytes=int(rx[:, C_BYTES].sum()),
            obytes=int(tx[:, C_BYTES].sum()),
            imissed=0,
            ierrors=int(rx[:, C_ERRORS].sum()),
            oerrors=int(tx[:, C_DROPS].sum()),
            rx_nombuf=int(rx[:, C_NO_MBUF].sum()),
            q_ipackets=[int(v) for v in rx[:, C_PACKETS]],
            q_opackets=[int(v) for v in tx[:, C_PACKETS]],
            q_ibytes=[int(v) for v in rx[:, C_BYTES]],
            q_obytes=[int(v) for v in tx[:, C_BYTES]],
            q_errors=[int(v) for v in rx[:, C_ERRORS]],
        )

    def xstats(self) -> dict[str, int]:
        """Extended statistics, by name (ethdev generic names, then the vhost PMD's)."""
        s = self.stats()
        out = {
            "rx_good_packets": s["ipackets"],
            "tx_good_packets": s["opackets"],
            "rx_good_bytes": s["ibytes"],
            "tx_good_bytes": s["obytes"],
            "rx_missed_errors": s["imissed"],
            "rx_errors": s["ierrors"],
            "tx_errors": s["oerrors"],
            "rx_mbuf_allocation_errors": s["rx_nombuf"],
        }
        c = self._counters()
        for d, rows in (("rx", c[1::2]), ("tx", c[0::2])):
            total = rows.sum(axis=0)
            for name, v in _pmd_xstats(total):
                out[f"{d}_{name}"] = v
            for q in range(rows.shape[0]):
                for name, v in _pmd_xstats(rows[q]):
                    out[f"{d}_q{q}_{name}"] = v
        return out

    def reset_stats(self) -> None:
        """``port stats clear``: later figures count from now (the lcores' counters are not touched)."""
        self._stats_base = self.handoff.counters.copy()

    def __repr__(self) -> str:
        return f"VhostPort({self.port_id}, {self.name}, iface={self.args.iface!r}, link={'up' if self.link_up else 'down'})"


def _pmd_xstats(row: np.ndarray):
    """The vhost PMD's per-direction names over one counter row."""
    yield "good_packets", int(row[C_PACKETS])
    yield "total_bytes", int(row[C_BYTES])
    yield "missed_pkts", int(row[C_DROPS])
    yield "errors", int(row[C_ERRORS])
    for i, name in enumerate(COUNTER_NAMES):
        if name.endswith("_packets") and name not in ("packets",):
            yield name, int(row[i])


def lcore_queues(name: str, queues, port_id: int = 0xFFFF, memory=None) -> LcoreVrings:
    """In the lcore polling ``queues`` of port ``name``: their vrings.

    ``ctxs[2*i+1]`` is the Rx context of ``queues[i]`` (:func:`~dataplane.vhost.handoff.vhost_rx_burst`),
    ``ctxs[2*i]`` its Tx context (:func:`~dataplane.vhost.handoff.vhost_tx_burst`).
    """
    qids = []
    for q in queues:
        qids += [2 * int(q), 2 * int(q) + 1]
    return LcoreVrings(name, qids, memory=memory, port=port_id)


class VhostLcorePort(HandoffLcorePort):
    """A ``net_vhost`` port in a forwarding lcore: its vrings (:class:`~dataplane.vhost.handoff.LcoreVrings`)."""

    ctx_field = "vhost"

    @classmethod
    def warm_up(cls) -> None:
        vhost_handoff.warm_up()

    def open_queues(self, info: dict, qids: list[int], memory) -> LcoreVrings:
        return LcoreVrings(info["name"], qids, memory=memory, port=info["port_id"])


register(Driver(DRIVER_NAME, VhostPort, KIND_VHOST, VhostLcorePort))
