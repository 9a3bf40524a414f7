"""The mlx5 VF as the vDPA driver sees it: its control channel, BAR0, the firmware command slot, the VAR page.

:class:`Mlx5Hw` opens the function (:class:`~dataplane.vdpa.vfio.VfioChannel`), checks the PCI ids
(Mellanox), maps BAR0 and runs firmware commands through the command slot (docs/nic.md, "The
command slot": fill the input and IN_LEN / OUT_LEN, write a new CMD_SEQ, wait for CMD_ACK).  The
wire formats are data in :mod:`dataplane.hwspec.mlx5_prm`; :meth:`Mlx5Hw.cmd` packs a command from
them and raises :class:`Mlx5HwError` with the card's status and syndrome names on a refusal.
"""

from __future__ import annotations

import struct
import threading
import time

from dataplane.hwspec import mlx5_prm as P
from dataplane.vdpa import vfio
from dataplane.vdpa.vfio import Bar, VfioChannel, VfioError

__all__ = ["Mlx5HwError", "Mlx5Hw", "find_vf_dir"]


class Mlx5HwError(VfioError):
    """The function could not be probed, or the card refused a command (``status``, ``syndrome``)."""

    def __init__(self, message: str, status: int = 0, syndrome: int = 0):
        super().__init__(message)
        self.status = status
        self.syndrome = syndrome


def find_vf_dir(bdf: str, parent: str | None = None) -> str:
    return vfio.find_vf_dir(bdf, parent, error=Mlx5HwError)


class Mlx5Hw(VfioChannel):
    """One mlx5 VF, probed: ``info``, ``bar0``, the VAR page's offset and size, the caps."""

    error = Mlx5HwError

    def __init__(self, bdf: str, vf_dir: str, timeout: float = 10.0):
        super().__init__(bdf, vf_dir, timeout)
        self.bar0: Bar | None = None
        self._slot = threading.Lock()  # one command at a time (the ops, the error thread)
        try:
            self.connect()
            self.info = self.request("get_device_info")
            with open(self.region_path("config"), "rb") as f:
                config = f.read()
            vendor, device = struct.unpack_from("<HH", config, 0)
            if vendor != P.VENDOR_ID:
                raise Mlx5HwError(f"{bdf}: not a Mellanox function ({vendor:04x}:{device:04x})")
            self.bar0_path = self.region_path(0)
            self.bar0 = Bar(self.bar0_path)
            db = self.info["doorbell"]
            self.var_off, self.var_size = int(db["offset"]), int(db["size"])
            self.num_irqs = int(self.info["num_irqs"])
        except BaseException:
            self.close()
            raise

    # -- the command slot ----------------------------------------------------------------
    def _ring(self, data: bytes) -> bytes:
        with self._slot:
            return self._ring_locked(data)

    def _ring_locked(self, data: bytes) -> bytes:
        bar = self.bar0
        if bar is None:
            raise Mlx5HwError(f"{self.bdf}: BAR0 is not mapped")
        seq = bar.r32(P.R_CMD_SEQ)
        if seq != bar.r32(P.R_CMD_ACK):
            raise Mlx5HwError(f"{self.bdf}: the command slot is busy")
        bar.u8[P.IN_OFF:P.IN_OFF + len(data)] = memoryview(data)
        bar.w32(P.R_IN_LEN, len(data))
        bar.w32(P.R_OUT_LEN, P.OUT_MAX)
        seq = (seq + 1) & 0xFFFFFFFF
        bar.w32(P.R_CMD_SEQ, seq)
        deadline = time.monotonic() + self.timeout
        spins = 0
        while bar.r32(P.R_CMD_ACK) != seq:
            if time.monotonic() > deadline:
                raise Mlx5HwError(f"{self.bdf}: the card did not answer the command")
            spins += 1
            time.sleep(0 if spins < 50 else 0.0001)
        n = bar.r32(P.R_OUT_WRITTEN)
        return bytes(bar.u8[P.OUT_OFF:P.OUT_OFF + n])

    def cmd(self, head: bytes, body: bytes = b"", out=None, what: str = "") -> dict:
        """Run a command (``head`` + ``body``); the output fields by layout ``out`` ({} without)."""
        raw = self._ring(head + body)
        h = P.OUT_HDR.unpack(raw)
        if h["status"] != P.Status.OK:
            name = what or f"opcode {P.IN_HDR.unpack(head)['opcode']:#x}"
            raise Mlx5HwError(f"{self.bdf}: {name} refused: {P.STATUS_NAMES.get(h['status'], h['status'])} "
                              f"({P.SYNDROME_NAMES.get(h['syndrome'], hex(h['syndrome']))})",
                              h["status"], h["syndrome"])
        fields = out.unpack(raw, P.OUT_HDR.size) if out is not None else {}
        fields["_raw"] = raw
        return fields

    def op(self, opcode: int, layout=None, out=None, extra: bytes = b"", **kw) -> dict:
        body = layout.pack(**kw) if layout is not None else b""
        return self.cmd(P.IN_HDR.pack(opcode=opcode), body + extra, out, what=_OP_NAMES.get(opcode, ""))

    def obj(self, opcode: int, obj_type: int, obj_id: int = 0, out=None, **kw) -> dict:
        body = P.OBJECT_TYPES[obj_type][1].pack(**kw) if kw else b""
        return self.cmd(P.OBJ_IN_HDR.pack(opcode=opcode, obj_type=obj_type, obj_id=obj_id), body, out,
                        what=f"{_OP_NAMES.get(opcode, '')} {P.OBJECT_TYPES[obj_type][0]}")

    # -- the commands the driver uses ---------------------------------------------------
    def query_caps(self, cap_type: int) -> dict:
        lay = P.VDPA_CAPS if cap_type == P.CapType.VDPA_EMULATION else P.GENERAL_CAPS
        return self.cmd(P.IN_HDR.pack(opcode=P.Op.QUERY_HCA_CAP, op_mod=P.cap_op_mod(cap_type)), b"", lay,
                        what="QUERY_HCA_CAP")

    def doorbell(self, qid: int) -> None:
        """A kick: a 32-bit write of the queue index into the VAR page."""
        if self.bar0 is not None:
            self.bar0.w32(self.var_off, qid)

    def cq_doorbell(self, value: int) -> None:
        """The 64-bit UAR CQ doorbell (arm word << 32 | cqn)."""
        if self.bar0 is not None:
            self.bar0.w64(P.UAR_OFF + P.UAR_CQ_DB, value)

    def event_records(self, ring_off: int, seen: int) -> tuple[int, list[tuple[int, int]]]:
        """The records of the event ring at ``ring_off`` written since ``seen``: (new count, [(cookie, info)])."""
        bar = self.bar0
        if bar is None:
            return seen, []
        prod = bar.r32(ring_off + P.EQ_PROD)
        first = max(seen, prod - P.EQ_SLOTS)
        out = [struct.unpack_from("<QQ", bar.u8, ring_off + P.EQ_ENTRIES + P.EQE_SIZE * (i % P.EQ_SLOTS))
               for i in range(first, prod)]
        return prod, out

    def close(self) -> None:
        self.close_channel()
        if self.bar0 is not None:
            self.bar0.close()
            self.bar0 = None


_OP_NAMES = {v: k for k, v in vars(P.Op).items() if not k.startswith("_")}
