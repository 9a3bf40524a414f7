"""The ifcvf vDPA driver (DPDK's ``drivers/vdpa/ifc``) over an IFC VF: probe, ops, threads.

* :func:`probe` takes ``-a BDF,vdpa=1[,sw-live-migration=1]``, finds the function's files
  (:func:`~dataplane.vdpa.ifcvf.hw.find_vf_dir`), probes it (:class:`~.hw.IfcvfHw`) and
  registers the vDPA device under the BDF.
* :class:`IfcvfOps`: ``dev_conf`` DMA-maps guest memory (IOVA = GPA), binds MSI-X (vector 0:
  the driver's config-interrupt eventfd, vector i+1: vring i's guest callfd), runs the start
  sequence and starts the notify relay (kickfd -> doorbell) and the config-interrupt thread
  (-> CONFIG_CHANGE_MSG), then asks for host notifiers (a failure means the software relay
  is used).  ``dev_close`` undoes it and saves the BAR4 ring states with ``set_vring_base``.
* :class:`IfcvfMgmtDev`: ``pci/<bdf>`` for ``dataplane vdpa mgmtdev show``.

Features (VDPA-FACTS §2.5): the device's, without ACCESS_PLATFORM, plus GUEST_ANNOUNCE,
CTRL_VQ, STATUS and PROTOCOL_FEATURES.  CTRL_VQ and GUEST_ANNOUNCE are offered although the
card has no control queue: over vhost-user the control queue never reaches the back-end —
QEMU's virtio-net model serves it (and sends the announcements) itself, only the data vrings
are handed over — so a front-end negotiating them gets them implemented, as with DPDK.
LOG_ALL and LOG_SHMFD are offered: live migration is implemented both ways — HW-assisted
(§2.7: the card marks the pages it writes in the vhost log, DMA-mapped at IFCVF_LOG_BASE) and,
with ``sw-live-migration=1``, SW-assisted (§2.8: mediated RX used rings relayed to the guest
by the ``ifc-vring-<vid>`` thread, which marks the buffers).
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

from dataplane import log as dplog
from dataplane.vdpa.card_ops import CardDeviceOps
from dataplane.vdpa.device import VDPA_DEVICE_TYPE_BLK, VDPA_DEVICE_TYPE_NET, VdpaDevice, VdpaError, \
    register_device, unregister_device
from dataplane.vdpa.fdthread import EventfdRelay as _Relay
from dataplane.vdpa.ifcvf import regs as R
from dataplane.vdpa.ifcvf.hw import IfcvfHw, IfcvfHwError, find_vf_dir
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

__all__ = ["IFCVF_DEVARGS", "IFCVF_NET_PROTOCOL_FEATURES", "IfcvfDevice", "IfcvfOps", "IfcvfMgmtDev",
           "NotOurDevice", "parse_devargs", "probe", "ifcvf_features"]

log = dplog.get_logger("dataplane.vdpa.ifcvf")

#: The only keys DPDK's ifcvf accepts.
IFCVF_DEVARGS = ("vdpa", "sw-live-migration")

#: DPDK's 0x10c2b: REPLY_ACK, BACKEND_REQ, BACKEND_SEND_FD, HOST_NOTIFIER, LOG_SHMFD, MQ, STATUS.
IFCVF_NET_PROTOCOL_FEATURES = sum(bit(f) for f in (
    PF.VHOST_USER_PROTOCOL_F_REPLY_ACK, PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ,
    PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD, PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER,
    PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD, PF.VHOST_USER_PROTOCOL_F_MQ, PF.VHOST_USER_PROTOCOL_F_STATUS))

_NET_EXTRA = sum(bit(f) for f in (VF.VIRTIO_NET_F_GUEST_ANNOUNCE, VF.VIRTIO_NET_F_CTRL_VQ, VF.VIRTIO_NET_F_STATUS,
                                  VF.VHOST_USER_F_PROTOCOL_FEATURES, VF.VHOST_F_LOG_ALL))


def ifcvf_features(device_features: int, live_migration: bool = True) -> int:
    """What a net VF offers a front-end (see the module doc); LOG_ALL only with live migration."""
    f = device_features & ~bit(VF.VIRTIO_F_ACCESS_PLATFORM) | _NET_EXTRA
    return f if live_migration else f & ~bit(VF.VHOST_F_LOG_ALL)


class NotOurDevice(Exception):
    """The devargs do not ask for vDPA (DPDK's probe returns 1: left to another driver)."""


def parse_devargs(args: dict[str, str]) -> bool:
    """Check ``vdpa`` / ``sw-live-migration`` (strtoul base 0); returns sw-live-migration.

    NotOurDevice without ``vdpa=1``; ValueError for an unknown key or a bad value."""
    unknown = sorted(set(args) - set(IFCVF_DEVARGS))
    if unknown:
        raise ValueError(f"unknown devargs key(s) {', '.join(unknown)} (ifcvf takes only {', '.join(IFCVF_DEVARGS)})")

    def num(key: str) -> int:
        text = args[key]
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"{key}={text!r}: not a number") from None

    if "vdpa" not in args or num("vdpa") != 1:
        raise NotOurDevice("vdpa=1 not given: the function is left to another driver")
    return "sw-live-migration" in args and num("sw-live-migration") != 0


class _Mediated:
    """A mediated split ring (§2.8) in a memfd the card DMA-maps at ``iova``: desc | avail | used, the used
    ring page-aligned; the card writes the used entries here, the relay copies them to the guest."""

    def __init__(self, num: int, iova: int):
        import mmap as _mmap

        self.num = num
        self.iova = iova
        self.avail_off = 16 * num
        self.used_off = (self.avail_off + 6 + 2 * num + 4095) & ~4095
        self.size = (self.used_off + 6 + 8 * num + 4095) & ~4095
        self.fd = os.memfd_create("ifcvf-mediated", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self.mm = _mmap.mmap(self.fd, self.size)
        import ctypes

        self._buf = (ctypes.c_char * self.size).from_buffer(self.mm)
        self.addr = ctypes.addressof(self._buf)
        self.intr_fd = -1
        self.call_fd = -1

    def _u16(self, off: int, v: int) -> None:
        self.mm[off:off + 2] = (v & 0xFFFF).to_bytes(2, "little")

    def avail_idx(self, v: int) -> None:
        self._u16(self.avail_off + 2, v)

    def used_idx(self, v: int) -> None:
        self._u16(self.used_off + 2, v)

    def close(self) -> None:
        if self.intr_fd >= 0:
            os.close(self.intr_fd)
            self.intr_fd = -1
        self.guest = self.vring = None
        del self._buf
        try:
            self.mm.close()
        except BufferError:
            pass
        os.close(self.fd)


class IfcvfDevice:
    """One probed VF: its hardware, its registry entry, the connection it serves."""

    kind = "net"

    def __init__(self, bdf: str, lib: Any, *, sw_lm: bool = False, vf_dir: str | None = None,
                 mgmtdev: "IfcvfMgmtDev | None" = None):
        self.bdf = self.name = bdf
        self.lib = lib
        self.sw_lm = sw_lm
        self.hw = IfcvfHw(bdf, vf_dir or find_vf_dir(bdf))
        if not self.hw.net:
            self.hw.close()
            raise IfcvfHwError(f"{bdf}: only the net function is supported by this driver (virtio id {self.hw.virtio_id})")
        if not sw_lm and self.hw.lm is None:
            self.hw.close()
            raise IfcvfHwError(f"Device {bdf} does not support HW assist live migration, please enable sw-live-migration!")
        self.max_queues = min(R.IFCVF_MAX_QUEUES, (self.hw.num_queues - 1) // 2)
        self.features = ifcvf_features(self.hw.device_features)
        self.protocol_features = IFCVF_NET_PROTOCOL_FEATURES
        self.sw_running = False  # the SW-assisted live-migration relay runs (§2.8)
        self.mediated: dict[int, "_Mediated"] = {}
        self.vring_relay: _Relay | None = None
        self.log_map: tuple[int, int] | None = None  # the dirty log's DMA map while the card logs
        self.mgmtdev = mgmtdev
        self.user_created = mgmtdev is not None
        self.on_delete: Any = None
        self.vid: int | None = None
        self.negotiated_features = 0
        self.configured = False
        self.vring_enable: dict[int, bool] = {}
        self.dma: list[tuple[int, int]] = []
        self.notify: dict[int, int] = {}
        self.config_fd = -1
        self.relay: _Relay | None = None
        self.intr: _Relay | None = None
        self.relayed_used = 0  # used entries the SW relay copied to the guest
        self.relayed_kicks = 0  # kicks the notify relay wrote to doorbells (the card cannot tell who kicked)
        self.config_interrupts = 0
        self.host_notifiers: dict[int, Any] = {}
        self._fd0 = os.open(self.hw.bar0_path, os.O_RDWR | os.O_CLOEXEC)  # what QEMU maps as doorbells
        self._lock = threading.RLock()
        self.vdev: VdpaDevice | None = None
        try:
            self.vdev = register_device(bdf, IfcvfOps(self), driver="ifcvf", device=self)
        except VdpaError:
            self.close_hw()
            raise
        log.info("ifcvf: probed", bdf=bdf, queue_pairs=self.max_queues, features=hex(self.features),
                 sw_live_migration=sw_lm)

    # -- what the management tool reads ---------------------------------------------------
    device_id = R.VIRTIO_ID_NET
    vendor_id = 0x8086  # the subsystem vendor, as Linux's ifcvf reports it
    max_vq_size = 32768
    min_vq_size = 1

    @property
    def max_vqs(self) -> int:
        return 2 * self.max_queues

    @property
    def device_features(self) -> int:
        return self.hw.device_features

    @property
    def mac(self) -> bytes:
        return self.hw.mac()

    @property
    def mtu(self) -> int:
        return self.hw.mtu()

    @property
    def net_status(self) -> int:
        return self.hw.net_status()

    @property
    def max_vqp(self) -> int:
        return self.max_queues

    @property
    def status(self) -> int:
        return self.hw.status if self.hw.bar0 is not None else 0

    def figures(self) -> dict:
        """The driver's own counts (the card counts every doorbell write, whoever made it)."""
        return {"relayed_kicks": self.relayed_kicks, "relayed_used": self.relayed_used,
                "config_interrupts": self.config_interrupts,
                "host_notifiers": sorted(q for q, on in self.host_notifiers.items() if on)}

    def vendor_stats(self, qidx: int):
        from dataplane.vdpa.mgmt.service import VdpaMgmtError

        raise VdpaMgmtError(errno.EOPNOTSUPP)

    # -- datapath bring-up (§2.6) ---------------------------------------------------------
    def _rings(self, vid: int) -> list[dict]:
        rings = []
        for q in range(self.lib.get_vring_num(vid)):
            vq = self.lib.get_vhost_vring(vid, q)
            if not vq.ready or not self.vring_enable.get(q, True):
                continue
            rings.append(self._ring(vq, q))
        return rings

    def _ring(self, vq: Any, q: int) -> dict:
        for name in ("desc_gpa", "avail_gpa", "used_gpa"):
            if not getattr(vq, name):
                raise IfcvfHwError(f"Fail to get GPA for {name[:-4]} ring of vring {q}")
        if vq.packed:
            state = (vq.last_avail_idx | vq.avail_wrap_counter << 15) | (vq.last_used_idx | vq.used_wrap_counter << 15) << 16
        else:
            state = (vq.last_avail_idx & 0xFFFF) | (vq.last_used_idx & 0xFFFF) << 16
        return dict(qid=q, desc=vq.desc_gpa, avail=vq.avail_gpa, used=vq.used_gpa, size=vq.size, state=state,
                    kick_fd=vq.kick_fd, call_fd=vq.call_fd)

    def _bind_irqs(self, vid: int) -> None:
        """Vector 0: the config eventfd; vector q+1: vring q's guest callfd (a mediated ring's: the relay's)."""
        fds = [self.config_fd]
        for q in range(self.lib.get_vring_num(vid)):
            m = self.mediated.get(q)
            fds.append(m.intr_fd if m is not None else self.lib.get_vhost_vring(vid, q).call_fd)
        self.hw.set_irqs(fds)

    def _start_relay(self, rings: list[dict]) -> None:
        fds = {r["kick_fd"]: r["qid"] for r in rings if r["kick_fd"] >= 0}
        self.relay = _Relay(f"ifc-notify-{self.vid}", fds, self._kick)
        self.relay.start()

    def _stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None

    def _kick(self, qid: int) -> None:
        addr = self.notify.get(qid)
        bar0 = self.hw.bar0
        if addr is not None and bar0 is not None:
            bar0.w16(addr, qid)  # the doorbell: a 16-bit write of the queue index
            self.relayed_kicks += 1

    def _config_irq(self, vid: int) -> None:
        self.config_interrupts += 1
        if self.hw.bar0 is not None:
            self.hw.bar0.w8(self.hw.isr, 0)  # the card's ISR is not read-to-clear
        try:
            fut = self.lib.backend_config_change(vid)
            fut.add_done_callback(lambda f: f.exception() and log.warning(
                "ifcvf: CONFIG_CHANGE_MSG failed", bdf=self.bdf, error=str(f.exception())))
        except Exception as e:
            log.warning("ifcvf: config change not sent", bdf=self.bdf, vid=vid, error=str(e))

    def conf(self, vid: int) -> None:
        with self._lock:
            self.vid = vid
            features = self.lib.get_negotiated_features(vid)
            rings = self._rings(vid)
            try:
                for r in self.lib.get_mem_table(vid):
                    self.hw.dma_map(r["guest_phys_addr"], r["size"], r["fd"], r["mmap_offset"])
                    self.dma.append((r["guest_phys_addr"], r["size"]))
                self.config_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._bind_irqs(vid)
                hw_features = features & ~(bit(VF.VHOST_USER_F_PROTOCOL_FEATURES) | bit(VF.VHOST_F_LOG_ALL)
                                           | bit(VF.VIRTIO_NET_F_GUEST_ANNOUNCE) | bit(VF.VIRTIO_NET_F_CTRL_VQ))
                self.notify = self.hw.start(hw_features, [{k: r[k] for k in ("qid", "desc", "avail", "used", "size",
                                                                              "state")} for r in rings])
                self.started_qids = [r["qid"] for r in rings]
            except Exception:
                self._teardown(vid, save=False)
                raise
            if features & bit(VF.VHOST_F_LOG_ALL):
                if self.sw_lm:
                    self.configured = True
                    self.negotiated_features = features
                    self._sw_switchover(vid)
                    return
                self._log_start(vid)
            self._start_relay(rings)
            self.intr = _Relay(f"ifc-intr-{vid}", {self.config_fd: vid}, self._config_irq)
            self.intr.start()
            self.configured = True
            log.info("ifcvf: datapath started", bdf=self.bdf, vid=vid, vrings=self.started_qids)
            for q in self.started_qids:
                self._host_notifier(vid, q, True)

    def _host_notifier(self, vid: int, q: int, enable: bool) -> bool:
        try:
            futures = self.lib.host_notifier_ctrl(vid, q, enable)
        except Exception as e:
            if enable:
                log.info(f"vDPA ({self.bdf}): software relay is used.", vring=q, reason=str(e))
            return False

        def done(f, q=q):
            exc = f.exception()
            if exc is not None:
                log.info(f"vDPA ({self.bdf}): software relay is used.", vring=q, reason=str(exc))
            self.host_notifiers[q] = enable and exc is None

        for f in futures:
            f.add_done_callback(done)
        return True

    def _teardown(self, vid: int, save: bool = True) -> None:
        for t in (self.intr,):
            if t is not None:
                t.stop()
        self.intr = None
        self._stop_relay()
        if self.vring_relay is not None:
            self.vring_relay.stop()
            self.vring_relay = None
        states: dict[int, int] = {}
        if self.hw.bar0 is not None:
            try:
                states = self.hw.stop(list(getattr(self, "started_qids", [])))
            except IfcvfHwError as e:
                log.error("ifcvf: hardware stop failed", bdf=self.bdf, error=str(e))
        if self.log_map is not None:
            self._log_stop(vid, list(states))
        if self.mediated or self.sw_running:
            self._sw_stop(vid, states)
        if save:
            for q, v in states.items():
                # net: every chain the hardware took is completed, both indices are the high half
                base = v >> 16 & 0xFFFF
                try:
                    self.lib.set_vring_base(vid, q, base, base)
                except Exception as e:
                    log.warning("ifcvf: vring base not saved", bdf=self.bdf, vid=vid, vring=q, error=str(e))
        for call in (lambda: self.hw.set_irqs([]),):
            try:
                call()
            except IfcvfHwError as e:
                log.warning("ifcvf: MSI-X not disabled", bdf=self.bdf, error=str(e))
        for iova, size in self.dma:
            try:
                self.hw.dma_unmap(iova, size)
            except IfcvfHwError as e:
                log.warning("ifcvf: DMA unmap failed", bdf=self.bdf, iova=hex(iova), error=str(e))
        self.dma = []
        if self.config_fd >= 0:
            os.close(self.config_fd)
            self.config_fd = -1
        self.started_qids = []
        self.notify = {}
        self.configured = False

    # -- HW-assisted live migration (§2.7) --------------------------------------------------
    def _log_start(self, vid: int) -> None:
        """DMA-map the vhost log at IFCVF_LOG_BASE, program BASE/END, LOGGING_CTRL = ENABLE_VF."""
        if self.log_map is not None or self.hw.lm is None:
            return
        dl = self.lib.get_device(vid).dirty_log
        if dl is None:
            log.error("ifcvf: LOG_ALL without a log (SET_LOG_BASE): the card cannot log", bdf=self.bdf, vid=vid)
            return
        page = dl.mmap_offset & ~0xFFF
        delta = dl.mmap_offset - page
        size = (delta + dl.mmap_size + 0xFFF) & ~0xFFF
        self.hw.dma_map(R.IFCVF_LOG_BASE, size, dl.fd, page)
        self.log_map = (R.IFCVF_LOG_BASE, size)
        base = R.IFCVF_LOG_BASE + delta
        end = base + dl.mmap_size
        lm = self.hw.lm
        lm.w32(R.LM_BASE_ADDR_LOW, base & 0xFFFFFFFF)
        lm.w32(R.LM_BASE_ADDR_HIGH, base >> 32)
        lm.w32(R.LM_END_ADDR_LOW, end & 0xFFFFFFFF)
        lm.w32(R.LM_END_ADDR_HIGH, end >> 32)
        lm.w32(R.LM_LOGGING_CTRL, R.LM_ENABLE_VF)
        self.hw.flush()
        log.info("ifcvf: hardware dirty logging on", bdf=self.bdf, vid=vid, log_size=dl.mmap_size)

    def _log_stop(self, vid: int, qids: list[int]) -> None:
        """LOGGING_CTRL = 0, the log unmapped, the used rings marked by software (DPDK does it at stop)."""
        if self.log_map is None:
            return
        if self.hw.lm is not None:
            self.hw.lm.w32(R.LM_LOGGING_CTRL, 0)
            try:
                self.hw.flush()
            except IfcvfHwError as e:
                log.warning("ifcvf: logging stop not acknowledged", bdf=self.bdf, error=str(e))
        iova, size = self.log_map
        self.log_map = None
        try:
            self.hw.dma_unmap(iova, size)
        except IfcvfHwError as e:
            log.warning("ifcvf: log DMA unmap failed", bdf=self.bdf, error=str(e))
        for q in qids:
            try:
                vq = self.lib.get_vhost_vring(vid, q)
                self.lib.log_used_vring(vid, q, 0, vq.size * 8 + 6)
            except Exception as e:
                log.warning("ifcvf: used ring not logged", bdf=self.bdf, vring=q, error=str(e))
        log.info("ifcvf: hardware dirty logging off", bdf=self.bdf, vid=vid)

    # -- SW-assisted live migration (§2.8) ---------------------------------------------------
    def _sw_switchover(self, vid: int) -> None:
        """Stop the direct datapath and restart it with mediated used rings for the RX (even) vrings,
        relayed to the guest (with dirty logging) by the ``ifc-vring-<vid>`` thread."""
        from dataplane.rings.split import split_vring_from_addrs
        from dataplane.vhost.dirty_log import make_log

        dev = self.lib.get_device(vid)
        if dev.has_feature(VF.VIRTIO_F_RING_PACKED):
            raise IfcvfHwError("SW-assisted live migration needs split rings (as DPDK's relay)")
        self._stop_relay()
        if self.intr is not None:
            self.intr.stop()
            self.intr = None
        qids = list(self.started_qids)
        states = self.hw.stop(qids)
        self.hw.set_irqs([])
        try:
            self.lib.host_notifier_ctrl(vid, 0xFFFF, False)
        except Exception:
            pass
        lg = make_log(dev.dirty_log.bitmap, on=True) if dev.dirty_log is not None else make_log()
        rings = []
        iova = R.IFCVF_MEDIATED_VRING
        irq_fds = [self.config_fd]
        for q in range(self.lib.get_vring_num(vid)):
            vq = self.lib.get_vhost_vring(vid, q)
            irq_fds.append(vq.call_fd)
        for q in qids:
            vq = self.lib.get_vhost_vring(vid, q)
            base = states.get(q, 0) >> 16 & 0xFFFF
            ring = self._ring(vq, q)
            ring["state"] = base | base << 16
            if q % 2 == 0:
                m = _Mediated(vq.size, iova)
                m.avail_idx(base)
                m.used_idx(base)
                self.hw.dma_map(iova, m.size, m.fd, 0)
                iova += m.size
                m.guest = split_vring_from_addrs(vq.desc_hva, vq.avail_hva, vq.used_hva, vq.size)
                m.vring = split_vring_from_addrs(m.addr, m.addr + m.avail_off, m.addr + m.used_off, vq.size)
                m.call_fd = vq.call_fd
                m.intr_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                m.regions = dev.region_table
                m.log = lg
                m.event_idx = dev.has_feature(VF.VIRTIO_RING_F_EVENT_IDX)
                self.mediated[q] = m
                ring["used"] = m.iova + m.used_off
                irq_fds[q + 1] = m.intr_fd
            rings.append(ring)
        self.hw.set_irqs(irq_fds)
        hw_features = self.negotiated_features & ~(bit(VF.VHOST_USER_F_PROTOCOL_FEATURES) | bit(VF.VHOST_F_LOG_ALL)
                                                   | bit(VF.VIRTIO_NET_F_GUEST_ANNOUNCE) | bit(VF.VIRTIO_NET_F_CTRL_VQ))
        self.notify = self.hw.start(hw_features, [{k: r[k] for k in ("qid", "desc", "avail", "used", "size", "state")}
                                                  for r in rings])
        self.started_qids = [r["qid"] for r in rings]
        fds = {r["kick_fd"]: ("kick", r["qid"]) for r in rings if r["kick_fd"] >= 0}
        fds.update({m.intr_fd: ("intr", q) for q, m in self.mediated.items()})
        for q in self.mediated:
            self._relay_used(q)
        self.vring_relay = _Relay(f"ifc-vring-{vid}", fds, self._vring_event)
        self.vring_relay.start()
        for q in self.started_qids:
            self._kick(q)
        self.sw_running = True
        for q in self.started_qids:
            self._host_notifier(vid, q, True)
        log.info("ifcvf: SW-assisted live migration: mediated used rings relayed", bdf=self.bdf, vid=vid,
                 mediated=sorted(self.mediated))

    def _relay_used(self, q: int) -> int:
        from dataplane.vdpa.relay import relay_used_entries

        m = self.mediated.get(q)
        if m is None:
            return -1
        n = int(relay_used_entries(m.guest, m.vring, m.num, m.regions, m.log, m.event_idx))
        if n > 0 and m.call_fd >= 0:
            os.eventfd_write(m.call_fd, 1)
        elif n < 0:
            log.error("ifcvf: relay of the mediated used ring failed", bdf=self.bdf, vring=q)
        return n

    def _vring_event(self, key: tuple[str, int]) -> None:
        what, q = key
        if what == "kick":
            self._kick(q)
        else:
            self.relayed_used += max(0, self._relay_used(q))

    def _sw_stop(self, vid: int, states: dict[int, int]) -> None:
        """After the hardware stopped: a last relay, the used rings logged, the mediated rings unmapped."""
        for q, m in sorted(self.mediated.items()):
            self._relay_used(q)
        for q in states:
            try:
                vq = self.lib.get_vhost_vring(vid, q)
                self.lib.log_used_vring(vid, q, 0, vq.size * 8 + 6)
            except Exception as e:
                log.warning("ifcvf: used ring not logged", bdf=self.bdf, vring=q, error=str(e))
        for q, m in sorted(self.mediated.items()):
            try:
                self.hw.dma_unmap(m.iova, m.size)
            except IfcvfHwError as e:
                log.warning("ifcvf: mediated ring unmap failed", bdf=self.bdf, vring=q, error=str(e))
            m.close()
        self.mediated = {}
        self.sw_running = False

    def features_changed(self, vid: int) -> None:
        """set_features: LOG_ALL while running starts the card's dirty logging, or with
        sw-live-migration=1 switches to the SW relay (which stays until dev_close, as in DPDK)."""
        with self._lock:
            self.vid = vid
            self.negotiated_features = features = self.lib.get_negotiated_features(vid)
            if not self.configured:
                return
            if self.sw_lm:
                if features & bit(VF.VHOST_F_LOG_ALL) and not self.sw_running:
                    self._sw_switchover(vid)
                return
            if features & bit(VF.VHOST_F_LOG_ALL):
                self._log_start(vid)
            else:
                self._log_stop(vid, list(self.started_qids))

    def close_dev(self, vid: int) -> None:
        with self._lock:
            if not self.configured:
                return
            self._teardown(vid)
            log.info("ifcvf: datapath stopped", bdf=self.bdf, vid=vid)

    def vring_state(self, vid: int, vring: int, state: int) -> int:
        """§2.9: the ring's enable flag; while configured, (re)program or stop that ring."""
        if not 0 <= vring < 2 * self.max_queues:
            log.error(f"Vring index {vring} not correct", bdf=self.bdf)
            return -1
        with self._lock:
            self.vring_enable[vring] = bool(state)
            if not self.configured or self.vid != vid:
                return 0
            self._stop_relay()
            try:
                self._bind_irqs(vid)
                if state:
                    ring = self._ring(self.lib.get_vhost_vring(vid, vring), vring)
                    m = self.mediated.get(vring)
                    if m is not None:  # SW relay: the card keeps writing the mediated used ring
                        ring["used"] = m.iova + m.used_off
                        ring["state"] = self.hw.ring_state(vring) if vring in self.started_qids else ring["state"]
                    if vring not in self.started_qids:
                        self.started_qids.append(vring)
                    n = len(self.started_qids)
                    self.hw.set_mq(max(1, n // 2))
                    self.notify[vring] = self.hw.enable_ring(ring)
                elif vring in self.started_qids:
                    v = self.hw.disable_ring(vring)
                    self.started_qids.remove(vring)
                    self.notify.pop(vring, None)
                    self.hw.set_mq(max(1, len(self.started_qids) // 2))
                    base = v >> 16 & 0xFFFF
                    self.lib.set_vring_base(vid, vring, base, base)
            except Exception as e:
                log.error("ifcvf: set_vring_state failed", bdf=self.bdf, vring=vring, state=state, error=str(e))
                return -1
            finally:
                if not self.sw_running:  # the SW relay thread carries the kicks itself
                    rings = [dict(qid=q, kick_fd=self.lib.get_vhost_vring(vid, q).kick_fd) for q in self.started_qids]
                    self._start_relay(rings)
            return 0 if self._host_notifier(vid, vring, bool(state)) or not state else -1

    # -- lifetime -----------------------------------------------------------------------
    def close_hw(self) -> None:
        if self._fd0 >= 0:
            os.close(self._fd0)
            self._fd0 = -1
        self.hw.close()

    def delete(self) -> None:
        """Unregister the device and let the function go (closing the channel resets it)."""
        if self.on_delete is not None:
            hook, self.on_delete = self.on_delete, None
            hook(self)
        with self._lock:
            if self.configured and self.vid is not None:
                self._teardown(self.vid, save=False)
        if self.vdev is not None:
            try:
                unregister_device(self.vdev)
            except VdpaError:
                pass
            self.vdev = None
        self.close_hw()

    def __repr__(self) -> str:
        return f"IfcvfDevice({self.bdf!r})"


class IfcvfOps(CardDeviceOps):
    """DPDK's ifcvf ops for one :class:`IfcvfDevice`."""

    driver = "ifcvf"
    log = log

    def get_queue_num(self, vdev: VdpaDevice) -> int:
        return self.dev.max_queues

    def get_dev_type(self, vdev: VdpaDevice) -> int:
        return VDPA_DEVICE_TYPE_NET if self.dev.hw.net else VDPA_DEVICE_TYPE_BLK

    def get_notify_area(self, vid: int, qid: int) -> tuple[int, int]:
        hw = self.dev.hw
        addr = self.dev.notify.get(qid)
        if addr is None:
            addr = hw.notify_base + qid * hw.notify_mult  # notify_off is read when the ring is enabled
        return addr, R.NOTIFY_AREA_SIZE  # resource0 is BAR0 from offset 0


class IfcvfMgmtDev:
    """``pci/<bdf>``: the management device of one VF (its vDPA device is made by the probe)."""

    bus = "pci"

    def __init__(self, dev: IfcvfDevice):
        self.name = dev.bdf
        self.dev = dev

    supported_classes = 1 << R.VIRTIO_ID_NET
    config_attr_mask = 0

    @property
    def max_supported_vqs(self) -> int:
        return self.dev.hw.num_queues

    @property
    def supported_features(self) -> int:
        return self.dev.hw.device_features

    def dev_add(self, name: str, attrs: dict):
        from dataplane.vdpa.mgmt.service import VdpaMgmtError

        raise VdpaMgmtError(errno.EOPNOTSUPP, f"{self.name}: the VF's device is made by the probe (-a {self.name},vdpa=1)")


def probe(bdf: str, args: dict[str, str], lib: Any, vf_dir: str | None = None) -> IfcvfDevice:
    """``-a BDF,vdpa=1[,sw-live-migration=1]``: the probed device (NotOurDevice / ValueError / IfcvfHwError)."""
    sw_lm = parse_devargs(args)
    dev = IfcvfDevice(bdf, lib, sw_lm=sw_lm, vf_dir=vf_dir)
    dev.mgmtdev = IfcvfMgmtDev(dev)
    dev.user_created = True
    return dev


def _register_driver() -> None:
    from dataplane.vdpa.features_table import VdpaDriverInfo, register_driver

    # the card's device features (docs/nic.md): VERSION_1, ACCESS_PLATFORM, MAC, STATUS, MTU, MQ,
    # INDIRECT_DESC, EVENT_IDX, RING_PACKED -- a probed VF reports them; this is the column's default device
    card = sum(bit(f) for f in (VF.VIRTIO_F_VERSION_1, VF.VIRTIO_F_ACCESS_PLATFORM, VF.VIRTIO_NET_F_MAC,
                                VF.VIRTIO_NET_F_STATUS, VF.VIRTIO_NET_F_MTU, VF.VIRTIO_NET_F_MQ,
                                VF.VIRTIO_RING_F_INDIRECT_DESC, VF.VIRTIO_RING_F_EVENT_IDX, VF.VIRTIO_F_RING_PACKED))
    register_driver(VdpaDriverInfo(
        name="ifcvf",
        get_features=lambda: ifcvf_features(card),
        get_protocol_features=lambda: IFCVF_NET_PROTOCOL_FEATURES,
        ops_class=IfcvfOps,
        dev_type=VDPA_DEVICE_TYPE_NET,
        kdrv=frozenset({"vfio"}),
        arch=frozenset({"x86-64"}),
    ))


_register_driver()
