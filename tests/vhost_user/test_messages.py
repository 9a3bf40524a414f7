"""The message table against DESIGN.md §3, payload round trips and parse errors."""

from __future__ import annotations

import re
import struct

import pytest

from dataplane.vhost_user import features as F, messages as M, payloads as P
from dataplane.vhost_user.errors import ProtocolError
from dataplane.vhost_user.features import VhostUserProtocolFeature, VirtioFeature
from dataplane.vhost_user.messages import (
    BACKEND_REQUESTS,
    FRONTEND_REQUESTS,
    FdRule,
    Message,
    VhostUserRequest as R,
    parse_request,
)

# DESIGN.md §3, verbatim.
DESIGN_FRONTEND = """1 GET_FEATURES, 2 SET_FEATURES, 3 SET_OWNER, 4 RESET_OWNER, 5 SET_MEM_TABLE, 6 SET_LOG_BASE,
7 SET_LOG_FD, 8 SET_VRING_NUM, 9 SET_VRING_ADDR, 10 SET_VRING_BASE, 11 GET_VRING_BASE, 12 SET_VRING_KICK,
13 SET_VRING_CALL, 14 SET_VRING_ERR, 15 GET_PROTOCOL_FEATURES, 16 SET_PROTOCOL_FEATURES, 17 GET_QUEUE_NUM,
18 SET_VRING_ENABLE, 19 SEND_RARP, 20 NET_SET_MTU, 21 SET_BACKEND_REQ_FD, 22 IOTLB_MSG, 23 SET_VRING_ENDIAN,
24 GET_CONFIG, 25 SET_CONFIG, 26 CREATE_CRYPTO_SESSION, 27 CLOSE_CRYPTO_SESSION, 28 POSTCOPY_ADVISE,
29 POSTCOPY_LISTEN, 30 POSTCOPY_END, 31 GET_INFLIGHT_FD, 32 SET_INFLIGHT_FD, 33 GPU_SET_SOCKET, 34 RESET_DEVICE,
35 VRING_KICK, 36 GET_MAX_MEM_SLOTS, 37 ADD_MEM_REG, 38 REM_MEM_REG, 39 SET_STATUS, 40 GET_STATUS,
41 GET_SHARED_OBJECT, 42 SET_DEVICE_STATE_FD, 43 CHECK_DEVICE_STATE"""
DESIGN_BACKEND = "1 IOTLB_MSG, 2 CONFIG_CHANGE_MSG, 3 VRING_HOST_NOTIFIER_MSG, 4 VRING_CALL, 5 VRING_ERR"
DESIGN_PROTOCOL = """0 MQ, 1 LOG_SHMFD, 2 RARP, 3 REPLY_ACK, 4 MTU, 5 BACKEND_REQ, 6 CROSS_ENDIAN, 7 CRYPTO_SESSION,
8 PAGEFAULT, 9 CONFIG, 10 BACKEND_SEND_FD, 11 HOST_NOTIFIER, 12 INFLIGHT_SHMFD, 13 RESET_DEVICE,
14 INBAND_NOTIFICATIONS, 15 CONFIGURE_MEM_SLOTS, 16 STATUS, 17 XEN_MMAP, 18 SHARED_OBJECT, 19 DEVICE_STATE"""
DESIGN_VIRTIO = """CSUM 0, GUEST_CSUM 1, MTU 3, MAC 5, GSO 6, GUEST_TSO4 7, GUEST_TSO6 8, GUEST_ECN 9, GUEST_UFO 10,
HOST_TSO4 11, HOST_TSO6 12, HOST_ECN 13, HOST_UFO 14, MRG_RXBUF 15, STATUS 16, CTRL_VQ 17, CTRL_RX 18, CTRL_VLAN 19,
GUEST_ANNOUNCE 21, MQ 22, CTRL_MAC_ADDR 23, LOG_ALL 26, ANY_LAYOUT 27, INDIRECT_DESC 28, EVENT_IDX 29,
PROTOCOL_FEATURES 30, VERSION_1 32, ACCESS_PLATFORM 33, RING_PACKED 34, IN_ORDER 35, ORDER_PLATFORM 36"""


def _pairs(text: str, number_first: bool = True) -> dict[str, int]:
    out = {}
    for item in re.split(r",\s*", text.replace("\n", " ").strip()):
        a, b = item.split()
        num, name = (a, b) if number_first else (b, a)
        out[name] = int(num)
    return out


def test_frontend_requests_match_design():
    design = _pairs(DESIGN_FRONTEND)
    assert len(design) == 43
    for name, number in design.items():
        assert R[f"VHOST_USER_{name}"] == number
        assert FRONTEND_REQUESTS[number].name == f"VHOST_USER_{name}"
    assert sorted(FRONTEND_REQUESTS) == list(range(1, 44))
    # the spec names are module constants too
    assert M.VHOST_USER_SET_VRING_ADDR == 9 and M.VHOST_USER_GET_VRING_BASE == 11


def test_backend_requests_match_design():
    design = _pairs(DESIGN_BACKEND)
    for name, number in design.items():
        assert BACKEND_REQUESTS[number].name == f"VHOST_USER_BACKEND_{name}"
    # 6-8: SHARED_OBJECT_*
    assert [BACKEND_REQUESTS[n].name for n in (6, 7, 8)] == [
        "VHOST_USER_BACKEND_SHARED_OBJECT_ADD",
        "VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE",
        "VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP",
    ]
    assert sorted(BACKEND_REQUESTS) == list(range(1, 9))


def test_protocol_feature_bits_match_design():
    design = _pairs(DESIGN_PROTOCOL)
    assert len(design) == 20
    for name, number in design.items():
        assert VhostUserProtocolFeature[f"VHOST_USER_PROTOCOL_F_{name}"] == number
    assert len(VhostUserProtocolFeature) == 20


def test_virtio_feature_bits_match_design():
    design = _pairs(DESIGN_VIRTIO, number_first=False)
    prefix = {
        "LOG_ALL": "VHOST_F_",
        "PROTOCOL_FEATURES": "VHOST_USER_F_",
        "INDIRECT_DESC": "VIRTIO_RING_F_",
        "EVENT_IDX": "VIRTIO_RING_F_",
        "ANY_LAYOUT": "VIRTIO_F_",
        "VERSION_1": "VIRTIO_F_",
        "ACCESS_PLATFORM": "VIRTIO_F_",
        "RING_PACKED": "VIRTIO_F_",
        "IN_ORDER": "VIRTIO_F_",
        "ORDER_PLATFORM": "VIRTIO_F_",
    }
    for name, number in design.items():
        assert VirtioFeature[prefix.get(name, "VIRTIO_NET_F_") + name] == number


def test_header_constants():
    assert M.VHOST_USER_HDR_SIZE == 12
    assert (M.VHOST_USER_VERSION, M.VHOST_USER_VERSION_MASK) == (0x1, 0x3)
    assert (M.VHOST_USER_REPLY_MASK, M.VHOST_USER_NEED_REPLY_MASK) == (0x4, 0x8)
    assert (P.VHOST_USER_VRING_NOFD_MASK, P.VHOST_USER_VRING_IDX_MASK) == (0x100, 0xFF)
    assert P.VHOST_MEMORY_BASELINE_NREGIONS == 8
    h = M.Header(5, 0x9, 40)
    assert M.Header.parse(h.pack()) == h and h.need_reply and h.version == 1 and not h.is_reply


def test_fd_rules_of_the_table():
    fds = {s.name: s.fds for s in FRONTEND_REQUESTS.values()}
    assert fds["VHOST_USER_SET_MEM_TABLE"] is FdRule.PER_REGION
    for name in ("VHOST_USER_SET_VRING_KICK", "VHOST_USER_SET_VRING_CALL", "VHOST_USER_SET_VRING_ERR"):
        assert fds[name] is FdRule.VRING_FILE
    for name in ("VHOST_USER_SET_LOG_FD", "VHOST_USER_SET_BACKEND_REQ_FD", "VHOST_USER_ADD_MEM_REG",
                 "VHOST_USER_SET_INFLIGHT_FD", "VHOST_USER_SET_LOG_BASE", "VHOST_USER_GPU_SET_SOCKET",
                 "VHOST_USER_SET_DEVICE_STATE_FD"):
        assert fds[name] is FdRule.ONE, name
    assert fds["VHOST_USER_REM_MEM_REG"] is FdRule.OPTIONAL_ONE
    assert fds["VHOST_USER_GET_FEATURES"] is FdRule.NONE
    # requests that always get a reply
    replies = {s.name for s in FRONTEND_REQUESTS.values() if s.reply is not None}
    assert {"VHOST_USER_GET_FEATURES", "VHOST_USER_GET_PROTOCOL_FEATURES", "VHOST_USER_GET_VRING_BASE",
            "VHOST_USER_GET_QUEUE_NUM", "VHOST_USER_GET_CONFIG", "VHOST_USER_GET_STATUS",
            "VHOST_USER_GET_MAX_MEM_SLOTS"} <= replies
    assert "VHOST_USER_SET_VRING_KICK" not in replies


# -- payloads ----------------------------------------------------------------------

ROUND_TRIPS = [
    (P.U64(0x1234_5678_9ABC_DEF0), 8),
    (P.VringState(3, 256), 8),
    (P.VringAddr(1, 1, 0x1000, 0x3000, 0x2000, 0x4000), 40),
    (P.Memory([P.MemoryRegion(0, 1 << 20, 0x7F00_0000_0000, 0), P.MemoryRegion(1 << 30, 4096, 0x7F10_0000_0000, 8192)]), 8 + 64),
    (P.MemRegMsg(P.MemoryRegion(0x1000, 0x2000, 0x3000, 0x4000)), 40),
    (P.Log(1 << 20, 4096), 16),
    (P.IotlbMsg(0x1000, 0x2000, 0x3000, 3, 2), 32),
    (P.Config(0, 6, 0, b"\x02\x00\x00\x00\x00\x01"), 18),
    (P.VringArea(0x101, 4096, 0), 24),
    (P.Inflight(4096, 0, 2, 256), 24),
    (P.Shared(bytes(range(16))), 16),
    (P.DeviceStateParams(1, 0), 8),
    (P.Empty(), 0),
]


@pytest.mark.parametrize("payload,size", ROUND_TRIPS, ids=lambda v: type(v).__name__ if isinstance(v, P.Payload) else str(v))
def test_payload_round_trip(payload, size):
    data = payload.pack()
    assert len(data) == size
    assert type(payload).parse(data, "X") == payload


def test_vring_addr_wire_order_is_desc_used_avail():
    data = P.VringAddr(7, 0, desc_user_addr=0xD, used_user_addr=0xE, avail_user_addr=0xA, log_guest_addr=0xF).pack()
    assert struct.unpack("=IIQQQQ", data) == (7, 0, 0xD, 0xE, 0xA, 0xF)


def test_memory_accepts_exact_or_full_size():
    regions = [P.MemoryRegion(0, 4096, 0x1000, 0)]
    exact = P.Memory(regions).pack()
    full = exact + bytes(32 * 7)
    assert P.Memory.parse(exact).regions == regions
    assert P.Memory.parse(full).regions == regions


@pytest.mark.parametrize(
    "cls,data,words",
    [
        (P.U64, b"\0" * 4, ["payload size 4", "expected 8"]),
        (P.VringState, b"\0" * 12, ["payload size 12", "expected 8"]),
        (P.VringAddr, b"\0" * 39, ["expected 40"]),
        (P.Memory, b"\0" * 4, ["expected at least 8"]),
        (P.Memory, struct.pack("=II", 9, 0) + bytes(9 * 32), ["too many memory regions: 9 > 8"]),
        (P.Memory, struct.pack("=II", 2, 0) + bytes(32), ["expected 72 for 2 regions"]),
        (P.Config, struct.pack("=III", 0, 300, 0), ["config size 300 > 256"]),
        (P.Config, struct.pack("=III", 0, 8, 0) + b"\0" * 4, ["expected 20"]),
        (P.Empty, b"\0", ["payload size 1", "expected 0"]),
        (P.Inflight, b"\0" * 20, ["expected 24"]),
    ],
)
def test_payload_parse_errors_name_request_and_reason(cls, data, words):
    with pytest.raises(ProtocolError) as ei:
        cls.parse(data, "VHOST_USER_SOMETHING")
    assert ei.value.request == "VHOST_USER_SOMETHING"
    for w in words:
        assert w in str(ei.value)


def test_parse_request_checks_number_flags_payload_and_fds():
    spec, payload = parse_request(Message(R.VHOST_USER_SET_VRING_NUM, 1, P.VringState(0, 256).pack()))
    assert spec.name == "VHOST_USER_SET_VRING_NUM" and payload == P.VringState(0, 256)

    with pytest.raises(ProtocolError, match="request 99: unknown request number"):
        parse_request(Message(99, 1, b""))
    with pytest.raises(ProtocolError, match="VHOST_USER_GET_FEATURES: reply flag set"):
        parse_request(Message(R.VHOST_USER_GET_FEATURES, 1 | 4, b""))
    with pytest.raises(ProtocolError, match="undefined flag bits 0x10"):
        parse_request(Message(R.VHOST_USER_GET_FEATURES, 1 | 0x10, b""))
    with pytest.raises(ProtocolError, match="VHOST_USER_SET_FEATURES: payload size 4"):
        parse_request(Message(R.VHOST_USER_SET_FEATURES, 1, b"\0" * 4))
    # kick: one fd unless NOFD
    with pytest.raises(ProtocolError, match="VHOST_USER_SET_VRING_KICK: fd count mismatch: got 0, expected 1"):
        parse_request(Message(R.VHOST_USER_SET_VRING_KICK, 1, P.U64(0).pack(), []))
    with pytest.raises(ProtocolError, match="got 1, expected 0"):
        parse_request(Message(R.VHOST_USER_SET_VRING_KICK, 1, P.U64(0x100).pack(), [99]))
    parse_request(Message(R.VHOST_USER_SET_VRING_KICK, 1, P.U64(0x100).pack(), []))
    # mem table: one fd per region
    table = P.Memory([P.MemoryRegion(0, 4096, 0, 0), P.MemoryRegion(8192, 4096, 8192, 0)]).pack()
    with pytest.raises(ProtocolError, match="VHOST_USER_SET_MEM_TABLE: fd count mismatch: got 1, expected 2"):
        parse_request(Message(R.VHOST_USER_SET_MEM_TABLE, 1, table, [5]))
    # REM_MEM_REG: 0 or 1
    rem = P.MemRegMsg(P.MemoryRegion(0, 4096, 0, 0)).pack()
    parse_request(Message(R.VHOST_USER_REM_MEM_REG, 1, rem, []))
    parse_request(Message(R.VHOST_USER_REM_MEM_REG, 1, rem, [5]))
    with pytest.raises(ProtocolError, match="got 2, expected 0..1"):
        parse_request(Message(R.VHOST_USER_REM_MEM_REG, 1, rem, [5, 6]))


def test_message_take_and_close_fds():
    import os

    r, w = os.pipe()
    msg = Message(1, 1, b"", [r, w])
    assert msg.take_fd(0) == r
    msg.close_fds()
    assert msg.fds == [-1, -1]
    os.close(r)  # we took it: still open, ours to close
    with pytest.raises(OSError):
        os.close(w)  # closed by close_fds


def test_features_str():
    assert F.features_str(F.bit(32) | F.bit(15)) == "VIRTIO_NET_F_MRG_RXBUF|VIRTIO_F_VERSION_1"
    assert F.features_str(F.bit(40)) == "bit40"
    assert F.features_str(0) == "0"


def test_gates_and_handlers_of_the_table():
    gate = {s.name.removeprefix("VHOST_USER_"): s.gate for s in FRONTEND_REQUESTS.values()}
    PF = VhostUserProtocolFeature
    assert gate["GET_QUEUE_NUM"] is PF.VHOST_USER_PROTOCOL_F_MQ
    assert gate["SEND_RARP"] is PF.VHOST_USER_PROTOCOL_F_RARP and gate["NET_SET_MTU"] is PF.VHOST_USER_PROTOCOL_F_MTU
    assert gate["GET_CONFIG"] is gate["SET_CONFIG"] is PF.VHOST_USER_PROTOCOL_F_CONFIG
    assert gate["SET_STATUS"] is gate["GET_STATUS"] is PF.VHOST_USER_PROTOCOL_F_STATUS
    for name in ("GET_MAX_MEM_SLOTS", "ADD_MEM_REG", "REM_MEM_REG"):
        assert gate[name] is PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS
    for name in ("GET_FEATURES", "SET_FEATURES", "SET_OWNER", "SET_MEM_TABLE", "SET_VRING_KICK", "GET_PROTOCOL_FEATURES"):
        assert gate[name] is None, name
    # who serves what: net's own requests are the device class's; every refusal says why
    handler = {s.name.removeprefix("VHOST_USER_"): s.handler for s in FRONTEND_REQUESTS.values()}
    assert {n for n, h in handler.items() if h is M.Handler.DEVICE} == {"SEND_RARP", "NET_SET_MTU"}
    assert handler["SET_LOG_BASE"] is handler["SET_LOG_FD"] is M.Handler.BACKEND
    assert handler["GPU_SET_SOCKET"] is M.Handler.UNSUPPORTED and "GPU" in M.SPEC_BY_NAME["VHOST_USER_GPU_SET_SOCKET"].why
    for s in list(FRONTEND_REQUESTS.values()) + list(BACKEND_REQUESTS.values()):
        assert (s.handler is M.Handler.UNSUPPORTED) == bool(s.why), s.name


def test_parse_reply_checks_request_flags_and_payload():
    assert M.parse_reply(Message.build(R.VHOST_USER_GET_FEATURES, P.U64(5), reply=True), R.VHOST_USER_GET_FEATURES) == P.U64(5)
    # a request without a reply body is answered with the REPLY_ACK u64
    assert M.parse_reply(Message.build(R.VHOST_USER_SET_OWNER, P.U64(1), reply=True), R.VHOST_USER_SET_OWNER).u64 == 1
    with pytest.raises(ProtocolError, match="VHOST_USER_GET_FEATURES: reply is for VHOST_USER_GET_STATUS"):
        M.parse_reply(Message.build(R.VHOST_USER_GET_STATUS, P.U64(0), reply=True), R.VHOST_USER_GET_FEATURES)
    with pytest.raises(ProtocolError, match="lack REPLY"):
        M.parse_reply(Message.build(R.VHOST_USER_GET_FEATURES, P.U64(0)), R.VHOST_USER_GET_FEATURES)
    with pytest.raises(ProtocolError, match="bad reply: payload size 4"):
        M.parse_reply(Message(R.VHOST_USER_GET_FEATURES, 0x5, bytes(4)), R.VHOST_USER_GET_FEATURES)
