"""mlx5 card VIRTIO_NET_Q objects: create/modify/query/destroy, the state machine, modify bits per
state, umem sizes, references (facts §3.4)."""

import itertools

import pytest

from dataplane.hwspec.mlx5_prm import (
    OBJ_IN_HDR,
    VIRTQ,
    AccessMode,
    EventMode,
    Modify,
    ObjType,
    Op,
    QState,
    QType,
    Status,
    Syn,
)
from dataplane.nic.mlx5.objects import umem_size

MIB = 1 << 20
GUEST = 0x0  # 4 MiB of guest memory at GPA = IOVA 0
UMEM_IOVA = 0x10000000  # the driver's umem memory, DMA-mapped apart
Q = 256
DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000


@pytest.fixture
def vq(mlx5):
    """Guest memory with a direct mkey, umem memory, a pd, a counters object, and a factory of virtq attributes."""
    mlx5.map_memory(GUEST, 4 * MIB)
    mlx5.map_memory(UMEM_IOVA, 4 * MIB)
    fw = mlx5.fw
    pd = fw.alloc_pd().fields["pd"]
    mkey = fw.create_mkey(AccessMode.MTT, pd=pd, start_addr=GUEST, len=4 * MIB, mtt_iova=GUEST).fields["mkey"]
    umems = [fw.create_umem(UMEM_IOVA + i * 0x40000, 0x40000).fields["umem_id"] for i in range(6)]
    counters = fw.create_counters().fields["obj_id"]

    class V:
        pass

    v = V()
    v.fw, v.hca, v.pd, v.mkey, v.umems, v.counters = fw, mlx5.hca, pd, mkey, umems, counters

    def attrs(umem_set: int = 0, **over):
        a = dict(queue_index=0, q_type=QType.SPLIT, event_mode=EventMode.NO_MSIX, state=QState.INIT, q_size=Q,
                 pd=pd, mkey=mkey, virtio_version_1_0=1, desc_addr=DESC, available_addr=AVAIL, used_addr=USED,
                 counters_obj_id=counters)
        for i in (1, 2, 3):
            a[f"umem_{i}_id"] = umems[3 * umem_set + i - 1]
            a[f"umem_{i}_size"] = umem_size(mlx5.hca.caps, i, over.get("q_size", Q))
            a[f"umem_{i}_offset"] = 0
        a.update(over)
        return a

    def create(**over):
        r = fw.create_virtq(**attrs(**over))
        assert r.status == Status.OK, r
        return r.fields["obj_id"]

    def state(oid):
        return fw.query_virtq(oid).fields["state"]

    v.attrs, v.create, v.state = attrs, create, state
    return v


def _refused(r, status, syn):
    assert (r.status, r.syndrome) == (status, syn), r


def test_create_query_destroy(vq):
    a = vq.attrs(hw_available_index=7, hw_used_index=5, event_mode=EventMode.MSIX, qp_id=3, hw_latency_mode=1,
                 hw_max_latency_us=4095, hw_max_pending_comp=65535)
    r = vq.fw.create_virtq(**a)
    assert r.status == Status.OK
    oid = r.fields["obj_id"]
    q = vq.fw.query_virtq(oid)
    assert q.status == Status.OK
    assert q.fields == {**{n: 0 for n in VIRTQ.names}, **a, "error_type": 0}
    assert vq.fw.destroy_virtq(oid).status == Status.OK
    for r in (vq.fw.query_virtq(oid), vq.fw.destroy_virtq(oid), vq.fw.modify_virtq(oid, Modify.STATE, state=1)):
        _refused(r, Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT)


def test_packed_queue_sizes_need_not_be_powers_of_two(vq):
    oid = vq.create(q_type=QType.PACKED, q_size=300)
    assert vq.fw.modify_virtq(oid, Modify.STATE, state=QState.RDY).status == Status.OK


# -- the state machine -----------------------------------------------------------------------

_PATH = {QState.INIT: [], QState.RDY: [QState.RDY], QState.SUSPEND: [QState.RDY, QState.SUSPEND]}
_LEGAL = {(QState.INIT, QState.RDY), (QState.RDY, QState.SUSPEND), (QState.SUSPEND, QState.RDY),
          (QState.INIT, QState.INIT), (QState.RDY, QState.RDY), (QState.SUSPEND, QState.SUSPEND)}
_STATES = (QState.INIT, QState.RDY, QState.SUSPEND, QState.ERROR)


@pytest.mark.parametrize("frm,to", list(itertools.product(_STATES, _STATES)))
def test_state_transitions(vq, frm, to):
    oid = vq.create()
    if frm == QState.ERROR:
        vq.fw.modify_virtq(oid, Modify.STATE, state=QState.RDY)
        vq.hca.virtq_error(oid, 3)  # the datapath met a fault
    else:
        for s in _PATH[frm]:
            assert vq.fw.modify_virtq(oid, Modify.STATE, state=s).status == Status.OK
    assert vq.state(oid) == frm
    r = vq.fw.modify_virtq(oid, Modify.STATE, state=to)
    if (frm, to) in _LEGAL:
        assert r.status == Status.OK
        assert vq.state(oid) == to
        return
    if frm == QState.ERROR:
        _refused(r, Status.BAD_RES_STATE, Syn.FIELD_NOT_MODIFIABLE)  # nothing is modifiable in ERROR
    elif to == QState.ERROR:
        _refused(r, Status.BAD_PARAM, Syn.BAD_STATE)  # only the device enters ERROR
    else:
        _refused(r, Status.BAD_RES_STATE, Syn.STATE_TRANSITION)
    assert vq.state(oid) == frm


def test_state_values_beyond_the_enum(vq):
    oid = vq.create()
    _refused(vq.fw.modify_virtq(oid, Modify.STATE, state=7), Status.BAD_PARAM, Syn.BAD_STATE)
    _refused(vq.fw.modify_virtq(oid, Modify.STATE, state=16), Status.BAD_PARAM, Syn.FIELD_TOO_WIDE)  # 4 bits
    assert vq.state(oid) == QState.INIT


def test_error_state_is_queried_and_destroyed(vq):
    oid = vq.create()
    vq.fw.modify_virtq(oid, Modify.STATE, state=QState.RDY)
    vq.hca.virtq_error(oid, 34)
    q = vq.fw.query_virtq(oid).fields
    assert (q["state"], q["error_type"]) == (QState.ERROR, 34)
    _refused(vq.fw.modify_virtq(oid, Modify.HW_AVAILABLE_INDEX, hw_available_index=1), Status.BAD_RES_STATE,
             Syn.FIELD_NOT_MODIFIABLE)
    assert vq.fw.destroy_virtq(oid).status == Status.OK
    assert vq.create() > 0  # its umems and counters are free again


def test_suspend_query_and_restore_indices(vq):
    """DPDK's stop: SUSPEND, query the hardware indices; a later virtq starts from them."""
    oid = vq.create(hw_available_index=100, hw_used_index=98)
    fw = vq.fw
    assert fw.modify_virtq(oid, Modify.STATE, state=QState.RDY).status == Status.OK
    assert fw.modify_virtq(oid, Modify.STATE, state=QState.SUSPEND).status == Status.OK
    q = fw.query_virtq(oid).fields
    assert (q["state"], q["hw_available_index"], q["hw_used_index"]) == (QState.SUSPEND, 100, 98)
    assert fw.destroy_virtq(oid).status == Status.OK
    oid2 = vq.create(hw_available_index=q["hw_available_index"], hw_used_index=q["hw_used_index"])
    q2 = fw.query_virtq(oid2).fields
    assert (q2["hw_available_index"], q2["hw_used_index"]) == (100, 98)


# -- modify bits per state ---------------------------------------------------------------------


def test_pre_created_virtq_is_programmed_in_init(vq):
    """A pre-created virtq (facts §3.4): created without rings, then one modify of
    STATE|ADDR|indices|VERSION|Q_TYPE|MKEY|FEATURES|EVENT_MODE in INIT, then RDY."""
    oid = vq.create(desc_addr=0, available_addr=0, used_addr=0, virtio_version_1_0=0)
    sel = (Modify.STATE | Modify.ADDR | Modify.HW_AVAILABLE_INDEX | Modify.HW_USED_INDEX | Modify.VERSION_1_0
           | Modify.Q_TYPE | Modify.Q_MKEY | Modify.QUEUE_FEATURE_BIT_MASK | Modify.EVENT_MODE)
    r = vq.fw.modify_virtq(oid, sel, **vq.attrs(state=QState.INIT, hw_available_index=9, hw_used_index=9,
                                                 event_mode=EventMode.MSIX, qp_id=1))
    assert r.status == Status.OK, r
    q = vq.fw.query_virtq(oid).fields
    assert (q["desc_addr"], q["available_addr"], q["used_addr"]) == (DESC, AVAIL, USED)
    assert (q["hw_available_index"], q["virtio_version_1_0"], q["event_mode"], q["qp_id"]) == (9, 1, EventMode.MSIX, 1)
    assert vq.fw.modify_virtq(oid, Modify.STATE, state=QState.RDY).status == Status.OK


@pytest.mark.parametrize("bit,values", [
    (Modify.HW_AVAILABLE_INDEX, dict(hw_available_index=3)),
    (Modify.HW_USED_INDEX, dict(hw_used_index=3)),
    (Modify.ADDR, dict(desc_addr=DESC + 0x4000, available_addr=AVAIL, used_addr=USED)),
    (Modify.Q_TYPE, dict(q_type=QType.PACKED)),
    (Modify.VERSION_1_0, dict(virtio_version_1_0=0)),
    (Modify.Q_MKEY, {}),
    (Modify.QUEUE_FEATURE_BIT_MASK, {}),
    (Modify.EVENT_MODE, dict(event_mode=EventMode.MSIX, qp_id=0)),
])
def test_fields_not_modifiable_while_ready_but_in_suspend(vq, bit, values):
    oid = vq.create()
    fw = vq.fw
    fw.modify_virtq(oid, Modify.STATE, state=QState.RDY)
    before = fw.query_virtq(oid).fields
    v = {**vq.attrs(state=QState.RDY), **values}
    _refused(fw.modify_virtq(oid, bit, **v), Status.BAD_RES_STATE, Syn.FIELD_NOT_MODIFIABLE)
    assert fw.query_virtq(oid).fields == before
    assert fw.modify_virtq(oid, Modify.STATE, state=QState.SUSPEND).status == Status.OK
    v["state"] = QState.SUSPEND
    assert fw.modify_virtq(oid, bit, **v).status == Status.OK
    after = fw.query_virtq(oid).fields
    for k, val in values.items():
        assert after[k] == val


def test_queue_period_and_dirty_bitmap_while_ready(vq):
    oid = vq.create()
    fw = vq.fw
    fw.modify_virtq(oid, Modify.STATE, state=QState.RDY)
    assert fw.modify_virtq(oid, Modify.QUEUE_PERIOD, hw_latency_mode=2, hw_max_latency_us=50,
                           hw_max_pending_comp=16, state=QState.RDY).status == Status.OK
    _refused(fw.modify_virtq(oid, Modify.QUEUE_PERIOD, hw_latency_mode=3), Status.BAD_PARAM, Syn.QUEUE_PERIOD)
    _refused(fw.modify_virtq(oid, Modify.QUEUE_PERIOD, hw_max_latency_us=4096), Status.BAD_PARAM,
             Syn.FIELD_TOO_WIDE)
    # the dirty bitmap: an mkey over the log (here a direct mkey over a page of guest memory)
    bm = dict(dirty_bitmap_mkey=vq.mkey, dirty_bitmap_addr=0x200000, dirty_bitmap_size=0x1000)
    assert fw.modify_virtq(oid, Modify.DIRTY_BITMAP_PARAMS, **bm).status == Status.OK
    assert fw.modify_virtq(oid, Modify.DIRTY_BITMAP_DUMP_ENABLE, dirty_bitmap_dump_enable=1).status == Status.OK
    q = fw.query_virtq(oid).fields
    assert (q["hw_latency_mode"], q["hw_max_latency_us"], q["hw_max_pending_comp"]) == (2, 50, 16)
    assert q["dirty_bitmap_dump_enable"] == 1 and q["dirty_bitmap_addr"] == 0x200000
    assert q["state"] == QState.RDY
    _refused(fw.modify_virtq(oid, Modify.DIRTY_BITMAP_PARAMS, **{**bm, "dirty_bitmap_addr": 4 * MIB - 0x800}),
             Status.BAD_PARAM, Syn.DIRTY_BITMAP)
    _refused(fw.modify_virtq(oid, Modify.DIRTY_BITMAP_PARAMS, **{**bm, "dirty_bitmap_mkey": 0x7777}),
             Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY)
    # the bitmap's mkey is held: it cannot go while the virtq names it
    assert vq.hca.mkeys.mkeys[vq.mkey].users == 2


def test_modify_bits_unknown_or_without_their_cap(vq):
    oid = vq.create()
    _refused(vq.fw.modify_virtq(oid, 1 << 1), Status.BAD_PARAM, Syn.UNKNOWN_MODIFY_BIT)
    _refused(vq.fw.modify_virtq(oid, 1 << 14), Status.BAD_PARAM, Syn.UNKNOWN_MODIFY_BIT)
    vq.hca.caps.virtio_q_index_modify = 0
    _refused(vq.fw.modify_virtq(oid, Modify.HW_USED_INDEX, hw_used_index=1), Status.BAD_PARAM, Syn.MODIFY_CAP)
    vq.hca.caps.virtio_net_q_addr_modify = 0
    _refused(vq.fw.modify_virtq(oid, Modify.ADDR, **vq.attrs()), Status.BAD_PARAM, Syn.MODIFY_CAP)


def test_a_refused_modify_changes_nothing(vq):
    oid = vq.create()
    before = vq.fw.query_virtq(oid).fields
    r = vq.fw.modify_virtq(oid, Modify.ADDR | Modify.Q_MKEY, **{**vq.attrs(desc_addr=0x30000), "mkey": 0x7777})
    _refused(r, Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY)
    assert vq.fw.query_virtq(oid).fields == before


def test_q_mkey_modify_moves_the_reference(vq):
    fw = vq.fw
    k2 = fw.create_mkey(AccessMode.MTT, pd=vq.pd, start_addr=GUEST, len=MIB, mtt_iova=GUEST).fields["mkey"]
    oid = vq.create()
    assert fw.modify_virtq(oid, Modify.Q_MKEY, mkey=k2).status == Status.OK
    assert fw.destroy_mkey(vq.mkey).status == Status.OK  # no longer named
    _refused(fw.destroy_mkey(k2), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)


# -- going RDY needs the rings in the mkey ---------------------------------------------------------


@pytest.mark.parametrize("over", [
    dict(desc_addr=0),
    dict(used_addr=4 * MIB - 0x100),  # 6 + 8*256 bytes run past the mkey
    dict(available_addr=8 * MIB),
])
def test_ready_needs_translated_rings(vq, over):
    oid = vq.create(**over)  # INIT: rings not looked at yet (a pre-created virtq has none)
    _refused(vq.fw.modify_virtq(oid, Modify.STATE, state=QState.RDY), Status.BAD_PARAM, Syn.RING_UNMAPPED)
    assert vq.state(oid) == QState.INIT


def test_ready_rings_through_an_indirect_mkey_hole(mlx5, vq):
    """Rings in a hole of the GPA mkey (null mkey entry) are refused going RDY."""
    fw = vq.fw
    null = fw.null_mkey()
    k = fw.create_mkey(AccessMode.KLM, [(MIB, vq.mkey, 0), (MIB, null, 0), (2 * MIB, vq.mkey, 2 * MIB)],
                       pd=vq.pd, start_addr=0, len=4 * MIB).fields["mkey"]
    ok = vq.create(mkey=k)
    assert fw.modify_virtq(ok, Modify.STATE, state=QState.RDY).status == Status.OK
    bad = vq.create(umem_set=1, queue_index=1, counters_obj_id=0, mkey=k, desc_addr=MIB + 0x1000)
    _refused(fw.modify_virtq(bad, Modify.STATE, state=QState.RDY), Status.BAD_PARAM, Syn.RING_UNMAPPED)


# -- hostile creates ------------------------------------------------------------------------------


@pytest.mark.parametrize("case,status,syn", [
    ("queue_index past the caps", Status.BAD_PARAM, Syn.QUEUE_INDEX),
    ("queue_index of another virtq", Status.BAD_PARAM, Syn.QUEUE_INDEX_IN_USE),
    ("q_size 0", Status.BAD_PARAM, Syn.QUEUE_SIZE),
    ("split q_size not a power of two", Status.BAD_PARAM, Syn.QUEUE_SIZE),
    ("q_size past the max", Status.BAD_PARAM, Syn.QUEUE_SIZE),
    ("q_type 2", Status.BAD_PARAM, Syn.Q_TYPE),
    ("event_mode QP, no such QP", Status.BAD_PARAM, Syn.EVENT_TARGET),
    ("event_mode 5", Status.BAD_PARAM, Syn.EVENT_MODE),
    ("event_mode wider than 3 bits", Status.BAD_PARAM, Syn.FIELD_TOO_WIDE),
    ("MSIX vector past the function's", Status.BAD_PARAM, Syn.EVENT_TARGET),
    ("tso_ipv4 without the cap", Status.BAD_PARAM, Syn.FEATURE_CAP),
    ("created RDY", Status.BAD_PARAM, Syn.BAD_STATE),
    ("unknown pd", Status.BAD_RESOURCE, Syn.UNKNOWN_PD),
    ("unknown mkey", Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY),
    ("the null mkey", Status.BAD_PARAM, Syn.NULL_MKEY),
    ("unknown TIS", Status.BAD_RESOURCE, Syn.UNKNOWN_TIS),
    ("unknown umem", Status.BAD_RESOURCE, Syn.UNKNOWN_UMEM),
    ("umem below a*q_size+b", Status.BAD_PARAM, Syn.UMEM_SIZE),
    ("umem offset past its end", Status.BAD_PARAM, Syn.UMEM_RANGE),
    ("umem of another virtq", Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE),
    ("one umem twice", Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE),
    ("unknown counters", Status.BAD_RESOURCE, Syn.UNKNOWN_COUNTERS),
    ("counters of another virtq", Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE),
    ("dirty bitmap without its mkey", Status.BAD_PARAM, Syn.NULL_MKEY),
    ("body cut short", Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT),
])
def test_hostile_create_virtq(vq, case, status, syn):
    other = vq.create(queue_index=5, umem_set=1)  # holds umem set 1 and the counters
    fw = vq.fw
    n_before = len(vq.hca.virtqs)
    umem_need = umem_size(vq.hca.caps, 2, Q)
    a = {
        "queue_index past the caps": dict(queue_index=32),
        "queue_index of another virtq": dict(queue_index=5, counters_obj_id=0),
        "q_size 0": dict(q_size=0),
        "split q_size not a power of two": dict(q_size=300),
        "q_size past the max": dict(q_size=65535, q_type=QType.PACKED),
        "q_type 2": dict(q_type=2),
        "event_mode QP, no such QP": dict(event_mode=EventMode.QP, qp_id=1),
        "event_mode 5": dict(event_mode=5),
        "event_mode wider than 3 bits": dict(event_mode=8),
        "MSIX vector past the function's": dict(event_mode=EventMode.MSIX, qp_id=33),
        "tso_ipv4 without the cap": dict(tso_ipv4=1),
        "created RDY": dict(state=QState.RDY),
        "unknown pd": dict(pd=999),
        "unknown mkey": dict(mkey=0x7777),
        "the null mkey": dict(mkey=fw.null_mkey()),
        "unknown TIS": dict(tis_id=4),
        "unknown umem": dict(umem_2_id=999),
        "umem below a*q_size+b": dict(umem_2_size=umem_need - 1),
        "umem offset past its end": dict(umem_3_offset=0x40000 - 0x100),
        "umem of another virtq": dict(umem_1_id=vq.umems[3]),
        "one umem twice": dict(umem_2_id=vq.umems[0]),
        "unknown counters": dict(counters_obj_id=999),
        "counters of another virtq": {},
        "dirty bitmap without its mkey": dict(dirty_bitmap_mkey=fw.null_mkey(), dirty_bitmap_size=0x1000),
    }
    if case == "tso_ipv4 without the cap":
        vq.hca.caps.tso_ipv4 = 0  # the card has it by default: a card without
    if case == "body cut short":
        body = VIRTQ.pack(**vq.attrs(counters_obj_id=0))[:-8]
        r = fw.cmd(OBJ_IN_HDR.pack(opcode=Op.CREATE_GENERAL_OBJECT, obj_type=ObjType.VIRTIO_NET_Q) + body)
    else:
        over = a[case]
        if case != "counters of another virtq":
            over.setdefault("counters_obj_id", 0)  # the counters are the other virtq's
        r = fw.create_virtq(**vq.attrs(**over))
    _refused(r, status, syn)
    assert len(vq.hca.virtqs) == n_before
    assert vq.hca.umems[vq.umems[0]].user == 0 and vq.hca.umems[vq.umems[3]].user == other


def test_objects_in_use_by_a_virtq_cannot_go(vq):
    oid = vq.create()
    fw = vq.fw
    _refused(fw.destroy_umem(vq.umems[0]), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    _refused(fw.destroy_counters(vq.counters), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    _refused(fw.destroy_mkey(vq.mkey), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    _refused(fw.dealloc_pd(vq.pd), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    assert fw.destroy_virtq(oid).status == Status.OK
    assert fw.destroy_umem(vq.umems[0]).status == Status.OK
    assert fw.destroy_counters(vq.counters).status == Status.OK
    assert fw.destroy_mkey(vq.mkey).status == Status.OK
    assert fw.dealloc_pd(vq.pd).status == Status.OK


def test_umem_size_follows_the_queue_size(vq):
    """umem i must hold a_i x q_size + b_i: a 1024-entry queue does not fit umems sized for 256."""
    big = vq.attrs(q_size=1024)
    for i in (1, 2, 3):
        big[f"umem_{i}_size"] = umem_size(vq.hca.caps, i, Q)
    _refused(vq.fw.create_virtq(**big), Status.BAD_PARAM, Syn.UMEM_SIZE)
    assert vq.create(q_size=1024) > 0  # 128 x 1024 + 4096 still fits the 256 KiB umems
