"""Test doubles for the vdpa management service: vdpa_sim's management devices
and devices with the values the Linux simulators report (no datapath).

* :class:`FakeSimNetMgmtdev` -- ``vdpasim_net``: class net, 3 vqs, features
  0x308830028, accepts ``mac``, ``mtu`` and ``device_features`` on ``dev add``;
  its devices (:class:`FakeNetDevice`) have vendor id 0, 3 vqs of at most 256
  entries, MAC all zero unless given, MTU 1500 unless given, status always
  link up, and the simulator's vendor stats per queue.
* :class:`FakeSimBlkMgmtdev` -- ``vdpasim_blk``: class block, nothing else
  reported, nothing accepted; its devices (:class:`FakeBlkDevice`) have 1 vq,
  features 0x308007646, the simulator's 128 MiB config, and no stats.
* :class:`FakeMgmtdev` -- any other shape (bus, classes, masks), e.g. a
  ``vduse``-like multi-class one or a ``pci/ADDR`` function.

Drive a device like a guest driver would with :meth:`FakeDevice.negotiate`.
"""

from __future__ import annotations

import errno

from dataplane.vdpa.mgmt.attrs import VdpaAttr
from dataplane.vdpa.mgmt.service import VdpaMgmtError

VDPASIM_FEATURES = (1 << 27) | (1 << 32) | (1 << 33)  # ANY_LAYOUT | VERSION_1 | ACCESS_PLATFORM
VDPASIM_NET_FEATURES = VDPASIM_FEATURES | (1 << 5) | (1 << 16) | (1 << 3) | (1 << 17) | (1 << 23)
VDPASIM_BLK_FEATURES = (
    VDPASIM_FEATURES | (1 << 9) | (1 << 1) | (1 << 2) | (1 << 6) | (1 << 10) | (1 << 12) | (1 << 13) | (1 << 14)
)
VDPASIM_QUEUE_MAX = 256
VDPASIM_VENDOR_ID = 0
VDPASIM_BLK_CAPACITY = 0x40000

# virtio status bits
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8

NET_STATS_NAMES = {
    0: ["rx packets", "rx bytes", "rx errors", "rx overruns", "rx drops"],
    1: ["tx packets", "tx bytes", "tx errors", "tx drops"],
    2: ["cvq requests", "cvq successes", "cvq errors"],
}


class FakeMgmtdev:
    """A management device with the given shape; ``dev_add`` makes ``device_cls`` devices."""

    def __init__(
        self,
        name: str,
        *,
        bus: str | None = None,
        supported_classes: int = 0,
        max_supported_vqs: int = 0,
        supported_features: int = 0,
        config_attr_mask: int = 0,
        device_cls=None,
    ):
        self.bus = bus
        self.name = name
        self.supported_classes = supported_classes
        self.max_supported_vqs = max_supported_vqs
        self.supported_features = supported_features
        self.config_attr_mask = config_attr_mask
        self.device_cls = device_cls
        self.added: list[tuple[str, dict]] = []  # every dev_add call, for tests

    def dev_add(self, name: str, attrs: dict):
        self.added.append((name, dict(attrs)))
        if self.device_cls is None:
            raise VdpaMgmtError(errno.EOPNOTSUPP)
        return self.device_cls(name, self, attrs)


class FakeDevice:
    """What every fake device has; subclasses set the identity."""

    device_id = 0
    nvqs = 0
    features = 0

    def __init__(self, name: str, mgmtdev, attrs: dict | None = None, *, user_created: bool = True):
        attrs = attrs or {}
        self.name = name
        self.mgmtdev = mgmtdev
        self.user_created = user_created
        self.vendor_id = VDPASIM_VENDOR_ID
        self.max_vqs = self.nvqs
        self.max_vq_size = VDPASIM_QUEUE_MAX
        self.min_vq_size = 1
        self.status = 0
        self.negotiated_features = 0
        provisioned = attrs.get("device_features")
        if provisioned is not None and provisioned & ~self.features:
            raise VdpaMgmtError(errno.EINVAL)  # vdpasim_create: not a subset of the supported features
        self.device_features = self.features if provisioned is None else provisioned
        self.deleted = False

    def negotiate(self, driver_features: int, driver_ok: bool = True) -> None:
        """What a driver does: ACK, DRIVER, features (must include ACCESS_PLATFORM), FEATURES_OK."""
        if not driver_features & (1 << 33):
            raise VdpaMgmtError(errno.EINVAL, "DMA mapping must be done by driver")
        self.negotiated_features = driver_features & self.device_features
        self.status = ACKNOWLEDGE | DRIVER | FEATURES_OK | (DRIVER_OK if driver_ok else 0)

    def reset(self) -> None:
        self.status = 0
        self.negotiated_features = 0

    def delete(self) -> None:
        self.deleted = True


class FakeNetDevice(FakeDevice):
    """A vdpasim_net device (config values and counters only)."""

    device_id = 1
    nvqs = 3
    features = VDPASIM_NET_FEATURES

    def __init__(self, name: str, mgmtdev, attrs: dict | None = None, **kw):
        super().__init__(name, mgmtdev, attrs, **kw)
        attrs = attrs or {}
        self.mac = bytes(attrs.get("mac", bytes(6)))
        self.mtu = attrs.get("mtu", 1500)
        self.max_vqp = attrs.get("max_vqp")  # no MQ: never used by the config
        self.counters = {q: dict.fromkeys(names, 0) for q, names in NET_STATS_NAMES.items()}

    @property
    def net_status(self) -> int:
        return 1  # vdpasim_net rewrites VIRTIO_NET_S_LINK_UP on every config read

    def vendor_stats(self, qidx: int) -> list[tuple[str, int]]:
        if qidx not in self.counters:
            raise VdpaMgmtError(errno.EINVAL)
        return list(self.counters[qidx].items())

    def set_mac(self, mac: bytes) -> None:
        self.mac = bytes(mac)


class FakeBlkDevice(FakeDevice):
    """A vdpasim_blk device: config only, no stats."""

    device_id = 2
    nvqs = 1
    features = VDPASIM_BLK_FEATURES
    vendor_stats = None

    def blk_config(self) -> dict:
        return {
            "capacity": VDPASIM_BLK_CAPACITY,
            "size_max": 4096,
            "seg_max": 32,
            "blk_size": 512,
            "num_queues": 1,
            "min_io_size": 1,
            "opt_io_size": 1,
            "discard_sector_alignment": 512,
            "max_discard_sectors": 0xFFFFFFFF,
            "max_discard_seg": 1,
            "max_write_zeroes_sectors": 0xFFFFFFFF,
            "max_write_zeroes_seg": 1,
        }


class FakeSimNetMgmtdev(FakeMgmtdev):
    def __init__(self):
        super().__init__(
            "vdpasim_net",
            supported_classes=1 << 1,
            max_supported_vqs=3,
            supported_features=VDPASIM_NET_FEATURES,
            config_attr_mask=(1 << VdpaAttr.DEV_NET_CFG_MACADDR)
            | (1 << VdpaAttr.DEV_NET_CFG_MTU)
            | (1 << VdpaAttr.DEV_FEATURES),
            device_cls=FakeNetDevice,
        )


class FakeSimBlkMgmtdev(FakeMgmtdev):
    def __init__(self):
        super().__init__("vdpasim_blk", supported_classes=1 << 2, device_cls=FakeBlkDevice)


def vduse_like_mgmtdev(config_attr_mask: int = 0) -> FakeMgmtdev:
    """A multi-class management device like ``vduse`` (net and block; it accepts
    nothing on ``dev add`` unless ``config_attr_mask`` says so)."""
    return FakeMgmtdev("vduse", supported_classes=(1 << 1) | (1 << 2), config_attr_mask=config_attr_mask)
