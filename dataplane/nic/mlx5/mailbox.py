"""The mlx5 card's command mailbox: one command slot in a BAR file, polled by the card.

Layout (the numbers are in :mod:`~dataplane.hwspec.mlx5_prm`; from ``base`` in the BAR; control words are u32 in host byte order, like the IFC
card's registers; the command buffers are big-endian, :mod:`~dataplane.hwspec.mlx5_prm`)::

    0x000  FW_REV       (card)   firmware revision, major << 16 | minor
    0x004  CMDIF_REV    (card)   command interface revision (CMDIF_REV)
    0x008  IN_MAX       (card)   bytes of the input buffer
    0x00C  OUT_MAX      (card)   bytes of the output buffer
    0x010  CMD_SEQ      (driver) the doorbell: bumped once the slot is filled
    0x014  CMD_ACK      (card)   CMD_SEQ of the last command done
    0x018  IN_LEN       (driver) bytes of input
    0x01C  OUT_LEN      (driver) bytes of output the driver has room for
    0x020  OUT_WRITTEN  (card)   bytes of output written
    0x024  CMDS_DONE    (card)   commands answered (refusals included)
    0x028  CMDS_REFUSED (card)   of which refused (status != OK)
    0x1000 input buffer  (IN_MAX bytes)
    0x11000 output buffer (OUT_MAX bytes)

**Ownership** (the IFC card's flush idea): the slot is the driver's while
``CMD_SEQ == CMD_ACK``.  The driver writes the input and IN_LEN / OUT_LEN, then writes
a new CMD_SEQ: the slot is now the card's.  The card polls CMD_SEQ; when it differs
from CMD_ACK it reads the command, runs it, writes the output (status and syndrome
first, then the body) and OUT_WRITTEN, and only then CMD_ACK = CMD_SEQ, handing the slot
back.  The driver spins until CMD_ACK equals what it wrote, then reads the output.
One command at a time; a bad command is an answer (status + syndrome), never a crash.
"""

from __future__ import annotations

from ..pci import BarFile
from dataplane.hwspec.mlx5_prm import (BAR_SIZE, CMDIF_REV, FW_REV, IN_MAX, IN_OFF, OUT_MAX, OUT_OFF, R_CMD_ACK,
                                        R_CMD_SEQ, R_CMDIF_REV, R_CMDS_DONE, R_CMDS_REFUSED, R_FW_REV, R_IN_LEN,
                                        R_IN_MAX, R_OUT_LEN, R_OUT_MAX, R_OUT_WRITTEN, SLOT_SIZE, Status, Syn)
from .objects import Hca

__all__ = ["CommandSlot", "FW_REV", "CMDIF_REV", "IN_MAX", "OUT_MAX", "IN_OFF", "OUT_OFF", "SLOT_SIZE", "BAR_SIZE",
           "R_FW_REV", "R_CMDIF_REV", "R_IN_MAX", "R_OUT_MAX", "R_CMD_SEQ", "R_CMD_ACK", "R_IN_LEN", "R_OUT_LEN",
           "R_OUT_WRITTEN", "R_CMDS_DONE", "R_CMDS_REFUSED"]



class CommandSlot:
    """The card's side of the mailbox at ``base`` of ``bar``, running commands on ``hca``."""

    def __init__(self, bar: BarFile, hca: Hca, base: int = 0):
        if base % 0x1000 or base + SLOT_SIZE > bar.size:
            raise ValueError(f"the command slot needs {SLOT_SIZE:#x} bytes at a page boundary")
        self.bar = bar
        self.hca = hca
        self.base = base
        self.u8 = bar.u8
        bar.w32(base + R_FW_REV, FW_REV)
        bar.w32(base + R_CMDIF_REV, CMDIF_REV)
        bar.w32(base + R_IN_MAX, IN_MAX)
        bar.w32(base + R_OUT_MAX, OUT_MAX)
        bar.w32(base + R_CMD_ACK, bar.r32(base + R_CMD_SEQ))

    def pending(self) -> bool:
        b = self.base
        return self.bar.r32(b + R_CMD_SEQ) != self.bar.r32(b + R_CMD_ACK)

    def poll(self) -> bool:
        """Run the command the driver rang for, if any; True if one ran."""
        b, bar = self.base, self.bar
        seq = bar.r32(b + R_CMD_SEQ)
        if seq == bar.r32(b + R_CMD_ACK):
            return False
        in_len = bar.r32(b + R_IN_LEN)
        out_room = min(bar.r32(b + R_OUT_LEN), OUT_MAX)
        if in_len > IN_MAX:  # nothing is read past the buffer
            out = self.hca.refusal(Status.BAD_INPUT_LEN, Syn.IN_TOO_LONG, f"IN_LEN {in_len} > IN_MAX {IN_MAX}")
        else:
            data = bytes(self.u8[b + IN_OFF : b + IN_OFF + in_len])
            out = self.hca.execute(data, out_room)
        o = b + OUT_OFF
        self.u8[o : o + len(out)] = memoryview(out)
        bar.w32(b + R_OUT_WRITTEN, len(out))
        bar.w32(b + R_CMDS_DONE, bar.r32(b + R_CMDS_DONE) + 1)
        if out[0]:
            bar.w32(b + R_CMDS_REFUSED, bar.r32(b + R_CMDS_REFUSED) + 1)
        bar.w32(b + R_CMD_ACK, seq)  # last: the slot is the driver's again
        return True
