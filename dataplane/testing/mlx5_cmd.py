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
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

from dataplane.nic.mlx5.commands import (
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

__all__ = ["Mlx5Cmd", "Reply"]


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

    def close(self) -> None:
        self.bar.close()
