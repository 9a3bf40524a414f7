"""A test driver for the mlx5 card's command mailbox (:mod:`dataplane.nic.mlx5.mailbox`).

It plays the driver's side of the slot, from its own mapping of the BAR file: write the
input and IN_LEN / OUT_LEN, bump CMD_SEQ, wait until CMD_ACK equals it, read the output.
With ``poll`` (the card's :meth:`CommandSlot.poll`, in-process tests) it calls the card
itself after ringing; without, it spins until the card (another thread or process)
answers.  Replies are ``(status, syndrome, fields)``; the helpers build the commands from
the card's layouts::

    fw = Mlx5Cmd(bar_path, poll=slot.poll)
    pd = fw.alloc_pd().fields["pd"]
    key = fw.create_mkey(AccessMode.MTT, pd=pd, start_addr=gpa, len=size, mtt_iova=gpa).fields["mkey"]

:class:`Mlx5Driver` drives a running card's VF (``dataplane-nic start mlx5``): the control
channel (:class:`~dataplane.testing.nic_driver.VfioClient`), the command slot in BAR0, the VAR
doorbell, and the objects a vDPA driver makes (facts §3.3-§3.4): a PD, a direct mkey per guest
region under one KLM mkey over guest memory (GPA addressing), umems in memory of its own, a
counters object and a VIRTIO_NET_Q per :class:`~dataplane.testing.nic_driver.NicQueue`::

    drv = Mlx5Driver(vf_dir, mem)            # DMA map, PD, mkeys, umem memory
    tx = NicQueue(drv, mem, 1, packed=True)
    oid = drv.create_virtq(tx)               # INIT, then drv.set_state(oid, QState.RDY)
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

from dataplane.hwspec.mlx5_prm import (
    FLOW_IN,
    FLOW_REF,
    RQ_ENTRY,
    RQT_IN,
    RQT_MODIFY,
    RQT_OUT,
    RQT_REF,
    TIR_IN,
    TIR_OUT,
    TIR_REF,
    RqType,
    TirDisp,
    COUNTER_NAMES,
    COUNTERS,
    GENERAL_CAPS,
    IN_HDR,
    KLM,
    MKEY_IN,
    MKEY_OUT,
    MKEY_REF,
    OBJ_IN_HDR,
    OBJ_OUT,
    OUT_HDR,
    PD_OUT,
    PD_REF,
    SPECIAL_CONTEXTS_OUT,
    UMEM_IN,
    UMEM_OUT,
    UMEM_REF,
    VDPA_CAPS,
    VIRTQ,
    CapType,
    ObjType,
    Op,
    AccessMode,
    EventMode,
    Modify,
    QState,
    QType,
    Status,
    cap_op_mod,
)
from dataplane.nic.mlx5.mailbox import (
    IN_OFF,
    OUT_MAX,
    OUT_OFF,
    R_CMD_ACK,
    R_CMD_SEQ,
    R_IN_LEN,
    R_OUT_LEN,
    R_OUT_WRITTEN,
)
from dataplane.nic.pci import BarFile
from dataplane.testing.nic_driver import NicError, NicQueue, VfioClient
from dataplane.testing.vhost_frontend import GuestMemoryLayout

__all__ = ["Mlx5Cmd", "Reply", "Mlx5Driver", "Mlx5Vf", "UMEM_IOVA"]

#: where the driver DMA-maps the memory its umems live in (apart from guest memory)
UMEM_IOVA = 0x40000000
UMEM_BYTES = 4 << 20
PAGE = 4096


class Reply(NamedTuple):
    status: int
    syndrome: int
    fields: dict
    raw: bytes


class Mlx5Cmd:
    def __init__(self, bar: str | BarFile, *, poll: Callable[[], bool] | None = None, base: int = 0,
                 timeout: float = 5.0):
        self.bar = BarFile(bar) if isinstance(bar, str) else bar
        self.base = base
        self.poll = poll
        self.timeout = timeout

    # -- the slot ----------------------------------------------------------------------

    def raw(self, data: bytes, *, out_len: int = OUT_MAX, in_len: int | None = None) -> bytes:
        """Ring the card with ``data`` (IN_LEN = ``in_len`` or its length); the output bytes."""
        b, bar = self.base, self.bar
        seq = bar.r32(b + R_CMD_SEQ)
        if seq != bar.r32(b + R_CMD_ACK):
            raise RuntimeError("the slot is the card's (a command is pending)")
        bar.u8[b + IN_OFF : b + IN_OFF + len(data)] = memoryview(data)
        bar.w32(b + R_IN_LEN, len(data) if in_len is None else in_len)
        bar.w32(b + R_OUT_LEN, out_len)
        seq = (seq + 1) & 0xFFFFFFFF
        bar.w32(b + R_CMD_SEQ, seq)
        if self.poll is not None:
            self.poll()
        end = time.monotonic() + self.timeout
        while bar.r32(b + R_CMD_ACK) != seq:
            if time.monotonic() > end:
                raise TimeoutError("the card did not answer the command")
            time.sleep(0.0001)
        n = bar.r32(b + R_OUT_WRITTEN)
        return bytes(bar.u8[b + OUT_OFF : b + OUT_OFF + n])

    def cmd(self, data: bytes, out_layout=None, **kw) -> Reply:
        out = self.raw(data, **kw)
        h = OUT_HDR.unpack(out)
        fields = out_layout.unpack(out, OUT_HDR.size) if out_layout is not None and h["status"] == 0 else {}
        return Reply(h["status"], h["syndrome"], fields, out)

    # -- commands ----------------------------------------------------------------------

    def query_caps(self, cap_type: int = CapType.VDPA_EMULATION) -> Reply:
        lay = VDPA_CAPS if cap_type == CapType.VDPA_EMULATION else GENERAL_CAPS
        return self.cmd(IN_HDR.pack(opcode=Op.QUERY_HCA_CAP, op_mod=cap_op_mod(cap_type)), lay)

    def null_mkey(self) -> int:
        r = self.cmd(IN_HDR.pack(opcode=Op.QUERY_SPECIAL_CONTEXTS), SPECIAL_CONTEXTS_OUT)
        return r.fields["null_mkey"]

    def alloc_pd(self) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.ALLOC_PD), PD_OUT)

    def dealloc_pd(self, pd: int) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.DEALLOC_PD) + PD_REF.pack(pd=pd))

    def create_umem(self, iova: int, size: int) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.CREATE_UMEM) + UMEM_IN.pack(iova=iova, size=size), UMEM_OUT)

    def destroy_umem(self, umem_id: int) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.DESTROY_UMEM) + UMEM_REF.pack(umem_id=umem_id))

    def create_mkey(self, access_mode: int, klms=(), **ctx) -> Reply:
        """``klms``: ``(byte_count, mkey, address)`` triples; ``klm_num`` defaults to their count."""
        ctx.setdefault("klm_num", len(klms))
        data = IN_HDR.pack(opcode=Op.CREATE_MKEY) + MKEY_IN.pack(access_mode=access_mode, **ctx)
        data += b"".join(KLM.pack(byte_count=n, mkey=k, address=a) for n, k, a in klms)
        return self.cmd(data, MKEY_OUT)

    def destroy_mkey(self, mkey: int) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.DESTROY_MKEY) + MKEY_REF.pack(mkey=mkey))

    def obj(self, opcode: int, obj_type: int, obj_id: int = 0, body: bytes = b"", out_layout=None) -> Reply:
        return self.cmd(OBJ_IN_HDR.pack(opcode=opcode, obj_type=obj_type, obj_id=obj_id) + body, out_layout)

    def create_virtq(self, **attrs) -> Reply:
        return self.obj(Op.CREATE_GENERAL_OBJECT, ObjType.VIRTIO_NET_Q, 0, VIRTQ.pack(**attrs), OBJ_OUT)

    def modify_virtq(self, obj_id: int, select: int, **attrs) -> Reply:
        return self.obj(Op.MODIFY_GENERAL_OBJECT, ObjType.VIRTIO_NET_Q, obj_id,
                        VIRTQ.pack(modify_field_select=select, **attrs))

    def query_virtq(self, obj_id: int) -> Reply:
        return self.obj(Op.QUERY_GENERAL_OBJECT, ObjType.VIRTIO_NET_Q, obj_id, b"", VIRTQ)

    def destroy_virtq(self, obj_id: int) -> Reply:
        return self.obj(Op.DESTROY_GENERAL_OBJECT, ObjType.VIRTIO_NET_Q, obj_id)

    def create_counters(self) -> Reply:
        return self.obj(Op.CREATE_GENERAL_OBJECT, ObjType.VIRTIO_Q_COUNTERS, 0, b"", OBJ_OUT)

    def query_counters(self, obj_id: int) -> Reply:
        return self.obj(Op.QUERY_GENERAL_OBJECT, ObjType.VIRTIO_Q_COUNTERS, obj_id, b"", COUNTERS)

    def destroy_counters(self, obj_id: int) -> Reply:
        return self.obj(Op.DESTROY_GENERAL_OBJECT, ObjType.VIRTIO_Q_COUNTERS, obj_id)

    # -- RSS steering ------------------------------------------------------------------

    def create_rqt(self, rqs, *, max_size: int | None = None, rq_type: int = RqType.VIRTQ, **kw) -> Reply:
        """An RQT of virtq object ids ``rqs`` (``rqt_actual_size`` defaults to their count)."""
        kw.setdefault("rqt_actual_size", len(rqs))
        mx = len(rqs) if max_size is None else max_size
        data = IN_HDR.pack(opcode=Op.CREATE_RQT) + RQT_IN.pack(rq_type=rq_type, rqt_max_size=mx, **kw)
        return self.cmd(data + b"".join(RQ_ENTRY.pack(rq_num=o) for o in rqs), RQT_OUT)

    def modify_rqt(self, rqtn: int, rqs, *, max_size: int, rq_type: int = RqType.VIRTQ) -> Reply:
        data = IN_HDR.pack(opcode=Op.MODIFY_RQT) + RQT_MODIFY.pack(rqtn=rqtn, rq_type=rq_type, rqt_max_size=max_size,
                                                                   rqt_actual_size=len(rqs))
        return self.cmd(data + b"".join(RQ_ENTRY.pack(rq_num=o) for o in rqs))

    def query_rqt(self, rqtn: int) -> Reply:
        """``fields``: the context and ``rqs``, the list."""
        r = self.cmd(IN_HDR.pack(opcode=Op.QUERY_RQT) + RQT_REF.pack(rqtn=rqtn), RQT_IN)
        if r.status == 0:
            base = OUT_HDR.size + RQT_IN.size
            r.fields["rqs"] = [RQ_ENTRY.unpack(r.raw, base + 4 * i)["rq_num"]
                               for i in range(r.fields["rqt_actual_size"])]
        return r

    def destroy_rqt(self, rqtn: int) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.DESTROY_RQT) + RQT_REF.pack(rqtn=rqtn))

    def create_tir(self, rqtn: int, *, key: bytes = b"\0" * 40, disp_type: int = TirDisp.INDIRECT, **kw) -> Reply:
        from dataplane.hwspec.mlx5_prm import toeplitz_key_fields

        return self.cmd(IN_HDR.pack(opcode=Op.CREATE_TIR) + TIR_IN.pack(disp_type=disp_type, indirect_table=rqtn,
                                                                         **toeplitz_key_fields(key), **kw), TIR_OUT)

    def destroy_tir(self, tirn: int) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.DESTROY_TIR) + TIR_REF.pack(tirn=tirn))

    def set_flow(self, flow_index: int, tirn: int, *, priority: int, table_id: int = 0, **match) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.SET_FLOW_TABLE_ENTRY) + FLOW_IN.pack(
            table_id=table_id, flow_index=flow_index, priority=priority, tirn=tirn, **match))

    def delete_flow(self, flow_index: int, table_id: int = 0) -> Reply:
        return self.cmd(IN_HDR.pack(opcode=Op.DELETE_FLOW_TABLE_ENTRY) + FLOW_REF.pack(table_id=table_id,
                                                                                        flow_index=flow_index))

    def close(self) -> None:
        self.bar.close()


class Mlx5Driver(VfioClient):
    """A driver bound to the mlx5 VF in ``vf_dir``, with guest memory ``mem`` (see the module doc)."""

    def __init__(self, vf_dir: str, mem, timeout: float = 10.0):
        super().__init__(vf_dir, timeout)
        self.bar0 = None
        self.umem_fd = -1
        try:
            self.info = self.request("get_device_info")
            self.config = open(self.request("get_region_info", bar="config")["path"], "rb").read()
            self.bar0 = BarFile(self.request("get_region_info", bar=0)["path"])
            self.fw = Mlx5Cmd(self.bar0, timeout=timeout)
            self.doorbell_off = self.info["doorbell"]["offset"]
            self.mem = mem
            self.dma_map_memory(mem)
            self.umem_fd = os.memfd_create("mlx5umem")
            os.ftruncate(self.umem_fd, UMEM_BYTES)
            self.dma_map(UMEM_IOVA, UMEM_BYTES, self.umem_fd)
            self._umem_next = UMEM_IOVA
            self.pd = self.ok(self.fw.alloc_pd()).fields["pd"]
            self.mkey = self._guest_mkey(mem)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def ok(r: Reply) -> Reply:
        if r.status != Status.OK:
            raise NicError(f"command refused: status {r.status:#x} syndrome {r.syndrome:#x}")
        return r

    def _guest_mkey(self, mem) -> int:
        """A direct mkey per region (IOVA = GPA) and a KLM mkey over [first GPA, last end), the holes between
        regions on the null mkey (facts §3.3): the virtqs' mkey."""
        regions = sorted(mem.regions, key=lambda r: r.gpa)
        null = self.fw.null_mkey()
        klms = []
        end = regions[0].gpa
        for r in regions:
            if r.gpa > end:
                klms.append((r.gpa - end, null, 0))
            k = self.ok(self.fw.create_mkey(AccessMode.MTT, pd=self.pd, start_addr=r.gpa, len=r.size,
                                            mtt_iova=r.gpa, local_write=1)).fields["mkey"]
            klms.append((r.size, k, r.gpa))
            end = r.gpa + r.size
        start = regions[0].gpa
        return self.ok(self.fw.create_mkey(AccessMode.KLM, klms, pd=self.pd, start_addr=start, len=end - start,
                                           local_write=1)).fields["mkey"]

    def _umem(self, size: int) -> int:
        size = (size + PAGE - 1) & ~(PAGE - 1)
        iova = self._umem_next
        if iova + size > UMEM_IOVA + UMEM_BYTES:
            raise NicError("out of umem memory")
        self._umem_next += size
        return self.ok(self.fw.create_umem(iova, size)).fields["umem_id"]

    def create_virtq(self, q, *, event_mode: int = EventMode.NO_MSIX, vector: int = 0, counters: bool = True,
                     **over) -> int:
        """A VIRTIO_NET_Q (INIT) for NicQueue ``q``: its rings, size, umems (a x size + b each, from the caps),
        a counters object; ``over`` overrides attributes.  Returns the object id."""
        caps = self.ok(self.fw.query_caps()).fields
        n = q.num
        a = dict(queue_index=q.qid, q_type=QType.PACKED if q.ring.packed else QType.SPLIT, event_mode=event_mode,
                 state=QState.INIT, q_size=n, pd=self.pd, mkey=self.mkey, virtio_version_1_0=1,
                 desc_addr=q.ring.desc_gpa, available_addr=q.ring.avail_gpa, used_addr=q.ring.used_gpa,
                 qp_id=vector if event_mode == EventMode.MSIX else 0)
        if q.ring.packed:
            a["hw_available_index"] = a["hw_used_index"] = 0x8000  # offset 0, wrap counter 1
        for i in (1, 2, 3):
            size = caps[f"umem_{i}_buffer_param_a"] * n + caps[f"umem_{i}_buffer_param_b"]
            a[f"umem_{i}_id"] = self._umem(size)
            a[f"umem_{i}_size"] = size
        if counters:
            a["counters_obj_id"] = self.ok(self.fw.create_counters()).fields["obj_id"]
        a.update(over)
        if event_mode == EventMode.MSIX:
            self.queue_vectors[q.qid] = vector
        return self.ok(self.fw.create_virtq(**a)).fields["obj_id"]

    def set_state(self, oid: int, state: int) -> Reply:
        return self.fw.modify_virtq(oid, Modify.STATE, state=state)

    def query(self, oid: int) -> dict:
        return self.ok(self.fw.query_virtq(oid)).fields

    def counters(self, oid: int) -> dict:
        """The counters object of virtq ``oid``, by DPDK's stat order (COUNTER_NAMES)."""
        cid = self.query(oid)["counters_obj_id"]
        f = self.ok(self.fw.query_counters(cid)).fields
        return {k: f[k] for k in COUNTER_NAMES}

    def doorbell(self, qid: int, width: int = 4) -> None:
        """A kick: a 32-bit write of the queue index into the VAR page (``width`` 2: the narrow write a
        guest makes, which the hardware does not see)."""
        if width == 4:
            self.bar0.w32(self.doorbell_off, qid)
        else:
            self.bar0.w16(self.doorbell_off, qid)

    def close(self) -> None:
        super().close()
        if self.bar0 is not None:
            self.bar0.close()
            self.bar0 = None
        if self.umem_fd >= 0:
            os.close(self.umem_fd)
            self.umem_fd = -1


class Mlx5Vf:
    """A VF's driver, guest memory and queue pair 0 (RX virtq 0, TX virtq 1), created in INIT."""

    def __init__(self, vf_dir, *, packed=False, num=64, rx_mode=EventMode.MSIX, nregions=1):
        self.mem = GuestMemoryLayout.simple(8 << 20, nregions=nregions, gpa=1 << 20, gap=16 << 20)
        self.drv = Mlx5Driver(vf_dir, self.mem)
        self.drv.set_irqs(4)
        self.rx = NicQueue(self.drv, self.mem, 0, num=num, packed=packed)
        self.tx = NicQueue(self.drv, self.mem, 1, num=num, packed=packed)
        self.rxq = self.drv.create_virtq(self.rx, event_mode=rx_mode, vector=1)
        self.txq = self.drv.create_virtq(self.tx)

    def ready(self):
        for oid in (self.rxq, self.txq):
            r = self.drv.set_state(oid, QState.RDY)
            assert r.status == Status.OK, r

    def close(self):
        self.drv.close()
        self.mem.close()
