"""What a device type adds to the generic vhost-user back-end (rust-vmm's ``VhostUserBackend``).

The state machine, :class:`~dataplane.vhost.device.VhostUserDevice`, does
everything every device type shares: ownership, feature negotiation, the
memory table, vrings, the status byte, resets and reconnects, the
application callbacks, and the hand-over of ready vrings to a data path.  It
knows nothing about networks or disks: whatever depends on the device type
it asks the socket's :class:`DeviceClass`.  ``net``
(:class:`~dataplane.vhost.net.NetDevice`) is one device class; a block
device is another.

**One object per registered socket.**  ``VhostLibrary.driver_register(path,
flags, device=...)`` takes the device class object (default: a new
``NetDevice``); every connection on that socket uses it.  State that belongs
to one connection lives in ``dev.device_state``, an object the class makes
in :meth:`DeviceClass.new_state`.  Every method below runs on the
vhost-events thread with the library lock held; a method must not block on
a thread that calls the vhost library.

**Attributes** (class attributes; a subclass may set them per instance):

``name``
    short name for logs and errors, e.g. ``"net"``.
``device_type``
    the virtio device ID (1 network, 2 block).
``protocol_features``
    mask of the protocol features this class implements beyond the generic
    ones (:data:`~dataplane.vhost.device.GENERIC_PROTOCOL_FEATURES`), e.g.
    MQ, RARP, MTU, CONFIG for net.  A socket offers the union by default
    (minus CONFIGURE_MEM_SLOTS and ``optional_protocol_features``, which are
    enabled on request) and refuses to offer anything outside it.
``optional_protocol_features``
    the part of ``protocol_features`` offered only when enabled
    (``driver_set_protocol_features``), because the usual front-ends do not
    use it: net's CONFIG (QEMU's virtio-net never reads a vhost-user config
    space and warns when it is offered; DPDK does not offer it for net).
``feature_names``
    the ``IntEnum`` naming the device-specific virtio feature bits (0-23;
    net: :class:`~dataplane.vhost_user.features.VirtioFeature`, blk:
    :class:`~dataplane.vhost.blk.spec.VirtioBlkFeature`), or None; logs and
    errors name the bits with it (:meth:`DeviceClass.features_str`).
``not_implemented``
    ``{bit number: why}`` of bits a user might ask for that the class does
    not implement: ``driver_set_features`` / ``driver_enable_features``
    refuse them with that reason.
``postcopy_support``
    True when the class's data path registers every mapping of guest memory
    with the postcopy fault relay (:mod:`~dataplane.vhost.postcopy`): only
    then may a socket be registered with POSTCOPY_SUPPORT (PAGEFAULT).  Net: yes.
``max_queues``
    the largest value ``driver_set_max_queue_num`` accepts.
``ready_vrings``
    the device starts (``new_device``, queues handed to the data path) once
    vrings ``0 .. ready_vrings - 1`` are ready (net: 2, DPDK's rule).
``datapath``
    the per-queue data path: a :class:`~dataplane.vhost.device.DataPathHooks`
    (``on_queue_start`` / ``on_queue_stop`` / ``on_guest_notification``,
    see there), or None for none.  ``driver_datapath_register`` sets it.

**Methods** (when the state machine calls them, and what they return):

``offered_features(flags) -> int``
    once, at ``driver_register``: the virtio feature bits the socket offers
    (``GET_FEATURES``) for those ``RTE_VHOST_USER_*`` registration flags.
    Transport bits included (VERSION_1, RING_PACKED, EVENT_IDX, LOG_ALL,
    PROTOCOL_FEATURES...): offer only what the data path implements.
``implemented_features(flags) -> int``
    the virtio feature bits ``driver_set_features`` / ``driver_enable_features``
    may offer (default: any; net and blk: exactly what they offer).
``features_str(mask) -> str``
    the names of the bits of ``mask``, device-specific ones by ``feature_names``.
``queue_num(config) -> int``
    the ``GET_QUEUE_NUM`` reply; ``config`` is the socket's
    :class:`~dataplane.vhost.device.DeviceConfig` (``config.queue_num`` is
    what ``driver_set_max_queue_num`` set).
``max_vrings(config) -> int``
    on every request naming a vring: indices at or above it are refused.
``new_state() -> object``
    when a connection starts and on ``RESET_OWNER`` / ``RESET_DEVICE``: the
    connection's fresh device state, stored in ``dev.device_state``.
``features_negotiated(dev) -> None``
    after ``SET_FEATURES`` was accepted while the device is not running
    (``dev.features`` holds the result), e.g. net drops the vrings of
    other queue pairs without MQ (``dev.truncate_vrings``).
``config_space(dev) -> bytes | None``
    on ``GET_CONFIG`` and ``SET_CONFIG`` (after the CONFIG protocol
    feature is checked): the device's current config space, or None when
    the device has none (both requests are then refused).  The state
    machine answers reads beyond it with zeros up to 256 bytes.
``set_config(dev, offset, data, flags) -> None``
    on ``SET_CONFIG`` once ``offset + len(data)`` lies inside
    ``config_space(dev)`` and ``flags`` is ``Config.WRITABLE_FIELDS`` or
    ``Config.MIGRATION``: apply the write, or raise
    :class:`~dataplane.vhost.device.RequestError` saying why not.
``requests() -> dict``
    once per connection: the device-specific requests it serves, request
    number -> ``handler(dev, msg, payload)`` (``payload`` is the parsed,
    validated payload object; return a reply payload or None; raise
    ``RequestError`` to refuse).  Net: ``SEND_RARP``, ``NET_SET_MTU``.
    These are the rows the message table
    (:data:`~dataplane.vhost_user.messages.FRONTEND_REQUESTS`) gives to the
    device class (``Handler.DEVICE``); the state machine checks the row
    first (payload, fds, the gating protocol feature), and refuses a device
    request the class does not serve as not supported.

A handler that needs the data path calls ``dev.hook(name, *args)``: it
calls ``datapath.<name>(dev, *args)`` and logs (never raises) what the hook
raises.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from dataplane.vhost.device import VHOST_MAX_VRING, DataPathHooks
from dataplane.vhost_user.features import VirtioFeature, bit, features_str

#: Device-specific feature bits are 0..23; the transport and vhost bits above are named by VirtioFeature.
_DEVICE_BITS = (1 << 24) - 1

__all__ = ["DeviceClass"]


class DeviceClass:
    """Base of the device classes: a device with no device-specific requests and no config space.

    Subclasses override what their device type needs (see the module docstring).
    """

    name = "generic"
    device_type = 0
    protocol_features = 0
    optional_protocol_features = 0
    feature_names: type[enum.IntEnum] | None = None
    not_implemented: dict[int, str] = {}
    postcopy_support = False
    max_queues = VHOST_MAX_VRING
    ready_vrings = 1

    def __init__(self, datapath: DataPathHooks | None = None):
        self.datapath = datapath

    def offered_features(self, flags: int) -> int:
        return 0

    def implemented_features(self, flags: int) -> int:
        return (1 << 64) - 1

    def features_str(self, mask: int) -> str:
        """``"VIRTIO_BLK_F_FLUSH|VIRTIO_F_VERSION_1"``: device bits by this class's names, the rest by VirtioFeature's."""
        mask = int(mask)
        parts = []
        device = mask & _DEVICE_BITS
        if device:
            parts.append(features_str(device, self.feature_names) if self.feature_names else
                         "|".join(f"bit{n}" for n in range(24) if device & bit(n)))
        if mask & ~_DEVICE_BITS:
            parts.append(features_str(mask & ~_DEVICE_BITS, VirtioFeature))
        return "|".join(parts) or "0"

    def queue_num(self, config: Any) -> int:
        return config.queue_num

    def max_vrings(self, config: Any) -> int:
        return min(config.queue_num, VHOST_MAX_VRING)

    def new_state(self) -> Any:
        return None

    def features_negotiated(self, dev: Any) -> None:
        pass

    def config_space(self, dev: Any) -> bytes | None:
        return None

    def set_config(self, dev: Any, offset: int, data: bytes, flags: int) -> None:
        raise NotImplementedError  # never called: config_space() is None

    def requests(self) -> dict[int, Callable[[Any, Any, Any], Any]]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
