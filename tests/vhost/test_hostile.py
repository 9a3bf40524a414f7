"""Hostile front-ends: every malformed message gives a specific log line, a counter, and then a
closed connection or a stopped queue -- and the process keeps serving a well-behaved front-end."""

from __future__ import annotations

import os
import struct

import pytest
import structlog

from dataplane.testing.vhost_frontend import GuestMemoryLayout, VhostUserFrontend
from dataplane.vhost_user import (
    Message,
    Memory,
    MemoryRegion,
    U64,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_REPLY_MASK,
    VringAddr,
    VringState,
    VhostUserRequest as R,
    VirtioFeature as VF,
    bit,
)
from dataplane.vhost_user.messages import Header

BASE = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)


def _memfd(size):
    fd = os.memfd_create("vh-hostile")
    os.ftruncate(fd, size)
    return fd


# Each case: (id, action(fe, guest), outcome "closed" | "queue" | "nack", request name in the log, words of the reason)


def wrong_size(fe, guest):
    fe.send_raw(R.VHOST_USER_SET_FEATURES, b"\0" * 4)


def wrong_size_need_reply(fe, guest):
    fe.send_raw(R.VHOST_USER_SET_VRING_NUM, b"\0" * 12, flags=1 | VHOST_USER_NEED_REPLY_MASK)
    assert U64.parse(fe.reply(R.VHOST_USER_SET_VRING_NUM).payload).u64 == 1


def unknown_request(fe, guest):
    fe.send_raw(99, b"\0" * 8)


def request_zero(fe, guest):
    fe.send_raw(0)


def too_many_regions(fe, guest):
    fds = [_memfd(4096) for _ in range(9)]
    try:
        regions = [MemoryRegion(i << 20, 4096, 0x7F00_0000_0000 + (i << 20), 0) for i in range(9)]
        payload = struct.pack("=II", 9, 0) + b"".join(r.pack() for r in regions)
        fe.send_raw(R.VHOST_USER_SET_MEM_TABLE, payload, fds)
    finally:
        for fd in fds:
            os.close(fd)


def overlapping_regions(fe, guest):
    fds = [_memfd(1 << 20), _memfd(1 << 20)]
    try:
        regions = [MemoryRegion(0, 1 << 20, 0x1000_0000, 0), MemoryRegion(1 << 19, 1 << 20, 0x2000_0000, 0)]
        fe.send(R.VHOST_USER_SET_MEM_TABLE, Memory(regions), fds)
    finally:
        for fd in fds:
            os.close(fd)


def eventfd_as_memory(fe, guest):
    efd = os.eventfd(0)
    try:
        fe.send(R.VHOST_USER_SET_MEM_TABLE, Memory([MemoryRegion(0, 4096, 0x1000, 0)]), [efd])
    finally:
        os.close(efd)


def offset_beyond_file(fe, guest):
    fd = _memfd(1 << 20)
    try:
        fe.send(R.VHOST_USER_SET_MEM_TABLE, Memory([MemoryRegion(0, 1 << 20, 0x1000, 1 << 20)]), [fd])
    finally:
        os.close(fd)


def _ring_setup(fe, guest):
    fe.negotiate(BASE)
    fe.set_mem_table()
    fe.set_vring_num(0, 256)


def ring_outside_mem_table(fe, guest):
    _ring_setup(fe, guest)
    outside = guest.regions[0].qva + guest.regions[0].size  # just past the region
    fe.set_vring_addr(0, outside, outside + 8192, outside + 4096)


def ring_crossing_region_end(fe, guest):
    _ring_setup(fe, guest)
    r = guest.regions[0]
    fe.set_vring_addr(0, r.qva + r.size - 1024, r.qva, r.qva + 4096)  # 4 KiB desc table, 1 KiB left


def misaligned_ring(fe, guest):
    _ring_setup(fe, guest)
    q = guest.regions[0].qva
    fe.set_vring_addr(0, q + 8, q + 8192, q + 4096)


def vring_index_out_of_range(fe, guest):
    fe.negotiate(BASE)
    fe.send(R.VHOST_USER_SET_VRING_NUM, VringState(300, 256))


def kick_index_out_of_range(fe, guest):
    fe.negotiate(BASE)
    fe.set_mem_table()
    efd = os.eventfd(0)
    try:
        fe.set_vring_kick(10, efd)  # 4 queue pairs (no control queue): vrings 0..7
    finally:
        os.close(efd)


def kick_before_mem_table(fe, guest):
    fe.negotiate(BASE)
    efd = os.eventfd(0)
    try:
        fe.set_vring_kick(0, efd)
    finally:
        os.close(efd)


def features_never_offered(fe, guest):
    fe.get_features()
    fe.set_features(BASE | bit(VF.VIRTIO_F_ACCESS_PLATFORM) | bit(50))


def protocol_features_never_offered(fe, guest):
    fe.get_features()
    fe.get_protocol_features()
    fe.send(R.VHOST_USER_SET_PROTOCOL_FEATURES, U64(1 << 8))  # PAGEFAULT: not implemented, not offered


def kick_missing_fd(fe, guest):
    fe.send_raw(R.VHOST_USER_SET_VRING_KICK, U64(0))


def extra_fd(fe, guest):
    efd = os.eventfd(0)
    try:
        fe.send(R.VHOST_USER_SET_FEATURES, U64(BASE), [efd])
    finally:
        os.close(efd)


def too_many_fds(fe, guest):
    fds = [os.eventfd(0) for _ in range(12)]
    try:
        fe.send_raw(R.VHOST_USER_SET_OWNER, b"", fds)
    finally:
        for fd in fds:
            os.close(fd)


def kick_reserved_bits(fe, guest):
    fe.send_raw(R.VHOST_USER_SET_VRING_KICK, U64(0x200 | 0x100))


def bad_version(fe, guest):
    fe.send_raw(R.VHOST_USER_GET_FEATURES, flags=0x2)


def oversized_payload(fe, guest):
    fe.send_raw(R.VHOST_USER_SET_FEATURES, b"", size=1 << 20)


def reply_flag_on_request(fe, guest):
    fe.send_raw(R.VHOST_USER_GET_FEATURES, flags=1 | VHOST_USER_REPLY_MASK)


def unsupported_request(fe, guest):
    fd = _memfd(4096)
    try:
        fe.send(R.VHOST_USER_GPU_SET_SOCKET, b"", [fd])
    finally:
        os.close(fd)


def _log_base(make_fd, mmap_size):
    def send(fe, guest):
        fe.negotiate(BASE)
        fd = make_fd()
        try:
            fe.send(R.VHOST_USER_SET_LOG_BASE, struct.pack("=QQ", mmap_size, 0), [fd])
        finally:
            os.close(fd)

    return send


log_base_beyond_file = _log_base(lambda: _memfd(4096), 8192)
log_base_eventfd = _log_base(lambda: os.eventfd(0), 4096)


def split_size_not_power_of_two(fe, guest):
    fe.negotiate(BASE)
    fe.set_vring_num(0, 1000)


def undefined_vring_flags(fe, guest):
    fe.negotiate(BASE)
    fe.set_mem_table()
    fe.send(R.VHOST_USER_SET_VRING_ADDR, VringAddr(0, 0x6, 0, 0, 0, 0))


CASES = [
    ("wrong_payload_size", wrong_size, "closed", "VHOST_USER_SET_FEATURES", ["payload size 4, expected 8"]),
    ("wrong_size_need_reply", wrong_size_need_reply, "nack", "VHOST_USER_SET_VRING_NUM", ["payload size 12, expected 8"]),
    ("unknown_request_99", unknown_request, "closed", "request 99", ["unknown request number"]),
    ("unknown_request_0", request_zero, "closed", "request 0", ["unknown request number"]),
    ("more_than_8_regions", too_many_regions, "closed", "VHOST_USER_SET_MEM_TABLE", ["too many memory regions: 9 > 8"]),
    ("overlapping_regions", overlapping_regions, "closed", "VHOST_USER_SET_MEM_TABLE", ["overlap in guest physical"]),
    ("unmappable_fd", eventfd_as_memory, "closed", "VHOST_USER_SET_MEM_TABLE", ["fd cannot be mapped as memory"]),
    ("offset_beyond_file", offset_beyond_file, "closed", "VHOST_USER_SET_MEM_TABLE", ["smaller than mmap_offset + memory_size"]),
    ("ring_outside_mem_table", ring_outside_mem_table, "queue", "VHOST_USER_SET_VRING_ADDR", ["vring 0", "not inside one memory region"]),
    ("ring_crossing_region_end", ring_crossing_region_end, "queue", "VHOST_USER_SET_VRING_ADDR", ["descriptor table", "not inside one memory region"]),
    ("misaligned_ring", misaligned_ring, "queue", "VHOST_USER_SET_VRING_ADDR", ["not 16-byte aligned"]),
    ("vring_index_out_of_range", vring_index_out_of_range, "closed", "VHOST_USER_SET_VRING_NUM", ["vring index 300 out of range"]),
    ("kick_index_out_of_range", kick_index_out_of_range, "closed", "VHOST_USER_SET_VRING_KICK", ["vring index 10 out of range (device has 8 vrings)"]),
    ("kick_before_mem_table", kick_before_mem_table, "closed", "VHOST_USER_SET_VRING_KICK", ["before SET_MEM_TABLE"]),
    ("features_never_offered", features_never_offered, "closed", "VHOST_USER_SET_FEATURES", ["features never offered", "VIRTIO_F_ACCESS_PLATFORM", "bit50"]),
    ("protocol_features_never_offered", protocol_features_never_offered, "closed", "VHOST_USER_SET_PROTOCOL_FEATURES", ["VHOST_USER_PROTOCOL_F_PAGEFAULT"]),
    ("kick_missing_fd", kick_missing_fd, "closed", "VHOST_USER_SET_VRING_KICK", ["fd count mismatch: got 0, expected 1"]),
    ("extra_fd", extra_fd, "closed", "VHOST_USER_SET_FEATURES", ["fd count mismatch: got 1, expected 0"]),
    ("too_many_fds", too_many_fds, "closed", "VHOST_USER_SET_OWNER", ["too many fds"]),
    ("kick_reserved_bits", kick_reserved_bits, "closed", "VHOST_USER_SET_VRING_KICK", ["reserved bits"]),
    ("reply_flag_on_request", reply_flag_on_request, "closed", "VHOST_USER_GET_FEATURES", ["reply flag set on a request"]),
    ("unsupported_request", unsupported_request, "closed", "VHOST_USER_GPU_SET_SOCKET", ["not supported", "not a GPU device"]),
    ("log_beyond_file", log_base_beyond_file, "closed", "VHOST_USER_SET_LOG_BASE", ["smaller than mmap_offset + mmap_size"]),
    ("log_not_memory", log_base_eventfd, "closed", "VHOST_USER_SET_LOG_BASE", ["cannot be mapped as memory"]),
    ("split_size_not_power_of_two", split_size_not_power_of_two, "closed", "VHOST_USER_SET_VRING_NUM", ["not a power of two"]),
    ("undefined_vring_flags", undefined_vring_flags, "closed", "VHOST_USER_SET_VRING_ADDR", ["undefined vring flags 0x6"]),
    ("bad_version", bad_version, "violation", None, ["bad protocol version 2"]),
    ("oversized_payload", oversized_payload, "violation", None, ["payload size 1048576 > 4096"]),
]


def _serve_a_good_frontend(lib, sock_path, recorder):
    good_mem = GuestMemoryLayout.simple(1 << 20)
    try:
        with VhostUserFrontend.connect(sock_path, memory=good_mem) as good:
            good.start(features=BASE)
            vid = max(v for v in lib.list_vids())
            assert lib.get_device(vid).running
            recorder.wait(("new_device", vid))
    finally:
        good_mem.close()


@pytest.mark.parametrize("action,outcome,request_name,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_frontend(lib, server, sock_path, recorder, guest, action, outcome, request_name, words):
    lib.driver_set_max_queue_num(sock_path, 4)  # 8 vrings (no control queue: CTRL_VQ is not offered)
    fds_before = set(os.listdir("/proc/self/fd"))
    with structlog.testing.capture_logs() as logs:
        fe = VhostUserFrontend.connect(sock_path, memory=guest)
        recorder.wait(("new_connection", 0))
        dev = lib.get_device(0)
        try:
            action(fe, guest)
            if outcome in ("closed", "violation"):
                assert fe.wait_closed(), "the connection should have been closed"
                recorder.wait(("destroy_connection", 0))
            else:
                fe.sync()  # the connection is still served
                assert not fe.wait_closed(0.05)
        finally:
            fe.close()
        recorder.wait(("destroy_connection", 0))

    if outcome == "violation":
        errors = [e for e in logs if e["event"] == "vhost-user protocol violation"]
    else:
        errors = [e for e in logs if e["event"] == "vhost-user request refused" and e["request"] == request_name]
    assert errors, f"no error log line; logs: {logs}"
    line = errors[0]
    assert line["log_level"] == "error" and line["path"] == sock_path and line["vid"] == 0
    for w in words:
        assert w in line["reason"], (w, line["reason"])
    # a counter, on the device and on the socket
    assert dev.stats["errors"] >= 1
    key = "errors:framing" if outcome == "violation" else f"errors:{request_name}"
    assert dev.stats[key] >= 1 and lib.driver_stats(sock_path)[key] >= 1
    if outcome == "queue":
        vq = dev.vrings[0]
        assert not vq.ready and not vq.access_ok and vq.error and words[-1] in vq.error
    # nothing we received stayed open (memfds, eventfds sent to us are closed)
    assert set(os.listdir("/proc/self/fd")) <= fds_before | set()

    # ... and the process keeps serving a second, well-behaved front-end
    _serve_a_good_frontend(lib, sock_path, recorder)


def test_peer_hangup_in_the_middle_of_a_message(lib, server, sock_path, recorder):
    with structlog.testing.capture_logs() as logs:
        fe = VhostUserFrontend.connect(sock_path)
        recorder.wait(("new_connection", 0))
        fe.send_bytes(Header(R.VHOST_USER_SET_FEATURES, 1, 8).pack()[:8])  # 8 of 12 header bytes
        fe.close()
        recorder.wait(("destroy_connection", 0))
    closed = [e for e in logs if e["event"] == "vhost-user connection closed"]
    assert closed and "in the middle of a message" in closed[0]["reason"]
    _serve_a_good_frontend(lib, sock_path, recorder)


def test_message_split_into_single_bytes_is_reassembled(lib, server, sock_path, recorder, guest):
    """Partial reads: a front-end that writes one byte at a time (fds with the first byte)."""
    fe = VhostUserFrontend.connect(sock_path, memory=guest)
    try:
        fe.negotiate(BASE)
        import time

        data = Message.build(R.VHOST_USER_SET_MEM_TABLE, Memory(guest.table())).encode()
        fe.send_bytes(data[:1], guest.fds())
        for b in data[1:]:
            fe.send_bytes(bytes([b]))
            time.sleep(0.001)
        fe.sync()
        assert len(lib.get_mem_table(0)) == 1
    finally:
        fe.close()
