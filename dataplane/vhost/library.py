"""The vhost library's public API, in DPDK's terms (``rte_vhost_*`` without the prefix).

Typical use (a vhost-user back-end serving a QEMU guest or a virtio-user port)::

    from dataplane.vhost import library as vhost

    vhost.driver_register("/tmp/vhost0.sock", 0)            # server mode; CLIENT for client mode
    vhost.driver_disable_features("/tmp/vhost0.sock", 1 << 15)   # e.g. no mergeable rx buffers
    vhost.driver_callback_register("/tmp/vhost0.sock", vhost.VhostDeviceOps(new_device=on_new, destroy_device=on_gone))
    vhost.driver_datapath_register("/tmp/vhost0.sock", my_datapath_hooks)
    vhost.driver_start("/tmp/vhost0.sock")
    ...
    vhost.driver_unregister("/tmp/vhost0.sock")             # closes connections, unlinks the socket file

Module-level functions use one process-wide :class:`VhostLibrary`
(:func:`get_library`); tests and embedders can create their own.  All
sockets of a library are served by one "vhost-events" thread; callbacks and
data-path hooks run in it.  Devices are numbered with small integers (vids),
the smallest free one first.

Errors are exceptions (:class:`VhostError` and subclasses, each with the
errno DPDK would return) instead of negative return codes.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import errno
import os
import socket
import threading
from typing import Any, Callable

from dataplane import log as dplog
from dataplane.vhost import device
from dataplane.vhost.backend_channel import BackendChannel
from dataplane.vhost.device import (
    GENERIC_PROTOCOL_FEATURES,
    RTE_VHOST_USER_ASYNC_COPY,
    RTE_VHOST_USER_CLIENT,
    RTE_VHOST_USER_EXTBUF_SUPPORT,
    RTE_VHOST_USER_IOMMU_SUPPORT,
    RTE_VHOST_USER_LINEARBUF_SUPPORT,
    RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS,
    RTE_VHOST_USER_NET_STATS_ENABLE,
    RTE_VHOST_USER_NO_RECONNECT,
    RTE_VHOST_USER_POSTCOPY_SUPPORT,
    RTE_VHOST_USER_RESERVED_1,
    DataPathHooks,
    DeviceConfig,
    VhostDeviceOps,
    VhostUserDevice,
    Vring,
)
from dataplane.vhost.device_class import DeviceClass
from dataplane.vhost.guest_memory import read_u16
from dataplane.vhost.dirty_log import log_used_gpa, mark_dirty
from dataplane.vhost.net import NetDevice, NetState
from dataplane.vhost.vdpa import VHOST_MAX_QUEUE_PAIRS, VdpaDeviceClass
from dataplane.vhost.vdpa_ops import RTE_VHOST_QUEUE_ALL, call_op, op as vdpa_op
from dataplane.vhost.transport import ClientEndpoint, Connection, EventLoop, ServerEndpoint
from dataplane.vhost_user.errors import TransportError
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit, features_str
from dataplane.vhost_user.messages import Message

__all__ = [name for name in device.__all__ if name.startswith("RTE_VHOST_USER_")] + [
    "DEFAULT_FEATURES",
    "DEFAULT_PROTOCOL_FEATURES",
    "IMPLEMENTED_PROTOCOL_FEATURES",
    "implemented_protocol_features",
    "VhostError",
    "VhostNoDevice",
    "VhostNotSupported",
    "VhostBusy",
    "VhostTryAgain",
    "VhostDeviceOps",
    "DataPathHooks",
    "VhostLibrary",
    "get_library",
]

log = dplog.get_logger("dataplane.vhost")

# -- registration flags (rte_vhost.h, defined in device.py): short names
CLIENT = RTE_VHOST_USER_CLIENT
NO_RECONNECT = RTE_VHOST_USER_NO_RECONNECT
IOMMU_SUPPORT = RTE_VHOST_USER_IOMMU_SUPPORT
POSTCOPY_SUPPORT = RTE_VHOST_USER_POSTCOPY_SUPPORT
EXTBUF_SUPPORT = RTE_VHOST_USER_EXTBUF_SUPPORT
LINEARBUF_SUPPORT = RTE_VHOST_USER_LINEARBUF_SUPPORT
ASYNC_COPY = RTE_VHOST_USER_ASYNC_COPY

#: Flags accepted (the data-path ones are recorded for the data path to honour).
_ACCEPTED_FLAGS = (
    RTE_VHOST_USER_CLIENT
    | RTE_VHOST_USER_NO_RECONNECT
    | RTE_VHOST_USER_EXTBUF_SUPPORT
    | RTE_VHOST_USER_LINEARBUF_SUPPORT
    | RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS
    | RTE_VHOST_USER_NET_STATS_ENABLE
    | RTE_VHOST_USER_POSTCOPY_SUPPORT
)
#: Flags DPDK knows that this library does not implement: refused, never ignored.
_REFUSED_FLAGS = {
    RTE_VHOST_USER_IOMMU_SUPPORT: "IOMMU_SUPPORT: IOTLB / ACCESS_PLATFORM is not implemented",
    RTE_VHOST_USER_ASYNC_COPY: "ASYNC_COPY: the async copy data path is not implemented",
}

# -- what a socket offers by default ---------------------------------------------


def implemented_protocol_features(device: DeviceClass, flags: int = 0) -> int:
    """Protocol features a socket of ``device`` registered with ``flags`` may offer: the generic
    ones plus the device class's, and PAGEFAULT with POSTCOPY_SUPPORT (as in DPDK) for a device
    class whose data path registers its guest memory with the fault relay (``postcopy_support``)."""
    postcopy = 0
    if flags & RTE_VHOST_USER_POSTCOPY_SUPPORT and device.postcopy_support:
        postcopy = bit(PF.VHOST_USER_PROTOCOL_F_PAGEFAULT)
    return GENERIC_PROTOCOL_FEATURES | device.protocol_features | postcopy


def default_protocol_features(device: DeviceClass, flags: int = 0) -> int:
    """What a socket of ``device`` offers unless told otherwise: DPDK's default set minus
    what is not implemented here (CRYPTO_SESSION), plus RESET_DEVICE and what the
    device class adds; PAGEFAULT only with POSTCOPY_SUPPORT.  CONFIGURE_MEM_SLOTS is
    implemented but, as in DPDK 22.11, not offered unless enabled; so are the device
    class's ``optional_protocol_features`` (net: CONFIG)."""
    off = bit(PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) | device.optional_protocol_features
    return implemented_protocol_features(device, flags) & ~off


#: The net device's offers (the default device class): virtio features of a
#: socket registered without flags, implemented and default protocol features.
DEFAULT_FEATURES = NetDevice().offered_features(0)
IMPLEMENTED_PROTOCOL_FEATURES = implemented_protocol_features(NetDevice())
DEFAULT_PROTOCOL_FEATURES = default_protocol_features(NetDevice())


def _check_implemented(path: str, cfg: DeviceConfig, features: int) -> None:
    """Refuse feature bits the socket's device class does not implement, naming each and why."""
    device = cfg.device
    missing = int(features) & ~device.implemented_features(cfg.flags)
    if not missing:
        return
    why = []
    for n in range(64):
        if missing >> n & 1:
            reason = device.not_implemented.get(n, "not implemented")
            why.append(f"{device.features_str(bit(n))} ({reason})")
    raise VhostNotSupported(f"{path}: the {device.name} device does not implement {'; '.join(why)}")


# -- errors ---------------------------------------------------------------------


class VhostError(Exception):
    """A vhost library call failed; ``errno`` is what DPDK would return (negated)."""

    errno = errno.EINVAL


class VhostNoDevice(VhostError):
    errno = errno.ENODEV


class VhostNotSupported(VhostError):
    errno = errno.ENOTSUP


class VhostBusy(VhostError):
    errno = errno.EBUSY


class VhostTryAgain(VhostError):
    errno = errno.EAGAIN


# -- the library ------------------------------------------------------------------


class _VhostSocket:
    """One registered path: its offer (DeviceConfig), endpoint and connections."""

    def __init__(self, path: str, flags: int, device: DeviceClass):
        self.path = path
        self.flags = flags
        features = device.offered_features(flags)
        self.config = DeviceConfig(
            path=path,
            device=device,
            flags=flags,
            features=features,
            supported_features=features,
            protocol_features=default_protocol_features(device, flags),
            queue_num=device.max_queues,
            ops=VhostDeviceOps(),
        )
        self.endpoint: ServerEndpoint | ClientEndpoint | None = None
        self.connections: dict[int, Connection] = {}
        self.closed_stats: collections.Counter[str] = collections.Counter()  # of devices already gone
        self.before_vdpa: tuple | None = None  # the offer before a vDPA device was attached

    @property
    def is_client(self) -> bool:
        return bool(self.flags & RTE_VHOST_USER_CLIENT)


class VhostLibrary:
    """All vhost-user sockets and devices of one process (or one test).

    ``loop``: the :class:`~dataplane.vhost.transport.EventLoop` to run on (e.g. one
    with an injected clock); by default one is created on first use.
    """

    def __init__(self, loop: EventLoop | None = None) -> None:
        self._lock = threading.RLock()
        self._sockets: dict[str, _VhostSocket] = {}
        self._devices: dict[int, tuple[_VhostSocket, VhostUserDevice, Connection]] = {}
        self._loop: EventLoop | None = loop  # created on first use unless given; stopped by close()

    # -- internals ---------------------------------------------------------------

    def _event_loop(self) -> EventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = EventLoop()
            return self._loop

    def _socket(self, path: str) -> _VhostSocket:
        s = self._sockets.get(os.fspath(path))
        if s is None:
            raise VhostError(f"{path}: not a registered vhost-user socket")
        return s

    def _device(self, vid: int) -> VhostUserDevice:
        entry = self._devices.get(vid)
        if entry is None:
            raise VhostNoDevice(f"no vhost device with vid {vid}")
        return entry[1]

    def _vring(self, vid: int, qid: int) -> tuple[VhostUserDevice, Vring]:
        dev = self._device(vid)
        if not 0 <= qid < len(dev.vrings):
            raise VhostError(f"vid {vid}: no vring {qid} (device has {len(dev.vrings)})")
        return dev, dev.vrings[qid]

    def _new_connection(self, vsock: _VhostSocket, sock: socket.socket) -> None:
        """Loop thread: a front-end connected (server) or we connected (client)."""
        with self._lock:
            if vsock.path not in self._sockets or self._sockets[vsock.path] is not vsock:
                sock.close()
                return
            vid = next(i for i in range(len(self._devices) + 1) if i not in self._devices)
            conn = Connection(
                self._event_loop(),
                sock,
                vsock.path,
                on_message=self._on_message,
                on_closed=self._on_closed,
                on_framing_error=self._on_framing_error,
            )
            dev = VhostUserDevice(vid, vsock.config, conn.send, loop=conn.loop)
            conn.device = dev  # type: ignore[attr-defined]
            vsock.connections[vid] = conn
            self._devices[vid] = (vsock, dev, conn)
            log.info("new vhost-user connection", path=vsock.path, vid=vid)
            result = dev._callback("new_connection", vid)
            if isinstance(result, int) and result < 0:
                log.warning("new_connection refused the connection", path=vsock.path, vid=vid, result=result)
                conn.close("refused by new_connection")

    def _on_message(self, conn: Connection, msg: Message) -> bool:
        with self._lock:
            return conn.device.handle(msg)  # type: ignore[attr-defined]

    def _on_framing_error(self, conn: Connection, reason: str) -> None:
        with self._lock:
            conn.device.protocol_violation(reason)  # type: ignore[attr-defined]

    def _on_closed(self, conn: Connection, reason: str) -> None:
        with self._lock:
            dev: VhostUserDevice = conn.device  # type: ignore[attr-defined]
            log.info("vhost-user connection closed", path=conn.path, vid=dev.vid, reason=reason)
            dev.close()
            entry = self._devices.pop(dev.vid, None)
            if entry is None:
                return
            vsock = entry[0]
            vsock.connections.pop(dev.vid, None)
            vsock.closed_stats.update(dev.stats)
            vsock.closed_stats["connections"] += 1
            if isinstance(vsock.endpoint, ClientEndpoint) and self._sockets.get(vsock.path) is vsock:
                vsock.endpoint.connection_lost()

    # -- driver (socket) API --------------------------------------------------------

    def driver_register(self, path: str, flags: int = 0, device: DeviceClass | None = None) -> None:
        """Register a vhost-user socket ``path`` with ``RTE_VHOST_USER_*`` ``flags``.

        ``device`` is the socket's device class (see
        :mod:`~dataplane.vhost.device_class`); the default is a virtio-net
        device (:class:`~dataplane.vhost.net.NetDevice`), DPDK's builtin one.

        CLIENT: connect to ``path`` instead of listening; NO_RECONNECT: do not
        retry connecting.  EXTBUF_SUPPORT / LINEARBUF_SUPPORT /
        NET_COMPLIANT_OL_FLAGS / NET_STATS_ENABLE are recorded for the data
        path (LINEARBUF without EXTBUF withdraws the host TSO features, as
        DPDK does).  POSTCOPY_SUPPORT offers the PAGEFAULT protocol feature
        (postcopy live migration, :mod:`~dataplane.vhost.postcopy`); it is
        refused for a device class without ``postcopy_support`` (blk: its
        lcores do not register guest memory with the fault relay).
        IOMMU_SUPPORT and ASYNC_COPY are not implemented and refused with
        :class:`VhostNotSupported`.
        """
        path = os.fspath(path)
        for flag, why in _REFUSED_FLAGS.items():
            if flags & flag:
                raise VhostNotSupported(f"{path}: flag {why}")
        if flags & RTE_VHOST_USER_POSTCOPY_SUPPORT and device is not None and not device.postcopy_support:
            raise VhostNotSupported(f"{path}: flag POSTCOPY_SUPPORT: the {device.name} device's data path does not "
                                    "register guest memory with the postcopy fault relay (PAGEFAULT not implemented)")
        unknown = flags & ~_ACCEPTED_FLAGS
        if unknown:
            raise VhostError(f"{path}: unknown registration flag bits {unknown:#x}")
        if not path or len(path.encode()) >= 108:
            raise VhostError(f"{path!r}: not a valid unix socket path (1..107 bytes)")
        with self._lock:
            if path in self._sockets:
                raise VhostBusy(f"{path}: already registered")
            self._sockets[path] = _VhostSocket(path, flags, device if device is not None else NetDevice())
        log.info("vhost-user socket registered", path=path, flags=hex(flags), client=bool(flags & CLIENT))

    def driver_unregister(self, path: str) -> None:
        """Unregister ``path``: close its connections (destroy_device / destroy_connection
        fire), stop listening or reconnecting, and unlink the socket file (server mode)."""
        path = os.fspath(path)
        with self._lock:
            vsock = self._socket(path)
            loop = self._loop

        def stop() -> None:
            with self._lock:
                if self._sockets.get(path) is not vsock:
                    return
                del self._sockets[path]
                if vsock.endpoint is not None:
                    vsock.endpoint.stop()
                for conn in list(vsock.connections.values()):
                    conn.close("driver unregistered")

        if loop is not None:
            loop.call(stop)
        else:
            stop()
        log.info("vhost-user socket unregistered", path=path)

    def driver_start(self, path: str) -> None:
        """Start serving ``path``: listen (server) or connect (client).

        A client without NO_RECONNECT keeps retrying every second in the
        background; with NO_RECONNECT a failed connect raises :class:`VhostError`.
        """
        path = os.fspath(path)
        with self._lock:
            vsock = self._socket(path)
            if vsock.endpoint is not None:
                raise VhostBusy(f"{path}: already started")
        loop = self._event_loop()

        def on_connection(sock: socket.socket) -> None:
            self._new_connection(vsock, sock)

        def start() -> None:
            if vsock.is_client:
                ep: ServerEndpoint | ClientEndpoint = ClientEndpoint(
                    loop, path, reconnect=not vsock.flags & RTE_VHOST_USER_NO_RECONNECT, on_connection=on_connection
                )
            else:
                ep = ServerEndpoint(loop, path, on_connection)
            vsock.endpoint = ep
            try:
                ep.start()
            except TransportError:
                vsock.endpoint = None
                raise

        try:
            loop.call(start)
        except TransportError as e:
            raise VhostError(str(e)) from None

    def driver_set_features(self, path: str, features: int) -> None:
        """Set the virtio features ``path`` offers (and may later enable); ACCESS_PLATFORM and
        the bits the socket's device class does not implement are refused, by name."""
        if features & bit(VF.VIRTIO_F_ACCESS_PLATFORM):
            raise VhostNotSupported(f"{path}: VIRTIO_F_ACCESS_PLATFORM needs IOMMU support, not implemented")
        with self._lock:
            cfg = self._socket(path).config
            _check_implemented(path, cfg, features)
            cfg.features = cfg.supported_features = int(features)

    def driver_get_features(self, path: str) -> int:
        """The virtio features ``path`` offers in GET_FEATURES."""
        with self._lock:
            return self._socket(path).config.features

    def driver_enable_features(self, path: str, features: int) -> None:
        """Offer ``features`` again (only ones the socket supports)."""
        with self._lock:
            cfg = self._socket(path).config
            _check_implemented(path, cfg, features)
            extra = features & ~cfg.supported_features
            if extra:
                raise VhostNotSupported(f"{path}: cannot enable unsupported features {features_str(extra)}")
            cfg.features |= features

    def driver_disable_features(self, path: str, features: int) -> None:
        """Stop offering ``features``."""
        with self._lock:
            self._socket(path).config.features &= ~int(features)

    def driver_set_protocol_features(self, path: str, protocol_features: int) -> None:
        """Set the protocol features ``path`` offers; unimplemented ones are refused."""
        with self._lock:
            cfg = self._socket(path).config
            missing = protocol_features & ~implemented_protocol_features(cfg.device, cfg.flags)
            if missing:
                raise VhostNotSupported(f"{path}: protocol features not implemented: {features_str(missing, PF)}")
            cfg.protocol_features = int(protocol_features)

    def driver_get_protocol_features(self, path: str) -> int:
        """The protocol features ``path`` offers in GET_PROTOCOL_FEATURES."""
        with self._lock:
            return self._socket(path).config.protocol_features

    def driver_set_max_queue_num(self, path: str, max_queue_num: int) -> None:
        """Queues answered to GET_QUEUE_NUM (net: queue pairs, 1..128; vrings beyond ``2 * n`` are refused)."""
        with self._lock:
            cfg = self._socket(path).config
            limit = cfg.device.max_queues
            if not 1 <= max_queue_num <= limit:
                raise VhostError(f"{path}: max queue num {max_queue_num} not in 1..{limit}")
            cfg.queue_num = int(max_queue_num)

    def driver_get_queue_num(self, path: str) -> int:
        """Queues (net: queue pairs) ``path`` supports."""
        with self._lock:
            return self._socket(path).config.queue_num

    def driver_set_mac(self, path: str, mac: bytes | str) -> None:
        """The MAC address in the virtio-net config space (GET_CONFIG) of new devices (net sockets only)."""
        raw = bytes.fromhex(mac.replace(":", "")) if isinstance(mac, str) else bytes(mac)
        if len(raw) != 6:
            raise VhostError(f"{path}: MAC must be 6 bytes")
        with self._lock:
            device = self._socket(path).config.device
            if not isinstance(device, NetDevice):
                raise VhostNotSupported(f"{path}: a {device.name} device has no MAC address")
            device.mac = raw

    def driver_callback_register(self, path: str, ops: Any) -> None:
        """Register application callbacks: a :class:`VhostDeviceOps`, a dict or any object
        with ``new_device``, ``destroy_device``, ``vring_state_changed``,
        ``features_changed``, ``new_connection``, ``destroy_connection``."""
        with self._lock:
            self._socket(path).config.ops = ops

    def driver_datapath_register(self, path: str, hooks: DataPathHooks | None) -> None:
        """Attach the data path (see :class:`~dataplane.vhost.device.DataPathHooks`) to ``path``'s
        device class, for its devices."""
        with self._lock:
            try:
                self._socket(path).config.device.datapath = hooks
            except ValueError as e:  # a vDPA device's queues are never handed to a data path
                raise VhostBusy(str(e)) from None

    # -- vDPA devices (DPDK's rte_vhost_driver_attach_vdpa_device & co; see dataplane.vhost.vdpa) --

    def driver_attach_vdpa_device(self, path: str, vdev: Any) -> None:
        """Attach vDPA device ``vdev`` to socket ``path``: from the next connection on, the device serves
        it (its driver's ops are called, its queues are never handed to a data path).  The socket's
        offer becomes its own AND the device's: virtio features, protocol features, queue pairs
        (at most :data:`~dataplane.vhost.vdpa.VHOST_MAX_QUEUE_PAIRS`).  VhostBusy if one is attached."""
        with self._lock:
            vsock = self._socket(path)
            cfg = vsock.config
            if cfg.vdpa_device is not None:
                raise VhostBusy(f"{path}: vDPA device {cfg.vdpa_device.name} is already attached")
            cls = VdpaDeviceClass(vdev)
            features = call_op(vdev, "get_features", vdev)
            protocol = call_op(vdev, "get_protocol_features", vdev)
            queues = call_op(vdev, "get_queue_num", vdev)
            for name, value in (("get_features", features), ("get_protocol_features", protocol), ("get_queue_num", queues)):
                if not isinstance(value, int) or value < 0:
                    raise VhostError(f"{path}: vDPA device {vdev.name}: {name} failed ({value!r})")
            vsock.before_vdpa = (cfg.device, cfg.features, cfg.supported_features, cfg.protocol_features, cfg.queue_num)
            cfg.device = cls
            cfg.features = cfg.supported_features = cls.offered_features(vsock.flags) & features
            cfg.protocol_features = default_protocol_features(cls, vsock.flags) & protocol
            cfg.queue_num = max(1, min(VHOST_MAX_QUEUE_PAIRS, queues))
            cfg.vdpa_device = vdev
        log.info("vDPA device attached", path=path, device=vdev.name, features=hex(cfg.features),
                 protocol_features=hex(cfg.protocol_features), queue_pairs=cfg.queue_num)

    def driver_detach_vdpa_device(self, path: str) -> None:
        """Detach the socket's vDPA device (connections that exist keep it until they close);
        the socket offers what it offered before.  VhostError if none is attached."""
        with self._lock:
            vsock = self._socket(path)
            cfg = vsock.config
            if cfg.vdpa_device is None:
                raise VhostError(f"{path}: no vDPA device attached")
            cfg.device, cfg.features, cfg.supported_features, cfg.protocol_features, cfg.queue_num = vsock.before_vdpa
            name, cfg.vdpa_device = cfg.vdpa_device.name, None
        log.info("vDPA device detached", path=path, device=name)

    def driver_get_vdpa_device(self, path: str) -> Any:
        """The vDPA device attached to ``path``, or None."""
        with self._lock:
            return self._socket(path).config.vdpa_device

    def driver_get_vdpa_dev_type(self, path: str) -> int:
        """``VDPA_DEVICE_TYPE_NET`` or ``_BLK`` of ``path``'s vDPA device; VhostError without one."""
        vdev = self.driver_get_vdpa_device(path)
        if vdev is None:
            raise VhostError(f"{path}: no vDPA device attached")
        return vdev.type

    def get_vdpa_device(self, vid: int) -> Any:
        """The vDPA device serving connection ``vid`` (the one drivers use in their ops), or None."""
        with self._lock:
            return self._device(vid).vdpa_device

    def host_notifier_ctrl(self, vid: int, qid: int, enable: bool) -> list[concurrent.futures.Future]:
        """``rte_vhost_host_notifier_ctrl``: map (or withdraw) the vDPA device's doorbell page of vring
        ``qid`` (or every vring with ``RTE_VHOST_QUEUE_ALL``) into the guest, through the back-end channel
        (VRING_HOST_NOTIFIER_MSG with the page's fd, or NOFD).

        VhostNotSupported unless VERSION_1 and PROTOCOL_FEATURES, and BACKEND_REQ, BACKEND_SEND_FD and
        HOST_NOTIFIER are negotiated, and the driver has ``get_vfio_device_fd`` (fd >= 0) and
        ``get_notify_area``; VhostNoDevice without a vDPA device; VhostError for a bad ``qid``.
        Returns one future per vring, answered by the front-end (callable from the driver's ops, on
        the vhost-events thread: nothing here waits).  If a request cannot be sent, the range is
        withdrawn again and the error raised.
        """
        with self._lock:
            dev = self._device(vid)
            vdev = dev.vdpa_device
            if vdev is None:
                raise VhostNoDevice(f"vid {vid}: no vDPA device")
            need_f = (VF.VIRTIO_F_VERSION_1, VF.VHOST_USER_F_PROTOCOL_FEATURES)
            need_pf = (PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ, PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD,
                       PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER)
            missing = [f.name for f in need_f if not dev.has_feature(f)] + [
                f.name for f in need_pf if not dev.has_protocol_feature(f)]
            if missing:
                raise VhostNotSupported(f"vid {vid}: host notifiers need {', '.join(missing)}")
            if dev.backend_channel is None:
                raise VhostNotSupported(f"vid {vid}: the front-end gave no back-end channel (SET_BACKEND_REQ_FD)")
            if vdpa_op(vdev, "get_notify_area") is None or vdpa_op(vdev, "get_vfio_device_fd") is None:
                raise VhostNotSupported(f"vid {vid}: vDPA device {vdev.name} has no doorbell pages to map")
            if qid == RTE_VHOST_QUEUE_ALL:
                qids = list(range(dev.nr_vring))
            elif 0 <= qid < dev.nr_vring:
                qids = [qid]
            else:
                raise VhostError(f"vid {vid}: no vring {qid} (device has {dev.nr_vring})")
            fd = -1
            if enable:
                fd = call_op(vdev, "get_vfio_device_fd", vid, vid=vid)
                if not isinstance(fd, int) or fd < 0:
                    raise VhostNotSupported(f"vid {vid}: vDPA device {vdev.name}: no doorbell fd ({fd!r})")
            futures = []
            try:
                for q in qids:
                    if not enable:
                        futures.append(dev.backend_channel.vring_host_notifier(q, None))
                        continue
                    area = call_op(vdev, "get_notify_area", vid, q, vid=vid)
                    if not (isinstance(area, tuple) and len(area) == 2):
                        raise VhostError(f"vid {vid}: vDPA device {vdev.name}: get_notify_area({q}) failed ({area!r})")
                    fut = dev.backend_channel.vring_host_notifier(q, fd, area[0], area[1])
                    if fut.done() and fut.exception() is not None:
                        raise fut.exception()
                    futures.append(fut)
            except BaseException:
                if enable:
                    for q in qids:
                        dev.backend_channel.vring_host_notifier(q, None)
                raise
            return futures

    def driver_stats(self, path: str) -> dict[str, int]:
        """Counters of every connection ``path`` has served (live and closed): ``messages``,
        ``replies``, ``errors``, ``errors:<REQUEST>``, ``connections`` (closed ones)."""
        with self._lock:
            vsock = self._socket(path)
            total = collections.Counter(vsock.closed_stats)
            for conn in vsock.connections.values():
                total.update(conn.device.stats)  # type: ignore[attr-defined]
            return dict(total)

    def driver_paths(self) -> list[str]:
        with self._lock:
            return list(self._sockets)

    # -- device (vid) API -----------------------------------------------------------

    def get_device(self, vid: int) -> VhostUserDevice:
        """The :class:`VhostUserDevice` of ``vid`` (for the data path)."""
        with self._lock:
            return self._device(vid)

    def list_vids(self) -> list[int]:
        with self._lock:
            return sorted(self._devices)

    def get_negotiated_features(self, vid: int) -> int:
        """Virtio features the front-end set (SET_FEATURES)."""
        with self._lock:
            return self._device(vid).features

    def get_negotiated_protocol_features(self, vid: int) -> int:
        with self._lock:
            return self._device(vid).protocol_features

    def get_mtu(self, vid: int) -> int:
        """The MTU set by NET_SET_MTU.  Raises VhostNotSupported without VIRTIO_NET_F_MTU,
        VhostTryAgain if the front-end has not set it yet."""
        with self._lock:
            dev = self._device(vid)
            state = dev.device_state
            if not isinstance(state, NetState) or not dev.has_feature(VF.VIRTIO_NET_F_MTU):
                raise VhostNotSupported(f"vid {vid}: VIRTIO_NET_F_MTU not negotiated")
            if state.mtu == 0:
                raise VhostTryAgain(f"vid {vid}: MTU not set yet")
            return state.mtu

    def get_vring_num(self, vid: int) -> int:
        """Number of vrings the device has (the highest index the front-end used + 1)."""
        with self._lock:
            return self._device(vid).nr_vring

    def get_ifname(self, vid: int) -> str:
        """The socket path of ``vid``."""
        with self._lock:
            return self._device(vid).ifname

    def get_vhost_vring(self, vid: int, qid: int) -> Vring:
        """The :class:`Vring` object of queue ``qid``."""
        with self._lock:
            return self._vring(vid, qid)[1]

    def get_mem_table(self, vid: int) -> list[dict]:
        """The mapped regions (gpa, size, qva, mmap_offset, mmap_size, host address, fd)."""
        with self._lock:
            dev = self._device(vid)
            return [] if dev.memory is None else dev.memory.describe()

    def get_vring_base(self, vid: int, qid: int) -> tuple[int, int]:
        """``(last_avail_idx, last_used_idx)``; for packed rings each carries its wrap counter in bit 15.

        While the ring is started the data path owns the indices and these
        are the values of its last stop.
        """
        with self._lock:
            dev, vq = self._vring(vid, qid)
            if vq.packed:
                return (vq.last_avail_idx | vq.avail_wrap_counter << 15, vq.last_used_idx | vq.used_wrap_counter << 15)
            return vq.last_avail_idx, vq.last_used_idx

    def set_vring_base(self, vid: int, qid: int, last_avail_idx: int, last_used_idx: int) -> None:
        """Set the indices (same encoding as :meth:`get_vring_base`); refused while the ring is started."""
        with self._lock:
            dev, vq = self._vring(vid, qid)
            if vq.started:
                raise VhostBusy(f"vid {vid}: vring {qid} is started; the data path owns its indices")
            if vq.packed:
                vq.last_avail_idx, vq.avail_wrap_counter = last_avail_idx & 0x7FFF, last_avail_idx >> 15 & 1
                vq.last_used_idx, vq.used_wrap_counter = last_used_idx & 0x7FFF, last_used_idx >> 15 & 1
            else:
                vq.last_avail_idx, vq.last_used_idx = last_avail_idx & 0xFFFF, last_used_idx & 0xFFFF

    def enable_guest_notification(self, vid: int, qid: int, enable: bool) -> None:
        """Record that the application wants guest notifications (interrupts) on or off for ``qid``;
        the data path applies it (``DataPathHooks.on_guest_notification``, ``Vring.guest_notification``)."""
        with self._lock:
            dev, _ = self._vring(vid, qid)
            dev.set_guest_notification(qid, enable)

    def vring_call(self, vid: int, qid: int) -> bool:
        """Signal the guest: write 1 to the ring's call eventfd.  No suppression check (the
        data path decides when to call).  False if the ring has no call fd (NOFD: polled)."""
        with self._lock:
            _, vq = self._vring(vid, qid)
            if vq.call_fd < 0:
                return False
            os.eventfd_write(vq.call_fd, 1)
            return True

    def avail_entries(self, vid: int, qid: int) -> int:
        """Split ring: ``avail->idx - last_avail_idx`` read from guest memory (0 if not mapped).

        Packed rings have no avail index: VhostNotSupported.
        """
        with self._lock:
            _, vq = self._vring(vid, qid)
            if vq.packed:
                raise VhostNotSupported(f"vid {vid}: avail_entries is not defined for packed rings")
            if not vq.access_ok:
                return 0
            avail_idx = read_u16(vq.avail_hva + 2)
            return (avail_idx - vq.last_avail_idx) & 0xFFFF

    # -- back-end requests (the SET_BACKEND_REQ_FD channel) ------------------------------

    def _in_loop(self, fn: Callable[[], Any], timeout: float | None = 30.0) -> Any:
        """Run ``fn()`` on the vhost-events thread with the library lock held, and return its result."""
        def locked() -> Any:
            with self._lock:
                return fn()

        return self._event_loop().call(locked, timeout=timeout)

    def _channel(self, vid: int) -> BackendChannel:
        dev = self._device(vid)
        if dev.backend_channel is None:
            raise VhostNotSupported(f"vid {vid}: the front-end gave no back-end channel (SET_BACKEND_REQ_FD)")
        return dev.backend_channel

    def backend_config_change(self, vid: int) -> concurrent.futures.Future:
        """Send CONFIG_CHANGE_MSG to ``vid``'s front-end (DPDK's ``rte_vhost_backend_config_change``).

        Returns a future: 0 once the front-end acknowledged it (with REPLY_ACK; without it, once
        sent), or the failure (see :mod:`~dataplane.vhost.backend_channel`).  Wait on it from any
        thread but the vhost-events thread.  VhostNoDevice / VhostNotSupported when there is no
        such device or it has no back-end channel.
        """
        return self._in_loop(lambda: self._channel(vid).config_change())

    def backend_vring_host_notifier(self, vid: int, qid: int, fd: int | None, offset: int = 0,
                                    size: int = 0) -> concurrent.futures.Future:
        """Send VRING_HOST_NOTIFIER_MSG: ``size`` bytes of ``fd`` from ``offset`` become vring ``qid``'s
        doorbell in the guest (QEMU maps one host page; needs ``page-per-vq=on``), or ``fd=None``
        withdraws it.  ``fd`` stays the caller's.  A future, as :meth:`backend_config_change`."""
        def send() -> concurrent.futures.Future:
            self._vring(vid, qid)  # VhostError for a vring the device does not have (DPDK: -EINVAL)
            return self._channel(vid).vring_host_notifier(qid, fd, offset, size)

        return self._in_loop(send)

    def driver_config_change(self, path: str, update: Callable[[], Any] | None = None) -> dict[int, concurrent.futures.Future]:
        """The config space of ``path``'s devices changed: tell every connected front-end.

        ``update()`` (optional) makes the change while no lcore serves any ring of the socket:
        every device's data path is paused first (rings taken back, indices kept) and resumed
        after, so e.g. a disk can grow underneath.  Then each device with a back-end channel
        that negotiated CONFIG gets CONFIG_CHANGE_MSG.  Returns ``{vid: future}`` for the devices
        notified (see :meth:`backend_config_change`); those without a channel are logged and
        left out (they see the change at their next GET_CONFIG).
        """
        def change() -> dict[int, concurrent.futures.Future]:
            devs = [conn.device for conn in self._socket(path).connections.values()]  # type: ignore[attr-defined]
            for dev in devs:
                dev.pause_datapath()
            try:
                if update is not None:
                    update()
            finally:
                for dev in devs:
                    dev.resume_datapath()
            notified = {}
            for dev in devs:
                if dev.backend_channel is None or not dev.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_CONFIG):
                    log.warning("config changed; the front-end has no back-end channel with CONFIG to be told",
                                path=path, vid=dev.vid)
                    continue
                notified[dev.vid] = dev.backend_channel.config_change()
            return notified

        return self._in_loop(change, timeout=None)  # bounded by the data path's stop and update() itself

    def log_write(self, vid: int, addr: int, length: int) -> int:
        """``rte_vhost_log_write``: mark guest-physical ``[addr, addr + length)`` in the dirty log, for
        guest writes the application made itself.  Nothing unless LOG_ALL is negotiated and a log
        is mapped.  Returns the pages that could not be logged (beyond the log)."""
        with self._lock:
            dev = self._device(vid)
            if not dev.log_all or dev.dirty_log is None or length <= 0:
                return 0
            return mark_dirty(dev.dirty_log.bitmap, addr, length)

    def log_used_vring(self, vid: int, qid: int, offset: int, length: int) -> int:
        """``rte_vhost_log_used_vring``: mark bytes ``[offset, offset + length)`` of vring ``qid``'s
        used ring (its ``log_guest_addr`` with VHOST_VRING_F_LOG, else its used ring's GPA)."""
        with self._lock:
            _, vq = self._vring(vid, qid)
            base = log_used_gpa(vq)
        return self.log_write(vid, base + offset, length)

    def stats(self, vid: int) -> dict[str, int]:
        """The device's message and error counters."""
        with self._lock:
            return dict(self._device(vid).stats)

    # -- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Unregister every socket and stop the event thread."""
        for path in self.driver_paths():
            try:
                self.driver_unregister(path)
            except VhostError:
                pass
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop()


_default: VhostLibrary | None = None
_default_lock = threading.Lock()


def get_library() -> VhostLibrary:
    """The process-wide library behind the module-level functions (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = VhostLibrary()
            atexit.register(_default.close)
        return _default


def _export(name: str):
    def fn(*args, **kwargs):
        return getattr(get_library(), name)(*args, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = getattr(VhostLibrary, name).__doc__
    return fn


_API = [
    "driver_register",
    "driver_unregister",
    "driver_start",
    "driver_set_features",
    "driver_get_features",
    "driver_enable_features",
    "driver_disable_features",
    "driver_set_protocol_features",
    "driver_get_protocol_features",
    "driver_set_max_queue_num",
    "driver_get_queue_num",
    "driver_set_mac",
    "driver_callback_register",
    "driver_datapath_register",
    "driver_stats",
    "get_device",
    "list_vids",
    "get_negotiated_features",
    "get_negotiated_protocol_features",
    "get_mtu",
    "get_vring_num",
    "get_ifname",
    "get_vhost_vring",
    "get_mem_table",
    "get_vring_base",
    "set_vring_base",
    "enable_guest_notification",
    "vring_call",
    "avail_entries",
    "backend_config_change",
    "backend_vring_host_notifier",
    "driver_config_change",
    "log_write",
    "log_used_vring",
    "stats",
    "driver_attach_vdpa_device",
    "driver_detach_vdpa_device",
    "driver_get_vdpa_device",
    "driver_get_vdpa_dev_type",
    "get_vdpa_device",
    "host_notifier_ctrl",
]
for _name in _API:
    globals()[_name] = _export(_name)
__all__ += _API
