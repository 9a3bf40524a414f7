"""The mlx5 card's firmware object model: one function's PDs, umems, mkeys, counters, virtqs.

:meth:`Hca.execute` runs one command (input bytes -> output bytes) and never raises: a
refused command is answered with a status and a syndrome
(:mod:`~dataplane.hwspec.mlx5_prm`), a bug in the card with ``INTERNAL_ERR`` (logged).

**The VIRTIO_NET_Q state machine** (facts §3.4).  A virtq is created in INIT.
Transitions asked for with MODIFY (bit STATE): INIT -> RDY, RDY -> SUSPEND, SUSPEND -> RDY,
and a state to itself (INIT, RDY, SUSPEND: nothing happens).  ERROR is entered only by the
device (:meth:`Hca.virtq_error`, a fault of the datapath); an ERROR virtq can only be
queried or destroyed.  Other modify bits are allowed per state (:data:`MODIFIABLE`): any in
INIT and SUSPEND, only STATE, QUEUE_PERIOD and the dirty-bitmap bits in RDY.  Going RDY
needs ring areas that the virtq's mkey translates (desc 16 x q_size; split: avail
6 + 2 x q_size, used 6 + 8 x q_size; packed: 4-byte event areas).

A create or modify is checked as a whole object: the resulting attributes must be
valid (sizes, caps, the objects they name exist and are not another virtq's) before
anything changes; references are counted, so destroying an mkey, umem, counters
object or PD in use is refused (RESOURCE_BUSY).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataplane import log as dplog

from ..dma import PAGE, DmaMap
from ..kernels import ring_area_sizes
from dataplane.hwspec.mlx5_prm import (
    CQ_OUT,
    CQE_SIZE,
    MAX_LOG_CQ_SIZE,
    QP_MOVES,
    QP_OUT,
    QP_QUERY_OUT,
    EventType,
    QpState,
    FLOW_TABLE_NIC_RX,
    HASH_FIELDS_KNOWN,
    MATCH_KNOWN,
    RQ_ENTRY,
    RQT_OUT,
    RQT_QUERY_OUT,
    TIR_OUT,
    HashFn,
    Match,
    RqType,
    TirDisp,
    toeplitz_key_bytes,
    COMMANDS,
    COUNTER_NAMES,
    COUNTERS,
    GENERAL_CAPS,
    IN_HDR,
    MKEY_OUT,
    MODIFY_FIELDS,
    MODIFY_KNOWN,
    OBJ_OUT,
    OBJECT_TYPES,
    OUT_HDR,
    PD_OUT,
    SPECIAL_CONTEXTS_OUT,
    SYNDROME_NAMES,
    STATUS_NAMES,
    UMEM_OUT,
    VDPA_CAPS,
    VIRTQ,
    CapType,
    CmdError,
    EventMode,
    Modify,
    ObjType,
    Op,
    QState,
    QType,
    Status,
    Syn,
)
from .mkey import NULL_MKEY, MkeyStore

__all__ = ["Hca", "Caps", "ring_areas", "VirtQ", "Umem", "Counters", "Cq", "Qp", "Sub", "Rqt", "Tir", "FlowRule", "MAX_FLOWS", "MODIFIABLE", "TRANSITIONS", "MAX_QUEUE_SIZE",
           "MAX_OBJECTS", "umem_size"]

log = dplog.get_logger("dataplane.nic.mlx5")

MAX_QUEUE_SIZE = 32768
MAX_OBJECTS = 1024
MAX_FLOWS = 64

#: modify bits allowed besides STATE, per current state.
MODIFIABLE = {
    QState.INIT: MODIFY_KNOWN,
    QState.RDY: Modify.STATE | Modify.QUEUE_PERIOD | Modify.DIRTY_BITMAP_PARAMS | Modify.DIRTY_BITMAP_DUMP_ENABLE,
    QState.SUSPEND: MODIFY_KNOWN,
    QState.ERROR: 0,
}
#: (from, to) state changes MODIFY may ask for (a state to itself too, but ERROR).
TRANSITIONS = {(QState.INIT, QState.RDY), (QState.RDY, QState.SUSPEND), (QState.SUSPEND, QState.RDY),
               (QState.INIT, QState.INIT), (QState.RDY, QState.RDY), (QState.SUSPEND, QState.SUSPEND)}
#: modify bits that a capability must announce.
_MODIFY_CAPS = {
    Modify.ADDR: "virtio_net_q_addr_modify",
    Modify.HW_AVAILABLE_INDEX: "virtio_q_index_modify",
    Modify.HW_USED_INDEX: "virtio_q_index_modify",
    Modify.Q_TYPE: "vnet_modify_ext",
    Modify.VERSION_1_0: "vnet_modify_ext",
    Modify.Q_MKEY: "vnet_modify_ext",
    Modify.QUEUE_FEATURE_BIT_MASK: "vnet_modify_ext",
    Modify.EVENT_MODE: "vnet_modify_ext",
}
_FEATURE_CAPS = ("virtio_version_1_0", "tso_ipv4", "tso_ipv6", "tx_csum", "rx_csum")


@dataclass
class Caps:
    """What QUERY_HCA_CAP reports; the card enforces these values."""

    max_num_virtio_queues: int = 32
    max_queue_size: int = MAX_QUEUE_SIZE
    virtio_queue_type: int = (1 << QType.SPLIT) | (1 << QType.PACKED)
    #: NO_MSIX, QP (event CQ/QP objects) and MSIX
    event_mode: int = (1 << EventMode.NO_MSIX) | (1 << EventMode.QP) | (1 << EventMode.MSIX)
    virtio_version_1_0: int = 1
    #: offloads, which the card's datapath does (:mod:`dataplane.nic.offload`): TX checksums and TSO
    #: over IPv4 and IPv6; RX: DATA_VALID on frames whose checksum the card computed.
    tso_ipv4: int = 1
    tso_ipv6: int = 1
    tx_csum: int = 1
    rx_csum: int = 1
    virtio_net_q_addr_modify: int = 1
    virtio_q_index_modify: int = 1
    vnet_modify_ext: int = 1
    queue_counters_valid: int = 1
    log_max_rqt_size: int = 9
    log_max_klm_list_size: int = 11
    num_msix_vectors: int = 33
    #: (a, b) of umems 1, 2, 3: umem i must hold a * q_size + b bytes (facts §3.4).
    umems: tuple = ((128, 4096), (64, 4096), (16, 4096))

    def general(self) -> dict:
        return dict(log_max_rqt_size=self.log_max_rqt_size, log_max_klm_list_size=self.log_max_klm_list_size,
                    vnet_modify_ext=self.vnet_modify_ext, queue_counters_valid=self.queue_counters_valid,
                    num_msix_vectors=self.num_msix_vectors,
                    general_obj_types=(1 << ObjType.VIRTIO_NET_Q)
                    | ((1 << ObjType.VIRTIO_Q_COUNTERS) if self.queue_counters_valid else 0))

    def vdpa(self) -> dict:
        d = dict(valid=1, virtio_queue_type=self.virtio_queue_type, event_mode=self.event_mode,
                 max_num_virtio_queues=self.max_num_virtio_queues, max_queue_size=self.max_queue_size,
                 virtio_net_q_addr_modify=self.virtio_net_q_addr_modify,
                 virtio_q_index_modify=self.virtio_q_index_modify)
        for f in _FEATURE_CAPS:
            d[f] = getattr(self, f)
        for i, (a, b) in enumerate(self.umems, 1):
            d[f"umem_{i}_buffer_param_a"] = a
            d[f"umem_{i}_buffer_param_b"] = b
        return d


@dataclass
class Cq:
    cqn: int
    log_size: int
    first_only: bool
    vector: int
    cqe_iova: int
    dbr_iova: int
    cookie: int
    sn: int = 0  # the arm sequence number the next arm must carry (2 bits)
    events: int = 0
    missed_arms: int = 0  # arms replaced by the next before the card read them (taken as given their event)
    users: int = 0  # QPs on it
    produced: int = 0  # completions written (24 bits, as the consumer index the driver arms with)
    consumed: int = 0  # the consumer index of the last arm word read


@dataclass
class Qp:
    qpn: int
    cqn: int
    state: int = QpState.RST
    remote: int = 0
    users: int = 0  # virtqs naming it


@dataclass
class Sub:
    """An error-event subscription of a virtq."""

    cookie: int
    vector: int


@dataclass
class Rqt:
    rqtn: int
    max_size: int
    rqs: list  # VIRTIO_NET_Q object ids, in table order
    users: int = 0  # TIRs on it


@dataclass
class Tir:
    tirn: int
    rqtn: int
    symmetric: bool
    l3: int
    l4: int
    fields: int  # HashField bits (0: no hash, the first RQT entry)
    key: bytes
    users: int = 0  # flow rules to it


@dataclass
class FlowRule:
    flow_index: int
    priority: int
    criteria: int  # Match bits
    ip_version: int
    ip_protocol: int
    tirn: int


def umem_size(caps: Caps, i: int, q_size: int) -> int:
    """Bytes umem ``i`` (1..3) of a virtq of ``q_size`` entries needs: a x q_size + b."""
    a, b = caps.umems[i - 1]
    return a * q_size + b


@dataclass
class Umem:
    umem_id: int
    iova: int
    size: int
    user: int = 0  # the virtq using it, 0: none


@dataclass
class Counters:
    obj_id: int
    #: int64 per COUNTER_NAMES entry: the datapath adds to these.
    values: np.ndarray = field(default_factory=lambda: np.zeros(len(COUNTER_NAMES), np.int64))
    user: int = 0


@dataclass
class VirtQ:
    obj_id: int
    attrs: dict

    @property
    def state(self) -> int:
        return self.attrs["state"]


def ring_areas(a: dict) -> list[tuple[str, int, int]]:
    """(attribute, address, bytes) of a virtq's ring areas."""
    names = ("desc_addr", "available_addr", "used_addr")
    sizes = ring_area_sizes(a["q_size"], a["q_type"] == QType.PACKED)
    return [(n, a[n], ln) for n, ln in zip(names, sizes)]


class Hca:
    """One function's firmware: its objects over its DMA map ``dma``."""

    def __init__(self, dma: DmaMap, caps: Caps | None = None, *, name: str = "mlx5"):
        self.dma = dma
        self.caps = caps or Caps()
        self.name = name
        self.mkeys = MkeyStore(dma, max_klm=1 << self.caps.log_max_klm_list_size)
        self.pds: dict[int, int] = {}  # pd -> users
        self.umems: dict[int, Umem] = {}
        self.virtqs: dict[int, VirtQ] = {}
        self.counters: dict[int, Counters] = {}
        self.tis: set[int] = set()  # TIS objects come with the RQT/TIR work
        self.cqs: dict[int, Cq] = {}
        self.qps: dict[int, Qp] = {}
        self.subs: dict[int, Sub] = {}  # virtq obj_id -> its OBJECT_CHANGE subscription
        self._next_cq = 1
        self._next_qp = 1
        self.rqts: dict[int, Rqt] = {}
        self.tirs: dict[int, Tir] = {}
        self.flows: dict[int, FlowRule] = {}
        self._next_rqt = 1
        self._next_tir = 1
        self._next_pd = 1
        self._next_umem = 1
        self._next_obj = 1
        self.executed = 0
        self.refused = 0
        #: the device side (the card's datapath), told of virtq changes before they are committed:
        #: ``virtq_modify(vq, new_attrs)`` (may refuse with CmdError, may update ``new_attrs``: the indices
        #: a suspended queue reached), ``virtq_destroy(vq)``, ``counters_sync()`` (before a counters query),
        #: ``steering_changed()`` (after an RQT, TIR or flow rule changed), ``error_event(sub, vq)`` (a
        #: subscribed virtq went to ERROR)
        self.observer = None

    # =========================================================================
    # dispatch
    # =========================================================================

    def execute(self, inbuf: bytes, out_room: int) -> bytes:
        """Run the command in ``inbuf``; the output (header and body), at most ``out_room`` bytes
        when the command succeeds (a refusal is the 8-byte header).  Never raises."""
        buf = bytes(inbuf)
        op = int.from_bytes(buf[:2], "big") if len(buf) >= 2 else None
        try:
            body = self._execute(buf, out_room)
            status, syndrome = Status.OK, Syn.NONE
        except CmdError as e:
            body = b""
            status, syndrome = e.status, e.syndrome
            log.error("mlx5: command refused", function=self.name, opcode=hex(op) if op is not None else None,
                      command=COMMANDS[op].name if op in COMMANDS else None, status=STATUS_NAMES.get(status),
                      syndrome=SYNDROME_NAMES.get(syndrome), reason=str(e))
        except Exception as e:  # a bug of the card: the driver gets INTERNAL_ERR, the card goes on
            body = b""
            status, syndrome = Status.INTERNAL_ERR, Syn.INTERNAL
            log.error("mlx5: command failed inside the card", function=self.name,
                      opcode=hex(op) if op is not None else None, error=repr(e), exc_info=True)
        if status == Status.OK:
            self.executed += 1
        else:
            self.refused += 1
        return OUT_HDR.pack(status=status, syndrome=syndrome) + body

    def refusal(self, status: int, syndrome: int, reason: str) -> bytes:
        """The output of a command refused before it could be read (logged, counted)."""
        self.refused += 1
        log.error("mlx5: command refused", function=self.name, status=STATUS_NAMES.get(status),
                  syndrome=SYNDROME_NAMES.get(syndrome), reason=reason)
        return OUT_HDR.pack(status=status, syndrome=syndrome)

    def _execute(self, buf: bytes, out_room: int) -> bytes:
        if len(buf) < IN_HDR.size:
            raise CmdError(Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT, f"{len(buf)} bytes: no command header")
        op = IN_HDR.unpack(buf)["opcode"]
        cmd = COMMANDS.get(op)
        if cmd is None:
            raise CmdError(Status.BAD_OP, Syn.UNKNOWN_OPCODE, f"opcode {op:#x}")
        return self._run(op, cmd, buf, out_room)

    def _run(self, op: int, cmd, buf: bytes, out_room: int) -> bytes:
        if len(buf) < cmd.header.size:
            raise CmdError(Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT, f"{cmd.name}: {len(buf)} bytes")
        hdr = cmd.header.unpack(buf)
        body_layout, out_size = cmd.body, self._out_size(op, hdr)
        if cmd.header is not IN_HDR:  # a general object command: the body is the object type's
            row = OBJECT_TYPES.get(hdr["obj_type"])
            if row is None:
                raise CmdError(Status.BAD_PARAM, Syn.UNKNOWN_OBJ_TYPE, f"{cmd.name}: obj_type {hdr['obj_type']:#x}")
            body_layout = row[1] if op in (Op.CREATE_GENERAL_OBJECT, Op.MODIFY_GENERAL_OBJECT) else None
            if op == Op.MODIFY_GENERAL_OBJECT and body_layout is None:
                raise CmdError(Status.BAD_PARAM, Syn.UNKNOWN_OBJ_TYPE, f"{row[0]} objects are not modifiable")
        elif hdr["op_mod"] and op != Op.QUERY_HCA_CAP:
            raise CmdError(Status.BAD_PARAM, Syn.BAD_OP_MOD, f"{cmd.name}: op_mod {hdr['op_mod']:#x}")
        pos = cmd.header.size
        body = {}
        if body_layout is not None:
            if len(buf) < pos + body_layout.size:
                raise CmdError(Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT,
                               f"{cmd.name}: {len(buf)} bytes, {pos + body_layout.size} needed")
            body = body_layout.unpack(buf, pos)
            wide = body_layout.too_wide(body)
            if wide:
                raise CmdError(Status.BAD_PARAM, Syn.FIELD_TOO_WIDE, f"{cmd.name}: {wide} = {body[wide]:#x}")
            pos += body_layout.size
        tail = []
        if cmd.tail is not None:
            n = body[cmd.count]
            need = pos + n * cmd.tail.size
            if len(buf) < need:
                raise CmdError(Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT,
                               f"{cmd.name}: {cmd.count} {n} needs {need} bytes, {len(buf)} given")
            tail = [cmd.tail.unpack(buf, pos + i * cmd.tail.size) for i in range(n)]
            pos = need
        if len(buf) != pos:
            raise CmdError(Status.BAD_INPUT_LEN, Syn.IN_TOO_LONG, f"{cmd.name}: {len(buf)} bytes, {pos} expected")
        if out_room < OUT_HDR.size + out_size:
            raise CmdError(Status.BAD_OUTPUT_LEN, Syn.OUT_TOO_SHORT,
                           f"{cmd.name}: output room {out_room}, {OUT_HDR.size + out_size} needed")
        return getattr(self, cmd.handler)(hdr, body, tail)

    def _out_size(self, op: int, hdr: dict) -> int:
        if op == Op.QUERY_HCA_CAP:
            return max(GENERAL_CAPS.size, VDPA_CAPS.size)  # the room asked for whatever the type
        if op == Op.CREATE_MKEY:
            return MKEY_OUT.size
        if op == Op.QUERY_SPECIAL_CONTEXTS:
            return SPECIAL_CONTEXTS_OUT.size
        if op == Op.ALLOC_PD:
            return PD_OUT.size
        if op == Op.CREATE_UMEM:
            return UMEM_OUT.size
        if op == Op.CREATE_GENERAL_OBJECT:
            return OBJ_OUT.size
        if op == Op.CREATE_RQT:
            return RQT_OUT.size
        if op == Op.CREATE_CQ:
            return CQ_OUT.size
        if op == Op.CREATE_QP:
            return QP_OUT.size
        if op == Op.QUERY_QP:
            return QP_QUERY_OUT.size
        if op == Op.QUERY_RQT:
            return RQT_QUERY_OUT.size
        if op == Op.CREATE_TIR:
            return TIR_OUT.size
        if op == Op.QUERY_GENERAL_OBJECT:
            row = OBJECT_TYPES.get(hdr.get("obj_type"))
            return row[2].size if row else 0
        return 0

    # =========================================================================
    # caps, pd, special contexts
    # =========================================================================

    def query_hca_cap(self, hdr, body, tail) -> bytes:
        cap_type = hdr["op_mod"] >> 1
        if cap_type == CapType.GENERAL:
            return GENERAL_CAPS.pack(**self.caps.general())
        if cap_type == CapType.VDPA_EMULATION:
            return VDPA_CAPS.pack(**self.caps.vdpa())
        raise CmdError(Status.BAD_PARAM, Syn.BAD_OP_MOD, f"QUERY_HCA_CAP: capability type {cap_type:#x}")

    def query_special_contexts(self, hdr, body, tail) -> bytes:
        return SPECIAL_CONTEXTS_OUT.pack(null_mkey=NULL_MKEY)

    def alloc_pd(self, hdr, body, tail) -> bytes:
        if len(self.pds) >= MAX_OBJECTS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, "ALLOC_PD")
        pd = self._next_pd
        self._next_pd += 1
        self.pds[pd] = 0
        return PD_OUT.pack(pd=pd)

    def dealloc_pd(self, hdr, body, tail) -> bytes:
        pd = body["pd"]
        if pd not in self.pds:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_PD, f"DEALLOC_PD: no pd {pd}")
        if self.pds[pd]:
            raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DEALLOC_PD: pd {pd} has {self.pds[pd]} users")
        del self.pds[pd]
        return b""

    def _pd(self, pd: int, what: str) -> None:
        if pd not in self.pds:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_PD, f"{what}: no pd {pd}")

    # =========================================================================
    # umem, mkey
    # =========================================================================

    def create_umem(self, hdr, body, tail) -> bytes:
        iova, size = body["iova"], body["size"]
        if size <= 0:
            raise CmdError(Status.BAD_PARAM, Syn.BAD_LENGTH, "CREATE_UMEM: size 0")
        if iova % PAGE or size % PAGE:
            raise CmdError(Status.BAD_PARAM, Syn.NOT_ALIGNED, f"CREATE_UMEM: [{iova:#x}, +{size:#x}) not page aligned")
        if self.dma.find(iova, size) is None:
            raise CmdError(Status.BAD_PARAM, Syn.UNMAPPED,
                           f"CREATE_UMEM: [{iova:#x}, +{size:#x}) is not inside one DMA mapping")
        if len(self.umems) >= MAX_OBJECTS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, "CREATE_UMEM")
        uid = self._next_umem
        self._next_umem += 1
        self.umems[uid] = Umem(uid, iova, size)
        return UMEM_OUT.pack(umem_id=uid)

    def destroy_umem(self, hdr, body, tail) -> bytes:
        u = self.umems.get(body["umem_id"])
        if u is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_UMEM, f"DESTROY_UMEM: no umem {body['umem_id']}")
        if u.user:
            raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DESTROY_UMEM: virtq {u.user} uses it")
        del self.umems[u.umem_id]
        return b""

    def create_mkey(self, hdr, body, tail) -> bytes:
        self._pd(body["pd"], "CREATE_MKEY")
        key = self.mkeys.create(body, tail)
        self.pds[body["pd"]] += 1
        return MKEY_OUT.pack(mkey=key)

    def destroy_mkey(self, hdr, body, tail) -> bytes:
        m = self.mkeys.get(body["mkey"]) if body["mkey"] != NULL_MKEY else None
        self.mkeys.destroy(body["mkey"])
        if m is not None:
            self.pds[m.pd] -= 1
        return b""

    # =========================================================================
    # general objects
    # =========================================================================

    def _new_obj_id(self) -> int:
        if len(self.virtqs) + len(self.counters) >= MAX_OBJECTS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, "CREATE_GENERAL_OBJECT")
        oid = self._next_obj
        self._next_obj += 1
        return oid

    def create_object(self, hdr, body, tail) -> bytes:
        t = hdr["obj_type"]
        if t == ObjType.VIRTIO_Q_COUNTERS:
            if not self.caps.queue_counters_valid:
                raise CmdError(Status.BAD_PARAM, Syn.UNKNOWN_OBJ_TYPE, "counters objects are not supported")
            oid = self._new_obj_id()
            self.counters[oid] = Counters(oid)
            return OBJ_OUT.pack(obj_id=oid)
        attrs = {k: v for k, v in body.items() if k != "modify_field_select"}
        if attrs["state"] != QState.INIT:
            raise CmdError(Status.BAD_PARAM, Syn.BAD_STATE, f"VIRTIO_NET_Q: created in state {attrs['state']}, not INIT")
        attrs["error_type"] = 0
        self._check_virtq(attrs, 0)
        oid = self._new_obj_id()
        self.virtqs[oid] = VirtQ(oid, attrs)
        self._take(oid, attrs)
        return OBJ_OUT.pack(obj_id=oid)

    def modify_object(self, hdr, body, tail) -> bytes:
        vq = self._virtq(hdr["obj_id"], "MODIFY")
        sel = body["modify_field_select"]
        if sel & ~MODIFY_KNOWN:
            raise CmdError(Status.BAD_PARAM, Syn.UNKNOWN_MODIFY_BIT, f"modify_field_select {sel & ~MODIFY_KNOWN:#x}")
        for bit, cap in _MODIFY_CAPS.items():
            if sel & bit and not getattr(self.caps, cap):
                raise CmdError(Status.BAD_PARAM, Syn.MODIFY_CAP, f"modify bit {bit:#x} needs {cap}")
        cur = vq.state
        if sel & ~MODIFIABLE[cur]:
            raise CmdError(Status.BAD_RES_STATE, Syn.FIELD_NOT_MODIFIABLE,
                           f"virtq {vq.obj_id} in state {cur}: modify bits {sel & ~MODIFIABLE[cur]:#x} not allowed")
        new = dict(vq.attrs)
        for bit, names in MODIFY_FIELDS.items():
            if sel & bit:
                for n in names:
                    new[n] = body[n]
        if sel & Modify.STATE:
            to = body["state"]
            if to not in (QState.INIT, QState.RDY, QState.SUSPEND):
                raise CmdError(Status.BAD_PARAM, Syn.BAD_STATE, f"virtq {vq.obj_id}: state {to} cannot be asked for")
            if (cur, to) not in TRANSITIONS:
                raise CmdError(Status.BAD_RES_STATE, Syn.STATE_TRANSITION, f"virtq {vq.obj_id}: {cur} -> {to}")
        self._check_virtq(new, vq.obj_id)
        if self.observer is not None:
            self.observer.virtq_modify(vq, new)
        self._release(vq.obj_id, vq.attrs)
        vq.attrs = new
        self._take(vq.obj_id, new)
        return b""

    def query_object(self, hdr, body, tail) -> bytes:
        t, oid = hdr["obj_type"], hdr["obj_id"]
        if t == ObjType.VIRTIO_Q_COUNTERS:
            c = self.counters.get(oid)
            if c is None:
                raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT, f"QUERY: no counters object {oid}")
            if self.observer is not None:
                self.observer.counters_sync()
            return COUNTERS.pack(**{n: int(v) for n, v in zip(COUNTER_NAMES, c.values)})
        return VIRTQ.pack(**self._virtq(oid, "QUERY").attrs)

    def destroy_object(self, hdr, body, tail) -> bytes:
        t, oid = hdr["obj_type"], hdr["obj_id"]
        if t == ObjType.VIRTIO_Q_COUNTERS:
            c = self.counters.get(oid)
            if c is None:
                raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT, f"DESTROY: no counters object {oid}")
            if c.user:
                raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DESTROY: virtq {c.user} uses counters {oid}")
            del self.counters[oid]
            return b""
        vq = self._virtq(oid, "DESTROY")
        for rqt in self.rqts.values():
            if oid in rqt.rqs:
                raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DESTROY: virtq {oid} is in RQT {rqt.rqtn}")
        if self.observer is not None:
            self.observer.virtq_destroy(vq)
        self._release(oid, vq.attrs)
        del self.virtqs[oid]
        self.subs.pop(oid, None)
        return b""

    def _virtq(self, oid: int, what: str) -> VirtQ:
        vq = self.virtqs.get(oid)
        if vq is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT, f"{what}: no VIRTIO_NET_Q object {oid}")
        return vq

    # =========================================================================
    # event objects: CQ, QP, subscriptions (facts §3.6, §3.10)
    # =========================================================================

    def _vector(self, v: int, what: str) -> None:
        if v >= self.caps.num_msix_vectors:
            raise CmdError(Status.BAD_PARAM, Syn.EVENT_VECTOR, f"{what}: vector {v} >= {self.caps.num_msix_vectors}")

    def create_cq(self, hdr, body, tail) -> bytes:
        log_n = body["log_cq_size"]
        if not 0 < log_n <= MAX_LOG_CQ_SIZE:
            raise CmdError(Status.BAD_PARAM, Syn.CQ_SIZE, f"CREATE_CQ: log_cq_size {log_n}")
        self._vector(body["vector"], "CREATE_CQ")
        size = CQE_SIZE << log_n
        for name, iova, ln in (("cqe_iova", body["cqe_iova"], size), ("dbr_iova", body["dbr_iova"], 8)):
            if iova % (64 if name == "cqe_iova" else 8):
                raise CmdError(Status.BAD_PARAM, Syn.NOT_ALIGNED, f"CREATE_CQ: {name} {iova:#x}")
            if self.dma.find(iova, ln) is None:
                raise CmdError(Status.BAD_PARAM, Syn.UNMAPPED, f"CREATE_CQ: {name} [{iova:#x}, +{ln:#x}) not mapped")
        if len(self.cqs) >= MAX_OBJECTS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, "CREATE_CQ")
        n = self._next_cq
        self._next_cq += 1
        self.cqs[n] = Cq(n, log_n, bool(body["use_first_only"]), body["vector"], body["cqe_iova"], body["dbr_iova"],
                         body["cookie"])
        return CQ_OUT.pack(cqn=n)

    def destroy_cq(self, hdr, body, tail) -> bytes:
        cq = self.cqs.get(body["cqn"])
        if cq is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_CQ, f"DESTROY_CQ: no CQ {body['cqn']}")
        if cq.users:
            raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DESTROY_CQ: {cq.users} QPs use CQ {cq.cqn}")
        del self.cqs[cq.cqn]
        return b""

    def _qp(self, n: int, what: str) -> Qp:
        qp = self.qps.get(n)
        if qp is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_QP, f"{what}: no QP {n}")
        return qp

    def create_qp(self, hdr, body, tail) -> bytes:
        cqn = body["cqn"]
        if cqn and cqn not in self.cqs:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_CQ, f"CREATE_QP: no CQ {cqn}")
        if len(self.qps) >= MAX_OBJECTS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, "CREATE_QP")
        n = self._next_qp
        self._next_qp += 1
        self.qps[n] = Qp(n, cqn)
        if cqn:
            self.cqs[cqn].users += 1
        return QP_OUT.pack(qpn=n)

    def destroy_qp(self, hdr, body, tail) -> bytes:
        qp = self._qp(body["qpn"], "DESTROY_QP")
        if qp.users:
            raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DESTROY_QP: {qp.users} virtqs name QP {qp.qpn}")
        if qp.cqn:
            self.cqs[qp.cqn].users -= 1
        del self.qps[qp.qpn]
        return b""

    def move_qp(self, hdr, body, tail) -> bytes:
        op = hdr["opcode"]
        qp = self._qp(body["qpn"], COMMANDS[op].name)
        frm, to = QP_MOVES[op]
        if qp.state != frm:
            raise CmdError(Status.BAD_RES_STATE, Syn.QP_STATE, f"{COMMANDS[op].name}: QP {qp.qpn} is in state {qp.state}")
        if to == QpState.RTR:
            self._qp(body["remote_qpn"], "INIT2RTR_QP remote_qpn")
            qp.remote = body["remote_qpn"]
        qp.state = to
        return b""

    def query_qp(self, hdr, body, tail) -> bytes:
        qp = self._qp(body["qpn"], "QUERY_QP")
        return QP_QUERY_OUT.pack(state=qp.state, cqn=qp.cqn, remote_qpn=qp.remote)

    def event_cq(self, qpn: int) -> Cq | None:
        """The CQ a virtq in QP mode completes into: its FW QP (``qpn``, RTS), that QP's peer, the peer's CQ."""
        qp = self.qps.get(qpn)
        if qp is None or qp.state != QpState.RTS:
            return None
        peer = self.qps.get(qp.remote)
        return self.cqs.get(peer.cqn) if peer is not None and peer.cqn else None

    def subscribe_event(self, hdr, body, tail) -> bytes:
        if body["obj_type"] != ObjType.VIRTIO_NET_Q or body["event_type"] != EventType.OBJECT_CHANGE:
            raise CmdError(Status.BAD_PARAM, Syn.EVENT_TYPE,
                           f"SUBSCRIBE_EVENT: obj_type {body['obj_type']:#x} event_type {body['event_type']:#x}")
        self._virtq(body["obj_id"], "SUBSCRIBE_EVENT")
        self._vector(body["vector"], "SUBSCRIBE_EVENT")
        self.subs[body["obj_id"]] = Sub(body["cookie"], body["vector"])
        return b""

    # =========================================================================
    # RSS steering: RQT, TIR, flow rules (facts §3.7)
    # =========================================================================

    def _steering_changed(self) -> None:
        if self.observer is not None:
            self.observer.steering_changed()

    def _rq_list(self, body, tail, what: str) -> list[int]:
        if body["rq_type"] != RqType.VIRTQ:
            raise CmdError(Status.BAD_PARAM, Syn.RQ_TYPE, f"{what}: rq_type {body['rq_type']}, only VIRTQ")
        mx, n, limit = body["rqt_max_size"], body["rqt_actual_size"], 1 << self.caps.log_max_rqt_size
        if not 0 < mx <= limit or not 0 < n <= mx:
            raise CmdError(Status.BAD_PARAM, Syn.RQT_SIZE,
                           f"{what}: rqt_max_size {mx}, rqt_actual_size {n} (limit {limit})")
        rqs = [e["rq_num"] for e in tail]
        for oid in rqs:
            if oid not in self.virtqs:
                raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT, f"{what}: no VIRTIO_NET_Q object {oid}")
        return rqs

    def create_rqt(self, hdr, body, tail) -> bytes:
        rqs = self._rq_list(body, tail, "CREATE_RQT")
        if len(self.rqts) >= MAX_OBJECTS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, "CREATE_RQT")
        n = self._next_rqt
        self._next_rqt += 1
        self.rqts[n] = Rqt(n, body["rqt_max_size"], rqs)
        self._steering_changed()
        return RQT_OUT.pack(rqtn=n)

    def _rqt(self, n: int, what: str) -> Rqt:
        r = self.rqts.get(n)
        if r is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_RQT, f"{what}: no RQT {n}")
        return r

    def modify_rqt(self, hdr, body, tail) -> bytes:
        r = self._rqt(body["rqtn"], "MODIFY_RQT")
        rqs = self._rq_list(body, tail, "MODIFY_RQT")
        if body["rqt_max_size"] != r.max_size:
            raise CmdError(Status.BAD_PARAM, Syn.RQT_SIZE, f"MODIFY_RQT: rqt_max_size {body['rqt_max_size']} "
                                                           f"is not the RQT's {r.max_size}")
        r.rqs = rqs
        self._steering_changed()
        return b""

    def query_rqt(self, hdr, body, tail) -> bytes:
        r = self._rqt(body["rqtn"], "QUERY_RQT")
        return RQT_QUERY_OUT.pack(rq_type=RqType.VIRTQ, rqt_max_size=r.max_size, rqt_actual_size=len(r.rqs)) + \
            b"".join(RQ_ENTRY.pack(rq_num=o) for o in r.rqs)

    def destroy_rqt(self, hdr, body, tail) -> bytes:
        r = self._rqt(body["rqtn"], "DESTROY_RQT")
        if r.users:
            raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DESTROY_RQT: {r.users} TIRs use RQT {r.rqtn}")
        del self.rqts[r.rqtn]
        self._steering_changed()
        return b""

    def _tir_ctx(self, body, what: str) -> tuple[Rqt, dict]:
        if body["disp_type"] != TirDisp.INDIRECT:
            raise CmdError(Status.BAD_PARAM, Syn.TIR_DISP, f"{what}: only indirect TIRs (on an RQT)")
        fields, fn = body["selected_fields"], body["rx_hash_fn"]
        if fn not in (HashFn.NONE, HashFn.TOEPLITZ) or (fields and fn != HashFn.TOEPLITZ):
            raise CmdError(Status.BAD_PARAM, Syn.HASH_FN, f"{what}: rx_hash_fn {fn} with fields {fields:#x}")
        if fields & ~HASH_FIELDS_KNOWN:
            raise CmdError(Status.BAD_PARAM, Syn.HASH_FIELDS, f"{what}: selected_fields {fields:#x}")
        rqt = self._rqt(body["indirect_table"], what)
        return rqt, dict(rqtn=rqt.rqtn, symmetric=bool(body["rx_hash_symmetric"]), l3=body["l3_prot_type"],
                         l4=body["l4_prot_type"], fields=fields, key=toeplitz_key_bytes(body))

    def create_tir(self, hdr, body, tail) -> bytes:
        rqt, ctx = self._tir_ctx(body, "CREATE_TIR")
        if len(self.tirs) >= MAX_OBJECTS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, "CREATE_TIR")
        n = self._next_tir
        self._next_tir += 1
        self.tirs[n] = Tir(n, **ctx)
        rqt.users += 1
        self._steering_changed()
        return TIR_OUT.pack(tirn=n)

    def modify_tir(self, hdr, body, tail) -> bytes:
        tir = self.tirs.get(body["tirn"])
        if tir is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_TIR, f"MODIFY_TIR: no TIR {body['tirn']}")
        rqt, ctx = self._tir_ctx(body, "MODIFY_TIR")
        self.rqts[tir.rqtn].users -= 1
        rqt.users += 1
        for k, v in ctx.items():
            setattr(tir, k, v)
        self._steering_changed()
        return b""

    def destroy_tir(self, hdr, body, tail) -> bytes:
        tir = self.tirs.get(body["tirn"])
        if tir is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_TIR, f"DESTROY_TIR: no TIR {body['tirn']}")
        if tir.users:
            raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"DESTROY_TIR: {tir.users} flow rules use it")
        self.rqts[tir.rqtn].users -= 1
        del self.tirs[tir.tirn]
        self._steering_changed()
        return b""

    def set_flow(self, hdr, body, tail) -> bytes:
        if body["table_id"] != FLOW_TABLE_NIC_RX:
            raise CmdError(Status.BAD_PARAM, Syn.FLOW_TABLE, f"SET_FLOW_TABLE_ENTRY: table {body['table_id']}")
        crit = body["match_criteria"]
        if crit & ~MATCH_KNOWN or (crit & Match.IP_VERSION and body["ip_version"] not in (4, 6)):
            raise CmdError(Status.BAD_PARAM, Syn.FLOW_MATCH,
                           f"SET_FLOW_TABLE_ENTRY: criteria {crit:#x}, ip_version {body['ip_version']}")
        tir = self.tirs.get(body["tirn"])
        if tir is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_TIR, f"SET_FLOW_TABLE_ENTRY: no TIR {body['tirn']}")
        idx = body["flow_index"]
        old = self.flows.get(idx)
        if old is None and len(self.flows) >= MAX_FLOWS:
            raise CmdError(Status.NO_RESOURCES, Syn.TOO_MANY_OBJECTS, f"SET_FLOW_TABLE_ENTRY: {MAX_FLOWS} rules")
        if old is not None:
            self.tirs[old.tirn].users -= 1
        self.flows[idx] = FlowRule(idx, body["priority"], crit, body["ip_version"] if crit & Match.IP_VERSION else 0,
                                   body["ip_protocol"] if crit & Match.IP_PROTOCOL else -1, tir.tirn)
        tir.users += 1
        self._steering_changed()
        return b""

    def delete_flow(self, hdr, body, tail) -> bytes:
        if body["table_id"] != FLOW_TABLE_NIC_RX:
            raise CmdError(Status.BAD_PARAM, Syn.FLOW_TABLE, f"DELETE_FLOW_TABLE_ENTRY: table {body['table_id']}")
        f = self.flows.pop(body["flow_index"], None)
        if f is None:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_FLOW, f"DELETE_FLOW_TABLE_ENTRY: no rule {body['flow_index']}")
        self.tirs[f.tirn].users -= 1
        self._steering_changed()
        return b""

    # -- the device side ------------------------------------------------------------------

    def virtq_error(self, oid: int, error_type: int) -> None:
        """The datapath met a fault on virtq ``oid``: it goes to ERROR with ``error_type``."""
        vq = self.virtqs[oid]
        vq.attrs["state"] = QState.ERROR
        vq.attrs["error_type"] = error_type & 0xFF
        log.error("mlx5: virtq in error", function=self.name, obj_id=oid, queue_index=vq.attrs["queue_index"],
                  error_type=error_type)
        sub = self.subs.get(oid)
        if sub is not None and self.observer is not None:
            self.observer.error_event(sub, vq)

    # -- virtq checks and references -------------------------------------------------------

    def _check_virtq(self, a: dict, self_id: int) -> None:
        caps = self.caps
        qi = a["queue_index"]
        if qi >= caps.max_num_virtio_queues:
            raise CmdError(Status.BAD_PARAM, Syn.QUEUE_INDEX,
                           f"queue_index {qi} >= max_num_virtio_queues {caps.max_num_virtio_queues}")
        for oid, other in self.virtqs.items():
            if oid != self_id and other.attrs["queue_index"] == qi:
                raise CmdError(Status.BAD_PARAM, Syn.QUEUE_INDEX_IN_USE, f"queue_index {qi} is virtq {oid}'s")
        if not caps.virtio_queue_type >> a["q_type"] & 1:
            raise CmdError(Status.BAD_PARAM, Syn.Q_TYPE, f"q_type {a['q_type']}")
        n = a["q_size"]
        if not 0 < n <= caps.max_queue_size or (a["q_type"] == QType.SPLIT and n & (n - 1)):
            raise CmdError(Status.BAD_PARAM, Syn.QUEUE_SIZE, f"q_size {n}")
        if not caps.event_mode >> a["event_mode"] & 1:
            raise CmdError(Status.BAD_PARAM, Syn.EVENT_MODE, f"event_mode {a['event_mode']}")
        if a["event_mode"] == EventMode.QP:
            if a["qp_id"] not in self.qps:
                raise CmdError(Status.BAD_PARAM, Syn.EVENT_TARGET, f"event QP {a['qp_id']} does not exist")
            if a["state"] == QState.RDY and self.event_cq(a["qp_id"]) is None:
                raise CmdError(Status.BAD_PARAM, Syn.EVENT_TARGET,
                               f"event QP {a['qp_id']} is not RTS, connected to a QP with a CQ")
        if a["event_mode"] == EventMode.MSIX and a["qp_id"] >= caps.num_msix_vectors:
            raise CmdError(Status.BAD_PARAM, Syn.EVENT_TARGET,
                           f"MSIX vector {a['qp_id']} >= num_msix_vectors {caps.num_msix_vectors}")
        for f in _FEATURE_CAPS:
            if a[f] and not getattr(caps, f):
                raise CmdError(Status.BAD_PARAM, Syn.FEATURE_CAP, f"{f} is not in the caps")
        if a["hw_latency_mode"] > 2:
            raise CmdError(Status.BAD_PARAM, Syn.QUEUE_PERIOD, f"hw_latency_mode {a['hw_latency_mode']}")
        self._pd(a["pd"], "VIRTIO_NET_Q")
        self.mkeys.get(a["mkey"], what="VIRTIO_NET_Q mkey")
        if a["tis_id"] and a["tis_id"] not in self.tis:
            raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_TIS, f"no TIS {a['tis_id']}")
        cid = a["counters_obj_id"]
        if cid:
            c = self.counters.get(cid)
            if c is None:
                raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_COUNTERS, f"no counters object {cid}")
            if c.user and c.user != self_id:
                raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"counters {cid} are virtq {c.user}'s")
        seen = set()
        for i in (1, 2, 3):
            uid, size, off = a[f"umem_{i}_id"], a[f"umem_{i}_size"], a[f"umem_{i}_offset"]
            u = self.umems.get(uid)
            if u is None:
                raise CmdError(Status.BAD_RESOURCE, Syn.UNKNOWN_UMEM, f"umem_{i}_id {uid}")
            if uid in seen or (u.user and u.user != self_id):
                raise CmdError(Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE, f"umem {uid} is already in use")
            seen.add(uid)
            need = umem_size(caps, i, n)
            if size < need:
                raise CmdError(Status.BAD_PARAM, Syn.UMEM_SIZE,
                               f"umem_{i}_size {size} < {need} (a x q_size + b for q_size {n})")
            if off + size > u.size:
                raise CmdError(Status.BAD_PARAM, Syn.UMEM_RANGE,
                               f"umem_{i}: offset {off:#x} + size {size:#x} past the umem ({u.size:#x})")
        if a["dirty_bitmap_mkey"] or a["dirty_bitmap_size"] or a["dirty_bitmap_dump_enable"]:
            key = a["dirty_bitmap_mkey"]
            self.mkeys.get(key, what="dirty_bitmap_mkey")
            if not a["dirty_bitmap_size"] or self.mkeys.translate(key, a["dirty_bitmap_addr"],
                                                                  a["dirty_bitmap_size"]) is None:
                raise CmdError(Status.BAD_PARAM, Syn.DIRTY_BITMAP,
                               f"dirty bitmap [{a['dirty_bitmap_addr']:#x}, +{a['dirty_bitmap_size']:#x}) "
                               f"not in mkey {key:#x}")
        if a["state"] == QState.RDY:
            for name, addr, length in ring_areas(a):
                if not addr or self.mkeys.translate(a["mkey"], addr, length) is None:
                    raise CmdError(Status.BAD_PARAM, Syn.RING_UNMAPPED,
                                   f"{name} [{addr:#x}, +{length:#x}) is not translated by mkey {a['mkey']:#x}")

    def _refs(self, a: dict):
        yield "pd", a["pd"]
        if a["event_mode"] == EventMode.QP:
            yield "qp", a["qp_id"]
        yield "mkey", a["mkey"]
        if a["dirty_bitmap_mkey"]:
            yield "mkey", a["dirty_bitmap_mkey"]
        if a["counters_obj_id"]:
            yield "counters", a["counters_obj_id"]
        for i in (1, 2, 3):
            yield "umem", a[f"umem_{i}_id"]

    def _take(self, oid: int, a: dict) -> None:
        for kind, ref in self._refs(a):
            if kind == "pd":
                self.pds[ref] += 1
            elif kind == "mkey":
                self.mkeys.mkeys[ref].users += 1
            elif kind == "counters":
                self.counters[ref].user = oid
            elif kind == "qp":
                self.qps[ref].users += 1
            else:
                self.umems[ref].user = oid

    def _release(self, oid: int, a: dict) -> None:
        for kind, ref in self._refs(a):
            if kind == "pd":
                self.pds[ref] -= 1
            elif kind == "mkey":
                self.mkeys.mkeys[ref].users -= 1
            elif kind == "counters":
                self.counters[ref].user = 0
            elif kind == "qp":
                self.qps[ref].users -= 1
            else:
                self.umems[ref].user = 0

