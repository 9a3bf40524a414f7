"""A fake generic netlink kernel for the installed iproute2 ``vdpa`` (test helper).

``nlshim.c`` (LD_PRELOAD) turns the tool's netlink socket into a unix
SOCK_SEQPACKET connection to :class:`NetlinkBridge`, which answers the
``nlctrl`` family lookup for ``vdpa`` and passes every vdpa command to
:meth:`VdpaManagement.request`, encoding the replies as netlink messages
(data messages, ``NLMSG_DONE`` for dumps, ``NLMSG_ERROR`` acks with the extack
message as ``NLMSGERR_ATTR_MSG``).  So the real iproute2 prints what our
service answers, and its output can be compared with our tool's.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import threading

from dataplane.vdpa.mgmt.attrs import ATTR_TYPES, VdpaAttr

NLMSG_ERROR, NLMSG_DONE = 2, 3
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY, CTRL_CMD_GETFAMILY = 1, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_MAXATTR = 1, 2, 5
NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x2, 0x4, 0x300
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
FAMILY_ID = 0x1B

_INT_FMT = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}


def nla(attr_type: int, payload: bytes) -> bytes:
    data = struct.pack("<HH", 4 + len(payload), attr_type) + payload
    return data + b"\0" * (-len(data) % 4)


def nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("<IHHII", 16 + len(payload), msg_type, flags, seq, 0) + payload


def parse_attrs(data: bytes):
    out = []
    off = 0
    while off + 4 <= len(data):
        length, attr_type = struct.unpack_from("<HH", data, off)
        if length < 4:
            break
        out.append((attr_type & 0x3FFF, data[off + 4 : off + length]))
        off += (length + 3) & ~3
    return out


def encode_vdpa_attr(attr: VdpaAttr, value) -> bytes:
    kind = ATTR_TYPES[attr]
    if kind == "str":
        return nla(attr, value.encode() + b"\0")
    if kind == "bin":
        return nla(attr, bytes(value))
    return nla(attr, struct.pack(_INT_FMT[kind], value))


def decode_vdpa_attr(attr_type: int, payload: bytes):
    attr = VdpaAttr(attr_type)
    kind = ATTR_TYPES[attr]
    if kind == "str":
        return attr, payload.split(b"\0", 1)[0].decode()
    if kind == "bin":
        return attr, payload
    return attr, int.from_bytes(payload, "little")


class NetlinkBridge:
    def __init__(self, mgmt, path: str):
        self.mgmt = mgmt
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()
        os.unlink(self.path)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(10)
                while True:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break
                    for reply in self._answer(data):
                        conn.send(reply)

    def _ack(self, req: bytes, seq: int, error: int, msg: str | None) -> bytes:
        flags = NLM_F_CAPPED
        tlvs = b""
        if msg:
            flags |= NLM_F_ACK_TLVS
            tlvs = nla(NLMSGERR_ATTR_MSG, msg.encode() + b"\0")
        return nlmsg(NLMSG_ERROR, flags, seq, struct.pack("<i", error) + req[:16] + tlvs)

    def _answer(self, data: bytes) -> list[bytes]:
        length, msg_type, flags, seq, _pid = struct.unpack_from("<IHHII", data)
        cmd = data[16]
        attrs = parse_attrs(data[20:length])
        if msg_type == GENL_ID_CTRL:
            names = [p.split(b"\0", 1)[0] for t, p in attrs if t == CTRL_ATTR_FAMILY_NAME]
            if cmd != CTRL_CMD_GETFAMILY or names != [b"vdpa"]:
                return [self._ack(data, seq, -errno.ENOENT, None)]
            payload = bytes([CTRL_CMD_NEWFAMILY, 2, 0, 0]) + nla(CTRL_ATTR_FAMILY_ID, struct.pack("<H", FAMILY_ID))
            payload += nla(CTRL_ATTR_FAMILY_NAME, b"vdpa\0")
            payload += nla(CTRL_ATTR_MAXATTR, struct.pack("<I", max(VdpaAttr)))
            return [nlmsg(GENL_ID_CTRL, 0, seq, payload), self._ack(data, seq, 0, None)]
        if msg_type != FAMILY_ID:
            return [self._ack(data, seq, -errno.EOPNOTSUPP, None)]
        known = {int(a) for a in ATTR_TYPES}
        request = [decode_vdpa_attr(t, p) for t, p in attrs if t in known]  # the kernel ignores the rest
        dump = (flags & NLM_F_DUMP) == NLM_F_DUMP
        reply = self.mgmt.request(cmd, request, dump)
        out = []
        for m in reply.messages:
            payload = bytes([int(m.cmd), 1, 0, 0]) + b"".join(encode_vdpa_attr(a, v) for a, v in m.attrs)
            out.append(nlmsg(FAMILY_ID, NLM_F_MULTI if dump else 0, seq, payload))
        if dump:
            tlvs = nla(NLMSGERR_ATTR_MSG, reply.extack.encode() + b"\0") if reply.extack else b""
            out.append(nlmsg(NLMSG_DONE, NLM_F_MULTI | (NLM_F_ACK_TLVS if tlvs else 0), seq,
                             struct.pack("<i", reply.error) + tlvs))
        else:
            if reply.error:
                out = []
            if flags & NLM_F_ACK or reply.error:
                out.append(self._ack(data, seq, reply.error, reply.extack))
        return out


def build_shim(directory) -> str:
    """Compile nlshim.c into ``directory``; returns the .so path."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nlshim.c")
    out = os.path.join(str(directory), "nlshim.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", out, src, "-ldl"], check=True, capture_output=True)
    return out
