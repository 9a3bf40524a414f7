"""The mlx5 vDPA driver (DPDK 22.11's ``drivers/vdpa/mlx5``) over an emulated ConnectX-6 Dx VF.

* :func:`probe` takes ``-a BDF,class=vdpa[,devargs]`` (:mod:`.devargs`; a function whose classes
  lack vdpa is another class driver's: :class:`~.devargs.NotOurDevice`), opens the VF
  (:class:`~.hw.Mlx5Hw`), checks the vDPA caps (facts §3.1: ENOTSUP "Not enough capabilities..."),
  allocates the PD, reads the null mkey, binds the two event channels (MSI-X vector 0: completion
  events, vector 1: error events) and registers the device under the BDF.
* :class:`Mlx5VdpaOps`: DPDK's ops.  ``dev_conf`` registers guest memory (DMA map, a direct mkey per
  region and the indirect mkey of :func:`.mem.mkey_layout`), sets up every enabled virtq (umems,
  counters object, event mode QP with its CQ and two QPs when the vring has a callfd, else
  NO_MSIX; RDY; the doorbell rung once; the OBJECT_CHANGE subscription; 1 written to the callfd),
  the RSS steering (RQT, 7 TIRs, 7 flow rules: :mod:`.rss`), the kick relay and the event thread
  (:mod:`.event`'s policy).  ``dev_close`` suspends and queries every virtq and hands the indices
  back with ``set_vring_base``.
* :class:`Mlx5MgmtDev`: ``pci/<bdf>`` for ``dataplane vdpa mgmtdev show``.

The driver's own memory (umems, CQs and their doorbell records) is a memfd DMA-mapped at
:data:`DRV_IOVA`; the vhost log, when LOG_ALL is negotiated, at :data:`LOG_IOVA` (both above any
guest-physical address this project uses).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import mmap
import os
import select
import struct
import threading
import time
from typing import Any

from dataplane import log as dplog
from dataplane.hwspec import mlx5_prm as P
from dataplane.lcores.threads import set_thread_name, set_timer_slack_ns
from dataplane.vdpa.card_ops import CardDeviceOps
from dataplane.vdpa.device import VDPA_DEVICE_TYPE_NET, VdpaDevice, VdpaError, register_device, \
    unregister_device
from dataplane.vdpa.fdthread import EventfdRelay
from dataplane.vdpa.mlx5 import features as F, mem as M, rss as RSS
from dataplane.vdpa.mlx5.devargs import Mlx5VdpaDevargs, NotOurDevice, parse_devargs
from dataplane.vdpa.mlx5.event import EventCq, EventHooks, delay_summary, make_policy, run_event_thread
from dataplane.vdpa.mlx5.hw import Mlx5Hw, Mlx5HwError, find_vf_dir
from dataplane.vdpa.mlx5.recovery import GIVE_UP, IGNORE, RecoveryPolicy
from dataplane.vdpa.mlx5.stats import Mlx5VdpaStats
from dataplane.vhost_user.features import VirtioFeature as VF, bit

__all__ = ["Mlx5VdpaDevice", "Mlx5VdpaOps", "Mlx5MgmtDev", "NotOurDevice", "probe", "DRV_IOVA", "LOG_IOVA",
           "COMP_VECTOR", "ERR_VECTOR"]

log = dplog.get_logger("dataplane.vdpa.mlx5")

DRV_IOVA = 1 << 44
DRV_BYTES = 32 << 20
LOG_IOVA = 1 << 45
PAGE = 4096
#: the event channels: MSI-X vectors bound to the driver's eventfds
COMP_VECTOR, ERR_VECTOR = 0, 1
#: host notifier states (facts §3.5)
NOTIFIER_DISABLED, NOTIFIER_ENABLED, NOTIFIER_ERR = 0, 1, 2

_ALL_FIELDS = P.HashField.SRC_IP | P.HashField.DST_IP | P.HashField.L4_SPORT | P.HashField.L4_DPORT
_IP_FIELDS = P.HashField.SRC_IP | P.HashField.DST_IP
_V, _VP = P.Match.IP_VERSION, P.Match.IP_VERSION | P.Match.IP_PROTOCOL
#: the 7 flows of facts §3.7: (match criteria, ip_version, ip_protocol, hash fields, l3, l4); priorities rss.FLOW_PRIORITY
FLOWS = (
    (0, 0, 0, 0, P.L3Type.IPV4, P.L4Type.TCP),
    (_V, 4, 0, _IP_FIELDS, P.L3Type.IPV4, P.L4Type.TCP),
    (_V, 6, 0, _IP_FIELDS, P.L3Type.IPV6, P.L4Type.TCP),
    (_VP, 4, 17, _ALL_FIELDS, P.L3Type.IPV4, P.L4Type.UDP),
    (_VP, 4, 6, _ALL_FIELDS, P.L3Type.IPV4, P.L4Type.TCP),
    (_VP, 6, 17, _ALL_FIELDS, P.L3Type.IPV6, P.L4Type.UDP),
    (_VP, 6, 6, _ALL_FIELDS, P.L3Type.IPV6, P.L4Type.TCP),
)


class _DrvMem:
    """The driver's DMA memory: a memfd mapped here and in the card at DRV_IOVA; a bump allocator."""

    def __init__(self, hw: Mlx5Hw):
        self.fd = os.memfd_create("mlx5-vdpa", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, DRV_BYTES)
        self.mm = mmap.mmap(self.fd, DRV_BYTES)
        hw.dma_map(DRV_IOVA, DRV_BYTES, self.fd, 0)
        self.next = 0

    def alloc(self, size: int, align: int = PAGE) -> int:
        """An offset (its IOVA is DRV_IOVA + offset), zeroed."""
        off = (self.next + align - 1) & ~(align - 1)
        if off + size > DRV_BYTES:
            raise Mlx5HwError("out of driver DMA memory")
        self.next = off + size
        self.mm[off:off + size] = bytes(size)
        return off

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            pass
        os.close(self.fd)


class _Virtq:
    """One virtq's objects and what the driver keeps of it."""

    def __init__(self, index: int):
        self.index = index
        self.oid: int | None = None
        self.counters: int | None = None
        self.umems: list[tuple[int, int, int]] = []  # (umem id, offset, size)
        self.umem_size = 0
        self.event_mode = F.EVENT_MODE_NO_MSIX
        self.cq: EventCq | None = None
        self.cqn = self.sw_qp = self.fw_qp = 0
        self.cqe_off = self.dbr_off = -1
        self.cq_log = -1
        self.callfd = -1
        self.kickfd = -1
        self.size = 0
        self.enable = False
        self.running = False
        self.notifier = NOTIFIER_DISABLED


class Mlx5VdpaDevice:
    """One probed VF: its hardware, its registry entry, the connection it serves."""

    kind = "net"
    #: clock of the error-recovery policy (tests inject one)
    clock = staticmethod(time.monotonic)

    def __init__(self, bdf: str, lib: Any, devargs: Mlx5VdpaDevargs | None = None, *, vf_dir: str | None = None):
        self.bdf = self.name = bdf
        self.lib = lib
        self.devargs = devargs or Mlx5VdpaDevargs()
        self.hw = Mlx5Hw(bdf, vf_dir or find_vf_dir(bdf))
        self.comp_fd = self.err_fd = self._fd0 = -1
        self.drv_mem: _DrvMem | None = None
        try:
            self.caps = self.hw.query_caps(P.CapType.VDPA_EMULATION)
            self.gcaps = self.hw.query_caps(P.CapType.GENERAL)
            F.check_caps(self.caps)
            self.features = F.mlx5_vdpa_features(self.caps)
            self.protocol_features = F.MLX5_VDPA_PROTOCOL_FEATURES
            self.max_virtqs = int(self.caps["max_num_virtio_queues"])
            self.pd = self.hw.op(P.Op.ALLOC_PD, out=P.PD_OUT)["pd"]
            self.null_mkey = self.hw.op(P.Op.QUERY_SPECIAL_CONTEXTS, out=P.SPECIAL_CONTEXTS_OUT)["null_mkey"]
            self.comp_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.err_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.hw.set_irqs([self.comp_fd, self.err_fd])
            self.drv_mem = _DrvMem(self.hw)
            self._fd0 = os.open(self.hw.bar0_path, os.O_RDWR | os.O_CLOEXEC)  # what QEMU maps: the VAR page
        except BaseException:
            self.close_hw()
            raise
        self.stats = Mlx5VdpaStats(bdf, self.max_virtqs, bool(self.gcaps.get("queue_counters_valid")))
        self.recovery = RecoveryPolicy(bdf, self.max_virtqs, clock=lambda: type(self).clock())
        self.virtqs: dict[int, _Virtq] = {}
        self.vid: int | None = None
        self.configured = False
        self.negotiated_features = 0
        self.nr_vring = 0
        self.mem_regions: list | None = None  # the registered layout's regions (gpa, size, host address)
        self.dma: list[tuple[int, int]] = []
        self.region_mkeys: list[int] = []
        self.gpa_mkey = 0
        self.rqtn: int | None = None
        self.tirs: list[int] = []
        self.flows: list[int] = []
        self.log_mkey = 0
        self.log_map: tuple[int, int] | None = None
        self._log_src = None  # the vhost log (LogRegion) the virtqs mark while log_map is set
        self.relay: EventfdRelay | None = None
        self.err_thread: EventfdRelay | None = None
        self.ev_thread: threading.Thread | None = None
        self.ev_tid = 0  # the event thread's kernel thread id (its /proc/PID/task/TID), once it runs
        self._ev_stop = False
        self._ev_stop_fd = -1
        self._ev_seen = self.hw.event_records(P.EVQ_OFF, 0)[0]
        self._err_seen = self.hw.event_records(P.ERRQ_OFF, 0)[0]
        self._pending: collections.deque = collections.deque()
        self._qp_virtqs: tuple = ()
        self.policy = None
        self.relayed_kicks = 0
        self.interrupts = 0  # callfd writes by the event thread
        #: the last completions' delays, CQE written -> callfd written (ns): the event mode's latency
        self.completion_delays_ns: collections.deque = collections.deque(maxlen=1 << 16)
        self.recoveries = 0
        self.gave_up: list[int] = []
        self._lock = threading.RLock()
        self._db_lock = threading.Lock()
        self._arm_lock = threading.Lock()
        self.mgmtdev: Mlx5MgmtDev | None = None
        self.user_created = True
        self.on_delete: Any = None
        self.vdev: VdpaDevice | None = None
        try:
            self.vdev = register_device(bdf, Mlx5VdpaOps(self), driver="mlx5", device=self)
        except VdpaError:
            self.close_hw()
            raise
        self.err_thread = EventfdRelay(f"mlx5-err-{bdf}", {self.err_fd: "err"}, self._error_events)
        self.err_thread.start()
        log.info("mlx5: probed", bdf=bdf, queue_pairs=self.queue_num, features=hex(self.features),
                 event_mode=self.devargs.event_mode)

    # -- what the management tool reads ---------------------------------------------------
    device_id = 1  # virtio net
    vendor_id = P.VENDOR_ID
    min_vq_size = 1

    @property
    def queue_num(self) -> int:
        return F.get_queue_num(self.caps)

    @property
    def max_vqs(self) -> int:
        return self.max_virtqs

    @property
    def max_vq_size(self) -> int:
        return int(self.caps["max_queue_size"]) or 32768

    @property
    def max_vqp(self) -> int:
        return self.queue_num

    @property
    def device_features(self) -> int:
        return self.features

    mac = bytes(6)  # the VF has no virtio config space: no MAC of its own
    mtu = 1500
    net_status = 1

    @property
    def status(self) -> int:
        """The virtio status as the management tool sees it: ACK|DRIVER|FEATURES_OK|DRIVER_OK while configured."""
        return 0xF if self.configured else 0

    def figures(self) -> dict:
        return {"relayed_kicks": self.relayed_kicks, "interrupts": self.interrupts, "recoveries": self.recoveries,
                "event_thread_blocks": getattr(self.policy, "blocks", 0),
                "completion_delay_us": delay_summary(self.completion_delays_ns),
                "gave_up": list(self.gave_up),
                "host_notifiers": sorted(q for q, v in self.virtqs.items() if v.notifier == NOTIFIER_ENABLED)}

    def vendor_stats(self, qidx: int) -> list[tuple[str, int]]:
        """``vdpa dev vstats``: Linux mlx5_vnet's two counters of virtq ``qidx`` (its counters object's raw values)."""
        from dataplane.vdpa.mgmt.service import VdpaMgmtError

        if not self.gcaps.get("queue_counters_valid"):
            raise VdpaMgmtError(errno.EOPNOTSUPP)
        if not 0 <= qidx < self.max_virtqs:
            raise VdpaMgmtError(errno.EINVAL)
        v = self.virtqs.get(qidx)
        if v is None or v.counters is None:
            raise VdpaMgmtError(errno.EAGAIN)
        raw = self.raw_counters(qidx)
        return [("received_desc", raw["received_desc"]), ("completed_desc", raw["completed_desc"])]

    # -- guest memory (facts §3.3) -----------------------------------------------------------
    def _mem_register(self, vid: int) -> None:
        regions = self.lib.get_mem_table(vid)
        key = [(r["guest_phys_addr"], r["size"], r.get("host_user_addr", r.get("userspace_addr", 0)), r["fd"])
               for r in regions]
        if self.mem_regions is not None and M.same_layout(self.mem_regions, regions) and key == self._mem_key:
            log.debug("mlx5: memory layout unchanged, registration reused", bdf=self.bdf)
            return
        self._mem_dereg()
        max_entries = min(M.DEVX_MAX_KLM_ENTRIES, 1 << int(self.gcaps["log_max_klm_list_size"]))
        layout = M.mkey_layout(regions, max_entries)
        for r in regions:
            self.hw.dma_map(r["guest_phys_addr"], r["size"], r["fd"], r["mmap_offset"])
            self.dma.append((r["guest_phys_addr"], r["size"]))
        by_index = {}
        for reg in layout.regions:
            k = self.hw.op(P.Op.CREATE_MKEY, P.MKEY_IN, P.MKEY_OUT, access_mode=P.AccessMode.MTT, pd=self.pd,
                           start_addr=reg.gpa, len=reg.size, mtt_iova=reg.gpa, local_write=1)["mkey"]
            self.region_mkeys.append(k)
            by_index[reg.index] = k
        klms = b"".join(P.KLM.pack(byte_count=e.size, mkey=self.null_mkey if e.kind == "null" else by_index[e.region],
                                   address=0 if e.kind == "null" else e.gpa) for e in layout.entries)
        mode = P.AccessMode.KLM if layout.mode == M.MODE_KLM else P.AccessMode.KLM_FBS
        self.gpa_mkey = self.hw.op(P.Op.CREATE_MKEY, P.MKEY_IN, P.MKEY_OUT, extra=klms, access_mode=mode,
                                   log_entity_size=layout.log_entity_size, pd=self.pd, start_addr=layout.start,
                                   len=layout.mem_size, klm_num=len(layout.entries), local_write=1)["mkey"]
        self.mem_regions = regions
        self._mem_key = key
        log.info("mlx5: guest memory registered", bdf=self.bdf, regions=len(regions), mode=layout.mode_name,
                 mkey=hex(self.gpa_mkey))

    def _mem_dereg(self) -> None:
        for k in ([self.gpa_mkey] if self.gpa_mkey else []) + self.region_mkeys:
            self._quiet(lambda k=k: self.hw.op(P.Op.DESTROY_MKEY, P.MKEY_REF, mkey=k), "mkey not destroyed")
        self.gpa_mkey = 0
        self.region_mkeys = []
        for iova, size in self.dma:
            self._quiet(lambda i=iova, s=size: self.hw.dma_unmap(i, s), "DMA unmap failed")
        self.dma = []
        self.mem_regions = None

    def _quiet(self, fn, what: str):
        try:
            return fn()
        except Exception as e:
            log.warning(f"mlx5: {what}", bdf=self.bdf, error=str(e))
            return None

    # -- virtqs (facts §3.4) -----------------------------------------------------------------
    def _virtq(self, index: int) -> _Virtq:
        v = self.virtqs.get(index)
        if v is None:
            v = self.virtqs[index] = _Virtq(index)
        return v

    def _umems(self, v: _Virtq, size: int) -> None:
        sizes = [int(self.caps[f"umem_{i}_buffer_param_a"]) * size + int(self.caps[f"umem_{i}_buffer_param_b"])
                 for i in (1, 2, 3)]
        if v.umems and v.umem_size == size:
            for _, off, n in v.umems:  # reused, zeroed again
                self.drv_mem.mm[off:off + n] = bytes(n)
            return
        for uid, _, _ in v.umems:
            self._quiet(lambda u=uid: self.hw.op(P.Op.DESTROY_UMEM, P.UMEM_REF, umem_id=u), "umem not destroyed")
        v.umems = []
        for n in sizes:
            off = self.drv_mem.alloc((n + PAGE - 1) & ~(PAGE - 1))
            uid = self.hw.op(P.Op.CREATE_UMEM, P.UMEM_IN, P.UMEM_OUT, iova=DRV_IOVA + off,
                             size=(n + PAGE - 1) & ~(PAGE - 1))["umem_id"]
            v.umems.append((uid, off, n))
        v.umem_size = size

    def _event_objects(self, v: _Virtq) -> None:
        """The CQ (2^log entries, use_first_only, completion events on COMP_VECTOR), the SW QP on it and the FW
        QP the virtq names, connected and moved to RTS; the CQ starts in HW ownership (wqe_counter 0xFFFF)."""
        cq = EventCq(v.size, 0)
        log_n = max(1, cq.log_desc_n)
        if v.cq_log != log_n:
            v.cqe_off = self.drv_mem.alloc((1 << log_n) * P.CQE_SIZE)
            v.dbr_off = self.drv_mem.alloc(64, 64)
            v.cq_log = log_n
        mm = self.drv_mem.mm
        mm[v.cqe_off:v.cqe_off + (1 << log_n) * P.CQE_SIZE] = bytes((1 << log_n) * P.CQE_SIZE)
        mm[v.dbr_off:v.dbr_off + 8] = bytes(8)
        struct.pack_into(">H", mm, v.cqe_off + P.CQE_WQE_COUNTER, 0xFFFF)
        mm[v.cqe_off + P.CQE_OP_OWN] = 1
        v.cqn = self.hw.op(P.Op.CREATE_CQ, P.CQ_IN, P.CQ_OUT, log_cq_size=log_n, use_first_only=1,
                           vector=COMP_VECTOR, cqe_iova=DRV_IOVA + v.cqe_off, dbr_iova=DRV_IOVA + v.dbr_off,
                           cookie=v.index)["cqn"]
        cq.cq_id = v.cqn
        v.sw_qp = self.hw.op(P.Op.CREATE_QP, P.QP_IN, P.QP_OUT, cqn=v.cqn, log_rq_size=log_n)["qpn"]
        v.fw_qp = self.hw.op(P.Op.CREATE_QP, P.QP_IN, P.QP_OUT, cqn=0)["qpn"]
        for a, b in ((v.fw_qp, v.sw_qp), (v.sw_qp, v.fw_qp)):
            self.hw.op(P.Op.RST2INIT_QP, P.QP_MODIFY, qpn=a)
            self.hw.op(P.Op.INIT2RTR_QP, P.QP_MODIFY, qpn=a, remote_qpn=b)
            self.hw.op(P.Op.RTR2RTS_QP, P.QP_MODIFY, qpn=a)
        v.cq = cq

    def _event_objects_release(self, v: _Virtq) -> None:
        for op, ref, key, val in ((P.Op.DESTROY_QP, P.QP_REF, "qpn", v.fw_qp), (P.Op.DESTROY_QP, P.QP_REF, "qpn", v.sw_qp),
                                  (P.Op.DESTROY_CQ, P.CQ_REF, "cqn", v.cqn)):
            if val:
                self._quiet(lambda o=op, r=ref, k=key, x=val: self.hw.op(o, r, **{k: x}), "event object not destroyed")
        v.fw_qp = v.sw_qp = v.cqn = 0
        v.cq = None

    def _virtq_setup(self, vid: int, index: int) -> None:
        vq = self.lib.get_vhost_vring(vid, index)
        v = self._virtq(index)
        if v.oid is not None:
            self._virtq_release(v)
        for name in ("desc_gpa", "avail_gpa", "used_gpa"):
            if not getattr(vq, name):
                raise Mlx5HwError(f"Failed to get GPA for {name[:-4]} address of virtq {index}.")
        v.size, v.callfd, v.kickfd = vq.size, vq.call_fd, vq.kick_fd
        self._umems(v, vq.size)
        if v.counters is None and self.gcaps.get("queue_counters_valid"):
            v.counters = self.hw.obj(P.Op.CREATE_GENERAL_OBJECT, P.ObjType.VIRTIO_Q_COUNTERS, out=P.OBJ_OUT)["obj_id"]
            self.stats.counters_created(index)
        v.event_mode = F.virtq_event_mode(vq.call_fd, self.caps)
        if v.event_mode == F.EVENT_MODE_QP:
            self._event_objects(v)
        try:
            avail, used = self.lib.get_vring_base(vid, index)
        except Exception as e:
            log.warning("mlx5: vring base not read, starting from 0", bdf=self.bdf, virtq=index, error=str(e))
            avail = used = 0
        attrs = dict(queue_index=index, state=P.QState.INIT, q_size=vq.size, pd=self.pd, mkey=self.gpa_mkey,
                     event_mode=v.event_mode, qp_id=v.fw_qp if v.event_mode == F.EVENT_MODE_QP else 0,
                     desc_addr=vq.desc_gpa, available_addr=vq.avail_gpa, used_addr=vq.used_gpa,
                     hw_available_index=avail, hw_used_index=used, counters_obj_id=v.counters or 0,
                     **F.virtq_feature_attrs(self.negotiated_features), **self.devargs.virtq_moderation())
        for i, (uid, off, n) in enumerate(v.umems, 1):
            attrs[f"umem_{i}_id"], attrs[f"umem_{i}_size"] = uid, n
        if self.log_map is not None:
            attrs.update(self._bitmap_attrs(), dirty_bitmap_dump_enable=1)
        try:
            v.oid = self.hw.obj(P.Op.CREATE_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, out=P.OBJ_OUT, **attrs)["obj_id"]
            # subscribed before RDY (DPDK does it after): a chain that faults at once still gives its event
            cookie = self.recovery.subscribe(index)
            self.hw.op(P.Op.SUBSCRIBE_EVENT, P.SUBSCRIBE_IN, obj_type=P.ObjType.VIRTIO_NET_Q,
                       event_type=P.EventType.OBJECT_CHANGE, obj_id=v.oid, vector=ERR_VECTOR, cookie=cookie)
            self.hw.obj(P.Op.MODIFY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, v.oid,
                        modify_field_select=P.Modify.STATE, state=P.QState.RDY)
        except Exception:
            self._virtq_release(v)
            raise
        v.running = True
        if v.cq is not None:
            # known to the event thread before its CQ is armed: the virtq's first event can come at once (a chain
            # pending, a frame steered to it), while this set-up still has the steering and the relay to do; an
            # event the thread cannot match to a virtq is dropped, and the CQ, disarmed on the card by that event
            # but armed for the driver, never interrupts again
            self._qp_virtqs = tuple(x for x in self.virtqs.values() if x.cq is not None)
            self._arm(v)
        self.hw.doorbell(index)
        if v.callfd >= 0:
            os.eventfd_write(v.callfd, 1)  # the front-end looks at buffers completed before
        log.debug("mlx5: virtq ready", bdf=self.bdf, virtq=index, obj=v.oid, event_mode=v.event_mode,
                  avail=avail, used=used)

    def _virtq_stop(self, vid: int, v: _Virtq) -> None:
        """SUSPEND (when running), QUERY, set_vring_base with the card's indices."""
        if v.oid is None:
            return
        if v.running:
            self._quiet(lambda: self.hw.obj(P.Op.MODIFY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, v.oid,
                                            modify_field_select=P.Modify.STATE, state=P.QState.SUSPEND),
                        "virtq not suspended")
            v.running = False
        q = self._quiet(lambda: self.hw.obj(P.Op.QUERY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, v.oid, out=P.VIRTQ),
                        "virtq not queried")
        if q is None:
            return
        if q["state"] == P.QState.ERROR:
            log.warning(f"vid {vid} vring {v.index} hw error={q['error_type']}", bdf=self.bdf)
        self._quiet(lambda: self.lib.set_vring_base(vid, v.index, q["hw_available_index"], q["hw_used_index"]),
                    "vring base not saved")

    def _virtq_release(self, v: _Virtq) -> None:
        if v.oid is not None and self.rqtn is not None and v.index in RSS.rx_vrings(self.nr_vring):
            self._steer_unset()  # an RX virtq in the RQT is not destroyed; _after_virtq_change sets it again
        if v.oid is not None:
            self._quiet(lambda: self.hw.obj(P.Op.DESTROY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, v.oid),
                        "virtq not destroyed")
        v.oid = None
        v.running = False
        self._event_objects_release(v)

    def raw_counters(self, index: int) -> dict:
        v = self.virtqs.get(index)
        if v is None or v.counters is None:
            return dict.fromkeys(P.COUNTER_NAMES, 0)
        f = self.hw.obj(P.Op.QUERY_GENERAL_OBJECT, P.ObjType.VIRTIO_Q_COUNTERS, v.counters, out=P.COUNTERS)
        return {k: f[k] for k in P.COUNTER_NAMES}

    # -- RSS steering (facts §3.7) ---------------------------------------------------------------
    def _steer_update(self) -> None:
        if self.vid is not None:
            self.nr_vring = self.lib.get_vring_num(self.vid)  # vrings come later with a front-end's queue pairs
        rx = [q for q in RSS.rx_vrings(self.nr_vring) if q in self.virtqs and self.virtqs[q].running]
        if not rx:
            self._steer_unset()
            return
        table = [self.virtqs[q].oid for q in RSS.rqt_table(rx, int(self.gcaps["log_max_rqt_size"]))]
        entries = b"".join(P.RQ_ENTRY.pack(rq_num=o) for o in table)
        if self.rqtn is not None:
            log.info("mlx5: RSS table modified", bdf=self.bdf, rx=rx)
            self.hw.op(P.Op.MODIFY_RQT, P.RQT_MODIFY, extra=entries, rqtn=self.rqtn, rq_type=P.RqType.VIRTQ,
                       rqt_max_size=len(table), rqt_actual_size=len(table))
            return
        self.rqtn = self.hw.op(P.Op.CREATE_RQT, P.RQT_IN, P.RQT_OUT, extra=entries, rq_type=P.RqType.VIRTQ,
                               rqt_max_size=len(table), rqt_actual_size=len(table))["rqtn"]
        key = P.toeplitz_key_fields(RSS.MLX5_VDPA_RSS_KEY)
        for i, (crit, ipv, proto, fields, l3, l4) in enumerate(FLOWS):
            tirn = self.hw.op(P.Op.CREATE_TIR, P.TIR_IN, P.TIR_OUT, disp_type=P.TirDisp.INDIRECT,
                              rx_hash_fn=P.HashFn.TOEPLITZ, rx_hash_symmetric=1, l3_prot_type=l3, l4_prot_type=l4,
                              selected_fields=fields, indirect_table=self.rqtn, **key)["tirn"]
            self.tirs.append(tirn)
            self.hw.op(P.Op.SET_FLOW_TABLE_ENTRY, P.FLOW_IN, table_id=P.FLOW_TABLE_NIC_RX, flow_index=i,
                       priority=RSS.FLOW_PRIORITY[i], match_criteria=crit, ip_version=ipv, ip_protocol=proto,
                       tirn=tirn)
            self.flows.append(i)
        log.info("mlx5: RSS steering set", bdf=self.bdf, rx=rx, rqt_size=len(table))

    def _steer_unset(self) -> None:
        for i in self.flows:
            self._quiet(lambda i=i: self.hw.op(P.Op.DELETE_FLOW_TABLE_ENTRY, P.FLOW_REF,
                                               table_id=P.FLOW_TABLE_NIC_RX, flow_index=i), "flow not deleted")
        for t in self.tirs:
            self._quiet(lambda t=t: self.hw.op(P.Op.DESTROY_TIR, P.TIR_REF, tirn=t), "TIR not destroyed")
        if self.rqtn is not None:
            self._quiet(lambda: self.hw.op(P.Op.DESTROY_RQT, P.RQT_REF, rqtn=self.rqtn), "RQT not destroyed")
        self.flows, self.tirs, self.rqtn = [], [], None

    # -- kick relay (facts §3.5) ------------------------------------------------------------------
    def _relay_restart(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        fds = {v.kickfd: v.index for v in self.virtqs.values() if v.running and v.kickfd >= 0}
        if fds:
            self.relay = EventfdRelay(f"mlx5-kick-{self.vid}", fds, self._kick)
            self.relay.start()

    def _kick(self, index: int) -> None:
        with self._db_lock:
            self.hw.doorbell(index)
            self.relayed_kicks += 1
        v = self.virtqs.get(index)
        if v is not None and v.notifier == NOTIFIER_DISABLED and self.vid is not None:
            v.notifier = NOTIFIER_ERR
            try:
                futures = self.lib.host_notifier_ctrl(self.vid, index, True)
            except Exception as e:
                log.info(f"Failed to enable host notifier for virtq {index}.", bdf=self.bdf, reason=str(e))
                return

            def done(f, v=v):
                v.notifier = NOTIFIER_ERR if f.exception() is not None else NOTIFIER_ENABLED

            for f in futures:
                f.add_done_callback(done)

    # -- the event thread (facts §3.6) -------------------------------------------------------------
    def _complete(self, v: _Virtq) -> int:
        cq = v.cq
        if cq is None:
            return 0
        mm = self.drv_mem.mm
        with self._arm_lock:
            # one 16-bit load (struct reads byte by byte: a count the card is writing could be read torn)
            raw = ctypes.c_uint16.from_buffer(mm, v.cqe_off + P.CQE_WQE_COUNTER).value
            wc = int.from_bytes(raw.to_bytes(2, "little"), "big")
            comp = cq.poll(wc, mm[v.cqe_off + P.CQE_OP_OWN] >> 4)
        if comp:
            struct.pack_into(">I", mm, v.dbr_off + P.DBR_CI, cq.cq_dbr)
            if v.callfd >= 0:
                try:
                    os.eventfd_write(v.callfd, 1)
                    self.interrupts += 1
                except OSError:
                    pass
                # what the event mode costs a completion: from the CQE's timestamp (the card's clock is the host's
                # CLOCK_MONOTONIC) to the guest's interrupt
                ts = struct.unpack_from(">Q", mm, v.cqe_off + P.CQE_TIMESTAMP)[0]
                if ts:
                    self.completion_delays_ns.append(time.monotonic_ns() - ts)
        return comp

    def _arm(self, v: _Virtq) -> None:
        """Arm ``v``'s CQ, unless it is armed already (no completion since its last arm): a second arm would carry
        the next sn, one ahead of the card's, and the card would ignore the CQ's arms until the sn came round."""
        with self._arm_lock:  # the set-up of a virtq (vhost thread) and the event thread may both arm it
            cq = v.cq
            if cq is None or cq.armed:
                return
            uar, word = cq.arm()
            # one 32-bit store: the card must not read a new consumer index with the old sn (or the reverse)
            ctypes.c_uint32.from_buffer(self.drv_mem.mm, v.dbr_off + P.DBR_ARM).value = int.from_bytes(
                word.to_bytes(4, "big"), "little")
        self.hw.cq_doorbell(uar)

    @staticmethod
    def _disarmed(v: _Virtq) -> None:
        """A completion event for ``v``'s CQ came: the card disarmed it (its arm sn moved on), so the next arm is due
        whatever the poll finds."""
        if v.cq is not None:
            v.cq.armed = False

    def _wait(self):
        """Block until a completion event names one of our virtqs (that virtq), or until stop (None).

        Like devx_get_event it does not time out: the thread sleeps until the card has something (the
        epoll timeout only bounds how long a stop flag without its eventfd write would go unseen)."""
        ep = self._ep
        while True:
            while self._pending:
                v, cq = self._pending.popleft()
                if v.cq is cq:  # not an event of a CQ a new set-up of the virtq replaced (its new CQ stays armed)
                    return v
            if self._ev_stop:
                return None
            for fd, _ in ep.poll(5.0):
                if fd == self._ev_stop_fd:
                    return None
                try:
                    os.eventfd_read(fd)
                except (BlockingIOError, InterruptedError):
                    pass
            self._ev_seen, recs = self.hw.event_records(P.EVQ_OFF, self._ev_seen)
            # every virtq with a CQ, read now: one being set up joins as soon as its CQ exists (before it is armed)
            by_cqn = {v.cqn: v for v in list(self.virtqs.values()) if v.cq is not None}
            for cookie, cqn in recs:
                v = by_cqn.get(cqn)
                if v is not None and v.index == cookie:
                    self._pending.append((v, v.cq))

    def _event_start(self) -> None:
        self._qp_virtqs = tuple(v for v in self.virtqs.values() if v.cq is not None)
        if self.ev_thread is not None:
            return
        d = self.devargs
        self.policy = make_policy(d.event_mode, d.event_us, d.no_traffic_max)
        self._ev_stop = False
        self._ev_stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ep = select.epoll()
        self._ep.register(self._ev_stop_fd, select.EPOLLIN)
        self._ep.register(self.comp_fd, select.EPOLLIN)
        self._pending.clear()
        hooks = EventHooks(
            poll_all=lambda: max((self._complete(v) for v in self._qp_virtqs), default=0),
            # only the CQs not armed yet (a completion disarms one): arming one twice before its event would put
            # its arm sequence number ahead of the card's, which then ignores the arm (no event, a lost interrupt)
            arm_all=lambda: [self._arm(v) for v in self._qp_virtqs if v.cq is not None and not v.cq.armed],
            wait=self._wait, complete=self._complete, arm=self._arm, disarmed=self._disarmed,
            sleep_us=lambda us: time.sleep(us / 1e6), yield_cpu=lambda: time.sleep(0),
            stop=lambda: self._ev_stop)
        policy = self.policy

        core = d.event_core

        name = f"vDPA-mlx5-{self.vid}"

        def run():
            try:
                # DPDK names it (what top -H shows) and makes it real-time (no timer slack): a timer mode's
                # sleeps are then event_us, not event_us plus the kernel's 50 us default slack
                set_thread_name(name)
                set_timer_slack_ns(1)
                self.ev_tid = threading.get_native_id()
                if core >= 0:
                    os.sched_setaffinity(0, {core})
                log.info("mlx5: event thread", bdf=self.bdf, vid=self.vid, tid=self.ev_tid, event_mode=d.event_mode,
                         event_us=d.event_us, no_traffic_time=d.no_traffic_max)
                run_event_thread(policy, hooks)
            except Exception:
                log.exception("mlx5: event thread failed", bdf=self.bdf)

        self.ev_thread = threading.Thread(target=run, name=name, daemon=True)
        self.ev_thread.start()

    def _event_stop(self) -> None:
        t = self.ev_thread
        if t is None:
            return
        self._ev_stop = True
        os.eventfd_write(self._ev_stop_fd, 1)
        if t is not threading.current_thread():
            t.join(2.0)
        self.ev_thread = None
        self._ep.close()
        os.close(self._ev_stop_fd)
        self._ev_stop_fd = -1
        for v in self._qp_virtqs:  # drain: complete once, counter back to 0xFFFF, qp_pi 0
            if v.cq is not None:
                self._complete(v)
                struct.pack_into(">H", self.drv_mem.mm, v.cqe_off + P.CQE_WQE_COUNTER, 0xFFFF)
                v.cq.qp_pi = 0
        self._qp_virtqs = ()

    # -- error events (facts §3.10) ------------------------------------------------------------------
    def _error_events(self, _key) -> None:
        self._err_seen, recs = self.hw.event_records(P.ERRQ_OFF, self._err_seen)
        for cookie, info in recs:
            decision = self.recovery.on_error(cookie)
            index = cookie & 0xFFFFFFFF
            log.info("mlx5: virtq error event", bdf=self.bdf, virtq=index, error_type=info >> 48 & 0xFF,
                     decision=decision)
            if decision == IGNORE:
                continue
            with self._lock:
                v = self.virtqs.get(index)
                if not self.configured or v is None or self.vid is None:
                    continue
                self._virtq_stop(self.vid, v)
                self._virtq_release(v)
                if decision == GIVE_UP:
                    self.gave_up.append(index)
                    self._after_virtq_change()
                    continue
                try:
                    self._virtq_setup(self.vid, index)
                    self.recoveries += 1
                except Exception as e:
                    log.error(f"Failed to recover virtq {index}.", bdf=self.bdf, error=str(e))
                self._after_virtq_change()

    def _after_virtq_change(self) -> None:
        self._steer_update()
        self._relay_restart()
        self._qp_virtqs = tuple(v for v in self.virtqs.values() if v.cq is not None)

    # -- the hardware dirty bitmap (facts §3.8) -----------------------------------------------------------
    def _bitmap_attrs(self) -> dict:
        iova, size = self.log_map
        return dict(dirty_bitmap_addr=iova + self._log_delta, dirty_bitmap_mkey=self.log_mkey,
                    dirty_bitmap_size=self._log_size)

    def _log_start(self, vid: int) -> None:
        """LOG_ALL: the vhost log DMA-mapped, a direct mkey over it, then DIRTY_BITMAP_PARAMS and
        DIRTY_BITMAP_DUMP_ENABLE on every running virtq (DPDK's dirty_bitmap_set and logging_enable(1)).
        Nothing to do if the virtqs already mark that log; a new log (QEMU's SET_LOG_BASE for another
        migration) replaces the old one, as DPDK's set_features does each time."""
        dl = self.lib.get_device(vid).dirty_log
        if dl is None:
            log.error("mlx5: LOG_ALL without a log (SET_LOG_BASE): no dirty bitmap", bdf=self.bdf, vid=vid)
            return
        if self.log_map is not None:
            if dl is self._log_src:
                return
            self._log_off()
        page = dl.mmap_offset & ~(PAGE - 1)
        self._log_delta = dl.mmap_offset - page
        self._log_size = dl.mmap_size
        size = (self._log_delta + dl.mmap_size + PAGE - 1) & ~(PAGE - 1)
        self.hw.dma_map(LOG_IOVA, size, dl.fd, page)
        self.log_map = (LOG_IOVA, size)
        self._log_src = dl
        self.log_mkey = self.hw.op(P.Op.CREATE_MKEY, P.MKEY_IN, P.MKEY_OUT, access_mode=P.AccessMode.MTT, pd=self.pd,
                                   start_addr=LOG_IOVA, len=size, mtt_iova=LOG_IOVA, local_write=1)["mkey"]
        running = [v for v in self.virtqs.values() if v.running]
        for v in running:
            self.hw.obj(P.Op.MODIFY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, v.oid,
                        modify_field_select=P.Modify.DIRTY_BITMAP_PARAMS, **self._bitmap_attrs())
        for v in running:
            self.hw.obj(P.Op.MODIFY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, v.oid,
                        modify_field_select=P.Modify.DIRTY_BITMAP_DUMP_ENABLE, dirty_bitmap_dump_enable=1)
        log.info("mlx5: hardware dirty bitmap on", bdf=self.bdf, vid=vid, virtqs=[v.index for v in running],
                 log_size=dl.mmap_size)

    def _log_off(self) -> None:
        """LOG_ALL cleared while running (QEMU cancelled the migration and is about to drop its log), or a new
        log coming: the running virtqs stop marking and forget the bitmap, then the log goes (_log_stop).
        (DPDK does nothing when LOG_ALL is cleared: its virtqs keep marking the old log.)"""
        zero = dict(dirty_bitmap_addr=0, dirty_bitmap_mkey=0, dirty_bitmap_size=0, dirty_bitmap_dump_enable=0)
        for v in self.virtqs.values():
            if v.running:
                self._quiet(lambda v=v: self.hw.obj(
                    P.Op.MODIFY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, v.oid,
                    modify_field_select=P.Modify.DIRTY_BITMAP_DUMP_ENABLE | P.Modify.DIRTY_BITMAP_PARAMS, **zero),
                    "virtq dirty bitmap not turned off")
        self._log_stop()

    def _log_stop(self) -> None:
        if self.log_map is None:
            return
        if self.log_mkey:
            self._quiet(lambda: self.hw.op(P.Op.DESTROY_MKEY, P.MKEY_REF, mkey=self.log_mkey), "log mkey not destroyed")
        self.log_mkey = 0
        iova, size = self.log_map
        self.log_map = None
        self._log_src = None
        self._quiet(lambda: self.hw.dma_unmap(iova, size), "log DMA unmap failed")
        log.info("mlx5: hardware dirty bitmap off", bdf=self.bdf, vid=self.vid)

    # -- the ops' work ----------------------------------------------------------------------------------
    def conf(self, vid: int) -> None:
        with self._lock:
            if self.configured:
                self._close(self.vid)
            self.vid = vid
            self.negotiated_features = features = self.lib.get_negotiated_features(vid)
            F.validate_negotiated(features, self.caps, vid)
            self.nr_vring = n = self.lib.get_vring_num(vid)
            if n > self.max_virtqs:
                raise VdpaError(f"Do not support more than {self.max_virtqs} virtqs({n}).", errno.E2BIG)
            try:
                self._mem_register(vid)
                if features & bit(VF.VHOST_F_LOG_ALL):
                    self._log_start(vid)
                for q in range(n):
                    vq = self.lib.get_vhost_vring(vid, q)
                    v = self._virtq(q)
                    v.enable = v.enable or vq.enabled
                    if vq.ready and v.enable:
                        self._virtq_setup(vid, q)
                self._steer_update()
                self.configured = True
                self._after_virtq_change()
                self._event_start()
            except Exception:
                self._close(vid, save=False)
                raise
            log.info("mlx5: configured", bdf=self.bdf, vid=vid,
                     virtqs=sorted(q for q, v in self.virtqs.items() if v.running))

    def _close(self, vid: int | None, save: bool = True) -> None:
        self._event_stop()
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        for v in sorted(self.virtqs.values(), key=lambda v: v.index):
            if save and vid is not None:
                self._virtq_stop(vid, v)
            self.recovery.disable(v.index)
        if save and vid is not None and self.negotiated_features & bit(VF.VHOST_F_LOG_ALL):
            for v in self.virtqs.values():
                if v.oid is not None:
                    self._quiet(lambda v=v: self.lib.log_used_vring(vid, v.index, 0, v.size * 8 + 6),
                                "used ring not logged")
        self._steer_unset()
        for v in self.virtqs.values():
            self._virtq_release(v)
            v.notifier = NOTIFIER_DISABLED
        self._log_stop()
        self.configured = False

    def close_dev(self, vid: int) -> None:
        with self._lock:
            if self.configured:
                self._close(vid)
                log.info("mlx5: closed", bdf=self.bdf, vid=vid)

    def cleanup(self, vid: int) -> None:
        """dev_cleanup: the memory registration goes (the connection's memory is about to be unmapped)."""
        with self._lock:
            if self.configured:
                self._close(vid, save=False)
            self._mem_dereg()
            for v in self.virtqs.values():
                v.enable = False

    def vring_state(self, vid: int, vring: int, state: int) -> int:
        if vring >= self.max_virtqs:
            log.error(f"Too big vring id: {vring}.", bdf=self.bdf)
            return -errno.E2BIG
        with self._lock:
            v = self._virtq(vring)
            if not self.configured or self.vid != vid:
                v.enable = bool(state)
                return 0
            try:
                if state:
                    vq = self.lib.get_vhost_vring(vid, vring)
                    if v.enable and v.running and (v.size, v.kickfd, v.callfd) == (vq.size, vq.kick_fd, vq.call_fd):
                        return 0
                    v.enable = True
                    if v.running:
                        self._virtq_stop(vid, v)
                    self._virtq_setup(vid, vring)
                else:
                    v.enable = False
                    self.recovery.disable(vring)
                    self._virtq_stop(vid, v)
                    self._virtq_release(v)
                self._after_virtq_change()
            except Exception as e:
                log.error("mlx5: set_vring_state failed", bdf=self.bdf, vring=vring, state=state, error=str(e))
                return -1
            return 0

    def features_changed(self, vid: int) -> None:
        with self._lock:
            self.negotiated_features = features = self.lib.get_negotiated_features(vid)
            if self.configured and features & bit(VF.VHOST_F_LOG_ALL):
                self._log_start(vid)
            elif self.configured and self.log_map is not None:
                self._log_off()

    # -- lifetime -------------------------------------------------------------------------------------------
    def close_hw(self) -> None:
        if self._fd0 >= 0:
            os.close(self._fd0)
            self._fd0 = -1
        self.hw.close()  # the card resets the function: every object goes
        if self.drv_mem is not None:
            self.drv_mem.close()
            self.drv_mem = None
        for name in ("comp_fd", "err_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def delete(self) -> None:
        if self.on_delete is not None:
            hook, self.on_delete = self.on_delete, None
            hook(self)
        with self._lock:
            if self.configured:
                self._close(self.vid, save=False)
        if self.err_thread is not None:
            self.err_thread.stop()
            self.err_thread = None
        if self.vdev is not None:
            try:
                unregister_device(self.vdev)
            except VdpaError:
                pass
            self.vdev = None
        self.close_hw()

    def __repr__(self) -> str:
        return f"Mlx5VdpaDevice({self.bdf!r})"


class Mlx5VdpaOps(CardDeviceOps):
    """DPDK's mlx5 vDPA ops for one :class:`Mlx5VdpaDevice`."""

    driver = "mlx5"
    log = log

    def get_queue_num(self, vdev: VdpaDevice) -> int:
        return self.dev.queue_num

    def dev_cleanup(self, vid: int) -> int:
        self.dev.cleanup(vid)
        return 0

    def get_notify_area(self, vid: int, qid: int) -> tuple[int, int]:
        """The VAR page, the same for every queue."""
        return self.dev.hw.var_off, self.dev.hw.var_size

    def get_stats_names(self, vdev: VdpaDevice) -> list[str]:
        return self.dev.stats.names()

    def get_stats(self, vdev: VdpaDevice, qid: int) -> list[tuple[int, int]]:
        self.dev.stats._check(qid)
        return self.dev.stats.get(qid, self.dev.raw_counters(qid))

    def reset_stats(self, vdev: VdpaDevice, qid: int) -> int:
        self.dev.stats._check(qid)
        return self.dev.stats.reset(qid, self.dev.raw_counters(qid))


class Mlx5MgmtDev:
    """``pci/<bdf>``: the management device of one VF (its vDPA device is made by the probe)."""

    bus = "pci"
    supported_classes = 1 << 1  # virtio net
    config_attr_mask = 0

    def __init__(self, dev: Mlx5VdpaDevice):
        self.name = dev.bdf
        self.dev = dev

    @property
    def max_supported_vqs(self) -> int:
        return self.dev.max_virtqs

    @property
    def supported_features(self) -> int:
        return self.dev.features

    def dev_add(self, name: str, attrs: dict):
        from dataplane.vdpa.mgmt.service import VdpaMgmtError

        raise VdpaMgmtError(errno.EOPNOTSUPP,
                            f"{self.name}: the VF's device is made by the probe (-a {self.name},class=vdpa)")


def probe(bdf: str, args, lib: Any, vf_dir: str | None = None) -> Mlx5VdpaDevice:
    """``-a BDF,class=vdpa[,key=value...]``: the probed device (NotOurDevice / DevargsError / Mlx5HwError /
    VdpaError ENOTSUP for a card without the vDPA caps)."""
    devargs = parse_devargs(args)
    dev = Mlx5VdpaDevice(bdf, lib, devargs, vf_dir=vf_dir)
    dev.mgmtdev = Mlx5MgmtDev(dev)
    return dev


def _default_caps() -> dict:
    """The emulated card's vDPA caps (docs/nic.md): split and packed, VERSION_1, TSO over IPv4 and IPv6,
    TX and RX checksums."""
    return {"valid": 1, "virtio_queue_type": 0b11, "virtio_version_1_0": 1, "max_num_virtio_queues": 32,
            "event_mode": 0b111, "tso_ipv4": 1, "tso_ipv6": 1, "tx_csum": 1, "rx_csum": 1}


def _register_driver() -> None:
    from dataplane.vdpa.features_table import VdpaDriverInfo, register_driver

    register_driver(VdpaDriverInfo(
        name="mlx5",
        get_features=lambda: F.mlx5_vdpa_features(_default_caps()),
        get_protocol_features=lambda: F.MLX5_VDPA_PROTOCOL_FEATURES,
        ops_class=Mlx5VdpaOps,
        dev_type=VDPA_DEVICE_TYPE_NET,
        kdrv=frozenset({"other"}),  # DPDK: ib_uverbs & mlx5_core & mlx5_ib, not vfio-pci
        arch=frozenset({"x86-64"}),
    ))


_register_driver()
