"""The mlx5 (ConnectX-6 Dx) device interface as data: PCI ids, BAR0 and mailbox registers, command
opcodes, statuses, syndromes, wire layouts -- read by the emulated card (``dataplane.nic.mlx5``) and
by the vDPA driver (``dataplane.vdpa.mlx5``), neither of which imports the other.

Every command is an input buffer and an output buffer, **big-endian** like the device's
own mailboxes.  An input starts with an 8-byte header (``opcode`` u16, ``uid`` u16, a
reserved u16, ``op_mod`` u16); the general-object commands use a 16-byte header
(``opcode``, ``uid``, reserved, ``obj_type`` in the ``op_mod`` place, ``obj_id`` u32,
reserved u32).  An output starts with ``status`` u8, 3 reserved bytes, ``syndrome`` u32.

A :class:`Layout` is an ordered list of fields (name, struct code, bit width); the
width is what the device accepts (``event_mode`` is 3 bits, ``state`` 4...): a wider
value is refused with :data:`Status.BAD_PARAM` / :data:`Syn.FIELD_TOO_WIDE`.  Fields
named ``_r*`` are reserved (ignored).

:data:`COMMANDS` is the opcode table the card dispatches on; an opcode that is not in
it is answered :data:`Status.BAD_OP`.  The numbers (opcodes, object types, access modes,
enums, modify bits, status codes) are the device's (VDPA-FACTS §3.3/§3.4 and the
device's command reference); the syndromes are this emulation's own (a real device's
are opaque 32-bit values), one per reason, so a driver and a test can tell them apart.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "VENDOR_ID", "DEVICE_ID", "MSIX_TABLE_OFF", "MSIX_PBA_OFF", "VAR_OFF", "VAR_SIZE", "BAR0_SIZE", "FW_REV",
    "CMDIF_REV", "IN_MAX", "OUT_MAX", "IN_OFF", "OUT_OFF", "SLOT_SIZE", "BAR_SIZE", "R_FW_REV", "R_CMDIF_REV",
    "R_IN_MAX", "R_OUT_MAX", "R_CMD_SEQ", "R_CMD_ACK", "R_IN_LEN", "R_OUT_LEN", "R_OUT_WRITTEN", "R_CMDS_DONE",
    "R_CMDS_REFUSED",
    "Op", "ObjType", "CmdError", "Status", "Syn", "STATUS_NAMES", "SYNDROME_NAMES", "CapType", "AccessMode", "QType",
    "EventMode", "QState", "Modify", "MODIFY_FIELDS", "MODIFY_KNOWN", "Field", "Layout",
    "IN_HDR", "OUT_HDR", "OBJ_IN_HDR", "OBJ_OUT", "GENERAL_CAPS", "VDPA_CAPS", "MKEY_IN", "KLM", "MKEY_OUT",
    "MKEY_REF", "SPECIAL_CONTEXTS_OUT", "PD_OUT", "PD_REF", "UMEM_IN", "UMEM_OUT", "UMEM_REF", "VIRTQ",
    "COUNTERS", "Command", "COMMANDS", "OBJECT_TYPES", "MAX_KLM_BYTE_COUNT", "MIN_KLM_FIXED_BUFFER_SIZE",
    "COUNTER_NAMES", "STAT_NAMES", "cap_op_mod",
    "RqType", "TirDisp", "HashFn", "HashField", "HASH_FIELDS_KNOWN", "L3Type", "L4Type", "Match", "MATCH_KNOWN",
    "VDPA_RSS_KEY", "FLOW_TABLE_NIC_RX", "MAX_FLOW_PRIORITY", "RQT_IN", "RQT_MODIFY", "RQ_ENTRY", "RQT_OUT",
    "RQT_REF", "RQT_QUERY_OUT", "TIR_IN", "TIR_MODIFY", "TIR_OUT", "TIR_REF", "FLOW_IN", "FLOW_REF", "toeplitz_key_fields",
    "toeplitz_key_bytes",
    "UAR_OFF", "UAR_CQ_DB", "UAR_IDLE", "EVQ_OFF", "ERRQ_OFF", "EQ_PROD", "EQ_NENT", "EQ_LOST", "EQ_ENTRIES",
    "EQE_SIZE", "EQ_SLOTS", "QpState", "QP_MOVES", "MAX_LOG_CQ_SIZE", "CQE_SIZE", "CQE_WQE_COUNTER", "CQE_OP_OWN",
    "CQE_OPCODE_REQ", "CQE_TIMESTAMP", "DBR_CI", "DBR_ARM", "CQ_CI_MASK",
    "CQ_DB_CMD_ALL", "CQ_DB_CMD_SOL", "EventType", "CQ_IN", "CQ_OUT",
    "CQ_REF", "QP_IN", "QP_OUT", "QP_REF", "QP_MODIFY", "QP_QUERY_OUT", "SUBSCRIBE_IN",
]


# -- the PCI face and BAR0 (a VF) ------------------------------------------------------------

VENDOR_ID = 0x15B3  # Mellanox
DEVICE_ID = 0x101E  # ConnectX family VF (a ConnectX-6 Dx VF)
MSIX_TABLE_OFF = 0x13000
MSIX_PBA_OFF = 0x14000
VAR_OFF = 0x20000
VAR_SIZE = 0x1000
BAR0_SIZE = 0x40000
#: the UAR page: a CQ doorbell (arming) is a write of the u64 at UAR_OFF + UAR_CQ_DB
UAR_OFF = 0x21000
UAR_CQ_DB = 0x20
UAR_IDLE = 0xFFFFFFFFFFFFFFFF
#: the event rings (completion events, error events): one page each, see EQ_*
EVQ_OFF = 0x22000
ERRQ_OFF = 0x23000
#: an event ring page: u32 ``EQ_PROD`` (records written, ever; record i is in slot i % nent),
#: ``EQ_NENT`` (slots), ``EQ_LOST`` (reserved, 0: a driver that fell more than nent behind sees it
#: from its own count); then ``EQ_NENT`` records of EQE_SIZE bytes at EQ_ENTRIES: cookie u64, info
#: u64 (host byte order).  Completion info: the cqn.  Error info: event_type << 56 | error_type << 48
#: | queue_index << 32 | obj_id.
EQ_PROD = 0x0
EQ_NENT = 0x4
EQ_LOST = 0x8
EQ_ENTRIES = 0x10
EQE_SIZE = 16
EQ_SLOTS = 255

# -- the command mailbox at BAR0 offset 0 (registers u32 in host byte order) ------------------

FW_REV = (22 << 16) | 35  # this emulation's firmware: 22.35
CMDIF_REV = 5
R_FW_REV = 0x000
R_CMDIF_REV = 0x004
R_IN_MAX = 0x008
R_OUT_MAX = 0x00C
R_CMD_SEQ = 0x010
R_CMD_ACK = 0x014
R_IN_LEN = 0x018
R_OUT_LEN = 0x01C
R_OUT_WRITTEN = 0x020
R_CMDS_DONE = 0x024
R_CMDS_REFUSED = 0x028
IN_OFF = 0x1000
IN_MAX = 0x10000
OUT_OFF = IN_OFF + IN_MAX
OUT_MAX = 0x1000
SLOT_SIZE = OUT_OFF + OUT_MAX
#: The BAR the slot sits in when it is alone (a power of two).
BAR_SIZE = 0x20000
assert SLOT_SIZE <= MSIX_TABLE_OFF


class Op:
    """Command opcodes."""

    QUERY_HCA_CAP = 0x100
    CREATE_MKEY = 0x200
    DESTROY_MKEY = 0x202
    QUERY_SPECIAL_CONTEXTS = 0x203
    ALLOC_PD = 0x800
    DEALLOC_PD = 0x801
    CREATE_GENERAL_OBJECT = 0xA00
    MODIFY_GENERAL_OBJECT = 0xA01
    QUERY_GENERAL_OBJECT = 0xA02
    DESTROY_GENERAL_OBJECT = 0xA03
    CREATE_UMEM = 0xA08
    DESTROY_UMEM = 0xA0A
    # event objects (facts §3.6)
    CREATE_CQ = 0x400
    DESTROY_CQ = 0x401
    CREATE_QP = 0x500
    DESTROY_QP = 0x501
    RST2INIT_QP = 0x502
    INIT2RTR_QP = 0x503
    RTR2RTS_QP = 0x504
    QUERY_QP = 0x50B
    #: this emulation's: DevX subscribes to an object's events with an ioctl; here it is a command
    SUBSCRIBE_EVENT = 0xA40
    # RSS steering (facts §3.7)
    CREATE_TIR = 0x900
    MODIFY_TIR = 0x901
    DESTROY_TIR = 0x902
    CREATE_RQT = 0x916
    MODIFY_RQT = 0x917
    DESTROY_RQT = 0x918
    QUERY_RQT = 0x919
    SET_FLOW_TABLE_ENTRY = 0x936
    DELETE_FLOW_TABLE_ENTRY = 0x938


class ObjType:
    """General object types (``obj_type`` of the general-object header)."""

    VIRTIO_NET_Q = 0x000D
    VIRTIO_Q_COUNTERS = 0x001C


class Status:
    """Command status codes (the output header's ``status``)."""

    OK = 0x00
    INTERNAL_ERR = 0x01
    BAD_OP = 0x02
    BAD_PARAM = 0x03
    BAD_SYS_STATE = 0x04
    BAD_RESOURCE = 0x05
    RESOURCE_BUSY = 0x06
    EXCEED_LIM = 0x08
    BAD_RES_STATE = 0x09
    NO_RESOURCES = 0x0F
    BAD_INPUT_LEN = 0x50
    BAD_OUTPUT_LEN = 0x51


STATUS_NAMES = {v: k for k, v in vars(Status).items() if not k.startswith("_")}


class Syn:
    """Syndromes: why a command was refused (this emulation's values, one per reason)."""

    NONE = 0
    # framing
    IN_TOO_SHORT = 0x01  # shorter than the header, or than the command's fixed part
    IN_TOO_LONG = 0x02  # longer than the input buffer, or trailing bytes after the command
    OUT_TOO_SHORT = 0x03  # the driver's output length cannot hold the answer
    UNKNOWN_OPCODE = 0x04
    BAD_OP_MOD = 0x05
    UNKNOWN_OBJ_TYPE = 0x06
    FIELD_TOO_WIDE = 0x07  # a value wider than the field's bits
    INTERNAL = 0x08  # a bug in the card (logged), never the driver's fault
    # object references
    UNKNOWN_OBJECT = 0x10  # obj_id names no object of that type
    UNKNOWN_PD = 0x11
    UNKNOWN_MKEY = 0x12
    UNKNOWN_UMEM = 0x13
    UNKNOWN_COUNTERS = 0x14
    UNKNOWN_TIS = 0x15
    OBJECT_IN_USE = 0x16  # destroying something another object still uses
    TOO_MANY_OBJECTS = 0x17
    # memory
    NOT_ALIGNED = 0x20
    UNMAPPED = 0x21  # an IOVA range outside the DMA map
    BAD_ACCESS_MODE = 0x22
    BAD_LENGTH = 0x23
    KLM_COUNT = 0x24  # 0 entries, or more than the caps allow, or not what the length needs
    KLM_BYTE_COUNT = 0x25  # 0 or over 2 GiB, or the entries do not add up to the length
    KLM_TARGET = 0x26  # an entry's mkey is unknown, indirect, or its range leaves the target
    ENTITY_SIZE = 0x27  # KLM_FBS log_entity_size out of [12, 31]
    NULL_MKEY = 0x28  # the null mkey where memory is needed, or destroying it
    # virtq
    QUEUE_INDEX = 0x30  # >= max_num_virtio_queues
    QUEUE_INDEX_IN_USE = 0x31
    QUEUE_SIZE = 0x32  # 0, over the max, or (split) not a power of two
    Q_TYPE = 0x33  # unknown or not in the caps
    EVENT_MODE = 0x34  # unknown or not in the caps
    EVENT_TARGET = 0x35  # MSIX: qp_id is not a vector of the function
    BAD_STATE = 0x36  # a state value that may not be asked for
    STATE_TRANSITION = 0x37  # a transition the state machine does not have
    FIELD_NOT_MODIFIABLE = 0x38  # a modify bit not allowed in the object's state
    UNKNOWN_MODIFY_BIT = 0x39
    MODIFY_CAP = 0x3A  # a modify bit the caps do not announce
    QUEUE_PERIOD = 0x40  # hw_latency_mode 3 (only 0, 1, 2 exist)
    UMEM_SIZE = 0x3B  # a umem size below a*q_size+b
    UMEM_RANGE = 0x3C  # offset + size past the umem
    RING_UNMAPPED = 0x3D  # a ring area the mkey does not translate (checked going RDY)
    FEATURE_CAP = 0x3E  # a queue feature (tso, csum) the caps do not announce
    DIRTY_BITMAP = 0x3F  # dirty bitmap area not translated by its mkey
    RING_INDEX = 0x41  # hw_available_index / hw_used_index that do not fit the ring (going RDY)
    # steering
    RQT_SIZE = 0x50  # rqt_max_size 0 or over 1 << log_max_rqt_size, actual size 0 or over the max
    RQ_TYPE = 0x51  # an RQT of anything but virtqs
    UNKNOWN_RQT = 0x52
    UNKNOWN_TIR = 0x53
    TIR_DISP = 0x54  # a TIR that is not indirect
    HASH_FN = 0x55  # an unknown rx_hash_fn, or hash fields without Toeplitz
    HASH_FIELDS = 0x56  # unknown selected_fields bits, or L4 ports on a TIR with no L4 type
    FLOW_TABLE = 0x57  # a flow table other than the NIC RX root table 0
    FLOW_MATCH = 0x58  # unknown match criteria, ip_version not 4 or 6
    UNKNOWN_FLOW = 0x59
    FLOW_PRIORITY = 0x5A
    # event objects
    CQ_SIZE = 0x60  # log_cq_size 0 or over MAX_LOG_CQ_SIZE
    UNKNOWN_CQ = 0x61
    UNKNOWN_QP = 0x62
    QP_STATE = 0x63  # a QP state move from the wrong state
    EVENT_VECTOR = 0x64  # an event's MSI-X vector is not one of the function's
    EVENT_TYPE = 0x65  # an event type or object type that cannot be subscribed to


SYNDROME_NAMES = {v: k for k, v in vars(Syn).items() if not k.startswith("_")}


class CapType:
    """QUERY_HCA_CAP capability types (``op_mod`` = type << 1 | current)."""

    GENERAL = 0x00
    VDPA_EMULATION = 0x13


def cap_op_mod(cap_type: int, current: bool = True) -> int:
    return (cap_type << 1) | int(current)


class AccessMode:
    """mkey access modes (facts §3.3)."""

    PA = 0x0
    MTT = 0x1  # direct: the mkey's range is a range of the DMA map
    KLM = 0x2
    KLM_FBS = 0x3


#: MLX5_MAX_KLM_BYTE_COUNT: a KLM entry covers at most 2 GiB.
MAX_KLM_BYTE_COUNT = 0x80000000
#: MLX5_MIN_KLM_FIXED_BUFFER_SIZE: the smallest KLM_FBS entity.
MIN_KLM_FIXED_BUFFER_SIZE = 0x1000


class QType:
    SPLIT = 0
    PACKED = 1


class EventMode:
    NO_MSIX = 0
    QP = 1
    MSIX = 2


class QState:
    INIT = 0
    RDY = 1
    SUSPEND = 2
    ERROR = 3


class Modify:
    """``modify_field_select`` bits of a VIRTIO_NET_Q (facts §3.4)."""

    STATE = 1 << 0
    DIRTY_BITMAP_PARAMS = 1 << 3
    DIRTY_BITMAP_DUMP_ENABLE = 1 << 4
    QUEUE_PERIOD = 1 << 5
    ADDR = 1 << 6
    HW_AVAILABLE_INDEX = 1 << 7
    HW_USED_INDEX = 1 << 8
    Q_TYPE = 1 << 9
    VERSION_1_0 = 1 << 10
    Q_MKEY = 1 << 11
    QUEUE_FEATURE_BIT_MASK = 1 << 12
    EVENT_MODE = 1 << 13


#: modify bit -> the virtq attributes it changes.
MODIFY_FIELDS = {
    Modify.STATE: ("state",),
    Modify.DIRTY_BITMAP_PARAMS: ("dirty_bitmap_mkey", "dirty_bitmap_size", "dirty_bitmap_addr"),
    Modify.DIRTY_BITMAP_DUMP_ENABLE: ("dirty_bitmap_dump_enable",),
    Modify.QUEUE_PERIOD: ("hw_latency_mode", "hw_max_latency_us", "hw_max_pending_comp"),
    Modify.ADDR: ("desc_addr", "used_addr", "available_addr"),
    Modify.HW_AVAILABLE_INDEX: ("hw_available_index",),
    Modify.HW_USED_INDEX: ("hw_used_index",),
    Modify.Q_TYPE: ("q_type",),
    Modify.VERSION_1_0: ("virtio_version_1_0",),
    Modify.Q_MKEY: ("mkey",),
    Modify.QUEUE_FEATURE_BIT_MASK: ("tso_ipv4", "tso_ipv6", "tx_csum", "rx_csum"),
    Modify.EVENT_MODE: ("event_mode", "qp_id"),
}
MODIFY_KNOWN = sum(MODIFY_FIELDS)

#: The counters object's fields, in the order of DPDK's stats names (facts §3.9).
COUNTER_NAMES = ("received_desc", "completed_desc", "bad_desc_errors", "exceed_max_chain", "invalid_buffer",
                 "error_cqes")
STAT_NAMES = ("received_descriptors", "completed_descriptors", "bad descriptor errors", "exceed max chain",
              "invalid buffer", "completion errors")

class RqType:
    """An RQT's entries: receive queues or VIRTIO_NET_Q virtqs (``MLX5_INLINE_Q_TYPE_VIRTQ``)."""

    RQ = 0
    VIRTQ = 1


class TirDisp:
    DIRECT = 0
    INDIRECT = 1


class HashFn:
    """``rx_hash_fn`` of a TIR."""

    NONE = 0
    INVERTED_XOR8 = 1
    TOEPLITZ = 2


class HashField:
    """``selected_fields`` bits of a TIR's hash."""

    SRC_IP = 1 << 0
    DST_IP = 1 << 1
    L4_SPORT = 1 << 2
    L4_DPORT = 1 << 3


HASH_FIELDS_KNOWN = HashField.SRC_IP | HashField.DST_IP | HashField.L4_SPORT | HashField.L4_DPORT


class L3Type:
    IPV4 = 0
    IPV6 = 1


class L4Type:
    TCP = 0
    UDP = 1


class Match:
    """``match_criteria`` bits of a flow rule (the outer headers)."""

    IP_VERSION = 1 << 0
    IP_PROTOCOL = 1 << 1


MATCH_KNOWN = Match.IP_VERSION | Match.IP_PROTOCOL

class QpState:
    RST = 0
    INIT = 1
    RTR = 2
    RTS = 3


#: QP state moves: opcode -> (from, to)
QP_MOVES = {Op.RST2INIT_QP: (QpState.RST, QpState.INIT), Op.INIT2RTR_QP: (QpState.INIT, QpState.RTR),
            Op.RTR2RTS_QP: (QpState.RTR, QpState.RTS)}

MAX_LOG_CQ_SIZE = 15
#: a CQE: 64 bytes; the card writes cqes[0] only when use_first_only, else cqes[n % size]
CQE_SIZE = 64
CQE_TIMESTAMP = 0x30  # big-endian u64: when the CQE was written (the emulated card: CLOCK_MONOTONIC ns)
CQE_WQE_COUNTER = 0x3C  # big-endian u16
CQE_OP_OWN = 0x3F  # opcode << 4 | owner bit
CQE_OPCODE_REQ = 0x0
#: the CQ doorbell record: u32 BE consumer index at 0, u32 BE arm word at 4 (sn << 28 | cmd << 24 | ci)
DBR_CI = 0x0
DBR_ARM = 0x4
#: The CQ consumer index (doorbell record and arm word) is 24 bits (MLX5_CI_MASK).
CQ_CI_MASK = 0xFFFFFF
CQ_DB_CMD_ALL = 0  # an event on any completion
CQ_DB_CMD_SOL = 1  # (solicited only: treated as ALL)


class EventType:
    OBJECT_CHANGE = 0x27
    COMPLETION = 0x00


#: The symmetric Toeplitz key DPDK's mlx5 vDPA driver gives its TIRs (facts §3.7).
VDPA_RSS_KEY = bytes.fromhex("2cc681d15bdbf4f7fca28319db1a3e946b9e38d92c9c03d1ad9944a7d9563d59063c25f3fc1fdc2a")
#: The NIC RX root flow table: the only table.
FLOW_TABLE_NIC_RX = 0
MAX_FLOW_PRIORITY = 15

_WIDTH = {"B": 8, "H": 16, "I": 32, "Q": 64}


class CmdError(Exception):
    """A command refused: answered with ``status`` and ``syndrome``, never escaping the card loop."""

    def __init__(self, status: int, syndrome: int, msg: str = ""):
        super().__init__(msg or SYNDROME_NAMES.get(syndrome, hex(syndrome)))
        self.status = status
        self.syndrome = syndrome


class Field(NamedTuple):
    name: str
    code: str
    bits: int
    offset: int


class Layout:
    """A big-endian structure: ``[(name, code) | (name, code, bits), ...]`` with codes B, H, I, Q."""

    def __init__(self, name: str, fields):
        self.name = name
        self.fields: list[Field] = []
        off = 0
        for f in fields:
            fname, code = f[0], f[1]
            bits = f[2] if len(f) > 2 else _WIDTH[code]
            self.fields.append(Field(fname, code, bits, off))
            off += struct.calcsize(">" + code)
        self.struct = struct.Struct(">" + "".join(f.code for f in self.fields))
        self.size = self.struct.size
        self.names = tuple(f.name for f in self.fields if not f.name.startswith("_r"))
        self.by_name = {f.name: f for f in self.fields}

    def pack(self, **values) -> bytes:
        """The bytes of ``values`` (absent fields are 0); KeyError for a name the layout lacks."""
        for k in values:
            if k not in self.by_name:
                raise KeyError(f"{self.name} has no field {k!r}")
        return self.struct.pack(*(int(values.get(f.name, 0)) & ((1 << _WIDTH[f.code]) - 1) for f in self.fields))

    def unpack(self, buf, offset: int = 0) -> dict:
        vals = self.struct.unpack_from(buf, offset)
        return {f.name: v for f, v in zip(self.fields, vals) if not f.name.startswith("_r")}

    def too_wide(self, values: dict) -> str | None:
        """The first field whose value does not fit its bits, or None."""
        for f in self.fields:
            v = values.get(f.name, 0)
            if f.bits < _WIDTH[f.code] and v >> f.bits:
                return f.name
        return None


IN_HDR = Layout("in_hdr", [("opcode", "H"), ("uid", "H"), ("_r0", "H"), ("op_mod", "H")])
OUT_HDR = Layout("out_hdr", [("status", "B"), ("_r0", "B"), ("_r1", "H"), ("syndrome", "I")])
OBJ_IN_HDR = Layout("general_obj_in_hdr", [("opcode", "H"), ("uid", "H"), ("_r0", "H"), ("obj_type", "H"),
                                           ("obj_id", "I"), ("_r1", "I")])
OBJ_OUT = Layout("general_obj_out", [("obj_id", "I"), ("_r0", "I")])

#: QUERY_HCA_CAP, cap type GENERAL: what the vDPA driver reads besides the vdpa caps.
GENERAL_CAPS = Layout("general_caps", [
    ("log_max_rqt_size", "B", 5),
    ("log_max_klm_list_size", "B", 6),  # entries one indirect mkey may have: 1 << this
    ("vnet_modify_ext", "B", 1),
    ("queue_counters_valid", "B", 1),  # VIRTIO_Q_COUNTERS objects exist
    ("num_msix_vectors", "H"),  # vectors a virtq may name in MSIX event mode
    ("_r0", "H"),
    ("general_obj_types", "Q"),  # bit n: general object type n is supported
])

#: QUERY_HCA_CAP, cap type VDPA_EMULATION (facts §3.2, §3.4).
VDPA_CAPS = Layout("vdpa_caps", [
    ("valid", "B", 1),
    ("virtio_queue_type", "B", 2),  # bit 0 split, bit 1 packed
    ("event_mode", "B", 3),  # bit n: event_mode n supported (NO_MSIX, QP, MSIX)
    ("virtio_version_1_0", "B", 1),
    ("tso_ipv4", "B", 1),
    ("tso_ipv6", "B", 1),
    ("tx_csum", "B", 1),
    ("rx_csum", "B", 1),
    ("virtio_net_q_addr_modify", "B", 1),
    ("virtio_q_index_modify", "B", 1),
    ("_r0", "B"),
    ("max_num_virtio_queues", "H"),
    ("max_queue_size", "H"),  # 0 = 65536 is not used: at most 32768
    ("_r1", "H"),
    ("umem_1_buffer_param_a", "I"),
    ("umem_1_buffer_param_b", "I"),
    ("umem_2_buffer_param_a", "I"),
    ("umem_2_buffer_param_b", "I"),
    ("umem_3_buffer_param_a", "I"),
    ("umem_3_buffer_param_b", "I"),
])

#: CREATE_MKEY after IN_HDR; then ``klm_num`` :data:`KLM` entries (indirect modes).
MKEY_IN = Layout("create_mkey", [
    ("access_mode", "B", 2),
    ("log_entity_size", "B", 5),
    ("local_write", "B", 1),
    ("mkey_7_0", "B"),  # the key byte the caller chooses (the mkey is index << 8 | this)
    ("pd", "I"),
    ("start_addr", "Q"),  # the mkey's own address space begins here
    ("len", "Q"),
    ("klm_num", "I"),  # KLM / KLM_FBS entries that follow
    ("_r0", "I"),
    ("mtt_iova", "Q"),  # MTT (direct): the DMA-map IOVA start_addr stands for
])
#: One KLM entry: ``byte_count`` (KLM mode; ignored in KLM_FBS), the target ``mkey``, the
#: ``address`` in that mkey's space.
KLM = Layout("klm", [("byte_count", "I"), ("mkey", "I"), ("address", "Q")])
MKEY_OUT = Layout("create_mkey_out", [("mkey", "I"), ("_r0", "I")])
MKEY_REF = Layout("mkey_ref", [("mkey", "I"), ("_r0", "I")])
SPECIAL_CONTEXTS_OUT = Layout("special_contexts", [("_r0", "I"), ("null_mkey", "I")])
PD_OUT = Layout("alloc_pd_out", [("pd", "I"), ("_r0", "I")])
PD_REF = Layout("pd_ref", [("pd", "I"), ("_r0", "I")])
#: CREATE_UMEM: memory the driver registers for the card's own use, a range of the DMA map.
UMEM_IN = Layout("create_umem", [("iova", "Q"), ("size", "Q")])
UMEM_OUT = Layout("create_umem_out", [("umem_id", "I"), ("_r0", "I")])
UMEM_REF = Layout("umem_ref", [("umem_id", "I"), ("_r0", "I")])

#: The VIRTIO_NET_Q object body (create, modify, query) after the general-object header.
VIRTQ = Layout("virtio_net_q", [
    ("modify_field_select", "Q"),
    ("queue_index", "H"),
    ("q_type", "B", 2),
    ("event_mode", "B", 3),
    ("state", "B", 4),
    ("error_type", "B"),  # query only
    ("hw_latency_mode", "B", 2),
    ("virtio_version_1_0", "B", 1),
    ("tso_ipv4", "B", 1),
    ("tso_ipv6", "B", 1),
    ("tx_csum", "B", 1),
    ("rx_csum", "B", 1),
    ("dirty_bitmap_dump_enable", "B", 1),
    ("_r0", "B"),
    ("q_size", "H"),
    ("hw_available_index", "H"),
    ("hw_used_index", "H"),
    ("hw_max_latency_us", "H", 12),
    ("hw_max_pending_comp", "H"),
    ("_r1", "H"),
    ("qp_id", "I", 24),  # the event QPN (QP mode) or the MSI-X vector (MSIX mode)
    ("mkey", "I"),
    ("pd", "I", 24),
    ("tis_id", "I", 24),
    ("counters_obj_id", "I"),
    ("dirty_bitmap_mkey", "I"),
    ("dirty_bitmap_size", "I"),
    ("_r2", "I"),
    ("desc_addr", "Q"),
    ("used_addr", "Q"),
    ("available_addr", "Q"),
    ("dirty_bitmap_addr", "Q"),
    ("umem_1_id", "I"), ("umem_1_size", "I"), ("umem_1_offset", "Q"),
    ("umem_2_id", "I"), ("umem_2_size", "I"), ("umem_2_offset", "Q"),
    ("umem_3_id", "I"), ("umem_3_size", "I"), ("umem_3_offset", "Q"),
])

#: The VIRTIO_Q_COUNTERS object as queried (create has no body).
COUNTERS = Layout("virtio_q_counters", [
    ("received_desc", "Q"),
    ("completed_desc", "Q"),
    ("bad_desc_errors", "I"),
    ("exceed_max_chain", "I"),
    ("invalid_buffer", "I"),
    ("error_cqes", "I"),
])

#: CREATE_CQ after IN_HDR: 2^log_cq_size CQEs at ``cqe_iova`` (DMA map), the doorbell record at
#: ``dbr_iova``; completion events go to the event ring with ``cookie`` and signal MSI-X ``vector``.
CQ_IN = Layout("create_cq", [("log_cq_size", "B", 5), ("use_first_only", "B", 1), ("_r0", "H"), ("vector", "I"),
                             ("cqe_iova", "Q"), ("dbr_iova", "Q"), ("cookie", "Q")])
CQ_OUT = Layout("create_cq_out", [("cqn", "I", 24), ("_r0", "I")])
CQ_REF = Layout("cq_ref", [("cqn", "I", 24), ("_r0", "I")])
#: CREATE_QP after IN_HDR: ``cqn`` 0 for a QP with no CQ (the FW QP a virtq points at).
QP_IN = Layout("create_qp", [("cqn", "I", 24), ("log_rq_size", "B", 5), ("_r0", "B"), ("_r1", "H")])
QP_OUT = Layout("create_qp_out", [("qpn", "I", 24), ("_r0", "I")])
QP_REF = Layout("qp_ref", [("qpn", "I", 24), ("_r0", "I")])
#: RST2INIT / INIT2RTR / RTR2RTS after IN_HDR: ``remote_qpn`` is taken at INIT2RTR (the peer QP).
QP_MODIFY = Layout("qp_modify", [("qpn", "I", 24), ("remote_qpn", "I", 24)])
QP_QUERY_OUT = Layout("query_qp_out", [("state", "B", 4), ("_r0", "B"), ("_r1", "H"), ("cqn", "I", 24),
                                       ("remote_qpn", "I", 24), ("_r2", "I")])
#: SUBSCRIBE_EVENT after IN_HDR: events ``event_type`` of object (obj_type, obj_id) go to the error
#: event ring with ``cookie`` and signal MSI-X ``vector``.  OBJECT_CHANGE of a VIRTIO_NET_Q only.
SUBSCRIBE_IN = Layout("subscribe_event", [("obj_type", "H"), ("event_type", "H"), ("obj_id", "I"), ("vector", "I"),
                                          ("_r0", "I"), ("cookie", "Q")])

#: CREATE_RQT after IN_HDR: then ``rqt_actual_size`` :data:`RQ_ENTRY` (the virtq object ids).
RQT_IN = Layout("create_rqt", [("rq_type", "B", 1), ("_r0", "B"), ("rqt_max_size", "H"), ("rqt_actual_size", "H"),
                               ("_r1", "H")])
#: MODIFY_RQT after IN_HDR: the RQT number, then a new list.
RQT_MODIFY = Layout("modify_rqt", [("rqtn", "I", 24), ("_r0", "I"), ("rq_type", "B", 1), ("_r1", "B"),
                                   ("rqt_max_size", "H"), ("rqt_actual_size", "H"), ("_r2", "H")])
RQ_ENTRY = Layout("rq_entry", [("rq_num", "I", 24)])
RQT_OUT = Layout("create_rqt_out", [("rqtn", "I", 24), ("_r0", "I")])
RQT_REF = Layout("rqt_ref", [("rqtn", "I", 24), ("_r0", "I")])
#: QUERY_RQT's answer: the context, then the list (``rqt_actual_size`` entries, up to the output room).
RQT_QUERY_OUT = RQT_IN
#: CREATE_TIR after IN_HDR: an indirect TIR hashing into an RQT.  ``toeplitz_key_0..4`` are the
#: 40-byte key, big-endian, first byte first.
TIR_IN = Layout("create_tir", [
    ("disp_type", "B", 1),
    ("rx_hash_fn", "B", 2),
    ("rx_hash_symmetric", "B", 1),
    ("l3_prot_type", "B", 1),
    ("l4_prot_type", "B", 1),
    ("_r0", "B"), ("_r1", "B"),
    ("selected_fields", "I"),
    ("indirect_table", "I", 24),  # the RQT number
    ("transport_domain", "I", 24),  # recorded, not checked
    ("_r2", "I"),
    ("toeplitz_key_0", "Q"), ("toeplitz_key_1", "Q"), ("toeplitz_key_2", "Q"), ("toeplitz_key_3", "Q"),
    ("toeplitz_key_4", "Q"),
])
#: MODIFY_TIR after IN_HDR: the TIR number, then the whole context anew (as CREATE_TIR's).
TIR_MODIFY = Layout("modify_tir", [("tirn", "I", 24), ("_rm", "I")] + [
    (f.name, f.code, f.bits) for f in TIR_IN.fields])
TIR_OUT = Layout("create_tir_out", [("tirn", "I", 24), ("_r0", "I")])
TIR_REF = Layout("tir_ref", [("tirn", "I", 24), ("_r0", "I")])
#: SET_FLOW_TABLE_ENTRY after IN_HDR: create (or replace) rule ``flow_index`` of table ``table_id``:
#: frames matching ``match_criteria`` (:class:`Match`) go to TIR ``tirn``; the lowest ``priority``
#: value wins.  DELETE_FLOW_TABLE_ENTRY takes :data:`FLOW_REF`.
FLOW_IN = Layout("set_flow_table_entry", [
    ("table_id", "I", 24),
    ("flow_index", "I"),
    ("priority", "B", 4),
    ("match_criteria", "B", 2),
    ("ip_version", "B", 4),
    ("ip_protocol", "B"),
    ("tirn", "I", 24),
])
FLOW_REF = Layout("flow_ref", [("table_id", "I", 24), ("flow_index", "I")])


def toeplitz_key_fields(key: bytes) -> dict:
    """A 40-byte key as the TIR's ``toeplitz_key_0..4`` fields."""
    if len(key) != 40:
        raise ValueError("a Toeplitz key is 40 bytes")
    return {f"toeplitz_key_{i}": int.from_bytes(key[8 * i : 8 * i + 8], "big") for i in range(5)}


def toeplitz_key_bytes(fields: dict) -> bytes:
    return b"".join(fields[f"toeplitz_key_{i}"].to_bytes(8, "big") for i in range(5))


#: General object type -> (name, body layout for create/modify, body layout a query returns).
OBJECT_TYPES = {
    ObjType.VIRTIO_NET_Q: ("VIRTIO_NET_Q", VIRTQ, VIRTQ),
    ObjType.VIRTIO_Q_COUNTERS: ("VIRTIO_Q_COUNTERS", None, COUNTERS),
}


class Command(NamedTuple):
    """One row of the opcode table.

    ``header``: the input header layout; ``body``: the fixed input after it (None: nothing);
    ``tail``: a repeated entry after the body (its count is the body field ``count``);
    ``handler``: the name of the card's method that runs it (``nic.mlx5.objects.Hca``; a driver ignores it).
    """

    name: str
    header: Layout
    body: Layout | None
    tail: Layout | None
    count: str | None
    handler: str


COMMANDS: dict[int, Command] = {
    Op.QUERY_HCA_CAP: Command("QUERY_HCA_CAP", IN_HDR, None, None, None, "query_hca_cap"),
    Op.CREATE_MKEY: Command("CREATE_MKEY", IN_HDR, MKEY_IN, KLM, "klm_num", "create_mkey"),
    Op.DESTROY_MKEY: Command("DESTROY_MKEY", IN_HDR, MKEY_REF, None, None, "destroy_mkey"),
    Op.QUERY_SPECIAL_CONTEXTS: Command("QUERY_SPECIAL_CONTEXTS", IN_HDR, None, None, None, "query_special_contexts"),
    Op.ALLOC_PD: Command("ALLOC_PD", IN_HDR, None, None, None, "alloc_pd"),
    Op.DEALLOC_PD: Command("DEALLOC_PD", IN_HDR, PD_REF, None, None, "dealloc_pd"),
    Op.CREATE_UMEM: Command("CREATE_UMEM", IN_HDR, UMEM_IN, None, None, "create_umem"),
    Op.DESTROY_UMEM: Command("DESTROY_UMEM", IN_HDR, UMEM_REF, None, None, "destroy_umem"),
    # general objects: the body depends on obj_type (OBJECT_TYPES)
    Op.CREATE_GENERAL_OBJECT: Command("CREATE_GENERAL_OBJECT", OBJ_IN_HDR, None, None, None, "create_object"),
    Op.MODIFY_GENERAL_OBJECT: Command("MODIFY_GENERAL_OBJECT", OBJ_IN_HDR, None, None, None, "modify_object"),
    Op.QUERY_GENERAL_OBJECT: Command("QUERY_GENERAL_OBJECT", OBJ_IN_HDR, None, None, None, "query_object"),
    Op.DESTROY_GENERAL_OBJECT: Command("DESTROY_GENERAL_OBJECT", OBJ_IN_HDR, None, None, None, "destroy_object"),
    # event objects
    Op.CREATE_CQ: Command("CREATE_CQ", IN_HDR, CQ_IN, None, None, "create_cq"),
    Op.DESTROY_CQ: Command("DESTROY_CQ", IN_HDR, CQ_REF, None, None, "destroy_cq"),
    Op.CREATE_QP: Command("CREATE_QP", IN_HDR, QP_IN, None, None, "create_qp"),
    Op.DESTROY_QP: Command("DESTROY_QP", IN_HDR, QP_REF, None, None, "destroy_qp"),
    Op.RST2INIT_QP: Command("RST2INIT_QP", IN_HDR, QP_MODIFY, None, None, "move_qp"),
    Op.INIT2RTR_QP: Command("INIT2RTR_QP", IN_HDR, QP_MODIFY, None, None, "move_qp"),
    Op.RTR2RTS_QP: Command("RTR2RTS_QP", IN_HDR, QP_MODIFY, None, None, "move_qp"),
    Op.QUERY_QP: Command("QUERY_QP", IN_HDR, QP_REF, None, None, "query_qp"),
    Op.SUBSCRIBE_EVENT: Command("SUBSCRIBE_EVENT", IN_HDR, SUBSCRIBE_IN, None, None, "subscribe_event"),
    # RSS steering
    Op.CREATE_RQT: Command("CREATE_RQT", IN_HDR, RQT_IN, RQ_ENTRY, "rqt_actual_size", "create_rqt"),
    Op.MODIFY_RQT: Command("MODIFY_RQT", IN_HDR, RQT_MODIFY, RQ_ENTRY, "rqt_actual_size", "modify_rqt"),
    Op.QUERY_RQT: Command("QUERY_RQT", IN_HDR, RQT_REF, None, None, "query_rqt"),
    Op.DESTROY_RQT: Command("DESTROY_RQT", IN_HDR, RQT_REF, None, None, "destroy_rqt"),
    Op.CREATE_TIR: Command("CREATE_TIR", IN_HDR, TIR_IN, None, None, "create_tir"),
    Op.MODIFY_TIR: Command("MODIFY_TIR", IN_HDR, TIR_MODIFY, None, None, "modify_tir"),
    Op.DESTROY_TIR: Command("DESTROY_TIR", IN_HDR, TIR_REF, None, None, "destroy_tir"),
    Op.SET_FLOW_TABLE_ENTRY: Command("SET_FLOW_TABLE_ENTRY", IN_HDR, FLOW_IN, None, None, "set_flow"),
    Op.DELETE_FLOW_TABLE_ENTRY: Command("DELETE_FLOW_TABLE_ENTRY", IN_HDR, FLOW_REF, None, None, "delete_flow"),
}
