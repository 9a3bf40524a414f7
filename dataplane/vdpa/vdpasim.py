"""The vDPA simulator drivers ``vdpasim_net`` and ``vdpasim_blk`` (Linux's vdpa_sim, behind DPDK's ops).

A simulator device is "hardware" that needs no card: its own process walks
the guest rings (:class:`~dataplane.vdpa.sim.hw.SimHardware`).  This module
is its driver and its management device:

* :class:`SimDevice`: one device: name, kind, provisioned attributes (MAC,
  MTU, device features, capacity), its hardware, its registry entry
  (:class:`~dataplane.vdpa.device.VdpaDevice`) and the connection it serves.
* :class:`VdpasimOps`: DPDK's ops over the hardware: ``dev_conf`` hands the
  guest memory table and the ready vrings to the hardware, ``dev_close``
  takes them back and saves the indices it reached into the back-end,
  ``set_vring_state`` re-hands the rings when one's readiness flips while
  configured, ``get_config`` is the device's config space, the stats are its
  vendor counters.
* :class:`SimMgmtDev`: the management device (``vdpasim_net`` /
  ``vdpasim_blk``) that ``vdpa dev add`` creates devices with.

Over vhost-user the device offers its Linux features plus
VHOST_USER_F_PROTOCOL_FEATURES; ACCESS_PLATFORM is dropped by the socket (no
IOTLB over vhost-user), so the simulator does not insist on it as the kernel's
does for vhost-vdpa.  Protocol features: MQ, REPLY_ACK, CONFIG, STATUS.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

from dataplane import log as dplog
from dataplane.vdpa.device import (
    VDPA_DEVICE_TYPE_BLK,
    VDPA_DEVICE_TYPE_NET,
    VdpaDevOps,
    VdpaDevice,
    VdpaError,
    register_device,
    unregister_device,
)
from dataplane.vdpa.mgmt.service import VdpaMgmtError
from dataplane.vdpa.sim.spec import (
    NET_STATS_NAMES,
    VDPASIM_BLK_CAPACITY,
    VDPASIM_BLK_FEATURES,
    VDPASIM_FEATURES,
    VDPASIM_NET_FEATURES,
    VDPASIM_QUEUE_MAX,
    VDPASIM_VENDOR_ID,
)
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioDeviceStatus, VirtioFeature as VF, bit

__all__ = [
    "VDPASIM_FEATURES",
    "VDPASIM_NET_FEATURES",
    "VDPASIM_BLK_FEATURES",
    "VDPASIM_QUEUE_MAX",
    "VDPASIM_VENDOR_ID",
    "VDPASIM_BLK_CAPACITY",
    "VDPASIM_PROTOCOL_FEATURES",
    "NET_STATS",
    "SimDevice",
    "VdpasimOps",
    "SimMgmtDev",
]

log = dplog.get_logger("dataplane.vdpa")

#: What the simulators offer a vhost-user front-end.
VDPASIM_PROTOCOL_FEATURES = sum(bit(f) for f in (
    PF.VHOST_USER_PROTOCOL_F_MQ, PF.VHOST_USER_PROTOCOL_F_REPLY_ACK, PF.VHOST_USER_PROTOCOL_F_CONFIG,
    PF.VHOST_USER_PROTOCOL_F_STATUS))

#: vdpasim_net's vendor counters by queue index (rx, tx, cvq), in order.
NET_STATS = tuple(NET_STATS_NAMES[q] for q in sorted(NET_STATS_NAMES))
_ALL_NET_STATS = [name for names in NET_STATS for name in names]


_WARM: set[str] = set()


def _warm_up(kind: str) -> None:
    """Compile the hardware's kernels once per process (the hardware processes then load them from the
    cache): never inside dev_conf, which runs on the vhost-events thread."""
    if kind not in _WARM:
        from dataplane.vdpa.sim.kernels import warm_up

        warm_up(kind)
        _WARM.add(kind)


class SimDevice:
    """One simulator device (see the module docstring).  ``lib``: the vhost library serving it."""

    def __init__(self, kind: str, name: str, mgmtdev: "SimMgmtDev | None", lib: Any, *, mac: bytes = bytes(6),
                 mtu: int = 1500, device_features: int | None = None, capacity: int = VDPASIM_BLK_CAPACITY,
                 user_created: bool = True, hardware: Any = None):
        from dataplane.vdpa.sim.hw import SimHardware

        self.kind = kind
        self.name = name
        self.mgmtdev = mgmtdev
        self.lib = lib
        self.user_created = user_created
        self.device_features = (VDPASIM_NET_FEATURES if kind == "net" else VDPASIM_BLK_FEATURES) \
            if device_features is None else device_features
        self.mtu = mtu
        self.capacity = capacity
        _warm_up(kind)
        self.hw = hardware or SimHardware(kind, name, mac=bytes(mac), mtu=mtu, capacity=capacity)
        self.hw.start()
        self.hw.sync()  # the hardware is up (its kernels loaded) before a front-end can make dev_conf wait for it
        self.vid: int | None = None
        self.on_delete: Any = None  # called with the device when it is deleted (the app drops its socket)
        self.negotiated_features = 0
        self.configured = False
        self._lock = threading.Lock()
        self.vdev: VdpaDevice | None = None
        try:
            self.vdev = register_device(name, VdpasimOps(self), driver=f"vdpasim_{kind}", device=self)
        except VdpaError:
            self.hw.close()
            raise

    # -- what the management tool reads ---------------------------------------------------

    @property
    def device_id(self) -> int:
        return 1 if self.kind == "net" else 2

    vendor_id = VDPASIM_VENDOR_ID
    max_vq_size = VDPASIM_QUEUE_MAX
    min_vq_size = 1

    @property
    def max_vqs(self) -> int:
        return 3 if self.kind == "net" else 1

    @property
    def mac(self) -> bytes:
        return self.hw.mac

    def set_mac(self, mac: bytes) -> None:
        self.hw.set_mac(bytes(mac))

    @property
    def net_status(self) -> int:
        return 1  # VIRTIO_NET_S_LINK_UP, rewritten on every config read

    max_vqp = None  # no MQ

    @property
    def status(self) -> int:
        """The driver's virtio status byte (FEATURES_OK once the front-end set features)."""
        vid = self.vid
        if vid is None:
            return 0
        try:
            dev = self.lib.get_device(vid)
        except Exception:
            return 0
        status = dev.status
        if dev.features_set and not dev.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_STATUS):
            status |= VirtioDeviceStatus.FEATURES_OK | (VirtioDeviceStatus.DRIVER_OK if dev.running else 0)
        return int(status)

    def vendor_stats(self, qidx: int) -> list[tuple[str, int]]:
        if self.kind != "net":
            raise VdpaMgmtError(errno.EOPNOTSUPP)
        try:
            return self.hw.stats(qidx)
        except ValueError:
            raise VdpaMgmtError(errno.EINVAL) from None

    def delete(self) -> None:
        """Remove the device: its socket dropped (``on_delete``), unregistered, its hardware stopped."""
        if self.on_delete is not None:
            hook, self.on_delete = self.on_delete, None
            hook(self)
        if self.vdev is not None:
            try:
                unregister_device(self.vdev)
            except VdpaError:
                pass
            self.vdev = None
        self.hw.close()

    # -- the ops' work ------------------------------------------------------------------

    def _queues(self, vid: int) -> tuple[list[dict], list[int], list[dict]]:
        lib = self.lib
        regions = lib.get_mem_table(vid)
        queues = []
        for q in range(lib.get_vring_num(vid)):
            vq = lib.get_vhost_vring(vid, q)
            if not vq.ready:
                continue
            queues.append(dict(qid=q, size=vq.size, packed=vq.packed, desc_gpa=vq.desc_gpa, avail_gpa=vq.avail_gpa,
                               used_gpa=vq.used_gpa, last_avail_idx=vq.last_avail_idx, avail_wrap=vq.avail_wrap_counter,
                               last_used_idx=vq.last_used_idx, used_wrap=vq.used_wrap_counter, kick_fd=vq.kick_fd,
                               call_fd=vq.call_fd, enabled=vq.enabled))
        table = [dict(guest_phys_addr=r["guest_phys_addr"], size=r["size"], userspace_addr=r["userspace_addr"],
                      mmap_offset=r["mmap_offset"]) for r in regions]
        return table, [r["fd"] for r in regions], queues

    def attach(self, vid: int, resume: dict | None = None) -> None:
        """Hand the ready vrings to the hardware; ``resume``: indices by vring from a :meth:`detach`
        (the back-end's copies are not updated while the device runs)."""
        table, fds, queues = self._queues(vid)
        for q in queues:
            if resume and q["qid"] in resume:
                q["last_avail_idx"], q["avail_wrap"], q["last_used_idx"], q["used_wrap"] = resume[q["qid"]]
        self.hw.attach(self.lib.get_negotiated_features(vid), table, fds, queues)
        self.vid = vid
        self.configured = True
        log.info("vdpasim: hardware walks the rings", device=self.name, vid=vid, vrings=[q["qid"] for q in queues])

    def detach(self) -> dict:
        """Take the rings back from the hardware; returns the indices it reached, by vring."""
        if not self.configured:
            return {}
        self.configured = False
        return self.hw.detach()

    def save_bases(self, vid: int, bases: dict) -> None:
        """Write the indices the hardware reached into the back-end (dev_close: the rings are stopped)."""
        for q, (last_avail, avail_wrap, last_used, used_wrap) in bases.items():
            try:
                vq = self.lib.get_vhost_vring(vid, q)
                if vq.packed:
                    self.lib.set_vring_base(vid, q, last_avail | avail_wrap << 15, last_used | used_wrap << 15)
                else:
                    self.lib.set_vring_base(vid, q, last_avail, last_used)
            except Exception as e:  # the ring went away meanwhile: nothing to save
                log.warning("vdpasim: vring base not saved", device=self.name, vid=vid, vring=q, error=str(e))

    def __repr__(self) -> str:
        return f"SimDevice({self.name!r}, {self.kind})"


class VdpasimOps(VdpaDevOps):
    """DPDK's ops for one :class:`SimDevice`."""

    def __init__(self, sim: SimDevice):
        self.sim = sim

    def get_queue_num(self, vdev: VdpaDevice) -> int:
        return 1

    def get_features(self, vdev: VdpaDevice) -> int:
        return self.sim.device_features | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)

    def get_protocol_features(self, vdev: VdpaDevice) -> int:
        return VDPASIM_PROTOCOL_FEATURES

    def get_dev_type(self, vdev: VdpaDevice) -> int:
        return VDPA_DEVICE_TYPE_NET if self.sim.kind == "net" else VDPA_DEVICE_TYPE_BLK

    def dev_conf(self, vid: int) -> int:
        try:
            self.sim.attach(vid)
        except Exception as e:
            log.error("vdpasim: dev_conf failed", device=self.sim.name, vid=vid, error=str(e))
            return -1
        return 0

    def dev_close(self, vid: int) -> int:
        self.sim.save_bases(vid, self.sim.detach())
        return 0

    def set_vring_state(self, vid: int, vring: int, state: int) -> int:
        if self.sim.configured and self.sim.vid == vid:  # hand the rings over again, this one included or not
            bases = self.sim.detach()
            try:
                self.sim.attach(vid, resume=bases)
            except Exception as e:
                log.error("vdpasim: vrings not handed back to the hardware", device=self.sim.name, vid=vid, error=str(e))
                return -1
        return 0

    def set_features(self, vid: int) -> int:
        self.sim.vid = vid
        self.sim.negotiated_features = self.sim.lib.get_negotiated_features(vid)
        return 0

    def dev_cleanup(self, vid: int) -> int:
        if self.sim.vid == vid:
            self.sim.vid = None
        return 0

    def get_config(self, vid: int, size: int) -> bytes:
        return self.sim.hw.config_space()[:size]

    def get_stats_names(self, vdev: VdpaDevice) -> list[str]:
        return list(_ALL_NET_STATS) if self.sim.kind == "net" else []

    def get_stats(self, vdev: VdpaDevice, qid: int) -> list[tuple[int, int]]:
        if self.sim.kind != "net":
            return []
        got = dict(self.sim.hw.stats(qid)) if 0 <= qid < len(NET_STATS) else {}
        return [(i, int(got.get(name, 0))) for i, name in enumerate(_ALL_NET_STATS)]


class SimMgmtDev:
    """The management device ``vdpasim_net`` or ``vdpasim_blk`` (facts §4.4): creates :class:`SimDevice`\\ s."""

    bus = None

    def __init__(self, kind: str, lib: Any):
        self.kind = kind
        self.lib = lib
        self.name = f"vdpasim_{kind}"

    @property
    def supported_classes(self) -> int:
        return 1 << (1 if self.kind == "net" else 2)

    @property
    def max_supported_vqs(self) -> int:
        return 3 if self.kind == "net" else 0

    @property
    def supported_features(self) -> int:
        return VDPASIM_NET_FEATURES if self.kind == "net" else 0

    @property
    def config_attr_mask(self) -> int:
        # VDPA_ATTR_DEV_NET_CFG_MACADDR (10), _MTU (13), VDPA_ATTR_DEV_FEATURES (20)
        return (1 << 10 | 1 << 13 | 1 << 20) if self.kind == "net" else 0

    def dev_add(self, name: str, attrs: dict) -> SimDevice:
        features = attrs.get("device_features")
        base = VDPASIM_NET_FEATURES if self.kind == "net" else VDPASIM_BLK_FEATURES
        if features is not None and features & ~base:
            raise VdpaMgmtError(errno.EINVAL)  # as the kernel: not a subset of the supported features
        kw: dict[str, Any] = dict(device_features=features)
        if "mac" in attrs:
            kw["mac"] = bytes(attrs["mac"])
        if "mtu" in attrs:
            kw["mtu"] = int(attrs["mtu"])
        try:
            return SimDevice(self.kind, name, self, self.lib, **kw)
        except VdpaError as e:  # the name is taken in the vDPA registry
            raise VdpaMgmtError(e.errno) from None


def _register_drivers() -> None:
    from dataplane.vdpa.features_table import VdpaDriverInfo, register_driver

    for kind, features, dev_type in (("net", VDPASIM_NET_FEATURES, VDPA_DEVICE_TYPE_NET),
                                     ("blk", VDPASIM_BLK_FEATURES, VDPA_DEVICE_TYPE_BLK)):
        register_driver(VdpaDriverInfo(
            name=f"vdpasim_{kind}",
            get_features=lambda f=features: f | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES),
            get_protocol_features=lambda: VDPASIM_PROTOCOL_FEATURES,
            ops_class=VdpasimOps,
            dev_type=dev_type,
            arch=frozenset({"x86-64"}),  # the architecture the suite runs on
        ))


_register_drivers()
