"""The vdpa management service: the equivalent of the Linux vdpa netlink core.

:class:`VdpaManagement` holds the management devices (``vdpasim_net``,
``vdpasim_blk``, ``pci/ADDR`` functions, ...) and the vDPA devices created
from them, and answers the ``vdpa`` generic netlink commands
(:class:`~.attrs.VdpaCmd`) with replies made of ordered attribute lists,
validating requests in the kernel's order with the kernel's extack messages
and errno values.  ``start()`` serves it on the unix socket ``vdpa.sock`` in
the runtime directory of a file prefix (see :mod:`.transport`), which is
where ``dataplane vdpa`` (:mod:`.tool`) finds it.

It talks to the devices through two small protocols, :class:`ManagementDevice`
and :class:`ManagedDevice`; :mod:`dataplane.testing.vdpa_mgmt` has doubles
with vdpa_sim's values.

Usage::

    mgmt = VdpaManagement("myprefix")
    mgmt.add_mgmtdev(my_vdpasim_net_mgmtdev)
    mgmt.start()            # serves <runtime parent>/myprefix/vdpa.sock from a thread
    ...
    mgmt.stop()             # stops the thread, removes the socket file
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from dataplane import log as dplog

from .attrs import (
    NET_ATTRS_MASK,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_DEVICE_F_MASK,
    VIRTIO_ID_BLOCK,
    VIRTIO_ID_NET,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_RSS,
    VIRTIO_NET_F_STATUS,
    AttrError,
    VdpaAttr,
    VdpaCmd,
    check_value,
)

log = dplog.get_logger("dataplane.vdpa.mgmt")

#: name of the service socket in the runtime directory of a file prefix
SOCKET_NAME = "vdpa.sock"
#: the prefix of the core's extack messages (NL_SET_ERR_MSG_MOD in module "vdpa")
MSG_PREFIX = "vdpa: "
#: MTU attribute policy minimum (virtio spec 1.1, 5.1.4.1)
MIN_MTU = 68


def default_file_prefix() -> str:
    """The project's default file prefix (the EAL's ``--file-prefix`` default)."""
    import dataclasses

    from dataplane.lcores.eal_args import EalConfig

    return next(f.default for f in dataclasses.fields(EalConfig) if f.name == "file_prefix")


class VdpaMgmtError(Exception):
    """A failed request: ``errno`` (positive) and the extack ``message`` (or None).

    Management and managed devices raise it to fail ``dev_add``, ``set_mac``
    or ``vendor_stats`` the way a kernel driver returns ``-errno`` and sets
    an extack message.  The message is sent as is (the core's own messages
    carry the ``"vdpa: "`` prefix).
    """

    def __init__(self, errno_: int, message: str | None = None):
        super().__init__(errno_, message)
        self.errno = errno_
        self.message = message

    def __str__(self) -> str:
        import os

        return f"{self.message or ''} ({os.strerror(self.errno)})".strip()


def _core_error(errno_: int, message: str | None = None) -> VdpaMgmtError:
    return VdpaMgmtError(errno_, MSG_PREFIX + message if message else None)


@runtime_checkable
class ManagementDevice(Protocol):
    """A management device (``struct vdpa_mgmt_dev``), as ``vdpa mgmtdev show`` lists it.

    Attributes:
        bus: the bus name (``"pci"``, ``"auxiliary"``) or None for a simulator;
            the handle is ``bus/name`` or ``name``.
        name: the device name (``"vdpasim_net"``, ``"0000:06:00.2"``).
        supported_classes: bitmask, bit N = virtio device id N (1<<1 net, 1<<2 block).
        max_supported_vqs: ``VDPA_ATTR_DEV_MGMTDEV_MAX_VQS`` (0 if not set).
        supported_features: ``VDPA_ATTR_DEV_SUPPORTED_FEATURES`` (0 if not set).
        config_attr_mask: bitmask of ``1 << VdpaAttr.x`` accepted on ``dev add``
            (``DEV_NET_CFG_MACADDR``, ``DEV_NET_CFG_MTU``, ``DEV_NET_CFG_MAX_VQP``,
            ``DEV_FEATURES``).
    """

    bus: str | None
    name: str
    supported_classes: int
    max_supported_vqs: int
    supported_features: int
    config_attr_mask: int

    def dev_add(self, name: str, attrs: dict) -> "ManagedDevice":
        """Create the device ``name``. ``attrs`` holds the provisioned attributes
        that were given, keyed ``'mac'`` (6 bytes), ``'mtu'``, ``'max_vqp'``,
        ``'device_features'`` (ints). Raise :class:`VdpaMgmtError` to refuse
        (e.g. ``EINVAL`` for device_features that are not a subset of the supported ones)."""
        ...


@runtime_checkable
class ManagedDevice(Protocol):
    """A vDPA device (``struct vdpa_device``) as the netlink core reads it.

    Attributes:
        name: the device name (unique among all devices).
        device_id: virtio device id (1 net, 2 block).
        vendor_id: ``get_vendor_id``.
        max_vqs: the number of virtqueues (``nvqs``).
        max_vq_size / min_vq_size: ``get_vq_num_max`` / ``get_vq_num_min`` (1 if unknown).
        mgmtdev: the management device it was created from (None for none).
        user_created: True for a device made by ``dev add``; a device that is
            not (or has no mgmtdev) is "unmanaged": not listed, not deletable.
        status: the virtio status byte; FEATURES_OK (8) makes the negotiated
            features (and vstats) readable.
        negotiated_features: the driver features.
        device_features: the device features (provisioned or supported).
        mac (bytes), mtu, net_status (u16), max_vqp (int or None): net config fields.

    Optional members:
        vendor_stats(qidx) -> list[(name, u64)]: per-queue vendor statistics;
            raise ``VdpaMgmtError(EINVAL)`` for a bad index.  Absent or None:
            the device has no stats (``EOPNOTSUPP``).
        set_mac(mac: bytes): ``vdpa dev set ... mac``; absent or None: not supported.
        blk_config() -> dict: a blk device's config fields by ``virtio_blk_config``
            name (``capacity``, ``size_max``, ``seg_max``, ``blk_size``,
            ``physical_block_exp``, ``alignment_offset``, ``min_io_size``,
            ``opt_io_size``, ``num_queues``, ``max_discard_sectors``,
            ``max_discard_seg``, ``discard_sector_alignment``,
            ``max_write_zeroes_sectors``, ``max_write_zeroes_seg``).
        delete(): destroy the device (``dev del``, or its mgmtdev going away).
    """

    name: str
    device_id: int
    vendor_id: int
    max_vqs: int
    max_vq_size: int
    min_vq_size: int
    mgmtdev: ManagementDevice | None
    user_created: bool
    status: int
    negotiated_features: int
    device_features: int

    def delete(self) -> None: ...


@dataclass
class NlMessage:
    """One reply message: the command it carries and its ordered attributes."""

    cmd: VdpaCmd
    attrs: list[tuple[VdpaAttr, object]] = field(default_factory=list)

    def put(self, attr: VdpaAttr, value) -> None:
        self.attrs.append((attr, check_value(attr, value)))

    def get(self, attr: VdpaAttr, default=None):
        for a, v in self.attrs:
            if a == attr:
                return v
        return default


@dataclass
class NlReply:
    """The answer to one request: the messages, then the ack.

    ``error`` is 0 or a negative errno (like ``nlmsgerr.error``); ``extack``
    is the extack message, which may come with ``error == 0`` (a warning).
    """

    messages: list[NlMessage] = field(default_factory=list)
    error: int = 0
    extack: str | None = None


def mgmtdev_handle(mdev) -> str:
    return f"{mdev.bus}/{mdev.name}" if mdev.bus else mdev.name


def _is_valid_ether_addr(mac: bytes) -> bool:
    return len(mac) == 6 and not (mac[0] & 1) and any(mac)


class VdpaManagement:
    """The management service of one file prefix (see the module docstring).

    Args:
        file_prefix: the runtime file prefix whose directory holds ``vdpa.sock``
            (default: the project's default prefix, ``dataplane``).
        runtime_parent: the directory holding the runtime directories
            (default :func:`dataplane.memory.runtime.runtime_parent`, which
            honours ``DATAPLANE_RUNTIME_DIR``).

    ``request()`` is thread-safe; it is what the socket serves.
    """

    def __init__(self, file_prefix: str | None = None, runtime_parent: str | None = None):
        from dataplane.memory.runtime import RuntimeDir

        self.file_prefix = file_prefix or default_file_prefix()
        self._runtime = RuntimeDir(self.file_prefix, runtime_parent)
        self._lock = threading.RLock()
        self._mgmtdevs: list = []
        self._devices: list = []
        self._created: dict[int, object] = {}  # id(device) -> the mgmtdev that made it through DEV_NEW
        self._server = None

    # ---------------------------------------------------------------- registry
    @property
    def socket_path(self) -> str:
        return self._runtime.file(SOCKET_NAME)

    @property
    def mgmtdevs(self) -> list:
        with self._lock:
            return list(self._mgmtdevs)

    @property
    def devices(self) -> list:
        with self._lock:
            return list(self._devices)

    def add_mgmtdev(self, mdev) -> None:
        """Register a management device (``vdpa_mgmtdev_register``)."""
        with self._lock:
            handle = mgmtdev_handle(mdev)
            if any(mgmtdev_handle(m) == handle for m in self._mgmtdevs):
                raise ValueError(f"management device {handle} is already registered")
            self._mgmtdevs.append(mdev)
        log.debug("vdpa mgmtdev registered", mgmtdev=handle)

    def remove_mgmtdev(self, mdev) -> None:
        """Unregister a management device; the devices created from it are deleted."""
        with self._lock:
            if mdev not in self._mgmtdevs:
                raise ValueError(f"management device {mgmtdev_handle(mdev)} is not registered")
            for dev in [d for d in self._devices if self._mgmtdev_of(d) is mdev]:
                self._delete(dev)
            self._mgmtdevs.remove(mdev)

    def register_device(self, dev) -> None:
        """Add a device that was not made by ``dev add`` (e.g. probed at start-up).

        Unless it has a mgmtdev and ``user_created``, it is unmanaged: it takes
        its name, but is not listed and cannot be deleted through the tool.
        """
        with self._lock:
            if self._find(dev.name) is not None:
                raise ValueError(f"a vdpa device named {dev.name!r} exists")
            self._devices.append(dev)

    def unregister_device(self, dev) -> None:
        with self._lock:
            self._devices.remove(dev)
            self._created.pop(id(dev), None)

    def _find(self, name: str):
        for dev in self._devices:
            if dev.name == name:
                return dev
        return None

    def _find_mgmtdev(self, bus: str | None, name: str):
        for mdev in self._mgmtdevs:
            if (bus is None) != (not mdev.bus):
                continue
            if mdev.name == name and (bus is None or mdev.bus == bus):
                return mdev
        return None

    def _mgmtdev_of(self, dev):
        """The mgmtdev of a managed device (the kernel's ``vdev->mdev``), else None.

        A device made through DEV_NEW is managed whatever it says; another one
        only if it has a ``mgmtdev`` and ``user_created`` is true."""
        mdev = self._created.get(id(dev))
        if mdev is not None:
            return getattr(dev, "mgmtdev", None) or mdev
        if getattr(dev, "mgmtdev", None) is not None and getattr(dev, "user_created", False):
            return dev.mgmtdev
        return None

    def _managed(self, dev) -> bool:
        return self._mgmtdev_of(dev) is not None

    def _delete(self, dev) -> None:
        try:
            dev.delete()
        finally:
            if dev in self._devices:
                self._devices.remove(dev)
            self._created.pop(id(dev), None)
        log.info("vdpa device deleted", name=dev.name)

    # ---------------------------------------------------------------- requests
    def request(self, cmd: int, attrs=(), dump: bool = False) -> NlReply:
        """Answer one request: ``cmd`` with attributes ``[(attr, value)]``; ``dump``
        asks for every object (NLM_F_DUMP) where the command supports it."""
        try:
            cmd = VdpaCmd(cmd)
        except ValueError:
            return NlReply(error=-errno.EOPNOTSUPP)
        handler = self._HANDLERS.get(cmd)
        if handler is None or (dump and cmd not in self._DUMPS):  # genetlink: no such op
            return NlReply(error=-errno.EOPNOTSUPP)
        reply = NlReply()
        try:
            tb = self._parse(attrs)
            with self._lock:
                if dump:
                    self._DUMPS[cmd](self, tb, reply)
                else:
                    handler(self, tb, reply)
        except VdpaMgmtError as exc:
            reply.error = -exc.errno
            reply.extack = exc.message
        except AttrError as exc:
            reply.messages.clear()
            reply.error = -errno.EINVAL
            reply.extack = str(exc)
        except Exception as exc:  # a device implementation failed: report, keep serving
            log.error("vdpa management request failed", cmd=cmd.name, error=repr(exc))
            reply.messages.clear()
            reply.error = -errno.EIO
            reply.extack = f"{MSG_PREFIX}internal error: {exc}"
        return reply

    @staticmethod
    def _parse(attrs) -> dict:
        """Validate against the family policy; the last of repeated attributes wins."""
        tb: dict = {}
        for attr, value in attrs:
            try:
                attr = VdpaAttr(attr)
            except ValueError:
                raise AttrError(f"unknown attribute {attr!r}") from None
            tb[attr] = check_value(attr, value)
        mtu = tb.get(VdpaAttr.DEV_NET_CFG_MTU)
        if mtu is not None and mtu < MIN_MTU:
            raise VdpaMgmtError(errno.ERANGE, "integer out of range")
        mac = tb.get(VdpaAttr.DEV_NET_CFG_MACADDR)
        if mac is not None and len(mac) != 6:
            raise VdpaMgmtError(errno.EINVAL, "Attribute failed policy validation")
        return tb

    def _dev_by_name(self, tb, unmanaged_msg: str | None, unmanaged_errno: int = errno.EINVAL):
        name = tb.get(VdpaAttr.DEV_NAME)
        if name is None:
            raise VdpaMgmtError(errno.EINVAL)
        dev = self._find(name)
        if dev is None:
            raise _core_error(errno.ENODEV, "device not found")
        if not self._managed(dev):
            raise _core_error(unmanaged_errno, unmanaged_msg)
        return dev

    # MGMTDEV_GET
    def _mgmtdev_fill(self, mdev) -> NlMessage:
        msg = NlMessage(VdpaCmd.MGMTDEV_NEW)
        self._handle_fill(msg, mdev)
        msg.put(VdpaAttr.MGMTDEV_SUPPORTED_CLASSES, int(mdev.supported_classes))
        msg.put(VdpaAttr.DEV_MGMTDEV_MAX_VQS, int(mdev.max_supported_vqs))
        msg.put(VdpaAttr.DEV_SUPPORTED_FEATURES, int(mdev.supported_features))
        return msg

    @staticmethod
    def _handle_fill(msg: NlMessage, mdev) -> None:
        if mdev.bus:
            msg.put(VdpaAttr.MGMTDEV_BUS_NAME, mdev.bus)
        msg.put(VdpaAttr.MGMTDEV_DEV_NAME, mdev.name)

    def _mgmtdev_from_attrs(self, tb):
        name = tb.get(VdpaAttr.MGMTDEV_DEV_NAME)
        if name is None:
            return None, errno.EINVAL
        mdev = self._find_mgmtdev(tb.get(VdpaAttr.MGMTDEV_BUS_NAME), name)
        return mdev, errno.ENODEV

    def _mgmtdev_get(self, tb, reply: NlReply) -> None:
        mdev, err = self._mgmtdev_from_attrs(tb)
        if mdev is None:
            raise _core_error(err, "Fail to find the specified mgmt device")
        reply.messages.append(self._mgmtdev_fill(mdev))

    def _mgmtdev_dump(self, tb, reply: NlReply) -> None:
        for mdev in self._mgmtdevs:
            reply.messages.append(self._mgmtdev_fill(mdev))

    # DEV_NEW
    def _dev_new(self, tb, reply: NlReply) -> None:
        name = tb.get(VdpaAttr.DEV_NAME)
        if name is None:
            raise VdpaMgmtError(errno.EINVAL)
        attrs: dict = {}
        mask = 0
        if VdpaAttr.DEV_NET_CFG_MACADDR in tb:
            attrs["mac"] = tb[VdpaAttr.DEV_NET_CFG_MACADDR]
            mask |= 1 << VdpaAttr.DEV_NET_CFG_MACADDR
        if VdpaAttr.DEV_NET_CFG_MTU in tb:
            attrs["mtu"] = tb[VdpaAttr.DEV_NET_CFG_MTU]
            mask |= 1 << VdpaAttr.DEV_NET_CFG_MTU
        if VdpaAttr.DEV_NET_CFG_MAX_VQP in tb:
            attrs["max_vqp"] = tb[VdpaAttr.DEV_NET_CFG_MAX_VQP]
            if attrs["max_vqp"] == 0:
                raise _core_error(errno.EINVAL, "At least one pair of VQs is required")
            mask |= 1 << VdpaAttr.DEV_NET_CFG_MAX_VQP
        if VdpaAttr.DEV_FEATURES in tb:
            features = attrs["device_features"] = tb[VdpaAttr.DEV_FEATURES]
            missing = 0
            if "mac" in attrs and not features & (1 << VIRTIO_NET_F_MAC):
                missing |= 1 << VIRTIO_NET_F_MAC
            if "mtu" in attrs and not features & (1 << VIRTIO_NET_F_MTU):
                missing |= 1 << VIRTIO_NET_F_MTU
            if attrs.get("max_vqp", 0) > 1 and not features & (1 << VIRTIO_NET_F_MQ):
                missing |= 1 << VIRTIO_NET_F_MQ
            if missing:
                raise _core_error(errno.EINVAL, f"Missing features 0x{missing:x} for provided attributes")
            mask |= 1 << VdpaAttr.DEV_FEATURES
        mdev, err = self._mgmtdev_from_attrs(tb)
        if mdev is None:
            raise _core_error(err, "Fail to find the specified management device")
        unsupported = mask & ~int(mdev.config_attr_mask)
        if unsupported:
            raise _core_error(errno.EOPNOTSUPP, f"Some provided attributes are not supported: 0x{unsupported:x}")
        classes = int(mdev.supported_classes)
        if mask & NET_ATTRS_MASK and not classes & (1 << VIRTIO_ID_NET):
            raise _core_error(errno.EINVAL, "Network class attributes provided on unsupported management device")
        nclasses = bin(classes & ~1 & (2**64 - 1)).count("1")
        if (
            not mask & NET_ATTRS_MASK
            and "device_features" in attrs
            and classes & (1 << VIRTIO_ID_NET)
            and nclasses > 1
            and attrs["device_features"] & VIRTIO_DEVICE_F_MASK
        ):
            raise _core_error(
                errno.EINVAL, "Management device supports multi-class while device features specified are ambiguous"
            )
        if not name:  # device registration refuses an empty name
            raise VdpaMgmtError(errno.EINVAL)
        if self._find(name) is not None:  # ... and a duplicate one
            raise VdpaMgmtError(errno.EEXIST)
        dev = mdev.dev_add(name, attrs)
        if dev is None:
            raise VdpaMgmtError(errno.EINVAL)
        self._devices.append(dev)
        self._created[id(dev)] = mdev
        shown = {k: (v.hex(":") if isinstance(v, bytes) else v) for k, v in attrs.items()}
        log.info("vdpa device added", name=name, mgmtdev=mgmtdev_handle(mdev), **shown)

    # DEV_DEL
    def _dev_del(self, tb, reply: NlReply) -> None:
        dev = self._dev_by_name(tb, "Only user created device can be deleted by user")
        self._delete(dev)

    # DEV_GET
    def _dev_fill(self, dev) -> NlMessage:
        msg = NlMessage(VdpaCmd.DEV_NEW)
        self._handle_fill(msg, self._mgmtdev_of(dev))
        msg.put(VdpaAttr.DEV_NAME, dev.name)
        msg.put(VdpaAttr.DEV_ID, int(dev.device_id))
        msg.put(VdpaAttr.DEV_VENDOR_ID, int(dev.vendor_id))
        msg.put(VdpaAttr.DEV_MAX_VQS, int(dev.max_vqs))
        msg.put(VdpaAttr.DEV_MAX_VQ_SIZE, int(dev.max_vq_size))
        msg.put(VdpaAttr.DEV_MIN_VQ_SIZE, int(getattr(dev, "min_vq_size", 1) or 1))
        return msg

    def _dev_get(self, tb, reply: NlReply) -> None:
        dev = self._dev_by_name(tb, None)
        reply.messages.append(self._dev_fill(dev))

    def _dev_dump(self, tb, reply: NlReply) -> None:
        for dev in self._devices:
            if self._managed(dev):
                reply.messages.append(self._dev_fill(dev))

    # DEV_CONFIG_GET
    def _config_fill(self, dev) -> NlMessage:
        msg = NlMessage(VdpaCmd.DEV_CONFIG_GET)
        msg.put(VdpaAttr.DEV_NAME, dev.name)
        device_id = int(dev.device_id)
        msg.put(VdpaAttr.DEV_ID, device_id)
        if int(dev.status) & VIRTIO_CONFIG_S_FEATURES_OK:
            msg.put(VdpaAttr.DEV_NEGOTIATED_FEATURES, int(dev.negotiated_features))
        features = int(dev.device_features)
        if device_id == VIRTIO_ID_NET:
            msg.put(VdpaAttr.DEV_FEATURES, features)
            if features & (1 << VIRTIO_NET_F_MTU):
                msg.put(VdpaAttr.DEV_NET_CFG_MTU, int(dev.mtu))
            if features & (1 << VIRTIO_NET_F_MAC):
                msg.put(VdpaAttr.DEV_NET_CFG_MACADDR, bytes(dev.mac))
            if features & (1 << VIRTIO_NET_F_STATUS):
                msg.put(VdpaAttr.DEV_NET_STATUS, int(dev.net_status))
            if features & ((1 << VIRTIO_NET_F_MQ) | (1 << VIRTIO_NET_F_RSS)):
                msg.put(VdpaAttr.DEV_NET_CFG_MAX_VQP, int(getattr(dev, "max_vqp", None) or 0))
        elif device_id == VIRTIO_ID_BLOCK:
            msg.put(VdpaAttr.DEV_FEATURES, features)
            blk_config = getattr(dev, "blk_config", None)
            cfg = blk_config() if callable(blk_config) else {}
            val = lambda key: int(cfg.get(key, 0))  # noqa: E731
            has = lambda bit: bool(features & (1 << bit))  # noqa: E731
            msg.put(VdpaAttr.DEV_BLK_CFG_CAPACITY, val("capacity"))
            if has(VIRTIO_BLK_F_SIZE_MAX):
                msg.put(VdpaAttr.DEV_BLK_CFG_SEG_SIZE, val("size_max"))
            if has(VIRTIO_BLK_F_BLK_SIZE):
                msg.put(VdpaAttr.DEV_BLK_CFG_BLK_SIZE, val("blk_size"))
            if has(VIRTIO_BLK_F_SEG_MAX):
                msg.put(VdpaAttr.DEV_BLK_CFG_SEG_MAX, val("seg_max"))
            if has(VIRTIO_BLK_F_MQ):
                msg.put(VdpaAttr.DEV_BLK_CFG_NUM_QUEUES, val("num_queues"))
            if has(VIRTIO_BLK_F_TOPOLOGY):
                msg.put(VdpaAttr.DEV_BLK_CFG_PHY_BLK_EXP, val("physical_block_exp"))
                msg.put(VdpaAttr.DEV_BLK_CFG_ALIGN_OFFSET, val("alignment_offset"))
                msg.put(VdpaAttr.DEV_BLK_CFG_MIN_IO_SIZE, val("min_io_size"))
                msg.put(VdpaAttr.DEV_BLK_CFG_OPT_IO_SIZE, val("opt_io_size"))
            if has(VIRTIO_BLK_F_DISCARD):
                msg.put(VdpaAttr.DEV_BLK_CFG_MAX_DISCARD_SEC, val("max_discard_sectors"))
                msg.put(VdpaAttr.DEV_BLK_CFG_MAX_DISCARD_SEG, val("max_discard_seg"))
                msg.put(VdpaAttr.DEV_BLK_CFG_DISCARD_SEC_ALIGN, val("discard_sector_alignment"))
            if has(VIRTIO_BLK_F_WRITE_ZEROES):
                msg.put(VdpaAttr.DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC, val("max_write_zeroes_sectors"))
                msg.put(VdpaAttr.DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG, val("max_write_zeroes_seg"))
            msg.put(VdpaAttr.DEV_BLK_CFG_READ_ONLY, int(has(VIRTIO_BLK_F_RO)))
            msg.put(VdpaAttr.DEV_BLK_CFG_FLUSH, int(has(VIRTIO_BLK_F_FLUSH)))
        else:
            raise VdpaMgmtError(errno.EOPNOTSUPP)
        return msg

    def _config_get(self, tb, reply: NlReply) -> None:
        dev = self._dev_by_name(tb, "unmanaged vdpa device")
        reply.messages.append(self._config_fill(dev))

    def _config_dump(self, tb, reply: NlReply) -> None:
        for dev in self._devices:
            if self._managed(dev):
                reply.messages.append(self._config_fill(dev))

    # DEV_VSTATS_GET
    def _vstats_get(self, tb, reply: NlReply) -> None:
        if VdpaAttr.DEV_NAME not in tb or VdpaAttr.DEV_QUEUE_INDEX not in tb:
            raise VdpaMgmtError(errno.EINVAL)
        index = tb[VdpaAttr.DEV_QUEUE_INDEX]
        dev = self._dev_by_name(tb, "unmanaged vdpa device")
        msg = NlMessage(VdpaCmd.DEV_VSTATS_GET)
        msg.put(VdpaAttr.DEV_NAME, dev.name)
        device_id = int(dev.device_id)
        msg.put(VdpaAttr.DEV_ID, device_id)
        if device_id != VIRTIO_ID_NET:
            raise VdpaMgmtError(errno.EOPNOTSUPP)
        if index > VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX:
            raise _core_error(errno.ERANGE, "queue index exceeds max value")
        stats = getattr(dev, "vendor_stats", None)
        if not callable(stats):
            raise VdpaMgmtError(errno.EOPNOTSUPP)
        if not int(dev.status) & VIRTIO_CONFIG_S_FEATURES_OK:
            raise _core_error(errno.EAGAIN, "feature negotiation not complete")
        features = int(dev.negotiated_features)
        msg.put(VdpaAttr.DEV_NEGOTIATED_FEATURES, features)
        if features & ((1 << VIRTIO_NET_F_MQ) | (1 << VIRTIO_NET_F_RSS)):
            msg.put(VdpaAttr.DEV_NET_CFG_MAX_VQP, int(getattr(dev, "max_vqp", None) or 0))
        msg.put(VdpaAttr.DEV_QUEUE_INDEX, index)
        for name, value in stats(index):
            msg.put(VdpaAttr.DEV_VENDOR_ATTR_NAME, str(name))
            msg.put(VdpaAttr.DEV_VENDOR_ATTR_VALUE, int(value) & (2**64 - 1))
        reply.messages.append(msg)

    # DEV_ATTR_SET
    def _attr_set(self, tb, reply: NlReply) -> None:
        dev = self._dev_by_name(tb, "unmanaged vdpa device")
        if not int(self._mgmtdev_of(dev).supported_classes) & (1 << VIRTIO_ID_NET):
            # the kernel reports this without failing the request
            reply.extack = f"{MSG_PREFIX}{dev.name} device not supported"
            return
        mac = tb.get(VdpaAttr.DEV_NET_CFG_MACADDR)
        if mac is None:
            raise VdpaMgmtError(errno.EOPNOTSUPP)
        if not _is_valid_ether_addr(mac):
            raise _core_error(errno.EOPNOTSUPP, "Invalid MAC address")
        set_mac = getattr(dev, "set_mac", None)
        if not callable(set_mac):
            raise _core_error(errno.EOPNOTSUPP, "Operation not supported by the device.")
        set_mac(mac)
        log.info("vdpa device mac set", name=dev.name, mac=mac.hex(":"))

    _HANDLERS = {
        VdpaCmd.MGMTDEV_GET: _mgmtdev_get,
        VdpaCmd.DEV_NEW: _dev_new,
        VdpaCmd.DEV_DEL: _dev_del,
        VdpaCmd.DEV_GET: _dev_get,
        VdpaCmd.DEV_CONFIG_GET: _config_get,
        VdpaCmd.DEV_VSTATS_GET: _vstats_get,
        VdpaCmd.DEV_ATTR_SET: _attr_set,
    }
    _DUMPS = {
        VdpaCmd.MGMTDEV_GET: _mgmtdev_dump,
        VdpaCmd.DEV_GET: _dev_dump,
        VdpaCmd.DEV_CONFIG_GET: _config_dump,
    }

    # ---------------------------------------------------------------- serving
    def start(self) -> str:
        """Serve on ``<runtime dir>/vdpa.sock`` from a thread; returns the socket path.

        Creates the runtime directory if the EAL has not.  Raises OSError if
        another live service owns the socket.
        """
        from .transport import MgmtServer

        with self._lock:
            if self._server is not None:
                raise RuntimeError("the vdpa management service is already serving")
            self._server = MgmtServer(self.socket_path, self.request)
            try:
                self._server.start()
            except BaseException:
                self._server = None
                raise
        log.info("vdpa management service listening", path=self.socket_path)
        return self.socket_path

    def stop(self) -> None:
        """Stop serving and remove the socket file. Idempotent."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()
            log.info("vdpa management service stopped", path=self.socket_path)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "VdpaManagement":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
