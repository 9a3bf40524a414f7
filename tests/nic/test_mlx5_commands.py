"""The mlx5 card's command mailbox and the non-virtq commands: caps, PD, umem, counters, framing."""

import os
import threading

import numpy as np
import pytest

from dataplane.nic.mlx5 import objects
from dataplane.hwspec.mlx5_prm import (
    COMMANDS,
    IN_HDR,
    OBJ_IN_HDR,
    OUT_HDR,
    STAT_NAMES,
    UMEM_IN,
    CapType,
    ObjType,
    Op,
    Status,
    Syn,
    cap_op_mod,
)
from dataplane.nic.mlx5.mailbox import (
    CMDIF_REV,
    FW_REV,
    IN_MAX,
    R_CMD_ACK,
    R_CMD_SEQ,
    R_CMDS_DONE,
    R_CMDS_REFUSED,
    R_CMDIF_REV,
    R_FW_REV,
    R_IN_MAX,
    CommandSlot,
)
from dataplane.nic.mlx5.objects import Hca
from dataplane.nic.pci import BarFile
from dataplane.testing.mlx5_cmd import Mlx5Cmd

MEM = 0x100000


def test_opcode_table_has_a_handler_for_every_row():
    for op, cmd in COMMANDS.items():
        assert callable(getattr(Hca, cmd.handler, None)), (hex(op), cmd.name)


def test_slot_identifies_itself_and_starts_owned_by_the_driver(mlx5):
    bar = mlx5.fw.bar
    assert bar.r32(R_FW_REV) == FW_REV and bar.r32(R_CMDIF_REV) == CMDIF_REV
    assert bar.r32(R_IN_MAX) == IN_MAX
    assert bar.r32(R_CMD_SEQ) == bar.r32(R_CMD_ACK)
    assert not mlx5.slot.poll()  # nothing rung: nothing done
    assert bar.r32(R_CMDS_DONE) == 0


def test_query_hca_cap_vdpa_and_general(mlx5):
    r = mlx5.fw.query_caps(CapType.VDPA_EMULATION)
    assert r.status == Status.OK and r.syndrome == 0
    c = r.fields
    assert c["valid"] == 1 and c["max_num_virtio_queues"] == 32 and c["max_queue_size"] == 32768
    assert c["virtio_queue_type"] == 0b11  # split and packed
    assert c["event_mode"] == 0b111  # NO_MSIX, QP (event CQ/QP objects) and MSIX
    assert c["virtio_net_q_addr_modify"] == 1 and c["virtio_q_index_modify"] == 1
    assert [(c[f"umem_{i}_buffer_param_a"], c[f"umem_{i}_buffer_param_b"]) for i in (1, 2, 3)] == \
        list(objects.Caps().umems)
    g = mlx5.fw.query_caps(CapType.GENERAL)
    assert g.status == Status.OK
    assert g.fields["queue_counters_valid"] == 1 and g.fields["log_max_rqt_size"] == 9
    assert g.fields["general_obj_types"] == (1 << ObjType.VIRTIO_NET_Q) | (1 << ObjType.VIRTIO_Q_COUNTERS)
    # the maximum caps (op_mod bit 0 clear) answer the same
    r2 = mlx5.fw.cmd(IN_HDR.pack(opcode=Op.QUERY_HCA_CAP, op_mod=cap_op_mod(CapType.VDPA_EMULATION, False)))
    assert r2.status == Status.OK and r2.raw == r.raw


def test_query_hca_cap_unknown_type(mlx5):
    r = mlx5.fw.cmd(IN_HDR.pack(opcode=Op.QUERY_HCA_CAP, op_mod=cap_op_mod(0x7)))
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.BAD_OP_MOD)
    assert len(r.raw) == OUT_HDR.size


def test_unknown_opcode_is_bad_op(mlx5):
    # opcodes the card does not have (CREATE_EQ 0x301 among them)
    for op in (0x301, 0x9FF, 0xFFFF):
        r = mlx5.fw.cmd(IN_HDR.pack(opcode=op))
        assert (r.status, r.syndrome) == (Status.BAD_OP, Syn.UNKNOWN_OPCODE)


def test_framing_errors_have_specific_statuses(mlx5):
    fw = mlx5.fw
    assert fw.cmd(b"").status == Status.BAD_INPUT_LEN
    r = fw.cmd(b"\x01\x00\x00")  # three bytes: no header
    assert (r.status, r.syndrome) == (Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT)
    r = fw.cmd(IN_HDR.pack(opcode=Op.CREATE_UMEM) + b"\x00" * 4)  # body cut short
    assert (r.status, r.syndrome) == (Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT)
    r = fw.cmd(IN_HDR.pack(opcode=Op.ALLOC_PD) + b"junk")  # trailing bytes
    assert (r.status, r.syndrome) == (Status.BAD_INPUT_LEN, Syn.IN_TOO_LONG)
    r = fw.cmd(IN_HDR.pack(opcode=Op.ALLOC_PD), in_len=IN_MAX + 1)  # a length past the buffer
    assert (r.status, r.syndrome) == (Status.BAD_INPUT_LEN, Syn.IN_TOO_LONG)
    r = fw.cmd(IN_HDR.pack(opcode=Op.ALLOC_PD), out_len=8)  # no room for the pd
    assert (r.status, r.syndrome) == (Status.BAD_OUTPUT_LEN, Syn.OUT_TOO_SHORT)
    assert mlx5.hca.pds == {}  # refused before it ran
    r = fw.cmd(IN_HDR.pack(opcode=Op.ALLOC_PD, op_mod=1))
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.BAD_OP_MOD)
    r = fw.cmd(OBJ_IN_HDR.pack(opcode=Op.CREATE_GENERAL_OBJECT, obj_type=0x77))
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.UNKNOWN_OBJ_TYPE)
    r = fw.cmd(OBJ_IN_HDR.pack(opcode=Op.QUERY_GENERAL_OBJECT, obj_type=ObjType.VIRTIO_NET_Q)[:12])
    assert (r.status, r.syndrome) == (Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT)
    bar = fw.bar
    assert bar.r32(R_CMDS_DONE) == 9 and bar.r32(R_CMDS_REFUSED) == 9
    # the card still works
    assert fw.alloc_pd().status == Status.OK


def test_random_garbage_never_escapes(mlx5):
    rng = np.random.default_rng(14)
    fw = mlx5.fw
    for _ in range(300):
        op = int(rng.choice(list(COMMANDS) + [0x123]))
        n = int(rng.integers(0, 260))
        data = op.to_bytes(2, "big") + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        r = fw.cmd(data)
        assert r.status in set(vars(Status).values()) and r.status != Status.INTERNAL_ERR, (hex(op), data.hex())
    assert mlx5.hca.executed + mlx5.hca.refused == 300


def test_an_internal_bug_is_internal_err_not_a_crash(mlx5, monkeypatch):
    def broken(self, hdr, body, tail):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Hca, "alloc_pd", broken)
    r = mlx5.fw.alloc_pd()
    assert (r.status, r.syndrome) == (Status.INTERNAL_ERR, Syn.INTERNAL)
    monkeypatch.undo()
    assert mlx5.fw.alloc_pd().status == Status.OK


def test_pd_alloc_dealloc(mlx5):
    fw = mlx5.fw
    a, b = fw.alloc_pd().fields["pd"], fw.alloc_pd().fields["pd"]
    assert a != b
    assert fw.dealloc_pd(a).status == Status.OK
    r = fw.dealloc_pd(a)
    assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_PD)
    assert fw.dealloc_pd(b).status == Status.OK


def test_umem_register_deregister(mlx5):
    mlx5.map_memory(MEM, 1 << 20)
    fw = mlx5.fw
    r = fw.create_umem(MEM + 0x2000, 0x4000)
    assert r.status == Status.OK
    u = r.fields["umem_id"]
    assert mlx5.hca.umems[u].iova == MEM + 0x2000 and mlx5.hca.umems[u].size == 0x4000
    assert fw.destroy_umem(u).status == Status.OK
    r = fw.destroy_umem(u)
    assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_UMEM)


@pytest.mark.parametrize("iova,size,syn", [
    (MEM + 0x100, 0x1000, Syn.NOT_ALIGNED),
    (MEM, 0x1800, Syn.NOT_ALIGNED),
    (MEM, 0, Syn.BAD_LENGTH),
    (MEM + (1 << 20) - 0x1000, 0x2000, Syn.UNMAPPED),  # runs past the mapping
    (0x40000000, 0x1000, Syn.UNMAPPED),  # nothing there
])
def test_umem_out_of_range(mlx5, iova, size, syn):
    mlx5.map_memory(MEM, 1 << 20)
    r = mlx5.fw.create_umem(iova, size)
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, syn)
    assert mlx5.hca.umems == {}


def test_counters_object(mlx5):
    fw = mlx5.fw
    r = fw.create_counters()
    assert r.status == Status.OK
    cid = r.fields["obj_id"]
    q = fw.query_counters(cid)
    assert q.status == Status.OK and q.fields == {
        "received_desc": 0, "completed_desc": 0, "bad_desc_errors": 0, "exceed_max_chain": 0,
        "invalid_buffer": 0, "error_cqes": 0}
    # the datapath adds to the object's values; a query reads them in DPDK's stats order
    mlx5.hca.counters[cid].values[:] = [7, 6, 5, 4, 3, 2]
    q = fw.query_counters(cid)
    assert list(q.fields.values()) == [7, 6, 5, 4, 3, 2]
    assert len(STAT_NAMES) == len(q.fields) == 6
    r = fw.obj(Op.MODIFY_GENERAL_OBJECT, ObjType.VIRTIO_Q_COUNTERS, cid)
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.UNKNOWN_OBJ_TYPE)
    assert fw.destroy_counters(cid).status == Status.OK
    for r in (fw.query_counters(cid), fw.destroy_counters(cid)):
        assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT)


def test_counters_not_offered_without_the_cap(tmp_path):
    from dataplane.nic.dma import DmaMap
    from dataplane.nic.mlx5.mailbox import BAR_SIZE

    bar = BarFile(str(tmp_path / "bar"), BAR_SIZE, create=True)
    hca = Hca(DmaMap(), objects.Caps(queue_counters_valid=0))
    slot = CommandSlot(bar, hca)
    fw = Mlx5Cmd(bar, poll=slot.poll)
    r = fw.create_counters()
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.UNKNOWN_OBJ_TYPE)
    assert fw.query_caps(CapType.GENERAL).fields["general_obj_types"] == 1 << ObjType.VIRTIO_NET_Q
    bar.close()


def test_the_card_polls_from_another_thread_over_its_own_mapping(mlx5):
    """The driver only writes its mapping and waits for CMD_ACK; the card, polling its own
    mapping of the same file from another thread, answers."""
    mlx5.map_memory(MEM, 1 << 20)
    stop = threading.Event()

    def card():
        while not stop.is_set():
            if not mlx5.slot.poll():
                stop.wait(0.0002)

    t = threading.Thread(target=card)
    t.start()
    try:
        drv = Mlx5Cmd(mlx5.path)  # no poll: it waits for the card
        pds = [drv.alloc_pd().fields["pd"] for _ in range(20)]
        assert len(set(pds)) == 20
        r = drv.cmd(IN_HDR.pack(opcode=Op.CREATE_UMEM) + UMEM_IN.pack(iova=MEM, size=0x3000))
        assert r.status == Status.OK
        assert drv.bar.r32(R_CMD_SEQ) == drv.bar.r32(R_CMD_ACK) == 21
        drv.close()
    finally:
        stop.set()
        t.join()


def test_slot_must_fit_the_bar(tmp_path):
    from dataplane.nic.dma import DmaMap

    bar = BarFile(str(tmp_path / "small"), 0x2000, create=True)
    with pytest.raises(ValueError):
        CommandSlot(bar, Hca(DmaMap()))
    bar.close()
    os.unlink(str(tmp_path / "small"))


def _check_references(hca):
    """Every reference count in the object store equals what the objects name."""
    from dataplane.nic.mlx5.mkey import NULL_MKEY

    mkey_users = {k: 0 for k in hca.mkeys.mkeys}
    pd_users = {p: 0 for p in hca.pds}
    umem_user = {u: 0 for u in hca.umems}
    counters_user = {c: 0 for c in hca.counters}
    for m in hca.mkeys.mkeys.values():
        pd_users[m.pd] += 1
        for _o, _n, t, _a in m.entries:
            if t != NULL_MKEY:
                mkey_users[t] += 1
    for oid, v in hca.virtqs.items():
        a = v.attrs
        pd_users[a["pd"]] += 1
        mkey_users[a["mkey"]] += 1
        if a["dirty_bitmap_mkey"]:
            mkey_users[a["dirty_bitmap_mkey"]] += 1
        if a["counters_obj_id"]:
            assert counters_user[a["counters_obj_id"]] == 0
            counters_user[a["counters_obj_id"]] = oid
        for i in (1, 2, 3):
            assert umem_user[a[f"umem_{i}_id"]] == 0
            umem_user[a[f"umem_{i}_id"]] = oid
    assert mkey_users == {k: m.users for k, m in hca.mkeys.mkeys.items()}
    # steering: an RQT names existing virtqs, a TIR an existing RQT, a flow rule an existing TIR
    for r in hca.rqts.values():
        assert all(o in hca.virtqs for o in r.rqs)
        assert r.users == sum(1 for x in hca.tirs.values() if x.rqtn == r.rqtn)
    for x in hca.tirs.values():
        assert x.users == sum(1 for f in hca.flows.values() if f.tirn == x.tirn)
    # events: a QP's CQ exists and counts it, a QP-mode virtq's QP exists and counts it
    for c in hca.cqs.values():
        assert c.users == sum(1 for q in hca.qps.values() if q.cqn == c.cqn)
    for q in hca.qps.values():
        assert q.users == sum(1 for v in hca.virtqs.values() if v.attrs["event_mode"] == 1 and v.attrs["qp_id"] == q.qpn)
    assert set(hca.subs) <= set(hca.virtqs)
    assert pd_users == hca.pds
    assert umem_user == {u: x.user for u, x in hca.umems.items()}
    assert counters_user == {c: x.user for c, x in hca.counters.items()}


def test_well_formed_random_commands_keep_the_store_consistent(mlx5):
    """Structure-aware fuzzing: commands of the right lengths, built plausible (from the ids that
    exist) and then mutated in a field or two with limits and noise; no INTERNAL_ERR, and the
    reference counts always add up."""
    from dataplane.hwspec.mlx5_prm import (FLOW_IN, FLOW_REF, KLM, MKEY_IN, OBJECT_TYPES, RQ_ENTRY, RQT_IN, RQT_MODIFY,
                                           RQT_REF, TIR_IN, TIR_REF, VIRTQ, QP_MODIFY, SUBSCRIBE_IN, AccessMode, Layout, Modify)
    from dataplane.nic.mlx5.objects import umem_size

    mlx5.map_memory(0, 1 << 22)
    mlx5.map_memory(0x10000000, 1 << 22)
    hca, fw = mlx5.hca, mlx5.fw
    rng = np.random.default_rng(1414)

    def pick(xs, default=0):
        xs = list(xs)
        return xs[int(rng.integers(0, len(xs)))] if xs else default

    def noise(f):
        pool = [0, 1, 2, (1 << f.bits) - 1, int(rng.integers(0, 1 << min(f.bits, 62))), 0x100]
        pool += list(hca.pds) + list(hca.umems) + list(hca.mkeys.mkeys) + list(hca.virtqs) + list(hca.counters)
        pool += list(hca.rqts) + list(hca.tirs) + list(hca.flows)
        return pick(pool) & ((1 << f.bits) - 1)

    def mutate(lay: Layout, vals: dict) -> bytes:
        for _ in range(int(rng.choice([0, 0, 1, 2]))):
            f = pick([f for f in lay.fields if not f.name.startswith("_r")])
            vals[f.name] = noise(f)
        return lay.pack(**{k: v for k, v in vals.items() if k in lay.by_name})

    def plausible_mkey():
        direct = [k for k, m in hca.mkeys.mkeys.items() if m.direct]
        mode = pick([AccessMode.MTT, AccessMode.MTT, AccessMode.KLM, AccessMode.KLM_FBS])
        length = pick([0x1000, 0x4000, 1 << 20])
        v = dict(access_mode=mode, pd=pick(hca.pds), start_addr=pick([0, 0x1000]), len=length)
        klms = []
        if mode == AccessMode.MTT:
            v["mtt_iova"] = pick([0, 0x2000, 0x10000000])
        else:
            n = 2 if mode == AccessMode.KLM else length // 0x1000
            v["log_entity_size"] = 12 if mode == AccessMode.KLM_FBS else 0
            for j in range(n):
                t = pick(direct + [0x100], 0x100)
                addr = hca.mkeys.mkeys[t].start if t in hca.mkeys.mkeys else 0
                klms.append(dict(byte_count=length // n if mode == AccessMode.KLM else 0, mkey=t, address=addr))
        v["klm_num"] = len(klms)
        return mutate(MKEY_IN, v) + b"".join(mutate(KLM, k) for k in klms)

    def plausible_virtq():
        q = pick([64, 256])
        v = dict(modify_field_select=pick([Modify.STATE, Modify.STATE | Modify.ADDR, Modify.HW_AVAILABLE_INDEX,
                                            Modify.QUEUE_PERIOD, Modify.Q_MKEY, Modify.DIRTY_BITMAP_PARAMS]),
                 queue_index=int(rng.integers(0, 40)), q_type=pick([0, 1]), event_mode=pick([0, 1, 2]),
                 qp_id=pick(list(hca.qps) + [0]),
                 state=pick([0, 0, 1, 2]), q_size=q, pd=pick(hca.pds), mkey=pick(hca.mkeys.mkeys),
                 desc_addr=0x1000 * int(rng.integers(0, 1100)), available_addr=0x2000, used_addr=0x3000,
                 counters_obj_id=pick(list(hca.counters) + [0]), hw_available_index=int(rng.integers(0, 65536)),
                 dirty_bitmap_mkey=pick(list(hca.mkeys.mkeys) + [0]), dirty_bitmap_size=0x100)
        for i in (1, 2, 3):
            v[f"umem_{i}_id"] = pick(hca.umems)
            v[f"umem_{i}_size"] = umem_size(hca.caps, i, q)
        return mutate(VIRTQ, v)

    ok = 0
    seen_ok = set()
    for _ in range(8000):
        op = int(rng.choice(list(COMMANDS)))
        cmd = COMMANDS[op]
        if cmd.header is OBJ_IN_HDR:
            t = int(rng.choice(list(OBJECT_TYPES)))
            oid = pick(list(hca.virtqs if t == ObjType.VIRTIO_NET_Q else hca.counters) + [0, 99])
            data = OBJ_IN_HDR.pack(opcode=op, obj_type=t, obj_id=oid)
            if t == ObjType.VIRTIO_NET_Q and op in (Op.CREATE_GENERAL_OBJECT, Op.MODIFY_GENERAL_OBJECT):
                data += plausible_virtq()
        else:
            op_mod = 0 if op != Op.QUERY_HCA_CAP else int(rng.choice([0, 1, 0x26, 0x27, 0x50]))
            data = IN_HDR.pack(opcode=op, op_mod=op_mod)
            if op == Op.CREATE_MKEY:
                data += plausible_mkey()
            elif op == Op.CREATE_UMEM:
                data += UMEM_IN.pack(iova=0x10000000 + 0x40000 * int(rng.integers(0, 17)), size=0x40000)
            elif op in (Op.CREATE_RQT, Op.MODIFY_RQT):
                rqs = [pick(list(hca.virtqs) + [99]) for _ in range(int(rng.integers(1, 4)))]
                v = dict(rqtn=pick(list(hca.rqts) + [99]), rq_type=1, rqt_max_size=4, rqt_actual_size=len(rqs))
                lay = RQT_IN if op == Op.CREATE_RQT else RQT_MODIFY
                data += lay.pack(**{k: x for k, x in v.items() if k in lay.by_name})
                data += b"".join(RQ_ENTRY.pack(rq_num=o) for o in rqs)
            elif op == Op.CREATE_TIR:
                data += mutate(TIR_IN, dict(disp_type=1, rx_hash_fn=2, selected_fields=pick([0, 3, 15]),
                                            indirect_table=pick(list(hca.rqts) + [99])))
            elif op == Op.SET_FLOW_TABLE_ENTRY:
                data += mutate(FLOW_IN, dict(flow_index=int(rng.integers(0, 8)), priority=int(rng.integers(0, 8)),
                                             match_criteria=pick([0, 1, 3]), ip_version=pick([4, 6]),
                                             ip_protocol=pick([6, 17]), tirn=pick(list(hca.tirs) + [99])))
            elif op in (Op.RST2INIT_QP, Op.INIT2RTR_QP, Op.RTR2RTS_QP):
                data += QP_MODIFY.pack(qpn=pick(list(hca.qps) + [99]), remote_qpn=pick(list(hca.qps) + [99]))
            elif op == Op.SUBSCRIBE_EVENT:
                data += mutate(SUBSCRIBE_IN, dict(obj_type=ObjType.VIRTIO_NET_Q, event_type=0x27,
                                                  obj_id=pick(list(hca.virtqs) + [99]), vector=pick([0, 3, 40])))
            elif op in (Op.QUERY_RQT, Op.DESTROY_RQT):
                data += RQT_REF.pack(rqtn=pick(list(hca.rqts) + [99]))
            elif op == Op.DESTROY_TIR:
                data += TIR_REF.pack(tirn=pick(list(hca.tirs) + [99]))
            elif op == Op.DELETE_FLOW_TABLE_ENTRY:
                data += FLOW_REF.pack(table_id=0, flow_index=pick(list(hca.flows) + [99]))
            elif cmd.body is not None:
                f = cmd.body.fields[0]
                data += cmd.body.pack(**{f.name: noise(f)})
        if rng.random() < 0.03 and hca.virtqs:  # the datapath puts a virtq in error
            hca.virtq_error(pick(hca.virtqs), 1)
        r = fw.cmd(data)
        assert r.status != Status.INTERNAL_ERR, (cmd.name, data.hex())
        if r.status == Status.OK:
            ok += 1
            seen_ok.add((cmd.name, data[6:8].hex() if cmd.header is OBJ_IN_HDR else ""))
        _check_references(hca)
    # every command succeeded at least once: the fuzzing reached past the refusals
    assert {n for n, _t in seen_ok} == {c.name for c in COMMANDS.values()}, sorted(seen_ok)
    assert ok > 300
