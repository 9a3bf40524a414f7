"""The per-connection vhost-user device: the back-end's state machine.

One :class:`VhostUserDevice` per connection (a *vid*).  The transport hands
it every received :class:`~dataplane.vhost_user.messages.Message`
(:meth:`VhostUserDevice.handle`); it validates the message against the
message table, applies the spec's semantics, replies, and tells the
application (DPDK-style callbacks, :class:`VhostDeviceOps`) and the data path
(:class:`DataPathHooks`) what changed.

Semantics (the spec's, with DPDK's choices where the spec leaves room):

* Rings start **stopped**, and **disabled** when ``VHOST_USER_F_PROTOCOL_FEATURES``
  is negotiated (``SET_VRING_ENABLE`` enables them).  Without it,
  ``SET_VRING_KICK`` enables the ring (DPDK's rule).
* A vring is **ready** (DPDK's ``vq->ready``) when its addresses are
  translated, its kick and call fds are set (an fd or NOFD = polling) and it
  is enabled.  Every change of readiness is reported with
  ``vring_state_changed(vid, qid, enable)``.
* The device becomes **running** (``new_device(vid)``) when features are set,
  a mem table is mapped, the first ``ready_vrings`` vrings of its device
  class are ready (net: vrings 0 and 1) and, if
  ``VHOST_USER_PROTOCOL_F_STATUS`` is negotiated, the status has DRIVER_OK.
  ``GET_VRING_BASE``, ``RESET_OWNER``/``RESET_DEVICE`` and disconnection
  end it (``destroy_device(vid)``).
* ``GET_VRING_BASE`` stops the ring (the data path returns it first) and
  returns ``last_avail_idx`` -- for packed rings ``last_avail_idx |
  avail_wrap_counter << 15 | last_used_idx << 16 | used_wrap_counter << 31``
  -- without resetting it; it closes the kick and call fds and forgets the
  ring addresses.
* ``SET_MEM_TABLE`` with an identical table (same GPA, size and user address
  per region) is ignored; a changed table is mapped, the data path is
  stopped, the old one unmapped and every ring's addresses retranslated.
* ``SET_FEATURES`` with bits never offered is refused; while running only
  ``VHOST_F_LOG_ALL`` may change (``features_changed``, and the data path's
  ``on_log_all``).
* ``SET_LOG_BASE`` maps the dirty log (:mod:`~dataplane.vhost.dirty_log`)
  and replies with an empty payload; the started rings are taken back and
  handed out again so the data path writes only into the new log.  The log
  is unmapped when the device stops, resets or disconnects.  ``SET_LOG_FD``'s
  eventfd is kept (nothing here needs to signal it) and closed with the device.
* ``GET_INFLIGHT_FD`` allocates a zeroed inflight area (:mod:`~dataplane.vhost.inflight`)
  for ``num_queues`` x ``queue_size`` in the negotiated layout (split or packed) and
  replies with its fd; ``SET_INFLIGHT_FD`` maps the front-end's (after a back-end
  crash: the previous instance's records).  Either way the device keeps it in
  ``inflight`` and hands each ring its region when the ring starts; the data path
  recovers from it there and resubmits what was in flight before new requests.
  The area lives as long as the connection (QEMU sends SET_INFLIGHT_FD before every
  start); refused descriptions map nothing.

**The message table.**  Each request is checked against its row
(:data:`~dataplane.vhost_user.messages.FRONTEND_REQUESTS`): payload and fds
first, then it is refused if the row marks it unsupported (with the row's
reason), if it is a device request the device class has no handler for, or
if the protocol feature that gates it is not negotiated.
:data:`REQUEST_HANDLERS` binds the rows the state machine serves.

**Errors.**  A refused request (:class:`RequestError`) is logged with the
device's path, vid, the request's name and the reason, counted in
:attr:`VhostUserDevice.stats`, and then, as DPDK does: with NEED_REPLY the
front-end gets a u64 ``1`` and the connection stays; without it the
connection is closed.  Ring problems (:class:`QueueError`: addresses outside
the mem table, misaligned rings) only make that ring unusable: logged,
counted, ``1`` with NEED_REPLY, connection kept.

**Device classes.**  Nothing here depends on the device type: the socket's
:class:`~dataplane.vhost.device_class.DeviceClass` (net:
:class:`~dataplane.vhost.net.NetDevice`) supplies the offered features, its
protocol features, the queue count, the config space, its own requests and
the per-queue data path; :mod:`~dataplane.vhost.device_class` documents
that interface.

**The data path** (built on top of this) plugs in through the device class's
:class:`DataPathHooks` and reads :class:`Vring` and the device's public
attributes; see their docstrings.  Every hook and callback runs on the
vhost-events thread, with the library lock held.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dataplane import log as dplog
from dataplane.vhost.backend_channel import BackendChannel
from dataplane.vhost.dirty_log import LogError, LogRegion
from dataplane.rings.packed import packed_position_from_flags
from dataplane.vhost.guest_memory import GuestMemory, GuestMemoryError, read_into, read_u16
from dataplane.vhost.inflight import InflightArea, InflightError
from dataplane.vhost.postcopy import Postcopy
from dataplane.vhost.vdpa_ops import call_op
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.errors import QueueError, RequestError, VhostUserError
from dataplane.vhost_user.features import (
    VhostUserProtocolFeature as PF,
    VirtioDeviceStatus,
    VirtioFeature as VF,
    bit,
    features_str,
)
from dataplane.vhost_user.messages import (
    Handler,
    Message,
    MessageSpec,
    VhostUserRequest as R,
    parse_request,
    request_name,
)
from dataplane.vhost_user.payloads import (
    VHOST_USER_MAX_CONFIG_SIZE,
    VHOST_USER_VRING_IDX_MASK,
    VHOST_USER_VRING_NOFD_MASK,
    Payload,
)

__all__ = [
    "VIRTIO_UNINITIALIZED_EVENTFD",
    "VIRTIO_INVALID_EVENTFD",
    "VHOST_MAX_VRING",
    "VIRTIO_MAX_QUEUE_SIZE",
    "GENERIC_PROTOCOL_FEATURES",
    "RTE_VHOST_USER_CLIENT",
    "RTE_VHOST_USER_NO_RECONNECT",
    "RTE_VHOST_USER_RESERVED_1",
    "RTE_VHOST_USER_IOMMU_SUPPORT",
    "RTE_VHOST_USER_POSTCOPY_SUPPORT",
    "RTE_VHOST_USER_EXTBUF_SUPPORT",
    "RTE_VHOST_USER_LINEARBUF_SUPPORT",
    "RTE_VHOST_USER_ASYNC_COPY",
    "RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS",
    "RTE_VHOST_USER_NET_STATS_ENABLE",
    "VHOST_USER_MAX_RAM_SLOTS",
    "REQUEST_HANDLERS",
    "RequestError",
    "QueueError",
    "DataPathHooks",
    "VhostDeviceOps",
    "DeviceConfig",
    "Vring",
    "VhostUserDevice",
]

log = dplog.get_logger("dataplane.vhost")

#: kick/call/err fd never set by the front-end.
VIRTIO_UNINITIALIZED_EVENTFD = -2
#: kick/call/err set with the NOFD flag: no fd, poll.
VIRTIO_INVALID_EVENTFD = -1

#: DPDK's VHOST_MAX_VRING: no vring index beyond 255.
VHOST_MAX_VRING = 256
#: The packed GET/SET_VRING_BASE value of a ring that has not moved: slot 0 in lap 1, both halves.
PACKED_INITIAL_BASE = 1 << 15 | 1 << 31
#: Largest queue size (split rings must also be a power of two).
VIRTIO_MAX_QUEUE_SIZE = 32768
#: What GET_MAX_MEM_SLOTS answers (regions added one by one with ADD_MEM_REG).
VHOST_USER_MAX_RAM_SLOTS = 32

#: Protocol features the state machine implements for every device type
#: (a device class adds its own: ``DeviceClass.protocol_features``).
GENERIC_PROTOCOL_FEATURES = sum(
    bit(f)
    for f in (
        PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD,
        PF.VHOST_USER_PROTOCOL_F_REPLY_ACK,
        PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ,
        PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD,
        PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER,
        PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
        PF.VHOST_USER_PROTOCOL_F_RESET_DEVICE,
        PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
        PF.VHOST_USER_PROTOCOL_F_STATUS,
    )
)

# -- socket registration flags (rte_vhost.h, DPDK 22.11), kept in DeviceConfig.flags --
RTE_VHOST_USER_CLIENT = 1 << 0
RTE_VHOST_USER_NO_RECONNECT = 1 << 1
RTE_VHOST_USER_RESERVED_1 = 1 << 2
RTE_VHOST_USER_IOMMU_SUPPORT = 1 << 3
RTE_VHOST_USER_POSTCOPY_SUPPORT = 1 << 4
RTE_VHOST_USER_EXTBUF_SUPPORT = 1 << 5
RTE_VHOST_USER_LINEARBUF_SUPPORT = 1 << 6
RTE_VHOST_USER_ASYNC_COPY = 1 << 7
RTE_VHOST_USER_NET_COMPLIANT_OL_FLAGS = 1 << 8
RTE_VHOST_USER_NET_STATS_ENABLE = 1 << 9


class DataPathHooks:
    """Where the data path plugs into the control plane.  Override what you need.

    The device class holds them (``DeviceClass.datapath``).  Every method
    runs on the vhost-events thread with the library lock held, and must not
    wait for a thread that calls the vhost library.  A device class may
    extend them with hooks of its own (net: ``on_send_rarp``), called with
    :meth:`VhostUserDevice.hook`.

    * :meth:`on_queue_start` -- vring ``qid`` of a running device is ready:
      the data path may start using it (hand it to an lcore).  Read the ring
      from ``dev.vrings[qid]`` (a :class:`Vring`): ``size``, ``packed``,
      ``desc_hva/avail_hva/used_hva`` (this process) or
      ``desc_gpa/avail_gpa/used_gpa`` (for a process that maps the regions
      of ``dev.memory.describe()`` itself), ``last_avail_idx``,
      ``last_used_idx``, wrap counters, ``kick_fd``, ``call_fd``;
      ``dev.region_table`` translates buffer GPAs; ``dev.features`` says
      how to parse.
    * :meth:`on_queue_stop` -- synchronous: must return only once no lcore
      touches the ring or guest memory any more, after writing the ring's
      device-side indices back into the :class:`Vring` (``last_avail_idx``,
      ``last_used_idx``, ``avail_wrap_counter``, ``used_wrap_counter``).
      Called before ``GET_VRING_BASE`` replies, before a changed mem table
      is unmapped, before any change of the ring's addresses, size, base,
      kick or call fd, when the ring is disabled, and before disconnect
      cleanup.  A stopped ring is started again (``on_queue_start``) when
      it is ready again.
    * :meth:`on_guest_notification` -- the application asked (via
      ``enable_guest_notification``) to enable or disable guest
      notifications on a ring; the intent is also in ``Vring.guest_notification``.
    * :meth:`on_log_all` -- ``VHOST_F_LOG_ALL`` was turned on or off while
      the device runs: the started rings' data path must start or stop
      marking the pages it writes in ``dev.dirty_log`` without stopping.
      (A ring started later reads ``dev.log_all`` and ``dev.dirty_log``.)
    """

    def on_queue_start(self, dev: "VhostUserDevice", qid: int) -> None:
        pass

    def on_queue_stop(self, dev: "VhostUserDevice", qid: int) -> None:
        pass

    def on_guest_notification(self, dev: "VhostUserDevice", qid: int, enable: bool) -> None:
        pass

    def on_log_all(self, dev: "VhostUserDevice", enable: bool) -> None:
        pass


@dataclass
class VhostDeviceOps:
    """Application callbacks (DPDK's ``struct rte_vhost_device_ops``); any may be None.

    ``new_device(vid)`` returns 0 (or None) when the application takes the
    device; anything else (or an exception) leaves it not running, and it is
    offered again after the next message.  ``new_connection(vid)`` returning
    a negative number refuses the connection.  The others' results are ignored.
    """

    new_device: Callable[[int], Any] | None = None
    destroy_device: Callable[[int], Any] | None = None
    vring_state_changed: Callable[[int, int, int], Any] | None = None
    features_changed: Callable[[int, int], Any] | None = None
    new_connection: Callable[[int], Any] | None = None
    destroy_connection: Callable[[int], Any] | None = None


@dataclass
class DeviceConfig:
    """What a registered socket offers; shared (live) by the devices of its connections.

    ``device`` is the socket's device class (a
    :class:`~dataplane.vhost.device_class.DeviceClass`); ``flags`` the
    ``RTE_VHOST_USER_*`` registration flags; ``features`` /
    ``protocol_features`` what GET_FEATURES / GET_PROTOCOL_FEATURES answer;
    ``supported_features`` what may be offered again; ``queue_num`` the
    queue count set with ``driver_set_max_queue_num`` (net: queue pairs);
    ``ops`` the application callbacks; ``vdpa_device`` the vDPA device attached
    to the socket (:mod:`~dataplane.vhost.vdpa`), copied into each new connection.
    """

    path: str
    device: Any
    flags: int = 0
    features: int = 0
    supported_features: int = 0
    protocol_features: int = 0
    queue_num: int = 1
    ops: Any = None
    vdpa_device: Any = None


class Vring:
    """One virtqueue as the data path sees it.

    Set by the front-end: ``size`` (SET_VRING_NUM), ``desc_user_addr``,
    ``avail_user_addr``, ``used_user_addr``, ``log_guest_addr``,
    ``addr_flags`` (SET_VRING_ADDR), ``kick_fd``/``call_fd``/``err_fd``
    (an fd, :data:`VIRTIO_INVALID_EVENTFD` = NOFD/poll, or
    :data:`VIRTIO_UNINITIALIZED_EVENTFD`), ``enabled``.

    Translated by the control plane when a mem table is mapped
    (``access_ok``): ``desc_hva``, ``avail_hva``, ``used_hva`` (for a packed
    ring the avail/used fields hold the driver/device event areas, also
    readable as ``driver_event_hva`` / ``device_event_hva``) and the same as
    guest-physical addresses ``desc_gpa``, ``avail_gpa``, ``used_gpa``.

    Device-side indices (owned by the data path while the ring is
    ``started``): ``last_avail_idx``, ``last_used_idx`` (split: free-running
    u16; packed: slot index) and, packed only, ``avail_wrap_counter``,
    ``used_wrap_counter``.

    ``ready``: everything above is in place (DPDK's ``vq->ready``).
    ``started``: handed to the data path (``on_queue_start`` called, no
    ``on_queue_stop`` since).  ``error``: why the ring is unusable, if it is.
    """

    def __init__(self, index: int):
        self.index = index
        self.size = 0
        self.packed = False
        self.desc_user_addr = 0
        self.avail_user_addr = 0
        self.used_user_addr = 0
        self.log_guest_addr = 0
        self.addr_flags = 0
        self.addr_set = False
        self.desc_hva = self.avail_hva = self.used_hva = 0
        self.desc_gpa = self.avail_gpa = self.used_gpa = 0
        self.access_ok = False
        self.last_avail_idx = 0
        self.last_used_idx = 0
        self.avail_wrap_counter = 1
        self.used_wrap_counter = 1
        self.kick_fd = VIRTIO_UNINITIALIZED_EVENTFD
        self.call_fd = VIRTIO_UNINITIALIZED_EVENTFD
        self.err_fd = VIRTIO_UNINITIALIZED_EVENTFD
        self.enabled = False
        self.ready = False
        self.started = False
        self.guest_notification: bool | None = None
        self.error: str | None = None

    # packed-ring names for the two event areas
    @property
    def driver_event_hva(self) -> int:
        return self.avail_hva

    @property
    def device_event_hva(self) -> int:
        return self.used_hva

    def base_value(self) -> int:
        """The GET_VRING_BASE value (see the module docstring for the packed encoding)."""
        if self.packed:
            return (
                (self.last_avail_idx & 0x7FFF)
                | (self.avail_wrap_counter & 1) << 15
                | (self.last_used_idx & 0x7FFF) << 16
                | (self.used_wrap_counter & 1) << 31
            )
        return self.last_avail_idx & 0xFFFF

    def set_base_value(self, num: int) -> None:
        """Apply a SET_VRING_BASE value (split: both indices; packed: see module docstring).

        A packed value without the used half (bits 16-31 zero, as DPDK's
        virtio-user sends) sets the used position equal to the avail one.
        """
        if self.packed:
            self.last_avail_idx = num & 0x7FFF
            self.avail_wrap_counter = num >> 15 & 1
            if num >> 16:
                self.last_used_idx = num >> 16 & 0x7FFF
                self.used_wrap_counter = num >> 31 & 1
            else:
                self.last_used_idx = self.last_avail_idx
                self.used_wrap_counter = self.avail_wrap_counter
        else:
            self.last_avail_idx = self.last_used_idx = num & 0xFFFF

    def invalidate(self) -> None:
        """Forget the translated addresses (DPDK's vring_invalidate)."""
        self.access_ok = False
        self.desc_hva = self.avail_hva = self.used_hva = 0
        self.desc_gpa = self.avail_gpa = self.used_gpa = 0

    def close_fds(self) -> None:
        for name in ("kick_fd", "call_fd", "err_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            setattr(self, name, VIRTIO_UNINITIALIZED_EVENTFD)

    def ring_sizes(self, event_idx: bool) -> tuple[int, int, int]:
        """Bytes of (desc, avail/driver area, used/device area) for this ring's size and layout."""
        if self.packed:
            return 16 * self.size, 4, 4
        extra = 2 if event_idx else 0
        return 16 * self.size, 4 + 2 * self.size + extra, 4 + 8 * self.size + extra

    def __repr__(self) -> str:
        return (
            f"Vring({self.index}, size={self.size}, packed={self.packed}, ready={self.ready}, started={self.started}, "
            f"enabled={self.enabled}, access_ok={self.access_ok}, last_avail={self.last_avail_idx}, "
            f"last_used={self.last_used_idx}, kick={self.kick_fd}, call={self.call_fd})"
        )


#: The state machine's handler (a method name) of every request the message table gives
#: to the back-end (``Handler.BACKEND``); device classes add theirs (``Handler.DEVICE``).
REQUEST_HANDLERS: dict[int, str] = {
    R.VHOST_USER_GET_FEATURES: "_get_features",
    R.VHOST_USER_SET_FEATURES: "_set_features",
    R.VHOST_USER_SET_OWNER: "_set_owner",
    R.VHOST_USER_RESET_OWNER: "_reset_owner",
    R.VHOST_USER_SET_MEM_TABLE: "_set_mem_table",
    R.VHOST_USER_SET_LOG_BASE: "_set_log_base",
    R.VHOST_USER_SET_LOG_FD: "_set_log_fd",
    R.VHOST_USER_SET_VRING_NUM: "_set_vring_num",
    R.VHOST_USER_SET_VRING_ADDR: "_set_vring_addr",
    R.VHOST_USER_SET_VRING_BASE: "_set_vring_base",
    R.VHOST_USER_GET_VRING_BASE: "_get_vring_base",
    R.VHOST_USER_SET_VRING_KICK: "_set_vring_kick",
    R.VHOST_USER_SET_VRING_CALL: "_set_vring_call",
    R.VHOST_USER_SET_VRING_ERR: "_set_vring_err",
    R.VHOST_USER_GET_PROTOCOL_FEATURES: "_get_protocol_features",
    R.VHOST_USER_SET_PROTOCOL_FEATURES: "_set_protocol_features",
    R.VHOST_USER_GET_QUEUE_NUM: "_get_queue_num",
    R.VHOST_USER_SET_VRING_ENABLE: "_set_vring_enable",
    R.VHOST_USER_SET_BACKEND_REQ_FD: "_set_backend_req_fd",
    R.VHOST_USER_GET_CONFIG: "_get_config",
    R.VHOST_USER_SET_CONFIG: "_set_config",
    R.VHOST_USER_RESET_DEVICE: "_reset_device",
    R.VHOST_USER_GET_MAX_MEM_SLOTS: "_get_max_mem_slots",
    R.VHOST_USER_ADD_MEM_REG: "_add_mem_reg",
    R.VHOST_USER_REM_MEM_REG: "_rem_mem_reg",
    R.VHOST_USER_SET_STATUS: "_set_status",
    R.VHOST_USER_GET_STATUS: "_get_status",
    R.VHOST_USER_POSTCOPY_ADVISE: "_postcopy_advise",
    R.VHOST_USER_POSTCOPY_LISTEN: "_postcopy_listen",
    R.VHOST_USER_POSTCOPY_END: "_postcopy_end",
    R.VHOST_USER_GET_INFLIGHT_FD: "_get_inflight_fd",
    R.VHOST_USER_SET_INFLIGHT_FD: "_set_inflight_fd",
}


class VhostUserDevice:
    """The state of one vhost-user connection.

    Public attributes for the data path and the library:

    ``vid``, ``ifname`` (the socket path), ``config`` (the socket's
    :class:`DeviceConfig`), ``device_class`` (its device class),
    ``device_state`` (the device class's per-connection state), ``features``
    (negotiated), ``protocol_features`` (negotiated), ``features_set``,
    ``status`` (virtio status byte), ``memory``
    (:class:`~dataplane.vhost.guest_memory.GuestMemory` or None),
    ``region_table`` (``uint64[R, 3]``), ``dirty_log`` (the mapped
    :class:`~dataplane.vhost.dirty_log.LogRegion` or None), ``inflight`` (the
    :class:`~dataplane.vhost.inflight.InflightArea` or None), ``vrings`` (list of :class:`Vring`,
    index = queue id), ``nr_vring``, ``running``, ``backend_channel``
    (the :class:`~dataplane.vhost.backend_channel.BackendChannel` set up by
    SET_BACKEND_REQ_FD, or None), ``loop`` (the event loop serving it),
    ``stats`` (counters: ``messages``, ``replies``, ``errors`` and
    ``errors:<REQUEST>``), ``last_error``.
    """

    def __init__(self, vid: int, config: DeviceConfig, send: Callable[[Message], None], loop: Any = None):
        self.vid = vid
        self.loop = loop
        self.config = config
        self.device_class = config.device
        self.ifname = config.path
        self._send = send
        self.stats: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self.closed = False
        self._handlers: dict[int, Callable[[Message, Any], Payload | bytes | None]] = {
            request: getattr(self, method) for request, method in REQUEST_HANDLERS.items()
        }
        for request, handler in self.device_class.requests().items():
            self._handlers[request] = lambda msg, p, handler=handler: handler(self, msg, p)
        self.owner = False
        self.backend_channel: BackendChannel | None = None
        self.memory: GuestMemory | None = None
        self.dirty_log: LogRegion | None = None
        self.inflight: InflightArea | None = None
        self.log_call_fd = -1
        self.postcopy = Postcopy(self.ifname)
        self.vdpa_device = config.vdpa_device  # as DPDK: attaching later does not change a connection
        self.vdpa_configured = False
        self._request: tuple[int, int] | None = None  # (request, vring index) being handled, for dev_conf's blk rule
        self._reset_state(keep_protocol=False)

    def _reset_state(self, keep_protocol: bool) -> None:
        self.features = 0
        self.features_set = False
        self.features_failed = False
        if not keep_protocol:
            self.protocol_features = 0
        self.status = 0
        self.device_state = self.device_class.new_state()
        self.vrings: list[Vring] = []
        self.running = False

    # -- derived properties --------------------------------------------------

    @property
    def datapath(self) -> DataPathHooks:
        return self.device_class.datapath or _NO_DATAPATH

    @property
    def nr_vring(self) -> int:
        return len(self.vrings)

    @property
    def max_vrings(self) -> int:
        """Vrings a front-end may use (the device class says how many)."""
        return self.device_class.max_vrings(self.config)

    @property
    def packed(self) -> bool:
        return self.has_feature(VF.VIRTIO_F_RING_PACKED)

    @property
    def log_all(self) -> bool:
        return self.has_feature(VF.VHOST_F_LOG_ALL)

    @property
    def region_table(self) -> np.ndarray:
        if self.memory is None:
            return np.zeros((0, 3), np.uint64)
        return self.memory.region_table()

    def has_feature(self, n: int) -> bool:
        return bool(self.features >> int(n) & 1)

    def has_protocol_feature(self, n: int) -> bool:
        return bool(self.protocol_features >> int(n) & 1)

    # -- message handling ----------------------------------------------------

    def handle(self, msg: Message) -> bool:
        """Handle one request; returns False when the connection must be closed.

        Always closes the fds of ``msg`` that no handler took.
        """
        if self.postcopy.awaiting_ack:
            return self._postcopy_ack(msg)
        name = request_name(msg.request)
        self.stats["messages"] += 1
        failed = queue_only = False
        reply: Payload | bytes | None = None
        try:
            spec, payload = parse_request(msg)
            self._request = (int(msg.request), getattr(payload, "index", getattr(payload, "u64", -1)) & VHOST_USER_VRING_IDX_MASK)
            log.debug("vhost-user request", path=self.ifname, vid=self.vid, request=name, size=len(msg.payload), fds=len(msg.fds))
            reply = self._handler(spec)(msg, payload)
        except (VhostUserError, GuestMemoryError) as e:
            failed = True
            queue_only = isinstance(e, QueueError)
            self._refuse(name, e.reason if isinstance(e, VhostUserError) else str(e))
        except Exception as e:  # a bug, here or in a callback: refuse, keep the process serving
            failed = True
            self._refuse(name, f"internal error: {e!r}")
            log.exception("vhost-user internal error", path=self.ifname, vid=self.vid, request=name)
        finally:
            msg.close_fds()

        if self.closed:
            return False
        if isinstance(reply, tuple):  # (payload, fds): the fds are the handler's, closed once sent
            reply, reply_fds = reply
            try:
                self.send_reply(msg.request, reply, reply_fds)
            finally:
                for fd in reply_fds:
                    os.close(fd)
        elif reply is not None and not failed:
            self.send_reply(msg.request, reply)
        elif msg.need_reply:
            self.send_reply(msg.request, P.U64(1 if failed else 0))
        elif failed and not queue_only:
            return False
        if self.closed:  # the reply could not be sent
            return False
        self._update_readiness()
        self._request = None
        return not self.closed

    def _handler(self, spec: MessageSpec) -> Callable[[Message, Any], Payload | bytes | None]:
        """The handler of a parsed request, per its row: refused when unsupported, when the device
        class has none, or when the protocol feature that gates it is not negotiated."""
        if spec.handler is Handler.UNSUPPORTED:
            raise RequestError(f"not supported: {spec.why}")
        handler = self._handlers.get(spec.number)
        if handler is None:
            raise RequestError(f"not supported by the {self.device_class.name} device")
        if spec.gate is not None and not self.has_protocol_feature(spec.gate):
            raise RequestError(f"{spec.gate.name.removeprefix('VHOST_USER_PROTOCOL_F_')} protocol feature not negotiated")
        return handler

    def send_reply(self, request: int, payload: Payload | bytes, fds: list[int] | None = None) -> None:
        self.stats["replies"] += 1
        self._send(Message.build(request, payload, fds or [], reply=True))

    def _refuse(self, request: str, reason: str) -> None:
        self.stats["errors"] += 1
        self.stats[f"errors:{request}"] += 1
        self.last_error = f"{request}: {reason}"
        log.error("vhost-user request refused", path=self.ifname, vid=self.vid, request=request, reason=reason)

    def protocol_violation(self, reason: str) -> None:
        """Count and log a framing error seen by the transport (it then closes the connection)."""
        self.stats["errors"] += 1
        self.stats["errors:framing"] += 1
        self.last_error = reason
        log.error("vhost-user protocol violation", path=self.ifname, vid=self.vid, reason=reason)

    # -- vrings --------------------------------------------------------------

    def _vring(self, index: int) -> Vring:
        """The vring ``index``, allocating it (and those below it) on first use, as DPDK does."""
        if index >= self.max_vrings:
            raise RequestError(f"vring index {index} out of range (device has {self.max_vrings} vrings)")
        while len(self.vrings) <= index:
            vq = Vring(len(self.vrings))
            vq.packed = self.packed
            self.vrings.append(vq)
        return self.vrings[index]

    def _translate(self, vq: Vring) -> None:
        """Translate the ring's user addresses through the mem table; raise QueueError if they do not."""
        vq.invalidate()
        if not vq.addr_set or vq.size == 0 or self.memory is None:
            return
        mem = self.memory
        sizes = vq.ring_sizes(self.has_feature(VF.VIRTIO_RING_F_EVENT_IDX))
        areas = ("descriptor table", "driver area", "device area") if vq.packed else ("descriptor table", "avail ring", "used ring")
        aligns = (16, 4, 4) if vq.packed else (16, 2, 4)
        addrs = (vq.desc_user_addr, vq.avail_user_addr, vq.used_user_addr)
        hvas, gpas = [], []
        for area, qva, length, align in zip(areas, addrs, sizes, aligns):
            if qva % align:
                vq.error = f"vring {vq.index}: {area} address {qva:#x} is not {align}-byte aligned"
                raise QueueError(vq.error)
            hva = mem.qva_to_hva(qva, length)
            if not hva:
                vq.error = f"vring {vq.index}: {area} [{qva:#x}, +{length:#x}) is not inside one memory region"
                raise QueueError(vq.error)
            hvas.append(hva)
            gpas.append(mem.qva_to_gpa(qva, length))
        vq.desc_hva, vq.avail_hva, vq.used_hva = hvas
        vq.desc_gpa, vq.avail_gpa, vq.used_gpa = gpas
        vq.access_ok = True
        vq.error = None
        if not vq.packed:
            used_idx = read_u16(vq.used_hva + 2)
            if used_idx != vq.last_used_idx:
                # Reconnect without inflight tracking (DPDK): resume from the ring's used idx.
                log.warning(
                    "vring last_used_idx differs from the used ring's idx; resuming from the used ring",
                    path=self.ifname, vid=self.vid, vring=vq.index, last_used_idx=vq.last_used_idx, used_idx=used_idx,
                )
                vq.last_used_idx = vq.last_avail_idx = used_idx
        elif vq.base_value() == PACKED_INITIAL_BASE and self.inflight is None:
            self._resume_packed_from_flags(vq)  # with an inflight area the ring resumes from the area

    def _resume_packed_from_flags(self, vq: Vring) -> None:
        """A packed ring given the initial base: if its descriptors show the device elsewhere, resume there.

        The packed counterpart of resuming a split ring from its used idx. QEMU's virtio-net
        restores a packed ring after a back-end crash with the base it last knew, the initial
        one (a packed ring keeps no index it could read back, and the net device does no
        inflight tracking), so a restarted back-end would fetch from slot 0 of a ring the driver
        is far along. The flags tell where the device stood (:func:`packed_position_from_flags`);
        a fresh ring reads as the initial base, so nothing changes for it. A front-end that does
        inflight tracking (QEMU's vhost-user-blk) gets its rings resumed from the inflight area instead.
        """
        flags = read_into(vq.desc_hva, np.empty(vq.size * 8, dtype=np.uint16))[7::8]
        pos = packed_position_from_flags(flags)
        if pos is None:
            log.warning("packed vring flags fit no single position; keeping the base given",
                        path=self.ifname, vid=self.vid, vring=vq.index)
        elif pos != (0, 1):
            log.warning("packed vring given the initial base but its descriptors show the device at "
                        "another slot; resuming there", path=self.ifname, vid=self.vid, vring=vq.index,
                        last_avail_idx=pos[0], wrap_counter=pos[1])
            vq.last_avail_idx = vq.last_used_idx = pos[0]
            vq.avail_wrap_counter = vq.used_wrap_counter = pos[1]

    def truncate_vrings(self, n: int) -> None:
        """Drop the vrings from index ``n`` on (stopped, fds closed): a device class
        keeps only what the negotiated features allow."""
        for vq in self.vrings[n:]:
            self._unready(vq)
            vq.close_fds()
        del self.vrings[n:]

    def _retranslate_all(self) -> None:
        """After the mem table changed: translate every ring that has addresses; failures are logged."""
        for vq in self.vrings:
            if not vq.addr_set:
                continue
            try:
                self._translate(vq)
            except QueueError as e:
                self._refuse("retranslation", str(e))

    def _unready(self, vq: Vring) -> None:
        """A ready ring is being reconfigured: stop it and report it disabled (it is re-evaluated after)."""
        if vq.ready:
            self._stop_queue(vq)
            vq.ready = False
            self._vdpa_op("set_vring_state", self.vid, vq.index, 0)
            self._callback("vring_state_changed", self.vid, vq.index, 0)

    def _start_queue(self, vq: Vring) -> None:
        if not vq.started:
            vq.started = True
            self.hook("on_queue_start", vq.index)

    def _stop_queue(self, vq: Vring) -> None:
        if vq.started:
            vq.started = False
            self.hook("on_queue_stop", vq.index)

    def _quiesce(self) -> None:
        """Take every ring back from the data path (they restart when ready again)."""
        for vq in self.vrings:
            self._stop_queue(vq)

    def _vring_is_ready(self, vq: Vring) -> bool:
        return (
            vq.access_ok
            and vq.kick_fd != VIRTIO_UNINITIALIZED_EVENTFD
            and vq.call_fd != VIRTIO_UNINITIALIZED_EVENTFD
            and vq.enabled
        )

    def _virtio_is_ready(self) -> bool:
        n = self.device_class.ready_vrings
        if not self.features_set or self.memory is None or len(self.vrings) < n:
            return False
        if not all(vq.ready for vq in self.vrings[:n]):
            return False
        if self.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_STATUS) and not self.status & VirtioDeviceStatus.DRIVER_OK:
            return False
        return True

    def _update_readiness(self) -> None:
        """Re-evaluate every ring and the device (after each message, as DPDK does)."""
        for vq in self.vrings:
            cur = self._vring_is_ready(vq)
            if vq.ready and not cur:
                self._stop_queue(vq)
                vq.ready = False
                self._vdpa_op("set_vring_state", self.vid, vq.index, 0)
                self._callback("vring_state_changed", self.vid, vq.index, 0)
            elif cur and not vq.ready:
                vq.ready = True
                self._vdpa_op("set_vring_state", self.vid, vq.index, 1)
                self._callback("vring_state_changed", self.vid, vq.index, 1)
        ready = self._virtio_is_ready()
        if not self.running and ready:
            log.info("virtio device is ready", path=self.ifname, vid=self.vid, features=hex(self.features))
            result = self._callback("new_device", self.vid)
            if result is None or result == 0:
                self.running = True
            else:
                log.warning("new_device refused the device", path=self.ifname, vid=self.vid, result=result)
        if ready and self.vdpa_device is not None and not self.vdpa_configured and self._dev_conf_now():
            rc = self._vdpa_op("dev_conf", self.vid)
            if rc == 0:
                self.vdpa_configured = True
                log.info("vDPA device configured", path=self.ifname, vid=self.vid, device=self.vdpa_device.name)
            else:
                log.error("failed to configure vDPA device", path=self.ifname, vid=self.vid,
                          device=self.vdpa_device.name, result=rc)
        if self.running:
            for vq in self.vrings:
                if vq.ready:
                    self._start_queue(vq)

    def _dev_conf_now(self) -> bool:
        """When a ready vDPA blk device may be configured: DPDK's rule, while handling SET_VRING_CALL of
        the last vring (a front-end that sets every ring up before its call fd); and, since QEMU sends
        SET_VRING_ENABLE (and with STATUS, DRIVER_OK) after every ring's call fd, also on those
        messages once every vring is ready (DPDK's rule alone would never configure the device then)."""
        if not self.device_class.device_type == 2 or self._request is None:
            return True
        request, index = self._request
        if request == R.VHOST_USER_SET_VRING_CALL:
            return index == self.nr_vring - 1
        if request in (R.VHOST_USER_SET_VRING_ENABLE, R.VHOST_USER_SET_STATUS):
            return all(vq.ready for vq in self.vrings)
        return False

    def _vdpa_close(self) -> None:
        """dev_close: the vDPA device stops walking the rings and saves their indices (set_vring_base)."""
        self._quiesce()
        if self.vdpa_device is not None and (self.running or self.vdpa_configured):
            self._vdpa_op("dev_close", self.vid)
        self.vdpa_configured = False

    def _vdpa_op(self, name: str, *args: Any) -> Any:
        """Call the attached vDPA device's op ``name`` (nothing without one; see :mod:`~dataplane.vhost.vdpa`)."""
        if self.vdpa_device is None:
            return None
        return call_op(self.vdpa_device, name, *args, vid=self.vid)

    def _destroy_device(self) -> None:
        """Stop the data path and tell the application the device is gone (if it was running)."""
        self._quiesce()
        self._vdpa_close()
        self._drop_log()
        if self.running:
            self.running = False
            self._callback("destroy_device", self.vid)

    # -- callbacks -----------------------------------------------------------

    def _callback(self, name: str, *args: Any) -> Any:
        ops = self.config.ops
        fn = None if ops is None else (ops.get(name) if isinstance(ops, dict) else getattr(ops, name, None))
        if fn is None:
            return None
        try:
            return fn(*args)
        except Exception:
            log.exception("vhost callback raised", callback=name, path=self.ifname, vid=self.vid)
            return -1

    def hook(self, name: str, *args: Any) -> None:
        """Call the data path's hook ``name(self, *args)``; what it raises is logged, never raised."""
        try:
            getattr(self.datapath, name)(self, *args)
        except Exception:
            log.exception("data path hook raised", hook=name, path=self.ifname, vid=self.vid, args=args)

    # -- request handlers: features and ownership ------------------------------

    def _get_features(self, msg: Message, p: Any) -> Payload:
        return P.U64(self.config.features)

    def _set_features(self, msg: Message, p: P.U64) -> None:
        features = p.u64
        offered = self.config.features
        if features & ~offered:
            self.features_failed = True
            self.status &= ~VirtioDeviceStatus.FEATURES_OK
            raise RequestError(f"features never offered: {self.device_class.features_str(features & ~offered)} "
                               f"(offered {offered:#x})")
        if self.running:
            if features == self.features:
                return None
            changed = features ^ self.features
            if changed & ~bit(VF.VHOST_F_LOG_ALL):
                raise RequestError(
                    f"features changed while the device is running: "
                    f"{self.device_class.features_str(changed & ~bit(VF.VHOST_F_LOG_ALL))} "
                    "(only VHOST_F_LOG_ALL may change)"
                )
            self.features = features
            log.info("dirty logging", path=self.ifname, vid=self.vid, log_all=self.log_all, log=repr(self.dirty_log))
            self.hook("on_log_all", self.log_all)
            self._vdpa_op("set_features", self.vid)
            self._callback("features_changed", self.vid, features)
            return None
        self.features = features
        self.features_set = True
        self.features_failed = False
        log.info("negotiated virtio features", path=self.ifname, vid=self.vid, features=hex(features),
                 names=self.device_class.features_str(features))
        self.device_class.features_negotiated(self)
        self._vdpa_op("set_features", self.vid)
        for vq in self.vrings:
            if vq.ready:
                continue
            vq.packed = self.packed
            if vq.addr_set:
                try:
                    self._translate(vq)
                except QueueError as e:
                    self._refuse("VHOST_USER_SET_FEATURES", str(e))
        return None

    def _get_protocol_features(self, msg: Message, p: Any) -> Payload:
        return P.U64(self.config.protocol_features)

    def _set_protocol_features(self, msg: Message, p: P.U64) -> None:
        offered = self.config.protocol_features
        if p.u64 & ~offered:
            raise RequestError(
                f"protocol features never offered: {features_str(p.u64 & ~offered, PF)} (offered {offered:#x})"
            )
        self.protocol_features = p.u64
        log.info("negotiated protocol features", path=self.ifname, vid=self.vid,
                 protocol_features=hex(p.u64), names=features_str(p.u64, PF))
        return None

    def _set_owner(self, msg: Message, p: Any) -> None:
        self.owner = True
        return None

    def _reset(self, keep_protocol: bool) -> None:
        self._destroy_device()
        self._vdpa_op("dev_cleanup", self.vid)
        for vq in self.vrings:
            vq.close_fds()
        if self.memory is not None:
            self.memory.unmap()
            self.memory = None
        self.postcopy.close()
        self._drop_inflight()
        self._reset_state(keep_protocol)

    def _reset_owner(self, msg: Message, p: Any) -> None:
        self._reset(keep_protocol=False)
        self.close_backend_channel()  # ownership is gone (DPDK closes it too); RESET_DEVICE keeps it
        self.owner = False
        return None

    def _reset_device(self, msg: Message, p: Any) -> None:
        self._reset(keep_protocol=True)
        return None

    def _get_queue_num(self, msg: Message, p: Any) -> Payload:
        return P.U64(self.device_class.queue_num(self.config))

    # -- memory --------------------------------------------------------------

    def _replace_memory(self, new: GuestMemory | None) -> None:
        """Swap in a new table: data path stopped first, old regions unmapped, rings retranslated.

        A configured vDPA device is closed first (configured again once the device is ready)."""
        self._quiesce()
        if self.vdpa_configured:
            self._vdpa_close()
        old, self.memory = self.memory, new
        if old is not None:
            old.unmap()
        self._retranslate_all()

    def _set_mem_table(self, msg: Message, p: P.Memory) -> bytes | None:
        if self.postcopy.active:  # reply with the fault relay's addresses; put in use at the acknowledgement
            fds = [msg.take_fd(i) for i in range(len(msg.fds))]
            return self.postcopy.set_mem_table(self.memory, p.regions, fds, len(msg.payload))
        self.postcopy.not_entered()
        if self.memory is not None and self.memory.same_table(p.regions):
            log.info("memory regions not changed", path=self.ifname, vid=self.vid)
            return None  # the new fds are closed with the message
        fds = [msg.take_fd(i) for i in range(len(msg.fds))]
        new = GuestMemory.map_table(p.regions, fds)  # GuestMemoryError: refused, old table kept
        self._replace_memory(new)
        for i, m in enumerate(new):
            log.info("guest memory region", path=self.ifname, vid=self.vid, region=i, guest_phys_addr=hex(m.guest_phys_addr),
                     size=hex(m.size), userspace_addr=hex(m.userspace_addr), host_user_addr=hex(m.host_user_addr),
                     mmap_offset=hex(m.mmap_offset), mmap_size=hex(m.mmap_size), block_size=m.block_size)
        return None

    def _get_max_mem_slots(self, msg: Message, p: Any) -> Payload:
        return P.U64(VHOST_USER_MAX_RAM_SLOTS)

    def _add_mem_reg(self, msg: Message, p: P.MemRegMsg) -> None:
        if self.postcopy.active:
            raise RequestError("ADD_MEM_REG during postcopy is not implemented (use SET_MEM_TABLE)")
        if self.memory is None:
            self.memory = GuestMemory()
        self.memory.add_region(p.region, msg.take_fd(0), VHOST_USER_MAX_RAM_SLOTS)
        for vq in self.vrings:
            if vq.addr_set and not vq.access_ok:
                try:
                    self._translate(vq)
                except QueueError:
                    pass  # may need a later region
        return None

    def _rem_mem_reg(self, msg: Message, p: P.MemRegMsg) -> None:
        if self.memory is None:
            raise RequestError("no memory region is mapped")
        self._quiesce()
        self.memory.remove_region(p.region)
        self._retranslate_all()
        return None

    # -- dirty log -------------------------------------------------------------

    def _set_log_base(self, msg: Message, p: P.Log) -> Payload:
        try:
            new = LogRegion.map(msg.take_fd(0), p.mmap_size, p.mmap_offset)
        except LogError as e:
            raise RequestError(str(e)) from None
        started = [vq for vq in self.vrings if vq.started]
        for vq in started:
            self._stop_queue(vq)  # no lcore writes into the old log once it is replaced
        self._drop_log()
        self.dirty_log = new
        log.info("dirty log mapped", path=self.ifname, vid=self.vid, mmap_size=hex(p.mmap_size),
                 mmap_offset=hex(p.mmap_offset), covers_gpa=hex(new.pages * 4096), log_all=self.log_all)
        for vq in started:
            self._start_queue(vq)
        return P.Empty()  # QEMU reads back a SET_LOG_BASE reply without payload (as DPDK sends)

    def _drop_log(self) -> None:
        if self.dirty_log is not None:
            self.dirty_log.unmap()
            self.dirty_log = None
            log.info("dirty log unmapped", path=self.ifname, vid=self.vid)

    # -- inflight I/O tracking (dataplane.vhost.inflight) -------------------------

    def _install_inflight(self, new: InflightArea) -> None:
        """Use ``new`` from now on: the started rings are taken back and handed out again with it."""
        started = [vq for vq in self.vrings if vq.started]
        for vq in started:
            self._stop_queue(vq)
        self._drop_inflight()
        self.inflight = new
        log.info("inflight area mapped", path=self.ifname, vid=self.vid, **new.describe())
        for vq in started:
            self._start_queue(vq)

    def _drop_inflight(self) -> None:
        if self.inflight is not None:
            self.inflight.unmap()
            self.inflight = None

    def _get_inflight_fd(self, msg: Message, p: P.Inflight) -> tuple[Payload, list[int]]:
        """A fresh zeroed area for ``num_queues`` x ``queue_size`` in the negotiated layout; the reply
        carries its fd, ``mmap_size`` and offset 0 (the back-end uses it from now on, as DPDK does)."""
        try:
            new = InflightArea.allocate(p.num_queues, p.queue_size, self.packed, name=f"vhost-inflight-{self.vid}")
        except InflightError as e:
            raise RequestError(str(e)) from None
        self._install_inflight(new)
        return P.Inflight(new.mmap_size, 0, p.num_queues, p.queue_size), [os.dup(new.fd)]

    def _set_inflight_fd(self, msg: Message, p: P.Inflight) -> None:
        """Map the front-end's area (e.g. the previous back-end's, after a crash): its records are
        recovered and resubmitted when each ring starts."""
        try:
            new = InflightArea.map(msg.take_fd(0), p.mmap_size, p.mmap_offset, p.num_queues, p.queue_size, self.packed)
        except InflightError as e:
            raise RequestError(str(e)) from None
        self._install_inflight(new)
        return None

    # -- postcopy (dataplane.vhost.postcopy) -------------------------------------

    def _postcopy_advise(self, msg: Message, p: Any) -> tuple[Payload, list[int]]:
        return P.Empty(), [self.postcopy.advise()]

    def _postcopy_listen(self, msg: Message, p: Any) -> None:
        self.postcopy.listen(self.memory is not None and len(self.memory) > 0)
        return None

    def _postcopy_end(self, msg: Message, p: Any) -> Payload:
        return self.postcopy.end()

    def _postcopy_ack(self, msg: Message) -> bool:
        """The message after a postcopy SET_MEM_TABLE reply: the front-end's acknowledgement, nothing else."""
        self.stats["messages"] += 1
        try:
            new = self.postcopy.take_ack(msg)
        except (VhostUserError, GuestMemoryError) as e:
            self._refuse("VHOST_USER_SET_MEM_TABLE", f"postcopy: {e.reason if isinstance(e, VhostUserError) else e}")
            return False
        finally:
            msg.close_fds()
        if new is not None:
            self._replace_memory(new)
        self._update_readiness()
        return not self.closed

    def _set_log_fd(self, msg: Message, p: Any) -> None:
        if self.log_call_fd >= 0:
            os.close(self.log_call_fd)
        self.log_call_fd = msg.take_fd(0)
        return None

    # -- vring requests --------------------------------------------------------

    def _set_vring_num(self, msg: Message, p: P.VringState) -> None:
        vq = self._vring(p.index)
        num = p.num
        if num == 0 or num > VIRTIO_MAX_QUEUE_SIZE:
            raise RequestError(f"vring {p.index}: invalid queue size {num} (1..{VIRTIO_MAX_QUEUE_SIZE})")
        if not self.packed and num & (num - 1):
            raise RequestError(f"vring {p.index}: split queue size {num} is not a power of two")
        self._unready(vq)
        vq.size = num
        vq.packed = self.packed
        self._translate(vq)
        return None

    def _set_vring_addr(self, msg: Message, p: P.VringAddr) -> None:
        vq = self._vring(p.index)
        if self.memory is None:
            raise RequestError(f"vring {p.index}: SET_VRING_ADDR before SET_MEM_TABLE")
        if p.flags & ~bit(P.VHOST_VRING_F_LOG):
            raise RequestError(f"vring {p.index}: undefined vring flags {p.flags:#x}")
        self._unready(vq)
        vq.desc_user_addr, vq.avail_user_addr, vq.used_user_addr = p.desc_user_addr, p.avail_user_addr, p.used_user_addr
        vq.log_guest_addr, vq.addr_flags = p.log_guest_addr, p.flags
        vq.addr_set = True
        vq.packed = self.packed
        self._translate(vq)
        return None

    def _set_vring_base(self, msg: Message, p: P.VringState) -> None:
        vq = self._vring(p.index)
        vq.packed = self.packed
        if not vq.packed and p.num > 0xFFFF:
            raise RequestError(f"vring {p.index}: split vring base {p.num:#x} does not fit 16 bits")
        if vq.packed and vq.size and ((p.num & 0x7FFF) >= vq.size or (p.num >> 16 & 0x7FFF) >= vq.size):
            raise RequestError(f"vring {p.index}: packed vring base {p.num:#x} beyond queue size {vq.size}")
        self._unready(vq)
        vq.set_base_value(p.num)
        log.info("vring base", path=self.ifname, vid=self.vid, vring=p.index, last_avail_idx=vq.last_avail_idx,
                 last_used_idx=vq.last_used_idx)
        return None

    def _get_vring_base(self, msg: Message, p: P.VringState) -> Payload:
        vq = self._vring(p.index)
        self._destroy_device()  # the data path gives every ring back first (DPDK stops the device)
        self._stop_queue(vq)
        value = vq.base_value()
        log.info("vring stopped", path=self.ifname, vid=self.vid, vring=p.index, base=hex(value))
        for name in ("kick_fd", "call_fd"):
            fd = getattr(vq, name)
            if fd >= 0:
                os.close(fd)
            setattr(vq, name, VIRTIO_UNINITIALIZED_EVENTFD)
        vq.invalidate()
        vq.addr_set = False
        vq.desc_user_addr = vq.avail_user_addr = vq.used_user_addr = vq.log_guest_addr = 0
        return P.VringState(p.index, value)

    def _vring_file(self, msg: Message, p: P.U64, what: str) -> tuple[Vring, int]:
        if p.u64 & ~(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK):
            raise RequestError(f"reserved bits set in {what} payload {p.u64:#x}")
        vq = self._vring(p.u64 & VHOST_USER_VRING_IDX_MASK)
        fd = VIRTIO_INVALID_EVENTFD if p.u64 & VHOST_USER_VRING_NOFD_MASK else msg.fds[0]
        return vq, fd

    def _set_vring_kick(self, msg: Message, p: P.U64) -> None:
        vq, fd = self._vring_file(msg, p, "kick")
        if self.memory is None:
            raise RequestError(f"vring {vq.index}: SET_VRING_KICK before SET_MEM_TABLE")
        if fd >= 0:
            msg.take_fd(0)
        self._unready(vq)
        if vq.kick_fd >= 0:
            os.close(vq.kick_fd)
        vq.kick_fd = fd
        if not self.has_feature(VF.VHOST_USER_F_PROTOCOL_FEATURES):
            vq.enabled = True  # without protocol features the kick starts the ring enabled
        if vq.addr_set and not vq.access_ok:
            self._translate(vq)
        return None

    def _set_vring_call(self, msg: Message, p: P.U64) -> None:
        vq, fd = self._vring_file(msg, p, "call")
        if fd >= 0:
            msg.take_fd(0)
        self._unready(vq)
        if vq.call_fd >= 0:
            os.close(vq.call_fd)
        vq.call_fd = fd
        return None

    def _set_vring_err(self, msg: Message, p: P.U64) -> None:
        vq, fd = self._vring_file(msg, p, "err")
        if fd >= 0:
            msg.take_fd(0)
        if vq.err_fd >= 0:
            os.close(vq.err_fd)
        vq.err_fd = fd
        return None

    def _set_vring_enable(self, msg: Message, p: P.VringState) -> None:
        vq = self._vring(p.index)
        if p.num not in (0, 1):
            raise RequestError(f"vring {p.index}: enable value {p.num} is not 0 or 1")
        vq.enabled = bool(p.num)
        log.info("vring enable", path=self.ifname, vid=self.vid, vring=p.index, enable=vq.enabled)
        return None

    # -- back-end channel, status, config ----------------------------------------

    def _set_backend_req_fd(self, msg: Message, p: Any) -> None:
        self.close_backend_channel()
        if self.loop is None:
            raise RequestError("no event loop serves this device: a back-end channel cannot be used")
        self.backend_channel = BackendChannel(self.loop, msg.take_fd(0), self)
        return None

    def close_backend_channel(self) -> None:
        """Close the back-end channel, if any (its pending requests fail)."""
        if self.backend_channel is not None:
            self.backend_channel.close()
            self.backend_channel = None

    def _set_status(self, msg: Message, p: P.U64) -> None:
        if p.u64 > 0xFF:
            raise RequestError(f"invalid device status {p.u64:#x} (8 bits)")
        status = p.u64
        if status & VirtioDeviceStatus.FEATURES_OK and self.features_failed:
            log.error("FEATURES_OK set but feature negotiation failed", path=self.ifname, vid=self.vid)
            status &= ~VirtioDeviceStatus.FEATURES_OK
        self.status = status
        names = "|".join(f.name for f in VirtioDeviceStatus if f and status & f) or "RESET"  # type: ignore[misc]
        log.info("device status", path=self.ifname, vid=self.vid, status=hex(status), bits=names)
        return None

    def _get_status(self, msg: Message, p: Any) -> Payload:
        return P.U64(self.status)

    def _config_space(self) -> bytes:
        space = self.device_class.config_space(self)
        if space is None:
            raise RequestError(f"the {self.device_class.name} device has no config space")
        return space

    def _get_config(self, msg: Message, p: P.Config) -> Payload | bytes:
        space = self._config_space()
        if p.offset + p.size > VHOST_USER_MAX_CONFIG_SIZE:
            self._refuse("VHOST_USER_GET_CONFIG", f"offset {p.offset} + size {p.size} beyond the config space")
            return b""  # the spec's error reply: an empty payload
        space = space.ljust(VHOST_USER_MAX_CONFIG_SIZE, b"\0")
        return P.Config(p.offset, p.size, p.flags, space[p.offset : p.offset + p.size])

    def _set_config(self, msg: Message, p: P.Config) -> None:
        space = self._config_space()
        end = p.offset + p.size
        if end > len(space):
            raise RequestError(f"offset {p.offset} + size {p.size} beyond the {len(space)}-byte config space")
        if p.flags not in (P.Config.WRITABLE_FIELDS, P.Config.MIGRATION):
            raise RequestError(f"undefined config flags {p.flags:#x}")
        self.device_class.set_config(self, p.offset, p.payload, p.flags)
        return None

    # -- API helpers and teardown ------------------------------------------------

    def pause_datapath(self) -> None:
        """Take every ring back from the data path (indices written back, no lcore touches them);
        :meth:`resume_datapath` hands the ready ones out again.  E.g. the disk grows in between."""
        self._quiesce()

    def resume_datapath(self) -> None:
        """Hand the ready rings of a running device back to the data path (after :meth:`pause_datapath`)."""
        self._update_readiness()

    def set_guest_notification(self, qid: int, enable: bool) -> None:
        vq = self.vrings[qid]
        vq.guest_notification = bool(enable)
        self.hook("on_guest_notification", qid, bool(enable))

    def close(self) -> None:
        """Connection gone: stop the data path, destroy_device, destroy_connection, release everything."""
        if self.closed:
            return
        self.closed = True
        self._destroy_device()
        self._vdpa_op("dev_cleanup", self.vid)
        self._callback("destroy_connection", self.vid)
        for vq in self.vrings:
            vq.close_fds()
        if self.memory is not None:
            self.memory.unmap()
            self.memory = None
        self.postcopy.close()  # after every mapping is gone: its faults can no longer happen
        self._drop_inflight()
        if self.log_call_fd >= 0:
            os.close(self.log_call_fd)
            self.log_call_fd = -1
        self.close_backend_channel()

    def __repr__(self) -> str:
        return f"VhostUserDevice(vid={self.vid}, path={self.ifname!r}, running={self.running}, vrings={len(self.vrings)})"


_NO_DATAPATH = DataPathHooks()
